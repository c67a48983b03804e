/* SPDX-License-Identifier: MIT */
/* NumPy .npy input: a data array of shape (N, ...) and an integer label
 * array of shape (N,), gzip or plain. The format: "\x93NUMPY", major,
 * minor, a header length (u16 in v1, u32 in v2/v3), then a Python dict
 * literal with 'descr', 'fortran_order' and 'shape'. Labels of any
 * integer width become i64. */
#define _GNU_SOURCE
#include "pack_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct npy_arr {
    const char *path;
    gzFile f;
    char descr[16];
    size_t itemsize;
    int ndim;
    uint64_t shape[8];
    uint64_t data_off;
} npy_arr_t;

typedef struct npy_priv {
    npy_arr_t data, labels;
    stk_dtype_t dtype;
    size_t rec_bytes;
    unsigned char *rec;
    unsigned char lbuf[8];
    int64_t label;
} npy_priv_t;

/* Finds 'key' in the header dict and returns the text after its colon. */
static const char *npy_value(const char *hdr, const char *key)
{
    char q[40];
    snprintf(q, sizeof q, "'%s'", key);
    const char *p = strstr(hdr, q);
    if (!p) {
        snprintf(q, sizeof q, "\"%s\"", key);
        p = strstr(hdr, q);
    }
    if (!p)
        return NULL;
    p += strlen(q);
    while (*p == ' ')
        p++;
    if (*p != ':')
        return NULL;
    p++;
    while (*p == ' ')
        p++;
    return p;
}

static int npy_parse_header(npy_arr_t *a, const char *hdr)
{
    const char *v = npy_value(hdr, "descr");
    const char *fo = npy_value(hdr, "fortran_order");
    const char *sh = npy_value(hdr, "shape");
    if (!v || !fo || !sh)
        return stk__error(STK_EFORMAT, "%s: .npy header lacks descr, fortran_order or shape", a->path);
    if (*v != '\'' && *v != '"')
        return stk__error(STK_EFORMAT, "%s: structured dtypes are not supported", a->path);
    char quote = *v++;
    const char *end = strchr(v, quote);
    if (!end || end - v >= (long)sizeof a->descr || end - v < 3)
        return stk__error(STK_EFORMAT, "%s: bad descr in .npy header", a->path);
    memcpy(a->descr, v, (size_t)(end - v));
    a->descr[end - v] = '\0';
    if (strncmp(fo, "False", 5) != 0)
        return stk__error(STK_EFORMAT,
                          "%s: fortran_order arrays are not supported (save with C order)", a->path);
    if (*sh != '(')
        return stk__error(STK_EFORMAT, "%s: bad shape in .npy header", a->path);
    const char *p = sh + 1;
    a->ndim = 0;
    for (;;) {
        while (*p == ' ' || *p == ',')
            p++;
        if (*p == ')')
            break;
        char *e;
        errno = 0;
        if (*p < '0' || *p > '9')
            return stk__error(STK_EFORMAT, "%s: bad shape in .npy header", a->path);
        unsigned long long n = strtoull(p, &e, 10);
        if (e == p || errno || a->ndim >= 8)
            return stk__error(STK_EFORMAT, "%s: bad shape in .npy header", a->path);
        a->shape[a->ndim++] = n;
        p = e;
        while (*p == 'L')
            p++;
    }
    /* Byte order: little-endian or not applicable (1-byte types). */
    char bo = a->descr[0];
    const char *t = a->descr + 1;
    if (bo != '<' && bo != '|' && bo != '=' && !(bo == '>' && t[1] == '1' && t[2] == '\0'))
        return stk__error(STK_EFORMAT, "%s: big-endian dtype '%s' not supported", a->path, a->descr);
    a->itemsize = (size_t)atoi(t + 1);
    return 0;
}

static int npy_open_arr(npy_arr_t *a)
{
    if (a->f)
        gzclose(a->f);
    a->f = NULL;
    int rc = stk__pack_gz_open(&a->f, a->path);
    unsigned char pre[10];
    if (rc || (rc = stk__pack_gz_read(a->f, pre, 8, a->path)))
        return rc;
    if (memcmp(pre, "\x93NUMPY", 6) != 0)
        return stk__error(STK_EFORMAT, "%s: not a .npy file (bad magic)", a->path);
    int major = pre[6];
    uint32_t hlen;
    if (major == 1) {
        if ((rc = stk__pack_gz_read(a->f, pre + 8, 2, a->path)))
            return rc;
        hlen = (uint32_t)pre[8] | (uint32_t)pre[9] << 8;
        a->data_off = 10 + (uint64_t)hlen;
    } else if (major == 2 || major == 3) {
        unsigned char b[4];
        if ((rc = stk__pack_gz_read(a->f, b, 4, a->path)))
            return rc;
        hlen = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
        a->data_off = 12 + (uint64_t)hlen;
    } else {
        return stk__error(STK_EFORMAT, "%s: .npy format version %d not supported", a->path, major);
    }
    if (hlen > (1u << 20))
        return stk__error(STK_EFORMAT, "%s: .npy header of %u bytes is implausible", a->path, hlen);
    char *hdr = malloc(hlen + 1);
    if (!hdr)
        return stk__error(-ENOMEM, "out of memory");
    rc = stk__pack_gz_read(a->f, hdr, hlen, a->path);
    if (!rc) {
        hdr[hlen] = '\0';
        rc = npy_parse_header(a, hdr);
    }
    free(hdr);
    return rc;
}

static stk_dtype_t npy_dtype(const char *descr)
{
    const char *t = descr + 1;
    static const struct {
        const char *t;
        stk_dtype_t dt;
    } map[] = {{"u1", STK_DTYPE_U8}, {"i1", STK_DTYPE_I8},   {"i4", STK_DTYPE_I32},
               {"i8", STK_DTYPE_I64}, {"f2", STK_DTYPE_F16}, {"f4", STK_DTYPE_F32}};
    for (size_t i = 0; i < STK__ARRAY_LEN(map); i++)
        if (strcmp(t, map[i].t) == 0)
            return map[i].dt;
    return STK_DTYPE_INVALID;
}

static int npy_label_ok(const char *descr)
{
    const char *t = descr + 1;
    return (t[0] == 'u' || t[0] == 'i') &&
           (!strcmp(t + 1, "1") || !strcmp(t + 1, "2") || !strcmp(t + 1, "4") || !strcmp(t + 1, "8"));
}

/* As idx.c: a plain file's size is checked up front. */
static int npy_check_size(const npy_arr_t *a, uint64_t payload)
{
    struct stat st;
    if (!gzdirect(a->f) || stat(a->path, &st) < 0 || !S_ISREG(st.st_mode))
        return 0;
    uint64_t want = a->data_off + payload;
    if ((uint64_t)st.st_size > want)
        return stk__error(STK_EFORMAT,
                          "%s: %" PRIu64 " bytes after the last of its %" PRIu64 " rows", a->path,
                          (uint64_t)st.st_size - want, a->shape[0]);
    if ((uint64_t)st.st_size < want)
        return stk__error(STK_EFORMAT,
                          "%s: truncated (%jd bytes, shape and dtype need %" PRIu64 ")", a->path,
                          (intmax_t)st.st_size, want);
    return 0;
}

static int npy_open(stk_pack_source_t *src, const stk_pack_source_config_t *cfg)
{
    if (cfg->ninputs != 2)
        return stk__error(STK_ECONFIG, "npy: takes 2 inputs (data, labels), got %zu", cfg->ninputs);
    npy_priv_t *p = calloc(1, sizeof *p);
    if (!p)
        return stk__error(-ENOMEM, "out of memory");
    src->priv = p;
    const char *data = cfg->inputs[0], *labels = cfg->inputs[1];
    const char *field = cfg->field && *cfg->field ? cfg->field : "data";
    p->data.path = data;
    p->labels.path = labels;
    int rc;
    if ((rc = npy_open_arr(&p->data)) || (rc = npy_open_arr(&p->labels)))
        return rc;
    p->dtype = npy_dtype(p->data.descr);
    if (p->dtype == STK_DTYPE_INVALID)
        return stk__error(STK_EFORMAT, "%s: dtype '%s' not supported (u1 i1 i4 i8 f2 f4)", data,
                          p->data.descr);
    if (!npy_label_ok(p->labels.descr))
        return stk__error(STK_EFORMAT, "%s: labels must be integers, dtype is '%s'", labels,
                          p->labels.descr);
    if (p->data.ndim < 1 || p->data.ndim > 1 + STK_MAX_DIMS)
        return stk__error(STK_ESHAPE, "%s: %d dims not supported (1..%d)", data, p->data.ndim,
                          1 + STK_MAX_DIMS);
    if (p->labels.ndim != 1)
        return stk__error(STK_ESHAPE, "%s: labels must be 1-D, array has %d dims", labels,
                          p->labels.ndim);
    if (p->data.shape[0] != p->labels.shape[0])
        return stk__error(STK_ESHAPE, "%s has %" PRIu64 " rows but %s has %" PRIu64, data,
                          p->data.shape[0], labels, p->labels.shape[0]);
    if (p->data.shape[0] == 0)
        return stk__error(STK_EEMPTY, "%s: no rows (shape starts with 0)", data);
    int64_t shape[STK_MAX_DIMS];
    for (int d = 1; d < p->data.ndim; d++) {
        if (p->data.shape[d] == 0 || p->data.shape[d] > INT32_MAX)
            return stk__error(STK_ESHAPE, "%s: dim %d of %" PRIu64 " not supported", data, d,
                              p->data.shape[d]);
        shape[d - 1] = (int64_t)p->data.shape[d];
    }
    if ((rc = stk_schema_add(&src->schema, field, p->dtype, (uint32_t)(p->data.ndim - 1), shape)) ||
        (rc = stk_schema_add(&src->schema, "label", STK_DTYPE_I64, 0, NULL)))
        return stk__error_prefix(rc, "%s", data);
    p->rec_bytes = stk_field_bytes(&src->schema.fields[0], 0);
    if (p->rec_bytes == 0)
        return stk__error(STK_EFORMAT, "%s: zero-sized rows", data);
    if ((rc = npy_check_size(&p->data, (uint64_t)p->rec_bytes * p->data.shape[0])) ||
        (rc = npy_check_size(&p->labels, (uint64_t)p->labels.itemsize * p->labels.shape[0])))
        return rc;
    p->rec = malloc(p->rec_bytes);
    if (!p->rec)
        return stk__error(-ENOMEM, "out of memory");
    src->count = cfg->limit && cfg->limit < p->data.shape[0] ? cfg->limit : p->data.shape[0];
    return 0;
}

static int npy_next(stk_pack_source_t *src, const void **data, int64_t *ext)
{
    npy_priv_t *p = src->priv;
    (void)ext;
    int rc;
    if ((rc = stk__pack_gz_read(p->data.f, p->rec, p->rec_bytes, p->data.path)) ||
        (rc = stk__pack_gz_read(p->labels.f, p->lbuf, p->labels.itemsize, p->labels.path)))
        return rc;
    const char *t = p->labels.descr + 1;
    size_t isz = p->labels.itemsize;
    uint64_t u = 0;
    for (size_t i = 0; i < isz; i++)
        u |= (uint64_t)p->lbuf[i] << (8 * i);
    if (t[0] == 'i' && isz < 8 && (u >> (8 * isz - 1)) & 1)
        u |= ~0ull << (8 * isz); /* sign-extend */
    if (t[0] == 'u' && isz == 8 && u > INT64_MAX)
        return stk__error(STK_EFORMAT, "%s: label %" PRIu64 " overflows i64", p->labels.path, u);
    p->label = (int64_t)u;
    data[0] = p->rec;
    data[1] = &p->label;
    src->pos++;
    if (src->pos == p->data.shape[0] &&
        ((rc = stk__pack_gz_expect_end(p->data.f, p->data.path, p->data.shape[0], "rows")) ||
         (rc = stk__pack_gz_expect_end(p->labels.f, p->labels.path, p->labels.shape[0], "rows"))))
        return rc;
    return 0;
}

static int npy_rewind(stk_pack_source_t *src)
{
    npy_priv_t *p = src->priv;
    int rc;
    if ((rc = npy_open_arr(&p->data)) || (rc = npy_open_arr(&p->labels)))
        return rc;
    return 0;
}

static void npy_close(stk_pack_source_t *src)
{
    npy_priv_t *p = src->priv;
    if (!p)
        return;
    if (p->data.f)
        gzclose(p->data.f);
    if (p->labels.f)
        gzclose(p->labels.f);
    free(p->rec);
    free(p);
    src->priv = NULL;
}

const stk__pack_fmt_t stk__pack_npy = {
    .name = "npy",
    .open = npy_open,
    .next = npy_next,
    .rewind = npy_rewind,
    .close = npy_close,
};
