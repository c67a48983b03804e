/* SPDX-License-Identifier: MIT */
/* embedding: torch.nn.Embedding over a sequence of token ids (i64 N x T):
 * each id picks a row of the table (weight [vocab, dim]); the output is
 * N x T x dim. The row of padding_idx starts at zero and gets no gradient;
 * a row no id of the batch picked gets a zero gradient (the rows used are
 * the only ones written). */
#include "../layer.h"

#include <math.h>
#include <stddef.h>

#define DESC(f) offsetof(stk_layer_desc_t, f)

static const stk__layer_key_t embedding_keys[] = {
    {"vocab", STK__KEY_POS_INT, DESC(vocab), 0},
    {"dim", STK__KEY_INT, DESC(out), 0},
    {"padding_idx", STK__KEY_INT, DESC(padding_idx), 0},
    {NULL, 0, 0, 0},
};

static void embedding_defaults(stk_layer_desc_t *d)
{
    d->padding_idx = -1;
}

static int embedding_check(const stk_layer_desc_t *d, const char *where)
{
    if (d->vocab < 1 || d->vocab > ((int64_t)1 << 31))
        return STK__BAD_KEY(where, "vocab", "missing, or not a positive size up to 2^31");
    if (d->out < 1 || d->out > STK__MAX_DIM)
        return STK__BAD_KEY(where, "dim", "must be a positive size up to 2^20");
    if (d->padding_idx < -1 || d->padding_idx >= d->vocab)
        return STK__BAD_KEY(where, "padding_idx", "must be a row of the table, or -1 for none");
    return 0;
}

static int embedding_infer(stk_model_t *m, int i, const char *where)
{
    stk__layer_t *l = &m->layers[i];
    const stk__layer_t *a = stk__input(m, i, 0);
    if (!a->seq || a->dtype != STK_DTYPE_I64)
        return stk__error(STK_ESHAPE, "%s: key 'input': embedding needs token ids (an input with steps=T tokens=1)",
                          where);
    l->dtype = STK_DTYPE_F32;
    l->w = l->d.out;
    if (l->c * l->w > STK__MAX_SAMPLE_ELEMS || l->d.vocab * l->d.out > ((int64_t)1 << 34))
        return stk__error(STK_ESHAPE, "%s: output or table too large", where);
    return 0;
}

static int embedding_params(stk_model_t *m, int i)
{
    const stk__layer_t *l = &m->layers[i];
    int64_t shape[2] = {l->d.vocab, l->d.out};
    return stk__declare_param(m, i, "weight", STK_PARAM_WEIGHT, 2, shape);
}

/* torch's init: N(0, 1) (Box-Muller over (seed, layer) draws), the
 * padding row zero. */
static void embedding_init(stk_model_t *m, int i, float *params, float *buffers, int random)
{
    (void)buffers;
    const stk__layer_t *l = &m->layers[i];
    const stk_param_info_t *pi = stk__param_info(m, l, 0);
    float *w = params + pi->offset;
    if (random) {
        stk_rng_t r;
        stk_rng_init(&r, stk_rng_mix(m->seed, (uint64_t)i), 0);
        for (size_t j = 0; j < pi->count; j += 2) {
            float u1 = stk_rng_uniform(&r), u2 = stk_rng_uniform(&r);
            float rad = sqrtf(-2.0f * logf(1.0f - u1)), th = 6.2831853f * u2;
            w[j] = rad * cosf(th);
            if (j + 1 < pi->count)
                w[j + 1] = rad * sinf(th);
        }
    }
    if (l->d.padding_idx >= 0)
        for (int64_t j = 0; j < l->d.out; j++)
            w[l->d.padding_idx * l->d.out + j] = 0.0f;
}

/* Nothing to plan; a backend without row gathers (the CUDA backend,
 * for now) is refused here, when the model is made. */
static int embedding_plan(stk_model_t *m, int i, int64_t n, void **plan)
{
    (void)i;
    (void)n;
    *plan = NULL;
    if (!m->be.iface->gather_rows || !m->be.iface->scatter_add_rows)
        return stk__error(STK_EDEVICE, "the %s backend has no embedding lookups", m->be.iface->name);
    return 0;
}

static int embedding_forward(stk_model_t *m, int i)
{
    const stk__layer_t *l = &m->layers[i];
    /* the steps past each length hold padding ids (0 when the model
     * padded them); they are looked up too, and must be in range */
    return m->be.iface->gather_rows(m->be.ctx, m->batch * l->c, l->d.out, l->d.vocab,
                                    (const int64_t *)stk__input(m, i, 0)->y, stk__param(m, l, 0), l->y);
}

static int embedding_backward(stk_model_t *m, int i)
{
    const stk__backend_iface_t *be = m->be.iface;
    const stk__layer_t *l = &m->layers[i];
    float *g = stk__grad_target(m, l, 0);
    /* the fresh arena is zero; scratch must be made so */
    if (!m->grads_zero)
        be->zero(m->be.ctx, g, stk__param_count(m, l, 0));
    be->scatter_add_rows(m->be.ctx, m->batch * l->c, l->d.out, (const int64_t *)stk__input(m, i, 0)->y,
                         l->d.padding_idx, l->dy, g);
    stk__grad_finish(m, l, 0, g);
    return 0;
}

const stk__layer_class_t stk__layer_embedding = {
    .kind = STK_LAYER_EMBEDDING,
    .name = "embedding",
    .n_inputs = 1,
    .fmt = STK__FMT_PLAIN,
    .keys = embedding_keys,
    .required = "dim",
    .defaults = embedding_defaults,
    .check = embedding_check,
    .infer = embedding_infer,
    .params = embedding_params,
    .init = embedding_init,
    .plan = embedding_plan,
    .forward = embedding_forward,
    .backward = embedding_backward,
};

stk_layer_desc_t stk_layer_embedding(const char *name, int64_t vocab, int64_t dim, int64_t padding_idx)
{
    stk_layer_desc_t d;
    stk_layer_desc_default(&d, STK_LAYER_EMBEDDING);
    d.name = name;
    d.vocab = vocab;
    d.out = dim;
    d.padding_idx = padding_idx;
    return d;
}
