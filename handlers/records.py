"""Uploads, listing and deletion of records: POST /record, GET /records, DELETE /record."""

from __future__ import annotations

import time

from aiohttp import web
from yarl import URL

from converter.pipeline import sniffed
from db import api
from handlers.body import DEFAULT_FILENAME, MultipartForm, PacedBody, multipart_boundary, pace_of
from handlers.errors import ApiError, outcome_status, unauthorized
from handlers.params import (
    credentials_from,
    credentials_given,
    encode_options_from,
    header_credentials,
    owners_credentials,
    page_size_from,
    record_id_from,
)
from handlers.reads import on_primary, read_fresh
from handlers.server import admitted
from handlers.shapes import link, link_base, ok, record_json
from handlers.store import Upload, store
from service.keys import CONVERTER, METRICS, POOL, SETTINGS, SLOTS

WAV_TYPES = {"audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave"}


async def upload_record(request: web.Request) -> web.Response:
    record, links = await stored_upload(request)
    data = record_json(links, record)
    return ok(data, status=201, headers={"Location": data["url"]})


async def list_records(request: web.Request) -> web.Response:
    """A page of the user's records, newest first; the next page's cursor as
    `next` and as a Link header (RFC 8288), as well-kept APIs page."""
    links = link_base(request)
    credentials = credentials_from(request)
    page_size = page_size_from(request.query.get("limit"))
    cursor = request.query.get("cursor") or None
    # One record more than the page tells whether another page follows.
    records = await read_fresh(
        request, lambda db: api.records_list(db, credentials.user_id, credentials.token, page_size + 1, cursor)
    )
    page = records[:page_size]
    next_cursor = page[-1].cursor if len(records) > page_size else None
    headers = {}
    if next_cursor is not None:
        headers["Link"] = f'<{link(links, "/records", limit=page_size, cursor=next_cursor)}>; rel="next"'
    return ok({"records": [record_json(links, record) for record in page], "next": next_cursor}, headers=headers)


async def delete_record(request: web.Request) -> web.Response:
    record_id = record_id_from(request.query.get("id"))
    credentials = owners_credentials(request, "No such record.")
    await on_primary(request, lambda db: api.record_delete(db, credentials.user_id, credentials.token, record_id))
    return web.Response(status=204)


async def stored_upload(request: web.Request) -> tuple[api.Record, URL]:
    """An upload registered for shutdown (it may finish, or is cancelled) and
    counted once for /metrics, by the status it was answered (or would have been)."""
    metrics = request.app[METRICS]
    started = time.perf_counter()
    try:
        async with request.app[SLOTS].upload():
            stored = await _convert_upload(request)
    except BaseException as error:
        metrics.conversions.labels(status=str(outcome_status(request, error))).inc()
        metrics.count_stall(error)
        raise
    metrics.conversions.labels(status="201").inc()
    metrics.conversion_seconds.observe(time.perf_counter() - started)
    metrics.bytes_out.inc(stored[0].size)
    return stored


async def _convert_upload(request: web.Request) -> tuple[api.Record, URL]:
    settings = request.app[SETTINGS]
    links = link_base(request)  # a Host no link can be built from is refused before any work
    upload = await upload_from(request)
    # One transaction: record_begin checks the user and creates the large
    # object; a failure anywhere after it leaves neither behind.
    pool = request.app[POOL]
    async with (
        admitted(request, upload.credentials.user_id) as turn,
        api.transaction(pool, settings.stall_timeout_s) as connection,
    ):
        record = await store(connection, upload, request.app[CONVERTER], turn)
    return record, links


async def upload_from(request: web.Request) -> Upload:
    """The upload a POST states: who sends it, the options asked for, and its WAV.

    Everything a client can make us do before it is authenticated is bounded,
    credentials sent in headers are checked before a byte of the body is read,
    and a body that does not begin like a WAV is refused (415) before any wait
    for a slot."""
    settings = request.app[SETTINGS]
    body = PacedBody(request, pace_of(settings), settings.max_upload_bytes)
    from_headers = header_credentials(request)
    if from_headers is not None:
        await on_primary(request, lambda db: api.user_check(db, from_headers.user_id, from_headers.token))
    fields: dict[str, str] = {}
    boundary = multipart_boundary(request)
    if boundary is not None:
        form = MultipartForm(body, boundary)
        file_part = await form.fields_until_file(fields)
        if file_part is None:
            raise ApiError(400, "No file found: send the WAV as a multipart part with a filename.")
        filename, chunks = file_part.filename or DEFAULT_FILENAME, form.file_data()
        credentials = credentials_given(from_headers, fields)
        if from_headers is None:
            await on_primary(request, lambda db: api.user_check(db, credentials.user_id, credentials.token))
    elif request.content_type in WAV_TYPES:
        if from_headers is None:
            raise unauthorized()
        credentials = from_headers
        filename, chunks = request.query.get("filename") or DEFAULT_FILENAME, body.chunks()
    else:
        raise ApiError(
            415, "Send the WAV as a multipart/form-data file part, or as the body with Content-Type audio/wav."
        )
    options = encode_options_from(dict(request.query) | fields, settings.mp3_bitrate_kbps, filename)
    return Upload(credentials, filename, options, await sniffed(request.app[METRICS].received(chunks)))
