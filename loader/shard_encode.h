/* SPDX-License-Identifier: MIT */
/* The .stk record encoder: zstd per record, optionally with a dictionary
 * trained on the first records. Shared by the writer (shard_writer.c) and
 * stk_shard_estimate_ratio (shard_encode.c); kept out of shard_internal.h
 * so that the readers' files do not see zstd's compression side. */
#ifndef STOKER_SHARD_ENCODE_H
#define STOKER_SHARD_ENCODE_H

#include <stddef.h>

#include <zstd.h>

typedef struct stk__shard_enc {
    int level;
    ZSTD_CCtx *cctx;
    ZSTD_CDict *cdict;
    void *dict;
    size_t dict_len;
    unsigned char *out;
    size_t out_cap;
} stk__shard_enc_t;

int stk__shard_enc_init(stk__shard_enc_t *e, int level);
int stk__shard_enc_train(stk__shard_enc_t *e, const void *buf, const size_t *sizes, size_t n, size_t dict_size);
int stk__shard_enc_record(stk__shard_enc_t *e, const void *raw, size_t len, const void **stored,
                          size_t *stored_len);
void stk__shard_enc_free(stk__shard_enc_t *e);

#endif
