"""Stream a WAV through FFmpeg into a sink, never holding the file in memory.

The WAV's header is read here (converter.wav); FFmpeg gets only the samples of
its `data` chunk, as raw PCM of the format read, with the matching PCM decoder
forced: no WAV demuxer, no probing, no other decoder ever sees the upload.

Three tasks run under one TaskGroup: the samples are written to FFmpeg's stdin
(with drain() for backpressure), FFmpeg's stdout is gathered into chunks for
the sink, and its stderr is kept for the log. Writing all of stdin before
reading stdout would deadlock once the pipes fill. Whatever goes wrong,
FFmpeg is killed and reaped before the exception leaves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace

from converter.errors import BadWav, ConversionError, ConversionTimedOut, NotAWav, RecordingTooLong
from converter.mp3 import Mp3Stream, mp3_sample_rate_for
from converter.process import PIPE_BUFFER, PIPE_READ, end_input, keep_tail, reap, spawn, write
from converter.progress import ENCODER_INPUT, ENCODER_OUTPUT, STORING, Progress
from converter.segments import SegmentedConversion, SpareSlots
from converter.wav import NOT_A_WAV, SNIFF_BYTES, WavFormat, WavHeader, looks_like_wav

OUTPUT_CHUNK = 512 * 1024  # bytes per sink write: few round trips, little memory
MAX_PREAMBLE = 16 << 20  # header bytes read before FFmpeg starts, at most


@dataclass(frozen=True)
class ConverterConfig:
    """How every conversion runs: built once from the settings when the service starts."""

    ffmpeg: str
    time_limit_s: float  # the whole conversion, upload included
    max_seconds: float  # the longest recording
    # No progress for this long (FFmpeg hung, the database silent) fails the conversion.
    stall_timeout_s: float = 30.0
    # Encoders one upload may use at once (converter/segments.py); below 2: one.
    parallel_segments: int = 1
    spare: SpareSlots | None = None  # where the further encoders' slots come from
    segment_seconds: float = 30.0  # a 1-minute upload: two halves, one per core
    helper_backlog: int = PIPE_BUFFER  # samples queued for an encoder, in bytes, before a helper is sought


@dataclass(frozen=True)
class EncodeOptions:
    bitrate_kbps: int = 192
    vbr_quality: int | None = None  # LAME's -V 0 (best) to 9: variable bit rate instead of bitrate_kbps
    sample_rate: int | None = None  # None: the source's, when MP3 can hold it
    channels: int | None = None  # None: mono stays mono, everything else becomes stereo
    tags: Mapping[str, str] = field(default_factory=dict)  # ID3v2: override the WAV's own INFO tags
    default_title: str | None = None  # the title when neither the request nor the WAV gives one


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
    source: AsyncIterator[bytes], sink: Sink, options: EncodeOptions, config: ConverterConfig
) -> Converted:
    """Convert the WAV that ``source`` yields, handing the MP3 to ``sink`` in chunks.

    Raises a ConversionError (converter.errors says which) when the upload is
    not a WAV, undecodable, silent of samples, too long or too slow, or when
    the conversion stalls (converter/progress.py). What ``source`` raises (the
    client went away, sent too much) ends the conversion too, and passes as it is.
    """
    progress = Progress(config.stall_timeout_s)
    source = progress.from_client(source)
    header = WavHeader()
    first_samples = await _read_header(source, header)
    if not header.in_data or header.format is None:
        raise BadWav("The WAV has no 'data' chunk: it holds no audio.")
    declared = header.declared_duration
    if declared is not None and declared > config.max_seconds:
        raise _too_long(config.max_seconds)
    chosen = choose_format(header, options)
    output = _Output(sink, progress)
    stderr = bytearray()
    time_limit = asyncio.timeout(config.time_limit_s)
    try:
        async with time_limit:
            if config.parallel_segments > 1 and chosen.sample_rate == header.format.sample_rate:
                encoding = _encode_in_segments(first_samples, source, header, chosen, output, config, progress)
            else:
                encoding = _encode(first_samples, source, header, chosen, output, stderr, config, progress)
            returncode = await progress.watched(encoding)
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
    if returncode != 0 or mp3.first is None:
        detail = bytes(stderr).decode("utf-8", "replace").strip() or f"exit status {returncode}"
        raise ConversionError("The WAV could not be converted: its samples could not be encoded.", detail)
    samples = round(header.sample_frames * mp3.first.sample_rate / header.format.sample_rate)
    vbr = options.vbr_quality is not None
    header_frame = mp3.header_frame(samples, vbr=vbr)
    return Converted(
        size=output.size,
        duration=round(header.duration, 3),
        bitrate=mp3.average_bitrate if vbr else mp3.first.bitrate,
        sample_rate=mp3.first.sample_rate,
        channels=mp3.first.channels,
        header_frame=header_frame,
        header_offset=mp3.header_offset,
        joins=output.joins,
        forced_joins=output.forced_joins,
    )


async def _encode(
    first_samples: bytes,
    source: AsyncIterator[bytes],
    header: WavHeader,
    chosen: EncodeOptions,
    output: _Output,
    stderr: bytearray,
    config: ConverterConfig,
    progress: Progress,
) -> int:
    """One FFmpeg for the whole upload; its exit status."""
    assert header.format is not None
    process = await spawn(ffmpeg_command(config.ffmpeg, chosen, header.format))
    try:
        async with asyncio.TaskGroup() as tasks:
            samples = _samples(first_samples, source, header, config.max_seconds)
            tasks.create_task(_feed(process, samples, progress))
            tasks.create_task(output.collect(process))
            tasks.create_task(keep_tail(process, stderr))
        with progress.waiting_for(ENCODER_OUTPUT):
            return await process.wait()
    finally:
        await reap(process)


async def _encode_in_segments(
    first_samples: bytes,
    source: AsyncIterator[bytes],
    header: WavHeader,
    chosen: EncodeOptions,
    output: _Output,
    config: ConverterConfig,
    progress: Progress,
) -> int:
    """The upload on as many encoders as keep up with it (converter/segments.py)."""
    source_format = header.format
    assert source_format is not None
    assert chosen.channels is not None

    encoders: list[asyncio.subprocess.Process] = []

    async def spawn_encoder(first: bool) -> asyncio.subprocess.Process:
        # Only the first encoder's output begins the file: only it writes the tags.
        options = chosen if first else replace(chosen, tags={})
        encoders.append(await spawn(ffmpeg_command(config.ffmpeg, options, source_format, tags=first)))
        return encoders[-1]

    try:
        async with asyncio.TaskGroup() as tasks:
            segments = SegmentedConversion(
                source_format,
                chosen.channels,
                header,
                spawn_encoder,
                config.spare,
                config.parallel_segments,
                config.segment_seconds,
                config.helper_backlog,
                output.take,
                tasks,
                progress,
            )
            await segments.start()
            assembling = tasks.create_task(segments.assemble())
            async for samples in _samples(first_samples, source, header, config.max_seconds):
                await segments.take(samples)
            await segments.finish()
            await assembling
            await output.flush()
            output.joins = segments.joins
            output.forced_joins = segments.forced_joins
    finally:
        for process in encoders:
            await reap(process)
    return 0


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


def ffmpeg_command(ffmpeg: str, options: EncodeOptions, source: WavFormat, tags: bool = True) -> list[str]:
    """FFmpeg told the samples' exact format and decoder, allowed to open nothing but its pipes;
    without ``tags``, its output is frames alone (a later part of a file)."""
    command = [
        ffmpeg,
        "-nostdin",
        "-hide_banner",
        "-loglevel", "error",
        "-protocol_whitelist", "pipe",
        "-format_whitelist", source.raw_format,
        "-codec_whitelist", source.decoder,
        "-f", source.raw_format,
        "-ar", str(source.sample_rate),
        "-ch_layout", source.channel_layout,
        "-c:a", source.decoder,
        "-i", "pipe:0",
        "-map", "0:a:0",
        "-c:a", "libmp3lame",
        # Tags are ours alone: the WAV's INFO chunk as we read it, and the request's.
        "-map_metadata", "-1",
        "-id3v2_version", "3" if tags else "0",  # 3: what most players and file managers read
    ]  # fmt: skip
    if options.vbr_quality is None:
        command += ["-b:a", f"{options.bitrate_kbps}k"]
    else:
        command += ["-q:a", str(options.vbr_quality)]
    if options.sample_rate:
        command += ["-ar", str(options.sample_rate)]
    if options.channels:
        command += ["-ac", str(options.channels)]
    for name, value in options.tags.items():
        command += ["-metadata", f"{name}={value}"]
    # Into a pipe FFmpeg writes every frame as it comes (one syscall, one wakeup
    # of ours, per 26 ms of audio); unflushed, it writes 32 KiB at a time.
    command += ["-flush_packets", "0", "-f", "mp3", "pipe:1"]
    return command


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
    """FFmpeg's stdout, followed frame by frame, gathered into sink-sized chunks and hashed."""

    def __init__(self, sink: Sink, progress: Progress) -> None:
        self.sink = sink
        self.progress = progress
        self.size = 0
        self.mp3 = Mp3Stream()
        self.joins = 0
        self.forced_joins = 0
        self._pending = bytearray()

    async def collect(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        pending = bytearray()
        while True:
            with self.progress.waiting_for(ENCODER_OUTPUT):
                chunk = await process.stdout.read(PIPE_READ)
            if not chunk:
                break
            self.progress.moved()
            pending += self.mp3.feed(chunk)
            if len(pending) >= OUTPUT_CHUNK:
                await self._write(bytes(pending))
                pending.clear()
        if pending:
            await self._write(bytes(pending))

    async def take(self, mp3: bytes) -> None:
        """Bytes of the file in order, from the joined encoders (converter/segments.py)."""
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


async def _feed(process: asyncio.subprocess.Process, samples: AsyncIterator[bytes], progress: Progress) -> None:
    """Write the upload's samples into FFmpeg's stdin, then close it.

    Only the writes are guarded: a broken pipe there means FFmpeg stopped
    reading (its exit status says why). The same exception classes raised while
    reading the upload mean the client went away, and must end the conversion;
    swallowing them once left FFmpeg waiting for input that never came."""
    stdin = process.stdin
    assert stdin is not None
    async for chunk in samples:
        with progress.waiting_for(ENCODER_INPUT):
            if not await write(stdin, chunk):
                return
        progress.moved()
    with progress.waiting_for(ENCODER_INPUT):
        await end_input(stdin)


def first_failure(group: BaseExceptionGroup[Exception]) -> Exception:
    """The first failure is the cause; the others are its consequences (a dead FFmpeg
    breaks the pipes, a failed sink stops the reader), and task groups nest."""
    failure = group.exceptions[0]
    while isinstance(failure, BaseExceptionGroup):
        failure = failure.exceptions[0]
    return failure


def _too_long(max_seconds: float) -> RecordingTooLong:
    return RecordingTooLong(f"The recording is longer than the limit of {max_seconds:g} seconds.")
