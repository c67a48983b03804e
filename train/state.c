/* SPDX-License-Identifier: MIT */
/* Train-state checkpoints: the model, optimizer and scheduler states with
 * the run's position, counters, identity and history (state_format.c), as
 * the sections of one atomic checkpoint file tagged with the run id, so
 * that runs sharing a folder never prune or resume each other's files.
 * The layout is documented in docs/train-state-format.md. */
#define _GNU_SOURCE
#include "internal.h"
#include "train_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const reserved[] = {"meta", "config", "model", "optimizer", "scheduler", "history"};

int stk_train_checkpoint_save(const char *dir, const stk_train_parts_t *parts, const stk_train_state_t *st,
                              const stk_ckpt_section_t *extra, size_t n_extra, unsigned keep_last, char *path_out,
                              size_t cap)
{
    if (!dir || !parts || !parts->model || !st || (!extra && n_extra))
        return stk__error(-EINVAL, "stk_train_checkpoint_save: NULL argument");
    if (!stk__train_valid_run_id(st->run_id))
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
    double *hbuf = malloc((st->n_history ? st->n_history : 1) * STK__TRAIN_HIST_FIELDS * sizeof *hbuf);
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
        stk__train_hist_pack(&st->history[i], hbuf + i * STK__TRAIN_HIST_FIELDS);
    if ((rc = stk__train_meta_format(st, meta, sizeof meta)) != 0)
        goto out;
    secs[nsec++] = (stk_ckpt_section_t){"meta", meta, strlen(meta)};
    if (st->config)
        secs[nsec++] = (stk_ckpt_section_t){"config", st->config, strlen(st->config)};
    secs[nsec++] = (stk_ckpt_section_t){"model", mbuf, msz};
    if (parts->optim)
        secs[nsec++] = (stk_ckpt_section_t){"optimizer", obuf, osz};
    if (parts->sched)
        secs[nsec++] = (stk_ckpt_section_t){"scheduler", sbuf, ssz};
    secs[nsec++] = (stk_ckpt_section_t){"history", hbuf, st->n_history * STK__TRAIN_HIST_FIELDS * sizeof *hbuf};
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

int stk_train_checkpoint_load(const char *path, const stk_train_parts_t *parts, stk_train_state_t *st)
{
    if (!path || !st)
        return stk__error(-EINVAL, "stk_train_checkpoint_load: NULL argument");
    memset(st, 0, sizeof *st);
    stk_ckpt_t *ck = NULL;
    int rc = stk_ckpt_create(&ck, path);
    if (rc)
        return rc;
    if ((rc = stk__train_state_read(ck, st)) != 0) {
        stk_ckpt_destroy(&ck);
        return rc;
    }
    const void *data;
    size_t len;
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
    /* The model's dropout masks are keyed by its step: a resumed model
     * that started again at 0 would repeat the masks of the run's start. */
    if (parts && parts->model)
        stk_model_set_step(parts->model, st->micro);
    stk_ckpt_destroy(&ck);
    return 0;
fail:
    stk_ckpt_destroy(&ck);
    stk_train_state_clear(st);
    return rc;
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
