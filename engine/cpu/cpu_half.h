/* SPDX-License-Identifier: MIT */
/* The CPU's emulation of half-precision compute (bf16, fp16): values
 * rounded to the half type and kept as fp32, as a GPU's autocast path
 * stores them. Apart from cpu.h so that tests reach it without oneDNN. */
#ifndef STOKER_ENGINE_CPU_HALF_H
#define STOKER_ENGINE_CPU_HALF_H

#include "stoker/engine.h"

#include <stddef.h>

/* dst[i] = src[i] rounded to bf16 or fp16 (round to nearest even; fp16
 * overflow gives infinity, NaN stays NaN) and widened back, for i < n;
 * dst may be src. Bit for bit stk_bf16_to_f32(stk_f32_to_bf16(x)) and
 * stk_f16_to_f32(stk_f32_to_f16(x)); fp16 uses the F16C instructions
 * where the CPU has them. p FP32 or TF32: a copy. */
void stk__cpu_round_half(stk_precision_t p, size_t n, const float *src, float *dst);

#endif
