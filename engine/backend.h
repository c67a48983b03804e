/* SPDX-License-Identifier: MIT */
/* The backend interface: what a device must do for the layers. A backend is
 * an iface (a table of functions) plus a context; layers call through the
 * table and never know which backend runs them. Shapes are planned once
 * (the *_create slots build an op holding primitives and workspaces) and
 * executed many times. All tensors are dense f32, NCHW / (N, features);
 * weights as PyTorch lays them out (OIHW, [out, in]). */
#ifndef STOKER_ENGINE_BACKEND_H
#define STOKER_ENGINE_BACKEND_H

#include "internal.h"
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
    /* 1 when the backend's convolution, batch-norm and pooling ops take
     * STK__LAYOUT_BLOCKED8 activations; 0: the model keeps them plain. */
    int blocked_layouts;
    /* Frees the context and everything it holds. */
    void (*destroy)(void *ctx);

    /* Device memory: zeroed, 64-byte aligned; NULL on failure. */
    void *(*alloc)(void *ctx, size_t bytes);
    /* Frees alloc'd memory; NULL is a no-op. */
    void (*free)(void *ctx, void *p);
    /* Host to device / device to host / device to device copies. upload
     * and download return when the host memory may be reused or read;
     * copy is ordered with the backend's other work. The slots from here
     * to xent_backward that return int return 0 or a negative status: on
     * a GPU each can fail (a lost device, a fault of earlier work). */
    int (*upload)(void *ctx, void *dst, const void *src, size_t bytes);
    int (*download)(void *ctx, void *dst, const void *src, size_t bytes);
    int (*copy)(void *ctx, void *dst, const void *src, size_t bytes);
    /* dst[0..n) = 0. */
    int (*zero)(void *ctx, float *dst, size_t n);

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
    int (*bn_update_running)(void *ctx, int64_t c, int64_t count, float momentum, const float *mean,
                             const float *var, float *running_mean, float *running_var);

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
    int (*add)(void *ctx, size_t n, const float *a, const float *b, float *y);
    /* y += x over n elements. */
    int (*accumulate)(void *ctx, size_t n, const float *x, float *y);
    /* Channel concat of a [n, ca, hw] and b [n, cb, hw] into y [n, ca+cb, hw]. */
    int (*concat_forward)(void *ctx, int64_t n, int64_t ca, int64_t cb, int64_t hw, const float *a,
                          const float *b, float *y);
    /* The split of dy into da, db; acc_a/acc_b: add instead of overwrite;
     * a NULL destination is skipped. */
    int (*concat_backward)(void *ctx, int64_t n, int64_t ca, int64_t cb, int64_t hw, const float *dy, float *da,
                           float *db, int acc_a, int acc_b);

    /* Dropout with a mask that is a pure function of (key, step, element):
     * keep when the element's Philox uniform >= p, scaled by 1/(1-p).
     * Backward regenerates the mask; nothing is stored. */
    int (*dropout_forward)(void *ctx, size_t n, float p, uint64_t key, uint64_t step, const float *x, float *y);
    int (*dropout_backward)(void *ctx, size_t n, float p, uint64_t key, uint64_t step, const float *dy, float *dx);

    /* Softmax cross-entropy over logits [n, k], mean over the batch, with
     * label smoothing; targets are labels (i64) or soft rows (f32), one of
     * them NULL. Writes the softmax to prob and returns the loss in *loss.
     * -EINVAL for a label outside [0, k) (the message names the sample). */
    int (*xent_forward)(void *ctx, int64_t n, int64_t k, const float *logits, const int64_t *labels,
                        const float *soft, float smoothing, float *prob, float *loss);
    /* dlogits = scale * d(loss)/d(logits), from the saved softmax; overwrites. */
    int (*xent_backward)(void *ctx, int64_t n, int64_t k, const float *prob, const int64_t *labels,
                         const float *soft, float smoothing, float scale, float *dlogits);
} stk__backend_iface_t;

typedef struct stk__backend {
    const stk__backend_iface_t *iface;
    void *ctx;
} stk__backend_t;

/* The registration point: the only place that knows which backends exist.
 * STK_EDEVICE when the device is not built in or not available. */
int stk__backend_open(stk__backend_t *b, stk_device_t device);
void stk__backend_close(stk__backend_t *b);

/* The CPU backend (engine/cpu/). */
int stk__cpu_backend_open(stk__backend_t *b);
/* The CUDA backend (engine/cuda/, built when STK_HAVE_CUDA): device
 * `device`, or the calling thread's current one when negative.
 * STK_EDEVICE without a usable GPU. */
int stk__cuda_backend_open(stk__backend_t *b, int device);

#endif
