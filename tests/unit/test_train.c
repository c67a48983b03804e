/* SPDX-License-Identifier: MIT */
/* stoker-train: the config parser (keys, values, line numbers, --set),
 * the report writers, and end-to-end runs of the tool on a tiny data set:
 * config errors that write nothing, gradient accumulation equal to one big
 * batch, bit-exact resume with 0 and 2 workers, and corrupt checkpoints. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "../../tools/stoker-train.h"
#include "stoker/checkpoint.h"
#include "stoker/shard.h"

static char tmpdir[64];

static int setup(void **state)
{
    (void)state;
    strcpy(tmpdir, "/tmp/stk-train-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static void expect_err(const char *err, const char *needle)
{
    if (!strstr(err, needle))
        fail_msg("error '%s' lacks '%s'", err, needle);
}

/* ---- config ------------------------------------------------------------ */

static void test_config_parse(void **state)
{
    (void)state;
    train_config_t c;
    char err[1024];
    train_config_default(&c);
    const char *text = "# a comment\n"
                       "train_data = data/a   # trailing comment\n"
                       "  test_data=data/b\n"
                       "\n"
                       "model = m.model\n"
                       "augment = crop:28,pad=2|hflip|normalize:mean=0.2860,std=0.3530\n"
                       "optimizer = sgd:lr=0.1,momentum=0.9,nesterov=1,weight_decay=5e-4\n"
                       "scheduler = warmup:1ep,start=0.1|cosine:eta_min=0\n"
                       "epochs = 15\n"
                       "batch_size = 128\n"
                       "accum_steps = 4\n"
                       "drop_last = false\n"
                       "seed = 18446744073709551615\n"
                       "progress = off\n";
    assert_int_equal(train_config_parse(&c, text, "x.conf", err, sizeof err), 0);
    assert_string_equal(c.train_data, "data/a");
    assert_string_equal(c.test_data, "data/b");
    assert_string_equal(c.augment, "crop:28,pad=2|hflip|normalize:mean=0.2860,std=0.3530");
    assert_string_equal(c.scheduler, "warmup:1ep,start=0.1|cosine:eta_min=0");
    assert_int_equal(c.epochs, 15);
    assert_int_equal(c.accum_steps, 4);
    assert_int_equal(c.drop_last, 0);
    assert_true(c.seed == UINT64_MAX);
    assert_int_equal(c.progress, 0);
    assert_int_equal(train_config_check(&c, err, sizeof err), 0);

    char eval[512];
    train_config_eval_augment(&c, eval, sizeof eval);
    assert_string_equal(eval, "normalize:mean=0.2860,std=0.3530");
    strcpy(c.augment, "hflip");
    train_config_eval_augment(&c, eval, sizeof eval);
    assert_string_equal(eval, "");
    strcpy(c.test_augment, "normalize:mean=0.5,std=0.5");
    train_config_eval_augment(&c, eval, sizeof eval);
    assert_string_equal(eval, "normalize:mean=0.5,std=0.5");

    /* --set overrides; the formatted config parses back to the same. */
    assert_int_equal(train_config_set(&c, "epochs=3", err, sizeof err), 0);
    assert_int_equal(train_config_set(&c, " lr_is_not_a_key = 1", err, sizeof err), -1);
    expect_err(err, "--set  lr_is_not_a_key = 1: unknown key 'lr_is_not_a_key'");
    assert_int_equal(c.epochs, 3);
    char buf[16384];
    assert_int_equal(train_config_format(&c, buf, sizeof buf), 0);
    train_config_t d;
    train_config_default(&d);
    assert_int_equal(train_config_parse(&d, buf, "formatted", err, sizeof err), 0);
    char buf2[16384];
    assert_int_equal(train_config_format(&d, buf2, sizeof buf2), 0);
    assert_string_equal(buf, buf2);
    assert_string_equal(d.augment, "hflip");
    assert_int_equal(d.epochs, 3);
    assert_true(d.seed == UINT64_MAX);
    assert_int_equal(train_config_format(&c, buf, 10), -1);
}

static void expect_parse_error(const char *text, const char *needle)
{
    train_config_t c;
    char err[1024];
    train_config_default(&c);
    assert_int_equal(train_config_parse(&c, text, "t.conf", err, sizeof err), -1);
    expect_err(err, needle);
}

static void test_config_errors(void **state)
{
    (void)state;
    expect_parse_error("epochs = 2\nepoch = 3\n", "t.conf:2: unknown key 'epoch' (did you mean 'epochs'?)");
    expect_parse_error("zzzzzzzz = 3\n", "t.conf:1: unknown key 'zzzzzzzz'");
    expect_parse_error("\n\nepochs = three\n", "t.conf:3: key 'epochs': 'three' is not a non-negative integer");
    expect_parse_error("epochs = -1\n", "key 'epochs': '-1' is not a non-negative integer");
    expect_parse_error("epochs = 0\n", "key 'epochs': 0 is out of range");
    expect_parse_error("batch_size = 99999999999999999999\n", "key 'batch_size'");
    expect_parse_error("drop_last = maybe\n", "key 'drop_last': 'maybe' is not a boolean");
    expect_parse_error("progress = sometimes\n", "key 'progress': 'sometimes' is not one of auto|on|off");
    expect_parse_error("just words\n", "t.conf:1: expected 'key = value', got 'just words'");
    expect_parse_error(" = 4\n", "missing key");
    char longline[2100];
    memset(longline, 'a', sizeof longline);
    memcpy(longline, "model = ", 8);
    longline[sizeof longline - 1] = '\0';
    expect_parse_error(longline, "key 'model': value is longer than");

    train_config_t c;
    char err[1024];
    train_config_default(&c);
    assert_int_equal(train_config_check(&c, err, sizeof err), -1);
    expect_err(err, "key 'train_data' is required");
    strcpy(c.train_data, "a");
    strcpy(c.test_data, "b");
    strcpy(c.model, "m");
    assert_int_equal(train_config_check(&c, err, sizeof err), 0);
    c.stop_after_epochs = 5;
    assert_int_equal(train_config_check(&c, err, sizeof err), -1);
    expect_err(err, "stop_after_epochs");
    c.stop_after_epochs = 0;
    c.checkpoint_steps = 10;
    assert_int_equal(train_config_check(&c, err, sizeof err), -1);
    expect_err(err, "needs checkpoint_dir");

    assert_int_equal(train_config_load(&c, "/nonexistent/x.conf", err, sizeof err), -1);
    expect_err(err, "cannot open config /nonexistent/x.conf");
}

/* ---- reports ----------------------------------------------------------- */

static void test_reports(void **state)
{
    (void)state;
    train_epoch_stats_t h[3];
    for (int i = 0; i < 3; i++) {
        h[i] = (train_epoch_stats_t){.epoch = i + 1, .step = 10u * (unsigned)(i + 1), .train_loss = 1.0 / (i + 1),
                                     .train_acc = 0.5 + 0.1 * i, .test_loss = 1.2 / (i + 1), .test_acc = 0.45 + 0.1 * i,
                                     .lr = 0.1 / (i + 1), .images_per_s = 1000, .data_wait = 0.01, .epoch_s = 2};
    }
    h[1].test_loss = NAN;
    char path[128];
    snprintf(path, sizeof path, "%s/m.jsonl", tmpdir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(train_metrics_write(f, &h[1]), 0);
    fclose(f);
    f = fopen(path, "r");
    char line[1024];
    assert_non_null(fgets(line, sizeof line, f));
    fclose(f);
    expect_err(line, "{\"epoch\":2,\"step\":20,\"train_loss\":0.5,");
    expect_err(line, "\"test_loss\":null,");
    expect_err(line, "\"epoch_s\":2}\n");

    snprintf(path, sizeof path, "%s/p.svg", tmpdir);
    assert_int_equal(train_plot_svg(path, h, 3), 0);
    f = fopen(path, "r");
    assert_non_null(f);
    char svg[65536];
    size_t n = fread(svg, 1, sizeof svg - 1, f);
    svg[n] = '\0';
    fclose(f);
    expect_err(svg, "<svg xmlns='http://www.w3.org/2000/svg'");
    expect_err(svg, "learning rate");
    expect_err(svg, "</svg>\n");
    int polylines = 0;
    for (const char *p = svg; (p = strstr(p, "<polyline")); p++)
        polylines++;
    assert_int_equal(polylines, 5);
    /* One epoch, and none, still draw. */
    assert_int_equal(train_plot_svg(path, h, 1), 0);
    assert_int_equal(train_plot_svg(path, h, 0), 0);
    assert_int_equal(train_plot_svg("/nonexistent/p.svg", h, 1), -ENOENT);

    snprintf(path, sizeof path, "%s/summary.txt", tmpdir);
    f = fopen(path, "w");
    train_summary_print(f, h, 3);
    fclose(f);
    f = fopen(path, "r");
    n = fread(svg, 1, sizeof svg - 1, f);
    svg[n] = '\0';
    fclose(f);
    expect_err(svg, "epoch");
    expect_err(svg, "test_acc");
    expect_err(svg, "65.00%");
}


/* ---- end to end ------------------------------------------------------- */

#define IMG 12

static char tool[512];
static int have_tool;

/* Writes a tiny data set: IMG x IMG u8 images of 3 classes (a bright
 * square whose position depends on the class, plus noise), i64 labels. */
static void write_dataset(const char *dir, int n, uint32_t seed)
{
    stk_schema_t schema;
    memset(&schema, 0, sizeof schema);
    int64_t ishape[3] = {1, IMG, IMG};
    assert_int_equal(stk_schema_add(&schema, "image", STK_DTYPE_U8, 3, ishape), 0);
    assert_int_equal(stk_schema_add(&schema, "label", STK_DTYPE_I64, 0, NULL), 0);
    stk_writer_config_t wcfg;
    stk_writer_config_default(&wcfg);
    wcfg.zstd_level = 1;
    stk_writer_t *w = NULL;
    assert_int_equal(stk_writer_create(&w, dir, &schema, &wcfg), 0);
    stk_rng_t rng;
    stk_rng_init(&rng, seed, 0);
    for (int i = 0; i < n; i++) {
        uint8_t img[IMG * IMG];
        int64_t label = (int64_t)stk_rng_below(&rng, 3);
        for (int p = 0; p < IMG * IMG; p++)
            img[p] = (uint8_t)stk_rng_below(&rng, 64);
        int y0 = 1 + 3 * (int)label, x0 = 2 + 2 * (int)label;
        for (int y = y0; y < y0 + 4; y++)
            for (int x = x0; x < x0 + 4; x++)
                img[y * IMG + x] = (uint8_t)(180 + stk_rng_below(&rng, 70));
        const void *data[2] = {img, &label};
        assert_int_equal(stk_writer_add(w, data, NULL), 0);
    }
    assert_int_equal(stk_writer_finish(w), 0);
    stk_writer_destroy(&w);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static int setup_e2e(void **state)
{
    if (setup(state) != 0)
        return -1;
    const char *root = getenv("STK_BUILD_ROOT");
    snprintf(tool, sizeof tool, "%s/tools/stoker-train", root ? root : "build");
    have_tool = access(tool, X_OK) == 0;
    char path[256];
    snprintf(path, sizeof path, "%s/train", tmpdir);
    write_dataset(path, 256, 1);
    snprintf(path, sizeof path, "%s/test", tmpdir);
    write_dataset(path, 64, 2);
    /* Plain (no batchnorm, no dropout): accumulation is exact up to float
     * summation order. */
    snprintf(path, sizeof path, "%s/plain.model", tmpdir);
    write_text(path, "input shape=1,12,12\n"
                     "conv2d name=conv1 out=4 kernel=3 pad=1\n"
                     "relu\n"
                     "maxpool2d kernel=2\n"
                     "flatten\n"
                     "linear name=fc out=3\n"
                     "cross_entropy\n");
    /* With batchnorm and dropout: resume must restore running stats and
     * reproduce the dropout masks. */
    snprintf(path, sizeof path, "%s/bn.model", tmpdir);
    write_text(path, "input shape=1,12,12\n"
                     "conv2d name=conv1 out=4 kernel=3 pad=1 bias=0\n"
                     "batchnorm2d name=bn1\n"
                     "relu\n"
                     "maxpool2d kernel=2\n"
                     "flatten\n"
                     "dropout p=0.25\n"
                     "linear name=fc out=3\n"
                     "cross_entropy\n");
    snprintf(path, sizeof path, "%s/other.model", tmpdir);
    write_text(path, "input shape=1,12,12\n"
                     "conv2d name=conv1 out=5 kernel=3 pad=1\n"
                     "relu\n"
                     "maxpool2d kernel=2\n"
                     "flatten\n"
                     "linear name=fc out=3\n"
                     "cross_entropy\n");
    snprintf(path, sizeof path, "%s/base.conf", tmpdir);
    char conf[2048];
    snprintf(conf, sizeof conf,
             "train_data = %s/train\n"
             "test_data = %s/test\n"
             "model = %s/plain.model\n"
             "augment = crop:12,pad=1|hflip|normalize:mean=0.3,std=0.3\n"
             "optimizer = sgd:lr=0.05,momentum=0.9,nesterov=1,weight_decay=5e-4\n"
             "scheduler = warmup:1ep,start=0.1|cosine:eta_min=0\n"
             "epochs = 2\n"
             "batch_size = 32\n"
             "workers = 0\n"
             "seed = 7\n"
             "threads = 1\n"
             "keep_last = 0\n"
             "progress = off\n",
             tmpdir, tmpdir, tmpdir);
    write_text(path, conf);
    return 0;
}

static pid_t spawn_tool(const char **argv)
{
    char out_path[128], err_path[128];
    snprintf(out_path, sizeof out_path, "%s/stdout.txt", tmpdir);
    snprintf(err_path, sizeof err_path, "%s/stderr.txt", tmpdir);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int o = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int e = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(o, 1);
        dup2(e, 2);
        execv(tool, (char *const *)argv);
        _exit(127);
    }
    return pid;
}

/* Waits for the tool; its stderr's text goes to err. Returns the exit
 * status, or 128 + signal. */
static int wait_tool(pid_t pid, char *err, size_t cap)
{
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    char err_path[128];
    snprintf(err_path, sizeof err_path, "%s/stderr.txt", tmpdir);
    FILE *f = fopen(err_path, "r");
    size_t n = f ? fread(err, 1, cap - 1, f) : 0;
    err[n] = '\0';
    if (f)
        fclose(f);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Runs the tool with args (NULL-terminated); stdout and stderr go to
 * files in tmpdir, stderr's text is returned in err. */
static int run_tool(char *err, size_t cap, ...)
{
    const char *argv[32];
    int argc = 0;
    argv[argc++] = tool;
    va_list ap;
    va_start(ap, cap);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL && argc < 31)
        argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    return wait_tool(spawn_tool(argv), err, cap);
}

#define SKIP_WITHOUT_TOOL()                                                                                           \
    do {                                                                                                              \
        if (!have_tool) {                                                                                             \
            print_message("stoker-train not built at %s\n", tool);                                                    \
            skip();                                                                                                   \
        }                                                                                                             \
    } while (0)

static void expect_config_error(const char *needle, ...)
{
    char conf[128], out[128], set_ckpt[192], set_metrics[192], err[8192];
    snprintf(conf, sizeof conf, "%s/base.conf", tmpdir);
    snprintf(out, sizeof out, "%s/nothing", tmpdir);
    snprintf(set_ckpt, sizeof set_ckpt, "checkpoint_dir=%s/ckpt", out);
    snprintf(set_metrics, sizeof set_metrics, "metrics=%s/m.jsonl", out);
    const char *extra[8] = {0};
    va_list ap;
    va_start(ap, needle);
    for (int i = 0; i < 7; i++)
        if ((extra[i] = va_arg(ap, const char *)) == NULL)
            break;
    va_end(ap);
    int rc = run_tool(err, sizeof err, conf, "--set", set_ckpt, "--set", set_metrics, extra[0], extra[1], extra[2],
                      extra[3], NULL);
    if (rc != 2)
        fail_msg("exit %d (expected 2) for '%s'; stderr: %s", rc, needle, err);
    if (!strstr(err, needle))
        fail_msg("stderr lacks '%s': %s", needle, err);
    assert_false(exists(out));
}

static void test_e2e_config_errors(void **state)
{
    (void)state;
    SKIP_WITHOUT_TOOL();
    char bad[128], line[256];
    /* Unknown key in the file: the error names file, line and key. */
    snprintf(bad, sizeof bad, "%s/bad.conf", tmpdir);
    snprintf(line, sizeof line, "train_data = %s/train\nepohcs = 3\n", tmpdir);
    write_text(bad, line);
    char err[4096];
    assert_int_equal(run_tool(err, sizeof err, bad, NULL), 2);
    expect_err(err, "bad.conf:2: unknown key 'epohcs' (did you mean 'epochs'?)");

    expect_config_error("unknown key 'lrate'", "--set", "lrate=3", NULL);
    expect_config_error("key 'batch_size': 'big' is not a non-negative integer", "--set", "batch_size=big", NULL);
    expect_config_error("key 'train_data': data path /nonexistent/data: No such file or directory", "--set",
                        "train_data=/nonexistent/data", NULL);
    expect_config_error("key 'model'", "--set", "model=/nonexistent.model", NULL);
    expect_config_error("key 'augment'", "--set", "augment=crop:12|bogus", NULL);
    expect_config_error("key 'optimizer'", "--set", "optimizer=sgd:lr=-1", NULL);
    expect_config_error("key 'optimizer'", "--set", "optimizer=sgd:speed=3", NULL);
    expect_config_error("key 'scheduler'", "--set", "scheduler=zigzag", NULL);
    assert_int_equal(run_tool(err, sizeof err, NULL), 2);
    expect_err(err, "no config file given");
    assert_int_equal(run_tool(err, sizeof err, "/nonexistent.conf", NULL), 2);
    expect_err(err, "cannot open config /nonexistent.conf");
    assert_int_equal(run_tool(err, sizeof err, bad, "--frobnicate", NULL), 2);
    expect_err(err, "unknown option --frobnicate");
    /* --resume of a folder without checkpoints. */
    char empty[128];
    snprintf(empty, sizeof empty, "%s/emptyckpt", tmpdir);
    mkdir(empty, 0755);
    expect_config_error("no checkpoint", "--resume", empty, NULL);
}

/* The f32 tensors of the "model" section of the newest checkpoint in dir:
 * safetensors, an 8-byte header length, a JSON header, then the data. */
static float *load_params(const char *dir, size_t *n, stk_ckpt_t **keep)
{
    char path[512];
    assert_int_equal(stk_ckpt_dir_latest(dir, path, sizeof path), 0);
    assert_int_equal(stk_ckpt_open(keep, path), 0);
    const void *data;
    size_t len;
    assert_int_equal(stk_ckpt_find(*keep, "model", &data, &len), 0);
    uint64_t hlen;
    memcpy(&hlen, data, 8);
    assert_true(8 + hlen <= len);
    *n = (len - 8 - hlen) / sizeof(float);
    return (float *)((char *)data + 8 + hlen);
}

static void test_e2e_accumulation(void **state)
{
    (void)state;
    SKIP_WITHOUT_TOOL();
    char conf[128], ck_a[192], ck_b[192], err[8192];
    snprintf(conf, sizeof conf, "%s/base.conf", tmpdir);
    snprintf(ck_a, sizeof ck_a, "checkpoint_dir=%s/accA", tmpdir);
    snprintf(ck_b, sizeof ck_b, "checkpoint_dir=%s/accB", tmpdir);
    /* 256 samples: 8 micro-batches of 32 in groups of 4, or 2 batches of
     * 128: 2 optimizer steps each, with warmup changing the lr between
     * them and momentum carrying the first into the second. */
    int rc = run_tool(err, sizeof err, conf, "--set", ck_a, "--set", "batch_size=32", "--set", "accum_steps=4",
                      "--set", "epochs=2", "--set", "stop_after_epochs=1", NULL);
    if (rc)
        fail_msg("accum run: exit %d: %s", rc, err);
    rc = run_tool(err, sizeof err, conf, "--set", ck_b, "--set", "batch_size=128", "--set", "accum_steps=1", "--set",
                  "epochs=2", "--set", "stop_after_epochs=1", NULL);
    if (rc)
        fail_msg("big-batch run: exit %d: %s", rc, err);
    stk_ckpt_t *a = NULL, *b = NULL;
    size_t na, nb;
    const float *pa = load_params(ck_a + 15, &na, &a), *pb = load_params(ck_b + 15, &nb, &b);
    assert_int_equal(na, nb);
    assert_true(na > 100);
    double maxdiff = 0, maxabs = 0;
    for (size_t i = 0; i < na; i++) {
        double d = fabs((double)pa[i] - (double)pb[i]);
        if (d > maxdiff)
            maxdiff = d;
        if (fabs((double)pb[i]) > maxabs)
            maxabs = fabs((double)pb[i]);
    }
    if (maxdiff > 1e-5 * (1 + maxabs))
        fail_msg("accumulated and big-batch parameters differ by %g (max |p| %g)", maxdiff, maxabs);
    /* The schedule counted optimizer steps: both took 2. */
    char path[512];
    assert_int_equal(stk_ckpt_dir_latest(ck_a + 15, path, sizeof path), 0);
    expect_err(path, "ckpt-000000000002.stkc");
    stk_ckpt_close(&a);
    stk_ckpt_close(&b);
}

static void expect_same_section(stk_ckpt_t *a, stk_ckpt_t *b, const char *name)
{
    const void *da, *db;
    size_t la, lb;
    assert_int_equal(stk_ckpt_find(a, name, &da, &la), 0);
    assert_int_equal(stk_ckpt_find(b, name, &db, &lb), 0);
    assert_int_equal(la, lb);
    if (memcmp(da, db, la) != 0)
        fail_msg("section '%s' differs between %s and %s", name, stk_ckpt_path(a), stk_ckpt_path(b));
}

static void resume_case(const char *workers)
{
    char conf[128], set_w[64], ck[5][192], err[8192];
    snprintf(conf, sizeof conf, "%s/base.conf", tmpdir);
    snprintf(set_w, sizeof set_w, "workers=%s", workers);
    const char *names[5] = {"straight", "stopped", "midstep", "midres", "sigint"};
    for (int i = 0; i < 5; i++)
        snprintf(ck[i], sizeof ck[i], "checkpoint_dir=%s/res%s-%s", tmpdir, workers, names[i]);
    char model[192];
    snprintf(model, sizeof model, "model=%s/bn.model", tmpdir);
    /* 2 epochs straight, with a checkpoint every 3 steps as well. */
    int rc = run_tool(err, sizeof err, conf, "--set", set_w, "--set", model, "--set", ck[0], "--set",
                      "checkpoint_steps=3", NULL);
    if (rc)
        fail_msg("straight run: exit %d: %s", rc, err);
    /* 1 epoch, stop, resume, 1 epoch. */
    rc = run_tool(err, sizeof err, conf, "--set", set_w, "--set", model, "--set", ck[1], "--set",
                  "stop_after_epochs=1", NULL);
    if (rc)
        fail_msg("first half: exit %d: %s", rc, err);
    rc = run_tool(err, sizeof err, conf, "--set", set_w, "--set", model, "--set", ck[1], "--resume", ck[1] + 15, NULL);
    if (rc)
        fail_msg("resumed half: exit %d: %s", rc, err);
    /* Resume from a checkpoint taken mid-epoch (step 3 of 8 in epoch 1),
     * into another folder. */
    char mid[1024];
    snprintf(mid, sizeof mid, "%s/ckpt-000000000003.stkc", ck[0] + 15);
    assert_true(exists(mid));
    rc = run_tool(err, sizeof err, conf, "--set", set_w, "--set", model, "--set", ck[3], "--resume", mid, NULL);
    if (rc)
        fail_msg("mid-epoch resume: exit %d: %s", rc, err);

    /* Interrupted by SIGINT wherever it lands (it checkpoints at the next
     * optimizer step and exits 130), then resumed; a run that finished
     * before the signal arrived is fine too. */
    const char *argv[] = {tool, conf, "--set", set_w, "--set", model, "--set", ck[4], "--set", "checkpoint_steps=1",
                          NULL};
    pid_t pid = spawn_tool(argv);
    for (int i = 0; i < 20000; i++) {
        char p[512];
        if (stk_ckpt_dir_latest(ck[4] + 15, p, sizeof p) == 0)
            break;
        usleep(500);
    }
    kill(pid, SIGINT);
    rc = wait_tool(pid, err, sizeof err);
    if (rc != 0 && rc != 130)
        fail_msg("interrupted run: exit %d: %s", rc, err);
    if (rc == 0)
        print_message("note: the run finished before SIGINT arrived\n");
    if (rc == 130) {
        expect_err(err, "interrupted");
        rc = run_tool(err, sizeof err, conf, "--set", set_w, "--set", model, "--set", ck[4], "--resume", ck[4] + 15,
                      NULL);
        if (rc)
            fail_msg("resume after SIGINT: exit %d: %s", rc, err);
    }

    for (int other = 1; other <= 4; other += other == 1 ? 2 : 1) {
        char pa[512], pb[512];
        assert_int_equal(stk_ckpt_dir_latest(ck[0] + 15, pa, sizeof pa), 0);
        assert_int_equal(stk_ckpt_dir_latest(ck[other] + 15, pb, sizeof pb), 0);
        expect_err(pa, "ckpt-000000000016.stkc");
        expect_err(pb, "ckpt-000000000016.stkc");
        stk_ckpt_t *a = NULL, *b = NULL;
        assert_int_equal(stk_ckpt_open(&a, pa), 0);
        assert_int_equal(stk_ckpt_open(&b, pb), 0);
        expect_same_section(a, b, "model");
        expect_same_section(a, b, "optimizer");
        expect_same_section(a, b, "scheduler");
        stk_ckpt_close(&a);
        stk_ckpt_close(&b);
    }
}

static void test_e2e_resume_workers0(void **state)
{
    (void)state;
    SKIP_WITHOUT_TOOL();
    resume_case("0");
}

static void test_e2e_resume_workers2(void **state)
{
    (void)state;
    SKIP_WITHOUT_TOOL();
    resume_case("2");
}

static void copy_file(const char *from, const char *to)
{
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    assert_non_null(a);
    assert_non_null(b);
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, a)) > 0)
        assert_int_equal(fwrite(buf, 1, n, b), n);
    fclose(a);
    fclose(b);
}

static void test_e2e_bad_checkpoints(void **state)
{
    (void)state;
    SKIP_WITHOUT_TOOL();
    char conf[128], ck[192], err[8192], good[512], bad[256];
    snprintf(conf, sizeof conf, "%s/base.conf", tmpdir);
    snprintf(ck, sizeof ck, "checkpoint_dir=%s/badck", tmpdir);
    int rc = run_tool(err, sizeof err, conf, "--set", ck, "--set", "stop_after_epochs=1", NULL);
    if (rc)
        fail_msg("run: exit %d: %s", rc, err);
    assert_int_equal(stk_ckpt_dir_latest(ck + 15, good, sizeof good), 0);
    snprintf(bad, sizeof bad, "%s/bad.stkc", tmpdir);

    copy_file(good, bad);
    struct stat st;
    assert_int_equal(stat(bad, &st), 0);
    assert_int_equal(truncate(bad, st.st_size - 100), 0);
    expect_config_error("truncated", "--resume", bad, NULL);

    copy_file(good, bad);
    int fd = open(bad, O_RDWR);
    unsigned char c;
    assert_int_equal(pread(fd, &c, 1, st.st_size / 2), 1);
    c ^= 0x10;
    assert_int_equal(pwrite(fd, &c, 1, st.st_size / 2), 1);
    close(fd);
    expect_config_error("checksum mismatch", "--resume", bad, NULL);

    char model[192];
    snprintf(model, sizeof model, "model=%s/other.model", tmpdir);
    expect_config_error("does not fit model", "--resume", good, "--set", model, NULL);
    expect_config_error("key 'batch_size' was 32 in the checkpoint, the config says 64", "--resume", good, "--set",
                        "batch_size=64", NULL);
    write_text(bad, "not a checkpoint");
    expect_config_error("not a Stoker checkpoint", "--resume", bad, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_parse),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_reports),
    };
    const struct CMUnitTest e2e[] = {
        cmocka_unit_test(test_e2e_config_errors),
        cmocka_unit_test(test_e2e_accumulation),
        cmocka_unit_test(test_e2e_resume_workers0),
        cmocka_unit_test(test_e2e_resume_workers2),
        cmocka_unit_test(test_e2e_bad_checkpoints),
    };
    int failed = cmocka_run_group_tests(tests, setup, teardown);
    failed += cmocka_run_group_tests(e2e, setup_e2e, teardown);
    return failed;
}
