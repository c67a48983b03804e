/* SPDX-License-Identifier: MIT */
/* Sequence kernels of the CUDA backend: row gathers (embedding lookups, a
 * loss's counted steps), row scatter-adds (their gradients) and the heads
 * that pool each sequence's valid steps. No atomics on floats: a
 * scatter-add gives each thread one column and walks the rows in order,
 * so repeated indices add up in the same order on every run, as on the
 * CPU. */
#include "kernels.h"
#include "launch.cuh"

/* dst[i, j] = src[idx[i], j]; the smallest bad row goes to *bad (which
 * starts at n: none). */
static __global__ void k_gather(size_t total, int64_t f, int64_t rows, const int64_t *idx, const float *src,
                                float *dst, unsigned long long *bad)
{
    FOR_EACH(e, total)
    {
        int64_t i = (int64_t)e / f, j = (int64_t)e % f, r = idx[i];
        if (r < 0 || r >= rows) {
            atomicMin(bad, (unsigned long long)i);
            dst[e] = 0.0f;
        } else {
            dst[e] = src[r * f + j];
        }
    }
}

static __global__ void k_scatter_add(int64_t n, int64_t f, const int64_t *idx, int64_t skip, const float *src,
                                     float *dst)
{
    FOR_EACH(j, f)
    {
        for (int64_t i = 0; i < n; i++)
            if (idx[i] != skip)
                dst[idx[i] * f + (int64_t)j] += src[i * f + (int64_t)j];
    }
}

static __global__ void k_pool_fwd(size_t total, int mean, int64_t t, int64_t f, const int64_t *lengths,
                                  const float *x, float *y)
{
    FOR_EACH(e, total)
    {
        int64_t i = (int64_t)e / f, j = (int64_t)e % f, len = lengths[i];
        const float *xi = x + i * t * f + j;
        float v = 0.0f;
        if (len > 0 && !mean) {
            v = xi[(len - 1) * f];
        } else if (len > 0) {
            for (int64_t s = 0; s < len; s++)
                v += xi[s * f];
            v *= 1.0f / (float)len;
        }
        y[e] = v;
    }
}

static __global__ void k_pool_bwd(size_t total, int mean, int64_t t, int64_t f, const int64_t *lengths,
                                  const float *dy, float *dx)
{
    FOR_EACH(e, total)
    {
        int64_t s = ((int64_t)e / f) % t, i = (int64_t)e / (t * f), j = (int64_t)e % f, len = lengths[i];
        float v = 0.0f;
        if (s < len)
            v = mean ? dy[i * f + j] * (1.0f / (float)len) : (s == len - 1 ? dy[i * f + j] : 0.0f);
        dx[e] = v;
    }
}

extern "C" cudaError_t stk__k_gather_rows(cudaStream_t s, int64_t n, int64_t f, int64_t rows, const int64_t *idx,
                                          const float *src, float *dst, unsigned long long *bad)
{
    size_t total = (size_t)(n * f);
    unsigned long long none = (unsigned long long)n;
    cudaError_t e = cudaMemcpyAsync(bad, &none, sizeof(none), cudaMemcpyHostToDevice, s);
    if (e != cudaSuccess)
        return e;
    if (total)
        k_gather<<<grid_for(total), THREADS, 0, s>>>(total, f, rows, idx, src, dst, bad);
    return launched();
}

extern "C" cudaError_t stk__k_scatter_add_rows(cudaStream_t s, int64_t n, int64_t f, const int64_t *idx, int64_t skip,
                                               const float *src, float *dst)
{
    if (n && f)
        k_scatter_add<<<grid_for((size_t)f), THREADS, 0, s>>>(n, f, idx, skip, src, dst);
    return launched();
}

extern "C" cudaError_t stk__k_seq_pool_fwd(cudaStream_t s, int mean, int64_t n, int64_t t, int64_t f,
                                           const int64_t *lengths, const float *x, float *y)
{
    size_t total = (size_t)(n * f);
    if (total)
        k_pool_fwd<<<grid_for(total), THREADS, 0, s>>>(total, mean, t, f, lengths, x, y);
    return launched();
}

extern "C" cudaError_t stk__k_seq_pool_bwd(cudaStream_t s, int mean, int64_t n, int64_t t, int64_t f,
                                           const int64_t *lengths, const float *dy, float *dx)
{
    size_t total = (size_t)(n * t * f);
    if (total)
        k_pool_bwd<<<grid_for(total), THREADS, 0, s>>>(total, mean, t, f, lengths, dy, dx);
    return launched();
}
