"""The WAV header reader, alone: no FFmpeg, no PostgreSQL."""

from __future__ import annotations

import struct

import pytest

from converter.errors import BadWav, NotAWav
from converter.wav import WavHeader, looks_like_wav
from tests.support import wav_header

SAMPLES = bytes(range(256)) * 16  # 4096 bytes: 1024 stereo 16-bit frames


def chunk(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("<I", len(body)) + body + b"\0" * (len(body) & 1)


def riff(*chunks: bytes, magic: bytes = b"RIFF") -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return magic + struct.pack("<I", len(body)) + body


def fmt(tag: int = 1, channels: int = 2, rate: int = 44100, bits: int = 16, extensible: bytes = b"") -> bytes:
    align = channels * ((bits + 7) // 8)
    return chunk(b"fmt ", struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits) + extensible)


def info(**tags: bytes) -> bytes:
    ids = {"title": b"INAM", "artist": b"IART", "album": b"IPRD"}
    return chunk(b"LIST", b"INFO" + b"".join(chunk(ids[name], value) for name, value in tags.items()))


def read(data: bytes, step: int | None = None) -> tuple[WavHeader, bytes]:
    """Feed the bytes in pieces of ``step`` (all at once without); the header and the samples it handed on."""
    header = WavHeader()
    step = step or len(data)
    samples = b"".join(header.feed(data[at : at + step]) for at in range(0, len(data), step))
    return header, samples


@pytest.mark.parametrize("step", [1, 3, 7, 64, None])
def test_whatever_the_pieces_the_same_format_tags_and_samples_come_out(step: int | None) -> None:
    data = riff(fmt(), info(title=b"Morning Song", artist=b"Zo\xc3\xab"), chunk(b"data", SAMPLES))
    header, samples = read(data, step)
    assert header.format is not None
    assert (header.format.channels, header.format.sample_rate, header.format.raw_format) == (2, 44100, "s16le")
    assert header.tags == {"title": "Morning Song", "artist": "Zoë"}
    assert samples == SAMPLES
    assert header.sample_frames == 1024
    assert header.duration == pytest.approx(1024 / 44100)


def test_a_chunk_after_the_declared_audio_is_not_audio() -> None:
    header, samples = read(riff(fmt(), chunk(b"data", SAMPLES), info(title=b"late")))
    assert samples == SAMPLES
    assert header.declared_duration == pytest.approx(1024 / 44100)


@pytest.mark.parametrize("declared", [0, 0xFFFFFFFF], ids=["zero", "all-ones"])
def test_a_streamed_wav_has_audio_to_the_end(declared: int) -> None:
    data = riff(fmt()) + b"data" + struct.pack("<I", declared) + SAMPLES + b"\x01\x02"
    header, samples = read(data, 100)
    assert samples == SAMPLES + b"\x01\x02"
    assert header.sample_frames == 1024  # whole frames only
    assert header.declared_duration is None


def test_sizes_that_overstate_the_data_count_what_came() -> None:
    header, samples = read(riff(fmt()) + b"data" + struct.pack("<I", 10**9) + SAMPLES)
    assert samples == SAMPLES
    assert header.sample_frames == 1024


def test_rf64_takes_the_audio_size_from_ds64() -> None:
    ds64 = chunk(b"ds64", struct.pack("<QQQ", 0, len(SAMPLES) // 2, 0) + bytes(4))
    data = riff(ds64, fmt(), magic=b"RF64") + b"data" + struct.pack("<I", 0xFFFFFFFF) + SAMPLES
    _, samples = read(data)
    assert samples == SAMPLES[: len(SAMPLES) // 2]


def test_extensible_gives_the_sub_format_and_the_speaker_mask() -> None:
    sub_format = struct.pack("<HHI", 22, 32, 0x3F) + struct.pack("<H", 3) + bytes(14)  # float, 5.1
    header, _ = read(riff(fmt(0xFFFE, 6, 48000, 32, sub_format), chunk(b"data", bytes(48))))
    assert header.format is not None
    assert (header.format.raw_format, header.format.decoder) == ("f32le", "pcm_f32le")
    assert header.format.channel_layout == "0x3f"


def test_a_mask_that_does_not_name_each_channel_is_not_trusted() -> None:
    sub_format = struct.pack("<HHI", 22, 16, 0x3) + struct.pack("<H", 1) + bytes(14)  # 2 positions, 4 channels
    header, _ = read(riff(fmt(0xFFFE, 4, 44100, 16, sub_format), chunk(b"data", bytes(16))))
    assert header.format is not None
    assert header.format.channel_layout == "4c"


@pytest.mark.parametrize(
    ("tag", "bits", "raw"),
    [(1, 8, "u8"), (1, 24, "s24le"), (1, 32, "s32le"), (3, 64, "f64le"), (6, 8, "alaw"), (7, 8, "mulaw")],
)
def test_each_pcm_encoding_has_its_raw_format(tag: int, bits: int, raw: str) -> None:
    header, _ = read(riff(fmt(tag, 1, 8000, bits), chunk(b"data", bytes(8))))
    assert header.format is not None
    assert header.format.raw_format == raw


def test_info_text_that_is_not_utf8_is_read_as_latin1_without_controls() -> None:
    header, _ = read(riff(fmt(), info(title=b"caf\xe9\x07 " + b"x" * 300), chunk(b"data", bytes(4))))
    assert header.tags["title"] == ("café " + "x" * 300)[:255]


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (b"ID3\x04" + bytes(20), NotAWav, "not a WAV"),
        (riff(chunk(b"fmt ", bytes(8))), BadWav, "too short"),
        (riff(fmt(tag=2, bits=4)), BadWav, "0x0002"),  # ADPCM
        (riff(fmt(rate=4000)), BadWav, "8000 to 768000 Hz"),
        (riff(fmt(channels=0)), BadWav, "0 channels"),
        (riff(fmt(bits=64)), BadWav, "64-bit"),  # integer PCM of 64 bits: no raw demuxer for it
        (riff(chunk(b"data", bytes(8))), BadWav, "no 'fmt ' chunk"),
    ],
    ids=["mp3", "short-fmt", "adpcm", "4-kHz", "no-channels", "64-bit-int", "data-first"],
)
def test_headers_that_cannot_describe_convertible_audio_are_refused(
    data: bytes, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        read(data)


def test_a_bad_block_alignment_is_refused() -> None:
    bad = bytearray(riff(fmt()))
    bad[32:34] = struct.pack("<H", 7)
    with pytest.raises(BadWav, match="block alignment"):
        read(bytes(bad))


def test_what_begins_like_a_wav() -> None:
    assert looks_like_wav(wav_header())
    assert looks_like_wav(b"RF64\0\0\0\0WAVE")
    assert not looks_like_wav(b"RIFF\0\0\0\0AVI ")
    assert not looks_like_wav(b"RIFF")
