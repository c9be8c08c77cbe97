"""The thread that sends cached files (service/file_sender.py), driven round by round."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from pathlib import Path

import pytest

from service.file_sender import FileSender


def fill(ours: socket.socket) -> None:
    """Write into the socket until it takes no more: a client that is not reading."""
    ours.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            ours.send(b"\0" * 65536)


def drain(peer: socket.socket) -> None:
    """Read all that is waiting: the client reads again, and the socket can take more."""
    peer.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while peer.recv(1 << 20):
            pass


async def test_a_download_dropped_as_its_socket_turns_writable_ends_once_and_the_others_go_on(
    tmp_path: Path,
) -> None:
    """Clients that leave together: a drop and its socket's readiness in one round, the drop
    first. The stale event once sent on closed (or reused) descriptors and finished the job
    twice, which killed the thread: every later repeat download hung after its headers."""
    cached = tmp_path / "cached.mp3"
    cached.write_bytes(os.urandom(1 << 20))
    sender = FileSender()  # not started: this test runs its rounds
    left, left_peer = socket.socketpair()
    stays, stays_peer = socket.socketpair()
    with left, left_peer, stays, stays_peer, cached.open("rb") as file:
        fill(left)
        leaving = sender.send(left.fileno(), file.fileno(), 0, 1 << 20)
        sender._round()  # takes the job; its socket can take nothing yet
        sender.drop(leaving)  # the client went: the wake-up is ready first...
        drain(left_peer)  # ...and then its socket can take more
        sender._round()
        with pytest.raises(ConnectionAbortedError):
            await asyncio.wait_for(leaving.done, 5)

        staying = sender.send(stays.fileno(), file.fileno(), 0, 100)
        sender._round()  # takes the job
        sender._round()  # sends it
        await asyncio.wait_for(staying.done, 5)
        stays_peer.setblocking(True)
        assert stays_peer.recv(200) == cached.read_bytes()[:100]
    sender.start()
    sender.close()


async def test_a_sender_whose_thread_fails_ends_its_downloads_and_takes_no_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug outside any one download's (here its wait for sockets fails) ends the thread:
    the downloads it held fail at once rather than wait for SEND_TIMEOUT_S, and new ones are
    refused (NotImplementedError), which the download handler answers by copying instead."""
    cached = tmp_path / "cached.mp3"
    cached.write_bytes(b"x" * 100)
    sender = FileSender()
    ours, peer = socket.socketpair()
    with ours, peer, cached.open("rb") as file:
        fill(ours)  # the job waits for the client
        waiting = sender.send(ours.fileno(), file.fileno(), 0, 100)
        sender._round()  # takes it
        monkeypatch.setattr(sender._selector, "select", broken_select)
        queued = sender.send(ours.fileno(), file.fileno(), 0, 100)  # asked for as the thread fails
        sender.start()
        with pytest.raises(OSError, match="the selector broke"):
            await asyncio.wait_for(waiting.done, 5)
        with pytest.raises(NotImplementedError):  # it sent nothing: its caller copies instead
            await asyncio.wait_for(queued.done, 5)
        with pytest.raises(NotImplementedError):
            sender.send(ours.fileno(), file.fileno(), 0, 100)
    sender.close()
    assert "the file-sending thread failed" in caplog.text


def broken_select(timeout: float | None = None) -> list[object]:
    raise OSError("the selector broke")
