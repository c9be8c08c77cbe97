"""Resumable uploads, tus 1.0.0 at /uploads (handlers/uploads.py), as a client speaks it:
creation, HEAD, PATCH from the offset, termination, expiry, every status the protocol
gives, and a PATCH cut short and resumed; the record at the end plays every sample."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import re
import signal
import socket
import struct
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
import requests
from tusclient.exceptions import TusCommunicationError, TusUploadFailed
from yarl import URL

import app as service_app
from converter import resume
from handlers import store as store_module
from service.busy_uploads import HEAD_WAITS_S
from service.keys import METRICS, SLOTS
from settings import Settings
from tests.database import FAR, FAR_S, MakeClient
from tests.support import (
    Audio,
    Client,
    DelayingProxy,
    ServiceProcess,
    basic,
    chunked,
    count,
    decoded,
    disk_that_hangs,
    expect_error,
    held_body,
    let_go_of,
    local,
    new_user,
    nothing_stored,
    records_match_large_objects,
    resampled,
    seek_table_finds_its_frames,
    statements_calling,
    tus_uploader,
    until,
    upload,
    uploads_with_cuts,
    waiting_for_a_lock,
)

TUS = {"Tus-Resumable": "1.0.0"}
PATCH = {"Content-Type": "application/offset+octet-stream"}


def metadata(**values: str) -> str:
    return ",".join(f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in values.items())


async def created(client: Client, user: tuple[int, str], length: int | None, **values: str) -> str:
    """A new upload's path."""
    headers = {**basic(*user), **TUS, "Upload-Metadata": metadata(filename="take.wav", **values)}
    headers |= {"Upload-Length": str(length)} if length is not None else {"Upload-Defer-Length": "1"}
    response = await client.post("/uploads", headers=headers)
    assert response.status == 201, await response.text()
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert response.headers["Upload-Expires"].endswith(" GMT")
    return local(response.headers["Location"])


async def patch(client: Client, user: tuple[int, str], path: str, offset: int, body: Any, **headers: str) -> Any:
    return await client.patch(
        path, data=body, headers={**basic(*user), **TUS, **PATCH, "Upload-Offset": str(offset), **headers}
    )


async def head_status(client: Client, user: tuple[int, str], path: str, **headers: str) -> int:
    """A HEAD's status (its answer has no body: no envelope to read)."""
    response = await client.head(path, headers={**basic(*user), **headers})
    assert response.headers["Tus-Resumable"] == "1.0.0"
    return response.status


async def offset_of(client: Client, user: tuple[int, str], path: str) -> int:
    response = await client.head(path, headers={**basic(*user), **TUS})
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    return int(response.headers["Upload-Offset"])


async def finished_mp3(client: Client, user: tuple[int, str], path: str, offset: int, wav: bytes) -> bytes:
    """The rest of the WAV sent from ``offset`` in one PATCH, which ends the upload: its record's MP3."""
    finished = await patch(client, user, path, offset, wav[offset:])
    assert finished.status == 204, await finished.text()
    assert "Record-Location" in finished.headers
    return bytes(await (await client.get(local(finished.headers["Record-Location"]))).read())


async def patch_under_way(
    client: Client, user: tuple[int, str], path: str, offset: int, length: int, sent: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A PATCH of ``length`` bytes from ``offset`` on a connection of its own, its first bytes
    ``sent`` and arrived (the service had received each byte before ``offset`` once)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(patch_head(path, user, offset, length) + sent)
    await writer.drain()
    received = client.app[METRICS].registry
    await until(lambda: received.get_sample_value("mp3_upload_bytes_total") == offset + len(sent))
    return reader, writer


def stored_offset(admin: psycopg.Connection, location: str) -> int:
    """An upload's offset as its table holds it, whether or not a PATCH is at work on it."""
    row = admin.execute("SELECT upload_offset FROM app.uploads WHERE id = %s", [location.rsplit("/", 1)[1]])
    return int((row.fetchone() or (0,))[0])


async def test_options_say_what_the_server_speaks(client: Client) -> None:
    response = await client.options("/uploads")
    assert response.status == 204
    assert response.headers["Tus-Version"] == "1.0.0"
    assert set(response.headers["Tus-Extension"].split(",")) == {
        "creation", "creation-defer-length", "expiration", "termination"
    }  # fmt: skip
    assert int(response.headers["Tus-Max-Size"]) == 1024 << 20


async def test_an_upload_in_two_patches_is_a_record_that_plays_every_sample(
    client: Client, audio: Audio, admin: psycopg.Connection
) -> None:
    user = await new_user(client)
    wav = audio(seconds=20)
    path = await created(client, user, len(wav), bitrate="128", title="Take one")
    first = await patch(client, user, path, 0, wav[: len(wav) * 2 // 5])
    assert first.status == 204
    offset = int(first.headers["Upload-Offset"])
    assert offset == len(wav) * 2 // 5  # all of it durable: as MP3, and the last second as sent
    assert first.headers["Upload-Expires"].endswith(" GMT")
    assert await offset_of(client, user, path) == offset

    unfinished = await client.get(path, headers=basic(*user))
    assert "18 bytes are in" not in (await expect_error(unfinished, 409))["message"]

    last = await patch(client, user, path, offset, wav[offset:])
    assert last.status == 204, await last.text()
    assert int(last.headers["Upload-Offset"]) == len(wav)
    record = (await (await client.get(path, headers=basic(*user))).json())["data"]
    assert last.headers["Record-Location"] == record["url"]
    assert record["bitrate"] == 128000
    assert record["filename"] == "take.mp3"
    mp3 = await (await client.get(local(record["url"]))).read()
    assert len(decoded(mp3, 2)) == 20 * 44100 * 2
    assert count(admin, "SELECT count(*) FROM app.uploads WHERE lo_oid IS NOT NULL") == 0
    assert records_match_large_objects(admin)


async def test_a_patch_cut_off_keeps_what_it_could_and_the_upload_resumes(
    client: Client, audio: Audio, admin: psycopg.Connection
) -> None:
    """The client goes away mid-PATCH: what was converted is kept, and the next PATCH
    goes on from the offset HEAD reports."""
    user = await new_user(client)
    wav = audio(seconds=30)
    path = await created(client, user, len(wav))
    release = asyncio.Event()
    cut_off = asyncio.create_task(patch(client, user, path, 0, held_body(wav, release, len(wav) // 2)))
    durable = 0

    async def checkpointed() -> bool:  # as an operator sees it: HEAD waits while a PATCH works
        nonlocal durable
        durable = stored_offset(admin, path)
        return durable > 0

    async with asyncio.timeout(20):
        while not await checkpointed():  # noqa: ASYNC110 - the service's progress offers no event
            await asyncio.sleep(0.02)
    cut_off.cancel()  # the connection drops
    with pytest.raises(asyncio.CancelledError):
        await cut_off
    await until(lambda: client.app[SLOTS].in_progress == 0)
    offset = await offset_of(client, user, path)
    assert durable <= offset <= len(wav) // 2
    assert len(decoded(await finished_mp3(client, user, path, offset, wav), 2)) == 30 * 44100 * 2


async def test_a_head_the_moment_a_patch_is_cut_answers_all_that_patch_brought(client: Client, audio: Audio) -> None:
    """The network resets a PATCH sent at full speed, and the client asks HEAD at once (as
    tus-js-client's first retry does): the answer waits for the cut PATCH's last checkpoint,
    so the client goes on from what reached the service, not from before it."""
    user = await new_user(client)
    wav = audio(seconds=90)
    cut_after = len(wav) * 3 // 4
    path = await created(client, user, len(wav))
    assert client.port is not None
    proxy = DelayingProxy(client.host, client.port, 0.0).start()
    proxy.cut_after_bytes = cut_after
    try:
        async with aiohttp.ClientSession() as session:
            headers = {**basic(*user), **TUS, **PATCH, "Upload-Offset": "0"}
            with pytest.raises(aiohttp.ClientError):
                await session.patch(f"http://{proxy.host}:{proxy.port}{path}", data=wav, headers=headers)
    finally:
        proxy.stop()
    offset = await offset_of(client, user, path)
    assert cut_after // 2 < offset <= cut_after  # what reached the service, as MP3 and as sent
    # An operator's dashboard counts the cut PATCH as its client's doing, not as the service failing.
    patches = client.app[METRICS].registry
    await until(lambda: patches.get_sample_value("mp3_upload_patches_total", {"status": "400"}) == 1)
    assert patches.get_sample_value("mp3_upload_patches_total", {"status": "500"}) is None
    assert len(decoded(await finished_mp3(client, user, path, offset, wav), 2)) == 90 * 44100 * 2


def test_psql_sees_a_patch_at_work_until_it_says_it_is_done(service: psycopg.Connection) -> None:
    """api.upload_open tells how long a PATCH may still be at work (HEAD waits for it);
    api.upload_settled ends that for the PATCH that claimed the upload, and only for it."""
    user, upload_id = psql_upload(service, "bea")
    assert busy_s(service, user, upload_id) == 0
    first = claimed(service, user, upload_id)
    assert 0 < busy_s(service, user, upload_id) <= 6
    second = claimed(service, user, upload_id)
    settled(service, upload_id, first)
    assert busy_s(service, user, upload_id) > 0  # the older PATCH is done; the newer one still works
    settled(service, upload_id, second)
    assert busy_s(service, user, upload_id) == 0


def test_psql_sees_a_patch_say_it_is_still_at_work(admin: psycopg.Connection, service: psycopg.Connection) -> None:
    """api.upload_busy renews a PATCH's word for another 6 s (its checkpoints renew it only as the
    MP3 grows), for the PATCH that claimed the upload, and only until it has said it is done."""
    user, upload_id = psql_upload(service, "cai")

    def word_holds_for(interval: str) -> None:  # as time without a renewal leaves it
        query = "UPDATE app.uploads SET patch_busy_until = now() + %s::interval WHERE id = %s"
        admin.execute(query, [interval, upload_id])

    def busy(generation: int) -> None:
        service.execute("SELECT api.upload_busy(%s, %s)", (upload_id, generation))

    first, second = claimed(service, user, upload_id), claimed(service, user, upload_id)
    word_holds_for("1 second")
    busy(first)
    assert busy_s(service, user, upload_id) <= 1  # the older PATCH has no say any more
    busy(second)
    assert 5 < busy_s(service, user, upload_id) <= 6
    word_holds_for("-1 second")  # lapsed: a renewal that waited out a frozen database, say
    busy(second)
    assert busy_s(service, user, upload_id) == 0  # nobody heard from it for 6 s: not taken to be at work again
    word_holds_for("1 second")
    settled(service, upload_id, second)
    busy(second)  # late: it changes nothing
    assert busy_s(service, user, upload_id) == 0


def psql_upload(service: psycopg.Connection, username: str) -> tuple[tuple[int, str], str]:
    """A new user and an upload of theirs, made as psql makes them: the user, the upload's id."""
    user_id, _, token = service.execute("SELECT * FROM api.user_create(%s)", [username]).fetchone() or ()
    create = "SELECT id FROM api.upload_create(%s, %s, 'take.wav', '{}', 1000, 3600, 16)"
    (upload_id,) = service.execute(create, (user_id, str(token))).fetchone() or ()
    return (int(user_id), str(token)), str(upload_id)


def busy_s(service: psycopg.Connection, user: tuple[int, str], upload: str) -> float:
    """How long HEAD would still wait for a PATCH at work on the upload (its path or id), as psql sees it."""
    query = "SELECT patch_busy_s FROM api.upload_open(%s, %s, %s)"
    row = service.execute(query, (user[0], user[1], upload.rsplit("/", 1)[-1])).fetchone()
    assert row is not None
    return float(row[0])


async def test_a_head_waits_for_a_patch_sent_in_real_time_at_a_low_bit_rate(
    client: Client, audio: Audio, service: psycopg.Connection
) -> None:
    """A PATCH's word that it is at work (which HEAD waits on, so that a client asking the moment
    its PATCH is cut hears all that PATCH brought) holds 6 s. Checkpoints renew it, but only as
    the MP3 grows: at 32 kb/s FFmpeg hands on its first 32 KiB after 8 s of audio, so a client
    sending in real time found no PATCH at work from its 6th second to its 8th. The PATCH renews
    the word itself every 2 s in which bytes came (api.upload_busy)."""
    user = await new_user(client)
    wav = audio(seconds=10)
    path = await created(client, user, len(wav), bitrate="32")
    quarter = 44100 * 4 // 4  # a quarter of a second of audio, sent each quarter of a second
    seven_s, go_on = asyncio.Event(), asyncio.Event()

    async def in_real_time() -> AsyncIterator[bytes]:
        for at in range(0, len(wav), quarter):
            if at == 28 * quarter:
                seven_s.set()
                await go_on.wait()
            yield wav[at : at + quarter]
            await asyncio.sleep(0.25)  # the client's pace, not a wait for the service

    async with asyncio.timeout(60):  # the test's own bound
        patching = asyncio.ensure_future(patch(client, user, path, 0, in_real_time()))
        await seven_s.wait()
        at_seven_s = busy_s(service, user, path)
        go_on.set()
        response = await patching
    assert response.status == 204
    assert at_seven_s > 0  # HEAD would wait for it


async def test_a_head_does_not_wait_for_a_patch_whose_client_has_paused(
    client: Client, audio: Audio, service: psycopg.Connection
) -> None:
    """A PATCH whose client sends nothing (paused, or its connection half-open after a network
    switch, until READ_TIMEOUT_S) cannot move the offset: its word lapses as it did before the
    PATCH renewed it, and a HEAD answers at once rather than after 5 s, each time (helper-35)."""
    user = await new_user(client)
    wav = audio(seconds=10)
    path = await created(client, user, len(wav))
    paused, go_on = asyncio.Event(), asyncio.Event()

    async def pausing() -> AsyncIterator[bytes]:
        yield wav[: len(wav) // 2]
        # The client pauses: longer than the word holds after the PATCH's last renewal, which
        # comes up to 2 s after the last bytes.
        await asyncio.sleep(10)
        paused.set()
        await go_on.wait()
        yield wav[len(wav) // 2 :]

    async with asyncio.timeout(60):  # the test's own bound
        patching = asyncio.ensure_future(patch(client, user, path, 0, pausing()))
        await paused.wait()
        after_the_pause = busy_s(service, user, path)
        go_on.set()
        response = await patching
    assert response.status == 204
    assert after_the_pause == 0


def claimed(service: psycopg.Connection, user: tuple[int, str], upload: str, length: int | None = None) -> int:
    """A PATCH at work on the upload (its path or id), as the service marks one (api.upload_claim): its generation."""
    claim = "SELECT generation FROM api.upload_claim(%s, %s, %s, 0, %s, 3600)"
    (generation,) = service.execute(claim, (user[0], user[1], upload.rsplit("/", 1)[-1], length)).fetchone() or ()
    return int(generation)


def settled(service: psycopg.Connection, upload: str, *generations: int) -> None:
    """The PATCHes of these generations done, as each says when it has answered (api.upload_settled)."""
    for generation in generations:
        service.execute("SELECT api.upload_settled(%s, %s)", (upload.rsplit("/", 1)[-1], generation))


async def head_answer(session: aiohttp.ClientSession, url: URL | str, user: tuple[int, str]) -> tuple[int, Any]:
    async with session.head(url, headers={**basic(*user), **TUS}) as response:
        return response.status, response.headers


@pytest.mark.parametrize("database_delay_s", [FAR_S], ids=[FAR])  # each poll holds a connection that long
async def test_heads_waiting_on_a_busy_upload_cost_a_query_each_and_leave_the_pool_to_others(
    client: Client, admin: psycopg.Connection, service: psycopg.Connection
) -> None:
    """200 HEADs at once on an upload a PATCH is at work on: each costs its own query, then
    they wait together on one poll of the database at a time, so another user's listing
    meanwhile waits behind a poll or two, not a pile of them (every HEAD polled every 50 ms,
    5,000 queries from one client, and listings took seconds). Once the PATCH is done (a
    newer one took over and gave the length, then both said they were done), every HEAD
    answers the upload as it is then."""
    heads = 200
    user = await new_user(client)
    other = await new_user(client, "bob")
    path = await created(client, user, None)
    first = claimed(service, user, path)
    before = statements_calling(admin, "api.upload_open")
    # No connection limit on the client's side: each HEAD is at the service at once.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        waiting = [asyncio.ensure_future(head_answer(session, client.make_url(path), user)) for _ in range(heads)]
        await until(lambda: statements_calling(admin, "api.upload_open") >= before + heads + 10)
        asked = statements_calling(admin, "api.upload_open")
        listing = await client.get("/records", headers=basic(*other))
        assert listing.status == 200
        assert statements_calling(admin, "api.upload_open") - asked <= 10  # what the listing waited behind
        settled(service, path, first, claimed(service, user, path, length=1000))
        answers = await asyncio.gather(*waiting)
    assert statements_calling(admin, "api.upload_open") - before < 2 * heads  # not one per HEAD per 50 ms
    for status, headers in answers:
        assert status == 200
        assert (headers["Upload-Offset"], headers["Upload-Length"]) == ("0", "1000")


@pytest.mark.parametrize("database_delay_s", [FAR_S], ids=[FAR])  # the service reaches it through the proxy
async def test_a_head_answers_what_it_knows_after_5_s_though_the_database_stops_answering(
    make_client: MakeClient, database_proxy: DelayingProxy, admin: psycopg.Connection, service: psycopg.Connection
) -> None:
    """A HEAD waits for a PATCH at work 5 s at most from its start, its polls' waits for the
    database included: the database freezes while it waits, and it answers the offset it
    knows while the database is still frozen (it waited on its poll for STALL_TIMEOUT_S)."""
    client = await make_client(stall_timeout_s=600)
    user = await new_user(client)
    path = await created(client, user, 1000)
    claimed(service, user, path)
    head = asyncio.ensure_future(head_answer(client.session, client.make_url(path), user))
    await until(lambda: statements_calling(admin, "api.upload_open") >= 2)  # its own query and a poll answered
    database_proxy.freeze()
    try:
        async with asyncio.timeout(4 * HEAD_WAITS_S):  # the test's own bound: it waits for nothing longer
            status, headers = await head
    finally:
        database_proxy.thaw()
    assert status == 200
    assert (headers["Upload-Offset"], headers["Upload-Length"]) == ("0", "1000")


async def test_heads_on_more_busy_uploads_than_are_watched_answer_at_once(
    client: Client, service: psycopg.Connection
) -> None:
    """A process watches 4 busy uploads at once, 2 of one user's: a HEAD on a fifth, or on a
    third of one user's, answers at once the offset it found (an operator sees it counted),
    while the HEADs already waiting go on waiting for their PATCHes."""
    alice, bea, cem = await new_user(client), await new_user(client, "bea"), await new_user(client, "cem")
    owners = [alice, alice, bea, bea, alice, cem]
    paths = [await created(client, owner, 1000) for owner in owners]
    generations = [claimed(service, owner, path) for owner, path in zip(owners, paths, strict=True)]
    metrics = client.app[METRICS].registry
    waiting = [
        asyncio.ensure_future(head_answer(client.session, client.make_url(path), owner))
        for owner, path in zip(owners[:4], paths[:4], strict=True)
    ]
    await until(lambda: metrics.get_sample_value("mp3_upload_head_waits") == 4)
    for owner, path in zip(owners[4:], paths[4:], strict=True):  # alice's third, and cem's first
        assert (await head_answer(client.session, client.make_url(path), owner))[0] == 200
    assert metrics.get_sample_value("mp3_upload_heads_unwatched_total") == 2
    assert not any(head.done() for head in waiting)
    for path, generation in zip(paths, generations, strict=True):
        settled(service, path, generation)
    assert [status for status, _ in await asyncio.gather(*waiting)] == [200] * 4
    assert metrics.get_sample_value("mp3_upload_head_waits") == 0


# Clients send the next chunk from the offset a 204 gives (TUS-NOTES): a 204 that leaves it
# where it was makes them send the same chunk again, for ever. tuspy with chunk_size=65536
# once sent 200 PATCHes of a 5-second WAV and stayed at offset 78 (its header).
async def test_a_short_patch_moves_the_offset_to_its_last_byte(client: Client, audio: Audio) -> None:
    user = await new_user(client)
    wav = audio(seconds=20)
    path = await created(client, user, len(wav))
    offset = 0
    for chunk in (2 << 20, 65536, 1000, 3, 65536):  # a second's worth and far less
        response = await patch(client, user, path, offset, wav[offset : offset + chunk])
        assert response.status == 204
        assert int(response.headers["Upload-Offset"]) == offset + chunk
        offset += chunk
        assert await offset_of(client, user, path) == offset
    assert len(decoded(await finished_mp3(client, user, path, offset, wav), 2)) == 20 * 44100 * 2


async def test_patches_too_short_to_convert_keep_their_bytes_and_cost_what_they_bring(
    client: Client, audio: Audio, admin: psycopg.Connection
) -> None:
    """A client that sends in small chunks (TUSKit's are 500 KB), or one a byte a request: a
    PATCH too short to be worth converting on its own keeps its bytes as they were sent, and
    the next that converts takes them up (one past 2 MiB unconverted). Each one converted
    started an FFmpeg and rewrote the upload's pending bytes and measurement whole: 233 KiB
    of WAL for a PATCH of one byte. The record is the same either way: every sample, and
    the waveform and loudness of a POST."""
    user = await new_user(client)
    wav = audio(seconds=40)
    posted = (await (await upload(client, user, wav)).json())["data"]
    path = await created(client, user, len(wav))
    offset = int((await patch(client, user, path, 0, wav[: len(wav) // 3])).headers["Upload-Offset"])

    wal_before = admin.execute("SELECT pg_current_wal_lsn()").fetchone()
    for _ in range(20):
        response = await patch(client, user, path, offset, wav[offset : offset + 1])
        assert int(response.headers["Upload-Offset"]) == offset + 1
        offset += 1
    wal = admin.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", wal_before).fetchone()
    assert wal is not None
    assert wal[0] / 20 < 16 << 10  # 3.2 KiB each; 233 KiB when each was converted
    assert pieces_of(admin, path) == 20

    kept = []  # after each PATCH of 500 KB, how many the upload keeps as sent
    while offset + 500_000 < len(wav):
        response = await patch(client, user, path, offset, wav[offset : offset + 500_000])
        offset += 500_000
        assert int(response.headers["Upload-Offset"]) == offset == await offset_of(client, user, path)
        kept.append(pieces_of(admin, path))
    assert kept == [21, 22, 23, 0, 1, 2, 3, 0, 1]  # each fourth takes up the three before (with the bytes)
    assert len(decoded(await finished_mp3(client, user, path, offset, wav), 2)) == 40 * 44100 * 2
    record = (await (await client.get(path, headers=basic(*user))).json())["data"]
    assert record["loudness"] == posted["loudness"]
    waveforms = [
        await (await client.get(local(one["waveform"]), headers=basic(*user))).read() for one in (record, posted)
    ]
    assert waveforms[0] == waveforms[1]


@pytest.mark.parametrize("saved", ["by an older analyser", "none"])
async def test_a_resumed_upload_whose_measurement_cannot_go_on_is_stored_whole_without_one(
    client: Client, audio: Audio, admin: psycopg.Connection, caplog: pytest.LogCaptureFixture, saved: str
) -> None:
    """A resumed upload goes on with the waveform and loudness its last checkpoint saved. One
    saved by an analyser of another layout (a rolling upgrade: STATE_VERSION 1 before 2) made
    every resume fail 500 until the upload expired; none at all, where the samples were
    taken by a replica with AUDIO_ANALYSIS off, began a measurement of part of the recording.
    Either way the upload is now stored whole, without a waveform or loudness."""
    user = await new_user(client)
    wav = audio(seconds=20)
    path = await created(client, user, len(wav))
    offset = int((await patch(client, user, path, 0, wav[: len(wav) // 2])).headers["Upload-Offset"])
    older = b"WAVA" + struct.pack("<H", 1) + bytes(100)
    admin.execute(
        "UPDATE app.uploads SET analysis = %s WHERE id = %s",
        [older if saved == "by an older analyser" else None, path.rsplit("/", 1)[1]],
    )
    mp3 = await finished_mp3(client, user, path, offset, wav)
    assert len(decoded(mp3, 2)) == 20 * 44100 * 2
    record = (await (await client.get(path, headers=basic(*user))).json())["data"]
    assert record["waveform"] is None
    assert record["loudness"] == {"integrated": None, "range": None, "true_peak": None}
    assert "measurement so far cannot be gone on with" in caplog.text


@pytest.mark.parametrize("written_by", ["an earlier version", "a newer version"])
async def test_an_upload_whose_checkpoint_is_of_another_version_is_told_so(
    client: Client, audio: Audio, admin: psycopg.Connection, caplog: pytest.LogCaptureFixture, written_by: str
) -> None:
    """A checkpoint converter/resume.py's VERSION does not read cannot be gone on from here:
    every PATCH of its upload failed 500 until the upload expired. One an earlier version
    wrote never can be: the PATCH is answered 410, the upload and its MP3 are gone, and
    HEAD answers 404, on which the upload is begun anew. One a newer version wrote, a
    process of that version can go on with (a rolling deploy, a rollback): 503 with
    Retry-After, and the upload stays as it was."""
    user = await new_user(client)
    wav = audio(seconds=20)
    path = await created(client, user, len(wav))
    offset = int((await patch(client, user, path, 0, wav[: len(wav) // 2])).headers["Upload-Offset"])
    version = 0 if written_by == "an earlier version" else resume.VERSION + 1
    admin.execute(
        "UPDATE app.uploads SET progress = jsonb_set(progress, '{version}', %s::text::jsonb) WHERE id = %s",
        [version, path.rsplit("/", 1)[1]],
    )
    answer = await patch(client, user, path, offset, wav[offset:])
    if written_by == "an earlier version":
        refused = await expect_error(answer, 410)
        assert "create a new upload" in refused["message"]
        assert (await client.head(path, headers={**basic(*user), **TUS})).status == 404
        assert nothing_stored(admin)
        assert f"(a checkpoint of version 0, not {resume.VERSION}): it was deleted" in caplog.text
    else:
        await expect_error(answer, 503)
        assert answer.headers["Retry-After"] == "5"
        assert await offset_of(client, user, path) == offset
        assert f"(a checkpoint of version {version}, not {resume.VERSION}): left for" in caplog.text


@pytest.mark.parametrize(("limit", "status"), [("user_quota_bytes", 413), ("storage_max_bytes", 507)])
async def test_a_patch_whose_last_checkpoint_would_pass_a_limit_is_told_so(
    client: Client, audio: Audio, admin: psycopg.Connection, limit: str, status: int
) -> None:
    """A PATCH of part of an upload stores what it brought in a last checkpoint as its body
    ends. Refused there, by the quota or the storage bound, it answered 204 all the same,
    with the offset of the checkpoint before (78: the WAV's header). Its client, told all was
    well, sent on from there the same bytes, refused the same way, and never heard why."""
    user = await new_user(client)
    wav = audio(seconds=20)
    path = await created(client, user, len(wav))
    setting = psycopg.sql.SQL("UPDATE app.settings SET {} = 20000").format(psycopg.sql.Identifier(limit))
    admin.execute(setting)  # the first 10 s make some 240 KB of MP3
    refused = await patch(client, user, path, 0, wav[: len(wav) // 2])
    assert refused.status == status, await refused.text()
    assert await offset_of(client, user, path) < len(wav) // 2


def pieces_of(admin: psycopg.Connection, upload: str) -> int:
    """How many PATCHes' bytes the upload (its path or id) keeps as they were sent."""
    row = admin.execute("SELECT count(*) FROM app.upload_pieces WHERE upload_id = %s", [upload.rsplit("/", 1)[-1]])
    return int((row.fetchone() or (0,))[0])


async def test_a_short_patch_cut_off_keeps_what_reached_the_service(
    client: Client, audio: Audio, admin: psycopg.Connection
) -> None:
    """A PATCH kept as sent, as one converted, keeps the bytes that came before its client went."""
    user = await new_user(client)
    wav = audio(seconds=20)
    path = await created(client, user, len(wav))
    offset = int((await patch(client, user, path, 0, wav[: len(wav) // 2])).headers["Upload-Offset"])
    _, writer = await patch_under_way(client, user, path, offset, 100_000, wav[offset : offset + 60_000])
    await leave(writer)
    assert await offset_of(client, user, path) == offset + 60_000
    assert pieces_of(admin, path) == 1
    assert len(decoded(await finished_mp3(client, user, path, offset + 60_000, wav), 2)) == 20 * 44100 * 2


async def test_a_conversion_cut_as_it_begins_loses_none_of_the_bytes_kept_as_sent(
    client: Client, audio: Audio, admin: psycopg.Connection
) -> None:
    """The PATCH that takes up the pieces kept as sent is cut before it has converted much:
    whatever it commits, or nothing, the upload still holds every byte sent before it."""
    user = await new_user(client)
    wav = audio(seconds=20)
    path = await created(client, user, len(wav))
    offset = int((await patch(client, user, path, 0, wav[: len(wav) // 3])).headers["Upload-Offset"])
    for _ in range(3):
        offset = int((await patch(client, user, path, offset, wav[offset : offset + 100_000])).headers["Upload-Offset"])
    assert pieces_of(admin, path) == 3
    _, writer = await patch_under_way(client, user, path, offset, len(wav) - offset, wav[offset : offset + 10_000])
    await leave(writer)
    resumed_at = await offset_of(client, user, path)
    assert offset <= resumed_at <= offset + 10_000
    assert len(decoded(await finished_mp3(client, user, path, resumed_at, wav), 2)) == 20 * 44100 * 2


async def test_a_newer_patch_takes_over_from_a_short_one_still_sending(
    client: Client, audio: Audio, admin: psycopg.Connection
) -> None:
    """As from a conversion: a PATCH kept as sent that another took over while its body came
    stores nothing of it and is told so (423); the upload keeps the newer PATCH's bytes."""
    user = await new_user(client)
    wav = audio(seconds=20)
    path = await created(client, user, len(wav))
    offset = int((await patch(client, user, path, 0, wav[: len(wav) // 2])).headers["Upload-Offset"])
    reader, writer = await patch_under_way(client, user, path, offset, 100_000, wav[offset : offset + 50_000])
    newer = await patch(client, user, path, offset, wav[offset : offset + 30_000])
    assert int(newer.headers["Upload-Offset"]) == offset + 30_000
    writer.write(wav[offset + 50_000 : offset + 100_000])
    assert (await reader.readline()).startswith(b"HTTP/1.1 423")
    await leave(writer)
    assert (await offset_of(client, user, path), pieces_of(admin, path)) == (offset + 30_000, 1)
    assert len(decoded(await finished_mp3(client, user, path, offset + 30_000, wav), 2)) == 20 * 44100 * 2


async def test_an_accounts_short_patches_wait_for_its_upload_places(client: Client, audio: Audio) -> None:
    """A PATCH kept as sent holds its body in memory until it ends, so it takes one of its
    account's two upload places as a conversion does: PATCHes parked on its uploads, their
    bodies unsent, wait in line for them (and are refused after QUEUE_TIMEOUT_S) rather
    than each holding up to 2 MiB (helper-36 parked 200 of them: +418 MiB). On three
    uploads: parked on one, each newer PATCH would stop the one before it (423)."""
    user = await new_user(client)
    wav = audio(seconds=20)
    paths = [await created(client, user, len(wav)) for _ in range(3)]
    offsets = [
        int((await patch(client, user, path, 0, wav[: len(wav) // 2])).headers["Upload-Offset"]) for path in paths
    ]
    slots = client.app[SLOTS]
    parked = []
    for path, offset in zip(paths, offsets, strict=True):
        _, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(patch_head(path, user, offset, 50))
        parked.append(writer)
    await until(lambda: (slots.in_progress, slots.waiting_for_account) == (2, 1))
    for writer in parked:
        await leave(writer)
    assert [await offset_of(client, user, path) for path in paths] == offsets


async def test_a_patch_taken_over_while_its_client_is_silent_gives_its_upload_place_up(
    client: Client, audio: Audio, caplog: pytest.LogCaptureFixture
) -> None:
    """A client's network goes quiet mid-PATCH on both its uploads, no reset reaching us: each
    silent PATCH holds one of the account's two upload places until READ_TIMEOUT_S (60 s).
    The client comes back and resumes: its newer PATCH takes the upload over and stops the
    silent one at once (423, should its client still listen), and so is admitted, where it
    was refused 503 after QUEUE_TIMEOUT_S until the silent ones timed out (helper-38: 50 s).
    Its connection is closed after the 423, not read on: that read logged an ERROR (helper-40)."""
    caplog.set_level(logging.ERROR)
    user = await new_user(client)
    wav = audio(seconds=20)
    paths = [await created(client, user, len(wav)) for _ in range(2)]
    silent = []
    for path in paths:
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(patch_head(path, user, 0, len(wav)))
        silent.append((reader, writer))
    slots = client.app[SLOTS]
    await until(lambda: slots.in_progress == 2)
    assert len(decoded(await finished_mp3(client, user, paths[0], 0, wav), 2)) == 20 * 44100 * 2
    taken_over, _ = silent[0]
    answer = await taken_over.read()  # to its end: the service closes the connection after it
    assert answer.startswith(b"HTTP/1.1 423"), answer
    assert [record.getMessage() for record in caplog.records] == []
    for _, writer in silent:
        await leave(writer)


@pytest.mark.parametrize("ending", ["rst", "fin", "fin after its whole body"])
async def test_a_patch_cut_while_it_waits_for_a_place_leaves_the_line_and_says_it_is_done(
    make_client: MakeClient, audio: Audio, admin: psycopg.Connection, ending: str
) -> None:
    """A PATCH waits for one of its account's two upload places, its client's bytes past what
    aiohttp reads ahead (it stops reading the socket), and the network drops: it leaves the
    line at once and says it is done, so the client's HEAD, asked at once, answers the offset
    it claimed from at once. It waited for its place blind to the reset or FIN behind those
    bytes, its mark lapsing 6 s after its claim: the HEAD waited its whole 5 s (helper-49:
    p95 5.0 s in a soak). A FIN after the whole body is a half-close: that PATCH waits on and,
    a place come free, finishes the upload."""
    client = await make_client(queue_timeout_s=600)  # it would wait for a place that long
    user = await new_user(client)
    wav = audio(seconds=10)
    path = await created(client, user, len(wav))
    offset = int((await patch(client, user, path, 0, wav[: len(wav) // 2])).headers["Upload-Offset"])
    slots = client.app[SLOTS]
    holding = []
    for other in [await created(client, user, len(wav)) for _ in range(2)]:
        _, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(patch_head(other, user, 0, len(wav)))  # their clients silent: the places stay taken
        holding.append(writer)
    await until(lambda: slots.in_progress == 2)
    sent = len(wav) - offset if ending == "fin after its whole body" else 600_000
    _, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(patch_head(path, user, offset, len(wav) - offset) + wav[offset : offset + sent])
    await writer.drain()
    await until(lambda: slots.waiting_for_account == 1)
    if ending == "rst":
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
    upload_id = path.rsplit("/", 1)[1]
    if ending == "fin after its whole body":
        await leave(holding.pop())
        await until(lambda: finished(admin, upload_id))
    else:
        async with asyncio.timeout(HEAD_WAITS_S / 2):  # the test's own bound: the HEAD waited HEAD_WAITS_S
            assert await offset_of(client, user, path) == offset  # nothing it sent is kept: it converted none
        assert slots.waiting_for_account == 0
        assert claims_and_settled(admin, upload_id)[1]
    for holder in holding:
        await leave(holder)
    if ending != "fin after its whole body":
        assert len(decoded(await finished_mp3(client, user, path, offset, wav), 2)) == 10 * 44100 * 2
    assert finished(admin, upload_id)


def finished(admin: psycopg.Connection, upload_id: str) -> bool:
    row = admin.execute("SELECT record_id IS NOT NULL FROM app.uploads WHERE id = %s", [upload_id]).fetchone()
    return bool(row and row[0])


@pytest.mark.parametrize(
    ("patches", "local_copy", "last_sent"),
    [
        (1, "made", "sized"), (1, "cannot be made", "sized"), (1, "hangs", "sized"),
        (2, "made", "sized"), (2, "hangs", "sized"), (2, "made", "chunked"),
    ],
    # On the disk that hangs, the resumed PATCH's copy cannot be made at all: the FIFO it is
    # given cannot leave room for the MP3 stored before (a hanging read-back write: below).
    ids=["one", "one-no-copy", "one-copy-hangs", "resumed", "resumed-on-a-disk-that-hangs", "resumed-chunked"],
)  # fmt: skip
async def test_a_records_digest_is_its_mp3s_however_it_was_hashed(
    make_client: MakeClient,
    audio: Audio,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    patches: int,
    local_copy: str,
    last_sent: str,
) -> None:
    """A PATCH that writes the MP3 from its first byte hashes a local copy of it, as
    POST /record does (handlers/store.py LocalCopy); so does a resumed one whose length says
    it ends the upload, its copy beginning with the MP3 stored before, read back while it
    converts. With no copy, one that hangs (given up after half of STALL_TIMEOUT_S), or a
    resumed PATCH of unstated length, the digest is read back from the database once the
    PATCH has ended. The ETag is the MP3's SHA-256 either way, and the seek table finds
    every hundredth of its frames (a resumed upload's reads where the frames stored before
    begin, with the copy's prefix or back from the database)."""
    caplog.set_level(logging.DEBUG, logger="mp3.db")
    if local_copy == "cannot be made":
        monkeypatch.setattr(tempfile, "tempdir", "/nonexistent/tmp")
    client = await make_client(stall_timeout_s=1.0) if local_copy == "hangs" else await make_client()
    user = await new_user(client)
    wav = audio(seconds=20)
    path = await created(client, user, len(wav))
    offset = 0
    async with contextlib.AsyncExitStack() as disk:
        if local_copy == "hangs":
            await disk.enter_async_context(disk_that_hangs(tmp_path))
        for part in range(1, patches + 1):
            body = wav[offset : len(wav) * part // patches]
            response = await patch(
                client, user, path, offset, chunked(body) if part > 1 and last_sent == "chunked" else body
            )
            assert response.status == 204
            offset = int(response.headers["Upload-Offset"])
    download = await client.get(local(response.headers["Record-Location"]))
    mp3 = await download.read()
    assert download.headers["ETag"] == f'"{hashlib.sha256(mp3).hexdigest()}"'
    assert seek_table_finds_its_frames(mp3)
    read_back = local_copy != "made" or last_sent == "chunked"
    assert ("its digest is read back from the database" in caplog.text) == read_back
    assert ("took over 0.5 s to write" in caplog.text) == (local_copy == "hangs")


class ReadsBack:
    """Each piece of the MP3 stored before that the service sets out to read back (on a
    connection of the pool, which a frozen database may never give), by its first byte."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.from_bytes: list[int] = []
        read_back = store_module.CheckpointedUpload._read_back

        def noted(upload: store_module.CheckpointedUpload, at: int, stop: int) -> Any:
            self.from_bytes.append(at)
            return read_back(upload, at, stop)

        monkeypatch.setattr(store_module.CheckpointedUpload, "_read_back", noted)


async def resumed_half_way(client: Client, user: tuple[int, str], wav: bytes) -> tuple[str, int]:
    """A new upload with the first half of ``wav`` stored: its path and offset."""
    path = await created(client, user, len(wav))
    first = await patch(client, user, path, 0, wav[: len(wav) // 2])
    assert first.status == 204
    return path, int(first.headers["Upload-Offset"])


async def test_a_last_patch_cut_before_its_last_byte_reads_back_nothing_stored_before_it(
    client: Client, audio: Audio, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resumed PATCH that ends the upload reads the MP3 stored before back (for its digest
    and seek table) once its last byte is in. Begun as it was admitted, a client that sent
    such a PATCH's head and went away, as often as it liked, had the service read the
    whole MP3 back each time (881 bytes read a byte sent, in a review). Now a cut one reads
    what any resumed PATCH reads, the frames after the resume point its join needs."""
    reads = ReadsBack(monkeypatch)
    user = await new_user(client)
    wav = audio(seconds=20)
    path, offset = await resumed_half_way(client, user, wav)
    _, writer = await patch_under_way(client, user, path, offset, len(wav) - offset, wav[offset : offset + 65536])
    await leave(writer)
    await until(lambda: client.app[SLOTS].in_progress == 0)
    assert reads.from_bytes
    assert 0 not in reads.from_bytes  # nothing before the resume point

    offset = await offset_of(client, user, path)
    mp3 = await finished_mp3(client, user, path, offset, wav)
    assert reads.from_bytes.count(0) == 1  # the last PATCH's read, once its last byte was in
    assert seek_table_finds_its_frames(mp3)
    assert len(decoded(mp3, 2)) == 20 * 44100 * 2


def files_unlinked_but_open() -> int:
    """This process's open files that have no name, as its local copies of MP3s have."""
    names = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            names.append(os.readlink(f"/proc/self/fd/{fd}"))
    return sum(name.endswith(" (deleted)") for name in names)


async def test_a_copy_whose_read_back_write_hangs_is_given_up_and_closed_once_it_lets_go(
    make_client: MakeClient, audio: Audio, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that stops as the MP3 stored before is written into the last PATCH's copy: the
    copy is given up after half of STALL_TIMEOUT_S and the digest read back, the PATCH
    answered as ever; the copy's file is closed only once that write lets go, and nothing
    is written to a closed file."""
    hangs, writes = threading.Event(), []
    write_at = store_module.LocalCopy._write_at

    def hanging(file: Any, piece: bytes, at: int) -> bool:
        hangs.wait(30)
        writes.append(file.closed)
        return write_at(file, piece, at)

    monkeypatch.setattr(store_module.LocalCopy, "_write_at", staticmethod(hanging))
    client = await make_client(stall_timeout_s=1.0)
    user = await new_user(client)
    wav = audio(seconds=20)
    path, offset = await resumed_half_way(client, user, wav)
    unlinked = files_unlinked_but_open()  # pytest's captures among them
    try:
        last = await patch(client, user, path, offset, wav[offset:])
        assert last.status == 204, await last.text()
        assert files_unlinked_but_open() == unlinked + 1  # the copy, its write still hanging
    finally:
        hangs.set()
    await until(lambda: files_unlinked_but_open() == unlinked)
    assert writes == [False]
    mp3 = await (await client.get(local(last.headers["Record-Location"]))).read()
    assert seek_table_finds_its_frames(mp3)
    assert len(decoded(mp3, 2)) == 20 * 44100 * 2


@pytest.mark.parametrize("database_delay_s", [0.001])  # through the proxy, which can freeze
async def test_a_last_patch_whose_read_back_goes_unanswered_answers_503_once(
    make_client: MakeClient, audio: Audio, monkeypatch: pytest.MonkeyPatch, database_proxy: DelayingProxy
) -> None:
    """The database stops answering as the last PATCH begins to read back the MP3 stored
    before: the PATCH answers 503 once that read's deadline has passed, without reading it
    again (for the seek table, then the digest) only to wait as long again."""
    reads = ReadsBack(monkeypatch)
    all_in = store_module.CheckpointedUpload.all_in

    def frozen_as_it_reads(self: store_module.CheckpointedUpload) -> None:
        database_proxy.freeze()
        all_in(self)

    monkeypatch.setattr(store_module.CheckpointedUpload, "all_in", frozen_as_it_reads)
    client = await make_client(stall_timeout_s=1.0)
    user = await new_user(client)
    wav = audio(seconds=20)
    path, offset = await resumed_half_way(client, user, wav)
    try:
        await expect_error(await patch(client, user, path, offset, wav[offset:]), 503)
    finally:
        database_proxy.thaw()
    assert reads.from_bytes.count(0) == 1
    assert reads.from_bytes[-1] == 0  # nothing read after it (the seek table's read began past the tag)


@pytest.mark.slow
async def test_tuspy_in_chunks_of_64_kib_sends_each_byte_once(service_process: ServiceProcess, audio: Audio) -> None:
    await service_process.start()
    async with aiohttp.ClientSession() as session:
        user = await service_process.new_user(session, "chunks")
    wav = audio(seconds=5)
    uploader = tus_uploader(service_process.base, user, wav, chunk_size=65536)
    await asyncio.to_thread(uploader.upload)
    assert uploader.request is not None
    async with aiohttp.ClientSession() as session:
        metrics = await (await session.get(service_process.base + "/metrics")).text()
        link = uploader.request.response_headers["record-location"]
        mp3 = await (await session.get(service_process.base + local(link))).read()
    patches = re.search(r'^mp3_upload_patches_total\{status="204"\} (\S+)$', metrics, re.MULTILINE)
    assert patches is not None
    assert float(patches.group(1)) == -(-len(wav) // 65536)  # one per chunk: none sent again
    received = re.search(r"^mp3_upload_bytes_total (\S+)$", metrics, re.MULTILINE)
    stored = re.search(r"^mp3_output_bytes_total (\S+)$", metrics, re.MULTILINE)
    assert received is not None
    assert stored is not None
    assert (float(received.group(1)), float(stored.group(1))) == (len(wav), len(mp3))  # as for a POST
    assert len(decoded(mp3, 2)) == 5 * 44100 * 2


async def test_a_resampled_upload_keeps_all_each_patch_brought(client: Client, audio: Audio) -> None:
    """Its frames begin on a source sample every few frames (converter/command.py): a PATCH that
    ends between them keeps the rest as it was sent, as for any upload."""
    user = await new_user(client)
    wav = audio(seconds=20)
    path = await created(client, user, len(wav), sample_rate="22050")
    offset = 0
    for chunk in (2 << 20, 1 << 20, 65536):
        response = await patch(client, user, path, offset, wav[offset : offset + chunk])
        assert int(response.headers["Upload-Offset"]) == offset + chunk
        offset += chunk
    assert len(decoded(await finished_mp3(client, user, path, offset, wav), 2)) == len(resampled(wav, 22050))


async def test_a_deferred_length_is_given_by_a_later_patch(client: Client, audio: Audio) -> None:
    user = await new_user(client)
    wav = audio(seconds=5)
    path = await created(client, user, None)
    head = await client.head(path, headers={**basic(*user), **TUS})
    assert head.headers["Upload-Defer-Length"] == "1"
    first = await patch(client, user, path, 0, wav[:200_000])
    offset = int(first.headers["Upload-Offset"])
    last = await patch(client, user, path, offset, wav[offset:], **{"Upload-Length": str(len(wav))})
    assert int(last.headers["Upload-Offset"]) == len(wav)
    assert "Record-Location" in last.headers


async def test_an_offset_that_is_not_the_uploads_is_409_and_changes_nothing(client: Client, audio: Audio) -> None:
    user = await new_user(client)
    wav = audio(seconds=5)
    path = await created(client, user, len(wav))
    body = await expect_error(await patch(client, user, path, 1000, wav[1000:]), 409)
    assert body["message"] == "The upload's offset is 0, not 1000: send from there."
    assert await offset_of(client, user, path) == 0


async def test_what_the_protocol_refuses(client: Client, audio: Audio) -> None:
    user = await new_user(client)
    wav = audio(seconds=2)
    path = await created(client, user, len(wav))
    no_version = await client.head(path, headers=basic(*user))
    assert no_version.status == 412
    assert no_version.headers["Tus-Version"] == "1.0.0"
    await expect_error(await client.delete(path, headers=basic(*user)), 412)
    wrong_type = await client.patch(path, data=wav, headers={**basic(*user), **TUS, "Upload-Offset": "0"})
    await expect_error(wrong_type, 415)
    too_long = await client.post("/uploads", headers={**basic(*user), **TUS, "Upload-Length": str(2 << 30)})
    await expect_error(too_long, 413)
    assert too_long.headers["Tus-Max-Size"] == str(1024 << 20)
    past_its_length = await client.patch(
        path, data=wav + b"\0" * 100, headers={**basic(*user), **TUS, **PATCH, "Upload-Offset": "0"}
    )
    body = await expect_error(past_its_length, 413)
    assert (
        body["message"] == f"The PATCH goes past the upload's length: {len(wav)} of its {len(wav)} bytes remain from 0."
    )
    await expect_error(await client.post("/uploads", headers={**basic(*user), **TUS}), 400)  # no length
    with_length = {**basic(*user), **TUS, "Upload-Length": str(len(wav))}

    for creation_with_upload in (wav, chunked(wav)):  # as Content-Length, or chunked
        await expect_error(await client.post("/uploads", data=creation_with_upload, headers=with_length), 400)
    await expect_error(await client.post("/uploads", headers={**TUS, "Upload-Length": "10"}), 401)
    bad_metadata = {**basic(*user), **TUS, "Upload-Length": "10", "Upload-Metadata": "bitrate not-base64!"}
    await expect_error(await client.post("/uploads", headers=bad_metadata), 400)
    bad_option = {**basic(*user), **TUS, "Upload-Length": "10", "Upload-Metadata": metadata(bitrate="100")}
    await expect_error(await client.post("/uploads", headers=bad_option), 400)
    other = await new_user(client, "other")
    assert await head_status(client, other, path, **TUS) == 404  # another user's: as if absent
    assert await head_status(client, user, "/uploads/0c6f4f58-0000-4000-8000-000000000000", **TUS) == 404
    not_a_wav = await created(client, user, 100_000)
    await expect_error(await patch(client, user, not_a_wav, 0, b"\x00" * 100_000), 415)


async def test_an_expired_upload_is_410_and_swept_with_its_mp3(
    client: Client, audio: Audio, admin: psycopg.Connection
) -> None:
    user = await new_user(client)
    wav = audio(seconds=10)
    path = await created(client, user, len(wav))
    await patch(client, user, path, 0, wav[: len(wav) // 2])
    admin.execute("UPDATE app.uploads SET expires_at = now() - interval '1 second'")
    assert await head_status(client, user, path, **TUS) == 410
    await expect_error(await patch(client, user, path, 0, wav), 410)
    await expect_error(await client.get(path, headers=basic(*user)), 410)  # as docs/operations.md says
    await expect_error(await client.delete(path, headers={**basic(*user), **TUS}), 410)  # the sweeper's to remove
    assert count(admin, "SELECT api.uploads_sweep(10)") == 1
    assert count(admin, "SELECT count(*) FROM app.uploads") == 0
    assert count(admin, "SELECT count(*) FROM pg_largeobject_metadata") == 0
    assert await head_status(client, user, path, **TUS) == 404


async def test_the_service_sweeps_expired_uploads_by_itself_and_outlives_a_sweep_that_fails(
    make_client: MakeClient,
    audio: Audio,
    admin: psycopg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nobody calls api.uploads_sweep but the service: it sweeps every SWEEP_INTERVAL_S (here
    a tenth of a second), and a sweep the database refuses is logged, not the sweeper's end."""
    monkeypatch.setattr(service_app, "SWEEP_INTERVAL_S", 0.1)
    caplog.set_level(logging.INFO, logger="app")
    client = await make_client()
    user = await new_user(client)
    wav = audio(seconds=10)
    expiring, kept = await created(client, user, len(wav)), await created(client, user, len(wav))
    await patch(client, user, expiring, 0, wav[: len(wav) // 2])
    admin.execute("REVOKE EXECUTE ON FUNCTION api.uploads_sweep(integer) FROM mp3_service")
    admin.execute("UPDATE app.uploads SET expires_at = now() - interval '1 second' WHERE id = %s",
                  (expiring.rsplit("/", 1)[1],))  # fmt: skip
    await until(lambda: "sweeping expired uploads failed (InsufficientPrivilegeError" in caplog.text)
    assert count(admin, "SELECT count(*) FROM app.uploads") == 2

    admin.execute("GRANT EXECUTE ON FUNCTION api.uploads_sweep(integer) TO mp3_service")
    await until(lambda: "removed 1 expired upload(s) and their MP3s so far" in caplog.text)
    assert count(admin, "SELECT count(*) FROM app.uploads") == 1
    assert count(admin, "SELECT count(*) FROM pg_largeobject_metadata") == 1  # the kept upload's
    assert await head_status(client, user, expiring, **TUS) == 404
    assert await offset_of(client, user, kept) == 0


async def test_termination_removes_the_upload_and_its_mp3(
    client: Client, audio: Audio, admin: psycopg.Connection
) -> None:
    user = await new_user(client)
    wav = audio(seconds=10)
    path = await created(client, user, len(wav))
    await patch(client, user, path, 0, wav[: len(wav) // 2])
    deleted = await client.delete(path, headers={**basic(*user), **TUS})
    assert deleted.status == 204
    assert deleted.headers["Tus-Resumable"] == "1.0.0"
    assert await head_status(client, user, path, **TUS) == 404
    assert count(admin, "SELECT count(*) FROM pg_largeobject_metadata") == 0


async def test_a_newer_patch_takes_the_upload_over_and_the_older_writes_nothing_more(
    client: Client, audio: Audio, admin: psycopg.Connection
) -> None:
    """Two PATCHes of one upload at once (a client that retried while its first request
    still ran): the newer goes on, the older is told it no longer writes (423)."""
    user = await new_user(client)
    wav = audio(seconds=30)
    path = await created(client, user, len(wav))
    release = asyncio.Event()
    older = asyncio.create_task(patch(client, user, path, 0, held_body(wav, release, len(wav) // 3)))
    await until(lambda: client.app[SLOTS].in_progress == 1)
    newer = await patch(client, user, path, 0, wav)
    assert newer.status == 204
    assert int(newer.headers["Upload-Offset"]) == len(wav)
    release.set()
    await expect_error(await older, 423)
    record = (await (await client.get(path, headers=basic(*user))).json())["data"]
    assert len(decoded(await (await client.get(local(record["url"]))).read(), 2)) == 30 * 44100 * 2
    assert records_match_large_objects(admin)


async def test_one_user_holds_sixteen_unfinished_uploads_at_most(client: Client) -> None:
    user = await new_user(client)
    for _ in range(16):
        await created(client, user, 1000)
    refused = await client.post("/uploads", headers={**basic(*user), **TUS, "Upload-Length": "1000"})
    assert (await expect_error(refused, 429))["message"].startswith("You have 16 uploads in progress")


async def test_deleting_a_finished_uploads_record_ends_the_upload(client: Client, audio: Audio) -> None:
    """A finished upload answers its record until it expires; once the user deletes that
    record, the upload is gone with it (404), not an upload in progress again that HEAD
    offers to resume and that counts against the 16 a user may have."""
    user = await new_user(client)
    wav = audio(seconds=1)
    path = await created(client, user, len(wav))
    assert (await patch(client, user, path, 0, wav)).status == 204
    record = (await (await client.get(path, headers=basic(*user))).json())["data"]
    deleted = await client.delete(f"/record?id={record['id']}&user={user[0]}", headers=basic(*user))
    assert deleted.status == 204

    assert await head_status(client, user, path, **TUS) == 404
    await expect_error(await client.get(path, headers=basic(*user)), 404)
    await expect_error(await patch(client, user, path, len(wav), b""), 404)
    for _ in range(16):
        await created(client, user, 1000)


def test_psql_lists_a_users_uploads_and_terminates_one(service: psycopg.Connection) -> None:
    user_id, _, token = service.execute("SELECT * FROM api.user_create('ann')").fetchone() or ()
    upload_id, _ = (
        service.execute(
            "SELECT * FROM api.upload_create(%s, %s, 'take.wav', '{}', 1000, 3600, 16)", (user_id, str(token))
        ).fetchone()
        or ()
    )
    listed = service.execute("SELECT id, filename, upload_offset, upload_length FROM api.uploads_list(%s, %s)",
                             (user_id, str(token))).fetchall()  # fmt: skip
    assert listed == [(upload_id, "take.wav", 0, 1000)]
    service.execute("SELECT api.upload_delete(%s, %s, %s)", (user_id, str(token), upload_id))
    assert service.execute("SELECT * FROM api.uploads_list(%s, %s)", (user_id, str(token))).fetchall() == []


# --- tuspy, a real client, against app.py as a real process ------------------------------


@pytest.mark.slow
async def test_tuspy_resumes_after_the_network_drops_at_any_offset(
    service_process: ServiceProcess, audio: Audio, admin: psycopg.Connection
) -> None:
    await service_process.start()
    proxy = DelayingProxy(service_process.host, service_process.port, 0.0).start()
    try:
        async with aiohttp.ClientSession() as session:
            user = await service_process.new_user(session, "train")
        wav = audio(seconds=90)
        cuts = [len(wav) // 7, len(wav) // 3, len(wav) * 5 // 8, len(wav) * 7 // 8]
        link = await asyncio.to_thread(uploads_with_cuts, user, wav, proxy, cuts)
    finally:
        proxy.stop()
    async with aiohttp.ClientSession() as session:  # the link names the proxy the client used
        mp3 = await (await session.get(service_process.base + local(link))).read()
    assert len(decoded(mp3, 2)) == 90 * 44100 * 2
    await until(
        lambda: (
            records_match_large_objects(admin)
            and count(admin, "SELECT count(*) FROM app.uploads WHERE lo_oid IS NOT NULL") == 0
        )
    )


@pytest.mark.slow
async def test_an_upload_survives_its_service_killed_and_resumes_on_another_process(
    service_settings: Settings, audio: Audio, admin: psycopg.Connection, tmp_path: Path
) -> None:
    """SIGKILL mid-upload, and the resume sent to another process on the same database:
    everything it needs is in PostgreSQL."""
    first = ServiceProcess(service_settings, tmp_path / "first.log")
    second = ServiceProcess(service_settings, tmp_path / "second.log")
    await first.start()
    await second.start()
    try:
        async with aiohttp.ClientSession() as session:
            user = await first.new_user(session, "restarted")
        wav = audio(seconds=120, rate=48000, channels=1)
        uploader = tus_uploader(first.base, user, wav)
        url = await asyncio.to_thread(uploader.create_url)
        uploader.set_url(url)
        sending = asyncio.create_task(asyncio.to_thread(uploader.upload))

        async def durable(service: ServiceProcess) -> int:
            async with aiohttp.ClientSession() as session:
                head = {**basic(*user), **TUS}
                async with session.head(service.base + local(url), headers=head) as response:
                    return int(response.headers["Upload-Offset"])

        async with asyncio.timeout(30):  # as an operator sees it: HEAD would wait for the PATCH at work
            while stored_offset(admin, url) == 0:  # noqa: ASYNC110 - the service's progress offers no event
                await asyncio.sleep(0.05)
        first.signal(signal.SIGKILL)
        first.wait()
        with pytest.raises((TusCommunicationError, TusUploadFailed, requests.RequestException)):
            await sending
        offset = await durable(second)
        assert offset > 0
        resumed = tus_uploader(second.base, user, wav, url=second.base + local(url))
        assert resumed.offset == offset
        await asyncio.to_thread(resumed.upload)
        assert resumed.request is not None
        link = resumed.request.response_headers["record-location"]
        async with aiohttp.ClientSession() as session:
            mp3 = await (await session.get(second.base + local(link))).read()
        assert len(decoded(mp3, 1)) == 120 * 48000
    finally:
        first.stop()
        second.stop()
    await until(lambda: records_match_large_objects(admin))


# --- a PATCH whose client leaves at the worst moment, the database 30 ms away -------------


def patch_head(path: str, user: tuple[int, str], offset: int, length: int) -> bytes:
    auth = basic(*user)["Authorization"]
    return (
        f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\nTus-Resumable: 1.0.0\r\n"
        f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


async def created_on(service: ServiceProcess, user: tuple[int, str], length: int) -> str:
    async with aiohttp.ClientSession() as session:
        headers = {**basic(*user), **TUS, "Upload-Length": str(length)}
        async with session.post(f"{service.base}/uploads", headers=headers) as response:
            assert response.status == 201
            return local(response.headers["Location"])


async def leave(writer: asyncio.StreamWriter) -> None:
    """The client closes its connection, and the service sees it go (its request is cancelled)."""
    ends = writer.get_extra_info("sockname"), writer.get_extra_info("peername")
    writer.close()
    await until(lambda: let_go_of(ends))


def claims_and_settled(admin: psycopg.Connection, upload_id: str) -> tuple[int, bool]:
    """How many PATCHes have claimed the upload, and whether the last one said it is done
    (rather than leave its mark to lapse)."""
    row = admin.execute(
        "SELECT generation, patch_busy_until IS NULL FROM app.uploads WHERE id = %s", [upload_id]
    ).fetchone()
    assert row is not None
    return int(row[0]), bool(row[1])


def cancelled_patch_logged(service: ServiceProcess, path: str) -> bool:
    return f"PATCH {path} - cancelled" in service.log.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("database_delay_s", [FAR_S], ids=[FAR])  # the service reaches it through the proxy
async def test_a_patch_cut_while_its_claim_answers_says_it_is_done(
    service_process: ServiceProcess, database_proxy: DelayingProxy, audio: Audio, admin: psycopg.Connection
) -> None:
    """The client goes away while its PATCH's claim of the upload has committed and its
    answer is on the way back from the database: the PATCH still says it is done, so the
    client's HEAD answers at once (it was left marked as being patched for 6 s, and a HEAD
    waited 5 s), and the client sends on."""
    await service_process.start()
    async with aiohttp.ClientSession() as session:
        user = await service_process.new_user(session, "hasty")
    wav = audio(seconds=5)
    path = await created_on(service_process, user, len(wav))
    upload_id = path.rsplit("/", 1)[1]
    with psycopg.connect(admin.info.dsn) as locker:  # the claim waits for the upload's row
        locker.execute("SELECT 1 FROM app.uploads WHERE id = %s FOR UPDATE", [upload_id])
        _, writer = await asyncio.open_connection(service_process.host, service_process.port)
        writer.write(patch_head(path, user, 0, len(wav)) + wav[:32768])
        await until(lambda: waiting_for_a_lock(admin, "api.upload_claim") == 1)
        database_proxy.freeze()  # the claim's answer is held on its way back
    await until(lambda: claims_and_settled(admin, upload_id)[0] == 1)  # committed
    await leave(writer)
    database_proxy.thaw()
    await until(lambda: cancelled_patch_logged(service_process, path))

    assert claims_and_settled(admin, upload_id) == (1, True)
    async with aiohttp.ClientSession() as session:
        url = service_process.base + path
        async with session.head(url, headers={**basic(*user), **TUS}) as response:
            assert response.headers["Upload-Offset"] == "0"
        headers = {**basic(*user), **TUS, **PATCH, "Upload-Offset": "0"}
        async with session.patch(url, data=wav, headers=headers) as response:
            assert response.status == 204
            assert "Record-Location" in response.headers


@pytest.mark.slow
@pytest.mark.parametrize("database_delay_s", [FAR_S], ids=[FAR])  # the service reaches it through the proxy
@pytest.mark.parametrize("ending", ["rst", "fin"])
async def test_a_last_patch_whose_client_leaves_before_its_answer_finishes_the_upload(
    service_process: ServiceProcess, audio: Audio, admin: psycopg.Connection, ending: str
) -> None:
    """A client sends the whole WAV in one PATCH and goes away while the PATCH stores its
    last bytes: every byte arrived, so the upload is finished all the same, and the
    client's HEAD finds it at its end, the record playing every sample (it was left at
    its last checkpoint, seconds behind, and the record never made). A reset cancels the
    PATCH; a FIN (a close: the service cannot tell it from a half-close) once the whole
    request is in lets the PATCH go on and answer."""
    await service_process.start()
    async with aiohttp.ClientSession() as session:
        user = await service_process.new_user(session, "impatient")
    wav = audio(seconds=20)
    path = await created_on(service_process, user, len(wav))
    with psycopg.connect(admin.info.dsn) as locker:  # the record's row waits for its user's
        locker.execute("SELECT 1 FROM app.users WHERE id = %s FOR UPDATE", [user[0]])
        _, writer = await asyncio.open_connection(service_process.host, service_process.port)
        writer.write(patch_head(path, user, 0, len(wav)) + wav)
        await writer.drain()
        await until(lambda: waiting_for_a_lock(admin, "api.upload_finish") == 1, 60)
        if ending == "rst":
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await leave(writer)
        else:
            writer.close()
    outcome = f"PATCH {path} - cancelled" if ending == "rst" else f"PATCH {path} 204"
    await until(lambda: outcome in service_process.log.read_text())

    async with aiohttp.ClientSession() as session:
        url = service_process.base + path
        async with session.head(url, headers={**basic(*user), **TUS}) as response:
            assert response.headers["Upload-Offset"] == str(len(wav))
        async with session.get(url, headers=basic(*user)) as response:
            assert response.status == 200
            record = (await response.json())["data"]
        mp3 = await (await session.get(service_process.base + local(record["url"]))).read()
    assert len(decoded(mp3, 2)) == 20 * 44100 * 2
    assert records_match_large_objects(admin)
