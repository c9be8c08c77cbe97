"""Stream a WAV through FFmpeg into a sink, never holding the file in memory.

Three tasks run under one TaskGroup: the upload is written to FFmpeg's stdin
(with drain() for backpressure), FFmpeg's stdout is gathered into chunks for
the sink, and its stderr is kept for the error message. Writing all of stdin
before reading stdout would deadlock once the pipes fill. Whatever goes
wrong, FFmpeg is killed and reaped before the exception leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import resource
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace

from converter.mp3 import Mp3Stream, Mp3StreamError, mp3_sample_rate_for
from converter.wav import SNIFF_BYTES, BadWav, NotWav, WavHeader, looks_like_wav

OUTPUT_CHUNK = 512 * 1024  # bytes per sink write: few round trips, little memory
PIPE_READ = 256 * 1024
PIPE_BUFFER = 1024 * 1024  # FFmpeg's pipes, and how much of them we buffer
FFMPEG_MEMORY_LIMIT = 1 << 30  # address space; decoding PCM to MP3 needs a few tens of MiB
STDERR_KEPT = 4096
MAX_PREAMBLE = 16 << 20  # header bytes read before FFmpeg starts, at most


class ConversionError(Exception):
    """The upload cannot become an MP3. ``status`` is the HTTP status that says why."""

    status = 422


class NotAWav(ConversionError):
    status = 415


class ConversionTimedOut(ConversionError):
    pass


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
    # SHA-256 of the bytes in the order they were produced (the header frame
    # last): a fingerprint of the content for the ETag, computed without
    # reading the file back.
    sha256: bytes
    duration: float
    bitrate: int
    sample_rate: int
    channels: int
    header_frame: bytes  # the Xing/LAME frame, to write over the blank at header_offset
    header_offset: int


Sink = Callable[[bytes], Awaitable[None]]


async def convert(
    source: AsyncIterator[bytes],
    sink: Sink,
    *,
    ffmpeg: str,
    options: EncodeOptions,
    time_limit_s: float,
) -> Converted:
    """Convert the WAV that ``source`` yields, handing the MP3 to ``sink`` in chunks.

    Raises ConversionError (or a subclass naming the HTTP status) when the
    upload is not a WAV, undecodable, silent of samples or too slow. What
    ``source`` raises (the client went away, sent too much) ends the
    conversion too, and passes as it is.
    """
    header = WavHeader()
    try:
        preamble = await _read_preamble(source, header)
    except (NotWav, BadWav) as error:
        raise _as_conversion_error(error) from None

    process = await asyncio.create_subprocess_exec(
        *ffmpeg_command(ffmpeg, choose_format(header, options)),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=_confine,
        limit=PIPE_BUFFER,  # how far our reading of stdout may run ahead of the sink
    )
    assert process.stdin is not None
    process.stdin.transport.set_write_buffer_limits(high=PIPE_BUFFER)
    output = _Output(sink)
    stderr = bytearray()
    try:
        async with asyncio.timeout(time_limit_s):
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(_feed(process, preamble, source, header))
                tasks.create_task(output.collect(process))
                tasks.create_task(_keep_tail(process, stderr))
            returncode = await process.wait()
    except TimeoutError:
        raise ConversionTimedOut(f"The conversion took longer than {time_limit_s:g} s and was stopped.") from None
    except ExceptionGroup as group:
        # The first failure is the cause; the others are its consequences
        # (a dead FFmpeg breaks the pipes, a failed sink stops the reader).
        raise _as_conversion_error(group.exceptions[0]) from None
    finally:
        await _reap(process)

    mp3 = output.mp3
    if returncode != 0 or mp3.first is None or header.format is None or header.sample_frames == 0:
        raise ConversionError(_failure_message(bytes(stderr), header))
    samples = round(header.sample_frames * mp3.first.sample_rate / header.format.sample_rate)
    vbr = options.vbr_quality is not None
    header_frame = mp3.header_frame(samples, vbr=vbr)
    output.digest.update(header_frame)
    return Converted(
        size=output.size,
        sha256=output.digest.digest(),
        duration=round(header.duration, 3),
        bitrate=mp3.average_bitrate if vbr else mp3.first.bitrate,
        sample_rate=mp3.first.sample_rate,
        channels=mp3.first.channels,
        header_frame=header_frame,
        header_offset=mp3.header_offset,
    )


async def sniffed(source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The same bytes as ``source``, after checking that they begin like a WAV (NotAWav otherwise)."""
    first = b""
    async for chunk in source:
        first += chunk
        if len(first) >= SNIFF_BYTES:
            break
    if not looks_like_wav(first):
        raise NotAWav("The file is not a WAV: expected a RIFF or RF64 file of type WAVE.")
    return _chain(first, source)


async def _chain(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


def ffmpeg_command(ffmpeg: str, options: EncodeOptions) -> list[str]:
    """FFmpeg told the input format, allowed to open nothing but its pipes."""
    command = [
        ffmpeg,
        "-nostdin",
        "-hide_banner",
        "-loglevel", "error",
        "-protocol_whitelist", "pipe",
        "-f", "wav",
        "-i", "pipe:0",
        "-map", "0:a:0",
        "-c:a", "libmp3lame",
        # Tags are ours alone: the WAV's INFO chunk as we read it, and the request's.
        "-map_metadata", "-1",
        "-id3v2_version", "3",  # what most players and file managers read
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
    tags = {"title": options.default_title} if options.default_title else {}
    tags |= dict(header.tags) | dict(options.tags)
    if source is None:
        return replace(options, tags=tags)
    return replace(
        options,
        sample_rate=options.sample_rate or mp3_sample_rate_for(source.sample_rate),
        channels=options.channels or (1 if source.channels == 1 else 2),
        tags=tags,
    )


class _Output:
    """FFmpeg's stdout, followed frame by frame, gathered into sink-sized chunks and hashed."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.size = 0
        self.digest = hashlib.sha256()
        self.mp3 = Mp3Stream()

    async def collect(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        pending = bytearray()
        while chunk := await process.stdout.read(PIPE_READ):
            pending += self.mp3.feed(chunk)
            if len(pending) >= OUTPUT_CHUNK:
                await self._write(bytes(pending))
                pending.clear()
        if pending:
            await self._write(bytes(pending))

    async def _write(self, chunk: bytes) -> None:
        self.digest.update(chunk)
        self.size += len(chunk)
        await self.sink(chunk)


async def _read_preamble(upload: AsyncIterator[bytes], header: WavHeader) -> list[bytes]:
    """Read (and keep, for FFmpeg) the bytes up to the start of the audio, so the
    format is known before FFmpeg starts and a file that is no WAV never reaches it."""
    preamble: list[bytes] = []
    buffered = 0
    async for chunk in upload:
        preamble.append(chunk)
        buffered += len(chunk)
        header.feed(chunk)
        if header.in_data or buffered > MAX_PREAMBLE:
            break
    if not header.started:
        raise NotWav("The file is not a WAV: expected a RIFF or RF64 file of type WAVE.")
    if header.format is None and not header.in_data and buffered > MAX_PREAMBLE:
        raise BadWav(f"No 'fmt ' chunk in the first {MAX_PREAMBLE >> 20} MiB of the WAV.")
    return preamble


async def _feed(
    process: asyncio.subprocess.Process, preamble: list[bytes], upload: AsyncIterator[bytes], header: WavHeader
) -> None:
    """Write the upload into FFmpeg's stdin, then close it.

    Only the writes are guarded: a broken pipe there means FFmpeg stopped
    reading (its exit status says why). The same exception classes raised while
    reading the upload mean the client went away, and must end the conversion;
    swallowing them once left FFmpeg waiting for input that never came."""
    stdin = process.stdin
    assert stdin is not None
    for chunk in preamble:
        if not await _write(stdin, chunk):
            return
    async for chunk in upload:
        header.feed(chunk)
        if not await _write(stdin, chunk):
            return
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        stdin.close()
        await stdin.wait_closed()


async def _write(stdin: asyncio.StreamWriter, chunk: bytes) -> bool:
    """Hand FFmpeg one chunk; False when it no longer reads."""
    try:
        stdin.write(chunk)
        await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


async def _keep_tail(process: asyncio.subprocess.Process, kept: bytearray) -> None:
    assert process.stderr is not None
    while chunk := await process.stderr.read(4096):
        kept += chunk
        del kept[:-STDERR_KEPT]


async def _reap(process: asyncio.subprocess.Process) -> None:
    """Kill FFmpeg if it still runs and wait for it, so no zombie or open pipe is left."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    if process.stdin is not None and not process.stdin.is_closing():
        process.stdin.close()
    await process.wait()


def _confine() -> None:
    """Runs in the child before exec: bound FFmpeg's memory, and widen its pipes.

    With the kernel's default 64 KiB pipes FFmpeg stalls whenever our event
    loop is busy for a moment (a database round trip, another request); 1 MiB
    pipes let it keep encoding meanwhile."""
    resource.setrlimit(resource.RLIMIT_AS, (FFMPEG_MEMORY_LIMIT, FFMPEG_MEMORY_LIMIT))
    for descriptor in (0, 1):
        with contextlib.suppress(OSError):  # beyond /proc/sys/fs/pipe-max-size: keep the default
            fcntl.fcntl(descriptor, fcntl.F_SETPIPE_SZ, PIPE_BUFFER)


def _as_conversion_error(error: BaseException) -> BaseException:
    """WAV header complaints become statuses; anything else (the database, the client) passes as it is."""
    if isinstance(error, NotWav):
        return NotAWav(str(error))
    if isinstance(error, (BadWav, Mp3StreamError)):
        return ConversionError(str(error))
    return error


def _failure_message(stderr: bytes, header: WavHeader) -> str:
    if header.format is not None and header.sample_frames == 0:
        return "The WAV holds no audio samples."
    detail = stderr.decode("utf-8", "replace").strip().splitlines()
    reason = detail[-1] if detail else "no audio was decoded"
    return f"The WAV could not be converted: {reason}"
