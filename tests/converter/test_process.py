"""FFmpeg as the service starts it (converter/process.py): bounded and with wide pipes
before it reads a byte of an upload, and still a plain child that encodes what it is sent."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import resource
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from converter.process import FFMPEG_MEMORY_LIMIT, PIPE_BUFFER, end_input, reap, spawn, write
from tests.support import FFMPEG, children_of, decoded

# One second of 8 kHz mono silence in, MP3 out: any FFmpeg the service starts.
COMMAND = [FFMPEG, "-nostdin", "-loglevel", "error", "-f", "s16le", "-ar", "8000", "-ac", "1", "-i", "pipe:0"]
COMMAND += ["-c:a", "libmp3lame", "-f", "mp3", "pipe:1"]


def address_space_limits(pid: int) -> tuple[str, str]:
    with open(f"/proc/{pid}/limits") as limits:
        line = next(line for line in limits if line.startswith("Max address space"))
    soft, hard = line.split()[3:5]
    return soft, hard  # bytes, or "unlimited"


def widest_pipe() -> int:
    """What a new pipe asked for PIPE_BUFFER gets here: that, or its default size where the
    kernel allows less (/proc/sys/fs/pipe-max-size) and we may not go beyond it."""
    ends = os.pipe()
    try:
        with contextlib.suppress(OSError):
            fcntl.fcntl(ends[0], fcntl.F_SETPIPE_SZ, PIPE_BUFFER)
        return fcntl.fcntl(ends[0], fcntl.F_GETPIPE_SZ)
    finally:
        for end in ends:
            os.close(end)


def pipe_size(pid: int, descriptor: int) -> int:
    # The child's end, opened anew: the same pipe, whose size both ends share.
    opened = os.open(f"/proc/{pid}/fd/{descriptor}", os.O_RDONLY | os.O_NONBLOCK)
    try:
        return fcntl.fcntl(opened, fcntl.F_GETPIPE_SZ)
    finally:
        os.close(opened)


async def test_ffmpeg_starts_with_its_memory_bounded_and_wide_pipes() -> None:
    process = await spawn(COMMAND)
    try:
        assert address_space_limits(process.pid) == (str(FFMPEG_MEMORY_LIMIT),) * 2
        assert pipe_size(process.pid, 0) == widest_pipe()
        assert pipe_size(process.pid, 1) == widest_pipe()
    finally:
        await reap(process)


async def test_a_confined_ffmpeg_encodes_what_it_is_sent() -> None:
    process = await spawn(COMMAND)
    try:
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(bytes(16000))
        process.stdin.close()
        mp3 = await process.stdout.read()
        assert await process.wait() == 0
    finally:
        await reap(process)
    assert len(decoded(mp3, channels=1)) >= 8000  # the second, and the frame that pads it


async def test_samples_ffmpeg_has_no_room_for_wait_in_one_place_not_in_a_second_copy() -> None:
    """write() returns once its chunk is all in FFmpeg's pipe: what does not fit yet stays the
    caller's (converter/segments.py's bounded queue). asyncio's transport took up to 1 MiB more
    beside the pipe, a copy of each encoder's samples in memory, and write() returned at once."""
    process = await spawn(COMMAND)
    assert process.stdin is not None
    try:
        os.kill(process.pid, signal.SIGSTOP)  # it takes nothing while the pipe fills
        writing = asyncio.ensure_future(write(process.stdin, bytes(widest_pipe() + 4096)))
        for _ in range(10):
            await asyncio.sleep(0)  # turns of the loop: the write is as far as it gets
        assert not writing.done()
        os.kill(process.pid, signal.SIGCONT)
        async with asyncio.timeout(20):
            assert await writing
    finally:
        await reap(process)


async def test_an_ffmpeg_that_cannot_be_confined_is_killed_and_reaped(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*args: object) -> None:
        raise PermissionError(errno.EPERM, "prlimit refused")

    monkeypatch.setattr(resource, "prlimit", refused)
    ours = set(children_of(os.getpid()))
    with pytest.raises(PermissionError):
        await spawn(COMMAND)
    assert set(children_of(os.getpid())) <= ours  # killed and reaped (a zombie is still a child)


async def test_an_input_whose_closing_is_given_up_breaks_with_ffmpeg_and_logs_nothing() -> None:
    """A conversion that fails cancels its writer, which may be waiting in end_input for
    FFmpeg's stdin to close with samples still buffered; reap() then kills FFmpeg and the pipe
    breaks. asyncio set that broken pipe on the close's future, cancelled with the writer,
    and logged an ERROR traceback (InvalidStateError) for the conversion (helper-38)."""
    failures: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: failures.append(context))
    process = await spawn(COMMAND)
    assert process.stdin is not None
    try:
        os.kill(process.pid, signal.SIGSTOP)  # it reads no more: what its pipe cannot hold stays with us
        process.stdin.write(bytes(3 * PIPE_BUFFER))
        closing = asyncio.ensure_future(end_input(process.stdin))
        await asyncio.sleep(0)  # it waits for the buffered samples to go
        assert not closing.done()
        closing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await closing
    finally:
        await reap(process)
    assert failures == []


def ended(pid: int) -> bool:
    """The child has ended and waits to be collected (not collected here: WNOWAIT)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def move_every_thread(pid: int, cpus: list[int]) -> None:
    """Each of the process's threads onto ``cpus`` (a thread started later takes its
    starter's); twice over, for one started while the first pass went."""
    for _ in range(2):
        for thread in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.sched_setaffinity(int(thread), cpus)


@contextlib.contextmanager
def ahead_of_other_threads_on(cpu: int) -> Iterator[None]:
    """This thread on ``cpu`` alone, ahead of every other thread there (SCHED_FIFO): they run
    only while it waits. The threads and processes it starts meanwhile are pinned there too,
    as ordinary ones (SCHED_RESET_ON_FORK), so none of them outlives the block ahead of others."""
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(1))
    except PermissionError:
        os.sched_setaffinity(0, cpus)
        pytest.skip("needs CAP_SYS_NICE, to keep asyncio's child watcher from running")
    try:
        yield
    finally:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        os.sched_setaffinity(0, cpus)


async def test_an_ffmpeg_reaped_as_it_ends_is_left_for_asyncio_to_collect(caplog: pytest.LogCaptureFixture) -> None:
    """reap() may come as FFmpeg ends: a cancelled upload whose last checkpoint stores nothing
    reaps its encoder as soon as its output has been read to the end. Collected there (waitpid,
    as process.kill() did: Popen polls before it signals) before asyncio's child watcher thread
    could collect it, the watcher logged "Unknown child process pid N, will report returncode
    255" and 255 became its returncode (helper-48). Here FFmpeg is killed from outside and
    reaped once it has ended, the watcher's thread kept from running until then (FFmpeg's
    threads, if it has more than one, moved to another CPU: it ends only once they all have)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("FFmpeg needs a CPU of its own to end on")
    returncodes = []
    with caplog.at_level(logging.WARNING, logger="asyncio"), ahead_of_other_threads_on(cpus[0]):
        for _ in range(3):
            process = await spawn(COMMAND)  # its watcher thread starts on cpus[0]
            move_every_thread(process.pid, cpus[1:])
            os.kill(process.pid, signal.SIGKILL)
            given_up_at = time.monotonic() + 10  # a deadline, though SIGKILL ends it at once
            while not ended(process.pid):  # no await, no wait: the watcher has no CPU
                assert time.monotonic() < given_up_at, "FFmpeg did not end within 10 s of SIGKILL"
            await reap(process)
            returncodes.append(process.returncode)
    assert [record.getMessage() for record in caplog.records] == []
    assert returncodes == [-signal.SIGKILL] * 3
