"""More uploads than slots, and the service answering while every slot converts."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from aiohttp import ClientResponse

from service.keys import SLOTS
from tests.database import MakeClient
from tests.support import (
    Audio,
    basic,
    expect_error,
    held_body,
    local,
    new_user,
    probe,
    until,
    upload,
)

# --- load and fairness ----------------------------------------------------------------

pytestmark = pytest.mark.slow  # many uploads at once


async def test_more_uploads_than_slots_wait_their_turn_and_all_are_valid(make_client: MakeClient, audio: Audio) -> None:
    client = await make_client(convert_concurrency=2, queue_timeout_s=60)
    user = await new_user(client)
    responses = await asyncio.gather(*(upload(client, user, audio(seconds=2)) for _ in range(6)))
    assert [response.status for response in responses] == [201] * 6
    for response in responses:
        mp3 = await (await client.get(local((await response.json())["data"]["url"]))).read()
        assert probe(mp3)["duration"] == pytest.approx(2.0, abs=0.01)


async def test_no_more_uploads_wait_in_each_line_than_there_are_places(make_client: MakeClient, audio: Audio) -> None:
    """Each waiting upload holds what its client sent before it was admitted: one account
    with its places taken parked 900 of them, 800 MB of the service's memory. As many wait
    for their account's places as there are places of the service's, and as many for the
    service's; the next of either is answered 503 at once. The lines are apart: one account
    filling its line keeps no other account from waiting for a place, and all still start."""
    client = await make_client(convert_concurrency=1, max_uploads=2, queue_timeout_s=60)
    many, other, third, fourth = [await new_user(client, name) for name in ("many", "other", "third", "fourth")]
    slots, release = client.app[SLOTS], asyncio.Event()

    def held(user: tuple[int, str]) -> asyncio.Task[ClientResponse]:
        headers = {**basic(*user), "Content-Type": "audio/wav"}
        return asyncio.create_task(client.post("/record", data=held_body(audio(), release), headers=headers))

    async def refused_at_once(user: tuple[int, str]) -> str:
        async with asyncio.timeout(30):  # it would wait the queue's 60 s
            response = await upload(client, user, audio())
        assert response.headers["Retry-After"] == "60"
        return str((await expect_error(response, 503))["message"])

    uploads = [held(many), held(other)]
    await until(lambda: slots.free == 0)
    uploads.append(held(many))  # its account has a place left: it waits for one of the service's
    await until(lambda: slots.waiting_for_place == 1)
    uploads += [held(many), held(many)]  # its account's places are both taken (one waits)
    await until(lambda: slots.waiting_for_account == 2)
    assert await refused_at_once(many) == "You have 2 uploads in progress already; let one finish first."

    uploads.append(held(third))  # the account line is full: a place of the service's is still waited for
    await until(lambda: slots.waiting_for_place == 2)
    assert await refused_at_once(fourth) == "All 2 upload places are taken (MAX_UPLOADS); try again shortly."

    release.set()
    assert [(await task).status for task in uploads] == [201] * 6


@pytest.mark.parametrize("ending", ["rst", "fin"])
async def test_an_upload_cut_while_it_waits_for_a_place_leaves_the_line_at_once(
    make_client: MakeClient, audio: Audio, ending: str
) -> None:
    """An upload waiting for one of its account's places, its client's bytes past what
    aiohttp reads ahead (it then stops reading the socket), is cut by its client. It waited
    on, blind to the reset or FIN behind those bytes, until a place came free or
    QUEUE_TIMEOUT_S passed: a place in a line as long as the service's places, the next
    upload answered 503 at once, kept for a client long gone. Now it leaves the line at once."""
    client = await make_client(convert_concurrency=1, max_uploads=2, queue_timeout_s=600)
    user = await new_user(client)
    slots, release = client.app[SLOTS], asyncio.Event()
    headers = {**basic(*user), "Content-Type": "audio/wav"}
    holding = [
        asyncio.create_task(client.post("/record", data=held_body(audio(), release), headers=headers)) for _ in range(2)
    ]
    await until(lambda: slots.in_progress == 2)
    wav = audio(seconds=10)
    head = (
        f"POST /record HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {headers['Authorization']}\r\n"
        f"Content-Type: audio/wav\r\nContent-Length: {len(wav)}\r\n\r\n"
    )
    _, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(head.encode() + wav[:600_000])
    await writer.drain()
    await until(lambda: slots.waiting_for_account == 1)
    if ending == "rst":
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
    await until(lambda: slots.waiting_for_account == 0)  # it would wait the queue's 600 s
    release.set()
    assert [(await task).status for task in holding] == [201, 201]


async def test_an_upload_waiting_for_a_place_when_the_service_stops_is_refused_503(
    make_client: MakeClient, audio: Audio
) -> None:
    """A shutdown refuses new uploads; one already waiting for a place got it once one came
    free, and was then cancelled unanswered at the end of the grace if it had not finished."""
    client = await make_client(convert_concurrency=1, max_uploads=1, queue_timeout_s=60)
    first, second = await new_user(client, "first"), await new_user(client, "second")
    slots, release = client.app[SLOTS], asyncio.Event()
    headers = {"Content-Type": "audio/wav"}
    running = asyncio.create_task(
        client.post("/record", data=held_body(audio(), release), headers={**basic(*first), **headers})
    )
    await until(lambda: slots.free == 0)
    waiting = asyncio.create_task(client.post("/record", data=audio(), headers={**basic(*second), **headers}))
    await until(lambda: slots.queued == 1)

    slots.draining = True
    release.set()
    assert (await running).status == 201
    body = await expect_error(await waiting, 503)
    assert body["message"] == "The service is shutting down; try again shortly."


async def test_downloads_and_user_creation_answer_while_every_slot_converts(
    make_client: MakeClient, audio: Audio
) -> None:
    client = await make_client(convert_concurrency=2, max_uploads=2)
    user = await new_user(client)
    stored = (await (await upload(client, user, audio())).json())["data"]
    release = asyncio.Event()
    headers = {**basic(*user), "Content-Type": "audio/wav"}
    busy = [
        asyncio.create_task(client.post("/record", data=held_body(audio(seconds=5), release), headers=headers))
        for _ in range(2)
    ]
    await until(lambda: client.app[SLOTS].free == 0)

    assert (await client.get(local(stored["url"]))).status == 200
    assert (await client.post("/users", json={"username": "while-busy"})).status == 201
    assert (await client.get("/health")).status == 200

    release.set()
    assert [(await task).status for task in busy] == [201, 201]


async def test_more_uploads_than_slots_take_turns_instead_of_waiting_for_a_free_one(
    make_client: MakeClient, audio: Audio
) -> None:
    """One conversion slot, two long uploads at once: both start, and share the CPU by
    turns (held past a quantum while another waits, a turn goes round). Neither waits for
    the other to end, which took longer than the queue timeout."""
    client = await make_client(convert_concurrency=1, queue_timeout_s=1)
    wav = audio(seconds=600, rate=48000, channels=1)
    users = [await new_user(client, name) for name in ("first", "second")]
    responses = await asyncio.gather(
        *(client.post("/record", data=wav, headers={**basic(*user), "Content-Type": "audio/wav"}) for user in users)
    )
    assert [response.status for response in responses] == [201, 201]
