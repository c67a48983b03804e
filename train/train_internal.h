/* SPDX-License-Identifier: MIT */
/* Internals of train/ shared between its files: the train-state format's
 * text and rows (state_format.c), used by the checkpoint I/O (state.c)
 * and by the checkpoint fuzz target. Not installed. */
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

#endif
