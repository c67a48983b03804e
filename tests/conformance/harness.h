/* SPDX-License-Identifier: MIT */
/* The conformance test's harness: the backends under test, fixtures
 * (tests/data/conformance, from tools/gen_conformance_fixtures.py), device
 * buffers that are freed with the run, outputs read back to the host, and
 * the comparison |a - b| <= atol + rtol |b| that reports the worst
 * element. An op runs once per backend on the same inputs; its outputs
 * are compared with PyTorch's (CPU backend) and with the CPU backend's
 * (every other backend). */
#ifndef STOKER_TESTS_CONFORMANCE_HARNESS_H
#define STOKER_TESTS_CONFORMANCE_HARNESS_H

#include "engine/backend.h"
#include "engine/model.h"

#include <stddef.h>
#include <stdint.h>

#define RUN_MAX_OUT 32
#define RUN_MAX_ALLOC 64

typedef struct fixture {
    char name[128];
    char *buf;
    stk__st_file_t f;
    char op[32];
    char params[512];
} fixture_t;

/* Loads tests/data/conformance/<file>; 0 or -1 (message printed). */
int fixture_load(fixture_t *fx, const char *dir, const char *file);
void fixture_free(fixture_t *fx);
/* Parameter `key` of the fixture's "params" metadata; fails the test
 * when it is missing. */
double fx_param(const fixture_t *fx, const char *key);
/* Whether the fixture has parameter `key`. */
int fx_has(const fixture_t *fx, const char *key);
int64_t fx_int(const fixture_t *fx, const char *key);
/* A tensor of the fixture as a fresh, aligned host copy (float or i64
 * by the file's dtype); NULL when absent. *n: element count. */
void *fx_tensor(const fixture_t *fx, const char *name, size_t *n);

typedef struct run_out {
    char name[32];
    float *v; /* host copy */
    size_t n;
} run_out_t;

/* One op on one backend: its device buffers and its outputs. */
typedef struct run {
    stk__backend_t *be;
    const char *be_name;
    void *alloc[RUN_MAX_ALLOC];
    int nalloc;
    run_out_t out[RUN_MAX_OUT];
    int nout;
    int failed; /* a backend call failed: message printed */
} run_t;

void run_init(run_t *r, stk__backend_t *be, const char *be_name);
void run_free(run_t *r);
/* Zeroed device memory (NULL after a failure, which is recorded). */
void *run_alloc(run_t *r, size_t bytes);
/* Device copy of n elements of host memory. */
void *run_upload(run_t *r, const void *host, size_t bytes);
/* The fixture's tensor `name` on the device (n: element count). */
void *run_input(run_t *r, const fixture_t *fx, const char *name, size_t *n);
/* Downloads n floats of dev as output `name`. */
void run_output(run_t *r, const char *name, const void *dev, size_t n);
/* Output `name` from host memory (a value a slot returned). */
void run_output_host(run_t *r, const char *name, const float *host, size_t n);
/* Records the status of a backend call; returns 1 when it failed. */
int run_check(run_t *r, int rc, const char *what);
const run_out_t *run_find(const run_t *r, const char *name);

typedef struct tol {
    double rtol, atol;
} tol_t;

/* Compares every output of r with the fixture's tensor of that name
 * ("y@x" is compared with "y") or with ref's output of that name. Prints one line per
 * output; returns the number of outputs out of tolerance. */
int compare_fixture(const run_t *r, const fixture_t *fx, tol_t tol, const char *label);
int compare_runs(const run_t *r, const run_t *ref, tol_t tol, const char *label);

/* Failures counted over the whole test. */
extern int g_failures;
void fail(const char *fmt, ...) STK_PRINTF(1, 2);

#endif
