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

#include <omp.h>

/* Work below this many elements stays on one thread. */
#define PAR_MIN 16384

/* Where channel c of sample n starts, and the step between its pixels. */
static size_t at(const stk__bn_desc_t *d, int64_t n, int64_t c)
{
    int64_t hw = d->h * d->w;
    if (d->fmt == STK__LAYOUT_BLOCKED8)
        return (size_t)(((n * (d->c / 8) + c / 8) * hw) * 8 + c % 8);
    return (size_t)((n * d->c + c) * hw);
}

static size_t step_of(const stk__bn_desc_t *d)
{
    return d->fmt == STK__LAYOUT_BLOCKED8 ? 8 : 1;
}

int stk__cpu_bn_stats(void *ctx, stk__op_t *op, const float *x, double *stats)
{
    (void)ctx;
    const stk__bn_desc_t *d = &op->bn;
    int64_t hw = d->h * d->w;
    size_t st = step_of(d);
    double count = (double)(d->n * hw);
#pragma omp parallel for if (d->n * d->c * hw > PAR_MIN)
    for (int64_t c = 0; c < d->c; c++) {
        double s = 0, s2 = 0;
        for (int64_t n = 0; n < d->n; n++) {
            const float *p = x + at(d, n, c);
            for (int64_t i = 0; i < hw; i++) {
                double v = p[(size_t)i * st];
                s += v;
                s2 += v * v;
            }
        }
        double mean = s / count, var = s2 / count - mean * mean;
        stats[c] = mean;
        stats[d->c + c] = var > 0 ? var : 0;
    }
    return 0;
}

int stk__cpu_bn_backward_sums(void *ctx, stk__op_t *op, const float *x, const float *y, const float *dy,
                              const float *mean, const float *var, float *sum_dy, float *sum_dyxhat)
{
    (void)ctx;
    const stk__bn_desc_t *d = &op->bn;
    int64_t hw = d->h * d->w;
    size_t st = step_of(d);
    int relu = d->relu;
#pragma omp parallel for if (d->n * d->c * hw > PAR_MIN)
    for (int64_t c = 0; c < d->c; c++) {
        double s = 0, sx = 0;
        float mu = mean[c];
        for (int64_t n = 0; n < d->n; n++) {
            size_t o = at(d, n, c);
            for (int64_t i = 0; i < hw; i++) {
                size_t k = o + (size_t)i * st;
                float g = relu && !(y[k] > 0) ? 0.0f : dy[k];
                s += g;
                sx += (double)g * (double)(x[k] - mu);
            }
        }
        sum_dy[c] = (float)s;
        sum_dyxhat[c] = (float)(sx / sqrt((double)var[c] + (double)d->eps));
    }
    return 0;
}

int stk__cpu_bn_backward_apply(void *ctx, stk__op_t *op, const float *x, const float *y, const float *dy,
                               const float *gamma, const float *mean, const float *var, const float *sum_dy,
                               const float *sum_dyxhat, int64_t count, float *dx)
{
    (void)ctx;
    const stk__bn_desc_t *d = &op->bn;
    int64_t hw = d->h * d->w;
    size_t st = step_of(d);
    int relu = d->relu;
#pragma omp parallel for if (d->n * d->c * hw > PAR_MIN)
    for (int64_t c = 0; c < d->c; c++) {
        float inv = (float)(1.0 / sqrt((double)var[c] + (double)d->eps));
        float scale = gamma[c] * inv, mu = mean[c];
        float a = sum_dy[c] / (float)count, b = sum_dyxhat[c] * inv / (float)count;
        for (int64_t n = 0; n < d->n; n++) {
            size_t o = at(d, n, c);
            for (int64_t i = 0; i < hw; i++) {
                size_t k = o + (size_t)i * st;
                float g = relu && !(y[k] > 0) ? 0.0f : dy[k];
                dx[k] = scale * (g - a - (x[k] - mu) * b);
            }
        }
    }
    return 0;
}
