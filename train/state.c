/* SPDX-License-Identifier: MIT */
/* Train-state checkpoints: the model, optimizer and scheduler states, the
 * run's position and counters, its identity and history, as the sections
 * of one atomic checkpoint file tagged with the run id, so that runs
 * sharing a folder never prune or resume each other's files. The layout
 * is documented in docs/train-state-format.md. */
#define _GNU_SOURCE
#include "internal.h"
#include "stoker/train.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define FORMAT_NAME "stoker-train-state"
#define HIST_FIELDS 11

int stk_train_state_init(stk_train_state_t *st, uint64_t seed)
{
    if (!st)
        return stk__error(-EINVAL, "stk_train_state_init: NULL state");
    memset(st, 0, sizeof *st);
    st->seed = seed;
    uint64_t r = 0;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        r = stk_rng_mix(stk_rng_mix((uint64_t)ts.tv_sec, (uint64_t)ts.tv_nsec), (uint64_t)getpid());
    }
    snprintf(st->run_id, sizeof st->run_id, "%016" PRIx64, r);
    return 0;
}

void stk_train_state_clear(stk_train_state_t *st)
{
    if (!st)
        return;
    free(st->history);
    free(st->config);
    memset(st, 0, sizeof *st);
}

int stk_train_state_push_epoch(stk_train_state_t *st, const stk_train_epoch_t *row)
{
    if (!st || !row)
        return stk__error(-EINVAL, "stk_train_state_push_epoch: NULL argument");
    stk_train_epoch_t *h = realloc(st->history, (st->n_history + 1) * sizeof *h);
    if (!h)
        return stk__error(-ENOMEM, "train state: out of memory for the history");
    h[st->n_history++] = *row;
    st->history = h;
    return 0;
}

static int valid_run_id(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > STK_TRAIN_RUN_ID_LEN)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'z') || (id[i] >= 'A' && id[i] <= 'Z') ||
              id[i] == '_'))
            return 0;
    return 1;
}

static void hist_pack(const stk_train_epoch_t *e, double *v)
{
    v[0] = (double)e->epoch;
    v[1] = (double)e->step;
    v[2] = e->train_loss;
    v[3] = e->train_acc;
    v[4] = e->test_loss;
    v[5] = e->test_acc;
    v[6] = e->lr;
    v[7] = e->images_per_s;
    v[8] = e->data_wait;
    v[9] = e->epoch_s;
    v[10] = e->test_topk;
}

static void hist_unpack(stk_train_epoch_t *e, const double *v)
{
    e->epoch = (uint64_t)v[0];
    e->step = (uint64_t)v[1];
    e->train_loss = v[2];
    e->train_acc = v[3];
    e->test_loss = v[4];
    e->test_acc = v[5];
    e->lr = v[6];
    e->images_per_s = v[7];
    e->data_wait = v[8];
    e->epoch_s = v[9];
    e->test_topk = v[10];
}

static const char *const reserved[] = {"meta", "config", "model", "optimizer", "scheduler", "history"};

int stk_train_checkpoint_save(const char *dir, const stk_train_parts_t *parts, const stk_train_state_t *st,
                              const stk_ckpt_section_t *extra, size_t n_extra, unsigned keep_last, char *path_out,
                              size_t cap)
{
    if (!dir || !parts || !parts->model || !st || (!extra && n_extra))
        return stk__error(-EINVAL, "stk_train_checkpoint_save: NULL argument");
    if (!valid_run_id(st->run_id))
        return stk__error(STK_ECONFIG, "train checkpoint: run id '%s' is not 1..%d characters of [0-9A-Za-z_] "
                          "(stk_train_state_init makes one)", st->run_id, STK_TRAIN_RUN_ID_LEN);
    for (size_t i = 0; i < n_extra; i++)
        for (size_t j = 0; j < STK__ARRAY_LEN(reserved); j++)
            if (extra[i].name && strcmp(extra[i].name, reserved[j]) == 0)
                return stk__error(STK_ECONFIG, "train checkpoint: extra section '%s' has a name of the format's own",
                                  extra[i].name);
    int rc = 0;
    size_t nsec = 0, msz = stk_model_state_size(parts->model);
    size_t osz = parts->optim ? stk_optim_state_size(parts->optim) : 0;
    size_t ssz = parts->sched ? stk_sched_state_size(parts->sched) : 0;
    char *mbuf = malloc(msz ? msz : 1), *obuf = malloc(osz ? osz : 1), *sbuf = malloc(ssz ? ssz : 1);
    double *hbuf = malloc((st->n_history ? st->n_history : 1) * HIST_FIELDS * sizeof *hbuf);
    stk_ckpt_section_t *secs = malloc((6 + n_extra) * sizeof *secs);
    char meta[2048];
    if (!mbuf || !obuf || !sbuf || !hbuf || !secs) {
        rc = stk__error(-ENOMEM, "train checkpoint: out of memory");
        goto out;
    }
    if ((rc = stk_model_state_save_mem(parts->model, mbuf, msz, &msz)) != 0 ||
        (parts->optim && (rc = stk_optim_state_save(parts->optim, obuf, osz, &osz)) != 0) ||
        (parts->sched && (rc = stk_sched_state_save(parts->sched, sbuf, ssz, &ssz)) != 0))
        goto out;
    for (size_t i = 0; i < st->n_history; i++)
        hist_pack(&st->history[i], hbuf + i * HIST_FIELDS);
    /* Floats in %a: exact in text. */
    snprintf(meta, sizeof meta,
             "format = " FORMAT_NAME " %d\nrun_id = %s\nconfig_hash = %016" PRIx64 "\nseed = %" PRIu64
             "\nepoch = %" PRIu64 "\nstep = %" PRIu64 "\nmicro = %" PRIu64 "\nloader_epoch = %" PRIu64
             "\nloader_batch = %" PRIu64 "\nep_loss_sum = %a\nep_correct = %" PRIu64 "\nep_seen = %" PRIu64
             "\nep_train_s = %a\nep_wait_s = %a\ntotal_train_s = %a\ntotal_wait_s = %a\ntotal_images = %" PRIu64
             "\nhistory_fields = %d\n",
             STK_TRAIN_STATE_VERSION, st->run_id, st->config_hash, st->seed, st->epoch, st->step, st->micro,
             st->loader.epoch, st->loader.batch, st->ep_loss_sum, st->ep_correct, st->ep_seen, st->ep_train_s,
             st->ep_wait_s, st->total_train_s, st->total_wait_s, st->total_images, HIST_FIELDS);
    secs[nsec++] = (stk_ckpt_section_t){"meta", meta, strlen(meta)};
    if (st->config)
        secs[nsec++] = (stk_ckpt_section_t){"config", st->config, strlen(st->config)};
    secs[nsec++] = (stk_ckpt_section_t){"model", mbuf, msz};
    if (parts->optim)
        secs[nsec++] = (stk_ckpt_section_t){"optimizer", obuf, osz};
    if (parts->sched)
        secs[nsec++] = (stk_ckpt_section_t){"scheduler", sbuf, ssz};
    secs[nsec++] = (stk_ckpt_section_t){"history", hbuf, st->n_history * HIST_FIELDS * sizeof *hbuf};
    for (size_t i = 0; i < n_extra; i++)
        secs[nsec++] = extra[i];
    rc = stk_ckpt_dir_save(dir, st->run_id, st->step, secs, nsec, keep_last, path_out, cap);
out:
    free(mbuf);
    free(obuf);
    free(sbuf);
    free(hbuf);
    free(secs);
    return rc;
}

/* ---- Loading -------------------------------------------------------------- */

/* The value of "key = value" in meta (NUL-terminated). */
static int meta_get(const char *meta, const char *key, char *val, size_t cap)
{
    size_t kl = strlen(key);
    for (const char *p = meta; p && *p;) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        if (len >= kl + 3 && !strncmp(p, key, kl) && !strncmp(p + kl, " = ", 3)) {
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

static int meta_u64(const char *meta, const char *key, int base, uint64_t *v)
{
    char buf[64], *end;
    if (meta_get(meta, key, buf, sizeof buf) || !buf[0] || buf[0] == '-' || buf[0] == '+' || buf[0] == ' ')
        return -1;
    errno = 0;
    unsigned long long x = strtoull(buf, &end, base);
    if (errno || *end)
        return -1;
    *v = x;
    return 0;
}

static int meta_f64(const char *meta, const char *key, double *v)
{
    char buf[64], *end;
    if (meta_get(meta, key, buf, sizeof buf) || !buf[0])
        return -1;
    *v = strtod(buf, &end);
    return *end ? -1 : 0;
}

static int load_meta(const stk_ckpt_t *ck, stk_train_state_t *st, size_t *hist_fields)
{
    const char *path = stk_ckpt_path(ck);
    const void *data;
    size_t len;
    if (stk_ckpt_find(ck, "meta", &data, &len) != 0 || len >= 4096)
        return stk__error(STK_EFORMAT, "%s is not a train-state checkpoint (no 'meta' section)", path);
    char meta[4096], fmt[64];
    memcpy(meta, data, len);
    meta[len] = '\0';
    if (strlen(meta) != len)
        return stk__error(STK_EDATA, "%s: 'meta' section holds a NUL byte", path);
    if (meta_get(meta, "format", fmt, sizeof fmt) != 0)
        return stk__error(STK_EFORMAT, "%s is not a train-state checkpoint (no format line)", path);
    char want[64];
    snprintf(want, sizeof want, FORMAT_NAME " %d", STK_TRAIN_STATE_VERSION);
    if (strcmp(fmt, want) != 0)
        return stk__error(STK_EFORMAT, "%s has format '%s'; this build reads '%s'", path, fmt, want);
    char id[64];
    uint64_t hf;
    if (meta_get(meta, "run_id", id, sizeof id) != 0 || !valid_run_id(id))
        return stk__error(STK_EDATA, "%s: 'meta' has no valid run_id", path);
    snprintf(st->run_id, sizeof st->run_id, "%s", id);
    struct {
        const char *key;
        uint64_t *dst;
        int base;
    } u[] = {
        {"config_hash", &st->config_hash, 16}, {"seed", &st->seed, 10},
        {"epoch", &st->epoch, 10},             {"step", &st->step, 10},
        {"micro", &st->micro, 10},             {"loader_epoch", &st->loader.epoch, 10},
        {"loader_batch", &st->loader.batch, 10}, {"ep_correct", &st->ep_correct, 10},
        {"ep_seen", &st->ep_seen, 10},         {"total_images", &st->total_images, 10},
        {"history_fields", &hf, 10},
    };
    for (size_t i = 0; i < STK__ARRAY_LEN(u); i++)
        if (meta_u64(meta, u[i].key, u[i].base, u[i].dst) != 0)
            return stk__error(STK_EDATA, "%s: 'meta' lacks a valid '%s'", path, u[i].key);
    struct {
        const char *key;
        double *dst;
    } f[] = {
        {"ep_loss_sum", &st->ep_loss_sum},     {"ep_train_s", &st->ep_train_s},
        {"ep_wait_s", &st->ep_wait_s},         {"total_train_s", &st->total_train_s},
        {"total_wait_s", &st->total_wait_s},
    };
    for (size_t i = 0; i < STK__ARRAY_LEN(f); i++)
        if (meta_f64(meta, f[i].key, f[i].dst) != 0)
            return stk__error(STK_EDATA, "%s: 'meta' lacks a valid '%s'", path, f[i].key);
    if (hf < HIST_FIELDS || hf > 4096)
        return stk__error(STK_EDATA, "%s: history_fields %" PRIu64 " (this build needs %d)", path, hf, HIST_FIELDS);
    if (st->loader.epoch != st->epoch && !(st->loader.epoch == st->epoch + 1 && st->loader.batch == 0))
        return stk__error(STK_EDATA, "%s: loader position (epoch %" PRIu64 ", batch %" PRIu64
                          ") does not belong to epoch %" PRIu64, path, st->loader.epoch, st->loader.batch, st->epoch);
    *hist_fields = (size_t)hf;
    return 0;
}

int stk_train_checkpoint_load(const char *path, const stk_train_parts_t *parts, stk_train_state_t *st)
{
    if (!path || !st)
        return stk__error(-EINVAL, "stk_train_checkpoint_load: NULL argument");
    memset(st, 0, sizeof *st);
    stk_ckpt_t *ck = NULL;
    int rc = stk_ckpt_open(&ck, path);
    if (rc)
        return rc;
    size_t hf = 0;
    const void *data;
    size_t len;
    if ((rc = load_meta(ck, st, &hf)) != 0)
        goto fail;
    if (stk_ckpt_find(ck, "config", &data, &len) == 0) {
        if (!(st->config = strndup(data, len))) {
            rc = stk__error(-ENOMEM, "%s: out of memory", path);
            goto fail;
        }
    }
    if ((rc = stk_ckpt_find(ck, "history", &data, &len)) != 0)
        goto fail;
    if (len % (hf * sizeof(double)) != 0) {
        rc = stk__error(STK_EDATA, "%s: 'history' holds %zu bytes, not rows of %zu doubles", path, len, hf);
        goto fail;
    }
    size_t rows = len / (hf * sizeof(double));
    if (rows) {
        st->history = calloc(rows, sizeof *st->history);
        if (!st->history) {
            rc = stk__error(-ENOMEM, "%s: out of memory", path);
            goto fail;
        }
        for (size_t i = 0; i < rows; i++) {
            double v[HIST_FIELDS];
            memcpy(v, (const char *)data + i * hf * sizeof(double), sizeof v);
            hist_unpack(&st->history[i], v);
        }
        st->n_history = rows;
    }
    if (parts && parts->model) {
        if ((rc = stk_ckpt_find(ck, "model", &data, &len)) != 0 ||
            (rc = stk_model_state_load_mem(parts->model, data, len)) != 0) {
            rc = stk__error_prefix(rc, "%s: section 'model'", path);
            goto fail;
        }
    }
    if (parts && parts->optim) {
        if ((rc = stk_ckpt_find(ck, "optimizer", &data, &len)) != 0 ||
            (rc = stk_optim_state_load(parts->optim, data, len)) != 0) {
            rc = stk__error_prefix(rc, "%s: section 'optimizer'", path);
            goto fail;
        }
    }
    if (parts && parts->sched) {
        if ((rc = stk_ckpt_find(ck, "scheduler", &data, &len)) != 0 ||
            (rc = stk_sched_state_load(parts->sched, data, len)) != 0) {
            rc = stk__error_prefix(rc, "%s: section 'scheduler'", path);
            goto fail;
        }
    }
    stk_ckpt_close(&ck);
    return 0;
fail:
    stk_ckpt_close(&ck);
    stk_train_state_clear(st);
    return rc;
}

int stk_train_checkpoint_latest(const char *dir, const char *run_id, char *path, size_t cap)
{
    return stk_ckpt_dir_latest(dir, run_id, path, cap);
}

int stk_train_checkpoint_dir_check(const char *dir, const char *run_id)
{
    if (!dir || !run_id)
        return stk__error(-EINVAL, "stk_train_checkpoint_dir_check: NULL argument");
    char runs[4][STK_CKPT_RUN_MAX + 1];
    size_t count = 0;
    int rc = stk_ckpt_dir_runs(dir, runs, 4, &count);
    if (rc)
        return rc;
    for (size_t i = 0; i < count && i < 4; i++) {
        if (strcmp(runs[i], run_id) == 0)
            continue;
        char path[4096];
        if (!runs[i][0]) {
            stk_ckpt_dir_latest(dir, "", path, sizeof path);
            return stk__error(STK_ESTATE, "%s holds checkpoints of another run (untagged, from an older version: "
                              "e.g. %s)", dir, path);
        }
        if (stk_ckpt_dir_latest(dir, runs[i], path, sizeof path) != 0)
            return stk__error(STK_ESTATE, "%s holds checkpoints of run %s", dir, runs[i]);
        stk_train_state_t other;
        if (stk_train_checkpoint_load(path, NULL, &other) == 0) {
            uint64_t ep = other.epoch, step = other.step;
            stk_train_state_clear(&other);
            return stk__error(STK_ESTATE, "%s holds checkpoints of run %s (newest %s: %" PRIu64
                              " epochs done, step %" PRIu64 ")", dir, runs[i], path, ep, step);
        }
        return stk__error(STK_ESTATE, "%s holds checkpoints of run %s (newest %s)", dir, runs[i], path);
    }
    return 0;
}
