/* SPDX-License-Identifier: MIT */
/* Bucketing batches: batches of samples of similar length, so that a
 * padded batch of sequences wastes little. The epoch's order of any sampler
 * (random, distributed...) is cut into pools of pool_batches * batch_size
 * positions; each pool is sorted by length and cut into batches, and the
 * full batches of the epoch are shuffled (the partial one, if any, stays
 * last). Everything is drawn at set_epoch from (seed, epoch) and the
 * sampler's own order, so batches are a pure function of (seed, epoch,
 * rank, world size) and batch k is known without walking to it. */
#include "sampler_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Separates bucketing draws from the sampler's own; ASCII "bucket". */
#define BUCKET_DOMAIN 0x6275636b6574ull

typedef unsigned long long ull;

struct stk__bucket {
    uint32_t *lengths; /* per data set index (copied) */
    uint64_t num_lengths;
    uint64_t pool_batches; /* 0: the whole epoch is one pool */
    int shuffle;
    uint64_t seed;
    uint64_t *order;   /* the epoch's indices, batch after batch */
    uint64_t *start;   /* batch k is order[start[k], start[k + 1]) */
    uint64_t *scratch; /* the sampler's order of the epoch */
    stk_bucket_stats_t stats;
};

void stk_bucket_config_default(stk_bucket_config_t *cfg)
{
    if (!cfg)
        return;
    *cfg = (stk_bucket_config_t){.batch_size = 1, .pool_batches = 100, .shuffle = 1};
}

void stk__bucket_free(stk__bucket_t *k)
{
    if (!k)
        return;
    free(k->lengths);
    free(k->order);
    free(k->start);
    free(k->scratch);
    free(k);
}

int stk_batch_sampler_create_bucketed(stk_batch_sampler_t **out, stk_sampler_t *sampler,
                                      const stk_bucket_config_t *cfg)
{
    if (!out)
        return stk__error(-EINVAL, "bucket sampler: out is NULL");
    *out = NULL;
    if (!sampler || !cfg)
        return stk__error(-EINVAL, "bucket sampler: %s is NULL", !sampler ? "sampler" : "cfg");
    if (!cfg->lengths || cfg->num_lengths == 0)
        return stk__error(STK_ECONFIG, "bucket sampler: lengths is %s", !cfg->lengths ? "NULL" : "empty");
    if (cfg->num_lengths > SIZE_MAX / sizeof(uint32_t))
        return stk__error(STK_ECONFIG, "bucket sampler: %llu lengths is too many", (ull)cfg->num_lengths);
    uint64_t len = stk_sampler_len(sampler);
    if (len > SIZE_MAX / sizeof(uint64_t) / 2)
        return stk__error(STK_ECONFIG, "bucket sampler: %llu indices per epoch is too many", (ull)len);
    stk_batch_sampler_t *b = NULL;
    int rc = stk_batch_sampler_create(&b, sampler, cfg->batch_size, cfg->drop_last);
    if (rc < 0)
        return rc;
    stk__bucket_t *k = calloc(1, sizeof(*k));
    if (!k)
        goto nomem;
    b->bucket = k;
    k->num_lengths = cfg->num_lengths;
    k->pool_batches = cfg->pool_batches;
    k->shuffle = cfg->shuffle != 0;
    k->seed = cfg->seed;
    k->lengths = malloc((size_t)cfg->num_lengths * sizeof(uint32_t));
    k->order = malloc((size_t)(len ? len : 1) * sizeof(uint64_t));
    k->scratch = malloc((size_t)(len ? len : 1) * sizeof(uint64_t));
    k->start = malloc((size_t)(b->len + 1) * sizeof(uint64_t));
    if (!k->lengths || !k->order || !k->scratch || !k->start)
        goto nomem;
    memcpy(k->lengths, cfg->lengths, (size_t)cfg->num_lengths * sizeof(uint32_t));
    /* The epoch the sampler is at now: what a plain batch sampler would
     * serve before its first set_epoch. */
    rc = stk__bucket_build(b, stk_sampler_epoch(sampler));
    if (rc < 0) {
        stk_batch_sampler_destroy(&b);
        return rc;
    }
    *out = b;
    return 0;
nomem:
    stk_batch_sampler_destroy(&b);
    return stk__error(-ENOMEM, "bucket sampler: allocating for %llu indices", (ull)len);
}

/* Sorts a[0, n) by (length, index) (merge sort: stable, O(n log n), and
 * the tie order is the index's, so the result depends only on the set). */
static int by_length(const uint32_t *len, uint64_t a, uint64_t b)
{
    return len[a] != len[b] ? len[a] < len[b] : a < b;
}

static void merge_sort(const uint32_t *len, uint64_t *a, uint64_t *tmp, uint64_t n)
{
    if (n < 2)
        return;
    if (n <= 16) { /* insertion sort for short runs */
        for (uint64_t i = 1; i < n; i++) {
            uint64_t v = a[i], j = i;
            while (j > 0 && by_length(len, v, a[j - 1])) {
                a[j] = a[j - 1];
                j--;
            }
            a[j] = v;
        }
        return;
    }
    uint64_t h = n / 2;
    merge_sort(len, a, tmp, h);
    merge_sort(len, a + h, tmp, n - h);
    uint64_t i = 0, j = h, o = 0;
    while (i < h && j < n)
        tmp[o++] = by_length(len, a[j], a[i]) ? a[j++] : a[i++];
    while (i < h)
        tmp[o++] = a[i++];
    while (j < n)
        tmp[o++] = a[j++];
    memcpy(a, tmp, (size_t)n * sizeof(uint64_t));
}

/* Padding of consecutive batches of `bs` over a[0, n): slots, and tokens. */
static void padding_of(const uint32_t *len, const uint64_t *a, const uint64_t *start, uint64_t nb, uint64_t *slots,
                       uint64_t *tokens)
{
    uint64_t s = 0, t = 0;
    for (uint64_t k = 0; k < nb; k++) {
        uint64_t mx = 0;
        for (uint64_t i = start[k]; i < start[k + 1]; i++) {
            uint64_t l = len[a[i]];
            mx = l > mx ? l : mx;
            t += l;
        }
        s += mx * (start[k + 1] - start[k]);
    }
    *slots = s;
    *tokens = t;
}

int stk__bucket_build(stk_batch_sampler_t *b, uint64_t epoch)
{
    stk__bucket_t *k = b->bucket;
    uint64_t n = stk_sampler_len(b->sampler), bs = b->batch_size, nb = b->len;
    uint64_t *src = k->scratch;
    for (uint64_t i = 0; i < n; i++) {
        int rc = stk_sampler_get(b->sampler, i, &src[i]);
        if (rc < 0)
            return rc;
        if (src[i] >= k->num_lengths)
            return stk__error(STK_ECONFIG, "bucket sampler: index %llu has no length (lengths has %llu entries)",
                              (ull)src[i], (ull)k->num_lengths);
    }
    /* What plain batching of the same order would pad, for the stats. */
    for (uint64_t j = 0; j < nb; j++)
        k->start[j] = j * bs;
    k->start[nb] = nb * bs < n ? nb * bs : n;
    padding_of(k->lengths, src, k->start, nb, &k->stats.padded_plain, &k->stats.tokens);

    /* Sort each pool; the positions past the last whole batch (dropped
     * with drop_last) stay out of the sort so they cannot displace others. */
    uint64_t used = k->start[nb];
    uint64_t pool = k->pool_batches ? k->pool_batches * bs : used;
    if (k->pool_batches && pool / bs != k->pool_batches)
        pool = used; /* overflow: one pool */
    memcpy(k->order, src, (size_t)used * sizeof(uint64_t));
    for (uint64_t p = 0; p < used; p += pool) {
        uint64_t m = used - p < pool ? used - p : pool;
        merge_sort(k->lengths, k->order + p, src, m);
    }
    /* Shuffle the full batches as blocks (batch j starts at j * bs); the
     * partial one stays last. The permutation is applied through src. */
    uint64_t full = used / bs;
    for (uint64_t j = 0; j < nb; j++)
        k->start[j] = j; /* batch permutation, reusing start */
    if (k->shuffle && full > 1) {
        stk_rng_t r;
        stk_rng_init(&r, stk_rng_mix(stk_rng_mix(k->seed, BUCKET_DOMAIN), epoch), 0);
        for (uint64_t j = 0; j + 1 < full; j++) {
            uint64_t x = j + stk_rng_below(&r, full - j), t = k->start[j];
            k->start[j] = k->start[x];
            k->start[x] = t;
        }
    }
    for (uint64_t j = 0; j < nb; j++) {
        uint64_t from = k->start[j] * bs, cnt = used - from < bs ? used - from : bs;
        memcpy(src + j * bs, k->order + from, (size_t)cnt * sizeof(uint64_t));
    }
    memcpy(k->order, src, (size_t)used * sizeof(uint64_t));
    for (uint64_t j = 0; j < nb; j++)
        k->start[j] = j * bs;
    k->start[nb] = used;
    uint64_t tokens;
    padding_of(k->lengths, k->order, k->start, nb, &k->stats.padded, &tokens);
    return 0;
}

int stk__bucket_get(const stk_batch_sampler_t *b, uint64_t batch, uint64_t *out, size_t *n)
{
    const stk__bucket_t *k = b->bucket;
    uint64_t s = k->start[batch], e = k->start[batch + 1];
    memcpy(out, k->order + s, (size_t)(e - s) * sizeof(uint64_t));
    *n = (size_t)(e - s);
    return 0;
}

int stk_batch_sampler_bucket_stats(const stk_batch_sampler_t *b, stk_bucket_stats_t *st)
{
    if (!b || !st)
        return stk__error(-EINVAL, "bucket sampler: stats with a NULL %s", !b ? "batch sampler" : "st");
    if (!b->bucket)
        return stk__error(-EINVAL, "bucket sampler: not a bucketing batch sampler");
    *st = b->bucket->stats;
    return 0;
}
