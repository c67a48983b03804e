/* SPDX-License-Identifier: MIT */
/* stoker._stoker: the C half of the Python module, over the public API only
 * (stoker/loader.h, stoker/pack.h). A Loader hands out Batches; a Batch
 * exports each field as a buffer (format, shape) that NumPy views without
 * a copy. The slot a batch lives in goes back to the loader once the batch
 * is released and no buffer of it is exported any more: an array kept past
 * release keeps its data (never stale) and holds one slot. The GIL is
 * released while waiting for a batch and while packing. Errors raise
 * stoker.Error subclasses carrying the library's message. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "stoker/loader.h"
#include "stoker/pack.h"

/* ---- Errors ---------------------------------------------------------- */

static PyObject *Error;         /* stoker.Error */
static PyObject *ReleasedError; /* a released batch used again */

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

/* Raises the exception for a Stoker status: its own class, or stoker.Error
 * (with errno set for POSIX codes), message from stk_error_message(). */
static PyObject *raise_stk(int rc)
{
    PyObject *type = Error;
    for (size_t i = 0; i < N_ERR_CLASSES; i++)
        if (err_classes[i].code == rc)
            type = err_types[i];
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

/* ---- Loader ---------------------------------------------------------- */

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

static void loader_return(LoaderObject *L, stk_batch_t *b)
{
    if (L->l)
        stk_loader_release(L->l, b);
    L->live--;
}

static void loader_destroy(LoaderObject *L);

/* Gives back the slots of released batches. Called by the thread that is
 * about to use the loader, with mu held. */
static void drain_pending(LoaderObject *L)
{
    for (;;) {
        stk_batch_t b;
        pthread_mutex_lock(&L->plock);
        if (!L->npending) {
            pthread_mutex_unlock(&L->plock);
            return;
        }
        b = L->pending[--L->npending];
        pthread_mutex_unlock(&L->plock);
        loader_return(L, &b);
    }
}

/* The batch is released and none of its buffers is alive: its slot goes
 * back now, or, when another thread is inside the loader (waiting for a
 * batch with the GIL released), at that thread's next call. */
static void batch_return(BatchObject *B)
{
    if (B->returned)
        return;
    B->returned = 1;
    LoaderObject *L = B->loader;
    if (!L->l)
        return;
    if (L->closed) {
        /* No other thread is inside a closed loader. */
        loader_return(L, &B->b);
        if (L->live == 0)
            loader_destroy(L);
        return;
    }
    if (pthread_mutex_trylock(&L->mu) == 0) {
        drain_pending(L);
        loader_return(L, &B->b);
        pthread_mutex_unlock(&L->mu);
        return;
    }
    pthread_mutex_lock(&L->plock);
    if (L->npending == L->cap) {
        size_t cap = L->cap ? L->cap * 2 : 8;
        stk_batch_t *p = PyMem_RawRealloc(L->pending, cap * sizeof *p);
        if (!p) {
            pthread_mutex_unlock(&L->plock);
            return; /* the slot stays held; the loader says so when it runs out */
        }
        L->pending = p;
        L->cap = cap;
    }
    L->pending[L->npending++] = B->b;
    pthread_mutex_unlock(&L->plock);
}

static int call_pin(void *addr, size_t bytes, void *user)
{
    LoaderObject *L = user;
    PyGILState_STATE g = PyGILState_Ensure();
    int rc = 0;
    PyObject *r = PyObject_CallFunction(L->pin, "Kn", (unsigned long long)(uintptr_t)addr,
                                        (Py_ssize_t)bytes);
    if (!r) {
        PyErr_Clear();
        rc = -EIO;
    } else {
        long v = PyLong_Check(r) ? PyLong_AsLong(r) : 0;
        if (v != 0)
            rc = -EIO;
        Py_DECREF(r);
    }
    PyGILState_Release(g);
    return rc;
}

static void call_unpin(void *addr, size_t bytes, void *user)
{
    LoaderObject *L = user;
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *r = PyObject_CallFunction(L->unpin, "Kn", (unsigned long long)(uintptr_t)addr,
                                        (Py_ssize_t)bytes);
    if (!r)
        PyErr_Clear();
    Py_XDECREF(r);
    PyGILState_Release(g);
}

/* Frees the loader, its sampler and dataset: stops the workers and unmaps
 * the arena. */
static void loader_destroy(LoaderObject *L)
{
    if (!L->l && !L->ds)
        return;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&L->mu);
    drain_pending(L);
    stk_loader_destroy(&L->l);
    stk_sampler_destroy(&L->sampler);
    stk_dataset_destroy(&L->ds);
    pthread_mutex_unlock(&L->mu);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(L->pending);
    L->pending = NULL;
    L->npending = L->cap = 0;
}

/* close(): no new batch or array from now on. The arena goes when no
 * batch of it is alive (an array kept from a batch points into it), so a
 * closed loader never leaves an array reading unmapped memory. */
static void loader_close_impl(LoaderObject *L)
{
    L->closed = 1;
    if (L->live == 0)
        loader_destroy(L);
}

static int Loader_init(LoaderObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"path", "batch_size", "num_workers", "shuffle", "seed", "augment",
                             "augment_field", "drop_last", "prefetch", "persistent_workers",
                             "timeout", "rank", "world_size", "io", "respawn", "skip_corrupt",
                             "pin", "unpin", "hwc", NULL};
    const char *path, *augment = NULL, *augment_field = NULL, *io = "auto";
    unsigned long long batch = 1, seed = 0;
    unsigned int workers = 0, prefetch = 2, rank = 0, world = 1;
    int shuffle = 0, drop_last = 0, persistent = 0, respawn = 0, skip_corrupt = 0, hwc = 0;
    double timeout = 0;
    PyObject *pin = Py_None, *unpin = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "s|KIpKzzpIpdIIsppOOp", kwlist, &path, &batch,
                                     &workers, &shuffle, &seed, &augment, &augment_field, &drop_last,
                                     &prefetch, &persistent, &timeout, &rank, &world, &io, &respawn,
                                     &skip_corrupt, &pin, &unpin, &hwc))
        return -1;
    if (self->ds || self->l) {
        PyErr_SetString(PyExc_RuntimeError, "Loader.__init__ called twice");
        return -1;
    }
    if (timeout < 0 || timeout > 4e6) {
        PyErr_Format(PyExc_ValueError, "timeout %g s is outside 0..4e6", timeout);
        return -1;
    }
    if (pin != Py_None) {
        if (!PyCallable_Check(pin) || !PyCallable_Check(unpin)) {
            PyErr_SetString(PyExc_TypeError, "pin and unpin must both be callables");
            return -1;
        }
        Py_INCREF(pin);
        Py_INCREF(unpin);
        self->pin = pin;
        self->unpin = unpin;
    }
    stk_dataset_shard_config_t dc;
    stk_dataset_shard_config_default(&dc);
    if (!strcmp(io, "auto"))
        dc.io = STK_IO_AUTO;
    else if (!strcmp(io, "uring"))
        dc.io = STK_IO_URING;
    else if (!strcmp(io, "pread"))
        dc.io = STK_IO_PREAD;
    else if (!strcmp(io, "mmap"))
        dc.io = STK_IO_MMAP;
    else {
        PyErr_Format(PyExc_ValueError, "io '%s': auto, uring, pread or mmap", io);
        return -1;
    }
    stk_loader_config_t cfg;
    stk_loader_config_default(&cfg);
    cfg.batch_size = batch;
    cfg.num_workers = workers;
    cfg.shuffle = shuffle;
    cfg.seed = seed;
    cfg.drop_last = drop_last;
    cfg.prefetch = prefetch;
    cfg.persistent_workers = persistent;
    cfg.timeout_ms = (uint32_t)(timeout * 1000.0 + 0.5);
    if (timeout > 0 && cfg.timeout_ms == 0)
        cfg.timeout_ms = 1;
    cfg.respawn = respawn;
    cfg.skip_corrupt = skip_corrupt;
    cfg.augment = augment;
    if (augment_field)
        cfg.augment_field = augment_field;
    cfg.augment_layout = hwc ? STK_LAYOUT_HWC : STK_LAYOUT_CHW;
    if (self->pin) {
        cfg.pin = call_pin;
        cfg.unpin = call_unpin;
        cfg.pin_user = self;
        cfg.pin_no_memlock = 1; /* cudaHostRegister does not count against it */
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = stk_dataset_shard_create(&self->ds, path, &dc);
    if (!rc && world > 1) {
        stk_sampler_config_t sc;
        stk_sampler_config_default(&sc);
        sc.kind = STK_SAMPLER_DISTRIBUTED;
        sc.dataset_len = stk_dataset_len(self->ds);
        sc.seed = seed;
        sc.rank = rank;
        sc.world_size = world;
        sc.shuffle = shuffle;
        sc.drop_last = drop_last;
        rc = stk_sampler_create(&self->sampler, &sc);
        cfg.sampler = self->sampler;
    }
    if (!rc)
        rc = stk_loader_create(&self->l, self->ds, &cfg);
    Py_END_ALLOW_THREADS
    if (rc) {
        /* The error context is this thread's: take it before cleanup. */
        raise_stk(rc);
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        self->closed = 1;
        loader_destroy(self);
        PyErr_Restore(t, v, tb);
        return -1;
    }
    return 0;
}

static PyObject *Loader_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    (void)args;
    (void)kw;
    LoaderObject *self = (LoaderObject *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    pthread_mutex_init(&self->mu, NULL);
    pthread_mutex_init(&self->plock, NULL);
    return (PyObject *)self;
}

static void Loader_dealloc(LoaderObject *self)
{
    /* Batches hold a reference: none is alive here. */
    self->closed = 1;
    loader_destroy(self);
    pthread_mutex_destroy(&self->mu);
    pthread_mutex_destroy(&self->plock);
    Py_XDECREF(self->pin);
    Py_XDECREF(self->unpin);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int check_open(LoaderObject *L)
{
    if (L->closed || !L->l) {
        PyErr_SetString(PyExc_ValueError, "the loader is closed");
        return -1;
    }
    return 0;
}

static PyTypeObject BatchType;

/* Ctrl-C while the main thread waits in the loader (a worker stopped or
 * hung, no timeout): Python's own SIGINT handler only sets a flag, which
 * nobody looks at while the wait goes on. For the length of the wait, a
 * handler of ours interrupts the loader (stk_loader_interrupt is
 * async-signal-safe) and then runs Python's, so that the KeyboardInterrupt
 * is raised when the call returns -EINTR. */
static _Atomic(stk_loader_t *) waiting_loader;
static struct sigaction py_sigint, py_sigterm;

static void on_signal_waiting(int sig, siginfo_t *si, void *uc)
{
    stk_loader_t *l = atomic_load(&waiting_loader);
    if (l)
        stk_loader_interrupt(l);
    const struct sigaction *old = sig == SIGINT ? &py_sigint : &py_sigterm;
    if (old->sa_flags & SA_SIGINFO)
        old->sa_sigaction(sig, si, uc);
    else if (old->sa_handler != SIG_DFL && old->sa_handler != SIG_IGN)
        old->sa_handler(sig);
}

static unsigned long main_thread_ident;

/* Installs the handler for the length of a wait, when called on the main
 * thread (where Python runs its handlers). Returns 1 when installed.
 * Holds the GIL. */
static int wait_begin(stk_loader_t *l)
{
    if (PyThread_get_thread_ident() != main_thread_ident)
        return 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal_waiting;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    atomic_store(&waiting_loader, l);
    if (sigaction(SIGINT, &sa, &py_sigint) < 0)
        return 0;
    if (sigaction(SIGTERM, &sa, &py_sigterm) < 0) {
        sigaction(SIGINT, &py_sigint, NULL);
        return 0;
    }
    return 1;
}

static void wait_end(int installed)
{
    if (!installed)
        return;
    sigaction(SIGINT, &py_sigint, NULL);
    sigaction(SIGTERM, &py_sigterm, NULL);
    atomic_store(&waiting_loader, NULL);
}

/* Next batch, or None at the end of the epoch. */
static PyObject *Loader_next(LoaderObject *self, PyObject *unused)
{
    (void)unused;
    if (check_open(self))
        return NULL;
    stk_batch_t b;
    int rc;
    for (int attempt = 0;; attempt++) {
        int hooked = wait_begin(self->l);
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&self->mu);
        drain_pending(self);
        rc = stk_loader_next(self->l, &b);
        pthread_mutex_unlock(&self->mu);
        Py_END_ALLOW_THREADS
        wait_end(hooked);
        if (rc == -EINTR) {
            /* Ctrl-C: Python raises KeyboardInterrupt (or what its handler
             * says); a signal whose handler does not raise waits again. */
            if (PyErr_CheckSignals() < 0)
                return NULL;
            attempt = -1;
            continue;
        }
        /* A slot given back meanwhile by another thread: once more. */
        if (rc != STK_ESTATE || attempt > 0 || !self->npending)
            break;
    }
    if (rc == STK_DONE)
        Py_RETURN_NONE;
    if (rc == STK_ESTATE && self->live) {
        PyObject *state_error = Error;
        for (size_t i = 0; i < N_ERR_CLASSES; i++)
            if (err_classes[i].code == STK_ESTATE)
                state_error = err_types[i];
        PyErr_Format(state_error,
                     "every slot of the loader is held by a batch, or by arrays of released "
                     "batches that are still alive (%zu batches): keep copies of what you keep "
                     "(copy=True, or array.copy()), or release batches",
                     self->live);
        return NULL;
    }
    if (rc)
        return raise_stk(rc);
    BatchObject *B = PyObject_New(BatchObject, &BatchType);
    if (!B) {
        pthread_mutex_lock(&self->mu);
        stk_loader_release(self->l, &b);
        pthread_mutex_unlock(&self->mu);
        return NULL;
    }
    Py_INCREF(self);
    B->loader = self;
    B->b = b;
    B->released = B->returned = 0;
    B->exports = 0;
    self->live++;
    /* A signal (Ctrl-C) that arrived while waiting is raised here, with the
     * batch given back when it goes. */
    if (PyErr_CheckSignals() < 0) {
        Py_DECREF(B);
        return NULL;
    }
    return (PyObject *)B;
}

static PyObject *Loader_set_epoch(LoaderObject *self, PyObject *arg)
{
    unsigned long long e = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred() || check_open(self))
        return NULL;
    int rc;
    for (;;) {
        int hooked = wait_begin(self->l);
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&self->mu);
        drain_pending(self);
        rc = stk_loader_set_epoch(self->l, e);
        if (!rc && self->sampler)
            rc = stk_sampler_set_epoch(self->sampler, e);
        pthread_mutex_unlock(&self->mu);
        Py_END_ALLOW_THREADS
        wait_end(hooked);
        if (rc != -EINTR)
            break;
        if (PyErr_CheckSignals() < 0)
            return NULL;
    }
    if (rc)
        return raise_stk(rc);
    Py_RETURN_NONE;
}

static PyObject *Loader_get_state(LoaderObject *self, PyObject *unused)
{
    (void)unused;
    if (check_open(self))
        return NULL;
    stk_loader_state_t st;
    pthread_mutex_lock(&self->mu);
    stk_loader_get_state(self->l, &st);
    pthread_mutex_unlock(&self->mu);
    return Py_BuildValue("(KK)", (unsigned long long)st.epoch, (unsigned long long)st.batch);
}

static PyObject *Loader_set_state(LoaderObject *self, PyObject *args)
{
    unsigned long long e, k;
    if (!PyArg_ParseTuple(args, "KK", &e, &k) || check_open(self))
        return NULL;
    stk_loader_state_t st = {e, k};
    int rc;
    for (;;) {
        int hooked = wait_begin(self->l);
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&self->mu);
        drain_pending(self);
        rc = stk_loader_set_state(self->l, &st);
        pthread_mutex_unlock(&self->mu);
        Py_END_ALLOW_THREADS
        wait_end(hooked);
        if (rc != -EINTR)
            break;
        if (PyErr_CheckSignals() < 0)
            return NULL;
    }
    if (rc)
        return raise_stk(rc);
    Py_RETURN_NONE;
}

static PyObject *Loader_len(LoaderObject *self, PyObject *unused)
{
    (void)unused;
    if (check_open(self))
        return NULL;
    return PyLong_FromUnsignedLongLong(stk_loader_len(self->l));
}

static PyObject *stage(const stk_stage_stats_t *s)
{
    return Py_BuildValue("{s:d,s:K}", "seconds", (double)s->ns / 1e9, "bytes",
                         (unsigned long long)s->bytes);
}

static PyObject *Loader_stats(LoaderObject *self, PyObject *unused)
{
    (void)unused;
    if (check_open(self))
        return NULL;
    stk_loader_stats_t s;
    pthread_mutex_lock(&self->mu);
    stk_loader_get_stats(self->l, &s);
    pthread_mutex_unlock(&self->mu);
    return Py_BuildValue(
        "{s:N,s:N,s:N,s:N,s:N,s:K,s:K,s:K,s:K,s:K,s:K,s:d,s:K}", "read", stage(&s.read), "decode",
        stage(&s.decode), "augment", stage(&s.augment), "collate", stage(&s.collate), "wait",
        stage(&s.wait), "batches", (unsigned long long)s.batches, "samples",
        (unsigned long long)s.samples, "skipped", (unsigned long long)s.skipped, "respawns",
        (unsigned long long)s.respawns, "worker_max_rss_kb", (unsigned long long)s.worker_max_rss_kb,
        "worker_max_private_kb", (unsigned long long)s.worker_max_private_kb, "first_batch_seconds",
        (double)s.first_batch_ns / 1e9, "checked", (unsigned long long)s.checked);
}

static PyObject *Loader_worker_pids(LoaderObject *self, PyObject *unused)
{
    (void)unused;
    if (check_open(self))
        return NULL;
    int pids[1024];
    pthread_mutex_lock(&self->mu);
    uint32_t n = stk_loader_worker_pids(self->l, pids, 1024);
    pthread_mutex_unlock(&self->mu);
    PyObject *list = PyList_New(0);
    for (uint32_t i = 0; list && i < n && i < 1024; i++) {
        PyObject *p = PyLong_FromLong(pids[i]);
        if (!p || PyList_Append(list, p) < 0) {
            Py_XDECREF(p);
            Py_CLEAR(list);
            break;
        }
        Py_DECREF(p);
    }
    return list;
}

static PyObject *Loader_close(LoaderObject *self, PyObject *unused)
{
    (void)unused;
    loader_close_impl(self);
    Py_RETURN_NONE;
}

static PyObject *Loader_closed(LoaderObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->closed);
}

static PyMethodDef Loader_methods[] = {
    {"next", (PyCFunction)Loader_next, METH_NOARGS, "next() -> _Batch or None at the end of the epoch."},
    {"set_epoch", (PyCFunction)Loader_set_epoch, METH_O, "set_epoch(e): select epoch e, rewind."},
    {"get_state", (PyCFunction)Loader_get_state, METH_NOARGS, "get_state() -> (epoch, next batch)."},
    {"set_state", (PyCFunction)Loader_set_state, METH_VARARGS, "set_state(epoch, batch)."},
    {"len", (PyCFunction)Loader_len, METH_NOARGS, "Batches per epoch."},
    {"stats", (PyCFunction)Loader_stats, METH_NOARGS, "Per-stage statistics since create."},
    {"worker_pids", (PyCFunction)Loader_worker_pids, METH_NOARGS, "Pids of running workers."},
    {"close", (PyCFunction)Loader_close, METH_NOARGS, "Stop workers, unmap the arena."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Loader_getset[] = {
    {"closed", (getter)Loader_closed, NULL, "True once closed.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject LoaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "stoker._stoker.Loader",
    .tp_basicsize = sizeof(LoaderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The C loader over a shard set (see stoker.Loader).",
    .tp_new = Loader_new,
    .tp_init = (initproc)Loader_init,
    .tp_dealloc = (destructor)Loader_dealloc,
    .tp_methods = Loader_methods,
    .tp_getset = Loader_getset,
};

/* ---- Batch and its field buffers -------------------------------------- */

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
        PyErr_SetString(ReleasedError, "the loader of this batch is closed");
        return -1;
    }
    if (B->released) {
        PyErr_Format(ReleasedError,
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
     * slot until released (batch_return). */
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
        batch_return(B);
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

static PyTypeObject FieldBufType = {
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
    FieldBufObject *f = PyObject_New(FieldBufObject, &FieldBufType);
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
            batch_return(self);
    }
    Py_RETURN_NONE;
}

static void Batch_dealloc(BatchObject *self)
{
    self->released = 1;
    batch_return(self);
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

static PyTypeObject BatchType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "stoker._stoker.Batch",
    .tp_basicsize = sizeof(BatchObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One batch in a shared-memory slot (see stoker.Batch).",
    .tp_dealloc = (destructor)Batch_dealloc,
    .tp_methods = Batch_methods,
    .tp_getset = Batch_getset,
};

/* ---- Packing and verify ------------------------------------------------ */

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
        return raise_stk(rc);
    return result_dict(&res);
}

/* pack(format, inputs, out, field=None, limit=0, **config) */
static PyObject *mod_pack(PyObject *mod, PyObject *args, PyObject *kw)
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
        raise_stk(rc);
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
static PyObject *mod_pack_arrays(PyObject *mod, PyObject *args, PyObject *kw)
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
            raise_stk(rc);
            goto done;
        }
        data[f] = v->buf;
    }
    stk_pack_source_t *src = NULL;
    int rc = stk_pack_source_create_arrays(&src, &schema, data, n);
    if (rc) {
        raise_stk(rc);
        goto done;
    }
    result = pack_run(src, out, &cfg);
    stk_pack_source_destroy(&src);
done:
    for (int f = 0; f < got; f++)
        PyBuffer_Release(&views[f]);
    return result;
}

static PyObject *mod_verify(PyObject *mod, PyObject *arg)
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
        return raise_stk(rc);
    return Py_BuildValue("{s:K,s:K}", "records", (unsigned long long)res.records, "bad",
                         (unsigned long long)res.bad);
}

static PyObject *mod_forkserver_start(PyObject *mod, PyObject *unused)
{
    (void)mod;
    (void)unused;
    int rc = stk_loader_forkserver_start();
    if (rc)
        return raise_stk(rc);
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
    {"pack", (PyCFunction)(void (*)(void))mod_pack, METH_VARARGS | METH_KEYWORDS,
     "pack(format, inputs, out, field=None, limit=0, level=None, dict=True, dict_size=65536, "
     "records_per_shard=10000, prefix='shard', overwrite=False) -> dict"},
    {"pack_arrays", (PyCFunction)(void (*)(void))mod_pack_arrays, METH_VARARGS | METH_KEYWORDS,
     "pack_arrays(out, names, arrays, **config) -> dict"},
    {"verify", (PyCFunction)mod_verify, METH_O, "verify(path) -> {'records', 'bad'}"},
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
    if (PyType_Ready(&LoaderType) < 0 || PyType_Ready(&BatchType) < 0 ||
        PyType_Ready(&FieldBufType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    PyObject *threading = PyImport_ImportModule("threading");
    PyObject *mt = threading ? PyObject_CallMethod(threading, "main_thread", NULL) : NULL;
    PyObject *ident = mt ? PyObject_GetAttrString(mt, "ident") : NULL;
    main_thread_ident = ident ? PyLong_AsUnsignedLong(ident) : 0;
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
    ReleasedError = PyErr_NewExceptionWithDoc(
        "stoker.ReleasedError", "A released batch (or one of a closed loader) was used.", Error, NULL);
    if (!ReleasedError || PyModule_AddObjectRef(m, "ReleasedError", ReleasedError) < 0)
        return NULL;
    if (PyModule_AddObjectRef(m, "Loader", (PyObject *)&LoaderType) < 0 ||
        PyModule_AddObjectRef(m, "Batch", (PyObject *)&BatchType) < 0 ||
        PyModule_AddObjectRef(m, "FieldBuffer", (PyObject *)&FieldBufType) < 0 ||
        PyModule_AddStringConstant(m, "version", stk_version()) < 0)
        return NULL;
    return m;
}
