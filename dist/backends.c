/* SPDX-License-Identifier: MIT */
/* Communicator backend registration: the one file that knows which
 * backends are built in (STK_HAVE_MPI, STK_HAVE_NCCL), picks one for AUTO,
 * and hands NCCL its unique id through MPI or the store. Everything else
 * reaches a backend through its interface table. */
#include "comm_impl.h"

#include <stdlib.h>
#include <string.h>

#if STK_HAVE_MPI
int stk__mpi_bootstrap_bcast(stk_comm_t *c, void *buf, size_t len);
#endif

static const stk__comm_iface_t *iface_of(stk_comm_backend_t b)
{
    switch (b) {
    case STK_COMM_SINGLE: return &stk__single_iface;
    case STK_COMM_TCP: return &stk__tcp_iface;
#if STK_HAVE_MPI
    case STK_COMM_MPI: return &stk__mpi_iface;
#endif
#if STK_HAVE_NCCL
    case STK_COMM_NCCL: return &stk__nccl_iface;
#endif
    default: return NULL;
    }
}

static stk_comm_backend_t pick(const stk_comm_t *c)
{
    if (c->cfg.device == STK_DEVICE_CUDA)
        return STK_COMM_NCCL;
    if (c->env.world_size == 1)
        return STK_COMM_SINGLE;
    if ((c->env.launcher == STK_LAUNCHER_MPI || c->env.launcher == STK_LAUNCHER_SLURM) && iface_of(STK_COMM_MPI))
        return STK_COMM_MPI;
    return STK_COMM_TCP;
}

int stk__comm_open_backend(stk_comm_t *c)
{
    stk_comm_backend_t b = c->cfg.backend;
    if (b == STK_COMM_AUTO) {
        const char *e = getenv("STK_COMM_BACKEND");
        if (e && e[0]) {
            int v = stk_comm_backend_from_name(e);
            if (v < 0)
                return stk__error(STK_ECONFIG, "environment: STK_COMM_BACKEND='%s' is not one of auto, single, mpi, "
                                  "tcp, nccl", e);
            b = (stk_comm_backend_t)v;
        }
    }
    if (b == STK_COMM_AUTO)
        b = pick(c);
    const stk__comm_iface_t *it = iface_of(b);
    if (!it)
        return stk__error(STK_ECONFIG, "communicator: Stoker was built without the %s backend (meson -D%s=enabled)",
                          stk_comm_backend_name(b), stk_comm_backend_name(b));
    if (b == STK_COMM_NCCL && c->cfg.device != STK_DEVICE_CUDA)
        return stk__error(STK_ECONFIG, "communicator: the nccl backend reduces device buffers: set device to CUDA");
    if (b != STK_COMM_NCCL && c->cfg.device == STK_DEVICE_CUDA)
        return stk__error(STK_ECONFIG, "communicator: the %s backend reduces host buffers, not CUDA ones",
                          stk_comm_backend_name(b));
    c->backend = b;
    c->iface = it;
    return it->open(c, &c->ctx);
}

int stk__comm_bootstrap_bcast(stk_comm_t *c, void *buf, size_t len, const char *key)
{
    if (c->env.world_size == 1)
        return 0;
#if STK_HAVE_MPI
    if (c->env.launcher == STK_LAUNCHER_MPI)
        return stk__mpi_bootstrap_bcast(c, buf, len);
#endif
    int rc = stk__comm_open_store(c);
    if (rc < 0)
        return rc;
    if (c->env.rank == 0)
        return stk__store_set(c->store, key, buf, len);
    size_t got = 0;
    rc = stk__store_get(c->store, key, buf, len, &got);
    if (rc == 0 && got != len)
        rc = stk__error(STK_EDATA, "store: '%s' holds %zu bytes, expected %zu", key, got, len);
    /* Rank 0 keeps serving until its communicator goes; others are done. */
    stk__store_close(&c->store);
    return rc;
}
