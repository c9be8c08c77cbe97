"""The documents against the code: the API document (/openapi.json), Swagger UI served
offline, the web page's files; and the Markdown documents: what they name exists, and
their examples print what they show (tests/documents.py runs them)."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import hdrs

from converter.wav import MAX_CHANNELS, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, NOT_A_WAV
from handlers.errors import ApiError
from handlers.page import VENDOR_PREFIX, VENDORED
from handlers.params import encode_options_from
from handlers.records import WAV_TYPES
from handlers.swagger import DOCS_ASSETS_PREFIX
from settings import ConfigError, Settings
from tests.database import MakeClient
from tests.documents import (
    DOCUMENTS,
    PROJECT_ROOTS,
    ExampleRun,
    Stage,
    anchors,
    blocks,
    code,
    examples,
    link_targets,
    named_files,
    named_paths,
    named_routes,
    named_sql,
    named_tests,
    named_variables,
    path_exists,
    project_files,
    project_tests,
    prose,
    steps,
    table_after,
)
from tests.support import (
    ROOT,
    Audio,
    Client,
    basic,
    decoded,
    expect_error,
    form,
    free_port,
    local,
    new_user,
    private_cluster,
    upload,
    wav_header,
)


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
        if method in {"get", "head", "post", "put", "delete", "patch", "options"}
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


async def test_every_reference_in_the_document_resolves(client: Client) -> None:
    """A $ref to nothing breaks the tools that read the document (code generators, validators,
    Swagger UI's own resolver) for the operation that holds it."""
    document = await (await client.get("/openapi.json")).json()

    def references(node: object) -> list[str]:
        if isinstance(node, dict):
            own = [node["$ref"]] if "$ref" in node else []
            return own + [ref for value in node.values() for ref in references(value)]
        if isinstance(node, list):
            return [ref for value in node for ref in references(value)]
        return []

    found = references(document)
    assert found
    for ref in found:
        assert ref.startswith("#/"), ref
        target: object = document
        for part in ref[2:].split("/"):
            assert isinstance(target, dict), f"{ref} passes through a value"
            assert part in target, f"{ref} points at nothing"
            target = target[part]


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
    """Everything the page loads comes from the service itself, tus-js-client with its licences."""
    page = await client.get("/")
    assert page.status == 200
    assert page.content_type == "text/html"
    html = await page.text()
    assets = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert all(asset.startswith("/") for asset in assets), assets  # nothing from another site
    assert f'src="{VENDOR_PREFIX}/tus.min.js"' in html
    assert html.index("tus.min.js") < html.index('src="/page.js"')  # tus is defined before page.js runs
    for asset in [*assets, *VENDORED]:
        response = await client.get(asset)
        assert response.status == 200, asset
        assert len(await response.read()) > 10, asset
    for vendored in VENDORED.values():
        assert (await client.get(f"/{vendored.path.name}")).status == 404  # only at its versioned path
    licence = await (await client.get(f"{VENDOR_PREFIX}/LICENSE")).text()
    assert licence.startswith("The MIT License")
    script = await (await client.get("/page.js")).text()
    assert "new tus.Upload(file, {" in script
    assert 'endpoint: "/uploads"' in script


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


async def test_the_statuses_name_the_wavs_and_the_credentials_the_service_refuses(client: Client, audio: Audio) -> None:
    """api.md's 422 row gives the reader's bounds (converter/wav.py); the 400 for credentials
    given twice, in headers and as form fields, is in its 400 row and in the API document."""
    statuses = {cells[0]: cells[1] for cells in table_after(ROOT / "docs/api.md", "## Statuses")}
    for bound in (f"more than {MAX_CHANNELS} channels", f"below {MIN_SAMPLE_RATE // 1000} kHz"):
        assert bound in statuses["422"]
    assert f"above {MAX_SAMPLE_RATE // 1000} kHz" in statuses["422"]
    user_id, token = await new_user(client)
    other_id, other_token = await new_user(client, "bob")
    twice = await client.post(
        "/record", data=form(audio(), user=other_id, token=other_token), headers=basic(user_id, token)
    )
    assert (await expect_error(twice, 400))[
        "message"
    ] == "Credentials were given twice, and differently: send them once."
    assert "credentials given twice and differently" in statuses["400"]
    described = (await document(client))["paths"]["/record"]["post"]["responses"]["400"]["description"]
    assert "credentials given twice and differently" in described


async def test_the_json_answers_outside_the_envelope_are_the_ones_api_md_names(client: Client) -> None:
    envelope = prose(ROOT / "docs/api.md").split("Every JSON answer", 1)[1].split("Credentials,", 1)[0]
    outside = {
        path
        for path, operations in (await document(client))["paths"].items()
        for operation in operations.values()
        for status, answer in operation["responses"].items()
        if status.startswith("2") and "application/json" in answer.get("content", {})
        if answer["content"]["application/json"]["schema"].get("required") != ["status", "data"]
    }
    assert {"/record/waveform", "/openapi.json", "/files.convert"} <= outside
    assert {
        path for path in outside if f"{path}`" not in envelope and path.rsplit("/", 1)[0] + "/`" not in envelope
    } == set()


async def test_the_user_query_parameter_is_required_where_leaving_it_out_is_refused(
    client: Client, audio: Audio
) -> None:
    """A download needs `user` (the link names it); deleting a record and its waveform take
    the credentials' user when the query names none: the document says which."""
    spec = await document(client)
    user_id, token = await new_user(client)
    stored = (await (await upload(client, (user_id, token), audio())).json())["data"]
    without_user = f"?id={stored['id']}"
    for method, path in (("get", "/record"), ("head", "/record"), ("get", "/record/waveform"), ("delete", "/record")):
        (parameter,) = [p for p in spec["paths"][path][method]["parameters"] if p["name"] == "user"]
        response = await client.request(method.upper(), path + without_user, headers=basic(user_id, token))
        assert response.status < 500, (method, path, response.status)
        assert parameter["required"] == (response.status == 400), (method, path, response.status)


async def test_only_operations_that_name_something_document_it_missing_or_gone(client: Client) -> None:
    """404 and 410 are answers about the record, upload or file a request names: an operation
    naming none (POST /uploads creates its upload) cannot give them."""
    wrong = [
        f"{method.upper()} {path}: {status}"
        for path, operations in (await document(client))["paths"].items()
        for method, operation in operations.items()
        for status in ("404", "410")
        if status in operation["responses"]
        and not any(parameter["in"] in {"path", "query"} for parameter in operation.get("parameters", []))
    ]
    assert wrong == []


# --- the Markdown documents against the repository -----------------------------------


def test_every_path_link_file_and_test_a_document_names_exists() -> None:
    missing = []
    for document in DOCUMENTS:
        where = document.relative_to(ROOT)
        missing += [f"{where}: {path}" for path in sorted(named_paths(document)) if not path_exists(path)]
        missing += [f"{where}: {name}" for name in sorted(named_files(document) - project_files())]
        missing += [f"{where}: {name}" for name in sorted(named_tests(document) - project_tests())]
        for target in link_targets(document):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            linked = (document.parent / file).resolve() if file else document
            if not linked.exists():
                missing.append(f"{where}: link {target}")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                missing.append(f"{where}: link {target}: no such heading")
    assert missing == []


def code_reading_variables() -> str:
    """Every file that reads the environment: the service, the apply command, the
    scripts, CI, the compose and Docker files, the benchmark and the tests."""
    files = [ROOT / "settings.py", ROOT / "db/apply.py", ROOT / ".ci/run", ROOT / ".env.example"]
    files += [*ROOT.glob("scripts/*"), *ROOT.glob("compose*.yaml"), *ROOT.glob("**/Dockerfile")]
    files += [*ROOT.glob("bench/*.py"), *ROOT.glob("tests/**/*.py"), *ROOT.glob("tests/pg_ctl_as_postgres")]
    files += [path for path in ROOT.glob("deploy/**/*") if path.is_file()]
    return "\n".join(path.read_text(encoding="utf-8") for path in files if path.name != "test_docs.py")


# Named in the documents, read by what the service runs on rather than by its code:
# Python's tempfile (where the download cache goes), the shell.
READ_BY_OTHERS = {"TMPDIR", "PATH"}
# Words in capitals that name no variable: SQL, HTTP, Dockerfile instructions, examples.
NOT_VARIABLES = {"AS", "DISABLE_PAGE_SKIPPING", "GET", "HEAD", "HEALTHCHECK", "IMMUTABLE", "LIST", "STABLE"}
NOT_VARIABLES |= {"STRASSE", "VOLATILE"}


def test_every_setting_or_variable_a_document_names_is_read_by_the_code() -> None:
    code = code_reading_variables()
    unknown = [
        f"{document.relative_to(ROOT)}: {name}"
        for document in DOCUMENTS
        for name in sorted(named_variables(document) - READ_BY_OTHERS - NOT_VARIABLES)
        if not re.search(rf"\b{name}\b", code)
    ]
    assert unknown == []


def settings_the_code_reads() -> set[str]:
    """What settings.py and the apply command read from the environment."""
    names = set(re.findall(r'"([A-Z][A-Z0-9_]+)"', (ROOT / "settings.py").read_text()))
    names |= set(re.findall(r'environ\.get\("([A-Z][A-Z0-9_]+)"', (ROOT / "db/apply.py").read_text()))
    return names


def test_the_settings_table_has_every_setting_the_code_reads() -> None:
    """One table of settings: a new one in settings.py is a new row there."""
    table = {cells[0].strip("`") for cells in table_after(ROOT / "docs/operations.md", "## Settings")}
    assert settings_the_code_reads() - table == set()
    assert "MIGRATE_DATABASE_URL" in table  # scripts/run's own
    compose_variables = set(re.findall(r"^([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.MULTILINE))
    assert compose_variables - named_variables(ROOT / "docs/operations.md") == set()


def test_the_settings_table_gives_the_largest_value_settings_py_takes() -> None:
    """Each numeric setting takes the largest value the table gives it (its row's, or the
    rule for durations above the table) and refuses the next."""
    operations = ROOT / "docs/operations.md"
    rows = {cells[0].strip("`"): cells[2] for cells in table_after(operations, "## Settings")}
    above_the_table = prose(operations).split("\n## Settings\n", 1)[1].split("\n|", 1)[0]
    (most_seconds,) = re.findall(r"\(`\*_S`\).*? at most (\d+)", above_the_table, re.DOTALL)
    numeric = re.findall(r'_(?:number|seconds)\(env, "([A-Z][A-Z0-9_]+)"', (ROOT / "settings.py").read_text())
    assert len(numeric) > 15
    valid = {"DATABASE_URL": "postgresql://mp3_service@localhost/mp3"}
    wrong = []
    for name in sorted(set(numeric) - {"MP3_BITRATE"}):  # its row lists LAME's rates
        stated = re.findall(r"at most (\d+)", rows[name], re.IGNORECASE) or (
            [most_seconds] if name.endswith("_S") else []
        )
        if len(stated) != 1:
            wrong.append(f"{name}: no bound in its row")
            continue
        Settings.from_env({**valid, name: stated[0]})
        with pytest.raises(ConfigError):
            Settings.from_env({**valid, name: str(int(stated[0]) + 1)})
    assert wrong == []


def test_every_variable_a_script_reads_is_in_the_scripts_table() -> None:
    scripts = "\n".join(path.read_text() for path in ROOT.glob("scripts/*"))
    read = set(re.findall(r"\$\{([A-Z][A-Z0-9_]+):?-", scripts))
    read |= set(re.findall(r'environ\.get\("([A-Z][A-Z0-9_]+)"', "\n".join(
        path.read_text() for path in [*ROOT.glob("bench/*.py"), *ROOT.glob("scripts/*.py"), *ROOT.glob("tests/**/*.py")]
    )))  # fmt: skip
    table = {
        name.strip("`")
        for cells in table_after(ROOT / "docs/development.md", "What they read, besides the service's settings:")
        for name in cells[0].split(", ")
    }
    assert read - {"HOME"} - table == set()


def test_every_api_function_and_app_object_a_document_names_exists() -> None:
    definitions = "\n".join(
        path.read_text() for path in [*ROOT.glob("db/migrations/*.sql"), *ROOT.glob("db/private/*.sql")]
    )
    missing = []
    for document in DOCUMENTS:
        for schema, name in sorted(named_sql(document)):
            exists = (
                (ROOT / "db/functions" / f"api.{name}.sql").exists()
                if schema == "api"
                else re.search(rf"CREATE (?:OR REPLACE )?(?:TABLE|VIEW|FUNCTION) app\.{name}\b", definitions)
                is not None
            )
            if not exists:
                missing.append(f"{document.relative_to(ROOT)}: {schema}.{name}")
    assert missing == []


async def test_every_route_a_document_names_is_served(client: Client) -> None:
    served = registered_routes(client)
    unknown = [
        f"{document.relative_to(ROOT)}: {method.upper()} {path}"
        for document in DOCUMENTS
        for method, path in sorted(named_routes(document))
        if (method, path) not in served
    ]
    assert unknown == []


def test_the_readme_gives_the_test_command_ci_runs() -> None:
    """CI runs "the test command README.md gives": the same line in both."""
    lines = (ROOT / ".ci/run").read_text().splitlines()
    ci_command = next(line for line in lines if "test command" in line and not line.startswith("#"))
    command = ci_command.split("#")[0].strip()
    assert command == "scripts/test"
    assert any(line.strip() == command for block in blocks(ROOT / "README.md") for line in block.text.splitlines())


def test_the_readme_layout_names_every_part_of_the_repository() -> None:
    layout = prose(ROOT / "README.md").split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    parts = {name for name in PROJECT_ROOTS if name not in {"README.md", ".gitignore", ".dockerignore"}}
    parts |= {f"scripts/{path.name}" for path in ROOT.glob("scripts/*")}
    parts |= {f"deploy/{path.name}" for path in ROOT.glob("deploy/*")}
    parts |= {f"db/{path.name}" for path in ROOT.glob("db/*") if path.is_dir() and path.name != "__pycache__"}
    named = {name.rstrip("/") for name in re.findall(r"`([^`]+)`", layout)} | set(re.findall(r"\]\(([^)#]+)", layout))
    assert {part for part in parts if not any(name == part or name.startswith(f"{part}/") for name in named)} == set()


CURL_OR_PSQL = re.compile(r"(?:^|[\s$|(])(?:curl|psql)\s", re.MULTILINE)


def test_every_curl_or_psql_block_is_run_or_says_why_not() -> None:
    unmarked = [
        f"{block.document.relative_to(ROOT)}:{block.line}"
        for document in DOCUMENTS
        for block in blocks(document)
        if CURL_OR_PSQL.search(block.text) and (block.info == "console") == (block.not_run is not None)
    ]
    assert unmarked == []


def env_example() -> dict[str, str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if re.match(r"[A-Z]", line))


def compose_file(name: str) -> tuple[set[str], set[str]]:
    """The services and profiles of a compose file."""
    text = (ROOT / name).read_text()
    services = re.findall(
        r"^  ([\w-]+):\s*$", text.split("\nservices:\n", 1)[1].split("\nvolumes:", 1)[0], re.MULTILINE
    )
    return set(services), set(re.findall(r'profiles: \["([\w-]+)"\]', text))


COMPOSE_FILES = ("compose.yaml", "compose.scale.yaml")


def compose_defaults(name: str) -> dict[str, set[str]]:
    """Each `${VARIABLE:-default}` of a compose file: the defaults it gives each variable."""
    defaults: dict[str, set[str]] = {}
    for variable, default in re.findall(r"\$\{([A-Z][A-Z0-9_]*):-([^}]*)\}", (ROOT / name).read_text()):
        defaults.setdefault(variable, set()).add(default)
    return defaults


def app_environment(name: str) -> set[str]:
    """The variables a compose file passes to its `app` service."""
    app = (ROOT / name).read_text().split("\n  app:\n", 1)[1]
    app = re.split(r"^  [\w-]+:\s*$", app, maxsplit=1, flags=re.MULTILINE)[0]
    environment = app.split("\n    environment:\n", 1)[1]
    return set(re.findall(r"^      ([A-Z][A-Z0-9_]*):", environment, re.MULTILINE))


def test_copying_the_env_example_keeps_every_compose_files_defaults() -> None:
    """`cp .env.example .env` (docs/operations.md) changes no setting of either stack:
    `${X:-default}` replaces only an empty value, so a value .env.example gives
    overrides each file's own default (MAX_UPLOADS=0 made the balancer's maxconn 0:
    no limit per replica)."""
    overridden = [
        f"{name}: {variable}={value} (its default: {', '.join(sorted(compose_defaults(name)[variable]))})"
        for variable, value in env_example().items()
        if value
        for name in COMPOSE_FILES
        if compose_defaults(name).get(variable, {value}) != {value}
    ]
    assert overridden == []


# Settings the compose files fix for the container (its address, the image's FFmpeg, the
# URLs built from the passwords) rather than offer to the operator.
FIXED_IN_CONTAINER = {"DATABASE_URL", "DATABASE_READ_URL", "HOST", "PORT", "FFMPEG_BINARY"}


def test_both_compose_files_pass_every_setting_the_env_example_offers() -> None:
    settings = set(re.findall(r'"([A-Z][A-Z0-9_]+)"', (ROOT / "settings.py").read_text())) - FIXED_IN_CONTAINER
    assert settings - env_example().keys() == set()
    missing = [
        f"{name}: {setting}"
        for name in COMPOSE_FILES
        for setting in sorted(settings - app_environment(name))
        # The read replica's lag bound means nothing in a stack without one.
        if not (setting == "REPLICA_MAX_LAG_S" and "DATABASE_READ_URL" not in app_environment(name))
    ]
    assert missing == []


def test_the_examples_not_run_name_what_the_compose_stack_has() -> None:
    env = env_example()
    logins = {(env["POSTGRES_USER"], env["POSTGRES_PASSWORD"]), ("mp3_service", env["SERVICE_ROLE_PASSWORD"])}
    wrong = []
    for document in DOCUMENTS:
        for block in blocks(document):
            if block.not_run is None:
                continue
            for user, password, port, database in re.findall(
                r"postgresql://(\w+):([\w-]+)@[\w.]+:(\d+)/(\w+)", block.text
            ):
                if (user, password) not in logins or port != env["DB_PORT"] or database != env["POSTGRES_DB"]:
                    wrong.append(f"{block.document.relative_to(ROOT)}:{block.line}: {user}@{port}/{database}")
            for user, database in re.findall(r"psql -U (\w+) -d (\w+)", block.text):
                if (user, database) != (env["POSTGRES_USER"], env["POSTGRES_DB"]):
                    wrong.append(f"{block.document.relative_to(ROOT)}:{block.line}: -U {user} -d {database}")
    assert wrong == []


def compose_commands(document: Path) -> Iterator[list[str]]:
    """Each `docker compose` command a document shows, as words."""
    for text in code(document):
        for line in text.splitlines():
            command = line.split("#")[0].split("docker compose", 1)
            words = shlex.split(command[1]) if len(command) == 2 else []
            if words:  # not `docker compose` named alone
                yield words


def test_every_docker_compose_command_names_files_services_and_profiles_that_exist() -> None:
    wrong = []
    for document in DOCUMENTS:
        for words in compose_commands(document):
            file, profiles_named, index = "compose.yaml", set(), 0
            while index < len(words) and words[index].startswith("-"):  # compose's own options
                if words[index] == "-f":
                    file = words[index + 1]
                elif words[index] == "--profile":
                    profiles_named.add(words[index + 1])
                index += 2
            subcommand, arguments = words[index], words[index + 1 :]
            services_named = {arguments[i + 1].split("=")[0] for i, word in enumerate(arguments) if word == "--scale"}
            operands = [word for i, word in enumerate(arguments) if not word.startswith("-") and (
                i == 0 or arguments[i - 1] != "--scale")]  # fmt: skip
            if subcommand in {"run", "exec"}:
                services_named |= set(operands[:1])  # then the command run in it
            elif subcommand in {"up", "logs", "stop", "start", "restart", "kill", "ps", "build"}:
                services_named |= set(operands)
            services, profiles = compose_file(file)
            if profiles_named - profiles or services_named - services:
                wrong.append(f"{document.relative_to(ROOT)}: docker compose {' '.join(words)}")
    assert wrong == []


# --- the Markdown documents' examples, run -------------------------------------------


@pytest.fixture(scope="module")
def readers_cluster() -> Iterator[tuple[dict[str, str], str]]:
    """The private cluster scripts/run makes in a fresh clone, for the examples."""
    with private_cluster() as cluster:
        yield cluster


@pytest.mark.slow
@pytest.mark.parametrize("document", list(examples()), ids=lambda document: str(document.relative_to(ROOT)))
def test_the_examples_print_what_the_document_shows(
    document: Path, readers_cluster: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    """Each document's examples in order, as a reader runs them after `scripts/run` in a
    fresh clone: a fresh database, a folder of their own (song.wav is made there)."""
    cluster_env, owner_url = readers_cluster
    with psycopg.connect(owner_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as administrator:
        administrator.execute("DROP DATABASE IF EXISTS mp3 WITH (FORCE)")
    clone = tmp_path / "clone"
    clone.mkdir()
    (clone / ".pgdata").symlink_to(cluster_env["PGDATA_ROOT"])
    ports = {8080: free_port(), 8081: free_port(), 54329: int(cluster_env["PGPORT"])}
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "LC_ALL": "C.UTF-8",
        "PSQLRC": "/dev/null",  # psql as installed, whatever the machine's user likes
        "PGDATA_ROOT": cluster_env["PGDATA_ROOT"],
        "PGPORT": cluster_env["PGPORT"],
        "HOST": "127.0.0.1",
        "PORT": str(ports[8080]),
    }
    run = ExampleRun(Stage(clone, ports, env))
    try:
        run.start_service(str(ROOT / "scripts/run"), [8080])
        run.run(steps(document))
    finally:
        run.close()
    assert run.failures == [], "\n\n".join(run.failures)


async def test_the_readmes_tuspy_example_uploads_a_wav(client: Client, audio: Audio, tmp_path: Path) -> None:
    """The README's Python block, run as written against this service with this test's user:
    it prints the record's link, whose MP3 plays every sample of the WAV."""
    (example,) = [block.text for block in blocks(ROOT / "README.md") if block.info == "python"]
    user_id, token = await new_user(client)
    replaced = {
        "http://localhost:8080": f"http://{client.host}:{client.port}",
        'user_id, token = 1, "1b88aeef-c5f0-4b64-aeea-35f8daa020a5"': f'user_id, token = {user_id}, "{token}"',
    }
    for shown, here in replaced.items():
        assert example.count(shown) == 1, shown
        example = example.replace(shown, here)
    (tmp_path / "song.wav").write_bytes(audio(seconds=5))
    (tmp_path / "example.py").write_text(example)
    run = await asyncio.create_subprocess_exec(
        sys.executable, "example.py", cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    async with asyncio.timeout(60):
        printed, _ = await run.communicate()
    assert run.returncode == 0, printed.decode()
    link = printed.decode().strip()
    assert link.startswith(f"http://{client.host}:{client.port}/record?id="), link
    mp3 = await (await client.get(local(link))).read()
    assert len(decoded(mp3, 2)) == 5 * 44100 * 2
