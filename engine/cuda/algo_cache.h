/* SPDX-License-Identifier: MIT */
/* The convolution algorithm policy's plain-C half: which engine
 * configurations a policy accepts (from their notes and workspace), and
 * the benchmark cache (problem key -> chosen engine) with its text file.
 * No CUDA here: cudnn_graph.c maps cuDNN's notes and descriptors to and
 * from these types, and tests/unit/test_algo_cache.c runs this on any
 * machine. */
#ifndef STOKER_ENGINE_CUDA_ALGO_CACHE_H
#define STOKER_ENGINE_CUDA_ALGO_CACHE_H

#include "stoker/engine.h"

#include <stddef.h>
#include <stdint.h>

/* The directions of a convolution: the same numbers as CU_FWD...; then
 * the eval-mode fused forwards (convolution, per-channel scale and
 * shift, and ReLU or not), whose engines are chosen apart from the plain
 * forward's. */
enum {
    STK__ALGO_FPROP = 0,
    STK__ALGO_DGRAD = 1,
    STK__ALGO_WGRAD = 2,
    STK__ALGO_FPROP_BN = 3,
    STK__ALGO_FPROP_BN_RELU = 4,
    STK__ALGO_OPS = 5
};

/* An engine configuration's notes, as bits (cudnn_graph.c maps cuDNN's
 * numerical and behavior notes to these). */
enum {
    STK__NOTE_TENSOR_CORE = 1u << 0,        /* FP32 on tensor cores: TF32 */
    STK__NOTE_DOWN_CONVERT = 1u << 1,       /* inputs converted to a narrower type */
    STK__NOTE_NONDETERMINISTIC = 1u << 2,   /* results may differ run to run */
    STK__NOTE_RUNTIME_COMPILATION = 1u << 3 /* compiled (NVRTC) when planned */
};

/* NULL when `policy` accepts a configuration with these notes needing
 * `workspace` bytes (-1: not known yet, not checked), else why not.
 * limit: the workspace limit in bytes, 0 for none. The rules:
 *   every policy: no down-converted inputs; TF32 only when allow_tf32;
 *     no more workspace than the limit;
 *   deterministic: no NONDETERMINISTIC note;
 *   benchmark: no runtime compilation (every candidate is planned, and
 *     compiling each would cost more than timing saves). */
const char *stk__algo_reject(stk_cudnn_policy_t policy, int allow_tf32, unsigned notes, int64_t workspace,
                             uint64_t limit);

/* A convolution problem, as the benchmark cache keys it. `device` names
 * the GPU (model and SM count, spaces replaced): a winner on one GPU says
 * nothing about another. Strings hold no white space. */
typedef struct stk__algo_key {
    int op;          /* STK__ALGO_FPROP... */
    char dtype[8];   /* "f32" */
    char layout[8];  /* "nchw" */
    char device[64];
    int64_t align;   /* activation pointer alignment the plan assumes */
    int64_t tf32;    /* TF32 allowed */
    int64_t n, c, h, w, k, r, s; /* batch, in channels, input, out channels, kernel */
    int64_t sh, sw, ph, pw, dh, dw, groups;
} stk__algo_key_t;

#define STK__ALGO_MAX_KNOBS 24
/* A chosen engine configuration: cuDNN's global engine index and its knob
 * choices rebuild it in any process with the same cuDNN. */
typedef struct stk__algo_choice {
    int64_t engine;
    int nknobs;
    int64_t knob_type[STK__ALGO_MAX_KNOBS];
    int64_t knob_value[STK__ALGO_MAX_KNOBS];
    int64_t workspace; /* bytes */
    double time_ms;    /* measured; 0 when not timed */
} stk__algo_choice_t;

/* The key as one line of text (the file's key fields); returns 0 or
 * -ENAMETOOLONG when cap is too small. */
int stk__algo_key_format(const stk__algo_key_t *k, char *buf, size_t cap);

typedef struct stk__algo_cache stk__algo_cache_t;

/* An empty cache for files of backend `version` (e.g. "cudnn-91000": a
 * file written for another version is refused; engine indices and knobs
 * are a cuDNN version's own). Returns 0, -EINVAL or -ENOMEM. */
int stk__algo_cache_create(stk__algo_cache_t **out, const char *version);
/* NULL-safe; sets *c to NULL. */
void stk__algo_cache_destroy(stk__algo_cache_t **c);
/* 1 and *out when key has an entry, else 0. */
int stk__algo_cache_lookup(const stk__algo_cache_t *c, const stk__algo_key_t *key, stk__algo_choice_t *out);
/* Adds or replaces key's entry. 0, -EINVAL (a string of the key holds
 * white space or is empty, or too many knobs) or -ENOMEM. */
int stk__algo_cache_insert(stk__algo_cache_t *c, const stk__algo_key_t *key, const stk__algo_choice_t *choice);
size_t stk__algo_cache_size(const stk__algo_cache_t *c);
/* Drops every entry. */
void stk__algo_cache_clear(stk__algo_cache_t *c);

/* Writes every entry to path: a temporary file in the same folder, then
 * rename, so a reader sees the old file or the new one, never half of
 * one. Returns 0 or -errno naming the path. */
int stk__algo_cache_save(const stk__algo_cache_t *c, const char *path);
/* Reads path's entries into c (replacing entries with the same key),
 * all or nothing. Returns the count of entries read, or: -ENOENT and
 * other -errno (cannot be read); STK_EFORMAT (not a cache file, another
 * format version, or another backend version: the message says which);
 * STK_EDATA (a malformed line: the message names path and line). */
int stk__algo_cache_load(stk__algo_cache_t *c, const char *path);

#endif
