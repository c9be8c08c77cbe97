"""GET /docs: Swagger UI for /openapi.json, its files served by the service itself (from
the swagger-ui-py package), so the page works with no network and under the page's CSP."""

from __future__ import annotations

from pathlib import Path

import swagger_ui
from aiohttp import web
from aiohttp.typedefs import Handler

SWAGGER_ASSETS = Path(swagger_ui.__file__).resolve().parent / "static"
DOCS_ASSETS_PREFIX = "/docs/assets"
DOCS_INIT_PATH = DOCS_ASSETS_PREFIX + "/docs-init.js"

DOCS_PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>MP3 converter API</title>
<link rel="stylesheet" href="{DOCS_ASSETS_PREFIX}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{DOCS_ASSETS_PREFIX}/swagger-ui-bundle.js"></script>
<script src="{DOCS_INIT_PATH}"></script>
</body>
</html>
"""

# Kept out of the page so the page needs no inline script.
DOCS_INIT = 'window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});\n'


async def docs(request: web.Request) -> web.Response:
    return web.Response(text=DOCS_PAGE, content_type="text/html")


async def docs_init(request: web.Request) -> web.Response:
    return web.Response(text=DOCS_INIT, content_type="text/javascript")


def setup_swagger_assets(app: web.Application) -> None:
    """A route for each of Swagger UI's files, served by aiohttp's FileResponse.

    Not app.router.add_static: it answers a missing file with an empty 404,
    where every error of the service is in the JSON envelope; and with no path
    parameter there is nothing to traverse out of the folder with."""
    for path in sorted(SWAGGER_ASSETS.iterdir()):
        if path.is_file():
            app.router.add_get(f"{DOCS_ASSETS_PREFIX}/{path.name}", _file_handler(path))


def _file_handler(path: Path) -> Handler:
    async def serve(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(path, headers={"Cache-Control": "public, max-age=86400"})

    return serve
