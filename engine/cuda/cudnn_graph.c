/* SPDX-License-Identifier: MIT */
/* Convolutions through cuDNN's graph (backend) API: a tensor descriptor
 * per operand, a convolution descriptor, one operation in an operation
 * graph, the engine configurations cuDNN's heuristics rank for it, and
 * the first of them that finalizes into an execution plan. All of that
 * happens at plan time; execution only binds pointers (a variant pack)
 * and enqueues the plan on the context's stream. The handle attributes
 * of graphs and plans are deprecated in cuDNN 9: the heuristics get a
 * device-property descriptor instead, and the handle goes to execute. */
#include "cuda.h"

#include <errno.h>
#include <stdio.h>
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

/* A dense NCHW (or OIHW) f32 tensor. */
static int tensor(cudnnBackendDescriptor_t *t, int64_t uid, const int64_t dims[4], int64_t align)
{
    int rc = 0;
    int64_t strides[4] = {dims[1] * dims[2] * dims[3], dims[2] * dims[3], dims[3], 1};
    cudnnDataType_t dt = CUDNN_DATA_FLOAT;
    DNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_TENSOR_DESCRIPTOR, t), "tensor descriptor");
    SET(*t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt);
    SET(*t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims);
    SET(*t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides);
    SET(*t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
    SET(*t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align);
    DNN(cudnnBackendFinalize(*t), "tensor descriptor");
    return 0;
fail:
    destroy(t);
    return rc;
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

/* Whether an engine configuration computes as FP32 promises: no TF32
 * tensor cores (unless allowed), no inputs converted down. A failed query
 * says nothing against it. */
static int cfg_wanted(const cuda_ctx_t *c, cudnnBackendDescriptor_t cfg)
{
    cudnnBackendDescriptor_t eng = NULL;
    if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINE_DESCRIPTOR, &eng) != CUDNN_STATUS_SUCCESS)
        return 1;
    int ok = 1;
    int64_t got = 0;
    if (cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &got, &eng) ==
        CUDNN_STATUS_SUCCESS) {
        cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
        int64_t nn = 0;
        if (cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                     CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &nn, notes) == CUDNN_STATUS_SUCCESS) {
            for (int64_t i = 0; i < nn && i < CUDNN_NUMERICAL_NOTE_TYPE_COUNT; i++) {
                if (notes[i] == CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS)
                    ok = 0;
                if (notes[i] == CUDNN_NUMERICAL_NOTE_TENSOR_CORE && !c->allow_tf32)
                    ok = 0;
            }
        }
    }
    cudnnBackendDestroyDescriptor(eng);
    return ok;
}

/* Tries the configurations that heuristic `mode` ranks for graph, best
 * first; the first that finalizes becomes p->plan, its configuration kept
 * in p. Returns 0 (p->plan may still be NULL: none fit) or a failure of
 * the heuristics themselves. *last: the status of the last refusal. */
static int plan_from_heuristics(cuda_ctx_t *c, cudnnBackendDescriptor_t graph, cudnnBackendHeurMode_t mode,
                                dnn_plan_t *p, cudnnStatus_t *last)
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
    for (int64_t i = 0; i < got && i < count && !p->plan; i++) {
        if (!cfg_wanted(c, cfgs[i]))
            continue;
        cudnnBackendDescriptor_t plan = NULL;
        DNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan), "execution plan");
        cudnnStatus_t st = cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
                                                    CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfgs[i]);
        if (st == CUDNN_STATUS_SUCCESS)
            st = cudnnBackendFinalize(plan);
        int64_t ws = 0, n = 0;
        if (st == CUDNN_STATUS_SUCCESS)
            st = cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n,
                                          &ws);
        if (st != CUDNN_STATUS_SUCCESS) {
            /* This engine does not take the problem; the next may. */
            *last = st;
            cudnnBackendDestroyDescriptor(plan);
            continue;
        }
        p->plan = plan;
        p->workspace = ws;
        p->keep[p->nkeep++] = cfgs[i];
        cfgs[i] = NULL;
    }
fail:
    for (int64_t i = 0; i < (int64_t)STK__ARRAY_LEN(cfgs); i++)
        destroy(&cfgs[i]);
    destroy(&heur);
    return rc;
}

int stk__dnn_conv_plan(cuda_ctx_t *c, const stk__conv_desc_t *d, int dir, int64_t act_align, dnn_plan_t *p)
{
    static const char *const dir_name[3] = {"forward", "backward data", "backward weights"};
    int rc = 0;
    memset(p, 0, sizeof(*p));
    const int64_t xd[4] = {d->n, d->ic, d->ih, d->iw}, wd[4] = {d->oc, d->ic / d->groups, d->kh, d->kw},
                  yd[4] = {d->n, d->oc, d->oh, d->ow};
    /* Weights sit anywhere in the parameter arena: 4-byte alignment. */
    cudnnBackendDescriptor_t t[3] = {NULL}, cd = NULL, op = NULL, graph = NULL;
    if ((rc = tensor(&t[0], 1, xd, act_align)) < 0 || (rc = tensor(&t[1], 2, wd, 4)) < 0 ||
        (rc = tensor(&t[2], 3, yd, act_align)) < 0 || (rc = conv_desc(&cd, d)) < 0 ||
        (rc = conv_op(&op, dir, t, cd)) < 0)
        goto fail;
    DNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, &graph), "operation graph");
    SET(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &op);
    DNN(cudnnBackendFinalize(graph), "operation graph");

    cudnnStatus_t last = CUDNN_STATUS_NOT_SUPPORTED;
    if ((rc = plan_from_heuristics(c, graph, CUDNN_HEUR_MODE_A, p, &last)) < 0)
        goto fail;
    /* Mode A ranks the fast engines; the fallback list holds the ones
     * that take any problem. */
    if (!p->plan && (rc = plan_from_heuristics(c, graph, CUDNN_HEUR_MODE_FALLBACK, p, &last)) < 0)
        goto fail;
    if (!p->plan) {
        char what[256];
        snprintf(what, sizeof(what),
                 "no engine plans convolution %s (n %lld, %lld->%lld channels, %lldx%lld input, kernel %lldx%lld, "
                 "stride %lld,%lld, padding %lld,%lld, dilation %lld,%lld, groups %lld)",
                 dir_name[dir], (long long)d->n, (long long)d->ic, (long long)d->oc, (long long)d->ih,
                 (long long)d->iw, (long long)d->kh, (long long)d->kw, (long long)d->sh, (long long)d->sw,
                 (long long)d->ph, (long long)d->pw, (long long)d->dh, (long long)d->dw, (long long)d->groups);
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
