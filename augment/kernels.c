/* SPDX-License-Identifier: MIT */
/* Deterministic pixel cores: every transform once its random draws are
 * made. Inner loops are plain unit-stride C that GCC vectorizes at -O2/-O3
 * (checked with -fopt-info-vec, see augment/meson.build); the fused window
 * (crop + pad + flips + normalize) reads each input pixel it needs once and
 * writes each output element once. */
#include "augment_internal.h"

#include <math.h>
#include <string.h>

/* ---- the window: crop + pad + flips (+ normalize) in one pass ---------- */

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* GCC turns short copy and fill loops back into memcpy / memset calls,
 * which for 28-byte rows cost more than the copy itself. And x * s + b
 * stays a rounded multiply then a rounded add even under -march flags
 * with FMA, so every path and every build gives the same bits. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-tree-loop-distribute-patterns", "fp-contract=off")
#elif defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

/* The hot cores get an AVX2 copy picked at load time (ifunc) next to the
 * baseline x86-64 one. AVX2 without FMA: no fused multiply-add, so both
 * copies round every operation the same way and give the same bits. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(STK_NO_CLONES)
#define VEC_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VEC_CLONES
#endif

/* How a u8 value lands in the output. Each (kind, mirrored) pair gets its
 * own copy of the loops below through constant propagation, so the inner
 * loops are straight unit-stride code for the vectorizer. */
enum { OUT_U8, OUT_F32, OUT_BF16, OUT_LUT, OUT_F32_NT };

/* OUT_F32_NT: f32 written with non-temporal stores, for outputs too big to
 * stay in cache (a 3x224x224 f32 image is 588 KiB; a batch of 64, 38 MB).
 * Plain stores first read every output line into the cache (read for
 * ownership) and then evict it again: three memory transfers per line
 * where streaming stores take one, as glibc's memcpy does for copies this
 * large. Below STREAM_MIN the consumer is better served by finding the
 * batch in cache. Same arithmetic (multiply, then add), same bits. */
#define STREAM_MIN ((size_t)256 * 1024)
#if defined(__x86_64__) && defined(__SSE2__)
#include <emmintrin.h>
#define HAVE_STREAM 1

/* d[i] = p[i] * s + b (rev: p[-i]), streamed once d is 16-byte aligned. */
ALWAYS_INLINE void run_f32_stream(float *d, const uint8_t *p, size_t n, bool rev, float s,
                                  float b)
{
    size_t i = 0;
    for (; i < n && ((uintptr_t)(d + i) & 15); i++)
        d[i] = (float)(rev ? p[-(ptrdiff_t)i] : p[i]) * s + b;
    const __m128 vs = _mm_set1_ps(s), vb = _mm_set1_ps(b);
    const __m128i zero = _mm_setzero_si128();
    for (; i + 8 <= n; i += 8) {
        uint64_t raw;
        memcpy(&raw, rev ? p - i - 7 : p + i, sizeof raw);
        __m128i w16 = _mm_unpacklo_epi8(_mm_cvtsi64_si128((long long)raw), zero);
        __m128i lo = _mm_unpacklo_epi16(w16, zero), hi = _mm_unpackhi_epi16(w16, zero);
        if (rev) { /* the 8 bytes ran p[-i-7] .. p[-i]: output is them backwards */
            __m128i t = _mm_shuffle_epi32(hi, _MM_SHUFFLE(0, 1, 2, 3));
            hi = _mm_shuffle_epi32(lo, _MM_SHUFFLE(0, 1, 2, 3));
            lo = t;
        }
        _mm_stream_ps(d + i, _mm_add_ps(_mm_mul_ps(_mm_cvtepi32_ps(lo), vs), vb));
        _mm_stream_ps(d + i + 4, _mm_add_ps(_mm_mul_ps(_mm_cvtepi32_ps(hi), vs), vb));
    }
    for (; i < n; i++)
        d[i] = (float)(rev ? p[-(ptrdiff_t)i] : p[i]) * s + b;
}
#else
#define HAVE_STREAM 0
#endif

/* f32 -> bf16, round to nearest even, as stk_f32_to_bf16 for every
 * non-NaN value (create refuses mean/std that could make a NaN); plain
 * integer ops, so the loops around it vectorize. */
ALWAYS_INLINE uint16_t bf16_rne(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    x += 0x7FFFu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

typedef struct chan {
    float s, b;
    const uint16_t *lut;
} chan_t;

ALWAYS_INLINE void put(void *dst, size_t i, uint8_t v, int kind, chan_t k)
{
    if (kind == OUT_U8)
        ((uint8_t *)dst)[i] = v;
    else if (kind == OUT_F32 || kind == OUT_F32_NT)
        ((float *)dst)[i] = (float)v * k.s + k.b;
    else if (kind == OUT_BF16)
        ((uint16_t *)dst)[i] = bf16_rne((float)v * k.s + k.b);
    else
        ((uint16_t *)dst)[i] = k.lut[v];
}

/* Short rows (28 bytes for MNIST) cost more in a libc call than in the
 * copy: fixed-size memcpy chunks compile to plain vector moves. */
ALWAYS_INLINE void copy_u8(uint8_t *restrict d, const uint8_t *restrict p, size_t n)
{
    if (n >= 256) {
        memcpy(d, p, n);
        return;
    }
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        memcpy(d + i, p + i, 16);
    if (i + 8 <= n) {
        memcpy(d + i, p + i, 8);
        i += 8;
    }
    for (; i < n; i++)
        d[i] = p[i];
}

/* GCC vectorizes the mirrored byte copy only with AVX2's byte shuffle;
 * explicit 16- and 8-byte reversals (GCC vector extensions) serve both
 * copies. (The same treatment for the f32 and bf16 loops measured slower
 * than what the auto-vectorizer makes of them, so they stay plain.) */
#if defined(__GNUC__) && !defined(__clang__) && !defined(STK_NO_VECEXT)
#define VECEXT 1
typedef uint8_t v8u8 __attribute__((vector_size(8)));
typedef uint8_t v16u8 __attribute__((vector_size(16)));

ALWAYS_INLINE size_t run_u8_rev(uint8_t *restrict d, const uint8_t *restrict p, size_t n)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        v16u8 x;
        memcpy(&x, p - i - 15, sizeof x);
        x = __builtin_shuffle(x, (v16u8){15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0});
        memcpy(d + i, &x, sizeof x);
    }
    for (; i + 8 <= n; i += 8) {
        v8u8 x;
        memcpy(&x, p - i - 7, sizeof x);
        x = __builtin_shuffle(x, (v8u8){7, 6, 5, 4, 3, 2, 1, 0});
        memcpy(d + i, &x, sizeof x);
    }
    return i;
}
#else
#define VECEXT 0
#endif

/* n elements from p forward (p[i]) or mirrored (p[-i]) into dst + o. */
ALWAYS_INLINE void put_run(void *dst, size_t o, const uint8_t *restrict p, size_t n, int kind,
                           bool rev, chan_t k)
{
    if (kind == OUT_U8) {
        uint8_t *restrict d = (uint8_t *)dst + o;
        size_t i0 = 0;
        if (!rev) {
            copy_u8(d, p, n);
            return;
        }
#if VECEXT
        i0 = run_u8_rev(d, p, n);
#endif
        for (size_t i = i0; i < n; i++)
            d[i] = p[-(ptrdiff_t)i];
    } else if (kind == OUT_F32_NT) {
#if HAVE_STREAM
        run_f32_stream((float *)dst + o, p, n, rev, k.s, k.b);
#endif
    } else if (kind == OUT_F32) {
        float *restrict d = (float *)dst + o;
        const float s = k.s, b = k.b;
        if (!rev)
            for (size_t i = 0; i < n; i++)
                d[i] = (float)p[i] * s + b;
        else
            for (size_t i = 0; i < n; i++)
                d[i] = (float)p[-(ptrdiff_t)i] * s + b;
    } else if (kind == OUT_BF16) {
        uint16_t *restrict d = (uint16_t *)dst + o;
        const float s = k.s, b = k.b;
        if (!rev)
            for (size_t i = 0; i < n; i++)
                d[i] = bf16_rne((float)p[i] * s + b);
        else
            for (size_t i = 0; i < n; i++)
                d[i] = bf16_rne((float)p[-(ptrdiff_t)i] * s + b);
    } else {
        uint16_t *restrict d = (uint16_t *)dst + o;
        const uint16_t *restrict lut = k.lut;
        if (!rev)
            for (size_t i = 0; i < n; i++)
                d[i] = lut[p[i]];
        else
            for (size_t i = 0; i < n; i++)
                d[i] = lut[p[-(ptrdiff_t)i]];
    }
}

/* n copies of the value of u8 v. */
ALWAYS_INLINE void put_fill(void *dst, size_t o, uint8_t v, size_t n, int kind, chan_t k)
{
    if (n == 0) /* most rows have no padding: skip the call */
        return;
    if (kind == OUT_U8) {
        uint8_t *restrict d = (uint8_t *)dst + o;
        if (n >= 256)
            memset(d, v, n);
        else
            for (size_t i = 0; i < n; i++)
                d[i] = v;
    } else if (kind == OUT_F32 || kind == OUT_F32_NT) {
        float *restrict d = (float *)dst + o;
        const float f = (float)v * k.s + k.b;
        for (size_t i = 0; i < n; i++)
            d[i] = f;
    } else {
        uint16_t *restrict d = (uint16_t *)dst + o;
        const uint16_t f = kind == OUT_BF16 ? bf16_rne((float)v * k.s + k.b) : k.lut[v];
        for (size_t i = 0; i < n; i++)
            d[i] = f;
    }
}

static chan_t chan_of(const stk__aug_norm_t *norm, uint32_t ch)
{
    chan_t k = {0, 0, NULL};
    if (norm && norm->dtype != STK_DTYPE_F16) {
        k.s = norm->scale[ch];
        k.b = norm->bias[ch];
    } else if (norm) {
        k.lut = norm->lut + ch * 256u;
    }
    return k;
}

/* Reflect (no edge repeat, as torch's reflect padding) into [0, n). */
static inline int32_t reflect_idx(int32_t i, int32_t n)
{
    if (n == 1)
        return 0;
    while (i < 0 || i >= n)
        i = i < 0 ? -i : 2 * (n - 1) - i;
    return i;
}

ALWAYS_INLINE void window_impl(const uint8_t *src, uint32_t c, uint32_t h, uint32_t w,
                               const stk__aug_window_t *win, void *dst,
                               const stk__aug_norm_t *norm, int kind, bool rev)
{
    const int32_t oh = (int32_t)win->oh, ow = (int32_t)win->ow;
    const int32_t ih = (int32_t)h, iw = (int32_t)w;
    /* Columns: source x of output column ox is base + dir * ox. */
    const int32_t dir = rev ? -1 : 1;
    const int32_t base = rev ? win->x0 + ow - 1 : win->x0;
    /* The output columns [a, b) whose source lies inside the input. */
    int32_t a = rev ? base - iw + 1 : -win->x0, b = rev ? base + 1 : iw - win->x0;
    a = a < 0 ? 0 : a > ow ? ow : a;
    b = b < a ? a : b > ow ? ow : b;
    const size_t plane = (size_t)win->oh * win->ow;
    for (uint32_t ch = 0; ch < c; ch++) {
        const uint8_t *in = src + (size_t)ch * h * w;
        const chan_t k = chan_of(norm, ch);
        for (int32_t oy = 0; oy < oh; oy++) {
            size_t o = ch * plane + (size_t)oy * (size_t)ow;
            int32_t sy = win->y0 + (win->vflip ? oh - 1 - oy : oy);
            if (sy < 0 || sy >= ih) {
                if (!win->reflect) {
                    put_fill(dst, o, 0, (size_t)ow, kind, k);
                    continue;
                }
                sy = reflect_idx(sy, ih);
            }
            const uint8_t *row = in + (size_t)sy * w;
            if (win->reflect) {
                for (int32_t ox = 0; ox < a; ox++)
                    put(dst, o + (size_t)ox, row[reflect_idx(base + dir * ox, iw)], kind, k);
                for (int32_t ox = b; ox < ow; ox++)
                    put(dst, o + (size_t)ox, row[reflect_idx(base + dir * ox, iw)], kind, k);
            } else {
                put_fill(dst, o, 0, (size_t)a, kind, k);
                put_fill(dst, o + (size_t)b, 0, (size_t)(ow - b), kind, k);
            }
            if (b > a)
                put_run(dst, o + (size_t)a, row + base + dir * a, (size_t)(b - a), kind, rev, k);
        }
    }
}

static int out_kind(const stk__aug_norm_t *norm)
{
    return !norm                          ? OUT_U8
           : norm->dtype == STK_DTYPE_F32  ? OUT_F32
           : norm->dtype == STK_DTYPE_BF16 ? OUT_BF16
                                           : OUT_LUT;
}

/* Streaming pays for outputs of STREAM_MIN bytes and more. */
static bool stream_f32(size_t elems)
{
    return HAVE_STREAM && elems * sizeof(float) >= STREAM_MIN;
}

static void stream_done(void)
{
#if HAVE_STREAM
    _mm_sfence(); /* streamed stores are weakly ordered: order them before
                   * whatever publishes the output (the worker's done message) */
#endif
}

VEC_CLONES
void stk__aug_window(const uint8_t *src, uint32_t c, uint32_t h, uint32_t w,
                     const stk__aug_window_t *win, void *dst, const stk__aug_norm_t *norm)
{
    if (out_kind(norm) == OUT_F32 && stream_f32((size_t)c * win->oh * win->ow)) {
        if (win->hflip)
            window_impl(src, c, h, w, win, dst, norm, OUT_F32_NT, true);
        else
            window_impl(src, c, h, w, win, dst, norm, OUT_F32_NT, false);
        stream_done();
        return;
    }
    switch (out_kind(norm) * 2 + win->hflip) {
    case OUT_U8 * 2: window_impl(src, c, h, w, win, dst, norm, OUT_U8, false); break;
    case OUT_U8 * 2 + 1: window_impl(src, c, h, w, win, dst, norm, OUT_U8, true); break;
    case OUT_F32 * 2: window_impl(src, c, h, w, win, dst, norm, OUT_F32, false); break;
    case OUT_F32 * 2 + 1: window_impl(src, c, h, w, win, dst, norm, OUT_F32, true); break;
    case OUT_BF16 * 2: window_impl(src, c, h, w, win, dst, norm, OUT_BF16, false); break;
    case OUT_BF16 * 2 + 1: window_impl(src, c, h, w, win, dst, norm, OUT_BF16, true); break;
    case OUT_LUT * 2: window_impl(src, c, h, w, win, dst, norm, OUT_LUT, false); break;
    default: window_impl(src, c, h, w, win, dst, norm, OUT_LUT, true); break;
    }
}

VEC_CLONES
void stk__aug_normalize(const uint8_t *src, uint32_t c, size_t n, void *dst,
                        const stk__aug_norm_t *norm)
{
    int kind = out_kind(norm);
    if (kind == OUT_F32 && stream_f32((size_t)c * n)) {
        for (uint32_t ch = 0; ch < c; ch++)
            put_run(dst, ch * n, src + ch * n, n, OUT_F32_NT, false, chan_of(norm, ch));
        stream_done();
        return;
    }
    for (uint32_t ch = 0; ch < c; ch++) {
        const chan_t k = chan_of(norm, ch);
        if (kind == OUT_F32)
            put_run(dst, ch * n, src + ch * n, n, OUT_F32, false, k);
        else if (kind == OUT_BF16)
            put_run(dst, ch * n, src + ch * n, n, OUT_BF16, false, k);
        else if (kind == OUT_LUT)
            put_run(dst, ch * n, src + ch * n, n, OUT_LUT, false, k);
        else
            put_run(dst, ch * n, src + ch * n, n, OUT_U8, false, k);
    }
}

/* ---- bilinear resize ---------------------------------------------------- */

/* Per output column: two source columns and their weights; then two f32
 * rows holding the horizontal pass of the two source rows in use. */
typedef struct resize_tmp {
    int32_t *x0, *x1;
    float *wx0, *wx1, *row0, *row1;
    float *srcf; /* the box's part of one source row, as f32 */
} resize_tmp_t;

size_t stk__aug_resize_tmp_bytes(uint32_t ow, uint32_t iw)
{
    return ((size_t)ow * 6 + iw) * 4;
}

/* torch's area_pixel_compute_source_index for linear modes, in f32. */
static void linear_coeffs(uint32_t in, uint32_t out, uint32_t i, int32_t *i0, int32_t *i1, float *l0,
                          float *l1)
{
    float scale = (float)in / (float)out;
    float real = scale * ((float)i + 0.5f) - 0.5f;
    if (real < 0)
        real = 0;
    int32_t k = (int32_t)real;
    float lam = real - (float)k;
    if (lam > 1)
        lam = 1;
    *i0 = k;
    *i1 = k + (k < (int32_t)in - 1 ? 1 : 0);
    *l1 = lam;
    *l0 = 1.0f - lam;
}

/* Widening the row first (exact) lets the AVX2 copy gather f32 with
 * vgatherdps; byte gathers do not vectorize. */
ALWAYS_INLINE void hpass(float *restrict out, const uint8_t *restrict row, uint32_t bw,
                         float *restrict rowf, const int32_t *restrict x0,
                         const int32_t *restrict x1, const float *restrict w0,
                         const float *restrict w1, uint32_t ow)
{
    for (uint32_t i = 0; i < bw; i++)
        rowf[i] = (float)row[i];
    for (uint32_t i = 0; i < ow; i++)
        out[i] = rowf[x0[i]] * w0[i] + rowf[x1[i]] * w1[i];
}

/* One output row from the two horizontally interpolated source rows,
 * rounded to u8 and then (fused normalize) converted exactly as the
 * normalize pass would convert that u8. */
ALWAYS_INLINE void vpass(void *dst, size_t o, const float *restrict r0, const float *restrict r1,
                         float w0, float w1, uint32_t ow, int kind, chan_t k)
{
    for (uint32_t i = 0; i < ow; i++) {
        float v = r0[i] * w0 + r1[i] * w1;
        /* Round half to even as torch.round: for 0 <= v < 2^23, adding
         * 2^23 rounds to an integer in the default rounding mode, with no
         * libm call and no branch, so the loop vectorizes. Bilinear
         * weights keep v in [0, 255]; the integer clamp only guards the
         * last bit of the weights. */
        int32_t r = (int32_t)((v + 8388608.0f) - 8388608.0f);
        r = r < 0 ? 0 : r > 255 ? 255 : r;
        put(dst, o + i, (uint8_t)r, kind, k);
    }
}

ALWAYS_INLINE void resize_impl(const uint8_t *src, uint32_t c, uint32_t h, uint32_t w,
                               uint32_t top, uint32_t left, uint32_t bh, uint32_t bw, void *dst,
                               uint32_t oh, uint32_t ow, bool hflip, bool vflip,
                               const stk__aug_norm_t *norm, void *tmp, int kind)
{
    resize_tmp_t t;
    t.x0 = tmp;
    t.x1 = t.x0 + ow;
    t.wx0 = (float *)(t.x1 + ow);
    t.wx1 = t.wx0 + ow;
    t.row0 = t.wx1 + ow;
    t.row1 = t.row0 + ow;
    t.srcf = t.row1 + ow;
    /* A horizontal flip is only a mirrored column table. Columns count
     * from the box's left edge. */
    for (uint32_t i = 0; i < ow; i++) {
        uint32_t j = hflip ? ow - 1 - i : i;
        linear_coeffs(bw, ow, i, &t.x0[j], &t.x1[j], &t.wx0[j], &t.wx1[j]);
    }
    for (uint32_t ch = 0; ch < c; ch++) {
        const uint8_t *in = src + (size_t)ch * h * w;
        const chan_t k = chan_of(norm, ch);
        int32_t have0 = -1, have1 = -1; /* source rows now in row0, row1 */
        for (uint32_t oy = 0; oy < oh; oy++) {
            int32_t y0, y1;
            float wy0, wy1;
            linear_coeffs(bh, oh, oy, &y0, &y1, &wy0, &wy1);
            y0 += (int32_t)top;
            y1 += (int32_t)top;
            if (have0 != y0) {
                if (have1 == y0) {
                    float *sw = t.row0;
                    t.row0 = t.row1;
                    t.row1 = sw;
                    have0 = y0;
                    have1 = -1;
                } else {
                    hpass(t.row0, in + (size_t)y0 * w + left, bw, t.srcf, t.x0, t.x1, t.wx0, t.wx1,
                          ow);
                    have0 = y0;
                }
            }
            if (have1 != y1) {
                hpass(t.row1, in + (size_t)y1 * w + left, bw, t.srcf, t.x0, t.x1, t.wx0, t.wx1, ow);
                have1 = y1;
            }
            uint32_t ry = vflip ? oh - 1 - oy : oy;
            vpass(dst, ((size_t)ch * oh + ry) * ow, t.row0, t.row1, wy0, wy1, ow, kind, k);
        }
    }
}

VEC_CLONES
void stk__aug_resize(const uint8_t *src, uint32_t c, uint32_t h, uint32_t w, uint32_t top,
                     uint32_t left, uint32_t bh, uint32_t bw, void *dst, uint32_t oh, uint32_t ow,
                     bool hflip, bool vflip, const stk__aug_norm_t *norm, void *tmp)
{
    switch (out_kind(norm)) {
    case OUT_U8:
        resize_impl(src, c, h, w, top, left, bh, bw, dst, oh, ow, hflip, vflip, norm, tmp, OUT_U8);
        break;
    case OUT_F32:
        resize_impl(src, c, h, w, top, left, bh, bw, dst, oh, ow, hflip, vflip, norm, tmp, OUT_F32);
        break;
    case OUT_BF16:
        resize_impl(src, c, h, w, top, left, bh, bw, dst, oh, ow, hflip, vflip, norm, tmp, OUT_BF16);
        break;
    default:
        resize_impl(src, c, h, w, top, left, bh, bw, dst, oh, ow, hflip, vflip, norm, tmp, OUT_LUT);
        break;
    }
}

/* ---- random resized crop parameters ------------------------------------- */

void stk__aug_rrc_params(uint32_t h, uint32_t w, const double scale[2], const double ratio[2],
                         stk_rng_t *rng, uint32_t box[4])
{
    double area = (double)h * w;
    double lr0 = log(ratio[0]), lr1 = log(ratio[1]);
    for (int attempt = 0; attempt < 10; attempt++) {
        double target = area * (scale[0] + (scale[1] - scale[0]) * stk_rng_uniform_f64(rng));
        double ar = exp(lr0 + (lr1 - lr0) * stk_rng_uniform_f64(rng));
        /* Python's round(): half to even, as nearbyint in the default mode. */
        double cw = nearbyint(sqrt(target * ar)), chh = nearbyint(sqrt(target / ar));
        if (cw > 0 && cw <= w && chh > 0 && chh <= h) {
            uint32_t bh = (uint32_t)chh, bw = (uint32_t)cw;
            box[0] = (uint32_t)stk_rng_below(rng, h - bh + 1);
            box[1] = (uint32_t)stk_rng_below(rng, w - bw + 1);
            box[2] = bh;
            box[3] = bw;
            return;
        }
    }
    double in_ratio = (double)w / (double)h;
    uint32_t bh = h, bw = w;
    if (in_ratio < ratio[0])
        bh = (uint32_t)nearbyint(w / ratio[0]);
    else if (in_ratio > ratio[1])
        bw = (uint32_t)nearbyint(h * ratio[1]);
    box[0] = (h - bh) / 2;
    box[1] = (w - bw) / 2;
    box[2] = bh;
    box[3] = bw;
}

/* ---- rot90, jitter, cutout, layout -------------------------------------- */

void stk__aug_rot90(const uint8_t *src, uint32_t c, uint32_t h, uint32_t w, int k, uint8_t *dst)
{
    k &= 3;
    size_t plane = (size_t)h * w;
    for (uint32_t ch = 0; ch < c; ch++) {
        const uint8_t *in = src + ch * plane;
        uint8_t *out = dst + ch * plane;
        if (k == 0) {
            memcpy(out, in, plane);
        } else if (k == 2) {
            for (uint32_t y = 0; y < h; y++)
                put_run(out, (size_t)y * w, in + (size_t)(h - 1 - y) * w + w - 1, w, OUT_U8, true,
                        (chan_t){0, 0, NULL});
        } else if (k == 1) {
            /* out is w x h: out[i][j] = in[j][w-1-i] */
            for (uint32_t i = 0; i < w; i++)
                for (uint32_t j = 0; j < h; j++)
                    out[(size_t)i * h + j] = in[(size_t)j * w + (w - 1 - i)];
        } else {
            /* out[i][j] = in[h-1-j][i] */
            for (uint32_t i = 0; i < w; i++)
                for (uint32_t j = 0; j < h; j++)
                    out[(size_t)i * h + j] = in[(size_t)(h - 1 - j) * w + i];
        }
    }
}

static void scale_clamp(uint8_t *dst, const uint8_t *src, size_t n, float f,
                        float add)
{
    for (size_t i = 0; i < n; i++) {
        float v = (float)src[i] * f + add;
        v = v < 0 ? 0 : v > 255 ? 255 : v;
        dst[i] = (uint8_t)(int32_t)v;
    }
}

VEC_CLONES
void stk__aug_jitter(const uint8_t *src, uint32_t c, uint32_t h, uint32_t w, float bf, float cf,
                     uint8_t *dst)
{
    size_t plane = (size_t)h * w, n = plane * c;
    if (bf != 1.0f)
        scale_clamp(dst, src, n, bf, 0.0f);
    else if (dst != src)
        memcpy(dst, src, n);
    if (cf == 1.0f)
        return;
    /* Sum of the grayscale image: exact in u64, then f32 as torch.mean. */
    uint64_t sum = 0;
    if (c == 3) {
        for (size_t i = 0; i < plane; i++) {
            float g = 0.2989f * dst[i] + 0.587f * dst[plane + i] + 0.114f * dst[2 * plane + i];
            sum += (uint8_t)(int32_t)g;
        }
        n = plane;
    } else {
        for (size_t i = 0; i < n; i++)
            sum += dst[i];
    }
    float mean = (float)((double)sum / (double)n);
    /* (cf * x + (1 - cf) * mean) */
    scale_clamp(dst, dst, plane * c, cf, (1.0f - cf) * mean);
}

void stk__aug_fill_box(uint8_t *img, uint32_t c, uint32_t h, uint32_t w, uint32_t y0, uint32_t x0,
                       uint32_t y1, uint32_t x1, uint8_t fill)
{
    if (x1 <= x0)
        return;
    for (uint32_t ch = 0; ch < c; ch++)
        for (uint32_t y = y0; y < y1; y++)
            memset(img + ((size_t)ch * h + y) * w + x0, fill, x1 - x0);
}

void stk__aug_hwc_to_chw(const uint8_t *src, uint32_t c, uint32_t h, uint32_t w, uint8_t *dst)
{
    size_t plane = (size_t)h * w;
    for (uint32_t ch = 0; ch < c; ch++)
        for (size_t i = 0; i < plane; i++)
            dst[ch * plane + i] = src[i * c + ch];
}
