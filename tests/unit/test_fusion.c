/* SPDX-License-Identifier: MIT */
/* Eval-mode fusion of conv2d + batchnorm2d (+ relu) (layers/conv.c, the
 * backend's conv_fused_* slots): the fused eval output against the
 * unfused one of the same model, within a bound derived from float
 * rounding, for convolutions with and without bias and relu, strided,
 * dilated, grouped, batch 1 and odd sizes, in fp32 and bf16 / fp16,
 * after training changed the parameters and running statistics, across
 * repeated train / eval switches; training bit-identical with fusion on
 * and off; the switches (setter, config, STK_NO_FUSION), the stats, the
 * summary, and reading a fused-away output.
 *
 * The bound. Fused: y_f = relu(c s + t), s = gamma / sqrt(var + eps),
 * t = (b - mean) s + beta; unfused: relu(bn(c + b)). Both compute the
 * convolution sum over the K = in/groups x kh x kw products of an output;
 * the fused fp32 op folds s into the weights, and a kernel may group the
 * sums differently, so its c s differs from the unfused c s by at most
 * (2 K + 1) u |s| A, A = sum |x| |w| (u = 2^-24); the affine parts differ
 * by a few roundings of each term. relu is 1-Lipschitz. So
 *   |y_f - y_u| <= u (|s| (2 (K + 2) A + 8 (|b| + |mean|)) + 8 |beta| + 8 |y_u|).
 * Under bf16 / fp16 both paths run the same convolution kernel on the
 * same rounded inputs and round its output alike before the affine (an
 * op that skipped that rounding would be off by 2^-8 or 2^-11 relative),
 * so the same bound holds. A wrong channel, scale, shift or a missing
 * relu is off by O(1) and fails it by far.
 * shift or a missing relu is off by O(1) and fails this by far. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "stoker/engine.h"

typedef struct chain {
    const char *what;
    int64_t n, ic, ih, iw, oc, k, stride, pad, dil, groups;
    int bias, relu;
} chain_t;

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static float urand(float lo, float hi)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return lo + (hi - lo) * (float)((rng_state >> 40) & 0xffffff) / 16777216.0f;
}

static stk_model_t *make_model(const char *text, int64_t batch, stk_precision_t prec, int no_fusion)
{
    stk_model_builder_t *b = NULL;
    assert_int_equal(stk_model_builder_create(&b), 0);
    if (stk_model_builder_parse(b, text, "test") < 0)
        fail_msg("parse: %s", stk_error_message());
    stk_model_config_t cfg;
    stk_model_config_default(&cfg);
    cfg.batch_size = batch;
    cfg.seed = 7;
    cfg.threads = 1;
    cfg.precision = prec;
    cfg.no_fusion = no_fusion;
    stk_model_t *m = NULL;
    if (stk_model_create(&m, b, &cfg) < 0)
        fail_msg("create: %s", stk_error_message());
    stk_model_builder_destroy(&b);
    return m;
}

static void chain_text(const chain_t *c, char *buf, size_t cap)
{
    snprintf(buf, cap,
             "input name=x shape=%lld,%lld,%lld\n"
             "conv2d name=conv out=%lld kernel=%lld stride=%lld pad=%lld dilation=%lld groups=%lld bias=%d\n"
             "batchnorm2d name=bn\n%s",
             (long long)c->ic, (long long)c->ih, (long long)c->iw, (long long)c->oc, (long long)c->k,
             (long long)c->stride, (long long)c->pad, (long long)c->dil, (long long)c->groups, c->bias,
             c->relu ? "relu name=act\n" : "");
}

/* The named parameter (buffer: 1) of the model, host memory on the CPU. */
static float *tensor(stk_model_t *m, const char *name, int buffer, size_t *count)
{
    size_t n = buffer ? stk_model_num_buffers(m) : stk_model_num_params(m);
    float *base = buffer ? stk_model_buffers(m, NULL) : stk_model_params(m, NULL);
    for (size_t i = 0; i < n; i++) {
        stk_param_info_t pi;
        assert_int_equal(buffer ? stk_model_buffer_info(m, i, &pi) : stk_model_param_info(m, i, &pi), 0);
        if (!strcmp(pi.name, name)) {
            if (count)
                *count = pi.count;
            return base + pi.offset;
        }
    }
    fail_msg("no tensor %s", name);
    return NULL;
}

static void fill(float *v, size_t n, float lo, float hi)
{
    for (size_t i = 0; i < n; i++)
        v[i] = urand(lo, hi);
}

/* Eval output of the last layer (plain NCHW), copied into out. */
static void eval_out(stk_model_t *m, const float *x, int64_t n, const char *last, float *out, size_t numel)
{
    assert_int_equal(stk_model_forward(m, x, n, NULL, NULL, NULL), 0);
    stk_tensor_t t;
    assert_int_equal(stk_model_output(m, last, &t), 0);
    assert_int_equal((size_t)stk_tensor_numel(&t), numel);
    memcpy(out, t.data, numel * sizeof(float));
}

/* Checks fused against unfused with the bound of the file's comment. */
static void check_bound(const chain_t *c, stk_model_t *m, stk_precision_t prec, const float *x, const float *yf,
                        const float *yu)
{
    int64_t oh = (c->ih + 2 * c->pad - c->dil * (c->k - 1) - 1) / c->stride + 1;
    int64_t ow = (c->iw + 2 * c->pad - c->dil * (c->k - 1) - 1) / c->stride + 1;
    int64_t icg = c->ic / c->groups, ocg = c->oc / c->groups, K = icg * c->k * c->k;
    const float *w = tensor(m, "conv.weight", 0, NULL), *b = c->bias ? tensor(m, "conv.bias", 0, NULL) : NULL;
    const float *g = tensor(m, "bn.weight", 0, NULL), *be = tensor(m, "bn.bias", 0, NULL);
    const float *mu = tensor(m, "bn.running_mean", 1, NULL), *var = tensor(m, "bn.running_var", 1, NULL);
    const double u = ldexp(1.0, -24);
    double worst = 0.0;
    for (int64_t n = 0; n < c->n; n++)
        for (int64_t o = 0; o < c->oc; o++) {
            double s = fabs((double)g[o] / sqrt((double)var[o] + 1e-5));
            for (int64_t y = 0; y < oh; y++)
                for (int64_t xo = 0; xo < ow; xo++) {
                    double A = 0.0;
                    int64_t grp = o / ocg;
                    for (int64_t ci = 0; ci < icg; ci++)
                        for (int64_t ky = 0; ky < c->k; ky++)
                            for (int64_t kx = 0; kx < c->k; kx++) {
                                int64_t iy = y * c->stride - c->pad + ky * c->dil;
                                int64_t ix = xo * c->stride - c->pad + kx * c->dil;
                                if (iy < 0 || iy >= c->ih || ix < 0 || ix >= c->iw)
                                    continue;
                                double xv = x[((n * c->ic + grp * icg + ci) * c->ih + iy) * c->iw + ix];
                                A += fabs(xv) * fabs((double)w[((o * icg + ci) * c->k + ky) * c->k + kx]);
                            }
                    size_t at = (size_t)(((n * c->oc + o) * oh + y) * ow + xo);
                    double tol = u * (s * (2.0 * (double)(K + 2) * A + 8.0 * (fabs(b ? b[o] : 0.0) + fabs(mu[o]))) +
                                      8.0 * fabs(be[o]) + 8.0 * fabs(yu[at]));
                    double err = fabs((double)yf[at] - (double)yu[at]);
                    if (!(err <= tol))
                        fail_msg("%s (%s): element %zu: fused %.9g, unfused %.9g, over the bound %.3g", c->what,
                                 stk_precision_name(prec), at, (double)yf[at], (double)yu[at], tol);
                    if (tol > 0 && err / tol > worst)
                        worst = err / tol;
                }
        }
    print_message("%s (%s): worst error %.3f of the bound\n", c->what, stk_precision_name(prec), worst);
}

static void run_chain(const chain_t *c, stk_precision_t prec)
{
    char text[512];
    chain_text(c, text, sizeof(text));
    stk_model_t *m = make_model(text, c->n, prec, 0);
    const char *last = c->relu ? "act" : "bn";
    size_t nx = (size_t)(c->n * c->ic * c->ih * c->iw);
    float *x = malloc(nx * sizeof(float));
    assert_non_null(x);
    stk_tensor_t t;
    /* the output size, from a first forward */
    fill(x, nx, -1.0f, 1.0f);
    assert_int_equal(stk_model_forward(m, x, c->n, NULL, NULL, NULL), 0);
    assert_int_equal(stk_model_output(m, last, &t), 0);
    size_t ny = (size_t)stk_tensor_numel(&t);
    float *yf = malloc(ny * sizeof(float)), *yu = malloc(ny * sizeof(float));
    assert_true(yf && yu);
    size_t cnt;
    float *g = tensor(m, "bn.weight", 0, &cnt);
    float *be = tensor(m, "bn.bias", 0, NULL);
    size_t nw;
    float *w = tensor(m, "conv.weight", 0, &nw);
    stk_fusion_stats_t fs;
    for (int round = 0; round < 3; round++) {
        /* "training": new parameters, running statistics from batches of
         * shifted inputs (non-trivial means and variances) */
        stk_model_set_train(m, 1);
        fill(g, cnt, -1.5f, 1.5f);
        fill(be, cnt, -0.5f, 0.5f);
        for (size_t i = 0; i < nw; i++)
            w[i] += urand(-0.05f, 0.05f);
        for (int s = 0; s < 3; s++) {
            size_t nin = (size_t)(c->n * c->ic * c->ih * c->iw);
            float *xt = malloc(nin * sizeof(float));
            assert_non_null(xt);
            fill(xt, nin, -0.5f, 2.0f + (float)round);
            assert_int_equal(stk_model_forward(m, xt, c->n, NULL, NULL, NULL), 0);
            free(xt);
        }
        assert_int_equal(stk_model_fusion_stats(m, &fs), 0);
        assert_int_equal(fs.chains, 1);
        assert_int_equal(fs.fused, 0); /* training never fuses */
        stk_model_set_train(m, 0);
        size_t nin = (size_t)(c->n * c->ic * c->ih * c->iw);
        fill(x, nin, -1.0f, 3.0f);
        stk_model_set_fusion(m, 1);
        eval_out(m, x, c->n, last, yf, ny);
        assert_int_equal(stk_model_fusion_stats(m, &fs), 0);
        assert_int_equal(fs.fused, 1);
        assert_int_equal(fs.fallbacks, 0);
        /* the convolution's own output was not computed */
        assert_int_equal(stk_model_output(m, "conv", &t), STK_ESTATE);
        assert_non_null(strstr(stk_error_message(), "fused with 'bn'"));
        stk_model_set_fusion(m, 0);
        eval_out(m, x, c->n, last, yu, ny);
        assert_int_equal(stk_model_fusion_stats(m, &fs), 0);
        assert_int_equal(fs.fused, 0);
        assert_int_equal(stk_model_output(m, "conv", &t), 0);
        check_bound(c, m, prec, x, yf, yu);
        if (c->relu) {
            for (size_t i = 0; i < ny; i++)
                assert_true(yf[i] >= 0.0f);
        }
    }
    free(x);
    free(yf);
    free(yu);
    stk_model_destroy(&m);
}

static const chain_t chains[] = {
    {"bias+relu 3x3 pad 1, 3->8 (blocked), batch 3, 9x7", 3, 3, 9, 7, 8, 3, 1, 1, 1, 1, 1, 1},
    {"no bias, no relu, stride 2, 5->6, batch 1, 11x10", 1, 5, 11, 10, 6, 3, 2, 1, 1, 1, 0, 0},
    {"bias+relu, dilation 2, groups 2, 4->16, batch 2, 13x11", 2, 4, 13, 11, 16, 3, 1, 2, 2, 2, 1, 1},
    {"no bias+relu, 1x1, 7->5, batch 5, 5x5", 5, 7, 5, 5, 5, 1, 1, 0, 1, 1, 0, 1},
    {"bias, no relu, 5x5 stride 3 pad 2, 8->24 blocked in and out, batch 2, 17x15", 2, 8, 17, 15, 24, 5, 3, 2, 1, 1,
     1, 0},
};

static void test_chains_fp32(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(chains) / sizeof(chains[0]); i++)
        run_chain(&chains[i], STK_PRECISION_FP32);
}

static void test_chains_half(void **state)
{
    (void)state;
    run_chain(&chains[0], STK_PRECISION_BF16);
    run_chain(&chains[2], STK_PRECISION_BF16);
    run_chain(&chains[1], STK_PRECISION_FP16);
    run_chain(&chains[4], STK_PRECISION_FP16);
}

static const char fmnist[] = "input    name=data shape=1,28,28\n"
                             "conv2d   name=conv1 out=32 kernel=3 pad=1\n"
                             "batchnorm2d name=bn1\n"
                             "relu     name=relu1\n"
                             "conv2d   name=conv2 out=32 kernel=3 pad=1\n"
                             "batchnorm2d name=bn2\n"
                             "relu     name=relu2\n"
                             "maxpool2d name=pool1 kernel=2\n"
                             "conv2d   name=conv3 out=64 kernel=3 pad=2 dilation=2\n"
                             "batchnorm2d name=bn3\n"
                             "relu     name=relu3\n"
                             "conv2d   name=conv4 out=64 kernel=3 pad=1\n"
                             "batchnorm2d name=bn4\n"
                             "relu     name=relu4\n"
                             "maxpool2d name=pool2 kernel=2\n"
                             "flatten  name=flatten\n"
                             "linear   name=fc1 in=3136 out=128\n"
                             "relu     name=relu5\n"
                             "dropout  name=drop p=0.25\n"
                             "linear   name=fc2 out=10\n"
                             "cross_entropy name=loss\n";

/* One SGD step (host arenas on the CPU); returns the loss. */
static float sgd_step(stk_model_t *m, const float *x, const int64_t *y, int64_t n)
{
    float loss = 0.0f;
    stk_model_set_train(m, 1);
    stk_model_zero_grad(m);
    assert_int_equal(stk_model_forward(m, x, n, y, NULL, &loss), 0);
    assert_int_equal(stk_model_backward(m), 0);
    size_t np;
    float *p = stk_model_params(m, &np), *g = stk_model_grads(m, NULL);
    for (size_t i = 0; i < np; i++)
        p[i] -= 0.05f * g[i];
    return loss;
}

/* The reference network: training with fusion on (and eval forwards,
 * fused, between the steps) is bitwise the training with fusion off; its
 * eval logits, through four fused chains, agree with the unfused ones
 * within 1e-4 of their largest magnitude (per-layer bounds as above,
 * compounded: a looser, documented check); the summary names the
 * chains. */
static void test_fmnist_train_identical(void **state)
{
    (void)state;
    const int64_t n = 5;
    stk_model_t *a = make_model(fmnist, n, STK_PRECISION_FP32, 0), *b = make_model(fmnist, n, STK_PRECISION_FP32, 1);
    assert_int_equal(stk_model_fusion(a), 1);
    assert_int_equal(stk_model_fusion(b), 0);
    size_t nx = (size_t)(n * 28 * 28);
    float *x = malloc(nx * sizeof(float)), la[10], lb[10];
    float *ea = malloc((size_t)n * 10 * sizeof(float)), *eb = malloc((size_t)n * 10 * sizeof(float));
    int64_t y[5];
    assert_true(x && ea && eb);
    for (int step = 0; step < 4; step++) {
        fill(x, nx, 0.0f, 1.0f);
        for (int64_t i = 0; i < n; i++)
            y[i] = (int64_t)(urand(0.0f, 9.99f));
        la[step] = sgd_step(a, x, y, n);
        lb[step] = sgd_step(b, x, y, n);
        assert_memory_equal(&la[step], &lb[step], sizeof(float));
        size_t np, nb;
        float *pa = stk_model_params(a, &np), *pb = stk_model_params(b, NULL);
        assert_memory_equal(pa, pb, np * sizeof(float));
        float *ba = stk_model_buffers(a, &nb), *bb = stk_model_buffers(b, NULL);
        assert_memory_equal(ba, bb, nb * sizeof(float));
        /* eval between the steps: a fused, b not */
        stk_model_set_train(a, 0);
        stk_model_set_train(b, 0);
        float loss;
        assert_int_equal(stk_model_forward(a, x, n, y, NULL, &loss), 0);
        stk_fusion_stats_t fs;
        assert_int_equal(stk_model_fusion_stats(a, &fs), 0);
        assert_int_equal(fs.chains, 4);
        assert_int_equal(fs.fused, 4);
        stk_tensor_t t;
        assert_int_equal(stk_model_output(a, "fc2", &t), 0);
        memcpy(ea, t.data, (size_t)n * 10 * sizeof(float));
        assert_int_equal(stk_model_forward(b, x, n, y, NULL, &loss), 0);
        assert_int_equal(stk_model_fusion_stats(b, &fs), 0);
        assert_int_equal(fs.fused, 0);
        assert_int_equal(stk_model_output(b, "fc2", &t), 0);
        memcpy(eb, t.data, (size_t)n * 10 * sizeof(float));
        double big = 0.0, err = 0.0;
        for (size_t i = 0; i < (size_t)n * 10; i++) {
            big = fmax(big, fabs(eb[i]));
            err = fmax(err, fabs((double)ea[i] - eb[i]));
        }
        if (!(err <= 1e-4 * big))
            fail_msg("step %d: fused logits differ by %.3g (largest %.3g)", step, err, big);
    }
    char buf[8192];
    stk_model_summary(a, buf, sizeof(buf));
    assert_non_null(strstr(buf, "conv1+bn1+relu1 fused (eval)"));
    assert_non_null(strstr(buf, "conv4+bn4+relu4 fused (eval)"));
    stk_model_summary(b, buf, sizeof(buf));
    assert_non_null(strstr(buf, "conv1+bn1+relu1 not fused (fusion off)"));
    free(x);
    free(ea);
    free(eb);
    stk_model_destroy(&a);
    stk_model_destroy(&b);
}

/* Which chains are candidates: a convolution with a second consumer, or
 * feeding something else than a batchnorm, is not; a batchnorm whose relu
 * is not its only consumer fuses without the relu. */
static void test_candidates(void **state)
{
    (void)state;
    static const char text[] = "input name=x shape=3,6,6\n"
                               "conv2d name=c1 out=4 pad=1\n"
                               "batchnorm2d name=b1\n"
                               "relu name=r1\n"
                               "add name=s1 inputs=b1,r1\n"
                               "conv2d name=c2 out=4 pad=1\n"
                               "batchnorm2d name=b2\n"
                               "add name=s2 inputs=c2,b2\n"
                               "conv2d name=c3 out=4 pad=1\n"
                               "relu name=r3\n";
    stk_model_t *m = make_model(text, 2, STK_PRECISION_FP32, 0);
    float x[2 * 3 * 6 * 6];
    fill(x, sizeof(x) / sizeof(x[0]), -1.0f, 1.0f);
    stk_model_set_train(m, 0);
    assert_int_equal(stk_model_forward(m, x, 2, NULL, NULL, NULL), 0);
    stk_fusion_stats_t fs;
    assert_int_equal(stk_model_fusion_stats(m, &fs), 0);
    assert_int_equal(fs.chains, 1);
    assert_int_equal(fs.fused, 1);
    char buf[8192];
    stk_model_summary(m, buf, sizeof(buf));
    assert_non_null(strstr(buf, "c1+b1 fused (eval)"));
    assert_null(strstr(buf, "c1+b1+r1"));
    /* the relu that is not fused still applies: s1 = b1 + relu(b1) */
    stk_tensor_t t;
    float fused[2 * 4 * 6 * 6], plain[2 * 4 * 6 * 6];
    assert_int_equal(stk_model_output(m, "s1", &t), 0);
    memcpy(fused, t.data, sizeof(fused));
    stk_model_set_fusion(m, 0);
    assert_int_equal(stk_model_forward(m, x, 2, NULL, NULL, NULL), 0);
    assert_int_equal(stk_model_output(m, "s1", &t), 0);
    memcpy(plain, t.data, sizeof(plain));
    for (size_t i = 0; i < sizeof(fused) / sizeof(fused[0]); i++)
        assert_true(fabsf(fused[i] - plain[i]) <= 1e-5f * (1.0f + fabsf(plain[i])));
    stk_model_destroy(&m);
}

/* STK_NO_FUSION=1 at create turns it off; "0" and unset leave it on. */
static void test_switches(void **state)
{
    (void)state;
    static const char text[] = "input name=x shape=2,5,5\nconv2d name=c out=3\nbatchnorm2d name=b\n";
    setenv("STK_NO_FUSION", "1", 1);
    stk_model_t *m = make_model(text, 1, STK_PRECISION_FP32, 0);
    assert_int_equal(stk_model_fusion(m), 0);
    stk_model_destroy(&m);
    setenv("STK_NO_FUSION", "0", 1);
    m = make_model(text, 1, STK_PRECISION_FP32, 0);
    assert_int_equal(stk_model_fusion(m), 1);
    stk_model_destroy(&m);
    unsetenv("STK_NO_FUSION");
    m = make_model(text, 1, STK_PRECISION_FP32, 1);
    assert_int_equal(stk_model_fusion(m), 0);
    stk_model_set_fusion(m, 1);
    assert_int_equal(stk_model_fusion(m), 1);
    assert_int_equal(stk_model_fusion_stats(m, NULL), -EINVAL);
    assert_int_equal(stk_model_fusion_stats(NULL, NULL), -EINVAL);
    stk_model_destroy(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chains_fp32),
        cmocka_unit_test(test_chains_half),
        cmocka_unit_test(test_fmnist_train_identical),
        cmocka_unit_test(test_candidates),
        cmocka_unit_test(test_switches),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
