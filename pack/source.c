/* SPDX-License-Identifier: MIT */
/* The importer table and a source's life: create picks the format's file,
 * next adds the record number to any error, destroy frees. Also the gzip
 * read helpers the stream formats (IDX, .npy) share. */
#define _GNU_SOURCE
#include "pack_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    const char *name;
    stk_pack_format_t format;
    const stk__pack_fmt_t *fmt;
} formats[] = {
    {"idx", STK_PACK_IDX, &stk__pack_idx},
    {"cifar10", STK_PACK_CIFAR10, &stk__pack_cifar10},
    {"cifar", STK_PACK_CIFAR10, &stk__pack_cifar10},
    {"cifar100", STK_PACK_CIFAR100, &stk__pack_cifar100},
    {"npy", STK_PACK_NPY, &stk__pack_npy},
    {"folder", STK_PACK_FOLDER, &stk__pack_folder},
    {"text", STK_PACK_TEXT, &stk__pack_text},
};

stk_pack_format_t stk_pack_format_from_name(const char *name)
{
    for (size_t i = 0; name && i < STK__ARRAY_LEN(formats); i++)
        if (strcmp(name, formats[i].name) == 0)
            return formats[i].format;
    return (stk_pack_format_t)0;
}

const char *stk_pack_format_name(stk_pack_format_t format)
{
    for (size_t i = 0; i < STK__ARRAY_LEN(formats); i++)
        if (formats[i].format == format)
            return formats[i].name;
    return "invalid";
}

void stk_pack_source_config_default(stk_pack_source_config_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
}

static int source_open(stk_pack_source_t **out, const stk__pack_fmt_t *fmt,
                       const stk_pack_source_config_t *cfg, const void *arg)
{
    stk_pack_source_t *src = calloc(1, sizeof *src);
    if (!src)
        return stk__error(-ENOMEM, "out of memory");
    src->fmt = fmt;
    src->priv = (void *)arg;
    int rc = fmt->open(src, cfg);
    if (!rc && src->count == 0)
        rc = stk__error(STK_EEMPTY, "%s input has no records", fmt->name);
    if (rc) {
        stk_pack_source_destroy(&src);
        return rc;
    }
    *out = src;
    return 0;
}

int stk_pack_source_create(stk_pack_source_t **out, const stk_pack_source_config_t *cfg)
{
    if (!out || !cfg)
        return stk__error(STK_ECONFIG, "stk_pack_source_create: NULL argument");
    *out = NULL;
    const stk__pack_fmt_t *fmt = NULL;
    for (size_t i = 0; i < STK__ARRAY_LEN(formats); i++)
        if (formats[i].format == cfg->format)
            fmt = formats[i].fmt;
    if (!fmt)
        return stk__error(STK_ECONFIG, "unknown input format %d", (int)cfg->format);
    for (size_t i = 0; i < cfg->ninputs; i++)
        if (!cfg->inputs || !cfg->inputs[i] || !cfg->inputs[i][0])
            return stk__error(STK_ECONFIG, "%s: input %zu is NULL or empty", fmt->name, i);
    return source_open(out, fmt, cfg, NULL);
}

int stk_pack_source_create_arrays(stk_pack_source_t **out, const stk_schema_t *schema,
                           const void *const *fields, uint64_t n)
{
    if (!out || !schema || !fields)
        return stk__error(STK_ECONFIG, "stk_pack_source_create_arrays: NULL argument");
    *out = NULL;
    stk__pack_arrays_arg_t arg = {schema, fields, n};
    stk_pack_source_config_t cfg;
    stk_pack_source_config_default(&cfg);
    return source_open(out, &stk__pack_arrays, &cfg, &arg);
}

void stk_pack_source_destroy(stk_pack_source_t **srcp)
{
    if (!srcp || !*srcp)
        return;
    stk_pack_source_t *src = *srcp;
    if (src->fmt->close)
        src->fmt->close(src);
    free(src);
    *srcp = NULL;
}

const stk_schema_t *stk_pack_source_schema(const stk_pack_source_t *src)
{
    return src ? &src->schema : NULL;
}

uint64_t stk_pack_source_count(const stk_pack_source_t *src)
{
    return src ? src->count : 0;
}

int stk_pack_source_next(stk_pack_source_t *src, const void **data, int64_t *ext)
{
    if (!src || !data || !ext)
        return stk__error(STK_ECONFIG, "stk_pack_source_next: NULL argument");
    if (src->pos >= src->count)
        return STK_DONE;
    for (int f = 0; f < STK_MAX_FIELDS; f++) {
        data[f] = NULL;
        ext[f] = -1;
    }
    uint64_t pos = src->pos;
    int rc = src->fmt->next(src, data, ext);
    if (rc < 0) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", stk_error_message());
        return stk__error(rc, "%s (record %" PRIu64 ")", msg, pos);
    }
    return rc;
}

int stk_pack_source_rewind(stk_pack_source_t *src)
{
    if (!src)
        return stk__error(STK_ECONFIG, "stk_pack_source_rewind: NULL source");
    src->pos = 0;
    return src->fmt->rewind(src);
}

/* ---- gzip/plain stream helpers --------------------------------------- */

int stk__pack_gz_open(gzFile *out, const char *path)
{
    errno = 0;
    gzFile f = gzopen(path, "rb");
    if (!f) {
        int e = errno ? errno : ENOMEM;
        return stk__error(-e, "%s: %s", path, strerror(e));
    }
    gzbuffer(f, 1 << 17);
    *out = f;
    return 0;
}

int stk__pack_gz_read(gzFile f, void *buf, size_t len, const char *path)
{
    unsigned char *p = buf;
    while (len) {
        unsigned chunk = len > (1u << 30) ? (1u << 30) : (unsigned)len;
        int n = gzread(f, p, chunk);
        if (n < 0) {
            int zerr;
            const char *msg = gzerror(f, &zerr);
            if (zerr == Z_ERRNO)
                return stk__error(-errno, "%s: read error: %s", path, strerror(errno));
            return stk__error(STK_EFORMAT, "%s: %s", path, msg);
        }
        if (n == 0)
            return stk__error(STK_EFORMAT, "%s: truncated (unexpected end of file)", path);
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int stk__pack_gz_expect_end(gzFile f, const char *path, uint64_t records, const char *what)
{
    unsigned char buf[4096];
    uint64_t extra = 0;
    for (;;) {
        int n = gzread(f, buf, sizeof buf);
        if (n < 0) {
            int zerr;
            const char *msg = gzerror(f, &zerr);
            if (zerr == Z_ERRNO)
                return stk__error(-errno, "%s: read error: %s", path, strerror(errno));
            return stk__error(STK_EFORMAT, "%s: %s", path, msg);
        }
        if (n == 0)
            break;
        extra += (uint64_t)n;
        if (extra > (64u << 20))
            break; /* enough to say it is wrong */
    }
    if (extra)
        return stk__error(STK_EFORMAT,
                          "%s: %s%" PRIu64 " bytes after the last of its %" PRIu64
                          " %s (wrong header, or two files joined?)",
                          path, extra > (64u << 20) ? "over " : "", extra, records, what);
    return 0;
}
