"""GET/HEAD /record?id=&user= (the older /files.record is in handlers/legacy.py).

No token: the random record id is the secret the link carries. The metadata
comes first (ownership is checked in SQL), then the MP3 is read back in
chunks, each its own short statement, and written as it arrives: a slow
client holds no transaction, and no more memory than it takes (FIRST_READ). A
record downloaded before is sent from the local cache with sendfile
(service/download_cache.py), after the same check, and broken off as soon as
the record is deleted, as a download from the database is.

Bytes go out through handlers/send.py: a client that reads slowly is served
however long its download lasts, one that stops reading is cut off after
SEND_TIMEOUT_S.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, BinaryIO
from urllib.parse import quote
from uuid import UUID

import asyncpg
from aiohttp import web

from handlers.errors import ApiError, ResponseBroken
from handlers.params import record_id_from, user_id_from
from handlers.reads import NOT_THERE, open_for_download, read_bytes
from handlers.send import Sender
from service.download_cache import CacheFill
from service.keys import DOWNLOAD_CACHE, DOWNLOAD_READS

log = logging.getLogger("mp3.download")

READ_CHUNK = 1024 * 1024
# Reads in flight per download, each on its own pool connection: PostgreSQL's
# reading of the large object is the slow part, and two backends use two cores.
READS_AHEAD = 2
# A download's first read. Reads double, up to READ_CHUNK, and are made ahead only
# while the client takes every byte as fast as it is written (as TCP's slow start
# grows its window): a client that reads nothing holds a few hundred KiB of ours
# until SEND_TIMEOUT_S cuts it off, not megabytes, and one that reads slowly holds
# as little for as long as it likes.
FIRST_READ = 64 * 1024
RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")
# Positions beyond any file: more digits than this are read as "past the end".
MAX_POSITION_DIGITS = 18


async def download(request: web.Request) -> web.StreamResponse:
    return await serve_record(request, record_id_from(request.query.get("id")), user_id_from(request.query.get("user")))


async def serve_record(request: web.Request, record_id: UUID, user_id: int) -> web.StreamResponse:
    record = await open_for_download(request, record_id, user_id)
    size = record.size
    digest = record.sha256.hex()
    etag = f'"{digest}"'

    response = web.StreamResponse(
        headers={
            "ETag": etag,
            "Accept-Ranges": "bytes",
            "Cache-Control": "private, max-age=31536000, immutable",  # the bytes of an id never change
        }
    )
    response.last_modified = record.created_at
    # aiohttp parses If-Match and If-None-Match; the comparisons (strong, weak) are ours.
    if request.if_match is not None and not any(
        tag.value in (digest, "*") and not tag.is_weak for tag in request.if_match
    ):
        raise ApiError(412, "If-Match names none of the record's ETag.")
    if any(tag.value in (digest, "*") for tag in request.if_none_match or ()):
        response.set_status(304)
        return response

    start, end = 0, size - 1
    wanted = _wanted_range(request, etag, size)
    if wanted is not None:
        start, end = wanted
        response.set_status(206)
        response.headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    response.content_type = "audio/mpeg"
    response.headers["Content-Disposition"] = content_disposition(record.filename)
    response.content_length = end - start + 1
    await response.prepare(request)
    if request.method != "HEAD":
        send = Sender(request, response)
        cache = request.app.get(DOWNLOAD_CACHE)
        cached = cache.open(digest) if cache else None
        if cached is not None:
            assert cache is not None
            deletions = _Deletions(request, record_id, user_id)
            with cached, cache.watching(digest, deletions.check):
                await deletions.break_off_if_deleted(_send_file(send, cached, start, end + 1), send)
        else:
            whole = start == 0 and end == size - 1
            fill = cache.fill(digest, size) if cache and whole else None
            reads = request.app[DOWNLOAD_READS]

            async def read_chunk(offset: int, count: int) -> bytes:
                async with reads:
                    return await read_bytes(request, record_id, user_id, offset, count)

            await _stream(send, read_chunk, start, end + 1, fill)
    await response.write_eof()
    return response


async def _stream(
    send: Sender,
    read_chunk: Callable[[int, int], Awaitable[bytes]],
    start: int,
    stop: int,
    fill: CacheFill | None,
) -> None:
    """Write the bytes [start, stop), in reads that grow while the client keeps up (see
    FIRST_READ), the next one read while the current one is sent once they are at their
    largest, and into the cache when this download fills it.

    A failure here comes after the status line (the record deleted meanwhile,
    the database gone): it can only break the response off (ResponseBroken)."""
    offset, size, ahead = start, FIRST_READ, 1
    # Reads in flight, in byte order; each is awaited, or cancelled below when the
    # download ends early, so none is left to finish (or fail) unseen.
    reads: deque[asyncio.Future[bytes]] = deque()
    sent = 0
    try:
        while True:
            while len(reads) < ahead and offset < stop:
                count = min(size, stop - offset)
                reads.append(asyncio.ensure_future(read_chunk(offset, count)))
                offset += count
            if not reads:
                return
            chunk = await reads.popleft()
            if fill is not None:
                # Into the cache before the client has it: once a client holds every
                # byte, the next download finds the file.
                await fill.add(chunk)
                if sent + len(chunk) == stop - start:
                    fill.finish()
                    fill = None
            await send.write(chunk)
            sent += len(chunk)
            keeping_up = send.caught_up(len(chunk))
            size = min(2 * size, READ_CHUNK) if keeping_up else size
            ahead = READS_AHEAD if keeping_up and size == READ_CHUNK else 1
    except Exception as error:
        raise ResponseBroken(send.response, error, sent) from error
    finally:
        for pending in reads:  # the client went away mid-download
            pending.cancel()
        if fill is not None:  # ended before the last byte was read
            fill.abandon()


class _Deletions:
    """A download from the cache goes on while its record exists, as one from the database
    does (each of whose reads asks): told of every deletion of a record with its bytes (the
    announcement names the bytes, not the record), it asks whether its own is gone."""

    def __init__(self, request: web.Request, record_id: UUID, user_id: int) -> None:
        self._request, self._record_id, self._user_id = request, record_id, user_id
        # Set once, with the database's answer, when this download's record is found deleted.
        self._gone: asyncio.Future[Exception] = asyncio.get_running_loop().create_future()
        self._checks: set[asyncio.Task[None]] = set()
        self._ended = False  # no check starts once the download has ended

    def check(self) -> None:
        if self._ended:
            return
        task = asyncio.ensure_future(self._ask())
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _ask(self) -> None:
        try:
            await open_for_download(self._request, self._record_id, self._user_id)
        except asyncpg.PostgresError as error:
            if error.sqlstate == NOT_THERE and not self._gone.done():
                self._gone.set_result(error)
        except Exception:  # the database unsure: the download goes on, as it began
            log.debug("a deletion's check failed", exc_info=True)

    async def break_off_if_deleted(self, sending: Awaitable[None], send: Sender) -> None:
        """``sending`` to its end, or broken off (ResponseBroken) once the record is found gone."""
        task = asyncio.ensure_future(sending)
        try:
            either: set[asyncio.Future[Any]] = {task, self._gone}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if self._gone.done() and not task.done():
                raise ResponseBroken(send.response, self._gone.result(), send.file_bytes_sent)
            await task
        finally:
            self._ended = True
            for check in self._checks:
                check.cancel()
            if not task.done():  # broken off, or this request cancelled: the sending stops first
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            elif not task.cancelled():
                # Its failure (a client's reset, as the request is cancelled for it) is no
                # news then: retrieved, not logged by asyncio as a task nobody awaited.
                task.exception()


async def _send_file(send: Sender, file: BinaryIO, start: int, stop: int) -> None:
    """The bytes [start, stop) of a cached file, by the kernel's sendfile, as aiohttp's
    FileResponse sends (it cannot be used itself: its ETag, Range and conditional
    handling are of a file, ours are of the record)."""
    copied = 0
    try:
        try:
            # The status line and headers are already in the transport's buffer
            # (StreamResponse sends them at prepare); sendfile waits for them to flush.
            await send.sendfile(file, start, stop)
        except NotImplementedError:  # a transport that cannot sendfile (TLS): in chunks
            file.seek(start)
            while start + copied < stop:
                chunk = await asyncio.to_thread(file.read, min(READ_CHUNK, stop - start - copied))
                await send.write(chunk)
                copied += len(chunk)
    except Exception as error:
        raise ResponseBroken(send.response, error, send.file_bytes_sent + copied) from error


def _wanted_range(request: web.Request, etag: str, size: int) -> tuple[int, int] | None:
    """The single byte range asked for, None for the whole file; 416 when it cannot be served.

    A malformed header or several ranges are ignored (the whole file is sent),
    as RFC 9110 allows; so is a Range whose If-Range names another version.
    Not aiohttp's request.http_range: it reads `bytes=-0` as the whole file and a
    position past Python's int limit as malformed, where both are unsatisfiable.
    """
    header = request.headers.get("Range")
    if header is None or request.headers.get("If-Range", etag) != etag:
        return None
    match = RANGE.fullmatch(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = _position(match.group(1)), _position(match.group(2))
    if first is None:  # the last N bytes
        assert last is not None
        start, end = max(0, size - last), size - 1
        if last == 0:
            raise _unsatisfiable(size)
    else:
        start = first
        end = min(last, size - 1) if last is not None else size - 1
        if last is not None and last < start:
            return None
    if start >= size:
        raise _unsatisfiable(size)
    return start, end


def _position(digits: str) -> int | None:
    if not digits:
        return None
    return int(digits) if len(digits) <= MAX_POSITION_DIGITS else 10**MAX_POSITION_DIGITS


def _unsatisfiable(size: int) -> ApiError:
    return ApiError(416, f"The range is outside the file's {size} bytes.", {"Content-Range": f"bytes */{size}"})


def content_disposition(filename: str) -> str:
    """RFC 6266: an ASCII fallback name, and the real one as filename* when it is not ASCII."""
    fallback = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\' else "_" for ch in filename)
    header = f'attachment; filename="{fallback}"'
    if fallback != filename:
        header += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return header
