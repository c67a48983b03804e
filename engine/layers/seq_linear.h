/* SPDX-License-Identifier: MIT */
/* linear's half for sequence inputs (seq_linear.c), called by the linear
 * class (linear.c) when its input is a sequence. */
#ifndef STOKER_ENGINE_SEQ_LINEAR_H
#define STOKER_ENGINE_SEQ_LINEAR_H

#include "../layer.h"

int stk__seq_linear_plan(stk_model_t *m, int i, int64_t n, void **plan);
void stk__seq_linear_unplan(stk_model_t *m, int i, void *plan);
int stk__seq_linear_forward(stk_model_t *m, int i);
int stk__seq_linear_backward(stk_model_t *m, int i);

#endif
