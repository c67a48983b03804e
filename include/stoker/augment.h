/* SPDX-License-Identifier: MIT */
/* Per-sample image transforms, built from a text spec such as
 * "crop:28,pad=2|hflip|normalize:mean=0.2860,std=0.3530". Randomness is
 * keyed by (seed, epoch, sample index, transform position): a sample gets
 * the same augmentation on any worker, in any order. */
#ifndef STOKER_AUGMENT_H
#define STOKER_AUGMENT_H

#include "stoker/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Canonical layout is CHW (as the engine's NCHW); HWC inputs are
 * converted at the edge. */
typedef enum stk_layout { STK_LAYOUT_CHW = 0, STK_LAYOUT_HWC = 1 } stk_layout_t;

typedef struct stk_image_desc {
    uint32_t c, h, w;
    stk_dtype_t dtype;   /* input: u8; output: u8, f32, f16 or bf16 */
    stk_layout_t layout;
} stk_image_desc_t;

typedef struct stk_augment stk_augment_t;

/* Parses spec for inputs described by in. STK_ECONFIG names the bad token
 * (unknown transform, missing or bad parameter, crop larger than the
 * padded image). An empty spec is the identity. */
STK_API int stk_augment_create(stk_augment_t **out, const char *spec, const stk_image_desc_t *in);
STK_API void stk_augment_destroy(stk_augment_t **aug);
/* Output description (shape and dtype after every transform). */
STK_API void stk_augment_output(const stk_augment_t *aug, stk_image_desc_t *out);
STK_API size_t stk_augment_output_bytes(const stk_augment_t *aug);
/* Scratch bytes apply needs (caller allocates once per worker). */
STK_API size_t stk_augment_scratch_bytes(const stk_augment_t *aug);
/* Writes the canonical text of the pipeline; parsing it gives the same. */
STK_API int stk_augment_format(const stk_augment_t *aug, char *buf, size_t cap);
/* Transforms one sample. Thread-safe on a shared aug; allocates nothing. */
STK_API int stk_augment_apply(const stk_augment_t *aug, const void *in, void *out, void *scratch,
                              uint64_t seed, uint64_t epoch, uint64_t sample_index);

#ifdef __cplusplus
}
#endif
#endif
