"""What starting an FFmpeg costs the service, as converter/process.py's spawn() does it
(a vfork, then confined from our side) beside confining it in the child before exec
(``preexec_fn``, which makes Python fork the whole process instead).

    .venv/bin/python -m bench.spawn_cost [--mib N] [--count N]

This process first grows by N MiB (default 100, about a busy service's RSS) of
touched memory, since a fork copies page tables in proportion to it. Each way
then starts /bin/cat --count times (default 100), which waits on its stdin as
FFmpeg does, so that every start is confined while it runs; then closes its
stdin and waits for it. The ways alternate, each going first every other time.
Prints per start: this process's CPU, the child's CPU (the part a fork adds is
what FFmpeg would pay too; the rest is cat's exec and run, not FFmpeg's), and
the longest one start took (the await of spawn(), most of it the loop held in
fork or vfork until the child's exec).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import resource
import time
from collections.abc import Awaitable, Callable

from converter.process import FFMPEG_MEMORY_LIMIT, PIPE_BUFFER, spawn

Start = Callable[[list[str]], Awaitable[asyncio.subprocess.Process]]


def confine_in_child() -> None:
    """The same confinement, run in the child between fork and exec."""
    resource.setrlimit(resource.RLIMIT_AS, (FFMPEG_MEMORY_LIMIT, FFMPEG_MEMORY_LIMIT))
    for descriptor in (0, 1):
        with contextlib.suppress(OSError):
            fcntl.fcntl(descriptor, fcntl.F_SETPIPE_SZ, PIPE_BUFFER)


async def spawn_with_preexec(command: list[str]) -> asyncio.subprocess.Process:
    pipe = asyncio.subprocess.PIPE
    return await asyncio.create_subprocess_exec(
        *command, stdin=pipe, stdout=pipe, stderr=pipe, preexec_fn=confine_in_child, limit=PIPE_BUFFER
    )


class Cost:
    def __init__(self) -> None:
        self.own_s = self.child_s = self.longest_s = 0.0
        self.starts = 0

    async def measure(self, start: Start) -> None:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        began = time.perf_counter()
        process = await start(["/bin/cat"])
        self.longest_s = max(self.longest_s, time.perf_counter() - began)
        assert process.stdin is not None
        process.stdin.close()
        await process.wait()
        self.own_s += cpu(resource.getrusage(resource.RUSAGE_SELF)) - cpu(own)
        self.child_s += cpu(resource.getrusage(resource.RUSAGE_CHILDREN)) - cpu(children)
        self.starts += 1

    def __str__(self) -> str:
        per = 1000 / self.starts
        return f"{self.own_s * per:.2f} ms | {self.child_s * per:.2f} ms | {self.longest_s * 1000:.2f} ms"


def cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


async def compare(count: int) -> dict[str, Cost]:
    ways: dict[str, Start] = {"spawn() (vfork, confined from our side)": spawn, "preexec_fn (fork)": spawn_with_preexec}
    costs = {name: Cost() for name in ways}
    for start in ways.values():  # warm up: imports, the child watcher
        await (await start(["/bin/true"])).wait()
    order = list(ways.items())
    for _ in range(count):
        for name, start in order:
            await costs[name].measure(start)
        order.reverse()  # a fork leaves our pages copy-on-write for whichever start comes next
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=100, help="memory this process holds meanwhile")
    parser.add_argument("--count", type=int, default=100, help="starts of each way")
    args = parser.parse_args()
    ballast = [bytearray(b"x") * (1 << 20) for _ in range(args.mib)]  # touched: resident
    costs = asyncio.run(compare(args.count))
    print(f"{args.count} starts each, this process holding {len(ballast)} MiB more:\n")
    print("| way | our CPU per start | the child's CPU per start | one start, longest |")
    print("| --- | --- | --- | --- |")
    for name, cost in costs.items():
        print(f"| {name} | {cost} |")


if __name__ == "__main__":
    main()
