/* SPDX-License-Identifier: MIT */
/* SGD, Adam, AdamW and RMSprop over a flat parameter array: parameter
 * groups, step counts and the state blob; the configuration and its text
 * form are optim_config.c's, the element-wise updates optim_kernels.c's. An
 * optimizer over host arrays runs them itself; one made for a model
 * (optim_model.c) keeps its state in the model's backend memory and runs
 * the backend's fused update slot, so on a device nothing leaves it. */
#include "internal.h"
#include "optim_internal.h"
#include "optim_util.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define OPTIM_MAGIC "STKOPTM"
#define OPTIM_VERSION 1u
#define OPTIM_PAR_CHUNK ((size_t)1 << 16) /* elements per OpenMP work item */


/* ---- lifetime --------------------------------------------------------- */

typedef struct range_ref {
    size_t off, cnt, group;
} range_ref_t;

static int cmp_range(const void *a, const void *b)
{
    const range_ref_t *x = a, *y = b;
    return (x->off > y->off) - (x->off < y->off);
}

static int check_ranges(const stk_optim_config_t *cfg, const stk_optim_group_t *gs, size_t ng)
{
    size_t total = 0;
    for (size_t g = 0; g < ng; g++) {
        if (gs[g].n_ranges && !gs[g].ranges)
            return stk__error(-EINVAL, "optimizer group %zu: NULL ranges", g);
        total += gs[g].n_ranges;
    }
    if (!total)
        return 0;
    range_ref_t *all = malloc(total * sizeof(*all));
    if (!all)
        return stk__error(-ENOMEM, "optimizer: out of memory");
    size_t k = 0;
    int rc = 0;
    for (size_t g = 0; g < ng && !rc; g++)
        for (size_t r = 0; r < gs[g].n_ranges; r++) {
            const stk_optim_range_t *x = &gs[g].ranges[r];
            if (x->offset > cfg->n_params || x->count > cfg->n_params - x->offset) {
                rc = stk__error(STK_ECONFIG, "optimizer group %zu range %zu: [%zu, +%zu) outside the %zu parameters",
                                g, r, x->offset, x->count, cfg->n_params);
                break;
            }
            all[k++] = (range_ref_t){x->offset, x->count, g};
        }
    if (!rc) {
        qsort(all, k, sizeof(*all), cmp_range);
        for (size_t i = 1; i < k; i++)
            if (all[i - 1].cnt && all[i].cnt && all[i - 1].off + all[i - 1].cnt > all[i].off) {
                rc = stk__error(STK_ECONFIG,
                                "optimizer: ranges overlap: [%zu, +%zu) of group %zu and [%zu, +%zu) of group %zu",
                                all[i - 1].off, all[i - 1].cnt, all[i - 1].group, all[i].off, all[i].cnt,
                                all[i].group);
                break;
            }
    }
    free(all);
    return rc;
}

int stk_optim_create(stk_optim_t **out, const stk_optim_config_t *cfg)
{
    if (!out || !cfg)
        return stk__error(-EINVAL, "stk_optim_create: NULL argument");
    *out = NULL;
    if (!stk__optim_kind_valid(cfg->kind))
        return stk__error(STK_ECONFIG, "optimizer: invalid kind %d", (int)cfg->kind);
    if (cfg->n_groups && !cfg->groups)
        return stk__error(-EINVAL, "optimizer: n_groups %zu with NULL groups", cfg->n_groups);

    stk_optim_range_t whole = {0, cfg->n_params};
    stk_optim_group_t one = {&whole, 1, cfg->defaults};
    const stk_optim_group_t *gs = cfg->n_groups ? cfg->groups : &one;
    size_t ng = cfg->n_groups ? cfg->n_groups : 1;

    for (size_t g = 0; g < ng; g++) {
        char where[48];
        snprintf(where, sizeof(where), "group %zu: ", g);
        int rc = stk__optim_check_hparams(cfg->kind, &gs[g].h, where);
        if (rc)
            return rc;
    }
    int rc = check_ranges(cfg, gs, ng);
    if (rc)
        return rc;

    stk_optim_t *o = calloc(1, sizeof(*o));
    if (!o)
        return stk__error(-ENOMEM, "optimizer: out of memory");
    o->kind = cfg->kind;
    o->n = cfg->n_params;
    o->ng = ng;
    o->groups = calloc(ng, sizeof(*o->groups));
    if (!o->groups)
        goto nomem;
    for (size_t g = 0; g < ng; g++) {
        optim_group_t *d = &o->groups[g];
        d->h = gs[g].h;
        d->base_lr = gs[g].h.lr;
        d->n_ranges = gs[g].n_ranges;
        if (d->n_ranges) {
            d->ranges = malloc(d->n_ranges * sizeof(*d->ranges));
            if (!d->ranges)
                goto nomem;
            memcpy(d->ranges, gs[g].ranges, d->n_ranges * sizeof(*d->ranges));
        }
    }
    *out = o;
    return 0;
nomem:
    stk_optim_destroy(&o);
    return stk__error(-ENOMEM, "optimizer: out of memory");
}

void stk_optim_destroy(stk_optim_t **opt)
{
    if (!opt || !*opt)
        return;
    stk_optim_t *o = *opt;
    /* A captured training step of the model refers to this optimizer. */
    if (o->model)
        o->model->graph_gen++;
    if (o->groups)
        for (size_t g = 0; g < o->ng; g++) {
            free(o->groups[g].ranges);
            if (o->be)
                o->be->iface->op_destroy(o->be->ctx, o->groups[g].op);
        }
    free(o->groups);
    for (int i = 0; i < OPTIM_NBUF; i++) {
        if (o->be)
            o->be->iface->free(o->be->ctx, o->buf[i]);
        else
            free(o->buf[i]);
    }
    free(o);
    *opt = NULL;
}

/* ---- updates ---------------------------------------------------------- */

static int need_buf(stk_optim_t *o, int i)
{
    if (o->buf[i])
        return 0;
    /* A model's backend allocates zeroed memory, as calloc. */
    o->buf[i] = o->be ? o->be->iface->alloc(o->be->ctx, (o->n ? o->n : 1) * sizeof(float))
                      : calloc(o->n ? o->n : 1, sizeof(float));
    return o->buf[i] ? 0 : stk__error(-ENOMEM, "optimizer: out of memory for %zu state values", o->n);
}

int stk_optim_step_begin(stk_optim_t *o)
{
    if (!o)
        return stk__error(-EINVAL, "stk_optim_step_begin: NULL argument");
    if (o->in_step)
        return stk__error(STK_ESTATE, "stk_optim_step_begin: a step is already open (call stk_optim_step_end)");
    /* Allocate every buffer this step needs before touching anything, so
     * that -ENOMEM leaves params and state as they were. */
    for (size_t gi = 0; gi < o->ng; gi++) {
        const stk_optim_hparams_t *h = &o->groups[gi].h;
        int rc = 0;
        switch (o->kind) {
        case STK_OPTIM_SGD:
            if (h->momentum != 0)
                rc = need_buf(o, 0);
            break;
        case STK_OPTIM_ADAM:
        case STK_OPTIM_ADAMW:
            rc = need_buf(o, 0);
            if (!rc)
                rc = need_buf(o, 1);
            if (!rc && h->amsgrad)
                rc = need_buf(o, 2);
            break;
        case STK_OPTIM_RMSPROP:
            rc = need_buf(o, 0);
            if (!rc && h->momentum > 0)
                rc = need_buf(o, 1);
            if (!rc && h->centered)
                rc = need_buf(o, 2);
            break;
        }
        if (rc)
            return rc;
    }
    for (size_t gi = 0; gi < o->ng; gi++) {
        optim_group_t *g = &o->groups[gi];
        g->step++;
        stk__optim_scalars(o->kind, &g->h, g->step, !g->buf_valid, &g->k);
    }
    o->in_step = 1;
    return 0;
}

int stk_optim_step_slice(const stk_optim_t *o, float *params, const float *grads, size_t offset, size_t count)
{
    if (!o || (count && (!params || !grads)))
        return stk__error(-EINVAL, "stk_optim_step_slice: NULL argument");
    if (!o->in_step)
        return stk__error(STK_ESTATE, "stk_optim_step_slice: no open step (call stk_optim_step_begin)");
    if (!stk__optim_host_state(o))
        return stk__error(STK_ESTATE, "stk_optim_step_slice: the state is in device memory (use "
                          "stk_optim_step_model)");
    if (offset > o->n || count > o->n - offset)
        return stk__error(-ERANGE, "stk_optim_step_slice: [%zu, +%zu) outside the %zu parameters", offset, count,
                          o->n);
    size_t lo = offset, hi = offset + count;
    for (size_t gi = 0; gi < o->ng; gi++) {
        const optim_group_t *g = &o->groups[gi];
        for (size_t r = 0; r < g->n_ranges; r++) {
            size_t a = g->ranges[r].offset, b = a + g->ranges[r].count;
            if (a < lo)
                a = lo;
            if (b > hi)
                b = hi;
            if (a >= b)
                continue;
            stk__optim_kernel(&g->k, params + a, grads + a, o->buf[0] ? o->buf[0] + a : NULL,
                              o->buf[1] ? o->buf[1] + a : NULL, o->buf[2] ? o->buf[2] + a : NULL, b - a);
        }
    }
    return 0;
}

int stk_optim_step_end(stk_optim_t *o)
{
    if (!o)
        return stk__error(-EINVAL, "stk_optim_step_end: NULL argument");
    if (!o->in_step)
        return stk__error(STK_ESTATE, "stk_optim_step_end: no open step");
    /* PyTorch stores the buffer back after the step: None whenever the
     * step ran without momentum, so it starts afresh later. */
    if (o->kind == STK_OPTIM_SGD)
        for (size_t gi = 0; gi < o->ng; gi++)
            o->groups[gi].buf_valid = o->groups[gi].h.momentum != 0;
    o->in_step = 0;
    return 0;
}

int stk_optim_step(stk_optim_t *o, float *params, const float *grads)
{
    if (!o || (o->n && (!params || !grads)))
        return stk__error(-EINVAL, "stk_optim_step: NULL argument");
    if (!stk__optim_host_state(o))
        return stk__error(STK_ESTATE, "stk_optim_step: the state is in device memory (use stk_optim_step_model)");
    int rc = stk_optim_step_begin(o);
    if (rc)
        return rc;
#if defined(_OPENMP)
    /* Built with OpenMP (the engine's oneDNN dependency brings it): split
     * large arrays over the OpenMP threads, like PyTorch's intra-op
     * threads. Elementwise, so the bits do not depend on the split. */
    if (o->n >= 4 * OPTIM_PAR_CHUNK) {
        long chunks = (long)((o->n + OPTIM_PAR_CHUNK - 1) / OPTIM_PAR_CHUNK);
#pragma omp parallel for schedule(static)
        for (long c = 0; c < chunks; c++) {
            size_t off = (size_t)c * OPTIM_PAR_CHUNK;
            size_t cnt = o->n - off < OPTIM_PAR_CHUNK ? o->n - off : OPTIM_PAR_CHUNK;
            stk_optim_step_slice(o, params, grads, off, cnt);
        }
    } else
#endif
        rc = stk_optim_step_slice(o, params, grads, 0, o->n);
    stk_optim_step_end(o);
    return rc;
}

/* ---- accessors -------------------------------------------------------- */

size_t stk_optim_num_groups(const stk_optim_t *o)
{
    return o ? o->ng : 0;
}

stk_optim_kind_t stk_optim_kind(const stk_optim_t *o)
{
    return o ? o->kind : (stk_optim_kind_t)0;
}

int64_t stk_optim_group_steps(const stk_optim_t *o, size_t group)
{
    return o && group < o->ng ? o->groups[group].step : 0;
}

static int group_ok(const stk_optim_t *o, size_t group, const void *p, const char *fn)
{
    if (!o || !p)
        return stk__error(-EINVAL, "%s: NULL argument", fn);
    if (group >= o->ng)
        return stk__error(-ERANGE, "%s: group %zu of %zu", fn, group, o->ng);
    return 0;
}

int stk_optim_get_lr(const stk_optim_t *o, size_t group, double *lr)
{
    int rc = group_ok(o, group, lr, "stk_optim_get_lr");
    if (!rc)
        *lr = o->groups[group].h.lr;
    return rc;
}

int stk_optim_set_lr(stk_optim_t *o, size_t group, double lr)
{
    int rc = group_ok(o, group, o, "stk_optim_set_lr");
    if (rc)
        return rc;
    if (!(lr >= 0) || !isfinite(lr))
        return stk__error(-EINVAL, "stk_optim_set_lr: invalid lr %g for group %zu", lr, group);
    o->groups[group].h.lr = lr;
    return 0;
}

int stk_optim_get_base_lr(const stk_optim_t *o, size_t group, double *lr)
{
    int rc = group_ok(o, group, lr, "stk_optim_get_base_lr");
    if (!rc)
        *lr = o->groups[group].base_lr;
    return rc;
}

static int uses_beta1(const stk_optim_t *o)
{
    return o->kind == STK_OPTIM_ADAM || o->kind == STK_OPTIM_ADAMW;
}

int stk_optim_get_momentum(const stk_optim_t *o, size_t group, double *m)
{
    int rc = group_ok(o, group, m, "stk_optim_get_momentum");
    if (!rc)
        *m = uses_beta1(o) ? o->groups[group].h.beta1 : o->groups[group].h.momentum;
    return rc;
}

int stk_optim_set_momentum(stk_optim_t *o, size_t group, double m)
{
    int rc = group_ok(o, group, o, "stk_optim_set_momentum");
    if (rc)
        return rc;
    int ok = uses_beta1(o) ? (m >= 0 && m < 1) : (m >= 0 && isfinite(m));
    if (!ok)
        return stk__error(-EINVAL, "stk_optim_set_momentum: invalid %s %g for group %zu",
                          uses_beta1(o) ? "beta1" : "momentum", m, group);
    if (uses_beta1(o))
        o->groups[group].h.beta1 = m;
    else
        o->groups[group].h.momentum = m;
    return 0;
}

/* ---- state blob ------------------------------------------------------- *
 * "STKOPTM\0", u32 version, u32 kind, u64 n_params, u32 n_groups,
 * u32 n_buffers; per group: u64 n_ranges, (u64 offset, u64 count) each,
 * i64 step, f64 lr, f64 momentum-or-beta1, u32 buf_valid, u32 0;
 * per buffer: u32 present, then n_params f32 if present;
 * u64 checksum of everything before it. All little-endian. */

/* host[i]: buffer i in host memory (only read when w writes). */
static void serialize(const stk_optim_t *o, stk__blobw_t *w, float *const host[OPTIM_NBUF])
{
    stk__w_bytes(w, OPTIM_MAGIC, 8);
    stk__w_u32(w, OPTIM_VERSION);
    stk__w_u32(w, (uint32_t)o->kind);
    stk__w_u64(w, o->n);
    stk__w_u32(w, (uint32_t)o->ng);
    stk__w_u32(w, OPTIM_NBUF);
    for (size_t g = 0; g < o->ng; g++) {
        const optim_group_t *x = &o->groups[g];
        stk__w_u64(w, x->n_ranges);
        for (size_t r = 0; r < x->n_ranges; r++) {
            stk__w_u64(w, x->ranges[r].offset);
            stk__w_u64(w, x->ranges[r].count);
        }
        stk__w_u64(w, (uint64_t)x->step);
        stk__w_f64(w, x->h.lr);
        stk__w_f64(w, uses_beta1(o) ? x->h.beta1 : x->h.momentum);
        stk__w_u32(w, (uint32_t)x->buf_valid);
        stk__w_u32(w, 0);
    }
    for (int i = 0; i < OPTIM_NBUF; i++) {
        stk__w_u32(w, o->buf[i] != NULL);
        if (o->buf[i])
            stk__w_f32s(w, host[i], o->n);
    }
}

size_t stk_optim_state_size(const stk_optim_t *o)
{
    if (!o)
        return 0;
    stk__blobw_t w = {NULL, 0, 0};
    serialize(o, &w, o->buf);
    return w.len + 8;
}

int stk_optim_state_save(const stk_optim_t *o, void *buf, size_t cap, size_t *written)
{
    if (!o || !written || (!buf && cap))
        return stk__error(-EINVAL, "stk_optim_state_save: NULL argument");
    if (o->in_step)
        return stk__error(STK_ESTATE, "optimizer state: a step is open (call stk_optim_step_end first)");
    size_t need = stk_optim_state_size(o);
    *written = need;
    if (cap < need)
        return stk__error(-ENOSPC, "optimizer state: needs %zu bytes, buffer has %zu", need, cap);
    /* State in device memory is read through host copies. */
    float *host[OPTIM_NBUF] = {NULL, NULL, NULL};
    int rc = 0, staged = !stk__optim_host_state(o);
    for (int i = 0; i < OPTIM_NBUF && !rc; i++) {
        host[i] = o->buf[i];
        if (!staged || !o->buf[i])
            continue;
        if (!(host[i] = malloc((o->n ? o->n : 1) * sizeof(float))))
            rc = stk__error(-ENOMEM, "optimizer state: out of memory");
        else
            rc = o->be->iface->download(o->be->ctx, host[i], o->buf[i], o->n * sizeof(float));
    }
    if (rc == 0) {
        stk__blobw_t w = {buf, 0, cap};
        serialize(o, &w, host);
        stk__w_u64(&w, stk__blob_hash(buf, w.len));
    }
    if (staged)
        for (int i = 0; i < OPTIM_NBUF; i++)
            free(host[i]);
    return rc;
}

int stk_optim_state_load(stk_optim_t *o, const void *buf, size_t len)
{
    if (!o || (!buf && len))
        return stk__error(-EINVAL, "stk_optim_state_load: NULL argument");
    if (o->in_step)
        return stk__error(STK_ESTATE, "optimizer state: a step is open (call stk_optim_step_end first)");
    if (len < 8 + 8 || memcmp(buf, OPTIM_MAGIC, 8) != 0)
        return stk__error(STK_EFORMAT, "optimizer state: not an optimizer state blob (%zu bytes, bad magic)", len);
    stk__blobr_t r = {buf, len - 8, 8, 0};
    uint32_t version = stk__r_u32(&r);
    if (version != OPTIM_VERSION)
        return stk__error(STK_EFORMAT, "optimizer state: version %u, this library reads version %u", version,
                          OPTIM_VERSION);
    uint64_t sum = 0;
    for (int i = 0; i < 8; i++)
        sum |= (uint64_t)((const uint8_t *)buf)[len - 8 + (size_t)i] << (8 * i);
    if (sum != stk__blob_hash(buf, len - 8))
        return stk__error(STK_EFORMAT, "optimizer state: checksum mismatch (truncated or corrupt blob of %zu bytes)",
                          len);
    uint32_t kind = stk__r_u32(&r);
    uint64_t n = stk__r_u64(&r);
    uint32_t ng = stk__r_u32(&r);
    uint32_t nbuf = stk__r_u32(&r);
    if (kind != (uint32_t)o->kind)
        return stk__error(STK_ESHAPE, "optimizer state: saved by %s, this optimizer is %s",
                          stk_optim_kind_name((stk_optim_kind_t)kind), stk_optim_kind_name(o->kind));
    if (n != o->n)
        return stk__error(STK_ESHAPE, "optimizer state: saved for %llu parameters, this optimizer has %zu",
                          (unsigned long long)n, o->n);
    if (ng != o->ng)
        return stk__error(STK_ESHAPE, "optimizer state: saved with %u groups, this optimizer has %zu", ng, o->ng);
    if (nbuf != OPTIM_NBUF)
        return stk__error(STK_EFORMAT, "optimizer state: %u buffers, expected %u", nbuf, OPTIM_NBUF);

    /* First pass: check everything; second: copy. So a bad blob changes
     * nothing. */
    size_t groups_at = r.pos;
    for (size_t g = 0; g < ng; g++) {
        const optim_group_t *x = &o->groups[g];
        uint64_t nr = stk__r_u64(&r);
        if (!r.bad && nr != x->n_ranges)
            return stk__error(STK_ESHAPE, "optimizer state: group %zu had %llu ranges, now %zu", g,
                              (unsigned long long)nr, x->n_ranges);
        for (size_t k = 0; k < x->n_ranges && !r.bad; k++) {
            uint64_t off = stk__r_u64(&r), cnt = stk__r_u64(&r);
            if (!r.bad && (off != x->ranges[k].offset || cnt != x->ranges[k].count))
                return stk__error(STK_ESHAPE,
                                  "optimizer state: group %zu range %zu was [%llu, +%llu), now [%zu, +%zu)", g, k,
                                  (unsigned long long)off, (unsigned long long)cnt, x->ranges[k].offset,
                                  x->ranges[k].count);
        }
        uint64_t step = stk__r_u64(&r);
        double lr = stk__r_f64(&r), mom = stk__r_f64(&r);
        stk__r_u32(&r);
        stk__r_u32(&r);
        if (!r.bad && ((int64_t)step < 0 || !(lr >= 0) || !isfinite(lr) || !(mom >= 0) || !isfinite(mom) ||
                       (uses_beta1(o) && !(mom < 1))))
            return stk__error(STK_EDATA, "optimizer state: group %zu has invalid step, lr or momentum", g);
        if (r.bad)
            break;
    }
    size_t bufs_at = r.pos;
    int present[OPTIM_NBUF] = {0, 0, 0};
    for (int i = 0; i < OPTIM_NBUF && !r.bad; i++) {
        present[i] = stk__r_u32(&r) != 0;
        if (present[i] && !stk__r_take(&r, o->n * 4))
            break;
    }
    if (r.bad || r.pos != r.len)
        return stk__error(STK_EFORMAT, "optimizer state: blob of %zu bytes is %s", len,
                          r.bad ? "truncated" : "longer than its contents");
    /* Everything that can fail for lack of memory comes first. State in
     * device memory is written through one host copy. */
    float *fresh[OPTIM_NBUF] = {NULL, NULL, NULL};
    int staged = !stk__optim_host_state(o);
    float *stage = staged ? malloc((o->n ? o->n : 1) * sizeof(float)) : NULL;
    int nomem = staged && !stage;
    for (int i = 0; i < OPTIM_NBUF && !nomem; i++)
        if (present[i] && !o->buf[i]) {
            size_t bytes = (o->n ? o->n : 1) * sizeof(float);
            fresh[i] = o->be ? o->be->iface->alloc(o->be->ctx, bytes) : malloc(bytes);
            nomem = !fresh[i];
        }
    if (nomem) {
        for (int j = 0; j < OPTIM_NBUF; j++)
            if (o->be)
                o->be->iface->free(o->be->ctx, fresh[j]);
            else
                free(fresh[j]);
        free(stage);
        return stk__error(-ENOMEM, "optimizer state: out of memory");
    }

    r.pos = groups_at;
    for (size_t g = 0; g < ng; g++) {
        optim_group_t *x = &o->groups[g];
        stk__r_take(&r, 8 + 16 * x->n_ranges);
        x->step = (int64_t)stk__r_u64(&r);
        x->h.lr = stk__r_f64(&r);
        double mom = stk__r_f64(&r);
        if (uses_beta1(o))
            x->h.beta1 = mom;
        else
            x->h.momentum = mom;
        x->buf_valid = stk__r_u32(&r) != 0;
        stk__r_u32(&r);
    }
    r.pos = bufs_at;
    int rc = 0;
    for (int i = 0; i < OPTIM_NBUF; i++) {
        stk__r_u32(&r);
        if (present[i]) {
            if (fresh[i]) {
                o->buf[i] = fresh[i];
                if (o->model)
                    o->model->graph_gen++;
            }
            stk__r_f32s(&r, staged ? stage : o->buf[i], o->n);
            if (staged && rc == 0)
                rc = o->be->iface->upload(o->be->ctx, o->buf[i], stage, o->n * sizeof(float));
        } else if (o->buf[i]) {
            /* Absent in the blob means never used: zeros, as at creation. */
            if (o->be)
                o->be->iface->zero(o->be->ctx, o->buf[i], o->n);
            else
                memset(o->buf[i], 0, o->n * sizeof(float));
        }
    }
    free(stage);
    return rc;
}
