/* SPDX-License-Identifier: MIT */
/* Engine benchmark: forward + backward images/s of a model file on random
 * data (no optimizer step, as tools/bench_engine_torch.py), with per-layer
 * timing. --export also writes the state, an input batch and its eval-mode
 * logits, for tools/load_safetensors.py. */
#include <stoker/engine.h>
#include "tool_clock.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int write_raw(const char *path, const void *p, size_t bytes)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, bytes, f) != bytes) {
        if (f)
            fclose(f);
        return -1;
    }
    return fclose(f);
}

static void usage(void)
{
    fprintf(stderr, "usage: stoker-enginebench [--model FILE] [--batch N] [--threads N] [--iters N] "
                    "[--warmup N] [--profile] [--summary] [--export PREFIX]\n");
}

int main(int argc, char **argv)
{
    const char *model = "models/fmnist-cnn.model", *export = NULL;
    int batch = 128, threads = 2, iters = 20, warmup = 3, profile = 0, summary = 0;
    /* OpenMP threads that wait passively unless OMP_WAIT_POLICY says
     * otherwise (it executes us again once). */
    if (stk_engine_passive_wait(argv) < 0)
        fprintf(stderr, "stoker-enginebench: %s\n", stk_error_message());
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"batch", required_argument, 0, 'b'},
        {"threads", required_argument, 0, 't'}, {"iters", required_argument, 0, 'i'},
        {"warmup", required_argument, 0, 'w'}, {"profile", no_argument, 0, 'p'},
        {"summary", no_argument, 0, 's'}, {"export", required_argument, 0, 'e'},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "m:b:t:i:w:pse:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'b': batch = atoi(optarg); break;
        case 't': threads = atoi(optarg); break;
        case 'i': iters = atoi(optarg); break;
        case 'w': warmup = atoi(optarg); break;
        case 'p': profile = 1; break;
        case 's': summary = 1; break;
        case 'e': export = optarg; break;
        default: usage(); return c == 'h' ? 0 : 2;
        }
    }
    if (batch < 1 || threads < 1 || iters < 1 || warmup < 0) {
        usage();
        return 2;
    }
    stk_model_config_t cfg;
    stk_model_config_default(&cfg);
    cfg.batch_size = batch;
    cfg.threads = threads;
    cfg.seed = 1;
    stk_model_t *m = NULL;
    if (stk_model_create_from_file(&m, model, &cfg) < 0) {
        fprintf(stderr, "stoker-enginebench: %s\n", stk_error_message());
        return 1;
    }
    if (summary)
        stk_model_summary_print(m, stdout);
    int64_t shape[4];
    stk_model_input_shape(m, shape);
    size_t nx = (size_t)(shape[0] * shape[1] * shape[2] * shape[3]);
    float *x = malloc(nx * sizeof(float));
    int64_t *y = malloc((size_t)batch * sizeof(int64_t));
    int64_t k = stk_model_num_classes(m);
    stk_rng_t r;
    stk_rng_init(&r, 7, 0);
    for (size_t i = 0; i < nx; i++)
        x[i] = stk_rng_uniform(&r);
    for (int i = 0; i < batch; i++)
        y[i] = (int64_t)stk_rng_below(&r, (uint64_t)(k > 0 ? k : 1));
    float loss = 0.0f;
    double t0 = 0.0;
    int rc = 0;
    for (int it = 0; it < warmup + iters && rc == 0; it++) {
        if (it == warmup) {
            stk_model_set_profiling(m, profile);
            stk_model_reset_stats(m);
            t0 = tool_now_s();
        }
        stk_model_set_step(m, (uint64_t)it);
        stk_model_zero_grad(m);
        rc = stk_model_forward(m, x, batch, y, NULL, &loss);
        if (rc == 0)
            rc = stk_model_backward(m);
    }
    if (rc < 0) {
        fprintf(stderr, "stoker-enginebench: %s\n", stk_error_message());
        stk_model_destroy(&m);
        return 1;
    }
    double dt = tool_now_s() - t0;
    static const char *const waits[] = {"spin", "passive", "active"};
    printf("stoker: %s batch %d threads %d (backend max %d, wait %s): %.1f images/s (%.2f ms/iter, loss %.4f)\n",
           model, batch, threads, stk_model_threads(m), waits[stk_engine_wait_policy()], (double)iters * batch / dt,
           1e3 * dt / iters, (double)loss);
    if (profile) {
        size_t n = stk_model_stats_format(m, NULL, 0);
        char *buf = malloc(n + 1);
        stk_model_stats_format(m, buf, n + 1);
        fputs(buf, stdout);
        free(buf);
    }
    if (export) {
        char path[4096];
        size_t nz = (size_t)batch * (size_t)stk_model_num_classes(m);
        float *z = malloc((nz ? nz : 1) * sizeof(float));
        stk_model_set_train(m, 0);
        snprintf(path, sizeof(path), "%s.safetensors", export);
        if (!z || stk_model_state_save(m, path) < 0 || stk_model_forward(m, x, batch, NULL, NULL, NULL) < 0 ||
            stk_model_read_logits(m, z, nz) < 0) {
            fprintf(stderr, "stoker-enginebench: %s\n", stk_error_message());
            rc = 1;
        } else {
            snprintf(path, sizeof(path), "%s.input.f32", export);
            rc |= write_raw(path, x, nx * sizeof(float));
            snprintf(path, sizeof(path), "%s.logits.f32", export);
            rc |= write_raw(path, z, nz * sizeof(float));
            printf("exported %s.{safetensors,input.f32,logits.f32}\n", export);
        }
        free(z);
    }
    free(x);
    free(y);
    stk_model_destroy(&m);
    return rc ? 1 : 0;
}
