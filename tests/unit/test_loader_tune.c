/* SPDX-License-Identifier: MIT */
/* loader/, picking the number of workers (loader/autotune.c): the AUTO
 * trial on made-up times, the CPUs this process may use, and num_workers
 * AUTO on real processes. */
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

/* The AUTO trial as a state machine, on made-up times: warm-up batches
 * and an interval across an epoch change are not counted, each phase is
 * measured exactly, and the faster one wins, either way round. */
static void test_trial(void **state)
{
    (void)state;
    for (int inline_faster = 0; inline_faster < 2; inline_faster++) {
        stk__trial_t t;
        stk__trial_start(&t);
        uint64_t now = 1000, wstep = 100000, istep = inline_faster ? 80000 : 120000;
        for (int k = 0; k < STK__TRIAL_WARM_WORKERS; k++) {
            now += 5000000; /* slow first batches: not counted */
            assert_int_equal(stk__trial_note(&t, now), 0);
        }
        int ev = 0, n = 0;
        while (ev == 0 && n < 10000) {
            now += wstep;
            if (n == 5) { /* an epoch change, with an evaluation in it */
                stk__trial_break(&t);
                now += 1000000000;
            }
            ev = stk__trial_note(&t, now);
            n++;
        }
        assert_int_equal(ev, STK__TRIAL_GO_INLINE);
        assert_true(t.ns_per_batch[0] == (double)wstep);
        for (int k = 0; k < STK__TRIAL_WARM_INLINE; k++) {
            now += 7000000;
            assert_int_equal(stk__trial_note(&t, now), 0);
        }
        ev = 0;
        for (n = 0; ev == 0 && n < 10000; n++) {
            now += istep;
            ev = stk__trial_note(&t, now);
        }
        assert_int_equal(ev, STK__TRIAL_DECIDED);
        assert_true(t.ns_per_batch[1] == (double)istep);
        assert_int_equal(t.inline_wins, inline_faster);
        assert_int_equal(stk__trial_note(&t, now + 1), 0); /* decided stays decided */
    }
}

/* CPUs this process may use: the affinity mask, lowered by a cgroup v2
 * cpu.max quota (rounded up). */
static void test_usable_cpus(void **state)
{
    (void)state;
    cpu_set_t set;
    assert_int_equal(sched_getaffinity(0, sizeof set, &set), 0);
    uint32_t mine = (uint32_t)CPU_COUNT(&set);
    char path[] = "/tmp/stk-cpumax-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *saved = stk__cgroup_cpu_max_path;
    stk__cgroup_cpu_max_path = path;
    static const char *const lines[] = {"max 100000\n", "50000 100000\n", "150000 100000\n"};
    const uint32_t want[] = {mine, 1, mine < 2 ? mine : 2};
    for (int k = 0; k < 3; k++) {
        assert_int_equal(ftruncate(fd, 0), 0);
        assert_int_equal(pwrite(fd, lines[k], strlen(lines[k]), 0), (ssize_t)strlen(lines[k]));
        assert_int_equal(stk__usable_cpus(), want[k] > 64 ? 64 : want[k]);
    }
    stk__cgroup_cpu_max_path = "/nonexistent/cpu.max";
    assert_int_equal(stk__usable_cpus(), mine > 64 ? 64 : mine);
    stk__cgroup_cpu_max_path = saved;
    close(fd);
    unlink(path);
}

/* num_workers AUTO on real processes, with 2 CPUs assumed: where workers
 * are slow (2 ms a sample in workers only) it settles in process and
 * stops them; where every sample waits 1 ms, two workers in parallel win.
 * Either way the batches are those of any fixed worker count. */
static void test_auto_workers(void **state)
{
    (void)state;
    stk__test_cpus = 2;
    for (int workers_win = 0; workers_win < 2; workers_win++) {
        var_args_t a = {.n = 600, .bad = -1, .hang = -1};
        /* Sleeps, not work, decide each case, so that a loaded machine
         * cannot flip it: 2 workers sleeping 4 ms a record halve the
         * time of main sleeping it; workers that sleep 8 ms a record
         * lose to main, which does not. */
        if (workers_win)
            a.sleep_ms = 4;
        else
            a.worker_sleep_ms = 8;
        stk_dataset_t *ds = NULL;
        assert_int_equal(stk_dataset_create(&ds, &var_ops, &a, sizeof a), 0);
        stk_loader_config_t c = base_cfg(workers_win ? 3 : 0, 0); /* whichever is quick */
        c.batch_size = 4;
        run_t ref = run_epochs(ds, &c, 2);
        c.num_workers = STK_LOADER_WORKERS_AUTO;
        stk_loader_t *l = NULL;
        assert_int_equal(stk_loader_create(&l, ds, &c), 0);
        assert_int_equal(stk_loader_worker_pids(l, NULL, 0), 2);
        run_t got;
        memset(&got, 0, sizeof got);
        for (uint64_t e = 0; e < 2; e++) {
            free(got.seen);
            got.seen = NULL;
            assert_int_equal(stk_loader_set_epoch(l, e), 0);
            assert_int_equal(drain_epoch(l, &got, 600), STK_DONE);
            assert_each_once(&got, 600, -1);
        }
        assert_true(got.sum == ref.sum);
        stk_loader_stats_t st;
        stk_loader_get_stats(l, &st);
        assert_int_equal(st.auto_decided, 1);
        assert_int_equal(st.num_workers, workers_win ? 2 : 0);
        int pids[2];
        stk_loader_worker_pids(l, pids, 2);
        assert_true(workers_win ? pids[0] > 0 && pids[1] > 0 : pids[0] == 0 && pids[1] == 0);
        stk_loader_destroy(&l);
        free(got.seen);
        free(ref.seen);
        stk_dataset_destroy(&ds);
    }
    stk__test_cpus = 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_trial),
        cmocka_unit_test(test_usable_cpus),
        cmocka_unit_test(test_auto_workers),
    };
    /* Workers are forked from the fork server, started here while this
     * process is still small. */
    stk_loader_forkserver_start();
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    stk_loader_forkserver_stop();
    return rc;
}
