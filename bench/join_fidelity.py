"""How far joined encodings stray from one encoding of the same WAV: an upload cut off at
random places and resumed, and one encoded in segments.

    .venv/bin/python -m bench.join_fidelity [--kbps N] [--cuts N] [--seed N]

The tests' music (16 seconds, tests/support.py) at N kbit/s (default 128), through the
service's converter as tests/converter/test_resume.py drives it (its upload_with_cuts
and single: a stored upload, resumed from its last checkpoint after each cut). For --cuts
sets (default 40) of one to three random cut points (--seed, default 1): the whole file's
SNR against the WAV minus one encoding's, lowest first; and the worst single frame's,
which is where a poor join shows (a join at an attack short of its reservoir cost 8 dB
there). Then the same for the music cut into 1.5-second segments, joined at each.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
from array import array
from pathlib import Path

from converter.options import EncodeOptions
from tests.converter.test_resume import SEGMENTED, single, upload_with_cuts
from tests.support import decoded, music, samples_of, snr_db

FRAME_VALUES = 1152 * 2  # one MP3 frame of interleaved stereo samples


def worst_frame_db(original: array[int], joined: array[int], one: array[int]) -> float:
    """The largest loss of any one frame's SNR against one encoding's."""
    worst = 0.0
    for start in range(0, len(original) - FRAME_VALUES, FRAME_VALUES):
        end = start + FRAME_VALUES
        worst = min(worst, snr_db(original, joined, start, end) - snr_db(original, one, start, end))
    return worst


async def measure(kbps: int, count: int, seed: int) -> None:
    wav = music(Path(tempfile.mkdtemp()), 44100, 2)
    options = EncodeOptions(bitrate_kbps=kbps)
    original = samples_of(wav)
    one = decoded(await single(wav, options), 2)
    whole = snr_db(original, one)
    chance = random.Random(seed)  # noqa: S311 - cut points to measure, not a secret
    rows = []
    for _ in range(count):
        cuts = sorted(chance.random() for _ in range(chance.randint(1, 3)))
        mp3, _ = await upload_with_cuts(wav, sorted(int(len(wav) * cut) for cut in cuts), options)
        played = decoded(mp3, 2)
        rows.append((snr_db(original, played) - whole, worst_frame_db(original, played, one), cuts))
    rows.sort()
    print(f"{kbps} kbit/s, one encoding {whole:.3f} dB; {count} uploads cut and resumed:\n")
    print("| cut at (of the WAV) | whole file, dB against one encoding | worst frame, dB |")
    print("| --- | --- | --- |")
    for delta, frame, cuts in rows:
        print(f"| {', '.join(f'{cut:.3f}' for cut in cuts)} | {delta:+.3f} | {frame:+.1f} |")
    mp3, _ = await upload_with_cuts(wav, [], options, SEGMENTED)
    played = decoded(mp3, 2)
    print(
        f"\nIn 1.5-second segments: whole file {snr_db(original, played) - whole:+.3f} dB, "
        f"worst frame {worst_frame_db(original, played, one):+.1f} dB."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kbps", type=int, default=128)
    parser.add_argument("--cuts", type=int, default=40, help="uploads cut and resumed")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(measure(args.kbps, args.cuts, args.seed))


if __name__ == "__main__":
    main()
