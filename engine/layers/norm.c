/* SPDX-License-Identifier: MIT */
/* batchnorm2d: PyTorch's BatchNorm2d (batch statistics and running
 * statistics with its momentum convention, num_batches_tracked), and the
 * fusion of a following ReLU into the normalization (oneDNN's
 * fuse_norm_relu: one pass over memory instead of two). */
#include "../layer.h"

#include <errno.h>
#include <stddef.h>

#define DESC(f) offsetof(stk_layer_desc_t, f)

static const stk__layer_key_t bn_keys[] = {
    {"in", STK__KEY_POS_INT, DESC(in_c), 0},
    {"eps", STK__KEY_FLOAT, DESC(eps), 0},
    {"momentum", STK__KEY_FLOAT, DESC(momentum), 0},
    {NULL, 0, 0, 0},
};

static void bn_defaults(stk_layer_desc_t *d)
{
    d->eps = 1e-5f;
    d->momentum = 0.1f;
}

static int bn_check(const stk_layer_desc_t *d, const char *where)
{
    if (!(d->eps > 0.0f))
        return STK__BAD_KEY(where, "eps", "must be positive");
    if (!(d->momentum >= 0.0f && d->momentum <= 1.0f))
        return STK__BAD_KEY(where, "momentum", "must be in [0, 1]");
    return 0;
}

static int bn_infer(stk_model_t *m, int i, const char *where)
{
    const stk__layer_t *l = &m->layers[i];
    if (l->d.in_c > 0 && l->d.in_c != l->in_c)
        return stk__error(STK_ESHAPE, "%s: key 'in': declared %lld channels, the input has %lld", where,
                          (long long)l->d.in_c, (long long)l->in_c);
    return 0;
}

/* A relu that is the only consumer of a batchnorm runs inside it, and the
 * relu layer becomes a view of the batchnorm's output. */
static void bn_after_layout(stk_model_t *m, int i)
{
    if (i + 1 >= m->nl)
        return;
    stk__layer_t *bn = &m->layers[i], *r = &m->layers[i + 1];
    if (r->d.kind != STK_LAYER_RELU || r->in[0] != i)
        return;
    int consumers = 0;
    for (int j = i + 1; j < m->nl; j++)
        for (int k = 0; k < m->layers[j].nin; k++)
            consumers += m->layers[j].in[k] == i;
    if (consumers != 1)
        return;
    bn->fused = r->fused = 1;
    r->alias = 1;
}

static int bn_params(stk_model_t *m, int i)
{
    const stk__layer_t *l = &m->layers[i];
    int rc = stk__declare_param(m, i, "weight", STK_PARAM_BN_WEIGHT, 1, &l->c);
    if (rc >= 0)
        rc = stk__declare_param(m, i, "bias", STK_PARAM_BN_BIAS, 1, &l->c);
    if (rc >= 0)
        rc = stk__declare_buffer(m, i, "running_mean", STK_BUFFER_RUNNING_MEAN, 1, &l->c);
    if (rc >= 0)
        rc = stk__declare_buffer(m, i, "running_var", STK_BUFFER_RUNNING_VAR, 1, &l->c);
    return rc;
}

/* weight 1, bias 0, running mean 0, running var 1 (PyTorch's, random or
 * not). */
static void bn_init(stk_model_t *m, int i, float *params, float *buffers, int random)
{
    (void)random;
    const stk__layer_t *l = &m->layers[i];
    const stk_param_info_t *w = stk__param_info(m, l, 0), *rv = stk__buffer_info(m, l, 1);
    for (size_t j = 0; j < w->count; j++)
        params[w->offset + j] = 1.0f;
    for (size_t j = 0; j < rv->count; j++)
        buffers[rv->offset + j] = 1.0f;
}

/* The batch mean and variance of the last forward, for backward. */
static size_t bn_extra(const stk_model_t *m, int i, int64_t n)
{
    (void)n;
    return 2 * (size_t)m->layers[i].c * sizeof(float);
}

static int bn_plan(stk_model_t *m, int i, int64_t n, void **plan)
{
    const stk__layer_t *l = &m->layers[i];
    stk__bn_desc_t bd = {.n = n, .c = l->c, .h = l->h, .w = l->w, .eps = l->d.eps, .fmt = l->fmt,
                         .relu = l->fused};
    return m->be.iface->bn_create(m->be.ctx, &bd, (stk__op_t **)plan);
}

static int bn_forward(stk_model_t *m, int i)
{
    const stk__backend_iface_t *be = m->be.iface;
    stk__layer_t *l = &m->layers[i];
    const float *x = stk__input(m, i, 0)->y, *g = stk__param(m, l, 0), *b = stk__param(m, l, 1);
    float *mean = l->extra, *var = mean + l->c;
    if (!m->train)
        return be->bn_forward(m->be.ctx, stk__plan(m, i), 0, x, g, b, stk__buffer(m, l, 0), stk__buffer(m, l, 1),
                              l->y);
    int rc = be->bn_forward(m->be.ctx, stk__plan(m, i), 1, x, g, b, mean, var, l->y);
    if (rc < 0)
        return rc;
    be->bn_update_running(m->be.ctx, l->c, m->batch * l->h * l->w, l->d.momentum, mean, var, stk__buffer(m, l, 0),
                          stk__buffer(m, l, 1));
    l->num_batches_tracked++;
    return 0;
}

static int bn_backward(stk_model_t *m, int i)
{
    const stk__backend_iface_t *be = m->be.iface;
    stk__layer_t *l = &m->layers[i];
    if (!m->train)
        return stk__error(STK_ESTATE, "batchnorm backward needs training mode");
    int acc;
    float *dx = stk__dx_target(m, i, 0, &acc);
    float *dxp = dx ? dx : m->act_scratch;
    /* dgamma and dbeta are contiguous in the arena (bias follows weight);
     * through scratch they go into the parameter scratch, or, for a model
     * whose largest tensor is shorter than both (a lone batchnorm), into
     * the activation scratch when dx does not use it. */
    float *gg, *gb;
    int direct = m->grads_zero;
    if (direct) {
        gg = stk__grad(m, l, 0);
        gb = stk__grad(m, l, 1);
    } else {
        gg = m->param_scratch;
        if ((size_t)(2 * l->c) > m->param_scratch_n) {
            gg = dxp == m->act_scratch ? NULL : m->act_scratch;
            if (!gg)
                return stk__error(-ENOMEM, "batchnorm backward: no scratch");
        }
        gb = gg + l->c;
    }
    const float *mean = l->extra, *var = mean + l->c;
    int rc = be->bn_backward(m->be.ctx, stk__plan(m, i), stk__input(m, i, 0)->y, l->dy, stk__param(m, l, 0), mean,
                             var, dxp, gg, gb);
    if (rc < 0)
        return rc;
    if (!direct) {
        be->accumulate(m->be.ctx, (size_t)l->c, gg, stk__grad(m, l, 0));
        be->accumulate(m->be.ctx, (size_t)l->c, gb, stk__grad(m, l, 1));
    }
    if (dx)
        stk__dx_finish(m, i, 0, dx, acc);
    return 0;
}

const stk__layer_class_t stk__layer_batchnorm2d = {
    .kind = STK_LAYER_BATCHNORM2D,
    .name = "batchnorm2d",
    .n_inputs = 1,
    .counts_batches = 1,
    .fmt = STK__FMT_KEEP,
    .keys = bn_keys,
    .defaults = bn_defaults,
    .check = bn_check,
    .infer = bn_infer,
    .after_layout = bn_after_layout,
    .params = bn_params,
    .init = bn_init,
    .extra_bytes = bn_extra,
    .plan = bn_plan,
    .forward = bn_forward,
    .backward = bn_backward,
};

stk_layer_desc_t stk_layer_batchnorm2d(const char *name)
{
    stk_layer_desc_t d;
    stk_layer_desc_default(&d, STK_LAYER_BATCHNORM2D);
    d.name = name;
    return d;
}
