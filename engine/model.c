/* SPDX-License-Identifier: MIT */
/* The graph: wiring and shape inference with errors that name the layer's
 * line and key, layouts, the parameter / gradient / buffer arenas, planning
 * for batch sizes (a small cache of plans, activations shared and sized for
 * the largest batch), and the forward and backward loops. What each kind of
 * layer does is in its entry of the layer table (layer.h, layers/); this
 * file never switches on the kind. */
#include "layer.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------- helpers for layers */

int64_t stk__out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d)
{
    int64_t span = d * (k - 1) + 1;
    if (in + 2 * p < span)
        return 0;
    return (in + 2 * p - span) / s + 1;
}

const stk__layer_t *stk__input(const stk_model_t *m, int i, int k)
{
    return &m->layers[m->layers[i].in[k]];
}

size_t stk__numel(const stk_model_t *m, const stk__layer_t *l)
{
    return (size_t)(m->batch * l->c * l->h * l->w);
}

const stk_param_info_t *stk__param_info(const stk_model_t *m, const stk__layer_t *l, int k)
{
    return k < l->nparam ? &m->pinfo[l->param0 + k].info : NULL;
}

const stk_param_info_t *stk__buffer_info(const stk_model_t *m, const stk__layer_t *l, int k)
{
    return k < l->nbuffer ? &m->binfo[l->buffer0 + k].info : NULL;
}

float *stk__param(const stk_model_t *m, const stk__layer_t *l, int k)
{
    return k < l->nparam ? m->params + m->pinfo[l->param0 + k].info.offset : NULL;
}

float *stk__grad(const stk_model_t *m, const stk__layer_t *l, int k)
{
    return k < l->nparam ? m->grads + m->pinfo[l->param0 + k].info.offset : NULL;
}

float *stk__buffer(const stk_model_t *m, const stk__layer_t *l, int k)
{
    return k < l->nbuffer ? m->buffers + m->binfo[l->buffer0 + k].info.offset : NULL;
}

size_t stk__param_count(const stk_model_t *m, const stk__layer_t *l, int k)
{
    return k < l->nparam ? m->pinfo[l->param0 + k].info.count : 0;
}

/* ------------------------------------------------------- wiring and shapes */

/* Inputs, output shapes and receptive fields of every layer, in order: a
 * layer starts with its first input's shape and its kind changes that. */
static int infer_shapes(stk_model_t *m)
{
    char where[200];
    for (int i = 0; i < m->nl; i++) {
        stk__layer_t *l = &m->layers[i];
        const stk__layer_class_t *cls = l->cls;
        stk__layer_where(l, where, sizeof(where));
        l->root = i;
        l->dtype = STK_DTYPE_F32;
        l->nin = cls->n_inputs;
        for (int k = 0; k < l->nin; k++) {
            if (!l->in_name[k]) {
                l->in[k] = i - 1;
                continue;
            }
            l->in[k] = stk__find_layer(m->layers, i, l->in_name[k]);
            if (l->in[k] < 0)
                return stk__error(STK_ECONFIG, "%s: key '%s': no layer named '%s' before this one", where,
                                  l->nin == 2 ? "inputs" : "input", l->in_name[k]);
            if (m->layers[l->in[k]].cls->is_loss)
                return stk__error(STK_ECONFIG, "%s: key 'input': '%s' is a loss", where, l->in_name[k]);
        }
        if (l->nin) {
            const stk__layer_t *a = &m->layers[l->in[0]];
            if (a->cls->is_loss)
                return stk__error(STK_ECONFIG, "%s: nothing may follow the loss layer", where);
            l->in_c = l->c = a->c;
            l->in_h = l->h = a->h;
            l->in_w = l->w = a->w;
            l->rf = a->rf;
            l->jump = a->jump;
            l->flat = a->flat;
            l->seq = a->seq;
            l->dtype = a->dtype;
        }
        if (cls->is_loss && i != m->nl - 1)
            return stk__error(STK_ECONFIG, "%s: the loss must be the last layer", where);
        int rc = cls->infer ? cls->infer(m, i, where) : 0;
        if (rc < 0)
            return rc;
        if (l->c * l->h * l->w > STK__MAX_SAMPLE_ELEMS)
            return stk__error(STK_ESHAPE, "%s: output or weights over 2^31 elements per sample", where);
    }
    return 0;
}

/* Activation layouts: a layer whose rule allows it (a convolution with a
 * multiple of 8 output channels) writes the blocked layout oneDNN's vector
 * kernels want; most layers keep their input's layout; some are plain
 * (flatten converts). When a two-input layer would mix layouts, or a layer
 * needs the whole graph plain (concat), or the backend has no blocked
 * ops (CUDA), every layer is plain. Then each
 * kind adjusts to the layouts (fusions, conversions), and aliases find the
 * layer whose buffers they share. */
static void assign_layouts(stk_model_t *m)
{
    int uniform_plain = !m->be.iface->blocked_layouts;
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < m->nl; i++) {
            stk__layer_t *l = &m->layers[i];
            int in_fmt = l->nin ? m->layers[l->in[0]].fmt : STK__LAYOUT_PLAIN;
            switch (l->cls->fmt) {
            case STK__FMT_BLOCKED8:
                l->fmt = !uniform_plain && l->c % 8 == 0 ? STK__LAYOUT_BLOCKED8 : STK__LAYOUT_PLAIN;
                break;
            case STK__FMT_PLAIN_GRAPH:
                uniform_plain = 1;
                /* fall through */
            case STK__FMT_PLAIN:
                l->fmt = STK__LAYOUT_PLAIN;
                break;
            case STK__FMT_KEEP:
                l->fmt = in_fmt;
                break;
            }
            if (l->nin == 2 && in_fmt != m->layers[l->in[1]].fmt)
                uniform_plain = 1;
        }
        if (!uniform_plain)
            break;
    }
    if (uniform_plain)
        for (int i = 0; i < m->nl; i++)
            m->layers[i].fmt = STK__LAYOUT_PLAIN;
    for (int i = 0; i < m->nl; i++)
        if (m->layers[i].cls->after_layout)
            m->layers[i].cls->after_layout(m, i);
    for (int i = 0; i < m->nl; i++) {
        stk__layer_t *l = &m->layers[i];
        l->root = l->alias ? m->layers[l->in[0]].root : i;
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

int stk__declare_param(stk_model_t *m, int i, const char *suffix, int kind, int ndim, const int64_t *shape)
{
    stk__layer_t *l = &m->layers[i];
    if (!l->nparam)
        l->param0 = (int)m->npinfo;
    int r = add_tensor(&m->pinfo, &m->npinfo, l, suffix, kind, &m->np, ndim, shape);
    if (r >= 0)
        l->nparam++;
    return r;
}

int stk__declare_buffer(stk_model_t *m, int i, const char *suffix, int kind, int ndim, const int64_t *shape)
{
    stk__layer_t *l = &m->layers[i];
    if (!l->nbuffer)
        l->buffer0 = (int)m->nbinfo;
    int r = add_tensor(&m->binfo, &m->nbinfo, l, suffix, kind, &m->nb, ndim, shape);
    if (r >= 0)
        l->nbuffer++;
    return r;
}

static int layout_arenas(stk_model_t *m)
{
    m->np = m->nb = 0;
    for (int i = 0; i < m->nl; i++)
        if (m->layers[i].cls->params && m->layers[i].cls->params(m, i) < 0)
            return stk__error(-ENOMEM, "model: out of memory");
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
    m->stats = be->alloc(m->be.ctx, 64);
    if (!m->param_scratch || !m->stats)
        return stk__error(-ENOMEM, "model: out of memory");
    m->grads_zero = 1;
    return 0;
}

void stk__init_fan_in(stk_model_t *m, int i, float *params)
{
    const stk__layer_t *l = &m->layers[i];
    const stk_param_info_t *w = stk__param_info(m, l, 0);
    size_t fan_in = w->count / (size_t)w->shape[0];
    float bound = 1.0f / sqrtf((float)fan_in);
    for (int t = 0; t < 2 && t < l->nparam; t++) {
        const stk_param_info_t *pi = stk__param_info(m, l, t);
        stk_rng_t r;
        stk_rng_init(&r, stk_rng_mix(m->seed, (uint64_t)i), (uint64_t)t);
        for (size_t j = 0; j < pi->count; j++)
            params[pi->offset + j] = (2.0f * stk_rng_uniform(&r) - 1.0f) * bound;
    }
}

/* Each kind's initial values (PyTorch's defaults, draws keyed by (seed,
 * layer, tensor) so that they do not depend on the other layers), made on
 * the host and uploaded. */
static int init_params(stk_model_t *m, int random)
{
    float *host = calloc(m->np ? m->np : 1, sizeof(float));
    float *bhost = calloc(m->nb ? m->nb : 1, sizeof(float));
    int rc = 0;
    if (!host || !bhost) {
        rc = stk__error(-ENOMEM, "model: out of memory initializing %zu parameters", m->np);
        goto out;
    }
    for (int i = 0; i < m->nl; i++)
        if (m->layers[i].cls->init)
            m->layers[i].cls->init(m, i, host, bhost, random);
    if ((rc = m->be.iface->upload(m->be.ctx, m->params, host, m->np * sizeof(float))) == 0)
        rc = m->be.iface->upload(m->be.ctx, m->buffers, bhost, m->nb * sizeof(float));
out:
    free(host);
    free(bhost);
    return rc;
}

/* --------------------------------------------------------------- planning */

/* Activations: every layer's y and dy (but the input's, and aliases'), the
 * kinds' extra memory, the scratch buffers and the target stages, all for
 * act_batch samples, so that every plan up to that size shares them. */
static void free_activations(stk_model_t *m)
{
    const stk__backend_iface_t *be = m->be.iface;
    m->graph_gen++;
    for (int i = 0; i < m->nl; i++) {
        stk__layer_t *l = &m->layers[i];
        if (!l->alias && l->cls->n_inputs) {
            be->free(m->be.ctx, l->y);
            be->free(m->be.ctx, l->dy);
        }
        be->free(m->be.ctx, l->extra);
        l->y = l->dy = NULL;
        l->extra = NULL;
    }
    be->free(m->be.ctx, m->act_scratch);
    be->free(m->be.ctx, m->view_buf);
    be->free(m->be.ctx, m->labels_stage);
    be->free(m->be.ctx, m->soft_stage);
    be->free(m->be.ctx, m->lengths_stage);
    be->free(m->be.ctx, m->input_pad);
    free(m->lengths_buf);
    m->lengths_stage = NULL;
    m->input_pad = NULL;
    m->lengths_buf = NULL;
    m->lengths = m->lengths_dev = NULL;
    m->act_scratch = m->view_buf = NULL;
    m->labels_stage = NULL;
    m->soft_stage = NULL;
    m->act_batch = 0;
}

static int alloc_activations(stk_model_t *m, int64_t n)
{
    const stk__backend_iface_t *be = m->be.iface;
    void *ctx = m->be.ctx;
    size_t maxact = 0;
    for (int i = 0; i < m->nl; i++) {
        stk__layer_t *l = &m->layers[i];
        size_t numel = (size_t)(n * l->c * l->h * l->w);
        if (numel > maxact)
            maxact = numel;
        if (l->cls->extra_bytes) {
            size_t eb = l->cls->extra_bytes(m, i, n);
            if (eb && !(l->extra = be->alloc(ctx, eb)))
                return -ENOMEM;
        }
        /* The input's y is the caller's batch, and nothing is trained
         * before it, so it needs no gradient; the loss has no dy. */
        if (l->alias || !l->cls->n_inputs)
            continue;
        if (!(l->y = be->alloc(ctx, numel * stk_dtype_size(l->dtype))))
            return -ENOMEM;
        if (!l->cls->is_loss && !(l->dy = be->alloc(ctx, numel * sizeof(float))))
            return -ENOMEM;
    }
    for (int i = 0; i < m->nl; i++) {
        stk__layer_t *l = &m->layers[i];
        if (l->alias) {
            l->y = m->layers[l->root].y;
            l->dy = m->layers[l->root].dy;
        }
    }
    m->act_scratch_n = maxact;
    m->act_scratch = be->alloc(ctx, maxact * sizeof(float));
    m->view_buf = be->alloc(ctx, maxact * sizeof(float));
    if (!m->act_scratch || !m->view_buf)
        return -ENOMEM;
    /* Targets come from the host; a device gets them staged (the second
     * half of the label stage is for counting other labels). */
    if (m->loss_layer >= 0 && !be->host_memory) {
        m->labels_stage = be->alloc(ctx, 2 * (size_t)n * sizeof(int64_t));
        m->soft_stage = be->alloc(ctx, (size_t)(n * m->layers[m->logits_layer].c) * sizeof(float));
        if (!m->labels_stage || !m->soft_stage)
            return -ENOMEM;
    }
    /* Sequence inputs: their lengths (staged on a device) and room to pad
     * a batch shorter than T. */
    const stk__layer_t *in = &m->layers[0];
    if (in->seq) {
        if (!(m->lengths_buf = malloc((size_t)n * sizeof(int64_t))))
            return -ENOMEM;
        if (!be->host_memory && !(m->lengths_stage = be->alloc(ctx, (size_t)n * sizeof(int64_t))))
            return -ENOMEM;
        if (!(m->input_pad = be->alloc(ctx, (size_t)(n * in->c * in->h * in->w) * stk_dtype_size(in->dtype))))
            return -ENOMEM;
    }
    m->act_batch = n;
    return 0;
}

static void plan_free(stk_model_t *m, stk__plan_t *p)
{
    if (!p->layer)
        return;
    m->graph_gen++;
    for (int i = 0; i < m->nl; i++) {
        if (!p->layer[i])
            continue;
        if (m->layers[i].cls->unplan)
            m->layers[i].cls->unplan(m, i, p->layer[i]);
        else
            m->be.iface->op_destroy(m->be.ctx, p->layer[i]);
    }
    free(p->layer);
    memset(p, 0, sizeof(*p));
}

static int plan_make(stk_model_t *m, stk__plan_t *p, int64_t n)
{
    char where[200];
    p->layer = calloc((size_t)m->nl, sizeof(void *));
    if (!p->layer)
        return stk__error(-ENOMEM, "model: out of memory planning batch %lld", (long long)n);
    p->batch = n;
    for (int i = 0; i < m->nl; i++) {
        const stk__layer_t *l = &m->layers[i];
        if (l->alias || !l->cls->plan)
            continue;
        int rc = l->cls->plan(m, i, n, &p->layer[i]);
        if (rc < 0) {
            plan_free(m, p);
            return stk__error_prefix(rc, "%s", stk__layer_where(l, where, sizeof(where)));
        }
    }
    m->plans_made++;
    return 0;
}

static void free_plans(stk_model_t *m)
{
    for (int k = 0; k < STK__MAX_PLANS; k++)
        plan_free(m, &m->plans[k]);
    for (int i = 0; i < m->nl; i++)
        m->layers[i].plan = NULL;
    m->cur_plan = -1;
    m->fwd_state = 0;
    m->correct_valid = 0;
}

/* Makes the plan for batch n current: the cached one, or a new one in a
 * free slot or in place of the least recently used. Activations grow to
 * the largest batch and are shared by every plan. */
static int select_plan(stk_model_t *m, int64_t n)
{
    m->plan_clock++;
    int slot = -1;
    for (int k = 0; k < STK__MAX_PLANS; k++)
        if (m->plans[k].batch == n)
            slot = k;
    if (slot < 0) {
        if (n > m->act_batch) {
            free_activations(m);
            if (alloc_activations(m, n) < 0) {
                free_activations(m);
                free_plans(m);
                return stk__error(-ENOMEM, "model: out of memory for the activations of batch %lld", (long long)n);
            }
        }
        slot = 0;
        for (int k = 1; k < STK__MAX_PLANS; k++)
            if (m->plans[k].used < m->plans[slot].used)
                slot = k;
        plan_free(m, &m->plans[slot]);
        int rc = plan_make(m, &m->plans[slot], n);
        if (rc < 0) {
            m->cur_plan = -1;
            m->batch = 0;
            return rc;
        }
    }
    m->plans[slot].used = m->plan_clock;
    if (slot != m->cur_plan || m->batch != n)
        m->fwd_state = 0;
    m->cur_plan = slot;
    m->batch = n;
    for (int i = 0; i < m->nl; i++)
        m->layers[i].plan = m->plans[slot].layer[i];
    return 0;
}

/* ------------------------------------------------------------ create/free */

void stk_model_config_default(stk_model_config_t *cfg)
{
    if (!cfg)
        return;
    memset(cfg, 0, sizeof(*cfg));
    cfg->batch_size = 32;
    cfg->device = STK_DEVICE_CPU;
    cfg->device_index = -1;
    cfg->init_params = 1;
}

void stk_model_destroy(stk_model_t **pm)
{
    if (!pm || !*pm)
        return;
    stk_model_t *m = *pm;
    if (m->be.iface) {
        stk__graphs_free(m);
        free_plans(m);
        free_activations(m);
        m->be.iface->free(m->be.ctx, m->params);
        m->be.iface->free(m->be.ctx, m->grads);
        m->be.iface->free(m->be.ctx, m->buffers);
        m->be.iface->free(m->be.ctx, m->param_scratch);
        m->be.iface->free(m->be.ctx, m->stats);
    }
    stk__prof_free(m);
    for (int i = 0; i < m->nl; i++) {
        stk__layer_free_strings(&m->layers[i]);
        free(m->layers[i].fuse_why);
    }
    free(m->layers);
    for (size_t i = 0; i < m->npinfo; i++)
        free(m->pinfo[i].name);
    for (size_t i = 0; i < m->nbinfo; i++)
        free(m->binfo[i].name);
    free(m->pinfo);
    free(m->binfo);
    free(m->written);
    free(m->bn_sync_buf);
    stk__backend_close(&m->be);
    free(m);
    *pm = NULL;
}

int stk_model_create(stk_model_t **out, const stk_model_builder_t *b, const stk_model_config_t *cfg)
{
    if (!out || !b)
        return stk__error(-EINVAL, "model: NULL argument");
    *out = NULL;
    stk_model_config_t dc;
    stk_model_config_default(&dc);
    if (!cfg)
        cfg = &dc;
    if (cfg->batch_size < 1 || cfg->batch_size > STK__MAX_DIM || cfg->threads < 0)
        return stk__error(-EINVAL, "model: batch_size %lld / threads %d", (long long)cfg->batch_size, cfg->threads);
    if ((unsigned)cfg->cudnn_policy > STK_CUDNN_DETERMINISTIC)
        return stk__error(STK_ECONFIG, "model: cudnn_policy %d is none of heuristic, benchmark, deterministic",
                          (int)cfg->cudnn_policy);
    if (b->n < 2)
        return stk__error(STK_ECONFIG, "model: needs an input layer and at least one more");
    stk_model_t *m = calloc(1, sizeof(*m));
    if (!m)
        return stk__error(-ENOMEM, "model: out of memory");
    m->loss_layer = -1;
    m->cur_plan = -1;
    m->train = 1;
    /* STK_NO_FUSION=1 turns eval fusion off without a rebuild (debugging). */
    const char *nofuse = getenv("STK_NO_FUSION");
    m->fusion = !cfg->no_fusion && !(nofuse && *nofuse && strcmp(nofuse, "0"));
    m->loss_scale = 1.0f;
    m->seed = cfg->seed;
    m->threads = cfg->threads ? cfg->threads : stk__default_threads();
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
        l->cls = s->cls;
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
    if ((rc = stk__backend_open_index(&m->be, cfg->device, cfg->device_index)) < 0)
        goto fail;
    m->device = cfg->device;
    if (m->be.iface->configure && (rc = m->be.iface->configure(m->be.ctx, cfg)) < 0)
        goto fail;
    if ((rc = m->be.iface->set_precision(m->be.ctx, cfg->precision, &m->precision)) < 0) {
        stk__error_prefix(rc, "model: precision %s", stk_precision_name(cfg->precision));
        goto fail;
    }
    assign_layouts(m);
    if (m->threads > 0 && (rc = m->be.iface->set_threads(m->be.ctx, m->threads)) < 0)
        goto fail;
    if ((rc = layout_arenas(m)) < 0)
        goto fail;
    if ((rc = init_params(m, cfg->init_params)) < 0)
        goto fail;
    if ((rc = select_plan(m, cfg->batch_size)) < 0)
        goto fail;
    *out = m;
    return 0;
fail:
    stk_model_destroy(&m);
    return rc;
}

int stk_model_set_batch_size(stk_model_t *m, int64_t batch)
{
    if (!m || batch < 1 || batch > STK__MAX_DIM)
        return stk__error(-EINVAL, "model: batch size %lld", (long long)batch);
    if (batch == m->batch && m->cur_plan >= 0)
        return 0;
    return select_plan(m, batch);
}

/* ----------------------------------------------------------------- forward */

/* The engine checks labels on the host, so that every backend reports a
 * bad one the same way and device kernels need no error path. */
int stk__check_labels(const stk_model_t *m, const int64_t *labels, int64_t n, const char *what)
{
    int64_t k = stk_model_num_classes(m);
    for (int64_t i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= k)
            return stk__error(-EINVAL, "%s: label %lld of sample %lld is outside [0, %lld)", what,
                              (long long)labels[i], (long long)i, (long long)k);
    return 0;
}

/* Points labels_dev / soft_dev at the targets, staging them on a device. */
static int stage_targets(stk_model_t *m, const int64_t *labels, const float *soft)
{
    const stk__backend_iface_t *be = m->be.iface;
    m->labels_dev = labels;
    m->soft_dev = soft;
    if (be->host_memory)
        return 0;
    int64_t k = stk_model_num_classes(m);
    int rc = 0;
    /* A graph step's labels were staged before the graph (engine/graph.c). */
    if (labels && m->graph_phase) {
        m->labels_dev = m->labels_stage;
        return 0;
    }
    if (labels) {
        rc = be->upload(m->be.ctx, m->labels_stage, labels, (size_t)m->batch * sizeof(int64_t));
        m->labels_dev = m->labels_stage;
    }
    if (soft && rc == 0) {
        rc = be->upload(m->be.ctx, m->soft_stage, soft, (size_t)(m->batch * k) * sizeof(float));
        m->soft_dev = m->soft_stage;
    }
    return rc;
}

/* A sequence input's lengths (host, and on the device) and its batch,
 * padded to the input's T when the caller's t is shorter. */
static int bind_sequence(stk_model_t *m, const void *input, int64_t steps, const int64_t *lengths,
                         const void **bound)
{
    const stk__backend_iface_t *be = m->be.iface;
    const stk__layer_t *in = &m->layers[0];
    int64_t n = m->batch, T = in->c;
    if (steps < 1 || steps > T)
        return stk__error(-EINVAL, "model forward: %lld steps, the input takes 1 to %lld", (long long)steps,
                          (long long)T);
    if (lengths) {
        for (int64_t i = 0; i < n; i++)
            if (lengths[i] < 0 || lengths[i] > steps)
                return stk__error(-EINVAL, "model forward: length %lld of sample %lld is outside [0, %lld]",
                                  (long long)lengths[i], (long long)i, (long long)steps);
        m->lengths = lengths;
    } else {
        for (int64_t i = 0; i < n; i++)
            m->lengths_buf[i] = steps;
        m->lengths = m->lengths_buf;
    }
    m->lengths_dev = m->lengths;
    int rc = 0;
    if (!be->host_memory) {
        rc = be->upload(m->be.ctx, m->lengths_stage, m->lengths, (size_t)n * sizeof(int64_t));
        m->lengths_dev = m->lengths_stage;
    }
    m->steps = steps;
    *bound = input;
    if (rc < 0 || steps == T)
        return rc;
    /* rows of t steps into rows of T, the rest zero (token id 0) */
    size_t es = stk_dtype_size(in->dtype), row = (size_t)(in->h * in->w) * es;
    be->zero(m->be.ctx, m->input_pad, (size_t)(n * T) * row / sizeof(float));
    for (int64_t i = 0; i < n && rc == 0; i++)
        rc = be->copy(m->be.ctx, (char *)m->input_pad + (size_t)(i * T) * row, (const char *)input + (size_t)(i * steps) * row,
                      (size_t)steps * row);
    *bound = m->input_pad;
    return rc;
}

/* The forward of stk_model_forward and stk_model_forward_tensor; steps
 * and lengths for a sequence input (steps 0: T). */
static int model_forward(stk_model_t *m, const void *input, int64_t batch, int64_t steps, const int64_t *lengths,
                         const int64_t *labels, const float *soft_targets, float *loss)
{
    if (!m || !input || batch < 1)
        return stk__error(-EINVAL, "model forward: NULL input or batch %lld", (long long)batch);
    if (labels && soft_targets)
        return stk__error(-EINVAL, "model forward: give labels or soft targets, not both");
    if ((labels || soft_targets) && (m->loss_layer < 0 || !loss))
        return stk__error(-EINVAL, "model forward: targets need a loss layer and a loss pointer");
    if (soft_targets && m->loss_per_step)
        return stk__error(-EINVAL, "model forward: a loss over a sequence takes labels, not soft targets");
    /* a loss over a sequence checks its own (per-step) labels */
    int rc = labels && !m->loss_per_step ? stk__check_labels(m, labels, batch, "model forward") : 0;
    if (rc < 0)
        return rc;
    if (batch > STK__MAX_DIM)
        return stk__error(-EINVAL, "model forward: batch %lld", (long long)batch);
    if (batch != m->batch || m->cur_plan < 0) {
        if ((rc = select_plan(m, batch)) < 0)
            return rc;
    } else {
        m->plans[m->cur_plan].used = ++m->plan_clock;
    }
    if (m->threads > 0)
        m->be.iface->set_threads(m->be.ctx, m->threads);
    m->fwd_state = 0;
    m->correct_valid = 0;
    m->loss_count = 0;
    if (m->layers[0].seq && (rc = bind_sequence(m, input, steps ? steps : m->layers[0].c, lengths, &input)) < 0)
        return rc;
    m->input = input;
    m->labels = labels;
    m->soft = soft_targets;
    if ((rc = stage_targets(m, m->loss_per_step ? NULL : labels, soft_targets)) < 0)
        return stk__error_prefix(rc, "model forward: staging the targets");
    m->fwd_step = m->step;
    m->layers[0].y = (float *)input;
    for (int i = 1; i < m->nl; i++)
        if (m->layers[i].alias)
            m->layers[i].y = m->layers[m->layers[i].root].y;
    char where[200];
    int timed = stk__prof_timing(m);
    if (timed && (rc = stk__prof_pass_begin(m, 0)) < 0)
        return stk__error_prefix(rc, "forward: profiling");
    for (int i = 0; i < m->nl; i++) {
        double t0 = 0.0;
        if (timed && (rc = stk__prof_layer_begin(m, 0, i, &t0)) < 0)
            return stk__error_prefix(rc, "forward: profiling");
        rc = m->layers[i].cls->forward(m, i);
        if (rc < 0)
            return stk__error_prefix(rc, "forward: %s", stk__layer_where(&m->layers[i], where, sizeof(where)));
        if (timed && (rc = stk__prof_layer_end(m, 0, i, t0)) < 0)
            return stk__error_prefix(rc, "forward: profiling");
    }
    if (timed)
        stk__prof_pass_end(m, 0);
    /* Each training forward draws new dropout masks without the caller's
     * help; stk_model_set_step overrides (resume, replay). */
    if (m->train)
        m->step = m->fwd_step + 1;
    if (labels || soft_targets) {
        /* Loss and top-1 count come back in one read per step. */
        const stk__layer_t *lg = &m->layers[m->logits_layer];
        if (labels && !m->loss_per_step &&
            (rc = m->be.iface->count_correct(m->be.ctx, m->batch, lg->c, 1, lg->y, m->labels_dev,
                                             (int64_t *)(m->stats + 8))) < 0)
            return stk__error_prefix(rc, "forward: counting the correct samples");
        if (!m->loss_per_step)
            m->loss_count = m->batch;
        /* A graph step reads them back after the graph ran. */
        if (m->graph_phase) {
            m->fwd_state = 2;
            return 0;
        }
        unsigned char st[16];
        if ((rc = m->be.iface->download(m->be.ctx, st, m->stats, labels ? 16 : 4)) < 0)
            return stk__error_prefix(rc, "forward: reading the loss back");
        memcpy(loss, st, sizeof(float));
        if (labels) {
            memcpy(&m->correct, st + 8, sizeof(int64_t));
            m->correct_valid = 1;
        }
    }
    m->fwd_state = (labels || soft_targets) ? 2 : 1;
    return 0;
}

int stk_model_forward(stk_model_t *m, const float *input, int64_t batch, const int64_t *labels,
                      const float *soft_targets, float *loss)
{
    return model_forward(m, input, batch, 0, NULL, labels, soft_targets, loss);
}

/* A sequence input as a tensor: features f32 [N, t, F] (or N x T x F
 * elements in any shape), token ids i64 [N, t]. */
static int sequence_tensor(const stk_model_t *m, const stk_tensor_t *input, int64_t *steps)
{
    const stk__layer_t *in = &m->layers[0];
    int64_t n = input->shape[0], f = in->w, T = in->c;
    if (in->dtype == STK_DTYPE_I64) {
        if (input->dtype != STK_DTYPE_I64 || input->ndim != 2 || input->shape[1] < 1 || input->shape[1] > T)
            return stk__error(STK_ESHAPE, "model forward: the input takes token ids i64 [N, t] with t <= %lld",
                              (long long)T);
        *steps = input->shape[1];
        return 0;
    }
    if (input->dtype != STK_DTYPE_F32)
        return stk__error(-EINVAL, "model forward: the input must be f32");
    if (input->ndim == 3 && input->shape[2] == f && input->shape[1] >= 1 && input->shape[1] <= T) {
        *steps = input->shape[1];
        return 0;
    }
    if (n > 0 && stk_tensor_numel(input) == n * T * f) {
        *steps = T;
        return 0;
    }
    return stk__error(STK_ESHAPE, "model forward: the input takes sequences f32 [N, t, %lld] with t <= %lld",
                      (long long)f, (long long)T);
}

int stk_model_forward_tensor(stk_model_t *m, const stk_tensor_t *input, const stk_tensor_t *target, float *loss)
{
    if (!m || !input)
        return stk__error(-EINVAL, "model forward: NULL argument");
    const stk__layer_t *in = &m->layers[0];
    if (input->device != m->device || !stk_tensor_is_contiguous(input) || input->ndim < 1)
        return stk__error(-EINVAL, "model forward: the input must be contiguous on the model's device");
    int64_t n = input->shape[0], steps = 0;
    int rc;
    if (in->seq) {
        if ((rc = sequence_tensor(m, input, &steps)) < 0)
            return rc;
    } else {
        if (input->dtype != STK_DTYPE_F32)
            return stk__error(-EINVAL, "model forward: the input must be contiguous f32 on the model's device");
        int64_t feat = input->ndim == 4 ? input->shape[1] * input->shape[2] * input->shape[3]
                                        : (input->ndim == 2 ? input->shape[1] : -1);
        if ((input->ndim == 4 && (input->shape[1] != in->c || input->shape[2] != in->h || input->shape[3] != in->w)) ||
            feat != in->c * in->h * in->w)
            return stk__error(STK_ESHAPE, "model forward: the input is not N x %lld x %lld x %lld", (long long)in->c,
                              (long long)in->h, (long long)in->w);
    }
    const int64_t *labels = NULL;
    const float *soft = NULL;
    if (target) {
        int64_t k = stk_model_num_classes(m);
        if (m->loss_per_step) {
            if (target->dtype != STK_DTYPE_I64 || target->ndim != 2 || target->shape[0] != n ||
                target->shape[1] != steps || !stk_tensor_is_contiguous(target))
                return stk__error(STK_ESHAPE, "model forward: the target must be per-step i64 [%lld, %lld]",
                                  (long long)n, (long long)steps);
            labels = target->data;
        } else if (target->dtype == STK_DTYPE_I64 && target->ndim == 1 && target->shape[0] == n)
            labels = target->data;
        else if (target->dtype == STK_DTYPE_F32 && target->ndim == 2 && target->shape[0] == n &&
                 target->shape[1] == k && stk_tensor_is_contiguous(target))
            soft = target->data;
        else
            return stk__error(STK_ESHAPE, "model forward: the target must be i64 [%lld] or f32 [%lld, %lld]",
                              (long long)n, (long long)n, (long long)k);
    }
    return model_forward(m, input->data, n, steps, in->seq ? input->lengths : NULL, labels, soft, loss);
}

/* ---------------------------------------------------------------- backward */

float *stk__dx_target(stk_model_t *m, int i, int k, int *acc)
{
    int r = m->layers[m->layers[i].in[k]].root;
    *acc = 0;
    if (r == 0 && !m->input_grad)
        return NULL;
    if (!m->written[r]) {
        m->written[r] = 1;
        return m->layers[r].dy;
    }
    *acc = 1;
    return m->act_scratch;
}

void stk__dx_finish(stk_model_t *m, int i, int k, float *dx, int acc)
{
    if (dx && acc) {
        const stk__layer_t *in = &m->layers[m->layers[i].in[k]];
        size_t n = (size_t)(m->batch * in->c * in->h * in->w);
        m->be.iface->accumulate(m->be.ctx, n, dx, m->layers[in->root].dy);
    }
}

float *stk__dx_direct(stk_model_t *m, int i, int k, int *acc)
{
    int r = m->layers[m->layers[i].in[k]].root;
    *acc = m->written[r];
    if (r == 0 && !m->input_grad)
        return NULL;
    m->written[r] = 1;
    return m->layers[r].dy;
}

/* Parameter gradients overwrite the arena right after zero_grad, and are
 * added through scratch otherwise (PyTorch's accumulation). */
float *stk__grad_target(stk_model_t *m, const stk__layer_t *l, int k)
{
    if (k >= l->nparam)
        return NULL;
    return m->grads_zero ? stk__grad(m, l, k) : m->param_scratch;
}

void stk__grad_finish(stk_model_t *m, const stk__layer_t *l, int k, float *g)
{
    if (g && g == m->param_scratch)
        m->be.iface->accumulate(m->be.ctx, stk__param_count(m, l, k), g, stk__grad(m, l, k));
}

static int backward_run(stk_model_t *m)
{
    char where[200];
    int rc = 0, timed = stk__prof_timing(m);
    if (timed && (rc = stk__prof_pass_begin(m, 1)) < 0)
        return stk__error_prefix(rc, "backward: profiling");
    for (int i = m->nl - 1; i >= 1; i--) {
        stk__layer_t *l = &m->layers[i];
        /* A layer whose output reached no loss has no gradient. */
        if (!l->cls->is_loss && !m->written[l->root])
            continue;
        if (!l->cls->backward)
            continue;
        double t0 = 0.0;
        if (timed && (rc = stk__prof_layer_begin(m, 1, i, &t0)) < 0)
            return stk__error_prefix(rc, "backward: profiling");
        rc = l->cls->backward(m, i);
        if (rc < 0)
            return stk__error_prefix(rc, "backward: %s", stk__layer_where(l, where, sizeof(where)));
        if (timed && (rc = stk__prof_layer_end(m, 1, i, t0)) < 0)
            return stk__error_prefix(rc, "backward: profiling");
        /* A layer's parameters are contiguous: one call covers them. */
        if (m->hook && l->nparam) {
            size_t cnt = 0;
            for (int k = 0; k < l->nparam; k++)
                cnt += stk__param_count(m, l, k);
            m->hook(stk__param_info(m, l, 0)->offset, cnt, m->hook_user);
        }
    }
    /* Layers that got no gradient keep theirs; only a zero arena may be
     * overwritten, and after this backward it is no longer zero. */
    if (timed)
        stk__prof_pass_end(m, 1);
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
    int is_loss = m->layers[last].cls->is_loss;
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

