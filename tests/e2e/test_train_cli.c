/* SPDX-License-Identifier: MIT */
/* stoker-train end to end, as a user runs it, on a tiny data set: the
 * config parser (--print-config, every error with its file:line), reports,
 * gradient accumulation equal to one big batch, bit-exact resume after a
 * stop at each kind of point (signals delivered at exact steps through the
 * tool's pause hook, so that a test cannot pass without its signal), the
 * run identity rules (a new run never mixes with another's checkpoints or
 * metrics; the sequence of issue 17 replayed), corrupt checkpoints, and
 * the hostile cases: a batch that cannot fit in memory, a diverging run,
 * stopped workers with and without a timeout, and a SIGTERM to the whole
 * process group. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "../unit/test_util.h"
#include "stoker/stoker.h"

#define IMG 12

static char tmpdir[64];
static char tool[512];
static int have_tool;

static void expect_has(const char *text, const char *needle)
{
    if (!text || !strstr(text, needle))
        fail_msg("'%s' lacks '%s'", text ? text : "(null)", needle);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A tiny data set: IMG x IMG u8 images of 3 classes (a bright square
 * whose position depends on the class, plus noise), i64 labels. */
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

/* The whole file (read in pieces: /proc files have no size). */
static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return strdup("");
    size_t cap = 4096, n = 0, k;
    char *s = malloc(cap);
    while (s && (k = fread(s + n, 1, cap - n - 1, f)) > 0) {
        n += k;
        if (cap - n - 1 == 0)
            s = realloc(s, cap *= 2);
    }
    if (!s)
        abort();
    s[n] = '\0';
    fclose(f);
    return s;
}

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static int count_lines(const char *text)
{
    int n = 0;
    for (; *text; text++)
        n += *text == '\n';
    return n;
}

static int setup(void **state)
{
    (void)state;
    strcpy(tmpdir, "/tmp/stk-traincli-XXXXXX");
    if (!mkdtemp(tmpdir))
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
    /* Line numbers matter: errors cite them (optimizer is line 5). */
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

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Starts the tool (stdout and stderr to files in tmpdir), in its own
 * process group when own_group; with pause "E:B" it stops itself after
 * micro-batch B of epoch E. */
static pid_t spawn_tool(const char **argv, const char *pause, int own_group)
{
    char out_path[128], err_path[128];
    snprintf(out_path, sizeof out_path, "%s/stdout.txt", tmpdir);
    snprintf(err_path, sizeof err_path, "%s/stderr.txt", tmpdir);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (own_group)
            setpgid(0, 0);
        int o = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int e = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(o, 1);
        dup2(e, 2);
        if (pause)
            setenv("STK_TRAIN_TEST_PAUSE", pause, 1);
        execv(tool, (char *const *)argv);
        _exit(127);
    }
    if (own_group)
        setpgid(pid, pid);
    return pid;
}

/* Waits for the tool; stderr's text goes to err (and stdout's to out when
 * not NULL). Returns the exit status, or 128 + signal. */
static int wait_tool(pid_t pid, char *err, size_t cap, char *out, size_t ocap)
{
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    char path[128];
    snprintf(path, sizeof path, "%s/stderr.txt", tmpdir);
    char *t = read_text(path);
    snprintf(err, cap, "%s", t);
    free(t);
    if (out) {
        snprintf(path, sizeof path, "%s/stdout.txt", tmpdir);
        t = read_text(path);
        snprintf(out, ocap, "%s", t);
        free(t);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Waits until the paused tool has stopped itself (the pause hook). */
static void wait_paused(pid_t pid)
{
    int status;
    assert_int_equal(waitpid(pid, &status, WUNTRACED), pid);
    if (!WIFSTOPPED(status)) {
        char path[128];
        snprintf(path, sizeof path, "%s/stderr.txt", tmpdir);
        char *err = read_text(path);
        fail_msg("the run ended (status 0x%x) before its pause point: %s", status, err);
    }
}

#define MAX_ARGS 40

static int run_argv(char *err, size_t cap, char *out, size_t ocap, const char *pause, va_list ap)
{
    const char *argv[MAX_ARGS];
    int argc = 0;
    argv[argc++] = tool;
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL && argc < MAX_ARGS - 1)
        argv[argc++] = a;
    argv[argc] = NULL;
    return wait_tool(spawn_tool(argv, pause, 0), err, cap, out, ocap);
}

/* Runs the tool with args (NULL-terminated); stderr's text goes to err. */
static int run_tool(char *err, size_t cap, ...)
{
    va_list ap;
    va_start(ap, cap);
    int rc = run_argv(err, cap, NULL, 0, NULL, ap);
    va_end(ap);
    return rc;
}

static int run_tool_out(char *err, size_t cap, char *out, size_t ocap, ...)
{
    va_list ap;
    va_start(ap, ocap);
    int rc = run_argv(err, cap, out, ocap, NULL, ap);
    va_end(ap);
    return rc;
}

#define SKIP_WITHOUT_TOOL()                                                                                           \
    do {                                                                                                              \
        if (!have_tool) {                                                                                             \
            print_message("stoker-train not built at %s\n", tool);                                                    \
            skip();                                                                                                   \
        }                                                                                                             \
    } while (0)

static void conf_path(char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/base.conf", tmpdir);
}

/* ---- config ------------------------------------------------------------ */

static void test_print_config(void **state)
{
    (void)state;
    SKIP_WITHOUT_TOOL();
    char conf[256], err[8192], out[16384];
    snprintf(conf, sizeof conf, "%s/p.conf", tmpdir);
    write_text(conf, "# a comment\n"
                     "train_data = data/a   # trailing comment\n"
                     "  test_data=data/b\n"
                     "\n"
                     "model = m.model\n"
                     "augment = crop:28,pad=2|hflip|normalize:mean=0.2860,std=0.3530\n"
                     "scheduler = warmup:1ep,start=0.1|cosine:eta_min=0\n"
                     "epochs = 15\n"
                     "accum_steps = 4\n"
                     "drop_last = false\n"
                     "seed = 18446744073709551615\n"
                     "clip_norm = 2.5\n"
                     "precision = tf32\n"
                     "loss_scale = dynamic\n"
                     "run_dir = runs/x\n"
                     "progress = off\n"
                     "cudnn = benchmark\n"
                     "cudnn_cache = runs/algo.cache\n"
                     "cudnn_workspace_mb = 64\n");
    assert_int_equal(run_tool_out(err, sizeof err, out, sizeof out, conf, "--set", "epochs=3", "--print-config", NULL),
                     0);
    expect_has(out, "cudnn = benchmark\n");
    expect_has(out, "cudnn_cache = runs/algo.cache\n");
    expect_has(out, "cudnn_workspace_mb = 64\n");
    expect_has(out, "train_data = data/a\n");
    expect_has(out, "test_data = data/b\n");
    expect_has(out, "augment = crop:28,pad=2|hflip|normalize:mean=0.2860,std=0.3530\n");
    expect_has(out, "epochs = 3\n");
    expect_has(out, "accum_steps = 4\n");
    expect_has(out, "drop_last = false\n");
    expect_has(out, "seed = 18446744073709551615\n");
    expect_has(out, "clip_norm = 2.5\n");
    expect_has(out, "progress = off\n");
    expect_has(out, "precision = tf32\n");
    expect_has(out, "cuda_graph = off\n");
    expect_has(out, "loss_scale = dynamic\n");
    expect_has(out, "loss_scale_init = 65536\n");
    expect_has(out, "loss_scale_growth_interval = 2000\n");
    /* run_dir gives the outputs their default places. */
    expect_has(out, "checkpoint_dir = runs/x/checkpoints\n");
    expect_has(out, "metrics = runs/x/metrics.jsonl\n");
    /* The printed config reads back to itself. */
    char again[256];
    snprintf(again, sizeof again, "%s/again.conf", tmpdir);
    write_text(again, out);
    char out2[16384];
    assert_int_equal(run_tool_out(err, sizeof err, out2, sizeof out2, again, "--print-config", NULL), 0);
    assert_string_equal(out, out2);
}

static void expect_file_error(const char *text, const char *needle)
{
    char conf[256], err[8192];
    snprintf(conf, sizeof conf, "%s/t.conf", tmpdir);
    write_text(conf, text);
    int rc = run_tool(err, sizeof err, conf, "--print-config", NULL);
    if (rc != 2)
        fail_msg("exit %d (expected 2) for '%s'; stderr: %s", rc, needle, err);
    expect_has(err, needle);
}

static void test_config_errors(void **state)
{
    (void)state;
    SKIP_WITHOUT_TOOL();
    expect_file_error("epochs = 2\nepoch = 3\n", "t.conf:2: unknown key 'epoch' (did you mean 'epochs'?)");
    expect_file_error("zzzzzzzz = 3\n", "t.conf:1: unknown key 'zzzzzzzz'");
    expect_file_error("\n\nepochs = three\n", "t.conf:3: key 'epochs': 'three' is not a non-negative integer");
    expect_file_error("epochs = -1\n", "key 'epochs': '-1' is not a non-negative integer");
    expect_file_error("epochs = 2x\n", "key 'epochs': '2x' is not a non-negative integer");
    expect_file_error("epochs = 0\n", "key 'epochs': 0 is out of range");
    expect_file_error("batch_size = 99999999999999999999\n", "key 'batch_size'");
    expect_file_error("clip_norm = nan\n", "key 'clip_norm': 'nan' is not a number");
    expect_file_error("clip_norm = -1\n", "key 'clip_norm': -1 is out of range");
    expect_file_error("drop_last = maybe\n", "key 'drop_last': 'maybe' is not a boolean");
    expect_file_error("progress = sometimes\n", "key 'progress': 'sometimes' is not one of auto|on|off");
    expect_file_error("precision = fp64\n", "key 'precision': 'fp64' is not one of fp32|tf32|bf16|fp16");
    expect_file_error("cuda_graph = yes\n", "key 'cuda_graph': 'yes' is not one of on|off");
    expect_file_error("loss_scale = static\n",
                      "key 'loss_scale': 'static' is not one of auto|dynamic|off");
    expect_file_error("loss_scale_init = 0\n", "key 'loss_scale_init': 0 is out of range");
    expect_file_error("loss_scale_growth_interval = 0\n", "key 'loss_scale_growth_interval': 0 is out of range");
    expect_file_error("cudnn = fastest\n",
                      "t.conf:1: key 'cudnn': 'fastest' is not one of heuristic|benchmark|deterministic");
    expect_file_error("cudnn_workspace_mb = -1\n", "key 'cudnn_workspace_mb': -1 is out of range");
    expect_file_error("train_data = a\ntest_data = b\nmodel = m\ncudnn_cache = c.cache\n",
                      "t.conf:4: key 'cudnn_cache': a cache holds what the benchmark policy timed; "
                      "set cudnn = benchmark");
    expect_file_error("just words\n", "t.conf:1: expected 'key = value', got 'just words'");
    expect_file_error(" = 4\n", "missing key");
    char longline[2100];
    memset(longline, 'a', sizeof longline);
    memcpy(longline, "model = ", 8);
    longline[sizeof longline - 1] = '\0';
    expect_file_error(longline, "key 'model': value is longer than");
    expect_file_error("test_data = b\nmodel = m\n", "key 'train_data' is required");
    expect_file_error("train_data =\ntest_data = b\nmodel = m\n", "t.conf:1: key 'train_data' is empty");
    expect_file_error("train_data = a\ntest_data = b\nmodel = m\nstop_after_epochs = 5\n", "stop_after_epochs");
    expect_file_error("train_data = a\ntest_data = b\nmodel = m\ncheckpoint_steps = 10\n", "needs checkpoint_dir");
    char err[4096];
    assert_int_equal(run_tool(err, sizeof err, "/nonexistent/x.conf", NULL), 2);
    expect_has(err, "cannot open config /nonexistent/x.conf");
    char conf[256];
    conf_path(conf, sizeof conf);
    assert_int_equal(run_tool(err, sizeof err, conf, "--set", " lr_is_not_a_key = 1", NULL), 2);
    expect_has(err, "--set  lr_is_not_a_key = 1: unknown key 'lr_is_not_a_key'");
}

/* A setup error: exit 2, the message, and nothing written. */
static void expect_setup_error(const char *needle, ...)
{
    char conf[128], out[128], set_ckpt[192], set_metrics[192], err[8192];
    conf_path(conf, sizeof conf);
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
                      extra[3], extra[4], extra[5], NULL);
    if (rc != 2)
        fail_msg("exit %d (expected 2) for '%s'; stderr: %s", rc, needle, err);
    expect_has(err, needle);
    assert_false(exists(out));
}

static void test_setup_errors(void **state)
{
    (void)state;
    SKIP_WITHOUT_TOOL();
    char bad[128], text[512], err[4096], conf[128];
    conf_path(conf, sizeof conf);
    expect_setup_error("unknown key 'lrate'", "--set", "lrate=3", NULL);
    expect_setup_error("key 'batch_size': 'big' is not a non-negative integer", "--set", "batch_size=big", NULL);
    expect_setup_error("--set: key 'train_data': data path /nonexistent/data: No such file or directory", "--set",
                       "train_data=/nonexistent/data", NULL);
    expect_setup_error("--set: key 'augment'", "--set", "augment=crop:12|bogus", NULL);
    /* Values from the file are cited by file:line. */
    char *base = read_text(conf);
    char *opt = strstr(base, "optimizer = sgd:lr=0.05");
    assert_non_null(opt);
    memcpy(opt, "optimizer = sgd:lr=-0.5", 23);
    snprintf(bad, sizeof bad, "%s/badopt.conf", tmpdir);
    write_text(bad, base);
    free(base);
    assert_int_equal(run_tool(err, sizeof err, bad, NULL), 2);
    expect_has(err, "badopt.conf:5: key 'optimizer'");
    expect_setup_error("--set: key 'optimizer'", "--set", "optimizer=sgd:lr=-1", NULL);
    expect_setup_error("--set: key 'optimizer'", "--set", "optimizer=sgd:speed=3", NULL);
    expect_setup_error("--set: key 'scheduler'", "--set", "scheduler=zigzag", NULL);
    /* A model error names its path once. */
    snprintf(bad, sizeof bad, "%s/syntax.model", tmpdir);
    write_text(bad, "input shape=1,12,12\nconv2d out=4 kernel=three\n");
    snprintf(text, sizeof text, "model=%s", bad);
    expect_setup_error("syntax.model", "--set", text, NULL);
    assert_int_equal(run_tool(err, sizeof err, conf, "--set", text, NULL), 2);
    const char *first = strstr(err, "syntax.model");
    assert_non_null(first);
    assert_null(strstr(first + 1, "syntax.model"));
    expect_has(err, "--set: key 'model'");
    expect_setup_error("--set: key 'model'", "--set", "model=/nonexistent.model", NULL);
    /* train_limit below the batch size is a config error. */
    expect_setup_error("make no full batch of 32", "--set", "train_limit=20", NULL);
    /* A batch that cannot fit in memory is refused before it is tried. */
    setenv("STK_TRAIN_MEMORY_AVAILABLE", "100000000", 1);
    expect_setup_error("key 'batch_size': a training step at batch 100000 needs about", "--set", "batch_size=100000",
                       NULL);
    unsetenv("STK_TRAIN_MEMORY_AVAILABLE");

    /* The file's own errors, with the line. */
    snprintf(bad, sizeof bad, "%s/bad.conf", tmpdir);
    snprintf(text, sizeof text, "train_data = %s/train\nepohcs = 3\n", tmpdir);
    write_text(bad, text);
    assert_int_equal(run_tool(err, sizeof err, bad, NULL), 2);
    expect_has(err, "bad.conf:2: unknown key 'epohcs' (did you mean 'epochs'?)");
    assert_int_equal(run_tool(err, sizeof err, NULL), 2);
    expect_has(err, "no config file given");
    assert_int_equal(run_tool(err, sizeof err, bad, "--frobnicate", NULL), 2);
    expect_has(err, "unknown option --frobnicate");
    assert_int_equal(run_tool(err, sizeof err, conf, "--force", NULL), 2);
    expect_has(err, "--force only applies to --resume");
    char empty[128];
    snprintf(empty, sizeof empty, "%s/emptyckpt", tmpdir);
    mkdir(empty, 0755);
    expect_setup_error("no checkpoint", "--resume", empty, NULL);
}

/* ---- runs ------------------------------------------------------------------ */

static void test_reports(void **state)
{
    (void)state;
    SKIP_WITHOUT_TOOL();
    char conf[128], run_dir[192], err[16384], out[16384], path[256];
    conf_path(conf, sizeof conf);
    snprintf(run_dir, sizeof run_dir, "run_dir=%s/reports", tmpdir);
    /* progress = auto with stderr not a terminal: lines for a log. */
    int rc = run_tool_out(err, sizeof err, out, sizeof out, conf, "--set", run_dir, "--set", "progress=auto", "--json",
                          NULL);
    if (rc)
        fail_msg("exit %d: %s", rc, err);
    expect_has(err, "epoch 1/2  batch 1/8  step 1  loss ");
    expect_has(err, "epoch 1/2  step 8  loss ");
    expect_has(err, "epoch 2/2  step 16  loss ");
    assert_null(strstr(err, "\033[K"));
    expect_has(out, "epoch     step train_loss train_acc");
    expect_has(out, "final test accuracy");
    expect_has(out, "\"steps\":16");
    snprintf(path, sizeof path, "%s/reports/metrics.jsonl", tmpdir);
    char *m = read_text(path);
    assert_int_equal(count_lines(m), 2);
    expect_has(m, "{\"run\":\"");
    expect_has(m, "\"epoch\":1,\"step\":8,\"train_loss\":");
    expect_has(m, "\"epoch\":2,\"step\":16,");
    expect_has(m, "\"test_top5\":1,");
    free(m);
    snprintf(path, sizeof path, "%s/reports/metrics.svg", tmpdir);
    char *svg = read_text(path);
    expect_has(svg, "<svg xmlns='http://www.w3.org/2000/svg'");
    expect_has(svg, "learning rate");
    expect_has(svg, "</svg>\n");
    int polylines = 0;
    for (const char *p = svg; (p = strstr(p, "<polyline")); p++)
        polylines++;
    assert_int_equal(polylines, 5);
    free(svg);
}

/* The f32 tensors of the "model" section of the newest checkpoint in dir:
 * safetensors, an 8-byte header length, a JSON header, then the data. */
static float *load_params(const char *dir, size_t *n, stk_ckpt_t **keep)
{
    char path[512];
    assert_int_equal(stk_ckpt_dir_latest(dir, NULL, path, sizeof path), 0);
    assert_int_equal(stk_ckpt_create(keep, path), 0);
    const void *data;
    size_t len;
    assert_int_equal(stk_ckpt_find(*keep, "model", &data, &len), 0);
    uint64_t hlen;
    memcpy(&hlen, data, 8);
    assert_true(8 + hlen <= len);
    *n = (len - 8 - hlen) / sizeof(float);
    return (float *)((char *)data + 8 + hlen);
}

static void test_accumulation(void **state)
{
    (void)state;
    SKIP_WITHOUT_TOOL();
    char conf[128], ck_a[192], ck_b[192], err[8192];
    conf_path(conf, sizeof conf);
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
    assert_int_equal(stk_ckpt_dir_latest(ck_a + 15, NULL, path, sizeof path), 0);
    expect_has(path, "ckpt-000000000002-");
    stk_ckpt_destroy(&a);
    stk_ckpt_destroy(&b);
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

/* Runs the tool until its pause point, delivers sig, lets it go on;
 * requires that it stopped on the signal (exit 130). */
static void interrupt_at(const char *pause, int sig, char *err, size_t cap, ...)
{
    const char *argv[MAX_ARGS];
    int argc = 0;
    argv[argc++] = tool;
    va_list ap;
    va_start(ap, cap);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL && argc < MAX_ARGS - 1)
        argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    pid_t pid = spawn_tool(argv, pause, 0);
    wait_paused(pid);
    assert_int_equal(kill(pid, sig), 0);
    assert_int_equal(kill(pid, SIGCONT), 0);
    int rc = wait_tool(pid, err, cap, NULL, 0);
    if (rc != 130)
        fail_msg("interrupted at %s: exit %d (expected 130): %s", pause, rc, err);
    expect_has(err, "interrupted");
}

static void resume_case(const char *workers)
{
    char conf[128], set_w[64], ck[6][192], err[8192];
    conf_path(conf, sizeof conf);
    snprintf(set_w, sizeof set_w, "workers=%s", workers);
    const char *names[6] = {"straight", "stopped", "midres", "sigint", "lastep", "sigterm"};
    for (int i = 0; i < 6; i++)
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
    expect_has(err, "resuming run ");
    expect_has(err, "(1 of 2 epochs done, step 8)");
    /* Resume from a checkpoint taken mid-epoch (step 3 of 8 in epoch 1),
     * into another folder. */
    char mid[1024];
    assert_int_equal(stk_ckpt_dir_latest(ck[0] + 15, NULL, mid, sizeof mid), 0);
    char *dash = strstr(mid, "ckpt-000000000016-");
    assert_non_null(dash);
    memcpy(dash, "ckpt-000000000003-", 18);
    assert_true(exists(mid));
    rc = run_tool(err, sizeof err, conf, "--set", set_w, "--set", model, "--set", ck[2], "--resume", mid, NULL);
    if (rc)
        fail_msg("mid-epoch resume: exit %d: %s", rc, err);
    /* SIGINT after micro-batch 3 of epoch 1: a checkpoint at step 3. */
    interrupt_at("1:3", SIGINT, err, sizeof err, conf, "--set", set_w, "--set", model, "--set", ck[3], NULL);
    expect_has(err, "stopped at epoch 1, batch 3 of 8, step 3");
    /* SIGINT in the epoch's last step: the epoch is not lost. */
    interrupt_at("1:8", SIGINT, err, sizeof err, conf, "--set", set_w, "--set", model, "--set", ck[4], NULL);
    expect_has(err, "stopped at epoch 1, batch 8 of 8, step 8");
    char last[512];
    assert_int_equal(stk_ckpt_dir_latest(ck[4] + 15, NULL, last, sizeof last), 0);
    expect_has(last, "ckpt-000000000008-");
    /* SIGTERM after micro-batch 5 of epoch 2. */
    interrupt_at("2:5", SIGTERM, err, sizeof err, conf, "--set", set_w, "--set", model, "--set", ck[5], NULL);
    expect_has(err, "step 13");
    for (int i = 3; i <= 5; i++) {
        rc = run_tool(err, sizeof err, conf, "--set", set_w, "--set", model, "--set", ck[i], "--resume", ck[i] + 15,
                      NULL);
        if (rc)
            fail_msg("resume after %s: exit %d: %s", names[i], rc, err);
    }

    for (int other = 1; other < 6; other++) {
        char pa[512], pb[512];
        assert_int_equal(stk_ckpt_dir_latest(ck[0] + 15, NULL, pa, sizeof pa), 0);
        assert_int_equal(stk_ckpt_dir_latest(ck[other] + 15, NULL, pb, sizeof pb), 0);
        expect_has(pa, "ckpt-000000000016-");
        expect_has(pb, "ckpt-000000000016-");
        stk_ckpt_t *a = NULL, *b = NULL;
        assert_int_equal(stk_ckpt_create(&a, pa), 0);
        assert_int_equal(stk_ckpt_create(&b, pb), 0);
        expect_same_section(a, b, "model");
        expect_same_section(a, b, "optimizer");
        expect_same_section(a, b, "scheduler");
        stk_ckpt_destroy(&a);
        stk_ckpt_destroy(&b);
    }
}

static void test_resume_workers0(void **state)
{
    (void)state;
    SKIP_WITHOUT_TOOL();
    resume_case("0");
}

/* The loss scale rides in checkpoints: an fp16 run whose scale moves
 * (2^24 at first overflows fp16 and is halved down; growth every 2 clean
 * steps overflows again now and then), stopped after epoch 1 and resumed,
 * or resumed from a checkpoint in the middle of epoch 2, ends with the
 * same bits as the run that went straight through, and the same scale and
 * skipped count. Restarting at loss_scale_init would skip other steps. */
static void test_resume_fp16(void **state)
{
    (void)state;
    SKIP_WITHOUT_TOOL();
    char conf[128], err[8192], out[8192], outs[3][1024], ck[3][192];
    conf_path(conf, sizeof conf);
    const char *names[3] = {"straight", "halves", "mid"};
    for (int i = 0; i < 3; i++)
        snprintf(ck[i], sizeof ck[i], "checkpoint_dir=%s/fp16-%s", tmpdir, names[i]);
    char model[192];
    snprintf(model, sizeof model, "model=%s/bn.model", tmpdir);
#define FP16_ARGS "--set", model, "--set", "precision=fp16", "--set", "loss_scale_init=16777216", "--set", \
                  "loss_scale_growth_interval=2"
    int rc = run_tool_out(err, sizeof err, out, sizeof out, conf, FP16_ARGS, "--set", ck[0], "--set",
                          "checkpoint_steps=5", "--json", NULL);
    if (rc)
        fail_msg("straight run: exit %d: %s", rc, err);
    snprintf(outs[0], sizeof outs[0], "%s", strstr(out, "loss scaling: ") ? strstr(out, "loss scaling: ") : "");
    expect_has(outs[0], "loss scaling: dynamic, last scale ");
    /* The first steps overflowed: it did skip. */
    assert_null(strstr(outs[0], " 0 steps skipped"));
    rc = run_tool(err, sizeof err, conf, FP16_ARGS, "--set", ck[1], "--set", "stop_after_epochs=1", NULL);
    if (rc)
        fail_msg("first half: exit %d: %s", rc, err);
    rc = run_tool_out(err, sizeof err, out, sizeof out, conf, FP16_ARGS, "--set", ck[1], "--resume", ck[1] + 15,
                      "--json", NULL);
    if (rc)
        fail_msg("resumed half: exit %d: %s", rc, err);
    snprintf(outs[1], sizeof outs[1], "%s", strstr(out, "loss scaling: ") ? strstr(out, "loss scaling: ") : "");
    char mid[1024];
    assert_int_equal(stk_ckpt_dir_latest(ck[0] + 15, NULL, mid, sizeof mid), 0);
    char *dash = strstr(mid, "ckpt-000000000016-");
    assert_non_null(dash);
    memcpy(dash, "ckpt-000000000010-", 18);
    rc = run_tool_out(err, sizeof err, out, sizeof out, conf, FP16_ARGS, "--set", ck[2], "--resume", mid, "--json",
                      NULL);
    if (rc)
        fail_msg("mid-epoch resume: exit %d: %s", rc, err);
    snprintf(outs[2], sizeof outs[2], "%s", strstr(out, "loss scaling: ") ? strstr(out, "loss scaling: ") : "");
#undef FP16_ARGS
    for (int i = 0; i < 3; i++)
        outs[i][strcspn(outs[i], "\n")] = '\0';
    for (int other = 1; other < 3; other++) {
        /* The summary's scale and skipped count. */
        if (strcmp(outs[0], outs[other]) != 0)
            fail_msg("%s: '%s', straight: '%s'", names[other], outs[other], outs[0]);
        char pa[512], pb[512];
        assert_int_equal(stk_ckpt_dir_latest(ck[0] + 15, NULL, pa, sizeof pa), 0);
        assert_int_equal(stk_ckpt_dir_latest(ck[other] + 15, NULL, pb, sizeof pb), 0);
        expect_has(pb, "ckpt-000000000016-");
        stk_ckpt_t *a = NULL, *b = NULL;
        assert_int_equal(stk_ckpt_create(&a, pa), 0);
        assert_int_equal(stk_ckpt_create(&b, pb), 0);
        expect_same_section(a, b, "model");
        expect_same_section(a, b, "optimizer");
        expect_same_section(a, b, "scheduler");
        stk_train_state_t sa, sb;
        assert_int_equal(stk_train_checkpoint_load(pa, NULL, &sa), 0);
        assert_int_equal(stk_train_checkpoint_load(pb, NULL, &sb), 0);
        assert_true(sa.loss_scale.scale > 0);
        assert_true(sa.loss_scale.scale < 16777216.0f);
        assert_true(sa.loss_scale.scale == sb.loss_scale.scale);
        assert_int_equal(sa.loss_scale.clean, sb.loss_scale.clean);
        assert_int_equal(sa.loss_scale.skipped, sb.loss_scale.skipped);
        stk_train_state_clear(&sa);
        stk_train_state_clear(&sb);
        stk_ckpt_destroy(&a);
        stk_ckpt_destroy(&b);
    }
}

static void test_resume_workers2(void **state)
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

static void test_bad_checkpoints(void **state)
{
    (void)state;
    SKIP_WITHOUT_TOOL();
    char conf[128], ck[192], err[8192], good[512], bad[256];
    conf_path(conf, sizeof conf);
    snprintf(ck, sizeof ck, "checkpoint_dir=%s/badck", tmpdir);
    int rc = run_tool(err, sizeof err, conf, "--set", ck, "--set", "stop_after_epochs=1", NULL);
    if (rc)
        fail_msg("run: exit %d: %s", rc, err);
    assert_int_equal(stk_ckpt_dir_latest(ck + 15, NULL, good, sizeof good), 0);
    snprintf(bad, sizeof bad, "%s/bad.stkc", tmpdir);

    copy_file(good, bad);
    struct stat st;
    assert_int_equal(stat(bad, &st), 0);
    assert_int_equal(truncate(bad, st.st_size - 100), 0);
    expect_setup_error("truncated", "--resume", bad, NULL);

    copy_file(good, bad);
    int fd = open(bad, O_RDWR);
    unsigned char c;
    assert_int_equal(pread(fd, &c, 1, st.st_size / 2), 1);
    c ^= 0x10;
    assert_int_equal(pwrite(fd, &c, 1, st.st_size / 2), 1);
    close(fd);
    expect_setup_error("checksum mismatch", "--resume", bad, NULL);

    char model[192];
    snprintf(model, sizeof model, "model=%s/other.model", tmpdir);
    expect_setup_error("was made with another model, the model file's contents", "--resume", good, "--set", model,
                       NULL);
    expect_setup_error("was made with another batch_size", "--resume", good, "--set", "batch_size=64", NULL);
    /* bf16 rounds every conv and linear: another computation, as another
     * batch size is. */
    expect_setup_error("was made with another precision", "--resume", good, "--set", "precision=bf16", NULL);
    /* Forced, the model still has to fit. */
    expect_setup_error("section 'model'", "--resume", good, "--force", "--set", model, NULL);
    write_text(bad, "not a checkpoint");
    expect_setup_error("not a Stoker checkpoint", "--resume", bad, NULL);
}

/* ---- run identity ------------------------------------------------------------ */

static char *dir_listing(const char *dir)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "ls -l --time-style=full-iso '%s' 2>&1", dir);
    FILE *p = popen(cmd, "r");
    char *s = calloc(1, 65536);
    size_t n = fread(s, 1, 65535, p);
    s[n] = '\0';
    pclose(p);
    return s;
}

/* Issue 17's sequence: a run interrupted, a new run pointed at the same
 * folder, then --resume of that folder. The new run is refused and
 * changes nothing; the resume continues the first run, says so, and its
 * metrics file continues. */
static void test_run_identity(void **state)
{
    (void)state;
    SKIP_WITHOUT_TOOL();
    char conf[128], run_dir[256], dir[192], ckdir[256], metrics[256], err[8192];
    conf_path(conf, sizeof conf);
    snprintf(dir, sizeof dir, "%s/runs/ident", tmpdir);
    snprintf(run_dir, sizeof run_dir, "run_dir=%s", dir);
    snprintf(ckdir, sizeof ckdir, "%s/checkpoints", dir);
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", dir);
    interrupt_at("2:3", SIGINT, err, sizeof err, conf, "--set", run_dir, "--set", "epochs=3", "--set", "keep_last=2",
                 "--set", "checkpoint_steps=2", NULL);
    char *m0 = read_text(metrics);
    assert_int_equal(count_lines(m0), 1);
    const char *id = strstr(m0, "\"run\":\"");
    assert_non_null(id);
    char run_a[17];
    memcpy(run_a, id + 7, 16);
    run_a[16] = '\0';
    char *l0 = dir_listing(ckdir);

    /* A new run into the same folder: refused, names the run, offers
     * --resume, and touches nothing. */
    int rc = run_tool(err, sizeof err, conf, "--set", run_dir, "--set", "epochs=2", NULL);
    if (rc != 2)
        fail_msg("new run over another run's folder: exit %d: %s", rc, err);
    expect_has(err, run_a);
    expect_has(err, "--resume");
    char *l1 = dir_listing(ckdir), *m1 = read_text(metrics);
    assert_string_equal(l0, l1);
    assert_string_equal(m0, m1);
    free(l1);
    free(m1);
    /* Its own checkpoint folder but the same metrics file: refused too. */
    char other_ck[256], set_ck[300], set_m[300];
    snprintf(other_ck, sizeof other_ck, "%s/other-ck", tmpdir);
    snprintf(set_ck, sizeof set_ck, "checkpoint_dir=%s", other_ck);
    snprintf(set_m, sizeof set_m, "metrics=%s", metrics);
    rc = run_tool(err, sizeof err, conf, "--set", set_ck, "--set", set_m, NULL);
    assert_int_equal(rc, 2);
    expect_has(err, "holds 1 lines of run");
    assert_false(exists(other_ck));

    /* A resume that changes what cannot change is refused. */
    rc = run_tool(err, sizeof err, conf, "--set", run_dir, "--set", "epochs=3", "--set", "batch_size=16", "--resume",
                  dir, NULL);
    assert_int_equal(rc, 2);
    expect_has(err, "was made with another batch_size");
    /* The resume continues run A, says so, and appends to its metrics. */
    rc = run_tool(err, sizeof err, conf, "--set", run_dir, "--set", "epochs=3", "--set", "keep_last=2", "--set",
                  "checkpoint_steps=2", "--resume", dir, NULL);
    if (rc)
        fail_msg("resume: exit %d: %s", rc, err);
    expect_has(err, run_a);
    expect_has(err, "(1 of 3 epochs done, step 11)");
    char *m2 = read_text(metrics);
    assert_int_equal(count_lines(m2), 3);
    assert_memory_equal(m2, m0, strlen(m0));
    free(m2);
    /* Pruning kept run A's newest two. */
    size_t nruns;
    char runs[4][STK_CKPT_RUN_MAX + 1];
    assert_int_equal(stk_ckpt_dir_runs(ckdir, runs, 4, &nruns), 0);
    assert_int_equal(nruns, 1);
    assert_string_equal(runs[0], run_a);
    /* A finished run resumed again has nothing to do. */
    rc = run_tool(err, sizeof err, conf, "--set", run_dir, "--set", "epochs=3", "--set", "keep_last=2", "--set",
                  "checkpoint_steps=2", "--resume", dir, NULL);
    assert_int_equal(rc, 0);
    expect_has(err, "is complete (3 of 3 epochs)");
    /* --force resumes with a changed key, with a warning. */
    rc = run_tool(err, sizeof err, conf, "--set", run_dir, "--set", "epochs=3", "--set", "keep_last=2", "--set",
                  "checkpoint_steps=2", "--set", "clip_norm=5", "--resume", dir, "--force", NULL);
    assert_int_equal(rc, 0);
    expect_has(err, "warning: --force: resuming run");
    expect_has(err, "clip_norm");
    free(m0);
    free(l0);
}

/* ---- hostile cases ----------------------------------------------------------- */

static void test_short_and_diverging(void **state)
{
    (void)state;
    SKIP_WITHOUT_TOOL();
    char conf[128], err[8192], ck[192];
    conf_path(conf, sizeof conf);
    /* One epoch with the one-epoch warmup: the warmup is shortened. */
    snprintf(ck, sizeof ck, "checkpoint_dir=%s/oneep", tmpdir);
    int rc = run_tool(err, sizeof err, conf, "--set", ck, "--set", "epochs=1", "--set", "progress=on", NULL);
    if (rc)
        fail_msg("epochs=1: exit %d: %s", rc, err);
    expect_has(err, "note: scheduler phase 1 (linear) of 8 steps would take the whole run of 8; shortened to 4");
    /* A diverging run exits 1 and says so. */
    snprintf(ck, sizeof ck, "checkpoint_dir=%s/diverge", tmpdir);
    rc = run_tool(err, sizeof err, conf, "--set", ck, "--set", "optimizer=sgd:lr=1e6,momentum=2", NULL);
    if (rc != 1)
        fail_msg("diverging run: exit %d (expected 1): %s", rc, err);
    expect_has(err, "diverged");
}

/* Precision and loss scaling on the CPU: tf32 runs as fp32 and says so;
 * dynamic loss scaling (powers of two, no overflow) trains to the same
 * parameters as none; bf16 and fp16 run emulated, say so, and train to
 * other parameters than fp32, with loss scaling on for fp16 alone under
 * loss_scale = auto; bf16 gives the same bits with 0 and 2 workers. */
static void test_precision(void **state)
{
    (void)state;
    SKIP_WITHOUT_TOOL();
    char conf[128], err[8192], out[8192], ck[4][192];
    conf_path(conf, sizeof conf);
    static const char *const prec[4] = {"precision=fp32", "precision=tf32", "precision=bf16", "precision=fp16"};
    for (int k = 0; k < 4; k++) {
        snprintf(ck[k], sizeof ck[k], "checkpoint_dir=%s/prec%d", tmpdir, k);
        int rc = k == 1 ? run_tool_out(err, sizeof err, out, sizeof out, conf, "--set", ck[k], "--set", "epochs=1",
                                       "--set", prec[k], "--set", "loss_scale=dynamic", "--set", "cuda_graph=on",
                                       "--json", NULL)
                        : run_tool_out(err, sizeof err, out, sizeof out, conf, "--set", ck[k], "--set", "epochs=1",
                                       "--set", prec[k], "--json", NULL);
        if (rc)
            fail_msg("%s: exit %d: %s", prec[k], rc, err);
        if (k == 0) {
            expect_has(out, "precision: fp32; cuda graph: off (not a GPU); loss scaling: off\n");
            expect_has(out,
                       "\"precision\":\"fp32\",\"cuda_graph\":false,\"loss_scaling\":false,\"skipped_steps\":0}");
        } else if (k == 1) {
            expect_has(out, "precision: fp32 (tf32 asked; this device computes it as fp32); "
                            "cuda graph: off (not a GPU); loss scaling: dynamic, last scale 65536, 0 steps skipped\n");
            expect_has(out, "\"loss_scaling\":true,\"skipped_steps\":0}");
        } else if (k == 2) {
            expect_has(out, "precision: bf16 (emulated on the CPU, slower than fp32); cuda graph: off (not a GPU); "
                            "loss scaling: off\n");
            expect_has(out, "\"precision\":\"bf16\",\"cuda_graph\":false,\"loss_scaling\":false,");
        } else {
            expect_has(out, "precision: fp16 (emulated on the CPU, slower than fp32); cuda graph: off (not a GPU); "
                            "loss scaling: dynamic");
            expect_has(out, "\"precision\":\"fp16\",\"cuda_graph\":false,\"loss_scaling\":true,");
        }
    }
    size_t n[4];
    stk_ckpt_t *c[4] = {NULL, NULL, NULL, NULL};
    const float *p[4];
    for (int k = 0; k < 4; k++) {
        char dir[192];
        snprintf(dir, sizeof dir, "%s/prec%d", tmpdir, k);
        p[k] = load_params(dir, &n[k], &c[k]);
        assert_int_equal(n[k], n[0]);
    }
    assert_memory_equal(p[0], p[1], n[0] * sizeof *p[0]);
    assert_true(memcmp(p[0], p[2], n[0] * sizeof *p[0]) != 0);
    assert_true(memcmp(p[0], p[3], n[0] * sizeof *p[0]) != 0);
    /* bf16 loading through 2 worker processes: the same bits as in the
     * training process (the roundings are pure functions of the data). */
    char ckw[192];
    snprintf(ckw, sizeof ckw, "checkpoint_dir=%s/prec-bf16-w2", tmpdir);
    int rc = run_tool(err, sizeof err, conf, "--set", ckw, "--set", "epochs=1", "--set", "precision=bf16", "--set",
                      "workers=2", NULL);
    if (rc)
        fail_msg("bf16, 2 workers: exit %d: %s", rc, err);
    size_t nw;
    stk_ckpt_t *cw = NULL;
    const float *pw = load_params(ckw + 15, &nw, &cw);
    assert_int_equal(nw, n[2]);
    assert_memory_equal(pw, p[2], nw * sizeof *pw);
    stk_ckpt_destroy(&cw);
    for (int k = 0; k < 4; k++)
        stk_ckpt_destroy(&c[k]);
}

/* Pids of the processes whose parent is ppid. */
static int children(pid_t ppid, pid_t *out, int cap)
{
    DIR *d = opendir("/proc");
    int n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        char *end;
        long pid = strtol(de->d_name, &end, 10);
        if (*end || pid <= 0)
            continue;
        char path[64], buf[512];
        snprintf(path, sizeof path, "/proc/%ld/stat", pid);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t k = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[k] = '\0';
        const char *rp = strrchr(buf, ')');
        long pp;
        char st;
        if (rp && sscanf(rp + 2, "%c %ld", &st, &pp) == 2 && pp == ppid && n < cap)
            out[n++] = (pid_t)pid;
    }
    if (d)
        closedir(d);
    return n;
}

/* The workers of a run: the children of its fork server, its child. */
static int workers_of(pid_t tool_pid, pid_t *out, int cap)
{
    pid_t server[4];
    int ns = children(tool_pid, server, 4), n = 0;
    for (int i = 0; i < ns; i++)
        n += children(server[i], out + n, cap - n);
    return n;
}

static int alive(pid_t pid)
{
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t k = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[k] = '\0';
    const char *rp = strrchr(buf, ')');
    return rp && rp[2] != 'Z';
}

/* Every worker stopped (SIGSTOP) while the run is paused at pause; then
 * the run goes on with `extra` settings and, once it blocks waiting for
 * them, gets sig (0: none) and then sig2 (0: none). */
static int run_with_stopped_workers(const char *pause, const char *extra, const char *extra2, int sig, int sig2,
                                    char *err, size_t cap, double *took)
{
    static int cases;
    char conf[128], ck[192];
    conf_path(conf, sizeof conf);
    snprintf(ck, sizeof ck, "checkpoint_dir=%s/stopped-%d", tmpdir, ++cases);
    const char *argv[] = {tool,  conf,  "--set", "workers=2", "--set", "prefetch=1", "--set", ck,
                          "--set", extra, "--set", extra2,      NULL};
    pid_t pid = spawn_tool(argv, pause, 0);
    wait_paused(pid);
    pid_t w[8];
    int nw = workers_of(pid, w, 8);
    assert_int_equal(nw, 4); /* 2 for training, 2 for evaluation */
    for (int i = 0; i < nw; i++)
        assert_int_equal(kill(w[i], SIGSTOP), 0);
    double t0 = now_s();
    assert_int_equal(kill(pid, SIGCONT), 0);
    for (int k = 0; k < 2 && (k == 0 ? sig : sig2); k++) {
        /* Once it blocks waiting for the stopped workers (its main thread
         * in poll, syscall 7), a stop cannot reach an optimizer step by
         * itself. */
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/syscall", (int)pid);
        int blocked = 0;
        char *sc = NULL;
        for (int j = 0; j < 12000 && !blocked; j++) {
            free(sc);
            sc = read_text(path);
            blocked = strncmp(sc, "7 ", 2) == 0;
            if (!blocked)
                usleep(10000);
        }
        if (!blocked)
            fail_msg("the run never blocked on its stopped workers in 120 s (main thread in syscall %s)", sc);
        free(sc);
        assert_int_equal(kill(pid, k == 0 ? sig : sig2), 0);
    }
    int rc = wait_tool(pid, err, cap, NULL, 0);
    *took = now_s() - t0;
    /* No worker outlives the run. */
    for (int i = 0; i < nw; i++) {
        for (int k = 0; k < 1000 && alive(w[i]); k++)
            usleep(10000);
        if (alive(w[i]))
            fail_msg("worker %d outlived the run", (int)w[i]);
    }
    return rc;
}

static void test_stopped_workers(void **state)
{
    (void)state;
    SKIP_WITHOUT_TOOL();
    char err[8192];
    double took;
    /* With a timeout: the run fails in about that time, naming a worker. */
    int rc = run_with_stopped_workers("1:2", "timeout=1", "progress=off", 0, 0, err, sizeof err, &took);
    if (rc != 1)
        fail_msg("timeout: exit %d (expected 1): %s", rc, err);
    expect_has(err, "worker");
    assert_true(took < 30); /* 1 s expected; 30x for a loaded machine */
    /* Without one, a signal ends the wait: the run stops at the step it
     * reached, with a checkpoint. */
    rc = run_with_stopped_workers("1:2", "timeout=0", "progress=off", SIGINT, 0, err, sizeof err, &took);
    if (rc != 130)
        fail_msg("SIGINT with stopped workers: exit %d (expected 130): %s", rc, err);
    expect_has(err, "interrupted: stopped at epoch 1, batch ");
    expect_has(err, "resume from ");
    assert_true(took < 30);
    /* Inside an accumulation group (paused after its first micro-batch:
     * at most 2 more are in flight) the run waits to finish the group; a
     * stop that cannot finish ends after stop_grace... */
    rc = run_with_stopped_workers("1:1", "accum_steps=4", "stop_grace=1", SIGINT, 0, err, sizeof err, &took);
    if (rc != 130)
        fail_msg("stop_grace: exit %d (expected 130): %s", rc, err);
    expect_has(err, "did not stop within 1 s of SIGINT");
    assert_true(took < 30);
    /* ... or at a second signal. */
    rc = run_with_stopped_workers("1:1", "accum_steps=4", "stop_grace=600", SIGINT, SIGTERM, err, sizeof err, &took);
    if (rc != 130)
        fail_msg("second signal: exit %d (expected 130): %s", rc, err);
    expect_has(err, "second signal (SIGTERM)");
    assert_true(took < 60);
}

/* The signals are taken by one thread of their own (sigwait), never by a
 * handler on a thread that runs oneDNN: a handler's frame written where a
 * JIT kernel had moved its stack pointer (into the heap) is what corrupted
 * the heap on SIGTERM. Every thread of a running tool blocks SIGINT and
 * SIGTERM and none catches them. */
static void test_signal_threads(void **state)
{
    (void)state;
    SKIP_WITHOUT_TOOL();
    char conf[128], ck[192], err[8192];
    conf_path(conf, sizeof conf);
    snprintf(ck, sizeof ck, "checkpoint_dir=%s/sigthreads", tmpdir);
    const char *argv[] = {tool, conf, "--set", "threads=2", "--set", ck, NULL};
    pid_t pid = spawn_tool(argv, "1:2", 0);
    wait_paused(pid);
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/task", (int)pid);
    DIR *d = opendir(dir);
    assert_non_null(d);
    int threads = 0;
    struct dirent *de;
    const unsigned long long both = (1ull << (SIGINT - 1)) | (1ull << (SIGTERM - 1));
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char path[512];
        snprintf(path, sizeof path, "%s/%s/status", dir, de->d_name);
        char *st = read_text(path);
        const char *blk = strstr(st, "SigBlk:"), *cgt = strstr(st, "SigCgt:");
        assert_non_null(blk);
        assert_non_null(cgt);
        unsigned long long b = strtoull(blk + 7, NULL, 16), c = strtoull(cgt + 7, NULL, 16);
        if ((b & both) != both || (c & both) != 0)
            fail_msg("thread %s: SigBlk %llx SigCgt %llx", de->d_name, b, c);
        threads++;
        free(st);
    }
    closedir(d);
    /* main, the signal thread, and the engine's OpenMP thread */
    assert_true(threads >= 3);
    assert_int_equal(kill(pid, SIGTERM), 0);
    assert_int_equal(kill(pid, SIGCONT), 0);
    int rc = wait_tool(pid, err, sizeof err, NULL, 0);
    if (rc != 130)
        fail_msg("exit %d: %s", rc, err);
}

/* SIGTERM to the whole process group, as timeout(1) and container stops
 * send: the workers die of it too; the run still ends as interrupted,
 * with a checkpoint of its last step, and resumes. */
static void test_group_sigterm(void **state)
{
    (void)state;
    SKIP_WITHOUT_TOOL();
    char conf[128], ck[192], err[8192];
    conf_path(conf, sizeof conf);
    snprintf(ck, sizeof ck, "checkpoint_dir=%s/groupterm", tmpdir);
    const char *argv[] = {tool, conf, "--set", "workers=2", "--set", ck, NULL};
    pid_t pid = spawn_tool(argv, "1:5", 1);
    wait_paused(pid);
    assert_int_equal(kill(-pid, SIGTERM), 0);
    assert_int_equal(kill(pid, SIGCONT), 0);
    int rc = wait_tool(pid, err, sizeof err, NULL, 0);
    if (rc != 130)
        fail_msg("group SIGTERM: exit %d (expected 130): %s", rc, err);
    expect_has(err, "interrupted");
    expect_has(err, "resume from ");
    rc = run_tool(err, sizeof err, conf, "--set", "workers=2", "--set", ck, "--resume", ck + 15, NULL);
    if (rc)
        fail_msg("resume after group SIGTERM: exit %d: %s", rc, err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_print_config),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_setup_errors),
        cmocka_unit_test(test_reports),
        cmocka_unit_test(test_accumulation),
        cmocka_unit_test(test_resume_workers0),
        cmocka_unit_test(test_resume_workers2),
        cmocka_unit_test(test_resume_fp16),
        cmocka_unit_test(test_bad_checkpoints),
        cmocka_unit_test(test_run_identity),
        cmocka_unit_test(test_short_and_diverging),
        cmocka_unit_test(test_precision),
        cmocka_unit_test(test_stopped_workers),
        cmocka_unit_test(test_signal_threads),
        cmocka_unit_test(test_group_sigterm),
    };
    /* STK_TEST_FILTER=test_run_identity runs one (a glob). */
    if (getenv("STK_TEST_FILTER"))
        cmocka_set_test_filter(getenv("STK_TEST_FILTER"));
    return cmocka_run_group_tests(tests, setup, teardown);
}
