/* SPDX-License-Identifier: MIT */
/* The floor under the loader on raw records: what it costs one core just
 * to copy each record of a shard set, in a random order, from the page
 * cache (mapped) into a batch buffer, with records prefetched a few ahead
 * as the loader does, and what XXH64 of each record adds. No sampler, no
 * locate, no slots, no processes: the part of a raw, unaugmented batch
 * that no loader can avoid. Run with --processes 2 to see both cores do it
 * at once.
 *
 *   stoker-gatherbench SET [--epochs N] [--batch N] [--processes P]
 *
 * Prints, per process and mode, the median ns per record over epochs 2..N
 * (epoch 1 maps the pages). Not installed: a measuring tool. */
#define _GNU_SOURCE
#include <stoker/stoker.h>

#include "../common/internal.h"
#include "tool_args.h"
#include "tool_clock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { AHEAD = 8 };

static volatile uint64_t kept;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void prefetch(const unsigned char *p, size_t len)
{
    for (size_t o = 0; o < len; o += 64)
        __builtin_prefetch(p + o, 0, 0);
}

/* One process: both modes, epochs each; prints one line per mode. */
static int run(const stk_shardset_t *set, unsigned epochs, size_t batch, int proc)
{
    uint64_t n = stk_shardset_len(set);
    uint32_t nshards = stk_shardset_num_shards(set);
    const unsigned char **base = calloc(nshards, sizeof *base);
    const unsigned char **rec = calloc(n, sizeof *rec);
    uint32_t *len = calloc(n, sizeof *len);
    uint64_t *perm = calloc(n, sizeof *perm);
    unsigned char *out = malloc(batch * stk_shardset_max_raw(set));
    double *ns = calloc(epochs, sizeof *ns);
    if (!base || !rec || !len || !perm || !out || !ns) {
        fprintf(stderr, "stoker-gatherbench: out of memory\n");
        return 1;
    }
    for (uint64_t i = 0; i < n; i++) {
        stk_record_loc_t loc;
        if (stk_shardset_locate(set, i, &loc) != 0) {
            fprintf(stderr, "stoker-gatherbench: %s\n", stk_error_message());
            return 1;
        }
        if (!base[loc.shard]) {
            stk_shard_info_t info;
            stk_shardset_shard_info(set, loc.shard, &info);
            void *m = mmap(NULL, (size_t)info.file_bytes, PROT_READ, MAP_SHARED, loc.fd, 0);
            if (m == MAP_FAILED) {
                perror("stoker-gatherbench: mmap");
                return 1;
            }
            base[loc.shard] = m;
        }
        rec[i] = base[loc.shard] + loc.offset;
        len[i] = (uint32_t)loc.stored_len;
        perm[i] = i;
    }
    uint64_t sink = 0;
    for (int hash = 0; hash < 2; hash++) {
        for (unsigned e = 0; e < epochs; e++) {
            stk_rng_t r;
            stk_rng_init(&r, 1234 + (uint64_t)proc, e);
            for (uint64_t i = 0; i + 1 < n; i++) {
                uint64_t j = i + stk_rng_below(&r, n - i), t = perm[i];
                perm[i] = perm[j];
                perm[j] = t;
            }
            double t0 = tool_now_s();
            for (uint64_t b = 0; b < n; b += batch) {
                size_t k = n - b < batch ? (size_t)(n - b) : batch;
                unsigned char *o = out;
                for (size_t i = 0; i < k; i++) {
                    if (i + AHEAD < k)
                        prefetch(rec[perm[b + i + AHEAD]], len[perm[b + i + AHEAD]]);
                    uint64_t x = perm[b + i];
                    if (hash)
                        sink += stk__xxh64(rec[x], len[x], 0);
                    memcpy(o, rec[x], len[x]);
                    o += len[x];
                }
                sink += out[b % 64];
            }
            ns[e] = (tool_now_s() - t0) / (double)n * 1e9;
        }
        qsort(ns + 1, epochs - 1, sizeof *ns, cmp_double);
        printf("process %d: %-12s %6.1f ns/record (median of epochs 2..%u; epoch 1 %.1f)\n",
               proc, hash ? "copy + XXH64" : "copy", ns[1 + (epochs - 1) / 2], epochs, ns[0]);
    }
    kept = sink; /* the copies and hashes must not be optimised away */
    return 0;
}

int main(int argc, char **argv)
{
    const char *path = NULL, *me = "stoker-gatherbench";
    int64_t epochs = 5, procs = 1, batch = 256;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--epochs") && v) {
            if (tool_parse_i64(me, a, argv[++i], 2, 1000000, &epochs) < 0)
                return 2;
        } else if (!strcmp(a, "--batch") && v) {
            if (tool_parse_i64(me, a, argv[++i], 1, 1 << 24, &batch) < 0)
                return 2;
        } else if (!strcmp(a, "--processes") && v) {
            if (tool_parse_i64(me, a, argv[++i], 1, 64, &procs) < 0)
                return 2;
        } else if (a[0] != '-' && !path) {
            path = a;
        } else {
            fprintf(stderr, "usage: stoker-gatherbench SET [--epochs N>=2] [--batch N] [--processes P<=64]\n");
            return 2;
        }
    }
    if (!path) {
        fprintf(stderr, "usage: stoker-gatherbench SET [--epochs N>=2] [--batch N] [--processes P<=64]\n");
        return 2;
    }
    stk_shardset_t *set = NULL;
    if (stk_shardset_create(&set, path) != 0) {
        fprintf(stderr, "stoker-gatherbench: %s\n", stk_error_message());
        return 1;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    int rc = 0;
    for (unsigned p = 1; p < (unsigned)procs; p++) {
        pid_t pid = fork();
        if (pid == 0)
            _exit(run(set, (unsigned)epochs, (size_t)batch, (int)p));
        if (pid < 0) {
            perror("stoker-gatherbench: fork");
            rc = 1;
        }
    }
    rc |= run(set, (unsigned)epochs, (size_t)batch, 0);
    int st;
    while (wait(&st) > 0)
        rc |= !WIFEXITED(st) || WEXITSTATUS(st) != 0;
    stk_shardset_destroy(&set);
    return rc;
}
