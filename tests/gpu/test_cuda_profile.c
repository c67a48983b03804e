/* SPDX-License-Identifier: MIT */
/* Per-layer GPU time (engine/profile.c): 8 training steps of the
 * reference CNN on the GPU with profiling on, CUDA graphs asked for. The
 * profile must say its clock is the GPU's; no step may run as a graph
 * (a replay has no layers to time); every layer has a non-negative time
 * and one forward per step; and the layers' times add up to no more than
 * the passes' spans, which add up to no more than the steps' own time,
 * taken with events of this test's around each step on the model's
 * stream. Without a GPU it exits 77 (STK_REQUIRE_GPU=1: a failure). */
#define _GNU_SOURCE
#include "engine/model.h"
#include "stoker/engine.h"
#include "stoker/optim.h"

#include "gpu_test.h"

#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BATCH 64
#define STEPS 8
#define IMG GPU_TEST_IMG

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    int skip = gpu_test_unavailable();
    if (skip)
        return skip;
    char *text = gpu_test_model_text();
    stk_model_config_t cfg;
    stk_model_config_default(&cfg);
    cfg.batch_size = BATCH;
    cfg.seed = 1;
    cfg.device = STK_DEVICE_CUDA;
    stk_model_t *m = gpu_test_model(text, "fmnist-cnn.model", &cfg);
    stk_optim_t *opt = NULL;
    STK(stk_optim_create_for_model(&opt, m, "sgd:lr=0.02,momentum=0.9"));
    STK(stk_model_set_cuda_graph(m, 1));
    stk_model_set_profiling(m, 1);
    cudaStream_t stream = m->be.iface->stream(m->be.ctx);
    CHECK(stream, "the CUDA backend names no stream");
    cudaEvent_t ev[2];
    CU(cudaEventCreate(&ev[0]));
    CU(cudaEventCreate(&ev[1]));
    float *dev = NULL;
    CU(cudaMalloc((void **)&dev, sizeof(float) * BATCH * IMG));
    static float x[BATCH * IMG];
    int64_t labels[BATCH];
    double steps_s = 0.0;
    for (int s = 0; s < STEPS; s++) {
        gpu_test_batch(s, BATCH, x, labels);
        CU(cudaMemcpy(dev, x, sizeof(x), cudaMemcpyHostToDevice));
        stk_tensor_t in, tg;
        gpu_test_tensors(dev, labels, BATCH, &in, &tg);
        float loss;
        CU(cudaEventRecord(ev[0], stream));
        STK(stk_model_train_step(m, opt, &in, &tg, &loss));
        CU(cudaEventRecord(ev[1], stream));
        CU(cudaEventSynchronize(ev[1]));
        float ms = 0.0f;
        CU(cudaEventElapsedTime(&ms, ev[0], ev[1]));
        steps_s += 1e-3 * ms;
    }
    uint64_t captures = 0, replays = 0;
    stk_model_cuda_graph(m, &captures, &replays);
    CHECK(captures == 0 && replays == 0, "profiled steps ran as graphs: %llu captured, %llu replayed",
          (unsigned long long)captures, (unsigned long long)replays);
    stk_profile_info_t pi;
    STK(stk_model_profile_info(m, &pi));
    CHECK(pi.clock == STK_PROFILE_DEVICE, "the profile's clock is %s", stk_profile_clock_name(pi.clock));
    CHECK(pi.passes == 2 * STEPS, "%llu passes timed, want %d", (unsigned long long)pi.passes, 2 * STEPS);
    double layers_s = 0.0;
    size_t nl = stk_model_num_layers(m);
    for (size_t i = 0; i < nl; i++) {
        stk_layer_stats_t st;
        STK(stk_model_layer_stats(m, i, &st));
        CHECK(st.forward_s >= 0.0 && st.backward_s >= 0.0, "layer %s: %g s forward, %g s backward", st.name,
              st.forward_s, st.backward_s);
        CHECK(st.forward_calls == STEPS, "layer %s: %llu forwards timed", st.name,
              (unsigned long long)st.forward_calls);
        layers_s += st.forward_s + st.backward_s;
    }
    /* Event times resolve to about half a microsecond: a little slack per
     * interval added up. */
    double slack = 1e-6 * (double)(2 * nl * STEPS);
    printf("layers %.3f ms, passes %.3f ms, steps %.3f ms (GPU time over %d steps)\n", 1e3 * layers_s,
           1e3 * pi.span_s, 1e3 * steps_s, STEPS);
    CHECK(layers_s > 0.0 && layers_s <= pi.span_s + slack, "layers %g s, their passes %g s", layers_s, pi.span_s);
    CHECK(pi.span_s <= steps_s + slack, "passes %g s, the steps around them %g s", pi.span_s, steps_s);
    size_t need = stk_model_stats_format(m, NULL, 0);
    char *table = malloc(need + 1);
    CHECK(table, "out of memory");
    stk_model_stats_format(m, table, need + 1);
    CHECK(strstr(table, "per-layer GPU time"), "the table does not name its clock:\n%s", table);
    fputs(table, stdout);
    free(table);
    /* Profiling off: the next steps may be graphs again. */
    stk_model_set_profiling(m, 0);
    for (int s = 0; s < 4; s++) {
        stk_tensor_t in, tg;
        gpu_test_tensors(dev, labels, BATCH, &in, &tg);
        float loss;
        STK(stk_model_train_step(m, opt, &in, &tg, &loss));
    }
    stk_model_cuda_graph(m, &captures, &replays);
    CHECK(captures == 1, "%llu graphs captured after profiling stopped, want 1", (unsigned long long)captures);
    CU(cudaFree(dev));
    cudaEventDestroy(ev[0]);
    cudaEventDestroy(ev[1]);
    stk_optim_destroy(&opt);
    stk_model_destroy(&m);
    free(text);
    printf("cuda_profile: ok\n");
    return 0;
}
