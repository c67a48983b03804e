/* SPDX-License-Identifier: MIT */
/* Philox4x32-10 as one inline function that both the host compiler and
 * nvcc compile: common/rng.c (stk_philox4x32) and the CUDA kernels (the
 * dropout mask) run this same code, so the same key and counter give the
 * same bits on every device. Constants and rounds: Salmon et al., SC'11
 * (Random123). Internal; C and CUDA C++. */
#ifndef STOKER_COMMON_PHILOX_H
#define STOKER_COMMON_PHILOX_H

#include <stdint.h>

#if defined(__CUDACC__)
#define STK__HOSTDEV __host__ __device__
#else
#define STK__HOSTDEV
#endif

static inline STK__HOSTDEV void stk__philox4x32_10(uint64_t key, uint64_t ctr_hi, uint64_t ctr_lo, uint32_t out[4])
{
    uint32_t c0 = (uint32_t)ctr_lo, c1 = (uint32_t)(ctr_lo >> 32);
    uint32_t c2 = (uint32_t)ctr_hi, c3 = (uint32_t)(ctr_hi >> 32);
    uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* Dropout's rule for one Philox word: the element is kept when the word's
 * top 24 bits, as a uniform in [0, 1), are >= p. */
static inline STK__HOSTDEV int stk__dropout_keep(uint32_t word, float p)
{
    return (float)(word >> 8) * (1.0f / 16777216.0f) >= p;
}

#endif
