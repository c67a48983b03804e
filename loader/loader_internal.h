/* SPDX-License-Identifier: MIT */
/* Loader internals shared by the main-process side (loader.c over pool.c
 * over ring.c), the worker side (worker.c), the fork server and the
 * readers. Not installed. */
#ifndef STOKER_LOADER_INTERNAL_H
#define STOKER_LOADER_INTERNAL_H

#include "internal.h"
#include "stoker/loader.h"

#include <stdatomic.h>
#include <sys/types.h>

/* ---- Dataset object ----------------------------------------------- */

struct stk_dataset {
    const stk_dataset_ops_t *ops;
    int args_fd;          /* sealed memfd holding the blob (workers map it) */
    void *args;           /* mapping of args_fd */
    size_t args_len;
    void *inst;           /* instance in the creating process */
    uint64_t len;
    stk_schema_t schema;
    size_t max_sample;
    void *buf;            /* sample buffer for stk_dataset_get */
    stk_io_mode_t io;     /* resolved mode (shard datasets) */
};

/* Maps a dataset blob read-only from its memfd (in a worker). */
int stk__dataset_map_args(int fd, size_t len, void **out);

/* ---- Readers: one file knows io_uring (reader.c) ------------------- */

typedef struct stk__reader stk__reader_t;

typedef struct stk__read_req {
    int fd;
    uint64_t offset;
    size_t len;
    void *buf;
} stk__read_req_t;

/* Called as each read completes, in any order; res is 0 or -errno. */
typedef int (*stk__read_done_fn)(void *ctx, size_t i, int res);

/* Resolves STK_IO_AUTO: io_uring if built in, not turned off by
 * STK_IO_URING=0 nor by sysctl, and a ring can be made here; logs one
 * warning per process when it falls back (stk__io_uring_warned, which a
 * test may clear). */
int stk__io_resolve(stk_io_mode_t want, stk_io_mode_t *got);
extern _Atomic int stk__io_uring_warned;
int stk__reader_create(stk__reader_t **out, stk_io_mode_t mode, unsigned depth);
void stk__reader_destroy(stk__reader_t **r);
/* Registers buf (once, for fixed-buffer reads) if the mode can use it. */
void stk__reader_register(stk__reader_t *r, void *buf, size_t len);
/* Reads every request, all in one submission where the mode allows,
 * calling done as they complete. */
int stk__reader_run(stk__reader_t *r, const stk__read_req_t *reqs, size_t n, stk__read_done_fn done,
                    void *ctx);

/* ---- Arena layout ------------------------------------------------- */

#define STK__MSG_MAX 512

/* Fixed-size, pointer-free description of a slot, computed in main and
 * sent to workers. */
typedef struct stk__layout {
    uint64_t batch_size;          /* most samples per batch */
    uint32_t nslots;
    uint32_t nfields;
    size_t slot_bytes;
    size_t indices_off;           /* uint64_t[batch_size] */
    size_t lengths_off;           /* int64_t[nfields][batch_size] */
    size_t field_off[STK_MAX_FIELDS];
    size_t field_stride[STK_MAX_FIELDS];  /* room per sample */
    size_t field_unit[STK_MAX_FIELDS];    /* bytes per var-dim step (var fields) */
    int32_t var_dim[STK_MAX_FIELDS];      /* in the sample shape, or -1 */
    int32_t aug_field;                    /* output field written by augment, or -1 */
    stk_batch_field_t out[STK_MAX_FIELDS]; /* dtypes/shapes without batch dim */
} stk__layout_t;

/* Header at the start of each slot, written by whoever fills it. */
typedef struct stk__slot_hdr {
    uint64_t epoch, batch;
    uint64_t n;                   /* samples requested (indices follow) */
    uint64_t delivered;           /* samples written (n minus skipped) */
    int64_t maxlen[STK_MAX_FIELDS];
} stk__slot_hdr_t;

/* Per-worker counters in the arena (after the slots), written by the
 * worker only. */
typedef struct stk__wstats {
    _Atomic uint64_t read_ns, read_bytes, decode_ns, decode_bytes;
    _Atomic uint64_t augment_ns, augment_bytes, collate_ns, collate_bytes;
    _Atomic uint64_t batches, samples, skipped, max_rss_kb, max_private_kb, checked;
    _Atomic uint64_t cpu_ns, cpu_batches; /* CPU time used, as of having filled cpu_batches */
    char pad[32];
} stk__wstats_t;

/* What a worker needs to start, pointer-free except for functions and the
 * ops table, which are valid in the fork server (same program image). */
typedef struct stk__worker_spec {
    uint32_t worker, num_workers;
    uint64_t seed;          /* this worker's own */
    uint64_t loader_seed;   /* keys the augmentation, same in every worker */
    const stk_dataset_ops_t *ops;
    size_t args_len;
    size_t arena_bytes;
    size_t wstats_off;
    size_t ring_off;        /* the task ring (ring.h): ring_cap tasks, a consumer per
                             * worker, a cell per slot */
    size_t dshared_off, dshared_bytes; /* the dataset's shared area (ops->shared_bytes) */
    uint32_t ring_cap;
    stk__layout_t layout;
    int skip_corrupt;
    char augment[512];
    stk_image_desc_t aug_in;
    stk_worker_init_fn worker_init;
    size_t init_arg_len;
    unsigned char init_arg[256];
} stk__worker_spec_t;

/* worker -> main, on its socket: a failed task (the ring marks the
 * others done), or slot UINT32_MAX from a worker that could not start. */
typedef struct stk__done_msg {
    uint32_t slot;
    int32_t status;
    uint64_t epoch, batch;
    char msg[STK__MSG_MAX];
} stk__done_msg_t;

/* ---- Slot layout and limits (layout.c) ----------------------------- */

/* Fills spec->layout (and, with an augment spec, spec->aug_in and
 * spec->augment) for batches of `batch` samples in nslots slots. The
 * augmented field is augment_field, or with NULL "image", or else the
 * dataset's only image-like field. STK_ECONFIG naming what is wrong. */
int stk__layout_make(stk__worker_spec_t *spec, const stk_dataset_t *ds, const char *augment,
                     const char *augment_field, stk_layout_t aug_layout, uint64_t batch,
                     uint32_t nslots);
/* What would make workers fail later (RLIMIT_NOFILE, RLIMIT_MEMLOCK with
 * pin_memlock, the cgroup's memory.max against the arena), checked now:
 * STK_ELIMIT naming the limit, its value and the need. */
int stk__loader_check_limits(const stk_dataset_t *ds, uint32_t nworkers, size_t arena_bytes,
                             int pin_memlock);

/* Batches a loader can hold at once (slots): stk_loader_next returns
 * STK_ESTATE while that many are held. The training loop fetches one
 * batch ahead only with 2 or more. */
uint32_t stk__loader_slots(const stk_loader_t *l);

/* ---- num_workers auto (autotune.c) --------------------------------- */

/* CPUs this process may use: its affinity mask, lowered by a cgroup v2
 * cpu.max quota (rounded up); 64 at most. */
uint32_t stk__usable_cpus(void);
/* Test hooks: the cgroup file read for the quota; a CPU count to use
 * instead of the machine's (0: the machine's). */
extern const char *stk__cgroup_cpu_max_path;
extern uint32_t stk__test_cpus;

/* The trial: the time from one delivered batch to the next (the caller's
 * own work included), measured with the workers, then in process, after
 * a few batches of warm-up each; the faster one stays. */
enum { STK__TRIAL_WORKERS = 1, STK__TRIAL_INLINE, STK__TRIAL_DONE };
enum { STK__TRIAL_GO_INLINE = 1, STK__TRIAL_DECIDED = 2 };
#define STK__TRIAL_WARM_WORKERS 4
#define STK__TRIAL_WARM_INLINE 2
#define STK__TRIAL_MIN_BATCHES 16
#define STK__TRIAL_MAX_BATCHES 128
#define STK__TRIAL_MIN_NS 20000000ull

typedef struct stk__trial {
    int phase;
    uint32_t skip;            /* deliveries of warm-up still to skip */
    uint64_t last_ns;         /* the last delivery (0: none to count from) */
    uint64_t sum_ns, n;       /* this phase's intervals */
    double ns_per_batch[2];   /* measured: [0] with workers, [1] in process */
    int inline_wins;          /* once DONE */
} stk__trial_t;

void stk__trial_start(stk__trial_t *t);
/* Notes a batch delivered at now: 0, STK__TRIAL_GO_INLINE (the workers'
 * phase is measured: deliver in process from here on), or
 * STK__TRIAL_DECIDED (see inline_wins). */
int stk__trial_note(stk__trial_t *t, uint64_t now);
/* The interval under way is not the loop's (an epoch change, with what
 * the caller does between epochs): it is not counted. */
void stk__trial_break(stk__trial_t *t);

/* ---- Batch filling (worker.c), used by workers and by inline mode --- */

typedef struct stk__filler stk__filler_t;

int stk__filler_create(stk__filler_t **out, const stk__worker_spec_t *spec, void *inst,
                       stk__wstats_t *wstats);
void stk__filler_destroy(stk__filler_t **f);
/* Fills slot memory (header and indices already written by main).
 * Returns 0 or the error, context in stk_error_message(). */
int stk__filler_run(stk__filler_t *f, void *slot, uint64_t epoch);
/* The worker process body; never returns. wake_fd: the loader's eventfd
 * that wakes main. */
void stk__worker_main(const stk__worker_spec_t *spec, int sock, int arena_fd, int args_fd,
                      int wake_fd) __attribute__((noreturn));

/* ---- Fork server (forkserver.c) ----------------------------------- */

/* Asks the fork server for n workers (spec with worker = ids[i], seed =
 * seeds[i], socket socks[i]; the arena and dataset memfds and the wake
 * eventfd are shared),
 * all requests in one go, in two halves so that the caller can work while
 * the server forks: send returns holding the server's lock, with *sent
 * requests out (an error may leave fewer); wait, which must follow on the
 * same thread whatever happened in between, reads their answers (pids[i]
 * is 0 for a worker that did not start) and unlocks. */
int stk__forkserver_spawn_send(const stk__worker_spec_t *spec, uint32_t n, const uint32_t *ids,
                               const uint64_t *seeds, const int *socks, int arena_fd, int args_fd,
                               int wake_fd, uint32_t *sent);
int stk__forkserver_spawn_wait(uint32_t sent, const uint32_t *ids, pid_t *pids);
/* Waits up to timeout_ms for the server's report on pid's end and gives
 * the wait status. -ETIMEDOUT when none came. */
int stk__forkserver_wait(pid_t pid, int timeout_ms, int *wstatus);
/* Forgets a pid's report (after the loader handled it). */
void stk__forkserver_forget(pid_t pid);
/* The running server's pid, or 0 (for tests). */
pid_t stk__forkserver_pid(void);

/* Test hooks: the cgroup memory file checked before workers start. */
extern const char *stk__cgroup_memory_max_path;
extern const char *stk__cgroup_memory_current_path;
/* Test hook: main sleeps this long between choosing the task it waits
 * for and saying so to the workers, which widens the window where a
 * worker finishes that task unseen. */
extern uint32_t stk__test_wait_race_us;
/* Test hook: a dead worker's task is not re-issued, as in the race that
 * recover() in loader.c covers. */
extern int stk__test_skip_reissue;
/* Test hook: main's sleep while it waits for a batch is not capped at a
 * second, so that a lost wake-up hangs instead of costing a second. */
extern int stk__test_no_wait_cap;

/* Cheap timestamps (TSC) and their ns per tick, calibrated per process. */
uint64_t stk__ticks(void);
double stk__ns_per_tick(void);

#endif
