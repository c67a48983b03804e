/* SPDX-License-Identifier: MIT */
/* Weighted sampling. With replacement: a Vose alias table, built once, so the
 * draw at any position is O(1) from Philox keyed by (seed, epoch) with the
 * position as stream. Without replacement: sequential draws proportional to
 * the remaining weights (what torch.multinomial does), O(log n) each on a
 * sum tree. */
#include "sampler_internal.h"

#include <errno.h>
#include <stdlib.h>

/* Orders must be equal on every machine, so no product here ever feeds an
 * addition: a fused multiply-add (which GCC may emit for gnu11 on FMA
 * targets such as aarch64) rounds once instead of twice and would move a
 * draw across a boundary. Products are only stored or compared; sums are
 * plain IEEE additions in a fixed order. (Checked: no vfmadd in this file
 * built with -O3 -march=haswell.) */

void stk__sampler_weighted_free(stk_sampler_t *s)
{
    free(s->weights);
    free(s->tree);
    free(s->alias_prob);
    free(s->alias_idx);
    free(s->alias_alt);
    s->weights = s->tree = s->alias_prob = NULL;
    s->alias_idx = s->alias_alt = NULL;
}

int stk__sampler_alias_build(stk_sampler_t *s, const double *w)
{
    uint64_t m = 0;
    double sum = 0.0;
    for (uint64_t i = 0; i < s->n; i++) {
        if (w[i] > 0.0) {
            m++;
            sum += w[i];
        }
    }
    /* The caller has checked that m > 0 and sum is finite. */
    s->alias_m = m;
    s->alias_prob = malloc(m * sizeof(double));
    s->alias_idx = malloc(m * sizeof(uint64_t));
    s->alias_alt = malloc(m * sizeof(uint64_t));
    uint64_t *work = malloc(m * sizeof(uint64_t));
    if (!s->alias_prob || !s->alias_idx || !s->alias_alt || !work) {
        free(work);
        return stk__error(-ENOMEM, "sampler: alias table for %llu weights", (unsigned long long)m);
    }

    /* Scaled so that the mean column holds exactly 1. */
    double *p = s->alias_prob;
    uint64_t k = 0;
    for (uint64_t i = 0; i < s->n; i++) {
        if (w[i] > 0.0) {
            s->alias_idx[k] = i;
            s->alias_alt[k] = i;
            p[k] = w[i] / sum * (double)m;
            k++;
        }
    }

    /* Vose: columns below 1 are topped up by one above 1. The two work lists
     * share one array (small from the front, large from the back): every
     * column sits in at most one of them. */
    uint64_t ns = 0, nl = 0;
    for (k = 0; k < m; k++) {
        if (p[k] < 1.0)
            work[ns++] = k;
        else
            work[m - 1 - nl++] = k;
    }
    while (ns > 0 && nl > 0) {
        uint64_t sm = work[--ns];
        uint64_t lg = work[m - nl];
        nl--;
        s->alias_alt[sm] = s->alias_idx[lg];
        p[lg] = (p[lg] + p[sm]) - 1.0;
        if (p[lg] < 1.0)
            work[ns++] = lg;
        else
            work[m - 1 - nl++] = lg;
    }
    /* What is left is 1 up to rounding; its alternative is itself. */
    while (nl > 0)
        p[work[m - nl--]] = 1.0;
    while (ns > 0)
        p[work[--ns]] = 1.0;
    free(work);
    return 0;
}

uint64_t stk__sampler_alias_draw(const stk_sampler_t *s, uint64_t pos)
{
    stk_rng_t r;
    stk_rng_init(&r, s->key, pos);
    uint64_t col = stk_rng_below(&r, s->alias_m);
    double u = stk_rng_uniform_f64(&r);
    return u < s->alias_prob[col] ? s->alias_idx[col] : s->alias_alt[col];
}

int stk__sampler_tree_alloc(stk_sampler_t *s, const double *w)
{
    uint64_t total = 0, size = s->n;
    unsigned l = 0;
    for (;;) {
        s->tree_off[l] = total;
        s->tree_size[l] = size;
        total += size;
        l++;
        if (size == 1)
            break;
        size = size / STK__TREE_FAN + (size % STK__TREE_FAN != 0);
    }
    s->tree_levels = l;
    s->weights = malloc(s->n * sizeof(double));
    s->tree = malloc(total * sizeof(double));
    if (!s->weights || !s->tree)
        return stk__error(-ENOMEM, "sampler: sum tree for %llu weights", (unsigned long long)s->n);
    for (uint64_t i = 0; i < s->n; i++)
        s->weights[i] = w[i];
    return 0;
}

/* Node j of level l as the sum of its children, always in the same order,
 * so that it is the same number however often it is recomputed. */
static void tree_sum(stk_sampler_t *s, unsigned l, uint64_t j)
{
    const double *c = s->tree + s->tree_off[l - 1];
    uint64_t first = j * STK__TREE_FAN, end = first + STK__TREE_FAN;
    if (end > s->tree_size[l - 1])
        end = s->tree_size[l - 1];
    double sum = 0.0;
    for (uint64_t i = first; i < end; i++)
        sum += c[i];
    s->tree[s->tree_off[l] + j] = sum;
}

/* A 16-ary tree rather than a binary one: a draw reads a few cache lines on
 * each of log16(n) levels instead of one scattered node on each of log2(n),
 * which is what the time goes into for large n. */
void stk__sampler_tree_draw(stk_sampler_t *s)
{
    double *t = s->tree;
    const unsigned top = s->tree_levels - 1;
    for (uint64_t i = 0; i < s->n; i++)
        t[i] = s->weights[i];
    for (unsigned l = 1; l <= top; l++)
        for (uint64_t j = 0; j < s->tree_size[l]; j++)
            tree_sum(s, l, j);

    stk_rng_t r;
    stk_rng_init(&r, s->key, 0);
    for (uint64_t d = 0; d < s->len; d++) {
        /* The target is only compared, never added to, and nodes are
         * recomputed from their children rather than decremented, so no
         * error piles up over the draws. A node with a positive sum has a
         * positive child; falling back to the last positive child when
         * rounding leaves the target past them all always ends on a leaf
         * not yet drawn. */
        double target = stk_rng_uniform_f64(&r) * t[s->tree_off[top]];
        double base = 0.0;
        uint64_t j = 0;
        for (unsigned l = top; l > 0; l--) {
            const double *c = t + s->tree_off[l - 1];
            uint64_t first = j * STK__TREE_FAN, end = first + STK__TREE_FAN;
            if (end > s->tree_size[l - 1])
                end = s->tree_size[l - 1];
            uint64_t pick = UINT64_MAX, last_pos = first;
            double last_base = base;
            for (uint64_t i = first; i < end; i++) {
                if (c[i] > 0.0) {
                    double mid = base + c[i];
                    last_pos = i;
                    last_base = base;
                    if (target < mid) {
                        pick = i;
                        break;
                    }
                    base = mid;
                }
            }
            if (pick == UINT64_MAX) {
                pick = last_pos;
                base = last_base;
            }
            j = pick;
        }
        s->order[d] = j;
        t[j] = 0.0;
        for (unsigned l = 1; l <= top; l++) {
            j /= STK__TREE_FAN;
            tree_sum(s, l, j);
        }
    }
}
