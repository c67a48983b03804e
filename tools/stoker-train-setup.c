/* SPDX-License-Identifier: MIT */
/* stoker-train's setup: everything between a parsed config and a run
 * ready to start. The data sets are opened and checked against the model
 * (stk_train_check_data), the model is built at batch 1 and planned at the
 * configured batch only once the memory estimate says it fits, the
 * optimizer and scheduler come from their texts, and the run's identity
 * is settled: a new run never takes a folder or metrics file of another
 * run's, a resumed one must keep what decides its computation. Nothing is
 * written until train_open_outputs. */
#define _GNU_SOURCE
#include "stoker-train.h"
#include "tool_args.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Keys that decide what the next steps compute: a resumed run must keep
 * them (unless --force). */
#define FIXED_KEYS                                                                                                    \
    "model,train_data,train_limit,image_field,label_field,augment,optimizer,scheduler,epochs,batch_size,"            \
    "accum_steps,drop_last,seed,clip_norm,target,boundary_token,bucket_pool,precision,loss_scale"

/* ---- messages ---------------------------------------------------------- */

int train_fail(int code, const char *fmt, ...)
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
int train_fail_key(const run_t *r, int code, const char *key, int rc, const char *what)
{
    char where[TRAIN_PATH_MAX + 64];
    train_config_where(&r->cfg, key, where, sizeof where);
    const char *msg = stk_error_message();
    return train_fail(code, "%s: %s%s%s (%s)", where, what ? what : "", what && msg[0] ? ": " : "", msg,
                      stk_err_name(rc));
}

int train_fail_stk(int rc, const char *what)
{
    const char *msg = stk_error_message();
    return train_fail(EXIT_RUNTIME, "%s: %s%s%s (%s)", what, msg, msg[0] ? ": " : "", stk_strerror(rc),
                      stk_err_name(rc));
}

/* ---- setup ------------------------------------------------------------- */

/* The inputs converter's settings: images and labels, or a language
 * model's next-token targets over the image field's token ids. */
static void train_inputs_config(const run_t *r, stk_train_inputs_config_t *icfg)
{
    stk_train_inputs_config_default(icfg);
    icfg->image_field = r->cfg.image_field;
    icfg->label_field = r->cfg.label_field;
    /* On a GPU, half images (normalize's dtype=) cross the bus as they
     * are and become f32 there. */
    icfg->keep_half = r->on_device;
    if (!strcmp(r->cfg.target, "next_token")) {
        icfg->label_field = NULL;
        icfg->next_token = 1;
        icfg->boundary_token = r->cfg.boundary_token;
    }
}

/* Opens a data set and checks it against the model and the augment spec
 * (parsed here too, so that a bad spec fails before any output). */
static int open_data(run_t *r, const char *key, const char *spec, const char *spec_key, stk_dataset_t **ds)
{
    const char *path = !strcmp(key, "train_data") ? r->cfg.train_data : r->cfg.test_data;
    struct stat st;
    if (stat(path, &st) != 0) {
        char where[TRAIN_PATH_MAX + 64];
        return train_fail(EXIT_USAGE, "%s: data path %s: %s", train_config_where(&r->cfg, key, where, sizeof where),
                          path, strerror(errno));
    }
    stk_dataset_shard_config_t dcfg;
    stk_dataset_shard_config_default(&dcfg);
    int most = r->cfg.batch_size > r->cfg.eval_batch_size ? r->cfg.batch_size : r->cfg.eval_batch_size;
    if ((uint32_t)most > dcfg.max_batch)
        dcfg.max_batch = (uint32_t)most;
    int rc = stk_dataset_shard_create(ds, path, &dcfg);
    if (rc)
        return train_fail_key(r, EXIT_USAGE, key, rc, NULL);
    stk_train_inputs_config_t icfg;
    train_inputs_config(r, &icfg);
    if ((rc = stk_train_check_data(*ds, &icfg, spec, r->model)) != 0) {
        /* A bad spec is the spec's key; anything else the data's. */
        int spec_err = rc == STK_ECONFIG && strstr(stk_error_message(), "samples are") == NULL;
        return train_fail_key(r, EXIT_USAGE, spec_err ? spec_key : key, rc, spec_err ? NULL : path);
    }
    return 0;
}

/* Training batches of similar lengths: the random sampler's epochs cut
 * into pools of bucket_pool batches sorted by the input field's length
 * (sampler/bucket.c); says what padding that saves. */
static int make_buckets(run_t *r, uint64_t n, uint64_t batch, stk_loader_config_t *lcfg)
{
    if (!(r->train_lengths = malloc((size_t)n * sizeof(uint32_t))))
        return train_fail(EXIT_RUNTIME, "out of memory for %" PRIu64 " sequence lengths", n);
    int rc = stk_train_sequence_lengths(r->train_ds, r->cfg.image_field, n, r->train_lengths);
    if (rc)
        return train_fail_key(r, EXIT_USAGE, "bucket_pool", rc, NULL);
    stk_bucket_config_t bc;
    stk_bucket_config_default(&bc);
    bc.lengths = r->train_lengths;
    bc.num_lengths = n;
    bc.batch_size = batch;
    bc.drop_last = r->cfg.drop_last;
    bc.pool_batches = (uint64_t)r->cfg.bucket_pool;
    bc.seed = r->cfg.seed;
    if ((rc = stk_batch_sampler_create_bucketed(&r->train_buckets, r->train_sampler, &bc)) != 0)
        return train_fail_key(r, EXIT_USAGE, "bucket_pool", rc, NULL);
    stk_bucket_stats_t bs;
    stk_batch_sampler_bucket_stats(r->train_buckets, &bs);
    if (!r->quiet && bs.padded && bs.padded_plain)
        fprintf(stderr, "stoker-train: bucketing by length: padding %.1f%% of the padded steps (%.1f%% without)\n",
                100.0 * (double)(bs.padded - bs.tokens) / (double)bs.padded,
                100.0 * (double)(bs.padded_plain - bs.tokens) / (double)bs.padded_plain);
    lcfg->batch_sampler = r->train_buckets;
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
        train_config_where(&r->cfg, r->cfg.train_limit ? "train_limit" : "train_data", where, sizeof where);
        return train_fail(EXIT_USAGE, "%s: %" PRIu64 " samples (train_limit %" PRIu64 ") make no full batch of %" PRIu64
                          " (drop_last): lower batch_size or raise train_limit", where, n, r->cfg.train_limit, batch);
    }
    stk_sampler_config_t scfg;
    stk_sampler_config_default(&scfg);
    scfg.kind = train ? STK_SAMPLER_RANDOM : STK_SAMPLER_SEQUENTIAL;
    scfg.dataset_len = n;
    scfg.seed = r->cfg.seed;
    uint64_t *part = NULL;
    uint32_t world = (uint32_t)r->env.world_size, rank = (uint32_t)r->env.rank;
    if (world > 1 && train) {
        /* Each rank its shard of every epoch's order (PyTorch's
         * DistributedSampler): batch_size is per rank. */
        scfg.kind = STK_SAMPLER_DISTRIBUTED;
        scfg.rank = rank;
        scfg.world_size = world;
        scfg.shuffle = 1;
        scfg.drop_last = r->cfg.drop_last;
    } else if (world > 1) {
        /* Each rank evaluates its own contiguous part, exactly once; the
         * loop sums the results. */
        uint64_t lo = n * rank / world, hi = n * (rank + 1) / world;
        if (hi == lo)
            return train_fail(EXIT_USAGE, "test_data: %" PRIu64 " samples leave rank %u of %u none to evaluate", n,
                              rank, world);
        if (!(part = malloc((hi - lo) * sizeof *part)))
            return train_fail(EXIT_RUNTIME, "out of memory");
        for (uint64_t i = lo; i < hi; i++)
            part[i - lo] = i;
        scfg.kind = STK_SAMPLER_SUBSET_RANDOM;
        scfg.indices = part;
        scfg.num_indices = hi - lo;
    }
    stk_sampler_t **sampler = train ? &r->train_sampler : &r->test_sampler;
    int rc = stk_sampler_create(sampler, &scfg);
    free(part);
    if (rc)
        return train_fail_key(r, EXIT_USAGE, key, rc, "sampler");
    stk_loader_config_t lcfg;
    stk_loader_config_default(&lcfg);
    if (train && r->cfg.bucket_pool > 0 && (rc = make_buckets(r, n, batch, &lcfg)) != 0)
        return rc;
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
    if (r->on_device) {
        /* The arena page-locked once for the GPU: batches go to it by DMA. */
        lcfg.pin = stk_model_pin_host;
        lcfg.unpin = stk_model_unpin_host;
        lcfg.pin_user = r->model;
        lcfg.pin_no_memlock = 1;
    }
    stk_loader_t **l = train ? &r->train_loader : &r->test_loader;
    rc = stk_loader_create(l, ds, &lcfg);
    if (rc)
        return train_fail_key(r, EXIT_USAGE, key, rc, NULL);
    stk_train_inputs_config_t icfg;
    train_inputs_config(r, &icfg);
    icfg.normalize = r->eval_augment;
    rc = stk_train_inputs_create(train ? &r->train_in : &r->test_in, &icfg);
    return rc ? train_fail_key(r, EXIT_USAGE, "augment", rc, NULL) : 0;
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
    if (stk_cudnn_policy_parse(r->cfg.cudnn, &mcfg.cudnn_policy))
        return train_fail_key(r, EXIT_USAGE, "cudnn", STK_ECONFIG, NULL);
    mcfg.cudnn_workspace_limit = (uint64_t)(r->cfg.cudnn_workspace_mb * 1048576.0);
    mcfg.cudnn_cache_path = r->cfg.cudnn_cache[0] ? r->cfg.cudnn_cache : NULL;
    /* device = auto takes a GPU when the build and the machine have one. */
    if (train_device_parse(r->cfg.device, &mcfg.device, &mcfg.device_index))
        return train_fail_key(r, EXIT_USAGE, "device", -EINVAL, NULL);
    if (!strcmp(r->cfg.device, "auto") && stk_device_count(STK_DEVICE_CUDA) > 0)
        mcfg.device = STK_DEVICE_CUDA;
    /* Data-parallel on GPUs: each rank its own (stoker-launch's
     * STK_CUDA_DEVICE, else the local rank) unless the config names one. */
    if (mcfg.device == STK_DEVICE_CUDA && r->env.world_size > 1 && !strchr(r->cfg.device, ':')) {
        const char *d = getenv("STK_CUDA_DEVICE");
        mcfg.device_index = d && *d ? atoi(d) : r->env.local_rank;
    }
    r->cuda_index = mcfg.device_index;
    if (train_precision_parse(r->cfg.precision, &mcfg.precision))
        return train_fail_key(r, EXIT_USAGE, "precision", -EINVAL, NULL);
    int rc = stk_device_describe(mcfg.device, mcfg.device_index, r->device, sizeof r->device);
    if (rc == 0)
        rc = stk_model_create_from_file(&r->model, r->cfg.model, &mcfg);
    /* The engine's refusal of a precision starts "model: precision". */
    if (rc == STK_ECONFIG && mcfg.precision != STK_PRECISION_FP32 && strstr(stk_error_message(), "model: precision "))
        return train_fail_key(r, EXIT_USAGE, "precision", rc, NULL);
    if (rc)
        return train_fail_key(r, EXIT_USAGE, rc == STK_EDEVICE ? "device" : "model", rc, NULL);
    r->precision = stk_model_precision(r->model);
    r->on_device = mcfg.device != STK_DEVICE_CPU;
    /* Graphs of the whole step: a GPU's (the CPU has no launches to save). */
    if (r->on_device && !strcmp(r->cfg.cuda_graph, "on"))
        stk_model_set_cuda_graph(r->model, 1);
    /* Loss scaling: what fp16 needs; anyone may ask for it. */
    r->loss_scaling = !strcmp(r->cfg.loss_scale, "dynamic") ||
                      (!strcmp(r->cfg.loss_scale, "auto") && mcfg.precision == STK_PRECISION_FP16);
    r->loss_scale = r->loss_scaling ? (float)r->cfg.loss_scale_init : 1.0f;
    if (stk_model_num_classes(r->model) <= 0) {
        char where[TRAIN_PATH_MAX + 64];
        return train_fail(EXIT_USAGE, "%s: %s has no cross_entropy loss layer",
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
    int64_t forced;
    if (env && *env) {
        if (tool_parse_i64("stoker-train", "STK_TRAIN_MEMORY_AVAILABLE", env, 1, INT64_MAX, &forced))
            return EXIT_USAGE;
        have = (uint64_t)forced;
    }
    if ((rc = stk_train_memory_estimate(r->model, most, &need)) != 0)
        return train_fail_key(r, EXIT_USAGE, "model", rc, "memory estimate");
    if (have && need > have) {
        char where[TRAIN_PATH_MAX + 64];
        return train_fail(EXIT_USAGE,
                          "%s: a training step at batch %" PRId64 " needs about %.1f GiB for %s, %.1f GiB of "
                          "memory is available: lower batch_size%s",
                          train_config_where(&r->cfg, r->cfg.batch_size >= r->cfg.eval_batch_size ? "batch_size"
                          : "eval_batch_size",
                          where, sizeof where),
                          most, (double)need / (1u << 30), r->cfg.model, (double)have / (1u << 30),
                          r->cfg.eval_batch_size > r->cfg.batch_size ? " or eval_batch_size" : "");
    }
    if ((rc = stk_model_set_batch_size(r->model, r->cfg.batch_size)) != 0)
        return train_fail_key(r, EXIT_RUNTIME, "batch_size", rc, NULL);
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
        return train_fail_key(r, EXIT_USAGE, "optimizer", rc, NULL);
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
    return rc ? train_fail_key(r, EXIT_USAGE, "scheduler", rc, NULL) : 0;
}

/* --resume PATH: a checkpoint file, a checkpoint folder, or a run_dir. */
static int resolve_resume(const char *where, char *path, size_t cap)
{
    struct stat st;
    if (stat(where, &st) != 0)
        return train_fail(EXIT_USAGE, "--resume %s: %s", where, strerror(errno));
    if (!S_ISDIR(st.st_mode)) {
        snprintf(path, cap, "%s", where);
        return 0;
    }
    char sub[TRAIN_PATH_MAX + 16];
    snprintf(sub, sizeof sub, "%s/checkpoints", where);
    const char *dir = stat(sub, &st) == 0 && S_ISDIR(st.st_mode) ? sub : where;
    int rc = stk_ckpt_dir_latest(dir, NULL, path, cap);
    if (rc) {
        const char *msg = stk_error_message();
        return train_fail(EXIT_USAGE, "--resume %s: %s (%s)", where, msg, stk_err_name(rc));
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
        return train_fail(EXIT_USAGE, "--resume %s: its stored config does not parse: %s", path,
                          r->st.config ? err : "none");
    train_config_diff(&old, &r->cfg, FIXED_KEYS, diff, sizeof diff);
    stk_ckpt_t *ck = NULL;
    const void *data;
    size_t len;
    char ident[256] = "";
    if (stk_ckpt_create(&ck, path) == 0 && stk_ckpt_find(ck, "run", &data, &len) == 0 && len < sizeof ident) {
        memcpy(ident, data, len);
        ident[len] = '\0';
    }
    stk_ckpt_destroy(&ck);
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
    return train_fail(EXIT_USAGE, "--resume %s: run %s was made with another %s (the checkpoint's config: "
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
        return train_fail(EXIT_USAGE, "config too long to store");
    if (resume) {
        if ((rc = resolve_resume(resume, r->resumed_from, sizeof r->resumed_from)) != 0)
            return rc;
        if ((rc = stk_train_checkpoint_load(r->resumed_from, NULL, &r->st)) != 0)
            return train_fail(EXIT_USAGE, "--resume %s: %s (%s)", resume, stk_error_message(), stk_err_name(rc));
        /* Each rank's data (and the schedule's length) depends on the
         * world size: said before anything else about the checkpoint. */
        uint32_t was = r->st.world_size ? r->st.world_size : 1;
        if (was != (uint32_t)r->env.world_size)
            return train_fail(EXIT_USAGE, "--resume %s: run %s was trained by %u rank%s, this is %d: resume it with %u "
                              "(stoker-launch --nproc-per-node %u, or mpirun -np %u)", r->resumed_from, r->st.run_id,
                              was, was == 1 ? "" : "s", r->env.world_size, was, was, was);
        if ((rc = check_resume(r, r->resumed_from)) != 0)
            return rc;
        stk_train_parts_t parts = {r->model, r->opt, r->sched};
        stk_train_state_clear(&r->st);
        if ((rc = stk_train_checkpoint_load(r->resumed_from, &parts, &r->st)) != 0)
            return train_fail(EXIT_USAGE, "--resume %s: %s (%s)", resume, stk_error_message(), stk_err_name(rc));
        if (r->st.loader.epoch == r->st.epoch && r->st.loader.batch > r->batches_per_epoch)
            return train_fail(EXIT_USAGE,
                              "--resume %s: position (epoch %" PRIu64 ", batch %" PRIu64 ") is outside an epoch "
                              "of %" PRIu64 " batches", r->resumed_from, r->st.epoch + 1, r->st.loader.batch,
                              r->batches_per_epoch);
        /* The summary counts the whole run's skipped steps. */
        if (r->loss_scaling && r->st.loss_scale.scale > 0) {
            r->skipped = r->st.loss_scale.skipped;
            r->loss_scale = r->st.loss_scale.scale;
        }
        free(r->st.config);
    } else {
        stk_train_state_init(&r->st, r->cfg.seed);
    }
    if (!(r->st.config = strdup(cfgtxt)))
        return train_fail(EXIT_RUNTIME, "out of memory");
    r->st.config_hash = stk_ckpt_checksum(cfgtxt, strlen(cfgtxt));
    const char *dir = r->cfg.checkpoint_dir;
    char where[TRAIN_PATH_MAX + 64];
    if (dir[0] && (rc = stk_train_checkpoint_dir_check(dir, r->st.run_id)) != 0) {
        train_config_where(&r->cfg, "checkpoint_dir", where, sizeof where);
        if (rc != STK_ESTATE)
            return train_fail(EXIT_USAGE, "%s: %s", where, stk_error_message());
        return train_fail(EXIT_USAGE, "%s: %s. To continue that run: --resume %s; for a%s run, give it its own folder "
                          "(--set run_dir=... or checkpoint_dir=...)", where, stk_error_message(), dir,
                          resume ? "nother" : " new");
    }
    char other[64];
    size_t lines;
    if (r->cfg.metrics[0] && train_metrics_run(r->cfg.metrics, other, sizeof other, &lines) == 0 && lines &&
        strcmp(other, r->st.run_id) != 0) {
        train_config_where(&r->cfg, "metrics", where, sizeof where);
        return train_fail(EXIT_USAGE, "%s: %s holds %zu lines of run %s; this is run %s: give it its own metrics file "
                          "(--set run_dir=... or metrics=...)%s", where, r->cfg.metrics, lines, other, r->st.run_id,
                          resume ? "" : ", or --resume that run");
    }
    if (resume)
        fprintf(stderr, "stoker-train: resuming run %s from %s (%" PRIu64 " of %d epochs done, step %" PRIu64 ")\n",
                r->st.run_id, r->resumed_from, r->st.epoch, r->cfg.epochs, r->st.step);
    return 0;
}

int train_setup(run_t *r, const char *resume)
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
                return train_fail(EXIT_USAGE, "output %s would overwrite an input", outs[i]);
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
int train_open_outputs(run_t *r)
{
    int rc;
    /* Data-parallel: rank 0 alone writes metrics and plot (the loop gives
     * it global figures); checkpoints are the loop's, rank 0's too. */
    if (r->env.rank != 0) {
        r->plot_path[0] = '\0';
        return 0;
    }
    if (r->cfg.checkpoint_dir[0] && (rc = mkdir_p(r->cfg.checkpoint_dir, 0)) != 0)
        return train_fail(EXIT_RUNTIME, "key 'checkpoint_dir': create %s: %s", r->cfg.checkpoint_dir, strerror(-rc));
    if (r->cfg.metrics[0] && (rc = mkdir_p(r->cfg.metrics, 1)) != 0)
        return train_fail(EXIT_RUNTIME, "key 'metrics': create the folder of %s: %s", r->cfg.metrics, strerror(-rc));
    if (r->plot_path[0] && (rc = mkdir_p(r->plot_path, 1)) != 0)
        return train_fail(EXIT_RUNTIME, "key 'plot': create the folder of %s: %s", r->plot_path, strerror(-rc));
    if (r->cfg.metrics[0]) {
        char id[64];
        size_t lines = 0;
        train_metrics_run(r->cfg.metrics, id, sizeof id, &lines);
        if (!(r->metrics = fopen(r->cfg.metrics, "a")))
            return train_fail(EXIT_RUNTIME, "key 'metrics': %s: %s", r->cfg.metrics, strerror(errno));
        for (size_t i = 0; lines == 0 && i < r->st.n_history; i++)
            train_metrics_write(r->metrics, r->st.run_id, &r->st.history[i]);
    }
    return 0;
}

void train_teardown(run_t *r)
{
    stk_loader_destroy(&r->train_loader);
    stk_loader_destroy(&r->test_loader);
    stk_batch_sampler_destroy(&r->train_buckets);
    free(r->train_lengths);
    r->train_lengths = NULL;
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

