/* SPDX-License-Identifier: MIT */
/* cross_entropy over a sequence (logits N x T x V, per-step targets
 * N x t): the mean over the steps that count, as torch's CrossEntropyLoss
 * with ignore_index on the flattened steps. A step counts when it is
 * within its sample's length and its target is not ignore_index. Those
 * steps' logits are gathered into a dense block, so the softmax, the loss,
 * the top-1 count and the gradient cost what the counted steps cost, and
 * every other step gets a zero gradient. loss.c hands sequence logits
 * here. */
#include "seq_loss.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Host lists of the counted steps, for the current batch size. */
typedef struct seq_xent_plan {
    int64_t *idx, *lab;
    int64_t count;
} seq_xent_plan_t;

int stk__seq_xent_infer(stk_model_t *m, int i, const char *where)
{
    stk__layer_t *l = &m->layers[i];
    const stk__layer_t *a = stk__input(m, i, 0);
    if (a->dtype != STK_DTYPE_F32)
        return stk__error(STK_ESHAPE, "%s: key 'input': the loss needs f32 logits", where);
    m->loss_layer = i;
    m->logits_layer = l->in[0];
    m->loss_per_step = 1;
    l->seq = 0;
    l->c = l->h = l->w = 1;
    return 0;
}

/* Device memory: the softmax and the gathered logits (then their
 * gradient) of every step, and the staged step and target lists. */
size_t stk__seq_xent_extra(const stk_model_t *m, int i, int64_t n)
{
    const stk__layer_t *a = stk__input(m, i, 0);
    size_t rows = (size_t)(n * a->c);
    return 2 * rows * (size_t)a->w * sizeof(float) + 2 * rows * sizeof(int64_t);
}

typedef struct areas {
    float *prob, *compact;
    int64_t *idx, *lab;
} areas_t;

static areas_t areas_of(const stk_model_t *m, int i)
{
    const stk__layer_t *l = &m->layers[i], *a = stk__input(m, i, 0);
    size_t rows = (size_t)(m->act_batch * a->c), v = (size_t)a->w;
    areas_t r;
    r.prob = l->extra;
    r.compact = r.prob + rows * v;
    r.idx = (int64_t *)(r.compact + rows * v);
    r.lab = r.idx + rows;
    return r;
}

void stk__seq_xent_unplan(stk_model_t *m, int i, void *plan)
{
    (void)m;
    (void)i;
    seq_xent_plan_t *p = plan;
    if (!p)
        return;
    free(p->idx);
    free(p->lab);
    free(p);
}

int stk__seq_xent_plan(stk_model_t *m, int i, int64_t n, void **plan)
{
    if (!m->be.iface->gather_rows || !m->be.iface->scatter_add_rows)
        return stk__error(STK_EDEVICE, "the %s backend cannot gather a sequence's counted steps", m->be.iface->name);
    size_t rows = (size_t)(n * stk__input(m, i, 0)->c);
    seq_xent_plan_t *p = calloc(1, sizeof(*p));
    if (p) {
        p->idx = malloc(rows * sizeof(int64_t));
        p->lab = malloc(rows * sizeof(int64_t));
    }
    if (!p || !p->idx || !p->lab) {
        stk__seq_xent_unplan(m, i, p);
        return stk__error(-ENOMEM, "out of memory");
    }
    *plan = p;
    return 0;
}

int stk__seq_xent_forward(stk_model_t *m, int i)
{
    const stk__backend_iface_t *be = m->be.iface;
    const stk__layer_t *l = &m->layers[i], *a = stk__input(m, i, 0);
    seq_xent_plan_t *p = stk__plan(m, i);
    if (!m->labels)
        return 0;
    int64_t T = a->c, V = a->w, steps = m->steps, nv = 0;
    for (int64_t s = 0; s < m->batch; s++) {
        const int64_t *lab = m->labels + s * steps;
        for (int64_t t = 0; t < m->lengths[s]; t++) {
            if (lab[t] == l->d.ignore_index)
                continue;
            if (lab[t] < 0 || lab[t] >= V)
                return stk__error(-EINVAL, "cross_entropy: target %lld of sample %lld, step %lld is outside [0, %lld) "
                                           "(and not ignore_index %lld)",
                                  (long long)lab[t], (long long)s, (long long)t, (long long)V,
                                  (long long)l->d.ignore_index);
            p->idx[nv] = s * T + t;
            p->lab[nv] = lab[t];
            nv++;
        }
    }
    p->count = nv;
    m->loss_count = nv;
    if (nv == 0) { /* nothing counted: loss 0, none correct */
        static const unsigned char zero[16];
        return be->upload(m->be.ctx, m->stats, zero, sizeof(zero));
    }
    areas_t ar = areas_of(m, i);
    int rc;
    if ((rc = be->upload(m->be.ctx, ar.idx, p->idx, (size_t)nv * sizeof(int64_t))) < 0 ||
        (rc = be->upload(m->be.ctx, ar.lab, p->lab, (size_t)nv * sizeof(int64_t))) < 0 ||
        (rc = be->gather_rows(m->be.ctx, nv, V, m->batch * T, ar.idx, a->y, ar.compact)) < 0 ||
        (rc = be->xent_forward(m->be.ctx, nv, V, ar.compact, ar.lab, NULL, l->d.label_smoothing, ar.prob,
                               (float *)m->stats)) < 0)
        return rc;
    return be->count_correct(m->be.ctx, nv, V, 1, ar.compact, ar.lab, (int64_t *)(m->stats + 8));
}

int stk__seq_xent_backward(stk_model_t *m, int i)
{
    const stk__backend_iface_t *be = m->be.iface;
    const stk__layer_t *l = &m->layers[i], *a = stk__input(m, i, 0);
    seq_xent_plan_t *p = stk__plan(m, i);
    int acc;
    float *dx = stk__dx_target(m, i, 0, &acc);
    if (!dx)
        return 0;
    be->zero(m->be.ctx, dx, (size_t)(m->batch * a->c * a->w));
    if (p->count > 0) {
        areas_t ar = areas_of(m, i);
        be->xent_backward(m->be.ctx, p->count, a->w, ar.prob, ar.lab, NULL, l->d.label_smoothing, m->loss_scale,
                          ar.compact);
        be->scatter_add_rows(m->be.ctx, p->count, a->w, ar.idx, -1, ar.compact, dx);
    }
    stk__dx_finish(m, i, 0, dx, acc);
    return 0;
}
