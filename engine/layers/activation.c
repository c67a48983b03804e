/* SPDX-License-Identifier: MIT */
/* Element-wise activations: relu (run inside a preceding batchnorm when it
 * is that batchnorm's only consumer, see norm.c), leaky_relu, gelu (exact
 * erf form), sigmoid, tanh. Their shape and layout are their input's. */
#include "../layer.h"

#include <stddef.h>

static stk__eltwise_t alg_of(stk_layer_kind_t k)
{
    switch (k) {
    case STK_LAYER_LEAKY_RELU:
        return STK__ELT_LEAKY_RELU;
    case STK_LAYER_GELU:
        return STK__ELT_GELU;
    case STK_LAYER_SIGMOID:
        return STK__ELT_SIGMOID;
    case STK_LAYER_TANH:
        return STK__ELT_TANH;
    default:
        return STK__ELT_RELU;
    }
}

static int act_forward(stk_model_t *m, int i)
{
    const stk__layer_t *l = &m->layers[i];
    if (l->fused)
        return 0;
    return m->be.iface->eltwise_forward(m->be.ctx, alg_of(l->d.kind), l->d.negative_slope, stk__numel(m, l),
                                        stk__input(m, i, 0)->y, l->y);
}

static int act_backward(stk_model_t *m, int i)
{
    const stk__layer_t *l = &m->layers[i];
    if (l->fused)
        return 0;
    int acc, rc = 0;
    float *dx = stk__dx_target(m, i, 0, &acc);
    if (dx && (rc = m->be.iface->eltwise_backward(m->be.ctx, alg_of(l->d.kind), l->d.negative_slope,
                                                  stk__numel(m, l), stk__input(m, i, 0)->y, l->y, l->dy, dx)) == 0)
        stk__dx_finish(m, i, 0, dx, acc);
    return rc;
}

#define ACTIVATION(KIND, NAME, ...)                                                                                 \
    const stk__layer_class_t stk__layer_##NAME = {                                                                  \
        .kind = KIND, .name = #NAME, .n_inputs = 1, .fmt = STK__FMT_KEEP, .forward = act_forward,                  \
        .backward = act_backward, __VA_ARGS__}

static const stk__layer_key_t leaky_keys[] = {
    {"slope", STK__KEY_FLOAT, offsetof(stk_layer_desc_t, negative_slope), 0},
    {NULL, 0, 0, 0},
};

static void leaky_defaults(stk_layer_desc_t *d)
{
    d->negative_slope = 0.01f;
}

ACTIVATION(STK_LAYER_RELU, relu);
ACTIVATION(STK_LAYER_LEAKY_RELU, leaky_relu, .keys = leaky_keys, .defaults = leaky_defaults);
ACTIVATION(STK_LAYER_GELU, gelu);
ACTIVATION(STK_LAYER_SIGMOID, sigmoid);
ACTIVATION(STK_LAYER_TANH, tanh);

static stk_layer_desc_t named(stk_layer_kind_t kind, const char *name)
{
    stk_layer_desc_t d;
    stk_layer_desc_default(&d, kind);
    d.name = name;
    return d;
}

stk_layer_desc_t stk_layer_relu(const char *name)
{
    return named(STK_LAYER_RELU, name);
}

stk_layer_desc_t stk_layer_leaky_relu(const char *name, float negative_slope)
{
    stk_layer_desc_t d = named(STK_LAYER_LEAKY_RELU, name);
    d.negative_slope = negative_slope;
    return d;
}

stk_layer_desc_t stk_layer_gelu(const char *name)
{
    return named(STK_LAYER_GELU, name);
}

stk_layer_desc_t stk_layer_sigmoid(const char *name)
{
    return named(STK_LAYER_SIGMOID, name);
}

stk_layer_desc_t stk_layer_tanh(const char *name)
{
    return named(STK_LAYER_TANH, name);
}
