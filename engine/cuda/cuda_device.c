/* SPDX-License-Identifier: MIT */
/* The CUDA backend's side of feeding and of naming devices: pinning the
 * loader's arena (cudaHostRegister), the feed's copy queue (a stream of
 * its own, with an event per slot each way: copied, so that compute
 * waits for its input on the device; released, so that a copy does not
 * overwrite what compute still reads), and the device count and one-line
 * description for a tool's summary. */
#include "cuda.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

int stk__cuda_feed_init(cuda_ctx_t *c)
{
    int rc = stk__cu_status(cudaStreamCreateWithFlags(&c->copy_stream, cudaStreamNonBlocking), "a copy stream");
    /* copy_begin and copied time each copy (feed_copy_time): the H2D
     * bandwidth a run reports. */
    for (int i = 0; i < STK__FEED_SLOTS && rc == 0; i++)
        if ((rc = stk__cu_status(cudaEventCreate(&c->copied[i]), "an event")) == 0 &&
            (rc = stk__cu_status(cudaEventCreate(&c->copy_begin[i]), "an event")) == 0)
            rc = stk__cu_status(cudaEventCreateWithFlags(&c->released[i], cudaEventDisableTiming), "an event");
    return rc;
}

void stk__cuda_feed_fini(cuda_ctx_t *c)
{
    if (c->copy_stream)
        cudaStreamSynchronize(c->copy_stream);
    for (int i = 0; i < STK__FEED_SLOTS; i++) {
        if (c->copied[i])
            cudaEventDestroy(c->copied[i]);
        if (c->released[i])
            cudaEventDestroy(c->released[i]);
        if (c->copy_begin[i])
            cudaEventDestroy(c->copy_begin[i]);
    }
    if (c->copy_stream)
        cudaStreamDestroy(c->copy_stream);
}

static int bad_slot(int slot)
{
    return slot < 0 || slot >= STK__FEED_SLOTS ? stk__error(-EINVAL, "feed: slot %d", slot) : 0;
}

/* The copy of bytes from src to dst on the copy queue, then (half: n
 * values, bf16 says which kind) their conversion from dst to f32 at out. */
static int feed_copy(cuda_ctx_t *c, int slot, void *dst, const void *src, size_t bytes, float *out, size_t n,
                     int bf16)
{
    int rc = stk__cu_unstick(c);
    if (rc || (rc = bad_slot(slot)))
        return rc;
    /* Not before the work that last read this slot's buffer is done. */
    if (c->released_set[slot] &&
        (rc = stk__cu_status(cudaStreamWaitEvent(c->copy_stream, c->released[slot], 0), "feed: wait")))
        return rc;
    if ((rc = stk__cu_status(cudaEventRecord(c->copy_begin[slot], c->copy_stream), "feed: record")))
        return rc;
    if (bytes &&
        (rc = stk__cu_status(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, c->copy_stream), "feed: copy")))
        return rc;
    if (out && (rc = stk__cu_status(stk__k_half_to_f32(c->copy_stream, n, (const uint16_t *)dst, bf16, out),
                                    "feed: converting a half batch to f32")))
        return rc;
    if ((rc = stk__cu_status(cudaEventRecord(c->copied[slot], c->copy_stream), "feed: record")))
        return rc;
    c->copied_set[slot] = 1;
    return 0;
}

int stk__cuda_feed_copy(void *ctx, int slot, void *dst, const void *src, size_t bytes)
{
    return feed_copy(ctx, slot, dst, src, bytes, NULL, 0, 0);
}

int stk__cuda_feed_copy_half(void *ctx, int slot, float *dst, void *stage, const void *src, size_t n, int bf16)
{
    return feed_copy(ctx, slot, stage, src, n * sizeof(uint16_t), dst, n, bf16);
}

int stk__cuda_feed_use(void *ctx, int slot)
{
    cuda_ctx_t *c = ctx;
    int rc = bad_slot(slot);
    if (rc || !c->copied_set[slot])
        return rc;
    return stk__cu_status(cudaStreamWaitEvent(c->stream, c->copied[slot], 0), "feed: use");
}

int stk__cuda_feed_release(void *ctx, int slot)
{
    cuda_ctx_t *c = ctx;
    int rc = bad_slot(slot);
    if (rc)
        return rc;
    if ((rc = stk__cu_status(cudaEventRecord(c->released[slot], c->stream), "feed: release")))
        return rc;
    c->released_set[slot] = 1;
    /* The host waits for this slot's copy only (long done, normally):
     * then the batch it came from may go back to the loader. */
    return c->copied_set[slot] ? stk__cu_status(cudaEventSynchronize(c->copied[slot]), "feed: copy") : 0;
}

int stk__cuda_feed_copy_time(void *ctx, int slot, double *sec)
{
    cuda_ctx_t *c = ctx;
    *sec = 0.0;
    int rc = bad_slot(slot);
    if (rc || !c->copied_set[slot])
        return rc;
    float ms = 0.0f;
    rc = stk__cu_status(cudaEventElapsedTime(&ms, c->copy_begin[slot], c->copied[slot]), "feed: copy time");
    if (rc == 0)
        *sec = 1e-3 * (double)ms;
    return rc;
}

int stk__cuda_pin_host(void *ctx, void *addr, size_t bytes)
{
    (void)ctx;
    char what[96];
    snprintf(what, sizeof(what), "cudaHostRegister (%zu bytes)", bytes);
    /* Portable: pinned for every device of the process, not only this
     * context's. */
    return stk__cu_status(cudaHostRegister(addr, bytes, cudaHostRegisterPortable), what);
}

void stk__cuda_unpin_host(void *ctx, void *addr)
{
    (void)ctx;
    cudaHostUnregister(addr);
}

int stk__cuda_device_count(void)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        stk__error(STK_EDEVICE, "CUDA: no usable GPU: %s (%s)", cudaGetErrorString(e), cudaGetErrorName(e));
        (void)cudaGetLastError();
        return 0;
    }
    if (n == 0)
        stk__error(STK_EDEVICE, "CUDA: no GPU found");
    return n;
}

/* The kernel module's release ("570.86.15"), which the CUDA runtime does
 * not report; "" when /proc does not say. */
static void driver_release(char out[32])
{
    out[0] = '\0';
    FILE *f = fopen("/proc/driver/nvidia/version", "r");
    if (!f)
        return;
    char line[256];
    const char *k;
    if (fgets(line, sizeof(line), f) && (k = strstr(line, "Kernel Module")) &&
        sscanf(k + strlen("Kernel Module"), " %31s", out) != 1)
        out[0] = '\0';
    fclose(f);
}

int stk__cuda_describe(int index, char *buf, size_t cap)
{
    int n = stk__cuda_device_count();
    if (n == 0)
        return STK_EDEVICE;
    if (index < 0 && cudaGetDevice(&index) != cudaSuccess)
        index = 0;
    if (index >= n)
        return stk__error(STK_EDEVICE, "CUDA: device %d asked for, %d present", index, n);
    struct cudaDeviceProp p;
    cudaError_t e = cudaGetDeviceProperties(&p, index);
    if (e != cudaSuccess)
        return stk__error(STK_EDEVICE, "CUDA: device %d: %s", index, cudaGetErrorString(e));
    int drv = 0, rt = 0;
    cudaDriverGetVersion(&drv);
    cudaRuntimeGetVersion(&rt);
    char rel[32];
    driver_release(rel);
    size_t dnn = cudnnGetVersion();
    snprintf(buf, cap, "%s (cuda:%d, sm_%d%d, %.0f GiB), driver %s%sCUDA %d.%d, runtime %d.%d, cuDNN %zu.%zu.%zu", p.name,
             index, p.major, p.minor, (double)p.totalGlobalMem / (1024.0 * 1024 * 1024), rel, rel[0] ? " / " : "",
             drv / 1000, drv % 1000 / 10, rt / 1000, rt % 1000 / 10, dnn / 10000, dnn / 100 % 100, dnn % 100);
    return 0;
}
