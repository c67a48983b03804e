/* SPDX-License-Identifier: MIT */
/* The loader's main-process side: arena layout and limits, issuing
 * batches to slots, delivering them in sampler order as views (waiting
 * for workers, timeouts), state and stats. The workers themselves, seen
 * from here, are pool.c's. */
#define _GNU_SOURCE
#include "loader_main.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

const char *stk__cgroup_memory_max_path = "/sys/fs/cgroup/memory.max";
const char *stk__cgroup_memory_current_path = "/sys/fs/cgroup/memory.current";
uint32_t stk__test_wait_race_us;
int stk__test_skip_reissue;

void stk_loader_config_default(stk_loader_config_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->batch_size = 1;
    cfg->prefetch = 2;
    cfg->max_respawns = 8;
    cfg->augment_field = "image";
    cfg->augment_layout = STK_LAYOUT_CHW;
}

/* Records a lasting failure: every later call returns the same. */
int stk__ld_fail(stk_loader_t *l, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(l->failmsg, sizeof l->failmsg, fmt, ap);
    va_end(ap);
    l->failed = code;
    return stk__error(code, "%s", l->failmsg);
}

/* ---- Layout and limits ------------------------------------------- */

static int image_desc(const stk_field_t *fs, stk_layout_t layout, stk_image_desc_t *d)
{
    memset(d, 0, sizeof *d);
    d->dtype = fs->dtype;
    d->layout = layout;
    for (uint32_t i = 0; i < fs->ndim; i++)
        if (fs->shape[i] <= 0)
            return stk__error(STK_ECONFIG, "augment field %s has a variable shape", fs->name);
    if (fs->ndim == 2) {
        d->c = 1;
        d->h = (uint32_t)fs->shape[0];
        d->w = (uint32_t)fs->shape[1];
    } else if (fs->ndim == 3 && layout == STK_LAYOUT_CHW) {
        d->c = (uint32_t)fs->shape[0];
        d->h = (uint32_t)fs->shape[1];
        d->w = (uint32_t)fs->shape[2];
    } else if (fs->ndim == 3) {
        d->h = (uint32_t)fs->shape[0];
        d->w = (uint32_t)fs->shape[1];
        d->c = (uint32_t)fs->shape[2];
    } else {
        return stk__error(STK_ECONFIG, "augment field %s has %u dims (want 2 or 3)", fs->name,
                          fs->ndim);
    }
    return 0;
}

static int make_layout(stk_loader_t *l, uint64_t batch, uint32_t nslots)
{
    stk__layout_t *L = &l->spec.layout;
    const stk_schema_t *sc = &l->ds->schema;
    int rc;
    memset(L, 0, sizeof *L);
    L->batch_size = batch;
    L->nslots = nslots;
    L->nfields = sc->nfields;
    L->aug_field = -1;
    if (l->augment && l->augment[0]) {
        int k = -1;
        for (uint32_t f = 0; f < sc->nfields; f++)
            if (strcmp(sc->fields[f].name, l->augment_field) == 0)
                k = (int)f;
        if (k < 0)
            return stk__error(STK_ECONFIG, "augment_field: no field \"%s\" in the dataset",
                              l->augment_field);
        rc = image_desc(&sc->fields[k], l->cfg.augment_layout, &l->spec.aug_in);
        if (rc)
            return rc;
        if (strlen(l->augment) >= sizeof l->spec.augment)
            return stk__error(STK_ECONFIG, "augment: spec longer than %zu bytes",
                              sizeof l->spec.augment - 1);
        strcpy(l->spec.augment, l->augment);
        L->aug_field = k;
    }
    size_t off = align_up(sizeof(stk__slot_hdr_t), 64);
    L->indices_off = off;
    off = align_up(off + batch * sizeof(uint64_t), 64);
    L->lengths_off = off;
    off = align_up(off + (size_t)sc->nfields * batch * sizeof(int64_t), 64);
    for (uint32_t k = 0; k < sc->nfields; k++) {
        const stk_field_t *fs = &sc->fields[k];
        stk_batch_field_t *o = &L->out[k];
        memcpy(o->name, fs->name, sizeof o->name);
        L->var_dim[k] = -1;
        o->var_dim = -1;
        if ((int)k == L->aug_field) {
            stk_augment_t *aug = NULL;
            rc = stk_augment_create(&aug, l->augment, &l->spec.aug_in);
            if (rc)
                return stk__error_prefix(rc, "augment");
            stk_image_desc_t od;
            stk_augment_output(aug, &od);
            L->field_stride[k] = stk_augment_output_bytes(aug);
            stk_augment_destroy(&aug);
            o->dtype = od.dtype;
            o->ndim = 3;
            o->shape[0] = od.c;
            o->shape[1] = od.h;
            o->shape[2] = od.w;
        } else {
            size_t esz = stk_dtype_size(fs->dtype);
            if (esz == 0 || fs->ndim > STK_MAX_DIMS)
                return stk__error(STK_ECONFIG, "field %s: bad dtype or rank", fs->name);
            o->dtype = fs->dtype;
            o->ndim = fs->ndim;
            size_t unit = esz;
            for (uint32_t d = 0; d < fs->ndim; d++) {
                o->shape[d] = fs->shape[d];
                if (fs->shape[d] < 0) {
                    if (L->var_dim[k] >= 0)
                        return stk__error(STK_ECONFIG, "field %s: more than one variable dim",
                                          fs->name);
                    L->var_dim[k] = (int32_t)d;
                    o->var_dim = (int)d + 1;
                } else {
                    unit *= (size_t)fs->shape[d];
                }
            }
            if (L->var_dim[k] >= 0) {
                /* Room for the longest sample the dataset can hold. */
                size_t maxext = unit ? l->ds->max_sample / unit : 0;
                L->field_unit[k] = unit;
                L->field_stride[k] = align_up(maxext * unit, 8);
            } else {
                L->field_stride[k] = unit;
            }
        }
        L->field_off[k] = off;
        off = align_up(off + batch * L->field_stride[k], 64);
    }
    L->slot_bytes = align_up(off, 4096);
    return 0;
}

static long count_dir(const char *path)
{
    DIR *d = opendir(path);
    long n = 0;
    if (!d)
        return 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static int read_u64_file(const char *path, uint64_t *v, int *is_max)
{
    FILE *f = fopen(path, "re");
    char buf[64];
    *is_max = 0;
    if (!f)
        return -1;
    char *ok = fgets(buf, sizeof buf, f);
    fclose(f);
    if (!ok)
        return -1;
    if (strncmp(buf, "max", 3) == 0) {
        *is_max = 1;
        return 0;
    }
    *v = strtoull(buf, NULL, 10);
    return 0;
}

/* What would make workers fail later, checked now with one message. */
static int check_limits(stk_loader_t *l)
{
    struct rlimit rl;
    uint64_t per_worker = l->ds->ops->open_fds ? l->ds->ops->open_fds(l->ds->inst) : 0;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        /* A worker: its dataset's files, socket, stdio, io_uring. */
        uint64_t need_w = per_worker + 8;
        uint64_t need_m = (uint64_t)count_dir("/proc/self/fd") + l->nworkers + 4;
        if (l->nworkers && need_w > rl.rlim_cur)
            return stk__error(STK_ELIMIT, "RLIMIT_NOFILE is %llu; each worker holds %llu files "
                              "of the dataset open and needs %llu (raise it with ulimit -n)",
                              (unsigned long long)rl.rlim_cur, (unsigned long long)per_worker,
                              (unsigned long long)need_w);
        if (need_m > rl.rlim_cur)
            return stk__error(STK_ELIMIT, "RLIMIT_NOFILE is %llu; the main process needs %llu "
                              "descriptors (open ones plus %u workers)",
                              (unsigned long long)rl.rlim_cur, (unsigned long long)need_m,
                              l->nworkers);
    }
    if (l->cfg.pin && !l->cfg.pin_no_memlock && getrlimit(RLIMIT_MEMLOCK, &rl) == 0 &&
        rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur < l->arena_bytes)
        return stk__error(STK_ELIMIT, "RLIMIT_MEMLOCK is %llu bytes; pinning the batch arena "
                          "needs %zu bytes (raise it with ulimit -l, or do not pin)",
                          (unsigned long long)rl.rlim_cur, l->arena_bytes);
    uint64_t max = 0, cur = 0;
    int is_max = 1, cur_max = 0;
    if (read_u64_file(stk__cgroup_memory_max_path, &max, &is_max) == 0 && !is_max) {
        if (read_u64_file(stk__cgroup_memory_current_path, &cur, &cur_max) != 0 || cur_max)
            cur = 0;
        if (cur + l->arena_bytes > max)
            return stk__error(STK_ELIMIT, "cgroup memory.max is %llu bytes (%llu in use); the "
                              "batch arena needs %zu more (lower batch_size, prefetch or "
                              "num_workers)", (unsigned long long)max, (unsigned long long)cur,
                              l->arena_bytes);
    }
    return 0;
}

/* Puts batch k into free slot s: its indices into the slot header, and
 * (with workers) its task into the queue, for any worker to take. */
static int issue_one(stk_loader_t *l, uint32_t s, uint64_t k)
{
    const stk__layout_t *L = LY(l);
    unsigned char *m = slot_mem(l, s);
    stk__slot_hdr_t *h = (stk__slot_hdr_t *)m;
    size_t n = 0;
    int rc = stk_batch_sampler_get(l->bs, k, (uint64_t *)(m + L->indices_off), &n);
    if (rc)
        return stk__ld_fail(l, rc, "sampler: batch %" PRIu64 ": %s", k, stk_error_message());
    h->epoch = l->epoch;
    h->batch = k;
    h->n = n;
    h->delivered = 0;
    l->slots[s].state = SLOT_ISSUED;
    l->slots[s].batch = k;
    l->slots[s].worker = 0;
    l->slots[s].status = 0;
    l->slot_of[k % L->nslots] = s;
    if (l->nworkers)
        stk__ld_send_task(l, s);
    return 0;
}

/* Fills free slots with the next batches, as far as slots allow. */
int stk__ld_issue(stk_loader_t *l)
{
    const stk__layout_t *L = LY(l);
    uint32_t s = 0;
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
    if (l->nworkers && l->running)
        stk__ld_wake_workers(l);
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
    if (cfg->num_workers > 1024)
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
    l->nworkers = cfg->num_workers;
    if (l->cfg.prefetch == 0)
        l->cfg.prefetch = 2;
    l->augment = strdup(cfg->augment ? cfg->augment : "");
    l->augment_field = strdup(cfg->augment_field ? cfg->augment_field : "image");
    if (!l->augment || !l->augment_field) {
        rc = stk__error(-ENOMEM, "loader: out of memory");
        goto fail;
    }
    l->cfg.augment = l->augment;
    l->cfg.augment_field = l->augment_field;

    uint64_t batch = cfg->batch_sampler ? stk_batch_sampler_batch_size(cfg->batch_sampler)
                                        : cfg->batch_size;
    uint32_t nslots = l->nworkers ? l->nworkers * l->cfg.prefetch : l->cfg.prefetch;
    rc = make_layout(l, batch, nslots);
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
    l->spec.queue_off = align_up(l->spec.wstats_off + nstats * sizeof(stk__wstats_t), 64);
    l->spec.wctl_off = align_up(l->spec.queue_off + sizeof(stk__queue_t) +
                                nslots * sizeof(stk__task_t), 64);
    l->spec.dshared_off = align_up(l->spec.wctl_off + nstats * sizeof(stk__wctl_t), 64);
    if (ds->ops->shared_bytes && ds->ops->attach_shared)
        l->spec.dshared_bytes = ds->ops->shared_bytes(ds->inst);
    l->arena_bytes = align_up(l->spec.dshared_off + l->spec.dshared_bytes, 4096);
    l->spec.arena_bytes = l->arena_bytes;

    rc = check_limits(l);
    if (rc)
        goto fail;
    /* memfd, not /dev/shm: nothing named to leak on a crash, and the
     * /dev/shm size limit of containers does not apply. */
    l->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (l->wake_fd < 0) {
        rc = stk__error(-errno, "loader: eventfd");
        goto fail;
    }
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
    l->slots = calloc(nslots, sizeof *l->slots);
    l->slot_of = calloc(nslots, sizeof *l->slot_of);
    l->w = calloc(nstats, sizeof *l->w);
    l->spawn_ids = calloc(nstats, sizeof *l->spawn_ids);
    l->spawn_pids = calloc(nstats, sizeof *l->spawn_pids);
    l->pfd = calloc(nstats + 1, sizeof *l->pfd);
    if (!l->slots || !l->slot_of || !l->w || !l->pfd || !l->spawn_ids || !l->spawn_pids) {
        rc = stk__error(-ENOMEM, "loader: out of memory");
        goto fail;
    }
    for (uint32_t i = 0; i < nstats; i++)
        l->w[i].sock = -1;
    if (l->nworkers == 0) {
        l->spec.worker = 0;
        l->spec.seed = stk__ld_worker_seed(l, 0);
        if (cfg->worker_init) {
            rc = cfg->worker_init(0, l->spec.seed, l->spec.init_arg, l->spec.init_arg_len);
            if (rc)
                goto fail;
        }
        rc = stk__filler_create(&l->inline_fill, &l->spec, ds->inst, wstats(l, 0));
        if (rc)
            goto fail;
        if (l->spec.dshared_bytes) {
            ds->ops->attach_shared(ds->inst, l->arena + l->spec.dshared_off, l->spec.dshared_bytes);
            l->attached = 1;
        }
    }
    /* Workers start now, before the sampler draws the epoch's order, so
     * that the server's forks and their start (opening the dataset) overlap
     * it; a worker that cannot start is reported by the first next. */
    rc = stk__ld_start_workers(l, 0, 1);
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
    rc = l->nworkers ? stk__ld_issue(l) : 0;
    if (rc == 0)
        rc = stk__ld_finish_start(l);
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
    stk__ld_spawn_finish(l); /* a create that failed before it did: release the server */
    if (l->w)
        stk__ld_stop_workers(l, l->failed != 0);
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
    free(l->w);
    free(l->spawn_ids);
    free(l->spawn_pids);
    free(l->pfd);
    if (l->own_bs)
        stk_batch_sampler_destroy(&l->bs);
    stk_sampler_destroy(&l->own_sampler);
    free(l->augment);
    free(l->augment_field);
    free(l);
    *pl = NULL;
}

uint64_t stk_loader_len(const stk_loader_t *l)
{
    return l ? l->nbatches : 0;
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
        if (l->nworkers)
            return stk__ld_fail(l, code, "worker %u (pid %d): %s", si->worker, (int)l->w[si->worker].pid,
                        si->msg ? si->msg : stk_strerror(code));
        return stk__ld_fail(l, code, "%s", si->msg ? si->msg : stk_strerror(code));
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
        if (n->state == SLOT_ISSUED && n->batch == k + 1 && !stk__ld_collect(l, s1))
            return s1;
    }
    return s;
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
    if (l->next_deliver >= l->nbatches) {
        if (!l->cfg.persistent_workers)
            stk__ld_stop_workers(l, 0);
        return STK_DONE;
    }
    const stk__layout_t *L = LY(l);
    uint64_t k = l->next_deliver;
    uint64_t t0 = stk__now_ns();
    if (l->nworkers == 0) {
        uint32_t s = 0;
        while (s < L->nslots && l->slots[s].state != SLOT_FREE)
            s++;
        if (s == L->nslots)
            return stk__error(STK_ESTATE, "every slot (%u) is held: release a batch first", L->nslots);
        rc = issue_one(l, s, k);
        if (rc)
            return rc;
        l->next_issue = k + 1;
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
    rc = stk__ld_start_workers(l, 1, 0);
    if (rc)
        return rc;
    rc = stk__ld_issue(l);
    if (rc)
        return rc;
    if (l->next_issue <= k)
        return stk__error(STK_ESTATE, "every slot (%u) is held: release a batch first", L->nslots);
    uint32_t s = l->slot_of[k % L->nslots];
    uint64_t start = stk__now_ns(), lost_check = start;
    stk__ld_note_progress(l, start);
    while (l->slots[s].state == SLOT_ISSUED && !stk__ld_collect(l, s)) {
        int wait_ms = -1;
        if (l->cfg.timeout_ms) {
            uint64_t now = stk__now_ns();
            uint64_t el = (now - start) / 1000000ull;
            if (el >= l->cfg.timeout_ms) {
                int holds = 0;
                uint32_t wi = stk__ld_hung_worker(l, s, now, &holds);
                if (wi == UINT32_MAX) {
                    start = now; /* every worker is moving: wait on */
                    continue;
                }
                const char *what = holds ? "did not deliver it" : "made no progress in that time";
                if (!l->cfg.respawn || l->respawns >= l->cfg.max_respawns)
                    return stk__ld_fail(l, -ETIMEDOUT, "batch %" PRIu64 " of epoch %" PRIu64 " not ready "
                                "after %u ms: worker %u (pid %d) %s", k, l->epoch,
                                l->cfg.timeout_ms, wi, (int)l->w[wi].pid, what);
                /* Hung (or stopped): kill it; what it held goes back in
                 * the queue. */
                char ctx[160];
                snprintf(ctx, sizeof ctx, " after a %u ms timeout on batch %" PRIu64 " (it %s)",
                         l->cfg.timeout_ms, k, what);
                kill(l->w[wi].pid, SIGKILL);
                rc = stk__ld_worker_lost(l, wi, ctx);
                if (rc)
                    return rc;
                start = stk__now_ns();
                stk__ld_note_progress(l, start);
                continue;
            }
            wait_ms = (int)(l->cfg.timeout_ms - el);
        }
        /* After saying which task wakes us, look again at that task (and
         * k): it may have finished before the worker could see what we
         * wait for, and then no wake-up comes for it. */
        uint32_t t = wake_slot(l, k);
        if (stk__test_wait_race_us) {
            struct timespec ts = {0, (long)stk__test_wait_race_us * 1000};
            nanosleep(&ts, NULL);
        }
        stk__ld_set_main_waits(l, l->slots[t].gen);
        if (stk__ld_collect(l, s) || l->slots[t].state != SLOT_ISSUED || stk__ld_collect(l, t)) {
            stk__ld_set_main_waits(l, 0);
            continue;
        }
        /* Capped: should a wake-up ever go missing, the batch is found
         * done a second later instead of never. */
        rc = stk__ld_pump(l, wait_ms < 0 || wait_ms > 1000 ? 1000 : wait_ms, UINT32_MAX);
        stk__ld_set_main_waits(l, 0);
        if (rc)
            return rc;
        uint64_t now = stk__now_ns();
        if (now - lost_check >= 1000000000ull) {
            lost_check = now;
            rc = stk__ld_recover(l, s, 1);
            if (rc)
                return rc;
        }
    }
    l->wait_ns += stk__now_ns() - t0;
    rc = deliver(l, s, k, b);
    if (rc == 0)
        stk__ld_issue(l);
    return rc;
}

void stk_loader_release(stk_loader_t *l, stk_batch_t *b)
{
    if (!l || !b || b->slot >= LY(l)->nslots)
        return;
    if (l->slots[b->slot].state == SLOT_HELD)
        l->slots[b->slot].state = SLOT_FREE;
    b->slot = UINT32_MAX;
    b->size = 0;
    if (l->running && !l->failed)
        stk__ld_issue(l);
}

/* Whether a slot is still being filled, after collecting those done. */
static int any_issued(stk_loader_t *l)
{
    stk__ld_collect_all(l);
    for (uint32_t s = 0; s < LY(l)->nslots; s++)
        if (l->slots[s].state == SLOT_ISSUED)
            return 1;
    return 0;
}

/* Waits until no slot is being filled (their results are dropped). */
static int drain(stk_loader_t *l)
{
    while (l->running && any_issued(l)) {
        stk__ld_set_main_waits(l, STK__WAIT_ANY);
        int rc = any_issued(l) ? stk__ld_pump(l, l->cfg.timeout_ms ? (int)l->cfg.timeout_ms : 1000,
                                              UINT32_MAX)
                               : 0;
        stk__ld_set_main_waits(l, 0);
        for (uint32_t s = 0; rc == 0 && s < LY(l)->nslots; s++)
            rc = stk__ld_recover(l, s, 0);
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
#undef LD
    }
    o->wait.ns = l->wait_ns;
    o->wait.bytes = l->wait_bytes;
    o->respawns = l->respawns;
    o->first_batch_ns = l->first_batch_ns;
}

uint32_t stk_loader_worker_pids(const stk_loader_t *l, int *pids, uint32_t n)
{
    for (uint32_t i = 0; i < n && i < l->nworkers; i++)
        pids[i] = l->running ? (int)l->w[i].pid : 0;
    return l->nworkers;
}
