/* SPDX-License-Identifier: MIT */
/* The model's settings and accessors: shapes, modes, step and seed,
 * threads, the logits and accuracy of the last forward, layer outputs,
 * the arenas and their named tensors, per-layer timing. */
#include "layer.h"

#include <errno.h>
#include <string.h>

void stk_model_input_shape(const stk_model_t *m, int64_t shape[4])
{
    shape[0] = m->batch;
    shape[1] = m->layers[0].c;
    shape[2] = m->layers[0].h;
    shape[3] = m->layers[0].w;
}

int64_t stk_model_input_steps(const stk_model_t *m)
{
    return m->layers[0].seq ? m->layers[0].c : 0;
}

stk_dtype_t stk_model_input_dtype(const stk_model_t *m)
{
    return m->layers[0].dtype;
}

int64_t stk_model_num_classes(const stk_model_t *m)
{
    if (m->loss_layer < 0)
        return 0;
    const stk__layer_t *lg = &m->layers[m->logits_layer];
    return lg->seq ? lg->w : lg->c;
}

int64_t stk_model_loss_count(const stk_model_t *m)
{
    return m && m->fwd_state >= 2 ? m->loss_count : 0;
}

int64_t stk_model_batch_size(const stk_model_t *m)
{
    return m->batch;
}

void stk_model_set_train(stk_model_t *m, int train)
{
    m->train = train != 0;
}

void stk_model_set_fusion(stk_model_t *m, int on)
{
    m->fusion = on != 0;
}

int stk_model_fusion(const stk_model_t *m)
{
    return m->fusion;
}

int stk_model_fusion_stats(const stk_model_t *m, stk_fusion_stats_t *out)
{
    if (!m || !out)
        return stk__error(-EINVAL, "stk_model_fusion_stats: NULL argument");
    memset(out, 0, sizeof(*out));
    for (int i = 0; i < m->nl; i++) {
        const stk__layer_t *l = &m->layers[i];
        if (!l->fuse_bn)
            continue;
        out->chains++;
        out->fused += l->fuse_ran;
        out->fallbacks += l->fuse_why != NULL;
    }
    return 0;
}

int stk_model_is_train(const stk_model_t *m)
{
    return m->train;
}

void stk_model_set_step(stk_model_t *m, uint64_t step)
{
    m->step = step;
}

uint64_t stk_model_step(const stk_model_t *m)
{
    return m->step;
}

void stk_model_set_seed(stk_model_t *m, uint64_t seed)
{
    m->seed = seed;
}

int stk_model_set_threads(stk_model_t *m, int threads)
{
    if (threads < 0)
        return stk__error(-EINVAL, "model: threads %d", threads);
    m->threads = threads;
    return threads > 0 ? m->be.iface->set_threads(m->be.ctx, threads) : 0;
}

int stk_model_threads(const stk_model_t *m)
{
    return m->be.iface->max_threads(m->be.ctx);
}

static const char *const cudnn_policy_names[] = {"heuristic", "benchmark", "deterministic"};

const char *stk_cudnn_policy_name(stk_cudnn_policy_t p)
{
    return (unsigned)p < STK__ARRAY_LEN(cudnn_policy_names) ? cudnn_policy_names[p] : "?";
}

int stk_cudnn_policy_parse(const char *s, stk_cudnn_policy_t *out)
{
    for (unsigned i = 0; s && i < STK__ARRAY_LEN(cudnn_policy_names); i++)
        if (!strcmp(s, cudnn_policy_names[i])) {
            if (out)
                *out = (stk_cudnn_policy_t)i;
            return 0;
        }
    return stk__error(STK_ECONFIG, "cudnn policy '%s': want heuristic, benchmark or deterministic", s ? s : "(null)");
}

int stk_model_algo_stats(const stk_model_t *m, stk_algo_stats_t *out)
{
    if (!m || !out)
        return stk__error(-EINVAL, "stk_model_algo_stats: NULL argument");
    memset(out, 0, sizeof(*out));
    if (m->be.iface->algo_stats)
        m->be.iface->algo_stats(m->be.ctx, out);
    return 0;
}

void stk_model_set_loss_scale(stk_model_t *m, float scale)
{
    m->loss_scale = scale;
}

int stk_model_unscale_grads(stk_model_t *m, float inv_scale, int *nonfinite)
{
    if (!m || !nonfinite)
        return stk__error(-EINVAL, "stk_model_unscale_grads: NULL argument");
    *nonfinite = 0;
    if (!m->np)
        return 0;
    int rc = m->be.iface->unscale_grads(m->be.ctx, m->np, m->grads, inv_scale, nonfinite);
    return rc < 0 ? stk__error_prefix(rc, "unscaling the gradients") : 0;
}

stk_precision_t stk_model_precision(const stk_model_t *m)
{
    return m ? m->precision : STK_PRECISION_FP32;
}

const char *stk_precision_name(stk_precision_t p)
{
    switch (p) {
    case STK_PRECISION_FP32:
        return "fp32";
    case STK_PRECISION_TF32:
        return "tf32";
    case STK_PRECISION_BF16:
        return "bf16";
    case STK_PRECISION_FP16:
        return "fp16";
    }
    return "?";
}

void stk_model_set_grad_hook(stk_model_t *m, stk_grad_ready_fn fn, void *user)
{
    m->hook = fn;
    m->hook_user = user;
}

void stk_model_set_profiling(stk_model_t *m, int on)
{
    stk__prof_set(m, on);
}

void stk_model_reset_stats(stk_model_t *m)
{
    stk__prof_reset(m);
    for (int i = 0; i < m->nl; i++) {
        m->layers[i].fcalls = m->layers[i].bcalls = 0;
        m->layers[i].fsec = m->layers[i].bsec = 0.0;
    }
}

size_t stk_model_num_layers(const stk_model_t *m)
{
    return (size_t)m->nl;
}

int stk_model_layer_stats(const stk_model_t *m, size_t i, stk_layer_stats_t *st)
{
    if (!m || !st)
        return stk__error(-EINVAL, "model layer_stats: NULL argument");
    if (i >= (size_t)m->nl)
        return stk__error(-ERANGE, "model: layer %zu of %d", i, m->nl);
    /* Device times still pending are read now (one wait). */
    int rc = stk__prof_settle(m);
    const stk__layer_t *l = &m->layers[i];
    st->name = l->name;
    st->kind = l->d.kind;
    st->forward_calls = l->fcalls;
    st->backward_calls = l->bcalls;
    st->forward_s = l->fsec;
    st->backward_s = l->bsec;
    return rc;
}

/* --------------------------------------------------------------- accessors */

int stk_model_logits(const stk_model_t *m, const float **logits, int64_t *batch, int64_t *classes)
{
    if (!m || m->fwd_state == 0)
        return stk__error(STK_ESTATE, "model logits: no forward yet");
    const stk__layer_t *l = &m->layers[m->logits_layer];
    if (logits)
        *logits = l->y;
    if (batch)
        *batch = m->batch;
    if (classes)
        *classes = l->c * l->h * l->w;
    return 0;
}

int stk_model_read_logits(const stk_model_t *m, float *dst, size_t cap)
{
    const float *z;
    int64_t n, k;
    if (!dst)
        return stk__error(-EINVAL, "read_logits: NULL argument");
    int rc = stk_model_logits(m, &z, &n, &k);
    if (rc < 0)
        return rc;
    size_t need = (size_t)(n * k);
    if (cap < need)
        return stk__error(-ENOSPC, "read_logits: %zu floats needed, the buffer has %zu", need, cap);
    return m->be.iface->download(m->be.ctx, dst, z, need * sizeof(float));
}

int stk_model_count_topk(stk_model_t *m, const int64_t *labels, int topk, int64_t *correct)
{
    if (!m || !labels || !correct || topk < 1)
        return stk__error(-EINVAL, "count_correct: NULL argument or topk %d", topk);
    if (m->fwd_state == 0)
        return stk__error(STK_ESTATE, "count_correct: no forward yet");
    if (m->loss_layer < 0)
        return stk__error(STK_ESTATE, "count_correct: the model has no loss layer, so no classes");
    if (topk == 1 && m->correct_valid && labels == m->labels) {
        *correct = m->correct;
        return 0;
    }
    if (m->loss_per_step)
        return stk__error(-EINVAL, "count_correct: a loss over a sequence counts only its forward's own labels "
                                   "(top-1)");
    int rc = stk__check_labels(m, labels, m->batch, "count_correct");
    if (rc < 0)
        return rc;
    const int64_t *dev = labels;
    const stk__backend_iface_t *be = m->be.iface;
    if (!be->host_memory) {
        /* The second half of the stage: backward may still need the
         * forward's labels in the first. */
        int64_t *stage = m->labels_stage + m->batch;
        if ((rc = be->upload(m->be.ctx, stage, labels, (size_t)m->batch * sizeof(int64_t))) < 0)
            return rc;
        dev = stage;
    }
    const stk__layer_t *lg = &m->layers[m->logits_layer];
    if ((rc = be->count_correct(m->be.ctx, m->batch, lg->c, topk, lg->y, dev, (int64_t *)(m->stats + 8))) < 0)
        return rc;
    return be->download(m->be.ctx, correct, m->stats + 8, sizeof(int64_t));
}

int stk_model_count_correct(stk_model_t *m, const int64_t *labels, int64_t *correct)
{
    return stk_model_count_topk(m, labels, 1, correct);
}

int stk_model_output(const stk_model_t *m, const char *layer, stk_tensor_t *out)
{
    if (!m || !layer || !out)
        return stk__error(-EINVAL, "model output: NULL argument");
    int i = stk__find_layer(m->layers, m->nl, layer);
    if (i < 0)
        return stk__error(STK_ENOTFOUND, "model output: no layer named '%s'", layer);
    if (m->fwd_state == 0)
        return stk__error(STK_ESTATE, "model output: no forward yet");
    const stk__layer_t *l = &m->layers[i];
    if (l->fuse_ran)
        return stk__error(STK_ESTATE, "model output: layer '%s' ran fused with '%s' in the last (eval) forward, "
                          "so its own output was not computed; turn fusion off (stk_model_set_fusion, "
                          "STK_NO_FUSION=1) to read it", l->name, m->layers[l->fuse_bn].name);
    int64_t shape[4] = {m->batch, l->c, l->h, l->w};
    const float *y = l->y;
    int rc = 0;
    if (l->fmt != STK__LAYOUT_PLAIN) {
        /* Blocked inside: hand out a plain copy. */
        stk__op_t *op = NULL;
        rc = m->be.iface->reorder_create(m->be.ctx, m->batch, l->c, l->h, l->w, l->fmt, STK__LAYOUT_PLAIN, &op);
        if (rc == 0)
            rc = m->be.iface->reorder_run(m->be.ctx, op, 0, l->y, m->view_buf);
        m->be.iface->op_destroy(m->be.ctx, op);
        if (rc < 0)
            return rc;
        y = m->view_buf;
    }
    rc = stk_tensor_init(out, (void *)y, STK_DTYPE_F32, 4, shape);
    out->device = m->device;
    return rc;
}

float *stk_model_params(stk_model_t *m, size_t *count)
{
    if (count)
        *count = m->np;
    return m->params;
}

float *stk_model_grads(stk_model_t *m, size_t *count)
{
    if (count)
        *count = m->np;
    return m->grads;
}

float *stk_model_buffers(stk_model_t *m, size_t *count)
{
    if (count)
        *count = m->nb;
    return m->buffers;
}

size_t stk_model_num_params(const stk_model_t *m)
{
    return m->npinfo;
}

size_t stk_model_num_buffers(const stk_model_t *m)
{
    return m->nbinfo;
}

int stk_model_param_info(const stk_model_t *m, size_t i, stk_param_info_t *info)
{
    if (!m || !info)
        return stk__error(-EINVAL, "model param_info: NULL argument");
    if (i >= m->npinfo)
        return stk__error(-ERANGE, "model: parameter %zu of %zu", i, m->npinfo);
    *info = m->pinfo[i].info;
    return 0;
}

int stk_model_buffer_info(const stk_model_t *m, size_t i, stk_param_info_t *info)
{
    if (!m || !info)
        return stk__error(-EINVAL, "model buffer_info: NULL argument");
    if (i >= m->nbinfo)
        return stk__error(-ERANGE, "model: buffer %zu of %zu", i, m->nbinfo);
    *info = m->binfo[i].info;
    return 0;
}

int stk_model_find(const stk_model_t *m, const char *name, stk_param_info_t *info, int *is_buffer)
{
    if (!m || !name)
        return stk__error(-EINVAL, "model find: NULL argument");
    for (size_t i = 0; i < m->npinfo; i++)
        if (strcmp(m->pinfo[i].name, name) == 0) {
            if (info)
                *info = m->pinfo[i].info;
            if (is_buffer)
                *is_buffer = 0;
            return 0;
        }
    for (size_t i = 0; i < m->nbinfo; i++)
        if (strcmp(m->binfo[i].name, name) == 0) {
            if (info)
                *info = m->binfo[i].info;
            if (is_buffer)
                *is_buffer = 1;
            return 0;
        }
    return stk__error(STK_ENOTFOUND, "model: no parameter or buffer named '%s'", name);
}

void *stk__model_stream(const stk_model_t *m)
{
    return m && m->be.iface && m->be.iface->stream ? m->be.iface->stream(m->be.ctx) : NULL;
}
