/* SPDX-License-Identifier: MIT */
/* Fuzz target for the checkpoint reader and the train-state reader behind
 * it (meta text, history rows). The input is opened as a checkpoint file,
 * every section is read and it is read as a train state; a second pass
 * rewrites the header, table and section checksums first so that
 * mutations reach the table checks and the train-state parser behind
 * them. Built with libFuzzer under -Dfuzz=true; otherwise a plain main
 * replays files and directories given on the command line (CI runs the
 * corpus). */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "replay.h"
#include "stoker/checkpoint.h"
#include "train/train_internal.h"

static int memfd = -1;

static void open_all(void)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", memfd);
    stk_ckpt_t *ck = NULL;
    if (stk_ckpt_create(&ck, path) != 0)
        return;
    uint64_t sum = 0;
    for (size_t i = 0; i < stk_ckpt_num_sections(ck); i++) {
        const char *name;
        const void *d;
        size_t len;
        if (stk_ckpt_section_at(ck, i, &name, &d, &len) == 0) {
            sum += stk_ckpt_checksum(d, len);
            stk_ckpt_find(ck, name, NULL, NULL);
        }
    }
    (void)sum;
    stk_train_state_t st;
    if (stk__train_state_read(ck, &st) == 0)
        stk_train_state_clear(&st);
    stk_ckpt_destroy(&ck);
}

static void load(const uint8_t *data, size_t size)
{
    if (ftruncate(memfd, 0) != 0 || (size && pwrite(memfd, data, size, 0) != (ssize_t)size))
        abort();
}

/* Makes the checksums agree with the (mutated) bytes; the layout is in
 * engine/checkpoint.c. */
static void repair(uint8_t *d, size_t size)
{
    if (size < 64 || memcmp(d, "STKCKPT", 8) != 0)
        return;
    uint32_t n;
    memcpy(&n, d + 12, 4);
    if (n > 4096 || 64 + (uint64_t)n * 80 > size)
        return;
    for (uint32_t i = 0; i < n; i++) {
        uint8_t *e = d + 64 + (size_t)i * 80;
        uint64_t off, len;
        memcpy(&off, e + 48, 8);
        memcpy(&len, e + 56, 8);
        if (off <= size && len <= size - off) {
            uint64_t s = stk_ckpt_checksum(d + off, (size_t)len);
            memcpy(e + 64, &s, 8);
        }
    }
    uint64_t t = stk_ckpt_checksum(d + 64, (size_t)n * 80), fsz = size;
    memcpy(d + 16, &fsz, 8);
    memcpy(d + 24, &t, 8);
    uint64_t h = stk_ckpt_checksum(d, 32);
    memcpy(d + 32, &h, 8);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (memfd < 0 && (memfd = memfd_create("fuzz_checkpoint", 0)) < 0)
        abort();
    load(data, size);
    open_all();
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    repair(copy, size);
    load(copy, size);
    open_all();

    free(copy);
    return 0;
}

#ifndef STK_LIBFUZZER
int main(int argc, char **argv)
{
    return stk_fuzz_replay("fuzz_checkpoint", argc, argv);
}
#endif
