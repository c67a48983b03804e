/* SPDX-License-Identifier: MIT */
/* CPU backend, recurrent stacks (see cpu_rnn.h): batch splitting and the
 * backend's entry points (cpu.h). Separate from the passes because it
 * only cuts a call into slices for parts, each a whole op that runs the
 * passes of cpu_rnn.c on its own. */
#include "cpu_rnn.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include <omp.h>

#include "stoker/common.h"

/* ------------------------------------------------------ batch splitting */

/* With OpenMP threads, oneDNN's lstm splits every step's GEMM and cell
 * among them: a handful of barriers per step and layer, hundreds per
 * training step, each a sleep and a wake-up under the passive wait policy
 * and a lost time slice whenever the machine is shared. Sequences are
 * independent, so instead the batch is cut into one slice per thread, each
 * run single-threaded end to end by a part (a whole op of its own, with
 * its own primitives, stream and scratchpad): the threads meet once per
 * forward and once per backward. Results differ from the unsplit op's by
 * float rounding only (GEMM blocking; the weight gradient is the sum of
 * the parts'); the dropout mask is indexed by the element's place in the
 * whole batch, so it is the same. */

static size_t param_count(const stk__rnn_desc_t *d)
{
    size_t cnt = 0, off = stk__rnn_param_offset(d, d->layers - 1, d->bidirectional ? 1 : 0, 3, &cnt);
    return off + cnt;
}

/* The most sequences one part holds when np share a batch: an even
 * share and a quarter more, room to even out the work of ragged lengths. */
static int64_t part_cap(int64_t batch, int np)
{
    int64_t share = (batch + np - 1) / np, cap = share + share / 4 + 1;
    return cap < batch ? cap : batch;
}

/* How many parts this call is split into (0: none) and their sequence
 * ranges in op->pb: contiguous slices of about equal work (the sum of
 * their lengths). A call the parts cannot take (bad sizes or lengths,
 * nested in a parallel region, one thread) goes to the whole op, which
 * also reports the errors. */
static int split_plan(stk__rnn_op_t *op, const stk__rnn_args_t *a)
{
    int np = op->np, nt = omp_get_max_threads();
    if (np > nt)
        np = nt;
    if (np < 2 || omp_in_parallel() || a->n > op->d.batch || a->t < 1 || a->t > op->d.steps ||
        a->n < (int64_t)np * PART_MIN)
        return 0;
    int64_t n = a->n, cap = op->part[0]->d.batch, total = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t L = a->lengths ? a->lengths[i] : a->t;
        if (L < 0 || L > a->t)
            return 0;
        total += L + 1; /* + 1: a sequence costs its copies even when empty */
    }
#define WORK(i) ((a->lengths ? a->lengths[i] : a->t) + 1)
    int64_t k = 0, acc = 0; /* acc: the work of sequences before k */
    op->pb[0] = 0;
    for (int p = 0; p < np - 1; p++) {
        int64_t lo = op->pb[p] + 1, hi = op->pb[p] + cap, left = np - 1 - p;
        if (lo < n - left * cap)
            lo = n - left * cap;
        if (hi > n - left)
            hi = n - left;
        if (lo > hi)
            return 0;
        int64_t target = total * (p + 1) / np;
        while (k < lo)
            acc += WORK(k), k++;
        while (k < hi && acc + WORK(k) <= target)
            acc += WORK(k), k++;
        if (k < hi && acc < target && acc + WORK(k) - target < target - acc)
            acc += WORK(k), k++;
        op->pb[p + 1] = k;
    }
#undef WORK
    op->pb[np] = n;
    if (n - op->pb[np - 1] < 1 || n - op->pb[np - 1] > cap)
        return 0;
    return np;
}

/* Runs the parts side by side: forward (bwd = 0) or backward. */
static int run_parts(stk__rnn_op_t *op, int np, int bwd, int train, const stk__rnn_args_t *a)
{
    int rcs[RNN_PARTS] = {0};
    int64_t t = a->t, in0 = op->d.input, dh = op->nd * op->d.hidden;
#pragma omp parallel for num_threads(np) schedule(static, 1)
    for (int p = 0; p < np; p++) {
        stk__rnn_op_t *q = op->part[p];
        int64_t b0 = op->pb[p];
        stk__rnn_args_t b = *a;
        b.n = op->pb[p + 1] - b0;
        b.lengths = a->lengths ? a->lengths + b0 : NULL;
        b.x = a->x ? a->x + b0 * t * in0 : NULL;
        b.y = a->y ? a->y + b0 * t * dh : NULL;
        b.dy = a->dy ? a->dy + b0 * t * dh : NULL;
        b.dx = a->dx ? a->dx + b0 * t * in0 : NULL;
        b.dw = p == 0 ? a->dw : op->pdw[p];
        int rc = bwd ? stk__cpu_rnn_core_backward(q, &b) : stk__cpu_rnn_core_forward(q, train, &b, a->n, b0);
        if (rc < 0)
            snprintf(op->perr[p], sizeof(op->perr[p]), "%s", stk_error_message());
        rcs[p] = rc;
    }
    for (int p = 0; p < np; p++)
        if (rcs[p] < 0)
            return stk__error(rcs[p], "%s", op->perr[p]);
    return 0;
}

int stk__cpu_rnn_forward(void *ctx, stk__rnn_op_t *op, int train, const stk__rnn_args_t *a)
{
    (void)ctx;
    op->split = 0;
    op->trained = 0;
    int np = split_plan(op, a);
    if (np == 0)
        return stk__cpu_rnn_core_forward(op, train, a, a->n, 0);
    int rc = run_parts(op, np, 0, train, a);
    if (rc < 0)
        return rc;
    op->n = a->n;
    op->t = a->t;
    op->split = np;
    op->trained = 1;
    return 0;
}

int stk__cpu_rnn_backward(void *ctx, stk__rnn_op_t *op, const stk__rnn_args_t *a)
{
    (void)ctx;
    if (!op->split)
        return stk__cpu_rnn_core_backward(op, a);
    if (!op->trained)
        return stk__error(STK_ESTATE, "rnn: backward without a forward before it");
    if (a->n != op->n || a->t != op->t)
        return stk__error(-EINVAL, "rnn: backward of %lld x %lld, but the forward was %lld x %lld", (long long)a->n,
                          (long long)a->t, (long long)op->n, (long long)op->t);
    int np = op->split, rc = run_parts(op, np, 1, 0, a);
    if (rc < 0)
        return rc;
    int64_t nw = (int64_t)param_count(&op->d);
    float *dw = a->dw;
#pragma omp parallel for num_threads(np) schedule(static)
    for (int64_t i = 0; i < nw; i++) {
        float v = dw[i];
        for (int p = 1; p < np; p++)
            v += op->pdw[p][i];
        dw[i] = v;
    }
    return 0;
}

int stk__cpu_rnn_parts(const stk__rnn_op_t *op)
{
    return op->split;
}

void stk__cpu_rnn_destroy(void *ctx, stk__rnn_op_t *op)
{
    (void)ctx;
    if (!op)
        return;
    for (int p = 0; p < RNN_PARTS; p++) {
        stk__cpu_rnn_core_destroy(op->part[p]);
        free(op->pdw[p]);
    }
    stk__cpu_rnn_core_destroy(op);
}

int stk__cpu_rnn_create(void *ctx, const stk__rnn_desc_t *d, stk__rnn_op_t **out)
{
    stk__rnn_op_t *op;
    int rc = stk__cpu_rnn_core_create(ctx, d, 0, &op);
    if (rc < 0)
        return rc;
    int np = omp_in_parallel() ? 1 : omp_get_max_threads();
    if (np > RNN_PARTS)
        np = RNN_PARTS;
    if (np > d->batch / PART_MIN)
        np = (int)(d->batch / PART_MIN);
    if (np >= 2) {
        stk__rnn_desc_t pd = *d;
        pd.batch = part_cap(d->batch, np);
        size_t nw = param_count(d);
        for (int p = 0; p < np; p++) {
            if ((rc = stk__cpu_rnn_core_create(ctx, &pd, 1, &op->part[p])) < 0)
                goto fail;
            if (p > 0 && !(op->pdw[p] = stk__cpu_rnn_zalloc(nw * sizeof(float)))) {
                rc = stk__error(-ENOMEM, "rnn: out of memory for a part's weight gradient");
                goto fail;
            }
        }
        op->np = np;
    }
    *out = op;
    return 0;
fail:
    stk__cpu_rnn_destroy(ctx, op);
    return rc;
}
