/* SPDX-License-Identifier: MIT */
/* Batches over any sampler, as torch's BatchSampler: consecutive runs of
 * batch_size positions of the sampler's epoch order, the last one partial
 * or dropped. Batches are read by random access, so batch k is known
 * without walking to it, and a loader resumes from a batch number. */
#include "sampler_internal.h"

#include <errno.h>
#include <stdlib.h>

typedef unsigned long long ull;

int stk_batch_sampler_create(stk_batch_sampler_t **out, stk_sampler_t *sampler, uint64_t batch_size,
                             int drop_last)
{
    if (!out)
        return stk__error(-EINVAL, "batch sampler: out is NULL");
    *out = NULL;
    if (!sampler)
        return stk__error(-EINVAL, "batch sampler: sampler is NULL");
    if (batch_size == 0)
        return stk__error(STK_ECONFIG, "batch sampler: batch_size is 0");
    if (batch_size > SIZE_MAX / sizeof(uint64_t))
        return stk__error(STK_ECONFIG, "batch sampler: batch_size %llu too large", (ull)batch_size);
    uint64_t n = stk_sampler_len(sampler);
    uint64_t len = n / batch_size;
    if (!drop_last && n % batch_size)
        len++;
    if (len == 0)
        return stk__error(STK_ECONFIG,
                          "batch sampler: drop_last with %llu indices per epoch < batch_size %llu "
                          "leaves no batch",
                          (ull)n, (ull)batch_size);
    stk_batch_sampler_t *b = calloc(1, sizeof *b);
    if (!b)
        return stk__error(-ENOMEM, "batch sampler: allocating");
    b->sampler = sampler;
    b->batch_size = batch_size;
    b->drop_last = drop_last != 0;
    b->len = len;
    *out = b;
    return 0;
}

void stk_batch_sampler_destroy(stk_batch_sampler_t **b)
{
    if (!b || !*b)
        return;
    stk__bucket_free((*b)->bucket);
    free(*b);
    *b = NULL;
}

int stk_batch_sampler_set_epoch(stk_batch_sampler_t *b, uint64_t epoch)
{
    if (!b)
        return stk__error(-EINVAL, "batch sampler: NULL batch sampler");
    int rc = stk_sampler_set_epoch(b->sampler, epoch);
    if (rc == 0 && b->bucket)
        rc = stk__bucket_build(b, epoch);
    if (rc < 0)
        return rc;
    b->cursor = 0;
    return 0;
}

uint64_t stk_batch_sampler_len(const stk_batch_sampler_t *b)
{
    return b ? b->len : 0;
}

uint64_t stk_batch_sampler_batch_size(const stk_batch_sampler_t *b)
{
    return b ? b->batch_size : 0;
}

int stk_batch_sampler_get(const stk_batch_sampler_t *b, uint64_t k, uint64_t *out, size_t *n)
{
    if (!b || !out || !n)
        return stk__error(-EINVAL, "batch sampler: get with a NULL %s",
                          !b ? "batch sampler" : !out ? "out" : "n");
    if (k >= b->len)
        return stk__error(-ERANGE, "batch sampler: batch %llu is past the epoch's %llu batches", (ull)k,
                          (ull)b->len);
    if (b->bucket)
        return stk__bucket_get(b, k, out, n);
    uint64_t first = k * b->batch_size;
    uint64_t total = stk_sampler_len(b->sampler);
    uint64_t count = total - first < b->batch_size ? total - first : b->batch_size;
    for (uint64_t i = 0; i < count; i++) {
        int rc = stk_sampler_get(b->sampler, first + i, &out[i]);
        if (rc < 0)
            return rc;
    }
    *n = (size_t)count;
    return 0;
}

int stk_batch_sampler_next(stk_batch_sampler_t *b, uint64_t *out, size_t *n)
{
    if (!b || !out || !n)
        return stk__error(-EINVAL, "batch sampler: next with a NULL %s",
                          !b ? "batch sampler" : !out ? "out" : "n");
    if (b->cursor >= b->len) {
        *n = 0;
        return STK_DONE;
    }
    int rc = stk_batch_sampler_get(b, b->cursor, out, n);
    if (rc < 0)
        return rc;
    b->cursor++;
    return 0;
}

uint64_t stk_batch_sampler_tell(const stk_batch_sampler_t *b)
{
    return b ? b->cursor : 0;
}

int stk_batch_sampler_seek(stk_batch_sampler_t *b, uint64_t batch)
{
    if (!b)
        return stk__error(-EINVAL, "batch sampler: NULL batch sampler");
    if (batch > b->len)
        return stk__error(-ERANGE, "batch sampler: seek to %llu past the epoch's %llu batches",
                          (ull)batch, (ull)b->len);
    b->cursor = batch;
    return 0;
}
