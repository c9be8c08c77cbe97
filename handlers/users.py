"""POST /users: create a user, show the token once. GET /users/me: who the
credentials name, and what they store."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

from aiohttp import web

from db import api
from handlers.body import MultipartForm, PacedBody, multipart_boundary, pace_of
from handlers.errors import ApiError
from handlers.params import credentials_from
from handlers.reads import on_primary, read_fresh
from handlers.shapes import ok
from service.keys import SETTINGS

# The longest username api.user_create accepts (the rule is the SQL's; this is for the API document).
MAX_USERNAME_CHARACTERS = 64
# A name, and room for JSON or a form around it.
MAX_BODY_BYTES = 64 * 1024
SIGNUP_CLOSED = "Sign-up is closed on this service: an administrator creates accounts."


async def create_user(request: web.Request) -> web.Response:
    user = await new_user(request)
    return ok({"id": user.id, "username": user.username, "token": str(user.token)}, status=201)


async def current_user(request: web.Request) -> web.Response:
    """Also how a client signs in: a wrong pair is the same 401 as anywhere."""
    credentials = credentials_from(request)
    storage = await read_fresh(request, lambda db: api.user_storage(db, credentials.user_id, credentials.token))
    return ok(
        {
            "id": credentials.user_id,
            "username": storage.username,
            "records": storage.records,
            "bytes": storage.bytes,
            "quota_bytes": storage.quota_bytes,
            "uploading_bytes": storage.uploading_bytes,
        }
    )


async def new_user(request: web.Request) -> api.NewUser:
    """The user the request's body names, created; refused, before the body is read, while
    sign-up is closed (SIGNUP=closed: accounts are free, so only closing them bounds how
    many quotas there are to fill)."""
    if not request.app[SETTINGS].open_signup:
        raise ApiError(403, SIGNUP_CLOSED)
    name = await _username_from(request)
    return await on_primary(request, lambda db: api.user_create(db, name))


async def _username_from(request: web.Request) -> str:
    body = PacedBody(request, pace_of(request.app[SETTINGS]), MAX_BODY_BYTES)
    value: object
    boundary = multipart_boundary(request)
    if boundary is not None:
        value = (await MultipartForm(body, boundary).all_fields()).get("username")
    else:
        raw = await body.read_all()
        # curl -d '{"username": ...}' labels JSON as a urlencoded form: the body decides.
        if request.content_type == "application/x-www-form-urlencoded" and not raw.lstrip().startswith(b"{"):
            value = _form_username(raw)
        else:
            value = _json_username(raw)
    if not isinstance(value, str):
        raise ApiError(400, 'A username is required: {"username": "alice"}.')
    return value


def _form_username(raw: bytes) -> object:
    try:  # raw or percent-encoded, the name must be UTF-8: replaced bytes would name someone else
        return _last(parse_qs(raw.decode("utf-8"), errors="strict").get("username"))
    except UnicodeDecodeError:
        raise ApiError(400, "The username must be UTF-8 text.") from None


def _json_username(raw: bytes) -> object:
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: [[[[... nested past Python's stack
        raise ApiError(400, 'The body must be JSON like {"username": "alice"}.') from None
    return body.get("username") if isinstance(body, dict) else None


def _last(values: list[str] | None) -> str | None:
    return values[-1] if values else None
