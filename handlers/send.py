"""Sending a download's bytes to a client that may stop reading.

A write waits while the client's receive window is shut. A client that never
reads again would hold its connection, a chunk of our memory and the kernel's
socket buffers (megabytes on a fast link) for ever, so every SEND_TIMEOUT_S a
write waits, the client must have acknowledged MIN_TAKEN more bytes, or it is
cut off (ClientNotReading; handlers/errors.py resets the connection). Progress
is what the client acknowledged, as the kernel counts it (Linux's tcp_info),
not whether one write finished: the kernel wakes a writer only once a third
of its send buffer is free, which on a fast link is more than a slow reader
takes in a minute. Where tcp_info is not to be had, each slice must be taken
within SEND_TIMEOUT_S.

A cached file goes out by the kernel's sendfile on a thread of its own
(service/file_sender.py), watched from here the same way.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import sys
import termios
from collections.abc import Awaitable
from typing import BinaryIO

from aiohttp import web

from handlers.errors import ClientNotReading
from service.file_sender import Sending
from service.keys import FILE_SENDER, SETTINGS

# One write or sendfile call: the bound on each one's time in the event loop's thread.
SEND_SLICE = 256 * 1024
# What a client must take in each SEND_TIMEOUT_S: 64 KiB in the default 60 s is
# 9 kbit/s, far below the slowest MP3 a player streams.
MIN_TAKEN = 64 * 1024
# struct tcp_info (linux/tcp.h): tcpi_bytes_acked, a u64 at this offset (Linux 4.1+).
TCP_INFO = getattr(socket, "TCP_INFO", None)
BYTES_ACKED_AT = 120
TCP_INFO_SIZE = BYTES_ACKED_AT + 8
# Linux's ioctl for a socket's unacknowledged bytes: the terminal's TIOCOUTQ, by number.
SIOCOUTQ = getattr(termios, "TIOCOUTQ", None)


class Sender:
    """Writes one download's bytes, cutting its client off when it stops taking them."""

    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        self.request = request
        self.response = response
        self.timeout_s = request.app[SETTINGS].send_timeout_s
        transport = request.transport
        self._socket = transport.get_extra_info("socket") if transport is not None else None
        self._from_file: tuple[Sending, int] | None = None  # the file being sent, from where

    @property
    def file_bytes_sent(self) -> int:
        """Of the file being sent (or last sent) by sendfile, the bytes the kernel has taken
        so far (the sending thread moves them on as it goes)."""
        if self._from_file is None:
            return 0
        sending, start = self._from_file
        return sending.offset - start

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        for offset in range(0, len(view), SEND_SLICE):
            await self._taken(self.response.write(view[offset : offset + SEND_SLICE]))

    def caught_up(self, allowance: int) -> bool:
        """The client has taken every byte written but the last ``allowance``: the transport
        holds none, and the kernel no more than that unacknowledged. (Its send buffer takes
        megabytes even from a client that reads nothing; where the kernel does not say what
        it holds, only the transport's buffer is known.)"""
        transport = self.request.transport
        if transport is None or transport.get_write_buffer_size():
            return False
        return self._unacknowledged() <= allowance

    def _unacknowledged(self) -> int:
        """Bytes of this connection the kernel holds, sent or not, that the client has not acknowledged."""
        if self._socket is None or SIOCOUTQ is None:
            return 0
        try:
            answer = fcntl.ioctl(self._socket.fileno(), SIOCOUTQ, bytes(4))
        except OSError:
            return 0
        return int.from_bytes(answer, sys.byteorder, signed=True)

    async def sendfile(self, file: BinaryIO, start: int, stop: int) -> None:
        """By the kernel's sendfile; NotImplementedError for a transport that cannot (TLS),
        or when the file-sending thread has failed (service/file_sender.py)."""
        transport = self.request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        raw = transport.get_extra_info("socket")
        if raw is None or transport.get_extra_info("sslcontext") is not None:
            raise NotImplementedError("sendfile needs a plain socket")
        await self._headers_out(transport, raw.fileno())
        sender = self.request.app[FILE_SENDER]
        sending = sender.send(raw.fileno(), file.fileno(), start, stop)
        self._from_file = sending, start
        try:
            await self._taken(sending.done)
        finally:
            if not sending.done.done() or sending.done.cancelled():
                sender.drop(sending)

    async def _headers_out(self, transport: asyncio.BaseTransport, socket_fd: int) -> None:
        """The response's headers, sent at prepare, are out of the transport's buffer: the
        file's bytes go into the socket behind the transport's back, so after them."""
        assert isinstance(transport, asyncio.WriteTransport)
        if not transport.get_write_buffer_size():
            return  # as good as always: the socket took them at once
        loop = asyncio.get_running_loop()
        # Set once, by the writer callback, when the transport's buffer is found empty.
        flushed: asyncio.Future[None] = loop.create_future()

        def check() -> None:
            if not transport.get_write_buffer_size() and not flushed.done():
                flushed.set_result(None)

        watched = os.dup(socket_fd)  # the loop lets only the transport watch the original
        loop.add_writer(watched, check)
        try:
            await self._taken(flushed)
        finally:
            loop.remove_writer(watched)
            os.close(watched)

    async def _taken(self, sending: Awaitable[object]) -> None:
        # Done once the kernel has the slice; cancelled on any way out before that.
        task = asyncio.ensure_future(sending)
        try:
            while True:
                acked = self._acked()
                done, _ = await asyncio.wait({task}, timeout=self.timeout_s)
                if done:
                    task.result()  # its failure, if it failed
                    return
                now_acked = self._acked()
                if acked is None or now_acked is None or now_acked - acked < MIN_TAKEN:
                    raise ClientNotReading(f"the client took almost nothing for {self.timeout_s:g} s")
        finally:
            task.cancel()

    def _acked(self) -> int | None:
        """Bytes of this connection the client has acknowledged; None where the kernel does not say."""
        if self._socket is None or TCP_INFO is None:
            return None
        try:
            info = self._socket.getsockopt(socket.IPPROTO_TCP, TCP_INFO, TCP_INFO_SIZE)
        except OSError:
            return None
        if len(info) < TCP_INFO_SIZE:
            return None
        return int.from_bytes(info[BYTES_ACKED_AT:TCP_INFO_SIZE], sys.byteorder)
