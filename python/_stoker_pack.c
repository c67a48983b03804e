/* SPDX-License-Identifier: MIT */
/* stoker._stoker's pack(), pack_arrays() and verify(): stoker/pack.h with
 * the GIL released, Ctrl-C stopping a pack, and buffers as the arrays to
 * pack. Its own file because it shares nothing with the loader's objects
 * but the exceptions. */
#include "_stoker.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>


/* Progress callback: lets Ctrl-C stop a pack (takes the GIL briefly). */
static int check_signals(uint64_t done, uint64_t total, void *user)
{
    (void)done;
    (void)total;
    (void)user;
    PyGILState_STATE g = PyGILState_Ensure();
    int stop = PyErr_CheckSignals() < 0;
    PyGILState_Release(g);
    return stop;
}

static int parse_pack_config(PyObject *kw, stk_pack_config_t *cfg, const char **prefix_out)
{
    stk_pack_config_default(cfg);
    if (!kw)
        return 0;
    PyObject *v;
    if ((v = PyDict_GetItemString(kw, "level")) && v != Py_None) {
        cfg->zstd_level = (int)PyLong_AsLong(v);
    }
    if ((v = PyDict_GetItemString(kw, "dict")))
        cfg->use_dict = PyObject_IsTrue(v);
    if ((v = PyDict_GetItemString(kw, "dict_size")))
        cfg->dict_size = (size_t)PyLong_AsSize_t(v);
    if ((v = PyDict_GetItemString(kw, "records_per_shard")))
        cfg->records_per_shard = PyLong_AsUnsignedLongLong(v);
    if ((v = PyDict_GetItemString(kw, "overwrite")))
        cfg->overwrite = PyObject_IsTrue(v);
    if ((v = PyDict_GetItemString(kw, "prefix")) && v != Py_None)
        *prefix_out = PyUnicode_AsUTF8(v);
    return PyErr_Occurred() ? -1 : 0;
}

static PyObject *result_dict(const stk_pack_result_t *r)
{
    return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:i,s:d}", "records", (unsigned long long)r->records,
                         "shards", (unsigned long long)r->shards, "raw_bytes",
                         (unsigned long long)r->raw_bytes, "stored_bytes",
                         (unsigned long long)r->stored_bytes, "dict_bytes",
                         (unsigned long long)r->dict_bytes, "zstd_level", r->zstd_level, "auto_ratio",
                         r->auto_ratio);
}

/* Runs stk_pack_write without the GIL; -ECANCELED means a pending signal,
 * which Python raises. */
static PyObject *pack_run(stk_pack_source_t *src, const char *out, stk_pack_config_t *cfg)
{
    stk_pack_result_t res;
    cfg->progress = check_signals;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = stk_pack_write(src, out, cfg, &res);
    Py_END_ALLOW_THREADS
    if (rc == -ECANCELED && PyErr_Occurred())
        return NULL;
    if (rc)
        return stk__py_raise(rc);
    return result_dict(&res);
}

/* pack(format, inputs, out, field=None, limit=0, **config) */
PyObject *stk__py_pack(PyObject *mod, PyObject *args, PyObject *kw)
{
    (void)mod;
    const char *format, *out, *field = NULL;
    PyObject *inputs;
    unsigned long long limit = 0;
    if (!PyArg_ParseTuple(args, "sOs", &format, &inputs, &out))
        return NULL;
    PyObject *v;
    if (kw && (v = PyDict_GetItemString(kw, "field")) && v != Py_None && !(field = PyUnicode_AsUTF8(v)))
        return NULL;
    if (kw && (v = PyDict_GetItemString(kw, "limit")) && v != Py_None) {
        limit = PyLong_AsUnsignedLongLong(v);
        if (PyErr_Occurred())
            return NULL;
    }
    stk_pack_config_t cfg;
    const char *prefix = NULL;
    if (parse_pack_config(kw, &cfg, &prefix) < 0)
        return NULL;
    if (prefix)
        cfg.prefix = prefix;
    stk_pack_source_config_t sc;
    stk_pack_source_config_default(&sc);
    sc.format = stk_pack_format_from_name(format);
    if (!sc.format) {
        PyErr_Format(PyExc_ValueError, "unknown format '%s' (idx, cifar10, cifar100, npy, folder)", format);
        return NULL;
    }
    PyObject *seq = PySequence_Fast(inputs, "inputs must be a sequence of paths");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    const char **paths = PyMem_Calloc((size_t)n + 1, sizeof *paths);
    PyObject **bytes = PyMem_Calloc((size_t)n + 1, sizeof *bytes);
    PyObject *result = NULL;
    if (!paths || !bytes) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyUnicode_FSConverter(PySequence_Fast_GET_ITEM(seq, i), &bytes[i]))
            goto done;
        paths[i] = PyBytes_AS_STRING(bytes[i]);
    }
    sc.inputs = paths;
    sc.ninputs = (size_t)n;
    sc.field = field;
    sc.limit = limit;
    stk_pack_source_t *src = NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = stk_pack_source_create(&src, &sc);
    Py_END_ALLOW_THREADS
    if (rc) {
        stk__py_raise(rc);
        goto done;
    }
    result = pack_run(src, out, &cfg);
    stk_pack_source_destroy(&src);
done:
    for (Py_ssize_t i = 0; bytes && i < n; i++)
        Py_XDECREF(bytes[i]);
    PyMem_Free(bytes);
    PyMem_Free(paths);
    Py_DECREF(seq);
    return result;
}

static stk_dtype_t format_dtype(const Py_buffer *v)
{
    const char *f = v->format ? v->format : "B";
    if (*f == '<' || *f == '=' || *f == '@' || *f == '|')
        f++;
    if (f[0] && f[1])
        return STK_DTYPE_INVALID;
    switch (f[0]) {
    case 'B': return v->itemsize == 1 ? STK_DTYPE_U8 : STK_DTYPE_INVALID;
    case 'b': return v->itemsize == 1 ? STK_DTYPE_I8 : STK_DTYPE_INVALID;
    case 'e': return STK_DTYPE_F16;
    case 'f': return STK_DTYPE_F32;
    case 'i': case 'l': case 'q':
        return v->itemsize == 4 ? STK_DTYPE_I32 : v->itemsize == 8 ? STK_DTYPE_I64 : STK_DTYPE_INVALID;
    default: return STK_DTYPE_INVALID;
    }
}

/* pack_arrays(out, names, arrays, **config): arrays are C-contiguous
 * buffers sharing their first dimension. */
PyObject *stk__py_pack_arrays(PyObject *mod, PyObject *args, PyObject *kw)
{
    (void)mod;
    const char *out;
    PyObject *names, *arrays;
    if (!PyArg_ParseTuple(args, "sOO", &out, &names, &arrays))
        return NULL;
    stk_pack_config_t cfg;
    const char *prefix = NULL;
    if (parse_pack_config(kw, &cfg, &prefix) < 0)
        return NULL;
    if (prefix)
        cfg.prefix = prefix;
    Py_ssize_t nf = PySequence_Size(names);
    if (nf < 1 || nf > STK_MAX_FIELDS || PySequence_Size(arrays) != nf) {
        PyErr_Format(PyExc_ValueError, "pack_arrays takes 1 to %d fields, names and arrays alike",
                     STK_MAX_FIELDS);
        return NULL;
    }
    Py_buffer views[STK_MAX_FIELDS];
    int got = 0;
    PyObject *result = NULL;
    stk_schema_t schema = {0};
    const void *data[STK_MAX_FIELDS];
    uint64_t n = 0;
    for (Py_ssize_t f = 0; f < nf; f++) {
        PyObject *name = PySequence_GetItem(names, f), *arr = PySequence_GetItem(arrays, f);
        int ok = name && arr && PyObject_GetBuffer(arr, &views[f], PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) == 0;
        const char *s = ok ? PyUnicode_AsUTF8(name) : NULL;
        Py_XDECREF(arr);
        if (!ok || !s) {
            Py_XDECREF(name);
            goto done;
        }
        got++;
        Py_buffer *v = &views[f];
        stk_dtype_t dt = format_dtype(v);
        if (dt == STK_DTYPE_INVALID) {
            PyErr_Format(PyExc_TypeError, "field '%s': dtype '%s' not supported (uint8 int8 int32 "
                         "int64 float16 float32)", s, v->format ? v->format : "?");
            Py_DECREF(name);
            goto done;
        }
        if (v->ndim < 1 || v->ndim > 1 + STK_MAX_DIMS) {
            PyErr_Format(PyExc_ValueError, "field '%s': %d dims (1..%d: samples first)", s, v->ndim,
                         1 + STK_MAX_DIMS);
            Py_DECREF(name);
            goto done;
        }
        if (f == 0)
            n = (uint64_t)v->shape[0];
        else if ((uint64_t)v->shape[0] != n) {
            PyErr_Format(PyExc_ValueError, "field '%s' has %zd samples, the first field %llu", s,
                         v->shape[0], (unsigned long long)n);
            Py_DECREF(name);
            goto done;
        }
        int64_t shape[STK_MAX_DIMS];
        for (int d = 1; d < v->ndim; d++)
            shape[d - 1] = v->shape[d];
        int rc = stk_schema_add(&schema, s, dt, (uint32_t)(v->ndim - 1), shape);
        Py_DECREF(name);
        if (rc) {
            stk__py_raise(rc);
            goto done;
        }
        data[f] = v->buf;
    }
    stk_pack_source_t *src = NULL;
    int rc = stk_pack_source_create_arrays(&src, &schema, data, n);
    if (rc) {
        stk__py_raise(rc);
        goto done;
    }
    result = pack_run(src, out, &cfg);
    stk_pack_source_destroy(&src);
done:
    for (int f = 0; f < got; f++)
        PyBuffer_Release(&views[f]);
    return result;
}

PyObject *stk__py_verify(PyObject *mod, PyObject *arg)
{
    (void)mod;
    PyObject *b = NULL;
    if (!PyUnicode_FSConverter(arg, &b))
        return NULL;
    stk_pack_verify_result_t res;
    int rc;
    const char *path = PyBytes_AS_STRING(b);
    Py_BEGIN_ALLOW_THREADS
    rc = stk_pack_verify(path, &res, check_signals, NULL, NULL);
    Py_END_ALLOW_THREADS
    Py_DECREF(b);
    if (rc == -ECANCELED && PyErr_Occurred())
        return NULL;
    if (rc)
        return stk__py_raise(rc);
    return Py_BuildValue("{s:K,s:K}", "records", (unsigned long long)res.records, "bad",
                         (unsigned long long)res.bad);
}
