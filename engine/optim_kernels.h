/* SPDX-License-Identifier: MIT */
/* The optimizer updates as plain C kernels over float arrays, and the
 * float32 scalars one step of one parameter group uses. optim.c runs them
 * on host arrays; the CPU backend's optim_update slot runs them on the
 * model's arenas; a device backend computes the same scalars with
 * stk__optim_scalars so that its kernels round as these do. Internal. */
#ifndef STOKER_ENGINE_OPTIM_KERNELS_H
#define STOKER_ENGINE_OPTIM_KERNELS_H

#include "stoker/optim.h"

#include <stddef.h>
#include <stdint.h>

/* One step of one group, every hyper-parameter already rounded to float
 * the way PyTorch 1.13's CPU kernels round it (see optim.h). Which fields
 * a kind reads:
 *   SGD:     sign, wd, mom, damp1, neglr; use_wd, use_mom, nesterov, first
 *   Adam(W): sign, wd, b1, omb1, b2, omb2, neg_step, bc2s, eps, decay;
 *            use_wd, decoupled, amsgrad
 *   RMSprop: sign, wd, alpha, oma, eps, mom, neglr; use_wd, centered,
 *            use_mom */
typedef struct stk__optim_scalars {
    stk_optim_kind_t kind;
    float sign;          /* -1 with maximize, else 1 (exact) */
    float wd;            /* weight_decay (coupled: added to the gradient) */
    float mom, damp1;    /* momentum, 1 - dampening */
    float neglr;         /* -lr */
    float b1, omb1, b2, omb2;
    float neg_step;      /* -(lr / (1 - beta1^t)) */
    float bc2s;          /* sqrt(1 - beta2^t) */
    float eps;
    float decay;         /* AdamW: 1 - lr * weight_decay */
    float alpha, oma;    /* RMSprop: alpha, 1 - alpha */
    int use_wd;          /* weight_decay != 0 (AdamW: 0, it decays p) */
    int use_mom;         /* SGD: momentum != 0; RMSprop: momentum > 0 */
    int nesterov;
    int first;           /* SGD: the momentum buffer holds no value yet */
    int decoupled;       /* AdamW */
    int amsgrad;
    int centered;
} stk__optim_scalars_t;

/* The scalars of step number `step` (1 for the first) of a group with
 * hyper-parameters h. first: SGD's buffer is empty (PyTorch: None). */
void stk__optim_scalars(stk_optim_kind_t kind, const stk_optim_hparams_t *h, int64_t step, int first,
                        stk__optim_scalars_t *out);

/* The update of n elements: p (parameters) and the state arrays s0..s2
 * in place, g (gradients) read. The state arrays a kind uses:
 *   SGD:     s0 momentum_buffer (NULL without momentum)
 *   Adam(W): s0 exp_avg, s1 exp_avg_sq, s2 max_exp_avg_sq (amsgrad)
 *   RMSprop: s0 square_avg, s1 momentum_buffer (momentum > 0), s2
 *            grad_avg (centered)
 * Single-threaded; elementwise, so any split of the arrays gives the same
 * bits. The pointers must not overlap. */
void stk__optim_kernel(const stk__optim_scalars_t *k, float *p, const float *g, float *s0, float *s1, float *s2,
                       size_t n);

#endif
