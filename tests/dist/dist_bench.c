/* SPDX-License-Identifier: MIT */
/* All-reduce bandwidth of the communicator, run as every rank of a job:
 * per size (1 KiB .. 256 MiB), the time of stk_comm_allreduce, with
 * nccl-tests' bus bandwidth (algbw x 2(n-1)/n), beside plain MPI_Allreduce
 * on the same MPI (when built with it and run under mpirun) and a memcpy
 * of the same size on this rank, alternating, best of three. Buffers are host memory, or device memory
 * in the CUDA build (dist_bench_cuda). Rank 0 prints the table. */
#define _GNU_SOURCE
#include <stoker/stoker.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if DIST_BENCH_MPI
#include <mpi.h>
#endif
#if DIST_BENCH_CUDA
#include <cuda_runtime.h>
#endif

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *buf_alloc(size_t bytes)
{
#if DIST_BENCH_CUDA
    void *p = NULL;
    if (cudaMalloc(&p, bytes) != cudaSuccess)
        return NULL;
    cudaMemset(p, 0, bytes);
    return p;
#else
    void *p = aligned_alloc(64, bytes);
    if (p)
        memset(p, 0, bytes);
    return p;
#endif
}

static void buf_free(void *p)
{
#if DIST_BENCH_CUDA
    cudaFree(p);
#else
    free(p);
#endif
}

static void copy(void *dst, const void *src, size_t bytes)
{
#if DIST_BENCH_CUDA
    cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice);
#else
    memcpy(dst, src, bytes);
#endif
}

/* Iterations for a size: about 0.3 s of work, 3..200. */
static int iters_for(double t_one)
{
    int it = t_one > 0 ? (int)(0.3 / t_one) : 200;
    return it < 3 ? 3 : it > 200 ? 200 : it;
}

int main(int argc, char **argv)
{
    size_t max_bytes = argc > 1 ? (size_t)strtoull(argv[1], NULL, 10) : (size_t)256 << 20;
    stk_comm_config_t cc;
    stk_comm_config_default(&cc);
#if DIST_BENCH_CUDA
    cc.device = STK_DEVICE_CUDA;
#endif
    stk_comm_t *c = NULL;
    if (stk_comm_create(&c, &cc) < 0) {
        fprintf(stderr, "dist_bench: %s\n", stk_error_message());
        return 1;
    }
    int rank = stk_comm_rank(c), n = stk_comm_size(c);
    int with_mpi = 0;
#if DIST_BENCH_MPI
    int init = 0;
    MPI_Initialized(&init);
    with_mpi = init && stk_comm_backend(c) == STK_COMM_MPI;
#endif
    void *a = buf_alloc(max_bytes), *b = buf_alloc(max_bytes);
    if (!a || !b) {
        fprintf(stderr, "dist_bench: cannot allocate 2 x %zu bytes\n", max_bytes);
        return 1;
    }
    if (rank == 0) {
        printf("# all-reduce (sum, f32, in place), %d ranks, backend %s%s; busbw = algbw * 2(n-1)/n\n", n,
               stk_comm_backend_name(stk_comm_backend(c)), DIST_BENCH_CUDA ? ", device buffers" : "");
        printf("%12s %10s %10s %10s %12s %12s %12s\n", "bytes", "stk us", "stk algbw", "stk busbw",
               with_mpi ? "MPI us" : "-", with_mpi ? "MPI busbw" : "-", "memcpy GB/s");
    }
    double factor = n > 1 ? 2.0 * (n - 1) / n : 1.0;
    for (size_t bytes = 1024; bytes <= max_bytes; bytes *= 4) {
        size_t count = bytes / sizeof(float);
        /* Warm-up, then timed batches sized from it; the three contenders
         * alternate three times and each keeps its best (the machine may
         * be shared). */
        for (int w = 0; w < 3; w++)
            stk_comm_allreduce(c, a, count, STK_DTYPE_F32, STK_REDUCE_SUM);
        stk_comm_barrier(c);
        double t0 = now_s();
        stk_comm_allreduce(c, a, count, STK_DTYPE_F32, STK_REDUCE_SUM);
        float one = (float)(now_s() - t0);
        stk_comm_allreduce(c, &one, 1, STK_DTYPE_F32, STK_REDUCE_MAX); /* every rank runs as many */
        int it = iters_for(one);
        double t_stk = 1e30, t_mpi = 1e30, t_cpy = 1e30;
        for (int rep = 0; rep < 3; rep++) {
            stk_comm_barrier(c);
            t0 = now_s();
            for (int i = 0; i < it; i++)
                if (stk_comm_allreduce(c, a, count, STK_DTYPE_F32, STK_REDUCE_SUM) < 0) {
                    fprintf(stderr, "dist_bench: %s\n", stk_error_message());
                    return 1;
                }
            double t = (now_s() - t0) / it;
            t_stk = t < t_stk ? t : t_stk;
#if DIST_BENCH_MPI
            if (with_mpi) {
                MPI_Barrier(MPI_COMM_WORLD);
                t0 = now_s();
                for (int i = 0; i < it; i++)
                    MPI_Allreduce(MPI_IN_PLACE, a, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
                t = (now_s() - t0) / it;
                t_mpi = t < t_mpi ? t : t_mpi;
            }
#endif
            copy(b, a, bytes);
            t0 = now_s();
            for (int i = 0; i < it; i++)
                copy(b, a, bytes);
#if DIST_BENCH_CUDA
            cudaDeviceSynchronize();
#endif
            t = (now_s() - t0) / it;
            t_cpy = t < t_cpy ? t : t_cpy;
        }
        if (rank == 0) {
            double alg = (double)bytes / t_stk / 1e9;
            if (with_mpi)
                printf("%12zu %10.1f %10.3f %10.3f %12.1f %12.3f %12.2f\n", bytes, t_stk * 1e6, alg, alg * factor,
                       t_mpi * 1e6, (double)bytes / t_mpi / 1e9 * factor, (double)bytes / t_cpy / 1e9);
            else
                printf("%12zu %10.1f %10.3f %10.3f %12s %12s %12.2f\n", bytes, t_stk * 1e6, alg, alg * factor, "-",
                       "-", (double)bytes / t_cpy / 1e9);
        }
    }
    buf_free(a);
    buf_free(b);
    stk_comm_destroy(&c);
    return 0;
}
