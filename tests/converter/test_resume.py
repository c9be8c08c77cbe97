"""A resumable conversion (converter/resume.py) cut off and resumed, with real FFmpeg and
a large object kept in memory the way the database keeps it: wherever the cuts fall, the
MP3 decodes to exactly the WAV's samples and sounds as a single encoding does, and a
resume asks the client for nothing it sent before."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
from array import array
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from converter.analysis import Analysis
from converter.errors import Mp3StreamError
from converter.mp3 import parse_header
from converter.options import ConverterConfig, EncodeOptions
from converter.pipeline import convert
from converter.process import PIPE_READ
from converter.resume import Checkpoint, FrameOffsets, Resumable, stored_frames
from service import slots as slots_module
from service.slots import ConversionSlots
from tests.support import FFMPEG, NextInLine, Spares, decoded, music, resampled, samples_of, snr_db

SEGMENT_S = 1.5
WAV_HEADER_BYTES = 44  # FFmpeg's, for the music below
# One encoder at a time: a resume's join is then the only one, to compare with a single
# encoding; and segments joined at every boundary besides.
ONE_ENCODER = ConverterConfig(ffmpeg=FFMPEG, time_limit_s=60, max_seconds=3600)
SEGMENTED = ConverterConfig(
    ffmpeg=FFMPEG, time_limit_s=60, max_seconds=3600, parallel_segments=2,
    spare=Spares(), segment_seconds=SEGMENT_S, helper_backlog=-1,
)  # fmt: skip


class ClientGone(Exception):
    """The connection dropped: what a PATCH's body raises when its client goes."""


class StoredUpload:
    """An upload's large object and last checkpoint, as the database keeps them."""

    def __init__(self) -> None:
        self.mp3 = bytearray()
        self.checkpoint: Checkpoint | None = None
        self.pending = bytearray()
        self.pending_at = 0
        self.carried: list[int] = []  # the MP3 bytes each checkpoint stored

    def resumable(self, every_s: float = 0.0, every_bytes: int = 1 << 20) -> Resumable:
        previous = self.checkpoint
        self.pending, self.pending_at = bytearray(), previous.resume_at if previous else 0
        stored = []
        if previous is not None and previous.resume_frame > 0:  # else it starts afresh
            stored = stored_frames(bytes(self.mp3[previous.resume_at : previous.size]))
        return Resumable(previous, stored, self.earlier_offsets, self.commit, every_s=every_s, every_bytes=every_bytes)

    async def sink(self, chunk: bytes) -> None:
        self.pending += chunk

    async def commit(self, checkpoint: Checkpoint) -> None:
        self.carried.append(len(self.pending))
        self.mp3[self.pending_at :] = self.pending
        assert len(self.mp3) == checkpoint.size
        self.pending_at, self.pending, self.checkpoint = checkpoint.size, bytearray(), checkpoint

    async def earlier_offsets(self, frames: int) -> array[int]:
        assert self.checkpoint is not None
        # In pieces that cut frame headers (the service reads 4 MiB at a time, from byte 0).
        offsets = FrameOffsets(self.checkpoint.first_frame_at)
        for at in range(0, self.checkpoint.resume_at, 1001):
            offsets.feed(at, bytes(self.mp3[at : min(at + 1001, self.checkpoint.resume_at)]))
        return offsets.offsets[:frames]

    def finish(self, header_frame: bytes, at: int) -> bytes:
        self.mp3[self.pending_at :] = self.pending
        self.mp3[at : at + len(header_frame)] = header_frame
        return bytes(self.mp3)


async def sent(wav: bytes, start: int, cut: int | None) -> AsyncIterator[bytes]:
    """The WAV from ``start`` in network-sized chunks; the connection drops at byte ``cut``."""
    end = len(wav) if cut is None else cut
    for at in range(start, end, 65537):
        yield wav[at : min(at + 65537, end)]
    if cut is not None:
        raise ClientGone


async def upload_with_cuts(
    wav: bytes, cuts: list[int], options: EncodeOptions, config: ConverterConfig = ONE_ENCODER
) -> tuple[bytes, list[tuple[int, int]]]:
    """Upload the WAV, the connection dropping at each of ``cuts`` (increasing byte offsets of
    the WAV), resuming each time from the offset the upload reports; the MP3, and each cut
    with the bytes sent again after it."""
    stored = StoredUpload()
    resent: list[tuple[int, int]] = []
    offset = 0
    for cut in [*cuts, None]:
        if cut is not None and cut <= offset:
            continue
        resumable = stored.resumable()
        try:
            converted = await convert(sent(wav, offset, cut), stored.sink, options, config, resumable=resumable)
        except ClientGone:
            assert cut is not None
            durable = stored.checkpoint.upload_offset if stored.checkpoint else 0  # none: cut within the header
            assert durable >= offset  # an offset never goes back
            resent.append((cut, cut - durable))
            offset = durable
            continue
        measured.append(converted.analysis)
        return stored.finish(converted.header_frame, converted.header_offset), resent
    raise AssertionError("the last request did not finish the upload")


# What the last request of each upload_with_cuts measured: its waveform and loudness.
measured: list[Analysis | None] = []


async def single(wav: bytes, options: EncodeOptions) -> bytes:
    out = bytearray()

    async def sink(chunk: bytes) -> None:
        out.extend(chunk)

    converted = await convert(sent(wav, 0, None), sink, options, ONE_ENCODER)
    measured.append(converted.analysis)
    out[converted.header_offset : converted.header_offset + len(converted.header_frame)] = converted.header_frame
    return bytes(out)


@settings(max_examples=12, deadline=None)
@given(cuts=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=3))
# Resumed 17 frames in, joined just before an attack: where the later encoder had saved
# 22 bytes of reservoir and one encoding 178, the attack's frame lost 8 dB (converter/splice.py).
@example(cuts=[0.09375])
async def test_an_upload_cut_off_anywhere_and_resumed_plays_every_sample_as_one_encoding_does(
    tmp_path_factory: pytest.TempPathFactory, cuts: list[float]
) -> None:
    wav = music(tmp_path_factory.getbasetemp(), 44100, 2)
    options = EncodeOptions(bitrate_kbps=128)
    mp3, resent = await upload_with_cuts(wav, sorted(int(len(wav) * cut) for cut in cuts), options)
    original, played = samples_of(wav), decoded(mp3, 2)
    assert len(played) == len(original)
    resumed_measure = measured[-1]
    one = decoded(await single(wav, options), 2)
    assert resumed_measure == measured[-1]  # the waveform and loudness of the whole, however it was cut
    assert snr_db(original, played) >= snr_db(original, one) - 0.05
    # Nothing is sent twice: what a cut-off request brought is kept, as MP3 or as it was sent,
    # but for a cut within the WAV's header (no format known yet: it is sent again).
    assert all(again == 0 or cut <= WAV_HEADER_BYTES for cut, again in resent)


async def test_an_upload_faster_than_real_time_checkpoints_as_its_mp3_grows(tmp_path: Path) -> None:
    """Checkpoints come every_s apart, or as soon as every_bytes of MP3 are new: a 60-minute WAV
    sent in 20 s once carried 4-6 MB a checkpoint, copied whole on its way to the database."""
    stored = StoredUpload()
    every_bytes = 64 << 10
    resumable = stored.resumable(every_s=3600.0, every_bytes=every_bytes)
    wav = music(tmp_path, 44100, 2)
    converted = await convert(sent(wav, 0, None), stored.sink, EncodeOptions(bitrate_kbps=320), ONE_ENCODER,
                              resumable=resumable)  # fmt: skip
    assert converted.size > 8 * every_bytes
    assert sum(stored.carried) >= converted.size - every_bytes - PIPE_READ  # all but the end checkpointed
    assert max(stored.carried) <= every_bytes + PIPE_READ  # what one read of FFmpeg's output adds


class MeasuredUpload(StoredUpload):
    """A StoredUpload that counts the measurement its checkpoints store, and says when its MP3 grows."""

    def __init__(self) -> None:
        super().__init__()
        self.measured_bytes = 0
        self.grown = asyncio.Condition()

    async def sink(self, chunk: bytes) -> None:
        await super().sink(chunk)
        async with self.grown:
            self.grown.notify_all()

    async def commit(self, checkpoint: Checkpoint) -> None:
        self.measured_bytes += len(checkpoint.analysis)
        await super().commit(checkpoint)

    async def made(self, mp3_bytes: float) -> None:
        """Until the sink has been handed ``mp3_bytes`` of MP3."""
        async with self.grown:
            await self.grown.wait_for(lambda: self.pending_at + len(self.pending) >= mp3_bytes)


def pink_noise(folder: Path, seconds: int) -> bytes:
    """A mono WAV at 44.1 kHz: dense, so its waveform compresses little, as a recording's."""
    target = folder / "noise.wav"
    subprocess.run([FFMPEG, "-loglevel", "error", "-f", "lavfi", "-i", f"anoisesrc=d={seconds}:c=pink:a=0.5:r=44100",
                    "-c:a", "pcm_s16le", str(target)], check=True)  # fmt: skip
    return target.read_bytes()


async def sent_as_slowly_as_it_converts(
    wav: bytes, upload: MeasuredUpload, mp3_per_wav_byte: float, ahead: int = 4 << 20
) -> AsyncIterator[bytes]:
    """The WAV in small pieces, each only once the MP3 has caught up with all but ``ahead``
    bytes before it: as a client slower than the encoder sends, without taking its time."""
    for at in range(0, len(wav), 16384):
        await upload.made((at - ahead) * mp3_per_wav_byte)
        yield wav[at : at + 16384]


async def test_a_slow_upload_checkpoints_no_more_measurement_than_an_eighth_of_its_wav(tmp_path: Path) -> None:
    """Every checkpoint stores the whole measurement so far (the waveform mostly, up to about 170 KB
    in the first hour), and a slow upload checkpoints every second: an hour sent in real time once
    wrote hundreds of MB of it to the database. Here 4 minutes, checkpointing as often as the MP3 grows,
    wrote 5.5 MB (a quarter of the WAV); periodic checkpoints now wait for the client to send
    eight times the last one's measurement (converter/resume.py's sent_per_measured_byte)."""
    seconds = 240
    wav = pink_noise(tmp_path, seconds)
    upload = MeasuredUpload()
    source = sent_as_slowly_as_it_converts(wav, upload, mp3_per_wav_byte=320_000 / 8 / (44100 * 2))
    # The pacing waits on the encoder: ONE_ENCODER's time limit (60 s) is its deadline.
    converted = await convert(source, upload.sink, EncodeOptions(bitrate_kbps=320), ONE_ENCODER,
                              resumable=upload.resumable())  # fmt: skip
    assert converted.analysis is not None
    assert converted.analysis.sample_frames == seconds * 44100
    assert len(upload.carried) >= 20  # it still checkpoints as it goes (every few seconds of audio here)
    assert upload.measured_bytes <= len(wav) // 8


async def test_checkpoints_keep_coming_however_large_the_measurement(tmp_path: Path) -> None:
    """However long the wait for the client's bytes would be, a periodic checkpoint comes once
    most_apart_s has passed (here at once: as often as the MP3 grows), so that a crash leaves
    the offset only seconds behind what was sent. Without it, waiting for eight times the
    measurement let an hour sent in real time go 9 s between checkpoints, 19 s behind."""
    wav = pink_noise(tmp_path, 60)
    upload = MeasuredUpload()
    resumable = dataclasses.replace(upload.resumable(), sent_per_measured_byte=1 << 40, most_apart_s=0.0)
    source = sent_as_slowly_as_it_converts(wav, upload, mp3_per_wav_byte=320_000 / 8 / (44100 * 2))
    # The pacing waits on the encoder: ONE_ENCODER's time limit (60 s) is its deadline.
    await convert(source, upload.sink, EncodeOptions(bitrate_kbps=320), ONE_ENCODER, resumable=resumable)
    every_mib = 60 * 320_000 // 8 >> 20
    assert len(upload.carried) > 4 * every_mib  # not only the checkpoints each MiB of new MP3 brings


@pytest.mark.parametrize(("rate", "channels"), [(48000, 1), (22050, 2)])
async def test_resumes_join_at_every_mpeg_version_and_channel_count(tmp_path: Path, rate: int, channels: int) -> None:
    """And with segments joined besides, on two encoders."""
    wav = music(tmp_path, rate, channels)
    cuts = [len(wav) // 3, 2 * len(wav) // 3]
    mp3, resent = await upload_with_cuts(wav, cuts, EncodeOptions(vbr_quality=2), SEGMENTED)
    assert len(resent) == 2
    assert len(decoded(mp3, channels)) == len(samples_of(wav))


@pytest.mark.parametrize(("rate", "out_rate"), [(48000, 44100), (44100, 22050)])
async def test_a_resampled_upload_resumes_where_a_frame_begins_on_a_sample(
    tmp_path: Path, rate: int, out_rate: int
) -> None:
    """converter/command.py: a resume point is a frame that begins on a source sample."""
    wav = music(tmp_path, rate, 2)
    options = EncodeOptions(bitrate_kbps=128, sample_rate=out_rate)
    cuts = [len(wav) // 5, len(wav) // 5 + 70_000, 3 * len(wav) // 5]
    mp3, resent = await upload_with_cuts(wav, cuts, options)
    assert resent == [(cut, 0) for cut in cuts]  # every cut kept all the request brought
    resumed_measure = measured[-1]
    one = decoded(await single(wav, options), 2)
    played = decoded(mp3, 2)
    assert len(played) == len(one)
    reference = resampled(wav, out_rate)
    assert snr_db(reference, played) >= snr_db(reference, one) - 0.05
    assert resumed_measure == measured[-1]


async def test_a_request_cut_short_gives_its_turn_to_the_next_upload_for_its_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PATCH whose body ends early keeps what it was sent: its encoders finish on its turn,
    then its last write and checkpoint wait on the database, not on a core, so the turn goes
    to an upload waiting for it then. It was held, idle, through that commit until the
    lending grace gave it away; the grace is made longer than the grace for the last
    checkpoint here, so only giving the turn back lets the checkpoint be stored."""
    monkeypatch.setattr(slots_module, "IDLE_GRACE_S", 120.0)
    wav = music(tmp_path, 44100, 2)
    slots = ConversionSlots(1, queue_timeout=30)
    next_in_line = NextInLine(slots)
    stored = StoredUpload()
    committed = stored.commit

    async def commit(checkpoint: Checkpoint) -> None:
        if checkpoint.upload_offset == len(wav) // 2:  # the last: all that was sent, some kept as sent
            await next_in_line.has_its_turn.wait()  # bounded by the last checkpoint's grace (3 s)
        await committed(checkpoint)

    stored.commit = commit  # type: ignore[method-assign]
    resumable = stored.resumable(every_s=3600, every_bytes=1 << 30)  # one checkpoint: the last
    cut_short = next_in_line.behind(sent(wav, 0, len(wav) // 2))
    with pytest.raises(ClientGone):
        async with slots.admitted(user_id=1) as turn:
            await convert(cut_short, stored.sink, EncodeOptions(), ONE_ENCODER, turn, resumable=resumable)
    await next_in_line.done()
    assert stored.checkpoint is not None
    assert stored.checkpoint.upload_offset == len(wav) // 2
    assert slots.active == 0


def test_frame_offsets_are_the_same_however_the_stored_bytes_are_cut() -> None:
    """A resumed upload's seek table reads where its stored frames begin a piece at a time
    (4 MiB in the service), not the MP3 whole in memory: a piece may end inside a frame's
    header, or before the first frame (the tag and the header frame come first)."""
    headers = [0xFFFB9064, 0xFFFBB064, 0xFFFB5064, 0xFFFB9264]  # 128, 192 and 64 kbit/s; 128 padded
    frames = [header.to_bytes(4, "big") for header in headers * 3]
    lengths = [parse_header(frame).length for frame in frames]  # type: ignore[union-attr]
    stored = b"ID3 and the header frame" + b"".join(
        frame.ljust(length, b"\0") for frame, length in zip(frames, lengths, strict=True)
    )
    first_frame_at = len(b"ID3 and the header frame")
    expected = array("Q", [sum(lengths[:i]) for i in range(len(lengths))])
    for size in (*range(1, 9), 417, len(stored)):
        offsets = FrameOffsets(first_frame_at)
        for at in range(0, len(stored), size):
            offsets.feed(at, stored[at : at + size])
        assert offsets.offsets == expected, size
    with pytest.raises(Mp3StreamError):
        FrameOffsets(first_frame_at - 1).feed(0, stored)
