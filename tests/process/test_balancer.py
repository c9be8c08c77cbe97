"""The scaled stack's balancer (deploy/haproxy/haproxy.cfg), run by HAProxy itself in front
of the service: what its frontend makes of a request the service then reads."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import psycopg
import pytest

from tests.database import MakeClient
from tests.support import ROOT, Audio, Client, basic, free_port, new_user, nothing_stored, until

HAPROXY = shutil.which("haproxy")
if HAPROXY is None and os.environ.get("CI") != "true":
    pytest.skip("HAProxy is not installed (apt-get install haproxy); CI installs it", allow_module_level=True)


@pytest.fixture
async def balanced(make_client: MakeClient, tmp_path: Path) -> AsyncIterator[tuple[Client, str]]:
    """The service, trusting loopback as its proxy, behind the real configuration; the
    balancer's base URL. Only where it listens and where the replicas are is changed."""
    assert HAPROXY is not None
    client = await make_client(trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),))
    port = free_port()
    replica = f"{client.host}:{client.port}"
    config = (ROOT / "deploy/haproxy/haproxy.cfg").read_text()
    rewritten = config.replace("bind :8080", f"bind 127.0.0.1:{port}").replace("app:8080", replica)
    assert rewritten.count(replica) == 3  # the uploads', reads' and writes' replicas
    (tmp_path / "haproxy.cfg").write_text(rewritten)
    with (tmp_path / "haproxy.log").open("wb") as log:
        balancer = await asyncio.create_subprocess_exec(
            HAPROXY, "-db", "-f", str(tmp_path / "haproxy.cfg"),
            env={**os.environ, "MP3_ERRORS": str(ROOT / "deploy/haproxy/errors")}, stdout=log, stderr=log,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):  # its first health checks of the replicas, 1 s apart
                try:
                    async with session.get(f"{base}/health") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the balancer never passed a request on: " + (tmp_path / "haproxy.log").read_text())
        yield client, base
    finally:
        balancer.terminate()
        async with asyncio.timeout(10):
            await balancer.wait()


async def test_the_balancer_forwards_the_clients_address_and_none_the_client_wrote(
    balanced: tuple[Client, str], caplog: pytest.LogCaptureFixture
) -> None:
    """`option forwardfor` appended its line after the client's own; the app read the first."""
    _, base = balanced
    caplog.set_level(logging.INFO, logger="mp3.access")
    async with aiohttp.ClientSession() as session:
        headers = {"X-Forwarded-For": "6.6.6.6", "X-Request-Id": "through-the-balancer"}
        async with session.get(f"{base}/nowhere", headers=headers) as response:
            assert response.status == 404
    (logged,) = [line for line in caplog.records if getattr(line, "request_id", None) == "through-the-balancer"]
    assert logged.forwarded_for == "127.0.0.1"  # type: ignore[attr-defined]


async def test_an_upload_spelled_with_percent_encoding_is_stored_by_no_backend(
    balanced: tuple[Client, str], audio: Audio, admin: psycopg.Connection
) -> None:
    """Routed as sent, POST /%72ecord goes to the writes backend, by the upload slots and
    their queue: the replica refuses it there."""
    client, base = balanced
    wav = audio()
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    auth = "".join(f"{name}: {value}\r\n" for name, value in basic(*await new_user(client)).items())
    writer.write(
        f"POST /%72ecord HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\nContent-Length: {len(wav)}\r\n{auth}"
        "Connection: close\r\n\r\n".encode()
        + wav
    )
    async with asyncio.timeout(30):
        answer = await reader.read()
    writer.close()
    assert answer.split()[1] == b"404", answer[:300]
    assert nothing_stored(admin)


async def test_the_balancers_own_413_speaks_tus_to_a_resumable_upload(balanced: tuple[Client, str]) -> None:
    """A Content-Length over MAX_UPLOAD_MB is refused by HAProxy itself, from a static page that
    cannot tell a tus PATCH from a POST /record: it says Tus-Resumable to both (the app says it
    on every answer under /uploads; other clients ignore it)."""
    _, base = balanced
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"PATCH /uploads/{uuid.uuid4()} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
        "Content-Type: application/offset+octet-stream\r\n"
        f"Content-Length: {2 << 30}\r\nConnection: close\r\n\r\n".encode()
    )
    async with asyncio.timeout(30):
        answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split()[1] == b"413", answer[:300]
    assert b"\r\ntus-resumable: 1.0.0\r\n" in head.lower() + b"\r\n"  # HAProxy writes names in lower case
    assert json.loads(body)["code"] == 413


def backends_by_request(log: Path) -> dict[tuple[str, str], str]:
    """(method, path) -> the backend HAProxy's access log says served it."""
    lines = log.read_text(errors="replace").splitlines()
    found = (re.search(r" web (\w+)/\S+ .*\"(\w+) (\S+) HTTP/", line) for line in lines)
    return {(match[2], match[3]): match[1] for match in found if match}


async def test_resumable_uploads_reach_the_backends_they_need(
    balanced: tuple[Client, str], audio: Audio, tmp_path: Path
) -> None:
    """tus's HEAD answers the durable offset: a replica whose primary answers (writes), never
    one picked by the reads' check, which passes while the primary is down; a PATCH brings
    samples to convert: the uploads backend, by the upload places. Creation, termination and
    discovery are writes; the finished record's GET is a read like any other."""
    client, base = balanced
    auth = {**basic(*await new_user(client)), "Tus-Resumable": "1.0.0"}
    wav = audio(seconds=5)
    async with aiohttp.ClientSession() as session:
        async with session.options(f"{base}/uploads") as response:
            assert response.status == 204
        paths = []
        for _ in range(2):
            async with session.post(f"{base}/uploads", headers={**auth, "Upload-Length": str(len(wav))}) as response:
                assert response.status == 201
                paths.append(urlsplit(response.headers["Location"]).path)
        upload, terminated = paths
        patch = {**auth, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
        async with session.patch(f"{base}{upload}", data=wav, headers=patch) as response:
            assert response.status == 204
        async with session.head(f"{base}{upload}", headers=auth) as response:
            assert response.status == 200
            assert response.headers["Upload-Offset"] == str(len(wav))
        async with session.get(f"{base}{upload}", headers=auth) as response:
            assert response.status == 200
        async with session.delete(f"{base}{terminated}", headers=auth) as response:
            assert response.status == 204
    expected = {
        ("OPTIONS", "/uploads"): "writes",
        ("POST", "/uploads"): "writes",
        ("PATCH", upload): "uploads",
        ("HEAD", upload): "writes",
        ("GET", upload): "reads",
        ("DELETE", terminated): "writes",
    }
    log = tmp_path / "haproxy.log"
    # HAProxy logs a request once it has ended; the last may be written after its answer arrived.
    await until(lambda: expected.keys() <= backends_by_request(log).keys())
    routed = backends_by_request(log)
    assert {request: routed[request] for request in expected} == expected
