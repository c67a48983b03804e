/* SPDX-License-Identifier: MIT */
/* conv2d: PyTorch's Conv2d (stride, padding, dilation, groups, bias), its
 * weight OIHW in the parameter arena; the output blocked (nChw8c) when its
 * channels are a multiple of 8. In eval mode a convolution that alone
 * feeds a batchnorm runs with it (and the relu fused into that) as one
 * backend op, writing the batchnorm's output: running statistics make
 * the normalization a per-channel affine (backend.h, conv_fused_*). */
#include "../layer.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DESC(f) offsetof(stk_layer_desc_t, f)

static const stk__layer_key_t conv_keys[] = {
    {"in", STK__KEY_POS_INT, DESC(in_c), 0},
    {"out", STK__KEY_INT, DESC(out), 0},
    {"kernel", STK__KEY_PAIR, DESC(kernel_h), DESC(kernel_w)},
    {"stride", STK__KEY_PAIR, DESC(stride_h), DESC(stride_w)},
    {"pad", STK__KEY_PAIR, DESC(pad_h), DESC(pad_w)},
    {"dilation", STK__KEY_PAIR, DESC(dilation_h), DESC(dilation_w)},
    {"groups", STK__KEY_INT, DESC(groups), 0},
    {"bias", STK__KEY_BOOL, DESC(bias), 0},
    {NULL, 0, 0, 0},
};

static void conv_defaults(stk_layer_desc_t *d)
{
    d->kernel_h = d->kernel_w = 3;
    d->stride_h = d->stride_w = 1;
    d->dilation_h = d->dilation_w = 1;
    d->groups = 1;
    d->bias = 1;
}

static int conv_check(const stk_layer_desc_t *d, const char *where)
{
    if (d->out < 1 || d->out > STK__MAX_DIM)
        return STK__BAD_KEY(where, "out", "must be a positive channel count up to 2^20");
    if (d->kernel_h < 1 || d->kernel_w < 1 || d->kernel_h > STK__MAX_KERNEL || d->kernel_w > STK__MAX_KERNEL)
        return STK__BAD_KEY(where, "kernel", "must be in [1, 1024]");
    if (d->dilation_h > STK__MAX_KERNEL || d->dilation_w > STK__MAX_KERNEL || d->pad_h > STK__MAX_DIM ||
        d->pad_w > STK__MAX_DIM || d->stride_h > STK__MAX_DIM || d->stride_w > STK__MAX_DIM)
        return STK__BAD_KEY(where, "dilation", "dilation, pad or stride too large");
    if (d->stride_h < 1 || d->stride_w < 1)
        return STK__BAD_KEY(where, "stride", "must be positive");
    if (d->pad_h < 0 || d->pad_w < 0)
        return STK__BAD_KEY(where, "pad", "must not be negative");
    if (d->dilation_h < 1 || d->dilation_w < 1)
        return STK__BAD_KEY(where, "dilation", "must be >= 1");
    if (d->groups < 1 || d->out % d->groups)
        return STK__BAD_KEY(where, "groups", "must be positive and divide out (%lld)", (long long)d->out);
    return 0;
}

static int conv_infer(stk_model_t *m, int i, const char *where)
{
    stk__layer_t *l = &m->layers[i];
    const stk_layer_desc_t *d = &l->d;
    const stk__layer_t *a = stk__input(m, i, 0);
    if (d->in_c > 0 && d->in_c != a->c)
        return stk__error(STK_ESHAPE, "%s: key 'in': declared %lld input channels, the input has %lld", where,
                          (long long)d->in_c, (long long)a->c);
    if (a->c % d->groups)
        return stk__error(STK_ESHAPE, "%s: key 'groups': %lld does not divide the %lld input channels", where,
                          (long long)d->groups, (long long)a->c);
    l->c = d->out;
    l->h = stk__out_size(a->h, d->kernel_h, d->stride_h, d->pad_h, d->dilation_h);
    l->w = stk__out_size(a->w, d->kernel_w, d->stride_w, d->pad_w, d->dilation_w);
    if (l->h < 1 || l->w < 1)
        return stk__error(STK_ESHAPE, "%s: key 'kernel': the dilated kernel is larger than the padded %lldx%lld input",
                          where, (long long)a->h, (long long)a->w);
    if (d->kernel_h * d->kernel_w * (a->c / d->groups) > STK__MAX_SAMPLE_ELEMS / l->c)
        return stk__error(STK_ESHAPE, "%s: output or weights over 2^31 elements per sample", where);
    int64_t keff = d->kernel_h + (d->kernel_h - 1) * (d->dilation_h - 1);
    l->rf = a->rf + (keff - 1) * a->jump;
    l->jump = a->jump * d->stride_h;
    return 0;
}

static int conv_params(stk_model_t *m, int i)
{
    const stk__layer_t *l = &m->layers[i];
    const stk_layer_desc_t *d = &l->d;
    int64_t ws[4] = {d->out, l->in_c / d->groups, d->kernel_h, d->kernel_w};
    int rc = stk__declare_param(m, i, "weight", STK_PARAM_WEIGHT, 4, ws);
    if (rc >= 0 && d->bias)
        rc = stk__declare_param(m, i, "bias", STK_PARAM_BIAS, 1, &d->out);
    return rc;
}

static void conv_init(stk_model_t *m, int i, float *params, float *buffers, int random)
{
    (void)buffers;
    if (random)
        stk__init_fan_in(m, i, params);
}

/* A convolution's plan: its op, and the fused eval-mode op, made at the
 * plan's first eval forward (training runs never pay for it). */
typedef struct conv_plan {
    stk__op_t *op;
    stk__op_t *fused;
    int tried;
    char *why; /* why this plan could not fuse (NULL: it could) */
} conv_plan_t;

/* The batchnorm a convolution alone feeds, when the backend can fuse. */
static void conv_after_layout(stk_model_t *m, int i)
{
    stk__layer_t *l = &m->layers[i];
    l->fuse_bn = 0;
    if (!m->be.iface->conv_fused_create || !m->be.iface->conv_fused_forward)
        return;
    int consumer = 0, consumers = 0;
    for (int j = i + 1; j < m->nl; j++)
        for (int k = 0; k < m->layers[j].nin; k++)
            if (m->layers[j].in[k] == i) {
                consumer = j;
                consumers++;
            }
    if (consumers != 1 || m->layers[consumer].d.kind != STK_LAYER_BATCHNORM2D ||
        m->layers[consumer].fmt != l->fmt)
        return;
    l->fuse_bn = consumer;
    m->layers[consumer].fuse_conv = i;
}

static stk__conv_desc_t conv_desc(const stk_model_t *m, int i, int64_t n)
{
    const stk__layer_t *l = &m->layers[i];
    const stk_layer_desc_t *d = &l->d;
    stk__conv_desc_t cd = {.n = n, .ic = l->in_c, .ih = l->in_h, .iw = l->in_w, .oc = l->c, .oh = l->h, .ow = l->w,
                           .kh = d->kernel_h, .kw = d->kernel_w, .sh = d->stride_h, .sw = d->stride_w,
                           .ph = d->pad_h, .pw = d->pad_w, .dh = d->dilation_h, .dw = d->dilation_w,
                           .groups = d->groups, .bias = d->bias, .fmt_in = stk__input(m, i, 0)->fmt,
                           .fmt_out = l->fmt};
    return cd;
}

static int conv_plan(stk_model_t *m, int i, int64_t n, void **plan)
{
    conv_plan_t *p = calloc(1, sizeof(*p));
    if (!p)
        return stk__error(-ENOMEM, "out of memory");
    stk__conv_desc_t cd = conv_desc(m, i, n);
    int rc = m->be.iface->conv_create(m->be.ctx, &cd, &p->op);
    if (rc < 0) {
        free(p);
        return rc;
    }
    *plan = p;
    return 0;
}

static void conv_unplan(stk_model_t *m, int i, void *plan)
{
    (void)i;
    conv_plan_t *p = plan;
    if (!p)
        return;
    m->be.iface->op_destroy(m->be.ctx, p->op);
    m->be.iface->op_destroy(m->be.ctx, p->fused);
    free(p->why);
    free(p);
}

/* "conv+bn" or "conv+bn+relu". */
static const char *chain_name(const stk_model_t *m, int i, char *buf, size_t cap)
{
    int b = m->layers[i].fuse_bn;
    const char *relu = "";
    for (int j = b + 1; j < m->nl; j++)
        if (m->layers[j].fused && m->layers[j].in[0] == b)
            relu = m->layers[j].name;
    snprintf(buf, cap, "%s+%s%s%s", m->layers[i].name, m->layers[b].name, *relu ? "+" : "", relu);
    return buf;
}

/* Makes the plan's fused op the first time an eval forward asks; a
 * backend that cannot fuse this chain leaves the layers unfused, and
 * says why once per plan (the model's summary shows it too). */
static stk__op_t *fused_op(stk_model_t *m, int i, conv_plan_t *p)
{
    if (p->tried)
        return p->fused;
    p->tried = 1;
    const stk__layer_t *bn = &m->layers[m->layers[i].fuse_bn];
    stk__conv_fused_desc_t fd = {.conv = conv_desc(m, i, m->batch), .eps = bn->d.eps, .relu = bn->fused};
    if (m->be.iface->conv_fused_create(m->be.ctx, &fd, &p->fused) == 0)
        return p->fused;
    p->fused = NULL;
    char name[160];
    const char *why = stk_error_message();
    p->why = strdup(why && *why ? why : "the backend refused");
    stk__log(STK_LOG_INFO, "%s: not fused in eval (batch %lld): %s; running the layers one by one",
             chain_name(m, i, name, sizeof(name)), (long long)m->batch, p->why ? p->why : "out of memory");
    stk_error_clear();
    return NULL;
}

/* The layer's fallback reason: the current plan's (the summary's). */
static void note_why(stk__layer_t *l, const conv_plan_t *p)
{
    if (p->why && l->fuse_why && !strcmp(l->fuse_why, p->why))
        return;
    free(l->fuse_why);
    l->fuse_why = p->why ? strdup(p->why) : NULL;
}

static int conv_forward(stk_model_t *m, int i)
{
    stk__layer_t *l = &m->layers[i];
    conv_plan_t *p = stk__plan(m, i);
    const stk__backend_iface_t *be = m->be.iface;
    l->fuse_ran = 0;
    if (l->fuse_bn && !m->train && m->fusion) {
        stk__op_t *f = fused_op(m, i, p);
        note_why(l, p);
        if (f) {
            const stk__layer_t *bn = &m->layers[l->fuse_bn];
            int rc = be->conv_fused_forward(m->be.ctx, f, stk__input(m, i, 0)->y, stk__param(m, l, 0),
                                            stk__param(m, l, 1), stk__param(m, bn, 0), stk__param(m, bn, 1),
                                            stk__buffer(m, bn, 0), stk__buffer(m, bn, 1), bn->y);
            l->fuse_ran = rc == 0;
            return rc;
        }
    }
    return be->conv_forward(m->be.ctx, p->op, stk__input(m, i, 0)->y, stk__param(m, l, 0), stk__param(m, l, 1),
                            l->y);
}

/* Shared with linear: weight and bias gradients, then the input's. */
static int conv_backward(stk_model_t *m, int i)
{
    const stk__backend_iface_t *be = m->be.iface;
    const stk__layer_t *l = &m->layers[i];
    float *gw = stk__grad_target(m, l, 0);
    /* The bias gradient goes straight to the arena when the weight's goes
     * through scratch: the parameter scratch holds one tensor. The
     * activation scratch is free: dx is computed after. */
    float *gb = NULL, *bscr = NULL;
    if (l->nparam > 1)
        gb = m->grads_zero ? stk__grad(m, l, 1) : (bscr = m->act_scratch);
    const conv_plan_t *p = stk__plan(m, i);
    int rc = be->conv_backward_weights(m->be.ctx, p->op, stk__input(m, i, 0)->y, l->dy, gw, gb);
    if (rc < 0)
        return rc;
    stk__grad_finish(m, l, 0, gw);
    if (bscr)
        be->accumulate(m->be.ctx, stk__param_count(m, l, 1), bscr, stk__grad(m, l, 1));
    int acc;
    float *dx = stk__dx_target(m, i, 0, &acc);
    if (dx && (rc = be->conv_backward_data(m->be.ctx, p->op, l->dy, stk__param(m, l, 0), dx)) == 0)
        stk__dx_finish(m, i, 0, dx, acc);
    return rc;
}

const stk__layer_class_t stk__layer_conv2d = {
    .kind = STK_LAYER_CONV2D,
    .name = "conv2d",
    .n_inputs = 1,
    .fmt = STK__FMT_BLOCKED8,
    .keys = conv_keys,
    .required = "out",
    .defaults = conv_defaults,
    .check = conv_check,
    .infer = conv_infer,
    .params = conv_params,
    .init = conv_init,
    .after_layout = conv_after_layout,
    .plan = conv_plan,
    .unplan = conv_unplan,
    .forward = conv_forward,
    .backward = conv_backward,
};

stk_layer_desc_t stk_layer_conv2d(const char *name, int64_t out, int64_t kernel, int64_t stride, int64_t pad)
{
    stk_layer_desc_t d;
    stk_layer_desc_default(&d, STK_LAYER_CONV2D);
    d.name = name;
    d.out = out;
    d.kernel_h = d.kernel_w = kernel;
    d.stride_h = d.stride_w = stride;
    d.pad_h = d.pad_w = pad;
    return d;
}
