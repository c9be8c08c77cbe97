"""The API document, Swagger UI served offline, and the web page's files."""

from __future__ import annotations

import re

from aiohttp import hdrs

from handlers.openapi import DOCS_ASSETS_PREFIX
from tests.support import Client, expect_error


def registered_routes(client: Client) -> set[tuple[str, str]]:
    """(method, path) of every route, a folder of static files as one `{filename}` path."""
    routes = set()
    for route in client.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter") or info.get("prefix", "") + "/{filename}"
        if path.startswith(DOCS_ASSETS_PREFIX + "/"):  # one of Swagger UI's files, as documented
            path = DOCS_ASSETS_PREFIX + "/{filename}"
        routes.add((route.method.lower(), path))
    return routes


async def test_every_registered_route_is_documented_and_nothing_else(client: Client) -> None:
    response = await client.get("/openapi.json")
    assert response.status == 200
    document = await response.json()
    assert document["openapi"].startswith("3.1")
    documented = {
        (method, path)
        for path, operations in document["paths"].items()
        for method in operations
        if method in {"get", "head", "post", "put", "delete", "patch"}
    }
    registered = registered_routes(client)
    # aiohttp adds HEAD beside every GET by itself; the document lists the HEADs that matter.
    assert documented - registered == set()
    assert {route for route in registered - documented if route[0] != hdrs.METH_HEAD.lower()} == set()


async def test_every_error_status_documented_uses_the_envelope(client: Client) -> None:
    document = await (await client.get("/openapi.json")).json()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if int(status) >= 400:
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (path, method, status)


async def test_swagger_ui_is_served_by_the_service_itself(client: Client) -> None:
    page = await client.get("/docs")
    assert page.status == 200
    html = await page.text()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets
    for asset in assets:
        assert asset.startswith("/docs/assets/"), asset  # nothing from a CDN
        response = await client.get(asset)
        assert response.status == 200, asset
        assert len(await response.read()) > 10
    await expect_error(await client.get("/docs/assets/..%2F..%2Fsettings.py"), 404)
    await expect_error(await client.get("/docs/assets/nope.js"), 404)


async def test_the_web_page_and_its_script_are_served(client: Client) -> None:
    page = await client.get("/")
    assert page.status == 200
    assert page.content_type == "text/html"
    assert 'src="/page.js"' in await page.text()
    script = await client.get("/page.js")
    assert script.status == 200
    assert "XMLHttpRequest" in await script.text()
