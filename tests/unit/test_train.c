/* SPDX-License-Identifier: MIT */
/* train/: batch helpers and the inputs converter (normalizing here equals
 * normalizing in the workers, bit for bit), the stepper against a
 * hand-written loop (bit-identical parameters, short last group), clipping,
 * evaluation against the logits scored by hand, train-state checkpoints
 * (round trip, errors, two runs in one folder), and the loop: resume after
 * a stop anywhere (mid-epoch, the epoch's last step, after an error) gives
 * the parameters of an uninterrupted run. */
#define _GNU_SOURCE
#include <errno.h>
#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "stoker/stoker.h"

#define IMG 12
#define CLASSES 3

static char tmpdir[64];

static int setup(void **state)
{
    (void)state;
    strcpy(tmpdir, "/tmp/stk-trainlib-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static void expect_msg(const char *needle)
{
    if (!strstr(stk_error_message(), needle))
        fail_msg("message '%s' lacks '%s'", stk_error_message(), needle);
}

/* n samples of IMG x IMG bytes, 3 classes (a bright square whose place
 * depends on the class, on noise); label bad_at (if < n) is out of range. */
static stk_dataset_t *make_dataset(uint64_t n, uint64_t seed, uint64_t bad_at, stk_dtype_t label_dtype)
{
    stk_schema_t schema;
    memset(&schema, 0, sizeof schema);
    int64_t ishape[3] = {1, IMG, IMG};
    assert_int_equal(stk_schema_add(&schema, "image", STK_DTYPE_U8, 3, ishape), 0);
    assert_int_equal(stk_schema_add(&schema, "label", label_dtype, 0, NULL), 0);
    uint8_t *img = malloc(n * IMG * IMG);
    int64_t *lab64 = malloc(n * sizeof *lab64);
    uint8_t *lab8 = malloc(n);
    assert_non_null(img);
    stk_rng_t rng;
    stk_rng_init(&rng, seed, 0);
    for (uint64_t i = 0; i < n; i++) {
        int64_t label = (int64_t)stk_rng_below(&rng, CLASSES);
        uint8_t *p = img + i * IMG * IMG;
        for (int k = 0; k < IMG * IMG; k++)
            p[k] = (uint8_t)stk_rng_below(&rng, 64);
        int y0 = 1 + 3 * (int)label, x0 = 2 + 2 * (int)label;
        for (int y = y0; y < y0 + 4; y++)
            for (int x = x0; x < x0 + 4; x++)
                p[y * IMG + x] = (uint8_t)(180 + stk_rng_below(&rng, 70));
        lab64[i] = i == bad_at ? 7 : label;
        lab8[i] = (uint8_t)lab64[i];
    }
    const void *fields[2] = {img, label_dtype == STK_DTYPE_U8 ? (const void *)lab8 : (const void *)lab64};
    stk_dataset_t *ds = NULL;
    assert_int_equal(stk_dataset_memory_create(&ds, &schema, fields, n), 0);
    free(img);
    free(lab64);
    free(lab8);
    return ds;
}

static stk_loader_t *make_loader(stk_dataset_t *ds, uint64_t batch, uint32_t workers, int shuffle, const char *augment)
{
    stk_loader_config_t c;
    stk_loader_config_default(&c);
    c.batch_size = batch;
    c.shuffle = shuffle;
    c.drop_last = 0;
    c.seed = 11;
    c.num_workers = workers;
    c.persistent_workers = 1;
    c.augment = augment;
    stk_loader_t *l = NULL;
    int rc = stk_loader_create(&l, ds, &c);
    if (rc)
        fail_msg("loader: %s", stk_error_message());
    return l;
}

/* Batchnorm and dropout in the model: the hand loop and the stepper must
 * agree on the loss scale, the step and the order of every call. */
static const char model_text[] = "input shape=1,12,12\n"
                                 "conv2d name=conv1 out=4 kernel=3 pad=1 bias=0\n"
                                 "batchnorm2d name=bn1\n"
                                 "relu\n"
                                 "maxpool2d kernel=2\n"
                                 "flatten\n"
                                 "dropout p=0.25\n"
                                 "linear name=fc out=3\n"
                                 "cross_entropy\n";

static stk_model_t *make_model(const char *text, int64_t batch)
{
    stk_model_builder_t *b = NULL;
    assert_int_equal(stk_model_builder_create(&b), 0);
    assert_int_equal(stk_model_builder_parse(b, text, "test.model"), 0);
    stk_model_config_t mc;
    stk_model_config_default(&mc);
    mc.batch_size = batch;
    mc.seed = 5;
    mc.threads = 1;
    stk_model_t *m = NULL;
    int rc = stk_model_create(&m, b, &mc);
    stk_model_builder_destroy(&b);
    if (rc)
        fail_msg("model: %s", stk_error_message());
    return m;
}

static void make_opt(stk_model_t *m, int64_t total_steps, stk_optim_t **opt, stk_sched_t **sched)
{
    assert_int_equal(stk_optim_create_for_model(opt, m, "sgd:lr=0.05,momentum=0.9,nesterov=1,weight_decay=5e-4,"
                                                        "no_decay=bias_norm"), 0);
    assert_int_equal(stk_sched_create_from_text(sched, *opt, "warmup:3,start=0.1|cosine:eta_min=0", 0, total_steps),
                     0);
}

static stk_train_inputs_t *make_inputs(const char *normalize)
{
    stk_train_inputs_config_t c;
    stk_train_inputs_config_default(&c);
    c.normalize = normalize;
    stk_train_inputs_t *in = NULL;
    /* Without a normalize spec the config is the defaults: NULL says so. */
    assert_int_equal(stk_train_inputs_create(&in, normalize ? &c : NULL), 0);
    return in;
}

static void expect_same_floats(const float *a, const float *b, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof *a) != 0)
            fail_msg("%s differ at %zu: %.9g vs %.9g", what, i, (double)a[i], (double)b[i]);
}

/* ---- batch helpers ---------------------------------------------------- */

static void test_batch_fields(void **state)
{
    (void)state;
    stk_dataset_t *ds = make_dataset(20, 1, UINT64_MAX, STK_DTYPE_U8);
    stk_loader_t *l = make_loader(ds, 8, 0, 0, NULL);
    stk_batch_t b;
    assert_int_equal(stk_loader_next(l, &b), 0);
    const stk_batch_field_t *img, *lab;
    assert_int_equal(stk_train_batch_field(&b, "image", &img), 0);
    assert_int_equal(stk_train_batch_field(&b, "label", &lab), 0);
    assert_int_equal(stk_train_batch_field(&b, "pixels", &img), STK_ENOTFOUND);
    expect_msg("no field 'pixels' (it has 'image', 'label')");
    assert_null(img);
    assert_int_equal(stk_train_batch_field(&b, "image", &img), 0);

    stk_tensor_t t;
    assert_int_equal(stk_train_field_tensor(img, &t), 0);
    assert_int_equal(t.ndim, 4);
    assert_int_equal(t.shape[0], 8);
    assert_int_equal(t.shape[3], IMG);
    assert_int_equal(t.dtype, STK_DTYPE_U8);
    assert_ptr_equal(t.data, img->data);

    int64_t labels[8];
    assert_int_equal(stk_train_labels_i64(lab, labels, 8), 0);
    for (int i = 0; i < 8; i++) {
        assert_int_equal(labels[i], ((const uint8_t *)lab->data)[i]);
        assert_true(labels[i] >= 0 && labels[i] < CLASSES);
    }
    assert_int_equal(stk_train_labels_i64(lab, labels, 7), STK_ESHAPE);
    expect_msg("holds 8 labels, expected 7");
    assert_int_equal(stk_train_labels_i64(img, labels, 8), STK_ESHAPE);
    expect_msg("not one integer per sample");

    /* u8 labels become an i64 target through the converter. */
    stk_train_inputs_t *in = make_inputs(NULL);
    stk_tensor_t x, y;
    assert_int_equal(stk_train_inputs_get(in, &b, &x, &y), 0);
    assert_int_equal(y.dtype, STK_DTYPE_I64);
    assert_memory_equal(y.data, labels, sizeof labels);
    /* No normalize: bytes scaled to [0, 1] as ToTensor does. */
    const uint8_t *px = img->data;
    const float *fx = x.data;
    assert_int_equal(x.dtype, STK_DTYPE_F32);
    for (int i = 0; i < 8 * IMG * IMG; i++)
        assert_true(fx[i] == (float)px[i] * (1.0f / 255.0f));
    stk_train_inputs_destroy(&in);
    stk_train_inputs_destroy(&in);

    stk_train_inputs_config_t c;
    stk_train_inputs_config_default(&c);
    c.image_field = "pixels";
    assert_int_equal(stk_train_inputs_create(&in, &c), 0);
    assert_int_equal(stk_train_inputs_get(in, &b, &x, &y), STK_ENOTFOUND);
    expect_msg("it has 'image', 'label'");
    stk_train_inputs_destroy(&in);
    c.image_field = "image";
    c.normalize = "normalize:mean=0.5";
    assert_int_equal(stk_train_inputs_create(&in, &c), STK_ECONFIG);
    expect_msg("normalize");
    /* One value per channel is checked at create, lists that disagree too. */
    c.normalize = "crop:8|normalize:mean=0.485/0.456/0.406,std=0.229/0.224/0.225";
    assert_int_equal(stk_train_inputs_create(&in, &c), 0);
    stk_train_inputs_destroy(&in);
    c.normalize = "normalize:mean=0.485/0.456,std=0.229/0.224/0.225";
    assert_int_equal(stk_train_inputs_create(&in, &c), STK_ECONFIG);
    expect_msg("mean has 2 values and std 3");
    c.normalize = NULL;
    c.dtype = STK_DTYPE_I32;
    assert_int_equal(stk_train_inputs_create(&in, &c), STK_ECONFIG);
    assert_null(in);

    stk_loader_release(l, &b);
    stk_loader_destroy(&l);
    stk_dataset_destroy(&ds);
}

static void test_normalize_spec(void **state)
{
    (void)state;
    char out[256];
    assert_int_equal(stk_train_normalize_spec("crop:28,pad=2|hflip|normalize:mean=0.2860,std=0.3530", out, sizeof out),
                     0);
    assert_string_equal(out, "normalize:mean=0.2860,std=0.3530");
    assert_int_equal(stk_train_normalize_spec("hflip|crop:28", out, sizeof out), 0);
    assert_string_equal(out, "");
    assert_int_equal(stk_train_normalize_spec("", out, sizeof out), 0);
    assert_string_equal(out, "");
    assert_int_equal(stk_train_normalize_spec("normalizer|normalize", out, sizeof out), 0);
    assert_string_equal(out, "normalize");
    assert_int_equal(stk_train_normalize_spec("hflip|normalize:mean=0.5,std=0.5", out, 10), -ENOSPC);
    assert_string_equal(out, "");
}

/* Normalizing in this process gives the floats a worker's normalize
 * gives, in f32; f16 and bf16 are those floats rounded. */
static void test_inputs_match_workers(void **state)
{
    (void)state;
    const char *norm = "normalize:mean=0.3,std=0.27";
    stk_dataset_t *ds = make_dataset(40, 2, UINT64_MAX, STK_DTYPE_I64);
    stk_loader_t *lw = make_loader(ds, 16, 2, 0, norm), *lm = make_loader(ds, 16, 0, 0, NULL);
    stk_train_inputs_t *in = make_inputs("crop:12,pad=1|hflip|normalize:mean=0.3,std=0.27");
    stk_train_inputs_config_t c;
    stk_train_inputs_config_default(&c);
    c.normalize = norm;
    c.dtype = STK_DTYPE_BF16;
    stk_train_inputs_t *in16 = NULL;
    assert_int_equal(stk_train_inputs_create(&in16, &c), 0);
    for (int k = 0; k < 3; k++) {
        stk_batch_t bw, bm;
        assert_int_equal(stk_loader_next(lw, &bw), 0);
        assert_int_equal(stk_loader_next(lm, &bm), 0);
        stk_tensor_t xw, yw, xm, ym, x16;
        assert_int_equal(stk_train_inputs_get(in, &bw, &xw, &yw), 0);
        /* f32 from the workers passes as a view. */
        const stk_batch_field_t *f;
        assert_int_equal(stk_train_batch_field(&bw, "image", &f), 0);
        assert_ptr_equal(xw.data, f->data);
        assert_int_equal(stk_train_batch_field(&bw, "label", &f), 0);
        assert_ptr_equal(yw.data, f->data);
        size_t n = (size_t)stk_tensor_numel(&xw);
        float *keep = malloc(n * sizeof *keep);
        memcpy(keep, xw.data, n * sizeof *keep);
        assert_int_equal(stk_train_inputs_get(in, &bm, &xm, &ym), 0);
        assert_int_equal(stk_tensor_numel(&xm), (int64_t)n);
        expect_same_floats(keep, xm.data, n, "normalized here and in a worker");
        assert_int_equal(stk_train_inputs_get(in16, &bm, &x16, NULL), 0);
        assert_int_equal(x16.dtype, STK_DTYPE_BF16);
        for (size_t i = 0; i < n; i++)
            assert_int_equal(((const uint16_t *)x16.data)[i], stk_f32_to_bf16(keep[i]));
        free(keep);
        stk_loader_release(lw, &bw);
        stk_loader_release(lm, &bm);
    }
    stk_train_inputs_destroy(&in);
    stk_train_inputs_destroy(&in16);
    /* bf16 from the workers: keep_half passes it as a view (the feed
     * converts); without it, f32 converted here. */
    stk_loader_t *lh = make_loader(ds, 16, 1, 0, "normalize:mean=0.3,std=0.27,dtype=bf16");
    stk_train_inputs_config_default(&c);
    c.keep_half = 1;
    stk_train_inputs_t *kh = NULL, *conv = make_inputs(norm);
    assert_int_equal(stk_train_inputs_create(&kh, &c), 0);
    stk_batch_t bh;
    assert_int_equal(stk_loader_next(lh, &bh), 0);
    stk_tensor_t xh, xc;
    assert_int_equal(stk_train_inputs_get(kh, &bh, &xh, NULL), 0);
    const stk_batch_field_t *fh;
    assert_int_equal(stk_train_batch_field(&bh, "image", &fh), 0);
    assert_int_equal(xh.dtype, STK_DTYPE_BF16);
    assert_ptr_equal(xh.data, fh->data);
    assert_int_equal(stk_train_inputs_get(conv, &bh, &xc, NULL), 0);
    assert_int_equal(xc.dtype, STK_DTYPE_F32);
    for (int64_t i = 0; i < stk_tensor_numel(&xc); i++)
        assert_true(((const float *)xc.data)[i] == stk_bf16_to_f32(((const uint16_t *)fh->data)[i]));
    stk_loader_release(lh, &bh);
    stk_loader_destroy(&lh);
    stk_train_inputs_destroy(&kh);
    stk_train_inputs_destroy(&conv);
    stk_loader_destroy(&lw);
    stk_loader_destroy(&lm);
    stk_dataset_destroy(&ds);
}

/* ---- the stepper -------------------------------------------------------- */

#define NSAMP 64
#define BATCH 8 /* 8 micro-batches an epoch */
#define ACCUM 3 /* groups of 3, 3 and a short 2 */

/* The loop a user writes by hand over the same pieces. */
static void hand_loop(stk_model_t *m, stk_optim_t *opt, stk_sched_t *sched, stk_loader_t *l, stk_train_inputs_t *in,
                      int epochs)
{
    uint64_t nb = stk_loader_len(l);
    stk_model_set_train(m, 1);
    for (int e = 0; e < epochs; e++) {
        assert_int_equal(stk_loader_set_epoch(l, (uint64_t)e), 0);
        stk_batch_t b;
        while (stk_loader_next(l, &b) == 0) {
            stk_tensor_t x, y;
            assert_int_equal(stk_train_inputs_get(in, &b, &x, &y), 0);
            uint64_t k = b.number, start = k / ACCUM * ACCUM, size = nb - start < ACCUM ? nb - start : ACCUM;
            stk_model_set_loss_scale(m, 1.0f / (float)size);
            float loss;
            assert_int_equal(stk_model_forward(m, x.data, x.shape[0], y.data, NULL, &loss), 0);
            assert_int_equal(stk_model_backward(m), 0);
            if (k + 1 == start + size) {
                assert_int_equal(stk_optim_step_model(opt, m), 0);
                assert_int_equal(stk_sched_step(sched), 0);
                stk_model_zero_grad(m);
            }
            stk_loader_release(l, &b);
        }
    }
}

static void test_stepper_matches_hand_loop(void **state)
{
    (void)state;
    stk_dataset_t *ds = make_dataset(NSAMP, 3, UINT64_MAX, STK_DTYPE_I64);
    stk_train_inputs_t *in = make_inputs("normalize:mean=0.3,std=0.3");
    stk_model_t *ma = make_model(model_text, BATCH), *mb = make_model(model_text, BATCH);
    stk_optim_t *oa, *ob;
    stk_sched_t *sa, *sb;
    make_opt(ma, 6, &oa, &sa);
    make_opt(mb, 6, &ob, &sb);
    stk_loader_t *la = make_loader(ds, BATCH, 0, 1, NULL), *lb = make_loader(ds, BATCH, 2, 1, NULL);
    hand_loop(ma, oa, sa, la, in, 2);

    stk_train_stepper_config_t c;
    stk_train_stepper_config_default(&c);
    c.accum_steps = ACCUM;
    c.batches_per_epoch = stk_loader_len(lb);
    stk_train_stepper_t *s = NULL;
    assert_int_equal(stk_train_stepper_create(&s, mb, ob, sb, &c), 0);
    stk_model_set_train(mb, 1);
    for (int e = 0; e < 2; e++) {
        assert_int_equal(stk_loader_set_epoch(lb, (uint64_t)e), 0);
        stk_batch_t b;
        while (stk_loader_next(lb, &b) == 0) {
            stk_tensor_t x, y;
            stk_train_step_metrics_t m;
            assert_int_equal(stk_train_inputs_get(in, &b, &x, &y), 0);
            assert_int_equal(stk_train_stepper_step(s, &x, &y, b.number, &m), 0);
            /* Groups close after batches 2, 5 and 7 (the short one). */
            assert_int_equal(m.stepped, b.number == 2 || b.number == 5 || b.number == 7);
            assert_int_equal(m.samples, BATCH);
            assert_true(m.correct >= 0 && m.correct <= BATCH);
            assert_true(isfinite(m.loss) && m.loss > 0);
            assert_true(m.stepped ? isnan(m.grad_norm) && m.lr > 0 : 1);
            stk_loader_release(lb, &b);
        }
    }
    assert_int_equal(stk_train_stepper_steps(s), 6);
    /* Both models counted their training forwards: dropout drew the same
     * masks. */
    assert_int_equal(stk_model_step(ma), 16);
    assert_int_equal(stk_model_step(mb), 16);
    size_t n;
    const float *pa = stk_model_params(ma, &n), *pb = stk_model_params(mb, NULL);
    expect_same_floats(pa, pb, n, "hand-loop and stepper parameters");
    size_t nbuf;
    const float *bufa = stk_model_buffers(ma, &nbuf);
    expect_same_floats(bufa, stk_model_buffers(mb, NULL), nbuf, "batchnorm buffers");
    /* The same optimizer state too (momentum buffers, step counts). */
    size_t osz = stk_optim_state_size(oa);
    char *obuf_a = malloc(osz), *obuf_b = malloc(osz);
    assert_int_equal(stk_optim_state_save(oa, obuf_a, osz, &osz), 0);
    assert_int_equal(stk_optim_state_save(ob, obuf_b, osz, &osz), 0);
    assert_memory_equal(obuf_a, obuf_b, osz);
    free(obuf_a);
    free(obuf_b);

    /* flush: nothing open after a full epoch; with an unknown epoch
     * length a short group is stepped by flush. */
    int stepped = 7;
    assert_int_equal(stk_train_stepper_flush(s, &stepped), 0);
    assert_int_equal(stepped, 0);
    stk_train_stepper_destroy(&s);
    c.batches_per_epoch = 0;
    assert_int_equal(stk_train_stepper_create(&s, mb, ob, sb, &c), 0);
    stk_train_stepper_set_steps(s, 6);
    assert_int_equal(stk_loader_set_epoch(lb, 2), 0);
    stk_batch_t b;
    assert_int_equal(stk_loader_next(lb, &b), 0);
    stk_tensor_t x, y;
    stk_train_step_metrics_t m;
    assert_int_equal(stk_train_inputs_get(in, &b, &x, &y), 0);
    assert_int_equal(stk_train_stepper_step(s, &x, &y, b.number, &m), 0);
    stk_loader_release(lb, &b);
    assert_int_equal(m.stepped, 0);
    assert_int_equal(stk_train_stepper_flush(s, &stepped), 0);
    assert_int_equal(stepped, 1);
    assert_int_equal(stk_train_stepper_steps(s), 7);

    /* A non-finite loss stops before backward, naming the batch. */
    assert_int_equal(stk_loader_next(lb, &b), 0);
    assert_int_equal(stk_train_inputs_get(in, &b, &x, &y), 0);
    float *bad = malloc((size_t)stk_tensor_numel(&x) * sizeof *bad);
    memcpy(bad, x.data, (size_t)stk_tensor_numel(&x) * sizeof *bad);
    bad[5] = NAN;
    x.data = bad;
    assert_int_equal(stk_train_stepper_step(s, &x, &y, b.number, &m), -EDOM);
    expect_msg("loss is NaN at batch 1");
    free(bad);
    stk_loader_release(lb, &b);

    c.accum_steps = 0;
    stk_train_stepper_t *s2 = NULL;
    assert_int_equal(stk_train_stepper_create(&s2, mb, ob, sb, &c), STK_ECONFIG);
    c.accum_steps = 1;
    c.clip_norm = -1;
    assert_int_equal(stk_train_stepper_create(&s2, mb, ob, sb, &c), STK_ECONFIG);
    assert_null(s2);

    stk_train_stepper_destroy(&s);
    stk_loader_destroy(&la);
    stk_loader_destroy(&lb);
    stk_sched_destroy(&sa);
    stk_sched_destroy(&sb);
    stk_optim_destroy(&oa);
    stk_optim_destroy(&ob);
    stk_model_destroy(&ma);
    stk_model_destroy(&mb);
    stk_train_inputs_destroy(&in);
    stk_dataset_destroy(&ds);
}

static void test_clip_grad_norm(void **state)
{
    (void)state;
    stk_dataset_t *ds = make_dataset(16, 4, UINT64_MAX, STK_DTYPE_I64);
    stk_loader_t *l = make_loader(ds, 16, 0, 0, NULL);
    stk_train_inputs_t *in = make_inputs(NULL);
    stk_model_t *m = make_model(model_text, 16);
    stk_batch_t b;
    stk_tensor_t x, y;
    assert_int_equal(stk_loader_next(l, &b), 0);
    assert_int_equal(stk_train_inputs_get(in, &b, &x, &y), 0);
    float loss;
    assert_int_equal(stk_model_forward_tensor(m, &x, &y, &loss), 0);
    assert_int_equal(stk_model_backward(m), 0);
    size_t n;
    float *g = stk_model_grads(m, &n);
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += (double)g[i] * g[i];
    double norm;
    /* Under the bound: nothing changes. */
    float *before = malloc(n * sizeof *before);
    memcpy(before, g, n * sizeof *before);
    assert_int_equal(stk_train_clip_grad_norm(m, 1e9, &norm), 0);
    assert_true(fabs(norm - sqrt(sum)) <= 1e-12 * sqrt(sum));
    expect_same_floats(before, g, n, "gradients under the bound");
    /* Over it: scaled to the bound. */
    double bound = norm / 4;
    assert_int_equal(stk_train_clip_grad_norm(m, bound, &norm), 0);
    double after = 0;
    for (size_t i = 0; i < n; i++) {
        after += (double)g[i] * g[i];
        assert_true(g[i] == before[i] * (float)(bound / (norm + 1e-6)));
    }
    assert_true(fabs(sqrt(after) - bound) < 1e-5 * bound);
    assert_int_equal(stk_train_clip_grad_norm(m, -1, NULL), -EINVAL);
    free(before);
    stk_loader_release(l, &b);
    stk_loader_destroy(&l);
    stk_model_destroy(&m);
    stk_train_inputs_destroy(&in);
    stk_dataset_destroy(&ds);
}

/* ---- dynamic loss scaling ------------------------------------------------- */

static void test_loss_scaler(void **state)
{
    (void)state;
    stk_loss_scaler_config_t c;
    stk_loss_scaler_config_default(&c);
    assert_true(c.init_scale == 65536 && c.growth_factor == 2 && c.backoff_factor == 0.5 &&
                c.growth_interval == 2000);
    stk_loss_scaler_t *s = NULL;
    /* Bad settings are refused, naming the field. */
    static const struct {
        double init, growth, backoff;
        uint32_t interval;
        const char *field;
    } bad[] = {{0, 2, 0.5, 10, "init_scale"},    {NAN, 2, 0.5, 10, "init_scale"},
               {1e39, 2, 0.5, 10, "init_scale"}, {8, 1, 0.5, 10, "growth_factor"},
               {8, INFINITY, 0.5, 10, "growth_factor"}, {8, 2, 1, 10, "backoff_factor"},
               {8, 2, 0, 10, "backoff_factor"},  {8, 2, 0.5, 0, "growth_interval"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        stk_loss_scaler_config_t b = {bad[i].init, bad[i].growth, bad[i].backoff, bad[i].interval};
        assert_int_equal(stk_loss_scaler_create(&s, &b), STK_ECONFIG);
        assert_null(s);
        expect_msg(bad[i].field);
    }
    /* Growth after growth_interval clean steps in a row; an overflow
     * skips, halves and restarts the count. */
    c.init_scale = 1024;
    c.growth_interval = 3;
    assert_int_equal(stk_loss_scaler_create(&s, &c), 0);
    assert_true(stk_loss_scaler_scale(s) == 1024.0f);
    assert_int_equal(stk_loss_scaler_update(s, 0), 0);
    assert_int_equal(stk_loss_scaler_update(s, 0), 0);
    assert_true(stk_loss_scaler_scale(s) == 1024.0f);
    assert_int_equal(stk_loss_scaler_update(s, 0), 0);
    assert_true(stk_loss_scaler_scale(s) == 2048.0f);
    assert_int_equal(stk_loss_scaler_update(s, 0), 0);
    assert_int_equal(stk_loss_scaler_update(s, 0), 0);
    assert_int_equal(stk_loss_scaler_update(s, 1), 1);
    assert_true(stk_loss_scaler_scale(s) == 1024.0f);
    assert_int_equal(stk_loss_scaler_skipped(s), 1);
    assert_int_equal(stk_loss_scaler_update(s, 0), 0);
    assert_int_equal(stk_loss_scaler_update(s, 0), 0);
    assert_true(stk_loss_scaler_scale(s) == 1024.0f);
    assert_int_equal(stk_loss_scaler_update(s, 0), 0);
    assert_true(stk_loss_scaler_scale(s) == 2048.0f);
    assert_int_equal(stk_loss_scaler_update(s, 1), 1);
    assert_int_equal(stk_loss_scaler_update(s, 1), 1);
    assert_true(stk_loss_scaler_scale(s) == 512.0f);
    assert_int_equal(stk_loss_scaler_skipped(s), 3);
    stk_loss_scaler_destroy(&s);
    assert_null(s);
    /* The scale neither grows past the largest float nor shrinks to 0. */
    c.init_scale = FLT_MAX;
    c.growth_interval = 1;
    assert_int_equal(stk_loss_scaler_create(&s, &c), 0);
    assert_int_equal(stk_loss_scaler_update(s, 0), 0);
    assert_true(stk_loss_scaler_scale(s) == FLT_MAX);
    for (int i = 0; i < 400; i++)
        assert_int_equal(stk_loss_scaler_update(s, 1), 1);
    assert_true(stk_loss_scaler_scale(s) > 0);
    stk_loss_scaler_destroy(&s);
    stk_loss_scaler_destroy(NULL);
}

/* A stepper with loss scaling against one without: with scales that are
 * powers of two every gradient is scaled and unscaled exactly, so the
 * parameters are the same bits, through accumulation, a short last group,
 * batchnorm and dropout, while the scale grows. */
static void test_stepper_loss_scaling_exact(void **state)
{
    (void)state;
    stk_dataset_t *ds = make_dataset(NSAMP, 3, UINT64_MAX, STK_DTYPE_I64);
    stk_train_inputs_t *in = make_inputs("normalize:mean=0.3,std=0.3");
    stk_model_t *m[2] = {make_model(model_text, BATCH), make_model(model_text, BATCH)};
    stk_optim_t *o[2];
    stk_sched_t *sc[2];
    stk_train_stepper_t *s[2] = {NULL, NULL};
    stk_loader_t *l = make_loader(ds, BATCH, 0, 1, NULL);
    for (int k = 0; k < 2; k++) {
        make_opt(m[k], 6, &o[k], &sc[k]);
        stk_train_stepper_config_t c;
        stk_train_stepper_config_default(&c);
        c.accum_steps = ACCUM;
        c.batches_per_epoch = stk_loader_len(l);
        if (k == 1) {
            stk_loss_scaler_config_default(&c.loss_scaling);
            c.loss_scaling.growth_interval = 2;
        }
        assert_int_equal(stk_train_stepper_create(&s[k], m[k], o[k], sc[k], &c), 0);
    }
    float last_scale = 0;
    for (int e = 0; e < 2; e++) {
        assert_int_equal(stk_loader_set_epoch(l, (uint64_t)e), 0);
        stk_batch_t b;
        while (stk_loader_next(l, &b) == 0) {
            stk_tensor_t x, y;
            assert_int_equal(stk_train_inputs_get(in, &b, &x, &y), 0);
            for (int k = 0; k < 2; k++) {
                stk_train_step_metrics_t mm;
                assert_int_equal(stk_train_stepper_step(s[k], &x, &y, b.number, &mm), 0);
                assert_int_equal(mm.skipped, 0);
                if (k == 0)
                    assert_true(mm.loss_scale == 1.0f);
                else
                    last_scale = mm.loss_scale;
            }
            stk_loader_release(l, &b);
        }
    }
    /* 6 clean steps, growth every 2: 2^16 grew three times (the last
     * micro-batch ran at the scale before the third growth). */
    assert_true(last_scale == 131072.0f * 2);
    size_t n;
    const float *p0 = stk_model_params(m[0], &n);
    expect_same_floats(p0, stk_model_params(m[1], NULL), n, "parameters with and without loss scaling");
    for (int k = 0; k < 2; k++) {
        stk_train_stepper_destroy(&s[k]);
        stk_sched_destroy(&sc[k]);
        stk_optim_destroy(&o[k]);
        stk_model_destroy(&m[k]);
    }
    stk_loader_destroy(&l);
    stk_train_inputs_destroy(&in);
    stk_dataset_destroy(&ds);
}

/* An injected overflow: one sample with a huge pixel makes a weight
 * gradient of ~1e34, finite in FP32 but not once multiplied by 2^16. The
 * loss itself is finite, so only loss scaling's check can catch it: the
 * step is skipped (parameters and optimizer state untouched), the scale
 * halves, and the next batch steps as a fresh model's first step would. */
static void test_stepper_loss_scaling_overflow(void **state)
{
    (void)state;
    static const char text[] = "input shape=1,2,2\n"
                               "flatten\n"
                               "linear name=fc out=3\n"
                               "cross_entropy\n";
    enum { N = 8, F = 4 };
    float xs[N * F], huge[N * F];
    int64_t ys[N];
    for (int i = 0; i < N; i++) {
        ys[i] = i % 3;
        for (int j = 0; j < F; j++)
            xs[i * F + j] = (float)((i * 7 + j * 3) % 11) / 11.0f - 0.5f;
    }
    memcpy(huge, xs, sizeof xs);
    huge[0] = 1e35f;
    int64_t xshape[2] = {N, F}, yshape[1] = {N};
    stk_tensor_t x = {0}, xh = {0}, y = {0};
    assert_int_equal(stk_tensor_init(&x, xs, STK_DTYPE_F32, 2, xshape), 0);
    assert_int_equal(stk_tensor_init(&xh, huge, STK_DTYPE_F32, 2, xshape), 0);
    assert_int_equal(stk_tensor_init(&y, ys, STK_DTYPE_I64, 1, yshape), 0);

    stk_model_t *m[2] = {make_model(text, N), make_model(text, N)};
    stk_optim_t *o[2];
    stk_train_stepper_t *s[2] = {NULL, NULL};
    for (int k = 0; k < 2; k++) {
        assert_int_equal(stk_optim_create_for_model(&o[k], m[k], "sgd:lr=0.1,momentum=0.9"), 0);
        stk_train_stepper_config_t c;
        stk_train_stepper_config_default(&c);
        stk_loss_scaler_config_default(&c.loss_scaling);
        assert_int_equal(stk_train_stepper_create(&s[k], m[k], o[k], NULL, &c), 0);
    }
    size_t n;
    const float *p0 = stk_model_params(m[0], &n);
    float *before = malloc(n * sizeof *before);
    memcpy(before, p0, n * sizeof *before);

    stk_train_step_metrics_t mm;
    assert_int_equal(stk_train_stepper_step(s[0], &xh, &y, 0, &mm), 0);
    assert_true(isfinite(mm.loss));
    assert_int_equal(mm.stepped, 1);
    assert_int_equal(mm.skipped, 1);
    assert_true(mm.loss_scale == 65536.0f);
    expect_same_floats(before, stk_model_params(m[0], NULL), n, "parameters after a skipped step");
    /* The gradients of the skipped step are gone: the next step is that
     * of a model that never saw the huge batch. */
    assert_int_equal(stk_train_stepper_step(s[0], &x, &y, 1, &mm), 0);
    assert_int_equal(mm.skipped, 0);
    assert_true(mm.loss_scale == 32768.0f);
    assert_int_equal(stk_train_stepper_step(s[1], &x, &y, 0, &mm), 0);
    assert_int_equal(mm.skipped, 0);
    expect_same_floats(stk_model_params(m[0], NULL), stk_model_params(m[1], NULL), n,
                       "parameters after skip and step vs one step");
    assert_int_equal(stk_train_stepper_steps(s[0]), 2);

    /* A bad scaler setting fails the stepper's creation, named. */
    stk_train_stepper_config_t c;
    stk_train_stepper_config_default(&c);
    stk_loss_scaler_config_default(&c.loss_scaling);
    c.loss_scaling.init_scale = -1;
    stk_train_stepper_t *bad = NULL;
    assert_int_equal(stk_train_stepper_create(&bad, m[0], o[0], NULL, &c), STK_ECONFIG);
    assert_null(bad);
    expect_msg("init_scale");
    free(before);
    for (int k = 0; k < 2; k++) {
        stk_train_stepper_destroy(&s[k]);
        stk_optim_destroy(&o[k]);
        stk_model_destroy(&m[k]);
    }
}

/* stk_model_train_step: the four calls in one (on the CPU, where there
 * are no graphs to capture, graphs asked for or not), the same bits as
 * making them; its argument errors. */
static void test_model_train_step(void **state)
{
    (void)state;
    stk_dataset_t *ds = make_dataset(32, 9, UINT64_MAX, STK_DTYPE_I64);
    stk_train_inputs_t *in = make_inputs("normalize:mean=0.3,std=0.3");
    stk_loader_t *l = make_loader(ds, BATCH, 0, 0, NULL);
    stk_model_t *m[2] = {make_model(model_text, BATCH), make_model(model_text, BATCH)};
    stk_optim_t *o[2];
    for (int k = 0; k < 2; k++)
        assert_int_equal(stk_optim_create_for_model(&o[k], m[k], "adamw:lr=1e-3,weight_decay=0.01"), 0);
    assert_int_equal(stk_model_set_cuda_graph(m[0], 1), 0);
    uint64_t captures = 7, replays = 7;
    assert_int_equal(stk_model_cuda_graph(m[0], &captures, &replays), 0);
    assert_true(captures == 0 && replays == 0);
    stk_batch_t b;
    while (stk_loader_next(l, &b) == 0) {
        stk_tensor_t x, y;
        assert_int_equal(stk_train_inputs_get(in, &b, &x, &y), 0);
        float la = NAN, lb = NAN;
        assert_int_equal(stk_model_train_step(m[0], o[0], &x, &y, &la), 0);
        assert_int_equal(stk_model_forward_tensor(m[1], &x, &y, &lb), 0);
        assert_int_equal(stk_model_backward(m[1]), 0);
        assert_int_equal(stk_optim_step_model(o[1], m[1]), 0);
        stk_model_zero_grad(m[1]);
        assert_memory_equal(&la, &lb, sizeof la);
        int64_t ca = -1, cb = -2;
        assert_int_equal(stk_model_count_correct(m[0], y.data, &ca), 0);
        assert_int_equal(stk_model_count_correct(m[1], y.data, &cb), 0);
        assert_int_equal(ca, cb);
        if (b.number == 0) {
            float loss;
            assert_int_equal(stk_model_train_step(NULL, o[0], &x, &y, &loss), -EINVAL);
            assert_int_equal(stk_model_train_step(m[0], o[0], &x, &y, NULL), -EINVAL);
            stk_model_set_train(m[0], 0);
            assert_int_equal(stk_model_train_step(m[0], o[0], &x, &y, &loss), STK_ESTATE);
            expect_msg("not in training mode");
            stk_model_set_train(m[0], 1);
        }
        stk_loader_release(l, &b);
    }
    size_t n, nb;
    const float *p0 = stk_model_params(m[0], &n);
    expect_same_floats(p0, stk_model_params(m[1], NULL), n, "parameters of train_step and the four calls");
    const float *b0 = stk_model_buffers(m[0], &nb);
    expect_same_floats(b0, stk_model_buffers(m[1], NULL), nb, "buffers of train_step and the four calls");
    assert_int_equal(stk_model_set_cuda_graph(NULL, 1), -EINVAL);
    for (int k = 0; k < 2; k++) {
        stk_optim_destroy(&o[k]);
        stk_model_destroy(&m[k]);
    }
    stk_loader_destroy(&l);
    stk_train_inputs_destroy(&in);
    stk_dataset_destroy(&ds);
}

/* ---- evaluation ----------------------------------------------------------- */

static void test_evaluate(void **state)
{
    (void)state;
    /* 21 samples in batches of 8: the last holds 5 and is padded. */
    stk_dataset_t *ds = make_dataset(21, 5, UINT64_MAX, STK_DTYPE_I64);
    stk_loader_t *l = make_loader(ds, 8, 0, 0, "normalize:mean=0.3,std=0.3");
    stk_train_inputs_t *in = make_inputs(NULL);
    stk_model_t *m = make_model(model_text, 8);
    stk_train_eval_t ev;
    assert_int_equal(stk_train_evaluate(m, l, in, 2, NULL, &ev), 0);
    assert_int_equal(ev.samples, 21);
    assert_int_equal(stk_model_is_train(m), 1);
    /* Evaluation forwards do not move the dropout step. */
    assert_int_equal(stk_model_step(m), 0);

    /* By hand: every sample alone, scored from its logits. */
    stk_loader_t *one = make_loader(ds, 1, 0, 0, "normalize:mean=0.3,std=0.3");
    stk_model_set_train(m, 0);
    double loss = 0;
    int top1 = 0, top2 = 0;
    stk_batch_t b;
    while (stk_loader_next(one, &b) == 0) {
        stk_tensor_t x, y;
        assert_int_equal(stk_train_inputs_get(in, &b, &x, &y), 0);
        assert_int_equal(stk_model_forward(m, x.data, 1, NULL, NULL, NULL), 0);
        const float *z;
        int64_t lb, lc;
        assert_int_equal(stk_model_logits(m, &z, &lb, &lc), 0);
        int64_t t = ((const int64_t *)y.data)[0], above = 0;
        double mx = z[0], se = 0;
        for (int c = 1; c < lc; c++)
            mx = z[c] > mx ? z[c] : mx;
        for (int c = 0; c < lc; c++) {
            se += exp(z[c] - mx);
            above += z[c] > z[t];
        }
        loss += log(se) + mx - z[t];
        top1 += above == 0;
        top2 += above < 2;
        stk_loader_release(one, &b);
    }
    stk_model_set_train(m, 1);
    assert_true(fabs(ev.loss - loss / 21) < 1e-5);
    assert_true(fabs(ev.top1 - top1 / 21.0) < 1e-12);
    assert_true(fabs(ev.topk - top2 / 21.0) < 1e-12);
    assert_true(ev.topk >= ev.top1);
    assert_int_equal(stk_model_set_batch_size(m, 8), 0);

    /* top-k over every class counts every sample; a second pass is the
     * same as the first. */
    stk_train_eval_t ev2;
    assert_int_equal(stk_train_evaluate(m, l, in, CLASSES, NULL, &ev2), 0);
    assert_true(ev2.topk == 1.0);
    assert_true(ev2.loss == ev.loss && ev2.top1 == ev.top1);

    volatile sig_atomic_t stop = 1;
    assert_int_equal(stk_train_evaluate(m, l, in, 1, &stop, &ev2), -EINTR);
    assert_int_equal(stk_train_evaluate(m, l, in, 0, NULL, &ev2), -EINVAL);
    assert_int_equal(stk_model_is_train(m), 1);

    /* A label outside the model's classes names the sample. */
    stk_dataset_t *bad = make_dataset(21, 5, 13, STK_DTYPE_I64);
    stk_loader_t *lbad = make_loader(bad, 8, 0, 0, "normalize:mean=0.3,std=0.3");
    assert_int_equal(stk_train_evaluate(m, lbad, in, 1, NULL, &ev2), -EINVAL);
    expect_msg("sample 13 has label 7, the model has 3 classes");
    stk_loader_destroy(&lbad);
    stk_dataset_destroy(&bad);

    stk_loader_destroy(&one);
    stk_loader_destroy(&l);
    stk_model_destroy(&m);
    stk_train_inputs_destroy(&in);
    stk_dataset_destroy(&ds);
}

/* ---- train-state checkpoints -------------------------------------------------- */

static void test_state_checkpoint(void **state)
{
    (void)state;
    char dir[128], path[512];
    snprintf(dir, sizeof dir, "%s/state", tmpdir);
    stk_model_t *m = make_model(model_text, 4);
    stk_optim_t *o;
    stk_sched_t *s;
    make_opt(m, 10, &o, &s);
    stk_train_state_t st;
    assert_int_equal(stk_train_state_init(&st, 77), 0);
    assert_int_equal(strlen(st.run_id), STK_TRAIN_RUN_ID_LEN);
    stk_train_state_t other;
    assert_int_equal(stk_train_state_init(&other, 77), 0);
    assert_string_not_equal(st.run_id, other.run_id);
    st.epoch = 1;
    st.step = 9;
    st.micro = 27;
    st.loader = (stk_loader_state_t){1, 3};
    st.ep_loss_sum = 1.0 / 3;
    st.ep_seen = 12;
    st.ep_correct = 5;
    st.total_train_s = 0.1;
    st.config_hash = 0xfedcba9876543210ull;
    st.config = strdup("a = 1\nb = two\n");
    stk_train_epoch_t row = {.epoch = 1, .step = 6, .train_loss = 0.5, .test_loss = NAN, .lr = 0.01, .test_topk = 1};
    assert_int_equal(stk_train_state_push_epoch(&st, &row), 0);
    static const char note[] = "mine";
    stk_ckpt_section_t extra = {"note", note, sizeof note};
    stk_train_parts_t parts = {m, o, s};
    assert_int_equal(stk_train_checkpoint_save(dir, &parts, &st, &extra, 1, 2, path, sizeof path), 0);
    char want[64];
    snprintf(want, sizeof want, "ckpt-000000000009-%s.stkc", st.run_id);
    assert_non_null(strstr(path, want));

    /* State only, then into fresh objects. */
    stk_train_state_t back;
    assert_int_equal(stk_train_checkpoint_load(path, NULL, &back), 0);
    assert_string_equal(back.run_id, st.run_id);
    assert_true(back.config_hash == st.config_hash);
    assert_string_equal(back.config, st.config);
    assert_true(back.seed == 77 && back.epoch == 1 && back.step == 9 && back.micro == 27);
    assert_true(back.loader.epoch == 1 && back.loader.batch == 3);
    assert_true(back.ep_loss_sum == 1.0 / 3 && back.ep_seen == 12 && back.ep_correct == 5);
    assert_true(back.total_train_s == 0.1);
    assert_int_equal(back.n_history, 1);
    assert_true(back.history[0].step == 6 && back.history[0].train_loss == 0.5 && isnan(back.history[0].test_loss));
    assert_true(back.history[0].test_topk == 1);
    stk_train_state_clear(&back);
    stk_model_t *m2 = make_model(model_text, 4);
    stk_optim_t *o2;
    stk_sched_t *s2;
    make_opt(m2, 10, &o2, &s2);
    stk_train_parts_t parts2 = {m2, o2, s2};
    assert_int_equal(stk_train_checkpoint_load(path, &parts2, &back), 0);
    size_t n;
    const float *p1 = stk_model_params(m, &n);
    expect_same_floats(p1, stk_model_params(m2, NULL), n, "loaded parameters");
    stk_train_state_clear(&back);
    stk_ckpt_t *ck = NULL;
    assert_int_equal(stk_ckpt_create(&ck, path), 0);
    char got[8];
    assert_int_equal(stk_ckpt_read(ck, "note", got, sizeof note), 0);
    assert_string_equal(got, "mine");
    stk_ckpt_destroy(&ck);

    /* Another model does not fit: the message names the file and section. */
    stk_model_t *m3 = make_model("input shape=1,12,12\nflatten\nlinear out=3\ncross_entropy\n", 4);
    stk_train_parts_t parts3 = {m3, NULL, NULL};
    assert_int_not_equal(stk_train_checkpoint_load(path, &parts3, &back), 0);
    expect_msg("section 'model'");
    expect_msg(path);
    assert_null(back.history);
    stk_model_destroy(&m3);

    /* Refusals. */
    extra.name = "history";
    assert_int_equal(stk_train_checkpoint_save(dir, &parts, &st, &extra, 1, 2, NULL, 0), STK_ECONFIG);
    expect_msg("'history'");
    char keep = st.run_id[0];
    st.run_id[0] = '-';
    assert_int_equal(stk_train_checkpoint_save(dir, &parts, &st, NULL, 0, 2, NULL, 0), STK_ECONFIG);
    st.run_id[0] = keep;
    char plain[512];
    snprintf(plain, sizeof plain, "%s/plain.stkc", tmpdir);
    stk_ckpt_section_t meta = {"meta", "format = stoker-train-state 9\n", 30};
    assert_int_equal(stk_ckpt_save(plain, &meta, 1), 0);
    assert_int_equal(stk_train_checkpoint_load(plain, NULL, &back), STK_EFORMAT);
    expect_msg("format 'stoker-train-state 9'; this build reads 'stoker-train-state 2'");
    stk_ckpt_section_t junk = {"x", "y", 1};
    assert_int_equal(stk_ckpt_save(plain, &junk, 1), 0);
    assert_int_equal(stk_train_checkpoint_load(plain, NULL, &back), STK_EFORMAT);
    expect_msg("not a train-state checkpoint");

    /* Two runs alternating in one folder, keep_last 2 each: each keeps its
     * two newest, finds its own newest, and the folder check names the
     * other run for each. */
    char shared[128];
    snprintf(shared, sizeof shared, "%s/shared", tmpdir);
    assert_int_equal(stk_train_checkpoint_dir_check(shared, st.run_id), 0);
    for (uint64_t i = 1; i <= 4; i++) {
        st.step = 100 + i;
        other.step = 10 + i;
        assert_int_equal(stk_train_checkpoint_save(shared, &parts, &st, NULL, 0, 2, NULL, 0), 0);
        assert_int_equal(stk_train_checkpoint_save(shared, &parts, &other, NULL, 0, 2, NULL, 0), 0);
    }
    char latest[512];
    assert_int_equal(stk_ckpt_dir_latest(shared, other.run_id, latest, sizeof latest), 0);
    assert_int_equal(stk_train_checkpoint_load(latest, NULL, &back), 0);
    assert_string_equal(back.run_id, other.run_id);
    assert_int_equal(back.step, 14);
    stk_train_state_clear(&back);
    assert_int_equal(stk_ckpt_dir_latest(shared, st.run_id, latest, sizeof latest), 0);
    assert_non_null(strstr(latest, "ckpt-000000000104-"));
    size_t nruns = 0;
    char runs[4][STK_CKPT_RUN_MAX + 1];
    assert_int_equal(stk_ckpt_dir_runs(shared, runs, 4, &nruns), 0);
    assert_int_equal(nruns, 2);
    assert_int_equal(stk_ckpt_dir_latest(shared, NULL, latest, sizeof latest), STK_ESTATE);
    assert_int_equal(stk_train_checkpoint_dir_check(shared, st.run_id), STK_ESTATE);
    expect_msg(other.run_id);
    expect_msg("step 14");
    assert_int_equal(stk_train_checkpoint_dir_check(shared, other.run_id), STK_ESTATE);
    expect_msg(st.run_id);

    stk_train_state_clear(&st);
    stk_train_state_clear(&other);
    stk_train_state_clear(NULL);
    stk_sched_destroy(&s);
    stk_sched_destroy(&s2);
    stk_optim_destroy(&o);
    stk_optim_destroy(&o2);
    stk_model_destroy(&m);
    stk_model_destroy(&m2);
}

/* ---- the loop ------------------------------------------------------------- */

typedef struct run_objs {
    stk_dataset_t *train, *test;
    stk_loader_t *tl, *el;
    stk_train_inputs_t *in;
    stk_model_t *m;
    stk_optim_t *o;
    stk_sched_t *s;
    stk_train_loop_config_t lc;
    volatile sig_atomic_t stop;
    /* stop when on_step sees this (epoch, batch) */
    uint64_t stop_epoch, stop_batch;
    int epochs_seen, checkpoints;
} run_objs_t;

static void on_step(const stk_train_progress_t *p, void *user)
{
    run_objs_t *r = user;
    assert_true(p->batch >= 1 && p->batch <= p->batches);
    if (p->epoch == r->stop_epoch && p->batch == r->stop_batch)
        r->stop = 1;
}

static int on_epoch(const stk_train_epoch_t *e, const stk_train_state_t *st, void *user)
{
    run_objs_t *r = user;
    r->epochs_seen++;
    assert_int_equal(e->epoch, st->epoch);
    assert_true(isfinite(e->test_loss) && e->test_acc >= 0 && e->test_acc <= 1);
    return 0;
}

static void on_checkpoint(const char *path, const stk_train_state_t *st, void *user)
{
    (void)path;
    (void)st;
    ((run_objs_t *)user)->checkpoints++;
}

static void run_open(run_objs_t *r, const char *dir, uint64_t bad_at)
{
    memset(r, 0, sizeof *r);
    r->stop_epoch = UINT64_MAX;
    r->train = make_dataset(NSAMP, 6, bad_at, STK_DTYPE_I64);
    r->test = make_dataset(24, 7, UINT64_MAX, STK_DTYPE_I64);
    /* bad_at given: a sequential order, so that the bad batch is known. */
    r->tl = make_loader(r->train, BATCH, 0, bad_at == UINT64_MAX, "crop:12,pad=1|hflip");
    r->el = make_loader(r->test, 16, 0, 0, NULL);
    r->in = make_inputs("normalize:mean=0.3,std=0.3");
    r->m = make_model(model_text, BATCH);
    make_opt(r->m, 3 * 4, &r->o, &r->s);
    stk_train_loop_config_t *lc = &r->lc;
    stk_train_loop_config_default(lc);
    lc->model = r->m;
    lc->optim = r->o;
    lc->sched = r->s;
    lc->train_loader = r->tl;
    lc->train_inputs = r->in;
    lc->eval_loader = r->el;
    lc->eval_inputs = r->in;
    lc->epochs = 3;
    lc->stepper.accum_steps = 2;
    lc->topk = 2;
    lc->checkpoint_dir = dir;
    lc->keep_last = 0;
    lc->stop = &r->stop;
    lc->on_step = on_step;
    lc->on_epoch = on_epoch;
    lc->on_checkpoint = on_checkpoint;
    lc->user = r;
}

static void run_close(run_objs_t *r)
{
    stk_loader_destroy(&r->tl);
    stk_loader_destroy(&r->el);
    stk_train_inputs_destroy(&r->in);
    stk_sched_destroy(&r->s);
    stk_optim_destroy(&r->o);
    stk_model_destroy(&r->m);
    stk_dataset_destroy(&r->train);
    stk_dataset_destroy(&r->test);
}

/* Resumes the newest checkpoint of dir in fresh objects and runs to the
 * end; returns the objects (open) for comparison. */
static void resume_to_end(run_objs_t *r, const char *dir, stk_train_state_t *st)
{
    char path[512];
    run_open(r, dir, UINT64_MAX);
    assert_int_equal(stk_ckpt_dir_latest(dir, NULL, path, sizeof path), 0);
    stk_train_parts_t parts = {r->m, r->o, r->s};
    assert_int_equal(stk_train_checkpoint_load(path, &parts, st), 0);
    /* The fresh model takes the run's step: dropout goes on, not over. */
    assert_true(st->micro > 0);
    assert_int_equal(stk_model_step(r->m), st->micro);
    int rc = stk_train_run(&r->lc, st);
    if (rc)
        fail_msg("resumed run: %s", stk_error_message());
}

static void expect_same_run(run_objs_t *a, run_objs_t *b, const stk_train_state_t *sa, const stk_train_state_t *sb)
{
    size_t n, nb;
    const float *pa = stk_model_params(a->m, &n), *ba = stk_model_buffers(a->m, &nb);
    expect_same_floats(pa, stk_model_params(b->m, NULL), n, "parameters");
    expect_same_floats(ba, stk_model_buffers(b->m, NULL), nb, "buffers");
    assert_int_equal(sa->step, sb->step);
    assert_int_equal(sa->micro, sb->micro);
    assert_int_equal(sa->n_history, sb->n_history);
    for (size_t i = 0; i < sa->n_history; i++) {
        assert_true(sa->history[i].test_loss == sb->history[i].test_loss);
        assert_true(sa->history[i].train_loss == sb->history[i].train_loss);
        assert_true(sa->history[i].train_acc == sb->history[i].train_acc);
    }
}

static void test_loop_resume(void **state)
{
    (void)state;
    char dir[6][160];
    const char *names[6] = {"straight", "halves", "midepoch", "lastbatch", "error", "again"};
    for (int i = 0; i < 6; i++)
        snprintf(dir[i], sizeof dir[i], "%s/loop-%s", tmpdir, names[i]);
    /* Straight: 3 epochs, 8 batches each, groups of 2: 4 steps an epoch. */
    run_objs_t ra, rb;
    stk_train_state_t sa, sb;
    run_open(&ra, dir[0], UINT64_MAX);
    stk_train_state_init(&sa, 1);
    assert_int_equal(stk_train_run(&ra.lc, &sa), 0);
    assert_int_equal(sa.epoch, 3);
    assert_int_equal(sa.step, 12);
    assert_int_equal(sa.micro, 24);
    assert_int_equal(ra.epochs_seen, 3);
    assert_int_equal(ra.checkpoints, 3);
    assert_true(sa.loader.epoch == 3 && sa.loader.batch == 0);
    assert_true(sa.history[2].test_topk >= sa.history[2].test_acc);

    /* One epoch (stop_after), then resume in fresh objects. */
    run_open(&rb, dir[1], UINT64_MAX);
    stk_train_state_init(&sb, 1);
    rb.lc.stop_after = 1;
    assert_int_equal(stk_train_run(&rb.lc, &sb), 0);
    assert_int_equal(sb.epoch, 1);
    assert_true(sb.loader.epoch == 1 && sb.loader.batch == 0);
    run_close(&rb);
    stk_train_state_clear(&sb);
    resume_to_end(&rb, dir[1], &sb);
    expect_same_run(&ra, &rb, &sa, &sb);
    run_close(&rb);
    stk_train_state_clear(&sb);

    /* A stop asked for during batch 3 of epoch 2 (inside the group 2-3)
     * lands after that group: checkpoint at step 6, next batch 4. */
    run_open(&rb, dir[2], UINT64_MAX);
    stk_train_state_init(&sb, 1);
    rb.stop_epoch = 1;
    rb.stop_batch = 3;
    assert_int_equal(stk_train_run(&rb.lc, &sb), -EINTR);
    expect_msg("stopped at epoch 2, batch 4 of 8, step 6");
    assert_true(sb.step == 6 && sb.loader.epoch == 1 && sb.loader.batch == 4 && sb.micro == 12);
    run_close(&rb);
    stk_train_state_clear(&sb);
    resume_to_end(&rb, dir[2], &sb);
    expect_same_run(&ra, &rb, &sa, &sb);
    run_close(&rb);
    stk_train_state_clear(&sb);

    /* A stop during the epoch's last step keeps the epoch: the checkpoint
     * stands at (epoch, 8), and the resumed run evaluates it first. */
    run_open(&rb, dir[3], UINT64_MAX);
    stk_train_state_init(&sb, 1);
    rb.stop_epoch = 0;
    rb.stop_batch = 8;
    assert_int_equal(stk_train_run(&rb.lc, &sb), -EINTR);
    assert_true(sb.step == 4 && sb.epoch == 0 && sb.loader.epoch == 0 && sb.loader.batch == 8);
    assert_int_equal(sb.n_history, 0);
    assert_int_equal(rb.checkpoints, 1);
    run_close(&rb);
    stk_train_state_clear(&sb);
    resume_to_end(&rb, dir[3], &sb);
    expect_same_run(&ra, &rb, &sa, &sb);
    run_close(&rb);
    stk_train_state_clear(&sb);

    /* An error inside a group (a bad label in batch 2, sequential order)
     * leaves the state at the last optimizer step: step 1, batch 2. */
    run_open(&rb, dir[4], 17);
    stk_train_state_init(&sb, 1);
    assert_int_equal(stk_train_run(&rb.lc, &sb), -EINVAL);
    assert_true(sb.step == 1 && sb.micro == 2 && sb.loader.epoch == 0 && sb.loader.batch == 2);
    assert_int_equal(sb.ep_seen, 2 * BATCH);
    run_close(&rb);
    stk_train_state_clear(&sb);

    /* A run already done does nothing more. */
    assert_int_equal(stk_train_run(&ra.lc, &sa), 0);
    assert_int_equal(sa.step, 12);
    ra.lc.stop_after = 4;
    assert_int_equal(stk_train_run(&ra.lc, &sa), STK_ECONFIG);
    run_close(&ra);
    stk_train_state_clear(&sa);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_fields),
        cmocka_unit_test(test_normalize_spec),
        cmocka_unit_test(test_inputs_match_workers),
        cmocka_unit_test(test_stepper_matches_hand_loop),
        cmocka_unit_test(test_clip_grad_norm),
        cmocka_unit_test(test_loss_scaler),
        cmocka_unit_test(test_stepper_loss_scaling_exact),
        cmocka_unit_test(test_stepper_loss_scaling_overflow),
        cmocka_unit_test(test_model_train_step),
        cmocka_unit_test(test_evaluate),
        cmocka_unit_test(test_state_checkpoint),
        cmocka_unit_test(test_loop_resume),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
