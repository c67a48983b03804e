/* SPDX-License-Identifier: MIT */
/* A parsed spec bound to an input shape, planned into passes: runs of
 * crop/centercrop + flips (+ normalize) become one fused window pass, the
 * rest run one pass each between two scratch buffers. Every random draw
 * comes from Philox keyed by (seed, epoch, sample index) on the stream of
 * the transform's position, so fusion and worker placement never change
 * the result. */
#include "augment_internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum pass_kind {
    PASS_WINDOW,
    PASS_NORMALIZE,
    PASS_RRCROP,
    PASS_RESIZE,
    PASS_ROT90,
    PASS_JITTER,
    PASS_CUTOUT,
} pass_kind_t;

typedef struct pass {
    pass_kind_t kind;
    int op;                     /* the op (non-window passes) */
    int crop, hflip, vflip;     /* window members, -1 when absent */
    bool norm;                  /* ends in normalize */
    uint32_t c, ih, iw, oh, ow; /* u8 CHW in, CHW out */
} pass_t;

struct stk_augment {
    stk_image_desc_t in, out;
    size_t nops, npasses;
    stk__aug_op_t ops[STK__AUG_MAX_OPS];
    pass_t passes[STK__AUG_MAX_OPS];
    size_t buf_bytes;   /* each of the two ping-pong buffers */
    size_t nbufs;
    size_t tmp_bytes;   /* resize tables and rows */
    float *scale, *bias;
    uint16_t *lut;
    stk__aug_norm_t norm;
};

#define ALIGN64(x) (((x) + 63) & ~(size_t)63)

/* STK_ECONFIG naming the stage by its canonical text. */
static int stage_error(const stk__aug_op_t *op, size_t idx, const char *fmt, ...) STK_PRINTF(3, 4);
static int stage_error(const stk__aug_op_t *op, size_t idx, const char *fmt, ...)
{
    char text[256], msg[256];
    stk__aug_format(op, 1, text, sizeof text);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return stk__error(STK_ECONFIG, "augment: stage %zu '%s': %s", idx + 1, text, msg);
}

/* Checks each op against the shape it receives, records that shape. */
static int bind(stk_augment_t *aug)
{
    uint32_t c = aug->in.c, h = aug->in.h, w = aug->in.w;
    stk_dtype_t dt = STK_DTYPE_U8;
    for (size_t i = 0; i < aug->nops; i++) {
        stk__aug_op_t *op = &aug->ops[i];
        op->ic = c;
        op->ih = h;
        op->iw = w;
        switch (op->kind) {
        case STK__AUG_CROP: {
            uint64_t ph = (uint64_t)h + 2ull * op->pad, pw = (uint64_t)w + 2ull * op->pad;
            if (op->sh > ph || op->sw > pw)
                return stage_error(op, i, "crop %ux%u is larger than the padded image %ux%u",
                                   op->sh, op->sw, (uint32_t)ph, (uint32_t)pw);
            if (op->reflect && (op->pad >= h || op->pad >= w))
                return stage_error(op, i, "reflect padding %u needs an image larger than %ux%u",
                                   op->pad, h, w);
            h = op->sh;
            w = op->sw;
            break;
        }
        case STK__AUG_CENTERCROP:
            if (op->sh > h || op->sw > w)
                return stage_error(op, i, "crop %ux%u is larger than the image %ux%u", op->sh,
                                   op->sw, h, w);
            h = op->sh;
            w = op->sw;
            break;
        case STK__AUG_RRCROP:
        case STK__AUG_RESIZE:
            h = op->sh;
            w = op->sw;
            break;
        case STK__AUG_ROT90:
            if (op->k < 0 && h != w)
                return stage_error(op, i,
                                   "a random quarter turn needs a square image, not %ux%u",
                                   h, w);
            if (op->k == 1 || op->k == 3) {
                uint32_t t = h;
                h = w;
                w = t;
            }
            break;
        case STK__AUG_NORMALIZE:
            if ((op->nmean != 1 && op->nmean != c) || (op->nstd != 1 && op->nstd != c))
                return stage_error(op, i,
                                   "mean has %u values and std %u; want 1 or one per channel (%u)",
                                   op->nmean, op->nstd, c);
            dt = op->dtype;
            break;
        default: break;
        }
    }
    aug->out = (stk_image_desc_t){c, h, w, dt, STK_LAYOUT_CHW};
    return 0;
}

/* Folds the flips that follow (at most one of each; they commute) and then
 * a normalize into pass p, moving *i past them. */
static void absorb_tail(const stk_augment_t *aug, pass_t *p, size_t *i)
{
    while (*i < aug->nops) {
        stk__aug_kind_t k = aug->ops[*i].kind;
        if (k == STK__AUG_HFLIP && p->hflip < 0)
            p->hflip = (int)(*i)++;
        else if (k == STK__AUG_VFLIP && p->vflip < 0)
            p->vflip = (int)(*i)++;
        else
            break;
    }
    if (*i < aug->nops && aug->ops[*i].kind == STK__AUG_NORMALIZE) {
        p->norm = true;
        (*i)++;
    }
}

static void plan(stk_augment_t *aug, bool fuse)
{
    size_t n = 0;
    for (size_t i = 0; i < aug->nops;) {
        const stk__aug_op_t *op = &aug->ops[i];
        pass_t *p = &aug->passes[n++];
        *p = (pass_t){.op = (int)i, .crop = -1, .hflip = -1, .vflip = -1, .c = op->ic,
                      .ih = op->ih, .iw = op->iw};
        switch (op->kind) {
        case STK__AUG_CROP:
        case STK__AUG_CENTERCROP:
        case STK__AUG_HFLIP:
        case STK__AUG_VFLIP:
            /* A crop, a flip, or a crop and the flips and normalize that
             * follow it: one window pass. */
            p->kind = PASS_WINDOW;
            if (op->kind == STK__AUG_CROP || op->kind == STK__AUG_CENTERCROP)
                p->crop = (int)i;
            else if (op->kind == STK__AUG_HFLIP)
                p->hflip = (int)i;
            else
                p->vflip = (int)i;
            i++;
            if (fuse)
                absorb_tail(aug, p, &i);
            break;
        case STK__AUG_NORMALIZE:
            p->kind = PASS_NORMALIZE;
            p->norm = true;
            i++;
            break;
        case STK__AUG_RRCROP:
        case STK__AUG_RESIZE:
            /* Flips and normalize ride along: mirrored column table,
             * mirrored row order, conversion of each rounded pixel. */
            p->kind = op->kind == STK__AUG_RRCROP ? PASS_RRCROP : PASS_RESIZE;
            i++;
            if (fuse)
                absorb_tail(aug, p, &i);
            break;
        case STK__AUG_ROT90: p->kind = PASS_ROT90, i++; break;
        case STK__AUG_JITTER: p->kind = PASS_JITTER, i++; break;
        case STK__AUG_CUTOUT: p->kind = PASS_CUTOUT, i++; break;
        }
        /* Output shape: the input shape of the next op, or the output. */
        if (i < aug->nops) {
            p->oh = aug->ops[i].ih;
            p->ow = aug->ops[i].iw;
        } else {
            p->oh = aug->out.h;
            p->ow = aug->out.w;
        }
    }
    aug->npasses = n;
}

static int init_norm(stk_augment_t *aug)
{
    const stk__aug_op_t *op = NULL;
    for (size_t i = 0; i < aug->nops; i++)
        if (aug->ops[i].kind == STK__AUG_NORMALIZE)
            op = &aug->ops[i];
    if (!op)
        return 0;
    uint32_t c = op->ic;
    aug->scale = calloc(c, sizeof *aug->scale);
    aug->bias = calloc(c, sizeof *aug->bias);
    if (!aug->scale || !aug->bias)
        return stk__error(-ENOMEM, "augment: normalization tables for %u channels", c);
    for (uint32_t ch = 0; ch < c; ch++) {
        double m = op->mean[op->nmean == 1 ? 0 : ch], s = op->std[op->nstd == 1 ? 0 : ch];
        aug->scale[ch] = (float)(1.0 / (255.0 * s));
        aug->bias[ch] = (float)(-m / s);
        /* Finite factors keep every output finite: no NaN to round. */
        if (!isfinite(aug->scale[ch]) || !isfinite(aug->bias[ch]) ||
            !isfinite(255.0f * aug->scale[ch] + aug->bias[ch]))
            return stk__error(STK_ECONFIG,
                              "augment: normalize mean %g, std %g for channel %u overflow f32", m,
                              s, ch);
    }
    aug->norm = (stk__aug_norm_t){op->dtype, aug->scale, aug->bias, NULL};
    if (op->dtype != STK_DTYPE_F16)
        return 0;
    aug->lut = calloc((size_t)c * 256, sizeof *aug->lut);
    if (!aug->lut)
        return stk__error(-ENOMEM, "augment: normalization tables for %u channels", c);
    /* The f32 values come from the f32 kernel itself, so f16/bf16 are
     * exactly the f32 output rounded, on every path. */
    uint8_t all[256];
    float f[256];
    for (int x = 0; x < 256; x++)
        all[x] = (uint8_t)x;
    for (uint32_t ch = 0; ch < c; ch++) {
        stk__aug_norm_t n32 = {STK_DTYPE_F32, aug->scale + ch, aug->bias + ch, NULL};
        stk__aug_normalize(all, 1, 256, f, &n32);
        for (int x = 0; x < 256; x++)
            aug->lut[ch * 256 + x] = stk_f32_to_f16(f[x]);
    }
    aug->norm.lut = aug->lut;
    return 0;
}

static void size_scratch(stk_augment_t *aug)
{
    size_t intermediates = aug->in.layout == STK_LAYOUT_HWC ? 1 : 0;
    size_t biggest = intermediates ? (size_t)aug->in.c * aug->in.h * aug->in.w : 0;
    for (size_t i = 0; i + 1 < aug->npasses; i++) {
        const pass_t *p = &aug->passes[i];
        size_t bytes = (size_t)p->c * p->oh * p->ow;
        biggest = bytes > biggest ? bytes : biggest;
        intermediates++;
    }
    aug->buf_bytes = ALIGN64(biggest);
    aug->nbufs = intermediates < 2 ? intermediates : 2;
    for (size_t i = 0; i < aug->npasses; i++) {
        const pass_t *p = &aug->passes[i];
        if (p->kind == PASS_RESIZE || p->kind == PASS_RRCROP) {
            size_t t = ALIGN64(stk__aug_resize_tmp_bytes(p->ow, p->iw));
            aug->tmp_bytes = t > aug->tmp_bytes ? t : aug->tmp_bytes;
        }
    }
}

int stk_augment_create(stk_augment_t **out, const char *spec, const stk_image_desc_t *in, unsigned flags)
{
    if (!out || !spec || !in)
        return stk__error(-EINVAL, "augment: NULL argument to stk_augment_create");
    *out = NULL;
    if (in->dtype != STK_DTYPE_U8 || in->c == 0 || in->h == 0 || in->w == 0 ||
        in->c > 4096 || in->h > 65535 || in->w > 65535 ||
        (in->layout != STK_LAYOUT_CHW && in->layout != STK_LAYOUT_HWC))
        return stk__error(-EINVAL,
                          "augment: input must be u8 CHW or HWC with 1..4096 channels and sides "
                          "1..65535, got %s %ux%ux%u",
                          stk_dtype_name(in->dtype), in->c, in->h, in->w);
    if (flags & ~(unsigned)STK_AUGMENT_NO_FUSE)
        return stk__error(-EINVAL, "augment: unknown flags 0x%x", flags);
    stk_augment_t *aug = calloc(1, sizeof *aug);
    if (!aug)
        return stk__error(-ENOMEM, "augment: pipeline object");
    aug->in = *in;
    int rc = stk__aug_parse(spec, aug->ops, &aug->nops);
    if (!rc)
        rc = bind(aug);
    if (!rc)
        rc = init_norm(aug);
    if (rc) {
        stk_augment_destroy(&aug);
        return rc;
    }
    plan(aug, !(flags & STK_AUGMENT_NO_FUSE));
    size_scratch(aug);
    *out = aug;
    return 0;
}

void stk_augment_destroy(stk_augment_t **aug)
{
    if (!aug || !*aug)
        return;
    free((*aug)->scale);
    free((*aug)->bias);
    free((*aug)->lut);
    free(*aug);
    *aug = NULL;
}

void stk_augment_output(const stk_augment_t *aug, stk_image_desc_t *out)
{
    if (aug && out)
        *out = aug->out;
}

size_t stk_augment_output_bytes(const stk_augment_t *aug)
{
    if (!aug)
        return 0;
    return (size_t)aug->out.c * aug->out.h * aug->out.w * stk_dtype_size(aug->out.dtype);
}

size_t stk_augment_scratch_bytes(const stk_augment_t *aug)
{
    if (!aug)
        return 0;
    size_t n = aug->nbufs * aug->buf_bytes + aug->tmp_bytes;
    /* Room to align the caller's pointer to 64 bytes. */
    return n ? n + 64 : 0;
}

size_t stk_augment_pass_count(const stk_augment_t *aug)
{
    if (!aug)
        return 0;
    return aug->npasses + (aug->in.layout == STK_LAYOUT_HWC ? 1 : 0);
}

int stk_augment_format(const stk_augment_t *aug, char *buf, size_t cap)
{
    if (!aug || !buf)
        return stk__error(-EINVAL, "augment: NULL argument to stk_augment_format");
    return stk__aug_format(aug->ops, aug->nops, buf, cap);
}

/* One pass: draws its randoms, then runs its core. */
static void run_pass(const stk_augment_t *aug, const pass_t *p, const uint8_t *src, void *dst,
                     void *tmp, uint64_t key)
{
    const stk__aug_op_t *ops = aug->ops;
    const stk__aug_norm_t *norm = p->norm ? &aug->norm : NULL;
    stk_rng_t rng;
    /* Fused flips draw from their own streams, as they would alone. */
    bool hflip = false, vflip = false;
    if (p->hflip >= 0) {
        stk_rng_init(&rng, key, (uint64_t)p->hflip);
        hflip = stk_rng_uniform_f64(&rng) < ops[p->hflip].p;
    }
    if (p->vflip >= 0) {
        stk_rng_init(&rng, key, (uint64_t)p->vflip);
        vflip = stk_rng_uniform_f64(&rng) < ops[p->vflip].p;
    }
    stk_rng_init(&rng, key, (uint64_t)p->op);
    switch (p->kind) {
    case PASS_WINDOW: {
        stk__aug_window_t win = {p->oh, p->ow, 0, 0, hflip, vflip, false};
        if (p->crop >= 0) {
            const stk__aug_op_t *op = &ops[p->crop];
            if (op->kind == STK__AUG_CROP) {
                stk_rng_init(&rng, key, (uint64_t)p->crop);
                uint32_t ph = p->ih + 2 * op->pad, pw = p->iw + 2 * op->pad;
                win.y0 = (int32_t)stk_rng_below(&rng, ph - op->sh + 1) - (int32_t)op->pad;
                win.x0 = (int32_t)stk_rng_below(&rng, pw - op->sw + 1) - (int32_t)op->pad;
                win.reflect = op->reflect;
            } else {
                /* torchvision: int(round((h - th) / 2.0)), half to even. */
                win.y0 = (int32_t)nearbyint((p->ih - op->sh) / 2.0);
                win.x0 = (int32_t)nearbyint((p->iw - op->sw) / 2.0);
            }
        }
        stk__aug_window(src, p->c, p->ih, p->iw, &win, dst, norm);
        break;
    }
    case PASS_NORMALIZE:
        stk__aug_normalize(src, p->c, (size_t)p->ih * p->iw, dst, norm);
        break;
    case PASS_RRCROP: {
        const stk__aug_op_t *op = &ops[p->op];
        uint32_t box[4];
        stk__aug_rrc_params(p->ih, p->iw, op->scale, op->ratio, &rng, box);
        stk__aug_resize(src, p->c, p->ih, p->iw, box[0], box[1], box[2], box[3], dst, p->oh, p->ow,
                        hflip, vflip, norm, tmp);
        break;
    }
    case PASS_RESIZE:
        stk__aug_resize(src, p->c, p->ih, p->iw, 0, 0, p->ih, p->iw, dst, p->oh, p->ow, hflip,
                        vflip, norm, tmp);
        break;
    case PASS_ROT90: {
        int k = ops[p->op].k >= 0 ? ops[p->op].k : (int)stk_rng_below(&rng, 4);
        stk__aug_rot90(src, p->c, p->ih, p->iw, k, dst);
        break;
    }
    case PASS_JITTER: {
        const stk__aug_op_t *op = &ops[p->op];
        float f[2] = {1.0f, 1.0f};
        double amount[2] = {op->brightness, op->contrast};
        for (int j = 0; j < 2; j++) {
            if (amount[j] > 0) {
                double lo = amount[j] < 1 ? 1 - amount[j] : 0, hi = 1 + amount[j];
                f[j] = (float)(lo + (hi - lo) * stk_rng_uniform_f64(&rng));
            }
        }
        stk__aug_jitter(src, p->c, p->ih, p->iw, f[0], f[1], dst);
        break;
    }
    case PASS_CUTOUT: {
        const stk__aug_op_t *op = &ops[p->op];
        size_t bytes = (size_t)p->c * p->ih * p->iw;
        if (dst != src)
            memcpy(dst, src, bytes);
        bool on = stk_rng_uniform_f64(&rng) < op->p;
        uint32_t cy = (uint32_t)stk_rng_below(&rng, p->ih), cx = (uint32_t)stk_rng_below(&rng, p->iw);
        if (!on)
            break;
        int64_t y0 = (int64_t)cy - op->sh / 2, x0 = (int64_t)cx - op->sw / 2;
        int64_t y1 = y0 + op->sh, x1 = x0 + op->sw;
        y0 = y0 < 0 ? 0 : y0;
        x0 = x0 < 0 ? 0 : x0;
        y1 = y1 > p->ih ? p->ih : y1;
        x1 = x1 > p->iw ? p->iw : x1;
        stk__aug_fill_box(dst, p->c, p->ih, p->iw, (uint32_t)y0, (uint32_t)x0, (uint32_t)y1,
                          (uint32_t)x1, (uint8_t)op->fill);
        break;
    }
    }
}

int stk_augment_apply(const stk_augment_t *aug, const void *in, void *out, void *scratch,
                      uint64_t seed, uint64_t epoch, uint64_t sample_index)
{
    if (!aug || !in || !out || (!scratch && stk_augment_scratch_bytes(aug)))
        return stk__error(-EINVAL, "augment: NULL argument to stk_augment_apply");
    if (in == out)
        return stk__error(-EINVAL, "augment: apply cannot work in place (in == out)");
    uint64_t key = stk_rng_mix(stk_rng_mix(seed, epoch), sample_index);
    uint8_t *base = (uint8_t *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    uint8_t *bufs[2] = {base, base + aug->buf_bytes};
    void *tmp = base + aug->nbufs * aug->buf_bytes;
    const uint8_t *src = in;
    if (aug->in.layout == STK_LAYOUT_HWC) {
        uint8_t *dst = aug->npasses ? bufs[0] : out;
        stk__aug_hwc_to_chw(src, aug->in.c, aug->in.h, aug->in.w, dst);
        src = dst;
    } else if (!aug->npasses) {
        memcpy(out, in, (size_t)aug->in.c * aug->in.h * aug->in.w);
    }
    for (size_t i = 0; i < aug->npasses; i++) {
        const pass_t *p = &aug->passes[i];
        void *dst;
        if (i + 1 == aug->npasses)
            dst = out;
        else if ((p->kind == PASS_CUTOUT || p->kind == PASS_JITTER) && src != in)
            dst = (void *)src; /* these two work in place */
        else
            dst = src == bufs[0] ? bufs[1] : bufs[0];
        run_pass(aug, p, src, dst, tmp, key);
        src = dst;
    }
    return 0;
}
