/* SPDX-License-Identifier: MIT */
/* The loader's main-process side, on top of the worker pool (pool.c) and
 * its task ring (ring.c): the arena, which batch goes to which slot,
 * delivering them in sampler order as views, epochs and resumable state,
 * and what a worker's failure, death or silence means for the run
 * (respawn and re-issue, or a lasting error naming it). */
#define _GNU_SOURCE
#include "loader_internal.h"
#include "pool.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

const char *stk__cgroup_memory_max_path = "/sys/fs/cgroup/memory.max";
const char *stk__cgroup_memory_current_path = "/sys/fs/cgroup/memory.current";
uint32_t stk__test_wait_race_us;
int stk__test_skip_reissue;
int stk__test_no_wait_cap;

enum { SLOT_FREE = 0, SLOT_ISSUED, SLOT_DONE, SLOT_HELD };

typedef struct slot_info {
    int state;
    uint32_t worker;     /* DONE with an error: who reported it */
    uint64_t batch;
    uint64_t gen;        /* ISSUED: its task's, which the ring's done mark answers */
    uint64_t qpos;       /* ISSUED: its place in the queue (taken once head passes it) */
    int status;          /* DONE: the worker's result */
    char *msg;           /* DONE with an error: its context */
} slot_info_t;

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
     * workers, alternating A/B runs: 1.03-1.10x samples/s. Also written
     * by stk_loader_interrupt. */
    int wake_fd;
    unsigned char *arena;
    int pinned;

    uint32_t nworkers;
    stk__ring_t ring;
    stk__pool_t pool;
    int pool_ok;
    slot_info_t *slots;
    uint32_t *slot_of;           /* batch % nslots -> slot */
    stk__filler_t *inline_fill;
    int attached;                /* ds->inst uses the arena's dataset area */
    int inline_now;              /* main fills what it delivers (no new tasks) */
    int auto_workers;            /* num_workers AUTO: its trial runs or has run */
    stk__trial_t trial;

    _Atomic int interrupted;     /* stk_loader_interrupt asked, not yet answered */
    int was_interrupted;         /* a call answered -EINTR */
    int failed;
    char failmsg[1024];
    uint64_t created_ns, wait_ns, wait_bytes, first_batch_ns, respawns, main_sleeps;
    uint64_t health_ns;          /* when next last looked at the workers without waiting */
};

_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "stk_loader_interrupt needs a lock-free int");

static inline const stk__layout_t *LY(const stk_loader_t *l)
{
    return &l->spec.layout;
}

static inline unsigned char *slot_mem(const stk_loader_t *l, uint32_t s)
{
    return l->arena + (size_t)s * LY(l)->slot_bytes;
}

static inline stk__wstats_t *wstats(const stk_loader_t *l, uint32_t i)
{
    return (stk__wstats_t *)(l->arena + l->spec.wstats_off) + i;
}

static size_t align_up(size_t v, size_t a)
{
    return (v + a - 1) / a * a;
}

void stk_loader_config_default(stk_loader_config_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->batch_size = 1;
    cfg->max_respawns = 8;
    cfg->stall_warn_ms = 10000;
    cfg->augment_layout = STK_LAYOUT_CHW;
}

/* Records a lasting failure: every later call returns the same. */
static int STK_PRINTF(3, 4) fail(stk_loader_t *l, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(l->failmsg, sizeof l->failmsg, fmt, ap);
    va_end(ap);
    l->failed = code;
    return stk__error(code, "%s", l->failmsg);
}

/* The same, keeping this thread's message as the context. */
static int fail_here(stk_loader_t *l, int code)
{
    return fail(l, code, "%s", stk_error_message());
}

/* ---- Issuing ----------------------------------------------------- */

/* Queues slot s's task for any worker (pool_wake wakes sleepers). */
static int push_task(stk_loader_t *l, uint32_t s)
{
    slot_info_t *si = &l->slots[s];
    si->worker = 0;
    if (stk__ring_push(&l->ring, s, l->epoch, si->batch, &si->gen, &si->qpos) != 0)
        return fail(l, STK_ESTATE, "loader: %u tasks queued already", l->spec.ring_cap);
    return 0;
}

/* Puts batch k into free slot s: its indices into the slot header, and
 * (with workers) its task into the queue. */
static int issue_one(stk_loader_t *l, uint32_t s, uint64_t k)
{
    const stk__layout_t *L = LY(l);
    unsigned char *m = slot_mem(l, s);
    stk__slot_hdr_t *h = (stk__slot_hdr_t *)m;
    size_t n = 0;
    int rc = stk_batch_sampler_get(l->bs, k, (uint64_t *)(m + L->indices_off), &n);
    if (rc)
        return fail(l, rc, "sampler: batch %" PRIu64 ": %s", k, stk_error_message());
    h->epoch = l->epoch;
    h->batch = k;
    h->n = n;
    h->delivered = 0;
    l->slots[s].state = SLOT_ISSUED;
    l->slots[s].batch = k;
    l->slots[s].worker = 0;
    l->slots[s].status = 0;
    l->slot_of[k % L->nslots] = s;
    return l->nworkers && !l->inline_now ? push_task(l, s) : 0;
}

/* Fills free slots with the next batches, as far as slots allow. */
static int issue(stk_loader_t *l)
{
    const stk__layout_t *L = LY(l);
    uint32_t s = 0;
    if (l->inline_now)
        return 0; /* batches are filled here, when asked for */
    while (l->next_issue < l->nbatches) {
        while (s < L->nslots && l->slots[s].state != SLOT_FREE)
            s++;
        if (s == L->nslots)
            break;
        int rc = issue_one(l, s, l->next_issue);
        if (rc)
            return rc;
        l->next_issue++;
    }
    if (l->nworkers && l->pool.running)
        stk__pool_wake(&l->pool);
    return 0;
}

/* ---- Workers' results, deaths and silences ------------------------ */

/* Marks slot s done if the ring says so (1 if now). */
static int collect(stk_loader_t *l, uint32_t s)
{
    slot_info_t *si = &l->slots[s];
    if (si->state != SLOT_ISSUED || !stk__ring_is_done(&l->ring, s, si->gen))
        return 0;
    si->state = SLOT_DONE;
    si->status = 0;
    return 1;
}

static void collect_all(stk_loader_t *l)
{
    for (uint32_t s = 0; s < LY(l)->nslots; s++)
        collect(l, s);
}

/* Starts the workers; with tasks, queues the first batches before the
 * fork (the sampler must be ready then), so a worker starts on batch work
 * without a round trip. With defer, returns once the server has the
 * requests; finish_start completes. */
static int start_workers(stk_loader_t *l, int tasks, int defer)
{
    if (l->pool.running || l->nworkers == 0)
        return 0;
    int rc = stk__pool_prepare(&l->pool);
    if (rc == 0 && tasks)
        rc = issue(l);
    if (rc == 0)
        rc = stk__pool_spawn_begin(&l->pool);
    if (rc == 0 && !defer)
        rc = stk__pool_spawn_finish(&l->pool);
    if (rc) {
        if (!l->failed)
            fail_here(l, STK_EWORKER);
        stk__pool_stop(&l->pool, 1);
        return stk__error(l->failed, "%s", l->failmsg);
    }
    return 0;
}

static int finish_start(stk_loader_t *l)
{
    return stk__pool_spawn_finish(&l->pool) ? fail_here(l, STK_EWORKER) : 0;
}

/* Stops the workers; what they were filling is dropped. */
static void stop_workers(stk_loader_t *l, int hard)
{
    if (!l->pool_ok)
        return;
    stk__pool_stop(&l->pool, hard);
    for (uint32_t s = 0; s < LY(l)->nslots; s++)
        if (l->slots[s].state == SLOT_ISSUED)
            l->slots[s].state = SLOT_FREE;
}

/* A worker's report of a failed batch (or of its failed start). */
static void take_report(stk_loader_t *l, const stk__pool_event_t *e)
{
    if (e->cell == UINT32_MAX) {
        /* It could not start and will exit: remember why. */
        if (!l->failed)
            fail(l, STK_EWORKER, "worker %u (pid %d) failed to start: %s (%s)", e->worker, e->pid,
                 e->msg, stk_err_name(e->status));
        return;
    }
    if (e->cell >= LY(l)->nslots)
        return;
    slot_info_t *s = &l->slots[e->cell];
    if (s->state != SLOT_ISSUED || s->batch != e->batch || e->epoch != l->epoch)
        return; /* stale: from before a respawn or a rewind */
    s->state = SLOT_DONE;
    s->status = e->status;
    s->worker = e->worker;
    free(s->msg);
    s->msg = strndup(e->msg, sizeof e->msg);
}

/* Worker i died (or was killed for hanging) and was reaped, why says how:
 * respawn it and hand its unfinished batch out again, or fail naming it. */
static int worker_lost(stk_loader_t *l, uint32_t i, const char *why, const char *context)
{
    collect_all(l); /* what it finished before it went is not lost */
    if (l->failed)
        return l->failed; /* it said why before it went (failed start) */
    /* The task it held: marked busy by it (stable now it is dead), taken
     * off the queue and held by no live worker. */
    uint32_t lost = UINT32_MAX;
    uint64_t gen = stk__ring_busy(&l->ring, i);
    for (uint32_t s = 0; gen && s < LY(l)->nslots; s++)
        if (l->slots[s].state == SLOT_ISSUED && l->slots[s].gen == gen &&
            stk__pool_unheld(&l->pool, gen, l->slots[s].qpos))
            lost = s;
    if (!l->cfg.respawn || l->respawns >= l->cfg.max_respawns) {
        if (lost != UINT32_MAX)
            return fail(l, STK_EWORKER, "%s%s while loading batch %" PRIu64 " of epoch %" PRIu64
                        "%s", why, context, l->slots[lost].batch, l->epoch,
                        l->cfg.respawn ? " (respawn limit reached)" : "");
        return fail(l, STK_EWORKER, "%s%s", why, context);
    }
    stk__log(STK_LOG_WARN, "%s%s; respawning it", why, context);
    l->respawns++;
    if (stk__pool_respawn(&l->pool, i) != 0)
        return fail(l, STK_EWORKER, "%s; respawn failed: %s", why, stk_error_message());
    if (lost != UINT32_MAX && !stk__test_skip_reissue) {
        int rc = push_task(l, lost);
        if (rc)
            return rc;
    }
    stk__pool_wake(&l->pool);
    return 0;
}

/* Sleeps in the pool for up to timeout_ms and handles what came. 0, or
 * the loader's failure. */
static int pump(stk_loader_t *l, int timeout_ms)
{
    l->main_sleeps += timeout_ms != 0;
    int rc = stk__pool_pump(&l->pool, timeout_ms);
    if (rc)
        return fail_here(l, rc);
    stk__pool_event_t e;
    while (stk__pool_event(&l->pool, &e)) {
        if (e.kind == STK__POOL_REPORT)
            take_report(l, &e);
        else if ((rc = worker_lost(l, e.worker, e.msg, "")) != 0)
            return rc;
    }
    return l->failed;
}

/* The one way a task can be lost: its worker died right after claiming
 * it, while another worker, whose claim of the same entry had just
 * failed, still showed it busy; worker_lost then left it to that one.
 * It is taken, held by no live worker, unreported and not done: checked
 * in that order (stk__ring_unheld). Then it goes back in the queue
 * (reissue) or its slot is simply freed. */
static int recover(stk_loader_t *l, uint32_t s, int reissue)
{
    slot_info_t *si = &l->slots[s];
    if (si->state != SLOT_ISSUED || !stk__pool_unheld(&l->pool, si->gen, si->qpos))
        return 0;
    int rc = pump(l, 0);
    if (rc || si->state != SLOT_ISSUED || collect(l, s))
        return rc;
    if (!reissue) {
        si->state = SLOT_FREE;
        return 0;
    }
    stk__log(STK_LOG_WARN, "loader: batch %" PRIu64 " was taken by a worker that is gone; "
             "issuing it again", si->batch);
    rc = push_task(l, s);
    stk__pool_wake(&l->pool);
    return rc;
}

/* After a timeout on slot s: the worker to blame (*holds: it holds the
 * batch), or UINT32_MAX when none is stuck. The one holding the batch;
 * else, while the batch waits in the queue, the worker that has not
 * moved for longest, if that is the whole timeout (stopped or hung on
 * another batch, or before it could take one). */
static uint32_t hung_worker(stk_loader_t *l, uint32_t s, uint64_t now, int *holds)
{
    uint32_t h = stk__pool_holder(&l->pool, l->slots[s].gen);
    *holds = h != UINT32_MAX;
    if (h != UINT32_MAX)
        return h;
    if (stk__ring_taken(&l->ring, l->slots[s].qpos))
        return UINT32_MAX; /* just taken, or done: look again */
    return stk__pool_stalled(&l->pool, now, (uint64_t)l->cfg.timeout_ms * 1000000ull);
}

/* The batch worker i holds, as ", holding batch 7", or ", holding no
 * batch". */
static void held_by(const stk_loader_t *l, uint32_t i, char *buf, size_t cap)
{
    uint64_t gen = stk__ring_busy(&l->ring, i);
    snprintf(buf, cap, ", holding no batch");
    for (uint32_t s = 0; gen && s < LY(l)->nslots; s++)
        if (l->slots[s].state == SLOT_ISSUED && l->slots[s].gen == gen)
            snprintf(buf, cap, ", holding batch %" PRIu64, l->slots[s].batch);
}

/* Main has waited waited_ns (for what: "batch 5 of epoch 2"): logs each
 * worker that made no progress for stall_warn_ms, with its state and the
 * batch it holds. Even without a timeout, a stopped or hung worker is
 * named instead of a silent wait. */
static void report_stalls(stk_loader_t *l, uint64_t now, uint64_t waited_ns, const char *what)
{
    uint64_t min_ns = (uint64_t)l->cfg.stall_warn_ms * 1000000ull;
    stk__pool_note_progress(&l->pool, now);
    for (uint32_t i = 0; i < l->nworkers; i++) {
        if (!l->pool.alive[i] || stk__pool_idle_ns(&l->pool, i, now) < min_ns)
            continue;
        char who[96], held[48];
        stk__pool_describe(&l->pool, i, who, sizeof who);
        held_by(l, i, held, sizeof held);
        stk__log(STK_LOG_WARN, "loader: %s not ready after %.1f s: %s made no progress for "
                 "%.1f s%s%s", what, (double)waited_ns / 1e9, who,
                 (double)stk__pool_idle_ns(&l->pool, i, now) / 1e9, held,
                 l->cfg.timeout_ms ? "" : " (no timeout set: waiting on)");
    }
}

/* Tracks when a wait last reported its stalled workers. */
typedef struct stall_clock {
    uint64_t start, next;
} stall_clock_t;

static void stall_start(const stk_loader_t *l, stall_clock_t *c, uint64_t now)
{
    c->start = now;
    c->next = l->cfg.stall_warn_ms ? now + (uint64_t)l->cfg.stall_warn_ms * 1000000ull : UINT64_MAX;
}

/* Reports when due (then again after twice the wait, and so on); returns
 * the ms until the next report is due (capped at cap_ms). */
static int stall_tick(stk_loader_t *l, stall_clock_t *c, uint64_t now, const char *what, int cap_ms)
{
    if (now >= c->next) {
        report_stalls(l, now, now - c->start, what);
        c->next = now + (now - c->start);
    }
    uint64_t left = c->next == UINT64_MAX ? UINT64_MAX : (c->next - now) / 1000000ull + 1;
    return left < (uint64_t)cap_ms ? (int)left : cap_ms;
}

/* An interrupt asked for: consumed and reported once. */
static int interrupted(stk_loader_t *l)
{
    if (!atomic_exchange(&l->interrupted, 0))
        return 0;
    l->was_interrupted = 1;
    return stk__error(-EINTR, "loader: interrupted (stk_loader_interrupt)");
}

/* Main can fill batches itself: worker_init as a worker 0 would run it,
 * its own filler, and the dataset's shared area. */
static int inline_setup(stk_loader_t *l)
{
    if (l->inline_fill)
        return 0;
    l->spec.worker = 0;
    l->spec.seed = stk__pool_worker_seed(l->cfg.seed, 0);
    int rc = 0;
    if (l->cfg.worker_init)
        rc = l->cfg.worker_init(0, l->spec.seed, l->spec.init_arg, l->spec.init_arg_len);
    if (rc == 0)
        rc = stk__filler_create(&l->inline_fill, &l->spec, l->ds->inst, wstats(l, 0));
    if (rc == 0 && l->spec.dshared_bytes) {
        l->ds->ops->attach_shared(l->ds->inst, l->arena + l->spec.dshared_off,
                                  l->spec.dshared_bytes);
        l->attached = 1;
    }
    return rc;
}

/* After a batch delivered with workers (from_workers) or in process: the
 * AUTO trial's clock, and its turns (on to measuring in process; then
 * the choice, which stops the workers or goes back to them). */
static int trial_step(stk_loader_t *l, int from_workers)
{
    stk__trial_t *t = &l->trial;
    if (!l->auto_workers || t->phase == STK__TRIAL_DONE)
        return 0;
    if (from_workers != (t->phase == STK__TRIAL_WORKERS)) {
        stk__trial_break(t); /* a batch left in flight from the other phase */
        return 0;
    }
    int ev = stk__trial_note(t, stk__now_ns());
    if (ev == STK__TRIAL_GO_INLINE) {
        int rc = inline_setup(l);
        if (rc)
            return fail_here(l, rc);
        l->inline_now = 1;
    } else if (ev == STK__TRIAL_DECIDED) {
        double bs = (double)LY(l)->batch_size;
        stk__log(STK_LOG_INFO, "loader: num_workers auto: %u (in process %.0f samples/s, with %u "
                 "workers %.0f samples/s, timed over the first batches)",
                 t->inline_wins ? 0 : l->nworkers, bs * 1e9 / t->ns_per_batch[1], l->nworkers,
                 bs * 1e9 / t->ns_per_batch[0]);
        if (t->inline_wins) {
            stop_workers(l, 0);
        } else {
            l->inline_now = 0;
            return issue(l);
        }
    }
    return 0;
}

/* ---- Public API -------------------------------------------------- */

int stk_loader_create(stk_loader_t **out, stk_dataset_t *ds, const stk_loader_config_t *cfg)
{
    stk_loader_config_t def;
    int rc;
    if (!out || !ds)
        return stk__error(-EINVAL, "stk_loader_create: NULL argument");
    *out = NULL;
    if (!cfg) {
        stk_loader_config_default(&def);
        cfg = &def;
    }
    if (!cfg->batch_sampler && cfg->batch_size == 0)
        return stk__error(STK_ECONFIG, "batch_size must be at least 1");
    if (cfg->num_workers > 1024 && cfg->num_workers != STK_LOADER_WORKERS_AUTO)
        return stk__error(STK_ECONFIG, "num_workers %u is over 1024", cfg->num_workers);
    if (cfg->prefetch > 64)
        return stk__error(STK_ECONFIG, "prefetch %u is over 64", cfg->prefetch);
    if (cfg->worker_init_arg_len > sizeof(((stk__worker_spec_t *)0)->init_arg))
        return stk__error(STK_ECONFIG, "worker_init_arg_len %zu is over %zu bytes",
                          cfg->worker_init_arg_len, sizeof(((stk__worker_spec_t *)0)->init_arg));
    if (cfg->worker_init_arg_len && !cfg->worker_init_arg)
        return stk__error(STK_ECONFIG, "worker_init_arg is NULL with a length");
    if ((cfg->pin == NULL) != (cfg->unpin == NULL))
        return stk__error(STK_ECONFIG, "pin and unpin go together");
    stk_loader_t *l = calloc(1, sizeof *l);
    if (!l)
        return stk__error(-ENOMEM, "loader: out of memory");
    l->created_ns = stk__now_ns();
    l->ds = ds;
    l->cfg = *cfg;
    l->arena_fd = -1;
    l->wake_fd = -1;
    l->auto_workers = cfg->num_workers == STK_LOADER_WORKERS_AUTO;
    l->nworkers = l->auto_workers ? stk__usable_cpus() : cfg->num_workers;
    l->inline_now = l->nworkers == 0;
    if (l->auto_workers)
        stk__trial_start(&l->trial);
    if (l->cfg.prefetch == 0)
        l->cfg.prefetch = l->nworkers == 1 ? 4 : 2;
    l->augment = strdup(cfg->augment ? cfg->augment : "");
    l->augment_field = cfg->augment_field ? strdup(cfg->augment_field) : NULL;
    if (!l->augment || (cfg->augment_field && !l->augment_field)) {
        rc = stk__error(-ENOMEM, "loader: out of memory");
        goto fail;
    }
    l->cfg.augment = l->augment;
    l->cfg.augment_field = l->augment_field;

    uint64_t batch = cfg->batch_sampler ? stk_batch_sampler_batch_size(cfg->batch_sampler)
                                        : cfg->batch_size;
    uint32_t nslots = l->nworkers ? l->nworkers * l->cfg.prefetch : l->cfg.prefetch;
    rc = stk__layout_make(&l->spec, ds, l->augment, l->augment_field, cfg->augment_layout, batch,
                          nslots);
    if (rc)
        goto fail;
    l->spec.num_workers = l->nworkers;
    l->spec.loader_seed = cfg->seed;
    l->spec.ops = ds->ops;
    l->spec.args_len = ds->args_len;
    l->spec.skip_corrupt = cfg->skip_corrupt;
    l->spec.worker_init = cfg->worker_init;
    l->spec.init_arg_len = cfg->worker_init_arg_len;
    if (cfg->worker_init_arg_len)
        memcpy(l->spec.init_arg, cfg->worker_init_arg, cfg->worker_init_arg_len);
    uint32_t nstats = l->nworkers ? l->nworkers : 1;
    l->spec.wstats_off = (size_t)nslots * LY(l)->slot_bytes;
    l->spec.ring_cap = nslots;
    l->spec.ring_off = align_up(l->spec.wstats_off + nstats * sizeof(stk__wstats_t), 64);
    l->spec.dshared_off = l->spec.ring_off + stk__ring_bytes(nslots, l->nworkers, nslots);
    if (ds->ops->shared_bytes && ds->ops->attach_shared)
        l->spec.dshared_bytes = ds->ops->shared_bytes(ds->inst);
    l->arena_bytes = align_up(l->spec.dshared_off + l->spec.dshared_bytes, 4096);
    l->spec.arena_bytes = l->arena_bytes;

    rc = stk__loader_check_limits(ds, l->nworkers, l->arena_bytes,
                                  cfg->pin && !cfg->pin_no_memlock);
    if (rc)
        goto fail;
    l->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (l->wake_fd < 0) {
        rc = stk__error(-errno, "loader: eventfd");
        goto fail;
    }
    /* memfd, not /dev/shm: nothing named to leak on a crash, and the
     * /dev/shm size limit of containers does not apply. */
    l->arena_fd = memfd_create("stoker-batches", MFD_CLOEXEC);
    if (l->arena_fd < 0) {
        rc = stk__error(-errno, "loader: memfd_create");
        goto fail;
    }
    if (ftruncate(l->arena_fd, (off_t)l->arena_bytes) != 0) {
        rc = stk__error(-errno, "loader: arena of %zu bytes", l->arena_bytes);
        goto fail;
    }
    l->arena = mmap(NULL, l->arena_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, l->arena_fd, 0);
    if (l->arena == MAP_FAILED) {
        l->arena = NULL;
        rc = stk__error(-errno, "loader: mmap of the %zu-byte arena", l->arena_bytes);
        goto fail;
    }
    if (cfg->pin) {
        rc = cfg->pin(l->arena, l->arena_bytes, cfg->pin_user);
        if (rc) {
            rc = stk__error_prefix(rc, "loader: pinning the %zu-byte arena", l->arena_bytes);
            goto fail;
        }
        l->pinned = 1;
    }
    stk__ring_attach(&l->ring, l->arena + l->spec.ring_off, nslots, l->nworkers, nslots);
    l->slots = calloc(nslots, sizeof *l->slots);
    l->slot_of = calloc(nslots, sizeof *l->slot_of);
    if (!l->slots || !l->slot_of) {
        rc = stk__error(-ENOMEM, "loader: out of memory");
        goto fail;
    }
    rc = stk__pool_init(&l->pool, l->nworkers, &l->ring, &l->spec, l->arena_fd, ds->args_fd,
                        l->wake_fd, cfg->seed);
    if (rc)
        goto fail;
    l->pool_ok = 1;
    if (l->nworkers == 0 && (rc = inline_setup(l)) != 0)
        goto fail;
    /* Workers start now, before the sampler draws the epoch's order, so
     * that the server's forks and their start (opening the dataset) overlap
     * it; a worker that cannot start is reported by the first next. */
    rc = start_workers(l, 0, 1);
    if (rc)
        goto fail;
    if (cfg->batch_sampler) {
        l->bs = cfg->batch_sampler;
    } else {
        stk_sampler_t *smp = cfg->sampler;
        if (!smp) {
            stk_sampler_config_t sc;
            stk_sampler_config_default(&sc);
            sc.kind = cfg->shuffle ? STK_SAMPLER_RANDOM : STK_SAMPLER_SEQUENTIAL;
            sc.dataset_len = ds->len;
            sc.seed = cfg->seed;
            rc = stk_sampler_create(&l->own_sampler, &sc);
            if (rc)
                goto fail;
            smp = l->own_sampler;
        }
        rc = stk_batch_sampler_create(&l->bs, smp, cfg->batch_size, cfg->drop_last);
        if (rc)
            goto fail;
        l->own_bs = 1;
    }
    rc = stk_batch_sampler_set_epoch(l->bs, 0);
    if (rc)
        goto fail;
    l->nbatches = stk_batch_sampler_len(l->bs);
    rc = l->nworkers ? issue(l) : 0;
    if (rc == 0)
        rc = finish_start(l);
    if (rc)
        goto fail;
    *out = l;
    return 0;
fail:
    stk_loader_destroy(&l);
    return rc;
}

void stk_loader_destroy(stk_loader_t **pl)
{
    if (!pl || !*pl)
        return;
    stk_loader_t *l = *pl;
    /* A failed or interrupted loader may have a stopped or hung worker:
     * no second of grace for it. */
    if (l->pool_ok) {
        stop_workers(l, l->failed || l->was_interrupted || atomic_load(&l->interrupted));
        stk__pool_fini(&l->pool);
    }
    stk__filler_destroy(&l->inline_fill);
    if (l->attached)
        l->ds->ops->attach_shared(l->ds->inst, NULL, 0);
    if (l->pinned)
        l->cfg.unpin(l->arena, l->arena_bytes, l->cfg.pin_user);
    if (l->arena)
        munmap(l->arena, l->arena_bytes);
    if (l->arena_fd >= 0)
        close(l->arena_fd);
    if (l->wake_fd >= 0)
        close(l->wake_fd);
    if (l->slots)
        for (uint32_t s = 0; s < LY(l)->nslots; s++)
            free(l->slots[s].msg);
    free(l->slots);
    free(l->slot_of);
    if (l->own_bs)
        stk_batch_sampler_destroy(&l->bs);
    stk_sampler_destroy(&l->own_sampler);
    free(l->augment);
    free(l->augment_field);
    free(l);
    *pl = NULL;
}

void stk_loader_interrupt(stk_loader_t *l)
{
    if (!l)
        return;
    /* Only a lock-free atomic and write(2): safe in a signal handler. */
    int saved = errno;
    atomic_store(&l->interrupted, 1);
    uint64_t one = 1;
    ssize_t k = write(l->wake_fd, &one, sizeof one);
    (void)k; /* a full counter already wakes main */
    errno = saved;
}

uint64_t stk_loader_len(const stk_loader_t *l)
{
    return l ? l->nbatches : 0;
}

uint32_t stk__loader_slots(const stk_loader_t *l)
{
    return l ? LY(l)->nslots : 0;
}

static void make_view(const stk_loader_t *l, uint32_t s, stk_batch_t *b)
{
    const stk__layout_t *L = LY(l);
    unsigned char *m = slot_mem(l, s);
    const stk__slot_hdr_t *h = (const stk__slot_hdr_t *)m;
    memset(b, 0, sizeof *b);
    b->epoch = h->epoch;
    b->number = h->batch;
    b->size = h->delivered;
    b->indices = (const uint64_t *)(m + L->indices_off);
    b->nfields = L->nfields;
    b->slot = s;
    for (uint32_t k = 0; k < L->nfields; k++) {
        stk_batch_field_t *f = &b->fields[k];
        const stk_batch_field_t *o = &L->out[k];
        memcpy(f->name, o->name, sizeof f->name);
        f->dtype = o->dtype;
        f->ndim = o->ndim + 1;
        f->shape[0] = (int64_t)b->size;
        size_t bytes = stk_dtype_size(o->dtype);
        for (uint32_t d = 0; d < o->ndim; d++) {
            int64_t e = (int)d == L->var_dim[k] ? h->maxlen[k] : o->shape[d];
            f->shape[d + 1] = e;
            bytes *= (size_t)e;
        }
        f->var_dim = L->var_dim[k] >= 0 ? L->var_dim[k] + 1 : -1;
        f->data = m + L->field_off[k];
        f->bytes = bytes * b->size;
        f->lengths = L->var_dim[k] >= 0 ? (const int64_t *)(m + L->lengths_off) + (size_t)k * L->batch_size
                                        : NULL;
    }
}

static int deliver(stk_loader_t *l, uint32_t s, uint64_t k, stk_batch_t *b)
{
    slot_info_t *si = &l->slots[s];
    if (si->status) {
        int code = si->status;
        si->state = SLOT_FREE;
        if (si->worker != UINT32_MAX)
            return fail(l, code, "worker %u (pid %d): %s", si->worker,
                        (int)l->pool.pid[si->worker], si->msg ? si->msg : stk_strerror(code));
        return fail(l, code, "%s", si->msg ? si->msg : stk_strerror(code));
    }
    si->state = SLOT_HELD;
    l->next_deliver = k + 1;
    if (!l->first_batch_ns)
        l->first_batch_ns = stk__now_ns() - l->created_ns;
    make_view(l, s, b);
    for (uint32_t f = 0; f < b->nfields; f++)
        l->wait_bytes += b->fields[f].bytes;
    return 0;
}

/* The slot main asks to be woken for while it waits for batch k: k's,
 * or, while batch k + 1 is on its way too, k + 1's, so that one wake-up
 * hands main two batches. Each wake-up of main on a machine whose CPUs
 * all run workers preempts one of them: two context switches, an
 * interrupt, and some of that worker's cache (raw Fashion-MNIST, two
 * workers on two CPUs: 1.09x samples/s, a third fewer context switches).
 * Batch k comes later by up to one batch's time, which costs nothing
 * where main waits for workers anyway; with 4 slots or more, workers
 * have free slots meanwhile. Not for a loader's first batch, whose time
 * is the time to first batch. */
static uint32_t wake_slot(stk_loader_t *l, uint64_t k)
{
    const stk__layout_t *L = LY(l);
    uint32_t s = l->slot_of[k % L->nslots];
    if (l->first_batch_ns && k + 1 < l->next_issue && L->nslots >= 4) {
        uint32_t s1 = l->slot_of[(k + 1) % L->nslots];
        const slot_info_t *n = &l->slots[s1];
        if (n->state == SLOT_ISSUED && n->batch == k + 1 && !collect(l, s1))
            return s1;
    }
    return s;
}

/* Batch k without workers: filled here, now. */
static int next_inline(stk_loader_t *l, uint64_t k, uint64_t t0, stk_batch_t *b)
{
    const stk__layout_t *L = LY(l);
    uint32_t s = 0;
    while (s < L->nslots && l->slots[s].state != SLOT_FREE)
        s++;
    if (s == L->nslots)
        return stk__error(STK_ESTATE, "every slot (%u) is held: release a batch first", L->nslots);
    int rc = issue_one(l, s, k);
    if (rc)
        return rc;
    l->next_issue = k + 1;
    l->slots[s].worker = UINT32_MAX; /* filled here: no worker to name */
    rc = stk__filler_run(l->inline_fill, slot_mem(l, s), l->epoch);
    l->slots[s].state = SLOT_DONE;
    l->slots[s].status = rc;
    if (rc) {
        free(l->slots[s].msg);
        l->slots[s].msg = strdup(stk_error_message());
    }
    l->wait_ns += stk__now_ns() - t0;
    return deliver(l, s, k, b);
}

/* The timeout on slot s (batch k) ran out: the worker to blame is killed
 * and replaced (what it held goes back in the queue), or the loader
 * fails naming it. 1: nobody is stuck, wait on; 0: go on; or the error. */
static int timed_out(stk_loader_t *l, uint32_t s, uint64_t k, uint64_t now)
{
    int holds = 0;
    uint32_t wi = hung_worker(l, s, now, &holds);
    if (wi == UINT32_MAX)
        return 1;
    char who[96];
    stk__pool_describe(&l->pool, wi, who, sizeof who);
    const char *what = holds ? "did not deliver it" : "made no progress in that time";
    if (!l->cfg.respawn || l->respawns >= l->cfg.max_respawns)
        return fail(l, -ETIMEDOUT, "batch %" PRIu64 " of epoch %" PRIu64 " not ready after %u ms: "
                    "%s %s", k, l->epoch, l->cfg.timeout_ms, who, what);
    char ctx[160], why[256];
    snprintf(ctx, sizeof ctx, " after a %u ms timeout on batch %" PRIu64 " (it %s)",
             l->cfg.timeout_ms, k, what);
    stk__pool_kill(&l->pool, wi, why, sizeof why);
    return worker_lost(l, wi, why, ctx);
}

int stk_loader_next(stk_loader_t *l, stk_batch_t *b)
{
    int rc;
    if (!l || !b)
        return stk__error(-EINVAL, "stk_loader_next: NULL argument");
    memset(b, 0, sizeof *b);
    b->slot = UINT32_MAX;
    if (l->failed)
        return stk__error(l->failed, "%s", l->failmsg);
    if ((rc = interrupted(l)) != 0)
        return rc;
    if (l->next_deliver >= l->nbatches) {
        if (!l->cfg.persistent_workers)
            stop_workers(l, 0);
        return STK_DONE;
    }
    const stk__layout_t *L = LY(l);
    uint64_t k = l->next_deliver;
    uint64_t t0 = stk__now_ns();
    if (l->inline_now && k >= l->next_issue) {
        rc = next_inline(l, k, t0, b);
        return rc ? rc : trial_step(l, 0);
    }
    rc = start_workers(l, 1, 0);
    if (rc == 0)
        rc = issue(l);
    if (rc)
        return rc;
    if (l->next_issue <= k)
        return stk__error(STK_ESTATE, "every slot (%u) is held: release a batch first", L->nslots);
    /* Main learns of a death when it waits; a worker that dies while the
     * others keep every slot filled ahead of a slow consumer would go
     * unseen (PyTorch's DataLoader raises at once). So look at the
     * workers' sockets without sleeping, at most every 50 ms. */
    if (t0 - l->health_ns >= 50000000ull) {
        l->health_ns = t0;
        if ((rc = pump(l, 0)) != 0)
            return rc;
    }
    uint32_t s = l->slot_of[k % L->nslots];
    uint64_t start = t0, lost_check = t0;
    stall_clock_t stall;
    char what[64];
    stall_start(l, &stall, t0);
    stk__pool_note_progress(&l->pool, t0);
    while (l->slots[s].state == SLOT_ISSUED && !collect(l, s)) {
        uint64_t now = stk__now_ns();
        /* Capped: should a wake-up ever go missing, the batch is found
         * done a second later instead of never (tests lift the cap to
         * catch one). */
        int wait_ms = stk__test_no_wait_cap ? INT32_MAX : 1000;
        if (l->cfg.timeout_ms) {
            uint64_t el = (now - start) / 1000000ull;
            if (el >= l->cfg.timeout_ms) {
                rc = timed_out(l, s, k, now);
                if (rc < 0)
                    return rc;
                start = stk__now_ns(); /* 1: every worker moves; 0: one replaced */
                stk__pool_note_progress(&l->pool, start);
                continue;
            }
            if (l->cfg.timeout_ms - el < (uint64_t)wait_ms)
                wait_ms = (int)(l->cfg.timeout_ms - el);
        }
        if (now >= stall.next)
            snprintf(what, sizeof what, "batch %" PRIu64 " of epoch %" PRIu64, k, l->epoch);
        wait_ms = stall_tick(l, &stall, now, what, wait_ms);
        /* After saying which task wakes us, look again at that task (and
         * k): it may have finished before the worker could see what we
         * wait for, and then no wake-up comes for it. */
        uint32_t t = wake_slot(l, k);
        if (stk__test_wait_race_us) {
            struct timespec ts = {0, (long)stk__test_wait_race_us * 1000};
            nanosleep(&ts, NULL);
        }
        stk__ring_main_waits(&l->ring, l->slots[t].gen);
        if (collect(l, s) || l->slots[t].state != SLOT_ISSUED || collect(l, t)) {
            stk__ring_main_waits(&l->ring, 0);
            continue;
        }
        rc = pump(l, wait_ms == INT32_MAX ? -1 : wait_ms);
        stk__ring_main_waits(&l->ring, 0);
        if (rc == 0)
            rc = interrupted(l);
        if (rc)
            return rc;
        now = stk__now_ns();
        if (now - lost_check >= 1000000000ull) {
            lost_check = now;
            rc = recover(l, s, 1);
            if (rc)
                return rc;
        }
    }
    l->wait_ns += stk__now_ns() - t0;
    rc = deliver(l, s, k, b);
    if (rc == 0)
        issue(l);
    return rc ? rc : trial_step(l, 1);
}

void stk_loader_release(stk_loader_t *l, stk_batch_t *b)
{
    if (!l || !b || b->slot >= LY(l)->nslots)
        return;
    if (l->slots[b->slot].state == SLOT_HELD)
        l->slots[b->slot].state = SLOT_FREE;
    b->slot = UINT32_MAX;
    b->size = 0;
    if (l->pool.running && !l->failed)
        issue(l);
}

/* Whether a slot is still being filled, after collecting those done. */
static int any_issued(stk_loader_t *l)
{
    collect_all(l);
    for (uint32_t s = 0; s < LY(l)->nslots; s++)
        if (l->slots[s].state == SLOT_ISSUED)
            return 1;
    return 0;
}

/* Waits until no slot is being filled (their results are dropped). */
static int drain(stk_loader_t *l)
{
    stall_clock_t stall;
    stall_start(l, &stall, stk__now_ns());
    while (l->pool.running && any_issued(l)) {
        int wait_ms = stall_tick(l, &stall, stk__now_ns(), "the end of the batches in flight",
                                 l->cfg.timeout_ms ? (int)l->cfg.timeout_ms : 1000);
        stk__ring_main_waits(&l->ring, STK__WAIT_ANY);
        int rc = any_issued(l) ? pump(l, wait_ms) : 0;
        stk__ring_main_waits(&l->ring, 0);
        if (rc == 0)
            rc = interrupted(l);
        for (uint32_t s = 0; rc == 0 && s < LY(l)->nslots; s++)
            rc = recover(l, s, 0);
        if (rc)
            return rc;
    }
    for (uint32_t s = 0; s < LY(l)->nslots; s++)
        if (l->slots[s].state == SLOT_DONE || l->slots[s].state == SLOT_ISSUED)
            l->slots[s].state = SLOT_FREE;
    return 0;
}

int stk_loader_set_state(stk_loader_t *l, const stk_loader_state_t *st)
{
    if (!l || !st)
        return stk__error(-EINVAL, "stk_loader_set_state: NULL argument");
    if (l->failed)
        return stk__error(l->failed, "%s", l->failmsg);
    /* Already there (set_epoch(0) right after create, or the next epoch
     * asked for twice): keep what is prefetched. */
    if (st->epoch == l->epoch && st->batch == l->next_deliver && st->batch <= l->nbatches)
        return 0;
    int rc = drain(l);
    if (rc)
        return rc;
    rc = stk_batch_sampler_set_epoch(l->bs, st->epoch);
    if (rc)
        return rc;
    l->epoch = st->epoch;
    l->nbatches = stk_batch_sampler_len(l->bs);
    stk__trial_break(&l->trial);
    if (st->batch > l->nbatches)
        return stk__error(-ERANGE, "loader state: batch %" PRIu64 " past the epoch's %" PRIu64,
                          st->batch, l->nbatches);
    l->next_deliver = l->next_issue = st->batch;
    return 0;
}

int stk_loader_set_epoch(stk_loader_t *l, uint64_t epoch)
{
    stk_loader_state_t st = {.epoch = epoch, .batch = 0};
    return stk_loader_set_state(l, &st);
}

void stk_loader_get_state(const stk_loader_t *l, stk_loader_state_t *out)
{
    /* An epoch delivered whole: what comes next is the next epoch's
     * first batch (once it is selected), and a checkpoint taken here
     * says so, as a loop that resumes from it counts epochs. */
    if (l->next_deliver >= l->nbatches) {
        out->epoch = l->epoch + 1;
        out->batch = 0;
        return;
    }
    out->epoch = l->epoch;
    out->batch = l->next_deliver;
}

void stk_loader_get_stats(const stk_loader_t *l, stk_loader_stats_t *o)
{
    memset(o, 0, sizeof *o);
    uint32_t n = l->nworkers ? l->nworkers : 1;
    for (uint32_t i = 0; i < n; i++) {
        stk__wstats_t *w = wstats(l, i);
#define LD(x) atomic_load_explicit(&w->x, memory_order_relaxed)
        o->read.ns += LD(read_ns);
        o->read.bytes += LD(read_bytes);
        o->decode.ns += LD(decode_ns);
        o->decode.bytes += LD(decode_bytes);
        o->augment.ns += LD(augment_ns);
        o->augment.bytes += LD(augment_bytes);
        o->collate.ns += LD(collate_ns);
        o->collate.bytes += LD(collate_bytes);
        o->batches += LD(batches);
        o->samples += LD(samples);
        o->skipped += LD(skipped);
        o->checked += LD(checked);
        if (LD(max_rss_kb) > o->worker_max_rss_kb)
            o->worker_max_rss_kb = LD(max_rss_kb);
        if (LD(max_private_kb) > o->worker_max_private_kb)
            o->worker_max_private_kb = LD(max_private_kb);
        o->worker_cpu_ns += LD(cpu_ns);
        o->worker_cpu_batches += LD(cpu_batches);
#undef LD
        if (i < l->nworkers)
            o->worker_sleeps += stk__ring_sleeps(&l->ring, i);
    }
    o->main_sleeps = l->main_sleeps;
    o->auto_decided = l->auto_workers && l->trial.phase == STK__TRIAL_DONE;
    o->num_workers = l->inline_now && (!l->auto_workers || o->auto_decided) ? 0 : l->nworkers;
    o->wait.ns = l->wait_ns;
    o->wait.bytes = l->wait_bytes;
    o->respawns = l->respawns;
    o->first_batch_ns = l->first_batch_ns;
}

uint32_t stk_loader_worker_pids(const stk_loader_t *l, int *pids, uint32_t n)
{
    for (uint32_t i = 0; i < n && i < l->nworkers; i++)
        pids[i] = l->pool.running ? (int)l->pool.pid[i] : 0;
    return l->nworkers;
}
