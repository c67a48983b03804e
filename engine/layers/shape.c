/* SPDX-License-Identifier: MIT */
/* Shape layers: the graph's input, flatten (a view, or a layout conversion
 * when its input is blocked), and the two-input add and concat. */
#include "../layer.h"

#include <stddef.h>

/* ------------------------------------------------------------------ input */

static const stk__layer_key_t input_keys[] = {
    {"shape", STK__KEY_SHAPE, offsetof(stk_layer_desc_t, in_c), 0},
    /* a sequence: steps=T and features=F (f32), or tokens=1 (i64 ids) */
    {"steps", STK__KEY_POS_INT, offsetof(stk_layer_desc_t, steps), 0},
    {"features", STK__KEY_POS_INT, offsetof(stk_layer_desc_t, in_c), 0},
    {"tokens", STK__KEY_BOOL, offsetof(stk_layer_desc_t, tokens), 0},
    {NULL, 0, 0, 0},
};

static int input_check(const stk_layer_desc_t *d, const char *where)
{
    if (d->steps > 0) {
        if (d->steps > STK__MAX_DIM)
            return STK__BAD_KEY(where, "steps", "must be at most 2^20");
        if (d->in_h != 1 || d->in_w != 1)
            return STK__BAD_KEY(where, "shape", "a sequence input takes features=F (or tokens=1), not C,H,W");
        if (d->tokens && d->in_c > 1)
            return STK__BAD_KEY(where, "features", "token ids have no features");
        if (!d->tokens && (d->in_c < 1 || d->in_c > STK__MAX_DIM || d->in_c * d->steps > STK__MAX_SAMPLE_ELEMS))
            return STK__BAD_KEY(where, "features", "missing or too large (a sequence of f32 features needs it; "
                                                   "token ids need tokens=1)");
        return 0;
    }
    if (d->steps < 0)
        return STK__BAD_KEY(where, "steps", "must be positive");
    if (d->tokens)
        return STK__BAD_KEY(where, "tokens", "token ids are a sequence: give steps=T");
    if (d->in_c == 0)
        return stk__error(STK_ECONFIG, "%s: key 'shape': missing (input needs shape=C,H,W, or steps=T for a "
                                       "sequence)", where);
    if (d->in_c < 1 || d->in_h < 1 || d->in_w < 1 || d->in_c > STK__MAX_DIM || d->in_h > STK__MAX_DIM ||
        d->in_w > STK__MAX_DIM || d->in_c * d->in_h * d->in_w > STK__MAX_SAMPLE_ELEMS)
        return STK__BAD_KEY(where, "shape", "must be positive C,H,W of at most 2^31 elements");
    return 0;
}

static int input_infer(stk_model_t *m, int i, const char *where)
{
    (void)where;
    stk__layer_t *l = &m->layers[i];
    if (l->d.steps > 0) {
        l->seq = 1;
        l->flat = 0;
        l->c = l->d.steps;
        l->h = 1;
        l->w = l->d.tokens ? 1 : l->d.in_c;
        l->dtype = l->d.tokens ? STK_DTYPE_I64 : STK_DTYPE_F32;
        l->rf = l->jump = 1;
        return 0;
    }
    l->flat = l->d.in_h == 1 && l->d.in_w == 1;
    l->c = l->d.in_c;
    l->h = l->d.in_h;
    l->w = l->d.in_w;
    l->rf = 1;
    l->jump = 1;
    return 0;
}

/* The input's y is the caller's batch, bound by each forward. */
static int input_forward(stk_model_t *m, int i)
{
    (void)m;
    (void)i;
    return 0;
}

const stk__layer_class_t stk__layer_input = {
    .kind = STK_LAYER_INPUT,
    .name = "input",
    .n_inputs = 0,
    .fmt = STK__FMT_PLAIN,
    .keys = input_keys,
    .check = input_check,
    .infer = input_infer,
    .forward = input_forward,
};

/* ---------------------------------------------------------------- flatten */

static int flatten_infer(stk_model_t *m, int i, const char *where)
{
    (void)where;
    stk__layer_t *l = &m->layers[i];
    l->c = l->in_c * l->in_h * l->in_w;
    l->h = l->w = 1;
    l->flat = 1;
    l->alias = 1;
    return 0;
}

/* Flatten of a blocked tensor is a conversion, not a view. */
static void flatten_after_layout(stk_model_t *m, int i)
{
    stk__layer_t *l = &m->layers[i];
    if (stk__input(m, i, 0)->fmt != STK__LAYOUT_PLAIN)
        l->alias = 0;
}

static int flatten_plan(stk_model_t *m, int i, int64_t n, void **plan)
{
    const stk__layer_t *l = &m->layers[i];
    return m->be.iface->reorder_create(m->be.ctx, n, l->in_c, l->in_h, l->in_w, stk__input(m, i, 0)->fmt,
                                       STK__LAYOUT_PLAIN, (stk__op_t **)plan);
}

static int flatten_forward(stk_model_t *m, int i)
{
    const stk__layer_t *l = &m->layers[i];
    if (l->alias)
        return 0;
    return m->be.iface->reorder_run(m->be.ctx, stk__plan(m, i), 0, stk__input(m, i, 0)->y, l->y);
}

static int flatten_backward(stk_model_t *m, int i)
{
    const stk__layer_t *l = &m->layers[i];
    if (l->alias)
        return 0;
    int acc, rc = 0;
    float *dx = stk__dx_target(m, i, 0, &acc);
    if (dx && (rc = m->be.iface->reorder_run(m->be.ctx, stk__plan(m, i), 1, l->dy, dx)) == 0)
        stk__dx_finish(m, i, 0, dx, acc);
    return rc;
}

const stk__layer_class_t stk__layer_flatten = {
    .kind = STK_LAYER_FLATTEN,
    .name = "flatten",
    .n_inputs = 1,
    .fmt = STK__FMT_PLAIN,
    .infer = flatten_infer,
    .after_layout = flatten_after_layout,
    .plan = flatten_plan,
    .forward = flatten_forward,
    .backward = flatten_backward,
};

/* ------------------------------------------------------------ add, concat */

static int two_inputs_check(const stk_layer_desc_t *d, const char *where)
{
    if (!d->inputs[1])
        return STK__BAD_KEY(where, "inputs", "needs two inputs");
    return 0;
}

/* The deeper input's receptive field and jump. */
static void merge_rf(stk__layer_t *l, const stk__layer_t *b)
{
    if (b->rf > l->rf)
        l->rf = b->rf;
    if (b->jump > l->jump)
        l->jump = b->jump;
}

static int add_infer(stk_model_t *m, int i, const char *where)
{
    stk__layer_t *l = &m->layers[i];
    const stk__layer_t *a = stk__input(m, i, 0), *b = stk__input(m, i, 1);
    if (a->c != b->c || a->h != b->h || a->w != b->w)
        return stk__error(STK_ESHAPE, "%s: key 'inputs': '%s' is %lldx%lldx%lld but '%s' is %lldx%lldx%lld", where,
                          a->name, (long long)a->c, (long long)a->h, (long long)a->w, b->name, (long long)b->c,
                          (long long)b->h, (long long)b->w);
    merge_rf(l, b);
    return 0;
}

static int add_forward(stk_model_t *m, int i)
{
    const stk__layer_t *l = &m->layers[i];
    m->be.iface->add(m->be.ctx, stk__numel(m, l), stk__input(m, i, 0)->y, stk__input(m, i, 1)->y, l->y);
    return 0;
}

static int add_backward(stk_model_t *m, int i)
{
    const stk__layer_t *l = &m->layers[i];
    for (int k = 0; k < 2; k++) {
        int acc;
        float *dx = stk__dx_target(m, i, k, &acc);
        if (!dx)
            continue;
        int rc = m->be.iface->copy(m->be.ctx, dx, l->dy, stk__numel(m, l) * sizeof(float));
        if (rc < 0)
            return rc;
        stk__dx_finish(m, i, k, dx, acc);
    }
    return 0;
}

const stk__layer_class_t stk__layer_add = {
    .kind = STK_LAYER_ADD,
    .name = "add",
    .n_inputs = 2,
    .fmt = STK__FMT_KEEP,
    .check = two_inputs_check,
    .infer = add_infer,
    .forward = add_forward,
    .backward = add_backward,
};

static int concat_infer(stk_model_t *m, int i, const char *where)
{
    stk__layer_t *l = &m->layers[i];
    const stk__layer_t *a = stk__input(m, i, 0), *b = stk__input(m, i, 1);
    if (a->h != b->h || a->w != b->w)
        return stk__error(STK_ESHAPE, "%s: key 'inputs': '%s' is %lldx%lld but '%s' is %lldx%lld", where, a->name,
                          (long long)a->h, (long long)a->w, b->name, (long long)b->h, (long long)b->w);
    l->c = a->c + b->c;
    merge_rf(l, b);
    return 0;
}

static int concat_forward(stk_model_t *m, int i)
{
    const stk__layer_t *l = &m->layers[i], *b = stk__input(m, i, 1);
    m->be.iface->concat_forward(m->be.ctx, m->batch, l->in_c, b->c, l->h * l->w, stk__input(m, i, 0)->y, b->y,
                                l->y);
    return 0;
}

/* Concat adds into its inputs' dy itself, so it asks for the real buffers
 * and whether they already hold a value. */
static int concat_backward(stk_model_t *m, int i)
{
    const stk__layer_t *l = &m->layers[i], *b = stk__input(m, i, 1);
    int acc_a, acc_b;
    float *da = stk__dx_direct(m, i, 0, &acc_a);
    float *db = stk__dx_direct(m, i, 1, &acc_b);
    m->be.iface->concat_backward(m->be.ctx, m->batch, l->in_c, b->c, l->h * l->w, l->dy, da, db, acc_a, acc_b);
    return 0;
}

const stk__layer_class_t stk__layer_concat = {
    .kind = STK_LAYER_CONCAT,
    .name = "concat",
    .n_inputs = 2,
    .fmt = STK__FMT_PLAIN_GRAPH,
    .check = two_inputs_check,
    .infer = concat_infer,
    .forward = concat_forward,
    .backward = concat_backward,
};

/* ----------------------------------------------------------- constructors */

stk_layer_desc_t stk_layer_input(const char *name, int64_t c, int64_t h, int64_t w)
{
    stk_layer_desc_t d;
    stk_layer_desc_default(&d, STK_LAYER_INPUT);
    d.name = name;
    d.in_c = c;
    d.in_h = h;
    d.in_w = w;
    return d;
}

stk_layer_desc_t stk_layer_input_sequence(const char *name, int64_t steps, int64_t features)
{
    stk_layer_desc_t d = stk_layer_input(name, features, 1, 1);
    d.steps = steps;
    return d;
}

stk_layer_desc_t stk_layer_input_tokens(const char *name, int64_t steps)
{
    stk_layer_desc_t d = stk_layer_input(name, 0, 1, 1);
    d.steps = steps;
    d.tokens = 1;
    return d;
}

stk_layer_desc_t stk_layer_flatten(const char *name)
{
    stk_layer_desc_t d;
    stk_layer_desc_default(&d, STK_LAYER_FLATTEN);
    d.name = name;
    return d;
}

static stk_layer_desc_t two_inputs(stk_layer_kind_t kind, const char *name, const char *a, const char *b)
{
    stk_layer_desc_t d;
    stk_layer_desc_default(&d, kind);
    d.name = name;
    d.inputs[0] = a;
    d.inputs[1] = b;
    return d;
}

stk_layer_desc_t stk_layer_add(const char *name, const char *a, const char *b)
{
    return two_inputs(STK_LAYER_ADD, name, a, b);
}

stk_layer_desc_t stk_layer_concat(const char *name, const char *a, const char *b)
{
    return two_inputs(STK_LAYER_CONCAT, name, a, b);
}
