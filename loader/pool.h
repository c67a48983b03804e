/* SPDX-License-Identifier: MIT */
/* The worker pool, seen from the main process: worker processes started
 * through the fork server, a socket each (wake-ups to it, failure reports
 * from it, end of file when either side is gone), reaping, respawning
 * one, telling which worker holds a task or stopped moving, and main's
 * sleep. Built on the ring (ring.h); knows nothing of batches' order,
 * epochs or slots (the loader's), and calls nothing above it: what
 * happens to workers comes back as events. Not installed. */
#ifndef STOKER_LOADER_POOL_H
#define STOKER_LOADER_POOL_H

#include "loader_internal.h"
#include "ring.h"

#include <poll.h>
#include <sys/types.h>

enum {
    STK__POOL_REPORT = 1, /* a worker's failure report */
    STK__POOL_DIED = 2    /* a worker is gone (reaped; its slot in the pool is empty) */
};

typedef struct stk__pool_event {
    int kind;
    uint32_t worker;
    int pid;
    /* REPORT: the failed task (cell, epoch, batch) and its status, or
     * cell UINT32_MAX from a worker that could not start. */
    uint32_t cell;
    uint64_t epoch, batch;
    int status;
    char msg[STK__MSG_MAX]; /* REPORT: the worker's context; DIED: how it ended */
} stk__pool_event_t;

typedef struct stk__pool {
    stk__ring_t *ring;
    const stk__worker_spec_t *spec; /* template sent to every worker */
    int arena_fd, args_fd, wake_fd;
    uint64_t seed;                  /* the loader's: workers' own derive from it */
    uint32_t n;
    int running;
    pid_t *pid;                     /* 0: none */
    int *sock;                      /* main's end; -1: none */
    unsigned char *alive;           /* pid and socket both there */
    uint64_t *seen_progress, *seen_ns; /* a worker's progress count, when it last moved */
    struct pollfd *pfd;             /* n sockets and wake_fd */
    /* Workers asked for while the loader gets on with its set-up. */
    int spawn_pending;
    uint32_t spawn_sent;
    uint32_t *spawn_ids;
    pid_t *spawn_pids;
    int *theirs;                    /* workers' socket ends until the server has them */
    stk__pool_event_t *ev;          /* events not yet taken */
    size_t nev, capev;
} stk__pool_t;

/* A pool of n workers (none started) over ring; the descriptors stay the
 * caller's. Returns 0 or -ENOMEM. */
int stk__pool_init(stk__pool_t *p, uint32_t n, stk__ring_t *ring, const stk__worker_spec_t *spec,
                   int arena_fd, int args_fd, int wake_fd, uint64_t seed);
/* Stops the workers (SIGKILL first), reaps them, frees. */
void stk__pool_fini(stk__pool_t *p);
/* Worker i's own seed. */
uint64_t stk__pool_worker_seed(uint64_t loader_seed, uint32_t i);

/* Empties the queue and gives every worker its socket: tasks pushed
 * from here on wait for workers that do not exist yet. */
int stk__pool_prepare(stk__pool_t *p);
/* Asks the fork server for every worker in one trip and returns once
 * it has the requests (the server forks while the caller works). */
int stk__pool_spawn_begin(stk__pool_t *p);
/* Reads the server's answers. On an error every worker is stopped. */
int stk__pool_spawn_finish(stk__pool_t *p);
/* Stops every worker and reaps it: the stop mark and end of file on its
 * socket, SIGKILL first with hard, SIGKILL for any still there a second
 * later (a stopped one). Queued tasks are dropped. */
void stk__pool_stop(stk__pool_t *p, int hard);
/* Starts worker i again (after it died and was reaped). */
int stk__pool_respawn(stk__pool_t *p, uint32_t i);
/* Kills worker i and reaps it; why says how it ended. */
void stk__pool_kill(stk__pool_t *p, uint32_t i, char *why, size_t cap);
/* Wakes sleeping workers for the tasks queued. */
void stk__pool_wake(stk__pool_t *p);

/* Sleeps until a worker reports, dies or finishes a task main waits for
 * (the ring's main_waits), or timeout_ms passes (-1: no limit), or the
 * wake eventfd is written (stk_loader_interrupt); reads what came. Dead
 * workers are reaped. Returns 0 or a negative code for poll itself. */
int stk__pool_pump(stk__pool_t *p, int timeout_ms);
/* The oldest event not yet taken: 1 with *ev, 0 when none. */
int stk__pool_event(stk__pool_t *p, stk__pool_event_t *ev);

/* The live worker holding task gen, or UINT32_MAX. */
uint32_t stk__pool_holder(const stk__pool_t *p, uint64_t gen);
/* Whether task gen, queued at qpos, is claimed and no live worker holds
 * it (stk__ring_unheld). */
int stk__pool_unheld(const stk__pool_t *p, uint64_t gen, uint64_t qpos);
/* Notes, per worker, when its progress count last moved. */
void stk__pool_note_progress(stk__pool_t *p, uint64_t now);
/* The live worker that has not moved for longest, if that is min_ns at
 * least; UINT32_MAX otherwise. */
uint32_t stk__pool_stalled(stk__pool_t *p, uint64_t now, uint64_t min_ns);
/* How long worker i has not moved (as of the last note_progress). */
uint64_t stk__pool_idle_ns(const stk__pool_t *p, uint32_t i, uint64_t now);
/* "worker 1 (pid 123, stopped)": its number, pid and the kernel's word
 * for its state. */
void stk__pool_describe(const stk__pool_t *p, uint32_t i, char *buf, size_t cap);

#endif
