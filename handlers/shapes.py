"""How answers look: the success envelope, a record in JSON, and the download link that names it.

Success: {"status": "ok", "data": {...}} (errors: handlers/errors.py).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from yarl import URL

from db import api
from handlers.errors import ApiError
from service.keys import SETTINGS

WILDCARD = "0.0.0.0"  # noqa: S104 - compared against, never bound to
# RFC 3986 host (a name, IPv4, or [IPv6]) and optional port, as a Host header carries them.
HOST = re.compile(r"(?P<name>[A-Za-z0-9._-]+|\[(?P<ip6>[0-9A-Fa-f:.]+)\])(?::(?P<port>[0-9]{1,5}))?")


def ok(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"status": "ok", "data": data}, status=status, headers=headers)


def link_base(request: web.Request) -> URL:
    """Where download links point: PUBLIC_URL when set, else the host and port the
    client used (never 0.0.0.0). Checked before any work is done for the request,
    so a link can always be built once a record is stored; 400 for a Host that
    names no place a link could point to."""
    public = request.app[SETTINGS].public_url
    if public:
        return URL(public)
    host = request.host
    if host.startswith(WILDCARD):  # a client that dialled the wildcard address
        host = "localhost" + host[len(WILDCARD) :]
    match = HOST.fullmatch(host)
    if match is None or not 0 < int(match["port"] or 80) <= 65535 or not _valid_ip6(match["ip6"]):
        raise ApiError(400, "The Host header must be a host name or address, with a port from 1 to 65535.")
    return URL(f"{request.scheme}://{host}")


def _valid_ip6(text: str | None) -> bool:
    if text is None:
        return True
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def link(links: URL, path: str, **query: str | int) -> str:
    """A URL of this service under its link base (which may itself have a path)."""
    return str(links.with_path(links.path.rstrip("/") + path).with_query(query))


def record_url(links: URL, record_id: object, user_id: int) -> str:
    return link(links, "/record", id=str(record_id), user=user_id)


def record_json(links: URL, record: api.Record) -> dict[str, Any]:
    """A record as clients see it (RECORD_KEYS, in that order)."""
    return {
        "id": str(record.id),
        "user": record.user_id,
        "url": record_url(links, record.id, record.user_id),
        "filename": record.filename,
        "size": record.size,
        "duration": record.duration,
        "bitrate": record.bitrate,
        "sample_rate": record.sample_rate,
        "channels": record.channels,
        "created_at": record.created_at.isoformat(),
        "loudness": {  # to the hundredth: the measure agrees with others to a tenth
            "integrated": _hundredths(record.loudness),
            "range": _hundredths(record.loudness_range),
            "true_peak": _hundredths(record.true_peak),
        },
        "waveform": link(links, "/record/waveform", id=str(record.id), user=record.user_id)
        if record.has_waveform
        else None,
    }


def _hundredths(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


# What record_json gives, for the API document.
RECORD_KEYS = (
    "id", "user", "url", "filename", "size", "duration", "bitrate", "sample_rate", "channels", "created_at",
    "loudness", "waveform",
)  # fmt: skip
