/* SPDX-License-Identifier: MIT */
/* The parts of the .stk format that both ends share: schemas (validation,
 * text form, on-disk descriptors) and the raw record layout; the XXH64
 * checksum is common/hash.c. Bytes are described in loader/FORMAT.md. */
#include "shard_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>

/* ---- Schema ---------------------------------------------------------- */

/* Names appear in "name:dtype[shape]" text, so keep them to characters
 * that cannot be confused with that syntax. */
static int name_ok(const char *name, size_t len)
{
    if (len == 0 || len >= STK_FIELD_NAME_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == '.' ||
                 c == '-' || (i > 0 && c >= '0' && c <= '9');
        if (!ok)
            return 0;
    }
    return 1;
}

int stk__field_check(const stk_field_t *f)
{
    size_t len = strnlen(f->name, STK_FIELD_NAME_MAX);
    if (!name_ok(f->name, len))
        return stk__error(STK_ECONFIG, "bad field name '%.*s' (1-%d of [A-Za-z0-9_.-])", (int)len,
                          f->name, STK_FIELD_NAME_MAX - 1);
    if (stk_dtype_size(f->dtype) == 0)
        return stk__error(STK_ECONFIG, "field '%s': bad dtype %d", f->name, (int)f->dtype);
    if (f->ndim > STK_MAX_DIMS)
        return stk__error(STK_ECONFIG, "field '%s': %u dims, at most %d", f->name, f->ndim,
                          STK_MAX_DIMS);
    /* Bytes of the fixed part must fit the 32-bit record length. */
    uint64_t bytes = stk_dtype_size(f->dtype);
    int nvar = 0;
    for (uint32_t d = 0; d < f->ndim; d++) {
        int64_t s = f->shape[d];
        if (s == -1) {
            nvar++;
            continue;
        }
        if (s < 1 || s > UINT32_MAX)
            return stk__error(STK_ECONFIG, "field '%s': bad extent %" PRId64 " in dim %u", f->name,
                              s, d);
        bytes *= (uint64_t)s;
        if (bytes > UINT32_MAX)
            return stk__error(STK_ECONFIG, "field '%s': over 4 GiB per record", f->name);
    }
    if (nvar > 1)
        return stk__error(STK_ECONFIG, "field '%s': %d variable dims, at most 1", f->name, nvar);
    for (uint32_t d = f->ndim; d < STK_MAX_DIMS; d++)
        if (f->shape[d] != 0)
            return stk__error(STK_ECONFIG, "field '%s': shape set beyond ndim", f->name);
    return 0;
}

int stk_schema_add(stk_schema_t *schema, const char *name, stk_dtype_t dtype, uint32_t ndim,
                   const int64_t *shape)
{
    if (!schema || !name)
        return stk__error(STK_ECONFIG, "stk_schema_add: NULL argument");
    if (schema->nfields >= STK_MAX_FIELDS)
        return stk__error(STK_ECONFIG, "field '%s': schema already has %d fields", name,
                          STK_MAX_FIELDS);
    if (ndim > 0 && !shape)
        return stk__error(STK_ECONFIG, "field '%s': NULL shape", name);
    if (ndim > STK_MAX_DIMS)
        return stk__error(STK_ECONFIG, "field '%s': %u dims, at most %d", name, ndim,
                          STK_MAX_DIMS);
    stk_field_t f;
    memset(&f, 0, sizeof f);
    size_t len = strnlen(name, STK_FIELD_NAME_MAX);
    if (len >= STK_FIELD_NAME_MAX)
        return stk__error(STK_ECONFIG, "field name '%.20s...' too long (max %d)", name,
                          STK_FIELD_NAME_MAX - 1);
    memcpy(f.name, name, len);
    f.dtype = dtype;
    f.ndim = ndim;
    for (uint32_t d = 0; d < ndim && d < STK_MAX_DIMS; d++)
        f.shape[d] = shape[d];
    int rc = stk__field_check(&f);
    if (rc)
        return rc;
    if (stk_schema_find(schema, name) >= 0)
        return stk__error(STK_ECONFIG, "duplicate field name '%s'", name);
    schema->fields[schema->nfields++] = f;
    return 0;
}

int stk_schema_find(const stk_schema_t *schema, const char *name)
{
    if (!schema || !name)
        return -1;
    for (uint32_t i = 0; i < schema->nfields && i < STK_MAX_FIELDS; i++)
        if (strncmp(schema->fields[i].name, name, STK_FIELD_NAME_MAX) == 0)
            return (int)i;
    return -1;
}

size_t stk_field_bytes(const stk_field_t *field, int64_t var_extent)
{
    /* Saturates at SIZE_MAX so that absurd extents read from a corrupt
     * record can never wrap around into a small size. */
    uint64_t n = stk_dtype_size(field->dtype);
    for (uint32_t d = 0; d < field->ndim && d < STK_MAX_DIMS; d++) {
        int64_t s = field->shape[d] == -1 ? var_extent : field->shape[d];
        uint64_t u = s > 0 ? (uint64_t)s : 0;
        if (u && n > UINT64_MAX / u)
            return SIZE_MAX;
        n *= u;
    }
    return n > SIZE_MAX ? SIZE_MAX : (size_t)n;
}

static int field_is_var(const stk_field_t *f)
{
    for (uint32_t d = 0; d < f->ndim && d < STK_MAX_DIMS; d++)
        if (f->shape[d] == -1)
            return 1;
    return 0;
}

int stk_schema_format(const stk_schema_t *schema, char *buf, size_t cap)
{
    if (!schema || !buf || cap == 0)
        return stk__error(-EINVAL, "stk_schema_format: NULL argument or no room");
    size_t pos = 0;
    buf[0] = '\0';
    for (uint32_t i = 0; i < schema->nfields && i < STK_MAX_FIELDS; i++) {
        const stk_field_t *f = &schema->fields[i];
        char one[STK_FIELD_NAME_MAX + 8 + STK_MAX_DIMS * 22];
        int n = snprintf(one, sizeof one, "%s%.*s:%s[", i ? " " : "", STK_FIELD_NAME_MAX,
                         f->name, stk_dtype_name(f->dtype));
        for (uint32_t d = 0; d < f->ndim && d < STK_MAX_DIMS; d++)
            n += snprintf(one + n, sizeof one - (size_t)n, "%s%" PRId64, d ? "," : "",
                          f->shape[d]);
        n += snprintf(one + n, sizeof one - (size_t)n, "]");
        if (pos + (size_t)n >= cap)
            return stk__error(-ENOSPC, "schema text needs more than %zu bytes", cap);
        memcpy(buf + pos, one, (size_t)n + 1);
        pos += (size_t)n;
    }
    return 0;
}

void stk__schema_sizes(const stk_schema_t *schema, stk__schema_sizes_t *out)
{
    out->nvar = 0;
    out->min_raw = 0;
    for (uint32_t i = 0; i < schema->nfields; i++) {
        const stk_field_t *f = &schema->fields[i];
        if (field_is_var(f)) {
            out->nvar++;
            out->min_raw += 4;
        } else {
            out->min_raw += stk_field_bytes(f, 0);
        }
    }
}

void stk__schema_encode(const stk_schema_t *schema, unsigned char *out)
{
    for (uint32_t i = 0; i < schema->nfields; i++) {
        const stk_field_t *f = &schema->fields[i];
        unsigned char *p = out + (size_t)i * STK__FIELD_DESC;
        memset(p, 0, STK__FIELD_DESC);
        memcpy(p, f->name, strnlen(f->name, STK_FIELD_NAME_MAX - 1));
        stk__put_u32(p + 32, (uint32_t)f->dtype);
        stk__put_u32(p + 36, f->ndim);
        for (int d = 0; d < STK_MAX_DIMS; d++)
            stk__put_u64(p + 40 + 8 * d, (uint64_t)(d < (int)f->ndim ? f->shape[d] : 0));
    }
}

int stk__schema_decode(stk_schema_t *schema, const unsigned char *in, uint32_t nfields)
{
    memset(schema, 0, sizeof *schema);
    if (nfields == 0 || nfields > STK_MAX_FIELDS)
        return stk__error(STK_EFORMAT, "schema has %u fields (1..%d allowed)", nfields,
                          STK_MAX_FIELDS);
    for (uint32_t i = 0; i < nfields; i++) {
        const unsigned char *p = in + (size_t)i * STK__FIELD_DESC;
        stk_field_t f;
        memset(&f, 0, sizeof f);
        if (memchr(p, 0, STK_FIELD_NAME_MAX) == NULL)
            return stk__error(STK_EFORMAT, "schema field %u: name not terminated", i);
        memcpy(f.name, p, STK_FIELD_NAME_MAX);
        for (size_t k = strlen(f.name); k < STK_FIELD_NAME_MAX; k++)
            if (p[k] != 0)
                return stk__error(STK_EFORMAT, "schema field %u: junk after name", i);
        f.dtype = (stk_dtype_t)stk__get_u32(p + 32);
        f.ndim = stk__get_u32(p + 36);
        for (int d = 0; d < STK_MAX_DIMS; d++)
            f.shape[d] = (int64_t)stk__get_u64(p + 40 + 8 * d);
        int rc = stk__field_check(&f);
        if (rc)
            return stk__error_prefix(STK_EFORMAT, "schema field %u", i);
        if (stk_schema_find(schema, f.name) >= 0)
            return stk__error(STK_EFORMAT, "schema field %u: duplicate name '%s'", i, f.name);
        schema->fields[schema->nfields++] = f;
    }
    return 0;
}

int stk__schema_equal(const stk_schema_t *a, const stk_schema_t *b)
{
    if (a->nfields != b->nfields)
        return 0;
    for (uint32_t i = 0; i < a->nfields; i++) {
        const stk_field_t *x = &a->fields[i], *y = &b->fields[i];
        if (strncmp(x->name, y->name, STK_FIELD_NAME_MAX) || x->dtype != y->dtype ||
            x->ndim != y->ndim)
            return 0;
        for (uint32_t d = 0; d < x->ndim; d++)
            if (x->shape[d] != y->shape[d])
                return 0;
    }
    return 1;
}

/* ---- Raw records ----------------------------------------------------- */

int stk_record_raw_size(const stk_schema_t *schema, const int64_t *var_extent, size_t *len)
{
    uint64_t total = 0;
    for (uint32_t i = 0; i < schema->nfields; i++) {
        const stk_field_t *f = &schema->fields[i];
        int64_t ext = -1;
        if (field_is_var(f)) {
            ext = var_extent ? var_extent[i] : -1;
            if (ext < 0 || ext > UINT32_MAX)
                return stk__error(STK_ESHAPE, "field '%s': bad variable extent %" PRId64,
                                  f->name, ext);
            total += 4;
        }
        /* Per-field product can exceed 64 bits only with absurd extents,
         * which the 4 GiB check below rejects after one field. */
        uint64_t b = stk_dtype_size(f->dtype);
        for (uint32_t d = 0; d < f->ndim; d++) {
            uint64_t s = f->shape[d] == -1 ? (uint64_t)ext : (uint64_t)f->shape[d];
            if (s && b > UINT64_MAX / s)
                return stk__error(STK_ESHAPE, "field '%s': record over 4 GiB", f->name);
            b *= s;
        }
        total += b;
        if (total > UINT32_MAX)
            return stk__error(STK_ESHAPE, "field '%s': record over 4 GiB", f->name);
    }
    *len = (size_t)total;
    return 0;
}

int stk_record_build(const stk_schema_t *schema, const void *const *data,
                     const int64_t *var_extent, void *out, size_t cap, size_t *len)
{
    size_t need;
    int rc = stk_record_raw_size(schema, var_extent, &need);
    if (rc)
        return rc;
    if (need > cap)
        return stk__error(-ENOSPC, "record needs %zu bytes, buffer has %zu", need, cap);
    unsigned char *p = out;
    for (uint32_t i = 0; i < schema->nfields; i++)
        if (field_is_var(&schema->fields[i])) {
            stk__put_u32(p, (uint32_t)var_extent[i]);
            p += 4;
        }
    for (uint32_t i = 0; i < schema->nfields; i++) {
        const stk_field_t *f = &schema->fields[i];
        size_t b = stk_field_bytes(f, field_is_var(f) ? var_extent[i] : 0);
        if (b && !data[i])
            return stk__error(STK_ESHAPE, "field '%s': NULL data", f->name);
        if (b)
            memcpy(p, data[i], b);
        p += b;
    }
    *len = need;
    return 0;
}

int stk_record_parse(const stk_schema_t *schema, const void *raw, size_t raw_len,
                     stk_record_t *out)
{
    const unsigned char *base = raw;
    uint64_t pos = 0;
    int64_t ext[STK_MAX_FIELDS];
    for (uint32_t i = 0; i < schema->nfields; i++) {
        ext[i] = -1;
        if (field_is_var(&schema->fields[i])) {
            if (pos + 4 > raw_len)
                return stk__error(STK_EDATA, "record of %zu bytes too short for its extents",
                                  raw_len);
            ext[i] = stk__get_u32(base + pos);
            pos += 4;
        }
    }
    out->nfields = schema->nfields;
    for (uint32_t i = 0; i < schema->nfields; i++) {
        const stk_field_t *f = &schema->fields[i];
        uint64_t b = stk_field_bytes(f, ext[i] < 0 ? 0 : ext[i]);
        if (b > raw_len - pos)
            return stk__error(STK_EDATA,
                              "record of %zu bytes too short: field '%s' needs %" PRIu64
                              " bytes at offset %" PRIu64,
                              raw_len, f->name, b, pos);
        out->data[i] = base + pos;
        out->bytes[i] = (size_t)b;
        out->var_extent[i] = ext[i];
        pos += b;
    }
    if (pos != raw_len)
        return stk__error(STK_EDATA, "record is %zu bytes, its schema and extents make %" PRIu64,
                          raw_len, pos);
    return 0;
}
