/* SPDX-License-Identifier: MIT */
/* The CUDA backend's optimizer slots: a parameter group's plan is its
 * ranges cut into chunks of at most STK__K_OPTIM_CHUNK elements, kept on
 * the device; an update is one launch over all of them (optim.cu) with the
 * step's scalars passed by value, so the learning rate can change every
 * step without touching the plan. */
#include "cuda.h"

#include <errno.h>
#include <stdlib.h>

int stk__cuda_optim_create(void *ctx, const stk_optim_range_t *ranges, size_t n_ranges, stk__op_t **out)
{
    cuda_ctx_t *c = ctx;
    *out = NULL;
    size_t n = 0;
    for (size_t r = 0; r < n_ranges; r++)
        n += (ranges[r].count + STK__K_OPTIM_CHUNK - 1) / STK__K_OPTIM_CHUNK;
    stk_optim_range_t *chunks = calloc(n ? n : 1, sizeof(*chunks));
    stk__op_t *op = calloc(1, sizeof(*op));
    if (!chunks || !op) {
        free(chunks);
        free(op);
        return stk__error(-ENOMEM, "cuda optimizer plan: out of memory");
    }
    op->kind = CU_OP_OPTIM;
    /* Its scalars' place in the graph block (cuda_graph.c); a model with
     * more groups than slots is stepped outside graphs. */
    op->kslot = c->kslots < CU_GRAPH_KSLOTS ? c->kslots++ : -1;
    for (size_t r = 0; r < n_ranges; r++)
        for (size_t at = 0; at < ranges[r].count; at += STK__K_OPTIM_CHUNK) {
            size_t left = ranges[r].count - at;
            chunks[op->nchunks++] =
                (stk_optim_range_t){ranges[r].offset + at, left < STK__K_OPTIM_CHUNK ? left : STK__K_OPTIM_CHUNK};
        }
    int rc = stk__cuda_op_alloc(c, &op->aux, op->nchunks * sizeof(*chunks), "optimizer chunks");
    if (rc == 0 && op->nchunks)
        rc = stk__cu_status(cudaMemcpyAsync(op->aux, chunks, op->nchunks * sizeof(*chunks), cudaMemcpyHostToDevice,
                                            c->stream),
                            "optimizer chunks");
    /* The host table is freed below: the copy must have read it. */
    if (rc == 0)
        rc = stk__cu_status(cudaStreamSynchronize(c->stream), "optimizer chunks");
    free(chunks);
    if (rc < 0) {
        stk__cuda_op_destroy(ctx, op);
        return rc;
    }
    *out = op;
    return 0;
}

int stk__cuda_optim_update(void *ctx, stk__op_t *op, const stk__optim_scalars_t *k, float *params,
                           const float *grads, float *s0, float *s1, float *s2)
{
    cuda_ctx_t *c = ctx;
    int rc = stk__cu_unstick(c);
    if (rc)
        return rc;
    if (!op || op->kind != CU_OP_OPTIM)
        return stk__error(-EINVAL, "cuda optimizer update: not an optimizer plan");
    if (c->capturing) {
        /* A graph replays with the scalars its launch was prepared with. */
        if ((rc = stk__cuda_graph_note_optim(c, op, k)) < 0)
            return rc;
        const void *kd = c->graph_dev + CU_GRAPH_KOFF + (size_t)op->kslot * sizeof(*k);
        return stk__cu_status(stk__k_optim_dev(c->stream, kd, op->aux, op->nchunks, params, grads, s0, s1, s2),
                              "optimizer update");
    }
    return stk__cu_status(stk__k_optim(c->stream, k, op->aux, op->nchunks, params, grads, s0, s1, s2),
                          "optimizer update");
}

int stk__cuda_unscale_grads(void *ctx, size_t n, float *g, float inv_scale, int *nonfinite)
{
    cuda_ctx_t *c = ctx;
    int rc = stk__cu_unstick(c);
    if (rc)
        return rc;
    /* One int comes back per step: the only host wait loss scaling adds. */
    if ((rc = stk__cu_status(cudaMemsetAsync(c->flag_dev, 0, sizeof(int), c->stream), "clearing the flag")) ||
        (rc = stk__cu_status(stk__k_unscale(c->stream, n, g, inv_scale, c->flag_dev), "unscale kernel")) ||
        (rc = stk__cu_status(
             cudaMemcpyAsync(c->flag_host, c->flag_dev, sizeof(int), cudaMemcpyDeviceToHost, c->stream),
             "reading the non-finite flag")) ||
        (rc = stk__cu_status(cudaStreamSynchronize(c->stream), "synchronize")))
        return rc;
    *nonfinite = *(volatile int *)c->flag_host != 0;
    return 0;
}

int stk__cuda_set_precision(void *ctx, stk_precision_t want, stk_precision_t *used)
{
    cuda_ctx_t *c = ctx;
    switch (want) {
    case STK_PRECISION_FP32:
    case STK_PRECISION_TF32:
        c->allow_tf32 = want == STK_PRECISION_TF32;
        c->half = STK__K_F32;
        *used = want;
        return 0;
    case STK_PRECISION_BF16:
    case STK_PRECISION_FP16: {
        /* BF16 tensor cores came with compute capability 8.0, FP16 ones
         * with 7.0; the build's device code starts at 8.0 anyway. */
        int major = 0, need = want == STK_PRECISION_BF16 ? 8 : 7;
        if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, c->device) != cudaSuccess) {
            (void)cudaGetLastError();
            major = 0;
        }
        if (major < need)
            return stk__error(STK_ECONFIG, "%s compute needs a GPU of compute capability %d.0 or newer (GPU %d: %d.x)",
                              stk_precision_name(want), need, c->device, major);
        c->allow_tf32 = 0;
        c->half = want == STK_PRECISION_BF16 ? STK__K_BF16 : STK__K_F16;
        *used = want;
        return 0;
    }
    }
    return stk__error(STK_ECONFIG, "precision %d is none of fp32, tf32, bf16, fp16", (int)want);
}
