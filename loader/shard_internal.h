/* SPDX-License-Identifier: MIT */
/* Internal pieces of the .stk shard format shared by the writer, the
 * reader, the tests and the fuzz target: on-disk sizes and offsets
 * (loader/FORMAT.md is the authority), little-endian helpers, XXH64. */
#ifndef STOKER_SHARD_INTERNAL_H
#define STOKER_SHARD_INTERNAL_H

#include "internal.h"
#include "stoker/shard.h"

#include <string.h>

#define STK__SHARD_MAGIC "STKSHARD"  /* 8 bytes at offset 0 */
#define STK__FOOTER_MAGIC "STKINDEX" /* last 8 bytes of the file */
#define STK__SHARD_VERSION 1u
#define STK__HEADER_FIXED 32u   /* magic, version, header_len, nfields, dict_len, level, reserved */
#define STK__FIELD_DESC 72u     /* name[32], dtype u32, ndim u32, shape i64[4] */
#define STK__INDEX_ENTRY 24u    /* offset u64, stored_len u32, raw_len u32, checksum u64 */
#define STK__FOOTER_SIZE 48u    /* index_offset, nrecords, index_xxh64, header_xxh64, reserved, magic */
#define STK__MANIFEST_MAGIC "stoker-manifest 1"

/* 64-bit XXH64 (seed 0 in the format) of len bytes. */

static inline void stk__put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static inline void stk__put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static inline uint32_t stk__get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t stk__get_u64(const unsigned char *p)
{
    return (uint64_t)stk__get_u32(p) | (uint64_t)stk__get_u32(p + 4) << 32;
}

/* Sizes derived from a schema: how many variable fields (each adds a u32
 * extent prefix) and the bytes of a record when every variable extent is
 * zero. A fixed-only schema has exactly min_raw bytes per record. */
typedef struct stk__schema_sizes {
    uint32_t nvar;
    uint64_t min_raw;
} stk__schema_sizes_t;
void stk__schema_sizes(const stk_schema_t *schema, stk__schema_sizes_t *out);

/* Checks one field as stk_schema_add would (name, dtype, shape). */
int stk__field_check(const stk_field_t *f);

/* Serialises the schema descriptors (nfields * STK__FIELD_DESC bytes). */
void stk__schema_encode(const stk_schema_t *schema, unsigned char *out);
/* Parses nfields descriptors; STK_EFORMAT on anything invalid. */
int stk__schema_decode(stk_schema_t *schema, const unsigned char *in, uint32_t nfields);
int stk__schema_equal(const stk_schema_t *a, const stk_schema_t *b);

/* Appends a record given as already-built raw bytes, bypassing the schema
 * checks of stk_writer_add: for copying records between sets and for
 * tests that need malformed records. */
int stk__writer_add_raw(stk_writer_t *w, const void *raw, size_t len);

/* A checked set flattened into one pointer-free blob (host byte order,
 * for processes of the same program): export_size bytes, written by
 * export. import reopens each shard by path (STK_EDATA when its size
 * changed) and uses the index and dictionaries in place: blob must outlive
 * the set. */
size_t stk__shardset_export_size(const stk_shardset_t *set);
/* Starts loading the index entry of a record (no effect past the end). */
void stk__shardset_prefetch(const stk_shardset_t *set, uint64_t index);
void stk__shardset_export(const stk_shardset_t *set, void *out);
/* Records per shard when every shard but the last holds the same number
 * (a record's shard is then index / stride), else 0. */
uint64_t stk__shardset_stride(const stk_shardset_t *set);

/* A shard whose records are all raw and of one size, back to back (what
 * stoker-pack writes at level 0 for a schema without variable fields):
 * record first + i lies at file offset base + i * size. */
typedef struct stk__dense_shard {
    int fd;
    uint64_t first, nrec, base, size, file_bytes;
} stk__dense_shard_t;
/* Fills *out and returns 1 when shard is dense, else 0. */
int stk__shardset_dense(const stk_shardset_t *set, uint32_t shard, stk__dense_shard_t *out);
/* STK_VERIFY_ONCE: one bit per record of the set, set once the record
 * matched its checksum (read it with atomic loads: it may be shared);
 * NULL under STK_VERIFY_ALWAYS. */
const uint64_t *stk__decoder_verified(const stk_decoder_t *dec);
/* Its size in bytes (0 under STK_VERIFY_ALWAYS). */
size_t stk__decoder_verified_bytes(const stk_decoder_t *dec);
/* STK_VERIFY_ONCE: use bits (stk__decoder_verified_bytes, zeroed or
 * filled by decoders of the same set) instead of a bitmap of our own, so
 * that a record verified by one decoder is trusted by all; NULL goes back
 * to an empty one of our own. No effect under STK_VERIFY_ALWAYS. */
void stk__decoder_share_verified(stk_decoder_t *dec, uint64_t *bits);
/* Records this decoder hashed, in all. */
uint64_t stk__decoder_checked(const stk_decoder_t *dec);
/* Fills rec with the fields of raw record bytes when the schema has no
 * variable field (returns 1; else 0): a fixed layout needs no parse.
 * With raw NULL, only says which. */
int stk__decoder_fixed(const stk_decoder_t *dec, const void *raw, stk_record_t *rec);
int stk__shardset_import(stk_shardset_t **out, const void *blob, size_t len);

#endif
