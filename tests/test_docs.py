"""The API document, Swagger UI served offline, and the web page's files."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from aiohttp import hdrs

from converter.wav import NOT_A_WAV
from handlers.errors import ApiError
from handlers.openapi import DOCS_ASSETS_PREFIX
from handlers.params import encode_options_from
from handlers.records import WAV_TYPES
from tests.conftest import MakeClient
from tests.support import ROOT, Audio, Client, basic, expect_error, new_user, upload, wav_header


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


async def test_the_page_refuses_a_non_wav_in_the_services_own_words(client: Client) -> None:
    """The page checks a dropped file before sending it: its message is the service's."""
    script = await (await client.get("/page.js")).text()
    assert f'const NOT_A_WAV = "{NOT_A_WAV}";' in script


async def test_the_page_reads_the_options_where_the_document_has_them(make_client: MakeClient) -> None:
    """page.js fills its option lists from this path of /openapi.json, the default bit rate
    being this service's MP3_BITRATE."""
    client = await make_client(mp3_bitrate_kbps=128)
    options = (await document(client))["paths"]["/record"]["post"]["requestBody"]["content"]["multipart/form-data"]
    properties = options["schema"]["properties"]
    assert {"bitrate", "quality", "sample_rate", "channels", "title", "artist", "album"} <= set(properties)
    assert properties["bitrate"]["default"] == 128
    script = await (await client.get("/page.js")).text()
    assert '.paths["/record"].post.requestBody.content["multipart/form-data"].schema.properties' in script


# --- the document against the code: each kind of drift it once had -------------------


async def document(client: Client) -> dict[str, Any]:
    body: dict[str, Any] = await (await client.get("/openapi.json")).json()
    return body


async def test_the_raw_body_media_types_are_the_ones_the_service_takes(client: Client, audio: Audio) -> None:
    upload_body = (await document(client))["paths"]["/record"]["post"]["requestBody"]["content"]
    raw_types = set(upload_body) - {"multipart/form-data"}
    assert raw_types == WAV_TYPES
    user_id, token = await new_user(client)
    for media in sorted(raw_types):
        response = await client.post("/record", data=audio(), headers={**basic(user_id, token), "Content-Type": media})
        assert response.status == 201, (media, await response.text())
    refused = await client.post(
        "/record", data=audio(), headers={**basic(user_id, token), "Content-Type": "audio/x-aiff"}
    )
    await expect_error(refused, 415)
    api_page = (ROOT / "docs/api.md").read_text()
    assert all(f"`{media}`" in api_page for media in raw_types)


async def test_the_documented_limits_are_the_enforced_ones(client: Client) -> None:
    spec = await document(client)
    longest = spec["components"]["schemas"]["NewUser"]["properties"]["username"]["maxLength"]
    assert (await client.post("/users", json={"username": "n" * longest})).status == 201
    await expect_error(await client.post("/users", json={"username": "m" * (longest + 1)}), 400)

    options = spec["paths"]["/record"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    for name in ("bitrate", "sample_rate", "channels"):
        for value in options[name]["enum"]:
            encode_options_from({name: str(value)}, 192, "a.wav")  # accepted
        with pytest.raises(ApiError):
            encode_options_from({name: str(max(options[name]["enum"]) + 1)}, 192, "a.wav")
    for value in range(options["quality"]["minimum"], options["quality"]["maximum"] + 1):
        encode_options_from({"quality": str(value)}, 192, "a.wav")
    with pytest.raises(ApiError):
        encode_options_from({"quality": str(options["quality"]["maximum"] + 1)}, 192, "a.wav")
    for tag in ("title", "artist", "album"):
        encode_options_from({tag: "t" * options[tag]["maxLength"]}, 192, "a.wav")
        with pytest.raises(ApiError):
            encode_options_from({tag: "t" * (options[tag]["maxLength"] + 1)}, 192, "a.wav")


async def test_a_records_keys_are_the_documented_ones(client: Client, audio: Audio) -> None:
    schema = (await document(client))["components"]["schemas"]["Record"]
    data = (await (await upload(client, await new_user(client), audio())).json())["data"]
    assert list(data) == schema["required"] == list(schema["properties"])


async def test_every_status_a_route_answers_is_documented_for_it(make_client: MakeClient, audio: Audio) -> None:
    """Each route, asked the ways that make it answer each of its statuses."""
    client = await make_client(max_upload_bytes=1 << 20)
    spec = await document(client)
    user_id, token = await new_user(client)
    auth = basic(user_id, token)
    wav = audio()
    stored = (await (await upload(client, (user_id, token), wav)).json())["data"]
    record = f"id={stored['id']}&user={user_id}"
    missing = f"id={uuid.uuid4()}&user={user_id}"
    wav_body = {**auth, "Content-Type": "audio/wav"}
    big = {**wav_body, "Content-Length": str(2 << 20)}
    asked: list[tuple[str, str, Any]] = [
        ("post", "/users", client.post("/users", json={"username": "doc-user"})),
        ("post", "/users", client.post("/users", json={"username": "doc-user"})),
        ("post", "/users", client.post("/users", data=b"{", headers={"Content-Type": "application/json"})),
        ("post", "/users", client.post("/users", data=b"x" * 70000, headers={"Content-Type": "application/json"})),
        ("post", "/users", client.post("/users", json={}, headers={"Content-Encoding": "gzip"})),
        ("post", "/users.create", client.post("/users.create", json={"username": "doc-legacy"})),
        ("post", "/users.create", client.post("/users.create", json={"username": ""})),
        ("post", "/record", client.post("/record", data=wav, headers=wav_body)),
        ("post", "/record", client.post("/record", data=wav, headers={"Content-Type": "audio/wav"})),
        ("post", "/record", client.post("/record?bitrate=1", data=wav, headers=wav_body)),
        ("post", "/record", client.post("/record", data=b"not a wav at all", headers=wav_body)),
        ("post", "/record", client.post("/record", data=wav_header(), headers=wav_body)),
        ("post", "/record", client.post("/record", data=wav, headers=big)),
        ("post", "/files.convert", client.post("/files.convert", data=wav, headers=wav_body)),
        ("post", "/files.convert", client.post("/files.convert", data=wav, headers={"Content-Type": "audio/wav"})),
        ("get", "/record", client.get(f"/record?{record}")),
        ("get", "/record", client.get(f"/record?{record}", headers={"Range": "bytes=0-9"})),
        ("get", "/record", client.get(f"/record?{record}", headers={"Range": "bytes=99999999-"})),
        ("get", "/record", client.get(f"/record?{record}", headers={"If-None-Match": "*"})),
        ("get", "/record", client.get(f"/record?{missing}")),
        ("get", "/record", client.get("/record?id=nope&user=1")),
        ("head", "/record", client.head(f"/record?{record}")),
        ("get", "/files.record", client.get(f"/files.record?record_id={stored['id']}&user_id={user_id}")),
        ("get", "/files.record", client.get("/files.record?record_id=nope&user_id=1")),
        ("get", "/records", client.get("/records", headers=auth)),
        ("get", "/records", client.get("/records")),
        ("get", "/records", client.get("/records", headers={**auth, "Host": "x:99999"})),
        ("delete", "/record", client.delete(f"/record?{missing}", headers=auth)),
        ("delete", "/record", client.delete(f"/record?{record}")),
        ("delete", "/record", client.delete("/record?id=nope", headers=auth)),
        ("delete", "/record", client.delete(f"/record?{record}", headers=auth)),
        ("get", "/health", client.get("/health")),
        ("get", "/ready", client.get("/ready")),
        ("get", "/metrics", client.get("/metrics")),
        ("get", "/docs/assets/{filename}", client.get("/docs/assets/swagger-ui.css")),
    ]
    for method, path, call in asked:
        status = str((await call).status)
        assert status in spec["paths"][path][method]["responses"], (method, path, status)
