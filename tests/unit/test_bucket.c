/* SPDX-License-Identifier: MIT */
/* The bucketing batch sampler (sampler/bucket.c): each index once per
 * epoch, batches of similar lengths, deterministic for (seed, epoch),
 * resumable, composable with the distributed sampler, the padding it
 * saves, and its errors. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "stoker/sampler.h"

enum { N = 1000, BS = 16 };

static uint32_t lengths[N];

static int setup(void **state)
{
    (void)state;
    stk_rng_t r;
    stk_rng_init(&r, 5, 0);
    for (int i = 0; i < N; i++) /* 1..60, skewed short like words */
        lengths[i] = 1 + (uint32_t)(stk_rng_below(&r, 20) + stk_rng_below(&r, 20) * stk_rng_below(&r, 3));
    return 0;
}

static stk_sampler_t *random_sampler(uint64_t seed)
{
    stk_sampler_config_t c;
    stk_sampler_config_default(&c);
    c.kind = STK_SAMPLER_RANDOM;
    c.dataset_len = N;
    c.seed = seed;
    stk_sampler_t *s = NULL;
    assert_int_equal(stk_sampler_create(&s, &c), 0);
    return s;
}

static stk_batch_sampler_t *bucketed(stk_sampler_t *s, uint64_t bs, int drop_last, uint64_t pool, uint64_t seed)
{
    stk_bucket_config_t c;
    stk_bucket_config_default(&c);
    c.lengths = lengths;
    c.num_lengths = N;
    c.batch_size = bs;
    c.drop_last = drop_last;
    c.pool_batches = pool;
    c.seed = seed;
    stk_batch_sampler_t *b = NULL;
    int rc = stk_batch_sampler_create_bucketed(&b, s, &c);
    if (rc < 0)
        fail_msg("create: %s", stk_error_message());
    return b;
}

/* All batches of the epoch, flattened; sizes[k] per batch. */
static uint64_t epoch_batches(stk_batch_sampler_t *b, uint64_t *flat, size_t *sizes)
{
    uint64_t total = 0, nb = stk_batch_sampler_len(b);
    uint64_t buf[64];
    for (uint64_t k = 0; k < nb; k++) {
        size_t n = 0;
        assert_int_equal(stk_batch_sampler_next(b, buf, &n), 0);
        memcpy(flat + total, buf, n * sizeof(uint64_t));
        sizes[k] = n;
        total += n;
    }
    size_t n = 1;
    assert_int_equal(stk_batch_sampler_next(b, buf, &n), STK_DONE);
    assert_int_equal(n, 0);
    return total;
}

static void test_each_index_once(void **state)
{
    (void)state;
    stk_sampler_t *s = random_sampler(1);
    stk_batch_sampler_t *b = bucketed(s, BS, 0, 8, 2);
    uint64_t flat[N];
    size_t sizes[N];
    assert_int_equal(stk_batch_sampler_len(b), (N + BS - 1) / BS);
    assert_int_equal(stk_batch_sampler_batch_size(b), BS);
    for (uint64_t epoch = 0; epoch < 3; epoch++) {
        assert_int_equal(stk_batch_sampler_set_epoch(b, epoch), 0);
        assert_int_equal(epoch_batches(b, flat, sizes), N);
        int seen[N] = {0};
        for (int i = 0; i < N; i++) {
            assert_true(flat[i] < N);
            seen[flat[i]]++;
        }
        for (int i = 0; i < N; i++)
            assert_int_equal(seen[i], 1);
        /* full batches first, the partial one (1000 % 16 = 8) last */
        uint64_t nb = stk_batch_sampler_len(b);
        for (uint64_t k = 0; k + 1 < nb; k++)
            assert_int_equal(sizes[k], BS);
        assert_int_equal(sizes[nb - 1], N % BS);
    }
    stk_batch_sampler_destroy(&b);
    assert_null(b);
    stk_sampler_destroy(&s);
}

/* Within a pool, batches are cut from a sorted run: a batch's lengths are
 * contiguous in the pool's sorted order, so the spread inside a batch is
 * far below the data set's. */
static void test_similar_lengths_and_stats(void **state)
{
    (void)state;
    stk_sampler_t *s = random_sampler(3);
    stk_batch_sampler_t *b = bucketed(s, BS, 1, 0, 4); /* one pool: whole epoch sorted */
    uint64_t flat[N];
    size_t sizes[N];
    uint64_t total = epoch_batches(b, flat, sizes), nb = stk_batch_sampler_len(b);
    assert_int_equal(total, (N / BS) * BS);
    uint64_t spread_sum = 0, slots = 0, tokens = 0;
    for (uint64_t k = 0, o = 0; k < nb; o += sizes[k], k++) {
        uint32_t lo = UINT32_MAX, hi = 0;
        for (size_t i = 0; i < sizes[k]; i++) {
            uint32_t l = lengths[flat[o + i]];
            lo = l < lo ? l : lo;
            hi = l > hi ? l : hi;
            tokens += l;
        }
        spread_sum += hi - lo;
        slots += (uint64_t)hi * sizes[k];
    }
    /* sorted over the whole epoch: consecutive batches tile the range */
    assert_true(spread_sum <= 60);
    stk_bucket_stats_t st;
    assert_int_equal(stk_batch_sampler_bucket_stats(b, &st), 0);
    assert_int_equal(st.tokens, tokens);
    assert_int_equal(st.padded, slots);
    assert_true(st.padded >= st.tokens);
    /* random batches of skewed lengths pad a lot; sorted ones almost not */
    assert_true(st.padded_plain > st.padded);
    assert_true((double)(st.padded - st.tokens) < 0.1 * (double)(st.padded_plain - st.tokens));
    stk_batch_sampler_destroy(&b);
    stk_sampler_destroy(&s);
}

static void test_deterministic(void **state)
{
    (void)state;
    uint64_t a[N], c[N];
    size_t sa[N], sc[N];
    stk_sampler_t *s1 = random_sampler(9), *s2 = random_sampler(9), *s3 = random_sampler(9);
    stk_batch_sampler_t *b1 = bucketed(s1, BS, 0, 4, 11), *b2 = bucketed(s2, BS, 0, 4, 11);
    stk_batch_sampler_t *b3 = bucketed(s3, BS, 0, 4, 12);
    for (uint64_t epoch = 0; epoch < 2; epoch++) {
        assert_int_equal(stk_batch_sampler_set_epoch(b1, epoch), 0);
        assert_int_equal(stk_batch_sampler_set_epoch(b2, epoch), 0);
        epoch_batches(b1, a, sa);
        epoch_batches(b2, c, sc);
        assert_memory_equal(a, c, sizeof(a));
        assert_memory_equal(sa, sc, stk_batch_sampler_len(b1) * sizeof(size_t));
    }
    /* another epoch, another bucket seed: other batches */
    uint64_t e0[N], e1[N];
    assert_int_equal(stk_batch_sampler_set_epoch(b1, 0), 0);
    epoch_batches(b1, e0, sa);
    assert_int_equal(stk_batch_sampler_set_epoch(b1, 1), 0);
    epoch_batches(b1, e1, sa);
    assert_true(memcmp(e0, e1, sizeof(e0)) != 0);
    assert_int_equal(stk_batch_sampler_set_epoch(b3, 0), 0);
    epoch_batches(b3, c, sc);
    assert_true(memcmp(e0, c, sizeof(e0)) != 0);
    stk_batch_sampler_destroy(&b1);
    stk_batch_sampler_destroy(&b2);
    stk_batch_sampler_destroy(&b3);
    stk_sampler_destroy(&s1);
    stk_sampler_destroy(&s2);
    stk_sampler_destroy(&s3);
}

/* Resume: a fresh sampler set to the epoch and seeked to a batch serves
 * the same remaining batches; random access agrees with next(). */
static void test_resume(void **state)
{
    (void)state;
    uint64_t full[N], rest[N];
    size_t sf[N], sr[N];
    stk_sampler_t *s1 = random_sampler(21);
    stk_batch_sampler_t *b1 = bucketed(s1, BS, 0, 5, 22);
    assert_int_equal(stk_batch_sampler_set_epoch(b1, 3), 0);
    epoch_batches(b1, full, sf);
    uint64_t nb = stk_batch_sampler_len(b1);
    for (uint64_t k = 0, o = 0; k < nb; o += sf[k], k++) {
        uint64_t buf[BS];
        size_t n = 0;
        assert_int_equal(stk_batch_sampler_get(b1, k, buf, &n), 0);
        assert_int_equal(n, sf[k]);
        assert_memory_equal(buf, full + o, n * sizeof(uint64_t));
    }
    stk_sampler_t *s2 = random_sampler(21);
    stk_batch_sampler_t *b2 = bucketed(s2, BS, 0, 5, 22);
    assert_int_equal(stk_batch_sampler_set_epoch(b2, 3), 0);
    assert_int_equal(stk_batch_sampler_seek(b2, 17), 0);
    assert_int_equal(stk_batch_sampler_tell(b2), 17);
    uint64_t total = 0;
    for (uint64_t k = 17; k < nb; k++) {
        size_t n = 0;
        assert_int_equal(stk_batch_sampler_next(b2, rest + total, &n), 0);
        sr[k] = n;
        total += n;
    }
    assert_int_equal(total, N - 17 * BS);
    assert_memory_equal(rest, full + 17 * BS, total * sizeof(uint64_t));
    assert_int_equal(stk_batch_sampler_seek(b2, nb + 1), -ERANGE);
    (void)sr;
    stk_batch_sampler_destroy(&b1);
    stk_batch_sampler_destroy(&b2);
    stk_sampler_destroy(&s1);
    stk_sampler_destroy(&s2);
}

/* Over the distributed sampler: each rank buckets its own share, ranks
 * have the same number of batches, and together they cover every index
 * (DistributedSampler pads by repeating the head: 1000 over 3 ranks is
 * 334 each, 2 repeats). */
static void test_distributed(void **state)
{
    (void)state;
    enum { W = 3 };
    int seen[N] = {0};
    uint64_t nb0 = 0, all = 0;
    for (uint32_t rank = 0; rank < W; rank++) {
        stk_sampler_config_t c;
        stk_sampler_config_default(&c);
        c.kind = STK_SAMPLER_DISTRIBUTED;
        c.dataset_len = N;
        c.seed = 8;
        c.rank = rank;
        c.world_size = W;
        c.shuffle = 1;
        stk_sampler_t *s = NULL;
        assert_int_equal(stk_sampler_create(&s, &c), 0);
        stk_batch_sampler_t *b = bucketed(s, BS, 0, 4, 8);
        assert_int_equal(stk_batch_sampler_set_epoch(b, 2), 0);
        uint64_t flat[N];
        size_t sizes[N];
        uint64_t total = epoch_batches(b, flat, sizes);
        assert_int_equal(total, stk_sampler_len(s));
        /* this rank's batches hold exactly its sampler's indices */
        uint64_t mine[N];
        for (uint64_t i = 0; i < total; i++)
            assert_int_equal(stk_sampler_get(s, i, &mine[i]), 0);
        int cnt[N] = {0};
        for (uint64_t i = 0; i < total; i++)
            cnt[mine[i]]++;
        for (uint64_t i = 0; i < total; i++)
            cnt[flat[i]]--;
        for (int i = 0; i < N; i++)
            assert_int_equal(cnt[i], 0);
        for (uint64_t i = 0; i < total; i++)
            seen[flat[i]]++;
        if (rank == 0)
            nb0 = stk_batch_sampler_len(b);
        assert_int_equal(stk_batch_sampler_len(b), nb0);
        all += total;
        stk_batch_sampler_destroy(&b);
        stk_sampler_destroy(&s);
    }
    assert_int_equal(all, 1002);
    int twice = 0;
    for (int i = 0; i < N; i++) {
        assert_true(seen[i] >= 1 && seen[i] <= 2);
        twice += seen[i] == 2;
    }
    assert_int_equal(twice, 2);
}

static void test_errors(void **state)
{
    (void)state;
    stk_sampler_t *s = random_sampler(1);
    stk_batch_sampler_t *b = (stk_batch_sampler_t *)&b;
    stk_bucket_config_t c;
    stk_bucket_config_default(&c);
    assert_int_equal(c.batch_size, 1);
    assert_int_equal(c.pool_batches, 100);
    assert_int_equal(c.shuffle, 1);
    assert_int_equal(stk_batch_sampler_create_bucketed(&b, s, &c), STK_ECONFIG);
    assert_null(b);
    assert_non_null(strstr(stk_error_message(), "lengths is NULL"));
    c.lengths = lengths;
    c.num_lengths = N - 1; /* index 999 has no length */
    assert_int_equal(stk_batch_sampler_create_bucketed(&b, s, &c), STK_ECONFIG);
    assert_non_null(strstr(stk_error_message(), "index 999 has no length"));
    c.num_lengths = N;
    c.batch_size = 0;
    assert_int_equal(stk_batch_sampler_create_bucketed(&b, s, &c), STK_ECONFIG);
    c.batch_size = N + 1;
    c.drop_last = 1;
    assert_int_equal(stk_batch_sampler_create_bucketed(&b, s, &c), STK_ECONFIG);
    assert_int_equal(stk_batch_sampler_create_bucketed(NULL, s, &c), -EINVAL);
    assert_int_equal(stk_batch_sampler_create_bucketed(&b, NULL, &c), -EINVAL);
    assert_int_equal(stk_batch_sampler_create_bucketed(&b, s, NULL), -EINVAL);
    /* stats of a plain batch sampler */
    stk_bucket_stats_t st;
    assert_int_equal(stk_batch_sampler_create(&b, s, 4, 0), 0);
    assert_int_equal(stk_batch_sampler_bucket_stats(b, &st), -EINVAL);
    assert_int_equal(stk_batch_sampler_bucket_stats(NULL, &st), -EINVAL);
    stk_batch_sampler_destroy(&b);
    stk_sampler_destroy(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_each_index_once), cmocka_unit_test(test_similar_lengths_and_stats),
        cmocka_unit_test(test_deterministic),   cmocka_unit_test(test_resume),
        cmocka_unit_test(test_distributed),     cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
