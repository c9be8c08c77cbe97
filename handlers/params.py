"""Reading what a request says: ids, credentials, options. Each bad value is a 400."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from uuid import UUID

from aiohttp import BasicAuth, hdrs, web
from aiohttp.typedefs import Handler

from converter.mp3 import LAME_CBR_KBPS, MP3_SAMPLE_RATES
from converter.options import EncodeOptions
from handlers.errors import ApiError, unauthorized

# A token as api.user_check reads it: a UUID, hyphens optional, braces only in pairs.
TOKEN = re.compile(
    r"\{[0-9a-fA-F]{8}-?(?:[0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}\}|[0-9a-fA-F]{8}-?(?:[0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}"
)
# api.user_check's answer to an unknown user and to a wrong token alike.
WRONG_CREDENTIALS = "Unknown user or wrong token."
SECRET_PARAMETERS = ("token", "user_uuid")
MAX_BIGINT = 2**63 - 1
MAX_BIGINT_DIGITS = len(str(MAX_BIGINT))
TAG_FIELDS = ("title", "artist", "album")
MAX_TAG_CHARACTERS = 255
VBR_QUALITIES = tuple(range(10))  # LAME's -V: 0 best
CHANNEL_CHOICES = (1, 2)
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class Credentials:
    user_id: int
    token: str


def user_id_from(raw: str | None, name: str = "user") -> int:
    if raw is None or raw == "":
        raise ApiError(400, f"The parameter {name} (a user id) is required.")
    # The length first: int() of thousands of digits is refused by Python, and slow.
    if len(raw) > MAX_BIGINT_DIGITS or not raw.isascii() or not raw.isdigit() or not 0 < int(raw) <= MAX_BIGINT:
        raise ApiError(400, f"The parameter {name} must be a user id: a positive whole number.")
    return int(raw)


def record_id_from(raw: str | None, name: str = "id") -> UUID:
    if raw is None or raw == "":
        raise ApiError(400, f"The parameter {name} (a record id) is required.")
    try:
        return UUID(raw)
    except ValueError:
        raise ApiError(400, f"The parameter {name} must be a record id (a UUID).") from None


def page_size_from(raw: str | None) -> int:
    """GET /records?limit=: how many records a page holds."""
    if raw is None or raw == "":
        return DEFAULT_PAGE_SIZE
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4 and 1 <= int(raw) <= MAX_PAGE_SIZE):
        raise ApiError(400, f"The parameter limit must be a whole number from 1 to {MAX_PAGE_SIZE}.")
    return int(raw)


def header_credentials(request: web.Request) -> Credentials | None:
    """HTTP Basic (user id : token) or the older clients' headers user_id/user_uuid; None when neither is sent."""
    authorization = request.headers.get(hdrs.AUTHORIZATION, "")
    if authorization[:6].lower() == "basic ":
        try:
            basic = BasicAuth.decode(authorization, encoding="utf-8")
        except ValueError:  # not base64, not UTF-8, no colon
            raise unauthorized("The Authorization header is not valid Basic credentials.") from None
        return _credentials(basic.login, basic.password)
    if "user_id" in request.headers or "user_uuid" in request.headers:
        return _credentials(request.headers.get("user_id"), request.headers.get("user_uuid"))
    if authorization:
        raise unauthorized()
    return None


def credentials_from(request: web.Request) -> Credentials:
    """Credentials from the headers (401 without)."""
    return credentials_given(header_credentials(request), {})


def owners_credentials(request: web.Request, not_found: str) -> Credentials:
    """Credentials from the headers, for a record the query's ``user`` owns (theirs when it
    names none): another user's is 404 ``not_found``, as the api function answers a record
    that is not theirs."""
    credentials = credentials_from(request)
    if user_id_from(request.query.get("user", str(credentials.user_id))) != credentials.user_id:
        raise ApiError(404, not_found)
    return credentials


def credentials_given(from_headers: Credentials | None, fields: Mapping[str, str]) -> Credentials:
    """The headers' credentials, else the form fields user and token (multipart uploads);
    400 when both are given and differ."""
    given_as_fields = "user" in fields or "token" in fields
    if from_headers is None:
        if not given_as_fields:
            raise unauthorized()
        return _credentials(fields.get("user"), fields.get("token"))
    if given_as_fields and _credentials(fields.get("user"), fields.get("token")) != from_headers:
        raise ApiError(400, "Credentials were given twice, and differently: send them once.")
    return from_headers


def _credentials(user: str | None, token: str | None) -> Credentials:
    if not user or not token:
        raise unauthorized()
    user_id = user_id_from(user.strip())
    if not TOKEN.fullmatch(token.strip()):  # the same answer as a wrong token, without asking the database
        raise unauthorized(WRONG_CREDENTIALS)
    return Credentials(user_id, token.strip())


@web.middleware
async def refuse_tokens_in_urls(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A token in a URL ends up in proxy logs and browser history: refused wherever it appears."""
    if any(name in request.query for name in SECRET_PARAMETERS):
        raise ApiError(400, "Send the token in the Authorization header or a form field, never in the URL.")
    return await handler(request)


@web.middleware
async def refuse_encoded_paths(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A path is matched as it is sent: none of ours needs percent-encoding, so a path that
    has any (or a fragment) names no route. Decoded, POST /%72ecord would reach the uploads
    while the balancer, which routes on the path as sent, takes it for something else
    and passes it by the upload slots and their queue."""
    if request.rel_url.raw_path != request.path or "#" in request.raw_path:
        raise ApiError(404, "No such route: paths are matched as they are sent, with nothing percent-encoded.")
    return await handler(request)


def encode_options_from(values: Mapping[str, str], default_bitrate: int, filename: str) -> EncodeOptions:
    """bitrate (kbit/s, a LAME CBR rate) or quality (LAME's VBR -V 0-9), sample_rate (an MP3
    rate), channels (1 or 2), and title, artist, album for the ID3 tag."""
    bitrate = _choice(values, "bitrate", LAME_CBR_KBPS, "a LAME bit rate in kbit/s")
    quality = _choice(values, "quality", VBR_QUALITIES, "a LAME VBR quality, 0 (best) to 9")
    if bitrate is not None and quality is not None:
        raise ApiError(400, "Choose bitrate (constant) or quality (variable bit rate), not both.")
    return EncodeOptions(
        bitrate_kbps=bitrate or default_bitrate,
        vbr_quality=quality,
        sample_rate=_choice(values, "sample_rate", MP3_SAMPLE_RATES, "an MP3 sample rate in Hz"),
        channels=_choice(values, "channels", CHANNEL_CHOICES, "1 or 2"),
        tags={name: text for name in TAG_FIELDS if (text := _tag(values, name))},
        default_title=_printable(PurePosixPath(filename.replace("\\", "/")).stem)[:MAX_TAG_CHARACTERS] or None,
    )


def _printable(raw: str) -> str:
    return "".join(ch for ch in raw if ch.isprintable()).strip()


def _tag(values: Mapping[str, str], name: str) -> str | None:
    raw = values.get(name)
    if raw is None:
        return None
    text = _printable(raw)
    if len(text) > MAX_TAG_CHARACTERS:
        raise ApiError(400, f"The field {name} has at most {MAX_TAG_CHARACTERS} characters.")
    return text or None


def _choice(values: Mapping[str, str], name: str, allowed: tuple[int, ...], what: str) -> int | None:
    raw = values.get(name)
    if raw is None or raw.strip() == "":
        return None
    raw = raw.strip()
    value = int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 10 else None
    if value not in allowed:
        listed = ", ".join(map(str, allowed))
        raise ApiError(400, f"The option {name} must be {what}: one of {listed}.")
    return value
