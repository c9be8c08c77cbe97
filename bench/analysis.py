"""What measuring the waveform and loudness costs an upload: the longest upload on a
service with AUDIO_ANALYSIS on against one with it off, alternating; and the size of
the waveform stored with the record.

Both services are started for this part, so that neither carries the memory
high-water mark of the uploads before it. Each upload's memory is its service's
peak over what that service held before its first upload: what it held just
before each one varies by several MiB from round to round (memory the previous
upload freed and the allocator kept, or gave back), which the peaks do not.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from converter.analysis import Analyser
from converter.wav import WavHeader
from tests.support import vm_rss_kib

from .harness import Bench, Service, peak_growth_kib, process_cpu, record_id_of, timed_upload

WALL = "longest upload → 201, AUDIO_ANALYSIS on / off"
MEMORY = "server RSS growth, AUDIO_ANALYSIS on minus off"
TARGETS = {WALL: "≤ 1.03", MEMORY: "≤ 2 MiB"}


@dataclass(frozen=True)
class Uploaded:
    seconds: float  # upload → 201
    growth_kib: int  # the server's peak RSS over its RSS before its first upload
    cpu: float  # the server's CPU seconds for it (FFmpeg's apart)
    record_id: str


def analysis_cost(bench: Bench) -> None:
    report, wav = bench.report, bench.wav(bench.longest)
    seen: dict[str, list[Uploaded]] = {"on": [], "off": []}
    with bench.another_service(AUDIO_ANALYSIS="on") as measuring, bench.another_service(AUDIO_ANALYSIS="off") as not_:
        services = {"on": measuring, "off": not_}
        for service in services.values():
            service.settle()
        idle_kib = {name: vm_rss_kib(service.pid) for name, service in services.items()}
        for _ in range(bench.rounds):
            for name, service in services.items():
                service.settle()
                seen[name].append(upload_watched(service, wav, idle_kib[name]))
    with psycopg.connect(bench.database.owner_url, autocommit=True) as owner:
        stored = {
            name: owner.execute(
                "SELECT octet_length(waveform), loudness FROM app.records WHERE id = %s", [uploads[-1].record_id]
            ).fetchone()
            for name, uploads in seen.items()
        }
    wall = {name: statistics.median(each.seconds for each in uploads) for name, uploads in seen.items()}
    growth = {name: statistics.median(each.growth_kib for each in uploads) / 1024 for name, uploads in seen.items()}
    cpu = {name: statistics.median(each.cpu for each in uploads) for name, uploads in seen.items()}
    size = wav.stat().st_size / 1e6
    report.say(f"## Waveform and loudness: their cost ({bench.longest} minutes, {size:.0f} MB, medians)\n")
    report.say("| AUDIO_ANALYSIS | upload → 201 | server peak RSS growth | server CPU | waveform stored | loudness |")
    report.say("| --- | --- | --- | --- | --- | --- |")
    for name in seen:
        waveform, loudness = stored[name] or (None, None)
        report.say(
            f"| {name} | {wall[name]:.2f} s | {growth[name]:.1f} MiB | {cpu[name]:.2f} s "
            f"| {'none' if waveform is None else f'{waveform / 1024:.1f} KiB'} "
            f"| {'none' if loudness is None else f'{loudness:.1f} LUFS'} |"
        )
    ratio = wall["on"] / wall["off"]
    report.say(f"\nOn / off: **{ratio:.3f}** of the wall time, **{growth['on'] - growth['off']:+.1f} MiB** of memory.")
    report.say("Two services on the same database, started for this part, one upload each in turn with `curl -T`.")
    report.say("Peak RSS growth: the server's VmHWM during the upload (reset before it, /proc/PID/clear_refs)")
    report.say("over its RSS before its first upload (its RSS just before each upload varies by MiB from round to")
    report.say("round, its peaks do not); CPU: the server process's own (the analysis runs in it; FFmpeg is apart).\n")
    alone = statistics.median(analyser_cpu(wav) for _ in range(bench.rounds))
    report.say(
        f"The analyser alone (converter/analysis.py's `Analyser`, in this process, fed the same WAV's samples "
        f"from the file in 256 KiB pieces as the service takes them): **{alone:.2f} CPU-s**, median of "
        f"{bench.rounds}; on a busy machine each of them is one the encoders do not get.\n"
    )
    report.figures[WALL] = f"{ratio:.3f}"
    report.figures[MEMORY] = f"{growth['on'] - growth['off']:+.1f} MiB"


def analyser_cpu(wav: Path) -> float:
    """CPU seconds the analyser takes for ``wav``'s samples, read from the file in 256 KiB pieces
    (the reads not counted)."""
    header = WavHeader()
    used = 0.0
    with wav.open("rb") as file:
        samples = header.feed(file.read(64 << 10))
        assert header.format is not None
        analyser = Analyser(header.format)
        while samples:
            start = time.process_time()
            analyser.take(samples)
            used += time.process_time() - start
            samples = header.feed(file.read(256 << 10))
        start = time.process_time()
        analyser.result()
        return used + time.process_time() - start


def upload_watched(service: Service, wav: Path, idle_kib: int) -> Uploaded:
    """One `curl -T` upload of ``wav``, with the server's memory (its peak over ``idle_kib``) and CPU over it."""
    cpu_before = process_cpu([service.pid])
    growth, (seconds, answer) = peak_growth_kib(service.pid, lambda: timed_upload(service, wav), idle_kib)
    return Uploaded(seconds, growth, process_cpu([service.pid]) - cpu_before, record_id_of(answer["data"]["url"]))
