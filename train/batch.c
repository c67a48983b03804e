/* SPDX-License-Identifier: MIT */
/* Batches to model inputs: a field by name, its tensor view, labels widened
 * to i64, and images converted to the input dtype with the normalize stage
 * of an augment spec applied in this process when the workers left the
 * pixels as bytes. The normalize runs through the augment module itself,
 * so bytes normalized here and in a worker are the same floats. */
#define _GNU_SOURCE
#include "internal.h"
#include "stoker/augment.h"
#include "stoker/train.h"
#include "train_seq.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

int stk_train_batch_field(const stk_batch_t *b, const char *name, const stk_batch_field_t **out)
{
    if (!b || !name || !out)
        return stk__error(-EINVAL, "stk_train_batch_field: NULL argument");
    *out = NULL;
    for (uint32_t f = 0; f < b->nfields; f++)
        if (strcmp(b->fields[f].name, name) == 0) {
            *out = &b->fields[f];
            return 0;
        }
    char names[256];
    size_t used = 0;
    names[0] = '\0';
    for (uint32_t f = 0; f < b->nfields; f++) {
        int w = snprintf(names + used, sizeof names - used, "%s'%s'", f ? ", " : "", b->fields[f].name);
        if (w < 0 || (size_t)w >= sizeof names - used)
            break;
        used += (size_t)w;
    }
    return stk__error(STK_ENOTFOUND, "batch has no field '%s' (it has %s)", name, b->nfields ? names : "none");
}

int stk_train_field_tensor(const stk_batch_field_t *f, stk_tensor_t *out)
{
    if (!f || !out)
        return stk__error(-EINVAL, "stk_train_field_tensor: NULL argument");
    if (f->var_dim >= 0 || f->lengths)
        return stk__error(STK_ESHAPE, "field '%s' has a variable length: no fixed-shape tensor", f->name);
    if (f->ndim < 1 || f->ndim > STK_TENSOR_MAX_DIMS)
        return stk__error(STK_ESHAPE, "field '%s' has %u dimensions with the batch; a tensor takes 1..%d", f->name,
                          f->ndim, STK_TENSOR_MAX_DIMS);
    int rc = stk_tensor_init(out, f->data, f->dtype, (int)f->ndim, f->shape);
    if (rc)
        return stk__error(rc, "field '%s': %s", f->name, stk_error_message());
    return 0;
}

int stk_train_labels_i64(const stk_batch_field_t *f, int64_t *out, size_t n)
{
    if (!f || (!out && n))
        return stk__error(-EINVAL, "stk_train_labels_i64: NULL argument");
    if (f->ndim != 1 || f->var_dim >= 0)
        return stk__error(STK_ESHAPE, "label field '%s' is not one integer per sample (%u dimensions with the batch)",
                          f->name, f->ndim);
    if ((uint64_t)f->shape[0] != n)
        return stk__error(STK_ESHAPE, "label field '%s' holds %lld labels, expected %zu", f->name,
                          (long long)f->shape[0], n);
    switch (f->dtype) {
    case STK_DTYPE_U8:
        for (size_t i = 0; i < n; i++)
            out[i] = ((const uint8_t *)f->data)[i];
        return 0;
    case STK_DTYPE_I8:
        for (size_t i = 0; i < n; i++)
            out[i] = ((const int8_t *)f->data)[i];
        return 0;
    case STK_DTYPE_I32:
        for (size_t i = 0; i < n; i++)
            out[i] = ((const int32_t *)f->data)[i];
        return 0;
    case STK_DTYPE_I64:
        if (n)
            memcpy(out, f->data, n * sizeof *out);
        return 0;
    default:
        return stk__error(STK_ECONFIG, "label field '%s' has dtype %s; labels must be integers (u8, i8, i32, i64)",
                          f->name, stk_dtype_name(f->dtype));
    }
}

/* The most values a mean= or std= list of a normalize spec has (1 when
 * none): "mean=0.4/0.5/0.6" has 3, one per channel. */
static unsigned list_channels(const char *spec)
{
    unsigned most = 1;
    for (const char *p = spec; *p; p++) {
        if ((p == spec || p[-1] == ':' || p[-1] == ',') && (!strncmp(p, "mean=", 5) || !strncmp(p, "std=", 4))) {
            unsigned n = 1;
            for (const char *q = strchr(p, '='); *q && *q != ',' && *q != '|'; q++)
                n += *q == '/';
            most = n > most ? n : most;
        }
    }
    return most;
}

/* The stage of spec starting at p and running len bytes is a normalize. */
static int is_normalize(const char *p, size_t len)
{
    return len >= 9 && strncmp(p, "normalize", 9) == 0 && (len == 9 || p[9] == ':');
}

int stk_train_normalize_spec(const char *spec, char *out, size_t cap)
{
    if (!spec || !out || cap == 0)
        return stk__error(-EINVAL, "stk_train_normalize_spec: NULL argument");
    out[0] = '\0';
    size_t used = 0;
    for (const char *p = spec; *p;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        while (len && isspace((unsigned char)*p)) {
            p++;
            len--;
        }
        if (is_normalize(p, len)) {
            size_t need = len + (used ? 1 : 0);
            if (used + need >= cap) {
                out[0] = '\0';
                return stk__error(-ENOSPC, "normalize stages of '%.60s' need more than %zu bytes", spec, cap);
            }
            if (used)
                out[used++] = '|';
            memcpy(out + used, p, len);
            used += len;
            out[used] = '\0';
        }
        if (!bar)
            break;
        p = bar + 1;
    }
    return 0;
}

/* ---- The converter ------------------------------------------------------ */

struct stk_train_inputs {
    char *image_field, *label_field, *normalize;
    stk_dtype_t dtype;
    int keep_half; /* f16 / bf16 images pass for the feed to convert */
    /* The normalize pipeline, made for the first image shape seen (and
     * again when the shape changes). */
    stk_augment_t *aug;
    stk_image_desc_t aug_in;
    /* What a call converts into, alternating between two sets: a loop
     * one batch ahead (train/feed.c) converts batch k + 1 while step k
     * still reads batch k's labels, and a device copy of its images may
     * still be in flight. */
    struct {
        void *img;      /* converted images */
        size_t img_cap; /* bytes */
        int64_t *lab;
        size_t lab_cap; /* bytes */
        stk__train_seq_t seq;
    } buf[2], *cur;
    int turn;
    int next_token;  /* a language model's batches (train/seq.c) */
    int64_t boundary;
};

void stk_train_inputs_config_default(stk_train_inputs_config_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->image_field = "image";
    cfg->label_field = "label";
    cfg->dtype = STK_DTYPE_F32;
}

void stk_train_inputs_destroy(stk_train_inputs_t **in)
{
    if (!in || !*in)
        return;
    stk_train_inputs_t *x = *in;
    stk_augment_destroy(&x->aug);
    free(x->image_field);
    free(x->label_field);
    free(x->normalize);
    for (int i = 0; i < 2; i++) {
        free(x->buf[i].img);
        free(x->buf[i].lab);
        stk__train_seq_free(&x->buf[i].seq);
    }
    free(x);
    *in = NULL;
}

int stk_train_inputs_create(stk_train_inputs_t **out, const stk_train_inputs_config_t *cfg)
{
    if (!out)
        return stk__error(-EINVAL, "stk_train_inputs_create: NULL argument");
    *out = NULL;
    stk_train_inputs_config_t defaults;
    if (!cfg) {
        stk_train_inputs_config_default(&defaults);
        cfg = &defaults;
    }
    if (!cfg->image_field || !cfg->image_field[0])
        return stk__error(STK_ECONFIG, "train inputs: no image field");
    if (cfg->dtype != STK_DTYPE_F32 && cfg->dtype != STK_DTYPE_F16 && cfg->dtype != STK_DTYPE_BF16)
        return stk__error(STK_ECONFIG, "train inputs: dtype %s; the input tensor is f32, f16 or bf16",
                          stk_dtype_name(cfg->dtype));
    stk_train_inputs_t *x = calloc(1, sizeof *x);
    if (!x)
        return stk__error(-ENOMEM, "train inputs: out of memory");
    x->dtype = cfg->dtype;
    x->next_token = cfg->next_token != 0;
    x->keep_half = cfg->keep_half && cfg->dtype == STK_DTYPE_F32;
    x->boundary = cfg->boundary_token;
    if (x->next_token && cfg->label_field) {
        free(x);
        return stk__error(STK_ECONFIG, "train inputs: next_token makes its own targets: no label field");
    }
    const char *spec = cfg->normalize ? cfg->normalize : "";
    size_t cap = strlen(spec) + 1;
    x->image_field = strdup(cfg->image_field);
    x->label_field = cfg->label_field ? strdup(cfg->label_field) : NULL;
    x->normalize = malloc(cap);
    if (!x->image_field || (cfg->label_field && !x->label_field) || !x->normalize) {
        stk_train_inputs_destroy(&x);
        return stk__error(-ENOMEM, "train inputs: out of memory");
    }
    int rc = stk_train_normalize_spec(spec, x->normalize, cap);
    if (rc == 0 && x->normalize[0]) {
        /* Checked once here on a 1x1 image of as many channels as its
         * lists have values, so that a bad spec fails at create and not
         * at the first batch. */
        stk_image_desc_t d = {.c = list_channels(x->normalize), .h = 1, .w = 1, .dtype = STK_DTYPE_U8,
                              .layout = STK_LAYOUT_CHW};
        stk_augment_t *probe = NULL;
        rc = stk_augment_create(&probe, x->normalize, &d, 0);
        if (rc)
            rc = stk__error_prefix(rc, "train inputs: normalize '%s'", x->normalize);
        stk_augment_destroy(&probe);
    }
    if (rc) {
        stk_train_inputs_destroy(&x);
        return rc;
    }
    *out = x;
    return 0;
}

static int grow(void **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    void *p = malloc(need);
    if (!p)
        return stk__error(-ENOMEM, "train inputs: out of memory for %zu bytes", need);
    free(*buf);
    *buf = p;
    *cap = need;
    return 0;
}

static void store(void *dst, stk_dtype_t dt, size_t i, float v)
{
    if (dt == STK_DTYPE_F32)
        ((float *)dst)[i] = v;
    else if (dt == STK_DTYPE_F16)
        ((uint16_t *)dst)[i] = stk_f32_to_f16(v);
    else
        ((uint16_t *)dst)[i] = stk_f32_to_bf16(v);
}

/* Bytes to the input dtype through the normalize pipeline, one sample at
 * a time (the pipeline is per-sample: that is how workers run it). */
static int convert_u8(stk_train_inputs_t *x, const stk_batch_field_t *f, size_t n, size_t per, uint32_t c,
                      uint32_t h, uint32_t w)
{
    const uint8_t *px = f->data;
    size_t esz = stk_dtype_size(x->dtype);
    int rc = grow(&x->cur->img, &x->cur->img_cap, n * per * esz);
    if (rc)
        return rc;
    if (!x->normalize[0]) {
        for (size_t i = 0; i < n * per; i++)
            store(x->cur->img, x->dtype, i, (float)px[i] * (1.0f / 255.0f));
        return 0;
    }
    if (!x->aug || x->aug_in.c != c || x->aug_in.h != h || x->aug_in.w != w) {
        stk_augment_destroy(&x->aug);
        x->aug_in = (stk_image_desc_t){.c = c, .h = h, .w = w, .dtype = STK_DTYPE_U8, .layout = STK_LAYOUT_CHW};
        /* The normalize stage's own dtype option follows the input dtype. */
        char spec[1100];
        const char *dt = x->dtype == STK_DTYPE_F32 ? "" : x->dtype == STK_DTYPE_F16 ? ",dtype=f16" : ",dtype=bf16";
        if (strstr(x->normalize, "dtype=") || strchr(x->normalize, '|'))
            dt = "";
        snprintf(spec, sizeof spec, "%s%s", x->normalize, dt);
        rc = stk_augment_create(&x->aug, spec, &x->aug_in, 0);
        if (rc)
            return stk__error(rc, "train inputs: normalize '%s' for %ux%ux%u images: %s", spec, c, h, w,
                              stk_error_message());
    }
    stk_image_desc_t od;
    stk_augment_output(x->aug, &od);
    if (od.dtype != x->dtype || (size_t)od.c * od.h * od.w != per)
        return stk__error(STK_ECONFIG, "train inputs: normalize '%s' gives %s %ux%ux%u images, the input is %s",
                          x->normalize, stk_dtype_name(od.dtype), od.c, od.h, od.w, stk_dtype_name(x->dtype));
    for (size_t i = 0; i < n; i++) {
        /* normalize draws nothing: seed, epoch and index do not matter. */
        rc = stk_augment_apply(x->aug, px + i * per, (char *)x->cur->img + i * per * esz, NULL, 0, 0, i);
        if (rc)
            return stk__error(rc, "train inputs: normalize: %s", stk_error_message());
    }
    return 0;
}

static int convert_float(stk_train_inputs_t *x, const stk_batch_field_t *f, size_t count)
{
    size_t esz = stk_dtype_size(x->dtype);
    int rc = grow(&x->cur->img, &x->cur->img_cap, count * esz);
    if (rc)
        return rc;
    for (size_t i = 0; i < count; i++) {
        float v;
        if (f->dtype == STK_DTYPE_F32)
            v = ((const float *)f->data)[i];
        else if (f->dtype == STK_DTYPE_F16)
            v = stk_f16_to_f32(((const uint16_t *)f->data)[i]);
        else
            v = stk_bf16_to_f32(((const uint16_t *)f->data)[i]);
        store(x->cur->img, x->dtype, i, v);
    }
    return 0;
}

int stk_train_inputs_get(stk_train_inputs_t *x, const stk_batch_t *b, stk_tensor_t *input, stk_tensor_t *target)
{
    if (!x || !b || !input)
        return stk__error(-EINVAL, "stk_train_inputs_get: NULL argument");
    const stk_batch_field_t *img;
    int rc = stk_train_batch_field(b, x->image_field, &img);
    if (rc)
        return rc;
    x->cur = &x->buf[x->turn];
    x->turn ^= 1;
    if (x->next_token)
        return stk__train_next_token(&x->cur->seq, img, x->boundary, input, target);
    if (img->var_dim >= 0 || img->lengths)
        return stk__error(STK_ESHAPE, "image field '%s' has a variable shape", img->name);
    uint32_t c, h, w;
    int flat = img->ndim == 2; /* features: N x F */
    if (flat) {
        c = (uint32_t)img->shape[1];
        h = w = 1;
    } else if (img->ndim == 3) {
        c = 1;
        h = (uint32_t)img->shape[1];
        w = (uint32_t)img->shape[2];
    } else if (img->ndim == 4) {
        c = (uint32_t)img->shape[1];
        h = (uint32_t)img->shape[2];
        w = (uint32_t)img->shape[3];
    } else {
        return stk__error(STK_ESHAPE, "field '%s' is neither features nor an image: %u dimensions with the batch "
                          "(2, 3 or 4 expected)", img->name, img->ndim);
    }
    size_t n = (size_t)img->shape[0], per = (size_t)c * h * w;
    if (img->bytes != n * per * stk_dtype_size(img->dtype))
        return stk__error(STK_ESHAPE, "image field '%s' holds %zu bytes, not %zu samples of %ux%ux%u %s", img->name,
                          img->bytes, n, c, h, w, stk_dtype_name(img->dtype));
    const void *data = img->data;
    stk_dtype_t dtype = x->dtype;
    if (img->dtype == x->dtype) {
        /* Already what the model takes (the workers normalized). */
    } else if (x->keep_half && (img->dtype == STK_DTYPE_F16 || img->dtype == STK_DTYPE_BF16)) {
        dtype = img->dtype; /* the feed converts */
    } else if (img->dtype == STK_DTYPE_U8) {
        if ((rc = convert_u8(x, img, n, per, c, h, w)) != 0)
            return rc;
        data = x->cur->img;
    } else if (img->dtype == STK_DTYPE_F32 || img->dtype == STK_DTYPE_F16 || img->dtype == STK_DTYPE_BF16) {
        if ((rc = convert_float(x, img, n * per)) != 0)
            return rc;
        data = x->cur->img;
    } else {
        return stk__error(STK_ECONFIG, "image field '%s' has dtype %s; images are u8, f32, f16 or bf16", img->name,
                          stk_dtype_name(img->dtype));
    }
    int64_t shape[4] = {(int64_t)n, c, h, w};
    if ((rc = stk_tensor_init(input, (void *)data, dtype, flat ? 2 : 4, shape)) != 0)
        return rc;
    if (!target)
        return 0;
    if (!x->label_field) {
        memset(target, 0, sizeof *target);
        return 0;
    }
    const stk_batch_field_t *lab;
    if ((rc = stk_train_batch_field(b, x->label_field, &lab)) != 0)
        return rc;
    const int64_t *labels = lab->data;
    if (lab->dtype != STK_DTYPE_I64 || lab->ndim != 1) {
        if ((rc = grow((void **)&x->cur->lab, &x->cur->lab_cap, n * sizeof *x->cur->lab)) != 0)
            return rc;
        if ((rc = stk_train_labels_i64(lab, x->cur->lab, n)) != 0)
            return rc;
        labels = x->cur->lab;
    } else if ((size_t)lab->shape[0] != n) {
        return stk__error(STK_ESHAPE, "label field '%s' holds %lld labels for %zu images", lab->name,
                          (long long)lab->shape[0], n);
    }
    int64_t lshape[1] = {(int64_t)n};
    return stk_tensor_init(target, (void *)labels, STK_DTYPE_I64, 1, lshape);
}

/* ---- Checking data against a model -------------------------------------- */

int stk_train_check_data(const stk_dataset_t *ds, const stk_train_inputs_config_t *cfg, const char *augment,
                         const stk_model_t *model)
{
    if (!ds || !cfg || !cfg->image_field || !model)
        return stk__error(-EINVAL, "stk_train_check_data: NULL argument");
    const stk_schema_t *schema = stk_dataset_schema(ds);
    char desc[512];
    stk_schema_format(schema, desc, sizeof desc);
    const char *names[2] = {cfg->image_field, cfg->label_field};
    int idx[2] = {-1, -1};
    for (int k = 0; k < 2; k++)
        if (names[k] && (idx[k] = stk_schema_find(schema, names[k])) < 0)
            return stk__error(STK_ENOTFOUND, "the data has no field '%s' (it has %s)", names[k], desc);
    if (idx[1] >= 0) {
        const stk_field_t *lab = &schema->fields[idx[1]];
        if (lab->ndim != 0 || (lab->dtype != STK_DTYPE_U8 && lab->dtype != STK_DTYPE_I8 &&
                               lab->dtype != STK_DTYPE_I32 && lab->dtype != STK_DTYPE_I64))
            return stk__error(STK_ESHAPE, "label field '%s' is not an integer scalar (the data has %s)", lab->name,
                              desc);
    }
    const stk_field_t *img = &schema->fields[idx[0]];
    int seq = stk_model_input_steps(model) > 0;
    if (seq) {
        int rc = stk__train_check_sequence(schema, idx[0], cfg, desc, model);
        if (rc <= 0)
            return rc;
    } else if (cfg->next_token) {
        return stk__error(STK_ECONFIG, "next_token needs a model whose input is token ids (steps=T tokens=1)");
    }
    for (uint32_t i = 0; i < img->ndim; i++)
        if (img->shape[i] <= 0)
            return stk__error(STK_ESHAPE, "field '%s' has a variable shape (%s)", img->name, desc);
    stk_image_desc_t in = {.c = 1, .h = 1, .w = 1, .dtype = img->dtype, .layout = STK_LAYOUT_CHW}, out;
    if (img->ndim == 1) {
        in.c = (uint32_t)img->shape[0];
    } else if (img->ndim == 2) {
        in.h = (uint32_t)img->shape[0];
        in.w = (uint32_t)img->shape[1];
    } else if (img->ndim == 3) {
        in.c = (uint32_t)img->shape[0];
        in.h = (uint32_t)img->shape[1];
        in.w = (uint32_t)img->shape[2];
    } else {
        return stk__error(STK_ESHAPE, "field '%s' is neither features nor an image (%s)", img->name, desc);
    }
    out = in;
    if (augment && augment[0]) {
        stk_augment_t *aug = NULL;
        int rc = stk_augment_create(&aug, augment, &in, 0);
        if (rc)
            return rc;
        stk_augment_output(aug, &out);
        stk_augment_destroy(&aug);
    }
    int64_t shape[4];
    stk_model_input_shape(model, shape);
    /* a sequence of features takes any sample of its T x F elements (the
     * rows of an image as steps) */
    if ((int64_t)out.c * out.h * out.w != shape[1] * shape[2] * shape[3] ||
        (!seq && img->ndim > 1 &&
         ((int64_t)out.c != shape[1] || (int64_t)out.h != shape[2] || (int64_t)out.w != shape[3])))
        return stk__error(STK_ESHAPE, "samples are %ux%ux%u after '%s', the model takes %lldx%lldx%lld", out.c,
                          out.h, out.w, augment ? augment : "", (long long)shape[1], (long long)shape[2],
                          (long long)shape[3]);
    if (out.dtype != STK_DTYPE_F32 && out.dtype != STK_DTYPE_U8 && out.dtype != STK_DTYPE_F16 &&
        out.dtype != STK_DTYPE_BF16)
        return stk__error(STK_ECONFIG, "samples are %s after '%s'; inputs are converted from u8, f16, bf16 or f32",
                          stk_dtype_name(out.dtype), augment ? augment : "");
    return 0;
}
