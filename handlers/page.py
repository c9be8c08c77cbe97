"""GET / (the web page), /page.js and /page.css: plain files, no build step; and the
third-party script the page uploads with (tus-js-client), vendored as published.

Every page and script is served with headers that keep it to itself: no
framing by other sites, no inline script or style, no sniffing of types.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

STATIC = Path(__file__).resolve().parent / "static"
PAGE = (STATIC / "page.html").read_text(encoding="utf-8")
SCRIPT = (STATIC / "page.js").read_text(encoding="utf-8")
STYLE = (STATIC / "page.css").read_text(encoding="utf-8")

# tus-js-client's browser bundle as npm publishes it (its README beside it says how to
# refresh it), with its licences: served from here, so the page needs no other site.
TUS_JS_CLIENT = "tus-js-client-4.3.1"
VENDOR_PREFIX = f"/vendor/{TUS_JS_CLIENT}"


@dataclass(frozen=True)
class Vendored:
    """One third-party file the service serves at its path."""

    path: Path
    media_type: str
    summary: str  # for the API document


VENDORED = {
    f"{VENDOR_PREFIX}/{name}": Vendored(STATIC / "vendor" / TUS_JS_CLIENT / name, media_type, summary)
    for name, media_type, summary in (
        ("tus.min.js", "text/javascript", "tus-js-client 4.3.1, the resumable-upload client the web page uses"),
        ("tus.min.js.map", "application/json", "tus-js-client's source map, for a browser's developer tools"),
        ("LICENSE", "text/plain", "tus-js-client's licence (MIT)"),
        ("THIRD-PARTY-LICENSES", "text/plain", "The licences of the packages tus-js-client's bundle holds"),
    )
}

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


def setup_vendored(app: web.Application) -> None:
    """A route for each vendored file, read once: its path names its version, so it never changes."""
    for route, vendored in VENDORED.items():
        app.router.add_get(route, _vendored_handler(vendored))


def _vendored_handler(vendored: Vendored) -> Handler:
    body = vendored.path.read_bytes()
    headers = {"Cache-Control": "public, max-age=31536000, immutable"}

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=vendored.media_type, charset="utf-8", headers=headers)

    return serve


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every answer is what its type says; HTML cannot be framed or run inline code."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    if response.content_type == "text/html":
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Frame-Options"] = "DENY"
        # Download links carry a record's secret id: never in a Referer to elsewhere.
        response.headers["Referrer-Policy"] = "same-origin"
