"""What a hostile upload can reach and cost: only a PCM decoder, bounded work per
byte, the same answer for every wrong credential, nothing secret in URLs."""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import re
import struct
import subprocess
import uuid
from array import array

import asyncpg
import psycopg
import pytest

from converter.command import ffmpeg_command
from converter.options import EncodeOptions
from converter.wav import WavFormat
from settings import Settings
from tests.database import MakeClient
from tests.support import (
    FFMPEG,
    Audio,
    Client,
    basic,
    count,
    expect_error,
    local,
    new_user,
    nothing_stored,
    raw_request,
    upload,
    wav_header,
)

# --- only a PCM decoder sees the upload ---------------------------------------------


def spdif_in_pcm_wav() -> bytes:
    """A 1 kHz tone as AC-3, carried the IEC 61937 (S/PDIF) way inside 16-bit PCM samples."""
    spdif = subprocess.run(
        [FFMPEG, "-loglevel", "error", "-f", "lavfi", "-i", "sine=f=1000:d=3", "-ac", "2", "-ar", "48000",
         "-c:a", "ac3", "-f", "spdif", "pipe:1"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    return wav_header(channels=2, rate=48000, bits=16, data_size=len(spdif)) + spdif


def tone_share(mp3: bytes, hertz: float) -> float:
    """How much of the decoded audio's energy is one frequency: about 1 for a pure tone."""
    decoded = subprocess.run(
        [FFMPEG, "-v", "error", "-i", "pipe:0", "-ac", "1", "-ar", "8000", "-f", "f32le", "pipe:1"],
        input=mp3, capture_output=True, check=True,
    ).stdout  # fmt: skip
    samples = array("f", decoded)
    coefficient = 2 * math.cos(2 * math.pi * hertz / 8000)
    previous = before = 0.0
    for sample in samples:  # Goertzel: the power of one frequency
        previous, before = sample + coefficient * previous - before, previous
    power = previous * previous + before * before - coefficient * previous * before
    energy = sum(sample * sample for sample in samples)
    return 2 * power / (len(samples) * energy) if energy else 0.0


async def test_a_bitstream_hidden_in_pcm_samples_is_decoded_as_the_pcm_it_is(client: Client) -> None:
    """FFmpeg's WAV demuxer would find the AC-3 inside and run the AC-3 decoder on it
    (the MP3 was a clean 1 kHz tone); given raw samples and the PCM decoder, the
    MP3 is what those samples sound like: no tone at all."""
    response = await upload(client, await new_user(client), spdif_in_pcm_wav())
    assert response.status == 201, await response.text()
    data = (await response.json())["data"]
    mp3 = await (await client.get(local(data["url"]))).read()
    assert data["duration"] == pytest.approx(3.0, abs=0.02)
    assert tone_share(mp3, 1000) < 0.1


def test_ffmpeg_is_given_raw_samples_of_the_headers_format_and_its_pcm_decoder_only() -> None:
    command = ffmpeg_command("ffmpeg", EncodeOptions(), WavFormat(3, 6, 96000, 24, 32, channel_mask=0x3F))
    before_input = command[: command.index("-i")]
    assert before_input[before_input.index("-f") + 1] == "f32le"
    assert before_input[before_input.index("-c:a") + 1] == "pcm_f32le"
    assert before_input[before_input.index("-codec_whitelist") + 1] == "pcm_f32le"
    assert before_input[before_input.index("-ch_layout") + 1] == "0x3f"
    assert "wav" not in command


# --- bounded work per uploaded byte -----------------------------------------------


async def test_a_recording_longer_than_the_limit_is_413_from_its_header_or_while_streaming(
    make_client: MakeClient, audio: Audio, admin: psycopg.Connection
) -> None:
    client = await make_client(max_duration_s=5)
    user = await new_user(client)
    declared = audio(seconds=6, channels=1)
    body = await expect_error(await upload(client, user, declared), 413)
    assert "longer than the limit of 5 seconds" in body["message"]

    streamed = bytearray(declared)  # a recorder still writing: sizes of 0, "to the end"
    streamed[4:8] = bytes(4)
    at = streamed.index(b"data") + 4
    streamed[at : at + 4] = bytes(4)
    await expect_error(await upload(client, user, bytes(streamed)), 413)
    assert nothing_stored(admin)


@pytest.mark.parametrize(
    ("wav_args", "options", "message"),
    [
        ({"rate": 8000, "channels": 1}, {"sample_rate": 48000}, "own sample rate is 8000 Hz"),
        ({"rate": 4000, "channels": 1}, {}, "8000 to 768000 Hz"),
    ],
    ids=["resampled-up", "below-8-kHz"],
)
async def test_no_upload_is_resampled_up(
    client: Client, audio: Audio, wav_args: dict[str, int], options: dict[str, int], message: str
) -> None:
    """Decided: an MP3 never has a higher rate than its WAV (more work and bytes, no more sound)."""
    body = await expect_error(await upload(client, await new_user(client), audio(**wav_args), **options), 422)
    assert message in body["message"]


async def test_the_storage_quota_is_413_and_keeps_nothing_of_the_upload_that_passes_it(
    client: Client, audio: Audio, admin: psycopg.Connection
) -> None:
    user = await new_user(client)
    first = await upload(client, user, audio(seconds=2))
    size = (await first.json())["data"]["size"]
    admin.execute("UPDATE app.settings SET user_quota_bytes = %s", [size + 1000])
    body = await expect_error(await upload(client, user, audio(seconds=2)), 413)
    assert "quota" in body["message"]
    assert admin.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone() == (1,)


async def test_a_full_service_is_507_for_every_user_and_keeps_nothing_of_the_upload(
    client: Client, audio: Audio, admin: psycopg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """Accounts are free, so a user's quota bounds nothing overall: STORAGE_MAX_GB does. A full
    storage is an operator's concern, a warning, not a fault of the code: each 507 was an ERROR
    with a traceback (1,608 of them in a 20-minute soak at the bound)."""
    first = await upload(client, await new_user(client), audio(seconds=2))
    size = (await first.json())["data"]["size"]
    admin.execute("UPDATE app.settings SET storage_max_bytes = %s", [size + 1000])
    another = await new_user(client, "bob")
    body = await expect_error(await upload(client, another, audio(seconds=2)), 507)
    assert body["status"] == "insufficient_storage"
    assert "storage is full" in body["message"]
    assert admin.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone() == (1,)
    metrics = await (await client.get("/metrics")).text()
    assert f"mp3_storage_max_bytes {float(size + 1000)}" in metrics.splitlines()
    answered = [record for record in caplog.records if "answered 507" in record.getMessage()]
    assert [(record.levelname, record.exc_info) for record in answered] == [("WARNING", None)]


@pytest.mark.parametrize("path", ["/users", "/users.create"])
async def test_closed_sign_up_refuses_new_accounts_before_reading_the_body(make_client: MakeClient, path: str) -> None:
    client = await make_client(open_signup=False)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    answer = await raw_request(client, head.encode())  # the body never comes: it is not waited for
    head_answered, _, body = answer.partition(b"\r\n\r\n")
    assert head_answered.split()[1] == b"403", answer[:300]
    assert b"Sign-up is closed" in body


# --- credentials -----------------------------------------------------------------


async def test_a_malformed_token_gets_the_same_answer_for_an_existing_user_and_a_missing_one(client: Client) -> None:
    user_id, _ = await new_user(client)
    for token in ("{00000000-0000-0000-0000-000000000000", "00000000-0000-0000-0000-000000000000}"):
        existing = await client.get("/records", headers=basic(user_id, token))
        missing = await client.get("/records", headers=basic(user_id + 1000, token))
        assert await expect_error(existing, 401) == await expect_error(missing, 401)
        wrong = await client.get("/records", headers=basic(user_id, str(uuid.uuid4())))
        assert await expect_error(wrong, 401) == await expect_error(existing, 401)


@pytest.mark.parametrize("target", ["/records?token={token}", "/record?user={user}&token={token}", "/?user_uuid=x"])
async def test_a_token_in_the_url_is_refused(client: Client, audio: Audio, target: str) -> None:
    user_id, token = await new_user(client)
    path = target.format(user=user_id, token=token)
    response = await (client.post(path, data=audio()) if path.startswith("/record?") else client.get(path))
    body = await expect_error(response, 400)
    assert "never in the URL" in body["message"]


# --- what the service says, and how -------------------------------------------------


async def test_the_download_is_what_its_etag_says_as_sha256sum_prints_it(client: Client, audio: Audio) -> None:
    data = (await (await upload(client, await new_user(client), audio(seconds=3))).json())["data"]
    response = await client.get(local(data["url"]))
    assert response.headers["ETag"] == f'"{hashlib.sha256(await response.read()).hexdigest()}"'


async def test_ffmpeg_words_stay_in_the_log_and_the_client_hears_ours(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """NaN samples make LAME abort with an assertion; that text is for the operator."""
    nan = struct.pack("<f", float("nan")) * 2 * 48000
    wav = wav_header(channels=2, rate=48000, bits=32, data_size=len(nan), tag=3) + nan
    caplog.set_level(logging.WARNING, logger="handlers.errors")
    body = await expect_error(await upload(client, await new_user(client), wav), 422)
    assert body["message"] == "The WAV could not be converted: its samples could not be encoded."
    assert "FFmpeg said" in caplog.text


@pytest.mark.parametrize("path", ["/", "/docs"])
async def test_pages_allow_no_inline_code_no_framing_and_no_sniffing(client: Client, path: str) -> None:
    response = await client.get(path)
    assert response.status == 200
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "style-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "<style" not in await response.text()
    assert (await client.get("/page.css")).content_type == "text/css"


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET /" + b"x" * 9000 + b" HTTP/1.1\r\n\r\n",
    ],
    ids=["request-line", "header-line", "line-too-long"],
)
async def test_requests_refused_before_any_handler_are_answered_in_the_envelope(
    client: Client, request_bytes: bytes
) -> None:
    answer = await raw_request(client, request_bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split()[1] == b"400", answer[:300]  # aiohttp answers these as HTTP/1.0
    assert b"Content-Type: application/json" in head
    assert body.startswith(b'{"code": 400, "status": "bad_request"')
    # SPEC: every response carries X-Request-Id; a request that broke HTTP gets one of the service's.
    assert re.search(rb"\r\nX-Request-Id: [0-9a-f]{32}\r\n", head + b"\r\n"), head
    assert b"\r\nX-Content-Type-Options: nosniff" in head


# --- the service role, and the logs --------------------------------------------------


async def test_the_service_connection_cannot_read_tables_or_large_objects(
    service_settings: Settings, admin: psycopg.Connection, client: Client, audio: Audio
) -> None:
    await upload(client, await new_user(client), audio())
    object_id = count(admin, "SELECT lo_oid FROM app.records")
    connection = await asyncpg.connect(service_settings.database_url)
    try:
        for query in ("SELECT * FROM app.users", "SELECT * FROM app.records", f"SELECT lo_get({object_id})"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.fetch(query)
    finally:
        await connection.close()


async def test_tokens_never_appear_in_logs(client: Client, audio: Audio, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    user_id, token = await new_user(client)
    await upload(client, (user_id, token), audio())
    await client.get("/records", headers=basic(user_id, token))
    await client.get("/records", headers={"user_id": str(user_id), "user_uuid": token})
    await client.get("/records", headers=basic(user_id, str(uuid.uuid4())))
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "/records" in logged  # the access log did see the requests
    assert token not in logged
    assert base64.b64encode(f"{user_id}:{token}".encode()).decode() not in logged
