"""A conversion that stops and goes on later, in another request or on another process.

A resumable upload (tus, handlers/uploads.py) commits its MP3 a piece at a
time. At each checkpoint the converter says what the MP3 holds and where a
later request goes on from (``Checkpoint``, stored with the upload as JSON):
a later encoder is joined onto the frames already stored exactly as segments
are joined (converter/segments.py), ``POST_ROLL_FRAMES`` before the last
stored frame, after a pre-roll of its own. Its first samples are therefore
those of frame ``resume_frame``, about a second of audio before the last
stored frame; the frames stored from ``resume_frame`` on are rewritten by
the join.

The upload's offset (what a client sends on from) is the WAV's bytes up to
that point (``wav_offset``) and the bytes the client sent after it, kept as
they are (``pending``). A request that ends before the upload does keeps
them all at its last checkpoint, so that every such request moves the offset
to the last byte it brought and a client never has to send anything twice;
the checkpoints along the way keep none (they come every second: the WAV
would be written twice over) and commit only once they pass the offset.
A request too short to be worth converting keeps its bytes as they were sent
without a conversion (handlers/uploads.py, api.upload_append), so the next
request's ``pending`` may hold them too: up to 2 MiB in all.

An offset never decreases: a checkpoint is taken only when it moves the
offset on. A resume point is a frame that begins on a source sample
(converter/command.py's EncoderPlan: any frame, or every few when the sample
rate changes). Before enough frames are stored for a join, and for a source
rate whose frames hardly ever fall on its samples, a later request starts
afresh from the first sample, the WAV's header kept.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from converter.command import MOST_PERIOD_FRAMES, EncoderPlan
from converter.errors import Mp3StreamError
from converter.mp3 import header_frame_length, parse_header
from converter.segments import post_roll_frames
from converter.splice import Frame, FrameReader

# File offsets of the last frames a checkpoint keeps: a resume's earlier frames (its
# pre-roll and post-roll, 87 + 32 at 24 kHz stereo, and up to a period more when they
# are made whole periods) fall among them.
TAIL_FRAMES = 128 + 3 * MOST_PERIOD_FRAMES
VERSION = 1  # of Checkpoint.to_json's layout: raise it with any change a resume could misread


class CheckpointOfAnotherVersion(ValueError):
    """A stored checkpoint this code cannot go on from. Written before an upgrade that
    changed VERSION (or with none), it never can be: its MP3 so far cannot be joined onto,
    and the WAV's bytes it was made of are gone. Written by a newer version (``newer``), a
    process of that version can (a rolling deploy, a rollback)."""

    def __init__(self, version: object) -> None:
        super().__init__(f"a checkpoint of version {version}, not {VERSION}")
        self.newer = isinstance(version, int) and version > VERSION


@dataclass(frozen=True)
class Checkpoint:
    """What a resumable conversion's MP3 holds at a frame boundary, and where to go on from."""

    wav_header: bytes  # the WAV's bytes before its first sample
    frames: int = 0  # audio frames in the MP3 (after the header frame's room)
    size: int = 0  # the MP3's bytes
    first_header: int = 0  # the first audio frame's 32 header bits
    header_offset: int = 0  # where the Xing/LAME frame goes: right after the ID3v2 tag
    tail: tuple[int, ...] = field(default=())  # file offsets of the last frames stored, oldest first
    resume_frame: int = 0  # the first frame a later request's encoder makes (0: it starts afresh)
    wav_offset: int = 0  # the WAV's bytes before the samples a later request's encoder starts at
    joins: int = 0
    forced_joins: int = 0
    # The waveform and loudness measured up to the offset (converter/analysis.py's state; b"":
    # not measured). The measurement cannot go back, so the offset is where it was saved,
    # at or before resume_frame's samples: the encoder skips what lies between.
    analysis: bytes = b""
    # The WAV's bytes from wav_offset on that were sent already: a later request begins with them.
    pending: bytes = b""

    @property
    def upload_offset(self) -> int:
        """The WAV's bytes the upload holds, as MP3 or as they were sent: where a client sends on from."""
        return self.wav_offset + len(self.pending)

    @property
    def samples_at(self) -> int:
        """The sample bytes before wav_offset: where a later request's samples begin."""
        return self.wav_offset - len(self.wav_header)

    @property
    def first_frame_at(self) -> int:
        """The file offset of the first audio frame (after the tag and the header frame's room)."""
        return self.header_offset + header_frame_length(self.first_header)

    @property
    def resume_at(self) -> int:
        """The file offset a later request writes from (the frames before it stay)."""
        if self.resume_frame == 0:
            return 0
        return self.tail[self.resume_frame - (self.frames - len(self.tail))]

    def to_json(self) -> dict[str, Any]:
        """Everything but the WAV's header, stored once, and the analysis and the pending bytes, stored apart."""
        return {
            "version": VERSION,
            "frames": self.frames,
            "size": self.size,
            "first_header": self.first_header,
            "header_offset": self.header_offset,
            "tail": list(self.tail),
            "resume_frame": self.resume_frame,
            "wav_offset": self.wav_offset,
            "joins": self.joins,
            "forced_joins": self.forced_joins,
        }

    @classmethod
    def from_json(
        cls, stored: dict[str, Any] | str, wav_header: bytes, analysis: bytes = b"", pending: bytes = b""
    ) -> Checkpoint:
        values = json.loads(stored) if isinstance(stored, str) else dict(stored)
        version = values.pop("version", None)
        if version != VERSION:
            raise CheckpointOfAnotherVersion(version)
        fields = values | {"tail": tuple(values["tail"])}
        return cls(wav_header=wav_header, analysis=analysis, pending=pending, **fields)


def resume_frame_for(frames: int, plan: EncoderPlan) -> int:
    """Where a later encoder starts, given the frames stored: a pre-roll before the
    boundary that lies a post-roll before the last stored frame, on the plan's grid
    (0 while too few, and for a plan that is never cut)."""
    if not plan.splittable:
        return 0
    return plan.on_grid(max(0, frames - post_roll_frames(plan) - plan.pre_roll))


class FrameOffsets:
    """Where each frame of a run of whole frames begins, from its first (a seek table's
    positions), the file's bytes fed a piece at a time: a resumed upload's stored MP3 is
    never held whole."""

    def __init__(self, first_frame_at: int) -> None:
        self.offsets = array("Q")
        self._first = first_frame_at
        self._next = first_frame_at  # where the next frame begins, in the file
        self._carry = b""  # a frame header's first bytes, cut by the end of the last piece

    def feed(self, at: int, piece: bytes) -> None:
        """The file's bytes from ``at`` on: the pieces in order, each where the last ended."""
        data = self._carry + piece if self._carry else piece
        start = at - len(self._carry)
        end = start + len(data)
        while self._next + 4 <= end:
            header = parse_header(data[self._next - start : self._next - start + 4])
            if header is None:
                raise Mp3StreamError(f"Stored frames lost MP3 frame sync at byte {self._next - self._first}.")
            self.offsets.append(self._next - self._first)
            self._next += header.length
        self._carry = data[self._next - start :] if self._next < end else b""


def stored_frames(tail_bytes: bytes) -> list[Frame]:
    """The stored frames from a checkpoint's resume_at on, as the join needs them."""
    reader = FrameReader()
    reader.tag = b""  # no ID3v2 tag in the middle of a file
    frames = reader.feed(tail_bytes)
    reader.end()
    return frames


@dataclass
class Resumable:
    """What a resumable conversion needs from its caller, who stores it (handlers/uploads.py)."""

    previous: Checkpoint | None  # stored by an earlier request; None for a new upload
    stored: list[Frame]  # the stored frames from previous.resume_frame on (converter: stored_frames)
    # Where frames 0 to n-1 begin, from the first audio frame: for the seek table, once the
    # stream ends (a resumed stream followed only the frames from its resume_frame on).
    earlier_offsets: Callable[[int], Awaitable[array[int]]]
    # Store the MP3's bytes handed to the sink since the last commit, and this checkpoint.
    commit: Callable[[Checkpoint], Awaitable[None]]
    every_s: float = 1.0  # at most one checkpoint so often
    # or once this much MP3 is new: an upload sent faster than real time (a 60-minute WAV in
    # 20 s) would else carry megabytes a checkpoint, copied whole in memory on their way.
    every_bytes: int = 1 << 20
    # Each checkpoint stores the whole measurement so far (the waveform mostly: up to about
    # 170 KB in the first hour), and a slow upload checkpoints every second: one sent in
    # real time wrote over three times as much of it as of its MP3. So a periodic checkpoint
    # also waits until the client has sent this many times the last one's measurement...
    sent_per_measured_byte: int = 8
    # ...or until this long after the last: the offset a crash leaves stays a few seconds
    # behind what was sent (an hour sent in real time: 9.8 s at most, 19 s without this).
    most_apart_s: float = 3.0
    grace_s: float = 3.0  # for the last one, when the request ends early
