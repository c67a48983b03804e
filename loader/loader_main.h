/* SPDX-License-Identifier: MIT */
/* The loader object, shared by its two halves: loader.c (layout and
 * limits, issuing batches, delivering them in order, state, stats) and
 * pool.c (the workers: task queue and wake-ups, spawning, reaping,
 * respawning, hung and dead workers). Not installed. */
#ifndef STOKER_LOADER_MAIN_H
#define STOKER_LOADER_MAIN_H

#include "loader_internal.h"

#include <poll.h>
#include <sys/types.h>

enum { SLOT_FREE = 0, SLOT_ISSUED, SLOT_DONE, SLOT_HELD };

typedef struct slot_info {
    int state;
    uint32_t worker;     /* DONE with an error: who reported it */
    uint64_t batch;
    uint64_t gen;        /* ISSUED: the task's, which done_gen answers */
    uint64_t qpos;       /* ISSUED: its place in the queue (taken once head passes it) */
    int status;          /* DONE: the worker's result */
    char *msg;           /* DONE with an error: its context */
} slot_info_t;

typedef struct worker_info {
    pid_t pid;
    int sock;
    uint64_t seen_progress, seen_ns; /* its progress count, and when it last moved */
} worker_info_t;

struct stk_loader {
    stk_dataset_t *ds;
    stk_loader_config_t cfg;
    char *augment, *augment_field;
    stk_sampler_t *own_sampler;
    stk_batch_sampler_t *bs;
    int own_bs;
    uint64_t epoch, nbatches, next_deliver, next_issue;

    stk__worker_spec_t spec;     /* template sent to every worker */
    size_t arena_bytes;
    int arena_fd;
    /* Workers wake main through this eventfd, not their sockets: a
     * socket's wake-up is a "sync" one, which hints the scheduler to put
     * the sleeper on the waker's CPU, as if the waker were about to sleep;
     * a worker goes on with its next batch. Raw Fashion-MNIST, two
     * workers, alternating A/B runs: 1.03-1.10x samples/s. */
    int wake_fd;
    unsigned char *arena;
    int pinned;

    uint32_t nworkers;
    worker_info_t *w;
    struct pollfd *pfd;
    int running;
    /* Workers asked for while the loader gets on with its set-up: the
     * server's answers (their pids) are read by spawn_finish. */
    int spawn_pending;
    uint32_t spawn_sent;
    uint32_t *spawn_ids;
    pid_t *spawn_pids;
    slot_info_t *slots;
    uint32_t *slot_of;           /* batch % nslots -> slot */
    stk__filler_t *inline_fill;
    int attached;                /* ds->inst uses the arena's dataset area */

    uint64_t last_gen;
    uint32_t wake_next;

    int failed;
    char failmsg[1024];
    uint64_t created_ns, wait_ns, wait_bytes, first_batch_ns, respawns;
};

static inline const stk__layout_t *LY(const stk_loader_t *l)
{
    return &l->spec.layout;
}

static inline stk__wstats_t *wstats(const stk_loader_t *l, uint32_t i)
{
    return (stk__wstats_t *)(l->arena + l->spec.wstats_off) + i;
}

static inline stk__wctl_t *wctl(const stk_loader_t *l, uint32_t i)
{
    return (stk__wctl_t *)(l->arena + l->spec.wctl_off) + i;
}

static inline unsigned char *slot_mem(const stk_loader_t *l, uint32_t s)
{
    return l->arena + (size_t)s * LY(l)->slot_bytes;
}

static inline size_t align_up(size_t v, size_t a)
{
    return (v + a - 1) / a * a;
}

static inline stk__queue_t *queue(const stk_loader_t *l)
{
    return (stk__queue_t *)(l->arena + l->spec.queue_off);
}

/* loader.c */
/* Records a lasting failure: every later call returns the same. */
int stk__ld_fail(stk_loader_t *l, int code, const char *fmt, ...) STK_PRINTF(3, 4);
/* Fills free slots with the next batches, as far as slots allow. */
int stk__ld_issue(stk_loader_t *l);

/* pool.c */
uint64_t stk__ld_worker_seed(const stk_loader_t *l, uint32_t i);
/* Starts the workers; with tasks, queues the first batches before the
 * fork. With defer, returns once the server has the requests;
 * stk__ld_finish_start completes. */
int stk__ld_start_workers(stk_loader_t *l, int tasks, int defer);
int stk__ld_finish_start(stk_loader_t *l);
/* Reads the server's answers to requests sent for new workers. */
int stk__ld_spawn_finish(stk_loader_t *l);
/* Stops every worker (SIGKILL first with hard) and reaps them. */
void stk__ld_stop_workers(stk_loader_t *l, int hard);
/* Queues slot s's task; stk__ld_wake_workers wakes sleepers for it. */
int stk__ld_send_task(stk_loader_t *l, uint32_t s);
void stk__ld_wake_workers(stk_loader_t *l);
/* Marks slot s done if a worker says so in shared memory (1 if now). */
int stk__ld_collect(stk_loader_t *l, uint32_t s);
void stk__ld_collect_all(stk_loader_t *l);
/* Tells workers that main sleeps waiting for task gen (STK__WAIT_ANY:
 * any; 0: no longer). */
void stk__ld_set_main_waits(stk_loader_t *l, uint64_t gen);
/* Notes when each worker's progress count last moved. */
void stk__ld_note_progress(stk_loader_t *l, uint64_t now);
/* After a timeout on slot s: the worker to blame (*holds: it holds the
 * batch), or UINT32_MAX when none is stuck. */
uint32_t stk__ld_hung_worker(stk_loader_t *l, uint32_t s, uint64_t now, int *holds);
/* A worker died or was killed: respawn it and re-issue what it held, or
 * fail naming it. */
int stk__ld_worker_lost(stk_loader_t *l, uint32_t i, const char *context);
/* Slot s's task, if lost (taken by a worker that is gone, unseen):
 * queued again (reissue) or its slot freed. 0 or the loader's failure. */
int stk__ld_recover(stk_loader_t *l, uint32_t s, int reissue);
/* Reads what workers sent, handling deaths, for up to timeout_ms. */
int stk__ld_pump(stk_loader_t *l, int timeout_ms, uint32_t only);

#endif
