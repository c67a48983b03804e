/* SPDX-License-Identifier: MIT */
/* The casts of mixed precision: f32 NCHW activations and OIHW weights to
 * BF16 or FP16 NHWC (KRSC) for cuDNN's tensor-core engines and cuBLASLt,
 * the half results back, and f32 results rounded to half in place. One
 * thread per element, the index math in kernel_bodies.h (tested on the
 * host); no atomics, no allocation, so the casts repeat bit for bit and go
 * into a captured CUDA graph like any kernel. */
#include "kernel_bodies.h"
#include "launch.cuh"

template <typename H>
static __global__ void k_to_half(size_t total, int64_t c, int64_t h, int64_t w, const float *x, H *y)
{
    FOR_EACH(e, total) {
        kb_to_half_nhwc_at<H>((int64_t)e, c, h, w, x, y);
    }
}

template <typename H>
static __global__ void k_from_half(size_t total, int64_t c, int64_t h, int64_t w, const H *y, float *x)
{
    FOR_EACH(e, total) {
        x[e] = kb_from_half_nhwc_at<H>((int64_t)e, c, h, w, y);
    }
}

template <typename H>
static __global__ void k_round(size_t n, float *x)
{
    FOR_EACH(i, n) {
        x[i] = kb_round_half<H>(x[i]);
    }
}

extern "C" cudaError_t stk__k_round_half(cudaStream_t s, int dt, size_t n, float *x)
{
    if (n == 0)
        return launched();
    if (dt == STK__K_BF16)
        k_round<__nv_bfloat16><<<grid_for(n), THREADS, 0, s>>>(n, x);
    else if (dt == STK__K_F16)
        k_round<__half><<<grid_for(n), THREADS, 0, s>>>(n, x);
    else
        return cudaErrorInvalidValue;
    return launched();
}

extern "C" cudaError_t stk__k_to_half_nhwc(cudaStream_t s, int dt, int64_t n, int64_t c, int64_t h, int64_t w,
                                           const float *src, void *dst)
{
    size_t total = (size_t)(n * c * h * w);
    if (total == 0)
        return launched();
    if (dt == STK__K_BF16)
        k_to_half<__nv_bfloat16><<<grid_for(total), THREADS, 0, s>>>(total, c, h, w, src, (__nv_bfloat16 *)dst);
    else if (dt == STK__K_F16)
        k_to_half<__half><<<grid_for(total), THREADS, 0, s>>>(total, c, h, w, src, (__half *)dst);
    else
        return cudaErrorInvalidValue;
    return launched();
}

extern "C" cudaError_t stk__k_from_half_nhwc(cudaStream_t s, int dt, int64_t n, int64_t c, int64_t h, int64_t w,
                                             const void *src, float *dst)
{
    size_t total = (size_t)(n * c * h * w);
    if (total == 0)
        return launched();
    if (dt == STK__K_BF16)
        k_from_half<__nv_bfloat16><<<grid_for(total), THREADS, 0, s>>>(total, c, h, w, (const __nv_bfloat16 *)src,
                                                                       dst);
    else if (dt == STK__K_F16)
        k_from_half<__half><<<grid_for(total), THREADS, 0, s>>>(total, c, h, w, (const __half *)src, dst);
    else
        return cudaErrorInvalidValue;
    return launched();
}
