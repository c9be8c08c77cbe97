"""Waveform and loudness as a user meets them: in the record's JSON and the listing, at
GET /record/waveform in audiowaveform's formats, from psql, and as ReplayGain in the MP3."""

from __future__ import annotations

import io
import re
import struct
import subprocess
import uuid
from typing import Any

import psycopg
import pytest
from mutagen.mp3 import MP3

from tests.database import MakeClient
from tests.support import FFMPEG, Audio, Client, basic, expect_error, local, new_user, reference_peaks, upload

SECONDS = 3.0


def dat_header(dat: bytes) -> tuple[int, ...]:
    """version, flags, sample rate, samples per pixel, length, channels (audiowaveform's DataFormat.md)."""
    return struct.unpack_from("<iIiiIi", dat)


def ebur128(wav: bytes) -> tuple[float, float]:
    """FFmpeg's integrated loudness and true peak of the WAV, from its summary."""
    command = [FFMPEG, "-nostats", "-i", "-", "-af", "ebur128=peak=true", "-f", "null", "-"]
    summary = subprocess.run(command, input=wav, capture_output=True, check=True).stderr.decode()
    summary = summary.rsplit("Summary:", 1)[-1]
    integrated = re.search(r"I:\s+(\S+) LUFS", summary)
    true_peak = re.search(r"True peak:\s+Peak:\s+(\S+) dBFS", summary)
    assert integrated, summary
    assert true_peak, summary
    return float(integrated.group(1)), float(true_peak.group(1))


Measured = tuple[dict[str, Any], bytes, tuple[int, str]]


@pytest.fixture
async def measured(client: Client, audio: Audio) -> Measured:
    """One record of a 440 Hz tone, its WAV, and its owner's credentials."""
    wav = audio(seconds=SECONDS)
    user = await new_user(client)
    response = await upload(client, user, wav)
    assert response.status == 201
    return (await response.json())["data"], wav, user


async def test_the_record_states_its_loudness_as_ffmpeg_measures_it(client: Client, measured: Measured) -> None:
    record, wav, _ = measured
    loudness = record["loudness"]
    integrated, true_peak = ebur128(wav)
    assert loudness["integrated"] == pytest.approx(integrated, abs=0.1)
    assert loudness["true_peak"] == pytest.approx(true_peak, abs=0.1)
    assert loudness["range"] == pytest.approx(0, abs=0.1)  # a steady tone
    listed = await (await client.get("/records", headers=basic(*measured[2]))).json()
    assert listed["data"]["records"][0]["loudness"] == loudness
    assert listed["data"]["records"][0]["waveform"] == record["waveform"]


async def test_the_waveform_is_audiowaveforms_dat_or_json_with_every_peak_exact(
    client: Client, measured: Measured
) -> None:
    record, wav, user = measured
    response = await client.get(local(record["waveform"]), headers=basic(*user))
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/octet-stream"
    dat = await response.read()
    version, flags, rate, samples_per_pixel, length, channels = dat_header(dat)
    # flags bit 0: 8-bit; one channel: each pixel's min and max over the recording's channels
    assert (version, flags, rate, channels) == (2, 1, 44100, 1)
    assert length == int(SECONDS * rate) // samples_per_pixel
    assert dat[24:] == reference_peaks(wav, 2, samples_per_pixel)

    as_json = await (await client.get(local(record["waveform"]) + "&format=json", headers=basic(*user))).json()
    by_accept = await client.get(local(record["waveform"]), headers={"Accept": "application/json"} | basic(*user))
    assert await by_accept.json() == as_json
    assert as_json == {
        "version": 2, "channels": channels, "sample_rate": rate, "samples_per_pixel": samples_per_pixel,
        "bits": 8, "length": length, "data": list(struct.unpack(f"<{len(dat) - 24}b", dat[24:])),
    }  # fmt: skip


async def test_the_waveform_has_an_etag_per_format_and_answers_304(client: Client, measured: Measured) -> None:
    record, _, user = measured
    url, owner = local(record["waveform"]), basic(*user)
    dat_tag = (await client.get(url, headers=owner)).headers["ETag"]
    json_tag = (await client.get(url + "&format=json", headers=owner)).headers["ETag"]
    assert dat_tag != json_tag
    unchanged = await client.get(url, headers={"If-None-Match": dat_tag} | owner)
    assert unchanged.status == 304
    assert (await client.get(url, headers={"If-None-Match": json_tag} | owner)).status == 200
    await expect_error(await client.get(url, headers={"If-None-Match": dat_tag}), 401)  # not without credentials


async def test_the_waveform_is_its_owners_alone_and_goes_with_the_record(client: Client, measured: Measured) -> None:
    """SPEC: with credentials. Missing or wrong ones are 401; someone else's record, or none, 404 alike."""
    record, _, user = measured
    url, owner = local(record["waveform"]), basic(*user)
    other = await new_user(client, "mallory")
    refused = await client.get(url)
    await expect_error(refused, 401)
    assert refused.headers["WWW-Authenticate"].startswith("Basic")
    await expect_error(await client.get(url, headers=basic(user[0], str(uuid.uuid4()))), 401)
    await expect_error(await client.get(url + f"&token={user[1]}"), 400)  # never a token in a URL

    missing = await expect_error(
        await client.get(f"/record/waveform?id={uuid.uuid4()}&user={user[0]}", headers=owner), 404
    )
    assert await expect_error(await client.get(url, headers=basic(*other)), 404) == missing
    theirs = f"/record/waveform?id={record['id']}&user={other[0]}"
    assert await expect_error(await client.get(theirs, headers=basic(*other)), 404) == missing
    await expect_error(await client.get(url + "&format=png", headers=owner), 400)
    await expect_error(await client.get(f"/record/waveform?id=nope&user={user[0]}", headers=owner), 400)

    deleted = await client.delete(f"/record?id={record['id']}&user={record['user']}", headers=owner)
    assert deleted.status == 204
    assert await expect_error(await client.get(url, headers=owner), 404) == missing


async def test_the_mp3_carries_replay_gain_to_minus_18_lufs_and_the_true_peak(
    client: Client, measured: Measured
) -> None:
    record, _, _ = measured
    mp3 = await (await client.get(local(record["url"]))).read()
    info: Any = MP3(io.BytesIO(mp3)).info  # type: ignore[no-untyped-call]
    assert info.track_gain == pytest.approx(-18 - record["loudness"]["integrated"], abs=0.051)
    assert info.track_peak == pytest.approx(10 ** (record["loudness"]["true_peak"] / 20), rel=0.01)


async def test_psql_reads_the_waveform_and_loudness(
    admin: psycopg.Connection, client: Client, measured: Measured
) -> None:
    record, _, user = measured
    dat = await (await client.get(local(record["waveform"]), headers=basic(*user))).read()
    found = admin.execute("SELECT waveform FROM api.record_waveform(%s, %s, %s)", [*user, record["id"]]).fetchone()
    assert found == (dat,)
    row = admin.execute(
        "SELECT loudness, loudness_range, true_peak FROM api.records_list(%s, %s)", list(measured[2])
    ).fetchone()
    assert row is not None
    assert [round(value, 2) for value in row] == list(record["loudness"].values())


async def test_with_analysis_off_records_say_so_and_have_no_waveform(make_client: MakeClient, audio: Audio) -> None:
    client = await make_client(audio_analysis=False)
    user = await new_user(client)
    response = await upload(client, user, audio(seconds=SECONDS))
    record = (await response.json())["data"]
    assert record["loudness"] == {"integrated": None, "range": None, "true_peak": None}
    assert record["waveform"] is None
    await expect_error(
        await client.get(f"/record/waveform?id={record['id']}&user={user[0]}", headers=basic(*user)), 404
    )
    mp3 = await (await client.get(local(record["url"]))).read()
    info: Any = MP3(io.BytesIO(mp3)).info  # type: ignore[no-untyped-call]
    assert info.track_gain is None


async def test_a_silent_recording_has_a_flat_waveform_and_no_loudness(client: Client, audio: Audio) -> None:
    silence = audio(seconds=2, rate=8000, channels=1, extra=("-af", "volume=0"))
    user = await new_user(client)
    record = (await (await upload(client, user, silence)).json())["data"]
    assert record["loudness"] == {"integrated": None, "range": None, "true_peak": None}
    dat = await (await client.get(local(record["waveform"]), headers=basic(*user))).read()
    assert set(dat[24:]) == {0}
