/* SPDX-License-Identifier: MIT */
/* Decoders of a shard set: one per worker, holding the zstd state (and
 * a dictionary per distinct one in the set), decoding a record and
 * checking its checksum, always or once per record. */
#define _GNU_SOURCE
#include "shardset_impl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <zstd.h>

struct stk_decoder {
    const stk_shardset_t *set;
    ZSTD_DCtx *dctx;
    ZSTD_DDict **ddicts; /* one per distinct dictionary of the set */
    unsigned char *scratch;
    size_t scratch_cap;
    uint64_t *verified;  /* STK_VERIFY_ONCE: a bit per record of the set */
    int verified_shared; /* verified is not ours (stk__decoder_share_verified) */
    uint64_t checked;    /* records hashed */
    /* A schema without variable fields lays every record out alike: the
     * fields' offsets and sizes, worked out once instead of per record. */
    int fixed;
    size_t fixed_off[STK_MAX_FIELDS], fixed_bytes[STK_MAX_FIELDS];
};

int stk_decoder_create(stk_decoder_t **out, const stk_shardset_t *set)
{
    if (!out || !set)
        return stk__error(STK_ECONFIG, "stk_decoder_create: NULL argument");
    *out = NULL;
    stk_decoder_t *d = calloc(1, sizeof *d);
    if (!d)
        return stk__error(-ENOMEM, "out of memory");
    d->set = set;
    if (set->sizes.nvar == 0) {
        size_t off = 0;
        d->fixed = 1;
        for (uint32_t i = 0; i < set->schema.nfields; i++) {
            d->fixed_off[i] = off;
            d->fixed_bytes[i] = (size_t)stk_field_bytes(&set->schema.fields[i], 0);
            off += d->fixed_bytes[i];
        }
    }
    d->dctx = ZSTD_createDCtx();
    d->ddicts = calloc(set->ndicts ? set->ndicts : 1, sizeof *d->ddicts);
    int rc = 0;
    if (!d->dctx || !d->ddicts)
        rc = stk__error(-ENOMEM, "out of memory");
    for (uint32_t k = 0; !rc && k < set->ndicts; k++) {
        const shard_t *s = &set->shards[set->dict_owner[k]];
        d->ddicts[k] = ZSTD_createDDict(s->dict, s->dict_len);
        if (!d->ddicts[k])
            rc = stk__error(STK_EDATA, "%s: cannot load its zstd dictionary", s->path);
    }
    if (rc) {
        stk_decoder_destroy(&d);
        return rc;
    }
    *out = d;
    return 0;
}

void stk_decoder_destroy(stk_decoder_t **dp)
{
    if (!dp || !*dp)
        return;
    stk_decoder_t *d = *dp;
    if (d->ddicts)
        for (uint32_t k = 0; k < d->set->ndicts; k++)
            ZSTD_freeDDict(d->ddicts[k]);
    free(d->ddicts);
    if (!d->verified_shared)
        free(d->verified);
    ZSTD_freeDCtx(d->dctx);
    free(d->scratch);
    free(d);
    *dp = NULL;
}

const uint64_t *stk__decoder_verified(const stk_decoder_t *dec)
{
    return dec->verified;
}

size_t stk__decoder_verified_bytes(const stk_decoder_t *dec)
{
    return dec->verified ? (size_t)(dec->set->total / 64 + 1) * sizeof(uint64_t) : 0;
}

void stk__decoder_share_verified(stk_decoder_t *dec, uint64_t *bits)
{
    if (!dec->verified)
        return; /* STK_VERIFY_ALWAYS: nothing to share */
    if (!dec->verified_shared)
        free(dec->verified);
    dec->verified = bits;
    dec->verified_shared = bits != NULL;
    if (!bits) {
        /* Back to a bitmap of our own, empty: what the shared one knew
         * is gone with it. NULL (out of memory) checks every record. */
        dec->verified = calloc((size_t)(dec->set->total / 64 + 1), sizeof *dec->verified);
    }
}

uint64_t stk__decoder_checked(const stk_decoder_t *dec)
{
    return dec->checked;
}

int stk__decoder_fixed(const stk_decoder_t *dec, const void *raw, stk_record_t *rec)
{
    if (!dec->fixed || !raw)
        return dec->fixed;
    const unsigned char *o = raw;
    rec->nfields = dec->set->schema.nfields;
    for (uint32_t i = 0; i < rec->nfields; i++) {
        rec->data[i] = o + dec->fixed_off[i];
        rec->bytes[i] = dec->fixed_bytes[i];
        rec->var_extent[i] = -1;
    }
    return 1;
}

int stk_decoder_set_verify(stk_decoder_t *dec, stk_verify_t mode)
{
    if (!dec)
        return stk__error(STK_ECONFIG, "stk_decoder_set_verify: NULL decoder");
    if (mode != STK_VERIFY_ALWAYS && mode != STK_VERIFY_ONCE)
        return stk__error(STK_ECONFIG, "verify mode %d unknown", (int)mode);
    if (mode == STK_VERIFY_ALWAYS) {
        if (!dec->verified_shared)
            free(dec->verified);
        dec->verified = NULL;
        dec->verified_shared = 0;
    } else if (!dec->verified) {
        /* 1.28M records: 160 KiB, touched only where records are read. */
        dec->verified = calloc((size_t)(dec->set->total / 64 + 1), sizeof *dec->verified);
        if (!dec->verified)
            return stk__error(-ENOMEM, "decoder: verify bitmap for %" PRIu64 " records",
                              dec->set->total);
    }
    return 0;
}

int stk_decoder_decode(stk_decoder_t *dec, const stk_record_loc_t *loc, const void *stored,
                       void *out, size_t cap, stk_record_t *rec)
{
    if (!dec || !loc || !stored || !out)
        return stk__error(-EINVAL, "stk_decoder_decode: NULL argument");
    const stk_shardset_t *set = dec->set;
    if (loc->shard >= set->n)
        return stk__error(-ERANGE, "no shard %u (the set has %u)", loc->shard, set->n);
    const shard_t *s = &set->shards[loc->shard];
    uint64_t gi = s->first + loc->local_index;
    if (cap < loc->raw_len)
        return stk__error(-ENOSPC, "%s: record %" PRIu64 " (global %" PRIu64 "): needs %" PRIu64
                          " bytes, buffer has %zu", s->path, loc->local_index, gi, loc->raw_len,
                          cap);
    if (loc->stored_len == loc->raw_len) {
        if (out != stored)
            memmove(out, stored, loc->raw_len);
    } else {
        size_t r;
        /* cap bounds the output, so a frame that inflates past raw_len
         * fails inside zstd instead of writing past the caller's buffer. */
        size_t dst = (size_t)loc->raw_len;
        if (s->dict_slot >= 0)
            r = ZSTD_decompress_usingDDict(dec->dctx, out, dst, stored, loc->stored_len,
                                           dec->ddicts[s->dict_slot]);
        else
            r = ZSTD_decompressDCtx(dec->dctx, out, dst, stored, loc->stored_len);
        if (ZSTD_isError(r))
            return stk__error(STK_EDATA, "%s: record %" PRIu64 " (global %" PRIu64 "): zstd: %s",
                              s->path, loc->local_index, gi, ZSTD_getErrorName(r));
        if (r != loc->raw_len)
            return stk__error(STK_EDATA,
                              "%s: record %" PRIu64 " (global %" PRIu64 "): decoded %zu bytes, "
                              "index says %" PRIu64,
                              s->path, loc->local_index, gi, r, loc->raw_len);
    }
    uint64_t bit = UINT64_C(1) << (gi % 64);
    /* Atomics: the bitmap may be shared with other processes. */
    if (!dec->verified || !(__atomic_load_n(&dec->verified[gi / 64], __ATOMIC_RELAXED) & bit)) {
        uint64_t h = stk__xxh64(out, (size_t)loc->raw_len, 0);
        dec->checked++;
        if (h != loc->checksum)
            return stk__error(STK_EDATA,
                              "%s: record %" PRIu64 " (global %" PRIu64 "): checksum mismatch "
                              "(index %016" PRIx64 ", data %016" PRIx64 ")",
                              s->path, loc->local_index, gi, loc->checksum, h);
        if (dec->verified)
            __atomic_fetch_or(&dec->verified[gi / 64], bit, __ATOMIC_RELAXED);
    }
    /* A fixed record of the wrong size is parsed: parse names the fault. */
    if (rec && !(loc->raw_len == set->sizes.min_raw && stk__decoder_fixed(dec, out, rec))) {
        int rc = stk_record_parse(&set->schema, out, (size_t)loc->raw_len, rec);
        if (rc)
            return stk__error_prefix(rc, "%s: record %" PRIu64 " (global %" PRIu64 ")", s->path,
                                     loc->local_index, gi);
    }
    return 0;
}

int stk_shardset_get(const stk_shardset_t *set, stk_decoder_t *dec, uint64_t index, void *out,
                     size_t cap, stk_record_t *rec)
{
    if (!set || !dec || !out)
        return stk__error(-EINVAL, "stk_shardset_get: NULL argument");
    if (dec->set != set)
        return stk__error(STK_ECONFIG, "decoder belongs to another shard set");
    stk_record_loc_t loc;
    int rc = stk_shardset_locate(set, index, &loc);
    if (rc)
        return rc;
    const stk_shardset_t *s = set;
    if (cap < loc.raw_len)
        return stk__error(-ENOSPC, "%s: record %" PRIu64 ": needs %" PRIu64
                          " bytes, buffer has %zu", s->shards[loc.shard].path, loc.local_index,
                          loc.raw_len, cap);
    /* Raw records are read straight into the caller's buffer. */
    void *stored = out;
    if (loc.stored_len != loc.raw_len) {
        if (loc.stored_len > dec->scratch_cap) {
            size_t ncap = loc.stored_len < 65536 ? 65536 : (size_t)loc.stored_len;
            unsigned char *p = realloc(dec->scratch, ncap);
            if (!p)
                return stk__error(-ENOMEM, "out of memory");
            dec->scratch = p;
            dec->scratch_cap = ncap;
        }
        stored = dec->scratch;
    }
    rc = stk__pread_all(loc.fd, stored, loc.stored_len, loc.offset, s->shards[loc.shard].path);
    if (rc)
        return stk__error_prefix(rc, "record %" PRIu64, index);
    return stk_decoder_decode(dec, &loc, stored, out, cap, rec);
}
