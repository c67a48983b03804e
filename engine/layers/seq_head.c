/* SPDX-License-Identifier: MIT */
/* Heads that turn a sequence (N x T x F) into flat features (N x F) with
 * the forward's lengths: seq_last takes each sample's last valid step (an
 * LSTM's output there is its final hidden state; for a bidirectional one
 * the reverse half there has seen that step only), seq_mean the mean over
 * the valid steps. A sample of length 0 gives zeros. */
#include "../layer.h"

#include <stddef.h>

static int head_infer(stk_model_t *m, int i, const char *where)
{
    stk__layer_t *l = &m->layers[i];
    const stk__layer_t *a = stk__input(m, i, 0);
    if (!a->seq || a->dtype != STK_DTYPE_F32)
        return stk__error(STK_ESHAPE, "%s: key 'input': %s needs a sequence of features (N x T x F)", where,
                          l->cls->name);
    l->seq = 0;
    l->flat = 1;
    l->c = a->w;
    l->h = l->w = 1;
    return 0;
}

static int is_mean(const stk__layer_t *l)
{
    return l->d.kind == STK_LAYER_SEQ_MEAN;
}

/* Nothing to plan; a backend without the pooling slots is refused. */
static int head_plan(stk_model_t *m, int i, int64_t n, void **plan)
{
    (void)i;
    (void)n;
    *plan = NULL;
    if (!m->be.iface->seq_pool_forward || !m->be.iface->seq_pool_backward)
        return stk__error(STK_EDEVICE, "the %s backend has no sequence heads", m->be.iface->name);
    return 0;
}

static int head_forward(stk_model_t *m, int i)
{
    const stk__layer_t *l = &m->layers[i];
    const stk__layer_t *a = stk__input(m, i, 0);
    m->be.iface->seq_pool_forward(m->be.ctx, is_mean(l), m->batch, a->c, a->w, m->lengths_dev, a->y, l->y);
    return 0;
}

static int head_backward(stk_model_t *m, int i)
{
    const stk__layer_t *l = &m->layers[i];
    const stk__layer_t *a = stk__input(m, i, 0);
    int acc;
    float *dx = stk__dx_target(m, i, 0, &acc);
    if (!dx)
        return 0;
    m->be.iface->seq_pool_backward(m->be.ctx, is_mean(l), m->batch, a->c, a->w, m->lengths_dev, l->dy, dx);
    stk__dx_finish(m, i, 0, dx, acc);
    return 0;
}

const stk__layer_class_t stk__layer_seq_last = {
    .kind = STK_LAYER_SEQ_LAST,
    .name = "seq_last",
    .n_inputs = 1,
    .fmt = STK__FMT_PLAIN,
    .infer = head_infer,
    .plan = head_plan,
    .forward = head_forward,
    .backward = head_backward,
};

const stk__layer_class_t stk__layer_seq_mean = {
    .kind = STK_LAYER_SEQ_MEAN,
    .name = "seq_mean",
    .n_inputs = 1,
    .fmt = STK__FMT_PLAIN,
    .infer = head_infer,
    .plan = head_plan,
    .forward = head_forward,
    .backward = head_backward,
};

stk_layer_desc_t stk_layer_seq_last(const char *name)
{
    stk_layer_desc_t d;
    stk_layer_desc_default(&d, STK_LAYER_SEQ_LAST);
    d.name = name;
    return d;
}

stk_layer_desc_t stk_layer_seq_mean(const char *name)
{
    stk_layer_desc_t d;
    stk_layer_desc_default(&d, STK_LAYER_SEQ_MEAN);
    d.name = name;
    return d;
}
