"""What PostgreSQL spends storing an MP3 as a large object, by the compression it tries.

    .venv/bin/python -m bench.toast_compression [--minutes N] [--rounds R]

Each 2 KB page of a large object is a row just past the size at which PostgreSQL
tries to compress one, and MP3 bytes do not compress: every page is an attempt
that fails. db/apply.py sets ``default_toast_compression = lz4`` on the database
where the server has lz4; this shows what that saves.

A private cluster with the schema applied. An N-minute MP3 (default 10) of the
bench's tone and noise, encoded by FFmpeg at 192 kb/s, is stored R times (default
5) each way, alternating: as the service stores one (api.record_begin, then
api.record_append 256 KiB at a time, api.record_finish with its SHA-256), on a
connection of the service's role whose session sets the compression. Printed
per way, medians: the backend's CPU (/proc) and the wall time, per 100 MB.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from tests.support import FFMPEG

from .harness import TONE_AND_NOISE, bench_database, process_cpu

CHUNK = 256 << 10  # what the service appends at a time, at most (handlers/store.py)
METHODS = ("pglz", "lz4")


def store_once(service_url: str, user: tuple[int, str], mp3: bytes, method: str) -> tuple[float, float]:
    """The backend's CPU seconds and the wall seconds to store ``mp3`` as a record, then deletes it."""
    with psycopg.connect(service_url, autocommit=True) as connection:
        connection.execute(f"SET default_toast_compression = {method}")
        backend = connection.execute("SELECT pg_backend_pid()").fetchone()
        assert backend is not None
        cpu_before, started = process_cpu([backend[0]]), time.perf_counter()
        with connection.transaction():
            begun = connection.execute("SELECT api.record_begin(%s, %s, 'bench.wav')", user).fetchone()
            assert begun is not None
            for at in range(0, len(mp3), CHUNK):
                connection.execute("SELECT api.record_append(%s, %s)", [begun[0], mp3[at : at + CHUNK]])
            finish = "SELECT * FROM api.record_finish(%s, 600, 192000, 44100, 2, %s)"
            connection.execute(finish, [begun[0], hashlib.sha256(mp3).digest()])
        spent = process_cpu([backend[0]]) - cpu_before, time.perf_counter() - started
        connection.execute("SELECT api.record_delete(%s, %s, %s)", [*user, begun[0]])
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, bench_database() as database:
        mp3_file = Path(folder, "bench.mp3")
        source = TONE_AND_NOISE.format(seconds=options.minutes * 60)
        subprocess.run(
            [FFMPEG, "-loglevel", "error", "-f", "lavfi", "-i", source, "-ar", "44100", "-c:a", "libmp3lame",
             "-b:a", "192k", str(mp3_file)],
            check=True,
        )  # fmt: skip
        mp3 = mp3_file.read_bytes()
        with psycopg.connect(database.service_url, autocommit=True) as connection:
            created = connection.execute("SELECT id, token FROM api.user_create('bench')").fetchone()
            assert created is not None
        user = (int(created[0]), str(created[1]))
        spent: dict[str, list[tuple[float, float]]] = {method: [] for method in METHODS}
        for _ in range(options.rounds):
            for method in METHODS:
                spent[method].append(store_once(database.service_url, user, mp3, method))
    per_100_mb = 100e6 / len(mp3)
    print(f"An MP3 of {len(mp3) / 1e6:.1f} MB stored {options.rounds} times each way; medians, per 100 MB:")
    print("compression   backend CPU   wall")
    for method, figures in spent.items():
        cpu = statistics.median(f[0] for f in figures) * per_100_mb
        wall = statistics.median(f[1] for f in figures) * per_100_mb
        print(f"{method:<13} {cpu:>9.3f} s {wall:>6.3f} s")


if __name__ == "__main__":
    main()
