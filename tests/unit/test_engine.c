/* SPDX-License-Identifier: MIT */
/* Engine tests: every layer against PyTorch fixtures (tests/data/engine,
 * made by tools/gen_engine_fixtures.py) and against central finite
 * differences, the reference network end to end, model-file errors, state
 * save/load, the builder, dropout determinism and gradient accumulation. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "test_util.h"
#include "engine/layer.h"
#include "stoker/engine.h"

/* ------------------------------------------------------------- helpers */

static stk_model_t *model_from_text(const char *text, int64_t batch, uint64_t seed, int init)
{
    stk_model_builder_t *b = NULL;
    assert_int_equal(stk_model_builder_create(&b), 0);
    int rc = stk_model_builder_parse(b, text, "test");
    if (rc < 0)
        fail_msg("parse: %s", stk_error_message());
    stk_model_config_t cfg;
    stk_model_config_default(&cfg);
    cfg.batch_size = batch;
    cfg.seed = seed;
    cfg.init_params = init;
    stk_model_t *m = NULL;
    rc = stk_model_create(&m, b, &cfg);
    if (rc < 0)
        fail_msg("create: %s", stk_error_message());
    stk_model_builder_destroy(&b);
    return m;
}

/* Largest violation of |a - b| <= atol + rtol |b|; fails with context. */
static void expect_close(const char *what, const float *a, const float *b, size_t n, double rtol, double atol)
{
    double worst = 0.0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double err = fabs((double)a[i] - (double)b[i]) - (atol + rtol * fabs((double)b[i]));
        if (err > worst || isnan(a[i])) {
            worst = isnan(a[i]) ? INFINITY : err;
            at = i;
        }
    }
    if (worst > 0.0)
        fail_msg("%s: element %zu: got %.8g, expected %.8g (rtol %g, atol %g)", what, at, (double)a[at],
                 (double)b[at], rtol, atol);
}

static size_t entry_count(const stk__st_entry_t *e)
{
    size_t n = 1;
    for (int i = 0; i < e->ndim; i++)
        n *= (size_t)e->shape[i];
    return n;
}

/* ------------------------------------------------------ PyTorch fixtures */

static void run_fixture(const char *name, double rtol, double atol)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/engine/%s.safetensors", data_dir(), name);
    size_t len;
    char *buf = read_file(path, &len);
    if (!buf)
        fail_msg("cannot read %s", path);
    stk__st_file_t f;
    assert_int_equal(stk__safetensors_parse(buf, len, &f), 0);
    char text[STK__ST_META_MAX];
    snprintf(text, sizeof(text), "%s", stk__safetensors_meta(&f, "model"));
    for (char *p = text; *p; p++)
        if (*p == ';')
            *p = '\n';
    const stk__st_entry_t *ex = stk__safetensors_find(&f, "x");
    assert_non_null(ex);
    const char *init_seed = stk__safetensors_meta(&f, "init_seed");
    stk_model_t *m = model_from_text(text, ex->shape[0], init_seed ? strtoull(init_seed, NULL, 10) : 0,
                                     init_seed != NULL);
    const char *mode = stk__safetensors_meta(&f, "mode");
    stk_model_set_train(m, !mode || strcmp(mode, "eval") != 0);
    const char *seed = stk__safetensors_meta(&f, "seed"), *step = stk__safetensors_meta(&f, "step");
    if (seed)
        stk_model_set_seed(m, strtoull(seed, NULL, 10));
    if (step)
        stk_model_set_step(m, strtoull(step, NULL, 10));
    /* Parameters and buffers the fixture gives. */
    for (size_t i = 0; i < f.n; i++) {
        stk_param_info_t info;
        int is_buf;
        if (stk_model_find(m, f.entries[i].name, &info, &is_buf) < 0)
            continue;
        assert_int_equal(entry_count(&f.entries[i]), info.count);
        float *arena = is_buf ? stk_model_buffers(m, NULL) : stk_model_params(m, NULL);
        memcpy(arena + info.offset, f.data + f.entries[i].begin, info.count * sizeof(float));
    }
    const float *x = (const float *)(f.data + ex->begin);
    const stk__st_entry_t *el = stk__safetensors_find(&f, "labels"), *es = stk__safetensors_find(&f, "soft");
    /* safetensors does not align data: copy the i64 labels. */
    int64_t *labels = NULL;
    if (el) {
        labels = malloc((size_t)(el->end - el->begin));
        memcpy(labels, f.data + el->begin, (size_t)(el->end - el->begin));
    }
    const float *soft = es ? (const float *)(f.data + es->begin) : NULL;
    float loss = 0.0f;
    stk_model_zero_grad(m);
    if (stk_model_forward(m, x, ex->shape[0], labels, soft, labels || soft ? &loss : NULL) < 0)
        fail_msg("%s: forward: %s", name, stk_error_message());
    char what[256];
    const stk__st_entry_t *e;
    if ((e = stk__safetensors_find(&f, "loss"))) {
        snprintf(what, sizeof(what), "%s: loss", name);
        expect_close(what, &loss, (const float *)(f.data + e->begin), 1, rtol, atol);
    }
    if ((e = stk__safetensors_find(&f, "y"))) {
        stk_tensor_t out;
        size_t nl = stk_model_num_layers(m);
        stk_layer_stats_t st;
        assert_int_equal(stk_model_layer_stats(m, nl - 1, &st), 0);
        assert_int_equal(stk_model_output(m, st.name, &out), 0);
        assert_int_equal((size_t)stk_tensor_numel(&out), entry_count(e));
        snprintf(what, sizeof(what), "%s: forward output", name);
        expect_close(what, out.data, (const float *)(f.data + e->begin), entry_count(e), rtol, atol);
    }
    if ((e = stk__safetensors_find(&f, "logits"))) {
        const float *z;
        int64_t n, k;
        assert_int_equal(stk_model_logits(m, &z, &n, &k), 0);
        assert_int_equal((size_t)(n * k), entry_count(e));
        snprintf(what, sizeof(what), "%s: logits", name);
        expect_close(what, z, (const float *)(f.data + e->begin), entry_count(e), rtol, atol);
    }
    const stk__st_entry_t *edx = stk__safetensors_find(&f, "dx");
    int backward = edx || labels || soft;
    if (edx) {
        const stk__st_entry_t *edy = stk__safetensors_find(&f, "dy");
        float *dx = calloc(entry_count(edx), sizeof(float));
        if (stk__model_backward_input(m, edy ? (const float *)(f.data + edy->begin) : NULL, dx) < 0)
            fail_msg("%s: backward: %s", name, stk_error_message());
        snprintf(what, sizeof(what), "%s: input gradient", name);
        expect_close(what, dx, (const float *)(f.data + edx->begin), entry_count(edx), rtol, atol);
        free(dx);
    } else if (backward) {
        if (stk_model_backward(m) < 0)
            fail_msg("%s: backward: %s", name, stk_error_message());
    }
    int checked = 0;
    for (size_t i = 0; i < f.n; i++) {
        const stk__st_entry_t *g = &f.entries[i];
        const char *pname = NULL;
        int rows8 = 0;
        if (!strncmp(g->name, "grad.", 5))
            pname = g->name + 5;
        else if (!strncmp(g->name, "gradrows8.", 10))
            pname = g->name + 10, rows8 = 1;
        else if (!strncmp(g->name, "after.", 6))
            pname = g->name + 6;
        if (!pname)
            continue;
        stk_param_info_t info;
        int is_buf;
        if (stk_model_find(m, pname, &info, &is_buf) < 0)
            fail_msg("%s: fixture tensor %s has no model counterpart", name, g->name);
        const float *arena = is_buf ? stk_model_buffers(m, NULL)
                                    : (g->name[0] == 'a' ? stk_model_params(m, NULL) : stk_model_grads(m, NULL));
        const float *want = (const float *)(f.data + g->begin);
        snprintf(what, sizeof(what), "%s: %s", name, g->name);
        if (rows8) {
            size_t row = info.count / (size_t)info.shape[0];
            for (int64_t r = 0; r < g->shape[0]; r++)
                expect_close(what, arena + info.offset + (size_t)(8 * r) * row, want + (size_t)r * row, row, rtol,
                             atol);
        } else {
            assert_int_equal(entry_count(g), info.count);
            expect_close(what, arena + info.offset, want, info.count, rtol, atol);
        }
        checked++;
    }
    /* Every parameter gradient is covered by the fixture. */
    if (backward && stk_model_num_params(m) > 0)
        assert_true(checked >= (int)stk_model_num_params(m));
    stk_model_destroy(&m);
    stk__safetensors_free(&f);
    free(labels);
    free(buf);
}

static const char *const layer_fixtures[] = {
    "conv_basic", "conv_stride2", "conv_dil2", "conv_dil3_odd", "conv_groups", "conv_depthwise_k5",
    "bn_train", "bn_eval", "relu", "leaky_relu", "gelu", "sigmoid", "tanh", "maxpool", "maxpool_k3s2p1",
    "avgpool_k3s2p1", "global_avgpool", "flatten_linear", "dropout", "xent", "xent_smooth", "xent_soft",
    "xent_soft_smooth", "add", "concat", "blocked_chain",
};

static void test_fixtures_layers(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(layer_fixtures) / sizeof(layer_fixtures[0]); i++)
        run_fixture(layer_fixtures[i], 1e-4, 2e-5);
}

static void test_fixture_network(void **state)
{
    (void)state;
    run_fixture("fmnist_cnn", 2e-3, 2e-5);
}

/* ---------------------------------------------------- finite differences */

/* Every evaluation replays step 3, so dropout keeps one mask (a training
 * forward advances the model's step). */
static double loss_at(stk_model_t *m, const float *x, int64_t n, const int64_t *labels)
{
    float loss;
    stk_model_set_step(m, 3);
    if (stk_model_forward(m, x, n, labels, NULL, &loss) < 0)
        fail_msg("forward: %s", stk_error_message());
    return loss;
}

/* Central differences of the loss against backward, for a sample of every
 * parameter tensor and of the input. Loss in f32, differences in double. */
static void fd_check(const char *text, int64_t n, int64_t classes)
{
    stk_model_t *m = model_from_text(text, n, 17, 1);
    int64_t shape[4];
    stk_model_input_shape(m, shape);
    size_t nx = (size_t)(n * shape[1] * shape[2] * shape[3]);
    float *x = malloc(nx * sizeof(float)), *dx = calloc(nx, sizeof(float));
    int64_t *labels = malloc((size_t)n * sizeof(int64_t));
    stk_rng_t r;
    stk_rng_init(&r, 5, 0);
    for (size_t i = 0; i < nx; i++)
        x[i] = 2.0f * stk_rng_uniform(&r) - 1.0f;
    for (int64_t i = 0; i < n; i++)
        labels[i] = (int64_t)stk_rng_below(&r, (uint64_t)classes);
    stk_model_zero_grad(m);
    loss_at(m, x, n, labels);
    if (stk__model_backward_input(m, NULL, dx) < 0)
        fail_msg("backward: %s", stk_error_message());
    size_t np;
    float *p = stk_model_params(m, &np);
    float *g = malloc(np * sizeof(float));
    memcpy(g, stk_model_grads(m, NULL), np * sizeof(float));
    const double eps = 2e-3, rtol = 2e-2, atol = 5e-4;
    int kinks = 0, total = 0;
    char what[256];
    for (size_t t = 0; t <= stk_model_num_params(m); t++) {
        float *v;
        const float *an;
        size_t cnt;
        const char *name = "input";
        if (t < stk_model_num_params(m)) {
            stk_param_info_t info;
            stk_model_param_info(m, t, &info);
            v = p + info.offset;
            an = g + info.offset;
            cnt = info.count;
            name = info.name;
        } else {
            v = x;
            an = dx;
            cnt = nx;
        }
        size_t stride = cnt > 12 ? cnt / 12 : 1;
        for (size_t i = 0; i < cnt; i += stride) {
            /* Two step sizes: where they disagree the loss has a kink
             * (relu, max) within reach and the point says nothing. */
            double fd[2];
            for (int k = 0; k < 2; k++) {
                float keep = v[i];
                double h = k ? eps / 8 : eps;
                v[i] = keep + (float)h;
                double lp = loss_at(m, x, n, labels);
                v[i] = keep - (float)h;
                double lm = loss_at(m, x, n, labels);
                v[i] = keep;
                fd[k] = (lp - lm) / (2.0 * h);
            }
            total++;
            if (fabs(fd[0] - fd[1]) > atol + rtol * fabs(fd[1])) {
                kinks++;
                continue;
            }
            double a = an[i];
            if (fabs(fd[1] - a) > atol + rtol * fmax(fabs(fd[1]), fabs(a))) {
                snprintf(what, sizeof(what), "%s [%zu]", name, i);
                fail_msg("finite differences: model\n%s\n%s: backward %.6g, differences %.6g", text, what, a, fd[1]);
            }
        }
    }
    print_message("finite differences: %d points, %d skipped near a kink\n", total, kinks);
    if (kinks * 4 > total)
        fail_msg("finite differences: model\n%s\n%d of %d points near a kink", text, kinks, total);
    free(g);
    free(x);
    free(dx);
    free(labels);
    stk_model_destroy(&m);
}

static void test_fd_layers(void **state)
{
    (void)state;
    static const char *const models[] = {
        "input shape=2,7,7\nconv2d out=3 kernel=3 pad=1\nflatten\nlinear out=4\ncross_entropy",
        "input shape=4,9,8\nconv2d out=4 kernel=3 stride=2 pad=2 dilation=2 groups=2\nflatten\nlinear out=3\n"
        "cross_entropy",
        "input shape=2,11,9\nconv2d out=3 kernel=3 pad=3 dilation=3 bias=0\nconv2d out=2 kernel=2 stride=2\n"
        "flatten\nlinear out=3\ncross_entropy smoothing=0.1",
        "input shape=2,6,5\nconv2d out=3 kernel=3 pad=1\nbatchnorm2d\nrelu\nflatten\nlinear out=3\ncross_entropy",
        "input shape=2,5,5\nconv2d out=3 kernel=1\nleaky_relu slope=0.1\nglobal_avgpool\nflatten\nlinear out=3\n"
        "cross_entropy",
        "input shape=2,5,5\nconv2d out=3 kernel=3 pad=1\ngelu\nsigmoid\ntanh\nflatten\nlinear out=3\ncross_entropy",
        "input shape=2,7,8\nconv2d out=3 kernel=3 pad=1\nmaxpool2d kernel=3 stride=2 pad=1\nflatten\nlinear out=3\n"
        "cross_entropy",
        "input shape=2,7,8\nconv2d out=3 kernel=3 pad=1\navgpool2d kernel=3 stride=2 pad=1\nflatten\nlinear out=3\n"
        "cross_entropy",
        "input name=data shape=2,5,5\nconv2d name=a out=2 kernel=3 pad=1\nrelu name=ra\nconv2d name=b out=2 "
        "kernel=3 pad=1\nadd name=res inputs=b,data\nconcat name=cat inputs=res,ra\nflatten\nlinear out=3\n"
        "cross_entropy",
        "input shape=6\nlinear out=5\ndropout p=0.3\ntanh\nlinear out=4\ncross_entropy",
        /* 8 and 16 channels run in the blocked layout. */
        "input name=data shape=3,6,6\nconv2d name=a out=8 kernel=3 pad=1\nbatchnorm2d\nrelu name=r\n"
        "conv2d out=8 kernel=3 pad=2 dilation=2 groups=2\nadd inputs=conv2d4,r\nmaxpool2d kernel=2\n"
        "conv2d out=16 kernel=3 stride=2 pad=1\ndropout p=0.2\nflatten\nlinear out=3\ncross_entropy",
    };
    for (size_t i = 0; i < sizeof(models) / sizeof(models[0]); i++)
        fd_check(models[i], 3, i == 9 ? 4 : 3);
}

/* ------------------------------------------------------------ model files */

static void expect_parse_error(const char *text, int code, const char *needle1, const char *needle2)
{
    stk_model_builder_t *b = NULL;
    assert_int_equal(stk_model_builder_create(&b), 0);
    int rc = stk_model_builder_parse(b, text, "bad.model");
    stk_model_t *m = NULL;
    if (rc == 0) {
        stk_model_config_t cfg;
        stk_model_config_default(&cfg);
        cfg.batch_size = 2;
        rc = stk_model_create(&m, b, &cfg);
    }
    stk_model_builder_destroy(&b);
    assert_null(m);
    if (rc != code)
        fail_msg("expected %s, got %s: %s", stk_err_name(code), stk_err_name(rc), stk_error_message());
    if (!strstr(stk_error_message(), needle1) || (needle2 && !strstr(stk_error_message(), needle2)))
        fail_msg("message '%s' lacks '%s' / '%s'", stk_error_message(), needle1, needle2 ? needle2 : "");
}

static void test_model_file_errors(void **state)
{
    (void)state;
    expect_parse_error("input shape=1,8,8\nconv3d out=2\n", STK_ECONFIG, "line 2", "conv3d");
    expect_parse_error("input shape=1,8,8\nconv2d out=2 kernal=3\n", STK_ECONFIG, "line 2", "key 'kernal'");
    expect_parse_error("input shape=1,x,8\n", STK_ECONFIG, "line 1", "key 'shape'");
    expect_parse_error("input shape=1,8,8\n\n# c\nconv2d out=-2\n", STK_ECONFIG, "line 4", "key 'out'");
    expect_parse_error("input shape=1,8,8\nconv2d out=2 groups=3\n", STK_ECONFIG, "line 2", "key 'groups'");
    expect_parse_error("input shape=1,8,8\nconv2d out=4\nrelu input=nothere\n", STK_ECONFIG, "line 3",
                       "'nothere'");
    expect_parse_error("input name=a shape=1,8,8\nconv2d out=4\nadd inputs=a,conv2d1\n", STK_ESHAPE, "line 3",
                       "key 'inputs'");
    expect_parse_error("input shape=1,8,8\nconv2d out=4 in=3\n", STK_ESHAPE, "line 2", "key 'in'");
    expect_parse_error("input shape=1,8,8\nflatten\nlinear out=4 in=63\n", STK_ESHAPE, "line 3", "key 'in'");
    expect_parse_error("input shape=1,8,8\nlinear out=4\n", STK_ESHAPE, "line 2", "flatten");
    expect_parse_error("input shape=1,4,4\nconv2d out=2 kernel=7\n", STK_ESHAPE, "line 2", "key 'kernel'");
    expect_parse_error("input shape=1,8,8\nconv2d name=c out=2\nrelu name=c\n", STK_ECONFIG, "line 3",
                       "key 'name'");
    expect_parse_error("conv2d out=2\n", STK_ECONFIG, "line 1", "input");
    expect_parse_error("input shape=4\ncross_entropy\nrelu\n", STK_ECONFIG, "line 2", "last layer");
    expect_parse_error("input shape=4\ndropout p=1.5\n", STK_ECONFIG, "line 2", "key 'p'");
    expect_parse_error("input shape=4\nrelu oops\n", STK_ECONFIG, "line 2", "oops");
    expect_parse_error("", STK_ECONFIG, "no layers", NULL);
    expect_parse_error("input shape=2000000,1,1\n", STK_ECONFIG, "line 1", "key 'shape'");
    expect_parse_error("input shape=4096,1024,1024\n", STK_ECONFIG, "line 1", "key 'shape'");
    expect_parse_error("input shape=1,8,8\nconv2d out=4 kernel=4096\n", STK_ECONFIG, "line 2", "key 'kernel'");
    expect_parse_error("input shape=1000,1000,1000\nflatten\nlinear out=1000000\n", STK_ESHAPE, "line 3",
                       "2^31");

    stk_model_t *m = (stk_model_t *)1;
    assert_int_equal(stk_model_create_from_file(&m, "/nonexistent/x.model", NULL), -ENOENT);
    assert_null(m);
}

static void test_reference_model(void **state)
{
    (void)state;
    char path[512];
    const char *src = getenv("STK_SOURCE_ROOT");
    snprintf(path, sizeof(path), "%s/models/fmnist-cnn.model", src ? src : ".");
    stk_model_config_t cfg;
    stk_model_config_default(&cfg);
    cfg.batch_size = 4;
    stk_model_t *m = NULL;
    if (stk_model_create_from_file(&m, path, &cfg) < 0)
        fail_msg("%s", stk_error_message());
    size_t np;
    stk_model_params(m, &np);
    assert_int_equal(np, 468202);
    assert_int_equal(stk_model_num_classes(m), 10);
    stk_param_info_t info;
    int is_buf;
    assert_int_equal(stk_model_find(m, "conv3.weight", &info, &is_buf), 0);
    assert_int_equal(is_buf, 0);
    assert_int_equal(info.kind, STK_PARAM_WEIGHT);
    assert_int_equal(info.shape[0], 64);
    assert_int_equal(info.shape[1], 32);
    assert_int_equal(stk_model_find(m, "bn2.bias", &info, NULL), 0);
    assert_int_equal(info.kind, STK_PARAM_BN_BIAS);
    assert_int_equal(stk_model_find(m, "bn2.running_var", &info, &is_buf), 0);
    assert_int_equal(is_buf, 1);
    assert_int_equal(stk_model_find(m, "bn2.nope", &info, NULL), STK_ENOTFOUND);
    assert_int_equal(stk_model_num_buffers(m), 8);
    char buf[8192];
    size_t need = stk_model_summary(m, buf, sizeof(buf));
    assert_true(need < sizeof(buf));
    /* conv3 is dilated 2: a 3x3 kernel covers 5x5, after 5x5 then a pool. */
    assert_non_null(strstr(buf, "14x14"));
    assert_non_null(strstr(buf, "Total params: 468,202"));
    assert_non_null(strstr(buf, "401,536"));
    char small[16];
    assert_int_equal(stk_model_summary(m, small, sizeof(small)), need);
    assert_int_equal(strlen(small), sizeof(small) - 1);
    stk_model_destroy(&m);
    stk_model_destroy(&m);
}

/* ------------------------------------------------------------------ state */

static void test_state_roundtrip(void **state)
{
    (void)state;
    const char *text = "input shape=2,6,6\nconv2d name=c out=3 kernel=3\nbatchnorm2d name=bn\nrelu\nflatten\n"
                       "linear name=fc out=4\ncross_entropy";
    stk_model_t *a = model_from_text(text, 2, 1, 1), *b = model_from_text(text, 2, 2, 1);
    float x[2 * 2 * 6 * 6];
    for (size_t i = 0; i < sizeof(x) / sizeof(x[0]); i++)
        x[i] = (float)((i * 37) % 11) / 11.0f;
    int64_t y[2] = {1, 3};
    float la, lb;
    assert_int_equal(stk_model_forward(a, x, 2, y, NULL, &la), 0); /* moves the running stats */
    size_t sz = stk_model_state_size(a), wr = 0;
    char *blob = malloc(sz);
    assert_int_equal(stk_model_state_save_mem(a, blob, sz - 1, &wr), -ENOSPC);
    assert_int_equal(stk_model_state_save_mem(a, blob, sz, &wr), 0);
    assert_int_equal(wr, sz);
    assert_int_equal(stk_model_state_load_mem(b, blob, sz), 0);
    stk_model_set_train(a, 0);
    stk_model_set_train(b, 0);
    assert_int_equal(stk_model_forward(a, x, 2, y, NULL, &la), 0);
    assert_int_equal(stk_model_forward(b, x, 2, y, NULL, &lb), 0);
    assert_true(la == lb);
    /* File round trip and the BN counter. */
    char path[] = "/tmp/stk_engine_stateXXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(stk_model_state_save(a, path), 0);
    assert_int_equal(stk_model_state_load(b, path), 0);
    size_t flen;
    char *file = read_file(path, &flen);
    stk__st_file_t f;
    assert_int_equal(stk__safetensors_parse(file, flen, &f), 0);
    const stk__st_entry_t *e = stk__safetensors_find(&f, "bn.num_batches_tracked");
    assert_non_null(e);
    assert_string_equal(e->dtype, "I64");
    int64_t nbt;
    memcpy(&nbt, f.data + e->begin, 8);
    assert_int_equal(nbt, 1);
    stk__safetensors_free(&f);
    free(file);
    unlink(path);
    assert_int_equal(stk_model_state_load(b, path), -ENOENT);

    /* Shape mismatch: a model with another width. */
    stk_model_t *c = model_from_text("input shape=2,6,6\nconv2d name=c out=5 kernel=3\nbatchnorm2d name=bn\nrelu\n"
                                     "flatten\nlinear name=fc out=4\ncross_entropy",
                                     2, 1, 1);
    float before = stk_model_params(c, NULL)[0];
    assert_int_equal(stk_model_state_load_mem(c, blob, sz), STK_ESHAPE);
    assert_non_null(strstr(stk_error_message(), "c.weight"));
    assert_non_null(strstr(stk_error_message(), "[3,2,3,3]"));
    assert_true(stk_model_params(c, NULL)[0] == before);
    stk_model_destroy(&c);
    /* Missing and unknown names. */
    c = model_from_text("input shape=2,6,6\nconv2d name=c out=3 kernel=3\nbatchnorm2d name=bn\nrelu\nflatten\n"
                        "linear name=fc2 out=4\ncross_entropy",
                        2, 1, 1);
    assert_int_equal(stk_model_state_load_mem(c, blob, sz), STK_ENOTFOUND);
    assert_non_null(strstr(stk_error_message(), "fc2.weight"));
    stk_model_destroy(&c);
    c = model_from_text("input shape=2,6,6\nconv2d name=c out=3 kernel=3\nbatchnorm2d name=bn\nrelu\nflatten\n"
                        "linear name=fc out=4 bias=0\ncross_entropy",
                        2, 1, 1);
    assert_int_equal(stk_model_state_load_mem(c, blob, sz), STK_ENOTFOUND);
    assert_non_null(strstr(stk_error_message(), "fc.bias"));
    stk_model_destroy(&c);
    /* Corrupt blobs. */
    assert_int_equal(stk_model_state_load_mem(b, blob, 4), STK_EFORMAT);
    blob[8] = 'x';
    assert_int_equal(stk_model_state_load_mem(b, blob, sz), STK_EFORMAT);
    blob[0] = (char)0xff;
    assert_int_equal(stk_model_state_load_mem(b, blob, sz), STK_EFORMAT);
    free(blob);
    stk_model_destroy(&a);
    stk_model_destroy(&b);
}

/* ------------------------------------------- builder, training mechanics */

static stk_model_t *residual_model(int64_t batch)
{
    stk_model_builder_t *b = NULL;
    assert_int_equal(stk_model_builder_create(&b), 0);
    stk_layer_desc_t d;
    stk_layer_desc_default(&d, STK_LAYER_INPUT);
    d.name = "data";
    d.in_c = 2, d.in_h = 6, d.in_w = 6;
    assert_int_equal(stk_model_builder_add(b, &d), 0);
    stk_layer_desc_default(&d, STK_LAYER_CONV2D);
    d.name = "c1", d.out = 2, d.pad_h = d.pad_w = 1;
    assert_int_equal(stk_model_builder_add(b, &d), 0);
    assert_int_equal(stk_model_builder_add(b, &d), STK_ECONFIG); /* duplicate name */
    stk_layer_desc_default(&d, STK_LAYER_ADD);
    d.name = "res";
    assert_int_equal(stk_model_builder_add(b, &d), STK_ECONFIG); /* one input */
    d.inputs[0] = "c1", d.inputs[1] = "data";
    assert_int_equal(stk_model_builder_add(b, &d), 0);
    stk_layer_desc_default(&d, STK_LAYER_GLOBAL_AVGPOOL);
    assert_int_equal(stk_model_builder_add(b, &d), 0);
    stk_layer_desc_default(&d, STK_LAYER_FLATTEN);
    assert_int_equal(stk_model_builder_add(b, &d), 0);
    stk_layer_desc_default(&d, STK_LAYER_LINEAR);
    d.out = 3;
    assert_int_equal(stk_model_builder_add(b, &d), 0);
    stk_layer_desc_default(&d, STK_LAYER_DROPOUT);
    d.name = "drop";
    assert_int_equal(stk_model_builder_add(b, &d), 0);
    stk_layer_desc_default(&d, STK_LAYER_CROSS_ENTROPY);
    assert_int_equal(stk_model_builder_add(b, &d), 0);
    stk_layer_desc_default(&d, STK_LAYER_INPUT);
    d.in_c = d.in_h = d.in_w = 1;
    assert_int_equal(stk_model_builder_add(b, &d), STK_ECONFIG); /* second input */
    d.kind = (stk_layer_kind_t)99;
    assert_int_equal(stk_model_builder_add(b, &d), STK_ECONFIG);
    stk_model_config_t cfg;
    stk_model_config_default(&cfg);
    cfg.batch_size = batch;
    cfg.seed = 9;
    stk_model_t *m = NULL;
    assert_int_equal(stk_model_create(&m, b, &cfg), 0);
    stk_model_builder_destroy(&b);
    stk_model_builder_destroy(&b);
    return m;
}

static void test_training_mechanics(void **state)
{
    (void)state;
    stk_model_t *m = residual_model(4);
    float x[4 * 72];
    for (size_t i = 0; i < 4 * 72; i++)
        x[i] = (float)((i * 13) % 17) / 17.0f - 0.5f;
    int64_t y[4] = {0, 1, 2, 1};
    size_t np;
    float l1, l2;
    assert_int_equal(stk_model_backward(m), STK_ESTATE);
    /* The model advances its step: the next forward draws another mask;
     * set_step replays one. */
    stk_model_set_step(m, 1);
    assert_int_equal(stk_model_forward(m, x, 4, y, NULL, &l1), 0);
    assert_int_equal(stk_model_step(m), 2);
    assert_int_equal(stk_model_forward(m, x, 4, y, NULL, &l2), 0);
    assert_true(l1 != l2);
    stk_model_set_step(m, 1);
    assert_int_equal(stk_model_forward(m, x, 4, y, NULL, &l2), 0);
    assert_true(l1 == l2);
    /* Accumulation: two backwards add; loss scale scales (same step, so
     * the same mask, each time). */
    stk_model_zero_grad(m);
    stk_model_set_step(m, 1);
    assert_int_equal(stk_model_forward(m, x, 4, y, NULL, &l1), 0);
    assert_int_equal(stk_model_backward(m), 0);
    assert_int_equal(stk_model_backward(m), STK_ESTATE);
    float *g = stk_model_grads(m, &np);
    float *g1 = malloc(np * sizeof(float));
    memcpy(g1, g, np * sizeof(float));
    stk_model_set_step(m, 1);
    assert_int_equal(stk_model_forward(m, x, 4, y, NULL, &l1), 0);
    assert_int_equal(stk_model_backward(m), 0);
    for (size_t i = 0; i < np; i++)
        assert_true(fabsf(g[i] - 2.0f * g1[i]) <= 1e-6f + 1e-5f * fabsf(g1[i]));
    stk_model_zero_grad(m);
    stk_model_set_loss_scale(m, 0.5f);
    stk_model_set_step(m, 1);
    assert_int_equal(stk_model_forward(m, x, 4, y, NULL, &l1), 0);
    assert_int_equal(stk_model_backward(m), 0);
    for (size_t i = 0; i < np; i++)
        assert_true(fabsf(g[i] - 0.5f * g1[i]) <= 1e-6f + 1e-5f * fabsf(g1[i]));
    stk_model_set_loss_scale(m, 1.0f);
    /* Another batch size re-plans; the planned one comes back. */
    assert_int_equal(stk_model_forward(m, x, 3, y, NULL, &l2), 0);
    assert_int_equal(stk_model_batch_size(m), 3);
    int64_t correct = -1;
    assert_int_equal(stk_model_count_correct(m, y, &correct), 0);
    assert_true(correct >= 0 && correct <= 3);
    /* Soft targets equal to one-hot labels give the same loss. */
    float soft[4 * 3] = {0};
    for (int i = 0; i < 4; i++)
        soft[i * 3 + y[i]] = 1.0f;
    stk_model_set_step(m, 5);
    assert_int_equal(stk_model_forward(m, x, 4, NULL, soft, &l2), 0);
    stk_model_set_step(m, 5);
    assert_int_equal(stk_model_forward(m, x, 4, y, NULL, &l1), 0);
    assert_true(fabsf(l1 - l2) < 1e-6f);
    /* Errors. */
    int64_t bad[4] = {0, 1, 7, 1};
    assert_int_equal(stk_model_forward(m, x, 4, bad, NULL, &l1), -EINVAL);
    assert_non_null(strstr(stk_error_message(), "sample 2"));
    assert_int_equal(stk_model_forward(m, x, 4, y, soft, &l1), -EINVAL);
    assert_int_equal(stk_model_forward(m, NULL, 4, y, NULL, &l1), -EINVAL);
    assert_int_equal(stk_model_forward(m, x, 4, y, NULL, NULL), -EINVAL);
    /* Inference without targets, eval mode, then backward is refused. */
    stk_model_set_train(m, 0);
    assert_int_equal(stk_model_is_train(m), 0);
    assert_int_equal(stk_model_forward(m, x, 4, NULL, NULL, NULL), 0);
    assert_int_equal(stk_model_backward(m), STK_ESTATE);
    stk_tensor_t out;
    assert_int_equal(stk_model_output(m, "res", &out), 0);
    assert_int_equal(out.shape[1], 2);
    assert_int_equal(stk_model_output(m, "nope", &out), STK_ENOTFOUND);
    /* Tensor forward. */
    stk_tensor_t tx, ty;
    int64_t xs[4] = {4, 2, 6, 6}, ys[1] = {4};
    assert_int_equal(stk_tensor_init(&tx, x, STK_DTYPE_F32, 4, xs), 0);
    assert_int_equal(stk_tensor_init(&ty, y, STK_DTYPE_I64, 1, ys), 0);
    stk_model_set_train(m, 1);
    assert_int_equal(stk_model_forward_tensor(m, &tx, &ty, &l2), 0);
    assert_true(l1 == l1);
    ty.dtype = STK_DTYPE_I32;
    assert_int_equal(stk_model_forward_tensor(m, &tx, &ty, &l2), STK_ESHAPE);
    xs[1] = 3;
    assert_int_equal(stk_tensor_init(&tx, x, STK_DTYPE_F32, 4, xs), 0);
    assert_int_equal(stk_model_forward_tensor(m, &tx, NULL, NULL), STK_ESHAPE);
    /* Profiling stats. */
    stk_model_set_profiling(m, 1);
    stk_model_reset_stats(m);
    assert_int_equal(stk_model_forward(m, x, 4, y, NULL, &l1), 0);
    assert_int_equal(stk_model_backward(m), 0);
    stk_layer_stats_t st;
    assert_int_equal(stk_model_layer_stats(m, 1, &st), 0);
    assert_string_equal(st.name, "c1");
    assert_int_equal(st.forward_calls, 1);
    assert_int_equal(st.backward_calls, 1);
    assert_int_equal(stk_model_layer_stats(m, 100, &st), -ERANGE);
    assert_int_equal(stk_model_layer_stats(m, 1, NULL), -EINVAL);
    stk_param_info_t pi;
    assert_int_equal(stk_model_param_info(m, stk_model_num_params(m), &pi), -ERANGE);
    assert_int_equal(stk_model_buffer_info(m, stk_model_num_buffers(m), &pi), -ERANGE);
    assert_int_equal(stk_model_param_info(m, 0, NULL), -EINVAL);
    char buf[4096];
    assert_true(stk_model_stats_format(m, buf, sizeof(buf)) < sizeof(buf));
    assert_non_null(strstr(buf, "c1 (conv2d)"));
    /* The CPU's clock is the host's; each pass's layers fit in its span. */
    assert_non_null(strstr(buf, "per-layer host time\n"));
    stk_profile_info_t prof;
    assert_int_equal(stk_model_profile_info(m, &prof), 0);
    assert_int_equal(prof.clock, STK_PROFILE_HOST);
    assert_string_equal(stk_profile_clock_name(prof.clock), "host time");
    assert_string_equal(stk_profile_clock_name(STK_PROFILE_DEVICE), "GPU time");
    assert_int_equal(prof.passes, 2);
    double layers_s = 0.0;
    for (size_t i = 0; i < stk_model_num_layers(m); i++) {
        assert_int_equal(stk_model_layer_stats(m, i, &st), 0);
        assert_true(st.forward_s >= 0.0 && st.backward_s >= 0.0);
        layers_s += st.forward_s + st.backward_s;
    }
    assert_true(layers_s > 0.0 && layers_s <= prof.span_s);
    assert_int_equal(stk_model_profile_info(m, NULL), -EINVAL);
    assert_int_equal(stk_model_profile_info(NULL, &prof), -EINVAL);
    /* Off: nothing more is counted; reset: all of it goes. */
    stk_model_set_profiling(m, 0);
    assert_int_equal(stk_model_forward(m, x, 4, y, NULL, &l1), 0);
    assert_int_equal(stk_model_layer_stats(m, 1, &st), 0);
    assert_int_equal(st.forward_calls, 1);
    stk_model_reset_stats(m);
    assert_int_equal(stk_model_profile_info(m, &prof), 0);
    assert_true(prof.passes == 0 && prof.span_s == 0.0);
    assert_int_equal(stk_model_layer_stats(m, 1, &st), 0);
    assert_true(st.forward_calls == 0 && st.forward_s == 0.0);
    /* Threads: the loss does not depend on the count beyond reassociation. */
    assert_int_equal(stk_model_set_threads(m, -1), -EINVAL);
    assert_int_equal(stk_model_set_threads(m, 1), 0);
    stk_model_set_step(m, 5);
    assert_int_equal(stk_model_forward(m, x, 4, y, NULL, &l1), 0);
    assert_int_equal(stk_model_set_threads(m, 2), 0);
    stk_model_set_step(m, 5);
    assert_int_equal(stk_model_forward(m, x, 4, y, NULL, &l2), 0);
    assert_true(fabsf(l1 - l2) <= 1e-5f * fabsf(l1));
    free(g1);
    stk_model_destroy(&m);
}

static size_t hook_total;

static void grad_hook(size_t offset, size_t count, void *user)
{
    (void)offset;
    *(int *)user += 1;
    hook_total += count;
}

static void test_grad_hook(void **state)
{
    (void)state;
    stk_model_t *m = residual_model(2);
    int calls = 0;
    stk_model_set_grad_hook(m, grad_hook, &calls);
    float x[2 * 72] = {0};
    int64_t y[2] = {0, 1};
    float l;
    hook_total = 0;
    assert_int_equal(stk_model_forward(m, x, 2, y, NULL, &l), 0);
    assert_int_equal(stk_model_backward(m), 0);
    size_t np;
    stk_model_params(m, &np);
    assert_int_equal(calls, 2); /* c1 and the linear layer */
    assert_int_equal(hook_total, np);
    stk_model_destroy(&m);
}

static void test_tensor(void **state)
{
    (void)state;
    float data[24];
    stk_tensor_t t, v;
    int64_t s[3] = {2, 3, 4};
    assert_int_equal(stk_tensor_init(&t, data, STK_DTYPE_F32, 3, s), 0);
    assert_int_equal(stk_tensor_numel(&t), 24);
    assert_true(stk_tensor_is_contiguous(&t));
    assert_int_equal(stk_tensor_narrow(&v, &t, 1, 1, 2), 0);
    assert_ptr_equal(v.data, data + 4);
    assert_false(stk_tensor_is_contiguous(&v));
    int64_t r[2] = {6, 4};
    assert_int_equal(stk_tensor_reshape(&v, &v, 2, r), STK_ESTATE);
    assert_int_equal(stk_tensor_reshape(&v, &t, 2, r), 0);
    assert_int_equal(v.stride[0], 4);
    r[0] = 5;
    assert_int_equal(stk_tensor_reshape(&v, &t, 2, r), STK_ESHAPE);
    assert_int_equal(stk_tensor_narrow(&v, &t, 0, 1, 2), STK_ESHAPE);
    assert_int_equal(stk_tensor_narrow(&v, &t, 3, 0, 1), -EINVAL);
    assert_int_equal(stk_tensor_init(&t, data, STK_DTYPE_INVALID, 3, s), -EINVAL);
    assert_int_equal(stk_tensor_init(&t, data, STK_DTYPE_F32, 5, s), -EINVAL);
    s[1] = -1;
    assert_int_equal(stk_tensor_init(&t, data, STK_DTYPE_F32, 3, s), -EINVAL);
    assert_string_equal(stk_layer_kind_name(STK_LAYER_CONV2D), "conv2d");
    assert_int_equal(stk_layer_kind_from_name("batchnorm2d"), STK_LAYER_BATCHNORM2D);
    assert_int_equal(stk_layer_kind_from_name("nope"), STK_LAYER_INVALID);
    assert_string_equal(stk_layer_kind_name((stk_layer_kind_t)99), "invalid");
}

/* oneDNN failures come back as STK_EBACKEND with oneDNN's words. */
static void test_backend_errors(void **state)
{
    (void)state;
    stk__backend_t be;
    assert_int_equal(stk__backend_open(&be, STK_DEVICE_CPU), 0);
    /* 3 output channels in 2 groups: the weights cannot match dst. */
    stk__conv_desc_t d = {.n = 1, .ic = 2, .ih = 4, .iw = 4, .oc = 3, .oh = 2, .ow = 2, .kh = 3, .kw = 3, .sh = 1,
                          .sw = 1, .dh = 1, .dw = 1, .groups = 2, .bias = 1};
    stk__op_t *op = NULL;
    assert_int_equal(be.iface->conv_create(be.ctx, &d, &op), STK_EBACKEND);
    assert_null(op);
    assert_non_null(strstr(stk_error_message(), "oneDNN"));
    assert_non_null(strstr(stk_error_message(), "invalid"));
    assert_int_equal(be.iface->set_threads(be.ctx, 0), -EINVAL);
    assert_true(be.iface->max_threads(be.ctx) >= 1);
    stk__backend_close(&be);
    /* No machine has GPU number 4096 (with a GPU, cuda:0 would open). */
    assert_int_equal(stk__backend_open_index(&be, STK_DEVICE_CUDA, 4096), STK_EDEVICE);
    assert_int_equal(stk__backend_open(&be, (stk_device_t)7), STK_EDEVICE);
    assert_int_equal(stk__backend_open_index(&be, STK_DEVICE_CPU, 1), STK_EDEVICE);
    stk_model_config_t cfg;
    stk_model_config_default(&cfg);
    cfg.device = STK_DEVICE_CUDA;
    cfg.device_index = 4096;
    stk_model_builder_t *b = NULL;
    assert_int_equal(stk_model_builder_create(&b), 0);
    assert_int_equal(stk_model_builder_parse(b, "input shape=3\nlinear out=2", NULL), 0);
    stk_model_t *m = NULL;
    assert_int_equal(stk_model_create(&m, b, &cfg), STK_EDEVICE);
    stk_model_config_default(&cfg);
    cfg.batch_size = 0;
    assert_int_equal(stk_model_create(&m, b, &cfg), -EINVAL);
    stk_model_builder_destroy(&b);
}

/* A training forward advances the model's step: two in a row draw
 * different dropout masks with no set_step from the caller; set_step
 * replays one; evaluation forwards neither drop nor advance the step. */
static void test_dropout_steps(void **state)
{
    (void)state;
    stk_model_t *m = model_from_text("input name=data shape=64,1,1\ndropout name=drop p=0.5\n", 4, 3, 1);
    float x[256], y[3][256];
    for (int i = 0; i < 256; i++)
        x[i] = 1.0f;
    stk_tensor_t out;
    assert_int_equal(stk_model_step(m), 0);
    for (int k = 0; k < 3; k++) {
        if (k == 2)
            stk_model_set_step(m, 0);
        assert_int_equal(stk_model_forward(m, x, 4, NULL, NULL, NULL), 0);
        assert_int_equal(stk_model_output(m, "drop", &out), 0);
        memcpy(y[k], out.data, sizeof(y[k]));
    }
    assert_int_equal(stk_model_step(m), 1);
    int zeros = 0;
    for (int i = 0; i < 256; i++) {
        assert_true(y[0][i] == 0.0f || y[0][i] == 2.0f);
        zeros += y[0][i] == 0.0f;
    }
    assert_true(zeros > 64 && zeros < 192);
    assert_true(memcmp(y[0], y[1], sizeof(y[0])) != 0);
    assert_memory_equal(y[0], y[2], sizeof(y[0]));
    stk_model_set_train(m, 0);
    assert_int_equal(stk_model_forward(m, x, 4, NULL, NULL, NULL), 0);
    assert_int_equal(stk_model_output(m, "drop", &out), 0);
    assert_memory_equal(out.data, x, sizeof(x));
    assert_int_equal(stk_model_step(m), 1);
    stk_model_destroy(&m);
}

/* Top-k counts against a count on the host from the logits, through the
 * forward's own labels (counted during the forward) and other labels. */
static void test_count_topk(void **state)
{
    (void)state;
    const int64_t n = 16, k = 5;
    stk_model_t *m = model_from_text("input name=data shape=5,1,1\nlinear name=fc out=5\ncross_entropy\n", n, 4, 1);
    int64_t correct = -1;
    int64_t y[16], y2[16];
    float none[1];
    assert_int_equal(stk_model_count_correct(m, y, &correct), STK_ESTATE);
    assert_int_equal(stk_model_read_logits(m, none, 1), STK_ESTATE);
    float x[16 * 5];
    stk_rng_t r;
    stk_rng_init(&r, 11, 0);
    for (int i = 0; i < n * k; i++)
        x[i] = 4.0f * stk_rng_uniform(&r) - 2.0f;
    for (int i = 0; i < n; i++) {
        y[i] = (int64_t)stk_rng_below(&r, (uint64_t)k);
        y2[i] = (i * 3) % k;
    }
    float loss;
    assert_int_equal(stk_model_forward(m, x, n, y, NULL, &loss), 0);
    const float *z;
    int64_t nb, nk;
    assert_int_equal(stk_model_logits(m, &z, &nb, &nk), 0);
    /* The host copy of the logits, from any device. */
    float host[16 * 5 + 1];
    assert_int_equal(stk_model_read_logits(m, host, 16 * 5 - 1), -ENOSPC);
    assert_int_equal(stk_model_read_logits(m, NULL, 16 * 5), -EINVAL);
    assert_int_equal(stk_model_read_logits(m, host, 16 * 5 + 1), 0);
    assert_memory_equal(host, z, sizeof(float) * 16 * 5);
    for (int pass = 0; pass < 2; pass++) {
        const int64_t *lab = pass ? y2 : y;
        for (int t = 1; t <= 6; t++) {
            int64_t want = 0;
            for (int64_t i = 0; i < n; i++) {
                int64_t above = 0;
                for (int64_t j = 0; j < k; j++)
                    above += z[i * k + j] > z[i * k + lab[i]];
                want += above < t;
            }
            assert_int_equal(stk_model_count_topk(m, lab, t, &correct), 0);
            assert_int_equal(correct, want);
        }
        assert_int_equal(stk_model_count_correct(m, lab, &correct), 0);
        assert_int_equal(stk_model_count_topk(m, lab, (int)k, &nb), 0);
        assert_int_equal(nb, n);
    }
    assert_int_equal(stk_model_count_topk(m, y, 0, &correct), -EINVAL);
    assert_int_equal(stk_model_count_topk(m, NULL, 1, &correct), -EINVAL);
    y2[3] = 5;
    assert_int_equal(stk_model_count_correct(m, y2, &correct), -EINVAL);
    assert_non_null(strstr(stk_error_message(), "sample 3"));
    stk_model_destroy(&m);
    /* No loss layer: no classes to count. */
    m = model_from_text("input name=data shape=5,1,1\nlinear name=fc out=5\n", 2, 4, 1);
    assert_int_equal(stk_model_forward(m, x, 2, NULL, NULL, NULL), 0);
    assert_int_equal(stk_model_count_correct(m, y, &correct), STK_ESTATE);
    stk_model_destroy(&m);
}

/* Every kind has one entry in the layer table, named as the model files
 * and stk_layer_kind_name name it, with the slots every kind needs. */
static void test_layer_table(void **state)
{
    (void)state;
    for (int k = 1; k < STK_LAYER_KIND_COUNT; k++) {
        const stk__layer_class_t *c = stk__layer_class((stk_layer_kind_t)k);
        assert_non_null(c);
        assert_int_equal(c->kind, k);
        assert_string_equal(stk_layer_kind_name((stk_layer_kind_t)k), c->name);
        assert_int_equal(stk_layer_kind_from_name(c->name), k);
        assert_non_null(c->forward);
        assert_true(c->n_inputs >= 0 && c->n_inputs <= 2);
        assert_true((c->n_inputs == 0) == (k == STK_LAYER_INPUT));
        assert_true(!c->plan || c->n_inputs > 0);
        for (const stk__layer_key_t *key = c->keys; key && key->key; key++)
            assert_true(key->off < sizeof(stk_layer_desc_t) && key->off2 < sizeof(stk_layer_desc_t));
    }
    assert_null(stk__layer_class(STK_LAYER_INVALID));
    assert_null(stk__layer_class(STK_LAYER_KIND_COUNT));
    assert_string_equal(stk_layer_kind_name(STK_LAYER_KIND_COUNT), "invalid");
}

/* A model plans each batch size once: alternating sizes (a short last
 * batch) reuse their plans; past STK_MODEL_PLANS sizes the least recently
 * used plan goes. Results do not depend on which plans were made before. */
static void test_plan_cache(void **state)
{
    (void)state;
    stk_model_t *m = residual_model(4);
    assert_int_equal(m->plans_made, 1);
    float x[6 * 72];
    for (size_t i = 0; i < 6 * 72; i++)
        x[i] = (float)((i * 7) % 19) / 19.0f - 0.5f;
    int64_t y[6] = {0, 1, 2, 1, 0, 2};
    float l4 = 0, l3 = 0, l;
    for (int round = 0; round < 5; round++) {
        stk_model_set_step(m, 9);
        assert_int_equal(stk_model_forward(m, x, 4, y, NULL, &l), 0);
        assert_int_equal(stk_model_backward(m), 0);
        if (round == 0)
            l4 = l;
        assert_true(l == l4);
        stk_model_set_step(m, 9);
        assert_int_equal(stk_model_forward(m, x, 3, y, NULL, &l), 0);
        if (round == 0)
            l3 = l;
        assert_true(l == l3);
    }
    assert_int_equal(m->plans_made, 2);
    /* A larger batch grows the shared activations; the old plans stay. */
    assert_int_equal(stk_model_forward(m, x, 6, y, NULL, &l), 0);
    assert_int_equal(m->plans_made, 3);
    stk_model_set_step(m, 9);
    assert_int_equal(stk_model_forward(m, x, 3, y, NULL, &l), 0);
    assert_true(l == l3);
    assert_int_equal(m->plans_made, 3);
    /* Sizes 4, 6, 3 are cached (3 most recent); 5 fills the last slot,
     * then 2 evicts the least recently used (4), which plans again. */
    assert_int_equal(stk_model_set_batch_size(m, 5), 0);
    assert_int_equal(stk_model_set_batch_size(m, 2), 0);
    assert_int_equal(m->plans_made, 5);
    assert_int_equal(stk_model_set_batch_size(m, 6), 0);
    assert_int_equal(stk_model_set_batch_size(m, 3), 0);
    assert_int_equal(m->plans_made, 5);
    stk_model_set_step(m, 9);
    assert_int_equal(stk_model_forward(m, x, 4, y, NULL, &l), 0);
    assert_int_equal(m->plans_made, 6);
    assert_true(l == l4);
    assert_int_equal(stk_model_set_batch_size(m, 0), -EINVAL);
    assert_int_equal(stk_model_batch_size(m), 4);
    stk_model_destroy(&m);
}

/* The constructors build what the model file says, default for default:
 * the same parameters (same seed) and the same summary. */
static void test_constructors(void **state)
{
    (void)state;
    const char *text = "input name=data shape=2,12,12\n"
                       "conv2d name=c1 out=8 kernel=3 pad=1\n"
                       "batchnorm2d name=bn1\n"
                       "relu name=r1\n"
                       "maxpool2d name=p1 kernel=2\n"
                       "conv2d name=c2 out=8 kernel=3 stride=2 pad=1 dilation=2\n"
                       "leaky_relu name=l1 slope=0.2\n"
                       "add name=res inputs=c2,l1\n"
                       "concat name=cat inputs=res,c2\n"
                       "avgpool2d name=p2 kernel=3 stride=1 pad=1\n"
                       "gelu name=g\nsigmoid name=s\ntanh name=t\n"
                       "global_avgpool name=gap\nflatten name=f\n"
                       "linear name=fc out=5 bias=0\n"
                       "dropout name=d p=0.25\n"
                       "cross_entropy name=loss smoothing=0.1\n";
    stk_layer_desc_t c2 = stk_layer_conv2d("c2", 8, 3, 2, 1), fc = stk_layer_linear("fc", 5);
    c2.dilation_h = c2.dilation_w = 2;
    fc.bias = 0;
    const stk_layer_desc_t layers[] = {
        stk_layer_input("data", 2, 12, 12), stk_layer_conv2d("c1", 8, 3, 1, 1), stk_layer_batchnorm2d("bn1"),
        stk_layer_relu("r1"), stk_layer_maxpool2d("p1", 2, 0, 0), c2, stk_layer_leaky_relu("l1", 0.2f),
        stk_layer_add("res", "c2", "l1"), stk_layer_concat("cat", "res", "c2"), stk_layer_avgpool2d("p2", 3, 1, 1),
        stk_layer_gelu("g"), stk_layer_sigmoid("s"), stk_layer_tanh("t"), stk_layer_global_avgpool("gap"),
        stk_layer_flatten("f"), fc, stk_layer_dropout("d", 0.25f), stk_layer_cross_entropy("loss", 0.1f),
    };
    stk_model_builder_t *b = NULL;
    assert_int_equal(stk_model_builder_create(&b), 0);
    for (size_t i = 0; i < sizeof(layers) / sizeof(layers[0]); i++)
        if (stk_model_builder_add(b, &layers[i]) != 0)
            fail_msg("layer %zu: %s", i, stk_error_message());
    stk_model_config_t cfg;
    stk_model_config_default(&cfg);
    cfg.batch_size = 2;
    cfg.seed = 5;
    stk_model_t *a = NULL, *m = model_from_text(text, 2, 5, 1);
    assert_int_equal(stk_model_create(&a, b, &cfg), 0);
    stk_model_builder_destroy(&b);
    size_t na = stk_model_state_size(a), nm = stk_model_state_size(m), wa, wm;
    assert_int_equal(na, nm);
    char *sa = malloc(na), *sm = malloc(nm);
    assert_int_equal(stk_model_state_save_mem(a, sa, na, &wa), 0);
    assert_int_equal(stk_model_state_save_mem(m, sm, nm, &wm), 0);
    assert_memory_equal(sa, sm, na);
    char ta[8192], tm[8192];
    assert_true(stk_model_summary(a, ta, sizeof(ta)) < sizeof(ta));
    assert_true(stk_model_summary(m, tm, sizeof(tm)) < sizeof(tm));
    assert_string_equal(ta, tm);
    free(sa);
    free(sm);
    stk_model_destroy(&a);
    stk_model_destroy(&m);
    /* Defaults by pointer, NULL-safe. */
    stk_layer_desc_default(NULL, STK_LAYER_CONV2D);
    stk_model_config_default(NULL);
    stk_layer_desc_t d;
    stk_layer_desc_default(&d, STK_LAYER_CONV2D);
    assert_int_equal(d.kernel_h, 3);
    assert_int_equal(d.stride_w, 1);
    assert_int_equal(d.groups, 1);
    assert_int_equal(d.bias, 1);
}

/* ------------------------------------------------------------ CPU threads */

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* A fake /proc and /sys under dir: mountinfo lines, /proc/self/cgroup and
 * quota files; the limit is the smallest quota from the process's cgroup
 * up, rounded up, for v2 and v1 alike. */
static void test_cgroup_quota(void **state)
{
    (void)state;
    char dir[] = "/tmp/stk-cgroup-XXXXXX", p[512], mi[512], cg[512];
    assert_non_null(mkdtemp(dir));
    snprintf(mi, sizeof(mi), "%s/mountinfo", dir);
    snprintf(cg, sizeof(cg), "%s/cgroup", dir);
    /* v2: job (1.5 CPUs) inside user (3 CPUs): 2. */
    snprintf(p, sizeof(p), "mkdir -p %s/sys/fs/cgroup/user/job %s/sys/fs/cgroup/cpu/a", dir, dir);
    assert_int_equal(system(p), 0);
    write_file(mi, "30 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n");
    write_file(cg, "0::/user/job\n");
    snprintf(p, sizeof(p), "%s/sys/fs/cgroup/user/job/cpu.max", dir);
    write_file(p, "150000 100000\n");
    snprintf(p, sizeof(p), "%s/sys/fs/cgroup/user/cpu.max", dir);
    write_file(p, "300000 100000\n");
    assert_int_equal(stk__cgroup_cpu_limit(mi, cg, dir), 2);
    /* The parent's limit is lower: it wins. */
    write_file(p, "50000 100000\n");
    assert_int_equal(stk__cgroup_cpu_limit(mi, cg, dir), 1);
    /* No limit anywhere, or a malformed file: 0. */
    write_file(p, "max 100000\n");
    snprintf(p, sizeof(p), "%s/sys/fs/cgroup/user/job/cpu.max", dir);
    write_file(p, "max 100000\n");
    assert_int_equal(stk__cgroup_cpu_limit(mi, cg, dir), 0);
    write_file(p, "garbage\n");
    assert_int_equal(stk__cgroup_cpu_limit(mi, cg, dir), 0);
    /* Inside a cgroup namespace the mount's root prefixes the path. */
    write_file(p, "250000 100000\n");
    write_file(mi, "30 1 0:26 /user /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
    snprintf(p, sizeof(p), "mkdir -p %s/sys/fs/cgroup/job", dir);
    assert_int_equal(system(p), 0);
    snprintf(p, sizeof(p), "%s/sys/fs/cgroup/job/cpu.max", dir);
    write_file(p, "250000 100000\n");
    assert_int_equal(stk__cgroup_cpu_limit(mi, cg, dir), 3);
    /* v1: the hierarchy with the cpu controller; -1 is no quota. */
    write_file(mi, "25 1 0:22 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
                   "26 1 0:23 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu,cpuacct\n");
    write_file(cg, "4:memory:/x\n3:cpu,cpuacct:/a\n0::/\n");
    snprintf(p, sizeof(p), "%s/sys/fs/cgroup/cpu/a/cpu.cfs_quota_us", dir);
    write_file(p, "200000\n");
    snprintf(p, sizeof(p), "%s/sys/fs/cgroup/cpu/a/cpu.cfs_period_us", dir);
    write_file(p, "100000\n");
    assert_int_equal(stk__cgroup_cpu_limit(mi, cg, dir), 2);
    snprintf(p, sizeof(p), "%s/sys/fs/cgroup/cpu/a/cpu.cfs_quota_us", dir);
    write_file(p, "-1\n");
    assert_int_equal(stk__cgroup_cpu_limit(mi, cg, dir), 0);
    /* Missing files: no limit, no error. */
    assert_int_equal(stk__cgroup_cpu_limit("/nonexistent/mountinfo", cg, dir), 0);
    snprintf(p, sizeof(p), "rm -rf %s", dir);
    assert_int_equal(system(p), 0);
    /* This machine: at least 1, at most the affinity mask. */
    int n = stk_engine_cpu_count();
    assert_true(n >= 1 && n <= sysconf(_SC_NPROCESSORS_ONLN));
}

/* The child side of test_passive_wait: asks for passive waiting (executes
 * itself again when nothing was chosen) and says what libgomp read. */
static int policy_probe(char **argv)
{
    int rc = stk_engine_passive_wait(argv);
    printf("policy %d rc %d\n", (int)stk_engine_wait_policy(), rc);
    return rc == 0 ? 0 : 1;
}

/* Runs this test program as a policy probe with the given wait-policy
 * variable (NULL: none) and OMP_DISPLAY_ENV=verbose, so that libgomp
 * prints what it parsed at each start; returns the output. */
static char *run_probe(const char *policy)
{
    char cmd[4096], self[2048];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    assert_true(n > 0);
    self[n] = '\0';
    snprintf(cmd, sizeof(cmd), "env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT %s%s OMP_DISPLAY_ENV=verbose '%s' --policy-probe 2>&1",
             policy ? "OMP_WAIT_POLICY=" : "", policy ? policy : "", self);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    char *out = calloc(1, 65536);
    size_t len = fread(out, 1, 65535, f);
    out[len] = '\0';
    assert_int_equal(pclose(f), 0);
    return out;
}

static int count_of(const char *s, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(s, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

/* libgomp reads its wait policy once, before main; stk_engine_passive_wait
 * executes the program again with OMP_WAIT_POLICY=passive, and libgomp's
 * own report (OMP_DISPLAY_ENV) shows the spin count went from its default
 * to 0. A policy the user set is left alone (one start). */
static void test_passive_wait(void **state)
{
    (void)state;
#ifdef _OPENMP
    char *out = run_probe(NULL);
    if (count_of(out, "GOMP_SPINCOUNT") != 2 || !strstr(out, "GOMP_SPINCOUNT = '300000'") ||
        !strstr(strstr(out, "GOMP_SPINCOUNT = '300000'") + 1, "GOMP_SPINCOUNT = '0'") ||
        !strstr(out, "policy 1 rc 0"))
        fail_msg("passive wait did not take effect:\n%s", out);
    free(out);
    out = run_probe("active");
    if (count_of(out, "GOMP_SPINCOUNT") != 1 || !strstr(out, "policy 2 rc 0"))
        fail_msg("a user's policy was not left alone:\n%s", out);
    free(out);
    out = run_probe("passive");
    if (count_of(out, "GOMP_SPINCOUNT = '0'") != 1 || !strstr(out, "policy 1 rc 0"))
        fail_msg("passive from the start:\n%s", out);
    free(out);
#else
    skip();
#endif
}

/* Precision: fp32 and tf32 (as fp32) on the CPU, bf16 and fp16 emulated
 * (tests/unit/test_amp.c checks their numbers), a value that is none of
 * them refused naming it; the unscale slot multiplies and reports
 * non-finite gradients. */
static void test_precision_and_unscale(void **state)
{
    (void)state;
    static const char text[] = "input shape=4\nlinear name=fc out=3\ncross_entropy\n";
    assert_string_equal(stk_precision_name(STK_PRECISION_TF32), "tf32");
    assert_string_equal(stk_precision_name((stk_precision_t)9), "?");
    stk_model_builder_t *b = NULL;
    assert_int_equal(stk_model_builder_create(&b), 0);
    assert_int_equal(stk_model_builder_parse(b, text, "test"), 0);
    stk_model_config_t cfg;
    stk_model_config_default(&cfg);
    assert_int_equal(cfg.precision, STK_PRECISION_FP32);
    stk_model_t *m = NULL;
    for (int p = STK_PRECISION_BF16; p <= STK_PRECISION_FP16; p++) {
        cfg.precision = (stk_precision_t)p;
        assert_int_equal(stk_model_create(&m, b, &cfg), 0);
        assert_int_equal(stk_model_precision(m), p);
        stk_model_destroy(&m);
    }
    cfg.precision = (stk_precision_t)9;
    assert_int_equal(stk_model_create(&m, b, &cfg), STK_ECONFIG);
    assert_null(m);
    assert_non_null(strstr(stk_error_message(), "model: precision ?"));
    assert_non_null(strstr(stk_error_message(), "no precision 9"));
    cfg.precision = STK_PRECISION_TF32;
    assert_int_equal(stk_model_create(&m, b, &cfg), 0);
    assert_int_equal(stk_model_precision(m), STK_PRECISION_FP32);
    stk_model_builder_destroy(&b);

    size_t n;
    float *g = stk_model_grads(m, &n);
    for (size_t i = 0; i < n; i++)
        g[i] = (float)i * 4.0f;
    int bad = 7;
    assert_int_equal(stk_model_unscale_grads(m, 0.25f, &bad), 0);
    assert_int_equal(bad, 0);
    for (size_t i = 0; i < n; i++)
        assert_true(g[i] == (float)i);
    g[n - 1] = INFINITY;
    assert_int_equal(stk_model_unscale_grads(m, 0.5f, &bad), 0);
    assert_int_equal(bad, 1);
    g[n - 1] = 0;
    g[0] = NAN;
    assert_int_equal(stk_model_unscale_grads(m, 1.0f, &bad), 0);
    assert_int_equal(bad, 1);
    assert_int_equal(stk_model_unscale_grads(m, 1.0f, NULL), -EINVAL);
    stk_model_destroy(&m);
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "--policy-probe"))
        return policy_probe(argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tensor),
        cmocka_unit_test(test_fixtures_layers),
        cmocka_unit_test(test_fixture_network),
        cmocka_unit_test(test_fd_layers),
        cmocka_unit_test(test_model_file_errors),
        cmocka_unit_test(test_reference_model),
        cmocka_unit_test(test_state_roundtrip),
        cmocka_unit_test(test_training_mechanics),
        cmocka_unit_test(test_grad_hook),
        cmocka_unit_test(test_backend_errors),
        cmocka_unit_test(test_dropout_steps),
        cmocka_unit_test(test_count_topk),
        cmocka_unit_test(test_layer_table),
        cmocka_unit_test(test_plan_cache),
        cmocka_unit_test(test_constructors),
        cmocka_unit_test(test_cgroup_quota),
        cmocka_unit_test(test_passive_wait),
        cmocka_unit_test(test_precision_and_unscale),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
