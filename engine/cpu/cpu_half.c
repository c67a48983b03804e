/* SPDX-License-Identifier: MIT */
/* Rounding to bf16 / fp16 and back, over arrays, for the CPU's emulation
 * of the GPU's half-precision convolutions and matrix multiplies
 * (cpu_dnnl.c). The results are those of common/dtype.c's conversions,
 * bit for bit (tests/unit/test_amp.c compares them); only the speed
 * differs. */
#include "cpu_half.h"

#include "internal.h"

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_X86 1
#endif

/* Loops shorter than this run on one thread. */
#define PAR_MIN 16384

/* stk_f32_to_bf16 then back, in integer arithmetic the compiler
 * vectorizes: a NaN is made quiet, anything else rounds to nearest even
 * (an overflow rounds to infinity). */
static void round_bf16(size_t n, const float *src, float *dst)
{
    ptrdiff_t len = (ptrdiff_t)n;
#pragma omp parallel for if (len > PAR_MIN)
    for (ptrdiff_t i = 0; i < len; i++) {
        uint32_t u;
        memcpy(&u, &src[i], 4);
        uint32_t r = (u & 0x7FFFFFFFu) > 0x7F800000u ? (u | 0x400000u) : u + 0x7FFFu + ((u >> 16) & 1u);
        r &= 0xFFFF0000u;
        memcpy(&dst[i], &r, 4);
    }
}

static void round_f16_scalar(size_t from, size_t to, const float *src, float *dst)
{
    for (size_t i = from; i < to; i++)
        dst[i] = stk_f16_to_f32(stk_f32_to_f16(src[i]));
}

#ifdef HAVE_X86
/* VCVTPS2PH rounds to nearest even with subnormals and infinity as IEEE
 * says, and makes a NaN quiet keeping the top of its payload: what
 * stk_f32_to_f16 does. A denormal fp32 input (treated as zero under DAZ)
 * rounds to a signed zero either way. */
__attribute__((target("avx,f16c"))) static void round_f16_f16c_range(ptrdiff_t from, ptrdiff_t to,
                                                                      const float *src, float *dst)
{
    for (ptrdiff_t b = from; b < to; b++) {
        __m256 v = _mm256_loadu_ps(src + b * 8);
        __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_storeu_ps(dst + b * 8, _mm256_cvtph_ps(h));
    }
}

/* The OpenMP loop stays outside the AVX function: clang outlines a
 * parallel loop's body into a function of its own, which does not inherit
 * the target attribute. */
static void round_f16_f16c(size_t n, const float *src, float *dst)
{
    ptrdiff_t blocks = (ptrdiff_t)(n / 8), chunks = (blocks + 127) / 128;
#pragma omp parallel for if (blocks > PAR_MIN / 8)
    for (ptrdiff_t k = 0; k < chunks; k++)
        round_f16_f16c_range(k * 128, k * 128 + 128 < blocks ? k * 128 + 128 : blocks, src, dst);
    round_f16_scalar((size_t)blocks * 8, n, src, dst);
}

/* F16C and AVX, and the OS saving the YMM registers (OSXSAVE, then XCR0's
 * SSE and AVX bits), read with CPUID: clang 14 knows no "f16c" for
 * __builtin_cpu_supports. */
static int have_f16c(void)
{
    static int known = -1; /* any thread may settle it: all find the same */
    int k = __atomic_load_n(&known, __ATOMIC_RELAXED);
    if (k >= 0)
        return k;
    unsigned a, b, c, d;
    int ok = 0;
    if (__get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) && (c & bit_AVX) && (c & bit_OSXSAVE)) {
        unsigned lo, hi;
        __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        ok = (lo & 6u) == 6u;
    }
    __atomic_store_n(&known, ok, __ATOMIC_RELAXED);
    return ok;
}
#endif

static void round_f16(size_t n, const float *src, float *dst)
{
#ifdef HAVE_X86
    if (have_f16c()) {
        round_f16_f16c(n, src, dst);
        return;
    }
#endif
    ptrdiff_t blocks = (ptrdiff_t)((n + 1023) / 1024);
#pragma omp parallel for if (blocks > PAR_MIN / 1024)
    for (ptrdiff_t b = 0; b < blocks; b++) {
        size_t from = (size_t)b * 1024, to = from + 1024 < n ? from + 1024 : n;
        round_f16_scalar(from, to, src, dst);
    }
}

void stk__cpu_round_half(stk_precision_t p, size_t n, const float *src, float *dst)
{
    switch (p) {
    case STK_PRECISION_BF16:
        round_bf16(n, src, dst);
        return;
    case STK_PRECISION_FP16:
        round_f16(n, src, dst);
        return;
    case STK_PRECISION_FP32:
    case STK_PRECISION_TF32:
        break;
    }
    if (n && dst != src)
        memmove(dst, src, n * sizeof(float));
}
