/* SPDX-License-Identifier: MIT */
/* Eval-mode fusion of conv2d + batchnorm2d (+ relu) on the CUDA backend
 * (a cuDNN graph convolution -> MUL s -> ADD t -> RELU_FWD, cuda_conv.c):
 *
 *  chain   one chain (with and without bias and relu, strided, grouped,
 *          batch 1 and odd sizes) in fp32, bf16 and fp16 under each cuDNN
 *          policy: running statistics from training forwards, batchnorm
 *          parameters far from 1 and 0, then the fused eval output
 *          against the same model's unfused one. Either the fused op ran
 *          (stk_model_fusion_stats, the convolution's own output then
 *          unreadable) and the outputs agree within the bound below, or
 *          cuDNN planned no engine for the fused graph: then the chain
 *          fell back, the reason is printed (and in the summary), and the
 *          outputs are the unfused ones bit for bit. STK_REQUIRE_FUSION=1
 *          makes a fallback a failure.
 *  fmnist  the reference CNN, two models from one seed under the
 *          deterministic policy, fusion on and off, whole training steps
 *          as CUDA graphs with fused eval forwards between them: the
 *          training losses and the state bit for bit equal, the graphs
 *          replayed after the evals, the eval logits close.
 *
 * The bound per output, with s = gamma / sqrt(var + eps), A = sum |x| |w|
 * over the output's K products, u = 2^-24: fp32 |fused - unfused| <=
 * |s| A max(2 (K + 2) u, 2^-17) + 8 u (|s| (|b| + |mean|) + |beta| + |y|)
 * (the fused and the unfused convolution may be different engines, whose
 * sums differ; 2^-17 leaves room for FFT and Winograd engines); under
 * bf16 / fp16 (unit roundoff h) add h (|y| + 2 |s| A): the fused graph
 * rounds y to the half type where the unfused path rounds the
 * convolution's output.
 *
 * Without a GPU it exits 77 (STK_REQUIRE_GPU=1: a failure). Argument:
 * chain or fmnist (default: both). */
#define _GNU_SOURCE
#include "stoker/engine.h"
#include "stoker/optim.h"

#include "gpu_test.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct chain {
    const char *what;
    int64_t n, ic, ih, iw, oc, k, stride, pad, groups;
    int bias, relu;
} chain_t;

static int fused_runs, fallbacks;

static float urand(stk_rng_t *r, float lo, float hi)
{
    return lo + (hi - lo) * stk_rng_uniform(r);
}

/* The model's whole parameter or buffer arena on the host (malloc'd). */
static float *arena(stk_model_t *m, int buffers, size_t *n)
{
    float *dev = buffers ? stk_model_buffers(m, n) : stk_model_params(m, n);
    float *h = malloc((*n ? *n : 1) * sizeof(float));
    CHECK(h, "out of memory");
    CU(cudaMemcpy(h, dev, *n * sizeof(float), cudaMemcpyDeviceToHost));
    return h;
}

static const stk_param_info_t *find(stk_model_t *m, int buffers, const char *name)
{
    static stk_param_info_t pi;
    size_t n = buffers ? stk_model_num_buffers(m) : stk_model_num_params(m);
    for (size_t i = 0; i < n; i++) {
        STK(buffers ? stk_model_buffer_info(m, i, &pi) : stk_model_param_info(m, i, &pi));
        if (!strcmp(pi.name, name))
            return &pi;
    }
    CHECK(0, "no tensor %s", name);
    return NULL;
}

/* Eval output of layer `last` (device, plain) into host out. */
static void eval_out(stk_model_t *m, const float *dev_x, int64_t n, const char *last, float *out, size_t numel)
{
    STK(stk_model_forward(m, dev_x, n, NULL, NULL, NULL));
    stk_tensor_t t;
    STK(stk_model_output(m, last, &t));
    CHECK((size_t)stk_tensor_numel(&t) == numel, "%s: %lld elements, want %zu", last,
          (long long)stk_tensor_numel(&t), numel);
    CU(cudaMemcpy(out, t.data, numel * sizeof(float), cudaMemcpyDeviceToHost));
}

static void run_chain(const chain_t *c, stk_precision_t prec, stk_cudnn_policy_t policy)
{
    char text[512];
    snprintf(text, sizeof(text),
             "input name=x shape=%lld,%lld,%lld\n"
             "conv2d name=conv out=%lld kernel=%lld stride=%lld pad=%lld groups=%lld bias=%d\n"
             "batchnorm2d name=bn\n%s",
             (long long)c->ic, (long long)c->ih, (long long)c->iw, (long long)c->oc, (long long)c->k,
             (long long)c->stride, (long long)c->pad, (long long)c->groups, c->bias, c->relu ? "relu name=act\n" : "");
    stk_model_config_t cfg;
    stk_model_config_default(&cfg);
    cfg.batch_size = c->n;
    cfg.seed = 3;
    cfg.device = STK_DEVICE_CUDA;
    cfg.precision = prec;
    cfg.cudnn_policy = policy;
    stk_model_t *m = gpu_test_model(text, c->what, &cfg);
    const char *last = c->relu ? "act" : "bn";
    int64_t oh = (c->ih + 2 * c->pad - c->k) / c->stride + 1, ow = (c->iw + 2 * c->pad - c->k) / c->stride + 1;
    size_t nx = (size_t)(c->n * c->ic * c->ih * c->iw), ny = (size_t)(c->n * c->oc * oh * ow);
    float *x = malloc(nx * sizeof(float)), *yf = malloc(ny * sizeof(float)), *yu = malloc(ny * sizeof(float));
    float *dev_x = NULL;
    CHECK(x && yf && yu, "out of memory");
    CU(cudaMalloc((void **)&dev_x, nx * sizeof(float)));
    stk_rng_t r;
    stk_rng_init(&r, 5, (uint64_t)prec * 3 + (uint64_t)policy);
    /* batchnorm parameters far from 1, 0 */
    size_t np;
    float *p = arena(m, 0, &np);
    const stk_param_info_t *gi = find(m, 0, "bn.weight");
    size_t goff = gi->offset, gcount = gi->count, boff = find(m, 0, "bn.bias")->offset;
    for (size_t i = 0; i < gcount; i++) {
        p[goff + i] = urand(&r, -1.5f, 1.5f);
        p[boff + i] = urand(&r, -0.5f, 0.5f);
    }
    CU(cudaMemcpy(stk_model_params(m, NULL), p, np * sizeof(float), cudaMemcpyHostToDevice));
    for (int s = 0; s < 3; s++) {
        for (size_t i = 0; i < nx; i++)
            x[i] = urand(&r, -0.5f, 2.5f);
        CU(cudaMemcpy(dev_x, x, nx * sizeof(float), cudaMemcpyHostToDevice));
        STK(stk_model_forward(m, dev_x, c->n, NULL, NULL, NULL));
    }
    stk_model_set_train(m, 0);
    for (size_t i = 0; i < nx; i++)
        x[i] = urand(&r, -1.0f, 3.0f);
    CU(cudaMemcpy(dev_x, x, nx * sizeof(float), cudaMemcpyHostToDevice));
    eval_out(m, dev_x, c->n, last, yf, ny);
    stk_fusion_stats_t fs;
    STK(stk_model_fusion_stats(m, &fs));
    CHECK(fs.chains == 1 && fs.fused + fs.fallbacks == 1, "%s: chains %d, fused %d, fallbacks %d", c->what,
          fs.chains, fs.fused, fs.fallbacks);
    stk_tensor_t t;
    int conv_rc = stk_model_output(m, "conv", &t);
    CHECK(fs.fused ? conv_rc == STK_ESTATE : conv_rc == 0, "%s: reading the convolution's output gave %d",
          c->what, conv_rc);
    char summary[8192];
    stk_model_summary(m, summary, sizeof(summary));
    const char *line = strstr(summary, "conv+bn");
    char shown[512] = "";
    if (line)
        snprintf(shown, sizeof(shown), "%.*s", (int)strcspn(line, "\n"), line);
    printf("%s, %s, %s: %s\n", c->what, stk_precision_name(prec), stk_cudnn_policy_name(policy), shown);
    stk_model_set_fusion(m, 0);
    eval_out(m, dev_x, c->n, last, yu, ny);
    if (!fs.fused) {
        fallbacks++;
        const char *req = getenv("STK_REQUIRE_FUSION");
        CHECK(!(req && !strcmp(req, "1")), "%s: fell back (STK_REQUIRE_FUSION=1): %s", c->what, shown);
        CHECK(!memcmp(yf, yu, ny * sizeof(float)), "%s: a fallback differs from the unfused output", c->what);
    } else {
        fused_runs++;
        size_t nall, nb;
        float *pa = arena(m, 0, &nall), *bu = arena(m, 1, &nb);
        const float *w = pa + find(m, 0, "conv.weight")->offset;
        const float *b = c->bias ? pa + find(m, 0, "conv.bias")->offset : NULL;
        const float *g = pa + find(m, 0, "bn.weight")->offset, *be = pa + find(m, 0, "bn.bias")->offset;
        const float *mu = bu + find(m, 1, "bn.running_mean")->offset, *var = bu + find(m, 1, "bn.running_var")->offset;
        const double u = ldexp(1.0, -24);
        double h = prec == STK_PRECISION_BF16 ? ldexp(1.0, -8) : prec == STK_PRECISION_FP16 ? ldexp(1.0, -11) : 0.0;
        int64_t icg = c->ic / c->groups, ocg = c->oc / c->groups, K = icg * c->k * c->k;
        double worst = 0.0;
        for (int64_t n = 0; n < c->n; n++)
            for (int64_t o = 0; o < c->oc; o++) {
                double s = fabs((double)g[o] / sqrt((double)var[o] + 1e-5));
                for (int64_t yy = 0; yy < oh; yy++)
                    for (int64_t xx = 0; xx < ow; xx++) {
                        double A = 0.0;
                        for (int64_t ci = 0; ci < icg; ci++)
                            for (int64_t ky = 0; ky < c->k; ky++)
                                for (int64_t kx = 0; kx < c->k; kx++) {
                                    int64_t iy = yy * c->stride - c->pad + ky, ix = xx * c->stride - c->pad + kx;
                                    if (iy < 0 || iy >= c->ih || ix < 0 || ix >= c->iw)
                                        continue;
                                    A += fabs((double)x[((n * c->ic + (o / ocg) * icg + ci) * c->ih + iy) * c->iw +
                                                        ix]) *
                                         fabs((double)w[((o * icg + ci) * c->k + ky) * c->k + kx]);
                                }
                        size_t at = (size_t)(((n * c->oc + o) * oh + yy) * ow + xx);
                        double conv = fmax(2.0 * (double)(K + 2) * u, ldexp(1.0, -17));
                        double tol = s * A * conv +
                                     8.0 * u * (s * (fabs(b ? b[o] : 0.0) + fabs(mu[o])) + fabs(be[o]) + fabs(yu[at])) +
                                     h * (fabs(yu[at]) + 2.0 * s * A);
                        double err = fabs((double)yf[at] - (double)yu[at]);
                        CHECK(err <= tol, "%s (%s): element %zu: fused %.9g, unfused %.9g, over the bound %.3g",
                              c->what, stk_precision_name(prec), at, (double)yf[at], (double)yu[at], tol);
                        if (tol > 0 && err / tol > worst)
                            worst = err / tol;
                        if (c->relu)
                            CHECK(yf[at] >= 0.0f, "%s: fused relu output %g", c->what, (double)yf[at]);
                    }
            }
        printf("  fused: worst error %.3f of the bound\n", worst);
        free(pa);
        free(bu);
    }
    free(p);
    free(x);
    free(yf);
    free(yu);
    cudaFree(dev_x);
    stk_model_destroy(&m);
}

static void part_chain(void)
{
    static const chain_t chains[] = {
        {"bias+relu 3x3 pad 1, 3->16, batch 3, 9x7", 3, 3, 9, 7, 16, 3, 1, 1, 1, 1, 1},
        {"no bias, no relu, stride 2, 5->6, batch 1, 11x10", 1, 5, 11, 10, 6, 3, 2, 1, 1, 0, 0},
        {"bias+relu, groups 2, 4->8, batch 2, 13x11", 2, 4, 13, 11, 8, 3, 1, 1, 2, 1, 1},
    };
    const stk_precision_t precs[3] = {STK_PRECISION_FP32, STK_PRECISION_BF16, STK_PRECISION_FP16};
    const stk_cudnn_policy_t pols[3] = {STK_CUDNN_HEURISTIC, STK_CUDNN_DETERMINISTIC, STK_CUDNN_BENCHMARK};
    for (size_t i = 0; i < sizeof(chains) / sizeof(chains[0]); i++)
        for (int p = 0; p < 3; p++)
            for (int q = 0; q < 3; q++)
                run_chain(&chains[i], precs[p], pols[q]);
    printf("chain: %d runs fused, %d fell back\n", fused_runs, fallbacks);
}

#define BATCH 16
#define STEPS 8

/* Training steps as CUDA graphs with eval forwards between (fusion on or
 * off); the losses, the eval logits after each step, the state. */
static char *fmnist_run(const char *text, int fusion, float *dev_x[2], float *losses, float *logits, size_t *size,
                        stk_fusion_stats_t *fs)
{
    stk_model_config_t cfg;
    stk_model_config_default(&cfg);
    cfg.batch_size = BATCH;
    cfg.seed = 1;
    cfg.device = STK_DEVICE_CUDA;
    cfg.cudnn_policy = STK_CUDNN_DETERMINISTIC;
    cfg.no_fusion = !fusion;
    stk_model_t *m = gpu_test_model(text, "fmnist-cnn.model", &cfg);
    stk_optim_t *opt = NULL;
    STK(stk_optim_create_for_model(&opt, m, "sgd:lr=0.02,momentum=0.9"));
    STK(stk_model_set_cuda_graph(m, 1));
    static float x[BATCH * GPU_TEST_IMG];
    int64_t labels[BATCH];
    uint64_t replays_before = 0;
    for (int s = 0; s < STEPS; s++) {
        gpu_test_batch(s, BATCH, x, labels);
        float *dev = dev_x[s % 2];
        CU(cudaMemcpy(dev, x, sizeof(x), cudaMemcpyHostToDevice));
        stk_tensor_t in, tg;
        gpu_test_tensors(dev, labels, BATCH, &in, &tg);
        stk_model_set_train(m, 1);
        STK(stk_model_train_step(m, opt, &in, &tg, &losses[s]));
        if (s == STEPS / 2)
            stk_model_cuda_graph(m, NULL, &replays_before);
        stk_model_set_train(m, 0);
        float loss;
        STK(stk_model_forward(m, dev, BATCH, labels, NULL, &loss));
        stk_tensor_t t;
        STK(stk_model_output(m, "fc2", &t));
        CU(cudaMemcpy(logits + (size_t)s * BATCH * 10, t.data, (size_t)BATCH * 10 * sizeof(float),
                      cudaMemcpyDeviceToHost));
        STK(stk_model_fusion_stats(m, fs));
    }
    uint64_t captures = 0, replays = 0;
    stk_model_cuda_graph(m, &captures, &replays);
    printf("fusion %s: %llu graphs captured, %llu replays (%llu after the evals began); eval: %d of %d chains fused, "
           "%d fell back\n",
           fusion ? "on" : "off", (unsigned long long)captures, (unsigned long long)replays,
           (unsigned long long)(replays - replays_before), fs->fused, fs->chains, fs->fallbacks);
    CHECK(captures >= 1 && replays > replays_before, "graphs stopped replaying between eval forwards");
    if (fusion && fs->fallbacks) {
        stk_model_summary_print(m, stdout);
        const char *req = getenv("STK_REQUIRE_FUSION");
        CHECK(!(req && !strcmp(req, "1")), "fmnist: %d chains fell back (STK_REQUIRE_FUSION=1)", fs->fallbacks);
    }
    size_t n = stk_model_state_size(m), w = 0;
    char *buf = malloc(n);
    CHECK(buf, "out of memory");
    STK(stk_model_state_save_mem(m, buf, n, &w));
    *size = w;
    stk_optim_destroy(&opt);
    stk_model_destroy(&m);
    return buf;
}

static void part_fmnist(void)
{
    char *text = gpu_test_model_text();
    float *dev_x[2] = {NULL, NULL};
    for (int i = 0; i < 2; i++)
        CU(cudaMalloc((void **)&dev_x[i], (size_t)BATCH * GPU_TEST_IMG * sizeof(float)));
    float la[STEPS], lb[STEPS];
    size_t nz = (size_t)STEPS * BATCH * 10;
    float *za = malloc(nz * sizeof(float)), *zb = malloc(nz * sizeof(float));
    CHECK(za && zb, "out of memory");
    size_t na = 0, nb = 0;
    stk_fusion_stats_t fa, fb;
    char *a = fmnist_run(text, 1, dev_x, la, za, &na, &fa);
    char *b = fmnist_run(text, 0, dev_x, lb, zb, &nb, &fb);
    CHECK(fa.chains == 4 && fa.fused + fa.fallbacks == 4 && fb.fused == 0, "fusion stats: %d/%d/%d and %d",
          fa.chains, fa.fused, fa.fallbacks, fb.fused);
    for (int s = 0; s < STEPS; s++)
        CHECK(!memcmp(&la[s], &lb[s], sizeof(float)), "step %d: training loss %.9g fused, %.9g unfused", s,
              (double)la[s], (double)lb[s]);
    CHECK(na == nb && !memcmp(a, b, na), "the trained states differ with fusion on and off");
    double big = 0.0, err = 0.0;
    for (size_t i = 0; i < nz; i++) {
        big = fmax(big, fabs(zb[i]));
        err = fmax(err, fabs((double)za[i] - zb[i]));
    }
    printf("fmnist: eval logits differ by %.3g at most (largest %.3g)\n", err, big);
    CHECK(err <= 1e-3 * big, "fused eval logits differ by %.3g (largest %.3g)", err, big);
    free(a);
    free(b);
    free(za);
    free(zb);
    free(text);
    cudaFree(dev_x[0]);
    cudaFree(dev_x[1]);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    int unavailable = gpu_test_unavailable();
    if (unavailable)
        return unavailable;
    const char *part = argc > 1 ? argv[1] : "all";
    CHECK(!strcmp(part, "all") || !strcmp(part, "chain") || !strcmp(part, "fmnist"), "unknown part %s", part);
    if (strcmp(part, "fmnist"))
        part_chain();
    if (strcmp(part, "chain"))
        part_fmnist();
    printf("cuda fusion: ok\n");
    return 0;
}
