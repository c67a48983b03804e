/* SPDX-License-Identifier: MIT */
/* The cuDNN algorithm policy's plain-C half (engine/cuda/algo_cache.c),
 * which runs on any machine: which engine notes each policy refuses, the
 * benchmark cache's keys, its file (round trip, atomic replace, missing,
 * corrupt lines, another format or cuDNN version, an unwritable folder),
 * the public policy names, and a CPU model taking and ignoring the
 * cudnn_* config fields. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "internal.h"
#include "engine/cuda/algo_cache.h"
#include "stoker/engine.h"

static char tmpdir[64];

static int setup(void **state)
{
    (void)state;
    strcpy(tmpdir, "/tmp/stk-algo-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static void path_in(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/%s", tmpdir, name);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

static int files_in_tmpdir(void)
{
    DIR *d = opendir(tmpdir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

static stk__algo_key_t key_of(int op, int64_t n)
{
    stk__algo_key_t k = {.op = op, .dtype = "f32", .layout = "nchw", .device = "NVIDIA_H200-sm90-132",
                         .align = 16, .tf32 = 0, .n = n, .c = 3, .h = 28, .w = 28, .k = 32, .r = 3, .s = 3,
                         .sh = 1, .sw = 1, .ph = 1, .pw = 1, .dh = 1, .dw = 1, .groups = 1};
    return k;
}

static stk__algo_choice_t choice_of(int64_t engine, int nknobs)
{
    stk__algo_choice_t c = {.engine = engine, .nknobs = nknobs, .workspace = 4096 * engine, .time_ms = 0.125};
    for (int i = 0; i < nknobs; i++) {
        c.knob_type[i] = 3 + i;
        c.knob_value[i] = i % 2 ? -1 : 7 * i;
    }
    return c;
}

static void assert_choice_equal(const stk__algo_choice_t *a, const stk__algo_choice_t *b)
{
    assert_int_equal(a->engine, b->engine);
    assert_int_equal(a->nknobs, b->nknobs);
    assert_int_equal(a->workspace, b->workspace);
    assert_true(a->time_ms > b->time_ms * 0.999 && a->time_ms < b->time_ms * 1.001);
    for (int i = 0; i < a->nknobs; i++) {
        assert_int_equal(a->knob_type[i], b->knob_type[i]);
        assert_int_equal(a->knob_value[i], b->knob_value[i]);
    }
}

/* ------------------------------------------------------------- policy */

static void test_reject_rules(void **state)
{
    (void)state;
    const stk_cudnn_policy_t all[3] = {STK_CUDNN_HEURISTIC, STK_CUDNN_BENCHMARK, STK_CUDNN_DETERMINISTIC};
    for (int i = 0; i < 3; i++) {
        stk_cudnn_policy_t p = all[i];
        assert_null(stk__algo_reject(p, 0, 0, 1 << 20, 0));
        assert_null(stk__algo_reject(p, 0, 0, -1, 1));
        assert_non_null(stk__algo_reject(p, 1, STK__NOTE_DOWN_CONVERT, 0, 0));
        assert_non_null(stk__algo_reject(p, 0, STK__NOTE_TENSOR_CORE, 0, 0));
        assert_null(stk__algo_reject(p, 1, STK__NOTE_TENSOR_CORE, 0, 0));
        /* The workspace limit: at the limit fits, one byte over does not. */
        assert_null(stk__algo_reject(p, 0, 0, 1000, 1000));
        assert_string_equal(stk__algo_reject(p, 0, 0, 1001, 1000), "needs more workspace than the limit");
    }
    assert_null(stk__algo_reject(STK_CUDNN_HEURISTIC, 0, STK__NOTE_NONDETERMINISTIC, 0, 0));
    assert_null(stk__algo_reject(STK_CUDNN_BENCHMARK, 0, STK__NOTE_NONDETERMINISTIC, 0, 0));
    assert_string_equal(stk__algo_reject(STK_CUDNN_DETERMINISTIC, 0, STK__NOTE_NONDETERMINISTIC, 0, 0),
                        "is not deterministic");
    assert_null(stk__algo_reject(STK_CUDNN_HEURISTIC, 0, STK__NOTE_RUNTIME_COMPILATION, 0, 0));
    assert_null(stk__algo_reject(STK_CUDNN_DETERMINISTIC, 0, STK__NOTE_RUNTIME_COMPILATION, 0, 0));
    assert_string_equal(stk__algo_reject(STK_CUDNN_BENCHMARK, 0, STK__NOTE_RUNTIME_COMPILATION, 0, 0),
                        "compiles at run time");
}

static void test_policy_names(void **state)
{
    (void)state;
    const char *names[3] = {"heuristic", "benchmark", "deterministic"};
    for (int i = 0; i < 3; i++) {
        stk_cudnn_policy_t p = (stk_cudnn_policy_t)-1;
        assert_string_equal(stk_cudnn_policy_name((stk_cudnn_policy_t)i), names[i]);
        assert_int_equal(stk_cudnn_policy_parse(names[i], &p), 0);
        assert_int_equal(p, i);
    }
    assert_string_equal(stk_cudnn_policy_name((stk_cudnn_policy_t)7), "?");
    stk_cudnn_policy_t p = STK_CUDNN_BENCHMARK;
    assert_int_equal(stk_cudnn_policy_parse("fastest", &p), STK_ECONFIG);
    assert_non_null(strstr(stk_error_message(), "'fastest'"));
    assert_int_equal(p, STK_CUDNN_BENCHMARK);
    assert_int_equal(stk_cudnn_policy_parse("Benchmark", &p), STK_ECONFIG);
    assert_int_equal(stk_cudnn_policy_parse(NULL, &p), STK_ECONFIG);
}

/* -------------------------------------------------------------- cache */

static void test_insert_lookup(void **state)
{
    (void)state;
    stk__algo_cache_t *c = NULL;
    assert_int_equal(stk__algo_cache_create(&c, "cudnn-91000"), 0);
    stk__algo_key_t k = key_of(STK__ALGO_FPROP, 256);
    stk__algo_choice_t got, want = choice_of(12, 2);
    assert_int_equal(stk__algo_cache_lookup(c, &k, &got), 0);
    assert_int_equal(stk__algo_cache_insert(c, &k, &want), 0);
    assert_int_equal(stk__algo_cache_lookup(c, &k, &got), 1);
    assert_choice_equal(&got, &want);
    assert_int_equal(stk__algo_cache_size(c), 1);

    /* Every field of the key tells problems apart. */
    for (int f = 0; f < 20; f++) {
        stk__algo_key_t o = k;
        int64_t *num[16] = {&o.align, &o.tf32, &o.n, &o.c, &o.h, &o.w, &o.k, &o.r,
                            &o.s, &o.sh, &o.sw, &o.ph, &o.pw, &o.dh, &o.dw, &o.groups};
        if (f == 0)
            o.op = STK__ALGO_FPROP_BN;
        else if (f == 1)
            strcpy(o.dtype, "bf16");
        else if (f == 2)
            strcpy(o.layout, "nhwc");
        else if (f == 3)
            strcpy(o.device, "NVIDIA_A100-sm80-108");
        else
            (*num[f - 4])++;
        assert_int_equal(stk__algo_cache_lookup(c, &o, NULL), 0);
    }

    /* Insert replaces; a second problem adds. */
    stk__algo_choice_t again = choice_of(40, 0);
    assert_int_equal(stk__algo_cache_insert(c, &k, &again), 0);
    assert_int_equal(stk__algo_cache_size(c), 1);
    assert_int_equal(stk__algo_cache_lookup(c, &k, &got), 1);
    assert_int_equal(got.engine, 40);
    for (int i = 0; i < 100; i++) {
        stk__algo_key_t o = key_of(i % 3, 1000 + i);
        stk__algo_choice_t ch = choice_of(i, i % 5);
        assert_int_equal(stk__algo_cache_insert(c, &o, &ch), 0);
    }
    assert_int_equal(stk__algo_cache_size(c), 101);
    stk__algo_key_t o = key_of(99 % 3, 1099);
    assert_int_equal(stk__algo_cache_lookup(c, &o, &got), 1);
    assert_int_equal(got.engine, 99);

    /* Keys whose words would break the file's lines are refused. */
    stk__algo_key_t bad = k;
    bad.device[0] = '\0';
    assert_int_equal(stk__algo_cache_insert(c, &bad, &want), -EINVAL);
    strcpy(bad.device, "NVIDIA H200");
    assert_int_equal(stk__algo_cache_insert(c, &bad, &want), -EINVAL);
    bad = k;
    strcpy(bad.dtype, "f:32");
    assert_int_equal(stk__algo_cache_insert(c, &bad, &want), -EINVAL);
    bad = k;
    bad.op = STK__ALGO_OPS;
    assert_int_equal(stk__algo_cache_insert(c, &bad, &want), -EINVAL);
    stk__algo_choice_t many = choice_of(1, 0);
    many.nknobs = STK__ALGO_MAX_KNOBS + 1;
    assert_int_equal(stk__algo_cache_insert(c, &k, &many), -EINVAL);
    assert_int_equal(stk__algo_cache_size(c), 101);

    stk__algo_cache_clear(c);
    assert_int_equal(stk__algo_cache_size(c), 0);
    assert_int_equal(stk__algo_cache_lookup(c, &k, NULL), 0);
    stk__algo_cache_destroy(&c);
    assert_null(c);
    stk__algo_cache_destroy(&c);
    stk__algo_cache_destroy(NULL);
    assert_int_equal(stk__algo_cache_create(&c, "two words"), -EINVAL);
    assert_int_equal(stk__algo_cache_create(&c, ""), -EINVAL);
}

static void test_key_format(void **state)
{
    (void)state;
    stk__algo_key_t k = key_of(STK__ALGO_DGRAD, 64);
    char buf[256];
    assert_int_equal(stk__algo_key_format(&k, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "dgrad f32 nchw NVIDIA_H200-sm90-132 16 0 64 3 28 28 32 3 3 1 1 1 1 1 1 1");
    assert_int_equal(stk__algo_key_format(&k, buf, 10), -ENAMETOOLONG);
    /* The eval-mode fused forwards are problems of their own. */
    k = key_of(STK__ALGO_FPROP_BN_RELU, 64);
    assert_int_equal(stk__algo_key_format(&k, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "fprop_bn_relu f32 nchw NVIDIA_H200-sm90-132 16 0 64 3 28 28 32 3 3 1 1 1 1 1 1 1");
    k.op = STK__ALGO_FPROP_BN;
    assert_int_equal(stk__algo_key_format(&k, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "fprop_bn f32 nchw NVIDIA_H200-sm90-132 16 0 64 3 28 28 32 3 3 1 1 1 1 1 1 1");
}

/* --------------------------------------------------------------- file */

static void test_save_load(void **state)
{
    (void)state;
    char path[128];
    path_in(path, sizeof(path), "algo.cache");
    stk__algo_cache_t *a = NULL, *b = NULL;
    assert_int_equal(stk__algo_cache_create(&a, "cudnn-91000"), 0);
    assert_int_equal(stk__algo_cache_create(&b, "cudnn-91000"), 0);
    for (int i = 0; i < 30; i++) {
        stk__algo_key_t k = key_of(i % STK__ALGO_OPS, 1 + i);
        stk__algo_choice_t ch = choice_of(i, i % (STK__ALGO_MAX_KNOBS + 1));
        ch.time_ms = 0.001 * (i + 1);
        assert_int_equal(stk__algo_cache_insert(a, &k, &ch), 0);
    }
    assert_int_equal(stk__algo_cache_save(a, path), 0);
    assert_int_equal(files_in_tmpdir(), 1); /* no temporary left behind */
    assert_int_equal(stk__algo_cache_load(b, path), 30);
    assert_int_equal(stk__algo_cache_size(b), 30);
    for (int i = 0; i < 30; i++) {
        stk__algo_key_t k = key_of(i % STK__ALGO_OPS, 1 + i);
        stk__algo_choice_t want, got;
        assert_int_equal(stk__algo_cache_lookup(a, &k, &want), 1);
        assert_int_equal(stk__algo_cache_lookup(b, &k, &got), 1);
        assert_choice_equal(&got, &want);
    }

    /* Saving again replaces the file whole; loading merges by key. */
    stk__algo_cache_clear(a);
    stk__algo_key_t k = key_of(0, 1);
    stk__algo_choice_t ch = choice_of(77, 1);
    assert_int_equal(stk__algo_cache_insert(a, &k, &ch), 0);
    assert_int_equal(stk__algo_cache_save(a, path), 0);
    assert_int_equal(stk__algo_cache_load(b, path), 1);
    assert_int_equal(stk__algo_cache_size(b), 30);
    stk__algo_choice_t got;
    assert_int_equal(stk__algo_cache_lookup(b, &k, &got), 1);
    assert_int_equal(got.engine, 77);

    /* An empty cache saves and loads as none. */
    stk__algo_cache_clear(a);
    assert_int_equal(stk__algo_cache_save(a, path), 0);
    assert_int_equal(stk__algo_cache_load(a, path), 0);
    assert_int_equal(files_in_tmpdir(), 1);
    stk__algo_cache_destroy(&a);
    stk__algo_cache_destroy(&b);
}

static void test_load_comments_and_blank_lines(void **state)
{
    (void)state;
    char path[128];
    path_in(path, sizeof(path), "hand.cache");
    write_text(path, "stoker-algo-cache 1 cudnn-91000\n"
                     "# written by hand\n"
                     "\n"
                     "fprop f32 nchw H200 16 0 8 3 28 28 32 3 3 1 1 1 1 1 1 1 : 5 0 0.5 2 1=4 9=-2\n"
                     "   \t\n"
                     "wgrad f32 nchw H200 4 1 8 3 28 28 32 3 3 1 1 1 1 1 1 1 : 6 128 0 0\n");
    stk__algo_cache_t *c = NULL;
    assert_int_equal(stk__algo_cache_create(&c, "cudnn-91000"), 0);
    assert_int_equal(stk__algo_cache_load(c, path), 2);
    stk__algo_key_t k = key_of(STK__ALGO_FPROP, 8);
    strcpy(k.device, "H200");
    stk__algo_choice_t got;
    assert_int_equal(stk__algo_cache_lookup(c, &k, &got), 1);
    assert_int_equal(got.engine, 5);
    assert_int_equal(got.nknobs, 2);
    assert_int_equal(got.knob_type[1], 9);
    assert_int_equal(got.knob_value[1], -2);
    k.op = STK__ALGO_WGRAD;
    k.align = 4;
    k.tf32 = 1;
    assert_int_equal(stk__algo_cache_lookup(c, &k, &got), 1);
    assert_int_equal(got.workspace, 128);
    stk__algo_cache_destroy(&c);
}

static void test_load_errors(void **state)
{
    (void)state;
    char path[128], missing[160];
    path_in(path, sizeof(path), "bad.cache");
    path_in(missing, sizeof(missing), "none.cache");
    const char *good = "fprop f32 nchw H200 16 0 8 3 28 28 32 3 3 1 1 1 1 1 1 1 : 5 0 0.5 1 1=4\n";
    static const struct {
        const char *text;
        int rc;
        const char *msg;
    } cases[] = {
        {"", STK_EFORMAT, "empty"},
        {"PK\x03\x04 zip file\n", STK_EFORMAT, "not a cache file"},
        {"stoker-algo-cache 2 cudnn-91000\n", STK_EFORMAT, "format version 2"},
        {"stoker-algo-cache 1 cudnn-90800\n", STK_EFORMAT, "written for cudnn-90800"},
        {"stoker-algo-cache 1\n", STK_EFORMAT, "not a cache file"},
        /* Each line below follows a good one: nothing of the file is kept. */
        {"xprop f32 nchw H200 16 0 8 3 28 28 32 3 3 1 1 1 1 1 1 1 : 5 0 0.5 0\n", STK_EDATA, "line 3"},
        {"fprop f32 nchw H200 16 0 8 3 28 28 32 3 3 1 1 1 1 1 1 : 5 0 0.5 0\n", STK_EDATA, "line 3"},
        {"fprop f32 nchw H200 16 0 8 3 28 28 32 3 3 1 1 1 1 1 1 1 5 0 0.5 0\n", STK_EDATA, "line 3"},
        {"fprop f32 nchw H200 16 0 8 3 28 28 32 3 3 1 1 1 1 1 1 -1 : 5 0 0.5 0\n", STK_EDATA, "line 3"},
        {"fprop f32 nchw H200 16 0 8 3 28x 28 32 3 3 1 1 1 1 1 1 1 : 5 0 0.5 0\n", STK_EDATA, "line 3"},
        {"fprop f32 nchw H200 16 0 8 3 28 28 32 3 3 1 1 1 1 1 1 1 : 5 0 fast 0\n", STK_EDATA, "line 3"},
        {"fprop f32 nchw H200 16 0 8 3 28 28 32 3 3 1 1 1 1 1 1 1 : 5 0 -1 0\n", STK_EDATA, "line 3"},
        {"fprop f32 nchw H200 16 0 8 3 28 28 32 3 3 1 1 1 1 1 1 1 : 5 0 0.5 2 1=4\n", STK_EDATA, "line 3"},
        {"fprop f32 nchw H200 16 0 8 3 28 28 32 3 3 1 1 1 1 1 1 1 : 5 0 0.5 1 1=4 2=2\n", STK_EDATA, "line 3"},
        {"fprop f32 nchw H200 16 0 8 3 28 28 32 3 3 1 1 1 1 1 1 1 : 5 0 0.5 1 14\n", STK_EDATA, "line 3"},
        {"fprop f32 nchw H200 16 0 8 3 28 28 32 3 3 1 1 1 1 1 1 1 : 5 0 0.5 1 1=x\n", STK_EDATA, "line 3"},
        {"fprop f32 nchw H200 16 0 8 3 28 28 32 3 3 1 1 1 1 1 1 1 : 5 0 0.5 99\n", STK_EDATA, "line 3"},
        {"fprop f32 nchw H200 16 0 8 3 28 28 32 3 3 1 1 1 1 1 1 1 : 99999999999999999999 0 0.5 0\n", STK_EDATA,
         "line 3"},
        {"fprop f32 nchw H200 16 0 8 3 28 28 32 3 3 1 1 1 1 1 1 1 : 5 0 0.5 0\x01\n", STK_EDATA, "line 3"},
    };
    stk__algo_cache_t *c = NULL;
    assert_int_equal(stk__algo_cache_create(&c, "cudnn-91000"), 0);
    stk__algo_key_t kept = key_of(STK__ALGO_DGRAD, 2);
    stk__algo_choice_t ch = choice_of(3, 1);
    assert_int_equal(stk__algo_cache_insert(c, &kept, &ch), 0);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char text[1024];
        if (cases[i].rc == STK_EDATA)
            snprintf(text, sizeof(text), "stoker-algo-cache 1 cudnn-91000\n%s%s", good, cases[i].text);
        else
            snprintf(text, sizeof(text), "%s", cases[i].text);
        write_text(path, text);
        int rc = stk__algo_cache_load(c, path);
        if (rc != cases[i].rc || !strstr(stk_error_message(), cases[i].msg) || !strstr(stk_error_message(), path))
            fail_msg("case %zu: rc %d (%s), want %d and '%s'", i, rc, stk_error_message(), cases[i].rc,
                     cases[i].msg);
        /* All or nothing: the good line before the bad one is not taken. */
        assert_int_equal(stk__algo_cache_size(c), 1);
        assert_int_equal(stk__algo_cache_lookup(c, &kept, NULL), 1);
    }
    /* A line longer than any entry. */
    char longl[2100];
    memset(longl, '7', sizeof(longl) - 2);
    longl[sizeof(longl) - 2] = '\n';
    longl[sizeof(longl) - 1] = '\0';
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "stoker-algo-cache 1 cudnn-91000\n%s", longl);
    fclose(f);
    assert_int_equal(stk__algo_cache_load(c, path), STK_EDATA);
    assert_non_null(strstr(stk_error_message(), "line 2: too long"));

    assert_int_equal(stk__algo_cache_load(c, missing), -ENOENT);
    assert_non_null(strstr(stk_error_message(), missing));
    assert_int_equal(stk__algo_cache_load(c, tmpdir), -EISDIR);
    assert_int_equal(stk__algo_cache_load(c, NULL), -EINVAL);
    assert_int_equal(stk__algo_cache_size(c), 1);
    stk__algo_cache_destroy(&c);
}

static void test_save_errors(void **state)
{
    (void)state;
    char path[160];
    path_in(path, sizeof(path), "no/such/folder/algo.cache");
    stk__algo_cache_t *c = NULL;
    assert_int_equal(stk__algo_cache_create(&c, "cudnn-91000"), 0);
    stk__algo_key_t k = key_of(0, 1);
    stk__algo_choice_t ch = choice_of(1, 1);
    assert_int_equal(stk__algo_cache_insert(c, &k, &ch), 0);
    assert_int_equal(stk__algo_cache_save(c, path), -ENOENT);
    assert_non_null(strstr(stk_error_message(), "no/such/folder/algo.cache"));
    /* The target is a folder: rename fails, the temporary is removed. */
    char dir[128];
    path_in(dir, sizeof(dir), "adir");
    assert_int_equal(mkdir(dir, 0755), 0);
    char inner[160];
    snprintf(inner, sizeof(inner), "%s/x", dir);
    write_text(inner, "x");
    int rc = stk__algo_cache_save(c, dir);
    assert_true(rc == -EISDIR || rc == -ENOTEMPTY || rc == -EEXIST);
    assert_non_null(strstr(stk_error_message(), "renaming"));
    assert_int_equal(files_in_tmpdir(), 1);
    assert_int_equal(stk__algo_cache_save(c, NULL), -EINVAL);
    assert_int_equal(stk__algo_cache_save(c, ""), -EINVAL);
    stk__algo_cache_destroy(&c);
}

/* --------------------------------------------------------- model config */

static void test_cpu_model_ignores_cudnn_fields(void **state)
{
    (void)state;
    stk_model_builder_t *b = NULL;
    assert_int_equal(stk_model_builder_create(&b), 0);
    assert_int_equal(stk_model_builder_parse(b, "input shape=2,6,6\nconv2d out=3 kernel=3 pad=1\nflatten\n"
                                                "linear out=3\ncross_entropy",
                                             NULL),
                     0);
    stk_model_config_t cfg;
    stk_model_config_default(&cfg);
    assert_int_equal(cfg.cudnn_policy, STK_CUDNN_HEURISTIC);
    assert_int_equal(cfg.cudnn_workspace_limit, 0);
    assert_null(cfg.cudnn_cache_path);
    cfg.batch_size = 4;
    cfg.cudnn_policy = STK_CUDNN_BENCHMARK;
    cfg.cudnn_workspace_limit = 1;
    cfg.cudnn_cache_path = "/nonexistent/folder/algo.cache";
    stk_model_t *m = NULL;
    assert_int_equal(stk_model_create(&m, b, &cfg), 0);
    stk_algo_stats_t st;
    memset(&st, 0xff, sizeof(st));
    assert_int_equal(stk_model_algo_stats(m, &st), 0);
    assert_int_equal(st.plans, 0);
    assert_int_equal(st.hits, 0);
    assert_int_equal(st.misses, 0);
    assert_int_equal(st.timed, 0);
    assert_int_equal(st.skipped, 0);
    assert_int_equal(stk_model_algo_stats(m, NULL), -EINVAL);
    assert_int_equal(stk_model_algo_stats(NULL, &st), -EINVAL);
    stk_model_destroy(&m);
    char path[128];
    path_in(path, sizeof(path), "never.cache");
    cfg.cudnn_cache_path = path;
    assert_int_equal(stk_model_create(&m, b, &cfg), 0);
    stk_model_destroy(&m);
    assert_int_equal(files_in_tmpdir(), 0); /* the CPU backend writes no cache */

    cfg.cudnn_policy = (stk_cudnn_policy_t)3;
    assert_int_equal(stk_model_create(&m, b, &cfg), STK_ECONFIG);
    assert_non_null(strstr(stk_error_message(), "cudnn_policy 3"));
    assert_null(m);
    stk_model_builder_destroy(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reject_rules),
        cmocka_unit_test(test_policy_names),
        cmocka_unit_test(test_insert_lookup),
        cmocka_unit_test(test_key_format),
        cmocka_unit_test_setup_teardown(test_save_load, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_comments_and_blank_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_save_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cpu_model_ignores_cudnn_fields, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
