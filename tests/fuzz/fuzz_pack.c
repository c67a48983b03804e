/* SPDX-License-Identifier: MIT */
/* Fuzz target for the importers (IDX, CIFAR, .npy): the input is a format
 * byte, a u32 LE length A, then A bytes of the first input file and the
 * rest as the second (labels). Both go to memfds, a source is opened and
 * every record read. Built with libFuzzer under -Dfuzz=true; otherwise a
 * plain main replays the corpus (tests/fuzz/corpus/pack, made by
 * tools/gen_pack_corpus.py). */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "replay.h"
#include "stoker/pack.h"

#define MAX_RECORDS 4096

static int fds[2] = {-1, -1};

static void put(int fd, const uint8_t *data, size_t size)
{
    if (ftruncate(fd, 0) != 0 || (size && pwrite(fd, data, size, 0) != (ssize_t)size))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (int i = 0; i < 2; i++)
        if (fds[i] < 0 && (fds[i] = memfd_create("fuzz_pack", MFD_CLOEXEC)) < 0)
            abort();
    if (size < 5)
        return 0;
    static const stk_pack_format_t formats[] = {STK_PACK_IDX, STK_PACK_NPY, STK_PACK_CIFAR10,
                                                STK_PACK_CIFAR100};
    stk_pack_format_t fmt = formats[data[0] % 4];
    uint32_t a = (uint32_t)data[1] | (uint32_t)data[2] << 8 | (uint32_t)data[3] << 16 |
                 (uint32_t)data[4] << 24;
    data += 5;
    size -= 5;
    if (a > size)
        a = (uint32_t)size;
    put(fds[0], data, a);
    put(fds[1], data + a, size - a);
    char p0[64], p1[64];
    snprintf(p0, sizeof p0, "/proc/self/fd/%d", fds[0]);
    snprintf(p1, sizeof p1, "/proc/self/fd/%d", fds[1]);
    const char *inputs[2] = {p0, p1};
    stk_pack_source_config_t cfg;
    stk_pack_source_config_default(&cfg);
    cfg.format = fmt;
    cfg.inputs = inputs;
    cfg.ninputs = fmt == STK_PACK_IDX || fmt == STK_PACK_NPY ? 2 : 1;
    stk_pack_source_t *src = NULL;
    if (stk_pack_source_create(&src, &cfg) != 0)
        return 0;
    (void)stk_pack_source_schema(src);
    for (int pass = 0; pass < 2; pass++) {
        for (uint64_t i = 0; i < MAX_RECORDS; i++) {
            const void *d[STK_MAX_FIELDS];
            int64_t ext[STK_MAX_FIELDS];
            if (stk_pack_source_next(src, d, ext) != 0)
                break;
        }
        if (stk_pack_source_rewind(src) != 0)
            break;
    }
    stk_pack_source_destroy(&src);
    return 0;
}

#ifndef STK_LIBFUZZER
int main(int argc, char **argv)
{
    return stk_fuzz_replay("fuzz_pack", argc, argv);
}
#endif
