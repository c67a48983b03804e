/* SPDX-License-Identifier: MIT */
/* Device collectives over NCCL: a non-blocking communicator
 * (ncclCommInitRankConfig with blocking = 0), every operation on the
 * communicator's own stream, ordered after the caller's stream by an event
 * (so it overlaps what the caller queues next) and followed by one that
 * stk_comm_wait waits for; completion and
 * asynchronous errors polled (the front times the wait out, then
 * ncclCommAbort). Host buffers are staged through the device, for a few
 * metrics. Built only with -Dnccl; registered by backends.c. */
#define _GNU_SOURCE
#include "comm_impl.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct nccl_ctx {
    ncclComm_t comm;
    int device;
    cudaStream_t stream;
    void *stage;            /* device scratch for host buffers */
    size_t stage_cap;
    int aborted;
} nccl_ctx_t;

typedef struct nccl_work {
    cudaEvent_t done;
} nccl_work_t;

static int cuda_fail(cudaError_t e, const char *call, const stk_comm_t *c)
{
    return stk__error(STK_EDEVICE, "communicator (nccl) on rank %d: %s: %s", c->rank, call, cudaGetErrorString(e));
}

static int nccl_fail(ncclResult_t r, const char *call, const stk_comm_t *c, const nccl_ctx_t *n,
                     const stk_comm_work_t *w)
{
    char what[160];
    const char *last = n && n->comm ? ncclGetLastError(n->comm) : "";
    return stk__error(r == ncclRemoteError || r == ncclSystemError ? STK_ERANK : STK_EBACKEND,
                      "%s on rank %d of %d (nccl): %s: %s%s%s", w ? stk__work_what(w, what, sizeof(what)) : "set-up",
                      c->rank, c->size, call, ncclGetErrorString(r), last && last[0] ? ": " : "", last ? last : "");
}

/* A non-blocking communicator may answer ncclInProgress: poll its state
 * until the call has settled, at most timeout_s. */
static ncclResult_t settle(nccl_ctx_t *n, ncclResult_t r, double timeout_s)
{
    double t0 = stk__now_s();
    while (r == ncclInProgress) {
        if (ncclCommGetAsyncError(n->comm, &r) != ncclSuccess)
            return ncclInternalError;
        if (r == ncclInProgress && stk__now_s() - t0 > timeout_s)
            return ncclInProgress;
    }
    return r;
}

static int nccl_open(stk_comm_t *c, void **ctx)
{
    c->rank = c->env.rank;
    c->size = c->env.world_size;
    c->local_rank = c->env.local_rank;
    c->local_size = c->env.local_world_size;
    int ndev = 0;
    cudaError_t ce = cudaGetDeviceCount(&ndev);
    if (ce != cudaSuccess || ndev == 0)
        return stk__error(STK_EDEVICE, "communicator (nccl) on rank %d: no CUDA device (%s)", c->rank,
                          ce != cudaSuccess ? cudaGetErrorString(ce) : "none visible");
    /* The GPU: as configured, else the launcher's choice (stoker-launch
     * sets STK_CUDA_DEVICE), else the local rank. */
    int dev = c->local_rank;
    const char *env_dev = getenv("STK_CUDA_DEVICE");
    if (c->cfg.cuda_device >= 0) {
        dev = c->cfg.cuda_device;
    } else if (env_dev && env_dev[0]) {
        char *end;
        long v = strtol(env_dev, &end, 10);
        if (*end != '\0' || v < 0 || v > 4096)
            return stk__error(STK_ECONFIG, "environment: STK_CUDA_DEVICE='%s' is not a GPU index", env_dev);
        dev = (int)v;
    }
    if (dev >= ndev)
        return stk__error(STK_EDEVICE, "communicator (nccl): rank %d (local rank %d) wants GPU %d, but %d %s visible "
                          "(one GPU per rank: NCCL refuses two ranks on one GPU)", c->rank, c->local_rank, dev, ndev,
                          ndev == 1 ? "is" : "are");
    if ((ce = cudaSetDevice(dev)) != cudaSuccess)
        return cuda_fail(ce, "cudaSetDevice", c);
    nccl_ctx_t *n = calloc(1, sizeof(*n));
    if (!n)
        return stk__error(-ENOMEM, "communicator (nccl): out of memory");
    n->device = dev;
    int rc;
    ncclUniqueId id;
    memset(&id, 0, sizeof(id));
    if (c->rank == 0) {
        ncclResult_t r = ncclGetUniqueId(&id);
        if (r != ncclSuccess) {
            rc = nccl_fail(r, "ncclGetUniqueId", c, NULL, NULL);
            goto fail;
        }
    }
    if ((rc = stk__comm_bootstrap_bcast(c, &id, sizeof(id), "nccl/id")) < 0)
        goto fail;
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&n->comm, c->size, id, c->rank, &cfg);
    if (r == ncclSuccess || r == ncclInProgress)
        r = settle(n, r, c->timeout_s);
    if (r != ncclSuccess) {
        if (r == ncclInProgress)
            rc = stk__error(STK_ERANK, "communicator (nccl): rank %d of %d: ncclCommInitRankConfig made no progress "
                            "for %.0f s (a peer never joined)", c->rank, c->size, c->timeout_s);
        else
            rc = nccl_fail(r, "ncclCommInitRankConfig", c, n, NULL);
        if (n->comm)
            ncclCommAbort(n->comm);
        n->comm = NULL;
        goto fail;
    }
    if ((ce = cudaStreamCreateWithFlags(&n->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        rc = cuda_fail(ce, "cudaStreamCreateWithFlags", c);
        ncclCommAbort(n->comm);
        goto fail;
    }
    *ctx = n;
    return 0;
fail:
    free(n);
    return rc;
}

static void nccl_close(stk_comm_t *c, void *ctx, int broken)
{
    nccl_ctx_t *n = ctx;
    if (!n)
        return;
    cudaSetDevice(n->device);
    if (n->comm && !n->aborted) {
        if (broken) {
            ncclCommAbort(n->comm);
        } else {
            ncclResult_t r = ncclCommFinalize(n->comm);
            if (settle(n, r, c->timeout_s) != ncclSuccess)
                ncclCommAbort(n->comm);
            else
                ncclCommDestroy(n->comm);
        }
    }
    if (n->stream)
        cudaStreamDestroy(n->stream);
    if (n->stage)
        cudaFree(n->stage);
    free(n);
}

static ncclDataType_t nccl_type(stk_dtype_t dt)
{
    switch (dt) {
    case STK_DTYPE_U8: return ncclUint8;
    case STK_DTYPE_I8: return ncclInt8;
    case STK_DTYPE_I32: return ncclInt32;
    case STK_DTYPE_I64: return ncclInt64;
    case STK_DTYPE_F16: return ncclFloat16;
    case STK_DTYPE_BF16: return ncclBfloat16;
    case STK_DTYPE_F32: return ncclFloat32;
    default: return ncclUint8;
    }
}

static ncclRedOp_t nccl_op(stk_reduce_op_t op)
{
    switch (op) {
    case STK_REDUCE_SUM: return ncclSum;
    case STK_REDUCE_AVG: return ncclAvg;
    case STK_REDUCE_MAX: return ncclMax;
    case STK_REDUCE_MIN: return ncclMin;
    }
    return ncclSum;
}

static int is_host(const void *p)
{
    struct cudaPointerAttributes a;
    if (!p || cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        cudaGetLastError();
        return 1;
    }
    return a.type == cudaMemoryTypeHost || a.type == cudaMemoryTypeUnregistered;
}

static int stage_reserve(stk_comm_t *c, nccl_ctx_t *n, size_t bytes)
{
    if (bytes <= n->stage_cap)
        return 0;
    /* Earlier staged operations may still use the old scratch. */
    cudaStreamSynchronize(n->stream);
    if (n->stage)
        cudaFree(n->stage);
    n->stage = NULL;
    n->stage_cap = 0;
    cudaError_t ce = cudaMalloc(&n->stage, bytes);
    if (ce != cudaSuccess)
        return cuda_fail(ce, "cudaMalloc (staging)", c);
    n->stage_cap = bytes;
    return 0;
}

static int nccl_launch(stk_comm_t *c, void *ctx, stk_comm_work_t *w)
{
    nccl_ctx_t *n = ctx;
    cudaSetDevice(n->device);
    nccl_work_t *nw = calloc(1, sizeof(*nw));
    if (!nw)
        return stk__error(-ENOMEM, "communicator (nccl): out of memory");
    w->be = nw;
    cudaError_t ce = cudaEventCreateWithFlags(&nw->done, cudaEventDisableTiming);
    if (ce != cudaSuccess)
        return cuda_fail(ce, "cudaEventCreate", c);
    cudaStream_t user = (cudaStream_t)c->stream;
    if (!user) {
        /* No stream given: the buffer's producer may be any stream, a
         * non-blocking one included, which the legacy stream does not
         * wait for. Correct, though it gives up overlap: wait for the
         * device. (DDP over a CUDA model wants stk_comm_set_stream with
         * the engine's stream.) */
        if ((ce = cudaDeviceSynchronize()) != cudaSuccess)
            return cuda_fail(ce, "cudaDeviceSynchronize", c);
    } else {
        /* Wait for the work that produced the buffer (the caller's stream). */
        cudaEvent_t ready;
        if ((ce = cudaEventCreateWithFlags(&ready, cudaEventDisableTiming)) != cudaSuccess)
            return cuda_fail(ce, "cudaEventCreate", c);
        cudaEventRecord(ready, user);
        cudaStreamWaitEvent(n->stream, ready, 0);
        cudaEventDestroy(ready);
    }

    size_t bytes = stk__work_bytes(w);
    size_t in_bytes = bytes, out_bytes = w->kind == STK__COLL_ALLGATHER ? bytes * (size_t)c->size : bytes;
    int staged = w->kind != STK__COLL_BARRIER && w->count &&
                 (is_host(w->buf) || (w->kind == STK__COLL_ALLGATHER && is_host(w->send)));
    void *buf = w->buf;
    const void *send = w->send;
    int rc;
    if (w->kind == STK__COLL_BARRIER) {
        if ((rc = stage_reserve(c, n, sizeof(int32_t))) < 0)
            return rc;
        buf = n->stage;
    } else if (staged) {
        if ((rc = stage_reserve(c, n, out_bytes)) < 0)
            return rc;
        buf = n->stage;
        if (w->kind == STK__COLL_ALLGATHER) {
            send = (char *)n->stage + (size_t)c->rank * bytes;
            ce = cudaMemcpyAsync((void *)send, w->send, in_bytes, cudaMemcpyDefault, n->stream);
        } else {
            ce = cudaMemcpyAsync(n->stage, w->buf, in_bytes, cudaMemcpyDefault, n->stream);
        }
        if (ce != cudaSuccess)
            return cuda_fail(ce, "cudaMemcpyAsync (staging in)", c);
    }
    ncclResult_t r = ncclSuccess;
    switch (w->kind) {
    case STK__COLL_ALLREDUCE:
        r = ncclAllReduce(buf, buf, w->count, nccl_type(w->dtype), nccl_op(w->op), n->comm, n->stream);
        break;
    case STK__COLL_BROADCAST:
        r = ncclBroadcast(buf, buf, w->count, nccl_type(w->dtype), w->root, n->comm, n->stream);
        break;
    case STK__COLL_ALLGATHER:
        r = ncclAllGather(send, buf, w->count, nccl_type(w->dtype), n->comm, n->stream);
        break;
    case STK__COLL_BARRIER:
        r = ncclAllReduce(buf, buf, 1, ncclInt32, ncclSum, n->comm, n->stream);
        break;
    }
    r = settle(n, r, c->timeout_s);
    if (r != ncclSuccess)
        return r == ncclInProgress ? stk__error(STK_ERANK, "communicator (nccl): rank %d: enqueueing a collective "
                                                "made no progress for %.0f s", c->rank, c->timeout_s)
                                   : nccl_fail(r, "enqueue", c, n, w);
    if (staged) {
        ce = cudaMemcpyAsync(w->buf, buf, out_bytes, cudaMemcpyDefault, n->stream);
        if (ce != cudaSuccess)
            return cuda_fail(ce, "cudaMemcpyAsync (staging out)", c);
    }
    /* The caller's stream does not wait for the collective here: that
     * would hold the rest of backward behind each bucket. stk_comm_wait
     * (which waits for done) orders what needs the result. */
    if ((ce = cudaEventRecord(nw->done, n->stream)) != cudaSuccess)
        return cuda_fail(ce, "cudaEventRecord", c);
    return 0;
}

static int nccl_poll(stk_comm_t *c, void *ctx, stk_comm_work_t *w, int *done)
{
    nccl_ctx_t *n = ctx;
    nccl_work_t *nw = w->be;
    ncclResult_t ar = ncclSuccess;
    if (ncclCommGetAsyncError(n->comm, &ar) == ncclSuccess && ar != ncclSuccess && ar != ncclInProgress)
        return nccl_fail(ar, "ncclCommGetAsyncError", c, n, w);
    cudaError_t ce = cudaEventQuery(nw->done);
    if (ce == cudaSuccess) {
        *done = 1;
        return 0;
    }
    if (ce == cudaErrorNotReady) {
        *done = 0;
        return 0;
    }
    return cuda_fail(ce, "cudaEventQuery", c);
}

static void nccl_release(stk_comm_t *c, void *ctx, stk_comm_work_t *w)
{
    (void)c;
    (void)ctx;
    nccl_work_t *nw = w->be;
    if (nw) {
        if (nw->done)
            cudaEventDestroy(nw->done);
        free(nw);
        w->be = NULL;
    }
}

static void nccl_abort(stk_comm_t *c, void *ctx)
{
    (void)c;
    nccl_ctx_t *n = ctx;
    if (n->comm && !n->aborted) {
        ncclCommAbort(n->comm);
        n->aborted = 1;
    }
}

const stk__comm_iface_t stk__nccl_iface = {
    .name = "nccl",
    .threaded = 0,
    .own_timeout = 0,
    .open = nccl_open,
    .close = nccl_close,
    .launch = nccl_launch,
    .poll = nccl_poll,
    .release = nccl_release,
    .abort = nccl_abort,
};
