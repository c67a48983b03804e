/* SPDX-License-Identifier: MIT */
/* Mixed precision on the CUDA backend (precision bf16 / fp16: half
 * compute for convolutions and linear layers, f32 everywhere else):
 *
 *  ops       convolution and linear forward, backward data and backward
 *            weights in BF16 and FP16 against the CPU backend in f32 on
 *            the same inputs. The bound per element is derived from the
 *            half type's unit roundoff u (2^-8, 2^-11): x and w each
 *            rounded (2u + u^2 per product), the half output rounded
 *            once more (u), f32 sums on both sides (K 2^-24 each, K the
 *            reduction length), all relative to S, the same op on |x|
 *            and |w|: |got - ref| <= (3u + u^2 + 2 K 2^-24) S + 1e-6.
 *            The error must also be above f32's, or the half path did not
 *            run. Then again in another order, x and w at other
 *            addresses: the casts a backward makes when the forward's
 *            half copies are not of its tensors.
 *  train     fmnist-cnn on separable synthetic batches, 120 steps in
 *            fp32, bf16 and fp16 (fp16 with dynamic loss scaling, as
 *            stoker-train's loss_scale = auto gives it): each half run's
 *            held-out accuracy within 0.3 point of the fp32 run's.
 *  overflow  an fp16 run started with a loss scale of 1e10: the scaled
 *            gradient overflows FP16 (65504) in the linear's backward, so
 *            loss scaling skips the step (parameters unchanged) and halves
 *            the scale; bf16 (f32's range) takes the same step.
 *  repeat    the deterministic cuDNN policy in bf16: two runs of 20 steps
 *            bit for bit, and with the whole step as a CUDA graph (two
 *            input buffers, a short batch between) the same bits again;
 *            fp16 with and without graphs too.
 *
 * Without a GPU it exits 77 (STK_REQUIRE_GPU=1: a failure). Argument:
 * one of the parts' names (default: all), or ops-cpu: the ops part with
 * the CPU backend on both sides, the half path emulated on the host
 * (inputs rounded to the half type, f32 sums, outputs rounded), which
 * checks this test's references and bounds on any machine: the
 * emulation must pass the bounds and be seen as half precision. */
#define _GNU_SOURCE
#include "engine/backend.h"
#include "stoker/engine.h"
#include "stoker/optim.h"
#include "stoker/train.h"

#include "gpu_test.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ops-cpu: the "GPU" side is the CPU backend on rounded values. */
static int cpu_pose;

/* x rounded to the half type (round to nearest even), in place. */
static void round_half(stk_precision_t p, float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = p == STK_PRECISION_BF16 ? stk_bf16_to_f32(stk_f32_to_bf16(x[i])) : stk_f16_to_f32(stk_f32_to_f16(x[i]));
}

/* The values the "GPU" side gets: x itself, or (ops-cpu) a rounded copy. */
static const float *gpu_in(stk_precision_t p, const float *x, size_t n, float **copy)
{
    *copy = NULL;
    if (!cpu_pose)
        return x;
    *copy = malloc(n * sizeof(float));
    CHECK(*copy, "out of memory");
    memcpy(*copy, x, n * sizeof(float));
    round_half(p, *copy, n);
    return *copy;
}

static const char *type_name(stk_precision_t p)
{
    return stk_precision_name(p);
}

/* The unit roundoff of a half type: half the gap after 1. */
static double unit_roundoff(stk_precision_t p)
{
    return p == STK_PRECISION_BF16 ? 1.0 / 256 : 1.0 / 2048;
}

/* ------------------------------------------------------------ ops */

typedef struct buf {
    float *host;
    void *dev; /* the backend's device memory (may be offset: see at) */
    size_t n;
} buf_t;

static float *hbuf(size_t n)
{
    float *p = calloc(n ? n : 1, sizeof(float));
    CHECK(p, "out of memory");
    return p;
}

static void fill(float *x, size_t n, uint64_t seed, float scale)
{
    stk_rng_t r;
    stk_rng_init(&r, seed, 3);
    for (size_t i = 0; i < n; i++)
        x[i] = (2.0f * stk_rng_uniform(&r) - 1.0f) * scale;
}

static void absval(const float *x, float *y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        y[i] = fabsf(x[i]);
}

/* Device copy of host[0..n) at byte offset `off` into fresh device memory
 * (off 4: an activation that is not 16-byte aligned). */
static float *dev_of(const stk__backend_t *be, const float *host, size_t n, size_t off, void **base)
{
    *base = be->iface->alloc(be->ctx, n * sizeof(float) + 64);
    CHECK(*base, "alloc: %s", stk_error_message());
    float *d = (float *)((char *)*base + off);
    STK(be->iface->upload(be->ctx, d, host, n * sizeof(float)));
    return d;
}

static void dev_read(const stk__backend_t *be, float *host, const float *dev, size_t n)
{
    STK(be->iface->download(be->ctx, host, dev, n * sizeof(float)));
}

/* got against ref within the bound above, S the same op on magnitudes;
 * returns the largest error relative to S's largest value. */
static double check_close(const char *what, stk_precision_t p, int64_t k, const float *got, const float *ref,
                          const float *s, size_t n)
{
    const double u = unit_roundoff(p), rel = 3 * u + u * u + 2.0 * (double)k / 16777216.0;
    double worst = 0, smax = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)ref[i]), bound = rel * (double)s[i] + 1e-6;
        CHECK(d <= bound, "%s %s: element %zu: %.9g, f32 reference %.9g (error %.3g > bound %.3g, K %lld)", what,
              type_name(p), i, (double)got[i], (double)ref[i], d, bound, (long long)k);
        if (d > worst)
            worst = d;
        if (s[i] > smax)
            smax = s[i];
    }
    return smax > 0 ? worst / smax : 0;
}

/* f32 alone would be off by K 2^-24 or so of S; half inputs by about u. */
/* Takes the largest error of an op's three outputs (y, dx, dw; relative
 * to S): it must show half rounding; printed. */
static void check_half_ran(const char *what, stk_precision_t p, double ey, double edx, double edw)
{
    double worst_rel = fmax(ey, fmax(edx, edw));
    CHECK(worst_rel > unit_roundoff(p) / 64, "%s %s: largest error %.3g of S: no half rounding, did it run in f32?",
          what, type_name(p), worst_rel);
    printf("  %-7s %-56s largest error / S: y %.2g, dx %.2g, dw %.2g\n", type_name(p), what, ey, edx, edw);
}

/* ops-cpu: the outputs' rounding the GPU does, on the CPU's f32 ones (y
 * before its f32 bias: the bias is taken off, y rounded, added back). */
static void round_outputs_conv(stk_precision_t p, const stk__conv_desc_t *d, const float *b, float *y, float *dx,
                               float *dw)
{
    const size_t ny = (size_t)(d->n * d->oc * d->oh * d->ow), nx = (size_t)(d->n * d->ic * d->ih * d->iw),
                 nw = (size_t)(d->oc * (d->ic / d->groups) * d->kh * d->kw);
    for (size_t j = 0; j < ny; j++) {
        float bj = b[(j / (size_t)(d->oh * d->ow)) % (size_t)d->oc];
        float v = y[j] - bj;
        round_half(p, &v, 1);
        y[j] = v + bj;
    }
    round_half(p, dx, nx);
    round_half(p, dw, nw);
}

static void round_outputs_linear(stk_precision_t p, int64_t n, int64_t in, int64_t out, const float *b, float *y,
                                 float *dx, float *dw)
{
    for (size_t j = 0; j < (size_t)(n * out); j++) {
        float bj = b[j % (size_t)out];
        float v = y[j] - bj;
        round_half(p, &v, 1);
        y[j] = v + bj;
    }
    round_half(p, dx, (size_t)(n * in));
    round_half(p, dw, (size_t)(out * in));
}

static void test_conv(const stk__backend_t *cpu, const stk__backend_t *gpu, stk_precision_t p,
                      const stk__conv_desc_t *d, size_t xoff)
{
    const int64_t icg = d->ic / d->groups;
    const size_t nx = (size_t)(d->n * d->ic * d->ih * d->iw), ny = (size_t)(d->n * d->oc * d->oh * d->ow),
                 nw = (size_t)(d->oc * icg * d->kh * d->kw), nb = (size_t)d->oc;
    float *x = hbuf(nx), *w = hbuf(nw), *b = hbuf(nb), *dy = hbuf(ny);
    float *ax = hbuf(nx), *aw = hbuf(nw), *ady = hbuf(ny);
    fill(x, nx, 1, 2.0f);
    fill(w, nw, 2, 0.5f);
    fill(b, nb, 3, 0.5f);
    fill(dy, ny, 4, 1.0f);
    absval(x, ax, nx);
    absval(w, aw, nw);
    absval(dy, ady, ny);
    /* The f32 reference and the magnitudes' op, on the CPU. */
    float *ry = hbuf(ny), *sy = hbuf(ny), *rdx = hbuf(nx), *sdx = hbuf(nx), *rdw = hbuf(nw), *sdw = hbuf(nw),
          *rdb = hbuf(nb);
    stk__op_t *cop = NULL, *cop2 = NULL;
    stk__conv_desc_t nobias = *d;
    nobias.bias = 0;
    STK(cpu->iface->conv_create(cpu->ctx, d, &cop));
    STK(cpu->iface->conv_create(cpu->ctx, &nobias, &cop2));
    STK(cpu->iface->conv_forward(cpu->ctx, cop, x, w, b, ry));
    STK(cpu->iface->conv_forward(cpu->ctx, cop2, ax, aw, NULL, sy));
    STK(cpu->iface->conv_backward_data(cpu->ctx, cop, dy, w, rdx));
    STK(cpu->iface->conv_backward_data(cpu->ctx, cop2, ady, aw, sdx));
    STK(cpu->iface->conv_backward_weights(cpu->ctx, cop, x, dy, rdw, rdb));
    STK(cpu->iface->conv_backward_weights(cpu->ctx, cop2, ax, ady, sdw, NULL));
    cpu->iface->op_destroy(cpu->ctx, cop);
    cpu->iface->op_destroy(cpu->ctx, cop2);

    /* The GPU in half precision, in the engine's order: forward, backward
     * weights, backward data. */
    void *bx, *bw, *bb, *bdy, *by, *bdx, *bdw, *bdb;
    float *cx, *cw, *cdy;
    const float *ix = gpu_in(p, x, nx, &cx), *iw = gpu_in(p, w, nw, &cw), *idy = gpu_in(p, dy, ny, &cdy);
    float *gx = dev_of(gpu, ix, nx, xoff, &bx), *gw = dev_of(gpu, iw, nw, 0, &bw), *gb = dev_of(gpu, b, nb, 0, &bb),
          *gdy = dev_of(gpu, idy, ny, 0, &bdy), *gy = dev_of(gpu, ry, ny, 0, &by), *gdx = dev_of(gpu, rdx, nx, 0, &bdx),
          *gdw = dev_of(gpu, rdw, nw, 0, &bdw), *gdb = dev_of(gpu, rdb, nb, 0, &bdb);
    stk__op_t *op = NULL;
    STK(gpu->iface->conv_create(gpu->ctx, d, &op));
    /* Outputs start as something else: every slot overwrites. */
    gpu->iface->zero(gpu->ctx, gy, ny);
    gpu->iface->zero(gpu->ctx, gdx, nx);
    gpu->iface->zero(gpu->ctx, gdw, nw);
    STK(gpu->iface->conv_forward(gpu->ctx, op, gx, gw, gb, gy));
    STK(gpu->iface->conv_backward_weights(gpu->ctx, op, gx, gdy, gdw, gdb));
    STK(gpu->iface->conv_backward_data(gpu->ctx, op, gdy, gw, gdx));
    float *hy = hbuf(ny), *hdx = hbuf(nx), *hdw = hbuf(nw), *hdb = hbuf(nb);
    dev_read(gpu, hy, gy, ny);
    dev_read(gpu, hdx, gdx, nx);
    dev_read(gpu, hdw, gdw, nw);
    dev_read(gpu, hdb, gdb, nb);
    if (cpu_pose)
        round_outputs_conv(p, d, b, hy, hdx, hdw);
    char what[160];
    snprintf(what, sizeof(what), "conv %lldx%lldx%lldx%lld -> %lld k%lld s%lld p%lld g%lld%s", (long long)d->n,
             (long long)d->ic, (long long)d->ih, (long long)d->iw, (long long)d->oc, (long long)d->kh,
             (long long)d->sh, (long long)d->ph, (long long)d->groups, xoff ? " (x 4-byte aligned)" : "");
    const int64_t kf = icg * d->kh * d->kw;                      /* forward: over C/g R S */
    const int64_t kd = (d->oc / d->groups) * d->kh * d->kw;      /* data: over K/g R S */
    const int64_t kw = d->n * d->oh * d->ow;                     /* weights: over N P Q */
    double e1 = check_close(what, p, kf, hy, ry, sy, ny);
    double e2 = check_close(what, p, kd, hdx, rdx, sdx, nx);
    double e3 = check_close(what, p, kw, hdw, rdw, sdw, nw);
    /* The bias gradient is our f32 kernel on f32 dy: f32's bound (the
     * emulation rounded dy, so it has none to check). */
    for (size_t i = 0; i < nb && !cpu_pose; i++) {
        double s = 0;
        for (size_t j = 0; j < ny; j++)
            if ((j / (size_t)(d->oh * d->ow)) % (size_t)d->oc == i)
                s += fabs((double)dy[j]);
        CHECK(fabs((double)hdb[i] - (double)rdb[i]) <= 1e-5 * s + 1e-6, "%s: bias gradient %zu: %g vs %g", what, i,
              (double)hdb[i], (double)rdb[i]);
    }
    check_half_ran(what, p, e1, e2, e3);
    /* The other order, with copies of x and w at other addresses: the
     * forward casts the copies, backward data then gets the first
     * weights (cast again) and a dy no backward weights cast, backward
     * weights the first x (cast again). The same bounds hold. */
    void *bx2, *bw2;
    float *gx2 = dev_of(gpu, ix, nx, 0, &bx2), *gw2 = dev_of(gpu, iw, nw, 0, &bw2);
    gpu->iface->zero(gpu->ctx, gy, ny);
    gpu->iface->zero(gpu->ctx, gdx, nx);
    gpu->iface->zero(gpu->ctx, gdw, nw);
    STK(gpu->iface->conv_forward(gpu->ctx, op, gx2, gw2, gb, gy));
    STK(gpu->iface->conv_backward_data(gpu->ctx, op, gdy, gw, gdx));
    STK(gpu->iface->conv_backward_weights(gpu->ctx, op, gx, gdy, gdw, gdb));
    dev_read(gpu, hy, gy, ny);
    dev_read(gpu, hdx, gdx, nx);
    dev_read(gpu, hdw, gdw, nw);
    if (cpu_pose)
        round_outputs_conv(p, d, b, hy, hdx, hdw);
    char again[200];
    snprintf(again, sizeof(again), "%s, backward data first", what);
    check_close(again, p, kf, hy, ry, sy, ny);
    check_close(again, p, kd, hdx, rdx, sdx, nx);
    check_close(again, p, kw, hdw, rdw, sdw, nw);
    gpu->iface->free(gpu->ctx, bx2);
    gpu->iface->free(gpu->ctx, bw2);
    gpu->iface->op_destroy(gpu->ctx, op);
    void *bases[] = {bx, bw, bb, bdy, by, bdx, bdw, bdb};
    for (size_t i = 0; i < sizeof(bases) / sizeof(bases[0]); i++)
        gpu->iface->free(gpu->ctx, bases[i]);
    free(x), free(w), free(b), free(dy), free(ax), free(aw), free(ady), free(ry), free(sy), free(rdx), free(sdx);
    free(rdw), free(sdw), free(rdb), free(hy), free(hdx), free(hdw), free(hdb), free(cx), free(cw), free(cdy);
}

static void test_linear(const stk__backend_t *cpu, const stk__backend_t *gpu, stk_precision_t p, int64_t n,
                        int64_t in, int64_t out)
{
    stk__linear_desc_t d = {.n = n, .in = in, .out = out, .bias = 1};
    const size_t nx = (size_t)(n * in), nw = (size_t)(out * in), ny = (size_t)(n * out);
    float *x = hbuf(nx), *w = hbuf(nw), *b = hbuf((size_t)out), *dy = hbuf(ny);
    float *ax = hbuf(nx), *aw = hbuf(nw), *ady = hbuf(ny);
    fill(x, nx, 5, 2.0f);
    fill(w, nw, 6, 0.5f);
    fill(b, (size_t)out, 7, 0.5f);
    fill(dy, ny, 8, 1.0f);
    absval(x, ax, nx);
    absval(w, aw, nw);
    absval(dy, ady, ny);
    float *ry = hbuf(ny), *sy = hbuf(ny), *rdx = hbuf(nx), *sdx = hbuf(nx), *rdw = hbuf(nw), *sdw = hbuf(nw),
          *rdb = hbuf((size_t)out), *sdb = hbuf((size_t)out);
    stk__linear_desc_t nobias = d;
    nobias.bias = 0;
    stk__op_t *cop = NULL, *cop2 = NULL;
    STK(cpu->iface->linear_create(cpu->ctx, &d, &cop));
    STK(cpu->iface->linear_create(cpu->ctx, &nobias, &cop2));
    STK(cpu->iface->linear_forward(cpu->ctx, cop, x, w, b, ry));
    STK(cpu->iface->linear_forward(cpu->ctx, cop2, ax, aw, NULL, sy));
    STK(cpu->iface->linear_backward_data(cpu->ctx, cop, dy, w, rdx));
    STK(cpu->iface->linear_backward_data(cpu->ctx, cop2, ady, aw, sdx));
    STK(cpu->iface->linear_backward_weights(cpu->ctx, cop, x, dy, rdw, rdb));
    STK(cpu->iface->linear_backward_weights(cpu->ctx, cop, ax, ady, sdw, sdb));
    cpu->iface->op_destroy(cpu->ctx, cop);
    cpu->iface->op_destroy(cpu->ctx, cop2);

    void *bx, *bw, *bb, *bdy, *by, *bdx, *bdw, *bdb;
    float *cx, *cw, *cdy;
    const float *ix = gpu_in(p, x, nx, &cx), *iw = gpu_in(p, w, nw, &cw), *idy = gpu_in(p, dy, ny, &cdy);
    float *gx = dev_of(gpu, ix, nx, 0, &bx), *gw = dev_of(gpu, iw, nw, 4, &bw),
          *gb = dev_of(gpu, b, (size_t)out, 0, &bb), *gdy = dev_of(gpu, idy, ny, 0, &bdy),
          *gy = dev_of(gpu, ry, ny, 0, &by), *gdx = dev_of(gpu, rdx, nx, 0, &bdx),
          *gdw = dev_of(gpu, rdw, nw, 4, &bdw), *gdb = dev_of(gpu, rdb, (size_t)out, 0, &bdb);
    stk__op_t *op = NULL;
    STK(gpu->iface->linear_create(gpu->ctx, &d, &op));
    gpu->iface->zero(gpu->ctx, gy, ny);
    gpu->iface->zero(gpu->ctx, gdx, nx);
    gpu->iface->zero(gpu->ctx, gdw, nw);
    STK(gpu->iface->linear_forward(gpu->ctx, op, gx, gw, gb, gy));
    STK(gpu->iface->linear_backward_weights(gpu->ctx, op, gx, gdy, gdw, gdb));
    STK(gpu->iface->linear_backward_data(gpu->ctx, op, gdy, gw, gdx));
    float *hy = hbuf(ny), *hdx = hbuf(nx), *hdw = hbuf(nw), *hdb = hbuf((size_t)out);
    dev_read(gpu, hy, gy, ny);
    dev_read(gpu, hdx, gdx, nx);
    dev_read(gpu, hdw, gdw, nw);
    dev_read(gpu, hdb, gdb, (size_t)out);
    if (cpu_pose)
        round_outputs_linear(p, n, in, out, b, hy, hdx, hdw);
    char what[96];
    snprintf(what, sizeof(what), "linear n %lld, %lld -> %lld (weights 4-byte aligned)", (long long)n,
             (long long)in, (long long)out);
    double e1 = check_close(what, p, in, hy, ry, sy, ny);
    double e2 = check_close(what, p, out, hdx, rdx, sdx, nx);
    double e3 = check_close(what, p, n, hdw, rdw, sdw, nw);
    for (int64_t i = 0; i < out && !cpu_pose; i++)
        CHECK(fabs((double)hdb[i] - (double)rdb[i]) <= 1e-5 * (double)sdb[i] + 1e-6,
              "%s: bias gradient %lld: %g vs %g", what, (long long)i, (double)hdb[i], (double)rdb[i]);
    check_half_ran(what, p, e1, e2, e3);
    /* The other order with copies at other addresses, as for conv. */
    void *bx2, *bw2;
    float *gx2 = dev_of(gpu, ix, nx, 0, &bx2), *gw2 = dev_of(gpu, iw, nw, 0, &bw2);
    gpu->iface->zero(gpu->ctx, gy, ny);
    gpu->iface->zero(gpu->ctx, gdx, nx);
    gpu->iface->zero(gpu->ctx, gdw, nw);
    STK(gpu->iface->linear_forward(gpu->ctx, op, gx2, gw2, gb, gy));
    STK(gpu->iface->linear_backward_data(gpu->ctx, op, gdy, gw, gdx));
    STK(gpu->iface->linear_backward_weights(gpu->ctx, op, gx, gdy, gdw, gdb));
    dev_read(gpu, hy, gy, ny);
    dev_read(gpu, hdx, gdx, nx);
    dev_read(gpu, hdw, gdw, nw);
    if (cpu_pose)
        round_outputs_linear(p, n, in, out, b, hy, hdx, hdw);
    char again[140];
    snprintf(again, sizeof(again), "%s, backward data first", what);
    check_close(again, p, in, hy, ry, sy, ny);
    check_close(again, p, out, hdx, rdx, sdx, nx);
    check_close(again, p, n, hdw, rdw, sdw, nw);
    gpu->iface->free(gpu->ctx, bx2);
    gpu->iface->free(gpu->ctx, bw2);
    gpu->iface->op_destroy(gpu->ctx, op);
    void *bases[] = {bx, bw, bb, bdy, by, bdx, bdw, bdb};
    for (size_t i = 0; i < sizeof(bases) / sizeof(bases[0]); i++)
        gpu->iface->free(gpu->ctx, bases[i]);
    free(x), free(w), free(b), free(dy), free(ax), free(aw), free(ady), free(ry), free(sy), free(rdx), free(sdx);
    free(rdw), free(sdw), free(rdb), free(sdb), free(hy), free(hdx), free(hdw), free(hdb), free(cx), free(cw);
    free(cdy);
}

static stk__conv_desc_t conv(int64_t n, int64_t ic, int64_t ih, int64_t iw, int64_t oc, int64_t k, int64_t s,
                             int64_t pad, int64_t groups)
{
    stk__conv_desc_t d;
    memset(&d, 0, sizeof(d));
    d.n = n, d.ic = ic, d.ih = ih, d.iw = iw, d.oc = oc;
    d.kh = d.kw = k, d.sh = d.sw = s, d.ph = d.pw = pad, d.dh = d.dw = 1, d.groups = groups, d.bias = 1;
    d.oh = (ih + 2 * pad - k) / s + 1;
    d.ow = (iw + 2 * pad - k) / s + 1;
    d.fmt_in = d.fmt_out = STK__LAYOUT_PLAIN;
    return d;
}

static void part_ops(void)
{
    stk__backend_t cpu;
    memset(&cpu, 0, sizeof(cpu));
    STK(stk__backend_open(&cpu, STK_DEVICE_CPU));
    for (int p = STK_PRECISION_BF16; p <= STK_PRECISION_FP16; p++) {
        stk__backend_t gpu;
        memset(&gpu, 0, sizeof(gpu));
        STK(stk__backend_open(&gpu, cpu_pose ? STK_DEVICE_CPU : STK_DEVICE_CUDA));
        stk_precision_t used = (stk_precision_t)p;
        if (!cpu_pose)
            STK(gpu.iface->set_precision(gpu.ctx, (stk_precision_t)p, &used));
        CHECK(used == (stk_precision_t)p, "set_precision %s gave %s", stk_precision_name((stk_precision_t)p),
              stk_precision_name(used));
        /* fmnist-cnn's first convolution (one channel), an odd general
         * one, a strided one, a grouped one and a 1x1. */
        const stk__conv_desc_t convs[] = {conv(8, 1, 28, 28, 32, 3, 1, 1, 1), conv(3, 5, 9, 7, 7, 3, 1, 1, 1),
                                          conv(4, 16, 13, 13, 24, 3, 2, 1, 1), conv(2, 8, 6, 6, 12, 3, 1, 1, 2),
                                          conv(5, 32, 7, 7, 64, 1, 1, 0, 1)};
        for (size_t i = 0; i < sizeof(convs) / sizeof(convs[0]); i++)
            test_conv(&cpu, &gpu, (stk_precision_t)p, &convs[i], i == 1 ? 4 : 0);
        test_linear(&cpu, &gpu, (stk_precision_t)p, 32, 3136, 128);
        test_linear(&cpu, &gpu, (stk_precision_t)p, 5, 17, 13);
        stk__backend_close(&gpu);
    }
    stk__backend_close(&cpu);
}

/* ---------------------------------------------------------- training */

#define BATCH 64
#define IMG GPU_TEST_IMG

static char *model_text;

static stk_model_t *make_model(stk_precision_t p, stk_cudnn_policy_t policy)
{
    stk_model_config_t cfg;
    stk_model_config_default(&cfg);
    cfg.batch_size = BATCH;
    cfg.seed = 1;
    cfg.device = STK_DEVICE_CUDA;
    cfg.precision = p;
    cfg.cudnn_policy = policy;
    stk_model_t *m = gpu_test_model(model_text, "fmnist-cnn.model", &cfg);
    CHECK(stk_model_precision(m) == p, "the model computes in %s, %s asked for",
          stk_precision_name(stk_model_precision(m)), stk_precision_name(p));
    return m;
}

static stk_train_stepper_t *make_stepper(stk_model_t *m, stk_optim_t *opt, stk_precision_t p, double init_scale)
{
    stk_train_stepper_config_t sc;
    stk_train_stepper_config_default(&sc);
    /* stoker-train's loss_scale = auto: dynamic scaling for fp16 only. */
    if (p == STK_PRECISION_FP16 || init_scale > 0) {
        stk_loss_scaler_config_default(&sc.loss_scaling);
        if (init_scale > 0)
            sc.loss_scaling.init_scale = init_scale;
    }
    stk_train_stepper_t *s = NULL;
    STK(stk_train_stepper_create(&s, m, opt, NULL, &sc));
    return s;
}

static void step_on(stk_train_stepper_t *s, float *dev_x, const float *x, const int64_t *labels, int n, uint64_t i,
                    stk_train_step_metrics_t *met)
{
    CU(cudaMemcpy(dev_x, x, (size_t)n * IMG * sizeof(float), cudaMemcpyHostToDevice));
    stk_tensor_t in, tg;
    gpu_test_tensors(dev_x, (int64_t *)labels, n, &in, &tg);
    STK(stk_train_stepper_step(s, &in, &tg, i, met));
}

/* Held-out accuracy (percent) over 16 batches no step saw. */
static double accuracy(stk_model_t *m, float *dev_x)
{
    static float x[BATCH * IMG];
    int64_t labels[BATCH], hits = 0, total = 0;
    stk_model_set_train(m, 0);
    for (int s = 0; s < 16; s++) {
        gpu_test_batch(100000 + s, BATCH, x, labels);
        CU(cudaMemcpy(dev_x, x, sizeof(x), cudaMemcpyHostToDevice));
        float loss = 0;
        STK(stk_model_forward(m, dev_x, BATCH, labels, NULL, &loss));
        int64_t c = 0;
        STK(stk_model_count_correct(m, labels, &c));
        hits += c;
        total += BATCH;
    }
    stk_model_set_train(m, 1);
    return 100.0 * (double)hits / (double)total;
}

static double train(stk_precision_t p, float *dev_x, float *last_loss)
{
    stk_model_t *m = make_model(p, STK_CUDNN_HEURISTIC);
    stk_optim_t *opt = NULL;
    STK(stk_optim_create_for_model(&opt, m, "sgd:lr=0.02,momentum=0.9,weight_decay=5e-4"));
    stk_train_stepper_t *s = make_stepper(m, opt, p, 0);
    static float x[BATCH * IMG];
    int64_t labels[BATCH];
    stk_train_step_metrics_t met;
    uint64_t skipped = 0;
    for (int i = 0; i < 120; i++) {
        gpu_test_batch(i, BATCH, x, labels);
        step_on(s, dev_x, x, labels, BATCH, (uint64_t)i, &met);
        skipped += (uint64_t)met.skipped;
        CHECK(isfinite(met.loss), "%s step %d: loss %g", type_name(p), i, (double)met.loss);
    }
    *last_loss = met.loss;
    double acc = accuracy(m, dev_x);
    printf("  %-5s 120 steps: last loss %.4f, held-out accuracy %.2f%%, %llu steps skipped, loss scale %g\n",
           type_name(p), (double)met.loss, acc, (unsigned long long)skipped, (double)met.loss_scale);
    stk_train_stepper_destroy(&s);
    stk_optim_destroy(&opt);
    stk_model_destroy(&m);
    return acc;
}

static void part_train(float *dev_x)
{
    float l32, l16b, l16;
    double a32 = train(STK_PRECISION_FP32, dev_x, &l32);
    CHECK(a32 >= 90.0, "fp32 reached %.2f%% only: the task is meant to be learnable", a32);
    double ab = train(STK_PRECISION_BF16, dev_x, &l16b);
    double ah = train(STK_PRECISION_FP16, dev_x, &l16);
    CHECK(fabs(ab - a32) <= 0.3, "bf16 accuracy %.2f%%, fp32 %.2f%%: more than 0.3 point apart", ab, a32);
    CHECK(fabs(ah - a32) <= 0.3, "fp16 accuracy %.2f%%, fp32 %.2f%%: more than 0.3 point apart", ah, a32);
}

/* ---------------------------------------------------------- overflow */

static void part_overflow(float *dev_x)
{
    for (int p = STK_PRECISION_BF16; p <= STK_PRECISION_FP16; p++) {
        stk_model_t *m = make_model((stk_precision_t)p, STK_CUDNN_HEURISTIC);
        stk_optim_t *opt = NULL;
        STK(stk_optim_create_for_model(&opt, m, "sgd:lr=0.02,momentum=0.9,weight_decay=5e-4"));
        stk_train_stepper_t *s = make_stepper(m, opt, (stk_precision_t)p, 1e10);
        size_t np = 0;
        float *params = stk_model_params(m, &np);
        float *before = hbuf(np), *after = hbuf(np);
        /* The model's stream does not order with cudaMemcpy's. */
        CU(cudaDeviceSynchronize());
        CU(cudaMemcpy(before, params, np * sizeof(float), cudaMemcpyDeviceToHost));
        static float x[BATCH * IMG];
        int64_t labels[BATCH];
        stk_train_step_metrics_t met;
        gpu_test_batch(0, BATCH, x, labels);
        step_on(s, dev_x, x, labels, BATCH, 0, &met);
        CU(cudaDeviceSynchronize());
        CU(cudaMemcpy(after, params, np * sizeof(float), cudaMemcpyDeviceToHost));
        int same = !memcmp(before, after, np * sizeof(float));
        CHECK(met.loss_scale == 1e10f, "%s: the first step used scale %g", type_name((stk_precision_t)p),
              (double)met.loss_scale);
        gpu_test_batch(1, BATCH, x, labels);
        stk_train_step_metrics_t next;
        step_on(s, dev_x, x, labels, BATCH, 1, &next);
        if (p == STK_PRECISION_FP16) {
            CHECK(met.skipped == 1 && same, "fp16 with loss scale 1e10: the step was %s and the parameters %s",
                  met.skipped ? "skipped" : "taken", same ? "unchanged" : "changed");
            CHECK(next.loss_scale == 5e9f, "fp16: after the overflow the scale is %g, want 5e9",
                  (double)next.loss_scale);
        } else {
            CHECK(met.skipped == 0 && !same, "bf16 with loss scale 1e10: the step was %s (f32's range: no overflow)",
                  met.skipped ? "skipped" : "taken");
            CHECK(next.loss_scale == 1e10f, "bf16: the scale moved to %g", (double)next.loss_scale);
        }
        printf("  %-5s loss scale 1e10: first step %s, next scale %g\n", type_name((stk_precision_t)p),
               met.skipped ? "skipped" : "taken", (double)next.loss_scale);
        free(before), free(after);
        stk_train_stepper_destroy(&s);
        stk_optim_destroy(&opt);
        stk_model_destroy(&m);
    }
}

/* ----------------------------------------------------------- repeat */

#define RSTEPS 20
#define SHORT 16
#define SHORT_AT 12

/* 20 steps as test_cuda_graph.c takes them; the state after them. */
static char *run(stk_precision_t p, int graphs, float *dev_x[2], float *losses, size_t *size)
{
    stk_model_t *m = make_model(p, STK_CUDNN_DETERMINISTIC);
    stk_optim_t *opt = NULL;
    stk_sched_t *sched = NULL;
    STK(stk_optim_create_for_model(&opt, m, "sgd:lr=0.02,momentum=0.9,nesterov=1,weight_decay=5e-4"));
    STK(stk_sched_create_from_text(&sched, opt, "warmup:5,start=0.1|cosine:eta_min=0", 0, RSTEPS));
    STK(stk_model_set_cuda_graph(m, graphs));
    static float x[BATCH * IMG];
    int64_t labels[BATCH];
    for (int s = 0; s < RSTEPS; s++) {
        gpu_test_batch(s, BATCH, x, labels);
        float *dev = dev_x[s % 2];
        CU(cudaMemcpy(dev, x, sizeof(x), cudaMemcpyHostToDevice));
        int64_t n = s == SHORT_AT ? SHORT : BATCH;
        stk_tensor_t in, tg;
        gpu_test_tensors(dev, labels, n, &in, &tg);
        STK(stk_model_train_step(m, opt, &in, &tg, &losses[s]));
        STK(stk_sched_step(sched));
    }
    uint64_t captures = 0, replays = 0;
    stk_model_cuda_graph(m, &captures, &replays);
    if (graphs)
        CHECK(captures == 2 && replays >= 12, "%s: %llu graphs captured, %llu replays", type_name(p),
              (unsigned long long)captures, (unsigned long long)replays);
    size_t n = stk_model_state_size(m), w = 0;
    char *buf = malloc(n);
    CHECK(buf, "out of memory");
    STK(stk_model_state_save_mem(m, buf, n, &w));
    *size = w;
    stk_sched_destroy(&sched);
    stk_optim_destroy(&opt);
    stk_model_destroy(&m);
    return buf;
}

static void same_run(const char *what, const char *a, size_t na, const float *la, const char *b, size_t nb,
                     const float *lb)
{
    CHECK(na == nb, "%s: the states differ in size: %zu, %zu", what, na, nb);
    for (int s = 0; s < RSTEPS; s++)
        CHECK(!memcmp(&la[s], &lb[s], sizeof(float)), "%s: step %d: loss %.9g, then %.9g", what, s, (double)la[s],
              (double)lb[s]);
    size_t first = na;
    for (size_t i = 0; i < na && first == na; i++)
        if (a[i] != b[i])
            first = i;
    CHECK(first == na, "%s: the states differ from byte %zu of %zu", what, first, na);
    printf("  %-48s the same %zu bytes of state and %d losses\n", what, na, RSTEPS);
}

static void part_repeat(float *dev_x[2])
{
    float l1[RSTEPS], l2[RSTEPS], l3[RSTEPS];
    size_t n1, n2, n3;
    char *a = run(STK_PRECISION_BF16, 0, dev_x, l1, &n1);
    char *b = run(STK_PRECISION_BF16, 0, dev_x, l2, &n2);
    char *c = run(STK_PRECISION_BF16, 1, dev_x, l3, &n3);
    same_run("bf16, deterministic: two runs", a, n1, l1, b, n2, l2);
    same_run("bf16, deterministic: CUDA graphs off and on", a, n1, l1, c, n3, l3);
    CHECK(l1[RSTEPS - 1] < l1[0], "bf16 did not learn: loss %.4f -> %.4f", (double)l1[0], (double)l1[RSTEPS - 1]);
    free(a), free(b), free(c);
    a = run(STK_PRECISION_FP16, 0, dev_x, l1, &n1);
    c = run(STK_PRECISION_FP16, 1, dev_x, l3, &n3);
    same_run("fp16, deterministic: CUDA graphs off and on", a, n1, l1, c, n3, l3);
    free(a), free(c);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *only = argc > 1 ? argv[1] : NULL;
    if (only && !strcmp(only, "ops-cpu")) {
        cpu_pose = 1;
        printf("ops-cpu: this test's references and bounds, the CPU backend on both sides\n");
        part_ops();
        printf("ok\n");
        return 0;
    }
    if (only && strcmp(only, "ops") && strcmp(only, "train") && strcmp(only, "overflow") && strcmp(only, "repeat")) {
        fprintf(stderr, "usage: test_cuda_amp [ops|train|overflow|repeat|ops-cpu]\n");
        return 2;
    }
    int unavailable = gpu_test_unavailable();
    if (unavailable)
        return unavailable;
    model_text = gpu_test_model_text();
    float *dev_x[2] = {NULL, NULL};
    for (int i = 0; i < 2; i++)
        CU(cudaMalloc((void **)&dev_x[i], (size_t)BATCH * IMG * sizeof(float)));
    if (!only || !strcmp(only, "ops")) {
        printf("ops: half precision against the CPU's f32\n");
        part_ops();
    }
    if (!only || !strcmp(only, "train")) {
        printf("train: fmnist-cnn, synthetic batches\n");
        part_train(dev_x[0]);
    }
    if (!only || !strcmp(only, "overflow")) {
        printf("overflow: dynamic loss scaling\n");
        part_overflow(dev_x[0]);
    }
    if (!only || !strcmp(only, "repeat")) {
        printf("repeat: deterministic policy, CUDA graphs\n");
        part_repeat(dev_x);
    }
    printf("ok\n");
    cudaFree(dev_x[0]);
    cudaFree(dev_x[1]);
    free(model_text);
    return 0;
}
