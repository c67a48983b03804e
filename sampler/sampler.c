/* SPDX-License-Identifier: MIT */
/* Index samplers: sequential, random (with or without replacement), subset,
 * weighted and PyTorch's DistributedSampler. Every random choice comes from
 * the Philox generator in common/ (stk_rng_*), keyed by stk_rng_mix of
 * (seed, epoch): an order is a pure function of (seed, epoch, rank, world
 * size), the same on any machine. Permutations are forward Fisher–Yates with
 * stk_rng_below (unbiased), materialized once per epoch so that get() is
 * O(1); draws with replacement are computed at each position directly. */
#include "sampler_internal.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

/* Separates sampler draws from other users of the same seed (augmentation
 * keys (seed, epoch, index) with stk_rng_mix too). ASCII "sampler". */
#define SAMPLER_DOMAIN 0x73616d706c6572ull

/* Keeps n * 8-byte allocations from overflowing size_t. */
#define MAX_ENTRIES ((uint64_t)(SIZE_MAX / sizeof(uint64_t) / 2))

typedef unsigned long long ull;

void stk_sampler_config_default(stk_sampler_config_t *cfg)
{
    if (!cfg)
        return;
    *cfg = (stk_sampler_config_t){
        .kind = STK_SAMPLER_SEQUENTIAL,
        .world_size = 1,
    };
}

/* Forward Fisher–Yates over a[0, n), stopping once the first `count`
 * entries are final. Each step draws from the same stream position whatever
 * `count` is, so a shorter order is a prefix of the full permutation. */
#define SHUFFLE_PREFIX(name, T)                                               \
    static void name(stk_rng_t *r, T *a, uint64_t n, uint64_t count)          \
    {                                                                         \
        uint64_t steps = count < n ? count : n - 1;                           \
        for (uint64_t i = 0; i < steps; i++) {                                \
            uint64_t j = i + stk_rng_below(r, n - i);                         \
            T t = a[i];                                                       \
            a[i] = a[j];                                                      \
            a[j] = t;                                                         \
        }                                                                     \
    }
SHUFFLE_PREFIX(shuffle_prefix, uint64_t)
SHUFFLE_PREFIX(shuffle_prefix32, uint32_t)

/* a[0, n) = 0, 1, ..., n - 1, then its first count entries shuffled. */
static void permute(stk_rng_t *r, uint64_t *a, uint32_t *a32, uint64_t n, uint64_t count)
{
    if (a32) {
        for (uint64_t i = 0; i < n; i++)
            a32[i] = (uint32_t)i;
        shuffle_prefix32(r, a32, n, count);
    } else {
        for (uint64_t i = 0; i < n; i++)
            a[i] = i;
        shuffle_prefix(r, a, n, count);
    }
}

/* Draws the epoch's order into s->order where one is kept. */
static void materialize(stk_sampler_t *s)
{
    stk_rng_t r;
    switch (s->kind) {
    case STK_SAMPLER_RANDOM:
        if (s->replacement)
            return;
        /* num_samples beyond n chains fresh permutations, as torch's
         * RandomSampler does: round k draws from stream k. The buffer is
         * rounded up to whole rounds, so the last one shuffles in place. */
        for (uint64_t base = 0, round = 0; base < s->len; base += s->n, round++) {
            stk_rng_init(&r, s->key, round);
            permute(&r, s->order ? s->order + base : NULL, s->order32 ? s->order32 + base : NULL,
                    s->n, s->len - base);
        }
        return;
    case STK_SAMPLER_SUBSET_RANDOM:
        /* Shuffling a copy of the subset gives indices[perm] for the very
         * permutation perm that shuffling 0..k-1 would give. */
        for (uint64_t i = 0; i < s->len; i++)
            s->order[i] = s->subset[i];
        stk_rng_init(&r, s->key, 0);
        shuffle_prefix(&r, s->order, s->len, s->len);
        return;
    case STK_SAMPLER_WEIGHTED:
        if (!s->replacement)
            stk__sampler_tree_draw(s);
        return;
    case STK_SAMPLER_DISTRIBUTED:
        if (!s->shuffle)
            return;
        /* One permutation of the whole data set, the same on every rank
         * (the key does not involve the rank). */
        stk_rng_init(&r, s->key, 0);
        permute(&r, s->order, s->order32, s->n, s->n);
        return;
    case STK_SAMPLER_SEQUENTIAL:
        return;
    }
}

static int check_weights(const stk_sampler_config_t *cfg, uint64_t *positive)
{
    if (!cfg->weights)
        return stk__error(STK_ECONFIG, "sampler: weights is NULL (WEIGHTED needs dataset_len weights)");
    uint64_t pos = 0;
    double sum = 0.0;
    for (uint64_t i = 0; i < cfg->dataset_len; i++) {
        double w = cfg->weights[i];
        if (isnan(w) || isinf(w) || w < 0.0)
            return stk__error(STK_ECONFIG, "sampler: weights[%llu] = %g (must be finite and >= 0)", (ull)i, w);
        if (w > 0.0) {
            pos++;
            sum += w;
        }
    }
    if (pos == 0)
        return stk__error(STK_ECONFIG, "sampler: weights are all zero");
    if (!isfinite(sum))
        return stk__error(STK_ECONFIG, "sampler: weights sum to infinity");
    *positive = pos;
    return 0;
}

/* Checks cfg and works out the epoch length. */
static int check_config(const stk_sampler_config_t *cfg, uint64_t *len)
{
    uint64_t n = cfg->dataset_len;
    if (n == 0)
        return stk__error(STK_ECONFIG, "sampler: dataset_len is 0 (empty data set)");
    switch (cfg->kind) {
    case STK_SAMPLER_SEQUENTIAL:
        *len = n;
        return 0;
    case STK_SAMPLER_RANDOM:
        *len = cfg->num_samples ? cfg->num_samples : n;
        if (!cfg->replacement) {
            /* Whole rounds of n are kept (see materialize). */
            uint64_t rounds = *len / n + (*len % n != 0);
            if (n > MAX_ENTRIES || rounds > MAX_ENTRIES / n)
                return stk__error(STK_ECONFIG, "sampler: num_samples %llu too large to keep in memory",
                                  (ull)*len);
        }
        return 0;
    case STK_SAMPLER_SUBSET_RANDOM:
        if (!cfg->indices || cfg->num_indices == 0)
            return stk__error(STK_ECONFIG, "sampler: indices is %s (SUBSET_RANDOM needs num_indices > 0)",
                              cfg->indices ? "empty" : "NULL");
        if (cfg->num_indices > MAX_ENTRIES)
            return stk__error(STK_ECONFIG, "sampler: num_indices %llu too large", (ull)cfg->num_indices);
        for (uint64_t i = 0; i < cfg->num_indices; i++)
            if (cfg->indices[i] >= n)
                return stk__error(STK_ECONFIG, "sampler: indices[%llu] = %llu is not below dataset_len %llu",
                                  (ull)i, (ull)cfg->indices[i], (ull)n);
        *len = cfg->num_indices;
        return 0;
    case STK_SAMPLER_WEIGHTED: {
        if (n > MAX_ENTRIES / 2)
            return stk__error(STK_ECONFIG, "sampler: dataset_len %llu too large for WEIGHTED", (ull)n);
        uint64_t positive = 0;
        int rc = check_weights(cfg, &positive);
        if (rc < 0)
            return rc;
        *len = cfg->num_samples ? cfg->num_samples : n;
        if (!cfg->replacement && *len > positive)
            return stk__error(STK_ECONFIG,
                              "sampler: num_samples %llu exceeds the %llu positive weights "
                              "(without replacement)",
                              (ull)*len, (ull)positive);
        return 0;
    }
    case STK_SAMPLER_DISTRIBUTED:
        if (cfg->world_size == 0)
            return stk__error(STK_ECONFIG, "sampler: world_size is 0");
        if (cfg->rank >= cfg->world_size)
            return stk__error(STK_ECONFIG, "sampler: rank %u is not below world_size %u", cfg->rank,
                              cfg->world_size);
        if (n > UINT64_MAX - cfg->world_size)
            return stk__error(STK_ECONFIG, "sampler: dataset_len %llu too large", (ull)n);
        if (cfg->shuffle && n > MAX_ENTRIES)
            return stk__error(STK_ECONFIG, "sampler: dataset_len %llu too large to shuffle", (ull)n);
        /* DistributedSampler: num_samples = ceil(n / world), or with drop_last
         * ceil((n - world) / world), which is floor(n / world). */
        if (cfg->drop_last) {
            *len = n / cfg->world_size;
            if (*len == 0)
                return stk__error(STK_ECONFIG,
                                  "sampler: drop_last with dataset_len %llu < world_size %u "
                                  "leaves every rank empty",
                                  (ull)n, cfg->world_size);
        } else {
            *len = n / cfg->world_size + (n % cfg->world_size != 0);
        }
        return 0;
    }
    return stk__error(STK_ECONFIG, "sampler: kind %d is unknown", (int)cfg->kind);
}

int stk_sampler_create(stk_sampler_t **out, const stk_sampler_config_t *cfg)
{
    if (!out)
        return stk__error(-EINVAL, "sampler: out is NULL");
    *out = NULL;
    if (!cfg)
        return stk__error(-EINVAL, "sampler: cfg is NULL");
    uint64_t len = 0;
    int rc = check_config(cfg, &len);
    if (rc < 0)
        return rc;

    stk_sampler_t *s = calloc(1, sizeof *s);
    if (!s)
        return stk__error(-ENOMEM, "sampler: allocating the sampler");
    s->kind = cfg->kind;
    s->n = cfg->dataset_len;
    s->len = len;
    s->seed = cfg->seed;
    s->replacement = cfg->replacement != 0;
    s->rank = cfg->rank;
    s->world = cfg->world_size;
    s->shuffle = cfg->shuffle != 0;

    uint64_t keep = 0; /* entries of s->order */
    switch (s->kind) {
    case STK_SAMPLER_RANDOM:
        if (!s->replacement)
            keep = (len / s->n + (len % s->n != 0)) * s->n;
        break;
    case STK_SAMPLER_SUBSET_RANDOM:
        keep = len;
        s->subset = malloc(len * sizeof(uint64_t));
        if (!s->subset) {
            rc = stk__error(-ENOMEM, "sampler: copying %llu indices", (ull)len);
            goto fail;
        }
        for (uint64_t i = 0; i < len; i++)
            s->subset[i] = cfg->indices[i];
        break;
    case STK_SAMPLER_WEIGHTED:
        if (s->replacement) {
            rc = stk__sampler_alias_build(s, cfg->weights);
        } else {
            keep = len;
            rc = stk__sampler_tree_alloc(s, cfg->weights);
        }
        if (rc < 0)
            goto fail;
        break;
    case STK_SAMPLER_DISTRIBUTED:
        if (s->shuffle)
            keep = s->n;
        break;
    case STK_SAMPLER_SEQUENTIAL:
        break;
    }
    int narrow = (s->kind == STK_SAMPLER_RANDOM || s->kind == STK_SAMPLER_DISTRIBUTED) &&
                 s->n <= (uint64_t)UINT32_MAX + 1;
    if (keep && narrow) {
        s->order32 = malloc(keep * sizeof(uint32_t));
        if (!s->order32) {
            rc = stk__error(-ENOMEM, "sampler: order of %llu indices", (ull)keep);
            goto fail;
        }
    } else if (keep) {
        s->order = malloc(keep * sizeof(uint64_t));
        if (!s->order) {
            rc = stk__error(-ENOMEM, "sampler: order of %llu indices", (ull)keep);
            goto fail;
        }
    }
    rc = stk_sampler_set_epoch(s, 0);
    if (rc < 0)
        goto fail;
    *out = s;
    return 0;
fail:
    stk_sampler_destroy(&s);
    return rc;
}

void stk_sampler_destroy(stk_sampler_t **sp)
{
    if (!sp || !*sp)
        return;
    stk_sampler_t *s = *sp;
    stk__sampler_weighted_free(s);
    free(s->order);
    free(s->order32);
    free(s->subset);
    free(s);
    *sp = NULL;
}

int stk_sampler_set_epoch(stk_sampler_t *s, uint64_t epoch)
{
    if (!s)
        return stk__error(-EINVAL, "sampler: NULL sampler");
    s->cursor = 0;
    /* The order is a function of (seed, epoch): a loader selecting the
     * epoch its sampler was created in skips a second 1-2 ms shuffle of
     * 60k indices before its first batch. */
    if (s->drawn && s->epoch == epoch)
        return 0;
    s->epoch = epoch;
    s->key = stk_rng_mix(stk_rng_mix(s->seed, SAMPLER_DOMAIN), epoch);
    materialize(s);
    s->drawn = 1;
    return 0;
}

uint64_t stk_sampler_epoch(const stk_sampler_t *s)
{
    return s ? s->epoch : 0;
}

uint64_t stk_sampler_len(const stk_sampler_t *s)
{
    return s ? s->len : 0;
}

/* Entry i of the materialized order, whichever width it is kept in. */
static inline uint64_t order_at(const stk_sampler_t *s, uint64_t i)
{
    return s->order32 ? s->order32[i] : s->order[i];
}

/* The index at pos < len; no checks, no side effects. */
static uint64_t index_at(const stk_sampler_t *s, uint64_t pos)
{
    switch (s->kind) {
    case STK_SAMPLER_SEQUENTIAL:
        return pos;
    case STK_SAMPLER_RANDOM:
        if (s->replacement) {
            stk_rng_t r;
            stk_rng_init(&r, s->key, pos);
            return stk_rng_below(&r, s->n);
        }
        return order_at(s, pos);
    case STK_SAMPLER_SUBSET_RANDOM:
        return s->order[pos];
    case STK_SAMPLER_WEIGHTED:
        return s->replacement ? stk__sampler_alias_draw(s, pos) : s->order[pos];
    case STK_SAMPLER_DISTRIBUTED: {
        /* Padding repeats the (shuffled) list from its head, as often as
         * needed: padded[i] = list[i mod n]. This rank takes padded[rank],
         * padded[rank + world], ... */
        uint64_t i = (s->rank + pos * s->world) % s->n;
        return s->shuffle ? order_at(s, i) : i;
    }
    }
    return 0;
}

int stk_sampler_get(const stk_sampler_t *s, uint64_t pos, uint64_t *index)
{
    if (!s || !index)
        return stk__error(-EINVAL, "sampler: get with a NULL %s", s ? "index" : "sampler");
    if (pos >= s->len)
        return stk__error(-ERANGE, "sampler: position %llu is past the epoch's %llu indices", (ull)pos,
                          (ull)s->len);
    *index = index_at(s, pos);
    return 0;
}

size_t stk_sampler_next(stk_sampler_t *s, uint64_t *out, size_t max)
{
    if (!s || !out)
        return 0;
    size_t k = 0;
    while (k < max && s->cursor < s->len)
        out[k++] = index_at(s, s->cursor++);
    return k;
}

uint64_t stk_sampler_tell(const stk_sampler_t *s)
{
    return s ? s->cursor : 0;
}

int stk_sampler_seek(stk_sampler_t *s, uint64_t pos)
{
    if (!s)
        return stk__error(-EINVAL, "sampler: NULL sampler");
    if (pos > s->len)
        return stk__error(-ERANGE, "sampler: seek to %llu past the epoch's %llu indices", (ull)pos,
                          (ull)s->len);
    s->cursor = pos;
    return 0;
}
