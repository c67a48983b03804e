/* SPDX-License-Identifier: MIT */
/* The CUDA backend's own kernels, as C functions that enqueue them on a
 * stream and return the launch status (cudaGetLastError). The .cu files
 * implement them; the backend's C files call them. Plain C types only,
 * so that this header is the same for gcc and nvcc. All tensors are dense
 * f32, NCHW; sizes are element counts. */
#ifndef STOKER_ENGINE_CUDA_KERNELS_H
#define STOKER_ENGINE_CUDA_KERNELS_H

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Element-wise functions, numbered as stk__eltwise_t (cuda_ops.c checks). */
enum { STK__K_RELU = 0, STK__K_LEAKY_RELU, STK__K_GELU, STK__K_SIGMOID, STK__K_TANH };

cudaError_t stk__k_eltwise_fwd(cudaStream_t s, int alg, float alpha, size_t n, const float *x, float *y);
cudaError_t stk__k_eltwise_bwd(cudaStream_t s, int alg, float alpha, size_t n, const float *x, const float *y,
                               const float *dy, float *dx);
/* y = a + b. */
cudaError_t stk__k_add(cudaStream_t s, size_t n, const float *a, const float *b, float *y);
/* y += x. */
cudaError_t stk__k_accumulate(cudaStream_t s, size_t n, const float *x, float *y);
/* y [n, ca+cb, hw] from a [n, ca, hw] and b [n, cb, hw]. */
cudaError_t stk__k_concat_fwd(cudaStream_t s, int64_t n, int64_t ca, int64_t cb, int64_t hw, const float *a,
                              const float *b, float *y);
/* part [n, cp, hw] = (or +=) channels [c0, c0 + cp) of dy [n, ct, hw]. */
cudaError_t stk__k_concat_bwd(cudaStream_t s, int64_t n, int64_t ct, int64_t c0, int64_t cp, int64_t hw,
                              const float *dy, float *part, int acc);
/* y = x * mask / (1 - p), the mask from Philox(key, step, element / 4). */
cudaError_t stk__k_dropout(cudaStream_t s, size_t n, float p, uint64_t key, uint64_t step, const float *x,
                           float *y);
/* The same with the step read from device memory at run time. */
cudaError_t stk__k_dropout_dev(cudaStream_t s, size_t n, float p, uint64_t key, const uint64_t *step, const float *x,
                               float *y);
/* y[o, ch, i] += b[ch] over [outer, c, inner]. */
cudaError_t stk__k_bias_add(cudaStream_t s, int64_t outer, int64_t c, int64_t inner, const float *b, float *y);
/* db[ch] = sum over o, i of dy[o, ch, i] (overwrites). */
cudaError_t stk__k_bias_grad(cudaStream_t s, int64_t outer, int64_t c, int64_t inner, const float *dy, float *db);
/* Plain NCHW <-> nChw8c (c a multiple of 8). */
cudaError_t stk__k_reorder(cudaStream_t s, int64_t n, int64_t c, int64_t h, int64_t w, int to_blocked,
                           const float *src, float *dst);

/* Batch normalization over [n, c, hw]. stats: batch mean and biased
 * variance. apply: y = gamma (x - mean) / sqrt(var + eps) + beta, then
 * ReLU when relu; mask (NULL: none) records y > 0 for backward. */
cudaError_t stk__k_bn_stats(cudaStream_t s, int64_t n, int64_t c, int64_t hw, const float *x, float *mean,
                            float *var);
cudaError_t stk__k_bn_apply(cudaStream_t s, int64_t n, int64_t c, int64_t hw, float eps, int relu, const float *x,
                            const float *gamma, const float *beta, const float *mean, const float *var, float *y,
                            uint8_t *mask);
/* dbeta = sum dy', dgamma = sum dy' xhat with dy' = dy masked (mask NULL:
 * dy); then dx = gamma rstd (dy' - dbeta/M - xhat dgamma/M). */
cudaError_t stk__k_bn_backward(cudaStream_t s, int64_t n, int64_t c, int64_t hw, float eps, const float *x,
                               const float *dy, const float *gamma, const float *mean, const float *var,
                               const uint8_t *mask, float *dx, float *dgamma, float *dbeta);
/* s, t over c channels: an eval-mode batch norm folded into a scale and
 * shift after a convolution with bias b (NULL: none); kb_bn_fold_at. */
cudaError_t stk__k_bn_fold(cudaStream_t s, int64_t c, float eps, const float *b, const float *gamma,
                           const float *beta, const float *mean, const float *var, float *scale, float *shift);
/* running = (1 - m) running + m batch, the variance made unbiased first. */
cudaError_t stk__k_bn_running(cudaStream_t s, int64_t c, int64_t count, float momentum, const float *mean,
                              const float *var, float *running_mean, float *running_var);

typedef struct stk__k_pool {
    int64_t n, c, ih, iw, oh, ow, kh, kw, sh, sw, ph, pw;
    int max; /* 1: max; 0: average with the padding counted */
} stk__k_pool_t;

/* y = pool(x); argmax (NULL: not kept) gets each maximum's index in its
 * input plane. */
cudaError_t stk__k_pool_fwd(cudaStream_t s, const stk__k_pool_t *p, const float *x, float *y, int32_t *argmax);
/* dx from dy (max: through argmax); overwrites dx. */
cudaError_t stk__k_pool_bwd(cudaStream_t s, const stk__k_pool_t *p, const float *dy, const int32_t *argmax,
                            float *dx);

/* Softmax cross-entropy forward over logits [n, k]: prob = softmax, and
 * the mean loss in *loss (device memory). labels or soft is NULL; a label
 * outside [0, k) makes its row, and so the loss, NaN. row is device
 * scratch of n doubles. */
cudaError_t stk__k_xent_fwd(cudaStream_t s, int64_t n, int64_t k, const float *logits, const int64_t *labels,
                            const float *soft, float smoothing, float *prob, double *row, float *loss);
/* dlogits = scale / n (prob - smoothed target). */
cudaError_t stk__k_xent_bwd(cudaStream_t s, int64_t n, int64_t k, const float *prob, const int64_t *labels,
                            const float *soft, float smoothing, float scale, float *dlogits);
/* *correct (device) = rows whose label's logit ranks below topk (ties go
 * to the lower index). */
cudaError_t stk__k_count_correct(cudaStream_t s, int64_t n, int64_t k, int topk, const float *logits,
                                 const int64_t *labels, int64_t *correct);

/* What a kernel found wrong in its input, for the host to report at the
 * next synchronous slot (a kernel cannot return an error). The first
 * fault is kept (code 0: none). */
typedef struct stk__k_fault {
    int32_t code; /* STK__K_FAULT_* */
    int32_t pad;
    int64_t row, index, rows;
} stk__k_fault_t;
enum { STK__K_FAULT_NONE = 0, STK__K_FAULT_GATHER_INDEX = 1 };

/* dst [n, f] = rows idx[i] of src [rows, f]; an index outside [0, rows)
 * gives a zero row and a fault. */
cudaError_t stk__k_gather_rows(cudaStream_t s, int64_t n, int64_t f, int64_t rows, const int64_t *idx,
                               const float *src, float *dst, stk__k_fault_t *fault);
/* dst[idx[i]] += src[i] rows, idx[i] == skip skipped: each thread one
 * column, the rows in order, so a repeated index adds up as on the CPU
 * (no float atomics: the same bits every run). */
cudaError_t stk__k_scatter_add_rows(cudaStream_t s, int64_t n, int64_t f, const int64_t *idx, int64_t skip,
                                    const float *src, float *dst);
/* The sequence heads: see seq_pool_forward/backward in backend.h. */
cudaError_t stk__k_seq_pool_fwd(cudaStream_t s, int mean, int64_t n, int64_t t, int64_t f, const int64_t *lengths,
                                const float *x, float *y);
cudaError_t stk__k_seq_pool_bwd(cudaStream_t s, int mean, int64_t n, int64_t t, int64_t f, const int64_t *lengths,
                                const float *dy, float *dx);

/* One optimizer step over the chunks (device array of nchunks offset and
 * count pairs, none longer than STK__K_OPTIM_CHUNK) of the flat arenas.
 * k: the step's scalars (engine/optim_kernels.h), passed by value. */
#define STK__K_OPTIM_CHUNK 4096
struct stk__optim_scalars;
cudaError_t stk__k_optim(cudaStream_t s, const struct stk__optim_scalars *k, const void *chunks, size_t nchunks,
                         float *p, const float *g, float *s0, float *s1, float *s2);
/* The same with the scalars read from device memory at run time. */
cudaError_t stk__k_optim_dev(cudaStream_t s, const struct stk__optim_scalars *k_dev, const void *chunks,
                             size_t nchunks, float *p, const float *g, float *s0, float *s1, float *s2);

/* g[0..n) *= inv (a float multiply); *flag = 1 (device int, not cleared
 * here) when any element was NaN or infinite before. */
cudaError_t stk__k_unscale(cudaStream_t s, size_t n, float *g, float inv, int *flag);

/* dst[0..n) = the f16 (bf16 = 0) or bf16 (bf16 = 1) values at src as f32
 * (the feed's half batches, converted after their copy). */
cudaError_t stk__k_half_to_f32(cudaStream_t s, size_t n, const uint16_t *src, int bf16, float *dst);

/* Mixed precision (cuda_conv.c, cuda_linear.c): the half types, numbered
 * as cuda_ctx_t.half. */
enum { STK__K_F32 = 0, STK__K_BF16 = 1, STK__K_F16 = 2 };
/* dst (type dt, NHWC) = src (f32, NCHW) of an n x c x h x w tensor, each
 * value rounded to nearest even (FP16: beyond its range, infinity). With
 * h = w = 1 both layouts are the row-major [n, c]: a plain cast. */
cudaError_t stk__k_to_half_nhwc(cudaStream_t s, int dt, int64_t n, int64_t c, int64_t h, int64_t w, const float *src,
                                void *dst);
/* dst (f32, NCHW) = src (type dt, NHWC), exactly. */
cudaError_t stk__k_from_half_nhwc(cudaStream_t s, int dt, int64_t n, int64_t c, int64_t h, int64_t w, const void *src,
                                  float *dst);
/* x[0..n) rounded to type dt and back to f32, in place: what a half
 * output is, for results a library wrote in f32. */
cudaError_t stk__k_round_half(cudaStream_t s, int dt, size_t n, float *x);

#ifdef __cplusplus
}
#endif

#endif
