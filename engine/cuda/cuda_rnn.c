/* SPDX-License-Identifier: MIT */
/* Recurrent stacks and the sequence helpers of the CUDA backend. The
 * stacks go through cuDNN's v8 RNN API (cudnnRNNForward,
 * cudnnRNNBackwardData_v8, cudnnRNNBackwardWeights_v8), which takes
 * per-sequence lengths itself (padded, batch-major data with a length
 * array: packed-sequence semantics, as PyTorch's cuDNN path), all layers
 * and both directions in one call. cuDNN's gate order is PyTorch's (LSTM
 * i f g o, GRU r z n, two biases), and its weight space is checked at plan
 * time against the parameter block's layout (engine/backend_rnn.h): when
 * every matrix and bias sits where PyTorch's block has it, the block is
 * the weight space and nothing is copied; otherwise each is copied in and
 * the gradients out. Dropout between layers uses cuDNN's generator (not
 * the CPU's Philox masks). FP32 math without tensor cores, as the rest of
 * this backend. Written without a GPU at hand (compiled and linked only):
 * tests/conformance checks it against the CPU on a machine with one. */
#include "cuda.h"

#include <cudnn_adv.h>
#include <cudnn_ops.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct piece {
    size_t block, space, count; /* floats: offset in the block, in cuDNN's space, length */
} piece_t;

struct stk__rnn_op {
    stk__rnn_desc_t d;
    cuda_ctx_t *c;
    cudnnRNNDescriptor_t rnn[2]; /* [0] no dropout (evaluation), [1] the layer's dropout */
    cudnnDropoutDescriptor_t drop[2];
    void *drop_states;
    cudnnRNNDataDescriptor_t xd, yd;
    cudnnTensorDescriptor_t hd, cd;
    size_t wbytes, work_bytes, reserve_bytes;
    void *work, *reserve;
    int direct;          /* the parameter block is cuDNN's weight space */
    piece_t *pieces;     /* otherwise where each piece goes */
    size_t npieces;
    float *wspace, *dwspace;
    int32_t *lens_host, *lens_dev;
    float *dx_scratch;   /* backward data needs somewhere to write dx */
    /* the last forward, for backward */
    int fwd_ok, which;
    int64_t n, t;
    const float *x, *y, *h0, *c0, *w;
};

#define DNN(call, what)                                                                                \
    do {                                                                                               \
        if ((rc = stk__dnn_status((call), (what))) != 0)                                               \
            goto fail;                                                                                 \
    } while (0)

void stk__cuda_rnn_destroy(void *ctx, stk__rnn_op_t *op)
{
    (void)ctx;
    if (!op)
        return;
    for (int k = 0; k < 2; k++) {
        if (op->rnn[k])
            cudnnDestroyRNNDescriptor(op->rnn[k]);
        if (op->drop[k])
            cudnnDestroyDropoutDescriptor(op->drop[k]);
    }
    if (op->xd)
        cudnnDestroyRNNDataDescriptor(op->xd);
    if (op->yd)
        cudnnDestroyRNNDataDescriptor(op->yd);
    if (op->hd)
        cudnnDestroyTensorDescriptor(op->hd);
    if (op->cd)
        cudnnDestroyTensorDescriptor(op->cd);
    cudaFree(op->drop_states);
    cudaFree(op->work);
    cudaFree(op->reserve);
    cudaFree(op->wspace);
    cudaFree(op->dwspace);
    cudaFree(op->lens_dev);
    cudaFree(op->dx_scratch);
    free(op->lens_host);
    free(op->pieces);
    free(op);
}

/* x and y data descriptors for n sequences of at most t steps, with the
 * lengths in op->lens_host; padding is written as 0. */
static int set_data(stk__rnn_op_t *op, int64_t n, int64_t t)
{
    int rc = 0;
    float zero = 0.0f;
    int nd = op->d.bidirectional ? 2 : 1;
    DNN(cudnnSetRNNDataDescriptor(op->xd, CUDNN_DATA_FLOAT, CUDNN_RNN_DATA_LAYOUT_BATCH_MAJOR_UNPACKED, (int)t, (int)n,
                                  (int)op->d.input, op->lens_host, &zero),
        "cudnnSetRNNDataDescriptor (x)");
    DNN(cudnnSetRNNDataDescriptor(op->yd, CUDNN_DATA_FLOAT, CUDNN_RNN_DATA_LAYOUT_BATCH_MAJOR_UNPACKED, (int)t, (int)n,
                                  (int)(nd * op->d.hidden), op->lens_host, &zero),
        "cudnnSetRNNDataDescriptor (y)");
    int dims[3] = {op->d.layers * nd, (int)n, (int)op->d.hidden};
    int strides[3] = {dims[1] * dims[2], dims[2], 1};
    DNN(cudnnSetTensorNdDescriptor(op->hd, CUDNN_DATA_FLOAT, 3, dims, strides), "cudnnSetTensorNdDescriptor (h)");
    DNN(cudnnSetTensorNdDescriptor(op->cd, CUDNN_DATA_FLOAT, 3, dims, strides), "cudnnSetTensorNdDescriptor (c)");
    return 0;
fail:
    return rc;
}

/* Where cuDNN keeps each matrix and bias, against the block's layout. */
static int map_weights(stk__rnn_op_t *op)
{
    int rc = 0, g = stk__rnn_gates(op->d.cell), nd = op->d.bidirectional ? 2 : 1;
    cudnnTensorDescriptor_t md = NULL, bd = NULL;
    void *space = NULL;
    size_t h = (size_t)op->d.hidden;
    op->npieces = (size_t)(op->d.layers * nd * 4 * g);
    if (!(op->pieces = calloc(op->npieces, sizeof(*op->pieces))))
        return stk__error(-ENOMEM, "rnn: out of memory");
    if ((rc = stk__cuda_op_alloc(op->c, &space, op->wbytes, "rnn weight space")) < 0)
        return rc;
    DNN(cudnnCreateTensorDescriptor(&md), "cudnnCreateTensorDescriptor");
    DNN(cudnnCreateTensorDescriptor(&bd), "cudnnCreateTensorDescriptor");
    op->direct = 1;
    size_t k = 0;
    for (int l = 0; l < op->d.layers; l++)
        for (int dir = 0; dir < nd; dir++) {
            size_t in = l == 0 ? (size_t)op->d.input : (size_t)nd * h;
            size_t o[4];
            for (int w = 0; w < 4; w++)
                o[w] = stk__rnn_param_offset(&op->d, l, dir, w, NULL);
            for (int lin = 0; lin < 2 * g; lin++) {
                void *ma = NULL, *ba = NULL;
                DNN(cudnnGetRNNWeightParams(op->c->dnn, op->rnn[1], l * nd + dir, op->wbytes, space, lin, md, &ma,
                                            bd, &ba),
                    "cudnnGetRNNWeightParams");
                int rec = lin >= g, gate = lin % g;
                /* the matrix: rows gate*H.. of weight_ih or weight_hh */
                piece_t pm = {o[rec] + (size_t)gate * h * (rec ? h : in), (size_t)((char *)ma - (char *)space) / 4,
                              h * (rec ? h : in)};
                piece_t pb = {o[2 + rec] + (size_t)gate * h, (size_t)((char *)ba - (char *)space) / 4, h};
                op->pieces[k++] = pm;
                op->pieces[k++] = pb;
                op->direct &= pm.block == pm.space && pb.block == pb.space;
            }
        }
fail:
    if (md)
        cudnnDestroyTensorDescriptor(md);
    if (bd)
        cudnnDestroyTensorDescriptor(bd);
    if (rc == 0 && op->direct)
        cudaFree(space);
    else
        op->wspace = space;
    return rc;
}

int stk__cuda_rnn_create(void *ctx, const stk__rnn_desc_t *d, stk__rnn_op_t **out)
{
    *out = NULL;
    if ((d->cell != STK__RNN_LSTM && d->cell != STK__RNN_GRU) || d->batch < 1 || d->steps < 1 || d->input < 1 ||
        d->hidden < 1 || d->layers < 1 || (d->bidirectional != 0 && d->bidirectional != 1) || !(d->dropout >= 0.0f) ||
        !(d->dropout < 1.0f) || d->batch > INT32_MAX || d->steps > INT32_MAX || d->input > INT32_MAX ||
        d->hidden > INT32_MAX)
        return stk__error(-EINVAL, "rnn: bad plan (cell %d, batch %lld, steps %lld, input %lld, hidden %lld, "
                                   "layers %d, bidirectional %d, dropout %g)",
                          d->cell, (long long)d->batch, (long long)d->steps, (long long)d->input,
                          (long long)d->hidden, d->layers, d->bidirectional, (double)d->dropout);
    cuda_ctx_t *c = ctx;
    int rc = stk__cu_unstick(c);
    if (rc)
        return rc;
    stk__rnn_op_t *op = calloc(1, sizeof(*op));
    if (!op)
        return stk__error(-ENOMEM, "rnn: out of memory");
    op->d = *d;
    op->c = c;
    size_t states = 0;
    if (!(op->lens_host = malloc((size_t)d->batch * sizeof(int32_t)))) {
        rc = stk__error(-ENOMEM, "rnn: out of memory");
        goto fail;
    }
    DNN(cudnnDropoutGetStatesSize(c->dnn, &states), "cudnnDropoutGetStatesSize");
    if ((rc = stk__cuda_op_alloc(c, &op->drop_states, states, "rnn dropout states")) < 0)
        goto fail;
    for (int k = 0; k < 2; k++) {
        DNN(cudnnCreateDropoutDescriptor(&op->drop[k]), "cudnnCreateDropoutDescriptor");
        /* one generator state, made once (by the second descriptor) */
        DNN(cudnnSetDropoutDescriptor(op->drop[k], c->dnn, k ? d->dropout : 0.0f, k ? op->drop_states : NULL,
                                      k ? states : 0, 0),
            "cudnnSetDropoutDescriptor");
        DNN(cudnnCreateRNNDescriptor(&op->rnn[k]), "cudnnCreateRNNDescriptor");
        DNN(cudnnSetRNNDescriptor_v8(op->rnn[k], CUDNN_RNN_ALGO_STANDARD,
                                     d->cell == STK__RNN_LSTM ? CUDNN_LSTM : CUDNN_GRU, CUDNN_RNN_DOUBLE_BIAS,
                                     d->bidirectional ? CUDNN_BIDIRECTIONAL : CUDNN_UNIDIRECTIONAL,
                                     CUDNN_LINEAR_INPUT, CUDNN_DATA_FLOAT, CUDNN_DATA_FLOAT, CUDNN_FMA_MATH,
                                     (int32_t)d->input, (int32_t)d->hidden, (int32_t)d->hidden, d->layers,
                                     op->drop[k], CUDNN_RNN_PADDED_IO_ENABLED),
            "cudnnSetRNNDescriptor_v8");
    }
    DNN(cudnnCreateRNNDataDescriptor(&op->xd), "cudnnCreateRNNDataDescriptor");
    DNN(cudnnCreateRNNDataDescriptor(&op->yd), "cudnnCreateRNNDataDescriptor");
    DNN(cudnnCreateTensorDescriptor(&op->hd), "cudnnCreateTensorDescriptor");
    DNN(cudnnCreateTensorDescriptor(&op->cd), "cudnnCreateTensorDescriptor");
    for (int64_t i = 0; i < d->batch; i++)
        op->lens_host[i] = (int32_t)d->steps;
    if ((rc = set_data(op, d->batch, d->steps)) < 0)
        goto fail;
    /* sized for the largest call: smaller ones need no more */
    DNN(cudnnGetRNNTempSpaceSizes(c->dnn, op->rnn[1], CUDNN_FWD_MODE_TRAINING, op->xd, &op->work_bytes,
                                  &op->reserve_bytes),
        "cudnnGetRNNTempSpaceSizes");
    DNN(cudnnGetRNNWeightSpaceSize(c->dnn, op->rnn[1], &op->wbytes), "cudnnGetRNNWeightSpaceSize");
    if (op->wbytes < stk__rnn_param_count(d) * sizeof(float)) {
        rc = stk__error(STK_EBACKEND, "rnn: cuDNN's weight space (%zu bytes) is smaller than the parameters",
                        op->wbytes);
        goto fail;
    }
    if ((rc = stk__cuda_op_alloc(c, &op->work, op->work_bytes, "rnn workspace")) < 0 ||
        (rc = stk__cuda_op_alloc(c, &op->reserve, op->reserve_bytes, "rnn reserve space")) < 0 ||
        (rc = stk__cuda_op_alloc(c, (void **)&op->lens_dev, (size_t)d->batch * sizeof(int32_t), "rnn lengths")) < 0 ||
        (rc = stk__cuda_op_alloc(c, (void **)&op->dx_scratch, (size_t)(d->batch * d->steps * d->input) * sizeof(float),
                                 "rnn input gradient")) < 0 ||
        (rc = map_weights(op)) < 0)
        goto fail;
    if (!op->direct && (rc = stk__cuda_op_alloc(c, (void **)&op->dwspace, op->wbytes, "rnn weight gradient")) < 0)
        goto fail;
    *out = op;
    return 0;
fail:
    stk__cuda_rnn_destroy(ctx, op);
    return rc;
}

/* The block's pieces into cuDNN's space (to = 1), or back. */
static int move_pieces(stk__rnn_op_t *op, float *space, float *block, int to)
{
    for (size_t k = 0; k < op->npieces; k++) {
        const piece_t *p = &op->pieces[k];
        float *dst = to ? space + p->space : block + p->block;
        const float *src = to ? block + p->block : space + p->space;
        int rc = stk__cu_status(cudaMemcpyAsync(dst, src, p->count * sizeof(float), cudaMemcpyDeviceToDevice,
                                                op->c->stream),
                                "rnn weights");
        if (rc)
            return rc;
    }
    return 0;
}

int stk__cuda_rnn_forward(void *ctx, stk__rnn_op_t *op, int train, const stk__rnn_args_t *a)
{
    cuda_ctx_t *c = ctx;
    int rc = stk__cu_unstick(c);
    if (rc)
        return rc;
    op->fwd_ok = 0;
    if (a->n < 1 || a->n > op->d.batch || a->t < 1 || a->t > op->d.steps)
        return stk__error(-EINVAL, "rnn: batch %lld x %lld steps exceeds the plan's %lld x %lld", (long long)a->n,
                          (long long)a->t, (long long)op->d.batch, (long long)op->d.steps);
    for (int64_t i = 0; i < a->n; i++) {
        int64_t len = a->lengths ? a->lengths[i] : a->t;
        /* cuDNN takes no empty sequence */
        if (len < 1 || len > a->t)
            return stk__error(-EINVAL, "rnn: length %lld of sequence %lld is outside [1, %lld] (the GPU takes no "
                                       "empty sequence)",
                              (long long)len, (long long)i, (long long)a->t);
        op->lens_host[i] = (int32_t)len;
    }
    if ((rc = set_data(op, a->n, a->t)) < 0 ||
        (rc = stk__cu_status(cudaMemcpyAsync(op->lens_dev, op->lens_host, (size_t)a->n * sizeof(int32_t),
                                             cudaMemcpyHostToDevice, c->stream),
                             "rnn lengths")) < 0)
        return rc;
    /* the host lengths must outlive the copy */
    if ((rc = stk__cu_status(cudaStreamSynchronize(c->stream), "rnn lengths")) < 0)
        return rc;
    const float *w = a->w;
    if (!op->direct) {
        if ((rc = move_pieces(op, op->wspace, (float *)a->w, 1)) < 0)
            return rc;
        w = op->wspace;
    }
    int which = train && op->d.dropout > 0.0f;
    rc = stk__dnn_status(cudnnRNNForward(c->dnn, op->rnn[which], CUDNN_FWD_MODE_TRAINING, op->lens_dev, op->xd, a->x,
                                         op->yd, a->y, op->hd, a->h0, a->hn, op->cd,
                                         op->d.cell == STK__RNN_LSTM ? a->c0 : NULL,
                                         op->d.cell == STK__RNN_LSTM ? a->cn : NULL, op->wbytes, w, op->work_bytes,
                                         op->work, op->reserve_bytes, op->reserve),
                         "cudnnRNNForward");
    if (rc < 0)
        return rc;
    op->fwd_ok = 1;
    op->which = which;
    op->n = a->n;
    op->t = a->t;
    op->x = a->x;
    op->y = a->y;
    op->h0 = a->h0;
    op->c0 = a->c0;
    return 0;
}

int stk__cuda_rnn_backward(void *ctx, stk__rnn_op_t *op, const stk__rnn_args_t *a)
{
    cuda_ctx_t *c = ctx;
    int rc = stk__cu_unstick(c);
    if (rc)
        return rc;
    if (!op->fwd_ok)
        return stk__error(STK_ESTATE, "rnn: backward without a forward before it");
    if (a->n != op->n || a->t != op->t)
        return stk__error(-EINVAL, "rnn: backward of %lld x %lld, but the forward was %lld x %lld", (long long)a->n,
                          (long long)a->t, (long long)op->n, (long long)op->t);
    int lstm = op->d.cell == STK__RNN_LSTM;
    const float *w = op->direct ? a->w : op->wspace;
    float *dw = op->direct ? a->dw : op->dwspace;
    float *dx = a->dx ? a->dx : op->dx_scratch;
    size_t nx = (size_t)(a->n * a->t * op->d.input);
    /* padding positions of dx are zero; the gradient of the weights is
     * added to what is there (WGRAD_MODE_ADD), so it starts at zero */
    if ((rc = stk__cu_status(cudaMemsetAsync(dx, 0, nx * sizeof(float), c->stream), "rnn dx")) < 0 ||
        (rc = stk__cu_status(cudaMemsetAsync(dw, 0, op->direct ? stk__rnn_param_count(&op->d) * sizeof(float)
                                                               : op->wbytes,
                                             c->stream),
                             "rnn dw")) < 0)
        return rc;
    rc = stk__dnn_status(cudnnRNNBackwardData_v8(c->dnn, op->rnn[op->which], op->lens_dev, op->yd, op->y, a->dy, op->xd,
                                                 dx, op->hd, op->h0, a->dhn, a->dh0, op->cd, lstm ? op->c0 : NULL,
                                                 lstm ? a->dcn : NULL, lstm ? a->dc0 : NULL, op->wbytes, w,
                                                 op->work_bytes, op->work, op->reserve_bytes, op->reserve),
                         "cudnnRNNBackwardData_v8");
    if (rc == 0)
        rc = stk__dnn_status(cudnnRNNBackwardWeights_v8(c->dnn, op->rnn[op->which], CUDNN_WGRAD_MODE_ADD,
                                                        op->lens_dev, op->xd, op->x, op->hd, op->h0, op->yd, op->y,
                                                        op->wbytes, dw, op->work_bytes, op->work, op->reserve_bytes,
                                                        op->reserve),
                             "cudnnRNNBackwardWeights_v8");
    if (rc == 0 && !op->direct)
        rc = move_pieces(op, op->dwspace, a->dw, 0);
    return rc;
}
