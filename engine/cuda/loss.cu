/* SPDX-License-Identifier: MIT */
/* Softmax cross-entropy of the CUDA backend, in the CPU backend's
 * arithmetic: exponentials in float, their sum and the log-sum-exp in
 * double, the loss of a row in double. One block per row; the rows'
 * losses are then summed by one block in a fixed order, so the loss has
 * the same bits every run. Also the accuracy count (top-k). */
#include "kernel_bodies.h"
#include "launch.cuh"

static __device__ inline float block_max(float v, float *buf)
{
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
    if (lane == 0)
        buf[warp] = v;
    __syncthreads();
    if (warp == 0) {
        const unsigned nw = (blockDim.x + 31u) >> 5;
        v = lane < nw ? buf[lane] : -INFINITY;
        for (int o = 16; o > 0; o >>= 1)
            v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
        if (lane == 0)
            buf[32] = v;
    }
    __syncthreads();
    float r = buf[32];
    __syncthreads();
    return r;
}

static __global__ void k_xent_rows(int64_t n, int64_t k, const float *logits, const int64_t *labels,
                                   const float *soft, float smoothing, float *prob, double *row)
{
    __shared__ double dbuf[33];
    __shared__ float fbuf[33];
    const int64_t i = blockIdx.x;
    const float *z = logits + i * k;
    float *p = prob + i * k;
    float mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < k; j += blockDim.x)
        mx = fmaxf(mx, z[j]);
    mx = block_max(mx, fbuf);
    double sum = 0.0;
    for (int64_t j = threadIdx.x; j < k; j += blockDim.x) {
        float e = expf(z[j] - mx);
        p[j] = e;
        sum += e;
    }
    sum = block_sum(sum, dbuf);
    const double lse = log(sum) + mx;
    const float inv = (float)(1.0 / sum);
    /* The engine checks labels; one that slipped through poisons the
     * loss instead of reading outside the row. */
    const int bad = labels && (labels[i] < 0 || labels[i] >= k);
    double l = 0.0;
    for (int64_t j = threadIdx.x; j < k; j += blockDim.x) {
        p[j] *= inv;
        double t = labels ? (j == labels[i] ? 1.0 : 0.0) : soft[i * k + j];
        t = t * (1.0 - smoothing) + smoothing / (double)k;
        if (t != 0.0)
            l -= t * ((double)z[j] - lse);
    }
    l = block_sum(l, dbuf);
    if (threadIdx.x == 0)
        row[i] = bad ? NAN : l;
}

/* One block: the mean of the rows' losses, in a fixed order. */
static __global__ void k_xent_mean(int64_t n, const double *row, float *loss)
{
    __shared__ double buf[33];
    double s = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
        s += row[i];
    s = block_sum(s, buf);
    if (threadIdx.x == 0)
        *loss = (float)(s / (double)n);
}

/* One warp per row: the label's rank among the row's logits. */
static __global__ void k_count_correct(int64_t n, int64_t k, int topk, const float *logits, const int64_t *labels,
                                       unsigned long long *correct)
{
    const int64_t i = blockIdx.x;
    const int64_t y = labels[i];
    if (y < 0 || y >= k)
        return; /* the engine checks labels; such a row is simply wrong */
    const float *z = logits + i * k;
    const float zy = z[y];
    unsigned long long rank = 0;
    for (int64_t j = threadIdx.x; j < k; j += blockDim.x)
        rank += z[j] > zy || (j < y && z[j] == zy);
    for (int o = 16; o > 0; o >>= 1)
        rank += __shfl_down_sync(0xffffffffu, rank, o);
    if (threadIdx.x == 0 && rank < (unsigned long long)topk)
        atomicAdd(correct, 1ull); /* integer sums: the same in any order */
}

static __global__ void k_xent_bwd(size_t total, int64_t n, int64_t k, const float *prob, const int64_t *labels,
                                  const float *soft, float smoothing, float scale, float *dlogits)
{
    FOR_EACH(e, total)
    dlogits[e] = kb_xent_bwd_at((int64_t)e, n, k, prob, labels, soft, smoothing, scale);
}

extern "C" cudaError_t stk__k_xent_fwd(cudaStream_t s, int64_t n, int64_t k, const float *logits,
                                       const int64_t *labels, const float *soft, float smoothing, float *prob,
                                       double *row, float *loss)
{
    if (n < 1 || n > 0x7fffffff || k < 1 || (!labels && !soft))
        return cudaErrorInvalidValue;
    k_xent_rows<<<(unsigned)n, k >= 1024 ? THREADS : 32, 0, s>>>(n, k, logits, labels, soft, smoothing, prob, row);
    k_xent_mean<<<1, THREADS, 0, s>>>(n, row, loss);
    return launched();
}

extern "C" cudaError_t stk__k_count_correct(cudaStream_t s, int64_t n, int64_t k, int topk, const float *logits,
                                            const int64_t *labels, int64_t *correct)
{
    if (n < 0 || n > 0x7fffffff || k < 1 || topk < 1)
        return cudaErrorInvalidValue;
    cudaError_t e = cudaMemsetAsync(correct, 0, sizeof(*correct), s);
    if (e != cudaSuccess || n == 0)
        return e;
    k_count_correct<<<(unsigned)n, 32, 0, s>>>(n, k, topk, logits, labels, (unsigned long long *)correct);
    return launched();
}

extern "C" cudaError_t stk__k_xent_bwd(cudaStream_t s, int64_t n, int64_t k, const float *prob,
                                       const int64_t *labels, const float *soft, float smoothing, float scale,
                                       float *dlogits)
{
    size_t total = (size_t)(n * k);
    if (total)
        k_xent_bwd<<<grid_for(total), THREADS, 0, s>>>(total, n, k, prob, labels, soft, smoothing, scale,
                                                         dlogits);
    return launched();
}
