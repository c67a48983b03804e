/* SPDX-License-Identifier: MIT */
/* train/seq.c's half of the inputs converter and of the data check
 * (batch.c calls them for sequence models). Not installed. */
#ifndef STOKER_TRAIN_SEQ_H
#define STOKER_TRAIN_SEQ_H

#include "internal.h"
#include "stoker/train.h"

/* A language model's batch: the inputs, targets and lengths it builds. */
typedef struct stk__train_seq {
    int64_t *tok, *tg, *len;
    size_t cap, len_cap;
} stk__train_seq_t;

void stk__train_seq_free(stk__train_seq_t *s);
/* The token field f (padded, with lengths) as next_token inputs: input
 * [n, t + 1] = boundary then the tokens, target the tokens then
 * boundary, lengths + 1. */
int stk__train_next_token(stk__train_seq_t *s, const stk_batch_field_t *f, int64_t boundary, stk_tensor_t *input,
                          stk_tensor_t *target);
/* The data check for a model whose input is a sequence: 0 (checked),
 * 1 (features: the image path's element-count check applies), or an
 * error. */
int stk__train_check_sequence(const stk_schema_t *schema, int field, const stk_train_inputs_config_t *cfg,
                              const char *desc, const stk_model_t *model);

#endif
