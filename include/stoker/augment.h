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

/* Spec grammar (whitespace is not allowed; names and keys are lower case):
 *
 *   spec   := "" | stage ("|" stage)*
 *   stage  := name [":" param ("," param)*]
 *   param  := value | key "=" value      (a bare value is the size)
 *   size   := N | HxW                    (N means NxN)
 *   list   := v ["/" v]*                 (one value, or one per channel)
 *
 *   crop:SIZE[,pad=P][,mode=zero|reflect]  random crop of the input padded by
 *                                          P on every side (torchvision
 *                                          RandomCrop(padding=P))
 *   centercrop:SIZE                        torchvision CenterCrop (no padding)
 *   rrcrop:SIZE[,scale=LO/HI][,ratio=LO/HI] RandomResizedCrop, bilinear,
 *                                          antialias off; defaults
 *                                          scale=0.08/1, ratio=0.75/1.333333
 *   resize:SIZE                            bilinear, align_corners=False,
 *                                          antialias=False
 *   hflip[:p=P]   vflip[:p=P]              flip with probability P (0.5)
 *   rot90[:k=K]                            rotate counterclockwise by K*90
 *                                          degrees; without k, K is drawn
 *                                          uniformly from 0..3 (square only)
 *   jitter:[brightness=B][,contrast=C]     factors drawn uniformly from
 *                                          [max(0,1-B), 1+B]; brightness is
 *                                          applied first, then contrast
 *   cutout:SIZE[,p=P][,fill=V]             a SIZE box centred on a uniform
 *                                          pixel, clipped at the border, set
 *                                          to V (0), with probability P (1)
 *   normalize:mean=LIST,std=LIST[,dtype=f32|f16|bf16]
 *                                          (x/255 - mean) / std, computed as
 *                                          x * (1/(255 std)) - mean/std in f32;
 *                                          must be the last stage
 *
 * Example: "crop:28,pad=2|hflip|normalize:mean=0.286,std=0.353".
 * Canonical text (stk_augment_format) leaves out parameters at their
 * defaults and prints numbers in their shortest exact form, so that
 * format(parse(format(parse(s)))) == format(parse(s)).
 *
 * Canonical layout is CHW (as the engine's NCHW); HWC inputs are
 * converted at the edge (one extra pass). The output is always CHW: u8
 * unless the pipeline ends in normalize. */
typedef enum stk_layout { STK_LAYOUT_CHW = 0, STK_LAYOUT_HWC = 1 } stk_layout_t;

typedef struct stk_image_desc {
    uint32_t c, h, w;
    stk_dtype_t dtype;   /* input: u8; output: u8, f32, f16 or bf16 */
    stk_layout_t layout;
} stk_image_desc_t;

typedef struct stk_augment stk_augment_t;

/* Flags of stk_augment_create. */
enum {
    /* Run every transform as its own pass, as written (benchmarks and the
     * tests that check the fused passes against the plain chain). */
    STK_AUGMENT_NO_FUSE = 1u << 0
};

/* Parses spec for inputs described by in (u8, CHW or HWC) into *out, which
 * the caller frees with stk_augment_destroy. flags: 0, or
 * STK_AUGMENT_NO_FUSE. STK_ECONFIG names the bad token in
 * stk_error_message() (unknown transform, missing or bad parameter, crop
 * larger than the padded image). An empty spec is the identity. Returns 0,
 * -EINVAL (NULL pointers, a bad desc, unknown flags), -ENOMEM, STK_ECONFIG.
 * Thread-safe. */
STK_API int stk_augment_create(stk_augment_t **out, const char *spec, const stk_image_desc_t *in, unsigned flags);
STK_API void stk_augment_destroy(stk_augment_t **aug);
/* Output description (shape and dtype after every transform; layout CHW).
 * The size functions return 0 for a NULL aug. Thread-safe on a shared aug. */
STK_API void stk_augment_output(const stk_augment_t *aug, stk_image_desc_t *out);
STK_API size_t stk_augment_output_bytes(const stk_augment_t *aug);
/* Scratch bytes apply needs (caller allocates once per worker; any
 * alignment; may be 0). */
STK_API size_t stk_augment_scratch_bytes(const stk_augment_t *aug);
/* Writes the canonical text of the pipeline, NUL-terminated, into buf of
 * cap bytes; parsing it gives the same pipeline. Returns 0, -EINVAL, or
 * -ENOSPC when cap is too small (buf then holds a truncated string). */
STK_API int stk_augment_format(const stk_augment_t *aug, char *buf, size_t cap);
/* Transforms one sample. Thread-safe on a shared aug; allocates nothing.
 * in: the input image as described at create; out: stk_augment_output_bytes
 * bytes, not overlapping in; scratch: stk_augment_scratch_bytes bytes (NULL
 * allowed when 0), owned by the caller and not shared between concurrent
 * calls. Transform i (0-based position in the spec) draws from Philox
 * stream i under the key stk_rng_mix(stk_rng_mix(seed, epoch),
 * sample_index), whether or not it is fused with its neighbours.
 * Returns 0, or -EINVAL for NULL pointers or in == out. */
STK_API int stk_augment_apply(const stk_augment_t *aug, const void *in, void *out, void *scratch,
                              uint64_t seed, uint64_t epoch, uint64_t sample_index);

/* Number of passes over the pixels apply makes (after fusion), for tests
 * and benchmarks: "crop:28,pad=2|hflip|normalize:..." is 1. */
STK_API size_t stk_augment_pass_count(const stk_augment_t *aug);

/* Batch-level mixup / cutmix (Zhang et al. 2018; Yun et al. 2019) with soft
 * labels, as torchvision.transforms.v2 MixUp/CutMix: each image is paired
 * with the previous one in the batch (roll by one); one lambda per batch
 * from Beta(alpha, alpha). Cutmix pastes a box of relative area 1-lambda
 * (centre uniform, clipped at the border) and corrects lambda to the
 * pasted area. */
typedef struct stk_augment_mix_config {
    float mixup_alpha;     /* > 0 enables mixup (default 0.2) */
    float cutmix_alpha;    /* > 0 enables cutmix (default 0: off) */
    float prob;            /* probability that a batch is mixed at all (1) */
    float switch_prob;     /* with both enabled: probability of cutmix (0.5) */
    float label_smoothing; /* eps: one-hot becomes 1-eps+eps/K, eps/K (0) */
} stk_augment_mix_config_t;

/* Fills *cfg with the defaults given on each field. NULL-safe. */
STK_API void stk_augment_mix_config_default(stk_augment_mix_config_t *cfg);

/* Mixes a batch of n f32 CHW images (c*h*w floats each) from in into out
 * (may not overlap, unless in == out, which is refused) and writes n rows of
 * num_classes soft labels. labels[i] must lie in [0, num_classes). The
 * random draws are keyed by stk_rng_mix(stk_rng_mix(seed, epoch),
 * batch_index) on stream 0x6d6978 ("mix"). If lambda_out is not NULL it
 * receives the lambda used (1 when the batch was left unmixed).
 * Returns 0, -EINVAL (NULL pointers, n == 0, in == out), STK_ECONFIG (bad
 * config), STK_EDATA (a label out of range, named with its index).
 * Thread-safe; allocates nothing. */
STK_API int stk_augment_mix_batch(const stk_augment_mix_config_t *cfg, const float *in, float *out, size_t n,
                                  uint32_t c, uint32_t h, uint32_t w, const int64_t *labels,
                                  uint32_t num_classes, float *soft_labels, uint64_t seed,
                                  uint64_t epoch, uint64_t batch_index, float *lambda_out);

#ifdef __cplusplus
}
#endif
#endif
