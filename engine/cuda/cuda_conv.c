/* SPDX-License-Identifier: MIT */
/* Convolution ops of the CUDA backend: three cuDNN execution plans per
 * shape (forward, backward data, backward weights; cudnn_graph.c) and one
 * workspace, all made when the op is planned. The bias is our own kernel
 * on either side (add per channel, sum per channel). Plans assume what
 * alloc returns for activations (16-byte alignment); an activation
 * pointer that is less aligned gets plans for 4 bytes, built once.
 *
 * Mixed precision (autocast's rule for convolutions): with the context's
 * half type set when the op is planned, the plans take BF16 / FP16 NHWC
 * tensors and compute in FP32, and each direction casts around them
 * (amp.cu) through the op's own half buffers: x and the weights down
 * (NCHW -> NHWC, OIHW -> KRSC), y, dx and dw back up to f32 NCHW (OIHW),
 * overwriting as the f32 path does. The activations between layers, the
 * weights, their gradients and the bias stay f32. */
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
    int rc = op->fused ? stk__dnn_conv_fused_plan(c, &op->conv, op->frelu, v ? 4 : 16, op->half, p)
                       : stk__dnn_conv_plan(c, &op->conv, dir, v ? 4 : 16, op->half, p);
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

/* The half buffers of a mixed-precision op (plan time: zeroed, freed by
 * op_destroy). */
static int half_buffers(cuda_ctx_t *c, stk__op_t *op)
{
    const stk__conv_desc_t *d = &op->conv;
    const size_t nx = (size_t)(d->n * d->ic * d->ih * d->iw), ny = (size_t)(d->n * d->oc * d->oh * d->ow),
                 nw = (size_t)(d->oc * (d->ic / d->groups) * d->kh * d->kw), h = 2;
    int rc = 0;
    if ((rc = stk__cuda_op_alloc(c, &op->hx, nx * h, "a half-precision convolution input")) < 0 ||
        (rc = stk__cuda_op_alloc(c, &op->hdx, nx * h, "a half-precision convolution input gradient")) < 0 ||
        (rc = stk__cuda_op_alloc(c, &op->hy, ny * h, "a half-precision convolution output")) < 0 ||
        (rc = stk__cuda_op_alloc(c, &op->hw, nw * h, "half-precision convolution weights")) < 0 ||
        (rc = stk__cuda_op_alloc(c, &op->hdw, nw * h, "a half-precision convolution weight gradient")) < 0)
        return rc;
    return 0;
}

/* Casts: f32 NCHW src of n x ch x h x w to the half buffer dst (NHWC), and
 * back. */
static int down(cuda_ctx_t *c, const stk__op_t *op, int64_t n, int64_t ch, int64_t h, int64_t w, const float *src,
                void *dst)
{
    return stk__cu_status(stk__k_to_half_nhwc(c->stream, op->half, n, ch, h, w, src, dst),
                          "convolution: casting to half precision");
}

static int up(cuda_ctx_t *c, const stk__op_t *op, int64_t n, int64_t ch, int64_t h, int64_t w, const void *src,
              float *dst)
{
    return stk__cu_status(stk__k_from_half_nhwc(c->stream, op->half, n, ch, h, w, src, dst),
                          "convolution: casting from half precision");
}

/* A convolution op of d, checked, before its plans and buffers (the
 * plain one's and the fused one's). */
static int conv_op_new(const cuda_ctx_t *c, const stk__conv_desc_t *d, stk__op_t **out)
{
    *out = NULL;
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
    op->half = c->half;
    *out = op;
    return 0;
}

int stk__cuda_conv_create(void *ctx, const stk__conv_desc_t *d, stk__op_t **out)
{
    cuda_ctx_t *c = ctx;
    stk__op_t *op;
    int rc = conv_op_new(c, d, &op);
    if (rc < 0)
        return rc;
    rc = op->half != STK__K_F32 ? half_buffers(c, op) : 0;
    for (int dir = 0; dir < 3 && rc == 0; dir++)
        rc = ensure_plan(c, op, dir, 0);
    if (rc < 0) {
        stk__cuda_op_destroy(ctx, op);
        return rc;
    }
    *out = op;
    return 0;
}

/* The forward in half precision: x and w down, the plan, y up. */
static int forward_half(cuda_ctx_t *c, stk__op_t *op, const float *x, const float *w, float *y)
{
    const stk__conv_desc_t *d = &op->conv;
    int rc = 0;
    void *ptrs[3] = {op->hx, op->hw, op->hy};
    op->hx_from = op->hw_from = op->hy_from = NULL;
    if ((rc = down(c, op, d->n, d->ic, d->ih, d->iw, x, op->hx)) < 0 ||
        (rc = down(c, op, d->oc, d->ic / d->groups, d->kh, d->kw, w, op->hw)) < 0 ||
        (rc = stk__dnn_execute(c, &op->plans[CU_FWD][0], ptrs, op->workspace)) < 0 ||
        (rc = up(c, op, d->n, d->oc, d->oh, d->ow, op->hy, y)) < 0)
        return rc;
    op->hx_from = x;
    op->hw_from = w;
    return 0;
}

int stk__cuda_conv_forward(void *ctx, stk__op_t *op, const float *x, const float *w, const float *b, float *y)
{
    cuda_ctx_t *c = ctx;
    int rc = stk__cu_unstick(c);
    if (rc == 0 && op->half != STK__K_F32) {
        if ((rc = forward_half(c, op, x, w, y)) == 0 && b && op->conv.bias)
            rc = stk__cu_status(
                stk__k_bias_add(c->stream, op->conv.n, op->conv.oc, op->conv.oh * op->conv.ow, b, y),
                "convolution bias");
        return rc;
    }
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

/* ------------------------------------------- eval-mode conv + BN (+ ReLU) */

int stk__cuda_conv_fused_create(void *ctx, const stk__conv_fused_desc_t *fd, stk__op_t **out)
{
    cuda_ctx_t *c = ctx;
    const stk__conv_desc_t *d = &fd->conv;
    stk__op_t *op;
    int rc = conv_op_new(c, d, &op);
    if (rc < 0)
        return rc;
    op->fused = 1;
    op->frelu = fd->relu;
    op->feps = fd->eps;
    const size_t nx = (size_t)(d->n * d->ic * d->ih * d->iw), ny = (size_t)(d->n * d->oc * d->oh * d->ow),
                 nw = (size_t)(d->oc * (d->ic / d->groups) * d->kh * d->kw);
    rc = stk__cuda_op_alloc(c, &op->aux, 2 * (size_t)d->oc * sizeof(float), "a fused convolution's scale and shift");
    /* Half precision: x and w cast down into the op's buffers, y comes
     * back through hy (no backward here: no gradient buffers). */
    if (rc == 0 && op->half != STK__K_F32 &&
        (rc = stk__cuda_op_alloc(c, &op->hx, nx * 2, "a half-precision convolution input")) == 0 &&
        (rc = stk__cuda_op_alloc(c, &op->hy, ny * 2, "a half-precision convolution output")) == 0)
        rc = stk__cuda_op_alloc(c, &op->hw, nw * 2, "half-precision convolution weights");
    if (rc == 0)
        rc = ensure_plan(c, op, CU_FWD, 0);
    if (rc < 0) {
        stk__cuda_op_destroy(ctx, op);
        return rc;
    }
    *out = op;
    return 0;
}

int stk__cuda_conv_fused_forward(void *ctx, stk__op_t *op, const float *x, const float *w, const float *b,
                                 const float *gamma, const float *beta, const float *mean, const float *var,
                                 float *y)
{
    cuda_ctx_t *c = ctx;
    const stk__conv_desc_t *d = &op->conv;
    float *s = op->aux, *t = s + d->oc;
    int rc = stk__cu_unstick(c);
    if (rc == 0)
        rc = stk__cu_status(stk__k_bn_fold(c->stream, d->oc, op->feps, d->bias ? b : NULL, gamma, beta, mean, var,
                                           s, t),
                            "fused convolution: scale and shift");
    if (rc < 0)
        return rc;
    if (op->half != STK__K_F32) {
        void *ptrs[5] = {op->hx, op->hw, op->hy, s, t};
        if ((rc = down(c, op, d->n, d->ic, d->ih, d->iw, x, op->hx)) < 0 ||
            (rc = down(c, op, d->oc, d->ic / d->groups, d->kh, d->kw, w, op->hw)) < 0 ||
            (rc = stk__dnn_execute(c, &op->plans[CU_FWD][0], ptrs, op->workspace)) < 0)
            return rc;
        return up(c, op, d->n, d->oc, d->oh, d->ow, op->hy, y);
    }
    int v = variant(x, y);
    if ((rc = ensure_plan(c, op, CU_FWD, v)) < 0)
        return rc;
    void *ptrs[5] = {(void *)x, (void *)w, y, s, t};
    return stk__dnn_execute(c, &op->plans[CU_FWD][v], ptrs, op->workspace);
}

/* dy in half precision in op->hy: what backward weights cast when it is
 * the same dy, else cast now. */
static int dy_half(cuda_ctx_t *c, stk__op_t *op, const float *dy)
{
    const stk__conv_desc_t *d = &op->conv;
    if (op->hy_from == dy)
        return 0;
    int rc = down(c, op, d->n, d->oc, d->oh, d->ow, dy, op->hy);
    op->hy_from = rc == 0 ? dy : NULL;
    return rc;
}

int stk__cuda_conv_backward_data(void *ctx, stk__op_t *op, const float *dy, const float *w, float *dx)
{
    cuda_ctx_t *c = ctx;
    int rc = stk__cu_unstick(c);
    if (rc == 0 && op->half != STK__K_F32) {
        const stk__conv_desc_t *d = &op->conv;
        /* The weights are those the forward cast unless another tensor
         * comes (a forward always casts them afresh). */
        if (op->hw_from != w) {
            op->hw_from = NULL;
            if ((rc = down(c, op, d->oc, d->ic / d->groups, d->kh, d->kw, w, op->hw)) < 0)
                return rc;
            op->hw_from = w;
        }
        void *ptrs[3] = {op->hdx, op->hw, op->hy};
        if ((rc = dy_half(c, op, dy)) < 0 || (rc = stk__dnn_execute(c, &op->plans[CU_BWD_DATA][0], ptrs,
                                                                      op->workspace)) < 0)
            return rc;
        return up(c, op, d->n, d->ic, d->ih, d->iw, op->hdx, dx);
    }
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
    if (rc == 0 && op->half != STK__K_F32) {
        const stk__conv_desc_t *d = &op->conv;
        /* x as the forward kept it; cast again only for another tensor.
         * dy is cast afresh: the forward wrote y where it goes. */
        if (op->hx_from != x) {
            op->hx_from = NULL;
            if ((rc = down(c, op, d->n, d->ic, d->ih, d->iw, x, op->hx)) < 0)
                return rc;
            op->hx_from = x;
        }
        op->hy_from = NULL;
        void *ptrs[3] = {op->hx, op->hdw, op->hy};
        if ((rc = dy_half(c, op, dy)) < 0 ||
            (rc = stk__dnn_execute(c, &op->plans[CU_BWD_FILTER][0], ptrs, op->workspace)) < 0 ||
            (rc = up(c, op, d->oc, d->ic / d->groups, d->kh, d->kw, op->hdw, dw)) < 0)
            return rc;
    } else {
        int v = variant(x, dy);
        if (rc || (rc = ensure_plan(c, op, CU_BWD_FILTER, v)) < 0)
            return rc;
        void *ptrs[3] = {(void *)x, dw, (void *)dy};
        if ((rc = stk__dnn_execute(c, &op->plans[CU_BWD_FILTER][v], ptrs, op->workspace)) < 0)
            return rc;
    }
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
    cudaFree(op->hx);
    cudaFree(op->hw);
    cudaFree(op->hy);
    cudaFree(op->hdx);
    cudaFree(op->hdw);
    free(op);
}
