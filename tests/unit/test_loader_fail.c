/* SPDX-License-Identifier: MIT */
/* loader/, the failure paths with real processes: killed, hung, stopped
 * and failing workers, lost wake-ups and lost tasks, interrupts and stall
 * reports, a killed fork server or main process, destroy mid-epoch
 * without leaks, and workers that start clean. Its own program (apart
 * from test_loader.c) because it is the slow, process-heavy part. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <dirent.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "../../loader/loader_internal.h"
#include "../../loader/shard_internal.h"
#include "loader_fixture.h"

static int sanitized(void)
{
    const char *s = getenv("STK_SANITIZED");
    return s && s[0] == '1';
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

static int count_maps(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    int n = 0, c;
    while ((c = fgetc(f)) != EOF)
        n += c == '\n';
    fclose(f);
    return n;
}

/* Live (not zombie) processes whose parent is ppid. */
static int count_children_of(pid_t ppid, int *zombies)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    int n = 0;
    *zombies = 0;
    while ((e = readdir(d))) {
        char path[300], buf[512];
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t k = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[k] = 0;
        char *rp = strrchr(buf, ')');
        char state;
        int pp;
        if (!rp || sscanf(rp + 2, "%c %d", &state, &pp) != 2)
            continue;
        if (pp == ppid) {
            if (state == 'Z')
                (*zombies)++;
            else
                n++;
        }
    }
    closedir(d);
    return n;
}

/* The kernel's state letter of pid. */
static char pid_state(pid_t pid)
{
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t k = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[k] = 0;
    char *rp = strrchr(buf, ')');
    return rp ? rp[2] : 0;
}

/* SIGSTOP, and wait until the process is stopped (delivery is not
 * synchronous with kill). */
static void stop_and_wait(pid_t pid)
{
    assert_int_equal(kill(pid, SIGSTOP), 0);
    for (int i = 0; i < 10000 && pid_state(pid) != 'T'; i++)
        msleep(1);
    assert_int_equal(pid_state(pid), 'T');
}

static int pid_alive(pid_t pid)
{
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t k = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[k] = 0;
    char *rp = strrchr(buf, ')');
    return rp && rp[2] != 'Z' && rp[2] != 'X';
}

/* SIGKILL of a worker mid-epoch: an error naming pid and signal (at
 * once: its socket's end of file wakes main; 15 s is only a sanity bound,
 * the loader has no timeout here); with respawn, the epoch completes
 * exactly. */
static void test_worker_killed(void **state)
{
    (void)state;
    stk_dataset_t *ds = make_var_ds(400, -1, 1);
    stk_loader_config_t c = base_cfg(2, 2);
    c.batch_size = 4;
    run_t ref = run_epochs(ds, &c, 1);

    stk_loader_t *l = NULL;
    assert_int_equal(stk_loader_create(&l, ds, &c), 0);
    stk_batch_t b;
    assert_int_equal(stk_loader_next(l, &b), 0);
    stk_loader_release(l, &b);
    int pids[2];
    assert_int_equal(stk_loader_worker_pids(l, pids, 2), 2);
    assert_int_equal(kill(pids[1], SIGKILL), 0);
    uint64_t t0 = stk__now_ns();
    int rc;
    while ((rc = stk_loader_next(l, &b)) == 0)
        stk_loader_release(l, &b);
    uint64_t dt = stk__now_ns() - t0;
    assert_int_equal(rc, STK_EWORKER);
    char want[64];
    snprintf(want, sizeof want, "pid %d", pids[1]);
    assert_non_null(strstr(stk_error_message(), want));
    assert_non_null(strstr(stk_error_message(), "SIGKILL"));
    assert_true(dt < 15000000000ull);
    stk_loader_destroy(&l);

    c.respawn = 1;
    assert_int_equal(stk_loader_create(&l, ds, &c), 0);
    run_t got = fresh_run(400);
    for (int k = 0; k < 10; k++) {
        assert_int_equal(stk_loader_next(l, &b), 0);
        got.sum = fnv(got.sum, &b.number, sizeof b.number);
        got.sum = fnv(got.sum, b.indices, b.size * sizeof *b.indices);
        for (uint32_t f = 0; f < b.nfields; f++) {
            got.sum = fnv(got.sum, b.fields[f].data, b.fields[f].bytes);
            if (b.fields[f].lengths)
                got.sum = fnv(got.sum, b.fields[f].lengths, b.size * sizeof(int64_t));
        }
        for (size_t i = 0; i < b.size; i++)
            got.seen[b.indices[i]]++;
        stk_loader_release(l, &b);
        if (k == 3 || k == 6) {
            stk_loader_worker_pids(l, pids, 2);
            kill(pids[k == 3 ? 0 : 1], SIGKILL);
        }
    }
    assert_int_equal(drain_epoch(l, &got, 400), STK_DONE);
    assert_each_once(&got, 400, -1);
    assert_true(got.sum == ref.sum);
    stk_loader_stats_t st;
    stk_loader_get_stats(l, &st);
    assert_int_equal(st.respawns, 2);
    stk_loader_destroy(&l);
    free(ref.seen);
    free(got.seen);
    stk_dataset_destroy(&ds);
}

/* A worker killed while the other keeps every slot filled ahead of a
 * slow consumer (main never has to wait), and with workers that are not
 * persistent (the next epoch would start new ones): still an error
 * naming pid and signal within the epoch, not a silently lost worker.
 * 100 batches at 2 ms each is far over the 50 ms the loader needs. */
static void test_worker_killed_slow_main(void **state)
{
    (void)state;
    stk_dataset_t *ds = make_var_ds(400, -1, 0);
    stk_loader_config_t c = base_cfg(2, 2);
    c.batch_size = 4;
    c.persistent_workers = 0;
    stk_loader_t *l = NULL;
    assert_int_equal(stk_loader_create(&l, ds, &c), 0);
    stk_batch_t b;
    assert_int_equal(stk_loader_next(l, &b), 0);
    stk_loader_release(l, &b);
    /* Every slot filled: the worker killed holds no batch. */
    struct timespec settle = {0, 300000000};
    nanosleep(&settle, NULL);
    int pids[2];
    assert_int_equal(stk_loader_worker_pids(l, pids, 2), 2);
    assert_int_equal(kill(pids[1], SIGKILL), 0);
    int rc;
    while ((rc = stk_loader_next(l, &b)) == 0) {
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
        stk_loader_release(l, &b);
    }
    assert_int_equal(rc, STK_EWORKER);
    char want[64];
    snprintf(want, sizeof want, "pid %d", pids[1]);
    assert_non_null(strstr(stk_error_message(), want));
    assert_non_null(strstr(stk_error_message(), "SIGKILL"));
    stk_loader_destroy(&l);
    stk_dataset_destroy(&ds);
}

/* Checks that got is the stream ref was (every sample once, same bytes);
 * returns how many workers l respawned on the way. */
static uint64_t same_stream(const stk_loader_t *l, const run_t *got, const run_t *ref, uint64_t n)
{
    assert_each_once(got, n, -1);
    assert_true(got->sum == ref->sum);
    stk_loader_stats_t st;
    stk_loader_get_stats(l, &st);
    return st.respawns;
}

static stk_dataset_t *make_hang_ds(uint64_t n, int64_t hang, const char *marker)
{
    var_args_t a = {.n = n, .bad = -1, .fds = 0, .sleep_ms = 1, .hang = hang};
    if (marker) {
        a.hang_once = 1;
        snprintf(a.hang_marker, sizeof a.hang_marker, "%s", marker);
    }
    stk_dataset_t *ds = NULL;
    assert_int_equal(stk_dataset_create(&ds, &var_ops, &a, sizeof a), 0);
    return ds;
}

static int names_a_worker(const char *msg, const int *pids, int n)
{
    for (int i = 0; i < n; i++) {
        char want[64];
        snprintf(want, sizeof want, "worker %d (pid %d", i, pids[i]);
        const char *at = strstr(msg, want);
        if (at && (at[strlen(want)] == ')' || at[strlen(want)] == ','))
            return 1;
    }
    return 0;
}

/* Hung workers. One stuck in get() (the batch with index 37): the
 * timeout names the batch and the worker holding it; with respawn the
 * batch is re-issued and the stream does not change, and only that
 * worker is replaced (a healthy one fills a batch in about 5 ms: the
 * 2 s timeout is 400 times that, so a busy machine does not get one
 * killed). Workers stopped with SIGSTOP: the same, whichever holds what,
 * and the message says they are stopped. */
static void test_worker_hung(void **state)
{
    (void)state;
    stk_dataset_t *ds = make_var_ds(300, -1, 1);
    stk_loader_config_t c = base_cfg(2, 1);
    c.batch_size = 4;
    run_t ref = run_epochs(ds, &c, 1);
    c.timeout_ms = sanitized() ? 3000 : 2000;
    char dir[] = "/tmp/stk-hang-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char marker[64];
    snprintf(marker, sizeof marker, "%s/hung", dir);

    for (int respawn = 0; respawn < 2; respawn++) {
        stk_dataset_t *hds = make_hang_ds(300, 37, respawn ? marker : NULL);
        c.respawn = respawn;
        stk_loader_t *l = NULL;
        assert_int_equal(stk_loader_create(&l, hds, &c), 0);
        run_t got = fresh_run(300);
        int rc = drain_epoch(l, &got, 300);
        if (!respawn) {
            assert_int_equal(rc, -ETIMEDOUT);
            const char *m = stk_error_message();
            assert_non_null(strstr(m, "did not deliver it"));
            assert_non_null(strstr(m, "(pid "));
            assert_non_null(strstr(m, "batch "));
        } else {
            assert_int_equal(rc, STK_DONE);
            assert_int_equal(same_stream(l, &got, &ref, 300), 1);
            assert_int_equal(access(marker, F_OK), 0);
        }
        stk_loader_destroy(&l);
        free(got.seen);
        stk_dataset_destroy(&hds);
    }
    unlink(marker);
    rmdir(dir);

    /* Both workers stopped after the first batch. */
    for (int respawn = 0; respawn < 2; respawn++) {
        c.respawn = respawn;
        stk_loader_t *l = NULL;
        assert_int_equal(stk_loader_create(&l, ds, &c), 0);
        run_t got = fresh_run(300);
        assert_int_equal(take_one(l, &got), 0);
        int pids[2];
        stk_loader_worker_pids(l, pids, 2);
        assert_int_equal(kill(pids[0], SIGSTOP), 0);
        assert_int_equal(kill(pids[1], SIGSTOP), 0);
        int rc = drain_epoch(l, &got, 300);
        if (!respawn) {
            assert_int_equal(rc, -ETIMEDOUT);
            assert_true(names_a_worker(stk_error_message(), pids, 2));
            assert_non_null(strstr(stk_error_message(), "batch "));
            assert_non_null(strstr(stk_error_message(), ", stopped)"));
        } else {
            assert_int_equal(rc, STK_DONE);
            assert_true(same_stream(l, &got, &ref, 300) >= 1);
        }
        stk_loader_destroy(&l);
        assert_false(pid_alive(pids[0]));
        assert_false(pid_alive(pids[1]));
        free(got.seen);
    }
    free(ref.seen);
    stk_dataset_destroy(&ds);
}

static stk_loader_t *volatile alarm_loader;

static volatile sig_atomic_t alarms;

static void on_alarm(int sig)
{
    (void)sig;
    alarms++;
    stk_loader_interrupt(alarm_loader);
}

/* SIGALRM after ms interrupts alarm_loader (0: cancels). */
static void arm_alarm(stk_loader_t *l, int ms)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    alarm_loader = l;
    struct itimerval it = {{0, 0}, {ms / 1000, (ms % 1000) * 1000}};
    setitimer(ITIMER_REAL, &it, NULL);
}

/* Many workers finishing batches out of order, main waiting in every
 * way it can (for k, for k + 1 while k is filled), the window between
 * choosing what to wait for and saying so widened by a test hook: no
 * wake-up may be lost. Main's sleep is not capped here (as it is, at a
 * second, in use), so a lost wake-up hangs: a 10 s alarm, far beyond a
 * batch of two samples, interrupts it and fails the test. The ring's own
 * test (test_ring.c) covers the protocol alone. */
static void test_no_lost_wakeup(void **state)
{
    (void)state;
    var_args_t a = {.n = 400, .bad = -1, .jitter_us = 300, .hang = -1};
    stk_dataset_t *ds = NULL;
    assert_int_equal(stk_dataset_create(&ds, &var_ops, &a, sizeof a), 0);
    stk_loader_config_t c = base_cfg(8, 2);
    c.batch_size = 2;
    stk_loader_t *l = NULL;
    c.stall_warn_ms = 0; /* its reports would wake main too */
    assert_int_equal(stk_loader_create(&l, ds, &c), 0);
    stk__test_wait_race_us = 150;
    stk__test_no_wait_cap = 1;
    uint64_t batches = 0;
    for (uint64_t e = 0; e < 12; e++) {
        assert_int_equal(stk_loader_set_epoch(l, e), 0);
        stk_batch_t b;
        int rc;
        for (;;) {
            arm_alarm(l, 10000);
            rc = stk_loader_next(l, &b);
            arm_alarm(NULL, 0);
            if (rc == -EINTR)
                fail_msg("batch %llu of epoch %llu did not come in 10 s: a wake-up was lost",
                         (unsigned long long)batches % 200, (unsigned long long)e);
            if (rc)
                break;
            batches++;
            stk_loader_release(l, &b);
        }
        assert_int_equal(rc, STK_DONE);
    }
    stk__test_wait_race_us = 0;
    stk__test_no_wait_cap = 0;
    assert_int_equal(batches, 12 * 200);
    stk_loader_destroy(&l);
    stk_dataset_destroy(&ds);
}

/* The one way a task can be lost (see recover() in loader.c): its worker dies
 * right after claiming it and main leaves it to another. A test hook
 * makes worker_lost forget every dead worker's task; the loader must
 * still find the batch held by a worker hung in get() and killed, and
 * the epoch must come out whole and unchanged. */
static void test_lost_task_recovered(void **state)
{
    (void)state;
    stk_dataset_t *ds = make_var_ds(120, -1, 0);
    stk_loader_config_t c = base_cfg(2, 1);
    c.batch_size = 4;
    c.shuffle = 0; /* index 37 is in batch 9 */
    run_t ref = run_epochs(ds, &c, 1);
    char dir[] = "/tmp/stk-lost-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char marker[64];
    snprintf(marker, sizeof marker, "%s/hung", dir);
    stk_dataset_t *hds = make_hang_ds(120, 37, marker);
    c.respawn = 1;
    stk_loader_t *l = NULL;
    assert_int_equal(stk_loader_create(&l, hds, &c), 0);
    run_t got = fresh_run(120);
    for (int k = 0; k < 8; k++)
        assert_int_equal(take_one(l, &got), 0);
    for (int tries = 0; access(marker, F_OK) != 0 && tries < 1000; tries++)
        msleep(5);
    assert_int_equal(access(marker, F_OK), 0);
    int pids[2];
    stk_loader_worker_pids(l, pids, 2);
    stk__test_skip_reissue = 1;
    assert_int_equal(kill(pids[0], SIGKILL), 0);
    assert_int_equal(kill(pids[1], SIGKILL), 0);
    int rc = drain_epoch(l, &got, 120);
    stk__test_skip_reissue = 0;
    assert_int_equal(rc, STK_DONE);
    assert_int_equal(same_stream(l, &got, &ref, 120), 2);
    stk_loader_destroy(&l);
    free(got.seen);
    free(ref.seen);
    stk_dataset_destroy(&hds);
    stk_dataset_destroy(&ds);
    unlink(marker);
    rmdir(dir);
}

/* No timeout, both workers stopped: main is not silent (each stopped
 * worker is named with its pid, its state and the batch it holds), and a
 * signal handler's stk_loader_interrupt ends the wait with -EINTR. Nothing
 * is lost: once the workers go on, the epoch comes out whole and the
 * same. An interrupt asked for between calls answers the next call; one
 * asked during set_epoch's wait for batches in flight leaves the epoch
 * as it was; without workers it answers the next call too. */
static void test_interrupt_and_stall_report(void **state)
{
    (void)state;
    stk_dataset_t *ds = make_var_ds(300, -1, 1);
    stk_loader_config_t c = base_cfg(2, 1);
    c.batch_size = 4;
    run_t ref = run_epochs(ds, &c, 1);
    c.stall_warn_ms = 200;
    stk_loader_t *l = NULL;
    assert_int_equal(stk_loader_create(&l, ds, &c), 0);
    run_t got = fresh_run(300);
    assert_int_equal(take_one(l, &got), 0);
    int pids[2];
    stk_loader_worker_pids(l, pids, 2);
    assert_int_equal(kill(pids[0], SIGSTOP), 0);
    assert_int_equal(kill(pids[1], SIGSTOP), 0);
    logged[0] = '\0';
    stk_log_set_callback(keep_log, NULL, STK_LOG_WARN);
    alarms = 0;
    arm_alarm(l, 1500);
    stk_batch_t b;
    int rc;
    /* The batches already filled come first; then main waits. */
    while ((rc = stk_loader_next(l, &b)) == 0) {
        got.sum = fnv(got.sum, &b.number, sizeof b.number);
        got.sum = fnv(got.sum, b.indices, b.size * sizeof *b.indices);
        for (uint32_t f = 0; f < b.nfields; f++) {
            got.sum = fnv(got.sum, b.fields[f].data, b.fields[f].bytes);
            if (b.fields[f].lengths)
                got.sum = fnv(got.sum, b.fields[f].lengths, b.size * sizeof(int64_t));
        }
        for (size_t i = 0; i < b.size; i++)
            got.seen[b.indices[i]]++;
        stk_loader_release(l, &b);
    }
    arm_alarm(NULL, 0);
    stk_log_set_callback(NULL, NULL, STK_LOG_WARN);
    assert_int_equal(rc, -EINTR);
    assert_int_equal(alarms, 1);
    assert_non_null(strstr(stk_error_message(), "interrupted"));
    for (int i = 0; i < 2; i++) {
        char want[64];
        snprintf(want, sizeof want, "worker %d (pid %d, stopped) made no progress", i, pids[i]);
        if (!strstr(logged, want))
            fail_msg("no report of %s in:\n%s", want, logged);
    }
    assert_non_null(strstr(logged, "no timeout set"));
    /* Interrupted, not failed: the workers go on, and so does the epoch. */
    assert_int_equal(kill(pids[0], SIGCONT), 0);
    assert_int_equal(kill(pids[1], SIGCONT), 0);
    assert_int_equal(drain_epoch(l, &got, 300), STK_DONE);
    assert_each_once(&got, 300, -1);
    assert_true(got.sum == ref.sum);

    /* Asked between calls: the next call answers, the one after goes on. */
    assert_int_equal(stk_loader_set_epoch(l, 1), 0);
    stk_loader_interrupt(l);
    assert_int_equal(stk_loader_next(l, &b), -EINTR);
    assert_int_equal(stk_loader_next(l, &b), 0);
    assert_int_equal(b.number, 0);
    /* set_epoch waiting on a stopped worker's batch: batch 2 is issued
     * (by the release) once both are stopped, so it cannot be done. */
    stk_loader_worker_pids(l, pids, 2);
    stop_and_wait(pids[0]);
    stop_and_wait(pids[1]);
    stk_loader_release(l, &b);
    arm_alarm(l, 500);
    rc = stk_loader_set_epoch(l, 2);
    arm_alarm(NULL, 0);
    assert_int_equal(rc, -EINTR);
    stk_loader_state_t st;
    stk_loader_get_state(l, &st);
    assert_int_equal(st.epoch, 1);
    assert_int_equal(st.batch, 1);
    stk_loader_destroy(&l); /* stopped workers: killed, not waited for */
    assert_false(pid_alive(pids[0]));
    assert_false(pid_alive(pids[1]));

    /* A worker hung in get() on index 37 (batch 9 in order): named as
     * holding that batch. */
    stk_dataset_t *hds = make_hang_ds(120, 37, NULL);
    c.shuffle = 0;
    free(got.seen);
    assert_int_equal(stk_loader_create(&l, hds, &c), 0);
    logged[0] = '\0';
    stk_log_set_callback(keep_log, NULL, STK_LOG_WARN);
    arm_alarm(l, 1500);
    got = fresh_run(120);
    rc = drain_epoch(l, &got, 120);
    arm_alarm(NULL, 0);
    stk_log_set_callback(NULL, NULL, STK_LOG_WARN);
    assert_int_equal(rc, -EINTR);
    assert_int_equal(got.nbatches, 9);
    if (!strstr(logged, ", sleeping) made no progress") || !strstr(logged, "holding batch 9 (no timeout set"))
        fail_msg("no report of the worker hung on batch 9 in:\n%s", logged);
    stk_loader_destroy(&l);
    stk_dataset_destroy(&hds);

    c.num_workers = 0;
    assert_int_equal(stk_loader_create(&l, ds, &c), 0);
    stk_loader_interrupt(l);
    assert_int_equal(stk_loader_next(l, &b), -EINTR);
    assert_int_equal(stk_loader_next(l, &b), 0);
    stk_loader_release(l, &b);
    stk_loader_destroy(&l);
    stk_loader_interrupt(NULL);
    free(ref.seen);
    free(got.seen);
    stk_dataset_destroy(&ds);
}

/* The fork server killed under a running loader: its workers die with it
 * (PDEATHSIG), and the error says so, with the server's pid and signal,
 * not as a worker's broken pipe. With respawn, a new server starts the
 * new workers and the epoch comes out whole and the same. */
static void test_forkserver_killed(void **state)
{
    (void)state;
    stk_dataset_t *ds = make_var_ds(200, -1, 1);
    stk_loader_config_t c = base_cfg(2, 2);
    c.batch_size = 4;
    run_t ref = run_epochs(ds, &c, 1);
    for (int respawn = 0; respawn < 2; respawn++) {
        c.respawn = respawn;
        stk_loader_t *l = NULL;
        assert_int_equal(stk_loader_create(&l, ds, &c), 0);
        run_t got = fresh_run(200);
        assert_int_equal(take_one(l, &got), 0);
        pid_t server = stk__forkserver_pid();
        assert_true(server > 0);
        assert_int_equal(kill(server, SIGKILL), 0);
        int rc = drain_epoch(l, &got, 200);
        if (!respawn) {
            assert_int_equal(rc, STK_EWORKER);
            char want[96];
            snprintf(want, sizeof want, "fork server (pid %d) was killed by signal 9 (SIGKILL)",
                     (int)server);
            if (!strstr(stk_error_message(), want))
                fail_msg("want \"%s\" in: %s", want, stk_error_message());
            assert_null(strstr(stk_error_message(), "Broken pipe"));
        } else {
            assert_int_equal(rc, STK_DONE);
            assert_int_equal(same_stream(l, &got, &ref, 200), 2);
            assert_true(stk__forkserver_pid() != server);
        }
        stk_loader_destroy(&l);
        free(got.seen);
    }
    /* A new loader gets a new server. */
    run_t again = run_epochs(ds, &c, 1);
    assert_true(again.sum == ref.sum);
    free(again.seen);
    free(ref.seen);
    stk_dataset_destroy(&ds);
}

/* Destroy mid-epoch: workers gone, nothing leaked, no zombies. Also
 * non-persistent workers across epochs. */
static void test_destroy_no_leaks(void **state)
{
    (void)state;
    stk_dataset_t *ds = make_mem_ds(N_SAMPLES);
    assert_int_equal(stk_loader_forkserver_start(), 0);
    /* One loader's epoch before counting: under ASan the allocator maps a
     * region the first time the process uses a size class, and keeps it
     * (this test once ran after the other loader tests, which did that). */
    stk_loader_config_t wc = base_cfg(2, 2);
    run_t warm = run_epochs(ds, &wc, 1);
    free(warm.seen);
    int fds0 = count_fds(), maps0 = count_maps(), z;
    int kids0 = count_children_of(getpid(), &z);
    for (int round = 0; round < 3; round++) {
        stk_loader_config_t c = base_cfg(2, 2);
        c.persistent_workers = round == 2 ? 0 : 1;
        stk_loader_t *l = NULL;
        assert_int_equal(stk_loader_create(&l, ds, &c), 0);
        stk_batch_t b;
        assert_int_equal(stk_loader_next(l, &b), 0);
        int pids[2];
        stk_loader_worker_pids(l, pids, 2);
        if (round == 1) {
            assert_int_equal(stk_loader_next(l, &b), 0); /* held at destroy */
        } else if (round == 2) {
            stk_loader_release(l, &b);
            run_t r;
            memset(&r, 0, sizeof r);
            assert_int_equal(drain_epoch(l, &r, N_SAMPLES), STK_DONE);
            free(r.seen);
            assert_false(pid_alive(pids[0]));
            assert_int_equal(stk_loader_set_epoch(l, 1), 0);
            memset(&r, 0, sizeof r);
            assert_int_equal(drain_epoch(l, &r, N_SAMPLES), STK_DONE);
            assert_int_equal(r.nsamples, N_SAMPLES);
            free(r.seen);
        }
        stk_loader_destroy(&l);
        assert_false(pid_alive(pids[0]));
        assert_false(pid_alive(pids[1]));
        assert_int_equal(count_fds(), fds0);
        assert_int_equal(count_maps(), maps0);
        int kids = count_children_of(getpid(), &z);
        assert_int_equal(kids, kids0);
        assert_int_equal(z, 0);
    }
    stk_dataset_destroy(&ds);
}

/* SIGTERM / SIGINT / SIGKILL of the main process: every worker exits. */
static void test_main_killed(void **state)
{
    (void)state;
    static const int sigs[] = {SIGTERM, SIGINT, SIGKILL};
    /* Orphaned workers and server come back to us, so we can reap them. */
    assert_int_equal(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
    for (int s = 0; s < 3; s++) {
        int pfd[2];
        assert_int_equal(pipe(pfd), 0);
        pid_t child = fork();
        assert_true(child >= 0);
        if (child == 0) {
            close(pfd[0]);
            signal(SIGINT, SIG_DFL);
            stk_dataset_t *ds = make_mem_ds(N_SAMPLES);
            stk_loader_config_t c = base_cfg(2, 2);
            stk_loader_t *l = NULL;
            stk_batch_t b;
            if (stk_loader_create(&l, ds, &c) || stk_loader_next(l, &b))
                _exit(3);
            int pids[2];
            stk_loader_worker_pids(l, pids, 2);
            if (write(pfd[1], pids, sizeof pids) != (ssize_t)sizeof pids)
                _exit(4);
            for (;;)
                pause();
        }
        close(pfd[1]);
        int pids[2];
        assert_int_equal(read(pfd[0], pids, sizeof pids), (ssize_t)sizeof pids);
        close(pfd[0]);
        assert_true(pid_alive(pids[0]));
        assert_int_equal(kill(child, sigs[s]), 0);
        int st;
        assert_int_equal(waitpid(child, &st, 0), child);
        assert_true(WIFSIGNALED(st));
        int gone = 0;
        for (int t = 0; t < 300 && !gone; t++) {
            while (waitpid(-1, NULL, WNOHANG) > 0) {
            }
            gone = !pid_alive(pids[0]) && !pid_alive(pids[1]);
            if (!gone)
                msleep(10);
        }
        assert_true(gone);
    }
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    prctl(PR_SET_CHILD_SUBREAPER, 0);
}

/* Workers come from the fork server, not from this process as it is now:
 * a mapping and a descriptor made after the server started (as a CUDA
 * context would be) are not in them. */
static void test_workers_start_clean(void **state)
{
    (void)state;
    assert_int_equal(stk_loader_forkserver_start(), 0);
    int late = memfd_create("stoker-test-late", MFD_CLOEXEC);
    assert_true(late >= 0);
    assert_int_equal(ftruncate(late, 4096), 0);
    void *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, late, 0);
    assert_true(m != MAP_FAILED);
    int plain = open("/proc/self/status", O_RDONLY); /* no CLOEXEC: fork would keep it */
    assert_true(plain >= 0);
    stk_dataset_t *ds = make_mem_ds(64);
    stk_loader_config_t c = base_cfg(2, 1);
    stk_loader_t *l = NULL;
    assert_int_equal(stk_loader_create(&l, ds, &c), 0);
    stk_batch_t b, b1;
    assert_int_equal(stk_loader_next(l, &b), 0);
    assert_int_equal(stk_loader_next(l, &b1), 0);
    int pids[2];
    stk_loader_worker_pids(l, pids, 2);
    for (int i = 0; i < 2; i++) {
        /* Any worker may have filled both batches: the other maps the
         * arena first thing, soon if not yet. */
        char path[64], line[512];
        snprintf(path, sizeof path, "/proc/%d/maps", pids[i]);
        int found_late = 0, found_arena = 0;
        for (int tries = 0; !found_arena && tries < 500; tries++) {
            if (tries)
                msleep(10);
            FILE *f = fopen(path, "r");
            assert_non_null(f);
            while (fgets(line, sizeof line, f)) {
                found_late |= strstr(line, "stoker-test-late") != NULL;
                found_arena |= strstr(line, "stoker-batches") != NULL;
            }
            fclose(f);
        }
        assert_false(found_late);
        assert_true(found_arena);
        snprintf(path, sizeof path, "/proc/%d/fd", pids[i]);
        DIR *d = opendir(path);
        assert_non_null(d);
        int nfd = 0;
        struct dirent *e;
        while ((e = readdir(d)))
            nfd += e->d_name[0] != '.';
        closedir(d);
        /* stdio, its socket, the wake-up eventfd, /proc/self/statm:
         * nothing of ours. */
        assert_true(nfd <= 6);
    }
    stk_loader_release(l, &b);
    stk_loader_release(l, &b1);
    stk_loader_destroy(&l);
    stk_dataset_destroy(&ds);
    close(plain);
    munmap(m, 4096);
    close(late);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_worker_killed),
        cmocka_unit_test(test_worker_killed_slow_main),
        cmocka_unit_test(test_worker_hung),
        cmocka_unit_test(test_destroy_no_leaks),
        cmocka_unit_test(test_main_killed),
        cmocka_unit_test(test_workers_start_clean),
        cmocka_unit_test(test_no_lost_wakeup),
        cmocka_unit_test(test_lost_task_recovered),
        cmocka_unit_test(test_interrupt_and_stall_report),
        cmocka_unit_test(test_forkserver_killed),
    };
    /* Workers are forked from the fork server, started here while this
     * process is still small. */
    stk_loader_forkserver_start();
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    stk_loader_forkserver_stop();
    return rc;
}
