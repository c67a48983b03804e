/* SPDX-License-Identifier: MIT */
/* Convolution ops of the CUDA backend: three cuDNN execution plans per
 * shape (forward, backward data, backward weights; cudnn_graph.c) and one
 * workspace, all made when the op is planned. The bias is our own kernel
 * on either side (add per channel, sum per channel). Plans assume what
 * alloc returns for activations (16-byte alignment); an activation
 * pointer that is less aligned gets plans for 4 bytes, built once. */
#include "cuda.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

/* The variant for these activation pointers: 0 (16-byte aligned) or 1. */
static int variant(const void *a, const void *b)
{
    return (((uintptr_t)a | (uintptr_t)b) & 15u) ? 1 : 0;
}

/* Makes sure plan [dir][v] exists and the workspace fits it. Growing the
 * workspace frees the old one, which waits for the device: it happens at
 * most once per op and direction, for misaligned activations only. */
static int ensure_plan(cuda_ctx_t *c, stk__op_t *op, int dir, int v)
{
    dnn_plan_t *p = &op->plans[dir][v];
    if (p->plan)
        return 0;
    int rc = stk__dnn_conv_plan(c, &op->conv, dir, v ? 4 : 16, p);
    if (rc < 0)
        return rc;
    if ((size_t)p->workspace > op->ws_bytes) {
        void *ws = NULL;
        if ((rc = stk__cuda_op_alloc(c, &ws, (size_t)p->workspace, "a convolution workspace")) < 0) {
            stk__dnn_plan_free(p);
            return rc;
        }
        cudaFree(op->workspace);
        op->workspace = ws;
        op->ws_bytes = (size_t)p->workspace;
    }
    return 0;
}

int stk__cuda_conv_create(void *ctx, const stk__conv_desc_t *d, stk__op_t **out)
{
    cuda_ctx_t *c = ctx;
    if (d->fmt_in != STK__LAYOUT_PLAIN || d->fmt_out != STK__LAYOUT_PLAIN)
        return stk__error(STK_EBACKEND, "cuda: convolution takes plain NCHW activations only");
    if (d->groups < 1 || d->ic % d->groups || d->oc % d->groups)
        return stk__error(-EINVAL, "cuda: convolution: %lld groups do not divide %lld -> %lld channels",
                          (long long)d->groups, (long long)d->ic, (long long)d->oc);
    stk__op_t *op = calloc(1, sizeof(*op));
    if (!op)
        return stk__error(-ENOMEM, "cuda: out of memory");
    op->kind = CU_OP_CONV;
    op->conv = *d;
    int rc = 0;
    for (int dir = 0; dir < 3 && rc == 0; dir++)
        rc = ensure_plan(c, op, dir, 0);
    if (rc < 0) {
        stk__cuda_op_destroy(ctx, op);
        return rc;
    }
    *out = op;
    return 0;
}

int stk__cuda_conv_forward(void *ctx, stk__op_t *op, const float *x, const float *w, const float *b, float *y)
{
    cuda_ctx_t *c = ctx;
    int rc = stk__cu_unstick(c);
    int v = variant(x, y);
    if (rc || (rc = ensure_plan(c, op, CU_FWD, v)) < 0)
        return rc;
    void *ptrs[3] = {(void *)x, (void *)w, y};
    if ((rc = stk__dnn_execute(c, &op->plans[CU_FWD][v], ptrs, op->workspace)) < 0)
        return rc;
    if (b && op->conv.bias)
        rc = stk__cu_status(stk__k_bias_add(c->stream, op->conv.n, op->conv.oc, op->conv.oh * op->conv.ow, b, y),
                            "convolution bias");
    return rc;
}

int stk__cuda_conv_backward_data(void *ctx, stk__op_t *op, const float *dy, const float *w, float *dx)
{
    cuda_ctx_t *c = ctx;
    int rc = stk__cu_unstick(c);
    int v = variant(dx, dy);
    if (rc || (rc = ensure_plan(c, op, CU_BWD_DATA, v)) < 0)
        return rc;
    void *ptrs[3] = {dx, (void *)w, (void *)dy};
    return stk__dnn_execute(c, &op->plans[CU_BWD_DATA][v], ptrs, op->workspace);
}

int stk__cuda_conv_backward_weights(void *ctx, stk__op_t *op, const float *x, const float *dy, float *dw,
                                    float *db)
{
    cuda_ctx_t *c = ctx;
    int rc = stk__cu_unstick(c);
    int v = variant(x, dy);
    if (rc || (rc = ensure_plan(c, op, CU_BWD_FILTER, v)) < 0)
        return rc;
    void *ptrs[3] = {(void *)x, dw, (void *)dy};
    if ((rc = stk__dnn_execute(c, &op->plans[CU_BWD_FILTER][v], ptrs, op->workspace)) < 0)
        return rc;
    if (db && op->conv.bias)
        rc = stk__cu_status(stk__k_bias_grad(c->stream, op->conv.n, op->conv.oc, op->conv.oh * op->conv.ow, dy, db),
                            "convolution bias gradient");
    return rc;
}

void stk__cuda_op_destroy(void *ctx, stk__op_t *op)
{
    cuda_ctx_t *c = ctx;
    if (!op)
        return;
    /* Queued work may still read the workspace or the plans' kernels. */
    cudaStreamSynchronize(c->stream);
    for (int d = 0; d < 3; d++)
        for (int v = 0; v < 2; v++)
            stk__dnn_plan_free(&op->plans[d][v]);
    stk__cuda_linear_free(op);
    cudaFree(op->workspace);
    cudaFree(op->aux);
    free(op);
}
