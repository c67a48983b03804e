/* SPDX-License-Identifier: MIT */
/* Stoker data-parallel training: where this process stands in the job
 * (bootstrap from mpirun, srun or torchrun-style variables), a communicator
 * (all-reduce, broadcast, all-gather, barrier; blocking or with a handle to
 * wait on) over NCCL, MPI, TCP or a world of one, and DDP: gradients
 * all-reduced in buckets while backward still runs. No vendor type appears
 * here: a CUDA stream crosses as void *. */
#ifndef STOKER_DIST_H
#define STOKER_DIST_H

#include "stoker/common.h"
#include "stoker/engine.h"

#ifdef __cplusplus
extern "C" {
#endif

/* -------------------------------------------------------------- bootstrap */

/* Who started this process, as read from its environment. */
typedef enum stk_dist_launcher {
    STK_LAUNCHER_NONE = 0, /* nothing: a world of one */
    STK_LAUNCHER_TORCHRUN, /* RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
                            * MASTER_ADDR, MASTER_PORT (stoker-launch, torchrun) */
    STK_LAUNCHER_MPI,      /* mpirun / mpiexec: OMPI_COMM_WORLD_* or PMI_* */
    STK_LAUNCHER_SLURM     /* srun: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID */
} stk_dist_launcher_t;

#define STK_DIST_ADDR_MAX 256

/* This process's place in the job. */
typedef struct stk_dist_env {
    stk_dist_launcher_t launcher;
    int rank, world_size;             /* 0 <= rank < world_size */
    int local_rank, local_world_size; /* on this node */
    char master_addr[STK_DIST_ADDR_MAX]; /* rank 0's host for the TCP store;
                                          * "" when the launcher gave none */
    int master_port;                  /* 0 when not given */
} stk_dist_env_t;

/* Reads the environment. Precedence, so that nested launchers resolve the
 * way they are nested: torchrun-style RANK/WORLD_SIZE (set by stoker-launch
 * or torchrun, possibly inside an srun step) first, then OpenMPI's
 * OMPI_COMM_WORLD_* (and MPICH's PMI_RANK/PMI_SIZE), then Slurm's
 * SLURM_PROCID/SLURM_NTASKS; nothing of these gives a world of one.
 * MASTER_ADDR/MASTER_PORT are read in every case (Slurm without them:
 * SLURM_LAUNCH_NODE_IPADDR). Returns 0, -EINVAL for NULL, or STK_ECONFIG
 * naming the variable that is malformed or inconsistent (RANK >= WORLD_SIZE,
 * RANK without WORLD_SIZE, a port outside 1..65535). Thread-safe as long as
 * nobody changes the environment meanwhile. */
STK_API int stk_dist_env_detect(stk_dist_env_t *env);
/* "none", "torchrun", "mpi", "slurm"; "invalid" otherwise. */
STK_API const char *stk_dist_launcher_name(stk_dist_launcher_t l);

/* ----------------------------------------------------------- communicator */

typedef enum stk_comm_backend {
    STK_COMM_AUTO = 0, /* chosen by stk_comm_create, see stk_comm_config_t */
    STK_COMM_SINGLE,   /* world of one: every collective is a local copy */
    STK_COMM_MPI,      /* host buffers over MPI (needs an MPI launcher) */
    STK_COMM_TCP,      /* host buffers over TCP rings, rendezvous through the
                        * store at MASTER_ADDR:MASTER_PORT (stoker-launch on
                        * CPUs, where no MPI launcher started the job) */
    STK_COMM_NCCL      /* CUDA device buffers over NCCL */
} stk_comm_backend_t;

typedef enum stk_reduce_op {
    STK_REDUCE_SUM = 0,
    STK_REDUCE_AVG, /* sum / world size (integers: truncated) */
    STK_REDUCE_MAX,
    STK_REDUCE_MIN
} stk_reduce_op_t;

typedef struct stk_comm_config {
    /* AUTO picks: NCCL when device is CUDA; otherwise SINGLE for a world of
     * one, MPI when an MPI launcher (or srun) started the job and Stoker was
     * built with MPI, else TCP. The environment variable STK_COMM_BACKEND
     * (single, mpi, tcp, nccl) overrides AUTO. */
    stk_comm_backend_t backend;
    stk_device_t device;    /* where the buffers live: CPU (default) or CUDA */
    int cuda_device;        /* NCCL: the GPU; -1 (default): STK_CUDA_DEVICE
                             * (stoker-launch sets it), else the local rank */
    /* A collective (or the set-up) that makes no progress for this long
     * fails with STK_ERANK naming the collective and the rank, and the
     * communicator is unusable afterwards. Default 300 s; the environment
     * variable STK_DIST_TIMEOUT (seconds) overrides the default. */
    double timeout_s;
    /* Where this process stands; NULL (default): stk_dist_env_detect().
     * Copied during create. */
    const stk_dist_env_t *env;
} stk_comm_config_t;

/* Fills cfg with the defaults documented above; NULL is ignored. */
STK_API void stk_comm_config_default(stk_comm_config_t *cfg);

typedef struct stk_comm stk_comm_t;

/* Joins the job: every rank must call it (a collective). MPI is started
 * here if nobody started it yet (and finalized at exit); NCCL receives its
 * id from rank 0 through MPI when the job runs under an MPI launcher and
 * Stoker has MPI, otherwise through the TCP store rank 0 hosts at
 * MASTER_ADDR:MASTER_PORT (other ranks retry until it is up, for at most
 * timeout_s). Returns 0 and *out, or: STK_ECONFIG (backend not built, or
 * unusable with this launcher, named), STK_ERANK (a peer never came, the
 * store at the named address could not be reached, or a peer reported
 * another world size), STK_EBACKEND (the library's own message kept),
 * STK_EDEVICE, -EADDRINUSE (rank 0 could not listen at the named address),
 * -ENOMEM. *out is NULL on failure. */
STK_API int stk_comm_create(stk_comm_t **out, const stk_comm_config_t *cfg);
/* Waits for outstanding operations (each for at most the timeout), leaves
 * the job and frees. After a timeout or a dead peer it does not wait on
 * the peers again. NULL-safe; sets *c to NULL. Not a collective, but MPI
 * users should destroy on every rank. */
STK_API void stk_comm_destroy(stk_comm_t **c);

/* This rank, the world size, the rank on this node and ranks per node. */
STK_API int stk_comm_rank(const stk_comm_t *c);
STK_API int stk_comm_size(const stk_comm_t *c);
STK_API int stk_comm_local_rank(const stk_comm_t *c);
STK_API int stk_comm_local_size(const stk_comm_t *c);
STK_API stk_comm_backend_t stk_comm_backend(const stk_comm_t *c);
/* "auto", "single", "mpi", "tcp", "nccl"; "invalid" otherwise. */
STK_API const char *stk_comm_backend_name(stk_comm_backend_t b);
/* Parses a name as printed above; -1 when unknown. */
STK_API int stk_comm_backend_from_name(const char *name);
/* Changes the collective timeout (seconds, > 0). 0 or -EINVAL. */
STK_API int stk_comm_set_timeout(stk_comm_t *c, double seconds);
/* NCCL: the CUDA stream (cudaStream_t as void *) whose earlier work a
 * collective waits for, through an event on the device, without a host
 * wait (the engine's compute stream; stk_ddp_create sets it for a CUDA
 * model). Work queued on it afterwards overlaps the collective; what
 * needs the result waits for it with stk_comm_wait. NULL (default): each
 * collective first waits for the whole device (correct with any producer,
 * no overlap with it). Other backends: ignored. 0 or -EINVAL. */
STK_API int stk_comm_set_stream(stk_comm_t *c, void *stream);

/* Collectives. Every rank must issue the same collectives in the same
 * order with the same counts and dtypes (as MPI and NCCL require).
 * Buffers: host memory for SINGLE, MPI and TCP; device memory for NCCL
 * (host memory works there too, staged through the device: meant for a few
 * metrics, not for gradients). Reductions take STK_DTYPE_F32, I32 and I64
 * on every backend (NCCL also F16 and BF16); broadcast and all-gather take
 * any dtype. count may be 0 (then nothing moves, but the call still counts
 * as the rank's collective).
 *
 * Errors, for every collective: -EINVAL (NULL buffer with count > 0, bad
 * dtype/op/root), -ENOTSUP (a reduction on a dtype the backend does not
 * reduce), STK_ERANK (a peer died, closed its connection or made no
 * progress for the timeout: the message names the collective, this rank
 * and, where known, the peer; the communicator then fails every later
 * call), STK_EBACKEND (the library's message kept), STK_EDEVICE.
 *
 * Thread safety: one thread at a time may issue operations on one
 * communicator (waiting on a handle may happen on another thread). */

/* Reduces count elements of buf across ranks, result in buf on every rank. */
STK_API int stk_comm_allreduce(stk_comm_t *c, void *buf, size_t count, stk_dtype_t dtype, stk_reduce_op_t op);
/* buf of rank root to buf of every rank. */
STK_API int stk_comm_broadcast(stk_comm_t *c, void *buf, size_t count, stk_dtype_t dtype, int root);
/* Each rank's send (count elements) to recv[rank * count ...] of every
 * rank; recv holds size * count elements. send may be recv + rank * count
 * (in place). */
STK_API int stk_comm_allgather(stk_comm_t *c, const void *send, void *recv, size_t count, stk_dtype_t dtype);
/* Returns when every rank has entered it. */
STK_API int stk_comm_barrier(stk_comm_t *c);

/* Asynchronous forms: start the operation and return at once with a handle
 * in *work; the buffers must stay untouched until the wait returns.
 * Operations of one communicator run in the order they were started.
 * SINGLE completes at once; MPI and TCP run on the communicator's own
 * thread; NCCL on its own stream. On a start error *work is NULL. */
typedef struct stk_comm_work stk_comm_work_t;
STK_API int stk_comm_allreduce_async(stk_comm_t *c, void *buf, size_t count, stk_dtype_t dtype,
                                     stk_reduce_op_t op, stk_comm_work_t **work);
STK_API int stk_comm_broadcast_async(stk_comm_t *c, void *buf, size_t count, stk_dtype_t dtype, int root,
                                     stk_comm_work_t **work);
STK_API int stk_comm_allgather_async(stk_comm_t *c, const void *send, void *recv, size_t count,
                                     stk_dtype_t dtype, stk_comm_work_t **work);
/* Waits for the operation (at most the timeout of no progress), frees the
 * handle and sets *work to NULL; returns the operation's status (codes as
 * above). NULL *work returns 0. */
STK_API int stk_comm_wait(stk_comm_work_t **work);
/* *done = 1 when the operation has finished (then stk_comm_wait returns at
 * once). Returns 0 or -EINVAL. */
STK_API int stk_comm_test(stk_comm_work_t *work, int *done);

/* Counters since create: what this rank's backend really ran. */
typedef struct stk_comm_stats {
    uint64_t allreduce, broadcast, allgather, barrier; /* operations run */
    uint64_t bytes;   /* buffer bytes handed to the collectives */
    double busy_s;    /* time the operations ran (start to end) */
} stk_comm_stats_t;
STK_API void stk_comm_stats(const stk_comm_t *c, stk_comm_stats_t *st);

/* ------------------------------------------------- data-parallel training */

typedef struct stk_ddp stk_ddp_t;

typedef struct stk_ddp_config {
    /* Gradient bucket capacity in bytes (PyTorch's bucket_cap_mb). Buckets
     * are contiguous slices of the gradient arena, filled with whole
     * parameter tensors in reverse layer order; a tensor larger than the
     * capacity gets a bucket of its own. Default 25 MiB. */
    size_t bucket_bytes;
    /* Capacity of bucket 0 (the last layers), smaller so that the first
     * reduction starts early in backward (PyTorch's first_bucket_bytes).
     * Default 1 MiB; 0: bucket_bytes. */
    size_t first_bucket_bytes;
    /* 1 (default): gradients averaged over ranks, so that a step equals one
     * process taking the global batch; 0: summed. */
    int average;
    /* 1 (default): start each bucket's all-reduce as soon as backward has
     * produced all its gradients; 0: all after backward (for measuring). */
    int overlap;
    /* 1 (default): at create, parameters and buffers go from rank 0 to all
     * ranks (after checking that every rank has the same layout). */
    int broadcast_params;
    /* Events kept for stk_ddp_events (0, default: none kept). */
    size_t trace_events;
    /* 1: synchronized batch normalization (PyTorch's SyncBatchNorm): in
     * training, each batchnorm layer normalizes with the mean and variance
     * of the global batch (every rank's samples), and its backward sums
     * its dx terms over the ranks, so that a step equals one process over
     * the global batch, batchnorm included, and the running statistics
     * stay equal on every rank. Costs one all-gather per batchnorm layer
     * in each training forward and one all-reduce in each backward,
     * gradient-accumulation micro-steps included, on this communicator
     * (every rank must run the same training forwards and backwards).
     * 0 (default): each rank normalizes with its own batch's statistics.
     * The CPU backend has it; create fails with STK_ECONFIG on a backend
     * that has not (CUDA), naming it. */
    int sync_bn;
} stk_ddp_config_t;

/* Fills cfg with the defaults above; NULL is ignored. */
STK_API void stk_ddp_config_default(stk_ddp_config_t *cfg);

/* Wraps model for data-parallel training over comm (both must outlive the
 * DDP; comm's device must be where the model's arenas are). A collective:
 * checks that every rank's model has the same parameter names, shapes and
 * offsets (STK_ECONFIG naming the first rank and tensor that differ),
 * broadcasts parameters and buffers from rank 0 when asked, then checks
 * that parameters are bit-equal everywhere (STK_ERANK naming the rank
 * otherwise), gives an NCCL communicator the model's compute stream
 * (stk_comm_set_stream; destroy clears it), and installs the model's
 * gradient hook (the model's previous
 * hook is replaced; destroy clears it). Returns 0 and *out, -EINVAL,
 * -ENOMEM, STK_ECONFIG, STK_ERANK, or a collective's error. */
STK_API int stk_ddp_create(stk_ddp_t **out, stk_comm_t *comm, stk_model_t *model, const stk_ddp_config_t *cfg);
/* Waits for reductions still running, clears the model's gradient hook,
 * frees. NULL-safe; sets *d to NULL. */
STK_API void stk_ddp_destroy(stk_ddp_t **d);

/* Backward of the model's last forward, then, when sync is 1, every
 * bucket all-reduced (averaged) so that the gradient arena holds the
 * global gradient on every rank when this returns. sync = 0 is a
 * gradient-accumulation micro-step: gradients only add up locally, no
 * communication. So with accum_steps k: sync = 0 for k - 1 micro-steps
 * and 1 on the k-th; exactly one reduction per bucket per optimizer step.
 * Returns 0, stk_model_backward's errors, or a collective's error (the
 * message names the bucket). Same thread rules as the model. */
STK_API int stk_ddp_backward(stk_ddp_t *d, int sync);

/* The same in two halves, for a loop that calls stk_model_backward itself:
 * stk_ddp_prepare(d, sync) before it, stk_ddp_finish(d) after it (finish
 * starts any bucket whose gradients never arrived, e.g. of layers that
 * reached no loss, and waits for all of them). Both return 0, -EINVAL
 * (NULL), STK_ESTATE (prepare twice, or finish without prepare); finish
 * also a collective's error, as stk_ddp_backward. */
STK_API int stk_ddp_prepare(stk_ddp_t *d, int sync);
STK_API int stk_ddp_finish(stk_ddp_t *d);

/* All-reduces (averages) every bucket now, after backward passes run with
 * sync = 0: for a group that ends before its planned last micro-step (a
 * short last group of an epoch, a flush). Counts as a sync step. Returns
 * 0 or a collective's error. */
STK_API int stk_ddp_sync_grads(stk_ddp_t *d);

/* Buffers (batchnorm running statistics) from rank 0 to every rank. By
 * default each rank keeps its own; call this before evaluating or saving
 * for PyTorch's broadcast_buffers behaviour. A collective. */
STK_API int stk_ddp_broadcast_buffers(stk_ddp_t *d);
/* 0 when the parameters are bit-equal on every rank; STK_ERANK naming the
 * first rank that differs otherwise. A collective (one small all-gather). */
STK_API int stk_ddp_check_params(stk_ddp_t *d);

/* Buckets, in the order they are reduced (bucket 0 holds the last layers).
 * offset/count in floats into the gradient arena (either may be NULL).
 * stk_ddp_bucket returns 0, -ERANGE (i >= stk_ddp_num_buckets) or -EINVAL. */
STK_API size_t stk_ddp_num_buckets(const stk_ddp_t *d);
STK_API int stk_ddp_bucket(const stk_ddp_t *d, size_t i, size_t *offset, size_t *count);

typedef struct stk_ddp_stats {
    uint64_t sync_steps;   /* backward passes with sync = 1 */
    uint64_t local_steps;  /* backward passes with sync = 0 */
    uint64_t reductions;   /* bucket all-reduces started */
    uint64_t early;        /* of which started before backward returned */
    double reduce_s;       /* total time the reductions ran */
    double exposed_s;      /* time finish waited for them after backward */
    double backward_s;     /* time inside backward on sync steps */
} stk_ddp_stats_t;
/* Counters since create; the share of communication hidden under backward
 * is 1 - exposed_s / reduce_s. */
STK_API void stk_ddp_stats(const stk_ddp_t *d, stk_ddp_stats_t *st);

typedef enum stk_ddp_event_kind {
    STK_DDP_EV_BACKWARD_BEGIN = 0,
    STK_DDP_EV_GRAD_READY,    /* a hook call: value = offset into the arena */
    STK_DDP_EV_REDUCE_BEGIN,  /* value = bucket */
    STK_DDP_EV_REDUCE_END,    /* value = bucket */
    STK_DDP_EV_BACKWARD_END
} stk_ddp_event_kind_t;

typedef struct stk_ddp_event {
    stk_ddp_event_kind_t kind;
    uint64_t value;
    double t;              /* seconds, CLOCK_MONOTONIC */
} stk_ddp_event_t;

/* The first events recorded since create (up to trace_events), in the
 * order they happened (REDUCE_BEGIN/END come from the communicator's
 * thread). Copies up to cap into out; returns how many were recorded. */
STK_API size_t stk_ddp_events(const stk_ddp_t *d, stk_ddp_event_t *out, size_t cap);

#ifdef __cplusplus
}
#endif
#endif
