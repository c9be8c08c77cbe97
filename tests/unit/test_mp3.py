"""The MP3 frame follower and the Xing/LAME header frame it writes, alone: no
FFmpeg, no PostgreSQL. mutagen, which players' tag libraries resemble, is the
independent reader of what is written."""

from __future__ import annotations

import io
import struct
from typing import Any

import pytest
from mutagen.mp3 import MP3, BitrateMode
from mutagen.mp3._util import XingHeader

from converter.errors import Mp3StreamError
from converter.mp3 import LAME_ENCODER_DELAY, Mp3Stream, crc16, id3v2_size, mp3_sample_rate_for, parse_header

MPEG1_44K_128K = 0xFFFB9000  # MPEG-1 Layer III, 128 kbit/s, 44.1 kHz, no CRC, stereo
MPEG1_44K_192K = 0xFFFBB000
MPEG25_8K_32K_MONO = 0xFFE348C0  # MPEG-2.5 Layer III, 32 kbit/s, 8 kHz, mono
MPEG25_8K_8K_MONO = 0xFFE318C0  # the same at 8 kbit/s: 72-byte frames


def frame(header: int) -> bytes:
    """A frame of silence: its header, then zeros (main_data_begin 0, no side info)."""
    parsed = parse_header(struct.pack(">I", header))
    assert parsed is not None
    return struct.pack(">I", header) + bytes(parsed.length - 4)


def id3(size: int = 30) -> bytes:
    syncsafe = bytes((size >> shift) & 0x7F for shift in (21, 14, 7, 0))
    return b"ID3\x03\x00\x00" + syncsafe + bytes(size)


def xing_of(data: bytes) -> Any:
    """mutagen's reading of a Xing/Info frame and its LAME tag (data starting at the tag's name)."""
    return XingHeader(io.BytesIO(data))  # type: ignore[no-untyped-call]


def info_of(mp3: bytes) -> Any:
    """What mutagen, reading the whole file as a player would, says of its audio."""
    return MP3(io.BytesIO(mp3)).info  # type: ignore[no-untyped-call]


def follow(stream: bytes, piece: int) -> tuple[Mp3Stream, bytes]:
    mp3 = Mp3Stream()
    kept = b"".join(mp3.feed(stream[at : at + piece]) for at in range(0, len(stream), piece))
    return mp3, kept


def completed(mp3: Mp3Stream, kept: bytes, samples: int, vbr: bool) -> bytes:
    """The file as the service stores it: the header frame written over the blank left for it."""
    header = mp3.header_frame(samples, vbr=vbr)
    at = mp3.header_offset
    assert kept[at : at + len(header)] == bytes(len(header))  # the blank was there
    return kept[:at] + header + kept[at + len(header) :]


@pytest.mark.parametrize("piece", [1, 5, 417, 4096, 1 << 20])
def test_a_cbr_stream_gets_an_info_frame_that_mutagen_reads_back(piece: int) -> None:
    audio = frame(MPEG1_44K_128K) * 100
    samples = 100 * 1152 - LAME_ENCODER_DELAY - 300  # what the WAV held
    mp3, kept = follow(id3() + audio, piece)
    assert mp3.frames == 100
    assert kept.startswith(id3())
    assert kept.endswith(audio)

    stored = completed(mp3, kept, samples, vbr=False)
    xing = xing_of(stored[stored.index(b"Info") :])
    assert xing.is_info
    assert xing.frames == 100
    assert xing.bytes == len(stored) - len(id3())  # the header frame and the audio
    assert xing.lame_header is not None
    assert xing.lame_header.encoder_delay_start == LAME_ENCODER_DELAY
    assert xing.lame_header.encoder_padding_end == 300
    assert xing.lame_header.music_length == xing.bytes
    assert xing.lame_header.header_crc == crc16(stored[len(id3()) : stored.index(b"Info") + 120 + 34])
    assert list(xing.toc) == sorted(xing.toc)  # the seek table only moves forward
    info = info_of(stored)
    assert info.length == pytest.approx(samples / 44100, abs=1e-6)  # delay and padding trimmed
    assert info.bitrate_mode is BitrateMode.CBR


def test_a_vbr_stream_gets_a_xing_frame_and_its_average_bit_rate() -> None:
    audio = (frame(MPEG1_44K_128K) + frame(MPEG1_44K_192K)) * 50
    mp3, kept = follow(audio, 1000)
    stored = completed(mp3, kept, 100 * 1152 - LAME_ENCODER_DELAY, vbr=True)
    xing = xing_of(stored[stored.index(b"Xing") :])
    assert not xing.is_info
    assert xing.frames == 100
    assert mp3.average_bitrate == pytest.approx(160_000, rel=0.01)
    assert info_of(stored).bitrate_mode is BitrateMode.VBR


def test_the_header_frame_fits_the_smallest_frames() -> None:
    """At 8 kHz mono and 8 kbit/s a frame is 72 bytes, too small for the Xing and
    LAME tags: the header frame takes a higher bit rate of the same stream."""
    mp3, kept = follow(frame(MPEG25_8K_8K_MONO) * 40, 64)
    stored = completed(mp3, kept, 40 * 576 - LAME_ENCODER_DELAY, vbr=False)
    xing = xing_of(stored[stored.index(b"Info") :])
    assert xing.frames == 40
    assert info_of(stored).sample_rate == 8000


def test_lost_frame_sync_is_an_error_not_a_wrong_file() -> None:
    with pytest.raises(Mp3StreamError, match="lost MP3 frame sync"):
        follow(frame(MPEG1_44K_128K) * 3 + b"garbage" + frame(MPEG1_44K_128K), 4096)
    with pytest.raises(Mp3StreamError, match="does not start with an MP3 frame"):
        follow(b"not an mp3 at all", 4096)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (MPEG1_44K_128K, (True, 128_000, 44100, 417, False)),
        (MPEG25_8K_32K_MONO, (False, 32_000, 8000, 288, True)),
    ],
)
def test_frame_headers_are_read(raw: int, expected: tuple[bool, int, int, int, bool]) -> None:
    header = parse_header(struct.pack(">I", raw))
    assert header is not None
    assert (header.mpeg1, header.bitrate, header.sample_rate, header.length, header.mono) == expected


@pytest.mark.parametrize(
    "raw", [0x00000000, 0xFFFD9000, 0xFFFBF000, 0xFFFB9C00], ids=["no-sync", "layer-2", "bad-rate", "bad-frequency"]
)
def test_what_is_not_a_layer_3_frame_header(raw: int) -> None:
    assert parse_header(struct.pack(">I", raw)) is None


def test_id3v2_sizes() -> None:
    assert id3v2_size(id3(30)[:10]) == 40
    assert id3v2_size(b"ID3") is None  # more bytes needed
    assert id3v2_size(struct.pack(">I", MPEG1_44K_128K) + bytes(6)) == 0


@pytest.mark.parametrize(
    ("source", "mp3"), [(48000, 48000), (44100, 44100), (96000, 48000), (37800, 32000), (8000, 8000)]
)
def test_the_mp3_rate_for_a_source_rate_is_never_above_it(source: int, mp3: int) -> None:
    assert mp3_sample_rate_for(source) == mp3


def test_crc16_is_crc_16_arc() -> None:
    assert crc16(b"123456789") == 0xBB3D  # the catalogued check value of CRC-16/ARC
