/* SPDX-License-Identifier: MIT */
/* Data-parallel training over a communicator (PyTorch's DDP): the same
 * parameters on every rank at the start, the gradient arena cut into
 * buckets in reverse layer order, each bucket's all-reduce started from the
 * engine's gradient hook as soon as backward has produced all of it (so it
 * runs on the communicator's thread while backward goes on), and nothing
 * sent on gradient-accumulation micro-steps. */
#define _GNU_SOURCE
#include "comm_impl.h"
#include "engine/bn_sync.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct ddp_param {
    size_t off, cnt;
    size_t bucket;
} ddp_param_t;

typedef struct ddp_bucket {
    size_t lo, hi;       /* floats [lo, hi) of the gradient arena */
    size_t nparams;
    size_t pending;      /* tensors whose gradient has not arrived */
    stk_comm_work_t *work;
    int launched;
} ddp_bucket_t;

struct stk_ddp {
    stk_comm_t *comm;
    stk_model_t *model;
    stk_ddp_config_t cfg;
    float *grads;
    ddp_param_t *p;      /* sorted by offset */
    size_t np;
    unsigned char *ready;
    ddp_bucket_t *b;
    size_t nb;
    size_t next;         /* buckets start strictly in order */
    int active, sync;
    int set_stream;      /* create gave the communicator the model's stream */
    int err;
    char errmsg[STK__COMM_MSG_MAX];
    double t_begin, t_end;
    stk_ddp_stats_t st;
    stk_ddp_event_t *ev;
    size_t nev;
};

void stk_ddp_config_default(stk_ddp_config_t *cfg)
{
    if (!cfg)
        return;
    memset(cfg, 0, sizeof(*cfg));
    cfg->bucket_bytes = (size_t)25 << 20;
    cfg->first_bucket_bytes = (size_t)1 << 20;
    cfg->average = 1;
    cfg->overlap = 1;
    cfg->broadcast_params = 1;
}

static void record(stk_ddp_t *d, stk_ddp_event_kind_t kind, uint64_t value, double t)
{
    if (d->nev < d->cfg.trace_events)
        d->ev[d->nev++] = (stk_ddp_event_t){.kind = kind, .value = value, .t = t};
}

/* ---------------------------------------------------------------- buckets */

static int cmp_param(const void *a, const void *b)
{
    const ddp_param_t *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

static int build_buckets(stk_ddp_t *d)
{
    size_t n = stk_model_num_params(d->model);
    d->p = calloc(n ? n : 1, sizeof(*d->p));
    d->ready = calloc(n ? n : 1, 1);
    d->b = calloc(n ? n : 1, sizeof(*d->b));
    if (!d->p || !d->ready || !d->b)
        return stk__error(-ENOMEM, "ddp: out of memory");
    for (size_t i = 0; i < n; i++) {
        stk_param_info_t info;
        stk_model_param_info(d->model, i, &info);
        d->p[i].off = info.offset;
        d->p[i].cnt = info.count;
    }
    d->np = n;
    qsort(d->p, n, sizeof(*d->p), cmp_param);
    /* From the last tensor back: backward produces them in that order. */
    size_t cap = d->cfg.bucket_bytes / sizeof(float);
    size_t cap0 = d->cfg.first_bucket_bytes ? d->cfg.first_bucket_bytes / sizeof(float) : cap;
    if (cap0 > cap)
        cap0 = cap;
    size_t nb = 0;
    for (size_t k = n; k-- > 0;) {
        ddp_param_t *q = &d->p[k];
        ddp_bucket_t *cur = nb ? &d->b[nb - 1] : NULL;
        if (!cur || (cur->hi - q->off > (nb == 1 ? cap0 : cap) && cur->nparams > 0)) {
            cur = &d->b[nb++];
            cur->hi = q->off + q->cnt;
        }
        cur->lo = q->off;
        cur->nparams++;
        q->bucket = (size_t)(cur - d->b);
    }
    d->nb = nb;
    return 0;
}

static void launch(stk_ddp_t *d, size_t i)
{
    ddp_bucket_t *b = &d->b[i];
    b->launched = 1;
    if (d->err)
        return;
    int rc = stk_comm_allreduce_async(d->comm, d->grads + b->lo, b->hi - b->lo, STK_DTYPE_F32,
                                      d->cfg.average ? STK_REDUCE_AVG : STK_REDUCE_SUM, &b->work);
    if (rc < 0) {
        d->err = rc;
        snprintf(d->errmsg, sizeof(d->errmsg), "ddp: bucket %zu of %zu (floats %zu..%zu): %s", i, d->nb, b->lo,
                 b->hi, stk_error_message());
        return;
    }
    d->st.reductions++;
}

/* Starts the buckets that are complete, in bucket order. */
static void launch_ready(stk_ddp_t *d)
{
    while (d->next < d->nb && d->b[d->next].pending == 0)
        launch(d, d->next++);
}

static void on_grad_ready(size_t offset, size_t count, void *user)
{
    stk_ddp_t *d = user;
    if (!d->active || !d->sync)
        return;
    if (d->cfg.trace_events)
        record(d, STK_DDP_EV_GRAD_READY, offset, stk__now_s());
    /* The tensors this range covers (a layer's weight and bias, or one). */
    size_t lo = 0, hi = d->np;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (d->p[mid].off + d->p[mid].cnt <= offset)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (size_t k = lo; k < d->np && d->p[k].off < offset + count; k++) {
        if (d->ready[k])
            continue;
        d->ready[k] = 1;
        d->b[d->p[k].bucket].pending--;
    }
    if (d->cfg.overlap)
        launch_ready(d);
}

/* ------------------------------------------------- synchronized batchnorm */

/* The engine's batchnorm layers exchange their figures through the same
 * communicator as the buckets: its operations run in the order they were
 * started, so a layer's collective queues behind the buckets that backward
 * has started before it, identically on every rank. */
static int bn_allgather(void *user, const void *send, void *recv, size_t bytes)
{
    stk_ddp_t *d = user;
    return stk_comm_allgather(d->comm, send, recv, bytes, STK_DTYPE_U8);
}

static int bn_allreduce(void *user, float *buf, size_t count)
{
    stk_ddp_t *d = user;
    return stk_comm_allreduce(d->comm, buf, count, STK_DTYPE_F32, STK_REDUCE_SUM);
}

/* ------------------------------------------------------------- life cycle */

typedef struct layout_row {
    uint64_t nparams, nfloats, nbuffers, hash;
} layout_row_t;

static uint64_t tensor_hash(const stk_param_info_t *info)
{
    uint64_t h = stk__xxh64(info->name, strlen(info->name), 0);
    uint64_t geo[2 + STK_TENSOR_MAX_DIMS] = {info->offset, info->count};
    for (int i = 0; i < info->ndim && i < STK_TENSOR_MAX_DIMS; i++)
        geo[2 + i] = (uint64_t)info->shape[i];
    return stk__xxh64(geo, sizeof(geo), h);
}

/* Every rank's model must have rank 0's parameters and buffers (names,
 * shapes, offsets), or a broadcast would mix them up. */
static int check_layout(stk_ddp_t *d)
{
    int n = stk_comm_size(d->comm), me = stk_comm_rank(d->comm);
    size_t np = stk_model_num_params(d->model), nbuf = stk_model_num_buffers(d->model);
    size_t nf = 0, nbf = 0;
    stk_model_params(d->model, &nf);
    stk_model_buffers(d->model, &nbf);
    layout_row_t mine = {np, nf, nbuf, 0};
    for (size_t i = 0; i < np; i++) {
        stk_param_info_t info;
        stk_model_param_info(d->model, i, &info);
        mine.hash = stk__xxh64(&(uint64_t){tensor_hash(&info)}, 8, mine.hash);
    }
    for (size_t i = 0; i < nbuf; i++) {
        stk_param_info_t info;
        stk_model_buffer_info(d->model, i, &info);
        mine.hash = stk__xxh64(&(uint64_t){tensor_hash(&info)}, 8, mine.hash);
    }
    layout_row_t *all = calloc((size_t)n, sizeof(*all));
    if (!all)
        return stk__error(-ENOMEM, "ddp: out of memory");
    int rc = stk_comm_allgather(d->comm, &mine, all, 4, STK_DTYPE_I64);
    if (rc < 0) {
        free(all);
        return stk__error_prefix(rc, "ddp: model layout check");
    }
    int bad = -1;
    for (int r = 1; r < n && bad < 0; r++)
        if (memcmp(&all[r], &all[0], sizeof(all[0])) != 0)
            bad = r;
    if (bad < 0) {
        free(all);
        return 0;
    }
    layout_row_t z = all[0], o = all[bad];
    free(all);
    if (z.nparams != o.nparams || z.nfloats != o.nfloats || z.nbuffers != o.nbuffers)
        return stk__error(STK_ECONFIG, "ddp: rank %d's model differs from rank 0's: %llu parameter tensors "
                          "(%llu floats) and %llu buffers, against %llu (%llu) and %llu", bad,
                          (unsigned long long)o.nparams, (unsigned long long)o.nfloats, (unsigned long long)o.nbuffers,
                          (unsigned long long)z.nparams, (unsigned long long)z.nfloats, (unsigned long long)z.nbuffers);
    /* Same counts: find the first tensor that differs from rank 0's. */
    size_t total = np + nbuf;
    uint64_t *h0 = calloc(total ? total : 1, sizeof(*h0));
    if (!h0)
        return stk__error(-ENOMEM, "ddp: out of memory");
    for (size_t i = 0; i < total; i++) {
        stk_param_info_t info;
        if (i < np)
            stk_model_param_info(d->model, i, &info);
        else
            stk_model_buffer_info(d->model, i - np, &info);
        h0[i] = tensor_hash(&info);
    }
    uint64_t *mine_h = NULL;
    if (me != 0) {
        mine_h = malloc((total ? total : 1) * sizeof(*mine_h));
        if (!mine_h) {
            free(h0);
            return stk__error(-ENOMEM, "ddp: out of memory");
        }
        memcpy(mine_h, h0, total * sizeof(*h0));
    }
    rc = stk_comm_broadcast(d->comm, h0, total, STK_DTYPE_I64, 0);
    if (rc < 0) {
        free(h0);
        free(mine_h);
        return stk__error_prefix(rc, "ddp: model layout check");
    }
    char where[300] = "";
    if (me != 0) {
        for (size_t i = 0; i < total; i++) {
            if (mine_h[i] == h0[i])
                continue;
            stk_param_info_t info;
            if (i < np)
                stk_model_param_info(d->model, i, &info);
            else
                stk_model_buffer_info(d->model, i - np, &info);
            snprintf(where, sizeof(where), ": this rank's tensor %zu ('%s', %zu floats at %zu) is not rank 0's", i,
                     info.name, info.count, info.offset);
            break;
        }
    }
    free(h0);
    free(mine_h);
    return stk__error(STK_ECONFIG, "ddp: rank %d's model has rank 0's counts but other tensor names, shapes or "
                      "offsets%s", bad, where);
}

int stk_ddp_check_params(stk_ddp_t *d)
{
    if (!d)
        return stk__error(-EINVAL, "stk_ddp_check_params: NULL ddp");
    if (stk_comm_backend(d->comm) == STK_COMM_NCCL)
        return stk__error(-ENOTSUP, "ddp: parameter check reads host memory; the nccl backend's are on the device");
    int n = stk_comm_size(d->comm);
    size_t nf = 0;
    const float *p = stk_model_params(d->model, &nf);
    uint64_t h = stk__xxh64(p, nf * sizeof(float), 0);
    uint64_t *all = calloc((size_t)n, sizeof(*all));
    if (!all)
        return stk__error(-ENOMEM, "ddp: out of memory");
    int rc = stk_comm_allgather(d->comm, &h, all, 1, STK_DTYPE_I64);
    if (rc == 0) {
        for (int r = 1; r < n; r++) {
            if (all[r] != all[0]) {
                rc = stk__error(STK_ERANK, "ddp: rank %d's parameters differ from rank 0's (hash %016llx against "
                                "%016llx)", r, (unsigned long long)all[r], (unsigned long long)all[0]);
                break;
            }
        }
    } else {
        stk__error_prefix(rc, "ddp: parameter check");
    }
    free(all);
    return rc;
}

int stk_ddp_broadcast_buffers(stk_ddp_t *d)
{
    if (!d)
        return stk__error(-EINVAL, "stk_ddp_broadcast_buffers: NULL ddp");
    size_t nb = 0;
    float *buf = stk_model_buffers(d->model, &nb);
    int rc = stk_comm_broadcast(d->comm, buf, nb, STK_DTYPE_F32, 0);
    return rc < 0 ? stk__error_prefix(rc, "ddp: buffers from rank 0") : 0;
}

static void ddp_free(stk_ddp_t *d)
{
    free(d->p);
    free(d->ready);
    free(d->b);
    free(d->ev);
    free(d);
}

int stk_ddp_create(stk_ddp_t **out, stk_comm_t *comm, stk_model_t *model, const stk_ddp_config_t *cfg)
{
    if (!out || !comm || !model)
        return stk__error(-EINVAL, "stk_ddp_create: NULL argument");
    *out = NULL;
    stk_ddp_config_t def;
    if (!cfg) {
        stk_ddp_config_default(&def);
        cfg = &def;
    }
    if (cfg->bucket_bytes < sizeof(float))
        return stk__error(STK_ECONFIG, "ddp: bucket_bytes %zu is below one float", cfg->bucket_bytes);
    stk_ddp_t *d = calloc(1, sizeof(*d));
    if (!d)
        return stk__error(-ENOMEM, "ddp: out of memory");
    d->comm = comm;
    d->model = model;
    d->cfg = *cfg;
    size_t ng = 0;
    d->grads = stk_model_grads(model, &ng);
    if (cfg->trace_events && !(d->ev = calloc(cfg->trace_events, sizeof(*d->ev)))) {
        ddp_free(d);
        return stk__error(-ENOMEM, "ddp: out of memory");
    }
    int rc = check_layout(d);
    if (rc == 0 && cfg->broadcast_params) {
        size_t nf = 0, nb = 0;
        float *p = stk_model_params(model, &nf);
        float *b = stk_model_buffers(model, &nb);
        rc = stk_comm_broadcast(comm, p, nf, STK_DTYPE_F32, 0);
        if (rc == 0)
            rc = stk_comm_broadcast(comm, b, nb, STK_DTYPE_F32, 0);
        if (rc < 0)
            stk__error_prefix(rc, "ddp: parameters from rank 0");
        if (rc == 0 && stk_comm_backend(comm) != STK_COMM_NCCL)
            rc = stk_ddp_check_params(d);
    }
    if (rc == 0)
        rc = build_buckets(d);
    if (rc == 0 && cfg->sync_bn) {
        stk__bn_sync_t s = {.allgather = bn_allgather, .allreduce_sum = bn_allreduce, .user = d,
                            .size = stk_comm_size(comm)};
        rc = stk__model_set_bn_sync(model, &s);
        if (rc < 0)
            stk__error_prefix(rc, "ddp");
    }
    if (rc < 0) {
        ddp_free(d);
        return rc;
    }
    /* A bucket's reduction waits for the backward work queued before its
     * hook on the model's stream (an event), not for the whole device,
     * and backward goes on queueing while it runs. */
    void *stream = stk_comm_backend(comm) == STK_COMM_NCCL ? stk__model_stream(model) : NULL;
    if (stream) {
        stk_comm_set_stream(comm, stream);
        d->set_stream = 1;
    }
    stk_model_set_grad_hook(model, on_grad_ready, d);
    *out = d;
    return 0;
}

/* Waits for every started bucket; records times and the first error. */
static int drain(stk_ddp_t *d)
{
    int rc = d->err;
    for (size_t i = 0; i < d->nb; i++) {
        ddp_bucket_t *b = &d->b[i];
        if (!b->work)
            continue;
        double t0 = 0, t1 = 0;
        int e = stk__comm_wait_times(&b->work, &t0, &t1);
        if (e < 0 && rc == 0) {
            rc = e;
            snprintf(d->errmsg, sizeof(d->errmsg), "ddp: bucket %zu of %zu (floats %zu..%zu): %s", i, d->nb, b->lo,
                     b->hi, stk_error_message());
        }
        if (e == 0) {
            d->st.reduce_s += t1 - t0;
            if (t0 < d->t_end)
                d->st.early++;
            if (d->cfg.trace_events) {
                record(d, STK_DDP_EV_REDUCE_BEGIN, i, t0);
                record(d, STK_DDP_EV_REDUCE_END, i, t1);
            }
        }
    }
    return rc;
}

void stk_ddp_destroy(stk_ddp_t **pd)
{
    if (!pd || !*pd)
        return;
    stk_ddp_t *d = *pd;
    *pd = NULL;
    drain(d);
    stk_model_set_grad_hook(d->model, NULL, NULL);
    if (d->set_stream)
        stk_comm_set_stream(d->comm, NULL);
    if (d->cfg.sync_bn)
        stk__model_set_bn_sync(d->model, NULL);
    ddp_free(d);
}

/* ------------------------------------------------------------ the steps */

int stk_ddp_prepare(stk_ddp_t *d, int sync)
{
    if (!d)
        return stk__error(-EINVAL, "stk_ddp_prepare: NULL ddp");
    if (d->active)
        return stk__error(STK_ESTATE, "ddp: prepare called twice without finish");
    d->sync = sync != 0;
    d->active = 1;
    d->err = 0;
    d->next = 0;
    memset(d->ready, 0, d->np ? d->np : 1);
    for (size_t i = 0; i < d->nb; i++) {
        d->b[i].pending = d->b[i].nparams;
        d->b[i].launched = 0;
        d->b[i].work = NULL;
    }
    d->t_begin = stk__now_s();
    if (d->cfg.trace_events)
        record(d, STK_DDP_EV_BACKWARD_BEGIN, d->sync, d->t_begin);
    return 0;
}

int stk_ddp_finish(stk_ddp_t *d)
{
    if (!d)
        return stk__error(-EINVAL, "stk_ddp_finish: NULL ddp");
    if (!d->active)
        return stk__error(STK_ESTATE, "ddp: finish without prepare");
    d->t_end = stk__now_s();
    if (d->cfg.trace_events)
        record(d, STK_DDP_EV_BACKWARD_END, d->sync, d->t_end);
    d->active = 0;
    if (!d->sync) {
        d->st.local_steps++;
        return 0;
    }
    d->st.sync_steps++;
    d->st.backward_s += d->t_end - d->t_begin;
    /* Buckets whose gradients never came (layers that reached no loss)
     * still go, in order, so every rank runs the same collectives. */
    while (d->next < d->nb)
        launch(d, d->next++);
    int rc = drain(d);
    d->st.exposed_s += stk__now_s() - d->t_end;
    if (rc < 0)
        return stk__error(rc, "%s", d->errmsg);
    return 0;
}

int stk_ddp_sync_grads(stk_ddp_t *d)
{
    int rc = stk_ddp_prepare(d, 1);
    /* No backward: finish starts every bucket, in order, and waits. */
    return rc < 0 ? rc : stk_ddp_finish(d);
}

int stk_ddp_backward(stk_ddp_t *d, int sync)
{
    int rc = stk_ddp_prepare(d, sync);
    if (rc < 0)
        return rc;
    int brc = stk_model_backward(d->model);
    char msg[STK__COMM_MSG_MAX];
    if (brc < 0)
        snprintf(msg, sizeof(msg), "%s", stk_error_message());
    /* Even after a failed backward the started reductions are waited for:
     * their buffers must stay valid and the peers expect them. */
    rc = stk_ddp_finish(d);
    if (brc < 0)
        return stk__error(brc, "%s", msg);
    return rc;
}

/* ----------------------------------------------------------------- queries */

size_t stk_ddp_num_buckets(const stk_ddp_t *d)
{
    return d ? d->nb : 0;
}

int stk_ddp_bucket(const stk_ddp_t *d, size_t i, size_t *offset, size_t *count)
{
    if (!d)
        return stk__error(-EINVAL, "stk_ddp_bucket: NULL ddp");
    if (i >= d->nb)
        return stk__error(-ERANGE, "stk_ddp_bucket: no bucket %zu (there are %zu)", i, d->nb);
    if (offset)
        *offset = d->b[i].lo;
    if (count)
        *count = d->b[i].hi - d->b[i].lo;
    return 0;
}

void stk_ddp_stats(const stk_ddp_t *d, stk_ddp_stats_t *st)
{
    if (!st)
        return;
    memset(st, 0, sizeof(*st));
    if (d)
        *st = d->st;
}

static int cmp_event(const void *a, const void *b)
{
    const stk_ddp_event_t *x = a, *y = b;
    return x->t < y->t ? -1 : x->t > y->t;
}

size_t stk_ddp_events(const stk_ddp_t *d, stk_ddp_event_t *out, size_t cap)
{
    if (!d)
        return 0;
    size_t n = d->nev < cap ? d->nev : cap;
    if (out && n) {
        memcpy(out, d->ev, n * sizeof(*out));
        /* Reduction events come in at finish with the comm thread's times. */
        qsort(out, n, sizeof(*out), cmp_event);
    }
    return d->nev;
}
