/* SPDX-License-Identifier: MIT */
/* stoker-train: a training loop driven by one config file (TRAIN_CONFIG.md).
 * It ties the loader (shards, workers, augmentation) to the engine (model,
 * forward/backward) and the optimizer and scheduler, with gradient
 * accumulation, an evaluation per epoch, metrics, a plot and checkpoints
 * that resume bit-exactly. Everything is validated (data opened, model
 * built, optimizer and schedule parsed, checkpoint loaded) before the first
 * byte of output is written. */
#define _GNU_SOURCE
#include "stoker-train.h"
#include "tool_clock.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "stoker/checkpoint.h"
#include "stoker/engine.h"
#include "stoker/loader.h"
#include "stoker/optim.h"

#define EXIT_RUNTIME 1
#define EXIT_USAGE 2
#define CKPT_FORMAT "stoker-train 1"

typedef struct run {
    train_config_t cfg;
    char eval_augment[TRAIN_SPEC_MAX];
    char plot_path[TRAIN_PATH_MAX + 8];
    int json, progress;

    stk_dataset_t *train_ds, *test_ds;
    stk_sampler_t *train_sampler, *test_sampler;
    stk_loader_t *train_loader, *test_loader;
    stk_model_t *model;
    stk_optim_t *opt;
    stk_sched_t *sched;
    int64_t in_c, in_h, in_w, classes;
    uint64_t batches_per_epoch;  /* micro-batches */
    uint64_t steps_per_epoch;    /* optimizer steps */

    /* position */
    int epoch;                   /* 0-based epoch in progress */
    uint64_t step;               /* optimizer steps taken */
    uint64_t resume_batch;       /* micro-batch to start the epoch at (resume) */
    /* partial sums of the epoch in progress (kept in mid-epoch checkpoints) */
    double ep_loss_sum;
    uint64_t ep_correct, ep_seen;
    double ep_train_s, ep_wait_s;

    train_epoch_stats_t *hist;
    size_t nhist;

    float *fbuf;                 /* images converted to f32 when needed */
    size_t fbuf_len;
    int64_t *lbuf;
    size_t lbuf_len;

    FILE *metrics;
    /* phase times of this process (profile = true) */
    double prof_compute_s, prof_optim_s, prof_eval_s;
    double total_train_s, total_wait_s;
    uint64_t total_images;
} run_t;

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static int fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("stoker-train: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return code;
}

/* An error from the library: its code's name and the context message. */
static int fail_stk(int rc, const char *what)
{
    const char *msg = stk_error_message();
    return fail(EXIT_RUNTIME, "%s: %s%s%s (%s)", what, msg, msg[0] ? ": " : "", stk_strerror(rc), stk_err_name(rc));
}

static void usage(FILE *f)
{
    fputs("usage: stoker-train CONFIG [--set key=value]... [--resume CKPT_DIR|CKPT_FILE] [--json]\n"
          "  CONFIG        'key = value' lines, # comments (see tools/TRAIN_CONFIG.md)\n"
          "  --set k=v     override one key (repeatable)\n"
          "  --resume P    continue from the newest checkpoint in directory P (or file P)\n"
          "  --json        print one JSON object with the results as the last line\n"
          "  --print-config  print the effective config and exit\n",
          f);
}

/* ---- setup ----------------------------------------------------------- */

static int find_field(const stk_schema_t *s, const char *name, const char *path, const char *key)
{
    int f = stk_schema_find(s, name);
    if (f < 0) {
        char desc[512];
        stk_schema_format(s, desc, sizeof desc);
        fail(EXIT_USAGE, "%s: no field '%s' (key '%s'); the data has %s", path, name, key, desc);
    }
    return f;
}

/* The image field's shape as C, H, W (a 2-D field is one channel). */
static int image_desc(const stk_field_t *fld, stk_image_desc_t *d, const char *path)
{
    memset(d, 0, sizeof *d);
    d->dtype = fld->dtype;
    d->layout = STK_LAYOUT_CHW;
    if (fld->ndim == 2) {
        d->c = 1;
        d->h = (uint32_t)fld->shape[0];
        d->w = (uint32_t)fld->shape[1];
    } else if (fld->ndim == 3) {
        d->c = (uint32_t)fld->shape[0];
        d->h = (uint32_t)fld->shape[1];
        d->w = (uint32_t)fld->shape[2];
    } else {
        return fail(EXIT_USAGE, "%s: field '%s' is not an image (%u dims)", path, fld->name, fld->ndim);
    }
    for (uint32_t i = 0; i < fld->ndim; i++)
        if (fld->shape[i] <= 0)
            return fail(EXIT_USAGE, "%s: field '%s' has a variable shape", path, fld->name);
    return 0;
}

/* Opens a data set and checks its fields against the model; the augment
 * spec is parsed here too, so that a bad spec fails before any output. */
static int open_data(run_t *r, const char *path, const char *key, const char *spec, const char *spec_key,
                     stk_dataset_t **ds)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return fail(EXIT_USAGE, "key '%s': data path %s: %s", key, path, strerror(errno));
    stk_shard_dataset_config_t dcfg;
    stk_shard_dataset_config_default(&dcfg);
    if ((uint64_t)r->cfg.batch_size > dcfg.max_batch)
        dcfg.max_batch = (uint32_t)r->cfg.batch_size;
    if ((uint64_t)r->cfg.eval_batch_size > dcfg.max_batch)
        dcfg.max_batch = (uint32_t)r->cfg.eval_batch_size;
    int rc = stk_dataset_shard_create(ds, path, &dcfg);
    if (rc) {
        fail_stk(rc, key);
        return EXIT_USAGE;
    }
    const stk_schema_t *schema = stk_dataset_schema(*ds);
    int fi = find_field(schema, r->cfg.image_field, path, "image_field");
    if (fi < 0)
        return EXIT_USAGE;
    int fl = find_field(schema, r->cfg.label_field, path, "label_field");
    if (fl < 0)
        return EXIT_USAGE;
    const stk_field_t *lab = &schema->fields[fl];
    if (lab->ndim != 0 || (lab->dtype != STK_DTYPE_U8 && lab->dtype != STK_DTYPE_I8 && lab->dtype != STK_DTYPE_I32 &&
                           lab->dtype != STK_DTYPE_I64))
        return fail(EXIT_USAGE, "%s: label field '%s' must be an integer scalar", path, lab->name);
    stk_image_desc_t in, out;
    if (image_desc(&schema->fields[fi], &in, path))
        return EXIT_USAGE;
    stk_augment_t *aug = NULL;
    rc = stk_augment_create(&aug, spec, &in);
    if (rc) {
        fail(EXIT_USAGE, "key '%s': %s (%s)", spec_key, stk_error_message(), stk_err_name(rc));
        return EXIT_USAGE;
    }
    stk_augment_output(aug, &out);
    stk_augment_destroy(&aug);
    if (out.layout != STK_LAYOUT_CHW || (int64_t)out.c != r->in_c || (int64_t)out.h != r->in_h ||
        (int64_t)out.w != r->in_w)
        return fail(EXIT_USAGE, "%s: images are %ux%ux%u after '%s' (%s), model %s takes %" PRId64 "x%" PRId64 "x%" PRId64,
                    path, out.c, out.h, out.w, spec, spec_key, r->cfg.model, r->in_c, r->in_h, r->in_w);
    if (out.dtype != STK_DTYPE_F32 && out.dtype != STK_DTYPE_U8)
        return fail(EXIT_USAGE, "key '%s': output dtype %s is not supported (f32 or u8)", spec_key,
                    stk_dtype_name(out.dtype));
    return 0;
}

static int make_loader(run_t *r, stk_dataset_t *ds, int train, stk_sampler_t **sampler, stk_loader_t **out)
{
    uint64_t n = stk_dataset_len(ds);
    uint64_t limit = train ? r->cfg.train_limit : r->cfg.test_limit;
    if (limit && limit < n)
        n = limit;
    stk_sampler_config_t scfg;
    stk_sampler_config_default(&scfg);
    scfg.kind = train ? STK_SAMPLER_RANDOM : STK_SAMPLER_SEQUENTIAL;
    scfg.dataset_len = n;
    scfg.seed = r->cfg.seed;
    int rc = stk_sampler_create(sampler, &scfg);
    if (rc)
        return fail_stk(rc, train ? "train sampler" : "test sampler");
    stk_loader_config_t lcfg;
    stk_loader_config_default(&lcfg);
    lcfg.batch_size = (uint64_t)(train ? r->cfg.batch_size : r->cfg.eval_batch_size);
    lcfg.drop_last = train ? r->cfg.drop_last : 0;
    lcfg.shuffle = train;
    lcfg.seed = r->cfg.seed;
    lcfg.sampler = *sampler;
    lcfg.num_workers = (uint32_t)r->cfg.workers;
    lcfg.prefetch = (uint32_t)r->cfg.prefetch;
    lcfg.persistent_workers = 1;
    lcfg.augment = train ? r->cfg.augment : r->eval_augment;
    lcfg.augment_field = r->cfg.image_field;
    rc = stk_loader_create(out, ds, &lcfg);
    if (rc)
        return fail_stk(rc, train ? "train loader" : "test loader");
    if (stk_loader_len(*out) == 0)
        return fail(EXIT_USAGE, "%s: no full batch of %" PRIu64 " samples in %" PRIu64 " (drop_last)",
                    train ? r->cfg.train_data : r->cfg.test_data, lcfg.batch_size, n);
    return 0;
}

/* ---- checkpoints ----------------------------------------------------- */

/* Keys that must agree between a checkpoint and the config resuming it:
 * they decide what the next steps compute. */
static int check_resume_config(const run_t *r, const char *saved, const char *path)
{
    train_config_t old;
    train_config_default(&old);
    char err[1024];
    if (train_config_parse(&old, saved, "checkpoint config", err, sizeof err))
        return fail(EXIT_USAGE, "%s: stored config does not parse: %s", path, err);
#define SAME_STR(k)                                                                                                   \
    if (strcmp(old.k, r->cfg.k) != 0)                                                                                 \
        return fail(EXIT_USAGE, "--resume %s: key '" #k "' was '%s' in the checkpoint, the config says '%s'", path,    \
                    old.k, r->cfg.k);
#define SAME_NUM(k)                                                                                                   \
    if (old.k != r->cfg.k)                                                                                            \
        return fail(EXIT_USAGE, "--resume %s: key '" #k "' was %.17g in the checkpoint, the config says %.17g", path,  \
                    (double)old.k, (double)r->cfg.k);
    SAME_STR(augment)
    SAME_STR(optimizer)
    SAME_STR(scheduler)
    SAME_NUM(epochs)
    SAME_NUM(batch_size)
    SAME_NUM(accum_steps)
    SAME_NUM(drop_last)
    SAME_NUM(seed)
    SAME_NUM(train_limit)
#undef SAME_STR
#undef SAME_NUM
    return 0;
}

#define HIST_FIELDS 10

static void hist_pack(const train_epoch_stats_t *s, double *v)
{
    v[0] = s->epoch;
    v[1] = (double)s->step;
    v[2] = s->train_loss;
    v[3] = s->train_acc;
    v[4] = s->test_loss;
    v[5] = s->test_acc;
    v[6] = s->lr;
    v[7] = s->images_per_s;
    v[8] = s->data_wait;
    v[9] = s->epoch_s;
}

static void hist_unpack(train_epoch_stats_t *s, const double *v)
{
    s->epoch = (int)v[0];
    s->step = (uint64_t)v[1];
    s->train_loss = v[2];
    s->train_acc = v[3];
    s->test_loss = v[4];
    s->test_acc = v[5];
    s->lr = v[6];
    s->images_per_s = v[7];
    s->data_wait = v[8];
    s->epoch_s = v[9];
}

/* Saves everything the next step depends on. The loader state is the next
 * micro-batch to deliver; the RNG needs no state of its own: every draw
 * (order, augmentation, dropout) is keyed by seed, epoch and counters. */
static int save_checkpoint(run_t *r)
{
    if (!r->cfg.checkpoint_dir[0])
        return 0;
    int rc = 0;
    size_t msz = stk_model_state_size(r->model), osz = stk_optim_state_size(r->opt),
           ssz = stk_sched_state_size(r->sched);
    char *mbuf = malloc(msz), *obuf = malloc(osz), *sbuf = malloc(ssz);
    double *hbuf = calloc(r->nhist ? r->nhist : 1, HIST_FIELDS * sizeof(double));
    char *cfgtxt = malloc(65536);
    if (!mbuf || !obuf || !sbuf || !hbuf || !cfgtxt) {
        rc = fail(EXIT_RUNTIME, "checkpoint: out of memory");
        goto out;
    }
    if ((rc = stk_model_state_save_mem(r->model, mbuf, msz, &msz)) != 0 ||
        (rc = stk_optim_state_save(r->opt, obuf, osz, &osz)) != 0 ||
        (rc = stk_sched_state_save(r->sched, sbuf, ssz, &ssz)) != 0) {
        rc = fail_stk(rc, "checkpoint state");
        goto out;
    }
    for (size_t i = 0; i < r->nhist; i++)
        hist_pack(&r->hist[i], hbuf + i * HIST_FIELDS);
    train_config_format(&r->cfg, cfgtxt, 65536);
    stk_loader_state_t ls;
    stk_loader_get_state(r->train_loader, &ls);
    char meta[1024];
    snprintf(meta, sizeof meta,
             "format = %s\nepoch = %d\nstep = %" PRIu64 "\nloader_epoch = %" PRIu64 "\nloader_batch = %" PRIu64
             "\nseed = %" PRIu64 "\nep_loss_sum = %a\nep_correct = %" PRIu64 "\nep_seen = %" PRIu64
             "\nep_train_s = %a\nep_wait_s = %a\ntotal_train_s = %a\ntotal_wait_s = %a\ntotal_images = %" PRIu64
             "\n",
             CKPT_FORMAT, r->epoch, r->step, ls.epoch, ls.batch, r->cfg.seed, r->ep_loss_sum, r->ep_correct,
             r->ep_seen, r->ep_train_s, r->ep_wait_s, r->total_train_s, r->total_wait_s, r->total_images);
    stk_ckpt_section_t secs[] = {
        {"meta", meta, strlen(meta)},
        {"config", cfgtxt, strlen(cfgtxt)},
        {"model", mbuf, msz},
        {"optimizer", obuf, osz},
        {"scheduler", sbuf, ssz},
        {"history", hbuf, r->nhist * HIST_FIELDS * sizeof(double)},
    };
    rc = stk_ckpt_dir_save(r->cfg.checkpoint_dir, r->step, secs, sizeof secs / sizeof secs[0],
                           (unsigned)r->cfg.keep_last, NULL, 0);
    if (rc)
        rc = fail_stk(rc, "checkpoint");
out:
    free(mbuf);
    free(obuf);
    free(sbuf);
    free(hbuf);
    free(cfgtxt);
    return rc;
}

static int meta_get(const char *meta, const char *key, char *val, size_t cap)
{
    size_t kl = strlen(key);
    for (const char *p = meta; p && *p;) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        if (len > kl + 3 && !strncmp(p, key, kl) && !strncmp(p + kl, " = ", 3)) {
            size_t vl = len - kl - 3;
            if (vl >= cap)
                return -1;
            memcpy(val, p + kl + 3, vl);
            val[vl] = '\0';
            return 0;
        }
        p = nl ? nl + 1 : NULL;
    }
    return -1;
}

static int meta_u64(const char *meta, const char *key, uint64_t *v)
{
    char buf[64], *end;
    if (meta_get(meta, key, buf, sizeof buf))
        return -1;
    errno = 0;
    *v = strtoull(buf, &end, 10);
    return (errno || *end) ? -1 : 0;
}

static int meta_f64(const char *meta, const char *key, double *v)
{
    char buf[64], *end;
    if (meta_get(meta, key, buf, sizeof buf))
        return -1;
    *v = strtod(buf, &end);
    return *end ? -1 : 0;
}

/* Loads a checkpoint into the set-up run. Runs before any output exists;
 * every failure names the file and what does not fit. */
static int load_checkpoint(run_t *r, const char *where)
{
    char path[TRAIN_PATH_MAX + 64];
    struct stat st;
    if (stat(where, &st) != 0)
        return fail(EXIT_USAGE, "--resume %s: %s", where, strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        int rc = stk_ckpt_dir_latest(where, path, sizeof path);
        if (rc) {
            fail_stk(rc, "--resume");
            return EXIT_USAGE;
        }
    } else {
        snprintf(path, sizeof path, "%s", where);
    }
    stk_ckpt_t *ck = NULL;
    int rc = stk_ckpt_open(&ck, path);
    if (rc) {
        fail_stk(rc, "--resume");
        return EXIT_USAGE;
    }
    const void *data;
    size_t len;
    char meta[2048], *cfgtxt = NULL;
    int ret = EXIT_USAGE;
    if (stk_ckpt_find(ck, "meta", &data, &len) || len >= sizeof meta) {
        fail(EXIT_USAGE, "--resume %s: not a stoker-train checkpoint (no 'meta' section)", path);
        goto out;
    }
    memcpy(meta, data, len);
    meta[len] = '\0';
    char fmt[64];
    if (meta_get(meta, "format", fmt, sizeof fmt) || strcmp(fmt, CKPT_FORMAT) != 0) {
        fail(EXIT_USAGE, "--resume %s: not a '%s' checkpoint", path, CKPT_FORMAT);
        goto out;
    }
    if (stk_ckpt_find(ck, "config", &data, &len) || !(cfgtxt = strndup(data, len))) {
        fail(EXIT_USAGE, "--resume %s: no 'config' section", path);
        goto out;
    }
    if (check_resume_config(r, cfgtxt, path))
        goto out;
    if ((rc = stk_ckpt_find(ck, "model", &data, &len)) != 0 ||
        (rc = stk_model_state_load_mem(r->model, data, len)) != 0) {
        fail(EXIT_USAGE, "--resume %s: checkpoint does not fit model %s: %s (%s)", path, r->cfg.model,
             stk_error_message(), stk_err_name(rc));
        goto out;
    }
    if ((rc = stk_ckpt_find(ck, "optimizer", &data, &len)) != 0 ||
        (rc = stk_optim_state_load(r->opt, data, len)) != 0) {
        fail(EXIT_USAGE, "--resume %s: optimizer state: %s (%s)", path, stk_error_message(), stk_err_name(rc));
        goto out;
    }
    if ((rc = stk_ckpt_find(ck, "scheduler", &data, &len)) != 0 ||
        (rc = stk_sched_state_load(r->sched, data, len)) != 0) {
        fail(EXIT_USAGE, "--resume %s: scheduler state: %s (%s)", path, stk_error_message(), stk_err_name(rc));
        goto out;
    }
    if ((rc = stk_ckpt_find(ck, "history", &data, &len)) != 0 || len % (HIST_FIELDS * sizeof(double))) {
        fail(EXIT_USAGE, "--resume %s: bad 'history' section", path);
        goto out;
    }
    r->nhist = len / (HIST_FIELDS * sizeof(double));
    r->hist = calloc(r->nhist + (size_t)r->cfg.epochs + 1, sizeof *r->hist);
    if (!r->hist) {
        fail(EXIT_RUNTIME, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < r->nhist; i++) {
        double v[HIST_FIELDS];
        memcpy(v, (const char *)data + i * sizeof v, sizeof v);
        hist_unpack(&r->hist[i], v);
    }
    uint64_t epoch, step, lep, lbatch, correct, seen, images;
    if (meta_u64(meta, "epoch", &epoch) || meta_u64(meta, "step", &step) || meta_u64(meta, "loader_epoch", &lep) ||
        meta_u64(meta, "loader_batch", &lbatch) || meta_u64(meta, "ep_correct", &correct) ||
        meta_u64(meta, "ep_seen", &seen) || meta_u64(meta, "total_images", &images) ||
        meta_f64(meta, "ep_loss_sum", &r->ep_loss_sum) || meta_f64(meta, "ep_train_s", &r->ep_train_s) ||
        meta_f64(meta, "ep_wait_s", &r->ep_wait_s) || meta_f64(meta, "total_train_s", &r->total_train_s) ||
        meta_f64(meta, "total_wait_s", &r->total_wait_s)) {
        fail(EXIT_USAGE, "--resume %s: 'meta' section lacks a field", path);
        goto out;
    }
    if (lbatch > r->batches_per_epoch || epoch > (uint64_t)r->cfg.epochs) {
        fail(EXIT_USAGE, "--resume %s: position (epoch %" PRIu64 ", batch %" PRIu64 ") is outside the run", path,
             epoch, lbatch);
        goto out;
    }
    r->epoch = (int)epoch;
    r->step = step;
    r->ep_correct = correct;
    r->ep_seen = seen;
    r->total_images = images;
    /* A checkpoint taken at the end of an epoch points at the start of the
     * next one. */
    r->resume_batch = lep == epoch ? lbatch : 0;
    if (!r->json)
        fprintf(stderr, "stoker-train: resuming from %s (epoch %d, step %" PRIu64 ")\n", path, r->epoch + 1, r->step);
    ret = 0;
out:
    free(cfgtxt);
    stk_ckpt_close(&ck);
    return ret;
}

static int setup(run_t *r, const char *resume)
{
    train_config_t *c = &r->cfg;
    if (!c->eval_batch_size)
        c->eval_batch_size = c->batch_size;
    train_config_eval_augment(c, r->eval_augment, sizeof r->eval_augment);
    if (c->plot[0])
        snprintf(r->plot_path, sizeof r->plot_path, "%s", c->plot);
    else if (c->metrics[0]) {
        snprintf(r->plot_path, sizeof r->plot_path, "%s", c->metrics);
        char *dot = strrchr(r->plot_path, '.'), *slash = strrchr(r->plot_path, '/');
        if (dot && (!slash || dot > slash))
            *dot = '\0';
        strcat(r->plot_path, ".svg");
    }
    /* Outputs must not land on inputs. */
    const char *outs[] = {c->metrics, r->plot_path};
    const char *ins[] = {c->train_data, c->test_data, c->model};
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++)
            if (outs[i][0] && !strcmp(outs[i], ins[j]))
                return fail(EXIT_USAGE, "output %s would overwrite an input", outs[i]);

    stk_model_config_t mcfg;
    stk_model_config_default(&mcfg);
    mcfg.batch_size = c->batch_size;
    mcfg.seed = c->seed;
    mcfg.threads = c->threads;
    int rc = stk_model_create_from_file(&r->model, c->model, &mcfg);
    if (rc) {
        fail(EXIT_USAGE, "key 'model': %s: %s (%s)", c->model, stk_error_message(), stk_err_name(rc));
        return EXIT_USAGE;
    }
    int64_t shape[4];
    stk_model_input_shape(r->model, shape);
    r->in_c = shape[1];
    r->in_h = shape[2];
    r->in_w = shape[3];
    r->classes = stk_model_num_classes(r->model);
    if (r->classes <= 0)
        return fail(EXIT_USAGE, "key 'model': %s has no cross_entropy loss layer", c->model);

    if ((rc = open_data(r, c->train_data, "train_data", c->augment, "augment", &r->train_ds)) != 0)
        return rc;
    if ((rc = open_data(r, c->test_data, "test_data", r->eval_augment, "test_augment", &r->test_ds)) != 0)
        return rc;

    size_t nparams;
    stk_model_params(r->model, &nparams);
    stk_optim_config_t ocfg;
    stk_optim_config_default(&ocfg, STK_OPTIM_SGD, nparams);
    rc = stk_optim_config_parse(c->optimizer, &ocfg);
    if (rc) {
        fail(EXIT_USAGE, "key 'optimizer': %s (%s)", stk_error_message(), stk_err_name(rc));
        return EXIT_USAGE;
    }
    ocfg.n_params = nparams;
    rc = stk_optim_create(&r->opt, &ocfg);
    if (rc) {
        fail(EXIT_USAGE, "key 'optimizer': %s (%s)", stk_error_message(), stk_err_name(rc));
        return EXIT_USAGE;
    }

    if ((rc = make_loader(r, r->train_ds, 1, &r->train_sampler, &r->train_loader)) != 0)
        return rc;
    if ((rc = make_loader(r, r->test_ds, 0, &r->test_sampler, &r->test_loader)) != 0)
        return rc;
    r->batches_per_epoch = stk_loader_len(r->train_loader);
    r->steps_per_epoch = (r->batches_per_epoch + (uint64_t)c->accum_steps - 1) / (uint64_t)c->accum_steps;

    stk_sched_config_t scfg;
    stk_sched_config_default(&scfg);
    scfg.total_steps = (int64_t)r->steps_per_epoch * c->epochs;
    rc = stk_sched_parse(c->scheduler, (int64_t)r->steps_per_epoch, &scfg);
    if (rc == 0)
        rc = stk_sched_create(&r->sched, &scfg, r->opt);
    if (rc) {
        fail(EXIT_USAGE, "key 'scheduler': %s (%s)", stk_error_message(), stk_err_name(rc));
        return EXIT_USAGE;
    }

    if (resume) {
        if ((rc = load_checkpoint(r, resume)) != 0)
            return rc;
    } else {
        r->hist = calloc((size_t)c->epochs + 1, sizeof *r->hist);
        if (!r->hist)
            return fail(EXIT_RUNTIME, "out of memory");
    }
    return 0;
}

/* mkdir -p of path (upto its last component when parent_only). */
static int mkdir_p(const char *path, int parent_only)
{
    char buf[TRAIN_PATH_MAX + 8];
    snprintf(buf, sizeof buf, "%s", path);
    if (parent_only) {
        char *slash = strrchr(buf, '/');
        if (!slash)
            return 0;
        *slash = '\0';
    }
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (buf[0] && mkdir(buf, 0755) != 0 && errno != EEXIST)
        return -errno;
    return 0;
}

/* Creates the outputs. Only called once everything above succeeded. */
static int open_outputs(run_t *r)
{
    int rc;
    if (r->cfg.checkpoint_dir[0] && (rc = mkdir_p(r->cfg.checkpoint_dir, 0)) != 0)
        return fail(EXIT_RUNTIME, "key 'checkpoint_dir': create %s: %s", r->cfg.checkpoint_dir, strerror(-rc));
    if (r->cfg.metrics[0] && (rc = mkdir_p(r->cfg.metrics, 1)) != 0)
        return fail(EXIT_RUNTIME, "key 'metrics': create the folder of %s: %s", r->cfg.metrics, strerror(-rc));
    if (r->plot_path[0] && (rc = mkdir_p(r->plot_path, 1)) != 0)
        return fail(EXIT_RUNTIME, "key 'plot': create the folder of %s: %s", r->plot_path, strerror(-rc));
    if (r->cfg.metrics[0]) {
        /* Rewritten from the history, so a resumed run's file holds each
         * epoch once, whichever checkpoint it resumed from. */
        r->metrics = fopen(r->cfg.metrics, "w");
        if (!r->metrics)
            return fail(EXIT_RUNTIME, "key 'metrics': %s: %s", r->cfg.metrics, strerror(errno));
        for (size_t i = 0; i < r->nhist; i++)
            train_metrics_write(r->metrics, &r->hist[i]);
    }
    return 0;
}

/* ---- the loop -------------------------------------------------------- */

/* Points *images at the batch's pixels as f32 and fills r->lbuf with the
 * labels as i64. */
static int batch_inputs(run_t *r, const stk_batch_t *b, const float **images, const char *what)
{
    const stk_batch_field_t *img = NULL, *lab = NULL;
    for (uint32_t f = 0; f < b->nfields; f++) {
        if (!strcmp(b->fields[f].name, r->cfg.image_field))
            img = &b->fields[f];
        else if (!strcmp(b->fields[f].name, r->cfg.label_field))
            lab = &b->fields[f];
    }
    if (!img || !lab)
        return fail(EXIT_RUNTIME, "%s batch lacks field '%s' or '%s'", what, r->cfg.image_field, r->cfg.label_field);
    size_t n = b->size, per = (size_t)(r->in_c * r->in_h * r->in_w);
    if (n > r->lbuf_len) {
        free(r->lbuf);
        r->lbuf = malloc(n * sizeof *r->lbuf);
        r->lbuf_len = r->lbuf ? n : 0;
        if (!r->lbuf)
            return fail(EXIT_RUNTIME, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        switch (lab->dtype) {
        case STK_DTYPE_U8: r->lbuf[i] = ((const uint8_t *)lab->data)[i]; break;
        case STK_DTYPE_I8: r->lbuf[i] = ((const int8_t *)lab->data)[i]; break;
        case STK_DTYPE_I32: r->lbuf[i] = ((const int32_t *)lab->data)[i]; break;
        case STK_DTYPE_I64: r->lbuf[i] = ((const int64_t *)lab->data)[i]; break;
        default: return fail(EXIT_RUNTIME, "label field has dtype %s", stk_dtype_name(lab->dtype));
        }
    }
    if (img->bytes != n * per * stk_dtype_size(img->dtype))
        return fail(EXIT_RUNTIME, "%s batch: image field holds %zu bytes, expected %zu samples of %zu elements", what,
                    img->bytes, n, per);
    if (img->dtype == STK_DTYPE_F32) {
        *images = img->data;
        return 0;
    }
    /* No normalize in the spec: scale bytes to [0, 1] as ToTensor does. */
    if (n * per > r->fbuf_len) {
        free(r->fbuf);
        r->fbuf = malloc(n * per * sizeof *r->fbuf);
        r->fbuf_len = r->fbuf ? n * per : 0;
        if (!r->fbuf)
            return fail(EXIT_RUNTIME, "out of memory");
    }
    const uint8_t *px = img->data;
    for (size_t i = 0; i < n * per; i++)
        r->fbuf[i] = (float)px[i] * (1.0f / 255.0f);
    *images = r->fbuf;
    return 0;
}

static double current_lr(const run_t *r)
{
    double lr = 0;
    stk_optim_get_lr(r->opt, 0, &lr);
    return lr;
}

static void progress_line(const run_t *r, uint64_t batch, double t_train)
{
    double loss = r->ep_seen ? r->ep_loss_sum / (double)r->ep_seen : NAN;
    double acc = r->ep_seen ? (double)r->ep_correct / (double)r->ep_seen : NAN;
    double ips = t_train > 0 ? (double)r->ep_seen / t_train : 0;
    double wait = t_train > 0 ? r->ep_wait_s / t_train : 0;
    fprintf(stderr,
            "\r\033[Kepoch %d/%d  batch %" PRIu64 "/%" PRIu64 "  step %" PRIu64 "  loss %.4f  acc %.2f%%  lr %.4g  "
            "%.0f img/s  wait %.1f%%",
            r->epoch + 1, r->cfg.epochs, batch, r->batches_per_epoch, r->step, loss, 100 * acc, current_lr(r), ips,
            100 * wait);
    fflush(stderr);
}

static int train_epoch(run_t *r)
{
    const train_config_t *c = &r->cfg;
    int rc;
    uint64_t nb = r->batches_per_epoch, accum = (uint64_t)c->accum_steps;
    if (r->resume_batch) {
        stk_loader_state_t st = {(uint64_t)r->epoch, r->resume_batch};
        rc = stk_loader_set_state(r->train_loader, &st);
    } else {
        rc = stk_loader_set_epoch(r->train_loader, (uint64_t)r->epoch);
        r->ep_loss_sum = 0;
        r->ep_correct = r->ep_seen = 0;
        r->ep_train_s = r->ep_wait_s = 0;
    }
    r->resume_batch = 0;
    if (rc)
        return fail_stk(rc, "train loader");
    stk_model_set_train(r->model, 1);
    double t_start = tool_now_s() - r->ep_train_s, t_print = 0;
    for (;;) {
        stk_batch_t b;
        double t0 = tool_now_s();
        rc = stk_loader_next(r->train_loader, &b);
        r->ep_wait_s += tool_now_s() - t0;
        if (rc == STK_DONE)
            break;
        if (rc)
            return fail_stk(rc, "train data");
        const float *images;
        if ((rc = batch_inputs(r, &b, &images, "train")) != 0) {
            stk_loader_release(r->train_loader, &b);
            return rc;
        }
        uint64_t k = b.number, group_start = k / accum * accum;
        uint64_t group = nb - group_start < accum ? nb - group_start : accum;
        /* Each micro-batch's loss counts 1/group: the summed gradient is
         * that of the mean loss over the group, as one big batch. */
        stk_model_set_loss_scale(r->model, 1.0f / (float)group);
        stk_model_set_step(r->model, (uint64_t)r->epoch * nb + k);
        float loss;
        int64_t correct = 0;
        double tc = tool_now_s();
        rc = stk_model_forward(r->model, images, (int64_t)b.size, r->lbuf, NULL, &loss);
        if (rc == 0)
            rc = stk_model_backward(r->model);
        r->prof_compute_s += tool_now_s() - tc;
        if (rc == 0)
            rc = stk_model_count_correct(r->model, r->lbuf, &correct);
        size_t n = b.size;
        stk_loader_release(r->train_loader, &b);
        if (rc)
            return fail_stk(rc, "train step");
        if (!isfinite(loss))
            return fail(EXIT_RUNTIME, "loss is %f at epoch %d, batch %" PRIu64 " (lower the lr?)", (double)loss,
                        r->epoch + 1, k);
        r->ep_loss_sum += (double)loss * (double)n;
        r->ep_correct += (uint64_t)correct;
        r->ep_seen += n;
        if (k + 1 == group_start + group) {
            double to = tool_now_s();
            float *params = stk_model_params(r->model, NULL);
            rc = stk_optim_step(r->opt, params, stk_model_grads(r->model, NULL));
            if (rc == 0)
                rc = stk_sched_step(r->sched);
            if (rc)
                return fail_stk(rc, "optimizer step");
            stk_model_zero_grad(r->model);
            r->prof_optim_s += tool_now_s() - to;
            r->step++;
            r->ep_train_s = tool_now_s() - t_start;
            if (c->checkpoint_steps && r->step % (uint64_t)c->checkpoint_steps == 0 && k + 1 < nb &&
                (rc = save_checkpoint(r)) != 0)
                return rc;
            if (stop_requested) {
                if (k + 1 < nb && (rc = save_checkpoint(r)) != 0)
                    return rc;
                return fail(130, "interrupted at epoch %d, step %" PRIu64 "%s", r->epoch + 1, r->step,
                            c->checkpoint_dir[0] ? " (checkpoint saved)" : "");
            }
        }
        if (r->progress) {
            double t = tool_now_s();
            if (t - t_print > 0.25) {
                progress_line(r, k + 1, t - t_start);
                t_print = t;
            }
        }
    }
    r->ep_train_s = tool_now_s() - t_start;
    return 0;
}

/* Cross-entropy and correct count of the first n rows of the logits. */
static void score_logits(const float *logits, int64_t classes, const int64_t *labels, size_t n, double *loss_sum,
                         uint64_t *correct)
{
    for (size_t i = 0; i < n; i++) {
        const float *z = logits + (size_t)classes * i;
        int64_t arg = 0;
        for (int64_t c = 1; c < classes; c++)
            if (z[c] > z[arg])
                arg = c;
        double lse = 0;
        for (int64_t c = 0; c < classes; c++)
            lse += exp((double)z[c] - (double)z[arg]);
        *loss_sum += log(lse) + (double)z[arg] - (double)z[labels[i]];
        *correct += arg == labels[i];
    }
}

/* Evaluation runs forward only, always at the eval batch size: a last
 * partial batch is padded with zeros (eval mode: no sample affects
 * another), so the model is never re-planned for a new batch size. */
static int evaluate(run_t *r, double *loss_out, double *acc_out)
{
    int rc = stk_loader_set_epoch(r->test_loader, 0);
    if (rc)
        return fail_stk(rc, "test loader");
    stk_model_set_train(r->model, 0);
    size_t full = (size_t)r->cfg.eval_batch_size, per = (size_t)(r->in_c * r->in_h * r->in_w);
    double loss_sum = 0;
    uint64_t correct = 0, seen = 0;
    float *pad = NULL;
    for (;;) {
        stk_batch_t b;
        rc = stk_loader_next(r->test_loader, &b);
        if (rc == STK_DONE) {
            rc = 0;
            break;
        }
        if (rc) {
            rc = fail_stk(rc, "test data");
            break;
        }
        const float *images;
        if ((rc = batch_inputs(r, &b, &images, "test")) != 0) {
            stk_loader_release(r->test_loader, &b);
            break;
        }
        size_t n = b.size;
        if (n < full) {
            if (!pad && !(pad = calloc(full * per, sizeof *pad))) {
                stk_loader_release(r->test_loader, &b);
                rc = fail(EXIT_RUNTIME, "out of memory");
                break;
            }
            memcpy(pad, images, n * per * sizeof *pad);
            memset(pad + n * per, 0, (full - n) * per * sizeof *pad);
            images = pad;
        }
        const float *logits;
        int64_t lb, classes;
        rc = stk_model_forward(r->model, images, (int64_t)(n < full ? full : n), NULL, NULL, NULL);
        if (rc == 0)
            rc = stk_model_logits(r->model, &logits, &lb, &classes);
        for (size_t i = 0; rc == 0 && i < n; i++)
            if (r->lbuf[i] < 0 || r->lbuf[i] >= classes)
                rc = fail(EXIT_RUNTIME, "test data: sample %" PRIu64 " has label %" PRId64 ", the model has %" PRId64
                          " classes", b.indices[i], r->lbuf[i], classes);
        if (rc == 0)
            score_logits(logits, classes, r->lbuf, n, &loss_sum, &correct);
        stk_loader_release(r->test_loader, &b);
        if (rc == EXIT_RUNTIME)
            break;
        if (rc) {
            rc = fail_stk(rc, "evaluation");
            break;
        }
        seen += n;
    }
    free(pad);
    stk_model_set_train(r->model, 1);
    if (rc)
        return rc;
    *loss_out = seen ? loss_sum / (double)seen : NAN;
    *acc_out = seen ? (double)correct / (double)seen : NAN;
    return 0;
}

static int run_training(run_t *r)
{
    const train_config_t *c = &r->cfg;
    int last = c->stop_after_epochs ? c->stop_after_epochs : c->epochs;
    int rc;
    while (r->epoch < last) {
        double t0 = tool_now_s();
        if ((rc = train_epoch(r)) != 0)
            return rc;
        double train_s = r->ep_train_s;
        train_epoch_stats_t *s = &r->hist[r->nhist];
        memset(s, 0, sizeof *s);
        s->epoch = r->epoch + 1;
        s->step = r->step;
        s->train_loss = r->ep_seen ? r->ep_loss_sum / (double)r->ep_seen : NAN;
        s->train_acc = r->ep_seen ? (double)r->ep_correct / (double)r->ep_seen : NAN;
        s->lr = current_lr(r);
        s->images_per_s = train_s > 0 ? (double)r->ep_seen / train_s : 0;
        s->data_wait = train_s > 0 ? r->ep_wait_s / train_s : 0;
        double te = tool_now_s();
        if ((rc = evaluate(r, &s->test_loss, &s->test_acc)) != 0)
            return rc;
        r->prof_eval_s += tool_now_s() - te;
        s->epoch_s = tool_now_s() - t0;
        r->nhist++;
        r->total_train_s += train_s;
        r->total_wait_s += r->ep_wait_s;
        r->total_images += r->ep_seen;
        if (r->progress)
            fprintf(stderr,
                    "\r\033[Kepoch %d/%d  step %" PRIu64 "  loss %.4f  acc %.2f%%  test_loss %.4f  test_acc %.2f%%  "
                    "lr %.4g  %.0f img/s  wait %.1f%%  %.1fs\n",
                    s->epoch, c->epochs, s->step, s->train_loss, 100 * s->train_acc, s->test_loss, 100 * s->test_acc,
                    s->lr, s->images_per_s, 100 * s->data_wait, s->epoch_s);
        r->epoch++;
        r->ep_loss_sum = 0;
        r->ep_correct = r->ep_seen = 0;
        r->ep_train_s = r->ep_wait_s = 0;
        if (r->metrics && train_metrics_write(r->metrics, s) != 0)
            return fail(EXIT_RUNTIME, "key 'metrics': write %s failed", c->metrics);
        if (r->plot_path[0] && (rc = train_plot_svg(r->plot_path, r->hist, r->nhist)) != 0)
            return fail(EXIT_RUNTIME, "plot %s: %s", r->plot_path, strerror(-rc));
        if ((rc = save_checkpoint(r)) != 0)
            return rc;
        if (stop_requested)
            return fail(130, "interrupted after epoch %d%s", r->epoch, c->checkpoint_dir[0] ? " (checkpoint saved)" : "");
    }
    return 0;
}

static void print_results(const run_t *r, double wall_s)
{
    FILE *out = stdout;
    train_summary_print(out, r->hist, r->nhist);
    double best = NAN, final = NAN;
    int best_epoch = 0;
    for (size_t i = 0; i < r->nhist; i++) {
        if (!(r->hist[i].test_acc <= best)) {
            best = r->hist[i].test_acc;
            best_epoch = r->hist[i].epoch;
        }
        final = r->hist[i].test_acc;
    }
    double ips = r->total_train_s > 0 ? (double)r->total_images / r->total_train_s : 0;
    double wait = r->total_train_s > 0 ? r->total_wait_s / r->total_train_s : 0;
    fprintf(out, "final test accuracy %.2f%%, best %.2f%% (epoch %d), %.0f images/s, data wait %.2f%%, %.1f s\n",
            100 * final, 100 * best, best_epoch, ips, 100 * wait, wall_s);
    if (r->json) {
        fprintf(out,
                "{\"final_test_acc\":%.6f,\"best_test_acc\":%.6f,\"best_epoch\":%d,\"epochs\":%d,\"steps\":%" PRIu64
                ",\"images_per_s\":%.1f,\"data_wait\":%.6f,\"wall_s\":%.3f,\"train_s\":%.3f}\n",
                isfinite(final) ? final : 0, isfinite(best) ? best : 0, best_epoch, r->nhist ? r->hist[r->nhist - 1].epoch : 0,
                r->step, ips, wait, wall_s, r->total_train_s);
    }
    fflush(out);
}

/* Where this process's time went, then the engine's per-layer table. */
static void print_profile(const run_t *r)
{
    double train = r->total_train_s, other = train - r->prof_compute_s - r->prof_optim_s - r->total_wait_s;
    fprintf(stderr, "phase            seconds   share of training\n");
    fprintf(stderr, "forward+backward %8.2f   %5.1f%%\n", r->prof_compute_s, 100 * r->prof_compute_s / train);
    fprintf(stderr, "optimizer step   %8.2f   %5.1f%%\n", r->prof_optim_s, 100 * r->prof_optim_s / train);
    fprintf(stderr, "data wait        %8.2f   %5.1f%%\n", r->total_wait_s, 100 * r->total_wait_s / train);
    fprintf(stderr, "other            %8.2f   %5.1f%%\n", other, 100 * other / train);
    fprintf(stderr, "evaluation       %8.2f   (not in training time)\n", r->prof_eval_s);
    size_t need = stk_model_stats_format(r->model, NULL, 0);
    char *buf = malloc(need + 1);
    if (buf) {
        stk_model_stats_format(r->model, buf, need + 1);
        fputs(buf, stderr);
        free(buf);
    }
}

static void teardown(run_t *r)
{
    stk_loader_destroy(&r->train_loader);
    stk_loader_destroy(&r->test_loader);
    stk_sampler_destroy(&r->train_sampler);
    stk_sampler_destroy(&r->test_sampler);
    stk_dataset_destroy(&r->train_ds);
    stk_dataset_destroy(&r->test_ds);
    stk_sched_destroy(&r->sched);
    stk_optim_destroy(&r->opt);
    stk_model_destroy(&r->model);
    if (r->metrics)
        fclose(r->metrics);
    free(r->hist);
    free(r->fbuf);
    free(r->lbuf);
}

int main(int argc, char **argv)
{
    static run_t run;
    run_t *r = &run;
    const char *config = NULL, *resume = NULL;
    int print_config = 0;
    char err[2048];
    /* OpenMP threads that wait passively (it executes us again once). */
    stk_engine_passive_wait(argv);
    double t_begin = tool_now_s();

    /* Config first, then --set in order: later settings win. */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--set") || !strcmp(argv[i], "--resume")) {
            if (i + 1 >= argc) {
                usage(stderr);
                return fail(EXIT_USAGE, "%s needs an argument", argv[i]);
            }
            if (!strcmp(argv[i], "--resume"))
                resume = argv[i + 1];
            i++;
        } else if (!strncmp(argv[i], "--set=", 6) || !strcmp(argv[i], "--json") ||
                   !strcmp(argv[i], "--print-config")) {
            continue;
        } else if (!strncmp(argv[i], "--resume=", 9)) {
            resume = argv[i] + 9;
        } else if (argv[i][0] == '-') {
            usage(stderr);
            return fail(EXIT_USAGE, "unknown option %s", argv[i]);
        } else if (config) {
            usage(stderr);
            return fail(EXIT_USAGE, "more than one config file (%s, %s)", config, argv[i]);
        } else {
            config = argv[i];
        }
    }
    if (!config) {
        usage(stderr);
        return fail(EXIT_USAGE, "no config file given");
    }
    train_config_default(&r->cfg);
    if (train_config_load(&r->cfg, config, err, sizeof err))
        return fail(EXIT_USAGE, "%s", err);
    for (int i = 1; i < argc; i++) {
        const char *set = NULL;
        if (!strcmp(argv[i], "--set"))
            set = argv[++i];
        else if (!strcmp(argv[i], "--resume"))
            i++;
        else if (!strncmp(argv[i], "--set=", 6))
            set = argv[i] + 6;
        else if (!strcmp(argv[i], "--json"))
            r->json = 1;
        else if (!strcmp(argv[i], "--print-config"))
            print_config = 1;
        if (set && train_config_set(&r->cfg, set, err, sizeof err))
            return fail(EXIT_USAGE, "%s", err);
    }
    if (train_config_check(&r->cfg, err, sizeof err))
        return fail(EXIT_USAGE, "%s: %s", config, err);
    if (print_config) {
        char *buf = malloc(65536);
        if (!buf || train_config_format(&r->cfg, buf, 65536)) {
            free(buf);
            return fail(EXIT_RUNTIME, "config too long to print");
        }
        fputs(buf, stdout);
        free(buf);
        return 0;
    }
    r->progress = r->cfg.progress < 0 ? isatty(STDERR_FILENO) : r->cfg.progress;

    stk_log_set_callback(stk_log_stderr, NULL, STK_LOG_WARN);
    /* Workers fork from a clean process made before the model exists. */
    if (r->cfg.workers > 0 && stk_loader_forkserver_start() != 0)
        return fail_stk(-EAGAIN, "fork server");

    int rc = setup(r, resume);
    if (rc == 0)
        rc = open_outputs(r);
    if (rc == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        if (r->cfg.profile)
            stk_model_set_profiling(r->model, 1);
        rc = run_training(r);
        if (rc == 0)
            print_results(r, tool_now_s() - t_begin);
        if (rc == 0 && r->cfg.profile)
            print_profile(r);
    }
    teardown(r);
    stk_loader_forkserver_stop();
    return rc;
}
