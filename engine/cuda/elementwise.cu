/* SPDX-License-Identifier: MIT */
/* Element-wise kernels of the CUDA backend: activations, add and
 * accumulate, channel concat, dropout (the CPU backend's Philox mask),
 * bias add and the layout reorder. Each thread body is in
 * kernel_bodies.h; this file only maps threads to elements. */
#include "kernel_bodies.h"
#include "launch.cuh"

static __global__ void k_elt_fwd(int alg, float alpha, size_t n, const float *x, float *y)
{
    FOR_EACH(i, n)
    y[i] = kb_elt_fwd(alg, alpha, x[i]);
}

static __global__ void k_elt_bwd(int alg, float alpha, size_t n, const float *x, const float *y, const float *dy,
                                 float *dx)
{
    FOR_EACH(i, n)
    dx[i] = kb_elt_bwd(alg, alpha, x ? x[i] : 0.0f, y ? y[i] : 0.0f, dy[i]);
}

static __global__ void k_add(size_t n, const float *a, const float *b, float *y)
{
    FOR_EACH(i, n)
    y[i] = a[i] + b[i];
}

static __global__ void k_accumulate(size_t n, const float *x, float *y)
{
    FOR_EACH(i, n)
    y[i] += x[i];
}

static __global__ void k_concat_fwd(size_t total, int64_t ca, int64_t cb, int64_t hw, const float *a,
                                    const float *b, float *y)
{
    FOR_EACH(i, total)
    y[i] = kb_concat_fwd_at((int64_t)i, ca, cb, hw, a, b);
}

static __global__ void k_concat_bwd(size_t total, int64_t ct, int64_t c0, int64_t cp, int64_t hw, const float *dy,
                                    float *part, int acc)
{
    FOR_EACH(i, total)
    {
        float v = dy[kb_concat_src((int64_t)i, ct, c0, cp, hw)];
        part[i] = acc ? part[i] + v : v;
    }
}

static __global__ void k_dropout(size_t n, size_t blocks, float p, float scale, uint64_t key, uint64_t step,
                                 const float *x, float *y)
{
    FOR_EACH(b, blocks)
    kb_dropout_block((uint64_t)b, n, p, scale, key, step, x, y);
}

/* The same, the step read from device memory (a replayed CUDA graph's). */
static __global__ void k_dropout_dev(size_t n, size_t blocks, float p, float scale, uint64_t key,
                                     const uint64_t *step, const float *x, float *y)
{
    const uint64_t st = *step;
    FOR_EACH(b, blocks)
    kb_dropout_block((uint64_t)b, n, p, scale, key, st, x, y);
}

static __global__ void k_bias_add(size_t total, int64_t c, int64_t inner, const float *b, float *y)
{
    FOR_EACH(i, total)
    y[i] += b[((int64_t)i / inner) % c];
}

static __global__ void k_reorder(size_t total, int64_t c, int64_t h, int64_t w, int to_blocked, const float *src,
                                 float *dst)
{
    FOR_EACH(i, total)
    {
        int64_t e = (int64_t)i;
        int64_t ww = e % w, hh = (e / w) % h, ch = (e / (w * h)) % c, s = e / (w * h * c);
        int64_t bl = kb_blocked8(s, ch, hh, ww, c, h, w);
        if (to_blocked)
            dst[bl] = src[e];
        else
            dst[e] = src[bl];
    }
}

extern "C" cudaError_t stk__k_eltwise_fwd(cudaStream_t s, int alg, float alpha, size_t n, const float *x, float *y)
{
    if (alg < STK__K_RELU || alg > STK__K_TANH)
        return cudaErrorInvalidValue;
    if (n)
        k_elt_fwd<<<grid_for(n), THREADS, 0, s>>>(alg, alpha, n, x, y);
    return launched();
}

extern "C" cudaError_t stk__k_eltwise_bwd(cudaStream_t s, int alg, float alpha, size_t n, const float *x,
                                          const float *y, const float *dy, float *dx)
{
    if (alg < STK__K_RELU || alg > STK__K_TANH)
        return cudaErrorInvalidValue;
    if (n)
        k_elt_bwd<<<grid_for(n), THREADS, 0, s>>>(alg, alpha, n, x, y, dy, dx);
    return launched();
}

extern "C" cudaError_t stk__k_add(cudaStream_t s, size_t n, const float *a, const float *b, float *y)
{
    if (n)
        k_add<<<grid_for(n), THREADS, 0, s>>>(n, a, b, y);
    return launched();
}

extern "C" cudaError_t stk__k_accumulate(cudaStream_t s, size_t n, const float *x, float *y)
{
    if (n)
        k_accumulate<<<grid_for(n), THREADS, 0, s>>>(n, x, y);
    return launched();
}

extern "C" cudaError_t stk__k_concat_fwd(cudaStream_t s, int64_t n, int64_t ca, int64_t cb, int64_t hw,
                                         const float *a, const float *b, float *y)
{
    size_t total = (size_t)(n * (ca + cb) * hw);
    if (total)
        k_concat_fwd<<<grid_for(total), THREADS, 0, s>>>(total, ca, cb, hw, a, b, y);
    return launched();
}

extern "C" cudaError_t stk__k_concat_bwd(cudaStream_t s, int64_t n, int64_t ct, int64_t c0, int64_t cp, int64_t hw,
                                         const float *dy, float *part, int acc)
{
    size_t total = (size_t)(n * cp * hw);
    if (total)
        k_concat_bwd<<<grid_for(total), THREADS, 0, s>>>(total, ct, c0, cp, hw, dy, part, acc);
    return launched();
}

extern "C" cudaError_t stk__k_dropout(cudaStream_t s, size_t n, float p, uint64_t key, uint64_t step,
                                      const float *x, float *y)
{
    float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    size_t blocks = (n + 3) / 4;
    if (blocks)
        k_dropout<<<grid_for(blocks), THREADS, 0, s>>>(n, blocks, p, scale, key, step, x, y);
    return launched();
}

extern "C" cudaError_t stk__k_dropout_dev(cudaStream_t s, size_t n, float p, uint64_t key, const uint64_t *step,
                                          const float *x, float *y)
{
    float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    size_t blocks = (n + 3) / 4;
    if (blocks)
        k_dropout_dev<<<grid_for(blocks), THREADS, 0, s>>>(n, blocks, p, scale, key, step, x, y);
    return launched();
}

extern "C" cudaError_t stk__k_bias_add(cudaStream_t s, int64_t outer, int64_t c, int64_t inner, const float *b,
                                       float *y)
{
    size_t total = (size_t)(outer * c * inner);
    if (total)
        k_bias_add<<<grid_for(total), THREADS, 0, s>>>(total, c, inner, b, y);
    return launched();
}

extern "C" cudaError_t stk__k_reorder(cudaStream_t s, int64_t n, int64_t c, int64_t h, int64_t w, int to_blocked,
                                      const float *src, float *dst)
{
    if (c % 8)
        return cudaErrorInvalidValue;
    size_t total = (size_t)(n * c * h * w);
    if (total)
        k_reorder<<<grid_for(total), THREADS, 0, s>>>(total, c, h, w, to_blocked, src, dst);
    return launched();
}

/* The feed's half batches to f32 (kb_half_to_f32; self-contained). */
static __global__ void k_half_to_f32(size_t n, const uint16_t *src, int bf16, float *dst)
{
    FOR_EACH(i, n)
    dst[i] = kb_half_to_f32(src[i], bf16);
}

extern "C" cudaError_t stk__k_half_to_f32(cudaStream_t s, size_t n, const uint16_t *src, int bf16, float *dst)
{
    if (n)
        k_half_to_f32<<<grid_for(n), THREADS, 0, s>>>(n, src, bf16, dst);
    return launched();
}
