/* SPDX-License-Identifier: MIT */
/* The CUDA backend's ops on its own kernels (kernels.h): batch norm,
 * pooling, layout reorder, activations, add/accumulate, concat, dropout
 * and the softmax cross-entropy. Each slot enqueues on the context's
 * stream and returns the launch status; only the loss is read back. */
#include "cuda.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(STK__K_RELU == (int)STK__ELT_RELU && STK__K_LEAKY_RELU == (int)STK__ELT_LEAKY_RELU &&
                   STK__K_GELU == (int)STK__ELT_GELU && STK__K_SIGMOID == (int)STK__ELT_SIGMOID &&
                   STK__K_TANH == (int)STK__ELT_TANH,
               "kernels.h numbers the activations as stk__eltwise_t");

static stk__op_t *op_new(int kind)
{
    stk__op_t *op = calloc(1, sizeof(*op));
    if (op)
        op->kind = kind;
    else
        stk__error(-ENOMEM, "cuda: out of memory");
    return op;
}

/* --------------------------------------------------------- batch norm */

int stk__cuda_bn_create(void *ctx, const stk__bn_desc_t *d, stk__op_t **out)
{
    cuda_ctx_t *c = ctx;
    if (d->fmt != STK__LAYOUT_PLAIN)
        return stk__error(STK_EBACKEND, "cuda: batch norm takes plain NCHW activations only");
    stk__op_t *op = op_new(CU_OP_BN);
    if (!op)
        return -ENOMEM;
    op->bn = *d;
    /* With the ReLU inside, backward needs to know where it cut. */
    int rc = d->relu ? stk__cuda_op_alloc(c, &op->aux, (size_t)(d->n * d->c * d->h * d->w), "a ReLU mask") : 0;
    if (rc < 0) {
        stk__cuda_op_destroy(ctx, op);
        return rc;
    }
    *out = op;
    return 0;
}

int stk__cuda_bn_forward(void *ctx, stk__op_t *op, int train, const float *x, const float *gamma,
                         const float *beta, float *mean, float *var, float *y)
{
    cuda_ctx_t *c = ctx;
    const stk__bn_desc_t *d = &op->bn;
    int64_t hw = d->h * d->w;
    int rc = stk__cu_unstick(c);
    if (rc)
        return rc;
    if (train && (rc = stk__cu_status(stk__k_bn_stats(c->stream, d->n, d->c, hw, x, mean, var), "batch norm")))
        return rc;
    return stk__cu_status(stk__k_bn_apply(c->stream, d->n, d->c, hw, d->eps, d->relu, x, gamma, beta, mean, var, y,
                                          train ? op->aux : NULL),
                          "batch norm");
}

int stk__cuda_bn_backward(void *ctx, stk__op_t *op, const float *x, const float *dy, const float *gamma,
                          const float *mean, const float *var, float *dx, float *dgamma, float *dbeta)
{
    cuda_ctx_t *c = ctx;
    const stk__bn_desc_t *d = &op->bn;
    int rc = stk__cu_unstick(c);
    if (rc)
        return rc;
    return stk__cu_status(stk__k_bn_backward(c->stream, d->n, d->c, d->h * d->w, d->eps, x, dy, gamma, mean, var,
                                             op->aux, dx, dgamma, dbeta),
                          "batch norm backward");
}

void stk__cuda_bn_update_running(void *ctx, int64_t c, int64_t count, float momentum, const float *mean,
                                 const float *var, float *running_mean, float *running_var)
{
    cuda_ctx_t *cx = ctx;
    stk__cu_stick(cx, stk__cu_status(stk__k_bn_running(cx->stream, c, count, momentum, mean, var,
                                                               running_mean, running_var),
                                            "batch norm running statistics"));
}

/* ------------------------------------------------------------ pooling */

static stk__k_pool_t pool_params(const stk__pool_desc_t *d)
{
    stk__k_pool_t p = {d->n, d->c, d->ih, d->iw, d->oh, d->ow, d->kh, d->kw, d->sh, d->sw, d->ph, d->pw, d->max};
    return p;
}

int stk__cuda_pool_create(void *ctx, const stk__pool_desc_t *d, stk__op_t **out)
{
    cuda_ctx_t *c = ctx;
    if (d->fmt != STK__LAYOUT_PLAIN)
        return stk__error(STK_EBACKEND, "cuda: pooling takes plain NCHW activations only");
    if (d->ih * d->iw > INT32_MAX)
        return stk__error(-EINVAL, "cuda: pooling: a %lldx%lld plane is too large", (long long)d->ih,
                          (long long)d->iw);
    stk__op_t *op = op_new(CU_OP_POOL);
    if (!op)
        return -ENOMEM;
    op->pool = *d;
    int rc = d->max ? stk__cuda_op_alloc(c, &op->aux, (size_t)(d->n * d->c * d->oh * d->ow) * sizeof(int32_t),
                                         "max-pooling indices")
                    : 0;
    if (rc < 0) {
        stk__cuda_op_destroy(ctx, op);
        return rc;
    }
    *out = op;
    return 0;
}

int stk__cuda_pool_forward(void *ctx, stk__op_t *op, int train, const float *x, float *y)
{
    cuda_ctx_t *c = ctx;
    int rc = stk__cu_unstick(c);
    if (rc)
        return rc;
    stk__k_pool_t p = pool_params(&op->pool);
    return stk__cu_status(stk__k_pool_fwd(c->stream, &p, x, y, train ? op->aux : NULL), "pooling");
}

int stk__cuda_pool_backward(void *ctx, stk__op_t *op, const float *dy, float *dx)
{
    cuda_ctx_t *c = ctx;
    int rc = stk__cu_unstick(c);
    if (rc)
        return rc;
    stk__k_pool_t p = pool_params(&op->pool);
    return stk__cu_status(stk__k_pool_bwd(c->stream, &p, dy, op->aux, dx), "pooling backward");
}

/* ------------------------------------------------------------ reorder */

int stk__cuda_reorder_create(void *ctx, int64_t n, int64_t c, int64_t h, int64_t w, int from, int to,
                             stk__op_t **out)
{
    (void)ctx;
    if ((from != STK__LAYOUT_PLAIN && from != STK__LAYOUT_BLOCKED8) ||
        (to != STK__LAYOUT_PLAIN && to != STK__LAYOUT_BLOCKED8))
        return stk__error(-EINVAL, "cuda: reorder: unknown layout %d -> %d", from, to);
    if ((from == STK__LAYOUT_BLOCKED8 || to == STK__LAYOUT_BLOCKED8) && c % 8)
        return stk__error(-EINVAL, "cuda: reorder: %lld channels is not a multiple of 8", (long long)c);
    stk__op_t *op = op_new(CU_OP_REORDER);
    if (!op)
        return -ENOMEM;
    op->rn = n, op->rc = c, op->rh = h, op->rw = w;
    op->rfrom = from, op->rto = to;
    *out = op;
    return 0;
}

int stk__cuda_reorder_run(void *ctx, stk__op_t *op, int reverse, const float *src, float *dst)
{
    cuda_ctx_t *c = ctx;
    int rc = stk__cu_unstick(c);
    if (rc)
        return rc;
    int from = reverse ? op->rto : op->rfrom, to = reverse ? op->rfrom : op->rto;
    size_t bytes = (size_t)(op->rn * op->rc * op->rh * op->rw) * sizeof(float);
    if (from == to)
        return bytes && src != dst ? stk__cu_status(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice,
                                                                    c->stream),
                                                    "reorder")
                                   : 0;
    return stk__cu_status(stk__k_reorder(c->stream, op->rn, op->rc, op->rh, op->rw, to == STK__LAYOUT_BLOCKED8, src,
                                         dst),
                          "reorder");
}

/* -------------------------------------------------------- element-wise */

int stk__cuda_eltwise_forward(void *ctx, stk__eltwise_t alg, float alpha, size_t n, const float *x, float *y)
{
    cuda_ctx_t *c = ctx;
    int rc = stk__cu_unstick(c);
    if (rc)
        return rc;
    if ((int)alg < STK__K_RELU || (int)alg > STK__K_TANH)
        return stk__error(-EINVAL, "eltwise: unknown function %d", (int)alg);
    return stk__cu_status(stk__k_eltwise_fwd(c->stream, (int)alg, alpha, n, x, y), "activation");
}

int stk__cuda_eltwise_backward(void *ctx, stk__eltwise_t alg, float alpha, size_t n, const float *x,
                               const float *y, const float *dy, float *dx)
{
    cuda_ctx_t *c = ctx;
    int rc = stk__cu_unstick(c);
    if (rc)
        return rc;
    if ((int)alg < STK__K_RELU || (int)alg > STK__K_TANH)
        return stk__error(-EINVAL, "eltwise: unknown function %d", (int)alg);
    return stk__cu_status(stk__k_eltwise_bwd(c->stream, (int)alg, alpha, n, x, y, dy, dx), "activation backward");
}

void stk__cuda_add(void *ctx, size_t n, const float *a, const float *b, float *y)
{
    cuda_ctx_t *c = ctx;
    stk__cu_stick(c, stk__cu_status(stk__k_add(c->stream, n, a, b, y), "add"));
}

void stk__cuda_accumulate(void *ctx, size_t n, const float *x, float *y)
{
    cuda_ctx_t *c = ctx;
    stk__cu_stick(c, stk__cu_status(stk__k_accumulate(c->stream, n, x, y), "accumulate"));
}

void stk__cuda_concat_forward(void *ctx, int64_t n, int64_t ca, int64_t cb, int64_t hw, const float *a,
                              const float *b, float *y)
{
    cuda_ctx_t *c = ctx;
    stk__cu_stick(c, stk__cu_status(stk__k_concat_fwd(c->stream, n, ca, cb, hw, a, b, y), "concat"));
}

void stk__cuda_concat_backward(void *ctx, int64_t n, int64_t ca, int64_t cb, int64_t hw, const float *dy,
                               float *da, float *db, int acc_a, int acc_b)
{
    cuda_ctx_t *c = ctx;
    int rc = 0;
    if (da)
        rc = stk__cu_status(stk__k_concat_bwd(c->stream, n, ca + cb, 0, ca, hw, dy, da, acc_a), "concat backward");
    if (rc == 0 && db)
        rc = stk__cu_status(stk__k_concat_bwd(c->stream, n, ca + cb, ca, cb, hw, dy, db, acc_b), "concat backward");
    stk__cu_stick(c, rc);
}

void stk__cuda_dropout_forward(void *ctx, size_t n, float p, uint64_t key, uint64_t step, const float *x, float *y)
{
    cuda_ctx_t *c = ctx;
    if (c->capturing) {
        /* A graph replays with the step its launch was prepared with. */
        stk__cuda_graph_note_step(c, step);
        stk__cu_stick(c, stk__cu_status(stk__k_dropout_dev(c->stream, n, p, key, (const uint64_t *)c->graph_dev, x, y),
                                        "dropout"));
        return;
    }
    stk__cu_stick(c, stk__cu_status(stk__k_dropout(c->stream, n, p, key, step, x, y), "dropout"));
}

void stk__cuda_dropout_backward(void *ctx, size_t n, float p, uint64_t key, uint64_t step, const float *dy,
                                float *dx)
{
    /* The mask is a function of (key, step, element): regenerated. */
    stk__cuda_dropout_forward(ctx, n, p, key, step, dy, dx);
}

/* ------------------------------------------------------ cross-entropy */

int stk__cuda_xent_forward(void *ctx, int64_t n, int64_t k, const float *logits, const int64_t *labels,
                           const float *soft, float smoothing, float *prob, float *loss)
{
    cuda_ctx_t *c = ctx;
    int rc = stk__cu_unstick(c);
    if (rc)
        return rc;
    /* The rows' losses: n doubles of scratch, grown (rarely: a larger
     * batch) and kept, since freeing device memory waits for the device. */
    if ((size_t)n > c->rows_cap) {
        void *rows = NULL;
        if ((rc = stk__cuda_op_alloc(c, &rows, (size_t)n * sizeof(double), "cross-entropy rows")) < 0)
            return rc;
        cudaFree(c->rows);
        c->rows = rows;
        c->rows_cap = (size_t)n;
    }
    /* The loss stays on the device: the engine reads it back once per
     * step, with the accuracy counters. */
    return stk__cu_status(stk__k_xent_fwd(c->stream, n, k, logits, labels, soft, smoothing, prob, c->rows, loss),
                          "cross-entropy");
}

int stk__cuda_count_correct(void *ctx, int64_t n, int64_t k, int topk, const float *logits, const int64_t *labels,
                            int64_t *correct)
{
    cuda_ctx_t *c = ctx;
    int rc = stk__cu_unstick(c);
    if (rc)
        return rc;
    if (topk < 1)
        return stk__error(-EINVAL, "count_correct: top-%d", topk);
    return stk__cu_status(stk__k_count_correct(c->stream, n, k, topk, logits, labels, correct), "accuracy");
}

void stk__cuda_xent_backward(void *ctx, int64_t n, int64_t k, const float *prob, const int64_t *labels,
                             const float *soft, float smoothing, float scale, float *dlogits)
{
    cuda_ctx_t *c = ctx;
    stk__cu_stick(c, stk__cu_status(stk__k_xent_bwd(c->stream, n, k, prob, labels, soft, smoothing, scale,
                                                           dlogits),
                                           "cross-entropy backward"));
}
