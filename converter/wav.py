"""Reading a WAV file's header as it streams past, without buffering the audio.

The service decides from the bytes whether an upload is a WAV (RIFF, RF64 or
BW64 with form type WAVE), refuses a `fmt ` chunk that lies, carries the
LIST/INFO tags into the MP3, and hands on only the bytes of the `data` chunk:
FFmpeg is given those as raw samples of the format read here, so no WAV
demuxer and no decoder but the PCM one ever sees the upload. The sample frames
actually sent are counted, so the record's duration is exact even when the
header's sizes are not.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from converter.errors import BadWav, NotAWav

WAV_MAGIC = (b"RIFF", b"RF64", b"BW64")
NOT_A_WAV = "The file is not a WAV: expected a RIFF or RF64 file of type WAVE."
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
# Channel counts beyond 8 that FFmpeg 5.1 has a layout of its own for (hexadecagonal, 22.2).
FFMPEG_DEFAULT_LAYOUTS = {16, 24}
# Speaker bits (WAVE_FORMAT_EXTENSIBLE's, and FFmpeg's): the front three, and the pairs
# that FFmpeg's resampler mixes down only together (libswresample's sane_layout).
FRONT_SPEAKERS = 0x7  # front left, right and centre
SPEAKER_PAIRS = (0x3, 0xC0, 0x30, 0x600)  # front, front of centre, back, side: left and right
# Below MP3's lowest rate a WAV would be resampled up: work per uploaded byte
# that the file does not carry (and no recorder writes such files).
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8000, 768_000

# FFmpeg's raw demuxer and PCM decoder for each sample encoding and width (bytes).
RAW_FORMATS = {
    (FORMAT_PCM, 1): ("u8", "pcm_u8"),
    (FORMAT_PCM, 2): ("s16le", "pcm_s16le"),
    (FORMAT_PCM, 3): ("s24le", "pcm_s24le"),
    (FORMAT_PCM, 4): ("s32le", "pcm_s32le"),
    (FORMAT_FLOAT, 4): ("f32le", "pcm_f32le"),
    (FORMAT_FLOAT, 8): ("f64le", "pcm_f64le"),
    (FORMAT_ALAW, 1): ("alaw", "pcm_alaw"),
    (FORMAT_MULAW, 1): ("mulaw", "pcm_mulaw"),
}


def can_mix_down(mask: int) -> bool:
    """FFmpeg can mix these speakers down: a front one at least, and no pair half present."""
    return bool(mask & FRONT_SPEAKERS) and all((mask & pair) in (0, pair) for pair in SPEAKER_PAIRS)


def looks_like_wav(first_bytes: bytes) -> bool:
    return len(first_bytes) >= SNIFF_BYTES and first_bytes[:4] in WAV_MAGIC and first_bytes[8:12] == b"WAVE"


@dataclass
class WavFormat:
    format_tag: int
    channels: int
    sample_rate: int
    block_align: int
    bits_per_sample: int
    channel_mask: int | None = None  # WAVE_FORMAT_EXTENSIBLE's speaker positions

    @property
    def raw_format(self) -> str:
        """FFmpeg's raw demuxer for these samples (its PCM decoder: ``decoder``)."""
        return RAW_FORMATS[self.format_tag, self.block_align // self.channels][0]

    @property
    def decoder(self) -> str:
        return RAW_FORMATS[self.format_tag, self.block_align // self.channels][1]

    @property
    def channel_layout(self) -> str:
        """The speaker layout FFmpeg should assume: the file's mask when it names one speaker
        per channel in a layout FFmpeg can mix down; else FFmpeg's usual layout for the count
        where it has one; else none (``speakers_unknown``: converter/command.py mixes them)."""
        mask = self.channel_mask
        if mask and mask.bit_count() == self.channels and can_mix_down(mask):
            return f"0x{mask:x}"
        if self.channels <= 8 or self.channels in FFMPEG_DEFAULT_LAYOUTS:
            return f"{self.channels}c"
        return f"{self.channels} channels"

    @property
    def speakers_unknown(self) -> bool:
        return self.channel_layout.endswith(" channels")


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
        return self.data_seen // self.format.block_align if self.format else 0

    @property
    def declared_duration(self) -> float | None:
        """What the header says the audio lasts, when it says (streamed files do not)."""
        if self.format is None or self.data_declared is None:
            return None
        return self.data_declared // self.format.block_align / self.format.sample_rate

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

    @classmethod
    def resumed(cls, header: bytes, data_seen: int) -> WavHeader:
        """The header of a WAV read before, ``data_seen`` bytes into its samples."""
        read = cls()
        if read.feed(header) or not read.in_data:
            raise BadWav("A stored WAV header does not end where its samples begin.")
        read.data_seen = data_seen
        return read

    def feed(self, data: bytes) -> bytes:
        """Take the upload's next bytes; return those that are samples of the `data` chunk."""
        if self._in_data:
            return self._audio(data)
        self._buffer += data
        self._parse()
        if not self._in_data:
            return b""
        first, self._buffer = bytes(self._buffer), bytearray()
        return self._audio(first)

    def _audio(self, data: bytes) -> bytes:
        """The part of ``data`` within the declared audio (a chunk after it is not audio)."""
        if self.data_declared is not None and self.data_seen + len(data) > self.data_declared:
            data = data[: max(0, self.data_declared - self.data_seen)]
        self.data_seen += len(data)
        return data

    def _parse(self) -> None:
        if not self._started:
            if len(self._buffer) < SNIFF_BYTES:
                return
            if not looks_like_wav(bytes(self._buffer[:SNIFF_BYTES])):
                raise NotAWav(NOT_A_WAV)
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
        del self._buffer[:8]  # the chunk's header; what follows is audio


def _read_format(body: bytes) -> WavFormat:
    if len(body) < 16:
        raise BadWav("The WAV's 'fmt ' chunk is too short.")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", body)
    mask = None
    if tag == FORMAT_EXTENSIBLE and len(body) >= 26:
        # The real format is the first two bytes of the sub-format GUID.
        (mask, tag) = struct.unpack_from("<IH", body, 20)
    if tag not in ACCEPTED_FORMATS:
        raise BadWav(f"WAV encoding 0x{tag:04x} is not supported: send PCM or floating-point samples.")
    if not 1 <= channels <= MAX_CHANNELS:
        raise BadWav(f"The WAV claims {channels} channels; 1 to {MAX_CHANNELS} are supported.")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise BadWav(
            f"The WAV claims a sample rate of {rate} Hz; {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz are supported."
        )
    if bits == 0 or block_align != channels * ((bits + 7) // 8):
        raise BadWav(f"The WAV's block alignment ({block_align}) does not match {channels} x {bits}-bit samples.")
    if (tag, block_align // channels) not in RAW_FORMATS:
        raise BadWav(f"{bits}-bit samples of WAV encoding 0x{tag:04x} are not supported.")
    return WavFormat(tag, channels, rate, block_align, bits, mask)


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
