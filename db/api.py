"""The api schema's functions, as Python: one short function each.

This is the one place the service's SQL is written, so "who calls
api.record_read?" has a one-file answer and what comes back is typed once.
Each takes what to run on: the pool for a statement of its own, or the
connection of a transaction the caller holds (an upload is one).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Database = asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy

# How much of an upload is read back at a time to hash it: what one value in
# the database and in this process holds, whatever the MP3's size.
READ_BACK_BYTES = 4 << 20

log = logging.getLogger("mp3.db")


@dataclass(frozen=True)
class NewUser:
    id: int
    username: str
    token: UUID  # shown this once: the database keeps only its digest


@dataclass(frozen=True)
class Record:
    """A finished record as app.record_info shows it (the return type of the record functions)."""

    id: UUID
    user_id: int
    filename: str  # the download's name: the original's, ending in .mp3
    original_filename: str
    size: int
    duration: float
    bitrate: int
    sample_rate: int
    channels: int
    sha256: bytes
    created_at: datetime
    loudness: float | None  # LUFS, integrated; None: not measured, or nothing to measure
    loudness_range: float | None  # LU
    true_peak: float | None  # dBTP
    has_waveform: bool
    cursor: str  # opaque: pass it to records_list for the records after this one

    @classmethod
    def of(cls, row: asyncpg.Record | None) -> Record:
        assert row is not None  # the record functions return their row or raise
        return cls(**dict(row))


@dataclass(frozen=True)
class Measured:
    """What the converter measured of a recording beyond its format (api.record_measure's);
    None: not measured, or nothing to measure."""

    waveform: bytes | None = None  # audiowaveform's .dat, version 2
    loudness: float | None = None  # LUFS, integrated
    loudness_range: float | None = None  # LU
    true_peak: float | None = None  # dBTP


@dataclass(frozen=True)
class Waveform:
    sha256: bytes  # the record's MP3's
    waveform: bytes  # audiowaveform's .dat, version 2


@dataclass(frozen=True)
class UserStorage:
    username: str
    records: int
    bytes: int
    quota_bytes: int  # 0: no quota
    uploading_bytes: int  # the MP3s of unfinished resumable uploads: they count against the quota too


@dataclass(frozen=True)
class StorageStats:
    records: int
    bytes: int
    max_bytes: int  # STORAGE_MAX_GB; 0: no bound


# A server that answers rolls back in a few round trips (asyncpg first cancels a statement
# in flight, on a connection of its own); one that does not has just cost a statement's
# whole deadline, and waiting as long again for its rollback would double the answer's delay.
ROLLBACK_TIMEOUT_S = 2.0


@contextlib.asynccontextmanager
async def transaction(pool: asyncpg.Pool, deadline_s: float) -> AsyncIterator[PoolConnectionProxy]:
    """A pool connection in a transaction: committed when the block ends, rolled back
    when it raises (a cancellation too). A rollback the server has not finished within
    ROLLBACK_TIMEOUT_S (or ``deadline_s``, if shorter), a BEGIN or a COMMIT it did not
    answer, end the connection instead: PostgreSQL rolls back what a lost connection
    held, and nobody waits on a silent server (the pool, taking the connection back,
    would wait for the cancel of the statement as long again)."""
    async with pool.acquire(timeout=deadline_s) as connection:
        transaction = connection.transaction()
        with _ended_unless_answered(connection):
            await transaction.start()
        try:
            yield connection
        except BaseException:
            try:
                async with asyncio.timeout(min(deadline_s, ROLLBACK_TIMEOUT_S)):
                    await transaction.rollback()
            except asyncio.CancelledError:  # cancelled again meanwhile (the shutdown's cancel)
                _end(connection)
                raise
            except (TimeoutError, OSError, asyncpg.InterfaceError, asyncpg.PostgresError):
                _end(connection)
            raise
        with _ended_unless_answered(connection):
            await transaction.commit()


@contextlib.contextmanager
def _ended_unless_answered(connection: PoolConnectionProxy) -> Iterator[None]:
    """The connection ended if the statement in the block got no answer (its deadline
    passed, its caller was cancelled, the connection broke); an error the server
    answered (a PostgresError) leaves it usable."""
    try:
        yield
    except asyncpg.PostgresError:
        raise
    except BaseException:
        _end(connection)
        raise


def _end(connection: PoolConnectionProxy) -> None:
    with contextlib.suppress(asyncpg.InterfaceError):  # asyncpg may have ended it already
        connection.terminate()


async def ping(db: Database) -> None:
    """A round trip, for the health checks (not an api function)."""
    await db.fetchval("SELECT 1")


async def wal_written(db: Database) -> int:
    """Where a primary's WAL stands, in bytes: every commit anyone has seen is before it.
    (PostgreSQL's, not an api function: a fact about the server, as ping is.)"""
    position: int = await db.fetchval("SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint")
    return position


async def wal_replayed(db: Database) -> int | None:
    """How far a standby has replayed its primary's WAL, in bytes; None on a server that is none."""
    position: int | None = await db.fetchval("SELECT (pg_last_wal_replay_lsn() - '0/0')::bigint")
    return position


async def user_create(db: Database, name: str) -> NewUser:
    row = await db.fetchrow("SELECT * FROM api.user_create($1)", name)
    return NewUser(**_fields(row))


async def user_check(db: Database, user_id: int, token: str) -> None:
    await db.execute("SELECT FROM api.user_check($1, $2)", user_id, token)


async def user_storage(db: Database, user_id: int, token: str) -> UserStorage:
    return UserStorage(**_fields(await db.fetchrow("SELECT * FROM api.user_storage($1, $2)", user_id, token)))


async def record_begin(db: Database, user_id: int, token: str, filename: str) -> UUID:
    record_id: UUID = await db.fetchval("SELECT api.record_begin($1, $2, $3)", user_id, token, filename)
    return record_id


async def record_append(db: Database, record_id: UUID, chunk: bytes) -> None:
    await db.execute("SELECT api.record_append($1, $2)", record_id, chunk)


async def record_overwrite(db: Database, record_id: UUID, at: int, chunk: bytes) -> None:
    await db.execute("SELECT api.record_overwrite($1, $2, $3)", record_id, at, chunk)


async def record_finish(
    db: Database,
    record_id: UUID,
    duration: float,
    bitrate: int,
    sample_rate: int,
    channels: int,
    sha256: bytes | None = None,
    header: tuple[int, bytes] | None = None,
    measured: Measured | None = None,
    tail: bytes = b"",
) -> Record:
    """Finish the upload with what the conversion measured and the SHA-256 of what was stored
    (read back from the database when the caller has not hashed its own copy), its last bytes
    (``tail``) appended and its ``header`` frame (where it goes, its bytes) written first: one
    statement, and one round trip, for all of it, but a digest read back needs them in place
    before it."""
    if sha256 is None:
        if tail:
            await record_append(db, record_id, tail)
            tail = b""
        if header is not None:
            await record_overwrite(db, record_id, *header)
            header = None
        sha256 = await upload_sha256(db, record_id)
    header_at, header_frame = header or (None, None)
    measured = measured or Measured()
    row = await db.fetchrow(
        "SELECT * FROM api.record_finish($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        record_id, duration, bitrate, sample_rate, channels, sha256, header_at, header_frame,
        measured.waveform, measured.loudness, measured.loudness_range, measured.true_peak, tail or None,
    )  # fmt: skip
    return Record.of(row)


async def upload_sha256(db: Database, record_id: UUID) -> bytes:
    """The SHA-256 of an upload in progress, read back a piece at a time (the database could
    only hash it as one value, a GB of its memory for a 4-hour MP3). Not as it is appended:
    the header frame is written last, at the start."""
    log.debug("record %s: its digest is read back from the database", record_id)
    digest = hashlib.sha256()
    offset = 0
    while chunk := await db.fetchval("SELECT api.record_read_back($1, $2, $3)", record_id, offset, READ_BACK_BYTES):
        await asyncio.to_thread(digest.update, chunk)  # off the event loop: hashlib lets go of the GIL
        offset += len(chunk)
        del chunk  # not held while the next one arrives
    return digest.digest()


async def record_waveform(db: Database, user_id: int, token: str, record_id: UUID) -> Waveform:
    return Waveform(
        **_fields(await db.fetchrow("SELECT * FROM api.record_waveform($1, $2, $3)", user_id, token, record_id))
    )


async def record_open(db: Database, record_id: UUID, user_id: int) -> Record:
    return Record.of(await db.fetchrow("SELECT * FROM api.record_open($1, $2)", record_id, user_id))


async def record_read(db: Database, record_id: UUID, user_id: int, from_byte: int, byte_count: int) -> bytes:
    chunk: bytes = await db.fetchval(
        "SELECT api.record_read($1, $2, $3, $4)", record_id, user_id, from_byte, byte_count
    )
    return chunk


async def records_list(
    db: Database, user_id: int, token: str, page_size: int | None = None, cursor: str | None = None
) -> list[Record]:
    rows = await db.fetch("SELECT * FROM api.records_list($1, $2, $3, $4)", user_id, token, page_size, cursor)
    return [Record.of(row) for row in rows]


async def record_delete(db: Database, user_id: int, token: str, record_id: UUID) -> None:
    await db.execute("SELECT api.record_delete($1, $2, $3)", user_id, token, record_id)


async def storage_stats(db: Database) -> StorageStats:
    return StorageStats(**_fields(await db.fetchrow("SELECT * FROM api.storage_stats()")))


# --- resumable uploads (tus, handlers/uploads.py) ---------------------------------------


@dataclass(frozen=True)
class ResumableUpload:
    """A resumable upload as its owner sees it (api.upload_open)."""

    upload_offset: int
    upload_length: int | None  # None while the client defers it
    expires_at: datetime
    filename: str
    options: dict[str, str]
    record_id: UUID | None  # once finished
    patch_busy_s: float  # a PATCH is at work on it for this long yet, at most (0: none is)


@dataclass(frozen=True)
class Claim:
    """What a PATCH takes over (api.upload_claim): its generation, and what to go on from."""

    generation: int
    upload_length: int | None
    filename: str
    options: dict[str, str]
    wav_header: bytes | None
    progress: dict[str, Any] | None
    analysis: bytes | None  # the measurement at the checkpoint (converter/analysis.py)
    # The WAV's bytes sent after the checkpoint's resume point: its own, then the pieces kept
    # as sent since (None when the PATCH keeps its bytes as sent: it needs none).
    wav_pending: bytes | None
    keeps_as_sent: bool  # the PATCH stores its bytes as sent (upload_append) rather than converting
    record_id: UUID | None


@dataclass(frozen=True)
class UploadInProgress:
    id: UUID
    filename: str
    upload_offset: int
    upload_length: int | None
    mp3_bytes: int
    created_at: datetime
    expires_at: datetime
    record_id: UUID | None


async def upload_create(
    db: Database,
    user_id: int,
    token: str,
    filename: str,
    options: dict[str, str],
    upload_length: int | None,
    lifetime_s: float,
    most_open: int,
) -> tuple[UUID, datetime]:
    row = await db.fetchrow(
        "SELECT * FROM api.upload_create($1, $2, $3, $4, $5, $6, $7)",
        user_id, token, filename, json.dumps(options), upload_length, lifetime_s, most_open,
    )  # fmt: skip
    fields = _fields(row)
    return fields["id"], fields["expires_at"]


async def upload_open(db: Database, user_id: int, token: str, upload_id: UUID) -> ResumableUpload:
    fields = _fields(await db.fetchrow("SELECT * FROM api.upload_open($1, $2, $3)", user_id, token, upload_id))
    return ResumableUpload(**fields | {"options": json.loads(fields["options"])})


async def upload_claim(
    db: Database,
    user_id: int,
    token: str,
    upload_id: UUID,
    offset: int,
    length: int | None,
    lifetime_s: float,
    sending: int | None,
) -> Claim:
    row = await db.fetchrow(
        "SELECT * FROM api.upload_claim($1, $2, $3, $4, $5, $6, $7)",
        user_id, token, upload_id, offset, length, lifetime_s, sending,
    )  # fmt: skip
    fields = _fields(row)
    progress = json.loads(fields["progress"]) if fields["progress"] is not None else None
    return Claim(**fields | {"options": json.loads(fields["options"]), "progress": progress})


async def upload_checkpoint(
    db: Database,
    upload_id: UUID,
    generation: int,
    at: int,
    chunk: bytes | bytearray,
    offset: int,
    progress: dict[str, Any],
    wav_header: bytes | None,
    lifetime_s: float,
    analysis: bytes | None = None,
    wav_pending: bytes | None = None,
) -> None:
    await db.execute(
        "SELECT api.upload_checkpoint($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        upload_id, generation, at, chunk, offset, json.dumps(progress), wav_header, lifetime_s, analysis, wav_pending,
    )  # fmt: skip


async def upload_append(
    db: Database, upload_id: UUID, generation: int, at: int, piece: bytes | bytearray, lifetime_s: float
) -> None:
    await db.execute("SELECT api.upload_append($1, $2, $3, $4, $5)", upload_id, generation, at, piece, lifetime_s)


async def upload_read_back(db: Database, upload_id: UUID, generation: int, from_byte: int, byte_count: int) -> bytes:
    chunk: bytes = await db.fetchval(
        "SELECT api.upload_read_back($1, $2, $3, $4)", upload_id, generation, from_byte, byte_count
    )
    return chunk


async def upload_record_begin(db: Database, upload_id: UUID, generation: int) -> UUID:
    record_id: UUID = await db.fetchval("SELECT api.upload_record_begin($1, $2)", upload_id, generation)
    return record_id


async def upload_finish(
    db: Database,
    upload_id: UUID,
    generation: int,
    at: int,
    chunk: bytes,
    lifetime_s: float,
    duration: float,
    bitrate: int,
    sample_rate: int,
    channels: int,
    sha256: bytes,
    header: tuple[int, bytes],
    measured: Measured | None = None,
) -> Record:
    """The upload's last MP3 bytes written at ``at``, the MP3 made a record and finished (as
    record_finish finishes one): one statement, and one round trip, for all of it."""
    measured = measured or Measured()
    row = await db.fetchrow(
        "SELECT * FROM api.upload_finish($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        upload_id, generation, at, chunk, lifetime_s, duration, bitrate, sample_rate, channels, sha256, *header,
        measured.waveform, measured.loudness, measured.loudness_range, measured.true_peak,
    )  # fmt: skip
    return Record.of(row)


async def upload_settled(db: Database, upload_id: UUID, generation: int) -> None:
    await db.execute("SELECT api.upload_settled($1, $2)", upload_id, generation)


async def upload_busy(db: Database, upload_id: UUID, generation: int) -> None:
    await db.execute("SELECT api.upload_busy($1, $2)", upload_id, generation)


async def upload_delete(db: Database, user_id: int, token: str, upload_id: UUID) -> None:
    await db.execute("SELECT api.upload_delete($1, $2, $3)", user_id, token, upload_id)


async def uploads_list(db: Database, user_id: int, token: str) -> list[UploadInProgress]:
    rows = await db.fetch("SELECT * FROM api.uploads_list($1, $2)", user_id, token)
    return [UploadInProgress(**dict(row)) for row in rows]


async def uploads_sweep(db: Database, most: int) -> int:
    swept: int = await db.fetchval("SELECT api.uploads_sweep($1)", most)
    return swept


def _fields(row: asyncpg.Record | None) -> dict[str, Any]:
    assert row is not None  # these functions return one row or raise
    return dict(row)
