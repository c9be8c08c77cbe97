"""GET / (the web page), /page.js and /page.css: plain files, no build step.

Every page and script is served with headers that keep it to itself: no
framing by other sites, no inline script or style, no sniffing of types.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).resolve().parent / "static"
PAGE = (STATIC / "page.html").read_text(encoding="utf-8")
SCRIPT = (STATIC / "page.js").read_text(encoding="utf-8")
STYLE = (STATIC / "page.css").read_text(encoding="utf-8")

# Scripts, styles and fetches from this origin only (Swagger UI's icons are
# data: images; recordings play from this origin); no frames, no plugins.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


async def page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


async def page_script(request: web.Request) -> web.Response:
    return web.Response(text=SCRIPT, content_type="text/javascript")


async def page_style(request: web.Request) -> web.Response:
    return web.Response(text=STYLE, content_type="text/css")


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every answer is what its type says; HTML cannot be framed or run inline code."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    if response.content_type == "text/html":
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Frame-Options"] = "DENY"
        # Download links carry a record's secret id: never in a Referer to elsewhere.
        response.headers["Referrer-Policy"] = "same-origin"
