"""An upload stored as a record: the conversion inside one database transaction.

The record is begun (its large object created), every MP3 chunk FFmpeg
produces is appended as it comes, and the record is finished with what the
conversion measured; only then does the transaction commit. Any failure,
including the client going away, rolls it all back: no row, no large object.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from converter.pipeline import EncodeOptions, convert


@dataclass(frozen=True)
class Upload:
    user_id: int
    token: str
    filename: str
    body: AsyncIterator[bytes]


async def store_upload(
    connection: asyncpg.Connection | PoolConnectionProxy,
    upload: Upload,
    *,
    ffmpeg: str,
    options: EncodeOptions,
    time_limit_s: float,
    max_seconds: float,
) -> asyncpg.Record:
    """Convert and store one upload; returns its row of api.record_finish."""
    async with connection.transaction():
        record_id: UUID = await connection.fetchval(
            "SELECT api.record_begin($1, $2, $3)", upload.user_id, upload.token, upload.filename
        )

        async def append(chunk: bytes) -> None:
            await connection.execute("SELECT api.record_append($1, $2)", record_id, chunk)

        converted = await convert(
            upload.body, append, ffmpeg=ffmpeg, options=options, time_limit_s=time_limit_s, max_seconds=max_seconds
        )
        await connection.execute(
            "SELECT api.record_overwrite($1, $2, $3)", record_id, converted.header_offset, converted.header_frame
        )
        row = await connection.fetchrow(
            "SELECT * FROM api.record_finish($1, $2, $3, $4, $5)",
            record_id,
            converted.duration,
            converted.bitrate,
            converted.sample_rate,
            converted.channels,
        )
    assert row is not None  # record_finish returns the row or raises
    return row
