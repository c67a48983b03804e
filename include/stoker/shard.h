/* SPDX-License-Identifier: MIT */
/* The .stk shard format: schema, writer and reader (loader/FORMAT.md has
 * the bytes). A shard set is one shard or many (a directory, a glob or a
 * manifest); its record index is global across shards. */
#ifndef STOKER_SHARD_H
#define STOKER_SHARD_H

#include "stoker/common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define STK_MAX_FIELDS 16
#define STK_MAX_DIMS 4
#define STK_FIELD_NAME_MAX 32

/* One named field of a record. shape[d] == -1 marks the one variable
 * dimension a field may have; ndim == 0 is a scalar. */
typedef struct stk_field {
    char name[STK_FIELD_NAME_MAX];
    stk_dtype_t dtype;
    uint32_t ndim;
    int64_t shape[STK_MAX_DIMS];
} stk_field_t;

typedef struct stk_schema {
    uint32_t nfields;
    stk_field_t fields[STK_MAX_FIELDS];
} stk_schema_t;

/* Adds a field; shape has ndim entries (-1 for at most one variable dim).
 * Returns 0, STK_ECONFIG (duplicate or bad name, bad dtype or shape, too
 * many fields). */
STK_API int stk_schema_add(stk_schema_t *schema, const char *name, stk_dtype_t dtype,
                           uint32_t ndim, const int64_t *shape);
/* Index of the field called name, or -1. */
STK_API int stk_schema_find(const stk_schema_t *schema, const char *name);
/* Bytes of field f for a given extent of its variable dim (ignored when
 * the field is fixed). */
STK_API size_t stk_field_bytes(const stk_field_t *field, int64_t var_extent);
/* Writes a one-line description, e.g. "image:u8[1,28,28] label:i64[]",
 * NUL-terminated, into buf (cap bytes). Returns 0, -ENOSPC when cap is too
 * small, -EINVAL (NULL, cap 0). Thread-safe. */
STK_API int stk_schema_format(const stk_schema_t *schema, char *buf, size_t cap);

/* One decoded record: pointers into the caller's decode buffer. */
typedef struct stk_record {
    uint32_t nfields;
    const void *data[STK_MAX_FIELDS];
    size_t bytes[STK_MAX_FIELDS];
    int64_t var_extent[STK_MAX_FIELDS]; /* extent of the variable dim, or -1 */
} stk_record_t;

/* Splits a decoded (raw) record into its fields, checking every size
 * against the schema. STK_EDATA when they disagree. */
STK_API int stk_record_parse(const stk_schema_t *schema, const void *raw, size_t raw_len,
                             stk_record_t *out);

/* Raw record layout (loader/FORMAT.md): a u32 LE extent per variable field
 * in schema order, then every field's bytes in schema order, no padding.
 * stk_record_raw_size gives its size for the given extents (var_extent
 * may be NULL for fixed-only schemas). stk_record_build writes it into
 * out (cap bytes) and sets *len. Returns 0, -ENOSPC (cap too small),
 * STK_ESHAPE (negative or too large extent, record over 4 GiB, missing
 * field data). Thread-safe. */
STK_API int stk_record_raw_size(const stk_schema_t *schema, const int64_t *var_extent,
                                size_t *len);
STK_API int stk_record_build(const stk_schema_t *schema, const void *const *data,
                             const int64_t *var_extent, void *out, size_t cap, size_t *len);

/* ---- Writer ---------------------------------------------------------- */

typedef struct stk_writer stk_writer_t;

typedef struct stk_writer_config {
    int zstd_level;              /* 0 = records stored raw; 1..22 zstd */
    int use_dict;                /* train a dictionary at pack time */
    size_t dict_size;            /* bytes, when use_dict (default 64 KiB) */
    uint64_t records_per_shard;  /* 0 = everything in one shard */
    const char *prefix;          /* shard file names: <prefix>-00000.stk */
    int overwrite;               /* replace a folder that holds a set (see create) */
} stk_writer_config_t;

STK_API void stk_writer_config_default(stk_writer_config_t *cfg);

/* Starts a set that stk_writer_finish puts at DIR, whole: shards,
 * manifest and side files are written to a staging folder beside it
 * (.<name>.tmp-XXXXXX in DIR's parent, which is created if needed) and
 * switched into place at once, atomically replacing the set there (a
 * killed process leaves DIR as it was, plus a .tmp- folder). DIR must not
 * exist, be empty, or, with cfg->overwrite, hold nothing but a shard
 * set's files (*.stk, *.manifest, classes.txt, vocab.txt, text.json,
 * .tmp- leftovers).
 * Returns 0, -EEXIST (DIR not empty, or holding other files: named),
 * -ENOTDIR, STK_ECONFIG (bad level, dictionary size, prefix or schema),
 * -errno from making the staging folder, -ENOMEM. */
STK_API int stk_writer_create(stk_writer_t **out, const char *dir, const stk_schema_t *schema,
                              const stk_writer_config_t *cfg);
/* Appends one record: data[f] points at field f's bytes, var_extent[f] is
 * the extent of its variable dim (ignored for fixed fields; may be NULL
 * when the schema has none). Copies the bytes. Returns 0, STK_ECONFIG
 * (NULL), STK_ESHAPE (as stk_record_build), STK_ESTATE (the writer is
 * finished, or failed before: nothing more is written), -ENOMEM, -errno
 * writing a shard (the message names it; the writer is failed from then
 * on, and the set does not appear). */
STK_API int stk_writer_add(stk_writer_t *w, const void *const *data, const int64_t *var_extent);
/* Writes a side file (e.g. classes.txt) into the set; it appears with the
 * shards. name: no '/', no leading '.', not *.stk or *.manifest. Returns
 * 0, STK_ECONFIG, STK_ESTATE (finished or failed writer), -errno. */
STK_API int stk_writer_add_file(stk_writer_t *w, const char *name, const void *data, size_t len);
/* Flushes and fsyncs the shards, writes the manifest, and switches the
 * set into place (see create). Returns 0, STK_EEMPTY (no records),
 * STK_ESTATE (called twice, or after a failure), -EEXIST (something not
 * replaceable appeared at DIR meanwhile), -errno from a write, fsync or
 * rename: then DIR still holds what it held before. */
STK_API int stk_writer_finish(stk_writer_t *w);
/* Frees the writer; an unfinished writer removes its temporary files.
 * Accepts NULL; sets *w to NULL. */
STK_API void stk_writer_destroy(stk_writer_t **w);

typedef struct stk_writer_stats {
    uint64_t shards, records, raw_bytes, stored_bytes, dict_bytes;
} stk_writer_stats_t;
STK_API void stk_writer_stats(const stk_writer_t *w, stk_writer_stats_t *out);

/* Compresses n raw records (records[i], lens[i] bytes) as a writer with
 * cfg would and sets *ratio = stored bytes / raw bytes (dictionary
 * excluded). With cfg->use_dict (and a level > 0) it trains a dictionary
 * on the first half and measures the second half, as most records of a
 * large set meet a dictionary that never saw them. Used to choose a level
 * before packing. Returns 0, STK_ECONFIG, STK_EBACKEND (zstd), -ENOMEM.
 * Thread-safe. */
STK_API int stk_shard_estimate_ratio(const void *const *records, const size_t *lens, size_t n,
                                     const stk_writer_config_t *cfg, double *ratio);

/* ---- Reader ---------------------------------------------------------- */

typedef struct stk_shardset stk_shardset_t;

/* Where a record lives: enough for a caller to read its stored bytes
 * itself (io_uring) and decode them later. */
typedef struct stk_record_loc {
    uint32_t shard;        /* index into the shard set */
    int fd;                /* open read-only fd of that shard (owned by the set) */
    uint64_t local_index;  /* record number within the shard */
    uint64_t offset;       /* byte offset in the shard file */
    uint64_t stored_len;   /* bytes on disk */
    uint64_t raw_len;      /* bytes once decoded */
    uint64_t checksum;     /* of the raw bytes; algorithm in loader/FORMAT.md */
} stk_record_loc_t;

/* Opens a shard file, a directory of *.stk (or its manifest), a glob, or a
 * manifest file. Checks headers, footers and indexes of every shard; all
 * must share one schema. Errors name the path: -ENOENT, STK_EFORMAT,
 * STK_EDATA (checksums), STK_EEMPTY (no shards or no records), -ENOMEM.
 * Once made, a set is read-only: every stk_shardset_* call below may run
 * on any thread (and in forked children, which inherit the fds); a
 * decoder belongs to one thread at a time. */
STK_API int stk_shardset_create(stk_shardset_t **out, const char *path);
/* Closes the shards and frees the set. Accepts NULL; sets *set to NULL. */
STK_API void stk_shardset_destroy(stk_shardset_t **set);
STK_API uint64_t stk_shardset_len(const stk_shardset_t *set);
STK_API const stk_schema_t *stk_shardset_schema(const stk_shardset_t *set);
STK_API uint32_t stk_shardset_num_shards(const stk_shardset_t *set);
STK_API const char *stk_shardset_shard_path(const stk_shardset_t *set, uint32_t shard);

/* What a shard's header and index say, for `stoker-pack info`. */
typedef struct stk_shard_info {
    uint64_t records;      /* records in this shard */
    uint64_t first_index;  /* global index of its first record */
    uint64_t file_bytes;   /* size of the shard file */
    uint64_t raw_bytes;    /* sum of raw_len over its records */
    uint64_t stored_bytes; /* sum of stored_len over its records */
    uint32_t dict_bytes;   /* size of its zstd dictionary, 0 if none */
    int zstd_level;        /* level it was packed with (0 = raw) */
} stk_shard_info_t;
/* Fills *out for shard (< stk_shardset_num_shards). Returns 0, -ERANGE
 * for a shard number past the set, -EINVAL (NULL). Thread-safe. */
STK_API int stk_shardset_shard_info(const stk_shardset_t *set, uint32_t shard,
                                    stk_shard_info_t *out);
/* Largest raw_len / stored_len of any record: sizes decode buffers. */
STK_API uint64_t stk_shardset_max_raw(const stk_shardset_t *set);
STK_API uint64_t stk_shardset_max_stored(const stk_shardset_t *set);
/* Where global record index lives. Returns 0, -ERANGE (index >=
 * stk_shardset_len), -EINVAL (NULL). */
STK_API int stk_shardset_locate(const stk_shardset_t *set, uint64_t index, stk_record_loc_t *loc);
/* Reads the stored (compressed) bytes of record index with pread into buf
 * (cap bytes; loc, may be NULL, gets its place). Returns 0, -ERANGE (as
 * locate), -ENOSPC (cap below the record's stored_len), -EINVAL, -errno
 * from the read (path and record named). */
STK_API int stk_shardset_read_raw(const stk_shardset_t *set, uint64_t index, void *buf,
                                  size_t cap, stk_record_loc_t *loc);

/* A decoder holds zstd state and the shard dictionaries: one per thread or
 * worker process. */
typedef struct stk_decoder stk_decoder_t;
/* Returns 0 and *out, STK_ECONFIG (NULL), -ENOMEM or a zstd dictionary
 * error (STK_EDATA, naming the shard). */
STK_API int stk_decoder_create(stk_decoder_t **out, const stk_shardset_t *set);
STK_API void stk_decoder_destroy(stk_decoder_t **dec);
/* Decodes stored bytes of the record at loc into out (cap >= loc->raw_len),
 * verifies size and checksum, and parses fields into rec (may be NULL).
 * Returns 0, STK_EDATA on any mismatch (shard path and record named),
 * -ENOSPC (cap below loc->raw_len), -ERANGE (loc->shard not in the set),
 * -EINVAL (NULL). */
STK_API int stk_decoder_decode(stk_decoder_t *dec, const stk_record_loc_t *loc, const void *stored,
                               void *out, size_t cap, stk_record_t *rec);
/* How often a decoder checks a record's checksum. ALWAYS (a new
 * decoder's mode): on every decode. ONCE: the first time this decoder
 * decodes the record successfully; later decodes of it skip the hash.
 * A record is only ever skipped after its bytes matched the index, so a
 * bad byte on disk is still reported on first read; what ONCE gives up is
 * noticing a shard rewritten in place while it is open (stoker-pack never
 * does that: it writes a new file and renames it). */
typedef enum stk_verify {
    STK_VERIFY_ALWAYS = 0,
    STK_VERIFY_ONCE = 1
} stk_verify_t;
/* Returns 0, STK_ECONFIG (NULL decoder, unknown mode) or -ENOMEM. */
STK_API int stk_decoder_set_verify(stk_decoder_t *dec, stk_verify_t mode);

/* pread + decode in one call: the codes of both. */
STK_API int stk_shardset_get(const stk_shardset_t *set, stk_decoder_t *dec, uint64_t index,
                             void *out, size_t cap, stk_record_t *rec);

#ifdef __cplusplus
}
#endif
#endif
