/* SPDX-License-Identifier: MIT */
/* Inside pack/: the table every input format fills (one file per format)
 * and the read helpers they share. Not installed. */
#ifndef STOKER_PACK_INTERNAL_H
#define STOKER_PACK_INTERNAL_H

#include "internal.h"
#include "stoker/pack.h"

#include <zlib.h>

/* One input format. open fills src->schema, src->count (after the limit)
 * and src->priv, or returns an error naming the input; it may leave priv
 * half made for close to free. next fills data/ext and advances src->pos,
 * or returns an error naming the input (the caller adds the record). */
typedef struct stk__pack_fmt {
    const char *name;
    int (*open)(stk_pack_source_t *src, const stk_pack_source_config_t *cfg);
    int (*next)(stk_pack_source_t *src, const void **data, int64_t *ext);
    int (*rewind)(stk_pack_source_t *src);
    void (*close)(stk_pack_source_t *src);
    /* Optional: files written beside the shards (classes.txt). */
    int (*side_files)(stk_pack_source_t *src, stk_writer_t *w);
} stk__pack_fmt_t;

struct stk_pack_source {
    const stk__pack_fmt_t *fmt;
    stk_schema_t schema;
    uint64_t count; /* records next() yields in all */
    uint64_t pos;   /* records yielded so far */
    void *priv;
};

/* What stk_pack_source_create_arrays hands the arrays format's open, in priv. */
typedef struct stk__pack_arrays_arg {
    const stk_schema_t *schema;
    const void *const *fields;
    uint64_t n;
} stk__pack_arrays_arg_t;

extern const stk__pack_fmt_t stk__pack_idx;
extern const stk__pack_fmt_t stk__pack_cifar10;
extern const stk__pack_fmt_t stk__pack_cifar100;
extern const stk__pack_fmt_t stk__pack_npy;
extern const stk__pack_fmt_t stk__pack_folder;
extern const stk__pack_fmt_t stk__pack_text;
extern const stk__pack_fmt_t stk__pack_arrays;

/* gzread reads plain files too, so every stream input goes through these.
 * Errors name path: -errno, STK_EFORMAT "truncated". */
int stk__pack_gz_open(gzFile *out, const char *path);
int stk__pack_gz_read(gzFile f, void *buf, size_t len, const char *path);
/* After the last record: STK_EFORMAT when f still has bytes, naming path
 * and how many ("what" says what the records were). */
int stk__pack_gz_expect_end(gzFile f, const char *path, uint64_t records, const char *what);

#endif
