"""Uploads, listing and deletion of records.

POST /record (and the older POST /files.convert), GET /records, DELETE /record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar
from urllib.parse import unquote

import asyncpg
from aiohttp import BodyPartReader, MultipartReader, web

from converter.pipeline import UploadStalled, sniffed
from converter.store import Upload, store_upload
from handlers.errors import ApiError, api_error_for, ok
from handlers.keys import METRICS, POOL, SETTINGS, SLOTS
from handlers.params import (
    Credentials,
    credentials_from,
    encode_options_from,
    multipart_form,
    record_id_from,
    user_id_from,
)
from handlers.shapes import record_json

T = TypeVar("T")

WAV_TYPES = {"audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave"}
READ_SIZE = 256 * 1024
MAX_FIELD_BYTES = 4096
MAX_FIELDS = 32
DEFAULT_FILENAME = "recording.wav"


async def upload_record(request: web.Request) -> web.Response:
    row = await _observed_upload(request)
    data = record_json(request, row)
    return ok(data, status=201, headers={"Location": data["url"]})


async def upload_record_legacy(request: web.Request) -> web.Response:
    """The older clients' shape: {"status": "ok", "url": ...}."""
    row = await _observed_upload(request)
    url = record_json(request, row)["url"]
    return web.json_response({"status": "ok", "url": url}, status=201, headers={"Location": url})


async def list_records(request: web.Request) -> web.Response:
    credentials = credentials_from(request)
    rows = await request.app[POOL].fetch(
        "SELECT * FROM api.records_list($1, $2)", credentials.user_id, credentials.token
    )
    return ok({"records": [record_json(request, row) for row in rows]})


async def delete_record(request: web.Request) -> web.Response:
    record_id = record_id_from(request.query.get("id"))
    credentials = credentials_from(request)
    user_id = user_id_from(request.query.get("user", str(credentials.user_id)))
    if user_id != credentials.user_id:
        raise ApiError(404, "No such record.")
    await request.app[POOL].execute(
        "SELECT api.record_delete($1, $2, $3)", credentials.user_id, credentials.token, record_id
    )
    return web.Response(status=204)


async def _observed_upload(request: web.Request) -> asyncpg.Record:
    """An upload counted for shutdown (it may finish) and for /metrics (its outcome)."""
    metrics = request.app[METRICS]
    started = time.perf_counter()
    async with request.app[SLOTS].upload():
        try:
            row = await _convert_upload(request)
        except Exception as error:
            metrics.conversions.labels(status=str(api_error_for(error).status)).inc()
            raise
    metrics.conversions.labels(status="201").inc()
    metrics.conversion_seconds.observe(time.perf_counter() - started)
    metrics.bytes_out.inc(row["size"])
    return row


async def _convert_upload(request: web.Request) -> asyncpg.Record:
    settings = request.app[SETTINGS]
    if request.content_length is not None and request.content_length > settings.max_upload_bytes:
        raise ApiError(413, f"The upload is larger than the limit of {settings.max_upload_bytes >> 20} MiB.")

    fields: dict[str, str] = dict(request.query)
    if multipart_form(request):
        reader = await request.multipart()
        file_part = await _file_part(reader, fields, settings.read_timeout_s)
        filename = _readable_filename(file_part.filename)
        body = _counted(request, _part_chunks(reader, file_part, settings.read_timeout_s))
    elif request.content_type in WAV_TYPES:
        filename = fields.get("filename") or DEFAULT_FILENAME
        body = _counted(request, _stream_chunks(request, settings.read_timeout_s))
    else:
        raise ApiError(
            415, "Send the WAV as a multipart/form-data file part, or as the body with Content-Type audio/wav."
        )

    credentials = credentials_from(request, fields)
    options = encode_options_from(fields, settings.mp3_bitrate_kbps, filename)
    pool = request.app[POOL]
    await pool.execute("SELECT FROM api.user_check($1, $2)", credentials.user_id, credentials.token)
    body = await sniffed(body)  # 415 now, before waiting for a slot

    async with request.app[SLOTS].turn(), pool.acquire() as connection:
        return await store_upload(
            connection,
            _upload(credentials, filename, body),
            ffmpeg=settings.ffmpeg_binary,
            options=options,
            max_bytes=settings.max_upload_bytes,
            time_limit_s=settings.ffmpeg_timeout_s,
        )


def _readable_filename(raw: str | None) -> str:
    """The part's file name as text PostgreSQL accepts (api.record_begin makes it a safe base name)."""
    # Browsers and aiohttp percent-encode some characters of the name; curl sends it raw.
    name = unquote(raw or "")
    # Headers arrive as UTF-8 with undecodable bytes escaped; such bytes become U+FFFD.
    name = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return name or DEFAULT_FILENAME


def _upload(credentials: Credentials, filename: str, body: AsyncIterator[bytes]) -> Upload:
    return Upload(user_id=credentials.user_id, token=credentials.token, filename=filename, body=body)


async def _file_part(reader: MultipartReader, fields: dict[str, str], read_timeout: float) -> BodyPartReader:
    """Collect the text fields up to the first part with a file name, and return that part.

    Fields are few and short (credentials, options): both are bounded, and so
    is the time each read may take, so no request can fill memory or hang here."""
    for _ in range(MAX_FIELDS + 1):
        part = await _within(read_timeout, reader.next())
        if part is None:
            break
        if not isinstance(part, BodyPartReader):
            raise ApiError(400, "Nested multipart bodies are not accepted.")
        if part.filename is not None:
            return part
        value = bytearray()
        while chunk := await _within(read_timeout, part.read_chunk(MAX_FIELD_BYTES)):
            value += chunk
            if len(value) > MAX_FIELD_BYTES:
                raise ApiError(400, f"The form field {part.name} is longer than {MAX_FIELD_BYTES} bytes.")
        if part.name:
            fields[part.name] = value.decode("utf-8", "replace")
    else:
        raise ApiError(400, f"At most {MAX_FIELDS} form fields may come before the file.")
    raise ApiError(400, "No file found: send the WAV as a multipart part with a filename.")


async def _part_chunks(reader: MultipartReader, part: BodyPartReader, read_timeout: float) -> AsyncIterator[bytes]:
    while chunk := await _within(read_timeout, part.read_chunk(READ_SIZE)):
        yield chunk
    # Anything after the file would be ignored, and an option silently ignored
    # is a wrong MP3: refuse it (the conversion is rolled back).
    following = await _within(read_timeout, reader.next())
    if following is not None:
        name = getattr(following, "name", None) or "a part"
        what = "a second file" if getattr(following, "filename", None) is not None else f"the field {name}"
        raise ApiError(400, f"Send one file, after the other fields: {what} came after the file.")


async def _stream_chunks(request: web.Request, read_timeout: float) -> AsyncIterator[bytes]:
    while chunk := await _within(read_timeout, request.content.read(READ_SIZE)):
        yield chunk


async def _counted(request: web.Request, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    received = request.app[METRICS].bytes_in
    async for chunk in chunks:
        received.inc(len(chunk))
        yield chunk


async def _within(read_timeout: float, read: Awaitable[T]) -> T:
    """One read of the body; a client that sends nothing for read_timeout is cut off."""
    try:
        async with asyncio.timeout(read_timeout):
            return await read
    except TimeoutError:
        raise UploadStalled(f"The upload sent nothing for {read_timeout:g} s and was stopped.") from None
    except ValueError:  # aiohttp's multipart reader, at the end of a body with no closing boundary
        raise ApiError(400, "The multipart body ended before its closing boundary.") from None
