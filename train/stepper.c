/* SPDX-License-Identifier: MIT */
/* The stepper: one micro-batch at a time, it owns the accumulation
 * arithmetic (which group a batch is in, the 1/size loss scale, a short
 * last group), the finite-loss check, the boundary where a data-parallel
 * run reduces gradients, dynamic loss scaling, clipping by global norm,
 * and the optimizer and scheduler steps. It changes nothing else: mode, data and order stay the
 * caller's. */
#define _GNU_SOURCE
#include "internal.h"
#include "stoker/train.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>


struct stk_train_stepper {
    stk_model_t *model;
    stk_optim_t *opt;
    stk_sched_t *sched;
    stk_train_stepper_config_t cfg;
    stk_loss_scaler_t *scaler; /* NULL: no loss scaling */
    uint64_t steps;
    uint32_t open; /* micro-batches in the group not yet stepped */
    int synced;    /* DDP: the group's gradients are reduced already */
};

void stk_train_stepper_config_default(stk_train_stepper_config_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->accum_steps = 1;
}

int stk_train_stepper_create(stk_train_stepper_t **out, stk_model_t *model, stk_optim_t *opt, stk_sched_t *sched,
                             const stk_train_stepper_config_t *cfg)
{
    if (!out || !model || !opt || !cfg)
        return stk__error(-EINVAL, "stk_train_stepper_create: NULL argument");
    *out = NULL;
    if (cfg->accum_steps == 0)
        return stk__error(STK_ECONFIG, "stepper: accum_steps is 0 (at least 1 micro-batch per optimizer step)");
    if (!(cfg->clip_norm >= 0) || isinf(cfg->clip_norm))
        return stk__error(STK_ECONFIG, "stepper: clip_norm %g is not a finite number >= 0", cfg->clip_norm);
    stk_train_stepper_t *s = calloc(1, sizeof *s);
    if (!s)
        return stk__error(-ENOMEM, "stepper: out of memory");
    int rc;
    if (cfg->loss_scaling.init_scale != 0 && (rc = stk_loss_scaler_create(&s->scaler, &cfg->loss_scaling)) != 0) {
        free(s);
        return stk__error_prefix(rc, "stepper");
    }
    s->model = model;
    s->opt = opt;
    s->sched = sched;
    s->cfg = *cfg;
    *out = s;
    return 0;
}

void stk_train_stepper_destroy(stk_train_stepper_t **s)
{
    if (!s || !*s)
        return;
    stk_loss_scaler_destroy(&(*s)->scaler);
    free(*s);
    *s = NULL;
}

uint64_t stk_train_stepper_steps(const stk_train_stepper_t *s)
{
    return s ? s->steps : 0;
}

void stk_train_stepper_set_steps(stk_train_stepper_t *s, uint64_t steps)
{
    if (s)
        s->steps = steps;
}

stk_loss_scaler_t *stk_train_stepper_loss_scaler(stk_train_stepper_t *s)
{
    return s ? s->scaler : NULL;
}

/* The gradient arena is read on the host here (CPU models): the one place
 * in train/ that does, until the engine offers a norm of its own. */
int stk_train_clip_grad_norm(stk_model_t *model, double max_norm, double *norm_out)
{
    if (!model || !(max_norm >= 0))
        return stk__error(-EINVAL, "stk_train_clip_grad_norm: NULL model or bad max_norm");
    size_t n = 0;
    float *g = stk_model_grads(model, &n);
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += (double)g[i] * (double)g[i];
    double norm = sqrt(sum);
    if (norm_out)
        *norm_out = norm;
    if (max_norm > 0 && norm > max_norm) {
        /* PyTorch: clip_coef = max_norm / (total_norm + 1e-6), applied
         * when below 1, as a float multiply of every gradient. */
        float coef = (float)(max_norm / (norm + 1e-6));
        for (size_t i = 0; i < n; i++)
            g[i] *= coef;
    }
    return 0;
}

static double lr0(const stk_optim_t *opt)
{
    double lr = NAN;
    stk_optim_get_lr(opt, 0, &lr);
    return lr;
}

/* reduce, clip, optimizer and scheduler step, zero_grad. */
static int close_group(stk_train_stepper_t *s, stk_train_step_metrics_t *m)
{
    double t0 = stk__now_s();
    int rc;
    /* A group closed before its planned last micro-batch was not reduced
     * by that backward: all of it now. */
    if (s->cfg.ddp && !s->synced && (rc = stk_ddp_sync_grads(s->cfg.ddp)) != 0)
        return rc;
    s->synced = 0;
    if (s->cfg.reduce && (rc = s->cfg.reduce(s->model, s->cfg.reduce_user)) != 0)
        return rc;
    m->grad_norm = NAN;
    m->lr = lr0(s->opt);
    /* Loss scaling: the reduced gradients back to their true size, and
     * the overflow check that decides the step (every rank sees the same
     * sums, so every rank decides alike). */
    int skip = 0;
    if (s->scaler) {
        int nonfinite = 0;
        float inv = (float)(1.0 / (double)stk_loss_scaler_scale(s->scaler));
        if ((rc = stk_model_unscale_grads(s->model, inv, &nonfinite)) != 0)
            return rc;
        skip = stk_loss_scaler_update(s->scaler, nonfinite);
    }
    if (!skip) {
        if (s->cfg.clip_norm > 0 && (rc = stk_train_clip_grad_norm(s->model, s->cfg.clip_norm, &m->grad_norm)) != 0)
            return rc;
        /* An optimizer made for the model steps on the model's backend; one
         * made by stk_optim_create over its arenas steps on the host. */
        rc = stk_optim_step_model(s->opt, s->model);
        if (rc == STK_ESTATE)
            rc = stk_optim_step(s->opt, stk_model_params(s->model, NULL), stk_model_grads(s->model, NULL));
        if (rc)
            return rc;
    }
    m->skipped = skip;
    if (s->sched && (rc = stk_sched_step(s->sched)) != 0)
        return rc;
    stk_model_zero_grad(s->model);
    s->open = 0;
    s->steps++;
    m->stepped = 1;
    m->optim_s = stk__now_s() - t0;
    return 0;
}

/* A group of one micro-batch as one engine call (stk_model_train_step):
 * what lets a GPU model replay the whole step as one CUDA graph. The loss
 * is known only after the update, so a non-finite one fails the step after
 * it was taken. */
static int graph_step(stk_train_stepper_t *s, const stk_tensor_t *input, const stk_tensor_t *target, uint64_t batch,
                      stk_train_step_metrics_t *m)
{
    double t0 = stk__now_s();
    m->lr = lr0(s->opt);
    float loss = NAN;
    int rc = stk_model_train_step(s->model, s->opt, input, target, &loss);
    if (rc)
        return rc;
    m->loss = loss;
    m->samples = stk_model_loss_count(s->model);
    if (!isfinite(loss) && !s->cfg.allow_nonfinite)
        return stk__error(-EDOM, "loss is %s at batch %llu (step %llu): training diverged (lower the lr?)",
                          isnan(loss) ? "NaN" : loss > 0 ? "+inf" : "-inf", (unsigned long long)batch,
                          (unsigned long long)s->steps);
    m->compute_s = stk__now_s() - t0;
    int64_t correct = 0;
    if ((rc = stk_model_count_correct(s->model, target->data, &correct)) != 0)
        return rc;
    m->correct = correct;
    double t1 = stk__now_s();
    if (s->sched && (rc = stk_sched_step(s->sched)) != 0)
        return rc;
    s->steps++;
    m->stepped = 1;
    m->step = s->steps;
    m->optim_s = stk__now_s() - t1;
    return 0;
}

int stk_train_stepper_step(stk_train_stepper_t *s, const stk_tensor_t *input, const stk_tensor_t *target,
                           uint64_t batch, stk_train_step_metrics_t *out)
{
    if (!s || !input || !target)
        return stk__error(-EINVAL, "stk_train_stepper_step: NULL argument");
    stk_train_step_metrics_t m = {.loss = NAN, .lr = NAN, .grad_norm = NAN, .loss_scale = 1.0f};
    uint64_t accum = s->cfg.accum_steps, nb = s->cfg.batches_per_epoch;
    uint64_t start = batch / accum * accum, size = accum;
    if (nb) {
        if (batch >= nb)
            return stk__error(-ERANGE, "stepper: batch %llu of an epoch of %llu", (unsigned long long)batch,
                              (unsigned long long)nb);
        if (nb - start < accum)
            size = nb - start;
    }
    /* Each micro-batch's loss counts 1/size: the summed gradient is that
     * of the mean loss over the group, as one batch of the group's size. */
    m.loss_scale = stk_loss_scaler_scale(s->scaler);
    stk_model_set_loss_scale(s->model, m.loss_scale * (1.0f / (float)size));
    /* The whole step as one call where nothing of the stepper's own
     * (accumulation, reduce, loss scaling, clipping) must come between. */
    if (size == 1 && s->open == 0 && !s->cfg.ddp && !s->cfg.reduce && !s->scaler && s->cfg.clip_norm == 0 &&
        target->dtype == STK_DTYPE_I64 && stk_model_cuda_graph(s->model, NULL, NULL)) {
        int rc = graph_step(s, input, target, batch, &m);
        if (rc == 0 && out)
            *out = m;
        return rc;
    }
    float loss = NAN;
    double t0 = stk__now_s();
    int rc = stk_model_forward_tensor(s->model, input, target, &loss);
    if (rc)
        return rc;
    m.loss = loss;
    /* what the loss averaged: the batch, or a per-step loss's counted steps */
    m.samples = stk_model_loss_count(s->model);
    if (!isfinite(loss) && !s->cfg.allow_nonfinite)
        return stk__error(-EDOM, "loss is %s at batch %llu (step %llu): training diverged (lower the lr?)",
                          isnan(loss) ? "NaN" : loss > 0 ? "+inf" : "-inf", (unsigned long long)batch,
                          (unsigned long long)s->steps);
    int last = batch + 1 == start + size;
    if (s->cfg.ddp) {
        rc = stk_ddp_backward(s->cfg.ddp, last);
        s->synced = last;
    } else {
        rc = stk_model_backward(s->model);
    }
    if (rc != 0)
        return rc;
    m.compute_s = stk__now_s() - t0;
    int64_t correct = 0;
    if (target->dtype == STK_DTYPE_I64 && (rc = stk_model_count_correct(s->model, target->data, &correct)) != 0)
        return rc;
    m.correct = correct;
    s->open++;
    if (last) {
        if ((rc = close_group(s, &m)) != 0)
            return rc;
    } else {
        m.lr = lr0(s->opt);
    }
    m.step = s->steps;
    if (out)
        *out = m;
    return 0;
}

int stk_train_stepper_flush(stk_train_stepper_t *s, int *stepped)
{
    if (!s)
        return stk__error(-EINVAL, "stk_train_stepper_flush: NULL stepper");
    if (stepped)
        *stepped = 0;
    if (!s->open)
        return 0;
    stk_train_step_metrics_t m = {.loss_scale = 1.0f};
    int rc = close_group(s, &m);
    if (rc == 0 && stepped)
        *stepped = 1;
    return rc;
}
