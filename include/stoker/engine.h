/* SPDX-License-Identifier: MIT */
/* Stoker training engine: tensors, a graph of layers built once (from a C
 * builder or a model file), forward, loss, backward into one flat gradient
 * arena, parameters in one flat arena, state save/load by name (safetensors),
 * summary and per-layer timing. Backends (CPU: oneDNN; CUDA later) sit
 * behind an internal interface: nothing here names a vendor type. */
#ifndef STOKER_ENGINE_H
#define STOKER_ENGINE_H

#include "stoker/common.h"

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- tensors */

#define STK_TENSOR_MAX_DIMS 4

typedef enum stk_device {
    STK_DEVICE_CPU = 0,
    STK_DEVICE_CUDA = 1
} stk_device_t;

/* A view of memory the caller (or a model) owns: a tensor never owns or
 * copies its data. Images are NCHW. Strides are in elements. */
typedef struct stk_tensor {
    void *data;
    stk_dtype_t dtype;
    stk_device_t device;
    int ndim;
    int64_t shape[STK_TENSOR_MAX_DIMS];
    int64_t stride[STK_TENSOR_MAX_DIMS];
    /* A batch of padded sequences (dim 0 the batch, dim 1 the steps):
     * lengths[i] is sample i's valid steps, the rest is padding (host
     * memory, shape[0] entries, not owned). NULL: every step is valid.
     * stk_tensor_init sets NULL; reshape keeps it, narrow along dim 0 keeps
     * the narrowed samples' lengths. */
    const int64_t *lengths;
} stk_tensor_t;

/* Describes contiguous (row-major) memory at data. Returns 0, or -EINVAL
 * for ndim outside 1..STK_TENSOR_MAX_DIMS, a negative dimension or an
 * invalid dtype. Does not allocate. */
STK_API int stk_tensor_init(stk_tensor_t *t, void *data, stk_dtype_t dtype, int ndim, const int64_t *shape);
/* Elements described by the shape (product of dimensions). */
STK_API int64_t stk_tensor_numel(const stk_tensor_t *t);
/* 1 when the strides are those of a row-major contiguous tensor. */
STK_API int stk_tensor_is_contiguous(const stk_tensor_t *t);
/* out = t narrowed along dim to [start, start + len): same memory, no copy.
 * -EINVAL for a bad dim, STK_ESHAPE when the range leaves the tensor. */
STK_API int stk_tensor_narrow(stk_tensor_t *out, const stk_tensor_t *t, int dim, int64_t start, int64_t len);
/* out = t with a new shape of the same element count; t must be
 * contiguous (STK_ESTATE otherwise, STK_ESHAPE when counts differ). */
STK_API int stk_tensor_reshape(stk_tensor_t *out, const stk_tensor_t *t, int ndim, const int64_t *shape);

/* ----------------------------------------------------------------- layers */

typedef enum stk_layer_kind {
    STK_LAYER_INVALID = 0,
    STK_LAYER_INPUT,       /* the graph's input, C x H x W (or features) */
    STK_LAYER_CONV2D,
    STK_LAYER_BATCHNORM2D,
    STK_LAYER_RELU,
    STK_LAYER_LEAKY_RELU,
    STK_LAYER_GELU,        /* exact (erf) form, as torch.nn.GELU() */
    STK_LAYER_SIGMOID,
    STK_LAYER_TANH,
    STK_LAYER_MAXPOOL2D,
    STK_LAYER_AVGPOOL2D,   /* count_include_pad = true, as PyTorch's default */
    STK_LAYER_GLOBAL_AVGPOOL, /* N x C x H x W -> N x C x 1 x 1 */
    STK_LAYER_LINEAR,
    STK_LAYER_DROPOUT,
    STK_LAYER_FLATTEN,     /* N x C x H x W -> N x (C*H*W), no copy */
    STK_LAYER_ADD,         /* two inputs of the same shape */
    STK_LAYER_CONCAT,      /* two inputs, along channels */
    STK_LAYER_CROSS_ENTROPY, /* softmax + cross-entropy, mean over the batch */
    STK_LAYER_EMBEDDING,   /* token ids -> vectors, as torch.nn.Embedding */
    STK_LAYER_LSTM,        /* torch.nn.LSTM(batch_first=True) over a sequence */
    STK_LAYER_GRU,         /* torch.nn.GRU(batch_first=True) */
    STK_LAYER_SEQ_LAST,    /* N x T x F -> N x F: each sequence's last valid step */
    STK_LAYER_SEQ_MEAN,    /* N x T x F -> N x F: mean over each sequence's valid steps */
    STK_LAYER_KIND_COUNT
} stk_layer_kind_t;

/* Model-file name of a kind ("conv2d", "batchnorm2d", ...); "invalid"
 * otherwise. */
STK_API const char *stk_layer_kind_name(stk_layer_kind_t kind);
/* Inverse of stk_layer_kind_name; STK_LAYER_INVALID if unknown. */
STK_API stk_layer_kind_t stk_layer_kind_from_name(const char *name);

/* One layer for the builder: a constructor below gives the common case,
 * with every other field at its default (PyTorch's); set more fields after
 * it when needed (dilation, groups, bias = 0, eps...). A kind reads only
 * the fields marked with its name; strings are copied by
 * stk_model_builder_add. Model files (engine/MODEL_FORMAT.md) name the
 * same settings with the same defaults. */
typedef struct stk_layer_desc {
    stk_layer_kind_t kind;
    const char *name;       /* unique; NULL: "<kind><n>", e.g. "conv2d3".
                             * Parameters are named "<name>.weight" etc.,
                             * as PyTorch names a module's */
    const char *inputs[2];  /* names of earlier layers; NULL: the previous
                             * layer (add and concat need inputs[1]) */
    /* input: the shape of one sample (c, h, w), h = w = 1 (default) for
     * features; conv2d, batchnorm2d, linear: in_c > 0 declares the input's
     * channels / features and is checked (default 0: taken as it comes) */
    int64_t in_c, in_h, in_w;
    /* conv2d: out channels; linear: out features (required) */
    int64_t out;
    /* conv2d, maxpool2d, avgpool2d:
     *   kernel:   conv2d 3x3, pools 2x2 by default
     *   stride:   conv2d 1; pools 0, meaning the kernel size (PyTorch's None)
     *   pad:      0, on both sides (pools: at most half the kernel)
     *   dilation: conv2d only, 1 = dense
     *   groups:   conv2d only, 1; divides in and out channels */
    int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups;
    int bias;               /* conv2d, linear: 1 (default) or 0 */
    float eps;              /* batchnorm2d: 1e-5 */
    float momentum;         /* batchnorm2d: 0.1, PyTorch's convention */
    float negative_slope;   /* leaky_relu: 0.01 */
    float p;                /* dropout: drop probability, 0.5 */
    float label_smoothing;  /* cross_entropy: 0 */
    /* Sequences (engine/MODEL_FORMAT.md). A sequence is N x T x F (T
     * steps of F features; in the C, H, W of a layer: T, 1, F), padded,
     * with the valid steps of each sample given by the forward's lengths.
     * input: steps = T makes the input a sequence: of in_c features per
     * step (f32), or with tokens = 1 of token ids (i64 N x T). 0: not a
     * sequence. */
    int64_t steps;
    int tokens;
    int64_t vocab;          /* embedding: rows of the table (num_embeddings); out = dim */
    int64_t padding_idx;    /* embedding: a row kept at zero that gets no gradient; -1 (default): none */
    int64_t num_layers;     /* lstm, gru: 1; out = hidden size; p = dropout between layers (0) */
    int bidirectional;      /* lstm, gru: 0 */
    int64_t ignore_index;   /* cross_entropy over a sequence: targets equal to it are skipped (-100) */
} stk_layer_desc_t;

/* Fills *d with the defaults of kind, as documented on each field, kind
 * set, no name, no inputs. NULL-safe. */
STK_API void stk_layer_desc_default(stk_layer_desc_t *d, stk_layer_kind_t kind);

/* Constructors, one per kind: its defaults plus its usual settings (a
 * square kernel, stride and padding). name may be NULL (see the name
 * field); a and b name the two inputs of add and concat. For instance
 *     stk_layer_desc_t conv = stk_layer_conv2d("conv1", 32, 3, 1, 1);
 *     conv.dilation_h = conv.dilation_w = 2;
 *     rc = stk_model_builder_add(b, &conv);
 * They check nothing: stk_model_builder_add does. Thread-safe. */
STK_API stk_layer_desc_t stk_layer_input(const char *name, int64_t c, int64_t h, int64_t w);
STK_API stk_layer_desc_t stk_layer_conv2d(const char *name, int64_t out, int64_t kernel, int64_t stride,
                                          int64_t pad);
STK_API stk_layer_desc_t stk_layer_batchnorm2d(const char *name);
STK_API stk_layer_desc_t stk_layer_relu(const char *name);
STK_API stk_layer_desc_t stk_layer_leaky_relu(const char *name, float negative_slope);
STK_API stk_layer_desc_t stk_layer_gelu(const char *name);
STK_API stk_layer_desc_t stk_layer_sigmoid(const char *name);
STK_API stk_layer_desc_t stk_layer_tanh(const char *name);
/* stride 0: the kernel size. */
STK_API stk_layer_desc_t stk_layer_maxpool2d(const char *name, int64_t kernel, int64_t stride, int64_t pad);
STK_API stk_layer_desc_t stk_layer_avgpool2d(const char *name, int64_t kernel, int64_t stride, int64_t pad);
STK_API stk_layer_desc_t stk_layer_global_avgpool(const char *name);
STK_API stk_layer_desc_t stk_layer_linear(const char *name, int64_t out);
STK_API stk_layer_desc_t stk_layer_dropout(const char *name, float p);
STK_API stk_layer_desc_t stk_layer_flatten(const char *name);
STK_API stk_layer_desc_t stk_layer_add(const char *name, const char *a, const char *b);
STK_API stk_layer_desc_t stk_layer_concat(const char *name, const char *a, const char *b);
STK_API stk_layer_desc_t stk_layer_cross_entropy(const char *name, float label_smoothing);
/* Sequences: an input of steps x features f32, or of steps token ids. */
STK_API stk_layer_desc_t stk_layer_input_sequence(const char *name, int64_t steps, int64_t features);
STK_API stk_layer_desc_t stk_layer_input_tokens(const char *name, int64_t steps);
/* padding_idx -1: none. */
STK_API stk_layer_desc_t stk_layer_embedding(const char *name, int64_t vocab, int64_t dim, int64_t padding_idx);
STK_API stk_layer_desc_t stk_layer_lstm(const char *name, int64_t hidden, int64_t layers, int bidirectional,
                                        float dropout);
STK_API stk_layer_desc_t stk_layer_gru(const char *name, int64_t hidden, int64_t layers, int bidirectional,
                                       float dropout);
STK_API stk_layer_desc_t stk_layer_seq_last(const char *name);
STK_API stk_layer_desc_t stk_layer_seq_mean(const char *name);

/* ---------------------------------------------------------------- builder */

typedef struct stk_model_builder stk_model_builder_t;

/* An empty builder. Returns 0 or -ENOMEM. */
STK_API int stk_model_builder_create(stk_model_builder_t **out);
/* NULL-safe; sets *b to NULL. */
STK_API void stk_model_builder_destroy(stk_model_builder_t **b);
/* Appends a layer (copies desc and its strings). The first layer must be
 * STK_LAYER_INPUT. Checks only what needs no shapes (unknown kind,
 * duplicate name, bad numbers: STK_ECONFIG naming the layer and the key);
 * shapes are checked by stk_model_create. Not thread-safe on one builder. */
STK_API int stk_model_builder_add(stk_model_builder_t *b, const stk_layer_desc_t *desc);
/* Parses a model file's text (engine/MODEL_FORMAT.md) and appends its
 * layers. Errors are STK_ECONFIG with "line N: key 'k': ..." in the
 * message. origin names the text in messages (a path; NULL: "<string>"). */
STK_API int stk_model_builder_parse(stk_model_builder_t *b, const char *text, const char *origin);

/* ------------------------------------------------------------------ model */

typedef struct stk_model stk_model_t;

/* The arithmetic of convolutions and matrix multiplies (PyTorch's
 * allow_tf32 and autocast dtypes). FP32: IEEE single precision. TF32:
 * FP32 storage, tensor-core products with 10-bit mantissas on a GPU that
 * has them (the CPU backend computes it as FP32). BF16, FP16: as
 * autocast, convolutions and linear layers take their inputs and weights
 * rounded to the half type, accumulate in FP32 and round their outputs
 * (y, dx, dw) to it, kept in FP32 storage; the bias, batchnorm, pooling,
 * activations, the loss, LSTM/GRU stacks, the FP32 master weights and the
 * optimizer state stay FP32. An FP16 value past 65504 becomes infinite:
 * train FP16 with loss scaling (stk_train_stepper_config_t.loss_scaling).
 * On the CPU backend BF16 and FP16 are an emulation of those roundings
 * around FP32 arithmetic, for checking a recipe's numerics: slower than
 * FP32, not faster. The CUDA backend computes them in half (half inputs
 * on tensor cores, FP32 accumulation; compute capability 8.0 for BF16,
 * 7.0 for FP16, else STK_ECONFIG); not yet measured on a GPU. */
typedef enum stk_precision {
    STK_PRECISION_FP32 = 0,
    STK_PRECISION_TF32 = 1,
    STK_PRECISION_BF16 = 2,
    STK_PRECISION_FP16 = 3
} stk_precision_t;

/* "fp32", "tf32", "bf16", "fp16" ("?" for another value). */
STK_API const char *stk_precision_name(stk_precision_t p);
/* How the CUDA backend picks a cuDNN engine for each convolution
 * direction (PyTorch's cudnn.benchmark / cudnn.deterministic). The CPU
 * backend ignores it. */
typedef enum stk_cudnn_policy {
    STK_CUDNN_HEURISTIC = 0,    /* cuDNN's heuristics (mode A, then the
                                 * fallback list): the first that plans */
    STK_CUDNN_BENCHMARK = 1,    /* time the candidates once per problem
                                 * (shape, strides, padding, dilation,
                                 * groups, dtype, layout, GPU), keep the
                                 * fastest in a process-wide cache */
    STK_CUDNN_DETERMINISTIC = 2 /* heuristics order, engines with cuDNN's
                                 * non-deterministic note skipped: a run
                                 * repeats bit for bit */
} stk_cudnn_policy_t;

/* "heuristic", "benchmark", "deterministic" ("?" for another value). */
STK_API const char *stk_cudnn_policy_name(stk_cudnn_policy_t p);
/* Parses one of those names into *out: 0, or STK_ECONFIG naming s. */
STK_API int stk_cudnn_policy_parse(const char *s, stk_cudnn_policy_t *out);

typedef struct stk_model_config {
    int64_t batch_size;   /* the batch planned at create; a forward with
                           * another size plans it once (see
                           * stk_model_set_batch_size). Default 32 */
    uint64_t seed;        /* parameter init and dropout masks. Default 0 */
    int threads;          /* backend threads; 0 (default): the CPUs this
                           * process may use (stk_engine_cpu_count), or
                           * OpenMP's own count when OMP_NUM_THREADS is set */
    stk_device_t device;  /* STK_DEVICE_CPU (default) */
    int device_index;     /* STK_DEVICE_CUDA: which of the visible GPUs
                           * (cuda:N); -1 (default): the calling thread's
                           * current one (cudaSetDevice's, so a
                           * communicator's choice; else GPU 0) */
    int init_params;      /* 1 (default): PyTorch default init from seed;
                           * 0: parameters start at zero */
    stk_precision_t precision; /* STK_PRECISION_FP32 (default); see
                                * stk_model_precision for what is used */
    /* CUDA only (the CPU backend ignores these three). */
    stk_cudnn_policy_t cudnn_policy;  /* default STK_CUDNN_HEURISTIC */
    uint64_t cudnn_workspace_limit;   /* bytes one convolution direction may
                                       * use; engines needing more are
                                       * skipped. 0 (default): no limit */
    const char *cudnn_cache_path;     /* benchmark policy: a file the cache
                                       * is read from at create (missing:
                                       * fine; unreadable, corrupt or for
                                       * another cuDNN: a warning through the
                                       * logger, and it is rewritten) and
                                       * saved to, atomically, whenever a
                                       * problem was timed. NULL (default):
                                       * none. Copied by stk_model_create */
    int no_fusion;        /* 1: never fuse (stk_model_set_fusion). The
                           * environment variable STK_NO_FUSION=1 does the
                           * same. Default 0 */
} stk_model_config_t;

/* Fills *cfg with the defaults documented on each field. NULL-safe. Like
 * every *_config_default of Stoker, it fills a struct the caller owns. */
STK_API void stk_model_config_default(stk_model_config_t *cfg);

/* Builds the graph: checks shapes (STK_ECONFIG / STK_ESHAPE naming the
 * line when the layer came from a file, and the key), allocates the
 * parameter and gradient arenas (one allocation each) and activations,
 * creates the backend's primitives, and initializes parameters. The
 * builder is not needed afterwards. The model starts in training mode.
 * Returns 0, STK_ECONFIG, STK_ESHAPE, -ENOMEM, STK_EBACKEND (with the
 * backend's message) or STK_EDEVICE (device not available). */
STK_API int stk_model_create(stk_model_t **out, const stk_model_builder_t *b, const stk_model_config_t *cfg);
/* Reads and parses a model file, then stk_model_create: its codes, plus
 * -errno when the file cannot be read (the message names the path) and
 * -EINVAL for NULL. */
STK_API int stk_model_create_from_file(stk_model_t **out, const char *path, const stk_model_config_t *cfg);
/* NULL-safe; sets *m to NULL. */
STK_API void stk_model_destroy(stk_model_t **m);

/* A model is not thread-safe: one thread at a time may call any function
 * taking it. Different models may be used from different threads. */

/* The engine-choice counters of a model's convolution plans (CUDA; all
 * zero on the CPU). A lookup is one plan made under the benchmark policy:
 * a hit found its problem in the process-wide cache (timed earlier, by
 * any model of the process, or read from the cache file); a miss timed
 * the candidates. Plans are made when a batch size is planned (and once
 * for misaligned activations), so a step that plans nothing counts
 * nothing. */
typedef struct stk_algo_stats {
    uint64_t plans;     /* convolution plans made, any policy */
    uint64_t hits;      /* benchmark: found in the cache */
    uint64_t misses;    /* benchmark: timed */
    uint64_t timed;     /* benchmark: candidate engines timed */
    uint64_t skipped;   /* candidates the policy or workspace limit refused */
} stk_algo_stats_t;
/* Fills *out for m. 0, or -EINVAL for NULL. */
STK_API int stk_model_algo_stats(const stk_model_t *m, stk_algo_stats_t *out);

/* Shape of the input batch: shape[0] = planned batch, then C, H, W. */
STK_API void stk_model_input_shape(const stk_model_t *m, int64_t shape[4]);
/* A sequence input's steps T (the input layer's steps=T), 0 for an input
 * that is not a sequence; its element type: f32, or i64 for token ids. */
STK_API int64_t stk_model_input_steps(const stk_model_t *m);
STK_API stk_dtype_t stk_model_input_dtype(const stk_model_t *m);
/* Classes (logits per sample, or per step of a sequence) of the loss
 * layer; 0 when there is none. */
STK_API int64_t stk_model_num_classes(const stk_model_t *m);
/* Makes batch the current size. A model plans each batch size once (the
 * backend's primitives: about 100 ms with oneDNN) and keeps the plans of
 * the last STK_MODEL_PLANS sizes it used, so alternating sizes (a short last
 * batch, evaluation at another size) plan once each; activations are
 * shared by the plans, sized for the largest batch. Forward calls this
 * itself. Parameters, gradients and buffers are kept. 0, -EINVAL (batch < 1
 * or > 2^20), -ENOMEM, STK_EBACKEND. */
#define STK_MODEL_PLANS 4
STK_API int stk_model_set_batch_size(stk_model_t *m, int64_t batch);
STK_API int64_t stk_model_batch_size(const stk_model_t *m);

/* Training mode (1): batchnorm uses batch statistics and updates its
 * running stats, dropout drops. Evaluation mode (0): running stats, no
 * dropout. */
STK_API void stk_model_set_train(stk_model_t *m, int train);
STK_API int stk_model_is_train(const stk_model_t *m);

/* Eval-mode fusion (on by default): in eval mode a conv2d whose only
 * consumer is a batchnorm2d runs with it, and with the relu fused into
 * that batchnorm, as one backend op (oneDNN post-ops on the CPU, a cuDNN
 * fused graph on CUDA), the running statistics folded into a per-channel
 * scale and shift at every forward. Training is never fused. Fused
 * output equals the unfused one within float rounding, not bitwise; the
 * convolution's own output is then not computed (stk_model_output on it
 * fails with STK_ESTATE). A backend that cannot fuse a chain runs it
 * unfused (the summary says which and why). Off: every layer runs by
 * itself, as in training. */
STK_API void stk_model_set_fusion(stk_model_t *m, int on);
STK_API int stk_model_fusion(const stk_model_t *m);
typedef struct stk_fusion_stats {
    int chains;    /* conv2d -> batchnorm2d pairs that may fuse in eval */
    int fused;     /* of those, ran fused in the last forward */
    int fallbacks; /* of those, the backend could not fuse in the current plan */
} stk_fusion_stats_t;
/* 0 or -EINVAL (NULL). */
STK_API int stk_model_fusion_stats(const stk_model_t *m, stk_fusion_stats_t *out);

/* Dropout masks are a pure function of (seed, step, layer, element): the
 * same step gives the same mask, whatever the thread count. The model
 * counts its own steps: every forward in training mode uses the current
 * step and then advances it by one (backward uses the step of its
 * forward), so consecutive training forwards draw new masks with no help
 * from the caller; evaluation forwards neither use nor advance it. The
 * step starts at 0. stk_model_set_step sets the step the next training
 * forward uses (resume, or replaying a forward); stk_model_step reads it
 * (save it with a checkpoint). "element" is the position in the layer's
 * memory: NCHW order for features and for images the backend keeps plain;
 * a backend that keeps an image in a blocked layout draws in that order
 * (same step, same mask still). */
STK_API void stk_model_set_step(stk_model_t *m, uint64_t step);
STK_API uint64_t stk_model_step(const stk_model_t *m);
STK_API void stk_model_set_seed(stk_model_t *m, uint64_t seed);

/* Backend thread count for this model's work (oneDNN on CPU uses OpenMP:
 * this sets the OpenMP thread count of the calling thread before each
 * forward/backward). 0: leave as is. Returns 0 or -EINVAL. */
STK_API int stk_model_set_threads(stk_model_t *m, int threads);
/* The backend's current maximum thread count. */
STK_API int stk_model_threads(const stk_model_t *m);

/* The factor dL/dlogits is multiplied by in backward (default 1). For
 * gradient accumulation over k micro-batches set 1/k, so the accumulated
 * gradient is that of the mean loss. The loss value reported by forward
 * is not scaled. */
STK_API void stk_model_set_loss_scale(stk_model_t *m, float scale);

/* Multiplies every gradient by inv_scale (a float multiply, as PyTorch's
 * GradScaler unscales) and sets *nonfinite to 1 when any gradient was NaN
 * or infinite before, else 0: the check of dynamic loss scaling, done
 * where the gradients are (on a GPU: one flag read back). Returns 0,
 * -EINVAL, or the backend's error. */
STK_API int stk_model_unscale_grads(stk_model_t *m, float inv_scale, int *nonfinite);

/* Whether stk_model_train_step may capture a step as a CUDA graph and
 * replay it (on: 1; the default on a backend that has graphs). Off frees
 * any graph already captured. Ignored by backends without graphs.
 * Returns 0 or -EINVAL (NULL). */
STK_API int stk_model_set_cuda_graph(stk_model_t *m, int on);
/* 1 when stk_model_train_step may use graphs (on, and the backend has
 * them), else 0; *captures and *replays (may be NULL): graphs captured
 * and replayed so far. */
STK_API int stk_model_cuda_graph(const stk_model_t *m, uint64_t *captures, uint64_t *replays);

/* The precision the model computes in: the configured one, or FP32 where
 * the backend computes TF32 as FP32 (the CPU). */
STK_API stk_precision_t stk_model_precision(const stk_model_t *m);

/* Forward pass over batch samples at input (f32, NCHW, contiguous, on the
 * model's device; any batch from 1 to 2^20: see stk_model_set_batch_size).
 * With labels
 * (batch i64 class indices) or soft_targets (batch x classes f32 rows, each
 * a distribution, e.g. from mixup), the loss (mean over the batch) is
 * written to *loss and backward may follow; with neither, only the logits
 * are computed (loss may be NULL). Input and targets are read during the
 * call and (for backward) kept by pointer until the next forward: do not
 * free or change them before backward returns.
 * Returns 0, -EINVAL (bad arguments, label out of range: the message names
 * the sample), or a backend error. */
STK_API int stk_model_forward(stk_model_t *m, const float *input, int64_t batch, const int64_t *labels,
                              const float *soft_targets, float *loss);
/* The same with tensors: input f32 N x C x H x W, target i64 [N] or f32
 * [N, classes] or NULL. STK_ESHAPE / -EINVAL on mismatch.
 *
 * A sequence input (an input layer with steps = T) takes a batch of
 * padded sequences: features f32 [N, t, F] (or any shape of N x T x F
 * elements, then t = T) or token ids i64 [N, t], with t <= T and
 * input->lengths (each in [0, t]; NULL: all t). A loss over a sequence
 * takes per-step targets i64 [N, t] (host memory): steps past a sample's
 * length, and targets equal to the loss's ignore_index, are skipped, and
 * the loss is the mean over the others (stk_model_loss_count). */
STK_API int stk_model_forward_tensor(stk_model_t *m, const stk_tensor_t *input, const stk_tensor_t *target,
                                     float *loss);

/* Backward from the loss of the last forward: ADDS the parameter gradients
 * (times the loss scale) into the gradient arena, as PyTorch accumulates
 * into .grad. Requires a forward with targets in training or eval mode.
 * Returns 0, STK_ESTATE (no such forward, called twice for one forward,
 * or a layer that needs training mode: batchnorm, max pooling), -EINVAL
 * (NULL), or a backend error. */
STK_API int stk_model_backward(stk_model_t *m);
/* Sets the whole gradient arena to zero. */
STK_API void stk_model_zero_grad(stk_model_t *m);

/* Called during backward after the gradients of a layer's parameters are
 * final for this backward (offset/count in floats into the gradient arena),
 * in reverse layer order: lets a communicator start reducing early. NULL
 * clears. */
typedef void (*stk_grad_ready_fn)(size_t offset, size_t count, void *user);
STK_API void stk_model_set_grad_hook(stk_model_t *m, stk_grad_ready_fn fn, void *user);

/* The logits of the last forward (batch x classes, row-major) in the
 * model's device memory (host memory on the CPU), valid until the next
 * forward or re-plan. Returns 0 or STK_ESTATE (no forward yet). */
STK_API int stk_model_logits(const stk_model_t *m, const float **logits, int64_t *batch, int64_t *classes);
/* Copies the logits of the last forward (batch x classes floats) into host
 * memory at dst (cap floats), from any device. Returns 0, STK_ESTATE (no
 * forward yet), -ENOSPC (cap too small; nothing copied), -EINVAL (NULL), or
 * a backend error. */
STK_API int stk_model_read_logits(const stk_model_t *m, float *dst, size_t cap);
/* Top-1 accuracy of the last forward: *correct = the samples whose first
 * largest logit is at labels[i] (labels: host memory, one per sample of
 * that forward). When labels is the array given to that forward, the
 * count made during the forward is returned (no second pass, no device
 * read). Returns 0, -EINVAL (NULL, or a label outside [0, classes): the
 * message names the sample), STK_ESTATE (no forward yet, or no loss
 * layer), or a backend error. */
STK_API int stk_model_count_correct(stk_model_t *m, const int64_t *labels, int64_t *correct);
/* Top-k accuracy: samples whose label's logit is among the topk largest
 * (ties broken by index, so topk = 1 is stk_model_count_correct). topk >= 1
 * (-EINVAL otherwise); topk >= classes counts every sample. Same codes as
 * stk_model_count_correct. */
STK_API int stk_model_count_topk(stk_model_t *m, const int64_t *labels, int topk, int64_t *correct);
/* How many targets the loss of the last forward averaged over: the batch,
 * or for a loss over a sequence the steps it did not skip (weigh a mean
 * over batches by it: bits per character). 0 before a forward with
 * targets. */
STK_API int64_t stk_model_loss_count(const stk_model_t *m);
/* A view of a layer's output of the last forward (by layer name), NCHW,
 * in the model's device memory (out->device says which). Where the backend
 * keeps that output in a blocked layout, the view is of a plain copy this
 * call makes (the one copy the engine ever makes for a caller). Returns 0,
 * STK_ENOTFOUND for an unknown name, STK_ESTATE before a forward, -EINVAL
 * for NULL, or a backend error. Valid until the next forward or the next
 * call of this function. */
STK_API int stk_model_output(const stk_model_t *m, const char *layer, stk_tensor_t *out);

/* ------------------------------------------------- parameters, buffers */

typedef enum stk_param_kind {
    STK_PARAM_WEIGHT = 0,    /* conv / linear weight */
    STK_PARAM_BIAS = 1,      /* conv / linear bias */
    STK_PARAM_BN_WEIGHT = 2, /* batchnorm gamma */
    STK_PARAM_BN_BIAS = 3    /* batchnorm beta */
} stk_param_kind_t;

typedef enum stk_buffer_kind {
    STK_BUFFER_RUNNING_MEAN = 0,
    STK_BUFFER_RUNNING_VAR = 1
} stk_buffer_kind_t;

/* One named tensor inside an arena. Pointers stay valid for the model's
 * life. offset and count are in floats. */
typedef struct stk_param_info {
    const char *name;     /* "conv1.weight", "bn1.running_mean" */
    const char *layer;    /* "conv1" */
    int kind;             /* stk_param_kind_t or stk_buffer_kind_t */
    size_t offset, count;
    int ndim;
    int64_t shape[STK_TENSOR_MAX_DIMS];
} stk_param_info_t;

/* The flat arenas (floats, 64-byte aligned): parameters and gradients
 * have the same layout. Owned by the model, in its device's memory (host
 * memory on the CPU, which is where these pointers may be read and
 * written directly; on a device, use them with device code, e.g. a
 * communicator, and move values with stk_model_state_save / _load). The
 * optimizer updates the parameters in place. *count may be NULL. */
STK_API float *stk_model_params(stk_model_t *m, size_t *count);
STK_API float *stk_model_grads(stk_model_t *m, size_t *count);
/* Trainable parameter tensors, in layer order. */
STK_API size_t stk_model_num_params(const stk_model_t *m);
/* Describes parameter tensor i. 0, -ERANGE (i >= stk_model_num_params),
 * -EINVAL (NULL). */
STK_API int stk_model_param_info(const stk_model_t *m, size_t i, stk_param_info_t *info);

/* Buffers (batchnorm running statistics): a third flat arena, not
 * trainable, saved with the state. */
STK_API float *stk_model_buffers(stk_model_t *m, size_t *count);
STK_API size_t stk_model_num_buffers(const stk_model_t *m);
/* Describes buffer i. 0, -ERANGE (i >= stk_model_num_buffers), -EINVAL. */
STK_API int stk_model_buffer_info(const stk_model_t *m, size_t i, stk_param_info_t *info);

/* Finds a parameter or buffer by name; *is_buffer tells which (may be
 * NULL). 0, STK_ENOTFOUND for an unknown name, -EINVAL for NULL. */
STK_API int stk_model_find(const stk_model_t *m, const char *name, stk_param_info_t *info, int *is_buffer);

/* ------------------------------------------------------------------ state */

/* The state is every parameter and buffer by name, plus each batchnorm's
 * num_batches_tracked (i64), stored as a safetensors file: PyTorch reads
 * it with safetensors or tools/load_safetensors.py. */

/* Bytes stk_model_state_save_mem writes. */
STK_API size_t stk_model_state_size(const stk_model_t *m);
/* Writes the state into buf (cap bytes); *written gets the size. 0,
 * -ENOSPC when cap is too small (nothing written), -EINVAL (NULL), -ENOMEM,
 * or a backend error (reading device memory back). */
STK_API int stk_model_state_save_mem(const stk_model_t *m, void *buf, size_t cap, size_t *written);
/* Loads a state blob. Every parameter and buffer of the model must be
 * there with the same shape and dtype; names the model does not have are
 * an error too. STK_EFORMAT (not safetensors), STK_ENOTFOUND (missing or
 * unknown name, named in the message), STK_ESHAPE (shape, with both
 * shapes in the message). On error the model is unchanged. */
STK_API int stk_model_state_load_mem(stk_model_t *m, const void *buf, size_t len);
/* File forms: written to a temporary name and renamed. The codes of the
 * memory forms, plus -errno on I/O (the message names the path). The file
 * is safetensors: what PyTorch's safetensors.torch.load_file reads. */
STK_API int stk_model_state_save(const stk_model_t *m, const char *path);
STK_API int stk_model_state_load(stk_model_t *m, const char *path);

/* ---------------------------------------------------------------- devices */

/* Devices of a kind this build can use now: 1 for STK_DEVICE_CPU; for
 * STK_DEVICE_CUDA the GPUs visible to the process (0 without a GPU, a
 * driver, or CUDA in the build: the message says which). Thread-safe. */
STK_API int stk_device_count(stk_device_t kind);
/* One line on device index of kind, e.g. "NVIDIA H200, driver 570.86,
 * CUDA 13.0, cuDNN 9.19.0" or "CPU, 16 threads (oneDNN 2.7)", NUL-
 * terminated in buf (cap bytes, truncated to fit). Returns 0 or
 * STK_EDEVICE (no such device, the message says why), -EINVAL. */
STK_API int stk_device_describe(stk_device_t kind, int index, char *buf, size_t cap);

/* --------------------------------------------------- feeding a device
 *
 * A model on a GPU computes on device memory; its batches come from host
 * memory the loader fills. Two pieces make that cheap:
 *
 * - stk_model_pin_host / stk_model_unpin_host page-lock host memory for
 *   the model's device, once, so that copies from it are asynchronous
 *   DMA. They have the loader's pin hook signatures: set a loader's
 *   config.pin / config.unpin to them and config.pin_user to the model
 *   (and pin_no_memlock = 1), and its arena is pinned for its life. On a
 *   model whose device memory is the host's (CPU) they do nothing.
 * - a feed (stk_feed_t) copies input batches into two device buffers in
 *   turn, on a copy queue of its own, so that batch k + 1 travels while
 *   step k computes, with no wait for the whole device:
 *
 *       stk_feed_put(f, batch0, bytes, &d0);
 *       for each next batch b1:
 *           stk_feed_put(f, b1, bytes, &d1);   // copy starts now
 *           stk_feed_use(f, d0);               // the model's work waits
 *           ... forward / backward / optimizer step on d0 ...
 *           stk_feed_done(f, d0);              // d0 may be refilled; its
 *           release batch0;                    //   source may be reused
 *           d0 = d1, batch0 = b1;
 *
 *   Batch k + 1 must be fetched, converted and put before step k is
 *   queued, or its copy waits for the step to end; its source (and
 *   anything step k still reads, such as labels) must be memory of its
 *   own, not a buffer refilled for every batch. stk_train_batches
 *   (train.h) is this loop with a loader and the inputs converter, as
 *   stk_train_run runs it.
 *   On a CPU model a feed copies nothing: put returns the source itself.
 * ---------------------------------------------------------------------- */

/* Page-locks [addr, addr + bytes) for the device of model (a
 * stk_model_t *). 0, or the device's error (the message says why). */
STK_API int stk_model_pin_host(void *addr, size_t bytes, void *model);
/* Undoes stk_model_pin_host. */
STK_API void stk_model_unpin_host(void *addr, size_t bytes, void *model);

typedef struct stk_feed stk_feed_t;
/* A feed for batches of at most max_bytes into model (borrowed: it must
 * outlive the feed). 0, -EINVAL, -ENOMEM (device memory), or a backend
 * error. */
STK_API int stk_feed_create(stk_feed_t **out, stk_model_t *model, size_t max_bytes);
/* Starts copying bytes of src (host memory, pinned or not) into the next
 * of the two device buffers, once the work that last read that buffer is
 * done (stk_feed_done); *dev: the buffer (src itself on a CPU model). src
 * must stay unchanged until stk_feed_done(dev). 0, -ENOSPC (bytes over
 * max_bytes), -EINVAL, or a backend error. */
STK_API int stk_feed_put(stk_feed_t *f, const void *src, size_t bytes, const void **dev);
/* The model's work from now on waits (on the device) for dev's copy.
 * Returns 0, -EINVAL (NULL, or dev not one of this feed's buffers), or
 * the backend's error. */
STK_API int stk_feed_use(stk_feed_t *f, const void *dev);
/* The model's work so far is the last to read dev: its buffer may be
 * refilled. Returns once dev's copy is done, so that its source may be
 * reused (a loader batch released). */
STK_API int stk_feed_done(stk_feed_t *f, const void *dev);
/* Waits for the feed's copies and frees its buffers; NULL-safe. */
STK_API void stk_feed_destroy(stk_feed_t **f);
/* 1 when f copies batches into device memory (put starts a copy), 0 on a
 * model whose device memory is the host's (a CPU model: nothing is
 * copied, and fetching a batch ahead gains nothing). -EINVAL on NULL. */
STK_API int stk_feed_copies(const stk_feed_t *f);

/* stk_feed_put for a batch of n half-precision values (dtype STK_DTYPE_F16
 * or STK_DTYPE_BF16) that the model takes as f32: *dev gets n floats, the
 * exact conversion (stk_f16_to_f32, stk_bf16_to_f32). On a GPU the halves
 * are copied as they are (half the bytes of floats) and converted there,
 * on the copy stream; elsewhere they are converted on the host first.
 * Then stk_feed_use and stk_feed_done as for stk_feed_put. 0, -EINVAL
 * (NULL, another dtype), -ENOSPC (n floats over the feed's max_bytes),
 * -ENOMEM, or the backend's error. */
STK_API int stk_feed_put_half(stk_feed_t *f, const void *src, size_t n, stk_dtype_t dtype, const void **dev);

/* What a feed copied, counted when each batch is done (stk_feed_done). */
typedef struct stk_feed_stats {
    uint64_t copies; /* batches copied to the device (0 on a CPU model) */
    uint64_t bytes;  /* their bytes */
    double copy_s;   /* the copies' time: on a GPU device time between events
                      * around each copy on the copy stream (bytes / copy_s is
                      * the host-to-device bandwidth); on a backend without a
                      * copy queue the upload's host time */
} stk_feed_stats_t;
/* *out = the counts so far. 0 or -EINVAL (NULL). */
STK_API int stk_feed_stats(const stk_feed_t *f, stk_feed_stats_t *out);

/* ------------------------------------------------------------ CPU threads */

/* CPUs this process may use: its affinity mask (sched_getaffinity), capped
 * by the cgroup CPU quota of its cgroup and every parent (cgroup v2
 * cpu.max, or v1 cpu.cfs_quota_us / cpu.cfs_period_us), rounded up; at
 * least 1. A container limited to 1.5 CPUs on a 64-core host gets 2, where
 * OpenMP would start 64 threads. Thread-safe. */
STK_API int stk_engine_cpu_count(void);

/* How the OpenMP threads of the CPU backend (oneDNN, on Debian libgomp)
 * wait for work, as libgomp read it when the program started. */
typedef enum stk_wait_policy {
    STK_WAIT_SPIN = 0,    /* libgomp's default: spin ~3 ms, then sleep */
    STK_WAIT_PASSIVE = 1, /* sleep at once (OMP_WAIT_POLICY=passive) */
    STK_WAIT_ACTIVE = 2   /* spin (OMP_WAIT_POLICY=active) */
} stk_wait_policy_t;
STK_API stk_wait_policy_t stk_engine_wait_policy(void);

/* Makes this program's OpenMP threads wait passively, as they should on a
 * machine shared with other work: a spinning thread burns the CPU time
 * the thread it waits for needs (measured: stoker-enginebench beside two
 * busy processes, see engine/README.md). libgomp reads its wait policy
 * once, before main, and has no call to change it, so when neither
 * OMP_WAIT_POLICY nor GOMP_SPINCOUNT is set this sets
 * OMP_WAIT_POLICY=passive and executes the program again (/proc/self/exe,
 * same argv, same pid): call it first thing in main, before threads, open
 * files or output you care about. Returns 0 when there is nothing to do
 * (the user chose a policy, or the second time), or on failure a negative
 * errno (the program runs on with spinning threads; children still get
 * the variable). argv must be main's (NULL-terminated). The Stoker tools
 * call it. */
STK_API int stk_engine_passive_wait(char **argv);

/* ---------------------------------------------------- summary and timing */

/* A torchinfo-like table: per layer its name, kind, output shape, params
 * and receptive field, then totals. Writes at most cap bytes (always
 * NUL-terminated when cap > 0); returns the length it needs (without
 * the NUL), like snprintf. */
STK_API size_t stk_model_summary(const stk_model_t *m, char *buf, size_t cap);
/* The summary to f; 0 or -EIO. */
STK_API int stk_model_summary_print(const stk_model_t *m, FILE *f);

/* Per-layer timing, collected while profiling is on (off by default).
 * On the CPU a layer's time is host time (two clock reads per layer and
 * pass). On a GPU it is device time: events recorded on the model's
 * stream around each layer's forward and backward, read when the next
 * pass starts or the stats are read (one wait for the GPU per pass, only
 * while profiling). Steps are not run as CUDA graphs while profiling is
 * on (stk_model_set_cuda_graph stays set; graphs resume when it is off). */
typedef struct stk_layer_stats {
    const char *name;
    stk_layer_kind_t kind;
    uint64_t forward_calls, backward_calls;
    double forward_s, backward_s; /* totals */
} stk_layer_stats_t;

STK_API void stk_model_set_profiling(stk_model_t *m, int on);
STK_API void stk_model_reset_stats(stk_model_t *m);
/* Layers in graph order (the input layer included). */
STK_API size_t stk_model_num_layers(const stk_model_t *m);
/* 0, -ERANGE (i >= stk_model_num_layers), -EINVAL (NULL). */
STK_API int stk_model_layer_stats(const stk_model_t *m, size_t i, stk_layer_stats_t *st);
/* A table of the stats (ms per call, share of the total), as summary;
 * its first line names the clock. */
STK_API size_t stk_model_stats_format(const stk_model_t *m, char *buf, size_t cap);

typedef enum stk_profile_clock {
    STK_PROFILE_HOST = 0,  /* host wall time around each layer's calls */
    STK_PROFILE_DEVICE = 1 /* device time between events on the model's stream */
} stk_profile_clock_t;

/* What the stats measure, and the passes' own total. */
typedef struct stk_profile_info {
    stk_profile_clock_t clock;
    uint64_t passes; /* forward and backward passes timed whole */
    double span_s;   /* summed over them: first layer's start to last layer's end;
                      * the layers' times of those passes add up to at most this */
} stk_profile_info_t;

/* Fills *out (reading pending device times: waits for the GPU). 0,
 * -EINVAL (NULL), or the backend's error reading the times (the stats
 * then lack the passes it could not read). Not thread-safe with the
 * model's other calls. */
STK_API int stk_model_profile_info(const stk_model_t *m, stk_profile_info_t *out);
/* "GPU time" or "host time". */
STK_API const char *stk_profile_clock_name(stk_profile_clock_t clock);

#ifdef __cplusplus
}
#endif
#endif
