/* SPDX-License-Identifier: MIT */
/* loader/: datasets (memory, shard, a user vtable with variable-length
 * fields), batches in sampler order, bit-identical batches for any worker
 * count and prefetch depth, resume, and the failure paths with real
 * processes: killed, stopped and failing workers, corrupt records, limits,
 * SIGTERM of the main process and destroy mid-epoch without leaks. */
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

#if STK_HAVE_IO_URING
#include <liburing.h>
#endif
#include <sys/vfs.h>

#define N_SAMPLES 600
#define IMG 8

static int sanitized(void)
{
    const char *s = getenv("STK_SANITIZED");
    return s && s[0] == '1';
}

static void msleep(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- Datasets used by the tests ------------------------------------ */

static void img_of(uint64_t i, unsigned char *out)
{
    for (int p = 0; p < IMG * IMG; p++)
        out[p] = (unsigned char)(i * 31 + (uint64_t)p * 7);
}

static stk_dataset_t *make_mem_ds(uint64_t n)
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

/* A user dataset through the vtable: a fixed label, a variable-length
 * token field [L] and a variable field [2, L]; index `bad` is corrupt, and
 * `fds` is what it claims to hold open. */
typedef struct var_args {
    uint64_t n;
    int64_t bad;
    uint64_t fds;
    int sleep_ms;  /* per sample, to keep workers busy */
    int jitter_us; /* and up to this much more, varying with the index */
    int64_t hang;  /* a worker reading this index hangs: forever, or once */
    int worker_sleep_ms; /* per sample, in workers only (the creating process is fast) */
    int hang_once; /* with hang_marker: the first to hang creates it, and */
    char hang_marker[128]; /* no worker hangs once it exists */
} var_args_t;

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

static int64_t var_extent(uint64_t i)
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

static const stk_dataset_ops_t var_ops = {
    .name = "var",
    .open = var_open,
    .close = var_close,
    .len = var_len,
    .schema = var_schema,
    .max_sample_bytes = var_max,
    .get = var_get,
    .open_fds = var_fds,
};

static stk_dataset_t *make_var_ds(uint64_t n, int64_t bad, int sleep_ms)
{
    var_args_t a = {.n = n, .bad = bad, .fds = 0, .sleep_ms = sleep_ms, .hang = -1};
    stk_dataset_t *ds = NULL;
    assert_int_equal(stk_dataset_create(&ds, &var_ops, &a, sizeof a), 0);
    return ds;
}

/* ---- Helpers ------------------------------------------------------ */

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

typedef struct run {
    uint64_t sum;
    uint64_t nbatches, nsamples;
    unsigned *seen;     /* per dataset index */
} run_t;

/* Reads the rest of the epoch, checksumming every field and index. */
/* An empty record of n samples' worth of batches. */
static run_t fresh_run(uint64_t n)
{
    run_t r;
    memset(&r, 0, sizeof r);
    r.seen = calloc(n, sizeof *r.seen);
    r.sum = 0xcbf29ce484222325ull;
    return r;
}

/* Reads one batch into r (its checksum, and which samples came). */
static int take_one(stk_loader_t *l, run_t *r)
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

static int drain_epoch(stk_loader_t *l, run_t *r, uint64_t n)
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

static void assert_each_once(const run_t *r, uint64_t n, int64_t except)
{
    for (uint64_t i = 0; i < n; i++)
        assert_int_equal(r->seen[i], (int64_t)i == except ? 0u : 1u);
}

static stk_loader_config_t base_cfg(uint32_t workers, uint32_t prefetch)
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

static run_t run_epochs(stk_dataset_t *ds, const stk_loader_config_t *c, uint64_t epochs)
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

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

static int count_maps(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    int n = 0, c;
    while ((c = fgetc(f)) != EOF)
        n += c == '\n';
    fclose(f);
    return n;
}

/* Live (not zombie) processes whose parent is ppid. */
static int count_children_of(pid_t ppid, int *zombies)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    int n = 0;
    *zombies = 0;
    while ((e = readdir(d))) {
        char path[300], buf[512];
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t k = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[k] = 0;
        char *rp = strrchr(buf, ')');
        char state;
        int pp;
        if (!rp || sscanf(rp + 2, "%c %d", &state, &pp) != 2)
            continue;
        if (pp == ppid) {
            if (state == 'Z')
                (*zombies)++;
            else
                n++;
        }
    }
    closedir(d);
    return n;
}

/* The kernel's state letter of pid. */
static char pid_state(pid_t pid)
{
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t k = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[k] = 0;
    char *rp = strrchr(buf, ')');
    return rp ? rp[2] : 0;
}

/* SIGSTOP, and wait until the process is stopped (delivery is not
 * synchronous with kill). */
static void stop_and_wait(pid_t pid)
{
    assert_int_equal(kill(pid, SIGSTOP), 0);
    for (int i = 0; i < 10000 && pid_state(pid) != 'T'; i++)
        msleep(1);
    assert_int_equal(pid_state(pid), 'T');
}

static int pid_alive(pid_t pid)
{
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t k = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[k] = 0;
    char *rp = strrchr(buf, ')');
    return rp && rp[2] != 'Z' && rp[2] != 'X';
}

/* ---- Tests -------------------------------------------------------- */

static void test_memory_inline(void **state)
{
    (void)state;
    stk_dataset_t *ds = make_mem_ds(95);
    assert_int_equal(stk_dataset_len(ds), 95);
    stk_loader_config_t c = base_cfg(0, 1);
    c.shuffle = 0;
    c.batch_size = 10;
    stk_loader_t *l = NULL;
    assert_int_equal(stk_loader_create(&l, ds, &c), 0);
    assert_int_equal(stk_loader_len(l), 10);
    stk_batch_t b;
    unsigned char img[IMG * IMG];
    for (uint64_t k = 0; k < 10; k++) {
        assert_int_equal(stk_loader_next(l, &b), 0);
        assert_int_equal(b.number, k);
        assert_int_equal(b.size, k == 9 ? 5 : 10);
        assert_int_equal(b.nfields, 2);
        assert_string_equal(b.fields[0].name, "image");
        assert_int_equal(b.fields[0].ndim, 4);
        assert_int_equal(b.fields[0].shape[0], (int64_t)b.size);
        assert_int_equal(b.fields[0].shape[3], IMG);
        assert_int_equal(b.fields[1].ndim, 1);
        assert_null(b.fields[1].lengths);
        for (size_t i = 0; i < b.size; i++) {
            assert_int_equal(b.indices[i], k * 10 + i);
            img_of(k * 10 + i, img);
            assert_memory_equal((unsigned char *)b.fields[0].data + i * IMG * IMG, img, IMG * IMG);
            assert_int_equal(((int64_t *)b.fields[1].data)[i], (int64_t)(k * 10 + i));
        }
        /* One slot: the next batch needs this one back. */
        stk_batch_t b2;
        if (k < 9)
            assert_int_equal(stk_loader_next(l, &b2), STK_ESTATE);
        stk_loader_release(l, &b);
        assert_int_equal(b.size, 0);
    }
    assert_int_equal(stk_loader_next(l, &b), STK_DONE);
    assert_int_equal(stk_loader_next(l, &b), STK_DONE);
    stk_loader_stats_t st;
    stk_loader_get_stats(l, &st);
    assert_int_equal(st.batches, 10);
    assert_int_equal(st.samples, 95);
    assert_true(st.collate.bytes >= 95 * (IMG * IMG + 8));
    assert_int_equal(st.wait.bytes, 95 * (IMG * IMG + 8));
    stk_record_t rec;
    assert_int_equal(stk_dataset_get(ds, 7, &rec), 0);
    assert_int_equal(*(const int64_t *)rec.data[1], 7);
    assert_int_equal(stk_dataset_get(ds, 95, &rec), -ERANGE);
    stk_loader_destroy(&l);
    stk_loader_destroy(&l);
    stk_dataset_destroy(&ds);
    stk_dataset_destroy(&ds);
}

/* Same seed: same bytes for 0, 1, 2, 4 workers and any prefetch depth,
 * with and without augmentation; every index once per epoch. */
static void test_determinism(void **state)
{
    (void)state;
    stk_dataset_t *ds = make_mem_ds(N_SAMPLES);
    static const char *const specs[] = {NULL, "crop:8,pad=2|hflip|normalize:mean=0.5,std=0.25"};
    for (int a = 0; a < 2; a++) {
        uint64_t ref = 0;
        static const uint32_t workers[] = {0, 1, 2, 4};
        static const uint32_t prefetch[] = {1, 3, 2, 1};
        for (int wi = 0; wi < 4; wi++) {
            stk_loader_config_t c = base_cfg(workers[wi], prefetch[wi]);
            c.augment = specs[a];
            run_t r = run_epochs(ds, &c, 2);
            assert_int_equal(r.nsamples, 2 * N_SAMPLES);
            assert_each_once(&r, N_SAMPLES, -1);
            free(r.seen);
            if (wi == 0)
                ref = r.sum;
            else
                assert_true(r.sum == ref);
        }
    }
    stk_dataset_destroy(&ds);
}

static void test_augment_output(void **state)
{
    (void)state;
    stk_dataset_t *ds = make_mem_ds(40);
    stk_loader_config_t c = base_cfg(1, 2);
    c.augment = "normalize:mean=0,std=1";
    stk_loader_t *l = NULL;
    assert_int_equal(stk_loader_create(&l, ds, &c), 0);
    stk_batch_t b;
    assert_int_equal(stk_loader_next(l, &b), 0);
    assert_int_equal(b.fields[0].dtype, STK_DTYPE_F32);
    assert_int_equal(b.fields[0].bytes, b.size * IMG * IMG * 4);
    unsigned char img[IMG * IMG];
    img_of(b.indices[3], img);
    const float *px = (const float *)b.fields[0].data + 3 * IMG * IMG;
    for (int p = 0; p < IMG * IMG; p++)
        assert_true(px[p] > img[p] / 255.0f - 1e-5f && px[p] < img[p] / 255.0f + 1e-5f);
    stk_loader_release(l, &b);
    stk_loader_destroy(&l);
    /* Errors: no such field, a bad spec. */
    c.augment_field = "nope";
    assert_int_equal(stk_loader_create(&l, ds, &c), STK_ECONFIG);
    assert_non_null(strstr(stk_error_message(), "nope"));
    c.augment_field = "image";
    c.augment = "wobble";
    assert_int_equal(stk_loader_create(&l, ds, &c), STK_ECONFIG);
    c.augment_field = "label";
    c.augment = "hflip";
    assert_int_equal(stk_loader_create(&l, ds, &c), STK_ECONFIG);
    stk_dataset_destroy(&ds);
}

static void check_var_batch(const stk_batch_t *b)
{
    const stk_batch_field_t *tok = &b->fields[1], *pairs = &b->fields[2];
    assert_non_null(tok->lengths);
    assert_int_equal(tok->var_dim, 1);
    assert_int_equal(pairs->var_dim, 2);
    int64_t maxlen = 0;
    for (size_t i = 0; i < b->size; i++)
        if (tok->lengths[i] > maxlen)
            maxlen = tok->lengths[i];
    assert_int_equal(tok->shape[1], maxlen);
    assert_int_equal(pairs->shape[1], 2);
    assert_int_equal(pairs->shape[2], maxlen);
    assert_int_equal(tok->bytes, b->size * (size_t)maxlen * 4);
    for (size_t i = 0; i < b->size; i++) {
        uint64_t idx = b->indices[i];
        int64_t e = var_extent(idx);
        assert_int_equal(tok->lengths[i], e);
        assert_int_equal(pairs->lengths[i], e);
        assert_int_equal(((const int32_t *)b->fields[0].data)[i], (int32_t)idx);
        const int32_t *t = (const int32_t *)tok->data + i * (size_t)maxlen;
        const unsigned char *p = (const unsigned char *)pairs->data + i * 2 * (size_t)maxlen;
        for (int64_t j = 0; j < maxlen; j++) {
            assert_int_equal(t[j], j < e ? (int32_t)(idx * 100 + (uint64_t)j + 1) : 0);
            assert_int_equal(p[j], j < e ? (unsigned char)(idx + (uint64_t)j + 1) : 0);
            assert_int_equal(p[maxlen + j], j < e ? (unsigned char)(200 + j) : 0);
        }
    }
}

/* A user vtable with variable-length fields, padded per batch, in
 * workers and inline alike; a corrupt record fails or is skipped. */
static void test_var_fields_and_corrupt(void **state)
{
    (void)state;
    stk_dataset_t *ds = make_var_ds(100, -1, 0);
    uint64_t ref = 0;
    for (uint32_t w = 0; w < 3; w++) {
        stk_loader_config_t c = base_cfg(w, 2);
        c.batch_size = 7;
        stk_loader_t *l = NULL;
        assert_int_equal(stk_loader_create(&l, ds, &c), 0);
        stk_batch_t b;
        uint64_t sum = 0xcbf29ce484222325ull;
        int rc;
        while ((rc = stk_loader_next(l, &b)) == 0) {
            check_var_batch(&b);
            for (uint32_t f = 0; f < 3; f++)
                sum = fnv(sum, b.fields[f].data, b.fields[f].bytes);
            stk_loader_release(l, &b);
        }
        assert_int_equal(rc, STK_DONE);
        stk_loader_destroy(&l);
        if (w == 0)
            ref = sum;
        assert_true(sum == ref);
    }
    stk_dataset_destroy(&ds);

    ds = make_var_ds(100, 37, 0);
    for (uint32_t w = 0; w < 2; w++) {
        stk_loader_config_t c = base_cfg(w * 2, 2);
        c.batch_size = 7;
        run_t r;
        memset(&r, 0, sizeof r);
        stk_loader_t *l = NULL;
        assert_int_equal(stk_loader_create(&l, ds, &c), 0);
        int rc = drain_epoch(l, &r, 100);
        assert_int_equal(rc, STK_EDATA);
        assert_non_null(strstr(stk_error_message(), "record 37"));
        /* The loader stays failed. */
        stk_batch_t b;
        assert_int_equal(stk_loader_next(l, &b), STK_EDATA);
        stk_loader_destroy(&l);
        free(r.seen);

        c.skip_corrupt = 1;
        memset(&r, 0, sizeof r);
        assert_int_equal(stk_loader_create(&l, ds, &c), 0);
        assert_int_equal(drain_epoch(l, &r, 100), STK_DONE);
        assert_each_once(&r, 100, 37);
        stk_loader_stats_t st;
        stk_loader_get_stats(l, &st);
        assert_int_equal(st.skipped, 1);
        assert_int_equal(r.nsamples, 99);
        stk_loader_destroy(&l);
        free(r.seen);
    }
    stk_dataset_destroy(&ds);
}

/* A loader reopened at (epoch, batch) delivers exactly what would have
 * come next. */
static void test_resume(void **state)
{
    (void)state;
    stk_dataset_t *ds = make_mem_ds(N_SAMPLES);
    stk_loader_config_t c = base_cfg(2, 2);
    c.augment = "crop:8,pad=2|hflip";
    /* Reference: epoch 1 from batch 5 to the end. */
    stk_loader_t *l = NULL;
    assert_int_equal(stk_loader_create(&l, ds, &c), 0);
    stk_loader_state_t st = {.epoch = 1, .batch = 5};
    assert_int_equal(stk_loader_set_state(l, &st), 0);
    run_t ref;
    memset(&ref, 0, sizeof ref);
    assert_int_equal(drain_epoch(l, &ref, N_SAMPLES), STK_DONE);
    stk_loader_destroy(&l);

    /* Interrupted run: epoch 1, five batches, save, destroy, reopen. */
    assert_int_equal(stk_loader_create(&l, ds, &c), 0);
    assert_int_equal(stk_loader_set_epoch(l, 1), 0);
    stk_batch_t b;
    for (int k = 0; k < 5; k++) {
        assert_int_equal(stk_loader_next(l, &b), 0);
        stk_loader_release(l, &b);
    }
    stk_loader_get_state(l, &st);
    assert_int_equal(st.epoch, 1);
    assert_int_equal(st.batch, 5);
    stk_loader_destroy(&l);
    c.num_workers = 1;
    assert_int_equal(stk_loader_create(&l, ds, &c), 0);
    assert_int_equal(stk_loader_set_state(l, &st), 0);
    run_t got;
    memset(&got, 0, sizeof got);
    assert_int_equal(drain_epoch(l, &got, N_SAMPLES), STK_DONE);
    assert_true(got.sum == ref.sum);
    assert_int_equal(got.nbatches, ref.nbatches);
    st.batch = 1000;
    assert_int_equal(stk_loader_set_state(l, &st), -ERANGE);
    stk_loader_destroy(&l);
    free(ref.seen);
    free(got.seen);
    stk_dataset_destroy(&ds);
}

/* SIGKILL of a worker mid-epoch: an error naming pid and signal (at
 * once: its socket's end of file wakes main; 15 s is only a sanity bound,
 * the loader has no timeout here); with respawn, the epoch completes
 * exactly. */
static void test_worker_killed(void **state)
{
    (void)state;
    stk_dataset_t *ds = make_var_ds(400, -1, 1);
    stk_loader_config_t c = base_cfg(2, 2);
    c.batch_size = 4;
    run_t ref = run_epochs(ds, &c, 1);

    stk_loader_t *l = NULL;
    assert_int_equal(stk_loader_create(&l, ds, &c), 0);
    stk_batch_t b;
    assert_int_equal(stk_loader_next(l, &b), 0);
    stk_loader_release(l, &b);
    int pids[2];
    assert_int_equal(stk_loader_worker_pids(l, pids, 2), 2);
    assert_int_equal(kill(pids[1], SIGKILL), 0);
    uint64_t t0 = stk__now_ns();
    int rc;
    while ((rc = stk_loader_next(l, &b)) == 0)
        stk_loader_release(l, &b);
    uint64_t dt = stk__now_ns() - t0;
    assert_int_equal(rc, STK_EWORKER);
    char want[64];
    snprintf(want, sizeof want, "pid %d", pids[1]);
    assert_non_null(strstr(stk_error_message(), want));
    assert_non_null(strstr(stk_error_message(), "SIGKILL"));
    assert_true(dt < 15000000000ull);
    stk_loader_destroy(&l);

    c.respawn = 1;
    assert_int_equal(stk_loader_create(&l, ds, &c), 0);
    run_t got = fresh_run(400);
    for (int k = 0; k < 10; k++) {
        assert_int_equal(stk_loader_next(l, &b), 0);
        got.sum = fnv(got.sum, &b.number, sizeof b.number);
        got.sum = fnv(got.sum, b.indices, b.size * sizeof *b.indices);
        for (uint32_t f = 0; f < b.nfields; f++) {
            got.sum = fnv(got.sum, b.fields[f].data, b.fields[f].bytes);
            if (b.fields[f].lengths)
                got.sum = fnv(got.sum, b.fields[f].lengths, b.size * sizeof(int64_t));
        }
        for (size_t i = 0; i < b.size; i++)
            got.seen[b.indices[i]]++;
        stk_loader_release(l, &b);
        if (k == 3 || k == 6) {
            stk_loader_worker_pids(l, pids, 2);
            kill(pids[k == 3 ? 0 : 1], SIGKILL);
        }
    }
    assert_int_equal(drain_epoch(l, &got, 400), STK_DONE);
    assert_each_once(&got, 400, -1);
    assert_true(got.sum == ref.sum);
    stk_loader_stats_t st;
    stk_loader_get_stats(l, &st);
    assert_int_equal(st.respawns, 2);
    stk_loader_destroy(&l);
    free(ref.seen);
    free(got.seen);
    stk_dataset_destroy(&ds);
}

/* A worker killed while the other keeps every slot filled ahead of a
 * slow consumer (main never has to wait), and with workers that are not
 * persistent (the next epoch would start new ones): still an error
 * naming pid and signal within the epoch, not a silently lost worker.
 * 100 batches at 2 ms each is far over the 50 ms the loader needs. */
static void test_worker_killed_slow_main(void **state)
{
    (void)state;
    stk_dataset_t *ds = make_var_ds(400, -1, 0);
    stk_loader_config_t c = base_cfg(2, 2);
    c.batch_size = 4;
    c.persistent_workers = 0;
    stk_loader_t *l = NULL;
    assert_int_equal(stk_loader_create(&l, ds, &c), 0);
    stk_batch_t b;
    assert_int_equal(stk_loader_next(l, &b), 0);
    stk_loader_release(l, &b);
    /* Every slot filled: the worker killed holds no batch. */
    struct timespec settle = {0, 300000000};
    nanosleep(&settle, NULL);
    int pids[2];
    assert_int_equal(stk_loader_worker_pids(l, pids, 2), 2);
    assert_int_equal(kill(pids[1], SIGKILL), 0);
    int rc;
    while ((rc = stk_loader_next(l, &b)) == 0) {
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
        stk_loader_release(l, &b);
    }
    assert_int_equal(rc, STK_EWORKER);
    char want[64];
    snprintf(want, sizeof want, "pid %d", pids[1]);
    assert_non_null(strstr(stk_error_message(), want));
    assert_non_null(strstr(stk_error_message(), "SIGKILL"));
    stk_loader_destroy(&l);
    stk_dataset_destroy(&ds);
}

/* Checks that got is the stream ref was (every sample once, same bytes);
 * returns how many workers l respawned on the way. */
static uint64_t same_stream(const stk_loader_t *l, const run_t *got, const run_t *ref, uint64_t n)
{
    assert_each_once(got, n, -1);
    assert_true(got->sum == ref->sum);
    stk_loader_stats_t st;
    stk_loader_get_stats(l, &st);
    return st.respawns;
}

static stk_dataset_t *make_hang_ds(uint64_t n, int64_t hang, const char *marker)
{
    var_args_t a = {.n = n, .bad = -1, .fds = 0, .sleep_ms = 1, .hang = hang};
    if (marker) {
        a.hang_once = 1;
        snprintf(a.hang_marker, sizeof a.hang_marker, "%s", marker);
    }
    stk_dataset_t *ds = NULL;
    assert_int_equal(stk_dataset_create(&ds, &var_ops, &a, sizeof a), 0);
    return ds;
}

static int names_a_worker(const char *msg, const int *pids, int n)
{
    for (int i = 0; i < n; i++) {
        char want[64];
        snprintf(want, sizeof want, "worker %d (pid %d", i, pids[i]);
        const char *at = strstr(msg, want);
        if (at && (at[strlen(want)] == ')' || at[strlen(want)] == ','))
            return 1;
    }
    return 0;
}

/* Hung workers. One stuck in get() (the batch with index 37): the
 * timeout names the batch and the worker holding it; with respawn the
 * batch is re-issued and the stream does not change, and only that
 * worker is replaced (a healthy one fills a batch in about 5 ms: the
 * 2 s timeout is 400 times that, so a busy machine does not get one
 * killed). Workers stopped with SIGSTOP: the same, whichever holds what,
 * and the message says they are stopped. */
static void test_worker_hung(void **state)
{
    (void)state;
    stk_dataset_t *ds = make_var_ds(300, -1, 1);
    stk_loader_config_t c = base_cfg(2, 1);
    c.batch_size = 4;
    run_t ref = run_epochs(ds, &c, 1);
    c.timeout_ms = sanitized() ? 3000 : 2000;
    char dir[] = "/tmp/stk-hang-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char marker[64];
    snprintf(marker, sizeof marker, "%s/hung", dir);

    for (int respawn = 0; respawn < 2; respawn++) {
        stk_dataset_t *hds = make_hang_ds(300, 37, respawn ? marker : NULL);
        c.respawn = respawn;
        stk_loader_t *l = NULL;
        assert_int_equal(stk_loader_create(&l, hds, &c), 0);
        run_t got = fresh_run(300);
        int rc = drain_epoch(l, &got, 300);
        if (!respawn) {
            assert_int_equal(rc, -ETIMEDOUT);
            const char *m = stk_error_message();
            assert_non_null(strstr(m, "did not deliver it"));
            assert_non_null(strstr(m, "(pid "));
            assert_non_null(strstr(m, "batch "));
        } else {
            assert_int_equal(rc, STK_DONE);
            assert_int_equal(same_stream(l, &got, &ref, 300), 1);
            assert_int_equal(access(marker, F_OK), 0);
        }
        stk_loader_destroy(&l);
        free(got.seen);
        stk_dataset_destroy(&hds);
    }
    unlink(marker);
    rmdir(dir);

    /* Both workers stopped after the first batch. */
    for (int respawn = 0; respawn < 2; respawn++) {
        c.respawn = respawn;
        stk_loader_t *l = NULL;
        assert_int_equal(stk_loader_create(&l, ds, &c), 0);
        run_t got = fresh_run(300);
        assert_int_equal(take_one(l, &got), 0);
        int pids[2];
        stk_loader_worker_pids(l, pids, 2);
        assert_int_equal(kill(pids[0], SIGSTOP), 0);
        assert_int_equal(kill(pids[1], SIGSTOP), 0);
        int rc = drain_epoch(l, &got, 300);
        if (!respawn) {
            assert_int_equal(rc, -ETIMEDOUT);
            assert_true(names_a_worker(stk_error_message(), pids, 2));
            assert_non_null(strstr(stk_error_message(), "batch "));
            assert_non_null(strstr(stk_error_message(), ", stopped)"));
        } else {
            assert_int_equal(rc, STK_DONE);
            assert_true(same_stream(l, &got, &ref, 300) >= 1);
        }
        stk_loader_destroy(&l);
        assert_false(pid_alive(pids[0]));
        assert_false(pid_alive(pids[1]));
        free(got.seen);
    }
    free(ref.seen);
    stk_dataset_destroy(&ds);
}

static stk_loader_t *volatile alarm_loader;
static volatile sig_atomic_t alarms;

static void on_alarm(int sig)
{
    (void)sig;
    alarms++;
    stk_loader_interrupt(alarm_loader);
}

/* SIGALRM after ms interrupts alarm_loader (0: cancels). */
static void arm_alarm(stk_loader_t *l, int ms)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    alarm_loader = l;
    struct itimerval it = {{0, 0}, {ms / 1000, (ms % 1000) * 1000}};
    setitimer(ITIMER_REAL, &it, NULL);
}

/* Many workers finishing batches out of order, main waiting in every
 * way it can (for k, for k + 1 while k is filled), the window between
 * choosing what to wait for and saying so widened by a test hook: no
 * wake-up may be lost. Main's sleep is not capped here (as it is, at a
 * second, in use), so a lost wake-up hangs: a 10 s alarm, far beyond a
 * batch of two samples, interrupts it and fails the test. The ring's own
 * test (test_ring.c) covers the protocol alone. */
static void test_no_lost_wakeup(void **state)
{
    (void)state;
    var_args_t a = {.n = 400, .bad = -1, .jitter_us = 300, .hang = -1};
    stk_dataset_t *ds = NULL;
    assert_int_equal(stk_dataset_create(&ds, &var_ops, &a, sizeof a), 0);
    stk_loader_config_t c = base_cfg(8, 2);
    c.batch_size = 2;
    stk_loader_t *l = NULL;
    c.stall_warn_ms = 0; /* its reports would wake main too */
    assert_int_equal(stk_loader_create(&l, ds, &c), 0);
    stk__test_wait_race_us = 150;
    stk__test_no_wait_cap = 1;
    uint64_t batches = 0;
    for (uint64_t e = 0; e < 12; e++) {
        assert_int_equal(stk_loader_set_epoch(l, e), 0);
        stk_batch_t b;
        int rc;
        for (;;) {
            arm_alarm(l, 10000);
            rc = stk_loader_next(l, &b);
            arm_alarm(NULL, 0);
            if (rc == -EINTR)
                fail_msg("batch %llu of epoch %llu did not come in 10 s: a wake-up was lost",
                         (unsigned long long)batches % 200, (unsigned long long)e);
            if (rc)
                break;
            batches++;
            stk_loader_release(l, &b);
        }
        assert_int_equal(rc, STK_DONE);
    }
    stk__test_wait_race_us = 0;
    stk__test_no_wait_cap = 0;
    assert_int_equal(batches, 12 * 200);
    stk_loader_destroy(&l);
    stk_dataset_destroy(&ds);
}

/* The one way a task can be lost (see recover() in loader.c): its worker dies
 * right after claiming it and main leaves it to another. A test hook
 * makes worker_lost forget every dead worker's task; the loader must
 * still find the batch held by a worker hung in get() and killed, and
 * the epoch must come out whole and unchanged. */
static void test_lost_task_recovered(void **state)
{
    (void)state;
    stk_dataset_t *ds = make_var_ds(120, -1, 0);
    stk_loader_config_t c = base_cfg(2, 1);
    c.batch_size = 4;
    c.shuffle = 0; /* index 37 is in batch 9 */
    run_t ref = run_epochs(ds, &c, 1);
    char dir[] = "/tmp/stk-lost-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char marker[64];
    snprintf(marker, sizeof marker, "%s/hung", dir);
    stk_dataset_t *hds = make_hang_ds(120, 37, marker);
    c.respawn = 1;
    stk_loader_t *l = NULL;
    assert_int_equal(stk_loader_create(&l, hds, &c), 0);
    run_t got = fresh_run(120);
    for (int k = 0; k < 8; k++)
        assert_int_equal(take_one(l, &got), 0);
    for (int tries = 0; access(marker, F_OK) != 0 && tries < 1000; tries++)
        msleep(5);
    assert_int_equal(access(marker, F_OK), 0);
    int pids[2];
    stk_loader_worker_pids(l, pids, 2);
    stk__test_skip_reissue = 1;
    assert_int_equal(kill(pids[0], SIGKILL), 0);
    assert_int_equal(kill(pids[1], SIGKILL), 0);
    int rc = drain_epoch(l, &got, 120);
    stk__test_skip_reissue = 0;
    assert_int_equal(rc, STK_DONE);
    assert_int_equal(same_stream(l, &got, &ref, 120), 2);
    stk_loader_destroy(&l);
    free(got.seen);
    free(ref.seen);
    stk_dataset_destroy(&hds);
    stk_dataset_destroy(&ds);
    unlink(marker);
    rmdir(dir);
}

/* Warnings the loader logs, kept for the test to read. */
static char logged[8192];
static void keep_log(stk_log_level_t level, const char *msg, void *user)
{
    (void)level;
    (void)user;
    size_t n = strlen(logged);
    snprintf(logged + n, sizeof logged - n, "%s\n", msg);
}

/* No timeout, both workers stopped: main is not silent (each stopped
 * worker is named with its pid, its state and the batch it holds), and a
 * signal handler's stk_loader_interrupt ends the wait with -EINTR. Nothing
 * is lost: once the workers go on, the epoch comes out whole and the
 * same. An interrupt asked for between calls answers the next call; one
 * asked during set_epoch's wait for batches in flight leaves the epoch
 * as it was; without workers it answers the next call too. */
static void test_interrupt_and_stall_report(void **state)
{
    (void)state;
    stk_dataset_t *ds = make_var_ds(300, -1, 1);
    stk_loader_config_t c = base_cfg(2, 1);
    c.batch_size = 4;
    run_t ref = run_epochs(ds, &c, 1);
    c.stall_warn_ms = 200;
    stk_loader_t *l = NULL;
    assert_int_equal(stk_loader_create(&l, ds, &c), 0);
    run_t got = fresh_run(300);
    assert_int_equal(take_one(l, &got), 0);
    int pids[2];
    stk_loader_worker_pids(l, pids, 2);
    assert_int_equal(kill(pids[0], SIGSTOP), 0);
    assert_int_equal(kill(pids[1], SIGSTOP), 0);
    logged[0] = '\0';
    stk_log_set_callback(keep_log, NULL, STK_LOG_WARN);
    alarms = 0;
    arm_alarm(l, 1500);
    stk_batch_t b;
    int rc;
    /* The batches already filled come first; then main waits. */
    while ((rc = stk_loader_next(l, &b)) == 0) {
        got.sum = fnv(got.sum, &b.number, sizeof b.number);
        got.sum = fnv(got.sum, b.indices, b.size * sizeof *b.indices);
        for (uint32_t f = 0; f < b.nfields; f++) {
            got.sum = fnv(got.sum, b.fields[f].data, b.fields[f].bytes);
            if (b.fields[f].lengths)
                got.sum = fnv(got.sum, b.fields[f].lengths, b.size * sizeof(int64_t));
        }
        for (size_t i = 0; i < b.size; i++)
            got.seen[b.indices[i]]++;
        stk_loader_release(l, &b);
    }
    arm_alarm(NULL, 0);
    stk_log_set_callback(NULL, NULL, STK_LOG_WARN);
    assert_int_equal(rc, -EINTR);
    assert_int_equal(alarms, 1);
    assert_non_null(strstr(stk_error_message(), "interrupted"));
    for (int i = 0; i < 2; i++) {
        char want[64];
        snprintf(want, sizeof want, "worker %d (pid %d, stopped) made no progress", i, pids[i]);
        if (!strstr(logged, want))
            fail_msg("no report of %s in:\n%s", want, logged);
    }
    assert_non_null(strstr(logged, "no timeout set"));
    /* Interrupted, not failed: the workers go on, and so does the epoch. */
    assert_int_equal(kill(pids[0], SIGCONT), 0);
    assert_int_equal(kill(pids[1], SIGCONT), 0);
    assert_int_equal(drain_epoch(l, &got, 300), STK_DONE);
    assert_each_once(&got, 300, -1);
    assert_true(got.sum == ref.sum);

    /* Asked between calls: the next call answers, the one after goes on. */
    assert_int_equal(stk_loader_set_epoch(l, 1), 0);
    stk_loader_interrupt(l);
    assert_int_equal(stk_loader_next(l, &b), -EINTR);
    assert_int_equal(stk_loader_next(l, &b), 0);
    assert_int_equal(b.number, 0);
    /* set_epoch waiting on a stopped worker's batch: batch 2 is issued
     * (by the release) once both are stopped, so it cannot be done. */
    stk_loader_worker_pids(l, pids, 2);
    stop_and_wait(pids[0]);
    stop_and_wait(pids[1]);
    stk_loader_release(l, &b);
    arm_alarm(l, 500);
    rc = stk_loader_set_epoch(l, 2);
    arm_alarm(NULL, 0);
    assert_int_equal(rc, -EINTR);
    stk_loader_state_t st;
    stk_loader_get_state(l, &st);
    assert_int_equal(st.epoch, 1);
    assert_int_equal(st.batch, 1);
    stk_loader_destroy(&l); /* stopped workers: killed, not waited for */
    assert_false(pid_alive(pids[0]));
    assert_false(pid_alive(pids[1]));

    /* A worker hung in get() on index 37 (batch 9 in order): named as
     * holding that batch. */
    stk_dataset_t *hds = make_hang_ds(120, 37, NULL);
    c.shuffle = 0;
    free(got.seen);
    assert_int_equal(stk_loader_create(&l, hds, &c), 0);
    logged[0] = '\0';
    stk_log_set_callback(keep_log, NULL, STK_LOG_WARN);
    arm_alarm(l, 1500);
    got = fresh_run(120);
    rc = drain_epoch(l, &got, 120);
    arm_alarm(NULL, 0);
    stk_log_set_callback(NULL, NULL, STK_LOG_WARN);
    assert_int_equal(rc, -EINTR);
    assert_int_equal(got.nbatches, 9);
    if (!strstr(logged, ", sleeping) made no progress") || !strstr(logged, "holding batch 9 (no timeout set"))
        fail_msg("no report of the worker hung on batch 9 in:\n%s", logged);
    stk_loader_destroy(&l);
    stk_dataset_destroy(&hds);

    c.num_workers = 0;
    assert_int_equal(stk_loader_create(&l, ds, &c), 0);
    stk_loader_interrupt(l);
    assert_int_equal(stk_loader_next(l, &b), -EINTR);
    assert_int_equal(stk_loader_next(l, &b), 0);
    stk_loader_release(l, &b);
    stk_loader_destroy(&l);
    stk_loader_interrupt(NULL);
    free(ref.seen);
    free(got.seen);
    stk_dataset_destroy(&ds);
}

/* The fork server killed under a running loader: its workers die with it
 * (PDEATHSIG), and the error says so, with the server's pid and signal,
 * not as a worker's broken pipe. With respawn, a new server starts the
 * new workers and the epoch comes out whole and the same. */
static void test_forkserver_killed(void **state)
{
    (void)state;
    stk_dataset_t *ds = make_var_ds(200, -1, 1);
    stk_loader_config_t c = base_cfg(2, 2);
    c.batch_size = 4;
    run_t ref = run_epochs(ds, &c, 1);
    for (int respawn = 0; respawn < 2; respawn++) {
        c.respawn = respawn;
        stk_loader_t *l = NULL;
        assert_int_equal(stk_loader_create(&l, ds, &c), 0);
        run_t got = fresh_run(200);
        assert_int_equal(take_one(l, &got), 0);
        pid_t server = stk__forkserver_pid();
        assert_true(server > 0);
        assert_int_equal(kill(server, SIGKILL), 0);
        int rc = drain_epoch(l, &got, 200);
        if (!respawn) {
            assert_int_equal(rc, STK_EWORKER);
            char want[96];
            snprintf(want, sizeof want, "fork server (pid %d) was killed by signal 9 (SIGKILL)",
                     (int)server);
            if (!strstr(stk_error_message(), want))
                fail_msg("want \"%s\" in: %s", want, stk_error_message());
            assert_null(strstr(stk_error_message(), "Broken pipe"));
        } else {
            assert_int_equal(rc, STK_DONE);
            assert_int_equal(same_stream(l, &got, &ref, 200), 2);
            assert_true(stk__forkserver_pid() != server);
        }
        stk_loader_destroy(&l);
        free(got.seen);
    }
    /* A new loader gets a new server. */
    run_t again = run_epochs(ds, &c, 1);
    assert_true(again.sum == ref.sum);
    free(again.seen);
    free(ref.seen);
    stk_dataset_destroy(&ds);
}

/* Once an epoch is delivered whole, the state is the next epoch's first
 * batch, as a loop that resumes from it counts; set to that state, a
 * loader delivers what set_epoch(next) would. (epoch, its length) is
 * still accepted: the end of that epoch. */
static void test_state_after_epoch(void **state)
{
    (void)state;
    stk_dataset_t *ds = make_mem_ds(100);
    for (uint32_t wk = 0; wk < 3; wk += 2) {
        stk_loader_config_t c = base_cfg(wk, 2);
        c.batch_size = 10;
        stk_loader_t *l = NULL;
        assert_int_equal(stk_loader_create(&l, ds, &c), 0);
        stk_loader_state_t st;
        stk_batch_t b;
        assert_int_equal(stk_loader_set_epoch(l, 3), 0);
        for (int k = 0; k < 10; k++) {
            stk_loader_get_state(l, &st);
            assert_int_equal(st.epoch, 3);
            assert_int_equal(st.batch, k);
            assert_int_equal(stk_loader_next(l, &b), 0);
            stk_loader_release(l, &b);
        }
        stk_loader_get_state(l, &st); /* the last batch delivered */
        assert_int_equal(st.epoch, 4);
        assert_int_equal(st.batch, 0);
        assert_int_equal(stk_loader_next(l, &b), STK_DONE);
        stk_loader_get_state(l, &st);
        assert_int_equal(st.epoch, 4);
        assert_int_equal(st.batch, 0);
        run_t via_state, via_epoch;
        memset(&via_state, 0, sizeof via_state);
        memset(&via_epoch, 0, sizeof via_epoch);
        assert_int_equal(stk_loader_set_state(l, &st), 0);
        assert_int_equal(stk_loader_set_epoch(l, 4), 0); /* already there: a no-op */
        assert_int_equal(drain_epoch(l, &via_state, 100), STK_DONE);
        assert_int_equal(stk_loader_set_epoch(l, 4), 0);
        assert_int_equal(drain_epoch(l, &via_epoch, 100), STK_DONE);
        assert_true(via_state.sum == via_epoch.sum);
        assert_int_equal(via_state.nbatches, 10);
        stk_loader_state_t end = {.epoch = 4, .batch = 10};
        assert_int_equal(stk_loader_set_state(l, &end), 0);
        assert_int_equal(stk_loader_next(l, &b), STK_DONE);
        stk_loader_destroy(&l);
        free(via_state.seen);
        free(via_epoch.seen);
    }
    stk_dataset_destroy(&ds);
}

/* The AUTO trial as a state machine, on made-up times: warm-up batches
 * and an interval across an epoch change are not counted, each phase is
 * measured exactly, and the faster one wins, either way round. */
static void test_trial(void **state)
{
    (void)state;
    for (int inline_faster = 0; inline_faster < 2; inline_faster++) {
        stk__trial_t t;
        stk__trial_start(&t);
        uint64_t now = 1000, wstep = 100000, istep = inline_faster ? 80000 : 120000;
        for (int k = 0; k < STK__TRIAL_WARM_WORKERS; k++) {
            now += 5000000; /* slow first batches: not counted */
            assert_int_equal(stk__trial_note(&t, now), 0);
        }
        int ev = 0, n = 0;
        while (ev == 0 && n < 10000) {
            now += wstep;
            if (n == 5) { /* an epoch change, with an evaluation in it */
                stk__trial_break(&t);
                now += 1000000000;
            }
            ev = stk__trial_note(&t, now);
            n++;
        }
        assert_int_equal(ev, STK__TRIAL_GO_INLINE);
        assert_true(t.ns_per_batch[0] == (double)wstep);
        for (int k = 0; k < STK__TRIAL_WARM_INLINE; k++) {
            now += 7000000;
            assert_int_equal(stk__trial_note(&t, now), 0);
        }
        ev = 0;
        for (n = 0; ev == 0 && n < 10000; n++) {
            now += istep;
            ev = stk__trial_note(&t, now);
        }
        assert_int_equal(ev, STK__TRIAL_DECIDED);
        assert_true(t.ns_per_batch[1] == (double)istep);
        assert_int_equal(t.inline_wins, inline_faster);
        assert_int_equal(stk__trial_note(&t, now + 1), 0); /* decided stays decided */
    }
}

/* CPUs this process may use: the affinity mask, lowered by a cgroup v2
 * cpu.max quota (rounded up). */
static void test_usable_cpus(void **state)
{
    (void)state;
    cpu_set_t set;
    assert_int_equal(sched_getaffinity(0, sizeof set, &set), 0);
    uint32_t mine = (uint32_t)CPU_COUNT(&set);
    char path[] = "/tmp/stk-cpumax-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *saved = stk__cgroup_cpu_max_path;
    stk__cgroup_cpu_max_path = path;
    static const char *const lines[] = {"max 100000\n", "50000 100000\n", "150000 100000\n"};
    const uint32_t want[] = {mine, 1, mine < 2 ? mine : 2};
    for (int k = 0; k < 3; k++) {
        assert_int_equal(ftruncate(fd, 0), 0);
        assert_int_equal(pwrite(fd, lines[k], strlen(lines[k]), 0), (ssize_t)strlen(lines[k]));
        assert_int_equal(stk__usable_cpus(), want[k] > 64 ? 64 : want[k]);
    }
    stk__cgroup_cpu_max_path = "/nonexistent/cpu.max";
    assert_int_equal(stk__usable_cpus(), mine > 64 ? 64 : mine);
    stk__cgroup_cpu_max_path = saved;
    close(fd);
    unlink(path);
}

/* num_workers AUTO on real processes, with 2 CPUs assumed: where workers
 * are slow (2 ms a sample in workers only) it settles in process and
 * stops them; where every sample waits 1 ms, two workers in parallel win.
 * Either way the batches are those of any fixed worker count. */
static void test_auto_workers(void **state)
{
    (void)state;
    stk__test_cpus = 2;
    for (int workers_win = 0; workers_win < 2; workers_win++) {
        var_args_t a = {.n = 600, .bad = -1, .hang = -1};
        /* Sleeps, not work, decide each case, so that a loaded machine
         * cannot flip it: 2 workers sleeping 4 ms a record halve the
         * time of main sleeping it; workers that sleep 8 ms a record
         * lose to main, which does not. */
        if (workers_win)
            a.sleep_ms = 4;
        else
            a.worker_sleep_ms = 8;
        stk_dataset_t *ds = NULL;
        assert_int_equal(stk_dataset_create(&ds, &var_ops, &a, sizeof a), 0);
        stk_loader_config_t c = base_cfg(workers_win ? 3 : 0, 0); /* whichever is quick */
        c.batch_size = 4;
        run_t ref = run_epochs(ds, &c, 2);
        c.num_workers = STK_LOADER_WORKERS_AUTO;
        stk_loader_t *l = NULL;
        assert_int_equal(stk_loader_create(&l, ds, &c), 0);
        assert_int_equal(stk_loader_worker_pids(l, NULL, 0), 2);
        run_t got;
        memset(&got, 0, sizeof got);
        for (uint64_t e = 0; e < 2; e++) {
            free(got.seen);
            got.seen = NULL;
            assert_int_equal(stk_loader_set_epoch(l, e), 0);
            assert_int_equal(drain_epoch(l, &got, 600), STK_DONE);
            assert_each_once(&got, 600, -1);
        }
        assert_true(got.sum == ref.sum);
        stk_loader_stats_t st;
        stk_loader_get_stats(l, &st);
        assert_int_equal(st.auto_decided, 1);
        assert_int_equal(st.num_workers, workers_win ? 2 : 0);
        int pids[2];
        stk_loader_worker_pids(l, pids, 2);
        assert_true(workers_win ? pids[0] > 0 && pids[1] > 0 : pids[0] == 0 && pids[1] == 0);
        stk_loader_destroy(&l);
        free(got.seen);
        free(ref.seen);
        stk_dataset_destroy(&ds);
    }
    stk__test_cpus = 0;
}

static int init_calls;
static int worker_init_ok(uint32_t worker, uint64_t seed, const void *arg, size_t len)
{
    (void)seed;
    init_calls++;
    if (len != 4 || memcmp(arg, "abcd", 4) != 0)
        return -EINVAL;
    return worker < 8 ? 0 : -EINVAL;
}

static int worker_init_fail(uint32_t worker, uint64_t seed, const void *arg, size_t len)
{
    (void)seed;
    (void)arg;
    (void)len;
    return stk__error(-EACCES, "worker_init said no to worker %u", worker);
}

static void test_worker_init(void **state)
{
    (void)state;
    stk_dataset_t *ds = make_mem_ds(64);
    stk_loader_config_t c = base_cfg(2, 1);
    c.worker_init = worker_init_ok;
    c.worker_init_arg = "abcd";
    c.worker_init_arg_len = 4;
    run_t r = run_epochs(ds, &c, 1);
    free(r.seen);
    c.num_workers = 0;
    init_calls = 0;
    r = run_epochs(ds, &c, 1);
    free(r.seen);
    assert_int_equal(init_calls, 1);

    c.num_workers = 2;
    c.worker_init = worker_init_fail;
    stk_loader_t *l = NULL;
    assert_int_equal(stk_loader_create(&l, ds, &c), 0);
    stk_batch_t b;
    assert_int_equal(stk_loader_next(l, &b), STK_EWORKER);
    assert_non_null(strstr(stk_error_message(), "said no"));
    stk_loader_destroy(&l);
    stk_dataset_destroy(&ds);
}

static int pin_calls, unpin_calls;
static size_t pin_bytes;
static int pin_ok(void *addr, size_t bytes, void *user)
{
    assert_ptr_equal(user, &pin_calls);
    assert_non_null(addr);
    pin_calls++;
    pin_bytes = bytes;
    return 0;
}

static void unpin_ok(void *addr, size_t bytes, void *user)
{
    (void)addr;
    (void)user;
    assert_int_equal(bytes, pin_bytes);
    unpin_calls++;
}

static int pin_fail(void *addr, size_t bytes, void *user)
{
    (void)addr;
    (void)bytes;
    (void)user;
    return STK_EDEVICE;
}

/* Limits are checked before any worker starts, each with one message. */
static void test_limits_and_config(void **state)
{
    (void)state;
    stk_dataset_t *ds = make_mem_ds(64);
    stk_loader_t *l = NULL;
    stk_loader_config_t c = base_cfg(2, 2);
    c.pin = pin_ok;
    c.unpin = unpin_ok;
    c.pin_user = &pin_calls;
    assert_int_equal(stk_loader_create(&l, ds, &c), 0);
    assert_int_equal(pin_calls, 1);
    stk_loader_destroy(&l);
    assert_int_equal(unpin_calls, 1);
    c.pin = pin_fail;
    assert_int_equal(stk_loader_create(&l, ds, &c), STK_EDEVICE);
    assert_non_null(strstr(stk_error_message(), "pinning"));
    c.unpin = NULL;
    assert_int_equal(stk_loader_create(&l, ds, &c), STK_ECONFIG);

    /* RLIMIT_MEMLOCK below the arena, with pinning asked for. */
    struct rlimit old, rl;
    getrlimit(RLIMIT_MEMLOCK, &old);
    rl.rlim_cur = 4096;
    rl.rlim_max = old.rlim_max;
    assert_int_equal(setrlimit(RLIMIT_MEMLOCK, &rl), 0);
    c.pin = pin_ok;
    c.unpin = unpin_ok;
    assert_int_equal(stk_loader_create(&l, ds, &c), STK_ELIMIT);
    assert_non_null(strstr(stk_error_message(), "RLIMIT_MEMLOCK is 4096"));
    /* A pin outside the limit (cudaHostRegister) is not held to it. */
    c.pin_no_memlock = 1;
    assert_int_equal(stk_loader_create(&l, ds, &c), 0);
    stk_loader_destroy(&l);
    c.pin_no_memlock = 0;
    setrlimit(RLIMIT_MEMLOCK, &old);

    /* RLIMIT_NOFILE below what each worker holds. */
    var_args_t a = {.n = 10, .bad = -1, .fds = 100000};
    stk_dataset_t *many = NULL;
    assert_int_equal(stk_dataset_create(&many, &var_ops, &a, sizeof a), 0);
    stk_loader_config_t c2 = base_cfg(2, 2);
    assert_int_equal(stk_loader_create(&l, many, &c2), STK_ELIMIT);
    assert_non_null(strstr(stk_error_message(), "RLIMIT_NOFILE"));
    c2.num_workers = 0;
    assert_int_equal(stk_loader_create(&l, many, &c2), 0);
    stk_loader_destroy(&l);
    stk_dataset_destroy(&many);

    /* cgroup memory.max below the arena. */
    char dir[] = "/tmp/stk-cg-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char maxp[64], curp[64];
    snprintf(maxp, sizeof maxp, "%s/memory.max", dir);
    snprintf(curp, sizeof curp, "%s/memory.current", dir);
    FILE *f = fopen(maxp, "w");
    fputs("60000\n", f);
    fclose(f);
    f = fopen(curp, "w");
    fputs("50000\n", f);
    fclose(f);
    const char *om = stk__cgroup_memory_max_path, *oc = stk__cgroup_memory_current_path;
    stk__cgroup_memory_max_path = maxp;
    stk__cgroup_memory_current_path = curp;
    c2.num_workers = 2;
    assert_int_equal(stk_loader_create(&l, ds, &c2), STK_ELIMIT);
    assert_non_null(strstr(stk_error_message(), "memory.max is 60000"));
    f = fopen(maxp, "w");
    fputs("max\n", f);
    fclose(f);
    assert_int_equal(stk_loader_create(&l, ds, &c2), 0);
    stk_loader_destroy(&l);
    stk__cgroup_memory_max_path = om;
    stk__cgroup_memory_current_path = oc;
    unlink(maxp);
    unlink(curp);
    rmdir(dir);

    /* Config errors name the field. */
    c2.batch_size = 0;
    assert_int_equal(stk_loader_create(&l, ds, &c2), STK_ECONFIG);
    assert_non_null(strstr(stk_error_message(), "batch_size"));
    c2.batch_size = 4;
    c2.worker_init_arg_len = 100000;
    c2.worker_init_arg = "x";
    assert_int_equal(stk_loader_create(&l, ds, &c2), STK_ECONFIG);
    c2.worker_init_arg_len = 0;
    c2.prefetch = 1000;
    assert_int_equal(stk_loader_create(&l, ds, &c2), STK_ECONFIG);
    assert_int_equal(stk_loader_create(NULL, ds, &c2), -EINVAL);

    /* Dataset errors. */
    stk_dataset_ops_t bad = var_ops;
    bad.get = NULL;
    assert_int_equal(stk_dataset_create(&many, &bad, &a, sizeof a), STK_ECONFIG);
    a.n = 0;
    assert_int_equal(stk_dataset_create(&many, &var_ops, &a, sizeof a), STK_EEMPTY);
    assert_int_equal(stk_dataset_create(&many, &var_ops, &a, 3), STK_EDATA);
    assert_null(many);
    stk_schema_t sc = *stk_dataset_schema(ds);
    sc.fields[0].shape[0] = -1;
    const void *fields[2] = {"", ""};
    assert_int_equal(stk_dataset_memory_create(&many, &sc, fields, 1), STK_ECONFIG);
    stk_dataset_destroy(&ds);
}

/* The caller's sampler or batch sampler; drop_last. */
static void test_samplers(void **state)
{
    (void)state;
    stk_dataset_t *ds = make_mem_ds(100);
    stk_sampler_config_t sc;
    stk_sampler_config_default(&sc);
    sc.kind = STK_SAMPLER_DISTRIBUTED;
    sc.dataset_len = 100;
    sc.rank = 1;
    sc.world_size = 3;
    sc.shuffle = 1;
    sc.seed = 9;
    stk_sampler_t *smp = NULL;
    assert_int_equal(stk_sampler_create(&smp, &sc), 0);
    uint64_t refs[2] = {0, 0};
    for (uint32_t w = 0; w < 3; w += 2) {
        stk_loader_config_t c = base_cfg(w, 2);
        c.sampler = smp;
        c.batch_size = 8;
        c.drop_last = 1;
        stk_loader_t *l = NULL;
        assert_int_equal(stk_loader_create(&l, ds, &c), 0);
        assert_int_equal(stk_loader_len(l), stk_sampler_len(smp) / 8);
        run_t r;
        memset(&r, 0, sizeof r);
        assert_int_equal(stk_loader_set_epoch(l, 3), 0);
        assert_int_equal(drain_epoch(l, &r, 100), STK_DONE);
        assert_int_equal(r.nsamples, stk_sampler_len(smp) / 8 * 8);
        refs[w / 2] = r.sum;
        free(r.seen);
        stk_loader_destroy(&l);
    }
    assert_true(refs[0] == refs[1]);

    stk_batch_sampler_t *bs = NULL;
    assert_int_equal(stk_batch_sampler_create(&bs, smp, 5, 0), 0);
    stk_loader_config_t c = base_cfg(1, 2);
    c.batch_sampler = bs;
    c.batch_size = 0; /* ignored with a batch sampler */
    stk_loader_t *l = NULL;
    assert_int_equal(stk_loader_create(&l, ds, &c), 0);
    assert_int_equal(stk_loader_len(l), stk_batch_sampler_len(bs));
    stk_batch_t b;
    assert_int_equal(stk_loader_next(l, &b), 0);
    uint64_t idx[5];
    size_t n;
    assert_int_equal(stk_batch_sampler_get(bs, 0, idx, &n), 0);
    assert_int_equal(b.size, n);
    assert_memory_equal(b.indices, idx, n * sizeof *idx);
    stk_loader_release(l, &b);
    stk_loader_destroy(&l);
    stk_batch_sampler_destroy(&bs);
    stk_sampler_destroy(&smp);
    stk_dataset_destroy(&ds);
}

/* Every slot held: next says so instead of waiting forever. */
static void test_all_slots_held(void **state)
{
    (void)state;
    stk_dataset_t *ds = make_mem_ds(200);
    stk_loader_config_t c = base_cfg(2, 1);
    c.shuffle = 0;
    c.prefetch = 1;
    stk_loader_t *l = NULL;
    assert_int_equal(stk_loader_create(&l, ds, &c), 0);
    stk_batch_t b[3];
    assert_int_equal(stk_loader_next(l, &b[0]), 0);
    assert_int_equal(stk_loader_next(l, &b[1]), 0);
    assert_int_equal(stk_loader_next(l, &b[2]), STK_ESTATE);
    assert_int_equal(b[0].indices[0], 0);
    assert_int_equal(b[1].indices[0], 16);
    stk_loader_release(l, &b[1]);
    assert_int_equal(stk_loader_next(l, &b[2]), 0);
    assert_int_equal(b[2].number, 2);
    /* Held batches stay valid while others are filled. */
    assert_int_equal(b[0].indices[0], 0);
    stk_loader_release(l, &b[0]);
    stk_loader_release(l, &b[2]);
    stk_loader_release(l, &b[2]);
    stk_loader_destroy(&l);
    /* Inline: prefetch slots can all be held too. */
    c.num_workers = 0;
    c.prefetch = 2;
    assert_int_equal(stk_loader_create(&l, ds, &c), 0);
    for (int round = 0; round < 3; round++) {
        assert_int_equal(stk_loader_next(l, &b[0]), 0);
        assert_int_equal(stk_loader_next(l, &b[1]), 0);
        assert_int_equal(b[1].number, b[0].number + 1);
        assert_int_equal(stk_loader_next(l, &b[2]), STK_ESTATE);
        stk_loader_release(l, &b[0]);
        stk_loader_release(l, &b[1]);
    }
    stk_loader_destroy(&l);
    stk_dataset_destroy(&ds);
}

/* Destroy mid-epoch: workers gone, nothing leaked, no zombies. Also
 * non-persistent workers across epochs. */
static void test_destroy_no_leaks(void **state)
{
    (void)state;
    stk_dataset_t *ds = make_mem_ds(N_SAMPLES);
    assert_int_equal(stk_loader_forkserver_start(), 0);
    int fds0 = count_fds(), maps0 = count_maps(), z;
    int kids0 = count_children_of(getpid(), &z);
    for (int round = 0; round < 3; round++) {
        stk_loader_config_t c = base_cfg(2, 2);
        c.persistent_workers = round == 2 ? 0 : 1;
        stk_loader_t *l = NULL;
        assert_int_equal(stk_loader_create(&l, ds, &c), 0);
        stk_batch_t b;
        assert_int_equal(stk_loader_next(l, &b), 0);
        int pids[2];
        stk_loader_worker_pids(l, pids, 2);
        if (round == 1) {
            assert_int_equal(stk_loader_next(l, &b), 0); /* held at destroy */
        } else if (round == 2) {
            stk_loader_release(l, &b);
            run_t r;
            memset(&r, 0, sizeof r);
            assert_int_equal(drain_epoch(l, &r, N_SAMPLES), STK_DONE);
            free(r.seen);
            assert_false(pid_alive(pids[0]));
            assert_int_equal(stk_loader_set_epoch(l, 1), 0);
            memset(&r, 0, sizeof r);
            assert_int_equal(drain_epoch(l, &r, N_SAMPLES), STK_DONE);
            assert_int_equal(r.nsamples, N_SAMPLES);
            free(r.seen);
        }
        stk_loader_destroy(&l);
        assert_false(pid_alive(pids[0]));
        assert_false(pid_alive(pids[1]));
        assert_int_equal(count_fds(), fds0);
        assert_int_equal(count_maps(), maps0);
        int kids = count_children_of(getpid(), &z);
        assert_int_equal(kids, kids0);
        assert_int_equal(z, 0);
    }
    stk_dataset_destroy(&ds);
}

/* SIGTERM / SIGINT / SIGKILL of the main process: every worker exits. */
static void test_main_killed(void **state)
{
    (void)state;
    static const int sigs[] = {SIGTERM, SIGINT, SIGKILL};
    /* Orphaned workers and server come back to us, so we can reap them. */
    assert_int_equal(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
    for (int s = 0; s < 3; s++) {
        int pfd[2];
        assert_int_equal(pipe(pfd), 0);
        pid_t child = fork();
        assert_true(child >= 0);
        if (child == 0) {
            close(pfd[0]);
            signal(SIGINT, SIG_DFL);
            stk_dataset_t *ds = make_mem_ds(N_SAMPLES);
            stk_loader_config_t c = base_cfg(2, 2);
            stk_loader_t *l = NULL;
            stk_batch_t b;
            if (stk_loader_create(&l, ds, &c) || stk_loader_next(l, &b))
                _exit(3);
            int pids[2];
            stk_loader_worker_pids(l, pids, 2);
            if (write(pfd[1], pids, sizeof pids) != (ssize_t)sizeof pids)
                _exit(4);
            for (;;)
                pause();
        }
        close(pfd[1]);
        int pids[2];
        assert_int_equal(read(pfd[0], pids, sizeof pids), (ssize_t)sizeof pids);
        close(pfd[0]);
        assert_true(pid_alive(pids[0]));
        assert_int_equal(kill(child, sigs[s]), 0);
        int st;
        assert_int_equal(waitpid(child, &st, 0), child);
        assert_true(WIFSIGNALED(st));
        int gone = 0;
        for (int t = 0; t < 300 && !gone; t++) {
            while (waitpid(-1, NULL, WNOHANG) > 0) {
            }
            gone = !pid_alive(pids[0]) && !pid_alive(pids[1]);
            if (!gone)
                msleep(10);
        }
        assert_true(gone);
    }
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    prctl(PR_SET_CHILD_SUBREAPER, 0);
}

/* Workers come from the fork server, not from this process as it is now:
 * a mapping and a descriptor made after the server started (as a CUDA
 * context would be) are not in them. */
static void test_workers_start_clean(void **state)
{
    (void)state;
    assert_int_equal(stk_loader_forkserver_start(), 0);
    int late = memfd_create("stoker-test-late", MFD_CLOEXEC);
    assert_true(late >= 0);
    assert_int_equal(ftruncate(late, 4096), 0);
    void *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, late, 0);
    assert_true(m != MAP_FAILED);
    int plain = open("/proc/self/status", O_RDONLY); /* no CLOEXEC: fork would keep it */
    assert_true(plain >= 0);
    stk_dataset_t *ds = make_mem_ds(64);
    stk_loader_config_t c = base_cfg(2, 1);
    stk_loader_t *l = NULL;
    assert_int_equal(stk_loader_create(&l, ds, &c), 0);
    stk_batch_t b, b1;
    assert_int_equal(stk_loader_next(l, &b), 0);
    assert_int_equal(stk_loader_next(l, &b1), 0);
    int pids[2];
    stk_loader_worker_pids(l, pids, 2);
    for (int i = 0; i < 2; i++) {
        /* Any worker may have filled both batches: the other maps the
         * arena first thing, soon if not yet. */
        char path[64], line[512];
        snprintf(path, sizeof path, "/proc/%d/maps", pids[i]);
        int found_late = 0, found_arena = 0;
        for (int tries = 0; !found_arena && tries < 500; tries++) {
            if (tries)
                msleep(10);
            FILE *f = fopen(path, "r");
            assert_non_null(f);
            while (fgets(line, sizeof line, f)) {
                found_late |= strstr(line, "stoker-test-late") != NULL;
                found_arena |= strstr(line, "stoker-batches") != NULL;
            }
            fclose(f);
        }
        assert_false(found_late);
        assert_true(found_arena);
        snprintf(path, sizeof path, "/proc/%d/fd", pids[i]);
        DIR *d = opendir(path);
        assert_non_null(d);
        int nfd = 0;
        struct dirent *e;
        while ((e = readdir(d)))
            nfd += e->d_name[0] != '.';
        closedir(d);
        /* stdio, its socket, the wake-up eventfd, /proc/self/statm:
         * nothing of ours. */
        assert_true(nfd <= 6);
    }
    stk_loader_release(l, &b);
    stk_loader_release(l, &b1);
    stk_loader_destroy(&l);
    stk_dataset_destroy(&ds);
    close(plain);
    munmap(m, 4096);
    close(late);
}

/* Whether this process may make an io_uring, asked of the kernel
 * directly: what STK_IO_AUTO must pick when nothing turns it off. Where
 * it may not (a seccomp profile, kernel.io_uring_disabled), the io_uring
 * read path cannot run here: the tests say so on stderr, and
 * STK_REQUIRE_IO_URING=1 makes that a failure (for CI machines that have
 * it). */
static int uring_allowed(void)
{
    int ok = 0;
#if STK_HAVE_IO_URING
    struct io_uring r;
    ok = io_uring_queue_init(8, &r, 0) == 0;
    if (ok)
        io_uring_queue_exit(&r);
#endif
    if (!ok) {
        const char *req = getenv("STK_REQUIRE_IO_URING");
        if (req && strcmp(req, "1") == 0)
            fail_msg("STK_REQUIRE_IO_URING=1 but io_uring %s", STK_HAVE_IO_URING ?
                     "is refused in this process" : "is not built in");
        fprintf(stderr, "note: io_uring %s here: its read path is not run (the pread "
                "fallback is)\n", STK_HAVE_IO_URING ? "is refused" : "is not built in");
    }
    return ok;
}

static int warnings;
static void count_warning(stk_log_level_t level, const char *msg, void *user)
{
    (void)level;
    warnings++;
    keep_log(level, msg, user);
}

/* Modes resolve as asked; STK_IO_AUTO to io_uring exactly where the
 * kernel allows it; STK_IO_URING=0 turns it off on purpose: AUTO falls
 * back to pread with one warning per process naming why, and forced
 * io_uring fails saying so. */
static void test_io_resolve(void **state)
{
    (void)state;
    stk_io_mode_t got;
    assert_int_equal(stk__io_resolve(STK_IO_PREAD, &got), 0);
    assert_int_equal(got, STK_IO_PREAD);
    int allowed = uring_allowed();
    atomic_store(&stk__io_uring_warned, 0);
    warnings = 0;
    logged[0] = '\0';
    stk_log_set_callback(count_warning, NULL, STK_LOG_WARN);
    assert_int_equal(stk__io_resolve(STK_IO_AUTO, &got), 0);
    assert_int_equal(got, allowed ? STK_IO_URING : STK_IO_PREAD);
    assert_int_equal(warnings, allowed ? 0 : 1);
    int rc = stk__io_resolve(STK_IO_URING, &got);
    if (allowed) {
        assert_int_equal(rc, 0);
        assert_int_equal(got, STK_IO_URING);
    } else {
        assert_int_equal(rc, STK_HAVE_IO_URING ? -EPERM : STK_ECONFIG);
    }

    setenv("STK_IO_URING", "0", 1);
    atomic_store(&stk__io_uring_warned, 0);
    warnings = 0;
    logged[0] = '\0';
    for (int k = 0; k < 3; k++) {
        assert_int_equal(stk__io_resolve(STK_IO_AUTO, &got), 0);
        assert_int_equal(got, STK_IO_PREAD);
    }
    if (STK_HAVE_IO_URING) {
        assert_int_equal(warnings, 1); /* once, however often it resolves */
        assert_non_null(strstr(logged, "io_uring unavailable (STK_IO_URING=0 in the environment): "
                                       "reading records with pread"));
        assert_int_equal(stk__io_resolve(STK_IO_URING, &got), -EPERM);
        assert_non_null(strstr(stk_error_message(), "STK_IO_URING=0"));
    }
    unsetenv("STK_IO_URING");
    stk_log_set_callback(NULL, NULL, STK_LOG_WARN);
    assert_int_equal(stk__io_resolve(STK_IO_MMAP, &got), 0);
    assert_int_equal(got, STK_IO_MMAP);
    stk_dataset_t *ds = NULL;
    stk_dataset_shard_config_t sc;
    stk_dataset_shard_config_default(&sc);
    sc.io = (stk_io_mode_t)42;
    assert_int_equal(stk_dataset_shard_create(&ds, "/nonexistent", &sc), STK_ECONFIG);
    sc.io = STK_IO_PREAD;
    assert_true(stk_dataset_shard_create(&ds, "/nonexistent", &sc) < 0);
    assert_null(ds);
}

/* Shards written with the writer, read by workers through io_uring and
 * pread: identical batches; a corrupt byte names shard and record. */
static void write_shards(const char *dir, int level)
{
    stk_schema_t sc;
    memset(&sc, 0, sizeof sc);
    int64_t ishape[3] = {1, IMG, IMG};
    assert_int_equal(stk_schema_add(&sc, "image", STK_DTYPE_U8, 3, ishape), 0);
    assert_int_equal(stk_schema_add(&sc, "label", STK_DTYPE_I64, 0, NULL), 0);
    stk_writer_config_t wc;
    stk_writer_config_default(&wc);
    wc.zstd_level = level;
    wc.records_per_shard = 128;
    stk_writer_t *w = NULL;
    assert_int_equal(stk_writer_create(&w, dir, &sc, &wc), 0);
    for (uint64_t i = 0; i < 300; i++) {
        unsigned char img[IMG * IMG];
        int64_t lab = (int64_t)i;
        img_of(i, img);
        const void *data[2] = {img, &lab};
        assert_int_equal(stk_writer_add(w, data, NULL), 0);
    }
    assert_int_equal(stk_writer_finish(w), 0);
    stk_writer_destroy(&w);
}

/* Where record index of the set in dir lies: *loc, and its shard's path. */
static void locate_record(const char *dir, uint64_t index, stk_record_loc_t *loc, char *path,
                          size_t cap)
{
    stk_shardset_t *set = NULL;
    assert_int_equal(stk_shardset_create(&set, dir), 0);
    assert_int_equal(stk_shardset_locate(set, index, loc), 0);
    snprintf(path, cap, "%s", stk_shardset_shard_path(set, loc->shard));
    stk_shardset_destroy(&set);
}

static void rm_rf(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* The set a dataset hands its workers: the same records, shards and
 * dictionaries as opening it; malformed blobs and changed files refused. */
static void test_shardset_export(void **state)
{
    (void)state;
    char zdir[] = "/tmp/stk-loader-x-XXXXXX";
    assert_non_null(mkdtemp(zdir));
    write_shards(zdir, 3);
    stk_shardset_t *set = NULL, *imp = NULL;
    assert_int_equal(stk_shardset_create(&set, zdir), 0);
    size_t n = stk__shardset_export_size(set);
    unsigned char *blob = malloc(n);
    assert_non_null(blob);
    stk__shardset_export(set, blob);
    assert_int_equal(stk__shardset_import(&imp, blob, n), 0);
    assert_int_equal(stk_shardset_len(imp), stk_shardset_len(set));
    assert_int_equal(stk_shardset_num_shards(imp), stk_shardset_num_shards(set));
    assert_int_equal(stk_shardset_max_raw(imp), stk_shardset_max_raw(set));
    assert_int_equal(stk_shardset_max_stored(imp), stk_shardset_max_stored(set));
    assert_true(stk__schema_equal(stk_shardset_schema(imp), stk_shardset_schema(set)));
    stk_decoder_t *dec = NULL;
    assert_int_equal(stk_decoder_create(&dec, imp), 0);
    unsigned char *buf = malloc(stk_shardset_max_raw(set));
    assert_non_null(buf);
    for (uint64_t i = 0; i < stk_shardset_len(set); i++) {
        stk_record_loc_t a, b;
        assert_int_equal(stk_shardset_locate(set, i, &a), 0);
        assert_int_equal(stk_shardset_locate(imp, i, &b), 0);
        assert_int_equal(a.offset, b.offset);
        assert_int_equal(a.checksum, b.checksum);
        assert_int_equal(a.shard, b.shard);
        stk_record_t rec;
        assert_int_equal(stk_shardset_get(imp, dec, i, buf, stk_shardset_max_raw(set), &rec), 0);
    }
    stk_shard_info_t ia, ib;
    assert_int_equal(stk_shardset_shard_info(set, 1, &ia), 0);
    assert_int_equal(stk_shardset_shard_info(imp, 1, &ib), 0);
    assert_int_equal(ia.first_index, ib.first_index);
    assert_int_equal(ia.stored_bytes, ib.stored_bytes);
    assert_int_equal(ia.zstd_level, ib.zstd_level);
    stk_decoder_destroy(&dec);
    stk_shardset_destroy(&imp);
    /* Malformed: short, wrong length, bad magic, a path without its NUL. */
    assert_int_equal(stk__shardset_import(&imp, blob, 8), STK_EDATA);
    assert_int_equal(stk__shardset_import(&imp, blob, n - 8), STK_EDATA);
    blob[0] ^= 1;
    assert_int_equal(stk__shardset_import(&imp, blob, n), STK_EDATA);
    blob[0] ^= 1;
    unsigned char *copy = malloc(n);
    assert_non_null(copy);
    memcpy(copy, blob, n);
    char *path0 = (char *)memmem(copy, n, stk_shardset_shard_path(set, 0),
                                 strlen(stk_shardset_shard_path(set, 0)) + 1);
    assert_non_null(path0);
    memset(path0, 'x', strlen(path0) + 1);
    assert_int_equal(stk__shardset_import(&imp, copy, n), STK_EDATA);
    assert_null(imp);
    free(copy);
    /* A shard that grew since the set was checked is not the checked one. */
    int fd = open(stk_shardset_shard_path(set, 1), O_WRONLY | O_APPEND);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "x", 1), 1);
    close(fd);
    assert_int_equal(stk__shardset_import(&imp, blob, n), STK_EDATA);
    assert_non_null(strstr(stk_error_message(), "changed since"));
    assert_null(imp);
    /* A shard that is gone: the open's errno. */
    assert_int_equal(unlink(stk_shardset_shard_path(set, 1)), 0);
    assert_int_equal(stk__shardset_import(&imp, blob, n), -ENOENT);
    free(buf);
    free(blob);
    stk_shardset_destroy(&set);
    rm_rf(zdir);
}

static void read_set(const char *dir)
{
    char path[600], buf[65536];
    for (int k = 0;; k++) {
        snprintf(path, sizeof path, "%s/shard-%05d.stk", dir, k);
        int fd = open(path, O_RDONLY);
        if (fd < 0)
            break;
        while (read(fd, buf, sizeof buf) > 0)
            ;
        close(fd);
    }
}

/* Verify-once is per loader, shared by its workers: over 3 epochs every
 * record is hashed exactly once, whatever the worker count. A record
 * corrupted after it matched stays trusted by that loader; a new loader
 * checks again and names it. */
static void test_verify_shared(void **state)
{
    (void)state;
    char dir[] = "/tmp/stk-loader-v-XXXXXX";
    assert_non_null(mkdtemp(dir));
    write_shards(dir, 0);
    stk_dataset_t *ds = NULL;
    assert_int_equal(stk_dataset_shard_create(&ds, dir, NULL), 0);
    for (uint32_t wk = 0; wk <= 3; wk += 3) {
        stk_loader_config_t c = base_cfg(wk, 2);
        c.batch_size = 8;
        run_t r = run_epochs(ds, &c, 3);
        assert_each_once(&r, 300, -1);
        free(r.seen);
    }
    stk_record_loc_t loc;
    char shard[512];
    locate_record(dir, 77, &loc, shard, sizeof shard);
    for (uint32_t wk = 0; wk <= 2; wk += 2) {
        stk_loader_config_t c = base_cfg(wk, 2);
        c.batch_size = 8;
        stk_loader_t *l = NULL;
        assert_int_equal(stk_loader_create(&l, ds, &c), 0);
        run_t r;
        memset(&r, 0, sizeof r);
        assert_int_equal(drain_epoch(l, &r, 300), STK_DONE);
        stk_loader_stats_t st;
        stk_loader_get_stats(l, &st);
        assert_int_equal(st.checked, 300);
        int fd = open(shard, O_RDWR);
        unsigned char byte;
        assert_int_equal(pread(fd, &byte, 1, (off_t)loc.offset + 3), 1);
        byte ^= 0x40;
        assert_int_equal(pwrite(fd, &byte, 1, (off_t)loc.offset + 3), 1);
        for (uint64_t e = 1; e < 4; e++) {
            assert_int_equal(stk_loader_set_epoch(l, e), 0);
            assert_int_equal(drain_epoch(l, &r, 300), STK_DONE);
        }
        stk_loader_get_stats(l, &st);
        assert_int_equal(st.checked, 300);
        stk_loader_destroy(&l);
        assert_int_equal(stk_loader_create(&l, ds, &c), 0);
        run_t r2;
        memset(&r2, 0, sizeof r2);
        assert_int_equal(drain_epoch(l, &r2, 300), STK_EDATA);
        assert_non_null(strstr(stk_error_message(), "record 77"));
        stk_loader_destroy(&l);
        byte ^= 0x40;
        assert_int_equal(pwrite(fd, &byte, 1, (off_t)loc.offset + 3), 1);
        close(fd);
        free(r.seen);
        free(r2.seen);
    }
    stk_dataset_destroy(&ds);
    rm_rf(dir);
}

/* Percent of the set's pages in the page cache; with evict, after
 * asking the kernel to drop them. */
static int resident_share(const char *dir, int evict)
{
    char path[600];
    size_t pages = 0, resident = 0;
    for (int k = 0;; k++) {
        snprintf(path, sizeof path, "%s/shard-%05d.stk", dir, k);
        int fd = open(path, O_RDONLY);
        if (fd < 0)
            break;
        struct stat st;
        assert_int_equal(fstat(fd, &st), 0);
        if (evict) {
            assert_int_equal(fdatasync(fd), 0);
            assert_int_equal(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
        }
        unsigned char *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
        assert_true(m != MAP_FAILED);
        size_t n = ((size_t)st.st_size + 4095) / 4096;
        unsigned char *vec = malloc(n);
        assert_non_null(vec);
        assert_int_equal(mincore(m, (size_t)st.st_size, vec), 0);
        for (size_t i = 0; i < n; i++)
            resident += vec[i] & 1;
        pages += n;
        free(vec);
        munmap(m, (size_t)st.st_size);
        close(fd);
    }
    return pages ? (int)(resident * 100 / pages) : 0;
}

/* STK_IO_AUTO on a compressed set of 2.4 MB (one shard, so that opening
 * it, which reads the head and the tail, leaves most pages uncached):
 * evicted, it is read with io_uring where the kernel allows it, and with
 * pread under STK_IO_URING=0; cached again, it is mapped. The batches are
 * the same every way. The set lies in the build tree when there is one
 * (/tmp may be a tmpfs, whose pages cannot be evicted). */
static void test_auto_io(void **state)
{
    (void)state;
    char dir[400];
    const char *root = getenv("STK_BUILD_ROOT");
    snprintf(dir, sizeof dir, "%s/stk-loader-a-XXXXXX", root && root[0] ? root : "/tmp");
    assert_non_null(mkdtemp(dir));
    stk_schema_t sc;
    memset(&sc, 0, sizeof sc);
    int64_t shape[1] = {1024};
    assert_int_equal(stk_schema_add(&sc, "image", STK_DTYPE_U8, 1, shape), 0);
    stk_writer_config_t wc;
    stk_writer_config_default(&wc);
    wc.zstd_level = 3;
    wc.use_dict = 0;
    stk_writer_t *w = NULL;
    assert_int_equal(stk_writer_create(&w, dir, &sc, &wc), 0);
    stk_rng_t r;
    stk_rng_init(&r, 99, 0);
    for (int i = 0; i < 2400; i++) {
        uint32_t rec[256];
        for (int k = 0; k < 256; k++)
            rec[k] = k < 64 ? (uint32_t)i : stk_rng_u32(&r); /* compresses a little */
        const void *data[1] = {rec};
        assert_int_equal(stk_writer_add(w, data, NULL), 0);
    }
    assert_int_equal(stk_writer_finish(w), 0);
    stk_writer_destroy(&w);
    int allowed = uring_allowed();
    const stk_io_mode_t want[3] = {allowed ? STK_IO_URING : STK_IO_PREAD, STK_IO_PREAD, STK_IO_MMAP};
    uint64_t sums[3];
    for (int pass = 0; pass < 3; pass++) {
        if (pass == 1)
            setenv("STK_IO_URING", "0", 1);
        if (pass < 2)
            resident_share(dir, 1);
        else
            read_set(dir);
        stk_dataset_t *ds = NULL;
        assert_int_equal(stk_dataset_shard_create(&ds, dir, NULL), 0);
        unsetenv("STK_IO_URING");
        int share = resident_share(dir, 0);
        if (pass < 2 && share >= 90) {
            struct statfs fs;
            statfs(dir, &fs);
            fail_msg("%s stays in the page cache (%d%% after eviction; filesystem type 0x%lx)",
                     dir, share, (unsigned long)fs.f_type);
        }
        assert_int_equal(stk_dataset_io_mode(ds), want[pass]);
        stk_loader_config_t c = base_cfg(2, 2);
        run_t rr = run_epochs(ds, &c, 1);
        assert_each_once(&rr, 2400, -1);
        sums[pass] = rr.sum;
        free(rr.seen);
        stk_dataset_destroy(&ds);
    }
    assert_true(sums[0] == sums[1] && sums[1] == sums[2]);
    rm_rf(dir);
}

static void test_shard_dataset(void **state)
{
    (void)state;
    char dir[] = "/tmp/stk-loader-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char zdir[] = "/tmp/stk-loader-z-XXXXXX";
    assert_non_null(mkdtemp(zdir));
    write_shards(dir, 0);
    write_shards(zdir, 3); /* compressed: decoded into a buffer, not in place */
    stk_shardset_t *zset = NULL;
    assert_int_equal(stk_shardset_create(&zset, zdir), 0);
    assert_true(stk_shardset_max_stored(zset) < stk_shardset_max_raw(zset));
    stk_shardset_destroy(&zset);

    stk_dataset_t *mem = make_mem_ds(300);
    stk_loader_config_t c = base_cfg(0, 2);
    c.augment = "crop:8,pad=2|hflip";
    /* Two epochs: a mapped raw set reads verified records by arithmetic
     * from the second on (the dense path), and must not change a byte. */
    run_t ref = run_epochs(mem, &c, 2);
    stk_dataset_destroy(&mem);
    for (int io = 1; io <= 6; io++) {
        stk_dataset_shard_config_t sc2;
        stk_dataset_shard_config_default(&sc2);
        sc2.io = (stk_io_mode_t)(io > 3 ? io - 3 : io);
        sc2.max_batch = 5; /* batches of 16 go in chunks */
        stk_dataset_t *ds = NULL;
        int rc = stk_dataset_shard_create(&ds, io > 3 ? zdir : dir, &sc2);
        if (sc2.io == STK_IO_URING && !uring_allowed()) {
            assert_int_equal(rc, STK_HAVE_IO_URING ? -EPERM : STK_ECONFIG);
            continue; /* refused here (uring_allowed said so); pread is run below */
        }
        assert_int_equal(rc, 0);
        assert_int_equal(stk_dataset_io_mode(ds), sc2.io);
        for (uint32_t wk = 0; wk < 3; wk += 2) {
            c.num_workers = wk;
            run_t r = run_epochs(ds, &c, 2);
            assert_true(r.sum == ref.sum);
            free(r.seen);
        }
        stk_dataset_destroy(&ds);
    }
    /* AUTO maps the raw set and, as it was just written and is all in
     * the page cache, the compressed one (test_auto_io has it evicted). */
    for (int z = 0; z < 2; z++) {
        stk_dataset_t *ds = NULL;
        assert_int_equal(stk_dataset_shard_create(&ds, z ? zdir : dir, NULL), 0);
        assert_int_equal(stk_dataset_io_mode(ds), STK_IO_MMAP);
        c.num_workers = 1;
        run_t r = run_epochs(ds, &c, 2);
        assert_true(r.sum == ref.sum);
        free(r.seen);
        stk_dataset_destroy(&ds);
    }
    free(ref.seen);

    /* Flip a byte inside record 10 of the first shard. */
    stk_dataset_t *ds = NULL;
    assert_int_equal(stk_dataset_shard_create(&ds, dir, NULL), 0);
    stk_record_loc_t loc;
    char shard[512];
    locate_record(dir, 10, &loc, shard, sizeof shard);
    int fd = open(shard, O_RDWR);
    unsigned char byte;
    assert_int_equal(pread(fd, &byte, 1, (off_t)loc.offset + 20), 1);
    byte ^= 0x5a;
    assert_int_equal(pwrite(fd, &byte, 1, (off_t)loc.offset + 20), 1);
    close(fd);
    for (uint32_t wk = 0; wk < 3; wk += 2) {
        c.num_workers = wk;
        c.skip_corrupt = 0;
        stk_loader_t *l = NULL;
        run_t r;
        memset(&r, 0, sizeof r);
        assert_int_equal(stk_loader_create(&l, ds, &c), 0);
        assert_int_equal(drain_epoch(l, &r, 300), STK_EDATA);
        assert_non_null(strstr(stk_error_message(), "record 10"));
        assert_non_null(strstr(stk_error_message(), ".stk"));
        stk_loader_destroy(&l);
        free(r.seen);
        c.skip_corrupt = 1;
        memset(&r, 0, sizeof r);
        assert_int_equal(stk_loader_create(&l, ds, &c), 0);
        assert_int_equal(drain_epoch(l, &r, 300), STK_DONE);
        assert_each_once(&r, 300, 10);
        stk_loader_stats_t st;
        stk_loader_get_stats(l, &st);
        assert_int_equal(st.skipped, 1);
        assert_true(st.read.bytes > 0);
        if (wk) {
            /* Workers report peak RSS and private memory (which leaves out
             * the mapped shards' pages, so it is the smaller). */
            assert_true(st.worker_max_private_kb > 0);
            assert_true(st.worker_max_private_kb <= st.worker_max_rss_kb);
        }
        /* Checksums are verified once per worker (STK_VERIFY_ONCE), but a
         * record never matched is checked, and skipped, every epoch. */
        free(r.seen);
        memset(&r, 0, sizeof r);
        assert_int_equal(stk_loader_set_epoch(l, 1), 0);
        assert_int_equal(drain_epoch(l, &r, 300), STK_DONE);
        assert_each_once(&r, 300, 10);
        stk_loader_get_stats(l, &st);
        assert_int_equal(st.skipped, 2);
        stk_loader_destroy(&l);
        free(r.seen);
    }
    stk_dataset_destroy(&ds);
    rm_rf(dir);
    rm_rf(zdir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_memory_inline),
        cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_augment_output),
        cmocka_unit_test(test_var_fields_and_corrupt),
        cmocka_unit_test(test_resume),
        cmocka_unit_test(test_worker_killed),
        cmocka_unit_test(test_worker_killed_slow_main),
        cmocka_unit_test(test_worker_hung),
        cmocka_unit_test(test_worker_init),
        cmocka_unit_test(test_limits_and_config),
        cmocka_unit_test(test_samplers),
        cmocka_unit_test(test_all_slots_held),
        cmocka_unit_test(test_destroy_no_leaks),
        cmocka_unit_test(test_main_killed),
        cmocka_unit_test(test_workers_start_clean),
        cmocka_unit_test(test_io_resolve),
        cmocka_unit_test(test_shard_dataset),
        cmocka_unit_test(test_shardset_export),
        cmocka_unit_test(test_auto_io),
        cmocka_unit_test(test_verify_shared),
        cmocka_unit_test(test_no_lost_wakeup),
        cmocka_unit_test(test_lost_task_recovered),
        cmocka_unit_test(test_interrupt_and_stall_report),
        cmocka_unit_test(test_forkserver_killed),
        cmocka_unit_test(test_state_after_epoch),
        cmocka_unit_test(test_trial),
        cmocka_unit_test(test_usable_cpus),
        cmocka_unit_test(test_auto_workers),
    };
    /* Workers are forked from the fork server, started here while this
     * process is still small. */
    stk_loader_forkserver_start();
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    stk_loader_forkserver_stop();
    return rc;
}
