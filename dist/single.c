/* SPDX-License-Identifier: MIT */
/* The world of one: every collective is done when it starts (an
 * all-gather is one copy), so that the same training code runs with and
 * without peers. */
#include "comm_impl.h"

#include <errno.h>
#include <string.h>

static int single_open(stk_comm_t *c, void **ctx)
{
    if (c->env.world_size != 1)
        return stk__error(STK_ECONFIG, "communicator: the single backend is for a world of one, but the %s "
                          "launcher says rank %d of %d", stk_dist_launcher_name(c->env.launcher), c->env.rank,
                          c->env.world_size);
    c->rank = 0;
    c->size = 1;
    c->local_rank = 0;
    c->local_size = 1;
    *ctx = NULL;
    return 0;
}

static void single_close(stk_comm_t *c, void *ctx, int broken)
{
    (void)c;
    (void)ctx;
    (void)broken;
}

static int single_launch(stk_comm_t *c, void *ctx, stk_comm_work_t *w)
{
    (void)ctx;
    if (w->kind == STK__COLL_ALLGATHER && w->send != w->buf && w->count) {
        /* The buffers may be device memory, which this backend cannot
         * copy: only the in-place form works there. */
        if (c->cfg.device != STK_DEVICE_CPU)
            return stk__error(-ENOTSUP, "allgather: the single backend copies host memory only; pass send == recv "
                              "for device buffers");
        memmove(w->buf, w->send, stk__work_bytes(w));
    }
    return 0;
}

static int single_poll(stk_comm_t *c, void *ctx, stk_comm_work_t *w, int *done)
{
    (void)c;
    (void)ctx;
    (void)w;
    *done = 1;
    return 0;
}

const stk__comm_iface_t stk__single_iface = {
    .name = "single",
    .threaded = 0,
    .own_timeout = 1,
    .open = single_open,
    .close = single_close,
    .launch = single_launch,
    .poll = single_poll,
};
