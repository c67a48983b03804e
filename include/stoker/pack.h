/* SPDX-License-Identifier: MIT */
/* Importers: foreign data (IDX, CIFAR binary, NumPy .npy, a folder per
 * class, arrays in memory) read as a stream of records for a schema, and
 * packed into a .stk shard set in one call. Also the whole-set check that
 * `stoker-pack verify` prints. Every call returns 0 or a negative STK_E*
 * / -errno code with the file, record or line in stk_error_message(). */
#ifndef STOKER_PACK_H
#define STOKER_PACK_H

#include "stoker/common.h"
#include "stoker/shard.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Sources ---------------------------------------------------------- */

/* The input formats. Values are stable. */
typedef enum stk_pack_format {
    STK_PACK_IDX = 1,      /* inputs: IMAGES LABELS (u8/i8 images, u8 labels; gzip or plain).
                            * Schema image:<u8|i8>[1,H,W] label:i64[] */
    STK_PACK_CIFAR10 = 2,  /* inputs: FILE... of <label><3072 bytes CHW>.
                            * Schema image:u8[3,32,32] label:i64[] */
    STK_PACK_CIFAR100 = 3, /* inputs: FILE... of <coarse><fine><3072>. Schema
                            * image:u8[3,32,32] coarse_label:i64[] label:i64[] */
    STK_PACK_NPY = 4,      /* inputs: DATA LABELS (.npy, C order, little-endian; gzip or
                            * plain). Schema <field>:<dtype>[...] label:i64[] */
    STK_PACK_FOLDER = 5,   /* inputs: ROOT with one subfolder per class (sorted, as
                            * torchvision's ImageFolder); each file stored as bytes.
                            * Schema data:u8[-1] label:i64[]; classes.txt beside */
    STK_PACK_TEXT = 6      /* inputs: FILE, one record per line (gzip or plain), as
                            * token ids: bytes (schema tokens:u8[-1]) or, with a
                            * vocabulary, tokens:i32[-1]; text.json (and vocab.txt)
                            * beside */
} stk_pack_format_t;

/* "idx", "cifar10", "cifar100", "npy", "folder", "text" (and "cifar" for
 * cifar10); 0 when unknown. Thread-safe. */
STK_API stk_pack_format_t stk_pack_format_from_name(const char *name);
/* The name of a format ("idx", ...), or "invalid". Thread-safe. */
STK_API const char *stk_pack_format_name(stk_pack_format_t format);

typedef struct stk_pack_source_config {
    stk_pack_format_t format;
    const char *const *inputs; /* paths, as the format above lists them; not copied:
                                * they must outlive the source */
    size_t ninputs;
    const char *field;         /* NPY: name of the data field (default "data");
                                * TEXT: of the tokens (default "tokens") */
    /* TEXT: a vocabulary file, one token per line, line k = id k (not
     * copied); NULL: each byte is a token. With one, a line splits into
     * whitespace-separated words, or into UTF-8 characters with
     * vocab_chars, and a token not in it becomes unk_id (-1: an error
     * naming the line). The newline and a '\r' before it are dropped. */
    const char *vocab;
    int vocab_chars;
    int64_t unk_id;
    uint64_t limit;            /* read only the first `limit` records; 0 = all */
} stk_pack_source_config_t;

/* Zero inputs, field NULL, limit 0, format 0 (to be set). */
STK_API void stk_pack_source_config_default(stk_pack_source_config_t *cfg);

typedef struct stk_pack_source stk_pack_source_t;

/* Opens the inputs and reads their headers: sizes, shapes and types are
 * checked against each other here, so a source that opens has a schema and
 * a record count. Returns 0, -ENOENT and other -errno (path named),
 * STK_EFORMAT (not the format: bad magic, header, dtype; path named),
 * STK_ESHAPE (inputs that disagree: counts, shapes), STK_EEMPTY (no
 * records, no class folders; path named), STK_ECONFIG (bad config),
 * -ENOMEM. Not thread-safe on one source; sources are independent. */
STK_API int stk_pack_source_create(stk_pack_source_t **out, const stk_pack_source_config_t *cfg);

/* A source over arrays in memory: fields[f] points at n consecutive
 * samples of schema field f (fixed shapes only). Nothing is copied: the
 * arrays must outlive the source. STK_ECONFIG for a variable field or a
 * bad schema, STK_EEMPTY for n == 0. */
STK_API int stk_pack_source_create_arrays(stk_pack_source_t **out, const stk_schema_t *schema,
                                   const void *const *fields, uint64_t n);

/* Frees the source. Accepts NULL; sets *src to NULL. */
STK_API void stk_pack_source_destroy(stk_pack_source_t **src);

/* Its schema (owned by src) and the records next() will yield in all. */
STK_API const stk_schema_t *stk_pack_source_schema(const stk_pack_source_t *src);
STK_API uint64_t stk_pack_source_count(const stk_pack_source_t *src);

/* The next record: data[f] and var_extent[f] (arrays of STK_MAX_FIELDS)
 * as stk_writer_add takes them; valid until the next call. Returns 0,
 * STK_DONE after the last record, STK_EFORMAT (truncated input, trailing
 * bytes; path and record named), -errno. */
STK_API int stk_pack_source_next(stk_pack_source_t *src, const void **data, int64_t *var_extent);
/* Starts over from the first record. Returns 0 or an error as create. */
STK_API int stk_pack_source_rewind(stk_pack_source_t *src);

/* ---- Packing ----------------------------------------------------------- */

/* Called every 256 records and after the last: a non-zero return stops
 * the pack (stk_pack_write then returns -ECANCELED, leaving nothing). */
typedef int (*stk_pack_progress_fn)(uint64_t done, uint64_t total, void *user);

#define STK_PACK_LEVEL_AUTO (-1)

typedef struct stk_pack_config {
    int zstd_level;             /* 0..22, or STK_PACK_LEVEL_AUTO (the default): compress a
                                 * sample of records at level 3 with a dictionary, and
                                 * compress the set only if that halves it */
    int use_dict;               /* train a zstd dictionary (default 1) */
    size_t dict_size;           /* default 64 KiB */
    uint64_t records_per_shard; /* default 10000; 0 = one shard */
    const char *prefix;         /* shard names <prefix>-00000.stk (default "shard") */
    int overwrite;              /* replace an existing non-empty folder (see stk_writer) */
    stk_pack_progress_fn progress;
    void *progress_user;
} stk_pack_config_t;

STK_API void stk_pack_config_default(stk_pack_config_t *cfg);

/* What a pack did. */
typedef struct stk_pack_result {
    uint64_t records, shards, raw_bytes, stored_bytes, dict_bytes;
    int zstd_level;             /* the level used */
    double auto_ratio;          /* level auto: stored/raw of the sample; -1 otherwise */
} stk_pack_result_t;

/* Reads every record of src (from its current position: a fresh or
 * rewound source) into a new shard set at dir, with side files (a folder
 * source's classes.txt). The set appears at dir complete, or not at all
 * (stk_writer_create says how). out may be NULL. Returns 0, the source's
 * and the writer's errors, -ECANCELED when progress stopped it. */
STK_API int stk_pack_write(stk_pack_source_t *src, const char *dir, const stk_pack_config_t *cfg,
                           stk_pack_result_t *out);

/* ---- Verify ------------------------------------------------------------ */

typedef struct stk_pack_verify_result {
    uint64_t records;           /* records in the set */
    uint64_t bad;               /* records that failed to decode or check */
    uint64_t first_bad;         /* global index of the first bad one (UINT64_MAX: none) */
} stk_pack_verify_result_t;

/* Called for each bad record with its global index, status and message. */
typedef void (*stk_pack_bad_fn)(uint64_t index, int code, const char *message, void *user);

/* Opens the set at path (as stk_shardset_create: a mixed or partial set is
 * refused there) and decodes every record, checking sizes and checksums.
 * Returns 0 when all are good; the open's error; STK_EDATA when any record
 * is bad, with the first one's shard and record in the message (out->bad
 * counts them all). progress as above (-ECANCELED); bad and progress may
 * be NULL, and both get user. out may be NULL. */
STK_API int stk_pack_verify(const char *path, stk_pack_verify_result_t *out,
                            stk_pack_progress_fn progress, stk_pack_bad_fn bad, void *user);

#ifdef __cplusplus
}
#endif
#endif
