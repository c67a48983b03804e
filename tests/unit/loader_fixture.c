/* SPDX-License-Identifier: MIT */
/* The datasets and helpers the loader's test programs share (declared in
 * loader_fixture.h): an in-memory image dataset, a user dataset through
 * the vtable with variable-length fields and injectable faults, and
 * reading epochs into checksummed runs. Linked into each test_loader*
 * program rather than kept static in one of them, so that the programs
 * can be split by theme. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <dirent.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "../../loader/loader_internal.h"
#include "../../loader/shard_internal.h"
#include "loader_fixture.h"

void msleep(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

void img_of(uint64_t i, unsigned char *out)
{
    for (int p = 0; p < IMG * IMG; p++)
        out[p] = (unsigned char)(i * 31 + (uint64_t)p * 7);
}

stk_dataset_t *make_mem_ds(uint64_t n)
{
    stk_schema_t sc;
    memset(&sc, 0, sizeof sc);
    sc.nfields = 2;
    strcpy(sc.fields[0].name, "image");
    sc.fields[0].dtype = STK_DTYPE_U8;
    sc.fields[0].ndim = 3;
    sc.fields[0].shape[0] = 1;
    sc.fields[0].shape[1] = IMG;
    sc.fields[0].shape[2] = IMG;
    strcpy(sc.fields[1].name, "label");
    sc.fields[1].dtype = STK_DTYPE_I64;
    sc.fields[1].ndim = 0;
    unsigned char *img = malloc(n * IMG * IMG);
    int64_t *lab = malloc(n * sizeof *lab);
    for (uint64_t i = 0; i < n; i++) {
        img_of(i, img + i * IMG * IMG);
        lab[i] = (int64_t)i;
    }
    const void *fields[2] = {img, lab};
    stk_dataset_t *ds = NULL;
    assert_int_equal(stk_dataset_memory_create(&ds, &sc, fields, n), 0);
    free(img);
    free(lab);
    return ds;
}

typedef struct var_inst {
    var_args_t a;
    uint32_t worker;
} var_inst_t;

static int var_open(const void *args, size_t len, uint32_t worker, void **inst)
{
    if (len != sizeof(var_args_t))
        return STK_EDATA;
    var_inst_t *v = malloc(sizeof *v);
    memcpy(&v->a, args, sizeof v->a);
    v->worker = worker;
    *inst = v;
    return 0;
}

static void var_close(void *inst)
{
    free(inst);
}

static uint64_t var_len(void *inst)
{
    return ((var_inst_t *)inst)->a.n;
}

static int var_schema(void *inst, stk_schema_t *sc)
{
    (void)inst;
    memset(sc, 0, sizeof *sc);
    sc->nfields = 3;
    strcpy(sc->fields[0].name, "label");
    sc->fields[0].dtype = STK_DTYPE_I32;
    strcpy(sc->fields[1].name, "tokens");
    sc->fields[1].dtype = STK_DTYPE_I32;
    sc->fields[1].ndim = 1;
    sc->fields[1].shape[0] = -1;
    strcpy(sc->fields[2].name, "pairs");
    sc->fields[2].dtype = STK_DTYPE_U8;
    sc->fields[2].ndim = 2;
    sc->fields[2].shape[0] = 2;
    sc->fields[2].shape[1] = -1;
    return 0;
}

static size_t var_max(void *inst)
{
    (void)inst;
    return 4 + 9 * 4 + 2 * 9;
}

int64_t var_extent(uint64_t i)
{
    return (int64_t)(i % 9) + 1;
}

static int var_get(void *inst, uint64_t index, void *buf, size_t cap, stk_record_t *rec,
                   stk_dataset_stats_t *st)
{
    var_inst_t *v = inst;
    if ((int64_t)index == v->a.bad)
        return stk__error(STK_EDATA, "var dataset: record %llu is corrupt", (unsigned long long)index);
    if (v->a.sleep_ms)
        msleep(v->a.sleep_ms);
    if (v->a.worker_sleep_ms && v->worker != UINT32_MAX)
        msleep(v->a.worker_sleep_ms);
    if (v->a.jitter_us) {
        struct timespec ts = {0, (long)((index * 2654435761u) % (uint64_t)v->a.jitter_us) * 1000};
        nanosleep(&ts, NULL);
    }
    if ((int64_t)index == v->a.hang &&
        !(v->a.hang_once && access(v->a.hang_marker, F_OK) == 0)) {
        if (v->a.hang_once)
            close(open(v->a.hang_marker, O_CREAT | O_WRONLY, 0600));
        for (;;)
            pause();
    }
    assert_true(cap >= var_max(inst));
    int32_t *lab = buf;
    int32_t *tok = lab + 1;
    int64_t e = var_extent(index);
    unsigned char *pairs = (unsigned char *)(tok + e);
    *lab = (int32_t)index;
    for (int64_t t = 0; t < e; t++) {
        tok[t] = (int32_t)(index * 100 + (uint64_t)t + 1);
        pairs[t] = (unsigned char)(index + (uint64_t)t + 1);
        pairs[e + t] = (unsigned char)(200 + t);
    }
    rec->nfields = 3;
    rec->data[0] = lab;
    rec->bytes[0] = 4;
    rec->var_extent[0] = -1;
    rec->data[1] = tok;
    rec->bytes[1] = (size_t)e * 4;
    rec->var_extent[1] = e;
    rec->data[2] = pairs;
    rec->bytes[2] = (size_t)e * 2;
    rec->var_extent[2] = e;
    st->read.bytes += 4 + (size_t)e * 6;
    return 0;
}

static uint64_t var_fds(void *inst)
{
    return ((var_inst_t *)inst)->a.fds;
}

const stk_dataset_ops_t var_ops = {
    .name = "var",
    .open = var_open,
    .close = var_close,
    .len = var_len,
    .schema = var_schema,
    .max_sample_bytes = var_max,
    .get = var_get,
    .open_fds = var_fds,
};

stk_dataset_t *make_var_ds(uint64_t n, int64_t bad, int sleep_ms)
{
    var_args_t a = {.n = n, .bad = bad, .fds = 0, .sleep_ms = sleep_ms, .hang = -1};
    stk_dataset_t *ds = NULL;
    assert_int_equal(stk_dataset_create(&ds, &var_ops, &a, sizeof a), 0);
    return ds;
}

uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

/* An empty record of n samples' worth of batches. */
run_t fresh_run(uint64_t n)
{
    run_t r;
    memset(&r, 0, sizeof r);
    r.seen = calloc(n, sizeof *r.seen);
    r.sum = 0xcbf29ce484222325ull;
    return r;
}

/* Reads one batch into r (its checksum, and which samples came). */
int take_one(stk_loader_t *l, run_t *r)
{
    stk_batch_t b;
    int rc = stk_loader_next(l, &b);
    if (rc)
        return rc;
    r->sum = fnv(r->sum, &b.number, sizeof b.number);
    r->sum = fnv(r->sum, b.indices, b.size * sizeof *b.indices);
    for (uint32_t f = 0; f < b.nfields; f++) {
        r->sum = fnv(r->sum, b.fields[f].data, b.fields[f].bytes);
        if (b.fields[f].lengths)
            r->sum = fnv(r->sum, b.fields[f].lengths, b.size * sizeof(int64_t));
    }
    for (size_t i = 0; i < b.size; i++)
        r->seen[b.indices[i]]++;
    r->nbatches++;
    r->nsamples += b.size;
    stk_loader_release(l, &b);
    return 0;
}

int drain_epoch(stk_loader_t *l, run_t *r, uint64_t n)
{
    int rc;
    if (!r->seen)
        r->seen = calloc(n, sizeof *r->seen);
    if (!r->sum)
        r->sum = 0xcbf29ce484222325ull;
    while ((rc = take_one(l, r)) == 0) {
    }
    return rc;
}

void assert_each_once(const run_t *r, uint64_t n, int64_t except)
{
    for (uint64_t i = 0; i < n; i++)
        assert_int_equal(r->seen[i], (int64_t)i == except ? 0u : 1u);
}

stk_loader_config_t base_cfg(uint32_t workers, uint32_t prefetch)
{
    stk_loader_config_t c;
    stk_loader_config_default(&c);
    c.batch_size = 16;
    c.shuffle = 1;
    c.seed = 1234;
    c.num_workers = workers;
    c.prefetch = prefetch;
    c.persistent_workers = 1;
    return c;
}

run_t run_epochs(stk_dataset_t *ds, const stk_loader_config_t *c, uint64_t epochs)
{
    stk_loader_t *l = NULL;
    run_t r;
    memset(&r, 0, sizeof r);
    assert_int_equal(stk_loader_create(&l, ds, c), 0);
    for (uint64_t e = 0; e < epochs; e++) {
        assert_int_equal(stk_loader_set_epoch(l, e), 0);
        free(r.seen);
        r.seen = NULL;
        int rc = drain_epoch(l, &r, stk_dataset_len(ds));
        if (rc != STK_DONE)
            fail_msg("epoch %llu: %s: %s", (unsigned long long)e, stk_err_name(rc), stk_error_message());
    }
    stk_loader_destroy(&l);
    assert_null(l);
    return r;
}

/* Warnings the loader logs, kept for the test to read. */
char logged[8192];

void keep_log(stk_log_level_t level, const char *msg, void *user)
{
    (void)level;
    (void)user;
    size_t n = strlen(logged);
    snprintf(logged + n, sizeof logged - n, "%s\n", msg);
}
