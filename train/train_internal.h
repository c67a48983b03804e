/* SPDX-License-Identifier: MIT */
/* Internals of train/ shared between its files: the train-state format's
 * text and rows (state_format.c), used by the checkpoint I/O (state.c)
 * and by the checkpoint fuzz target; the batch feeder of the loop and of
 * evaluation (feed.c). Not installed. */
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

/* Batches into a model on a device: the engine's double-buffered feed
 * (engine.h, "feeding a device"), made at the first batch for its size.
 * On a CPU model it copies nothing. */
typedef struct stk_train_feeder {
    stk_feed_t *feed;
    size_t cap;
} stk_train_feeder_t;

/* Puts input's bytes into the feed and points input at the device copy,
 * which the model's next work waits for; *dev gets it (for _fed). */
int stk__train_feed(stk_train_feeder_t *f, stk_model_t *model, stk_tensor_t *input, const void **dev);
/* After the step that read dev (NULL: nothing was fed): marks it done, so
 * that the batch may be released. Returns rc, or the feed's error when rc
 * is 0. */
int stk__train_fed(stk_train_feeder_t *f, const void *dev, int rc);
void stk__train_feeder_clear(stk_train_feeder_t *f);

#endif
