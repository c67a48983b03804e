/* SPDX-License-Identifier: MIT */
/* augment/ internals: the parsed spec (one op per stage), and the
 * deterministic cores each transform runs once its random draws are made.
 * The cores take explicit offsets, flags and factors, so tests can check
 * them against plain references and PyTorch fixtures without any RNG. */
#ifndef STOKER_AUGMENT_INTERNAL_H
#define STOKER_AUGMENT_INTERNAL_H

#include "internal.h"
#include "stoker/augment.h"

#include <stdbool.h>

#define STK__AUG_MAX_LIST 16  /* per-channel values in one list */
#define STK__AUG_MAX_OPS 32   /* stages in one spec */

typedef enum stk__aug_kind {
    STK__AUG_CROP,
    STK__AUG_CENTERCROP,
    STK__AUG_RRCROP,
    STK__AUG_RESIZE,
    STK__AUG_HFLIP,
    STK__AUG_VFLIP,
    STK__AUG_ROT90,
    STK__AUG_JITTER,
    STK__AUG_CUTOUT,
    STK__AUG_NORMALIZE,
} stk__aug_kind_t;

/* One parsed stage. Numbers stay doubles as written, so that the text
 * prints back exactly; kernels take floats derived at create time. */
typedef struct stk__aug_op {
    stk__aug_kind_t kind;
    uint32_t sh, sw;      /* size (crop, centercrop, rrcrop, resize, cutout) */
    uint32_t pad;         /* crop */
    bool reflect;         /* crop: reflect padding instead of zeros */
    double p;             /* flips, cutout */
    int k;                /* rot90: fixed quarter turns, -1 when drawn */
    double scale[2], ratio[2]; /* rrcrop */
    double brightness, contrast; /* jitter */
    uint32_t fill;        /* cutout */
    double mean[STK__AUG_MAX_LIST], std[STK__AUG_MAX_LIST];
    uint32_t nmean, nstd;
    stk_dtype_t dtype;    /* normalize */
    /* Bound at create: the image this stage receives (CHW u8). */
    uint32_t ic, ih, iw;
} stk__aug_op_t;

/* Parses spec into ops (at most STK__AUG_MAX_OPS). STK_ECONFIG names the
 * bad token. Shapes are checked later, against the input. */
int stk__aug_parse(const char *spec, stk__aug_op_t *ops, size_t *nops);
/* Canonical text of ops; -ENOSPC when cap is too small. */
int stk__aug_format(const stk__aug_op_t *ops, size_t nops, char *buf, size_t cap);
const char *stk__aug_kind_name(stk__aug_kind_t kind);

/* Normalization to float: out = (float)x * scale[c] + bias[c] for f32,
 * that value rounded to nearest even for bf16 (in the loop); f16 looks up
 * lut[c * 256 + x], built from the same f32 values by stk_f32_to_f16, so
 * every path gives the same bits. */
typedef struct stk__aug_norm {
    stk_dtype_t dtype;
    const float *scale, *bias; /* c entries */
    const uint16_t *lut;       /* c * 256 entries, f16 / bf16 only */
} stk__aug_norm_t;

/* A window of the padded input: the fused crop (+pad) + flips (+normalize).
 * Output pixel (oy, ox) reads input (y0 + y', x0 + x') where y' = oy, or
 * oh-1-oy when vflip (x' likewise with hflip); y0, x0 are in unpadded
 * coordinates (negative inside the padding). Outside the input the pixel
 * is 0, or the reflected pixel when reflect (needs |overhang| < h, w). */
typedef struct stk__aug_window {
    uint32_t oh, ow;
    int32_t y0, x0;
    bool hflip, vflip, reflect;
} stk__aug_window_t;

/* src: c x h x w u8; dst: c x oh x ow of u8 (norm NULL) or norm->dtype. */
void stk__aug_window(const uint8_t *src, uint32_t c, uint32_t h, uint32_t w,
                     const stk__aug_window_t *win, void *dst, const stk__aug_norm_t *norm);
/* Normalize alone: n = h*w pixels per channel. */
void stk__aug_normalize(const uint8_t *src, uint32_t c, size_t n, void *dst,
                        const stk__aug_norm_t *norm);

/* Bilinear resize of the box (top, left, bh, bw) of src to oh x ow, as
 * torch.nn.functional.interpolate(mode="bilinear", align_corners=False) in
 * f32 on the u8 values, rounded half to even (torchvision's resize of a u8
 * tensor with antialias=False); then flipped, and converted as norm says
 * (u8 when NULL), in the same pass. tmp: stk__aug_resize_tmp_bytes(ow, w). */
size_t stk__aug_resize_tmp_bytes(uint32_t ow, uint32_t w);
void stk__aug_resize(const uint8_t *src, uint32_t c, uint32_t h, uint32_t w, uint32_t top,
                     uint32_t left, uint32_t bh, uint32_t bw, void *dst, uint32_t oh, uint32_t ow,
                     bool hflip, bool vflip, const stk__aug_norm_t *norm, void *tmp);

/* torchvision RandomResizedCrop.get_params: 10 attempts of (area scale,
 * log-uniform aspect ratio), then the centre-crop fallback. box = {top,
 * left, height, width}. */
void stk__aug_rrc_params(uint32_t h, uint32_t w, const double scale[2], const double ratio[2],
                         stk_rng_t *rng, uint32_t box[4]);

/* Counterclockwise by k quarter turns (torch.rot90(img, k, (1, 2))). The
 * output is h x w for even k, w x h for odd k. */
void stk__aug_rot90(const uint8_t *src, uint32_t c, uint32_t h, uint32_t w, int k, uint8_t *dst);

/* Brightness then contrast, as torchvision's adjust_brightness and
 * adjust_contrast on u8 tensors: blend in f32, clamp to [0, 255], truncate.
 * The contrast mean is that of the grayscale image (0.2989, 0.587, 0.114
 * for 3 channels, truncated to u8 per pixel; the image itself otherwise).
 * A factor of exactly 1 skips that step. */
void stk__aug_jitter(const uint8_t *src, uint32_t c, uint32_t h, uint32_t w, float bf, float cf,
                     uint8_t *dst);

/* Sets rows [y0, y1) x columns [x0, x1) of every channel to fill. */
void stk__aug_fill_box(uint8_t *img, uint32_t c, uint32_t h, uint32_t w, uint32_t y0, uint32_t x0,
                       uint32_t y1, uint32_t x1, uint8_t fill);

void stk__aug_hwc_to_chw(const uint8_t *src, uint32_t c, uint32_t h, uint32_t w, uint8_t *dst);

#endif
