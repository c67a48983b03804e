/* SPDX-License-Identifier: MIT */
/* Samplers: which indices, in which order, for this rank. Every order is a
 * pure function of (seed, epoch, rank, world size), drawn from Philox
 * (common.h), so it is the same on any machine and any worker count. */
#ifndef STOKER_SAMPLER_H
#define STOKER_SAMPLER_H

#include "stoker/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum stk_sampler_kind {
    STK_SAMPLER_SEQUENTIAL = 0,
    STK_SAMPLER_RANDOM,        /* permutation, or with replacement */
    STK_SAMPLER_SUBSET_RANDOM, /* permutation of given indices */
    STK_SAMPLER_WEIGHTED,      /* weighted, with or without replacement */
    STK_SAMPLER_DISTRIBUTED    /* PyTorch's DistributedSampler */
} stk_sampler_kind_t;

typedef struct stk_sampler_config {
    stk_sampler_kind_t kind;
    uint64_t dataset_len;
    uint64_t seed;
    int replacement;          /* RANDOM, WEIGHTED */
    uint64_t num_samples;     /* RANDOM/WEIGHTED draws per epoch; 0 = dataset_len */
    const uint64_t *indices;  /* SUBSET_RANDOM (copied) */
    uint64_t num_indices;
    const double *weights;    /* WEIGHTED, dataset_len entries (copied) */
    uint32_t rank, world_size; /* DISTRIBUTED */
    int shuffle;              /* DISTRIBUTED */
    int drop_last;            /* DISTRIBUTED */
} stk_sampler_config_t;

typedef struct stk_sampler stk_sampler_t;

STK_API void stk_sampler_config_default(stk_sampler_config_t *cfg);
/* STK_ECONFIG names the bad field. */
STK_API int stk_sampler_create(stk_sampler_t **out, const stk_sampler_config_t *cfg);
STK_API void stk_sampler_destroy(stk_sampler_t **s);
/* Selects the epoch's order (and rewinds to its start). */
STK_API int stk_sampler_set_epoch(stk_sampler_t *s, uint64_t epoch);
STK_API uint64_t stk_sampler_epoch(const stk_sampler_t *s);
/* Indices per epoch. */
STK_API uint64_t stk_sampler_len(const stk_sampler_t *s);
/* Index at position pos of the current epoch (random access, no cursor). */
STK_API int stk_sampler_get(const stk_sampler_t *s, uint64_t pos, uint64_t *index);
/* Up to max next indices from the cursor; returns how many (0 = epoch done). */
STK_API size_t stk_sampler_next(stk_sampler_t *s, uint64_t *out, size_t max);
/* Cursor position within the epoch; seek restores it (resume mid-epoch). */
STK_API uint64_t stk_sampler_tell(const stk_sampler_t *s);
STK_API int stk_sampler_seek(stk_sampler_t *s, uint64_t pos);

/* Batches over any sampler. Does not own the sampler. */
typedef struct stk_batch_sampler stk_batch_sampler_t;
STK_API int stk_batch_sampler_create(stk_batch_sampler_t **out, stk_sampler_t *sampler,
                                     uint64_t batch_size, int drop_last);
STK_API void stk_batch_sampler_destroy(stk_batch_sampler_t **b);
STK_API int stk_batch_sampler_set_epoch(stk_batch_sampler_t *b, uint64_t epoch);
/* Batches per epoch. */
STK_API uint64_t stk_batch_sampler_len(const stk_batch_sampler_t *b);
STK_API uint64_t stk_batch_sampler_batch_size(const stk_batch_sampler_t *b);
/* Indices of batch number k of this epoch into out (room for batch_size);
 * *n gets the count (smaller for a last partial batch). */
STK_API int stk_batch_sampler_get(const stk_batch_sampler_t *b, uint64_t k, uint64_t *out, size_t *n);
/* Next batch from the cursor; STK_DONE at the end of the epoch. */
STK_API int stk_batch_sampler_next(stk_batch_sampler_t *b, uint64_t *out, size_t *n);
STK_API uint64_t stk_batch_sampler_tell(const stk_batch_sampler_t *b);
STK_API int stk_batch_sampler_seek(stk_batch_sampler_t *b, uint64_t batch);

#ifdef __cplusplus
}
#endif
#endif
