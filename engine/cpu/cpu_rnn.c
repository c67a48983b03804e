/* SPDX-License-Identifier: MIT */
/* CPU backend, recurrent stacks: the forward and backward passes of one
 * op over a whole batch, layer by layer and direction by direction, and
 * the weights' conversions between PyTorch's layout and the primitives'.
 * The design (sorting, packing, segments) is described in cpu_rnn.h; the
 * plan is in cpu_rnn_plan.c, the packing in cpu_rnn_pack.c, and the batch
 * splitting with the backend's entry points in cpu_rnn_split.c. */
#include "cpu_rnn.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <oneapi/dnnl/dnnl.h>

#include "stoker/common.h"

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
        int rc = stk__cpu_rnn_prim_run(op, &ly->re[(bwd ? W_BL : W_FL) + k], ptrs);
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
        int rc = stk__cpu_rnn_prim_run(op, &ly->re[W_DL + k], ptrs);
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


/* Runs one direction of one layer over the packed input x, segment by
 * segment; the initial state is already in slot 0. */
static int dir_forward(stk__rnn_op_t *op, rlayer_t *ly, rdir_t *dr, const float *x)
{
    int rc = 0, lstm = op->d.cell == STK__RNN_LSTM;
    int64_t h = op->d.hidden, nh = op->d.batch * h;
    size_t ws = 0;
    for (int64_t k = 0; k < op->nseg; k++) {
        shape_t *s;
        if ((rc = stk__cpu_rnn_shape_get(op, ly, op->seg[k].steps, op->seg[k].n, 0, &s)) < 0)
            return rc;
        dr->ws_off[k] = ws;
        ws += (s->ws + 63) / 64 * 64;
    }
    if (ws > dr->ws_cap) {
        free(dr->ws);
        dr->ws_cap = 0;
        if (!(dr->ws = stk__cpu_rnn_zalloc(ws)))
            return stk__error(-ENOMEM, "rnn: out of memory for a %zu-byte workspace", ws);
        dr->ws_cap = ws;
    }
    for (int64_t k = 0; k < op->nseg; k++) {
        const seg_t *sg = &op->seg[k];
        shape_t *s;
        if ((rc = stk__cpu_rnn_shape_get(op, ly, sg->steps, sg->n, 0, &s)) < 0)
            return rc;
        int64_t row = op->off[sg->t0];
        void *p[10] = {(void *)(x + row * ly->in), dr->h + k * nh, dr->w[W_FL], dr->w[W_FI], dr->bias,
                       dr->y + row * h, dr->h + (k + 1) * nh, dr->ws + dr->ws_off[k],
                       lstm ? dr->c + k * nh : NULL, lstm ? dr->c + (k + 1) * nh : NULL};
        if ((rc = stk__cpu_rnn_prim_run(op, &s->fwd, p)) < 0)
            return rc;
    }
    return 0;
}

/* The forward of sequences sbase.. of a batch of sn (state tensors and
 * the dropout mask index that batch); a->x, y, lengths are this op's. */
int stk__cpu_rnn_core_forward(stk__rnn_op_t *op, int train, const stk__rnn_args_t *a, int64_t sn, int64_t sbase)
{
    int rc;
    op->trained = 0;
    if ((rc = stk__cpu_rnn_pack(op, a->n, a->t, a->lengths)) < 0)
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
            stk__cpu_rnn_state_gather(op, a->h0, l, di, dr->h);
            if (lstm)
                stk__cpu_rnn_state_gather(op, a->c0, l, di, dr->c);
            const float *x = ly->input;
            if (di == 1) {
                stk__cpu_rnn_rows_permute(r, ly->in, op->rev, ly->input, dr->xr);
                x = dr->xr;
            }
            if ((rc = dir_forward(op, ly, dr, x)) < 0)
                return rc;
            if (a->hn)
                stk__cpu_rnn_state_scatter(op, dr->h, l, di, a->hn);
            if (lstm && a->cn)
                stk__cpu_rnn_state_scatter(op, dr->c, l, di, a->cn);
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
            stk__cpu_rnn_dropout_rows(op, l, next, dh);
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
        if ((rc = stk__cpu_rnn_shape_get(op, ly, sg->steps, sg->n, 1, &s)) < 0)
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
        if ((rc = stk__cpu_rnn_prim_run(op, &s->bwd, p)) < 0)
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


int stk__cpu_rnn_core_backward(stk__rnn_op_t *op, const stk__rnn_args_t *a)
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
            stk__cpu_rnn_state_gather(op, a->dhn, l, di, op->dhn_s);
            if (lstm)
                stk__cpu_rnn_state_gather(op, a->dcn, l, di, op->dcn_s);
            const float *x = di ? dr->xr : ly->input;
            if ((rc = dir_backward(op, ly, dr, x, op->dyd, di ? op->dxb : op->dxa)) < 0)
                return rc;
            if (a->dh0)
                stk__cpu_rnn_state_scatter_sorted(op, op->ds[0], l, di, a->dh0);
            if (lstm && a->dc0)
                stk__cpu_rnn_state_scatter_sorted(op, op->ds[2], l, di, a->dc0);
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
                stk__cpu_rnn_dropout_rows(op, l - 1, din, in);
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
