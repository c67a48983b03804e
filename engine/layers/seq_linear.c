/* SPDX-License-Identifier: MIT */
/* linear over a sequence (N x T x F, each step's features), linear.c's half
 * for sequence inputs. A batch of t < T steps (the model pads a shorter
 * batch to T) would waste the padded steps' rows: so the t steps of each
 * sample are gathered into a dense block of n t rows, the product runs on
 * those only (one backend plan per t, made when a batch of that length
 * first comes), and the result is scattered back, the padded steps' rows
 * left at zero. A language model over words, bucketed, has t around 10 of
 * T = 24. */
#include "seq_linear.h"

#include <errno.h>
#include <stdlib.h>

typedef struct seq_linear {
    int64_t n, T;
    stk__op_t **op; /* [T + 1]: op[t] for n t rows, op[T] made at plan time */
    float *xs, *ys; /* the gathered rows: input [n T, F], output (or its gradient) [n T, O] */
    int64_t *idx, *idx_host;
    int64_t idx_t;  /* the t whose rows idx holds; 0: none yet */
} seq_linear_t;

static stk__linear_desc_t desc_for(const stk__layer_t *l, int64_t rows)
{
    return (stk__linear_desc_t){.n = rows, .in = l->in_w, .out = l->w, .bias = l->d.bias};
}

void stk__seq_linear_unplan(stk_model_t *m, int i, void *plan)
{
    (void)i;
    seq_linear_t *p = plan;
    if (!p)
        return;
    const stk__backend_iface_t *be = m->be.iface;
    for (int64_t t = 0; p->op && t <= p->T; t++)
        be->op_destroy(m->be.ctx, p->op[t]);
    be->free(m->be.ctx, p->xs);
    be->free(m->be.ctx, p->ys);
    be->free(m->be.ctx, p->idx);
    free(p->idx_host);
    free(p->op);
    free(p);
}

int stk__seq_linear_plan(stk_model_t *m, int i, int64_t n, void **plan)
{
    const stk__layer_t *l = &m->layers[i];
    const stk__backend_iface_t *be = m->be.iface;
    if (!be->gather_rows || !be->scatter_add_rows)
        return stk__error(STK_EDEVICE, "the %s backend cannot gather a sequence's steps", be->name);
    seq_linear_t *p = calloc(1, sizeof(*p));
    if (!p)
        return stk__error(-ENOMEM, "out of memory");
    p->n = n;
    p->T = l->c;
    size_t rows = (size_t)(n * l->c);
    int rc = 0;
    if (!(p->op = calloc((size_t)p->T + 1, sizeof(*p->op))) || !(p->idx_host = malloc(rows * sizeof(int64_t))) ||
        !(p->xs = be->alloc(m->be.ctx, rows * (size_t)l->in_w * sizeof(float))) ||
        !(p->ys = be->alloc(m->be.ctx, rows * (size_t)l->w * sizeof(float))) ||
        !(p->idx = be->alloc(m->be.ctx, rows * sizeof(int64_t)))) {
        rc = stk__error(-ENOMEM, "out of memory");
    } else {
        stk__linear_desc_t d = desc_for(l, (int64_t)rows);
        rc = be->linear_create(m->be.ctx, &d, &p->op[p->T]);
    }
    if (rc < 0) {
        stk__seq_linear_unplan(m, i, p);
        return rc;
    }
    *plan = p;
    return 0;
}

/* The batch's steps t when the layer works on gathered rows (t < T), with
 * the plan and the row list for t ready; 0 when it works on all rows. */
static int64_t gathered_steps(stk_model_t *m, int i, seq_linear_t *p, int *rc)
{
    int64_t t = m->steps;
    *rc = 0;
    if (t <= 0 || t >= p->T)
        return 0;
    const stk__layer_t *l = &m->layers[i];
    const stk__backend_iface_t *be = m->be.iface;
    if (!p->op[t]) {
        stk__linear_desc_t d = desc_for(l, p->n * t);
        if ((*rc = be->linear_create(m->be.ctx, &d, &p->op[t])) < 0)
            return 0;
    }
    if (p->idx_t != t) {
        for (int64_t s = 0; s < p->n; s++)
            for (int64_t k = 0; k < t; k++)
                p->idx_host[s * t + k] = s * p->T + k;
        if ((*rc = be->upload(m->be.ctx, p->idx, p->idx_host, (size_t)(p->n * t) * sizeof(int64_t))) < 0)
            return 0;
        p->idx_t = t;
    }
    return t;
}

int stk__seq_linear_forward(stk_model_t *m, int i)
{
    const stk__backend_iface_t *be = m->be.iface;
    const stk__layer_t *l = &m->layers[i];
    seq_linear_t *p = stk__plan(m, i);
    const float *x = stk__input(m, i, 0)->y;
    int rc;
    int64_t t = gathered_steps(m, i, p, &rc);
    if (rc < 0)
        return rc;
    if (!t)
        return be->linear_forward(m->be.ctx, p->op[p->T], x, stk__param(m, l, 0), stk__param(m, l, 1), l->y);
    int64_t rows = p->n * t;
    if ((rc = be->gather_rows(m->be.ctx, rows, l->in_w, p->n * p->T, p->idx, x, p->xs)) < 0 ||
        (rc = be->linear_forward(m->be.ctx, p->op[t], p->xs, stk__param(m, l, 0), stk__param(m, l, 1), p->ys)) < 0)
        return rc;
    be->zero(m->be.ctx, l->y, (size_t)(p->n * p->T * l->w));
    be->scatter_add_rows(m->be.ctx, rows, l->w, p->idx, -1, p->ys, l->y);
    return 0;
}

int stk__seq_linear_backward(stk_model_t *m, int i)
{
    const stk__backend_iface_t *be = m->be.iface;
    const stk__layer_t *l = &m->layers[i];
    seq_linear_t *p = stk__plan(m, i);
    int rc;
    int64_t t = gathered_steps(m, i, p, &rc), rows = p->n * (t ? t : p->T);
    if (rc < 0)
        return rc;
    stk__op_t *op = p->op[t ? t : p->T];
    /* the rows forward used: gathered, or all of them */
    const float *x = t ? p->xs : stk__input(m, i, 0)->y, *dy = l->dy;
    if (t) {
        if ((rc = be->gather_rows(m->be.ctx, rows, l->w, p->n * p->T, p->idx, l->dy, p->ys)) < 0)
            return rc;
        dy = p->ys;
    }
    float *gw = stk__grad_target(m, l, 0);
    /* As linear.c: the bias gradient bypasses the one-tensor scratch. */
    float *gb = NULL, *bscr = NULL;
    if (l->nparam > 1)
        gb = m->grads_zero ? stk__grad(m, l, 1) : (bscr = m->act_scratch);
    if ((rc = be->linear_backward_weights(m->be.ctx, op, x, dy, gw, gb)) < 0)
        return rc;
    stk__grad_finish(m, l, 0, gw);
    if (bscr)
        be->accumulate(m->be.ctx, stk__param_count(m, l, 1), bscr, stk__grad(m, l, 1));
    int acc;
    float *dx = stk__dx_target(m, i, 0, &acc);
    if (!dx)
        return 0;
    if (!t) {
        rc = be->linear_backward_data(m->be.ctx, op, dy, stk__param(m, l, 0), dx);
    } else if ((rc = be->linear_backward_data(m->be.ctx, op, dy, stk__param(m, l, 0), p->xs)) == 0) {
        /* the gathered input is not needed any more: it holds dx's rows */
        be->zero(m->be.ctx, dx, (size_t)(p->n * p->T * l->in_w));
        be->scatter_add_rows(m->be.ctx, rows, l->in_w, p->idx, -1, p->xs, dx);
    }
    if (rc == 0)
        stk__dx_finish(m, i, 0, dx, acc);
    return rc;
}
