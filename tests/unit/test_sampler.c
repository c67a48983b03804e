/* SPDX-License-Identifier: MIT */
/* sampler/: permutations, golden orders (pinned from the independent Python
 * model in tools/gen_sampler_fixtures.py), DistributedSampler against lists
 * from PyTorch itself and from a transcription of its code, weighted draws
 * against their weights (chi-square), batches, resume, and every error. */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "stoker/sampler.h"

/* ---- helpers ---------------------------------------------------------- */

static stk_sampler_t *make(const stk_sampler_config_t *cfg)
{
    stk_sampler_t *s = NULL;
    int rc = stk_sampler_create(&s, cfg);
    if (rc != 0)
        fail_msg("create: %s: %s", stk_err_name(rc), stk_error_message());
    return s;
}

/* The whole epoch through get(); also checks next() gives the same. */
static uint64_t *epoch_order(stk_sampler_t *s)
{
    uint64_t len = stk_sampler_len(s);
    uint64_t *a = malloc(len * sizeof *a);
    uint64_t *b = malloc(len * sizeof *b);
    assert_non_null(a);
    assert_non_null(b);
    for (uint64_t i = 0; i < len; i++)
        assert_int_equal(stk_sampler_get(s, i, &a[i]), 0);
    assert_int_equal(stk_sampler_seek(s, 0), 0);
    uint64_t got = 0;
    size_t k;
    while ((k = stk_sampler_next(s, b + got, 7)) > 0)
        got += k;
    assert_int_equal(got, len);
    assert_memory_equal(a, b, len * sizeof *a);
    free(b);
    return a;
}

static void assert_permutation(const uint64_t *a, uint64_t n)
{
    unsigned char *seen = calloc(n ? n : 1, 1);
    assert_non_null(seen);
    for (uint64_t i = 0; i < n; i++) {
        assert_true(a[i] < n);
        assert_false(seen[a[i]]);
        seen[a[i]] = 1;
    }
    free(seen);
}

static void expect_config_error(const stk_sampler_config_t *cfg, const char *field)
{
    stk_sampler_t *s = (stk_sampler_t *)&s; /* must be reset to NULL */
    stk_error_clear();
    assert_int_equal(stk_sampler_create(&s, cfg), STK_ECONFIG);
    assert_null(s);
    if (!strstr(stk_error_message(), field))
        fail_msg("message '%s' does not name '%s'", stk_error_message(), field);
}

/* Chi-square statistic of observed counts against expected counts. */
static double chi_square(const uint64_t *obs, const double *expect, size_t k)
{
    double x2 = 0.0;
    for (size_t i = 0; i < k; i++) {
        double d = (double)obs[i] - expect[i];
        x2 += d * d / expect[i];
    }
    return x2;
}

/* ---- sequential and permutations --------------------------------------- */

static void test_config_default(void **state)
{
    (void)state;
    stk_sampler_config_t cfg;
    memset(&cfg, 0xab, sizeof cfg);
    stk_sampler_config_default(&cfg);
    assert_int_equal(cfg.kind, STK_SAMPLER_SEQUENTIAL);
    assert_int_equal(cfg.world_size, 1);
    assert_int_equal(cfg.rank, 0);
    assert_int_equal(cfg.num_samples, 0);
    assert_null(cfg.weights);
    assert_null(cfg.indices);
    stk_sampler_config_default(NULL); /* no crash */
}

static void test_sequential(void **state)
{
    (void)state;
    stk_sampler_config_t cfg;
    stk_sampler_config_default(&cfg);
    cfg.dataset_len = 25;
    stk_sampler_t *s = make(&cfg);
    assert_int_equal(stk_sampler_len(s), 25);
    assert_int_equal(stk_sampler_epoch(s), 0);
    uint64_t *a = epoch_order(s);
    for (uint64_t i = 0; i < 25; i++)
        assert_int_equal(a[i], i);
    free(a);
    assert_int_equal(stk_sampler_set_epoch(s, 9), 0);
    assert_int_equal(stk_sampler_epoch(s), 9);
    uint64_t v;
    assert_int_equal(stk_sampler_get(s, 24, &v), 0);
    assert_int_equal(v, 24);
    stk_sampler_destroy(&s);
    assert_null(s);
}

static void test_permutation_sizes(void **state)
{
    (void)state;
    const uint64_t sizes[] = {1, 2, 3, 10, 257, 1000, 4097};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        stk_sampler_config_t cfg;
        stk_sampler_config_default(&cfg);
        cfg.kind = STK_SAMPLER_RANDOM;
        cfg.dataset_len = sizes[k];
        cfg.seed = 1234 + k;
        stk_sampler_t *s = make(&cfg);
        assert_int_equal(stk_sampler_len(s), sizes[k]);
        for (uint64_t e = 0; e < 3; e++) {
            assert_int_equal(stk_sampler_set_epoch(s, e), 0);
            uint64_t *a = epoch_order(s);
            assert_permutation(a, sizes[k]);
            free(a);
        }
        stk_sampler_destroy(&s);

        /* DistributedSampler with shuffle permutes too (world 1: no padding). */
        cfg.kind = STK_SAMPLER_DISTRIBUTED;
        cfg.shuffle = 1;
        s = make(&cfg);
        uint64_t *a = epoch_order(s);
        assert_permutation(a, sizes[k]);
        free(a);
        stk_sampler_destroy(&s);
    }
    /* 0 is an error for every kind. */
    static const double w[1] = {1.0};
    static const uint64_t idx[1] = {0};
    for (int kind = STK_SAMPLER_SEQUENTIAL; kind <= STK_SAMPLER_DISTRIBUTED; kind++) {
        stk_sampler_config_t cfg;
        stk_sampler_config_default(&cfg);
        cfg.kind = (stk_sampler_kind_t)kind;
        cfg.weights = w;
        cfg.indices = idx;
        cfg.num_indices = 1;
        expect_config_error(&cfg, "dataset_len");
    }
}

/* Every permutation of 3 equally often over epochs: the check that catches
 * a biased shuffle (swapping with any position instead of a later one
 * gives 27 equally likely paths onto 6 orders). 6 cells, 5 degrees of
 * freedom; 20.515 is the chi-square quantile for p = 0.001. */
static void test_permutation_uniform(void **state)
{
    (void)state;
    enum { EPOCHS = 6000 };
    stk_sampler_config_t cfg;
    stk_sampler_config_default(&cfg);
    cfg.kind = STK_SAMPLER_RANDOM;
    cfg.dataset_len = 3;
    cfg.seed = 2024;
    stk_sampler_t *s = make(&cfg);
    uint64_t cnt[6] = {0};
    for (uint64_t e = 0; e < EPOCHS; e++) {
        assert_int_equal(stk_sampler_set_epoch(s, e), 0);
        uint64_t a[3];
        for (uint64_t i = 0; i < 3; i++)
            assert_int_equal(stk_sampler_get(s, i, &a[i]), 0);
        assert_permutation(a, 3);
        cnt[a[0] * 2 + (a[1] > a[2])]++; /* first element, then which order of the rest */
    }
    stk_sampler_destroy(&s);
    double expect[6];
    for (int i = 0; i < 6; i++)
        expect[i] = EPOCHS / 6.0;
    double x2 = chi_square(cnt, expect, 6);
    if (x2 >= 20.515)
        fail_msg("permutations of 3: chi-square %.2f >= 20.515 (df 5, p 0.001)", x2);
}

static int orders_equal(const uint64_t *a, const uint64_t *b, uint64_t n)
{
    return memcmp(a, b, n * sizeof *a) == 0;
}

static void test_orders_are_functions(void **state)
{
    (void)state;
    enum { N = 100 };
    stk_sampler_config_t cfg;
    stk_sampler_config_default(&cfg);
    cfg.kind = STK_SAMPLER_RANDOM;
    cfg.dataset_len = N;
    cfg.seed = 5;
    stk_sampler_t *s = make(&cfg);
    uint64_t *ep[4];
    for (uint64_t e = 0; e < 4; e++) {
        assert_int_equal(stk_sampler_set_epoch(s, e), 0);
        ep[e] = epoch_order(s);
    }
    for (int i = 0; i < 4; i++)
        for (int j = i + 1; j < 4; j++)
            assert_false(orders_equal(ep[i], ep[j], N));

    /* Another seed: another order. */
    cfg.seed = 6;
    stk_sampler_t *t = make(&cfg);
    uint64_t *other = epoch_order(t);
    assert_false(orders_equal(other, ep[0], N));
    free(other);
    stk_sampler_destroy(&t);

    /* Same inputs, fresh object, epochs visited in another order: same. */
    cfg.seed = 5;
    t = make(&cfg);
    for (int e = 3; e >= 0; e--) {
        assert_int_equal(stk_sampler_set_epoch(t, (uint64_t)e), 0);
        uint64_t *again = epoch_order(t);
        assert_true(orders_equal(again, ep[e], N));
        free(again);
    }
    stk_sampler_destroy(&t);
    for (int e = 0; e < 4; e++)
        free(ep[e]);
    stk_sampler_destroy(&s);
}

/* Pinned so that any change to Philox, the key derivation or the shuffle
 * shows. The values come from tools/gen_sampler_fixtures.py, a separate
 * Python model of the same draws, not from this library. */
static void test_golden(void **state)
{
    (void)state;
    static const uint64_t perm_42_3[20] = {19, 14, 1, 7, 12, 6, 18, 15, 16, 3,
                                           2,  11, 8, 10, 13, 4, 17, 0, 9, 5};
    static const uint64_t perm_7_0[16] = {693, 275, 294, 251, 898, 852, 518, 219,
                                          545, 246, 399, 972, 623, 903, 171, 631};
    static const uint64_t repl_42_3[16] = {19, 6, 8, 11, 18, 8, 2, 3, 11, 19, 8, 7, 1, 9, 12, 9};

    stk_sampler_config_t cfg;
    stk_sampler_config_default(&cfg);
    cfg.kind = STK_SAMPLER_RANDOM;
    cfg.dataset_len = 20;
    cfg.seed = 42;
    stk_sampler_t *s = make(&cfg);
    assert_int_equal(stk_sampler_set_epoch(s, 3), 0);
    uint64_t *a = epoch_order(s);
    assert_memory_equal(a, perm_42_3, sizeof perm_42_3);
    free(a);
    stk_sampler_destroy(&s);

    cfg.dataset_len = 1000;
    cfg.seed = 7;
    s = make(&cfg);
    a = epoch_order(s);
    assert_memory_equal(a, perm_7_0, sizeof perm_7_0);
    free(a);
    stk_sampler_destroy(&s);

    cfg.dataset_len = 20;
    cfg.seed = 42;
    cfg.replacement = 1;
    cfg.num_samples = 16;
    s = make(&cfg);
    assert_int_equal(stk_sampler_set_epoch(s, 3), 0);
    a = epoch_order(s);
    assert_memory_equal(a, repl_42_3, sizeof repl_42_3);
    free(a);
    stk_sampler_destroy(&s);
}

static void test_random_num_samples(void **state)
{
    (void)state;
    enum { N = 10 };
    stk_sampler_config_t cfg;
    stk_sampler_config_default(&cfg);
    cfg.kind = STK_SAMPLER_RANDOM;
    cfg.dataset_len = N;
    cfg.seed = 77;
    stk_sampler_t *full = make(&cfg);
    uint64_t *f = epoch_order(full);

    /* Fewer than n: distinct, and a prefix of the full permutation. */
    cfg.num_samples = 4;
    stk_sampler_t *s = make(&cfg);
    assert_int_equal(stk_sampler_len(s), 4);
    uint64_t *a = epoch_order(s);
    assert_memory_equal(a, f, 4 * sizeof *a);
    free(a);
    stk_sampler_destroy(&s);

    /* More than n without replacement (torch's RandomSampler): whole
     * permutations one after another, then part of one more. */
    cfg.num_samples = 2 * N + 3;
    s = make(&cfg);
    a = epoch_order(s);
    assert_memory_equal(a, f, N * sizeof *a);
    assert_permutation(a + N, N);
    assert_false(orders_equal(a, a + N, N));
    for (int i = 0; i < 3; i++)
        for (int j = i + 1; j < 3; j++)
            assert_int_not_equal(a[2 * N + i], a[2 * N + j]);
    free(a);
    stk_sampler_destroy(&s);
    free(f);
    stk_sampler_destroy(&full);

    /* With replacement: uniform over n. 50000 draws into 10 cells: 9
     * degrees of freedom; 27.877 is the chi-square quantile for p = 0.001.
     * The seed is fixed, so this is deterministic: it only fails if the
     * draws are not uniform (or by a 1-in-1000 accident of this seed). */
    enum { DRAWS = 50000 };
    cfg.replacement = 1;
    cfg.num_samples = DRAWS;
    s = make(&cfg);
    assert_int_equal(stk_sampler_len(s), DRAWS);
    uint64_t cnt[N] = {0};
    int repeats = 0;
    uint64_t prev = UINT64_MAX;
    for (uint64_t i = 0; i < DRAWS; i++) {
        uint64_t v;
        assert_int_equal(stk_sampler_get(s, i, &v), 0);
        assert_true(v < N);
        cnt[v]++;
        repeats += v == prev;
        prev = v;
    }
    assert_true(repeats > 0);
    double expect[N];
    for (int i = 0; i < N; i++)
        expect[i] = DRAWS / (double)N;
    double x2 = chi_square(cnt, expect, N);
    if (x2 >= 27.877)
        fail_msg("uniform draws: chi-square %.2f >= 27.877 (df 9, p 0.001)", x2);
    stk_sampler_destroy(&s);
}

static void test_subset_random(void **state)
{
    (void)state;
    static const uint64_t sub[] = {40, 3, 17, 3, 99, 58, 21}; /* a duplicate is kept */
    enum { K = sizeof sub / sizeof sub[0] };
    stk_sampler_config_t cfg;
    stk_sampler_config_default(&cfg);
    cfg.kind = STK_SAMPLER_SUBSET_RANDOM;
    cfg.dataset_len = 100;
    cfg.indices = sub;
    cfg.num_indices = K;
    cfg.seed = 3;
    stk_sampler_t *s = make(&cfg);
    assert_int_equal(stk_sampler_len(s), K);
    int differs = 0;
    uint64_t *first = NULL;
    for (uint64_t e = 0; e < 5; e++) {
        assert_int_equal(stk_sampler_set_epoch(s, e), 0);
        uint64_t *a = epoch_order(s);
        /* Same multiset as the subset: every element matched exactly once. */
        int used[K] = {0};
        for (int i = 0; i < K; i++) {
            int found = 0;
            for (int j = 0; j < K && !found; j++)
                if (!used[j] && sub[j] == a[i])
                    used[j] = found = 1;
            assert_true(found);
        }
        if (!first)
            first = a;
        else {
            differs |= !orders_equal(a, first, K);
            free(a);
        }
    }
    assert_true(differs);
    free(first);
    stk_sampler_destroy(&s);

    /* The caller's array is copied. */
    uint64_t mine[3] = {5, 6, 7};
    cfg.indices = mine;
    cfg.num_indices = 3;
    s = make(&cfg);
    mine[0] = mine[1] = mine[2] = 0;
    uint64_t *a = epoch_order(s);
    uint64_t sum = a[0] + a[1] + a[2];
    assert_int_equal(sum, 18);
    free(a);
    stk_sampler_destroy(&s);

    /* Errors: NULL, empty, out of range. */
    cfg.indices = NULL;
    expect_config_error(&cfg, "indices");
    cfg.indices = sub;
    cfg.num_indices = 0;
    expect_config_error(&cfg, "indices");
    cfg.num_indices = K;
    cfg.dataset_len = 99;
    expect_config_error(&cfg, "indices[4]");
}

/* ---- weighted ---------------------------------------------------------- */

static void test_weighted_replacement(void **state)
{
    (void)state;
    /* Index 3 has weight 0 and must never come. 8 positive cells, 80000
     * draws: 7 degrees of freedom; 24.322 is the chi-square quantile for
     * p = 0.001 (fixed seed: deterministic). */
    static const double w[9] = {1, 2, 3, 0, 4, 5, 6, 7, 8};
    enum { DRAWS = 80000 };
    stk_sampler_config_t cfg;
    stk_sampler_config_default(&cfg);
    cfg.kind = STK_SAMPLER_WEIGHTED;
    cfg.dataset_len = 9;
    cfg.weights = w;
    cfg.replacement = 1;
    cfg.num_samples = DRAWS;
    cfg.seed = 11;
    stk_sampler_t *s = make(&cfg);
    assert_int_equal(stk_sampler_len(s), DRAWS);
    uint64_t cnt[9] = {0};
    uint64_t *a = epoch_order(s);
    for (uint64_t i = 0; i < DRAWS; i++) {
        assert_true(a[i] < 9);
        cnt[a[i]]++;
    }
    free(a);
    assert_int_equal(cnt[3], 0);
    uint64_t obs[8];
    double expect[8];
    for (int i = 0, k = 0; i < 9; i++) {
        if (w[i] > 0) {
            obs[k] = cnt[i];
            expect[k] = DRAWS * w[i] / 36.0;
            k++;
        }
    }
    double x2 = chi_square(obs, expect, 8);
    if (x2 >= 24.322)
        fail_msg("weighted draws: chi-square %.2f >= 24.322 (df 7, p 0.001)", x2);

    /* Another epoch, another sequence; same epoch, same sequence. */
    assert_int_equal(stk_sampler_set_epoch(s, 1), 0);
    uint64_t *e1 = epoch_order(s);
    assert_int_equal(stk_sampler_set_epoch(s, 0), 0);
    uint64_t *e0 = epoch_order(s);
    assert_false(orders_equal(e0, e1, 100));
    stk_sampler_destroy(&s);
    s = make(&cfg);
    uint64_t *again = epoch_order(s);
    assert_true(orders_equal(e0, again, DRAWS));
    free(e0);
    free(e1);
    free(again);
    stk_sampler_destroy(&s);

    /* num_samples 0 means dataset_len; with replacement it may exceed the
     * positive count. */
    cfg.num_samples = 0;
    s = make(&cfg);
    assert_int_equal(stk_sampler_len(s), 9);
    stk_sampler_destroy(&s);
}

/* Sequential draws proportional to the remaining weights, as
 * torch.multinomial(replacement=False): with weights (1, 2, 3) the order
 * (a, b, c) has probability w_a / 6 * w_b / (6 - w_a). */
static void test_weighted_no_replacement(void **state)
{
    (void)state;
    static const double w3[3] = {1, 2, 3};
    static const int perms[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
    enum { EPOCHS = 12000 };
    stk_sampler_config_t cfg;
    stk_sampler_config_default(&cfg);
    cfg.kind = STK_SAMPLER_WEIGHTED;
    cfg.dataset_len = 3;
    cfg.weights = w3;
    cfg.seed = 21;
    stk_sampler_t *s = make(&cfg);
    uint64_t cnt[6] = {0};
    for (uint64_t e = 0; e < EPOCHS; e++) {
        assert_int_equal(stk_sampler_set_epoch(s, e), 0);
        uint64_t a[3];
        for (uint64_t i = 0; i < 3; i++)
            assert_int_equal(stk_sampler_get(s, i, &a[i]), 0);
        int matched = 0;
        for (int p = 0; p < 6; p++) {
            if (a[0] == (uint64_t)perms[p][0] && a[1] == (uint64_t)perms[p][1] &&
                a[2] == (uint64_t)perms[p][2]) {
                cnt[p]++;
                matched = 1;
            }
        }
        assert_true(matched); /* no repeats */
    }
    stk_sampler_destroy(&s);
    double expect[6];
    for (int p = 0; p < 6; p++) {
        double wa = w3[perms[p][0]], wb = w3[perms[p][1]];
        expect[p] = EPOCHS * (wa / 6.0) * (wb / (6.0 - wa));
    }
    /* 6 orders: 5 degrees of freedom; 20.515 is the p = 0.001 quantile. */
    double x2 = chi_square(cnt, expect, 6);
    if (x2 >= 20.515)
        fail_msg("orders without replacement: chi-square %.2f >= 20.515 (df 5, p 0.001)", x2);

    /* Larger: no repeats, zero weights never drawn, heavier indices come
     * earlier on average. Weights 1..5 on indices 0..4, 0 on 5..6. */
    static const double w7[7] = {1, 2, 3, 4, 5, 0, 0};
    cfg.dataset_len = 7;
    cfg.weights = w7;
    cfg.num_samples = 5;
    s = make(&cfg);
    double possum[5] = {0};
    for (uint64_t e = 0; e < 2000; e++) {
        assert_int_equal(stk_sampler_set_epoch(s, e), 0);
        uint64_t *a = epoch_order(s);
        assert_permutation(a, 5); /* exactly indices 0..4, once each */
        for (uint64_t i = 0; i < 5; i++)
            possum[a[i]] += (double)i;
        free(a);
    }
    for (int i = 0; i < 4; i++)
        assert_true(possum[i] > possum[i + 1]);
    stk_sampler_destroy(&s);

    /* Weights over 600 orders of magnitude still draw each index once. */
    static const double wide[4] = {1e-300, 1.0, 1e300, 4.9e-324};
    cfg.dataset_len = 4;
    cfg.weights = wide;
    cfg.num_samples = 0;
    s = make(&cfg);
    uint64_t *a = epoch_order(s);
    assert_permutation(a, 4);
    assert_int_equal(a[0], 2);
    free(a);
    stk_sampler_destroy(&s);

    /* More than the positive weights without replacement is an error. */
    cfg.dataset_len = 7;
    cfg.weights = w7;
    cfg.num_samples = 6;
    expect_config_error(&cfg, "num_samples");
    cfg.num_samples = 0; /* = dataset_len = 7 > 5 */
    expect_config_error(&cfg, "num_samples");
}

/* Without replacement on a sum tree several levels deep (300 leaves: 300,
 * 19, 2, 1 nodes per level), where a wrong child offset would show. */
static void test_weighted_deep_tree(void **state)
{
    (void)state;
    enum { N = 300, CELLS = 30, EPOCHS = 30000 };
    double w[N];
    for (int i = 0; i < N; i++)
        w[i] = 1.0 + (i % 7) + (i / 100);
    stk_sampler_config_t cfg;
    stk_sampler_config_default(&cfg);
    cfg.kind = STK_SAMPLER_WEIGHTED;
    cfg.dataset_len = N;
    cfg.weights = w;
    cfg.seed = 4;

    /* The whole data set: a permutation. */
    stk_sampler_t *s = make(&cfg);
    uint64_t *a = epoch_order(s);
    assert_permutation(a, N);
    free(a);
    stk_sampler_destroy(&s);

    /* First draws over many epochs, counted in 30 cells of 10 consecutive
     * indices: 29 degrees of freedom; 58.301 is the chi-square quantile for
     * p = 0.001 (fixed seed: deterministic). */
    cfg.num_samples = 1;
    s = make(&cfg);
    uint64_t cnt[CELLS] = {0};
    double total = 0.0, expect[CELLS] = {0};
    for (int i = 0; i < N; i++)
        total += w[i];
    for (int i = 0; i < N; i++)
        expect[i / 10] += EPOCHS * w[i] / total;
    for (uint64_t e = 0; e < EPOCHS; e++) {
        uint64_t v;
        assert_int_equal(stk_sampler_set_epoch(s, e), 0);
        assert_int_equal(stk_sampler_get(s, 0, &v), 0);
        assert_true(v < N);
        cnt[v / 10]++;
    }
    stk_sampler_destroy(&s);
    double x2 = chi_square(cnt, expect, CELLS);
    if (x2 >= 58.301)
        fail_msg("first draws, deep tree: chi-square %.2f >= 58.301 (df 29, p 0.001)", x2);

    /* Zero weights scattered through the tree: exactly the positive ones. */
    for (int i = 0; i < N; i++)
        w[i] = (i % 3 == 1 || i > 250) ? 0.0 : w[i];
    uint64_t positive = 0;
    for (int i = 0; i < N; i++)
        positive += w[i] > 0.0;
    cfg.num_samples = positive;
    s = make(&cfg);
    for (uint64_t e = 0; e < 3; e++) {
        assert_int_equal(stk_sampler_set_epoch(s, e), 0);
        a = epoch_order(s);
        unsigned char seen[N] = {0};
        for (uint64_t i = 0; i < positive; i++) {
            assert_true(a[i] < N);
            assert_true(w[a[i]] > 0.0);
            assert_false(seen[a[i]]);
            seen[a[i]] = 1;
        }
        free(a);
    }
    stk_sampler_destroy(&s);
}

static void test_weighted_errors(void **state)
{
    (void)state;
    stk_sampler_config_t cfg;
    stk_sampler_config_default(&cfg);
    cfg.kind = STK_SAMPLER_WEIGHTED;
    cfg.dataset_len = 3;
    for (int repl = 0; repl < 2; repl++) {
        cfg.replacement = repl;
        cfg.weights = NULL;
        expect_config_error(&cfg, "weights");
        const double neg[3] = {1, -0.5, 1};
        cfg.weights = neg;
        expect_config_error(&cfg, "weights[1]");
        const double nan_w[3] = {1, 1, NAN};
        cfg.weights = nan_w;
        expect_config_error(&cfg, "weights[2]");
        const double inf_w[3] = {INFINITY, 1, 1};
        cfg.weights = inf_w;
        expect_config_error(&cfg, "weights[0]");
        const double zero[3] = {0, 0, 0};
        cfg.weights = zero;
        expect_config_error(&cfg, "weights");
        const double huge[3] = {DBL_MAX, DBL_MAX, 1};
        cfg.weights = huge;
        expect_config_error(&cfg, "weights");
    }
}

/* ---- distributed ------------------------------------------------------- */

/* DistributedSampler.__iter__ of PyTorch, transcribed: pad by repeating the
 * list (math.ceil(padding / n) times when padding exceeds n) or cut to
 * total_size, then take indices[rank:total_size:world]. `list` is the
 * (possibly shuffled) list of n indices. Returns the count. */
static uint64_t torch_distributed(const uint64_t *list, uint64_t n, uint64_t world, uint64_t rank,
                                  int drop_last, uint64_t *out)
{
    uint64_t num_samples;
    if (drop_last && n % world != 0)
        num_samples = (uint64_t)ceil(((double)n - (double)world) / (double)world);
    else
        num_samples = (uint64_t)ceil((double)n / (double)world);
    uint64_t total = num_samples * world;
    uint64_t *idx = malloc((n + total + 1) * sizeof *idx);
    assert_non_null(idx);
    memcpy(idx, list, n * sizeof *idx);
    uint64_t len = n;
    if (!drop_last) {
        uint64_t padding = total - n;
        if (padding <= n) {
            memcpy(idx + len, list, padding * sizeof *idx); /* indices += indices[:padding] */
            len += padding;
        } else {
            uint64_t reps = (uint64_t)ceil((double)padding / (double)n);
            uint64_t *rep = malloc(reps * n * sizeof *rep); /* indices * reps */
            assert_non_null(rep);
            for (uint64_t r = 0; r < reps; r++)
                memcpy(rep + r * n, list, n * sizeof *rep);
            memcpy(idx + len, rep, padding * sizeof *idx); /* [:padding] */
            len += padding;
            free(rep);
        }
    } else {
        len = total; /* indices[:total_size] */
    }
    assert_int_equal(len, total);
    uint64_t k = 0;
    for (uint64_t i = rank; i < total; i += world)
        out[k++] = idx[i];
    free(idx);
    assert_int_equal(k, num_samples);
    return k;
}

static stk_sampler_t *make_dist(uint64_t n, uint32_t world, uint32_t rank, int drop_last, int shuffle,
                                uint64_t seed)
{
    stk_sampler_config_t cfg;
    stk_sampler_config_default(&cfg);
    cfg.kind = STK_SAMPLER_DISTRIBUTED;
    cfg.dataset_len = n;
    cfg.world_size = world;
    cfg.rank = rank;
    cfg.drop_last = drop_last;
    cfg.shuffle = shuffle;
    cfg.seed = seed;
    return make(&cfg);
}

/* Lists written by PyTorch's own DistributedSampler (shuffle=False). */
static void test_distributed_torch_fixture(void **state)
{
    (void)state;
    const char *dir = getenv("STK_TEST_DATA");
    assert_non_null(dir);
    char path[4096];
    snprintf(path, sizeof path, "%s/sampler/distributed_torch.txt", dir);
    FILE *f = fopen(path, "r");
    if (!f)
        fail_msg("cannot open %s", path);
    char line[4096];
    int cases = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#')
            continue;
        unsigned long long n, world, drop, rank;
        int used;
        assert_int_equal(sscanf(line, "%llu %llu %llu %llu :%n", &n, &world, &drop, &rank, &used), 4);
        uint64_t want[64];
        uint64_t nw = 0;
        char *p = line + used, *end;
        for (unsigned long long v = strtoull(p, &end, 10); end != p; v = strtoull(p, &end, 10)) {
            assert_true(nw < 64);
            want[nw++] = v;
            p = end;
        }
        stk_sampler_t *s = make_dist(n, (uint32_t)world, (uint32_t)rank, (int)drop, 0, 0);
        assert_int_equal(stk_sampler_len(s), nw);
        uint64_t *got = epoch_order(s);
        assert_memory_equal(got, want, nw * sizeof *got);
        free(got);
        stk_sampler_destroy(&s);
        cases++;
    }
    fclose(f);
    assert_true(cases >= 50);
}

static void test_distributed_grid(void **state)
{
    (void)state;
    uint64_t list[40], want[40];
    for (uint64_t n = 1; n <= 13; n++) {
        for (uint64_t i = 0; i < n; i++)
            list[i] = i;
        for (uint32_t world = 1; world <= 6; world++) {
            for (int drop = 0; drop < 2; drop++) {
                if (drop && n < world)
                    continue; /* an error, tested below */
                unsigned cover[13] = {0};
                uint64_t used = 0;
                for (uint32_t rank = 0; rank < world; rank++) {
                    stk_sampler_t *s = make_dist(n, world, rank, drop, 0, 0);
                    uint64_t k = torch_distributed(list, n, world, rank, drop, want);
                    assert_int_equal(stk_sampler_len(s), k);
                    uint64_t *got = epoch_order(s);
                    assert_memory_equal(got, want, k * sizeof *got);
                    for (uint64_t i = 0; i < k; i++)
                        cover[got[i]]++;
                    used += k;
                    free(got);
                    stk_sampler_destroy(&s);
                }
                if (drop) {
                    /* Exactly world * floor(n / world), each once: disjoint. */
                    assert_int_equal(used, world * (n / world));
                    for (uint64_t i = 0; i < n; i++)
                        assert_int_equal(cover[i], i < used ? 1 : 0);
                } else {
                    /* All covered; the padding repeats the head. */
                    uint64_t total = world * ((n + world - 1) / world);
                    assert_int_equal(used, total);
                    for (uint64_t i = 0; i < n; i++) {
                        uint64_t copies = total / n + (i < total % n);
                        assert_int_equal(cover[i], copies);
                    }
                    if (n % world == 0) /* no padding: disjoint */
                        for (uint64_t i = 0; i < n; i++)
                            assert_int_equal(cover[i], 1);
                }
            }
        }
    }
    /* The example from the issue: n = 10, world = 3. */
    stk_sampler_t *s = make_dist(10, 3, 1, 0, 0, 0);
    uint64_t *a = epoch_order(s);
    const uint64_t r1[4] = {1, 4, 7, 0};
    assert_memory_equal(a, r1, sizeof r1);
    free(a);
    stk_sampler_destroy(&s);
}

static void test_distributed_shuffle(void **state)
{
    (void)state;
    enum { N = 10, W = 4 };
    /* The permutation all ranks share is the RANDOM sampler's for the
     * same (seed, epoch). */
    stk_sampler_config_t cfg;
    stk_sampler_config_default(&cfg);
    cfg.kind = STK_SAMPLER_RANDOM;
    cfg.dataset_len = N;
    cfg.seed = 99;
    stk_sampler_t *r = make(&cfg);
    stk_sampler_t *ranks[W];
    for (uint32_t k = 0; k < W; k++)
        ranks[k] = make_dist(N, W, k, 0, 1, 99);
    uint64_t *first = NULL;
    for (uint64_t e = 0; e < 3; e++) {
        assert_int_equal(stk_sampler_set_epoch(r, e), 0);
        uint64_t *perm = epoch_order(r);
        assert_permutation(perm, N);
        for (uint32_t k = 0; k < W; k++) {
            assert_int_equal(stk_sampler_set_epoch(ranks[k], e), 0);
            uint64_t want[N];
            uint64_t cnt = torch_distributed(perm, N, W, k, 0, want);
            uint64_t *got = epoch_order(ranks[k]);
            assert_int_equal(stk_sampler_len(ranks[k]), cnt);
            assert_memory_equal(got, want, cnt * sizeof *got);
            free(got);
        }
        if (!first) {
            first = perm;
        } else {
            assert_false(orders_equal(first, perm, N));
            free(perm);
        }
    }
    free(first);
    for (uint32_t k = 0; k < W; k++)
        stk_sampler_destroy(&ranks[k]);
    stk_sampler_destroy(&r);

    /* drop_last with shuffle: ranks disjoint, 8 of 10 used. */
    unsigned cover[N] = {0};
    for (uint32_t k = 0; k < W; k++) {
        stk_sampler_t *s = make_dist(N, W, k, 1, 1, 5);
        uint64_t *got = epoch_order(s);
        for (uint64_t i = 0; i < stk_sampler_len(s); i++)
            cover[got[i]]++;
        free(got);
        stk_sampler_destroy(&s);
    }
    unsigned total = 0;
    for (int i = 0; i < N; i++) {
        assert_true(cover[i] <= 1);
        total += cover[i];
    }
    assert_int_equal(total, 8);
}

static void test_distributed_errors(void **state)
{
    (void)state;
    stk_sampler_config_t cfg;
    stk_sampler_config_default(&cfg);
    cfg.kind = STK_SAMPLER_DISTRIBUTED;
    cfg.dataset_len = 10;
    cfg.world_size = 0;
    expect_config_error(&cfg, "world_size");
    cfg.world_size = 4;
    cfg.rank = 4;
    expect_config_error(&cfg, "rank");
    cfg.rank = 0;
    cfg.dataset_len = 3;
    cfg.drop_last = 1;
    expect_config_error(&cfg, "drop_last");
    cfg.dataset_len = UINT64_MAX - 1;
    cfg.drop_last = 0;
    expect_config_error(&cfg, "dataset_len");
}

/* ---- batches and resume ------------------------------------------------ */

static void check_batches(stk_sampler_t *s, uint64_t bs, int drop_last)
{
    stk_batch_sampler_t *b = NULL;
    assert_int_equal(stk_batch_sampler_create(&b, s, bs, drop_last), 0);
    uint64_t len = stk_sampler_len(s);
    uint64_t want_batches = drop_last ? len / bs : (len + bs - 1) / bs;
    assert_int_equal(stk_batch_sampler_len(b), want_batches);
    assert_int_equal(stk_batch_sampler_batch_size(b), bs);
    uint64_t *flat = epoch_order(s);
    uint64_t *batch = malloc(bs * sizeof *batch);
    uint64_t *batch2 = malloc(bs * sizeof *batch2);
    size_t n, n2;
    uint64_t k = 0, pos = 0;
    int rc;
    while ((rc = stk_batch_sampler_next(b, batch, &n)) == 0) {
        assert_int_equal(stk_batch_sampler_tell(b), k + 1);
        uint64_t full = len - pos >= bs;
        assert_int_equal(n, full ? bs : len - pos);
        assert_true(full || !drop_last);
        assert_memory_equal(batch, flat + pos, n * sizeof *batch);
        assert_int_equal(stk_batch_sampler_get(b, k, batch2, &n2), 0);
        assert_int_equal(n2, n);
        assert_memory_equal(batch, batch2, n * sizeof *batch);
        pos += n;
        k++;
    }
    assert_int_equal(rc, STK_DONE);
    assert_int_equal(n, 0);
    assert_int_equal(k, want_batches);
    assert_int_equal(stk_batch_sampler_next(b, batch, &n), STK_DONE);
    assert_int_equal(pos, drop_last ? want_batches * bs : len);
    free(batch);
    free(batch2);
    free(flat);
    stk_batch_sampler_destroy(&b);
    assert_null(b);
}

static void test_batch_sampler(void **state)
{
    (void)state;
    static const double w[5] = {1, 0, 2, 3, 4};
    stk_sampler_config_t cfg;
    stk_sampler_config_default(&cfg);
    cfg.dataset_len = 23;
    cfg.seed = 8;
    for (int kind = STK_SAMPLER_SEQUENTIAL; kind <= STK_SAMPLER_DISTRIBUTED; kind++) {
        cfg.kind = (stk_sampler_kind_t)kind;
        if (kind == STK_SAMPLER_WEIGHTED) {
            cfg.dataset_len = 5;
            cfg.weights = w;
            cfg.replacement = 1;
            cfg.num_samples = 23;
        } else if (kind == STK_SAMPLER_SUBSET_RANDOM) {
            static const uint64_t sub[11] = {22, 0, 5, 6, 7, 8, 9, 10, 11, 12, 13};
            cfg.indices = sub;
            cfg.num_indices = 11;
        } else if (kind == STK_SAMPLER_DISTRIBUTED) {
            cfg.dataset_len = 23;
            cfg.world_size = 3;
            cfg.rank = 2;
            cfg.shuffle = 1;
        }
        stk_sampler_t *s = make(&cfg);
        const uint64_t sizes[] = {1, 4, 5, 8, stk_sampler_len(s)};
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            check_batches(s, sizes[i], 0);
            check_batches(s, sizes[i], 1);
        }
        /* Batch larger than the epoch: one partial batch without drop_last. */
        check_batches(s, stk_sampler_len(s) + 3, 0);
        stk_sampler_destroy(&s);
    }

    /* set_epoch through the batch sampler changes the order and rewinds. */
    stk_sampler_config_default(&cfg);
    cfg.kind = STK_SAMPLER_RANDOM;
    cfg.dataset_len = 50;
    stk_sampler_t *s = make(&cfg);
    stk_batch_sampler_t *b = NULL;
    assert_int_equal(stk_batch_sampler_create(&b, s, 10, 0), 0);
    uint64_t b0[10], b1[10];
    size_t n;
    assert_int_equal(stk_batch_sampler_next(b, b0, &n), 0);
    assert_int_equal(stk_batch_sampler_set_epoch(b, 1), 0);
    assert_int_equal(stk_sampler_epoch(s), 1);
    assert_int_equal(stk_batch_sampler_tell(b), 0);
    assert_int_equal(stk_batch_sampler_next(b, b1, &n), 0);
    assert_false(orders_equal(b0, b1, 10));
    stk_batch_sampler_destroy(&b);
    stk_sampler_destroy(&s);
}

/* A loader saves (epoch, cursor); a new process rebuilds the sampler from
 * its config, sets the epoch, seeks, and must continue identically. */
static void test_resume(void **state)
{
    (void)state;
    static const double w[6] = {3, 1, 4, 1, 5, 9};
    stk_sampler_config_t cfg[3];
    for (int i = 0; i < 3; i++)
        stk_sampler_config_default(&cfg[i]);
    cfg[0].kind = STK_SAMPLER_RANDOM;
    cfg[0].dataset_len = 101;
    cfg[0].seed = 17;
    cfg[1].kind = STK_SAMPLER_WEIGHTED;
    cfg[1].dataset_len = 6;
    cfg[1].weights = w;
    cfg[1].replacement = 1;
    cfg[1].num_samples = 101;
    cfg[2].kind = STK_SAMPLER_DISTRIBUTED;
    cfg[2].dataset_len = 303;
    cfg[2].world_size = 3;
    cfg[2].rank = 1;
    cfg[2].shuffle = 1;
    for (int c = 0; c < 3; c++) {
        stk_sampler_t *s = make(&cfg[c]);
        assert_int_equal(stk_sampler_set_epoch(s, 4), 0);
        uint64_t whole[101], part[101];
        assert_int_equal(stk_sampler_next(s, whole, 101), 101);
        assert_int_equal(stk_sampler_next(s, whole, 101), 0); /* epoch done */
        assert_int_equal(stk_sampler_set_epoch(s, 4), 0);     /* rewinds */
        assert_int_equal(stk_sampler_tell(s), 0);
        assert_int_equal(stk_sampler_next(s, part, 37), 37);
        uint64_t saved = stk_sampler_tell(s);
        assert_int_equal(saved, 37);
        stk_sampler_destroy(&s);

        s = make(&cfg[c]);
        assert_int_equal(stk_sampler_set_epoch(s, 4), 0);
        assert_int_equal(stk_sampler_seek(s, saved), 0);
        assert_int_equal(stk_sampler_next(s, part + 37, 200), 101 - 37);
        assert_memory_equal(part, whole, sizeof whole);
        assert_int_equal(stk_sampler_seek(s, 101), 0); /* the end is a valid place */
        assert_int_equal(stk_sampler_next(s, part, 1), 0);

        /* Batch sampler, in batches. */
        stk_batch_sampler_t *b = NULL;
        assert_int_equal(stk_batch_sampler_create(&b, s, 8, 0), 0);
        assert_int_equal(stk_batch_sampler_set_epoch(b, 4), 0);
        uint64_t bat[8];
        size_t n;
        for (int k = 0; k < 5; k++)
            assert_int_equal(stk_batch_sampler_next(b, bat, &n), 0);
        uint64_t bsaved = stk_batch_sampler_tell(b);
        assert_int_equal(bsaved, 5);
        stk_batch_sampler_destroy(&b);
        stk_sampler_destroy(&s);

        s = make(&cfg[c]);
        assert_int_equal(stk_batch_sampler_create(&b, s, 8, 0), 0);
        assert_int_equal(stk_batch_sampler_set_epoch(b, 4), 0);
        assert_int_equal(stk_batch_sampler_seek(b, bsaved), 0);
        uint64_t pos = 40;
        int rc;
        while ((rc = stk_batch_sampler_next(b, bat, &n)) == 0) {
            assert_memory_equal(bat, whole + pos, n * sizeof *bat);
            pos += n;
        }
        assert_int_equal(rc, STK_DONE);
        assert_int_equal(pos, 101);
        assert_int_equal(stk_batch_sampler_seek(b, 13), 0); /* 13 batches = the end */
        assert_int_equal(stk_batch_sampler_next(b, bat, &n), STK_DONE);
        stk_batch_sampler_destroy(&b);
        stk_sampler_destroy(&s);
    }
}

/* ---- concurrency ------------------------------------------------------- */

struct reader {
    const stk_sampler_t *s;
    const uint64_t *want;
    int bad;
};

static void *read_all(void *arg)
{
    struct reader *r = arg;
    uint64_t len = stk_sampler_len(r->s);
    for (int round = 0; round < 4; round++) {
        for (uint64_t i = 0; i < len; i++) {
            uint64_t v;
            if (stk_sampler_get(r->s, (i * 7919 + (uint64_t)round) % len, &v) != 0 ||
                v != r->want[(i * 7919 + (uint64_t)round) % len])
                r->bad++;
        }
    }
    return NULL;
}

static void test_concurrent_get(void **state)
{
    (void)state;
    static const double w[4] = {1, 2, 3, 4};
    stk_sampler_config_t cfg;
    stk_sampler_config_default(&cfg);
    cfg.kind = STK_SAMPLER_WEIGHTED;
    cfg.dataset_len = 4;
    cfg.weights = w;
    cfg.replacement = 1;
    cfg.num_samples = 3000;
    stk_sampler_t *s = make(&cfg);
    uint64_t *want = epoch_order(s);
    pthread_t th[4];
    struct reader rd[4];
    for (int i = 0; i < 4; i++) {
        rd[i] = (struct reader){.s = s, .want = want};
        assert_int_equal(pthread_create(&th[i], NULL, read_all, &rd[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(rd[i].bad, 0);
    }
    free(want);
    stk_sampler_destroy(&s);
}

/* ---- errors ------------------------------------------------------------ */

static void test_errors(void **state)
{
    (void)state;
    stk_sampler_config_t cfg;
    stk_sampler_config_default(&cfg);
    cfg.dataset_len = 10;
    stk_sampler_t *s = NULL;

    assert_int_equal(stk_sampler_create(NULL, &cfg), -EINVAL);
    s = (stk_sampler_t *)&cfg;
    assert_int_equal(stk_sampler_create(&s, NULL), -EINVAL);
    assert_null(s);
    cfg.kind = (stk_sampler_kind_t)42;
    expect_config_error(&cfg, "kind");
    cfg.kind = STK_SAMPLER_RANDOM;
    cfg.num_samples = UINT64_MAX; /* without replacement: kept in memory */
    expect_config_error(&cfg, "num_samples");
    cfg.num_samples = 0;

    s = make(&cfg);
    uint64_t v = 12345, buf[4];
    assert_int_equal(stk_sampler_get(s, 10, &v), -ERANGE);
    assert_non_null(strstr(stk_error_message(), "position 10"));
    assert_int_equal(v, 12345);
    assert_int_equal(stk_sampler_get(s, 0, NULL), -EINVAL);
    assert_int_equal(stk_sampler_get(NULL, 0, &v), -EINVAL);
    assert_int_equal(stk_sampler_seek(s, 11), -ERANGE);
    assert_int_equal(stk_sampler_seek(NULL, 0), -EINVAL);
    assert_int_equal(stk_sampler_set_epoch(NULL, 1), -EINVAL);
    assert_int_equal(stk_sampler_next(NULL, buf, 4), 0);
    assert_int_equal(stk_sampler_next(s, NULL, 4), 0);
    assert_int_equal(stk_sampler_tell(s), 0);
    assert_int_equal(stk_sampler_next(s, buf, 0), 0);
    assert_int_equal(stk_sampler_len(NULL), 0);
    assert_int_equal(stk_sampler_epoch(NULL), 0);
    assert_int_equal(stk_sampler_tell(NULL), 0);

    stk_batch_sampler_t *b = NULL;
    assert_int_equal(stk_batch_sampler_create(NULL, s, 2, 0), -EINVAL);
    assert_int_equal(stk_batch_sampler_create(&b, NULL, 2, 0), -EINVAL);
    assert_int_equal(stk_batch_sampler_create(&b, s, 0, 0), STK_ECONFIG);
    assert_non_null(strstr(stk_error_message(), "batch_size"));
    assert_int_equal(stk_batch_sampler_create(&b, s, 11, 1), STK_ECONFIG);
    assert_non_null(strstr(stk_error_message(), "drop_last"));
    assert_int_equal(stk_batch_sampler_create(&b, s, UINT64_MAX, 0), STK_ECONFIG);
    assert_null(b);
    assert_int_equal(stk_batch_sampler_create(&b, s, 4, 1), 0);
    size_t n = 99;
    assert_int_equal(stk_batch_sampler_get(b, 2, buf, &n), -ERANGE);
    assert_int_equal(n, 99);
    assert_int_equal(stk_batch_sampler_get(NULL, 0, buf, &n), -EINVAL);
    assert_int_equal(stk_batch_sampler_get(b, 0, NULL, &n), -EINVAL);
    assert_int_equal(stk_batch_sampler_get(b, 0, buf, NULL), -EINVAL);
    assert_int_equal(stk_batch_sampler_next(NULL, buf, &n), -EINVAL);
    assert_int_equal(stk_batch_sampler_next(b, NULL, &n), -EINVAL);
    assert_int_equal(stk_batch_sampler_next(b, buf, NULL), -EINVAL);
    assert_int_equal(stk_batch_sampler_seek(b, 3), -ERANGE);
    assert_int_equal(stk_batch_sampler_seek(NULL, 0), -EINVAL);
    assert_int_equal(stk_batch_sampler_set_epoch(NULL, 0), -EINVAL);
    assert_int_equal(stk_batch_sampler_len(NULL), 0);
    assert_int_equal(stk_batch_sampler_batch_size(NULL), 0);
    assert_int_equal(stk_batch_sampler_tell(NULL), 0);
    stk_batch_sampler_destroy(&b);
    stk_batch_sampler_destroy(&b); /* NULL-safe */
    stk_batch_sampler_destroy(NULL);
    stk_sampler_destroy(&s);
    stk_sampler_destroy(&s);
    stk_sampler_destroy(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_default),
        cmocka_unit_test(test_sequential),
        cmocka_unit_test(test_permutation_sizes),
        cmocka_unit_test(test_permutation_uniform),
        cmocka_unit_test(test_orders_are_functions),
        cmocka_unit_test(test_golden),
        cmocka_unit_test(test_random_num_samples),
        cmocka_unit_test(test_subset_random),
        cmocka_unit_test(test_weighted_replacement),
        cmocka_unit_test(test_weighted_no_replacement),
        cmocka_unit_test(test_weighted_deep_tree),
        cmocka_unit_test(test_weighted_errors),
        cmocka_unit_test(test_distributed_torch_fixture),
        cmocka_unit_test(test_distributed_grid),
        cmocka_unit_test(test_distributed_shuffle),
        cmocka_unit_test(test_distributed_errors),
        cmocka_unit_test(test_batch_sampler),
        cmocka_unit_test(test_resume),
        cmocka_unit_test(test_concurrent_get),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
