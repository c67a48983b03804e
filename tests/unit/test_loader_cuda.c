/* SPDX-License-Identifier: MIT */
/* The loader in a CUDA program, on a real GPU: the arena pinned with
 * cudaHostRegister through the pin hook, batches copied to the device
 * straight from their slots, and workers that hold no CUDA state.
 *
 *   clean: stk_loader_forkserver_start() before CUDA, as stoker-train
 *          does; then the engine on the GPU (a model planned, one step),
 *          then the loader. Workers must map nothing of the driver
 *          (/dev/nvidia*) while the main process does.
 *   late:  the engine on the GPU first and no early server: the loader
 *          still works (the library warns).
 *
 * Each batch is checked three ways: against a loader without workers and
 * without pinning, byte for byte; as registered host memory
 * (cudaPointerGetAttributes); and after a round trip through the device
 * (H2D from the slot, D2H into pageable memory). It also prints H2D
 * bandwidth from the pinned slots and from a pageable copy of them.
 *
 * Without a GPU (or a driver) it exits 77, which Meson reports as a skip,
 * with the reason; STK_REQUIRE_GPU=1 makes that a failure. Plain main, no
 * cmocka: the skip needs the exit code. */
#define _GNU_SOURCE
#include <stoker/stoker.h>

#include <cuda_runtime.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                \
            fprintf(stderr, __VA_ARGS__);                                       \
            fputc('\n', stderr);                                                \
            exit(1);                                                            \
        }                                                                       \
    } while (0)
#define CU(x)                                                                   \
    do {                                                                        \
        cudaError_t e_ = (x);                                                   \
        CHECK(e_ == cudaSuccess, "%s: %s", #x, cudaGetErrorString(e_));         \
    } while (0)
#define STK(x) CHECK((x) == 0, "%s: %s", #x, stk_error_message())

enum { N = 2048, C = 3, H = 64, W = 64, BATCH = 64, IMG = C * H * W };

static const char *const AUG = "hflip|normalize:mean=0.5/0.4/0.3,std=0.25/0.2/0.3";

static int pin_calls, unpin_calls, warned_cuda;

static int pin_cuda(void *addr, size_t bytes, void *user)
{
    (void)user;
    pin_calls++;
    cudaError_t e = cudaHostRegister(addr, bytes, cudaHostRegisterDefault);
    if (e != cudaSuccess) {
        fprintf(stderr, "cudaHostRegister(%zu bytes): %s\n", bytes, cudaGetErrorString(e));
        return -ENOMEM;
    }
    return 0;
}

static void unpin_cuda(void *addr, size_t bytes, void *user)
{
    (void)bytes, (void)user;
    unpin_calls++;
    cudaHostUnregister(addr);
}

static void on_log(stk_log_level_t level, const char *msg, void *user)
{
    (void)user;
    if (level == STK_LOG_WARN && strstr(msg, "CUDA"))
        warned_cuda = 1;
    fprintf(stderr, "stoker: %s\n", msg);
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* Whether pid maps any NVIDIA device file: what a CUDA context leaves. */
static int maps_nvidia(int pid)
{
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/%d/maps", pid);
    FILE *f = fopen(path, "r");
    CHECK(f, "cannot read %s", path);
    int found = 0;
    while (!found && fgets(line, sizeof line, f))
        found = strstr(line, "/dev/nvidia") != NULL;
    fclose(f);
    return found;
}

static stk_dataset_t *make_dataset(unsigned char **img_out, int64_t **lab_out)
{
    stk_schema_t sc;
    memset(&sc, 0, sizeof sc);
    int64_t shape[3] = {C, H, W};
    STK(stk_schema_add(&sc, "image", STK_DTYPE_U8, 3, shape));
    STK(stk_schema_add(&sc, "label", STK_DTYPE_I64, 0, NULL));
    unsigned char *img = malloc((size_t)N * IMG);
    int64_t *lab = malloc(N * sizeof *lab);
    CHECK(img && lab, "out of memory");
    for (size_t i = 0; i < (size_t)N * IMG; i++)
        img[i] = (unsigned char)((i * 2654435761u) >> 13);
    for (int64_t i = 0; i < N; i++)
        lab[i] = i * 7 % 1000;
    const void *fields[2] = {img, lab};
    stk_dataset_t *ds = NULL;
    STK(stk_dataset_memory_create(&ds, &sc, fields, N));
    *img_out = img;
    *lab_out = lab;
    return ds;
}

static stk_loader_config_t cfg(uint32_t workers)
{
    stk_loader_config_t c;
    stk_loader_config_default(&c);
    c.batch_size = BATCH;
    c.num_workers = workers;
    c.shuffle = 1;
    c.seed = 42;
    c.persistent_workers = 1;
    c.augment = AUG;
    c.augment_field = "image";
    return c;
}

static int run(const char *what, int clean)
{
    unsigned char *img;
    int64_t *lab;
    stk_dataset_t *ds = make_dataset(&img, &lab);
    stk_loader_config_t c = cfg(2);
    c.pin = pin_cuda;
    c.unpin = unpin_cuda;
    c.pin_no_memlock = 1;
    stk_loader_t *l = NULL, *ref = NULL;
    STK(stk_loader_create(&l, ds, &c));
    CHECK(pin_calls == 1, "%s: pin called %d times", what, pin_calls);
    stk_loader_config_t rc = cfg(0);
    STK(stk_loader_create(&ref, ds, &rc));

    int pids[2];
    CHECK(stk_loader_worker_pids(l, pids, 2) == 2, "%s: two workers expected", what);
    CHECK(maps_nvidia(getpid()), "%s: the main process maps no /dev/nvidia* (no context?)", what);
    for (int i = 0; i < 2; i++)
        if (clean)
            CHECK(!maps_nvidia(pids[i]), "%s: worker pid %d maps /dev/nvidia*", what, pids[i]);

    size_t img_bytes = (size_t)BATCH * IMG * sizeof(float);
    void *dev = NULL, *back = malloc(img_bytes), *pageable = malloc(img_bytes);
    CHECK(back && pageable, "out of memory");
    CU(cudaMalloc(&dev, img_bytes));
    cudaStream_t st;
    CU(cudaStreamCreate(&st));
    double t_pinned = 0, t_pageable = 0;
    size_t copied = 0;
    int batches = 0;
    for (uint64_t epoch = 0; epoch < 2; epoch++) {
        STK(stk_loader_set_epoch(l, epoch));
        STK(stk_loader_set_epoch(ref, epoch));
        stk_batch_t b, r;
        int s;
        while ((s = stk_loader_next(l, &b)) == 0) {
            STK(stk_loader_next(ref, &r));
            CHECK(b.number == r.number && b.size == r.size, "%s: batch %llu differs in size",
                  what, (unsigned long long)b.number);
            CHECK(!memcmp(b.indices, r.indices, b.size * sizeof *b.indices),
                  "%s: batch %llu: indices differ", what, (unsigned long long)b.number);
            const stk_batch_field_t *f = &b.fields[0];
            CHECK(f->dtype == STK_DTYPE_F32 && f->bytes == b.size * IMG * sizeof(float),
                  "%s: image field is not f32 [%d,%d,%d]", what, C, H, W);
            for (uint32_t k = 0; k < b.nfields; k++)
                CHECK(!memcmp(b.fields[k].data, r.fields[k].data, b.fields[k].bytes),
                      "%s: batch %llu field %s differs from the inline loader", what,
                      (unsigned long long)b.number, b.fields[k].name);
            struct cudaPointerAttributes at;
            CU(cudaPointerGetAttributes(&at, f->data));
            CHECK(at.type == cudaMemoryTypeHost, "%s: batch memory is not registered (type %d)",
                  what, (int)at.type);
            double t0 = now_s();
            CU(cudaMemcpyAsync(dev, f->data, f->bytes, cudaMemcpyHostToDevice, st));
            CU(cudaStreamSynchronize(st));
            t_pinned += now_s() - t0;
            memcpy(pageable, f->data, f->bytes);
            t0 = now_s();
            CU(cudaMemcpyAsync(dev, pageable, f->bytes, cudaMemcpyHostToDevice, st));
            CU(cudaStreamSynchronize(st));
            t_pageable += now_s() - t0;
            copied += f->bytes;
            memset(back, 0, f->bytes);
            CU(cudaMemcpy(back, dev, f->bytes, cudaMemcpyDeviceToHost));
            CHECK(!memcmp(back, f->data, f->bytes), "%s: batch %llu changed on the device",
                  what, (unsigned long long)b.number);
            stk_loader_release(l, &b);
            stk_loader_release(ref, &r);
            batches++;
        }
        CHECK(s == STK_DONE, "%s: next: %s", what, stk_error_message());
    }
    CHECK(batches == 2 * (N / BATCH), "%s: %d batches", what, batches);
    printf("%s: %d batches identical to the inline loader and after a device round trip; "
           "H2D %.1f GB/s from pinned slots, %.1f GB/s from pageable memory (%zu MB)\n",
           what, batches, copied / t_pinned / 1e9, copied / t_pageable / 1e9, copied >> 20);
    CU(cudaStreamDestroy(st));
    CU(cudaFree(dev));
    stk_loader_destroy(&l);
    CHECK(unpin_calls == 1, "%s: unpin called %d times", what, unpin_calls);
    stk_loader_destroy(&ref);
    stk_dataset_destroy(&ds);
    free(back);
    free(pageable);
    free(img);
    free(lab);
    return 0;
}

/* The engine touches CUDA the way a training program does: a model on
 * the GPU, planned, with one forward and backward on device memory. The
 * loader created after it must still start clean workers. */
static stk_model_t *engine_on_gpu(void)
{
    static const char *const text = "input name=x shape=3,64,64\n"
                                    "conv2d name=c out=8 kernel=3 stride=2 pad=1\n"
                                    "batchnorm2d name=bn\nrelu name=r\nglobal_avgpool name=g\nflatten name=f\n"
                                    "linear name=fc out=10\ncross_entropy name=loss\n";
    stk_model_builder_t *b = NULL;
    STK(stk_model_builder_create(&b));
    STK(stk_model_builder_parse(b, text, "engine_on_gpu"));
    stk_model_config_t mc;
    stk_model_config_default(&mc);
    mc.batch_size = 4;
    mc.device = STK_DEVICE_CUDA;
    stk_model_t *m = NULL;
    STK(stk_model_create(&m, b, &mc));
    stk_model_builder_destroy(&b);
    float *x = NULL;
    CU(cudaMalloc((void **)&x, 4 * IMG * sizeof(float)));
    CU(cudaMemset(x, 0, 4 * IMG * sizeof(float)));
    int64_t labels[4] = {1, 2, 3, 4};
    float loss = 0;
    STK(stk_model_forward(m, x, 4, labels, NULL, &loss));
    STK(stk_model_backward(m));
    CU(cudaFree(x));
    printf("engine: a model on the GPU, loss %.4f before the loader\n", (double)loss);
    return m;
}

/* Exit 77 (skip) without a usable GPU, unless STK_REQUIRE_GPU=1. */
static void need_gpu(void)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e == cudaSuccess && n > 0)
        return;
    const char *req = getenv("STK_REQUIRE_GPU");
    printf("no CUDA device: %s\n", e == cudaSuccess ? "none found" : cudaGetErrorString(e));
    if (req && strcmp(req, "0") != 0) {
        fprintf(stderr, "FAIL: STK_REQUIRE_GPU is set\n");
        exit(1);
    }
    exit(77);
}

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    stk_log_set_callback(on_log, NULL, STK_LOG_WARN);
    /* The clean case in a child forked before this process touches CUDA. */
    pid_t pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
        STK(stk_loader_forkserver_start());
        need_gpu();
        stk_model_t *m = engine_on_gpu();
        int rc = run("clean", 1);
        stk_model_destroy(&m);
        _exit(rc);
    }
    int ws = 0;
    CHECK(waitpid(pid, &ws, 0) == pid, "waitpid");
    CHECK(WIFEXITED(ws), "clean case: killed by signal %d", WTERMSIG(ws));
    if (WEXITSTATUS(ws) == 77)
        return 77;
    CHECK(WEXITSTATUS(ws) == 0, "clean case failed (exit %d)", WEXITSTATUS(ws));

    need_gpu();
    stk_model_t *m = engine_on_gpu();
    pin_calls = unpin_calls = 0;
    run("late", 0);
    stk_model_destroy(&m);
    CHECK(warned_cuda, "late: no warning that the fork server started after CUDA");
    stk_loader_forkserver_stop();
    printf("ok\n");
    return 0;
}
