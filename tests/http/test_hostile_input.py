"""Hostile input over HTTP: WAVs and requests that lie, every parameter fuzzed, forms
bent every way, inputs that once gave a 500. Nothing stored, nothing leaked, never a 5xx."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import struct
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers import server
from tests.database import MakeClient
from tests.support import (
    Audio,
    Client,
    RawAnswer,
    answer_of,
    basic,
    expect_error,
    form,
    local,
    multipart_head,
    new_user,
    nothing_stored,
    probe,
    raw_request,
    upload,
    wav_header,
)

PASSWD = Path("/etc/passwd").read_bytes()


# --- WAVs and requests that lie ---------------------------------------------------


async def test_sizes_that_overstate_the_data_convert_what_is_there(client: Client, audio: Audio) -> None:
    """Decided: a WAV cut short (a crashed recorder, a partial copy) converts the audio it has."""
    wav = audio(seconds=2, channels=1)
    data_start = wav.index(b"data") + 8
    lying = bytearray(wav)
    lying[data_start - 4 : data_start] = struct.pack("<I", 100 * len(wav))  # claims 100 times more
    lying[4:8] = struct.pack("<I", 100 * len(wav))
    user = await new_user(client)
    response = await upload(client, user, bytes(lying))
    assert response.status == 201, await response.text()
    data = (await response.json())["data"]
    assert data["duration"] == pytest.approx(2.0, abs=0.01)
    assert probe(await (await client.get(local(data["url"]))).read())["duration"] == pytest.approx(2.0, abs=0.05)


def list_chunk(size: int) -> bytes:
    return b"LIST" + struct.pack("<I", size) + b"INFO" + bytes(size - 4)


async def test_a_large_list_chunk_before_the_format_is_read_past(client: Client, audio: Audio) -> None:
    wav = audio(seconds=1)
    padded = wav[:4] + struct.pack("<I", len(wav) + 2_000_008) + wav[8:12] + list_chunk(2_000_000) + wav[12:]
    response = await upload(client, await new_user(client), padded)
    assert response.status == 201, await response.text()
    assert (await response.json())["data"]["duration"] == pytest.approx(1.0, abs=0.01)


async def test_a_huge_list_chunk_hiding_the_format_is_refused(
    client: Client, audio: Audio, admin: psycopg.Connection
) -> None:
    """Decided: the `fmt ` chunk must come in the first 16 MiB; FFmpeg never starts otherwise."""
    wav = audio(seconds=1)
    padded = wav[:12] + list_chunk(17 << 20) + wav[12:]
    body = await expect_error(await upload(client, await new_user(client), padded), 422)
    assert "16 MiB" in body["message"]
    assert nothing_stored(admin)


@pytest.mark.parametrize("kind", ["hls-playlist", "ffconcat"])
async def test_no_byte_of_a_referenced_local_file_ever_leaks(
    client: Client, admin: psycopg.Connection, kind: str
) -> None:
    passwd = PASSWD
    payloads = {
        "hls-playlist": b"#EXTM3U\n#EXTINF:10,\n/etc/passwd\n",
        "ffconcat": b"ffconcat version 1.0\nfile '/etc/passwd'\n",
    }
    # Even dressed as a WAV, with the playlist where the samples should be.
    disguised = wav_header(data_size=len(payloads[kind])) + payloads[kind]
    user = await new_user(client)
    for payload in (payloads[kind], disguised):
        response = await upload(client, user, payload)
        assert response.status in (201, 415, 422)
        text = await response.read()
        assert passwd[:16] not in text
        assert b"root:" not in text
    stored = admin.execute("SELECT coalesce(string_agg(data, ''::bytea), '') FROM pg_largeobject").fetchone()
    assert stored is not None
    assert passwd[:16] not in bytes(stored[0])


async def test_multipart_without_its_closing_boundary_is_refused_and_leaves_nothing(
    client: Client, audio: Audio, admin: psycopg.Connection
) -> None:
    user = await new_user(client)
    body = (
        b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\n" + audio()
    )  # and no closing --b0undary--
    answer = await raw_request(client, multipart_head("b0undary", len(body), user), body)
    status = int(answer.split()[1])
    assert 400 <= status < 500, answer[:200]
    assert b'"code"' in answer
    assert nothing_stored(admin)


async def test_a_file_part_before_the_credentials_is_401(
    client: Client, audio: Audio, admin: psycopg.Connection
) -> None:
    user_id, token = await new_user(client)
    data = form(audio())  # the file first...
    data.add_field("user", str(user_id))  # ...then the credentials, too late
    data.add_field("token", token)
    await expect_error(await client.post("/record", data=data), 401)
    assert nothing_stored(admin)


@pytest.mark.parametrize(
    ("raw_name", "stored_name"),
    [
        (b"caf\xe9.wav", "caf\ufffd.mp3"),  # Latin-1, not UTF-8
        (b"../../etc/cron.d/evil.wav", "evil.mp3"),
        (b"C:\\\\Users\\\\x\\\\song.wav", "song.mp3"),  # backslashes escaped, as in any quoted-string
        (b"n" * 1000 + b".wav", "n" * 255 + ".mp3"),
        (b"say %22hi%22.wav", 'say \\"hi\\".mp3'),  # a browser's %22 for a quote in the name
    ],
    ids=["non-utf8", "slashes", "backslashes", "very-long", "browser-quote"],
)
async def test_file_names_of_every_kind_become_safe_download_names(
    client: Client, audio: Audio, raw_name: bytes, stored_name: str
) -> None:
    user = await new_user(client)
    body = (
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="' + raw_name + b'"\r\n'
        b"Content-Type: audio/wav\r\n\r\n" + audio() + b"\r\n--xyz--\r\n"
    )
    answer = await raw_request(client, multipart_head("xyz", len(body), user), body)
    assert answer.startswith(b"HTTP/1.1 201"), answer[:300]
    assert f'"filename": "{stored_name}"'.encode() in answer.replace(b"\\ufffd", "\ufffd".encode())


# --- every parameter, fuzzed ---------------------------------------------------------

text = st.text(max_size=80) | st.sampled_from(
    ["", "-1", "0", str(2**63), str(2**64), "1e3", " 1", "1;DROP TABLE app.users", "' OR 1=1 --", "\x00",
     "00000000-0000-0000-0000-000000000000", str(uuid.uuid4()), "../../etc/passwd", "%00", "😀"]
)  # fmt: skip


@pytest.mark.slow  # sixty requests of every kind
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=text, second=text, third=text, route=st.integers(min_value=0, max_value=8))
async def test_no_parameter_of_any_endpoint_causes_a_5xx(
    client: Client, first: str, second: str, third: str, route: int
) -> None:
    def header(value: str) -> str:
        printable = "".join(ch for ch in value.encode("utf-8").decode("latin-1") if ch.isprintable())
        return printable[:200]

    requests: list[Any] = [
        lambda: client.get("/record", params={"id": first, "user": second}),
        lambda: client.head("/record", params={"id": first, "user": second}),
        lambda: client.get("/files.record", params={"record_id": first, "user_id": second}),
        lambda: client.delete("/record", params={"id": first, "user": second}, headers=basic(header(second), third)),
        lambda: client.get("/records", headers={"user_id": header(first), "user_uuid": header(second)}),
        lambda: client.post("/users", json={"username": first}),
        lambda: client.post("/users.create", data={"username": first}),
        lambda: client.post("/record", params={"bitrate": third}, data=form(b"RIFF", user=first, token=second)),
        lambda: client.get("/record", headers={"Range": header(first), "If-None-Match": header(second)}),
    ]
    response = await requests[route]()
    assert response.status < 500, (route, first, second, third, await response.text())
    if response.status >= 400 and response.method != "HEAD":
        await expect_error(response, response.status)


# --- forms ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/users", "/users.create", "/record", "/files.convert"])
async def test_multipart_without_a_boundary_is_400(client: Client, path: str) -> None:
    response = await client.post(path, data=b'{"username": "x"}', headers={"Content-Type": "multipart/form-data"})
    await expect_error(response, 400)


async def test_form_fields_are_bounded_in_size_and_number(
    client: Client, audio: Audio, admin: psycopg.Connection
) -> None:
    user_id, token = await new_user(client)
    huge = form(audio(), user=user_id, token=token, note="x" * (8 << 20))  # an 8 MiB "field"
    body = await expect_error(await client.post("/record", data=huge), 400)
    assert "longer than" in body["message"]

    many = form(audio(), user=user_id, token=token, **{f"f{n}": "1" for n in range(100)})
    body = await expect_error(await client.post("/record", data=many), 400)
    assert "At most" in body["message"]
    assert nothing_stored(admin)


# --- inputs that once gave a 500 -------------------------------------------------------

HUGE_NUMBER = "9" * 5000  # past Python's 4300-digit limit for int()
NO_RECORD = "00000000-0000-0000-0000-000000000000"
USERNAME_PART = b'--B\r\nContent-Disposition: form-data; name="username"\r\n'
LONG_BOUNDARY = "b" * 71


def raw(target: str, headers: dict[str, str] | None = None, body: bytes = b"", content_type: str = "") -> bytes:
    """A request as bytes, exactly as given (headers as UTF-8, as a careless client sends them)."""
    method = "POST" if body or content_type else "GET"
    lines = [f"{method} {target} HTTP/1.1", "Host: x", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if content_type:
        lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def users_form(body: bytes, content_type: str = "multipart/form-data; boundary=B") -> bytes:
    return raw("/users", body=body, content_type=content_type)


ONCE_500 = {
    "huge user id in the query": raw(f"/record?id={NO_RECORD}&user={HUGE_NUMBER}"),
    "huge user id in Basic": raw(
        "/records", {"Authorization": "Basic " + base64.b64encode(f"{HUGE_NUMBER}:{NO_RECORD}".encode()).decode()}
    ),
    "nested JSON": raw("/users", body=b"[" * 60000, content_type="application/json"),
    "multipart never closed": users_form(USERNAME_PART + b"\r\nann\r\n"),
    "multipart value not UTF-8": users_form(USERNAME_PART + b"\r\n\xff\xfeann\r\n--B--\r\n"),
    "part charset unknown": users_form(
        USERNAME_PART + b"Content-Type: text/plain; charset=nope\r\n\r\nann\r\n--B--\r\n"
    ),
    "body charset unknown": users_form(
        USERNAME_PART + b"\r\nann\r\n--B--\r\n", "multipart/form-data; boundary=B; charset=nope"
    ),
    "boundary twice": users_form(
        USERNAME_PART + b"\r\nann\r\n--B--\r\n", "multipart/form-data; boundary=B; boundary=C"
    ),
    "boundary not ASCII": users_form("--é\r\n".encode(), "multipart/form-data; boundary=é"),
    "boundary too long": users_form(
        f"--{LONG_BOUNDARY}\r\n".encode(), f"multipart/form-data; boundary={LONG_BOUNDARY}"
    ),
    "gzip that is not": raw(
        "/users", {"Content-Encoding": "gzip"}, b'{"username": "ann"}', content_type="application/json"
    ),
}


@pytest.mark.parametrize("request_bytes", ONCE_500.values(), ids=ONCE_500.keys())
async def test_inputs_that_once_gave_500_are_refused_in_the_envelope(client: Client, request_bytes: bytes) -> None:
    answer = await raw_request(client, request_bytes)
    status = int(answer.split()[1])
    assert status in (400, 413, 415), answer[:400]
    assert b'"code": %d' % status in answer


@pytest.mark.parametrize("path", ["/record", "/files.convert", "/users"])
async def test_a_boundary_longer_than_70_characters_is_400_on_every_multipart_route(
    client: Client, audio: Audio, path: str
) -> None:
    user_id, token = await new_user(client)
    fields = {"user": str(user_id), "token": token, "username": "ann"}
    body = b"".join(
        f'--{LONG_BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    )
    if path != "/users":
        body += f'--{LONG_BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'.encode()
        body += audio() + b"\r\n"
    body += f"--{LONG_BOUNDARY}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={LONG_BOUNDARY}"}
    await expect_error(await client.post(path, data=body, headers=headers), 400)


@pytest.mark.parametrize("host", ["x:99999", "[::1", "x:-1", "x:0", "[zz::1]"])
async def test_a_host_no_link_can_point_to_is_400_before_anything_is_stored(
    client: Client, audio: Audio, admin: psycopg.Connection, host: str
) -> None:
    """Decided: the link is checked before the upload begins, so a bad Host can never
    turn a stored record into a failure the client would retry (and store twice)."""
    user = await new_user(client)
    data = form(audio(), user=user[0], token=user[1])
    await expect_error(await client.post("/record", data=data, headers={"Host": host}), 400)
    await expect_error(await client.get("/records", headers={**basic(*user), "Host": host}), 400)
    assert nothing_stored(admin)


@pytest.mark.parametrize("path", ["/record", "/users"])
async def test_any_content_encoding_is_415_before_the_body_is_read(client: Client, audio: Audio, path: str) -> None:
    """Decided: bodies are taken as sent; a gzip of a WAV would be work per byte without bound."""
    user_id, token = await new_user(client)
    response = await client.post(
        path,
        data=audio(),
        headers={**basic(user_id, token), "Content-Type": "audio/wav", "Content-Encoding": "gzip"},
    )
    body = await expect_error(response, 415)
    assert "Content-Encoding" in body["message"]


@pytest.mark.parametrize("header", [f"bytes={HUGE_NUMBER}-", f"bytes=0-{HUGE_NUMBER}", f"bytes=-{HUGE_NUMBER}"])
async def test_a_range_of_any_length_is_answered_without_a_500(client: Client, audio: Audio, header: str) -> None:
    data = (await (await upload(client, await new_user(client), audio())).json())["data"]
    response = await client.get(local(data["url"]), headers={"Range": header})
    if header.startswith(f"bytes={HUGE_NUMBER}"):  # starts past the end: RFC 9110 says 416
        await expect_error(response, 416)
    else:  # to the end, or the whole file
        assert response.status in (200, 206)
        assert len(await response.read()) == data["size"]


# --- requests a balancer and the service could read apart -------------------------------


@pytest.mark.parametrize("path", ["/%72ecord", "/re%63ord", "/files%2Econvert", "/record#x"])
async def test_a_route_spelled_with_percent_encoding_or_a_fragment_is_no_route(
    client: Client, audio: Audio, admin: psycopg.Connection, path: str
) -> None:
    """HAProxy routes on the path as sent: POST /%72ecord went to its writes backend, by
    the upload slots and their queue, while aiohttp decoded it into an upload."""
    wav = audio()
    auth = "".join(f"{name}: {value}\r\n" for name, value in basic(*await new_user(client)).items())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\nContent-Length: {len(wav)}\r\n{auth}"
        "Connection: close\r\n\r\n"
    )  # as sent: the test client would tidy the path up
    answer = await raw_request(client, head.encode(), wav)
    head_answered, _, body = answer.partition(b"\r\n\r\n")
    assert head_answered.split()[1] == b"404", answer[:300]
    assert b"percent-encoded" in body
    assert nothing_stored(admin)


async def test_an_expectation_other_than_100_continue_is_417_in_the_envelope_with_its_id_and_log_line(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mp3.access")
    head = b"POST /users HTTP/1.1\r\nHost: x\r\nExpect: foo\r\nX-Request-Id: expects-1\r\nContent-Length: 2\r\n\r\n"
    answer = await raw_request(client, head, b"{}")
    status_line, _, rest = answer.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert status_line.split()[1] == b"417", answer[:300]
    assert b"Content-Type: application/json" in headers
    assert b"X-Request-Id: expects-1" in headers
    assert json.loads(body)["status"] == "expectation_failed"
    logged = [line for line in caplog.records if line.name == "mp3.access"]
    assert [(line.path, line.status, line.request_id) for line in logged] == [  # type: ignore[attr-defined]
        ("/users", 417, "expects-1")
    ]

    # The one expectation met: 100 Continue before the body is sent, then the answer.
    reader, writer = await asyncio.open_connection(client.host, client.port)
    body = b'{"username": "ann"}'
    writer.write(
        b"POST /users HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    )
    async with asyncio.timeout(30):
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        assert (await reader.read()).startswith(b"HTTP/1.1 201 ")
    writer.close()


# --- Expect: 100-continue: refused before the body is asked for ------------------------


def expect_continue_head(method: str, path: str, length: int, content_type: str, headers: dict[str, str]) -> bytes:
    """A request head that asks for 100 Continue before its body is sent (curl's, over 1 MiB)."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n"
        f"{lines}Expect: 100-continue\r\n\r\n"
    ).encode()


async def refused_without_continue(client: Client, head: bytes) -> RawAnswer:
    """The answer to a head whose body is held back, as a client waiting for 100 Continue holds it;
    then the connection must end without a byte of it sent."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(head)
    answer = await answer_of(reader)
    assert answer.status != 100, "asked for a body it then refused"
    assert answer.headers["Connection"] == "close"
    async with asyncio.timeout(30):  # LINGERING_S is an hour in these tests: closed, not lingering
        assert await reader.read() == b""
    writer.close()
    return answer


@pytest.fixture
async def lingering_client(make_client: MakeClient, monkeypatch: pytest.MonkeyPatch) -> Client:
    """The service, with an hour's lingering read after an unread body: a connection that is
    not closed at once would outlive a test's deadline."""
    monkeypatch.setattr(server, "LINGERING_S", 3600.0)
    return await make_client()


@pytest.mark.parametrize("path", ["/record", "/files.convert"])
async def test_an_upload_refused_from_its_head_is_answered_instead_of_100_continue(
    lingering_client: Client, admin: psycopg.Connection, path: str
) -> None:
    """curl sends Expect: 100-continue for bodies over 1 MiB: it got 100 Continue, sent
    megabytes, and only then heard 413 or 401 (it had sent 2.75 MB of a 2 GB upload)."""
    client = lingering_client
    user_id, token = await new_user(client)
    right, wrong = basic(user_id, token), basic(user_id, str(uuid.uuid4()))

    too_large = await refused_without_continue(
        client, expect_continue_head("POST", path, 2_000_000_000, "audio/wav", right)
    )
    assert too_large.status == 413
    assert too_large.envelope()["message"] == "The upload is larger than the limit of 1024 MiB."

    for credentials, content_type in [
        (wrong, "audio/wav"),
        (wrong, "multipart/form-data; boundary=x"),
        ({}, "audio/wav"),  # a raw WAV carries no form fields: credentials only in headers
        (basic(user_id, "not-a-token"), "audio/wav"),
    ]:
        unauthorized = await refused_without_continue(
            client, expect_continue_head("POST", path, 5_000_000, content_type, credentials)
        )
        assert unauthorized.status == 401, (credentials, content_type)
        assert unauthorized.headers["WWW-Authenticate"].startswith("Basic ")
        unauthorized.envelope()
    assert nothing_stored(admin)


async def test_a_patch_refused_from_its_head_is_answered_instead_of_100_continue(
    lingering_client: Client, audio: Audio
) -> None:
    client = lingering_client
    user = await new_user(client)
    wav = audio(seconds=2)
    tus = {"Tus-Resumable": "1.0.0"}
    created = await client.post("/uploads", headers={**basic(*user), **tus, "Upload-Length": str(len(wav))})
    assert created.status == 201, await created.text()
    path = local(created.headers["Location"])

    def patch_head(offset: int, given: dict[str, str]) -> bytes:
        headers = {**given, **tus, "Upload-Offset": str(offset)}
        return expect_continue_head("PATCH", path, len(wav) - offset, "application/offset+octet-stream", headers)

    elsewhere = await refused_without_continue(client, patch_head(1000, basic(*user)))
    assert elsewhere.status == 409
    assert elsewhere.envelope()["message"] == "The upload's offset is 0, not 1000: send from there."
    assert elsewhere.headers["Tus-Resumable"] == "1.0.0"

    others = await refused_without_continue(client, patch_head(0, basic(*await new_user(client, "bob"))))
    assert others.status == 404
    wrong_token = await refused_without_continue(client, patch_head(0, basic(user[0], str(uuid.uuid4()))))
    assert wrong_token.status == 401
    assert wrong_token.headers["WWW-Authenticate"].startswith("Basic ")
    too_long = await refused_without_continue(client, patch_head(0, {**basic(*user), "Upload-Length": str(2 << 30)}))
    assert too_long.status == 413
    assert too_long.headers["Tus-Max-Size"] == str(1024 << 20)
    for refused in (others, wrong_token, too_long):
        refused.envelope()

    head = await client.head(path, headers={**basic(*user), **tus})
    assert head.headers["Upload-Offset"] == "0"


async def test_an_upload_that_passes_its_checks_is_asked_for_its_body_with_100_continue(
    client: Client, audio: Audio
) -> None:
    user = await new_user(client)
    wav = audio(seconds=2)
    tus = {"Tus-Resumable": "1.0.0"}
    created = await client.post("/uploads", headers={**basic(*user), **tus, "Upload-Length": str(len(wav))})
    path = local(created.headers["Location"])
    patch_headers = {**basic(*user), **tus, "Upload-Offset": "0"}
    for head, answered in [
        (expect_continue_head("POST", "/record", len(wav), "audio/wav", basic(*user)), 201),
        (expect_continue_head("PATCH", path, len(wav), "application/offset+octet-stream", patch_headers), 204),
    ]:
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(head)
        assert (await answer_of(reader)).status == 100
        writer.write(wav)
        assert (await answer_of(reader)).status == answered
        writer.close()


async def test_a_client_that_sends_its_body_without_waiting_for_100_continue_still_hears_the_refusal(
    client: Client,
) -> None:
    """RFC 9110 lets a client send the body without waiting: it is read and dropped as any
    refused body, so that the answer reaches the client rather than a reset."""
    user_id, _ = await new_user(client)
    body = bytes(4000)
    head = expect_continue_head("POST", "/record", len(body), "audio/wav", basic(user_id, str(uuid.uuid4())))
    answer = await raw_request(client, head, body)
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:300]
