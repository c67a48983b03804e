/* SPDX-License-Identifier: MIT */
/* CPU backend, sequence helpers: row gathers and scatter-adds (embedding
 * lookups and their gradient, a loss over the valid steps only) and the
 * heads that pool each sequence's valid steps. Plain loops over host
 * memory; the work is small beside the recurrent layers'. */
#include "cpu.h"

#include <errno.h>
#include <string.h>

#define PAR_MIN 16384

int stk__cpu_gather_rows(void *ctx, int64_t n, int64_t f, int64_t rows, const int64_t *idx, const float *src,
                         float *dst)
{
    (void)ctx;
    for (int64_t i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= rows)
            return stk__error(-EINVAL, "row %lld: index %lld is outside [0, %lld)", (long long)i, (long long)idx[i],
                              (long long)rows);
#pragma omp parallel for if (n * f > PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        memcpy(dst + i * f, src + idx[i] * f, (size_t)f * sizeof(float));
    return 0;
}

void stk__cpu_scatter_add_rows(void *ctx, int64_t n, int64_t f, const int64_t *idx, int64_t skip, const float *src,
                               float *dst)
{
    (void)ctx;
    /* Indices repeat (a common token): rows are added one after another;
     * columns could be split between threads, but f is an embedding's
     * width and the whole pass is a few hundred microseconds. */
    for (int64_t i = 0; i < n; i++) {
        if (idx[i] == skip)
            continue;
        float *d = dst + idx[i] * f;
        const float *s = src + i * f;
        for (int64_t j = 0; j < f; j++)
            d[j] += s[j];
    }
}

void stk__cpu_seq_pool_forward(void *ctx, int mean, int64_t n, int64_t t, int64_t f, const int64_t *lengths,
                               const float *x, float *y)
{
    (void)ctx;
#pragma omp parallel for if (n * t * f > PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        int64_t len = lengths[i];
        float *yi = y + i * f;
        const float *xi = x + i * t * f;
        if (len <= 0) {
            memset(yi, 0, (size_t)f * sizeof(float));
        } else if (!mean) {
            memcpy(yi, xi + (len - 1) * f, (size_t)f * sizeof(float));
        } else {
            memset(yi, 0, (size_t)f * sizeof(float));
            for (int64_t s = 0; s < len; s++)
                for (int64_t j = 0; j < f; j++)
                    yi[j] += xi[s * f + j];
            float inv = 1.0f / (float)len;
            for (int64_t j = 0; j < f; j++)
                yi[j] *= inv;
        }
    }
}

void stk__cpu_seq_pool_backward(void *ctx, int mean, int64_t n, int64_t t, int64_t f, const int64_t *lengths,
                                const float *dy, float *dx)
{
    (void)ctx;
#pragma omp parallel for if (n * t * f > PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        int64_t len = lengths[i];
        float *dxi = dx + i * t * f;
        const float *dyi = dy + i * f;
        memset(dxi, 0, (size_t)(t * f) * sizeof(float));
        if (len <= 0)
            continue;
        if (!mean) {
            memcpy(dxi + (len - 1) * f, dyi, (size_t)f * sizeof(float));
            continue;
        }
        float inv = 1.0f / (float)len;
        for (int64_t s = 0; s < len; s++)
            for (int64_t j = 0; j < f; j++)
                dxi[s * f + j] = dyi[j] * inv;
    }
}
