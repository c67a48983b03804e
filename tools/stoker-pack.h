/* SPDX-License-Identifier: MIT */
/* stoker-pack's input sources: each turns one foreign format (IDX, CIFAR
 * binary, NumPy .npy, a folder per class) into a schema and a stream of
 * records. Errors go to src->err, naming the file. */
#ifndef STOKER_PACK_H
#define STOKER_PACK_H

#include <stdint.h>

#include "stoker/shard.h"

typedef struct pack_src pack_src_t;

struct pack_src {
    stk_schema_t schema;
    uint64_t count; /* records next() will yield (after --limit) */
    uint64_t pos;   /* records yielded so far */
    /* Fills data/ext for the next record; pointers stay valid until the
     * following call. Returns 0, or -1 with err set. */
    int (*next)(pack_src_t *src, const void **data, int64_t *ext);
    /* Starts over from the first record. Returns 0 or -1. */
    int (*rewind)(pack_src_t *src);
    void (*close)(pack_src_t *src);
    /* Optional: writes side files (classes.txt) into the output dir. */
    int (*side_files)(pack_src_t *src, const char *dir);
    char err[1024];
    void *priv;
};

/* Each returns 0, or -1 with a message (naming the file) in err. limit 0
 * means every record. */
int pack_src_idx(pack_src_t *src, const char *images, const char *labels, uint64_t limit);
int pack_src_cifar(pack_src_t *src, char **files, int nfiles, int cifar100, uint64_t limit);
int pack_src_npy(pack_src_t *src, const char *data, const char *labels, const char *field,
                 uint64_t limit);
int pack_src_folder(pack_src_t *src, const char *root, uint64_t limit);
void pack_src_close(pack_src_t *src);

#endif
