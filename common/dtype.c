/* SPDX-License-Identifier: MIT */
/* Element types: sizes, names, and the half-precision conversions used by
 * the shard format, the augment pipeline and the engine. */
#include "internal.h"

#include <string.h>

static const struct {
    const char *name;
    size_t size;
} stk__dtypes[] = {
    [STK_DTYPE_INVALID] = {"invalid", 0}, [STK_DTYPE_U8] = {"u8", 1},
    [STK_DTYPE_I8] = {"i8", 1},           [STK_DTYPE_I32] = {"i32", 4},
    [STK_DTYPE_I64] = {"i64", 8},         [STK_DTYPE_F16] = {"f16", 2},
    [STK_DTYPE_BF16] = {"bf16", 2},       [STK_DTYPE_F32] = {"f32", 4},
};

size_t stk_dtype_size(stk_dtype_t dt)
{
    if ((unsigned)dt >= STK__ARRAY_LEN(stk__dtypes))
        return 0;
    return stk__dtypes[dt].size;
}

const char *stk_dtype_name(stk_dtype_t dt)
{
    if ((unsigned)dt >= STK__ARRAY_LEN(stk__dtypes))
        return "invalid";
    return stk__dtypes[dt].name;
}

stk_dtype_t stk_dtype_from_name(const char *name)
{
    for (unsigned i = 1; name && i < STK__ARRAY_LEN(stk__dtypes); i++)
        if (strcmp(name, stk__dtypes[i].name) == 0)
            return (stk_dtype_t)i;
    return STK_DTYPE_INVALID;
}

static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t stk_f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t absx = x & 0x7FFFFFFFu;
    if (absx >= 0x7F800000u) /* inf or nan: keep nan quiet */
        return (uint16_t)(sign | 0x7C00u | (absx > 0x7F800000u ? 0x200u | ((absx >> 13) & 0x3FFu) : 0));
    if (absx >= 0x477FF000u) /* rounds to >= 65520: overflow to inf */
        return (uint16_t)(sign | 0x7C00u);
    if (absx < 0x38800000u) { /* result is subnormal or zero */
        if (absx < 0x33000001u)
            return (uint16_t)sign;
        uint32_t e = absx >> 23;
        uint32_t m = (absx & 0x7FFFFFu) | 0x800000u;
        uint32_t shift = 126 - e; /* 14..24 */
        uint32_t r = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1)))
            r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = absx - 0x38000000u; /* rebias exponent 127 -> 15 */
    uint32_t lsb = (r >> 13) & 1;
    r += 0xFFFu + lsb;
    return (uint16_t)(sign | (r >> 13));
}

float stk_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1F;
    uint32_t m = h & 0x3FFu;
    if (e == 0) {
        if (m == 0)
            return bits_f32(sign);
        float v = (float)m * (1.0f / 16777216.0f); /* m * 2^-24 */
        return sign ? -v : v;
    }
    if (e == 31)
        return bits_f32(sign | 0x7F800000u | (m << 13));
    return bits_f32(sign | ((e + 112) << 23) | (m << 13));
}

uint16_t stk_f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u)
        return (uint16_t)((x >> 16) | 0x40u);
    x += 0x7FFFu + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

float stk_bf16_to_f32(uint16_t b)
{
    return bits_f32((uint32_t)b << 16);
}
