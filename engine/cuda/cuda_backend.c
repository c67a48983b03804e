/* SPDX-License-Identifier: MIT */
/* CUDA backend: the context (device, stream, cuDNN and cuBLASLt handles),
 * device memory and copies, the vendor status mapping, and the interface
 * table that puts the ops of cuda_conv.c, cuda_linear.c and cuda_ops.c
 * behind engine/backend.h. The work of one model goes on one stream, so
 * slots are ordered without waiting; download and the loss wait for that
 * stream only (no cudaDeviceSynchronize anywhere). */
#include "cuda.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ----------------------------------------------------------- statuses */

int stk__cu_status(cudaError_t e, const char *what)
{
    if (e == cudaSuccess)
        return 0;
    int code = e == cudaErrorMemoryAllocation ? -ENOMEM : STK_EBACKEND;
    return stk__error(code, "CUDA: %s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
}

int stk__cu_launched(const char *what)
{
    return stk__cu_status(cudaGetLastError(), what);
}

int stk__dnn_status(cudnnStatus_t s, const char *what)
{
    if (s == CUDNN_STATUS_SUCCESS)
        return 0;
    /* cuDNN 9 keeps a longer account of the last failure per thread. */
    char detail[384];
    detail[0] = '\0';
    cudnnGetLastErrorString(detail, sizeof(detail));
    int code = (s == CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED ||
                s == CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED)
                   ? -ENOMEM
                   : STK_EBACKEND;
    return stk__error(code, "cuDNN: %s: %s%s%s", what, cudnnGetErrorString(s), detail[0] ? ": " : "", detail);
}

int stk__lt_status(cublasStatus_t s, const char *what)
{
    if (s == CUBLAS_STATUS_SUCCESS)
        return 0;
    int code = s == CUBLAS_STATUS_ALLOC_FAILED ? -ENOMEM : STK_EBACKEND;
    return stk__error(code, "cuBLASLt: %s: %s (%s)", what, cublasLtGetStatusString(s), cublasLtGetStatusName(s));
}

int stk__cu_stick(cuda_ctx_t *c, int rc)
{
    if (rc < 0 && c->sticky == 0) {
        c->sticky = rc;
        snprintf(c->sticky_msg, sizeof(c->sticky_msg), "%s", stk_error_message());
    }
    return rc;
}

int stk__cu_unstick(cuda_ctx_t *c)
{
    int rc = c->sticky;
    if (rc == 0)
        return 0;
    c->sticky = 0;
    return stk__error(rc, "%s (an earlier copy or kernel of this model)", c->sticky_msg);
}

int stk__cuda_op_alloc(cuda_ctx_t *c, void **p, size_t bytes, const char *what)
{
    char buf[160];
    *p = NULL;
    if (bytes == 0)
        return 0;
    snprintf(buf, sizeof(buf), "cudaMalloc(%zu bytes) for %s", bytes, what);
    int rc = stk__cu_status(cudaMalloc(p, bytes), buf);
    if (rc == 0 && (rc = stk__cu_status(cudaMemsetAsync(*p, 0, bytes, c->stream), buf)) < 0) {
        cudaFree(*p);
        *p = NULL;
    }
    return rc;
}

/* -------------------------------------------------------------- memory */

static void cu_destroy(void *ctx)
{
    cuda_ctx_t *c = ctx;
    if (!c)
        return;
    /* Work still queued may use what is freed below. */
    if (c->stream)
        cudaStreamSynchronize(c->stream);
    stk__cuda_feed_fini(c);
    if (c->lt)
        cublasLtDestroy(c->lt);
    if (c->devprop)
        cudnnBackendDestroyDescriptor(c->devprop);
    if (c->dnn)
        cudnnDestroy(c->dnn);
    free(c->stage);
    free(c->cache_path);
    cudaFree(c->dev_scratch);
    cudaFree(c->rows);
    cudaFree(c->flag_dev);
    stk__cuda_graph_fini(c);
    stk__cuda_timer_fini(c);
    cudaFreeHost(c->host_scratch);
    cudaFreeHost(c->flag_host);
    if (c->stream)
        cudaStreamDestroy(c->stream);
    free(c);
}

static void *cu_alloc(void *ctx, size_t bytes)
{
    cuda_ctx_t *c = ctx;
    size_t sz = (bytes + 63) & ~(size_t)63;
    void *p = NULL;
    /* NULL says out of memory; the thread's message says why. */
    if (stk__cuda_op_alloc(c, &p, sz ? sz : 64, "device memory") < 0)
        return NULL;
    return p;
}

static void cu_free(void *ctx, void *p)
{
    (void)ctx;
    if (p)
        cudaFree(p); /* waits for the device: plan time only */
}

static int cu_upload(void *ctx, void *dst, const void *src, size_t bytes)
{
    cuda_ctx_t *c = ctx;
    int rc = stk__cu_unstick(c);
    if (rc || bytes == 0)
        return rc;
    /* The caller may reuse src once this returns, without a wait for the
     * stream: from pageable memory cudaMemcpyAsync stages the bytes before
     * it returns; pinned memory (a loader's registered arena) it would
     * read later, so such a src is first copied to pageable memory of the
     * context's (small: labels, targets, the odd parameter load). */
    const void *from = src;
    struct cudaPointerAttributes at;
    cudaError_t q = cudaPointerGetAttributes(&at, src);
    if (q != cudaSuccess)
        (void)cudaGetLastError(); /* the query's own error, not the stream's */
    else if (at.type == cudaMemoryTypeHost) {
        if (bytes > c->stage_cap) {
            void *p = realloc(c->stage, bytes);
            if (!p)
                return stk__error(-ENOMEM, "upload: out of memory for %zu staged bytes", bytes);
            c->stage = p;
            c->stage_cap = bytes;
        }
        memcpy(c->stage, src, bytes);
        from = c->stage;
    }
    return stk__cu_status(cudaMemcpyAsync(dst, from, bytes, cudaMemcpyDefault, c->stream), "upload");
}

static int cu_download(void *ctx, void *dst, const void *src, size_t bytes)
{
    cuda_ctx_t *c = ctx;
    int rc = stk__cu_unstick(c);
    if (rc || bytes == 0)
        return rc;
    rc = stk__cu_status(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream), "download");
    /* Waits for the copy and reports a fault the queued kernels left. */
    return rc ? rc : stk__cuda_fault_read(c);
}

static int cu_copy(void *ctx, void *dst, const void *src, size_t bytes)
{
    cuda_ctx_t *c = ctx;
    int rc = stk__cu_unstick(c);
    if (rc || bytes == 0 || dst == src)
        return rc;
    /* cudaMemcpyAsync copies overlapping ranges as memmove does. */
    return stk__cu_status(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream), "device copy");
}

static void cu_zero(void *ctx, float *dst, size_t n)
{
    cuda_ctx_t *c = ctx;
    if (n)
        stk__cu_stick(c, stk__cu_status(cudaMemsetAsync(dst, 0, n * sizeof(float), c->stream), "zero"));
}

/* Waits for this model's stream: the first failure of its queued work. */
static int cu_synchronize(void *ctx)
{
    cuda_ctx_t *c = ctx;
    int rc = stk__cu_unstick(c);
    return rc ? rc : stk__cuda_fault_read(c);
}

static void *cu_stream(void *ctx)
{
    return ((cuda_ctx_t *)ctx)->stream;
}

static int cu_set_threads(void *ctx, int n)
{
    (void)ctx;
    if (n < 1)
        return stk__error(-EINVAL, "threads: %d is not a positive count", n);
    return 0; /* host threads do not drive the GPU's work */
}

static int cu_max_threads(void *ctx)
{
    (void)ctx;
    return 1;
}

static const stk__backend_iface_t cuda_iface = {
    .name = "cuda",
    .host_memory = 0,
    .blocked_layouts = 0,
    .destroy = cu_destroy,
    .alloc = cu_alloc,
    .free = cu_free,
    .upload = cu_upload,
    .download = cu_download,
    .copy = cu_copy,
    .zero = cu_zero,
    .synchronize = cu_synchronize,
    .stream = cu_stream,
    .set_threads = cu_set_threads,
    .max_threads = cu_max_threads,
    .op_destroy = stk__cuda_op_destroy,
    .conv_create = stk__cuda_conv_create,
    .conv_forward = stk__cuda_conv_forward,
    .conv_backward_data = stk__cuda_conv_backward_data,
    .conv_backward_weights = stk__cuda_conv_backward_weights,
    .conv_fused_create = stk__cuda_conv_fused_create,
    .conv_fused_forward = stk__cuda_conv_fused_forward,
    .bn_create = stk__cuda_bn_create,
    .bn_forward = stk__cuda_bn_forward,
    .bn_backward = stk__cuda_bn_backward,
    .bn_update_running = stk__cuda_bn_update_running,
    .pool_create = stk__cuda_pool_create,
    .pool_forward = stk__cuda_pool_forward,
    .pool_backward = stk__cuda_pool_backward,
    .reorder_create = stk__cuda_reorder_create,
    .reorder_run = stk__cuda_reorder_run,
    .linear_create = stk__cuda_linear_create,
    .linear_forward = stk__cuda_linear_forward,
    .linear_backward_data = stk__cuda_linear_backward_data,
    .linear_backward_weights = stk__cuda_linear_backward_weights,
    .eltwise_forward = stk__cuda_eltwise_forward,
    .eltwise_backward = stk__cuda_eltwise_backward,
    .add = stk__cuda_add,
    .accumulate = stk__cuda_accumulate,
    .concat_forward = stk__cuda_concat_forward,
    .concat_backward = stk__cuda_concat_backward,
    .dropout_forward = stk__cuda_dropout_forward,
    .dropout_backward = stk__cuda_dropout_backward,
    .xent_forward = stk__cuda_xent_forward,
    .xent_backward = stk__cuda_xent_backward,
    .count_correct = stk__cuda_count_correct,
    .rnn_create = stk__cuda_rnn_create,
    .rnn_destroy = stk__cuda_rnn_destroy,
    .rnn_forward = stk__cuda_rnn_forward,
    .rnn_backward = stk__cuda_rnn_backward,
    .gather_rows = stk__cuda_gather_rows,
    .scatter_add_rows = stk__cuda_scatter_add_rows,
    .seq_pool_forward = stk__cuda_seq_pool_forward,
    .seq_pool_backward = stk__cuda_seq_pool_backward,
    .feed_copy = stk__cuda_feed_copy,
    .feed_use = stk__cuda_feed_use,
    .feed_release = stk__cuda_feed_release,
    .pin_host = stk__cuda_pin_host,
    .unpin_host = stk__cuda_unpin_host,
    .optim_create = stk__cuda_optim_create,
    .optim_update = stk__cuda_optim_update,
    .set_precision = stk__cuda_set_precision,
    .unscale_grads = stk__cuda_unscale_grads,
    .graph_begin = stk__cuda_graph_begin,
    .graph_end = stk__cuda_graph_end,
    .graph_launch = stk__cuda_graph_launch,
    .graph_destroy = stk__cuda_graph_destroy,
    .graph_note_step = stk__cuda_graph_note_step,
    .graph_note_optim = stk__cuda_graph_note_optim,
    .configure = stk__dnn_configure,
    .algo_stats = stk__dnn_algo_stats,
    .feed_copy_time = stk__cuda_feed_copy_time,
    .feed_copy_half = stk__cuda_feed_copy_half,
    .timer_reserve = stk__cuda_timer_reserve,
    .timer_mark = stk__cuda_timer_mark,
    .timer_elapsed = stk__cuda_timer_elapsed,
};

/* ------------------------------------------------------------------ open */

/* The device to use: `device` when >= 0, else the calling thread's
 * current one (device 0 unless the program chose another). */
static int pick_device(int device, int *out)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess)
        return stk__error(STK_EDEVICE, "CUDA: no usable GPU: %s (%s)", cudaGetErrorString(e), cudaGetErrorName(e));
    if (n < 1)
        return stk__error(STK_EDEVICE, "CUDA: no GPU found");
    if (device < 0 && cudaGetDevice(&device) != cudaSuccess)
        device = 0;
    if (device >= n)
        return stk__error(STK_EDEVICE, "CUDA: device %d asked for, %d present", device, n);
    e = cudaSetDevice(device);
    if (e != cudaSuccess)
        return stk__error(STK_EDEVICE, "CUDA: device %d: %s", device, cudaGetErrorString(e));
    *out = device;
    return 0;
}

int stk__cuda_backend_open(stk__backend_t *b, int device)
{
    int rc = 0;
    size_t ver = cudnnGetVersion();
    if (ver < 90800)
        return stk__error(STK_EDEVICE, "CUDA: cuDNN %zu.%zu is loaded; the backend needs 9.8 or newer", ver / 10000,
                          ver / 100 % 100);
    cuda_ctx_t *c = calloc(1, sizeof(*c));
    if (!c)
        return stk__error(-ENOMEM, "cuda backend: out of memory");
    if ((rc = pick_device(device, &c->device)) < 0)
        goto fail;
    if ((rc = stk__cu_status(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking), "creating a stream")))
        goto fail;
    if ((rc = stk__dnn_status(cudnnCreate(&c->dnn), "cudnnCreate")) ||
        (rc = stk__dnn_status(cudnnSetStream(c->dnn, c->stream), "cudnnSetStream")))
        goto fail;
    if ((rc = stk__dnn_devprop_create(c)) < 0 || (rc = stk__cuda_feed_init(c)) < 0)
        goto fail;
    if ((rc = stk__lt_status(cublasLtCreate(&c->lt), "cublasLtCreate")))
        goto fail;
    if ((rc = stk__cuda_op_alloc(c, &c->dev_scratch, sizeof(stk__k_fault_t), "the fault word")) ||
        (rc = stk__cu_status(cudaMallocHost(&c->host_scratch, sizeof(stk__k_fault_t)), "cudaMallocHost (scratch)")))
        goto fail;
    if ((rc = stk__cuda_op_alloc(c, (void **)&c->flag_dev, sizeof(int), "the non-finite flag")) ||
        (rc = stk__cu_status(cudaMallocHost((void **)&c->flag_host, sizeof(int)), "cudaMallocHost (flag)")) ||
        (rc = stk__cuda_graph_init(c)))
        goto fail;
    b->iface = &cuda_iface;
    b->ctx = c;
    return 0;
fail:
    cu_destroy(c);
    return rc;
}
