/* SPDX-License-Identifier: MIT */
/* lstm and gru: torch.nn.LSTM / torch.nn.GRU(batch_first=True) over a
 * sequence N x T x F, with the forward's lengths (packed-sequence
 * semantics: steps past a sample's length give zeros and take no
 * gradient). Layers, bidirectional, dropout between layers; the initial
 * state is zero, as torch's when none is given. Parameters keep torch's
 * names and layout (weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0,
 * ..._reverse, layer by layer), so a saved state loads into torch. The
 * backend's rnn slots (engine/backend_rnn.h) do the work. */
#include "../layer.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#define DESC(f) offsetof(stk_layer_desc_t, f)

static const stk__layer_key_t rnn_keys[] = {
    {"in", STK__KEY_POS_INT, DESC(in_c), 0},
    {"hidden", STK__KEY_INT, DESC(out), 0},
    {"layers", STK__KEY_POS_INT, DESC(num_layers), 0},
    {"bidirectional", STK__KEY_BOOL, DESC(bidirectional), 0},
    {"dropout", STK__KEY_FLOAT, DESC(p), 0},
    {NULL, 0, 0, 0},
};

/* The plan: the backend's op and, when the gradient arena is not fresh,
 * room for the whole parameter block's gradient before it is added. */
typedef struct rnn_plan {
    stk__rnn_op_t *op;
    float *dw;
} rnn_plan_t;

static void rnn_defaults(stk_layer_desc_t *d)
{
    d->num_layers = 1;
    d->p = 0.0f;
}

static int rnn_check(const stk_layer_desc_t *d, const char *where)
{
    if (d->out < 1 || d->out > STK__MAX_DIM)
        return STK__BAD_KEY(where, "hidden", "must be a positive size up to 2^20");
    if (d->num_layers < 1 || d->num_layers > 64)
        return STK__BAD_KEY(where, "layers", "must be 1 to 64");
    if (!(d->p >= 0.0f && d->p < 1.0f))
        return STK__BAD_KEY(where, "dropout", "must be in [0, 1)");
    return 0;
}

static int cell_of(const stk__layer_t *l)
{
    return l->d.kind == STK_LAYER_LSTM ? STK__RNN_LSTM : STK__RNN_GRU;
}

static stk__rnn_desc_t desc_of(const stk__layer_t *l, int64_t n)
{
    return (stk__rnn_desc_t){.cell = cell_of(l),
                             .batch = n,
                             .steps = l->in_c,
                             .input = l->in_w,
                             .hidden = l->d.out,
                             .layers = (int)l->d.num_layers,
                             .bidirectional = l->d.bidirectional != 0,
                             .dropout = l->d.p};
}

static int rnn_infer(stk_model_t *m, int i, const char *where)
{
    stk__layer_t *l = &m->layers[i];
    const stk__layer_t *a = stk__input(m, i, 0);
    if (!a->seq || a->dtype != STK_DTYPE_F32)
        return stk__error(STK_ESHAPE, "%s: key 'input': %s needs a sequence of features (N x T x F)%s", where,
                          l->cls->name, a->seq ? "; token ids need an embedding first" : "");
    if (l->d.in_c > 0 && l->d.in_c != a->w)
        return stk__error(STK_ESHAPE, "%s: key 'in': declared %lld input features, the input has %lld per step",
                          where, (long long)l->d.in_c, (long long)a->w);
    l->w = (l->d.bidirectional ? 2 : 1) * l->d.out;
    stk__rnn_desc_t d = desc_of(l, 1);
    if (l->c * l->w > STK__MAX_SAMPLE_ELEMS || stk__rnn_param_count(&d) > (size_t)STK__MAX_SAMPLE_ELEMS)
        return stk__error(STK_ESHAPE, "%s: output or weights over 2^31 elements", where);
    return 0;
}

/* weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, then _reverse, per
 * layer: the backend's block order (stk__rnn_param_offset). */
static int rnn_params(stk_model_t *m, int i)
{
    const stk__layer_t *l = &m->layers[i];
    stk__rnn_desc_t d = desc_of(l, 1);
    static const char *const names[4] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh"};
    int64_t g = stk__rnn_gates(d.cell), h = d.hidden;
    for (int layer = 0; layer < d.layers; layer++)
        for (int dir = 0; dir < (d.bidirectional ? 2 : 1); dir++)
            for (int k = 0; k < 4; k++) {
                char suffix[48];
                snprintf(suffix, sizeof(suffix), "%s_l%d%s", names[k], layer, dir ? "_reverse" : "");
                int64_t in = layer == 0 ? d.input : (d.bidirectional ? 2 : 1) * h;
                int64_t shape[2] = {g * h, k == 0 ? in : h};
                int rc = stk__declare_param(m, i, suffix, k < 2 ? STK_PARAM_WEIGHT : STK_PARAM_BIAS, k < 2 ? 2 : 1,
                                            shape);
                if (rc < 0)
                    return rc;
            }
    return 0;
}

/* torch's init: every tensor U(-1/sqrt(hidden), 1/sqrt(hidden)), drawn
 * from (seed, layer, tensor). */
static void rnn_init(stk_model_t *m, int i, float *params, float *buffers, int random)
{
    (void)buffers;
    if (!random)
        return;
    const stk__layer_t *l = &m->layers[i];
    float bound = 1.0f / sqrtf((float)l->d.out);
    for (int t = 0; t < l->nparam; t++) {
        const stk_param_info_t *pi = stk__param_info(m, l, t);
        stk_rng_t r;
        stk_rng_init(&r, stk_rng_mix(m->seed, (uint64_t)i), (uint64_t)t);
        for (size_t j = 0; j < pi->count; j++)
            params[pi->offset + j] = (2.0f * stk_rng_uniform(&r) - 1.0f) * bound;
    }
}

static void rnn_unplan(stk_model_t *m, int i, void *plan)
{
    (void)i;
    rnn_plan_t *p = plan;
    if (!p)
        return;
    m->be.iface->rnn_destroy(m->be.ctx, p->op);
    m->be.iface->free(m->be.ctx, p->dw);
    free(p);
}

static int rnn_plan(stk_model_t *m, int i, int64_t n, void **plan)
{
    const stk__layer_t *l = &m->layers[i];
    const stk__backend_iface_t *be = m->be.iface;
    if (!be->rnn_create)
        return stk__error(STK_EDEVICE, "the %s backend has no recurrent layers", be->name);
    rnn_plan_t *p = calloc(1, sizeof(*p));
    if (!p)
        return stk__error(-ENOMEM, "out of memory");
    stk__rnn_desc_t d = desc_of(l, n);
    int rc = be->rnn_create(m->be.ctx, &d, &p->op);
    if (rc == 0 && !(p->dw = be->alloc(m->be.ctx, stk__rnn_param_count(&d) * sizeof(float))))
        rc = stk__error(-ENOMEM, "out of memory");
    if (rc < 0) {
        rnn_unplan(m, i, p);
        return rc;
    }
    *plan = p;
    return 0;
}

static uint64_t rnn_key(const stk_model_t *m, int layer)
{
    return stk_rng_mix(stk_rng_mix(m->seed, 0x726e6eull), (uint64_t)layer); /* "rnn" */
}

static int rnn_forward(stk_model_t *m, int i)
{
    const stk__layer_t *l = &m->layers[i];
    rnn_plan_t *p = stk__plan(m, i);
    stk__rnn_args_t a = {.n = m->batch,
                         .t = l->c,
                         .lengths = m->lengths,
                         .w = stk__param(m, l, 0),
                         .x = stk__input(m, i, 0)->y,
                         .y = l->y,
                         .key = rnn_key(m, i),
                         .step = m->fwd_step};
    return m->be.iface->rnn_forward(m->be.ctx, p->op, m->train, &a);
}

static int rnn_backward(stk_model_t *m, int i)
{
    const stk__backend_iface_t *be = m->be.iface;
    const stk__layer_t *l = &m->layers[i];
    rnn_plan_t *p = stk__plan(m, i);
    int acc;
    float *dx = stk__dx_target(m, i, 0, &acc);
    float *dw = m->grads_zero ? stk__grad(m, l, 0) : p->dw;
    stk__rnn_args_t a = {.n = m->batch, .t = l->c, .lengths = m->lengths, .w = stk__param(m, l, 0), .dy = l->dy,
                         .dx = dx, .dw = dw};
    int rc = be->rnn_backward(m->be.ctx, p->op, &a);
    if (rc < 0)
        return rc;
    if (dw == p->dw) {
        size_t n = 0;
        for (int k = 0; k < l->nparam; k++)
            n += stk__param_count(m, l, k);
        be->accumulate(m->be.ctx, n, dw, stk__grad(m, l, 0));
    }
    stk__dx_finish(m, i, 0, dx, acc);
    return 0;
}

const stk__layer_class_t stk__layer_lstm = {
    .kind = STK_LAYER_LSTM,
    .name = "lstm",
    .n_inputs = 1,
    .fmt = STK__FMT_PLAIN,
    .keys = rnn_keys,
    .required = "hidden",
    .defaults = rnn_defaults,
    .check = rnn_check,
    .infer = rnn_infer,
    .params = rnn_params,
    .init = rnn_init,
    .plan = rnn_plan,
    .unplan = rnn_unplan,
    .forward = rnn_forward,
    .backward = rnn_backward,
};

const stk__layer_class_t stk__layer_gru = {
    .kind = STK_LAYER_GRU,
    .name = "gru",
    .n_inputs = 1,
    .fmt = STK__FMT_PLAIN,
    .keys = rnn_keys,
    .required = "hidden",
    .defaults = rnn_defaults,
    .check = rnn_check,
    .infer = rnn_infer,
    .params = rnn_params,
    .init = rnn_init,
    .plan = rnn_plan,
    .unplan = rnn_unplan,
    .forward = rnn_forward,
    .backward = rnn_backward,
};

static stk_layer_desc_t rnn_desc(stk_layer_kind_t kind, const char *name, int64_t hidden, int64_t layers,
                                 int bidirectional, float dropout)
{
    stk_layer_desc_t d;
    stk_layer_desc_default(&d, kind);
    d.name = name;
    d.out = hidden;
    d.num_layers = layers;
    d.bidirectional = bidirectional;
    d.p = dropout;
    return d;
}

stk_layer_desc_t stk_layer_lstm(const char *name, int64_t hidden, int64_t layers, int bidirectional, float dropout)
{
    return rnn_desc(STK_LAYER_LSTM, name, hidden, layers, bidirectional, dropout);
}

stk_layer_desc_t stk_layer_gru(const char *name, int64_t hidden, int64_t layers, int bidirectional, float dropout)
{
    return rnn_desc(STK_LAYER_GRU, name, hidden, layers, bidirectional, dropout);
}
