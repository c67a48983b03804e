/* SPDX-License-Identifier: MIT */
/* What dist/ddp.c needs of the engine beyond the public API, kept out of
 * the public headers so that the engine does not depend on dist/:
 * synchronized batch normalization's link to a communicator (the
 * batchnorm layers of a model with a sync set exchange their per-channel
 * figures through these two collectives on every training forward and
 * backward), and the stream a device backend computes on. */
#ifndef STOKER_ENGINE_BN_SYNC_H
#define STOKER_ENGINE_BN_SYNC_H

#include "stoker/engine.h"

#include <stddef.h>

typedef struct stk__bn_sync {
    /* recv (size * bytes) = every rank's send (bytes each), in rank order,
     * on every rank. 0 or a negative STK_E* with context. */
    int (*allgather)(void *user, const void *send, void *recv, size_t bytes);
    /* buf (count floats) summed over the ranks, in place, on every rank. */
    int (*allreduce_sum)(void *user, float *buf, size_t count);
    void *user;
    int size; /* ranks, >= 1 */
} stk__bn_sync_t;

/* Installs s (copied; NULL clears). Returns 0, -EINVAL (size < 1 or a NULL
 * collective), -ENOMEM, or STK_ECONFIG when the model has batchnorm layers
 * and its backend has no synchronized batch normalization (the message
 * names the backend and the first such layer). A model without batchnorm
 * accepts it and never calls it. */
int stk__model_set_bn_sync(stk_model_t *m, const stk__bn_sync_t *s);

/* The stream the model's backend queues its work on (cudaStream_t as
 * void *), or NULL (the CPU: every slot has finished when it returns). */
void *stk__model_stream(const stk_model_t *m);

#endif
