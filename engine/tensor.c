/* SPDX-License-Identifier: MIT */
/* Tensor views: shape, strides and dtype over memory someone else owns.
 * Nothing here allocates or copies. */
#include "internal.h"
#include "stoker/engine.h"

#include <errno.h>
#include <string.h>

static void contiguous_strides(stk_tensor_t *t)
{
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        t->stride[i] = s;
        s *= t->shape[i];
    }
}

int stk_tensor_init(stk_tensor_t *t, void *data, stk_dtype_t dtype, int ndim, const int64_t *shape)
{
    if (!t || ndim < 1 || ndim > STK_TENSOR_MAX_DIMS || !shape || stk_dtype_size(dtype) == 0)
        return stk__error(-EINVAL, "tensor: bad ndim %d or dtype", ndim);
    memset(t, 0, sizeof(*t));
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return stk__error(-EINVAL, "tensor: dimension %d is negative", i);
        t->shape[i] = shape[i];
    }
    t->data = data;
    t->dtype = dtype;
    t->device = STK_DEVICE_CPU;
    t->ndim = ndim;
    contiguous_strides(t);
    return 0;
}

int64_t stk_tensor_numel(const stk_tensor_t *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

int stk_tensor_is_contiguous(const stk_tensor_t *t)
{
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->stride[i] != s)
            return 0;
        s *= t->shape[i];
    }
    return 1;
}

int stk_tensor_narrow(stk_tensor_t *out, const stk_tensor_t *t, int dim, int64_t start, int64_t len)
{
    if (!out || !t || dim < 0 || dim >= t->ndim)
        return stk__error(-EINVAL, "tensor narrow: bad dim %d", dim);
    if (start < 0 || len < 0 || start + len > t->shape[dim])
        return stk__error(STK_ESHAPE, "tensor narrow: [%lld, %lld) outside dim %d of size %lld",
                          (long long)start, (long long)(start + len), dim, (long long)t->shape[dim]);
    stk_tensor_t v = *t;
    v.data = (char *)t->data + (size_t)(start * t->stride[dim]) * stk_dtype_size(t->dtype);
    v.shape[dim] = len;
    if (dim == 0 && v.lengths)
        v.lengths += start; /* the lengths of the samples kept */
    *out = v;
    return 0;
}

int stk_tensor_reshape(stk_tensor_t *out, const stk_tensor_t *t, int ndim, const int64_t *shape)
{
    if (!out || !t || !shape || ndim < 1 || ndim > STK_TENSOR_MAX_DIMS)
        return stk__error(-EINVAL, "tensor reshape: bad ndim %d", ndim);
    if (!stk_tensor_is_contiguous(t))
        return stk__error(STK_ESTATE, "tensor reshape: the tensor is not contiguous");
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return stk__error(-EINVAL, "tensor reshape: dimension %d is negative", i);
        n *= shape[i];
    }
    if (n != stk_tensor_numel(t))
        return stk__error(STK_ESHAPE, "tensor reshape: %lld elements into %lld", (long long)stk_tensor_numel(t),
                          (long long)n);
    stk_tensor_t v = *t;
    v.ndim = ndim;
    for (int i = 0; i < STK_TENSOR_MAX_DIMS; i++)
        v.shape[i] = i < ndim ? shape[i] : 0;
    contiguous_strides(&v);
    *out = v;
    return 0;
}
