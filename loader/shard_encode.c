/* SPDX-License-Identifier: MIT */
/* The .stk record encoder (shard_encode.h) and stk_shard_estimate_ratio,
 * which runs it over sample records without writing anything. Separate
 * from shard_writer.c, which owns files, the staging folder and the
 * switch into place: this is compression only. */
#include "shard_encode.h"
#include "shard_internal.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <zdict.h>
#include <zstd.h>

int stk__shard_enc_init(stk__shard_enc_t *e, int level)
{
    memset(e, 0, sizeof *e);
    e->level = level;
    if (level == 0)
        return 0;
    e->cctx = ZSTD_createCCtx();
    if (!e->cctx)
        return stk__error(-ENOMEM, "zstd: cannot create a compression context");
    /* The index already holds each record's raw length, and the reader
     * picks the dictionary by shard: drop both from every frame, since a
     * few bytes matter on 800-byte records. */
    if (ZSTD_isError(ZSTD_CCtx_setParameter(e->cctx, ZSTD_c_compressionLevel, level)) ||
        ZSTD_isError(ZSTD_CCtx_setParameter(e->cctx, ZSTD_c_contentSizeFlag, 0)) ||
        ZSTD_isError(ZSTD_CCtx_setParameter(e->cctx, ZSTD_c_dictIDFlag, 0)))
        return stk__error(STK_EBACKEND, "zstd: cannot set level %d", level);
    return 0;
}

/* Trains a dictionary on n samples laid end to end in buf. A failure to
 * train (too few or too uniform samples) is not an error: the records are
 * then compressed without one, and the log says so. */
int stk__shard_enc_train(stk__shard_enc_t *e, const void *buf, const size_t *sizes, size_t n, size_t dict_size)
{
    if (e->level == 0 || n == 0)
        return 0;
    void *dict = malloc(dict_size);
    if (!dict)
        return stk__error(-ENOMEM, "cannot allocate a %zu-byte dictionary", dict_size);
    size_t r = ZDICT_trainFromBuffer(dict, dict_size, buf, sizes, (unsigned)n);
    if (ZDICT_isError(r)) {
        stk__log(STK_LOG_WARN, "no zstd dictionary (%zu samples): %s", n, ZDICT_getErrorName(r));
        free(dict);
        return 0;
    }
    e->cdict = ZSTD_createCDict(dict, r, e->level);
    if (!e->cdict) {
        free(dict);
        return stk__error(STK_EBACKEND, "zstd: cannot load the trained dictionary");
    }
    if (ZSTD_isError(ZSTD_CCtx_refCDict(e->cctx, e->cdict))) {
        free(dict);
        return stk__error(STK_EBACKEND, "zstd: cannot reference the dictionary");
    }
    e->dict = dict;
    e->dict_len = r;
    return 0;
}

/* Compresses one record; *stored points at what to write. A record that
 * does not shrink is stored raw: stored_len == raw_len marks that. */
int stk__shard_enc_record(stk__shard_enc_t *e, const void *raw, size_t len, const void **stored,
                          size_t *stored_len)
{
    *stored = raw;
    *stored_len = len;
    if (e->level == 0 || len == 0)
        return 0;
    size_t bound = ZSTD_compressBound(len);
    if (bound > e->out_cap) {
        unsigned char *p = realloc(e->out, bound);
        if (!p)
            return stk__error(-ENOMEM, "cannot allocate %zu bytes", bound);
        e->out = p;
        e->out_cap = bound;
    }
    size_t r = ZSTD_compress2(e->cctx, e->out, e->out_cap, raw, len);
    if (ZSTD_isError(r))
        return stk__error(STK_EBACKEND, "zstd: %s", ZSTD_getErrorName(r));
    if (r < len) {
        *stored = e->out;
        *stored_len = r;
    }
    return 0;
}

void stk__shard_enc_free(stk__shard_enc_t *e)
{
    ZSTD_freeCCtx(e->cctx);
    ZSTD_freeCDict(e->cdict);
    free(e->dict);
    free(e->out);
    memset(e, 0, sizeof *e);
}

int stk_shard_estimate_ratio(const void *const *records, const size_t *lens, size_t n,
                             const stk_writer_config_t *cfg, double *ratio)
{
    if (!records || !lens || !cfg || !ratio)
        return stk__error(STK_ECONFIG, "stk_shard_estimate_ratio: NULL argument");
    if (cfg->zstd_level < 0 || cfg->zstd_level > ZSTD_maxCLevel())
        return stk__error(STK_ECONFIG, "zstd level %d outside 0..%d", cfg->zstd_level,
                          ZSTD_maxCLevel());
    *ratio = 1.0;
    stk__shard_enc_t e;
    int rc = stk__shard_enc_init(&e, cfg->zstd_level);
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += lens[i];
    unsigned char *cat = NULL;
    size_t *sizes = NULL;
    size_t held = n; /* records measured: all of them without a dictionary */
    if (!rc && cfg->use_dict && cfg->zstd_level > 0 && n > 0) {
        cat = malloc(total ? total : 1);
        sizes = malloc(n * sizeof *sizes);
        if (!cat || !sizes) {
            rc = stk__error(-ENOMEM, "out of memory");
        } else {
            /* Train on the first half and measure the second: most of a
             * large set is compressed with a dictionary that never saw it,
             * and measuring the training records themselves flatters. */
            held = n / 2 ? n / 2 : n;
            size_t off = 0;
            for (size_t i = 0; i < n - held; i++) {
                memcpy(cat + off, records[i], lens[i]);
                off += lens[i];
                sizes[i] = lens[i];
            }
            rc = stk__shard_enc_train(&e, cat, sizes, n - held, cfg->dict_size);
        }
    }
    uint64_t stored = 0, measured = 0;
    for (size_t i = n - held; !rc && i < n; i++) {
        const void *s;
        size_t slen;
        rc = stk__shard_enc_record(&e, records[i], lens[i], &s, &slen);
        stored += slen;
        measured += lens[i];
    }
    if (!rc && measured)
        *ratio = (double)stored / (double)measured;
    free(cat);
    free(sizes);
    stk__shard_enc_free(&e);
    return rc;
}
