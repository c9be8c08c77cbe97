"""app.py as a real process, faulted the way clients and operators fault it.

Each test checks what an operator would: FFmpeg children of the service,
sessions left idle in a transaction, /ready's free slots, records against
large objects, the log.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import struct
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import psycopg
import pytest

from db import api
from handlers.uploads import SETTLE_TIMEOUT_S
from tests.support import (
    Audio,
    DelayingProxy,
    ServiceProcess,
    alive,
    basic,
    count,
    expect_error,
    form,
    held_body,
    idle_in_transaction,
    local,
    nothing_stored,
    open_descriptors,
    records_match_large_objects,
    reset_high_water_mark,
    store_record,
    until,
    vm_hwm_kib,
    vm_rss_kib,
    wav_header,
)

pytestmark = pytest.mark.slow  # app.py run as a process, faulted

# /health asked on a raw connection, and its answer's body when all is well.
HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
HEALTHY = b'{"status": "ok", "data": {"database": "ok", "ffmpeg": "ok"}}'


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    """Like ``until``, for a check that asks the service over HTTP."""
    async with asyncio.timeout(seconds):
        while not await check():  # noqa: ASYNC110 - the server's state offers no event to wait on
            await asyncio.sleep(0.02)


async def everything_freed(service: ServiceProcess, admin: psycopg.Connection) -> None:
    """No FFmpeg left, no transaction left open, every slot free, and no half record."""
    async with aiohttp.ClientSession() as session:

        async def freed() -> bool:
            return (
                not service.ffmpeg_children()
                and idle_in_transaction(admin) == 0
                and await service.all_slots_free(session)
            )

        await eventually(freed)
    assert records_match_large_objects(admin)


async def conversions_counted(service: ServiceProcess, status: int) -> float:
    async with aiohttp.ClientSession() as session:
        text = await (await session.get(f"{service.base}/metrics")).text()
    for line in text.splitlines():
        if line.startswith(f'mp3_conversions_total{{status="{status}"}} '):
            return float(line.split()[-1])
    return 0.0


def head(path: str, user: tuple[int, str], content_type: str, length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    auth = basic(*user)["Authorization"]
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n{framing}\r\n"
        f"Authorization: {auth}\r\n\r\n"
    ).encode()


async def converting(service: ServiceProcess) -> None:
    """Until an upload is past its checks and FFmpeg runs for it."""
    await until(lambda: bool(service.ffmpeg_children()))


def multipart_upload(wav: bytes) -> tuple[str, bytes]:
    body = b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n' + wav + b"\r\n--B--\r\n"
    return "multipart/form-data; boundary=B", body


# --- uploads that end early -----------------------------------------------------


@pytest.mark.parametrize("body", ["raw", "multipart"])
@pytest.mark.parametrize("ending", ["fin", "rst"])
async def test_an_upload_abandoned_mid_body_frees_everything_at_once(
    service_process: ServiceProcess, audio: Audio, admin: psycopg.Connection, body: str, ending: str
) -> None:
    await service_process.start()
    async with aiohttp.ClientSession() as session:
        user = await service_process.new_user(session, "leaver")
    wav = audio(seconds=60)
    content_type, payload = ("audio/wav", wav) if body == "raw" else multipart_upload(wav)

    _, writer = await asyncio.open_connection(service_process.host, service_process.port)
    writer.write(head("/record", user, content_type, len(payload)) + payload[: 1 << 20])
    await writer.drain()
    await converting(service_process)
    if ending == "rst":  # close with a reset rather than a FIN
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()

    await everything_freed(service_process, admin)
    assert nothing_stored(admin)
    assert await conversions_counted(service_process, 400) == 1  # once, as the body that ended early


@pytest.mark.parametrize("sent", ["mid-conversion", "with-the-head"])
async def test_a_malformed_chunk_is_answered_400_and_frees_everything(
    service_process: ServiceProcess, audio: Audio, admin: psycopg.Connection, sent: str
) -> None:
    """The broken framing comes once the conversion runs, or in the same write as the
    request's head, before any handler has started (it once waited READ_TIMEOUT_S)."""
    await service_process.start()
    async with aiohttp.ClientSession() as session:
        user = await service_process.new_user(session, "chunky")
    # With the head: small enough to arrive in one read of the socket with it.
    wav = audio(seconds=60)[: 1 << 20 if sent == "mid-conversion" else 100_000]
    broken = b"zz\r\nnot a chunk\r\n"
    reader, writer = await asyncio.open_connection(service_process.host, service_process.port)
    request = head("/record", user, "audio/wav", None) + b"%x\r\n" % len(wav) + wav + b"\r\n"
    writer.write(request + broken if sent == "with-the-head" else request)
    await writer.drain()
    if sent == "mid-conversion":
        await converting(service_process)
        writer.write(broken)  # the client is still there: it gets an answer
    answer = await asyncio.wait_for(reader.read(4096), 10)
    assert answer.split(b" ", 2)[1] == b"400", answer
    assert b'"code": 400' in answer
    writer.close()
    await everything_freed(service_process, admin)
    assert nothing_stored(admin)


async def test_a_trickle_below_the_minimum_rate_is_cut_off_with_408(
    service_process: ServiceProcess, audio: Audio, admin: psycopg.Connection
) -> None:
    """Each byte comes well within READ_TIMEOUT_S, so only the rate can stop it."""
    service_process.env |= {"READ_TIMEOUT_S": "1", "MIN_UPLOAD_KBPS": "64"}
    await service_process.start()
    async with aiohttp.ClientSession() as session:
        user = await service_process.new_user(session, "trickler")
    wav = audio(seconds=60)
    reader, writer = await asyncio.open_connection(service_process.host, service_process.port)
    writer.write(head("/record", user, "audio/wav", len(wav)) + wav[:100_000])
    await writer.drain()

    async def trickle() -> None:
        for at in range(100_000, len(wav)):
            writer.write(wav[at : at + 1])
            await writer.drain()
            await asyncio.sleep(0.1)  # the client's pace, 80 bit/s

    trickling = asyncio.create_task(trickle())
    answer = await asyncio.wait_for(reader.read(4096), 30)
    trickling.cancel()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"slower than 64 kbit/s" in answer
    writer.close()
    await everything_freed(service_process, admin)
    assert nothing_stored(admin)


@pytest.mark.parametrize("path", ["/record", "/files.convert", "/users"])
async def test_a_multipart_preamble_is_bounded_before_any_credential(
    service_process: ServiceProcess, audio: Audio, admin: psycopg.Connection, path: str
) -> None:
    """Line feeds before the first part: refused after the first KiB, not parsed line by line."""
    await service_process.start()
    content_type, form_body = multipart_upload(audio())
    body = b"\n" * 1_000_000 + form_body
    if path == "/users":  # whose bodies are 64 KiB at most
        body = b"\n" * 60_000 + b'--B\r\nContent-Disposition: form-data; name="username"\r\n\r\nann\r\n--B--\r\n'
    reader, writer = await asyncio.open_connection(service_process.host, service_process.port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    answer = await asyncio.wait_for(reader.read(4096), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b"no part in its first 1024 bytes" in answer
    assert nothing_stored(admin)


# --- uploads that share the service -----------------------------------------------


async def trickling(service: ServiceProcess, user: tuple[int, str], stop: asyncio.Event) -> bytes:
    """A chunked raw upload of an 8 kHz 8-bit mono WAV of unknown length: 900 bytes every
    0.1 s (72 kbit/s, above MIN_UPLOAD_KBPS) until ``stop``; what the service answered then."""
    reader, writer = await asyncio.open_connection(service.host, service.port)
    header = wav_header(channels=1, rate=8000, bits=8)[:-4] + b"\xff\xff\xff\xff"  # a data size it cannot know
    writer.write(head("/record", user, "audio/wav", None) + b"%x\r\n%s\r\n" % (len(header), header))
    while not stop.is_set():
        writer.write(b"384\r\n" + b"\x80" * 900 + b"\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)
    writer.write(b"0\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(4096), 20)
    writer.close()
    return answer


async def test_slow_uploads_of_one_account_keep_no_other_upload_waiting(
    service_process: ServiceProcess, audio: Audio, admin: psycopg.Connection
) -> None:
    """Two trickles from one account once held both conversion slots, for up to an hour:
    every other upload got 503. A trickle holds no turn on the CPU, and one account holds
    at most USER_MAX_UPLOADS places."""
    service_process.env |= {"QUEUE_TIMEOUT_S": "2"}  # two slots (CONVERT_CONCURRENCY), 8 places
    await service_process.start()
    async with aiohttp.ClientSession() as session:
        slow, other = await service_process.new_user(session, "slow"), await service_process.new_user(session, "other")
        stop = asyncio.Event()
        trickles = [asyncio.create_task(trickling(service_process, slow, stop)) for _ in range(2)]
        await until(lambda: len(service_process.ffmpeg_children()) == 2)

        quick = form(audio(seconds=20), user=other[0], token=other[1])
        async with session.post(f"{service_process.base}/record", data=quick) as response:
            assert response.status == 201, await response.text()
        third = form(audio(), user=slow[0], token=slow[1])
        async with session.post(f"{service_process.base}/record", data=third) as refused:
            body = await expect_error(refused, 503)
            assert body["message"] == "You have 2 uploads in progress already; let one finish first."
        await a_waiting_upload_whose_client_leaves(service_process, session, slow, audio)

        stop.set()
        answers = await asyncio.gather(*trickles)
    assert [answer.split(b" ", 2)[1] for answer in answers] == [b"201", b"201"]
    await everything_freed(service_process, admin)


async def a_waiting_upload_whose_client_leaves(
    service: ServiceProcess, session: aiohttp.ClientSession, user: tuple[int, str], audio: Audio
) -> None:
    """An upload waiting for its account's place is counted as queued while it waits, and
    no more once its client leaves (/ready and mp3_queue_depth said 1 for good)."""

    async def queued() -> int:
        async with session.get(f"{service.base}/ready") as response:
            return int((await response.json())["data"]["queued"])

    async def one_waits() -> bool:
        return await queued() == 1

    async def none_waits() -> bool:
        return await queued() == 0

    wav = audio()
    _, writer = await asyncio.open_connection(service.host, service.port)
    writer.write(head("/record", user, "audio/wav", len(wav)) + wav[:1000])
    await eventually(one_waits, seconds=1.5)  # within QUEUE_TIMEOUT_S, which would answer it 503
    writer.transport.abort()
    await eventually(none_waits)


# --- conversions that stop moving -------------------------------------------------


async def stall_counted(service: ServiceProcess, stage: str) -> float:
    async with aiohttp.ClientSession() as session:
        text = await (await session.get(f"{service.base}/metrics")).text()
    prefix = f'mp3_conversion_stalls_total{{stage="{stage}"}} '
    return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix)), 0.0)


async def stop_every_encoder(service: ServiceProcess, stopped: set[int]) -> None:
    """SIGSTOP each FFmpeg the service starts, until cancelled; ``stopped``: their pids."""
    while True:
        for pid in set(service.ffmpeg_children()) - stopped:
            os.kill(pid, signal.SIGSTOP)
            stopped.add(pid)
        await asyncio.sleep(0.01)


def answered_503_retry_later(answer: bytes) -> None:
    head_bytes, _, body = answer.partition(b"\r\n\r\n")
    assert head_bytes.startswith(b"HTTP/1.1 503"), answer
    assert b"\r\nRetry-After: " in head_bytes
    assert json.loads(body) == {
        "code": 503,
        "status": "service_unavailable",
        "message": "The conversion made no progress for 1 s and was stopped; try again shortly.",
        "data": {},
    }


@pytest.mark.parametrize("encoders", ["1", "2"], ids=["one-encoder", "segment-parallel"])
async def test_a_conversion_whose_encoder_hangs_is_answered_503_and_frees_everything(
    service_process: ServiceProcess, audio: Audio, admin: psycopg.Connection, encoders: str
) -> None:
    """Every FFmpeg the upload starts is stopped (SIGSTOP): nothing moves, and after
    STALL_TIMEOUT_S the upload fails as an operator can see, instead of waiting an hour."""
    service_process.env |= {"STALL_TIMEOUT_S": "1", "PARALLEL_SEGMENTS": encoders}
    await service_process.start()
    async with aiohttp.ClientSession() as session:
        user = await service_process.new_user(session, "frozen")
    wav = audio(seconds=60)
    stopped: set[int] = set()
    stopping = asyncio.create_task(stop_every_encoder(service_process, stopped))
    reader, writer = await asyncio.open_connection(service_process.host, service_process.port)
    writer.write(head("/record", user, "audio/wav", len(wav)) + wav)
    try:
        answer = await asyncio.wait_for(reader.read(4096), 20)
    finally:
        stopping.cancel()
        writer.close()

    answered_503_retry_later(answer)
    await everything_freed(service_process, admin)
    assert nothing_stored(admin)
    assert stopped
    assert not [pid for pid in stopped if alive(pid)]
    assert await conversions_counted(service_process, 503) == 1
    assert await stall_counted(service_process, "FFmpeg to take the samples") == 1
    errors = [line for line in service_process.log.read_text().splitlines() if " ERROR " in line]
    assert errors == [errors[0]]
    assert errors[0].endswith(
        "POST /record answered 503: no progress for 1 s while waiting for FFmpeg to take the samples"
    )


async def tus_upload(
    service: ServiceProcess, session: aiohttp.ClientSession, user: tuple[int, str], length: int
) -> tuple[str, dict[str, str]]:
    """A resumable upload of ``length`` bytes created for ``user``: its URL, and the headers
    of a PATCH that sends it from its start."""
    tus = {**basic(*user), "Tus-Resumable": "1.0.0"}
    async with session.post(f"{service.base}/uploads", headers={**tus, "Upload-Length": str(length)}) as created:
        assert created.status == 201
        url = service.base + local(created.headers["Location"])
    return url, {**tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}


async def test_a_patch_whose_encoder_hangs_is_answered_503_and_counted_as_a_stall(
    service_process: ServiceProcess, audio: Audio
) -> None:
    """A resumable upload's PATCH stalls as a POST does: 503 after STALL_TIMEOUT_S, its FFmpeg
    gone, and /metrics shows the stall and the PATCH's status, as an operator's alert expects."""
    service_process.env |= {"STALL_TIMEOUT_S": "1", "PARALLEL_SEGMENTS": "1"}
    await service_process.start()
    wav = audio(seconds=60)
    stopped: set[int] = set()
    async with aiohttp.ClientSession() as session:
        user = await service_process.new_user(session, "frozen")
        upload_url, headers = await tus_upload(service_process, session, user, len(wav))
        stopping = asyncio.create_task(stop_every_encoder(service_process, stopped))
        try:
            async with session.patch(upload_url, data=wav, headers=headers) as patched:
                body = await expect_error(patched, 503)
        finally:
            stopping.cancel()
        assert body["message"] == "The conversion made no progress for 1 s and was stopped; try again shortly."
        metrics = await (await session.get(f"{service_process.base}/metrics")).text()
    assert stopped
    await until(lambda: not [pid for pid in stopped if alive(pid)])
    assert await stall_counted(service_process, "FFmpeg to take the samples") == 1
    assert 'mp3_upload_patches_total{status="503"} 1.0' in metrics.splitlines()


async def answered_once_the_database_freezes(
    service: ServiceProcess, proxy: DelayingProxy, audio: Audio, stall_s: float, within_s: float
) -> bytes:
    """What a minute's upload is answered within ``within_s`` when PostgreSQL freezes (every
    byte to and from it held) once FFmpeg runs for it, at STALL_TIMEOUT_S ``stall_s``."""
    service.env |= {"STALL_TIMEOUT_S": f"{stall_s:g}", "DATABASE_URL": proxy.url(service.env["DATABASE_URL"])}
    await service.start()
    async with aiohttp.ClientSession() as session:
        user = await service.new_user(session, "frozen")
    wav = audio(seconds=60)
    reader, writer = await asyncio.open_connection(service.host, service.port)
    writer.write(head("/record", user, "audio/wav", len(wav)) + wav)
    await converting(service)
    proxy.freeze()
    try:
        return await asyncio.wait_for(reader.read(4096), within_s)
    finally:
        proxy.thaw()
        writer.close()


async def test_an_upload_whose_database_stops_answering_is_answered_503_and_leaves_nothing(
    service_process: ServiceProcess, database_proxy: DelayingProxy, audio: Audio, admin: psycopg.Connection
) -> None:
    """PostgreSQL freezes mid-upload (every byte to and from it held): the upload fails
    within STALL_TIMEOUT_S and its connection is ended rather than left waiting, so once
    the database answers again nothing of the upload remains."""
    answer = await answered_once_the_database_freezes(service_process, database_proxy, audio, 1, within_s=20)
    answered_503_retry_later(answer)
    await everything_freed(service_process, admin)
    assert nothing_stored(admin)
    assert await stall_counted(service_process, "the database to store the MP3") == 1
    log = service_process.log.read_text()
    assert "ERROR handlers.errors POST /record answered 503: no progress for 1 s while waiting for the database" in log


async def test_a_frozen_database_costs_an_upload_its_stall_timeout_not_twice_that(
    service_process: ServiceProcess, database_proxy: DelayingProxy, audio: Audio, admin: psycopg.Connection
) -> None:
    """After the statement that got no answer, the rollback waited as long again (60 s at
    the defaults, answered with a 503 that said 30): it is given ROLLBACK_TIMEOUT_S (2 s),
    and then the connection is ended, which rolls back as well."""
    stall_s = 8.0  # the bound below is 13.5 s; without ROLLBACK_TIMEOUT_S it took 16
    # The bound the documents give, with room for a busy machine: it was 2 x stall_s.
    within_s = stall_s + api.ROLLBACK_TIMEOUT_S + 3.5
    answer = await answered_once_the_database_freezes(service_process, database_proxy, audio, stall_s, within_s)
    assert answer.startswith(b"HTTP/1.1 503 "), answer
    await everything_freed(service_process, admin)
    assert nothing_stored(admin)


async def test_a_frozen_database_costs_a_statement_of_its_own_its_stall_timeout_not_twice_that(
    service_process: ServiceProcess, database_proxy: DelayingProxy
) -> None:
    """A credential check before an upload, a listing, a deletion, a sign-up, a tus upload's
    creation, reading and claim (a PATCH): each a statement of its own on the pool, which
    waited for the cancel of a statement that got no answer as long again (asyncpg's
    command_timeout bounds both)."""
    stall_s = 6.0  # the bound below is 9 s; they took 12
    service_process.env |= {
        "STALL_TIMEOUT_S": f"{stall_s:g}",
        "DATABASE_URL": database_proxy.url(service_process.env["DATABASE_URL"]),
    }
    await service_process.start()
    base = service_process.base
    async with aiohttp.ClientSession() as session:
        user = await service_process.new_user(session, "frozen")
        credentials = basic(*user)
        # Connections in the pool, made while the database answered: the statements below find them.
        await asyncio.gather(*(session.get(f"{base}/records", headers=credentials) for _ in range(8)))
        tus = {**credentials, "Tus-Resumable": "1.0.0", "Upload-Length": "1000"}
        async with session.post(f"{base}/uploads", headers=tus) as created:
            upload = base + local(created.headers["Location"])
        patch = {**credentials, "Tus-Resumable": "1.0.0", "Upload-Offset": "0"}
        patch["Content-Type"] = "application/offset+octet-stream"
        database_proxy.freeze()
        requests = {
            "POST /record": lambda: session.post(f"{base}/record", data=wav_header(), headers=credentials),
            "GET /records": lambda: session.get(f"{base}/records", headers=credentials),
            "DELETE /record": lambda: session.delete(f"{base}/record?id={uuid.uuid4()}", headers=credentials),
            "POST /uploads": lambda: session.post(f"{base}/uploads", headers=tus),
            "POST /users": lambda: session.post(f"{base}/users", json={"username": "too-late"}),
            "GET /uploads/{id}": lambda: session.get(upload, headers=credentials),
            "PATCH /uploads/{id}": lambda: session.patch(upload, data=wav_header(), headers=patch),
        }

        async def answered(send: Callable[[], Any]) -> int:
            async with asyncio.timeout(stall_s + 3), send() as response:
                return int(response.status)

        try:
            statuses = await asyncio.gather(*(answered(send) for send in requests.values()))
        finally:
            database_proxy.thaw()
    assert dict(zip(requests, statuses, strict=True)) == dict.fromkeys(requests, 503)


async def test_a_patch_that_stored_its_upload_answers_though_the_database_freezes_as_it_settles(
    service_process: ServiceProcess, database_proxy: DelayingProxy, audio: Audio
) -> None:
    """A PATCH's last statement says it is no longer at work on the upload
    (api.upload_settled), after its record is stored. It was the one pool call no deadline
    bounded: with PostgreSQL frozen at that moment, the stored upload was answered only after
    STALL_TIMEOUT_S and asyncpg's wait for its cancel (found by helper-38: 16 s at a stall
    timeout of 10 s). It is answered within SETTLE_TIMEOUT_S."""
    stall_s = 12.0
    service_process.env |= {
        "STALL_TIMEOUT_S": f"{stall_s:g}",
        "DATABASE_URL": database_proxy.url(service_process.env["DATABASE_URL"]),
    }
    await service_process.start()
    wav = audio(seconds=5)
    async with aiohttp.ClientSession() as session:
        user = await service_process.new_user(session, "settling")
        upload_url, headers = await tus_upload(service_process, session, user, len(wav))
        database_proxy.freeze_when_sent = b"upload_settled"  # this service's first settle: its text is sent
        patching = session.patch(upload_url, data=wav, headers=headers)
        try:
            async with asyncio.timeout(SETTLE_TIMEOUT_S + 3), patching as patched:
                assert patched.status == 204
                assert patched.headers["Upload-Offset"] == str(len(wav))
                assert "Record-Location" in patched.headers
        finally:
            database_proxy.thaw()
    assert database_proxy.freeze_when_sent is None  # it did freeze


async def test_sigusr1_logs_what_every_task_awaits(service_process: ServiceProcess) -> None:
    """The debugging aid for a hang: each task's chain of awaits, down to what it waits for."""
    await service_process.start()
    service_process.signal(signal.SIGUSR1)
    await until(lambda: "every task's await chain" in service_process.log.read_text())
    await until(lambda: "in serve" in service_process.log.read_text())  # the main task, waiting to stop
    assert "waiting for <Future pending" in service_process.log.read_text()


# --- downloads that cannot continue ------------------------------------------------


@pytest.mark.parametrize("download", ["first", "repeat"])
async def test_a_download_that_cannot_continue_breaks_off_and_never_sends_a_second_response(
    service_process: ServiceProcess, audio: Audio, admin: psycopg.Connection, download: str
) -> None:
    """The record is deleted while a slow client downloads it, from the database (the first
    download) or from the download cache (a repeat): the download stops short, either way."""
    await service_process.start()
    async with aiohttp.ClientSession() as session:
        user = await service_process.new_user(session, "listener")
        # 3 minutes at 320 kbit/s: a 7 MB MP3, many of the service's 1 MiB reads.
        upload = form(audio(seconds=180, rate=48000, channels=1), user=user[0], token=user[1], bitrate=320)
        created = await (await session.post(f"{service_process.base}/record", data=upload)).json()
        record = created["data"]
        if download == "repeat":
            async with session.get(service_process.base + local(record["url"])) as whole:
                assert len(await whole.read()) == record["size"]  # now in the download cache

        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a slow listener: the service must wait
        sock.connect((service_process.host, service_process.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(f"GET /record?id={record['id']}&user={user[0]} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head_bytes = await reader.readuntil(b"\r\n\r\n")
        assert head_bytes.startswith(b"HTTP/1.1 200")
        first = await reader.readexactly(65536)

        deleted = await session.delete(
            f"{service_process.base}/record?id={record['id']}&user={user[0]}", headers=basic(*user)
        )
        assert deleted.status == 204
        if download == "repeat":
            # From the cache, the service learns of the deletion a round trip or two after
            # it (announced, then asked), not at its next read as from the database: with
            # the database 30 ms away, a client reading on at once had the whole file by
            # then in two runs of three. So it reads on once the service has broken off.
            await until(lambda: "GET /record 200 broken off" in service_process.log.read_text())
        rest = await asyncio.wait_for(reader.read(), 30)  # to the end of the connection
        writer.close()

    body = first + rest
    assert len(body) < record["size"]  # short of the announced Content-Length: the client knows
    assert b"HTTP/1.1" not in body
    assert b'"code"' not in body
    assert f"Content-Length: {record['size']}".encode() in head_bytes
    log = service_process.log.read_text()
    broken_off = re.search(r"GET /record 200 broken off after (\d+) bytes", log)
    assert broken_off is not None
    assert int(broken_off.group(1)) >= len(first)  # what the client had, at least
    assert "No such record." in log


TCP_CLOSE = 7  # tcp_info's state of a socket the peer has reset


def reset_by_peer(sock: socket.socket) -> bool:
    """The kernel's view, asked without reading a byte: the server reset this connection."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] == TCP_CLOSE


def stalled_download(service: ServiceProcess, request: bytes) -> socket.socket:
    """A client that asks for a download, then never reads (a 4 KB receive buffer, full at once)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((service.host, service.port))
    sock.sendall(request)
    return sock


async def test_a_client_that_stops_reading_a_download_is_cut_off_and_a_slow_reader_is_not(
    service_process: ServiceProcess, service: psycopg.Connection
) -> None:
    service_process.env |= {"SEND_TIMEOUT_S": "2"}
    await service_process.start()
    async with aiohttp.ClientSession() as session:
        user = await service_process.new_user(session, "listener")
    # 7 MiB: more than the kernel's buffers and the service's read-ahead hold (stored
    # from psql: what the bytes are does not matter here, FFmpeg need not make them).
    size = 7 << 20
    record_id = store_record(service, *user, [os.urandom(1 << 20) for _ in range(size >> 20)])
    path = f"/record?id={record_id}&user={user[0]}"
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    stalled = [stalled_download(service_process, request) for _ in range(4)]  # read from the database

    # Meanwhile a client that reads 64 KiB every 100 ms: its download lasts five
    # times SEND_TIMEOUT_S, and it gets every byte.
    reader, writer = await asyncio.open_connection(service_process.host, service_process.port)
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    body = b""
    while piece := await reader.read(65536):
        body += piece
        if len(body) >= size:
            break
        await asyncio.sleep(0.1)  # the client's pace
    writer.close()
    assert head.startswith(b"HTTP/1.1 200")
    assert len(body) == size

    async with aiohttp.ClientSession() as session, session.get(service_process.base + path) as whole:
        assert len(await whole.read()) == size  # now in the download cache
    stalled.append(stalled_download(service_process, request))  # sent with sendfile, from the cache
    try:
        await until(lambda: all(reset_by_peer(sock) for sock in stalled))
    finally:
        for sock in stalled:
            sock.close()
    log = service_process.log.read_text()
    assert log.count("GET /record 200 broken off after") == len(stalled)
    assert "the client took almost nothing for 2 s" in log


async def test_clients_that_stop_reading_hold_little_of_the_services_memory(
    service_process: ServiceProcess, service: psycopg.Connection
) -> None:
    """A download link is public: anyone who has one can open many downloads and read none.
    Until SEND_TIMEOUT_S cuts them off, each must cost the service little memory: what it
    reads from the database grows only as fast as its client takes the bytes."""
    service_process.env |= {"SEND_TIMEOUT_S": "2"}
    await service_process.start()
    async with aiohttp.ClientSession() as session:
        user = await service_process.new_user(session, "hoarder")
    record_id = store_record(service, *user, [os.urandom(1 << 20) for _ in range(7)])
    request = f"GET /record?id={record_id}&user={user[0]} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    reset_high_water_mark(service_process.pid)
    before_kib = vm_rss_kib(service_process.pid)
    stalled = [stalled_download(service_process, request) for _ in range(STALLED_CLIENTS)]
    try:
        await until(lambda: all(reset_by_peer(sock) for sock in stalled))
    finally:
        for sock in stalled:
            sock.close()
    held_kib = vm_hwm_kib(service_process.pid) - before_kib
    # Reads of 1 MiB, one ahead, held for each client: over 2 MiB each (51 MiB for 20)
    assert held_kib < STALLED_CLIENTS * 1024, f"{STALLED_CLIENTS} stalled downloads held {held_kib} KiB"


STALLED_CLIENTS = 20


async def test_cached_downloads_broken_off_midway_leave_no_descriptor_behind(
    service_process: ServiceProcess, service: psycopg.Connection
) -> None:
    """A cached file goes out on the service's file-sending thread (service/file_sender.py),
    which holds a descriptor of each client's socket and of the file: a client gone midway
    must take both with it, or every such client costs two descriptors for good."""
    await service_process.start()
    async with aiohttp.ClientSession() as session:
        user = await service_process.new_user(session, "skipper")
        record_id = store_record(service, *user, [os.urandom(1 << 20) for _ in range(7)])
        path = f"/record?id={record_id}&user={user[0]}"
        async with session.get(service_process.base + path) as whole:
            assert len(await whole.read()) == 7 << 20  # now in the download cache
    before = open_descriptors(service_process.pid)
    for _ in range(20):
        reader, writer = await asyncio.open_connection(service_process.host, service_process.port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(65536)
        writer.transport.abort()  # gone, with a reset, a 64 KiB into 7 MiB
    await until(lambda: open_descriptors(service_process.pid) <= before)
    async with aiohttp.ClientSession() as session, session.get(service_process.base + path) as again:
        assert len(await again.read()) == 7 << 20


# --- connections that never finish a request ----------------------------------------


async def test_a_request_head_that_never_ends_and_an_idle_connection_are_closed(
    service_process: ServiceProcess,
) -> None:
    service_process.env |= {"IDLE_TIMEOUT_S": "1"}
    await service_process.start()
    stalled = []
    for _ in range(50):
        reader, writer = await asyncio.open_connection(service_process.host, service_process.port)
        writer.write(b"GET /hea")  # half a request line, and nothing more
        stalled.append((reader, writer))
    idle_reader, idle_writer = await asyncio.open_connection(service_process.host, service_process.port)
    idle_writer.write(HEALTH)
    assert (await idle_reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")

    for reader, _ in [*stalled, (idle_reader, idle_writer)]:
        assert await asyncio.wait_for(reader.read(), 10) in (
            b"",
            HEALTHY,
        )
    for _, writer in [*stalled, (idle_reader, idle_writer)]:
        writer.close()


# --- connections beyond MAX_CONNECTIONS --------------------------------------------


async def test_beyond_max_connections_a_client_waits_until_a_connection_is_done(
    service_process: ServiceProcess, audio: Audio, admin: psycopg.Connection
) -> None:
    service_process.env |= {"MAX_CONNECTIONS": "2", "IDLE_TIMEOUT_S": "60"}
    await service_process.start()
    async with aiohttp.ClientSession() as session:
        user = await service_process.new_user(session, "busy")
    wav = audio(seconds=30)
    uploads = []
    for _ in range(2):  # both places taken by uploads at work, neither idle
        reader, writer = await asyncio.open_connection(service_process.host, service_process.port)
        writer.write(head("/record", user, "audio/wav", len(wav)) + wav[: 1 << 20])
        uploads.append((reader, writer))
    await until(lambda: len(service_process.ffmpeg_children()) >= 2)

    reader, writer = await asyncio.open_connection(service_process.host, service_process.port)
    writer.write(HEALTH)
    with pytest.raises(TimeoutError):  # connected (the kernel's backlog holds it), and not served
        await asyncio.wait_for(reader.read(1), 1.0)
    # The first upload is stored; its connection, kept alive, is idle from then on: the
    # waiting client has its place then, not when the idle timeout would close it.
    uploads[0][1].write(wav[1 << 20 :])
    stored = await asyncio.wait_for(uploads[0][0].readuntil(b"\r\n\r\n"), 30)
    assert stored.startswith(b"HTTP/1.1 201"), stored
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert answer.startswith(b"HTTP/1.1 200"), answer

    uploads[1][1].close()  # that client leaves mid-body: its upload is rolled back
    uploads[0][1].close()
    writer.close()
    await everything_freed(service_process, admin)


async def test_idle_connections_give_their_places_to_a_client_that_waits(service_process: ServiceProcess) -> None:
    """An idle socket is the cheapest thing a client can hold: at MAX_CONNECTIONS the oldest
    idle one is closed for a client that waits, rather than that client waiting for its
    idle timeout (IDLE_TIMEOUT_S, 15 s)."""
    service_process.env |= {"MAX_CONNECTIONS": "2"}
    await service_process.start()
    kept_alive = await asyncio.open_connection(service_process.host, service_process.port)
    kept_alive[1].write(HEALTH)
    assert (await kept_alive[0].readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    await kept_alive[0].readexactly(len(HEALTHY))
    half_head = await asyncio.open_connection(service_process.host, service_process.port)
    half_head[1].write(b"GET /hea")

    reader, writer = await asyncio.open_connection(service_process.host, service_process.port)
    writer.write(HEALTH)
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
    assert await asyncio.wait_for(kept_alive[0].read(), 5) == b""  # the oldest idle one made room
    with pytest.raises(TimeoutError):  # and only it: one client waited
        await asyncio.wait_for(half_head[0].read(), 1.0)
    for _, connection in (kept_alive, half_head, (reader, writer)):
        connection.close()


async def test_clients_beyond_max_connections_that_take_a_moment_to_send_are_all_answered(
    service_process: ServiceProcess,
) -> None:
    """Twelve clients connect at once to two places; each sends its request 20 ms after
    its connection opens, and two more 50 ms after each answer, on the same connection.
    A connection opened or answered a moment ago is not idle enough to be let go: every
    request is answered (most were lost when any connection waiting for a request was)."""
    service_process.env |= {"MAX_CONNECTIONS": "2"}
    await service_process.start()

    async def client() -> list[bytes]:
        reader, writer = await asyncio.open_connection(service_process.host, service_process.port)
        answers = []
        try:
            for pause in (0.02, 0.05, 0.05):  # what a client does before each request
                await asyncio.sleep(pause)
                writer.write(HEALTH)
                answers.append((await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30))[:12])
                await reader.readexactly(len(HEALTHY))
        except (OSError, asyncio.IncompleteReadError) as error:
            answers.append(type(error).__name__.encode())
        finally:
            writer.close()
        return answers

    answers = await asyncio.gather(*(client() for _ in range(12)))
    assert answers == [[b"HTTP/1.1 200"] * 3] * 12


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this machine")
async def test_one_place_serves_ipv4_and_ipv6_clients_alike(service_process: ServiceProcess) -> None:
    """HOST empty: a listener each for IPv4 and IPv6. Each accepted on its own, taking a
    place before a client came: with one place, the clients of one family waited for good."""
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    service_process.env |= {"MAX_CONNECTIONS": "1", "HOST": ""}
    await service_process.start()
    for host in ("::1", "::1", "127.0.0.1", "127.0.0.1"):  # each family twice running
        reader, writer = await asyncio.open_connection(host, service_process.port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200"), (host, answer)


async def test_a_flood_of_idle_connections_leaves_uploads_their_file_descriptors(
    service_process: ServiceProcess, audio: Audio, admin: psycopg.Connection
) -> None:
    """Under an open-files limit of 256 (ulimit -n; containers often have 1024), 300 idle
    sockets took every descriptor: an upload that came then waited for them to time out
    (IDLE_TIMEOUT_S) or failed with 500 (its FFmpeg's pipes could not be made). The service
    takes no more connections than its limit leaves room for, and idle ones make room."""
    service_process.open_files_limit = 256
    service_process.env |= {"IDLE_TIMEOUT_S": "60"}  # far beyond the upload's deadline below
    await service_process.start()
    async with aiohttp.ClientSession() as session:
        user = await service_process.new_user(session, "flooded")
    idle = [await asyncio.open_connection(service_process.host, service_process.port) for _ in range(300)]
    for _, writer in idle:
        writer.write(b"GET /hea")

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        data = form(audio(seconds=5), user=user[0], token=user[1])
        async with session.post(f"{service_process.base}/record", data=data) as response:
            assert response.status == 201, await response.text()
        async with session.get(f"{service_process.base}/health") as health:
            assert health.status == 200
    for _, writer in idle:
        writer.close()
    await everything_freed(service_process, admin)


async def test_a_client_that_half_closes_after_its_request_is_answered(
    service_process: ServiceProcess, audio: Audio, admin: psycopg.Connection
) -> None:
    """shutdown(SHUT_WR) once the request is sent (`nc -N`, socat): aiohttp took the FIN for
    a client gone and cancelled the request, so the client read nothing. One that half-closes
    mid-body is still a client gone: nothing of its upload is kept. The connection closes
    once the last answer is out, not when its idle timeout would close it."""
    service_process.env |= {"IDLE_TIMEOUT_S": "60"}
    await service_process.start()
    async with aiohttp.ClientSession() as session:
        user = await service_process.new_user(session, "half")
    wav = audio(seconds=5)

    async def half_closed(request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(service_process.host, service_process.port)
        writer.write(request)
        writer.write_eof()
        try:
            return await asyncio.wait_for(reader.read(), 20)  # to the connection's end
        finally:
            writer.close()

    health = await half_closed(HEALTH)
    assert health.startswith(b"HTTP/1.1 200"), health
    pipelined = await half_closed(HEALTH * 3)
    assert pipelined.count(b"HTTP/1.1 200 OK\r\n") == 3, pipelined
    stored = await half_closed(head("/record", user, "audio/wav", len(wav)) + wav)
    assert stored.startswith(b"HTTP/1.1 201"), stored[:200]
    assert count(admin, "SELECT count(*) FROM app.records") == 1

    assert await half_closed(head("/record", user, "audio/wav", len(wav)) + wav[: len(wav) // 2]) == b""
    await everything_freed(service_process, admin)
    assert count(admin, "SELECT count(*) FROM app.records") == 1


async def test_max_connections_beyond_the_open_files_limit_is_a_configuration_error(
    service_process: ServiceProcess,
) -> None:
    service_process.open_files_limit = 256
    service_process.env |= {"MAX_CONNECTIONS": "1024"}
    service_process.spawn()
    assert await asyncio.to_thread(service_process.wait, 30) == 1
    log = service_process.log.read_text()
    assert "configuration error: MAX_CONNECTIONS=1024 needs an open-files limit of" in log, log


# --- the log ------------------------------------------------------------------------


async def test_a_path_cannot_write_a_line_of_its_own_into_the_log(service_process: ServiceProcess) -> None:
    await service_process.start()
    forged = "2026-11-29 03:00:00,000 INFO mp3.access DELETE /record 204"
    path = "/x%0d%0a" + forged.replace(" ", "%20") + "%00"
    async with aiohttp.ClientSession() as session:
        assert (await session.get(f"{service_process.base}{path}")).status == 404
    service_process.signal(signal.SIGTERM)
    service_process.wait()

    lines = service_process.log.read_text().splitlines()
    assert not [line for line in lines if line.startswith(forged)]
    assert any(line.endswith(f"GET /x\\r\\n{forged}\\x00 404") for line in lines)


# --- the service stopped ------------------------------------------------------------


async def held_upload(
    session: aiohttp.ClientSession, base: str, user: tuple[int, str], wav: bytes, release: asyncio.Event
) -> aiohttp.ClientResponse:
    headers = {**basic(*user), "Content-Type": "audio/wav"}
    return await session.post(f"{base}/record", data=held_body(wav, release, len(wav) // 4), headers=headers)


async def only_one_record_once_the_service_is_gone(admin: psycopg.Connection) -> None:
    """Once PostgreSQL has seen the service's sessions end, exactly the one finished record remains."""
    await until(lambda: count(admin, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'mp3_service'") == 0)
    assert count(admin, "SELECT count(*) FROM app.records") == 1
    assert count(admin, "SELECT count(*) FROM pg_largeobject_metadata") == 1


async def test_sigkill_mid_upload_loses_nothing_committed_and_leaves_nothing_half(
    service_process: ServiceProcess, audio: Audio, admin: psycopg.Connection
) -> None:
    await service_process.start()
    base = service_process.base
    async with aiohttp.ClientSession() as session:
        user = await service_process.new_user(session, "kill")
        first = await (await session.post(f"{base}/record", data=form(audio(), user=user[0], token=user[1]))).json()
        before = await (await session.get(first["data"]["url"])).read()

        pending = asyncio.create_task(held_upload(session, base, user, audio(seconds=10), asyncio.Event()))
        await until(lambda: idle_in_transaction(admin) > 0)
        service_process.signal(signal.SIGKILL)
        service_process.wait()
        with pytest.raises(aiohttp.ClientError):
            await pending

    await only_one_record_once_the_service_is_gone(admin)

    await service_process.start()
    async with aiohttp.ClientSession() as session:
        assert await (await session.get(first["data"]["url"])).read() == before


async def test_sigterm_lets_an_upload_finish_and_rolls_back_one_that_cannot(
    service_process: ServiceProcess, audio: Audio, admin: psycopg.Connection
) -> None:
    await service_process.start()
    base = service_process.base
    async with aiohttp.ClientSession() as session:
        user = await service_process.new_user(session, "term")
        finishing, stuck = asyncio.Event(), asyncio.Event()
        will_finish = asyncio.create_task(held_upload(session, base, user, audio(seconds=3), finishing))
        will_stall = asyncio.create_task(held_upload(session, base, user, audio(seconds=4), stuck))
        await until(lambda: idle_in_transaction(admin) == 2)

        service_process.signal(signal.SIGTERM)
        finishing.set()  # this one completes within the shutdown timeout (3 s)
        assert (await will_finish).status == 201
        assert service_process.wait() == 0  # the other is cancelled when the timeout ends
        with pytest.raises(aiohttp.ServerDisconnectedError):  # cancelled: no answer at all
            await will_stall

    await only_one_record_once_the_service_is_gone(admin)


async def test_sigterm_ends_the_service_in_time_whatever_its_uploads_are_doing(
    service_process: ServiceProcess, audio: Audio, admin: psycopg.Connection
) -> None:
    """One upload stalled by its client, one abandoned, one converting flat out: SHUTDOWN_TIMEOUT_S
    later the service has exited, with every FFmpeg gone and every upload rolled back."""
    service_process.env |= {"SHUTDOWN_TIMEOUT_S": "1", "CONVERT_CONCURRENCY": "3"}
    await service_process.start()
    base = service_process.base
    async with aiohttp.ClientSession() as session:
        user = await service_process.new_user(session, "stopper")
        _, abandoned = await asyncio.open_connection(service_process.host, service_process.port)
        wav = audio(seconds=60)
        abandoned.write(head("/record", user, "audio/wav", len(wav)) + wav[: 1 << 20])
        await converting(service_process)
        abandoned_encoder = service_process.ffmpeg_children()
        abandoned.close()  # first, so the service has seen it go before the others arrive

        stalled = asyncio.create_task(held_upload(session, base, user, audio(seconds=30), asyncio.Event()))
        six_minutes = audio(seconds=360, rate=48000)
        samples = six_minutes[six_minutes.index(b"data") + 8 :]

        async def flat_out() -> AsyncIterator[bytes]:
            """Half an hour, streamed: encoding far longer than SHUTDOWN_TIMEOUT_S, however many
            encoders it gets (six minutes alone, on three, had ended within it, and was answered)."""
            yield wav_header(rate=48000, data_size=0)  # a streamed WAV: its length unstated
            for _ in range(5):
                for at in range(0, len(samples), 1 << 20):
                    yield samples[at : at + (1 << 20)]

        busy = asyncio.create_task(
            session.post(
                f"{base}/record?bitrate=320",
                data=flat_out(),
                headers={**basic(*user), "Content-Type": "audio/wav"},
            )
        )
        await until(lambda: len(set(service_process.ffmpeg_children()) - set(abandoned_encoder)) == 2)
        encoders = abandoned_encoder + service_process.ffmpeg_children()

        service_process.signal(signal.SIGTERM)
        assert service_process.wait(seconds=1 + 10) == 0
        for name, pending in (("stalled", stalled), ("busy", busy)):
            try:
                answered = await pending
            except aiohttp.ClientError:
                continue  # its connection was cut, as it should be
            pytest.fail(f"the {name} upload was answered, not cut: {answered.status} {await answered.text()}")

    assert not [pid for pid in encoders if alive(pid)]
    await until(lambda: count(admin, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'mp3_service'") == 0)
    assert nothing_stored(admin)
