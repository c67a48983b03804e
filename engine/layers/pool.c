/* SPDX-License-Identifier: MIT */
/* Pooling: maxpool2d (its argmax workspace kept in the backend's plan for
 * backward), avgpool2d (count_include_pad, PyTorch's default) and
 * global_avgpool (N x C x H x W to N x C x 1 x 1). */
#include "../layer.h"

#include <stddef.h>

#define DESC(f) offsetof(stk_layer_desc_t, f)

static const stk__layer_key_t pool_keys[] = {
    {"kernel", STK__KEY_PAIR, DESC(kernel_h), DESC(kernel_w)},
    {"stride", STK__KEY_PAIR, DESC(stride_h), DESC(stride_w)},
    {"pad", STK__KEY_PAIR, DESC(pad_h), DESC(pad_w)},
    {NULL, 0, 0, 0},
};

/* Stride 0 means the kernel size, as PyTorch's stride=None. */
static void pool_defaults(stk_layer_desc_t *d)
{
    d->kernel_h = d->kernel_w = 2;
}

static int pool_check(const stk_layer_desc_t *d, const char *where)
{
    if (d->kernel_h < 1 || d->kernel_w < 1 || d->kernel_h > STK__MAX_KERNEL || d->kernel_w > STK__MAX_KERNEL)
        return STK__BAD_KEY(where, "kernel", "must be in [1, 1024]");
    if (d->stride_h < 0 || d->stride_w < 0 || d->stride_h > STK__MAX_DIM || d->stride_w > STK__MAX_DIM)
        return STK__BAD_KEY(where, "stride", "must not be negative");
    if (d->pad_h < 0 || d->pad_w < 0 || 2 * d->pad_h > d->kernel_h || 2 * d->pad_w > d->kernel_w)
        return STK__BAD_KEY(where, "pad", "must be between 0 and half the kernel");
    return 0;
}

static int pool_infer(stk_model_t *m, int i, const char *where)
{
    stk__layer_t *l = &m->layers[i];
    stk_layer_desc_t *d = &l->d;
    const stk__layer_t *a = stk__input(m, i, 0);
    if (d->stride_h == 0)
        d->stride_h = d->kernel_h;
    if (d->stride_w == 0)
        d->stride_w = d->kernel_w;
    l->h = stk__out_size(a->h, d->kernel_h, d->stride_h, d->pad_h, 1);
    l->w = stk__out_size(a->w, d->kernel_w, d->stride_w, d->pad_w, 1);
    if (l->h < 1 || l->w < 1)
        return stk__error(STK_ESHAPE, "%s: key 'kernel': larger than the padded %lldx%lld input", where,
                          (long long)a->h, (long long)a->w);
    l->rf = a->rf + (d->kernel_h - 1) * a->jump;
    l->jump = a->jump * d->stride_h;
    return 0;
}

static int global_infer(stk_model_t *m, int i, const char *where)
{
    (void)where;
    stk__layer_t *l = &m->layers[i];
    const stk__layer_t *a = stk__input(m, i, 0);
    l->rf = a->rf + (a->h - 1) * a->jump;
    l->h = l->w = 1;
    return 0;
}

static int pool_plan(stk_model_t *m, int i, int64_t n, void **plan)
{
    const stk__layer_t *l = &m->layers[i];
    const stk_layer_desc_t *d = &l->d;
    int glob = d->kind == STK_LAYER_GLOBAL_AVGPOOL;
    stk__pool_desc_t pd = {.n = n, .c = l->c, .ih = l->in_h, .iw = l->in_w, .oh = l->h, .ow = l->w,
                           .kh = glob ? l->in_h : d->kernel_h, .kw = glob ? l->in_w : d->kernel_w,
                           .sh = glob ? 1 : d->stride_h, .sw = glob ? 1 : d->stride_w, .ph = glob ? 0 : d->pad_h,
                           .pw = glob ? 0 : d->pad_w, .max = d->kind == STK_LAYER_MAXPOOL2D, .fmt = l->fmt};
    return m->be.iface->pool_create(m->be.ctx, &pd, (stk__op_t **)plan);
}

static int pool_forward(stk_model_t *m, int i)
{
    return m->be.iface->pool_forward(m->be.ctx, stk__plan(m, i), m->train, stk__input(m, i, 0)->y,
                                     m->layers[i].y);
}

static int pool_backward(stk_model_t *m, int i)
{
    const stk__layer_t *l = &m->layers[i];
    if (!m->train && l->d.kind == STK_LAYER_MAXPOOL2D)
        return stk__error(STK_ESTATE, "max pooling backward needs a training-mode forward");
    int acc, rc = 0;
    float *dx = stk__dx_target(m, i, 0, &acc);
    if (dx && (rc = m->be.iface->pool_backward(m->be.ctx, stk__plan(m, i), l->dy, dx)) == 0)
        stk__dx_finish(m, i, 0, dx, acc);
    return rc;
}

const stk__layer_class_t stk__layer_maxpool2d = {
    .kind = STK_LAYER_MAXPOOL2D, .name = "maxpool2d", .n_inputs = 1, .fmt = STK__FMT_KEEP,
    .keys = pool_keys, .defaults = pool_defaults, .check = pool_check, .infer = pool_infer,
    .plan = pool_plan, .forward = pool_forward, .backward = pool_backward,
};

const stk__layer_class_t stk__layer_avgpool2d = {
    .kind = STK_LAYER_AVGPOOL2D, .name = "avgpool2d", .n_inputs = 1, .fmt = STK__FMT_KEEP,
    .keys = pool_keys, .defaults = pool_defaults, .check = pool_check, .infer = pool_infer,
    .plan = pool_plan, .forward = pool_forward, .backward = pool_backward,
};

const stk__layer_class_t stk__layer_global_avgpool = {
    .kind = STK_LAYER_GLOBAL_AVGPOOL, .name = "global_avgpool", .n_inputs = 1, .fmt = STK__FMT_KEEP,
    .infer = global_infer, .plan = pool_plan, .forward = pool_forward, .backward = pool_backward,
};

static stk_layer_desc_t pool(stk_layer_kind_t kind, const char *name, int64_t kernel, int64_t stride, int64_t pad)
{
    stk_layer_desc_t d;
    stk_layer_desc_default(&d, kind);
    d.name = name;
    d.kernel_h = d.kernel_w = kernel;
    d.stride_h = d.stride_w = stride;
    d.pad_h = d.pad_w = pad;
    return d;
}

stk_layer_desc_t stk_layer_maxpool2d(const char *name, int64_t kernel, int64_t stride, int64_t pad)
{
    return pool(STK_LAYER_MAXPOOL2D, name, kernel, stride, pad);
}

stk_layer_desc_t stk_layer_avgpool2d(const char *name, int64_t kernel, int64_t stride, int64_t pad)
{
    return pool(STK_LAYER_AVGPOOL2D, name, kernel, stride, pad);
}

stk_layer_desc_t stk_layer_global_avgpool(const char *name)
{
    stk_layer_desc_t d;
    stk_layer_desc_default(&d, STK_LAYER_GLOBAL_AVGPOOL);
    d.name = name;
    return d;
}
