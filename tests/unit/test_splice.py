"""converter/splice.py on frames built by hand: the side information it reads, the frame
it joins at, and the bit reservoir it makes whole there (no FFmpeg: these are the rules
the joins of real encodings rest on, tests/converter/test_segments.py)."""

from __future__ import annotations

import pytest

from converter.errors import Mp3StreamError
from converter.mp3 import parse_header
from converter.splice import Frame, FrameReader, join, join_frame, may_follow, pre_roll_frames, read_side_info

LONG, START, SHORT, STOP = 0, 1, 2, 3
SIDE_INFO_BYTES = {True: 32, False: 17}  # MPEG-1 Layer III, stereo or mono


class Bits:
    def __init__(self) -> None:
        self.value = 0
        self.count = 0

    def put(self, width: int, value: int) -> None:
        assert 0 <= value < 1 << width
        self.value = self.value << width | value
        self.count += width

    def bytes(self) -> bytes:
        assert self.count % 8 == 0
        return self.value.to_bytes(self.count // 8, "big")


def side_info(main_data_begin: int, lengths: list[int], block_types: list[int], stereo: bool = True) -> bytes:
    """MPEG-1 side information; ``lengths`` and ``block_types`` per granule and channel, in that order."""
    channels = 2 if stereo else 1
    bits = Bits()
    bits.put(9, main_data_begin)
    bits.put(3 if stereo else 5, 0)  # private bits
    bits.put(4 * channels, 0)  # scfsi
    for length, block_type in zip(lengths, block_types, strict=True):
        bits.put(12, length)  # part2_3_length
        bits.put(9 + 8 + 4, 0)  # big_values, global_gain, scalefac_compress
        if block_type == LONG:
            bits.put(1, 0)
            bits.put(15 + 4 + 3, 0)
        else:
            bits.put(1, 1)  # window switching
            bits.put(2, block_type)
            bits.put(1 + 10 + 9, 0)
        bits.put(3, 0)  # preflag, scalefac_scale, count1table_select
    return bits.bytes()


def frame(
    main_data_begin: int = 0,
    main_data_bytes: int = 100,
    types: tuple[int, int] = (LONG, LONG),
    bitrate_index: int = 9,  # 128 kbit/s: 417 bytes at 44.1 kHz
    fill: int = 0,
    stereo: bool = True,
) -> Frame:
    """A 44.1 kHz MPEG-1 frame whose granules need ``main_data_bytes`` of main data in all,
    its first granule of block type types[0] and its last of types[1]; payload bytes ``fill``."""
    channels = 2 if stereo else 1
    raw = 0xFFFB0000 | bitrate_index << 12 | (0 if stereo else 0b11 << 6)
    header = parse_header(raw.to_bytes(4, "big"))
    assert header is not None
    share = main_data_bytes * 8 // (2 * channels)
    lengths = [share] * (2 * channels)
    lengths[-1] += main_data_bytes * 8 - share * 2 * channels
    block_types = [types[0]] * channels + [types[1]] * channels
    side = side_info(main_data_begin, lengths, block_types, stereo)
    payload = bytes([fill]) * (header.length - 4 - SIDE_INFO_BYTES[stereo])
    return Frame(bytearray(raw.to_bytes(4, "big") + side + payload), header)


def test_side_information_is_read_as_written() -> None:
    built = frame(main_data_begin=300, main_data_bytes=250, types=(START, SHORT))
    side = read_side_info(built.header, bytes(built.data[4:36]))
    assert side.main_data_begin == 300
    assert side.main_data_bytes == 250
    assert side.first_block_types == (START, START)
    assert side.last_block_types == (SHORT, SHORT)
    mono = frame(main_data_begin=7, main_data_bytes=90, stereo=False)
    assert read_side_info(mono.header, bytes(mono.data[4:21])).main_data_bytes == 90


def test_the_unused_tail_is_what_the_frames_own_main_data_leaves() -> None:
    # 417-byte frame: 381 payload bytes; 100 of main data beginning 30 bytes before them.
    assert frame(main_data_begin=30, main_data_bytes=100).unused_tail == 381 - 70


def test_a_frame_with_a_crc_is_not_joined() -> None:
    with_crc = frame()
    with_crc.data[1] &= 0xFE  # protection bit 0: a CRC follows the header
    with_crc.header = parse_header(bytes(with_crc.data[:4]))  # type: ignore[assignment]
    with pytest.raises(Mp3StreamError):
        _ = with_crc.side


@pytest.mark.parametrize(
    ("before", "after", "allowed"),
    [
        (LONG, LONG, True),
        (LONG, START, True),
        (LONG, SHORT, False),
        (START, SHORT, True),
        (START, STOP, True),
        (START, LONG, False),
        (SHORT, SHORT, True),
        (SHORT, LONG, False),
        (STOP, LONG, True),
        (STOP, SHORT, False),
    ],
)
def test_block_types_follow_one_another_as_layer_iii_allows(before: int, after: int, allowed: bool) -> None:
    assert may_follow(frame(types=(LONG, before)), frame(types=(after, LONG))) is allowed


def encodings(earlier_tails: list[int], later_begins: list[int]) -> tuple[list[Frame], list[Frame]]:
    """Two encodings of the same frames: the earlier's frames leave these unused tails, the
    later's frames begin their main data this many bytes back. Payload bytes tell them apart."""
    earlier = [
        frame(main_data_begin=0, main_data_bytes=381 - tail, fill=0xE0 + n) for n, tail in enumerate(earlier_tails)
    ]
    later = [frame(main_data_begin=begin, main_data_bytes=200, fill=0x10 + n) for n, begin in enumerate(later_begins)]
    return earlier, later


def test_the_join_is_the_first_frame_whose_reservoir_fits_where_the_earlier_encoding_left_room() -> None:
    earlier, later = encodings([0, 10, 60, 200, 200], [0, 40, 100, 50, 40])
    # Frame 2 wants 100 bytes, frame 1 left 10; frame 3 wants 50 and frame 2 left 60.
    assert join_frame(earlier, later, 1, 5) == (3, 0)
    assert join_frame(earlier, later, 4, 5) == (4, 0)  # not before the first allowed


def test_a_join_waits_for_the_later_encoding_to_have_saved_the_reservoir_the_earlier_one_has_there() -> None:
    # The earlier encoding's frames begin 150 bytes back and leave 200 unused at their end.
    earlier = [frame(main_data_begin=150, main_data_bytes=381 - 200 + 150, fill=0xE0 + n) for n in range(5)]
    later = [
        frame(main_data_begin=begin, main_data_bytes=200, fill=0x10 + n) for n, begin in enumerate([0, 20, 60, 150])
    ]
    # 20 and 60 bytes fit, but the frames after them would have less to spend than one encoding gives them.
    assert join_frame(earlier, later, 1, 4) == (3, 0)
    assert join_frame(earlier, later, 1, 3) == (1, 0)  # none within reach has caught up: the first that fits
    # A frame that fits as it is, though short of the reservoir, still beats an enlarged one before it.
    later[1] = frame(main_data_begin=250, main_data_bytes=200, fill=0x11)  # 250 > 200 unused: fits only enlarged
    assert join_frame(earlier, later, 1, 3) == (2, 0)


def test_a_join_waits_for_block_types_that_may_follow() -> None:
    earlier, later = encodings([0, 60, 60, 60], [0, 50, 50, 50])
    earlier[1] = frame(main_data_bytes=381 - 60, types=(LONG, START))  # a short block must follow
    assert join_frame(earlier, later, 1, 4) == (3, 0)


def test_when_no_frame_fits_the_one_before_the_join_is_made_larger() -> None:
    earlier, later = encodings([0, 0, 0, 0], [0, 300, 300, 300])
    at, bitrate_index = join_frame(earlier, later, 1, 4) or (0, 0)
    assert at == 1
    # 128 kbit/s left no room; 160 kbit/s (index 10) adds 104 bytes, 192 (11) 209, 224 (12) 313.
    assert bitrate_index == 12


def test_joining_gives_the_later_frame_the_reservoir_it_was_encoded_with() -> None:
    earlier, later = encodings([0, 90, 20, 200], [0, 50, 80, 100])
    lengths = [len(f.data) for f in earlier]
    at = join(earlier, later, 1, 4)
    assert at == 2
    wanted = later[at].side.main_data_begin
    joined = b"".join(bytes(f.data[f.payload_offset :]) for f in earlier[:at])
    encoded_with = b"".join(bytes(f.data[f.payload_offset :]) for f in later[:at])
    assert joined[-wanted:] == encoded_with[-wanted:]
    assert [len(f.data) for f in earlier] == lengths  # frames keep their lengths: the sample count holds
    # The earlier frame's own main data is untouched: only its unused tail was written.
    own = len(earlier[at - 1].data) - earlier[at - 1].unused_tail
    assert set(earlier[at - 1].data[earlier[at - 1].payload_offset : own]) == {0xE0 + at - 1}


def test_an_enlarged_frame_keeps_its_data_and_says_its_new_bit_rate() -> None:
    earlier, later = encodings([0, 0, 0], [0, 300, 300])
    before = bytes(earlier[0].data)
    assert join(earlier, later, 1, 3) == 1
    assert earlier[0].header.bitrate_index == 12
    assert parse_header(bytes(earlier[0].data[:4])) == earlier[0].header
    assert len(earlier[0].data) == earlier[0].header.length
    assert bytes(earlier[0].data[4 : len(before)]) == before[4:]  # side info and main data as they were


def test_no_join_within_the_window_says_so() -> None:
    earlier, later = encodings([100, 100, 100], [0, 0, 0])
    later[1:] = [frame(types=(SHORT, SHORT)), frame(types=(SHORT, SHORT))]  # none may follow a long block
    assert join_frame(earlier, later, 1, 3) is None
    assert join(earlier, later, 1, 3) is None


# Two frames, and the smallest frames' payloads (the lowest bit rate: 32 kbit/s MPEG-1, 8 MPEG-2)
# enough to hold a whole reservoir (511 bytes, MPEG-2: 255): 44.1 kHz stereo frames of 104
# bytes hold 68 (4 header, 32 side information): 8 of them.
@pytest.mark.parametrize(
    ("rate", "channels", "frames"),
    [(44100, 2, 2 + 8), (48000, 2, 2 + 9), (32000, 1, 2 + 5), (22050, 2, 2 + 51), (8000, 1, 2 + 5)],
)
def test_a_pre_roll_holds_a_whole_reservoir_of_the_smallest_frames(rate: int, channels: int, frames: int) -> None:
    assert pre_roll_frames(rate, channels) == frames


def test_frames_are_cut_from_a_stream_that_arrives_in_pieces() -> None:
    stream = b"ID3\x03\x00\x00\x00\x00\x00\x02ab" + b"".join(bytes(frame(fill=n).data) for n in range(3))
    reader = FrameReader()
    cut = [found for at in range(0, len(stream), 100) for found in reader.feed(stream[at : at + 100])]
    reader.end()
    assert reader.tag == stream[:12]
    assert [f.data[-1] for f in cut] == [0, 1, 2]
