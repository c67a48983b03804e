/* SPDX-License-Identifier: MIT */
/* The dataset object (ops + argument blob in a sealed memfd, so that
 * workers forked from the clean fork server can map it) and the built-in
 * in-memory dataset over arrays. */
#define _GNU_SOURCE
#include "loader_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Per-sample stage timing with clock_gettime costs as much as copying a
 * small record on some VMs; the TSC costs a few cycles. Ticks are turned
 * into ns with a ratio measured against the monotonic clock since the
 * first call (per process, so workers calibrate on their own). */
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
uint64_t stk__ticks(void)
{
    return __rdtsc();
}
#else
uint64_t stk__ticks(void)
{
    return stk__now_ns();
}
#endif

double stk__ns_per_tick(void)
{
    static _Thread_local uint64_t t0, n0;
    static _Thread_local pid_t pid;
    uint64_t t = stk__ticks(), n = stk__now_ns();
    if (pid != getpid() || t0 == 0) {
        pid = getpid();
        t0 = t;
        n0 = n;
    }
    /* Too short a baseline: spin ~100 us for a first estimate. */
    while (n - n0 < 100000) {
        t = stk__ticks();
        n = stk__now_ns();
    }
    return t > t0 ? (double)(n - n0) / (double)(t - t0) : 1.0;
}

int stk__dataset_map_args(int fd, size_t len, void **out)
{
    *out = NULL;
    if (len == 0)
        return 0;
    void *p = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return stk__error(-errno, "dataset: mmap of the argument blob (%zu bytes)", len);
    *out = p;
    return 0;
}

int stk_dataset_create(stk_dataset_t **out, const stk_dataset_ops_t *ops, const void *args,
                       size_t args_len)
{
    int rc;
    if (!out || !ops)
        return stk__error(-EINVAL, "stk_dataset_create: NULL argument");
    *out = NULL;
    if (!ops->open || !ops->len || !ops->schema || !ops->max_sample_bytes || !ops->get)
        return stk__error(STK_ECONFIG, "dataset %s: ops lacks a required slot (open, len, schema, "
                          "max_sample_bytes, get)", ops->name ? ops->name : "?");
    if (args_len && !args)
        return stk__error(-EINVAL, "stk_dataset_create: args is NULL with args_len %zu", args_len);
    stk_dataset_t *ds = calloc(1, sizeof *ds);
    if (!ds)
        return stk__error(-ENOMEM, "dataset: out of memory");
    ds->ops = ops;
    ds->args_fd = -1;
    ds->args_len = args_len;
    ds->io = STK_IO_AUTO;
    /* A memfd, not a heap copy: workers forked from the fork server (which
     * predates this dataset) map the same pages instead of copying. */
    ds->args_fd = memfd_create("stoker-dataset", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (ds->args_fd < 0) {
        rc = stk__error(-errno, "dataset: memfd_create");
        goto fail;
    }
    if (args_len) {
        /* Written, not mapped and copied: for a blob of megabytes (a
         * shard set's index) that saves a page fault per page. */
        size_t done = 0;
        while (done < args_len) {
            ssize_t k = pwrite(ds->args_fd, (const char *)args + done, args_len - done, (off_t)done);
            if (k < 0 && errno == EINTR)
                continue;
            if (k <= 0) {
                rc = stk__error(k < 0 ? -errno : -EIO, "dataset: writing %zu bytes to the memfd",
                                args_len);
                goto fail;
            }
            done += (size_t)k;
        }
        /* Workers trust the blob; sealing makes it immutable. */
        fcntl(ds->args_fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL);
        rc = stk__dataset_map_args(ds->args_fd, args_len, &ds->args);
        if (rc)
            goto fail;
    }
    rc = ops->open(ds->args, args_len, UINT32_MAX, &ds->inst);
    if (rc) {
        ds->inst = NULL;
        goto fail;
    }
    ds->len = ops->len(ds->inst);
    rc = ops->schema(ds->inst, &ds->schema);
    if (rc)
        goto fail;
    if (ds->schema.nfields == 0 || ds->schema.nfields > STK_MAX_FIELDS) {
        rc = stk__error(STK_ECONFIG, "dataset %s: schema has %u fields", ops->name ? ops->name : "?",
                        ds->schema.nfields);
        goto fail;
    }
    ds->max_sample = ops->max_sample_bytes(ds->inst);
    if (ds->len == 0) {
        rc = stk__error(STK_EEMPTY, "dataset %s has no samples", ops->name ? ops->name : "?");
        goto fail;
    }
    ds->buf = malloc(ds->max_sample ? ds->max_sample : 1);
    if (!ds->buf) {
        rc = stk__error(-ENOMEM, "dataset: sample buffer of %zu bytes", ds->max_sample);
        goto fail;
    }
    *out = ds;
    return 0;
fail:
    stk_dataset_destroy(&ds);
    return rc;
}

void stk_dataset_destroy(stk_dataset_t **pds)
{
    if (!pds || !*pds)
        return;
    stk_dataset_t *ds = *pds;
    if (ds->inst && ds->ops->close)
        ds->ops->close(ds->inst);
    if (ds->args)
        munmap(ds->args, ds->args_len);
    if (ds->args_fd >= 0)
        close(ds->args_fd);
    free(ds->buf);
    free(ds);
    *pds = NULL;
}

uint64_t stk_dataset_len(const stk_dataset_t *ds)
{
    return ds ? ds->len : 0;
}

const stk_schema_t *stk_dataset_schema(const stk_dataset_t *ds)
{
    return ds ? &ds->schema : NULL;
}

stk_io_mode_t stk_dataset_io_mode(const stk_dataset_t *ds)
{
    return ds ? ds->io : STK_IO_AUTO;
}

int stk_dataset_get(stk_dataset_t *ds, uint64_t index, stk_record_t *rec)
{
    stk_dataset_stats_t st;
    if (!ds || !rec)
        return stk__error(-EINVAL, "stk_dataset_get: NULL argument");
    if (index >= ds->len)
        return stk__error(-ERANGE, "dataset %s: index %llu out of range (len %llu)", ds->ops->name,
                          (unsigned long long)index, (unsigned long long)ds->len);
    memset(&st, 0, sizeof st);
    return ds->ops->get(ds->inst, index, ds->buf, ds->max_sample, rec, &st);
}

/* ---- In-memory dataset -------------------------------------------- */

/* Blob: header, then each field's n samples, 64-byte aligned. */
typedef struct mem_hdr {
    uint64_t n;
    stk_schema_t schema;
    uint64_t off[STK_MAX_FIELDS];
    uint64_t bytes[STK_MAX_FIELDS];
} mem_hdr_t;

typedef struct mem_inst {
    const mem_hdr_t *h;
    const unsigned char *base;
} mem_inst_t;

static int mem_open(const void *args, size_t len, uint32_t worker, void **inst)
{
    (void)worker;
    if (len < sizeof(mem_hdr_t))
        return stk__error(STK_EDATA, "memory dataset: blob of %zu bytes is too short", len);
    mem_inst_t *m = calloc(1, sizeof *m);
    if (!m)
        return stk__error(-ENOMEM, "memory dataset: out of memory");
    m->h = args;
    m->base = args;
    *inst = m;
    return 0;
}

static void mem_close(void *inst)
{
    free(inst);
}

static uint64_t mem_len(void *inst)
{
    return ((mem_inst_t *)inst)->h->n;
}

static int mem_schema(void *inst, stk_schema_t *out)
{
    *out = ((mem_inst_t *)inst)->h->schema;
    return 0;
}

static size_t mem_max_sample(void *inst)
{
    const mem_hdr_t *h = ((mem_inst_t *)inst)->h;
    size_t s = 0;
    for (uint32_t f = 0; f < h->schema.nfields; f++)
        s += h->bytes[f];
    return s;
}

/* Zero-copy: the record points into the shared mapping. */
static int mem_get(void *inst, uint64_t index, void *buf, size_t cap, stk_record_t *rec,
                   stk_dataset_stats_t *st)
{
    const mem_inst_t *m = inst;
    const mem_hdr_t *h = m->h;
    (void)buf;
    (void)cap;
    if (index >= h->n)
        return stk__error(-ERANGE, "memory dataset: index %llu out of range (len %llu)",
                          (unsigned long long)index, (unsigned long long)h->n);
    rec->nfields = h->schema.nfields;
    for (uint32_t f = 0; f < h->schema.nfields; f++) {
        rec->data[f] = m->base + h->off[f] + index * h->bytes[f];
        rec->bytes[f] = h->bytes[f];
        rec->var_extent[f] = -1;
        st->read.bytes += h->bytes[f];
    }
    return 0;
}

static const stk_dataset_ops_t mem_ops = {
    .name = "memory",
    .open = mem_open,
    .close = mem_close,
    .len = mem_len,
    .schema = mem_schema,
    .max_sample_bytes = mem_max_sample,
    .get = mem_get,
};

static size_t fixed_field_bytes(const stk_field_t *f, int *var)
{
    size_t b = stk_dtype_size(f->dtype);
    *var = 0;
    for (uint32_t d = 0; d < f->ndim; d++) {
        if (f->shape[d] < 0) {
            *var = 1;
            return 0;
        }
        b *= (size_t)f->shape[d];
    }
    return b;
}

int stk_dataset_memory_create(stk_dataset_t **out, const stk_schema_t *schema,
                              const void *const *fields, uint64_t n)
{
    if (!out || !schema || !fields)
        return stk__error(-EINVAL, "stk_dataset_memory_create: NULL argument");
    *out = NULL;
    if (schema->nfields == 0 || schema->nfields > STK_MAX_FIELDS)
        return stk__error(STK_ECONFIG, "memory dataset: schema has %u fields", schema->nfields);
    mem_hdr_t h;
    memset(&h, 0, sizeof h);
    h.n = n;
    h.schema = *schema;
    size_t off = (sizeof h + 63) & ~(size_t)63;
    for (uint32_t f = 0; f < schema->nfields; f++) {
        int var;
        size_t b = fixed_field_bytes(&schema->fields[f], &var);
        if (var || b == 0)
            return stk__error(STK_ECONFIG, "memory dataset: field %s must have a fixed shape and a "
                              "valid dtype", schema->fields[f].name);
        if (!fields[f] && n)
            return stk__error(-EINVAL, "memory dataset: field %s has no data", schema->fields[f].name);
        h.off[f] = off;
        h.bytes[f] = b;
        off = (off + b * n + 63) & ~(size_t)63;
    }
    unsigned char *blob = calloc(1, off);
    if (!blob)
        return stk__error(-ENOMEM, "memory dataset: %zu bytes", off);
    memcpy(blob, &h, sizeof h);
    for (uint32_t f = 0; f < schema->nfields; f++)
        if (n)
            memcpy(blob + h.off[f], fields[f], h.bytes[f] * n);
    int rc = stk_dataset_create(out, &mem_ops, blob, off);
    free(blob);
    return rc;
}
