"""GET /health: 200 when the database answers and FFmpeg is there, else 503."""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from handlers.errors import error_response, ok
from handlers.keys import POOL, SETTINGS

DATABASE_CHECK_TIMEOUT_S = 2.0


async def health(request: web.Request) -> web.Response:
    problems = []
    try:
        async with asyncio.timeout(DATABASE_CHECK_TIMEOUT_S):
            await request.app[POOL].fetchval("SELECT 1")
    except Exception:
        problems.append("the database does not answer")
    ffmpeg = request.app[SETTINGS].ffmpeg_binary
    if not os.access(ffmpeg, os.X_OK):
        problems.append("FFmpeg is missing")
    if problems:
        return error_response(503, f"Unhealthy: {'; '.join(problems)}.", {"Retry-After": "5"})
    return ok({"database": "ok", "ffmpeg": "ok"})
