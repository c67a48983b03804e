/* SPDX-License-Identifier: MIT */
/* What the GPU training tests share: checks that end the program with the
 * failing expression, the skip when no GPU is usable, the reference model's
 * text, building a model from it, the synthetic batches they train on and
 * the tensors of a batch on the GPU. Static inline, so that a
 * program using some of them does not warn about the others. */
#ifndef STOKER_GPU_TEST_H
#define STOKER_GPU_TEST_H

#include "../unit/test_util.h"
#include "stoker/common.h"
#include "stoker/engine.h"

#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GPU_TEST_IMG (28 * 28)

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                   \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)
#define STK(x) CHECK((x) == 0, "%s: %s", #x, stk_error_message())
#define CU(x)                                                                                      \
    do {                                                                                           \
        cudaError_t e_ = (x);                                                                      \
        CHECK(e_ == cudaSuccess, "%s: %s", #x, cudaGetErrorString(e_));                            \
    } while (0)

/* 0 when a GPU is usable; otherwise says why and gives main's exit
 * status: 77 (skip), or 1 under STK_REQUIRE_GPU=1. */
static inline int gpu_test_unavailable(void)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e == cudaSuccess && n >= 1)
        return 0;
    const char *req = getenv("STK_REQUIRE_GPU");
    int required = req && !strcmp(req, "1");
    fprintf(stderr, "%s no usable GPU: %s\n", required ? "FAIL" : "SKIP",
            e == cudaSuccess ? "none found" : cudaGetErrorString(e));
    return required ? 1 : 77;
}

/* models/fmnist-cnn.model under $STK_SOURCE_ROOT (heap; the caller frees). */
static inline char *gpu_test_model_text(void)
{
    const char *root = getenv("STK_SOURCE_ROOT");
    char path[1024];
    snprintf(path, sizeof(path), "%s/models/fmnist-cnn.model", root ? root : ".");
    size_t len;
    char *text = read_file(path, &len);
    CHECK(text, "cannot read %s", path);
    return text;
}

/* Batch s: each image its class's fixed pattern plus noise, so that the
 * steps learn something and the trajectory is smooth (on pure noise SGD
 * wanders, and a rounding difference grows into a different run). */
static inline void gpu_test_batch(int s, int batch, float *x, int64_t *labels)
{
    stk_rng_t r;
    stk_rng_init(&r, 7, (uint64_t)s + 1);
    for (int i = 0; i < batch; i++) {
        labels[i] = (int64_t)(stk_rng_u32(&r) % 10);
        stk_rng_t pat;
        stk_rng_init(&pat, 11, (uint64_t)labels[i]);
        for (int k = 0; k < GPU_TEST_IMG; k++)
            x[i * GPU_TEST_IMG + k] =
                2.0f * stk_rng_uniform(&pat) - 1.0f + 0.5f * (stk_rng_uniform(&r) - 0.5f);
    }
}

/* The model of text (name: how messages call it) with cfg; fails the test
 * when it cannot be built. */
static inline stk_model_t *gpu_test_model(const char *text, const char *name, const stk_model_config_t *cfg)
{
    stk_model_builder_t *b = NULL;
    STK(stk_model_builder_create(&b));
    STK(stk_model_builder_parse(b, text, name));
    stk_model_t *m = NULL;
    STK(stk_model_create(&m, b, cfg));
    stk_model_builder_destroy(&b);
    return m;
}

/* The input and target tensors of n 1x28x28 images at dev (GPU memory)
 * with their labels on the host. */
static inline void gpu_test_tensors(float *dev, int64_t *labels, int64_t n, stk_tensor_t *in, stk_tensor_t *tg)
{
    int64_t xs[4] = {n, 1, 28, 28}, ys[1] = {n};
    STK(stk_tensor_init(in, dev, STK_DTYPE_F32, 4, xs));
    in->device = STK_DEVICE_CUDA;
    STK(stk_tensor_init(tg, labels, STK_DTYPE_I64, 1, ys));
}

#endif
