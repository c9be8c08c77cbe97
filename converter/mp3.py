"""Just enough of the MP3 format to describe FFmpeg's output and complete it.

FFmpeg writes its Xing/LAME header frame only when it can seek back in its
output, never into a pipe. Without that frame players guess the duration from
the bit rate (wrong for VBR) and cannot trim the encoder's delay and padding
(wrong by tens of milliseconds for every file). ``Mp3Stream`` follows the
frames as they stream past, reserves room for that frame after the ID3v2 tag,
and builds it once the stream ends; the caller writes it into the reserved
place (the large object is seekable even though FFmpeg's pipe is not).
"""

from __future__ import annotations

import functools
import struct
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING

from converter.errors import Mp3StreamError

if TYPE_CHECKING:
    from converter.analysis import ReplayGain

MP3_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
# The constant bit rates LAME encodes at, kbit/s.
LAME_CBR_KBPS = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)

# Bit rates (kbit/s) of MPEG-1 and of MPEG-2/2.5 Layer III, by header index.
_BITRATES = {
    True: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    False: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_SAMPLE_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}

LAME_ENCODER_DELAY = 576  # samples LAME puts before the audio (lame_get_encoder_delay)
XING_FLAGS = 0x0F  # frames, bytes, TOC and quality fields present
TOC_ENTRIES = 100
LAME_TAG_BYTES = 36
ENCODER = b"LAME3.100"  # the encoder that made the frames (libmp3lame), as decoders expect it named


@dataclass(frozen=True)
class FrameHeader:
    raw: int  # the 32 header bits
    mpeg1: bool
    bitrate_index: int
    sample_rate: int
    padding: bool
    mono: bool

    @property
    def bitrate(self) -> int:
        return _BITRATES[self.mpeg1][self.bitrate_index] * 1000

    @property
    def samples_per_frame(self) -> int:
        return samples_per_frame(self.sample_rate)

    @functools.cached_property
    def length(self) -> int:
        return self.samples_per_frame // 8 * self.bitrate // self.sample_rate + self.padding

    @property
    def side_info_bytes(self) -> int:
        return (17 if self.mono else 32) if self.mpeg1 else (9 if self.mono else 17)

    @property
    def channels(self) -> int:
        return 1 if self.mono else 2

    def with_bitrate_index(self, index: int) -> FrameHeader:
        """The same header at another bit rate, without padding or CRC."""
        raw = (self.raw & ~0x0000F201) | (index << 12) | 0x00010000
        found = parse_header(struct.pack(">I", raw))
        assert found is not None
        return found


def samples_per_frame(sample_rate: int) -> int:
    """Samples in a Layer III frame at this rate: MPEG-1 (32 kHz and up), else MPEG-2 and 2.5."""
    return 1152 if sample_rate >= 32000 else 576


def parse_header(four: bytes) -> FrameHeader | None:
    """A Layer III frame header, or None when these bytes are not one."""
    if len(four) < 4:
        return None
    return _header_of(int.from_bytes(four[:4], "big"))


# A stream repeats a handful of headers (CBR: two, padded or not; VBR: a few
# dozen) tens of thousands of times: each is parsed once.
@functools.lru_cache(maxsize=1024)
def _header_of(raw: int) -> FrameHeader | None:
    version, layer = (raw >> 19) & 0b11, (raw >> 17) & 0b11
    bitrate_index, rate_index = (raw >> 12) & 0xF, (raw >> 10) & 0b11
    if raw >> 21 != 0x7FF or version == 1 or layer != 0b01 or bitrate_index in (0, 15) or rate_index == 3:
        return None
    return FrameHeader(
        raw=raw,
        mpeg1=version == 3,
        bitrate_index=bitrate_index,
        sample_rate=_SAMPLE_RATES[version][rate_index],
        padding=bool((raw >> 9) & 1),
        mono=(raw >> 6) & 0b11 == 0b11,
    )


def id3v2_size(head: bytes) -> int | None:
    """Bytes taken by a leading ID3v2 tag (0 when there is none), None when more bytes are needed."""
    if len(head) < 10:
        return None if head == b"ID3"[: len(head)] or head[:3] == b"ID3" else 0
    if head[:3] != b"ID3":
        return 0
    size = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
    footer = 10 if head[5] & 0x10 else 0
    return 10 + size + footer


def mp3_sample_rate_for(rate: int) -> int:
    """The MP3 sample rate to encode a source rate at: itself when MP3 holds it, else the nearest below."""
    fitting = [mp3_rate for mp3_rate in MP3_SAMPLE_RATES if mp3_rate <= rate]
    return fitting[-1] if fitting else MP3_SAMPLE_RATES[0]


class Mp3Stream:
    """Follows FFmpeg's MP3 output; ``feed`` returns the bytes to store, in order.

    Those are FFmpeg's bytes with a blank frame inserted after the ID3v2 tag;
    ``header_frame`` later gives the Xing/LAME frame that replaces the blank.
    """

    def __init__(self) -> None:
        self.first: FrameHeader | None = None
        self.header_offset = 0  # where the header frame goes: right after the ID3v2 tag
        self.frames = 0
        self.audio_bytes = 0
        self._tag_header: FrameHeader | None = None
        self._head = bytearray()  # bytes held until the ID3v2 tag and the first frame are known
        self._window = bytearray()  # bytes not yet walked through, from _window_start
        self._window_start = 0
        self._next_frame = 0  # stream position of the next frame header
        # Every frame's position from the first audio frame, for the seek table; from
        # frame _offsets_from on, for a stream resumed there (the caller has the rest).
        self._offsets = array("Q")
        self._offsets_from = 0

    @property
    def average_bitrate(self) -> int:
        """Bits per second over the audio frames (what a VBR stream is described by)."""
        if self.first is None or self.frames == 0:
            return 0
        seconds = self.frames * self.first.samples_per_frame / self.first.sample_rate
        return round(self.audio_bytes * 8 / seconds)

    @classmethod
    def resumed(cls, first_header: int, header_offset: int, frames: int, file_offset: int) -> Mp3Stream:
        """A stream that goes on at frame ``frames``, which begins at ``file_offset`` of a file
        whose ID3v2 tag ends at ``header_offset`` (converter/resume.py)."""
        stream = cls()
        first = _header_of(first_header)
        if first is None:
            raise Mp3StreamError("A resumed stream's first header is not a frame header.")
        stream.first, stream.header_offset = first, header_offset
        stream._tag_header = _header_frame_header(first)
        position = file_offset - stream._tag_header.length  # FFmpeg's stream has no header frame
        stream._next_frame = stream._window_start = position
        stream.frames = stream._offsets_from = frames
        stream.audio_bytes = position - header_offset
        return stream

    def file_offsets(self, last: int) -> list[int]:
        """Where the last ``last`` frames start in the file (the header frame in place)."""
        assert self._tag_header is not None
        base = self.header_offset + self._tag_header.length
        return [base + offset for offset in self._offsets[-last:]] if last else []

    def feed(self, chunk: bytes) -> bytes:
        if self.first is None:
            self._head += chunk
            return self._start()
        self._walk(chunk)
        return chunk

    def _start(self) -> bytes:
        tag_size = id3v2_size(bytes(self._head[:10]))
        if tag_size is None or len(self._head) < tag_size + 4:
            return b""
        first = parse_header(bytes(self._head[tag_size : tag_size + 4]))
        if first is None:
            raise Mp3StreamError("FFmpeg's output does not start with an MP3 frame.")
        self.first, self.header_offset, self._next_frame = first, tag_size, tag_size
        self._tag_header = _header_frame_header(first)
        held, self._head = bytes(self._head), bytearray()
        self._walk(held)
        return held[:tag_size] + bytes(self._tag_header.length) + held[tag_size:]

    def _walk(self, chunk: bytes) -> None:
        """Step from frame header to frame header, counting frames and noting where each starts."""
        self._window += chunk
        window_end = self._window_start + len(self._window)
        while self._next_frame + 4 <= window_end:
            at = self._next_frame - self._window_start
            header = parse_header(bytes(self._window[at : at + 4]))
            if header is None:
                raise Mp3StreamError(f"FFmpeg's output lost MP3 frame sync at byte {self._next_frame}.")
            self._offsets.append(self._next_frame - self.header_offset)
            self.frames += 1
            self._next_frame += header.length
        drop = min(self._next_frame, window_end) - self._window_start
        del self._window[:drop]
        self._window_start += drop
        self.audio_bytes = window_end - self.header_offset

    def header_frame(
        self,
        samples: int,
        vbr: bool,
        lead_in: int = 0,
        earlier: array[int] | None = None,
        replay_gain: ReplayGain | None = None,
    ) -> bytes:
        """The Xing ("Info" for CBR) frame with LAME's delay and padding, for ``samples`` encoded
        samples after ``lead_in`` samples of silence that are not the recording's (players skip
        them as part of the delay). A resumed stream needs the positions of the frames before
        it resumed (``earlier``, from the first audio frame) for its seek table."""
        if self.first is None or self._tag_header is None:
            raise Mp3StreamError("No MP3 frame was produced.")
        tag = self._tag_header
        total = tag.length + self.audio_bytes  # what decoders compare with the file size
        frame = bytearray(tag.length)
        frame[0:4] = struct.pack(">I", tag.raw)
        at = 4 + tag.side_info_bytes
        frame[at : at + 8] = (b"Xing" if vbr else b"Info") + struct.pack(">I", XING_FLAGS)
        frame[at + 8 : at + 16] = struct.pack(">II", self.frames, total)
        offsets = self._offsets if earlier is None else earlier[: self._offsets_from] + self._offsets
        if len(offsets) != self.frames:
            raise Mp3StreamError(f"The seek table needs {self.frames} frame positions, not {len(offsets)}.")
        frame[at + 16 : at + 116] = self._seek_table(tag.length, total, offsets)
        frame[at + 116 : at + 120] = struct.pack(">I", 100)  # quality indicator
        lame = at + 120
        delay = LAME_ENCODER_DELAY + lead_in
        padding = self.frames * self.first.samples_per_frame - delay - samples
        bitrate_byte = min(255, self.first.bitrate // 1000)
        frame[lame : lame + 9] = ENCODER
        frame[lame + 9] = 0x04 if vbr else 0x01  # tag revision 0; VBR method: mtrh (LAME's -V) or CBR
        if replay_gain is not None:  # players that honour it play at a consistent level
            frame[lame + 11 : lame + 15] = replay_gain.peak_field
            frame[lame + 15 : lame + 17] = replay_gain.track_gain_field
        frame[lame + 20] = bitrate_byte
        delays = (delay << 12) | max(0, min(padding, 4095))
        frame[lame + 21 : lame + 24] = delays.to_bytes(3, "big")
        frame[lame + 28 : lame + 32] = struct.pack(">I", total)  # music length
        frame[lame + 34 : lame + 36] = struct.pack(">H", crc16(bytes(frame[: lame + 34])))
        return bytes(frame)

    def _seek_table(self, tag_length: int, total: int, offsets: array[int]) -> bytes:
        """Entry i: where i % of the playing time starts, as a fraction (/256) of the file."""
        entries = bytearray(TOC_ENTRIES)
        for i in range(TOC_ENTRIES):
            frame_index = min(self.frames - 1, i * self.frames // TOC_ENTRIES)
            position = tag_length + offsets[frame_index]
            entries[i] = min(255, position * 256 // total)
        return bytes(entries)


def header_frame_length(first_header: int) -> int:
    """The length of the header frame of a stream whose first frame has this header."""
    first = _header_of(first_header)
    if first is None:
        raise Mp3StreamError("Not a frame header.")
    return _header_frame_header(first).length


def _header_frame_header(first: FrameHeader) -> FrameHeader:
    """The stream's own header, at the lowest bit rate whose frame holds the Xing and LAME tags."""
    needed = 4 + first.side_info_bytes + 120 + LAME_TAG_BYTES
    for index in range(first.bitrate_index, 15):
        candidate = first.with_bitrate_index(index)
        if candidate.length >= needed:
            return candidate
    return first.with_bitrate_index(14)


def crc16(data: bytes) -> int:
    """CRC-16/ARC (polynomial 0xA001 reflected), which the LAME tag's checksum uses."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc
