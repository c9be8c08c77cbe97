"""Stream a WAV through FFmpeg into a sink, never holding the file in memory.

The WAV's header is read here (converter.wav); the encoder (converter/segments.py)
gets only the samples of its `data` chunk, and hands the MP3's bytes back in
order; they are gathered into chunks for the sink, and followed frame by frame
(converter.mp3) for the header frame the file needs. One loop feeds the encoder;
one path leads out of every failure: whatever goes wrong, every FFmpeg is
killed and reaped before the exception leaves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

from converter.command import EncoderPlan
from converter.errors import BadWav, ConversionError, ConversionTimedOut, NotAWav, RecordingTooLong
from converter.mp3 import Mp3Stream, mp3_sample_rate_for
from converter.options import ConverterConfig, CpuShare, EncodeOptions
from converter.progress import STORING, Progress
from converter.segments import SegmentedEncoder
from converter.wav import NOT_A_WAV, SNIFF_BYTES, WavHeader, looks_like_wav

OUTPUT_CHUNK = 512 * 1024  # bytes per sink write: few round trips, little memory
# A decoder skips LAME's delay (576) and its own (529) at the start and trims the
# padding at the end; when both fall in one frame, as they do for a recording of
# fewer samples than this, FFmpeg's decoder trims only the start. Such a recording
# is encoded after this much silence, declared as part of the delay: its start then
# falls on a frame boundary (576 + 529 + 47 = 1152, twice 576), where both trims hold.
SHORTEST_SAMPLES = LEAD_IN_SAMPLES = 47
MAX_PREAMBLE = 16 << 20  # header bytes read before FFmpeg starts, at most


@dataclass(frozen=True)
class Converted:
    size: int
    duration: float
    bitrate: int
    sample_rate: int
    channels: int
    header_frame: bytes  # the Xing/LAME frame, to write over the blank at header_offset
    header_offset: int
    joins: int = 0  # where the frames of one encoder were joined to another's (converter/segments.py)
    forced_joins: int = 0  # of those, cut at the boundary for want of a frame that fits (may click)


Sink = Callable[[bytes], Awaitable[None]]


async def convert(
    source: AsyncIterator[bytes],
    sink: Sink,
    options: EncodeOptions,
    config: ConverterConfig,
    share: CpuShare | None = None,
) -> Converted:
    """Convert the WAV that ``source`` yields, handing the MP3 to ``sink`` in chunks.

    Raises a ConversionError (converter.errors says which) when the upload is
    not a WAV, undecodable, silent of samples, too long or too slow, or when
    the conversion stalls (converter/progress.py). What ``source`` raises (the
    client went away, sent too much) ends the conversion too, and passes as it is.
    Samples go to the encoder while the upload has its ``share`` of the CPU.
    """
    progress = Progress(config.stall_timeout_s)
    source = progress.from_client(source, share)
    header = WavHeader()
    first_samples = await _read_header(source, header)
    if not header.in_data or header.format is None:
        raise BadWav("The WAV has no 'data' chunk: it holds no audio.")
    declared = header.declared_duration
    if declared is not None and declared > config.max_seconds:
        raise _too_long(config.max_seconds)
    plan = EncoderPlan(config.ffmpeg, header.format, choose_format(header, options))
    output = _Output(sink, progress)
    time_limit = asyncio.timeout(config.time_limit_s)
    try:
        async with time_limit:
            samples = _samples(first_samples, source, header, config.max_seconds)
            encoding = _encode(samples, plan, config, header.data_declared, output, progress)
            encoder, lead_in = await progress.watched(encoding)
    except (TimeoutError, ExceptionGroup) as failure:
        if time_limit.expired():
            raise ConversionTimedOut(
                f"The conversion took longer than {config.time_limit_s:g} s and was stopped."
            ) from None
        if isinstance(failure, ExceptionGroup):
            raise first_failure(failure) from None
        raise  # another deadline's (a database statement's): not the conversion's own

    mp3 = output.mp3
    if header.sample_frames == 0:
        raise ConversionError("The WAV holds no audio samples.")
    if mp3.first is None:
        raise ConversionError("The WAV could not be converted: its samples could not be encoded.")
    samples_out = round(header.sample_frames * mp3.first.sample_rate / header.format.sample_rate)
    vbr = options.vbr_quality is not None
    return Converted(
        size=output.size,
        duration=round(header.duration, 6),  # to the microsecond: one sample is never 0
        bitrate=mp3.average_bitrate if vbr else mp3.first.bitrate,
        sample_rate=mp3.first.sample_rate,
        channels=mp3.first.channels,
        header_frame=mp3.header_frame(samples_out, vbr=vbr, lead_in=lead_in),
        header_offset=mp3.header_offset,
        joins=encoder.joins,
        forced_joins=encoder.forced_joins,
    )


async def _encode(
    samples: AsyncIterator[bytes],
    plan: EncoderPlan,
    config: ConverterConfig,
    declared_bytes: int | None,
    output: _Output,
    progress: Progress,
) -> tuple[SegmentedEncoder, int]:
    """The upload's samples through its encoder into ``output``; the encoder, done, and
    the samples of silence put before the recording (see SHORTEST_SAMPLES)."""
    shortest = SHORTEST_SAMPLES * plan.source.block_align
    first: bytearray | None = bytearray()  # held until the recording is known not to be that short
    lead_in = 0
    async with SegmentedEncoder.running(plan, config, declared_bytes, output.take, progress) as encoder:
        async for chunk in samples:
            if first is not None:
                first += chunk
                if len(first) < shortest:
                    continue
                chunk, first = bytes(first), None
            await encoder.take(chunk)
        if first:
            lead_in = LEAD_IN_SAMPLES
            await encoder.take(plan.source.silence(lead_in) + first)
        await encoder.finish()
    await output.flush()
    return encoder, lead_in


async def sniffed(source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The same bytes as ``source``, after checking that they begin like a WAV (NotAWav otherwise)."""
    first = b""
    async for chunk in source:
        first += chunk
        if len(first) >= SNIFF_BYTES:
            break
    if not looks_like_wav(first):
        raise NotAWav(NOT_A_WAV)
    return _chain(first, source)


async def _chain(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


def choose_format(header: WavHeader, options: EncodeOptions) -> EncodeOptions:
    """Fill in what the source decides: an MP3 sample rate, at most two channels, the tags."""
    source = header.format
    assert source is not None
    if options.sample_rate and options.sample_rate > source.sample_rate:
        # Resampling up adds nothing the WAV holds, only size and work per uploaded byte.
        raise BadWav(f"The WAV's own sample rate is {source.sample_rate} Hz: choose a sample_rate of at most that.")
    tags = {"title": options.default_title} if options.default_title else {}
    tags |= dict(header.tags) | dict(options.tags)
    return replace(
        options,
        sample_rate=options.sample_rate or mp3_sample_rate_for(source.sample_rate),
        channels=options.channels or (1 if source.channels == 1 else 2),
        tags=tags,
    )


class _Output:
    """The encoder's bytes, followed frame by frame and gathered into sink-sized chunks."""

    def __init__(self, sink: Sink, progress: Progress) -> None:
        self.sink = sink
        self.progress = progress
        self.size = 0
        self.mp3 = Mp3Stream()
        self._pending = bytearray()

    async def take(self, mp3: bytes) -> None:
        """The file's bytes in order, from its encoder (converter/segments.py)."""
        self._pending += self.mp3.feed(mp3)
        if len(self._pending) >= OUTPUT_CHUNK:
            await self.flush()

    async def flush(self) -> None:
        if self._pending:
            chunk, self._pending = bytes(self._pending), bytearray()
            await self._write(chunk)

    async def _write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        with self.progress.waiting_for(STORING):
            await self.sink(chunk)
        self.progress.moved()


async def _read_header(upload: AsyncIterator[bytes], header: WavHeader) -> bytes:
    """Read the upload up to the start of its samples, so the format is known before
    FFmpeg starts and a file that is no WAV never reaches it; the first samples."""
    read = 0
    async for chunk in upload:
        read += len(chunk)
        samples = header.feed(chunk)
        if header.in_data:
            return samples
        if read > MAX_PREAMBLE:
            break
    if not header.started:
        raise NotAWav(NOT_A_WAV)
    if read > MAX_PREAMBLE:
        raise BadWav(f"No 'data' chunk in the first {MAX_PREAMBLE >> 20} MiB of the WAV.")
    return b""


async def _samples(
    first: bytes, upload: AsyncIterator[bytes], header: WavHeader, max_seconds: float
) -> AsyncIterator[bytes]:
    """The upload's samples from the first on, stopped (RecordingTooLong) past max_seconds."""
    yield first
    async for chunk in upload:
        samples = header.feed(chunk)
        if header.duration > max_seconds:
            raise _too_long(max_seconds)
        if samples:
            yield samples


def first_failure(group: BaseExceptionGroup[Exception]) -> Exception:
    """The first failure is the cause; the others are its consequences (a dead FFmpeg
    breaks the pipes, a failed sink stops the reader), and task groups nest."""
    failure = group.exceptions[0]
    while isinstance(failure, BaseExceptionGroup):
        failure = failure.exceptions[0]
    return failure


def _too_long(max_seconds: float) -> RecordingTooLong:
    return RecordingTooLong(f"The recording is longer than the limit of {max_seconds:g} seconds.")
