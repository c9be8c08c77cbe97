"""Cached files into their clients' sockets by the kernel's sendfile, on a thread of its own.

The copy is the whole cost of a repeat download, and on the event loop's thread it
is time nothing else gets: the loop's own sendfile copies as much as a socket takes
in one call (megabytes on a fast link, for every client at once), and even in 64 KiB
slices 30 downloads took 57 % of the loop and held /health 60 ms. Here one thread
watches every socket being sent to and gives each, whenever it can take more, one
slice (SLICE_BYTES) per round. sendfile and the wait release the GIL, so the loop runs
on meanwhile; one thread, however many clients (a player streaming a long MP3 holds
its download for as long as it plays).

The thread owns the descriptors it sends with (duplicates, closed by it): a download
that ends early (its client gone, or cut off) only asks it to drop the job, and a
file closed or evicted meanwhile is still read to the end of what was asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import selectors
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

log = logging.getLogger("mp3.file_sender")

SLICE_BYTES = 1 << 20  # per socket per round: fair among clients, few rounds per file
STOP_TIMEOUT_S = 5.0


@dataclass(eq=False)
class Sending:
    """One file's bytes [offset, stop) on their way; ``done`` is set on the event loop."""

    socket_fd: int
    file_fd: int
    offset: int
    stop: int
    loop: asyncio.AbstractEventLoop
    # Set once, on the loop's thread: when the last byte is in the socket, or with the failure.
    done: asyncio.Future[None] = field(init=False)

    def __post_init__(self) -> None:
        self.done = self.loop.create_future()


class FileSender:
    """Start it before the first ``send``; ``close`` at exit."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        # Jobs to start (a Sending) or to drop (("drop", Sending)), for the thread to take
        # after each wake-up: what is put before a write to the pipe is seen after it.
        self._requests: queue.SimpleQueue[Sending | tuple[str, Sending]] = queue.SimpleQueue()
        self._stopping = False
        self.failed = False  # the thread ended on a bug: send refuses, its callers copy instead
        # Held while send checks ``failed`` and queues, and while the failing thread sets it: a
        # job is either refused or queued before the thread empties the queue for the last time.
        self._failing = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="file-sender", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def send(self, socket_fd: int, file_fd: int, start: int, stop: int) -> Sending:
        """Send [start, stop) of the file into the socket (both descriptors stay the caller's);
        NotImplementedError once the thread has failed."""
        with self._failing:
            if self.failed:
                raise NotImplementedError("the file-sending thread has failed")
            sending = Sending(os.dup(socket_fd), os.dup(file_fd), start, stop, asyncio.get_running_loop())
            self._requests.put(sending)
        self._wake()
        return sending

    def drop(self, sending: Sending) -> None:
        """Stop sending it (its client went, or stopped reading): nothing more is written."""
        self._request(("drop", sending))

    def close(self) -> None:
        self._stopping = True
        self._wake()
        self._thread.join(STOP_TIMEOUT_S)
        if not self._thread.is_alive():
            self._selector.close()
            os.close(self._wake_read)
            os.close(self._wake_write)

    def _request(self, request: Sending | tuple[str, Sending]) -> None:
        self._requests.put(request)
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a wake-up is pending already
            os.write(self._wake_write, b"!")

    # --- the thread --------------------------------------------------------------------

    def _run(self) -> None:
        ending: BaseException = ConnectionAbortedError("the service is stopping")
        try:
            while not self._stopping:
                self._round()
        except Exception as error:  # a bug outside any one job's: said, and no download waits on it
            with self._failing:
                self.failed = True
            ending = error
            log.critical("the file-sending thread failed: cached downloads go out on the event loop", exc_info=True)
        for key in list(self._selector.get_map().values()):
            if key.fileobj != self._wake_read:
                self._finish(key.data, ending)
        # Jobs not yet taken sent nothing: refused as send refuses, their callers copy instead.
        self._refuse_waiting(NotImplementedError("the file-sending thread has ended"))

    def _round(self) -> None:
        """One wait, and a slice to each socket that can take one."""
        for key, _ in self._selector.select():
            if key.fileobj == self._wake_read:
                self._take_requests()
                continue
            # A job dropped earlier in this round (its wake-up came first) is finished, its
            # descriptors closed and perhaps already another job's: its event is stale.
            if self._selector.get_map().get(key.fd) is not key:
                continue
            try:
                self._send_slice(key.data)
            except Exception as error:  # a bug: that download fails, the others go on
                log.exception("sending a cached file failed")
                self._finish(key.data, error)

    def _take_requests(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_read, 4096):
                pass
        for request in self._queued():
            if isinstance(request, Sending):
                self._selector.register(request.socket_fd, selectors.EVENT_WRITE, request)
            else:
                self._finish(request[1], ConnectionAbortedError("dropped"))

    def _refuse_waiting(self, failure: BaseException) -> None:
        for request in self._queued():
            if isinstance(request, Sending):
                _close_and_settle(request, failure)

    def _queued(self) -> Iterator[Sending | tuple[str, Sending]]:
        """The requests queued so far, taken in order."""
        while True:
            try:
                yield self._requests.get_nowait()
            except queue.Empty:
                return

    def _send_slice(self, sending: Sending) -> None:
        try:
            sent = os.sendfile(
                sending.socket_fd, sending.file_fd, sending.offset, min(SLICE_BYTES, sending.stop - sending.offset)
            )
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._finish(sending, error)
            return
        if sent == 0:
            self._finish(sending, EOFError("the file ended before the bytes to send did"))
            return
        sending.offset += sent
        if sending.offset >= sending.stop:
            self._finish(sending, None)

    def _finish(self, sending: Sending, failure: BaseException | None) -> None:
        key = self._selector.get_map().get(sending.socket_fd)
        if key is None or key.data is not sending:  # finished already: its descriptors are closed
            return
        self._selector.unregister(sending.socket_fd)
        _close_and_settle(sending, failure)


def _close_and_settle(sending: Sending, failure: BaseException | None) -> None:
    """The job's descriptors closed, and its ``done`` settled on its loop."""
    os.close(sending.socket_fd)
    os.close(sending.file_fd)
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        sending.loop.call_soon_threadsafe(_settle, sending.done, failure)


def _settle(done: asyncio.Future[None], failure: BaseException | None) -> None:
    if done.done():  # cancelled: its download ended first
        return
    if failure is None:
        done.set_result(None)
    else:
        done.set_exception(failure)
