/* SPDX-License-Identifier: MIT */
/* Fully connected ops of the CUDA backend through cuBLASLt, FP32 compute
 * (CUBLAS_COMPUTE_32F; CUBLAS_COMPUTE_32F_FAST_TF32 when the model's
 * precision is TF32). The engine's matrices are row-major;
 * cuBLASLt's are column-major, so each row-major M [r, c] is read as the
 * column-major c x r matrix M^T:
 *   forward          y^T  = W · x^T     A = W^T stored, transposed; B = x^T
 *   backward data    dx^T = W^T · dy^T  A = W^T stored; B = dy^T
 *   backward weights dW^T = x^T · dy    A = x^T; B = dy^T stored, transposed
 * The algorithms are chosen when the op is planned, for aligned
 * activations and for any (weights sit anywhere in the parameter arena);
 * the bias is our own kernel on either side.
 *
 * Mixed precision (the context's half type set when the op is planned):
 * A and B are BF16 / FP16 copies in the op's own buffers (x and W cast
 * by the forward, dy by backward weights), C/D stay f32, compute
 * CUBLAS_COMPUTE_32F with f32 scale: one of cublasLtMatmul's listed
 * type combinations (16BF/16F inputs, 32F output). Each result (y, dx,
 * dW) is then rounded to the half type in place, before the bias: what
 * autocast's half outputs hold, what the convolutions' half Y gives, and
 * what the CPU backend's emulation computes (FP16 overflow included). */
#include "cuda.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

/* The most workspace one multiply may ask for. */
#define LT_WORKSPACE_MAX ((size_t)4 << 20)

/* Plans D (m x n, ld ldd) = op(A) op(B); A stored ra x ca (ld ra), B
 * stored rb x cb (ld rb). a_w / b_w / d_w: the operand is a weight (any
 * alignment) rather than an activation. */
static int gemm_plan(cuda_ctx_t *c, lt_gemm_t *g, int half, cublasOperation_t ta, cublasOperation_t tb, int64_t ra,
                     int64_t ca, int64_t rb, int64_t cb, int64_t m, int64_t n, int a_w, int b_w, int d_w)
{
    int rc = 0;
    cublasLtMatmulPreference_t pref = NULL;
    cublasComputeType_t compute = c->allow_tf32 && half == STK__K_F32 ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                                       : CUBLAS_COMPUTE_32F;
    cudaDataType_t ab = half == STK__K_BF16 ? CUDA_R_16BF : half == STK__K_F16 ? CUDA_R_16F : CUDA_R_32F;
    const char *type = half == STK__K_BF16 ? "BF16" : half == STK__K_F16 ? "FP16" : "FP32";
    /* Half operands are the op's own buffers: always 16-byte aligned. */
    if (half != STK__K_F32)
        a_w = b_w = -1;
    if ((rc = stk__lt_status(cublasLtMatmulDescCreate(&g->desc, compute, CUDA_R_32F), "matmul desc")) ||
        (rc = stk__lt_status(
             cublasLtMatmulDescSetAttribute(g->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)), "transa")) ||
        (rc = stk__lt_status(
             cublasLtMatmulDescSetAttribute(g->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)), "transb")) ||
        (rc = stk__lt_status(cublasLtMatrixLayoutCreate(&g->a, ab, (uint64_t)ra, (uint64_t)ca, ra), "layout A")) ||
        (rc = stk__lt_status(cublasLtMatrixLayoutCreate(&g->b, ab, (uint64_t)rb, (uint64_t)cb, rb), "layout B")) ||
        (rc = stk__lt_status(cublasLtMatrixLayoutCreate(&g->d, CUDA_R_32F, (uint64_t)m, (uint64_t)n, m),
                             "layout D")) ||
        (rc = stk__lt_status(cublasLtMatmulPreferenceCreate(&pref), "matmul preference")))
        goto out;
    uint64_t wsmax = LT_WORKSPACE_MAX;
    if ((rc = stk__lt_status(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                                  &wsmax, sizeof(wsmax)),
                             "workspace preference")))
        goto out;
    for (int v = 0; v < 2; v++) {
        /* Variant 0: activations 16-byte aligned; 1: everything 4. */
        uint32_t act = v ? 4 : 16;
        uint32_t al[4] = {a_w < 0 ? 16 : a_w ? 4 : act, b_w < 0 ? 16 : b_w ? 4 : act, d_w ? 4 : act, d_w ? 4 : act};
        static const cublasLtMatmulPreferenceAttributes_t names[4] = {
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
        for (int i = 0; i < 4; i++)
            if ((rc = stk__lt_status(cublasLtMatmulPreferenceSetAttribute(pref, names[i], &al[i], sizeof(al[i])),
                                     "alignment preference")))
                goto out;
        cublasLtMatmulHeuristicResult_t res;
        int found = 0;
        if ((rc = stk__lt_status(cublasLtMatmulAlgoGetHeuristic(c->lt, g->desc, g->a, g->b, g->d, g->d, pref, 1,
                                                                &res, &found),
                                 "matmul heuristic")))
            goto out;
        if (found < 1 || res.state != CUBLAS_STATUS_SUCCESS) {
            /* Only the aligned variant is needed to plan; the other is
             * asked for when a misaligned pointer comes (gemm_run). */
            if (v == 1)
                continue;
            rc = stk__error(STK_EBACKEND, "cuBLASLt: no algorithm for a %lld x %lld x %lld %s multiply", (long long)m,
                            (long long)n, (long long)(ta == CUBLAS_OP_T ? ra : ca), type);
            goto out;
        }
        g->algo[v] = res.algo;
        g->workspace[v] = res.workspaceSize;
        g->have[v] = 1;
    }
out:
    if (pref)
        cublasLtMatmulPreferenceDestroy(pref);
    return rc;
}

static void gemm_free(lt_gemm_t *g)
{
    if (g->a)
        cublasLtMatrixLayoutDestroy(g->a);
    if (g->b)
        cublasLtMatrixLayoutDestroy(g->b);
    if (g->d)
        cublasLtMatrixLayoutDestroy(g->d);
    if (g->desc)
        cublasLtMatmulDescDestroy(g->desc);
    g->a = g->b = g->d = NULL;
    g->desc = NULL;
}

void stk__cuda_linear_free(stk__op_t *op)
{
    for (int i = 0; i < 3; i++)
        gemm_free(&op->gemm[i]);
}

static int gemm_run(cuda_ctx_t *c, stk__op_t *op, lt_gemm_t *g, const void *a, const void *b, void *d)
{
    const float alpha = 1.0f, beta = 0.0f;
    int v = (((uintptr_t)a | (uintptr_t)b | (uintptr_t)d) & 15u) ? 1 : 0;
    if (!g->have[v])
        return stk__error(STK_EBACKEND, "cuBLASLt: no algorithm takes operands aligned to only 4 bytes here");
    return stk__lt_status(cublasLtMatmul(c->lt, g->desc, &alpha, a, g->a, b, g->b, &beta, d, g->d, d, g->d,
                                         &g->algo[v], op->workspace, g->workspace[v], c->stream),
                          "cublasLtMatmul");
}

int stk__cuda_linear_create(void *ctx, const stk__linear_desc_t *d, stk__op_t **out)
{
    cuda_ctx_t *c = ctx;
    stk__op_t *op = calloc(1, sizeof(*op));
    if (!op)
        return stk__error(-ENOMEM, "cuda: out of memory");
    op->kind = CU_OP_LINEAR;
    op->lin = *d;
    op->half = c->half;
    int64_t n = d->n, in = d->in, o = d->out;
    const int h = op->half;
    int rc = 0;
    if (h != STK__K_F32 &&
        ((rc = stk__cuda_op_alloc(c, &op->hx, (size_t)(n * in) * 2, "a half-precision linear input")) < 0 ||
         (rc = stk__cuda_op_alloc(c, &op->hw, (size_t)(o * in) * 2, "half-precision linear weights")) < 0 ||
         (rc = stk__cuda_op_alloc(c, &op->hy, (size_t)(n * o) * 2, "a half-precision linear output gradient")) < 0)) {
        stk__cuda_op_destroy(ctx, op);
        return rc;
    }
    rc = gemm_plan(c, &op->gemm[CU_FWD], h, CUBLAS_OP_T, CUBLAS_OP_N, in, o, in, n, o, n, 1, 0, 0);
    if (rc == 0)
        rc = gemm_plan(c, &op->gemm[CU_BWD_DATA], h, CUBLAS_OP_N, CUBLAS_OP_N, in, o, o, n, in, n, 1, 0, 0);
    if (rc == 0)
        rc = gemm_plan(c, &op->gemm[CU_BWD_FILTER], h, CUBLAS_OP_N, CUBLAS_OP_T, in, n, o, n, in, o, 0, 0, 1);
    size_t ws = 0;
    for (int i = 0; i < 3; i++)
        for (int v = 0; v < 2; v++)
            if (op->gemm[i].workspace[v] > ws)
                ws = op->gemm[i].workspace[v];
    if (rc == 0 && ws)
        rc = stk__cuda_op_alloc(c, &op->workspace, ws, "a matmul workspace");
    if (rc < 0) {
        stk__cuda_op_destroy(ctx, op);
        return rc;
    }
    op->ws_bytes = ws;
    *out = op;
    return 0;
}

/* d[0..n) rounded to the half type in place. */
static int round_half(cuda_ctx_t *c, const stk__op_t *op, size_t n, float *d)
{
    return stk__cu_status(stk__k_round_half(c->stream, op->half, n, d), "linear: rounding to half precision");
}

/* dst (half, the op's buffer) = the rows x cols f32 matrix src. */
static int down(cuda_ctx_t *c, const stk__op_t *op, int64_t rows, int64_t cols, const float *src, void *dst)
{
    return stk__cu_status(stk__k_to_half_nhwc(c->stream, op->half, rows, cols, 1, 1, src, dst),
                          "linear: casting to half precision");
}

/* The half copy of x in op->hx (what the forward cast, unless another
 * tensor comes). */
static int x_half(cuda_ctx_t *c, stk__op_t *op, const float *x)
{
    if (op->hx_from == x)
        return 0;
    op->hx_from = NULL;
    int rc = down(c, op, op->lin.n, op->lin.in, x, op->hx);
    if (rc == 0)
        op->hx_from = x;
    return rc;
}

static int w_half(cuda_ctx_t *c, stk__op_t *op, const float *w)
{
    if (op->hw_from == w)
        return 0;
    op->hw_from = NULL;
    int rc = down(c, op, op->lin.out, op->lin.in, w, op->hw);
    if (rc == 0)
        op->hw_from = w;
    return rc;
}

static int dy_half(cuda_ctx_t *c, stk__op_t *op, const float *dy)
{
    if (op->hy_from == dy)
        return 0;
    int rc = down(c, op, op->lin.n, op->lin.out, dy, op->hy);
    op->hy_from = rc == 0 ? dy : NULL;
    return rc;
}

int stk__cuda_linear_forward(void *ctx, stk__op_t *op, const float *x, const float *w, const float *b, float *y)
{
    cuda_ctx_t *c = ctx;
    int rc = stk__cu_unstick(c);
    if (rc)
        return rc;
    if (op->half != STK__K_F32) {
        /* A forward casts afresh: the values behind the pointers change
         * between steps. */
        op->hx_from = op->hw_from = op->hy_from = NULL;
        if ((rc = x_half(c, op, x)) < 0 || (rc = w_half(c, op, w)) < 0 ||
            (rc = gemm_run(c, op, &op->gemm[CU_FWD], op->hw, op->hx, y)) < 0 ||
            (rc = round_half(c, op, (size_t)(op->lin.n * op->lin.out), y)) < 0)
            return rc;
    } else if ((rc = gemm_run(c, op, &op->gemm[CU_FWD], w, x, y)) < 0) {
        return rc;
    }
    if (b && op->lin.bias)
        rc = stk__cu_status(stk__k_bias_add(c->stream, op->lin.n, op->lin.out, 1, b, y), "linear bias");
    return rc;
}

int stk__cuda_linear_backward_data(void *ctx, stk__op_t *op, const float *dy, const float *w, float *dx)
{
    cuda_ctx_t *c = ctx;
    int rc = stk__cu_unstick(c);
    if (rc || op->half == STK__K_F32)
        return rc ? rc : gemm_run(c, op, &op->gemm[CU_BWD_DATA], w, dy, dx);
    if ((rc = w_half(c, op, w)) < 0 || (rc = dy_half(c, op, dy)) < 0 ||
        (rc = gemm_run(c, op, &op->gemm[CU_BWD_DATA], op->hw, op->hy, dx)) < 0)
        return rc;
    return round_half(c, op, (size_t)(op->lin.n * op->lin.in), dx);
}

int stk__cuda_linear_backward_weights(void *ctx, stk__op_t *op, const float *x, const float *dy, float *dw,
                                      float *db)
{
    cuda_ctx_t *c = ctx;
    int rc = stk__cu_unstick(c);
    if (rc)
        return rc;
    if (op->half != STK__K_F32) {
        /* dy afresh (its values change from one backward to the next);
         * backward data then reuses it. */
        op->hy_from = NULL;
        if ((rc = x_half(c, op, x)) < 0 || (rc = dy_half(c, op, dy)) < 0 ||
            (rc = gemm_run(c, op, &op->gemm[CU_BWD_FILTER], op->hx, op->hy, dw)) < 0 ||
            (rc = round_half(c, op, (size_t)(op->lin.out * op->lin.in), dw)) < 0)
            return rc;
    } else if ((rc = gemm_run(c, op, &op->gemm[CU_BWD_FILTER], x, dy, dw)) < 0) {
        return rc;
    }
    if (db && op->lin.bias)
        rc = stk__cu_status(stk__k_bias_grad(c->stream, op->lin.n, op->lin.out, 1, dy, db), "linear bias gradient");
    return rc;
}
