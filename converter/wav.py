"""Reading a WAV file's header as it streams past, without buffering the audio.

The service decides from the bytes whether an upload is a WAV (RIFF, RF64 or
BW64 with form type WAVE), refuses a `fmt ` chunk that lies, carries the
LIST/INFO tags into the MP3, and counts the sample frames actually sent, so
the record's duration is exact even when the header's sizes are not.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

WAV_MAGIC = (b"RIFF", b"RF64", b"BW64")
SNIFF_BYTES = 12

# Format tags FFmpeg's WAV demuxer decodes as plain samples. Anything else
# (ADPCM, MP3 or GSM in a WAV wrapper...) would reach a codec we never meant
# to expose to untrusted input.
FORMAT_PCM, FORMAT_FLOAT, FORMAT_ALAW, FORMAT_MULAW, FORMAT_EXTENSIBLE = 1, 3, 6, 7, 0xFFFE
ACCEPTED_FORMATS = {FORMAT_PCM, FORMAT_FLOAT, FORMAT_ALAW, FORMAT_MULAW}

# RIFF INFO ids and the ID3-style names FFmpeg's MP3 muxer knows them by.
INFO_TAGS = {
    b"INAM": "title",
    b"IART": "artist",
    b"IPRD": "album",
    b"ICRD": "date",
    b"ICMT": "comment",
    b"IGNR": "genre",
    b"ITRK": "track",
    b"ICOP": "copyright",
}

MAX_BUFFERED_CHUNK = 1 << 20  # fmt/ds64/LIST chunks larger than this are skipped, not read
MAX_CHANNELS = 64


class NotWav(Exception):
    """The bytes are not a RIFF/RF64/BW64 WAVE file at all (HTTP 415)."""


class BadWav(Exception):
    """A WAV whose header cannot describe audio we will convert (HTTP 422)."""


def looks_like_wav(first_bytes: bytes) -> bool:
    return len(first_bytes) >= SNIFF_BYTES and first_bytes[:4] in WAV_MAGIC and first_bytes[8:12] == b"WAVE"


@dataclass
class WavFormat:
    format_tag: int
    channels: int
    sample_rate: int
    block_align: int
    bits_per_sample: int


@dataclass
class WavHeader:
    """Feed it the upload's bytes in order; it reads up to the `data` chunk and then counts."""

    format: WavFormat | None = None
    tags: dict[str, str] = field(default_factory=dict)
    data_declared: int | None = None  # None: unknown or "to the end" (streamed files write 0 or 0xFFFFFFFF)
    data_seen: int = 0

    _buffer: bytearray = field(default_factory=bytearray)
    _skip: int = 0
    _started: bool = False
    _in_data: bool = False
    _ds64_data_size: int | None = None

    @property
    def sample_frames(self) -> int:
        """Whole sample frames received so far (the duration's numerator)."""
        if self.format is None:
            return 0
        audio = self.data_seen if self.data_declared is None else min(self.data_seen, self.data_declared)
        return audio // self.format.block_align

    @property
    def started(self) -> bool:
        """The bytes so far begin like a WAV."""
        return self._started

    @property
    def in_data(self) -> bool:
        """The header is read; what follows is audio."""
        return self._in_data

    @property
    def duration(self) -> float:
        return self.sample_frames / self.format.sample_rate if self.format else 0.0

    def feed(self, data: bytes) -> None:
        if self._in_data:
            self.data_seen += len(data)
            return
        self._buffer += data
        self._parse()

    def _parse(self) -> None:
        if not self._started:
            if len(self._buffer) < SNIFF_BYTES:
                return
            if not looks_like_wav(bytes(self._buffer[:SNIFF_BYTES])):
                raise NotWav("The file is not a WAV (RIFF/RF64 WAVE).")
            del self._buffer[:SNIFF_BYTES]
            self._started = True
        while not self._in_data:
            if self._skip:
                skipped = min(self._skip, len(self._buffer))
                del self._buffer[:skipped]
                self._skip -= skipped
                if self._skip:
                    return
            if len(self._buffer) < 8:
                return
            chunk_id = bytes(self._buffer[:4])
            (size,) = struct.unpack_from("<I", self._buffer, 4)
            padded = size + (size & 1)
            if chunk_id == b"data":
                self._enter_data(size)
                return
            if padded > MAX_BUFFERED_CHUNK or chunk_id not in {b"fmt ", b"ds64", b"LIST"}:
                del self._buffer[:8]
                self._skip = padded
                continue
            if len(self._buffer) < 8 + padded:
                return
            body = bytes(self._buffer[8 : 8 + size])
            del self._buffer[: 8 + padded]
            self._read_chunk(chunk_id, body)

    def _read_chunk(self, chunk_id: bytes, body: bytes) -> None:
        if chunk_id == b"fmt ":
            self.format = _read_format(body)
        elif chunk_id == b"ds64" and len(body) >= 16:
            (self._ds64_data_size,) = struct.unpack_from("<Q", body, 8)
        elif chunk_id == b"LIST" and body[:4] == b"INFO":
            self.tags.update(_read_info(body[4:]))

    def _enter_data(self, size: int) -> None:
        if self.format is None:
            raise BadWav("The WAV has no 'fmt ' chunk before its audio.")
        if size == 0xFFFFFFFF and self._ds64_data_size is not None:
            size = self._ds64_data_size
        self.data_declared = None if size in (0, 0xFFFFFFFF) else size
        self._in_data = True
        self.data_seen = len(self._buffer) - 8
        self._buffer = bytearray()


def _read_format(body: bytes) -> WavFormat:
    if len(body) < 16:
        raise BadWav("The WAV's 'fmt ' chunk is too short.")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", body)
    if tag == FORMAT_EXTENSIBLE and len(body) >= 26:
        # The real format is the first two bytes of the sub-format GUID.
        (tag,) = struct.unpack_from("<H", body, 24)
    if tag not in ACCEPTED_FORMATS:
        raise BadWav(f"WAV encoding 0x{tag:04x} is not supported: send PCM or floating-point samples.")
    if not 1 <= channels <= MAX_CHANNELS:
        raise BadWav(f"The WAV claims {channels} channels; 1 to {MAX_CHANNELS} are supported.")
    if not 1000 <= rate <= 768_000:
        raise BadWav(f"The WAV claims a sample rate of {rate} Hz; 1000 to 768000 Hz are supported.")
    if bits == 0 or block_align != channels * ((bits + 7) // 8):
        raise BadWav(f"The WAV's block alignment ({block_align}) does not match {channels} x {bits}-bit samples.")
    return WavFormat(tag, channels, rate, block_align, bits)


def _read_info(body: bytes) -> dict[str, str]:
    tags: dict[str, str] = {}
    offset = 0
    while offset + 8 <= len(body):
        tag_id = body[offset : offset + 4]
        (size,) = struct.unpack_from("<I", body, offset + 4)
        value = body[offset + 8 : offset + 8 + size]
        offset += 8 + size + (size & 1)
        name = INFO_TAGS.get(tag_id)
        if name:
            text = _decode_text(value)
            if text:
                tags[name] = text
    return tags


def _decode_text(raw: bytes) -> str:
    raw = raw.split(b"\x00", 1)[0]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return "".join(ch for ch in text if ch.isprintable()).strip()[:255]
