/* SPDX-License-Identifier: MIT */
/* The communicator's insides, shared by the front (comm.c), the backend
 * registration (backends.c) and the backends (single, tcp, mpi, nccl): one
 * interface table per backend, ggml-style, and the work items that the
 * communicator's thread (or a backend's stream) runs in order. */
#ifndef STOKER_DIST_COMM_IMPL_H
#define STOKER_DIST_COMM_IMPL_H

#include "internal.h"
#include "stoker/dist.h"
#include "store.h"

#include <pthread.h>

#define STK__COMM_MSG_MAX 1024

typedef enum stk__coll {
    STK__COLL_ALLREDUCE = 0,
    STK__COLL_BROADCAST,
    STK__COLL_ALLGATHER,
    STK__COLL_BARRIER
} stk__coll_t;

struct stk_comm_work {
    stk_comm_t *c;
    stk__coll_t kind;
    void *buf;             /* allreduce/broadcast: in place; allgather: recv */
    const void *send;      /* allgather */
    size_t count;
    stk_dtype_t dtype;
    stk_reduce_op_t op;
    int root;
    uint64_t seq;          /* 1, 2, ... in start order */
    /* Written by whoever runs the operation, read under c->mu. */
    int done;
    int status;
    char msg[STK__COMM_MSG_MAX];
    double t_submit, t_start, t_end;
    void *be;              /* a backend's per-operation state (NCCL events) */
    struct stk_comm_work *next;
};

/* One backend. A backend either runs blocking calls (threaded = 1: run()
 * is called on the communicator's own thread, one operation at a time, in
 * order) or enqueues work on a device (threaded = 0: launch() on the
 * caller's thread, then poll() until done). */
typedef struct stk__comm_iface {
    const char *name;
    int threaded;
    /* 1: run() returns STK_ERANK by itself when a peer makes no progress
     * for c->timeout_s, naming the peer; the front then waits without a
     * limit of its own. 0: the front times the operation out (and calls
     * abort). */
    int own_timeout;
    /* Joins the job on the caller's thread: sets c->rank, size,
     * local_rank, local_size and *ctx. Errors with context. */
    int (*open)(stk_comm_t *c, void **ctx);
    /* Leaves the job and frees ctx. broken: a timeout or a dead peer
     * happened, so no call may wait on peers again. */
    void (*close)(stk_comm_t *c, void *ctx, int broken);
    /* threaded: performs w (blocking). Returns 0 or an error with context
     * (on the comm thread: the front copies the message into w->msg). */
    int (*run)(stk_comm_t *c, void *ctx, stk_comm_work_t *w);
    /* not threaded: enqueues w; poll sets *done when it finished. */
    int (*launch)(stk_comm_t *c, void *ctx, stk_comm_work_t *w);
    int (*poll)(stk_comm_t *c, void *ctx, stk_comm_work_t *w, int *done);
    /* Optional: frees w->be. */
    void (*release)(stk_comm_t *c, void *ctx, stk_comm_work_t *w);
    /* Optional: after the front timed an operation out (own_timeout 0),
     * stop what can be stopped (ncclCommAbort). */
    void (*abort)(stk_comm_t *c, void *ctx);
} stk__comm_iface_t;

struct stk_comm {
    const stk__comm_iface_t *iface;
    void *ctx;
    stk_comm_backend_t backend;
    stk_comm_config_t cfg;
    stk_dist_env_t env;
    int rank, size, local_rank, local_size;
    double timeout_s;
    void *stream;
    stk__store_t *store;   /* TCP, and NCCL without MPI: rank 0 hosts it */
    uint32_t generation;   /* this process's communicators: 1, 2, ... */

    pthread_mutex_t mu;
    pthread_cond_t cv_work;  /* the thread: new work or stop */
    pthread_cond_t cv_done;  /* waiters: an operation finished */
    pthread_t thread;
    int thread_started, stop;
    stk_comm_work_t *head, *tail; /* queued, not yet taken by the thread */
    stk_comm_work_t *running;     /* taken by the thread (threaded) */
    uint64_t seq;
    int broken;                   /* STK_ERANK (or other) once it failed */
    char broken_msg[STK__COMM_MSG_MAX];
    stk_comm_stats_t stats;
};

/* Backends (their files). */
extern const stk__comm_iface_t stk__single_iface;
extern const stk__comm_iface_t stk__tcp_iface;
extern const stk__comm_iface_t stk__mpi_iface;
extern const stk__comm_iface_t stk__nccl_iface;

/* backends.c (the one file that knows which backends are built): resolves
 * AUTO, refuses a backend that is not built, and opens it. */
int stk__comm_open_backend(stk_comm_t *c);
/* backends.c: len bytes from rank 0's buf to every rank's, before the
 * communicator itself works (the NCCL unique id): through MPI when the job
 * runs under an MPI launcher and MPI is built, else through the store
 * (opened on demand at MASTER_ADDR:MASTER_PORT) under key. */
int stk__comm_bootstrap_bcast(stk_comm_t *c, void *buf, size_t len, const char *key);
/* store.c callers: opens c->store (rank 0 serves) at the env's address. */
int stk__comm_open_store(stk_comm_t *c);

/* "allreduce", "broadcast", ... */
const char *stk__coll_name(stk__coll_t k);
/* "allreduce (1048576 x f32, sum)": what a message calls the operation. */
const char *stk__work_what(const stk_comm_work_t *w, char *buf, size_t cap);
/* Bytes of the operation's own buffer (per rank). */
size_t stk__work_bytes(const stk_comm_work_t *w);

/* A blocking wait that also gives the operation's start and end times
 * (seconds, CLOCK_MONOTONIC) from whoever ran it. */
int stk__comm_wait_times(stk_comm_work_t **work, double *t_start, double *t_end);

/* Element-wise dst = dst op src for host reductions (TCP, and AVG/MAX/MIN
 * fix-ups). Returns -ENOTSUP for a dtype it does not reduce. */
int stk__reduce_host(void *dst, const void *src, size_t count, stk_dtype_t dt, stk_reduce_op_t op);
/* dst /= n for AVG after a SUM. */
void stk__divide_host(void *buf, size_t count, stk_dtype_t dt, int n);
/* 1 when the host backends reduce dt. */
int stk__host_reduces(stk_dtype_t dt);

#endif
