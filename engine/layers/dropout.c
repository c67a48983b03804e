/* SPDX-License-Identifier: MIT */
/* dropout: inverted dropout in training mode (kept values scaled by
 * 1/(1-p)), a copy in evaluation. The mask is a pure function of (seed,
 * step, layer, element) drawn by the backend from Philox, so backward
 * regenerates it and nothing is stored; the model advances the step on
 * each training forward (model.c). */
#include "../layer.h"

#include <stddef.h>

static const stk__layer_key_t dropout_keys[] = {
    {"p", STK__KEY_FLOAT, offsetof(stk_layer_desc_t, p), 0},
    {NULL, 0, 0, 0},
};

static void dropout_defaults(stk_layer_desc_t *d)
{
    d->p = 0.5f;
}

static int dropout_check(const stk_layer_desc_t *d, const char *where)
{
    if (!(d->p >= 0.0f && d->p < 1.0f))
        return STK__BAD_KEY(where, "p", "must be in [0, 1)");
    return 0;
}

static uint64_t dropout_key(const stk_model_t *m, int layer)
{
    return stk_rng_mix(stk_rng_mix(m->seed, 0x64726f70ull), (uint64_t)layer);
}

static int dropout_forward(stk_model_t *m, int i)
{
    const stk__layer_t *l = &m->layers[i];
    const float *x = stk__input(m, i, 0)->y;
    size_t n = stk__numel(m, l);
    if (m->train && l->d.p > 0.0f) {
        m->be.iface->dropout_forward(m->be.ctx, n, l->d.p, dropout_key(m, i), m->fwd_step, x, l->y);
        return 0;
    }
    return m->be.iface->copy(m->be.ctx, l->y, x, n * sizeof(float));
}

static int dropout_backward(stk_model_t *m, int i)
{
    const stk__layer_t *l = &m->layers[i];
    size_t n = stk__numel(m, l);
    int acc, rc = 0;
    float *dx = stk__dx_target(m, i, 0, &acc);
    if (!dx)
        return 0;
    if (m->train && l->d.p > 0.0f)
        m->be.iface->dropout_backward(m->be.ctx, n, l->d.p, dropout_key(m, i), m->fwd_step, l->dy, dx);
    else
        rc = m->be.iface->copy(m->be.ctx, dx, l->dy, n * sizeof(float));
    if (rc == 0)
        stk__dx_finish(m, i, 0, dx, acc);
    return rc;
}

const stk__layer_class_t stk__layer_dropout = {
    .kind = STK_LAYER_DROPOUT,
    .name = "dropout",
    .n_inputs = 1,
    .fmt = STK__FMT_KEEP,
    .keys = dropout_keys,
    .defaults = dropout_defaults,
    .check = dropout_check,
    .forward = dropout_forward,
    .backward = dropout_backward,
};

stk_layer_desc_t stk_layer_dropout(const char *name, float p)
{
    stk_layer_desc_t d;
    stk_layer_desc_default(&d, STK_LAYER_DROPOUT);
    d.name = name;
    d.p = p;
    return d;
}
