/* SPDX-License-Identifier: MIT */
/* The whole training step as one CUDA graph (engine/graph.c), with the
 * reference CNN (models/fmnist-cnn.model: batchnorm, dropout, momentum
 * SGD with a learning rate that changes every step) under the
 * deterministic cuDNN policy: 20 steps with graphs and 20 without, from
 * the same seed, end with bit-identical parameters, buffers and losses.
 * The input alternates between two device buffers (as the feed's do), so
 * two graphs are captured; step 12 is a short batch, which runs outside
 * the graphs, and the steps after it replay them again. A changing lr
 * reaching the replays and dropout's step advancing are what a stale
 * graph would get wrong. Without a GPU it exits 77 (STK_REQUIRE_GPU=1: a
 * failure). */
#define _GNU_SOURCE
#include "stoker/engine.h"
#include "stoker/optim.h"

#include "gpu_test.h"

#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BATCH 32
#define SHORT 16
#define STEPS 20
#define SHORT_AT 12
#define IMG GPU_TEST_IMG

static char *model_text;

/* 20 steps; the state after them (malloc'd, *size bytes) and the losses. */
static char *run(int graphs, float *dev_x[2], float *losses, size_t *size)
{
    stk_model_config_t cfg;
    stk_model_config_default(&cfg);
    cfg.batch_size = BATCH;
    cfg.seed = 1;
    cfg.device = STK_DEVICE_CUDA;
    cfg.cudnn_policy = STK_CUDNN_DETERMINISTIC;
    stk_model_t *m = gpu_test_model(model_text, "fmnist-cnn.model", &cfg);
    stk_optim_t *opt = NULL;
    stk_sched_t *sched = NULL;
    STK(stk_optim_create_for_model(&opt, m, "sgd:lr=0.02,momentum=0.9,nesterov=1,weight_decay=5e-4"));
    STK(stk_sched_create_from_text(&sched, opt, "warmup:5,start=0.1|cosine:eta_min=0", 0, STEPS));
    STK(stk_model_set_cuda_graph(m, graphs));
    CHECK(stk_model_cuda_graph(m, NULL, NULL) == graphs, "graphs %s but the model says %d", graphs ? "on" : "off",
          stk_model_cuda_graph(m, NULL, NULL));
    static float x[BATCH * IMG];
    int64_t labels[BATCH];
    for (int s = 0; s < STEPS; s++) {
        gpu_test_batch(s, BATCH, x, labels);
        float *dev = dev_x[s % 2];
        CU(cudaMemcpy(dev, x, sizeof(x), cudaMemcpyHostToDevice));
        int64_t n = s == SHORT_AT ? SHORT : BATCH;
        stk_tensor_t in, tg;
        gpu_test_tensors(dev, labels, n, &in, &tg);
        STK(stk_model_train_step(m, opt, &in, &tg, &losses[s]));
        int64_t correct = -1;
        STK(stk_model_count_correct(m, labels, &correct));
        CHECK(correct >= 0 && correct <= n, "step %d: %lld correct of %lld", s, (long long)correct, (long long)n);
        STK(stk_sched_step(sched));
    }
    uint64_t captures = 0, replays = 0;
    stk_model_cuda_graph(m, &captures, &replays);
    printf("graphs %s: %llu captured, %llu replayed; loss %.4f -> %.4f\n", graphs ? "on" : "off",
           (unsigned long long)captures, (unsigned long long)replays, (double)losses[0], (double)losses[STEPS - 1]);
    if (graphs) {
        /* Steps 0, 1 warm up, 2, 3 capture (one graph per input buffer),
         * 12 is short (outside), 13 back to the full batch (outside: the
         * plan switches back), the rest replay. */
        CHECK(captures == 2, "%llu graphs captured, want 2", (unsigned long long)captures);
        CHECK(replays >= 12, "%llu replays, want at least 12", (unsigned long long)replays);
    } else {
        CHECK(captures == 0 && replays == 0, "graphs off, yet %llu captured", (unsigned long long)captures);
    }
    size_t n = stk_model_state_size(m), w = 0;
    char *buf = malloc(n);
    CHECK(buf, "out of memory");
    STK(stk_model_state_save_mem(m, buf, n, &w));
    *size = w;
    stk_sched_destroy(&sched);
    stk_optim_destroy(&opt);
    stk_model_destroy(&m);
    return buf;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    int unavailable = gpu_test_unavailable();
    if (unavailable)
        return unavailable;
    model_text = gpu_test_model_text();
    float *dev_x[2] = {NULL, NULL};
    for (int i = 0; i < 2; i++)
        CU(cudaMalloc((void **)&dev_x[i], (size_t)BATCH * IMG * sizeof(float)));
    float la[STEPS], lb[STEPS];
    size_t na = 0, nb = 0;
    char *a = run(0, dev_x, la, &na);
    char *b = run(1, dev_x, lb, &nb);
    CHECK(na == nb, "the two states differ in size: %zu, %zu", na, nb);
    for (int s = 0; s < STEPS; s++)
        CHECK(!memcmp(&la[s], &lb[s], sizeof(float)), "step %d: loss %.9g without graphs, %.9g with", s,
              (double)la[s], (double)lb[s]);
    size_t first = na;
    for (size_t i = 0; i < na && first == na; i++)
        if (a[i] != b[i])
            first = i;
    CHECK(first == na, "after %d steps the state with graphs differs from byte %zu of %zu", STEPS, first, na);
    CHECK(la[STEPS - 1] < la[0], "the runs did not learn: loss %.4f -> %.4f", (double)la[0], (double)la[STEPS - 1]);
    printf("ok: %d steps with and without CUDA graphs: the same %zu bytes of state and the same losses\n", STEPS, na);
    free(a);
    free(b);
    cudaFree(dev_x[0]);
    cudaFree(dev_x[1]);
    free(model_text);
    return 0;
}
