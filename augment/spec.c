/* SPDX-License-Identifier: MIT */
/* The augmentation spec language (grammar in include/stoker/augment.h):
 * parsing with errors that name the bad token, and printing back the
 * canonical text. Numbers print in their shortest form that reads back as
 * the same double, which makes format(parse(s)) a fixed point. */
#include "augment_internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOK_MAX 1024 /* one stage: 16-channel mean and std lists fit */

static const struct {
    const char *name;
    stk__aug_kind_t kind;
} kinds[] = {
    {"crop", STK__AUG_CROP},     {"centercrop", STK__AUG_CENTERCROP},
    {"rrcrop", STK__AUG_RRCROP}, {"resize", STK__AUG_RESIZE},
    {"hflip", STK__AUG_HFLIP},   {"vflip", STK__AUG_VFLIP},
    {"rot90", STK__AUG_ROT90},   {"jitter", STK__AUG_JITTER},
    {"cutout", STK__AUG_CUTOUT}, {"normalize", STK__AUG_NORMALIZE},
};

static const double rrc_scale_default[2] = {0.08, 1.0};
static const double rrc_ratio_default[2] = {3.0 / 4.0, 4.0 / 3.0};

const char *stk__aug_kind_name(stk__aug_kind_t kind)
{
    for (size_t i = 0; i < STK__ARRAY_LEN(kinds); i++)
        if (kinds[i].kind == kind)
            return kinds[i].name;
    return "?";
}

/* A token of the spec as a NUL-terminated copy (for messages and strto*). */
static void tok_copy(char *dst, const char *s, size_t n)
{
    if (n >= TOK_MAX)
        n = TOK_MAX - 1;
    memcpy(dst, s, n);
    dst[n] = '\0';
}

static bool parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
    if (*s < '0' || *s > '9')
        return false;
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return false;
    *out = (uint32_t)v;
    return true;
}

static bool parse_f64(const char *s, double *out)
{
    if (!*s || *s == ' ' || *s == '+')
        return false;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v))
        return false;
    *out = v;
    return true;
}

/* "N" or "HxW", each 1..65535. */
static bool parse_size(const char *s, uint32_t *h, uint32_t *w)
{
    char a[TOK_MAX];
    const char *x = strchr(s, 'x');
    if (!x)
        return parse_u32(s, 1, 65535, h) && (*w = *h, true);
    tok_copy(a, s, (size_t)(x - s));
    return parse_u32(a, 1, 65535, h) && parse_u32(x + 1, 1, 65535, w);
}

/* "v" or "v/v/...", at most max values. */
static bool parse_list(const char *s, double *vals, uint32_t max, uint32_t *n)
{
    char a[TOK_MAX];
    *n = 0;
    for (;;) {
        const char *slash = strchr(s, '/');
        size_t len = slash ? (size_t)(slash - s) : strlen(s);
        if (*n == max)
            return false;
        tok_copy(a, s, len);
        if (!parse_f64(a, &vals[(*n)++]))
            return false;
        if (!slash)
            return true;
        s = slash + 1;
    }
}

static int bad_value(const char *key, const char *val, const char *stage, size_t idx,
                     const char *why)
{
    return stk__error(STK_ECONFIG, "augment: bad value '%s' for '%s' in stage %zu '%s' (%s)", val,
                      key, idx + 1, stage, why);
}

/* Applies one "key=value" (or bare value, key "") to op. */
static int set_param(stk__aug_op_t *op, const char *key, const char *val, const char *stage,
                     size_t idx, unsigned *seen)
{
    const char *name = stk__aug_kind_name(op->kind);
    bool sized = op->kind == STK__AUG_CROP || op->kind == STK__AUG_CENTERCROP ||
                 op->kind == STK__AUG_RRCROP || op->kind == STK__AUG_RESIZE ||
                 op->kind == STK__AUG_CUTOUT;
    static const char *const keys[] = {"", "pad", "mode", "scale", "ratio", "p", "k",
                                       "brightness", "contrast", "fill", "mean", "std", "dtype"};
    int ki = -1;
    for (int i = 0; i < (int)STK__ARRAY_LEN(keys); i++)
        if (!strcmp(keys[i], key))
            ki = i;
    if (ki == 0 && !sized)
        return stk__error(STK_ECONFIG,
                          "augment: unexpected value '%s' in stage %zu '%s' ('%s' takes key=value)",
                          val, idx + 1, stage, name);
    bool ok_key = false;
    switch (op->kind) {
    case STK__AUG_CROP: ok_key = ki == 0 || ki == 1 || ki == 2; break;
    case STK__AUG_CENTERCROP:
    case STK__AUG_RESIZE: ok_key = ki == 0; break;
    case STK__AUG_RRCROP: ok_key = ki == 0 || ki == 3 || ki == 4; break;
    case STK__AUG_HFLIP:
    case STK__AUG_VFLIP: ok_key = ki == 5; break;
    case STK__AUG_ROT90: ok_key = ki == 6; break;
    case STK__AUG_JITTER: ok_key = ki == 7 || ki == 8; break;
    case STK__AUG_CUTOUT: ok_key = ki == 0 || ki == 5 || ki == 9; break;
    case STK__AUG_NORMALIZE: ok_key = ki == 10 || ki == 11 || ki == 12; break;
    }
    if (!ok_key)
        return stk__error(STK_ECONFIG, "augment: unknown parameter '%s' for '%s' in stage %zu '%s'",
                          key, name, idx + 1, stage);
    if (*seen & (1u << ki))
        return stk__error(STK_ECONFIG, "augment: parameter '%s' given twice in stage %zu '%s'",
                          ki ? key : "size", idx + 1, stage);
    *seen |= 1u << ki;
    const char *kname = ki ? key : "size";
    double v;
    uint32_t n;
    switch (ki) {
    case 0:
        if (!parse_size(val, &op->sh, &op->sw))
            return bad_value(kname, val, stage, idx, "want N or HxW, 1..65535");
        return 0;
    case 1:
        if (!parse_u32(val, 0, 65535, &op->pad))
            return bad_value(kname, val, stage, idx, "want an integer 0..65535");
        return 0;
    case 2:
        if (!strcmp(val, "zero"))
            op->reflect = false;
        else if (!strcmp(val, "reflect"))
            op->reflect = true;
        else
            return bad_value(kname, val, stage, idx, "want zero or reflect");
        return 0;
    case 3:
    case 4: {
        double *dst = ki == 3 ? op->scale : op->ratio;
        if (!parse_list(val, dst, 2, &n) || n != 2 || !(dst[0] > 0) || dst[0] > dst[1])
            return bad_value(kname, val, stage, idx, "want LO/HI with 0 < LO <= HI");
        return 0;
    }
    case 5:
        if (!parse_f64(val, &op->p) || op->p < 0 || op->p > 1)
            return bad_value(kname, val, stage, idx, "want a probability in [0, 1]");
        return 0;
    case 6:
        if (!parse_u32(val, 0, 3, &n))
            return bad_value(kname, val, stage, idx, "want 0, 1, 2 or 3");
        op->k = (int)n;
        return 0;
    case 7:
    case 8:
        if (!parse_f64(val, &v) || v < 0 || v > 1e6)
            return bad_value(kname, val, stage, idx, "want a number >= 0");
        *(ki == 7 ? &op->brightness : &op->contrast) = v;
        return 0;
    case 9:
        if (!parse_u32(val, 0, 255, &op->fill))
            return bad_value(kname, val, stage, idx, "want an integer 0..255");
        return 0;
    case 10:
        if (!parse_list(val, op->mean, STK__AUG_MAX_LIST, &op->nmean))
            return bad_value(kname, val, stage, idx, "want v or v/v/..., at most 16 values");
        return 0;
    case 11:
        if (!parse_list(val, op->std, STK__AUG_MAX_LIST, &op->nstd))
            return bad_value(kname, val, stage, idx, "want v or v/v/..., at most 16 values");
        for (uint32_t i = 0; i < op->nstd; i++)
            if (!(op->std[i] > 0))
                return bad_value(kname, val, stage, idx, "std must be > 0");
        return 0;
    default:
        op->dtype = stk_dtype_from_name(val);
        if (op->dtype != STK_DTYPE_F32 && op->dtype != STK_DTYPE_F16 &&
            op->dtype != STK_DTYPE_BF16)
            return bad_value(kname, val, stage, idx, "want f32, f16 or bf16");
        return 0;
    }
}

static void op_defaults(stk__aug_op_t *op, stk__aug_kind_t kind)
{
    memset(op, 0, sizeof *op);
    op->kind = kind;
    op->p = kind == STK__AUG_CUTOUT ? 1.0 : 0.5;
    op->k = -1;
    memcpy(op->scale, rrc_scale_default, sizeof op->scale);
    memcpy(op->ratio, rrc_ratio_default, sizeof op->ratio);
    op->dtype = STK_DTYPE_F32;
}

static int parse_stage(const char *s, size_t len, size_t idx, stk__aug_op_t *op)
{
    char stage[TOK_MAX], name[TOK_MAX], param[TOK_MAX];
    tok_copy(stage, s, len);
    if (len == 0)
        return stk__error(STK_ECONFIG, "augment: empty stage %zu (a stray '|')", idx + 1);
    if (len >= TOK_MAX)
        return stk__error(STK_ECONFIG, "augment: stage %zu '%s...' is too long", idx + 1, stage);
    const char *colon = memchr(s, ':', len);
    size_t nlen = colon ? (size_t)(colon - s) : len;
    tok_copy(name, s, nlen);
    int kind = -1;
    for (size_t i = 0; i < STK__ARRAY_LEN(kinds); i++)
        if (!strcmp(kinds[i].name, name))
            kind = (int)kinds[i].kind;
    if (kind < 0)
        return stk__error(STK_ECONFIG, "augment: unknown transform '%s' in stage %zu '%s'", name,
                          idx + 1, stage);
    op_defaults(op, (stk__aug_kind_t)kind);
    unsigned seen = 0;
    if (colon) {
        const char *p = colon + 1, *end = s + len;
        for (;;) {
            const char *comma = memchr(p, ',', (size_t)(end - p));
            size_t plen = comma ? (size_t)(comma - p) : (size_t)(end - p);
            tok_copy(param, p, plen);
            if (plen == 0)
                return stk__error(STK_ECONFIG, "augment: empty parameter in stage %zu '%s'",
                                  idx + 1, stage);
            char *eq = strchr(param, '=');
            int rc;
            if (eq) {
                *eq = '\0';
                rc = set_param(op, param, eq + 1, stage, idx, &seen);
            } else {
                rc = set_param(op, "", param, stage, idx, &seen);
            }
            if (rc)
                return rc;
            if (!comma)
                break;
            p = comma + 1;
        }
    }
    const char *missing = NULL;
    switch (op->kind) {
    case STK__AUG_CROP:
    case STK__AUG_CENTERCROP:
    case STK__AUG_RRCROP:
    case STK__AUG_RESIZE:
    case STK__AUG_CUTOUT:
        if (!(seen & 1u))
            missing = "a size, as NAME:N or NAME:HxW";
        break;
    case STK__AUG_JITTER:
        if (!(op->brightness > 0) && !(op->contrast > 0))
            missing = "brightness= or contrast= above 0";
        break;
    case STK__AUG_NORMALIZE:
        if (!op->nmean)
            missing = "mean=";
        else if (!op->nstd)
            missing = "std=";
        break;
    default: break;
    }
    if (missing)
        return stk__error(STK_ECONFIG, "augment: '%s' needs %s (stage %zu '%s')", name, missing,
                          idx + 1, stage);
    if (op->kind == STK__AUG_CROP && op->reflect && op->pad == 0)
        op->reflect = false; /* nothing to reflect: canonical text drops it */
    return 0;
}

int stk__aug_parse(const char *spec, stk__aug_op_t *ops, size_t *nops)
{
    *nops = 0;
    if (!*spec)
        return 0;
    const char *s = spec;
    for (size_t idx = 0;; idx++) {
        const char *bar = strchr(s, '|');
        size_t len = bar ? (size_t)(bar - s) : strlen(s);
        if (idx == STK__AUG_MAX_OPS)
            return stk__error(STK_ECONFIG, "augment: more than %d stages", STK__AUG_MAX_OPS);
        int rc = parse_stage(s, len, idx, &ops[idx]);
        if (rc)
            return rc;
        *nops = idx + 1;
        if (ops[idx].kind == STK__AUG_NORMALIZE && bar)
            return stk__error(STK_ECONFIG,
                              "augment: 'normalize' must be the last stage (stage %zu of '%s')",
                              idx + 1, spec);
        if (!bar)
            return 0;
        s = bar + 1;
    }
}

/* Appends printf-style text; keeps counting past cap so the caller can
 * tell that it did not fit. */
typedef struct sbuf {
    char *buf;
    size_t cap, len;
} sbuf_t;

static void sb_printf(sbuf_t *b, const char *fmt, ...) STK_PRINTF(2, 3);
static void sb_printf(sbuf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    size_t room = b->len < b->cap ? b->cap - b->len : 0;
    int n = vsnprintf(room ? b->buf + b->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n > 0)
        b->len += (size_t)n;
}

/* Shortest "%.*g" that reads back as the same double. */
static void sb_num(sbuf_t *b, double v)
{
    char t[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(t, sizeof t, "%.*g", prec, v);
        if (strtod(t, NULL) == v)
            break;
    }
    sb_printf(b, "%s", t);
}

static void sb_list(sbuf_t *b, const double *v, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        if (i)
            sb_printf(b, "/");
        sb_num(b, v[i]);
    }
}

static void sb_size(sbuf_t *b, uint32_t h, uint32_t w)
{
    if (h == w)
        sb_printf(b, "%u", h);
    else
        sb_printf(b, "%ux%u", h, w);
}

int stk__aug_format(const stk__aug_op_t *ops, size_t nops, char *buf, size_t cap)
{
    sbuf_t b = {buf, cap, 0};
    if (cap)
        buf[0] = '\0';
    for (size_t i = 0; i < nops; i++) {
        const stk__aug_op_t *op = &ops[i];
        if (i)
            sb_printf(&b, "|");
        sb_printf(&b, "%s", stk__aug_kind_name(op->kind));
        char sep = ':';
#define SEP() (sb_printf(&b, "%c", sep), sep = ',')
        switch (op->kind) {
        case STK__AUG_CROP:
        case STK__AUG_CENTERCROP:
        case STK__AUG_RRCROP:
        case STK__AUG_RESIZE:
        case STK__AUG_CUTOUT: SEP(); sb_size(&b, op->sh, op->sw); break;
        default: break;
        }
        switch (op->kind) {
        case STK__AUG_CROP:
            if (op->pad)
                SEP(), sb_printf(&b, "pad=%u", op->pad);
            if (op->reflect)
                SEP(), sb_printf(&b, "mode=reflect");
            break;
        case STK__AUG_RRCROP:
            if (memcmp(op->scale, rrc_scale_default, sizeof op->scale))
                SEP(), sb_printf(&b, "scale="), sb_list(&b, op->scale, 2);
            if (memcmp(op->ratio, rrc_ratio_default, sizeof op->ratio))
                SEP(), sb_printf(&b, "ratio="), sb_list(&b, op->ratio, 2);
            break;
        case STK__AUG_HFLIP:
        case STK__AUG_VFLIP:
            if (op->p != 0.5)
                SEP(), sb_printf(&b, "p="), sb_num(&b, op->p);
            break;
        case STK__AUG_ROT90:
            if (op->k >= 0)
                SEP(), sb_printf(&b, "k=%d", op->k);
            break;
        case STK__AUG_JITTER:
            if (op->brightness > 0)
                SEP(), sb_printf(&b, "brightness="), sb_num(&b, op->brightness);
            if (op->contrast > 0)
                SEP(), sb_printf(&b, "contrast="), sb_num(&b, op->contrast);
            break;
        case STK__AUG_CUTOUT:
            if (op->p != 1.0)
                SEP(), sb_printf(&b, "p="), sb_num(&b, op->p);
            if (op->fill)
                SEP(), sb_printf(&b, "fill=%u", op->fill);
            break;
        case STK__AUG_NORMALIZE:
            SEP(), sb_printf(&b, "mean="), sb_list(&b, op->mean, op->nmean);
            SEP(), sb_printf(&b, "std="), sb_list(&b, op->std, op->nstd);
            if (op->dtype != STK_DTYPE_F32)
                SEP(), sb_printf(&b, "dtype=%s", stk_dtype_name(op->dtype));
            break;
        default: break;
        }
#undef SEP
    }
    if (b.len >= cap)
        return stk__error(-ENOSPC, "augment: canonical text needs %zu bytes, buffer has %zu",
                          b.len + 1, cap);
    return 0;
}
