/* SPDX-License-Identifier: MIT */
/* Backend registration: the one file that knows which backends are built
 * in, and so the one that answers which devices there are. Everything else
 * reaches a backend through its interface table. */
#include "backend.h"

#include <errno.h>
#include <stdio.h>

int stk__backend_open_index(stk__backend_t *b, stk_device_t device, int index)
{
    if (index < -1)
        return stk__error(STK_EDEVICE, "engine: device index %d", index);
    switch (device) {
    case STK_DEVICE_CPU:
        if (index > 0)
            return stk__error(STK_EDEVICE, "engine: there is one CPU device, not %d", index + 1);
        return stk__cpu_backend_open(b);
    case STK_DEVICE_CUDA:
#if STK_HAVE_CUDA
        return stk__cuda_backend_open(b, index);
#else
        return stk__error(STK_EDEVICE, "engine: built without CUDA");
#endif
    }
    return stk__error(STK_EDEVICE, "engine: unknown device %d", (int)device);
}

int stk__backend_open(stk__backend_t *b, stk_device_t device)
{
    return stk__backend_open_index(b, device, -1);
}

void stk__backend_close(stk__backend_t *b)
{
    if (b && b->iface) {
        b->iface->destroy(b->ctx);
        b->iface = NULL;
        b->ctx = NULL;
    }
}

int stk_device_count(stk_device_t kind)
{
    switch (kind) {
    case STK_DEVICE_CPU:
        return 1;
    case STK_DEVICE_CUDA:
#if STK_HAVE_CUDA
        return stk__cuda_device_count();
#else
        stk__error(STK_EDEVICE, "engine: built without CUDA");
        return 0;
#endif
    }
    stk__error(STK_EDEVICE, "engine: unknown device %d", (int)kind);
    return 0;
}

int stk_device_describe(stk_device_t kind, int index, char *buf, size_t cap)
{
    if (!buf || cap == 0)
        return stk__error(-EINVAL, "stk_device_describe: no buffer");
    buf[0] = '\0';
    switch (kind) {
    case STK_DEVICE_CPU:
        if (index > 0)
            return stk__error(STK_EDEVICE, "engine: there is one CPU device, not %d", index + 1);
        snprintf(buf, cap, "CPU, %d threads (oneDNN)", stk_engine_cpu_count());
        return 0;
    case STK_DEVICE_CUDA:
#if STK_HAVE_CUDA
        return stk__cuda_describe(index, buf, cap);
#else
        return stk__error(STK_EDEVICE, "engine: built without CUDA");
#endif
    }
    return stk__error(STK_EDEVICE, "engine: unknown device %d", (int)kind);
}
