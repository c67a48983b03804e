/* SPDX-License-Identifier: MIT */
/* The inside of an open shard set, shared by the files that work on it:
 * shard_reader.c (open, check, locate), shard_decoder.c (decode and
 * verify records) and shard_export.c (the flattened copy workers use).
 * Not installed. */
#ifndef STOKER_SHARDSET_IMPL_H
#define STOKER_SHARDSET_IMPL_H

#include "shard_internal.h"

typedef struct shard {
    char *path;
    int fd;
    uint64_t size;
    uint64_t nrec;
    uint64_t first; /* global index of record 0 */
    uint64_t header_len;
    uint64_t index_offset;
    unsigned char *index; /* nrec entries of STK__INDEX_ENTRY bytes */
    unsigned char *dict;
    uint32_t dict_len;
    int dict_slot; /* into the set's unique dictionaries, -1 if none */
    int level;
    int borrowed; /* index and dict point into an exported set (not ours) */
    uint64_t raw_bytes, stored_bytes;
    /* Records all raw, all dense_size bytes, back to back from dense_base:
     * a record's place is arithmetic (stk__shardset_dense). 0: not so. */
    uint64_t dense_base, dense_size;
    uint64_t set_id; /* footer: the pack that wrote it, 0 = unknown */
    uint64_t dev, ino; /* which file, to refuse one listed twice */
} shard_t;

struct stk_shardset {
    shard_t *shards;
    uint32_t n, cap;
    stk_schema_t schema;
    stk__schema_sizes_t sizes;
    uint64_t total;
    uint64_t max_raw, max_stored;
    uint32_t ndicts; /* distinct dictionaries; shard i uses shards[dict_owner[k]] */
    uint32_t *dict_owner;
    uint64_t stride; /* every shard but the last holds this many records; else 0 */
    int one_pack;    /* opened as a folder: its shards must come from one pack */
};

/* Sets stride from the shards (0 unless all but the last are equal). */
void stk__shardset_set_stride(stk_shardset_t *set);
/* Reads len bytes at off, whole (EINTR and short reads retried);
 * STK_EDATA naming path past the end of the file. */
int stk__pread_all(int fd, void *buf, size_t len, uint64_t off, const char *path);

#endif
