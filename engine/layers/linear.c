/* SPDX-License-Identifier: MIT */
/* linear: PyTorch's Linear over flat features, y = x W^T + b, W [out, in]
 * in the parameter arena; over a sequence (N x T x F) it applies to each
 * step's features, as torch's Linear on the last dimension (seq_linear.c). */
#include "seq_linear.h"

#include <stddef.h>

#define DESC(f) offsetof(stk_layer_desc_t, f)

static const stk__layer_key_t linear_keys[] = {
    {"in", STK__KEY_POS_INT, DESC(in_c), 0},
    {"out", STK__KEY_INT, DESC(out), 0},
    {"bias", STK__KEY_BOOL, DESC(bias), 0},
    {NULL, 0, 0, 0},
};

static void linear_defaults(stk_layer_desc_t *d)
{
    d->bias = 1;
}

static int linear_check(const stk_layer_desc_t *d, const char *where)
{
    if (d->out < 1 || d->out > STK__MAX_DIM)
        return STK__BAD_KEY(where, "out", "must be a positive feature count up to 2^20");
    return 0;
}

static int linear_infer(stk_model_t *m, int i, const char *where)
{
    stk__layer_t *l = &m->layers[i];
    const stk__layer_t *a = stk__input(m, i, 0);
    if (a->seq) {
        if (l->d.in_c > 0 && l->d.in_c != a->w)
            return stk__error(STK_ESHAPE, "%s: key 'in': declared %lld input features, the input has %lld per step",
                              where, (long long)l->d.in_c, (long long)a->w);
        l->w = l->d.out;
        if (a->w > STK__MAX_SAMPLE_ELEMS / l->w || a->c > STK__MAX_SAMPLE_ELEMS / l->w)
            return stk__error(STK_ESHAPE, "%s: output or weights over 2^31 elements per sample", where);
        return 0;
    }
    if (a->h != 1 || a->w != 1)
        return stk__error(STK_ESHAPE, "%s: key 'input': linear needs flat features, the input is %lldx%lldx%lld "
                          "(add a flatten layer)", where, (long long)a->c, (long long)a->h, (long long)a->w);
    if (l->d.in_c > 0 && l->d.in_c != a->c)
        return stk__error(STK_ESHAPE, "%s: key 'in': declared %lld input features, the input has %lld", where,
                          (long long)l->d.in_c, (long long)a->c);
    l->c = l->d.out;
    l->flat = 1;
    if (a->c > STK__MAX_SAMPLE_ELEMS / l->c)
        return stk__error(STK_ESHAPE, "%s: output or weights over 2^31 elements per sample", where);
    return 0;
}

static int linear_params(stk_model_t *m, int i)
{
    const stk__layer_t *l = &m->layers[i];
    int64_t ws[2] = {l->d.out, l->seq ? l->in_w : l->in_c};
    int rc = stk__declare_param(m, i, "weight", STK_PARAM_WEIGHT, 2, ws);
    if (rc >= 0 && l->d.bias)
        rc = stk__declare_param(m, i, "bias", STK_PARAM_BIAS, 1, &l->d.out);
    return rc;
}

static void linear_init(stk_model_t *m, int i, float *params, float *buffers, int random)
{
    (void)buffers;
    if (random)
        stk__init_fan_in(m, i, params);
}

static int linear_plan(stk_model_t *m, int i, int64_t n, void **plan)
{
    const stk__layer_t *l = &m->layers[i];
    if (l->seq)
        return stk__seq_linear_plan(m, i, n, plan);
    stk__linear_desc_t ld = {.n = n, .in = l->in_c, .out = l->c, .bias = l->d.bias};
    return m->be.iface->linear_create(m->be.ctx, &ld, (stk__op_t **)plan);
}

static void linear_unplan(stk_model_t *m, int i, void *plan)
{
    if (m->layers[i].seq)
        stk__seq_linear_unplan(m, i, plan);
    else
        m->be.iface->op_destroy(m->be.ctx, plan);
}

static int linear_forward(stk_model_t *m, int i)
{
    const stk__layer_t *l = &m->layers[i];
    if (l->seq)
        return stk__seq_linear_forward(m, i);
    return m->be.iface->linear_forward(m->be.ctx, stk__plan(m, i), stk__input(m, i, 0)->y, stk__param(m, l, 0),
                                       stk__param(m, l, 1), l->y);
}

static int linear_backward(stk_model_t *m, int i)
{
    const stk__backend_iface_t *be = m->be.iface;
    const stk__layer_t *l = &m->layers[i];
    if (l->seq)
        return stk__seq_linear_backward(m, i);
    float *gw = stk__grad_target(m, l, 0);
    /* As conv2d: the bias gradient bypasses the one-tensor scratch. */
    float *gb = NULL, *bscr = NULL;
    if (l->nparam > 1)
        gb = m->grads_zero ? stk__grad(m, l, 1) : (bscr = m->act_scratch);
    int rc = be->linear_backward_weights(m->be.ctx, stk__plan(m, i), stk__input(m, i, 0)->y, l->dy, gw, gb);
    if (rc < 0)
        return rc;
    stk__grad_finish(m, l, 0, gw);
    if (bscr)
        be->accumulate(m->be.ctx, stk__param_count(m, l, 1), bscr, stk__grad(m, l, 1));
    int acc;
    float *dx = stk__dx_target(m, i, 0, &acc);
    if (dx && (rc = be->linear_backward_data(m->be.ctx, stk__plan(m, i), l->dy, stk__param(m, l, 0), dx)) == 0)
        stk__dx_finish(m, i, 0, dx, acc);
    return rc;
}

const stk__layer_class_t stk__layer_linear = {
    .kind = STK_LAYER_LINEAR,
    .name = "linear",
    .n_inputs = 1,
    .fmt = STK__FMT_PLAIN,
    .keys = linear_keys,
    .required = "out",
    .defaults = linear_defaults,
    .check = linear_check,
    .infer = linear_infer,
    .params = linear_params,
    .init = linear_init,
    .plan = linear_plan,
    .unplan = linear_unplan,
    .forward = linear_forward,
    .backward = linear_backward,
};

stk_layer_desc_t stk_layer_linear(const char *name, int64_t out)
{
    stk_layer_desc_t d;
    stk_layer_desc_default(&d, STK_LAYER_LINEAR);
    d.name = name;
    d.out = out;
    return d;
}
