"""Quality options, the Xing/LAME header that makes durations right, and tags."""

from __future__ import annotations

import io
import math
from array import array
from typing import Any

import pytest
from mutagen.mp3 import MP3, BitrateMode
from mutagen.mp3._util import XingHeader

from tests.support import (
    Audio,
    Client,
    decoded,
    expect_error,
    local,
    new_user,
    probe,
    resampled,
    snr_db,
    upload,
    wav_header,
)


async def converted(client: Client, wav: bytes, **fields: Any) -> tuple[dict[str, Any], bytes]:
    response = await upload(client, await new_user(client), wav, **fields)
    assert response.status == 201, await response.text()
    data: dict[str, Any] = (await response.json())["data"]
    return data, await (await client.get(local(data["url"]))).read()


def header_tag(mp3: bytes) -> Any:
    """The first frame's Xing/Info tag as mutagen reads it (frames, bytes, LAME's delay and padding)."""
    info: Any = MP3(io.BytesIO(mp3)).info  # type: ignore[no-untyped-call]
    assert info.bitrate_mode in (BitrateMode.CBR, BitrateMode.VBR)  # read from the tag, not guessed
    start = mp3.index(b"Xing" if info.bitrate_mode is BitrateMode.VBR else b"Info")
    return XingHeader(io.BytesIO(mp3[start:]))  # type: ignore[no-untyped-call]


def after_id3(mp3: bytes) -> int:
    return 10 + int.from_bytes(bytes(b & 0x7F for b in mp3[6:10]), "big")


@pytest.mark.parametrize("quality", [0, 2, 9])
async def test_vbr_quality_gets_a_xing_header_and_the_right_duration(
    client: Client, audio: Audio, quality: int
) -> None:
    data, mp3 = await converted(client, audio(seconds=10, extra=("-af", "volume=0.5")), quality=quality)
    tag = header_tag(mp3)
    assert not tag.is_info  # "Xing": variable bit rate
    assert tag.bytes == len(mp3) - after_id3(mp3)
    assert tag.lame_header.encoder_delay_start == 576
    found = probe(mp3)
    # ffprobe reads the frame count from the header: without it, a VBR file's
    # duration is guessed from the first frame's bit rate (off by percents).
    assert found["header_duration"] == pytest.approx(10.0, abs=0.06)
    assert found["duration"] == pytest.approx(10.0, abs=0.001)  # delay and padding trimmed
    assert tag.frames == pytest.approx(10.0 * 44100 / 1152, abs=3)
    assert 8000 < data["bitrate"] < 320000


async def test_cbr_gets_an_info_header_so_players_trim_exactly(client: Client, audio: Audio) -> None:
    data, mp3 = await converted(client, audio(seconds=7), bitrate=128)
    tag = header_tag(mp3)
    assert tag.is_info  # "Info": constant bit rate
    assert data["bitrate"] == 128000
    lame = tag.lame_header
    assert tag.frames * 1152 - lame.encoder_delay_start - lame.encoder_padding_end == 7 * 44100  # sample-exact
    assert probe(mp3)["duration"] == pytest.approx(7.0, abs=0.0001)


@pytest.mark.parametrize(
    "fields",
    [{"quality": "10"}, {"quality": "-1"}, {"quality": "v2"}, {"quality": "2", "bitrate": "128"},
     {"title": "x" * 256}],
)  # fmt: skip
async def test_bad_quality_options_are_400(client: Client, audio: Audio, fields: dict[str, str]) -> None:
    await expect_error(await upload(client, await new_user(client), audio(), **fields), 400)


async def test_wav_info_tags_are_carried_into_id3(client: Client, audio: Audio) -> None:
    tagged = audio(
        extra=("-metadata", "title=Night Take", "-metadata", "artist=Zoë Quartet", "-metadata", "album=Live",
               "-metadata", "date=2024", "-metadata", "comment=first pass", "-metadata", "genre=Jazz"),
    )  # fmt: skip
    assert b"LIST" in tagged
    assert b"INAM" in tagged
    _, mp3 = await converted(client, tagged)
    tags = probe(mp3)["tags"]
    assert tags["title"] == "Night Take"
    assert tags["artist"] == "Zoë Quartet"
    assert tags["album"] == "Live"
    assert tags["date"] == "2024"
    assert tags["comment"] == "first pass"
    assert tags["genre"] == "Jazz"


async def test_request_fields_override_tags_and_the_title_falls_back_to_the_file_name(
    client: Client, audio: Audio
) -> None:
    tagged = audio(extra=("-metadata", "title=From WAV", "-metadata", "artist=From WAV"))
    _, mp3 = await converted(client, tagged, artist="From Request", album="Chosen")
    tags = probe(mp3)["tags"]
    assert (tags["title"], tags["artist"], tags["album"]) == ("From WAV", "From Request", "Chosen")

    response = await upload(client, await new_user(client, "bob"), audio(), filename="Morning Song.wav")
    mp3 = await (await client.get(local((await response.json())["data"]["url"]))).read()
    assert probe(mp3)["tags"]["title"] == "Morning Song"


def tone(channels: int, rate: int, samples: int) -> bytes:
    """A WAV of exactly ``samples`` sample frames, loud from the first: a different tone in each channel."""
    frames = array("h", bytes(2 * channels * samples))
    for n in range(samples):
        for channel in range(channels):
            frames[n * channels + channel] = int(20000 * math.cos(2 * math.pi * (1000 + 40 * channel) * n / rate))
    return wav_header(channels=channels, rate=rate, data_size=len(frames) * 2) + frames.tobytes()


@pytest.mark.parametrize("samples", [1, 2, 4, 10, 40, 46, 47, 48, 60, 100, 200])
@pytest.mark.parametrize(
    ("rate", "sample_rate"),
    [(8000, None), (22050, None), (44100, None), (96000, None), (192000, None), (384000, None), (768000, None),
     (88200, None), (48000, 44100), (44100, 8000)],
)  # fmt: skip
async def test_the_shortest_recordings_play_every_sample_and_no_more(
    client: Client, samples: int, rate: int, sample_rate: int | None
) -> None:
    """Down to one sample: no 'holds no audio' for a duration rounded to 0, and no 529
    decoder samples left in by a decoder that cannot trim both ends of one frame. Resampled
    (above 48 kHz, or as asked), no 422 for a recording FFmpeg's resampler made nothing of,
    and no lead-in of silence counted at the WAV's rate and skipped at the MP3's, with the
    recording."""
    wav = tone(1, rate, samples)
    data, mp3 = await converted(client, wav, **({"sample_rate": sample_rate} if sample_rate else {}))
    assert data["duration"] == round(samples / rate, 6)
    played = decoded(mp3, 1)
    assert len(played) == max(1, round(samples * data["sample_rate"] / rate))  # one at least: half a sample plays
    # An MP3 of a few samples is 14 dB or better (measured); the recording skipped
    # or shifted is 0 dB or less.
    assert snr_db(resampled(wav, data["sample_rate"]), played) > 10


@pytest.mark.parametrize("channels", [3, 8, 9, 10, 12, 16, 17, 18, 19, 24, 25, 32, 33, 63, 64])
async def test_every_channel_count_the_header_check_accepts_converts_to_stereo(client: Client, channels: int) -> None:
    """FFmpeg names no layout for most counts above 8 (it refused '9c'); the first 18 take
    WAVE_FORMAT_EXTENSIBLE's speaker positions, and beyond them the channels are mixed
    down alternately to left and right."""
    samples = 800
    data, mp3 = await converted(client, tone(channels, 8000, samples))
    assert data["channels"] == 2
    assert len(decoded(mp3, 2)) == 2 * samples
