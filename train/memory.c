/* SPDX-License-Identifier: MIT */
/* The memory a training step needs, estimated from the model's per-layer
 * outputs, and the memory the process may use (MemAvailable, the cgroup's
 * limit): what lets a run refuse batch_size = 100000 with a message
 * instead of meeting the OOM killer halfway through its first step. */
#define _GNU_SOURCE
#include "internal.h"
#include "stoker/train.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Activation and its gradient. Measured on fmnist-cnn (peak RSS of
 * stoker-train at batch 512 and 2048): 1.7 MB per sample, where the layer
 * outputs are 0.96 MB, so two copies cover what oneDNN keeps beside them
 * (pooling indices, normalization statistics, blocked reorders), with
 * ~10% to spare. */
#define ACT_COPIES 2
/* bf16 / fp16: the half-precision copies of each convolution's and inner
 * product's operands beside them (the CPU's rounded buffers, the GPU's
 * half tensors). Measured on the CPU, fmnist-cnn at batch 1024: peak RSS
 * 2.36 GB in bf16 against 1.82 GB in fp32 (x1.3); a third copy covers it
 * with ~25% to spare. */
#define ACT_COPIES_HALF 3
/* Parameters, gradients and up to two optimizer buffers. */
#define PARAM_COPIES 4

int stk_train_memory_estimate(stk_model_t *model, int64_t batch, uint64_t *bytes)
{
    if (!model || !bytes || batch < 1)
        return stk__error(-EINVAL, "stk_train_memory_estimate: NULL argument or batch < 1");
    int64_t shape[4];
    stk_model_input_shape(model, shape);
    int64_t planned = shape[0], per_in = shape[1] * shape[2] * shape[3];
    /* zeros of the input's type (token ids are i64: id 0) */
    void *zeros = calloc((size_t)(planned * per_in), stk_dtype_size(stk_model_input_dtype(model)));
    if (!zeros)
        return stk__error(-ENOMEM, "memory estimate: out of memory");
    int was_train = stk_model_is_train(model), was_fused = stk_model_fusion(model);
    stk_model_set_train(model, 0);
    /* every layer's output is counted: none may be fused away */
    stk_model_set_fusion(model, 0);
    int rc = stk_model_forward(model, zeros, planned, NULL, NULL, NULL);
    uint64_t floats = 0;
    for (size_t i = 0; rc == 0 && i < stk_model_num_layers(model); i++) {
        stk_layer_stats_t ls;
        stk_tensor_t t;
        if (stk_model_layer_stats(model, i, &ls) != 0 || stk_model_output(model, ls.name, &t) != 0)
            continue;
        floats += (uint64_t)(stk_tensor_numel(&t) / planned);
    }
    stk_model_set_train(model, was_train);
    stk_model_set_fusion(model, was_fused);
    free(zeros);
    if (rc)
        return rc;
    size_t nparams = 0;
    stk_model_params(model, &nparams);
    stk_precision_t p = stk_model_precision(model);
    uint64_t copies = p == STK_PRECISION_BF16 || p == STK_PRECISION_FP16 ? ACT_COPIES_HALF : ACT_COPIES;
    *bytes = (uint64_t)nparams * sizeof(float) * PARAM_COPIES + floats * sizeof(float) * copies * (uint64_t)batch;
    return 0;
}

/* A "key value kB" line of /proc/meminfo, in bytes; 0 when absent. */
static uint64_t meminfo(const char *key)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f)
        return 0;
    char line[256];
    uint64_t v = 0;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl) && line[kl] == ':') {
            unsigned long long kb;
            if (sscanf(line + kl + 1, "%llu", &kb) == 1)
                v = (uint64_t)kb * 1024;
            break;
        }
    fclose(f);
    return v;
}

static uint64_t read_u64(const char *path, int *unlimited)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char buf[64] = "";
    char *ok = fgets(buf, sizeof buf, f);
    fclose(f);
    if (!ok)
        return 0;
    if (!strncmp(buf, "max", 3)) {
        *unlimited = 1;
        return 0;
    }
    return strtoull(buf, NULL, 10);
}

uint64_t stk_train_memory_available(void)
{
    uint64_t avail = meminfo("MemAvailable");
    int unlimited = 0;
    uint64_t max = read_u64("/sys/fs/cgroup/memory.max", &unlimited);
    if (max && !unlimited) {
        uint64_t cur = read_u64("/sys/fs/cgroup/memory.current", &unlimited);
        uint64_t room = max > cur ? max - cur : 0;
        if (!avail || room < avail)
            avail = room;
    }
    return avail;
}
