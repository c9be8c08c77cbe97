"""How a record looks in JSON, and the download link that names it."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web
from yarl import URL

from handlers.keys import SETTINGS

WILDCARD = "0.0.0.0"  # noqa: S104 - compared against, never bound to


def record_url(request: web.Request, record_id: object, user_id: int) -> str:
    """PUBLIC_URL when set, else the host and port the client used (never 0.0.0.0)."""
    public = request.app[SETTINGS].public_url
    if public:
        base = URL(public)
    else:
        host = request.host
        if host.startswith(WILDCARD):  # a client that dialled the wildcard address
            host = "localhost" + host[len(WILDCARD) :]
        base = URL(f"{request.scheme}://{host}")
    return str(base.with_path(base.path.rstrip("/") + "/record").with_query(id=str(record_id), user=user_id))


def record_json(request: web.Request, row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "user": row["user_id"],
        "url": record_url(request, row["id"], row["user_id"]),
        "filename": row["filename"],
        "size": row["size"],
        "duration": row["duration"],
        "bitrate": row["bitrate"],
        "sample_rate": row["sample_rate"],
        "channels": row["channels"],
        "created_at": row["created_at"].isoformat(),
    }
