/* SPDX-License-Identifier: MIT */
/* The corpus replay of a fuzz target built without libFuzzer (the CI
 * test): every file named, and every file in every folder named (sorted,
 * dot files left out), goes through LLVMFuzzerTestOneInput once. */
#ifndef STOKER_TESTS_FUZZ_REPLAY_H
#define STOKER_TESTS_FUZZ_REPLAY_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Returns the exit status: 1 when an input could not be read or there was
 * none, else 0. name prefixes the messages. */
int stk_fuzz_replay(const char *name, int argc, char **argv);

#endif
