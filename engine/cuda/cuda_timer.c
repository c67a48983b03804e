/* SPDX-License-Identifier: MIT */
/* The backend's timer marks (backend.h, timer_*): a pool of CUDA events
 * with timing on, recorded on the model's stream. The pool grows only in
 * timer_reserve, which the engine calls when profiling starts; a step's
 * marks reuse the events and allocate nothing. */
#include "cuda.h"

#include <errno.h>
#include <stdlib.h>

int stk__cuda_timer_reserve(void *ctx, int n)
{
    cuda_ctx_t *c = ctx;
    if (n < 0)
        return stk__error(-EINVAL, "timer: %d marks", n);
    if (n <= c->nmarks)
        return 0;
    cudaEvent_t *ev = realloc(c->marks, (size_t)n * sizeof(*ev));
    if (!ev)
        return stk__error(-ENOMEM, "timer: %d marks", n);
    c->marks = ev;
    while (c->nmarks < n) {
        int rc = stk__cu_status(cudaEventCreate(&c->marks[c->nmarks]), "timer: creating an event");
        if (rc < 0)
            return rc;
        c->nmarks++;
    }
    return 0;
}

int stk__cuda_timer_mark(void *ctx, int i)
{
    cuda_ctx_t *c = ctx;
    if (i < 0 || i >= c->nmarks)
        return stk__error(-EINVAL, "timer: mark %d of %d", i, c->nmarks);
    /* A mark in a graph being recorded would become a node of it. */
    if (c->capturing)
        return stk__error(STK_ESTATE, "timer: a mark while a CUDA graph is recorded");
    return stk__cu_status(cudaEventRecord(c->marks[i], c->stream), "timer: recording a mark");
}

int stk__cuda_timer_elapsed(void *ctx, int a, int b, double *sec)
{
    cuda_ctx_t *c = ctx;
    *sec = 0.0;
    if (a < 0 || b < 0 || a >= c->nmarks || b >= c->nmarks)
        return stk__error(-EINVAL, "timer: marks %d, %d of %d", a, b, c->nmarks);
    int rc = stk__cu_status(cudaEventSynchronize(c->marks[b]), "timer: waiting for a mark");
    float ms = 0.0f;
    if (rc == 0)
        rc = stk__cu_status(cudaEventElapsedTime(&ms, c->marks[a], c->marks[b]), "timer: elapsed time");
    if (rc == 0)
        *sec = 1e-3 * (double)ms;
    return rc;
}

void stk__cuda_timer_fini(cuda_ctx_t *c)
{
    for (int i = 0; i < c->nmarks; i++)
        cudaEventDestroy(c->marks[i]);
    free(c->marks);
    c->marks = NULL;
    c->nmarks = 0;
}
