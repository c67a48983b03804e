/* SPDX-License-Identifier: MIT */
/* The CUDA backend's sequence helpers (seq.cu): gathers and scatter-adds
 * of rows, and the sequence heads. An index outside the table is found by
 * the gather kernel, which cannot return an error: it leaves a fault word
 * in the context's scratch, and the next synchronous slot (download,
 * synchronize) reports it, as backend.h allows. */
#include "cuda.h"

#include <errno.h>

int stk__cuda_gather_rows(void *ctx, int64_t n, int64_t f, int64_t rows, const int64_t *idx, const float *src,
                          float *dst)
{
    cuda_ctx_t *c = ctx;
    int rc = stk__cu_unstick(c);
    if (rc)
        return rc;
    return stk__cu_status(stk__k_gather_rows(c->stream, n, f, rows, idx, src, dst, c->dev_scratch), "gather rows");
}

void stk__cuda_scatter_add_rows(void *ctx, int64_t n, int64_t f, const int64_t *idx, int64_t skip, const float *src,
                                float *dst)
{
    cuda_ctx_t *c = ctx;
    stk__cu_stick(c, stk__cu_status(stk__k_scatter_add_rows(c->stream, n, f, idx, skip, src, dst),
                                    "scatter-add rows"));
}

void stk__cuda_seq_pool_forward(void *ctx, int mean, int64_t n, int64_t t, int64_t f, const int64_t *lengths,
                                const float *x, float *y)
{
    cuda_ctx_t *c = ctx;
    stk__cu_stick(c, stk__cu_status(stk__k_seq_pool_fwd(c->stream, mean, n, t, f, lengths, x, y), "sequence pool"));
}

void stk__cuda_seq_pool_backward(void *ctx, int mean, int64_t n, int64_t t, int64_t f, const int64_t *lengths,
                                 const float *dy, float *dx)
{
    cuda_ctx_t *c = ctx;
    stk__cu_stick(c, stk__cu_status(stk__k_seq_pool_bwd(c->stream, mean, n, t, f, lengths, dy, dx),
                                    "sequence pool backward"));
}

int stk__cuda_fault_read(cuda_ctx_t *c)
{
    stk__k_fault_t *h = c->host_scratch;
    int rc = stk__cu_status(cudaMemcpyAsync(h, c->dev_scratch, sizeof(*h), cudaMemcpyDeviceToHost, c->stream),
                            "reading the fault word");
    if (rc == 0)
        rc = stk__cu_status(cudaStreamSynchronize(c->stream), "synchronize");
    if (rc || h->code == STK__K_FAULT_NONE)
        return rc;
    stk__k_fault_t f = *h;
    /* Cleared in stream order: the next kernels see a clean word. */
    cudaMemsetAsync(c->dev_scratch, 0, sizeof(f), c->stream);
    return stk__error(-EINVAL, "gather rows: row %lld: index %lld is outside [0, %lld)", (long long)f.row,
                      (long long)f.index, (long long)f.rows);
}
