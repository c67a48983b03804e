/* SPDX-License-Identifier: MIT */
/* loader/ring.c, the task ring under the loader's worker pool, on its
 * own: order, capacity and stop; consumer processes and a producer that
 * never lose a wake-up in either direction, with the window between
 * choosing a task and saying so widened; and the race where a consumer
 * dies right after claiming a task another had just marked, which must
 * leave the task findable as lost. A lost wake-up is a hang here (no
 * capped sleep as in the loader), caught by a 10 s watchdog. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "../../loader/ring.h"

#define MAXC 8
/* A wake-up that has not come in this long is lost: a task takes at most
 * a few hundred microseconds here. */
#define WATCHDOG_MS 10000

typedef struct fix {
    void *mem;
    size_t bytes;
    uint64_t *result;      /* shared: what a consumer wrote for a cell */
    stk__ring_t prod;
    int main_fd;           /* eventfd consumers write to wake main */
    int fds[MAXC];         /* main's socket ends */
    int theirs[MAXC];
    pid_t pid[MAXC];
    uint32_t n, cap, cells;
} fix_t;

static void fix_init(fix_t *f, uint32_t cap, uint32_t n, uint32_t cells)
{
    memset(f, 0, sizeof *f);
    f->n = n;
    f->cap = cap;
    f->cells = cells;
    f->bytes = stk__ring_bytes(cap, n, cells);
    assert_int_equal(f->bytes % 64, 0);
    f->mem = mmap(NULL, f->bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(f->mem != MAP_FAILED);
    f->result = mmap(NULL, cells * sizeof *f->result, PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(f->result != MAP_FAILED);
    stk__ring_attach(&f->prod, f->mem, cap, n, cells);
    f->main_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    assert_true(f->main_fd >= 0);
    for (uint32_t i = 0; i < n; i++) {
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
        f->fds[i] = sv[0];
        f->theirs[i] = sv[1];
    }
}

static void fix_fini(fix_t *f)
{
    for (uint32_t i = 0; i < f->n; i++) {
        stk__ring_stop(&f->prod, i);
        close(f->fds[i]);
        if (f->theirs[i] >= 0)
            close(f->theirs[i]);
    }
    for (uint32_t i = 0; i < f->n; i++)
        if (f->pid[i] > 0) {
            int st;
            assert_int_equal(waitpid(f->pid[i], &st, 0), f->pid[i]);
            assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        }
    close(f->main_fd);
    munmap(f->result, f->cells * sizeof *f->result);
    munmap(f->mem, f->bytes);
}

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

/* What consumer processes do: take, work a while (none, spinning or
 * asleep, varying with the task), write a result for the cell, finish. */
static void consumer(fix_t *f, uint32_t i, int jitter_us)
{
    stk__ring_t r;
    stk__ring_attach(&r, f->mem, f->cap, f->n, f->cells);
    for (uint32_t k = 0; k < f->n; k++)
        if (k != i)
            close(f->theirs[k]);
    stk__ring_task_t t;
    while (stk__ring_take(&r, i, f->theirs[i], &t) == 0) {
        uint64_t h = (t.gen * 0x9e3779b97f4a7c15ull) >> 40;
        long us = jitter_us ? (long)(h % (uint64_t)jitter_us) : 0;
        if (h & 1)
            sleep_us(us);
        else
            for (volatile long spin = 0; spin < us * 100; spin++) {
            }
        f->result[t.cell] = t.batch * 7 + t.epoch;
        stk__ring_finish(&r, i, &t, f->main_fd);
    }
    _exit(0);
}

static void start_consumers(fix_t *f, int jitter_us)
{
    for (uint32_t i = 0; i < f->n; i++) {
        pid_t p = fork();
        assert_true(p >= 0);
        if (p == 0) {
            for (uint32_t k = 0; k < f->n; k++)
                close(f->fds[k]);
            consumer(f, i, jitter_us);
        }
        f->pid[i] = p;
    }
    for (uint32_t i = 0; i < f->n; i++) {
        close(f->theirs[i]);
        f->theirs[i] = -1;
    }
}

/* Main's side of the protocol: say what we wait for, look once more,
 * sleep. 0 once done(cell, gen) holds (any outstanding cell with
 * STK__WAIT_ANY), -1 when no wake-up came for WATCHDOG_MS. */
static int any_done(fix_t *f, const uint64_t *gen_of, uint32_t *which)
{
    for (uint32_t c = 0; c < f->cells; c++)
        if (gen_of[c] && stk__ring_is_done(&f->prod, c, gen_of[c])) {
            *which = c;
            return 1;
        }
    return 0;
}

static int wait_for(fix_t *f, const uint64_t *gen_of, uint32_t cell, int race_us, uint32_t *which)
{
    int any = cell == UINT32_MAX;
    for (;;) {
        if (any ? any_done(f, gen_of, which) : stk__ring_is_done(&f->prod, cell, gen_of[cell]))
            break;
        if (race_us)
            sleep_us(race_us);
        stk__ring_main_waits(&f->prod, any ? STK__WAIT_ANY : gen_of[cell]);
        if (any ? any_done(f, gen_of, which) : stk__ring_is_done(&f->prod, cell, gen_of[cell])) {
            stk__ring_main_waits(&f->prod, 0);
            break;
        }
        struct pollfd p = {.fd = f->main_fd, .events = POLLIN};
        int n = poll(&p, 1, WATCHDOG_MS);
        stk__ring_main_waits(&f->prod, 0);
        if (n == 0)
            return -1;
        uint64_t count;
        if (read(f->main_fd, &count, sizeof count) < 0)
            assert_int_equal(errno, EAGAIN);
    }
    if (!any)
        *which = cell;
    return 0;
}

/* Order, capacity, marks and stop, one process playing every part. */
static void test_push_take(void **state)
{
    (void)state;
    fix_t f;
    fix_init(&f, 4, 2, 4);
    stk__ring_t cons;
    stk__ring_attach(&cons, f.mem, 4, 2, 4);
    uint64_t gen[5], qpos[5];
    for (uint32_t k = 0; k < 4; k++) {
        assert_int_equal(stk__ring_push(&f.prod, k, 3, 100 + k, &gen[k], &qpos[k]), 0);
        assert_int_equal(qpos[k], k);
        assert_true(k == 0 || gen[k] > gen[k - 1]);
    }
    assert_int_equal(stk__ring_push(&f.prod, 0, 3, 104, &gen[4], &qpos[4]), -EAGAIN);
    assert_true(stk__ring_queued(&cons));

    stk__ring_task_t t;
    assert_int_equal(stk__ring_take(&cons, 0, f.theirs[0], &t), 0);
    assert_int_equal(t.cell, 0);
    assert_int_equal(t.epoch, 3);
    assert_int_equal(t.batch, 100);
    assert_int_equal(t.gen, gen[0]);
    assert_int_equal(stk__ring_busy(&f.prod, 0), gen[0]);
    assert_true(stk__ring_taken(&f.prod, qpos[0]));
    assert_false(stk__ring_taken(&f.prod, qpos[1]));
    unsigned char alive[2] = {1, 1};
    assert_int_equal(stk__ring_holder(&f.prod, gen[0], alive), 0);
    assert_false(stk__ring_is_done(&f.prod, 0, gen[0]));
    stk__ring_finish(&cons, 0, &t, f.main_fd);
    assert_true(stk__ring_is_done(&f.prod, 0, gen[0]));
    assert_int_equal(stk__ring_busy(&f.prod, 0), 0);
    assert_int_equal(stk__ring_progress(&f.prod, 0), 2); /* claimed, finished */
    /* main did not say it waits: no wake-up was written */
    uint64_t count;
    assert_true(read(f.main_fd, &count, sizeof count) < 0 && errno == EAGAIN);

    /* A slot freed: the ring takes one more, in a new lap. */
    assert_int_equal(stk__ring_push(&f.prod, 0, 3, 104, &gen[4], &qpos[4]), 0);
    assert_int_equal(qpos[4], 4);
    for (uint32_t k = 1; k <= 4; k++) {
        assert_int_equal(stk__ring_take(&cons, 1, f.theirs[1], &t), 0);
        assert_int_equal(t.batch, 100 + k);
        stk__ring_main_waits(&f.prod, gen[k]);
        stk__ring_finish(&cons, 1, &t, f.main_fd);
        stk__ring_main_waits(&f.prod, 0);
        assert_int_equal(read(f.main_fd, &count, sizeof count), (ssize_t)sizeof count);
        assert_int_equal(count, 1);
    }
    assert_false(stk__ring_queued(&cons));

    /* Stop: take returns at once; end of file: the same while asleep. */
    stk__ring_stop(&f.prod, 0);
    assert_int_equal(stk__ring_take(&cons, 0, f.theirs[0], &t), -1);
    stk__ring_reset_consumer(&f.prod, 0);
    close(f.fds[1]);
    f.fds[1] = socket(AF_UNIX, SOCK_SEQPACKET, 0); /* something for fini to close */
    assert_int_equal(stk__ring_take(&cons, 1, f.theirs[1], &t), -1);
    /* Drop what is queued: nothing is left to take. */
    assert_int_equal(stk__ring_push(&f.prod, 1, 3, 105, &gen[0], &qpos[0]), 0);
    stk__ring_drop_queued(&f.prod);
    assert_false(stk__ring_queued(&cons));
    assert_true(stk__ring_taken(&f.prod, qpos[0]));
    fix_fini(&f);
}

/* Consumer processes, producer keeping every cell busy, main waiting for
 * the oldest task or for any, sometimes after a pause between choosing
 * and saying so (the window of the lost wake-up found before), with
 * consumers that sleep between tasks (woken by main) or are mid-task.
 * Every task's result must arrive, none may hang. */
static void run_stress(uint32_t nconsumers, uint32_t cells, uint32_t total, int jitter_us)
{
    fix_t f;
    fix_init(&f, cells, nconsumers, cells);
    start_consumers(&f, jitter_us);
    uint64_t gen_of[64] = {0}, batch_of[64] = {0}, qpos;
    uint64_t pushed = 0, done = 0;
    uint32_t rnd = 12345;
    while (done < total) {
        int woke = 0;
        for (uint32_t c = 0; c < cells && pushed < total; c++)
            if (!gen_of[c]) {
                batch_of[c] = pushed++;
                assert_int_equal(stk__ring_push(&f.prod, c, 1, batch_of[c], &gen_of[c], &qpos), 0);
                woke = 1;
            }
        if (woke)
            stk__ring_wake(&f.prod, f.fds);
        rnd = rnd * 1103515245u + 12345u;
        int race = (rnd >> 16) % 3 == 0 ? (int)((rnd >> 8) % 150) : 0;
        uint32_t cell = UINT32_MAX, which = UINT32_MAX;
        if ((rnd >> 20) & 1) /* the oldest outstanding, as the loader waits in order */
            for (uint32_t c = 0; c < cells; c++)
                if (gen_of[c] && (cell == UINT32_MAX || batch_of[c] < batch_of[cell]))
                    cell = c;
        if (wait_for(&f, gen_of, cell, race, &which) != 0)
            fail_msg("no wake-up for %s after %d ms: lost (%llu of %u tasks done)",
                     cell == UINT32_MAX ? "any task" : "the oldest task", WATCHDOG_MS,
                     (unsigned long long)done, total);
        for (uint32_t c = 0; c < cells; c++)
            if (gen_of[c] && stk__ring_is_done(&f.prod, c, gen_of[c])) {
                assert_int_equal(f.result[c], batch_of[c] * 7 + 1);
                gen_of[c] = 0;
                done++;
            }
    }
    assert_int_equal(done, total);
    fix_fini(&f);
}

static void test_no_lost_wakeup(void **state)
{
    (void)state;
    run_stress(4, 8, 4000, 300);  /* more consumers than CPUs, slow tasks */
    run_stress(1, 2, 3000, 0);    /* one consumer that sleeps between every task */
    run_stress(2, 4, 3000, 40);
    /* Consumers pausing between finding the queue empty and saying they
     * sleep: a push in that window must still reach them. */
    stk__ring_test_sleep_race_us = 100;
    run_stress(1, 2, 1500, 0);
    run_stress(3, 4, 1500, 50);
    stk__ring_test_sleep_race_us = 0;
}

/* The lost task. Consumer 1 reads the entry at head and marks it busy,
 * about to claim it; consumer 0 claims it first and dies. At the death,
 * a live consumer shows the task busy, so it is left to that one (as the
 * loader does); consumer 1's claim fails, the queue is empty and it
 * clears its mark to sleep. The task is now claimed, held by no live
 * consumer, not done: unheld must say so, and a second push of it is
 * done. And the cases that are not lost: a consumer that marked a task
 * and died before claiming it (still queued), and one that gave a task
 * up after reporting its failure (the report is there to read). */
static void test_lost_task_recovered(void **state)
{
    (void)state;
    fix_t f;
    fix_init(&f, 4, 2, 4);
    stk__ring_t c0, c1;
    stk__ring_attach(&c0, f.mem, 4, 2, 4);
    stk__ring_attach(&c1, f.mem, 4, 2, 4);
    unsigned char alive[2] = {1, 1};
    uint64_t gen, qpos;
    stk__ring_task_t t;

    assert_int_equal(stk__ring_push(&f.prod, 2, 0, 9, &gen, &qpos), 0);
    atomic_store(&f.prod.ctl[1].busy_gen, gen);         /* consumer 1: marked, not claimed */
    assert_int_equal(stk__ring_take(&c0, 0, f.theirs[0], &t), 0);
    assert_int_equal(t.gen, gen);
    alive[0] = 0;                                       /* consumer 0 dies holding it */
    assert_int_equal(stk__ring_busy(&f.prod, 0), gen);
    assert_false(stk__ring_unheld(&f.prod, gen, qpos, alive)); /* left to consumer 1 */
    assert_int_equal(stk__ring_holder(&f.prod, gen, alive), 1);
    atomic_store(&f.prod.ctl[1].busy_gen, 0);           /* its claim failed; it sleeps */
    assert_true(stk__ring_unheld(&f.prod, gen, qpos, alive));
    assert_false(stk__ring_is_done(&f.prod, 2, gen));   /* lost: push it again */
    uint64_t gen2, qpos2;
    assert_int_equal(stk__ring_push(&f.prod, 2, 0, 9, &gen2, &qpos2), 0);
    assert_int_equal(stk__ring_take(&c1, 1, f.theirs[1], &t), 0);
    assert_int_equal(t.gen, gen2);
    assert_false(stk__ring_unheld(&f.prod, gen2, qpos2, alive));
    stk__ring_finish(&c1, 1, &t, f.main_fd);
    assert_true(stk__ring_is_done(&f.prod, 2, gen2));

    /* Marked, then dead before the claim: still queued, not lost. */
    stk__ring_reset_consumer(&f.prod, 0);
    alive[0] = 1;
    assert_int_equal(stk__ring_push(&f.prod, 3, 0, 10, &gen, &qpos), 0);
    atomic_store(&f.prod.ctl[0].busy_gen, gen);
    alive[0] = 0;
    assert_false(stk__ring_unheld(&f.prod, gen, qpos, alive));
    assert_int_equal(stk__ring_take(&c1, 1, f.theirs[1], &t), 0);
    assert_int_equal(t.gen, gen);
    stk__ring_finish(&c1, 1, &t, f.main_fd);

    /* Given up after a failure report: unheld, and the report is there. */
    assert_int_equal(stk__ring_push(&f.prod, 1, 0, 11, &gen, &qpos), 0);
    assert_int_equal(stk__ring_take(&c1, 1, f.theirs[1], &t), 0);
    char report = 'E';
    assert_int_equal(send(f.theirs[1], &report, 1, 0), 1);
    stk__ring_release(&c1, 1);
    assert_true(stk__ring_unheld(&f.prod, gen, qpos, alive));
    char got = 0;
    assert_int_equal(recv(f.fds[1], &got, 1, MSG_DONTWAIT), 1);
    assert_int_equal(got, 'E');
    fix_fini(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_push_take),
        cmocka_unit_test(test_no_lost_wakeup),
        cmocka_unit_test(test_lost_task_recovered),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
