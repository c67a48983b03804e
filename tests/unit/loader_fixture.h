/* SPDX-License-Identifier: MIT */
/* What the loader's test programs (test_loader*.c) share, defined in
 * loader_fixture.c: their datasets and the helpers that read epochs. Needs
 * <cmocka.h> (and what it needs) first. */
#ifndef STOKER_TEST_LOADER_FIXTURE_H
#define STOKER_TEST_LOADER_FIXTURE_H

#include <stddef.h>
#include <stdint.h>

#include "stoker/common.h"
#include "stoker/loader.h"

#define N_SAMPLES 600
#define IMG 8

void msleep(int ms);

/* ---- Datasets ------------------------------------------------------ */

/* The image of sample i: IMG x IMG bytes. */
void img_of(uint64_t i, unsigned char *out);
/* n samples: an image [1, IMG, IMG] u8 (img_of) and its index as label. */
stk_dataset_t *make_mem_ds(uint64_t n);

/* A user dataset through the vtable: a fixed label, a variable-length
 * token field [L] and a variable field [2, L]; index `bad` is corrupt, and
 * `fds` is what it claims to hold open. */
typedef struct var_args {
    uint64_t n;
    int64_t bad;
    uint64_t fds;
    int sleep_ms;  /* per sample, to keep workers busy */
    int jitter_us; /* and up to this much more, varying with the index */
    int64_t hang;  /* a worker reading this index hangs: forever, or once */
    int worker_sleep_ms; /* per sample, in workers only (the creating process is fast) */
    int hang_once; /* with hang_marker: the first to hang creates it, and */
    char hang_marker[128]; /* no worker hangs once it exists */
} var_args_t;

extern const stk_dataset_ops_t var_ops;
/* L of sample i's variable fields. */
int64_t var_extent(uint64_t i);
/* The var dataset of n samples, bad corrupt (-1: none), sleep_ms per sample. */
stk_dataset_t *make_var_ds(uint64_t n, int64_t bad, int sleep_ms);

/* ---- Reading epochs ------------------------------------------------ */

typedef struct run {
    uint64_t sum;
    uint64_t nbatches, nsamples;
    unsigned *seen;     /* per dataset index */
} run_t;

/* FNV-1a of n bytes at p, continuing from h. */
uint64_t fnv(uint64_t h, const void *p, size_t n);
run_t fresh_run(uint64_t n);
int take_one(stk_loader_t *l, run_t *r);
/* Reads the rest of the epoch, checksumming every field and index. */
int drain_epoch(stk_loader_t *l, run_t *r, uint64_t n);
/* Every index below n seen once, except (-1: none) never. */
void assert_each_once(const run_t *r, uint64_t n, int64_t except);
/* Batches of 16, shuffled with a fixed seed, persistent workers. */
stk_loader_config_t base_cfg(uint32_t workers, uint32_t prefetch);
/* Reads epochs 0..epochs-1 with a new loader; the last epoch's run. */
run_t run_epochs(stk_dataset_t *ds, const stk_loader_config_t *c, uint64_t epochs);

/* Warnings the loader logs, kept for the test to read (keep_log as the
 * logger callback appends them to logged). */
extern char logged[8192];
void keep_log(stk_log_level_t level, const char *msg, void *user);

#endif
