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
