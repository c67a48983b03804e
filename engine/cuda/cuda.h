/* SPDX-License-Identifier: MIT */
/* The CUDA backend's private declarations: its context (one device, one
 * stream, a cuDNN and a cuBLASLt handle), its planned ops, and the status
 * mapping shared by its files. Everything a backend slot enqueues goes on
 * the context's stream, in order; only the calls that hand a value to the
 * host (download, the loss) wait for it, and they wait for that stream,
 * never for the whole device. */
#ifndef STOKER_ENGINE_CUDA_H
#define STOKER_ENGINE_CUDA_H

/* meson.build defines it for this folder: a deprecated cuDNN call (the
 * legacy convolution, pooling, activation and batch-norm API) is then a
 * warning, and with -Dwerror=true an error. */
#ifndef CUDNN_WARN_DEPRECATED
#error "engine/cuda must be compiled with -DCUDNN_WARN_DEPRECATED"
#endif

#include "../backend.h"
#include "kernels.h"

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <cudnn_graph.h>

#if CUDNN_VERSION < 90800
#error "the CUDA backend needs cuDNN 9.8 or newer (device-property descriptors)"
#endif

typedef struct cuda_ctx {
    int device;
    cudaStream_t stream;
    cudnnHandle_t dnn;
    cudnnBackendDescriptor_t devprop; /* this device, for cuDNN's heuristics */
    cublasLtHandle_t lt;
    /* The slots that return void (copies, add, concat, dropout) cannot
     * report a failure: the first one is kept here and returned by the
     * next slot that returns a status. */
    int sticky;
    char sticky_msg[512];
    /* Device scratch: the fault word kernels leave (stk__k_fault_t), and
     * the pinned host buffer it is read into. */
    void *dev_scratch;
    void *host_scratch;
    /* The feed's copy queue (cuda_device.c). */
    cudaStream_t copy_stream;
    cudaEvent_t copied[STK__FEED_SLOTS], released[STK__FEED_SLOTS];
    cudaEvent_t copy_begin[STK__FEED_SLOTS]; /* with copied: a copy's device time */
    int copied_set[STK__FEED_SLOTS], released_set[STK__FEED_SLOTS];
    void *stage; /* upload: pageable copies of pinned sources */
    size_t stage_cap;
    double *rows; /* cross-entropy: per-row losses */
    size_t rows_cap;
    /* FP32 means FP32: cuDNN engines that run FP32 convolutions on tensor
     * cores (TF32) or convert inputs down are skipped, and cuBLASLt
     * computes in CUBLAS_COMPUTE_32F. Precision TF32 (set_precision) sets
     * it: cuDNN's tensor-core engines are then allowed, and cuBLASLt
     * computes in CUBLAS_COMPUTE_32F_FAST_TF32. */
    int allow_tf32;
    /* Mixed precision (set_precision BF16 / FP16): STK__K_BF16 or
     * STK__K_F16, else STK__K_F32. Convolutions and linear layers planned
     * while it is set compute in that type (cuda_conv.c, cuda_linear.c);
     * everything else stays f32. */
    int half;
    /* Dynamic loss scaling: the non-finite flag the unscale kernel sets
     * (device) and where it is read back to (pinned). */
    int *flag_dev;
    int *flag_host;
    /* CUDA graphs (cuda_graph.c): capturing is set between graph_begin
     * and graph_end. What a replay reads at launch: one block, pinned on
     * the host (graph_host) and copied to graph_dev by the graph's first
     * node: the dropout step at 0, then one stk__optim_scalars_t slot per
     * optimizer op (op->kslot), CU_GRAPH_KSLOTS of them. */
    int capturing;
    unsigned char *graph_host, *graph_dev;
    int kslots;
    /* How convolutions pick their engine (the model config's cudnn_*
     * fields; cudnn_graph.c): the policy, the workspace limit (bytes, 0
     * none), the benchmark cache file (owned; NULL none), this GPU's name
     * in cache keys, and the counters stk_model_algo_stats reads. */
    stk_cudnn_policy_t policy;
    uint64_t ws_limit;
    char *cache_path;
    char device_tag[64];
    stk_algo_stats_t algo;
    /* The profile's timer marks (cuda_timer.c): nmarks events. */
    cudaEvent_t *marks;
    int nmarks;
} cuda_ctx_t;

/* A cuDNN execution plan with what executing it needs. The descriptors
 * it was made from (tensors, operation, graph, engine configuration) are
 * kept alive with it: the plan refers to them. */
/* graph, its operations and tensors (a fused graph: 4 operations, 3
 * pointwise descriptors, the convolution's, 8 tensors), configuration,
 * engine, its knobs */
#define DNN_KEEP_MAX 56
#define DNN_MAX_TENSORS 5 /* in a variant pack: x, w, y, and a fused op's s, t */
typedef struct dnn_plan {
    cudnnBackendDescriptor_t plan; /* NULL: not built */
    int64_t workspace;             /* bytes */
    int n;                         /* tensors in the variant pack */
    int64_t uid[DNN_MAX_TENSORS];
    cudnnBackendDescriptor_t keep[DNN_KEEP_MAX];
    int nkeep;
} dnn_plan_t;

/* One cuBLASLt matrix multiply, planned: descriptors and the algorithm
 * chosen for them, [0] for 16-byte aligned activations, [1] for any. */
typedef struct lt_gemm {
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, d;
    cublasLtMatmulAlgo_t algo[2];
    size_t workspace[2];
    int have[2];
} lt_gemm_t;

enum { CU_OP_CONV = 1, CU_OP_BN, CU_OP_POOL, CU_OP_LINEAR, CU_OP_REORDER, CU_OP_OPTIM };
enum { CU_FWD = 0, CU_BWD_DATA = 1, CU_BWD_FILTER = 2 };

/* The CUDA backend's planned op (the CPU backend has its own). */
struct stk__op {
    int kind;
    stk__conv_desc_t conv;
    stk__bn_desc_t bn;
    stk__pool_desc_t pool;
    stk__linear_desc_t lin;
    int64_t rn, rc, rh, rw; /* reorder shape */
    int rfrom, rto;
    /* Convolution: one plan per direction, for two alignments: [.][0]
     * assumes 16-byte aligned activations (what alloc returns), [.][1]
     * only 4 bytes, built the first time a misaligned pointer comes. */
    dnn_plan_t plans[3][2];
    lt_gemm_t gemm[3];
    void *workspace; /* owned by the op, sized for its plans */
    size_t ws_bytes;
    void *aux;       /* batch norm: ReLU mask; max pooling: argmax;
                      * optimizer: its chunks (stk_optim_range_t) */
    size_t nchunks;  /* optimizer */
    int kslot;       /* optimizer: its scalars' slot in the graph block, -1 none */
    /* Mixed precision: the type the op computes in (the context's half
     * when it was planned) and its half buffers, made with the plan.
     * Convolution: hx (x, NHWC), hw (weights, KRSC), hy (y, then dy),
     * hdx, hdw; linear: hx, hw, hy (dy). *_from: the f32 pointer whose
     * values each holds (NULL: none), so that a backward reuses what the
     * op's forward cast (x for the weight gradient, the weights for dx)
     * and backward data the dy that backward weights cast. */
    int half;
    void *hx, *hw, *hy, *hdx, *hdw;
    const void *hx_from, *hw_from, *hy_from;
    /* The eval-mode fused convolution (conv_fused_*): fused set, its
     * plans in plans[CU_FWD], the batch norm's eps, ReLU or not; aux
     * holds this call's s then t (2 x oc floats). */
    int fused, frelu;
    float feps;
};

#define CU_GRAPH_KSLOTS 256
#define CU_GRAPH_KOFF 64 /* the first slot's offset in the graph block */
#define CU_GRAPH_BYTES (CU_GRAPH_KOFF + CU_GRAPH_KSLOTS * sizeof(stk__optim_scalars_t))

/* Status mapping. Each returns 0 for success, else records "what: the
 * vendor's name and message" and returns -ENOMEM for an allocation
 * failure, STK_EBACKEND otherwise. */
int stk__cu_status(cudaError_t e, const char *what);
int stk__dnn_status(cudnnStatus_t s, const char *what);
int stk__lt_status(cublasStatus_t s, const char *what);
/* The status of a kernel launch (cudaGetLastError). */
int stk__cu_launched(const char *what);

/* Keeps the first failure of a void slot; returns rc. */
int stk__cu_stick(cuda_ctx_t *c, int rc);
/* 0, or the kept failure (message restored), which is then cleared. */
int stk__cu_unstick(cuda_ctx_t *c);

/* cuDNN graph helpers (cudnn_graph.c). */
int stk__dnn_devprop_create(cuda_ctx_t *c);
/* The configure and algo_stats slots: the model config's cudnn_* fields
 * (the cache file read here), and the counters. */
int stk__dnn_configure(void *ctx, const stk_model_config_t *cfg);
void stk__dnn_algo_stats(void *ctx, stk_algo_stats_t *out);
/* Plans convolution direction `dir` (CU_FWD...) of d. half STK__K_F32:
 * f32 NCHW tensors, activations (x, y, dx, dy) aligned to act_align
 * bytes and weights to 4; STK__K_BF16 / STK__K_F16: all three tensors of
 * that type, NHWC (KRSC), 16-byte aligned (the op's own buffers), FP32
 * compute. */
int stk__dnn_conv_plan(cuda_ctx_t *c, const stk__conv_desc_t *d, int dir, int64_t act_align, int half,
                       dnn_plan_t *out);
/* Plans the eval-mode fused forward of d: the graph convolution ->
 * pointwise MUL by s -> ADD t (s, t: f32 [1, K, 1, 1]) -> RELU_FWD
 * (relu), intermediates virtual f32; tensors, alignment and half as
 * stk__dnn_conv_plan (x, w, y in the half type and NHWC under
 * BF16 / FP16). Variant pack: x, w, y, s, t. The engine is chosen by
 * the context's policy under its own cache key (STK__ALGO_FPROP_BN...).
 * Fails (STK_EBACKEND naming the problem) when no engine plans it. */
int stk__dnn_conv_fused_plan(cuda_ctx_t *c, const stk__conv_desc_t *d, int relu, int64_t act_align, int half,
                             dnn_plan_t *out);
/* Runs a plan on the context's stream: ptrs in the order of p->uid. */
int stk__dnn_execute(cuda_ctx_t *c, const dnn_plan_t *p, void *const *ptrs, void *workspace);
void stk__dnn_plan_free(dnn_plan_t *p);

/* Ops (cuda_conv.c, cuda_linear.c, cuda_ops.c). */
void stk__cuda_op_destroy(void *ctx, stk__op_t *op);
int stk__cuda_conv_create(void *ctx, const stk__conv_desc_t *d, stk__op_t **out);
int stk__cuda_conv_forward(void *ctx, stk__op_t *op, const float *x, const float *w, const float *b, float *y);
int stk__cuda_conv_fused_create(void *ctx, const stk__conv_fused_desc_t *d, stk__op_t **out);
int stk__cuda_conv_fused_forward(void *ctx, stk__op_t *op, const float *x, const float *w, const float *b,
                                 const float *gamma, const float *beta, const float *mean, const float *var,
                                 float *y);
int stk__cuda_conv_backward_data(void *ctx, stk__op_t *op, const float *dy, const float *w, float *dx);
int stk__cuda_conv_backward_weights(void *ctx, stk__op_t *op, const float *x, const float *dy, float *dw,
                                    float *db);
int stk__cuda_linear_create(void *ctx, const stk__linear_desc_t *d, stk__op_t **out);
int stk__cuda_linear_forward(void *ctx, stk__op_t *op, const float *x, const float *w, const float *b, float *y);
int stk__cuda_linear_backward_data(void *ctx, stk__op_t *op, const float *dy, const float *w, float *dx);
int stk__cuda_linear_backward_weights(void *ctx, stk__op_t *op, const float *x, const float *dy, float *dw,
                                      float *db);
void stk__cuda_linear_free(stk__op_t *op);
int stk__cuda_bn_create(void *ctx, const stk__bn_desc_t *d, stk__op_t **out);
int stk__cuda_bn_forward(void *ctx, stk__op_t *op, int train, const float *x, const float *gamma,
                         const float *beta, float *mean, float *var, float *y);
int stk__cuda_bn_backward(void *ctx, stk__op_t *op, const float *x, const float *dy, const float *gamma,
                          const float *mean, const float *var, float *dx, float *dgamma, float *dbeta);
int stk__cuda_pool_create(void *ctx, const stk__pool_desc_t *d, stk__op_t **out);
int stk__cuda_pool_forward(void *ctx, stk__op_t *op, int train, const float *x, float *y);
int stk__cuda_pool_backward(void *ctx, stk__op_t *op, const float *dy, float *dx);
int stk__cuda_reorder_create(void *ctx, int64_t n, int64_t c, int64_t h, int64_t w, int from, int to,
                             stk__op_t **out);
int stk__cuda_reorder_run(void *ctx, stk__op_t *op, int reverse, const float *src, float *dst);

/* Element-wise slots, the loss and accuracy (cuda_ops.c). */
int stk__cuda_eltwise_forward(void *ctx, stk__eltwise_t alg, float alpha, size_t n, const float *x, float *y);
int stk__cuda_eltwise_backward(void *ctx, stk__eltwise_t alg, float alpha, size_t n, const float *x,
                               const float *y, const float *dy, float *dx);
void stk__cuda_add(void *ctx, size_t n, const float *a, const float *b, float *y);
void stk__cuda_accumulate(void *ctx, size_t n, const float *x, float *y);
void stk__cuda_concat_forward(void *ctx, int64_t n, int64_t ca, int64_t cb, int64_t hw, const float *a,
                              const float *b, float *y);
void stk__cuda_concat_backward(void *ctx, int64_t n, int64_t ca, int64_t cb, int64_t hw, const float *dy,
                               float *da, float *db, int acc_a, int acc_b);
void stk__cuda_dropout_forward(void *ctx, size_t n, float p, uint64_t key, uint64_t step, const float *x,
                               float *y);
void stk__cuda_dropout_backward(void *ctx, size_t n, float p, uint64_t key, uint64_t step, const float *dy,
                                float *dx);
void stk__cuda_bn_update_running(void *ctx, int64_t c, int64_t count, float momentum, const float *mean,
                                 const float *var, float *running_mean, float *running_var);
int stk__cuda_xent_forward(void *ctx, int64_t n, int64_t k, const float *logits, const int64_t *labels,
                           const float *soft, float smoothing, float *prob, float *loss);
void stk__cuda_xent_backward(void *ctx, int64_t n, int64_t k, const float *prob, const int64_t *labels,
                             const float *soft, float smoothing, float scale, float *dlogits);
int stk__cuda_count_correct(void *ctx, int64_t n, int64_t k, int topk, const float *logits, const int64_t *labels,
                            int64_t *correct);

/* Sequence helpers (cuda_seq.c). */
int stk__cuda_gather_rows(void *ctx, int64_t n, int64_t f, int64_t rows, const int64_t *idx, const float *src,
                          float *dst);
void stk__cuda_scatter_add_rows(void *ctx, int64_t n, int64_t f, const int64_t *idx, int64_t skip, const float *src,
                                float *dst);
void stk__cuda_seq_pool_forward(void *ctx, int mean, int64_t n, int64_t t, int64_t f, const int64_t *lengths,
                                const float *x, float *y);
void stk__cuda_seq_pool_backward(void *ctx, int mean, int64_t n, int64_t t, int64_t f, const int64_t *lengths,
                                 const float *dy, float *dx);
/* Waits for the stream and reports what a kernel left in the fault word
 * (-EINVAL naming it), clearing it. */
int stk__cuda_fault_read(cuda_ctx_t *c);

/* Feeding and devices (cuda_device.c). */
int stk__cuda_feed_init(cuda_ctx_t *c);
void stk__cuda_feed_fini(cuda_ctx_t *c);
int stk__cuda_feed_copy(void *ctx, int slot, void *dst, const void *src, size_t bytes);
int stk__cuda_feed_use(void *ctx, int slot);
int stk__cuda_feed_release(void *ctx, int slot);
int stk__cuda_feed_copy_time(void *ctx, int slot, double *sec);
int stk__cuda_feed_copy_half(void *ctx, int slot, float *dst, void *stage, const void *src, size_t n, int bf16);
int stk__cuda_pin_host(void *ctx, void *addr, size_t bytes);
void stk__cuda_unpin_host(void *ctx, void *addr);

/* The fused optimizer update (cuda_optim.c). */
int stk__cuda_optim_create(void *ctx, const stk_optim_range_t *ranges, size_t n_ranges, stk__op_t **out);
int stk__cuda_optim_update(void *ctx, stk__op_t *op, const stk__optim_scalars_t *k, float *params,
                           const float *grads, float *s0, float *s1, float *s2);

/* Timer marks for the profile (cuda_timer.c). */
int stk__cuda_timer_reserve(void *ctx, int n);
int stk__cuda_timer_mark(void *ctx, int i);
int stk__cuda_timer_elapsed(void *ctx, int a, int b, double *sec);
void stk__cuda_timer_fini(cuda_ctx_t *c);

/* CUDA graphs of a training step (cuda_graph.c). */
int stk__cuda_graph_init(cuda_ctx_t *c);
void stk__cuda_graph_fini(cuda_ctx_t *c);
int stk__cuda_graph_begin(void *ctx);
int stk__cuda_graph_end(void *ctx, void **graph);
int stk__cuda_graph_launch(void *ctx, void *graph);
void stk__cuda_graph_destroy(void *ctx, void *graph);
void stk__cuda_graph_note_step(void *ctx, uint64_t step);
int stk__cuda_graph_note_optim(void *ctx, stk__op_t *op, const stk__optim_scalars_t *k);

/* Loss scaling and precision (cuda_optim.c). */
int stk__cuda_unscale_grads(void *ctx, size_t n, float *g, float inv_scale, int *nonfinite);
int stk__cuda_set_precision(void *ctx, stk_precision_t want, stk_precision_t *used);

/* Recurrent stacks (cuDNN's v8 RNN API: cuda_rnn.c). */
int stk__cuda_rnn_create(void *ctx, const stk__rnn_desc_t *d, stk__rnn_op_t **out);
void stk__cuda_rnn_destroy(void *ctx, stk__rnn_op_t *op);
int stk__cuda_rnn_forward(void *ctx, stk__rnn_op_t *op, int train, const stk__rnn_args_t *a);
int stk__cuda_rnn_backward(void *ctx, stk__rnn_op_t *op, const stk__rnn_args_t *a);

/* Device memory of the op's own (workspaces, masks): zeroed; -ENOMEM
 * names what it was for. */
int stk__cuda_op_alloc(cuda_ctx_t *c, void **p, size_t bytes, const char *what);

#endif
