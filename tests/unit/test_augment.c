/* SPDX-License-Identifier: MIT */
/* augment/: spec parsing and canonical text, every bad-spec error, each
 * core against a plain reference or torchvision fixtures
 * (tools/gen_augment_fixtures.py), determinism and uniformity of the draws,
 * fused passes against the plain chain, and batch mixup / cutmix. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "augment/augment_internal.h"

/* The references below compute x * s + b as augment/ does: a rounded
 * multiply, then a rounded add (no FMA contraction, whatever -march). */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif

static const stk_image_desc_t gray28 = {1, 28, 28, STK_DTYPE_U8, STK_LAYOUT_CHW};
static const stk_image_desc_t rgb32 = {3, 32, 32, STK_DTYPE_U8, STK_LAYOUT_CHW};

static void fill_random(uint8_t *p, size_t n, uint64_t key)
{
    stk_rng_t r;
    stk_rng_init(&r, key, 99);
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)stk_rng_u32(&r);
}

static size_t desc_bytes(const stk_image_desc_t *d)
{
    return (size_t)d->c * d->h * d->w * stk_dtype_size(d->dtype);
}

/* ---- spec text -------------------------------------------------------- */

static void expect_canonical(const char *spec, const stk_image_desc_t *in, const char *want)
{
    stk_augment_t *a = NULL, *b = NULL;
    char t1[512], t2[512];
    int rc = stk_augment_create(&a, spec, in, 0);
    if (rc)
        fail_msg("create '%s': %s", spec, stk_error_message());
    assert_int_equal(stk_augment_format(a, t1, sizeof t1), 0);
    assert_string_equal(t1, want);
    assert_int_equal(stk_augment_create(&b, t1, in, 0), 0);
    assert_int_equal(stk_augment_format(b, t2, sizeof t2), 0);
    assert_string_equal(t1, t2);
    stk_augment_destroy(&a);
    stk_augment_destroy(&b);
    assert_null(a);
}

static void test_format_fixed_point(void **state)
{
    (void)state;
    expect_canonical("crop:28,pad=2|hflip|normalize:mean=0.2860,std=0.3530", &gray28,
                     "crop:28,pad=2|hflip|normalize:mean=0.286,std=0.353");
    expect_canonical("", &gray28, "");
    expect_canonical("crop:28x28,pad=0,mode=zero|hflip:p=0.5|vflip:p=0.25", &gray28,
                     "crop:28|hflip|vflip:p=0.25");
    expect_canonical("crop:24x20,pad=3,mode=reflect", &gray28, "crop:24x20,pad=3,mode=reflect");
    expect_canonical("crop:28,mode=reflect", &gray28, "crop:28");
    expect_canonical("rrcrop:224,scale=0.08/1,ratio=0.75/1.3333333333333333", &rgb32, "rrcrop:224");
    expect_canonical("rrcrop:16x24,scale=0.25/1.0,ratio=0.5/2", &rgb32,
                     "rrcrop:16x24,scale=0.25/1,ratio=0.5/2");
    expect_canonical("resize:64|centercrop:56|rot90|rot90:k=3|jitter:contrast=0.4,brightness=0.2",
                     &rgb32, "resize:64|centercrop:56|rot90|rot90:k=3|jitter:brightness=0.2,contrast=0.4");
    expect_canonical("cutout:8,p=1,fill=0|cutout:4x6,p=0.3,fill=127", &rgb32,
                     "cutout:8|cutout:4x6,p=0.3,fill=127");
    expect_canonical("normalize:mean=0.485/0.456/0.406,std=0.229/0.224/0.225,dtype=bf16", &rgb32,
                     "normalize:mean=0.485/0.456/0.406,std=0.229/0.224/0.225,dtype=bf16");
    expect_canonical("normalize:std=1e-1,mean=-5E-1,dtype=f32", &rgb32,
                     "normalize:mean=-0.5,std=0.1");

    stk_augment_t *a = NULL;
    char small[8];
    assert_int_equal(stk_augment_create(&a, "crop:28,pad=2|hflip", &gray28, 0), 0);
    assert_int_equal(stk_augment_format(a, small, sizeof small), -ENOSPC);
    assert_string_equal(small, "crop:28");
    assert_non_null(strstr(stk_error_message(), "20 bytes"));
    assert_int_equal(stk_augment_format(a, NULL, 4), -EINVAL);
    stk_augment_destroy(&a);
    stk_augment_destroy(&a);
    stk_augment_destroy(NULL);
}

static void expect_bad(const char *spec, const stk_image_desc_t *in, const char *needle)
{
    stk_augment_t *a = (stk_augment_t *)&a;
    stk_error_clear();
    int rc = stk_augment_create(&a, spec, in, 0);
    if (rc != STK_ECONFIG)
        fail_msg("'%s': rc %d (%s), want STK_ECONFIG", spec, rc, stk_error_message());
    assert_null(a);
    if (!strstr(stk_error_message(), needle))
        fail_msg("'%s': message '%s' lacks '%s'", spec, stk_error_message(), needle);
}

static void test_bad_specs(void **state)
{
    (void)state;
    expect_bad("blur:3", &gray28, "unknown transform 'blur'");
    expect_bad("crop:28|blur", &gray28, "stage 2 'blur'");
    expect_bad("crop", &gray28, "'crop' needs a size");
    expect_bad("crop:28,pad=x", &gray28, "bad value 'x' for 'pad'");
    expect_bad("crop:28,pad=-1", &gray28, "bad value '-1' for 'pad'");
    expect_bad("crop:0", &gray28, "bad value '0' for 'size'");
    expect_bad("crop:28x", &gray28, "bad value '28x' for 'size'");
    expect_bad("crop:40,pad=2", &gray28, "'crop:40,pad=2': crop 40x40 is larger than the padded image 32x32");
    expect_bad("crop:28,pad=2,pad=3", &gray28, "'pad' given twice");
    expect_bad("crop:28,mode=mirror", &gray28, "bad value 'mirror' for 'mode'");
    expect_bad("crop:28,pad=28,mode=reflect", &gray28, "reflect padding 28");
    expect_bad("crop:28,", &gray28, "empty parameter in stage 1 'crop:28,'");
    expect_bad("crop:28||hflip", &gray28, "empty stage 2");
    expect_bad("|hflip", &gray28, "empty stage 1");
    expect_bad("hflip:p=2", &gray28, "bad value '2' for 'p'");
    expect_bad("hflip:p=", &gray28, "bad value '' for 'p'");
    expect_bad("hflip:q=1", &gray28, "unknown parameter 'q' for 'hflip'");
    expect_bad("hflip:0.3", &gray28, "unexpected value '0.3'");
    expect_bad("centercrop:30", &gray28, "crop 30x30 is larger than the image 28x28");
    expect_bad("rrcrop:24,scale=0.5", &rgb32, "bad value '0.5' for 'scale'");
    expect_bad("rrcrop:24,ratio=2/1", &rgb32, "bad value '2/1' for 'ratio'");
    expect_bad("resize:16x9|rot90", &rgb32, "'rot90': a random quarter turn needs a square image");
    expect_bad("rot90:k=4", &rgb32, "bad value '4' for 'k'");
    expect_bad("jitter", &rgb32, "'jitter' needs brightness=");
    expect_bad("jitter:brightness=-1", &rgb32, "bad value '-1' for 'brightness'");
    expect_bad("cutout:8,fill=256", &rgb32, "bad value '256' for 'fill'");
    expect_bad("normalize:mean=0.5", &gray28, "'normalize' needs std=");
    expect_bad("normalize:std=0.5", &gray28, "'normalize' needs mean=");
    expect_bad("normalize:mean=0.5,std=0", &gray28, "std must be > 0");
    expect_bad("normalize:mean=0.5,std=nan", &gray28, "bad value 'nan' for 'std'");
    expect_bad("normalize:mean=0.5/0.4,std=0.5", &gray28, "mean has 2 values and std 1");
    expect_bad("normalize:mean=0.5,std=0.5,dtype=f64", &gray28, "bad value 'f64' for 'dtype'");
    expect_bad("normalize:mean=0.5,std=1e-300", &gray28, "overflow f32");
    expect_bad("normalize:mean=0.5,std=0.5|hflip", &gray28, "'normalize' must be the last stage");
    expect_bad("normalize:mean=1/2/3/4/5/6/7/8/9/10/11/12/13/14/15/16/17,std=1", &gray28,
               "at most 16 values");
    char many[400] = "";
    for (int i = 0; i < 33; i++)
        strcat(many, i ? "|hflip" : "hflip");
    expect_bad(many, &gray28, "more than 32 stages");

    stk_augment_t *a = NULL;
    stk_image_desc_t bad = gray28;
    bad.dtype = STK_DTYPE_F32;
    assert_int_equal(stk_augment_create(&a, "hflip", &bad, 0), -EINVAL);
    bad = gray28;
    bad.h = 0;
    assert_int_equal(stk_augment_create(&a, "hflip", &bad, 0), -EINVAL);
    bad = gray28;
    bad.layout = (stk_layout_t)7;
    assert_int_equal(stk_augment_create(&a, "hflip", &bad, 0), -EINVAL);
    assert_int_equal(stk_augment_create(NULL, "hflip", &gray28, 0), -EINVAL);
    assert_int_equal(stk_augment_create(&a, NULL, &gray28, 0), -EINVAL);
    assert_int_equal(stk_augment_create(&a, "hflip", &gray28, 0x80), -EINVAL);
    assert_int_equal(stk_augment_create(&a, "hflip", &gray28, 0), 0);
    uint8_t img[784], out[784];
    assert_int_equal(stk_augment_apply(a, NULL, out, NULL, 1, 0, 0), -EINVAL);
    assert_int_equal(stk_augment_apply(a, img, NULL, NULL, 1, 0, 0), -EINVAL);
    assert_int_equal(stk_augment_apply(a, img, img, NULL, 1, 0, 0), -EINVAL);
    assert_int_equal(stk_augment_output_bytes(NULL), 0);
    assert_int_equal(stk_augment_scratch_bytes(NULL), 0);
    assert_int_equal(stk_augment_pass_count(NULL), 0);
    /* A 16-channel stage is long, and fine. */
    stk_augment_t *wide = NULL;
    const stk_image_desc_t d16 = {16, 4, 4, STK_DTYPE_U8, STK_LAYOUT_CHW};
    assert_int_equal(stk_augment_create(&wide, "normalize:mean=0.4851/0.4561/0.4061/0.4851/0.4561/"
                                               "0.4061/0.4851/0.4561/0.4061/0.4851/0.4561/0.4061/"
                                               "0.4851/0.4561/0.4061/0.4851,std=0.2291/0.2241/"
                                               "0.2251/0.2291/0.2241/0.2251/0.2291/0.2241/0.2251/"
                                               "0.2291/0.2241/0.2251/0.2291/0.2241/0.2251/0.2291",
                                       &d16, 0),
                     0);
    stk_augment_destroy(&wide);
    stk_augment_destroy(&a);
}

/* Random specs built from the grammar's pieces and from junk: create
 * either fails with STK_ECONFIG and a message, or succeeds and then its
 * canonical text is a fixed point. Runs under ASan in CI. */
static void test_random_specs(void **state)
{
    (void)state;
    static const char *const names[] = {"crop", "centercrop", "rrcrop", "resize", "hflip",
                                        "vflip", "rot90", "jitter", "cutout", "normalize",
                                        "blur", ""};
    static const char *const keys[] = {"pad", "mode", "scale", "ratio", "p", "k", "brightness",
                                       "contrast", "fill", "mean", "std", "dtype", "x", ""};
    static const char *const vals[] = {"0", "1", "2", "3", "8", "16", "24", "30x20", "0.5", "1e3",
                                       "-1", "0.25/0.75", "0.5/0.5/0.5", "reflect", "zero", "bf16",
                                       "f16", "99999999999", "=", ""};
    stk_rng_t r;
    stk_rng_init(&r, 2024, 0);
    int ok = 0;
    for (int iter = 0; iter < 3000; iter++) {
        char spec[512] = "";
        int stages = 1 + (int)stk_rng_below(&r, 4);
        for (int st = 0; st < stages; st++) {
            if (st)
                strcat(spec, "|");
            strcat(spec, names[stk_rng_below(&r, STK__ARRAY_LEN(names))]);
            int params = (int)stk_rng_below(&r, 4);
            for (int q = 0; q < params; q++) {
                strcat(spec, q ? "," : ":");
                if (stk_rng_below(&r, 3)) {
                    strcat(spec, keys[stk_rng_below(&r, STK__ARRAY_LEN(keys))]);
                    strcat(spec, "=");
                }
                strcat(spec, vals[stk_rng_below(&r, STK__ARRAY_LEN(vals))]);
            }
        }
        stk_augment_t *a = NULL;
        stk_error_clear();
        int rc = stk_augment_create(&a, spec, &rgb32, 0);
        if (rc) {
            assert_int_equal(rc, STK_ECONFIG);
            assert_true(strlen(stk_error_message()) > 10);
            assert_null(a);
            continue;
        }
        char t1[1024], t2[1024];
        stk_augment_t *b = NULL;
        assert_int_equal(stk_augment_format(a, t1, sizeof t1), 0);
        if (stk_augment_create(&b, t1, &rgb32, 0))
            fail_msg("'%s' -> '%s' does not parse: %s", spec, t1, stk_error_message());
        assert_int_equal(stk_augment_format(b, t2, sizeof t2), 0);
        assert_string_equal(t1, t2);
        stk_augment_destroy(&a);
        stk_augment_destroy(&b);
        ok++;
    }
    if (ok <= 40) /* 85 with this seed */
        fail_msg("only %d of 3000 random specs were valid", ok);
}

/* ---- cores against plain references ------------------------------------ */

/* Pads explicitly, crops, flips: the obvious way, one step at a time. */
static void ref_window(const uint8_t *src, uint32_t c, uint32_t h, uint32_t w, uint32_t pad,
                       bool reflect, uint32_t top, uint32_t left, uint32_t oh, uint32_t ow, bool hf,
                       bool vf, uint8_t *dst)
{
    uint32_t ph = h + 2 * pad, pw = w + 2 * pad;
    uint8_t *p = calloc((size_t)c * ph * pw, 1);
    for (uint32_t ch = 0; ch < c; ch++)
        for (uint32_t y = 0; y < ph; y++)
            for (uint32_t x = 0; x < pw; x++) {
                int sy = (int)y - (int)pad, sx = (int)x - (int)pad;
                if (reflect) {
                    sy = sy < 0 ? -sy : sy >= (int)h ? 2 * ((int)h - 1) - sy : sy;
                    sx = sx < 0 ? -sx : sx >= (int)w ? 2 * ((int)w - 1) - sx : sx;
                } else if (sy < 0 || sx < 0 || sy >= (int)h || sx >= (int)w) {
                    continue;
                }
                p[((size_t)ch * ph + y) * pw + x] = src[((size_t)ch * h + sy) * w + sx];
            }
    for (uint32_t ch = 0; ch < c; ch++)
        for (uint32_t y = 0; y < oh; y++)
            for (uint32_t x = 0; x < ow; x++) {
                uint32_t sy = top + (vf ? oh - 1 - y : y), sx = left + (hf ? ow - 1 - x : x);
                dst[((size_t)ch * oh + y) * ow + x] = p[((size_t)ch * ph + sy) * pw + sx];
            }
    free(p);
}

static void test_window_core(void **state)
{
    (void)state;
    const uint32_t c = 2, h = 7, w = 9;
    uint8_t src[2 * 7 * 9], got[2 * 13 * 15], want[2 * 13 * 15];
    float scale[2] = {1.0f / (255.0f * 0.3f), 1.0f / (255.0f * 0.2f)}, bias[2] = {-0.5f, 0.25f};
    float gotf[2 * 13 * 15];
    uint16_t lut[512], got16[2 * 13 * 15];
    for (int ch = 0; ch < 2; ch++)
        for (int x = 0; x < 256; x++)
            lut[ch * 256 + x] = stk_f32_to_f16((float)x * scale[ch] + bias[ch]);
    stk__aug_norm_t nf = {STK_DTYPE_F32, scale, bias, NULL};
    stk__aug_norm_t nb = {STK_DTYPE_BF16, scale, bias, NULL};
    stk__aug_norm_t nh = {STK_DTYPE_F16, scale, bias, lut};
    uint16_t goth[2 * 13 * 15];
    fill_random(src, sizeof src, 5);
    int cases = 0;
    for (uint32_t pad = 0; pad <= 3; pad++)
        for (int refl = 0; refl < 2; refl++)
            for (uint32_t oh = 1; oh <= h + 2 * pad; oh += 3)
                for (uint32_t ow = 2; ow <= w + 2 * pad; ow += 4)
                    for (uint32_t top = 0; top + oh <= h + 2 * pad; top++)
                        for (uint32_t left = 0; left + ow <= w + 2 * pad; left += 2)
                            for (int f = 0; f < 4; f++) {
                                bool hf = f & 1, vf = f & 2;
                                stk__aug_window_t win = {oh, ow, (int32_t)top - (int32_t)pad,
                                                         (int32_t)left - (int32_t)pad, hf, vf,
                                                         refl && pad};
                                size_t n = (size_t)c * oh * ow;
                                ref_window(src, c, h, w, pad, refl && pad, top, left, oh, ow, hf,
                                           vf, want);
                                stk__aug_window(src, c, h, w, &win, got, NULL);
                                assert_memory_equal(got, want, n);
                                stk__aug_window(src, c, h, w, &win, gotf, &nf);
                                stk__aug_window(src, c, h, w, &win, got16, &nb);
                                stk__aug_window(src, c, h, w, &win, goth, &nh);
                                for (size_t i = 0; i < n; i++) {
                                    int ch = (int)(i / ((size_t)oh * ow));
                                    float r = (float)want[i] * scale[ch] + bias[ch];
                                    assert_memory_equal(&gotf[i], &r, sizeof r);
                                    assert_int_equal(got16[i], stk_f32_to_bf16(r));
                                    assert_int_equal(goth[i], stk_f32_to_f16(r));
                                }
                                cases++;
                            }
    assert_true(cases > 1000);
}

/* Outputs of 256 KiB and more are written with streaming stores: the
 * same bits as the plain path, aligned or not, mirrored or not, padded
 * or not; and the plain normalize core likewise. */
static void test_window_streamed(void **state)
{
    (void)state;
    enum { C = 3, H = 230, W = 234, OH = 224, OW = 226, PAD = 3 };
    uint8_t *src = malloc((size_t)C * H * W), *want = malloc((size_t)C * OH * OW);
    float *buf = malloc(((size_t)C * H * W + 4) * sizeof(float));
    float scale[3] = {1.0f / (255.0f * 0.229f), 1.0f / (255.0f * 0.224f), 1.0f / (255.0f * 0.225f)};
    float bias[3] = {-0.485f / 0.229f, -0.456f / 0.224f, -0.406f / 0.225f};
    stk__aug_norm_t nf = {STK_DTYPE_F32, scale, bias, NULL};
    assert_non_null(src);
    assert_non_null(want);
    assert_non_null(buf);
    fill_random(src, (size_t)C * H * W, 11);
    const int32_t tops[] = {-PAD, 0, 4}, lefts[] = {-PAD, 1, 8};
    for (int t = 0; t < 3; t++)
        for (int l = 0; l < 3; l++)
            for (int f = 0; f < 4; f++)
                for (int refl = 0; refl < 2; refl++)
                    for (int shift = 0; shift < 2; shift++) {
                        bool hf = f & 1, vf = f & 2;
                        stk__aug_window_t win = {OH, OW, tops[t], lefts[l], hf, vf, refl};
                        ref_window(src, C, H, W, PAD, refl, (uint32_t)(tops[t] + PAD),
                                   (uint32_t)(lefts[l] + PAD), OH, OW, hf, vf, want);
                        float *out = buf + shift; /* 4 bytes off 16-byte alignment */
                        stk__aug_window(src, C, H, W, &win, out, &nf);
                        for (size_t i = 0; i < (size_t)C * OH * OW; i++) {
                            size_t ch = i / ((size_t)OH * OW);
                            float r = (float)want[i] * scale[ch] + bias[ch];
                            if (memcmp(&out[i], &r, sizeof r) != 0)
                                fail_msg("element %zu: %a, want %a (top %d left %d flips %d "
                                         "reflect %d shift %d)", i, out[i], r, tops[t], lefts[l],
                                         f, refl, shift);
                        }
                    }
    stk__aug_normalize(src, C, (size_t)H * W, buf + 1, &nf);
    for (size_t i = 0; i < (size_t)C * H * W; i++) {
        float r = (float)src[i] * scale[i / ((size_t)H * W)] + bias[i / ((size_t)H * W)];
        assert_memory_equal(&buf[1 + i], &r, sizeof r);
    }
    free(src);
    free(want);
    free(buf);
}

static void test_small_cores(void **state)
{
    (void)state;
    uint8_t src[3 * 4 * 5], dst[3 * 4 * 5], want[3 * 4 * 5];
    fill_random(src, sizeof src, 8);
    /* rot90 k=1: out[i][j] = in[j][w-1-i], out is w x h. */
    stk__aug_rot90(src, 3, 4, 5, 1, dst);
    for (uint32_t ch = 0; ch < 3; ch++)
        for (uint32_t i = 0; i < 5; i++)
            for (uint32_t j = 0; j < 4; j++)
                assert_int_equal(dst[ch * 20 + i * 4 + j], src[ch * 20 + j * 5 + (4 - i)]);
    stk__aug_rot90(src, 3, 4, 5, 2, dst);
    for (uint32_t ch = 0; ch < 3; ch++)
        for (uint32_t i = 0; i < 4; i++)
            for (uint32_t j = 0; j < 5; j++)
                assert_int_equal(dst[ch * 20 + i * 5 + j], src[ch * 20 + (3 - i) * 5 + (4 - j)]);
    /* fill_box */
    memcpy(dst, src, sizeof src);
    stk__aug_fill_box(dst, 3, 4, 5, 1, 2, 3, 4, 7);
    for (uint32_t ch = 0; ch < 3; ch++)
        for (uint32_t y = 0; y < 4; y++)
            for (uint32_t x = 0; x < 5; x++) {
                bool in = y >= 1 && y < 3 && x >= 2 && x < 4;
                assert_int_equal(dst[ch * 20 + y * 5 + x], in ? 7 : src[ch * 20 + y * 5 + x]);
            }
    /* hwc -> chw */
    stk__aug_hwc_to_chw(src, 3, 4, 5, dst);
    for (uint32_t ch = 0; ch < 3; ch++)
        for (uint32_t i = 0; i < 20; i++)
            assert_int_equal(dst[ch * 20 + i], src[i * 3 + ch]);
    /* brightness alone: trunc(clamp(x * f)) */
    stk__aug_jitter(src, 3, 4, 5, 1.5f, 1.0f, dst);
    for (size_t i = 0; i < sizeof src; i++) {
        float v = (float)src[i] * 1.5f;
        want[i] = (uint8_t)(v > 255 ? 255 : v);
    }
    assert_memory_equal(dst, want, sizeof src);
    /* normalize alone */
    float scale = 0.01f, bias = -1.0f, out[60];
    stk__aug_norm_t nf = {STK_DTYPE_F32, &scale, &bias, NULL};
    stk__aug_normalize(src, 1, 60, out, &nf);
    for (size_t i = 0; i < 60; i++)
        assert_true(out[i] == (float)src[i] * scale + bias);
}

/* ---- torchvision fixtures ----------------------------------------------- */

typedef struct fixture {
    uint8_t *data;
    size_t len, pos;
} fixture_t;

static void fixture_open(fixture_t *f, const char *name)
{
    const char *dir = getenv("STK_TEST_DATA");
    char path[1024];
    snprintf(path, sizeof path, "%s/augment/%s", dir ? dir : "tests/data", name);
    FILE *fp = fopen(path, "rb");
    if (!fp)
        fail_msg("cannot open fixture %s (set STK_TEST_DATA)", path);
    fseek(fp, 0, SEEK_END);
    f->len = (size_t)ftell(fp);
    fseek(fp, 0, SEEK_SET);
    f->data = malloc(f->len);
    assert_int_equal(fread(f->data, 1, f->len, fp), f->len);
    fclose(fp);
    f->pos = 0;
}

/* Next case: params, input, output (pointers into the file image). */
static bool fixture_next(fixture_t *f, int32_t *params, int32_t *np, const uint8_t **in,
                         uint32_t *in_len, const uint8_t **out, uint32_t *out_len)
{
    if (f->pos >= f->len)
        return false;
    memcpy(np, f->data + f->pos, 4);
    assert_true(*np > 0 && *np <= 64);
    memcpy(params, f->data + f->pos + 4, (size_t)*np * 4);
    f->pos += 4 + (size_t)*np * 4;
    memcpy(in_len, f->data + f->pos, 4);
    *in = f->data + f->pos + 4;
    f->pos += 4 + *in_len;
    memcpy(out_len, f->data + f->pos, 4);
    *out = f->data + f->pos + 4;
    f->pos += 4 + *out_len;
    assert_true(f->pos <= f->len);
    return true;
}

static void test_resize_vs_torchvision(void **state)
{
    (void)state;
    fixture_t f;
    int32_t p[64], np;
    const uint8_t *in, *want;
    uint32_t in_len, out_len;
    int cases = 0;
    size_t total = 0, exact = 0;
    fixture_open(&f, "resize.bin");
    while (fixture_next(&f, p, &np, &in, &in_len, &want, &out_len)) {
        assert_int_equal(np, 9);
        uint32_t c = (uint32_t)p[0], oh = (uint32_t)p[7], ow = (uint32_t)p[8];
        assert_int_equal(out_len, c * oh * ow);
        uint8_t *got = malloc(out_len);
        void *tmp = malloc(stk__aug_resize_tmp_bytes(ow, (uint32_t)p[2]));
        stk__aug_resize(in, c, (uint32_t)p[1], (uint32_t)p[2], (uint32_t)p[3], (uint32_t)p[4],
                        (uint32_t)p[5], (uint32_t)p[6], got, oh, ow, false, false, NULL, tmp);
        for (uint32_t i = 0; i < out_len; i++) {
            int d = abs((int)got[i] - (int)want[i]);
            if (d > 1)
                fail_msg("resize case %d pixel %u: got %d, torchvision %d", cases, i, got[i],
                         want[i]);
            exact += d == 0;
        }
        total += out_len;
        free(got);
        free(tmp);
        cases++;
    }
    free(f.data);
    assert_int_equal(cases, 9);
    /* Same f32 arithmetic as torch: nearly all pixels should match exactly. */
    assert_true(exact * 100 >= total * 99);
}

static void test_rrc_fallback_vs_torchvision(void **state)
{
    (void)state;
    fixture_t f;
    int32_t p[64], np;
    const uint8_t *in, *want;
    uint32_t in_len, out_len;
    int cases = 0;
    fixture_open(&f, "rrc_fallback.bin");
    while (fixture_next(&f, p, &np, &in, &in_len, &want, &out_len)) {
        double scale[2] = {p[2] / 1e6, p[3] / 1e6}, ratio[2] = {p[4] / 1e6, p[5] / 1e6};
        stk_rng_t rng;
        stk_rng_init(&rng, 77, 0);
        uint32_t box[4];
        int32_t wb[4];
        memcpy(wb, want, sizeof wb);
        stk__aug_rrc_params((uint32_t)p[0], (uint32_t)p[1], scale, ratio, &rng, box);
        for (int i = 0; i < 4; i++)
            assert_int_equal(box[i], wb[i]);
        cases++;
    }
    free(f.data);
    assert_int_equal(cases, 6);
    /* In range, over many draws, for the ordinary scale range. */
    stk_rng_t rng;
    stk_rng_init(&rng, 3, 1);
    const double scale[2] = {0.08, 1.0}, ratio[2] = {0.75, 4.0 / 3.0};
    for (int i = 0; i < 2000; i++) {
        uint32_t box[4];
        stk__aug_rrc_params(30, 50, scale, ratio, &rng, box);
        assert_true(box[2] >= 1 && box[3] >= 1 && box[0] + box[2] <= 30 && box[1] + box[3] <= 50);
    }
}

static void test_pipeline_vs_torchvision(void **state)
{
    (void)state;
    fixture_t f;
    int32_t p[64], np;
    const uint8_t *in, *want;
    uint32_t in_len, out_len;
    char spec[256];

    fixture_open(&f, "centercrop.bin");
    while (fixture_next(&f, p, &np, &in, &in_len, &want, &out_len)) {
        stk_image_desc_t d = {(uint32_t)p[0], (uint32_t)p[1], (uint32_t)p[2], STK_DTYPE_U8,
                              STK_LAYOUT_CHW};
        snprintf(spec, sizeof spec, "centercrop:%dx%d", p[3], p[4]);
        stk_augment_t *a;
        assert_int_equal(stk_augment_create(&a, spec, &d, 0), 0);
        assert_int_equal(stk_augment_output_bytes(a), out_len);
        uint8_t *got = malloc(out_len);
        assert_int_equal(stk_augment_apply(a, in, got, NULL, 0, 0, 0), 0);
        assert_memory_equal(got, want, out_len);
        free(got);
        stk_augment_destroy(&a);
    }
    free(f.data);

    fixture_open(&f, "padcrop.bin");
    while (fixture_next(&f, p, &np, &in, &in_len, &want, &out_len)) {
        int32_t pad = p[3];
        stk__aug_window_t win = {(uint32_t)p[7], (uint32_t)p[8], p[5] - pad, p[6] - pad, p[9] != 0,
                                 p[10] != 0, p[4] != 0};
        uint8_t *got = malloc(out_len);
        stk__aug_window(in, (uint32_t)p[0], (uint32_t)p[1], (uint32_t)p[2], &win, got, NULL);
        assert_memory_equal(got, want, out_len);
        free(got);
    }
    free(f.data);

    fixture_open(&f, "rot90.bin");
    while (fixture_next(&f, p, &np, &in, &in_len, &want, &out_len)) {
        uint8_t *got = malloc(out_len);
        stk__aug_rot90(in, (uint32_t)p[0], (uint32_t)p[1], (uint32_t)p[2], p[3], got);
        assert_memory_equal(got, want, out_len);
        free(got);
    }
    free(f.data);

    fixture_open(&f, "jitter.bin");
    while (fixture_next(&f, p, &np, &in, &in_len, &want, &out_len)) {
        uint8_t *got = malloc(out_len);
        stk__aug_jitter(in, (uint32_t)p[0], (uint32_t)p[1], (uint32_t)p[2], (float)(p[3] / 1e6),
                        (float)(p[4] / 1e6), got);
        for (uint32_t i = 0; i < out_len; i++)
            if (abs((int)got[i] - (int)want[i]) > 1)
                fail_msg("jitter pixel %u: got %d, torchvision %d", i, got[i], want[i]);
        free(got);
    }
    free(f.data);

    fixture_open(&f, "normalize.bin");
    while (fixture_next(&f, p, &np, &in, &in_len, &want, &out_len)) {
        stk_image_desc_t d = {(uint32_t)p[0], (uint32_t)p[1], (uint32_t)p[2], STK_DTYPE_U8,
                              STK_LAYOUT_CHW};
        int n = snprintf(spec, sizeof spec, "normalize:mean=");
        for (int32_t ch = 0; ch < p[0]; ch++)
            n += snprintf(spec + n, sizeof spec - (size_t)n, "%s%g", ch ? "/" : "", p[3 + ch] / 1e6);
        n += snprintf(spec + n, sizeof spec - (size_t)n, ",std=");
        for (int32_t ch = 0; ch < p[0]; ch++)
            n += snprintf(spec + n, sizeof spec - (size_t)n, "%s%g", ch ? "/" : "",
                          p[3 + p[0] + ch] / 1e6);
        stk_augment_t *a;
        assert_int_equal(stk_augment_create(&a, spec, &d, 0), 0);
        assert_int_equal(stk_augment_output_bytes(a), out_len);
        float *got = malloc(out_len), *ref = malloc(out_len);
        memcpy(ref, want, out_len);
        assert_int_equal(stk_augment_apply(a, in, got, NULL, 0, 0, 0), 0);
        /* Ours is x * (1/(255 std)) - mean/std, torch's (x/255 - mean)/std:
         * a few f32 roundings apart. */
        for (size_t i = 0; i < out_len / 4; i++)
            assert_true(fabsf(got[i] - ref[i]) <= 1e-6f * (1.0f + fabsf(ref[i])));
        free(got);
        free(ref);
        stk_augment_destroy(&a);
    }
    free(f.data);
}

/* ---- keys, determinism, uniformity ------------------------------------- */

static const char *rich = "rrcrop:24|hflip|vflip|rot90|jitter:brightness=0.4,contrast=0.4|"
                          "cutout:8,p=0.7|crop:24,pad=3,mode=reflect|normalize:mean=0.5/0.4/0.3,"
                          "std=0.2/0.25/0.3";

static void test_same_key_same_output(void **state)
{
    (void)state;
    stk_augment_t *a;
    assert_int_equal(stk_augment_create(&a, rich, &rgb32, 0), 0);
    size_t ob = stk_augment_output_bytes(a), sb = stk_augment_scratch_bytes(a);
    assert_int_equal(ob, 3 * 24 * 24 * 4);
    uint8_t img[3 * 32 * 32];
    fill_random(img, sizeof img, 11);
    uint8_t *o1 = malloc(ob), *o2 = malloc(ob), *s = malloc(sb);
    int differ = 0, differ_epoch = 0;
    for (uint64_t i = 0; i < 40; i++) {
        assert_int_equal(stk_augment_apply(a, img, o1, s, 7, 2, i), 0);
        memset(s, 0xAB, sb); /* scratch contents must not matter */
        assert_int_equal(stk_augment_apply(a, img, o2, s, 7, 2, i), 0);
        assert_memory_equal(o1, o2, ob);
        assert_int_equal(stk_augment_apply(a, img, o2, s, 7, 2, i + 1), 0);
        differ += memcmp(o1, o2, ob) != 0;
        assert_int_equal(stk_augment_apply(a, img, o2, s, 7, 3, i), 0);
        differ_epoch += memcmp(o1, o2, ob) != 0;
    }
    assert_int_equal(differ, 40);
    assert_int_equal(differ_epoch, 40);
    free(o1);
    free(o2);
    free(s);
    stk_augment_destroy(&a);
}

/* Two threads sharing one pipeline, samples in opposite orders, give what
 * one thread gives in order. */
typedef struct job {
    const stk_augment_t *a;
    const uint8_t *img;
    uint8_t *out; /* 16 outputs */
    bool reverse;
} job_t;

static void *run_job(void *arg)
{
    job_t *j = arg;
    size_t ob = stk_augment_output_bytes(j->a);
    void *s = malloc(stk_augment_scratch_bytes(j->a));
    for (int k = 0; k < 16; k++) {
        int i = j->reverse ? 15 - k : k;
        if (i % 2 == (int)j->reverse)
            stk_augment_apply(j->a, j->img, j->out + (size_t)i * ob, s, 42, 0, (uint64_t)i);
    }
    free(s);
    return NULL;
}

static void test_any_worker_any_order(void **state)
{
    (void)state;
    stk_augment_t *a;
    assert_int_equal(stk_augment_create(&a, rich, &rgb32, 0), 0);
    size_t ob = stk_augment_output_bytes(a);
    uint8_t img[3 * 32 * 32];
    fill_random(img, sizeof img, 12);
    uint8_t *seq = malloc(16 * ob), *par = calloc(16, ob);
    void *s = malloc(stk_augment_scratch_bytes(a));
    for (int i = 0; i < 16; i++)
        stk_augment_apply(a, img, seq + (size_t)i * ob, s, 42, 0, (uint64_t)i);
    job_t j0 = {a, img, par, false}, j1 = {a, img, par, true};
    pthread_t t0, t1;
    assert_int_equal(pthread_create(&t0, NULL, run_job, &j0), 0);
    assert_int_equal(pthread_create(&t1, NULL, run_job, &j1), 0);
    pthread_join(t0, NULL);
    pthread_join(t1, NULL);
    assert_memory_equal(seq, par, 16 * ob);
    free(seq);
    free(par);
    free(s);
    stk_augment_destroy(&a);
}

/* Crop offsets and flips read back from a marked image: pixel (y, x) of an
 * 8x8 image holds 1 + 8y + x, the padding is 0. */
static void test_draws_uniform(void **state)
{
    (void)state;
    const stk_image_desc_t d = {1, 8, 8, STK_DTYPE_U8, STK_LAYOUT_CHW};
    stk_augment_t *a;
    assert_int_equal(stk_augment_create(&a, "crop:8,pad=2|hflip|vflip:p=0.25", &d, 0), 0);
    assert_int_equal(stk_augment_pass_count(a), 1);
    uint8_t img[64], out[64];
    for (int i = 0; i < 64; i++)
        img[i] = (uint8_t)(1 + i);
    unsigned cells[5][5] = {{0}}, hf[2] = {0}, vf[2] = {0};
    const unsigned n = 20000;
    for (unsigned s = 0; s < n; s++) {
        assert_int_equal(stk_augment_apply(a, img, out, NULL, 1234, 0, s), 0);
        /* The output centre 4x4 always holds real pixels (offsets |<=2|). */
        int v = out[3 * 8 + 3] - 1, right = out[3 * 8 + 4] - 1, below = out[4 * 8 + 3] - 1;
        bool h = right < v, vv = below < v;
        int iy = v / 8, ix = v % 8;
        int y0 = iy - (vv ? 7 - 3 : 3), x0 = ix - (h ? 7 - 3 : 3); /* in -2..2 */
        assert_true(y0 >= -2 && y0 <= 2 && x0 >= -2 && x0 <= 2);
        cells[y0 + 2][x0 + 2]++;
        hf[h]++;
        vf[vv]++;
    }
    /* Pearson chi-square, fixed seed: 24 degrees of freedom, P(X > 51.18) =
     * 0.001; 1 degree of freedom, P(X > 10.83) = 0.001. */
    double chi = 0, e = n / 25.0;
    for (int y = 0; y < 5; y++)
        for (int x = 0; x < 5; x++)
            chi += (cells[y][x] - e) * (cells[y][x] - e) / e;
    assert_true(chi < 51.18);
    double eh = n / 2.0, chih = (hf[0] - eh) * (hf[0] - eh) / eh + (hf[1] - eh) * (hf[1] - eh) / eh;
    assert_true(chih < 10.83);
    double ev1 = n * 0.25, ev0 = n * 0.75;
    double chiv = (vf[1] - ev1) * (vf[1] - ev1) / ev1 + (vf[0] - ev0) * (vf[0] - ev0) / ev0;
    assert_true(chiv < 10.83);
    stk_augment_destroy(&a);
}

/* Quarter turns: where the marked corner pixel lands tells k; 3 degrees
 * of freedom, P(X > 16.27) = 0.001. Cutout centres: 8x8 = 64 cells... are
 * read back from the single zeroed pixel of a 1x1 cutout (63 degrees of
 * freedom, P(X > 103.4) = 0.001). */
static void test_rot_cutout_uniform(void **state)
{
    (void)state;
    const stk_image_desc_t d = {1, 8, 8, STK_DTYPE_U8, STK_LAYOUT_CHW};
    stk_augment_t *rot, *cut;
    assert_int_equal(stk_augment_create(&rot, "rot90", &d, 0), 0);
    assert_int_equal(stk_augment_create(&cut, "cutout:1", &d, 0), 0);
    uint8_t img[64], out[64];
    for (int i = 0; i < 64; i++)
        img[i] = (uint8_t)(1 + i);
    unsigned ks[4] = {0}, cells[64] = {0};
    const unsigned n = 16000;
    for (unsigned s = 0; s < n; s++) {
        assert_int_equal(stk_augment_apply(rot, img, out, NULL, 77, 1, s), 0);
        /* img[0] (top left) goes: k=0 top left, k=1 bottom left, k=2
         * bottom right, k=3 top right (counterclockwise). */
        int k = out[0] == 1 ? 0 : out[56] == 1 ? 1 : out[63] == 1 ? 2 : 3;
        assert_true(k != 3 || out[7] == 1);
        ks[k]++;
        assert_int_equal(stk_augment_apply(cut, img, out, NULL, 77, 1, s), 0);
        int zeros = 0, at = -1;
        for (int i = 0; i < 64; i++)
            if (out[i] == 0)
                zeros++, at = i;
        assert_int_equal(zeros, 1);
        cells[at]++;
    }
    double chi = 0, e = n / 4.0;
    for (int k = 0; k < 4; k++)
        chi += (ks[k] - e) * (ks[k] - e) / e;
    assert_true(chi < 16.27);
    chi = 0;
    e = n / 64.0;
    for (int i = 0; i < 64; i++)
        chi += (cells[i] - e) * (cells[i] - e) / e;
    assert_true(chi < 103.4);
    stk_augment_destroy(&rot);
    stk_augment_destroy(&cut);
}

/* ---- fusion, layouts, identity ------------------------------------------ */

static void expect_fused_equal(const char *spec, const stk_image_desc_t *d, size_t fused_passes)
{
    stk_augment_t *f, *u;
    assert_int_equal(stk_augment_create(&f, spec, d, 0), 0);
    assert_int_equal(stk_augment_create(&u, spec, d, STK_AUGMENT_NO_FUSE), 0);
    assert_int_equal(stk_augment_pass_count(f), fused_passes);
    assert_true(stk_augment_pass_count(u) >= fused_passes);
    size_t ob = stk_augment_output_bytes(f), ib = (size_t)d->c * d->h * d->w;
    assert_int_equal(ob, stk_augment_output_bytes(u));
    uint8_t *img = malloc(ib), *o1 = malloc(ob), *o2 = malloc(ob);
    void *s1 = malloc(stk_augment_scratch_bytes(f) + 1), *s2 = malloc(stk_augment_scratch_bytes(u) + 1);
    fill_random(img, ib, 21);
    for (uint64_t i = 0; i < 64; i++) {
        assert_int_equal(stk_augment_apply(f, img, o1, s1, 5, 1, i), 0);
        assert_int_equal(stk_augment_apply(u, img, o2, s2, 5, 1, i), 0);
        if (memcmp(o1, o2, ob))
            fail_msg("'%s' sample %u: fused and plain chain differ", spec, (unsigned)i);
    }
    free(img);
    free(o1);
    free(o2);
    free(s1);
    free(s2);
    stk_augment_destroy(&f);
    stk_augment_destroy(&u);
}

static void test_fused_equals_chain(void **state)
{
    (void)state;
    expect_fused_equal("crop:28,pad=2|hflip|normalize:mean=0.286,std=0.353", &gray28, 1);
    expect_fused_equal("crop:28,pad=2|hflip|normalize:mean=0.286,std=0.353,dtype=bf16", &gray28, 1);
    expect_fused_equal("crop:28,pad=2|hflip|normalize:mean=0.286,std=0.353,dtype=f16", &gray28, 1);
    expect_fused_equal("crop:26x24,pad=4,mode=reflect|vflip|hflip:p=0.7", &rgb32, 1);
    expect_fused_equal("centercrop:20|hflip|normalize:mean=0.5,std=0.2", &rgb32, 1);
    expect_fused_equal("hflip|crop:24|vflip|normalize:mean=0.5,std=0.2", &rgb32, 2);
    expect_fused_equal("resize:40|crop:32,pad=4|hflip|cutout:5|jitter:brightness=0.3|"
                       "normalize:mean=0.5,std=0.2",
                       &rgb32, 5);
    expect_fused_equal("rrcrop:20|hflip|normalize:mean=0.5,std=0.2,dtype=bf16", &rgb32, 1);
    expect_fused_equal("rrcrop:20x28,scale=0.3/0.9|vflip:p=0.4|hflip|normalize:mean=0.5,std=0.2",
                       &rgb32, 1);
    expect_fused_equal("resize:40x36|vflip|normalize:mean=0.1/0.2/0.3,std=0.2", &rgb32, 1);
    expect_fused_equal(rich, &rgb32, 5);
}

static void test_layouts_and_identity(void **state)
{
    (void)state;
    stk_image_desc_t hwc = rgb32;
    hwc.layout = STK_LAYOUT_HWC;
    uint8_t chw_img[3 * 32 * 32], hwc_img[3 * 32 * 32], o1[3 * 32 * 32], o2[3 * 32 * 32];
    fill_random(hwc_img, sizeof hwc_img, 31);
    stk__aug_hwc_to_chw(hwc_img, 3, 32, 32, chw_img);
    const char *specs[] = {"", "hflip", "crop:24,pad=2|hflip|vflip|rot90:k=1"};
    for (size_t k = 0; k < 3; k++) {
        stk_augment_t *a, *b;
        assert_int_equal(stk_augment_create(&a, specs[k], &rgb32, 0), 0);
        assert_int_equal(stk_augment_create(&b, specs[k], &hwc, 0), 0);
        stk_image_desc_t od;
        stk_augment_output(b, &od);
        assert_int_equal(od.layout, STK_LAYOUT_CHW);
        assert_int_equal(od.dtype, STK_DTYPE_U8);
        void *s1 = malloc(stk_augment_scratch_bytes(a) + 1), *s2 = malloc(stk_augment_scratch_bytes(b) + 1);
        for (uint64_t i = 0; i < 8; i++) {
            assert_int_equal(stk_augment_apply(a, chw_img, o1, s1, 3, 0, i), 0);
            assert_int_equal(stk_augment_apply(b, hwc_img, o2, s2, 3, 0, i), 0);
            assert_memory_equal(o1, o2, stk_augment_output_bytes(a));
        }
        if (k == 0)
            assert_memory_equal(o1, chw_img, sizeof o1);
        free(s1);
        free(s2);
        stk_augment_destroy(&a);
        stk_augment_destroy(&b);
    }
    /* Shapes through the chain. */
    stk_augment_t *a;
    stk_image_desc_t od;
    assert_int_equal(stk_augment_create(&a, "resize:40x30|rot90:k=1|centercrop:20|"
                                            "normalize:mean=0,std=1,dtype=f16", &rgb32, 0), 0);
    stk_augment_output(a, &od);
    assert_int_equal(od.c, 3);
    assert_int_equal(od.h, 20);
    assert_int_equal(od.w, 20);
    assert_int_equal(od.dtype, STK_DTYPE_F16);
    assert_int_equal(stk_augment_output_bytes(a), desc_bytes(&od));
    stk_augment_destroy(&a);
}

/* ---- mixup / cutmix -------------------------------------------------------- */

static void test_mix(void **state)
{
    (void)state;
    enum { N = 4, C = 2, H = 6, W = 5, K = 3, IMG = C * H * W };
    float in[N * IMG], out[N * IMG], soft[N * K], out2[N * IMG], soft2[N * K], lam, lam2;
    int64_t labels[N] = {0, 2, 1, 2};
    for (int i = 0; i < N * IMG; i++)
        in[i] = (float)(i / IMG) * 100.0f + (float)(i % IMG); /* distinct everywhere */
    stk_augment_mix_config_t cfg;
    stk_augment_mix_config_default(&cfg);
    cfg.mixup_alpha = 0.4f;
    assert_int_equal(stk_augment_mix_batch(&cfg, in, out, N, C, H, W, labels, K, soft, 1, 0, 3, &lam), 0);
    assert_true(lam >= 0 && lam <= 1);
    for (int i = 0; i < N; i++) {
        int j = (i + N - 1) % N;
        for (int e = 0; e < IMG; e++)
            assert_float_equal(out[i * IMG + e], lam * in[i * IMG + e] + (1 - lam) * in[j * IMG + e], 1e-3);
        float sum = 0;
        for (int k = 0; k < K; k++)
            sum += soft[i * K + k];
        assert_float_equal(sum, 1.0f, 1e-6);
        if (labels[i] != labels[j]) {
            assert_float_equal(soft[i * K + labels[i]], lam, 1e-6);
            assert_float_equal(soft[i * K + labels[j]], 1 - lam, 1e-6);
        }
    }
    /* Same key: same mix; another batch index: another lambda. */
    assert_int_equal(stk_augment_mix_batch(&cfg, in, out2, N, C, H, W, labels, K, soft2, 1, 0, 3, &lam2), 0);
    assert_memory_equal(out, out2, sizeof out);
    assert_memory_equal(soft, soft2, sizeof soft);
    assert_int_equal(stk_augment_mix_batch(&cfg, in, out2, N, C, H, W, labels, K, soft2, 1, 0, 4, &lam2), 0);
    assert_true(lam2 != lam);

    /* Cutmix: each pixel is its own or its partner's; lambda is the share
     * of own pixels. */
    cfg.mixup_alpha = 0;
    cfg.cutmix_alpha = 1.0f;
    cfg.label_smoothing = 0.1f;
    int boxes = 0;
    for (uint64_t b = 0; b < 20; b++) {
        assert_int_equal(stk_augment_mix_batch(&cfg, in, out, N, C, H, W, labels, K, soft, 9, 1, b, &lam), 0);
        for (int i = 0; i < N; i++) {
            int j = (i + N - 1) % N, own = 0;
            for (int e = 0; e < IMG; e++) {
                bool mine = out[i * IMG + e] == in[i * IMG + e];
                assert_true(mine || out[i * IMG + e] == in[j * IMG + e]);
                own += mine;
            }
            assert_float_equal(lam, (float)own / IMG, 1e-6);
            float sum = 0;
            for (int k = 0; k < K; k++) {
                sum += soft[i * K + k];
                assert_true(soft[i * K + k] >= 0.1f / K - 1e-6f);
            }
            assert_float_equal(sum, 1.0f, 1e-5);
        }
        boxes += lam < 1;
    }
    assert_true(boxes > 10);

    /* prob = 0: copy and (smoothed) one-hot. */
    cfg.prob = 0;
    cfg.label_smoothing = 0;
    assert_int_equal(stk_augment_mix_batch(&cfg, in, out, N, C, H, W, labels, K, soft, 9, 1, 0, &lam), 0);
    assert_memory_equal(in, out, sizeof in);
    assert_true(lam == 1.0f);
    for (int i = 0; i < N; i++)
        for (int k = 0; k < K; k++)
            assert_true(soft[i * K + k] == (k == labels[i] ? 1.0f : 0.0f));

    /* Beta(a, a) has mean 1/2: over 2000 batches the mean lambda lies within
     * 0.03 of it (sd of the mean ~0.008 for a = 0.4). */
    stk_augment_mix_config_t m;
    stk_augment_mix_config_default(&m);
    m.mixup_alpha = 0.4f;
    double mean = 0;
    for (uint64_t b = 0; b < 2000; b++) {
        assert_int_equal(stk_augment_mix_batch(&m, in, out, 1, 1, 1, 1, labels, K, soft, 5, 0, b, &lam), 0);
        mean += lam;
    }
    mean /= 2000;
    assert_true(fabs(mean - 0.5) < 0.03);

    /* Errors. */
    int64_t bad[N] = {0, 3, 1, 2};
    assert_int_equal(stk_augment_mix_batch(&m, in, out, N, C, H, W, bad, K, soft, 1, 0, 0, NULL), STK_EDATA);
    assert_non_null(strstr(stk_error_message(), "label 3 of sample 1"));
    m.prob = 2;
    assert_int_equal(stk_augment_mix_batch(&m, in, out, N, C, H, W, labels, K, soft, 1, 0, 0, NULL), STK_ECONFIG);
    stk_augment_mix_config_default(&m);
    m.mixup_alpha = -1;
    assert_int_equal(stk_augment_mix_batch(&m, in, out, N, C, H, W, labels, K, soft, 1, 0, 0, NULL), STK_ECONFIG);
    stk_augment_mix_config_default(&m);
    assert_int_equal(stk_augment_mix_batch(&m, in, in, N, C, H, W, labels, K, soft, 1, 0, 0, NULL), -EINVAL);
    assert_int_equal(stk_augment_mix_batch(NULL, in, out, N, C, H, W, labels, K, soft, 1, 0, 0, NULL), -EINVAL);
    assert_int_equal(stk_augment_mix_batch(&m, in, out, 0, C, H, W, labels, K, soft, 1, 0, 0, NULL), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format_fixed_point),
        cmocka_unit_test(test_bad_specs),
        cmocka_unit_test(test_random_specs),
        cmocka_unit_test(test_window_core),
        cmocka_unit_test(test_window_streamed),
        cmocka_unit_test(test_small_cores),
        cmocka_unit_test(test_resize_vs_torchvision),
        cmocka_unit_test(test_rrc_fallback_vs_torchvision),
        cmocka_unit_test(test_pipeline_vs_torchvision),
        cmocka_unit_test(test_same_key_same_output),
        cmocka_unit_test(test_any_worker_any_order),
        cmocka_unit_test(test_draws_uniform),
        cmocka_unit_test(test_rot_cutout_uniform),
        cmocka_unit_test(test_fused_equals_chain),
        cmocka_unit_test(test_layouts_and_identity),
        cmocka_unit_test(test_mix),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
