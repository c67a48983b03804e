/* SPDX-License-Identifier: MIT */
/* stoker._stoker.Loader: a loader over a shard set, its batches' slots
 * going back (at once, or at the next call of the thread inside the
 * loader), the pin hooks calling into Python, and Ctrl-C while waiting.
 * Its own file because it is the one object with threads and signals in
 * it; the Batch it hands out is _stoker_batch.c's. */
#include "_stoker.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

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
void stk__py_batch_return(BatchObject *B)
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
        stk__py_raise(rc);
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

unsigned long stk__py_main_thread_ident;

/* Installs the handler for the length of a wait, when called on the main
 * thread (where Python runs its handlers). Returns 1 when installed.
 * Holds the GIL. */
static int wait_begin(stk_loader_t *l)
{
    if (PyThread_get_thread_ident() != stk__py_main_thread_ident)
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
        PyErr_Format(stk__py_error_type(STK_ESTATE),
                     "every slot of the loader is held by a batch, or by arrays of released "
                     "batches that are still alive (%zu batches): keep copies of what you keep "
                     "(copy=True, or array.copy()), or release batches",
                     self->live);
        return NULL;
    }
    if (rc)
        return stk__py_raise(rc);
    BatchObject *B = PyObject_New(BatchObject, &stk__py_batch_type);
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
        return stk__py_raise(rc);
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
        return stk__py_raise(rc);
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

PyTypeObject stk__py_loader_type = {
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
