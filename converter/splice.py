"""Joining MP3 streams that LAME encoded of neighbouring stretches of one recording.

Layer III frames do not stand alone: a frame's main data may begin up to 511
bytes before its own header (``main_data_begin``, the bit reservoir), inside
the frames before it, and each granule's block type must follow the one before
it (long → start → short → stop → long). So two encodings cannot simply be cut
and concatenated: the first frame taken from the second would read its start
from bytes the first one used for something else, and decoders report no
error, they play noise.

A join is made at a frame J near the boundary where both encodings hold the
same stretch of audio (the earlier one encoded on past the boundary, the later
one began before it): a J whose ``main_data_begin`` fits in the bytes the
earlier encoding left unused at the end of frame J-1, and whose block types may
follow that frame's; the first such J where the later encoding's reservoir is
no smaller than the earlier one's, if there is one (see ``join_frame``), else
the first. Those bytes then receive the reservoir bytes the later
encoding had before J, so frame J decodes as it did there. Frames keep their
lengths and order, so the sample count and the header frame (converter/mp3.py)
come out as for one encoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from converter.errors import Mp3StreamError
from converter.mp3 import FrameHeader, id3v2_size, parse_header, samples_per_frame

# Block types by the one before: normal (0) or stop (3) are followed by normal or
# start (1); start or short (2) by short or stop.
_MAY_FOLLOW = {0: (0, 1), 3: (0, 1), 1: (2, 3), 2: (2, 3)}
# The lowest bit rates (kbit/s): the smallest frames a reservoir may reach back over.
_LOWEST_KBPS = {True: 32, False: 8}


@dataclass
class SideInfo:
    main_data_begin: int
    main_data_bytes: int  # the granules' part2_3 lengths, in whole bytes
    first_block_types: tuple[int, ...]  # of the first granule, per channel
    last_block_types: tuple[int, ...]  # of the last granule, per channel


@dataclass
class Frame:
    """One Layer III frame; its side information is read only when a join needs it."""

    data: bytearray
    header: FrameHeader
    _side: SideInfo | None = field(default=None, repr=False)

    @property
    def payload_offset(self) -> int:
        return 4 + self.header.side_info_bytes

    @property
    def payload_bytes(self) -> int:
        return len(self.data) - self.payload_offset

    @property
    def side(self) -> SideInfo:
        if self._side is None:
            self._side = read_side_info(self.header, bytes(self.data[4 : self.payload_offset]))
        return self._side

    @property
    def unused_tail(self) -> int:
        """Bytes at the end of its payload that its own main data leaves free."""
        return self.payload_bytes + self.side.main_data_begin - self.side.main_data_bytes


def read_side_info(header: FrameHeader, side: bytes) -> SideInfo:
    if not (header.raw >> 16) & 1:
        raise Mp3StreamError("MP3 frames with a CRC are not joined.")
    bits = _Bits(side)
    channels = header.channels
    if header.mpeg1:
        main_data_begin = bits.read(9)
        bits.read(5 if channels == 1 else 3)  # private bits
        bits.read(4 * channels)  # scfsi
        granules = 2
    else:
        main_data_begin = bits.read(8)
        bits.read(1 if channels == 1 else 2)
        granules = 1
    total_bits = 0
    block_types: list[tuple[int, ...]] = []
    for _ in range(granules):
        types = []
        for _ in range(channels):
            total_bits += bits.read(12)  # part2_3_length
            bits.read(9 + 8 + (4 if header.mpeg1 else 9))  # big_values, global_gain, scalefac_compress
            if bits.read(1):  # window switching
                types.append(bits.read(2))
                bits.read(1 + 10 + 9)  # mixed block, 2 table selects, 3 subblock gains
            else:
                types.append(0)
                bits.read(15 + 4 + 3)  # 3 table selects, region0 and region1 counts
            bits.read(3 if header.mpeg1 else 2)  # preflag (MPEG-1), scalefac_scale, count1 table
        block_types.append(tuple(types))
    return SideInfo(main_data_begin, (total_bits + 7) // 8, block_types[0], block_types[-1])


class _Bits:
    def __init__(self, data: bytes) -> None:
        self.value = int.from_bytes(data, "big")
        self.left = len(data) * 8

    def read(self, count: int) -> int:
        self.left -= count
        if self.left < 0:
            raise Mp3StreamError("The MP3 frame's side information is cut short.")
        return (self.value >> self.left) & ((1 << count) - 1)


def pre_roll_frames(sample_rate: int, channels: int) -> int:
    """Frames a later encoding must begin before its boundary: two for LAME's
    analysis to settle, and enough of the smallest frames to hold a whole reservoir."""
    mpeg1 = sample_rate >= 32000
    smallest = samples_per_frame(sample_rate) // 8 * _LOWEST_KBPS[mpeg1] * 1000 // sample_rate
    side_info = (17 if channels == 1 else 32) if mpeg1 else (9 if channels == 1 else 17)
    reservoir = 511 if mpeg1 else 255
    return 2 + math.ceil(reservoir / (smallest - 4 - side_info))


class FrameReader:
    """Cuts a stream of MP3 bytes (an ID3v2 tag first, perhaps) into frames."""

    def __init__(self) -> None:
        self.tag: bytes | None = None  # the ID3v2 tag, once read (b"" when there is none)
        self._pending = bytearray()

    def feed(self, chunk: bytes) -> list[Frame]:
        self._pending += chunk
        if self.tag is None:
            size = id3v2_size(bytes(self._pending[:10]))
            if size is None or len(self._pending) < size:
                return []
            self.tag = bytes(self._pending[:size])
            del self._pending[:size]
        frames = []
        at = 0
        pending = self._pending
        while len(pending) - at >= 4:
            header = parse_header(bytes(pending[at : at + 4]))
            if header is None:
                raise Mp3StreamError("An encoder's output lost MP3 frame sync.")
            if len(pending) - at < header.length:
                break
            frames.append(Frame(pending[at : at + header.length], header))
            at += header.length
        del pending[:at]
        return frames

    def end(self) -> None:
        if self._pending:
            raise Mp3StreamError("An encoder's output ends inside a frame.")


def may_follow(before: Frame, after: Frame) -> bool:
    return all(
        next_type in _MAY_FOLLOW[previous]
        for previous, next_type in zip(before.side.last_block_types, after.side.first_block_types, strict=True)
    )


def join_frame(earlier: list[Frame], later: list[Frame], first: int, last: int) -> tuple[int, int] | None:
    """Where ``later[i:]`` may follow ``earlier[:i]``: an i in [first, last) and the
    bit-rate index frame i-1 must be raised to (0: as it is), or None.

    Both lists hold the same frames of audio (index i is the same stretch in
    each). Two encodings of one passage tend to keep their reservoirs a few bytes
    apart for a while. The first frame that fits as it is and whose reservoir is
    no smaller than the earlier encoding's there is taken: a later encoder that
    began a few frames back may have saved fewer bytes than the earlier one by
    then, and frames after a join there (an attack, say, that needs the bytes)
    get fewer bits than one encoding would give them (a resumed upload joined at
    an attack lost 8 dB in that frame). Failing that, the first that fits as it
    is; failing that, the first that fits once the frame before it is one or more
    bit rates larger (its payload grows at its end, where the reservoir goes). A
    larger frame is legal in any stream, constant bit rate included: each frame's
    header gives its own."""
    fits: int | None = None
    enlarged: tuple[int, int] | None = None
    held = 0  # the later encoding's payload bytes before i, in the list
    for i in range(1, min(last, len(earlier), len(later))):
        held += later[i - 1].payload_bytes
        if i < first:
            continue
        before, after = earlier[i - 1], later[i]
        wanted = after.side.main_data_begin
        if wanted > held or not may_follow(before, after):
            continue
        if wanted <= before.unused_tail:
            if wanted >= earlier[i].side.main_data_begin:
                return i, 0
            fits = i if fits is None else fits
        elif enlarged is None:
            index = _bitrate_index_with_room(before, wanted - before.unused_tail)
            if index is not None:
                enlarged = i, index
    return enlarged if fits is None else (fits, 0)


def _bitrate_index_with_room(frame: Frame, more: int) -> int | None:
    for index in range(frame.header.bitrate_index + 1, 15):
        if frame.header.with_bitrate_index(index).length - len(frame.data) >= more:
            return index
    return None


def _enlarge(frame: Frame, bitrate_index: int) -> None:
    """The frame at a higher bit rate: the same side information and main data, with
    room added at the end of its payload."""
    header = frame.header.with_bitrate_index(bitrate_index)
    frame.data[0:4] = header.raw.to_bytes(4, "big")
    frame.data += bytes(header.length - len(frame.data))
    frame.header = header


def _reservoir_bytes(frames: list[Frame], at: int, count: int) -> bytes:
    """The ``count`` bytes of main data just before frame ``at``'s payload."""
    wanted = bytearray()
    index = at - 1
    while len(wanted) < count:
        frame = frames[index]
        payload = frame.data[frame.payload_offset :]
        take = min(count - len(wanted), len(payload))
        wanted[:0] = payload[len(payload) - take :]
        index -= 1
    return bytes(wanted)


def _place_reservoir(frames: list[Frame], at: int, reservoir: bytes) -> None:
    """Write ``reservoir`` into the payloads just before frame ``at`` (their unused tail)."""
    left = len(reservoir)
    index = at - 1
    while left:
        frame = frames[index]
        take = min(left, frame.payload_bytes)
        frame.data[len(frame.data) - take :] = reservoir[left - take : left]
        left -= take
        index -= 1


def join(earlier: list[Frame], later: list[Frame], first: int, last: int) -> int | None:
    """Join at the index in [first, last) that ``join_frame`` picks: frames ``earlier[:i]``
    are then made ready to be followed by ``later[i:]``; i, or None when none fits."""
    found = join_frame(earlier, later, first, last)
    if found is None:
        return None
    at, bitrate_index = found
    if bitrate_index:
        _enlarge(earlier[at - 1], bitrate_index)
    reservoir = _reservoir_bytes(later, at, later[at].side.main_data_begin)
    _place_reservoir(earlier, at, reservoir)
    return at
