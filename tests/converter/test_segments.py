"""One upload on several encoders (converter/segments.py, converter/splice.py), with real
FFmpeg on short music-like recordings cut into short segments: the joined MP3 decodes
to every sample of the WAV, sounds as a single encoding does at and between the joins,
and its header frame counts what is there; borrowed slots come back when another
upload waits."""

from __future__ import annotations

import asyncio
import io
import math
import struct
from array import array
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from mutagen.mp3 import MP3

from converter.command import EncoderPlan
from converter.errors import ConversionStalled
from converter.mp3 import samples_per_frame
from converter.options import ConverterConfig, EncodeOptions
from converter.pipeline import Converted, choose_format, convert
from converter.progress import STORING, Progress
from converter.segments import POST_ROLL_FRAMES, SegmentedEncoder, segment_frames
from converter.splice import FrameReader, pre_roll_frames
from converter.wav import WavHeader
from service.slots import IDLE_GRACE_S, ConversionSlots
from tests.support import (
    FFMPEG,
    MUSIC_SECONDS,
    NextInLine,
    Spares,
    decoded,
    music,
    plan_of,
    resampled,
    samples_of,
    snr_db,
    until,
    wav_header,
)

SECONDS = MUSIC_SECONDS
SEGMENT_S = 1.5  # ten joins at 44.1 kHz
WINDOW_FRAMES = 12  # around each join, compared with the single encoding
# Between two encodings of the same music, LAME's choices differ frame by frame as
# its reservoir and analysis go their own ways: windows of this size away from any
# join differ from the single encoding by up to ~0.6 dB at 64 kbit/s and more, and
# by up to ~3.5 dB at 32 kbit/s stereo. A join cut without its reservoir costs 15 dB
# and more there (measured), so these bounds still catch one.
LOCAL_SLACK_DB = 1.0
STARVED_LOCAL_SLACK_DB = 4.0


async def chunks(data: bytes, size: int = 65537) -> AsyncIterator[bytes]:
    """As a network delivers them: chunks that end inside a sample frame."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def converted(wav: bytes, options: EncodeOptions, encoders: int, spare: Any = None) -> tuple[bytes, Converted]:
    """The stored MP3 (header frame in place) and what the conversion says of it; every segment
    boundary gets a helper (helper_backlog -1) so the cuts do not depend on timing."""
    config = ConverterConfig(
        ffmpeg=FFMPEG, time_limit_s=60, max_seconds=3600, parallel_segments=encoders,
        spare=spare or Spares(), segment_seconds=SEGMENT_S, helper_backlog=-1,
    )  # fmt: skip
    out = bytearray()

    async def sink(chunk: bytes) -> None:
        out.extend(chunk)

    result = await convert(chunks(wav), sink, options, config)
    out[result.header_offset : result.header_offset + len(result.header_frame)] = result.header_frame
    assert result.forced_joins == 0
    return bytes(out), result


CASES = [
    pytest.param(44100, 2, EncodeOptions(bitrate_kbps=192), 2, (0.05, LOCAL_SLACK_DB), id="44.1k-stereo-cbr192"),
    pytest.param(48000, 2, EncodeOptions(vbr_quality=2), 3, (0.05, LOCAL_SLACK_DB), id="48k-stereo-vbr2-3-encoders"),
    pytest.param(22050, 2, EncodeOptions(bitrate_kbps=64), 2, (0.05, LOCAL_SLACK_DB), id="22.05k-stereo-cbr64"),
    pytest.param(8000, 1, EncodeOptions(bitrate_kbps=32), 2, (0.05, LOCAL_SLACK_DB), id="8k-mono-cbr32"),
    pytest.param(44100, 1, EncodeOptions(vbr_quality=4), 2, (0.05, LOCAL_SLACK_DB), id="44.1k-mono-vbr4"),
    # 32 kbit/s of stereo at 44.1 kHz starves LAME: two encodings of the same music that
    # start at different places differ by a tenth of a dB either way (measured on longer
    # files: -0.12 to +0.08), joins or not; the joins themselves are checked below as usual.
    pytest.param(
        44100, 2, EncodeOptions(bitrate_kbps=32), 2, (0.15, STARVED_LOCAL_SLACK_DB), id="44.1k-stereo-cbr32-starved"
    ),
]


@pytest.mark.parametrize(("rate", "channels", "options", "encoders", "slack_db"), CASES)
async def test_joined_encodings_play_every_sample_and_sound_as_one_does(
    tmp_path_factory: pytest.TempPathFactory,
    rate: int,
    channels: int,
    options: EncodeOptions,
    encoders: int,
    slack_db: tuple[float, float],
) -> None:
    wav = music(tmp_path_factory.getbasetemp(), rate, channels)
    single, alone = await converted(wav, options, encoders=1)
    joined, together = await converted(wav, options, encoders=encoders)
    assert alone.joins == 0
    joins = together.joins
    frame_samples = samples_per_frame(rate)
    segment = segment_frames(plan_of(rate, channels, out_channels=options.channels), SEGMENT_S) * frame_samples
    assert joins == math.ceil(SECONDS * rate / segment - 0.5) - 1  # none in the last half segment

    original, one, many = samples_of(wav), decoded(single, channels), decoded(joined, channels)
    assert len(many) == len(one) == len(original)  # to the sample
    # No worse than one encoding (often a little better: encoders that start afresh).
    whole_slack, local_slack = slack_db
    assert snr_db(original, many) >= snr_db(original, one) - whole_slack

    for boundary in range(segment, (joins + 1) * segment, segment):
        start = max(0, boundary - WINDOW_FRAMES * frame_samples) * channels
        stop = (boundary + 2 * WINDOW_FRAMES * frame_samples) * channels
        at_join = snr_db(original, many, start, stop)
        assert at_join >= snr_db(original, one, start, stop) - local_slack, f"join near sample {boundary}"

    frames = FrameReader().feed(joined)
    assert len(frames) == len(FrameReader().feed(single))
    info: Any = MP3(io.BytesIO(joined)).info  # type: ignore[no-untyped-call]
    assert info.length == pytest.approx(len(original) / channels / rate, abs=0.001)
    # Waveform and loudness are of the whole recording in order, however many encoders had it.
    assert together.analysis is not None
    assert together.analysis == alone.analysis


@pytest.mark.parametrize(
    ("rate", "out_rate", "channels"),
    [
        pytest.param(48000, 44100, 2, id="48k-to-44.1k-every-49th-frame"),
        pytest.param(44100, 32000, 2, id="44.1k-to-32k-every-5th-frame"),
        pytest.param(96000, 48000, 2, id="96k-to-48k"),
        pytest.param(44100, 22050, 1, id="44.1k-to-22.05k-mono"),
    ],
)
async def test_resampled_uploads_are_cut_where_frames_begin_on_samples(
    tmp_path_factory: pytest.TempPathFactory, rate: int, out_rate: int, channels: int
) -> None:
    """A frame of a resampled stream begins on a source sample every few frames
    (converter/command.py): cut there, the joined encodings play every sample of one."""
    wav = music(tmp_path_factory.getbasetemp(), rate, channels)
    options = EncodeOptions(bitrate_kbps=128, sample_rate=out_rate)
    single, alone = await converted(wav, options, encoders=1)
    joined, together = await converted(wav, options, encoders=2)
    segment = segment_frames(plan_of(rate, channels, out_rate), SEGMENT_S) * samples_per_frame(out_rate)
    assert together.joins == math.ceil(SECONDS * out_rate / segment - 0.5) - 1 >= 3
    reference, one, many = resampled(wav, out_rate), decoded(single, channels), decoded(joined, channels)
    assert len(many) == len(one) == len(reference)
    assert snr_db(reference, many) >= snr_db(reference, one) - 0.05
    assert together.analysis == alone.analysis


async def test_a_borrowed_slot_comes_back_when_another_upload_waits(tmp_path: Path) -> None:
    """Two slots: the upload borrows the second, then another upload starts waiting; the
    slot is given back at the next segment boundary, long before the first upload ends."""
    wav = music(tmp_path, 44100, 2)
    slots = ConversionSlots(2, queue_timeout=30)
    waiter_got_a_slot = asyncio.Event()
    frame_bytes = 1152 * 4
    segment = segment_frames(plan_of(44100, 2), SEGMENT_S)
    data_start = wav.index(b"data") + 8
    before_second_decision = data_start + (2 * segment - 20) * frame_bytes
    past_second_post_roll = data_start + (2 * segment + 40) * frame_bytes

    asking = asyncio.Event()

    async def other_upload() -> None:
        async with slots.admitted(user_id=2) as turn:
            asking.set()  # it runs on into working() and waits there before anyone sees this
            await turn.working()
            waiter_got_a_slot.set()

    async def source() -> AsyncIterator[bytes]:
        yield wav[:before_second_decision]  # past the first boundary: the spare is borrowed
        assert slots.active == 2
        waiting = asyncio.create_task(other_upload())
        await asking.wait()
        assert slots.waiting == 1
        yield wav[before_second_decision:past_second_post_roll]  # past the second: it is given back
        async with asyncio.timeout(30):
            await waiter_got_a_slot.wait()
        await waiting
        yield wav[past_second_post_roll:]

    out = bytearray()

    async def sink(chunk: bytes) -> None:
        out.extend(chunk)

    async with slots.admitted(user_id=1) as turn:
        config = ConverterConfig(
            ffmpeg=FFMPEG, time_limit_s=60, max_seconds=3600, parallel_segments=2,
            spare=slots, segment_seconds=SEGMENT_S, helper_backlog=-1,
        )  # fmt: skip
        result = await convert(source(), sink, EncodeOptions(), config, turn)
    assert slots.active == 0
    assert result.joins >= 2
    out[result.header_offset : result.header_offset + len(result.header_frame)] = result.header_frame
    assert len(decoded(bytes(out), 2)) == len(samples_of(wav))


async def test_no_helper_is_borrowed_while_another_upload_is_starting(tmp_path: Path) -> None:
    """Two slots, one upload converting and a free slot: another upload that holds a place
    but has not asked for its turn yet (its first bytes on their way) will want that slot any
    moment. A helper on it would only share a core with that upload and pay an FFmpeg's
    start-up and a segment's pre- and post-roll: none is borrowed."""
    wav = music(tmp_path, 44100, 2)
    # A start-up grace longer than the test: the other upload starts all along.
    slots = ConversionSlots(2, queue_timeout=30, start_grace_s=60)
    other_may_end = asyncio.Event()  # set once the first upload is converted

    async def other_upload() -> None:
        async with slots.admitted(user_id=2):
            await other_may_end.wait()

    out = bytearray()

    async def sink(chunk: bytes) -> None:
        out.extend(chunk)

    config = ConverterConfig(
        ffmpeg=FFMPEG, time_limit_s=60, max_seconds=3600, parallel_segments=2,
        spare=slots, segment_seconds=SEGMENT_S, helper_backlog=-1,
    )  # fmt: skip
    async with slots.admitted(user_id=1) as turn:
        waiting = asyncio.create_task(other_upload())
        await until(lambda: slots.starting == 2)  # this upload's turn, not yet asked for, and the other's
        result = await convert(chunks(wav), sink, EncodeOptions(), config, turn)
    other_may_end.set()
    async with asyncio.timeout(30):
        await waiting
    assert result.joins == 0
    assert slots.active == slots.starting == 0
    out[result.header_offset : result.header_offset + len(result.header_frame)] = result.header_frame
    assert len(decoded(bytes(out), 2)) == len(samples_of(wav))


async def test_an_upload_keeps_its_turn_while_its_encoders_finish(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once its body is all in, an upload's turn is not lent as if its client were slow: its
    encoders still have the read-ahead to encode, and a helper started on that turn would only
    share a core with them (eight 1-minute uploads at once started fifteen FFmpegs, not eight,
    and converted 7 % less). The loop's clock is moved past the lending grace, not waited for."""
    slots = ConversionSlots(1, queue_timeout=30)
    loop = asyncio.get_running_loop()

    async def body() -> AsyncIterator[bytes]:
        yield b"RIFF"
        yield b"...."

    async with slots.admitted(user_id=1) as turn:
        assert [chunk async for chunk in Progress(stall_s=30).from_client(body(), turn)] == [b"RIFF", b"...."]
        later = loop.time() + 10 * IDLE_GRACE_S
        monkeypatch.setattr(loop, "time", lambda: later)  # every timer set until now is due
        for _ in range(3):
            await asyncio.sleep(0)  # the loop runs what is due
        assert slots.active == 1
        assert not await slots.borrow()
    assert slots.active == 0


async def test_an_upload_gives_its_turn_to_the_next_once_its_encoders_end(tmp_path: Path) -> None:
    """What is left of an upload once its encoders have ended (its last MP3 bytes written, the
    record finished, the commit) waits on the database, not on a core: the turn goes to an
    upload waiting for it then, not after the commit. With the database 30 ms away, eight
    uploads at once on two slots left the cores idle 1.6-2.5 core-s of about 9 while each
    turn waited for those round trips. Here the store holds the last write until the upload
    waiting has its turn (a deadline, not a wait: it never came before)."""
    wav = music(tmp_path, 44100, 2)  # 16 s: its MP3 is less than one sink write, written at the end
    slots = ConversionSlots(1, queue_timeout=30)
    next_in_line = NextInLine(slots)
    out = bytearray()
    appends = 0

    async def sink(chunk: bytes) -> None:
        nonlocal appends
        appends += 1
        async with asyncio.timeout(30):
            await next_in_line.has_its_turn.wait()
        out.extend(chunk)

    config = ConverterConfig(ffmpeg=FFMPEG, time_limit_s=60, max_seconds=3600)
    async with slots.admitted(user_id=1) as turn:
        result = await convert(next_in_line.behind(chunks(wav)), sink, EncodeOptions(), config, turn)
    await next_in_line.done()
    assert appends == 1
    out[result.header_offset : result.header_offset + len(result.header_frame)] = result.header_frame
    assert len(decoded(bytes(out), 2)) == len(samples_of(wav))
    assert slots.active == 0


async def test_an_upload_that_sends_nothing_keeps_helpers_off_only_for_its_start_up_grace() -> None:
    """A client that is admitted and then sends nothing counts as starting for the
    grace only (a quarter of a second by default), not for as long as its read timeout:
    one silent connection must not keep every other upload on one encoder."""
    slots = ConversionSlots(2, queue_timeout=30, start_grace_s=0.05)
    async with slots.admitted(user_id=1):
        assert slots.starting == 1
        assert not await slots.borrow()
        await until(lambda: slots.starting == 0, seconds=10)
        assert await slots.borrow()
        slots.give_back()
    assert slots.active == slots.starting == 0


async def test_frames_that_arrive_while_the_store_is_busy_are_not_lost(tmp_path: Path) -> None:
    """The interleaving that hung uploads with the database a network hop away: the
    encoders' last frames, the end of their output and the end of the upload all arrive
    while the joined frames are being stored. The store here holds its first append of
    frames until all of that has happened; the encoder must still finish. (All of the
    music's MP3 fits in HELD_FRAME_BYTES: its encoders are never held back waiting for that.)"""
    wav = music(tmp_path, 44100, 2)
    header = WavHeader()
    samples = header.feed(wav)
    assert header.format is not None
    # 320 kbit/s: FFmpeg's first 32 KiB of output (it writes no less into a pipe) ends
    # before the first join, so the held append leaves frames of the same run to pass on.
    plan = EncoderPlan(FFMPEG, header.format, choose_format(header, EncodeOptions(bitrate_kbps=320)))
    config = ConverterConfig(
        ffmpeg=FFMPEG, time_limit_s=60, max_seconds=3600, parallel_segments=2,
        spare=Spares(), segment_seconds=SEGMENT_S, helper_backlog=-1,
    )  # fmt: skip
    appends = 0
    first_frames_appending = asyncio.Event()  # set once, never cleared

    async def slow_store(chunk: bytes) -> None:
        nonlocal appends
        appends += 1
        if appends == 2:  # the ID3 tag came first; this is the first append of frames
            first_frames_appending.set()
            await until(lambda: encoder.ended and all(piece.complete for e in encoder.encoders for piece in e.pieces))

    three_seconds = 3 * 44100 * header.format.block_align
    async with SegmentedEncoder.running(plan, config, None, slow_store, Progress(60)) as encoder:
        await encoder.take(samples[:three_seconds])
        async with asyncio.timeout(20):
            await first_frames_appending.wait()
        await encoder.take(samples[three_seconds:])
        async with asyncio.timeout(20):  # it hung here, for ever
            await encoder.finish()


async def test_a_store_that_takes_nothing_more_stops_the_upload_being_read() -> None:
    """A database slower than the encoders (far away, busy) holds the upload back instead of
    filling the service's memory with MP3: with the store stopped at its first bytes, the
    conversion reads what its bounded buffers hold, no more, then stalls on the store. It
    read the whole upload, holding all the MP3, before (54 MiB for an hour, 200 ms away)."""
    silence = bytes(10 * 60 * 44100 * 4)  # LAME makes full frames of it at 320 kbit/s
    wav = wav_header(data_size=len(silence)) + silence
    sent = 0

    async def upload() -> AsyncIterator[bytes]:
        nonlocal sent
        for start in range(0, len(wav), 256 << 10):
            sent = start + (256 << 10)
            yield wav[start:sent]

    never = asyncio.Event()

    async def stopped_store(chunk: bytes) -> None:
        await never.wait()

    config = ConverterConfig(
        ffmpeg=FFMPEG, time_limit_s=60, max_seconds=3600, parallel_segments=2, spare=Spares(), stall_timeout_s=2,
    )  # fmt: skip
    with pytest.raises(ConversionStalled) as stalled:
        await convert(upload(), stopped_store, EncodeOptions(bitrate_kbps=320), config)
    assert stalled.value.stage == STORING
    # Held at most: the samples queued for the encoders and in their pipes, and per encoder
    # HELD_FRAME_BYTES of frames and its output pipe's, 4.4 times as many samples at 320 kbit/s.
    whole = len(wav)
    assert sent < whole // 3


async def test_an_encoder_held_back_by_the_database_borrows_no_helper() -> None:
    """An encoder whose frames wait for the database is behind because of it, and another
    FFmpeg would wait the same. With the store stopped, the upload goes on arriving past a
    decision point, its encoder's queue far past helper_backlog: no slot is borrowed for a
    helper (one was, for nothing but another FFmpeg and a join). Once the store takes again,
    the upload ends as any does."""
    silence = bytes(70 * 44100 * 4)
    wav = wav_header(data_size=len(silence)) + silence
    header = WavHeader()
    samples = header.feed(wav)
    assert header.format is not None
    plan = EncoderPlan(FFMPEG, header.format, choose_format(header, EncodeOptions(bitrate_kbps=320)))

    class CountedSpares(Spares):
        borrowed = 0

        async def borrow(self) -> bool:
            self.borrowed += 1
            return await super().borrow()

    spare = CountedSpares()
    config = ConverterConfig(
        ffmpeg=FFMPEG, time_limit_s=60, max_seconds=3600, parallel_segments=2, spare=spare, segment_seconds=60,
    )  # fmt: skip
    storing = asyncio.Event()  # set once, never cleared

    async def store(chunk: bytes) -> None:
        await storing.wait()

    forty_seconds = 40 * 44100 * 4  # 1.6 MB of MP3 at 320 kbit/s: past HELD_FRAME_BYTES
    async with SegmentedEncoder.running(plan, config, None, store, Progress(60)) as encoder:
        await encoder.take(samples[:forty_seconds])
        await until(lambda: encoder.encoders[0].held_back)
        # On to 30 s more: past the decision point (60 s) with 20 s, 3.5 MB, queued.
        taking = asyncio.ensure_future(encoder.take(samples[forty_seconds:]))
        await until(lambda: encoder.read_bytes == len(samples))
        assert spare.borrowed == 0
        storing.set()
        async with asyncio.timeout(20):
            await taking
            await encoder.finish()
    assert len(encoder.encoders) == 1


# --- the end of the upload near a decision point ---------------------------------------

FRAME = 1152  # samples of a frame at 44.1 kHz
PRE_ROLL = pre_roll_frames(44100, 2)
SEGMENT = segment_frames(plan_of(44100, 2), SEGMENT_S)
# From two frames before the second decision point to past the post-roll of a helper
# taken there: every way the upload can end around a handover.
NEAR_A_DECISION = st.integers(
    (2 * SEGMENT - PRE_ROLL - 2) * FRAME - 1, (2 * SEGMENT + POST_ROLL_FRAMES + 4) * FRAME + 1
)


async def ending_near_a_decision(folder: Path, samples: int, known_size: bool, fast: bool) -> None:
    wav = music(folder, 44100, 2)
    data_at = wav.index(b"data") + 8
    data = wav[data_at : data_at + samples * 4]
    size = len(data) if known_size else 0xFFFFFFFF  # a streamed WAV states no size
    upload = wav[: data_at - 4] + struct.pack("<I", size) + data
    config = ConverterConfig(
        ffmpeg=FFMPEG, time_limit_s=60, max_seconds=3600, parallel_segments=2, spare=Spares(),
        segment_seconds=SEGMENT_S, helper_backlog=-1 if fast else 1 << 30,
    )  # fmt: skip
    out = bytearray()

    async def sink(chunk: bytes) -> None:
        out.extend(chunk)

    result = await convert(chunks(upload), sink, EncodeOptions(), config)
    out[result.header_offset : result.header_offset + len(result.header_frame)] = result.header_frame
    assert result.forced_joins == 0
    original, played = array("h", data), decoded(bytes(out), 2)
    assert len(played) == len(original)  # to the sample, however the upload ended
    last_frames = len(original) - 4 * FRAME * 2
    assert snr_db(original, played, max(0, last_frames)) > 15  # a wrong last frame is noise: 4 dB was seen


@settings(max_examples=24, deadline=None)
@given(samples=NEAR_A_DECISION, known_size=st.booleans(), fast=st.booleans())
@example(samples=(2 * SEGMENT - PRE_ROLL) * FRAME, known_size=False, fast=True)  # ends at the decision
@example(samples=(2 * SEGMENT - PRE_ROLL + 3) * FRAME, known_size=False, fast=True)  # 3 frames past it
async def test_an_upload_that_ends_near_a_decision_point_plays_every_sample(
    tmp_path_factory: pytest.TempPathFactory, samples: int, known_size: bool, fast: bool
) -> None:
    await ending_near_a_decision(tmp_path_factory.getbasetemp(), samples, known_size, fast)
