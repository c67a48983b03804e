/* SPDX-License-Identifier: MIT */
/* stoker._stoker.Batch and FieldBuffer: a batch in a loader's slot and
 * each of its fields exported as a buffer (format, shape) that NumPy views
 * without a copy; the slot goes back (stk__py_batch_return) once the batch
 * is released and no buffer of it is alive. Its own file: the buffer
 * protocol side, apart from the Loader's threads. */
#include "_stoker.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>


typedef struct {
    PyObject_HEAD
    BatchObject *batch; /* strong reference */
    void *data;
    Py_ssize_t itemsize;
    int ndim;
    Py_ssize_t shape[STK_MAX_DIMS + 1];
    Py_ssize_t strides[STK_MAX_DIMS + 1];
    char format[4];
} FieldBufObject;

static const char *dtype_format(stk_dtype_t dt)
{
    switch (dt) {
    case STK_DTYPE_U8: return "B";
    case STK_DTYPE_I8: return "b";
    case STK_DTYPE_I32: return "i";
    case STK_DTYPE_I64: return "q";
    case STK_DTYPE_F16: return "e";
    case STK_DTYPE_BF16: return "H"; /* no buffer code: the Python layer views it as bfloat16 */
    case STK_DTYPE_F32: return "f";
    default: return NULL;
    }
}

static int batch_usable(BatchObject *B)
{
    if (B->loader->closed) {
        PyErr_SetString(stk__py_released_error, "the loader of this batch is closed");
        return -1;
    }
    if (B->released) {
        PyErr_Format(stk__py_released_error,
                     "batch %llu of epoch %llu was released: its arrays are views of a slot that "
                     "is reused (copy what you keep, or use copy=True)",
                     (unsigned long long)B->b.number, (unsigned long long)B->b.epoch);
        return -1;
    }
    return 0;
}

static int FieldBuf_getbuffer(FieldBufObject *self, Py_buffer *view, int flags)
{
    BatchObject *B = self->batch;
    /* A buffer is taken while the batch is usable; once taken it keeps the
     * slot until released (stk__py_batch_return). */
    if (batch_usable(B) < 0) {
        view->obj = NULL;
        return -1;
    }
    /* Writable: a loop may normalise in place; the slot is this batch's
     * until it goes back. */
    view->buf = self->data;
    view->obj = (PyObject *)self;
    Py_INCREF(self);
    view->itemsize = self->itemsize;
    Py_ssize_t n = self->itemsize;
    for (int d = 0; d < self->ndim; d++)
        n *= self->shape[d];
    view->len = n;
    view->readonly = 0;
    view->ndim = self->ndim;
    view->format = (flags & PyBUF_FORMAT) ? self->format : NULL;
    view->shape = (flags & PyBUF_ND) == PyBUF_ND ? self->shape : NULL;
    view->strides = (flags & PyBUF_STRIDES) == PyBUF_STRIDES ? self->strides : NULL;
    view->suboffsets = NULL;
    view->internal = NULL;
    B->exports++;
    return 0;
}

static void FieldBuf_releasebuffer(FieldBufObject *self, Py_buffer *view)
{
    (void)view;
    BatchObject *B = self->batch;
    if (--B->exports == 0 && B->released)
        stk__py_batch_return(B);
}

static PyBufferProcs FieldBuf_as_buffer = {
    .bf_getbuffer = (getbufferproc)FieldBuf_getbuffer,
    .bf_releasebuffer = (releasebufferproc)FieldBuf_releasebuffer,
};

static void FieldBuf_dealloc(FieldBufObject *self)
{
    Py_XDECREF(self->batch);
    PyObject_Free(self);
}

PyTypeObject stk__py_fieldbuf_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "stoker._stoker.FieldBuffer",
    .tp_basicsize = sizeof(FieldBufObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One field of a batch as a buffer (np.asarray views it without a copy).",
    .tp_dealloc = (destructor)FieldBuf_dealloc,
    .tp_as_buffer = &FieldBuf_as_buffer,
};

static PyObject *make_buf(BatchObject *B, void *data, stk_dtype_t dt, int ndim, const int64_t *shape)
{
    const char *fmt = dtype_format(dt);
    if (!fmt) {
        PyErr_Format(PyExc_TypeError, "field dtype %d has no buffer format", (int)dt);
        return NULL;
    }
    FieldBufObject *f = PyObject_New(FieldBufObject, &stk__py_fieldbuf_type);
    if (!f)
        return NULL;
    Py_INCREF(B);
    f->batch = B;
    f->data = data;
    f->itemsize = (Py_ssize_t)stk_dtype_size(dt);
    f->ndim = ndim;
    snprintf(f->format, sizeof f->format, "%s", fmt);
    Py_ssize_t stride = f->itemsize;
    for (int d = ndim - 1; d >= 0; d--) {
        f->shape[d] = (Py_ssize_t)shape[d];
        f->strides[d] = stride;
        stride *= f->shape[d];
    }
    return (PyObject *)f;
}

static int find_field(BatchObject *B, PyObject *name)
{
    const char *s = PyUnicode_AsUTF8(name);
    if (!s)
        return -1;
    for (uint32_t f = 0; f < B->b.nfields; f++)
        if (!strcmp(B->b.fields[f].name, s))
            return (int)f;
    char names[STK_MAX_FIELDS * (STK_FIELD_NAME_MAX + 2)] = "";
    for (uint32_t f = 0; f < B->b.nfields; f++) {
        strcat(names, f ? ", " : "");
        strcat(names, B->b.fields[f].name);
    }
    PyErr_Format(PyExc_KeyError, "no field '%s' in the batch (fields: %s)", s, names);
    return -1;
}

static PyObject *Batch_field(BatchObject *self, PyObject *name)
{
    if (batch_usable(self) < 0)
        return NULL;
    int f = find_field(self, name);
    if (f < 0)
        return NULL;
    const stk_batch_field_t *bf = &self->b.fields[f];
    return make_buf(self, bf->data, bf->dtype, (int)bf->ndim, bf->shape);
}

static PyObject *Batch_lengths(BatchObject *self, PyObject *name)
{
    if (batch_usable(self) < 0)
        return NULL;
    int f = find_field(self, name);
    if (f < 0)
        return NULL;
    const stk_batch_field_t *bf = &self->b.fields[f];
    if (!bf->lengths)
        Py_RETURN_NONE;
    int64_t n = (int64_t)self->b.size;
    return make_buf(self, (void *)bf->lengths, STK_DTYPE_I64, 1, &n);
}

static PyObject *Batch_indices(BatchObject *self, PyObject *unused)
{
    (void)unused;
    if (batch_usable(self) < 0)
        return NULL;
    int64_t n = (int64_t)self->b.size;
    /* u64 indices, below 2^63: viewed as i64 for NumPy and torch alike. */
    return make_buf(self, (void *)self->b.indices, STK_DTYPE_I64, 1, &n);
}

static PyObject *Batch_names(BatchObject *self, PyObject *unused)
{
    (void)unused;
    PyObject *t = PyTuple_New(self->b.nfields);
    for (uint32_t f = 0; t && f < self->b.nfields; f++) {
        PyObject *s = PyUnicode_FromString(self->b.fields[f].name);
        if (!s) {
            Py_CLEAR(t);
            break;
        }
        PyTuple_SET_ITEM(t, f, s);
    }
    return t;
}

static PyObject *Batch_dtype(BatchObject *self, PyObject *name)
{
    int f = find_field(self, name);
    if (f < 0)
        return NULL;
    return PyUnicode_FromString(stk_dtype_name(self->b.fields[f].dtype));
}

/* The user is done: the slot goes back once no buffer of it is alive. */
static PyObject *Batch_release(BatchObject *self, PyObject *unused)
{
    (void)unused;
    if (!self->released) {
        self->released = 1;
        if (self->exports == 0)
            stk__py_batch_return(self);
    }
    Py_RETURN_NONE;
}

static void Batch_dealloc(BatchObject *self)
{
    self->released = 1;
    stk__py_batch_return(self);
    Py_XDECREF(self->loader);
    PyObject_Free(self);
}

static PyObject *Batch_get_released(BatchObject *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->released);
}

static PyObject *Batch_get_returned(BatchObject *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->returned);
}

static PyObject *Batch_get_epoch(BatchObject *self, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLongLong(self->b.epoch);
}

static PyObject *Batch_get_number(BatchObject *self, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLongLong(self->b.number);
}

static PyObject *Batch_get_size(BatchObject *self, void *c)
{
    (void)c;
    return PyLong_FromSize_t(self->b.size);
}

static PyObject *Batch_get_exports(BatchObject *self, void *c)
{
    (void)c;
    return PyLong_FromSsize_t(self->exports);
}

static PyMethodDef Batch_methods[] = {
    {"field", (PyCFunction)Batch_field, METH_O, "field(name) -> FieldBuffer"},
    {"lengths", (PyCFunction)Batch_lengths, METH_O, "lengths(name) -> FieldBuffer or None"},
    {"indices", (PyCFunction)Batch_indices, METH_NOARGS, "indices() -> FieldBuffer of i64"},
    {"names", (PyCFunction)Batch_names, METH_NOARGS, "names() -> field names"},
    {"dtype", (PyCFunction)Batch_dtype, METH_O, "dtype(name) -> 'u8', 'f32', ..."},
    {"release", (PyCFunction)Batch_release, METH_NOARGS, "release(): done with this batch."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Batch_getset[] = {
    {"released", (getter)Batch_get_released, NULL, NULL, NULL},
    {"returned", (getter)Batch_get_returned, NULL, "True once its slot went back", NULL},
    {"epoch", (getter)Batch_get_epoch, NULL, NULL, NULL},
    {"number", (getter)Batch_get_number, NULL, NULL, NULL},
    {"size", (getter)Batch_get_size, NULL, NULL, NULL},
    {"exports", (getter)Batch_get_exports, NULL, "buffers of it alive", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject stk__py_batch_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "stoker._stoker.Batch",
    .tp_basicsize = sizeof(BatchObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One batch in a shared-memory slot (see stoker.Batch).",
    .tp_dealloc = (destructor)Batch_dealloc,
    .tp_methods = Batch_methods,
    .tp_getset = Batch_getset,
};
