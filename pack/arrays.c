/* SPDX-License-Identifier: MIT */
/* Arrays in memory as a source: what Python's stoker.pack_arrays hands
 * over (NumPy arrays sharing a first dimension), and any C program that
 * holds its data in arrays. Fixed shapes only; nothing is copied. */
#define _GNU_SOURCE
#include "pack_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct arrays_priv {
    const unsigned char *base[STK_MAX_FIELDS];
    size_t bytes[STK_MAX_FIELDS];
} arrays_priv_t;

static int arrays_open(stk_pack_source_t *src, const stk_pack_source_config_t *cfg)
{
    (void)cfg;
    const stk__pack_arrays_arg_t *a = src->priv; /* stk_pack_source_create_arrays passes its arguments here */
    src->priv = NULL;
    const stk_schema_t *s = a->schema;
    if (s->nfields == 0 || s->nfields > STK_MAX_FIELDS)
        return stk__error(STK_ECONFIG, "arrays: schema has %u fields (1..%d)", s->nfields,
                          STK_MAX_FIELDS);
    arrays_priv_t *p = calloc(1, sizeof *p);
    if (!p)
        return stk__error(-ENOMEM, "out of memory");
    src->priv = p;
    int rc;
    for (uint32_t f = 0; f < s->nfields; f++) {
        const stk_field_t *fd = &s->fields[f];
        for (uint32_t d = 0; d < fd->ndim; d++)
            if (fd->shape[d] < 0)
                return stk__error(STK_ECONFIG, "arrays: field '%s' has a variable dim; only fixed "
                                  "shapes can be packed from arrays", fd->name);
        if (!a->fields[f])
            return stk__error(STK_ECONFIG, "arrays: no data for field '%s'", fd->name);
        /* Re-adding checks names, dtypes and shapes as the writer will. */
        if ((rc = stk_schema_add(&src->schema, fd->name, fd->dtype, fd->ndim, fd->shape)))
            return stk__error_prefix(rc, "arrays");
        p->base[f] = a->fields[f];
        p->bytes[f] = stk_field_bytes(fd, 0);
    }
    if (a->n == 0)
        return stk__error(STK_EEMPTY, "arrays: no samples (first dimension is 0)");
    src->count = a->n;
    return 0;
}

static int arrays_next(stk_pack_source_t *src, const void **data, int64_t *ext)
{
    arrays_priv_t *p = src->priv;
    (void)ext;
    for (uint32_t f = 0; f < src->schema.nfields; f++)
        data[f] = p->base[f] + (size_t)src->pos * p->bytes[f];
    src->pos++;
    return 0;
}

static int arrays_rewind(stk_pack_source_t *src)
{
    (void)src;
    return 0;
}

static void arrays_close(stk_pack_source_t *src)
{
    free(src->priv);
    src->priv = NULL;
}

const stk__pack_fmt_t stk__pack_arrays = {
    .name = "arrays",
    .open = arrays_open,
    .next = arrays_next,
    .rewind = arrays_rewind,
    .close = arrays_close,
};
