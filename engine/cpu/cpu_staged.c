/* SPDX-License-Identifier: MIT */
/* The CPU backend posing as a device, for tests on machines without one
 * (STK_ENGINE_STAGED=1): it reports host_memory = 0, so the engine takes its
 * device path (targets staged through upload, the loss and counts read back
 * through download, optimizer state saved and loaded through host copies),
 * and the slots of that path check that every pointer they get as device
 * memory is inside a block from alloc (activations are not checked: the input
 * batch, and so the logits of a model that is only a loss, is the
 * caller's, a host array in tests). A host pointer where device memory
 * is due would be a crash on a GPU; here it is STK_EDEVICE naming the slot,
 * reported by the slot or, for slots that return nothing, by the next
 * download or synchronize, as a device reports late errors. */
#include "cpu.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct block {
    uintptr_t at;
    size_t bytes;
} block_t;

struct cpu_staged {
    const stk__backend_iface_t *plain; /* the CPU backend's own slots */
    block_t *blocks;
    size_t n, cap;
    int late;                          /* an error a void slot raised */
    char late_msg[160];
};

void stk__cpu_staged_track(cpu_ctx_t *c, void *p, size_t bytes)
{
    cpu_staged_t *s = c->staged;
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 64;
        block_t *nb = realloc(s->blocks, cap * sizeof(*nb));
        if (!nb) {
            /* Untracked memory fails its next check: loud, not silent. */
            return;
        }
        s->blocks = nb;
        s->cap = cap;
    }
    s->blocks[s->n++] = (block_t){(uintptr_t)p, bytes};
}

void stk__cpu_staged_untrack(cpu_ctx_t *c, void *p)
{
    cpu_staged_t *s = c->staged;
    for (size_t i = 0; i < s->n; i++)
        if (s->blocks[i].at == (uintptr_t)p) {
            s->blocks[i] = s->blocks[--s->n];
            return;
        }
}

void stk__cpu_staged_free(cpu_ctx_t *c)
{
    if (c->staged) {
        free(c->staged->blocks);
        free(c->staged);
        c->staged = NULL;
    }
}

/* 1 when [p, p + bytes) lies inside one allocation (NULL: not checked). */
static int on_device(const cpu_ctx_t *c, const void *p, size_t bytes)
{
    if (!p)
        return 1;
    uintptr_t a = (uintptr_t)p;
    for (size_t i = 0; i < c->staged->n; i++) {
        const block_t *b = &c->staged->blocks[i];
        if (a >= b->at && a - b->at <= b->bytes && bytes <= b->bytes - (a - b->at))
            return 1;
    }
    return 0;
}

/* Checks one pointer; remembers the first failure of a void slot. */
static int check(void *ctx, const char *slot, const char *arg, const void *p, size_t bytes)
{
    cpu_ctx_t *c = ctx;
    if (on_device(c, p, bytes))
        return 0;
    if (!c->staged->late) {
        c->staged->late = 1;
        snprintf(c->staged->late_msg, sizeof(c->staged->late_msg), "%s: %s (%zu bytes) is not device memory",
                 slot, arg, bytes);
    }
    return stk__error(STK_EDEVICE, "staged cpu backend: %s: %s (%zu bytes) is not device memory", slot, arg,
                      bytes);
}

static int take_late(void *ctx)
{
    cpu_staged_t *s = ((cpu_ctx_t *)ctx)->staged;
    if (!s->late)
        return 0;
    s->late = 0;
    return stk__error(STK_EDEVICE, "staged cpu backend: %s", s->late_msg);
}

#define PLAIN(ctx) (((cpu_ctx_t *)(ctx))->staged->plain)
#define F(n) ((size_t)(n) * sizeof(float))
#define I(n) ((size_t)(n) * sizeof(int64_t))

static int st_synchronize(void *ctx)
{
    return take_late(ctx);
}

static int st_upload(void *ctx, void *dst, const void *src, size_t bytes)
{
    int rc = check(ctx, "upload", "dst", dst, bytes);
    return rc ? rc : PLAIN(ctx)->upload(ctx, dst, src, bytes);
}

static int st_download(void *ctx, void *dst, const void *src, size_t bytes)
{
    int rc = take_late(ctx);
    if (!rc)
        rc = check(ctx, "download", "src", src, bytes);
    return rc ? rc : PLAIN(ctx)->download(ctx, dst, src, bytes);
}

static void st_zero(void *ctx, float *dst, size_t n)
{
    if (!check(ctx, "zero", "dst", dst, F(n)))
        PLAIN(ctx)->zero(ctx, dst, n);
}

static void st_bn_update_running(void *ctx, int64_t c, int64_t count, float momentum, const float *mean,
                                 const float *var, float *running_mean, float *running_var)
{
    if (!check(ctx, "bn_update_running", "mean", mean, F(c)) && !check(ctx, "bn_update_running", "var", var, F(c)) &&
        !check(ctx, "bn_update_running", "running_mean", running_mean, F(c)) &&
        !check(ctx, "bn_update_running", "running_var", running_var, F(c)))
        PLAIN(ctx)->bn_update_running(ctx, c, count, momentum, mean, var, running_mean, running_var);
}

static int st_xent_forward(void *ctx, int64_t n, int64_t k, const float *logits, const int64_t *labels,
                           const float *soft, float smoothing, float *prob, float *loss)
{
    int rc = check(ctx, "xent_forward", "labels", labels, I(n));
    if (!rc)
        rc = check(ctx, "xent_forward", "soft targets", soft, F(n * k));
    if (!rc)
        rc = check(ctx, "xent_forward", "prob", prob, F(n * k));
    if (!rc)
        rc = check(ctx, "xent_forward", "loss", loss, F(1));
    return rc ? rc : PLAIN(ctx)->xent_forward(ctx, n, k, logits, labels, soft, smoothing, prob, loss);
}

static void st_xent_backward(void *ctx, int64_t n, int64_t k, const float *prob, const int64_t *labels,
                             const float *soft, float smoothing, float scale, float *dlogits)
{
    if (!check(ctx, "xent_backward", "prob", prob, F(n * k)) && !check(ctx, "xent_backward", "labels", labels, I(n)) &&
        !check(ctx, "xent_backward", "soft targets", soft, F(n * k)))
        PLAIN(ctx)->xent_backward(ctx, n, k, prob, labels, soft, smoothing, scale, dlogits);
}

static int st_count_correct(void *ctx, int64_t n, int64_t k, int topk, const float *logits, const int64_t *labels,
                            int64_t *correct)
{
    int rc = check(ctx, "count_correct", "labels", labels, I(n));
    if (!rc)
        rc = check(ctx, "count_correct", "correct", correct, I(1));
    return rc ? rc : PLAIN(ctx)->count_correct(ctx, n, k, topk, logits, labels, correct);
}

static int st_optim_update(void *ctx, stk__op_t *op, const stk__optim_scalars_t *k, float *params,
                           const float *grads, float *s0, float *s1, float *s2)
{
    /* The op's ranges index the arenas: its extent is what must be there. */
    size_t end = 0;
    for (size_t i = 0; i < op->nchunks; i++)
        if (op->chunks[i].offset + op->chunks[i].count > end)
            end = op->chunks[i].offset + op->chunks[i].count;
    int rc = check(ctx, "optim_update", "params", params, F(end));
    if (!rc)
        rc = check(ctx, "optim_update", "grads", grads, F(end));
    if (!rc)
        rc = check(ctx, "optim_update", "state 0", s0, F(end));
    if (!rc)
        rc = check(ctx, "optim_update", "state 1", s1, F(end));
    if (!rc)
        rc = check(ctx, "optim_update", "state 2", s2, F(end));
    return rc ? rc : PLAIN(ctx)->optim_update(ctx, op, k, params, grads, s0, s1, s2);
}

static int st_unscale_grads(void *ctx, size_t n, float *g, float inv_scale, int *nonfinite)
{
    int rc = check(ctx, "unscale_grads", "gradients", g, F(n));
    return rc ? rc : PLAIN(ctx)->unscale_grads(ctx, n, g, inv_scale, nonfinite);
}

static stk__backend_iface_t staged_iface;
static pthread_once_t staged_once = PTHREAD_ONCE_INIT;
static const stk__backend_iface_t *staged_plain;

static void staged_init(void)
{
    staged_iface = *staged_plain;
    staged_iface.name = "cpu-staged";
    staged_iface.host_memory = 0;
    staged_iface.synchronize = st_synchronize;
    staged_iface.upload = st_upload;
    staged_iface.download = st_download;
    staged_iface.zero = st_zero;
    staged_iface.bn_update_running = st_bn_update_running;
    staged_iface.xent_forward = st_xent_forward;
    staged_iface.xent_backward = st_xent_backward;
    staged_iface.count_correct = st_count_correct;
    staged_iface.optim_update = st_optim_update;
    staged_iface.unscale_grads = st_unscale_grads;
}

int stk__cpu_staged_enable(cpu_ctx_t *c, const stk__backend_iface_t *plain, const stk__backend_iface_t **iface)
{
    c->staged = calloc(1, sizeof(*c->staged));
    if (!c->staged)
        return stk__error(-ENOMEM, "staged cpu backend: out of memory");
    c->staged->plain = plain;
    staged_plain = plain;
    pthread_once(&staged_once, staged_init);
    *iface = &staged_iface;
    return 0;
}
