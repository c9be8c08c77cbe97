"""What measuring peaks and loudness costs, beside what encoding costs.

    .venv/bin/python -m bench.analysis_cost [--seconds N] [--rate R] [--channels C] [--hour]

(after any of the scripts has built converter/_measure.c: scripts/venv.sh does).

Generates N seconds (default 120) of each kind of test audio with FFmpeg as raw
16-bit samples, feeds them to converter.analysis.Analyser in the pieces the
service reads (256 KiB), and encodes the same samples with FFmpeg's libmp3lame
at 192 kb/s into nothing. Prints the CPU seconds each takes per hour of audio
(the analyser's in this process, the best of three runs; FFmpeg's as its own
user + system time) and the most memory the analysis held (traced).

--hour: instead, a whole hour of pink noise (dense and loud: the true peak
interpolates most blocks) streamed from FFmpeg through one analyser as an upload
would be (635 MB at 44.1 kHz stereo, never held): its CPU seconds, and this
process's peak RSS (VmHWM) before and after.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import time
import tracemalloc

from converter.analysis import Analyser
from converter.wav import FORMAT_PCM, WavFormat
from settings import find_ffmpeg

PIECE = 256 * 1024  # what handlers/body.py reads at most
SIGNALS = {
    # scripts/bench's WAV (bench/harness.py TONE_AND_NOISE): a tone on the left, noise on the right
    "tone | noise (the bench's)": "sine=f=440:r={rate}[tone];anoisesrc=a=0.1:r={rate}[noise];"
    "[tone][noise]amerge=inputs=2",
    "sine 997 Hz": "sine=f=997:r={rate},volume=4",
    "pink noise": "anoisesrc=c=pink:a=0.5:r={rate}",
    "white noise": "anoisesrc=c=white:a=0.5:r={rate}",
    "music-like, limited": "aevalsrc='0.3*sin(2*PI*110*t)+0.2*sin(2*PI*440*t)*sin(2*PI*3*t)"
    "+0.2*(random(0)-0.5)':s={rate},alimiter=limit=0.8:level=false",
    "speech-like": "aevalsrc='0.5*sin(2*PI*180*t)*sin(2*PI*900*t)*gt(sin(2*PI*2.3*t),0)"
    "*gt(sin(2*PI*0.4*t),-0.4)':s={rate}",
    "speech (flite)": "flite=voice=slt:text='"
    + " ".join(
        [
            "The waveform and the loudness are measured as the"
            " upload streams in, in the same pass, and nothing of the audio is kept."
        ]
        * 12
    )
    + "',aresample={rate}",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--rate", type=int, default=44100)
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--hour", action="store_true")
    args = parser.parse_args()
    ffmpeg = find_ffmpeg(None)
    if args.hour:
        _hour(ffmpeg, SIGNALS["pink noise"].format(rate=args.rate), args.rate, args.channels)
        return
    print(f"{args.seconds} s of {args.channels}-channel 16-bit audio at {args.rate} Hz, CPU seconds per hour of audio:")
    print(f"{'signal':24} {'analyser':>9} {'libmp3lame':>11} {'ratio':>7} {'memory':>9}")
    for name, source in SIGNALS.items():
        samples = _generate(ffmpeg, source.format(rate=args.rate), args.seconds, args.rate, args.channels)
        per_hour = 3600 / (len(samples) / (2 * args.channels * args.rate))  # flite's speech ends when it ends
        analyser_s, peak_bytes = _analyse(samples, args.rate, args.channels)
        encoder_s = _encode(ffmpeg, samples, args.rate, args.channels)
        print(
            f"{name:24} {analyser_s * per_hour:8.3f}s {encoder_s * per_hour:10.2f}s "
            f"{analyser_s / encoder_s:6.1%} {peak_bytes / 1024:7.0f}KiB"
        )
    print(f"(ffmpeg: {ffmpeg}; encoder command: ffmpeg -f s16le -ar R -ac C -i - -c:a libmp3lame -b:a 192k -f null -)")


def _hour(ffmpeg: str, source: str, rate: int, channels: int) -> None:
    before = _peak_rss_kib()
    command = [ffmpeg, "-v", "error", "-f", "lavfi", "-i", source, "-t", "3600"]
    command += ["-ar", str(rate), "-ac", str(channels), "-f", "s16le", "-"]
    analyser = Analyser(WavFormat(FORMAT_PCM, channels, rate, 2 * channels, 16))
    spent = 0.0
    with subprocess.Popen(command, stdout=subprocess.PIPE) as generator:
        assert generator.stdout is not None
        while piece := generator.stdout.read(PIECE):
            started = time.process_time()
            analyser.take(piece)
            spent += time.process_time() - started
    started = time.process_time()
    result = analyser.result()
    spent += time.process_time() - started
    print(
        f"one hour streamed: {spent:.3f} s of CPU in the analyser; peak RSS {before} KiB before, "
        f"{_peak_rss_kib()} KiB after; state {len(analyser.state()) // 1024} KiB; {result.loudness}"
    )


def _peak_rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))


def _generate(ffmpeg: str, source: str, seconds: int, rate: int, channels: int) -> bytes:
    command = [ffmpeg, "-v", "error", "-f", "lavfi", "-i", source, "-t", str(seconds)]
    command += ["-ar", str(rate), "-ac", str(channels), "-f", "s16le", "-"]
    return subprocess.run(command, capture_output=True, check=True).stdout


def _analyse(samples: bytes, rate: int, channels: int) -> tuple[float, int]:
    """CPU seconds to analyse the samples (the best of three runs), and the most memory the
    analysis held meanwhile (a fourth run, traced: tracing slows it)."""
    spent = min(_run(samples, rate, channels) for _ in range(3))
    tracemalloc.start()
    _run(samples, rate, channels)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return spent, peak


def _run(samples: bytes, rate: int, channels: int) -> float:
    wav_format = WavFormat(FORMAT_PCM, channels, rate, 2 * channels, 16)
    view = memoryview(samples)
    started = time.process_time()
    analyser = Analyser(wav_format)
    for at in range(0, len(view), PIECE):
        analyser.take(view[at : at + PIECE])
    analyser.result()
    return time.process_time() - started


def _encode(ffmpeg: str, samples: bytes, rate: int, channels: int) -> float:
    """FFmpeg's CPU seconds (user + system) to encode the samples as the service does, at 192 kb/s."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    command = [ffmpeg, "-v", "error", "-f", "s16le", "-ar", str(rate), "-ac", str(channels), "-i", "-"]
    command += ["-c:a", "libmp3lame", "-b:a", "192k", "-f", "null", "-"]
    subprocess.run(command, input=samples, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


if __name__ == "__main__":
    main()
