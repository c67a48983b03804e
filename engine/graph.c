/* SPDX-License-Identifier: MIT */
/* A whole training step (forward, backward, optimizer update, zero_grad)
 * as one device graph, on a backend that has graph slots (CUDA).
 *
 * Per key (batch size, input buffer, optimizer, memory generation): the
 * first step runs as usual (the warm-up: plans, lazy buffers, workspaces
 * are made); the second runs the same engine code with the backend
 * recording instead of running (graph_begin .. graph_end), then launches
 * the graph; every later one replays it. A replay still runs the engine's
 * host code, through an iface whose device slots do nothing, so that all
 * host-side effects of a step happen as without graphs (dropout's step,
 * batchnorm's counters, the optimizer's step count and scalars from the
 * scheduler's lr) and the per-step values the device needs reach the
 * backend (graph_note_step, graph_note_optim), which the graph reads at
 * launch. The labels are staged before the graph and the loss and top-1
 * count read back after it: one upload, one launch, one download a step.
 *
 * What the graph cannot take runs as usual: another batch size (the short
 * last batch), a model or step with host-side decisions (sequences,
 * recurrent layers, soft targets, a gradient hook, gradients not freshly
 * zeroed), or a backend without graph slots. */
#include "internal.h"
#include "layer.h"
#include "model.h"
#include "optim_internal.h"

#include <errno.h>
#include <string.h>

/* ---- the iface a replay is prepared with ---------------------------------
 * The device work is in the graph; these keep the host's side of each slot
 * (nothing, but for dropout's step and the optimizer's scalars). */

static int nop_copy(void *ctx, void *dst, const void *src, size_t bytes)
{
    (void)ctx, (void)dst, (void)src, (void)bytes;
    return 0;
}
static void nop_zero(void *ctx, float *dst, size_t n)
{
    (void)ctx, (void)dst, (void)n;
}
static int nop_sync(void *ctx)
{
    (void)ctx;
    return 0;
}
static int nop_conv(void *ctx, stk__op_t *op, const float *a, const float *b, const float *c, float *d)
{
    (void)ctx, (void)op, (void)a, (void)b, (void)c, (void)d;
    return 0;
}
static int nop_conv_bd(void *ctx, stk__op_t *op, const float *a, const float *b, float *c)
{
    (void)ctx, (void)op, (void)a, (void)b, (void)c;
    return 0;
}
static int nop_conv_bw(void *ctx, stk__op_t *op, const float *a, const float *b, float *c, float *d)
{
    (void)ctx, (void)op, (void)a, (void)b, (void)c, (void)d;
    return 0;
}
static int nop_bn_fwd(void *ctx, stk__op_t *op, int train, const float *x, const float *g, const float *b, float *mean,
                      float *var, float *y)
{
    (void)ctx, (void)op, (void)train, (void)x, (void)g, (void)b, (void)mean, (void)var, (void)y;
    return 0;
}
static int nop_bn_bwd(void *ctx, stk__op_t *op, const float *x, const float *dy, const float *g, const float *mean,
                      const float *var, float *dx, float *dg, float *db)
{
    (void)ctx, (void)op, (void)x, (void)dy, (void)g, (void)mean, (void)var, (void)dx, (void)dg, (void)db;
    return 0;
}
static void nop_bn_run(void *ctx, int64_t c, int64_t count, float mom, const float *mean, const float *var,
                       float *rm, float *rv)
{
    (void)ctx, (void)c, (void)count, (void)mom, (void)mean, (void)var, (void)rm, (void)rv;
}
static int nop_pool_fwd(void *ctx, stk__op_t *op, int train, const float *x, float *y)
{
    (void)ctx, (void)op, (void)train, (void)x, (void)y;
    return 0;
}
static int nop_pool_bwd(void *ctx, stk__op_t *op, const float *dy, float *dx)
{
    (void)ctx, (void)op, (void)dy, (void)dx;
    return 0;
}
static int nop_reorder(void *ctx, stk__op_t *op, int reverse, const float *src, float *dst)
{
    (void)ctx, (void)op, (void)reverse, (void)src, (void)dst;
    return 0;
}
static int nop_elt_fwd(void *ctx, stk__eltwise_t alg, float alpha, size_t n, const float *x, float *y)
{
    (void)ctx, (void)alg, (void)alpha, (void)n, (void)x, (void)y;
    return 0;
}
static int nop_elt_bwd(void *ctx, stk__eltwise_t alg, float alpha, size_t n, const float *x, const float *y,
                       const float *dy, float *dx)
{
    (void)ctx, (void)alg, (void)alpha, (void)n, (void)x, (void)y, (void)dy, (void)dx;
    return 0;
}
static void nop_add(void *ctx, size_t n, const float *a, const float *b, float *y)
{
    (void)ctx, (void)n, (void)a, (void)b, (void)y;
}
static void nop_acc(void *ctx, size_t n, const float *x, float *y)
{
    (void)ctx, (void)n, (void)x, (void)y;
}
static void nop_cat_fwd(void *ctx, int64_t n, int64_t ca, int64_t cb, int64_t hw, const float *a, const float *b,
                        float *y)
{
    (void)ctx, (void)n, (void)ca, (void)cb, (void)hw, (void)a, (void)b, (void)y;
}
static void nop_cat_bwd(void *ctx, int64_t n, int64_t ca, int64_t cb, int64_t hw, const float *dy, float *da,
                        float *db, int acc_a, int acc_b)
{
    (void)ctx, (void)n, (void)ca, (void)cb, (void)hw, (void)dy, (void)da, (void)db, (void)acc_a, (void)acc_b;
}
static void note_dropout(void *ctx, size_t n, float p, uint64_t key, uint64_t step, const float *x, float *y);
static int nop_xent_fwd(void *ctx, int64_t n, int64_t k, const float *logits, const int64_t *labels, const float *soft,
                        float smoothing, float *prob, float *loss)
{
    (void)ctx, (void)n, (void)k, (void)logits, (void)labels, (void)soft, (void)smoothing, (void)prob, (void)loss;
    return 0;
}
static void nop_xent_bwd(void *ctx, int64_t n, int64_t k, const float *prob, const int64_t *labels, const float *soft,
                         float smoothing, float scale, float *dlogits)
{
    (void)ctx, (void)n, (void)k, (void)prob, (void)labels, (void)soft, (void)smoothing, (void)scale, (void)dlogits;
}
static int nop_count(void *ctx, int64_t n, int64_t k, int topk, const float *logits, const int64_t *labels,
                     int64_t *correct)
{
    (void)ctx, (void)n, (void)k, (void)topk, (void)logits, (void)labels, (void)correct;
    return 0;
}
static int note_optim(void *ctx, stk__op_t *op, const stk__optim_scalars_t *k, float *p, const float *g, float *s0,
                      float *s1, float *s2);

/* The real iface, for the two slots that note what a replay reads. The
 * engine calls a backend from one thread at a time (backend.h), and a
 * model prepares one replay at a time: a thread-local is enough. */
static _Thread_local const stk__backend_iface_t *prep_real;

static void note_dropout(void *ctx, size_t n, float p, uint64_t key, uint64_t step, const float *x, float *y)
{
    (void)n, (void)p, (void)key, (void)x, (void)y;
    prep_real->graph_note_step(ctx, step);
}

static int note_optim(void *ctx, stk__op_t *op, const stk__optim_scalars_t *k, float *p, const float *g, float *s0,
                      float *s1, float *s2)
{
    (void)p, (void)g, (void)s0, (void)s1, (void)s2;
    return prep_real->graph_note_optim(ctx, op, k);
}

static void prep_iface(stk_model_t *m, const stk__backend_iface_t *real)
{
    stk__backend_iface_t *f = &m->graph_prep;
    *f = *real;
    f->upload = nop_copy;
    f->download = nop_copy;
    f->copy = nop_copy;
    f->zero = nop_zero;
    f->synchronize = nop_sync;
    f->conv_forward = nop_conv;
    f->conv_backward_data = nop_conv_bd;
    f->conv_backward_weights = nop_conv_bw;
    f->bn_forward = nop_bn_fwd;
    f->bn_backward = nop_bn_bwd;
    f->bn_update_running = nop_bn_run;
    f->pool_forward = nop_pool_fwd;
    f->pool_backward = nop_pool_bwd;
    f->reorder_run = nop_reorder;
    f->linear_forward = nop_conv;
    f->linear_backward_data = nop_conv_bd;
    f->linear_backward_weights = nop_conv_bw;
    f->eltwise_forward = nop_elt_fwd;
    f->eltwise_backward = nop_elt_bwd;
    f->add = nop_add;
    f->accumulate = nop_acc;
    f->concat_forward = nop_cat_fwd;
    f->concat_backward = nop_cat_bwd;
    f->dropout_forward = note_dropout;
    f->dropout_backward = note_dropout;
    f->xent_forward = nop_xent_fwd;
    f->xent_backward = nop_xent_bwd;
    f->count_correct = nop_count;
    f->optim_update = note_optim;
}

/* ---- the graphs ---------------------------------------------------------- */

void stk__graphs_free(stk_model_t *m)
{
    for (int i = 0; i < STK__MAX_GRAPHS; i++) {
        if (m->graphs[i].exec && m->be.iface->graph_destroy)
            m->be.iface->graph_destroy(m->be.ctx, m->graphs[i].exec);
        memset(&m->graphs[i], 0, sizeof(m->graphs[i]));
    }
}

int stk_model_set_cuda_graph(stk_model_t *m, int on)
{
    if (!m)
        return stk__error(-EINVAL, "stk_model_set_cuda_graph: NULL model");
    if (!on)
        stk__graphs_free(m);
    m->graph_on = on != 0;
    return 0;
}

int stk_model_cuda_graph(const stk_model_t *m, uint64_t *captures, uint64_t *replays)
{
    if (captures)
        *captures = m ? m->graph_captures : 0;
    if (replays)
        *replays = m ? m->graph_replays : 0;
    if (!m || !m->graph_on)
        return 0;
    const stk__backend_iface_t *be = m->be.iface;
    return be->graph_begin && be->graph_end && be->graph_launch && be->graph_note_step && be->graph_note_optim;
}

/* The step without graphs: what the stepper does for a group of one. */
static int step_plain(stk_model_t *m, stk_optim_t *opt, const stk_tensor_t *input, const stk_tensor_t *target,
                      float *loss)
{
    int rc = stk_model_forward_tensor(m, input, target, loss);
    if (rc == 0)
        rc = stk_model_backward(m);
    if (rc == 0)
        rc = stk_optim_step_model(opt, m);
    if (rc == 0)
        stk_model_zero_grad(m);
    return rc;
}

/* The graph slot for this step, or NULL: the step runs as usual. */
static stk__graph_t *graph_for(stk_model_t *m, stk_optim_t *opt, const stk_tensor_t *input,
                               const stk_tensor_t *target)
{
    if (!stk_model_cuda_graph(m, NULL, NULL) || m->be.iface->host_memory || !m->train || m->layers[0].seq ||
        m->loss_per_step || m->hook || !m->grads_zero || m->cur_plan < 0 || input->shape[0] != m->batch ||
        !target || target->dtype != STK_DTYPE_I64 || opt->model != m)
        return NULL;
    /* Profiling times each layer between marks on the stream: a replay
     * has no layers to time, so profiled steps run as usual. */
    if (m->profiling)
        return NULL;
    stk__graph_t *free_slot = NULL, *oldest = NULL;
    for (int i = 0; i < STK__MAX_GRAPHS; i++) {
        stk__graph_t *g = &m->graphs[i];
        if (g->seen && g->gen != m->graph_gen) {
            /* Memory it refers to may have moved: never replay it. */
            if (g->exec)
                m->be.iface->graph_destroy(m->be.ctx, g->exec);
            memset(g, 0, sizeof(*g));
        }
        if (g->seen && g->batch == m->batch && g->input == input->data && g->opt == opt &&
            g->loss_scale == m->loss_scale)
            return g;
        if (!g->seen && !free_slot)
            free_slot = g;
        if (g->seen && (!oldest || g->used < oldest->used))
            oldest = g;
    }
    stk__graph_t *g = free_slot;
    if (!g) {
        g = oldest;
        if (g->exec)
            m->be.iface->graph_destroy(m->be.ctx, g->exec);
    }
    *g = (stk__graph_t){
        .batch = m->batch, .input = input->data, .opt = opt, .loss_scale = m->loss_scale, .gen = m->graph_gen};
    return g;
}

/* The engine's step in a graph phase: forward (targets staged already, no
 * readback), backward, optimizer, zero_grad. */
static int step_phase(stk_model_t *m, stk_optim_t *opt, const stk_tensor_t *input, const stk_tensor_t *target,
                      int phase)
{
    float unused;
    m->graph_phase = phase;
    int rc = step_plain(m, opt, input, target, &unused);
    m->graph_phase = 0;
    return rc;
}

int stk_model_train_step(stk_model_t *m, stk_optim_t *opt, const stk_tensor_t *input, const stk_tensor_t *target,
                         float *loss)
{
    if (!m || !opt || !input || !target || !loss)
        return stk__error(-EINVAL, "stk_model_train_step: NULL argument");
    if (!stk_model_is_train(m))
        return stk__error(STK_ESTATE, "stk_model_train_step: the model is not in training mode");
    stk__graph_t *g = graph_for(m, opt, input, target);
    if (!g || g->seen++ == 0) {
        if (g)
            g->used = ++m->graph_clock;
        return step_plain(m, opt, input, target, loss);
    }
    g->used = ++m->graph_clock;
    const stk__backend_iface_t *be = m->be.iface;
    int rc = stk__check_labels(m, target->data, m->batch, "model forward");
    if (rc == 0 && target->shape[0] != m->batch)
        rc = stk__error(STK_ESHAPE, "model forward: the target must be i64 [%lld]", (long long)m->batch);
    if (rc == 0)
        rc = be->upload(m->be.ctx, m->labels_stage, target->data, (size_t)m->batch * sizeof(int64_t));
    if (rc < 0)
        return rc;
    if (!g->exec) {
        /* Capture. The host's side of the step happens now; its device work
         * only when the graph is launched below. */
        if ((rc = be->graph_begin(m->be.ctx)) < 0)
            return stk__error_prefix(rc, "CUDA graph of the training step");
        int run = step_phase(m, opt, input, target, 1);
        rc = be->graph_end(m->be.ctx, &g->exec);
        if (run < 0 || rc < 0) {
            /* The step's host state moved on without its device work: the
             * run cannot go on as if it had been taken. */
            g->exec = NULL;
            m->graph_on = 0;
            return stk__error_prefix(run < 0 ? run : rc,
                                     "CUDA graph of the training step (capture failed; cuda_graph off avoids it)");
        }
        m->graph_captures++;
    } else {
        prep_iface(m, be);
        prep_real = be;
        m->be.iface = &m->graph_prep;
        rc = step_phase(m, opt, input, target, 2);
        m->be.iface = be;
        prep_real = NULL;
        if (rc < 0)
            return rc;
        m->graph_replays++;
    }
    if ((rc = be->graph_launch(m->be.ctx, g->exec)) < 0)
        return stk__error_prefix(rc, "CUDA graph of the training step");
    unsigned char st[16];
    if ((rc = be->download(m->be.ctx, st, m->stats, 16)) < 0)
        return stk__error_prefix(rc, "forward: reading the loss back");
    memcpy(loss, st, sizeof(float));
    memcpy(&m->correct, st + 8, sizeof(int64_t));
    m->correct_valid = 1;
    return 0;
}
