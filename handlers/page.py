"""GET / (the web page) and GET /page.js (its script): plain files, no build step."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

HERE = Path(__file__).resolve().parent
PAGE = (HERE / "page.html").read_text(encoding="utf-8")
SCRIPT = (HERE / "page.js").read_text(encoding="utf-8")


async def page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


async def page_script(request: web.Request) -> web.Response:
    return web.Response(text=SCRIPT, content_type="text/javascript")
