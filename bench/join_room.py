"""Where the joins of segment-parallel encoding land, and what a shorter post-roll would change.

    .venv/bin/python -m bench.join_room [--seconds N]

converter/segments.py has each earlier encoder go on POST_ROLL_FRAMES past its
boundary so that converter/splice.py can seek, among the frames both encoders
hold, the first where the later one's frames follow as they are; failing that,
one frame is raised to a higher bit rate to make room. Each post-roll frame is
encoding thrown away (about 2.8 % of a 30-second segment at 32 frames), so this
measures what the room is used for. N seconds (default 60) of several kinds of
audio, each made by FFmpeg, in several formats, are converted with 1.5-second
segments (many joins) by the service's own converter. Prints how far after its
boundary each join lands, and how many joins would need an enlarged frame (or
find none) had the search been allowed only the first K frames.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
from collections import Counter
from collections.abc import AsyncIterator

import converter.segments
from converter.options import ConverterConfig, EncodeOptions
from converter.pipeline import convert
from converter.segments import POST_ROLL_FRAMES
from converter.splice import Frame, join, join_frame
from tests.support import FFMPEG, MUSIC, Spares

SOURCES = {
    "music": MUSIC,
    "white noise": "anoisesrc=d={seconds}:c=white:a=0.5:r=48000:seed=3",
    "loud pink noise": "anoisesrc=d={seconds}:c=pink:a=0.9:r=48000:seed=4",
    "speech-like": "aevalsrc='0.6*sin(2*PI*t*(150+80*sin(7*t)))*(0.5+0.5*sin(2*PI*t*3))"
    "*gt(sin(2*PI*t*0.7),-0.3)':s=48000:d={seconds}",
    "noise bursts": "aevalsrc='(random(0)-0.5)*gt(mod(t,1.3),1.0)':s=48000:d={seconds}",
    "sweep": "aevalsrc='0.8*sin(2*PI*(50*t+150*t*t))':s=48000:d={seconds}",
}
FORMATS = [
    (44100, 2, EncodeOptions(bitrate_kbps=192)),
    (44100, 2, EncodeOptions(bitrate_kbps=320)),
    (44100, 2, EncodeOptions(bitrate_kbps=128)),
    (44100, 2, EncodeOptions(bitrate_kbps=32)),
    (48000, 2, EncodeOptions(vbr_quality=0)),
    (48000, 2, EncodeOptions(vbr_quality=2)),
    (44100, 2, EncodeOptions(vbr_quality=6)),
    (44100, 1, EncodeOptions(vbr_quality=4)),
    (32000, 2, EncodeOptions(bitrate_kbps=96)),
    (22050, 2, EncodeOptions(bitrate_kbps=64)),
    (16000, 1, EncodeOptions(bitrate_kbps=24)),
    (8000, 1, EncodeOptions(bitrate_kbps=32)),
]
# Candidate frames a shorter post-roll would leave, and today's (converter/segments.py's _join).
ROOMS = (3, 5, 9, 13, 17, 21, POST_ROLL_FRAMES - 2)


class Watched:
    """converter.segments' join, with where each lands and what the shorter rooms would have found."""

    def __init__(self) -> None:
        self.landed: Counter[int] = Counter()
        self.enlarged: Counter[int] = Counter()
        self.none: Counter[int] = Counter()
        self.joins = 0

    def join(self, earlier: list[Frame], later: list[Frame], first: int, last: int) -> int | None:
        for room in ROOMS:
            found = join_frame(earlier, later, first, min(last, first + room))
            if found is None:
                self.none[room] += 1
            elif found[1]:
                self.enlarged[room] += 1
        at = join(earlier, later, first, last)
        if at is not None:
            self.landed[at - first] += 1
        self.joins += 1
        return at


def wav(source: str, rate: int, channels: int) -> bytes:
    command = [FFMPEG, "-loglevel", "error", "-f", "lavfi", "-i", source, "-ar", str(rate), "-ac", str(channels)]
    return subprocess.run(
        [*command, "-c:a", "pcm_s16le", "-f", "wav", "pipe:1"], capture_output=True, check=True
    ).stdout


async def pieces(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 65537):
        yield data[start : start + 65537]


async def converted(data: bytes, options: EncodeOptions) -> None:
    config = ConverterConfig(
        ffmpeg=FFMPEG, time_limit_s=300, max_seconds=3600, parallel_segments=2,
        spare=Spares(), segment_seconds=1.5, helper_backlog=-1,
    )  # fmt: skip

    async def nowhere(chunk: bytes) -> None:
        pass

    await convert(pieces(data), nowhere, options, config)


async def measure(seconds: int) -> Watched:
    watched = Watched()
    setattr(converter.segments, "join", watched.join)  # noqa: B010 - the converter's own name for it
    try:
        for source in SOURCES.values():
            for rate, channels, options in FORMATS:
                await converted(wav(source.format(seconds=seconds), rate, channels), options)
    finally:
        setattr(converter.segments, "join", join)  # noqa: B010
    return watched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="length of each recording")
    watched = asyncio.run(measure(parser.parse_args().seconds))
    farthest = max(watched.landed) if watched.landed else 0
    print(f"{watched.joins} joins over {len(SOURCES)} kinds of audio in {len(FORMATS)} formats.\n")
    print("Frames after the boundary where each landed (count):")
    print(", ".join(f"{offset}: {count}" for offset, count in sorted(watched.landed.items())))
    print(f"\nThe farthest: {farthest} frames after its boundary.\n")
    print("| candidate frames | joins needing an enlarged frame | joins finding none |")
    print("| --- | --- | --- |")
    for size in ROOMS:
        enlarged = watched.enlarged[size]
        today = " (today's)" if size == ROOMS[-1] else ""
        print(f"| {size}{today} | {enlarged} ({enlarged / watched.joins:.1%}) | {watched.none[size]} |")


if __name__ == "__main__":
    main()
