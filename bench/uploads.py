"""Upload → 201 against the raw FFmpeg CLI, for each length of audio, with the server's
memory; and what storing the MP3's real SHA-256 costs at record_finish."""

from __future__ import annotations

import statistics
import time

import psycopg

from converter.options import ConverterConfig
from converter.segments import POST_ROLL_FRAMES
from converter.splice import pre_roll_frames
from tests.support import vm_hwm_kib, vm_rss_kib

from .harness import (
    CORES,
    Bench,
    ChildPeak,
    CpuUse,
    content_length,
    own_children_cpu,
    raw_encode,
    record_id_of,
    running_service,
    timed_upload,
)

SEGMENT_S = ConverterConfig.segment_seconds
# A later segment's pre- and post-roll, at 44.1 kHz stereo.
SEGMENT_OVERHEAD = (pre_roll_frames(44100, 2) + POST_ROLL_FRAMES) * 1152 / (SEGMENT_S * 44100)
TARGETS = {
    "upload / raw FFmpeg, 1 min (11 MB)": "≤ 1.03",
    "upload / raw FFmpeg, 60 min (635 MB)": "≤ 0.55",
    "server RSS growth, 60 min upload": "≤ 16 MiB",
    "server RSS growth, 60 min upload to a fresh service": "≤ 16 MiB",
}


def upload_against_raw(bench: Bench) -> str:
    """The table, per length alternating raw FFmpeg and an upload; the longest upload's link."""
    report, service = bench.report, bench.service
    report.say("## Upload → 201 against raw FFmpeg (medians)\n")
    report.say("| audio | WAV | raw ffmpeg | upload → 201 | ratio | server peak RSS growth | FFmpeg peak RSS |")
    report.say("| --- | --- | --- | --- | --- | --- | --- |")
    last_url = ""
    splits: dict[float, list[CpuUse]] = {length: [] for length in bench.minutes}
    for length in bench.minutes:
        wav = bench.wav(length)
        service.settle()
        raw, uploads = [], []
        peak_before = vm_hwm_kib(service.pid)
        watcher = ChildPeak(service.pid)
        for _ in range(bench.rounds):
            cpu_before = own_children_cpu()
            raw.append(raw_encode(wav, bench.folder))
            raw_cpu = own_children_cpu() - cpu_before
            with watcher:
                before = CpuUse.now(service)
                seconds, answer = timed_upload(service, wav)
                splits[length].append(CpuUse.now(service).minus(before, raw_cpu, seconds))
            uploads.append(seconds)
            last_url = answer["data"]["url"]
        ratio = statistics.median(uploads) / statistics.median(raw)
        size = wav.stat().st_size / 1e6
        growth = (vm_hwm_kib(service.pid) - peak_before) / 1024
        report.say(
            f"| {length} min | {size:.0f} MB | {statistics.median(raw):.2f} s | {statistics.median(uploads):.2f} s "
            f"| **{ratio:.3f}** | {growth:.1f} MiB | {watcher.peak_kib / 1024:.1f} MiB |"
        )
        report.figures[f"upload / raw FFmpeg, {length} min ({size:.0f} MB)"] = f"{ratio:.3f}"
        report.figures[f"server RSS growth, {length} min upload"] = f"{growth:.1f} MiB"
    report.say()
    report.say("Each round: raw FFmpeg on the file, then the same file uploaded with `curl -T` (streamed).")
    report.say("Peak RSS growth: the server's VmHWM after the size's uploads minus before them.")
    report.say(
        f"On more cores (a projection, not measured): the encoding is split per {SEGMENT_S:g}-second segment and "
        f"each later segment is encoded with about {SEGMENT_OVERHEAD:.0%} more (its pre- and post-roll), so N "
        f"free cores take about raw x {1 + SEGMENT_OVERHEAD:.3f} / N of encoding, plus what does not split "
        "(reading the body, joining, storing), which is what this table shows beyond raw x "
        f"{1 + SEGMENT_OVERHEAD:.3f} / 2 on two cores.\n"
    )
    where_the_cpu_goes(bench, splits)
    fresh_service_growth(bench)
    return last_url


def fresh_service_growth(bench: Bench) -> None:
    """The longest upload's memory in a service that has served nothing before: the table's
    service has grown already to what the shorter uploads of its rounds needed."""
    wav, growth = bench.wav(bench.longest), []
    for _ in range(bench.rounds):
        with running_service(bench.database, bench.folder) as fresh:
            before = vm_rss_kib(fresh.pid)
            timed_upload(fresh, wav)
            growth.append((vm_hwm_kib(fresh.pid) - before) / 1024)
    figure = f"{statistics.median(growth):.1f} MiB"
    bench.report.figures[f"server RSS growth, {bench.longest} min upload to a fresh service"] = figure
    each = ", ".join(f"{g:.1f}" for g in growth)
    bench.report.say(f"## The {bench.longest}-minute upload to a fresh service\n")
    bench.report.say(f"Peak RSS growth: **{figure}** (median; {each} MiB). A service started for each round, "
                     "sent the WAV once with `curl -T`: its VmHWM after over its RSS before. The table above "
                     "measures a service that the shorter uploads of its rounds have grown already.\n")  # fmt: skip


def where_the_cpu_goes(bench: Bench, splits: dict[float, list[CpuUse]]) -> None:
    """Where each upload's CPU went, and the ratio to raw FFmpeg the cores could reach
    if the service's own process used none: the encoders' and PostgreSQL's work alone."""
    report = bench.report
    report.say(f"## Where an upload's CPU goes ({CORES} cores; core-seconds, medians)\n")
    report.say("| audio | raw FFmpeg | the service's FFmpegs | the service | PostgreSQL | idle | others | floor |")
    report.say("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for length, uses in splits.items():

        def median(figure: str) -> float:
            return float(statistics.median(getattr(use, figure) for use in uses))  # noqa: B023 (used at once)

        floor = (median("encoders") + median("postgres")) / CORES / median("raw")
        report.say(
            f"| {length:g} min | {median('raw'):.2f} | {median('encoders'):.2f} | {median('service'):.2f} "
            f"| {median('postgres'):.2f} | {median('idle'):.2f} | {median('others'):.2f} | **{floor:.3f}** |"
        )
    report.say()
    report.say(
        "CPU time (user + system) over each upload of the table above: the service's FFmpegs as it reaped "
        "them (/proc/PID/stat's cutime and cstime), its own process, the bench's PostgreSQL cluster (its "
        "postmaster and every process it started), the cores' idle time (/proc/stat); others: the rest of "
        "cores x wall time (curl, this bench, other tenants). Raw FFmpeg: the CLI's own CPU in the same "
        "round. Floor: the upload / raw FFmpeg ratio if the cores did nothing but the service's FFmpegs and "
        "PostgreSQL, (FFmpegs + PostgreSQL) / cores / raw FFmpeg's CPU: no upload on these cores can go below "
        "it while the encoders do this much.\n"
    )


def digest_cost(bench: Bench, url: str) -> None:
    """What storing the MP3's SHA-256 would cost if it were read back: the service hashes
    a local copy as it stores the MP3 (handlers/store.py's LocalCopy) and reads the large
    object back (lo_get, hashed in the backend) only when that copy failed."""
    record_id = record_id_of(url)
    seconds, growth = [], []
    for _ in range(bench.rounds):
        with psycopg.connect(bench.database.owner_url, autocommit=True) as admin:  # a fresh backend each round
            backend = int(admin.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]
            before = vm_hwm_kib(backend)
            start = time.perf_counter()
            admin.execute("SELECT sha256(lo_get(lo_oid)) FROM app.records WHERE id = %s", [record_id])
            seconds.append(time.perf_counter() - start)
            growth.append((vm_hwm_kib(backend) - before) / 1024)
    size = content_length(url)
    report = bench.report
    report.say("## The stored SHA-256: what reading it back would cost (the fallback)\n")
    report.say("| MP3 | sha256(lo_get()) in PostgreSQL | its backend's peak memory growth |")
    report.say("| --- | --- | --- |")
    report.say(f"| {size / 1e6:.0f} MB (the {bench.longest}-minute upload's) | {statistics.median(seconds):.2f} s "
               f"| {statistics.median(growth):.0f} MiB |\n")  # fmt: skip
    report.say("The service hashes its own copy of the MP3 as it stores it (handlers/store.py's LocalCopy),")
    report.say("so an upload pays this only when that copy failed (a full disk, say).\n")
