/* SPDX-License-Identifier: MIT */
/* Evaluation: one forward pass over a loader's epoch in evaluation mode,
 * with the model's own loss and the engine's top-1 and top-k counts, so
 * that nothing here reads the model's memory (which may live on a
 * device). A short last batch costs one plan, once: the model keeps the
 * plans of the sizes it has seen. */
#define _GNU_SOURCE
#include "internal.h"
#include "train_internal.h"
#include "stoker/train.h"

#include <errno.h>
#include <math.h>
#include <string.h>

int stk_train_evaluate(stk_model_t *model, stk_loader_t *loader, stk_train_inputs_t *inputs, int topk,
                       const volatile sig_atomic_t *stop, stk_train_eval_t *out)
{
    if (!model || !loader || !inputs || !out)
        return stk__error(-EINVAL, "stk_train_evaluate: NULL argument");
    if (topk < 1)
        return stk__error(-EINVAL, "stk_train_evaluate: topk %d (at least 1)", topk);
    memset(out, 0, sizeof *out);
    stk_loader_state_t pos;
    stk_loader_get_state(loader, &pos);
    int rc = stk_loader_set_epoch(loader, pos.epoch);
    if (rc)
        return rc;
    int was_train = stk_model_is_train(model);
    stk_model_set_train(model, 0);
    int64_t classes = stk_model_num_classes(model);
    /* On a device one batch ahead, as in training (feed.c). */
    stk__train_batches_t B;
    stk__train_batches_init(&B, model, loader, inputs);
    double loss_sum = 0;
    uint64_t top1 = 0, topk_hits = 0, seen = 0;
    for (;;) {
        if (stop && *stop) {
            rc = stk__error(-EINTR, "evaluation stopped after %llu samples", (unsigned long long)seen);
            break;
        }
        stk__train_item_t *it;
        rc = stk__train_batches_next(&B, &it, NULL);
        if (rc == STK_DONE) {
            rc = 0;
            break;
        }
        if (rc)
            break;
        const stk_tensor_t *target = &it->target;
        if (target->dtype != STK_DTYPE_I64)
            rc = stk__error(STK_ECONFIG, "evaluation needs integer labels");
        size_t n = it->b.size;
        const int64_t *labels = rc == 0 ? target->data : NULL;
        /* per-step targets (a language model) are checked by the loss, by
         * sample and step */
        int per_step = rc == 0 && target->ndim == 2;
        /* Checked here to name the sample by its index in the data set. */
        for (size_t i = 0; rc == 0 && !per_step && i < n; i++)
            if (labels[i] < 0 || labels[i] >= classes)
                rc = stk__error(-EINVAL, "evaluation: sample %llu has label %lld, the model has %lld classes",
                                (unsigned long long)it->b.indices[i], (long long)labels[i], (long long)classes);
        float loss = NAN;
        int64_t c1 = 0, ck = 0;
        if (rc == 0)
            rc = stk_model_forward_tensor(model, &it->input, target, &loss);
        if (rc == 0)
            rc = stk_model_count_correct(model, labels, &c1);
        if (rc == 0)
            rc = topk == 1 || per_step ? (ck = c1, 0) : stk_model_count_topk(model, labels, topk, &ck);
        if ((rc = stk__train_batches_done(&B, rc)) != 0)
            break;
        /* the loss is a mean over what it counted: samples, or the steps
         * of a per-step loss (characters) */
        uint64_t counted = (uint64_t)stk_model_loss_count(model);
        loss_sum += (double)loss * (double)counted;
        top1 += (uint64_t)c1;
        topk_hits += (uint64_t)ck;
        seen += counted;
    }
    stk__train_batches_fini(&B);
    stk_model_set_train(model, was_train);
    if (rc)
        return rc;
    out->samples = seen;
    out->loss = seen ? loss_sum / (double)seen : NAN;
    out->top1 = seen ? (double)top1 / (double)seen : NAN;
    out->topk = seen ? (double)topk_hits / (double)seen : NAN;
    return 0;
}
