/* SPDX-License-Identifier: MIT */
/* Batch normalization, pooling and the per-channel bias gradient of the
 * CUDA backend. Per-channel sums run one block per channel and add in
 * double, so that their rounding does not depend on the batch size the
 * way a float running sum would; the rest is one thread per element
 * (bodies in kernel_bodies.h). Pooling backward gathers (each input
 * element sums the windows that took it) instead of scattering with
 * atomics: no memset first and the same bits every run. */
#include "kernel_bodies.h"
#include "launch.cuh"

/* Element e of channel ch in [n, c, hw], for e in [0, n * hw). */
static __device__ inline int64_t chan_at(int64_t e, int64_t ch, int64_t c, int64_t hw)
{
    int64_t s = e / hw;
    return (s * c + ch) * hw + (e - s * hw);
}

/* One block per channel: the batch mean and the biased variance, the
 * second pass over centred values (as exact as two passes get). */
static __global__ void k_bn_stats(int64_t n, int64_t c, int64_t hw, const float *x, float *mean, float *var)
{
    __shared__ double buf[33];
    const int64_t ch = blockIdx.x, m = n * hw;
    double s = 0.0;
    for (int64_t e = threadIdx.x; e < m; e += blockDim.x)
        s += x[chan_at(e, ch, c, hw)];
    const double mu = block_sum(s, buf) / (double)m;
    double q = 0.0;
    for (int64_t e = threadIdx.x; e < m; e += blockDim.x) {
        double d = (double)x[chan_at(e, ch, c, hw)] - mu;
        q += d * d;
    }
    q = block_sum(q, buf);
    if (threadIdx.x == 0) {
        mean[ch] = (float)mu;
        var[ch] = (float)(q / (double)m);
    }
}

static __global__ void k_bn_apply(size_t total, int64_t c, int64_t hw, float eps, int relu, const float *x,
                                  const float *gamma, const float *beta, const float *mean, const float *var,
                                  float *y, uint8_t *mask)
{
    FOR_EACH(i, total)
    {
        int keep;
        y[i] = kb_bn_apply_at((int64_t)i, c, hw, eps, relu, x, gamma, beta, mean, var, &keep);
        if (mask)
            mask[i] = (uint8_t)keep;
    }
}

/* One block per channel: dbeta = sum dy', dgamma = sum dy' xhat. */
static __global__ void k_bn_bwd_sums(int64_t n, int64_t c, int64_t hw, float eps, const float *x, const float *dy,
                                     const float *mean, const float *var, const uint8_t *mask, float *dgamma,
                                     float *dbeta)
{
    __shared__ double buf[33];
    const int64_t ch = blockIdx.x, m = n * hw;
    const float mu = mean[ch], rstd = 1.0f / sqrtf(var[ch] + eps);
    double sg = 0.0, sb = 0.0;
    for (int64_t e = threadIdx.x; e < m; e += blockDim.x) {
        int64_t i = chan_at(e, ch, c, hw);
        float g = mask && !mask[i] ? 0.0f : dy[i];
        sb += g;
        sg += (double)g * (double)((x[i] - mu) * rstd);
    }
    sb = block_sum(sb, buf);
    sg = block_sum(sg, buf);
    if (threadIdx.x == 0) {
        dgamma[ch] = (float)sg;
        dbeta[ch] = (float)sb;
    }
}

static __global__ void k_bn_dx(size_t total, int64_t c, int64_t hw, int64_t m, float eps, const float *x,
                               const float *dy, const float *gamma, const float *mean, const float *var,
                               const uint8_t *mask, const float *dgamma, const float *dbeta, float *dx)
{
    FOR_EACH(i, total)
    dx[i] = kb_bn_dx_at((int64_t)i, c, hw, m, eps, x, dy, gamma, mean, var, mask, dgamma, dbeta);
}

static __global__ void k_bn_running(int64_t c, float momentum, double unbias, const float *mean, const float *var,
                                    float *rm, float *rv)
{
    FOR_EACH(i, c)
    {
        rm[i] = (1.0f - momentum) * rm[i] + momentum * mean[i];
        rv[i] = (1.0f - momentum) * rv[i] + momentum * (float)(var[i] * unbias);
    }
}

static __global__ void k_bn_fold(int64_t c, float eps, const float *b, const float *gamma, const float *beta,
                                 const float *mean, const float *var, float *scale, float *shift)
{
    FOR_EACH(i, c)
    {
        kb_bn_fold_at((int64_t)i, eps, b, gamma, beta, mean, var, scale, shift);
    }
}

/* One block per channel of [outer, c, inner]. */
static __global__ void k_bias_grad(int64_t outer, int64_t c, int64_t inner, const float *dy, float *db)
{
    __shared__ double buf[33];
    const int64_t ch = blockIdx.x, m = outer * inner;
    double s = 0.0;
    for (int64_t e = threadIdx.x; e < m; e += blockDim.x) {
        int64_t o = e / inner;
        s += dy[(o * c + ch) * inner + (e - o * inner)];
    }
    s = block_sum(s, buf);
    if (threadIdx.x == 0)
        db[ch] = (float)s;
}

static __global__ void k_pool_fwd(stk__k_pool_t p, size_t total, const float *x, float *y, int32_t *argmax)
{
    FOR_EACH(o, total)
    {
        int32_t at = -1;
        y[o] = kb_pool_fwd_at(&p, (int64_t)o, x, &at);
        if (argmax)
            argmax[o] = at;
    }
}

static __global__ void k_pool_bwd(stk__k_pool_t p, size_t total, const float *dy, const int32_t *argmax, float *dx)
{
    FOR_EACH(e, total)
    dx[e] = kb_pool_bwd_at(&p, (int64_t)e, dy, argmax);
}

/* Channels go in gridDim.x, which allows 2^31 - 1 blocks. */
static int bad_channels(int64_t c)
{
    return c < 1 || c > 0x7fffffff;
}

extern "C" cudaError_t stk__k_bn_stats(cudaStream_t s, int64_t n, int64_t c, int64_t hw, const float *x,
                                       float *mean, float *var)
{
    if (bad_channels(c) || n * hw < 1)
        return cudaErrorInvalidValue;
    k_bn_stats<<<(unsigned)c, THREADS, 0, s>>>(n, c, hw, x, mean, var);
    return launched();
}

extern "C" cudaError_t stk__k_bn_apply(cudaStream_t s, int64_t n, int64_t c, int64_t hw, float eps, int relu,
                                       const float *x, const float *gamma, const float *beta, const float *mean,
                                       const float *var, float *y, uint8_t *mask)
{
    size_t total = (size_t)(n * c * hw);
    if (total)
        k_bn_apply<<<grid_for(total), THREADS, 0, s>>>(total, c, hw, eps, relu, x, gamma, beta, mean, var, y,
                                                        mask);
    return launched();
}

extern "C" cudaError_t stk__k_bn_backward(cudaStream_t s, int64_t n, int64_t c, int64_t hw, float eps,
                                          const float *x, const float *dy, const float *gamma, const float *mean,
                                          const float *var, const uint8_t *mask, float *dx, float *dgamma,
                                          float *dbeta)
{
    if (bad_channels(c) || n * hw < 1)
        return cudaErrorInvalidValue;
    k_bn_bwd_sums<<<(unsigned)c, THREADS, 0, s>>>(n, c, hw, eps, x, dy, mean, var, mask, dgamma, dbeta);
    cudaError_t e = launched();
    if (e != cudaSuccess || !dx)
        return e;
    size_t total = (size_t)(n * c * hw);
    k_bn_dx<<<grid_for(total), THREADS, 0, s>>>(total, c, hw, n * hw, eps, x, dy, gamma, mean, var, mask, dgamma,
                                                 dbeta, dx);
    return launched();
}

extern "C" cudaError_t stk__k_bn_running(cudaStream_t s, int64_t c, int64_t count, float momentum,
                                         const float *mean, const float *var, float *running_mean,
                                         float *running_var)
{
    double unbias = count > 1 ? (double)count / (double)(count - 1) : 1.0;
    if (c > 0)
        k_bn_running<<<grid_for((size_t)c), THREADS, 0, s>>>(c, momentum, unbias, mean, var, running_mean,
                                                              running_var);
    return launched();
}

extern "C" cudaError_t stk__k_bn_fold(cudaStream_t s, int64_t c, float eps, const float *b, const float *gamma,
                                      const float *beta, const float *mean, const float *var, float *scale,
                                      float *shift)
{
    if (c > 0)
        k_bn_fold<<<grid_for((size_t)c), THREADS, 0, s>>>(c, eps, b, gamma, beta, mean, var, scale, shift);
    return launched();
}

extern "C" cudaError_t stk__k_bias_grad(cudaStream_t s, int64_t outer, int64_t c, int64_t inner, const float *dy,
                                        float *db)
{
    if (bad_channels(c))
        return cudaErrorInvalidValue;
    k_bias_grad<<<(unsigned)c, THREADS, 0, s>>>(outer, c, inner, dy, db);
    return launched();
}

extern "C" cudaError_t stk__k_pool_fwd(cudaStream_t s, const stk__k_pool_t *p, const float *x, float *y,
                                       int32_t *argmax)
{
    if (p->ih * p->iw > 0x7fffffff)
        return cudaErrorInvalidValue; /* argmax indices are int32 */
    size_t total = (size_t)(p->n * p->c * p->oh * p->ow);
    if (total)
        k_pool_fwd<<<grid_for(total), THREADS, 0, s>>>(*p, total, x, y, p->max ? argmax : nullptr);
    return launched();
}

extern "C" cudaError_t stk__k_pool_bwd(cudaStream_t s, const stk__k_pool_t *p, const float *dy,
                                       const int32_t *argmax, float *dx)
{
    if (p->max && !argmax)
        return cudaErrorInvalidValue;
    size_t total = (size_t)(p->n * p->c * p->ih * p->iw);
    if (total)
        k_pool_bwd<<<grid_for(total), THREADS, 0, s>>>(*p, total, dy, argmax, dx);
    return launched();
}
