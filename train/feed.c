/* SPDX-License-Identifier: MIT */
/* The batches of the loop and of evaluation, one ahead: each batch's input
 * goes through the engine's double-buffered feed, and on a device batch
 * k + 1 is fetched, converted and put into the feed before step k runs,
 * so that its copy (from the loader's pinned arena) runs on the copy
 * stream while the GPU computes step k; the step waits for its own input
 * on the device, not the host. On a CPU model the feed hands the input
 * over as it is and nothing is fetched ahead: there is no copy to hide. */
#include "train_internal.h"

#include "internal.h"
#include "loader/loader_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

enum { AHEAD_EMPTY, AHEAD_BATCH, AHEAD_STATUS };

void stk__train_batches_init(stk__train_batches_t *B, stk_model_t *model, stk_loader_t *loader,
                             stk_train_inputs_t *inputs)
{
    memset(B, 0, sizeof *B);
    B->model = model;
    B->loader = loader;
    B->inputs = inputs;
    B->ahead = -1;
}

/* The batch's input into the feed, input pointed at the device copy.
 * 1 (nothing done) when the feed must grow while another batch is in it:
 * remade, the feed would take that batch's buffer with it. */
static int put(stk__train_batches_t *B, stk__train_item_t *it, int other)
{
    stk_tensor_t *input = &it->input;
    if (!stk_tensor_is_contiguous(input))
        return stk__error(STK_ESHAPE, "train: a model input that is not contiguous");
    /* A half batch (stk_train_inputs' keep_half) becomes f32 in the feed. */
    int half = input->dtype == STK_DTYPE_F16 || input->dtype == STK_DTYPE_BF16;
    size_t n = (size_t)stk_tensor_numel(input);
    size_t bytes = n * (half ? sizeof(float) : stk_dtype_size(input->dtype));
    if (!B->feed || bytes > B->cap) {
        if (other)
            return 1;
        /* Made for the first (full) batch; a larger one remakes it. */
        stk_feed_destroy(&B->feed);
        B->cap = 0;
        int rc = stk_feed_create(&B->feed, B->model, bytes);
        if (rc)
            return rc;
        B->cap = bytes;
    }
    const void *dev = NULL;
    int rc = half ? stk_feed_put_half(B->feed, input->data, n, input->dtype, &dev)
                  : stk_feed_put(B->feed, input->data, bytes, &dev);
    if (rc)
        return rc;
    it->dev = dev;
    input->data = (void *)dev;
    if (half)
        input->dtype = STK_DTYPE_F32;
    if (B->ahead < 0) {
        /* Ahead only where a copy can be hidden, and where the loader can
         * hold two batches (one slot: the second would be STK_ESTATE). */
        int copies = stk_feed_copies(B->feed);
        B->ahead = copies > 0 && stk__loader_slots(B->loader) >= 2;
    }
    return 0;
}

/* The loader's next batch into it, converted and (when it can be) fed:
 * 0 with the batch held, or STK_DONE / an error with nothing held. */
static int fetch(stk__train_batches_t *B, stk__train_item_t *it, int other, double *wait_s)
{
    memset(it, 0, sizeof *it);
    double t0 = stk__now_s();
    int rc = stk_loader_next(B->loader, &it->b);
    if (wait_s)
        *wait_s += stk__now_s() - t0;
    if (rc)
        return rc;
    rc = stk_train_inputs_get(B->inputs, &it->b, &it->input, &it->target);
    if (rc == 0 && (rc = put(B, it, other)) == 1)
        rc = 0; /* fed once it is the only batch in the feed */
    if (rc) {
        /* Nothing was put: the batch goes straight back. */
        stk_loader_release(B->loader, &it->b);
        memset(it, 0, sizeof *it);
    }
    return rc;
}

int stk__train_batches_next(stk__train_batches_t *B, stk__train_item_t **out, double *wait_s)
{
    *out = NULL;
    if (B->now_held)
        return stk__error(STK_ESTATE, "train: the batch before was not done");
    int rc;
    if (B->ahead_state == AHEAD_STATUS) {
        /* What fetching ahead met (the epoch's end, an interrupt, a bad
         * record) is due now that the batch before it was stepped. */
        B->ahead_state = AHEAD_EMPTY;
        rc = B->ahead_rc;
        if (rc != STK_DONE)
            rc = stk__error(rc, "%s", B->ahead_msg ? B->ahead_msg : stk_strerror(rc));
        free(B->ahead_msg);
        B->ahead_msg = NULL;
        return rc;
    }
    if (B->ahead_state == AHEAD_BATCH) {
        B->now = B->next;
        B->ahead_state = AHEAD_EMPTY;
    } else if ((rc = fetch(B, &B->now, 0, wait_s)) != 0) {
        return rc;
    }
    B->now_held = 1;
    if (!B->now.dev && (rc = put(B, &B->now, 0)) != 0)
        return stk__train_batches_done(B, rc);
    if (B->ahead > 0) {
        rc = fetch(B, &B->next, 1, wait_s);
        if (rc == 0) {
            B->ahead_state = AHEAD_BATCH;
        } else {
            B->ahead_state = AHEAD_STATUS;
            B->ahead_rc = rc;
            B->ahead_msg = rc != STK_DONE ? strdup(stk_error_message()) : NULL;
        }
    }
    /* The device's work from here on (this batch's step) waits for its
     * copy; the one ahead is used only before its own step. */
    if ((rc = stk_feed_use(B->feed, B->now.dev)) != 0)
        return stk__train_batches_done(B, rc);
    *out = &B->now;
    return 0;
}

int stk__train_batches_done(stk__train_batches_t *B, int rc)
{
    if (!B->now_held)
        return rc;
    if (B->now.dev) {
        int done = stk_feed_done(B->feed, B->now.dev);
        rc = rc ? rc : done;
    }
    stk_loader_release(B->loader, &B->now.b);
    memset(&B->now, 0, sizeof B->now);
    B->now_held = 0;
    return rc;
}

int stk__train_batches_drop(stk__train_batches_t *B, int rc)
{
    rc = stk__train_batches_done(B, rc);
    if (B->ahead_state == AHEAD_BATCH) {
        /* Fetched, not stepped: it counts nowhere (a checkpoint's position
         * is the last stepped batch's), and its copy lands before its
         * source goes back to the loader. */
        if (B->next.dev) {
            int done = stk_feed_done(B->feed, B->next.dev);
            rc = rc ? rc : done;
        }
        stk_loader_release(B->loader, &B->next.b);
        memset(&B->next, 0, sizeof B->next);
    }
    B->ahead_state = AHEAD_EMPTY;
    free(B->ahead_msg);
    B->ahead_msg = NULL;
    return rc;
}

void stk__train_batches_fini(stk__train_batches_t *B)
{
    stk__train_batches_drop(B, 0);
    stk_feed_destroy(&B->feed);
    B->cap = 0;
}

/* ---- The public face ------------------------------------------------------ */

struct stk_train_batches {
    stk__train_batches_t B;
    double wait_s;
    uint64_t batches;
};

int stk_train_batches_create(stk_train_batches_t **out, stk_model_t *model, stk_loader_t *loader,
                             stk_train_inputs_t *inputs)
{
    if (!out || !model || !loader || !inputs)
        return stk__error(-EINVAL, "stk_train_batches_create: NULL argument");
    *out = NULL;
    stk_train_batches_t *tb = calloc(1, sizeof *tb);
    if (!tb)
        return stk__error(-ENOMEM, "train batches: out of memory");
    stk__train_batches_init(&tb->B, model, loader, inputs);
    *out = tb;
    return 0;
}

void stk_train_batches_destroy(stk_train_batches_t **tb)
{
    if (!tb || !*tb)
        return;
    stk__train_batches_fini(&(*tb)->B);
    free(*tb);
    *tb = NULL;
}

int stk_train_batches_next(stk_train_batches_t *tb, const stk_batch_t **batch, stk_tensor_t *input,
                           stk_tensor_t *target)
{
    if (!tb || !input)
        return stk__error(-EINVAL, "stk_train_batches_next: NULL argument");
    if (batch)
        *batch = NULL;
    stk__train_item_t *it = NULL;
    int rc = stk__train_batches_next(&tb->B, &it, &tb->wait_s);
    if (rc)
        return rc;
    tb->batches++;
    if (batch)
        *batch = &it->b;
    *input = it->input;
    if (target)
        *target = it->target;
    return 0;
}

int stk_train_batches_done(stk_train_batches_t *tb, int rc)
{
    if (!tb)
        return stk__error(-EINVAL, "stk_train_batches_done: NULL argument");
    return stk__train_batches_done(&tb->B, rc);
}

int stk_train_batches_drop(stk_train_batches_t *tb)
{
    if (!tb)
        return stk__error(-EINVAL, "stk_train_batches_drop: NULL argument");
    return stk__train_batches_drop(&tb->B, 0);
}

int stk_train_batches_stats(const stk_train_batches_t *tb, stk_train_batches_stats_t *out)
{
    if (!tb || !out)
        return stk__error(-EINVAL, "stk_train_batches_stats: NULL argument");
    memset(out, 0, sizeof *out);
    out->wait_s = tb->wait_s;
    out->batches = tb->batches;
    out->ahead = tb->B.ahead;
    return tb->B.feed ? stk_feed_stats(tb->B.feed, &out->feed) : 0;
}
