/* SPDX-License-Identifier: MIT */
/* CPU backend, the optimizer slots: a parameter group's plan is its ranges
 * cut into chunks, and an update runs the plain C kernels of
 * optim_kernels.c over the chunks, on the OpenMP threads when the group is
 * large (elementwise, so the bits do not depend on the split). */
#include "cpu.h"

#include <errno.h>
#include <stdlib.h>

int stk__cpu_optim_create(void *ctx, const stk_optim_range_t *ranges, size_t n_ranges, stk__op_t **out)
{
    (void)ctx;
    *out = NULL;
    size_t n = 0;
    for (size_t r = 0; r < n_ranges; r++)
        n += (ranges[r].count + STK__CPU_OPTIM_CHUNK - 1) / STK__CPU_OPTIM_CHUNK;
    stk__op_t *op = calloc(1, sizeof(*op));
    if (!op || !(op->chunks = calloc(n ? n : 1, sizeof(*op->chunks)))) {
        free(op);
        return stk__error(-ENOMEM, "cpu optimizer plan: out of memory");
    }
    op->kind = OP_OPTIM;
    for (size_t r = 0; r < n_ranges; r++)
        for (size_t at = 0; at < ranges[r].count; at += STK__CPU_OPTIM_CHUNK) {
            size_t left = ranges[r].count - at;
            op->chunks[op->nchunks++] =
                (stk_optim_range_t){ranges[r].offset + at, left < STK__CPU_OPTIM_CHUNK ? left : STK__CPU_OPTIM_CHUNK};
            op->total += op->chunks[op->nchunks - 1].count;
        }
    *out = op;
    return 0;
}

static void chunk_update(const stk__optim_scalars_t *k, const stk_optim_range_t *c, float *params,
                         const float *grads, float *s0, float *s1, float *s2)
{
    size_t a = c->offset;
    stk__optim_kernel(k, params + a, grads + a, s0 ? s0 + a : NULL, s1 ? s1 + a : NULL, s2 ? s2 + a : NULL,
                      c->count);
}

int stk__cpu_optim_update(void *ctx, stk__op_t *op, const stk__optim_scalars_t *k, float *params,
                          const float *grads, float *s0, float *s1, float *s2)
{
    (void)ctx;
    if (!op || op->kind != OP_OPTIM)
        return stk__error(-EINVAL, "cpu optimizer update: not an optimizer plan");
    ptrdiff_t nc = (ptrdiff_t)op->nchunks;
    /* Below four chunks a parallel region costs more than it saves. */
#pragma omp parallel for schedule(static) if (op->total >= 4 * STK__CPU_OPTIM_CHUNK)
    for (ptrdiff_t c = 0; c < nc; c++)
        chunk_update(k, &op->chunks[c], params, grads, s0, s1, s2);
    return 0;
}
