"""The one place errors become HTTP: the error envelope, and which status
each error answers.

Error: {"code": 404, "status": "not_found", "message": "...", "data": {}}.

The converter and the service's runtime raise errors in their own terms
(STATUS_OF below says what each answers); functions of the api schema choose
their status with a PTnnn SQLSTATE; PostgreSQL's own codes are mapped as
PostgREST maps them (SQLSTATE_CLASSES). Nothing else about an exception (its
text, a stack trace, SQL) ever reaches the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import re
import socket
import struct
from collections.abc import Mapping

import asyncpg
from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from converter.errors import (
    BadWav,
    ConversionError,
    ConversionStalled,
    ConversionTimedOut,
    NotAWav,
    RecordingTooLong,
)
from service.keys import BROKEN_OFF, SETTINGS, SLOTS
from service.slots import NoFreeSlot, ShuttingDown, TooManyOfYours, Unavailable

log = logging.getLogger(__name__)

RETRY_AFTER_S = "5"
# What a request whose client went away is counted as: its body ended early.
CLIENT_GONE = 400


class ResponseBroken(Exception):
    """A failure after the response's status line went out: no second answer can
    follow it, so the connection is ended and the client sees a short body."""

    def __init__(self, response: web.StreamResponse, cause: Exception, sent: int) -> None:
        super().__init__(str(cause))
        self.response = response
        self.cause = cause
        self.sent = sent  # body bytes written before it broke


class ClientNotReading(Exception):
    """A client that took none of a response's bytes for SEND_TIMEOUT_S: it is cut off."""


class ApiError(Exception):
    """An answer other than success, decided by a handler."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class BodyStopped(ApiError):
    """An answer another request set on this one's body stream (a newer PATCH of its upload:
    handlers/uploads.py): the body is not read on, and the connection is closed after it."""


def unauthorized(message: str = "Credentials are required: user id and token.") -> ApiError:
    return ApiError(401, message, {"WWW-Authenticate": 'Basic realm="mp3", charset="UTF-8"'})


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    body = {"code": status, "status": reason_of(status), "message": message, "data": {}}
    return web.json_response(body, status=status, headers=headers)


def reason_of(status: int) -> str:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "error"
    return re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_")


# The service's own errors and what they answer; the first class of an
# exception's MRO found here decides.
STATUS_OF: dict[type[Exception], int] = {
    NotAWav: 415,  # the bytes are no WAV at all
    BadWav: 422,  # a WAV whose header cannot describe audio to convert
    RecordingTooLong: 413,
    ConversionTimedOut: 422,
    ConversionStalled: 503,  # FFmpeg or the database stopped moving: not the upload's fault
    ConversionError: 422,  # FFmpeg could not encode what it was given
    NoFreeSlot: 503,
    TooManyOfYours: 503,
    ShuttingDown: 503,
}

# SQLSTATEs: PTnnn is the api functions' way to say "HTTP nnn" (PostgREST's
# convention); PostgreSQL's own codes, by class as PostgREST maps them.
BAD_VALUE = (400, "A value is malformed or out of range.")
UNAVAILABLE = (503, "The database is unavailable; try again shortly.")
SQLSTATE_CLASSES: dict[str, tuple[int, str]] = {
    "22": BAD_VALUE,  # data exception: malformed text, NUL bytes, out of range
    # Transaction rollback (a deadlock broken, a serialization failure): nothing of the
    # request was kept, and the same request again may well succeed.
    "40": (503, "The database had to undo this request's work to let another go on; try again."),
    "08": UNAVAILABLE,  # connection exception
    "53": UNAVAILABLE,  # insufficient resources
    "57": UNAVAILABLE,  # operator intervention (a shutdown)
}
SQLSTATES: dict[str, tuple[int, str]] = {
    "23502": BAD_VALUE,  # not null
    "23514": BAD_VALUE,  # check
    "23505": (409, "That already exists."),
}


def _from_postgres(error: asyncpg.PostgresError) -> ApiError:
    state = error.sqlstate or ""
    if re.fullmatch(r"PT\d{3}", state):
        status = int(state[2:])
        message = error.args[0] if error.args else reason_of(status)
        return unauthorized(message) if status == 401 else ApiError(status, message)
    status, message = SQLSTATES.get(state) or SQLSTATE_CLASSES.get(state[:2]) or (500, "Internal error.")
    return ApiError(status, message, {"Retry-After": RETRY_AFTER_S} if status == 503 else None)


def database_unavailable() -> ApiError:
    status, message = UNAVAILABLE
    return ApiError(status, message, {"Retry-After": RETRY_AFTER_S})


def outcome_status(request: web.Request, error: BaseException) -> int:
    """The status a request that ended with ``error`` answered, or would have answered had its
    client stayed: what the metrics count it as."""
    if isinstance(error, asyncio.CancelledError):
        # Cancelled: by the shutdown, or because the client went away mid-request.
        return 503 if request.app[SLOTS].draining else CLIENT_GONE
    return api_error_for(error).status


def api_error_for(error: BaseException) -> ApiError:
    """The answer an exception deserves (logging is the middleware's)."""
    if isinstance(error, ApiError):
        return error
    status = next((STATUS_OF[kind] for kind in type(error).__mro__ if kind in STATUS_OF), None)
    if status is not None:
        retry = {}
        if status == 503:
            retry["Retry-After"] = str(error.retry_after) if isinstance(error, Unavailable) else RETRY_AFTER_S
        return ApiError(status, str(error), retry)
    if isinstance(error, asyncpg.PostgresError):
        return _from_postgres(error)
    if isinstance(error, (asyncpg.InterfaceError, ConnectionRefusedError, socket.gaierror, TimeoutError)):
        return database_unavailable()
    if isinstance(error, (ConnectionResetError, ClientPayloadError, HttpProcessingError)):
        # The client went away or sent a broken body; it rarely hears this answer.
        return ApiError(CLIENT_GONE, "The request body ended before it was complete.")
    return ApiError(500, "Internal error.")


@web.middleware
async def error_envelope(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ResponseBroken as broken:
        if isinstance(broken.cause, ConnectionError):
            why, unexpected = "the client closed the connection", None
        elif isinstance(broken.cause, ClientNotReading):
            why, unexpected = str(broken.cause), None
        else:
            cause = api_error_for(broken.cause)
            why, unexpected = cause.message, (broken.cause if cause.status >= 500 else None)
        request[BROKEN_OFF] = f"after {broken.sent} bytes: {why}"
        log.warning("%s %s broke off %s", request.method, request.path, request[BROKEN_OFF], exc_info=unexpected)
        broken.response.force_close()
        _end_connection(request, at_once=isinstance(broken.cause, ClientNotReading))
        return broken.response
    except web.HTTPException as http_error:
        if http_error.status < 400:
            raise
        headers = {name: http_error.headers[name] for name in ("Allow", "Retry-After") if name in http_error.headers}
        text = http_error.text or ""
        message = http_error.reason if not text or text.startswith(f"{http_error.status}:") else text
        return error_response(http_error.status, _sentence(message), headers)
    except Exception as error:
        api_error = api_error_for(error)
        if isinstance(error, ConversionStalled):  # something hung: an operator must look
            log.error("%s %s answered 503: %s", request.method, request.path, error.detail)
        elif api_error.status in {503, 507}:  # the database or every slot busy, the storage full: not a bug
            log.warning("%s %s answered %d: %s", request.method, request.path, api_error.status, api_error.message)
        elif api_error.status >= 500:
            log.error("%s %s answered %d", request.method, request.path, api_error.status, exc_info=error)
        elif isinstance(error, ConversionError) and error.detail:  # FFmpeg's words: for the log, not the client
            log.warning(
                "%s %s answered %d; FFmpeg said: %s", request.method, request.path, api_error.status, error.detail
            )
        return error_response(api_error.status, api_error.message, api_error.headers)


def _end_connection(request: web.Request, at_once: bool) -> None:
    """Closed after what was sent, so the client sees a body shorter than announced;
    reset when that is not taken within SEND_TIMEOUT_S, or at once for a client that
    stopped reading."""
    transport = request.transport
    if transport is None:
        return
    if at_once:
        _reset(transport)
        return
    transport.close()
    asyncio.get_running_loop().call_later(request.app[SETTINGS].send_timeout_s, _reset, transport)


def _reset(transport: asyncio.Transport) -> None:
    """End a connection with a reset: a plain close leaves the kernel sending what
    it holds for minutes to a client that reads nothing; a reset frees it now."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.fileno() != -1:  # -1: closed already
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _sentence(text: str) -> str:
    text = text.strip() or "Error."
    return text if text.endswith(".") else f"{text}."
