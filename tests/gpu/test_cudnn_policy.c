/* SPDX-License-Identifier: MIT */
/* The cuDNN algorithm policy on a GPU, with the reference CNN
 * (models/fmnist-cnn.model, dropout and all: its masks are Philox's):
 *
 *   deterministic: two runs of 50 training steps from the same seed end
 *     with bit-identical parameters, buffers and losses.
 *   benchmark: the first model times its convolution problems (misses)
 *     and later steps time nothing; a second model of the same problems
 *     finds every one in the process's cache (hits only); each problem's
 *     engine is logged once; the cache file written by the first model
 *     serves a new process (hits only, nothing timed), and a corrupt file
 *     is warned about, ignored and rewritten.
 *
 * Argument: "deterministic" or "benchmark" ("child <cache path> <want
 * hits 0|1>" is the new process). Without a GPU it exits 77
 * (STK_REQUIRE_GPU=1: a failure). */
#define _GNU_SOURCE
#include "stoker/engine.h"
#include "stoker/optim.h"

#include "gpu_test.h"

#include <cuda_runtime.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define BATCH 32
#define IMG GPU_TEST_IMG

static const char *const OPTIM = "sgd:lr=0.01,momentum=0.9,nesterov=1,weight_decay=5e-4";

static char *model_text;

/* Log lines: the engine choices counted, warnings kept for the checks. */
static int engine_lines, warnings;
static char last_warning[1024];

static void on_log(stk_log_level_t level, const char *msg, void *user)
{
    (void)user;
    if (level == STK_LOG_INFO && strstr(msg, ": convolution ") && strncmp(msg, "cuDNN ", 6) == 0)
        engine_lines++;
    if (level == STK_LOG_WARN) {
        warnings++;
        snprintf(last_warning, sizeof(last_warning), "%s", msg);
    }
    printf("  log: %s\n", msg);
}

static stk_model_t *make_model(stk_cudnn_policy_t policy, const char *cache)
{
    stk_model_config_t cfg;
    stk_model_config_default(&cfg);
    cfg.batch_size = BATCH;
    cfg.seed = 1;
    cfg.device = STK_DEVICE_CUDA;
    cfg.cudnn_policy = policy;
    cfg.cudnn_cache_path = cache;
    return gpu_test_model(model_text, "fmnist-cnn.model", &cfg);
}

/* One training step on batch s; returns the loss. */
static float train_step(stk_model_t *m, stk_optim_t *opt, float *dev_x, int s)
{
    static float x[BATCH * IMG];
    int64_t labels[BATCH];
    gpu_test_batch(s, BATCH, x, labels);
    CU(cudaMemcpy(dev_x, x, sizeof(x), cudaMemcpyHostToDevice));
    float loss = 0;
    STK(stk_model_forward(m, dev_x, BATCH, labels, NULL, &loss));
    STK(stk_model_backward(m));
    STK(stk_optim_step_model(opt, m));
    stk_model_zero_grad(m);
    return loss;
}

static void print_stats(const char *what, const stk_algo_stats_t *s)
{
    printf("%s: %llu plans, %llu hits, %llu misses, %llu candidates timed, %llu refused\n", what,
           (unsigned long long)s->plans, (unsigned long long)s->hits, (unsigned long long)s->misses,
           (unsigned long long)s->timed, (unsigned long long)s->skipped);
}

/* ------------------------------------------------------- deterministic */

#define DET_STEPS 50

static char *run_deterministic(float *dev_x, float *losses, size_t *size)
{
    stk_model_t *m = make_model(STK_CUDNN_DETERMINISTIC, NULL);
    stk_optim_t *opt = NULL;
    STK(stk_optim_create_for_model(&opt, m, OPTIM));
    for (int s = 0; s < DET_STEPS; s++)
        losses[s] = train_step(m, opt, dev_x, s);
    stk_algo_stats_t st;
    STK(stk_model_algo_stats(m, &st));
    print_stats("deterministic", &st);
    CHECK(st.plans >= 12 && st.hits == 0 && st.misses == 0 && st.timed == 0,
          "deterministic: want 12 or more plans (4 convolutions, 3 directions), nothing cached or timed");
    size_t n = stk_model_state_size(m), w = 0;
    char *buf = malloc(n);
    CHECK(buf, "out of memory");
    STK(stk_model_state_save_mem(m, buf, n, &w));
    *size = w;
    stk_optim_destroy(&opt);
    stk_model_destroy(&m);
    return buf;
}

static int test_deterministic(void)
{
    float *dev_x = NULL;
    CU(cudaMalloc((void **)&dev_x, (size_t)BATCH * IMG * sizeof(float)));
    float la[DET_STEPS], lb[DET_STEPS];
    size_t na = 0, nb = 0;
    char *a = run_deterministic(dev_x, la, &na);
    char *b = run_deterministic(dev_x, lb, &nb);
    CHECK(na == nb, "the two states differ in size: %zu, %zu", na, nb);
    for (int s = 0; s < DET_STEPS; s++)
        CHECK(!memcmp(&la[s], &lb[s], sizeof(float)), "step %d: loss %.9g then %.9g", s, (double)la[s],
              (double)lb[s]);
    size_t first = na;
    for (size_t i = 0; i < na && first == na; i++)
        if (a[i] != b[i])
            first = i;
    CHECK(first == na, "the parameters after %d steps differ from byte %zu of %zu of the saved state", DET_STEPS,
          first, na);
    CHECK(la[DET_STEPS - 1] < la[0], "the runs did not learn: loss %.4f -> %.4f", (double)la[0],
          (double)la[DET_STEPS - 1]);
    printf("ok: two deterministic runs of %d steps: the same %zu bytes of state, the same losses (%.4f -> %.4f)\n",
           DET_STEPS, na, (double)la[0], (double)la[DET_STEPS - 1]);
    free(a);
    free(b);
    cudaFree(dev_x);
    return 0;
}

/* ----------------------------------------------------------- benchmark */

/* Runs this program as "child cache want_hits" in a new process. */
static int spawn_child(const char *self, const char *cache, int want_hits)
{
    char hits[4];
    snprintf(hits, sizeof(hits), "%d", want_hits);
    char *argv[] = {(char *)self, (char *)"child", (char *)cache, hits, NULL};
    pid_t pid;
    CHECK(posix_spawn(&pid, "/proc/self/exe", NULL, NULL, argv, environ) == 0, "cannot start a child");
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

static int child(const char *cache, int want_hits)
{
    stk_log_set_callback(on_log, NULL, STK_LOG_INFO);
    stk_model_t *m = make_model(STK_CUDNN_BENCHMARK, cache);
    stk_algo_stats_t st;
    STK(stk_model_algo_stats(m, &st));
    print_stats("new process", &st);
    if (want_hits) {
        CHECK(st.plans >= 12 && st.hits == st.plans && st.misses == 0,
              "a new process with the cache file: every plan should come from it");
        CHECK(warnings == 0, "a good cache file gave a warning: %s", last_warning);
    } else {
        CHECK(st.misses >= 1 && st.hits + st.misses == st.plans, "a corrupt cache: everything is timed again");
        CHECK(warnings >= 1 && strstr(last_warning, cache) && strstr(last_warning, "ignored"),
              "a corrupt cache file should be warned about, naming it");
    }
    stk_model_destroy(&m);
    return 0;
}

static int test_benchmark(const char *self)
{
    char dir[] = "/tmp/stk-cudnn-XXXXXX";
    CHECK(mkdtemp(dir), "mkdtemp");
    char cache[256], corrupt[256];
    snprintf(cache, sizeof(cache), "%s/algo.cache", dir);
    snprintf(corrupt, sizeof(corrupt), "%s/corrupt.cache", dir);
    stk_log_set_callback(on_log, NULL, STK_LOG_INFO);

    float *dev_x = NULL;
    CU(cudaMalloc((void **)&dev_x, (size_t)BATCH * IMG * sizeof(float)));
    stk_model_t *m = make_model(STK_CUDNN_BENCHMARK, cache);
    stk_optim_t *opt = NULL;
    STK(stk_optim_create_for_model(&opt, m, OPTIM));
    stk_algo_stats_t st, after_first;
    train_step(m, opt, dev_x, 0);
    STK(stk_model_algo_stats(m, &after_first));
    print_stats("after step 1", &after_first);
    CHECK(after_first.plans >= 12 && after_first.misses >= 1 && after_first.hits + after_first.misses ==
                                                                    after_first.plans,
          "the first step plans 12 or more convolutions, timing at least one problem");
    /* Each timed problem's engine logged once: repeated problems (a hit
     * of the same model) log nothing new. */
    CHECK(engine_lines == (int)after_first.misses, "%d engine lines logged for %llu problems timed", engine_lines,
          (unsigned long long)after_first.misses);
    for (int s = 1; s < 10; s++) {
        train_step(m, opt, dev_x, s);
        STK(stk_model_algo_stats(m, &st));
        CHECK(st.misses == after_first.misses && st.timed == after_first.timed,
              "step %d timed again (%llu misses, %llu after the first step)", s + 1,
              (unsigned long long)st.misses, (unsigned long long)after_first.misses);
    }
    /* A second model of the same problems: every plan a hit. */
    stk_model_t *m2 = make_model(STK_CUDNN_BENCHMARK, cache);
    STK(stk_model_algo_stats(m2, &st));
    print_stats("second model", &st);
    CHECK(st.plans == after_first.plans && st.hits == st.plans && st.misses == 0 && st.timed == 0,
          "the second model should find every problem in the cache");
    CHECK(engine_lines == (int)after_first.misses, "cache hits logged their engines again");
    stk_optim_t *opt2 = NULL;
    STK(stk_optim_create_for_model(&opt2, m2, OPTIM));
    float loss = train_step(m2, opt2, dev_x, 0);
    CHECK(loss == loss, "the second model's loss is NaN");
    stk_optim_destroy(&opt2);
    stk_model_destroy(&m2);

    /* The file serves a new process. */
    FILE *f = fopen(cache, "r");
    CHECK(f, "no cache file %s was written", cache);
    char line[256] = "";
    CHECK(fgets(line, sizeof(line), f), "empty cache file");
    fclose(f);
    CHECK(!strncmp(line, "stoker-algo-cache 1 cudnn-", 26), "cache header: %s", line);
    CHECK(spawn_child(self, cache, 1) == 0, "the new process with the cache file failed");

    /* A corrupt file (the right header, then a bad line): warned about,
     * timed again, rewritten whole. */
    f = fopen(corrupt, "w");
    CHECK(f, "cannot write %s", corrupt);
    fprintf(f, "%snot an entry\n", line);
    fclose(f);
    CHECK(spawn_child(self, corrupt, 0) == 0, "the new process with a corrupt cache file failed");
    f = fopen(corrupt, "r");
    char again[256] = "", second[512] = "";
    CHECK(f && fgets(again, sizeof(again), f), "the corrupt cache was not rewritten");
    int entries = 0;
    while (fgets(second, sizeof(second), f))
        entries += second[0] != '#';
    fclose(f);
    CHECK(!strcmp(again, line) && entries >= 1, "the corrupt cache was not rewritten (%d entries)", entries);

    printf("ok: benchmark: %llu problems timed in step 1, none after; a second model and a new process hit the "
           "cache for all %llu plans\n",
           (unsigned long long)after_first.misses, (unsigned long long)after_first.plans);
    stk_optim_destroy(&opt);
    stk_model_destroy(&m);
    cudaFree(dev_x);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "rm");
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    CHECK(argc >= 2, "usage: %s deterministic|benchmark", argv[0]);
    int unavailable = gpu_test_unavailable();
    if (unavailable)
        return unavailable;
    model_text = gpu_test_model_text();
    int rc = 1;
    if (!strcmp(argv[1], "deterministic"))
        rc = test_deterministic();
    else if (!strcmp(argv[1], "benchmark"))
        rc = test_benchmark(argv[0]);
    else if (!strcmp(argv[1], "child") && argc == 4)
        rc = child(argv[2], atoi(argv[3]));
    else
        CHECK(0, "unknown mode %s", argv[1]);
    free(model_text);
    return rc;
}
