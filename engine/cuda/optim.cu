/* SPDX-License-Identifier: MIT */
/* The fused optimizer update of the CUDA backend: one launch per
 * parameter group, one block per chunk of the group's ranges, each thread
 * one element through kb_optim_at (kernel_bodies.h), which the host test
 * checks bit for bit against the CPU's kernels. */
#include "kernel_bodies.h"
#include "launch.cuh"

static __global__ void k_optim(stk__optim_scalars_t k, const stk_optim_range_t *chunks, size_t nchunks, float *p,
                               const float *g, float *s0, float *s1, float *s2)
{
    for (size_t c = blockIdx.x; c < nchunks; c += gridDim.x) {
        const size_t off = chunks[c].offset, cnt = chunks[c].count;
        for (size_t j = threadIdx.x; j < cnt; j += blockDim.x)
            kb_optim_at(&k, off + j, p, g, s0, s1, s2);
    }
}

extern "C" cudaError_t stk__k_optim(cudaStream_t s, const struct stk__optim_scalars *k, const void *chunks,
                                    size_t nchunks, float *p, const float *g, float *s0, float *s1, float *s2)
{
    if (nchunks)
        k_optim<<<(unsigned)(nchunks < GRID_MAX ? nchunks : GRID_MAX), THREADS, 0, s>>>(
            *k, (const stk_optim_range_t *)chunks, nchunks, p, g, s0, s1, s2);
    return launched();
}

/* The same update with the scalars in device memory: what a replayed CUDA
 * graph runs (the host writes them before each launch). */
static __global__ void k_optim_dev(const stk__optim_scalars_t *kd, const stk_optim_range_t *chunks, size_t nchunks,
                                   float *p, const float *g, float *s0, float *s1, float *s2)
{
    const stk__optim_scalars_t k = *kd;
    for (size_t c = blockIdx.x; c < nchunks; c += gridDim.x) {
        const size_t off = chunks[c].offset, cnt = chunks[c].count;
        for (size_t j = threadIdx.x; j < cnt; j += blockDim.x)
            kb_optim_at(&k, off + j, p, g, s0, s1, s2);
    }
}

extern "C" cudaError_t stk__k_optim_dev(cudaStream_t s, const struct stk__optim_scalars *k_dev, const void *chunks,
                                        size_t nchunks, float *p, const float *g, float *s0, float *s1, float *s2)
{
    if (nchunks)
        k_optim_dev<<<(unsigned)(nchunks < GRID_MAX ? nchunks : GRID_MAX), THREADS, 0, s>>>(
            k_dev, (const stk_optim_range_t *)chunks, nchunks, p, g, s0, s1, s2);
    return launched();
}

/* Loss scaling's check and unscale in one pass: each block ORs its
 * threads' verdicts and one thread writes the flag, so the flag sees at
 * most one store per block and no atomics. */
static __global__ void k_unscale(size_t n, float *g, float inv, int *flag)
{
    int bad = 0;
    FOR_EACH(i, n)
    {
        const float v = g[i];
        bad |= !isfinite(v);
        g[i] = v * inv;
    }
    if (__syncthreads_or(bad) && threadIdx.x == 0)
        *flag = 1;
}

extern "C" cudaError_t stk__k_unscale(cudaStream_t s, size_t n, float *g, float inv, int *flag)
{
    if (n)
        k_unscale<<<grid_for(n), THREADS, 0, s>>>(n, g, inv, flag);
    return launched();
}
