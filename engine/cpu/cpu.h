/* SPDX-License-Identifier: MIT */
/* The CPU backend's private declarations: its context, its op (one struct
 * for every kind of plan), and the oneDNN and optimizer ops that
 * cpu_backend.c puts into the interface table. */
#ifndef STOKER_ENGINE_CPU_H
#define STOKER_ENGINE_CPU_H

#include "../backend.h"
#include "cpu_half.h"

#include <oneapi/dnnl/dnnl.h>

#define MAX_ARGS 10

/* One primitive with its argument memories; pointers are bound per call. */
typedef struct prim {
    dnnl_primitive_t p;
    int nargs;
    dnnl_exec_arg_t args[MAX_ARGS];
} prim_t;

enum { OP_CONV = 1, OP_BN, OP_POOL, OP_LINEAR, OP_REORDER, OP_OPTIM };

struct stk__op {
    int kind;
    prim_t fwd, fwd_eval, bwd_data, bwd_weights;
    void *workspace;  /* max pooling argmax */
    int has_bias;
    /* Convolution weights in the layouts the primitives chose (format
     * `any`): the user's OIHW weights are reordered in before forward and
     * backward data, the weight gradient reordered out after backward
     * weights. A NULL buffer means the primitive takes OIHW itself. */
    prim_t w_to_fwd, w_to_bwd, dw_from;
    void *w_fwd, *w_bwd, *dw;
    /* oneDNN 2.6 has no vectorized backward-weights kernel for some blocked
     * cases (dilation, one input channel) and falls back to a reference
     * loop a hundred times slower; there the op converts x and dy to plain
     * NCHW and uses the GEMM kernel. NULL buffers: no conversion. */
    prim_t bw_src_re, bw_dst_re;
    void *bw_src, *bw_dst;
    /* OP_OPTIM: a parameter group's ranges cut into pieces of at most
     * STK__CPU_OPTIM_CHUNK elements, the unit of work of one thread. */
    stk_optim_range_t *chunks;
    size_t nchunks, total;
    /* OP_BN: its shape, for the synchronized slots' own loops. */
    stk__bn_desc_t bn;
    /* OP_CONV, OP_LINEAR under bf16 / fp16 (half = the precision, else 0):
     * the emulation of a GPU's half-precision op (cpu_dnnl.c). Buffers for
     * the rounded input (x), output gradient (dy) and weights, of
     * n_src, n_dst, n_w floats; the primitives are made without bias,
     * which is added (and its gradient summed) in fp32 here, over
     * bias_outer x bias_c x bias_inner (blocked8: channels in blocks of 8). */
    stk_precision_t half;
    float *r_src, *r_dst, *r_w;
    size_t n_src, n_dst, n_w, n_wfwd, n_wbwd, n_dw;
    int64_t bias_outer, bias_c, bias_inner;
    int bias_blocked;
    /* The eval-mode convolution + batch norm (+ ReLU) op
     * (stk__cpu_conv_fused_*): fs, ft hold this call's per-channel scale
     * and shift (fc channels); fpost: the primitive applies them (s
     * folded into the weights in r_w, t as its bias, ReLU a post-op);
     * 0 (bf16 / fp16, whose output is rounded first): a loop after it
     * does, walking y over bias_outer x bias_c x bias_inner. */
    float *fs, *ft;
    int64_t fc;
    float feps;
    int frelu, fpost;
};

typedef struct cpu_staged cpu_staged_t; /* cpu_staged.c */

typedef struct cpu_ctx {
    dnnl_engine_t eng;
    dnnl_stream_t stream;
    cpu_staged_t *staged; /* NULL, or the staged mode's allocation table */
    /* set_precision's: BF16 or FP16 make the convolutions and inner
     * products planned after it emulate half precision; FP32 otherwise. */
    stk_precision_t precision;
} cpu_ctx_t;

int stk__cpu_dnnl_init(cpu_ctx_t *c);
void stk__cpu_dnnl_fini(cpu_ctx_t *c);
void stk__cpu_op_destroy(void *ctx, stk__op_t *op);
int stk__cpu_conv_create(void *ctx, const stk__conv_desc_t *d, stk__op_t **out);
int stk__cpu_conv_forward(void *ctx, stk__op_t *op, const float *x, const float *w, const float *b, float *y);
int stk__cpu_conv_backward_data(void *ctx, stk__op_t *op, const float *dy, const float *w, float *dx);
int stk__cpu_conv_backward_weights(void *ctx, stk__op_t *op, const float *x, const float *dy, float *dw, float *db);
int stk__cpu_conv_fused_create(void *ctx, const stk__conv_fused_desc_t *d, stk__op_t **out);
int stk__cpu_conv_fused_forward(void *ctx, stk__op_t *op, const float *x, const float *w, const float *b,
                                const float *gamma, const float *beta, const float *mean, const float *var, float *y);
/* s = gamma / sqrt(var + eps), t = (b - mean) s + beta over c channels (b
 * NULL: 0), in float as the CUDA kernel computes them. */
void stk__cpu_bn_fold(int64_t c, float eps, const float *b, const float *gamma, const float *beta, const float *mean,
                      const float *var, float *s, float *t);
int stk__cpu_bn_create(void *ctx, const stk__bn_desc_t *d, stk__op_t **out);
int stk__cpu_bn_forward(void *ctx, stk__op_t *op, int train, const float *x, const float *gamma, const float *beta,
                        float *mean, float *var, float *y);
int stk__cpu_bn_backward(void *ctx, stk__op_t *op, const float *x, const float *dy, const float *gamma,
                         const float *mean, const float *var, float *dx, float *dgamma, float *dbeta);
int stk__cpu_pool_create(void *ctx, const stk__pool_desc_t *d, stk__op_t **out);
int stk__cpu_pool_forward(void *ctx, stk__op_t *op, int train, const float *x, float *y);
int stk__cpu_pool_backward(void *ctx, stk__op_t *op, const float *dy, float *dx);
int stk__cpu_reorder_create(void *ctx, int64_t n, int64_t c, int64_t h, int64_t w, int from, int to,
                            stk__op_t **out);
int stk__cpu_reorder_run(void *ctx, stk__op_t *op, int reverse, const float *src, float *dst);
int stk__cpu_linear_create(void *ctx, const stk__linear_desc_t *d, stk__op_t **out);
int stk__cpu_linear_forward(void *ctx, stk__op_t *op, const float *x, const float *w, const float *b, float *y);
int stk__cpu_linear_backward_data(void *ctx, stk__op_t *op, const float *dy, const float *w, float *dx);
int stk__cpu_linear_backward_weights(void *ctx, stk__op_t *op, const float *x, const float *dy, float *dw,
                                     float *db);
/* cpu_bn_sync.c: synchronized batch normalization's local passes. */
int stk__cpu_bn_stats(void *ctx, stk__op_t *op, const float *x, double *stats);
int stk__cpu_bn_backward_sums(void *ctx, stk__op_t *op, const float *x, const float *y, const float *dy,
                              const float *mean, const float *var, float *sum_dy, float *sum_dyxhat);
int stk__cpu_bn_backward_apply(void *ctx, stk__op_t *op, const float *x, const float *y, const float *dy,
                               const float *gamma, const float *mean, const float *var, const float *sum_dy,
                               const float *sum_dyxhat, int64_t count, float *dx);
/* cpu_staged.c: the CPU backend posing as a device (STK_ENGINE_STAGED=1):
 * host_memory = 0, and the slots the engine stages for check that they get
 * only memory from alloc. */
int stk__cpu_staged_enable(cpu_ctx_t *c, const stk__backend_iface_t *plain, const stk__backend_iface_t **iface);
void stk__cpu_staged_free(cpu_ctx_t *c);
void stk__cpu_staged_track(cpu_ctx_t *c, void *p, size_t bytes);
void stk__cpu_staged_untrack(cpu_ctx_t *c, void *p);
/* cpu_optim.c */
#define STK__CPU_OPTIM_CHUNK ((size_t)1 << 16)
int stk__cpu_optim_create(void *ctx, const stk_optim_range_t *ranges, size_t n_ranges, stk__op_t **out);
int stk__cpu_optim_update(void *ctx, stk__op_t *op, const stk__optim_scalars_t *k, float *params,
                          const float *grads, float *s0, float *s1, float *s2);
/* cpu_rnn.c */
int stk__cpu_rnn_create(void *ctx, const stk__rnn_desc_t *d, stk__rnn_op_t **op);
void stk__cpu_rnn_destroy(void *ctx, stk__rnn_op_t *op);
int stk__cpu_rnn_forward(void *ctx, stk__rnn_op_t *op, int train, const stk__rnn_args_t *a);
int stk__cpu_rnn_backward(void *ctx, stk__rnn_op_t *op, const stk__rnn_args_t *a);
/* How many parts the last forward was split into (0: none; cpu_rnn.c). */
int stk__cpu_rnn_parts(const stk__rnn_op_t *op);
/* cpu_seq.c */
int stk__cpu_gather_rows(void *ctx, int64_t n, int64_t f, int64_t rows, const int64_t *idx, const float *src,
                         float *dst);
void stk__cpu_scatter_add_rows(void *ctx, int64_t n, int64_t f, const int64_t *idx, int64_t skip, const float *src,
                               float *dst);
void stk__cpu_seq_pool_forward(void *ctx, int mean, int64_t n, int64_t t, int64_t f, const int64_t *lengths,
                               const float *x, float *y);
void stk__cpu_seq_pool_backward(void *ctx, int mean, int64_t n, int64_t t, int64_t f, const int64_t *lengths,
                                const float *dy, float *dx);

#endif
