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
        return await spawn(ffmpeg_command(self.ffmpeg, options, self.source, tags=first))


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
    out_channels = options.channels or (1 if source.channels == 1 else 2)
    if source.speakers_unknown and source.channels > out_channels:
        command += ["-af", even_downmix(source.channels, out_channels)]
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
