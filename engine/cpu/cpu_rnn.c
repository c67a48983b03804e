/* SPDX-License-Identifier: MIT */
/* CPU backend, recurrent stacks: PyTorch's LSTM and GRU (layers,
 * directions, dropout between layers) on oneDNN's lstm and lbr_gru
 * primitives, with packed-sequence semantics for variable lengths.
 *
 * oneDNN has no lengths. So a call sorts its sequences by length and packs
 * them time-major as torch's PackedSequence does: step s holds the rows of
 * the bs[s] sequences still running, and a run of steps over which bs stays
 * the same (a segment) is one dense (steps, bs, features) block. Each
 * segment is one primitive call on that smaller batch, its initial state
 * the previous segment's final state (whose first bs rows are the live
 * sequences), so no padded step is computed, a finished sequence's state
 * is the previous segment's dst_iter, and backward injects its dhn there.
 * The reverse direction runs left to right over each sequence reversed in
 * place (same packing, rows permuted). oneDNN's own multi-layer and
 * bidirectional modes do not feed one layer's concatenated directions to
 * the next, so every layer and direction is its own primitive. */
#include "cpu.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>

#include "stoker/common.h"

#define RNN_MAX_ARGS 20
/* Primitives kept per op, one per (steps, batch, input) segment shape;
 * the least recently used goes when full. Creating one costs ~0.4 ms. */
#define CACHE_MAX 256
#define PAR_MIN 16384
/* Batch splitting: at most this many parts, each of at least
 * PART_MIN sequences. */
#define RNN_PARTS 8
#define PART_MIN 2

typedef struct rprim {
    dnnl_primitive_t p;
    int nargs;
    int scratch; /* args[scratch] is the op's scratchpad; 0: none (args[0] never is) */
    dnnl_exec_arg_t args[RNN_MAX_ARGS];
} rprim_t;

typedef struct shape {
    int64_t steps, n, in;
    uint64_t used;
    dnnl_primitive_desc_t fpd, bpd;
    rprim_t fwd, bwd;
    size_t ws;
} shape_t;

typedef struct seg {
    int64_t t0, steps, n;
} seg_t;

/* Weight formats the primitives take, by index. */
enum { W_FL, W_FI, W_BL, W_BI, W_DL, W_DI, W_N };

typedef struct rdir {
    float *w[4];      /* W_FL..W_BI in the primitives' formats */
    float *bias;      /* oneDNN's bias [Gb, H] */
    float *dw[2];     /* W_DL, W_DI: diff weights, accumulated over segments */
    float *dbias;
    float *xr;        /* reverse direction: the layer input, sequences reversed */
    float *y;         /* [R, H], this direction's row order */
    float *h, *c;     /* state slots: slot 0 the initial state, slot k + 1 after segment k */
    char *ws;         /* the segments' workspaces, back to back */
    size_t ws_cap;
    size_t *ws_off;   /* per segment of the last forward: the sizes depend on the layer's input */
} rdir_t;

typedef struct rlayer {
    int64_t in;
    dnnl_memory_desc_t md[W_N];
    rprim_t re[W_N]; /* plain <-> md[k]: into the format for k < W_DL, out of it after */
    float *input;    /* [R, in] packed (dropout applied); layer 0: the op's x0 */
    rdir_t dir[2];
} rlayer_t;

struct stk__rnn_op {
    stk__rnn_desc_t d;
    cpu_ctx_t *c;
    int g, gb, nd; /* gates, bias gates (lbr GRU has 4), directions */
    rlayer_t *layers;
    shape_t cache[CACHE_MAX];
    int ncache;
    uint64_t tick;
    /* this call's packing */
    int64_t n, t, r, nseg, maxlen;
    int64_t *order, *len, *off, *rowseq, *rowt, *rev, *slot_of, *seg_of_step;
    seg_t *seg;
    float *x0;          /* packed input [R, input] */
    float *tmp[2];      /* plain (ldgoi) weights scratch */
    float *dout, *din;  /* backward: [R, max(in, D H)] */
    float *dyd, *dxa, *dxb;
    float *ds[4];       /* backward state ping-pong: h, h', c, c' [batch, H] */
    float *dhn_s, *dcn_s; /* one (layer, direction)'s dhn / dcn in sorted order */
    float *zero;
    int trained;
    uint64_t key, step;
    /* The state tensors ([L*D, sn, H]) and the dropout mask's element
     * index see this op's sequences as sbase.. of a batch of sn. */
    int64_t sn, sbase;
    /* Primitives run with a scratchpad of the op's own (user mode), so
     * parts can run side by side on their own streams. */
    dnnl_stream_t stream, own_stream;
    dnnl_primitive_attr_t attr;
    void *scratch;
    size_t scratch_cap;
    /* Batch splitting (see split_ok): parts, each a whole op of its own
     * for a slice of the batch; the dw of parts 1.. before the sum. */
    int np, split;
    struct stk__rnn_op *part[RNN_PARTS];
    float *pdw[RNN_PARTS];
    int64_t pb[RNN_PARTS + 1];
    char perr[RNN_PARTS][256];
};

#define DNNL_TRY(call)                                                                                 \
    do {                                                                                               \
        dnnl_status_t st_ = (call);                                                                    \
        if (st_ != dnnl_success) {                                                                     \
            rc = stk__error(STK_EBACKEND, "oneDNN rnn: %s: %s", #call, dnnl_status2str(st_));         \
            goto fail;                                                                                 \
        }                                                                                              \
    } while (0)

static void *zalloc(size_t bytes)
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
        if (!(op->scratch = zalloc(sz)))
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

static int rprim_run(stk__rnn_op_t *op, rprim_t *pr, void *const *ptrs)
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
static int shape_get(stk__rnn_op_t *op, const rlayer_t *ly, int64_t steps, int64_t n, int bwd, shape_t **out)
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

/* ---------------------------------------------------------------- plan */

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

static void core_destroy(stk__rnn_op_t *op)
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
        if (!((p) = zalloc(bytes)))                                                                    \
            goto nomem;                                                                                \
    } while (0)

/* An op for batches of up to d->batch; own_stream: on a stream of its
 * own (a part), else the context's. */
static int core_create(cpu_ctx_t *c, const stk__rnn_desc_t *d, int own_stream, stk__rnn_op_t **out)
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
    core_destroy(op);
    return rc;
}

/* ------------------------------------------------------------- packing */

/* Sorts the sequences by length (longest first, ties by index, so the
 * order is a function of the lengths alone) and lays out the packed rows,
 * the segments and the row of each element in its reversed sequence. */
static int pack(stk__rnn_op_t *op, int64_t n, int64_t t, const int64_t *lengths)
{
    if (n < 0 || n > op->d.batch || t < 0 || t > op->d.steps)
        return stk__error(-EINVAL, "rnn: batch %lld x %lld steps exceeds the plan's %lld x %lld", (long long)n,
                          (long long)t, (long long)op->d.batch, (long long)op->d.steps);
    for (int64_t i = 0; i < n; i++) {
        int64_t L = lengths ? lengths[i] : t;
        if (L < 0 || L > t)
            return stk__error(-EINVAL, "rnn: length %lld of sequence %lld is outside [0, %lld]", (long long)L,
                              (long long)i, (long long)t);
        /* insertion into the sorted prefix; n is a batch, small */
        int64_t j = i;
        while (j > 0 && op->len[j - 1] < L) {
            op->len[j] = op->len[j - 1];
            op->order[j] = op->order[j - 1];
            j--;
        }
        op->len[j] = L;
        op->order[j] = i;
    }
    op->n = n;
    op->t = t;
    op->maxlen = n > 0 ? op->len[0] : 0;
    int64_t r = 0, bs_prev = -1, k = -1, live = n;
    for (int64_t s = 0; s < op->maxlen; s++) {
        while (live > 0 && op->len[live - 1] <= s)
            live--;
        op->off[s] = r;
        if (live != bs_prev) {
            k++;
            op->seg[k] = (seg_t){.t0 = s, .steps = 0, .n = live};
            bs_prev = live;
        }
        op->seg[k].steps++;
        op->seg_of_step[s] = k;
        for (int64_t i = 0; i < live; i++) {
            op->rowseq[r + i] = op->order[i];
            op->rowt[r + i] = s;
        }
        r += live;
    }
    op->off[op->maxlen] = r;
    op->r = r;
    op->nseg = k + 1;
    for (int64_t i = 0; i < n; i++)
        op->slot_of[i] = op->len[i] > 0 ? op->seg_of_step[op->len[i] - 1] + 1 : 0;
    for (int64_t s = 0; s < op->maxlen; s++) {
        int64_t base = op->off[s], live_s = op->off[s + 1] - base;
        for (int64_t i = 0; i < live_s; i++)
            op->rev[base + i] = op->off[op->len[i] - 1 - s] + i;
    }
    return 0;
}

/* dst[row] = src[perm[row]] for rows of f floats (perm NULL: identity). */
static void rows_permute(int64_t r, int64_t f, const int64_t *perm, const float *src, float *dst)
{
#pragma omp parallel for if (r * f > PAR_MIN)
    for (int64_t i = 0; i < r; i++)
        memcpy(dst + i * f, src + (perm ? perm[i] : i) * f, (size_t)f * sizeof(float));
}

/* Dropout between layers over packed rows of f features: the element's
 * index is its place in the padded [n, t, f] tensor, so the mask does not
 * depend on how the batch was sorted. */
static void dropout_rows(const stk__rnn_op_t *op, int layer, float *x, int64_t f)
{
    float p = op->d.dropout, scale = 1.0f / (1.0f - p);
    uint64_t key = stk_rng_mix(op->key, (uint64_t)layer);
#pragma omp parallel for if (op->r * f > PAR_MIN)
    for (int64_t row = 0; row < op->r; row++) {
        uint64_t e0 = (uint64_t)(((op->sbase + op->rowseq[row]) * op->t + op->rowt[row]) * f);
        uint32_t w[4];
        uint64_t blk = UINT64_MAX;
        for (int64_t j = 0; j < f; j++) {
            uint64_t e = e0 + (uint64_t)j;
            if (e / 4 != blk) {
                blk = e / 4;
                stk_philox4x32(key, op->step, blk, w);
            }
            float u = (float)(w[e % 4] >> 8) * (1.0f / 16777216.0f);
            x[row * f + j] = u >= p ? x[row * f + j] * scale : 0.0f;
        }
    }
}

/* ------------------------------------------------------------- weights */

/* PyTorch's GRU gates are r, z, n; oneDNN's u (= z), r, o (= n). */
static const int GRU_PERM[3] = {1, 0, 2};

/* The plain (ldgoi) copy of a PyTorch weight [G*H, in] in oneDNN's gate
 * order: the weight itself for LSTM, a gate-permuted copy for GRU. */
static const float *to_dnnl_gates(const stk__rnn_op_t *op, const float *w, int64_t in, float *tmp)
{
    if (op->d.cell == STK__RNN_LSTM)
        return w;
    size_t blk = (size_t)(op->d.hidden * in);
    for (int g = 0; g < 3; g++)
        memcpy(tmp + (size_t)g * blk, w + (size_t)GRU_PERM[g] * blk, blk * sizeof(float));
    return tmp;
}

/* Converts (layer l, direction di)'s weights from the block into the
 * forward (bwd = 0) or backward (bwd = 1) formats, and the bias. */
static int weights_in(stk__rnn_op_t *op, int l, int di, const float *block, int bwd)
{
    rlayer_t *ly = &op->layers[l];
    rdir_t *dr = &ly->dir[di];
    int64_t h = op->d.hidden;
    size_t o[4];
    for (int k = 0; k < 4; k++)
        o[k] = stk__rnn_param_offset(&op->d, l, di, k, NULL);
    for (int k = 0; k < 2; k++) {
        const float *src = to_dnnl_gates(op, block + o[k], k == 0 ? ly->in : h, op->tmp[k]);
        void *ptrs[2] = {(void *)src, dr->w[(bwd ? W_BL : W_FL) + k]};
        int rc = rprim_run(op, &ly->re[(bwd ? W_BL : W_FL) + k], ptrs);
        if (rc < 0)
            return rc;
    }
    if (!bwd) {
        const float *bi = block + o[2], *bh = block + o[3];
        if (op->d.cell == STK__RNN_LSTM) {
            for (int64_t j = 0; j < 4 * h; j++)
                dr->bias[j] = bi[j] + bh[j];
        } else {
            for (int g = 0; g < 2; g++)
                for (int64_t j = 0; j < h; j++)
                    dr->bias[g * h + j] = bi[GRU_PERM[g] * h + j] + bh[GRU_PERM[g] * h + j];
            memcpy(dr->bias + 2 * h, bi + 2 * h, (size_t)h * sizeof(float));
            memcpy(dr->bias + 3 * h, bh + 2 * h, (size_t)h * sizeof(float));
        }
    }
    return 0;
}

/* Writes (l, di)'s accumulated weight gradients into the block dw. */
static int weights_out(stk__rnn_op_t *op, int l, int di, float *dw)
{
    rlayer_t *ly = &op->layers[l];
    rdir_t *dr = &ly->dir[di];
    int64_t h = op->d.hidden;
    size_t o[4];
    for (int k = 0; k < 4; k++)
        o[k] = stk__rnn_param_offset(&op->d, l, di, k, NULL);
    for (int k = 0; k < 2; k++) {
        int64_t in = k == 0 ? ly->in : h;
        float *dst = op->d.cell == STK__RNN_LSTM ? dw + o[k] : op->tmp[k];
        void *ptrs[2] = {dr->dw[k], dst};
        int rc = rprim_run(op, &ly->re[W_DL + k], ptrs);
        if (rc < 0)
            return rc;
        if (op->d.cell == STK__RNN_GRU) {
            size_t blk = (size_t)(h * in);
            for (int g = 0; g < 3; g++)
                memcpy(dw + o[k] + (size_t)GRU_PERM[g] * blk, op->tmp[k] + (size_t)g * blk, blk * sizeof(float));
        }
    }
    float *bi = dw + o[2], *bh = dw + o[3];
    if (op->d.cell == STK__RNN_LSTM) {
        memcpy(bi, dr->dbias, (size_t)(4 * h) * sizeof(float));
        memcpy(bh, dr->dbias, (size_t)(4 * h) * sizeof(float));
    } else {
        for (int g = 0; g < 2; g++) {
            memcpy(bi + GRU_PERM[g] * h, dr->dbias + g * h, (size_t)h * sizeof(float));
            memcpy(bh + GRU_PERM[g] * h, dr->dbias + g * h, (size_t)h * sizeof(float));
        }
        memcpy(bi + 2 * h, dr->dbias + 2 * h, (size_t)h * sizeof(float));
        memcpy(bh + 2 * h, dr->dbias + 3 * h, (size_t)h * sizeof(float));
    }
    return 0;
}

/* ------------------------------------------------------------- forward */

/* Gathers the sorted rows of an [L*D, n, H] state tensor's (l, di) slice
 * into dst (zeros when src is NULL). */
static void state_gather(const stk__rnn_op_t *op, const float *src, int l, int di, float *dst)
{
    int64_t h = op->d.hidden;
    if (!src) {
        memset(dst, 0, (size_t)(op->n * h) * sizeof(float));
        return;
    }
    const float *base = src + (size_t)(((l * op->nd + di) * op->sn + op->sbase) * h);
    for (int64_t i = 0; i < op->n; i++)
        memcpy(dst + i * h, base + op->order[i] * h, (size_t)h * sizeof(float));
}

/* Each sequence's final state from the state slots into an [L*D, n, H]
 * tensor's (l, di) slice. */
static void state_scatter(const stk__rnn_op_t *op, const float *slots, int l, int di, float *dst)
{
    int64_t h = op->d.hidden, nh = op->d.batch * h;
    float *base = dst + (size_t)(((l * op->nd + di) * op->sn + op->sbase) * h);
    for (int64_t i = 0; i < op->n; i++)
        memcpy(base + op->order[i] * h, slots + op->slot_of[i] * nh + i * h, (size_t)h * sizeof(float));
}

/* Runs one direction of one layer over the packed input x, segment by
 * segment; the initial state is already in slot 0. */
static int dir_forward(stk__rnn_op_t *op, rlayer_t *ly, rdir_t *dr, const float *x)
{
    int rc = 0, lstm = op->d.cell == STK__RNN_LSTM;
    int64_t h = op->d.hidden, nh = op->d.batch * h;
    size_t ws = 0;
    for (int64_t k = 0; k < op->nseg; k++) {
        shape_t *s;
        if ((rc = shape_get(op, ly, op->seg[k].steps, op->seg[k].n, 0, &s)) < 0)
            return rc;
        dr->ws_off[k] = ws;
        ws += (s->ws + 63) / 64 * 64;
    }
    if (ws > dr->ws_cap) {
        free(dr->ws);
        dr->ws_cap = 0;
        if (!(dr->ws = zalloc(ws)))
            return stk__error(-ENOMEM, "rnn: out of memory for a %zu-byte workspace", ws);
        dr->ws_cap = ws;
    }
    for (int64_t k = 0; k < op->nseg; k++) {
        const seg_t *sg = &op->seg[k];
        shape_t *s;
        if ((rc = shape_get(op, ly, sg->steps, sg->n, 0, &s)) < 0)
            return rc;
        int64_t row = op->off[sg->t0];
        void *p[10] = {(void *)(x + row * ly->in), dr->h + k * nh, dr->w[W_FL], dr->w[W_FI], dr->bias,
                       dr->y + row * h, dr->h + (k + 1) * nh, dr->ws + dr->ws_off[k],
                       lstm ? dr->c + k * nh : NULL, lstm ? dr->c + (k + 1) * nh : NULL};
        if ((rc = rprim_run(op, &s->fwd, p)) < 0)
            return rc;
    }
    return 0;
}

/* The forward of sequences sbase.. of a batch of sn (state tensors and
 * the dropout mask index that batch); a->x, y, lengths are this op's. */
static int core_forward(stk__rnn_op_t *op, int train, const stk__rnn_args_t *a, int64_t sn, int64_t sbase)
{
    int rc;
    op->trained = 0;
    if ((rc = pack(op, a->n, a->t, a->lengths)) < 0)
        return rc;
    op->sn = sn;
    op->sbase = sbase;
    op->key = a->key;
    op->step = a->step;
    int64_t h = op->d.hidden, dh = op->nd * h, in0 = op->d.input, r = op->r, t = op->t;
    int lstm = op->d.cell == STK__RNN_LSTM;
#pragma omp parallel for if (r * in0 > PAR_MIN)
    for (int64_t i = 0; i < r; i++)
        memcpy(op->x0 + i * in0, a->x + (op->rowseq[i] * t + op->rowt[i]) * in0, (size_t)in0 * sizeof(float));
    for (int l = 0; l < op->d.layers; l++) {
        rlayer_t *ly = &op->layers[l];
        for (int di = 0; di < op->nd; di++) {
            rdir_t *dr = &ly->dir[di];
            if ((rc = weights_in(op, l, di, a->w, 0)) < 0)
                return rc;
            state_gather(op, a->h0, l, di, dr->h);
            if (lstm)
                state_gather(op, a->c0, l, di, dr->c);
            const float *x = ly->input;
            if (di == 1) {
                rows_permute(r, ly->in, op->rev, ly->input, dr->xr);
                x = dr->xr;
            }
            if ((rc = dir_forward(op, ly, dr, x)) < 0)
                return rc;
            if (a->hn)
                state_scatter(op, dr->h, l, di, a->hn);
            if (lstm && a->cn)
                state_scatter(op, dr->c, l, di, a->cn);
        }
        /* the next layer's input, or the output: both directions side by side */
        float *yf = ly->dir[0].y, *yr = ly->dir[1].y;
        int last = l == op->d.layers - 1;
        float *next = last ? NULL : op->layers[l + 1].input;
#pragma omp parallel for if (r * dh > PAR_MIN)
        for (int64_t i = 0; i < r; i++) {
            float *dst = last ? a->y + (op->rowseq[i] * t + op->rowt[i]) * dh : next + i * dh;
            memcpy(dst, yf + i * h, (size_t)h * sizeof(float));
            if (op->nd == 2)
                memcpy(dst + h, yr + op->rev[i] * h, (size_t)h * sizeof(float));
        }
        if (!last && train && op->d.dropout > 0.0f)
            dropout_rows(op, l, next, dh);
    }
    /* zeros past each length */
    for (int64_t i = 0; i < op->n; i++) {
        int64_t seq = op->order[i];
        memset(a->y + (seq * t + op->len[i]) * dh, 0, (size_t)((t - op->len[i]) * dh) * sizeof(float));
    }
    op->trained = 1;
    return 0;
}

/* ------------------------------------------------------------ backward */

/* Backward of one direction: dy in this direction's row order, the
 * (sorted) dhn / dcn in op->dhn_s / dcn_s; dx out in the same row order;
 * dh0 / dc0 (sorted) left in op->ds[0] / ds[2]. Weight gradients
 * accumulate in the direction's dw buffers. */
static int dir_backward(stk__rnn_op_t *op, rlayer_t *ly, rdir_t *dr, const float *x, const float *dy, float *dx)
{
    int rc = 0, lstm = op->d.cell == STK__RNN_LSTM;
    int64_t h = op->d.hidden, nh = op->d.batch * h;
    float *dh = op->ds[0], *dh2 = op->ds[1], *dc = op->ds[2], *dc2 = op->ds[3];
    int64_t have = 0; /* rows of dh holding the next segment's diff_src_iter */
    for (int64_t k = op->nseg - 1; k >= 0; k--) {
        const seg_t *sg = &op->seg[k];
        shape_t *s;
        if ((rc = shape_get(op, ly, sg->steps, sg->n, 1, &s)) < 0)
            return rc;
        /* sequences that end in this segment start their gradient here */
        memcpy(dh + have * h, op->dhn_s + have * h, (size_t)((sg->n - have) * h) * sizeof(float));
        if (lstm)
            memcpy(dc + have * h, op->dcn_s + have * h, (size_t)((sg->n - have) * h) * sizeof(float));
        int64_t row = op->off[sg->t0];
        void *p[19] = {(void *)(x + row * ly->in),
                       dr->h + k * nh,
                       dr->w[W_BL],
                       dr->w[W_BI],
                       dr->bias,
                       dr->y + row * h,
                       dr->h + (k + 1) * nh,
                       dr->ws + dr->ws_off[k],
                       dx + row * ly->in,
                       dh2,
                       dr->dw[0],
                       dr->dw[1],
                       dr->dbias,
                       (void *)(dy + row * h),
                       dh,
                       lstm ? dr->c + k * nh : NULL,
                       lstm ? dr->c + (k + 1) * nh : NULL,
                       lstm ? dc2 : NULL,
                       lstm ? dc : NULL};
        if ((rc = rprim_run(op, &s->bwd, p)) < 0)
            return rc;
        float *tmp = dh;
        dh = dh2;
        dh2 = tmp;
        tmp = dc;
        dc = dc2;
        dc2 = tmp;
        have = sg->n;
    }
    /* sequences of length 0: the gradient of h0 is dhn's */
    memcpy(dh + have * h, op->dhn_s + have * h, (size_t)((op->n - have) * h) * sizeof(float));
    if (lstm)
        memcpy(dc + have * h, op->dcn_s + have * h, (size_t)((op->n - have) * h) * sizeof(float));
    if (dh != op->ds[0]) {
        memcpy(op->ds[0], dh, (size_t)(op->n * h) * sizeof(float));
        if (lstm)
            memcpy(op->ds[2], dc, (size_t)(op->n * h) * sizeof(float));
    }
    return 0;
}

static void state_scatter_sorted(const stk__rnn_op_t *op, const float *sorted, int l, int di, float *dst)
{
    int64_t h = op->d.hidden;
    float *base = dst + (size_t)(((l * op->nd + di) * op->sn + op->sbase) * h);
    for (int64_t i = 0; i < op->n; i++)
        memcpy(base + op->order[i] * h, sorted + i * h, (size_t)h * sizeof(float));
}

static int core_backward(stk__rnn_op_t *op, const stk__rnn_args_t *a)
{
    if (!op->trained)
        return stk__error(STK_ESTATE, "rnn: backward without a forward before it");
    if (a->n != op->n || a->t != op->t)
        return stk__error(-EINVAL, "rnn: backward of %lld x %lld, but the forward was %lld x %lld", (long long)a->n,
                          (long long)a->t, (long long)op->n, (long long)op->t);
    int rc;
    int64_t h = op->d.hidden, dh = op->nd * h, r = op->r, t = op->t;
    int lstm = op->d.cell == STK__RNN_LSTM;
    float *dout = op->dout, *din = op->din;
#pragma omp parallel for if (r * dh > PAR_MIN)
    for (int64_t i = 0; i < r; i++)
        memcpy(dout + i * dh, a->dy + (op->rowseq[i] * t + op->rowt[i]) * dh, (size_t)dh * sizeof(float));
    for (int l = op->d.layers - 1; l >= 0; l--) {
        rlayer_t *ly = &op->layers[l];
        int64_t in = ly->in;
        for (int di = 0; di < op->nd; di++) {
            rdir_t *dr = &ly->dir[di];
            if ((rc = weights_in(op, l, di, a->w, 1)) < 0)
                return rc;
            memset(dr->dw[0], 0, dnnl_memory_desc_get_size(&ly->md[W_DL]));
            memset(dr->dw[1], 0, dnnl_memory_desc_get_size(&ly->md[W_DI]));
            memset(dr->dbias, 0, (size_t)(op->gb * h) * sizeof(float));
            /* this direction's dy, in its own row order */
            for (int64_t i = 0; i < r; i++)
                memcpy(op->dyd + i * h, dout + (di ? op->rev[i] : i) * dh + di * h, (size_t)h * sizeof(float));
            state_gather(op, a->dhn, l, di, op->dhn_s);
            if (lstm)
                state_gather(op, a->dcn, l, di, op->dcn_s);
            const float *x = di ? dr->xr : ly->input;
            if ((rc = dir_backward(op, ly, dr, x, op->dyd, di ? op->dxb : op->dxa)) < 0)
                return rc;
            if (a->dh0)
                state_scatter_sorted(op, op->ds[0], l, di, a->dh0);
            if (lstm && a->dc0)
                state_scatter_sorted(op, op->ds[2], l, di, a->dc0);
            if ((rc = weights_out(op, l, di, a->dw)) < 0)
                return rc;
        }
        /* the gradient of this layer's input: both directions summed */
#pragma omp parallel for if (r * in > PAR_MIN)
        for (int64_t i = 0; i < r; i++) {
            float *d = din + i * in;
            const float *fa = op->dxa + i * in;
            if (op->nd == 2) {
                const float *fb = op->dxb + op->rev[i] * in;
                for (int64_t j = 0; j < in; j++)
                    d[j] = fa[j] + fb[j];
            } else {
                memcpy(d, fa, (size_t)in * sizeof(float));
            }
        }
        if (l > 0) {
            if (op->d.dropout > 0.0f)
                dropout_rows(op, l - 1, din, in);
            float *tmp = dout;
            dout = din;
            din = tmp;
        }
    }
    if (a->dx) {
        int64_t in0 = op->d.input;
        memset(a->dx, 0, (size_t)(op->n * t * in0) * sizeof(float));
#pragma omp parallel for if (r * in0 > PAR_MIN)
        for (int64_t i = 0; i < r; i++)
            memcpy(a->dx + (op->rowseq[i] * t + op->rowt[i]) * in0, din + i * in0, (size_t)in0 * sizeof(float));
    }
    return 0;
}

/* ------------------------------------------------------ batch splitting */

/* With OpenMP threads, oneDNN's lstm splits every step's GEMM and cell
 * among them: a handful of barriers per step and layer, hundreds per
 * training step, each a sleep and a wake-up under the passive wait policy
 * and a lost time slice whenever the machine is shared. Sequences are
 * independent, so instead the batch is cut into one slice per thread, each
 * run single-threaded end to end by a part (a whole op of its own, with
 * its own primitives, stream and scratchpad): the threads meet once per
 * forward and once per backward. Results differ from the unsplit op's by
 * float rounding only (GEMM blocking; the weight gradient is the sum of
 * the parts'); the dropout mask is indexed by the element's place in the
 * whole batch, so it is the same. */

static size_t param_count(const stk__rnn_desc_t *d)
{
    size_t cnt = 0, off = stk__rnn_param_offset(d, d->layers - 1, d->bidirectional ? 1 : 0, 3, &cnt);
    return off + cnt;
}

/* The most sequences one part holds when np share a batch: an even
 * share and a quarter more, room to even out the work of ragged lengths. */
static int64_t part_cap(int64_t batch, int np)
{
    int64_t share = (batch + np - 1) / np, cap = share + share / 4 + 1;
    return cap < batch ? cap : batch;
}

/* How many parts this call is split into (0: none) and their sequence
 * ranges in op->pb: contiguous slices of about equal work (the sum of
 * their lengths). A call the parts cannot take (bad sizes or lengths,
 * nested in a parallel region, one thread) goes to the whole op, which
 * also reports the errors. */
static int split_plan(stk__rnn_op_t *op, const stk__rnn_args_t *a)
{
    int np = op->np, nt = omp_get_max_threads();
    if (np > nt)
        np = nt;
    if (np < 2 || omp_in_parallel() || a->n > op->d.batch || a->t < 1 || a->t > op->d.steps ||
        a->n < (int64_t)np * PART_MIN)
        return 0;
    int64_t n = a->n, cap = op->part[0]->d.batch, total = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t L = a->lengths ? a->lengths[i] : a->t;
        if (L < 0 || L > a->t)
            return 0;
        total += L + 1; /* + 1: a sequence costs its copies even when empty */
    }
#define WORK(i) ((a->lengths ? a->lengths[i] : a->t) + 1)
    int64_t k = 0, acc = 0; /* acc: the work of sequences before k */
    op->pb[0] = 0;
    for (int p = 0; p < np - 1; p++) {
        int64_t lo = op->pb[p] + 1, hi = op->pb[p] + cap, left = np - 1 - p;
        if (lo < n - left * cap)
            lo = n - left * cap;
        if (hi > n - left)
            hi = n - left;
        if (lo > hi)
            return 0;
        int64_t target = total * (p + 1) / np;
        while (k < lo)
            acc += WORK(k), k++;
        while (k < hi && acc + WORK(k) <= target)
            acc += WORK(k), k++;
        if (k < hi && acc < target && acc + WORK(k) - target < target - acc)
            acc += WORK(k), k++;
        op->pb[p + 1] = k;
    }
#undef WORK
    op->pb[np] = n;
    if (n - op->pb[np - 1] < 1 || n - op->pb[np - 1] > cap)
        return 0;
    return np;
}

/* Runs the parts side by side: forward (bwd = 0) or backward. */
static int run_parts(stk__rnn_op_t *op, int np, int bwd, int train, const stk__rnn_args_t *a)
{
    int rcs[RNN_PARTS] = {0};
    int64_t t = a->t, in0 = op->d.input, dh = op->nd * op->d.hidden;
#pragma omp parallel for num_threads(np) schedule(static, 1)
    for (int p = 0; p < np; p++) {
        stk__rnn_op_t *q = op->part[p];
        int64_t b0 = op->pb[p];
        stk__rnn_args_t b = *a;
        b.n = op->pb[p + 1] - b0;
        b.lengths = a->lengths ? a->lengths + b0 : NULL;
        b.x = a->x ? a->x + b0 * t * in0 : NULL;
        b.y = a->y ? a->y + b0 * t * dh : NULL;
        b.dy = a->dy ? a->dy + b0 * t * dh : NULL;
        b.dx = a->dx ? a->dx + b0 * t * in0 : NULL;
        b.dw = p == 0 ? a->dw : op->pdw[p];
        int rc = bwd ? core_backward(q, &b) : core_forward(q, train, &b, a->n, b0);
        if (rc < 0)
            snprintf(op->perr[p], sizeof(op->perr[p]), "%s", stk_error_message());
        rcs[p] = rc;
    }
    for (int p = 0; p < np; p++)
        if (rcs[p] < 0)
            return stk__error(rcs[p], "%s", op->perr[p]);
    return 0;
}

int stk__cpu_rnn_forward(void *ctx, stk__rnn_op_t *op, int train, const stk__rnn_args_t *a)
{
    (void)ctx;
    op->split = 0;
    op->trained = 0;
    int np = split_plan(op, a);
    if (np == 0)
        return core_forward(op, train, a, a->n, 0);
    int rc = run_parts(op, np, 0, train, a);
    if (rc < 0)
        return rc;
    op->n = a->n;
    op->t = a->t;
    op->split = np;
    op->trained = 1;
    return 0;
}

int stk__cpu_rnn_backward(void *ctx, stk__rnn_op_t *op, const stk__rnn_args_t *a)
{
    (void)ctx;
    if (!op->split)
        return core_backward(op, a);
    if (!op->trained)
        return stk__error(STK_ESTATE, "rnn: backward without a forward before it");
    if (a->n != op->n || a->t != op->t)
        return stk__error(-EINVAL, "rnn: backward of %lld x %lld, but the forward was %lld x %lld", (long long)a->n,
                          (long long)a->t, (long long)op->n, (long long)op->t);
    int np = op->split, rc = run_parts(op, np, 1, 0, a);
    if (rc < 0)
        return rc;
    int64_t nw = (int64_t)param_count(&op->d);
    float *dw = a->dw;
#pragma omp parallel for num_threads(np) schedule(static)
    for (int64_t i = 0; i < nw; i++) {
        float v = dw[i];
        for (int p = 1; p < np; p++)
            v += op->pdw[p][i];
        dw[i] = v;
    }
    return 0;
}

int stk__cpu_rnn_parts(const stk__rnn_op_t *op)
{
    return op->split;
}

void stk__cpu_rnn_destroy(void *ctx, stk__rnn_op_t *op)
{
    (void)ctx;
    if (!op)
        return;
    for (int p = 0; p < RNN_PARTS; p++) {
        core_destroy(op->part[p]);
        free(op->pdw[p]);
    }
    core_destroy(op);
}

int stk__cpu_rnn_create(void *ctx, const stk__rnn_desc_t *d, stk__rnn_op_t **out)
{
    stk__rnn_op_t *op;
    int rc = core_create(ctx, d, 0, &op);
    if (rc < 0)
        return rc;
    int np = omp_in_parallel() ? 1 : omp_get_max_threads();
    if (np > RNN_PARTS)
        np = RNN_PARTS;
    if (np > d->batch / PART_MIN)
        np = (int)(d->batch / PART_MIN);
    if (np >= 2) {
        stk__rnn_desc_t pd = *d;
        pd.batch = part_cap(d->batch, np);
        size_t nw = param_count(d);
        for (int p = 0; p < np; p++) {
            if ((rc = core_create(ctx, &pd, 1, &op->part[p])) < 0)
                goto fail;
            if (p > 0 && !(op->pdw[p] = zalloc(nw * sizeof(float)))) {
                rc = stk__error(-ENOMEM, "rnn: out of memory for a part's weight gradient");
                goto fail;
            }
        }
        op->np = np;
    }
    *out = op;
    return 0;
fail:
    stk__cpu_rnn_destroy(ctx, op);
    return rc;
}
