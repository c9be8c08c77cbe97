"""1, 2, 4 and 8 simultaneous 1-minute uploads against cores x the single raw encode's
speed; and 8 at once with segment-parallel encoding on and off (PARALLEL_SEGMENTS=0)."""

from __future__ import annotations

import statistics
import time

from .harness import CORES, Bench, finish_upload, raw_encode, upload_process

TARGETS = {
    "concurrent throughput / (cores x single raw)": "≥ 0.90",
    "8 uploads at once: segments on / off": "≥ 0.90",
}


def concurrency(bench: Bench) -> None:
    report, service, wav = bench.report, bench.service, bench.wav(1)
    single_raw = statistics.median(raw_encode(wav, bench.folder) for _ in range(3))
    audio_seconds = 60.0
    limit = CORES * audio_seconds / single_raw
    report.say("## Concurrent 1-minute uploads\n")
    report.say(f"Single raw encode: {single_raw:.2f} s, so the limit is {CORES} cores x "
               f"{audio_seconds / single_raw:.1f} = {limit:.1f} audio-seconds per second.\n")  # fmt: skip
    report.say("| uploads at once | wall | audio-s per s | / limit | statuses |")
    report.say("| --- | --- | --- | --- | --- |")
    best = 0.0
    for count in (1, 2, 4, 8):
        service.settle()
        start = time.perf_counter()
        processes = [upload_process(service, wav) for _ in range(count)]
        statuses = [finish_upload(process)[0] for process in processes]
        wall = time.perf_counter() - start
        rate = count * audio_seconds / wall
        best = max(best, rate / limit)
        seen = ", ".join(f"{status}x{statuses.count(status)}" for status in sorted(set(statuses)))
        report.say(f"| {count} | {wall:.2f} s | {rate:.1f} | {rate / limit:.2f} | {seen} |")
    report.figures["concurrent throughput / (cores x single raw)"] = f"{best:.2f}"
    with bench.another_service(PARALLEL_SEGMENTS="0") as one_encoder:
        rates = {}
        for name, target in (("segments on", service), ("segments off", one_encoder), ("segments on ", service)):
            target.settle()
            start = time.perf_counter()
            processes = [upload_process(target, wav) for _ in range(8)]
            statuses = [finish_upload(process)[0] for process in processes]
            rates[name] = 8 * audio_seconds / (time.perf_counter() - start)
            setting = "0" if "off" in name else "default"
            report.say(f"| 8, {name.strip()} (PARALLEL_SEGMENTS={setting}) | | {rates[name]:.1f} "
                       f"| {rates[name] / limit:.2f} | {statuses.count(201)} x 201 |")  # fmt: skip
    on = statistics.mean([rates["segments on"], rates["segments on "]])
    report.figures["8 uploads at once: segments on / off"] = f"{on / rates['segments off']:.2f}"
    report.say("\nWith every slot taken, an upload borrows none: it behaves as with one encoder each.\n")
