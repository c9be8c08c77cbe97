"""The encoder of an upload: its samples in (``take``, then ``finish``), the MP3's bytes
handed on in order as they are made, on one FFmpeg or on several at once.

An upload that arrives faster than one FFmpeg encodes (a LAN, curl on the same
host) would leave the other cores idle while its client waits. So the upload's
samples are cut into segments of ``segment_seconds`` at frame boundaries, and
when the encoder of the current segment has fallen behind the upload (more than
``helper_backlog`` bytes queued for it) the next segment goes to another
encoder: one that is idle, or a new FFmpeg on a conversion slot nobody waits
for. An upload that arrives no faster than one encoder stays on one, as before.

Each later encoder begins ``pre-roll`` frames before its boundary and each
earlier one goes on ``POST_ROLL_FRAMES`` past it, so both hold the same frames
around it; converter/splice.py picks the frame to join at and makes the bit
reservoir whole there. An encoder given a further segment later sees a jump in
its input: the frames around that jump fall in the pre- and post-rolls, which
are dropped. Frames are passed on in order as soon as no join can change them.

Cuts fall where frames begin on the source's samples (converter/command.py's
EncoderPlan: every frame, or every few when the sample rate changes). With
``parallel_segments`` below 2 (or a source rate whose frames hardly ever fall on
its samples) there is one encoder and one run, and frames pass straight on: the
same shape, with nothing to join.

Memory stays bounded: at most ``READ_AHEAD_BYTES`` of samples wait for the
encoders (the upload is read no further meanwhile), and once
``HELD_FRAME_BYTES`` of an encoder's frames wait to be handed on its output is
read no further (a database slower than the encoders holds the upload back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from fractions import Fraction

from converter.command import EncoderPlan
from converter.errors import ConversionError, Mp3StreamError
from converter.mp3 import samples_per_frame
from converter.options import ConverterConfig
from converter.process import PIPE_READ, end_input, keep_tail, reap, write
from converter.progress import ENCODER_INPUT, ENCODER_OUTPUT, JOINING, Changes, Progress
from converter.splice import Frame, FrameReader, join

NEVER = 1 << 62
POST_ROLL_FRAMES = 32  # frames an earlier encoder goes on past its boundary: where a join is sought
# Samples queued for the encoders, at most: enough for each to keep encoding
# through a pause of the event loop, and only a few MiB of the service's memory.
READ_AHEAD_BYTES = 4 << 20
# MP3 bytes handed on at a time, at most: a helper's segment, encoded ahead and
# joined, goes on in pieces, never as one copy of all its frames.
EMIT_BYTES = 256 << 10
# MP3 frames read from one encoder and not yet handed on: once they reach this (one read
# of PIPE_READ may pass it), the encoder's output is left in its pipe, FFmpeg waits to
# write, stops taking samples, and the upload is read no further. So a database slower
# than the encoders (far away, busy) holds the upload back instead of filling this process
# with MP3. A helper's segment encoded ahead (30 seconds at 320 kbit/s: 1.2 MB) fits in
# this and FFmpeg's 1 MiB pipe together.
HELD_FRAME_BYTES = 1 << 20

log = logging.getLogger("mp3.segments")


def segment_frames(plan: EncoderPlan, seconds: float) -> int:
    """A segment's length in frames: about ``seconds``, whole periods of the plan's grid, and
    longer than a pre-roll and a post-roll together, so an encoder's post-roll ends before
    it could get its next piece."""
    wanted = round(seconds * plan.sample_rate / samples_per_frame(plan.sample_rate))
    shortest = plan.pre_roll + post_roll_frames(plan) + 2
    return plan.on_grid(max(shortest, wanted) + plan.period - 1)


def post_roll_frames(plan: EncoderPlan) -> int:
    """POST_ROLL_FRAMES, made whole periods: so that an encoder's next piece begins on the grid."""
    return plan.on_grid(POST_ROLL_FRAMES + plan.period - 1)


@dataclass(eq=False)  # a piece is itself: compared by identity, never by its frames
class Piece:
    """The stretch of the upload one encoder is given in one go."""

    first_frame: int  # the MP3 frame (of the whole file) its first samples make
    start: int  # where it begins in the encoder's own input, in samples
    end_byte: int | None = None  # where its input ends in the upload's samples (None: still open)
    final: bool = False  # it runs to the end of the upload: the encoder's last frames are its own
    frames: deque[Frame] = field(default_factory=deque)
    held_bytes: int = 0  # the frames' size
    next_frame: int = 0  # the file's frame number of frames[0]
    complete: bool = False  # every frame of it has been read
    passed_on: bool = False  # the file has moved on to the next piece: later frames are not wanted

    def __post_init__(self) -> None:
        self.next_frame = self.first_frame

    def holds(self, frame_number: int) -> bool:
        """Frame ``frame_number`` of the file has been read, or never will be."""
        return self.complete or self.next_frame + len(self.frames) > frame_number

    def hold(self, frame: Frame) -> None:
        self.frames.append(frame)
        self.held_bytes += len(frame.data)

    def drop_first(self, count: int) -> None:
        for _ in range(count):
            self.held_bytes -= len(self.frames.popleft().data)

    def drop_all(self) -> None:
        """The file has moved on past it: whatever it holds, or is still read, is not wanted."""
        self.frames.clear()
        self.held_bytes = 0
        self.passed_on = True


class EncoderProcess:
    """One FFmpeg: the samples queued for it, and its frames sorted into its pieces."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        borrowed: bool,
        source_samples_per_frame: Fraction,
        block_align: int,
        progress: Progress,
    ) -> None:
        self.process = process
        self.progress = progress
        self.borrowed = borrowed  # its slot is to be given back when it ends
        self.releasing = False  # to end as soon as its last piece is fed
        # A whole number when nothing is resampled: int arithmetic for each frame, not Fraction's.
        whole = source_samples_per_frame.denominator == 1
        self.source_samples_per_frame = source_samples_per_frame.numerator if whole else source_samples_per_frame
        self.pieces: list[Piece] = []
        self.fed_bytes = 0  # a chunk may end inside a sample: counted in bytes
        self.block_align = block_align
        self.queued = 0  # bytes waiting to be written to its stdin
        self.stderr = bytearray()
        self.reader = FrameReader()
        self.held_back = False  # its frames fill HELD_FRAME_BYTES: its output is not read meanwhile
        # Samples for its stdin, in order; only write() takes from it, and every feed()
        # notes _queue_changes after appending, so write() never waits on a full queue.
        self._queue: deque[bytes] = deque()
        self._queue_changes = Changes()  # samples queued, or feeding ended
        self._feeding_ends = False
        self._frames_read = 0
        self._piece_index = 0

    @property
    def open_piece(self) -> Piece | None:
        return self.pieces[-1] if self.pieces and self.pieces[-1].end_byte is None else None

    @property
    def fed_samples(self) -> int:
        return self.fed_bytes // self.block_align

    def feed(self, samples: bytes) -> None:
        self._queue.append(samples)
        self.queued += len(samples)
        self.fed_bytes += len(samples)
        self._queue_changes.note()

    def end_feeding(self) -> None:
        self._feeding_ends = True
        self._queue_changes.note()

    @property
    def feeding_ended(self) -> bool:
        return self._feeding_ends

    async def write(self, drained: Changes) -> None:
        """The queue into FFmpeg's stdin; stdin closed once feeding ends."""
        stdin = self.process.stdin
        assert stdin is not None
        while True:
            seen = self._queue_changes.seen()
            while self._queue:
                chunk = self._queue.popleft()
                with self.progress.waiting_for(ENCODER_INPUT):
                    if not await write(stdin, chunk):
                        return  # FFmpeg stopped reading; its exit status says why
                self.progress.moved()
                self.queued -= len(chunk)
                drained.note()
            if self._feeding_ends:
                break
            await self._queue_changes.after(seen)
        with self.progress.waiting_for(ENCODER_INPUT):
            await end_input(stdin)

    async def read(self, changed: Changes, released: Changes) -> None:
        """FFmpeg's frames, each to the piece whose samples made it; while its pieces hold
        HELD_FRAME_BYTES, none are read until some leave them (``released``)."""
        stdout = self.process.stdout
        assert stdout is not None
        while True:
            await self._room_for_frames(released)
            with self.progress.waiting_for(ENCODER_OUTPUT):
                chunk = await stdout.read(PIPE_READ)
            if not chunk:
                break
            self.progress.moved()
            for frame in self.reader.feed(chunk):
                self._place(frame)
            changed.note()
        self.reader.end()
        for piece in self.pieces:
            piece.complete = True
        changed.note()

    async def _room_for_frames(self, released: Changes) -> None:
        """Its frames wait for the database, or for a join with another encoder's: both are
        named where they are waited for (the output's sink, SegmentedEncoder._assemble)."""
        while True:
            seen = released.seen()
            self.held_back = sum(piece.held_bytes for piece in self.pieces) >= HELD_FRAME_BYTES
            if not self.held_back:
                return
            await released.after(seen)

    def _place(self, frame: Frame) -> None:
        """Frame i of this encoder was made of its input's samples from i x samples per frame on."""
        position = self._frames_read * self.source_samples_per_frame
        self._frames_read += 1
        while self._piece_index + 1 < len(self.pieces) and position >= self.pieces[self._piece_index + 1].start:
            self.pieces[self._piece_index].complete = True
            self._piece_index += 1
        piece = self.pieces[self._piece_index]
        last = self._piece_index + 1 == len(self.pieces)
        beyond = last and piece.end_byte is not None and not piece.final and position >= self.fed_samples
        if piece.passed_on or beyond:
            return  # past the join, or LAME's last frames after a piece that does not end the file
        piece.hold(frame)


@dataclass
class Run:
    """Frames of the file from ``first_frame`` on come from this piece of this encoder
    (until the next run); no encoder: frames stored before a resume (converter/resume.py)."""

    first_frame: int
    piece: Piece
    encoder: EncoderProcess | None


class SegmentedEncoder:
    """An upload's samples to its encoders, their frames joined in order to ``emit``.

    Made by ``running``; ``take`` the samples as they arrive, then ``finish``: it
    returns once every frame has been handed on."""

    def __init__(
        self,
        plan: EncoderPlan,
        config: ConverterConfig,
        declared_bytes: int | None,  # the WAV's data size when its header states it
        emit: Callable[[bytes], Awaitable[None]],
        progress: Progress,
        tasks: asyncio.TaskGroup,
    ) -> None:
        self.plan = plan
        self.pre_roll = plan.pre_roll
        self.post_roll = post_roll_frames(plan)
        self.segment_frames = segment_frames(plan, config.segment_seconds)
        self.spare = config.spare
        self.most_encoders = config.parallel_segments if plan.splittable else 1
        self.helper_backlog = config.helper_backlog
        self.declared_bytes = declared_bytes
        self.emit = emit
        self.progress = progress
        self.tasks = tasks
        self.encoders: list[EncoderProcess] = []
        self.runs: list[Run] = []
        self.run_index = 0  # the run whose frames are being passed on
        self.read_bytes = 0  # samples read from the upload so far, in bytes
        # Where the next encoder could begin (a pre-roll before the next segment
        # boundary): frames before it can no longer be changed by a join.
        self.next_decision_frame = self.segment_frames - self.pre_roll if self.most_encoders > 1 else NEVER
        self.ended = False
        self.changes = Changes()  # frames read, a join decided, the upload ended
        self.released = Changes()  # frames left their pieces (handed on, dropped): an encoder held back reads on
        self.drained = Changes()  # an encoder took queued samples
        self.joins = 0
        self.forced_joins = 0
        self.tag_sent = False  # the file's ID3v2 tag has been passed on (or was stored before)
        self._assembling: asyncio.Task[None] | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls,
        plan: EncoderPlan,
        config: ConverterConfig,
        declared_bytes: int | None,
        emit: Callable[[bytes], Awaitable[None]],
        progress: Progress,
        stored: tuple[int, list[Frame]] | None = None,
    ) -> AsyncIterator[SegmentedEncoder]:
        """An encoder with its first FFmpeg started; with ``stored`` (a frame number and the
        frames stored from it on), one that goes on from there, joined onto those frames.
        When the block ends, its tasks have ended and every FFmpeg it started is reaped
        (killed first if it still runs), whether the block finished the upload or failed."""
        started: list[EncoderProcess] = []
        try:
            async with asyncio.TaskGroup() as tasks:
                encoder = cls(plan, config, declared_bytes, emit, progress, tasks)
                started = encoder.encoders
                await (encoder.start() if stored is None else encoder.resume(*stored))
                yield encoder
        finally:
            for process in started:
                await reap(process.process)

    # --- the upload's side ---------------------------------------------------------

    async def start(self) -> None:
        first = await self._new_encoder(borrowed=False)
        piece = Piece(first_frame=0, start=0)
        first.pieces.append(piece)
        self.runs.append(Run(0, piece, first))
        self._assembling = self.tasks.create_task(self._assemble())

    async def resume(self, first_frame: int, stored: list[Frame]) -> None:
        """Go on from frame ``first_frame``: the upload's samples from there on go to a new
        encoder, joined onto the ``stored`` frames (those from first_frame on) as a helper is
        joined onto the encoder before it, a pre-roll after first_frame."""
        assert first_frame == self.plan.on_grid(first_frame)
        self.tag_sent = True
        boundary = first_frame + self.pre_roll
        earlier = Piece(first_frame=first_frame, start=0, end_byte=self.plan.bytes_before(first_frame + len(stored)))
        for frame in stored:
            earlier.hold(frame)
        earlier.complete = True
        self.runs.append(Run(first_frame, earlier, None))
        encoder = await self._new_encoder(borrowed=False)
        piece = Piece(first_frame=first_frame, start=0)
        encoder.pieces.append(piece)
        self.runs.append(Run(boundary, piece, encoder))
        self.read_bytes = self.plan.bytes_before(first_frame)
        if self.most_encoders > 1:
            self.next_decision_frame = boundary + self.segment_frames - self.pre_roll
        self._assembling = self.tasks.create_task(self._assemble())

    async def take(self, samples: bytes) -> None:
        """The upload's next samples, to every encoder whose piece they belong to."""
        while samples:
            decision = self.plan.bytes_before(self.next_decision_frame)
            cut = len(samples)
            if self.read_bytes < decision < self.read_bytes + cut:
                cut = decision - self.read_bytes
            for encoder in self.encoders:
                piece = encoder.pieces[-1] if encoder.pieces else None
                if piece is None or piece.complete:
                    continue
                if piece.end_byte is None:
                    encoder.feed(samples[:cut])
                elif self.read_bytes < piece.end_byte:
                    encoder.feed(samples[: min(cut, piece.end_byte - self.read_bytes)])
            self.read_bytes += cut
            samples = samples[cut:]
            for encoder in self.encoders:
                last = encoder.pieces[-1]
                if encoder.releasing and last.end_byte is not None and self.read_bytes >= last.end_byte:
                    encoder.releasing = False
                    encoder.end_feeding()
            if self.read_bytes == decision:
                await self._decide()
        while True:
            seen = self.drained.seen()
            if sum(encoder.queued for encoder in self.encoders) <= READ_AHEAD_BYTES:
                break
            with self.progress.waiting_for(ENCODER_INPUT):
                await self.drained.after(seen)

    async def finish(self) -> None:
        """The upload ended: the current piece ends with it, the encoders flush, and
        every frame is handed on before this returns."""
        self._take_back_unfinished_handover()
        self.runs[-1].piece.end_byte = self.read_bytes
        self.runs[-1].piece.final = True
        for encoder in self.encoders:
            encoder.end_feeding()
        self.ended = True
        self.next_decision_frame = NEVER
        self.changes.note()
        assert self._assembling is not None
        await self._assembling

    def _take_back_unfinished_handover(self) -> None:
        """The upload ended before the earlier encoder's post-roll did: no join can be
        made there (its frames past the end would be dropped, and the helper holds
        too little or nothing), so the earlier encoder keeps the end of the file."""
        if len(self.runs) < 2 or self.run_index == len(self.runs) - 1 or self.runs[-2].encoder is None:
            return  # no handover, it is joined already, or onto stored frames that cannot go on
        earlier, later = self.runs[-2].piece, self.runs[-1].piece
        assert earlier.end_byte is not None
        if self.read_bytes >= earlier.end_byte:
            return
        self.runs.pop()
        later.drop_all()
        self.released.note()
        earlier.end_byte = None

    async def _decide(self) -> None:
        """At a decision point: does the next segment go to another encoder?"""
        decision_frame = self.next_decision_frame
        boundary = decision_frame + self.pre_roll
        current, worker = self.runs[-1].piece, self.runs[-1].encoder
        assert worker is not None  # the last run is always an encoder's: stored frames come first
        helper = None
        declared = self.declared_bytes
        segment_bytes = self.plan.bytes_before(self.segment_frames)
        room_left = declared is None or declared - self.plan.bytes_before(boundary) > segment_bytes // 2
        if worker.queued > self.helper_backlog and room_left:
            helper = await self._helper(worker)
        if helper is not None:
            current.end_byte = self.plan.bytes_before(boundary + self.post_roll)
            piece = Piece(first_frame=decision_frame, start=helper.fed_samples)
            helper.pieces.append(piece)
            self.runs.append(Run(boundary, piece, helper))
        self._release_spares()
        self.next_decision_frame = decision_frame + self.segment_frames
        self.changes.note()

    async def _helper(self, busy: EncoderProcess) -> EncoderProcess | None:
        idle = [
            encoder
            for encoder in self.encoders
            if encoder is not busy
            and encoder.open_piece is None
            and not encoder.feeding_ended
            and not (encoder.borrowed and self._contended)
        ]
        if idle:
            return min(idle, key=lambda encoder: encoder.queued)
        # An encoder held back is behind because its frames wait (for the database, most
        # likely): another FFmpeg would wait the same, for a slot and a join's worth of work.
        can_borrow = (
            len(self.encoders) < self.most_encoders
            and self.spare is not None
            and not self._contended
            and not busy.held_back
        )
        if can_borrow and self.spare is not None and await self.spare.borrow():
            return await self._new_encoder(borrowed=True)
        return None

    @property
    def _contended(self) -> bool:
        return self.spare is not None and self.spare.contended

    def _release_spares(self) -> None:
        """Another upload waits: borrowed encoders with nothing more to do finish (once
        their post-roll is fed) and give their slots back."""
        if not self._contended:
            return
        for encoder in self.encoders:
            if encoder.borrowed and encoder.open_piece is None:
                encoder.releasing = True

    async def _new_encoder(self, borrowed: bool) -> EncoderProcess:
        try:
            process = await self.plan.start(first=not self.encoders and not self.tag_sent)
        except BaseException:
            if borrowed and self.spare is not None:
                self.spare.give_back()
            raise
        source = self.plan.source
        encoder = EncoderProcess(
            process, borrowed, self.plan.source_samples_per_frame, source.block_align, self.progress
        )
        self.encoders.append(encoder)
        self.tasks.create_task(encoder.write(self.drained))
        self.tasks.create_task(self._read(encoder))
        self.tasks.create_task(keep_tail(encoder.process, encoder.stderr))
        return encoder

    async def _read(self, encoder: EncoderProcess) -> None:
        try:
            await encoder.read(self.changes, self.released)
            with self.progress.waiting_for(ENCODER_OUTPUT):
                await encoder.process.wait()
        finally:
            if encoder.borrowed and self.spare is not None:
                encoder.borrowed = False
                self.spare.give_back()
        if encoder.process.returncode != 0:
            detail = bytes(encoder.stderr).decode("utf-8", "replace").strip()
            raise ConversionError("The WAV could not be converted: its samples could not be encoded.", detail)

    # --- the MP3's side ------------------------------------------------------------

    async def _assemble(self) -> None:
        """Pass frames on in the file's order, joining where the runs change.

        Each round looks at the state, acts, and then waits for a change made
        after its look: one made while it was passing frames on (awaiting the
        database) is seen at once, never lost."""
        while True:
            seen = self.changes.seen()
            if not self.tag_sent:
                tag = self.encoders[0].reader.tag
                if tag is None:
                    if self._all_read():
                        return
                    await self._changed_since(seen)
                    continue
                await self.emit(tag)
                self.tag_sent = True
            run = self.runs[self.run_index]
            following = self.runs[self.run_index + 1] if self.run_index + 1 < len(self.runs) else None
            hold_from = following.first_frame - self.pre_roll if following else self.next_decision_frame
            await self._pass_on(run.piece, hold_from)
            if following is not None and run.piece.next_frame >= hold_from:
                if await self._join(run.piece, following.piece, hold_from):
                    self.run_index += 1
                    continue
            elif following is None and self.ended and run.piece.complete and not run.piece.frames:
                return
            if self._all_read() and not run.piece.frames:
                # Nothing more can come: better an error than an upload that never answers.
                raise Mp3StreamError(f"The encoders' output ended at frame {run.piece.next_frame}.")
            await self._changed_since(seen)

    async def _pass_on(self, piece: Piece, before: int) -> None:
        out = bytearray()
        while piece.frames and piece.next_frame < before:
            out += piece.frames.popleft().data
            piece.next_frame += 1
            if len(out) >= EMIT_BYTES:
                await self._hand_on(piece, out)
                out.clear()
        if out:
            await self._hand_on(piece, out)

    async def _hand_on(self, piece: Piece, frames: bytearray) -> None:
        """Frames taken from ``piece``, to ``emit``: its encoder may read on meanwhile."""
        piece.held_bytes -= len(frames)
        self.released.note()
        await self.emit(bytes(frames))

    async def _join(self, earlier: Piece, later: Piece, from_frame: int) -> bool:
        """Join once both pieces hold the frames around the boundary; False: not yet."""
        last = from_frame + self.pre_roll + POST_ROLL_FRAMES - 2
        if not (earlier.holds(last) and later.holds(last)):
            return False
        before = list(earlier.frames)[: last - from_frame]
        after = list(later.frames)[: last - from_frame]
        at = join(before, after, self.pre_roll, len(before))
        self.joins += 1
        if at is None:
            # No frame fits within the post-roll (never seen in testing): cut at the
            # boundary, which decodes but may click; counted, and logged.
            self.forced_joins += 1
            log.warning("no frame to join at near frame %d", from_frame + self.pre_roll)
            at = min(self.pre_roll, len(before), len(after))
        await self.emit(b"".join(bytes(frame.data) for frame in before[:at]))
        earlier.drop_all()
        later.drop_first(at)
        later.next_frame = from_frame + at
        self.released.note()
        return True

    def _all_read(self) -> bool:
        return all(piece.complete for encoder in self.encoders for piece in encoder.pieces)

    async def _changed_since(self, seen: int) -> None:
        with self.progress.waiting_for(JOINING):
            await self.changes.after(seen)
