/* SPDX-License-Identifier: MIT */
/* A small key-value store over TCP, hosted by rank 0 at MASTER_ADDR:
 * MASTER_PORT, for what ranks must agree on before any communicator works
 * (addresses of the TCP ring, the NCCL unique id): set, get (waits for the
 * key), add (a counter) and a barrier. Internal to dist/. */
#ifndef STOKER_DIST_STORE_H
#define STOKER_DIST_STORE_H

#include <stddef.h>
#include <stdint.h>

typedef struct stk__store stk__store_t;

typedef struct stk__store_config {
    const char *addr;   /* host name or address of rank 0 */
    int port;           /* 1..65535 */
    int serve;          /* 1 on rank 0: listen there and serve */
    int rank;           /* for messages */
    double timeout_s;   /* connect retries and each wait */
    /* Which communicator of the process this store serves (1, 2, ...):
     * a rank that reaches the store of an earlier one, still up on rank 0,
     * is turned away and retries. */
    uint32_t generation;
} stk__store_config_t;

/* Rank 0 (serve = 1) listens at addr:port and starts a serving thread;
 * every rank (rank 0 included) then connects, retrying while nobody
 * listens yet, until timeout_s. Errors: -EADDRINUSE / -errno (cannot
 * listen: the address is named), STK_ERANK (nobody answered at the named
 * address in time, with the last connect error), -ENOMEM. */
int stk__store_open(stk__store_t **out, const stk__store_config_t *cfg);
/* Closes the connection; rank 0 also stops serving. NULL-safe. */
void stk__store_close(stk__store_t **s);

/* Errors of the calls below: STK_ERANK (the store went away, or a wait
 * passed the timeout: the message names the key and the address), -EINVAL
 * (key too long: 255 bytes at most; value over 1 MiB), -ENOSPC (value
 * larger than cap: *len gets its size). Not thread-safe on one store. */
int stk__store_set(stk__store_t *s, const char *key, const void *val, size_t len);
/* Waits until key is set, then copies its value. */
int stk__store_get(stk__store_t *s, const char *key, void *buf, size_t cap, size_t *len);
/* Adds delta to the integer at key (0 when unset) and returns the sum in
 * *result. */
int stk__store_add(stk__store_t *s, const char *key, int64_t delta, int64_t *result);
/* Returns when n callers have entered the barrier called name. */
int stk__store_barrier(stk__store_t *s, const char *name, int n);
/* The local address this rank reached the store from ("10.0.0.2"): the
 * interface its peers can reach it on. */
const char *stk__store_local_addr(const stk__store_t *s);
/* "host:port" of the store, for messages. */
const char *stk__store_where(const stk__store_t *s);

#endif
