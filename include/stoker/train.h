/* SPDX-License-Identifier: MIT */
/* The layer between the pieces and a training loop: a batch turned into
 * model inputs, the gradient-accumulation stepper, evaluation, train-state
 * checkpoints (model, optimizer, scheduler, loader position, counters,
 * history and the run's identity, in one file: docs/train-state-format.md),
 * and one ready-made loop over them (stk_train_run), the one stoker-train
 * drives. Each piece is usable alone: a loop of one's own calls the
 * loader, stk_model_forward/backward and the optimizer directly and takes
 * from here only what it wants. Nothing here prints or parses a config
 * file; everything reports through return codes and stk_error_message(). */
#ifndef STOKER_TRAIN_H
#define STOKER_TRAIN_H

#include "stoker/common.h"
#include "stoker/checkpoint.h"
#include "stoker/dist.h"
#include "stoker/engine.h"
#include "stoker/loader.h"
#include "stoker/optim.h"

#include <signal.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Batches -> model inputs ------------------------------------------ */

/* The field called name in b. Returns 0 and *out (pointing into b);
 * STK_ENOTFOUND with the batch's field names in the message; -EINVAL. */
STK_API int stk_train_batch_field(const stk_batch_t *b, const char *name, const stk_batch_field_t **out);
/* A tensor view of a fixed-shape field, batch dimension first (no copy;
 * valid while the batch is). STK_ESHAPE for a variable-length field or
 * one of more than STK_TENSOR_MAX_DIMS dimensions; -EINVAL. */
STK_API int stk_train_field_tensor(const stk_batch_field_t *f, stk_tensor_t *out);
/* Widens an integer scalar field (u8, i8, i32, i64) to n i64 labels.
 * STK_ESHAPE when the field is not a scalar per sample or has another
 * count than n; STK_ECONFIG for a non-integer dtype (named); -EINVAL. */
STK_API int stk_train_labels_i64(const stk_batch_field_t *f, int64_t *out, size_t n);
/* The normalize stages of an augment spec ("" when it has none): what
 * evaluation applies to the data that training augmented with spec, and
 * what stk_train_inputs applies when the workers did not normalize.
 * Returns 0, -ENOSPC (out too small), -EINVAL. */
STK_API int stk_train_normalize_spec(const char *augment_spec, char *out, size_t cap);

typedef struct stk_train_inputs_config {
    const char *image_field; /* default "image" */
    const char *label_field; /* default "label"; NULL: the batch has no labels */
    /* An augment spec whose normalize stage is applied to integer (u8)
     * images, the workers' output when their spec ends before normalize
     * (the other stages are ignored: they belong in the workers). NULL or
     * "", or a spec without normalize: pixels are scaled to [0, 1] as
     * torchvision's ToTensor does. Float images pass as they are. */
    const char *normalize;
    stk_dtype_t dtype;       /* of the input tensor: F32 (default), F16, BF16 */
    /* With dtype F32: f16 and bf16 images (the workers' normalize with
     * dtype=) pass as they are, the input tensor in their dtype, for the
     * feed to convert (stk_feed_put_half: on a GPU after the copy, which
     * then moves half the bytes). stk_train_run and stk_train_evaluate
     * feed such tensors so. Default 0: converted to f32 here. */
    int keep_half;
    /* A language model: the image field is a variable-length sequence of
     * token ids per sample, and the input is boundary_token followed by
     * the tokens, the per-step target the tokens followed by
     * boundary_token (the next token of every step), each sample's length
     * one more than its record's; i64 [N, t + 1] both, the input tensor
     * carrying the lengths. label_field must be NULL. Default 0. */
    int next_token;
    int64_t boundary_token;
} stk_train_inputs_config_t;

STK_API void stk_train_inputs_config_default(stk_train_inputs_config_t *cfg);

/* Turns batches into an input tensor (N x C x H x W for an image field, a
 * 2-D image being one channel; N x F for a field of F features) and an i64
 * label tensor [N], converting only what needs it (f32 inputs and i64
 * labels are views of the batch). */
typedef struct stk_train_inputs stk_train_inputs_t;

/* Copies cfg (strings included; NULL: the defaults) and parses the
 * normalize spec. Returns 0,
 * STK_ECONFIG (bad spec or dtype, named), -EINVAL, -ENOMEM. */
STK_API int stk_train_inputs_create(stk_train_inputs_t **out, const stk_train_inputs_config_t *cfg);
STK_API void stk_train_inputs_destroy(stk_train_inputs_t **in);
/* Fills *input and (when a label field is configured) *target for b.
 * They point into b or into buffers of in, valid until the second call
 * after this one on in or the batch's release: a loop may convert batch
 * k + 1 while step k still reads what batch k's call gave. target may be NULL. Returns 0, STK_ENOTFOUND
 * (a field is missing: the message lists the batch's fields), STK_ESHAPE
 * (neither features nor an image, variable shape), STK_ECONFIG (a dtype it cannot convert),
 * -ENOMEM. Not thread-safe on one object. */
STK_API int stk_train_inputs_get(stk_train_inputs_t *in, const stk_batch_t *b, stk_tensor_t *input,
                                 stk_tensor_t *target);

/* The length of the variable-length field `field` of each of the first n
 * samples of ds (one record read each: a pass over the data's index and
 * records), for stk_batch_sampler_create_bucketed. Returns 0,
 * STK_ENOTFOUND, STK_ESHAPE (a fixed-shape field), STK_EDATA, -EINVAL, or
 * the dataset's error. Not thread-safe with other calls on ds. */
STK_API int stk_train_sequence_lengths(stk_dataset_t *ds, const char *field, uint64_t n, uint32_t *out);

/* Checks, before any batch is loaded, that ds can feed model through the
 * augment spec (NULL or "": none): the fields cfg names exist, the label
 * is an integer scalar, the image (or features) field has a fixed shape,
 * and what the spec makes of a sample has the model's input shape, in a
 * dtype the inputs converter takes. Returns 0; STK_ENOTFOUND (a field is
 * missing: the message lists the data's fields); STK_ESHAPE (shapes, both
 * in the message); STK_ECONFIG (a bad spec, named; an output dtype);
 * -EINVAL. */
STK_API int stk_train_check_data(const stk_dataset_t *ds, const stk_train_inputs_config_t *cfg, const char *augment,
                                 const stk_model_t *model);

/* ---- Batches into a model, one ahead ----------------------------------- */

/* A loader's batches on their way into a model, as stk_train_run and
 * stk_train_evaluate take them: each converted (stk_train_inputs_get)
 * and put into a feed (engine.h, "feeding a device"). On a device, with a
 * loader of 2 slots or more (num_workers * prefetch, or prefetch without
 * workers), next also fetches, converts and puts the batch after the one
 * it hands out, so that that batch's host-to-device copy runs while the
 * caller's step computes; the step waits for its own input's copy only,
 * on the device. On a CPU model nothing is copied or fetched ahead.
 *
 *     while ((rc = stk_train_batches_next(tb, &b, &x, &y)) == 0) {
 *         rc = step(&x, &y);                  // the model's work on b
 *         if ((rc = stk_train_batches_done(tb, rc)) != 0)
 *             break;
 *     }
 *     stk_train_batches_drop(tb);             // stop, error, epoch's end
 *
 * The batch fetched ahead is the loader's until it is handed out: a
 * checkpoint's position is the last stepped batch's number + 1, and a
 * stop drops the one ahead unstepped (released; a resume fetches it
 * again). */
typedef struct stk_train_batches stk_train_batches_t;

typedef struct stk_train_batches_stats {
    double wait_s;     /* time spent in stk_loader_next (the data wait) */
    uint64_t batches;  /* handed out by next */
    int ahead;         /* 1: fetching ahead; 0: not; -1: not known before
                        * the first batch */
    stk_feed_stats_t feed; /* the feed's copies (zero before the first batch) */
} stk_train_batches_stats_t;

/* model, loader and inputs are borrowed (they must outlive tb); the feed
 * is made at the first batch, for its size. 0, -EINVAL, -ENOMEM. */
STK_API int stk_train_batches_create(stk_train_batches_t **out, stk_model_t *model, stk_loader_t *loader,
                                     stk_train_inputs_t *inputs);
/* Drops what it holds and frees the feed; NULL-safe. */
STK_API void stk_train_batches_destroy(stk_train_batches_t **tb);
/* The next batch of the loader's epoch, its input already on the model's
 * device (the model's next work waits for its copy): *batch (may be NULL)
 * and *input, *target (as stk_train_inputs_get gives them; input points
 * at the device copy) valid until done. Returns 0, STK_DONE at the
 * epoch's end (set the loader's next epoch to go on), the loader's or the
 * conversion's error, or -EINTR (stk_loader_interrupt; a later call goes
 * on). What fetching ahead meets is returned at the call after, once the
 * batch before it was handed out, as without the lookahead. STK_ESTATE
 * when the batch before was not done. */
STK_API int stk_train_batches_next(stk_train_batches_t *tb, const stk_batch_t **batch, stk_tensor_t *input,
                                   stk_tensor_t *target);
/* After the model's work on the batch next gave (the step, and whatever
 * reads its labels): its feed buffer may be refilled and the batch goes
 * back to the loader. Returns rc, or the feed's error when rc is 0. */
STK_API int stk_train_batches_done(stk_train_batches_t *tb, int rc);
/* done, and the batch fetched ahead goes back to the loader unstepped
 * (and a status due at the next call is forgotten). The loader stands
 * past that batch: to go on, position it (stk_loader_set_state with the
 * last stepped batch's number + 1, or set_epoch). Returns 0 or the feed's
 * error. */
STK_API int stk_train_batches_drop(stk_train_batches_t *tb);
/* *out = the counts so far. 0 or -EINVAL. */
STK_API int stk_train_batches_stats(const stk_train_batches_t *tb, stk_train_batches_stats_t *out);

/* ---- Dynamic loss scaling ---------------------------------------------- */

/* PyTorch's GradScaler as a state machine: the loss gradient is multiplied
 * by the scale; a step whose gradients hold a NaN or infinity (an
 * overflow) is skipped and the scale multiplied by backoff_factor; after
 * growth_interval clean steps in a row it is multiplied by growth_factor
 * (when the result is finite). The scale is a float, updated in float
 * arithmetic as PyTorch's. */
typedef struct stk_loss_scaler_config {
    double init_scale;        /* default 65536 (2^16); in (0, FLT_MAX] */
    double growth_factor;     /* default 2; > 1 */
    double backoff_factor;    /* default 0.5; in (0, 1) */
    uint32_t growth_interval; /* clean steps before growth; default 2000; >= 1 */
} stk_loss_scaler_config_t;

STK_API void stk_loss_scaler_config_default(stk_loss_scaler_config_t *cfg);

typedef struct stk_loss_scaler stk_loss_scaler_t;

/* Returns 0, -EINVAL, -ENOMEM, or STK_ECONFIG naming the bad field. */
STK_API int stk_loss_scaler_create(stk_loss_scaler_t **out, const stk_loss_scaler_config_t *cfg);
STK_API void stk_loss_scaler_destroy(stk_loss_scaler_t **s);
/* The factor this step's loss gradient is to be multiplied by. */
STK_API float stk_loss_scaler_scale(const stk_loss_scaler_t *s);
/* After a step's gradients were checked (stk_model_unscale_grads):
 * nonfinite 1 lowers the scale and returns 1 (skip the optimizer step);
 * 0 counts a clean step, grows the scale after growth_interval of them,
 * and returns 0 (step). */
STK_API int stk_loss_scaler_update(stk_loss_scaler_t *s, int nonfinite);
/* Steps skipped so far. */
STK_API uint64_t stk_loss_scaler_skipped(const stk_loss_scaler_t *s);

/* Where a scaler stands, for checkpoints: a scaler set to the state of
 * another continues exactly as that one would. */
typedef struct stk_loss_scaler_state {
    float scale;      /* in (0, FLT_MAX] */
    uint32_t clean;   /* clean steps since the scale last changed */
    uint64_t skipped; /* steps skipped so far */
} stk_loss_scaler_state_t;

/* *out = s's state (scale 1, counts 0 for a NULL s). */
STK_API void stk_loss_scaler_get_state(const stk_loss_scaler_t *s, stk_loss_scaler_state_t *out);
/* Returns 0; -EINVAL (NULL, or a scale that is not a finite number > 0,
 * named). A clean count at or past the growth interval grows the scale at
 * the next clean step. */
STK_API int stk_loss_scaler_set_state(stk_loss_scaler_t *s, const stk_loss_scaler_state_t *st);

/* ---- The stepper: one micro-batch at a time ----------------------------- */

/* Called at each accumulation boundary, after the group's backward passes
 * and before clipping and the optimizer step: where a data-parallel run
 * sums the gradients across ranks. Returns 0 or a negative code (the step
 * fails with it). */
typedef int (*stk_train_reduce_fn)(stk_model_t *model, void *user);

typedef struct stk_train_stepper_config {
    uint32_t accum_steps;       /* micro-batches per optimizer step; default 1 */
    /* Micro-batches per epoch, so that the last group of an epoch may be
     * short: with accum_steps = k, batch b belongs to the group starting
     * at floor(b / k) * k, whose size is min(k, batches_per_epoch - start);
     * each micro-batch's loss gradient is scaled by 1/size (the mean over
     * the group), and the optimizer steps after the group's last batch.
     * 0: unknown; every group is k long, and stk_train_stepper_flush steps
     * a short one as it is (scaled by 1/k). */
    uint64_t batches_per_epoch;
    double clip_norm;           /* > 0: scale the gradients so that their
                                 * global L2 norm is at most this (PyTorch's
                                 * clip_grad_norm_); 0: off (default) */
    int allow_nonfinite;        /* 0 (default): a NaN or infinite loss fails
                                 * the step with -EDOM before backward */
    stk_train_reduce_fn reduce; /* NULL: single process */
    void *reduce_user;
    /* Data-parallel (dist.h): each backward goes through stk_ddp_backward,
     * whose group's last one all-reduces the gradients while backward
     * still runs (no communication on the other micro-batches); a group
     * closed early (stk_train_stepper_flush) is reduced then with
     * stk_ddp_sync_grads. NULL (default): one process. */
    stk_ddp_t *ddp;
    /* Dynamic loss scaling (what FP16 compute needs) when init_scale > 0:
     * each loss gradient is multiplied by the scale, and at a group's
     * boundary (after reduce, before clipping) the gradients are unscaled
     * and checked; a non-finite one skips the optimizer update (the
     * scheduler still steps, as it does in PyTorch). Zeroed (default):
     * off. stk_loss_scaler_config_default fills the usual values. */
    stk_loss_scaler_config_t loss_scaling;
} stk_train_stepper_config_t;

STK_API void stk_train_stepper_config_default(stk_train_stepper_config_t *cfg);

/* What one micro-batch did. */
typedef struct stk_train_step_metrics {
    float loss;         /* mean over this micro-batch, not scaled */
    int64_t samples;    /* in this micro-batch (what its loss averaged: for a
                         * per-step loss, the steps it counted) */
    int64_t correct;    /* top-1 hits in this micro-batch */
    int stepped;        /* 1: it closed a group; optimizer and scheduler stepped */
    double lr;          /* group 0's lr of that step (or of the next, when not stepped) */
    double grad_norm;   /* global gradient norm before clipping, when it
                         * stepped with clip_norm > 0; NAN otherwise */
    uint64_t step;      /* optimizer steps taken, this one included */
    double compute_s;   /* seconds in forward and backward */
    double optim_s;     /* seconds in reduce, clip, optimizer and scheduler */
    int skipped;        /* 1: it closed a group whose gradients were not
                         * finite; loss scaling skipped the optimizer update */
    float loss_scale;   /* the loss scale this micro-batch used (1 without
                         * loss scaling; the group's size not counted) */
} stk_train_step_metrics_t;

typedef struct stk_train_stepper stk_train_stepper_t;

/* model and opt are required, sched may be NULL; all are borrowed and
 * must outlive the stepper. opt is made for the model
 * (stk_optim_create_for_model, stepped on the model's backend) or over its
 * arenas (stk_optim_create, stepped on the host).
 * Returns 0, -EINVAL, STK_ECONFIG (accum_steps 0, negative clip), -ENOMEM. */
STK_API int stk_train_stepper_create(stk_train_stepper_t **out, stk_model_t *model, stk_optim_t *opt,
                                     stk_sched_t *sched, const stk_train_stepper_config_t *cfg);
STK_API void stk_train_stepper_destroy(stk_train_stepper_t **s);
/* One micro-batch: loss scale, forward (with target: i64 labels [N] or f32
 * soft targets [N, classes]; the model advances its own dropout step), the
 * finite-loss check, backward into the gradient arena, and at the group
 * boundary reduce, clip, optimizer step, scheduler step and zero_grad. batch is the micro-batch's number in its
 * epoch (stk_batch_t.number), which places it in its group. The model
 * must be in training mode; the stepper does not change the mode. On an
 * error the gradients of the open group are left as they are. Returns 0,
 * -EDOM (non-finite loss: the message gives it and the batch), -ERANGE
 * (batch >= batches_per_epoch), -EINVAL (NULL), or the error of the
 * engine, optimizer, scheduler or reduce call. Not thread-safe on one
 * stepper. */
STK_API int stk_train_stepper_step(stk_train_stepper_t *s, const stk_tensor_t *input, const stk_tensor_t *target,
                                   uint64_t batch, stk_train_step_metrics_t *out);
/* Steps the optimizer on an open group now (short, with batches_per_epoch
 * 0); does nothing when none is open. *stepped (may be NULL) says which.
 * Returns 0 or as stk_train_stepper_step. */
STK_API int stk_train_stepper_flush(stk_train_stepper_t *s, int *stepped);
/* Optimizer steps taken (loss scaling's skipped ones included); set it
 * when resuming. */
STK_API uint64_t stk_train_stepper_steps(const stk_train_stepper_t *s);
STK_API void stk_train_stepper_set_steps(stk_train_stepper_t *s, uint64_t steps);
/* The stepper's loss scaler (NULL when loss scaling is off), whose state
 * a checkpoint keeps and a resume sets back. */
STK_API stk_loss_scaler_t *stk_train_stepper_loss_scaler(stk_train_stepper_t *s);

/* Global L2 norm of the model's gradients, and (when max_norm > 0 and the
 * norm exceeds it) their scaling by max_norm / (norm + 1e-6), as PyTorch's
 * clip_grad_norm_. *norm (may be NULL) gets the norm before clipping.
 * Reads the gradient arena on the host: CPU models only, until the engine
 * offers a norm of its own. Returns 0 or -EINVAL. */
STK_API int stk_train_clip_grad_norm(stk_model_t *model, double max_norm, double *norm);

/* ---- Memory ------------------------------------------------------------ */

/* An estimate of the bytes a training step at batch size `batch` needs:
 * the parameter arena four times over (parameters, gradients, two
 * optimizer buffers) plus, per sample, every layer's output twice
 * (activation and gradient; measured on fmnist-cnn, that covers the
 * backend's workspaces and copies too, with ~10% to spare). The
 * per-sample sizes come from one evaluation-mode forward of a zero sample
 * at the model's current plan, so call it while the model is planned at a
 * small batch (created with batch_size 1), before planning the real one:
 * then a batch that cannot fit is refused before it is allocated. The
 * forward changes no parameter or buffer and leaves the mode as it was.
 * Returns 0, -EINVAL, -ENOMEM, or the engine's error. */
STK_API int stk_train_memory_estimate(stk_model_t *model, int64_t batch, uint64_t *bytes);
/* Bytes this process may still use: the smaller of MemAvailable and the
 * room under the cgroup's memory.max; 0 when neither can be read. */
STK_API uint64_t stk_train_memory_available(void);

/* ---- Evaluation ------------------------------------------------------- */

typedef struct stk_train_eval {
    double loss;      /* mean of the model's loss (its cross_entropy) */
    double top1;      /* share of samples whose largest logit is the label */
    double topk;      /* share whose label is among the k largest */
    uint64_t samples;  /* for a per-step loss (a language model): the steps
                        * counted, and loss, top1 are per step */
} stk_train_eval_t;

/* One pass, from its first batch, over the epoch the loader stands at
 * (a loader that finished an epoch stands at the next one: call
 * stk_loader_set_epoch first to choose; with a sequential sampler and no
 * random augmentation every epoch is the same), in evaluation mode (the model's mode is restored afterwards), with the
 * model's loss and the engine's top-1 and top-k counts (nothing is read
 * from the model's memory here, so it works on any device). topk >= 1.
 * stop (may be NULL) is polled between batches: when it reads non-zero
 * the pass ends with -EINTR. A label outside the model's classes fails
 * with -EINVAL naming the sample's index in the data set. Returns 0,
 * -EINTR, -EINVAL, or the loader's or engine's error. */
STK_API int stk_train_evaluate(stk_model_t *model, stk_loader_t *loader, stk_train_inputs_t *inputs, int topk,
                               const volatile sig_atomic_t *stop, stk_train_eval_t *out);

/* ---- Train state and its checkpoints ------------------------------------ */

/* The train-state checkpoint format (docs/train-state-format.md): the
 * "meta" section starts with "format = stoker-train-state <version>". */
#define STK_TRAIN_STATE_VERSION 2
/* A run id: 16 lower-case hex digits (a checkpoint run tag). */
#define STK_TRAIN_RUN_ID_LEN 16

/* One epoch of the history (kept in checkpoints). */
typedef struct stk_train_epoch {
    uint64_t epoch;        /* 1-based */
    uint64_t step;         /* optimizer steps at its end */
    double train_loss, train_acc;
    double test_loss, test_acc, test_topk; /* NAN without evaluation */
    double lr;             /* group 0's, at its end */
    double images_per_s;   /* training phase only */
    double data_wait;      /* share of the training phase spent waiting for data */
    double epoch_s;        /* training and evaluation */
} stk_train_epoch_t;

/* Where a run stands: everything besides the model, optimizer and
 * scheduler that the next step depends on, plus the run's identity and
 * history. A plain struct: the caller owns it; stk_train_state_clear
 * frees what load allocated (history, config). */
typedef struct stk_train_state {
    char run_id[STK_TRAIN_RUN_ID_LEN + 1]; /* required to save */
    uint64_t config_hash;   /* the caller's fingerprint of its config (0: none) */
    char *config;           /* the caller's config text, stored verbatim (NULL: none) */
    uint64_t seed;          /* recorded for the reader; every draw is keyed by it */
    uint64_t epoch;         /* 0-based epoch in progress (= epochs done) */
    uint64_t step;          /* optimizer steps taken */
    uint64_t micro;         /* training micro-batches taken: the model's step
                             * (stk_model_step), set back on resume */
    uint32_t world_size;    /* ranks of the run (0 or 1: one process); the
                             * data order depends on it, so a resume must
                             * keep it (stk_train_run checks) */
    /* The next training batch. (e, nb) with nb the epoch's batch count:
     * epoch e was trained but its end (evaluation, history) is to come;
     * after it the position reads (e + 1, 0). */
    stk_loader_state_t loader;
    /* Partial sums of the epoch in progress. */
    double ep_loss_sum;     /* sum of loss * samples */
    uint64_t ep_correct, ep_seen;
    double ep_train_s, ep_wait_s;
    /* Totals over the run's training phases. */
    double total_train_s, total_wait_s;
    uint64_t total_images;
    /* Dynamic loss scaling's state after step (loss_scale.scale 0: the
     * run has none, or its checkpoint predates the field; a resumed run
     * with loss scaling then starts at its config's initial scale).
     * stk_train_run keeps it and sets the stepper's scaler from it. */
    stk_loss_scaler_state_t loss_scale;
    stk_train_epoch_t *history; /* n_history rows (heap: stk_train_state_clear frees) */
    size_t n_history;
} stk_train_state_t;

/* Zeroes *st, then gives it a fresh run id (16 hex digits from
 * getrandom(), or time and pid when it fails) and the seed. Returns 0 or
 * -EINVAL. */
STK_API int stk_train_state_init(stk_train_state_t *st, uint64_t seed);
/* Frees history and config and zeroes *st. NULL-safe. */
STK_API void stk_train_state_clear(stk_train_state_t *st);
/* Appends a history row (grows the heap array). 0 or -ENOMEM. */
STK_API int stk_train_state_push_epoch(stk_train_state_t *st, const stk_train_epoch_t *row);

/* What a checkpoint is made of. model is required; optim and sched may be
 * NULL (not saved; on load, a section present without its object is left
 * alone). */
typedef struct stk_train_parts {
    stk_model_t *model;
    stk_optim_t *optim;
    stk_sched_t *sched;
} stk_train_parts_t;

/* Saves one checkpoint of run st->run_id at step st->step into dir
 * (created if missing), atomically (stk_ckpt_dir_save), then prunes the
 * run's older checkpoints to keep_last (0: keep all); other runs' files in
 * dir are never touched. extra: sections of the caller's (names must not
 * clash with the format's: meta, config, model, optimizer, scheduler,
 * history), may be NULL. path_out (may be NULL) gets the path. Returns 0,
 * STK_ECONFIG (no or bad run id, clashing section), -ENOMEM, or the
 * engine's, optimizer's or file system's error. */
STK_API int stk_train_checkpoint_save(const char *dir, const stk_train_parts_t *parts, const stk_train_state_t *st,
                                      const stk_ckpt_section_t *extra, size_t n_extra, unsigned keep_last,
                                      char *path_out, size_t cap);
/* Reads the checkpoint at path into *st (cleared first; history and
 * config allocated) and, for each non-NULL part, its state; a model's step
 * (stk_model_set_step) is set to st->micro, so that dropout goes on where
 * the run stopped. parts may be NULL to read the state only. Every failure names the file and the
 * section; on failure *st is cleared, but a part loaded before the failing
 * one keeps what it loaded (load into fresh objects, or stop). Returns 0,
 * STK_EFORMAT (not a train-state checkpoint, or another version),
 * STK_EDATA (a bad section), STK_ESHAPE (a part does not fit, e.g.
 * another model), or the file's error. */
STK_API int stk_train_checkpoint_load(const char *path, const stk_train_parts_t *parts, stk_train_state_t *st);
/* The newest checkpoint of a run in dir (of the only run dir holds, when
 * no run is named) is stk_ckpt_dir_latest(dir, run_id, path, cap): the
 * checkpoints are named by step and run id. */
/* 0 when dir is missing, empty of checkpoints, or holds only run_id's;
 * STK_ESTATE otherwise, the message naming the other run and its newest
 * checkpoint (what a new run must not mix with). -errno when dir cannot be
 * read. */
STK_API int stk_train_checkpoint_dir_check(const char *dir, const char *run_id);

/* ---- The loop ----------------------------------------------------------- */

/* Where a running epoch stands, for a progress line. */
typedef struct stk_train_progress {
    uint64_t epoch;          /* 0-based */
    uint64_t batch, batches; /* micro-batches done in the epoch, of */
    uint64_t step;           /* optimizer steps */
    double loss, acc;        /* running means over the epoch */
    double lr;
    double images_per_s;     /* over the epoch's training so far */
    double data_wait;        /* share of it spent waiting for data */
    const stk_train_step_metrics_t *last; /* the micro-batch just done */
} stk_train_progress_t;

typedef struct stk_train_loop_config {
    /* The parts (borrowed). eval_loader may be NULL: no evaluation. */
    stk_model_t *model;
    stk_optim_t *optim;
    stk_sched_t *sched;                 /* may be NULL */
    stk_loader_t *train_loader;
    stk_train_inputs_t *train_inputs;
    stk_loader_t *eval_loader;
    stk_train_inputs_t *eval_inputs;
    /* The run. */
    uint64_t epochs;                    /* its length */
    uint64_t stop_after;                /* return after this many epochs done (0: epochs) */
    stk_train_stepper_config_t stepper; /* batches_per_epoch is filled in;
                                         * reduce is where a communicator
                                         * sums gradients across ranks */
    int topk;                           /* evaluation's k (default 5) */
    /* Checkpoints: after every epoch, every checkpoint_steps optimizer
     * steps (0: none within an epoch), and when stopped. NULL dir: none
     * (what the ranks other than 0 of a data-parallel run pass: every rank
     * holds the same state, one writes it). */
    const char *checkpoint_dir;
    unsigned keep_last;                 /* default 3; 0 keeps all */
    uint64_t checkpoint_steps;
    const stk_ckpt_section_t *extra;    /* the caller's sections in each checkpoint */
    size_t n_extra;
    /* Polled after every micro-batch and between evaluation batches; when
     * non-zero the run stops at the next optimizer step (or at once in
     * evaluation), saves a checkpoint of where it is and returns -EINTR.
     * A loader call that returns -EINTR (stk_loader_interrupt: how a stop
     * ends a wait on a stopped worker) stops it the same way. Set it from
     * a thread that waits for the signals (sigwait), not from a handler
     * that may run on a thread executing the engine: see
     * docs/custom-loop.md, "Signals". NULL: never. */
    const volatile sig_atomic_t *stop;
    /* Callbacks (each may be NULL; user is passed back). on_step: after
     * every micro-batch. on_epoch: after an epoch's evaluation, with its
     * history row already in the state and before its checkpoint; a
     * non-zero return ends the run with that code. on_checkpoint: after
     * each save, with the path. */
    void (*on_step)(const stk_train_progress_t *p, void *user);
    int (*on_epoch)(const stk_train_epoch_t *e, const stk_train_state_t *st, void *user);
    void (*on_checkpoint)(const char *path, const stk_train_state_t *st, void *user);
    void *user;
    /* Data-parallel (dist.h); NULL (default): one process. Every rank runs
     * the loop over its own shard (the caller gives train_loader a
     * distributed sampler with this communicator's rank and world, and
     * eval_loader this rank's part of the test set) with stepper.ddp set.
     * At each optimizer step the ranks agree on whether to stop and sum
     * the step's loss, hits and samples, so st (and every rank's report)
     * holds global figures; evaluation runs on rank 0's batchnorm buffers
     * and sums over ranks; only rank 0 saves checkpoints (and calls
     * on_checkpoint). A resume needs the world size of the checkpoint. */
    stk_comm_t *comm;
} stk_train_loop_config_t;

STK_API void stk_train_loop_config_default(stk_train_loop_config_t *cfg);

/* Trains from where st stands (a fresh stk_train_state_init, or a state
 * stk_train_checkpoint_load filled together with the parts) until
 * st->epoch reaches stop_after (or epochs): each epoch trains on
 * train_loader through a stepper, evaluates on eval_loader, appends to
 * the history and checkpoints. The model's step is set from st->micro
 * before the first batch. st is updated as the run goes and is what a
 * checkpoint holds. Returns 0 (done), -EINTR (stopped: a checkpoint of
 * where it stopped was saved when checkpoint_dir is set), -EDOM (a
 * non-finite training or evaluation loss: training diverged), -ERANGE
 * (st's loader position past the epoch's batches), STK_ECONFIG (a bad
 * config, named), an on_epoch code, or the first error of a piece (st then stands at the last
 * completed optimizer step, so that saving it still resumes exactly).
 * Not thread-safe on the same parts. */
STK_API int stk_train_run(const stk_train_loop_config_t *cfg, stk_train_state_t *st);

#ifdef __cplusplus
}
#endif
#endif
