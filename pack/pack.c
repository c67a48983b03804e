/* SPDX-License-Identifier: MIT */
/* stk_pack_write: a source into a shard set, choosing the zstd level from
 * a sample when asked to (level auto), with progress and cancel; and
 * stk_pack_verify: every record of a set decoded and checked. */
#define _GNU_SOURCE
#include "pack_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Level auto: compress a sample of this many records at AUTO_LEVEL with a
 * trained dictionary, and compress the set only when stored/raw is below
 * AUTO_RATIO. Above it, the disk saved is not worth a decode per sample
 * (a raw record is a plain copy for the loader). */
#define AUTO_SAMPLE 2000
#define AUTO_LEVEL 3
#define AUTO_RATIO 0.5

void stk_pack_config_default(stk_pack_config_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->zstd_level = STK_PACK_LEVEL_AUTO;
    cfg->use_dict = 1;
    cfg->dict_size = 64 << 10;
    cfg->records_per_shard = 10000;
    cfg->prefix = "shard";
}

static int cancelled(void)
{
    return stk__error(-ECANCELED, "packing stopped by the caller");
}

/* Reads up to AUTO_SAMPLE records, estimates the compressed ratio, and
 * rewinds the source. */
static int choose_level(stk_pack_source_t *src, const stk_pack_config_t *cfg, int *level,
                        double *ratio)
{
    uint64_t n = src->count < AUTO_SAMPLE ? src->count : AUTO_SAMPLE;
    void **recs = calloc(n ? n : 1, sizeof *recs);
    size_t *lens = calloc(n ? n : 1, sizeof *lens);
    int rc = (!recs || !lens) ? stk__error(-ENOMEM, "out of memory") : 0;
    for (uint64_t i = 0; !rc && i < n; i++) {
        const void *data[STK_MAX_FIELDS];
        int64_t ext[STK_MAX_FIELDS];
        rc = stk_pack_source_next(src, data, ext);
        if (rc == STK_DONE)
            rc = stk__error(STK_EFORMAT, "input ended after %" PRIu64 " records", i);
        if (rc)
            break;
        size_t len;
        if ((rc = stk_record_raw_size(&src->schema, ext, &len)))
            break;
        if (!(recs[i] = malloc(len ? len : 1))) {
            rc = stk__error(-ENOMEM, "out of memory");
            break;
        }
        rc = stk_record_build(&src->schema, data, ext, recs[i], len, &lens[i]);
    }
    if (!rc) {
        stk_writer_config_t wc;
        stk_writer_config_default(&wc);
        wc.zstd_level = AUTO_LEVEL;
        wc.use_dict = cfg->use_dict;
        wc.dict_size = cfg->dict_size;
        rc = stk_shard_estimate_ratio((const void *const *)recs, lens, n, &wc, ratio);
        *level = *ratio < AUTO_RATIO ? AUTO_LEVEL : 0;
    }
    for (uint64_t i = 0; recs && i < n; i++)
        free(recs[i]);
    free(recs);
    free(lens);
    if (!rc)
        rc = stk_pack_source_rewind(src);
    return rc;
}

int stk_pack_write(stk_pack_source_t *src, const char *dir, const stk_pack_config_t *cfg,
                   stk_pack_result_t *out)
{
    stk_pack_config_t def;
    if (!cfg) {
        stk_pack_config_default(&def);
        cfg = &def;
    }
    if (out) {
        memset(out, 0, sizeof *out);
        out->auto_ratio = -1;
    }
    if (!src || !dir)
        return stk__error(STK_ECONFIG, "stk_pack_write: NULL source or folder");
    if (cfg->zstd_level < STK_PACK_LEVEL_AUTO)
        return stk__error(STK_ECONFIG, "zstd level %d (0..22, or auto)", cfg->zstd_level);
    int level = cfg->zstd_level;
    double ratio = -1;
    int rc = 0;
    if (level == STK_PACK_LEVEL_AUTO && (rc = choose_level(src, cfg, &level, &ratio)))
        return rc;
    stk_writer_config_t wc;
    stk_writer_config_default(&wc);
    wc.zstd_level = level;
    wc.use_dict = cfg->use_dict;
    wc.dict_size = cfg->dict_size;
    wc.records_per_shard = cfg->records_per_shard;
    wc.prefix = cfg->prefix;
    wc.overwrite = cfg->overwrite;
    stk_writer_t *w = NULL;
    if ((rc = stk_writer_create(&w, dir, &src->schema, &wc)))
        return rc;
    for (uint64_t i = 0; !rc; i++) {
        const void *data[STK_MAX_FIELDS];
        int64_t ext[STK_MAX_FIELDS];
        rc = stk_pack_source_next(src, data, ext);
        if (rc == STK_DONE) {
            rc = 0;
            break;
        }
        if (!rc && (rc = stk_writer_add(w, data, ext)))
            rc = stk__error_prefix(rc, "record %" PRIu64, i);
        if (!rc && cfg->progress && ((i & 255) == 0 || i + 1 == src->count) &&
            cfg->progress(i + 1, src->count, cfg->progress_user))
            rc = cancelled();
    }
    if (!rc && src->fmt->side_files)
        rc = src->fmt->side_files(src, w);
    if (!rc)
        rc = stk_writer_finish(w);
    if (!rc && out) {
        stk_writer_stats_t st;
        stk_writer_stats(w, &st);
        out->records = st.records;
        out->shards = st.shards;
        out->raw_bytes = st.raw_bytes;
        out->stored_bytes = st.stored_bytes;
        out->dict_bytes = st.dict_bytes;
        out->zstd_level = level;
        out->auto_ratio = ratio;
    }
    stk_writer_destroy(&w);
    return rc;
}

int stk_pack_verify(const char *path, stk_pack_verify_result_t *out, stk_pack_progress_fn progress,
                    stk_pack_bad_fn bad, void *user)
{
    stk_pack_verify_result_t res = {0, 0, UINT64_MAX};
    if (out)
        *out = res;
    if (!path)
        return stk__error(STK_ECONFIG, "stk_pack_verify: NULL path");
    stk_shardset_t *set = NULL;
    stk_decoder_t *dec = NULL;
    int rc = stk_shardset_create(&set, path);
    if (rc)
        return rc;
    uint64_t cap = stk_shardset_max_raw(set);
    void *buf = malloc(cap ? cap : 1);
    if (!buf)
        rc = stk__error(-ENOMEM, "out of memory");
    else
        rc = stk_decoder_create(&dec, set);
    res.records = stk_shardset_len(set);
    char first[1024] = "";
    int first_rc = 0;
    for (uint64_t i = 0; !rc && i < res.records; i++) {
        stk_record_t rec;
        int r = stk_shardset_get(set, dec, i, buf, cap, &rec);
        if (r) {
            if (res.bad++ == 0) {
                res.first_bad = i;
                first_rc = r;
                snprintf(first, sizeof first, "%s", stk_error_message());
            }
            if (bad)
                bad(i, r, stk_error_message(), user);
        }
        if (progress && ((i & 1023) == 0 || i + 1 == res.records) && progress(i + 1, res.records, user))
            rc = cancelled();
    }
    free(buf);
    stk_decoder_destroy(&dec);
    stk_shardset_destroy(&set);
    if (out)
        *out = res;
    if (!rc && res.bad)
        rc = stk__error(first_rc == STK_EDATA || first_rc == STK_EFORMAT ? STK_EDATA : first_rc,
                        "%s: %" PRIu64 " of %" PRIu64 " records bad; first: %s", path, res.bad,
                        res.records, first);
    return rc;
}
