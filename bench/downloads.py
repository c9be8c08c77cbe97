"""Downloads of the longest stored MP3: the first (from the database) against PostgreSQL's
own lo_get, a repeat (from the download cache) against sendfile, with CPU seconds per GB;
and /health and a 5-second upload while 30 clients download in a loop, cache on and off."""

from __future__ import annotations

import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import psycopg

from tests.support import free_port, wait_until

from .harness import (
    Bench,
    content_length,
    fetch,
    fetch_to_null,
    health_latencies,
    percentile,
    postgres_cpu,
    process_cpu,
    record_id_of,
    timed_upload,
    upload_time,
)

TARGETS = {
    "first download / PostgreSQL's lo_get": "≥ 0.90",
    "repeat download / sendfile": "≥ 0.80",
    "/health p99, 30 downloaders, cache on": "≤ 50 ms",
    "/health p99, 30 downloaders, cache off": "≤ 50 ms",
}
# A file sent by sendfile arrives in some 30 ms, of the order of starting curl and of the
# machine's hiccups, and its CPU in 2-4 clock ticks: the two sendfile ways download it this
# many times per round (one connection), so that each measures ~0.3 s of sending.
SENDFILE_TIMES = 10


def downloads(bench: Bench, url: str) -> None:
    """First downloads (from the large object) against PostgreSQL's own read of it; repeat
    downloads (from the download cache) against sendfile; CPU seconds per GB of each."""
    report, service, rounds = bench.report, bench.service, bench.rounds
    copy = bench.folder / "stored.mp3"
    fetch(url, copy)  # the first download of this record: the cache holds it from now on
    size = copy.stat().st_size
    record_id = record_id_of(url)
    service.settle()
    seconds: dict[str, list[float]] = {}
    cpu: dict[str, list[tuple[float, float]]] = {}
    with (
        bench.another_service(DOWNLOAD_CACHE_MB="0") as uncached,
        file_server(copy) as (file_url, file_server_pid),
        psycopg.connect(service.owner_url, autocommit=True) as owner,
    ):
        first_url = uncached.here(url)
        # way: (the process whose CPU is counted, a download, how many times it downloads the file)
        ways: dict[str, tuple[int | None, Callable[[], None], int]] = {
            "PostgreSQL's lo_get (owner, binary, to this process)": (None, lambda: lo_get(owner, record_id), 1),
            "first download (the service, DOWNLOAD_CACHE_MB=0)": (
                uncached.pid, lambda: fetch_to_null(first_url), 1),
            "repeat download (the service, from its cache)": (
                service.pid, lambda: fetch_to_null(url, SENDFILE_TIMES), SENDFILE_TIMES),
            "aiohttp FileResponse (sendfile) from disk": (
                file_server_pid, lambda: fetch_to_null(file_url, SENDFILE_TIMES), SENDFILE_TIMES),
        }  # fmt: skip
        for _ in range(rounds):
            for name, (pid, run, times) in ways.items():
                before = (process_cpu([pid]) if pid else 0.0, postgres_cpu(service.postmaster))
                started = time.perf_counter()
                run()
                seconds.setdefault(name, []).append((time.perf_counter() - started) / times)
                after = (process_cpu([pid]) if pid else 0.0, postgres_cpu(service.postmaster))
                cpu.setdefault(name, []).append(((after[0] - before[0]) / times, (after[1] - before[1]) / times))
    rate = {name: size / 1e6 / statistics.median(values) for name, values in seconds.items()}
    names = list(ways)
    report.say("## Downloads\n")
    report.say(
        f"A {size / 1e6:.0f} MB stored MP3 to /dev/null (curl), medians of {rounds}, the four ways alternating; "
        f"the two sendfile ways download it {SENDFILE_TIMES} times a round on one connection (figures per download):\n"
    )
    report.say("| way | MB/s | CPU s per GB: the server | CPU s per GB: PostgreSQL |")
    report.say("| --- | --- | --- | --- |")
    for name in names:
        server_cpu = statistics.median(c[0] for c in cpu[name]) / (size / 1e9)
        database_cpu = statistics.median(c[1] for c in cpu[name]) / (size / 1e9)
        server = f"{server_cpu:.2f}" if ways[name][0] else "-"
        report.say(f"| {name} | {rate[name]:.0f} | {server} | {database_cpu:.2f} |")
    first = rate[names[1]] / rate[names[0]]
    repeat = rate[names[2]] / rate[names[3]]
    report.say(f"\nFirst download / lo_get: **{first:.2f}**; repeat download / sendfile: **{repeat:.2f}**.\n")
    report.figures["first download / PostgreSQL's lo_get"] = f"{first:.2f}"
    report.figures["repeat download / sendfile"] = f"{repeat:.2f}"


def downloads_under_load(bench: Bench, seconds: float = 10.0) -> None:
    """30 clients downloading a 10-minute MP3 in a loop: /health, and a 5-second upload."""
    report, service = bench.report, bench.service
    url = timed_upload(service, bench.wav(10))[1]["data"]["url"]
    short = bench.wav(5 / 60)
    idle_upload = statistics.median(timed_upload(service, short)[0] for _ in range(3))
    report.say(f"## 30 clients downloading a {content_length(url) / 1e6:.0f} MB MP3 in a loop ({seconds:g} s each)\n")
    report.say("| download cache | /health samples | p50 | p99 | a 5-second upload (idle: "
               f"{idle_upload * 1000:.0f} ms) | downloads done |")  # fmt: skip
    report.say("| --- | --- | --- | --- | --- | --- |")
    with bench.another_service(DOWNLOAD_CACHE_MB="0") as uncached:
        for name, target in (("on", service), ("off", uncached)):
            target_url = target.here(url)
            fetch_to_null(target_url)  # the first download: fills the cache where there is one
            target.settle()
            done = bench.folder / f"downloads-{name}"
            done.write_bytes(b"")
            script = f"while :; do curl -sf -o /dev/null '{target_url}' && printf . >> '{done}'; done"
            loops = [subprocess.Popen(["bash", "-c", script]) for _ in range(30)]
            try:
                upload_midway = partial(upload_time, target, short)
                latencies, upload_seconds = health_latencies(target, seconds, halfway=upload_midway)
            finally:
                for process in loops:
                    process.kill()
                for process in loops:
                    process.wait()
            upload_ms = upload_seconds * 1000 if upload_seconds is not None else float("nan")
            report.say(
                f"| {name} | {len(latencies)} | {percentile(latencies, 50):.1f} ms "
                f"| {percentile(latencies, 99):.1f} ms | {upload_ms:.0f} ms | {done.stat().st_size} |"
            )
            report.figures[f"/health p99, 30 downloaders, cache {name}"] = f"{percentile(latencies, 99):.1f} ms"
    report.say("\nDownloads' reads of large objects take at most 6 of a replica's pool connections together, so")
    report.say("/health, listings and uploads always find one; with the cache on, repeats are sendfile.\n")


def lo_get(owner: psycopg.Connection, record_id: str) -> None:
    owner.execute("SELECT lo_get(lo_oid) FROM app.records WHERE id = %s", [record_id], binary=True).fetchone()


@contextmanager
def file_server(path: Path) -> Iterator[tuple[str, int]]:
    """aiohttp's FileResponse (sendfile) serving ``path``, in a process of its own: its URL and pid."""
    port = free_port()
    code = textwrap.dedent(f"""
        from aiohttp import web
        async def serve(request):
            return web.FileResponse({str(path)!r})
        app = web.Application()
        app.router.add_get("/file", serve)
        web.run_app(app, host="127.0.0.1", port={port}, print=None, access_log=None)
    """)
    url = f"http://127.0.0.1:{port}/file"
    process = subprocess.Popen([sys.executable, "-c", code])
    try:
        wait_until(lambda: subprocess.run(["curl", "-sf", "-o", "/dev/null", url]).returncode == 0, 30, every=0.2)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait()
