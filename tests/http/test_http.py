"""The HTTP API end to end: real aiohttp server, real PostgreSQL, real FFmpeg."""

from __future__ import annotations

import asyncio
import hashlib
import re
import struct
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import FormData
from yarl import URL

from service.keys import SLOTS
from tests.database import SUITE_DB_DELAY_S, MakeClient
from tests.support import (
    Audio,
    Client,
    basic,
    chunked,
    count,
    disk_that_hangs,
    expect_error,
    finished_records,
    form,
    held_body,
    local,
    new_user,
    nothing_stored,
    probe,
    until,
    upload,
    wav_header,
)

# --- users ----------------------------------------------------------------------


async def test_create_user_returns_id_name_and_token(client: Client) -> None:
    response = await client.post("/users", json={"username": "  alice "})
    assert response.status == 201
    body = await response.json()
    assert body["status"] == "ok"
    assert body["data"]["username"] == "alice"
    assert isinstance(body["data"]["id"], int)
    assert uuid.UUID(body["data"]["token"])


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-www-form-urlencoded", b"username=bob"),
        ("application/x-www-form-urlencoded", b'{"username": "bob"}'),  # what curl -d sends
        ("application/json", b'{"username": "bob"}'),
    ],
)
async def test_create_user_accepts_json_and_forms(client: Client, content_type: str, body: bytes) -> None:
    response = await client.post("/users", data=body, headers={"Content-Type": content_type})
    assert response.status == 201
    assert (await response.json())["data"]["username"] == "bob"


async def test_create_user_accepts_multipart(client: Client) -> None:
    data = FormData()
    data.add_field("username", "carol")
    data.add_field("unused", b"x", filename="x.bin")  # forces multipart/form-data
    response = await client.post("/users", data=data)
    assert response.status == 201


@pytest.mark.parametrize(
    "body",
    [b"{bad json", b"[]", b"{}", b'{"username": 5}', b'{"username": ""}', b'{"username": "a\\u0000b"}',
     b'{"username": "' + b"x" * 65 + b'"}', b""],
    ids=["malformed", "array", "missing", "number", "empty", "control", "too-long", "no-body"],
)  # fmt: skip
async def test_bad_usernames_are_400(client: Client, body: bytes) -> None:
    response = await client.post("/users", data=body, headers={"Content-Type": "application/json"})
    await expect_error(response, 400)


@pytest.mark.parametrize("body", [b"username=%ff%fe", b"username=caf\xe9"], ids=["percent-encoded", "raw"])
async def test_a_form_username_that_is_not_utf8_is_400_not_replaced(client: Client, body: bytes) -> None:
    response = await client.post("/users", data=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    await expect_error(response, 400)


async def test_username_taken_in_any_case_is_409(client: Client) -> None:
    await new_user(client, "Dave")
    body = await expect_error(await client.post("/users", json={"username": "dAVE"}), 409)
    assert body["status"] == "conflict"


# --- uploads --------------------------------------------------------------------


async def test_upload_answers_201_with_the_record_and_its_link(client: Client, audio: Audio) -> None:
    user = await new_user(client)
    response = await upload(client, user, audio(seconds=2), filename="My Song.wav")
    assert response.status == 201
    data = (await response.json())["data"]
    assert response.headers["Location"] == data["url"]
    assert data["url"] == f"http://{client.host}:{client.port}/record?id={data['id']}&user={user[0]}"
    assert data["user"] == user[0]
    assert data["filename"] == "My Song.mp3"
    assert data["duration"] == pytest.approx(2.0, abs=0.01)
    assert (data["bitrate"], data["sample_rate"], data["channels"]) == (192000, 44100, 2)
    assert data["created_at"].endswith("+00:00")

    download = await client.get(local(data["url"]))
    assert download.status == 200
    mp3 = await download.read()
    assert len(mp3) == data["size"]
    assert probe(mp3)["codec"] == "mp3"


@pytest.mark.parametrize("local_copy", ["cannot be made", "fills the disk"])
async def test_an_upload_whose_local_copy_fails_is_stored_with_its_true_digest(
    client: Client, audio: Audio, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, local_copy: str
) -> None:
    """The MP3 is hashed from a local copy made as it is stored (handlers/store.py
    LocalCopy); with no room for one, from the database instead: the same digest."""
    if local_copy == "cannot be made":
        monkeypatch.setattr(tempfile, "tempdir", "/nonexistent/tmp")
    else:  # every write fails as on a full disk
        monkeypatch.setattr(tempfile, "TemporaryFile", lambda: open("/dev/full", "r+b"))  # noqa: SIM115
    user = await new_user(client)
    response = await upload(client, user, audio(seconds=40))
    assert response.status == 201
    data = (await response.json())["data"]
    download = await client.get(local(data["url"]))
    assert download.headers["ETag"] == f'"{hashlib.sha256(await download.read()).hexdigest()}"'
    assert "its digest is read back" in caplog.text


@pytest.mark.parametrize("database_delay_s", [SUITE_DB_DELAY_S, 0.1], ids=["suite's distance", "0.1 s away"])
async def test_an_upload_whose_local_copy_hangs_is_answered_all_the_same(
    make_client: MakeClient, audio: Audio, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A disk that stops taking writes: the copy is given up after half of STALL_TIMEOUT_S,
    the upload goes on and is stored with its true digest, read back; the copy's file is
    closed once the write lets go, never under it (that would block the event loop). Given
    up after the whole of it, counted once the database had the chunk, the copy lost the
    race with the conversion's watchdog, which counts from its last step: 503, "no progress
    for 1 s while waiting for the database to store the MP3" (seen 30 ms away in a loaded
    suite; 0.1 s away, every time)."""
    client = await make_client(stall_timeout_s=1.0)
    user = await new_user(client)
    async with disk_that_hangs(tmp_path), asyncio.timeout(20):
        response = await upload(client, user, audio(seconds=60))
        assert response.status == 201
    download = await client.get(local((await response.json())["data"]["url"]))
    assert download.headers["ETag"] == f'"{hashlib.sha256(await download.read()).hexdigest()}"'
    assert "took over 0.5 s to write: its digest is read back" in caplog.text


async def test_a_digest_that_hangs_is_read_back_in_time(
    make_client: MakeClient, audio: Audio, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Hashing the local copy takes longer than STALL_TIMEOUT_S (a disk that stops
    answering reads): the digest is read back from the database, and the ETag is true."""
    released = threading.Event()
    file_digest = hashlib.file_digest

    def hanging_digest(file: Any, name: str) -> Any:
        released.wait(20)
        return file_digest(file, name)

    monkeypatch.setattr(hashlib, "file_digest", hanging_digest)
    client = await make_client(stall_timeout_s=1.0)
    user = await new_user(client)
    try:
        async with asyncio.timeout(20):
            response = await upload(client, user, audio(seconds=10))
        assert response.status == 201
    finally:
        released.set()
    download = await client.get(local((await response.json())["data"]["url"]))
    assert download.headers["ETag"] == f'"{hashlib.sha256(await download.read()).hexdigest()}"'
    assert "took over 1 s to hash: its digest is read back" in caplog.text


async def test_link_uses_the_host_the_client_used_or_public_url(make_client: MakeClient, audio: Audio) -> None:
    client = await make_client()
    user = await new_user(client)
    data = form(audio(), user=user[0], token=user[1])
    response = await client.post("/record", data=data, headers={"Host": "0.0.0.0:9999"})
    assert (await response.json())["data"]["url"].startswith("http://localhost:9999/record?id=")

    public = await make_client(public_url="https://mp3.example.org/base")
    user = await new_user(public, "erin")
    response = await upload(public, user, audio())
    assert (await response.json())["data"]["url"].startswith("https://mp3.example.org/base/record?id=")


@pytest.mark.slow  # ten conversions
@pytest.mark.parametrize(
    ("variant", "wav_args", "rate", "channels"),
    [
        ("8-bit", {"codec": "pcm_u8"}, 44100, 2),
        ("16-bit", {"codec": "pcm_s16le"}, 44100, 2),
        ("24-bit", {"codec": "pcm_s24le"}, 44100, 2),
        ("32-bit", {"codec": "pcm_s32le"}, 44100, 2),
        ("float", {"codec": "pcm_f32le"}, 44100, 2),
        ("mono", {"channels": 1}, 44100, 1),
        ("8 kHz", {"rate": 8000, "channels": 1}, 8000, 1),
        ("96 kHz 6-channel", {"rate": 96000, "channels": 6, "codec": "pcm_s24le"}, 48000, 2),
        ("extensible", {"channels": 4, "codec": "pcm_s16le"}, 44100, 2),
        ("RF64", {"extra": ("-rf64", "always")}, 44100, 2),
    ],
)
async def test_each_wav_variant_converts_with_the_right_duration(
    client: Client, audio: Audio, variant: str, wav_args: dict[str, Any], rate: int, channels: int
) -> None:
    wav = audio(seconds=3, **wav_args)
    if variant == "extensible":
        assert struct.unpack_from("<H", wav, 20)[0] == 0xFFFE  # WAVE_FORMAT_EXTENSIBLE
    if variant == "RF64":
        assert wav[:4] == b"RF64"
    user = await new_user(client)
    response = await upload(client, user, wav)
    assert response.status == 201, await response.text()
    data = (await response.json())["data"]
    assert data["duration"] == pytest.approx(3.0, abs=0.01)
    assert (data["sample_rate"], data["channels"]) == (rate, channels)

    mp3 = await (await client.get(local(data["url"]))).read()
    found = probe(mp3)
    assert found["codec"] == "mp3"
    assert found["duration"] == pytest.approx(3.0, abs=0.15)
    assert (found["sample_rate"], found["channels"]) == (rate, channels)


async def test_raw_body_upload_with_basic_auth(client: Client, audio: Audio) -> None:
    user_id, token = await new_user(client)
    for content_type in ("audio/wav", "audio/x-wav", "audio/wave"):
        response = await client.post(
            "/record?filename=take.wav",
            data=audio(),
            headers={**basic(user_id, token), "Content-Type": content_type},
        )
        assert response.status == 201, await response.text()
        assert (await response.json())["data"]["filename"] == "take.mp3"


async def test_options_choose_bitrate_rate_and_channels(client: Client, audio: Audio) -> None:
    user = await new_user(client)
    response = await upload(client, user, audio(seconds=2), bitrate=128, sample_rate=22050, channels=1)
    assert response.status == 201, await response.text()
    data = (await response.json())["data"]
    assert (data["bitrate"], data["sample_rate"], data["channels"]) == (128000, 22050, 1)
    found = probe(await (await client.get(local(data["url"]))).read())
    assert (found["sample_rate"], found["channels"]) == (22050, 1)

    user_id, token = user
    response = await client.post(
        "/record?bitrate=320", data=audio(), headers={**basic(user_id, token), "Content-Type": "audio/wav"}
    )
    assert (await response.json())["data"]["bitrate"] == 320000


@pytest.mark.parametrize(
    "options",
    [{"bitrate": "100"}, {"bitrate": "abc"}, {"bitrate": "999999999999"}, {"sample_rate": "12345"},
     {"channels": "3"}, {"channels": "0"}],
)  # fmt: skip
async def test_bad_options_are_400(client: Client, audio: Audio, options: dict[str, str]) -> None:
    user = await new_user(client)
    await expect_error(await upload(client, user, audio(), **options), 400)


async def test_older_clients_flow_works_as_their_readme_showed(client: Client, audio: Audio) -> None:
    # curl -X POST /users.create -d '{"username": "string"}'
    response = await client.post(
        "/users.create",
        data=b'{"username": "string"}',
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status == 201
    created = (await response.json())["data"]
    assert set(created) == {"id", "username", "uuid"}

    # curl -H 'user_id: ..' -H 'user_uuid: ..' -F 'filename=@song.wav' /files.convert
    wav = audio()
    response = await client.post(
        "/files.convert",
        data=form(wav, field="filename"),
        headers={"user_id": str(created["id"]), "user_uuid": created["uuid"]},
    )
    assert response.status == 201, await response.text()
    answer = await response.json()
    assert set(answer) == {"status", "url"}
    assert answer["status"] == "ok"

    mp3 = await (await client.get(local(answer["url"]))).read()
    assert probe(mp3)["codec"] == "mp3"
    record_id = answer["url"].split("id=")[1].split("&")[0]
    legacy = await client.get(f"/files.record?record_id={record_id}&user_id={created['id']}")
    assert legacy.status == 200
    assert await legacy.read() == mp3


# --- refusals --------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"user_id": "1"}, {"Authorization": "Basic !!!"}, {"Authorization": "Bearer x"}],
    ids=["none", "no-token", "bad-basic", "other-scheme"],
)
async def test_missing_credentials_are_401_with_www_authenticate(
    client: Client, audio: Audio, headers: dict[str, str]
) -> None:
    response = await client.post("/record", data=form(audio()), headers=headers)
    await expect_error(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Basic")


async def test_wrong_token_and_unknown_user_get_the_same_401(
    client: Client, audio: Audio, admin: psycopg.Connection
) -> None:
    user_id, _ = await new_user(client)
    wrong = await expect_error(await upload(client, (user_id, str(uuid.uuid4())), audio()), 401)
    unknown = await expect_error(await upload(client, (user_id + 1000, str(uuid.uuid4())), audio()), 401)
    garbage = await expect_error(await upload(client, (user_id, "' OR 1=1 --"), audio()), 401)
    assert wrong == unknown == garbage
    assert nothing_stored(admin)


@pytest.mark.parametrize(
    "query",
    ["id=nope&user=1", "user=1", "id={id}", "id={id}&user=abc", "id={id}&user=-1", f"id={{id}}&user={2**63}",
     "id={id}&user=1;DROP TABLE app.users"],
)  # fmt: skip
async def test_malformed_ids_are_400(client: Client, query: str) -> None:
    response = await client.get("/record?" + query.format(id=uuid.uuid4()))
    await expect_error(response, 400)


async def test_unknown_route_is_404_and_wrong_method_405_with_allow(client: Client) -> None:
    body = await expect_error(await client.get("/nowhere"), 404)
    assert body["status"] == "not_found"
    response = await client.put("/users")
    await expect_error(response, 405)
    assert response.headers["Allow"] == "POST"


async def test_no_file_part_is_400(client: Client) -> None:
    user_id, token = await new_user(client)
    data = FormData(default_to_multipart=True)
    data.add_field("user", str(user_id))
    data.add_field("token", token)
    data.add_field("note", "no file here")
    await expect_error(await client.post("/record", data=data), 400)


async def test_body_neither_multipart_nor_wav_is_415(client: Client, audio: Audio) -> None:
    user_id, token = await new_user(client)
    response = await client.post(
        "/record", data=audio(), headers={**basic(user_id, token), "Content-Type": "text/plain"}
    )
    await expect_error(response, 415)


@pytest.mark.parametrize(
    "kind",
    ["text", "mp3", "hls-playlist", "ffconcat", "empty", "flac"],
)
async def test_files_that_are_not_wav_are_415_and_leave_nothing(
    client: Client, audio: Audio, admin: psycopg.Connection, kind: str
) -> None:
    payloads = {
        "text": b"hello, this is not audio\n" * 100,
        "mp3": audio(codec="libmp3lame", container="mp3"),
        "hls-playlist": b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n",
        "ffconcat": b"ffconcat version 1.0\nfile '/etc/passwd'\n",
        "empty": b"",
        "flac": audio(codec="flac", container="flac"),
    }
    user = await new_user(client)
    await expect_error(await upload(client, user, payloads[kind], filename="innocent.wav"), 415)
    assert nothing_stored(admin)


@pytest.mark.parametrize(
    "kind", ["garbage-after-riff", "no-samples", "part-of-a-sample", "zero-channels", "zero-rate", "65535-channels",
             "bad-align", "data-before-fmt", "adpcm"],
)  # fmt: skip
async def test_wavs_that_cannot_be_converted_are_422_and_leave_nothing(
    client: Client, admin: psycopg.Connection, kind: str
) -> None:
    samples = bytes(4000)
    payloads = {
        "garbage-after-riff": b"RIFF\x00\x10\x00\x00WAVE" + b"\x13\x37garbage" * 500,
        "no-samples": wav_header(data_size=0),
        "part-of-a-sample": wav_header(rate=96000, data_size=3) + b"\x01\x02\x03",
        "zero-channels": wav_header(channels=0, data_size=4000) + samples,
        "zero-rate": wav_header(rate=0, data_size=4000) + samples,
        "65535-channels": wav_header(channels=65535, data_size=4000) + samples,
        "bad-align": wav_header()[:32] + struct.pack("<H", 7) + wav_header()[34:] + samples,
        "data-before-fmt": b"RIFF\x00\x10\x00\x00WAVEdata\xa0\x0f\x00\x00" + samples + wav_header()[12:36],
        "adpcm": wav_header(tag=2, bits=4, data_size=4000) + samples,
    }
    user = await new_user(client)
    body = await expect_error(await upload(client, user, payloads[kind]), 422)
    if kind in ("no-samples", "part-of-a-sample"):
        assert body["message"] == "The WAV holds no audio samples."
    assert nothing_stored(admin)


async def test_upload_over_the_limit_is_413_from_content_length_before_reading(make_client: MakeClient) -> None:
    client = await make_client(max_upload_bytes=1 << 20)
    user_id, token = await new_user(client)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"POST /record HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\nContent-Length: 1073741824\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in basic(user_id, token).items()).encode()
        + b"\r\n"
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)  # answered without a byte of body sent
    assert status_line.startswith(b"HTTP/1.1 413")
    writer.close()


async def test_upload_over_the_limit_is_cut_off_with_413_while_streaming(
    make_client: MakeClient, audio: Audio, admin: psycopg.Connection
) -> None:
    client = await make_client(max_upload_bytes=1 << 20)
    user_id, token = await new_user(client)
    wav = audio(seconds=10)  # ~1.7 MB

    response = await client.post(
        "/record", data=chunked(wav, 65536), headers={**basic(user_id, token), "Content-Type": "audio/wav"}
    )
    await expect_error(response, 413)
    assert nothing_stored(admin)


async def test_every_upload_place_taken_past_the_queue_timeout_is_503_with_retry_after(
    make_client: MakeClient, audio: Audio
) -> None:
    """MAX_UPLOADS uploads in progress: the next waits QUEUE_TIMEOUT_S for a place, then is told so."""
    client = await make_client(convert_concurrency=2, max_uploads=1, queue_timeout_s=0.2)
    user_id, token = await new_user(client)
    wav = audio()
    release = asyncio.Event()
    headers = {**basic(user_id, token), "Content-Type": "audio/wav"}
    first = asyncio.create_task(client.post("/record", data=held_body(wav, release), headers=headers))
    await until(lambda: client.app[SLOTS].in_progress == 1)

    refused = await client.post("/record", data=wav, headers=headers)
    body = await expect_error(refused, 503)
    assert body["message"] == "All 1 upload places are taken (MAX_UPLOADS); try again shortly."
    assert int(refused.headers["Retry-After"]) >= 1

    release.set()
    assert (await first).status == 201


async def test_stalled_upload_is_stopped_and_leaves_nothing(
    make_client: MakeClient, audio: Audio, admin: psycopg.Connection
) -> None:
    client = await make_client(read_timeout_s=0.3)
    user_id, token = await new_user(client)
    stalls = held_body(audio(), release=asyncio.Event())  # never released
    response = await client.post("/record", data=stalls, headers={**basic(user_id, token), "Content-Type": "audio/wav"})
    await expect_error(response, 408)
    assert client.app[SLOTS].active == 0
    assert nothing_stored(admin)


async def test_conversion_past_its_time_bound_is_killed_and_says_so(
    make_client: MakeClient, audio: Audio, admin: psycopg.Connection
) -> None:
    client = await make_client(ffmpeg_timeout_s=0.3)
    user_id, token = await new_user(client)
    slow = held_body(audio(), release=asyncio.Event())  # never released
    response = await client.post("/record", data=slow, headers={**basic(user_id, token), "Content-Type": "audio/wav"})
    body = await expect_error(response, 422)
    assert "longer than" in body["message"]
    assert nothing_stored(admin)


async def test_client_disconnecting_mid_upload_leaves_no_record_and_no_large_object(
    client: Client, audio: Audio, admin: psycopg.Connection
) -> None:
    user_id, token = await new_user(client)
    wav = audio(seconds=20)
    _, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"POST /record HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n"
        + f"Content-Length: {len(wav)}\r\n".encode()
        + "".join(f"{k}: {v}\r\n" for k, v in basic(user_id, token).items()).encode()
        + b"\r\n"
        + wav[: len(wav) // 2]
    )
    await writer.drain()
    await until(lambda: client.app[SLOTS].active == 1)
    writer.close()
    await until(lambda: client.app[SLOTS].active == 0)
    assert nothing_stored(admin)
    idle = "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'"
    await until(lambda: count(admin, idle) == 0)


async def test_database_unreachable_is_503_with_retry_after(make_client: MakeClient) -> None:
    client = await make_client(database_url="postgresql://mp3_service@127.0.0.1:1/none")
    response = await client.get("/records", headers=basic(1, str(uuid.uuid4())))
    await expect_error(response, 503)
    assert response.headers["Retry-After"]
    await expect_error(await client.get("/health"), 503)
    await expect_error(await client.post("/users", json={"username": "x"}), 503)


# --- downloads ------------------------------------------------------------------


@pytest.fixture
async def stored(client: Client, audio: Audio, admin: psycopg.Connection) -> tuple[dict[str, Any], bytes]:
    """One uploaded record and the exact bytes the database holds for it."""
    user = await new_user(client)
    response = await upload(client, user, audio(seconds=4), filename="Zoë's song.wav")
    data: dict[str, Any] = (await response.json())["data"]
    row = admin.execute("SELECT lo_get(lo_oid) FROM app.records WHERE id = %s", [data["id"]]).fetchone()
    assert row is not None
    return data, bytes(row[0])


async def test_download_is_the_stored_mp3_with_its_headers(
    client: Client, stored: tuple[dict[str, Any], bytes]
) -> None:
    data, mp3 = stored
    response = await client.get(local(data["url"]))
    assert response.status == 200
    assert await response.read() == mp3
    assert response.headers["Content-Type"] == "audio/mpeg"
    assert response.headers["Content-Length"] == str(len(mp3))
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["ETag"].startswith('"')
    assert response.headers["Last-Modified"].endswith("GMT")
    assert response.headers["Content-Disposition"] == (
        "attachment; filename=\"Zo_'s song.mp3\"; filename*=UTF-8''Zo%C3%AB%27s%20song.mp3"
    )


async def test_head_gives_the_headers_without_the_body(client: Client, stored: tuple[dict[str, Any], bytes]) -> None:
    data, mp3 = stored
    response = await client.head(local(data["url"]))
    assert response.status == 200
    assert response.headers["Content-Length"] == str(len(mp3))
    assert await response.read() == b""


@pytest.mark.parametrize(
    ("header", "span"),
    [("bytes=0-0", (0, 1)), ("bytes=100-199", (100, 200)), ("bytes=1000-", (1000, None)),
     ("bytes=-500", (-500, None)), ("bytes=5-99999999", (5, None))],
)  # fmt: skip
async def test_a_single_range_is_206_with_content_range(
    client: Client, stored: tuple[dict[str, Any], bytes], header: str, span: tuple[int, int | None]
) -> None:
    data, mp3 = stored
    response = await client.get(local(data["url"]), headers={"Range": header})
    assert response.status == 206
    expected = mp3[span[0] : span[1]]
    assert await response.read() == expected
    start = span[0] if span[0] >= 0 else len(mp3) + span[0]
    assert response.headers["Content-Range"] == f"bytes {start}-{start + len(expected) - 1}/{len(mp3)}"


async def test_unsatisfiable_range_is_416(client: Client, stored: tuple[dict[str, Any], bytes]) -> None:
    data, mp3 = stored
    for header in (f"bytes={len(mp3)}-", "bytes=-0"):
        response = await client.get(local(data["url"]), headers={"Range": header})
        await expect_error(response, 416)
        assert response.headers["Content-Range"] == f"bytes */{len(mp3)}"


async def test_matching_if_none_match_is_304(client: Client, stored: tuple[dict[str, Any], bytes]) -> None:
    data, _ = stored
    etag = (await client.head(local(data["url"]))).headers["ETag"]
    response = await client.get(local(data["url"]), headers={"If-None-Match": f'"other", {etag}'})
    assert response.status == 304
    assert await response.read() == b""
    assert (await client.get(local(data["url"]), headers={"If-None-Match": '"other"'})).status == 200


async def test_if_match_naming_other_bytes_is_412(client: Client, stored: tuple[dict[str, Any], bytes]) -> None:
    """RFC 9110: a GET whose If-Match names no current ETag (strongly) is not performed."""
    data, mp3 = stored
    etag = (await client.head(local(data["url"]))).headers["ETag"]
    for other in ('"other"', f"W/{etag}"):
        await expect_error(await client.get(local(data["url"]), headers={"If-Match": other}), 412)
    for matching in (etag, f'"other", {etag}', "*"):
        assert await (await client.get(local(data["url"]), headers={"If-Match": matching})).read() == mp3


async def test_another_users_record_is_404_like_a_missing_one(
    client: Client, stored: tuple[dict[str, Any], bytes]
) -> None:
    data, _ = stored
    other_id, other_token = await new_user(client, "mallory")
    theirs = await expect_error(await client.get(f"/record?id={data['id']}&user={other_id}"), 404)
    missing = await expect_error(await client.get(f"/record?id={uuid.uuid4()}&user={data['user']}"), 404)
    assert theirs == missing
    deleted = await client.delete(f"/record?id={data['id']}&user={other_id}", headers=basic(other_id, other_token))
    assert await expect_error(deleted, 404) == missing
    assert (await client.get(local(data["url"]))).status == 200


# --- listing and deletion ----------------------------------------------------------


async def test_records_lists_the_users_records_newest_first(client: Client, audio: Audio) -> None:
    user = await new_user(client)
    first = (await (await upload(client, user, audio(), filename="one.wav")).json())["data"]
    second = (await (await upload(client, user, audio(), filename="two.wav")).json())["data"]
    await upload(client, await new_user(client, "bob"), audio())

    response = await client.get("/records", headers=basic(*user))
    assert response.status == 200
    assert (await response.json())["data"]["records"] == [second, first]

    by_headers = await client.get("/records", headers={"user_id": str(user[0]), "user_uuid": user[1]})
    assert (await by_headers.json())["data"]["records"] == [second, first]
    await expect_error(await client.get("/records"), 401)


async def test_records_pages_see_each_record_once_newest_first_while_uploads_go_on(
    client: Client, audio: Audio, admin: psycopg.Connection
) -> None:
    user = await new_user(client)
    finished_records(admin, user[0], 2500)
    wav = audio(seconds=0.2)
    seen: list[dict[str, Any]] = []
    added: list[str] = []
    path = "/records?limit=100"
    while True:
        response = await client.get(path, headers=basic(*user))
        assert response.status == 200
        data = (await response.json())["data"]
        seen.extend(data["records"])
        if data["next"] is None:
            assert "Link" not in response.headers
            break
        link = re.fullmatch(r'<(?P<url>[^>]+)>; rel="next"', response.headers["Link"])
        assert link is not None
        assert URL(link["url"]).query["cursor"] == data["next"]
        path = local(link["url"])
        added.append((await (await upload(client, user, wav)).json())["data"]["id"])
    ids = [record["id"] for record in seen]
    assert len(ids) == len(set(ids)) == 2500  # each once; the new ones are newer than the walk's start
    assert len(added) == 24  # one between each two of the 25 pages
    order = [(record["created_at"], record["id"]) for record in seen]
    assert order == sorted(order, reverse=True)
    newest = (await (await client.get("/records?limit=1000", headers=basic(*user))).json())["data"]
    assert [record["id"] for record in newest["records"][:24]] == added[::-1]


async def test_a_page_size_or_cursor_the_service_did_not_give_is_400(client: Client) -> None:
    user = await new_user(client)
    for query in ("limit=0", "limit=1001", "limit=ten", "limit=-5", "limit=%EF%BC%95", "cursor=garbage"):
        response = await client.get(f"/records?{query}", headers=basic(*user))
        assert (await expect_error(response, 400))["message"], query
    await expect_error(await client.get("/records?cursor=garbage", headers=basic(user[0], str(uuid.uuid4()))), 401)


async def test_users_me_names_the_user_and_their_storage(client: Client, audio: Audio) -> None:
    user = await new_user(client, "Zoë")
    stored = (await (await upload(client, user, audio())).json())["data"]
    me = await client.get("/users/me", headers=basic(*user))
    assert (await me.json())["data"] == {
        "id": user[0], "username": "Zoë", "records": 1, "bytes": stored["size"], "quota_bytes": 0,
        "uploading_bytes": 0,
    }  # fmt: skip
    wrong = await client.get("/users/me", headers=basic(user[0], str(uuid.uuid4())))
    assert (await expect_error(wrong, 401))["message"] == "Unknown user or wrong token."


async def test_delete_removes_the_record_and_its_large_object(
    client: Client, stored: tuple[dict[str, Any], bytes], admin: psycopg.Connection
) -> None:
    data, _ = stored
    user_id = data["user"]
    token_less = await client.delete(f"/record?id={data['id']}&user={user_id}")
    await expect_error(token_less, 401)
    listing = await client.get("/records", headers=basic(user_id, str(uuid.uuid4())))
    await expect_error(listing, 401)


async def test_delete_with_credentials_is_204_and_frees_everything(
    client: Client, audio: Audio, admin: psycopg.Connection
) -> None:
    user = await new_user(client)
    data = (await (await upload(client, user, audio())).json())["data"]
    response = await client.delete(f"/record?id={data['id']}&user={user[0]}", headers=basic(*user))
    assert response.status == 204
    assert nothing_stored(admin)
    await expect_error(await client.get(local(data["url"])), 404)


async def test_health_is_200_when_database_and_ffmpeg_answer(client: Client) -> None:
    response = await client.get("/health")
    assert response.status == 200
    assert (await response.json())["status"] == "ok"


async def test_mp3_starts_with_an_info_frame_so_players_trim_exactly(client: Client, audio: Audio) -> None:
    """FFmpeg cannot write the Xing/LAME frame into a pipe; the service writes it afterwards."""
    user = await new_user(client)
    data = (await (await upload(client, user, audio(seconds=3, rate=8000, channels=1))).json())["data"]
    mp3 = await (await client.get(local(data["url"]))).read()
    tag_end = 10 + int.from_bytes(bytes(b & 0x7F for b in mp3[6:10]), "big")  # syncsafe ID3v2 size
    side_info = 9  # MPEG-2.5 mono
    assert mp3[tag_end + 4 + side_info : tag_end + 8 + side_info] == b"Info"
    # Without the frame the decoded audio is 3.168 s (delay and padding untrimmed).
    assert probe(mp3)["duration"] == pytest.approx(3.0, abs=0.001)


async def test_fields_after_the_file_or_a_second_file_are_refused_not_ignored(
    client: Client, audio: Audio, admin: psycopg.Connection
) -> None:
    user_id, token = await new_user(client)
    late_option = form(audio(), user=user_id, token=token)
    late_option.add_field("bitrate", "64")
    body = await expect_error(await client.post("/record", data=late_option), 400)
    assert "bitrate" in body["message"]

    two_files = form(audio(), user=user_id, token=token)
    two_files.add_field("other", audio(), filename="other.wav", content_type="audio/wav")
    body = await expect_error(await client.post("/record", data=two_files), 400)
    assert "second file" in body["message"]
    assert nothing_stored(admin)
