/* SPDX-License-Identifier: MIT */
/* Host collectives over MPI (Debian's OpenMPI): the CPU path for jobs that
 * mpirun or srun started. Calls are blocking and run on the communicator's
 * thread, so that a bucket's all-reduce overlaps backward; MPI is started
 * here when the program did not start it, and finalized at exit unless a
 * collective is stuck in it (then mpirun sees the rank leave and stops the
 * job). Built only with -Dmpi; registered by backends.c. */
#define _GNU_SOURCE
#include "comm_impl.h"

#include <mpi.h>

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct mpi_ctx {
    MPI_Comm comm;
} mpi_ctx_t;

/* Process-wide MPI state: started once, finalized once at exit. */
static pthread_mutex_t mpi_mu = PTHREAD_MUTEX_INITIALIZER;
static int mpi_we_started;  /* we called MPI_Init_thread */
static int mpi_unsafe;      /* a call is stuck: never call MPI again */
static int mpi_serialize;   /* thread level SERIALIZED: one call at a time */
static pid_t mpi_pid;       /* forked children must not finalize */

static void mpi_finalize_at_exit(void)
{
    int fin = 0;
    if (getpid() != mpi_pid || __atomic_load_n(&mpi_unsafe, __ATOMIC_ACQUIRE))
        return;
    MPI_Finalized(&fin);
    if (!fin)
        MPI_Finalize();
}

static int mpi_fail(int err, const char *call, const stk_comm_t *c, const stk_comm_work_t *w)
{
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    char what[160];
    if (MPI_Error_string(err, text, &len) != MPI_SUCCESS)
        snprintf(text, sizeof(text), "MPI error %d", err);
    return stk__error(STK_EBACKEND, "%s on rank %d of %d (mpi): %s: %s",
                      w ? stk__work_what(w, what, sizeof(what)) : "set-up", c->rank, c->size, call, text);
}

static int mpi_start(void)
{
    int init = 0, fin = 0, provided = 0;
    MPI_Finalized(&fin);
    if (fin)
        return stk__error(STK_ECONFIG, "communicator (mpi): MPI was already finalized in this process "
                          "(it cannot start twice)");
    MPI_Initialized(&init);
    if (!init) {
        int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided);
        if (rc != MPI_SUCCESS)
            return stk__error(STK_EBACKEND, "communicator (mpi): MPI_Init_thread failed (%d)", rc);
        mpi_we_started = 1;
        mpi_pid = getpid();
        atexit(mpi_finalize_at_exit);
    } else {
        MPI_Query_thread(&provided);
    }
    if (provided < MPI_THREAD_SERIALIZED)
        return stk__error(STK_ECONFIG, "communicator (mpi): MPI runs at thread level %d; Stoker calls MPI from "
                          "its communicator's thread and needs MPI_THREAD_SERIALIZED or more (start MPI with "
                          "MPI_Init_thread, or let Stoker start it)", provided);
    mpi_serialize = provided < MPI_THREAD_MULTIPLE;
    return 0;
}

static int mpi_open(stk_comm_t *c, void **ctx)
{
    /* A singleton MPI process cannot meet ranks that mpirun did not start. */
    if (c->env.launcher == STK_LAUNCHER_TORCHRUN && c->env.world_size > 1)
        return stk__error(STK_ECONFIG, "communicator: rank %d of %d was started by torchrun-style variables "
                          "(stoker-launch), not by an MPI launcher: the mpi backend needs mpirun or srun; use the "
                          "tcp backend on CPUs (STK_COMM_BACKEND=tcp) or start the job with mpirun",
                          c->env.rank, c->env.world_size);
    pthread_mutex_lock(&mpi_mu);
    int rc = mpi_start();
    pthread_mutex_unlock(&mpi_mu);
    if (rc < 0)
        return rc;
    mpi_ctx_t *m = calloc(1, sizeof(*m));
    if (!m)
        return stk__error(-ENOMEM, "communicator (mpi): out of memory");
    int e = MPI_Comm_dup(MPI_COMM_WORLD, &m->comm);
    if (e != MPI_SUCCESS) {
        free(m);
        return mpi_fail(e, "MPI_Comm_dup", c, NULL);
    }
    MPI_Comm_set_errhandler(m->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(m->comm, &c->rank);
    MPI_Comm_size(m->comm, &c->size);
    MPI_Comm node;
    e = MPI_Comm_split_type(m->comm, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &node);
    if (e == MPI_SUCCESS) {
        MPI_Comm_rank(node, &c->local_rank);
        MPI_Comm_size(node, &c->local_size);
        MPI_Comm_free(&node);
    } else {
        c->local_rank = c->env.local_rank;
        c->local_size = c->env.local_world_size;
    }
    if (c->env.launcher != STK_LAUNCHER_NONE && (c->size != c->env.world_size || c->rank != c->env.rank)) {
        int r = c->rank, n = c->size;
        MPI_Comm_free(&m->comm);
        free(m);
        return stk__error(STK_ECONFIG, "communicator (mpi): MPI says rank %d of %d, the %s launcher's variables "
                          "say rank %d of %d", r, n, stk_dist_launcher_name(c->env.launcher), c->env.rank,
                          c->env.world_size);
    }
    *ctx = m;
    return 0;
}

static void mpi_close(stk_comm_t *c, void *ctx, int broken)
{
    (void)c;
    mpi_ctx_t *m = ctx;
    if (broken) {
        /* A collective may still sit inside MPI: touch nothing, and let the
         * process leave without MPI_Finalize (mpirun then ends the job). */
        __atomic_store_n(&mpi_unsafe, 1, __ATOMIC_RELEASE);
        free(m);
        return;
    }
    if (m) {
        MPI_Comm_free(&m->comm);
        free(m);
    }
}

static MPI_Datatype mpi_type(stk_dtype_t dt)
{
    switch (dt) {
    case STK_DTYPE_U8: return MPI_UINT8_T;
    case STK_DTYPE_I8: return MPI_INT8_T;
    case STK_DTYPE_I32: return MPI_INT32_T;
    case STK_DTYPE_I64: return MPI_INT64_T;
    case STK_DTYPE_F16:
    case STK_DTYPE_BF16: return MPI_UINT16_T;
    case STK_DTYPE_F32: return MPI_FLOAT;
    default: return MPI_DATATYPE_NULL;
    }
}

static int mpi_run_locked(stk_comm_t *c, mpi_ctx_t *m, stk_comm_work_t *w)
{
    MPI_Datatype t = mpi_type(w->dtype);
    size_t es = stk_dtype_size(w->dtype);
    /* MPI counts are int: big buffers go in pieces. */
    const size_t piece = (size_t)1 << 30;
    int e = MPI_SUCCESS;
    switch (w->kind) {
    case STK__COLL_ALLREDUCE: {
        MPI_Op op = w->op == STK_REDUCE_MAX ? MPI_MAX : w->op == STK_REDUCE_MIN ? MPI_MIN : MPI_SUM;
        for (size_t off = 0; off < w->count && e == MPI_SUCCESS; off += piece) {
            size_t n = w->count - off < piece ? w->count - off : piece;
            e = MPI_Allreduce(MPI_IN_PLACE, (char *)w->buf + off * es, (int)n, t, op, m->comm);
        }
        if (e != MPI_SUCCESS)
            return mpi_fail(e, "MPI_Allreduce", c, w);
        if (w->op == STK_REDUCE_AVG)
            stk__divide_host(w->buf, w->count, w->dtype, c->size);
        return 0;
    }
    case STK__COLL_BROADCAST:
        for (size_t off = 0; off < w->count && e == MPI_SUCCESS; off += piece) {
            size_t n = w->count - off < piece ? w->count - off : piece;
            e = MPI_Bcast((char *)w->buf + off * es, (int)n, t, w->root, m->comm);
        }
        return e == MPI_SUCCESS ? 0 : mpi_fail(e, "MPI_Bcast", c, w);
    case STK__COLL_ALLGATHER: {
        if (w->count > INT_MAX)
            return stk__error(-ENOTSUP, "allgather (mpi): %zu elements per rank is over MPI's int count", w->count);
        const void *send = w->send == (char *)w->buf + (size_t)c->rank * stk__work_bytes(w) ? MPI_IN_PLACE : w->send;
        e = MPI_Allgather(send, (int)w->count, t, w->buf, (int)w->count, t, m->comm);
        return e == MPI_SUCCESS ? 0 : mpi_fail(e, "MPI_Allgather", c, w);
    }
    case STK__COLL_BARRIER:
        e = MPI_Barrier(m->comm);
        return e == MPI_SUCCESS ? 0 : mpi_fail(e, "MPI_Barrier", c, w);
    }
    return 0;
}

static int mpi_run(stk_comm_t *c, void *ctx, stk_comm_work_t *w)
{
    if (!mpi_serialize)
        return mpi_run_locked(c, ctx, w);
    pthread_mutex_lock(&mpi_mu);
    int rc = mpi_run_locked(c, ctx, w);
    pthread_mutex_unlock(&mpi_mu);
    return rc;
}

const stk__comm_iface_t stk__mpi_iface = {
    .name = "mpi",
    .threaded = 1,
    .own_timeout = 0,
    .open = mpi_open,
    .close = mpi_close,
    .run = mpi_run,
};

/* For backends.c: len bytes from rank 0 to all, over MPI_COMM_WORLD
 * (starts MPI if needed). Used to hand NCCL its unique id. */
int stk__mpi_bootstrap_bcast(stk_comm_t *c, void *buf, size_t len);
int stk__mpi_bootstrap_bcast(stk_comm_t *c, void *buf, size_t len)
{
    pthread_mutex_lock(&mpi_mu);
    int rc = mpi_start();
    pthread_mutex_unlock(&mpi_mu);
    if (rc < 0)
        return rc;
    int e = MPI_Bcast(buf, (int)len, MPI_BYTE, 0, MPI_COMM_WORLD);
    return e == MPI_SUCCESS ? 0 : mpi_fail(e, "MPI_Bcast (NCCL id)", c, NULL);
}
