/* SPDX-License-Identifier: MIT */
/* Launch geometry and block reductions shared by the .cu files. Kernels
 * use grid-stride loops, so a grid of at most GRID_MAX blocks covers any
 * size; reductions run with THREADS threads per block (a multiple of 32,
 * which block_sum relies on). CUDA C++ only. */
#ifndef STOKER_ENGINE_CUDA_LAUNCH_CUH
#define STOKER_ENGINE_CUDA_LAUNCH_CUH

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#define THREADS 256
#define GRID_MAX 8192

static inline unsigned grid_for(size_t n)
{
    size_t b = (n + THREADS - 1) / THREADS;
    if (b == 0)
        b = 1;
    return (unsigned)(b < GRID_MAX ? b : GRID_MAX);
}

/* The first launch error, else the pending one of earlier asynchronous
 * work: what the caller reports. */
static inline cudaError_t launched(void)
{
    return cudaGetLastError();
}

/* Grid-stride loop over [0, n). */
#define FOR_EACH(i, n)                                                                              \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (size_t)(n);                \
         i += (size_t)gridDim.x * blockDim.x)

/* Sum of v over the block; every thread gets it. buf: __shared__ [33]. */
static __device__ inline double block_sum(double v, double *buf)
{
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_down_sync(0xffffffffu, v, o);
    if (lane == 0)
        buf[warp] = v;
    __syncthreads();
    if (warp == 0) {
        const unsigned nw = (blockDim.x + 31u) >> 5;
        v = lane < nw ? buf[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1)
            v += __shfl_down_sync(0xffffffffu, v, o);
        if (lane == 0)
            buf[32] = v;
    }
    __syncthreads();
    double r = buf[32];
    __syncthreads(); /* buf may be reused right away */
    return r;
}

#endif
