"""FFmpeg as a child process: started confined, written to until it stops reading,
its stderr's tail kept, and always reaped. The one-encoder pipeline and the
segmented conversion (converter/segments.py) both run FFmpeg this way.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import resource
import signal

PIPE_READ = 256 * 1024
PIPE_BUFFER = 1024 * 1024  # FFmpeg's pipes
FFMPEG_MEMORY_LIMIT = 1 << 30  # address space; decoding PCM to MP3 needs a few tens of MiB
STDERR_KEPT = 4096
STDERR_READ = 4096


async def spawn(command: list[str]) -> asyncio.subprocess.Process:
    """FFmpeg with pipes on all three streams, confined (see confine) before it is handed a byte."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.subprocess_exec(
        # FFmpeg's output is read into memory until PIPE_READ x 2 wait there (asyncio's
        # StreamReader pauses at twice its limit); the rest waits in the pipe, not in us.
        lambda: asyncio.subprocess.SubprocessStreamProtocol(limit=PIPE_READ, loop=loop),
        *command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    process = asyncio.subprocess.Process(transport, protocol, loop)
    try:
        confine(transport)
    except Exception:
        await reap(process)  # no FFmpeg is left running unconfined
        raise
    assert process.stdin is not None
    # write() waits until its chunk is all in the pipe: samples wait in our queue
    # (converter/segments.py), bounded there, not in a second copy in the transport.
    process.stdin.transport.set_write_buffer_limits(high=0)
    return process


async def write(stdin: asyncio.StreamWriter, chunk: bytes) -> bool:
    """Hand FFmpeg one chunk; False when it no longer reads."""
    try:
        stdin.write(chunk)
        await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


async def end_input(stdin: asyncio.StreamWriter) -> None:
    """Close FFmpeg's stdin (its end of input: it flushes and exits), whether or not it still reads."""
    stdin.close()
    # Shielded: wait_closed() awaits asyncio's own future for the pipe's end, and a cancelled
    # writer (a failed conversion) would cancel that future with it; the pipe breaking later
    # (reap) then fails to set it, and asyncio logs an ERROR traceback.
    await asyncio.shield(_closed(stdin))


async def _closed(stdin: asyncio.StreamWriter) -> None:
    """The pipe's end, however it came: whoever stopped waiting for it, nothing is left to log."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        await stdin.wait_closed()


async def keep_tail(process: asyncio.subprocess.Process, kept: bytearray) -> None:
    assert process.stderr is not None
    while chunk := await process.stderr.read(STDERR_READ):
        kept += chunk
        del kept[:-STDERR_KEPT]


async def reap(process: asyncio.subprocess.Process) -> None:
    """Kill FFmpeg if it still runs and wait for it, so no zombie or open pipe is left."""
    if process.returncode is None and _running(process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
    if process.stdin is not None and not process.stdin.is_closing():
        process.stdin.close()
    # wait() returns once every pipe has seen its end too: what is left of the output
    # (nobody wants it now) is read, or a pipe whose reading is paused, its reader full (an
    # encoder held back, converter/segments.py), never sees its end and wait() never returns.
    for output in (process.stdout, process.stderr):
        if output is not None:
            with contextlib.suppress(OSError):
                while await output.read(PIPE_READ):
                    pass
    await process.wait()


def _running(pid: int) -> bool:
    """FFmpeg has not ended yet: asked without collecting it, which is asyncio's child watcher's
    alone. (process.kill() would: Popen.send_signal() polls first, and collects an FFmpeg that
    has just ended, as one does whose output was read to its end, before the watcher's thread
    could; that thread then logs "Unknown child process pid N, will report returncode 255",
    and 255 becomes its returncode.) Ended or not, it is ours until the watcher collects it:
    its pid cannot have gone to another process."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:  # collected already: its returncode is on its way to the loop
        return False


def confine(transport: asyncio.SubprocessTransport) -> None:
    """Bound FFmpeg's memory, and widen its pipes.

    Done from here once it runs, not in the child before exec (``preexec_fn``):
    that forces a fork of this whole process where a vfork does, ~3 ms of our CPU
    and of the event loop's time per FFmpeg, more as our memory grows. FFmpeg
    reads no input before we write it its first byte, after this.

    With the kernel's default 64 KiB pipes FFmpeg stalls whenever our event
    loop is busy for a moment (a database round trip, another request); 1 MiB
    pipes let it keep encoding meanwhile."""
    with contextlib.suppress(ProcessLookupError):  # already gone: nothing left to bound
        resource.prlimit(transport.get_pid(), resource.RLIMIT_AS, (FFMPEG_MEMORY_LIMIT, FFMPEG_MEMORY_LIMIT))
    for descriptor in (0, 1):
        pipe = transport.get_pipe_transport(descriptor)
        if pipe is None or pipe.is_closing():
            continue
        with contextlib.suppress(OSError):  # beyond /proc/sys/fs/pipe-max-size: keep the default
            fcntl.fcntl(pipe.get_extra_info("pipe").fileno(), fcntl.F_SETPIPE_SZ, PIPE_BUFFER)
