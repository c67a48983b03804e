/* SPDX-License-Identifier: MIT */
/* CUDA graphs of a whole training step (engine/graph.c decides when):
 * stream capture of the context's stream, instantiation, launch. Every
 * slot of the step already enqueues on that one stream; what a replay
 * must see change (dropout's step, the optimizer's scalars: the lr, Adam's
 * bias corrections) is read from one device block that the graph's first
 * node copies from pinned host memory, which the host fills before each
 * launch. Capture runs in thread-local mode, so that a call that would
 * synchronize inside the step fails the capture (and is reported) rather
 * than being recorded wrong. */
#include "cuda.h"

#include <errno.h>
#include <string.h>

int stk__cuda_graph_init(cuda_ctx_t *c)
{
    int rc = stk__cuda_op_alloc(c, (void **)&c->graph_dev, CU_GRAPH_BYTES, "the graph block");
    if (rc == 0)
        rc = stk__cu_status(cudaMallocHost((void **)&c->graph_host, CU_GRAPH_BYTES), "cudaMallocHost (graph block)");
    if (rc == 0)
        memset(c->graph_host, 0, CU_GRAPH_BYTES);
    return rc;
}

void stk__cuda_graph_fini(cuda_ctx_t *c)
{
    cudaFree(c->graph_dev);
    cudaFreeHost(c->graph_host);
    c->graph_dev = c->graph_host = NULL;
}

int stk__cuda_graph_begin(void *ctx)
{
    cuda_ctx_t *c = ctx;
    int rc = stk__cu_unstick(c);
    if (rc)
        return rc;
    if (c->capturing)
        return stk__error(STK_ESTATE, "CUDA graph: a capture is already under way");
    if ((rc = stk__cu_status(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal),
                             "cudaStreamBeginCapture")))
        return rc;
    c->capturing = 1;
    /* The first node: this launch's step and scalars, as the host wrote
     * them before the launch (pinned memory is read when the node runs). */
    size_t bytes = CU_GRAPH_KOFF + (size_t)c->kslots * sizeof(stk__optim_scalars_t);
    rc = stk__cu_status(cudaMemcpyAsync(c->graph_dev, c->graph_host, bytes, cudaMemcpyHostToDevice, c->stream),
                        "CUDA graph: the step's scalars");
    if (rc) {
        cudaGraph_t g = NULL;
        cudaStreamEndCapture(c->stream, &g);
        if (g)
            cudaGraphDestroy(g);
        c->capturing = 0;
    }
    return rc;
}

int stk__cuda_graph_end(void *ctx, void **out)
{
    cuda_ctx_t *c = ctx;
    *out = NULL;
    if (!c->capturing)
        return stk__error(STK_ESTATE, "CUDA graph: no capture under way");
    c->capturing = 0;
    cudaGraph_t g = NULL;
    cudaGraphExec_t exec = NULL;
    int rc = stk__cu_status(cudaStreamEndCapture(c->stream, &g), "CUDA graph: capturing the training step");
    /* A slot that failed during the capture kept its error (stk__cu_stick):
     * the graph would lack its work. */
    int kept = stk__cu_unstick(c);
    if (rc == 0 && kept)
        rc = kept;
    if (rc == 0)
        rc = stk__cu_status(cudaGraphInstantiateWithFlags(&exec, g, 0), "CUDA graph: cudaGraphInstantiate");
    if (g)
        cudaGraphDestroy(g);
    if (rc)
        return rc;
    *out = exec;
    return 0;
}

int stk__cuda_graph_launch(void *ctx, void *graph)
{
    cuda_ctx_t *c = ctx;
    int rc = stk__cu_unstick(c);
    if (rc)
        return rc;
    return stk__cu_status(cudaGraphLaunch((cudaGraphExec_t)graph, c->stream), "cudaGraphLaunch");
}

void stk__cuda_graph_destroy(void *ctx, void *graph)
{
    (void)ctx;
    if (graph)
        cudaGraphExecDestroy((cudaGraphExec_t)graph);
}

void stk__cuda_graph_note_step(void *ctx, uint64_t step)
{
    cuda_ctx_t *c = ctx;
    memcpy(c->graph_host, &step, sizeof step);
}

int stk__cuda_graph_note_optim(void *ctx, stk__op_t *op, const stk__optim_scalars_t *k)
{
    cuda_ctx_t *c = ctx;
    if (!op || op->kind != CU_OP_OPTIM || op->kslot < 0)
        return stk__error(STK_ESTATE, "CUDA graph: an optimizer plan without a scalar slot (over %d groups)",
                          CU_GRAPH_KSLOTS);
    memcpy(c->graph_host + CU_GRAPH_KOFF + (size_t)op->kslot * sizeof(*k), k, sizeof(*k));
    return 0;
}
