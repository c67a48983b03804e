/* SPDX-License-Identifier: MIT */
/* Element-wise reductions on host memory, for the backends that combine
 * buffers themselves (TCP) and for average after a sum (MPI has no
 * average). Plain loops the compiler vectorizes. */
#include "comm_impl.h"

#include <errno.h>

int stk__host_reduces(stk_dtype_t dt)
{
    return dt == STK_DTYPE_F32 || dt == STK_DTYPE_I32 || dt == STK_DTYPE_I64;
}

#define REDUCE_LOOP(T)                                                  \
    do {                                                                \
        T *d = dst;                                                     \
        const T *s = src;                                               \
        switch (op) {                                                   \
        case STK_REDUCE_SUM:                                            \
        case STK_REDUCE_AVG:                                            \
            for (size_t i = 0; i < count; i++)                          \
                d[i] += s[i];                                           \
            break;                                                      \
        case STK_REDUCE_MAX:                                            \
            for (size_t i = 0; i < count; i++)                          \
                d[i] = s[i] > d[i] ? s[i] : d[i];                       \
            break;                                                      \
        case STK_REDUCE_MIN:                                            \
            for (size_t i = 0; i < count; i++)                          \
                d[i] = s[i] < d[i] ? s[i] : d[i];                       \
            break;                                                      \
        }                                                               \
    } while (0)

int stk__reduce_host(void *dst, const void *src, size_t count, stk_dtype_t dt, stk_reduce_op_t op)
{
    switch (dt) {
    case STK_DTYPE_F32: REDUCE_LOOP(float); return 0;
    case STK_DTYPE_I32: REDUCE_LOOP(int32_t); return 0;
    case STK_DTYPE_I64: REDUCE_LOOP(int64_t); return 0;
    default: return -ENOTSUP;
    }
}

void stk__divide_host(void *buf, size_t count, stk_dtype_t dt, int n)
{
    /* Division, not multiplication by 1/n: what PyTorch's DDP does
     * (grad.div_(world_size)), so averages match it bit for bit. */
    switch (dt) {
    case STK_DTYPE_F32: {
        float *b = buf;
        float fn = (float)n;
        for (size_t i = 0; i < count; i++)
            b[i] /= fn;
        break;
    }
    case STK_DTYPE_I32: {
        int32_t *b = buf;
        for (size_t i = 0; i < count; i++)
            b[i] /= n;
        break;
    }
    case STK_DTYPE_I64: {
        int64_t *b = buf;
        for (size_t i = 0; i < count; i++)
            b[i] /= n;
        break;
    }
    default:
        break;
    }
}
