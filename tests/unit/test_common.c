/* SPDX-License-Identifier: MIT */
/* common/: status codes, error context, Philox known answers, RNG
 * uniformity, dtype names and half-precision conversions. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>

#include "internal.h"

static void test_error_names(void **state)
{
    (void)state;
    assert_string_equal(stk_err_name(STK_EDATA), "STK_EDATA");
    assert_string_equal(stk_err_name(-ENOENT), "ENOENT");
    assert_string_equal(stk_err_name(STK_DONE), "STK_DONE");
    assert_string_equal(stk_strerror(STK_ECONFIG), "bad configuration");
    assert_string_equal(stk_strerror(-ENOENT), "No such file or directory");
    assert_string_equal(stk_err_name(-99999), "STK_EUNKNOWN");
}

static void test_error_context(void **state)
{
    (void)state;
    stk_error_clear();
    assert_string_equal(stk_error_message(), "");
    int rc = stk__error(-ENOENT, "open %s", "/nope");
    assert_int_equal(rc, -ENOENT);
    assert_string_equal(stk_error_message(), "open /nope");
    rc = stk__error_prefix(rc, "shard %d", 3);
    assert_string_equal(stk_error_message(), "shard 3: open /nope");
}

static int log_calls;
static void count_log(stk_log_level_t level, const char *msg, void *user)
{
    (void)level;
    (void)msg;
    *(int *)user += 1;
}

static void test_logging(void **state)
{
    (void)state;
    stk__log(STK_LOG_ERROR, "nobody listens");
    stk_log_set_callback(count_log, &log_calls, STK_LOG_WARN);
    stk__log(STK_LOG_WARN, "heard");
    stk__log(STK_LOG_INFO, "filtered");
    stk_log_set_callback(NULL, NULL, STK_LOG_INFO);
    assert_int_equal(log_calls, 1);
}

/* Known answers from the Random123 distribution (kat_vectors). */
static void test_philox_kat(void **state)
{
    (void)state;
    uint32_t out[4];
    stk_philox4x32(0, 0, 0, out);
    assert_int_equal(out[0], 0x6627e8d5u);
    assert_int_equal(out[1], 0xe169c58du);
    assert_int_equal(out[2], 0xbc57ac4cu);
    assert_int_equal(out[3], 0x9b00dbd8u);
    stk_philox4x32(UINT64_MAX, UINT64_MAX, UINT64_MAX, out);
    assert_int_equal(out[0], 0x408f276du);
    assert_int_equal(out[1], 0x41c83b0eu);
    assert_int_equal(out[2], 0xa20bc7c6u);
    assert_int_equal(out[3], 0x6d5451fdu);
    stk_philox4x32(0x299f31d0a4093822ull, 0x0370734413198a2eull, 0x85a308d3243f6a88ull, out);
    assert_int_equal(out[0], 0xd16cfe09u);
    assert_int_equal(out[1], 0x94fdccebu);
    assert_int_equal(out[2], 0x5001e420u);
    assert_int_equal(out[3], 0x24126ea1u);
}

/* Chi-square over 10 bins for stk_rng_below(10): with 9 degrees of freedom
 * P(chi2 > 27.88) = 0.001; a fixed key makes the test deterministic. */
static void test_rng_below_uniform(void **state)
{
    (void)state;
    stk_rng_t r;
    unsigned counts[10] = {0};
    const unsigned n = 100000;
    stk_rng_init(&r, 42, 7);
    for (unsigned i = 0; i < n; i++)
        counts[stk_rng_below(&r, 10)]++;
    double chi2 = 0;
    for (int b = 0; b < 10; b++) {
        double d = counts[b] - n / 10.0;
        chi2 += d * d / (n / 10.0);
    }
    assert_true(chi2 < 27.88);
    for (unsigned i = 0; i < 1000; i++) {
        float u = stk_rng_uniform(&r);
        double d = stk_rng_uniform_f64(&r);
        assert_true(u >= 0.0f && u < 1.0f);
        assert_true(d >= 0.0 && d < 1.0);
        assert_true(stk_rng_below(&r, 1ull << 40) < (1ull << 40));
    }
}

static void test_rng_streams(void **state)
{
    (void)state;
    stk_rng_t a, b, c;
    stk_rng_init(&a, 1, 2);
    stk_rng_init(&b, 1, 2);
    stk_rng_init(&c, 1, 3);
    int differ = 0;
    for (int i = 0; i < 64; i++) {
        uint32_t x = stk_rng_u32(&a);
        assert_int_equal(x, stk_rng_u32(&b));
        differ += x != stk_rng_u32(&c);
    }
    assert_true(differ > 60);
    assert_int_not_equal(stk_rng_mix(1, 2), stk_rng_mix(2, 1));
}

static void test_dtypes(void **state)
{
    (void)state;
    assert_int_equal(stk_dtype_size(STK_DTYPE_BF16), 2);
    assert_int_equal(stk_dtype_size(STK_DTYPE_I64), 8);
    assert_int_equal(stk_dtype_size((stk_dtype_t)99), 0);
    for (int d = STK_DTYPE_U8; d <= STK_DTYPE_F32; d++)
        assert_int_equal(stk_dtype_from_name(stk_dtype_name((stk_dtype_t)d)), d);
    assert_int_equal(stk_dtype_from_name("f64"), STK_DTYPE_INVALID);
}

static void test_half(void **state)
{
    (void)state;
    assert_int_equal(stk_f32_to_f16(1.0f), 0x3C00);
    assert_int_equal(stk_f32_to_f16(-2.0f), 0xC000);
    assert_int_equal(stk_f32_to_f16(65504.0f), 0x7BFF);
    assert_int_equal(stk_f32_to_f16(1e6f), 0x7C00);
    assert_int_equal(stk_f32_to_f16(5.9604645e-8f), 0x0001);
    assert_int_equal(stk_f32_to_f16(1.0f + 1.0f / 2048.0f), 0x3C00); /* tie to even */
    assert_true(isnan(stk_f16_to_f32(stk_f32_to_f16(NAN))));
    /* Every finite half round-trips exactly. */
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7C00) == 0x7C00)
            continue;
        assert_int_equal(stk_f32_to_f16(stk_f16_to_f32((uint16_t)h)), h);
    }
    assert_int_equal(stk_f32_to_bf16(1.0f), 0x3F80);
    assert_true(stk_bf16_to_f32(stk_f32_to_bf16(3.140625f)) == 3.140625f);
    assert_int_equal(stk_f32_to_bf16(1.00390625f), 0x3F80); /* tie to even */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_names),     cmocka_unit_test(test_error_context),
        cmocka_unit_test(test_logging),         cmocka_unit_test(test_philox_kat),
        cmocka_unit_test(test_rng_below_uniform), cmocka_unit_test(test_rng_streams),
        cmocka_unit_test(test_dtypes),          cmocka_unit_test(test_half),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
