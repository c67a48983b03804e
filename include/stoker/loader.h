/* SPDX-License-Identifier: MIT */
/* The data loader: datasets (a small vtable; shard and in-memory ones built
 * in), worker processes started from a clean fork server, a memfd batch ring
 * shared by every process, batches delivered in sampler order as zero-copy
 * views, failure handling, resumable state and per-stage statistics. */
#ifndef STOKER_LOADER_H
#define STOKER_LOADER_H

#include "stoker/common.h"
#include "stoker/shard.h"
#include "stoker/sampler.h"
#include "stoker/augment.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Datasets ------------------------------------------------------- */

/* Time and bytes a dataset spends per stage; a dataset adds to these. */
typedef struct stk_stage_stats {
    uint64_t ns;
    uint64_t bytes;
} stk_stage_stats_t;

typedef struct stk_dataset_stats {
    stk_stage_stats_t read;   /* bytes read from storage */
    stk_stage_stats_t decode; /* raw bytes produced */
    uint64_t checked;         /* records whose checksum was computed */
} stk_dataset_stats_t;

/* Called by get_batch once per position i of the batch, in any order:
 * status 0 with rec filled (pointers valid only during the call), or a
 * negative code (context in stk_error_message()) and rec NULL. A non-zero
 * return stops the batch and get_batch returns that value. */
typedef int (*stk_dataset_sink_fn)(void *sink_ctx, size_t i, int status, const stk_record_t *rec);

/* A dataset is a table of functions plus an argument blob. The blob is
 * copied once into shared memory; every worker opens its own instance from
 * it, so a dataset never relies on pointers from the process that made it.
 * The ops table and the functions must live in the program image (static
 * storage), not in a library loaded after stk_loader_forkserver_start().
 * Slots marked optional may be NULL. */
typedef struct stk_dataset_ops {
    const char *name;
    /* Opens an instance from the blob. worker is the worker number, or
     * UINT32_MAX for the creating process. Returns 0 or a negative code. */
    int (*open)(const void *args, size_t args_len, uint32_t worker, void **inst);
    void (*close)(void *inst);
    uint64_t (*len)(void *inst);
    /* Field names, dtypes and shapes of every sample. */
    int (*schema)(void *inst, stk_schema_t *out);
    /* Upper bound of the bytes one sample's fields take (sizes buffers and
     * the room of variable-length fields). */
    size_t (*max_sample_bytes)(void *inst);
    /* Loads sample index: fills rec, whose pointers may point into buf
     * (cap bytes, from the loader) or into the instance's own memory, valid
     * until the next call on this instance. STK_EDATA for a bad record,
     * naming it. A sample must depend on its index only (not on the worker
     * or on what the instance read before): any free worker fills the next
     * batch, so which worker loads a sample changes from run to run. Random
     * augmentation belongs in the loader's augment pipeline, keyed by
     * (seed, epoch, index). */
    int (*get)(void *inst, uint64_t index, void *buf, size_t cap, stk_record_t *rec,
               stk_dataset_stats_t *st);
    /* Optional: loads n samples at once (one I/O submission), calling sink
     * for each. */
    int (*get_batch)(void *inst, const uint64_t *indices, size_t n, stk_dataset_sink_fn sink,
                     void *sink_ctx, stk_dataset_stats_t *st);
    /* Optional: file descriptors one instance holds open (for the
     * RLIMIT_NOFILE check before workers start). */
    uint64_t (*open_fds)(void *inst);
    /* Optional, both or neither: memory every instance of one loader
     * shares, writable, zeroed when the loader is made (what one worker
     * learnt that the others can use: the shard dataset keeps there which
     * records matched their checksums). shared_bytes is asked of the
     * creating process's instance; attach hands each instance the area
     * (in workers, after open; in the creating process for num_workers 0,
     * and again with NULL, 0 before the loader goes). Writes to it race
     * with other processes: use atomics. */
    size_t (*shared_bytes)(void *inst);
    void (*attach_shared)(void *inst, void *mem, size_t bytes);
} stk_dataset_ops_t;

typedef struct stk_dataset stk_dataset_t;

/* Makes a dataset from ops and a blob (copied). Opens one instance in the
 * calling process to learn length and schema. Errors from ops->open pass
 * through; STK_ECONFIG for a missing slot, STK_EEMPTY for no samples. */
STK_API int stk_dataset_create(stk_dataset_t **out, const stk_dataset_ops_t *ops, const void *args,
                               size_t args_len);
/* Frees the dataset. A loader using it must be destroyed first. Accepts
 * NULL; sets *ds to NULL. */
STK_API void stk_dataset_destroy(stk_dataset_t **ds);
/* Samples in the dataset; its schema (owned by ds). Thread-safe. */
STK_API uint64_t stk_dataset_len(const stk_dataset_t *ds);
STK_API const stk_schema_t *stk_dataset_schema(const stk_dataset_t *ds);
/* Loads one sample in the calling process (the same path workers take);
 * rec's pointers are valid until the next call on ds. Returns 0, -ERANGE
 * (index >= stk_dataset_len), -EINVAL, or the dataset's error (STK_EDATA
 * naming the record). Not thread-safe. */
STK_API int stk_dataset_get(stk_dataset_t *ds, uint64_t index, stk_record_t *rec);

/* In-memory dataset over arrays: fields[f] points at n consecutive samples
 * of schema field f (fixed shapes only). The arrays are copied once into
 * shared memory that workers map (no per-worker copy). STK_ECONFIG for a
 * variable shape or bad dtype, -EINVAL for missing data. */
STK_API int stk_dataset_memory_create(stk_dataset_t **out, const stk_schema_t *schema,
                                      const void *const *fields, uint64_t n);

/* How shard workers read records. */
typedef enum stk_io_mode {
    STK_IO_AUTO = 0,  /* raw (level 0) or cached sets: mmap; else io_uring when
                       * built in and allowed, else pread */
    STK_IO_URING = 1, /* io_uring or fail (STK_ECONFIG / -EPERM) */
    STK_IO_PREAD = 2,
    STK_IO_MMAP = 3   /* map the shards: no read calls; for data in page cache */
} stk_io_mode_t;

typedef struct stk_dataset_shard_config {
    stk_io_mode_t io;
    uint32_t max_batch;  /* most records one get_batch reads; sizes rings (default 1024) */
    stk_verify_t verify; /* record checksums: STK_VERIFY_ONCE per loader (default: a
                          * record one of its workers verified, none hashes again) or
                          * STK_VERIFY_ALWAYS; see stk_decoder_set_verify */
} stk_dataset_shard_config_t;

STK_API void stk_dataset_shard_config_default(stk_dataset_shard_config_t *cfg);
/* Dataset over a shard set (any path stk_shardset_create takes). With
 * STK_IO_AUTO, a set whose shards are all stored raw (zstd level 0), or a
 * compressed set wholly in the page cache when it is opened, is mapped
 * (STK_IO_MMAP: no read call and no copy per record; each worker reads its
 * first batch with pread, cheaper than first faults on a cold mapping);
 * any other set uses io_uring, probed here; when refused (seccomp, old
 * kernel, kernel.io_uring_disabled) or turned off with STK_IO_URING=0 in
 * the environment (as libuv's UV_USE_IO_URING), the reader falls back to
 * pread and logs one warning per process. Force URING/PREAD/MMAP to
 * override the rule (URING then fails: -EPERM, or STK_ECONFIG when built
 * without liburing). */
STK_API int stk_dataset_shard_create(stk_dataset_t **out, const char *path,
                                     const stk_dataset_shard_config_t *cfg);
/* The I/O mode a shard dataset resolved to (URING, PREAD or MMAP);
 * STK_IO_AUTO for other datasets. */
STK_API stk_io_mode_t stk_dataset_io_mode(const stk_dataset_t *ds);

/* ---- Loader --------------------------------------------------------- */

/* Called once in every worker before its first batch; seed is the worker's
 * own (derived from the loader seed and worker number); arg is a copy of
 * worker_init_arg. A negative return fails the worker (STK_EWORKER). */
typedef int (*stk_worker_init_fn)(uint32_t worker, uint64_t seed, const void *arg, size_t arg_len);
/* Registers (pin) / unregisters (unpin) the batch arena for DMA, once; a
 * CUDA backend passes cudaHostRegister. Return 0 or a negative code. */
typedef int (*stk_pin_fn)(void *addr, size_t bytes, void *user);
typedef void (*stk_unpin_fn)(void *addr, size_t bytes, void *user);

#define STK_LOADER_WORKERS_AUTO UINT32_MAX

typedef struct stk_loader_config {
    uint64_t batch_size;                 /* default 1 */
    int drop_last;
    int shuffle;                         /* own sampler: random (1) or sequential (0) */
    uint64_t seed;                       /* sampler, augmentation and worker seeds */
    stk_sampler_t *sampler;              /* optional, not owned */
    stk_batch_sampler_t *batch_sampler;  /* optional, not owned; wins over the above */
    /* 0 = load in the calling process; STK_LOADER_WORKERS_AUTO: as many
     * workers as CPUs this process may use (affinity, cgroup quota), or
     * none, whichever the run's first batches show to be faster (the
     * time from one batch to the next, the caller's own work included:
     * on 2 CPUs, raw Fashion-MNIST batches come faster in process and
     * augmented ones with workers). stk_loader_get_stats says which. */
    uint32_t num_workers;
    /* Batches in flight per worker. 0 (the default): 2, and 4 for a
     * single worker (4 slots in all), so that one worker finds
     * its next batch queued while main takes the last, and main, waiting
     * for two batches at once, sleeps once per two (1 worker, raw
     * Fashion-MNIST: half the wake-ups of main, half the times it
     * preempted the worker). */
    uint32_t prefetch;
    int persistent_workers;              /* keep workers across epochs */
    /* How long stk_loader_next may wait for one batch before it blames a
     * worker: the one filling that batch, or, while the batch still waits
     * to be taken, one that made no progress for that long. Without
     * respawn that ends the run with -ETIMEDOUT naming batch and worker;
     * with respawn the worker is killed and replaced and its batch goes
     * to another. Counted afresh for each batch and after each
     * replacement. 0 (the default) = no limit: a stopped or hung worker
     * is then only reported (stall_warn_ms), and the caller ends the wait
     * with stk_loader_interrupt. */
    uint32_t timeout_ms;
    /* While main waits, log a warning (stk_log_set_callback) naming each
     * worker that made no progress for this long: its pid, the kernel's
     * word for its state (running, sleeping, stopped...) and the batch it
     * holds; again after twice the wait, and so on. Default 10000; 0 = never. */
    uint32_t stall_warn_ms;
    int respawn;                         /* replace dead or hung workers, lose nothing */
    uint32_t max_respawns;               /* give up after this many (default 8) */
    int skip_corrupt;                    /* drop bad records and count them */
    stk_worker_init_fn worker_init;
    const void *worker_init_arg;         /* copied */
    size_t worker_init_arg_len;
    const char *augment;                 /* spec, NULL or "" = none */
    /* The field augment transforms. NULL (the default): "image", or when
     * there is none, the dataset's only image-like field (2 or 3 fixed
     * dims); STK_ECONFIG naming the fields when that is not one. */
    const char *augment_field;
    stk_layout_t augment_layout;         /* layout of the stored image */
    stk_pin_fn pin;
    stk_unpin_fn unpin;
    void *pin_user;
    int pin_no_memlock;                  /* pin is not bound by RLIMIT_MEMLOCK: set it for
                                          * cudaHostRegister (the NVIDIA driver does not
                                          * count against it); mlock-based pins leave 0 */
} stk_loader_config_t;

STK_API void stk_loader_config_default(stk_loader_config_t *cfg);

typedef struct stk_loader stk_loader_t;

/* Checks limits (RLIMIT_NOFILE against the files workers hold,
 * RLIMIT_MEMLOCK when pin is set and pin_no_memlock is not, the cgroup memory limit against the
 * arena: STK_ELIMIT naming the limit, its value and the need), maps the
 * arena, pins it, selects epoch 0 and starts the workers (a worker that
 * fails in its own start is reported by stk_loader_next). ds must outlive
 * the loader. STK_ECONFIG names a bad
 * field. Not thread-safe with other calls on the same loader. */
STK_API int stk_loader_create(stk_loader_t **out, stk_dataset_t *ds, const stk_loader_config_t *cfg);
/* Stops workers (they exit; none is left a zombie), unpins, unmaps and
 * closes everything. Views must not be used afterwards. NULL-safe. */
STK_API void stk_loader_destroy(stk_loader_t **l);

/* One field of a batch. A variable-length field is padded with zeros to
 * the longest sample in the batch; lengths[i] is sample i's extent. */
typedef struct stk_batch_field {
    char name[STK_FIELD_NAME_MAX];
    stk_dtype_t dtype;
    uint32_t ndim;                      /* with the batch dim first */
    int64_t shape[STK_MAX_DIMS + 1];
    int var_dim;                        /* dim (in shape) that varies, or -1 */
    void *data;                         /* contiguous, row-major */
    size_t bytes;
    const int64_t *lengths;             /* NULL for fixed fields */
} stk_batch_field_t;

/* A zero-copy view of one slot of the arena, valid until released. */
typedef struct stk_batch {
    uint64_t epoch;
    uint64_t number;                    /* batch number in the epoch */
    size_t size;                        /* samples (fewer when records were skipped) */
    const uint64_t *indices;            /* dataset index of each sample */
    uint32_t nfields;
    stk_batch_field_t fields[STK_MAX_FIELDS];
    uint32_t slot;                      /* loader's own */
} stk_batch_t;

/* The next batch, in sampler order: 0, STK_DONE when the epoch is over
 * (call stk_loader_set_epoch to go on), STK_EWORKER (worker pid and signal
 * or exit status in the message; "fork server" when the server the
 * workers came from was killed), -ETIMEDOUT (see timeout_ms: batch and
 * worker named), STK_EDATA (shard and record named), STK_ESTATE when
 * every slot is held. After these errors the loader stays failed (same
 * code) until destroyed. -EINTR after stk_loader_interrupt: nothing is
 * lost, and a later call goes on where this one stopped. */
STK_API int stk_loader_next(stk_loader_t *l, stk_batch_t *batch);
/* Makes the stk_loader_next (or set_epoch, set_state) that is waiting on
 * l, or else the next such call, return -EINTR at once, for a program
 * that must stop while a worker is stopped or hung. Async-signal-safe
 * (an atomic store and a write(2) to the loader's eventfd): call it from
 * a SIGINT or SIGTERM handler. Not while l is being destroyed. */
STK_API void stk_loader_interrupt(stk_loader_t *l);
/* Hands the slot back for prefetching; the view's pointers are invalid
 * afterwards. Releasing twice, or an empty view, does nothing. Sets
 * batch->size to 0. Batches may be released in any order. */
STK_API void stk_loader_release(stk_loader_t *l, stk_batch_t *batch);

/* Selects an epoch and rewinds to its first batch (batches being filled
 * are waited for and dropped; held views stay valid). Returns 0, the
 * sampler's error, the loader's failure, or -EINTR (stk_loader_interrupt;
 * the epoch is then unchanged). */
STK_API int stk_loader_set_epoch(stk_loader_t *l, uint64_t epoch);
/* Batches per epoch (of the selected epoch). */
STK_API uint64_t stk_loader_len(const stk_loader_t *l);

/* Where the loader stands: the next batch it delivers is number `batch` of
 * `epoch`. Once an epoch has been delivered whole, that is (epoch + 1, 0):
 * the next epoch's first batch, after stk_loader_set_epoch(epoch + 1) (or
 * set_state with this state). A loader given this state delivers exactly
 * the batches that would have come next. */
typedef struct stk_loader_state {
    uint64_t epoch;
    uint64_t batch;
} stk_loader_state_t;
STK_API void stk_loader_get_state(const stk_loader_t *l, stk_loader_state_t *out);
/* Like set_epoch, then skips to st->batch; -ERANGE past the epoch
 * (st->batch equal to the epoch's length is its end: next says STK_DONE). */
STK_API int stk_loader_set_state(stk_loader_t *l, const stk_loader_state_t *st);

typedef struct stk_loader_stats {
    stk_stage_stats_t read, decode, augment, collate;
    stk_stage_stats_t wait;              /* main waiting in next; bytes delivered */
    uint64_t batches, samples, skipped, respawns;
    uint64_t worker_max_rss_kb;          /* largest peak RSS of any worker */
    uint64_t first_batch_ns;             /* create (or epoch start) to first batch */
    uint64_t worker_max_private_kb;      /* largest peak of a worker's resident memory
                                          * less shared pages: its own cost, where RSS
                                          * also counts the mapped shards' cached pages */
    uint64_t checked;                    /* records checksummed (stk_dataset_stats_t) */
    /* Where a batch's time goes besides the stages (see stoker-bench):
     * times main slept waiting for a batch, times a worker slept for want
     * of a task, and the workers' CPU time as of having filled
     * worker_cpu_batches batches (sampled every 16th batch). */
    uint64_t main_sleeps, worker_sleeps;
    uint64_t worker_cpu_ns, worker_cpu_batches;
    /* Workers delivering batches now: num_workers, or what
     * STK_LOADER_WORKERS_AUTO chose (until it has: the workers there are). */
    uint32_t num_workers;
    int auto_decided;                    /* AUTO's trial is over */
} stk_loader_stats_t;
/* Sums over workers (their counters live in shared memory, so this is
 * cheap and current) and main; since create. Times of workers add up
 * across workers. With STK_IO_MMAP, decode and collate times are estimated
 * from every 8th record (a clock read costs ~12 ns, a raw Fashion-MNIST
 * record 300-400 ns in all);
 * collate is what a batch took beyond read, decode and augment. */
STK_API void stk_loader_get_stats(const stk_loader_t *l, stk_loader_stats_t *out);
/* Pids of the running workers (0 for none), n entries at most; returns
 * the number of workers. */
STK_API uint32_t stk_loader_worker_pids(const stk_loader_t *l, int *pids, uint32_t n);

/* Starts the fork server that every loader's workers are forked from.
 * Call it early, before CUDA (or anything else a worker should not
 * inherit) is initialised; the first loader with workers starts it
 * otherwise (with a warning when libcuda is already mapped). The server
 * is a child of the calling process that lives until
 * stk_loader_forkserver_stop() or the caller's exit: a program that waits
 * for all of its children (wait(NULL) in a loop) must stop it first.
 * A child forked by the program starts its own when it needs one.
 * Idempotent, thread-safe. Returns 0 or a negative errno. */
STK_API int stk_loader_forkserver_start(void);
/* Stops the fork server (after every loader is destroyed) and reaps it.
 * A program that exits without calling it stops it at exit(3) (an
 * atexit handler), so no process is left behind, zombie or not. */
STK_API void stk_loader_forkserver_stop(void);

#ifdef __cplusplus
}
#endif
#endif
