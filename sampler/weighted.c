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
    uint64_t leaves = 1;
    while (leaves < s->n)
        leaves <<= 1;
    s->tree_leaves = leaves;
    s->weights = malloc(s->n * sizeof(double));
    s->tree = malloc(2 * leaves * sizeof(double));
    if (!s->weights || !s->tree)
        return stk__error(-ENOMEM, "sampler: sum tree for %llu weights", (unsigned long long)s->n);
    for (uint64_t i = 0; i < s->n; i++)
        s->weights[i] = w[i];
    return 0;
}

void stk__sampler_tree_draw(stk_sampler_t *s)
{
    const uint64_t leaves = s->tree_leaves;
    double *t = s->tree;
    for (uint64_t i = 0; i < leaves; i++)
        t[leaves + i] = i < s->n ? s->weights[i] : 0.0;
    for (uint64_t k = leaves - 1; k >= 1; k--)
        t[k] = t[2 * k] + t[2 * k + 1];

    stk_rng_t r;
    stk_rng_init(&r, s->key, 0);
    for (uint64_t d = 0; d < s->len; d++) {
        /* The target is only compared, never added to, and each node is
         * recomputed from its children rather than decremented, so no error
         * piles up over the draws. A node with positive sum always has a
         * positive child; stepping into one whenever the other is empty
         * ends on a leaf not yet drawn, whatever the rounding. */
        double target = stk_rng_uniform_f64(&r) * t[1];
        double base = 0.0;
        uint64_t k = 1;
        while (k < leaves) {
            double l = t[2 * k], rt = t[2 * k + 1];
            double mid = base + l;
            if (rt <= 0.0 || (l > 0.0 && target < mid)) {
                k = 2 * k;
            } else {
                base = mid;
                k = 2 * k + 1;
            }
        }
        s->order[d] = k - leaves;
        t[k] = 0.0;
        for (k >>= 1; k >= 1; k >>= 1)
            t[k] = t[2 * k] + t[2 * k + 1];
    }
}
