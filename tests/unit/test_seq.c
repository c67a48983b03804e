/* SPDX-License-Identifier: MIT */
/* Sequence models through the public engine API: embedding, lstm / gru,
 * the heads and the per-step loss against PyTorch (whole-model fixtures
 * from tools/gen_rnn_fixtures.py: loss and every parameter gradient),
 * batches shorter than the model's steps, PyTorch's parameter names, and
 * the errors of model files and forward calls. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "test_util.h"
#include "engine/model.h"
#include "stoker/engine.h"

static stk_model_t *model_from_text(const char *text, int64_t batch)
{
    stk_model_builder_t *b = NULL;
    assert_int_equal(stk_model_builder_create(&b), 0);
    if (stk_model_builder_parse(b, text, "test") < 0)
        fail_msg("parse: %s", stk_error_message());
    stk_model_config_t cfg;
    stk_model_config_default(&cfg);
    cfg.batch_size = batch;
    cfg.seed = 3;
    stk_model_t *m = NULL;
    if (stk_model_create(&m, b, &cfg) < 0)
        fail_msg("create: %s", stk_error_message());
    stk_model_builder_destroy(&b);
    return m;
}

/* The error code of building text, with its message checked for want. */
static int build_error(const char *text, const char *want)
{
    stk_model_builder_t *b = NULL;
    assert_int_equal(stk_model_builder_create(&b), 0);
    int rc = stk_model_builder_parse(b, text, "bad.model");
    stk_model_t *m = NULL;
    if (rc == 0)
        rc = stk_model_create(&m, b, NULL);
    stk_model_builder_destroy(&b);
    stk_model_destroy(&m);
    if (rc == 0)
        fail_msg("built, expected an error with '%s'", want);
    if (!strstr(stk_error_message(), want))
        fail_msg("error '%s' does not say '%s'", stk_error_message(), want);
    return rc;
}

typedef struct fixture {
    char *buf;
    stk__st_file_t f;
} fixture_t;

static void fixture_open(fixture_t *fx, const char *name)
{
    char path[512];
    size_t len = 0;
    snprintf(path, sizeof(path), "%s/rnn/%s.safetensors", data_dir(), name);
    if (!(fx->buf = read_file(path, &len)))
        fail_msg("cannot read %s", path);
    if (stk__safetensors_parse(fx->buf, len, &fx->f) < 0)
        fail_msg("%s: %s", path, stk_error_message());
}

static void fixture_close(fixture_t *fx)
{
    stk__safetensors_free(&fx->f);
    free(fx->buf);
}

/* A copy of a fixture tensor (the file's data need not be aligned). */
static void *fx_copy(const fixture_t *fx, const char *name, size_t *bytes)
{
    const stk__st_entry_t *e = stk__safetensors_find(&fx->f, name);
    if (!e)
        return NULL;
    size_t n = (size_t)(e->end - e->begin);
    void *p = malloc(n ? n : 1);
    assert_non_null(p);
    memcpy(p, fx->f.data + e->begin, n);
    if (bytes)
        *bytes = n;
    return p;
}

static void expect_close(const char *what, const float *a, const float *b, size_t n, double tol_abs, double tol_rel)
{
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > tol_abs + tol_rel * fabs((double)b[i]))
            fail_msg("%s[%zu]: %.8g, expected %.8g", what, i, (double)a[i], (double)b[i]);
    }
}

/* Copies every "param.<name>" of the fixture into the model's parameter
 * of that name; returns how many. */
static int load_params(stk_model_t *m, const fixture_t *fx)
{
    float *params = stk_model_params(m, NULL);
    int count = 0;
    for (size_t k = 0; k < fx->f.n; k++) {
        const stk__st_entry_t *e = &fx->f.entries[k];
        if (strncmp(e->name, "param.", 6) != 0)
            continue;
        stk_param_info_t info;
        int is_buffer = 0;
        if (stk_model_find(m, e->name + 6, &info, &is_buffer) < 0 || is_buffer)
            fail_msg("the model has no parameter '%s'", e->name + 6);
        assert_int_equal(info.count * 4, (size_t)(e->end - e->begin));
        memcpy(params + info.offset, fx->f.data + e->begin, info.count * 4);
        count++;
    }
    return count;
}

/* Forward and backward of a fixture's batch on m; checks loss and every
 * parameter gradient against PyTorch's. steps: the batch's padded length
 * (the fixture's, which may be shorter than the model's). */
static void run_case(stk_model_t *m, const fixture_t *fx, const char *name)
{
    int64_t n = strtol(stk__safetensors_meta(&fx->f, "batch"), NULL, 10);
    int64_t t = strtol(stk__safetensors_meta(&fx->f, "steps"), NULL, 10);
    int64_t *lengths = fx_copy(fx, "lengths", NULL);
    int64_t *tokens = fx_copy(fx, "tokens", NULL), *targets = fx_copy(fx, "targets", NULL);
    int64_t *labels = fx_copy(fx, "labels", NULL);
    float *x = fx_copy(fx, "x", NULL), *loss_ref = fx_copy(fx, "loss", NULL);
    stk_tensor_t in, tg;
    if (tokens) {
        assert_int_equal(stk_tensor_init(&in, tokens, STK_DTYPE_I64, 2, (int64_t[]){n, t}), 0);
    } else {
        int64_t f = m->layers[0].w;
        assert_int_equal(stk_tensor_init(&in, x, STK_DTYPE_F32, 3, (int64_t[]){n, t, f}), 0);
    }
    in.lengths = lengths;
    if (targets)
        assert_int_equal(stk_tensor_init(&tg, targets, STK_DTYPE_I64, 2, (int64_t[]){n, t}), 0);
    else
        assert_int_equal(stk_tensor_init(&tg, labels, STK_DTYPE_I64, 1, (int64_t[]){n}), 0);
    stk_model_zero_grad(m);
    float loss = 0;
    if (stk_model_forward_tensor(m, &in, &tg, &loss) < 0)
        fail_msg("%s: forward: %s", name, stk_error_message());
    if (fabs(loss - loss_ref[0]) > 1e-5 * (1 + fabs(loss_ref[0])))
        fail_msg("%s: loss %.8g, PyTorch %.8g", name, (double)loss, (double)loss_ref[0]);
    if (stk_model_backward(m) < 0)
        fail_msg("%s: backward: %s", name, stk_error_message());
    float *grads = stk_model_grads(m, NULL);
    int checked = 0;
    for (size_t k = 0; k < fx->f.n; k++) {
        const stk__st_entry_t *e = &fx->f.entries[k];
        if (strncmp(e->name, "grad.", 5) != 0)
            continue;
        stk_param_info_t info;
        int is_buffer;
        assert_int_equal(stk_model_find(m, e->name + 5, &info, &is_buffer), 0);
        float *ref = fx_copy(fx, e->name, NULL);
        char what[200];
        snprintf(what, sizeof(what), "%s %s", name, e->name);
        expect_close(what, grads + info.offset, ref, info.count, 2e-6, 1e-4);
        free(ref);
        checked++;
    }
    assert_true(checked == (int)stk_model_num_params(m));
    free(lengths);
    free(tokens);
    free(targets);
    free(labels);
    free(x);
    free(loss_ref);
}

static void check_model(const char *name, const char *replace_from, const char *replace_to)
{
    fixture_t fx;
    fixture_open(&fx, name);
    const char *text = stk__safetensors_meta(&fx.f, "model");
    assert_non_null(text);
    char buf[1024];
    snprintf(buf, sizeof(buf), "%s", text);
    for (char *c = buf; *c; c++) /* lines are joined by '|' in the fixture */
        if (*c == '|')
            *c = '\n';
    if (replace_from) { /* the same model with more steps than the batch has */
        char *at = strstr(buf, replace_from);
        assert_non_null(at);
        char tail[1024];
        snprintf(tail, sizeof(tail), "%s", at + strlen(replace_from));
        snprintf(at, sizeof(buf) - (size_t)(at - buf), "%s%s", replace_to, tail);
    }
    int64_t n = strtol(stk__safetensors_meta(&fx.f, "batch"), NULL, 10);
    stk_model_t *m = model_from_text(buf, n);
    assert_true(load_params(m, &fx) > 0);
    run_case(m, &fx, name);
    /* twice: plans and primitives are reused */
    run_case(m, &fx, name);
    stk_model_destroy(&m);
    fixture_close(&fx);
}

static void test_pytorch_models(void **state)
{
    (void)state;
    char path[512];
    size_t len;
    snprintf(path, sizeof(path), "%s/rnn/models.txt", data_dir());
    char *list = read_file(path, &len);
    assert_non_null(list);
    int cases = 0;
    for (char *line = strtok(list, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#' || !line[0])
            continue;
        check_model(line, NULL, NULL);
        cases++;
    }
    free(list);
    assert_int_equal(cases, 3);
}

/* A model of 9 steps fed batches of 6: the model pads; same numbers. */
static void test_shorter_batches(void **state)
{
    (void)state;
    check_model("model_lm", "steps=6", "steps=9");
    check_model("model_gru_bi_mean", "steps=6", "steps=9");
}

/* Parameter names and shapes are torch.nn.LSTM's, so a saved state loads
 * into PyTorch (tools/check_lstm_torch.py does it). */
static void test_torch_names(void **state)
{
    (void)state;
    stk_model_t *m = model_from_text("input steps=4 features=3\n"
                                     "lstm name=lstm hidden=5 layers=2 bidirectional=1\n"
                                     "seq_last\nlinear name=fc out=2\ncross_entropy\n",
                                     2);
    static const char *want[] = {"lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0", "lstm.bias_hh_l0",
                                 "lstm.weight_ih_l0_reverse", "lstm.weight_hh_l0_reverse", "lstm.bias_ih_l0_reverse",
                                 "lstm.bias_hh_l0_reverse", "lstm.weight_ih_l1", "lstm.weight_hh_l1",
                                 "lstm.bias_ih_l1", "lstm.bias_hh_l1", "lstm.weight_ih_l1_reverse",
                                 "lstm.weight_hh_l1_reverse", "lstm.bias_ih_l1_reverse", "lstm.bias_hh_l1_reverse",
                                 "fc.weight", "fc.bias"};
    static const int64_t rows[] = {20, 20, 20, 20, 20, 20, 20, 20, 20, 20, 20, 20, 20, 20, 20, 20, 2, 2};
    static const int64_t cols[] = {3, 5, 0, 0, 3, 5, 0, 0, 10, 5, 0, 0, 10, 5, 0, 0, 10, 0};
    assert_int_equal(stk_model_num_params(m), 18);
    for (size_t i = 0; i < 18; i++) {
        stk_param_info_t info;
        assert_int_equal(stk_model_param_info(m, i, &info), 0);
        assert_string_equal(info.name, want[i]);
        assert_int_equal(info.shape[0], rows[i]);
        assert_int_equal(info.ndim, cols[i] ? 2 : 1);
        if (cols[i])
            assert_int_equal(info.shape[1], cols[i]);
    }
    /* torch's init bound 1/sqrt(hidden) */
    float *p = stk_model_params(m, NULL);
    stk_param_info_t info;
    assert_int_equal(stk_model_param_info(m, 0, &info), 0);
    float mx = 0;
    for (size_t j = 0; j < info.count; j++)
        mx = fabsf(p[info.offset + j]) > mx ? fabsf(p[info.offset + j]) : mx;
    assert_true(mx <= 1.0f / sqrtf(5.0f) && mx > 0.3f);
    int64_t shape[4];
    stk_model_input_shape(m, shape);
    assert_int_equal(shape[1], 4);
    assert_int_equal(shape[3], 3);
    assert_int_equal(stk_model_input_steps(m), 4);
    assert_int_equal(stk_model_input_dtype(m), STK_DTYPE_F32);
    stk_model_destroy(&m);
}

/* The constructors give what the model-file keys give. */
static void test_constructors(void **state)
{
    (void)state;
    stk_layer_desc_t layers[] = {
        stk_layer_input_tokens("text", 7),        stk_layer_embedding("emb", 30, 6, 0),
        stk_layer_gru("gru", 5, 2, 1, 0.25f),      stk_layer_lstm("lstm", 4, 1, 0, 0.0f),
        stk_layer_seq_mean("mean"),               stk_layer_linear("fc", 3),
        stk_layer_cross_entropy("loss", 0.0f),
    };
    stk_model_builder_t *b = NULL;
    assert_int_equal(stk_model_builder_create(&b), 0);
    for (size_t i = 0; i < sizeof(layers) / sizeof(layers[0]); i++)
        if (stk_model_builder_add(b, &layers[i]) < 0)
            fail_msg("add %zu: %s", i, stk_error_message());
    stk_model_t *m = NULL, *f = NULL;
    assert_int_equal(stk_model_create(&m, b, NULL), 0);
    stk_model_builder_destroy(&b);
    f = model_from_text("input name=text steps=7 tokens=1\nembedding name=emb vocab=30 dim=6 padding_idx=0\n"
                        "gru name=gru hidden=5 layers=2 bidirectional=1 dropout=0.25\nlstm name=lstm hidden=4\n"
                        "seq_mean name=mean\nlinear name=fc out=3\ncross_entropy name=loss\n",
                        32);
    size_t nm = 0, nf = 0;
    stk_model_params(m, &nm);
    stk_model_params(f, &nf);
    assert_int_equal(nm, nf);
    assert_int_equal(stk_model_num_params(m), stk_model_num_params(f));
    assert_int_equal(stk_model_num_classes(m), 3);
    assert_int_equal(stk_model_input_steps(m), 7);
    assert_int_equal(stk_model_input_dtype(m), STK_DTYPE_I64);
    stk_layer_desc_t s = stk_layer_input_sequence("x", 28, 28);
    assert_int_equal(s.steps, 28);
    assert_int_equal(s.in_c, 28);
    assert_int_equal(s.tokens, 0);
    stk_model_destroy(&m);
    stk_model_destroy(&f);
}

/* The LM's embedding: rows no token picked, and the padding row, get no
 * gradient; loss_count is the counted steps. */
static void test_embedding_rows(void **state)
{
    (void)state;
    stk_model_t *m = model_from_text("input steps=5 tokens=1\n"
                                     "embedding name=emb vocab=20 dim=4 padding_idx=0\n"
                                     "gru name=g hidden=6\nlinear name=o out=20\ncross_entropy ignore_index=-1\n",
                                     2);
    int64_t tok[10] = {3, 5, 3, 0, 0, 7, 0, 9, 0, 0}; /* sample 1 holds the padding id inside */
    int64_t tg[10] = {5, 3, -1, 0, 0, 1, 2, 3, 4, 0};
    int64_t lengths[2] = {3, 4};
    stk_tensor_t in, target;
    assert_int_equal(stk_tensor_init(&in, tok, STK_DTYPE_I64, 2, (int64_t[]){2, 5}), 0);
    in.lengths = lengths;
    assert_int_equal(stk_tensor_init(&target, tg, STK_DTYPE_I64, 2, (int64_t[]){2, 5}), 0);
    float loss;
    stk_model_zero_grad(m);
    assert_int_equal(stk_model_forward_tensor(m, &in, &target, &loss), 0);
    assert_int_equal(stk_model_loss_count(m), 2 + 4);
    assert_int_equal(stk_model_backward(m), 0);
    assert_int_equal(stk_model_loss_count(m), 6);
    int64_t correct = -1;
    assert_int_equal(stk_model_count_correct(m, tg, &correct), 0);
    assert_true(correct >= 0 && correct <= 6);
    stk_param_info_t info;
    int isb;
    assert_int_equal(stk_model_find(m, "emb.weight", &info, &isb), 0);
    const float *g = stk_model_grads(m, NULL) + info.offset;
    const float *w = stk_model_params(m, NULL) + info.offset;
    for (int r = 0; r < 20; r++) {
        int used = r == 3 || r == 5 || r == 7 || r == 9;
        double s = 0;
        for (int j = 0; j < 4; j++)
            s += fabs(g[r * 4 + j]);
        if (used)
            assert_true(s > 0);
        else
            assert_true(s == 0.0);
        if (r == 0)
            for (int j = 0; j < 4; j++)
                assert_true(w[j] == 0.0f);
    }
    stk_model_destroy(&m);
}

static void test_model_file_errors(void **state)
{
    (void)state;
    assert_int_equal(build_error("input steps=4 tokens=1\nlstm hidden=3\n", "token ids need an embedding first"),
                     STK_ESHAPE);
    assert_int_equal(build_error("input shape=3\nlstm hidden=3\n", "needs a sequence of features"), STK_ESHAPE);
    assert_int_equal(build_error("input steps=4 features=3\nlstm\n", "key 'hidden': missing"), STK_ECONFIG);
    assert_int_equal(build_error("input steps=4 features=3\nlstm hidden=3 dropout=1\n", "key 'dropout'"),
                     STK_ECONFIG);
    assert_int_equal(build_error("input steps=4 features=3\ngru hidden=3 in=4\n", "key 'in': declared 4"),
                     STK_ESHAPE);
    assert_int_equal(build_error("input steps=4 tokens=1\nembedding dim=3\n", "key 'vocab'"), STK_ECONFIG);
    assert_int_equal(build_error("input steps=4 tokens=1\nembedding vocab=5 dim=3 padding_idx=5\n",
                                 "key 'padding_idx'"),
                     STK_ECONFIG);
    assert_int_equal(build_error("input steps=4 features=3\nembedding vocab=5 dim=3\n", "needs token ids"),
                     STK_ESHAPE);
    assert_int_equal(build_error("input shape=3\nseq_last\n", "needs a sequence"), STK_ESHAPE);
    assert_int_equal(build_error("input steps=4\nrelu\n", "key 'features': missing"), STK_ECONFIG);
    assert_int_equal(build_error("input tokens=1 shape=3\nrelu\n", "key 'tokens'"), STK_ECONFIG);
    assert_int_equal(build_error("input\nrelu\n", "key 'shape': missing"), STK_ECONFIG);
}

static void test_forward_errors(void **state)
{
    (void)state;
    stk_model_t *m = model_from_text("input steps=4 tokens=1\nembedding vocab=6 dim=3\nlstm hidden=3\n"
                                     "linear out=6\ncross_entropy\n",
                                     2);
    int64_t tok[8] = {1, 2, 3, 4, 1, 2, 0, 0}, tg[8] = {1, 2, 3, 4, 1, 2, 0, 0}, lengths[2] = {4, 2};
    stk_tensor_t in, target;
    float loss;
    assert_int_equal(stk_tensor_init(&in, tok, STK_DTYPE_I64, 2, (int64_t[]){2, 4}), 0);
    in.lengths = lengths;
    assert_int_equal(stk_tensor_init(&target, tg, STK_DTYPE_I64, 2, (int64_t[]){2, 4}), 0);
    assert_int_equal(stk_model_forward_tensor(m, &in, &target, &loss), 0);
    /* a length past the batch's steps */
    lengths[1] = 5;
    assert_int_equal(stk_model_forward_tensor(m, &in, &target, &loss), -EINVAL);
    assert_non_null(strstr(stk_error_message(), "length 5 of sample 1"));
    lengths[1] = 2;
    /* a token outside the vocabulary, a target outside the classes */
    tok[5] = 6;
    assert_int_equal(stk_model_forward_tensor(m, &in, &target, &loss), -EINVAL);
    assert_non_null(strstr(stk_error_message(), "index 6 is outside [0, 6)"));
    tok[5] = 2;
    tg[1] = 9;
    assert_int_equal(stk_model_forward_tensor(m, &in, &target, &loss), -EINVAL);
    assert_non_null(strstr(stk_error_message(), "target 9 of sample 0, step 1"));
    tg[1] = 2;
    /* past the end, a bad target is not read */
    tg[7] = 99;
    assert_int_equal(stk_model_forward_tensor(m, &in, &target, &loss), 0);
    /* more steps than the model takes; f32 where ids go; per-sample labels */
    stk_tensor_t wide, flt, lab;
    int64_t big[10] = {0};
    assert_int_equal(stk_tensor_init(&wide, big, STK_DTYPE_I64, 2, (int64_t[]){2, 5}), 0);
    assert_int_equal(stk_model_forward_tensor(m, &wide, NULL, NULL), STK_ESHAPE);
    float fx[8] = {0};
    assert_int_equal(stk_tensor_init(&flt, fx, STK_DTYPE_F32, 2, (int64_t[]){2, 4}), 0);
    assert_int_equal(stk_model_forward_tensor(m, &flt, NULL, NULL), STK_ESHAPE);
    assert_int_equal(stk_tensor_init(&lab, tg, STK_DTYPE_I64, 1, (int64_t[]){2}), 0);
    assert_int_equal(stk_model_forward_tensor(m, &in, &lab, &loss), STK_ESHAPE);
    assert_non_null(strstr(stk_error_message(), "per-step"));
    /* a later good call works; top-k of per-step labels is refused */
    assert_int_equal(stk_model_forward_tensor(m, &in, &target, &loss), 0);
    int64_t c;
    assert_int_equal(stk_model_count_topk(m, tg, 2, &c), -EINVAL);
    stk_model_destroy(&m);
}

/* A sequence of features given as an image-shaped tensor of the same
 * element count (row-sequential images), and narrow keeping lengths. */
static void test_image_as_sequence(void **state)
{
    (void)state;
    stk_model_t *m = model_from_text("input steps=4 features=4\nlstm hidden=5 layers=2\nseq_last\n"
                                     "linear out=3\ncross_entropy\n",
                                     3);
    float img[3 * 16];
    for (int i = 0; i < 48; i++)
        img[i] = (float)((i * 37) % 11) / 11.0f;
    int64_t labels[3] = {0, 1, 2};
    stk_tensor_t a, b, lab;
    assert_int_equal(stk_tensor_init(&a, img, STK_DTYPE_F32, 4, (int64_t[]){3, 1, 4, 4}), 0);
    assert_int_equal(stk_tensor_init(&b, img, STK_DTYPE_F32, 3, (int64_t[]){3, 4, 4}), 0);
    assert_int_equal(stk_tensor_init(&lab, labels, STK_DTYPE_I64, 1, (int64_t[]){3}), 0);
    float la, lb;
    assert_int_equal(stk_model_forward_tensor(m, &a, &lab, &la), 0);
    assert_int_equal(stk_model_forward_tensor(m, &b, &lab, &lb), 0);
    assert_true(la == lb);
    /* narrowing the batch keeps each sample's length */
    int64_t lengths[3] = {4, 2, 3};
    b.lengths = lengths;
    stk_tensor_t tail;
    assert_int_equal(stk_tensor_narrow(&tail, &b, 0, 1, 2), 0);
    assert_true(tail.lengths == lengths + 1);
    stk_model_destroy(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pytorch_models),    cmocka_unit_test(test_shorter_batches),
        cmocka_unit_test(test_torch_names),       cmocka_unit_test(test_embedding_rows),
        cmocka_unit_test(test_model_file_errors), cmocka_unit_test(test_forward_errors),
        cmocka_unit_test(test_image_as_sequence), cmocka_unit_test(test_constructors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
