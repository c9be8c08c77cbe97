/* The per-sample loop of converter/analysis.py, which holds everything else.

One pass over the raw samples, in order. Each sample is decoded to a double
(full scale: -1.0 to just under 1.0), then
- K-weighted (ITU-R BS.1770-4: two biquads per channel) and its square summed
  over the current 100 ms sub-block; the channel-weighted sums of the last
  sub-blocks make the mean square of each 400 ms and 3 s gating block that ends
  with one, which go back to Python, which gates and integrates;
- folded into the waveform pixel being built (minimum and maximum over every
  channel); each finished pixel goes back as two signed bytes;
- taken into the true peak: the running maximum of |x| over the samples and
  over the points interpolated between them (BS.1770-4 Annex 2: 4x and more,
  in stages of 2x), computed only for the blocks whose samples could raise it:
  no interpolated point exceeds the largest sample of its window times the sum
  of the magnitudes of the taps that make it (Python works that "reach" out),
  nor that sample plus a "bend" times the window's largest second difference,
  the tighter bound where the samples change smoothly (could_pass).
  At the recording's ends, as FFmpeg's ebur128: the samples before the first
  are its next ones mirrored, and no point is made past the last (mirror_start).

All of it lives in one bytearray, struct Core followed by per-channel arrays,
which Python saves and restores as it is. The loop is strictly sequential and
its blocks are counted from the first sample, so taking the samples in any
number of pieces leaves the same bytes as taking them at once. Built with
-ffp-contract=off: the same IEEE operations in the same order on every machine.
*/

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define MAGIC 0x3265727573616d6dULL /* "mmasure2" (little-endian): 2, 128-frame true-peak blocks, the sub-blocks' energies */
#define MAX_CHANNELS 64
#define MAX_STAGES 5 /* of oversampling by 2: at most 32 points per sample */
#define FIRST_HALF 12 /* taps on each side of the first stage's midpoints: that stage sets the accuracy */
#define LATER_HALF 4  /* and of the later stages': their input is already oversampled */
#define TP_BLOCK 128  /* frames per true-peak block: a multiple of 32 (64 made 14 % more first-stage points) */
#define TP_OVERLAP 32 /* samples before the block its points are also made of: at least twice the stages' reach */
#define TP_WINDOW (TP_BLOCK + TP_OVERLAP)
#define MOMENTARY 4   /* sub-blocks a 400 ms gating block holds: analysis.py's MOMENTARY_SUBBLOCKS */
#define SHORT_TERM 30 /* and a 3 s one: its SHORT_TERM_SUBBLOCKS (the tests compare them) */
#define DECODE_SAMPLES 1024 /* 8 KiB of doubles: the batch stays in the L1 cache beside the rest */
#define LARGEST 65536.0 /* float samples beyond +96 dBFS are taken as this */

/* Built twice where the compiler can (x86-64): for AVX2 and for any x86-64, the loader picking one. The
   same operations in the same order either way (AVX2 brings wider vectors and three-operand forms, and
   -ffp-contract=off keeps fused multiply-adds out), so both give the same bits (ONE_BUILD: only the
   one for any x86-64, as a test builds it to compare). */
#if defined(__x86_64__) && defined(__has_attribute) && !defined(ONE_BUILD)
#if __has_attribute(target_clones)
#define CLONED __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef CLONED
#define CLONED
#endif

enum { ENC_U8, ENC_S16, ENC_S24, ENC_S32, ENC_F32, ENC_F64, ENC_ALAW, ENC_MULAW, ENC_COUNT };
static const int SAMPLE_BYTES[ENC_COUNT] = {1, 2, 3, 4, 4, 8, 1, 1};

typedef struct {
    uint64_t magic;
    int64_t size;
    int64_t encoding, channels, rate;
    int64_t stages; /* of oversampling by 2 (0: the samples are dense enough) */
    int64_t frames;       /* taken so far */
    int64_t subblocks;    /* 100 ms sub-blocks finished */
    int64_t subblock_end; /* the frame that ends the current one */
    int64_t samples_per_pixel, pixel_frames;
    int64_t block_fill; /* frames in the current true-peak block */
    double pixel_min, pixel_max;
    double sample_peak, true_peak;
    double reach[MAX_STAGES]; /* the most the stages from this one on can exceed their input's largest value */
    double pre[5], rlb[5]; /* b0 b1 b2 a1 a2 of each biquad */
    double recent[SHORT_TERM]; /* the last sub-blocks' channel-weighted energies, sub-block s at s % SHORT_TERM */
} Core;

/* Where feed() appends the gating blocks' mean squares. */
typedef struct {
    double *momentary, *short_term;
} Gating;

/* Per-channel arrays after the Core, each `channels` long (filter: 6 per channel), then in single precision
   the true peak's: each channel's recent samples (TP_WINDOW each), and the taps of one side of the first
   stage's symmetric filter (FIRST_HALF) and of the later stages' (LATER_HALF). Single precision is plenty
   for a peak (1e-6 dB) and twice as fast to interpolate. */
typedef struct {
    double *weight, *filter, *energy, *block_max, *previous_max;
    float *history, *first_taps, *later_taps;
    int64_t history_length;
    const double *bends; /* not in the core: feed() and finish() are given them (see interpolate) */
} Arrays;

static double ALAW[256], MULAW[256];

static int64_t core_bytes(int64_t channels)
{
    int64_t doubles = channels * (1 + 6 + 1 + 1 + 1), floats = channels * TP_WINDOW + FIRST_HALF + LATER_HALF;
    return (int64_t)sizeof(Core) + doubles * (int64_t)sizeof(double) + floats * (int64_t)sizeof(float);
}

static Arrays arrays_of(Core *core)
{
    Arrays a;
    double *p = (double *)(core + 1);
    int64_t c = core->channels;
    a.history_length = TP_WINDOW;
    a.bends = NULL;
    a.weight = p, p += c;
    a.filter = p, p += 6 * c;
    a.energy = p, p += c;
    a.block_max = p, p += c;
    a.previous_max = p, p += c;
    a.history = (float *)p;
    a.first_taps = a.history + c * a.history_length;
    a.later_taps = a.first_taps + FIRST_HALF;
    return a;
}

/* G.711 as FFmpeg's pcm_alaw and pcm_mulaw decoders read it, to 16-bit, then to full scale. */
static void build_g711_tables(void)
{
    for (int i = 0; i < 256; i++) {
        int a = i ^ 0x55, t = (a & 0x0f) << 1, seg = (a & 0x70) >> 4;
        t = seg ? (t + 1 + 32) << (seg + 2) : (t + 1) << 3;
        ALAW[i] = ((a & 0x80) ? t : -t) / 32768.0;
        int u = ~i & 0xff, v = (((u & 0x0f) << 3) + 0x84) << ((u & 0x70) >> 4);
        MULAW[i] = ((u & 0x80) ? (0x84 - v) : (v - 0x84)) / 32768.0;
    }
}

static double sane(double x)
{
    if (x != x)
        return 0.0; /* NaN: nothing to measure */
    return x > LARGEST ? LARGEST : x < -LARGEST ? -LARGEST : x;
}

CLONED static void decode(int64_t encoding, const uint8_t *p, int64_t n, double *out)
{
    int64_t i;
    switch (encoding) {
    case ENC_U8:
        for (i = 0; i < n; i++)
            out[i] = (p[i] - 128) / 128.0;
        break;
    case ENC_S16:
        for (i = 0; i < n; i++)
            out[i] = (int16_t)(p[2 * i] | p[2 * i + 1] << 8) / 32768.0;
        break;
    case ENC_S24:
        for (i = 0; i < n; i++) {
            int32_t v = (int32_t)((uint32_t)p[3 * i] << 8 | (uint32_t)p[3 * i + 1] << 16 | (uint32_t)p[3 * i + 2] << 24);
            out[i] = (v >> 8) / 8388608.0;
        }
        break;
    case ENC_S32:
        for (i = 0; i < n; i++) {
            uint32_t v = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 | (uint32_t)p[4 * i + 2] << 16 |
                         (uint32_t)p[4 * i + 3] << 24;
            out[i] = (int32_t)v / 2147483648.0;
        }
        break;
    case ENC_F32:
        for (i = 0; i < n; i++) {
            float f;
            memcpy(&f, p + 4 * i, 4); /* the WAV's little-endian floats: this module is built for little-endian */
            out[i] = sane(f);
        }
        break;
    case ENC_F64:
        for (i = 0; i < n; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            out[i] = sane(d);
        }
        break;
    case ENC_ALAW:
        for (i = 0; i < n; i++)
            out[i] = ALAW[p[i]];
        break;
    default:
        for (i = 0; i < n; i++)
            out[i] = MULAW[p[i]];
        break;
    }
}

/* A pixel bound, already scaled to 8 bits and rounded outwards, within the 8-bit range. */
static int8_t clamp8(double scaled)
{
    return scaled <= -128.0 ? -128 : scaled >= 127.0 ? 127 : (int8_t)scaled;
}

/* A pixel as the waveform keeps it: its lowest and highest sample in 8 bits, each rounded outwards. */
static void store_pixel(int8_t *out, double lowest, double highest)
{
    out[0] = clamp8(floor(lowest * 128.0));
    out[1] = clamp8(ceil(highest * 128.0));
}

/* Eight points at a time, in vectors the machine's width or split into narrower ones by the compiler. */
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

static inline v8f load8(const float *p)
{
    v8f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline v8f larger8(v8f a, v8f b) { return (v8f)(((v8i)a & (a > b)) | ((v8i)b & ~(a > b))); }
static inline v8f magnitude8(v8f v) { return (v8f)((v8i)v & (v8i){INT32_MAX, INT32_MAX, INT32_MAX, INT32_MAX,
                                                                   INT32_MAX, INT32_MAX, INT32_MAX, INT32_MAX}); }

static inline void store8(float *p, v8f v) { memcpy(p, &v, sizeof v); }

/* Eight samples and the eight midpoints after them, interleaved into out[0..15]. */
static inline void interleave8(float *out, v8f samples, v8f midpoints)
{
#if defined(__clang__)
    v8f low = __builtin_shufflevector(samples, midpoints, 0, 8, 1, 9, 2, 10, 3, 11);
    v8f high = __builtin_shufflevector(samples, midpoints, 4, 12, 5, 13, 6, 14, 7, 15);
#else
    v8f low = __builtin_shuffle(samples, midpoints, (v8i){0, 8, 1, 9, 2, 10, 3, 11});
    v8f high = __builtin_shuffle(samples, midpoints, (v8i){4, 12, 5, 13, 6, 14, 7, 15});
#endif
    store8(out, low);
    store8(out + 8, high);
}

/* The largest magnitude among n values, in vectors of four: every x86-64 and ARM64 has those (maxps, where
   there is one, picks as the comparison does: no NaN reaches here), two running maxima so that their
   latencies overlap. */
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

#if defined(__SSE2__)
static inline v4f larger4(v4f a, v4f b) { return (v4f)_mm_max_ps((__m128)a, (__m128)b); }
#else
static inline v4f larger4(v4f a, v4f b) { return (v4f)(((v4i)a & (a > b)) | ((v4i)b & ~(a > b))); }
#endif

static float largest_of(const float *x, int n)
{
    const v4i clear_sign = {INT32_MAX, INT32_MAX, INT32_MAX, INT32_MAX};
    v4f m = {0}, k = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        v4f v, w;
        memcpy(&v, x + i, sizeof v);
        memcpy(&w, x + i + 4, sizeof w);
        m = larger4(m, (v4f)((v4i)v & clear_sign));
        k = larger4(k, (v4f)((v4i)w & clear_sign));
    }
    m = larger4(m, k);
    float largest = 0.0f;
    for (int j = 0; j < 4; j++)
        largest = m[j] > largest ? m[j] : largest;
    for (; i < n; i++)
        largest = fabsf(x[i]) > largest ? fabsf(x[i]) : largest;
    return largest;
}

/* Thirty-two midpoints from the i-th on (see oversample), in four vectors of eight. Four independent sums
   at a time: the adds' latency overlaps. */
typedef struct {
    v8f sum[4];
} Midpoints32;

static inline __attribute__((always_inline)) Midpoints32 midpoints32(const float *in, int i, const float *taps, int half)
{
    v8f s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
    const float *near = in + i, *far = in + i + 2 * half - 1;
    for (int k = 0; k < half; k++) {
        v8f tap = {taps[k], taps[k], taps[k], taps[k], taps[k], taps[k], taps[k], taps[k]};
        s0 += tap * (load8(near + k) + load8(far - k));
        s1 += tap * (load8(near + k + 8) + load8(far - k + 8));
        s2 += tap * (load8(near + k + 16) + load8(far - k + 16));
        s3 += tap * (load8(near + k + 24) + load8(far - k + 24));
    }
    return (Midpoints32){{s0, s1, s2, s3}};
}

static inline v8f largest8_of(Midpoints32 m)
{
    return larger8(larger8(magnitude8(m.sum[0]), magnitude8(m.sum[1])), larger8(magnitude8(m.sum[2]), magnitude8(m.sum[3])));
}

static inline float largest_lane(v8f v)
{
    float most = 0.0f;
    for (int j = 0; j < 8; j++)
        most = v[j] > most ? v[j] : most;
    return most;
}

/* One stage of oversampling by 2: out holds in[half - 1 ...] with the midpoint after each sample,
   m[i] = sum over k < half of taps[k] (in[i + k] + in[i + 2 half - 1 - k]) (the filter is symmetric),
   as far as the input reaches; returns out's length. Eight midpoints at a time in vectors of the
   machine's width, the rest one by one: each midpoint sums its taps in the same order either way, so
   every build (and the vector or the scalar path) gives the same bits. *largest: the largest magnitude
   among the midpoints. */
CLONED static int oversample(const float *in, int n, const float *taps, int half, float *out, float *largest)
{
    int count = n - 2 * half + 1, i = 0;
    v8f peak = {0};
    for (; i + 32 <= count; i += 32) {
        Midpoints32 m = midpoints32(in, i, taps, half);
        peak = larger8(peak, largest8_of(m));
        const float *passed = in + i + half - 1;
        for (int j = 0; j < 4; j++)
            interleave8(out + 2 * i + 16 * j, load8(passed + 8 * j), m.sum[j]);
    }
    for (; i + 8 <= count; i += 8) {
        v8f sum = {0};
        for (int k = 0; k < half; k++) {
            v8f tap = {taps[k], taps[k], taps[k], taps[k], taps[k], taps[k], taps[k], taps[k]};
            sum += tap * (load8(in + i + k) + load8(in + i + 2 * half - 1 - k));
        }
        peak = larger8(peak, magnitude8(sum));
        interleave8(out + 2 * i, load8(in + i + half - 1), sum);
    }
    float most = largest_lane(peak);
    for (; i < count; i++) {
        float sum = 0.0f;
        for (int k = 0; k < half; k++)
            sum += taps[k] * (in[i + k] + in[i + 2 * half - 1 - k]);
        out[2 * i] = in[i + half - 1], out[2 * i + 1] = sum;
        most = fabsf(sum) > most ? fabsf(sum) : most;
    }
    *largest = most;
    return 2 * count;
}

/* The largest magnitude among the last stage's midpoints, which nothing is made of, so they are not kept:
   thirty-two at a time, the last thirty-two ending at the last midpoint (some made twice, with the same
   bits: cheaper than a tail one by one); fewer than thirty-two, as oversample makes them. (Leaving out the
   thirty-twos whose inputs are too small to pass the true peak so far cost more than it saved: the test
   and its mispredicted branch, on the bench's tone and noise.) */
CLONED static float last_stage_peak(const float *in, int n, const float *taps, int half, float *scratch)
{
    int count = n - 2 * half + 1;
    if (count < 32) {
        float most;
        oversample(in, n, taps, half, scratch, &most);
        return most;
    }
    v8f peak = {0};
    for (int i = 0; i < count; i += 32)
        peak = larger8(peak, largest8_of(midpoints32(in, i + 32 <= count ? i : count - 32, taps, half)));
    return largest_lane(peak);
}

/* Whether every second difference among n samples, |x[j - 1] - 2 x[j] + x[j + 1]|, is within the limit: thirty-two
   at a time, the last thirty-two ending at the last one (some tested twice), stopping at the first group with one
   past it (noise: the first). */
static inline v8i bends_past(const float *x, int j, v8f limit)
{
    v8i past = {0};
    for (int k = j; k < j + 32; k += 8)
        past |= magnitude8((load8(x + k - 1) + load8(x + k + 1)) - (load8(x + k) + load8(x + k))) > limit;
    return past;
}

CLONED static int bends_within(const float *x, int n, float limit)
{
    if (n < 34) {
        for (int j = 1; j + 1 < n; j++)
            if (fabsf((x[j - 1] + x[j + 1]) - (x[j] + x[j])) > limit)
                return 0;
        return 1;
    }
    const v8f bound = {limit, limit, limit, limit, limit, limit, limit, limit};
    for (int j = 1;; j += 32) {
        int last = j + 32 >= n - 1;
        int64_t lanes[4];
        v8i past = bends_past(x, last ? n - 33 : j, bound);
        memcpy(lanes, &past, sizeof lanes);
        if (lanes[0] | lanes[1] | lanes[2] | lanes[3])
            return 0;
        if (last)
            return 1;
    }
}

/* Whether the points of the stages from s on, made of n values (each no larger than `largest`) stage s is fed,
   could pass the true peak so far. Two bounds: reach[s] times the largest value (the taps' summed magnitudes);
   and, tighter where the values change smoothly, the largest value plus bends[s] times their largest second
   difference: each point is the linear interpolation of its two nearest values (no larger than either) plus a
   sum of second differences, bends[s] the most their weights sum to (converter/analysis.py's stage_bends).
   Both hold for exact arithmetic; BEND_MARGIN takes in the single precision's rounding (under 1e-5 of the
   largest value), so skipping changes no bit of the result; but not among float32's subnormals, whose
   products round by up to 2^-150 whatever their size: a peak that small is not skipped by the bends. Only the first stage's is tested: it is where
   most of the work is saved, and the later stages' values are the first's points, seldom smooth where the first's
   bound failed. */
#define BEND_MARGIN 1e-4
static int could_pass(const Core *core, const Arrays *a, int64_t stage, const float *in, int n, double largest)
{
    if (core->reach[stage] * largest <= core->true_peak)
        return 0;
    if (stage > 0 || core->true_peak < 0x1p-100) /* subnormal products round by 2^-150, however small */
        return 1;
    /* (largest + bend D) (1 + BEND_MARGIN) <= true peak, where D is the largest second difference */
    double limit = (core->true_peak / (1.0 + BEND_MARGIN) - largest) / a->bends[stage];
    if (!(limit >= 0.0)) /* and a bend of 0 (no stage has one) */
        return 1;
    float below = (float)limit;
    if ((double)below > limit)
        below = nextafterf(below, 0.0f);
    return !bends_within(in, n, below);
}

/* The points interpolated among n samples of one channel (x), stage by stage while they could still raise the
   true peak (could_pass). Only points whose taps all fall on the n samples are made. */
static void interpolate(Core *core, const Arrays *a, const float *x, int n, double largest)
{
    enum { MOST = TP_WINDOW << MAX_STAGES };
    float one[MOST], other[MOST];
    const float *in = x;
    for (int64_t stage = 0; stage < core->stages && could_pass(core, a, stage, in, n, largest); stage++) {
        float *out = stage % 2 ? other : one, midpoints;
        const float *taps = stage == 0 ? a->first_taps : a->later_taps;
        int half = stage == 0 ? FIRST_HALF : LATER_HALF;
        if (n < 2 * half)
            break; /* too few samples for a point */
        if (stage == core->stages - 1) {
            midpoints = last_stage_peak(in, n, taps, half, out);
        } else {
            n = oversample(in, n, taps, half, out, &midpoints);
            in = out;
        }
        if (midpoints > core->true_peak)
            core->true_peak = midpoints;
        largest = midpoints > largest ? midpoints : largest; /* the samples passed on are no larger than before */
    }
}

/* The points of one channel's last block and the samples before it (its window). Each block's points reach
   past its own stretch into its neighbours' (the stages' filters need samples on both sides), so that
   together the blocks leave out none. */
static void true_peak_block(Core *core, Arrays *a, int64_t c)
{
    const float *x = a->history + c * a->history_length;
    double largest = a->previous_max[c] > a->block_max[c] ? a->previous_max[c] : a->block_max[c];
    interpolate(core, a, x, TP_WINDOW, largest);
    a->previous_max[c] = a->block_max[c];
    a->block_max[c] = 0.0;
    memmove(a->history + c * a->history_length, x + TP_BLOCK, (size_t)(a->history_length - TP_BLOCK) * sizeof(float));
}

/* Before the recording's first sample, its next ones mirrored (sample -n is sample n, as far as the
   recording goes), in each channel; after its last, nothing: finish() makes no point whose taps reach past
   it. So a recording that starts or ends loud is not measured as a step from or to silence, whose overshoot
   is in none of its samples. BS.1770-4 says nothing of the ends; this is what FFmpeg's ebur128 does (its
   resampler mirrors the start, libswresample's invert_initial_buffer, and is never flushed), whose figures
   the measurement is to agree with. The block holds more than TP_OVERLAP of the recording's samples:
   a recording of no more than that has no points at all (finish), as in ebur128. */
static void mirror_start(Arrays *a, int64_t channels)
{
    const int64_t before = a->history_length - TP_BLOCK;
    for (int64_t c = 0; c < channels; c++) {
        float *x = a->history + c * a->history_length + before;
        for (int64_t n = 1; n <= before; n++)
            x[-n] = x[n];
    }
}

/* A block's largest sample counted in both peaks: the samples themselves first, the bar the points must pass. */
static void count_samples(Core *core, double largest)
{
    if (largest > core->sample_peak)
        core->sample_peak = largest;
    if (largest > core->true_peak)
        core->true_peak = largest;
}

/* first: the block is the recording's first (its window reaches before the recording). */
static void finish_block(Core *core, Arrays *a, int first)
{
    if (first)
        mirror_start(a, core->channels);
    for (int64_t c = 0; c < core->channels; c++) { /* the block's largest sample, as the points see it */
        a->block_max[c] = largest_of(a->history + c * a->history_length + (a->history_length - TP_BLOCK), TP_BLOCK);
    }
    for (int64_t c = 0; c < core->channels; c++)
        count_samples(core, a->block_max[c]);
    for (int64_t c = 0; c < core->channels; c++)
        true_peak_block(core, a, c);
    core->block_fill = 0;
}

/* The sum of n finite doubles, correctly rounded: Python's math.fsum (Shewchuk's partials, then the last
   rounding made half-even), whatever their order. */
static double exact_sum(const double *v, int n)
{
    double partials[SHORT_TERM + 1];
    int count = 0;
    for (int i = 0; i < n; i++) {
        double x = v[i];
        int kept = 0;
        for (int k = 0; k < count; k++) {
            double y = partials[k];
            if (fabs(x) < fabs(y)) {
                double t = x;
                x = y, y = t;
            }
            double high = x + y, low = y - (high - x);
            if (low != 0.0)
                partials[kept++] = low;
            x = high;
        }
        count = kept;
        if (x != 0.0)
            partials[count++] = x;
    }
    double high = 0.0;
    if (count > 0) {
        double low = 0.0;
        high = partials[--count];
        while (count > 0) { /* the partials are in increasing magnitude, non-overlapping */
            double x = high, y = partials[--count];
            high = x + y;
            low = y - (high - x);
            if (low != 0.0)
                break;
        }
        /* half-even across the partials left: make the last rounding right */
        if (count > 0 && ((low < 0.0 && partials[count - 1] < 0.0) || (low > 0.0 && partials[count - 1] > 0.0))) {
            double y = low * 2.0, x = high + y;
            if (y == x - high)
                high = x;
        }
    }
    return high;
}

/* A sub-block finished with this channel-weighted energy: the mean square of the gating block of each length
   that ends with it, once there are enough sub-blocks (their lengths differ by a frame where the rate is not a
   multiple of 10). */
static void subblock_finished(Core *core, double energy, Gating *gating)
{
    core->recent[core->subblocks % SHORT_TERM] = energy;
    int64_t count = ++core->subblocks, end = count * core->rate / 10;
    if (count >= MOMENTARY) {
        double last[MOMENTARY];
        for (int k = 0; k < MOMENTARY; k++)
            last[k] = core->recent[(count - 1 - k) % SHORT_TERM];
        *gating->momentary++ = exact_sum(last, MOMENTARY) / (double)(end - (count - MOMENTARY) * core->rate / 10);
    }
    if (count >= SHORT_TERM)
        *gating->short_term++ = exact_sum(core->recent, SHORT_TERM) / (double)(end - (count - SHORT_TERM) * core->rate / 10);
}

/* Filter states below this are flushed to zero at each block's end: a silence would otherwise
   decay into subnormal numbers, which the FPU handles a hundred times slower. */
#define FLUSH 1e-30

/* Channels go through in pairs, the two side by side in one vector (an odd last channel is paired with a
   copy of itself that counts for nothing): the same operations on each lane as one channel alone would get. */
typedef double v2d __attribute__((vector_size(16)));
typedef int64_t v2i __attribute__((vector_size(16)));

typedef struct {
    v2d x1, x2, y1, y2, z1, z2; /* x[n-1], x[n-2]; the shelf's y[n-1], y[n-2]; the high-pass's z[n-1], z[n-2] */
    v2d energy, low, high, weight;
} Pair;

typedef struct {
    v2d p0, p1, p2, p3, p4, r3, r4; /* the high-pass's numerator is 1, -2, 1 (init() checks) */
} Coefficients;

static inline v2d pick(v2i mask, v2d yes, v2d no) { return (v2d)(((v2i)yes & mask) | ((v2i)no & ~mask)); }
#if defined(__SSE2__)
/* minpd and maxpd: a < b ? a : b and a > b ? a : b, in one instruction each (no NaN reaches here) */
static inline v2d smaller(v2d a, v2d b) { return (v2d)_mm_min_pd((__m128d)a, (__m128d)b); }
static inline v2d larger(v2d a, v2d b) { return (v2d)_mm_max_pd((__m128d)a, (__m128d)b); }
#else
static inline v2d smaller(v2d a, v2d b) { return pick(a < b, a, b); }
static inline v2d larger(v2d a, v2d b) { return pick(a > b, a, b); }
#endif
static inline v2d magnitude(v2d v) { return (v2d)((v2i)v & (v2i){INT64_MAX, INT64_MAX}); }
static inline v2d splat(double v) { return (v2d){v, v}; }

static inline __attribute__((always_inline)) void pair_load(Pair *pair, const Arrays *a, int64_t c, int64_t channels)
{
    int64_t d = c + 1 < channels ? c + 1 : c; /* the second lane: the next channel, or a copy */
    const double *s = a->filter + 6 * c, *t = a->filter + 6 * d;
    pair->x1 = (v2d){s[0], t[0]}, pair->x2 = (v2d){s[1], t[1]}, pair->y1 = (v2d){s[2], t[2]};
    pair->y2 = (v2d){s[3], t[3]}, pair->z1 = (v2d){s[4], t[4]}, pair->z2 = (v2d){s[5], t[5]};
    pair->energy = (v2d){a->energy[c], a->energy[d]};
    pair->weight = (v2d){a->weight[c], d == c ? 0.0 : a->weight[d]};
    pair->low = splat(INFINITY), pair->high = splat(-INFINITY);
}

static inline __attribute__((always_inline)) void pair_store(const Pair *pair, Arrays *a, int64_t c, int64_t channels)
{
    for (int lane = 0; lane < 2 && c + lane < channels; lane++) {
        double *s = a->filter + 6 * (c + lane);
        s[0] = pair->x1[lane], s[1] = pair->x2[lane], s[2] = pair->y1[lane];
        s[3] = pair->y2[lane], s[4] = pair->z1[lane], s[5] = pair->z2[lane];
        a->energy[c + lane] = pair->energy[lane];
    }
}

/* One frame of a pair. Each biquad in direct form I, summed oldest terms first, so that its recurrence
   is one multiply and one subtraction: y[n] = (b2 x[n-2] - a2 y[n-2] + b1 x[n-1] + b0 x[n]) - a1 y[n-1]. */
static inline __attribute__((always_inline)) void pair_step(Pair *pair, const Coefficients *k, v2d v)
{
    pair->low = smaller(v, pair->low);
    pair->high = larger(v, pair->high);
    v2d y = (k->p2 * pair->x2 - k->p4 * pair->y2 + k->p1 * pair->x1 + k->p0 * v) - k->p3 * pair->y1;
    v2d z = (pair->y2 - k->r4 * pair->z2 - (pair->y1 + pair->y1) + y) - k->r3 * pair->z1;
    pair->x2 = pair->x1, pair->x1 = v, pair->y2 = pair->y1, pair->y1 = y, pair->z2 = pair->z1, pair->z1 = z;
    pair->energy += z * z;
}

static inline v2d flushed(v2d v) { return pick(magnitude(v) < splat(FLUSH), splat(0.0), v); }

static inline __attribute__((always_inline)) void pair_flush(Pair *pair)
{
    pair->x1 = flushed(pair->x1), pair->x2 = flushed(pair->x2), pair->y1 = flushed(pair->y1);
    pair->y2 = flushed(pair->y2), pair->z1 = flushed(pair->z1), pair->z2 = flushed(pair->z2);
}

/* Frames of decoded samples through the loop; gating blocks and pixels appended at gating, *pixels.
   Inlined for one and for two channels, whose running values then stay in registers; more channels keep
   theirs in an array on the stack. */
static inline __attribute__((always_inline)) void run_channels(Core *core, Arrays *a, const double *restrict x,
                                                               int64_t frames, Gating *gating, int8_t **pixels,
                                                               const int64_t channels)
{
    const int64_t pairs = (channels + 1) / 2, samples_per_pixel = core->samples_per_pixel;
    const int64_t history_length = a->history_length, offset = history_length - TP_BLOCK;
    const Coefficients k = {splat(core->pre[0]), splat(core->pre[1]), splat(core->pre[2]), splat(core->pre[3]),
                            splat(core->pre[4]), splat(core->rlb[3]), splat(core->rlb[4])};
    Pair one, many[MAX_CHANNELS / 2];
    Pair *const pair = channels <= 2 ? &one : many;
    for (int64_t p = 0; p < pairs; p++)
        pair_load(&pair[p], a, 2 * p, channels);
    int64_t block_fill = core->block_fill, pixel_frames = core->pixel_frames;
    int64_t until_subblock = core->subblock_end - core->frames;
    double pixel_min = core->pixel_min, pixel_max = core->pixel_max;
    for (int64_t f = 0; f < frames;) {
        /* the frames up to the next block, pixel or sub-block end: a loop without branches */
        int64_t n = frames - f;
        n = TP_BLOCK - block_fill < n ? TP_BLOCK - block_fill : n;
        n = samples_per_pixel - pixel_frames < n ? samples_per_pixel - pixel_frames : n;
        n = until_subblock < n ? until_subblock : n;
        for (int64_t i = 0; i < n; i++, x += channels)
            for (int64_t p = 0; p < pairs; p++) {
                int64_t c = 2 * p, d = c + 1 < channels ? c + 1 : c;
                pair_step(&pair[p], &k, (v2d){x[c], x[d]});
                a->history[c * history_length + offset + block_fill + i] = (float)x[c];
                a->history[d * history_length + offset + block_fill + i] = (float)x[d];
            }
        f += n, block_fill += n, pixel_frames += n, until_subblock -= n;
        if (block_fill == TP_BLOCK) {
            for (int64_t p = 0; p < pairs; p++)
                pair_flush(&pair[p]);
            finish_block(core, a, core->frames + f == TP_BLOCK);
            block_fill = 0;
        }
        if (pixel_frames == samples_per_pixel) {
            for (int64_t p = 0; p < pairs; p++) {
                v2d low = pair[p].low, high = pair[p].high;
                pixel_min = low[0] < pixel_min ? low[0] : pixel_min, pixel_min = low[1] < pixel_min ? low[1] : pixel_min;
                pixel_max = high[0] > pixel_max ? high[0] : pixel_max, pixel_max = high[1] > pixel_max ? high[1] : pixel_max;
                pair[p].low = splat(INFINITY), pair[p].high = splat(-INFINITY);
            }
            store_pixel(*pixels, pixel_min, pixel_max);
            *pixels += 2;
            pixel_frames = 0;
            pixel_min = INFINITY, pixel_max = -INFINITY;
        }
        if (until_subblock == 0) {
            double sum = 0.0; /* channel by channel, in order */
            for (int64_t p = 0; p < pairs; p++) {
                v2d weighted = pair[p].weight * pair[p].energy;
                sum += weighted[0];
                if (2 * p + 1 < channels)
                    sum += weighted[1];
                pair[p].energy = splat(0.0);
            }
            subblock_finished(core, sum, gating);
            until_subblock = (core->subblocks + 1) * core->rate / 10 - (core->frames + f);
        }
    }
    for (int64_t p = 0; p < pairs; p++) { /* the pixel being built keeps its bounds in the core */
        v2d low = pair[p].low, high = pair[p].high;
        pixel_min = low[0] < pixel_min ? low[0] : pixel_min, pixel_min = low[1] < pixel_min ? low[1] : pixel_min;
        pixel_max = high[0] > pixel_max ? high[0] : pixel_max, pixel_max = high[1] > pixel_max ? high[1] : pixel_max;
        pair_store(&pair[p], a, 2 * p, channels);
    }
    core->frames += frames;
    core->subblock_end = core->frames + until_subblock;
    core->block_fill = block_fill;
    core->pixel_frames = pixel_frames;
    core->pixel_min = pixel_min;
    core->pixel_max = pixel_max;
}

/* Frames of decoded samples through the loop, for any channel count. */
CLONED static void run(Core *core, Arrays *a, const double *x, int64_t frames, Gating *gating, int8_t **pixels)
{
    switch (core->channels) {
    case 1:
        run_channels(core, a, x, frames, gating, pixels, 1);
        break;
    case 2:
        run_channels(core, a, x, frames, gating, pixels, 2);
        break;
    default:
        run_channels(core, a, x, frames, gating, pixels, core->channels);
        break;
    }
}

/* The core in a bytearray, if it is one this module made: a restored state is checked before it is trusted. */
static Core *checked(Py_buffer *view)
{
    Core *core = (Core *)view->buf;
    if (view->len < (Py_ssize_t)sizeof(Core) || core->magic != MAGIC || core->size != view->len ||
        core->encoding < 0 || core->encoding >= ENC_COUNT || core->channels < 1 || core->channels > MAX_CHANNELS ||
        core->stages < 0 || core->stages > MAX_STAGES || core->rate < 1 ||
        core->size != core_bytes(core->channels) || core->block_fill < 0 ||
        core->block_fill >= TP_BLOCK || core->samples_per_pixel < 1 || core->samples_per_pixel > (1LL << 40) ||
        core->pixel_frames < 0 || core->pixel_frames >= core->samples_per_pixel) {
        PyErr_SetString(PyExc_ValueError, "not an analyser core");
        return NULL;
    }
    return core;
}

static PyObject *core_size(PyObject *self, PyObject *args)
{
    long long channels;
    if (!PyArg_ParseTuple(args, "L", &channels))
        return NULL;
    if (channels < 1 || channels > MAX_CHANNELS) {
        PyErr_SetString(PyExc_ValueError, "channels out of range");
        return NULL;
    }
    return PyLong_FromLongLong(core_bytes(channels));
}

/* init(core, encoding, channels, rate, samples_per_pixel, stages, k_weighting, weights, first_taps, later_taps,
   reaches): reaches[s], the most the points of stages s and after can exceed the largest value stage s is fed */
static PyObject *init(PyObject *self, PyObject *args)
{
    Py_buffer view, k, weights, first, later, reaches;
    long long encoding, channels, rate, spp, stages;
    if (!PyArg_ParseTuple(args, "w*LLLLLy*y*y*y*y*", &view, &encoding, &channels, &rate, &spp, &stages, &k, &weights,
                          &first, &later, &reaches))
        return NULL;
    PyObject *result = NULL;
    if (encoding < 0 || encoding >= ENC_COUNT || rate < 1 || spp < 1 || channels < 1 || channels > MAX_CHANNELS ||
        stages < 0 || stages > MAX_STAGES || view.len != core_bytes(channels) ||
        k.len != 10 * (Py_ssize_t)sizeof(double) || weights.len != channels * (Py_ssize_t)sizeof(double) ||
        first.len != FIRST_HALF * (Py_ssize_t)sizeof(float) || later.len != LATER_HALF * (Py_ssize_t)sizeof(float) ||
        reaches.len != stages * (Py_ssize_t)sizeof(double)) {
        PyErr_SetString(PyExc_ValueError, "inconsistent analyser parameters");
        goto done;
    }
    memset(view.buf, 0, (size_t)view.len);
    Core *core = (Core *)view.buf;
    core->magic = MAGIC;
    core->size = view.len;
    core->encoding = encoding, core->channels = channels, core->rate = rate;
    core->stages = stages;
    core->subblock_end = rate / 10;
    core->samples_per_pixel = spp;
    core->pixel_min = INFINITY, core->pixel_max = -INFINITY;
    memcpy(core->pre, k.buf, 5 * sizeof(double));
    memcpy(core->rlb, (double *)k.buf + 5, 5 * sizeof(double));
    if (core->rlb[0] != 1.0 || core->rlb[1] != -2.0 || core->rlb[2] != 1.0) {
        PyErr_SetString(PyExc_ValueError, "the high-pass's numerator is 1, -2, 1 at every rate");
        goto done;
    }
    Arrays a = arrays_of(core);
    memcpy(a.weight, weights.buf, (size_t)weights.len);
    memcpy(a.first_taps, first.buf, (size_t)first.len);
    memcpy(a.later_taps, later.buf, (size_t)later.len);
    memcpy(core->reach, reaches.buf, (size_t)reaches.len);
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&view), PyBuffer_Release(&k), PyBuffer_Release(&weights), PyBuffer_Release(&first);
    PyBuffer_Release(&later), PyBuffer_Release(&reaches);
    return result;
}

/* The bends (see could_pass), one a stage as native doubles, for a core that checked() accepted. */
static int bends_fit(const Core *core, const Py_buffer *bends)
{
    const double *b = bends->buf;
    int fit = bends->len == core->stages * (Py_ssize_t)sizeof(double);
    for (int64_t s = 0; fit && s < core->stages; s++)
        fit = b[s] > 0.0 && b[s] <= 1e6; /* and no NaN */
    if (!fit)
        PyErr_SetString(PyExc_ValueError, "bends: a positive double for each stage");
    return fit;
}

/* feed(core, samples, bends) -> (the mean squares of the 400 ms gating blocks that end in the samples, and of
   the 3 s ones, as native doubles; pixels as signed byte pairs) */
static PyObject *feed(PyObject *self, PyObject *args)
{
    Py_buffer view, samples, bends;
    if (!PyArg_ParseTuple(args, "w*y*y*", &view, &samples, &bends))
        return NULL;
    PyObject *momentary = NULL, *short_term = NULL, *pixels = NULL, *result = NULL;
    Core *core = checked(&view);
    if (!core || !bends_fit(core, &bends))
        goto done;
    const int64_t frame_bytes = SAMPLE_BYTES[core->encoding] * core->channels;
    if (samples.len % frame_bytes) {
        PyErr_SetString(PyExc_ValueError, "samples must be whole frames");
        goto done;
    }
    const int64_t frames = samples.len / frame_bytes, per_subblock = core->rate / 10 > 0 ? core->rate / 10 : 1;
    momentary = PyBytes_FromStringAndSize(NULL, (frames / per_subblock + 2) * (Py_ssize_t)sizeof(double));
    short_term = PyBytes_FromStringAndSize(NULL, (frames / per_subblock + 2) * (Py_ssize_t)sizeof(double));
    pixels = PyBytes_FromStringAndSize(NULL, (frames / core->samples_per_pixel + 2) * 2);
    if (!momentary || !short_term || !pixels)
        goto done;
    Gating gating = {(double *)PyBytes_AS_STRING(momentary), (double *)PyBytes_AS_STRING(short_term)};
    int8_t *p = (int8_t *)PyBytes_AS_STRING(pixels);
    Arrays a = arrays_of(core);
    a.bends = bends.buf;
    const int64_t batch = DECODE_SAMPLES / core->channels;
    const uint8_t *in = samples.buf;
    Py_BEGIN_ALLOW_THREADS /* the buffers are held: the bytearray cannot be resized meanwhile */
    double decoded[DECODE_SAMPLES];
    for (int64_t start = 0; start < frames; start += batch) {
        int64_t n = frames - start < batch ? frames - start : batch;
        decode(core->encoding, in + start * frame_bytes, n * core->channels, decoded);
        run(core, &a, decoded, n, &gating, &p);
    }
    Py_END_ALLOW_THREADS
    if (_PyBytes_Resize(&momentary, (char *)gating.momentary - PyBytes_AS_STRING(momentary)) < 0 ||
        _PyBytes_Resize(&short_term, (char *)gating.short_term - PyBytes_AS_STRING(short_term)) < 0 ||
        _PyBytes_Resize(&pixels, (char *)p - PyBytes_AS_STRING(pixels)) < 0)
        goto done;
    result = PyTuple_Pack(3, momentary, short_term, pixels);
done:
    Py_XDECREF(momentary), Py_XDECREF(short_term), Py_XDECREF(pixels);
    PyBuffer_Release(&view), PyBuffer_Release(&samples), PyBuffer_Release(&bends);
    return result;
}

/* finish(core, bends) -> (true peak, sample peak), the last block's samples counted, and its points whose taps
   all fall on the recording (see mirror_start) (changes the core: pass a copy) */
static PyObject *finish(PyObject *self, PyObject *args)
{
    Py_buffer view, bends;
    if (!PyArg_ParseTuple(args, "w*y*", &view, &bends))
        return NULL;
    PyObject *result = NULL;
    Core *core = checked(&view);
    if (core && bends_fit(core, &bends)) {
        Arrays a = arrays_of(core);
        a.bends = bends.buf;
        const int64_t offset = a.history_length - TP_BLOCK, fill = core->block_fill;
        /* the samples before the block: mirrored when the block is the recording's first; none to make
           points of when the recording has no more than TP_OVERLAP (mirror_start) */
        const int points = core->frames > TP_OVERLAP;
        if (points && core->frames == fill)
            mirror_start(&a, core->channels);
        for (int64_t c = 0; c < core->channels && core->frames > 0; c++) {
            const float *x = a.history + c * a.history_length;
            double most = largest_of(x + offset, (int)fill);
            count_samples(core, most);
            if (points)
                interpolate(core, &a, x, (int)(offset + fill), a.previous_max[c] > most ? a.previous_max[c] : most);
        }
        result = Py_BuildValue("dd", core->true_peak, core->sample_peak);
    }
    PyBuffer_Release(&view), PyBuffer_Release(&bends);
    return result;
}

/* widen_pixels(core, carried_min, carried_max, carried) -> None: twice the samples per pixel from now on; the
   pixel being built takes in the finished one before it (its quantized bounds) when `carried` is true. */
static PyObject *widen_pixels(PyObject *self, PyObject *args)
{
    Py_buffer view;
    int carried_min, carried_max, carried;
    if (!PyArg_ParseTuple(args, "w*iip", &view, &carried_min, &carried_max, &carried))
        return NULL;
    PyObject *result = NULL;
    Core *core = checked(&view);
    if (core) {
        if (carried) {
            double low = carried_min / 128.0, high = carried_max / 128.0;
            core->pixel_frames += core->samples_per_pixel;
            if (low < core->pixel_min)
                core->pixel_min = low;
            if (high > core->pixel_max)
                core->pixel_max = high;
        }
        core->samples_per_pixel *= 2;
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&view);
    return result;
}

/* pixel_being_built(core) -> its min and max as two signed bytes, as finished pixels are; empty when no frame
   of it has come yet. audiowaveform ends a waveform with such a part of a pixel, so the result does too. */
static PyObject *pixel_being_built(PyObject *self, PyObject *args)
{
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "w*", &view))
        return NULL;
    PyObject *result = NULL;
    Core *core = checked(&view);
    if (core) {
        int8_t bounds[2];
        store_pixel(bounds, core->pixel_min, core->pixel_max);
        result = PyBytes_FromStringAndSize((const char *)bounds, core->pixel_frames ? 2 : 0);
    }
    PyBuffer_Release(&view);
    return result;
}

/* counters(core) -> (frames, samples_per_pixel) */
static PyObject *counters(PyObject *self, PyObject *args)
{
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "w*", &view))
        return NULL;
    PyObject *result = NULL;
    Core *core = checked(&view);
    if (core)
        result = Py_BuildValue("LL", (long long)core->frames, (long long)core->samples_per_pixel);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"core_size", core_size, METH_VARARGS, "core_size(channels) -> bytes the core needs"},
    {"init", init, METH_VARARGS, "init(core, encoding, channels, rate, spp, stages, k, weights, first, later, reaches)"},
    {"feed", feed, METH_VARARGS, "feed(core, samples, bends) -> (400 ms blocks, 3 s blocks, pixels)"},
    {"finish", finish, METH_VARARGS, "finish(core, bends) -> (true peak, sample peak) (changes the core)"},
    {"widen_pixels", widen_pixels, METH_VARARGS, "widen_pixels(core, min, max, carried) -> None"},
    {"pixel_being_built", pixel_being_built, METH_VARARGS, "pixel_being_built(core) -> b'' or its min and max"},
    {"counters", counters, METH_VARARGS, "counters(core) -> (frames, samples per pixel)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_measure", NULL, -1, methods};

PyMODINIT_FUNC PyInit__measure(void)
{
#if PY_BIG_ENDIAN
#error "the WAV's samples are little-endian and read as such"
#endif
    build_g711_tables();
    PyObject *made = PyModule_Create(&module);
    if (made && (PyModule_AddIntConstant(made, "MOMENTARY_SUBBLOCKS", MOMENTARY) < 0 ||
                 PyModule_AddIntConstant(made, "SHORT_TERM_SUBBLOCKS", SHORT_TERM) < 0))
        Py_CLEAR(made);
    return made;
}
