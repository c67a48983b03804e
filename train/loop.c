/* SPDX-License-Identifier: MIT */
/* The training loop, top to bottom: for each epoch, position the loader
 * (a resumed run continues at its batch), feed every batch through the
 * stepper, checkpoint every N steps, stop at an optimizer step when asked;
 * then evaluate, append the epoch to the history, tell the caller, and
 * checkpoint. Everything the loop knows lives in the stk_train_state_t it
 * is given, so a checkpoint of that state resumes it exactly: the data
 * order and augmentation are functions of (seed, epoch, sample), dropout
 * of (seed, micro-batch), and the rest is in the model, optimizer and
 * scheduler states. */
#define _GNU_SOURCE
#include "internal.h"
#include "train_internal.h"
#include "stoker/train.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <string.h>


void stk_train_loop_config_default(stk_train_loop_config_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    stk_train_stepper_config_default(&cfg->stepper);
    cfg->epochs = 1;
    cfg->topk = 5;
    cfg->keep_last = 3;
}

static int stopping(const stk_train_loop_config_t *cfg)
{
    return cfg->stop && *cfg->stop;
}

static int rank0(const stk_train_loop_config_t *cfg)
{
    return !cfg->comm || stk_comm_rank(cfg->comm) == 0;
}

/* Data-parallel: whether any rank wants to stop. Every rank must stop at
 * the same optimizer step, or the others would wait for it in the next
 * collective. One process: its own flag. */
static int agree_stop(const stk_train_loop_config_t *cfg, int local, int *stop)
{
    *stop = local;
    if (!cfg->comm)
        return 0;
    int32_t v = local;
    int rc = stk_comm_allreduce(cfg->comm, &v, 1, STK_DTYPE_I32, STK_REDUCE_MAX);
    *stop = v != 0;
    return rc;
}

static double lr0(const stk_optim_t *opt)
{
    double lr = NAN;
    stk_optim_get_lr(opt, 0, &lr);
    return lr;
}

static int save(const stk_train_loop_config_t *cfg, const stk_train_state_t *st)
{
    if (!cfg->checkpoint_dir)
        return 0;
    stk_train_parts_t parts = {cfg->model, cfg->optim, cfg->sched};
    char path[4096];
    int rc = 0;
    /* Data-parallel: rank 0 alone writes (every rank holds the same
     * parameters and state); its outcome reaches every rank, so that none
     * trains on after a failed save. */
    if (rank0(cfg)) {
        rc = stk_train_checkpoint_save(cfg->checkpoint_dir, &parts, st, cfg->extra, cfg->n_extra, cfg->keep_last,
                                       path, sizeof path);
        if (rc == 0 && cfg->on_checkpoint)
            cfg->on_checkpoint(path, st, cfg->user);
    }
    if (cfg->comm) {
        int32_t r0 = rc;
        int crc = stk_comm_broadcast(cfg->comm, &r0, 1, STK_DTYPE_I32, 0);
        if (crc)
            return crc;
        if (r0 && !rc)
            return stk__error(STK_ERANK, "rank 0 could not save the checkpoint (%s)", stk_err_name(r0));
    }
    return rc;
}

/* A stop at an optimizer-step boundary: the checkpoint of where st stands. */
static int stop_here(const stk_train_loop_config_t *cfg, stk_train_state_t *st, uint64_t nb)
{
    int rc = save(cfg, st);
    if (rc)
        return rc;
    return stk__error(-EINTR, "stopped at epoch %" PRIu64 ", batch %" PRIu64 " of %" PRIu64 ", step %" PRIu64,
                      st->epoch + 1, st->loader.batch, nb, st->step);
}

static void reset_epoch_sums(stk_train_state_t *st)
{
    st->ep_loss_sum = 0;
    st->ep_correct = st->ep_seen = 0;
    st->ep_train_s = st->ep_wait_s = 0;
}

/* Trains the batches of epoch st->epoch from st->loader on. Returns 0 when
 * the epoch's batches are done (st->loader = (epoch, nb)), -EINTR after
 * saving where it stopped, or an error. */
static int epoch_batches(const stk_train_loop_config_t *cfg, stk_train_stepper_t *stepper, uint64_t nb,
                         stk_train_state_t *st, stk__train_batches_t *B)
{
    int rc;
    if (st->loader.epoch == st->epoch && st->loader.batch > 0) {
        rc = stk_loader_set_state(cfg->train_loader, &st->loader);
    } else {
        st->loader = (stk_loader_state_t){st->epoch, 0};
        reset_epoch_sums(st);
        rc = stk_loader_set_epoch(cfg->train_loader, st->epoch);
    }
    if (rc == -EINTR)
        return stop_here(cfg, st, nb);
    if (rc)
        return rc;
    stk_model_set_train(cfg->model, 1);
    double t_start = stk__now_s() - st->ep_train_s;
    /* Micro-batches of an open group count in st only once the group's
     * optimizer step is taken: st always describes an optimizer-step
     * boundary, so that whatever ends the loop leaves it consistent with
     * the model, optimizer and loader position (a checkpoint of it, even
     * after an error, resumes exactly). */
    uint64_t micro = st->micro, open = 0, seen = 0, correct = 0;
    double loss_sum = 0;
    /* Data-parallel: a stop takes effect at the step all ranks agreed on. */
    int interrupted = 0, agreed = 0;
    for (;;) {
        if (open == 0 && (cfg->comm ? agreed : stopping(cfg))) {
            st->ep_train_s = stk__now_s() - t_start;
            return stop_here(cfg, st, nb);
        }
        /* On a device the batch after this one is already on its way
         * (feed.c): its copy overlaps this step. It counts nowhere until
         * it is stepped; whatever ends the epoch drops it. */
        stk__train_item_t *it;
        rc = stk__train_batches_next(B, &it, &st->ep_wait_s);
        if (rc == STK_DONE)
            break;
        /* stk_loader_interrupt (a signal's way to end a wait on a stopped
         * worker) stops the run; inside a group, only the wait was cut:
         * the group is finished first. */
        if (rc == -EINTR && (open > 0 || cfg->comm)) {
            interrupted = 1;
            continue;
        }
        if (rc == -EINTR) {
            st->ep_train_s = stk__now_s() - t_start;
            return stop_here(cfg, st, nb);
        }
        if (rc)
            return rc;
        stk_train_step_metrics_t m;
        uint64_t number = it->b.number;
        rc = stk_train_stepper_step(stepper, &it->input, &it->target, number, &m);
        rc = stk__train_batches_done(B, rc);
        if (rc)
            return rc;
        micro++;
        open++;
        loss_sum += (double)m.loss * (double)m.samples;
        correct += (uint64_t)m.correct;
        seen += (uint64_t)m.samples;
        if (m.stepped) {
            /* The model and optimizer took step m.step: st says so before
             * anything else can fail. */
            st->micro = micro;
            st->step = m.step;
            if (stk_train_stepper_loss_scaler(stepper))
                stk_loss_scaler_get_state(stk_train_stepper_loss_scaler(stepper), &st->loss_scale);
            st->loader = (stk_loader_state_t){st->epoch, number + 1};
            st->ep_train_s = stk__now_s() - t_start;
            /* Data-parallel: one small all-reduce per step, the stop vote
             * and the step's figures summed over ranks (counts of one
             * step are exact in f32). */
            if (cfg->comm) {
                float v[4] = {(float)(interrupted || stopping(cfg)), (float)loss_sum, (float)correct, (float)seen};
                if ((rc = stk_comm_allreduce(cfg->comm, v, 4, STK_DTYPE_F32, STK_REDUCE_SUM)) != 0)
                    return rc;
                agreed = v[0] > 0;
                loss_sum = v[1];
                correct = (uint64_t)v[2];
                seen = (uint64_t)v[3];
            }
            st->ep_loss_sum += loss_sum;
            st->ep_correct += correct;
            st->ep_seen += seen;
            open = seen = correct = 0;
            loss_sum = 0;
            /* The end of the epoch saves anyway. */
            if (cfg->checkpoint_steps && st->step % cfg->checkpoint_steps == 0 && number + 1 < nb &&
                (rc = save(cfg, st)) != 0)
                return rc;
        }
        if (cfg->on_step) {
            double t = stk__now_s() - t_start, n = (double)(st->ep_seen + seen);
            stk_train_progress_t p = {
                .epoch = st->epoch,
                .batch = number + 1,
                .batches = nb,
                .step = st->step,
                .loss = n > 0 ? (st->ep_loss_sum + loss_sum) / n : NAN,
                .acc = n > 0 ? (double)(st->ep_correct + correct) / n : NAN,
                .lr = lr0(cfg->optim),
                .images_per_s = t > 0 ? n / t : 0,
                .data_wait = t > 0 ? st->ep_wait_s / t : 0,
                .last = &m,
            };
            cfg->on_step(&p, cfg->user);
        }
    }
    if (open)
        return stk__error(STK_ESTATE, "epoch %" PRIu64 " ended inside an accumulation group", st->epoch + 1);
    st->ep_train_s = stk__now_s() - t_start;
    st->loader = (stk_loader_state_t){st->epoch, nb};
    return 0;
}

/* The batches of epoch st->epoch, the one fetched ahead dropped however
 * they end. */
static int train_epoch(const stk_train_loop_config_t *cfg, stk_train_stepper_t *stepper, uint64_t nb,
                       stk_train_state_t *st, stk__train_batches_t *B)
{
    return stk__train_batches_drop(B, epoch_batches(cfg, stepper, nb, st, B));
}

/* Evaluation, the history row, the caller's callback and the checkpoint
 * of a trained epoch. */
static int end_epoch(const stk_train_loop_config_t *cfg, stk_train_state_t *st)
{
    stk_train_epoch_t row = {
        .epoch = st->epoch + 1,
        .step = st->step,
        .train_loss = st->ep_seen ? st->ep_loss_sum / (double)st->ep_seen : NAN,
        .train_acc = st->ep_seen ? (double)st->ep_correct / (double)st->ep_seen : NAN,
        .test_loss = NAN,
        .test_acc = NAN,
        .test_topk = NAN,
        .lr = lr0(cfg->optim),
        .images_per_s = st->ep_train_s > 0 ? (double)st->ep_seen / st->ep_train_s : 0,
        .data_wait = st->ep_train_s > 0 ? st->ep_wait_s / st->ep_train_s : 0,
    };
    double t0 = stk__now_s();
    int rc;
    if (cfg->eval_loader) {
        stk_train_eval_t ev;
        /* Data-parallel: every rank evaluates its part with rank 0's
         * batchnorm statistics (those a checkpoint holds), to the end (a
         * stop is agreed after it), and the sums are global. */
        if (cfg->comm && cfg->stepper.ddp && (rc = stk_ddp_broadcast_buffers(cfg->stepper.ddp)) != 0)
            return rc;
        rc = stk_train_evaluate(cfg->model, cfg->eval_loader, cfg->eval_inputs, cfg->topk,
                                cfg->comm ? NULL : cfg->stop, &ev);
        if (rc == 0 && cfg->comm) {
            double n = (double)ev.samples;
            float v[4] = {ev.samples ? (float)(ev.loss * n) : 0.f, (float)(ev.top1 * n), (float)(ev.topk * n), (float)n};
            if ((rc = stk_comm_allreduce(cfg->comm, v, 4, STK_DTYPE_F32, STK_REDUCE_SUM)) != 0)
                return rc;
            ev.samples = (uint64_t)v[3];
            ev.loss = v[3] > 0 ? v[0] / v[3] : NAN;
            ev.top1 = v[3] > 0 ? v[1] / v[3] : NAN;
            ev.topk = v[3] > 0 ? v[2] / v[3] : NAN;
        }
        if (rc == -EINTR) {
            /* Trained, not evaluated: the checkpoint says (epoch, nb), and
             * a resumed run evaluates first. */
            if ((rc = save(cfg, st)) != 0)
                return rc;
            return stk__error(-EINTR, "stopped in the evaluation after epoch %" PRIu64 ", step %" PRIu64,
                              st->epoch + 1, st->step);
        }
        if (rc)
            return rc;
        if (!isfinite(ev.loss))
            return stk__error(-EDOM, "evaluation loss is %s after epoch %" PRIu64 ": training diverged (lower the "
                              "lr?)", isnan(ev.loss) ? "NaN" : "infinite", st->epoch + 1);
        row.test_loss = ev.loss;
        row.test_acc = ev.top1;
        row.test_topk = ev.topk;
    }
    row.epoch_s = st->ep_train_s + (stk__now_s() - t0);
    if ((rc = stk_train_state_push_epoch(st, &row)) != 0)
        return rc;
    st->total_train_s += st->ep_train_s;
    st->total_wait_s += st->ep_wait_s;
    st->total_images += st->ep_seen;
    st->epoch++;
    st->loader = (stk_loader_state_t){st->epoch, 0};
    reset_epoch_sums(st);
    if (cfg->on_epoch && (rc = cfg->on_epoch(&row, st, cfg->user)) != 0)
        return rc;
    return save(cfg, st);
}

int stk_train_run(const stk_train_loop_config_t *cfg, stk_train_state_t *st)
{
    if (!cfg || !st || !cfg->model || !cfg->optim || !cfg->train_loader || !cfg->train_inputs)
        return stk__error(-EINVAL, "stk_train_run: NULL argument (model, optimizer, train loader and inputs are "
                          "required)");
    if (cfg->eval_loader && !cfg->eval_inputs)
        return stk__error(-EINVAL, "stk_train_run: an eval loader needs eval inputs");
    if (cfg->epochs == 0 || cfg->stop_after > cfg->epochs)
        return stk__error(STK_ECONFIG, "train loop: %" PRIu64 " epochs, stop after %" PRIu64, cfg->epochs,
                          cfg->stop_after);
    uint64_t nb = stk_loader_len(cfg->train_loader);
    if (nb == 0)
        return stk__error(STK_EEMPTY, "train loop: the train loader has no batch in an epoch");
    if (st->loader.epoch == st->epoch && st->loader.batch > nb)
        return stk__error(-ERANGE, "train loop: the state is at batch %" PRIu64 " of an epoch of %" PRIu64,
                          st->loader.batch, nb);
    if (cfg->comm) {
        /* Each rank's shard and order depend on the world size: a resume
         * keeps it, and every rank must resume from the same step. */
        int world = stk_comm_size(cfg->comm);
        uint32_t was = st->world_size ? st->world_size : 1;
        int resumed = st->step > 0 || st->epoch > 0 || st->micro > 0;
        if (resumed && was != (uint32_t)world)
            return stk__error(STK_ECONFIG, "train loop: the state comes from a run of %u rank%s, this run has %d: "
                              "resume with %u (each rank's data depends on the world size)", was, was == 1 ? "" : "s",
                              world, was);
        int64_t lo = (int64_t)st->step, hi = (int64_t)st->step;
        int rc = stk_comm_allreduce(cfg->comm, &lo, 1, STK_DTYPE_I64, STK_REDUCE_MIN);
        if (rc == 0)
            rc = stk_comm_allreduce(cfg->comm, &hi, 1, STK_DTYPE_I64, STK_REDUCE_MAX);
        if (rc)
            return rc;
        if (lo != hi)
            return stk__error(STK_ECONFIG, "train loop: ranks start at different steps (%" PRId64 " to %" PRId64
                              "): every rank must resume from the same checkpoint", lo, hi);
        st->world_size = (uint32_t)world;
    } else if (st->world_size > 1 && (st->step > 0 || st->epoch > 0 || st->micro > 0)) {
        return stk__error(STK_ECONFIG, "train loop: the state comes from a run of %u ranks, this is one process: "
                          "resume with %u ranks", st->world_size, st->world_size);
    }
    stk_train_stepper_config_t scfg = cfg->stepper;
    scfg.batches_per_epoch = nb;
    stk_train_stepper_t *stepper = NULL;
    int rc = stk_train_stepper_create(&stepper, cfg->model, cfg->optim, cfg->sched, &scfg);
    if (rc)
        return rc;
    stk_train_stepper_set_steps(stepper, st->step);
    /* A resumed run's loss scale goes on from where it stood. */
    stk_loss_scaler_t *scaler = stk_train_stepper_loss_scaler(stepper);
    if (scaler && st->loss_scale.scale > 0 && (rc = stk_loss_scaler_set_state(scaler, &st->loss_scale)) != 0) {
        stk_train_stepper_destroy(&stepper);
        return rc;
    }
    /* The model advances its step (dropout's key) on each training
     * forward: a resumed run starts it where the state stands. */
    stk_model_set_step(cfg->model, st->micro);
    uint64_t last = cfg->stop_after ? cfg->stop_after : cfg->epochs;
    stk__train_batches_t batches;
    stk__train_batches_init(&batches, cfg->model, cfg->train_loader, cfg->train_inputs);
    while (rc == 0 && st->epoch < last) {
        rc = train_epoch(cfg, stepper, nb, st, &batches);
        if (rc == 0)
            rc = end_epoch(cfg, st);
        int stop = 0;
        if (rc == 0 && st->epoch < last)
            rc = agree_stop(cfg, stopping(cfg), &stop);
        if (rc == 0 && stop)
            rc = stk__error(-EINTR, "stopped after epoch %" PRIu64 ", step %" PRIu64, st->epoch, st->step);
    }
    stk__train_batches_fini(&batches);
    stk_train_stepper_destroy(&stepper);
    return rc;
}
