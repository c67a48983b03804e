/* SPDX-License-Identifier: MIT */
/* stoker-train: a training run from one config file (TRAIN_CONFIG.md), as a
 * thin CLI over train.h. It parses the config, opens the data, builds the
 * model, optimizer and scheduler, settles the run's identity (a new run
 * never mixes with another run's checkpoints or metrics; a resumed one
 * says which run it continues), hands the loop to stk_train_run, and
 * prints progress, metrics, the plot and the summary. A signal stops the
 * run at the next optimizer step with a checkpoint. Everything is
 * validated before the first byte of output is written. */
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
#include <unistd.h>

#include "stoker/stoker.h"

#define EXIT_RUNTIME 1
#define EXIT_USAGE 2
#define EXIT_STOPPED 130
/* Keys that decide what the next steps compute: a resumed run must keep
 * them (unless --force). */
#define FIXED_KEYS                                                                                                    \
    "model,train_data,train_limit,image_field,label_field,augment,optimizer,scheduler,epochs,batch_size,"            \
    "accum_steps,drop_last,seed,clip_norm"

typedef struct run {
    train_config_t cfg;
    const char *config_path;
    char eval_augment[TRAIN_SPEC_MAX];
    char plot_path[TRAIN_PATH_MAX + 8];
    int json, force, tty, quiet;

    stk_dataset_t *train_ds, *test_ds;
    stk_sampler_t *train_sampler, *test_sampler;
    stk_loader_t *train_loader, *test_loader;
    stk_train_inputs_t *train_in, *test_in;
    stk_model_t *model;
    stk_optim_t *opt;
    stk_sched_t *sched;
    int64_t in_c, in_h, in_w;
    uint64_t batches_per_epoch, steps_per_epoch;

    stk_train_state_t st;
    char identity[256]; /* the "run" section: model and data fingerprints */
    char resumed_from[TRAIN_PATH_MAX + 64];
    char last_ckpt[4096];
    FILE *metrics;
    double t_print, compute_s, optim_s;
    /* STK_TRAIN_TEST_PAUSE=EPOCH:BATCH: the run stops itself (SIGSTOP)
     * after that micro-batch, once, so that a test can deliver a signal
     * at an exact point. */
    uint64_t pause_epoch, pause_batch;
} run_t;

/* ---- signals ----------------------------------------------------------- */

static volatile sig_atomic_t stop_requested;
static char grace_msg[160];
static unsigned stop_grace_s = 30;

static void say(const char *msg)
{
    ssize_t k = write(STDERR_FILENO, msg, strlen(msg));
    (void)k;
}

/* Signal context: only a flag, alarm() and, when the run does not stop
 * in time or a second signal comes, write() and _exit(). */
static void on_signal(int sig)
{
    if (sig == SIGALRM) {
        say(grace_msg);
        _exit(EXIT_STOPPED);
    }
    if (stop_requested) {
        say("\nstoker-train: second signal: exiting without a new checkpoint\n");
        _exit(EXIT_STOPPED);
    }
    stop_requested = 1;
    alarm(stop_grace_s);
}

static void install_signals(void)
{
    snprintf(grace_msg, sizeof grace_msg, "\nstoker-train: the run did not stop within %u s of the signal (a stopped "
             "worker?): exiting without a new checkpoint\n", stop_grace_s);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGINT);
    sigaddset(&sa.sa_mask, SIGTERM);
    sigaddset(&sa.sa_mask, SIGALRM);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGALRM, &sa, NULL);
}

/* ---- messages ---------------------------------------------------------- */

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

/* An error about a key's value: "file:line: key 'k': what: library message (CODE)". */
static int fail_key(const run_t *r, int code, const char *key, int rc, const char *what)
{
    char where[TRAIN_PATH_MAX + 64];
    train_config_where(&r->cfg, key, where, sizeof where);
    const char *msg = stk_error_message();
    return fail(code, "%s: %s%s%s (%s)", where, what ? what : "", what && msg[0] ? ": " : "", msg, stk_err_name(rc));
}

static int fail_stk(int rc, const char *what)
{
    const char *msg = stk_error_message();
    return fail(EXIT_RUNTIME, "%s: %s%s%s (%s)", what, msg, msg[0] ? ": " : "", stk_strerror(rc), stk_err_name(rc));
}

static void usage(FILE *f)
{
    fputs("usage: stoker-train CONFIG [--set key=value]... [--resume PATH [--force]] [--json] [--print-config]\n"
          "  CONFIG          'key = value' lines, # comments (see tools/TRAIN_CONFIG.md)\n"
          "  --set k=v       override one key (repeatable)\n"
          "  --resume PATH   continue the run whose checkpoints are in PATH: a run_dir, a checkpoint\n"
          "                  folder (its newest checkpoint) or a checkpoint file\n"
          "  --force         resume even when the config changed keys that decide the computation\n"
          "  --json          print one JSON object with the results as the last line\n"
          "  --print-config  print the effective config and exit\n",
          f);
}

/* ---- setup ------------------------------------------------------------- */

/* The image field's shape as C, H, W (a 2-D field is one channel). */
static int image_desc(const stk_field_t *fld, stk_image_desc_t *d)
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
        return -1;
    }
    for (uint32_t i = 0; i < fld->ndim; i++)
        if (fld->shape[i] <= 0)
            return -1;
    return 0;
}

/* Opens a data set and checks its fields against the model and the
 * augment spec (parsed here too, so that a bad spec fails before any
 * output). */
static int open_data(run_t *r, const char *key, const char *spec, const char *spec_key, stk_dataset_t **ds)
{
    const char *path = !strcmp(key, "train_data") ? r->cfg.train_data : r->cfg.test_data;
    char where[TRAIN_PATH_MAX + 64];
    train_config_where(&r->cfg, key, where, sizeof where);
    struct stat st;
    if (stat(path, &st) != 0)
        return fail(EXIT_USAGE, "%s: data path %s: %s", where, path, strerror(errno));
    stk_shard_dataset_config_t dcfg;
    stk_shard_dataset_config_default(&dcfg);
    int most = r->cfg.batch_size > r->cfg.eval_batch_size ? r->cfg.batch_size : r->cfg.eval_batch_size;
    if ((uint32_t)most > dcfg.max_batch)
        dcfg.max_batch = (uint32_t)most;
    int rc = stk_dataset_shard_create(ds, path, &dcfg);
    if (rc)
        return fail_key(r, EXIT_USAGE, key, rc, NULL);
    const stk_schema_t *schema = stk_dataset_schema(*ds);
    char desc[512];
    stk_schema_format(schema, desc, sizeof desc);
    int fi = stk_schema_find(schema, r->cfg.image_field), fl = stk_schema_find(schema, r->cfg.label_field);
    if (fi < 0 || fl < 0)
        return fail(EXIT_USAGE, "%s: %s has no field '%s' (key '%s'); it has %s", where, path,
                    fi < 0 ? r->cfg.image_field : r->cfg.label_field, fi < 0 ? "image_field" : "label_field", desc);
    const stk_field_t *lab = &schema->fields[fl];
    if (lab->ndim != 0 || (lab->dtype != STK_DTYPE_U8 && lab->dtype != STK_DTYPE_I8 && lab->dtype != STK_DTYPE_I32 &&
                           lab->dtype != STK_DTYPE_I64))
        return fail(EXIT_USAGE, "%s: label field '%s' of %s must be an integer scalar (%s)", where, lab->name, path,
                    desc);
    stk_image_desc_t in, out;
    if (image_desc(&schema->fields[fi], &in))
        return fail(EXIT_USAGE, "%s: field '%s' of %s is not a fixed-size image (%s)", where, r->cfg.image_field, path,
                    desc);
    stk_augment_t *aug = NULL;
    if ((rc = stk_augment_create(&aug, spec, &in)) != 0)
        return fail_key(r, EXIT_USAGE, spec_key, rc, NULL);
    stk_augment_output(aug, &out);
    stk_augment_destroy(&aug);
    if ((int64_t)out.c != r->in_c || (int64_t)out.h != r->in_h || (int64_t)out.w != r->in_w)
        return fail(EXIT_USAGE, "%s: images of %s are %ux%ux%u after '%s' (%s), model %s takes %" PRId64 "x%" PRId64
                    "x%" PRId64, where, path, out.c, out.h, out.w, spec, spec_key, r->cfg.model, r->in_c, r->in_h,
                    r->in_w);
    if (out.dtype != STK_DTYPE_F32 && out.dtype != STK_DTYPE_U8) {
        char sw[TRAIN_PATH_MAX + 64];
        return fail(EXIT_USAGE, "%s: output dtype %s is not supported (f32 or u8)",
                    train_config_where(&r->cfg, spec_key, sw, sizeof sw), stk_dtype_name(out.dtype));
    }
    return 0;
}

static int make_loader(run_t *r, int train)
{
    const char *key = train ? "train_data" : "test_data";
    stk_dataset_t *ds = train ? r->train_ds : r->test_ds;
    uint64_t n = stk_dataset_len(ds), limit = train ? r->cfg.train_limit : r->cfg.test_limit;
    uint64_t batch = (uint64_t)(train ? r->cfg.batch_size : r->cfg.eval_batch_size);
    if (limit && limit < n)
        n = limit;
    if (train && r->cfg.drop_last && n < batch) {
        char where[TRAIN_PATH_MAX + 64];
        return fail(EXIT_USAGE, "%s: %" PRIu64 " samples (train_limit %" PRIu64 ") make no full batch of %" PRIu64
                    " (drop_last): lower batch_size or raise train_limit",
                    train_config_where(&r->cfg, r->cfg.train_limit ? "train_limit" : "train_data", where, sizeof where),
                    n, r->cfg.train_limit, batch);
    }
    stk_sampler_config_t scfg;
    stk_sampler_config_default(&scfg);
    scfg.kind = train ? STK_SAMPLER_RANDOM : STK_SAMPLER_SEQUENTIAL;
    scfg.dataset_len = n;
    scfg.seed = r->cfg.seed;
    stk_sampler_t **sampler = train ? &r->train_sampler : &r->test_sampler;
    int rc = stk_sampler_create(sampler, &scfg);
    if (rc)
        return fail_key(r, EXIT_USAGE, key, rc, "sampler");
    stk_loader_config_t lcfg;
    stk_loader_config_default(&lcfg);
    lcfg.batch_size = batch;
    lcfg.drop_last = train ? r->cfg.drop_last : 0;
    lcfg.shuffle = train;
    lcfg.seed = r->cfg.seed;
    lcfg.sampler = *sampler;
    lcfg.num_workers = (uint32_t)r->cfg.workers;
    lcfg.prefetch = (uint32_t)r->cfg.prefetch;
    lcfg.persistent_workers = 1;
    lcfg.timeout_ms = (uint32_t)r->cfg.timeout * 1000u;
    lcfg.augment = train ? r->cfg.augment : r->eval_augment;
    lcfg.augment_field = r->cfg.image_field;
    stk_loader_t **l = train ? &r->train_loader : &r->test_loader;
    rc = stk_loader_create(l, ds, &lcfg);
    if (rc)
        return fail_key(r, EXIT_USAGE, key, rc, NULL);
    stk_train_inputs_config_t icfg;
    stk_train_inputs_config_default(&icfg);
    icfg.image_field = r->cfg.image_field;
    icfg.label_field = r->cfg.label_field;
    icfg.normalize = r->eval_augment;
    rc = stk_train_inputs_create(train ? &r->train_in : &r->test_in, &icfg);
    return rc ? fail_key(r, EXIT_USAGE, "augment", rc, NULL) : 0;
}

/* Builds the model at batch 1: its plan at the configured batch waits for
 * the memory check. */
static int make_model(run_t *r)
{
    stk_model_config_t mcfg;
    stk_model_config_default(&mcfg);
    mcfg.batch_size = 1;
    mcfg.seed = r->cfg.seed;
    mcfg.threads = r->cfg.threads;
    int rc = stk_model_create_from_file(&r->model, r->cfg.model, &mcfg);
    if (rc)
        return fail_key(r, EXIT_USAGE, "model", rc, NULL);
    int64_t shape[4];
    stk_model_input_shape(r->model, shape);
    r->in_c = shape[1];
    r->in_h = shape[2];
    r->in_w = shape[3];
    if (stk_model_num_classes(r->model) <= 0) {
        char where[TRAIN_PATH_MAX + 64];
        return fail(EXIT_USAGE, "%s: %s has no cross_entropy loss layer",
                    train_config_where(&r->cfg, "model", where, sizeof where), r->cfg.model);
    }
    return 0;
}

/* A step at the configured batch must fit in memory: refused here with a
 * message rather than by the OOM killer later. Then the model is planned
 * at that batch. */
static int check_memory(run_t *r)
{
    int rc;
    int64_t most = r->cfg.batch_size > r->cfg.eval_batch_size ? r->cfg.batch_size : r->cfg.eval_batch_size;
    uint64_t need = 0, have = stk_train_memory_available();
    const char *env = getenv("STK_TRAIN_MEMORY_AVAILABLE"); /* for tests */
    if (env && *env)
        have = strtoull(env, NULL, 10);
    if ((rc = stk_train_memory_estimate(r->model, most, &need)) != 0)
        return fail_key(r, EXIT_USAGE, "model", rc, "memory estimate");
    if (have && need > have) {
        char where[TRAIN_PATH_MAX + 64];
        return fail(EXIT_USAGE, "%s: a training step at batch %" PRId64 " needs about %.1f GiB for %s, %.1f GiB of "
                    "memory is available: lower batch_size%s",
                    train_config_where(&r->cfg, r->cfg.batch_size >= r->cfg.eval_batch_size ? "batch_size"
                                                                                          : "eval_batch_size",
                                       where, sizeof where),
                    most, (double)need / (1u << 30), r->cfg.model, (double)have / (1u << 30),
                    r->cfg.eval_batch_size > r->cfg.batch_size ? " or eval_batch_size" : "");
    }
    if ((rc = stk_model_set_batch_size(r->model, r->cfg.batch_size)) != 0)
        return fail_key(r, EXIT_RUNTIME, "batch_size", rc, NULL);
    /* The model file's text: its fingerprint is part of the run's identity. */
    FILE *f = fopen(r->cfg.model, "rb");
    char buf[65536];
    size_t n = f ? fread(buf, 1, sizeof buf, f) : 0;
    if (f)
        fclose(f);
    snprintf(r->identity, sizeof r->identity, "model_hash = %016" PRIx64 "\ntrain_samples = %" PRIu64 "\n",
             stk_ckpt_checksum(buf, n), stk_dataset_len(r->train_ds));
    return 0;
}

/* A schedule whose fixed phases take the whole run leaves an open-ended
 * last phase no steps ("warmup:1ep|cosine" with epochs = 1): the fixed
 * phases are shortened to half the run, and the tool says so. */
static void fit_schedule(stk_sched_config_t *s)
{
    int64_t known = 0, total = s->total_steps;
    int open = 0;
    for (size_t i = 0; i < s->n_phases; i++) {
        known += s->phases[i].steps;
        open |= s->phases[i].steps == 0;
    }
    if (!open || known < total || total < 2)
        return;
    for (size_t i = 0; i < s->n_phases; i++) {
        stk_sched_phase_t *p = &s->phases[i];
        if (!p->steps)
            continue;
        int64_t was = p->steps;
        p->steps = was * (total / 2) / known > 0 ? was * (total / 2) / known : 1;
        if (p->total_iters == was)
            p->total_iters = p->steps;
        fprintf(stderr, "stoker-train: note: scheduler phase %zu (%s) of %" PRId64 " steps would take the whole "
                    "run of %" PRId64 "; shortened to %" PRId64 "\n", i + 1, stk_sched_kind_name(p->kind), was,
                    total, p->steps);
    }
}

static int make_optim(run_t *r)
{
    /* Parameter groups by name and no_decay come with the spec. */
    int rc = stk_optim_create_for_model(&r->opt, r->model, r->cfg.optimizer);
    if (rc)
        return fail_key(r, EXIT_USAGE, "optimizer", rc, NULL);
    r->batches_per_epoch = stk_loader_len(r->train_loader);
    r->steps_per_epoch = (r->batches_per_epoch + (uint64_t)r->cfg.accum_steps - 1) / (uint64_t)r->cfg.accum_steps;
    stk_sched_config_t scfg;
    stk_sched_config_default(&scfg);
    scfg.total_steps = (int64_t)r->steps_per_epoch * r->cfg.epochs;
    rc = stk_sched_parse(r->cfg.scheduler, (int64_t)r->steps_per_epoch, &scfg);
    if (rc == 0) {
        fit_schedule(&scfg);
        rc = stk_sched_create(&r->sched, &scfg, r->opt);
    }
    return rc ? fail_key(r, EXIT_USAGE, "scheduler", rc, NULL) : 0;
}

/* --resume PATH: a checkpoint file, a checkpoint folder, or a run_dir. */
static int resolve_resume(const char *where, char *path, size_t cap)
{
    struct stat st;
    if (stat(where, &st) != 0)
        return fail(EXIT_USAGE, "--resume %s: %s", where, strerror(errno));
    if (!S_ISDIR(st.st_mode)) {
        snprintf(path, cap, "%s", where);
        return 0;
    }
    char sub[TRAIN_PATH_MAX + 16];
    snprintf(sub, sizeof sub, "%s/checkpoints", where);
    const char *dir = stat(sub, &st) == 0 && S_ISDIR(st.st_mode) ? sub : where;
    int rc = stk_train_checkpoint_latest(dir, NULL, path, cap);
    if (rc) {
        const char *msg = stk_error_message();
        return fail(EXIT_USAGE, "--resume %s: %s (%s)", where, msg, stk_err_name(rc));
    }
    return 0;
}

/* The stored config against this one: keys that decide the computation,
 * and the model and data fingerprints, must agree unless --force. */
static int check_resume(run_t *r, const char *path)
{
    train_config_t old;
    train_config_default(&old);
    char err[1024], diff[512];
    if (!r->st.config || train_config_parse(&old, r->st.config, "stored config", err, sizeof err))
        return fail(EXIT_USAGE, "--resume %s: its stored config does not parse: %s", path,
                    r->st.config ? err : "none");
    train_config_diff(&old, &r->cfg, FIXED_KEYS, diff, sizeof diff);
    stk_ckpt_t *ck = NULL;
    const void *data;
    size_t len;
    char ident[256] = "";
    if (stk_ckpt_open(&ck, path) == 0 && stk_ckpt_find(ck, "run", &data, &len) == 0 && len < sizeof ident) {
        memcpy(ident, data, len);
        ident[len] = '\0';
    }
    stk_ckpt_close(&ck);
    if (strcmp(ident, r->identity) != 0) {
        size_t used = strlen(diff);
        snprintf(diff + used, sizeof diff - used, "%s%s", used ? ", " : "",
                 strncmp(ident, r->identity, 30) ? "the model file's contents" : "the number of training samples");
    }
    if (!diff[0])
        return 0;
    if (r->force) {
        fprintf(stderr, "stoker-train: warning: --force: resuming run %s with changes in %s\n", r->st.run_id, diff);
        return 0;
    }
    return fail(EXIT_USAGE, "--resume %s: run %s was made with another %s (the checkpoint's config: "
                "--print-config shows this one); keep them, start a new run elsewhere, or add --force",
                path, r->st.run_id, diff);
}

/* Settles which run this is: a new one (its folder and metrics file must
 * not hold another run's), or the resumed one. */
static int identity(run_t *r, const char *resume)
{
    int rc;
    char cfgtxt[65536];
    if (train_config_format(&r->cfg, cfgtxt, sizeof cfgtxt))
        return fail(EXIT_USAGE, "config too long to store");
    if (resume) {
        if ((rc = resolve_resume(resume, r->resumed_from, sizeof r->resumed_from)) != 0)
            return rc;
        if ((rc = stk_train_checkpoint_load(r->resumed_from, NULL, &r->st)) != 0)
            return fail(EXIT_USAGE, "--resume %s: %s (%s)", resume, stk_error_message(), stk_err_name(rc));
        if ((rc = check_resume(r, r->resumed_from)) != 0)
            return rc;
        stk_train_parts_t parts = {r->model, r->opt, r->sched};
        stk_train_state_clear(&r->st);
        if ((rc = stk_train_checkpoint_load(r->resumed_from, &parts, &r->st)) != 0)
            return fail(EXIT_USAGE, "--resume %s: %s (%s)", resume, stk_error_message(), stk_err_name(rc));
        if (r->st.loader.epoch == r->st.epoch && r->st.loader.batch > r->batches_per_epoch)
            return fail(EXIT_USAGE, "--resume %s: position (epoch %" PRIu64 ", batch %" PRIu64 ") is outside an epoch "
                        "of %" PRIu64 " batches", r->resumed_from, r->st.epoch + 1, r->st.loader.batch,
                        r->batches_per_epoch);
        free(r->st.config);
    } else {
        stk_train_state_init(&r->st, r->cfg.seed);
    }
    if (!(r->st.config = strdup(cfgtxt)))
        return fail(EXIT_RUNTIME, "out of memory");
    r->st.config_hash = stk_ckpt_checksum(cfgtxt, strlen(cfgtxt));
    const char *dir = r->cfg.checkpoint_dir;
    char where[TRAIN_PATH_MAX + 64];
    if (dir[0] && (rc = stk_train_checkpoint_dir_check(dir, r->st.run_id)) != 0) {
        train_config_where(&r->cfg, "checkpoint_dir", where, sizeof where);
        if (rc != STK_ESTATE)
            return fail(EXIT_USAGE, "%s: %s", where, stk_error_message());
        return fail(EXIT_USAGE, "%s: %s. To continue that run: --resume %s; for a%s run, give it its own folder "
                    "(--set run_dir=... or checkpoint_dir=...)", where, stk_error_message(), dir,
                    resume ? "nother" : " new");
    }
    char other[64];
    size_t lines;
    if (r->cfg.metrics[0] && train_metrics_run(r->cfg.metrics, other, sizeof other, &lines) == 0 && lines &&
        strcmp(other, r->st.run_id) != 0) {
        train_config_where(&r->cfg, "metrics", where, sizeof where);
        return fail(EXIT_USAGE, "%s: %s holds %zu lines of run %s; this is run %s: give it its own metrics file "
                    "(--set run_dir=... or metrics=...)%s", where, r->cfg.metrics, lines, other, r->st.run_id,
                    resume ? "" : ", or --resume that run");
    }
    if (resume)
        fprintf(stderr, "stoker-train: resuming run %s from %s (%" PRIu64 " of %d epochs done, step %" PRIu64 ")\n",
                r->st.run_id, r->resumed_from, r->st.epoch, r->cfg.epochs, r->st.step);
    return 0;
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
    const char *outs[] = {c->metrics, r->plot_path};
    const char *ins[] = {c->train_data, c->test_data, c->model};
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++)
            if (outs[i][0] && !strcmp(outs[i], ins[j]))
                return fail(EXIT_USAGE, "output %s would overwrite an input", outs[i]);
    int rc;
    const char *eval_key = c->test_augment[0] ? "test_augment" : "augment";
    if ((rc = make_model(r)) != 0 || (rc = open_data(r, "train_data", c->augment, "augment", &r->train_ds)) != 0 ||
        (rc = open_data(r, "test_data", r->eval_augment, eval_key, &r->test_ds)) != 0 ||
        (rc = check_memory(r)) != 0 || (rc = make_loader(r, 1)) != 0 || (rc = make_loader(r, 0)) != 0 ||
        (rc = make_optim(r)) != 0)
        return rc;
    return identity(r, resume);
}

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

/* Creates the outputs once everything above succeeded. A resumed run's
 * metrics file is appended to, never truncated; one that is missing or
 * empty starts with the checkpoint's history. */
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
        char id[64];
        size_t lines = 0;
        train_metrics_run(r->cfg.metrics, id, sizeof id, &lines);
        if (!(r->metrics = fopen(r->cfg.metrics, "a")))
            return fail(EXIT_RUNTIME, "key 'metrics': %s: %s", r->cfg.metrics, strerror(errno));
        for (size_t i = 0; lines == 0 && i < r->st.n_history; i++)
            train_metrics_write(r->metrics, r->st.run_id, &r->st.history[i]);
    }
    return 0;
}

/* ---- progress ------------------------------------------------------------ */

static void on_step(const stk_train_progress_t *p, void *user)
{
    run_t *r = user;
    if (p->epoch + 1 == r->pause_epoch && p->batch == r->pause_batch) {
        r->pause_epoch = 0;
        raise(SIGSTOP);
    }
    r->compute_s += p->last->compute_s;
    r->optim_s += p->last->optim_s;
    if (r->quiet)
        return;
    double t = tool_now_s();
    if (t - r->t_print < (r->tty ? 0.25 : r->cfg.progress_every))
        return;
    r->t_print = t;
    fprintf(stderr, "%sepoch %" PRIu64 "/%d  batch %" PRIu64 "/%" PRIu64 "  step %" PRIu64 "  loss %.4f  acc %.2f%%  "
            "lr %.4g  %.0f img/s  wait %.1f%%%s", r->tty ? "\r\033[K" : "", p->epoch + 1, r->cfg.epochs, p->batch,
            p->batches, p->step, p->loss, 100 * p->acc, p->lr, p->images_per_s, 100 * p->data_wait,
            r->tty ? "" : "\n");
    fflush(stderr);
}

static int on_epoch(const stk_train_epoch_t *e, const stk_train_state_t *st, void *user)
{
    run_t *r = user;
    if (!r->quiet) {
        fprintf(stderr, "%sepoch %" PRIu64 "/%d  step %" PRIu64 "  loss %.4f  acc %.2f%%  test_loss %.4f  "
                "test_acc %.2f%%  lr %.4g  %.0f img/s  wait %.1f%%  %.1fs\n", r->tty ? "\r\033[K" : "", e->epoch,
                r->cfg.epochs, e->step, e->train_loss, 100 * e->train_acc, e->test_loss, 100 * e->test_acc, e->lr,
                e->images_per_s, 100 * e->data_wait, e->epoch_s);
        fflush(stderr);
        r->t_print = tool_now_s();
    }
    if (r->metrics && train_metrics_write(r->metrics, st->run_id, e) != 0) {
        fail(EXIT_RUNTIME, "key 'metrics': write %s failed", r->cfg.metrics);
        return -EIO;
    }
    int rc;
    if (r->plot_path[0] && (rc = train_plot_svg(r->plot_path, st->history, st->n_history)) != 0) {
        fail(EXIT_RUNTIME, "plot %s: %s", r->plot_path, strerror(-rc));
        return rc;
    }
    return 0;
}

static void on_checkpoint(const char *path, const stk_train_state_t *st, void *user)
{
    (void)st;
    run_t *r = user;
    snprintf(r->last_ckpt, sizeof r->last_ckpt, "%s", path);
}

/* The run failed after a stop was asked for: the same signal reached the
 * workers (a process-group SIGTERM, as timeout(1), a shell's job control
 * or a container stop send). The loop leaves the state at its last
 * optimizer step, consistent with the model and optimizer: saved, the run
 * resumes from there. */
static int stopped_by_failure(run_t *r, int lrc, const stk_train_loop_config_t *lc)
{
    char why[1024];
    snprintf(why, sizeof why, "%s (%s)", stk_error_message(), stk_err_name(lrc));
    if (!lc->checkpoint_dir)
        return fail(EXIT_STOPPED, "interrupted; then %s; no checkpoint_dir: nothing saved", why);
    stk_train_parts_t parts = {r->model, r->opt, r->sched};
    char path[4096];
    int rc = stk_train_checkpoint_save(lc->checkpoint_dir, &parts, &r->st, lc->extra, lc->n_extra, lc->keep_last,
                                       path, sizeof path);
    if (rc)
        return fail(EXIT_RUNTIME, "interrupted; then %s; and the checkpoint failed: %s", why, stk_error_message());
    return fail(EXIT_STOPPED, "interrupted at epoch %" PRIu64 ", step %" PRIu64 " (then %s); resume from %s",
                r->st.epoch + 1, r->st.step, why, path);
}

/* ---- results ------------------------------------------------------------- */

static void print_results(const run_t *r, double wall_s)
{
    const stk_train_state_t *st = &r->st;
    train_summary_print(stdout, st->history, st->n_history);
    double best = NAN, final = NAN;
    uint64_t best_epoch = 0;
    for (size_t i = 0; i < st->n_history; i++) {
        if (!(st->history[i].test_acc <= best)) {
            best = st->history[i].test_acc;
            best_epoch = st->history[i].epoch;
        }
        final = st->history[i].test_acc;
    }
    double ips = st->total_train_s > 0 ? (double)st->total_images / st->total_train_s : 0;
    double wait = st->total_train_s > 0 ? st->total_wait_s / st->total_train_s : 0;
    printf("run %s: final test accuracy %.2f%%, best %.2f%% (epoch %" PRIu64 "), %.0f images/s, data wait %.2f%%, "
           "%.1f s\n", st->run_id, 100 * final, 100 * best, best_epoch, ips, 100 * wait, wall_s);
    if (r->json)
        printf("{\"run\":\"%s\",\"final_test_acc\":%.6f,\"best_test_acc\":%.6f,\"best_epoch\":%" PRIu64
               ",\"epochs\":%" PRIu64 ",\"steps\":%" PRIu64 ",\"images_per_s\":%.1f,\"data_wait\":%.6f,"
               "\"wall_s\":%.3f,\"train_s\":%.3f}\n",
               st->run_id, isfinite(final) ? final : 0, isfinite(best) ? best : 0, best_epoch, st->epoch, st->step,
               ips, wait, wall_s, st->total_train_s);
    fflush(stdout);
}

static void print_profile(const run_t *r)
{
    const stk_train_state_t *st = &r->st;
    double train = st->total_train_s > 0 ? st->total_train_s : 1, eval = 0;
    for (size_t i = 0; i < st->n_history; i++)
        eval += st->history[i].epoch_s;
    eval -= st->total_train_s;
    double other = train - r->compute_s - r->optim_s - st->total_wait_s;
    fprintf(stderr, "phase            seconds   share of training\n");
    fprintf(stderr, "forward+backward %8.2f   %5.1f%%\n", r->compute_s, 100 * r->compute_s / train);
    fprintf(stderr, "optimizer step   %8.2f   %5.1f%%\n", r->optim_s, 100 * r->optim_s / train);
    fprintf(stderr, "data wait        %8.2f   %5.1f%%\n", st->total_wait_s, 100 * st->total_wait_s / train);
    fprintf(stderr, "other            %8.2f   %5.1f%%\n", other, 100 * other / train);
    fprintf(stderr, "evaluation       %8.2f   (not in training time)\n", eval > 0 ? eval : 0);
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
    stk_train_inputs_destroy(&r->train_in);
    stk_train_inputs_destroy(&r->test_in);
    stk_sched_destroy(&r->sched);
    stk_optim_destroy(&r->opt);
    stk_model_destroy(&r->model);
    if (r->metrics)
        fclose(r->metrics);
    stk_train_state_clear(&r->st);
}

/* ---- main ---------------------------------------------------------------- */

static int parse_args(run_t *r, int argc, char **argv, const char **resume, int *print_config)
{
    const char *config = NULL;
    char err[2048];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(a, "--set") || !strcmp(a, "--resume")) {
            if (i + 1 >= argc) {
                usage(stderr);
                return fail(EXIT_USAGE, "%s needs an argument", a);
            }
            if (!strcmp(a, "--resume"))
                *resume = argv[i + 1];
            i++;
        } else if (!strncmp(a, "--resume=", 9)) {
            *resume = a + 9;
        } else if (!strcmp(a, "--json")) {
            r->json = 1;
        } else if (!strcmp(a, "--force")) {
            r->force = 1;
        } else if (!strcmp(a, "--print-config")) {
            *print_config = 1;
        } else if (strncmp(a, "--set=", 6) != 0 && a[0] == '-') {
            usage(stderr);
            return fail(EXIT_USAGE, "unknown option %s", a);
        } else if (a[0] != '-') {
            if (config) {
                usage(stderr);
                return fail(EXIT_USAGE, "more than one config file (%s, %s)", config, a);
            }
            config = a;
        }
    }
    if (!config) {
        usage(stderr);
        return fail(EXIT_USAGE, "no config file given");
    }
    if (r->force && !*resume)
        return fail(EXIT_USAGE, "--force only applies to --resume");
    r->config_path = config;
    train_config_default(&r->cfg);
    if (train_config_load(&r->cfg, config, err, sizeof err))
        return fail(EXIT_USAGE, "%s", err);
    /* --set in order after the file: later settings win. */
    for (int i = 1; i < argc; i++) {
        const char *set = NULL;
        if (!strcmp(argv[i], "--set"))
            set = argv[++i];
        else if (!strcmp(argv[i], "--resume"))
            i++;
        else if (!strncmp(argv[i], "--set=", 6))
            set = argv[i] + 6;
        if (set && train_config_set(&r->cfg, set, err, sizeof err))
            return fail(EXIT_USAGE, "%s", err);
    }
    if (train_config_check(&r->cfg, config, err, sizeof err))
        return fail(EXIT_USAGE, "%s", err);
    return 0;
}

int main(int argc, char **argv)
{
    static run_t run;
    run_t *r = &run;
    const char *resume = NULL;
    int print_config = 0;
    double t_begin = tool_now_s();
    /* From the start: a signal during setup ends it before any output. */
    install_signals();
    int rc = parse_args(r, argc, argv, &resume, &print_config);
    if (rc)
        return rc;
    stop_grace_s = (unsigned)r->cfg.stop_grace;
    install_signals();
    const char *pause = getenv("STK_TRAIN_TEST_PAUSE");
    if (pause && sscanf(pause, "%" SCNu64 ":%" SCNu64, &r->pause_epoch, &r->pause_batch) != 2)
        return fail(EXIT_USAGE, "STK_TRAIN_TEST_PAUSE=%s: expected EPOCH:BATCH", pause);
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
    r->tty = isatty(STDERR_FILENO);
    r->quiet = r->cfg.progress == 0;
    if (r->cfg.progress == 1)
        r->tty = 1;
    stk_log_set_callback(stk_log_stderr, NULL, STK_LOG_WARN);
    /* Workers fork from a clean process made before the model exists. */
    if (r->cfg.workers > 0 && stk_loader_forkserver_start() != 0)
        return fail_stk(-EAGAIN, "fork server");

    rc = setup(r, resume);
    if (rc == 0 && stop_requested)
        rc = fail(EXIT_STOPPED, "interrupted during setup (nothing written)");
    if (rc == 0 && r->st.epoch >= (uint64_t)r->cfg.epochs) {
        fprintf(stderr, "stoker-train: run %s is complete (%" PRIu64 " of %d epochs): nothing to do\n", r->st.run_id,
                r->st.epoch, r->cfg.epochs);
        print_results(r, tool_now_s() - t_begin);
    } else if (rc == 0 && (rc = open_outputs(r)) == 0) {
        if (r->cfg.profile)
            stk_model_set_profiling(r->model, 1);
        stk_train_loop_config_t lc;
        stk_train_loop_config_default(&lc);
        lc.model = r->model;
        lc.optim = r->opt;
        lc.sched = r->sched;
        lc.train_loader = r->train_loader;
        lc.train_inputs = r->train_in;
        lc.eval_loader = r->test_loader;
        lc.eval_inputs = r->test_in;
        lc.epochs = (uint64_t)r->cfg.epochs;
        lc.stop_after = (uint64_t)r->cfg.stop_after_epochs;
        lc.stepper.accum_steps = (uint32_t)r->cfg.accum_steps;
        lc.stepper.clip_norm = r->cfg.clip_norm;
        lc.checkpoint_dir = r->cfg.checkpoint_dir[0] ? r->cfg.checkpoint_dir : NULL;
        lc.keep_last = (unsigned)r->cfg.keep_last;
        lc.checkpoint_steps = (uint64_t)r->cfg.checkpoint_steps;
        stk_ckpt_section_t ident = {"run", r->identity, strlen(r->identity)};
        lc.extra = &ident;
        lc.n_extra = 1;
        lc.stop = &stop_requested;
        lc.on_step = on_step;
        lc.on_epoch = on_epoch;
        lc.on_checkpoint = on_checkpoint;
        lc.user = r;
        int lrc = stk_train_run(&lc, &r->st);
        if (!r->quiet && r->tty)
            fputs("\r\033[K", stderr);
        if (lrc == 0) {
            print_results(r, tool_now_s() - t_begin);
            if (r->cfg.profile)
                print_profile(r);
        } else if (lrc == -EINTR) {
            rc = fail(EXIT_STOPPED, "interrupted: %s; %s%s", stk_error_message(),
                      r->last_ckpt[0] ? "resume from " : "no checkpoint_dir: nothing saved",
                      r->last_ckpt[0] ? r->last_ckpt : "");
        } else if (stop_requested && lrc != -EIO && lrc != -EDOM) {
            rc = stopped_by_failure(r, lrc, &lc);
        } else if (lrc == -EIO && r->metrics) {
            rc = EXIT_RUNTIME;
        } else {
            rc = fail_stk(lrc, "training");
        }
    }
    teardown(r);
    stk_loader_forkserver_stop();
    return rc;
}
