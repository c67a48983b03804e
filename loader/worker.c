/* SPDX-License-Identifier: MIT */
/* Filling one slot of the arena: load each sample of the batch (one
 * get_batch call when the dataset has one), augment the image field and
 * collate every field straight into its place in the slot; then the worker
 * process loop around it. Inline mode (num_workers 0) uses the same
 * filler, so batches are bit-identical either way. */
#define _GNU_SOURCE
#include "loader_internal.h"
#include "ring.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

struct stk__filler {
    stk__worker_spec_t spec;
    const stk__layout_t *L;
    const stk_dataset_ops_t *ops;
    void *inst;
    stk_augment_t *aug;
    void *aug_scratch;
    size_t aug_in_bytes;
    void *buf;              /* sample buffer for ops->get */
    size_t cap;
    unsigned char *tmp;     /* one sample of the largest var field */
    unsigned char *bad;     /* per position: record skipped */
    stk__wstats_t *ws;
    /* the batch being filled */
    unsigned char *slot;
    const uint64_t *idx;
    int64_t *lens;
    uint64_t epoch;
    uint64_t aug_ns, aug_bytes, col_ns, col_bytes, skipped; /* times in ticks until the end */
};

int stk__filler_create(stk__filler_t **out, const stk__worker_spec_t *spec, void *inst,
                       stk__wstats_t *ws)
{
    int rc;
    stk__filler_t *f = calloc(1, sizeof *f);
    if (!f)
        return stk__error(-ENOMEM, "worker: out of memory");
    f->spec = *spec;
    f->L = &f->spec.layout;
    f->ops = spec->ops;
    f->inst = inst;
    f->ws = ws;
    f->cap = 0;
    size_t maxvar = 0;
    for (uint32_t k = 0; k < f->L->nfields; k++)
        if (f->L->var_dim[k] >= 0 && f->L->field_stride[k] > maxvar)
            maxvar = f->L->field_stride[k];
    if (f->L->aug_field >= 0) {
        rc = stk_augment_create(&f->aug, spec->augment, &spec->aug_in, 0);
        if (rc)
            goto fail;
        size_t sb = stk_augment_scratch_bytes(f->aug);
        f->aug_scratch = malloc(sb ? sb : 1);
        f->aug_in_bytes = (size_t)spec->aug_in.c * spec->aug_in.h * spec->aug_in.w;
        if (!f->aug_scratch) {
            rc = stk__error(-ENOMEM, "worker: augment scratch of %zu bytes", sb);
            goto fail;
        }
    }
    f->tmp = malloc(maxvar ? maxvar : 1);
    f->bad = malloc(f->L->batch_size ? f->L->batch_size : 1);
    if (!f->tmp || !f->bad) {
        rc = stk__error(-ENOMEM, "worker: out of memory");
        goto fail;
    }
    *out = f;
    return 0;
fail:
    stk__filler_destroy(&f);
    return rc;
}

void stk__filler_destroy(stk__filler_t **pf)
{
    if (!pf || !*pf)
        return;
    stk__filler_t *f = *pf;
    stk_augment_destroy(&f->aug);
    free(f->aug_scratch);
    free(f->buf);
    free(f->tmp);
    free(f->bad);
    free(f);
    *pf = NULL;
}

/* Writes sample i's fields into their places in the slot. */
static int sink(void *ctx, size_t i, int status, const stk_record_t *rec)
{
    stk__filler_t *f = ctx;
    const stk__layout_t *L = f->L;
    if (status < 0) {
        if (status == STK_EDATA && f->spec.skip_corrupt) {
            f->bad[i] = 1;
            f->skipped++;
            return 0;
        }
        return status;
    }
    if (rec->nfields != L->nfields)
        return stk__error(STK_ESHAPE, "sample %llu has %u fields, the schema %u",
                          (unsigned long long)f->idx[i], rec->nfields, L->nfields);
    for (uint32_t k = 0; k < L->nfields; k++) {
        unsigned char *dst = f->slot + L->field_off[k] + i * L->field_stride[k];
        if ((int32_t)k == L->aug_field) {
            if (rec->bytes[k] != f->aug_in_bytes)
                return stk__error(STK_ESHAPE, "sample %llu: field %s has %zu bytes, augment "
                                  "expects %zu", (unsigned long long)f->idx[i], L->out[k].name,
                                  rec->bytes[k], f->aug_in_bytes);
            uint64_t a0 = stk__ticks();
            int rc = stk_augment_apply(f->aug, rec->data[k], dst, f->aug_scratch,
                                       f->spec.loader_seed, f->epoch, f->idx[i]);
            f->aug_ns += stk__ticks() - a0;
            f->aug_bytes += L->field_stride[k];
            if (rc)
                return stk__error_prefix(rc, "augment of sample %llu", (unsigned long long)f->idx[i]);
            continue;
        }
        if (L->var_dim[k] < 0) {
            if (rec->bytes[k] != L->field_stride[k])
                return stk__error(STK_ESHAPE, "sample %llu: field %s has %zu bytes, expected %zu",
                                  (unsigned long long)f->idx[i], L->out[k].name, rec->bytes[k],
                                  L->field_stride[k]);
        } else {
            int64_t e = rec->var_extent[k];
            if (e < 0 || rec->bytes[k] > L->field_stride[k] ||
                rec->bytes[k] != (size_t)e * L->field_unit[k])
                return stk__error(STK_ESHAPE, "sample %llu: variable field %s has %zu bytes for "
                                  "extent %lld (room %zu)", (unsigned long long)f->idx[i],
                                  L->out[k].name, rec->bytes[k], (long long)e, L->field_stride[k]);
            f->lens[(size_t)k * L->batch_size + i] = e;
        }
        memcpy(dst, rec->data[k], rec->bytes[k]);
        f->col_bytes += rec->bytes[k];
    }
    return 0;
}

/* Drops skipped rows, then pads variable fields to the batch's longest. */
static uint64_t finish(stk__filler_t *f, uint64_t n, stk__slot_hdr_t *h)
{
    const stk__layout_t *L = f->L;
    uint64_t *idx = (uint64_t *)(f->slot + L->indices_off);
    uint64_t d = n;
    if (f->skipped) {
        d = 0;
        for (uint64_t i = 0; i < n; i++) {
            if (f->bad[i])
                continue;
            if (d != i) {
                idx[d] = idx[i];
                for (uint32_t k = 0; k < L->nfields; k++) {
                    unsigned char *b = f->slot + L->field_off[k];
                    memmove(b + d * L->field_stride[k], b + i * L->field_stride[k], L->field_stride[k]);
                    f->lens[(size_t)k * L->batch_size + d] = f->lens[(size_t)k * L->batch_size + i];
                }
            }
            d++;
        }
    }
    for (uint32_t k = 0; k < L->nfields; k++) {
        h->maxlen[k] = -1;
        if (L->var_dim[k] < 0)
            continue;
        const int64_t *len = f->lens + (size_t)k * L->batch_size;
        int64_t maxlen = 0;
        for (uint64_t i = 0; i < d; i++)
            if (len[i] > maxlen)
                maxlen = len[i];
        h->maxlen[k] = maxlen;
        /* Sample shape [outer..., L, inner...]: outer blocks of L*unit
         * bytes become blocks of maxlen*unit. Rows only move down, and
         * row i's new place ends before row i+1's old one starts. */
        size_t outer = 1;
        for (int dd = 0; dd < L->var_dim[k]; dd++)
            outer *= (size_t)L->out[k].shape[dd];
        size_t unit = L->field_unit[k] / outer;  /* bytes per step per outer block */
        size_t ns = outer * (size_t)maxlen * unit;
        unsigned char *b = f->slot + L->field_off[k];
        for (uint64_t i = 0; i < d; i++) {
            size_t li = (size_t)len[i] * unit;
            unsigned char *src = b + i * L->field_stride[k], *dst = b + i * ns;
            if (outer == 1) {
                memmove(dst, src, li);
            } else {
                memcpy(f->tmp, src, outer * li);
                for (size_t o = 0; o < outer; o++) {
                    memcpy(dst + o * maxlen * unit, f->tmp + o * li, li);
                    memset(dst + o * maxlen * unit + li, 0, ns / outer - li);
                }
                continue;
            }
            memset(dst + li, 0, ns - li);
        }
    }
    return d;
}

int stk__filler_run(stk__filler_t *f, void *slot, uint64_t epoch)
{
    const stk__layout_t *L = f->L;
    stk__slot_hdr_t *h = slot;
    stk_dataset_stats_t st;
    int rc = 0;
    uint64_t n = h->n;
    memset(&st, 0, sizeof st);
    f->slot = slot;
    f->idx = (const uint64_t *)(f->slot + L->indices_off);
    f->lens = (int64_t *)(f->slot + L->lengths_off);
    f->epoch = epoch;
    f->aug_ns = f->aug_bytes = f->col_ns = f->col_bytes = f->skipped = 0;
    memset(f->bad, 0, n);
    /* Collate time is what the batch took beyond the dataset's own read
     * and decode times and the augment: two clock reads per batch instead
     * of two per sample (about 12 ns each here; a raw Fashion-MNIST record
     * costs 300-400 ns in all). */
    uint64_t b0 = stk__ticks();
    if (f->ops->get_batch) {
        rc = f->ops->get_batch(f->inst, f->idx, n, sink, f, &st);
    } else {
        if (!f->buf) {
            size_t cap = f->ops->max_sample_bytes(f->inst);
            f->buf = malloc(cap ? cap : 1);
            if (!f->buf)
                return stk__error(-ENOMEM, "worker: sample buffer of %zu bytes", cap);
            f->cap = cap;
        }
        /* get() reports its own stage times when it has them (shards);
         * otherwise the time it takes counts as reading. */
        uint64_t get_ticks = 0, own_ns = st.read.ns + st.decode.ns;
        for (uint64_t i = 0; i < n && rc == 0; i++) {
            stk_record_t rec;
            uint64_t t0 = stk__ticks();
            int g = f->ops->get(f->inst, f->idx[i], f->buf, f->cap, &rec, &st);
            get_ticks += stk__ticks() - t0;
            rc = sink(f, i, g, g ? NULL : &rec);
        }
        if (st.read.ns + st.decode.ns == own_ns)
            st.read.ns += (uint64_t)((double)get_ticks * stk__ns_per_tick());
    }
    if (rc == 0)
        h->delivered = finish(f, n, h);
    double tick = stk__ns_per_tick();
    double all_ns = (double)(stk__ticks() - b0) * tick;
    f->aug_ns = (uint64_t)((double)f->aug_ns * tick);
    double rest = all_ns - (double)st.read.ns - (double)st.decode.ns - (double)f->aug_ns;
    f->col_ns = rest > 0 ? (uint64_t)rest : 0;
    stk__wstats_t *w = f->ws;
    atomic_fetch_add_explicit(&w->read_ns, st.read.ns, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->read_bytes, st.read.bytes, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->decode_ns, st.decode.ns, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->decode_bytes, st.decode.bytes, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->augment_ns, f->aug_ns, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->augment_bytes, f->aug_bytes, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->collate_ns, f->col_ns, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->collate_bytes, f->col_bytes, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->skipped, f->skipped, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->checked, st.checked, memory_order_relaxed);
    if (rc == 0) {
        atomic_fetch_add_explicit(&w->batches, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&w->samples, h->delivered, memory_order_relaxed);
    }
    return rc;
}

/* ---- The worker process ----------------------------------------- */

static void send_done(int sock, uint32_t slot, int status, uint64_t epoch, uint64_t batch)
{
    stk__done_msg_t m;
    memset(&m, 0, sizeof m);
    m.slot = slot;
    m.status = status;
    m.epoch = epoch;
    m.batch = batch;
    if (status)
        strncpy(m.msg, stk_error_message(), sizeof m.msg - 1);
    /* A short message keeps the common case cheap. */
    size_t len = status ? sizeof m : offsetof(stk__done_msg_t, msg);
    ssize_t k;
    do {
        k = send(sock, &m, len, MSG_NOSIGNAL);
    } while (k < 0 && errno == EINTR);
}

/* CPU time (what a batch costs a worker, whatever else the machine runs),
 * peak RSS, and peak private memory: RSS counts every page-cache page of
 * a mapped shard the worker has touched, which over epochs grows toward
 * the data set's size without costing anything; resident minus shared
 * pages is what the worker itself holds. Every 16th batch (and the first):
 * the kernel keeps the RSS peak anyway, and statm is read through a file
 * kept open (pread, ~3 us) instead of fopen, fscanf and fclose (~10 us). */
static void note_rss(stk__wstats_t *w, uint64_t nth)
{
    static int statm = -1;
    if (nth % 16)
        return;
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0) {
        atomic_store_explicit(&w->max_rss_kb, (uint64_t)ru.ru_maxrss, memory_order_relaxed);
        uint64_t cpu = (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000ull +
                       (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000ull;
        atomic_store_explicit(&w->cpu_ns, cpu, memory_order_relaxed);
        atomic_store_explicit(&w->cpu_batches, nth, memory_order_relaxed);
    }
    if (statm < 0)
        statm = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    char buf[128];
    ssize_t n = statm < 0 ? -1 : pread(statm, buf, sizeof buf - 1, 0);
    if (n <= 0)
        return;
    buf[n] = '\0';
    unsigned long long size, resident, shared;
    if (sscanf(buf, "%llu %llu %llu", &size, &resident, &shared) == 3 && resident >= shared) {
        uint64_t kb = (resident - shared) * (uint64_t)(sysconf(_SC_PAGESIZE) / 1024);
        if (kb > atomic_load_explicit(&w->max_private_kb, memory_order_relaxed))
            atomic_store_explicit(&w->max_private_kb, kb, memory_order_relaxed);
    }
}

/* A fresh worker usually waits for its first task (the loader draws the
 * epoch's order after starting it). It spends that wait mapping the arena
 * pages of the slots it will likely fill: in this VM the first touch of a
 * shared page costs about 5 us, so an 800 KB slot filled cold took 1 ms
 * longer than a warm one, all of it added to the time to first batch.
 * MADV_POPULATE_WRITE maps without writing, so a page the loader is
 * filling (the task's indices) keeps its content. Stops as soon as a task
 * is queued. */
static void prefault_slots(const stk__worker_spec_t *spec, unsigned char *arena,
                           const stk__ring_t *ring)
{
#ifdef MADV_POPULATE_WRITE
    const size_t page = 4096, step = 64 * page;
    size_t sb = spec->layout.slot_bytes;
    uint32_t nw = spec->num_workers ? spec->num_workers : 1;
    for (uint32_t s = spec->worker; s < spec->layout.nslots; s += nw) {
        size_t beg = ((size_t)s * sb) & ~(page - 1), end = (size_t)(s + 1) * sb;
        for (size_t o = beg; o < end; o += step) {
            if (stk__ring_queued(ring))
                return;
            size_t len = end - o < step ? end - o : step;
            if (madvise(arena + o, len, MADV_POPULATE_WRITE) != 0)
                return; /* older kernel: pages come with first use */
        }
    }
#else
    (void)spec, (void)arena, (void)ring;
#endif
}

void stk__worker_main(const stk__worker_spec_t *spec, int sock, int arena_fd, int args_fd,
                      int wake_fd)
{
    void *args = NULL, *inst = NULL;
    stk__filler_t *fl = NULL;
    int rc;
    /* Workers _exit: no atexit handlers or sanitizer leak checks of the
     * program image they were forked from. */
    unsigned char *arena = mmap(NULL, spec->arena_bytes, PROT_READ | PROT_WRITE, MAP_SHARED,
                                arena_fd, 0);
    close(arena_fd);
    if (arena == MAP_FAILED) {
        rc = stk__error(-errno, "worker %u: mmap of the arena", spec->worker);
        send_done(sock, UINT32_MAX, rc, 0, 0);
        _exit(1);
    }
    stk__wstats_t *ws = (stk__wstats_t *)(arena + spec->wstats_off) + spec->worker;
    rc = stk__dataset_map_args(args_fd, spec->args_len, &args);
    close(args_fd);
    if (rc == 0 && spec->worker_init)
        rc = spec->worker_init(spec->worker, spec->seed, spec->init_arg, spec->init_arg_len);
    if (rc == 0)
        rc = spec->ops->open(args, spec->args_len, spec->worker, &inst);
    if (rc == 0 && spec->dshared_bytes)
        spec->ops->attach_shared(inst, arena + spec->dshared_off, spec->dshared_bytes);
    if (rc == 0)
        rc = stk__filler_create(&fl, spec, inst, ws);
    if (rc) {
        stk__error_prefix(rc, "worker %u (pid %d) start", spec->worker, (int)getpid());
        send_done(sock, UINT32_MAX, rc, 0, 0);
        _exit(1);
    }
    stk__ring_t ring;
    stk__ring_attach(&ring, arena + spec->ring_off, spec->ring_cap, spec->num_workers,
                     spec->layout.nslots);
    prefault_slots(spec, arena, &ring);
    uint64_t filled = 0;
    note_rss(ws, filled);
    stk__ring_task_t t;
    uint32_t me = spec->worker;
    while (stk__ring_take(&ring, me, sock, &t) == 0) {
        if (t.cell >= spec->layout.nslots)
            rc = stk__error(-EPROTO, "bad slot %u", t.cell);
        else
            rc = stk__filler_run(fl, arena + (size_t)t.cell * spec->layout.slot_bytes, t.epoch);
        note_rss(ws, ++filled);
        if (rc) {
            /* The report first, then the task given up: main reads
             * reports before it decides a task unheld is lost. */
            stk__error_prefix(rc, "batch %llu", (unsigned long long)t.batch);
            send_done(sock, t.cell, rc, t.epoch, t.batch);
            stk__ring_release(&ring, me);
        } else {
            stk__ring_finish(&ring, me, &t, wake_fd);
        }
    }
    _exit(0);
}
