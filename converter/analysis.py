"""Waveform peaks and loudness, measured from the samples on their way to the encoder.

An ``Analyser`` takes the raw samples of the WAV's `data` chunk in order, in
pieces of any size (a piece may end inside a sample frame), and keeps only a
bounded summary: nothing of the audio itself. At the end, ``result()`` gives

- the waveform peaks, in the shape of BBC audiowaveform's data (one channel:
  per pixel the lowest and the highest sample of any channel, 8 bits), as its
  binary ``.dat`` version 2 (``Peaks.dat()``) or its JSON (``Peaks.json()``);
- the loudness per ITU-R BS.1770-4 / EBU R128: integrated loudness (gated),
  loudness range (EBU Tech 3342) and true peak (oversampled, BS.1770-4 Annex 2).

``state()`` saves all of it as bytes and ``Analyser.restore(format, state)``
goes on from there: feeding A, saving, restoring and feeding B gives exactly the
result of feeding A then B, wherever A ends (a resumed upload on another
process). The per-sample work and the gating blocks' mean squares are converter/_measure.c
(built by converter/build_measure.py); the gating, the results and their formats are here.
"""

from __future__ import annotations

import functools
import itertools
import math
import struct
import zlib
from array import array
from dataclasses import dataclass
from typing import Any

from converter import _measure
from converter.wav import FORMAT_ALAW, FORMAT_FLOAT, FORMAT_MULAW, FORMAT_PCM, WavFormat

# _measure's sample encodings, by WAV format tag and bytes per sample.
ENCODINGS = {
    (FORMAT_PCM, 1): 0,
    (FORMAT_PCM, 2): 1,
    (FORMAT_PCM, 3): 2,
    (FORMAT_PCM, 4): 3,
    (FORMAT_FLOAT, 4): 4,
    (FORMAT_FLOAT, 8): 5,
    (FORMAT_ALAW, 1): 6,
    (FORMAT_MULAW, 1): 7,
}

# --- waveform peaks -----------------------------------------------------------------------
# A pixel starts as 1/100 s of audio and widens (twice the samples, pairs of pixels merged,
# which is exact for minima and maxima) whenever the recording has more than MAX_PIXELS:
# a 3-minute song keeps 18,000 pixels, 6 hours at 44.1 kHz 67,500 (135 KB as .dat). The last
# pixel holds the frames left over, however few, as audiowaveform's does.
PIXELS_PER_SECOND = 100
MAX_PIXELS = 1 << 17  # 256 KiB of .dat at most
DAT_VERSION = 2
DAT_FLAG_8_BIT = 1

# --- loudness (ITU-R BS.1770-4, EBU R128 and Tech 3342) -----------------------------------
# The gating blocks' mean squares come from converter/_measure.c, which sums the sub-blocks'
# energies as math.fsum does (correctly rounded) and holds the last 30 in its core.
MOMENTARY_SUBBLOCKS = 4  # 400 ms gating blocks, one every 100 ms (integrated loudness): _measure's MOMENTARY
SHORT_TERM_SUBBLOCKS = 30  # 3 s blocks (loudness range): _measure's SHORT_TERM
ABSOLUTE_GATE = -70.0  # LUFS
RELATIVE_GATE = -10.0  # LU below the absolute-gated mean (integrated)
RANGE_GATE = -20.0  # LU below the absolute-gated mean (loudness range)
RANGE_PERCENTILES = (10, 95)
# Block loudnesses are kept as counts (and power sums) per 0.01 LU from -70 LUFS: bounded
# whatever the length; the integrated loudness is exact but for blocks within 0.01 LU of the
# relative gate, the range's percentiles are bin middles (within 0.005 LU).
BINS_PER_LU = 100
BINS = 100 * BINS_PER_LU  # to +30 LUFS; anything louder shares the last bin

# Channel weights: BS.1770-4's 1.41 (+1.5 dB) for the surround speakers, none for LFE.
# Positions as WAVE_FORMAT_EXTENSIBLE's mask names them, bit by bit; without a mask, the
# layout FFmpeg assumes for the count (its ebur128 filter weighs channels the same way).
SPEAKER_BITS = ("FL", "FR", "FC", "LFE", "BL", "BR", "FLC", "FRC", "BC", "SL", "SR",
                "TC", "TFL", "TFC", "TFR", "TBL", "TBC", "TBR")  # fmt: skip
DEFAULT_LAYOUTS = {
    1: ("FC",),
    2: ("FL", "FR"),
    3: ("FL", "FR", "LFE"),
    4: ("FL", "FR", "FC", "BC"),
    5: ("FL", "FR", "FC", "BL", "BR"),
    6: ("FL", "FR", "FC", "LFE", "BL", "BR"),
    7: ("FL", "FR", "FC", "LFE", "BC", "SL", "SR"),
    8: ("FL", "FR", "FC", "LFE", "BL", "BR", "SL", "SR"),
    16: ("FL", "FR", "FC", "BL", "BR", "BC", "SL", "SR", "TFL", "TFC", "TFR", "TBL", "TBC", "TBR", "WL", "WR"),
    24: ("FL", "FR", "FC", "LFE", "BL", "BR", "FLC", "FRC", "BC", "SL", "SR", "TC",
         "TFL", "TFC", "TFR", "TBL", "TBC", "TBR", "LFE2", "TSL", "TSR", "BFC", "BFL", "BFR"),
}  # fmt: skip
SURROUND = {"BL", "BR", "BC", "SL", "SR"}
LOW_FREQUENCY = {"LFE", "LFE2"}

# True peak: the points between the samples of a band-limited interpolation, at least 4x
# (BS.1770-4 Annex 2 oversamples 48 kHz to 192 kHz) and to at least 176.4 kHz, so that a
# lower rate's points stay as close together: stages that each put a point midway between
# every two, Kaiser-windowed sincs. The first, 24 taps, sets the accuracy (within 0.01 dB of
# an ideal interpolator up to 0.4 of the sample rate); the later ones work on an already
# oversampled signal and need 8. No point exceeds the largest sample it is made of by more
# than the summed magnitudes of its taps (the stages taken as one filter: stage_reaches), nor
# by more than stage_bends times its samples' largest second difference where they change
# smoothly, so blocks whose samples stay that far below the peak so far are not interpolated
# (converter/_measure.c), which changes nothing in the result. At the ends, as FFmpeg's ebur128
# does: the samples before the first mirror those after it, and no point is made past the last,
# so a recording cut off loud is not measured as a step from or to silence.
OVERSAMPLED_RATE = 176_400
FIRST_TAPS_EACH_SIDE = 12  # as converter/_measure.c's FIRST_HALF
LATER_TAPS_EACH_SIDE = 4  # and LATER_HALF
KAISER_BETA = 6.0

STATE_MAGIC = b"WAVA"
STATE_VERSION = 2  # 2: _measure's core holds 128-frame true-peak blocks and the last sub-blocks (magic too)


@dataclass(frozen=True)
class Loudness:
    """None where there is nothing to measure: silence, or too short for a gating block."""

    integrated: float | None  # LUFS; None: no 400 ms block above the gates
    range: float | None  # LU; None: no 3 s block above the gates
    true_peak: float | None  # dBTP; None: digital silence
    sample_peak: float | None  # dBFS; None: digital silence


@dataclass(frozen=True)
class Peaks:
    """One waveform channel: per pixel the lowest and highest sample of any channel, as signed
    bytes (full scale is -128..127; each bound rounded outwards, so no sample lies outside)."""

    sample_rate: int
    samples_per_pixel: int
    data: bytes  # min, max, min, max...

    @property
    def length(self) -> int:
        return len(self.data) // 2

    def dat(self) -> bytes:
        """audiowaveform's binary format, version 2 (doc/DataFormat.md): a 24-byte header, then the pairs."""
        header = struct.pack(
            "<iIiiIi", DAT_VERSION, DAT_FLAG_8_BIT, self.sample_rate, self.samples_per_pixel, self.length, 1
        )
        return header + self.data

    def json(self) -> dict[str, Any]:
        """audiowaveform's JSON format, the same data."""
        return {
            "version": DAT_VERSION,
            "channels": 1,
            "sample_rate": self.sample_rate,
            "samples_per_pixel": self.samples_per_pixel,
            "bits": 8,
            "length": self.length,
            "data": list(array("b", self.data)),
        }


@dataclass(frozen=True)
class Analysis:
    """What ``Analyser.result()`` gives: the loudness, the peaks and how many sample frames it took."""

    loudness: Loudness
    peaks: Peaks
    sample_frames: int


@dataclass(frozen=True)
class ReplayGain:
    """The LAME tag's ReplayGain fields (LAME's VbrTag.c, PutLameVBR), from the loudness.

    ``gain_db`` brings the recording to ReplayGain 2.0's reference of -18 LUFS;
    ``peak`` is the true peak, 1.0 being full scale."""

    gain_db: float
    peak: float

    @property
    def peak_field(self) -> bytes:
        """4 bytes at the LAME tag's offset 11: the peak as LAME writes it (an unsigned big-endian
        integer, 1.0 = 2**23), which is how decoders and taggers read it (mutagen divides by 2**23),
        though the tag's own description calls it a float."""
        return struct.pack(">I", min(0xFFFFFFFF, int(self.peak * 2**23 + 0.5)))

    @property
    def track_gain_field(self) -> bytes:
        """2 bytes at offset 15 ("radio" = track gain): name code 1, originator 3 (determined
        automatically), sign bit, then the gain in 0.1 dB (9 bits, at most 51.0 dB)."""
        tenths = max(-0x1FE, min(0x1FE, math.floor(self.gain_db * 10 + 0.5)))
        field = 0x2000 | 0xC00 | (0x200 if tenths < 0 else 0) | abs(tenths)
        return struct.pack(">H", field)


REPLAYGAIN_REFERENCE = -18.0  # LUFS: ReplayGain 2.0 (what current taggers write)


def replay_gain(loudness: Loudness) -> ReplayGain | None:
    """None for a recording with no integrated loudness (silence): leave the fields zero."""
    if loudness.integrated is None:
        return None
    peak = 10 ** (loudness.true_peak / 20) if loudness.true_peak is not None else 0.0
    return ReplayGain(gain_db=REPLAYGAIN_REFERENCE - loudness.integrated, peak=peak)


class Analyser:
    """Feed it the samples in order with ``take``; ``result()`` at the end (it may be called at any time)."""

    def __init__(self, format: WavFormat) -> None:
        self.format = format
        self._encoding = ENCODINGS[format.format_tag, format.block_align // format.channels]
        self._partial = b""  # the start of a sample frame that the last piece cut
        self._core = bytearray(_measure.core_size(format.channels))
        _measure.init(
            self._core,
            self._encoding,
            format.channels,
            format.sample_rate,
            max(1, format.sample_rate // PIXELS_PER_SECOND),
            oversampling_stages(format.sample_rate),
            array("d", k_weighting(format.sample_rate)).tobytes(),
            array("d", channel_weights(format)).tobytes(),
            array("f", midpoint_taps(FIRST_TAPS_EACH_SIDE)).tobytes(),
            array("f", midpoint_taps(LATER_TAPS_EACH_SIDE)).tobytes(),
            array("d", stage_reaches(oversampling_stages(format.sample_rate))).tobytes(),
        )
        self._bends = array("d", stage_bends(oversampling_stages(format.sample_rate))).tobytes()
        self._pixels = bytearray()
        self._momentary = _Gate(powers=True)
        self._short_term = _Gate(powers=False)

    def take(self, samples: bytes | bytearray | memoryview) -> None:
        """The next raw samples of the `data` chunk, as the encoder gets them (any length)."""
        frame = self.format.block_align
        view = memoryview(samples)
        if self._partial:
            needed = frame - len(self._partial)
            if len(view) < needed:
                self._partial += bytes(view)
                return
            self._feed(self._partial + bytes(view[:needed]))
            view = view[needed:]
        whole = len(view) - len(view) % frame
        self._partial = bytes(view[whole:])
        if whole:
            self._feed(view[:whole])

    @property
    def bytes_taken(self) -> int:
        """The sample bytes taken so far, a cut sample frame included."""
        frames, _ = _measure.counters(self._core)
        return int(frames) * self.format.block_align + len(self._partial)

    def result(self) -> Analysis:
        frames, samples_per_pixel = _measure.counters(self._core)
        true_peak, sample_peak = _measure.finish(bytearray(self._core), self._bends)  # a copy: the analysis may go on
        loudness = Loudness(
            integrated=self._momentary.integrated(RELATIVE_GATE),
            range=self._short_term.range(),
            true_peak=_decibels(true_peak),
            sample_peak=_decibels(sample_peak),
        )
        # The last pixel may hold fewer samples than the others, as audiowaveform's last does.
        pixels = bytes(self._pixels) + _measure.pixel_being_built(self._core)
        if len(pixels) > 2 * MAX_PIXELS:  # that part of a pixel was one too many: widen once more
            merged, last = _pairs_merged(pixels)
            pixels, samples_per_pixel = merged + last, 2 * samples_per_pixel
        peaks = Peaks(self.format.sample_rate, samples_per_pixel, pixels)
        return Analysis(loudness, peaks, frames)

    def state(self) -> bytes:
        """Everything needed to go on: a few hundred KB at most (mostly the peaks), compressed."""
        body = b"".join(
            (
                _format_key(self.format),
                _sized(self._partial),
                _sized(bytes(self._core)),
                self._momentary.state(),
                self._short_term.state(),
                _sized(bytes(self._pixels)),
            )
        )
        return STATE_MAGIC + struct.pack("<H", STATE_VERSION) + zlib.compress(body, 1)

    @classmethod
    def restore(cls, format: WavFormat, state: bytes) -> Analyser:
        """The analyser that ``state()`` saved, for the same format (ValueError otherwise)."""
        if state[:4] != STATE_MAGIC or state[4:6] != struct.pack("<H", STATE_VERSION):
            raise ValueError("not an analyser state of this version")
        try:
            reader = _Reader(zlib.decompress(state[6:]))
            if reader.take(len(_format_key(format))) != _format_key(format):
                raise ValueError("the state is of another sample format")
            analyser = cls(format)
            analyser._partial = reader.sized()
            analyser._core = bytearray(reader.sized())
            analyser._momentary = _Gate.restore(reader, powers=True)
            analyser._short_term = _Gate.restore(reader, powers=False)
            analyser._pixels = bytearray(reader.sized())
            reader.end()
            _measure.counters(analyser._core)  # checks the core
        except (zlib.error, struct.error) as error:
            raise ValueError("the analyser state is damaged") from error
        if len(analyser._partial) >= format.block_align:
            raise ValueError("the analyser state is damaged")
        return analyser

    def _feed(self, frames: bytes | memoryview) -> None:
        """The frames through _measure, which gives the mean square of each gating block that ends in
        them (400 ms and 3 s, a new one every 100 ms sub-block) and the pixels finished."""
        momentary, short_term, pixels = _measure.feed(self._core, frames, self._bends)
        if momentary:
            self._momentary.add(array("d", momentary))
        if short_term:
            self._short_term.add(array("d", short_term))
        if pixels:
            self._pixels += pixels
            while len(self._pixels) > 2 * MAX_PIXELS:
                self._widen_pixels()

    def _widen_pixels(self) -> None:
        """Twice the samples per pixel: pairs merged, an odd last one carried into the pixel being built."""
        merged, last = _pairs_merged(bytes(self._pixels))
        low, high = array("b", last) if last else (0, 0)
        _measure.widen_pixels(self._core, low, high, bool(last))
        self._pixels = bytearray(merged)


def _pairs_merged(pixels: bytes) -> tuple[bytes, bytes]:
    """Pixels (min, max byte pairs) merged two by two, and an odd last one left as it is."""
    values = array("b", pixels)
    whole = len(values) - len(values) % 4  # the pixels that pair up
    merged = array("b", bytes(whole // 2))
    merged[0::2] = array("b", map(min, values[0:whole:4], values[2:whole:4]))
    merged[1::2] = array("b", map(max, values[1:whole:4], values[3:whole:4]))
    return merged.tobytes(), values[whole:].tobytes()


class _Gate:
    """The loudnesses of the gating blocks above the absolute gate: how many fell in each 0.01 LU
    bin and, for the integrated loudness, their summed power (fixed arrays: 40 and 80 KB)."""

    def __init__(self, powers: bool) -> None:
        self.count = 0
        self.power = 0.0  # of every block above the absolute gate (for the relative gate)
        self.blocks = array("I", bytes(4 * BINS))
        self.powers = array("d", bytes(8 * BINS)) if powers else None

    def add(self, powers: array[float]) -> None:
        """Gating blocks' mean squares, in order."""
        blocks, sums, floor = self.blocks, self.powers, math.floor
        count, total = self.count, self.power
        for power in powers:
            loudness = _lufs(power)
            if loudness is None or loudness <= ABSOLUTE_GATE:
                continue
            count += 1
            total += power
            index = min(BINS - 1, floor((loudness - ABSOLUTE_GATE) * BINS_PER_LU))
            blocks[index] += 1
            if sums is not None:
                sums[index] += power
        self.count, self.power = count, total

    def _kept(self, gate: float) -> list[int]:
        """The bins above the relative gate, in order (a bin counts whole: by where its middle lies).
        Those are the bins from the first whose middle lies above it (_bin_loudness only grows),
        found near where it is estimated, then the ones that hold any block: not all 10,000 in turn."""
        mean = _lufs(self.power / self.count)
        assert mean is not None  # every block counted is above the absolute gate
        threshold = mean + gate
        first = min(BINS, max(0, math.floor((threshold - ABSOLUTE_GATE) * BINS_PER_LU)))
        while first > 0 and _bin_loudness(first - 1) > threshold:
            first -= 1
        while first < BINS and not _bin_loudness(first) > threshold:
            first += 1
        return list(itertools.compress(range(first, BINS), memoryview(self.blocks)[first:]))

    def integrated(self, gate: float) -> float | None:
        if not self.count or self.powers is None:
            return None
        kept = self._kept(gate)
        blocks = sum(self.blocks[i] for i in kept)
        return _lufs(math.fsum(self.powers[i] for i in kept) / blocks) if blocks else None

    def range(self) -> float | None:
        """EBU Tech 3342: the 95th minus the 10th percentile of the gated short-term loudnesses."""
        if not self.count:
            return None
        kept = self._kept(RANGE_GATE)
        total = sum(self.blocks[i] for i in kept)
        if not total:
            return None
        low, high = (self._percentile(kept, total, p) for p in RANGE_PERCENTILES)
        return (high - low) / BINS_PER_LU

    def _percentile(self, kept: list[int], total: int, percent: int) -> int:
        """The bin of that percentile: the nearest rank, round(percent x n / 100), as FFmpeg's ebur128
        filter takes it (libebur128 rounds (n - 1) x percent / 100: one rank lower at most)."""
        rank = max(0, round(percent * total * 0.01) - 1)
        seen = 0
        for index in kept:
            seen += self.blocks[index]
            if seen > rank:
                return index
        return kept[-1]

    def state(self) -> bytes:
        """The counters, then the bins that hold any block: index, blocks (and power)."""
        used = list(itertools.compress(range(BINS), self.blocks))
        layout = "<HId" if self.powers is not None else "<HI"
        entries = [
            struct.pack(layout, i, self.blocks[i], *([self.powers[i]] if self.powers is not None else [])) for i in used
        ]
        return b"".join([struct.pack("<QdI", self.count, self.power, len(used)), *entries])

    @classmethod
    def restore(cls, reader: _Reader, powers: bool) -> _Gate:
        gate = cls(powers)
        gate.count, gate.power, used = reader.unpack("<QdI")
        for _ in range(used):
            if gate.powers is not None:
                index, blocks, power = reader.unpack("<HId")
                gate.powers[index] = power
            else:
                index, blocks = reader.unpack("<HI")
            if index >= BINS:
                raise ValueError("the analyser state is damaged")
            gate.blocks[index] = blocks
        return gate


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def take(self, size: int) -> bytes:
        if self._at + size > len(self._data):
            raise ValueError("the analyser state is truncated")
        chunk = self._data[self._at : self._at + size]
        self._at += size
        return chunk

    def unpack(self, layout: str) -> tuple[Any, ...]:
        return struct.unpack(layout, self.take(struct.calcsize(layout)))

    def sized(self) -> bytes:
        (size,) = self.unpack("<I")
        return self.take(size)

    def end(self) -> None:
        if self._at != len(self._data):
            raise ValueError("the analyser state has trailing bytes")


def _sized(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


def _format_key(format: WavFormat) -> bytes:
    return struct.pack(
        "<HHIHHI", format.format_tag, format.channels, format.sample_rate, format.block_align,
        format.bits_per_sample, format.channel_mask or 0,
    )  # fmt: skip


def _lufs(power: float) -> float | None:
    return -0.691 + 10 * math.log10(power) if power > 0 else None


def _bin_loudness(index: int) -> float:
    return ABSOLUTE_GATE + (index + 0.5) / BINS_PER_LU


def _decibels(amplitude: float) -> float | None:
    return 20 * math.log10(amplitude) if amplitude > 0 else None


def oversampling_stages(rate: int) -> int:
    """How many times the true peak doubles the points per sample (0: the samples are dense enough)."""
    stages = 0
    while rate << stages < OVERSAMPLED_RATE:
        stages += 1
    return stages


def midpoint_taps(each_side: int) -> list[float]:
    """One side of the symmetric filter that puts a point midway between two samples: the tap of
    the sample ``each_side - 1 - k`` before the left one and of the one as far after the right one
    (farthest first), summing to 1 over both sides."""
    distances = [each_side - 0.5 - k for k in range(each_side)]
    taps = [_kaiser(d / each_side) * math.sin(math.pi * d) / (math.pi * d) for d in distances]
    total = 2 * math.fsum(taps)
    return [tap / total for tap in taps]


@functools.cache
def stage_reaches(stages: int) -> tuple[float, ...]:
    """For each stage, the most the points of it and the stages after it can exceed the largest
    value it is fed: the largest sum of tap magnitudes among the cascade's points, the cascade taken
    as one filter from that stage's input (tighter than the stages' own sums multiplied). With a
    margin for the single precision the stages compute in."""
    taps = [midpoint_taps(FIRST_TAPS_EACH_SIDE)] + [midpoint_taps(LATER_TAPS_EACH_SIDE)] * (stages - 1)
    reaches = []
    for start in range(stages):
        response = [1.0]  # to one sample fed to stage `start`, on the finest grid so far
        for stage_taps in taps[start:]:
            response = _doubled(response, stage_taps)
        points = 1 << (stages - start)
        sums = (math.fsum(abs(v) for v in response[phase::points]) for phase in range(points))
        reaches.append(max(sums) * (1 + 1e-5))
    return tuple(reaches)


@functools.cache
def stage_bends(stages: int) -> tuple[float, ...]:
    """For each stage, a tighter bound than its reach where the values it is fed change smoothly: each
    point of it and the stages after it is the linear interpolation between its two nearest values
    plus a weighted sum of the values' second differences (x[j-1] - 2 x[j] + x[j+1]), the cascade
    reproducing straight lines; this is the most those weights' magnitudes sum to, so that no point
    exceeds the largest value plus it times the largest second difference (converter/_measure.c's
    could_pass, which allows for the single precision)."""
    taps = [midpoint_taps(FIRST_TAPS_EACH_SIDE)] + [midpoint_taps(LATER_TAPS_EACH_SIDE)] * (stages - 1)
    bends = []
    for start in range(stages):
        response = [1.0]
        for stage_taps in taps[start:]:
            response = _doubled(response, stage_taps)
        points = 1 << (stages - start)
        bends.append(max(_bend_weight(response[phase::points]) for phase in range(points)))
    return tuple(bends)


def _bend_weight(weights: list[float]) -> float:
    """The summed magnitudes of e in weights = linear interpolation + the second difference of e: e is
    what is left taken twice cumulatively (it ends at zero as the weights sum to 1 and keep a line's
    slope; its last two values are left out so that its rounding leaves no tail)."""
    total = math.fsum(weights)
    at = math.fsum(j * w for j, w in enumerate(weights)) / total  # where the point lies, in samples
    left = math.floor(at)
    residue = list(weights)
    residue[left] -= 1 - (at - left)
    if at > left:
        residue[left + 1] -= at - left
    once = list(itertools.accumulate(residue))
    twice = list(itertools.accumulate(once))
    return math.fsum(abs(v) for v in twice[:-2])


def _doubled(response: list[float], taps: list[float]) -> list[float]:
    """A response on twice the grid after a midpoint stage: the samples kept, each midpoint the taps'
    weighted sum of the samples on both sides (a convolution with the stage's kernel)."""
    side = len(taps)
    kernel = {0: 1.0}
    for k, tap in enumerate(taps):
        offset = 2 * (side - 1 - k) + 1  # the tap's sample, in half samples from the midpoint
        kernel[offset] = kernel[-offset] = tap
    reach = 2 * side - 1
    doubled = [0.0] * (2 * len(response) - 1 + 2 * reach)
    for i, value in enumerate(response):
        for offset, weight in kernel.items():
            doubled[2 * i + reach + offset] += value * weight
    return doubled


def _kaiser(x: float) -> float:
    return _bessel_i0(KAISER_BETA * math.sqrt(max(0.0, 1 - x * x))) / _bessel_i0(KAISER_BETA)


def _bessel_i0(x: float) -> float:
    term, total, k = 1.0, 1.0, 1
    while term > 1e-17 * total:
        term *= (x / (2 * k)) ** 2
        total += term
        k += 1
    return total


def k_weighting(rate: int) -> tuple[float, ...]:
    """BS.1770-4's two biquads (shelf, then high-pass) for this rate, b0 b1 b2 a1 a2 each: the
    48 kHz coefficients' analogue prototypes (as libebur128 and FFmpeg derive them)."""
    f0, gain_db, q = 1681.974450955533, 3.999843853973347, 0.7071752369554196
    k = math.tan(math.pi * f0 / rate)
    vh = 10 ** (gain_db / 20)
    vb = vh**0.4996667741545416
    a0 = 1 + k / q + k * k
    shelf = (
        (vh + vb * k / q + k * k) / a0,
        2 * (k * k - vh) / a0,
        (vh - vb * k / q + k * k) / a0,
        2 * (k * k - 1) / a0,
        (1 - k / q + k * k) / a0,
    )
    f0, q = 38.13547087602444, 0.5003270373238773
    k = math.tan(math.pi * f0 / rate)
    a0 = 1 + k / q + k * k
    high_pass = (1.0, -2.0, 1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0)
    return shelf + high_pass


def channel_weights(format: WavFormat) -> list[float]:
    """Each channel's weight in the loudness, by its speaker (all 1.0 when the speakers are unknown)."""
    speakers = speakers_of(format)
    if speakers is None:
        return [1.0] * format.channels
    return [0.0 if s in LOW_FREQUENCY else 1.41 if s in SURROUND else 1.0 for s in speakers]


def speakers_of(format: WavFormat) -> tuple[str, ...] | None:
    mask = format.channel_mask
    if mask and mask.bit_count() == format.channels:
        return tuple(
            SPEAKER_BITS[bit] if bit < len(SPEAKER_BITS) else f"bit{bit}" for bit in range(32) if mask >> bit & 1
        )
    return DEFAULT_LAYOUTS.get(format.channels)
