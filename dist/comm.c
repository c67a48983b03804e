/* SPDX-License-Identifier: MIT */
/* The communicator's front: argument checks, the queue of operations and
 * the thread that runs them one by one for blocking backends (MPI, TCP),
 * handles to wait on, and the collective timeout that turns a silent peer
 * into an error naming the collective and the rank. */
#define _GNU_SOURCE
#include "comm_impl.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *stk__coll_name(stk__coll_t k)
{
    switch (k) {
    case STK__COLL_ALLREDUCE: return "allreduce";
    case STK__COLL_BROADCAST: return "broadcast";
    case STK__COLL_ALLGATHER: return "allgather";
    case STK__COLL_BARRIER: return "barrier";
    }
    return "collective";
}

static const char *op_name(stk_reduce_op_t op)
{
    switch (op) {
    case STK_REDUCE_SUM: return "sum";
    case STK_REDUCE_AVG: return "avg";
    case STK_REDUCE_MAX: return "max";
    case STK_REDUCE_MIN: return "min";
    }
    return "?";
}

const char *stk__work_what(const stk_comm_work_t *w, char *buf, size_t cap)
{
    switch (w->kind) {
    case STK__COLL_ALLREDUCE:
        snprintf(buf, cap, "allreduce #%llu (%zu x %s, %s)", (unsigned long long)w->seq, w->count,
                 stk_dtype_name(w->dtype), op_name(w->op));
        break;
    case STK__COLL_BROADCAST:
        snprintf(buf, cap, "broadcast #%llu (%zu x %s from rank %d)", (unsigned long long)w->seq, w->count,
                 stk_dtype_name(w->dtype), w->root);
        break;
    case STK__COLL_ALLGATHER:
        snprintf(buf, cap, "allgather #%llu (%zu x %s per rank)", (unsigned long long)w->seq, w->count,
                 stk_dtype_name(w->dtype));
        break;
    case STK__COLL_BARRIER:
        snprintf(buf, cap, "barrier #%llu", (unsigned long long)w->seq);
        break;
    }
    return buf;
}

size_t stk__work_bytes(const stk_comm_work_t *w)
{
    return w->count * stk_dtype_size(w->dtype);
}

/* ----------------------------------------------------------------- config */

void stk_comm_config_default(stk_comm_config_t *cfg)
{
    if (!cfg)
        return;
    memset(cfg, 0, sizeof(*cfg));
    cfg->backend = STK_COMM_AUTO;
    cfg->device = STK_DEVICE_CPU;
    cfg->cuda_device = -1;
    cfg->timeout_s = 300.0;
    const char *t = getenv("STK_DIST_TIMEOUT");
    if (t) {
        char *end;
        double v = strtod(t, &end);
        if (end != t && *end == '\0' && v > 0 && isfinite(v))
            cfg->timeout_s = v;
    }
}

const char *stk_comm_backend_name(stk_comm_backend_t b)
{
    switch (b) {
    case STK_COMM_AUTO: return "auto";
    case STK_COMM_SINGLE: return "single";
    case STK_COMM_MPI: return "mpi";
    case STK_COMM_TCP: return "tcp";
    case STK_COMM_NCCL: return "nccl";
    }
    return "invalid";
}

int stk_comm_backend_from_name(const char *name)
{
    for (int b = STK_COMM_AUTO; b <= STK_COMM_NCCL; b++)
        if (name && strcmp(name, stk_comm_backend_name((stk_comm_backend_t)b)) == 0)
            return b;
    return -1;
}

/* ----------------------------------------------------------------- thread */

/* Operations stuck in a backend call that will never return (MPI after a
 * timeout) keep their communicator: it stays reachable from here until
 * the process exits, so that the stuck thread never touches freed memory. */
static pthread_mutex_t graveyard_mu = PTHREAD_MUTEX_INITIALIZER;
static stk_comm_t **graveyard;
static size_t graveyard_n;

static void bury(stk_comm_t *c)
{
    pthread_mutex_lock(&graveyard_mu);
    stk_comm_t **g = realloc(graveyard, (graveyard_n + 1) * sizeof(*g));
    if (g) {
        graveyard = g;
        graveyard[graveyard_n++] = c;
    }
    pthread_mutex_unlock(&graveyard_mu);
}

/* Called with c->mu held. */
static void mark_broken(stk_comm_t *c, const char *msg)
{
    if (!c->broken) {
        c->broken = 1;
        snprintf(c->broken_msg, sizeof(c->broken_msg), "%s", msg);
    }
}

static void count_done(stk_comm_t *c, const stk_comm_work_t *w)
{
    switch (w->kind) {
    case STK__COLL_ALLREDUCE: c->stats.allreduce++; break;
    case STK__COLL_BROADCAST: c->stats.broadcast++; break;
    case STK__COLL_ALLGATHER: c->stats.allgather++; break;
    case STK__COLL_BARRIER: c->stats.barrier++; break;
    }
    c->stats.bytes += stk__work_bytes(w);
    c->stats.busy_s += w->t_end - w->t_start;
}

static void *comm_thread(void *arg)
{
    stk_comm_t *c = arg;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->head && !c->stop)
            pthread_cond_wait(&c->cv_work, &c->mu);
        if (!c->head)
            break;
        stk_comm_work_t *w = c->head;
        c->head = w->next;
        if (!c->head)
            c->tail = NULL;
        c->running = w;
        w->t_start = stk__now_s();
        int broken = c->broken;
        pthread_mutex_unlock(&c->mu);

        int rc;
        if (broken) {
            rc = STK_ERANK;
            snprintf(w->msg, sizeof(w->msg), "%s", c->broken_msg);
        } else {
            stk_error_clear();
            rc = c->iface->run(c, c->ctx, w);
            if (rc < 0)
                snprintf(w->msg, sizeof(w->msg), "%s", stk_error_message());
        }
        w->t_end = stk__now_s();

        pthread_mutex_lock(&c->mu);
        w->status = rc;
        w->done = 1;
        c->running = NULL;
        if (rc == 0)
            count_done(c, w);
        else if (rc == STK_ERANK)
            mark_broken(c, w->msg);
        pthread_cond_broadcast(&c->cv_done);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* ------------------------------------------------------------ life cycle */

static uint32_t generations;

int stk__comm_open_store(stk_comm_t *c)
{
    if (c->store)
        return 0;
    if (!c->env.master_addr[0] || !c->env.master_port)
        return stk__error(STK_ECONFIG, "communicator (%s): rank %d of %d needs MASTER_ADDR and MASTER_PORT to meet "
                          "its peers (stoker-launch and torchrun set them; under srun, set them or use MPI)",
                          stk_comm_backend_name(c->backend), c->env.rank, c->env.world_size);
    stk__store_config_t sc = {
        .addr = c->env.master_addr,
        .port = c->env.master_port,
        .serve = c->env.rank == 0,
        .rank = c->env.rank,
        .timeout_s = c->timeout_s,
        .generation = c->generation,
    };
    return stk__store_open(&c->store, &sc);
}

int stk_comm_create(stk_comm_t **out, const stk_comm_config_t *cfg)
{
    if (!out)
        return stk__error(-EINVAL, "stk_comm_create: NULL out");
    *out = NULL;
    stk_comm_config_t def;
    if (!cfg) {
        stk_comm_config_default(&def);
        cfg = &def;
    }
    if (!(cfg->timeout_s > 0) || !isfinite(cfg->timeout_s))
        return stk__error(STK_ECONFIG, "communicator: timeout_s must be > 0 (got %g)", cfg->timeout_s);
    if (cfg->backend < STK_COMM_AUTO || cfg->backend > STK_COMM_NCCL)
        return stk__error(STK_ECONFIG, "communicator: unknown backend %d", (int)cfg->backend);
    stk_comm_t *c = calloc(1, sizeof(*c));
    if (!c)
        return stk__error(-ENOMEM, "communicator: out of memory");
    c->cfg = *cfg;
    c->cfg.env = NULL;
    c->timeout_s = cfg->timeout_s;
    c->generation = __atomic_add_fetch(&generations, 1, __ATOMIC_RELAXED);
    int rc = 0;
    if (cfg->env)
        c->env = *cfg->env;
    else
        rc = stk_dist_env_detect(&c->env);
    if (rc < 0) {
        free(c);
        return rc;
    }
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv_work, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cv_done, &ca);
    pthread_condattr_destroy(&ca);

    rc = stk__comm_open_backend(c);
    if (rc < 0)
        goto fail;
    if (c->iface->threaded) {
        rc = pthread_create(&c->thread, NULL, comm_thread, c);
        if (rc != 0) {
            rc = stk__error(-rc, "communicator: cannot start its thread: %s", strerror(rc));
            c->iface->close(c, c->ctx, 0);
            goto fail;
        }
        c->thread_started = 1;
    }
    *out = c;
    return 0;
fail:
    stk__store_close(&c->store);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv_work);
    pthread_cond_destroy(&c->cv_done);
    free(c);
    return rc;
}

void stk_comm_destroy(stk_comm_t **pc)
{
    if (!pc || !*pc)
        return;
    stk_comm_t *c = *pc;
    *pc = NULL;
    int stuck = 0;
    if (c->thread_started) {
        pthread_mutex_lock(&c->mu);
        c->stop = 1;
        pthread_cond_broadcast(&c->cv_work);
        /* Queued work still runs (or fails at once when broken); only an
         * operation stuck in the backend past the timeout is left behind. */
        while ((c->head || c->running) && !stuck) {
            if (c->broken && c->running && !c->iface->own_timeout) {
                stuck = 1;
                break;
            }
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_sec += 1;
            pthread_cond_timedwait(&c->cv_done, &c->mu, &ts);
            if (c->running && !c->iface->own_timeout && stk__now_s() - c->running->t_start > c->timeout_s) {
                char what[160];
                char msg[STK__COMM_MSG_MAX];
                snprintf(msg, sizeof(msg), "%s on rank %d of %d stuck at shutdown",
                         stk__work_what(c->running, what, sizeof(what)), c->rank, c->size);
                mark_broken(c, msg);
            }
        }
        pthread_mutex_unlock(&c->mu);
        if (!stuck)
            pthread_join(c->thread, NULL);
        else
            pthread_detach(c->thread);
    }
    c->iface->close(c, c->ctx, c->broken || stuck);
    stk__store_close(&c->store);
    if (stuck) {
        bury(c);
        return;
    }
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv_work);
    pthread_cond_destroy(&c->cv_done);
    free(c);
}

int stk_comm_rank(const stk_comm_t *c) { return c ? c->rank : 0; }
int stk_comm_size(const stk_comm_t *c) { return c ? c->size : 1; }
int stk_comm_local_rank(const stk_comm_t *c) { return c ? c->local_rank : 0; }
int stk_comm_local_size(const stk_comm_t *c) { return c ? c->local_size : 1; }
stk_comm_backend_t stk_comm_backend(const stk_comm_t *c) { return c ? c->backend : STK_COMM_AUTO; }

int stk_comm_set_timeout(stk_comm_t *c, double seconds)
{
    if (!c || !(seconds > 0) || !isfinite(seconds))
        return stk__error(-EINVAL, "stk_comm_set_timeout: needs a communicator and seconds > 0");
    pthread_mutex_lock(&c->mu);
    c->timeout_s = seconds;
    pthread_mutex_unlock(&c->mu);
    return 0;
}

int stk_comm_set_stream(stk_comm_t *c, void *stream)
{
    if (!c)
        return stk__error(-EINVAL, "stk_comm_set_stream: NULL communicator");
    c->stream = stream;
    return 0;
}

void stk_comm_stats(const stk_comm_t *c, stk_comm_stats_t *st)
{
    if (!st)
        return;
    memset(st, 0, sizeof(*st));
    if (!c)
        return;
    pthread_mutex_lock((pthread_mutex_t *)&c->mu);
    *st = c->stats;
    pthread_mutex_unlock((pthread_mutex_t *)&c->mu);
}

/* ------------------------------------------------------------ operations */

static int start(stk_comm_t *c, stk_comm_work_t *tmpl, stk_comm_work_t **out)
{
    char what[160];
    if (out)
        *out = NULL;
    if (!c || !out)
        return stk__error(-EINVAL, "%s: NULL communicator or handle", stk__coll_name(tmpl->kind));
    if (tmpl->kind != STK__COLL_BARRIER) {
        if (stk_dtype_size(tmpl->dtype) == 0)
            return stk__error(-EINVAL, "%s: invalid dtype %d", stk__coll_name(tmpl->kind), (int)tmpl->dtype);
        if (tmpl->count && (!tmpl->buf || (tmpl->kind == STK__COLL_ALLGATHER && !tmpl->send)))
            return stk__error(-EINVAL, "%s: NULL buffer for %zu elements", stk__coll_name(tmpl->kind), tmpl->count);
        if (tmpl->count > SIZE_MAX / 8 / (size_t)c->size)
            return stk__error(-EINVAL, "%s: %zu elements is too many", stk__coll_name(tmpl->kind), tmpl->count);
    }
    if (tmpl->kind == STK__COLL_ALLREDUCE) {
        if (tmpl->op < STK_REDUCE_SUM || tmpl->op > STK_REDUCE_MIN)
            return stk__error(-EINVAL, "allreduce: unknown reduction %d", (int)tmpl->op);
        int ok = stk__host_reduces(tmpl->dtype) ||
                 (c->backend == STK_COMM_NCCL && (tmpl->dtype == STK_DTYPE_F16 || tmpl->dtype == STK_DTYPE_BF16));
        if (!ok)
            return stk__error(-ENOTSUP, "allreduce: the %s backend does not reduce %s", stk_comm_backend_name(c->backend),
                              stk_dtype_name(tmpl->dtype));
    }
    if (tmpl->kind == STK__COLL_BROADCAST && (tmpl->root < 0 || tmpl->root >= c->size))
        return stk__error(-EINVAL, "broadcast: root %d is not a rank of a world of %d", tmpl->root, c->size);

    stk_comm_work_t *w = malloc(sizeof(*w));
    if (!w)
        return stk__error(-ENOMEM, "%s: out of memory", stk__coll_name(tmpl->kind));
    *w = *tmpl;
    w->c = c;
    w->next = NULL;
    w->done = 0;
    w->status = 0;
    w->msg[0] = '\0';
    w->be = NULL;
    w->t_submit = stk__now_s();
    w->t_start = w->t_end = 0;

    pthread_mutex_lock(&c->mu);
    w->seq = ++c->seq;
    if (c->broken) {
        int rc = stk__error(STK_ERANK, "%s on rank %d: the communicator failed earlier: %s",
                            stk__work_what(w, what, sizeof(what)), c->rank, c->broken_msg);
        pthread_mutex_unlock(&c->mu);
        free(w);
        return rc;
    }
    if (c->iface->threaded) {
        if (c->tail)
            c->tail->next = w;
        else
            c->head = w;
        c->tail = w;
        pthread_cond_signal(&c->cv_work);
        pthread_mutex_unlock(&c->mu);
        *out = w;
        return 0;
    }
    pthread_mutex_unlock(&c->mu);
    w->t_start = stk__now_s();
    int rc = c->iface->launch(c, c->ctx, w);
    if (rc < 0) {
        if (c->iface->release)
            c->iface->release(c, c->ctx, w);
        if (rc == STK_ERANK) {
            pthread_mutex_lock(&c->mu);
            mark_broken(c, stk_error_message());
            pthread_mutex_unlock(&c->mu);
        }
        free(w);
        return rc;
    }
    *out = w;
    return 0;
}

static void free_work(stk_comm_work_t *w)
{
    if (w->be && w->c->iface->release)
        w->c->iface->release(w->c, w->c->ctx, w);
    free(w);
}

/* Threaded backends: waits under c->mu for the thread to finish w. */
static int wait_threaded(stk_comm_t *c, stk_comm_work_t *w, double *t_start, double *t_end)
{
    char what[160];
    pthread_mutex_lock(&c->mu);
    while (!w->done) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += 200 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&c->cv_done, &c->mu, &ts);
        if (w->done)
            break;
        /* The front times out only what the backend does not time itself,
         * and only the operation running now (earlier ones time out first). */
        if (!c->iface->own_timeout && c->running == w && stk__now_s() - w->t_start > c->timeout_s) {
            int rc = stk__error(STK_ERANK,
                                "%s on rank %d of %d (%s) made no progress for %.0f s: a peer rank died, stopped "
                                "or took another path (collective timeout; STK_DIST_TIMEOUT sets it)",
                                stk__work_what(w, what, sizeof(what)), c->rank, c->size, c->iface->name,
                                c->timeout_s);
            mark_broken(c, stk_error_message());
            pthread_mutex_unlock(&c->mu);
            if (c->iface->abort)
                c->iface->abort(c, c->ctx);
            /* The thread still holds w: it stays with the communicator,
             * which destroy buries. */
            return rc;
        }
    }
    if (t_start)
        *t_start = w->t_start;
    if (t_end)
        *t_end = w->t_end;
    pthread_mutex_unlock(&c->mu);
    int rc = w->status;
    if (rc < 0)
        stk__error(rc, "%s", w->msg);
    free_work(w);
    return rc;
}

/* Device backends: polls the backend, with the timeout counted from the
 * start of the wait. */
static int wait_device(stk_comm_t *c, stk_comm_work_t *w, double *t_start, double *t_end)
{
    char what[160];
    double t0 = stk__now_s();
    double pause = 20e-6;
    for (;;) {
        int done = 0;
        int rc = c->iface->poll(c, c->ctx, w, &done);
        if (rc < 0) {
            pthread_mutex_lock(&c->mu);
            if (rc == STK_ERANK)
                mark_broken(c, stk_error_message());
            pthread_mutex_unlock(&c->mu);
            free_work(w);
            return rc;
        }
        if (done)
            break;
        if (stk__now_s() - t0 > c->timeout_s) {
            rc = stk__error(STK_ERANK,
                            "%s on rank %d of %d (%s) made no progress for %.0f s: a peer rank died, stopped or "
                            "took another path (collective timeout; STK_DIST_TIMEOUT sets it)",
                            stk__work_what(w, what, sizeof(what)), c->rank, c->size, c->iface->name, c->timeout_s);
            pthread_mutex_lock(&c->mu);
            mark_broken(c, stk_error_message());
            pthread_mutex_unlock(&c->mu);
            if (c->iface->abort)
                c->iface->abort(c, c->ctx);
            free_work(w);
            return rc;
        }
        struct timespec ts = {.tv_nsec = (long)(pause * 1e9)};
        nanosleep(&ts, NULL);
        if (pause < 1e-3)
            pause *= 2;
    }
    w->t_end = stk__now_s();
    if (t_start)
        *t_start = w->t_start;
    if (t_end)
        *t_end = w->t_end;
    pthread_mutex_lock(&c->mu);
    count_done(c, w);
    pthread_mutex_unlock(&c->mu);
    free_work(w);
    return 0;
}

int stk__comm_wait_times(stk_comm_work_t **work, double *t_start, double *t_end)
{
    if (!work || !*work)
        return 0;
    stk_comm_work_t *w = *work;
    *work = NULL;
    stk_comm_t *c = w->c;
    return c->iface->threaded ? wait_threaded(c, w, t_start, t_end) : wait_device(c, w, t_start, t_end);
}

int stk_comm_wait(stk_comm_work_t **work)
{
    return stk__comm_wait_times(work, NULL, NULL);
}

int stk_comm_test(stk_comm_work_t *w, int *done)
{
    if (!w || !done)
        return stk__error(-EINVAL, "stk_comm_test: NULL handle or flag");
    stk_comm_t *c = w->c;
    if (c->iface->threaded) {
        pthread_mutex_lock(&c->mu);
        *done = w->done;
        pthread_mutex_unlock(&c->mu);
        return 0;
    }
    int d = 0;
    int rc = c->iface->poll(c, c->ctx, w, &d);
    /* An error shows as done: the wait reports it. */
    *done = d || rc < 0;
    return 0;
}

int stk_comm_allreduce_async(stk_comm_t *c, void *buf, size_t count, stk_dtype_t dtype, stk_reduce_op_t op,
                             stk_comm_work_t **work)
{
    stk_comm_work_t t = {.kind = STK__COLL_ALLREDUCE, .buf = buf, .count = count, .dtype = dtype, .op = op};
    return start(c, &t, work);
}

int stk_comm_broadcast_async(stk_comm_t *c, void *buf, size_t count, stk_dtype_t dtype, int root,
                             stk_comm_work_t **work)
{
    stk_comm_work_t t = {.kind = STK__COLL_BROADCAST, .buf = buf, .count = count, .dtype = dtype, .root = root};
    return start(c, &t, work);
}

int stk_comm_allgather_async(stk_comm_t *c, const void *send, void *recv, size_t count, stk_dtype_t dtype,
                             stk_comm_work_t **work)
{
    stk_comm_work_t t = {.kind = STK__COLL_ALLGATHER, .buf = recv, .send = send, .count = count, .dtype = dtype};
    return start(c, &t, work);
}

int stk_comm_allreduce(stk_comm_t *c, void *buf, size_t count, stk_dtype_t dtype, stk_reduce_op_t op)
{
    stk_comm_work_t *w;
    int rc = stk_comm_allreduce_async(c, buf, count, dtype, op, &w);
    return rc < 0 ? rc : stk_comm_wait(&w);
}

int stk_comm_broadcast(stk_comm_t *c, void *buf, size_t count, stk_dtype_t dtype, int root)
{
    stk_comm_work_t *w;
    int rc = stk_comm_broadcast_async(c, buf, count, dtype, root, &w);
    return rc < 0 ? rc : stk_comm_wait(&w);
}

int stk_comm_allgather(stk_comm_t *c, const void *send, void *recv, size_t count, stk_dtype_t dtype)
{
    stk_comm_work_t *w;
    int rc = stk_comm_allgather_async(c, send, recv, count, dtype, &w);
    return rc < 0 ? rc : stk_comm_wait(&w);
}

int stk_comm_barrier(stk_comm_t *c)
{
    stk_comm_work_t t = {.kind = STK__COLL_BARRIER, .dtype = STK_DTYPE_U8};
    stk_comm_work_t *w;
    int rc = start(c, &t, &w);
    return rc < 0 ? rc : stk_comm_wait(&w);
}
