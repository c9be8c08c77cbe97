"""Uploads with PostgreSQL on this machine and one network hop away (each of its replies
held 30 ms by tests/support.py's DelayingProxy), where the timing differs enough to lose a
wake-up that localhost never shows: one upload in three once never answered there.

Raw, multipart and chunked bodies; mono 48 kHz and stereo 44.1 kHz; lengths that end on
a segment boundary and just past it, with short segments and a helper encoder at every
boundary, so the segment-parallel path joins, hands over and ends in each way. Each
upload must answer 201 and decode to exactly the samples sent, and leave nothing open.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
from typing import Any, cast

import aiohttp
import psycopg
import pytest
from aiohttp import ClientResponse
from mutagen.mp3 import MP3
from pytest_aiohttp import AiohttpClient

from app import init_app
from converter.mp3 import samples_per_frame
from converter.segments import segment_frames
from service.keys import CONVERTER
from settings import Settings
from tests.database import FAR, FAR_S, ServiceTestServer
from tests.support import (
    Audio,
    Client,
    ServiceProcess,
    basic,
    chunked,
    decoded,
    form,
    idle_in_transaction,
    local,
    new_user,
    plan_of,
    records_match_large_objects,
    statements_calling,
    until,
    wav_header,
)

SEGMENT_S = 1.5


@pytest.fixture(params=[0.0, FAR_S], ids=["local", FAR])
def database_delay_s(request: pytest.FixtureRequest) -> float:
    return float(request.param)


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, service_settings: Settings) -> Client:
    """The service with short segments and a helper at every boundary."""
    app = init_app(service_settings)
    app[CONVERTER] = dataclasses.replace(app[CONVERTER], segment_seconds=SEGMENT_S, helper_backlog=-1)
    return cast(Client, await aiohttp_client(ServiceTestServer(app)))


def exact_wav(audio: Audio, rate: int, channels: int, samples: int) -> bytes:
    """A WAV of exactly ``samples`` sample frames (FFmpeg's sine source makes whole blocks)."""
    generated = audio(seconds=samples / rate + 1, rate=rate, channels=channels)
    data = generated[generated.index(b"data") + 8 :][: samples * channels * 2]
    return wav_header(channels=channels, rate=rate, data_size=len(data)) + data


@pytest.mark.parametrize("body", ["raw", "multipart", "chunked"])
@pytest.mark.parametrize(("rate", "channels"), [(48000, 1), (44100, 2)], ids=["mono-48k", "stereo-44.1k"])
@pytest.mark.parametrize("past_boundary", [0, 1], ids=["on-a-boundary", "a-frame-and-a-half-past"])
async def test_an_upload_answers_and_decodes_to_every_sample_near_or_far_from_its_database(
    client: Client,
    audio: Audio,
    admin: psycopg.Connection,
    body: str,
    rate: int,
    channels: int,
    past_boundary: int,
) -> None:
    frame = samples_per_frame(rate)
    samples = 2 * segment_frames(plan_of(rate, channels), SEGMENT_S) * frame + past_boundary * (frame + frame // 2)
    wav = exact_wav(audio, rate, channels, samples)
    user = await new_user(client, "far")
    if body == "multipart":
        response = await client.post("/record", data=form(wav, user=user[0], token=user[1]))
    else:
        headers = {**basic(*user), "Content-Type": "audio/wav"}
        response = await client.post("/record", data=wav if body == "raw" else chunked(wav), headers=headers)
    assert response.status == 201, await response.text()
    record = (await response.json())["data"]

    mp3 = await (await client.get(f"/record?id={record['id']}&user={user[0]}")).read()
    assert len(decoded(mp3, channels)) == samples * channels
    await until(lambda: idle_in_transaction(admin) == 0)
    assert records_match_large_objects(admin)


@pytest.mark.slow
@pytest.mark.parametrize("database_delay_s", [FAR_S], ids=[FAR], indirect=True)
@pytest.mark.parametrize("start", [1, 2], ids=["first-start", "second-start"])
async def test_a_fresh_service_answers_every_upload_with_its_database_a_hop_away(
    service_process: ServiceProcess, audio: Audio, admin: psycopg.Connection, start: int
) -> None:
    """As the hang was first seen: app.py just started, two long uploads at once, each of
    many appends of 512 KiB whose round trips the last frames can fall into."""
    await service_process.start()
    uploads = [
        (audio(seconds=180, rate=48000, channels=1), {"bitrate": "320"}),
        (audio(seconds=95, rate=44100, channels=2), {}),
    ]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        user = await service_process.new_user(session, "distant")

        async def status_of(wav: bytes, options: dict[str, str]) -> int:
            data = form(wav, user=user[0], token=user[1], **options)
            async with session.post(f"{service_process.base}/record", data=data) as response:
                return response.status

        assert await asyncio.gather(*(status_of(wav, options) for wav, options in uploads)) == [201, 201]
    await until(lambda: idle_in_transaction(admin) == 0)
    assert records_match_large_objects(admin)


async def stored_whole(client: Client, download_path: str, record: dict[str, Any], seconds: float) -> None:
    """The record's MP3 as downloaded: its size, its ETag the digest of what is stored, every
    sample of a stereo 44.1 kHz WAV of ``seconds``, and the LAME tag in its header frame."""
    download = await client.get(download_path)
    mp3 = await download.read()
    assert len(mp3) == record["size"]
    assert download.headers["ETag"] == f'"{hashlib.sha256(mp3).hexdigest()}"'
    assert len(decoded(mp3, 2)) == round(seconds * 44100) * 2
    info: Any = MP3(io.BytesIO(mp3)).info  # type: ignore[no-untyped-call]
    assert info.track_gain is not None


async def sent_in_one_patch(client: Client, user: tuple[int, str], wav: bytes) -> tuple[str, ClientResponse]:
    """A new tus upload of ``wav``, all of it in one PATCH: its path, and the PATCH's 204."""
    tus = {**basic(*user), "Tus-Resumable": "1.0.0"}
    created = await client.post("/uploads", headers={**tus, "Upload-Length": str(len(wav))})
    assert created.status == 201, await created.text()
    upload = local(created.headers["Location"])
    patch = {**tus, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}
    finished = await client.patch(upload, data=wav, headers=patch)
    assert finished.status == 204, await finished.text()
    return upload, finished


@pytest.mark.parametrize("database_delay_s", [FAR_S], ids=[FAR], indirect=True)
async def test_an_upload_ends_in_one_statement_and_its_commit(
    client: Client, audio: Audio, admin: psycopg.Connection
) -> None:
    """Once its encoders end, an upload's last MP3 bytes, header frame, waveform, loudness and
    digest go to the database in api.record_finish, then it commits: two round trips, not
    five (api.record_append of the last bytes, api.record_overwrite and api.record_measure
    each took one of their own, 90 ms more on every upload's last byte to 201 with the
    database 30 ms away). A 5-second upload's MP3 is less than one append's chunk: all of it
    goes with api.record_finish. What it stores is the same: every byte, a header frame
    players read, the waveform and the loudness."""
    statements = ("api.record_append", "api.record_overwrite", "api.record_measure", "api.record_finish")
    before = {function: statements_calling(admin, function) for function in statements}
    user = await new_user(client, "far")
    wav = audio(seconds=5, rate=44100, channels=2)
    response = await client.post("/record", data=wav, headers={**basic(*user), "Content-Type": "audio/wav"})
    assert response.status == 201, await response.text()
    record = (await response.json())["data"]
    made = {function: statements_calling(admin, function) - before[function] for function in statements}
    assert made == {"api.record_append": 0, "api.record_overwrite": 0, "api.record_measure": 0, "api.record_finish": 1}

    assert record["loudness"]["integrated"] is not None
    waveform = await client.get(f"/record/waveform?id={record['id']}&user={user[0]}", headers=basic(*user))
    assert waveform.status == 200
    await stored_whole(client, f"/record?id={record['id']}&user={user[0]}", record, seconds=5)


@pytest.mark.parametrize("database_delay_s", [FAR_S], ids=[FAR], indirect=True)
async def test_a_resumable_upload_sent_in_one_patch_ends_in_one_statement(
    client: Client, audio: Audio, admin: psycopg.Connection
) -> None:
    """A tus upload whose whole WAV comes in one PATCH (tuspy's way, or curl's) hashes its own
    copy of the MP3 as POST /record does. Once its encoders end, its last bytes, the record
    and what was measured go to the database in one statement, api.upload_finish, its own
    transaction: one round trip, not five (BEGIN, the last checkpoint,
    api.upload_record_begin, api.record_finish and the COMMIT: 120 ms more from its last
    byte to the 204 with the database 30 ms away). What it stores is the same."""
    statements = ("api.upload_record_begin", "api.record_finish", "api.upload_finish")
    before = {function: statements_calling(admin, function) for function in statements}
    user = await new_user(client, "far")
    wav = audio(seconds=5, rate=44100, channels=2)
    upload, finished = await sent_in_one_patch(client, user, wav)
    made = {function: statements_calling(admin, function) - before[function] for function in statements}
    assert made == {"api.upload_record_begin": 0, "api.record_finish": 0, "api.upload_finish": 1}

    record = (await (await client.get(upload, headers=basic(*user))).json())["data"]
    assert record["loudness"]["integrated"] is not None
    await stored_whole(client, local(finished.headers["Record-Location"]), record, seconds=5)


@pytest.mark.parametrize("database_delay_s", [FAR_S], ids=[FAR], indirect=True)
async def test_a_connection_goes_back_to_the_pool_without_a_round_trip(
    client: Client, audio: Audio, admin: psycopg.Connection
) -> None:
    """asyncpg resets a connection given back to its pool with a query of its own
    (pg_advisory_unlock_all(), CLOSE ALL, UNLISTEN *, RESET ALL), and an upload's
    transaction waited for it before its 201: 30 ms more with the database 30 ms away. The
    service leaves nothing on a pooled connection to undo (db/deadline.py): a POST /record
    and a tus upload send no such query."""
    resets = statements_calling(admin, "pg_advisory_unlock_all")
    user = await new_user(client, "far")
    wav = audio(seconds=5)
    posted = await client.post("/record", data=wav, headers={**basic(*user), "Content-Type": "audio/wav"})
    assert posted.status == 201, await posted.text()
    await sent_in_one_patch(client, user, wav)
    assert statements_calling(admin, "pg_advisory_unlock_all") == resets
