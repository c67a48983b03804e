/* SPDX-License-Identifier: MIT */
/* CPU backend: the local passes of synchronized batch normalization. The
 * engine exchanges the per-channel figures between ranks in between, so
 * oneDNN's primitives (which compute batch statistics and their gradient
 * in one go) cannot be used for the statistics; the normalization itself
 * is oneDNN's inference primitive with the global mean/var. One channel is
 * one thread's work; sums are accumulated in double so that a rank's
 * share carries no more rounding than the single-process primitive. */
#include "cpu.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <omp.h>

/* Work below this many elements stays on one thread. */
#define PAR_MIN 16384

/* The loops go over groups of channels that lie together: one channel of
 * plain NCHW (its pixels contiguous), or the 8 channels of a blocked
 * nChw8c block (pixel-major, 8 lanes side by side). Either way a group's
 * run of one sample is read 8 floats at a time into 8 accumulators (lanes
 * of 8 channels, or 8 neighbouring pixels of one channel, folded at the
 * end), which the compiler vectorizes and which breaks the dependency
 * chain of a single double sum. */
typedef struct geom {
    int64_t groups, lanes, hw;
} geom_t;

static geom_t geom_of(const stk__bn_desc_t *d)
{
    int64_t lanes = d->fmt == STK__LAYOUT_BLOCKED8 ? 8 : 1;
    return (geom_t){.groups = d->c / lanes, .lanes = lanes, .hw = d->h * d->w};
}

/* Offset of group grp of sample n. */
static size_t at(const geom_t *g, int64_t n, int64_t grp)
{
    return (size_t)((n * g->groups + grp) * g->hw * g->lanes);
}

/* Lanes in GCC/Clang vector types of 16 bytes (what every x86-64 and
 * ARM64 has): 4 floats for loads and the elementwise pass, 2 doubles for
 * the sums; eight lanes are two of them. */
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));
typedef double v2d __attribute__((vector_size(16)));

static inline __attribute__((always_inline)) v4f load4(const float *p)
{
    v4f v;
    memcpy(&v, p, sizeof(v));
    return v;
}

/* The fused ReLU's mask: dy where the output is positive, else 0. */
static inline __attribute__((always_inline)) float masked(int relu, float y, float dy)
{
    return relu && !(y > 0) ? 0.0f : dy;
}

static inline __attribute__((always_inline)) v4f masked4(int relu, const float *y, const float *dy)
{
    v4f d = load4(dy);
    if (!relu)
        return d;
    v4i keep = load4(y) > (v4f){0};
    return (v4f)((v4i)d & keep);
}

/* Adds a float vector's lanes (times w's: acc4_mul) into double
 * accumulators lo (lanes 0, 1) and hi (2, 3). */
static inline __attribute__((always_inline)) void acc4(v4f v, v2d *lo, v2d *hi)
{
    *lo += (v2d){v[0], v[1]};
    *hi += (v2d){v[2], v[3]};
}

static inline __attribute__((always_inline)) void acc4_mul(v4f v, v4f w, v2d *lo, v2d *hi)
{
    *lo += (v2d){v[0], v[1]} * (v2d){w[0], w[1]};
    *hi += (v2d){v[2], v[3]} * (v2d){w[2], w[3]};
}

static inline __attribute__((always_inline)) void fold(v2d a[4], double *s)
{
    for (int k = 0; k < 4; k++) {
        s[2 * k] += a[k][0];
        s[2 * k + 1] += a[k][1];
    }
}

/* s[k] += v, s2[k] += v * v over p[0..len) by k = i % 8. */
static inline __attribute__((always_inline)) void moments8(const float *p, int64_t len, double *s, double *s2)
{
    v2d a[4] = {{0}}, q[4] = {{0}};
    int64_t i = 0;
    for (; i + 8 <= len; i += 8) {
        v4f u = load4(p + i), w = load4(p + i + 4);
        acc4(u, &a[0], &a[1]);
        acc4(w, &a[2], &a[3]);
        acc4_mul(u, u, &q[0], &q[1]);
        acc4_mul(w, w, &q[2], &q[3]);
    }
    fold(a, s);
    fold(q, s2);
    for (int k = 0; i < len; i++, k++) {
        double v = p[i];
        s[k] += v;
        s2[k] += v * v;
    }
}

/* s[k] += dy', sx[k] += dy' (x - mu[k]) over [0..len) by k = i % 8. */
static inline __attribute__((always_inline)) void dsums8(int relu, const float *x, const float *y, const float *dy,
                                                         int64_t len, const float *mu, double *s, double *sx)
{
    v2d a[4] = {{0}}, b[4] = {{0}};
    v4f m0 = load4(mu), m1 = load4(mu + 4);
    int64_t i = 0;
    for (; i + 8 <= len; i += 8) {
        v4f u = masked4(relu, y + i, dy + i), w = masked4(relu, y + i + 4, dy + i + 4);
        acc4(u, &a[0], &a[1]);
        acc4(w, &a[2], &a[3]);
        acc4_mul(u, load4(x + i) - m0, &b[0], &b[1]);
        acc4_mul(w, load4(x + i + 4) - m1, &b[2], &b[3]);
    }
    fold(a, s);
    fold(b, sx);
    for (int k = 0; i < len; i++, k++) {
        float v = masked(relu, y[i], dy[i]);
        s[k] += v;
        sx[k] += (double)v * (double)(x[i] - mu[k]);
    }
}

int stk__cpu_bn_stats(void *ctx, stk__op_t *op, const float *x, double *stats)
{
    (void)ctx;
    const stk__bn_desc_t *d = &op->bn;
    geom_t g = geom_of(d);
    int64_t L = g.lanes, len = g.hw * L;
    double count = (double)(d->n * g.hw);
#pragma omp parallel for if (d->n * d->c * g.hw > PAR_MIN)
    for (int64_t grp = 0; grp < g.groups; grp++) {
        double s[8] = {0}, s2[8] = {0};
        for (int64_t n = 0; n < d->n; n++)
            moments8(x + at(&g, n, grp), len, s, s2);
        if (L == 1)
            for (int k = 1; k < 8; k++) {
                s[0] += s[k];
                s2[0] += s2[k];
            }
        for (int64_t l = 0; l < L; l++) {
            double mean = s[l] / count, var = s2[l] / count - mean * mean;
            stats[grp * L + l] = mean;
            stats[d->c + grp * L + l] = var > 0 ? var : 0;
        }
    }
    return 0;
}

int stk__cpu_bn_backward_sums(void *ctx, stk__op_t *op, const float *x, const float *y, const float *dy,
                              const float *mean, const float *var, float *sum_dy, float *sum_dyxhat)
{
    (void)ctx;
    const stk__bn_desc_t *d = &op->bn;
    geom_t g = geom_of(d);
    int64_t L = g.lanes, len = g.hw * L;
    int relu = d->relu;
#pragma omp parallel for if (d->n * d->c * g.hw > PAR_MIN)
    for (int64_t grp = 0; grp < g.groups; grp++) {
        double s[8] = {0}, sx[8] = {0};
        float mu[8];
        for (int k = 0; k < 8; k++)
            mu[k] = mean[grp * L + (L == 1 ? 0 : k)];
        for (int64_t n = 0; n < d->n; n++) {
            size_t o = at(&g, n, grp);
            if (relu)
                dsums8(1, x + o, y + o, dy + o, len, mu, s, sx);
            else
                dsums8(0, x + o, y + o, dy + o, len, mu, s, sx);
        }
        if (L == 1)
            for (int k = 1; k < 8; k++) {
                s[0] += s[k];
                sx[0] += sx[k];
            }
        for (int64_t l = 0; l < L; l++) {
            int64_t c = grp * L + l;
            sum_dy[c] = (float)s[l];
            sum_dyxhat[c] = (float)(sx[l] / sqrt((double)var[c] + (double)d->eps));
        }
    }
    return 0;
}

int stk__cpu_bn_backward_apply(void *ctx, stk__op_t *op, const float *x, const float *y, const float *dy,
                               const float *gamma, const float *mean, const float *var, const float *sum_dy,
                               const float *sum_dyxhat, int64_t count, float *dx)
{
    (void)ctx;
    const stk__bn_desc_t *d = &op->bn;
    geom_t g = geom_of(d);
    int64_t L = g.lanes, len = g.hw * L;
    int relu = d->relu;
#pragma omp parallel for if (d->n * d->c * g.hw > PAR_MIN)
    for (int64_t grp = 0; grp < g.groups; grp++) {
        /* Per lane k = i % 8: a channel's constants, repeated for plain. */
        float scale[8], mu[8], a[8], b[8];
        for (int k = 0; k < 8; k++) {
            int64_t c = grp * L + (L == 1 ? 0 : k);
            float inv = (float)(1.0 / sqrt((double)var[c] + (double)d->eps));
            scale[k] = gamma[c] * inv;
            mu[k] = mean[c];
            a[k] = sum_dy[c] / (float)count;
            b[k] = sum_dyxhat[c] * inv / (float)count;
        }
        v4f vs[2] = {load4(scale), load4(scale + 4)}, vm[2] = {load4(mu), load4(mu + 4)};
        v4f va[2] = {load4(a), load4(a + 4)}, vb[2] = {load4(b), load4(b + 4)};
        for (int64_t n = 0; n < d->n; n++) {
            size_t o = at(&g, n, grp);
            const float *px = x + o, *py = y + o, *pd = dy + o;
            float *pdx = dx + o;
            int64_t i = 0;
            for (; i + 8 <= len; i += 8)
                for (int h = 0; h < 8; h += 4) {
                    v4f r = vs[h / 4] * (masked4(relu, py + i + h, pd + i + h) - va[h / 4] -
                                         (load4(px + i + h) - vm[h / 4]) * vb[h / 4]);
                    memcpy(pdx + i + h, &r, sizeof(r));
                }
            for (int k = 0; i < len; i++, k++) {
                float v = masked(relu, py[i], pd[i]);
                pdx[i] = scale[k] * (v - a[k] - (px[i] - mu[k]) * b[k]);
            }
        }
    }
    return 0;
}
