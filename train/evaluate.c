/* SPDX-License-Identifier: MIT */
/* Evaluation: one forward-only pass over a loader's epoch in evaluation
 * mode, scoring the logits in double (mean cross-entropy, top-1 and top-k
 * accuracy). A short last batch is padded with zeros to the size of the
 * first one, so that the model keeps one plan for the whole pass (in
 * evaluation mode no sample affects another, so the padding changes
 * nothing but is not scored). */
#define _GNU_SOURCE
#include "internal.h"
#include "stoker/train.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Adds the cross-entropy and the top-1 / top-k hits of the first n rows. */
static void score(const float *logits, int64_t classes, const int64_t *labels, size_t n, int topk, double *loss_sum,
                  uint64_t *top1, uint64_t *topk_hits)
{
    for (size_t i = 0; i < n; i++) {
        const float *z = logits + (size_t)classes * i;
        int64_t y = labels[i], arg = 0, above = 0;
        for (int64_t c = 1; c < classes; c++)
            if (z[c] > z[arg])
                arg = c;
        /* The label's rank: classes ahead of it, ties going to the lower
         * index, as the engine's top-k counts. */
        for (int64_t c = 0; c < classes; c++)
            if (z[c] > z[y] || (z[c] == z[y] && c < y))
                above++;
        double lse = 0;
        for (int64_t c = 0; c < classes; c++)
            lse += exp((double)z[c] - (double)z[arg]);
        *loss_sum += log(lse) + (double)z[arg] - (double)z[y];
        *top1 += above == 0;
        *topk_hits += above < topk;
    }
}

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
    double loss_sum = 0;
    uint64_t top1 = 0, topk_hits = 0, seen = 0;
    size_t full = 0, pad_cap = 0;
    float *pad = NULL;
    for (;;) {
        if (stop && *stop) {
            rc = stk__error(-EINTR, "evaluation stopped after %llu samples", (unsigned long long)seen);
            break;
        }
        stk_batch_t b;
        rc = stk_loader_next(loader, &b);
        if (rc == STK_DONE) {
            rc = 0;
            break;
        }
        if (rc)
            break;
        stk_tensor_t input, target;
        rc = stk_train_inputs_get(inputs, &b, &input, &target);
        if (rc == 0 && (input.dtype != STK_DTYPE_F32 || target.dtype != STK_DTYPE_I64))
            rc = stk__error(STK_ECONFIG, "evaluation needs f32 inputs and integer labels");
        size_t n = b.size;
        int64_t classes = stk_model_num_classes(model);
        const int64_t *labels = rc == 0 ? target.data : NULL;
        for (size_t i = 0; rc == 0 && i < n; i++)
            if (labels[i] < 0 || labels[i] >= classes)
                rc = stk__error(-EINVAL, "evaluation: sample %llu has label %lld, the model has %lld classes",
                                (unsigned long long)b.indices[i], (long long)labels[i], (long long)classes);
        if (rc == 0 && full == 0)
            full = n;
        const float *x = rc == 0 ? input.data : NULL;
        size_t per = rc == 0 ? (size_t)(stk_tensor_numel(&input) / (int64_t)(n ? n : 1)) : 0;
        if (rc == 0 && n < full) {
            if (pad_cap < full * per) {
                free(pad);
                pad_cap = 0;
                if (!(pad = malloc(full * per * sizeof *pad)))
                    rc = stk__error(-ENOMEM, "evaluation: out of memory");
                else
                    pad_cap = full * per;
            }
            if (rc == 0) {
                memcpy(pad, x, n * per * sizeof *pad);
                memset(pad + n * per, 0, (full - n) * per * sizeof *pad);
                x = pad;
            }
        }
        const float *logits = NULL;
        int64_t lb, lc;
        if (rc == 0)
            rc = stk_model_forward(model, x, (int64_t)(n < full ? full : n), NULL, NULL, NULL);
        if (rc == 0)
            rc = stk_model_logits(model, &logits, &lb, &lc);
        if (rc == 0)
            score(logits, lc, labels, n, topk, &loss_sum, &top1, &topk_hits);
        stk_loader_release(loader, &b);
        if (rc)
            break;
        seen += n;
    }
    free(pad);
    stk_model_set_train(model, was_train);
    if (rc)
        return rc;
    out->samples = seen;
    out->loss = seen ? loss_sum / (double)seen : NAN;
    out->top1 = seen ? (double)top1 / (double)seen : NAN;
    out->topk = seen ? (double)topk_hits / (double)seen : NAN;
    return 0;
}
