/* SPDX-License-Identifier: MIT */
/* loader/: datasets (memory, a user vtable with variable-length fields),
 * batches in sampler order, bit-identical batches for any worker count and
 * prefetch depth, augmentation, resume and the state after an epoch,
 * worker init hooks, pinning hooks, limits and bad configs. The failure
 * paths with real processes are test_loader_fail.c's, shards and reads
 * test_loader_io.c's, picking the worker count test_loader_tune.c's. */
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_memory_inline),
        cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_augment_output),
        cmocka_unit_test(test_var_fields_and_corrupt),
        cmocka_unit_test(test_resume),
        cmocka_unit_test(test_worker_init),
        cmocka_unit_test(test_limits_and_config),
        cmocka_unit_test(test_samplers),
        cmocka_unit_test(test_all_slots_held),
        cmocka_unit_test(test_state_after_epoch),
    };
    /* Workers are forked from the fork server, started here while this
     * process is still small. */
    stk_loader_forkserver_start();
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    stk_loader_forkserver_stop();
    return rc;
}
