/* SPDX-License-Identifier: MIT */
/* num_workers = STK_LOADER_WORKERS_AUTO: how many CPUs this process may
 * use (affinity, cgroup quota), and the trial that picks between those
 * workers and none by timing both on the run's own first batches. Why a
 * trial and not a rule: on 2 CPUs raw Fashion-MNIST is fastest in
 * process and augmented batches with 2 workers, and what a batch costs
 * the caller's own loop (the training step) changes the answer again.
 * Batches are the same bytes either way, so switching costs nothing but
 * the trial's own batches. */
#define _GNU_SOURCE
#include "loader_internal.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *stk__cgroup_cpu_max_path = "/sys/fs/cgroup/cpu.max";
uint32_t stk__test_cpus;

uint32_t stk__usable_cpus(void)
{
    cpu_set_t set;
    uint32_t n = 1;
    if (stk__test_cpus)
        return stk__test_cpus;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        n = (uint32_t)CPU_COUNT(&set);
    /* cgroup v2: "quota period", or "max period" for no limit. */
    FILE *f = fopen(stk__cgroup_cpu_max_path, "re");
    if (f) {
        char q[32];
        unsigned long long period = 0;
        if (fscanf(f, "%31s %llu", q, &period) == 2 && strcmp(q, "max") != 0 && period) {
            unsigned long long quota = strtoull(q, NULL, 10);
            uint32_t c = (uint32_t)((quota + period - 1) / period);
            if (c >= 1 && c < n)
                n = c;
        }
        fclose(f);
    }
    return n > 64 ? 64 : n;
}

void stk__trial_start(stk__trial_t *t)
{
    memset(t, 0, sizeof *t);
    t->phase = STK__TRIAL_WORKERS;
    t->skip = STK__TRIAL_WARM_WORKERS;
}

void stk__trial_break(stk__trial_t *t)
{
    t->last_ns = 0;
}

/* Enough of one phase: batches and time both, so that neither a fast
 * loop (a few microseconds a batch) nor a slow one (a training step of
 * 100 ms) decides on noise or waits long. */
static int phase_done(const stk__trial_t *t)
{
    return t->n >= STK__TRIAL_MAX_BATCHES ||
           (t->n >= STK__TRIAL_MIN_BATCHES && t->sum_ns >= STK__TRIAL_MIN_NS);
}

int stk__trial_note(stk__trial_t *t, uint64_t now)
{
    if (t->phase == STK__TRIAL_DONE)
        return 0;
    if (t->skip) {
        /* The first batches of a phase pay for its start: a worker's
         * first faults, main's first use of its own instance. */
        t->skip--;
        t->last_ns = now;
        return 0;
    }
    if (t->last_ns) {
        t->sum_ns += now - t->last_ns;
        t->n++;
    }
    t->last_ns = now;
    if (!phase_done(t))
        return 0;
    int k = t->phase == STK__TRIAL_WORKERS ? 0 : 1;
    t->ns_per_batch[k] = (double)t->sum_ns / (double)t->n;
    t->n = 0;
    t->sum_ns = 0;
    t->last_ns = 0;
    if (t->phase == STK__TRIAL_WORKERS) {
        t->phase = STK__TRIAL_INLINE;
        t->skip = STK__TRIAL_WARM_INLINE;
        return STK__TRIAL_GO_INLINE;
    }
    t->phase = STK__TRIAL_DONE;
    t->inline_wins = t->ns_per_batch[1] < t->ns_per_batch[0];
    return STK__TRIAL_DECIDED;
}
