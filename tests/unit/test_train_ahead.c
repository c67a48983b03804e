/* SPDX-License-Identifier: MIT */
/* The loop's batches one ahead (train/feed.c): on a device, batch k + 1 is
 * fetched, converted and put into the feed before step k runs. Checked on
 * the CPU backend posing as a device (STK_ENGINE_STAGED, set here around
 * each model's creation) against the plain CPU backend, which fetches
 * nothing ahead, with a real loader over shards written here:
 * - the inputs converter hands consecutive batches different host buffers
 *   and leaves the one before unchanged (the staged feed copies at put, so
 *   only this catches a batch overwritten while its copy is in flight);
 * - whole runs (workers 0 and 2, a last short batch, accumulation, eval)
 *   give the same bits with and without the lookahead, and the loader is
 *   seen one batch ahead during each step but an epoch's last;
 * - a loader of one slot (prefetch 1, no workers) fetches nothing ahead;
 * - a stop mid-epoch resumes bit-identically (the batch fetched ahead is
 *   dropped and not counted in the checkpoint's position);
 * - epochs of one batch (short, or full with drop_last);
 * - a corrupt record in the batch fetched ahead fails the run after the
 *   batch before it was stepped (closing its group), as without the
 *   lookahead, naming shard and record, with only whole checkpoints
 *   left;
 * - a batch larger than the feed arriving ahead (a record skipped in the
 *   first batch): fed once the batch before is done;
 * - the public stk_train_batches: an epoch by hand, its counts, misuse. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "stoker/stoker.h"

#define IMG 12
#define CLASSES 3
#define NREC 45 /* batches of 8: 5 full and a short one of 5 */
#define BATCH 8

static char tmpdir[64];
static char shards[128], bad_shards[128], bad0_shards[128], small6[128], small9[128];

static void write_shards(const char *dir, uint64_t n, uint64_t seed)
{
    stk_schema_t sc;
    memset(&sc, 0, sizeof sc);
    int64_t ishape[3] = {1, IMG, IMG};
    assert_int_equal(stk_schema_add(&sc, "image", STK_DTYPE_U8, 3, ishape), 0);
    /* u8 labels: the converter widens them into a buffer of its own, the
     * one a step still reads while the next batch is converted. */
    assert_int_equal(stk_schema_add(&sc, "label", STK_DTYPE_U8, 0, NULL), 0);
    stk_writer_config_t wc;
    stk_writer_config_default(&wc);
    wc.records_per_shard = 20;
    stk_writer_t *w = NULL;
    assert_int_equal(stk_writer_create(&w, dir, &sc, &wc), 0);
    stk_rng_t rng;
    stk_rng_init(&rng, seed, 0);
    for (uint64_t i = 0; i < n; i++) {
        uint8_t img[IMG * IMG], label = (uint8_t)stk_rng_below(&rng, CLASSES);
        for (int k = 0; k < IMG * IMG; k++)
            img[k] = (uint8_t)stk_rng_below(&rng, 64);
        int y0 = 1 + 3 * label, x0 = 2 + 2 * label;
        for (int y = y0; y < y0 + 4; y++)
            for (int x = x0; x < x0 + 4; x++)
                img[y * IMG + x] = (uint8_t)(180 + stk_rng_below(&rng, 70));
        const void *data[2] = {img, &label};
        assert_int_equal(stk_writer_add(w, data, NULL), 0);
    }
    assert_int_equal(stk_writer_finish(w), 0);
    stk_writer_destroy(&w);
}

/* Flips a byte inside record index of the set in dir. */
static void corrupt_record(const char *dir, uint64_t index)
{
    stk_shardset_t *set = NULL;
    assert_int_equal(stk_shardset_create(&set, dir), 0);
    stk_record_loc_t loc;
    assert_int_equal(stk_shardset_locate(set, index, &loc), 0);
    char path[512];
    snprintf(path, sizeof path, "%s", stk_shardset_shard_path(set, loc.shard));
    stk_shardset_destroy(&set);
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    unsigned char byte;
    assert_int_equal(pread(fd, &byte, 1, (off_t)loc.offset + 20), 1);
    byte ^= 0x5a;
    assert_int_equal(pwrite(fd, &byte, 1, (off_t)loc.offset + 20), 1);
    close(fd);
}

static int setup(void **state)
{
    (void)state;
    strcpy(tmpdir, "/tmp/stk-ahead-XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    snprintf(shards, sizeof shards, "%s/shards", tmpdir);
    snprintf(bad_shards, sizeof bad_shards, "%s/bad", tmpdir);
    write_shards(shards, NREC, 6);
    write_shards(bad_shards, NREC, 6);
    snprintf(small6, sizeof small6, "%s/small6", tmpdir);
    snprintf(small9, sizeof small9, "%s/small9", tmpdir);
    write_shards(small6, 6, 8);
    write_shards(small9, 9, 9);
    /* Record 35: batch 4 of a sequential epoch, fetched ahead while
     * batch 3 closes the group 2-3. */
    corrupt_record(bad_shards, 35);
    /* Record 3, skipped: batch 0 of a sequential epoch has 7 samples, the
     * feed is made for them, and batch 1, of 8, comes ahead while batch 0
     * is still in the feed. */
    snprintf(bad0_shards, sizeof bad0_shards, "%s/bad0", tmpdir);
    write_shards(bad0_shards, NREC, 6);
    corrupt_record(bad0_shards, 3);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static const char model_text[] = "input shape=1,12,12\n"
                                 "conv2d name=conv1 out=4 kernel=3 pad=1 bias=0\n"
                                 "batchnorm2d name=bn1\n"
                                 "relu\n"
                                 "maxpool2d kernel=2\n"
                                 "flatten\n"
                                 "dropout p=0.25\n"
                                 "linear name=fc out=3\n"
                                 "cross_entropy\n";

/* The CPU backend, or the same posing as a device (host_memory 0: the
 * feed copies, and the loop fetches ahead). */
static stk_model_t *make_model(int staged)
{
    stk_model_builder_t *b = NULL;
    assert_int_equal(stk_model_builder_create(&b), 0);
    assert_int_equal(stk_model_builder_parse(b, model_text, "test.model"), 0);
    stk_model_config_t mc;
    stk_model_config_default(&mc);
    mc.batch_size = BATCH;
    mc.seed = 5;
    mc.threads = 1;
    if (staged)
        setenv("STK_ENGINE_STAGED", "1", 1);
    else
        unsetenv("STK_ENGINE_STAGED");
    stk_model_t *m = NULL;
    int rc = stk_model_create(&m, b, &mc);
    unsetenv("STK_ENGINE_STAGED");
    stk_model_builder_destroy(&b);
    if (rc)
        fail_msg("model: %s", stk_error_message());
    return m;
}

/* ---- the converter's buffers ---------------------------------------------- */

static void test_converter_buffers(void **state)
{
    (void)state;
    stk_dataset_t *ds = NULL;
    assert_int_equal(stk_dataset_shard_create(&ds, shards, NULL), 0);
    stk_loader_config_t c;
    stk_loader_config_default(&c);
    c.batch_size = BATCH;
    c.seed = 3;
    c.shuffle = 1;
    stk_loader_t *l = NULL;
    assert_int_equal(stk_loader_create(&l, ds, &c), 0);
    stk_train_inputs_config_t ic;
    stk_train_inputs_config_default(&ic);
    ic.normalize = "normalize:mean=0.3,std=0.3";
    stk_train_inputs_t *in = NULL;
    assert_int_equal(stk_train_inputs_create(&in, &ic), 0);

    /* Two batches held at once, as the loop holds them: batch 1 converted
     * while what batch 0's call gave is still read. */
    stk_batch_t b[2];
    stk_tensor_t x[2], y[2];
    float img0[BATCH * IMG * IMG];
    int64_t lab0[BATCH];
    assert_int_equal(stk_loader_next(l, &b[0]), 0);
    assert_int_equal(stk_train_inputs_get(in, &b[0], &x[0], &y[0]), 0);
    assert_int_equal(x[0].dtype, STK_DTYPE_F32);
    assert_int_equal(y[0].dtype, STK_DTYPE_I64);
    memcpy(img0, x[0].data, sizeof img0);
    memcpy(lab0, y[0].data, sizeof lab0);
    assert_int_equal(stk_loader_next(l, &b[1]), 0);
    assert_int_equal(stk_train_inputs_get(in, &b[1], &x[1], &y[1]), 0);
    assert_ptr_not_equal(x[0].data, x[1].data);
    assert_ptr_not_equal(y[0].data, y[1].data);
    assert_memory_equal(img0, x[0].data, sizeof img0);
    assert_memory_equal(lab0, y[0].data, sizeof lab0);
    /* Different batches: had they shared a buffer, equal views. */
    assert_memory_not_equal(x[0].data, x[1].data, sizeof img0);
    stk_loader_release(l, &b[0]);
    stk_loader_release(l, &b[1]);
    stk_train_inputs_destroy(&in);
    stk_loader_destroy(&l);
    stk_dataset_destroy(&ds);
}

/* ---- whole runs ------------------------------------------------------------- */

typedef struct run_cfg {
    const char *data; /* shard folder */
    int staged;
    uint32_t workers, prefetch;
    uint64_t nrec_batch; /* batch size of the train loader */
    int shuffle, drop_last, skip_corrupt;
    uint64_t epochs, accum;
    uint64_t stop_epoch, stop_batch; /* stop when on_step sees it */
    const char *ckpt;                /* checkpoint folder or NULL */
    uint64_t ckpt_steps;
} run_cfg_t;

typedef struct run {
    run_cfg_t c;
    stk_dataset_t *ds, *eds;
    stk_loader_t *tl, *el;
    stk_train_inputs_t *in;
    stk_model_t *m;
    stk_optim_t *o;
    stk_sched_t *s;
    stk_train_loop_config_t lc;
    stk_train_state_t st;
    volatile sig_atomic_t stop;
    /* steps during which the loader stood one batch past the step's, and
     * steps in all */
    uint64_t ahead, steps;
} run_t;

static run_cfg_t base_cfg(int staged, uint32_t workers)
{
    return (run_cfg_t){.data = shards, .staged = staged, .workers = workers, .nrec_batch = BATCH, .shuffle = 1,
                       .epochs = 3, .accum = 2, .stop_epoch = UINT64_MAX};
}

static void on_step(const stk_train_progress_t *p, void *user)
{
    run_t *r = user;
    stk_loader_state_t ls;
    stk_loader_get_state(r->tl, &ls);
    r->steps++;
    /* The loader's next batch is p->batch (0-based number + 1) without
     * the lookahead, the one after with it (an epoch's last: none). */
    if (ls.epoch == p->epoch && ls.batch == p->batch + 1)
        r->ahead++;
    else
        assert_true((ls.epoch == p->epoch && ls.batch == p->batch) || (ls.epoch == p->epoch + 1 && ls.batch == 0));
    if (p->epoch == r->c.stop_epoch && p->batch == r->c.stop_batch)
        r->stop = 1;
}

static void run_open(run_t *r, const run_cfg_t *c)
{
    memset(r, 0, sizeof *r);
    r->c = *c;
    assert_int_equal(stk_dataset_shard_create(&r->ds, c->data, NULL), 0);
    assert_int_equal(stk_dataset_shard_create(&r->eds, shards, NULL), 0);
    stk_loader_config_t lc;
    stk_loader_config_default(&lc);
    lc.batch_size = c->nrec_batch;
    lc.shuffle = c->shuffle;
    lc.drop_last = c->drop_last;
    lc.skip_corrupt = c->skip_corrupt;
    lc.seed = 11;
    lc.num_workers = c->workers;
    lc.prefetch = c->prefetch;
    lc.persistent_workers = 1;
    lc.augment = "crop:12,pad=1|hflip";
    if (stk_loader_create(&r->tl, r->ds, &lc))
        fail_msg("loader: %s", stk_error_message());
    stk_loader_config_default(&lc);
    lc.batch_size = 16; /* 3 batches, the last short */
    assert_int_equal(stk_loader_create(&r->el, r->eds, &lc), 0);
    stk_train_inputs_config_t ic;
    stk_train_inputs_config_default(&ic);
    ic.normalize = "normalize:mean=0.3,std=0.3";
    assert_int_equal(stk_train_inputs_create(&r->in, &ic), 0);
    r->m = make_model(c->staged);
    assert_int_equal(stk_optim_create_for_model(&r->o, r->m, "sgd:lr=0.05,momentum=0.9,weight_decay=5e-4"), 0);
    assert_int_equal(stk_sched_create_from_text(&r->s, r->o, "warmup:2,start=0.1|cosine:eta_min=0", 0, 12), 0);
    stk_train_loop_config_t *l = &r->lc;
    stk_train_loop_config_default(l);
    l->model = r->m;
    l->optim = r->o;
    l->sched = r->s;
    l->train_loader = r->tl;
    l->train_inputs = r->in;
    l->eval_loader = r->el;
    l->eval_inputs = r->in;
    l->epochs = c->epochs;
    l->stepper.accum_steps = c->accum;
    l->topk = 2;
    l->checkpoint_dir = c->ckpt;
    l->checkpoint_steps = c->ckpt_steps;
    l->keep_last = 0;
    l->stop = &r->stop;
    l->on_step = on_step;
    l->user = r;
    stk_train_state_init(&r->st, 1);
}

static void run_close(run_t *r)
{
    stk_train_state_clear(&r->st);
    stk_loader_destroy(&r->tl);
    stk_loader_destroy(&r->el);
    stk_train_inputs_destroy(&r->in);
    stk_sched_destroy(&r->s);
    stk_optim_destroy(&r->o);
    stk_model_destroy(&r->m);
    stk_dataset_destroy(&r->ds);
    stk_dataset_destroy(&r->eds);
}

static int run_go(run_t *r)
{
    return stk_train_run(&r->lc, &r->st);
}

static void expect_same_bits(const run_t *a, const run_t *b)
{
    size_t n, nb;
    const float *pa = stk_model_params(a->m, &n), *ba = stk_model_buffers(a->m, &nb);
    const float *pb = stk_model_params(b->m, NULL), *bb = stk_model_buffers(b->m, NULL);
    assert_memory_equal(pa, pb, n * sizeof *pa);
    assert_memory_equal(ba, bb, nb * sizeof *ba);
    assert_int_equal(a->st.step, b->st.step);
    assert_int_equal(a->st.micro, b->st.micro);
    assert_int_equal(a->st.loader.epoch, b->st.loader.epoch);
    assert_int_equal(a->st.loader.batch, b->st.loader.batch);
    assert_int_equal(a->st.n_history, b->st.n_history);
    for (size_t i = 0; i < a->st.n_history; i++) {
        assert_memory_equal(&a->st.history[i].train_loss, &b->st.history[i].train_loss, sizeof(double));
        assert_memory_equal(&a->st.history[i].train_acc, &b->st.history[i].train_acc, sizeof(double));
        assert_memory_equal(&a->st.history[i].test_loss, &b->st.history[i].test_loss, sizeof(double));
        assert_memory_equal(&a->st.history[i].test_topk, &b->st.history[i].test_topk, sizeof(double));
    }
}

/* Straight runs: the CPU (nothing ahead) and the staged device (one ahead)
 * give the same bits, with and without workers. */
static void test_same_bits(void **state)
{
    (void)state;
    for (uint32_t workers = 0; workers <= 2; workers += 2) {
        run_t cpu, dev;
        run_cfg_t c = base_cfg(0, workers);
        run_open(&cpu, &c);
        if (run_go(&cpu))
            fail_msg("cpu run, %u workers: %s", workers, stk_error_message());
        assert_int_equal(cpu.ahead, 0);
        c.staged = 1;
        run_open(&dev, &c);
        if (run_go(&dev))
            fail_msg("staged run, %u workers: %s", workers, stk_error_message());
        /* 6 batches an epoch, 3 groups: 9 steps. Seen ahead during all
         * but each epoch's last two batches: at the last one nothing is
         * left to fetch, and once the last is fetched ahead the loader
         * says the next epoch. */
        assert_int_equal(dev.st.step, 9);
        assert_int_equal(dev.steps, 18);
        assert_int_equal(dev.ahead, 18 - 2 * 3);
        expect_same_bits(&cpu, &dev);
        run_close(&cpu);
        run_close(&dev);
    }
}

/* A loader of one slot cannot hold a batch ahead: the loop does without. */
static void test_one_slot(void **state)
{
    (void)state;
    run_t a, b;
    run_cfg_t c = base_cfg(1, 0);
    run_open(&a, &c);
    assert_int_equal(run_go(&a), 0);
    c.prefetch = 1;
    run_open(&b, &c);
    assert_int_equal(run_go(&b), 0);
    assert_int_equal(b.ahead, 0);
    assert_true(a.ahead > 0);
    expect_same_bits(&a, &b);
    run_close(&a);
    run_close(&b);
}

/* A stop during batch 3 of epoch 2 (in the group 2-3), with batch 4
 * fetched ahead: the checkpoint says batch 4 is next, and the resumed run
 * ends where the straight one does. */
static void test_stop_resume(void **state)
{
    (void)state;
    for (uint32_t workers = 0; workers <= 2; workers += 2) {
        char dir[160];
        snprintf(dir, sizeof dir, "%s/stop-%u", tmpdir, workers);
        run_t a, b, r;
        run_cfg_t c = base_cfg(1, workers);
        run_open(&a, &c);
        assert_int_equal(run_go(&a), 0);
        c.ckpt = dir;
        c.stop_epoch = 1;
        c.stop_batch = 3;
        run_open(&b, &c);
        assert_int_equal(run_go(&b), -EINTR);
        if (!strstr(stk_error_message(), "stopped at epoch 2, batch 4 of 6, step 5"))
            fail_msg("message: %s", stk_error_message());
        assert_true(b.st.loader.epoch == 1 && b.st.loader.batch == 4 && b.st.micro == 10);
        assert_true(b.ahead > 0);
        c.stop_epoch = UINT64_MAX;
        run_open(&r, &c);
        char path[512];
        assert_int_equal(stk_ckpt_dir_latest(dir, NULL, path, sizeof path), 0);
        stk_train_parts_t parts = {r.m, r.o, r.s};
        assert_int_equal(stk_train_checkpoint_load(path, &parts, &r.st), 0);
        assert_true(r.st.loader.epoch == 1 && r.st.loader.batch == 4);
        if (run_go(&r))
            fail_msg("resumed: %s", stk_error_message());
        expect_same_bits(&a, &r);
        run_close(&a);
        run_close(&b);
        run_close(&r);
    }
}

/* Epochs of one batch: short (6 records, batches of 8) or full (9 records,
 * drop_last), with one slot or two: fetching ahead meets the epoch's end
 * at once. The same bits as the CPU. */
static void test_one_batch_epoch(void **state)
{
    (void)state;
    for (int full = 0; full < 2; full++)
        for (uint32_t prefetch = 1; prefetch <= 2; prefetch++) {
            run_t cpu, dev;
            run_cfg_t c = base_cfg(0, 0);
            c.data = full ? small9 : small6;
            c.drop_last = full;
            c.prefetch = prefetch;
            run_open(&cpu, &c);
            assert_int_equal(stk_loader_len(cpu.tl), 1);
            if (run_go(&cpu))
                fail_msg("cpu: %s", stk_error_message());
            c.staged = 1;
            run_open(&dev, &c);
            if (run_go(&dev))
                fail_msg("staged, prefetch %u: %s", prefetch, stk_error_message());
            /* one step an epoch, the epoch's last: never ahead */
            assert_int_equal(dev.st.step, 3);
            assert_int_equal(dev.steps, 3);
            assert_int_equal(dev.ahead, 0);
            expect_same_bits(&cpu, &dev);
            run_close(&cpu);
            run_close(&dev);
        }
}

/* A corrupt record in the batch fetched ahead: the batch before it is
 * stepped, then the run fails naming shard and record, at the state the
 * CPU run (nothing ahead) fails at, with the same parameters. */
static void test_error_ahead(void **state)
{
    (void)state;
    for (uint32_t workers = 0; workers <= 2; workers += 2) {
        char dir[2][160];
        run_t cpu, dev;
        run_cfg_t c = base_cfg(0, workers);
        c.data = bad_shards;
        c.shuffle = 0;
        c.ckpt_steps = 1;
        for (int s = 0; s < 2; s++) {
            snprintf(dir[s], sizeof dir[s], "%s/err-%u-%d", tmpdir, workers, s);
            run_t *r = s ? &dev : &cpu;
            c.staged = s;
            c.ckpt = dir[s];
            run_open(r, &c);
            assert_int_equal(run_go(r), STK_EDATA);
            if (!strstr(stk_error_message(), "(global 35)") || !strstr(stk_error_message(), ".stk"))
                fail_msg("message: %s", stk_error_message());
            /* Batches 0-3 stepped (steps 1 and 2): batch 3 too, though
             * batch 4's record failed while it was handed out. */
            assert_true(r->st.step == 2 && r->st.micro == 4 && r->st.loader.epoch == 0 && r->st.loader.batch == 4);
        }
        assert_true(dev.ahead > 0);
        expect_same_bits(&cpu, &dev);
        /* Whole checkpoints only (one per step, keep_last 0: steps 1 and
         * 2), nothing half-written. */
        for (int s = 0; s < 2; s++) {
            DIR *d = opendir(dir[s]);
            assert_non_null(d);
            int files = 0;
            for (struct dirent *e; (e = readdir(d)) != NULL;) {
                if (e->d_name[0] == '.')
                    continue;
                files++;
                if (strstr(e->d_name, ".tmp"))
                    fail_msg("%s/%s left behind", dir[s], e->d_name);
            }
            closedir(d);
            assert_int_equal(files, 2);
            run_t r;
            c.staged = s;
            run_open(&r, &c);
            char path[512];
            assert_int_equal(stk_ckpt_dir_latest(dir[s], NULL, path, sizeof path), 0);
            stk_train_parts_t parts = {r.m, r.o, r.s};
            assert_int_equal(stk_train_checkpoint_load(path, &parts, &r.st), 0);
            assert_true(r.st.step == 2 && r.st.loader.batch == 4);
            run_close(&r);
        }
        run_close(&cpu);
        run_close(&dev);
    }
}

/* A batch larger than the feed was made for, fetched ahead while the one
 * before is in the feed: fed once that one is done (remaking the feed
 * earlier would free its buffer under it). The same bits as the CPU. */
static void test_feed_grows(void **state)
{
    (void)state;
    run_t cpu, dev;
    run_cfg_t c = base_cfg(0, 0);
    c.data = bad0_shards;
    c.shuffle = 0;
    c.skip_corrupt = 1;
    run_open(&cpu, &c);
    if (run_go(&cpu))
        fail_msg("cpu: %s", stk_error_message());
    c.staged = 1;
    run_open(&dev, &c);
    if (run_go(&dev))
        fail_msg("staged: %s", stk_error_message());
    assert_true(dev.ahead > 0);
    expect_same_bits(&cpu, &dev);
    run_close(&cpu);
    run_close(&dev);
}

/* The public face (stk_train_batches): an epoch by hand, the counts, the
 * misuse it refuses. */
static void test_public_batches(void **state)
{
    (void)state;
    for (int staged = 0; staged < 2; staged++) {
        run_t r;
        run_cfg_t c = base_cfg(staged, 0);
        run_open(&r, &c);
        stk_train_batches_t *tb = NULL;
        assert_int_equal(stk_train_batches_create(&tb, NULL, r.tl, r.in), -EINVAL);
        assert_int_equal(stk_train_batches_create(&tb, r.m, r.tl, r.in), 0);
        stk_train_batches_stats_t bs;
        assert_int_equal(stk_train_batches_stats(tb, &bs), 0);
        assert_int_equal(bs.ahead, -1);
        assert_int_equal(stk_loader_set_epoch(r.tl, 0), 0);
        const stk_batch_t *b;
        stk_tensor_t x, y;
        uint64_t n = 0;
        int rc;
        while ((rc = stk_train_batches_next(tb, &b, &x, &y)) == 0) {
            assert_int_equal(b->number, n);
            assert_int_equal(x.shape[0], (int64_t)b->size);
            assert_int_equal(stk_train_batches_next(tb, &b, &x, &y), STK_ESTATE);
            float loss;
            rc = stk_model_forward_tensor(r.m, &x, &y, &loss);
            assert_int_equal(stk_train_batches_done(tb, rc), 0);
            n++;
        }
        assert_int_equal(rc, STK_DONE);
        assert_int_equal(n, 6);
        assert_int_equal(stk_train_batches_stats(tb, &bs), 0);
        assert_int_equal(bs.batches, 6);
        assert_int_equal(bs.ahead, staged);
        assert_int_equal(bs.feed.copies, staged ? 6 : 0);
        /* A stop after batch 0 of the next epoch: batch 1, fetched ahead,
         * goes back unstepped; the loader stands past it (a resume sets
         * its state). */
        assert_int_equal(stk_loader_set_epoch(r.tl, 1), 0);
        assert_int_equal(stk_train_batches_next(tb, &b, &x, &y), 0);
        assert_int_equal(stk_train_batches_done(tb, 0), 0);
        assert_int_equal(stk_train_batches_drop(tb), 0);
        stk_loader_state_t ls;
        stk_loader_get_state(r.tl, &ls);
        assert_int_equal(ls.batch, staged ? 2 : 1);
        stk_train_batches_destroy(&tb);
        stk_train_batches_destroy(&tb);
        run_close(&r);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_converter_buffers),
        cmocka_unit_test(test_same_bits),
        cmocka_unit_test(test_one_slot),
        cmocka_unit_test(test_stop_resume),
        cmocka_unit_test(test_one_batch_epoch),
        cmocka_unit_test(test_error_ahead),
        cmocka_unit_test(test_feed_grows),
        cmocka_unit_test(test_public_batches),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
