"""What the benchmark's parts share: the running service, the audio, timed uploads
and requests, percentiles and the CPU and memory the processes use.

app.py runs, audio is made and processes are watched with tests/support.py's
helpers, as the tests and scripts/soak.py do: one place for each.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from db.apply import DEFAULT_SERVICE_ROLE, Roles, apply
from settings import Settings
from tests.support import (
    FFMPEG,
    DelayingProxy,
    ServiceProcess,
    children_of,
    make_audio,
    private_cluster,
    reset_high_water_mark,
    vm_hwm_kib,
    vm_rss_kib,
)

from .report import Report

CORES = os.cpu_count() or 1
# Stereo at 44.1 kHz: a tone on the left, noise on the right (noise does not compress:
# the encoder works as on music).
TONE_AND_NOISE = (
    "sine=frequency=440:duration={seconds}[tone];anoisesrc=duration={seconds}:amplitude=0.1[noise];"
    "[tone][noise]amerge=inputs=2"
)


@dataclass(frozen=True)
class Database:
    owner_url: str  # the administrator's
    service_url: str  # the service role's
    postmaster: int  # its pid: its processes are the ones postgres_cpu counts


@contextmanager
def bench_database() -> Iterator[Database]:
    """A private cluster of scripts/local-postgres in a folder of its own, the schema
    applied; stopped and removed after."""
    with private_cluster() as (env, owner_url):
        password = Path(env["PGDATA_ROOT"], "service-password").read_text().strip()
        apply(owner_url, Roles(service_password=password))
        postmaster = int(Path(env["PGDATA_ROOT"], "data", "postmaster.pid").read_text().split()[0])
        service_url = f"postgresql://{DEFAULT_SERVICE_ROLE}:{password}@127.0.0.1:{env['PGPORT']}/mp3"
        yield Database(owner_url, service_url, postmaster)


@contextmanager
def at_distance(database: Database, delay_ms: float) -> Iterator[Database]:
    """The database as the bench's services reach it: through tests/support.py's DelayingProxy,
    each reply held ``delay_ms``, as one network hop away (0: directly). The bench's own
    statements (psql as the owner, and the baselines it measures with them: lo_get, the
    digest's cost) go directly; the proxy's CPU counts among the others'."""
    if not delay_ms:
        yield database
        return
    address = urlsplit(database.service_url)
    assert address.hostname is not None
    assert address.port is not None
    proxy = DelayingProxy(address.hostname, address.port, delay_ms / 1000).start()
    try:
        yield replace(database, service_url=proxy.url(database.service_url))
    finally:
        proxy.stop()


@dataclass
class Service:
    """app.py as a process on the bench's database, and the user the bench uploads as."""

    process: ServiceProcess
    owner_url: str
    postmaster: int  # the database's (Database.postmaster)
    user_id: int
    token: str

    @property
    def host(self) -> str:
        return self.process.host

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def base(self) -> str:
        return self.process.base

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def basic(self) -> str:
        return base64.b64encode(f"{self.user_id}:{self.token}".encode()).decode()

    def here(self, url: str) -> str:
        """A link another service of the bench gave (they share the database), pointing here."""
        return re.sub(r"^http://[^/]+", self.base, url)

    def accounts(self, count: int) -> list[Service]:
        """``count`` new users of this service, as a busy server's uploads come from many
        (one user's uploads go USER_MAX_UPLOADS at a time, 2 by default)."""
        made = [new_user(self.base) for _ in range(count)]
        return [replace(self, user_id=user_id, token=token) for user_id, token in made]

    def settle(self) -> None:
        """Flush PostgreSQL's dirty pages now, so a checkpoint does not land inside the next measurement."""
        subprocess.run(["psql", self.owner_url, "-qc", "CHECKPOINT"], check=True)


def side_by_side_arguments(description: str | None) -> argparse.Namespace:
    """A WAV and the checkouts to measure side by side (bench.page_patches, bench.fresh_memory)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wav", type=Path)
    parser.add_argument("trees", type=Path, nargs="+")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--db-delay-ms", type=float, default=0.0)
    return parser.parse_args()


def new_user(base: str) -> tuple[int, str]:
    """A new user of the service at ``base``: its id and token."""
    user = post_json(f"{base}/users", {"username": f"bench-{time.time_ns()}"})["data"]
    return int(str(user["id"])), str(user["token"])


@contextmanager
def running_service(database: Database, folder: Path, **settings: str) -> Iterator[Service]:
    """app.py on the bench's database; ``settings``: environment variables for it alone."""
    log = folder / f"service-{len(list(folder.glob('service-*.log')))}.log"
    process = ServiceProcess(
        Settings(database_url=database.service_url, ffmpeg_binary=FFMPEG), log, QUEUE_TIMEOUT_S="120", **settings
    )
    try:
        process.start_blocking()
        yield Service(process, database.owner_url, database.postmaster, *new_user(process.base))
    finally:
        if process.process is None or process.process.poll() is not None:  # it did not start, or ended
            print(f"app.py ended; the end of its log:\n{log.read_text()[-3000:]}", file=sys.stderr)
        process.stop()


@dataclass
class Bench:
    """One run: its report, its database and main service, its audio and settings."""

    report: Report
    database: Database
    service: Service
    folder: Path
    rounds: int
    minutes: tuple[int, ...]  # the lengths of audio the upload part measures
    _wavs: dict[float, Path] = field(default_factory=dict)

    @property
    def longest(self) -> int:
        return max(self.minutes)

    def wav(self, minutes: float) -> Path:
        """``minutes`` of stereo 44.1 kHz 16-bit WAV (TONE_AND_NOISE), made once."""
        if minutes not in self._wavs:
            source = TONE_AND_NOISE.format(seconds=minutes * 60)
            self._wavs[minutes] = make_audio(self.folder / f"{minutes:g}min.wav", source)
        return self._wavs[minutes]

    def another_service(self, **settings: str) -> AbstractContextManager[Service]:
        """A second app.py on the same database, with these settings (environment variables)."""
        return running_service(self.database, self.folder, **settings)


# --- uploads and requests, as clients make them -----------------------------------------------


def raw_encode(wav: Path, folder: Path) -> float:
    """Seconds the FFmpeg CLI takes to convert ``wav`` as the service does (libmp3lame at 192 kb/s)."""
    return timed([FFMPEG, "-v", "error", "-y", "-f", "wav", "-i", str(wav), "-c:a", "libmp3lame", "-b:a", "192k",
                  str(folder / "raw.mp3")])  # fmt: skip


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def upload_process(service: Service, wav: Path) -> subprocess.Popen[str]:
    return curl_upload(service.base, (service.user_id, service.token), wav)


def curl_upload(base: str, user: tuple[int, str], wav: Path) -> subprocess.Popen[str]:
    """POST /record with `curl -T`, as docs/api.md shows it: the file streamed."""
    return subprocess.Popen(
        ["curl", "-sS", "-o", "-", "-w", "\\n%{http_code}", "-X", "POST", "-T", str(wav),
         "-H", "Content-Type: audio/wav", "-u", f"{user[0]}:{user[1]}", f"{base}/record"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish_upload(process: subprocess.Popen[str]) -> tuple[int, dict[str, object]]:
    output, _ = process.communicate()
    body, _, status = output.rpartition("\n")
    return int(status), json.loads(body) if body.startswith("{") else {}


def timed_upload(service: Service, wav: Path) -> tuple[float, dict[str, dict[str, str]]]:
    return timed_upload_to(service.base, (service.user_id, service.token), wav)


def timed_upload_to(base: str, user: tuple[int, str], wav: Path) -> tuple[float, dict[str, dict[str, str]]]:
    start = time.perf_counter()
    status, answer = finish_upload(curl_upload(base, user, wav))
    seconds = time.perf_counter() - start
    if status != 201:
        raise RuntimeError(f"upload answered {status}: {answer}")
    return seconds, answer  # type: ignore[return-value]


def upload_time(service: Service, wav: Path) -> float:
    return timed_upload(service, wav)[0]


def record_id_of(url: str) -> str:
    """The record's id in a download link."""
    return url.split("id=", 1)[1].split("&", 1)[0]


def fetch(url: str, target: Path) -> None:
    subprocess.run(["curl", "-sSf", "-o", str(target), url], check=True)


def fetch_to_null(url: str, times: int = 1) -> None:
    """GET ``url`` ``times`` times in a row on one kept-alive connection (one curl), bodies discarded."""
    subprocess.run(["curl", "-sSf", *["-o", "/dev/null"] * times, *[url] * times], check=True)


def post_json(url: str, body: dict[str, str]) -> dict[str, dict[str, object]]:
    output = subprocess.run(
        ["curl", "-sSf", "-X", "POST", "-H", "Content-Type: application/json", "-d", json.dumps(body), url],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return json.loads(output)  # type: ignore[no-any-return]


def content_length(url: str) -> int:
    """The Content-Length a HEAD of ``url`` answers."""
    output = subprocess.run(["curl", "-sSfI", url], check=True, capture_output=True, text=True).stdout
    found = re.search(r"(?im)^content-length:\s*(\d+)", output)
    assert found is not None, output
    return int(found.group(1))


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


def percentile(values: list[float], point: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(point / 100 * (len(ordered) - 1)))] if ordered else float("nan")


# --- what the processes use ----------------------------------------------------------------------


class ChildPeak:
    """The largest VmHWM seen among the server's child processes (FFmpeg) while active."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        # Set to end the watch; cleared before its thread starts, so no set() is missed.
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
        while not self._stop.wait(0.05):
            for child in children_of(self.pid):
                with suppress(OSError):  # it ended meanwhile
                    self.peak_kib = max(self.peak_kib, vm_hwm_kib(child))


Result = TypeVar("Result")


def peak_growth_kib(pid: int, action: Callable[[], Result], over_kib: int | None = None) -> tuple[int, Result]:
    """How far the process's resident memory rose while ``action`` ran (KiB), above
    ``over_kib`` or else above where it was just before, and what ``action`` answered:
    its high-water mark is reset first (/proc/PID/clear_refs, Linux 4.0), so earlier
    peaks do not hide this one."""
    reset_high_water_mark(pid)
    before = vm_rss_kib(pid) if over_kib is None else over_kib
    result = action()
    return vm_hwm_kib(pid) - before, result


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes have used."""
    total = 0.0
    for pid in pids:
        with suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def children_cpu(pid: int) -> float:
    """CPU seconds (user + system) of the process's children that it has waited for: the service's FFmpegs."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / CLOCK_TICKS


def idle_cpu() -> float:
    """Core-seconds this machine's cores have spent idle (or waiting for a disk) since it started."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[4]) + int(fields[5])) / CLOCK_TICKS


def own_children_cpu() -> float:
    """CPU seconds of this process's children that it has waited for (raw FFmpeg, curl)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def postgres_cpu(postmaster: int) -> float:
    """CPU seconds used by the bench's cluster: its postmaster, the children it has reaped
    (backends that ended) and those still running. Not every `postgres` process on the
    machine: a test suite's clusters beside the bench took more than the bench's own."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                    children.append(int(entry.name))
    return process_cpu([postmaster]) + children_cpu(postmaster) + process_cpu(children)


@dataclass(frozen=True)
class CpuUse:
    """Core-seconds, by who used them: the service's FFmpegs, the service, PostgreSQL, nobody."""

    encoders: float
    service: float
    postgres: float
    idle: float
    raw: float = 0.0  # the raw FFmpeg's of the same round
    wall: float = 0.0  # the upload's

    @classmethod
    def now(cls, service: Service) -> CpuUse:
        return cls(children_cpu(service.pid), process_cpu([service.pid]), postgres_cpu(service.postmaster), idle_cpu())

    def minus(self, before: CpuUse, raw: float, wall: float) -> CpuUse:
        return CpuUse(
            self.encoders - before.encoders,
            self.service - before.service,
            self.postgres - before.postgres,
            self.idle - before.idle,
            raw,
            wall,
        )

    @property
    def others(self) -> float:
        """The client (curl), this bench, the machine's other tenants."""
        return max(0.0, self.wall * CORES - self.encoders - self.service - self.postgres - self.idle)
