"""A WAV sent as the page sends it, to services of several checkouts side by side.

    .venv/bin/python -m bench.page_patches WAV TREE [TREE ...] [--rounds N] [--db-delay-ms MS]

handlers/static/page.js sends a file in tus PATCHes of 8 MiB, so its last PATCH
resumes an upload whose MP3 so far is in the database only. For each TREE (a
checkout of this project with its .venv, `git worktree add` of a commit, say)
app.py runs on one private cluster (scripts/local-postgres), reached through
tests/support.py's DelayingProxy with --db-delay-ms. The trees take turns, an
upload each a round. Prints, per tree, the medians of the last PATCH's time
(its request to its 204: what the page waits for the link once its bar is
full) and of the service's peak memory growth over the upload (VmHWM, reset
before it, over its RSS before).
"""

from __future__ import annotations

import base64
import http.client
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from bench.harness import at_distance, bench_database, new_user, side_by_side_arguments
from tests.support import free_port, reset_high_water_mark, vm_hwm_kib, vm_rss_kib, wait_until

PATCH_BYTES = 8 << 20  # page.js CHUNK_BYTES


def main() -> None:
    args = side_by_side_arguments(__doc__)
    data = args.wav.read_bytes()
    with bench_database() as local, at_distance(local, args.db_delay_ms) as database:
        services = [started(tree, database.service_url) for tree in args.trees]
        try:
            user = new_user(f"http://127.0.0.1:{services[0][1]}")
            seen: list[list[tuple[float, float]]] = [[] for _ in services]
            for _ in range(args.rounds):
                for (process, port), results in zip(services, seen, strict=True):
                    results.append(sent_as_the_page_sends_it(process.pid, port, user, data))
        finally:
            for process, _ in services:
                process.terminate()
                process.wait(30)
    patches = -(-len(data) // PATCH_BYTES)
    print(f"{len(data) / 1e6:.0f} MB WAV in {patches} PATCHes, the database {args.db_delay_ms:g} ms away, medians:")
    for tree, results in zip(args.trees, seen, strict=True):
        last = [each[0] * 1000 for each in results]
        growth = [each[1] for each in results]
        each_last, each_growth = ", ".join(f"{t:.0f}" for t in last), ", ".join(f"{g:.1f}" for g in growth)
        print(f"{tree}: last PATCH {statistics.median(last):.0f} ms ({each_last}); "
              f"peak RSS growth {statistics.median(growth):.1f} MiB ({each_growth})")  # fmt: skip


def started(tree: Path, database_url: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    log = (Path(tempfile.gettempdir()) / f"page-patches-{port}.log").open("wb")
    environment = {"DATABASE_URL": database_url, "PORT": str(port), "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen([tree / ".venv/bin/python", "app.py"], cwd=tree, env=environment, stdout=log, stderr=log)
    wait_until(lambda: healthy(port) or None, 60)
    return process, port


def healthy(port: int) -> bool:
    try:
        return request(port, "GET", "/health")[0] == 200
    except OSError:
        return False


def sent_as_the_page_sends_it(pid: int, port: int, user: tuple[int, str], data: bytes) -> tuple[float, float]:
    """The upload made, then sent in PATCHes of PATCH_BYTES: the last one's seconds, and the
    service's peak RSS growth over the upload, MiB."""
    auth = {"Authorization": "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()}
    tus = {**auth, "Tus-Resumable": "1.0.0"}
    status, headers = request(port, "POST", "/uploads", headers={**tus, "Upload-Length": str(len(data))})
    assert status == 201, status
    path = urlsplit(headers["Location"]).path
    reset_high_water_mark(pid)
    before = vm_rss_kib(pid)
    last = 0.0
    for at in range(0, len(data), PATCH_BYTES):
        piece = {**tus, "Upload-Offset": str(at), "Content-Type": "application/offset+octet-stream"}
        start = time.perf_counter()
        status, _ = request(port, "PATCH", path, data[at : at + PATCH_BYTES], piece)
        last = time.perf_counter() - start
        assert status == 204, status
    growth = (vm_hwm_kib(pid) - before) / 1024
    request(port, "DELETE", path, headers=tus)  # the upload's row; its record stays
    return last, growth


def request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        response.read()
        return response.status, dict(response.headers)
    finally:
        connection.close()


if __name__ == "__main__":
    main()
