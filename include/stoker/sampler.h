/* SPDX-License-Identifier: MIT */
/* Samplers: which indices, in which order, for this rank. Every order is a
 * pure function of (seed, epoch, rank, world size), drawn from Philox
 * (common.h), so it is the same on any machine and any worker count.
 * Structure follows PyTorch (RandomSampler, SubsetRandomSampler,
 * WeightedRandomSampler, BatchSampler, DistributedSampler's padding and
 * striding), but random orders are not PyTorch's: the generator differs. */
#ifndef STOKER_SAMPLER_H
#define STOKER_SAMPLER_H

#include "stoker/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Thread safety, for every function below: calls that only read (get, len,
 * epoch, tell, batch_size, and stk_batch_sampler_get) may run concurrently
 * on the same object from any number of threads, or in forked workers.
 * Calls that change it (set_epoch, next, seek, destroy) need the caller to
 * hold it exclusively: no other call on the same object meanwhile (a batch
 * sampler's set_epoch changes its sampler too). Different objects are
 * independent. */

typedef enum stk_sampler_kind {
    STK_SAMPLER_SEQUENTIAL = 0, /* 0, 1, ..., dataset_len - 1 */
    STK_SAMPLER_RANDOM,        /* permutation, or with replacement */
    STK_SAMPLER_SUBSET_RANDOM, /* permutation of given indices */
    STK_SAMPLER_WEIGHTED,      /* weighted, with or without replacement */
    STK_SAMPLER_DISTRIBUTED    /* PyTorch's DistributedSampler */
} stk_sampler_kind_t;

/* Fields a kind does not use are ignored. dataset_len > 0 for every kind. */
typedef struct stk_sampler_config {
    stk_sampler_kind_t kind;
    uint64_t dataset_len;
    uint64_t seed;
    /* RANDOM: draws uniformly with replacement; without, num_samples beyond
     * dataset_len chains fresh permutations (torch's RandomSampler).
     * WEIGHTED: with replacement, or sequential draws proportional to the
     * remaining weights (torch.multinomial without replacement). */
    int replacement;          /* RANDOM, WEIGHTED */
    uint64_t num_samples;     /* RANDOM/WEIGHTED draws per epoch; 0 = dataset_len */
    /* Each below dataset_len; repeats allowed and kept. */
    const uint64_t *indices;  /* SUBSET_RANDOM (copied) */
    uint64_t num_indices;
    /* Finite and >= 0; zero weights are never drawn; some must be > 0.
     * Without replacement num_samples may not exceed the positive ones. */
    const double *weights;    /* WEIGHTED, dataset_len entries (copied) */
    uint32_t rank, world_size; /* DISTRIBUTED; rank < world_size */
    int shuffle;              /* DISTRIBUTED */
    /* DISTRIBUTED: cut the tail so that ranks split evenly, instead of
     * padding by repeating the head. Refused if it leaves ranks empty. */
    int drop_last;
} stk_sampler_config_t;

typedef struct stk_sampler stk_sampler_t;

/* Fills cfg with defaults: SEQUENTIAL, world_size 1, everything else 0/NULL.
 * NULL is ignored. */
STK_API void stk_sampler_config_default(stk_sampler_config_t *cfg);
/* Creates a sampler at epoch 0, cursor 0. cfg and the arrays it points to
 * are only read during the call (copied). Memory: 8 bytes per index of the
 * epoch for RANDOM without replacement and SUBSET_RANDOM (16 for the
 * latter), per data set index for DISTRIBUTED with shuffle (on every rank),
 * about 25 per index for WEIGHTED without replacement, 24 per positive
 * weight with replacement; none for SEQUENTIAL, RANDOM with replacement
 * and DISTRIBUTED without shuffle. Returns 0 and *out, or
 * STK_ECONFIG naming the bad field in stk_error_message(), -EINVAL for NULL
 * out/cfg, -ENOMEM; *out is NULL on failure. */
STK_API int stk_sampler_create(stk_sampler_t **out, const stk_sampler_config_t *cfg);
/* Frees *s and sets it to NULL; NULL and *s == NULL are fine. */
STK_API void stk_sampler_destroy(stk_sampler_t **s);
/* Selects the epoch's order (and rewinds to its start). The order is drawn
 * here, once (O(n) or O(n log n) for WEIGHTED without replacement), so that
 * get() is O(1). Returns 0, or -EINVAL for NULL. */
STK_API int stk_sampler_set_epoch(stk_sampler_t *s, uint64_t epoch);
/* Current epoch; 0 for NULL. */
STK_API uint64_t stk_sampler_epoch(const stk_sampler_t *s);
/* Indices per epoch (for this rank); the same every epoch. 0 for NULL. */
STK_API uint64_t stk_sampler_len(const stk_sampler_t *s);
/* Index at position pos of the current epoch (random access, no cursor),
 * O(1). Returns 0, -ERANGE for pos >= len (*index untouched), or -EINVAL
 * for NULL arguments. */
STK_API int stk_sampler_get(const stk_sampler_t *s, uint64_t pos, uint64_t *index);
/* Up to max next indices from the cursor into out; returns how many (0 =
 * epoch done, or s/out NULL). */
STK_API size_t stk_sampler_next(stk_sampler_t *s, uint64_t *out, size_t max);
/* Cursor position within the epoch; seek restores it (resume mid-epoch):
 * rebuild from the same config, set_epoch, seek(saved tell). pos may be
 * len (the end). seek returns 0, -ERANGE for pos > len, or -EINVAL for
 * NULL. */
STK_API uint64_t stk_sampler_tell(const stk_sampler_t *s);
STK_API int stk_sampler_seek(stk_sampler_t *s, uint64_t pos);

/* Batches over any sampler, as torch's BatchSampler: batch k holds
 * positions [k * batch_size, (k + 1) * batch_size) of the sampler's epoch,
 * the last one partial, or dropped with drop_last. Does not own the sampler,
 * which must outlive it; batches are read with stk_sampler_get, so the
 * sampler's own cursor is neither used nor moved. */
typedef struct stk_batch_sampler stk_batch_sampler_t;
/* Returns 0 and *out; STK_ECONFIG for batch_size 0 (or absurdly large) or
 * when drop_last leaves no batch; -EINVAL for NULL out or sampler; -ENOMEM.
 * *out is NULL on failure. */
STK_API int stk_batch_sampler_create(stk_batch_sampler_t **out, stk_sampler_t *sampler,
                                     uint64_t batch_size, int drop_last);
/* Frees *b (not its sampler) and sets it to NULL; NULL-safe. */
STK_API void stk_batch_sampler_destroy(stk_batch_sampler_t **b);
/* Sets the sampler's epoch and rewinds the batch cursor. 0 or -EINVAL. */
STK_API int stk_batch_sampler_set_epoch(stk_batch_sampler_t *b, uint64_t epoch);
/* Batches per epoch; 0 for NULL. */
STK_API uint64_t stk_batch_sampler_len(const stk_batch_sampler_t *b);
/* 0 for NULL. */
STK_API uint64_t stk_batch_sampler_batch_size(const stk_batch_sampler_t *b);
/* Indices of batch number k of this epoch into out (room for batch_size);
 * *n gets the count (smaller for a last partial batch). Returns 0, -ERANGE
 * for k >= len, or -EINVAL for NULL arguments. */
STK_API int stk_batch_sampler_get(const stk_batch_sampler_t *b, uint64_t k, uint64_t *out, size_t *n);
/* Next batch from the cursor; STK_DONE (and *n = 0) at the end of the
 * epoch; -EINVAL for NULL arguments. */
STK_API int stk_batch_sampler_next(stk_batch_sampler_t *b, uint64_t *out, size_t *n);
/* Batch cursor (batches handed out this epoch); seek restores it, batch may
 * be len. seek returns 0, -ERANGE for batch > len, or -EINVAL for NULL. */
STK_API uint64_t stk_batch_sampler_tell(const stk_batch_sampler_t *b);
STK_API int stk_batch_sampler_seek(stk_batch_sampler_t *b, uint64_t batch);

/* Bucketing by length: a batch sampler whose batches hold samples of
 * similar length, so that padding a batch to its longest sample wastes
 * little (sequences). The epoch's order of `sampler` (any kind, including
 * DISTRIBUTED: each rank buckets its own share, and every rank gets the
 * same number of batches) is cut into pools of pool_batches * batch_size
 * positions; each pool is sorted by (length, index) and cut into batches;
 * the full batches of the epoch are then shuffled, the partial one (if
 * any, and without drop_last) last. Each index the sampler yields is in
 * exactly one batch (drop_last leaves out the sampler's last
 * len % batch_size positions). Batches are a pure function of (seed,
 * epoch) and the sampler's order: deterministic, and resumable with seek
 * as the plain batch sampler. Made with the call below, it is used and
 * freed as any stk_batch_sampler_t (the loader takes it as is). */
typedef struct stk_bucket_config {
    const uint32_t *lengths; /* length of every data set index (copied) */
    uint64_t num_lengths;    /* entries in lengths; the sampler's indices must be below it */
    uint64_t batch_size;     /* default 1 */
    int drop_last;
    uint64_t pool_batches;   /* batches per sorted pool (default 100); 0: the whole epoch */
    int shuffle;             /* shuffle the batches' order (default 1) */
    uint64_t seed;           /* of the batch shuffle */
} stk_bucket_config_t;

/* Defaults: batch_size 1, pool_batches 100, shuffle 1, the rest 0/NULL.
 * NULL is ignored. */
STK_API void stk_bucket_config_default(stk_bucket_config_t *cfg);
/* Makes the bucketing batch sampler, its batches drawn for the sampler's
 * current epoch (stk_batch_sampler_set_epoch draws another). Memory: 20
 * bytes per index of the epoch plus 4 per length. Returns 0 and *out;
 * STK_ECONFIG for no lengths, an index the sampler yields without a
 * length (named), or what stk_batch_sampler_create refuses; -EINVAL for
 * NULL out, sampler or cfg; -ENOMEM. *out is NULL on failure. */
STK_API int stk_batch_sampler_create_bucketed(stk_batch_sampler_t **out, stk_sampler_t *sampler,
                                              const stk_bucket_config_t *cfg);

/* What bucketing saves in the current epoch: with each batch padded to its
 * longest sample, padded is the slots (batch size x longest) summed over
 * the bucketed batches, padded_plain the same for consecutive batches of
 * the sampler's order, tokens the lengths summed. The padding fraction is
 * 1 - tokens / padded. */
typedef struct stk_bucket_stats {
    uint64_t tokens;
    uint64_t padded;
    uint64_t padded_plain;
} stk_bucket_stats_t;
/* 0, or -EINVAL for NULL arguments or a batch sampler made without
 * bucketing. */
STK_API int stk_batch_sampler_bucket_stats(const stk_batch_sampler_t *b, stk_bucket_stats_t *st);

#ifdef __cplusplus
}
#endif
#endif
