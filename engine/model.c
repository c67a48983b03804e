/* SPDX-License-Identifier: MIT */
/* The graph: the builder, shape inference with errors that name the layer's
 * line and key, the parameter / gradient / buffer arenas, planning the
 * backend ops for a batch size, forward, backward and the accessors. */
#include "model.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const kind_names[STK_LAYER_KIND_COUNT] = {
    [STK_LAYER_INVALID] = "invalid",
    [STK_LAYER_INPUT] = "input",
    [STK_LAYER_CONV2D] = "conv2d",
    [STK_LAYER_BATCHNORM2D] = "batchnorm2d",
    [STK_LAYER_RELU] = "relu",
    [STK_LAYER_LEAKY_RELU] = "leaky_relu",
    [STK_LAYER_GELU] = "gelu",
    [STK_LAYER_SIGMOID] = "sigmoid",
    [STK_LAYER_TANH] = "tanh",
    [STK_LAYER_MAXPOOL2D] = "maxpool2d",
    [STK_LAYER_AVGPOOL2D] = "avgpool2d",
    [STK_LAYER_GLOBAL_AVGPOOL] = "global_avgpool",
    [STK_LAYER_LINEAR] = "linear",
    [STK_LAYER_DROPOUT] = "dropout",
    [STK_LAYER_FLATTEN] = "flatten",
    [STK_LAYER_ADD] = "add",
    [STK_LAYER_CONCAT] = "concat",
    [STK_LAYER_CROSS_ENTROPY] = "cross_entropy",
};

const char *stk_layer_kind_name(stk_layer_kind_t kind)
{
    if ((int)kind <= 0 || kind >= STK_LAYER_KIND_COUNT)
        return "invalid";
    return kind_names[kind];
}

stk_layer_kind_t stk_layer_kind_from_name(const char *name)
{
    if (!name)
        return STK_LAYER_INVALID;
    for (int k = 1; k < STK_LAYER_KIND_COUNT; k++)
        if (strcmp(name, kind_names[k]) == 0)
            return (stk_layer_kind_t)k;
    return STK_LAYER_INVALID;
}

stk_layer_desc_t stk_layer_desc_default(stk_layer_kind_t kind)
{
    stk_layer_desc_t d;
    memset(&d, 0, sizeof(d));
    d.kind = kind;
    d.kernel_h = d.kernel_w = kind == STK_LAYER_CONV2D ? 3 : 2;
    d.dilation_h = d.dilation_w = 1;
    d.groups = 1;
    d.bias = 1;
    d.eps = 1e-5f;
    d.momentum = 0.1f;
    d.negative_slope = 0.01f;
    d.p = 0.5f;
    d.in_h = d.in_w = 1;
    if (kind == STK_LAYER_CONV2D)
        d.stride_h = d.stride_w = 1;
    return d;
}

const char *stk__layer_where(const stk__layer_t *l, char *buf, size_t cap)
{
    if (l->line > 0)
        snprintf(buf, cap, "line %d (%s '%s')", l->line, stk_layer_kind_name(l->d.kind), l->name);
    else
        snprintf(buf, cap, "layer '%s' (%s)", l->name, stk_layer_kind_name(l->d.kind));
    return buf;
}

/* ---------------------------------------------------------------- builder */

int stk_model_builder_create(stk_model_builder_t **out)
{
    if (!out)
        return stk__error(-EINVAL, "model builder: out is NULL");
    *out = calloc(1, sizeof(**out));
    return *out ? 0 : stk__error(-ENOMEM, "model builder: out of memory");
}

static void layer_free_strings(stk__layer_t *l)
{
    free(l->name);
    free(l->in_name[0]);
    free(l->in_name[1]);
    l->name = l->in_name[0] = l->in_name[1] = NULL;
}

void stk_model_builder_destroy(stk_model_builder_t **b)
{
    if (!b || !*b)
        return;
    for (int i = 0; i < (*b)->n; i++)
        layer_free_strings(&(*b)->layers[i]);
    free((*b)->layers);
    free(*b);
    *b = NULL;
}

static int find_layer(const stk__layer_t *layers, int n, const char *name)
{
    for (int i = n - 1; i >= 0; i--)
        if (strcmp(layers[i].name, name) == 0)
            return i;
    return -1;
}

/* Checks what needs no shapes; key names the offending setting. */
/* Sizes past these are mistakes, and keep every size product in int64. */
#define MAX_DIM (1 << 20)
#define MAX_KERNEL 1024
#define MAX_SAMPLE_ELEMS ((int64_t)1 << 31)

static int check_desc(const stk_layer_desc_t *d, const char *where)
{
#define BAD(key, fmt, ...) return stk__error(STK_ECONFIG, "%s: key '%s': " fmt, where, key, ##__VA_ARGS__)
    switch (d->kind) {
    case STK_LAYER_INPUT:
        if (d->in_c < 1 || d->in_h < 1 || d->in_w < 1 || d->in_c > MAX_DIM || d->in_h > MAX_DIM ||
            d->in_w > MAX_DIM || d->in_c * d->in_h * d->in_w > MAX_SAMPLE_ELEMS)
            BAD("shape", "must be positive C,H,W of at most 2^31 elements");
        break;
    case STK_LAYER_CONV2D:
        if (d->out < 1 || d->out > MAX_DIM)
            BAD("out", "must be a positive channel count up to 2^20");
        if (d->kernel_h < 1 || d->kernel_w < 1 || d->kernel_h > MAX_KERNEL || d->kernel_w > MAX_KERNEL)
            BAD("kernel", "must be in [1, 1024]");
        if (d->dilation_h > MAX_KERNEL || d->dilation_w > MAX_KERNEL || d->pad_h > MAX_DIM || d->pad_w > MAX_DIM ||
            d->stride_h > MAX_DIM || d->stride_w > MAX_DIM)
            BAD("dilation", "dilation, pad or stride too large");
        if (d->stride_h < 1 || d->stride_w < 1)
            BAD("stride", "must be positive");
        if (d->pad_h < 0 || d->pad_w < 0)
            BAD("pad", "must not be negative");
        if (d->dilation_h < 1 || d->dilation_w < 1)
            BAD("dilation", "must be >= 1");
        if (d->groups < 1 || d->out % d->groups)
            BAD("groups", "must be positive and divide out (%lld)", (long long)d->out);
        break;
    case STK_LAYER_MAXPOOL2D:
    case STK_LAYER_AVGPOOL2D:
        if (d->kernel_h < 1 || d->kernel_w < 1 || d->kernel_h > MAX_KERNEL || d->kernel_w > MAX_KERNEL)
            BAD("kernel", "must be in [1, 1024]");
        if (d->stride_h < 0 || d->stride_w < 0 || d->stride_h > MAX_DIM || d->stride_w > MAX_DIM)
            BAD("stride", "must not be negative");
        if (d->pad_h < 0 || d->pad_w < 0 || 2 * d->pad_h > d->kernel_h || 2 * d->pad_w > d->kernel_w)
            BAD("pad", "must be between 0 and half the kernel");
        break;
    case STK_LAYER_BATCHNORM2D:
        if (!(d->eps > 0.0f))
            BAD("eps", "must be positive");
        if (!(d->momentum >= 0.0f && d->momentum <= 1.0f))
            BAD("momentum", "must be in [0, 1]");
        break;
    case STK_LAYER_LINEAR:
        if (d->out < 1 || d->out > MAX_DIM)
            BAD("out", "must be a positive feature count up to 2^20");
        break;
    case STK_LAYER_DROPOUT:
        if (!(d->p >= 0.0f && d->p < 1.0f))
            BAD("p", "must be in [0, 1)");
        break;
    case STK_LAYER_CROSS_ENTROPY:
        if (!(d->label_smoothing >= 0.0f && d->label_smoothing <= 1.0f))
            BAD("smoothing", "must be in [0, 1]");
        break;
    case STK_LAYER_ADD:
    case STK_LAYER_CONCAT:
        if (!d->inputs[1])
            BAD("inputs", "needs two inputs");
        break;
    default:
        break;
    }
    return 0;
#undef BAD
}

int stk__builder_add_line(stk_model_builder_t *b, const stk_layer_desc_t *desc, int line)
{
    if (!b || !desc)
        return stk__error(-EINVAL, "model builder: NULL argument");
    char where[160];
    if (line > 0)
        snprintf(where, sizeof(where), "line %d", line);
    else
        snprintf(where, sizeof(where), "layer %d ('%s')", b->n, desc->name ? desc->name : "unnamed");
    if (desc->kind <= STK_LAYER_INVALID || desc->kind >= STK_LAYER_KIND_COUNT)
        return stk__error(STK_ECONFIG, "%s: unknown layer kind %d", where, (int)desc->kind);
    if ((b->n == 0) != (desc->kind == STK_LAYER_INPUT))
        return stk__error(STK_ECONFIG, "%s: %s", where,
                          b->n == 0 ? "the first layer must be 'input'" : "only the first layer may be 'input'");
    int rc = check_desc(desc, where);
    if (rc < 0)
        return rc;
    char autoname[64];
    const char *name = desc->name;
    if (!name || !*name) {
        snprintf(autoname, sizeof(autoname), "%s%d", stk_layer_kind_name(desc->kind), b->n);
        name = autoname;
    }
    if (find_layer(b->layers, b->n, name) >= 0)
        return stk__error(STK_ECONFIG, "%s: key 'name': '%s' is already used", where, name);
    if (b->n == b->cap) {
        int cap = b->cap ? 2 * b->cap : 16;
        stk__layer_t *nl = realloc(b->layers, (size_t)cap * sizeof(*nl));
        if (!nl)
            return stk__error(-ENOMEM, "model builder: out of memory");
        b->layers = nl;
        b->cap = cap;
    }
    stk__layer_t *l = &b->layers[b->n];
    memset(l, 0, sizeof(*l));
    l->d = *desc;
    l->line = line;
    l->name = strdup(name);
    for (int i = 0; i < 2; i++)
        if (desc->inputs[i])
            l->in_name[i] = strdup(desc->inputs[i]);
    if (!l->name || (desc->inputs[0] && !l->in_name[0]) || (desc->inputs[1] && !l->in_name[1])) {
        layer_free_strings(l);
        return stk__error(-ENOMEM, "model builder: out of memory");
    }
    b->n++;
    return 0;
}

int stk_model_builder_add(stk_model_builder_t *b, const stk_layer_desc_t *desc)
{
    return stk__builder_add_line(b, desc, 0);
}

/* --------------------------------------------------------- shape inference */

static int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d)
{
    int64_t span = d * (k - 1) + 1;
    if (in + 2 * p < span)
        return 0;
    return (in + 2 * p - span) / s + 1;
}

/* Fills inputs, output shapes and receptive fields of every layer. */
static int infer_shapes(stk_model_t *m)
{
    char where[200];
    for (int i = 0; i < m->nl; i++) {
        stk__layer_t *l = &m->layers[i];
        stk_layer_desc_t *d = &l->d;
        stk__layer_where(l, where, sizeof(where));
        l->root = i;
        l->param[0] = l->param[1] = l->buffer[0] = l->buffer[1] = -1;
        if (d->kind == STK_LAYER_INPUT) {
            l->flat = d->in_h == 1 && d->in_w == 1;
            l->c = d->in_c;
            l->h = d->in_h;
            l->w = d->in_w;
            l->rf = 1;
            l->jump = 1;
            continue;
        }
        l->nin = (d->kind == STK_LAYER_ADD || d->kind == STK_LAYER_CONCAT) ? 2 : 1;
        for (int k = 0; k < l->nin; k++) {
            if (!l->in_name[k]) {
                l->in[k] = i - 1;
                continue;
            }
            l->in[k] = find_layer(m->layers, i, l->in_name[k]);
            if (l->in[k] < 0)
                return stk__error(STK_ECONFIG, "%s: key '%s': no layer named '%s' before this one", where,
                                  l->nin == 2 ? "inputs" : "input", l->in_name[k]);
            if (m->layers[l->in[k]].d.kind == STK_LAYER_CROSS_ENTROPY)
                return stk__error(STK_ECONFIG, "%s: key 'input': '%s' is a loss", where, l->in_name[k]);
        }
        const stk__layer_t *a = &m->layers[l->in[0]];
        if (a->d.kind == STK_LAYER_CROSS_ENTROPY)
            return stk__error(STK_ECONFIG, "%s: nothing may follow the loss layer", where);
        l->in_c = a->c;
        l->in_h = a->h;
        l->in_w = a->w;
        l->c = a->c;
        l->h = a->h;
        l->w = a->w;
        l->rf = a->rf;
        l->jump = a->jump;
        l->flat = a->flat || d->kind == STK_LAYER_FLATTEN || d->kind == STK_LAYER_LINEAR;
        switch (d->kind) {
        case STK_LAYER_CONV2D: {
            if (d->in_c > 0 && d->in_c != a->c)
                return stk__error(STK_ESHAPE, "%s: key 'in': declared %lld input channels, the input has %lld", where,
                                  (long long)d->in_c, (long long)a->c);
            if (a->c % d->groups)
                return stk__error(STK_ESHAPE, "%s: key 'groups': %lld does not divide the %lld input channels",
                                  where, (long long)d->groups, (long long)a->c);
            l->c = d->out;
            l->h = out_size(a->h, d->kernel_h, d->stride_h, d->pad_h, d->dilation_h);
            l->w = out_size(a->w, d->kernel_w, d->stride_w, d->pad_w, d->dilation_w);
            if (l->h < 1 || l->w < 1)
                return stk__error(STK_ESHAPE, "%s: key 'kernel': the dilated kernel is larger than the padded "
                                  "%lldx%lld input", where, (long long)a->h, (long long)a->w);
            int64_t keff = d->kernel_h + (d->kernel_h - 1) * (d->dilation_h - 1);
            l->rf = a->rf + (keff - 1) * a->jump;
            l->jump = a->jump * d->stride_h;
            break;
        }
        case STK_LAYER_MAXPOOL2D:
        case STK_LAYER_AVGPOOL2D: {
            if (d->stride_h == 0)
                d->stride_h = d->kernel_h;
            if (d->stride_w == 0)
                d->stride_w = d->kernel_w;
            l->h = out_size(a->h, d->kernel_h, d->stride_h, d->pad_h, 1);
            l->w = out_size(a->w, d->kernel_w, d->stride_w, d->pad_w, 1);
            if (l->h < 1 || l->w < 1)
                return stk__error(STK_ESHAPE, "%s: key 'kernel': larger than the padded %lldx%lld input", where,
                                  (long long)a->h, (long long)a->w);
            l->rf = a->rf + (d->kernel_h - 1) * a->jump;
            l->jump = a->jump * d->stride_h;
            break;
        }
        case STK_LAYER_GLOBAL_AVGPOOL:
            l->rf = a->rf + (a->h - 1) * a->jump;
            l->h = l->w = 1;
            break;
        case STK_LAYER_BATCHNORM2D:
            if (d->in_c > 0 && d->in_c != a->c)
                return stk__error(STK_ESHAPE, "%s: key 'in': declared %lld channels, the input has %lld", where,
                                  (long long)d->in_c, (long long)a->c);
            break;
        case STK_LAYER_FLATTEN:
            l->c = a->c * a->h * a->w;
            l->h = l->w = 1;
            l->alias = 1;
            l->root = a->root;
            break;
        case STK_LAYER_LINEAR:
            if (a->h != 1 || a->w != 1)
                return stk__error(STK_ESHAPE, "%s: key 'input': linear needs flat features, the input is "
                                  "%lldx%lldx%lld (add a flatten layer)", where, (long long)a->c, (long long)a->h,
                                  (long long)a->w);
            if (d->in_c > 0 && d->in_c != a->c)
                return stk__error(STK_ESHAPE, "%s: key 'in': declared %lld input features, the input has %lld",
                                  where, (long long)d->in_c, (long long)a->c);
            l->c = d->out;
            break;
        case STK_LAYER_ADD:
        case STK_LAYER_CONCAT: {
            const stk__layer_t *b = &m->layers[l->in[1]];
            if (d->kind == STK_LAYER_ADD && (a->c != b->c || a->h != b->h || a->w != b->w))
                return stk__error(STK_ESHAPE, "%s: key 'inputs': '%s' is %lldx%lldx%lld but '%s' is %lldx%lldx%lld",
                                  where, a->name, (long long)a->c, (long long)a->h, (long long)a->w, b->name,
                                  (long long)b->c, (long long)b->h, (long long)b->w);
            if (d->kind == STK_LAYER_CONCAT && (a->h != b->h || a->w != b->w))
                return stk__error(STK_ESHAPE, "%s: key 'inputs': '%s' is %lldx%lld but '%s' is %lldx%lld", where,
                                  a->name, (long long)a->h, (long long)a->w, b->name, (long long)b->h,
                                  (long long)b->w);
            if (d->kind == STK_LAYER_CONCAT)
                l->c = a->c + b->c;
            if (b->rf > l->rf)
                l->rf = b->rf;
            if (b->jump > l->jump)
                l->jump = b->jump;
            break;
        }
        case STK_LAYER_CROSS_ENTROPY:
            if (a->h != 1 || a->w != 1)
                return stk__error(STK_ESHAPE, "%s: key 'input': the loss needs flat logits, the input is "
                                  "%lldx%lldx%lld", where, (long long)a->c, (long long)a->h, (long long)a->w);
            if (i != m->nl - 1)
                return stk__error(STK_ECONFIG, "%s: the loss must be the last layer", where);
            m->loss_layer = i;
            m->logits_layer = l->in[0];
            l->c = l->h = l->w = 1;
            break;
        default:
            break;
        }
        int64_t wcount = (d->kind == STK_LAYER_CONV2D ? d->kernel_h * d->kernel_w * (l->in_c / d->groups) : 0) +
                         (d->kind == STK_LAYER_LINEAR ? l->in_c : 0);
        if (l->c * l->h * l->w > MAX_SAMPLE_ELEMS || (l->c > 0 && wcount > MAX_SAMPLE_ELEMS / l->c))
            return stk__error(STK_ESHAPE, "%s: output or weights over 2^31 elements per sample", where);
    }
    return 0;
}

/* Activation layouts: a convolution with a multiple of 8 output channels
 * writes the blocked layout oneDNN's vector kernels want; layers that keep
 * the channel count keep their input's layout; flatten, linear and the
 * loss are plain (flatten converts). When a two-input layer would mix
 * layouts, or a concat is present, or the backend has no blocked ops (the
 * CUDA backend), the whole graph stays plain. */
static void assign_layouts(stk_model_t *m)
{
    int uniform_plain = !m->be.iface->blocked_layouts;
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < m->nl; i++) {
            stk__layer_t *l = &m->layers[i];
            int in_fmt = l->nin ? m->layers[l->in[0]].fmt : STK__LAYOUT_PLAIN;
            switch (l->d.kind) {
            case STK_LAYER_CONV2D:
                l->fmt = !uniform_plain && l->c % 8 == 0 ? STK__LAYOUT_BLOCKED8 : STK__LAYOUT_PLAIN;
                break;
            case STK_LAYER_INPUT:
            case STK_LAYER_FLATTEN:
            case STK_LAYER_LINEAR:
            case STK_LAYER_CROSS_ENTROPY:
            case STK_LAYER_CONCAT:
                l->fmt = STK__LAYOUT_PLAIN;
                uniform_plain |= l->d.kind == STK_LAYER_CONCAT;
                break;
            case STK_LAYER_ADD:
                if (in_fmt != m->layers[l->in[1]].fmt)
                    uniform_plain = 1;
                l->fmt = in_fmt;
                break;
            default:
                l->fmt = in_fmt;
                break;
            }
        }
        if (!uniform_plain)
            break;
    }
    if (uniform_plain)
        for (int i = 0; i < m->nl; i++)
            m->layers[i].fmt = STK__LAYOUT_PLAIN;
    /* Flatten of a blocked tensor is a conversion, not a view. */
    for (int i = 0; i < m->nl; i++) {
        stk__layer_t *l = &m->layers[i];
        if (l->d.kind == STK_LAYER_FLATTEN && m->layers[l->in[0]].fmt != STK__LAYOUT_PLAIN) {
            l->alias = 0;
            l->root = i;
        }
    }
    /* A relu that is the only consumer of a batchnorm runs inside it
     * (oneDNN's fused kernel): one pass over memory instead of two, and
     * the relu layer becomes a view of the batchnorm's output. */
    for (int i = 1; i + 1 < m->nl; i++) {
        stk__layer_t *bn = &m->layers[i], *r = &m->layers[i + 1];
        if (bn->d.kind != STK_LAYER_BATCHNORM2D || r->d.kind != STK_LAYER_RELU || r->in[0] != i)
            continue;
        int consumers = 0;
        for (int j = i + 1; j < m->nl; j++)
            for (int k = 0; k < m->layers[j].nin; k++)
                consumers += m->layers[j].in[k] == i;
        if (consumers != 1)
            continue;
        bn->fused = r->fused = 1;
        r->alias = 1;
    }
    for (int i = 0; i < m->nl; i++) {
        stk__layer_t *l = &m->layers[i];
        if (l->alias)
            l->root = m->layers[l->in[0]].root;
    }
}

/* ----------------------------------------------------------------- arenas */

static int add_tensor(stk__tensor_info_t **list, size_t *n, const stk__layer_t *l, const char *suffix, int kind,
                      size_t *offset, int ndim, const int64_t *shape)
{
    stk__tensor_info_t *nl = realloc(*list, (*n + 1) * sizeof(**list));
    if (!nl)
        return -ENOMEM;
    *list = nl;
    stk__tensor_info_t *t = &nl[*n];
    memset(t, 0, sizeof(*t));
    size_t len = strlen(l->name) + strlen(suffix) + 2;
    t->name = malloc(len);
    if (!t->name)
        return -ENOMEM;
    snprintf(t->name, len, "%s.%s", l->name, suffix);
    t->info.name = t->name;
    t->info.layer = l->name;
    t->info.kind = kind;
    t->info.offset = *offset;
    t->info.ndim = ndim;
    size_t count = 1;
    for (int i = 0; i < ndim; i++) {
        t->info.shape[i] = shape[i];
        count *= (size_t)shape[i];
    }
    t->info.count = count;
    *offset += count;
    return (int)(*n)++;
}

static int layout_arenas(stk_model_t *m)
{
    size_t po = 0, bo = 0;
    for (int i = 0; i < m->nl; i++) {
        stk__layer_t *l = &m->layers[i];
        const stk_layer_desc_t *d = &l->d;
        int r = 0;
        if (d->kind == STK_LAYER_CONV2D) {
            int64_t ws[4] = {d->out, l->in_c / d->groups, d->kernel_h, d->kernel_w};
            r = l->param[0] = add_tensor(&m->pinfo, &m->npinfo, l, "weight", STK_PARAM_WEIGHT, &po, 4, ws);
            if (r >= 0 && d->bias)
                r = l->param[1] = add_tensor(&m->pinfo, &m->npinfo, l, "bias", STK_PARAM_BIAS, &po, 1, &d->out);
        } else if (d->kind == STK_LAYER_LINEAR) {
            int64_t ws[2] = {d->out, l->in_c};
            r = l->param[0] = add_tensor(&m->pinfo, &m->npinfo, l, "weight", STK_PARAM_WEIGHT, &po, 2, ws);
            if (r >= 0 && d->bias)
                r = l->param[1] = add_tensor(&m->pinfo, &m->npinfo, l, "bias", STK_PARAM_BIAS, &po, 1, &d->out);
        } else if (d->kind == STK_LAYER_BATCHNORM2D) {
            r = l->param[0] = add_tensor(&m->pinfo, &m->npinfo, l, "weight", STK_PARAM_BN_WEIGHT, &po, 1, &l->c);
            if (r >= 0)
                r = l->param[1] = add_tensor(&m->pinfo, &m->npinfo, l, "bias", STK_PARAM_BN_BIAS, &po, 1, &l->c);
            if (r >= 0)
                r = l->buffer[0] =
                    add_tensor(&m->binfo, &m->nbinfo, l, "running_mean", STK_BUFFER_RUNNING_MEAN, &bo, 1, &l->c);
            if (r >= 0)
                r = l->buffer[1] =
                    add_tensor(&m->binfo, &m->nbinfo, l, "running_var", STK_BUFFER_RUNNING_VAR, &bo, 1, &l->c);
        }
        if (r < 0)
            return stk__error(-ENOMEM, "model: out of memory");
    }
    m->np = po;
    m->nb = bo;
    const stk__backend_iface_t *be = m->be.iface;
    m->params = be->alloc(m->be.ctx, m->np * sizeof(float));
    m->grads = be->alloc(m->be.ctx, m->np * sizeof(float));
    m->buffers = be->alloc(m->be.ctx, m->nb * sizeof(float));
    if (!m->params || !m->grads || !m->buffers)
        return stk__error(-ENOMEM, "model: out of memory for %zu parameters", m->np);
    size_t maxp = 0;
    for (size_t i = 0; i < m->npinfo; i++)
        if (m->pinfo[i].info.count > maxp)
            maxp = m->pinfo[i].info.count;
    m->param_scratch_n = maxp;
    m->param_scratch = be->alloc(m->be.ctx, maxp * sizeof(float));
    if (!m->param_scratch)
        return stk__error(-ENOMEM, "model: out of memory");
    m->grads_zero = 1;
    return 0;
}

static float *pptr(stk_model_t *m, float *arena, int idx)
{
    return idx < 0 ? NULL : arena + m->pinfo[idx].info.offset;
}

static float *bptr(stk_model_t *m, int idx)
{
    return idx < 0 ? NULL : m->buffers + m->binfo[idx].info.offset;
}

/* PyTorch's defaults: kaiming-uniform with a = sqrt(5) for weights, which is
 * U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the same bound for biases; batchnorm
 * weight 1, bias 0, running mean 0, running var 1. Draws are keyed by
 * (seed, layer, tensor) so they do not depend on the other layers. */
static void init_params(stk_model_t *m, int random)
{
    size_t hostn = m->np > m->nb ? m->np : m->nb;
    float *host = calloc(hostn ? hostn : 1, sizeof(float));
    float *bhost = calloc(m->nb ? m->nb : 1, sizeof(float));
    if (!host || !bhost) {
        free(host);
        free(bhost);
        return;
    }
    for (int i = 0; i < m->nl; i++) {
        stk__layer_t *l = &m->layers[i];
        if (l->param[0] < 0)
            continue;
        const stk_param_info_t *w = &m->pinfo[l->param[0]].info;
        if (l->d.kind == STK_LAYER_BATCHNORM2D) {
            for (size_t j = 0; j < w->count; j++)
                host[w->offset + j] = 1.0f;
            const stk_param_info_t *rv = &m->binfo[l->buffer[1]].info;
            for (size_t j = 0; j < rv->count; j++)
                bhost[rv->offset + j] = 1.0f;
            continue;
        }
        if (!random)
            continue;
        size_t fan_in = w->count / (size_t)w->shape[0];
        float bound = 1.0f / sqrtf((float)fan_in);
        for (int t = 0; t < 2; t++) {
            if (l->param[t] < 0)
                continue;
            const stk_param_info_t *pi = &m->pinfo[l->param[t]].info;
            stk_rng_t r;
            stk_rng_init(&r, stk_rng_mix(m->seed, (uint64_t)i), (uint64_t)t);
            for (size_t j = 0; j < pi->count; j++)
                host[pi->offset + j] = (2.0f * stk_rng_uniform(&r) - 1.0f) * bound;
        }
    }
    m->be.iface->upload(m->be.ctx, m->params, host, m->np * sizeof(float));
    m->be.iface->upload(m->be.ctx, m->buffers, bhost, m->nb * sizeof(float));
    free(host);
    free(bhost);
}

/* --------------------------------------------------------------- planning */

static void unplan(stk_model_t *m)
{
    const stk__backend_iface_t *be = m->be.iface;
    for (int i = 0; i < m->nl; i++) {
        stk__layer_t *l = &m->layers[i];
        be->op_destroy(m->be.ctx, l->op);
        l->op = NULL;
        if (!l->alias && l->d.kind != STK_LAYER_INPUT) {
            be->free(m->be.ctx, l->y);
        }
        if (!l->alias)
            be->free(m->be.ctx, l->dy);
        be->free(m->be.ctx, l->mean);
        be->free(m->be.ctx, l->var);
        be->free(m->be.ctx, l->prob);
        l->y = l->dy = l->mean = l->var = l->prob = NULL;
    }
    be->free(m->be.ctx, m->act_scratch);
    be->free(m->be.ctx, m->view_buf);
    m->act_scratch = m->view_buf = NULL;
    m->fwd_state = 0;
}

static int plan(stk_model_t *m, int64_t n)
{
    const stk__backend_iface_t *be = m->be.iface;
    void *ctx = m->be.ctx;
    size_t maxact = 0;
    char where[200];
    int rc = 0;
    for (int i = 0; i < m->nl; i++) {
        stk__layer_t *l = &m->layers[i];
        const stk_layer_desc_t *d = &l->d;
        size_t numel = (size_t)(n * l->c * l->h * l->w);
        if (numel > maxact)
            maxact = numel;
        if (l->alias) {
            l->y = m->layers[l->in[0]].y;
            l->dy = m->layers[l->in[0]].dy;
            continue;
        }
        if (d->kind != STK_LAYER_INPUT) {
            l->y = be->alloc(ctx, numel * sizeof(float));
            if (!l->y)
                goto nomem;
        }
        /* The input needs no gradient: nothing is trained before it. */
        if (d->kind != STK_LAYER_INPUT && d->kind != STK_LAYER_CROSS_ENTROPY) {
            l->dy = be->alloc(ctx, numel * sizeof(float));
            if (!l->dy)
                goto nomem;
        }
        switch (d->kind) {
        case STK_LAYER_CONV2D: {
            stk__conv_desc_t cd = {.n = n, .ic = l->in_c, .ih = l->in_h, .iw = l->in_w, .oc = l->c, .oh = l->h,
                                   .ow = l->w, .kh = d->kernel_h, .kw = d->kernel_w, .sh = d->stride_h,
                                   .sw = d->stride_w, .ph = d->pad_h, .pw = d->pad_w, .dh = d->dilation_h,
                                   .dw = d->dilation_w, .groups = d->groups, .bias = d->bias,
                                   .fmt_in = m->layers[l->in[0]].fmt, .fmt_out = l->fmt};
            rc = be->conv_create(ctx, &cd, &l->op);
            break;
        }
        case STK_LAYER_BATCHNORM2D: {
            stk__bn_desc_t bd = {.n = n, .c = l->c, .h = l->h, .w = l->w, .eps = d->eps, .fmt = l->fmt,
                                 .relu = l->fused};
            rc = be->bn_create(ctx, &bd, &l->op);
            l->mean = be->alloc(ctx, (size_t)l->c * sizeof(float));
            l->var = be->alloc(ctx, (size_t)l->c * sizeof(float));
            if (!rc && (!l->mean || !l->var))
                goto nomem;
            break;
        }
        case STK_LAYER_MAXPOOL2D:
        case STK_LAYER_AVGPOOL2D:
        case STK_LAYER_GLOBAL_AVGPOOL: {
            int glob = d->kind == STK_LAYER_GLOBAL_AVGPOOL;
            stk__pool_desc_t pd = {.n = n, .c = l->c, .ih = l->in_h, .iw = l->in_w, .oh = l->h, .ow = l->w,
                                   .kh = glob ? l->in_h : d->kernel_h, .kw = glob ? l->in_w : d->kernel_w,
                                   .sh = glob ? 1 : d->stride_h, .sw = glob ? 1 : d->stride_w,
                                   .ph = glob ? 0 : d->pad_h, .pw = glob ? 0 : d->pad_w,
                                   .max = d->kind == STK_LAYER_MAXPOOL2D, .fmt = l->fmt};
            rc = be->pool_create(ctx, &pd, &l->op);
            break;
        }
        case STK_LAYER_LINEAR: {
            stk__linear_desc_t ld = {.n = n, .in = l->in_c, .out = l->c, .bias = d->bias};
            rc = be->linear_create(ctx, &ld, &l->op);
            break;
        }
        case STK_LAYER_FLATTEN:
            rc = be->reorder_create(ctx, n, l->in_c, l->in_h, l->in_w, m->layers[l->in[0]].fmt, STK__LAYOUT_PLAIN,
                                    &l->op);
            break;
        case STK_LAYER_CROSS_ENTROPY:
            l->prob = be->alloc(ctx, (size_t)(n * l->in_c) * sizeof(float));
            if (!l->prob)
                goto nomem;
            break;
        default:
            break;
        }
        if (rc < 0) {
            stk__error_prefix(rc, "%s", stk__layer_where(l, where, sizeof(where)));
            goto fail;
        }
    }
    m->act_scratch_n = maxact;
    m->act_scratch = be->alloc(ctx, maxact * sizeof(float));
    m->view_buf = be->alloc(ctx, maxact * sizeof(float));
    if (!m->act_scratch || !m->view_buf)
        goto nomem;
    m->batch = n;
    return 0;
nomem:
    rc = stk__error(-ENOMEM, "model: out of memory planning batch %lld", (long long)n);
fail:
    unplan(m);
    return rc;
}

/* ------------------------------------------------------------ create/free */

stk_model_config_t stk_model_config_default(void)
{
    stk_model_config_t c;
    memset(&c, 0, sizeof(c));
    c.batch_size = 32;
    c.device = STK_DEVICE_CPU;
    c.init_params = 1;
    return c;
}

void stk_model_destroy(stk_model_t **pm)
{
    if (!pm || !*pm)
        return;
    stk_model_t *m = *pm;
    if (m->be.iface) {
        unplan(m);
        m->be.iface->free(m->be.ctx, m->params);
        m->be.iface->free(m->be.ctx, m->grads);
        m->be.iface->free(m->be.ctx, m->buffers);
        m->be.iface->free(m->be.ctx, m->param_scratch);
    }
    for (int i = 0; i < m->nl; i++)
        layer_free_strings(&m->layers[i]);
    free(m->layers);
    for (size_t i = 0; i < m->npinfo; i++)
        free(m->pinfo[i].name);
    for (size_t i = 0; i < m->nbinfo; i++)
        free(m->binfo[i].name);
    free(m->pinfo);
    free(m->binfo);
    free(m->written);
    stk__backend_close(&m->be);
    free(m);
    *pm = NULL;
}

int stk_model_create(stk_model_t **out, const stk_model_builder_t *b, const stk_model_config_t *cfg)
{
    if (!out || !b)
        return stk__error(-EINVAL, "model: NULL argument");
    *out = NULL;
    stk_model_config_t dc = stk_model_config_default();
    if (!cfg)
        cfg = &dc;
    if (cfg->batch_size < 1 || cfg->batch_size > MAX_DIM || cfg->threads < 0)
        return stk__error(-EINVAL, "model: batch_size %lld / threads %d", (long long)cfg->batch_size, cfg->threads);
    if (b->n < 2)
        return stk__error(STK_ECONFIG, "model: needs an input layer and at least one more");
    stk_model_t *m = calloc(1, sizeof(*m));
    if (!m)
        return stk__error(-ENOMEM, "model: out of memory");
    m->loss_layer = -1;
    m->train = 1;
    m->loss_scale = 1.0f;
    m->seed = cfg->seed;
    m->threads = cfg->threads;
    int rc = 0;
    m->layers = calloc((size_t)b->n, sizeof(*m->layers));
    m->written = calloc((size_t)b->n, sizeof(int));
    if (!m->layers || !m->written) {
        rc = stk__error(-ENOMEM, "model: out of memory");
        goto fail;
    }
    for (int i = 0; i < b->n; i++) {
        stk__layer_t *l = &m->layers[i];
        const stk__layer_t *s = &b->layers[i];
        l->d = s->d;
        l->line = s->line;
        m->nl = i + 1;
        l->name = strdup(s->name);
        l->in_name[0] = s->in_name[0] ? strdup(s->in_name[0]) : NULL;
        l->in_name[1] = s->in_name[1] ? strdup(s->in_name[1]) : NULL;
        if (!l->name || (s->in_name[0] && !l->in_name[0]) || (s->in_name[1] && !l->in_name[1])) {
            rc = stk__error(-ENOMEM, "model: out of memory");
            goto fail;
        }
        l->d.name = l->name;
        l->d.inputs[0] = l->in_name[0];
        l->d.inputs[1] = l->in_name[1];
    }
    m->logits_layer = m->nl - 1;
    if ((rc = infer_shapes(m)) < 0)
        goto fail;
    if ((rc = stk__backend_open(&m->be, cfg->device)) < 0)
        goto fail;
    assign_layouts(m);
    if (m->threads > 0 && (rc = m->be.iface->set_threads(m->be.ctx, m->threads)) < 0)
        goto fail;
    if ((rc = layout_arenas(m)) < 0)
        goto fail;
    init_params(m, cfg->init_params);
    if ((rc = plan(m, cfg->batch_size)) < 0)
        goto fail;
    *out = m;
    return 0;
fail:
    stk_model_destroy(&m);
    return rc;
}

/* ---------------------------------------------------------------- settings */

void stk_model_input_shape(const stk_model_t *m, int64_t shape[4])
{
    shape[0] = m->batch;
    shape[1] = m->layers[0].c;
    shape[2] = m->layers[0].h;
    shape[3] = m->layers[0].w;
}

int64_t stk_model_num_classes(const stk_model_t *m)
{
    return m->loss_layer >= 0 ? m->layers[m->logits_layer].c : 0;
}

int stk_model_set_batch_size(stk_model_t *m, int64_t batch)
{
    if (!m || batch < 1 || batch > MAX_DIM)
        return stk__error(-EINVAL, "model: batch size %lld", (long long)batch);
    if (batch == m->batch)
        return 0;
    unplan(m);
    return plan(m, batch);
}

int64_t stk_model_batch_size(const stk_model_t *m)
{
    return m->batch;
}

void stk_model_set_train(stk_model_t *m, int train)
{
    m->train = train != 0;
}

int stk_model_is_train(const stk_model_t *m)
{
    return m->train;
}

void stk_model_set_step(stk_model_t *m, uint64_t step)
{
    m->step = step;
}

void stk_model_set_seed(stk_model_t *m, uint64_t seed)
{
    m->seed = seed;
}

int stk_model_set_threads(stk_model_t *m, int threads)
{
    if (threads < 0)
        return stk__error(-EINVAL, "model: threads %d", threads);
    m->threads = threads;
    return threads > 0 ? m->be.iface->set_threads(m->be.ctx, threads) : 0;
}

int stk_model_threads(const stk_model_t *m)
{
    return m->be.iface->max_threads(m->be.ctx);
}

void stk_model_set_loss_scale(stk_model_t *m, float scale)
{
    m->loss_scale = scale;
}

void stk_model_set_grad_hook(stk_model_t *m, stk_grad_ready_fn fn, void *user)
{
    m->hook = fn;
    m->hook_user = user;
}

void stk_model_set_profiling(stk_model_t *m, int on)
{
    m->profiling = on != 0;
}

void stk_model_reset_stats(stk_model_t *m)
{
    for (int i = 0; i < m->nl; i++) {
        m->layers[i].fcalls = m->layers[i].bcalls = 0;
        m->layers[i].fsec = m->layers[i].bsec = 0.0;
    }
}

size_t stk_model_num_layers(const stk_model_t *m)
{
    return (size_t)m->nl;
}

int stk_model_layer_stats(const stk_model_t *m, size_t i, stk_layer_stats_t *st)
{
    if (!m || !st || i >= (size_t)m->nl)
        return stk__error(-EINVAL, "model: layer %zu out of range", i);
    const stk__layer_t *l = &m->layers[i];
    st->name = l->name;
    st->kind = l->d.kind;
    st->forward_calls = l->fcalls;
    st->backward_calls = l->bcalls;
    st->forward_s = l->fsec;
    st->backward_s = l->bsec;
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static stk__eltwise_t elt_alg(stk_layer_kind_t k)
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

static uint64_t dropout_key(const stk_model_t *m, int layer)
{
    return stk_rng_mix(stk_rng_mix(m->seed, 0x64726f70ull), (uint64_t)layer);
}

/* ----------------------------------------------------------------- forward */

static int layer_forward(stk_model_t *m, int i, float *loss)
{
    stk__layer_t *l = &m->layers[i];
    const stk_layer_desc_t *d = &l->d;
    const stk__backend_iface_t *be = m->be.iface;
    void *ctx = m->be.ctx;
    const float *x = l->nin ? m->layers[l->in[0]].y : NULL;
    size_t n_in = (size_t)(m->batch * l->in_c * l->in_h * l->in_w);
    size_t n_out = (size_t)(m->batch * l->c * l->h * l->w);
    switch (d->kind) {
    case STK_LAYER_INPUT:
        return 0;
    case STK_LAYER_FLATTEN:
        return l->alias ? 0 : be->reorder_run(ctx, l->op, 0, x, l->y);
    case STK_LAYER_CONV2D:
        return be->conv_forward(ctx, l->op, x, pptr(m, m->params, l->param[0]), pptr(m, m->params, l->param[1]),
                                l->y);
    case STK_LAYER_LINEAR:
        return be->linear_forward(ctx, l->op, x, pptr(m, m->params, l->param[0]), pptr(m, m->params, l->param[1]),
                                  l->y);
    case STK_LAYER_BATCHNORM2D: {
        const float *g = pptr(m, m->params, l->param[0]), *b = pptr(m, m->params, l->param[1]);
        if (!m->train)
            return be->bn_forward(ctx, l->op, 0, x, g, b, bptr(m, l->buffer[0]), bptr(m, l->buffer[1]), l->y);
        int rc = be->bn_forward(ctx, l->op, 1, x, g, b, l->mean, l->var, l->y);
        if (rc < 0)
            return rc;
        be->bn_update_running(ctx, l->c, m->batch * l->h * l->w, d->momentum, l->mean, l->var,
                              bptr(m, l->buffer[0]), bptr(m, l->buffer[1]));
        l->num_batches_tracked++;
        return 0;
    }
    case STK_LAYER_RELU:
    case STK_LAYER_LEAKY_RELU:
    case STK_LAYER_GELU:
    case STK_LAYER_SIGMOID:
    case STK_LAYER_TANH:
        if (l->fused)
            return 0;
        return be->eltwise_forward(ctx, elt_alg(d->kind), d->negative_slope, n_out, x, l->y);
    case STK_LAYER_MAXPOOL2D:
    case STK_LAYER_AVGPOOL2D:
    case STK_LAYER_GLOBAL_AVGPOOL:
        return be->pool_forward(ctx, l->op, m->train, x, l->y);
    case STK_LAYER_DROPOUT:
        if (m->train && d->p > 0.0f)
            be->dropout_forward(ctx, n_out, d->p, dropout_key(m, i), m->step, x, l->y);
        else
            be->copy(ctx, l->y, x, n_out * sizeof(float));
        return 0;
    case STK_LAYER_ADD:
        be->add(ctx, n_out, x, m->layers[l->in[1]].y, l->y);
        return 0;
    case STK_LAYER_CONCAT: {
        const stk__layer_t *b = &m->layers[l->in[1]];
        be->concat_forward(ctx, m->batch, l->in_c, b->c, l->h * l->w, x, b->y, l->y);
        return 0;
    }
    case STK_LAYER_CROSS_ENTROPY:
        if (!m->labels && !m->soft)
            return 0;
        (void)n_in;
        return be->xent_forward(ctx, m->batch, l->in_c, x, m->labels, m->soft, d->label_smoothing, l->prob, loss);
    default:
        return stk__error(-EINVAL, "model: layer kind %d", (int)d->kind);
    }
}

int stk_model_forward(stk_model_t *m, const float *input, int64_t batch, const int64_t *labels,
                      const float *soft_targets, float *loss)
{
    if (!m || !input || batch < 1)
        return stk__error(-EINVAL, "model forward: NULL input or batch %lld", (long long)batch);
    if (labels && soft_targets)
        return stk__error(-EINVAL, "model forward: give labels or soft targets, not both");
    if ((labels || soft_targets) && (m->loss_layer < 0 || !loss))
        return stk__error(-EINVAL, "model forward: targets need a loss layer and a loss pointer");
    int rc = stk_model_set_batch_size(m, batch);
    if (rc < 0)
        return rc;
    if (m->threads > 0)
        m->be.iface->set_threads(m->be.ctx, m->threads);
    m->fwd_state = 0;
    m->input = input;
    m->labels = labels;
    m->soft = soft_targets;
    m->layers[0].y = (float *)input;
    for (int i = 1; i < m->nl; i++)
        if (m->layers[i].alias)
            m->layers[i].y = m->layers[m->layers[i].root].y;
    float lv = 0.0f;
    char where[200];
    for (int i = 0; i < m->nl; i++) {
        double t0 = m->profiling ? now_s() : 0.0;
        rc = layer_forward(m, i, &lv);
        if (rc < 0)
            return stk__error_prefix(rc, "forward: %s", stk__layer_where(&m->layers[i], where, sizeof(where)));
        if (m->profiling) {
            m->layers[i].fsec += now_s() - t0;
            m->layers[i].fcalls++;
        }
    }
    if (loss)
        *loss = lv;
    m->fwd_state = (labels || soft_targets) ? 2 : 1;
    return 0;
}

int stk_model_forward_tensor(stk_model_t *m, const stk_tensor_t *input, const stk_tensor_t *target, float *loss)
{
    if (!m || !input)
        return stk__error(-EINVAL, "model forward: NULL argument");
    const stk__layer_t *in = &m->layers[0];
    if (input->dtype != STK_DTYPE_F32 || input->device != STK_DEVICE_CPU || !stk_tensor_is_contiguous(input))
        return stk__error(-EINVAL, "model forward: the input must be contiguous f32 on the model's device");
    int64_t feat = input->ndim == 4 ? input->shape[1] * input->shape[2] * input->shape[3]
                                    : (input->ndim == 2 ? input->shape[1] : -1);
    if ((input->ndim == 4 && (input->shape[1] != in->c || input->shape[2] != in->h || input->shape[3] != in->w)) ||
        feat != in->c * in->h * in->w)
        return stk__error(STK_ESHAPE, "model forward: the input is not N x %lld x %lld x %lld", (long long)in->c,
                          (long long)in->h, (long long)in->w);
    int64_t n = input->shape[0];
    const int64_t *labels = NULL;
    const float *soft = NULL;
    if (target) {
        int64_t k = stk_model_num_classes(m);
        if (target->dtype == STK_DTYPE_I64 && target->ndim == 1 && target->shape[0] == n)
            labels = target->data;
        else if (target->dtype == STK_DTYPE_F32 && target->ndim == 2 && target->shape[0] == n &&
                 target->shape[1] == k && stk_tensor_is_contiguous(target))
            soft = target->data;
        else
            return stk__error(STK_ESHAPE, "model forward: the target must be i64 [%lld] or f32 [%lld, %lld]",
                              (long long)n, (long long)n, (long long)k);
    }
    return stk_model_forward(m, input->data, n, labels, soft, loss);
}

/* ---------------------------------------------------------------- backward */

/* Where layer i's input k gradient goes: straight into the input's dy when
 * nothing wrote it yet in this backward, else into scratch (*acc = 1) to be
 * added. NULL when no gradient is needed (the graph input). */
static float *dx_target(stk_model_t *m, int i, int k, int *acc)
{
    int r = m->layers[m->layers[i].in[k]].root;
    *acc = 0;
    if (m->layers[r].d.kind == STK_LAYER_INPUT && !m->input_grad)
        return NULL;
    if (!m->written[r]) {
        m->written[r] = 1;
        return m->layers[r].dy;
    }
    *acc = 1;
    return m->act_scratch;
}

static void dx_finish(stk_model_t *m, int i, int k, float *dx, int acc)
{
    if (dx && acc) {
        const stk__layer_t *in = &m->layers[m->layers[i].in[k]];
        size_t n = (size_t)(m->batch * in->c * in->h * in->w);
        m->be.iface->accumulate(m->be.ctx, n, dx, m->layers[in->root].dy);
    }
}

/* Parameter gradients overwrite the arena right after zero_grad, and are
 * added through scratch otherwise (PyTorch's accumulation). */
static float *grad_target(stk_model_t *m, int idx)
{
    if (idx < 0)
        return NULL;
    if (m->grads_zero)
        return pptr(m, m->grads, idx);
    return m->param_scratch;
}

static void grad_finish(stk_model_t *m, int idx, float *g)
{
    if (idx >= 0 && g == m->param_scratch)
        m->be.iface->accumulate(m->be.ctx, m->pinfo[idx].info.count, g, pptr(m, m->grads, idx));
}

static int layer_backward(stk_model_t *m, int i)
{
    stk__layer_t *l = &m->layers[i];
    const stk_layer_desc_t *d = &l->d;
    const stk__backend_iface_t *be = m->be.iface;
    void *ctx = m->be.ctx;
    const float *x = m->layers[l->in[0]].y;
    const float *dy = l->dy;
    size_t n_out = (size_t)(m->batch * l->c * l->h * l->w);
    int acc = 0, rc = 0;
    float *dx = NULL;
    switch (d->kind) {
    case STK_LAYER_FLATTEN:
        if (l->alias)
            return 0;
        dx = dx_target(m, i, 0, &acc);
        if (dx)
            rc = be->reorder_run(ctx, l->op, 1, dy, dx);
        break;
    case STK_LAYER_CROSS_ENTROPY:
        dx = dx_target(m, i, 0, &acc);
        if (dx)
            be->xent_backward(ctx, m->batch, l->in_c, l->prob, m->labels, m->soft, d->label_smoothing,
                              m->loss_scale, dx);
        break;
    case STK_LAYER_CONV2D:
    case STK_LAYER_LINEAR: {
        int conv = d->kind == STK_LAYER_CONV2D;
        const float *w = pptr(m, m->params, l->param[0]);
        float *gw = grad_target(m, l->param[0]);
        /* The bias gradient goes straight to the arena when the weight's
         * goes through scratch: scratch holds one tensor. */
        float *gb = NULL, *bscr = NULL;
        if (l->param[1] >= 0) {
            if (m->grads_zero) {
                gb = pptr(m, m->grads, l->param[1]);
            } else {
                bscr = m->act_scratch; /* free: dx is computed after */
                gb = bscr;
            }
        }
        rc = conv ? be->conv_backward_weights(ctx, l->op, x, dy, gw, gb)
                  : be->linear_backward_weights(ctx, l->op, x, dy, gw, gb);
        if (rc < 0)
            return rc;
        grad_finish(m, l->param[0], gw);
        if (bscr)
            be->accumulate(ctx, m->pinfo[l->param[1]].info.count, bscr, pptr(m, m->grads, l->param[1]));
        dx = dx_target(m, i, 0, &acc);
        if (dx)
            rc = conv ? be->conv_backward_data(ctx, l->op, dy, w, dx) : be->linear_backward_data(ctx, l->op, dy, w, dx);
        break;
    }
    case STK_LAYER_BATCHNORM2D: {
        if (!m->train)
            return stk__error(STK_ESTATE, "batchnorm backward needs training mode");
        dx = dx_target(m, i, 0, &acc);
        float *dxp = dx ? dx : m->act_scratch;
        /* dgamma and dbeta are contiguous in the arena: param[1] follows
         * param[0]; through scratch they go into the param scratch. */
        float *gg, *gb;
        int direct = m->grads_zero;
        if (direct) {
            gg = pptr(m, m->grads, l->param[0]);
            gb = pptr(m, m->grads, l->param[1]);
        } else {
            gg = m->param_scratch;
            gb = m->param_scratch + l->c;
            if ((size_t)(2 * l->c) > m->param_scratch_n) {
                /* Only a lone batchnorm model gets here; use act scratch. */
                gg = dxp == m->act_scratch ? NULL : m->act_scratch;
                if (!gg)
                    return stk__error(-ENOMEM, "batchnorm backward: no scratch");
                gb = gg + l->c;
            }
        }
        rc = be->bn_backward(ctx, l->op, x, dy, pptr(m, m->params, l->param[0]), l->mean, l->var, dxp, gg, gb);
        if (rc < 0)
            return rc;
        if (!direct) {
            be->accumulate(ctx, (size_t)l->c, gg, pptr(m, m->grads, l->param[0]));
            be->accumulate(ctx, (size_t)l->c, gb, pptr(m, m->grads, l->param[1]));
        }
        break;
    }
    case STK_LAYER_RELU:
    case STK_LAYER_LEAKY_RELU:
    case STK_LAYER_GELU:
    case STK_LAYER_SIGMOID:
    case STK_LAYER_TANH:
        if (l->fused)
            return 0;
        dx = dx_target(m, i, 0, &acc);
        if (dx)
            rc = be->eltwise_backward(ctx, elt_alg(d->kind), d->negative_slope, n_out, x, l->y, dy, dx);
        break;
    case STK_LAYER_MAXPOOL2D:
    case STK_LAYER_AVGPOOL2D:
    case STK_LAYER_GLOBAL_AVGPOOL:
        if (!m->train && d->kind == STK_LAYER_MAXPOOL2D)
            return stk__error(STK_ESTATE, "max pooling backward needs a training-mode forward");
        dx = dx_target(m, i, 0, &acc);
        if (dx)
            rc = be->pool_backward(ctx, l->op, dy, dx);
        break;
    case STK_LAYER_DROPOUT:
        dx = dx_target(m, i, 0, &acc);
        if (dx) {
            if (m->train && d->p > 0.0f)
                be->dropout_backward(ctx, n_out, d->p, dropout_key(m, i), m->step, dy, dx);
            else
                be->copy(ctx, dx, dy, n_out * sizeof(float));
        }
        break;
    case STK_LAYER_ADD:
        for (int k = 0; k < 2; k++) {
            dx = dx_target(m, i, k, &acc);
            if (dx) {
                be->copy(ctx, dx, dy, n_out * sizeof(float));
                dx_finish(m, i, k, dx, acc);
            }
        }
        return 0;
    case STK_LAYER_CONCAT: {
        const stk__layer_t *b = &m->layers[l->in[1]];
        int acc_b = 0;
        /* Concat adds into its inputs' dy directly, so it asks for the
         * real buffers and whether they already hold a value. */
        int ra = m->layers[l->in[0]].root, rb = b->root;
        float *da = m->layers[ra].d.kind == STK_LAYER_INPUT && !m->input_grad ? NULL : m->layers[ra].dy;
        float *dbp = m->layers[rb].d.kind == STK_LAYER_INPUT && !m->input_grad ? NULL : m->layers[rb].dy;
        acc = m->written[ra];
        if (da)
            m->written[ra] = 1;
        acc_b = m->written[rb];
        if (dbp)
            m->written[rb] = 1;
        be->concat_backward(ctx, m->batch, l->in_c, b->c, l->h * l->w, dy, da, dbp, acc, acc_b);
        return 0;
    }
    default:
        return 0;
    }
    if (rc < 0)
        return rc;
    dx_finish(m, i, 0, dx, acc);
    return 0;
}

static int backward_run(stk_model_t *m)
{
    char where[200];
    for (int i = m->nl - 1; i >= 1; i--) {
        stk__layer_t *l = &m->layers[i];
        /* A layer whose output reached no loss has no gradient. */
        if (l->d.kind != STK_LAYER_CROSS_ENTROPY && !m->written[l->root])
            continue;
        double t0 = m->profiling ? now_s() : 0.0;
        int rc = layer_backward(m, i);
        if (rc < 0)
            return stk__error_prefix(rc, "backward: %s", stk__layer_where(l, where, sizeof(where)));
        if (m->profiling) {
            l->bsec += now_s() - t0;
            l->bcalls++;
        }
        if (m->hook && l->param[0] >= 0) {
            const stk_param_info_t *w = &m->pinfo[l->param[0]].info;
            size_t cnt = w->count + (l->param[1] >= 0 ? m->pinfo[l->param[1]].info.count : 0);
            m->hook(w->offset, cnt, m->hook_user);
        }
    }
    /* Layers that got no gradient keep theirs; only a zero arena may be
     * overwritten, and after this backward it is no longer zero. */
    m->grads_zero = 0;
    m->fwd_state = 3;
    return 0;
}

int stk_model_backward(stk_model_t *m)
{
    if (!m)
        return stk__error(-EINVAL, "model backward: NULL model");
    if (m->fwd_state != 2)
        return stk__error(STK_ESTATE, "model backward: needs a forward with targets first (and once per forward)");
    if (m->threads > 0)
        m->be.iface->set_threads(m->be.ctx, m->threads);
    memset(m->written, 0, (size_t)m->nl * sizeof(int));
    return backward_run(m);
}

int stk__model_backward_input(stk_model_t *m, const float *dy_out, float *dx_input)
{
    int last = m->nl - 1;
    int is_loss = m->layers[last].d.kind == STK_LAYER_CROSS_ENTROPY;
    if (m->fwd_state != (is_loss ? 2 : 1) || (!is_loss && !dy_out) || !dx_input)
        return stk__error(STK_ESTATE, "backward_input: needs a forward (with targets for a loss) and dy");
    memset(m->written, 0, (size_t)m->nl * sizeof(int));
    m->layers[0].dy = dx_input;
    for (int i = 1; i < m->nl; i++)
        if (m->layers[i].alias)
            m->layers[i].dy = m->layers[m->layers[i].root].dy;
    if (!is_loss) {
        const stk__layer_t *l = &m->layers[last];
        const stk__layer_t *r = &m->layers[l->root];
        if (r->fmt == STK__LAYOUT_PLAIN) {
            m->be.iface->copy(m->be.ctx, r->dy, dy_out, (size_t)(m->batch * l->c * l->h * l->w) * sizeof(float));
        } else {
            stk__op_t *op = NULL;
            int rc = m->be.iface->reorder_create(m->be.ctx, m->batch, r->c, r->h, r->w, STK__LAYOUT_PLAIN, r->fmt, &op);
            if (rc == 0)
                rc = m->be.iface->reorder_run(m->be.ctx, op, 0, dy_out, r->dy);
            m->be.iface->op_destroy(m->be.ctx, op);
            if (rc < 0)
                return rc;
        }
        m->written[l->root] = 1;
    }
    m->input_grad = 1;
    int rc = backward_run(m);
    m->input_grad = 0;
    if (!m->written[0])
        m->be.iface->zero(m->be.ctx, dx_input,
                          (size_t)(m->batch * m->layers[0].c * m->layers[0].h * m->layers[0].w));
    m->layers[0].dy = NULL;
    for (int i = 1; i < m->nl; i++)
        if (m->layers[i].alias)
            m->layers[i].dy = m->layers[m->layers[i].root].dy;
    return rc;
}

void stk_model_zero_grad(stk_model_t *m)
{
    m->be.iface->zero(m->be.ctx, m->grads, m->np);
    m->grads_zero = 1;
}

/* --------------------------------------------------------------- accessors */

int stk_model_logits(const stk_model_t *m, const float **logits, int64_t *batch, int64_t *classes)
{
    if (!m || m->fwd_state == 0)
        return stk__error(STK_ESTATE, "model logits: no forward yet");
    const stk__layer_t *l = &m->layers[m->logits_layer];
    if (logits)
        *logits = l->y;
    if (batch)
        *batch = m->batch;
    if (classes)
        *classes = l->c * l->h * l->w;
    return 0;
}

int stk_model_count_correct(const stk_model_t *m, const int64_t *labels, int64_t *correct)
{
    const float *z;
    int64_t n, k;
    int rc = stk_model_logits(m, &z, &n, &k);
    if (rc < 0)
        return rc;
    if (!labels || !correct)
        return stk__error(-EINVAL, "count_correct: NULL argument");
    int64_t c = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t best = 0;
        for (int64_t j = 1; j < k; j++)
            if (z[i * k + j] > z[i * k + best])
                best = j;
        c += best == labels[i];
    }
    *correct = c;
    return 0;
}

int stk_model_output(const stk_model_t *m, const char *layer, stk_tensor_t *out)
{
    if (!m || !layer || !out)
        return stk__error(-EINVAL, "model output: NULL argument");
    int i = find_layer(m->layers, m->nl, layer);
    if (i < 0)
        return stk__error(STK_ENOTFOUND, "model output: no layer named '%s'", layer);
    if (m->fwd_state == 0)
        return stk__error(STK_ESTATE, "model output: no forward yet");
    const stk__layer_t *l = &m->layers[i];
    int64_t shape[4] = {m->batch, l->c, l->h, l->w};
    const float *y = l->y;
    if (l->fmt != STK__LAYOUT_PLAIN) {
        /* Blocked inside: hand out a plain copy. */
        stk__op_t *op = NULL;
        int rc = m->be.iface->reorder_create(m->be.ctx, m->batch, l->c, l->h, l->w, l->fmt, STK__LAYOUT_PLAIN, &op);
        if (rc == 0)
            rc = m->be.iface->reorder_run(m->be.ctx, op, 0, l->y, m->view_buf);
        m->be.iface->op_destroy(m->be.ctx, op);
        if (rc < 0)
            return rc;
        y = m->view_buf;
    }
    return stk_tensor_init(out, (void *)y, STK_DTYPE_F32, 4, shape);
}

float *stk_model_params(stk_model_t *m, size_t *count)
{
    if (count)
        *count = m->np;
    return m->params;
}

float *stk_model_grads(stk_model_t *m, size_t *count)
{
    if (count)
        *count = m->np;
    return m->grads;
}

float *stk_model_buffers(stk_model_t *m, size_t *count)
{
    if (count)
        *count = m->nb;
    return m->buffers;
}

size_t stk_model_num_params(const stk_model_t *m)
{
    return m->npinfo;
}

size_t stk_model_num_buffers(const stk_model_t *m)
{
    return m->nbinfo;
}

int stk_model_param_info(const stk_model_t *m, size_t i, stk_param_info_t *info)
{
    if (!m || !info || i >= m->npinfo)
        return stk__error(-EINVAL, "model: parameter %zu out of range", i);
    *info = m->pinfo[i].info;
    return 0;
}

int stk_model_buffer_info(const stk_model_t *m, size_t i, stk_param_info_t *info)
{
    if (!m || !info || i >= m->nbinfo)
        return stk__error(-EINVAL, "model: buffer %zu out of range", i);
    *info = m->binfo[i].info;
    return 0;
}

int stk_model_find(const stk_model_t *m, const char *name, stk_param_info_t *info, int *is_buffer)
{
    if (!m || !name)
        return stk__error(-EINVAL, "model find: NULL argument");
    for (size_t i = 0; i < m->npinfo; i++)
        if (strcmp(m->pinfo[i].name, name) == 0) {
            if (info)
                *info = m->pinfo[i].info;
            if (is_buffer)
                *is_buffer = 0;
            return 0;
        }
    for (size_t i = 0; i < m->nbinfo; i++)
        if (strcmp(m->binfo[i].name, name) == 0) {
            if (info)
                *info = m->binfo[i].info;
            if (is_buffer)
                *is_buffer = 1;
            return 0;
        }
    return stk__error(STK_ENOTFOUND, "model: no parameter or buffer named '%s'", name);
}
