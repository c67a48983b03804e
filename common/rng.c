/* SPDX-License-Identifier: MIT */
/* Philox4x32-10, the counter-based generator behind every random choice in
 * Stoker (sampler orders, augmentation, dropout). Constants and round
 * structure from Salmon et al., SC'11 (Random123). Counter-based means a
 * draw is a pure function of (key, counter): no state to share between
 * workers, and any sample's draws can be recomputed anywhere. The rounds
 * live in philox.h, shared with the CUDA kernels. */
#include "internal.h"
#include "philox.h"

void stk_philox4x32(uint64_t key, uint64_t ctr_hi, uint64_t ctr_lo, uint32_t out[4])
{
    stk__philox4x32_10(key, ctr_hi, ctr_lo, out);
}

uint64_t stk_rng_mix(uint64_t a, uint64_t b)
{
    uint64_t z = a ^ (b + 0x9E3779B97F4A7C15ull + (a << 6) + (a >> 2));
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void stk_rng_init(stk_rng_t *rng, uint64_t key, uint64_t stream)
{
    rng->key = key;
    rng->stream = stream;
    rng->counter = 0;
    rng->avail = 0;
}

uint32_t stk_rng_u32(stk_rng_t *rng)
{
    if (rng->avail == 0) {
        stk_philox4x32(rng->key, rng->stream, rng->counter++, rng->buf);
        rng->avail = 4;
    }
    return rng->buf[4 - rng->avail--];
}

uint64_t stk_rng_u64(stk_rng_t *rng)
{
    uint64_t hi = stk_rng_u32(rng);
    return (hi << 32) | stk_rng_u32(rng);
}

uint64_t stk_rng_below(stk_rng_t *rng, uint64_t bound)
{
    if (bound <= UINT32_MAX) {
        /* Lemire, "Fast random integer generation in an interval" (2019). */
        uint64_t m = (uint64_t)stk_rng_u32(rng) * bound;
        uint32_t l = (uint32_t)m;
        if (l < bound) {
            uint32_t t = (uint32_t)(-(uint32_t)bound) % (uint32_t)bound;
            while (l < t) {
                m = (uint64_t)stk_rng_u32(rng) * bound;
                l = (uint32_t)m;
            }
        }
        return m >> 32;
    }
    /* Rejection on the top multiple of bound: rare sizes, simple is fine. */
    uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
    uint64_t x;
    do
        x = stk_rng_u64(rng);
    while (x >= limit);
    return x % bound;
}

float stk_rng_uniform(stk_rng_t *rng)
{
    return (float)(stk_rng_u32(rng) >> 8) * (1.0f / 16777216.0f);
}

double stk_rng_uniform_f64(stk_rng_t *rng)
{
    return (double)(stk_rng_u64(rng) >> 11) * (1.0 / 9007199254740992.0);
}
