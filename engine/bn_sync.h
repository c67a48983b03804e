/* SPDX-License-Identifier: MIT */
/* Synchronized batch normalization's link between the engine and a
 * communicator (dist/ddp.c installs it), kept out of the public headers so
 * that the engine does not depend on dist/: the batchnorm layers of a
 * model with a sync set exchange their per-channel figures through these
 * two collectives on every training forward and backward. */
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

#endif
