/* SPDX-License-Identifier: MIT */
/* cross_entropy: softmax and cross-entropy over flat logits, mean over the
 * batch, with label smoothing, against labels or soft targets (mixup). The
 * last layer; the layer feeding it gives the logits. The loss goes to the
 * model's device stats block, read back once per forward (model.c).
 * Logits that are a sequence go to seq_loss.c (per-step targets). */
#include "seq_loss.h"

#include <stddef.h>

static const stk__layer_key_t xent_keys[] = {
    {"smoothing", STK__KEY_FLOAT, offsetof(stk_layer_desc_t, label_smoothing), 0},
    {"ignore_index", STK__KEY_INT, offsetof(stk_layer_desc_t, ignore_index), 0},
    {NULL, 0, 0, 0},
};

static void xent_defaults(stk_layer_desc_t *d)
{
    d->ignore_index = -100; /* torch's */
}

static int xent_check(const stk_layer_desc_t *d, const char *where)
{
    if (!(d->label_smoothing >= 0.0f && d->label_smoothing <= 1.0f))
        return STK__BAD_KEY(where, "smoothing", "must be in [0, 1]");
    return 0;
}

static int xent_infer(stk_model_t *m, int i, const char *where)
{
    stk__layer_t *l = &m->layers[i];
    if (stk__input(m, i, 0)->seq)
        return stk__seq_xent_infer(m, i, where);
    if (l->in_h != 1 || l->in_w != 1)
        return stk__error(STK_ESHAPE, "%s: key 'input': the loss needs flat logits, the input is %lldx%lldx%lld",
                          where, (long long)l->in_c, (long long)l->in_h, (long long)l->in_w);
    m->loss_layer = i;
    m->logits_layer = l->in[0];
    l->c = l->h = l->w = 1;
    return 0;
}

/* The softmax of the last forward, for backward. */
static size_t xent_extra(const stk_model_t *m, int i, int64_t n)
{
    if (stk__input(m, i, 0)->seq)
        return stk__seq_xent_extra(m, i, n);
    return (size_t)(n * m->layers[i].in_c) * sizeof(float);
}

static int xent_plan(stk_model_t *m, int i, int64_t n, void **plan)
{
    *plan = NULL;
    return stk__input(m, i, 0)->seq ? stk__seq_xent_plan(m, i, n, plan) : 0;
}

static void xent_unplan(stk_model_t *m, int i, void *plan)
{
    stk__seq_xent_unplan(m, i, plan);
}

static int xent_forward(stk_model_t *m, int i)
{
    const stk__layer_t *l = &m->layers[i];
    if (m->loss_per_step)
        return stk__seq_xent_forward(m, i);
    if (!m->labels && !m->soft)
        return 0;
    return m->be.iface->xent_forward(m->be.ctx, m->batch, l->in_c, stk__input(m, i, 0)->y, m->labels_dev,
                                     m->soft_dev, l->d.label_smoothing, l->extra, (float *)m->stats);
}

static int xent_backward(stk_model_t *m, int i)
{
    const stk__layer_t *l = &m->layers[i];
    if (m->loss_per_step)
        return stk__seq_xent_backward(m, i);
    int acc;
    float *dx = stk__dx_target(m, i, 0, &acc);
    if (!dx)
        return 0;
    m->be.iface->xent_backward(m->be.ctx, m->batch, l->in_c, l->extra, m->labels_dev, m->soft_dev,
                               l->d.label_smoothing, m->loss_scale, dx);
    stk__dx_finish(m, i, 0, dx, acc);
    return 0;
}

const stk__layer_class_t stk__layer_cross_entropy = {
    .kind = STK_LAYER_CROSS_ENTROPY,
    .name = "cross_entropy",
    .n_inputs = 1,
    .is_loss = 1,
    .fmt = STK__FMT_PLAIN,
    .keys = xent_keys,
    .defaults = xent_defaults,
    .check = xent_check,
    .infer = xent_infer,
    .extra_bytes = xent_extra,
    .plan = xent_plan,
    .unplan = xent_unplan,
    .forward = xent_forward,
    .backward = xent_backward,
};

stk_layer_desc_t stk_layer_cross_entropy(const char *name, float label_smoothing)
{
    stk_layer_desc_t d;
    stk_layer_desc_default(&d, STK_LAYER_CROSS_ENTROPY);
    d.name = name;
    d.label_smoothing = label_smoothing;
    return d;
}
