/* SPDX-License-Identifier: MIT */
/* The optimizer's insides, shared by optim.c (groups, steps over host
 * arrays, state blob), optim_config.c (configs and their text form) and
 * optim_model.c (an optimizer made for a model: groups by parameter name,
 * state on the model's backend). */
#ifndef STOKER_ENGINE_OPTIM_INTERNAL_H
#define STOKER_ENGINE_OPTIM_INTERNAL_H

#include "model.h"
#include "optim_kernels.h"
#include "stoker/optim.h"

#define OPTIM_NBUF 3

typedef struct optim_group {
    stk_optim_range_t *ranges;
    size_t n_ranges;
    stk_optim_hparams_t h;
    double base_lr;
    int64_t step;
    int buf_valid;           /* SGD: momentum buffer holds a value (PyTorch: not None) */
    stk__optim_scalars_t k;  /* this step's scalars, set by step_begin */
    stk__op_t *op;           /* the backend's plan of the group (model-bound, n_ranges > 0) */
} optim_group_t;

struct stk_optim {
    stk_optim_kind_t kind;
    size_t n;
    optim_group_t *groups;
    size_t ng;
    /* State arrays over the whole flat array, allocated on first use:
     *   SGD:     [0] momentum_buffer
     *   Adam(W): [0] exp_avg, [1] exp_avg_sq, [2] max_exp_avg_sq
     *   RMSprop: [0] square_avg, [1] momentum_buffer, [2] grad_avg
     * With a model, in its backend's memory (be != NULL). */
    float *buf[OPTIM_NBUF];
    int in_step; /* between stk_optim_step_begin and stk_optim_step_end */
    stk_model_t *model;       /* the model it was made for, or NULL */
    const stk__backend_t *be; /* &model->be, or NULL: host arrays */
};

/* Parses "key=value,..." (a writable string) into *h for kind, then checks
 * *h. no_decay: where the model-only key 'no_decay' goes (NULL: the key is
 * an error). */
int stk__optim_apply_items(stk_optim_kind_t kind, stk_optim_hparams_t *h, char *items, int *no_decay);
/* The kind named by name, or 0. */
stk_optim_kind_t stk__optim_kind_from_name(const char *name);
/* 1 when kind is one of stk_optim_kind_t's values. */
int stk__optim_kind_valid(stk_optim_kind_t kind);
/* 0 when *h is valid for kind, else STK_ECONFIG naming the key; where
 * prefixes the message (e.g. "group 1: "). */
int stk__optim_check_hparams(stk_optim_kind_t kind, const stk_optim_hparams_t *h, const char *where);

/* State memory is host memory (no staging needed): not model-bound, or a
 * backend with host_memory. */
static inline int stk__optim_host_state(const stk_optim_t *o)
{
    return !o->be || o->be->iface->host_memory;
}

#endif
