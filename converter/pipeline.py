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
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

from converter.analysis import Analyser, Analysis, replay_gain
from converter.command import LEAD_IN_SAMPLES, EncoderPlan
from converter.errors import BadWav, ConversionError, ConversionTimedOut, NotAWav, RecordingTooLong, SourcePaused
from converter.mp3 import Mp3Stream, mp3_sample_rate_for
from converter.options import ConverterConfig, CpuShare, EncodeOptions
from converter.progress import STORING, Progress
from converter.resume import TAIL_FRAMES, Checkpoint, Resumable, resume_frame_for
from converter.segments import SegmentedEncoder, post_roll_frames
from converter.splice import Frame
from converter.wav import NOT_A_WAV, SNIFF_BYTES, WavFormat, WavHeader, looks_like_wav

log = logging.getLogger("mp3.pipeline")

OUTPUT_CHUNK = 512 * 1024  # bytes per sink write: few round trips, little memory
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
    analysis: Analysis | None = None  # the waveform's peaks and the loudness (ConverterConfig.analyse)
    joins: int = 0  # where the frames of one encoder were joined to another's (converter/segments.py)
    forced_joins: int = 0  # of those, cut at the boundary for want of a frame that fits (may click)
    tail: bytes = b""  # the MP3's last bytes, not handed to the sink (convert's hold_last)


Sink = Callable[[bytes], Awaitable[None]]


async def convert(
    source: AsyncIterator[bytes],
    sink: Sink,
    options: EncodeOptions,
    config: ConverterConfig,
    share: CpuShare | None = None,
    resumable: Resumable | None = None,
    hold_last: bool = False,
) -> Converted:
    """Convert the WAV that ``source`` yields, handing the MP3 to ``sink`` in chunks; with
    ``hold_last``, all but its last bytes (less than a chunk), which come back as the result's
    tail, for a caller that stores them in its last statement (a round trip less).

    Raises a ConversionError (converter.errors says which) when the upload is
    not a WAV, undecodable, silent of samples, too long or too slow, or when
    the conversion stalls (converter/progress.py). What ``source`` raises (the
    client went away, sent too much) ends the conversion too, and passes as it is.
    Samples go to the encoder while the upload has its ``share`` of the CPU.

    A ``resumable`` conversion goes on from what an earlier request stored (its
    source then begins at that checkpoint's upload_offset, after the bytes it kept
    as they were sent), commits checkpoints as it goes, and when its source ends
    early it keeps what it can: converter/resume.py.
    """
    progress = Progress(config.stall_timeout_s)
    source = progress.from_client(source, share)
    previous = resumable.previous if resumable else None
    if previous is not None and previous.pending:
        source = _chain(previous.pending, source)
    if previous is None:
        header = WavHeader()
        wav_header, first_samples = await _read_header(source, header, keep=resumable is not None)
    else:
        header = WavHeader.resumed(previous.wav_header, 0)
        wav_header, first_samples = previous.wav_header, b""
    if not header.in_data or header.format is None:
        raise BadWav("The WAV has no 'data' chunk: it holds no audio.")
    declared = header.declared_duration
    if declared is not None and declared > config.max_seconds:
        raise _too_long(config.max_seconds)
    plan = EncoderPlan(config.ffmpeg, header.format, choose_format(header, options))
    analyser = _measurement_to_go_on_with(header.format, previous) if config.analyse else None
    output = _Output(sink, progress, hold_last)
    stored: tuple[int, list[Frame]] | None = None
    skip = 0  # sample bytes the encoder already had (the measurement had not)
    if resumable is not None:
        output.checkpoints = _Checkpoints(resumable, plan, wav_header, previous, analyser)
        if previous is not None:
            header.data_seen = previous.samples_at
            skip = plan.bytes_before(previous.resume_frame) - previous.samples_at
        if previous is not None and previous.resume_frame:
            stored = previous.resume_frame, resumable.stored
            output.resume_at(previous)
    time_limit = asyncio.timeout(config.time_limit_s)
    try:
        async with time_limit:
            samples = _samples(first_samples, source, header, config.max_seconds)
            encoding = _encode(
                samples, plan, config, header.data_declared, output, progress, stored, analyser, skip, share
            )
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
    # One at least: a recording of one sample at 96 kHz is half a sample at 48 kHz, and plays.
    samples_out = max(1, round(header.sample_frames * mp3.first.sample_rate / header.format.sample_rate))
    vbr = options.vbr_quality is not None
    earlier = None
    if stored is not None and resumable is not None:
        earlier = await resumable.earlier_offsets(stored[0])
    analysis = analyser.result() if analyser is not None else None
    gain = replay_gain(analysis.loudness) if analysis is not None else None
    return Converted(
        size=output.size + len(output.held),
        duration=round(header.duration, 6),  # to the microsecond: one sample is never 0
        bitrate=mp3.average_bitrate if vbr else mp3.first.bitrate,
        sample_rate=mp3.first.sample_rate,
        channels=mp3.first.channels,
        header_frame=mp3.header_frame(samples_out, vbr=vbr, lead_in=lead_in, earlier=earlier, replay_gain=gain),
        header_offset=mp3.header_offset,
        analysis=analysis,
        joins=encoder.joins,
        forced_joins=encoder.forced_joins,
        tail=output.held,
    )


def _measurement_to_go_on_with(format: WavFormat, previous: Checkpoint | None) -> Analyser | None:
    """The waveform and loudness measured so far, to go on with: a new measurement for a new
    upload, else the one the last checkpoint saved. None, and the record goes without them,
    when that checkpoint holds samples but no measurement (a replica with AUDIO_ANALYSIS off
    took them: one begun here would be of part of the recording) or one this code cannot read
    (saved before an upgrade that changed its layout, converter/analysis.py STATE_VERSION):
    better no measurement than a wrong one, or than the upload failing at every resume."""
    if previous is None or (previous.samples_at == 0 and not previous.analysis):
        return Analyser(format)
    try:
        if not previous.analysis:
            raise ValueError("none was saved")
        return Analyser.restore(format, previous.analysis)
    except ValueError as error:
        log.warning("the upload's measurement so far cannot be gone on with (%s): it is stored without"
                    " waveform and loudness", error)  # fmt: skip
        return None


async def _encode(
    samples: AsyncIterator[bytes],
    plan: EncoderPlan,
    config: ConverterConfig,
    declared_bytes: int | None,
    output: _Output,
    progress: Progress,
    stored: tuple[int, list[Frame]] | None,
    analyser: Analyser | None,
    skip: int,
    share: CpuShare | None,
) -> tuple[SegmentedEncoder, int]:
    """The upload's samples through its encoder (but its first ``skip`` bytes) into ``output``
    and through the ``analyser``; the encoder, done, and the samples of silence put before
    the recording at the MP3's rate (a short one: converter/command.py), which the analyser
    never sees. The encoder starts once the recording is known to be short or not; the
    upload's ``share`` of the CPU is given back once it has ended (CpuShare.encoded)."""
    chunks = _accounted(samples, output.checkpoints, analyser, skip)
    opening = bytearray()  # held until then (a resumed recording is not short)
    short = False
    if stored is None:
        try:
            async for chunk in chunks:
                opening += chunk
                if len(opening) >= plan.shortest_bytes:
                    break
            else:  # the whole recording
                short = len(opening) >= plan.source.block_align
                if not short:
                    opening.clear()  # part of a sample: no audio (FFmpeg given only that fails)
        except BaseException as ending:
            await output.keep_what_can_be_kept(None, ending, share)
            raise
    if short:
        plan = replace(plan, short=True)
    running = SegmentedEncoder.running(plan, config, declared_bytes, output.take, progress, stored)
    async with running as encoder:
        try:
            if opening:
                await encoder.take(bytes(opening))
            async for chunk in chunks:
                await encoder.take(chunk)
        except BaseException as ending:
            await output.keep_what_can_be_kept(encoder, ending, share)
            raise
        if output.checkpoints is not None:
            output.checkpoints.let_go_of_all()
        await encoder.finish()
    if share is not None:
        share.encoded()
    await output.end()
    return encoder, LEAD_IN_SAMPLES if short else 0


async def _accounted(
    samples: AsyncIterator[bytes], checkpoints: _Checkpoints | None, analyser: Analyser | None, skip: int
) -> AsyncIterator[bytes]:
    """The samples for the encoder, each chunk held for the ``checkpoints`` (or measured) as it
    arrives; but the first ``skip`` bytes, which the encoder had already."""
    async for chunk in samples:
        if checkpoints is not None:
            checkpoints.hold_on(chunk)
        elif analyser is not None:
            analyser.take(chunk)
        if skip:
            chunk, skip = chunk[skip:], max(0, skip - len(chunk))
            if not chunk:
                continue
        yield chunk


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
    """The encoder's bytes, followed frame by frame and gathered into sink-sized chunks;
    for a resumable conversion, checkpoints after them."""

    def __init__(self, sink: Sink, progress: Progress, hold_last: bool = False) -> None:
        self.sink = sink
        self.progress = progress
        self.hold_last = hold_last
        self.size = 0  # where the file's next byte goes
        self.mp3 = Mp3Stream()
        self.checkpoints: _Checkpoints | None = None
        self._pending = bytearray()
        self.held = b""  # the last bytes, once the encoders have ended (hold_last)

    def resume_at(self, previous: Checkpoint) -> None:
        """Go on writing at the previous checkpoint's resume_frame (the bytes before it stay)."""
        self.mp3 = Mp3Stream.resumed(
            previous.first_header, previous.header_offset, previous.resume_frame, previous.resume_at
        )
        self.size = previous.resume_at

    async def take(self, mp3: bytes) -> None:
        """The file's bytes in order, from its encoder (converter/segments.py)."""
        self._pending += self.mp3.feed(mp3)
        checkpoints, size = self.checkpoints, self.size + len(self._pending)
        if len(self._pending) >= OUTPUT_CHUNK or (checkpoints is not None and checkpoints.due(size)):
            await self.flush()
            if checkpoints is not None:
                await checkpoints.take(self)

    async def flush(self) -> None:
        if self._pending:
            chunk, self._pending = bytes(self._pending), bytearray()
            await self._write(chunk)

    async def end(self) -> None:
        """The encoders have ended: their last bytes to the sink, or held (hold_last)."""
        if self.hold_last:
            self.held, self._pending = bytes(self._pending), bytearray()
        else:
            await self.flush()

    async def keep_what_can_be_kept(
        self, encoder: SegmentedEncoder | None, ending: BaseException, share: CpuShare | None
    ) -> None:
        """The upload's source ended early (``ending``): for a resumable conversion, its encoders
        flush what they were given (if it had started any) and a last checkpoint stores it,
        within the grace allowed. Where the source paused as meant (SourcePaused), its client
        waits to hear how that went: a last checkpoint refused (the quota, the storage bound,
        another request's claim) or failed is what it hears, not that all is well with less
        kept than it sent. Else it has gone or failed already, and hears nothing of this."""
        if self.checkpoints is None:
            return
        try:
            async with asyncio.timeout(self.checkpoints.resumable.grace_s):
                if encoder is not None:
                    if share is not None:
                        share.finishing()  # the turn is kept for the encoders' tail, not lent
                    await encoder.finish()
                if share is not None:
                    share.encoded()  # the last write and checkpoint wait on the database
                await self.flush()
                await self.checkpoints.take(self, last=True)
        except Exception:
            if isinstance(ending, SourcePaused):
                raise

    async def _write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        with self.progress.waiting_for(STORING):
            await self.sink(chunk)
        self.progress.moved()


class _Checkpoints:
    """A resumable conversion's checkpoints: each at a frame boundary, at most every
    ``every_s``, and only one that moves it on (converter/resume.py)."""

    def __init__(
        self,
        resumable: Resumable,
        plan: EncoderPlan,
        wav_header: bytes,
        previous: Checkpoint | None,
        analyser: Analyser | None,
    ) -> None:
        self.resumable = resumable
        self.plan = plan
        self.wav_header = wav_header
        self.analyser = analyser
        # The last samples received are held, ``hold`` bytes of them: when a request ends
        # early, its encoders flush what they were given and the resume point lands within
        # that of the end, so that the last checkpoint keeps the samples from there on as
        # they were sent (its pending bytes). The measurement cannot go back, so it runs
        # behind, taking the samples as they leave the hold: a checkpoint's wav_offset is
        # where it was saved, at or before the encoder's resume point, exactly at it on the
        # last checkpoint. Checkpoints along the way save it as it is (oldest first, below).
        self.hold = plan.bytes_before(post_roll_frames(plan) + plan.pre_roll + 2 * plan.period + 4)
        self.held = bytearray()
        self.held_at = previous.samples_at if previous is not None else 0  # the sample byte held[0] is
        self.measured: deque[tuple[int, bytes]] = deque()
        if analyser is not None:
            self.measured.append((analyser.bytes_taken, analyser.state()))
        self.offset = previous.upload_offset if previous is not None else 0
        self.frames = previous.frames if previous is not None else 0
        self._loop = asyncio.get_running_loop()
        self._next = self._loop.time()
        self._next_size = 0
        # A periodic checkpoint waits until the client has sent this many sample bytes, or
        # until _latest, whichever comes first (converter/resume.py's sent_per_measured_byte).
        self._enough_received = 0
        self._latest = self._next

    def hold_on(self, samples: bytes) -> None:
        """The samples as they arrive; those past the hold go on to the analyser."""
        self.held += samples
        if len(self.held) > self.hold:
            self._let_go(len(self.held) - self.hold)

    def let_go_of_all(self) -> None:
        """The upload's end: what is held, to the analyser."""
        self._let_go(len(self.held))

    def _let_go(self, count: int) -> None:
        if self.analyser is not None:
            self.analyser.take(self.held[:count])
        del self.held[:count]
        self.held_at += count

    @property
    def received(self) -> int:
        """The sample bytes the client has sent so far (and earlier requests, from the first)."""
        return self.held_at + len(self.held)

    def _holds(self, position: int) -> bool:
        return self.held_at <= position <= self.received

    def due(self, size: int) -> bool:
        """A checkpoint is due every ``every_s``, or once the MP3 has grown ``every_bytes``
        (to ``size``) since the last: a fast upload's checkpoints stay as small as a slow one's.
        Each also stores the whole measurement so far, so a periodic one waits until the client
        has sent ``sent_per_measured_byte`` times its size since the last, or ``most_apart_s``
        has passed (converter/resume.py)."""
        if size >= self._next_size:
            return True
        now = self._loop.time()
        return now >= self._next and (self.received >= self._enough_received or now >= self._latest)

    async def take(self, output: _Output, last: bool = False) -> None:
        if not (last or self.due(output.size)):
            return
        self._next = self._loop.time() + self.resumable.every_s
        self._next_size = output.size + self.resumable.every_bytes
        if self.analyser is not None:
            self.measured.append((self.analyser.bytes_taken, self.analyser.state()))
        checkpoint = self.at(output, last=last)
        if checkpoint is None:
            return
        # Never a step back: a resumed stream rewrites the frames from its resume_frame on,
        # and commits once it holds more than the last checkpoint did.
        moves_on = checkpoint.upload_offset > self.offset or checkpoint.frames > self.frames
        if moves_on and checkpoint.upload_offset >= self.offset:
            received = self.received
            await self.resumable.commit(checkpoint)
            self.offset, self.frames = checkpoint.upload_offset, checkpoint.frames
            self._enough_received = received + self.resumable.sent_per_measured_byte * len(checkpoint.analysis)
            self._latest = self._loop.time() + self.resumable.most_apart_s

    def at(self, output: _Output, last: bool = False) -> Checkpoint | None:
        mp3 = output.mp3
        resume = resume_frame_for(mp3.frames, self.plan)
        tail = mp3.file_offsets(min(TAIL_FRAMES, len(mp3._offsets))) if mp3.first is not None else []
        samples_at, measured = self.plan.bytes_before(resume), b""
        if last and self.analyser is not None and self._holds(samples_at):
            self._let_go(samples_at - self.held_at)  # the last checkpoint: saved right at the resume point
            self.measured.append((samples_at, self.analyser.state()))
        if self.measured:
            while len(self.measured) > 1 and self.measured[1][0] <= samples_at:
                self.measured.popleft()  # a newer one is at or before the resume point
            if self.measured[0][0] > samples_at:
                return None  # the resume point is back behind where the measurement was saved
            samples_at, measured = self.measured[0]
        pending = bytes(self.held[samples_at - self.held_at :]) if last and self._holds(samples_at) else b""
        return Checkpoint(
            wav_header=self.wav_header,
            frames=mp3.frames,
            size=output.size,
            first_header=mp3.first.raw if mp3.first is not None else 0,
            header_offset=mp3.header_offset,
            tail=tuple(tail),
            resume_frame=resume,
            wav_offset=len(self.wav_header) + samples_at,
            analysis=measured,
            pending=pending,
        )


async def _read_header(upload: AsyncIterator[bytes], header: WavHeader, keep: bool) -> tuple[bytes, bytes]:
    """Read the upload up to the start of its samples, so the format is known before
    FFmpeg starts and a file that is no WAV never reaches it: the header's bytes when
    asked to ``keep`` them (a resumable upload stores them), and the first samples."""
    kept = bytearray()
    read = 0
    async for chunk in upload:
        read += len(chunk)
        if keep:
            kept += chunk
        samples = header.feed(chunk)
        if header.in_data:
            return bytes(kept[: len(kept) - len(samples)]), samples
        if read > MAX_PREAMBLE:
            break
    if not header.started:
        raise NotAWav(NOT_A_WAV)
    if read > MAX_PREAMBLE:
        raise BadWav(f"No 'data' chunk in the first {MAX_PREAMBLE >> 20} MiB of the WAV.")
    return bytes(kept), b""


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
