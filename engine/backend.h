/* SPDX-License-Identifier: MIT */
/* The backend interface: what a device must do for the layers and the
 * optimizer. A backend is an iface (a table of functions) plus a context;
 * layers call through the table and never know which backend runs them.
 * Shapes are planned once (the *_create slots build an op holding
 * primitives and workspaces) and executed many times. All activations are
 * dense f32, NCHW / (N, features); weights as PyTorch lays them out (OIHW,
 * [out, in]).
 *
 * Memory. "Device memory" is memory from the alloc slot (or a pointer into
 * it). Unless a slot says "host", every pointer it receives is device
 * memory: activations, the model's parameter / gradient / buffer arenas,
 * the optimizer's state, labels and soft targets (staged by the engine),
 * the loss and counters it writes. With host_memory = 1 (the CPU backend)
 * device memory is host memory and the engine hands caller memory (the
 * input batch, labels) to the slots directly; with 0 it stages labels and
 * soft targets through upload and reads results through download, and the
 * input batch must already be device memory (the caller's job).
 *
 * Ordering. A backend executes the work of its slots in call order (one
 * stream). A slot may return before its work is done unless it says it is
 * synchronous; download is, so a value the engine reads back is complete.
 * A slot that reports an error (negative STK_E* with context in
 * stk_error_message) may report it late: at the next synchronous slot.
 * The engine calls a backend from one thread at a time. */
#ifndef STOKER_ENGINE_BACKEND_H
#define STOKER_ENGINE_BACKEND_H

#include "backend_rnn.h"
#include "internal.h"
#include "optim_kernels.h"
#include "stoker/engine.h"

#include <stddef.h>
#include <stdint.h>

typedef struct stk__op stk__op_t; /* a backend's planned op, opaque here */

/* How an activation is laid out in memory. PLAIN is NCHW. BLOCKED8 is
 * N, C/8, H, W, 8 (oneDNN's nChw8c): what vectorized kernels want; used for
 * channel counts that are multiples of 8, so it has the same size. */
typedef enum stk__layout {
    STK__LAYOUT_PLAIN = 0,
    STK__LAYOUT_BLOCKED8 = 1
} stk__layout_t;

typedef struct stk__conv_desc {
    int64_t n, ic, ih, iw, oc, oh, ow;
    int64_t kh, kw, sh, sw, ph, pw, dh, dw, groups; /* dilation as PyTorch: 1 = dense */
    int bias;
    int fmt_in, fmt_out; /* stk__layout_t of the input and output */
} stk__conv_desc_t;

/* An eval-mode convolution, batch normalization with running statistics
 * and optional ReLU as one op (conv_fused_*): with s = gamma /
 * sqrt(var + eps) and t = (b - mean) s + beta per output channel (b the
 * convolution's bias, 0 without), y = relu(conv(x, w) s + t). conv.bias
 * says whether b is given; conv.fmt_out is also the layout of y. */
typedef struct stk__conv_fused_desc {
    stk__conv_desc_t conv;
    float eps;
    int relu;
} stk__conv_fused_desc_t;

typedef struct stk__bn_desc {
    int64_t n, c, h, w;
    float eps;
    int fmt;  /* stk__layout_t of input and output */
    int relu; /* apply ReLU to the output (and its mask in backward) */
} stk__bn_desc_t;

typedef struct stk__pool_desc {
    int64_t n, c, ih, iw, oh, ow, kh, kw, sh, sw, ph, pw;
    int max; /* 1: max pooling; 0: average including padding */
    int fmt; /* stk__layout_t of input and output */
} stk__pool_desc_t;

typedef struct stk__linear_desc {
    int64_t n, in, out;
    int bias;
} stk__linear_desc_t;

typedef enum stk__eltwise {
    STK__ELT_RELU,
    STK__ELT_LEAKY_RELU, /* alpha: negative slope */
    STK__ELT_GELU,       /* erf form */
    STK__ELT_SIGMOID,
    STK__ELT_TANH
} stk__eltwise_t;

typedef struct stk__backend_iface {
    const char *name;
    /* 1: device memory is host memory (see the top of this file). */
    int host_memory;
    /* 1 when the backend's convolution, batch-norm and pooling ops take
     * STK__LAYOUT_BLOCKED8 activations; 0: the model keeps them plain. */
    int blocked_layouts;
    /* Frees the context and everything it holds. */
    void (*destroy)(void *ctx);

    /* Device memory: zeroed, 64-byte aligned; NULL on failure (the engine
     * reports -ENOMEM). Synchronous (usable by the next slot). */
    void *(*alloc)(void *ctx, size_t bytes);
    /* Frees alloc'd memory after the work queued on it; NULL is a no-op. */
    void (*free)(void *ctx, void *p);
    /* Host src (any host memory, not necessarily pinned) to device dst.
     * Returns once src may be reused; the copy is ordered before later
     * slots. 0 or a negative STK_E*. */
    int (*upload)(void *ctx, void *dst, const void *src, size_t bytes);
    /* Device src to host dst (any host memory). Synchronous: waits for
     * the work queued before it, so dst holds the result on return. */
    int (*download)(void *ctx, void *dst, const void *src, size_t bytes);
    /* Device to device; the ranges may overlap (memmove). */
    int (*copy)(void *ctx, void *dst, const void *src, size_t bytes);
    /* dst[0..n) = 0 (device memory). */
    void (*zero)(void *ctx, float *dst, size_t n);
    /* Waits for all queued work and returns the first error it raised (0
     * when none). Optional: NULL when every slot is synchronous. */
    int (*synchronize)(void *ctx);
    /* The stream the slots queue their work on (cudaStream_t as void *),
     * for a communicator to order collectives on gradients after it with
     * events. Optional: NULL (or returning NULL) on a backend without
     * streams. */
    void *(*stream)(void *ctx);

    /* Worker threads for the calling thread's subsequent work; 0 or -EINVAL. */
    int (*set_threads)(void *ctx, int n);
    /* Current maximum worker threads. */
    int (*max_threads)(void *ctx);

    /* Releases an op made by any *_create slot; NULL is a no-op. */
    void (*op_destroy)(void *ctx, stk__op_t *op);

    /* Convolution plan for desc (forward, backward data, backward weights). */
    int (*conv_create)(void *ctx, const stk__conv_desc_t *d, stk__op_t **op);
    /* y = conv(x, w) + b (b NULL when the plan has no bias). */
    int (*conv_forward)(void *ctx, stk__op_t *op, const float *x, const float *w, const float *b, float *y);
    /* dx = conv_transpose(dy, w); overwrites dx. */
    int (*conv_backward_data)(void *ctx, stk__op_t *op, const float *dy, const float *w, float *dx);
    /* dw, db from x and dy; overwrites both (db NULL without bias). */
    int (*conv_backward_weights)(void *ctx, stk__op_t *op, const float *x, const float *dy, float *dw, float *db);

    /* The fused eval-mode op of stk__conv_fused_desc_t (optional: both
     * NULL where the backend has none). conv_fused_create fails (any
     * negative code, the reason in stk_error_message) when the backend
     * cannot run this fusion; the engine then runs the unfused ops for
     * that layer, so a failure here is never fatal. conv_fused_forward
     * computes s and t from the parameters and running statistics it is
     * given at each call (so they may change between calls: training in
     * between) and writes y; y matches the unfused ops within float
     * rounding only (the products are grouped differently), and under
     * bf16 / fp16 rounds where conv_forward does. */
    int (*conv_fused_create)(void *ctx, const stk__conv_fused_desc_t *d, stk__op_t **op);
    int (*conv_fused_forward)(void *ctx, stk__op_t *op, const float *x, const float *w, const float *b,
                              const float *gamma, const float *beta, const float *mean, const float *var, float *y);

    /* Batch normalization plan (per channel scale and shift). */
    int (*bn_create)(void *ctx, const stk__bn_desc_t *d, stk__op_t **op);
    /* train: computes the batch mean and biased variance into mean/var and
     * normalizes with them; eval: normalizes with the given mean/var. */
    int (*bn_forward)(void *ctx, stk__op_t *op, int train, const float *x, const float *gamma, const float *beta,
                      float *mean, float *var, float *y);
    /* Training-mode backward with the saved batch mean/var; overwrites dx,
     * dgamma, dbeta. */
    int (*bn_backward)(void *ctx, stk__op_t *op, const float *x, const float *dy, const float *gamma,
                       const float *mean, const float *var, float *dx, float *dgamma, float *dbeta);
    /* running = (1 - momentum) running + momentum batch; the variance is
     * made unbiased (times count / (count - 1)) first, as PyTorch. */
    void (*bn_update_running)(void *ctx, int64_t c, int64_t count, float momentum, const float *mean,
                              const float *var, float *running_mean, float *running_var);
    /* Synchronized batch normalization (PyTorch's SyncBatchNorm): the
     * statistics of the global batch, whose parts sit on other ranks. The
     * engine combines the ranks' figures on the host, so these slots exist
     * only on host-memory backends; NULL where the backend has none (the
     * engine then refuses sync BN, naming the backend). Training forward
     * is bn_stats, the ranks' figures combined, then bn_forward in eval
     * mode with the global mean/var; training backward is below.
     *
     * stats[0..c) = this batch's mean and stats[c..2c) its biased variance
     * per channel, accumulated in double. */
    int (*bn_stats)(void *ctx, stk__op_t *op, const float *x, double *stats);
    /* The local sums of a backward with the statistics held constant:
     * sum_dy = sum of dy', sum_dyxhat = sum of dy' (x - mean) / sqrt(var +
     * eps), where dy' is dy, or with the fused ReLU dy where y > 0 (y: the
     * forward's output). They are also the local dbeta and dgamma. */
    int (*bn_backward_sums)(void *ctx, stk__op_t *op, const float *x, const float *y, const float *dy,
                            const float *mean, const float *var, float *sum_dy, float *sum_dyxhat);
    /* dx from the sums over the global batch of count elements per channel:
     * dx = gamma / sqrt(var + eps) (dy' - (sum_dy + xhat sum_dyxhat) /
     * count); overwrites dx, which may be dy. */
    int (*bn_backward_apply)(void *ctx, stk__op_t *op, const float *x, const float *y, const float *dy,
                             const float *gamma, const float *mean, const float *var, const float *sum_dy,
                             const float *sum_dyxhat, int64_t count, float *dx);

    /* Pooling plan; a max-pooling op keeps its workspace (argmax). */
    int (*pool_create)(void *ctx, const stk__pool_desc_t *d, stk__op_t **op);
    /* y = pool(x); fills the workspace when training. */
    int (*pool_forward)(void *ctx, stk__op_t *op, int train, const float *x, float *y);
    /* dx from dy (and the workspace of the last training forward). */
    int (*pool_backward)(void *ctx, stk__op_t *op, const float *dy, float *dx);

    /* Layout conversion plan for n x c x h x w between two layouts. */
    int (*reorder_create)(void *ctx, int64_t n, int64_t c, int64_t h, int64_t w, int from, int to, stk__op_t **op);
    /* dst = src converted (reverse: from `to` back to `from`). */
    int (*reorder_run)(void *ctx, stk__op_t *op, int reverse, const float *src, float *dst);

    /* Fully connected plan: y[n, out] = x[n, in] w[out, in]^T + b. */
    int (*linear_create)(void *ctx, const stk__linear_desc_t *d, stk__op_t **op);
    int (*linear_forward)(void *ctx, stk__op_t *op, const float *x, const float *w, const float *b, float *y);
    /* dx = dy w; overwrites dx. */
    int (*linear_backward_data)(void *ctx, stk__op_t *op, const float *dy, const float *w, float *dx);
    /* dw = dy^T x, db = sum dy; overwrites (db NULL without bias). */
    int (*linear_backward_weights)(void *ctx, stk__op_t *op, const float *x, const float *dy, float *dw, float *db);

    /* y = f(x), n elements (y may be x). */
    int (*eltwise_forward)(void *ctx, stk__eltwise_t alg, float alpha, size_t n, const float *x, float *y);
    /* dx = f'(x) dy, using x and/or y = f(x) as the function prefers. */
    int (*eltwise_backward)(void *ctx, stk__eltwise_t alg, float alpha, size_t n, const float *x, const float *y,
                            const float *dy, float *dx);

    /* y = a + b over n elements. */
    void (*add)(void *ctx, size_t n, const float *a, const float *b, float *y);
    /* y += x over n elements. */
    void (*accumulate)(void *ctx, size_t n, const float *x, float *y);
    /* Channel concat of a [n, ca, hw] and b [n, cb, hw] into y [n, ca+cb, hw]. */
    void (*concat_forward)(void *ctx, int64_t n, int64_t ca, int64_t cb, int64_t hw, const float *a,
                           const float *b, float *y);
    /* The split of dy into da, db; acc_a/acc_b: add instead of overwrite;
     * a NULL destination is skipped. */
    void (*concat_backward)(void *ctx, int64_t n, int64_t ca, int64_t cb, int64_t hw, const float *dy, float *da,
                            float *db, int acc_a, int acc_b);

    /* Dropout with a mask that is a pure function of (key, step, element):
     * keep when the element's Philox uniform >= p, scaled by 1/(1-p).
     * Backward regenerates the mask; nothing is stored. */
    void (*dropout_forward)(void *ctx, size_t n, float p, uint64_t key, uint64_t step, const float *x, float *y);
    void (*dropout_backward)(void *ctx, size_t n, float p, uint64_t key, uint64_t step, const float *dy, float *dx);

    /* Softmax cross-entropy over logits [n, k], mean over the batch, with
     * label smoothing; targets are labels (i64 [n]) or soft rows (f32
     * [n, k]), one of them NULL, both device memory. The engine has checked
     * every label is in [0, k). Writes the softmax to prob and the loss
     * (one float) to the device memory at loss: the engine reads it back
     * once per forward, with the counters below, in one download. */
    int (*xent_forward)(void *ctx, int64_t n, int64_t k, const float *logits, const int64_t *labels,
                        const float *soft, float smoothing, float *prob, float *loss);
    /* dlogits = scale * d(loss)/d(logits), from the saved softmax; overwrites. */
    void (*xent_backward)(void *ctx, int64_t n, int64_t k, const float *prob, const int64_t *labels,
                          const float *soft, float smoothing, float scale, float *dlogits);
    /* Top-k accuracy: *correct (one i64, device memory, overwritten) = the
     * number of rows i of logits [n, k] whose label (i64 [n], device memory,
     * in [0, k)) has rank < topk, where a logit's rank counts the logits
     * greater than it plus the equal ones at lower indices (topk = 1 is the
     * first argmax; rows with a NaN logit count as the backend pleases). topk
     * >= 1. */
    int (*count_correct)(void *ctx, int64_t n, int64_t k, int topk, const float *logits, const int64_t *labels,
                         int64_t *correct);

    /* Optimizer plan for one parameter group: ranges are element offsets
     * and counts into the flat arenas (host memory, read during the call;
     * the op keeps what it needs). Released by op_destroy. */
    int (*optim_create)(void *ctx, const stk_optim_range_t *ranges, size_t n_ranges, stk__op_t **op);
    /* One fused update of the group in one pass over its ranges: params,
     * grads and the state arrays s0..s2 are whole arenas (device memory,
     * the op's ranges index them; a state array the update does not use is
     * NULL, see stk__optim_kernel for which is which); k holds the step's
     * float32 scalars (host memory, read during the call: the lr is an
     * argument, not part of the plan). The result must equal
     * stk__optim_kernel's within float rounding (bit-equal on the CPU). */
    int (*optim_update)(void *ctx, stk__op_t *op, const stk__optim_scalars_t *k, float *params, const float *grads,
                        float *s0, float *s1, float *s2);

    /* Recurrent stacks (backend_rnn.h: shapes, layouts, the parameter
     * block and packed-sequence semantics). rnn_create plans for at most
     * d->batch sequences of d->steps; the op owns its workspaces and what a
     * training forward saves for backward (each layer's input and output,
     * the states at every length boundary, the primitives' workspaces), so
     * one op serves one forward/backward pair at a time. */
    int (*rnn_create)(void *ctx, const stk__rnn_desc_t *d, stk__rnn_op_t **op);
    /* NULL is a no-op. */
    void (*rnn_destroy)(void *ctx, stk__rnn_op_t *op);
    /* y, hn, cn from x, h0, c0, w, and saves for backward; train: dropout
     * between layers. -EINVAL names a length outside [0, t] or a call
     * larger than the plan. */
    int (*rnn_forward)(void *ctx, stk__rnn_op_t *op, int train, const stk__rnn_args_t *a);
    /* dx, dh0, dc0, dw (overwritten) from dy, dhn, dcn, w for the op's last
     * forward, which must have been of the same n, t (-EINVAL otherwise;
     * STK_ESTATE when there was none or it failed). */
    int (*rnn_backward)(void *ctx, stk__rnn_op_t *op, const stk__rnn_args_t *a);

    /* Sequence helpers (embedding, heads, a loss over some steps). Rows
     * are f floats. dst[i] = src[idx[i]] for i < n (idx i64); -EINVAL
     * naming i when idx[i] is outside [0, rows). */
    int (*gather_rows)(void *ctx, int64_t n, int64_t f, int64_t rows, const int64_t *idx, const float *src,
                       float *dst);
    /* dst[idx[i]] += src[i] for i < n, skipping idx[i] == skip (idx in
     * range; repeated indices add up). */
    void (*scatter_add_rows)(void *ctx, int64_t n, int64_t f, const int64_t *idx, int64_t skip, const float *src,
                             float *dst);
    /* Over the valid steps of x [n, t, f] (lengths i64 [n], each in
     * [0, t]): mean = 0: y[i] = x[i, lengths[i] - 1]; 1: the mean of
     * x[i, 0 .. lengths[i]); zeros for a length of 0. y is [n, f]. */
    void (*seq_pool_forward)(void *ctx, int mean, int64_t n, int64_t t, int64_t f, const int64_t *lengths,
                             const float *x, float *y);
    /* dx [n, t, f] (overwritten) from dy [n, f]: the gradient of the steps
     * forward read, zero elsewhere. */
    void (*seq_pool_backward)(void *ctx, int mean, int64_t n, int64_t t, int64_t f, const int64_t *lengths,
                              const float *dy, float *dx);

    /* Feeding inputs (optional: NULL on a backend whose memory is the
     * host's; the engine then copies with upload). slot < STK__FEED_SLOTS.
     * feed_copy: dst (device) <- src (host, pinned or not) on a copy queue
     * of the backend's own, once the work that feed_release last marked
     * for slot is done; src is read until feed_release(slot) returns.
     * feed_use: the backend's work queued from now on waits for slot's
     * copy. feed_release: the work queued so far is the last to read
     * slot's data; returns once slot's copy is done (the host may reuse
     * its src). */
    int (*feed_copy)(void *ctx, int slot, void *dst, const void *src, size_t bytes);
    int (*feed_use)(void *ctx, int slot);
    int (*feed_release)(void *ctx, int slot);
    /* Optional: *sec = the device time slot's last copy took, once
     * feed_release(slot) has returned (0 when it made none). */
    int (*feed_copy_time)(void *ctx, int slot, double *sec);
    /* Optional: feed_copy of n half-precision values (bf16 = 1: bfloat16;
     * 0: IEEE binary16) from src into stage (device, 2n bytes), then, on
     * the same copy queue, converted to f32 into dst (device, n floats)
     * exactly as stk_bf16_to_f32 / stk_f16_to_f32 would: half the bytes
     * cross the bus. Ordered, used and released as feed_copy (the copy
     * time feed_copy_time gives includes the conversion). NULL: the
     * engine converts on the host and copies floats. */
    int (*feed_copy_half)(void *ctx, int slot, float *dst, void *stage, const void *src, size_t n, int bf16);
    /* Page-locks host memory for asynchronous copies / undoes it
     * (optional). */
    int (*pin_host)(void *ctx, void *addr, size_t bytes);
    void (*unpin_host)(void *ctx, void *addr);

    /* The arithmetic of the convolution and matrix-multiply ops planned
     * from now on (called once, before the first plan): 0 with *used set
     * to what the backend computes for want, or STK_ECONFIG saying what
     * it does not implement. */
    int (*set_precision)(void *ctx, stk_precision_t want, stk_precision_t *used);
    /* Dynamic loss scaling: g[0..n) *= inv_scale (device memory), and
     * *nonfinite (host) = 1 when any element was NaN or infinite before,
     * else 0. Synchronous: the flag is read back before it returns. */
    int (*unscale_grads)(void *ctx, size_t n, float *g, float inv_scale, int *nonfinite);

    /* Graphs of a whole training step (optional: all NULL where the
     * backend has none; engine/graph.c drives them). graph_begin starts
     * recording the slots' work instead of running it; graph_end stops,
     * and on success makes *graph, a replayable copy of that work (on
     * failure the work is dropped and the error returned). graph_launch
     * runs a graph (ordered like any slot's work). What changes from one
     * replay to the next is read at launch from host memory the backend
     * keeps: a captured dropout reads the step given by graph_note_step,
     * a captured optimizer update the scalars given by graph_note_optim,
     * called (instead of dropout_* / optim_update) while the engine
     * prepares a replay. A new slot that enqueues device work during a
     * training step needs its do-nothing twin in engine/graph.c's
     * prep_iface, or a replay would run it outside the graph too. */
    int (*graph_begin)(void *ctx);
    int (*graph_end)(void *ctx, void **graph);
    int (*graph_launch)(void *ctx, void *graph);
    void (*graph_destroy)(void *ctx, void *graph);
    void (*graph_note_step)(void *ctx, uint64_t step);
    int (*graph_note_optim)(void *ctx, stk__op_t *op, const stk__optim_scalars_t *k);
    /* The model's config (engine.h), given once after open and before any
     * op is planned, for what the backend tunes by it (CUDA: the cuDNN
     * policy, workspace limit and cache file). Optional: NULL where the
     * config holds nothing for the backend. STK_ECONFIG names a bad
     * field. algo_stats: the engine-choice counters (optional: NULL, all
     * zero). */
    int (*configure)(void *ctx, const stk_model_config_t *cfg);
    void (*algo_stats)(void *ctx, stk_algo_stats_t *out);

    /* Device-side timing for the model's profile (engine/profile.c).
     * Optional: all NULL on a backend whose slots run on the calling
     * thread (the CPU), where host time is the work's time. A mark is a
     * timestamp taken on the stream after the work queued before it.
     * timer_reserve: at least n marks exist from now on (made here, once:
     * marking allocates nothing); 0, -ENOMEM or STK_EBACKEND. timer_mark:
     * records mark i (< reserved), replacing what it held; never called
     * while a graph is recorded. timer_elapsed: *sec = the time from mark
     * a to mark b, both recorded; synchronous (waits for b). */
    int (*timer_reserve)(void *ctx, int n);
    int (*timer_mark)(void *ctx, int i);
    int (*timer_elapsed)(void *ctx, int a, int b, double *sec);
} stk__backend_iface_t;

#define STK__FEED_SLOTS 2

typedef struct stk__backend {
    const stk__backend_iface_t *iface;
    void *ctx;
} stk__backend_t;

/* The registration point: the only place that knows which backends exist.
 * STK_EDEVICE when the device is not built in or not available. _index
 * picks one of several devices of the kind (cuda:N); -1, and the plain
 * form, the calling thread's current one. */
int stk__backend_open(stk__backend_t *b, stk_device_t device);
int stk__backend_open_index(stk__backend_t *b, stk_device_t device, int index);
void stk__backend_close(stk__backend_t *b);

/* The CPU backend (engine/cpu/). */
int stk__cpu_backend_open(stk__backend_t *b);
/* The CUDA backend (engine/cuda/, built when STK_HAVE_CUDA): device
 * `device`, or the calling thread's current one when negative.
 * STK_EDEVICE without a usable GPU. */
int stk__cuda_backend_open(stk__backend_t *b, int device);
/* GPUs visible (0 and a message when none), and one line on GPU index. */
int stk__cuda_device_count(void);
int stk__cuda_describe(int index, char *buf, size_t cap);
/* engine/cpu/cpu_threads.c: CPUs allowed by the cgroup CPU quotas (v2 and
 * v1) of the process described by a mountinfo and a cgroup file, mount
 * points read under prefix (tests point all three at fake trees); 0 when
 * unlimited. */
long stk__cgroup_cpu_limit(const char *mountinfo, const char *cgroup_file, const char *prefix);
/* A model's thread count when its config says 0: stk_engine_cpu_count(),
 * or 0 (leave OpenMP's) when the user set OMP_NUM_THREADS. */
int stk__default_threads(void);

#endif
