/* SPDX-License-Identifier: MIT */
/* The CPU's emulation of bf16 / fp16 compute (engine/cpu/cpu_dnnl.c,
 * cpu_half.c): the array rounding against common/dtype.c's conversions bit
 * for bit; convolution and inner product, forward and both backward
 * directions, against a reference written here (inputs rounded, the
 * product in double, the output rounded) and against fp32 within the
 * half type's error bound; fp16 overflowing to infinity in an op and, in
 * training, a real fp16 overflow of the gradients skipping the step; two
 * runs giving the same bits; the loss scaler's state through a
 * checkpoint. */
#define _GNU_SOURCE
#include <errno.h>
#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine/cpu/cpu_half.h"
#include "engine/layer.h"
#include "stoker/engine.h"
#include "stoker/train.h"

static float round_ref(stk_precision_t p, float x)
{
    return p == STK_PRECISION_BF16 ? stk_bf16_to_f32(stk_f32_to_bf16(x)) : stk_f16_to_f32(stk_f32_to_f16(x));
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* The array rounding equals the scalar conversions on every kind of value:
 * a sweep over the whole fp32 bit space (stride 4099), ties, the edges of
 * fp16's range and subnormals, infinities and NaNs; a length that is not a
 * multiple of the vector width; in place and out of place. */
static void test_round_matches_dtype(void **state)
{
    (void)state;
    static const uint32_t special[] = {
        0x00000000u, 0x80000000u, 0x00000001u, 0x807FFFFFu, 0x7F800000u, 0xFF800000u, 0x7F800001u, 0xFFC00000u,
        0x7FA00000u, 0x7F7FFFFFu, 0xFF7FFFFFu, 0x3F808000u, 0x3F818000u, 0x3F808001u, 0x477FE000u, 0x477FEFFFu,
        0x477FF000u, 0xC77FF000u, 0x47800000u, 0x33000000u, 0x33000001u, 0x33800000u, 0x33C00000u, 0x387FE000u,
        0x387FF000u, 0x38800000u, 0x3F800000u, 0xBF7FFFFFu,
    };
    size_t ns = sizeof special / sizeof *special, n = ((size_t)1 << 20) + 5;
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    assert_non_null(x);
    assert_non_null(y);
    for (size_t i = 0; i < n; i++)
        x[i] = bits_f32(i < ns ? special[i] : (uint32_t)(i * 4099u));
    stk_precision_t ps[2] = {STK_PRECISION_BF16, STK_PRECISION_FP16};
    for (int k = 0; k < 2; k++) {
        for (int inplace = 0; inplace < 2; inplace++) {
            if (inplace) {
                memcpy(y, x, n * sizeof *x);
                stk__cpu_round_half(ps[k], n, y, y);
            } else {
                stk__cpu_round_half(ps[k], n, x, y);
            }
            for (size_t i = 0; i < n; i++) {
                float want = round_ref(ps[k], x[i]);
                if (f32_bits(want) != f32_bits(y[i]))
                    fail_msg("%s: 0x%08x rounds to 0x%08x, dtype.c says 0x%08x", stk_precision_name(ps[k]),
                             f32_bits(x[i]), f32_bits(y[i]), f32_bits(want));
            }
        }
    }
    /* The cases that matter for loss scaling and range. */
    assert_true(isinf(round_ref(STK_PRECISION_FP16, 65520.0f)));
    assert_true(round_ref(STK_PRECISION_FP16, 65519.0f) == 65504.0f);
    assert_true(isfinite(round_ref(STK_PRECISION_BF16, 1e38f)));
    stk__cpu_round_half(STK_PRECISION_FP32, n, x, y);
    assert_memory_equal(x, y, n * sizeof *x);
    free(x);
    free(y);
}

/* ---- Per-op checks against a reference ------------------------------------ */

typedef struct lcg {
    uint64_t s;
} lcg_t;

static float uni(lcg_t *g)
{
    g->s = g->s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((g->s >> 40) & 0xFFFFFF) / 8388608.0f - 1.0f; /* [-1, 1) */
}

static void fill(lcg_t *g, float *v, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++)
        v[i] = uni(g) * scale;
}

/* The unit roundoff of the half type (2^-8 for bf16's 8 significant bits,
 * 2^-11 for fp16's 11) and the spacing of its values around v. */
static double unit_roundoff(stk_precision_t p)
{
    return p == STK_PRECISION_BF16 ? 0x1p-8 : 0x1p-11;
}

static double half_ulp_at(stk_precision_t p, double v)
{
    int e;
    frexp(fabs(v), &e); /* |v| in [2^(e-1), 2^e) */
    double ulp = ldexp(1.0, e - 1 - (p == STK_PRECISION_BF16 ? 7 : 10));
    double tiny = p == STK_PRECISION_BF16 ? 0x1p-133 : 0x1p-24; /* subnormal spacing */
    return ulp > tiny ? ulp : tiny;
}

/* One output compared three ways. ref: the reference from rounded inputs
 * (double); abs: the sum of the absolute values of its terms; r32: the
 * reference from the unrounded inputs; add: the bias added after
 * rounding (0: none). got must be the rounded reference (plus add) up to
 * one spacing of the half type where fp32 accumulation lands the sum on
 * the other side of a rounding boundary, and within the half type's
 * error bound of the fp32 result. */
typedef struct cmp {
    stk_precision_t p;
    size_t n, exact, differs_fp32;
    const char *what;
} cmp_t;

static void check_one(cmp_t *c, size_t i, float got, double ref, double abs, double r32, float add)
{
    float want = round_ref(c->p, (float)ref) + add;
    c->n++;
    if (f32_bits(want) == f32_bits(got)) {
        c->exact++;
    } else {
        double tol = half_ulp_at(c->p, ref) + 8 * FLT_EPSILON * (abs + fabs((double)add));
        if (!(fabs((double)got - (double)want) <= tol))
            fail_msg("%s %s [%zu]: %.9g, reference %.9g (tolerance %.3g)", stk_precision_name(c->p), c->what, i,
                     (double)got, (double)want, tol);
    }
    double u = unit_roundoff(c->p);
    /* Each product of two rounded factors is within 2u + u^2 of the exact
     * one, the rounded result within u of the sum. */
    double bound = (2 * u + u * u) * abs + u * (fabs(r32) + (2 * u + u * u) * abs) + 1e-6 * (1 + abs);
    if (!(fabs((double)got - add - r32) <= bound))
        fail_msg("%s %s [%zu]: %.9g is %.3g from fp32's %.9g, over the bound %.3g", stk_precision_name(c->p), c->what,
                 i, (double)got - add, fabs((double)got - add - r32), r32, bound);
    if (fabs((double)got - add - r32) > 0)
        c->differs_fp32++;
}

static void cmp_done(const cmp_t *c)
{
    /* The fp32 accumulation order moves a sum across a rounding boundary
     * of the half type only rarely; most outputs are the reference's bits. */
    if (c->exact * 100 < c->n * 99)
        fail_msg("%s %s: only %zu of %zu outputs equal the reference", stk_precision_name(c->p), c->what, c->exact,
                 c->n);
    /* ... and the emulation is not fp32 under another name. */
    if (c->differs_fp32 == 0)
        fail_msg("%s %s: every output equals fp32's", stk_precision_name(c->p), c->what);
}

static void expect_representable(stk_precision_t p, const float *v, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++)
        if (f32_bits(round_ref(p, v[i])) != f32_bits(v[i]))
            fail_msg("%s %s [%zu] = %.9g is not a %s value", stk_precision_name(p), what, i, (double)v[i],
                     stk_precision_name(p));
}

/* NCHW <-> nChw8c (c a multiple of 8). */
static void to_blocked(int64_t n, int64_t c, int64_t hw, const float *src, float *dst)
{
    for (int64_t i = 0; i < n; i++)
        for (int64_t k = 0; k < c; k++)
            for (int64_t j = 0; j < hw; j++)
                dst[((i * (c / 8) + k / 8) * hw + j) * 8 + k % 8] = src[(i * c + k) * hw + j];
}

static void from_blocked(int64_t n, int64_t c, int64_t hw, const float *src, float *dst)
{
    for (int64_t i = 0; i < n; i++)
        for (int64_t k = 0; k < c; k++)
            for (int64_t j = 0; j < hw; j++)
                dst[(i * c + k) * hw + j] = src[((i * (c / 8) + k / 8) * hw + j) * 8 + k % 8];
}

/* The index of input pixel (ih, iw) that output (oh, ow) reads with tap
 * (a, b), or -1 in the padding. */
static int64_t tap(const stk__conv_desc_t *d, int64_t oh, int64_t ow, int64_t a, int64_t b)
{
    int64_t ih = oh * d->sh - d->ph + a * d->dh, iw = ow * d->sw - d->pw + b * d->dw;
    if (ih < 0 || ih >= d->ih || iw < 0 || iw >= d->iw)
        return -1;
    return ih * d->iw + iw;
}

typedef struct conv_ref {
    double *y, *ya, *dx, *dxa, *dw, *dwa, *db;
} conv_ref_t;

/* Direct convolution in double (groups 1): y, dx and dw with the sums of
 * the absolute values of their terms. */
static void conv_reference(const stk__conv_desc_t *d, const float *x, const float *w, const float *dy, conv_ref_t *r)
{
    int64_t ohw = d->oh * d->ow, ihw = d->ih * d->iw, kk = d->kh * d->kw;
    size_t ny = (size_t)(d->n * d->oc * ohw), nx = (size_t)(d->n * d->ic * ihw), nw = (size_t)(d->oc * d->ic * kk);
    memset(r->y, 0, ny * sizeof(double));
    memset(r->ya, 0, ny * sizeof(double));
    memset(r->dx, 0, nx * sizeof(double));
    memset(r->dxa, 0, nx * sizeof(double));
    memset(r->dw, 0, nw * sizeof(double));
    memset(r->dwa, 0, nw * sizeof(double));
    memset(r->db, 0, (size_t)d->oc * sizeof(double));
    for (int64_t n = 0; n < d->n; n++)
        for (int64_t o = 0; o < d->oc; o++)
            for (int64_t p = 0; p < ohw; p++) {
                size_t yi = (size_t)((n * d->oc + o) * ohw + p);
                r->db[o] += dy[yi];
                for (int64_t c = 0; c < d->ic; c++)
                    for (int64_t a = 0; a < d->kh; a++)
                        for (int64_t b = 0; b < d->kw; b++) {
                            int64_t t = tap(d, p / d->ow, p % d->ow, a, b);
                            if (t < 0)
                                continue;
                            size_t xi = (size_t)((n * d->ic + c) * ihw + t);
                            size_t wi = (size_t)(((o * d->ic + c) * d->kh + a) * d->kw + b);
                            double v = (double)x[xi] * w[wi], g = (double)dy[yi] * w[wi], h = (double)dy[yi] * x[xi];
                            r->y[yi] += v;
                            r->ya[yi] += fabs(v);
                            r->dx[xi] += g;
                            r->dxa[xi] += fabs(g);
                            r->dw[wi] += h;
                            r->dwa[wi] += fabs(h);
                        }
            }
}

static double *dalloc(size_t n)
{
    double *p = calloc(n ? n : 1, sizeof(double));
    assert_non_null(p);
    return p;
}

static conv_ref_t ref_alloc(size_t ny, size_t nx, size_t nw, size_t nb)
{
    conv_ref_t r = {dalloc(ny), dalloc(ny), dalloc(nx), dalloc(nx), dalloc(nw), dalloc(nw), dalloc(nb)};
    return r;
}

static void ref_free(conv_ref_t *r)
{
    free(r->y);
    free(r->ya);
    free(r->dx);
    free(r->dxa);
    free(r->dw);
    free(r->dwa);
    free(r->db);
}

static float *rounded(stk_precision_t p, const float *v, size_t n)
{
    float *r = malloc(n * sizeof *r);
    assert_non_null(r);
    for (size_t i = 0; i < n; i++)
        r[i] = round_ref(p, v[i]);
    return r;
}

/* One convolution in one precision through the backend's slots, all
 * three directions, activations in the layout d asks for (converted from
 * and to NCHW here). */
static void conv_run(stk_precision_t p, const stk__conv_desc_t *d, const float *x, const float *w, const float *b,
                     const float *dy, float *y, float *dx, float *dw, float *db)
{
    stk__backend_t be;
    assert_int_equal(stk__backend_open(&be, STK_DEVICE_CPU), 0);
    stk_precision_t used;
    assert_int_equal(be.iface->set_precision(be.ctx, p, &used), 0);
    assert_int_equal(used, p == STK_PRECISION_TF32 ? STK_PRECISION_FP32 : p);
    stk__op_t *op = NULL;
    if (be.iface->conv_create(be.ctx, d, &op) != 0)
        fail_msg("conv_create: %s", stk_error_message());
    int64_t ohw = d->oh * d->ow, ihw = d->ih * d->iw;
    size_t ny = (size_t)(d->n * d->oc * ohw), nx = (size_t)(d->n * d->ic * ihw);
    float *bx = be.iface->alloc(be.ctx, nx * sizeof(float)), *bdx = be.iface->alloc(be.ctx, nx * sizeof(float));
    float *by = be.iface->alloc(be.ctx, ny * sizeof(float)), *bdy = be.iface->alloc(be.ctx, ny * sizeof(float));
    if (d->fmt_in == STK__LAYOUT_BLOCKED8)
        to_blocked(d->n, d->ic, ihw, x, bx);
    else
        memcpy(bx, x, nx * sizeof(float));
    if (d->fmt_out == STK__LAYOUT_BLOCKED8)
        to_blocked(d->n, d->oc, ohw, dy, bdy);
    else
        memcpy(bdy, dy, ny * sizeof(float));
    assert_int_equal(be.iface->conv_forward(be.ctx, op, bx, w, d->bias ? b : NULL, by), 0);
    assert_int_equal(be.iface->conv_backward_data(be.ctx, op, bdy, w, bdx), 0);
    assert_int_equal(be.iface->conv_backward_weights(be.ctx, op, bx, bdy, dw, d->bias ? db : NULL), 0);
    if (d->fmt_out == STK__LAYOUT_BLOCKED8)
        from_blocked(d->n, d->oc, ohw, by, y);
    else
        memcpy(y, by, ny * sizeof(float));
    if (d->fmt_in == STK__LAYOUT_BLOCKED8)
        from_blocked(d->n, d->ic, ihw, bdx, dx);
    else
        memcpy(dx, bdx, nx * sizeof(float));
    be.iface->free(be.ctx, bx);
    be.iface->free(be.ctx, bdx);
    be.iface->free(be.ctx, by);
    be.iface->free(be.ctx, bdy);
    be.iface->op_destroy(be.ctx, op);
    stk__backend_close(&be);
}

static void conv_case(stk_precision_t p, stk__conv_desc_t d, uint64_t seed)
{
    lcg_t g = {seed};
    int64_t ohw = d.oh * d.ow, ihw = d.ih * d.iw;
    size_t ny = (size_t)(d.n * d.oc * ohw), nx = (size_t)(d.n * d.ic * ihw), nw = (size_t)(d.oc * d.ic * d.kh * d.kw);
    float *x = malloc(nx * 4), *w = malloc(nw * 4), *b = malloc((size_t)d.oc * 4), *dy = malloc(ny * 4);
    float *y = malloc(ny * 4), *dx = malloc(nx * 4), *dw = malloc(nw * 4), *db = malloc((size_t)d.oc * 4);
    fill(&g, x, nx, 2.0f);
    fill(&g, w, nw, 0.5f);
    fill(&g, b, (size_t)d.oc, 1.0f);
    fill(&g, dy, ny, 0.01f);
    conv_run(p, &d, x, w, b, dy, y, dx, dw, db);
    float *xr = rounded(p, x, nx), *wr = rounded(p, w, nw), *dyr = rounded(p, dy, ny);
    conv_ref_t h = ref_alloc(ny, nx, nw, (size_t)d.oc), f = ref_alloc(ny, nx, nw, (size_t)d.oc);
    conv_reference(&d, xr, wr, dyr, &h);
    conv_reference(&d, x, w, dy, &f);
    cmp_t cy = {p, 0, 0, 0, "conv y"}, cdx = {p, 0, 0, 0, "conv dx"}, cdw = {p, 0, 0, 0, "conv dw"};
    for (size_t i = 0; i < ny; i++)
        check_one(&cy, i, y[i], h.y[i], h.ya[i], f.y[i], d.bias ? b[(i / (size_t)ohw) % (size_t)d.oc] : 0.0f);
    for (size_t i = 0; i < nx; i++)
        check_one(&cdx, i, dx[i], h.dx[i], h.dxa[i], f.dx[i], 0.0f);
    for (size_t i = 0; i < nw; i++)
        check_one(&cdw, i, dw[i], h.dw[i], h.dwa[i], f.dw[i], 0.0f);
    cmp_done(&cy);
    cmp_done(&cdx);
    cmp_done(&cdw);
    expect_representable(p, dx, nx, "conv dx");
    expect_representable(p, dw, nw, "conv dw");
    if (!d.bias)
        expect_representable(p, y, ny, "conv y");
    /* The bias gradient is fp32's sum of the unrounded dy. */
    for (int64_t o = 0; d.bias && o < d.oc; o++)
        if (!(fabs((double)db[o] - f.db[o]) <= 1e-6 * (1 + fabs(f.db[o]))))
            fail_msg("%s conv db[%lld] = %.9g, sum of dy %.9g", stk_precision_name(p), (long long)o, (double)db[o],
                     f.db[o]);
    ref_free(&h);
    ref_free(&f);
    free(xr);
    free(wr);
    free(dyr);
    free(x);
    free(w);
    free(b);
    free(dy);
    free(y);
    free(dx);
    free(dw);
    free(db);
}

static void test_conv_vs_reference(void **state)
{
    (void)state;
    /* Plain layouts, stride 2 with padding, bias. */
    stk__conv_desc_t a = {.n = 2, .ic = 3, .ih = 9, .iw = 7, .oc = 5, .oh = 5, .ow = 4, .kh = 3, .kw = 3, .sh = 2,
                          .sw = 2, .ph = 1, .pw = 1, .dh = 1, .dw = 1, .groups = 1, .bias = 1};
    /* Blocked activations (nChw8c), dilation 2, bias: the bias add and
     * its gradient walk the blocks. */
    stk__conv_desc_t b = {.n = 2, .ic = 8, .ih = 8, .iw = 8, .oc = 16, .oh = 8, .ow = 8, .kh = 3, .kw = 3, .sh = 1,
                          .sw = 1, .ph = 2, .pw = 2, .dh = 2, .dw = 2, .groups = 1, .bias = 1,
                          .fmt_in = STK__LAYOUT_BLOCKED8, .fmt_out = STK__LAYOUT_BLOCKED8};
    /* No bias: y itself is a half value. */
    stk__conv_desc_t c = {.n = 3, .ic = 4, .ih = 6, .iw = 6, .oc = 6, .oh = 6, .ow = 6, .kh = 3, .kw = 3, .sh = 1,
                          .sw = 1, .ph = 1, .pw = 1, .dh = 1, .dw = 1, .groups = 1, .bias = 0};
    stk_precision_t ps[2] = {STK_PRECISION_BF16, STK_PRECISION_FP16};
    for (int k = 0; k < 2; k++) {
        conv_case(ps[k], a, 11);
        conv_case(ps[k], b, 12);
        conv_case(ps[k], c, 13);
    }
}

static void linear_case(stk_precision_t p, int64_t n, int64_t in, int64_t out, int bias, uint64_t seed)
{
    lcg_t g = {seed};
    size_t nx = (size_t)(n * in), ny = (size_t)(n * out), nw = (size_t)(out * in);
    float *x = malloc(nx * 4), *w = malloc(nw * 4), *b = malloc((size_t)out * 4), *dy = malloc(ny * 4);
    float *y = malloc(ny * 4), *dx = malloc(nx * 4), *dw = malloc(nw * 4), *db = malloc((size_t)out * 4);
    fill(&g, x, nx, 3.0f);
    fill(&g, w, nw, 0.25f);
    fill(&g, b, (size_t)out, 1.0f);
    fill(&g, dy, ny, 0.1f);
    stk__backend_t be;
    assert_int_equal(stk__backend_open(&be, STK_DEVICE_CPU), 0);
    stk_precision_t used;
    assert_int_equal(be.iface->set_precision(be.ctx, p, &used), 0);
    stk__linear_desc_t d = {.n = n, .in = in, .out = out, .bias = bias};
    stk__op_t *op = NULL;
    assert_int_equal(be.iface->linear_create(be.ctx, &d, &op), 0);
    assert_int_equal(be.iface->linear_forward(be.ctx, op, x, w, bias ? b : NULL, y), 0);
    assert_int_equal(be.iface->linear_backward_data(be.ctx, op, dy, w, dx), 0);
    assert_int_equal(be.iface->linear_backward_weights(be.ctx, op, x, dy, dw, bias ? db : NULL), 0);
    be.iface->op_destroy(be.ctx, op);
    stk__backend_close(&be);

    float *xr = rounded(p, x, nx), *wr = rounded(p, w, nw), *dyr = rounded(p, dy, ny);
    cmp_t cy = {p, 0, 0, 0, "linear y"}, cdx = {p, 0, 0, 0, "linear dx"}, cdw = {p, 0, 0, 0, "linear dw"};
    for (int64_t i = 0; i < n; i++)
        for (int64_t o = 0; o < out; o++) {
            double s = 0, a = 0, s32 = 0;
            for (int64_t j = 0; j < in; j++) {
                double v = (double)xr[i * in + j] * wr[o * in + j];
                s += v;
                a += fabs(v);
                s32 += (double)x[i * in + j] * w[o * in + j];
            }
            check_one(&cy, (size_t)(i * out + o), y[i * out + o], s, a, s32, bias ? b[o] : 0.0f);
        }
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < in; j++) {
            double s = 0, a = 0, s32 = 0;
            for (int64_t o = 0; o < out; o++) {
                double v = (double)dyr[i * out + o] * wr[o * in + j];
                s += v;
                a += fabs(v);
                s32 += (double)dy[i * out + o] * w[o * in + j];
            }
            check_one(&cdx, (size_t)(i * in + j), dx[i * in + j], s, a, s32, 0.0f);
        }
    for (int64_t o = 0; o < out; o++)
        for (int64_t j = 0; j < in; j++) {
            double s = 0, a = 0, s32 = 0;
            for (int64_t i = 0; i < n; i++) {
                double v = (double)dyr[i * out + o] * xr[i * in + j];
                s += v;
                a += fabs(v);
                s32 += (double)dy[i * out + o] * x[i * in + j];
            }
            check_one(&cdw, (size_t)(o * in + j), dw[o * in + j], s, a, s32, 0.0f);
        }
    cmp_done(&cy);
    cmp_done(&cdx);
    cmp_done(&cdw);
    expect_representable(p, dx, nx, "linear dx");
    expect_representable(p, dw, nw, "linear dw");
    if (!bias)
        expect_representable(p, y, ny, "linear y");
    for (int64_t o = 0; bias && o < out; o++) {
        double s = 0;
        for (int64_t i = 0; i < n; i++)
            s += dy[i * out + o];
        if (!(fabs((double)db[o] - s) <= 1e-6 * (1 + fabs(s))))
            fail_msg("%s linear db[%lld] = %.9g, sum of dy %.9g", stk_precision_name(p), (long long)o,
                     (double)db[o], s);
    }
    free(xr);
    free(wr);
    free(dyr);
    free(x);
    free(w);
    free(b);
    free(dy);
    free(y);
    free(dx);
    free(dw);
    free(db);
}

static void test_linear_vs_reference(void **state)
{
    (void)state;
    stk_precision_t ps[2] = {STK_PRECISION_BF16, STK_PRECISION_FP16};
    for (int k = 0; k < 2; k++) {
        linear_case(ps[k], 7, 53, 11, 1, 21);
        linear_case(ps[k], 16, 40, 24, 0, 22);
    }
}

/* A product past fp16's largest value (65504) is infinite in fp16, as on
 * a GPU, and an ordinary number in bf16; the bias is added after. */
static void test_fp16_overflow_op(void **state)
{
    (void)state;
    float x[2] = {300, 300}, w[2] = {150, 150}, b[1] = {1}, y[1];
    stk_precision_t ps[2] = {STK_PRECISION_BF16, STK_PRECISION_FP16};
    for (int k = 0; k < 2; k++) {
        stk__backend_t be;
        assert_int_equal(stk__backend_open(&be, STK_DEVICE_CPU), 0);
        stk_precision_t used;
        assert_int_equal(be.iface->set_precision(be.ctx, ps[k], &used), 0);
        stk__linear_desc_t d = {.n = 1, .in = 2, .out = 1, .bias = 1};
        stk__op_t *op = NULL;
        assert_int_equal(be.iface->linear_create(be.ctx, &d, &op), 0);
        assert_int_equal(be.iface->linear_forward(be.ctx, op, x, w, b, y), 0);
        if (ps[k] == STK_PRECISION_FP16)
            assert_true(isinf(y[0]) && y[0] > 0);
        else
            assert_true(y[0] == 90112.0f + 1.0f); /* 90000 to bf16's spacing of 512 */
        be.iface->op_destroy(be.ctx, op);
        stk__backend_close(&be);
    }
}

/* ---- In a model ------------------------------------------------------------ */

static const char small_model[] = "input shape=1,6,6\n"
                                  "conv2d name=conv1 out=8 kernel=3 pad=1\n"
                                  "batchnorm2d name=bn1\n"
                                  "relu\n"
                                  "maxpool2d kernel=2\n"
                                  "flatten\n"
                                  "linear name=fc out=3\n"
                                  "cross_entropy\n";

enum { N = 8, F = 36 };

static stk_model_t *make_model(stk_precision_t p)
{
    stk_model_builder_t *b = NULL;
    assert_int_equal(stk_model_builder_create(&b), 0);
    assert_int_equal(stk_model_builder_parse(b, small_model, "test.model"), 0);
    stk_model_config_t mc;
    stk_model_config_default(&mc);
    mc.batch_size = N;
    mc.seed = 3;
    mc.threads = 1;
    mc.precision = p;
    stk_model_t *m = NULL;
    int rc = stk_model_create(&m, b, &mc);
    stk_model_builder_destroy(&b);
    if (rc)
        fail_msg("model: %s", stk_error_message());
    assert_int_equal(stk_model_precision(m), p);
    return m;
}

typedef struct run {
    stk_model_t *m;
    stk_optim_t *o;
    stk_train_stepper_t *s;
} run_t;

static run_t make_run(stk_precision_t p, double init_scale)
{
    run_t r = {make_model(p), NULL, NULL};
    assert_int_equal(stk_optim_create_for_model(&r.o, r.m, "sgd:lr=0.1,momentum=0.9"), 0);
    stk_train_stepper_config_t c;
    stk_train_stepper_config_default(&c);
    if (init_scale > 0) {
        stk_loss_scaler_config_default(&c.loss_scaling);
        c.loss_scaling.init_scale = init_scale;
    }
    assert_int_equal(stk_train_stepper_create(&r.s, r.m, r.o, NULL, &c), 0);
    return r;
}

static void free_run(run_t *r)
{
    stk_train_stepper_destroy(&r->s);
    stk_optim_destroy(&r->o);
    stk_model_destroy(&r->m);
}

static void batch(int k, float *xs, int64_t *ys, stk_tensor_t *x, stk_tensor_t *y)
{
    lcg_t g = {100 + (uint64_t)k};
    fill(&g, xs, N * F, 1.5f);
    for (int i = 0; i < N; i++)
        ys[i] = (i + k) % 3;
    int64_t xshape[4] = {N, 1, 6, 6}, yshape[1] = {N};
    assert_int_equal(stk_tensor_init(x, xs, STK_DTYPE_F32, 4, xshape), 0);
    assert_int_equal(stk_tensor_init(y, ys, STK_DTYPE_I64, 1, yshape), 0);
}

static void expect_same_floats(const float *a, const float *b, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++)
        if (f32_bits(a[i]) != f32_bits(b[i]))
            fail_msg("%s differ at %zu: %.9g vs %.9g", what, i, (double)a[i], (double)b[i]);
}

/* A real fp16 overflow: with a loss scale of 2^24 the scaled loss
 * gradient (about 2^24 x 0.3 / 8) is finite in fp32 but past fp16's
 * range, so the linear layer's rounded dy is infinite and its gradients
 * are not finite: the step is skipped with every parameter (and the
 * optimizer's momentum, seen through the next step) unchanged, and the
 * scale halves. The same step in bf16 and fp32 is taken. The scale comes
 * down by halves until a step fits. */
/* The memory estimate counts the half-precision copies: a third copy of
 * the activations over fp32's two, the parameters' share the same. */
static void test_memory_estimate(void **state)
{
    (void)state;
    uint64_t est[3] = {0};
    size_t nparams = 0;
    const stk_precision_t ps[3] = {STK_PRECISION_FP32, STK_PRECISION_BF16, STK_PRECISION_FP16};
    for (int i = 0; i < 3; i++) {
        stk_model_t *m = make_model(ps[i]);
        assert_int_equal(stk_train_memory_estimate(m, 100, &est[i]), 0);
        stk_model_params(m, &nparams);
        stk_model_destroy(&m);
    }
    assert_int_equal(est[1], est[2]);
    /* fp32: P + 2A, half: P + 3A, with P the parameters' four copies:
     * the difference is one copy of the activations, A. */
    assert_true(est[1] > est[0]);
    uint64_t act = est[1] - est[0];
    assert_int_equal(est[0] - 2 * act, (uint64_t)nparams * sizeof(float) * 4);
}

static void test_fp16_overflow_skips(void **state)
{
    (void)state;
    float xs[N * F];
    int64_t ys[N];
    stk_tensor_t x, y;
    batch(0, xs, ys, &x, &y);
    stk_precision_t ps[3] = {STK_PRECISION_FP16, STK_PRECISION_BF16, STK_PRECISION_FP32};
    for (int k = 0; k < 3; k++) {
        run_t r = make_run(ps[k], 0x1p24);
        size_t n;
        const float *p = stk_model_params(r.m, &n);
        float *before = malloc(n * sizeof *before);
        assert_non_null(before);
        memcpy(before, p, n * sizeof *before);
        stk_train_step_metrics_t mm;
        assert_int_equal(stk_train_stepper_step(r.s, &x, &y, 0, &mm), 0);
        assert_true(isfinite(mm.loss));
        assert_int_equal(mm.stepped, 1);
        assert_true(mm.loss_scale == 0x1p24f);
        if (ps[k] == STK_PRECISION_FP16) {
            assert_int_equal(mm.skipped, 1);
            expect_same_floats(before, stk_model_params(r.m, NULL), n, "fp16 parameters after an overflow");
            int steps = 1;
            while (mm.skipped && steps < 30) {
                assert_int_equal(stk_train_stepper_step(r.s, &x, &y, (uint64_t)steps, &mm), 0);
                steps++;
            }
            assert_int_equal(mm.skipped, 0);
            /* Each skip halved the scale; the step that went through fits
             * fp16's range. */
            assert_true(mm.loss_scale == ldexpf(1.0f, 24 - (steps - 1)));
            assert_true(mm.loss_scale < 65504.0f * N);
            assert_true(memcmp(before, stk_model_params(r.m, NULL), n * sizeof *before) != 0);
        } else {
            assert_int_equal(mm.skipped, 0);
            assert_true(memcmp(before, p, n * sizeof *before) != 0);
        }
        free(before);
        free_run(&r);
    }
}

/* Two runs of the same precision give the same bits (the roundings are
 * pure functions of their inputs), and bf16, fp16 and fp32 give three
 * different trajectories. */
static void test_deterministic(void **state)
{
    (void)state;
    stk_precision_t ps[3] = {STK_PRECISION_BF16, STK_PRECISION_FP16, STK_PRECISION_FP32};
    float *last[3] = {NULL, NULL, NULL};
    size_t n = 0;
    for (int k = 0; k < 3; k++) {
        run_t r[2] = {make_run(ps[k], ps[k] == STK_PRECISION_FP16 ? 65536 : 0),
                      make_run(ps[k], ps[k] == STK_PRECISION_FP16 ? 65536 : 0)};
        for (int step = 0; step < 6; step++) {
            float xs[N * F];
            int64_t ys[N];
            stk_tensor_t x, y;
            batch(step, xs, ys, &x, &y);
            for (int j = 0; j < 2; j++) {
                stk_train_step_metrics_t mm;
                assert_int_equal(stk_train_stepper_step(r[j].s, &x, &y, (uint64_t)step, &mm), 0);
                assert_int_equal(mm.skipped, 0);
            }
        }
        const float *p = stk_model_params(r[0].m, &n);
        expect_same_floats(p, stk_model_params(r[1].m, NULL), n, stk_precision_name(ps[k]));
        last[k] = malloc(n * sizeof(float));
        assert_non_null(last[k]);
        memcpy(last[k], p, n * sizeof(float));
        free_run(&r[0]);
        free_run(&r[1]);
    }
    assert_true(memcmp(last[0], last[2], n * sizeof(float)) != 0);
    assert_true(memcmp(last[1], last[2], n * sizeof(float)) != 0);
    assert_true(memcmp(last[0], last[1], n * sizeof(float)) != 0);
    for (int k = 0; k < 3; k++)
        free(last[k]);
}

/* ---- Loss scaling's state in checkpoints ---------------------------------- */

static void expect_msg(const char *needle)
{
    if (!strstr(stk_error_message(), needle))
        fail_msg("message '%s' lacks '%s'", stk_error_message(), needle);
}

/* A scaler set to another's state goes on as that one does; bad states
 * are refused, named. */
static void test_scaler_state(void **state)
{
    (void)state;
    stk_loss_scaler_config_t c;
    stk_loss_scaler_config_default(&c);
    c.growth_interval = 3;
    stk_loss_scaler_t *a = NULL, *b = NULL;
    assert_int_equal(stk_loss_scaler_create(&a, &c), 0);
    assert_int_equal(stk_loss_scaler_create(&b, &c), 0);
    static const int seq[] = {0, 1, 0, 0, 1, 1, 0};
    for (size_t i = 0; i < sizeof seq / sizeof *seq; i++)
        stk_loss_scaler_update(a, seq[i]);
    stk_loss_scaler_state_t st;
    stk_loss_scaler_get_state(a, &st);
    assert_true(st.scale == 8192.0f);
    assert_int_equal(st.clean, 1);
    assert_int_equal(st.skipped, 3);
    assert_int_equal(stk_loss_scaler_set_state(b, &st), 0);
    for (int i = 0; i < 10; i++) {
        int bad = i == 6;
        assert_int_equal(stk_loss_scaler_update(a, bad), stk_loss_scaler_update(b, bad));
        assert_true(stk_loss_scaler_scale(a) == stk_loss_scaler_scale(b));
    }
    assert_int_equal(stk_loss_scaler_skipped(b), 4);
    stk_loss_scaler_state_t bad = st;
    float vals[3] = {0.0f, NAN, INFINITY};
    for (int i = 0; i < 3; i++) {
        bad.scale = vals[i];
        assert_int_equal(stk_loss_scaler_set_state(b, &bad), -EINVAL);
        expect_msg("scale");
    }
    assert_int_equal(stk_loss_scaler_set_state(NULL, &st), -EINVAL);
    stk_loss_scaler_get_state(NULL, &st);
    assert_true(st.scale == 1.0f);
    stk_loss_scaler_destroy(&a);
    stk_loss_scaler_destroy(&b);
}

static char *meta_of(const char *path)
{
    stk_ckpt_t *ck = NULL;
    assert_int_equal(stk_ckpt_create(&ck, path), 0);
    const void *data;
    size_t len;
    assert_int_equal(stk_ckpt_find(ck, "meta", &data, &len), 0);
    char *meta = strndup(data, len);
    stk_ckpt_destroy(&ck);
    assert_non_null(meta);
    return meta;
}

/* A checkpoint whose meta is text (history empty). */
static void save_meta(const char *path, const char *meta)
{
    stk_ckpt_section_t secs[2] = {{"meta", meta, strlen(meta)}, {"history", "", 0}};
    assert_int_equal(stk_ckpt_save(path, secs, 2), 0);
}

static void expect_meta_error(const char *path, const char *good, const char *from, const char *to,
                              const char *needle)
{
    const char *at = strstr(good, from);
    assert_non_null(at);
    char text[4096];
    snprintf(text, sizeof text, "%.*s%s%s", (int)(at - good), good, to, at + strlen(from));
    save_meta(path, text);
    stk_train_state_t back;
    assert_int_equal(stk_train_checkpoint_load(path, NULL, &back), STK_EDATA);
    expect_msg(needle);
    expect_msg(path);
}

/* The state's loss-scaling fields through a checkpoint: exact; absent
 * when the run has none, and a checkpoint without them (as older ones)
 * loads with scale 0; a bad or partial set is refused naming the key. */
static void test_scaler_state_checkpoint(void **state)
{
    (void)state;
    char dir[] = "/tmp/stk-amp-XXXXXX";
    assert_non_null(mkdtemp(dir));
    stk_model_t *m = make_model(STK_PRECISION_FP16);
    stk_train_parts_t parts = {m, NULL, NULL};
    stk_train_state_t st, back;
    assert_int_equal(stk_train_state_init(&st, 1), 0);
    st.step = 5;
    st.loss_scale = (stk_loss_scaler_state_t){0x1p15f, 17, 3};
    char path[512], none[512], bad[600];
    assert_int_equal(stk_train_checkpoint_save(dir, &parts, &st, NULL, 0, 0, path, sizeof path), 0);
    assert_int_equal(stk_train_checkpoint_load(path, &parts, &back), 0);
    assert_true(back.loss_scale.scale == 0x1p15f);
    assert_int_equal(back.loss_scale.clean, 17);
    assert_int_equal(back.loss_scale.skipped, 3);
    stk_train_state_clear(&back);
    char *good = meta_of(path);
    assert_non_null(strstr(good, "loss_scale = 0x1p+15\nloss_scale_clean = 17\nloss_scale_skipped = 3\n"));

    st.step = 6;
    st.loss_scale = (stk_loss_scaler_state_t){0};
    assert_int_equal(stk_train_checkpoint_save(dir, &parts, &st, NULL, 0, 0, none, sizeof none), 0);
    char *plain = meta_of(none);
    assert_null(strstr(plain, "loss_scale"));
    assert_int_equal(stk_train_checkpoint_load(none, &parts, &back), 0);
    assert_true(back.loss_scale.scale == 0.0f);
    stk_train_state_clear(&back);

    snprintf(bad, sizeof bad, "%s/bad.stkc", dir);
    save_meta(bad, good);
    assert_int_equal(stk_train_checkpoint_load(bad, NULL, &back), 0);
    assert_true(back.loss_scale.scale == 0x1p15f);
    stk_train_state_clear(&back);
    expect_meta_error(bad, good, "loss_scale = 0x1p+15", "loss_scale = -1", "bad loss_scale '-1'");
    expect_meta_error(bad, good, "loss_scale = 0x1p+15", "loss_scale = 0x1p+200", "bad loss_scale");
    expect_meta_error(bad, good, "loss_scale = 0x1p+15", "loss_scale = nan", "bad loss_scale");
    expect_meta_error(bad, good, "loss_scale_clean = 17\n", "", "'loss_scale_clean'");
    expect_meta_error(bad, good, "loss_scale_clean = 17", "loss_scale_clean = 4294967296", "'loss_scale_clean'");
    expect_meta_error(bad, good, "loss_scale_skipped = 3", "loss_scale_skipped = x", "'loss_scale_skipped'");
    free(good);
    free(plain);
    stk_train_state_clear(&st);
    stk_model_destroy(&m);
    char cmd[64];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_matches_dtype), cmocka_unit_test(test_conv_vs_reference),
        cmocka_unit_test(test_linear_vs_reference), cmocka_unit_test(test_fp16_overflow_op),
        cmocka_unit_test(test_memory_estimate),
        cmocka_unit_test(test_fp16_overflow_skips), cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_scaler_state),        cmocka_unit_test(test_scaler_state_checkpoint),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
