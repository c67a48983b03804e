/* SPDX-License-Identifier: MIT */
/* Sequence helpers of the CUDA backend: row gathers (embeddings, a loss
 * over the valid steps), their scatter-add gradient, and the heads that
 * pool each sequence's valid steps. Thread bodies in kernel_bodies.h;
 * the scatter-add walks rows in order, so runs repeat bit for bit. */
#include "kernel_bodies.h"
#include "launch.cuh"

static __global__ void k_gather(size_t total, int64_t f, int64_t rows, const int64_t *idx, const float *src,
                                float *dst, stk__k_fault_t *fault)
{
    FOR_EACH(e, total)
    {
        int bad;
        dst[e] = kb_gather_at((int64_t)e, f, rows, idx, src, &bad);
        if (bad && atomicCAS(&fault->code, STK__K_FAULT_NONE, STK__K_FAULT_GATHER_INDEX) == STK__K_FAULT_NONE) {
            int64_t i = (int64_t)e / f;
            fault->row = i;
            fault->index = idx[i];
            fault->rows = rows;
        }
    }
}

/* One thread per column, walking the rows in order: no float atomics, so
 * a repeated index adds up in the CPU's order (the seq helper's design). */
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

static __global__ void k_seq_pool_fwd(size_t total, int mean, int64_t t, int64_t f, const int64_t *lengths,
                                      const float *x, float *y)
{
    FOR_EACH(e, total)
    y[e] = kb_seq_pool_fwd_at((int64_t)e, mean, t, f, lengths, x);
}

static __global__ void k_seq_pool_bwd(size_t total, int mean, int64_t t, int64_t f, const int64_t *lengths,
                                      const float *dy, float *dx)
{
    FOR_EACH(e, total)
    dx[e] = kb_seq_pool_bwd_at((int64_t)e, mean, t, f, lengths, dy);
}

extern "C" cudaError_t stk__k_gather_rows(cudaStream_t s, int64_t n, int64_t f, int64_t rows, const int64_t *idx,
                                          const float *src, float *dst, stk__k_fault_t *fault)
{
    size_t total = (size_t)(n * f);
    if (total)
        k_gather<<<grid_for(total), THREADS, 0, s>>>(total, f, rows, idx, src, dst, fault);
    return launched();
}

extern "C" cudaError_t stk__k_scatter_add_rows(cudaStream_t s, int64_t n, int64_t f, const int64_t *idx,
                                               int64_t skip, const float *src, float *dst)
{
    if (n > 0 && f > 0)
        k_scatter_add<<<grid_for((size_t)f), THREADS, 0, s>>>(n, f, idx, skip, src, dst);
    return launched();
}

extern "C" cudaError_t stk__k_seq_pool_fwd(cudaStream_t s, int mean, int64_t n, int64_t t, int64_t f,
                                           const int64_t *lengths, const float *x, float *y)
{
    size_t total = (size_t)(n * f);
    if (total)
        k_seq_pool_fwd<<<grid_for(total), THREADS, 0, s>>>(total, mean, t, f, lengths, x, y);
    return launched();
}

extern "C" cudaError_t stk__k_seq_pool_bwd(cudaStream_t s, int mean, int64_t n, int64_t t, int64_t f,
                                           const int64_t *lengths, const float *dy, float *dx)
{
    size_t total = (size_t)(n * t * f);
    if (total)
        k_seq_pool_bwd<<<grid_for(total), THREADS, 0, s>>>(total, mean, t, f, lengths, dy, dx);
    return launched();
}
