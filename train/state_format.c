/* SPDX-License-Identifier: MIT */
/* The train-state format's own parts, apart from the model, optimizer and
 * scheduler blobs: the state struct's life, the "meta" text (written and
 * parsed strictly), the "history" rows, and reading all of them from an
 * open checkpoint. Depends on nothing but the checkpoint container, so the
 * fuzz target can take it alone. docs/train-state-format.md. */
#define _GNU_SOURCE
#include "internal.h"
#include "train_internal.h"

#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define FORMAT_NAME "stoker-train-state"

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

int stk__train_valid_run_id(const char *id)
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

void stk__train_hist_pack(const stk_train_epoch_t *e, double *v)
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

int stk__train_meta_format(const stk_train_state_t *st, char *meta, size_t cap)
{
    /* Floats in %a: exact in text. */
    int w = snprintf(meta, cap,
             "format = " FORMAT_NAME " %d\nrun_id = %s\nconfig_hash = %016" PRIx64 "\nseed = %" PRIu64
             "\nepoch = %" PRIu64 "\nstep = %" PRIu64 "\nmicro = %" PRIu64 "\nloader_epoch = %" PRIu64
             "\nloader_batch = %" PRIu64 "\nep_loss_sum = %a\nep_correct = %" PRIu64 "\nep_seen = %" PRIu64
             "\nep_train_s = %a\nep_wait_s = %a\ntotal_train_s = %a\ntotal_wait_s = %a\ntotal_images = %" PRIu64
             "\nhistory_fields = %d\nworld_size = %u\n",
             STK_TRAIN_STATE_VERSION, st->run_id, st->config_hash, st->seed, st->epoch, st->step, st->micro,
             st->loader.epoch, st->loader.batch, st->ep_loss_sum, st->ep_correct, st->ep_seen, st->ep_train_s,
             st->ep_wait_s, st->total_train_s, st->total_wait_s, st->total_images, STK__TRAIN_HIST_FIELDS,
             st->world_size > 1 ? st->world_size : 1u);
    if (w < 0 || (size_t)w >= cap)
        return stk__error(-ENOSPC, "train checkpoint: meta text over %zu bytes", cap);
    /* Only a run with loss scaling has these keys (optional on reading). */
    if (st->loss_scale.scale > 0) {
        int x = snprintf(meta + w, cap - (size_t)w, "loss_scale = %a\nloss_scale_clean = %" PRIu32
                         "\nloss_scale_skipped = %" PRIu64 "\n", (double)st->loss_scale.scale, st->loss_scale.clean,
                         st->loss_scale.skipped);
        if (x < 0 || (size_t)x >= cap - (size_t)w)
            return stk__error(-ENOSPC, "train checkpoint: meta text over %zu bytes", cap);
    }
    return 0;
}

/* ---- Reading ------------------------------------------------------------ */

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
    if (meta_get(meta, "run_id", id, sizeof id) != 0 || !stk__train_valid_run_id(id))
        return stk__error(STK_EDATA, "%s: 'meta' has no valid run_id", path);
    /* id is valid, so no longer than a run id: the precision says so to the
     * compiler (-Wformat-truncation at -O2). */
    snprintf(st->run_id, sizeof st->run_id, "%.*s", (int)sizeof st->run_id - 1, id);
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
    /* Optional: a checkpoint of one process may predate the key. */
    uint64_t world = 1;
    char wbuf[32];
    if (meta_get(meta, "world_size", wbuf, sizeof wbuf) == 0 &&
        (meta_u64(meta, "world_size", 10, &world) != 0 || world < 1 || world > UINT32_MAX))
        return stk__error(STK_EDATA, "%s: 'meta' has a bad world_size", path);
    st->world_size = (uint32_t)world;
    /* Optional: only runs with loss scaling write it, and older
     * checkpoints have none. All three keys or none. */
    char lbuf[64];
    if (meta_get(meta, "loss_scale", lbuf, sizeof lbuf) == 0) {
        double scale = 0;
        uint64_t clean = 0, skipped = 0;
        if (meta_f64(meta, "loss_scale", &scale) != 0 || !(scale > 0) || !(scale <= FLT_MAX) ||
            (float)scale != scale)
            return stk__error(STK_EDATA, "%s: 'meta' has a bad loss_scale '%s'", path, lbuf);
        if (meta_u64(meta, "loss_scale_clean", 10, &clean) != 0 || clean > UINT32_MAX)
            return stk__error(STK_EDATA, "%s: 'meta' lacks a valid 'loss_scale_clean'", path);
        if (meta_u64(meta, "loss_scale_skipped", 10, &skipped) != 0)
            return stk__error(STK_EDATA, "%s: 'meta' lacks a valid 'loss_scale_skipped'", path);
        st->loss_scale = (stk_loss_scaler_state_t){(float)scale, (uint32_t)clean, skipped};
    }
    if (hf < STK__TRAIN_HIST_FIELDS || hf > 4096)
        return stk__error(STK_EDATA, "%s: history_fields %" PRIu64 " (this build needs %d)", path, hf,
                          STK__TRAIN_HIST_FIELDS);
    if (st->loader.epoch != st->epoch && !(st->loader.epoch == st->epoch + 1 && st->loader.batch == 0))
        return stk__error(STK_EDATA, "%s: loader position (epoch %" PRIu64 ", batch %" PRIu64
                          ") does not belong to epoch %" PRIu64, path, st->loader.epoch, st->loader.batch, st->epoch);
    *hist_fields = (size_t)hf;
    return 0;
}

int stk__train_state_read(const stk_ckpt_t *ck, stk_train_state_t *st)
{
    const char *path = stk_ckpt_path(ck);
    memset(st, 0, sizeof *st);
    size_t hf = 0;
    const void *data;
    size_t len;
    int rc = load_meta(ck, st, &hf);
    if (rc)
        goto fail;
    if (stk_ckpt_find(ck, "config", &data, &len) == 0 && !(st->config = strndup(data, len))) {
        rc = stk__error(-ENOMEM, "%s: out of memory", path);
        goto fail;
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
            double v[STK__TRAIN_HIST_FIELDS];
            memcpy(v, (const char *)data + i * hf * sizeof(double), sizeof v);
            hist_unpack(&st->history[i], v);
        }
        st->n_history = rows;
    }
    return 0;
fail:
    stk_train_state_clear(st);
    return rc;
}
