/* SPDX-License-Identifier: MIT */
/* Backend registration: the one file that knows which backends are built
 * in. Everything else reaches a backend through its interface table. */
#include "backend.h"

int stk__backend_open(stk__backend_t *b, stk_device_t device)
{
    switch (device) {
    case STK_DEVICE_CPU:
        return stk__cpu_backend_open(b);
    case STK_DEVICE_CUDA:
#if STK_HAVE_CUDA
        return stk__cuda_backend_open(b, -1);
#else
        return stk__error(STK_EDEVICE, "engine: built without CUDA");
#endif
    }
    return stk__error(STK_EDEVICE, "engine: unknown device %d", (int)device);
}

void stk__backend_close(stk__backend_t *b)
{
    if (b && b->iface) {
        b->iface->destroy(b->ctx);
        b->iface = NULL;
        b->ctx = NULL;
    }
}
