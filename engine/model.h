/* SPDX-License-Identifier: MIT */
/* The model's insides, shared by the engine's files (graph, parser, state,
 * summary): layers with their shapes, activations and arena slices. */
#ifndef STOKER_ENGINE_MODEL_H
#define STOKER_ENGINE_MODEL_H

#include "backend.h"
#include "bn_sync.h"

typedef struct stk__layer_class stk__layer_class_t; /* layer.h */

typedef struct stk__layer {
    const stk__layer_class_t *cls; /* what the kind does (layer.h) */
    stk_layer_desc_t d;     /* d.name and d.inputs point at the copies below */
    char *name;
    char *in_name[2];
    int line;               /* model-file line; 0 from the builder API */
    int in[2], nin;         /* input layer indices */
    int64_t c, h, w;        /* output shape of one sample */
    int64_t in_c, in_h, in_w; /* input shape of one sample (first input) */
    stk_dtype_t dtype;      /* of y (f32 but for inputs of token ids) */
    int alias;              /* y and dy are the input's (flatten, fused relu) */
    int fmt;                /* stk__layout_t of y and dy */
    int flat;               /* features, not an image: printed as [N, C] */
    int seq;                /* a sequence: N x T x F, T = c, F = w, h = 1 */
    int fused;              /* batchnorm: applies the next relu; relu: done by the batchnorm */
    int root;               /* the layer whose buffers y/dy really are */
    /* Eval-mode fusion of a convolution with the batchnorm (and its fused
     * relu) it alone feeds (layers/conv.c): fuse_bn, on the convolution,
     * and fuse_conv, on the batchnorm, index each other (0: not a
     * chain); fuse_ran, on the convolution: the last forward ran the
     * fused op, so its own y was not written and the batchnorm did
     * nothing; fuse_why: why the current plan could not fuse (NULL:
     * it did, or it was not tried yet). */
    int fuse_bn, fuse_conv, fuse_ran;
    char *fuse_why;
    float *y, *dy;          /* [batch, c, h, w], sized for the largest batch planned */
    void *extra;            /* the class's extra_bytes, kept from forward to backward */
    void *plan;             /* the class's plan for the current batch size */
    int param0, nparam;     /* its parameters: pinfo[param0 .. param0 + nparam) */
    int buffer0, nbuffer;   /* its buffers: binfo[buffer0 ..) */
    int64_t num_batches_tracked;
    int64_t rf, jump;       /* receptive field and jump (input pixels) */
    uint64_t fcalls, bcalls;
    double fsec, bsec;
} stk__layer_t;

typedef struct stk__prof stk__prof_t;

struct stk_model_builder {
    stk__layer_t *layers;
    int n, cap;
};

typedef struct stk__tensor_info {
    stk_param_info_t info;
    char *name;
} stk__tensor_info_t;

/* A plan for one batch size: each layer's backend plan (NULL where the
 * layer needs none). Kept in a small cache (model.c), so that alternating
 * sizes (the short last batch of an epoch) plan once each. */
typedef struct stk__plan {
    int64_t batch;         /* 0: the slot is free */
    void **layer;          /* [nl] */
    uint64_t used;         /* the forward count when last used (eviction) */
} stk__plan_t;

#define STK__MAX_PLANS STK_MODEL_PLANS

/* A captured training step (engine/graph.c), valid while the model's
 * memory layout is that of generation gen: batch, input buffer and
 * optimizer as when it was captured. seen: steps taken with this key
 * (the first is the warm-up, run as usual). */
typedef struct stk__graph {
    int64_t batch;
    const void *input;
    const void *opt;
    float loss_scale;
    uint64_t gen;
    void *exec;   /* the backend's graph; NULL: not captured yet */
    int seen;
    uint64_t used; /* graph_clock when last used (eviction) */
} stk__graph_t;

#define STK__MAX_GRAPHS 4

struct stk_model {
    stk__backend_t be;
    stk_device_t device;
    stk__layer_t *layers;
    int nl;
    int64_t batch;         /* the batch size of the current plan */
    stk__plan_t plans[STK__MAX_PLANS];
    int cur_plan;          /* index into plans, -1 before the first */
    uint64_t plan_clock;   /* ticks once per plan selection */
    uint64_t plans_made;   /* plans built in the model's life (tests) */
    int64_t act_batch;     /* activations (y, dy, extra, scratch) hold this many samples */
    float *params, *grads, *buffers;
    size_t np, nb;
    stk__tensor_info_t *pinfo, *binfo;
    size_t npinfo, nbinfo;
    float *act_scratch, *param_scratch;
    float *view_buf;       /* stk_model_output: plain copies of blocked outputs */
    size_t act_scratch_n, param_scratch_n;
    int *written;          /* backward: dy of layer i holds a value */
    int train, profiling, grads_zero, threads;
    int fusion;            /* eval-mode conv + batchnorm fusion allowed (stk_model_set_fusion) */
    int input_grad;        /* stk__model_backward_input: the input's dy is wanted */
    int fwd_state;         /* 0 none, 1 forward without targets, 2 with, 3 backward done */
    const float *input;
    const int64_t *labels;  /* the caller's (host) labels of the last forward */
    const float *soft;      /* the caller's (host) soft targets */
    const int64_t *labels_dev; /* the same on the device: the caller's with host_memory, else staged */
    const float *soft_dev;
    int64_t *labels_stage;  /* device buffers for staging, act_batch (not with host_memory) */
    float *soft_stage;
    /* Device block the loss layer and the counters write into; read back
     * with one download per forward: float loss at 0, i64 correct at 8. */
    unsigned char *stats;
    int64_t correct;        /* top-1 count of the last forward with labels */
    int correct_valid;
    float loss_scale;
    stk_precision_t precision; /* what the backend computes (set_precision) */
    uint64_t seed;
    uint64_t step;          /* what the next training forward uses */
    uint64_t fwd_step;      /* what the last forward used (backward's dropout) */
    stk_grad_ready_fn hook;
    void *hook_user;
    /* Synchronized batch normalization (bn_sync.h): on when bn_sync.size
     * > 0; bn_sync_buf (host) holds one layer's exchange, the gathered
     * figures of every rank and this rank's. */
    stk__bn_sync_t bn_sync;
    double *bn_sync_buf;
    /* Sequences: the last forward's padded length (the caller's, <= the
     * input's T) and each sample's valid steps (host, and device memory). */
    int64_t steps;
    const int64_t *lengths, *lengths_dev;
    int64_t *lengths_buf;  /* host, act_batch: the lengths when the caller gave none */
    int64_t *lengths_stage; /* device, act_batch (not with host_memory) */
    void *input_pad;       /* device, act_batch: a sequence input of t < T steps, padded to T */
    int loss_per_step;     /* the loss is over a sequence: it checks, stages and counts its targets */
    int64_t loss_count;    /* targets the last forward's loss averaged over */
    int loss_layer;        /* -1 when none */
    int logits_layer;      /* the layer feeding the loss, or the last */
    /* Whole training steps as device graphs (engine/graph.c). graph_gen
     * changes whenever memory a captured step refers to may move (a plan
     * freed, activations reallocated, an optimizer destroyed or its state
     * replaced); graph_phase is 1 while a step is captured and 2 while a
     * replay is prepared (forward then neither stages targets nor reads
     * the loss back: the caller does, around the graph). */
    int graph_on;
    int graph_phase;
    uint64_t graph_gen, graph_clock;
    uint64_t graph_replays, graph_captures;
    stk__graph_t graphs[STK__MAX_GRAPHS];
    stk__backend_iface_t graph_prep; /* the iface a replay is prepared with */
    stk__prof_t *prof;     /* per-layer timing (engine/profile.c); NULL until profiling starts */
};

/* engine/profile.c: per-layer timing. _set turns it on or off (making
 * the timer marks the first time); _timing says whether this pass is
 * timed; a pass is _pass_begin, then per layer _layer_begin / _layer_end
 * (t0: the host clock's start, when the host clock is used), then
 * _pass_end (bwd: 0 forward, 1 backward). _settle reads the device times
 * of the passes recorded so far (waits for them); _reset drops them and
 * the totals; _free at destroy. */
void stk__prof_set(stk_model_t *m, int on);
int stk__prof_timing(const stk_model_t *m);
int stk__prof_pass_begin(stk_model_t *m, int bwd);
int stk__prof_layer_begin(stk_model_t *m, int bwd, int layer, double *t0);
int stk__prof_layer_end(stk_model_t *m, int bwd, int layer, double t0);
void stk__prof_pass_end(stk_model_t *m, int bwd);
int stk__prof_settle(const stk_model_t *m);
void stk__prof_reset(stk_model_t *m);
void stk__prof_free(stk_model_t *m);

/* engine/graph.c: frees the model's graphs. */
void stk__graphs_free(stk_model_t *m);

/* safetensors reading, shared by the state loader and the tests. */
#define STK__ST_META_MAX 2048
typedef struct stk__st_entry {
    char name[160];
    char dtype[8];
    int ndim;
    int64_t shape[8];
    int64_t begin, end; /* byte offsets into data */
    int used;
} stk__st_entry_t;

typedef struct stk__st_file {
    stk__st_entry_t *entries;
    size_t n;
    struct {
        char key[64];
        char value[STK__ST_META_MAX];
    } meta[8];
    size_t nmeta;
    const unsigned char *data; /* points into the caller's buffer */
    size_t data_len;
} stk__st_file_t;

/* Parses a safetensors blob (not copied: f points into buf). STK_EFORMAT
 * names what is wrong. */
int stk__safetensors_parse(const void *buf, size_t len, stk__st_file_t *f);
void stk__safetensors_free(stk__st_file_t *f);
const stk__st_entry_t *stk__safetensors_find(const stk__st_file_t *f, const char *name);
const char *stk__safetensors_meta(const stk__st_file_t *f, const char *key);

/* Backward for tests: dy_out is the upstream gradient of the last layer
 * (NULL when the last layer is the loss) and dx_input receives the
 * gradient of the graph input. Parameter gradients as stk_model_backward. */
int stk__model_backward_input(stk_model_t *m, const float *dy_out, float *dx_input);

/* Appends a copy of desc with its model-file line to the builder. */
int stk__builder_add_line(stk_model_builder_t *b, const stk_layer_desc_t *desc, int line);
void stk__layer_free_strings(stk__layer_t *l);
/* Index of the last layer named name among layers[0..n), or -1. */
int stk__find_layer(const stk__layer_t *layers, int n, const char *name);
/* "line N: " or "layer 'name': " prefix for messages about layer l. */
const char *stk__layer_where(const stk__layer_t *l, char *buf, size_t cap);

#endif
