"""Repeat downloads at sendfile speed: a bounded cache of finished MP3s on local disk.

Reading a large object is the slow part of a download (PostgreSQL's own read
runs at a tenth of what the kernel's sendfile does), and a popular link costs a
full read per listener. So the first full download of a record also writes its
bytes to a file here, hashing them as they go; the file is admitted only when
its bytes hash to the record's SHA-256 (what the database computed at
record_finish), and is named by that digest. Later downloads, whole or a byte
range, are sent from it with sendfile.

Every download still calls api.record_open first, so a deleted record or
another user's id is never served from here; the digest it returns picks the
file. The cache is disposable: one directory per process, removed at exit, and
losing it costs only speed, so a replica stays stateless. Least recently used
files go first when DOWNLOAD_CACHE_MB would be passed.

A deleted record's file goes at once, in every process: the database announces
each deletion (channel mp3_record_deleted, the MP3's digest; migration 0006)
and ``dropping_deleted_records`` listens. While it cannot listen (the database
restarting), deletions go unheard, so on listening again it empties the cache.
A download already sending the file is told (``watching``) and stops if its own
record is the one gone, as a download from the database does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import asyncpg

log = logging.getLogger("mp3.download_cache")

DELETIONS_CHANNEL = "mp3_record_deleted"
LISTENER_NAME = "mp3 download cache"
# The listening connection: how often it is checked (a connection can die
# without a word), and how long a connect or a check may take.
LISTEN_CHECK_INTERVAL_S = 5.0
LISTEN_TIMEOUT_S = 5.0


class DownloadCache:
    def __init__(self, max_bytes: int, parent: str | None = None) -> None:
        self.max_bytes = max_bytes
        self.directory = Path(tempfile.mkdtemp(prefix="mp3-download-cache-", dir=parent))
        self._files: OrderedDict[str, int] = OrderedDict()  # digest → size, least recently used first
        self._filling: dict[str, int] = {}  # digest → size, room held while a first download writes it
        self._dropped_while_filling: set[str] = set()  # deleted meanwhile: not to be admitted
        self.used_bytes = 0  # of both, kept as they change rather than summed on every eviction
        # digest → what to call whenever a record of those bytes is deleted (downloads sending the file)
        self._watchers: dict[str, set[Callable[[], None]]] = {}

    def open(self, digest: str) -> BinaryIO | None:
        """The cached MP3 of this digest, opened (an open file survives its eviction), or None."""
        if digest not in self._files:
            return None
        try:
            file = (self.directory / digest).open("rb")
        except FileNotFoundError:  # removed behind our back: forget it, read from the database
            self.used_bytes -= self._files.pop(digest)
            return None
        except OSError as error:  # no file descriptor left, say: the file is still there
            log.warning("the download cache cannot open a file (%s); served from the database", error)
            return None
        self._files.move_to_end(digest)
        return file

    def fill(self, digest: str, size: int) -> CacheFill | None:
        """A writer for a first download of this record, or None when it is cached, being
        written by another download, or too big for the cache."""
        if digest in self._files or digest in self._filling or size > self.max_bytes:
            return None
        self._make_room(size)
        try:
            fill = CacheFill(self, digest, size)
        except OSError as error:  # the directory gone (a tmp cleaner), a full disk, no file descriptor left
            log.warning("the download cache cannot write (%s); this download is not cached", error)
            return None
        self._filling[digest] = size
        self.used_bytes += size
        return fill

    @contextlib.contextmanager
    def watching(self, digest: str, deleted: Callable[[], None]) -> Iterator[None]:
        """While in it, ``deleted`` is called each time a record with these bytes is deleted
        (whose it was, the digest does not say)."""
        self._watchers.setdefault(digest, set()).add(deleted)
        try:
            yield
        finally:
            watchers = self._watchers[digest]
            watchers.discard(deleted)
            if not watchers:
                del self._watchers[digest]

    def drop(self, digest: str) -> None:
        """Its record was deleted: the file goes, and a first download writing it is not admitted;
        the downloads sending it are told. Anything else (any text can be announced) names no
        file and changes nothing."""
        for deleted in list(self._watchers.get(digest, ())):
            deleted()
        size = self._files.pop(digest, None)
        if size is not None:
            self.used_bytes -= size
            with contextlib.suppress(OSError):
                (self.directory / digest).unlink()
        if digest in self._filling:
            self._dropped_while_filling.add(digest)

    def clear(self) -> None:
        """Every file goes, and every download sending one (an evicted file too) is told."""
        for digest in set(self._files) | set(self._filling) | set(self._watchers):
            self.drop(digest)

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def _make_room(self, size: int) -> None:
        while self._files and self.used_bytes + size > self.max_bytes:
            oldest, size_of_oldest = self._files.popitem(last=False)
            self.used_bytes -= size_of_oldest
            with contextlib.suppress(OSError):  # gone already, or the disk failing: forgotten either way
                (self.directory / oldest).unlink()

    def admit(self, digest: str, size: int) -> bool:
        """The file named by the digest is written: kept, unless its record was deleted meanwhile."""
        if digest in self._dropped_while_filling:
            return False
        del self._filling[digest]
        self._files[digest] = size
        return True

    def release(self, digest: str) -> None:
        self.used_bytes -= self._filling.pop(digest, 0)
        self._dropped_while_filling.discard(digest)


class CacheFill:
    """The bytes of one first download, written and hashed off the event loop. A disk
    that fails (full, gone) only means the record is not cached: the download goes on."""

    def __init__(self, cache: DownloadCache, digest: str, size: int) -> None:
        self._cache = cache
        self._digest = digest
        self._size = size
        self._path = cache.directory / f"{digest}.part"
        self._file = self._path.open("wb")
        self._hash = hashlib.sha256()
        self._written = 0
        self._failed = False

    async def add(self, chunk: bytes) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._add, chunk)

    def _add(self, chunk: bytes) -> None:
        if self._failed:
            return
        try:
            self._file.write(chunk)
        except OSError as error:
            log.warning("the download cache cannot write (%s); this record is not cached", error)
            self._failed = True
            return
        self._hash.update(chunk)
        self._written += len(chunk)

    def finish(self) -> None:
        """Admit the file if it is the record's bytes exactly; otherwise drop it."""
        try:
            self._file.close()
            if self._failed:
                raise OSError("a write failed")
            if self._written != self._size or self._hash.hexdigest() != self._digest:
                log.warning("a download's bytes did not hash to its record's SHA-256; not cached")
                raise OSError("not the record's bytes")
            final = self._cache.directory / self._digest
            os.replace(self._path, final)
        except OSError:
            self.abandon()
            return
        if not self._cache.admit(self._digest, self._size):
            with contextlib.suppress(OSError):
                final.unlink()
            self._cache.release(self._digest)

    def abandon(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
            self._path.unlink()
        self._cache.release(self._digest)


@contextlib.asynccontextmanager
async def dropping_deleted_records(cache: DownloadCache, database_url: str) -> AsyncIterator[None]:
    """While in it, each record deleted anywhere leaves the cache at once."""
    listener = _DeletionListener(cache, database_url)
    await listener.listen()  # before the first download: no deletion goes unheard from the start
    keeping = asyncio.create_task(listener.keep_listening())
    try:
        yield
    finally:
        keeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeping
        listener.stop()


class _DeletionListener:
    def __init__(self, cache: DownloadCache, database_url: str) -> None:
        self._cache = cache
        self._url = database_url
        self._connection: asyncpg.Connection | None = None

    async def listen(self) -> None:
        try:
            connection = await asyncpg.connect(
                self._url,
                timeout=LISTEN_TIMEOUT_S,
                command_timeout=LISTEN_TIMEOUT_S,
                server_settings={"application_name": LISTENER_NAME},  # what pg_stat_activity shows
            )
        except Exception as error:
            log.warning("the download cache cannot hear of deletions (%s); it is emptied when it can", error)
            return
        try:
            await connection.add_listener(DELETIONS_CHANNEL, self._deleted)
        except Exception as error:
            log.warning("the download cache cannot hear of deletions (%s); it is emptied when it can", error)
            connection.terminate()
            return
        self._connection = connection
        self._cache.clear()  # what was deleted while nobody listened

    async def keep_listening(self) -> None:
        while True:
            await asyncio.sleep(LISTEN_CHECK_INTERVAL_S)
            if self._connection is not None:
                try:
                    await self._connection.fetchval("SELECT 1", timeout=LISTEN_TIMEOUT_S)
                    continue
                except Exception as error:
                    log.warning("the download cache stopped hearing of deletions (%s)", error)
                    self.stop()
            await self.listen()

    def stop(self) -> None:
        if self._connection is not None:
            self._connection.terminate()
            self._connection = None

    def _deleted(self, connection: object, pid: int, channel: str, digest: object) -> None:
        self._cache.drop(str(digest))
