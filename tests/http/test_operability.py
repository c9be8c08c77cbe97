"""Request ids, access logs, /health, /ready and /metrics."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging

import pytest

from service.keys import POOL, SLOTS
from service.logs import JsonFormatter
from settings import Settings
from tests.database import MakeClient
from tests.support import (
    Audio,
    Client,
    DelayingProxy,
    basic,
    expect_error,
    held_body,
    local,
    new_user,
    raw_request,
    until,
    upload,
)


async def test_every_response_carries_a_request_id_the_clients_when_sane(client: Client, audio: Audio) -> None:
    mine = await client.get("/health", headers={"X-Request-Id": "trace-42.a:b"})
    assert mine.headers["X-Request-Id"] == "trace-42.a:b"
    generated = await client.get("/nowhere", headers={"X-Request-Id": "bad id\twith spaces"})
    assert len(generated.headers["X-Request-Id"]) == 32
    assert generated.headers["X-Request-Id"] != (await client.get("/nowhere")).headers["X-Request-Id"]

    data = (await (await upload(client, await new_user(client), audio())).json())["data"]
    streamed = await client.get(local(data["url"]), headers={"X-Request-Id": "download-1"})
    assert streamed.headers["X-Request-Id"] == "download-1"  # set before the body streams


async def test_one_access_log_line_per_request_with_its_id_and_no_credentials(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mp3.access")
    user_id, token = await new_user(client)
    await client.get("/records", headers={**basic(user_id, token), "X-Request-Id": "list-1"})
    lines = [record for record in caplog.records if record.name == "mp3.access"]
    assert [(line.method, line.path, line.status) for line in lines] == [  # type: ignore[attr-defined]
        ("POST", "/users", 201),
        ("GET", "/records", 200),
    ]
    assert lines[1].request_id == "list-1"  # type: ignore[attr-defined]
    formatted = json.loads(JsonFormatter().format(lines[1]))
    assert formatted["request_id"] == "list-1"
    assert formatted["status"] == 200
    assert isinstance(formatted["duration_ms"], float)
    assert token not in json.dumps(formatted)


async def test_the_access_log_believes_a_forwarded_address_only_from_a_trusted_proxy(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Behind HAProxy the client wrote the first X-Forwarded-For line and `option forwardfor`
    added the true one after it: the address is read from the right, and only when the
    peer is a proxy of TRUSTED_PROXIES."""
    caplog.set_level(logging.INFO, logger="mp3.access")
    forged_then_appended = "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 203.0.113.7\r\n"
    untrusting = await make_client()
    trusting = await make_client(trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),))
    for client, headers in [
        (untrusting, "X-Forwarded-For: 203.0.113.7\r\n"),  # anyone may send the header
        (trusting, forged_then_appended),
        (trusting, "X-Forwarded-For: 6.6.6.6, 203.0.113.7, 127.0.0.9\r\n"),  # through two proxies of ours
        (trusting, "X-Forwarded-For: 203.0.113.7, unknown\r\n"),
        (trusting, ""),
    ]:
        head = f"GET /health HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n"
        await raw_request(client, head.encode())
    logged = [json.loads(JsonFormatter().format(line)) for line in caplog.records if line.name == "mp3.access"]
    assert [line["forwarded_for"] for line in logged] == [None, "203.0.113.7", "203.0.113.7", None, None]
    assert {line["remote"] for line in logged} == {"127.0.0.1"}  # the peer, whatever it claims


async def test_ready_is_503_while_every_upload_place_is_taken(make_client: MakeClient, audio: Audio) -> None:
    """Upload places, not conversion turns (never refused): the API document says so too."""
    client = await make_client(convert_concurrency=1, max_uploads=1)
    ready = await client.get("/ready")
    assert ready.status == 200
    assert (await ready.json())["data"]["free_slots"] == 1

    release = asyncio.Event()
    user = await new_user(client)
    busy = asyncio.create_task(
        client.post("/record", data=held_body(audio(), release), headers={**basic(*user), "Content-Type": "audio/wav"})
    )
    await until(lambda: client.app[SLOTS].free == 0)
    await until(lambda: client.app[SLOTS].active == 0)  # waiting for its client, it lent its turn
    not_ready = await client.get("/ready")
    body = await expect_error(not_ready, 503)
    assert body["message"] == "Not ready: all 1 upload places are taken."
    document = await (await client.get("/openapi.json")).json()
    assert "free upload place" in document["paths"]["/ready"]["get"]["summary"]
    assert (await client.get("/health")).status == 200  # alive, just busy
    release.set()
    assert (await busy).status == 201


async def test_health_says_whether_the_database_answers_not_whether_the_pool_is_busy(
    make_client: MakeClient, database_proxy: DelayingProxy, service_settings: Settings
) -> None:
    """A flood of cheap requests (anonymous 404s, wrong tokens: a round trip each) can hold
    every connection of the shared pool for a moment. The balancer asks /health (writes,
    uploads) and /ready/downloads (reads) every second and takes a replica out at its first
    503: these said "the database does not answer" then, and the flood took every replica
    out at once. A database that really does not answer still makes them 503."""
    client = await make_client(database_url=database_proxy.url(service_settings.database_url))
    pool = client.app[POOL]
    held = [await pool.acquire() for _ in range(pool.get_max_size())]
    try:
        async with asyncio.timeout(30):
            scrape = asyncio.create_task(client.get("/metrics"))  # its storage figures wait for the pool
            for path in ("/health", "/ready", "/ready/downloads"):
                answer = await client.get(path)
                assert answer.status == 200, f"{path}: {await answer.text()}"
            assert (await scrape).status == 200
    finally:
        for connection in held:
            await pool.release(connection)

    database_proxy.freeze()
    try:
        async with asyncio.timeout(30):
            for path in ("/health", "/ready"):
                body = await expect_error(await client.get(path), 503)
                assert "the database does not answer" in body["message"]
            await expect_error(await client.get("/ready/downloads"), 503)
    finally:
        database_proxy.thaw()
    async with asyncio.timeout(30):
        assert (await client.get("/health")).status == 200  # the check's connection came back


@pytest.mark.parametrize("database_delay_s", [0.3], indirect=True)
async def test_health_checks_asked_at_once_share_one_round_trip(client: Client) -> None:
    """A flood of /health itself, from a database 0.3 s away: checks asked while one is on
    its way share its answer. Queued in turn for the check's one connection, 20 of them
    would have taken 6 s, and those past DATABASE_CHECK_TIMEOUT_S (2 s) answered 503."""
    assert (await client.get("/health")).status == 200  # the check's connection is open
    async with asyncio.timeout(30):
        answers = await asyncio.gather(*(client.get("/health") for _ in range(20)))
    assert [answer.status for answer in answers] == [200] * 20


def sample(text: str, name: str) -> float:
    """The value of one sample line of a Prometheus exposition."""
    for line in text.splitlines():
        if line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exposed")


async def test_metrics_count_conversions_bytes_and_storage(client: Client, audio: Audio) -> None:
    user = await new_user(client)
    wav = audio(seconds=2)
    data = (await (await upload(client, user, wav)).json())["data"]
    await upload(client, user, b"not a wav at all")

    response = await client.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    text = await response.text()
    assert sample(text, 'mp3_conversions_total{status="201"}') == 1
    assert sample(text, 'mp3_conversions_total{status="415"}') == 1
    assert sample(text, "mp3_conversion_seconds_count") == 1
    assert sample(text, "mp3_upload_bytes_total") >= len(wav)
    assert sample(text, "mp3_output_bytes_total") == data["size"]
    assert sample(text, "mp3_stored_bytes") == data["size"]
    assert sample(text, "mp3_stored_records") == 1
    assert sample(text, "mp3_active_conversions") == 0
    assert sample(text, "mp3_queue_depth") == 0


async def test_a_stopping_service_refuses_new_uploads_with_503(client: Client, audio: Audio) -> None:
    """After SIGTERM, a keep-alive client may still send an upload: it is told to come back, not started."""
    client.app[SLOTS].draining = True
    response = await upload(client, await new_user(client), audio())
    body = await expect_error(response, 503)
    assert "shutting down" in body["message"]
    assert response.headers["Retry-After"] == "1"
