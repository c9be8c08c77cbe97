"""What a resumable upload sent in short PATCHes costs the service: WAL, CPU and time.

    .venv/bin/python -m bench.short_patches [--minutes N] [--bytes B ...]

tus clients choose how much a PATCH carries: tuspy and tus-js-client send the
whole file by default, TUSKit (iOS) 500 KB, and a hostile client may send a
byte. Each PATCH too short to be worth converting keeps its bytes as they were
sent (while the upload's unconverted bytes come to 2 MiB at most with them:
db/private/app.upload_keeps_as_sent.sql); before that, each was converted, which
started an FFmpeg and rewrote the upload's pending bytes and measurement. Run it
in a worktree of an older commit for its figures.

A private cluster and one service (app.py as users run it). For each size B
(default: the whole WAV at once, 500 KB, and 1 byte), an upload of an N-minute
WAV (default 10) sent in PATCHes of B bytes on one connection, one after another
as TUSKit sends them. A size below 64 KiB is sent only for 50 PATCHes from the
WAV's middle (the rest at once on either side): a byte a PATCH would take hours.
Printed per size: the PATCHes of B bytes, and per PATCH the WAL PostgreSQL wrote
(pg_current_wal_lsn around them), the CPU of the service and of its FFmpegs
(/proc), and the wall time; then the whole upload's.
"""

from __future__ import annotations

import argparse
import http.client
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support import make_audio

from .harness import TONE_AND_NOISE, Service, bench_database, children_cpu, process_cpu, running_service

TUSKIT_BYTES = 500_000
FEW_BYTES = 64 << 10  # below this, only MEASURED_PATCHES are sent that small
MEASURED_PATCHES = 50


@dataclass
class Cost:
    patches: int = 0
    wal_bytes: float = 0.0
    service_cpu_s: float = 0.0
    ffmpeg_cpu_s: float = 0.0
    wall_s: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.patches + other.patches,
            self.wal_bytes + other.wal_bytes,
            self.service_cpu_s + other.service_cpu_s,
            self.ffmpeg_cpu_s + other.ffmpeg_cpu_s,
            self.wall_s + other.wall_s,
        )


class Uploader:
    """One tus upload on one kept-alive connection, PATCH after PATCH."""

    def __init__(self, service: Service, wav: bytes) -> None:
        self.service = service
        self.wav = wav
        self.connection = http.client.HTTPConnection(service.host, service.port, timeout=600)
        self.auth = {"Authorization": f"Basic {service.basic}", "Tus-Resumable": "1.0.0"}
        self.connection.request("POST", "/uploads", headers=self.auth | {"Upload-Length": str(len(wav))})
        response = self.connection.getresponse()
        response.read()
        assert response.status == 201, response.status
        self.path = "/" + response.headers["Location"].split("/", 3)[3]
        self.offset = 0

    def send(self, size: int, count: int | None = None) -> Cost:
        """PATCHes of ``size`` bytes (``count`` of them, or up to the WAV's end), and what they cost."""
        before = self._usage()
        patches = 0
        while self.offset < len(self.wav) and (count is None or patches < count):
            self._patch(self.wav[self.offset : self.offset + size])
            patches += 1
        after = self._usage()
        return Cost(patches, *(b - a for a, b in zip(before, after, strict=True)))

    def _patch(self, body: bytes) -> None:
        headers = self.auth | {"Content-Type": "application/offset+octet-stream", "Upload-Offset": str(self.offset)}
        self.connection.request("PATCH", self.path, body=body, headers=headers)
        response = self.connection.getresponse()
        response.read()
        assert response.status == 204, (response.status, response.headers)
        self.offset = int(response.headers["Upload-Offset"])

    def _usage(self) -> tuple[float, float, float, float]:
        return (
            wal_lsn(self.service),
            process_cpu([self.service.pid]),
            children_cpu(self.service.pid),
            time.perf_counter(),
        )


def wal_lsn(service: Service) -> float:
    """Bytes of WAL PostgreSQL has written since its cluster began."""
    query = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')"
    output = subprocess.run(["psql", service.owner_url, "-Atc", query], check=True, capture_output=True, text=True)
    return float(output.stdout)


def uploaded(service: Service, wav: bytes, size: int) -> tuple[Cost, Cost]:
    """The PATCHes of ``size`` bytes, and the whole upload."""
    uploader = Uploader(service, wav)
    if size >= FEW_BYTES:
        measured = uploader.send(size)
        return measured, measured
    before = uploader.send(len(wav) // 2, 1)
    measured = uploader.send(size, MEASURED_PATCHES)
    after = uploader.send(len(wav))
    return measured, before + measured + after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--bytes", type=int, nargs="*", default=[0, TUSKIT_BYTES, 1], help="0: the whole WAV")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="short-patches-") as scratch:
        folder = Path(scratch)
        wav = make_audio(folder / "take.wav", TONE_AND_NOISE.format(seconds=arguments.minutes * 60)).read_bytes()
        with bench_database() as database, running_service(database, folder) as service:
            print(f"{arguments.minutes:g} minutes, {len(wav):,} bytes of WAV")
            print("PATCH bytes | PATCHes | per PATCH: WAL KiB, service CPU ms, FFmpeg CPU ms, wall ms")
            print("            |         | the whole upload: WAL MiB, service CPU s, FFmpeg CPU s, wall s")
            for size in arguments.bytes:
                part, whole = uploaded(service, wav, size or len(wav))
                print(f"{size or len(wav):>11,} | {part.patches:>7} | {per_patch(part)} | {totals(whole)}")


def per_patch(cost: Cost) -> str:
    each = (cost.wal_bytes / 1024, cost.service_cpu_s * 1000, cost.ffmpeg_cpu_s * 1000, cost.wall_s * 1000)
    return " ".join(f"{value / cost.patches:8.1f}" for value in each)


def totals(cost: Cost) -> str:
    each = (cost.wal_bytes / 2**20, cost.service_cpu_s, cost.ffmpeg_cpu_s, cost.wall_s)
    return " ".join(f"{value:8.2f}" for value in each)


if __name__ == "__main__":
    main()
