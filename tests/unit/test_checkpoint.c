/* SPDX-License-Identifier: MIT */
/* Checkpoint files: round trip, every validation error (bad magic, other
 * version, truncation, corrupt header/table/section, wrong size), keep-last-N
 * directories, runs side by side in one directory (each prunes and finds
 * only its own), and a writer killed with SIGKILL at each step of a save
 * (stopped there by the writer's test hook) leaving the previous checkpoint
 * loadable. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "internal.h"
#include "stoker/checkpoint.h"
#include "engine/checkpoint_internal.h"

static char tmpdir[64];

static int setup(void **state)
{
    (void)state;
    strcpy(tmpdir, "/tmp/stk-ckpt-XXXXXX");
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

static size_t file_size(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return (size_t)st.st_size;
}

static void patch_byte(const char *path, size_t off, unsigned char xor_mask)
{
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    unsigned char c;
    assert_int_equal(pread(fd, &c, 1, (off_t)off), 1);
    c ^= xor_mask;
    assert_int_equal(pwrite(fd, &c, 1, (off_t)off), 1);
    close(fd);
}

static void save_sample(const char *path)
{
    static const char meta[] = "step=7\nepoch=1\n";
    float params[100];
    for (int i = 0; i < 100; i++)
        params[i] = (float)i * 0.5f;
    stk_ckpt_section_t s[] = {
        {"meta", meta, sizeof meta},
        {"params", params, sizeof params},
        {"empty", NULL, 0},
    };
    assert_int_equal(stk_ckpt_save(path, s, 3), 0);
}

static void test_checksum_known(void **state)
{
    (void)state;
    /* Reference values from libxxhash's XXH64 (seed 0). */
    assert_true(stk_ckpt_checksum("", 0) == 0xef46db3751d8e999ull);
    assert_true(stk_ckpt_checksum("abc", 3) == 0x44bc2cf5ad770999ull);
    unsigned char buf[773];
    for (int i = 0; i < 768; i++)
        buf[i] = (unsigned char)i;
    memcpy(buf + 768, "xyz12", 5);
    assert_true(stk_ckpt_checksum(buf, sizeof buf) == 0x9b7d50c047818b1bull);
}

static void test_roundtrip(void **state)
{
    (void)state;
    char path[512];
    path_in(path, sizeof path, "a.stkc");
    save_sample(path);
    assert_int_equal(file_size(path) % 64, 0);

    stk_ckpt_t *ck = NULL;
    assert_int_equal(stk_ckpt_create(&ck, path), 0);
    assert_int_equal(stk_ckpt_num_sections(ck), 3);
    assert_string_equal(stk_ckpt_path(ck), path);
    const char *name;
    const void *data;
    size_t len;
    assert_int_equal(stk_ckpt_section_at(ck, 0, &name, &data, &len), 0);
    assert_string_equal(name, "meta");
    assert_string_equal((const char *)data, "step=7\nepoch=1\n");
    assert_int_equal(stk_ckpt_section_at(ck, 3, &name, &data, &len), -ERANGE);
    float params[100];
    assert_int_equal(stk_ckpt_read(ck, "params", params, sizeof params), 0);
    for (int i = 0; i < 100; i++)
        assert_true(params[i] == (float)i * 0.5f);
    assert_int_equal(stk_ckpt_find(ck, "empty", &data, &len), 0);
    assert_int_equal(len, 0);
    assert_int_equal(stk_ckpt_find(ck, "nope", NULL, NULL), STK_ENOTFOUND);
    assert_non_null(strstr(stk_error_message(), "'nope'"));
    assert_int_equal(stk_ckpt_read(ck, "params", params, 4 * 99), STK_ESHAPE);
    assert_non_null(strstr(stk_error_message(), "400 bytes, expected 396"));
    stk_ckpt_destroy(&ck);
    assert_null(ck);
    stk_ckpt_destroy(&ck);
    stk_ckpt_destroy(NULL);

    /* Saving again over the same path replaces it. */
    int v = 42;
    stk_ckpt_section_t one = {"x", &v, sizeof v};
    assert_int_equal(stk_ckpt_save(path, &one, 1), 0);
    assert_int_equal(stk_ckpt_create(&ck, path), 0);
    assert_int_equal(stk_ckpt_num_sections(ck), 1);
    stk_ckpt_destroy(&ck);
}

static void test_save_errors(void **state)
{
    (void)state;
    char path[512];
    path_in(path, sizeof path, "bad.stkc");
    int v = 1;
    stk_ckpt_section_t dup[] = {{"a", &v, 4}, {"a", &v, 4}};
    assert_int_equal(stk_ckpt_save(path, dup, 2), STK_ECONFIG);
    assert_non_null(strstr(stk_error_message(), "twice"));
    stk_ckpt_section_t empty_name = {"", &v, 4};
    assert_int_equal(stk_ckpt_save(path, &empty_name, 1), STK_ECONFIG);
    stk_ckpt_section_t space = {"a b", &v, 4};
    assert_int_equal(stk_ckpt_save(path, &space, 1), STK_ECONFIG);
    stk_ckpt_section_t longname = {"0123456789012345678901234567890123456789012345678", &v, 4};
    assert_int_equal(stk_ckpt_save(path, &longname, 1), STK_ECONFIG);
    stk_ckpt_section_t nulldata = {"a", NULL, 4};
    assert_int_equal(stk_ckpt_save(path, &nulldata, 1), -EINVAL);
    assert_int_equal(access(path, F_OK), -1);
    /* Directory does not exist: nothing is left behind, the error names it. */
    assert_int_equal(stk_ckpt_save("/nonexistent-dir/x.stkc", dup, 1), -ENOENT);
    assert_non_null(strstr(stk_error_message(), "/nonexistent-dir/x.stkc"));
}

static void expect_open_error(const char *path, int code, const char *needle)
{
    stk_ckpt_t *ck = (stk_ckpt_t *)(uintptr_t)1;
    assert_int_equal(stk_ckpt_create(&ck, path), code);
    assert_null(ck);
    if (!strstr(stk_error_message(), needle))
        fail_msg("message '%s' lacks '%s'", stk_error_message(), needle);
}

static void test_open_errors(void **state)
{
    (void)state;
    char path[512];
    path_in(path, sizeof path, "c.stkc");

    expect_open_error("/nonexistent/ckpt.stkc", -ENOENT, "/nonexistent/ckpt.stkc");

    /* Not a checkpoint at all. */
    FILE *f = fopen(path, "w");
    fputs("hello, world; this is not a checkpoint at all, no no no no no no no no\n", f);
    fclose(f);
    expect_open_error(path, STK_EFORMAT, "not a Stoker checkpoint");
    /* A directory. */
    expect_open_error(tmpdir, STK_EFORMAT, "not a regular file");

    /* Truncated: cut at several points. */
    save_sample(path);
    size_t full = file_size(path);
    size_t cuts[] = {full - 1, full - 64, 100, 40};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        save_sample(path);
        assert_int_equal(truncate(path, (off_t)cuts[i]), 0);
        expect_open_error(path, STK_EDATA, "truncated");
    }
    /* Longer than recorded. */
    save_sample(path);
    assert_int_equal(truncate(path, (off_t)full + 10), 0);
    expect_open_error(path, STK_EDATA, "longer than recorded");

    /* Corrupt header, table and section bytes. */
    save_sample(path);
    patch_byte(path, 17, 0x01);
    expect_open_error(path, STK_EDATA, "header checksum");
    save_sample(path);
    patch_byte(path, 64 + 80 + 2, 0x20); /* name of the second section */
    expect_open_error(path, STK_EDATA, "section table checksum");
    save_sample(path);
    /* params is the second section: 64-byte header + 3x80 table = 304,
     * meta at 320 (16 bytes), params at 384. */
    patch_byte(path, 384 + 123, 0x80);
    expect_open_error(path, STK_EDATA, "section 'params' checksum mismatch");

    /* Another version (header checksum made consistent again). */
    save_sample(path);
    int fd = open(path, O_RDWR);
    unsigned char head[64];
    assert_int_equal(pread(fd, head, 64, 0), 64);
    uint32_t ver = 99;
    memcpy(head + 8, &ver, 4);
    uint64_t sum = stk_ckpt_checksum(head, 32);
    memcpy(head + 32, &sum, 8);
    assert_int_equal(pwrite(fd, head, 64, 0), 64);
    close(fd);
    expect_open_error(path, STK_EFORMAT, "version 99");
}

static int count_files(const char *dir, const char *needle)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (strstr(de->d_name, needle))
            n++;
    closedir(d);
    return n;
}

static void test_dir_keep_last(void **state)
{
    (void)state;
    char dir[256], path[512], latest[512];
    path_in(dir, sizeof dir, "ckdir");
    assert_int_equal(stk_ckpt_dir_latest(dir, NULL, latest, sizeof latest), -ENOENT);
    assert_int_equal(mkdir(dir, 0755), 0);
    assert_int_equal(stk_ckpt_dir_latest(dir, NULL, latest, sizeof latest), STK_ENOTFOUND);

    /* A stale temporary file from a writer that is gone (pid 0x7ffffffe
     * does not exist) is cleaned up; unrelated files are left alone. */
    snprintf(path, sizeof path, "%s/ckpt-000000000000.stkc.tmp-2147483646", dir);
    FILE *f = fopen(path, "w");
    fclose(f);
    snprintf(path, sizeof path, "%s/notes.txt", dir);
    f = fopen(path, "w");
    fclose(f);

    for (uint64_t step = 1; step <= 5; step++) {
        uint64_t v = step * 100;
        stk_ckpt_section_t s = {"v", &v, sizeof v};
        assert_int_equal(stk_ckpt_dir_save(dir, NULL, step * 10, &s, 1, 3, path, sizeof path), 0);
    }
    assert_non_null(strstr(path, "ckpt-000000000050.stkc"));
    assert_int_equal(count_files(dir, ".stkc"), 3);
    assert_int_equal(count_files(dir, ".tmp-"), 0);
    assert_int_equal(count_files(dir, "notes.txt"), 1);
    assert_int_equal(stk_ckpt_dir_latest(dir, NULL, latest, sizeof latest), 0);
    assert_string_equal(latest, path);
    assert_int_equal(stk_ckpt_dir_latest(dir, NULL, latest, 8), -ENOSPC);
    stk_ckpt_t *ck = NULL;
    assert_int_equal(stk_ckpt_create(&ck, path), 0);
    uint64_t v = 0;
    assert_int_equal(stk_ckpt_read(ck, "v", &v, sizeof v), 0);
    assert_int_equal(v, 500);
    stk_ckpt_destroy(&ck);
    /* keep_last 0 keeps everything. */
    stk_ckpt_section_t s = {"v", &v, sizeof v};
    assert_int_equal(stk_ckpt_dir_save(dir, NULL, 60, &s, 1, 0, NULL, 0), 0);
    assert_int_equal(count_files(dir, ".stkc"), 4);
    assert_int_equal(stk_ckpt_dir_save(dir, NULL, 1000000000000ull, &s, 1, 0, NULL, 0), STK_ECONFIG);
}

/* Two runs alternating in one directory, as two training runs pointed at
 * the same checkpoint folder would: each keeps its own newest keep_last,
 * finds its own newest, and never prunes the other's files. */
static void test_dir_two_runs(void **state)
{
    (void)state;
    char dir[256], path[512], latest[512];
    path_in(dir, sizeof dir, "tworuns");
    size_t count = 99;
    char runs[4][STK_CKPT_RUN_MAX + 1];
    assert_int_equal(stk_ckpt_dir_runs(dir, runs, 4, &count), 0); /* missing: none */
    assert_int_equal(count, 0);
    for (uint64_t i = 1; i <= 4; i++) {
        /* Run "a" is ahead: its steps are larger than b's. */
        uint64_t va = 1000 + i, vb = 2000 + i;
        stk_ckpt_section_t sa = {"v", &va, sizeof va}, sb = {"v", &vb, sizeof vb};
        assert_int_equal(stk_ckpt_dir_save(dir, "a1b2", 100 * i, &sa, 1, 2, path, sizeof path), 0);
        assert_non_null(strstr(path, "-a1b2.stkc"));
        assert_int_equal(stk_ckpt_dir_save(dir, "Run_B", 10 * i, &sb, 1, 2, NULL, 0), 0);
    }
    assert_int_equal(count_files(dir, "-a1b2.stkc"), 2);
    assert_int_equal(count_files(dir, "-Run_B.stkc"), 2);
    assert_int_equal(stk_ckpt_dir_latest(dir, "Run_B", latest, sizeof latest), 0);
    assert_non_null(strstr(latest, "ckpt-000000000040-Run_B.stkc"));
    stk_ckpt_t *ck = NULL;
    assert_int_equal(stk_ckpt_create(&ck, latest), 0);
    uint64_t v = 0;
    assert_int_equal(stk_ckpt_read(ck, "v", &v, sizeof v), 0);
    assert_int_equal(v, 2004);
    stk_ckpt_destroy(&ck);
    assert_int_equal(stk_ckpt_dir_latest(dir, "a1b2", latest, sizeof latest), 0);
    assert_non_null(strstr(latest, "ckpt-000000000400-a1b2.stkc"));
    /* "The newest" of a mixed folder is refused, naming both runs. */
    assert_int_equal(stk_ckpt_dir_latest(dir, NULL, latest, sizeof latest), STK_ESTATE);
    assert_non_null(strstr(stk_error_message(), "'Run_B', 'a1b2'"));
    assert_int_equal(stk_ckpt_dir_latest(dir, "zz", latest, sizeof latest), STK_ENOTFOUND);
    assert_non_null(strstr(stk_error_message(), "run 'zz'"));
    assert_int_equal(stk_ckpt_dir_runs(dir, runs, 4, &count), 0);
    assert_int_equal(count, 2);
    assert_string_equal(runs[0], "Run_B");
    assert_string_equal(runs[1], "a1b2");
    /* Untagged saves are a third "run" and prune only untagged files. */
    stk_ckpt_section_t s = {"v", &v, sizeof v};
    for (uint64_t i = 1; i <= 3; i++)
        assert_int_equal(stk_ckpt_dir_save(dir, NULL, 5000 + i, &s, 1, 1, NULL, 0), 0);
    assert_int_equal(count_files(dir, ".stkc"), 5);
    assert_int_equal(stk_ckpt_dir_runs(dir, runs, 1, &count), 0);
    assert_int_equal(count, 3);
    assert_string_equal(runs[0], "");
    /* Bad tags are refused before anything is written. */
    assert_int_equal(stk_ckpt_dir_save(dir, "a-b", 1, &s, 1, 0, NULL, 0), STK_ECONFIG);
    assert_int_equal(stk_ckpt_dir_save(dir, "", 1, &s, 1, 0, NULL, 0), STK_ECONFIG);
    assert_int_equal(stk_ckpt_dir_save(dir, "0123456789abcdef0123456789abcdef0", 1, &s, 1, 0, NULL, 0), STK_ECONFIG);
    assert_int_equal(count_files(dir, ".stkc"), 5);
}

/* Child: saves ever newer 4 MiB checkpoints whose bytes are a function of
 * the step; at save number stop_at it stops itself (SIGSTOP) at phase
 * stop_phase of the save, where the parent kills it. */
static int stop_phase;
static uint64_t save_no, stop_at;

static void stop_hook(int phase, const char *path)
{
    (void)path;
    if (phase == stop_phase && save_no == stop_at)
        raise(SIGSTOP);
}

static void saver_loop(const char *dir)
{
    size_t n = (4u << 20) / sizeof(uint32_t);
    uint32_t *big = malloc(n * sizeof *big);
    if (!big)
        _exit(3);
    stk__ckpt_test_hook = stop_hook;
    for (uint64_t step = 1;; step++) {
        save_no = step;
        for (size_t i = 0; i < n; i++)
            big[i] = (uint32_t)(step * 2654435761u + i);
        stk_ckpt_section_t s[] = {{"step", &step, sizeof step}, {"big", big, n * sizeof *big}};
        if (stk_ckpt_dir_save(dir, "run1", step, s, 2, 2, NULL, 0) != 0)
            _exit(2);
    }
}

static int has_tmp(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int found = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (strstr(de->d_name, ".tmp-"))
            found = 1;
    closedir(d);
    return found;
}

/* The writer is killed at each step of a save: after the write, after the
 * fsync, after the rename, and before pruning. Each time the newest
 * complete checkpoint loads, and is the one being written once the rename
 * happened, the one before it otherwise. */
static void test_kill_during_save(void **state)
{
    (void)state;
    char dir[512];
    path_in(dir, sizeof dir, "killdir");
    assert_int_equal(mkdir(dir, 0755), 0);
    const int phases[] = {STK__CKPT_WRITTEN, STK__CKPT_SYNCED, STK__CKPT_RENAMED, STK__CKPT_PRUNE};
    for (int round = 0; round < 4; round++) {
        stop_phase = phases[round];
        stop_at = 3;
        char sub[600];
        snprintf(sub, sizeof sub, "%s/%d", dir, round);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0)
            saver_loop(sub);
        /* Event-driven: the child is stopped exactly at the phase. */
        int status;
        assert_int_equal(waitpid(pid, &status, WUNTRACED), pid);
        if (!WIFSTOPPED(status))
            fail_msg("saver ended (status 0x%x) instead of stopping at phase %d", status, stop_phase);
        int tmp_at_kill = has_tmp(sub);
        assert_int_equal(tmp_at_kill, stop_phase <= STK__CKPT_SYNCED);
        assert_int_equal(kill(pid, SIGKILL), 0);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

        char latest[700];
        assert_int_equal(stk_ckpt_dir_latest(sub, "run1", latest, sizeof latest), 0);
        stk_ckpt_t *ck = NULL;
        int rc = stk_ckpt_create(&ck, latest);
        if (rc)
            fail_msg("latest checkpoint %s does not load: %s", latest, stk_error_message());
        uint64_t step;
        assert_int_equal(stk_ckpt_read(ck, "step", &step, sizeof step), 0);
        assert_int_equal(step, stop_phase >= STK__CKPT_RENAMED ? 3 : 2);
        const uint32_t *big;
        size_t len;
        assert_int_equal(stk_ckpt_find(ck, "big", (const void **)&big, &len), 0);
        assert_int_equal(len, 4u << 20);
        for (size_t i = 0; i < len / 4; i += 4099)
            assert_int_equal(big[i], (uint32_t)(step * 2654435761u + i));
        stk_ckpt_destroy(&ck);
        /* The next save cleans the dead writer's temporary file. */
        uint64_t v = 1;
        stk_ckpt_section_t s = {"step", &v, sizeof v};
        assert_int_equal(stk_ckpt_dir_save(sub, "run1", 999999, &s, 1, 2, NULL, 0), 0);
        assert_int_equal(has_tmp(sub), 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checksum_known),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_save_errors),
        cmocka_unit_test(test_open_errors),
        cmocka_unit_test(test_dir_keep_last),
        cmocka_unit_test(test_dir_two_runs),
        cmocka_unit_test(test_kill_during_save),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
