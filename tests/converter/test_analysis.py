"""converter.analysis: waveform peaks and loudness from the raw samples, resumable to the bit.

Loudness is checked against FFmpeg's own ebur128 filter reading the same WAV, and against
the EBU's conformance cases; peaks against a reference computed here from the samples as
FFmpeg decodes them; the state by cutting the stream anywhere (hypothesis).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import random
import re
import struct
import subprocess
import zlib
from array import array
from dataclasses import asdict
from io import BytesIO
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutagen.mp3._util import LAMEHeader, XingHeader

from converter import _measure, analysis
from converter.analysis import Analyser, Analysis, Loudness, replay_gain
from converter.build_measure import build
from converter.wav import FORMAT_ALAW, FORMAT_FLOAT, FORMAT_MULAW, FORMAT_PCM, WavFormat, WavHeader
from tests.support import FFMPEG, reference_peaks

# FFmpeg's PCM codec for each of the encodings converter/wav.py accepts.
CODECS = {
    "pcm_u8": (FORMAT_PCM, 1),
    "pcm_s16le": (FORMAT_PCM, 2),
    "pcm_s24le": (FORMAT_PCM, 3),
    "pcm_s32le": (FORMAT_PCM, 4),
    "pcm_f32le": (FORMAT_FLOAT, 4),
    "pcm_f64le": (FORMAT_FLOAT, 8),
    "pcm_alaw": (FORMAT_ALAW, 1),
    "pcm_mulaw": (FORMAT_MULAW, 1),
}

# Test signals, as FFmpeg lavfi sources with a rate placeholder.
TONE = "sine=f=997:r={rate},volume=2"
INTER_SAMPLE = "aevalsrc='0.7*sin(2*PI*{quarter}*t+PI/4)':s={rate}"  # a quarter of the rate: peaks between samples
MUSIC = (
    "anoisesrc=c=pink:a=0.25:seed=7:r={rate},"
    "volume='if(lt(mod(t,8),4),1,0.3)':eval=frame,"  # verse and chorus: some loudness range
    "aformat=channel_layouts=stereo"
)
SPEECH_SYNTHESIS = (  # FFmpeg's flite: a voice reading, at 8 kHz
    "flite=voice=slt:text='"
    + " ".join(["Loudness is measured in the same pass as the waveform, while the upload streams in."] * 6)
    + "',aresample={rate}"
)
SPEECH = (
    "aevalsrc='0.6*sin(2*PI*(140+30*sin(2*PI*3*t))*t)*sin(2*PI*1100*t)"
    "*gt(sin(2*PI*3.1*t),0.1)*gt(sin(2*PI*0.35*t),-0.5)':s={rate}"  # syllables and pauses
)


def wav(
    source: str, seconds: float, rate: int, channels: int, codec: str = "pcm_s16le", *extra: str, faded: bool = True
) -> bytes:
    """The source faded in and out over 50 ms, as recordings begin and end; or, not ``faded``, cut
    off as it is (a tone cut at full level rings between the samples near the cut, which meters
    interpolate differently)."""
    fades = f",afade=t=in:d=0.05,afade=t=out:st={seconds - 0.05}:d=0.05" if faded else ""
    source = f"{source.format(rate=rate, quarter=rate / 4)}{fades}"
    command = [FFMPEG, "-v", "error", "-f", "lavfi", "-i", source]
    command += ["-t", str(seconds), "-ar", str(rate), "-ac", str(channels), "-c:a", codec, *extra, "-f", "wav", "-"]
    return subprocess.run(command, capture_output=True, check=True).stdout


def analysed(wav_bytes: bytes, piece: int = 65536) -> Analysis:
    header = WavHeader()
    samples = header.feed(wav_bytes)
    assert header.format is not None
    analyser = Analyser(header.format)
    for at in range(0, len(samples), piece):
        analyser.take(samples[at : at + piece])
    return analyser.result()


def ebur128(wav_bytes: bytes) -> tuple[float, float, float]:
    """FFmpeg's integrated loudness and loudness range (to 0.001, from the last frame's metadata)
    and true peak (its summary, to 0.1 dB) for the same WAV."""
    command = [FFMPEG, "-nostats", "-i", "-", "-af", "ebur128=peak=true:metadata=1,ametadata=print:file=-"]
    run = subprocess.run([*command, "-f", "null", "-"], input=wav_bytes, capture_output=True, check=True)
    metadata, summary = run.stdout.decode(), run.stderr.decode()
    integrated = re.findall(r"lavfi\.r128\.I=(\S+)", metadata)[-1]
    loudness_range = re.findall(r"lavfi\.r128\.LRA=(\S+)", metadata)[-1]
    true_peak = re.search(r"True peak:\s+Peak:\s+(\S+) dBFS", summary)
    assert true_peak, summary
    return float(integrated), float(loudness_range), float(true_peak.group(1))


# --- loudness against FFmpeg's ebur128 ------------------------------------------------------

LOUDNESS_CASES = {
    "tone, stereo 48 kHz": (TONE, 10, 48000, 2),
    "tone, mono 44.1 kHz": (TONE, 10, 44100, 1),
    "tone, mono 8 kHz": (TONE, 10, 8000, 1),
    "inter-sample peaks, 48 kHz": (INTER_SAMPLE, 10, 48000, 2),
    "music-like, stereo 44.1 kHz": (MUSIC, 40, 44100, 2),
    "music-like, stereo 96 kHz": (MUSIC, 20, 96000, 2),
    "speech-like, mono 16 kHz": (SPEECH, 40, 16000, 1),
    "speech (flite), mono 16 kHz": (SPEECH_SYNTHESIS, 30, 16000, 1),
    "speech (flite), stereo 44.1 kHz": (SPEECH_SYNTHESIS, 30, 44100, 2),
    "speech-like, mono 22.05 kHz": (SPEECH, 30, 22050, 1),
}


@pytest.mark.parametrize("case", LOUDNESS_CASES)
def test_loudness_agrees_with_ffmpeg_ebur128(case: str) -> None:
    source, seconds, rate, channels = LOUDNESS_CASES[case]
    recording = wav(source, seconds, rate, channels)
    integrated, loudness_range, true_peak = ebur128(recording)
    loudness = analysed(recording).loudness
    assert loudness.integrated is not None
    assert loudness.range is not None
    assert loudness.true_peak is not None
    assert loudness.integrated == pytest.approx(integrated, abs=0.1)
    assert loudness.range == pytest.approx(loudness_range, abs=0.1)
    assert loudness.true_peak == pytest.approx(true_peak, abs=0.1)


CUT_OFF_CASES = {
    "starts on a crest, 100 Hz": ("aevalsrc='0.95*cos(2*PI*100*t)':s={rate}", 6, 48000),
    "ends on a crest, 100 Hz": ("aevalsrc='0.95*sin(2*PI*100*t)':s={rate}", 6.0025, 48000),
    "cut at both ends, 3 kHz": ("aevalsrc='0.8*sin(2*PI*3000*t+1.1)':s={rate}", 3.0123, 44100),
    "cut at both ends, 9 kHz": ("aevalsrc='0.9*sin(2*PI*9000*t+2.2)':s={rate}", 2.5071, 44100),
}


@pytest.mark.parametrize("case", CUT_OFF_CASES)
def test_a_recording_cut_off_loud_has_the_true_peak_ffmpeg_measures(case: str) -> None:
    """What lies before the first sample and after the last is not a step from or to silence: its
    overshoot is in none of the recording's samples, and FFmpeg's ebur128 counts none (the samples
    before the start mirrored, nothing interpolated past the end)."""
    source, seconds, rate = CUT_OFF_CASES[case]
    recording = wav(source, seconds, rate, 1, "pcm_f32le", faded=False)
    _integrated, _range, true_peak = ebur128(recording)
    loudness = analysed(recording, piece=4097).loudness
    assert loudness.true_peak == pytest.approx(true_peak, abs=0.1)


@pytest.mark.parametrize("frames", [1, 13, 32])
def test_a_recording_too_short_to_interpolate_has_the_true_peak_of_its_samples(frames: int) -> None:
    """No more samples than the lead-in the start's mirror takes: no points are made of them at
    all (ebur128's resampler makes none either), so none can be made of samples that are not
    there. A 5 kHz cosine ending on its full-scale crest."""
    crest = [round(32767 * math.cos(2 * math.pi * 5000 / 44100 * (n - frames + 1))) for n in range(frames)]
    analyser = Analyser(WavFormat(FORMAT_PCM, 2, 44100, 4, 16))
    analyser.take(struct.pack(f"<{2 * frames}h", *(value for sample in crest for value in (sample, 0))))
    loudness = analyser.result().loudness
    assert loudness.sample_peak == pytest.approx(20 * math.log10(32767 / 32768))
    assert loudness.true_peak == loudness.sample_peak


def test_surround_channels_weigh_as_bs1770_says() -> None:
    """5.1 from six channels at different levels: the surrounds count 1.41 times, the LFE not at all."""
    levels = "pan=5.1|c0=0.5*c0|c1=0.1*c0|c2=0.2*c0|c3=0.9*c0|c4=0.3*c0|c5=0.05*c0"
    recording = wav(f"anoisesrc=a=0.5:seed=3:r={{rate}},{levels}", 10, 48000, 6)
    integrated, loudness_range, _true_peak = ebur128(recording)
    loudness = analysed(recording).loudness
    assert loudness.integrated == pytest.approx(integrated, abs=0.1)
    assert loudness.range == pytest.approx(loudness_range, abs=0.1)
    louder_lfe = wav(f"anoisesrc=a=0.5:seed=3:r={{rate}},{levels.replace('0.9*c0', '0.99*c0')}", 10, 48000, 6)
    assert analysed(louder_lfe).loudness.integrated == loudness.integrated


@pytest.mark.parametrize("codec", CODECS)
def test_every_sample_encoding_measures_alike(codec: str) -> None:
    recording = wav(MUSIC, 12, 44100, 2, codec)
    integrated, _, true_peak = ebur128(recording)
    loudness = analysed(recording).loudness
    assert loudness.integrated == pytest.approx(integrated, abs=0.1)
    assert loudness.true_peak == pytest.approx(true_peak, abs=0.1)


@pytest.mark.parametrize(("level", "expected"), [(-23.0, -23.0), (-33.0, -33.0)])
def test_ebu_tech_3341_stereo_tones(level: float, expected: float) -> None:
    """EBU Tech 3341 cases 1 and 2: a 1 kHz sine at -23 (-33) dBFS in both channels reads -23 (-33) LUFS."""
    tone = f"{10 ** (level / 20)}*sin(2*PI*1000*t)"
    recording = wav(f"aevalsrc='{tone}|{tone}':s={{rate}}", 20, 48000, 2, "pcm_s24le")
    loudness = analysed(recording).loudness
    assert loudness.integrated == pytest.approx(expected, abs=0.1)
    assert loudness.range == pytest.approx(0.0, abs=0.1)
    assert loudness.true_peak == pytest.approx(level, abs=0.05)


def test_true_peak_sees_between_the_samples() -> None:
    """A sine at a quarter of the rate, sampled 45 degrees off its crests: every sample is 3 dB
    below the true peak, which a sample-peak meter misses."""
    loudness = analysed(wav(INTER_SAMPLE, 2, 48000, 1, "pcm_f32le")).loudness
    assert loudness.sample_peak == pytest.approx(20 * math.log10(0.7 / math.sqrt(2)), abs=0.01)
    assert loudness.true_peak == pytest.approx(20 * math.log10(0.7), abs=0.02)


def reference_true_peak(channels: list[list[float]], rate: int) -> float:
    """The largest magnitude among the samples and every point of the analyser's oversampling
    stages, computed over each whole channel at once (silence around it), in double precision."""
    first = analysis.midpoint_taps(analysis.FIRST_TAPS_EACH_SIDE)
    later = analysis.midpoint_taps(analysis.LATER_TAPS_EACH_SIDE)
    peak = 0.0
    for samples in channels:
        sequence = [0.0] * 64 + samples + [0.0] * 64
        peak = max(peak, *(abs(v) for v in samples))
        for stage in range(analysis.oversampling_stages(rate)):
            taps = first if stage == 0 else later
            side = len(taps)
            count = len(sequence) - 2 * side + 1
            middle = [
                math.fsum(taps[k] * (sequence[i + k] + sequence[i + 2 * side - 1 - k]) for k in range(side))
                for i in range(count)
            ]
            peak = max(peak, *(abs(v) for v in middle))
            sequence = [v for pair in zip(sequence[side - 1 : side - 1 + count], middle, strict=True) for v in pair]
    return peak


@pytest.mark.parametrize("rate", [44100, 8000])
def test_true_peak_skips_only_what_cannot_matter(rate: int) -> None:
    """The blocks the analyser does not interpolate (their samples too far below the peak so far)
    change nothing: the true peak is that of every point, computed here over the whole signal."""
    recording = wav(SPEECH, 0.6, rate, 2)
    header = WavHeader()
    values = array("h", header.feed(recording))
    channels = [[v / 32768 for v in values[c::2]] for c in range(2)]
    expected = 20 * math.log10(reference_true_peak(channels, rate))
    assert analysed(recording, piece=999).loudness.true_peak == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("stages", [1, 2, 3, 5])
def test_no_point_passes_the_largest_value_plus_its_bend(stages: int) -> None:
    """stage_bends: every point of the cascade is within the largest sample it is made of plus the
    bend times the largest second difference among those samples (smooth, rough and worst cases)."""
    taps = [analysis.midpoint_taps(analysis.FIRST_TAPS_EACH_SIDE)]
    taps += [analysis.midpoint_taps(analysis.LATER_TAPS_EACH_SIDE)] * (stages - 1)
    response = [1.0]
    for stage_taps in taps:
        response = analysis._doubled(response, stage_taps)
    bend = analysis.stage_bends(stages)[0]
    points = 1 << stages
    generator = random.Random(stages)  # noqa: S311 (test signals, not secrets)
    for phase in range(points):
        weights = response[phase::points]
        signals = [[math.sin(0.05 * j * k + k) for j in range(len(weights))] for k in range(1, 40)]
        signals += [[generator.uniform(-1, 1) for _ in weights] for _ in range(40)]
        signals.append([math.copysign(1.0, w) for w in weights])  # the reach's worst case
        for x in signals:
            point = abs(math.fsum(w * v for w, v in zip(weights, x, strict=True)))
            largest = max(abs(v) for v in x)
            second = max(abs(x[j - 1] - 2 * x[j] + x[j + 1]) for j in range(1, len(x) - 1))
            assert point <= (largest + bend * second) * (1 + 1e-12)


def true_peaks_with_and_without_the_bends(format: WavFormat, samples: bytes) -> tuple[float | None, float | None]:
    """The true peak as measured, and with the bends' bound made useless (huge bends: only the
    reach's left), each analyser fed the same samples from the first."""
    measured = []
    for useless in (False, True):
        analyser = Analyser(format)
        if useless:
            analyser._bends = array("d", [1e6] * analysis.oversampling_stages(format.sample_rate)).tobytes()
        analyser.take(samples)
        measured.append(analyser.result().loudness.true_peak)
    return measured[0], measured[1]


@pytest.mark.parametrize("rate", [44100, 22050, 8000, 96000])
def test_skipping_by_the_bends_changes_no_bit(rate: int) -> None:
    """Blocks the bends' bound leaves out (smooth, below the peak so far) hold no point past it:
    without it the true peak is the same, to the bit."""
    tone_and_noise = "sine=f=440:r={rate}[a];anoisesrc=a=0.2:r={rate}[b];[a][b]amerge=inputs=2"  # the bench's
    for source in (TONE, MUSIC, SPEECH, INTER_SAMPLE, tone_and_noise):
        header = WavHeader()
        samples = header.feed(wav(source, 3, rate, 2, "pcm_f32le"))
        assert header.format is not None
        with_bends, without = true_peaks_with_and_without_the_bends(header.format, samples)
        assert with_bends is not None
        assert with_bends == without


def test_skipping_by_the_bends_changes_no_bit_of_a_subnormal_recording() -> None:
    """The bound allows for the single precision's rounding as a fraction of the peak, but a
    product of float32 subnormals rounds by up to 2**-150 however small they are: a recording
    all below float32's normal range (helper-44's fuzzing, ~-870 dBFS) came out up to 0.45 dB
    low. There the bound is not used."""
    ulp = 2.0**-149
    samples = struct.pack("<900f", *([18 * ulp] * 300 + [16 * ulp] * 600))
    with_bends, without = true_peaks_with_and_without_the_bends(WavFormat(FORMAT_FLOAT, 1, 48000, 4, 32), samples)
    assert with_bends is not None
    assert with_bends == without


def test_silence_measures_nothing_and_stays_valid_json() -> None:
    for codec in ("pcm_s16le", "pcm_u8", "pcm_mulaw", "pcm_f32le"):
        result = analysed(wav("anullsrc=r={rate}", 5, 44100, 2, codec))
        assert result.loudness == Loudness(integrated=None, range=None, true_peak=None, sample_peak=None)
        json.dumps(asdict(result.loudness), allow_nan=False)
        assert replay_gain(result.loudness) is None
        assert set(result.peaks.data) == {0}


def test_a_law_has_no_silence() -> None:
    """A-law has no zero: its quietest code decodes to 8/32768 (-72 dBFS), as FFmpeg decodes it."""
    loudness = analysed(wav("anullsrc=r={rate}", 5, 8000, 1, "pcm_alaw")).loudness
    assert loudness.integrated is None
    assert loudness.sample_peak == pytest.approx(20 * math.log10(8 / 32768))


def test_short_recordings_measure_what_they_can() -> None:
    """Under 400 ms there is no gating block; under 3 s no short-term block for the range."""
    tiny = analysed(wav(TONE, 0.3, 44100, 2)).loudness
    assert tiny.integrated is None
    assert tiny.range is None
    assert tiny.true_peak is not None
    assert tiny.sample_peak is not None
    short = analysed(wav(TONE, 1.0, 44100, 2)).loudness
    assert short.integrated is not None
    assert short.range is None
    one_frame = Analyser(WavFormat(FORMAT_PCM, 2, 44100, 4, 16))
    one_frame.take(b"\x00\x40\x00\xc0")
    result = one_frame.result()
    assert result.sample_frames == 1
    assert result.loudness.sample_peak == pytest.approx(20 * math.log10(0.5))
    assert result.peaks.data == struct.pack("bb", -64, 64)  # a pixel is 1/100 s: this one holds the one frame


def test_float_samples_beyond_full_scale_and_not_numbers() -> None:
    """A float WAV may hold +6 dBFS, NaN or infinity: the peaks clip to the 8-bit range, NaN counts
    as silence, infinity as the largest magnitude, and every result is a number JSON can carry."""
    samples = array("f", [2.0, -2.0, float("nan"), float("inf"), float("-inf")] * 2000).tobytes()
    analyser = Analyser(WavFormat(FORMAT_FLOAT, 1, 8000, 4, 32))
    analyser.take(samples)
    result = analyser.result()
    json.dumps(asdict(result.loudness), allow_nan=False)
    assert result.loudness.sample_peak == pytest.approx(20 * math.log10(65536))
    assert set(array("b", result.peaks.data)) == {-128, 127}


# --- waveform peaks ---------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("channels", [1, 2, 6])
def test_peaks_are_the_samples_min_and_max_exactly(codec: str, channels: int) -> None:
    recording = wav(MUSIC.replace("aformat=channel_layouts=stereo", "volume=3"), 3, 22050, channels, codec)
    peaks = analysed(recording, piece=1000).peaks  # pieces that cut sample frames
    assert peaks.samples_per_pixel == 220  # 1/100 s at 22.05 kHz
    assert peaks.length == 3 * 22050 // 220 + 1  # the last one holds the 150 frames left over
    assert peaks.data == reference_peaks(recording, channels, 220)


def test_long_recordings_widen_their_pixels_exactly() -> None:
    """Past MAX_PIXELS pixels, each pixel takes twice the samples: the same min and max as if
    computed at that width from the start."""
    recording = wav(SPEECH, 7, 8000, 2, "pcm_s16le")
    with mock.patch.object(analysis, "MAX_PIXELS", 100):
        peaks = analysed(recording, piece=777).peaks
    assert peaks.samples_per_pixel == 80 * 8  # 700 pixels of 1/100 s, halved three times
    assert 50 < peaks.length <= 100
    assert peaks.data == reference_peaks(recording, 2, 640)


def test_the_last_part_of_a_pixel_widens_the_waveform_rather_than_pass_its_bound() -> None:
    """MAX_PIXELS whole pixels and a few frames more: one pixel more than the bound, so the result
    takes twice the samples per pixel, exactly as if computed at that width."""
    recording = wav(SPEECH, (100 * 80 + 40) / 8000, 8000, 2, "pcm_s16le")  # 100 pixels and half of one
    with mock.patch.object(analysis, "MAX_PIXELS", 100):
        peaks = analysed(recording, piece=777).peaks
    assert peaks.samples_per_pixel == 160
    assert peaks.length == 51
    assert peaks.data == reference_peaks(recording, 2, 160)


def test_six_hours_fit_in_a_few_hundred_kilobytes() -> None:
    analyser = Analyser(WavFormat(FORMAT_PCM, 1, 8000, 2, 16))
    minute = bytes(8000 * 60 * 2)
    for _ in range(6 * 60):
        analyser.take(minute)
    result = analyser.result()
    assert result.sample_frames == 6 * 3600 * 8000
    assert result.peaks.samples_per_pixel == 80 * 32
    assert result.peaks.length == 6 * 3600 * 8000 // (80 * 32)
    assert len(result.peaks.dat()) <= 24 + 2 * analysis.MAX_PIXELS
    assert len(analyser.state()) < 300_000


def test_dat_and_json_follow_audiowaveforms_data_format() -> None:
    """doc/DataFormat.md: version 2 header (version, flags with bit 0 = 8-bit, sample rate, samples
    per pixel, length, channels; little-endian), then min and max per pixel as signed bytes."""
    peaks = analysed(wav(SPEECH, 2, 16000, 2)).peaks
    dat = peaks.dat()
    version, flags, rate, samples_per_pixel, length, channels = struct.unpack_from("<iIiiIi", dat)
    assert (version, flags & 1, rate, samples_per_pixel, channels) == (2, 1, 16000, 160, 1)
    assert length == 200
    assert len(dat) == 24 + 2 * length
    document = json.loads(json.dumps(peaks.json()))
    assert document == {
        "version": 2,
        "channels": 1,
        "sample_rate": 16000,
        "samples_per_pixel": 160,
        "bits": 8,
        "length": 200,
        "data": list(array("b", dat[24:])),
    }
    assert all(low <= high for low, high in zip(document["data"][::2], document["data"][1::2], strict=True))


# --- saving and resuming -------------------------------------------------------------------------

FORMATS = [WavFormat(tag, channels, rate, channels * width, 8 * width) for (tag, width) in CODECS.values()
           for channels, rate in ((1, 8000), (2, 11025), (3, 8000))]  # fmt: skip


def feed(analyser: Analyser, data: bytes, cuts: list[int]) -> None:
    at = 0
    for cut in sorted(cuts):
        analyser.take(data[at:cut])
        at = cut
    analyser.take(data[at:])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    wav_format=st.sampled_from(FORMATS),
    data=st.binary(min_size=0, max_size=120_000),
    fraction=st.floats(0, 1),
    cuts=st.lists(st.integers(0, 120_000), max_size=6),
)
def test_saved_and_restored_goes_on_bit_for_bit(
    wav_format: WavFormat, data: bytes, fraction: float, cuts: list[int]
) -> None:
    """Random bytes as samples (every encoding, NaNs and all), cut at any byte: feeding A, saving,
    restoring and feeding B gives exactly the result of feeding A + B at once."""
    with mock.patch.object(analysis, "MAX_PIXELS", 16):  # widening, too, across the cut
        whole = Analyser(wav_format)
        whole.take(data)
        expected = whole.result()

        split = int(len(data) * fraction)
        first = Analyser(wav_format)
        feed(first, data[:split], [c for c in cuts if c < split])
        first.result()  # looking does not change anything
        resumed = Analyser.restore(wav_format, first.state())
        feed(resumed, data[split:], [c - split for c in cuts if c >= split])
        result = resumed.result()
    assert repr(result) == repr(expected)  # repr: NaN-safe and exact for floats
    assert result.sample_frames == len(data) // wav_format.block_align


def test_the_builds_for_every_x86_64_and_for_avx2_give_the_same_bits(tmp_path: Path) -> None:
    """converter/_measure.c runs its loops in AVX2 where the machine has it; a state saved there may
    be resumed on a machine without: the plain build must compute exactly the same."""
    spec = importlib.util.spec_from_file_location("_measure", build(tmp_path, ("ONE_BUILD",)))
    assert spec is not None
    assert spec.loader is not None
    plain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plain)
    for wav_format in FORMATS:
        data = hashlib.shake_256(repr(wav_format).encode()).digest(200_000 - 200_000 % wav_format.block_align)
        analyser = Analyser(wav_format)
        core = bytearray(analyser._core)
        bends = analyser._bends
        assert _measure.feed(analyser._core, data, bends) == plain.feed(core, data, bends)
        assert analyser._core == core
        assert _measure.finish(bytearray(core), bends) == plain.finish(bytearray(core), bends)


def test_restore_refuses_another_format_and_damaged_states() -> None:
    stereo = WavFormat(FORMAT_PCM, 2, 44100, 4, 16)
    analyser = Analyser(stereo)
    analyser.take(bytes(range(256)) * 100)
    state = analyser.state()
    assert Analyser.restore(stereo, state).result() == analyser.result()
    with pytest.raises(ValueError, match="another sample format"):
        Analyser.restore(WavFormat(FORMAT_PCM, 2, 48000, 4, 16), state)
    for damaged in (state[:-10], b"nonsense", state[:6] + b"\x00" * 40, state.replace(b"WAVA", b"WAVB")):
        with pytest.raises(ValueError, match="state"):
            Analyser.restore(stereo, damaged)


def test_the_gating_blocks_are_as_long_in_c_as_in_python() -> None:
    assert _measure.MOMENTARY_SUBBLOCKS == analysis.MOMENTARY_SUBBLOCKS
    assert _measure.SHORT_TERM_SUBBLOCKS == analysis.SHORT_TERM_SUBBLOCKS


@given(loudness=st.lists(st.floats(1e-20, 6e4) | st.sampled_from([0.0, 1e-20, 1.0, 3e-9]), min_size=30, max_size=80))
@settings(max_examples=200, deadline=None)
def test_the_gating_blocks_mean_squares_are_rounded_as_fsum_rounds(loudness: list[float]) -> None:
    """_measure sums the sub-blocks' energies as math.fsum does, to the bit. A core at 100 Hz (ten
    frames a sub-block) with its shelf made the identity and its high-pass a second difference
    (a1 = a2 = 0), fed one sample a sub-block among zeros (within the +-65536 float samples are
    clamped to): each sub-block's energy is computed here in the core's own order of operations,
    then the gating blocks' mean squares."""
    core = bytearray(_measure.core_size(1))
    k = array("d", [1, 0, 0, 0, 0, 1, -2, 1, 0, 0]).tobytes()
    no_taps = array("f", [0.0] * analysis.FIRST_TAPS_EACH_SIDE).tobytes()
    later = array("f", [0.0] * analysis.LATER_TAPS_EACH_SIDE).tobytes()
    _measure.init(core, 5, 1, 100, 1, 0, k, array("d", [1.0]).tobytes(), no_taps, later, b"")
    frames = array("d", [0.0] * (10 * len(loudness)))
    frames[5::10] = array("d", loudness)
    energies, energy, y1, y2 = [], 0.0, 0.0, 0.0
    for at, x in enumerate(frames):  # pair_step's order: y = x exactly; z = (y2 - 0 z2 - (y1 + y1) + y) - 0 z1
        z = ((y2 - 0.0) - (y1 + y1) + x) - 0.0
        y1, y2 = x, y1
        energy += z * z
        if at % 10 == 9:
            energies.append(0.0 + 1.0 * energy)
            energy = 0.0
    momentary, short_term, _ = _measure.feed(core, frames.tobytes(), b"")
    assert list(array("d", momentary)) == [math.fsum(energies[i - 4 : i]) / 40 for i in range(4, len(energies) + 1)]
    assert list(array("d", short_term)) == [math.fsum(energies[i - 30 : i]) / 300 for i in range(30, len(energies) + 1)]


def test_restore_refuses_the_states_of_earlier_versions() -> None:
    """A state saved by an earlier version (version 1: 64-frame true-peak blocks) is refused, not
    misread; so is a core of the earlier layout inside a state that claims this version."""
    stereo = WavFormat(FORMAT_PCM, 2, 44100, 4, 16)
    analyser = Analyser(stereo)
    analyser.take(bytes(range(256)) * 100)
    state = analyser.state()
    earlier = state[:4] + struct.pack("<H", analysis.STATE_VERSION - 1) + state[6:]
    with pytest.raises(ValueError, match="not an analyser state of this version"):
        Analyser.restore(stereo, earlier)
    body = zlib.decompress(state[6:])
    assert body.count(b"mmasure2") == 1
    earlier_core = state[:6] + zlib.compress(body.replace(b"mmasure2", b"mmasure1"))
    with pytest.raises(ValueError, match="not an analyser core"):
        Analyser.restore(stereo, earlier_core)


# --- ReplayGain for the LAME tag -------------------------------------------------------------------


def lame_fields(peak: bytes, gain: bytes) -> LAMEHeader:
    """The fields read back by mutagen, as a player's tag reader would from the LAME tag."""
    tag = bytearray(36)
    tag[0:9] = b"LAME3.100"
    tag[11:15] = peak
    tag[15:17] = gain
    xing = XingHeader.__new__(XingHeader)
    xing.vbr_scale = 100
    return LAMEHeader(xing, BytesIO(bytes(tag[9:])))  # type: ignore[no-untyped-call]


@pytest.mark.parametrize(
    ("integrated", "true_peak", "gain_field", "peak_field", "gain_db", "peak"),
    [
        (-23.0, 0.0, 0x2C32, 0x00800000, 5.0, 1.0),  # +5.0 dB to -18 LUFS; a full-scale peak
        (-8.55, -6.020599913, 0x2E5E, 0x00400000, -9.4, 0.5),  # -9.45 dB rounds to -9.4 (LAME: floor(x + 0.5))
        (-80.0, -60.0, 0x2DFE, 0x000020C5, 51.0, 0.001),  # +62 dB is beyond the 9 bits: 51.0
        (-18.0, 3.0, 0x2C00, 0x00B4CE08, 0.0, 1.4125),  # a true peak above full scale
    ],
)
def test_replay_gain_fields_as_lame_writes_them(
    integrated: float, true_peak: float, gain_field: int, peak_field: int, gain_db: float, peak: float
) -> None:
    gain = replay_gain(Loudness(integrated=integrated, range=0.0, true_peak=true_peak, sample_peak=true_peak))
    assert gain is not None
    assert gain.track_gain_field == struct.pack(">H", gain_field)
    assert gain.peak_field == struct.pack(">I", peak_field)
    read = lame_fields(gain.peak_field, gain.track_gain_field)
    assert read.track_gain_adjustment == pytest.approx(gain_db)
    assert read.track_gain_origin == 3  # determined automatically
    assert read.track_peak == pytest.approx(peak, rel=1e-4)
