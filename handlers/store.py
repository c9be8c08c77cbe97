"""An upload stored as a record: the conversion inside the upload's transaction.

``Upload`` is what a request asks to store, checked (handlers/records.py builds it).

In a transaction the caller holds, the record is begun (api.record_begin, which
checks the user and creates the large object); every MP3 chunk FFmpeg produces
is appended as it comes, the header frame written into the room
left for it, and the record finished with what the conversion measured. Any
failure, the client going away included, rolls it all back: no row, no
large object.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from converter.options import ConverterConfig, CpuShare, EncodeOptions
from converter.pipeline import convert
from db import api
from handlers.params import Credentials


@dataclass(frozen=True)
class Upload:
    """An upload as its request states it, checked: whose it is, what it asks for, and its
    WAV (a body that does not begin like one was refused before this existed)."""

    credentials: Credentials
    filename: str
    options: EncodeOptions
    wav: AsyncIterator[bytes]


async def store(connection: api.Database, upload: Upload, config: ConverterConfig, share: CpuShare) -> api.Record:
    """The upload converted into a record, in the transaction ``connection`` holds (its
    end commits the record, a failure anywhere rolls it all back); the finished record."""
    who = upload.credentials
    record_id = await api.record_begin(connection, who.user_id, who.token, upload.filename)

    async def append(chunk: bytes) -> None:
        await api.record_append(connection, record_id, chunk)

    converted = await convert(upload.wav, append, upload.options, config, share)
    await api.record_overwrite(connection, record_id, converted.header_offset, converted.header_frame)
    return await api.record_finish(
        connection, record_id, converted.duration, converted.bitrate, converted.sample_rate, converted.channels
    )
