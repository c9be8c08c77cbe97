"""Just enough of the MP3 format to describe what FFmpeg produced."""

from __future__ import annotations

from dataclasses import dataclass

# Bit rates (kbit/s) of MPEG-1 and of MPEG-2/2.5 Layer III, by header index.
_BITRATES = {
    1: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_SAMPLE_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}

MP3_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


@dataclass(frozen=True)
class FrameInfo:
    bitrate: int  # bit/s
    sample_rate: int
    channels: int


def id3v2_size(head: bytes) -> int | None:
    """Bytes taken by a leading ID3v2 tag (0 when there is none), None when more bytes are needed."""
    if len(head) < 10:
        return None if head == b"ID3"[: len(head)] else 0
    if head[:3] != b"ID3":
        return 0
    size = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
    footer = 10 if head[5] & 0x10 else 0
    return 10 + size + footer


def first_frame(head: bytes) -> FrameInfo | None:
    """Describe the first Layer III frame after any ID3v2 tag; None when not (yet) found."""
    start = id3v2_size(head)
    if start is None or len(head) < start + 4:
        return None
    b1, b2, b3 = head[start + 1], head[start + 2], head[start + 3]
    if head[start] != 0xFF or b1 & 0xE0 != 0xE0:
        return None
    version = (b1 >> 3) & 0b11  # 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5
    bitrate_index, rate_index = b2 >> 4, (b2 >> 2) & 0b11
    if version == 1 or rate_index == 3 or bitrate_index in (0, 15):
        return None
    kbps = _BITRATES[1 if version == 3 else 2][bitrate_index]
    channels = 1 if b3 >> 6 == 0b11 else 2
    return FrameInfo(kbps * 1000, _SAMPLE_RATES[version][rate_index], channels)


def mp3_sample_rate_for(rate: int) -> int:
    """The MP3 sample rate to encode a source rate at: itself when MP3 holds it, else the nearest below."""
    fitting = [mp3_rate for mp3_rate in MP3_SAMPLE_RATES if mp3_rate <= rate]
    return fitting[-1] if fitting else MP3_SAMPLE_RATES[0]
