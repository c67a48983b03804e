/* SPDX-License-Identifier: MIT */
/* The CPU backend's private declarations: its context and the oneDNN ops
 * that cpu_backend.c puts into the interface table. */
#ifndef STOKER_ENGINE_CPU_H
#define STOKER_ENGINE_CPU_H

#include "../backend.h"

#include <oneapi/dnnl/dnnl_types.h>

typedef struct cpu_ctx {
    dnnl_engine_t eng;
    dnnl_stream_t stream;
} cpu_ctx_t;

int stk__cpu_dnnl_init(cpu_ctx_t *c);
void stk__cpu_dnnl_fini(cpu_ctx_t *c);
void stk__cpu_op_destroy(void *ctx, stk__op_t *op);
int stk__cpu_conv_create(void *ctx, const stk__conv_desc_t *d, stk__op_t **out);
int stk__cpu_conv_forward(void *ctx, stk__op_t *op, const float *x, const float *w, const float *b, float *y);
int stk__cpu_conv_backward_data(void *ctx, stk__op_t *op, const float *dy, const float *w, float *dx);
int stk__cpu_conv_backward_weights(void *ctx, stk__op_t *op, const float *x, const float *dy, float *dw, float *db);
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
int stk__cpu_rnn_create(void *ctx, const stk__rnn_desc_t *d, stk__rnn_op_t **op);
void stk__cpu_rnn_destroy(void *ctx, stk__rnn_op_t *op);
int stk__cpu_rnn_forward(void *ctx, stk__rnn_op_t *op, int train, const stk__rnn_args_t *a);
int stk__cpu_rnn_backward(void *ctx, stk__rnn_op_t *op, const stk__rnn_args_t *a);

#endif
