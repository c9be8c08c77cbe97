"""1, 2, 4 and 8 simultaneous 1-minute uploads, each of a user of its own, against cores x
the single raw encode's speed; 8 at once with segment-parallel encoding on and off
(PARALLEL_SEGMENTS=0); and 8 at once of one user's, which go USER_MAX_UPLOADS at a time."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from .harness import CORES, Bench, CpuUse, Service, finish_upload, own_children_cpu, raw_encode, upload_process

TARGETS = {
    "concurrent throughput / (cores x single raw)": "≥ 0.90",
    "8 uploads at once: segments on / off": "≥ 0.90",
}


def concurrency(bench: Bench) -> None:
    report, service, wav = bench.report, bench.service, bench.wav(1)
    cpu_before = own_children_cpu()
    single_raw = statistics.median(raw_encode(wav, bench.folder) for _ in range(3))
    single_raw_cpu = (own_children_cpu() - cpu_before) / 3
    audio_seconds = 60.0
    limit = CORES * audio_seconds / single_raw
    report.say("## Concurrent 1-minute uploads\n")
    report.say(f"Single raw encode: {single_raw:.2f} s, so the limit is {CORES} cores x "
               f"{audio_seconds / single_raw:.1f} = {limit:.1f} audio-seconds per second.\n")  # fmt: skip
    report.say("| uploads at once | wall | audio-s per s | / limit | statuses |")
    report.say("| --- | --- | --- | --- | --- |")
    best = 0.0
    uses: dict[int, CpuUse] = {}
    uploaders = service.accounts(8)
    for count in (1, 2, 4, 8):
        service.settle()
        before = CpuUse.now(service)
        wall, statuses = at_once(uploaders[:count], wav)
        uses[count] = CpuUse.now(service).minus(before, count * single_raw_cpu, wall)
        rate = count * audio_seconds / wall
        best = max(best, rate / limit)
        seen = ", ".join(f"{status}x{statuses.count(status)}" for status in sorted(set(statuses)))
        report.say(f"| {count} | {wall:.2f} s | {rate:.1f} | {rate / limit:.2f} | {seen} |")
    report.figures["concurrent throughput / (cores x single raw)"] = f"{best:.2f}"
    report.say()
    report.say("| uploads at once | the service's FFmpegs / raw FFmpeg's | the service | PostgreSQL | idle | others "
               "| ceiling |")  # fmt: skip
    report.say("| --- | --- | --- | --- | --- | --- | --- |")
    for count, use in uses.items():
        ceiling = use.raw / (use.encoders + use.postgres)
        report.say(f"| {count} | {use.encoders:.2f} / {use.raw:.2f} core-s | {use.service:.2f} | {use.postgres:.2f} "
                   f"| {use.idle:.2f} | {use.others:.2f} | **{ceiling:.2f}** |")  # fmt: skip
    report.say(
        "\nWhere each row's CPU went (core-seconds; the columns as in the uploads part's table); raw FFmpeg's: "
        "the uploads' count x the single raw encode's CPU. Ceiling: the throughput / limit these cores would reach "
        "if they did nothing but the service's FFmpegs and PostgreSQL.\n"
    )
    report.say("| uploads at once | wall | audio-s per s | / limit | statuses |")
    report.say("| --- | --- | --- | --- | --- |")
    with bench.another_service(PARALLEL_SEGMENTS="0") as one_encoder:
        rates = {}
        theirs = one_encoder.accounts(8)
        for name, target in (
            ("segments on", uploaders),
            ("segments off", theirs),
            ("segments on ", uploaders),
        ):
            service.settle()
            wall, statuses = at_once(target, wav)
            rates[name] = 8 * audio_seconds / wall
            setting = "0" if "off" in name else "default"
            report.say(f"| 8, {name.strip()} (PARALLEL_SEGMENTS={setting}) | | {rates[name]:.1f} "
                       f"| {rates[name] / limit:.2f} | {statuses.count(201)} x 201 |")  # fmt: skip
    on = statistics.mean([rates["segments on"], rates["segments on "]])
    report.figures["8 uploads at once: segments on / off"] = f"{on / rates['segments off']:.2f}"
    service.settle()
    wall, statuses = at_once([service] * 8, wav)
    rate = 8 * audio_seconds / wall
    report.say(f"| 8, one user's | | {rate:.1f} | {rate / limit:.2f} | {statuses.count(201)} x 201 |")
    report.say(
        "\nEach upload of a user of its own, as on a busy server, but the last row's. With every slot taken, an "
        "upload borrows none: it behaves as with one encoder each. One user's uploads go USER_MAX_UPLOADS (2) at "
        "a time: the next begins (its transaction, its record, its FFmpeg) when one has committed, so the cores "
        "wait for those steps between each pair.\n"
    )


def at_once(uploaders: list[Service], wav: Path) -> tuple[float, list[int]]:
    """One upload of ``wav`` by each of ``uploaders``, all at once: the seconds until the
    last answered, and their statuses."""
    start = time.perf_counter()
    processes = [upload_process(uploader, wav) for uploader in uploaders]
    statuses = [finish_upload(process)[0] for process in processes]
    return time.perf_counter() - start, statuses
