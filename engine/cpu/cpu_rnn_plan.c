/* SPDX-License-Identifier: MIT */
/* CPU backend, recurrent stacks (see cpu_rnn.h): the oneDNN side of an
 * op. Its primitives, one pair per segment shape in an LRU cache, the
 * weight formats they chose and the reorders into them, the op's buffers,
 * and the op's create and destroy. Separate from the passes because none
 * of this depends on a call's lengths: it is the plan, made once. */
#include "cpu_rnn.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>

#include "stoker/common.h"

#define DNNL_TRY(call)                                                                                 \
    do {                                                                                               \
        dnnl_status_t st_ = (call);                                                                    \
        if (st_ != dnnl_success) {                                                                     \
            rc = stk__error(STK_EBACKEND, "oneDNN rnn: %s: %s", #call, dnnl_status2str(st_));         \
            goto fail;                                                                                 \
        }                                                                                              \
    } while (0)

void *stk__cpu_rnn_zalloc(size_t bytes)
{
    size_t sz = (bytes + 63) / 64 * 64;
    void *p = aligned_alloc(64, sz ? sz : 64);
    if (p)
        memset(p, 0, sz ? sz : 64);
    return p;
}

static void rprim_free(rprim_t *pr)
{
    for (int i = 0; i < pr->nargs; i++)
        if (pr->args[i].memory)
            dnnl_memory_destroy(pr->args[i].memory);
    if (pr->p)
        dnnl_primitive_destroy(pr->p);
    memset(pr, 0, sizeof(*pr));
}

/* The op's scratchpad grown to the one pd needs, and pr's argument for
 * it when it needs one. */
static int scratch_arg(stk__rnn_op_t *op, rprim_t *pr, const_dnnl_primitive_desc_t pd)
{
    int rc = 0;
    const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    size_t sz = md ? dnnl_memory_desc_get_size(md) : 0;
    if (sz == 0)
        return 0;
    if (sz > op->scratch_cap) {
        free(op->scratch);
        op->scratch_cap = 0;
        if (!(op->scratch = stk__cpu_rnn_zalloc(sz)))
            return stk__error(-ENOMEM, "rnn: out of memory for a %zu-byte scratchpad", sz);
        op->scratch_cap = sz;
    }
    int i = pr->nargs;
    pr->args[i].arg = DNNL_ARG_SCRATCHPAD;
    DNNL_TRY(dnnl_memory_create(&pr->args[i].memory, md, op->c->eng, DNNL_MEMORY_NONE));
    pr->scratch = i;
    pr->nargs = i + 1;
    return 0;
fail:
    return rc;
}

/* The primitive of pd with one memory object per argument in ids. */
static int rprim_make(stk__rnn_op_t *op, rprim_t *pr, const_dnnl_primitive_desc_t pd, int nargs, const int *ids)
{
    int rc = 0;
    DNNL_TRY(dnnl_primitive_create(&pr->p, pd));
    for (int i = 0; i < nargs; i++) {
        const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, dnnl_query_exec_arg_md, ids[i]);
        pr->args[i].arg = ids[i];
        DNNL_TRY(dnnl_memory_create(&pr->args[i].memory, md, op->c->eng, DNNL_MEMORY_NONE));
        pr->nargs = i + 1;
    }
    if ((rc = scratch_arg(op, pr, pd)) < 0)
        goto fail;
    return 0;
fail:
    rprim_free(pr);
    return rc;
}

int stk__cpu_rnn_prim_run(stk__rnn_op_t *op, rprim_t *pr, void *const *ptrs)
{
    int rc = 0;
    for (int i = 0; i < pr->nargs; i++)
        DNNL_TRY(dnnl_memory_set_data_handle(pr->args[i].memory, pr->scratch && pr->scratch == i ? op->scratch : ptrs[i]));
    DNNL_TRY(dnnl_primitive_execute(pr->p, op->stream, pr->nargs, pr->args));
    DNNL_TRY(dnnl_stream_wait(op->stream));
    return 0;
fail:
    return rc;
}

static const int FWD_IDS[] = {DNNL_ARG_SRC_LAYER,  DNNL_ARG_SRC_ITER, DNNL_ARG_WEIGHTS_LAYER,
                              DNNL_ARG_WEIGHTS_ITER, DNNL_ARG_BIAS,    DNNL_ARG_DST_LAYER,
                              DNNL_ARG_DST_ITER,   DNNL_ARG_WORKSPACE, DNNL_ARG_SRC_ITER_C,
                              DNNL_ARG_DST_ITER_C};
static const int BWD_IDS[] = {DNNL_ARG_SRC_LAYER,         DNNL_ARG_SRC_ITER,      DNNL_ARG_WEIGHTS_LAYER,
                              DNNL_ARG_WEIGHTS_ITER,      DNNL_ARG_BIAS,          DNNL_ARG_DST_LAYER,
                              DNNL_ARG_DST_ITER,          DNNL_ARG_WORKSPACE,     DNNL_ARG_DIFF_SRC_LAYER,
                              DNNL_ARG_DIFF_SRC_ITER,     DNNL_ARG_DIFF_WEIGHTS_LAYER,
                              DNNL_ARG_DIFF_WEIGHTS_ITER, DNNL_ARG_DIFF_BIAS,     DNNL_ARG_DIFF_DST_LAYER,
                              DNNL_ARG_DIFF_DST_ITER,     DNNL_ARG_SRC_ITER_C,    DNNL_ARG_DST_ITER_C,
                              DNNL_ARG_DIFF_SRC_ITER_C,   DNNL_ARG_DIFF_DST_ITER_C};
#define FWD_N(lstm) ((lstm) ? 10 : 8)
#define BWD_N(lstm) ((lstm) ? 19 : 15)

static int md_tag(dnnl_memory_desc_t *md, int nd, const int64_t *dims, dnnl_format_tag_t tag)
{
    dnnl_dims_t d;
    for (int i = 0; i < nd; i++)
        d[i] = dims[i];
    dnnl_status_t st = dnnl_memory_desc_init_by_tag(md, nd, d, dnnl_f32, tag);
    return st == dnnl_success ? 0 : stk__error(STK_EBACKEND, "oneDNN rnn: memory desc: %s", dnnl_status2str(st));
}

/* The memory descriptors of one segment shape: layer tensors tnc, states
 * ldnc, weights `any` (the primitive picks), bias ldgo. */
typedef struct rnn_mds {
    dnnl_memory_desc_t src, dst, iter, wl, wi, bias;
} rnn_mds_t;

static int mds_make(const stk__rnn_op_t *op, int64_t steps, int64_t n, int64_t in, rnn_mds_t *m)
{
    int64_t h = op->d.hidden;
    int rc;
    if ((rc = md_tag(&m->src, 3, (int64_t[]){steps, n, in}, dnnl_tnc)) < 0 ||
        (rc = md_tag(&m->dst, 3, (int64_t[]){steps, n, h}, dnnl_tnc)) < 0 ||
        (rc = md_tag(&m->iter, 4, (int64_t[]){1, 1, n, h}, dnnl_ldnc)) < 0 ||
        (rc = md_tag(&m->wl, 5, (int64_t[]){1, 1, in, op->g, h}, dnnl_format_tag_any)) < 0 ||
        (rc = md_tag(&m->wi, 5, (int64_t[]){1, 1, h, op->g, h}, dnnl_format_tag_any)) < 0 ||
        (rc = md_tag(&m->bias, 4, (int64_t[]){1, 1, op->gb, h}, dnnl_ldgo)) < 0)
        return rc;
    return 0;
}

static int fwd_pd(const stk__rnn_op_t *op, const rnn_mds_t *m, dnnl_primitive_desc_t *pd)
{
    int rc = 0;
    dnnl_rnn_desc_t rd;
    const dnnl_rnn_direction_t dir = dnnl_unidirectional_left2right;
    if (op->d.cell == STK__RNN_LSTM)
        DNNL_TRY(dnnl_lstm_forward_desc_init(&rd, dnnl_forward_training, dir, &m->src, &m->iter, &m->iter, &m->wl,
                                             &m->wi, &m->bias, &m->dst, &m->iter, &m->iter, 0));
    else
        DNNL_TRY(dnnl_lbr_gru_forward_desc_init(&rd, dnnl_forward_training, dir, &m->src, &m->iter, &m->wl, &m->wi,
                                                &m->bias, &m->dst, &m->iter, 0));
    DNNL_TRY(dnnl_primitive_desc_create(pd, &rd, op->attr, op->c->eng, NULL));
    return 0;
fail:
    return rc;
}

static int bwd_pd(const stk__rnn_op_t *op, const rnn_mds_t *m, const_dnnl_primitive_desc_t hint,
                  dnnl_primitive_desc_t *pd)
{
    int rc = 0;
    dnnl_rnn_desc_t rd;
    const dnnl_rnn_direction_t dir = dnnl_unidirectional_left2right;
    if (op->d.cell == STK__RNN_LSTM)
        DNNL_TRY(dnnl_lstm_backward_desc_init(&rd, dnnl_backward, dir, &m->src, &m->iter, &m->iter, &m->wl, &m->wi,
                                              &m->bias, &m->dst, &m->iter, &m->iter, &m->src, &m->iter, &m->iter,
                                              &m->wl, &m->wi, &m->bias, &m->dst, &m->iter, &m->iter, 0));
    else
        DNNL_TRY(dnnl_lbr_gru_backward_desc_init(&rd, dnnl_backward, dir, &m->src, &m->iter, &m->wl, &m->wi,
                                                 &m->bias, &m->dst, &m->iter, &m->src, &m->iter, &m->wl, &m->wi,
                                                 &m->bias, &m->dst, &m->iter, 0));
    DNNL_TRY(dnnl_primitive_desc_create(pd, &rd, op->attr, op->c->eng, hint));
    return 0;
fail:
    return rc;
}

static void shape_free(shape_t *s)
{
    rprim_free(&s->fwd);
    rprim_free(&s->bwd);
    if (s->fpd)
        dnnl_primitive_desc_destroy(s->fpd);
    if (s->bpd)
        dnnl_primitive_desc_destroy(s->bpd);
    memset(s, 0, sizeof(*s));
}

/* The weight formats a shape's primitives chose must be the layer's (they
 * depend on the weights' dims only; a surprise is an error, not a silent
 * misread). */
static int check_formats(const rlayer_t *ly, const_dnnl_primitive_desc_t pd, int bwd)
{
    for (int k = 0; k < 2; k++) {
        const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, k);
        if (!md || !dnnl_memory_desc_equal(md, &ly->md[(bwd ? W_BL : W_FL) + k]))
            return stk__error(STK_EBACKEND, "oneDNN rnn: %s weights format changed with the batch shape",
                              bwd ? "backward" : "forward");
        if (bwd) {
            md = dnnl_primitive_desc_query_md(pd, dnnl_query_diff_weights_md, k);
            if (!md || !dnnl_memory_desc_equal(md, &ly->md[W_DL + k]))
                return stk__error(STK_EBACKEND, "oneDNN rnn: weight gradient format changed with the batch shape");
        }
    }
    return 0;
}

/* The cached primitives of a segment shape; bwd: with the backward. */
int stk__cpu_rnn_shape_get(stk__rnn_op_t *op, const rlayer_t *ly, int64_t steps, int64_t n, int bwd, shape_t **out)
{
    int rc = 0, lstm = op->d.cell == STK__RNN_LSTM;
    shape_t *s = NULL;
    for (int i = 0; i < op->ncache; i++) {
        shape_t *e = &op->cache[i];
        if (e->steps == steps && e->n == n && e->in == ly->in) {
            s = e;
            break;
        }
    }
    if (!s) {
        if (op->ncache < CACHE_MAX) {
            s = &op->cache[op->ncache++];
        } else {
            s = &op->cache[0];
            for (int i = 1; i < op->ncache; i++)
                if (op->cache[i].used < s->used)
                    s = &op->cache[i];
            shape_free(s);
        }
        rnn_mds_t m;
        if ((rc = mds_make(op, steps, n, ly->in, &m)) < 0 || (rc = fwd_pd(op, &m, &s->fpd)) < 0 ||
            (rc = check_formats(ly, s->fpd, 0)) < 0 || (rc = rprim_make(op, &s->fwd, s->fpd, FWD_N(lstm), FWD_IDS)) < 0)
            goto fail;
        s->ws = dnnl_memory_desc_get_size(dnnl_primitive_desc_query_md(s->fpd, dnnl_query_workspace_md, 0));
        s->steps = steps;
        s->n = n;
        s->in = ly->in;
    }
    if (bwd && !s->bpd) {
        rnn_mds_t m;
        if ((rc = mds_make(op, steps, n, ly->in, &m)) < 0 || (rc = bwd_pd(op, &m, s->fpd, &s->bpd)) < 0 ||
            (rc = check_formats(ly, s->bpd, 1)) < 0 ||
            (rc = rprim_make(op, &s->bwd, s->bpd, BWD_N(lstm), BWD_IDS)) < 0)
            goto fail;
    }
    s->used = ++op->tick;
    *out = s;
    return 0;
fail:
    if (s)
        shape_free(s);
    if (s == &op->cache[op->ncache - 1])
        op->ncache--;
    return rc;
}


static int reorder_make(stk__rnn_op_t *op, rprim_t *pr, const dnnl_memory_desc_t *from,
                        const dnnl_memory_desc_t *to)
{
    int rc = 0;
    cpu_ctx_t *c = op->c;
    dnnl_primitive_desc_t pd = NULL;
    DNNL_TRY(dnnl_reorder_primitive_desc_create(&pd, from, c->eng, to, c->eng, op->attr));
    DNNL_TRY(dnnl_primitive_create(&pr->p, pd));
    pr->nargs = 2;
    pr->args[0].arg = DNNL_ARG_FROM;
    pr->args[1].arg = DNNL_ARG_TO;
    DNNL_TRY(dnnl_memory_create(&pr->args[0].memory, from, c->eng, DNNL_MEMORY_NONE));
    DNNL_TRY(dnnl_memory_create(&pr->args[1].memory, to, c->eng, DNNL_MEMORY_NONE));
    if ((rc = scratch_arg(op, pr, pd)) < 0)
        goto fail;
    dnnl_primitive_desc_destroy(pd);
    return 0;
fail:
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    rprim_free(pr);
    return rc;
}

/* The layer's weight formats, from primitives of the plan's largest shape,
 * and the reorders between them and PyTorch's plain layout (ldgoi). */
static int layer_formats(stk__rnn_op_t *op, rlayer_t *ly)
{
    int rc = 0;
    rnn_mds_t m;
    dnnl_primitive_desc_t f = NULL, b = NULL;
    dnnl_memory_desc_t plain[2];
    if ((rc = mds_make(op, op->d.steps, op->d.batch, ly->in, &m)) < 0 || (rc = fwd_pd(op, &m, &f)) < 0 ||
        (rc = bwd_pd(op, &m, f, &b)) < 0)
        goto fail;
    for (int k = 0; k < 2; k++) {
        ly->md[W_FL + k] = *dnnl_primitive_desc_query_md(f, dnnl_query_weights_md, k);
        ly->md[W_BL + k] = *dnnl_primitive_desc_query_md(b, dnnl_query_weights_md, k);
        ly->md[W_DL + k] = *dnnl_primitive_desc_query_md(b, dnnl_query_diff_weights_md, k);
    }
    if ((rc = md_tag(&plain[0], 5, (int64_t[]){1, 1, ly->in, op->g, op->d.hidden}, dnnl_ldgoi)) < 0 ||
        (rc = md_tag(&plain[1], 5, (int64_t[]){1, 1, op->d.hidden, op->g, op->d.hidden}, dnnl_ldgoi)) < 0)
        goto fail;
    for (int k = 0; k < W_N; k++) {
        const dnnl_memory_desc_t *p = &plain[k & 1];
        if ((rc = k < W_DL ? reorder_make(op, &ly->re[k], p, &ly->md[k])
                           : reorder_make(op, &ly->re[k], &ly->md[k], p)) < 0)
            goto fail;
    }
fail:
    if (f)
        dnnl_primitive_desc_destroy(f);
    if (b)
        dnnl_primitive_desc_destroy(b);
    return rc;
}

void stk__cpu_rnn_core_destroy(stk__rnn_op_t *op)
{
    if (!op)
        return;
    free(op->scratch);
    if (op->attr)
        dnnl_primitive_attr_destroy(op->attr);
    if (op->own_stream)
        dnnl_stream_destroy(op->own_stream);
    for (int i = 0; i < op->ncache; i++)
        shape_free(&op->cache[i]);
    for (int l = 0; op->layers && l < op->d.layers; l++) {
        rlayer_t *ly = &op->layers[l];
        for (int k = 0; k < W_N; k++)
            rprim_free(&ly->re[k]);
        if (l > 0)
            free(ly->input);
        for (int d = 0; d < 2; d++) {
            rdir_t *dr = &ly->dir[d];
            for (int k = 0; k < 4; k++)
                free(dr->w[k]);
            free(dr->dw[0]);
            free(dr->dw[1]);
            free(dr->bias);
            free(dr->dbias);
            free(dr->xr);
            free(dr->y);
            free(dr->h);
            free(dr->c);
            free(dr->ws);
            free(dr->ws_off);
        }
    }
    free(op->layers);
    free(op->order);
    free(op->len);
    free(op->off);
    free(op->rowseq);
    free(op->rowt);
    free(op->rev);
    free(op->slot_of);
    free(op->seg_of_step);
    free(op->seg);
    free(op->x0);
    free(op->tmp[0]);
    free(op->tmp[1]);
    free(op->dout);
    free(op->din);
    free(op->dyd);
    free(op->dxa);
    free(op->dxb);
    for (int k = 0; k < 4; k++)
        free(op->ds[k]);
    free(op->dhn_s);
    free(op->dcn_s);
    free(op->zero);
    free(op);
}

#define ALLOC(p, bytes)                                                                                \
    do {                                                                                               \
        if (!((p) = stk__cpu_rnn_zalloc(bytes)))                                                                    \
            goto nomem;                                                                                \
    } while (0)

/* An op for batches of up to d->batch; own_stream: on a stream of its
 * own (a part), else the context's. */
int stk__cpu_rnn_core_create(cpu_ctx_t *c, const stk__rnn_desc_t *d, int own_stream, stk__rnn_op_t **out)
{
    *out = NULL;
    if ((d->cell != STK__RNN_LSTM && d->cell != STK__RNN_GRU) || d->batch < 1 || d->steps < 1 || d->input < 1 ||
        d->hidden < 1 || d->layers < 1 || (d->bidirectional != 0 && d->bidirectional != 1) || !(d->dropout >= 0.0f) ||
        !(d->dropout < 1.0f))
        return stk__error(-EINVAL, "rnn: bad plan (cell %d, batch %lld, steps %lld, input %lld, hidden %lld, "
                                   "layers %d, bidirectional %d, dropout %g)",
                          d->cell, (long long)d->batch, (long long)d->steps, (long long)d->input,
                          (long long)d->hidden, d->layers, d->bidirectional, (double)d->dropout);
    stk__rnn_op_t *op = calloc(1, sizeof(*op));
    if (!op)
        return stk__error(-ENOMEM, "rnn: out of memory");
    int rc = 0;
    op->d = *d;
    op->c = c;
    op->stream = c->stream;
    dnnl_status_t st = dnnl_primitive_attr_create(&op->attr);
    if (st == dnnl_success)
        st = dnnl_primitive_attr_set_scratchpad_mode(op->attr, dnnl_scratchpad_mode_user);
    if (st == dnnl_success && own_stream) {
        st = dnnl_stream_create(&op->own_stream, c->eng, dnnl_stream_default_flags);
        op->stream = op->own_stream;
    }
    if (st != dnnl_success) {
        rc = stk__error(STK_EBACKEND, "oneDNN rnn: attributes or stream: %s", dnnl_status2str(st));
        goto fail;
    }
    op->g = stk__rnn_gates(d->cell);
    op->gb = d->cell == STK__RNN_LSTM ? 4 : 4; /* LSTM: i f g o; lbr GRU: u r o and the hidden n bias */
    op->nd = d->bidirectional ? 2 : 1;
    int64_t n = d->batch, t = d->steps, h = d->hidden, rmax = n * t, dh = op->nd * h;
    int64_t inmax = d->input > dh ? d->input : dh;
    size_t f = sizeof(float);
    op->layers = calloc((size_t)d->layers, sizeof(*op->layers));
    if (!op->layers)
        goto nomem;
    ALLOC(op->order, (size_t)n * 8);
    ALLOC(op->len, (size_t)n * 8);
    ALLOC(op->slot_of, (size_t)n * 8);
    ALLOC(op->off, (size_t)(t + 1) * 8);
    ALLOC(op->seg_of_step, (size_t)t * 8);
    ALLOC(op->rowseq, (size_t)rmax * 8);
    ALLOC(op->rowt, (size_t)rmax * 8);
    ALLOC(op->rev, (size_t)rmax * 8);
    ALLOC(op->seg, (size_t)t * sizeof(seg_t));
    ALLOC(op->x0, (size_t)(rmax * d->input) * f);
    size_t wmax = (size_t)(op->g * h * (inmax > h ? inmax : h));
    ALLOC(op->tmp[0], wmax * f);
    ALLOC(op->tmp[1], wmax * f);
    ALLOC(op->dout, (size_t)(rmax * inmax) * f);
    ALLOC(op->din, (size_t)(rmax * inmax) * f);
    ALLOC(op->dyd, (size_t)(rmax * h) * f);
    ALLOC(op->dxa, (size_t)(rmax * inmax) * f);
    ALLOC(op->dxb, (size_t)(rmax * inmax) * f);
    for (int k = 0; k < 4; k++)
        ALLOC(op->ds[k], (size_t)(n * h) * f);
    ALLOC(op->dhn_s, (size_t)(n * h) * f);
    ALLOC(op->dcn_s, (size_t)(n * h) * f);
    ALLOC(op->zero, (size_t)(n * h) * f);
    for (int l = 0; l < d->layers; l++) {
        rlayer_t *ly = &op->layers[l];
        ly->in = l == 0 ? d->input : dh;
        if ((rc = layer_formats(op, ly)) < 0)
            goto fail;
        if (l > 0)
            ALLOC(ly->input, (size_t)(rmax * ly->in) * f);
        else
            ly->input = op->x0;
        for (int di = 0; di < op->nd; di++) {
            rdir_t *dr = &ly->dir[di];
            for (int k = 0; k < 4; k++)
                ALLOC(dr->w[k], dnnl_memory_desc_get_size(&ly->md[k]));
            ALLOC(dr->dw[0], dnnl_memory_desc_get_size(&ly->md[W_DL]));
            ALLOC(dr->dw[1], dnnl_memory_desc_get_size(&ly->md[W_DI]));
            ALLOC(dr->bias, (size_t)(op->gb * h) * f);
            ALLOC(dr->dbias, (size_t)(op->gb * h) * f);
            if (di == 1)
                ALLOC(dr->xr, (size_t)(rmax * ly->in) * f);
            ALLOC(dr->y, (size_t)(rmax * h) * f);
            ALLOC(dr->ws_off, (size_t)t * sizeof(size_t));
            ALLOC(dr->h, (size_t)((t + 1) * n * h) * f);
            if (d->cell == STK__RNN_LSTM)
                ALLOC(dr->c, (size_t)((t + 1) * n * h) * f);
        }
    }
    *out = op;
    return 0;
nomem:
    rc = stk__error(-ENOMEM, "rnn: out of memory planning batch %lld x %lld steps", (long long)n, (long long)t);
fail:
    stk__cpu_rnn_core_destroy(op);
    return rc;
}
