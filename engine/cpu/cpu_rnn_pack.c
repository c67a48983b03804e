/* SPDX-License-Identifier: MIT */
/* CPU backend, recurrent stacks (see cpu_rnn.h): the packed layout. A
 * call's sorting and packing of its sequences, and the moves between the
 * packed, sorted rows and the caller's padded tensors and states (with
 * dropout, whose mask is indexed in the caller's layout). Separate from
 * the passes because it is pure bookkeeping over op's index arrays: no
 * oneDNN in it. */
#include "cpu_rnn.h"

#include <errno.h>
#include <string.h>

#include "stoker/common.h"


/* Sorts the sequences by length (longest first, ties by index, so the
 * order is a function of the lengths alone) and lays out the packed rows,
 * the segments and the row of each element in its reversed sequence. */
int stk__cpu_rnn_pack(stk__rnn_op_t *op, int64_t n, int64_t t, const int64_t *lengths)
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
void stk__cpu_rnn_rows_permute(int64_t r, int64_t f, const int64_t *perm, const float *src, float *dst)
{
#pragma omp parallel for if (r * f > PAR_MIN)
    for (int64_t i = 0; i < r; i++)
        memcpy(dst + i * f, src + (perm ? perm[i] : i) * f, (size_t)f * sizeof(float));
}

/* Dropout between layers over packed rows of f features: the element's
 * index is its place in the padded [n, t, f] tensor, so the mask does not
 * depend on how the batch was sorted. */
void stk__cpu_rnn_dropout_rows(const stk__rnn_op_t *op, int layer, float *x, int64_t f)
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

/* -------------------------------------------------------------- states */

/* Gathers the sorted rows of an [L*D, n, H] state tensor's (l, di) slice
 * into dst (zeros when src is NULL). */
void stk__cpu_rnn_state_gather(const stk__rnn_op_t *op, const float *src, int l, int di, float *dst)
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
void stk__cpu_rnn_state_scatter(const stk__rnn_op_t *op, const float *slots, int l, int di, float *dst)
{
    int64_t h = op->d.hidden, nh = op->d.batch * h;
    float *base = dst + (size_t)(((l * op->nd + di) * op->sn + op->sbase) * h);
    for (int64_t i = 0; i < op->n; i++)
        memcpy(base + op->order[i] * h, slots + op->slot_of[i] * nh + i * h, (size_t)h * sizeof(float));
}

void stk__cpu_rnn_state_scatter_sorted(const stk__rnn_op_t *op, const float *sorted, int l, int di, float *dst)
{
    int64_t h = op->d.hidden;
    float *base = dst + (size_t)(((l * op->nd + di) * op->sn + op->sbase) * h);
    for (int64_t i = 0; i < op->n; i++)
        memcpy(base + op->order[i] * h, sorted + i * h, (size_t)h * sizeof(float));
}
