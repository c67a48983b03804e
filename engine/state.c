/* SPDX-License-Identifier: MIT */
/* Model state as safetensors: 8-byte little-endian header length, a JSON
 * header {"name": {"dtype", "shape", "data_offsets"}}, then raw little-
 * endian data. One format for checkpoints and for PyTorch: what Stoker
 * saves, torch loads. Loading checks every name, dtype and shape before it
 * changes anything. */
#include "layer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* One tensor of the state: where it lives in the model. */
typedef struct entry {
    const char *name;
    const char *dtype; /* "F32" or "I64" */
    int ndim;
    const int64_t *shape;
    const void *data;  /* device memory for F32, host for I64 */
    void *dst;
    size_t bytes;
    int device;        /* data lives in backend memory */
    char nbt_name[160];
} entry_t;

static int collect(const stk_model_t *m, entry_t **out, size_t *n)
{
    size_t cap = m->npinfo + m->nbinfo + (size_t)m->nl;
    entry_t *e = calloc(cap ? cap : 1, sizeof(*e));
    if (!e)
        return stk__error(-ENOMEM, "state: out of memory");
    size_t k = 0;
    for (size_t i = 0; i < m->npinfo; i++, k++) {
        const stk_param_info_t *p = &m->pinfo[i].info;
        e[k] = (entry_t){.name = p->name, .dtype = "F32", .ndim = p->ndim, .shape = p->shape,
                         .data = m->params + p->offset, .dst = m->params + p->offset,
                         .bytes = p->count * sizeof(float), .device = 1};
    }
    for (size_t i = 0; i < m->nbinfo; i++, k++) {
        const stk_param_info_t *p = &m->binfo[i].info;
        e[k] = (entry_t){.name = p->name, .dtype = "F32", .ndim = p->ndim, .shape = p->shape,
                         .data = m->buffers + p->offset, .dst = m->buffers + p->offset,
                         .bytes = p->count * sizeof(float), .device = 1};
    }
    for (int i = 0; i < m->nl; i++) {
        stk__layer_t *l = &m->layers[i];
        if (!l->cls->counts_batches)
            continue;
        e[k] = (entry_t){.dtype = "I64", .ndim = 0, .shape = NULL, .data = &l->num_batches_tracked,
                         .dst = &l->num_batches_tracked, .bytes = sizeof(int64_t)};
        snprintf(e[k].nbt_name, sizeof(e[k].nbt_name), "%s.num_batches_tracked", l->name);
        e[k].name = e[k].nbt_name;
        k++;
    }
    *out = e;
    *n = k;
    return 0;
}

/* The JSON header, padded with spaces to a multiple of 8 bytes. Returns its
 * length; writes at most cap bytes. */
static size_t header_text(const entry_t *e, size_t n, char *buf, size_t cap)
{
    size_t len = 0, off = 0;
#define PUT(...)                                                                                                     \
    do {                                                                                                             \
        int r_ = snprintf(buf ? buf + len : NULL, buf && len < cap ? cap - len : 0, __VA_ARGS__);                    \
        len += (size_t)r_;                                                                                           \
    } while (0)
    PUT("{\"__metadata__\":{\"format\":\"pt\",\"producer\":\"stoker\"}");
    for (size_t i = 0; i < n; i++) {
        PUT(",\"%s\":{\"dtype\":\"%s\",\"shape\":[", e[i].name, e[i].dtype);
        for (int d = 0; d < e[i].ndim; d++)
            PUT("%s%lld", d ? "," : "", (long long)e[i].shape[d]);
        PUT("],\"data_offsets\":[%zu,%zu]}", off, off + e[i].bytes);
        off += e[i].bytes;
    }
    PUT("}");
#undef PUT
    size_t padded = (len + 7) & ~(size_t)7;
    if (buf)
        for (size_t i = len; i < padded && i < cap; i++)
            buf[i] = ' ';
    return padded;
}

static size_t state_size(const entry_t *e, size_t n)
{
    size_t s = 8 + header_text(e, n, NULL, 0);
    for (size_t i = 0; i < n; i++)
        s += e[i].bytes;
    return s;
}

size_t stk_model_state_size(const stk_model_t *m)
{
    entry_t *e;
    size_t n;
    if (collect(m, &e, &n) < 0)
        return 0;
    size_t s = state_size(e, n);
    free(e);
    return s;
}

int stk_model_state_save_mem(const stk_model_t *m, void *buf, size_t cap, size_t *written)
{
    if (!m || !buf)
        return stk__error(-EINVAL, "state save: NULL argument");
    entry_t *e;
    size_t n;
    int rc = collect(m, &e, &n);
    if (rc < 0)
        return rc;
    size_t need = state_size(e, n);
    if (cap < need) {
        free(e);
        return stk__error(-ENOSPC, "state save: needs %zu bytes, the buffer has %zu", need, cap);
    }
    unsigned char *p = buf;
    /* snprintf writes a NUL after the header: give it room, then pad. */
    size_t hl = header_text(e, n, NULL, 0);
    char *hdr = malloc(hl + 1);
    if (!hdr) {
        free(e);
        return stk__error(-ENOMEM, "state save: out of memory");
    }
    header_text(e, n, hdr, hl + 1);
    uint64_t hl64 = hl;
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(hl64 >> (8 * i));
    memcpy(p + 8, hdr, hl);
    free(hdr);
    size_t off = 8 + hl;
    for (size_t i = 0; i < n; i++) {
        if (e[i].device)
            m->be.iface->download(m->be.ctx, p + off, e[i].data, e[i].bytes);
        else
            memcpy(p + off, e[i].data, e[i].bytes);
        off += e[i].bytes;
    }
    free(e);
    if (written)
        *written = off;
    return 0;
}

/* ------------------------------------------------------------ JSON header */

typedef struct jp {
    const char *s, *end;
} jp_t;

static void ws(jp_t *j)
{
    while (j->s < j->end && (*j->s == ' ' || *j->s == '\n' || *j->s == '\t' || *j->s == '\r'))
        j->s++;
}

static int eat(jp_t *j, char c)
{
    ws(j);
    if (j->s < j->end && *j->s == c) {
        j->s++;
        return 1;
    }
    return 0;
}

/* A string without escapes (names never need them); into out (cap). */
static int jstring(jp_t *j, char *out, size_t cap)
{
    if (!eat(j, '"'))
        return -1;
    size_t n = 0;
    while (j->s < j->end && *j->s != '"') {
        if (*j->s == '\\' || n + 1 >= cap)
            return -1;
        out[n++] = *j->s++;
    }
    if (j->s >= j->end)
        return -1;
    j->s++;
    out[n] = 0;
    return 0;
}

static int jint(jp_t *j, int64_t *v)
{
    ws(j);
    int64_t x = 0;
    const char *start = j->s;
    while (j->s < j->end && *j->s >= '0' && *j->s <= '9') {
        if (x > (INT64_MAX - 9) / 10)
            return -1;
        x = x * 10 + (*j->s++ - '0');
    }
    if (j->s == start)
        return -1;
    *v = x;
    return 0;
}

static int jint_array(jp_t *j, int64_t *v, int max, int *n)
{
    *n = 0;
    if (!eat(j, '['))
        return -1;
    if (eat(j, ']'))
        return 0;
    do {
        if (*n == max || jint(j, &v[*n]) < 0)
            return -1;
        (*n)++;
    } while (eat(j, ','));
    return eat(j, ']') ? 0 : -1;
}

/* Parses {"__metadata__": {...}, "name": {...}, ...} into f. */
static int parse_header(const char *text, size_t len, stk__st_file_t *f)
{
    jp_t j = {text, text + len};
    stk__st_entry_t *h = NULL;
    size_t cnt = 0, cap = 0;
    if (!eat(&j, '{'))
        goto bad;
    if (eat(&j, '}'))
        goto done;
    do {
        char key[160];
        if (jstring(&j, key, sizeof(key)) < 0 || !eat(&j, ':') || !eat(&j, '{'))
            goto bad;
        if (!strcmp(key, "__metadata__")) {
            if (!eat(&j, '}')) {
                do {
                    char k2[64], v2[STK__ST_META_MAX];
                    if (jstring(&j, k2, sizeof(k2)) < 0 || !eat(&j, ':') || jstring(&j, v2, sizeof(v2)) < 0)
                        goto bad;
                    if (f->nmeta < STK__ARRAY_LEN(f->meta)) {
                        snprintf(f->meta[f->nmeta].key, sizeof(f->meta[0].key), "%s", k2);
                        snprintf(f->meta[f->nmeta].value, sizeof(f->meta[0].value), "%s", v2);
                        f->nmeta++;
                    }
                } while (eat(&j, ','));
                if (!eat(&j, '}'))
                    goto bad;
            }
            continue;
        }
        if (cnt == cap) {
            cap = cap ? 2 * cap : 32;
            stk__st_entry_t *t = realloc(h, cap * sizeof(*h));
            if (!t) {
                free(h);
                return stk__error(-ENOMEM, "state: out of memory");
            }
            h = t;
        }
        stk__st_entry_t *e = &h[cnt++];
        memset(e, 0, sizeof(*e));
        snprintf(e->name, sizeof(e->name), "%s", key);
        int have = 0;
        do {
            char fld[32];
            if (jstring(&j, fld, sizeof(fld)) < 0 || !eat(&j, ':'))
                goto bad;
            if (!strcmp(fld, "dtype")) {
                if (jstring(&j, e->dtype, sizeof(e->dtype)) < 0)
                    goto bad;
                have |= 1;
            } else if (!strcmp(fld, "shape")) {
                if (jint_array(&j, e->shape, 8, &e->ndim) < 0)
                    goto bad;
                have |= 2;
            } else if (!strcmp(fld, "data_offsets")) {
                int64_t o[2];
                int no;
                if (jint_array(&j, o, 2, &no) < 0 || no != 2 || o[1] < o[0])
                    goto bad;
                e->begin = o[0];
                e->end = o[1];
                have |= 4;
            } else {
                goto bad;
            }
        } while (eat(&j, ','));
        if (!eat(&j, '}') || have != 7)
            goto bad;
    } while (eat(&j, ','));
    if (!eat(&j, '}'))
        goto bad;
done:
    f->entries = h;
    f->n = cnt;
    return 0;
bad:
    free(h);
    return stk__error(STK_EFORMAT, "state: bad safetensors header near byte %zu", (size_t)(j.s - text) + 8);
}

int stk__safetensors_parse(const void *buf, size_t len, stk__st_file_t *f)
{
    memset(f, 0, sizeof(*f));
    const unsigned char *p = buf;
    if (len < 8)
        return stk__error(STK_EFORMAT, "state: %zu bytes is too short for safetensors", len);
    uint64_t hl = 0;
    for (int i = 0; i < 8; i++)
        hl |= (uint64_t)p[i] << (8 * i);
    if (hl > len - 8 || hl < 2)
        return stk__error(STK_EFORMAT, "state: header length %llu does not fit %zu bytes", (unsigned long long)hl,
                          len);
    int rc = parse_header((const char *)p + 8, (size_t)hl, f);
    if (rc < 0)
        return rc;
    f->data = p + 8 + hl;
    f->data_len = len - 8 - (size_t)hl;
    for (size_t i = 0; i < f->n; i++) {
        if ((uint64_t)f->entries[i].end > f->data_len) {
            rc = stk__error(STK_EFORMAT, "state: '%s': data offsets [%lld, %lld) beyond the %zu data bytes",
                            f->entries[i].name, (long long)f->entries[i].begin, (long long)f->entries[i].end,
                            f->data_len);
            stk__safetensors_free(f);
            return rc;
        }
    }
    return 0;
}

void stk__safetensors_free(stk__st_file_t *f)
{
    free(f->entries);
    f->entries = NULL;
    f->n = 0;
}

const stk__st_entry_t *stk__safetensors_find(const stk__st_file_t *f, const char *name)
{
    for (size_t i = 0; i < f->n; i++)
        if (!strcmp(f->entries[i].name, name))
            return &f->entries[i];
    return NULL;
}

const char *stk__safetensors_meta(const stk__st_file_t *f, const char *key)
{
    for (size_t i = 0; i < f->nmeta; i++)
        if (!strcmp(f->meta[i].key, key))
            return f->meta[i].value;
    return NULL;
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *s)
{
    size_t len = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && len < cap; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%lld", i ? "," : "", (long long)s[i]);
    if (len < cap)
        snprintf(buf + len, cap - len, "]");
}

int stk_model_state_load_mem(stk_model_t *m, const void *buf, size_t len)
{
    if (!m || !buf)
        return stk__error(-EINVAL, "state load: NULL argument");
    stk__st_file_t f;
    int rc = stk__safetensors_parse(buf, len, &f);
    if (rc < 0)
        return rc;
    stk__st_entry_t *h = f.entries;
    size_t nh = f.n;
    entry_t *e = NULL;
    size_t n = 0;
    int *match = NULL;
    if ((rc = collect(m, &e, &n)) < 0)
        goto out;
    /* Check everything first: a failed load leaves the model unchanged. */
    match = calloc(n ? n : 1, sizeof(int));
    if (!match) {
        rc = stk__error(-ENOMEM, "state: out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        size_t k;
        for (k = 0; k < nh; k++)
            if (!h[k].used && !strcmp(h[k].name, e[i].name))
                break;
        if (k == nh) {
            rc = stk__error(STK_ENOTFOUND, "state: '%s' is missing", e[i].name);
            goto out;
        }
        h[k].used = 1;
        match[i] = (int)k;
        char a[96], b[96];
        int same = h[k].ndim == e[i].ndim && !strcmp(h[k].dtype, e[i].dtype);
        for (int d = 0; same && d < e[i].ndim; d++)
            same = h[k].shape[d] == e[i].shape[d];
        if (!same) {
            shape_str(a, sizeof(a), h[k].ndim, h[k].shape);
            shape_str(b, sizeof(b), e[i].ndim, e[i].shape);
            rc = stk__error(STK_ESHAPE, "state: '%s' is %s %s in the state but %s %s in the model", e[i].name,
                            h[k].dtype, a, e[i].dtype, b);
            goto out;
        }
        if ((uint64_t)(h[k].end - h[k].begin) != e[i].bytes) {
            rc = stk__error(STK_EFORMAT, "state: '%s': data offsets [%lld, %lld) do not match its shape",
                            e[i].name, (long long)h[k].begin, (long long)h[k].end);
            goto out;
        }
    }
    for (size_t k = 0; k < nh; k++)
        if (!h[k].used) {
            rc = stk__error(STK_ENOTFOUND, "state: '%s' is not in the model", h[k].name);
            goto out;
        }
    for (size_t i = 0; i < n; i++) {
        const void *src = f.data + h[match[i]].begin;
        if (e[i].device)
            m->be.iface->upload(m->be.ctx, e[i].dst, src, e[i].bytes);
        else
            memcpy(e[i].dst, src, e[i].bytes);
    }
out:
    free(match);
    free(e);
    stk__safetensors_free(&f);
    return rc;
}

int stk_model_state_save(const stk_model_t *m, const char *path)
{
    if (!m || !path)
        return stk__error(-EINVAL, "state save: NULL argument");
    size_t len = stk_model_state_size(m);
    void *buf = malloc(len);
    if (!buf)
        return stk__error(-ENOMEM, "state save: out of memory");
    int rc = stk_model_state_save_mem(m, buf, len, &len);
    if (rc < 0) {
        free(buf);
        return rc;
    }
    size_t pl = strlen(path) + 16;
    char *tmp = malloc(pl);
    if (!tmp) {
        free(buf);
        return stk__error(-ENOMEM, "state save: out of memory");
    }
    snprintf(tmp, pl, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        rc = stk__error(-errno, "state save: cannot create %s", tmp);
    } else {
        int bad = fwrite(buf, 1, len, f) != len;
        bad |= fflush(f) != 0;
        bad |= fsync(fileno(f)) != 0;
        bad |= fclose(f) != 0;
        if (bad) {
            rc = stk__error(-EIO, "state save: writing %s failed", tmp);
            unlink(tmp);
        } else if (rename(tmp, path) != 0) {
            rc = stk__error(-errno, "state save: cannot rename %s to %s", tmp, path);
            unlink(tmp);
        }
    }
    free(tmp);
    free(buf);
    return rc;
}

int stk_model_state_load(stk_model_t *m, const char *path)
{
    if (!m || !path)
        return stk__error(-EINVAL, "state load: NULL argument");
    FILE *f = fopen(path, "rb");
    if (!f)
        return stk__error(-errno, "state load: cannot open %s", path);
    int rc = 0;
    void *buf = NULL;
    long sz = -1;
    if (fseek(f, 0, SEEK_END) == 0)
        sz = ftell(f);
    if (sz < 0 || fseek(f, 0, SEEK_SET) != 0) {
        rc = stk__error(-EIO, "state load: cannot size %s", path);
        goto out;
    }
    buf = malloc(sz ? (size_t)sz : 1);
    if (!buf) {
        rc = stk__error(-ENOMEM, "state load: out of memory");
        goto out;
    }
    if (fread(buf, 1, (size_t)sz, f) != (size_t)sz) {
        rc = stk__error(-EIO, "state load: cannot read %s", path);
        goto out;
    }
    rc = stk_model_state_load_mem(m, buf, (size_t)sz);
    if (rc < 0)
        stk__error_prefix(rc, "%s", path);
out:
    free(buf);
    fclose(f);
    return rc;
}
