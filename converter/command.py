"""The FFmpeg command an encoder runs, and the plan every encoder of one upload starts from.

FFmpeg is told the samples' exact format and the PCM decoder that matches the
WAV's header: no WAV demuxer, no probing, no other decoder ever sees the upload,
and it may open nothing but its pipes (SPEC "Hostile input").
"""

from __future__ import annotations

import asyncio
import functools
import math
from dataclasses import dataclass, replace
from fractions import Fraction

from converter.mp3 import samples_per_frame
from converter.options import EncodeOptions
from converter.process import spawn
from converter.splice import pre_roll_frames
from converter.wav import WavFormat

# A decoder skips LAME's delay (576) and its own (529) at the start and trims the
# padding at the end; when both fall in one frame, as they do for a recording of
# fewer than 47 samples, FFmpeg's decoder trims only the start. A short recording is
# encoded after this much silence at the MP3's rate, declared as part of the delay:
# its start then falls on a frame boundary (576 + 529 + 47 = 1152, twice 576), where
# both trims hold.
LEAD_IN_SAMPLES = 47
# FFmpeg's resampler makes nothing of fewer samples than its filter spans (about 32 at
# the MP3's rate, whatever the source's rate) and not all of a few more. A recording
# of fewer samples than this at the MP3's rate is short: encoded with the lead-in
# before it and this much silence after it (the padding trims it), at every rate.
SHORTEST_SAMPLES = 64
# A stream whose frames fall on the source's samples only this many frames apart (or
# more) is never cut: its pre-rolls would be as long (source rates MP3 knows nothing of).
MOST_PERIOD_FRAMES = 64


@dataclass(frozen=True)
class EncoderPlan:
    """What every encoder of one upload is started from, and where its MP3 frames fall
    among the source's samples.

    An encoder may be cut, and another joined on, only where a frame begins on a sample
    of the source (converter/segments.py, converter/resume.py): an FFmpeg started there,
    with some samples before, makes from there on the very samples the first one made
    (FFmpeg's resampler is the same filter wherever it starts, once it has a few samples
    of history, and these fall in the pre-roll). Without resampling that is every frame;
    with it, every ``period`` frames (48 to 44.1 kHz: 49; 44.1 to 48 kHz: 5; 96 to 48: 1).
    """

    ffmpeg: str
    source: WavFormat
    options: EncodeOptions  # as chosen for this source: rate, channels and tags filled in
    short: bool = False  # the whole recording is shorter than shortest_bytes: silence around it

    @functools.cached_property
    def shortest_bytes(self) -> int:
        """The source's sample bytes of SHORTEST_SAMPLES at the MP3's rate: a recording of
        fewer is short."""
        return short_frames(self.source.sample_rate, self.sample_rate) * self.source.block_align

    @functools.cached_property
    def sample_rate(self) -> int:
        """The MP3's."""
        return self.options.sample_rate or self.source.sample_rate

    @functools.cached_property
    def channels(self) -> int:
        """The MP3's."""
        return self.options.channels or (1 if self.source.channels == 1 else 2)

    @functools.cached_property
    def source_samples_per_frame(self) -> Fraction:
        return Fraction(samples_per_frame(self.sample_rate) * self.source.sample_rate, self.sample_rate)

    @functools.cached_property
    def period(self) -> int:
        """Frames from one frame that begins on a source sample to the next."""
        return self.source_samples_per_frame.denominator

    @functools.cached_property
    def splittable(self) -> bool:
        return self.period < MOST_PERIOD_FRAMES

    @functools.cached_property
    def pre_roll(self) -> int:
        """Frames a later encoder begins before its boundary (converter/splice.py), whole periods."""
        return self.on_grid(pre_roll_frames(self.sample_rate, self.channels) + self.period - 1)

    def on_grid(self, frame: int) -> int:
        """The last frame at or before ``frame`` that begins on a source sample."""
        return frame - frame % self.period

    def bytes_before(self, frame: int) -> int:
        """The source's sample bytes before frame ``frame`` begins: exact on the grid, else
        those of the samples it begins within as well."""
        return math.ceil(frame * self.source_samples_per_frame) * self.source.block_align

    async def start(self, first: bool) -> asyncio.subprocess.Process:
        """An FFmpeg for this upload; only the first one's output begins the file (the tags)."""
        options = self.options if first else replace(self.options, tags={})
        return await spawn(ffmpeg_command(self.ffmpeg, options, self.source, tags=first, short=self.short))


def short_frames(source_rate: int, mp3_rate: int) -> int:
    """SHORTEST_SAMPLES at the MP3's rate, in the source's sample frames."""
    return math.ceil(SHORTEST_SAMPLES * source_rate / mp3_rate)


def ffmpeg_command(
    ffmpeg: str, options: EncodeOptions, source: WavFormat, tags: bool = True, short: bool = False
) -> list[str]:
    """FFmpeg told the samples' exact format and decoder, allowed to open nothing but its pipes;
    without ``tags``, its output is frames alone (a later part of a file); ``short``, the
    recording is encoded with silence around it (SHORTEST_SAMPLES)."""
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
    out_channels = options.channels or (1 if source.channels == 1 else 2)
    filters = []
    if source.speakers_unknown and source.channels > out_channels:
        filters.append(even_downmix(source.channels, out_channels))
    if short:
        # The silence after goes in before the resampler (which needs it), the lead-in
        # after it: exactly LEAD_IN_SAMPLES at the MP3's rate, whatever the source's.
        mp3_rate = options.sample_rate or source.sample_rate
        filters += [
            f"apad=pad_len={short_frames(source.sample_rate, mp3_rate)}",
            f"aresample={mp3_rate}",
            f"adelay=delays={LEAD_IN_SAMPLES}S:all=1",
        ]
    if filters:
        command += ["-af", ",".join(filters)]
    if options.channels:
        command += ["-ac", str(options.channels)]
    for name, value in options.tags.items():
        command += ["-metadata", f"{name}={value}"]
    # Into a pipe FFmpeg writes every frame as it comes (one syscall, one wakeup
    # of ours, per 26 ms of audio); unflushed, it writes 32 KiB at a time.
    command += ["-flush_packets", "0", "-f", "mp3", "pipe:1"]
    return command


def even_downmix(channels: int, out_channels: int) -> str:
    """FFmpeg's pan filter for channels whose speakers nobody named: into mono, all of them
    alike; into stereo, the first, third… to the left and the second, fourth… to the
    right, as interleaved pairs are. ``<`` scales each side's sum so it cannot clip."""
    if out_channels == 1:
        return "pan=mono|c0<" + "+".join(f"c{n}" for n in range(channels))
    left = "+".join(f"c{n}" for n in range(0, channels, 2))
    right = "+".join(f"c{n}" for n in range(1, channels, 2))
    return f"pan=stereo|FL<{left}|FR<{right}"
