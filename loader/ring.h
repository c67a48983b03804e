/* SPDX-License-Identifier: MIT */
/* The task ring: tasks in shared memory that one producer (the loader's
 * main process) queues and any of n consumers (the workers) takes, a
 * completion cell per slot, and the wake-up protocol around them, so that
 * neither side makes a system call while the other keeps up, and neither
 * sleeps through a wake-up. Knows nothing of processes, slots' contents
 * or batches' order: the pool and the loader build on it. Not installed. */
#ifndef STOKER_LOADER_RING_H
#define STOKER_LOADER_RING_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* main_waits: main sleeps until any task is done. */
#define STK__WAIT_ANY UINT64_MAX

/* The shared memory, laid out here for the tests that set up the races
 * the protocol must survive; everyone else goes through the calls. */
typedef struct stk__ring_hdr stk__ring_hdr_t;
typedef struct stk__ring_ctl stk__ring_ctl_t;
typedef struct stk__ring_cell stk__ring_cell_t;
typedef struct stk__ring_entry stk__ring_entry_t;

/* Why any free consumer takes the next task, whoever filled the last one:
 * with batch k bound to worker k % n (PyTorch's way), a worker sharing
 * its CPU with the main process fell behind and the other, done with its
 * own batches, slept a third of the time waiting for slots to come back
 * in order. Tasks and completions go through this memory; a consumer with
 * tasks queued makes no system call between tasks, and main sleeps only
 * when the task it needs is not done (two workers on two CPUs: the
 * per-batch messages, their wake-ups and socket buffers cost about 36 us
 * of CPU a batch before; raw Fashion-MNIST 4.0M samples/s at batch 256,
 * 5.6M at batch 1024). */
struct stk__ring_hdr {
    _Atomic uint64_t tail;       /* tasks pushed by main */
    _Atomic uint64_t main_waits; /* gen main sleeps for; STK__WAIT_ANY; 0: none */
    char pad0[48];
    _Atomic uint64_t head;       /* tasks claimed by consumers */
    char pad1[56];
};

struct stk__ring_ctl {
    _Atomic uint64_t busy_gen;   /* the task being claimed or filled; 0: none */
    _Atomic uint64_t progress;   /* tasks claimed and finished, a count */
    _Atomic uint32_t sleeping;   /* asleep in a read of its socket */
    _Atomic uint32_t stop;       /* main asks it to exit */
    _Atomic uint64_t sleeps;     /* times it went to sleep, a count */
    char pad[32];
};

/* A line each: consumers finishing neighbouring slots do not share one. */
struct stk__ring_cell {
    _Atomic uint64_t done_gen;   /* the last task done for this cell */
    char pad[56];
};

/* Consumers read an entry while main may be writing the next lap of the
 * ring, hence atomics. */
struct stk__ring_entry {
    _Atomic uint64_t cell, epoch, batch, gen;
};

_Static_assert(sizeof(stk__ring_hdr_t) == 128, "ring header is two lines");
_Static_assert(sizeof(stk__ring_ctl_t) == 64, "a consumer's marks are one line");

/* One task: fill cell (a slot) for batch of epoch; gen is unique per
 * task, and the cell's done mark answers it. */
typedef struct stk__ring_task {
    uint32_t cell;
    uint64_t epoch, batch, gen;
} stk__ring_task_t;

/* A process's handle on a ring; the memory is shared, the rest is the
 * producer's own (unused by consumers). */
typedef struct stk__ring {
    stk__ring_hdr_t *hdr;
    stk__ring_ctl_t *ctl;     /* one per consumer */
    stk__ring_cell_t *cells;  /* one per slot */
    stk__ring_entry_t *ent;   /* cap queued tasks */
    uint32_t cap, nconsumers, ncells;
    uint64_t last_gen;
    uint32_t wake_next;
} stk__ring_t;

/* Bytes of shared memory a ring takes (a multiple of 64). */
size_t stk__ring_bytes(uint32_t cap, uint32_t nconsumers, uint32_t ncells);
/* Points r at mem: stk__ring_bytes() of zeroed, 64-byte aligned memory
 * that every process maps. Each side attaches once with the same sizes. */
void stk__ring_attach(stk__ring_t *r, void *mem, uint32_t cap, uint32_t nconsumers,
                      uint32_t ncells);

/* ---- Producer (one thread of one process) -------------------------- */

/* Queues a task for cell: *gen is its id, *qpos its place in the queue.
 * -EAGAIN when cap tasks wait unclaimed. Wakes no one: see wake. */
int stk__ring_push(stk__ring_t *r, uint32_t cell, uint64_t epoch, uint64_t batch, uint64_t *gen,
                   uint64_t *qpos);
/* Wakes as many sleeping consumers as tasks wait unclaimed, starting
 * after the one woken last (a stopped consumer holding a wake-up does not
 * take every one). fds[i] is consumer i's socket (main's end; one byte is
 * sent), or negative for a consumer that does not run. */
void stk__ring_wake(stk__ring_t *r, const int *fds);
/* Whether cell's task gen is done; when it is, what the consumer wrote
 * for it is visible (acquire). */
int stk__ring_is_done(const stk__ring_t *r, uint32_t cell, uint64_t gen);
/* Says that main is about to sleep until task gen is done (STK__WAIT_ANY:
 * any task; 0: no longer sleeps). A consumer that finishes that task
 * writes its main_fd. After saying it, main must look at is_done once
 * more before it sleeps: a task finished before the consumer could see
 * the request sends no wake-up. */
void stk__ring_main_waits(stk__ring_t *r, uint64_t gen);
/* Whether the task queued at qpos has been claimed. */
int stk__ring_taken(const stk__ring_t *r, uint64_t qpos);
/* Drops every queued task (only while no consumer runs). */
void stk__ring_drop_queued(stk__ring_t *r);
/* Clears consumer i's marks before a new consumer i starts. */
void stk__ring_reset_consumer(stk__ring_t *r, uint32_t i);
/* Asks consumer i to exit when it next looks for a task. */
void stk__ring_stop(stk__ring_t *r, uint32_t i);
/* Tasks consumer i has claimed and finished, a count that moves. */
uint64_t stk__ring_progress(const stk__ring_t *r, uint32_t i);
/* Times consumer i went to sleep for want of a task. */
uint64_t stk__ring_sleeps(const stk__ring_t *r, uint32_t i);
/* The task consumer i marked as its own (claimed or about to be); 0 for
 * none. Stable once consumer i is dead. */
uint64_t stk__ring_busy(const stk__ring_t *r, uint32_t i);
/* The consumer among those with alive[i] set that holds task gen, or
 * UINT32_MAX. */
uint32_t stk__ring_holder(const stk__ring_t *r, uint64_t gen, const unsigned char *alive);
/* Whether task gen, queued at qpos, is claimed and held by no consumer
 * in alive: claimed by one that is gone (or about to give it up). A
 * consumer marks a task busy before it claims it, and clears the mark
 * only after marking it done or reporting its failure out of band; the
 * reads here go head first, then every mark, so a yes is sure. The
 * caller then reads the failure reports, then is_done: a task unheld,
 * unreported and not done is lost. */
int stk__ring_unheld(const stk__ring_t *r, uint64_t gen, uint64_t qpos, const unsigned char *alive);

/* ---- Consumer i (one per process) ---------------------------------- */

/* The next task, sleeping in a read of fd (consumer i's socket) while
 * none waits. 0, or -1 when asked to stop or fd is at end of file. */
int stk__ring_take(stk__ring_t *r, uint32_t i, int fd, stk__ring_task_t *t);
/* Marks t done (release: what was written for it goes first) and writes
 * main_fd (an eventfd) if main sleeps waiting for it. */
void stk__ring_finish(stk__ring_t *r, uint32_t i, const stk__ring_task_t *t, int main_fd);
/* Gives up the task taken, after its failure was reported out of band. */
void stk__ring_release(stk__ring_t *r, uint32_t i);
/* Whether a task waits unclaimed. */
int stk__ring_queued(const stk__ring_t *r);

/* Test hook: a consumer finding the queue empty waits this long before
 * it says it sleeps, which widens the window where a task pushed then
 * finds it awake, unseen. */
extern uint32_t stk__ring_test_sleep_race_us;

#endif
