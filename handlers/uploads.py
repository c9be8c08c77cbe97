"""Resumable uploads: the tus 1.0.0 protocol at /uploads (https://tus.io/protocols/resumable-upload),
extensions creation, creation-defer-length, expiration and termination.

POST /uploads creates an upload (its options and file name in Upload-Metadata);
each PATCH sends the WAV on from the upload's offset, and is converted as it
arrives, as POST /record's body is, unless it is too short to be worth it (its
bytes, with those the upload holds unconverted, come to 2 MiB at most:
app.upload_keeps_as_sent): those it keeps as sent, and the next PATCH that
converts begins with them. The offset is what is durable: the WAV's bytes whose
MP3 is committed in PostgreSQL (converter/resume.py) and those kept as sent; a
few seconds behind what was sent while a PATCH converts, its last byte once
the PATCH has answered, and it never goes back. Any replica can take the
next PATCH: everything it needs is in the upload's row. A PATCH takes the
upload over from any older one still running (handlers/store.py's
CheckpointedUpload: the older writes nothing more; in this process it also
stops reading: service/patches_at_work.py). When the last byte is in,
the MP3 becomes a record: the last PATCH's answer names it (Record-Location),
and GET /uploads/<id> answers it as POST /record does.

Credentials as for POST /record (Basic id:token, or the older headers), never
in a URL; another user's upload is 404, as a missing one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import email.utils
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg
from aiohttp import web
from yarl import URL

from converter.errors import SourcePaused
from converter.options import ConverterConfig, CpuShare, EncodeOptions
from converter.pipeline import convert
from converter.resume import CheckpointOfAnotherVersion, Resumable
from db import api
from db.deadline import within
from handlers.body import PacedBody, pace_of, too_large
from handlers.errors import RETRY_AFTER_S, ApiError, BodyStopped, outcome_status
from handlers.params import TAG_FIELDS, Credentials, credentials_from, encode_options_from
from handlers.reads import on_primary, read_fresh
from handlers.server import admitted
from handlers.shapes import link, link_base, ok, record_json, record_url
from handlers.store import CheckpointedUpload
from service.busy_uploads import HEAD_WAITS_S
from service.keys import BUSY_UPLOADS, CONVERTER, METRICS, PATCHES, POOL, SETTINGS, SLOTS
from service.slots import ConversionSlots
from settings import Settings

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,creation-defer-length,expiration,termination"
PATCH_TYPE = "application/offset+octet-stream"
# What Upload-Metadata may carry: POST /record's options and the file's name. Other
# keys (Uppy's filetype, say) are ignored.
METADATA_KEYS = ("filename", "bitrate", "quality", "sample_rate", "channels", *TAG_FIELDS)
MAX_METADATA_BYTES = 8192
METADATA_KEY = re.compile(r"[!-+\--~]+")  # printable ASCII but space and comma
MOST_OPEN_UPLOADS = 16  # a user's unfinished uploads at once
DIGITS = 19  # an offset or a length: a bigint at most
SETTLE_TIMEOUT_S = 5.0  # a PATCH's word that it is done, at most
BUSY_RENEWAL_S = 2.0  # a PATCH says it is still at work this often: its word holds 6 s (app.patch_busy_lease)

log = logging.getLogger("mp3.uploads")


class PatchEnded(SourcePaused):
    """A PATCH's body ended before the upload's end: what it brought is kept (converter/resume.py)."""


async def tus_options(request: web.Request) -> web.Response:
    """OPTIONS /uploads: what this server speaks (no credentials needed)."""
    return web.Response(status=204, headers=_discovery(request.app[SETTINGS]))


async def create_upload(request: web.Request) -> web.Response:
    """POST /uploads: a new upload; Location is where to send it."""
    _speaks_tus(request)
    settings = request.app[SETTINGS]
    credentials = credentials_from(request)
    length = _whole_number(request, "Upload-Length")
    deferred = request.headers.get("Upload-Defer-Length")
    if length is None and deferred != "1":
        raise ApiError(400, "Give the WAV's size in Upload-Length, or Upload-Defer-Length: 1 to give it later.")
    if length is not None and deferred is not None:
        raise ApiError(400, "Give Upload-Length or Upload-Defer-Length, not both.")
    if length is not None and length > settings.max_upload_bytes:
        raise _too_large(settings)
    if request.body_exists:  # a Content-Length above 0, or a chunked body
        raise ApiError(
            400, "Send the WAV in PATCH requests: a POST to /uploads carries no body (creation-with-upload)."
        )
    metadata = _metadata(request.headers.get("Upload-Metadata", ""))
    filename = metadata.pop("filename", "") or "recording.wav"
    encode_options_from(metadata, settings.mp3_bitrate_kbps, filename)  # 400 for a bad one, now
    upload_id, expires_at = await on_primary(request, lambda db: api.upload_create(
        db, credentials.user_id, credentials.token, filename, metadata, length,
        settings.upload_expiry_s, MOST_OPEN_UPLOADS,
    ))  # fmt: skip
    location = link(link_base(request), f"/uploads/{upload_id}")
    return web.Response(status=201, headers={"Location": location, "Upload-Expires": _http_date(expires_at)})


async def head_upload(request: web.Request) -> web.Response:
    """HEAD /uploads/<id>: how far it is (what is durable), never from a replica."""
    _speaks_tus(request)
    upload = await _once_no_patch_works_on(request)
    headers = {"Upload-Offset": str(upload.upload_offset), "Cache-Control": "no-store"}
    if upload.upload_length is None:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(upload.upload_length)
    if upload.record_id is None:
        headers["Upload-Expires"] = _http_date(upload.expires_at)
    return web.Response(status=200, headers=headers)


async def _once_no_patch_works_on(request: web.Request) -> api.ResumableUpload:
    """The upload once no PATCH is at work on it, or what is known of it HEAD_WAITS_S
    after the HEAD began. A client asks HEAD the moment its PATCH is cut off, while that
    PATCH, on this replica or another, is still storing what it brought (within the
    converter's grace): the offset to resume from is the one it leaves, not the one
    before it. The HEAD's own query checks its credentials, within the same deadline
    (503 past it: nothing is known); HEADs that then wait share the polls
    (service/busy_uploads.py)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HEAD_WAITS_S
    credentials = credentials_from(request)
    user_id, token, upload_id = credentials.user_id, credentials.token, _upload_id(request)
    pool = request.app[POOL]
    seen = await within(HEAD_WAITS_S, pool, lambda db: api.upload_open(db, user_id, token, upload_id))
    return await request.app[BUSY_UPLOADS].at_rest(pool, user_id, token, upload_id, seen, deadline)


async def get_upload(request: web.Request) -> web.Response:
    """GET /uploads/<id>: once finished, its record, as POST /record answers it."""
    upload = await _opened(request)
    record_id = upload.record_id
    if record_id is None:
        length = "an unknown number" if upload.upload_length is None else str(upload.upload_length)
        raise ApiError(409, f"The upload is not finished: {upload.upload_offset} of {length} bytes are in.")
    credentials = credentials_from(request)
    record = await read_fresh(request, lambda db: api.record_open(db, record_id, credentials.user_id))
    data = record_json(link_base(request), record)
    return ok(data, headers={"Location": data["url"], "Cache-Control": "no-store"})


async def delete_upload(request: web.Request) -> web.Response:
    """DELETE /uploads/<id> (termination): gone, with its MP3 so far."""
    _speaks_tus(request)
    credentials = credentials_from(request)
    upload_id = _upload_id(request)
    await on_primary(request, lambda db: api.upload_delete(db, credentials.user_id, credentials.token, upload_id))
    return web.Response(status=204)


async def patch_upload(request: web.Request) -> web.Response:
    """PATCH /uploads/<id>: the WAV on from the upload's offset, converted as it arrives (a
    short one's kept as sent)."""
    _speaks_tus(request)
    if request.content_type != PATCH_TYPE:
        raise ApiError(415, f"Send a PATCH's body as {PATCH_TYPE}.")
    offset = _whole_number(request, "Upload-Offset")
    if offset is None:
        raise ApiError(400, "A PATCH needs Upload-Offset: the upload's offset, as HEAD answers it.")
    length = _whole_number(request, "Upload-Length")  # an upload that deferred its length gives it now
    settings = request.app[SETTINGS]
    if length is not None and length > settings.max_upload_bytes:
        raise _too_large(settings)
    credentials = credentials_from(request)
    links = link_base(request)  # a Host no link can be built from is refused before any work
    metrics = request.app[METRICS]
    async with request.app[SLOTS].upload():
        try:
            response = await _patched(request, credentials, offset, length, links)
        except BaseException as error:
            metrics.upload_patches.labels(status=str(outcome_status(request, error))).inc()
            metrics.count_stall(error)
            raise
    metrics.upload_patches.labels(status=str(response.status)).inc()
    return response


async def _patched(
    request: web.Request, credentials: Credentials, offset: int, length: int | None, links: URL
) -> web.Response:
    settings, pool = request.app[SETTINGS], request.app[POOL]
    upload_id = _upload_id(request)
    # Shielded: a PATCH cancelled while it claims (its client left at once) must still learn
    # the claim's generation to settle it. Cancelled, asyncpg would ask PostgreSQL to cancel
    # the claim, which undoes nothing once it has committed, its answer still on the way.
    # Within STALL_TIMEOUT_S all the same: a claim never answered leaves its mark to lapse.
    claiming = asyncio.ensure_future(
        within(settings.stall_timeout_s, pool, lambda db: api.upload_claim(
            db, credentials.user_id, credentials.token, upload_id, offset, length, settings.upload_expiry_s,
            request.content_length,
        ))
    )  # fmt: skip
    try:
        claim = await asyncio.shield(claiming)
        with request.app[PATCHES].at_work(upload_id, claim.generation, lambda: _taken_over(request)):
            return await _converted(request, credentials, upload_id, claim, offset, links)
    finally:
        await _settled(pool, upload_id, claiming)


def _taken_over(request: web.Request) -> None:
    """A newer PATCH took the upload over (service/patches_at_work.py): this one answers what
    its checkpoints would at its next read of the body, at once if it waits for a silent client."""
    request.content.set_exception(BodyStopped(423, "Another request now writes this upload.", {"Connection": "close"}))


async def _settled(pool: asyncpg.Pool, upload_id: UUID, claiming: asyncio.Future[api.Claim]) -> None:
    """The PATCH no longer at work on the upload (api.upload_settled), once its claim has
    answered (at once, but for a PATCH cancelled while claiming). A claim refused changed
    nothing; one that never answers, or a settle that fails, leaves the mark to lapse
    within app.patch_busy_lease(). Each of the two waits is at most SETTLE_TIMEOUT_S; the
    settle's is bounded by within, as every call on the pool is (around a plain pool call,
    asyncio.timeout gives up only once asyncpg's cancel is answered, which a frozen server
    never does: db/deadline.py)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(SETTLE_TIMEOUT_S):
            claim = await claiming
        await within(SETTLE_TIMEOUT_S, pool, lambda db: api.upload_settled(db, upload_id, claim.generation))


async def _converted(
    request: web.Request, credentials: Credentials, upload_id: UUID, claim: api.Claim, offset: int, links: URL
) -> web.Response:
    """The PATCH's body converted on from the claimed upload's last checkpoint, or kept as
    sent when its claim says it is too short to be worth converting."""
    settings, pool = request.app[SETTINGS], request.app[POOL]
    if claim.record_id is not None:  # finished already: a PATCH at its end, with nothing more
        return _progressed(offset, settings, record_url(links, claim.record_id, credentials.user_id))
    total = claim.upload_length
    if total is None:
        body = PacedBody(request, pace_of(settings), settings.max_upload_bytes - offset, lambda: _too_large(settings))
    else:
        body = PacedBody(request, pace_of(settings), total - offset, lambda: _past_its_length(total, offset))
    source = _PatchBody(body, request.app[METRICS].received(body.chunks()), offset, total)
    working = _saying_busy(pool, upload_id, claim.generation, source)
    if claim.keeps_as_sent:  # too short to be worth converting (app.upload_keeps_as_sent)
        async with working, admitted(request, credentials.user_id):
            return _progressed(await _appended(pool, upload_id, claim, source, settings), settings)
    options = encode_options_from(claim.options, settings.mp3_bitrate_kbps, claim.filename)
    try:
        store = CheckpointedUpload(pool, upload_id, claim, settings.upload_expiry_s, settings.stall_timeout_s)
    except CheckpointOfAnotherVersion as error:
        raise await _cannot_go_on(pool, settings, credentials, upload_id, error) from None
    source.when_whole = store.all_in
    resumable = await store.resumable()
    ends_upload = total is not None and request.content_length == total - offset
    async with working, admitted(request, credentials.user_id) as turn, store.copied(ends_upload):
        storing = asyncio.ensure_future(_stored(store, source, options, request.app[CONVERTER], turn, resumable))
        record = await _to_its_end_once_the_body_ended(storing, source, request.app[SLOTS])
    if record is None:
        if not store.header_stored:
            raise ApiError(400, "Send the WAV's whole header in the first PATCH: its samples' format must be known.")
        return _progressed(store.committed, settings)
    assert total is not None  # the body ended at it
    request.app[METRICS].bytes_out.inc(record.size)
    return _progressed(total, settings, record_url(links, record.id, credentials.user_id))


async def _cannot_go_on(
    pool: asyncpg.Pool, settings: Settings, credentials: Credentials, upload_id: UUID, why: CheckpointOfAnotherVersion
) -> ApiError:
    """The answer for an upload whose last checkpoint this version cannot go on from
    (converter/resume.py VERSION). One an earlier version wrote never can be gone on from:
    it is deleted and answered 410, so that its client's next HEAD hears 404 and the upload
    is begun anew (the page does so once the file is chosen again); kept, every PATCH of it
    failed 500 until it expired, holding its MP3 against the user's quota. One a newer
    version wrote, a process of that version can go on with (a rolling deploy, a rollback):
    503, kept, for the client to try again, through a balancer perhaps to another process."""
    if why.newer:
        log.warning("an upload's last checkpoint is of a newer version (%s): left for a process of it", why)
        return ApiError(503, "This upload was last written by a newer version of the service: try again shortly.",
                        {"Retry-After": RETRY_AFTER_S, "Connection": "close"})  # fmt: skip
    await within(settings.stall_timeout_s, pool, lambda db: api.upload_delete(
        db, credentials.user_id, credentials.token, upload_id
    ))  # fmt: skip
    log.warning("an upload could not go on from its last checkpoint (%s): it was deleted", why)
    message = (
        "This upload was begun by an earlier version of the service and cannot go on:"
        " create a new upload and send the file from its start."
    )
    return ApiError(410, message, {"Connection": "close"})


async def _appended(pool: asyncpg.Pool, upload_id: UUID, claim: api.Claim, body: _PatchBody, settings: Settings) -> int:
    """The PATCH's bytes kept as sent, at the upload's offset: the offset after them. What
    came before its client went or failed to keep pace is kept too, as a conversion keeps it.
    It holds an upload place meanwhile, as a conversion does: its body is in memory until it
    ends, up to 2 MiB, and without a place one account could hold that on every connection."""
    piece = bytearray()

    def appending() -> Awaitable[None]:
        return within(settings.stall_timeout_s, pool, lambda db: api.upload_append(
            db, upload_id, claim.generation, body.offset, piece, settings.upload_expiry_s
        ))  # fmt: skip

    try:
        async for chunk in body.chunks():
            piece += chunk
    except PatchEnded:
        pass
    except BaseException:
        if piece:
            with contextlib.suppress(Exception):  # the PATCH's own failure is what its client hears
                await asyncio.shield(appending())
        raise
    if piece:  # shielded: a client that leaves after its last byte has sent them all
        await asyncio.shield(appending())
    return body.offset + len(piece)


@contextlib.asynccontextmanager
async def _saying_busy(pool: asyncpg.Pool, upload_id: UUID, generation: int, body: _PatchBody) -> AsyncIterator[None]:
    """While the block runs, the PATCH renews its word that it is at work on the upload (which
    HEAD waits on, and which holds 6 s) every BUSY_RENEWAL_S in which bytes of its ``body``
    came, or after that body ended (it stores the rest). Its checkpoints renew it too, but only as
    the MP3 grows: every 8 s at 32 kb/s sent in real time. A client that pauses gets no
    renewal: HEAD would wait for an offset that cannot move. A renewal that fails is tried
    again at the next; one that comes after the PATCH settled changes nothing
    (api.upload_busy), so the task is cancelled, not waited for."""

    async def renew() -> None:
        seen = body.body.received
        while True:
            await asyncio.sleep(BUSY_RENEWAL_S)
            if body.body.received == seen and not body.ended:
                continue
            seen = body.body.received
            with contextlib.suppress(Exception):  # a renewal later than BUSY_RENEWAL_S is no use
                await within(BUSY_RENEWAL_S, pool, lambda db: api.upload_busy(db, upload_id, generation))

    renewing = asyncio.ensure_future(renew())
    try:
        yield
    finally:
        renewing.cancel()


class _PatchBody:
    """The PATCH's bytes; PatchEnded at their end unless they end the upload. ``ended`` once
    no more are read, however they ended (at their end, or the client gone)."""

    def __init__(self, body: PacedBody, wav: AsyncIterator[bytes], offset: int, total: int | None) -> None:
        self.body = body  # how many bytes it brought
        self.wav = wav  # its bytes, as counted for /metrics
        self.offset = offset
        self.total = total
        self.ended = False
        self.when_whole: Callable[[], None] = lambda: None  # once its last byte, the upload's, is in

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.wav:
                yield chunk
        finally:
            self.ended = True
        if self.total is None or self.offset + self.body.received < self.total:
            raise PatchEnded
        self.when_whole()


async def _stored(
    store: CheckpointedUpload,
    body: _PatchBody,
    options: EncodeOptions,
    config: ConverterConfig,
    turn: CpuShare,
    resumable: Resumable,
) -> api.Record | None:
    """The body converted on from the last checkpoint: the record, once it ends the upload;
    None when it ends before (what it brought is kept, converter/resume.py)."""
    try:
        converted = await convert(body.chunks(), store.sink, options, config, turn, resumable)
    except PatchEnded:
        return None
    return await store.finish(converted)


async def _to_its_end_once_the_body_ended(
    storing: asyncio.Future[api.Record | None], body: _PatchBody, slots: ConversionSlots
) -> api.Record | None:
    """What ``storing`` gives. A PATCH cancelled while its body still arrives (its client
    gone), or by the service stopping, cancels it: it keeps what it can within its grace
    (converter/resume.py), as the shutdown expects. Cancelled once its body has ended by
    anything else (its client left after its last byte, before the answer), it runs to its
    end, bounded as any conversion is: every byte is here, and the client finds the upload
    finished when it asks HEAD rather than back at its last checkpoint. A second
    cancellation (the service stopping meanwhile) cancels it all the same."""
    try:
        return await asyncio.shield(storing)
    except asyncio.CancelledError:
        if not body.ended or slots.draining:
            storing.cancel()
        with contextlib.suppress(Exception):  # its failure reaches no one: the PATCH is cancelled
            await storing
        raise


def _progressed(offset: int, settings: Settings, record_link: str | None = None) -> web.Response:
    """A PATCH's answer: the upload's offset now, and once finished its record's link."""
    headers = {"Upload-Offset": str(offset), "Cache-Control": "no-store"}
    if record_link is None:
        expires = datetime.now(UTC) + timedelta(seconds=settings.upload_expiry_s)
        headers["Upload-Expires"] = _http_date(expires)
    else:
        headers["Record-Location"] = record_link
    return web.Response(status=204, headers=headers)


async def _opened(request: web.Request) -> api.ResumableUpload:
    credentials = credentials_from(request)
    upload_id = _upload_id(request)
    return await on_primary(request, lambda db: api.upload_open(db, credentials.user_id, credentials.token, upload_id))


def _upload_id(request: web.Request) -> UUID:
    try:
        return UUID(request.match_info["id"])
    except ValueError:
        raise ApiError(404, "No such upload.") from None


def _speaks_tus(request: web.Request) -> None:
    version = request.headers.get("Tus-Resumable")
    if version != TUS_VERSION:
        raise ApiError(412, f"This server speaks tus {TUS_VERSION}: send Tus-Resumable: {TUS_VERSION}.",
                       {"Tus-Version": TUS_VERSION})  # fmt: skip


def _whole_number(request: web.Request, name: str) -> int | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= DIGITS):
        raise ApiError(400, f"{name} must be a whole number of bytes.")
    return int(raw)


def _metadata(header: str) -> dict[str, str]:
    """Upload-Metadata: comma-separated `key base64value` pairs (tus 1.0.0); the known keys."""
    if len(header) > MAX_METADATA_BYTES:
        raise ApiError(400, f"Upload-Metadata is longer than {MAX_METADATA_BYTES} bytes.")
    found: dict[str, str] = {}
    for pair in filter(None, (item.strip() for item in header.split(","))):
        key, _, encoded = pair.partition(" ")
        if not METADATA_KEY.fullmatch(key) or key in found:
            raise ApiError(400, "Upload-Metadata must be comma-separated pairs of a key and its base64 value.")
        try:
            value = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise ApiError(400, f"Upload-Metadata's {key} is not base64 of UTF-8 text.") from None
        if key in METADATA_KEYS:
            found[key] = value
    return found


def _discovery(settings: Settings) -> dict[str, str]:
    return {
        "Tus-Resumable": TUS_VERSION,
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": TUS_EXTENSIONS,
        "Tus-Max-Size": str(settings.max_upload_bytes),
    }


def _too_large(settings: Settings) -> ApiError:
    error = too_large(settings.max_upload_bytes)
    error.headers["Tus-Max-Size"] = str(settings.max_upload_bytes)
    return error


def _past_its_length(length: int, offset: int) -> ApiError:
    """413 for a PATCH that would take the upload past its Upload-Length (a Content-Length
    beyond it, or more bytes than that)."""
    message = f"The PATCH goes past the upload's length: {length - offset} of its {length} bytes remain from {offset}."
    return ApiError(413, message, {"Connection": "close"})


def _http_date(moment: datetime) -> str:
    return email.utils.format_datetime(moment.astimezone(UTC), usegmt=True)


async def tus_resumable(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every answer under /uploads says the protocol's version, errors too."""
    if request.path == "/uploads" or request.path.startswith("/uploads/"):
        response.headers["Tus-Resumable"] = TUS_VERSION
