/* SPDX-License-Identifier: MIT */
/* Fuzz target for the shard reader: the input is one file, opened as a
 * shard set (a shard or a manifest), and every record is decoded. A second
 * pass repairs the header, index and raw-record checksums first, so that
 * mutations also reach the schema, index and record parsers behind them.
 * Built with libFuzzer under -Dfuzz=true; otherwise a plain main replays
 * files and directories given on the command line (CI runs the corpus). */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "replay.h"
#include "loader/shard_internal.h"

#define MAX_DECODE_RECORDS 64
#define MAX_DECODE_BYTES (16u << 20)

static int memfd = -1;

static void read_all_records(const char *path)
{
    stk_shardset_t *set = NULL;
    if (stk_shardset_create(&set, path) != 0)
        return;
    /* Exercise the accessors on whatever opened. */
    (void)stk_shardset_schema(set);
    char txt[2048];
    stk_schema_format(stk_shardset_schema(set), txt, sizeof txt);
    for (uint32_t i = 0; i < stk_shardset_num_shards(set); i++) {
        stk_shard_info_t si;
        stk_shardset_shard_info(set, i, &si);
    }
    uint64_t cap = stk_shardset_max_raw(set);
    stk_decoder_t *dec = NULL;
    /* Buffers are the caller's: a 4 GiB record is legal, so cap what the
     * harness is willing to allocate. */
    if (cap <= MAX_DECODE_BYTES && stk_decoder_create(&dec, set) == 0) {
        void *buf = malloc(cap ? cap : 1);
        uint64_t n = stk_shardset_len(set);
        for (uint64_t i = 0; buf && i < n && i < MAX_DECODE_RECORDS; i++) {
            stk_record_t rec;
            stk_shardset_get(set, dec, i, buf, cap, &rec);
        }
        free(buf);
        stk_decoder_destroy(&dec);
    }
    stk_shardset_destroy(&set);
}

static void run(const uint8_t *data, size_t size)
{
    if (ftruncate(memfd, 0) != 0 || (size && pwrite(memfd, data, size, 0) != (ssize_t)size))
        abort();
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", memfd);
    read_all_records(path);
}

/* Rewrites the checksums the format carries so that they match. */
static void repair(uint8_t *d, size_t size)
{
    if (size < STK__HEADER_FIXED + STK__FOOTER_SIZE || memcmp(d, STK__SHARD_MAGIC, 8) != 0)
        return;
    uint64_t hlen = stk__get_u32(d + 12);
    uint8_t *foot = d + size - STK__FOOTER_SIZE;
    if (hlen <= size - STK__FOOTER_SIZE)
        stk__put_u64(foot + 24, stk__xxh64(d, hlen, 0));
    uint64_t ioff = stk__get_u64(foot), n = stk__get_u64(foot + 8);
    uint64_t end = size - STK__FOOTER_SIZE;
    if (ioff > end || n > (end - ioff) / STK__INDEX_ENTRY)
        return;
    for (uint64_t i = 0; i < n; i++) {
        uint8_t *e = d + ioff + i * STK__INDEX_ENTRY;
        uint64_t off = stk__get_u64(e), slen = stk__get_u32(e + 8), rlen = stk__get_u32(e + 12);
        if (slen == rlen && off <= end && slen <= end - off)
            stk__put_u64(e + 16, stk__xxh64(d + off, slen, 0));
    }
    stk__put_u64(foot + 16, stk__xxh64(d + ioff, n * STK__INDEX_ENTRY, 0));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (memfd < 0) {
        memfd = memfd_create("fuzz_shard", MFD_CLOEXEC);
        if (memfd < 0)
            abort();
    }
    run(data, size);
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    repair(copy, size);
    if (size && memcmp(copy, data, size) != 0)
        run(copy, size);
    free(copy);
    return 0;
}

#ifndef STK_LIBFUZZER
int main(int argc, char **argv)
{
    return stk_fuzz_replay("fuzz_shard", argc, argv);
}
#endif
