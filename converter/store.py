"""An upload stored as a record: the conversion inside the upload's transaction.

The caller begins the record (api.record_begin, which checks the user and
creates the large object) in a transaction it holds; every MP3 chunk FFmpeg
produces is appended as it comes, the header frame written into the room
left for it, and the record finished with what the conversion measured. Any
failure, the client going away included, rolls it all back: no row, no
large object.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import UUID

from converter.options import ConverterConfig, CpuShare, EncodeOptions
from converter.pipeline import convert
from db import api


async def store_conversion(
    connection: api.Database,
    record_id: UUID,
    source: AsyncIterator[bytes],
    options: EncodeOptions,
    config: ConverterConfig,
    share: CpuShare,
) -> api.Record:
    """Convert ``source`` into the record begun as ``record_id``; the finished record."""

    async def append(chunk: bytes) -> None:
        await api.record_append(connection, record_id, chunk)

    converted = await convert(source, append, options, config, share)
    await api.record_overwrite(connection, record_id, converted.header_offset, converted.header_frame)
    return await api.record_finish(
        connection, record_id, converted.duration, converted.bitrate, converted.sample_rate, converted.channels
    )
