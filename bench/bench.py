"""The benchmark: the service side by side with the physical limits, in one run.

    scripts/bench [--quick] [--rounds 3]

Starts the service (app.py on the private cluster of scripts/local-postgres),
generates stereo 44.1 kHz 16-bit WAVs with FFmpeg, and measures, alternating
the pairs (A B A B ...) and reporting medians:

1. upload → 201 against the raw CLI `ffmpeg -f wav -i x.wav -c:a libmp3lame
   -b:a 192k x.mp3`, for 1, 10 and 60 minutes of audio (--quick: 1 and 10),
   one upload using every free core (converter/segments.py);
2. the server's peak RSS growth over the longest upload, FFmpeg's apart;
   then ("link") a 10-minute upload paced at 8, 15 and 30 MB/s and unpaced:
   the time from its last byte sent to the 201;
3. 1, 2, 4, 8 simultaneous 1-minute uploads: audio-seconds converted per wall
   second against cores x the single raw encode's speed, and the statuses;
   8 at once again on a service with PARALLEL_SEGMENTS=0, side by side;
4. downloads of the longest stored MP3: the first (from the database, on a
   service with DOWNLOAD_CACHE_MB=0) against PostgreSQL's own lo_get of it,
   a repeat (from the download cache) against aiohttp's FileResponse
   (sendfile) serving the same bytes from disk, with CPU seconds per GB; and
   /health and a 5-second upload while 30 clients download a 10-minute MP3
   in a loop, cache on and off;
5. p50/p99 latency of GET /health and of a small download while 4 of the
   longest uploads run (60 minutes, 635 MB each; --quick: 10 minutes);
6. wrk for 10 s each against user creation and a small download;
7. early endings of an upload (the client's FIN, RST, a malformed chunk):
   the time from the client's act to the slot free, FFmpeg reaped and the
   transaction gone; and /health's latency while three clients send
   multipart preambles of a million line feeds each.

`--only faults` (repeatable, any part's name) runs just the parts named and
writes to --output (default bench/RESULTS-only.md, so RESULTS.md keeps the
whole run).

Writes bench/RESULTS.md. Absolute times on a shared machine are noisy; the
ratios, measured side by side, are the figures to read. A CHECKPOINT before
each part keeps PostgreSQL's flushing of the previous part out of it.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import platform
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import psycopg

from converter.options import ConverterConfig
from converter.segments import POST_ROLL_FRAMES
from converter.splice import pre_roll_frames

ROOT = Path(__file__).resolve().parent.parent
SEGMENT_S = ConverterConfig.segment_seconds
# A later segment's pre- and post-roll, at 44.1 kHz stereo.
SEGMENT_OVERHEAD = (pre_roll_frames(44100, 2) + POST_ROLL_FRAMES) * 1152 / (SEGMENT_S * 44100)
FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
CORES = os.cpu_count() or 1
TARGETS = {
    "upload / raw FFmpeg, 1 min (11 MB)": "≤ 1.03",
    "upload / raw FFmpeg, 60 min (635 MB)": "≤ 0.60",
    "server RSS growth, 60 min upload": "≤ 32 MiB",
    "last byte → 201, 10 min at 8 MB/s": "≤ 50 ms",
    "last byte → 201 at 30 MB/s / unpaced": "≤ 2.0",
    "concurrent throughput / (cores x single raw)": "≥ 0.90",
    "8 uploads at once: segments on / off": "≥ 0.90",
    "first download / PostgreSQL's lo_get": "≥ 0.90",
    "repeat download / sendfile": "≥ 0.80",
    "/health p99, 30 downloaders, cache off": "≤ 50 ms",
    "/health p99 while 4 uploads convert": "≤ 50 ms",
    "slot free after a client's FIN": "≤ 1000 ms",
    "slot free after a client's RST": "≤ 1000 ms",
    "slot free after a client's malformed chunk": "≤ 1000 ms",
    "/health p99 during a preamble flood": "≤ 50 ms",
}


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)

    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)


@dataclass
class Service:
    base: str
    host: str
    port: int
    pid: int
    user_id: int
    token: str
    owner_url: str

    @property
    def basic(self) -> str:
        return base64.b64encode(f"{self.user_id}:{self.token}".encode()).decode()

    def settle(self) -> None:
        """Flush PostgreSQL's dirty pages now, so a checkpoint does not land inside the next measurement."""
        subprocess.run(["psql", self.owner_url, "-qc", "CHECKPOINT"], check=True)


PARTS = ("uploads", "link", "concurrency", "downloads", "responsiveness", "rate", "faults")


def main() -> int:
    parser = argparse.ArgumentParser(description="Benchmark the service against raw FFmpeg and sendfile.")
    parser.add_argument("--quick", action="store_true", help="1 and 10 minutes only, for a fast look")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=PARTS, action="append", help="run only this part (repeatable)")
    parser.add_argument("--output", type=Path, help="default bench/RESULTS.md (bench/RESULTS-only.md with --only)")
    args = parser.parse_args()
    parts = set(args.only or PARTS)
    output = args.output or ROOT / "bench" / ("RESULTS-only.md" if args.only else "RESULTS.md")
    minutes = (1, 10) if args.quick else (1, 10, 60)
    report = Report()
    with tempfile.TemporaryDirectory() as folder_name:
        folder = Path(folder_name)
        wavs = {length: make_wav(folder / f"{length}min.wav", length) for length in minutes}
        with running_service() as service:
            longest = ""
            if parts & {"uploads", "downloads"}:
                longest = upload_against_raw(report, service, wavs, folder, args.rounds)
                digest_cost(report, service, longest, args.rounds)
            if "link" in parts:
                link_latency(report, service, wavs[10], folder, args.rounds)
            if "concurrency" in parts:
                concurrency(report, service, wavs[1], folder)
            if "downloads" in parts:
                downloads(report, service, longest, folder, args.rounds)
                downloads_under_load(report, service, wavs[10], folder)
            if "responsiveness" in parts:
                responsiveness(report, service, wavs[max(wavs)])
            if "rate" in parts:
                request_rate(report, service, folder)
            if "faults" in parts:
                early_endings(report, service, wavs[1])
                preamble_flood(report, service)
    write_results(output, report, args)
    return 0


# --- 1 and 2: upload against raw FFmpeg, and memory ------------------------------------


def upload_against_raw(report: Report, service: Service, wavs: dict[int, Path], folder: Path, rounds: int) -> str:
    report.say("## Upload → 201 against raw FFmpeg (medians)\n")
    report.say("| audio | WAV | raw ffmpeg | upload → 201 | ratio | server peak RSS growth | FFmpeg peak RSS |")
    report.say("| --- | --- | --- | --- | --- | --- | --- |")
    last_url = ""
    for length, wav in wavs.items():
        service.settle()
        raw, uploads = [], []
        peak_before = vm_hwm_kib(service.pid)
        watcher = ChildPeak(service.pid)
        for _ in range(rounds):
            raw.append(timed([FFMPEG, "-v", "error", "-y", "-f", "wav", "-i", str(wav), "-c:a", "libmp3lame",
                              "-b:a", "192k", str(folder / "raw.mp3")]))  # fmt: skip
            with watcher:
                seconds, answer = timed_upload(service, wav)
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
    return last_url


# --- 2b: the link the moment the last byte lands --------------------------------------------------


def link_latency(report: Report, service: Service, wav: Path, folder: Path, rounds: int) -> None:
    """A client at a fixed rate: from its last byte sent to the 201, against the raw encode a
    design that converts after the upload needs from there."""
    raw = statistics.median(
        timed([FFMPEG, "-v", "error", "-y", "-f", "wav", "-i", str(wav), "-c:a", "libmp3lame", "-b:a", "192k",
               str(folder / "raw.mp3")])
        for _ in range(rounds)
    )  # fmt: skip
    data = wav.read_bytes()
    report.say(f"## The link the moment the last byte lands ({len(data) / 1e6:.0f} MB, 10 minutes, medians)\n")
    report.say("| client sends at | sending took | last byte → 201 | convert-after-upload needs (raw FFmpeg) |")
    report.say("| --- | --- | --- | --- |")
    after: dict[str, float] = {}
    for rate in (8.0, 15.0, 30.0, None):
        service.settle()
        sends, waits = zip(*(paced_upload(service, data, rate) for _ in range(rounds)), strict=True)
        name = f"{rate:g} MB/s" if rate else "unpaced"
        after[name] = statistics.median(waits)
        report.say(f"| {name} | {statistics.median(sends):.2f} s | **{after[name] * 1000:.0f} ms** | {raw:.2f} s |")
    report.figures["last byte → 201, 10 min at 8 MB/s"] = f"{after['8 MB/s'] * 1000:.0f} ms"
    report.figures["last byte → 201 at 30 MB/s / unpaced"] = f"{after['30 MB/s'] / after['unpaced']:.2f}"
    report.say("\nSent from this process in 256 KiB writes, paced to the rate; the last byte is sent when the")
    report.say("kernel takes it. Unpaced, the service reads only as fast as its encoders and a bounded read-ahead")
    report.say("allow, so what is left after the last byte is that read-ahead's encoding.\n")


def paced_upload(service: Service, data: bytes, mb_per_s: float | None) -> tuple[float, float]:
    """Seconds spent sending ``data`` at ``mb_per_s`` (None: as fast as taken), and from the
    last byte sent to the 201."""
    chunk = 256 * 1024
    with socket.create_connection((service.host, service.port)) as sock:
        sock.sendall(
            f"POST /record HTTP/1.1\r\nHost: {service.host}:{service.port}\r\nContent-Type: audio/wav\r\n"
            f"Content-Length: {len(data)}\r\nAuthorization: Basic {service.basic}\r\nConnection: close\r\n\r\n".encode()
        )
        start = time.perf_counter()
        for offset in range(0, len(data), chunk):
            if mb_per_s:
                delay = start + offset / (mb_per_s * 1e6) - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            sock.sendall(data[offset : offset + chunk])
        last = time.perf_counter()
        status = sock.recv(12)
        answered = time.perf_counter()
        while sock.recv(65536):
            pass
    if status[9:12] != b"201":
        raise RuntimeError(f"a paced upload answered {status!r}")
    return last - start, answered - last


def digest_cost(report: Report, service: Service, url: str, rounds: int) -> None:
    """What api.record_finish adds to an upload to store the MP3's real SHA-256: it
    reads the whole large object back (lo_get) and hashes it, in the backend."""
    record_id = url.split("id=", 1)[1].split("&", 1)[0]
    seconds, growth = [], []
    for _ in range(rounds):
        with psycopg.connect(service.owner_url, autocommit=True) as admin:  # a fresh backend each round
            backend = int(admin.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]
            before = vm_hwm_kib(backend)
            start = time.perf_counter()
            admin.execute("SELECT sha256(lo_get(lo_oid)) FROM app.records WHERE id = %s", [record_id])
            seconds.append(time.perf_counter() - start)
            growth.append((vm_hwm_kib(backend) - before) / 1024)
    size = content_length(url)
    report.say("## The stored SHA-256: its cost at record_finish\n")
    report.say("| MP3 | sha256(lo_get()) in PostgreSQL | its backend's peak memory growth |")
    report.say("| --- | --- | --- |")
    report.say(f"| {size / 1e6:.0f} MB (the 60-minute upload's) | {statistics.median(seconds):.2f} s "
               f"| {statistics.median(growth):.0f} MiB |\n")  # fmt: skip
    report.figures["real SHA-256 at finish, largest upload"] = f"{statistics.median(seconds):.2f} s"


def content_length(url: str) -> int:
    """The Content-Length a HEAD of ``url`` answers."""
    output = subprocess.run(["curl", "-sSfI", url], check=True, capture_output=True, text=True).stdout
    found = re.search(r"(?im)^content-length:\s*(\d+)", output)
    assert found is not None, output
    return int(found.group(1))


class ChildPeak:
    """The largest VmHWM seen among the server's child processes (FFmpeg) while active."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def _watch(self) -> None:
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        while not self._stop.wait(0.05):
            for child in children.read_text().split():
                with suppress(FileNotFoundError, ProcessLookupError, RuntimeError):
                    self.peak_kib = max(self.peak_kib, vm_hwm_kib(int(child)))


# --- 3: concurrency ----------------------------------------------------------------------


def concurrency(report: Report, service: Service, wav: Path, folder: Path) -> None:
    single_raw = statistics.median(
        timed([FFMPEG, "-v", "error", "-y", "-f", "wav", "-i", str(wav), "-c:a", "libmp3lame", "-b:a", "192k",
               str(folder / "raw.mp3")])
        for _ in range(3)
    )  # fmt: skip
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
    with running_service(PARALLEL_SEGMENTS="0") as one_encoder:
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


# --- 4: downloads ------------------------------------------------------------------------


def downloads(report: Report, service: Service, url: str, folder: Path, rounds: int) -> None:
    """First downloads (from the large object) against PostgreSQL's own read of it; repeat
    downloads (from the download cache) against sendfile; CPU seconds per GB of each."""
    copy = folder / "stored.mp3"
    fetch(url, copy)  # the first download of this record: the cache holds it from now on
    size = copy.stat().st_size
    record_id = url.split("id=", 1)[1].split("&", 1)[0]
    service.settle()
    seconds: dict[str, list[float]] = {}
    cpu: dict[str, list[tuple[float, float]]] = {}
    with (
        running_service(DOWNLOAD_CACHE_MB="0") as uncached,
        file_server(copy) as file_url,
        psycopg.connect(service.owner_url, autocommit=True) as owner,
    ):
        first_url = url.replace(f":{service.port}/", f":{uncached.port}/")
        ways: dict[str, tuple[int | None, Callable[[], None]]] = {
            "PostgreSQL's lo_get (owner, binary, to this process)": (None, lambda: lo_get(owner, record_id)),
            "first download (the service, DOWNLOAD_CACHE_MB=0)": (
                uncached.pid, lambda: fetch_to_null(first_url)),
            "repeat download (the service, from its cache)": (service.pid, lambda: fetch_to_null(url)),
            "aiohttp FileResponse (sendfile) from disk": (None, lambda: fetch_to_null(file_url)),
        }  # fmt: skip
        for _ in range(rounds):
            for name, (pid, run) in ways.items():
                before = (process_cpu([pid]) if pid else 0.0, postgres_cpu())
                started = time.perf_counter()
                run()
                seconds.setdefault(name, []).append(time.perf_counter() - started)
                after = (process_cpu([pid]) if pid else 0.0, postgres_cpu())
                cpu.setdefault(name, []).append((after[0] - before[0], after[1] - before[1]))
    rate = {name: size / 1e6 / statistics.median(values) for name, values in seconds.items()}
    names = list(ways)
    report.say("## Downloads\n")
    report.say(
        f"A {size / 1e6:.0f} MB stored MP3 to /dev/null (curl), medians of {rounds}, the four ways alternating:\n"
    )
    report.say("| way | MB/s | CPU s per GB: the service | CPU s per GB: PostgreSQL |")
    report.say("| --- | --- | --- | --- |")
    for name in names:
        service_cpu = statistics.median(c[0] for c in cpu[name]) / (size / 1e9)
        database_cpu = statistics.median(c[1] for c in cpu[name]) / (size / 1e9)
        report.say(f"| {name} | {rate[name]:.0f} | {service_cpu:.2f} | {database_cpu:.2f} |")
    first = rate[names[1]] / rate[names[0]]
    repeat = rate[names[2]] / rate[names[3]]
    report.say(f"\nFirst download / lo_get: **{first:.2f}**; repeat download / sendfile: **{repeat:.2f}**.\n")
    report.figures["first download / PostgreSQL's lo_get"] = f"{first:.2f}"
    report.figures["repeat download / sendfile"] = f"{repeat:.2f}"


def downloads_under_load(report: Report, service: Service, wav: Path, folder: Path, seconds: float = 10.0) -> None:
    """30 clients downloading a 10-minute MP3 in a loop: /health, and a 5-second upload."""
    url = upload_answer(service, wav)["data"]["url"]
    short = folder / "five-seconds.wav"
    make_wav(short, 5 / 60)
    idle_upload = statistics.median(timed_upload(service, short)[0] for _ in range(3))
    report.say(f"## 30 clients downloading a {content_length(url) / 1e6:.0f} MB MP3 in a loop ({seconds:g} s each)\n")
    report.say("| download cache | /health samples | p50 | p99 | a 5-second upload (idle: "
               f"{idle_upload * 1000:.0f} ms) | downloads done |")  # fmt: skip
    report.say("| --- | --- | --- | --- | --- | --- |")
    with running_service(DOWNLOAD_CACHE_MB="0") as uncached:
        for name, target in (("on", service), ("off", uncached)):
            target_url = url.replace(f":{service.port}/", f":{target.port}/")
            fetch_to_null(target_url)  # the first download: fills the cache where there is one
            target.settle()
            done = folder / f"downloads-{name}"
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


def fetch_to_null(url: str) -> None:
    subprocess.run(["curl", "-sSf", "-o", "/dev/null", url], check=True)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes have used."""
    total = 0.0
    for pid in pids:
        with suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def postgres_cpu() -> float:
    """CPU seconds used by every PostgreSQL process on this machine (the bench's cluster)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                if (entry / "comm").read_text().startswith("postgres"):
                    pids.append(int(entry.name))
    return process_cpu(pids)


@contextmanager
def file_server(path: Path) -> Iterator[str]:
    port = free_port()
    code = textwrap.dedent(f"""
        from aiohttp import web
        async def serve(request):
            return web.FileResponse({str(path)!r})
        app = web.Application()
        app.router.add_get("/file", serve)
        web.run_app(app, host="127.0.0.1", port={port}, print=None, access_log=None)
    """)
    process = subprocess.Popen([sys.executable, "-c", code])
    try:
        wait_for(f"http://127.0.0.1:{port}/file")
        yield f"http://127.0.0.1:{port}/file"
    finally:
        process.terminate()
        process.wait()


# --- 5: responsiveness ---------------------------------------------------------------------


def responsiveness(report: Report, service: Service, wav: Path) -> None:
    small = upload_answer(service, wav.with_name("small.wav"), make=True)["data"]["url"]
    small_path = small.split(str(service.port), 1)[1]
    service.settle()
    uploads = [upload_process(service, wav) for _ in range(4)]
    latencies: dict[str, list[float]] = {"/health": [], "small download": []}
    connection = http.client.HTTPConnection(service.host, service.port)
    while any(process.poll() is None for process in uploads):
        for name, path in (("/health", "/health"), ("small download", small_path)):
            latencies[name].append(request_ms(connection, path))
    for process in uploads:
        finish_upload(process)
    report.say(f"## Responsiveness while 4 uploads of {wav.stat().st_size / 1e6:.0f} MB convert\n")
    report.say("| request | samples | p50 | p99 |")
    report.say("| --- | --- | --- | --- |")
    for name, values in latencies.items():
        p50, p99 = percentile(values, 50), percentile(values, 99)
        report.say(f"| GET {name} | {len(values)} | {p50:.1f} ms | {p99:.1f} ms |")
        if name == "/health":
            report.figures["/health p99 while 4 uploads convert"] = f"{p99:.1f} ms"
    report.say()


def request_ms(connection: http.client.HTTPConnection, path: str) -> float:
    """One GET on a kept-alive connection, answered and read: milliseconds."""
    started = time.perf_counter()
    connection.request("GET", path)
    connection.getresponse().read()
    return (time.perf_counter() - started) * 1000


def health_latencies(
    service: Service, seconds: float, halfway: Callable[[], float] | None = None
) -> tuple[list[float], float | None]:
    """GET /health as fast as it answers for ``seconds`` (milliseconds each); ``halfway``
    runs once, halfway through, and what it measured comes back too."""
    connection = http.client.HTTPConnection(service.host, service.port)
    latencies = []
    measured = None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        latencies.append(request_ms(connection, "/health"))
        if halfway is not None and measured is None and time.monotonic() > deadline - seconds / 2:
            measured = halfway()
    return latencies, measured


def upload_time(service: Service, wav: Path) -> float:
    return timed_upload(service, wav)[0]


def percentile(values: list[float], point: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(point / 100 * (len(ordered) - 1)))] if ordered else float("nan")


# --- 6: request rate ---------------------------------------------------------------------------


def request_rate(report: Report, service: Service, folder: Path) -> None:
    if shutil.which("wrk") is None:
        report.say("## Request rate\n\nwrk is not installed (apt-get install wrk); skipped.\n")
        return
    small = upload_answer(service, folder / "tiny.wav", make=True)["data"]["url"]
    script = folder / "users.lua"
    script.write_text(
        textwrap.dedent("""
        -- Each wrk thread has its own Lua state: a table's address tells them apart.
        counter = 0
        thread_tag = string.sub(tostring({}), -8)
        request = function()
          counter = counter + 1
          local body = '{"username": "wrk-' .. thread_tag .. '-' .. counter .. '"}'
          return wrk.format("POST", "/users", {["Content-Type"] = "application/json"}, body)
        end
    """)
    )
    service.settle()
    rss_before = vm_rss_kib(service.pid)
    report.say("## Request rate (wrk, 2 threads, 16 connections, 10 s each)\n")
    report.say("| request | requests/s | non-2xx or errors |")
    report.say("| --- | --- | --- |")
    for name, command in (
        ("POST /users", ["wrk", "-t2", "-c16", "-d10s", "-s", str(script), service.base]),
        ("GET small download", ["wrk", "-t2", "-c16", "-d10s", small]),
    ):
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
        errors = re.findall(r"(Non-2xx or 3xx responses: \d+|Socket errors: [^\n]+)", output)
        report.say(f"| {name} | {float(rate.group(1)) if rate else float('nan'):.0f} | {'; '.join(errors) or '0'} |")
    rss_after = vm_rss_kib(service.pid)
    report.say(f"\nServer RSS: {rss_before / 1024:.1f} MiB before, {rss_after / 1024:.1f} MiB after.\n")


# --- 7: faults ----------------------------------------------------------------------------------

ENDINGS = ("FIN", "RST", "malformed chunk")


def early_endings(report: Report, service: Service, wav: Path, rounds: int = 5) -> None:
    """From the client's act to each thing an operator checks, polled as fast as they answer."""
    audio = wav.read_bytes()[: 1 << 20]
    ready = http.client.HTTPConnection(service.host, service.port)
    report.say("## Early endings: from the client's act to everything freed (median / max of 5)\n")
    report.say("| ending | slot free (/ready) | FFmpeg reaped | transaction gone | records = large objects |")
    report.say("| --- | --- | --- | --- | --- |")
    with psycopg.connect(service.owner_url, autocommit=True) as owner:
        for ending in ENDINGS:
            seen: dict[str, list[float]] = {"slot": [], "ffmpeg": [], "transaction": []}
            for _ in range(rounds):
                sock = socket.create_connection((service.host, service.port))
                chunked = ending == "malformed chunk"
                body = b"%x\r\n%s\r\n" % (len(audio), audio) if chunked else audio
                framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {100 * len(audio)}"
                sock.sendall(
                    f"POST /record HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n{framing}\r\n"
                    f"Authorization: Basic {service.basic}\r\n\r\n".encode()
                    + body
                )
                while not ffmpeg_children(service.pid):
                    time.sleep(0.005)
                start = time.perf_counter()
                if ending == "RST":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                if chunked:
                    sock.sendall(b"zz\r\n")
                else:
                    sock.close()
                pending: dict[str, Callable[[], bool]] = {
                    "slot": lambda: all_slots_free(ready),
                    "ffmpeg": lambda: not ffmpeg_children(service.pid),
                    "transaction": lambda: idle_in_transaction(owner) == 0,
                }
                while pending:
                    for name, done in list(pending.items()):
                        if done():
                            seen[name].append((time.perf_counter() - start) * 1000)
                            del pending[name]
                sock.close()
            whole = owner.execute(
                "SELECT (SELECT count(*) FROM app.records) = (SELECT count(*) FROM pg_largeobject_metadata)"
            ).fetchone()
            cells = [f"{statistics.median(values):.0f} / {max(values):.0f} ms" for values in seen.values()]
            report.say(f"| {ending} | {' | '.join(cells)} | {'yes' if whole and whole[0] else 'NO'} |")
            report.figures[f"slot free after a client's {ending}"] = f"{max(seen['slot']):.0f} ms (max)"
    report.say()


def preamble_flood(report: Report, service: Service, seconds: float = 5.0, clients: int = 3) -> None:
    """The attack that once stalled the loop: multipart bodies that begin with a million line feeds."""
    stop = threading.Event()
    answers: list[bytes] = []

    def flood() -> None:
        body = b"\n" * 1_000_000
        while not stop.is_set():
            with socket.create_connection((service.host, service.port)) as sock:
                sock.sendall(
                    f"POST /record HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                )
                with suppress(OSError):
                    sock.sendall(body)
                answers.append(sock.recv(12))

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    latencies, _ = health_latencies(service, seconds)
    stop.set()
    for thread in threads:
        thread.join()
    statuses = {answer[9:12].decode() for answer in answers}
    report.say(f"## /health while {clients} clients send preambles of a million line feeds ({seconds:g} s)\n")
    report.say("| /health samples | p50 | p99 | max | attack requests | their answers |")
    report.say("| --- | --- | --- | --- | --- | --- |")
    report.say(
        f"| {len(latencies)} | {percentile(latencies, 50):.1f} ms | {percentile(latencies, 99):.1f} ms "
        f"| {max(latencies):.1f} ms | {len(answers)} | {', '.join(sorted(statuses))} |"
    )
    report.figures["/health p99 during a preamble flood"] = f"{percentile(latencies, 99):.1f} ms"
    report.say()


def ffmpeg_children(pid: int) -> list[str]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with suppress(OSError):
            for child in (task / "children").read_text().split():
                with suppress(OSError):
                    if Path(f"/proc/{child}/comm").read_text().strip() == "ffmpeg":
                        found.append(child)
    return found


def all_slots_free(connection: http.client.HTTPConnection) -> bool:
    connection.request("GET", "/ready")
    response = connection.getresponse()
    data = json.loads(response.read())["data"] if response.status == 200 else {}
    return bool(data) and data["free_slots"] == data["slots"]


def idle_in_transaction(owner: psycopg.Connection) -> int:
    row = owner.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'mp3_service' AND state LIKE 'idle in transaction%'"
    ).fetchone()
    return int(row[0]) if row else 0


# --- the service and its helpers -----------------------------------------------------------------


@contextmanager
def running_service(**settings: str) -> Iterator[Service]:
    """app.py on the private cluster; ``settings``: environment variables for it alone."""
    started = subprocess.run(
        [str(ROOT / "scripts" / "local-postgres"), "start"], check=True, capture_output=True, text=True
    ).stdout
    cluster = dict(line.split("=", 1) for line in started.split())
    owner_url, password = cluster["OWNER_URL"], cluster["SERVICE_PASSWORD"]
    env = {**os.environ, "SERVICE_ROLE_PASSWORD": password}
    subprocess.run([sys.executable, "-m", "db.apply", owner_url], cwd=ROOT, env=env, check=True, capture_output=True)
    port = free_port()
    env |= {
        "DATABASE_URL": f"postgresql://mp3_service:{password}@{owner_url.rsplit('@', 1)[1]}",
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "QUEUE_TIMEOUT_S": "120",
        **settings,
    }
    process = subprocess.Popen(
        [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/health")
        answer = post_json(f"{base}/users", {"username": f"bench-{time.time_ns()}"})
        user = answer["data"]
        yield Service(base, "127.0.0.1", port, process.pid, int(str(user["id"])), str(user["token"]), owner_url)
    finally:
        process.terminate()
        process.wait()


def make_wav(path: Path, minutes: float) -> Path:
    seconds = minutes * 60
    subprocess.run(
        [FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
         "-f", "lavfi", "-i", f"anoisesrc=duration={seconds}:amplitude=0.1", "-filter_complex",
         "[0][1]amerge=inputs=2", "-ar", "44100", "-c:a", "pcm_s16le", str(path)],
        check=True,
    )  # fmt: skip
    return path


def upload_process(service: Service, wav: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["curl", "-sS", "-o", "-", "-w", "\\n%{http_code}", "-X", "POST", "-T", str(wav),
         "-H", "Content-Type: audio/wav", "-u", f"{service.user_id}:{service.token}", f"{service.base}/record"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish_upload(process: subprocess.Popen[str]) -> tuple[int, dict[str, object]]:
    output, _ = process.communicate()
    body, _, status = output.rpartition("\n")
    return int(status), json.loads(body) if body.startswith("{") else {}


def timed_upload(service: Service, wav: Path) -> tuple[float, dict[str, dict[str, str]]]:
    start = time.perf_counter()
    status, answer = finish_upload(upload_process(service, wav))
    seconds = time.perf_counter() - start
    if status != 201:
        raise RuntimeError(f"upload answered {status}: {answer}")
    return seconds, answer  # type: ignore[return-value]


def upload_answer(service: Service, wav: Path, make: bool = False) -> dict[str, dict[str, str]]:
    if make:
        make_wav(wav, 0.1)
    return timed_upload(service, wav)[1]


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def fetch(url: str, target: Path) -> None:
    subprocess.run(["curl", "-sSf", "-o", str(target), url], check=True)


def post_json(url: str, body: dict[str, str]) -> dict[str, dict[str, object]]:
    output = subprocess.run(
        ["curl", "-sSf", "-X", "POST", "-H", "Content-Type: application/json", "-d", json.dumps(body), url],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return json.loads(output)  # type: ignore[no-any-return]


def vm_hwm_kib(pid: int) -> int:
    return _status_kib(pid, "VmHWM:")


def vm_rss_kib(pid: int) -> int:
    return _status_kib(pid, "VmRSS:")


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} for {pid}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if subprocess.run(["curl", "-sf", "-o", "/dev/null", url], check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


def write_results(path: Path, report: Report, args: argparse.Namespace) -> None:
    ffmpeg_version = subprocess.run([FFMPEG, "-version"], capture_output=True, text=True).stdout.splitlines()[0]
    postgres = subprocess.run(["psql", "--version"], capture_output=True, text=True).stdout.strip()
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 30
    header = [
        "# Benchmark results",
        "",
        "Regenerate with `scripts/bench` (this file is its output).",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- machine: {platform.machine()}, {CORES} cores, {memory_gib} GiB",
        f"- Python {platform.python_version()}, {ffmpeg_version}, {postgres}",
        f"- command: `scripts/bench{' --quick' if args.quick else ''} --rounds {args.rounds}"
        f"{''.join(f' --only {part}' for part in args.only or ())}`",
        "",
        "## Targets",
        "",
        "| figure | target | measured |",
        "| --- | --- | --- |",
        *(f"| {name} | {target} | {report.figures.get(name, 'not measured')} |" for name, target in TARGETS.items()),
        "",
    ]  # fmt: skip
    path.write_text("\n".join(header + report.lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
