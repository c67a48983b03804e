/* SPDX-License-Identifier: MIT */
/* The sampler object shared by sampler.c (kinds, cursor, random access) and
 * weighted.c (alias table and sum tree). Not installed. */
#ifndef STOKER_SAMPLER_INTERNAL_H
#define STOKER_SAMPLER_INTERNAL_H

#include "internal.h"
#include "stoker/sampler.h"

#define STK__TREE_FAN 16
#define STK__TREE_MAX_LEVELS 18 /* 16^17 > 2^64 */

struct stk_sampler {
    stk_sampler_kind_t kind;
    uint64_t n;      /* dataset_len */
    uint64_t len;    /* indices per epoch (for this rank) */
    uint64_t seed;
    uint64_t epoch;
    uint64_t key;    /* Philox key of the current epoch */
    uint64_t cursor; /* next position handed out by stk_sampler_next */
    int drawn;       /* order holds epoch's draw (set_epoch again need not redo it) */
    int replacement;
    uint32_t rank, world;
    int shuffle;

    /* The epoch's order where it has to be materialized: RANDOM without
     * replacement, SUBSET_RANDOM, WEIGHTED without replacement (len entries,
     * possibly more as scratch) and DISTRIBUTED with shuffle (the n-entry
     * permutation every rank shares). NULL where get() computes directly. */
    uint64_t *order;
    /* The same for RANDOM and DISTRIBUTED over n <= 2^32 indices, in half
     * the memory (then order is NULL): the first epoch of a 60k data set
     * touches 240 KB, not 480, and shuffles faster. */
    uint32_t *order32;
    uint64_t *subset; /* SUBSET_RANDOM: the caller's indices, copied */

    /* WEIGHTED without replacement: the weights and a 16-ary sum tree over
     * them, one level after another in `tree` (level 0 the leaves, the last
     * one the root); node j of level l sums nodes 16j.. of level l - 1. */
    double *weights;
    double *tree;
    unsigned tree_levels;
    uint64_t tree_off[STK__TREE_MAX_LEVELS];
    uint64_t tree_size[STK__TREE_MAX_LEVELS];

    /* WEIGHTED with replacement: Vose alias table over the m entries of
     * positive weight (zero weights are left out, so never drawn). */
    uint64_t alias_m;
    double *alias_prob;
    uint64_t *alias_idx; /* column -> dataset index */
    uint64_t *alias_alt; /* column -> alternative dataset index */
};

/* Builds the alias table from cfg weights (validated by the caller). */
int stk__sampler_alias_build(stk_sampler_t *s, const double *w);
/* Draw number pos of the epoch keyed by s->key, O(1). */
uint64_t stk__sampler_alias_draw(const stk_sampler_t *s, uint64_t pos);
/* Allocates the sum tree for n weights (copied into s->weights). */
int stk__sampler_tree_alloc(stk_sampler_t *s, const double *w);
/* Fills s->order[0, len) with sequential draws without replacement. */
void stk__sampler_tree_draw(stk_sampler_t *s);
void stk__sampler_weighted_free(stk_sampler_t *s);

/* Batches over a sampler (batch.c), bucketed by length when bucket is set
 * (bucket.c). */
typedef struct stk__bucket stk__bucket_t;
struct stk_batch_sampler {
    stk_sampler_t *sampler; /* not owned */
    uint64_t batch_size;
    int drop_last;
    uint64_t len;    /* batches per epoch */
    uint64_t cursor; /* next batch handed out by next() */
    stk__bucket_t *bucket; /* NULL: plain consecutive batches */
};

/* Draws the bucketed batches of the sampler's current epoch (already
 * selected); 0, STK_ECONFIG for an index without a length. */
int stk__bucket_build(stk_batch_sampler_t *b, uint64_t epoch);
/* Batch k (< b->len) of the epoch into out; *n its size. */
int stk__bucket_get(const stk_batch_sampler_t *b, uint64_t k, uint64_t *out, size_t *n);
void stk__bucket_free(stk__bucket_t *k);

#endif
