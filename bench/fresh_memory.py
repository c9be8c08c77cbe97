"""One upload to a service just started, for services of several checkouts side by side.

    .venv/bin/python -m bench.fresh_memory WAV TREE [TREE ...] [--rounds N] [--db-delay-ms MS]

The uploads part of scripts/bench measures the 60-minute upload's memory after the
shorter uploads of its round, in a service that has already grown to what uploads
need. This measures what an upload costs a service that has served nothing yet: for
each TREE (a checkout of this project with its .venv, `git worktree add` of a commit,
say) app.py is started on one private cluster (scripts/local-postgres), reached through
tests/support.py's DelayingProxy with --db-delay-ms, and sent the WAV once with
`curl -T`, as docs/api.md shows; then stopped. The trees take turns, a fresh service
each a round. Prints, per tree, the medians of the upload's time (its start to its 201)
and of the service's peak memory growth over it (VmHWM over its RSS before).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.harness import at_distance, bench_database, new_user, side_by_side_arguments, timed_upload_to
from bench.page_patches import started
from tests.support import vm_hwm_kib, vm_rss_kib


def main() -> None:
    args = side_by_side_arguments(__doc__)
    seen: list[list[tuple[float, float]]] = [[] for _ in args.trees]
    with bench_database() as local, at_distance(local, args.db_delay_ms) as database:
        for _ in range(args.rounds):
            for tree, results in zip(args.trees, seen, strict=True):
                process, port = started(tree, database.service_url)
                try:
                    results.append(uploaded_once(process.pid, port, args.wav))
                finally:
                    process.terminate()
                    process.wait(30)
    print(f"{args.wav.stat().st_size / 1e6:.0f} MB WAV, one upload to a fresh service, "
          f"the database {args.db_delay_ms:g} ms away, medians:")  # fmt: skip
    for tree, results in zip(args.trees, seen, strict=True):
        took = [each[0] for each in results]
        growth = [each[1] for each in results]
        each_growth = ", ".join(f"{g:.1f}" for g in growth)
        print(f"{tree}: upload {statistics.median(took):.1f} s; "
              f"peak RSS growth {statistics.median(growth):.1f} MiB ({each_growth})")  # fmt: skip


def uploaded_once(pid: int, port: int, wav: Path) -> tuple[float, float]:
    """The upload's seconds, and the service's peak RSS growth over it, MiB."""
    base = f"http://127.0.0.1:{port}"
    user = new_user(base)
    before = vm_rss_kib(pid)
    took, _ = timed_upload_to(base, user, wav)
    return took, (vm_hwm_kib(pid) - before) / 1024


if __name__ == "__main__":
    main()
