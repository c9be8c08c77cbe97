"""One envelope for every answer, and the one place errors become HTTP.

Success: {"status": "ok", "data": {...}}.
Error: {"code": 404, "status": "not_found", "message": "...", "data": {}}.

Functions of the api schema choose their status with a PTnnn SQLSTATE;
PostgreSQL's own codes are mapped as PostgREST maps them. Nothing else about
an exception (its text, a stack trace, SQL) ever reaches the client.
"""

from __future__ import annotations

import http
import logging
import re
import socket
from collections.abc import Mapping
from typing import Any

import asyncpg
from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from converter.pipeline import ConversionError
from converter.slots import NoFreeSlot, ShuttingDown
from handlers.keys import BROKEN_OFF

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


class ApiError(Exception):
    """An answer other than success, decided by a handler."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def unauthorized(message: str = "Credentials are required: user id and token.") -> ApiError:
    return ApiError(401, message, {"WWW-Authenticate": 'Basic realm="mp3", charset="UTF-8"'})


def ok(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"status": "ok", "data": data}, status=status, headers=headers)


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    body = {"code": status, "status": reason_of(status), "message": message, "data": {}}
    return web.json_response(body, status=status, headers=headers)


def reason_of(status: int) -> str:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "error"
    return re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_")


# PostgreSQL's own SQLSTATEs that are the client's doing (PostgREST's table):
# class 22 is "data exception" (malformed text, NUL bytes, out of range...).
_BAD_INPUT_CLASSES = {"22"}
_BAD_INPUT = {"23502", "23514"}


def _from_postgres(error: asyncpg.PostgresError) -> ApiError:
    state = error.sqlstate or ""
    if re.fullmatch(r"PT\d{3}", state):
        status = int(state[2:])
        message = error.args[0] if error.args else reason_of(status)
        return unauthorized(message) if status == 401 else ApiError(status, message)
    if state == "23505":
        return ApiError(409, "That already exists.")
    if state in _BAD_INPUT or state[:2] in _BAD_INPUT_CLASSES:
        return ApiError(400, "A value is malformed or out of range.")
    if state[:2] in {"08", "53", "57"}:
        return database_unavailable()
    return ApiError(500, "Internal error.")


def database_unavailable() -> ApiError:
    return ApiError(503, "The database is unavailable; try again shortly.", {"Retry-After": RETRY_AFTER_S})


def api_error_for(error: BaseException) -> ApiError:
    """The answer an exception deserves (logging is the middleware's)."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, (NoFreeSlot, ShuttingDown)):
        return ApiError(503, str(error), {"Retry-After": str(error.retry_after)})
    if isinstance(error, ConversionError):
        return ApiError(error.status, str(error))
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
        else:
            cause = api_error_for(broken.cause)
            why, unexpected = cause.message, (broken.cause if cause.status >= 500 else None)
        request[BROKEN_OFF] = f"after {broken.sent} bytes: {why}"
        log.warning("%s %s broke off %s", request.method, request.path, request[BROKEN_OFF], exc_info=unexpected)
        broken.response.force_close()
        if request.transport is not None:
            request.transport.close()  # after what was sent: the client sees a body shorter than announced
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
        if api_error.status >= 500:
            log.error("%s %s answered %d", request.method, request.path, api_error.status, exc_info=error)
        elif isinstance(error, ConversionError) and error.detail:  # FFmpeg's words: for the log, not the client
            log.warning(
                "%s %s answered %d; FFmpeg said: %s", request.method, request.path, api_error.status, error.detail
            )
        return error_response(api_error.status, api_error.message, api_error.headers)


def _sentence(text: str) -> str:
    text = text.strip() or "Error."
    return text if text.endswith(".") else f"{text}."
