/* SPDX-License-Identifier: MIT */
/* What the files of stoker._stoker share: the Loader and Batch objects
 * (their structs meet in a batch's slot going back), the exception
 * helpers, the type objects the module init adds, and the pack functions
 * of its method table. _stoker.c holds the errors and the module init,
 * _stoker_loader.c the Loader, _stoker_batch.c the Batch and its field
 * buffers, _stoker_pack.c packing and verify. */
#ifndef STOKER_PY_STOKER_H
#define STOKER_PY_STOKER_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>

#include "stoker/loader.h"
#include "stoker/pack.h"

typedef struct BatchObject BatchObject;

typedef struct {
    PyObject_HEAD
    stk_dataset_t *ds;
    stk_sampler_t *sampler;
    stk_loader_t *l;
    pthread_mutex_t mu;     /* held across every stk_loader_* call */
    pthread_mutex_t plock;  /* guards pending, never held while blocking */
    stk_batch_t *pending;   /* released batches whose slots are yet to go back */
    size_t npending, cap;
    size_t live;            /* batches handed out and not yet returned */
    PyObject *pin, *unpin;  /* Python callables (addr, bytes), or NULL */
    int closed;
} LoaderObject;

struct BatchObject {
    PyObject_HEAD
    LoaderObject *loader;   /* strong reference */
    stk_batch_t b;
    int released;           /* the user is done with it */
    int returned;           /* its slot went back to the loader */
    Py_ssize_t exports;     /* buffers of it alive */
};

/* _stoker.c: the exceptions */
extern PyObject *stk__py_released_error; /* a released batch used again */
/* The exception class of a Stoker status: its own, or stoker.Error. */
PyObject *stk__py_error_type(int rc);
PyObject *stk__py_raise(int rc);

/* _stoker_loader.c */
extern PyTypeObject stk__py_loader_type;
extern unsigned long stk__py_main_thread_ident; /* set by the module init */
void stk__py_batch_return(BatchObject *B);

/* _stoker_batch.c */
extern PyTypeObject stk__py_batch_type, stk__py_fieldbuf_type;

/* _stoker_pack.c: functions of the module's method table */
PyObject *stk__py_pack(PyObject *mod, PyObject *args, PyObject *kw);
PyObject *stk__py_pack_arrays(PyObject *mod, PyObject *args, PyObject *kw);
PyObject *stk__py_verify(PyObject *mod, PyObject *arg);

#endif
