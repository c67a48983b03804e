/* SPDX-License-Identifier: MIT */
/* batchnorm2d: PyTorch's BatchNorm2d (batch statistics and running
 * statistics with its momentum convention, num_batches_tracked), and the
 * fusion of a following ReLU into the normalization (oneDNN's
 * fuse_norm_relu: one pass over memory instead of two). */
#include "../layer.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

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

/* The batch mean and variance of the last forward, for backward, and
 * (synchronized) the global batch's element count per channel. */
static size_t bn_extra(const stk_model_t *m, int i, int64_t n)
{
    (void)n;
    return 2 * (size_t)m->layers[i].c * sizeof(float) + sizeof(int64_t);
}

static int64_t *bn_count(const stk__layer_t *l)
{
    return (int64_t *)((float *)l->extra + 2 * l->c);
}

static int bn_plan(stk_model_t *m, int i, int64_t n, void **plan)
{
    const stk__layer_t *l = &m->layers[i];
    stk__bn_desc_t bd = {.n = n, .c = l->c, .h = l->h, .w = l->w, .eps = l->d.eps, .fmt = l->fmt,
                         .relu = l->fused};
    return m->be.iface->bn_create(m->be.ctx, &bd, (stk__op_t **)plan);
}

/* Synchronized statistics: every rank's (count, mean, biased variance) per
 * channel gathered, and combined as the global batch's (Chan's parallel
 * formula, in double) into mean/var. Gathering moments rather than
 * all-reducing raw sums keeps the variance free of the cancellation that
 * sum of squares minus squared sum suffers. Returns the global count per
 * channel, or a negative error. */
static int64_t bn_sync_stats(stk_model_t *m, int i, const float *x, float *mean, float *var)
{
    const stk__backend_iface_t *be = m->be.iface;
    stk__layer_t *l = &m->layers[i];
    int64_t c = l->c;
    size_t row = 2 * (size_t)c + 1, ranks = (size_t)m->bn_sync.size;
    double *all = m->bn_sync_buf, *mine = all + ranks * row;
    mine[0] = (double)(m->batch * l->h * l->w);
    int rc = be->bn_stats(m->be.ctx, stk__plan(m, i), x, mine + 1);
    if (rc < 0)
        return rc;
    rc = m->bn_sync.allgather(m->bn_sync.user, mine, all, row * sizeof(double));
    if (rc < 0)
        return stk__error_prefix(rc, "batchnorm '%s': gathering the ranks' statistics", l->name);
    double total = 0;
    for (size_t r = 0; r < ranks; r++)
        total += all[r * row];
    for (int64_t k = 0; k < c; k++) {
        double mu = 0, v = 0;
        for (size_t r = 0; r < ranks; r++)
            mu += all[r * row] * all[r * row + 1 + (size_t)k];
        mu /= total;
        for (size_t r = 0; r < ranks; r++) {
            const double *q = all + r * row;
            double dm = q[1 + k] - mu;
            v += q[0] * (q[1 + c + k] + dm * dm);
        }
        mean[k] = (float)mu;
        var[k] = (float)(v / total);
    }
    return (int64_t)total;
}

static int bn_forward(stk_model_t *m, int i)
{
    const stk__backend_iface_t *be = m->be.iface;
    stk__layer_t *l = &m->layers[i];
    const float *x = stk__input(m, i, 0)->y, *g = stk__param(m, l, 0), *b = stk__param(m, l, 1);
    float *mean = l->extra, *var = mean + l->c;
    /* In eval its convolution may have written y already (layers/conv.c). */
    if (!m->train && l->fuse_conv && m->layers[l->fuse_conv].fuse_ran)
        return 0;
    if (!m->train)
        return be->bn_forward(m->be.ctx, stk__plan(m, i), 0, x, g, b, stk__buffer(m, l, 0), stk__buffer(m, l, 1),
                              l->y);
    int64_t count = m->batch * l->h * l->w;
    int rc;
    if (m->bn_sync.size > 0) {
        /* Normalized with the global statistics: the eval-mode op. */
        int64_t total = bn_sync_stats(m, i, x, mean, var);
        if (total < 0)
            return (int)total;
        count = *bn_count(l) = total;
        rc = be->bn_forward(m->be.ctx, stk__plan(m, i), 0, x, g, b, mean, var, l->y);
    } else {
        rc = be->bn_forward(m->be.ctx, stk__plan(m, i), 1, x, g, b, mean, var, l->y);
    }
    if (rc < 0)
        return rc;
    be->bn_update_running(m->be.ctx, l->c, count, l->d.momentum, mean, var, stk__buffer(m, l, 0),
                          stk__buffer(m, l, 1));
    l->num_batches_tracked++;
    return 0;
}

/* Synchronized backward: the local sums of dy and dy xhat are this rank's
 * dbeta and dgamma (DDP averages those like any gradient); their sums over
 * all ranks give dx the terms that the global mean and variance add. */
static int bn_backward_sync(stk_model_t *m, int i, float *dx)
{
    const stk__backend_iface_t *be = m->be.iface;
    stk__layer_t *l = &m->layers[i];
    const float *x = stk__input(m, i, 0)->y, *mean = l->extra, *var = mean + l->c;
    float *sums = (float *)m->bn_sync_buf, *sum_dy = sums, *sum_dyxhat = sums + l->c;
    int rc = be->bn_backward_sums(m->be.ctx, stk__plan(m, i), x, l->y, l->dy, mean, var, sum_dy, sum_dyxhat);
    if (rc < 0)
        return rc;
    be->accumulate(m->be.ctx, (size_t)l->c, sum_dyxhat, stk__grad(m, l, 0));
    be->accumulate(m->be.ctx, (size_t)l->c, sum_dy, stk__grad(m, l, 1));
    /* Every rank's model has the same layers, so all skip this together
     * when nothing needs the input's gradient. */
    if (!dx)
        return 0;
    rc = m->bn_sync.allreduce_sum(m->bn_sync.user, sums, 2 * (size_t)l->c);
    if (rc < 0)
        return stk__error_prefix(rc, "batchnorm '%s': summing the ranks' gradient terms", l->name);
    return be->bn_backward_apply(m->be.ctx, stk__plan(m, i), x, l->y, l->dy, stk__param(m, l, 0), mean, var, sum_dy,
                                 sum_dyxhat, *bn_count(l), dx);
}

static int bn_backward(stk_model_t *m, int i)
{
    const stk__backend_iface_t *be = m->be.iface;
    stk__layer_t *l = &m->layers[i];
    if (!m->train)
        return stk__error(STK_ESTATE, "batchnorm backward needs training mode");
    int acc;
    float *dx = stk__dx_target(m, i, 0, &acc);
    if (m->bn_sync.size > 0) {
        int rc = bn_backward_sync(m, i, dx);
        if (rc == 0 && dx)
            stk__dx_finish(m, i, 0, dx, acc);
        return rc;
    }
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

int stk__model_set_bn_sync(stk_model_t *m, const stk__bn_sync_t *s)
{
    if (!m)
        return stk__error(-EINVAL, "sync batchnorm: NULL model");
    if (!s) {
        free(m->bn_sync_buf);
        m->bn_sync_buf = NULL;
        memset(&m->bn_sync, 0, sizeof(m->bn_sync));
        return 0;
    }
    if (s->size < 1 || !s->allgather || !s->allreduce_sum)
        return stk__error(-EINVAL, "sync batchnorm: %d ranks, or a NULL collective", s->size);
    const stk__backend_iface_t *be = m->be.iface;
    size_t need = 0;
    for (int i = 0; i < m->nl; i++) {
        const stk__layer_t *l = &m->layers[i];
        if (l->d.kind != STK_LAYER_BATCHNORM2D)
            continue;
        /* The ranks' figures are combined on the host. */
        if (!be->bn_stats || !be->bn_backward_sums || !be->bn_backward_apply || !be->host_memory)
            return stk__error(STK_ECONFIG, "sync batchnorm: the %s backend has none (batchnorm '%s'); use per-rank "
                              "statistics (sync_bn off) there", be->name, l->name);
        size_t row = 2 * (size_t)l->c + 1;
        if (row * ((size_t)s->size + 1) > need)
            need = row * ((size_t)s->size + 1);
    }
    double *buf = NULL;
    if (need && !(buf = calloc(need, sizeof(double))))
        return stk__error(-ENOMEM, "sync batchnorm: out of memory for %zu figures", need);
    free(m->bn_sync_buf);
    m->bn_sync_buf = buf;
    m->bn_sync = *s;
    return 0;
}
