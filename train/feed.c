/* SPDX-License-Identifier: MIT */
/* The loop's and evaluation's side of feeding a device: each batch's
 * input goes through the engine's double-buffered feed, so that on a GPU
 * its copy (from the loader's pinned arena) runs on the copy stream while
 * the GPU finishes the step before, and the step waits for it on the
 * device, not the host. On a CPU model the feed hands the input over as it
 * is. */
#include "train_internal.h"

#include "internal.h"

int stk__train_feed(stk_train_feeder_t *f, stk_model_t *model, stk_tensor_t *input, const void **dev)
{
    *dev = NULL;
    if (!stk_tensor_is_contiguous(input))
        return stk__error(STK_ESHAPE, "train: a model input that is not contiguous");
    /* A half batch (stk_train_inputs' keep_half) becomes f32 in the feed. */
    int half = input->dtype == STK_DTYPE_F16 || input->dtype == STK_DTYPE_BF16;
    size_t n = (size_t)stk_tensor_numel(input);
    size_t bytes = n * (half ? sizeof(float) : stk_dtype_size(input->dtype));
    if (!f->feed || bytes > f->cap) {
        /* Made for the first (full) batch; a larger one remakes it. */
        stk_feed_destroy(&f->feed);
        int rc = stk_feed_create(&f->feed, model, bytes);
        if (rc)
            return rc;
        f->cap = bytes;
    }
    int rc = half ? stk_feed_put_half(f->feed, input->data, n, input->dtype, dev)
                  : stk_feed_put(f->feed, input->data, bytes, dev);
    if (rc == 0)
        rc = stk_feed_use(f->feed, *dev);
    if (rc == 0) {
        input->data = (void *)*dev;
        if (half)
            input->dtype = STK_DTYPE_F32;
    }
    return rc;
}

int stk__train_fed(stk_train_feeder_t *f, const void *dev, int rc)
{
    if (!dev || !f->feed)
        return rc;
    int done = stk_feed_done(f->feed, dev);
    return rc ? rc : done;
}

void stk__train_feeder_clear(stk_train_feeder_t *f)
{
    stk_feed_destroy(&f->feed);
    f->cap = 0;
}
