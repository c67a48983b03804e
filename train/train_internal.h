/* SPDX-License-Identifier: MIT */
/* Internals of train/ shared between its files: the train-state format's
 * text and rows (state_format.c), used by the checkpoint I/O (state.c)
 * and by the checkpoint fuzz target; the batches of the loop and of
 * evaluation, fed one ahead (feed.c). Not installed. */
#ifndef STOKER_TRAIN_INTERNAL_H
#define STOKER_TRAIN_INTERNAL_H

#include "stoker/train.h"

/* f64 values per history row in this version. */
#define STK__TRAIN_HIST_FIELDS 11

/* 1 when id is 1..STK_TRAIN_RUN_ID_LEN characters of [0-9A-Za-z_]. */
int stk__train_valid_run_id(const char *id);
/* One history row as STK__TRAIN_HIST_FIELDS doubles. */
void stk__train_hist_pack(const stk_train_epoch_t *e, double *v);
/* The "meta" section's text. 0 or -ENOSPC. */
int stk__train_meta_format(const stk_train_state_t *st, char *meta, size_t cap);
/* Reads meta, config and history of an open checkpoint into *st (zeroed
 * first; history and config allocated; cleared on failure). Returns 0,
 * STK_EFORMAT, STK_EDATA, -ENOMEM; the message names the file and section. */
int stk__train_state_read(const stk_ckpt_t *ck, stk_train_state_t *st);

/* The batches of a loop or an evaluation on their way into a model
 * (feed.c): fetched from the loader, converted (stk_train_inputs_get) and
 * put into the engine's double-buffered feed (engine.h, "feeding a
 * device"), made at the first batch for its size. On a device, and with
 * a loader of 2 slots or more, one batch ahead: handing out batch k puts
 * batch k + 1 into the feed before step k runs, so that its copy overlaps
 * the step. On a CPU model the feed copies nothing and nothing is fetched
 * ahead. */
typedef struct stk__train_item {
    stk_batch_t b;
    /* input points at the device copy (the host data on a CPU model) */
    stk_tensor_t input, target;
    const void *dev; /* the feed's buffer; NULL while not fed */
} stk__train_item_t;

typedef struct stk__train_batches {
    stk_model_t *model;
    stk_loader_t *loader;
    stk_train_inputs_t *inputs;
    stk_feed_t *feed;
    size_t cap;
    int ahead; /* 1: fetch one ahead; -1 until the first batch is fed */
    int now_held;
    stk__train_item_t now, next;
    /* next holds a batch (1), or what fetching it returned (2: STK_DONE
     * or an error, with its message), due at the next call */
    int ahead_state, ahead_rc;
    char *ahead_msg;
} stk__train_batches_t;

void stk__train_batches_init(stk__train_batches_t *B, stk_model_t *model, stk_loader_t *loader,
                             stk_train_inputs_t *inputs);
/* The next batch, fed and used (the model's next work waits for its
 * copy): 0 with *out valid until _done, STK_DONE at the epoch's end, or
 * the loader's or the conversion's error (met ahead, such a status comes
 * at the call after: the batch before it is stepped first, as without
 * the lookahead). The time spent in stk_loader_next is added to *wait_s
 * (may be NULL). Nothing is held after a non-zero return but a batch
 * ahead (for _drop). */
int stk__train_batches_next(stk__train_batches_t *B, stk__train_item_t **out, double *wait_s);
/* After the work that reads the batch _next gave: marks its feed buffer
 * done and releases it. Returns rc, or the feed's error when rc is 0. */
int stk__train_batches_done(stk__train_batches_t *B, int rc);
/* _done, and drops the batch fetched ahead (released unstepped) and any
 * status due: for a stop, an error or the end of an epoch. Returns rc, or
 * the feed's error when rc is 0. */
int stk__train_batches_drop(stk__train_batches_t *B, int rc);
/* _drop, then destroys the feed. */
void stk__train_batches_fini(stk__train_batches_t *B);

#endif
