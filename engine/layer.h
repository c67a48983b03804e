/* SPDX-License-Identifier: MIT */
/* The per-layer table: what a kind of layer does, one entry per kind, each
 * family in its own file under engine/layers/, and the helpers model.c
 * gives them (arena slices, gradient targets). model.c keeps the graph and
 * calls only through the table.
 *
 * Adding a layer kind (an embedding, an LSTM, a head over sequences):
 *  1. its public parts in include/stoker/engine.h: a value in
 *     stk_layer_kind_t (before STK_LAYER_KIND_COUNT), any new settings as
 *     fields of stk_layer_desc_t (with their defaults in the comment), and
 *     its constructor stk_layer_<kind>(name, ...);
 *  2. a new file engine/layers/<family>.c defining a const
 *     stk__layer_class_t (kind, model-file name and keys, defaults, check,
 *     infer, params/init, plan/unplan, forward, backward) and the
 *     constructor, listed in engine/meson.build (and its keys in
 *     engine/MODEL_FORMAT.md);
 *  3. one line in engine/layers/registry.c.
 * Nothing else switches on the kind. A layer whose input is not f32 (token
 * ids: STK_DTYPE_I64) sets its output's dtype in infer and reads its
 * input's; per-sample sequence lengths, when a forward has them, are in
 * the model (m->lengths, host, and m->lengths_dev, device memory). */
#ifndef STOKER_ENGINE_LAYER_H
#define STOKER_ENGINE_LAYER_H

#include "model.h"

#include <stddef.h>

/* How a model-file key fills the desc. */
typedef enum stk__key_type {
    STK__KEY_INT = 1,  /* int64_t at off */
    STK__KEY_PAIR,     /* "3" or "3,5": int64_t at off (h) and off2 (w) */
    STK__KEY_FLOAT,    /* float at off */
    STK__KEY_BOOL,     /* int at off: 0/1/true/false/yes/no */
    STK__KEY_POS_INT,  /* int64_t at off, >= 1 */
    STK__KEY_SHAPE     /* C[,H,W]: in_c, in_h, in_w */
} stk__key_type_t;

typedef struct stk__layer_key {
    const char *key;
    stk__key_type_t type;
    size_t off, off2; /* offsetof(stk_layer_desc_t, ...) */
} stk__layer_key_t;

/* Where a layer's output layout comes from (see model.c's layouts). */
typedef enum stk__fmt_rule {
    STK__FMT_KEEP = 0,   /* its first input's */
    STK__FMT_PLAIN,      /* always plain NCHW / (N, features) */
    STK__FMT_BLOCKED8,   /* blocked when its channels are a multiple of 8 */
    STK__FMT_PLAIN_GRAPH /* plain, and it makes the whole graph plain */
} stk__fmt_rule_t;

/* Slots get the model and the layer's index i (m->layers[i]); where says
 * "line N (kind 'name')" for messages. Optional slots may be NULL. */
typedef struct stk__layer_class {
    stk_layer_kind_t kind;
    const char *name;     /* model-file name, also stk_layer_kind_name */
    int n_inputs;         /* 0 (the input layer), 1 or 2 */
    int is_loss;          /* consumes targets, last layer, no output gradient */
    int counts_batches;   /* keeps num_batches_tracked in the state (BN) */
    stk__fmt_rule_t fmt;
    /* Model-file keys besides name / input / inputs; { NULL } ends. */
    const stk__layer_key_t *keys;
    const char *required; /* a key a model file must give, or NULL */

    /* Fills the kind's defaults (PyTorch's) into d; d->kind is set and
     * the rest zeroed before. Optional. */
    void (*defaults)(stk_layer_desc_t *d);
    /* Checks what needs no shapes (STK_ECONFIG "where: key 'k': ..."). */
    int (*check)(const stk_layer_desc_t *d, const char *where);
    /* Output shape (l->c, h, w: preset to the first input's, as are in_c,
     * in_h, in_w, rf, jump, flat, dtype), receptive field, flat, alias.
     * STK_ESHAPE / STK_ECONFIG naming the key. Optional (keeps the
     * input's shape). */
    int (*infer)(stk_model_t *m, int i, const char *where);
    /* After layouts: fusions and conversions that depend on them. */
    void (*after_layout)(stk_model_t *m, int i);
    /* Declares parameters and buffers in order with stk__declare_param /
     * stk__declare_buffer (their names are PyTorch's). */
    int (*params)(stk_model_t *m, int i);
    /* Initial values into host copies of the arenas (indexed by the
     * tensors' offsets); random: PyTorch's default init, else zeros where
     * PyTorch draws. */
    void (*init)(stk_model_t *m, int i, float *params, float *buffers, int random);
    /* Bytes of per-layer device memory kept from forward to backward for
     * a batch of n (batch statistics, softmax); 0 or NULL: none. */
    size_t (*extra_bytes)(const stk_model_t *m, int i, int64_t n);
    /* Builds the backend plan for a batch of n into *plan. */
    int (*plan)(stk_model_t *m, int i, int64_t n, void **plan);
    /* Releases a plan made by plan (NULL-safe). NULL: op_destroy. */
    void (*unplan)(stk_model_t *m, int i, void *plan);
    int (*forward)(stk_model_t *m, int i);
    /* NULL: no gradient flows through (the input). */
    int (*backward)(stk_model_t *m, int i);
} stk__layer_class_t;

/* The registry (layers/registry.c): the class of kind, or NULL. */
const stk__layer_class_t *stk__layer_class(stk_layer_kind_t kind);

/* ------------------------------------------------- helpers for layer files */

/* Sizes past these are mistakes, and keep every size product in int64. */
#define STK__MAX_DIM (1 << 20)
#define STK__MAX_KERNEL 1024
#define STK__MAX_SAMPLE_ELEMS ((int64_t)1 << 31)

#define STK__BAD_KEY(where, key, fmt, ...) \
    stk__error(STK_ECONFIG, "%s: key '%s': " fmt, where, key, ##__VA_ARGS__)

/* Output size of a convolution or pooling along one dimension; 0 when the
 * dilated kernel does not fit. */
int64_t stk__out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d);

/* Layer i's input k, its output y, and element counts for this batch. */
const stk__layer_t *stk__input(const stk_model_t *m, int i, int k);
size_t stk__numel(const stk_model_t *m, const stk__layer_t *l);
/* The backend plan of layer i for the current batch. */
static inline void *stk__plan(const stk_model_t *m, int i)
{
    return m->layers[i].plan;
}

/* Declares the next parameter (buffer) of layer i, named "<layer>.<suffix>";
 * a layer's tensors are declared together, so they are contiguous. */
int stk__declare_param(stk_model_t *m, int i, const char *suffix, int kind, int ndim, const int64_t *shape);
int stk__declare_buffer(stk_model_t *m, int i, const char *suffix, int kind, int ndim, const int64_t *shape);
/* Layer l's k-th parameter in the parameter / gradient arena, its k-th
 * buffer; NULL when it has no k-th. */
float *stk__param(const stk_model_t *m, const stk__layer_t *l, int k);
float *stk__grad(const stk_model_t *m, const stk__layer_t *l, int k);
float *stk__buffer(const stk_model_t *m, const stk__layer_t *l, int k);
size_t stk__param_count(const stk_model_t *m, const stk__layer_t *l, int k);
const stk_param_info_t *stk__param_info(const stk_model_t *m, const stk__layer_t *l, int k);
const stk_param_info_t *stk__buffer_info(const stk_model_t *m, const stk__layer_t *l, int k);

/* PyTorch's default for a weight [out, fan_in...] and its bias (params 0
 * and 1 of layer i): U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming-uniform
 * with a = sqrt(5)), drawn from (seed, layer, tensor). */
void stk__init_fan_in(stk_model_t *m, int i, float *params);

/* Backward: where the gradient for layer i's input k goes. The input's dy
 * when nothing wrote it yet in this backward, else scratch (*acc = 1) to be
 * added by stk__dx_finish. NULL when no gradient is wanted (the graph
 * input). */
float *stk__dx_target(stk_model_t *m, int i, int k, int *acc);
void stk__dx_finish(stk_model_t *m, int i, int k, float *dx, int acc);
/* The input's real dy and whether it already holds a value (for a layer
 * that adds into it itself, as concat); marks it written. NULL as above. */
float *stk__dx_direct(stk_model_t *m, int i, int k, int *acc);
/* Where parameter k's gradient goes: the arena right after zero_grad,
 * else scratch (then stk__grad_finish adds it in). */
float *stk__grad_target(stk_model_t *m, const stk__layer_t *l, int k);
void stk__grad_finish(stk_model_t *m, const stk__layer_t *l, int k, float *g);

/* -EINVAL naming the sample when a label is outside [0, classes); what
 * prefixes the message. */
int stk__check_labels(const stk_model_t *m, const int64_t *labels, int64_t n, const char *what);

#endif
