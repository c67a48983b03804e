/* SPDX-License-Identifier: MIT */
/* cross_entropy's half for sequence logits (seq_loss.c), called by the
 * cross_entropy class (loss.c) when its input is a sequence. */
#ifndef STOKER_ENGINE_SEQ_LOSS_H
#define STOKER_ENGINE_SEQ_LOSS_H

#include "../layer.h"

int stk__seq_xent_infer(stk_model_t *m, int i, const char *where);
size_t stk__seq_xent_extra(const stk_model_t *m, int i, int64_t n);
int stk__seq_xent_plan(stk_model_t *m, int i, int64_t n, void **plan);
void stk__seq_xent_unplan(stk_model_t *m, int i, void *plan);
int stk__seq_xent_forward(stk_model_t *m, int i);
int stk__seq_xent_backward(stk_model_t *m, int i);

#endif
