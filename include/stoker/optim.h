/* SPDX-License-Identifier: MIT */
/* Optimizers (SGD, Adam, AdamW, RMSprop) and learning-rate schedulers.
 * Most code makes one for a model from a text spec
 * (stk_optim_create_for_model, groups by parameter name) and steps it with
 * stk_optim_step_model; underneath, an optimizer works over flat float
 * arrays: one parameter array, one gradient array of the same length,
 * split into parameter groups by [offset, count) ranges, which is also
 * usable alone (stk_optim_create / stk_optim_step). Updates follow PyTorch
 * 1.13's torch.optim definitions; state (moment buffers, step counts,
 * scheduler position) saves to a versioned byte blob. */
#ifndef STOKER_OPTIM_H
#define STOKER_OPTIM_H

#include "stoker/common.h"
#include "stoker/engine.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------
 * Optimizers
 *
 * The update of each kind is PyTorch 1.13's single-tensor path, element by
 * element, in float32 with the scalar hyper-parameters rounded to float the
 * way PyTorch's CPU kernels do:
 *   SGD:     g = grad (negated if maximize) + weight_decay * p;
 *            momentum != 0: buf = g at the first step (no dampening then),
 *            afterwards buf = momentum * buf + (1 - dampening) * g;
 *            g = nesterov ? g + momentum * buf : buf;   p -= lr * g
 *   Adam:    g = grad (+ weight_decay * p); m = b1 m + (1-b1) g;
 *            v = b2 v + (1-b2) g^2; amsgrad: vmax = max(vmax, v), use vmax;
 *            p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 *   AdamW:   as Adam, but weight decay is decoupled: p *= 1 - lr * wd first,
 *            and the gradient is not decayed.
 *   RMSprop: g = grad (+ wd * p); s = alpha s + (1-alpha) g^2;
 *            centered: a = alpha a + (1-alpha) g, d = sqrt(s - a^2) + eps,
 *            else d = sqrt(s) + eps; momentum > 0: buf = momentum buf + g/d,
 *            p -= lr * buf; else p -= lr * g / d.
 * Step counts are per group (PyTorch keeps one per tensor; all tensors of a
 * group step together, so it is the same number). Terms with a zero
 * weight_decay are skipped, as in PyTorch; NaN and Inf propagate.
 * Agreement with PyTorch: same operations in the same order, but its
 * AVX2 kernels fuse some multiply-adds where we round twice, so values
 * differ by an ulp or two per step (tests allow 1e-6 relative to
 * max(|p|, 1) over 20 steps; the largest seen is 1.6e-7).
 *
 * Gradient accumulation: the optimizer knows nothing of micro-batches. The
 * caller sums (or averages: PyTorch users divide the loss by accum_steps)
 * the gradients of accum_steps micro-batches into the gradient array, then
 * calls stk_optim_step once. A scheduler counts optimizer steps, not
 * micro-batches: step it once per stk_optim_step, and when giving schedule
 * lengths in epochs use steps_per_epoch = ceil(batches / accum_steps).
 * ---------------------------------------------------------------------- */

typedef struct stk_optim stk_optim_t;

typedef enum stk_optim_kind {
    STK_OPTIM_SGD = 1,
    STK_OPTIM_ADAM = 2,
    STK_OPTIM_ADAMW = 3,
    STK_OPTIM_RMSPROP = 4
} stk_optim_kind_t;

/* Hyper-parameters of one group. A kind reads only its own fields:
 *   SGD:     lr, momentum, dampening, weight_decay, nesterov, maximize
 *   Adam(W): lr, beta1, beta2, eps, weight_decay, amsgrad, maximize
 *   RMSprop: lr, alpha, eps, momentum, weight_decay, centered, maximize
 * Validity as PyTorch: lr, eps, momentum, weight_decay, alpha >= 0;
 * 0 <= beta1, beta2 < 1; nesterov needs momentum > 0 and dampening == 0. */
typedef struct stk_optim_hparams {
    double lr;
    double weight_decay;
    double momentum;  /* SGD, RMSprop */
    double dampening; /* SGD */
    double beta1;     /* Adam, AdamW */
    double beta2;     /* Adam, AdamW */
    double eps;       /* Adam, AdamW, RMSprop */
    double alpha;     /* RMSprop smoothing constant */
    int nesterov;     /* SGD */
    int amsgrad;      /* Adam, AdamW */
    int centered;     /* RMSprop */
    int maximize;     /* all */
} stk_optim_hparams_t;

/* A run of the flat arrays: elements [offset, offset + count). */
typedef struct stk_optim_range {
    size_t offset;
    size_t count;
} stk_optim_range_t;

/* One parameter group: its ranges (borrowed, read at create only) and its
 * hyper-parameters. Typical use: copy the config's defaults, then override
 * (e.g. weight_decay = 0 for biases and normalisation parameters). */
typedef struct stk_optim_group {
    const stk_optim_range_t *ranges;
    size_t n_ranges;
    stk_optim_hparams_t h;
} stk_optim_group_t;

typedef struct stk_optim_config {
    stk_optim_kind_t kind;
    size_t n_params;          /* length of the parameter and gradient arrays */
    stk_optim_hparams_t defaults;
    /* Groups (borrowed, read at create only). NULL / 0: one group covering
     * [0, n_params) with `defaults`. Ranges must lie inside the arrays and
     * must not overlap (within or across groups). Elements in no group are
     * frozen: never read, never written. */
    const stk_optim_group_t *groups;
    size_t n_groups;
} stk_optim_config_t;

/* Fills *h with PyTorch's defaults for `kind`: lr 1e-3 (Adam, AdamW), 1e-2
 * (RMSprop), 0.01 for SGD (PyTorch has no default there: set it); betas
 * (0.9, 0.999), eps 1e-8, weight_decay 0 (AdamW 1e-2), alpha 0.99, the rest
 * 0. NULL-safe. */
STK_API void stk_optim_hparams_default(stk_optim_hparams_t *h, stk_optim_kind_t kind);
/* Fills *cfg: one group of n_params elements with the defaults of kind
 * (stk_optim_config_parse may then replace kind and defaults from text).
 * Unlike the other *_config_default calls it takes the kind and the
 * length, as stk_sched_phase_default and stk_layer_desc_default take a
 * kind: the defaults differ by kind (lr, AdamW's weight decay), so a
 * config filled for one kind and then switched to another would carry the
 * wrong ones. NULL-safe. */
STK_API void stk_optim_config_default(stk_optim_config_t *cfg, stk_optim_kind_t kind, size_t n_params);

/* Text form, for config files:
 *     "<kind>[:key=value[,key=value...]]"
 * kind: sgd | adam | adamw | rmsprop. Keys (PyTorch's names): lr,
 * weight_decay, momentum, dampening, nesterov, betas (two values separated
 * by ';', e.g. betas=0.9;0.98), beta1, beta2, eps, alpha, amsgrad,
 * centered, maximize; flags take 0/1/true/false. Example:
 *     "sgd:lr=0.1,momentum=0.9,nesterov=1,weight_decay=5e-4"
 * Sets cfg->kind and cfg->defaults (starting from the kind's defaults); does
 * not touch n_params or groups. On error cfg is unchanged.
 * Returns 0, STK_ECONFIG (message names the bad kind, key or value), or
 * -EINVAL for NULL arguments. Thread-safe. */
STK_API int stk_optim_config_parse(const char *text, stk_optim_config_t *cfg);

/* Applies "key=value[,key=value...]" overrides (same keys as above) to *h,
 * checked against `kind` (a key the kind does not read is an error), e.g.
 * "weight_decay=0" for a no-decay group. On error *h is unchanged.
 * Returns 0, STK_ECONFIG naming the key, or -EINVAL. Thread-safe. */
STK_API int stk_optim_hparams_parse(const char *text, stk_optim_kind_t kind, stk_optim_hparams_t *h);

/* Name of a kind ("sgd", "adam", "adamw", "rmsprop"; "invalid"). */
STK_API const char *stk_optim_kind_name(stk_optim_kind_t kind);

/* ------------------------------------------------------------------------
 * An optimizer for a model
 *
 * spec: the text form above for the defaults (group 0), then optional
 * parameter groups by name, each "|patterns:key=value[,key=value...]":
 *     "sgd:lr=0.1,momentum=0.9,weight_decay=5e-4|fc*:lr=0.01"
 *     "adamw:lr=1e-3,weight_decay=0.05,no_decay=bias_norm"
 * patterns are globs (fnmatch) over parameter names such as "conv1.weight"
 * or "bn1.bias" (stk_model_param_info), several separated by ';'
 * ("*.bias;bn*"); a group's keys override the defaults. Each parameter
 * goes to the first group whose patterns match its name; a pattern that
 * matches no parameter is an error (a typo would otherwise change nothing).
 * The key no_decay (defaults only) = none (default) | bias | norm |
 * bias_norm puts the parameters no pattern took that are biases
 * (STK_PARAM_BIAS) and/or normalization parameters (STK_PARAM_BN_WEIGHT,
 * STK_PARAM_BN_BIAS) into one more group, the last, with weight_decay = 0:
 * the usual way to keep weight decay off them. So the groups are: 0 (the
 * rest), 1..N (the patterns, in order), then the no-decay group if asked
 * (present even when empty).
 *
 * The optimizer's state lives where the model's arenas do (the device
 * memory of its backend); state save/load copy through the host. The model
 * is borrowed: it must outlive the optimizer. Returns 0, STK_ECONFIG (bad
 * kind, key, value or pattern, named in the message), -EINVAL (NULL),
 * -ENOMEM, or a backend error.
 * ---------------------------------------------------------------------- */
STK_API int stk_optim_create_for_model(stk_optim_t **out, stk_model_t *model, const char *spec);

/* One update of every group of an optimizer made for model, over the
 * model's parameter and gradient arenas, on the model's backend (one fused
 * pass per group) and with the model's thread count. Does not zero the
 * gradients (stk_model_zero_grad). Returns 0, -EINVAL (NULL, or another
 * model than the one it was made for), STK_ESTATE (made by
 * stk_optim_create: use stk_optim_step; or a step is open), -ENOMEM (the
 * first step could not allocate its state; nothing changed), or a backend
 * error. Not thread-safe on one optimizer or model. */
STK_API int stk_optim_step_model(stk_optim_t *opt, stk_model_t *model);

/* One whole training step: forward with target (as
 * stk_model_forward_tensor), backward, the update of opt (made for m by
 * stk_optim_create_for_model) and zero_grad; *loss as forward gives it.
 * With CUDA graphs on (stk_model_set_cuda_graph) on a backend that has
 * them, the second step of a given batch size, input buffer and optimizer
 * is captured as one graph and later ones replay it: one launch and one
 * read-back a step; a step the graph cannot take (another batch size,
 * sequences, soft targets, gradients not zeroed) runs as usual, and the
 * results are those of the four calls either way. The loss is known only
 * after the update. Returns 0 or the error of the step (a failed capture
 * turns graphs off and names it). */
STK_API int stk_model_train_step(stk_model_t *m, stk_optim_t *opt, const stk_tensor_t *input,
                                 const stk_tensor_t *target, float *loss);

/* Creates an optimizer. Copies what it needs from cfg (ranges included).
 * State buffers are allocated on first use. Returns 0, STK_ECONFIG (bad
 * hyper-parameter or range, named in the message), -EINVAL, -ENOMEM. */
STK_API int stk_optim_create(stk_optim_t **out, const stk_optim_config_t *cfg);
/* Frees *opt and sets it to NULL; NULL-safe. */
STK_API void stk_optim_destroy(stk_optim_t **opt);

/* One update of every group: reads grads[i], updates params[i] and the state
 * for every i in a group. Both arrays have cfg.n_params elements and are
 * borrowed for the call only (host memory). params and grads must not
 * overlap. Does not zero grads (the caller's job, before the next
 * accumulation). Large arrays are split over the OpenMP threads (the same
 * bits as one thread). Returns 0, -EINVAL, STK_ESTATE (an optimizer made
 * for a model on a device: use stk_optim_step_model), or -ENOMEM when the
 * first step cannot allocate its state (then nothing changed). Not
 * thread-safe on one optimizer. */
STK_API int stk_optim_step(stk_optim_t *opt, float *params, const float *grads);

/* The same step in pieces, for threads or for overlapping the update with
 * a bucketed all-reduce: stk_optim_step_begin (allocates state, advances
 * the step counts), then stk_optim_step_slice over slices that together
 * cover every element of every group exactly once, in any order, then
 * stk_optim_step_end. The result is bit-identical to stk_optim_step.
 * Slices need the state in host memory (slice answers STK_ESTATE for an
 * optimizer made for a model on a device).
 * Slices with disjoint [offset, offset + count) may run concurrently on
 * different threads; params and grads are the whole arrays (as for
 * stk_optim_step) and only the slice's elements in a group are touched.
 * Between begin and end, call nothing else on the optimizer (no set_lr;
 * state save/load answer STK_ESTATE). Returns: begin 0, STK_ESTATE (a
 * step is open), -EINVAL, -ENOMEM (nothing changed); slice 0, STK_ESTATE
 * (no open step), -ERANGE (slice outside the arrays), -EINVAL; end 0,
 * STK_ESTATE, -EINVAL. */
STK_API int stk_optim_step_begin(stk_optim_t *opt);
STK_API int stk_optim_step_slice(const stk_optim_t *opt, float *params, const float *grads, size_t offset,
                                 size_t count);
STK_API int stk_optim_step_end(stk_optim_t *opt);

STK_API size_t stk_optim_num_groups(const stk_optim_t *opt);
STK_API stk_optim_kind_t stk_optim_kind(const stk_optim_t *opt);
/* Optimizer steps taken by group g (0 before the first step). */
STK_API int64_t stk_optim_group_steps(const stk_optim_t *opt, size_t group);

/* Current learning rate of a group (what the next step uses). A scheduler
 * sets it; so may the caller. Returns 0, -ERANGE (no such group) or
 * -EINVAL (NULL, or lr negative or not finite). */
STK_API int stk_optim_get_lr(const stk_optim_t *opt, size_t group, double *lr);
STK_API int stk_optim_set_lr(stk_optim_t *opt, size_t group, double lr);
/* The lr the group was configured with (PyTorch's 'initial_lr'): what a
 * scheduler scales. Returns 0 or -ERANGE. */
STK_API int stk_optim_get_base_lr(const stk_optim_t *opt, size_t group, double *lr);
/* The momentum a one-cycle schedule cycles: `momentum` for SGD and
 * RMSprop, beta1 for Adam and AdamW. set returns -EINVAL when out of range
 * (beta1 must be < 1). Returns 0, -EINVAL or -ERANGE. */
STK_API int stk_optim_get_momentum(const stk_optim_t *opt, size_t group, double *m);
STK_API int stk_optim_set_momentum(stk_optim_t *opt, size_t group, double m);

/* State blob, for checkpoints: kind, group layout (ranges), per-group step
 * counts, current lr and momentum/beta1, and every state buffer, in a
 * versioned little-endian format with a checksum.
 * stk_optim_state_size: bytes that stk_optim_state_save will write now
 * (grows after the first step allocates buffers).
 * stk_optim_state_save: writes into buf (cap bytes); *written gets the size.
 * Returns 0, -ENOSPC when cap is too small (*written = size needed), or
 * -EINVAL.
 * stk_optim_state_load: replaces the state with the blob's. The blob must
 * come from an optimizer of the same kind, n_params and group ranges;
 * otherwise STK_EFORMAT (not an optimizer blob, bad version, bad checksum,
 * truncated) or STK_ESHAPE (kind, size or layout mismatch), with the
 * message saying what differs; the optimizer is then unchanged. Restores
 * lr and momentum/beta1 (a scheduler may have moved them) but keeps the
 * other hyper-parameters of the current config (so a resumed run may
 * change weight decay, say). Not thread-safe on one optimizer. */
STK_API size_t stk_optim_state_size(const stk_optim_t *opt);
STK_API int stk_optim_state_save(const stk_optim_t *opt, void *buf, size_t cap, size_t *written);
STK_API int stk_optim_state_load(stk_optim_t *opt, const void *buf, size_t len);

/* ------------------------------------------------------------------------
 * Learning-rate schedulers
 *
 * A scheduler is a chain of phases (PyTorch's SequentialLR; one phase is a
 * plain scheduler). It counts its own steps t = 0, 1, 2, ...: what a step
 * is (an optimizer step, an epoch) is the caller's choice. At create it
 * sets every group's lr to the value at t = 0; each stk_sched_step then
 * advances t and sets the value at t. Call it after stk_optim_step, like
 * PyTorch's scheduler.step(). Group g's value scales base_lr[g], the
 * group's configured lr (stk_optim_get_base_lr).
 *
 * Phase i runs for `steps` steps from its milestone m_i = steps of phases
 * before it, and sees local time k = t - m_i, so each phase starts afresh
 * from base_lr at its milestone exactly like SequentialLR's step(0). The
 * last phase may have steps = 0 (runs forever); one middle phase may too
 * when config.total_steps is set (it gets what the others leave).
 *
 * Values are closed forms evaluated in double. PyTorch's chainable
 * step() multiplies the previous lr instead (StepLR, MultiStepLR,
 * ExponentialLR, LinearLR, CosineAnnealingLR); the two agree up to double
 * rounding (relative ~1e-15, the tests compare to 1e-9), and a closed form
 * does not drift or depend on who else wrote the lr.
 *
 * Kinds and their values at local time k (b = base lr):
 *   CONSTANT    b * factor while k < total_iters, then b  (ConstantLR;
 *               defaults: factor 1, total_iters the phase length, so
 *               "constant" alone is a plain constant)
 *   STEP        b * gamma^floor(k / step_size)               (StepLR)
 *   MULTISTEP   b * gamma^(milestones <= k)               (MultiStepLR)
 *   EXPONENTIAL b * gamma^k                              (ExponentialLR)
 *   COSINE      eta_min + (b - eta_min)(1 + cos(pi k / T_max)) / 2
 *               (CosineAnnealingLR; T_max defaults to the phase length)
 *   LINEAR      b * (start + (end - start) min(k, total_iters)/total_iters)
 *               (LinearLR, for warmup; total_iters defaults to the phase
 *               length, else 5)
 *   COOLDOWN    linear from s to b * final_factor over total_iters steps,
 *               then held: s + (b*final_factor - s) min(k, N) / N, where s
 *               is the value the previous phase would give at this phase's
 *               milestone (b when first). Put it last, with its length, to
 *               decay over the last N steps: "cosine|cooldown:N,final=0"
 *               or, warmup-stable-decay, "warmup:5|constant|cooldown:20".
 *   ONECYCLE    OneCycleLR: from max_lr/div_factor up to max_lr over
 *               pct_start of total_steps, then down to
 *               max_lr/div_factor/final_div_factor (three_phase: back to
 *               the initial lr first, then down); cos or linear anneal.
 *               max_lr = 0 means each group's base lr. total_steps defaults
 *               to the phase length, else config.total_steps. From k =
 *               total_steps on, the lr stays at the final value max_lr /
 *               div_factor / final_div_factor (PyTorch extrapolates at
 *               k = total_steps, even to a negative lr with linear anneal,
 *               and raises after). cycle_momentum (default on, as PyTorch) moves
 *               momentum / beta1 between max_momentum and base_momentum
 *               inversely to the lr.
 *   PLATEAU     ReduceLROnPlateau: stepped with stk_sched_step_metric; when
 *               the metric has not improved (mode min or max, threshold
 *               rel or abs) for more than `patience` steps, lr = max(lr *
 *               factor, min_lr) unless that changes lr by <= eps; then
 *               `cooldown` steps where bad steps do not count. Must be the
 *               only phase.
 * ---------------------------------------------------------------------- */

typedef struct stk_sched stk_sched_t;

typedef enum stk_sched_kind {
    STK_SCHED_CONSTANT = 1,
    STK_SCHED_STEP = 2,
    STK_SCHED_MULTISTEP = 3,
    STK_SCHED_EXPONENTIAL = 4,
    STK_SCHED_COSINE = 5,
    STK_SCHED_LINEAR = 6,
    STK_SCHED_COOLDOWN = 7,
    STK_SCHED_ONECYCLE = 8,
    STK_SCHED_PLATEAU = 9
} stk_sched_kind_t;

#define STK_SCHED_MAX_PHASES 8
#define STK_SCHED_MAX_MILESTONES 16

/* One phase. Every count (steps, step_size, milestones, T_max,
 * total_iters, total_steps, patience, cooldown) is in scheduler steps.
 * A kind reads only its own fields; 0 in a count marked "0 = derived"
 * takes the default described above. */
typedef struct stk_sched_phase {
    stk_sched_kind_t kind;
    int64_t steps;        /* length in the chain; 0 = open-ended */
    double factor;        /* CONSTANT; PLATEAU (default 0.1) */
    int64_t total_iters;  /* CONSTANT, LINEAR, COOLDOWN (0 = derived) */
    double gamma;         /* STEP, MULTISTEP (default 0.1), EXPONENTIAL */
    int64_t step_size;    /* STEP (required) */
    int64_t milestones[STK_SCHED_MAX_MILESTONES]; /* MULTISTEP, ascending */
    size_t n_milestones;
    int64_t t_max;        /* COSINE (0 = derived) */
    double eta_min;       /* COSINE: absolute lr, all groups */
    double start_factor;  /* LINEAR (default 1/3) */
    double end_factor;    /* LINEAR (default 1) */
    double final_factor;  /* COOLDOWN (default 0) */
    /* ONECYCLE */
    double max_lr;        /* 0 = each group's base lr */
    int64_t total_steps;  /* 0 = derived */
    double pct_start;     /* default 0.3 */
    int anneal_linear;    /* 0: cos (default), 1: linear */
    double div_factor;    /* default 25 */
    double final_div_factor; /* default 1e4 */
    int three_phase;
    int cycle_momentum;   /* default 1 */
    double base_momentum; /* default 0.85 */
    double max_momentum;  /* default 0.95 */
    /* PLATEAU */
    int mode_max;         /* 0: min (default), 1: max */
    int64_t patience;     /* default 10 */
    double threshold;     /* default 1e-4 */
    int threshold_abs;    /* 0: rel (default), 1: abs */
    int64_t cooldown;     /* default 0 */
    double min_lr;        /* default 0, all groups */
    double eps;           /* default 1e-8 */
} stk_sched_phase_t;

typedef struct stk_sched_config {
    size_t n_phases;
    stk_sched_phase_t phases[STK_SCHED_MAX_PHASES];
    /* Length of the run in scheduler steps, or 0 when unknown. Used only to
     * size an open-ended middle phase and a ONECYCLE without total_steps. */
    int64_t total_steps;
} stk_sched_config_t;

/* Fills *p with PyTorch's defaults for one phase of `kind` (see the
 * fields). NULL-safe. */
STK_API void stk_sched_phase_default(stk_sched_phase_t *p, stk_sched_kind_t kind);
/* Fills *cfg with an empty chain (n_phases 0, total_steps 0); add phases
 * before create. NULL-safe. */
STK_API void stk_sched_config_default(stk_sched_config_t *cfg);
/* "constant", "step", "multistep", "exponential", "cosine", "linear",
 * "cooldown", "onecycle", "plateau"; "invalid" otherwise. */
STK_API const char *stk_sched_kind_name(stk_sched_kind_t kind);

/* Text form, for config files: phases separated by '|':
 *     phase := kind [':' item (',' item)*]
 *     item  := count | key '=' value     (a bare count, first only, is the
 *                                         phase length `steps`)
 *     count := integer steps | number 'ep' (epochs: times steps_per_epoch,
 *              rounded to the nearest step)
 * kinds: constant, step, multistep, exp|exponential, cosine, linear|warmup,
 * cooldown, onecycle, plateau. Keys are the field names above, plus
 * aliases: start (start_factor), end (end_factor), final (final_factor),
 * T_max (t_max); milestones=30;60;90 (counts); mode=min|max,
 * threshold_mode=rel|abs, anneal_strategy=cos|linear; flags take
 * 0/1/true/false. Examples:
 *     "warmup:1ep,start=0.1|cosine:eta_min=0"
 *     "step:step_size=30ep,gamma=0.1"
 *     "onecycle:max_lr=0.1,total_steps=1000,pct_start=0.25"
 *     "plateau:mode=max,patience=3,factor=0.5"
 * cfg keeps its total_steps; phases are replaced. steps_per_epoch is needed
 * (> 0) only when a count uses 'ep'. On error cfg is unchanged.
 * Returns 0, STK_ECONFIG (the message names the phase and the bad key or
 * value), or -EINVAL. Thread-safe. */
STK_API int stk_sched_parse(const char *text, int64_t steps_per_epoch, stk_sched_config_t *cfg);

/* The one call most loops need: parses text (as stk_sched_parse, with
 * steps_per_epoch for counts in 'ep', 0 when none are) and creates the
 * scheduler for a run of total_steps scheduler steps (0: unknown; then a
 * phase that needs the run's length, such as a last "cosine" with no
 * length, is STK_ECONFIG naming the key to give, e.g. T_max). Returns 0,
 * STK_ECONFIG, -EINVAL (NULL or a negative count), -ENOMEM. */
STK_API int stk_sched_create_from_text(stk_sched_t **out, stk_optim_t *opt, const char *text,
                                       int64_t steps_per_epoch, int64_t total_steps);

/* Creates a scheduler driving `opt` (borrowed: it must outlive the
 * scheduler) and sets every group's lr to the value at t = 0 (ONECYCLE
 * with cycle_momentum also sets momentum / beta1). Base lrs are read from
 * opt now. Returns 0, STK_ECONFIG (bad value, named), -EINVAL, -ENOMEM.
 * A scheduler and its optimizer belong to one thread at a time: the
 * scheduler functions below are not thread-safe on one object. */
STK_API int stk_sched_create(stk_sched_t **out, const stk_sched_config_t *cfg, stk_optim_t *opt);
/* Frees *s and sets it to NULL; NULL-safe. Leaves the optimizer as is. */
STK_API void stk_sched_destroy(stk_sched_t **s);

/* Advances one step and sets the optimizer's group lrs. Returns 0, or
 * STK_ESTATE for a PLATEAU scheduler (it needs stk_sched_step_metric). */
STK_API int stk_sched_step(stk_sched_t *s);
/* Advances one step given a metric (validation loss, accuracy): PLATEAU
 * uses it (a NaN never counts as an improvement, as in PyTorch); other
 * kinds ignore it, so a loop may always call this one. Returns 0 or
 * -EINVAL (NULL). */
STK_API int stk_sched_step_metric(stk_sched_t *s, double metric);
/* Steps taken (t). */
STK_API int64_t stk_sched_steps(const stk_sched_t *s);
/* The lr this scheduler last set for group g (0 when out of range). */
STK_API double stk_sched_lr(const stk_sched_t *s, size_t group);

/* State blob: t, base lrs, plateau state, and a fingerprint of the
 * schedule. Same calling pattern and codes as the optimizer's state
 * functions; load checks that the blob was saved by the same schedule
 * (kinds, lengths, parameters) over the same number of groups
 * (STK_ESHAPE / STK_EFORMAT with the difference in the message), then
 * restores and writes the lrs (and momentum) at the restored t into the
 * optimizer. Not thread-safe on one scheduler. */
STK_API size_t stk_sched_state_size(const stk_sched_t *s);
STK_API int stk_sched_state_save(const stk_sched_t *s, void *buf, size_t cap, size_t *written);
STK_API int stk_sched_state_load(stk_sched_t *s, const void *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif
