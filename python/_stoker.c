/* SPDX-License-Identifier: MIT */
/* stoker._stoker: the C half of the Python module, over the public API only
 * (stoker/loader.h, stoker/pack.h). A Loader hands out Batches; a Batch
 * exports each field as a buffer (format, shape) that NumPy views without
 * a copy. The slot a batch lives in goes back to the loader once the batch
 * is released and no buffer of it is exported any more: an array kept past
 * release keeps its data (never stale) and holds one slot. The GIL is
 * released while waiting for a batch and while packing. Errors raise
 * stoker.Error subclasses carrying the library's message.
 *
 * This file holds the exceptions, the module's small functions and its
 * init; the Loader, the Batch and packing are in files of their own
 * (see _stoker.h). */
#include "_stoker.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

/* ---- Errors ---------------------------------------------------------- */

static PyObject *Error;         /* stoker.Error */
PyObject *stk__py_released_error; /* a released batch used again */

static const struct {
    int code;
    const char *name; /* class name in stoker */
    const char *doc;
    PyObject *type;
} err_classes[] = {
#define E(code, name, doc) {code, name, doc, NULL}
    E(STK_EWORKER, "WorkerError", "A worker process died or failed (pid and signal in the message)."),
    E(STK_EDATA, "DataError", "Corrupt or inconsistent data (shard and record in the message)."),
    E(STK_EFORMAT, "FormatError", "Not a Stoker file or not the expected input format."),
    E(STK_ECONFIG, "ConfigError", "A bad argument or configuration."),
    E(STK_ESHAPE, "ShapeError", "Shapes or sizes disagree."),
    E(STK_ELIMIT, "LimitError", "A system limit is too low (named in the message)."),
    E(STK_ESTATE, "StateError", "The call is not valid in the object's current state."),
    E(STK_EEMPTY, "EmptyError", "An empty data set or input."),
#undef E
};
#define N_ERR_CLASSES (sizeof err_classes / sizeof err_classes[0])
static PyObject *err_types[N_ERR_CLASSES];

PyObject *stk__py_error_type(int rc)
{
    PyObject *type = Error;
    for (size_t i = 0; i < N_ERR_CLASSES; i++)
        if (err_classes[i].code == rc)
            type = err_types[i];
    return type;
}

/* Raises the exception for a Stoker status: its own class, or stoker.Error
 * (with errno set for POSIX codes), message from stk_error_message(). */
PyObject *stk__py_raise(int rc)
{
    PyObject *type = stk__py_error_type(rc);
    const char *ctx = stk_error_message();
    char msg[2048];
    snprintf(msg, sizeof msg, "%s", ctx && *ctx ? ctx : stk_strerror(rc));
    PyObject *exc = PyObject_CallFunction(type, "s", msg);
    if (!exc)
        return NULL;
    PyObject *code = PyLong_FromLong(rc), *name = PyUnicode_FromString(stk_err_name(rc));
    if (code && name) {
        PyObject_SetAttrString(exc, "code", code);
        PyObject_SetAttrString(exc, "name", name);
        if (rc > -1000 && rc < 0) {
            PyObject *en = PyLong_FromLong(-rc);
            if (en)
                PyObject_SetAttrString(exc, "errno", en);
            Py_XDECREF(en);
        }
    }
    Py_XDECREF(code);
    Py_XDECREF(name);
    PyErr_SetObject(type, exc);
    Py_DECREF(exc);
    return NULL;
}


static PyObject *mod_forkserver_start(PyObject *mod, PyObject *unused)
{
    (void)mod;
    (void)unused;
    int rc = stk_loader_forkserver_start();
    if (rc)
        return stk__py_raise(rc);
    Py_RETURN_NONE;
}

static PyObject *mod_forkserver_stop(PyObject *mod, PyObject *unused)
{
    (void)mod;
    (void)unused;
    stk_loader_forkserver_stop();
    Py_RETURN_NONE;
}

static PyObject *mod_rng_mix(PyObject *mod, PyObject *args)
{
    (void)mod;
    unsigned long long a, b;
    if (!PyArg_ParseTuple(args, "KK", &a, &b))
        return NULL;
    return PyLong_FromUnsignedLongLong(stk_rng_mix(a, b));
}

static PyObject *mod_buffer_address(PyObject *mod, PyObject *arg)
{
    (void)mod;
    Py_buffer v;
    if (PyObject_GetBuffer(arg, &v, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *r = Py_BuildValue("(Kn)", (unsigned long long)(uintptr_t)v.buf, v.len);
    PyBuffer_Release(&v);
    return r;
}

static PyMethodDef mod_methods[] = {
    {"pack", (PyCFunction)(void (*)(void))stk__py_pack, METH_VARARGS | METH_KEYWORDS,
     "pack(format, inputs, out, field=None, limit=0, level=None, dict=True, dict_size=65536, "
     "records_per_shard=10000, prefix='shard', overwrite=False) -> dict"},
    {"pack_arrays", (PyCFunction)(void (*)(void))stk__py_pack_arrays, METH_VARARGS | METH_KEYWORDS,
     "pack_arrays(out, names, arrays, **config) -> dict"},
    {"verify", (PyCFunction)stk__py_verify, METH_O, "verify(path) -> {'records', 'bad'}"},
    {"forkserver_start", (PyCFunction)mod_forkserver_start, METH_NOARGS, NULL},
    {"forkserver_stop", (PyCFunction)mod_forkserver_stop, METH_NOARGS, NULL},
    {"rng_mix", (PyCFunction)mod_rng_mix, METH_VARARGS, "stk_rng_mix(a, b)"},
    {"buffer_address", (PyCFunction)mod_buffer_address, METH_O, "(address, length) of a buffer"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_stoker", "The C half of stoker.", -1, mod_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__stoker(void);
PyMODINIT_FUNC PyInit__stoker(void)
{
    if (PyType_Ready(&stk__py_loader_type) < 0 || PyType_Ready(&stk__py_batch_type) < 0 ||
        PyType_Ready(&stk__py_fieldbuf_type) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    PyObject *threading = PyImport_ImportModule("threading");
    PyObject *mt = threading ? PyObject_CallMethod(threading, "main_thread", NULL) : NULL;
    PyObject *ident = mt ? PyObject_GetAttrString(mt, "ident") : NULL;
    stk__py_main_thread_ident = ident ? PyLong_AsUnsignedLong(ident) : 0;
    Py_XDECREF(ident);
    Py_XDECREF(mt);
    Py_XDECREF(threading);
    if (PyErr_Occurred())
        return NULL;
    Error = PyErr_NewExceptionWithDoc("stoker.Error",
                                      "An error from the Stoker library: .code (negative status), "
                                      ".name (e.g. 'STK_EDATA'), the message names the file, "
                                      "record, pid or signal.",
                                      NULL, NULL);
    if (!Error || PyModule_AddObjectRef(m, "Error", Error) < 0)
        return NULL;
    for (size_t i = 0; i < N_ERR_CLASSES; i++) {
        char qual[64];
        snprintf(qual, sizeof qual, "stoker.%s", err_classes[i].name);
        err_types[i] = PyErr_NewExceptionWithDoc(qual, err_classes[i].doc, Error, NULL);
        if (!err_types[i] || PyModule_AddObjectRef(m, err_classes[i].name, err_types[i]) < 0)
            return NULL;
    }
    stk__py_released_error = PyErr_NewExceptionWithDoc(
        "stoker.ReleasedError", "A released batch (or one of a closed loader) was used.", Error, NULL);
    if (!stk__py_released_error || PyModule_AddObjectRef(m, "ReleasedError", stk__py_released_error) < 0)
        return NULL;
    if (PyModule_AddObjectRef(m, "Loader", (PyObject *)&stk__py_loader_type) < 0 ||
        PyModule_AddObjectRef(m, "Batch", (PyObject *)&stk__py_batch_type) < 0 ||
        PyModule_AddObjectRef(m, "FieldBuffer", (PyObject *)&stk__py_fieldbuf_type) < 0 ||
        PyModule_AddStringConstant(m, "version", stk_version()) < 0)
        return NULL;
    return m;
}
