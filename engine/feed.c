/* SPDX-License-Identifier: MIT */
/* Feeding a model on a device: page-locking the loader's arena for it
 * (the loader's pin hooks) and a double-buffered feed that copies batch
 * k + 1 on the backend's copy queue while step k computes (engine.h,
 * "feeding a device"). A backend without the feed slots but with device
 * memory of its own copies with upload; a host-memory backend (CPU) needs
 * no copy at all. */
#include "model.h"

#include <errno.h>
#include <stdlib.h>


int stk_model_pin_host(void *addr, size_t bytes, void *model)
{
    stk_model_t *m = model;
    if (!m || (!addr && bytes))
        return stk__error(-EINVAL, "stk_model_pin_host: NULL argument");
    const stk__backend_iface_t *be = m->be.iface;
    return be->pin_host && bytes ? be->pin_host(m->be.ctx, addr, bytes) : 0;
}

void stk_model_unpin_host(void *addr, size_t bytes, void *model)
{
    stk_model_t *m = model;
    (void)bytes;
    if (m && addr && m->be.iface->unpin_host)
        m->be.iface->unpin_host(m->be.ctx, addr);
}

struct stk_feed {
    stk_model_t *m;
    size_t cap;
    int direct; /* device memory is host memory: nothing to copy */
    int next;
    void *buf[STK__FEED_SLOTS];
    /* Each slot's copy in flight (bytes, and its host time where the
     * backend cannot time it), counted in stats once done. */
    size_t pending[STK__FEED_SLOTS];
    double host_s[STK__FEED_SLOTS];
    stk_feed_stats_t stats;
    /* Half batches (stk_feed_put_half): per slot, the device buffer they
     * are copied to before their conversion there (feed_copy_half), or
     * the host buffer they are converted into first; made at first use. */
    void *stage[STK__FEED_SLOTS];
    float *host[STK__FEED_SLOTS];
};

int stk_feed_create(stk_feed_t **out, stk_model_t *m, size_t max_bytes)
{
    if (!out || !m)
        return stk__error(-EINVAL, "stk_feed_create: NULL argument");
    *out = NULL;
    stk_feed_t *f = calloc(1, sizeof(*f));
    if (!f)
        return stk__error(-ENOMEM, "feed: out of memory");
    f->m = m;
    f->cap = max_bytes;
    f->direct = m->be.iface->host_memory;
    for (int i = 0; i < STK__FEED_SLOTS && !f->direct; i++)
        if (!(f->buf[i] = m->be.iface->alloc(m->be.ctx, max_bytes ? max_bytes : 1))) {
            stk_feed_destroy(&f);
            return stk__error_prefix(-ENOMEM, "feed: %zu bytes of device memory", max_bytes);
        }
    *out = f;
    return 0;
}

/* The slot whose buffer dev is; -1 when none. */
static int slot_of(const stk_feed_t *f, const void *dev)
{
    for (int i = 0; i < STK__FEED_SLOTS; i++)
        if (f->buf[i] == dev)
            return i;
    return -1;
}

int stk_feed_put(stk_feed_t *f, const void *src, size_t bytes, const void **dev)
{
    if (!f || !dev || (!src && bytes))
        return stk__error(-EINVAL, "stk_feed_put: NULL argument");
    if (bytes > f->cap)
        return stk__error(-ENOSPC, "feed: a batch of %zu bytes, the feed was made for %zu", bytes, f->cap);
    if (f->direct) {
        *dev = src;
        return 0;
    }
    const stk__backend_iface_t *be = f->m->be.iface;
    int s = f->next;
    double t0 = stk__now_s();
    int rc = be->feed_copy ? be->feed_copy(f->m->be.ctx, s, f->buf[s], src, bytes)
                           : be->upload(f->m->be.ctx, f->buf[s], src, bytes);
    if (rc < 0)
        return rc;
    f->pending[s] = bytes;
    f->host_s[s] = stk__now_s() - t0;
    f->next = (s + 1) % STK__FEED_SLOTS;
    *dev = f->buf[s];
    return 0;
}

int stk_feed_put_half(stk_feed_t *f, const void *src, size_t n, stk_dtype_t dtype, const void **dev)
{
    if (!f || !dev || (!src && n))
        return stk__error(-EINVAL, "stk_feed_put_half: NULL argument");
    if (dtype != STK_DTYPE_F16 && dtype != STK_DTYPE_BF16)
        return stk__error(-EINVAL, "stk_feed_put_half: dtype %s (f16 or bf16)", stk_dtype_name(dtype));
    if (n > f->cap / sizeof(float))
        return stk__error(-ENOSPC, "feed: a batch of %zu values (%zu bytes as f32), the feed was made for %zu bytes",
                          n, n * sizeof(float), f->cap);
    const stk__backend_iface_t *be = f->m->be.iface;
    int s = f->next, bf16 = dtype == STK_DTYPE_BF16;
    if (!f->direct && be->feed_copy_half) {
        /* Half the bytes cross the bus; the device converts. */
        if (!f->stage[s] && !(f->stage[s] = be->alloc(f->m->be.ctx, f->cap / 2 ? f->cap / 2 : 1)))
            return stk__error(-ENOMEM, "feed: %zu bytes of device memory for half batches", f->cap / 2);
        double t0 = stk__now_s();
        int rc = be->feed_copy_half(f->m->be.ctx, s, f->buf[s], f->stage[s], src, n, bf16);
        if (rc < 0)
            return rc;
        f->pending[s] = n * sizeof(uint16_t);
        f->host_s[s] = stk__now_s() - t0;
        f->next = (s + 1) % STK__FEED_SLOTS;
        *dev = f->buf[s];
        return 0;
    }
    /* Converted here, into a buffer of the slot's own: the host's
     * memory (the CPU) or what is then copied as floats. */
    if (!f->host[s] && !(f->host[s] = malloc(f->cap ? f->cap : 1)))
        return stk__error(-ENOMEM, "feed: %zu bytes for half batches", f->cap);
    const uint16_t *h = src;
    float *out = f->host[s];
    for (size_t i = 0; i < n; i++)
        out[i] = bf16 ? stk_bf16_to_f32(h[i]) : stk_f16_to_f32(h[i]);
    if (f->direct) {
        f->next = (s + 1) % STK__FEED_SLOTS;
        *dev = out;
        return 0;
    }
    return stk_feed_put(f, out, n * sizeof(float), dev);
}

int stk_feed_use(stk_feed_t *f, const void *dev)
{
    if (!f)
        return stk__error(-EINVAL, "stk_feed_use: NULL argument");
    if (f->direct)
        return 0;
    int s = slot_of(f, dev);
    if (s < 0)
        return stk__error(-EINVAL, "stk_feed_use: %p is not one of this feed's buffers", dev);
    const stk__backend_iface_t *be = f->m->be.iface;
    return be->feed_use ? be->feed_use(f->m->be.ctx, s) : 0;
}

int stk_feed_done(stk_feed_t *f, const void *dev)
{
    if (!f)
        return stk__error(-EINVAL, "stk_feed_done: NULL argument");
    if (f->direct)
        return 0;
    int s = slot_of(f, dev);
    if (s < 0)
        return stk__error(-EINVAL, "stk_feed_done: %p is not one of this feed's buffers", dev);
    const stk__backend_iface_t *be = f->m->be.iface;
    int rc = be->feed_release ? be->feed_release(f->m->be.ctx, s) : 0;
    if (rc < 0 || !f->pending[s])
        return rc;
    /* The copy is done: a device's own time for it where the backend
     * keeps one; else the host's (upload returns once it is done). */
    double sec = f->host_s[s];
    if (be->feed_copy && be->feed_copy_time && (rc = be->feed_copy_time(f->m->be.ctx, s, &sec)) < 0)
        return rc;
    if (be->feed_copy && !be->feed_copy_time)
        sec = 0.0;
    f->stats.copies++;
    f->stats.bytes += f->pending[s];
    f->stats.copy_s += sec;
    f->pending[s] = 0;
    return 0;
}

int stk_feed_copies(const stk_feed_t *f)
{
    if (!f)
        return stk__error(-EINVAL, "stk_feed_copies: NULL feed");
    return !f->direct;
}

int stk_feed_stats(const stk_feed_t *f, stk_feed_stats_t *out)
{
    if (!f || !out)
        return stk__error(-EINVAL, "stk_feed_stats: NULL argument");
    *out = f->stats;
    return 0;
}

void stk_feed_destroy(stk_feed_t **pf)
{
    if (!pf || !*pf)
        return;
    stk_feed_t *f = *pf;
    const stk__backend_iface_t *be = f->m->be.iface;
    /* Copies in flight still write the buffers: let them land. */
    if (!f->direct && be->synchronize)
        be->synchronize(f->m->be.ctx);
    for (int i = 0; i < STK__FEED_SLOTS; i++) {
        be->free(f->m->be.ctx, f->buf[i]);
        be->free(f->m->be.ctx, f->stage[i]);
        free(f->host[i]);
    }
    free(f);
    *pf = NULL;
}
