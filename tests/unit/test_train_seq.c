/* SPDX-License-Identifier: MIT */
/* Sequences in the training layer and in stoker-train: a batch of token
 * records into a language model's inputs and next-token targets, the
 * lengths bucketing reads from a packed text set, the data checks of
 * sequence models, and stoker-train training a character model (bucketed
 * batches, bits per character) and a row-sequential classifier end to
 * end on small data it writes itself. */
#define _GNU_SOURCE
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "test_util.h"
#include "stoker/stoker.h"

static char dir[256];

static const char *tp(const char *name)
{
    return path_in(dir, name);
}

/* A tiny word list, packed as bytes into words-train and words-test. */
static void pack_words(void)
{
    char text[8192] = "";
    static const char *w[] = {"cat", "dog", "catalog", "dot", "a", "tomato", "cod", "god", "act", "tact"};
    for (int i = 0; i < 200; i++) {
        strcat(text, w[i % 10]);
        strcat(text, "\n");
    }
    write_text(tp("words.txt"), text);
    const char *inputs[1] = {tp("words.txt")};
    const char *outs[2] = {tp("words-train"), tp("words-test")};
    for (int k = 0; k < 2; k++) {
        stk_pack_source_config_t sc;
        stk_pack_source_config_default(&sc);
        sc.format = STK_PACK_TEXT;
        sc.inputs = inputs;
        sc.ninputs = 1;
        sc.limit = k ? 40 : 0;
        stk_pack_source_t *src = NULL;
        assert_int_equal(stk_pack_source_create(&src, &sc), 0);
        stk_pack_config_t pc;
        stk_pack_config_default(&pc);
        if (stk_pack_write(src, outs[k], &pc, NULL))
            fail_msg("%s", stk_error_message());
        stk_pack_source_destroy(&src);
    }
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/stk-train-seq-XXXXXX");
    assert_non_null(mkdtemp(dir));
    pack_words();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

static stk_model_t *model_from_text(const char *text)
{
    stk_model_builder_t *b = NULL;
    assert_int_equal(stk_model_builder_create(&b), 0);
    if (stk_model_builder_parse(b, text, "test") < 0)
        fail_msg("%s", stk_error_message());
    stk_model_t *m = NULL;
    if (stk_model_create(&m, b, NULL) < 0)
        fail_msg("%s", stk_error_message());
    stk_model_builder_destroy(&b);
    return m;
}

static void test_next_token_inputs(void **state)
{
    (void)state;
    /* two samples: "ab" and "xyz" padded to 3 */
    uint8_t tok[6] = {'a', 'b', 0, 'x', 'y', 'z'};
    int64_t lengths[2] = {2, 3};
    stk_batch_t b;
    memset(&b, 0, sizeof(b));
    b.size = 2;
    b.nfields = 1;
    stk_batch_field_t *f = &b.fields[0];
    strcpy(f->name, "tokens");
    f->dtype = STK_DTYPE_U8;
    f->ndim = 2;
    f->shape[0] = 2;
    f->shape[1] = 3;
    f->var_dim = 1;
    f->data = tok;
    f->bytes = sizeof(tok);
    f->lengths = lengths;
    stk_train_inputs_config_t cfg;
    stk_train_inputs_config_default(&cfg);
    cfg.image_field = "tokens";
    cfg.next_token = 1;
    cfg.boundary_token = 10;
    stk_train_inputs_t *in = NULL;
    /* next_token makes its own targets: a label field is refused */
    assert_int_equal(stk_train_inputs_create(&in, &cfg), STK_ECONFIG);
    cfg.label_field = NULL;
    assert_int_equal(stk_train_inputs_create(&in, &cfg), 0);
    stk_tensor_t x, y;
    assert_int_equal(stk_train_inputs_get(in, &b, &x, &y), 0);
    assert_int_equal(x.dtype, STK_DTYPE_I64);
    assert_int_equal(x.ndim, 2);
    assert_int_equal(x.shape[1], 4);
    assert_non_null(x.lengths);
    assert_int_equal(x.lengths[0], 3);
    assert_int_equal(x.lengths[1], 4);
    const int64_t *xi = x.data, *yi = y.data;
    static const int64_t want_x[8] = {10, 'a', 'b', 0, 10, 'x', 'y', 'z'};
    static const int64_t want_y[8] = {'a', 'b', 10, 0, 'x', 'y', 'z', 10};
    for (int i = 0; i < 8; i++) {
        assert_int_equal(xi[i], want_x[i]);
        if (i != 3) /* past the end: never read */
            assert_int_equal(yi[i], want_y[i]);
    }
    /* a fixed-shape field is not a sequence */
    f->var_dim = -1;
    f->lengths = NULL;
    assert_int_equal(stk_train_inputs_get(in, &b, &x, &y), STK_ESHAPE);
    stk_train_inputs_destroy(&in);
}

static void test_lengths_and_checks(void **state)
{
    (void)state;
    stk_dataset_t *ds = NULL;
    assert_int_equal(stk_dataset_shard_create(&ds, tp("words-train"), NULL), 0);
    uint32_t len[20];
    assert_int_equal(stk_train_sequence_lengths(ds, "tokens", 20, len), 0);
    static const uint32_t want[10] = {3, 3, 7, 3, 1, 6, 3, 3, 3, 4};
    for (int i = 0; i < 20; i++)
        assert_int_equal(len[i], want[i % 10]);
    assert_int_equal(stk_train_sequence_lengths(ds, "nope", 2, len), STK_ENOTFOUND);
    assert_int_equal(stk_train_sequence_lengths(ds, "tokens", stk_dataset_len(ds) + 1, NULL), -EINVAL);

    stk_model_t *lm = model_from_text("input steps=8 tokens=1\nembedding vocab=256 dim=4\nlstm hidden=4\n"
                                      "linear out=256\ncross_entropy\n");
    stk_model_t *cls = model_from_text("input steps=4 features=2\ngru hidden=3\nseq_last\nlinear out=2\n"
                                       "cross_entropy\n");
    stk_train_inputs_config_t cfg;
    stk_train_inputs_config_default(&cfg);
    cfg.image_field = "tokens";
    cfg.label_field = NULL;
    assert_int_equal(stk_train_check_data(ds, &cfg, NULL, lm), STK_ECONFIG);
    assert_non_null(strstr(stk_error_message(), "next_token"));
    cfg.next_token = 1;
    assert_int_equal(stk_train_check_data(ds, &cfg, NULL, lm), 0);
    assert_int_equal(stk_train_check_data(ds, &cfg, NULL, cls), STK_ECONFIG);
    assert_non_null(strstr(stk_error_message(), "token ids"));
    stk_model_destroy(&lm);
    stk_model_destroy(&cls);
    stk_dataset_destroy(&ds);
}

/* Runs stoker-train; its stdout (last JSON line) into out. */
static int run_train(char *out, size_t cap, const char *const *args)
{
    const char *root = getenv("STK_BUILD_ROOT");
    char tool[512], outfile[600];
    snprintf(tool, sizeof(tool), "%s/tools/stoker-train", root ? root : "build");
    snprintf(outfile, sizeof(outfile), "%s/train.out", dir);
    pid_t pid = fork();
    if (pid == 0) {
        FILE *o = freopen(outfile, "w", stdout);
        FILE *e = freopen("/dev/null", "w", stderr);
        (void)o;
        (void)e;
        char *argv[32];
        argv[0] = tool;
        int k = 1;
        for (; args[k - 1] && k < 31; k++)
            argv[k] = (char *)args[k - 1];
        argv[k] = NULL;
        execv(tool, argv);
        _exit(127);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    FILE *f = fopen(outfile, "r");
    out[0] = 0;
    if (f) {
        size_t n = fread(out, 1, cap - 1, f);
        out[n] = 0;
        fclose(f);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static double json_num(const char *text, const char *key)
{
    char k[64];
    snprintf(k, sizeof(k), "\"%s\":", key);
    const char *p = strstr(text, k);
    return p ? strtod(p + strlen(k), NULL) : NAN;
}

static void test_stoker_train_lm(void **state)
{
    (void)state;
    write_text(tp("lm.model"), "input steps=8 tokens=1\nembedding name=emb vocab=256 dim=8\n"
                               "lstm name=lstm hidden=16 layers=2\nlinear name=head out=256\ncross_entropy\n");
    char conf[2048];
    snprintf(conf, sizeof(conf),
             "train_data = %s\ntest_data = %s\nmodel = %s\nimage_field = tokens\ntarget = next_token\n"
             "bucket_pool = 4\noptimizer = adam:lr=1e-2\nclip_norm = 1\nepochs = 3\nbatch_size = 16\n"
             "workers = 1\nthreads = 1\nseed = 3\nrun_dir = %s\nprogress = off\n",
             tp("words-train"), tp("words-test"), tp("lm.model"), tp("lm-run"));
    write_text(tp("lm.conf"), conf);
    char out[16384];
    int rc = run_train(out, sizeof(out), (const char *[]){tp("lm.conf"), "--json", NULL});
    if (rc != 0)
        fail_msg("stoker-train exited %d: %s", rc, out);
    double bpc = json_num(out, "final_test_bpc"), cps = json_num(out, "chars_per_s");
    /* ten words over and over: a model that learnt them is far below the
     * 8 bits of a uniform byte */
    if (!(bpc > 0 && bpc < 4.0 && cps > 0))
        fail_msg("bits per character %g, characters/s %g: %s", bpc, cps, out);
    /* a tokens model with a label target is a config error (exit 2) */
    rc = run_train(out, sizeof(out), (const char *[]){tp("lm.conf"), "--set", "target=label", "--set",
                                                      "run_dir=", NULL});
    assert_int_equal(rc, 2);
}

/* Rows of 4x4 images as 4 steps of 4 features: class 1 when the bright
 * row comes late. */
static void test_stoker_train_rows(void **state)
{
    (void)state;
    enum { N = 256 };
    static uint8_t img[N * 16];
    static int64_t lab[N];
    for (int i = 0; i < N; i++) {
        int row = i % 4;
        for (int k = 0; k < 16; k++)
            img[i * 16 + k] = (uint8_t)(k / 4 == row ? 200 + (i * 7 + k) % 50 : (i * 13 + k) % 40);
        lab[i] = row >= 2;
    }
    stk_schema_t schema;
    memset(&schema, 0, sizeof(schema));
    assert_int_equal(stk_schema_add(&schema, "image", STK_DTYPE_U8, 3, (int64_t[]){1, 4, 4}), 0);
    assert_int_equal(stk_schema_add(&schema, "label", STK_DTYPE_I64, 0, NULL), 0);
    for (int k = 0; k < 2; k++) {
        const void *fields[2] = {img, lab};
        stk_pack_source_t *src = NULL;
        assert_int_equal(stk_pack_source_create_arrays(&src, &schema, fields, N), 0);
        stk_pack_config_t pc;
        stk_pack_config_default(&pc);
        assert_int_equal(stk_pack_write(src, tp(k ? "rows-test" : "rows-train"), &pc, NULL), 0);
        stk_pack_source_destroy(&src);
    }
    write_text(tp("rows.model"), "input steps=4 features=4\nlstm name=lstm hidden=8 layers=2\nseq_last\n"
                                 "linear name=fc out=2\ncross_entropy\n");
    char conf[2048];
    snprintf(conf, sizeof(conf),
             "train_data = %s\ntest_data = %s\nmodel = %s\naugment = normalize:mean=0.3,std=0.3\n"
             "optimizer = adam:lr=2e-2\nclip_norm = 1\nepochs = 4\nbatch_size = 32\nworkers = 1\nthreads = 1\n"
             "seed = 5\nrun_dir = %s\nprogress = off\n",
             tp("rows-train"), tp("rows-test"), tp("rows.model"), tp("rows-run"));
    write_text(tp("rows.conf"), conf);
    char out[16384];
    int rc = run_train(out, sizeof(out), (const char *[]){tp("rows.conf"), "--json", NULL});
    if (rc != 0)
        fail_msg("stoker-train exited %d: %s", rc, out);
    double acc = json_num(out, "final_test_acc");
    if (!(acc > 0.9))
        fail_msg("test accuracy %g: %s", acc, out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_next_token_inputs),
        cmocka_unit_test(test_lengths_and_checks),
        cmocka_unit_test(test_stoker_train_lm),
        cmocka_unit_test(test_stoker_train_rows),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
