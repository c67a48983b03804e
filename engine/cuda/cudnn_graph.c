/* SPDX-License-Identifier: MIT */
/* Convolutions through cuDNN's graph (backend) API: a tensor descriptor
 * per operand, a convolution descriptor, one operation in an operation
 * graph, the engine configurations cuDNN's heuristics rank for it, and
 * the first of them that finalizes into an execution plan. All of that
 * happens at plan time; execution only binds pointers (a variant pack)
 * and enqueues the plan on the context's stream. The handle attributes
 * of graphs and plans are deprecated in cuDNN 9: the heuristics get a
 * device-property descriptor instead, and the handle goes to execute. */
#include "algo_cache.h"
#include "cuda.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DNN(call, what)                                                                             \
    do {                                                                                            \
        if ((rc = stk__dnn_status((call), (what))) < 0)                                             \
            goto fail;                                                                              \
    } while (0)
#define SET(d, name, type, count, ptr) DNN(cudnnBackendSetAttribute((d), (name), (type), (count), (ptr)), #name)

static void destroy(cudnnBackendDescriptor_t *d)
{
    if (*d) {
        cudnnBackendDestroyDescriptor(*d);
        *d = NULL;
    }
}

int stk__dnn_devprop_create(cuda_ctx_t *c)
{
    int rc = 0;
    int32_t dev = c->device;
    DNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR, &c->devprop), "device properties");
    SET(c->devprop, CUDNN_ATTR_DEVICEPROP_HANDLE, CUDNN_TYPE_HANDLE, 1, &c->dnn);
    SET(c->devprop, CUDNN_ATTR_DEVICEPROP_DEVICE_ID, CUDNN_TYPE_INT32, 1, &dev);
    DNN(cudnnBackendFinalize(c->devprop), "device properties");
    return 0;
fail:
    destroy(&c->devprop);
    return rc;
}

/* A dense tensor of dims (N, C, H, W order, as cuDNN wants them for
 * either layout; OIHW for weights): f32 NCHW (OIHW) for half
 * STK__K_F32, else BF16 / FP16 NHWC (KRSC): the channel is the innermost
 * dimension, what the tensor-core engines want. */
static int tensor_of(cudnnBackendDescriptor_t *t, int64_t uid, const int64_t dims[4], int64_t align, int nhwc,
                     cudnnDataType_t dt, int is_virtual)
{
    int rc = 0;
    const int64_t c = dims[1], h = dims[2], w = dims[3];
    int64_t strides[4] = {c * h * w, h * w, w, 1};
    if (nhwc) {
        strides[1] = 1;
        strides[2] = w * c;
        strides[3] = c;
    }
    bool virt = is_virtual != 0;
    DNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_TENSOR_DESCRIPTOR, t), "tensor descriptor");
    SET(*t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt);
    SET(*t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims);
    SET(*t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides);
    SET(*t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
    SET(*t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align);
    if (virt)
        SET(*t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &virt);
    DNN(cudnnBackendFinalize(*t), "tensor descriptor");
    return 0;
fail:
    destroy(t);
    return rc;
}

static int tensor(cudnnBackendDescriptor_t *t, int64_t uid, const int64_t dims[4], int64_t align, int half)
{
    cudnnDataType_t dt = half == STK__K_BF16  ? CUDNN_DATA_BFLOAT16
                         : half == STK__K_F16 ? CUDNN_DATA_HALF
                                              : CUDNN_DATA_FLOAT;
    return tensor_of(t, uid, dims, align, half != STK__K_F32, dt, 0);
}

static int conv_desc(cudnnBackendDescriptor_t *cd, const stk__conv_desc_t *d)
{
    int rc = 0;
    int64_t dims = 2;
    int64_t dil[2] = {d->dh, d->dw}, stride[2] = {d->sh, d->sw}, pad[2] = {d->ph, d->pw};
    cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION; /* what deep learning calls convolution */
    DNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR, cd), "convolution descriptor");
    SET(*cd, CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &dims);
    SET(*cd, CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp);
    SET(*cd, CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode);
    SET(*cd, CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, 2, dil);
    SET(*cd, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, 2, stride);
    /* Symmetric padding, as PyTorch: the output size the model computed
     * is floor((in + 2 pad - dil (k - 1) - 1) / stride) + 1, cuDNN's too. */
    SET(*cd, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, 2, pad);
    SET(*cd, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, 2, pad);
    DNN(cudnnBackendFinalize(*cd), "convolution descriptor");
    return 0;
fail:
    destroy(cd);
    return rc;
}

/* The operation of direction dir over tensors t[0..2] = (x or dx, w or
 * dw, y or dy): data, filter and output in the attribute names' terms. */
static int conv_op(cudnnBackendDescriptor_t *op, int dir, cudnnBackendDescriptor_t const t[3],
                   cudnnBackendDescriptor_t cd)
{
    static const cudnnBackendDescriptorType_t types[3] = {
        CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR,
        CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR,
        CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR,
    };
    /* Per direction: the attribute of t[0], t[1], t[2], conv, alpha, beta. */
    static const cudnnBackendAttributeName_t names[3][6] = {
        {CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W,
         CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC,
         CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA},
        {CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W,
         CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC,
         CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA},
        {CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW,
         CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC,
         CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA},
    };
    int rc = 0;
    float alpha = 1.0f, beta = 0.0f; /* every direction overwrites its output */
    DNN(cudnnBackendCreateDescriptor(types[dir], op), "convolution operation");
    for (int i = 0; i < 3; i++)
        DNN(cudnnBackendSetAttribute(*op, names[dir][i], CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t[i]),
            "convolution operand");
    DNN(cudnnBackendSetAttribute(*op, names[dir][3], CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cd), "convolution");
    DNN(cudnnBackendSetAttribute(*op, names[dir][4], CUDNN_TYPE_FLOAT, 1, &alpha), "alpha");
    DNN(cudnnBackendSetAttribute(*op, names[dir][5], CUDNN_TYPE_FLOAT, 1, &beta), "beta");
    DNN(cudnnBackendFinalize(*op), "convolution operation");
    return 0;
fail:
    destroy(op);
    return rc;
}

/* ------------------------------------------------------------ policy */

/* The process-wide benchmark cache (PyTorch keeps one per process too):
 * a second model with the same problems, or a batch size planned again,
 * times nothing. The logged sets remember which choice was last logged
 * per problem and policy, so each convolution's engine is logged once. */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static stk__algo_cache_t *g_cache;
static stk__algo_cache_t *g_logged[3];

/* Called with g_lock held. */
static int caches_ready(void)
{
    char ver[64];
    snprintf(ver, sizeof(ver), "cudnn-%zu", cudnnGetVersion());
    int rc = 0;
    if (!g_cache && (rc = stk__algo_cache_create(&g_cache, ver)) < 0)
        return rc;
    for (int i = 0; i < 3 && rc == 0; i++)
        if (!g_logged[i])
            rc = stk__algo_cache_create(&g_logged[i], ver);
    return rc;
}

int stk__dnn_configure(void *ctx, const stk_model_config_t *cfg)
{
    cuda_ctx_t *c = ctx;
    if ((unsigned)cfg->cudnn_policy > STK_CUDNN_DETERMINISTIC)
        return stk__error(STK_ECONFIG, "cuda: cudnn_policy %d is none of heuristic, benchmark, deterministic",
                          (int)cfg->cudnn_policy);
    c->policy = cfg->cudnn_policy;
    c->ws_limit = cfg->cudnn_workspace_limit;
    free(c->cache_path);
    c->cache_path = NULL;
    if (cfg->cudnn_cache_path && *cfg->cudnn_cache_path && !(c->cache_path = strdup(cfg->cudnn_cache_path)))
        return stk__error(-ENOMEM, "cuda: out of memory");
    /* The key's GPU: model, SM count and compute capability, one word. */
    struct cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, c->device) == cudaSuccess) {
        char name[40];
        size_t len = strnlen(prop.name, sizeof(prop.name));
        if (len >= sizeof(name))
            len = sizeof(name) - 1;
        memcpy(name, prop.name, len);
        name[len] = '\0';
        for (char *q = name; *q; q++)
            if (*q <= ' ' || *q == ':' || *q == '#' || *q == 0x7f)
                *q = '_';
        snprintf(c->device_tag, sizeof(c->device_tag), "%s-sm%d%d-%d", name[0] ? name : "gpu", prop.major,
                 prop.minor, prop.multiProcessorCount);
    } else {
        (void)cudaGetLastError();
        snprintf(c->device_tag, sizeof(c->device_tag), "gpu%d", c->device);
    }
    pthread_mutex_lock(&g_lock);
    int rc = caches_ready();
    if (rc == 0 && c->policy == STK_CUDNN_BENCHMARK && c->cache_path) {
        /* A cache is an optimization: a file that cannot serve is
         * reported and then rewritten, the run goes on. */
        int got = stk__algo_cache_load(g_cache, c->cache_path);
        if (got >= 0)
            stk__log(STK_LOG_INFO, "cuDNN benchmark cache %s: %d entries read", c->cache_path, got);
        else if (got != -ENOENT)
            stk__log(STK_LOG_WARN, "%s; ignored (it is rewritten when a convolution is timed)", stk_error_message());
    }
    pthread_mutex_unlock(&g_lock);
    return rc;
}

void stk__dnn_algo_stats(void *ctx, stk_algo_stats_t *out)
{
    const cuda_ctx_t *c = ctx;
    *out = c->algo;
}

/* The notes of an engine configuration as STK__NOTE_ bits. A failed
 * query says nothing against it. */
static unsigned cfg_notes(cudnnBackendDescriptor_t cfg)
{
    cudnnBackendDescriptor_t eng = NULL;
    if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINE_DESCRIPTOR, &eng) != CUDNN_STATUS_SUCCESS)
        return 0;
    unsigned bits = 0;
    int64_t got = 0;
    if (cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &got, &eng) ==
        CUDNN_STATUS_SUCCESS) {
        cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
        int64_t nn = 0;
        if (cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                     CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &nn, notes) == CUDNN_STATUS_SUCCESS) {
            for (int64_t i = 0; i < nn && i < CUDNN_NUMERICAL_NOTE_TYPE_COUNT; i++) {
                if (notes[i] == CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS)
                    bits |= STK__NOTE_DOWN_CONVERT;
                if (notes[i] == CUDNN_NUMERICAL_NOTE_TENSOR_CORE)
                    bits |= STK__NOTE_TENSOR_CORE;
                if (notes[i] == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC)
                    bits |= STK__NOTE_NONDETERMINISTIC;
            }
        }
        cudnnBackendBehaviorNote_t beh[CUDNN_BEHAVIOR_NOTE_TYPE_COUNT];
        int64_t nb = 0;
        if (cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE, CUDNN_TYPE_BEHAVIOR_NOTE,
                                     CUDNN_BEHAVIOR_NOTE_TYPE_COUNT, &nb, beh) == CUDNN_STATUS_SUCCESS) {
            for (int64_t i = 0; i < nb && i < CUDNN_BEHAVIOR_NOTE_TYPE_COUNT; i++)
                if (beh[i] == CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION)
                    bits |= STK__NOTE_RUNTIME_COMPILATION;
        }
    }
    cudnnBackendDestroyDescriptor(eng);
    return bits;
}

/* What rebuilds cfg in another process: its engine's global index and
 * its knob choices. Returns 0, or a failed query's status. */
static int cfg_describe(cudnnBackendDescriptor_t cfg, stk__algo_choice_t *ch)
{
    int rc = 0;
    /* A configuration has at most one choice per knob type: room for
     * all, so that none goes unseen (a partial set would rebuild another
     * configuration). */
    cudnnBackendDescriptor_t eng = NULL, knobs[CUDNN_KNOB_TYPE_COUNTS] = {NULL};
    int64_t got = 0;
    memset(ch, 0, sizeof(*ch));
    DNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINE_DESCRIPTOR, &eng), "engine");
    DNN(cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &got, &eng),
        "engine of a configuration");
    DNN(cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &got, &ch->engine),
        "engine index");
    for (int i = 0; i < CUDNN_KNOB_TYPE_COUNTS; i++)
        DNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR, &knobs[i]), "knob choice");
    got = 0;
    DNN(cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_KNOB_CHOICES, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                 CUDNN_KNOB_TYPE_COUNTS, &got, knobs),
        "knob choices");
    if (got > STK__ALGO_MAX_KNOBS) {
        rc = stk__error(STK_EBACKEND, "cuDNN: engine %lld has %lld knob choices, more than a cache entry holds (%d)",
                        (long long)ch->engine, (long long)got, STK__ALGO_MAX_KNOBS);
        goto fail;
    }
    for (int64_t i = 0; i < got; i++) {
        cudnnBackendKnobType_t type;
        int64_t n = 0, value = 0;
        DNN(cudnnBackendGetAttribute(knobs[i], CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE, CUDNN_TYPE_KNOB_TYPE, 1, &n, &type),
            "knob type");
        DNN(cudnnBackendGetAttribute(knobs[i], CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE, CUDNN_TYPE_INT64, 1, &n, &value),
            "knob value");
        ch->knob_type[ch->nknobs] = (int64_t)type;
        ch->knob_value[ch->nknobs] = value;
        ch->nknobs++;
    }
fail:
    for (int i = 0; i < CUDNN_KNOB_TYPE_COUNTS; i++)
        destroy(&knobs[i]);
    destroy(&eng);
    return rc;
}

/* The configuration ch describes, for graph. The engine and knob
 * descriptors go to keep[] after *nkeep (the plan refers to them). */
static int cfg_rebuild(cuda_ctx_t *c, cudnnBackendDescriptor_t graph, const stk__algo_choice_t *ch,
                       cudnnBackendDescriptor_t *out, cudnnBackendDescriptor_t *keep, int *nkeep, int room)
{
    int rc = 0;
    cudnnBackendDescriptor_t eng = NULL, cfg = NULL, knobs[STK__ALGO_MAX_KNOBS] = {NULL};
    if (ch->nknobs + 1 > room)
        return stk__error(STK_EBACKEND, "cuDNN: a cached engine with %d knobs", ch->nknobs);
    DNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINE_DESCRIPTOR, &eng), "engine");
    SET(eng, CUDNN_ATTR_ENGINE_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph);
    SET(eng, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &ch->engine);
    SET(eng, CUDNN_ATTR_ENGINE_DEVICEPROP, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c->devprop);
    DNN(cudnnBackendFinalize(eng), "engine");
    for (int i = 0; i < ch->nknobs; i++) {
        cudnnBackendKnobType_t type = (cudnnBackendKnobType_t)ch->knob_type[i];
        DNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR, &knobs[i]), "knob choice");
        SET(knobs[i], CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE, CUDNN_TYPE_KNOB_TYPE, 1, &type);
        SET(knobs[i], CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE, CUDNN_TYPE_INT64, 1, &ch->knob_value[i]);
        DNN(cudnnBackendFinalize(knobs[i]), "knob choice");
    }
    DNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, &cfg), "engine configuration");
    SET(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &eng);
    if (ch->nknobs > 0)
        SET(cfg, CUDNN_ATTR_ENGINECFG_KNOB_CHOICES, CUDNN_TYPE_BACKEND_DESCRIPTOR, ch->nknobs, knobs);
    DNN(cudnnBackendFinalize(cfg), "engine configuration");
    *out = cfg;
    keep[(*nkeep)++] = eng;
    for (int i = 0; i < ch->nknobs; i++)
        keep[(*nkeep)++] = knobs[i];
    return 0;
fail:
    destroy(&cfg);
    destroy(&eng);
    for (int i = 0; i < STK__ALGO_MAX_KNOBS; i++)
        destroy(&knobs[i]);
    return rc;
}

/* An execution plan of cfg and its workspace; a cuDNN status when the
 * engine does not take the problem (no message raised). */
static cudnnStatus_t plan_of(cudnnBackendDescriptor_t cfg, cudnnBackendDescriptor_t *plan, int64_t *ws)
{
    int64_t n = 0;
    cudnnStatus_t st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, plan);
    if (st != CUDNN_STATUS_SUCCESS)
        return st;
    st = cudnnBackendSetAttribute(*plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                  &cfg);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendFinalize(*plan);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendGetAttribute(*plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n, ws);
    if (st != CUDNN_STATUS_SUCCESS)
        destroy(plan);
    return st;
}

/* A planned candidate: the plan and the configuration it was made of. */
#define MAX_TIMED 8
typedef struct cand {
    cudnnBackendDescriptor_t plan, cfg;
    int64_t ws;
    double ms;
} cand_t;

/* The operands of a graph as a timing run binds them: nt tensors of
 * bytes[i] bytes under uid[i]. fused: an eval-mode fused graph, which
 * mostly only cuDNN's runtime fusion engines take: under the benchmark
 * policy those are then candidates too, two at most (each is compiled
 * when planned). */
typedef struct operands {
    int fused;
    int nt;
    int64_t bytes[DNN_MAX_TENSORS];
    int64_t uid[DNN_MAX_TENSORS];
} operands_t;

/* Appends to cand[*n] (up to max) the configurations that heuristic
 * `mode` ranks for graph, best first, that the policy accepts and that
 * plan (rtc_ok: runtime-compiled ones too, whatever the policy says of
 * them). Returns 0 or a failure of the heuristics themselves. *last: the
 * status of the last refusal (for the message when none plans). */
static int candidates(cuda_ctx_t *c, cudnnBackendDescriptor_t graph, cudnnBackendHeurMode_t mode, int tc,
                      int rtc_ok, cand_t *cand, int *n, int max, cudnnStatus_t *last)
{
    int rc = 0;
    cudnnBackendDescriptor_t heur = NULL, cfgs[64] = {NULL};
    int64_t count = 0, got = 0;
    DNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, &heur), "heuristics");
    SET(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph);
    SET(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
    SET(heur, CUDNN_ATTR_ENGINEHEUR_DEVICEPROP, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c->devprop);
    DNN(cudnnBackendFinalize(heur), "heuristics");
    DNN(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, NULL),
        "heuristics: result count");
    if (count > (int64_t)STK__ARRAY_LEN(cfgs))
        count = (int64_t)STK__ARRAY_LEN(cfgs);
    for (int64_t i = 0; i < count; i++)
        DNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, &cfgs[i]), "engine configuration");
    if (count > 0)
        DNN(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &got,
                                     cfgs),
            "heuristics: results");
    for (int64_t i = 0; i < got && i < count && *n < max; i++) {
        unsigned notes = cfg_notes(cfgs[i]);
        if (rtc_ok)
            notes &= ~(unsigned)STK__NOTE_RUNTIME_COMPILATION;
        if (stk__algo_reject(c->policy, tc, notes, -1, c->ws_limit)) {
            c->algo.skipped++;
            continue;
        }
        cudnnBackendDescriptor_t plan = NULL;
        int64_t ws = 0;
        cudnnStatus_t st = plan_of(cfgs[i], &plan, &ws);
        if (st != CUDNN_STATUS_SUCCESS) {
            /* This engine does not take the problem; the next may. */
            *last = st;
            continue;
        }
        if (stk__algo_reject(c->policy, tc, notes, ws, c->ws_limit)) {
            c->algo.skipped++;
            destroy(&plan);
            continue;
        }
        cand[*n].plan = plan;
        cand[*n].cfg = cfgs[i];
        cand[*n].ws = ws;
        cand[*n].ms = 0;
        (*n)++;
        cfgs[i] = NULL;
    }
fail:
    for (int64_t i = 0; i < (int64_t)STK__ARRAY_LEN(cfgs); i++)
        destroy(&cfgs[i]);
    destroy(&heur);
    return rc;
}

/* Times each candidate on scratch tensors of the problem's sizes (their
 * values do not change which kernel runs): one run to warm up, then the
 * mean of three between events. A candidate that fails to run is left
 * out (ms < 0). Returns 0 or a failure to get memory or events. */
static int time_candidates(cuda_ctx_t *c, const operands_t *ops, cand_t *cand, int n)
{
    int rc = 0;
    void *buf[DNN_MAX_TENSORS] = {NULL}, *ws = NULL;
    cudaEvent_t ev[2] = {NULL, NULL};
    int64_t wsmax = 0;
    for (int i = 0; i < n; i++)
        if (cand[i].ws > wsmax)
            wsmax = cand[i].ws;
    for (int i = 0; i < ops->nt && rc == 0; i++)
        rc = stk__cuda_op_alloc(c, &buf[i], (size_t)ops->bytes[i], "timing convolution engines");
    if (rc == 0)
        rc = stk__cuda_op_alloc(c, &ws, (size_t)wsmax, "timing convolution engines (workspace)");
    if (rc == 0 && ((rc = stk__cu_status(cudaEventCreate(&ev[0]), "cudaEventCreate")) < 0 ||
                    (rc = stk__cu_status(cudaEventCreate(&ev[1]), "cudaEventCreate")) < 0))
        goto out;
    if (rc < 0)
        goto out;
    dnn_plan_t p = {.n = ops->nt};
    memcpy(p.uid, ops->uid, sizeof(p.uid));
    for (int i = 0; i < n; i++) {
        p.plan = cand[i].plan;
        cand[i].ms = -1;
        if (stk__dnn_execute(c, &p, buf, ws) < 0)
            continue;
        if ((rc = stk__cu_status(cudaEventRecord(ev[0], c->stream), "cudaEventRecord")) < 0)
            goto out;
        int ok = 1;
        for (int r = 0; r < 3 && ok; r++)
            ok = stk__dnn_execute(c, &p, buf, ws) == 0;
        if ((rc = stk__cu_status(cudaEventRecord(ev[1], c->stream), "cudaEventRecord")) < 0 ||
            (rc = stk__cu_status(cudaEventSynchronize(ev[1]), "timing convolution engines")) < 0)
            goto out;
        float ms = 0;
        if (ok && cudaEventElapsedTime(&ms, ev[0], ev[1]) == cudaSuccess)
            cand[i].ms = ms / 3.0;
        c->algo.timed++;
    }
out:
    for (int i = 0; i < 2; i++)
        if (ev[i])
            cudaEventDestroy(ev[i]);
    /* cudaFree waits for the device: plan time. */
    for (int i = 0; i < ops->nt; i++)
        cudaFree(buf[i]);
    cudaFree(ws);
    return rc;
}

static void log_choice(const cuda_ctx_t *c, const stk__algo_key_t *key, const stk__algo_choice_t *ch,
                       const char *how)
{
    static const char *const dir_name[STK__ALGO_OPS] = {"forward", "backward data", "backward weights",
                                                         "forward + batch norm (eval)",
                                                         "forward + batch norm + ReLU (eval)"};
    char knobs[STK__ALGO_MAX_KNOBS * 24 + 1] = "";
    size_t at = 0;
    for (int i = 0; i < ch->nknobs && at < sizeof(knobs); i++)
        at += (size_t)snprintf(knobs + at, sizeof(knobs) - at, " %lld=%lld", (long long)ch->knob_type[i],
                               (long long)ch->knob_value[i]);
    pthread_mutex_lock(&g_lock);
    stk__algo_choice_t was;
    /* A backend opened without the configure slot (the op tests) has not
     * made the sets yet. Out of memory here costs a repeated line only. */
    int seen = caches_ready() == 0 && stk__algo_cache_lookup(g_logged[c->policy], key, &was) &&
               was.engine == ch->engine && was.nknobs == ch->nknobs;
    if (!seen && g_logged[c->policy])
        (void)stk__algo_cache_insert(g_logged[c->policy], key, ch);
    pthread_mutex_unlock(&g_lock);
    if (seen)
        return;
    stk__log(STK_LOG_INFO,
             "cuDNN %s: convolution %s (%s %s, n %lld, %lld->%lld channels, %lldx%lld input, kernel %lldx%lld, "
             "stride %lld,%lld, padding %lld,%lld, dilation %lld,%lld, groups %lld, %lld-byte aligned): engine "
             "%lld, knobs%s, workspace %lld bytes, %s",
             stk_cudnn_policy_name(c->policy), dir_name[key->op], key->dtype, key->layout, (long long)key->n,
             (long long)key->c, (long long)key->k, (long long)key->h, (long long)key->w, (long long)key->r,
             (long long)key->s,
             (long long)key->sh, (long long)key->sw, (long long)key->ph, (long long)key->pw, (long long)key->dh,
             (long long)key->dw, (long long)key->groups, (long long)key->align, (long long)ch->engine,
             ch->nknobs ? knobs : " none", (long long)ch->workspace, how);
}

/* Benchmark policy, cache hit: the plan of the cached choice. 0 with
 * p->plan NULL when it no longer plans (then the problem is timed). */
static int plan_cached(cuda_ctx_t *c, cudnnBackendDescriptor_t graph, int tc, const stk__algo_choice_t *ch,
                       dnn_plan_t *p)
{
    cudnnBackendDescriptor_t cfg = NULL, plan = NULL;
    int nkeep = p->nkeep;
    /* Room for the engine and knobs: the configuration and the six
     * descriptors stk__dnn_conv_plan adds stay free. */
    int rc = cfg_rebuild(c, graph, ch, &cfg, p->keep, &nkeep, DNN_KEEP_MAX - 6 - 1 - p->nkeep);
    int64_t ws = 0;
    if (rc == 0 && plan_of(cfg, &plan, &ws) == CUDNN_STATUS_SUCCESS &&
        !stk__algo_reject(c->policy, tc, 0, ws, c->ws_limit)) {
        p->plan = plan;
        p->workspace = ws;
        p->keep[nkeep++] = cfg;
        p->nkeep = nkeep;
        return 0;
    }
    destroy(&plan);
    destroy(&cfg);
    for (int i = p->nkeep; i < nkeep; i++)
        destroy(&p->keep[i]);
    stk__log(STK_LOG_WARN, "cuDNN benchmark cache: engine %lld no longer plans its problem; timing it again",
             (long long)ch->engine);
    stk_error_clear();
    return 0;
}

/* Picks p's plan for graph by the context's policy. tc: tensor-core
 * engines are allowed (TF32 asked for, or half inputs, which is what
 * they are for). */
static int choose(cuda_ctx_t *c, cudnnBackendDescriptor_t graph, const stk__algo_key_t *key, int tc,
                  const operands_t *ops, dnn_plan_t *p, cudnnStatus_t *last)
{
    int rc = 0;
    int bench = c->policy == STK_CUDNN_BENCHMARK;
    stk__algo_choice_t ch;
    char how[128];
    c->algo.plans++;
    if (bench) {
        pthread_mutex_lock(&g_lock);
        int hit = caches_ready() == 0 && stk__algo_cache_lookup(g_cache, key, &ch);
        pthread_mutex_unlock(&g_lock);
        if (hit && (rc = plan_cached(c, graph, tc, &ch, p)) < 0)
            return rc;
        if (p->plan) {
            c->algo.hits++;
            snprintf(how, sizeof(how), "from the benchmark cache (%.4g ms when timed)", ch.time_ms);
            log_choice(c, key, &ch, how);
            return 0;
        }
        c->algo.misses++;
    }
    cand_t cand[MAX_TIMED];
    int n = 0, max = bench ? (ops->fused ? 2 : MAX_TIMED) : 1;
    memset(cand, 0, sizeof(cand));
    /* Mode A ranks the fast engines; the fallback list holds the ones
     * that take any problem. */
    if ((rc = candidates(c, graph, CUDNN_HEUR_MODE_A, tc, ops->fused, cand, &n, max, last)) < 0)
        goto out;
    if (n == 0 && (rc = candidates(c, graph, CUDNN_HEUR_MODE_FALLBACK, tc, ops->fused, cand, &n, max, last)) < 0)
        goto out;
    if (n == 0)
        goto out;
    int best = 0;
    if (bench && n > 1) {
        if ((rc = time_candidates(c, ops, cand, n)) < 0)
            goto out;
        best = -1;
        for (int i = 0; i < n; i++)
            if (cand[i].ms >= 0 && (best < 0 || cand[i].ms < cand[best].ms))
                best = i;
        if (best < 0) {
            rc = stk__error(STK_EBACKEND, "cuDNN: none of %d convolution engines ran when timed", n);
            goto out;
        }
    }
    /* The description is for the cache and the log; the plan does not
     * need it. */
    int described = cfg_describe(cand[best].cfg, &ch) == 0;
    if (!described) {
        stk__log(STK_LOG_WARN, "cuDNN: %s; the engine chosen is not cached", stk_error_message());
        memset(&ch, 0, sizeof(ch));
        ch.engine = -1;
    }
    ch.workspace = cand[best].ws;
    ch.time_ms = cand[best].ms > 0 ? cand[best].ms : 0;
    p->plan = cand[best].plan;
    p->workspace = cand[best].ws;
    p->keep[p->nkeep++] = cand[best].cfg;
    cand[best].plan = cand[best].cfg = NULL;
    if (bench && described) {
        if (n > 1)
            snprintf(how, sizeof(how), "%.4g ms, the fastest of %d timed", ch.time_ms, n);
        else
            snprintf(how, sizeof(how), "the only candidate");
        pthread_mutex_lock(&g_lock);
        int ins = caches_ready() == 0 ? stk__algo_cache_insert(g_cache, key, &ch) : -ENOMEM;
        int saved = ins == 0 && c->cache_path ? stk__algo_cache_save(g_cache, c->cache_path) : 0;
        pthread_mutex_unlock(&g_lock);
        /* The plan stands; a cache that cannot grow or be written costs
         * time on a later run, not this one's result. */
        if (ins < 0 || saved < 0)
            stk__log(STK_LOG_WARN, "cuDNN benchmark cache: %s", stk_error_message());
    } else if (bench) {
        snprintf(how, sizeof(how), "%.4g ms, the fastest of %d timed (not cached)", ch.time_ms, n);
    } else {
        snprintf(how, sizeof(how), "the heuristics' first that %s",
                 c->policy == STK_CUDNN_DETERMINISTIC ? "is deterministic and plans" : "plans");
    }
    log_choice(c, key, &ch, how);
out:
    for (int i = 0; i < n; i++) {
        destroy(&cand[i].plan);
        destroy(&cand[i].cfg);
    }
    return rc;
}

/* The benchmark cache's key of convolution d planned as op (STK__ALGO_*).
 * Its dtype and layout keep f32 and half plans of one shape apart (in
 * the cache file too). */
static stk__algo_key_t conv_key(const cuda_ctx_t *c, const stk__conv_desc_t *d, int op, int64_t act_align, int half)
{
    stk__algo_key_t key = {.op = op, .dtype = "f32", .layout = "nchw", .align = act_align,
                           .tf32 = half != STK__K_F32 ? 0 : c->allow_tf32, .n = d->n, .c = d->ic, .h = d->ih,
                           .w = d->iw, .k = d->oc, .r = d->kh, .s = d->kw, .sh = d->sh, .sw = d->sw, .ph = d->ph,
                           .pw = d->pw, .dh = d->dh, .dw = d->dw, .groups = d->groups};
    if (half != STK__K_F32) {
        snprintf(key.dtype, sizeof(key.dtype), "%s", half == STK__K_BF16 ? "bf16" : "f16");
        snprintf(key.layout, sizeof(key.layout), "nhwc");
    }
    snprintf(key.device, sizeof(key.device), "%s", c->device_tag[0] ? c->device_tag : "gpu");
    return key;
}

int stk__dnn_conv_plan(cuda_ctx_t *c, const stk__conv_desc_t *d, int dir, int64_t act_align, int half,
                       dnn_plan_t *p)
{
    static const char *const dir_name[3] = {"forward", "backward data", "backward weights"};
    int rc = 0;
    memset(p, 0, sizeof(*p));
    const int64_t xd[4] = {d->n, d->ic, d->ih, d->iw}, wd[4] = {d->oc, d->ic / d->groups, d->kh, d->kw},
                  yd[4] = {d->n, d->oc, d->oh, d->ow};
    /* f32 weights sit anywhere in the parameter arena: 4-byte alignment.
     * Half tensors are the op's own buffers (cudaMalloc: 256 bytes). */
    const int64_t w_align = half != STK__K_F32 ? 16 : 4, esize = half != STK__K_F32 ? 2 : 4;
    if (half != STK__K_F32)
        act_align = 16;
    cudnnBackendDescriptor_t t[3] = {NULL}, cd = NULL, op = NULL, graph = NULL;
    if ((rc = tensor(&t[0], 1, xd, act_align, half)) < 0 || (rc = tensor(&t[1], 2, wd, w_align, half)) < 0 ||
        (rc = tensor(&t[2], 3, yd, act_align, half)) < 0 || (rc = conv_desc(&cd, d)) < 0 ||
        (rc = conv_op(&op, dir, t, cd)) < 0)
        goto fail;
    DNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, &graph), "operation graph");
    SET(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &op);
    DNN(cudnnBackendFinalize(graph), "operation graph");

    const stk__algo_key_t key = conv_key(c, d, dir, act_align, half);
    const operands_t ops = {.nt = 3,
                            .bytes = {xd[0] * xd[1] * xd[2] * xd[3] * esize, wd[0] * wd[1] * wd[2] * wd[3] * esize,
                                      yd[0] * yd[1] * yd[2] * yd[3] * esize},
                            .uid = {1, 2, 3}};
    cudnnStatus_t last = CUDNN_STATUS_NOT_SUPPORTED;
    if ((rc = choose(c, graph, &key, half != STK__K_F32 || c->allow_tf32, &ops, p, &last)) < 0)
        goto fail;
    if (!p->plan) {
        char what[384], limit[64] = "";
        if (c->ws_limit)
            snprintf(limit, sizeof(limit), ", workspace limit %llu bytes", (unsigned long long)c->ws_limit);
        snprintf(what, sizeof(what),
                 "no engine plans convolution %s (%s %s, n %lld, %lld->%lld channels, %lldx%lld input, kernel "
                 "%lldx%lld, stride %lld,%lld, padding %lld,%lld, dilation %lld,%lld, groups %lld; policy %s%s)",
                 dir_name[dir], key.dtype, key.layout, (long long)d->n, (long long)d->ic, (long long)d->oc,
                 (long long)d->ih, (long long)d->iw, (long long)d->kh, (long long)d->kw, (long long)d->sh,
                 (long long)d->sw,
                 (long long)d->ph, (long long)d->pw, (long long)d->dh, (long long)d->dw, (long long)d->groups,
                 stk_cudnn_policy_name(c->policy), limit);
        rc = stk__dnn_status(last, what);
        goto fail;
    }
    p->n = 3;
    p->uid[0] = 1;
    p->uid[1] = 2;
    p->uid[2] = 3;
    cudnnBackendDescriptor_t keep[6] = {graph, op, cd, t[0], t[1], t[2]};
    for (int i = 0; i < 6; i++)
        p->keep[p->nkeep++] = keep[i];
    return 0;
fail:
    destroy(&graph);
    destroy(&op);
    destroy(&cd);
    for (int i = 0; i < 3; i++)
        destroy(&t[i]);
    stk__dnn_plan_free(p);
    return rc;
}

/* A pointwise operation y = mode(x[, b]) computed in f32; its descriptor
 * goes to *pw (the operation refers to it). */
static int pointwise(cudnnBackendDescriptor_t *pw, cudnnBackendDescriptor_t *op, cudnnPointwiseMode_t mode,
                     cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t y)
{
    int rc = 0;
    cudnnDataType_t prec = CUDNN_DATA_FLOAT;
    DNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_POINTWISE_DESCRIPTOR, pw), "pointwise descriptor");
    SET(*pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
    SET(*pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec);
    DNN(cudnnBackendFinalize(*pw), "pointwise descriptor");
    DNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, op), "pointwise operation");
    SET(*op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, pw);
    SET(*op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    if (b)
        SET(*op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b);
    SET(*op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    DNN(cudnnBackendFinalize(*op), "pointwise operation");
    return 0;
fail:
    destroy(op);
    destroy(pw);
    return rc;
}

/* Keeps descriptor d with plan p (or destroys it when p is full). */
static void keep(dnn_plan_t *p, cudnnBackendDescriptor_t d)
{
    if (p->nkeep < DNN_KEEP_MAX)
        p->keep[p->nkeep++] = d;
    else
        destroy(&d);
}

int stk__dnn_conv_fused_plan(cuda_ctx_t *c, const stk__conv_desc_t *d, int relu, int64_t act_align, int half,
                             dnn_plan_t *p)
{
    int rc = 0;
    memset(p, 0, sizeof(*p));
    const int64_t xd[4] = {d->n, d->ic, d->ih, d->iw}, wd[4] = {d->oc, d->ic / d->groups, d->kh, d->kw},
                  yd[4] = {d->n, d->oc, d->oh, d->ow}, cd4[4] = {1, d->oc, 1, 1};
    const int64_t w_align = half != STK__K_F32 ? 16 : 4, esize = half != STK__K_F32 ? 2 : 4;
    const int nhwc = half != STK__K_F32;
    if (half != STK__K_F32)
        act_align = 16;
    /* uids: x 1, w 2, y 3, s 4, t 5; the virtual conv(x, w) 6, its
     * product with s 7, the sum with t 8 (before the ReLU). */
    cudnnBackendDescriptor_t x = NULL, w = NULL, y = NULL, ts = NULL, tt = NULL, v[3] = {NULL}, cdesc = NULL,
                             conv = NULL, pwd[3] = {NULL}, pwo[3] = {NULL}, graph = NULL;
    if ((rc = tensor(&x, 1, xd, act_align, half)) < 0 || (rc = tensor(&w, 2, wd, w_align, half)) < 0 ||
        (rc = tensor(&y, 3, yd, act_align, half)) < 0 ||
        (rc = tensor_of(&ts, 4, cd4, 16, nhwc, CUDNN_DATA_FLOAT, 0)) < 0 ||
        (rc = tensor_of(&tt, 5, cd4, 16, nhwc, CUDNN_DATA_FLOAT, 0)) < 0 ||
        (rc = tensor_of(&v[0], 6, yd, 16, nhwc, CUDNN_DATA_FLOAT, 1)) < 0 ||
        (rc = tensor_of(&v[1], 7, yd, 16, nhwc, CUDNN_DATA_FLOAT, 1)) < 0 ||
        (relu && (rc = tensor_of(&v[2], 8, yd, 16, nhwc, CUDNN_DATA_FLOAT, 1)) < 0) || (rc = conv_desc(&cdesc, d)) < 0)
        goto fail;
    {
        cudnnBackendDescriptor_t ct[3] = {x, w, v[0]};
        if ((rc = conv_op(&conv, CU_FWD, ct, cdesc)) < 0 ||
            (rc = pointwise(&pwd[0], &pwo[0], CUDNN_POINTWISE_MUL, v[0], ts, v[1])) < 0 ||
            (rc = pointwise(&pwd[1], &pwo[1], CUDNN_POINTWISE_ADD, v[1], tt, relu ? v[2] : y)) < 0 ||
            (relu && (rc = pointwise(&pwd[2], &pwo[2], CUDNN_POINTWISE_RELU_FWD, v[2], NULL, y)) < 0))
            goto fail;
    }
    {
        cudnnBackendDescriptor_t ops[4] = {conv, pwo[0], pwo[1], pwo[2]};
        DNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, &graph), "operation graph");
        SET(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, relu ? 4 : 3, ops);
        DNN(cudnnBackendFinalize(graph), "fused operation graph");
    }
    /* The descriptors live as long as the plan; the plan's own free
     * releases them from here on, on every path. */
    {
        cudnnBackendDescriptor_t all[] = {graph, conv, pwo[0], pwo[1], pwo[2], pwd[0], pwd[1], pwd[2], cdesc,
                                          x, w, y, ts, tt, v[0], v[1], v[2]};
        for (size_t i = 0; i < STK__ARRAY_LEN(all); i++)
            if (all[i])
                keep(p, all[i]);
    }
    const stk__algo_key_t key = conv_key(c, d, relu ? STK__ALGO_FPROP_BN_RELU : STK__ALGO_FPROP_BN, act_align, half);
    const operands_t ops = {.fused = 1,
                            .nt = 5,
                            .bytes = {xd[0] * xd[1] * xd[2] * xd[3] * esize, wd[0] * wd[1] * wd[2] * wd[3] * esize,
                                      yd[0] * yd[1] * yd[2] * yd[3] * esize, d->oc * 4, d->oc * 4},
                            .uid = {1, 2, 3, 4, 5}};
    cudnnStatus_t last = CUDNN_STATUS_NOT_SUPPORTED;
    if ((rc = choose(c, graph, &key, half != STK__K_F32 || c->allow_tf32, &ops, p, &last)) < 0)
        goto out;
    if (!p->plan) {
        char what[384];
        snprintf(what, sizeof(what),
                 "no engine plans the fused convolution + scale/shift%s (%s %s, n %lld, %lld->%lld channels, "
                 "%lldx%lld input, kernel %lldx%lld, policy %s)",
                 relu ? " + ReLU" : "", key.dtype, key.layout, (long long)d->n, (long long)d->ic, (long long)d->oc,
                 (long long)d->ih, (long long)d->iw, (long long)d->kh, (long long)d->kw,
                 stk_cudnn_policy_name(c->policy));
        rc = stk__dnn_status(last, what);
        goto out;
    }
    p->n = 5;
    for (int i = 0; i < 5; i++)
        p->uid[i] = ops.uid[i];
    return 0;
fail:
    destroy(&graph);
    for (int i = 0; i < 3; i++) {
        destroy(&pwo[i]);
        destroy(&pwd[i]);
        destroy(&v[i]);
    }
    destroy(&conv);
    destroy(&cdesc);
    destroy(&x);
    destroy(&w);
    destroy(&y);
    destroy(&ts);
    destroy(&tt);
out:
    stk__dnn_plan_free(p);
    return rc;
}

int stk__dnn_execute(cuda_ctx_t *c, const dnn_plan_t *p, void *const *ptrs, void *workspace)
{
    int rc = 0;
    cudnnBackendDescriptor_t vp = NULL;
    DNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &vp), "variant pack");
    SET(vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, p->n, ptrs);
    SET(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, p->n, p->uid);
    SET(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace);
    DNN(cudnnBackendFinalize(vp), "variant pack");
    DNN(cudnnBackendExecute(c->dnn, p->plan, vp), "execute");
fail:
    destroy(&vp);
    return rc;
}

void stk__dnn_plan_free(dnn_plan_t *p)
{
    destroy(&p->plan);
    for (int i = 0; i < p->nkeep; i++)
        destroy(&p->keep[i]);
    memset(p, 0, sizeof(*p));
}
