/* SPDX-License-Identifier: MIT */
/* CPU backend: host memory, thread count (oneDNN on Debian runs on OpenMP,
 * so threads are OpenMP's), the element-wise kernels written here, and the
 * interface table that puts them next to the oneDNN ops of cpu_dnnl.c. */
#include "cpu.h"
#include "philox.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* Loops shorter than this run on one thread: a parallel region costs more. */
#define PAR_MIN 16384

static void cpu_destroy(void *ctx)
{
    cpu_ctx_t *c = ctx;
    if (!c)
        return;
    stk__cpu_dnnl_fini(c);
    stk__cpu_staged_free(c);
    free(c);
}

static void *cpu_alloc(void *ctx, size_t bytes)
{
    cpu_ctx_t *c = ctx;
    size_t sz = (bytes + 63) & ~(size_t)63;
    if (sz == 0)
        sz = 64;
    void *p = aligned_alloc(64, sz);
    if (p) {
        memset(p, 0, sz);
        if (c->staged)
            stk__cpu_staged_track(c, p, sz);
    }
    return p;
}

static void cpu_free(void *ctx, void *p)
{
    cpu_ctx_t *c = ctx;
    if (p && c->staged)
        stk__cpu_staged_untrack(c, p);
    free(p);
}

static int cpu_copy(void *ctx, void *dst, const void *src, size_t bytes)
{
    (void)ctx;
    if (bytes && dst != src)
        memmove(dst, src, bytes);
    return 0;
}

static void cpu_zero(void *ctx, float *dst, size_t n)
{
    (void)ctx;
    memset(dst, 0, n * sizeof(float));
}

static int cpu_set_threads(void *ctx, int n)
{
    (void)ctx;
    if (n < 1)
        return stk__error(-EINVAL, "threads: %d is not a positive count", n);
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
    return 0;
}

static int cpu_max_threads(void *ctx)
{
    (void)ctx;
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static float gelu_cdf(float x)
{
    return 0.5f * (1.0f + erff(x * (float)M_SQRT1_2));
}

static int cpu_eltwise_forward(void *ctx, stk__eltwise_t alg, float alpha, size_t n, const float *x, float *y)
{
    (void)ctx;
    ptrdiff_t len = (ptrdiff_t)n;
    switch (alg) {
    case STK__ELT_RELU:
#pragma omp parallel for if (len > PAR_MIN)
        for (ptrdiff_t i = 0; i < len; i++)
            y[i] = x[i] > 0.0f ? x[i] : 0.0f;
        break;
    case STK__ELT_LEAKY_RELU:
#pragma omp parallel for if (len > PAR_MIN)
        for (ptrdiff_t i = 0; i < len; i++)
            y[i] = x[i] > 0.0f ? x[i] : alpha * x[i];
        break;
    case STK__ELT_GELU:
#pragma omp parallel for if (len > PAR_MIN)
        for (ptrdiff_t i = 0; i < len; i++)
            y[i] = x[i] * gelu_cdf(x[i]);
        break;
    case STK__ELT_SIGMOID:
#pragma omp parallel for if (len > PAR_MIN)
        for (ptrdiff_t i = 0; i < len; i++)
            y[i] = 1.0f / (1.0f + expf(-x[i]));
        break;
    case STK__ELT_TANH:
#pragma omp parallel for if (len > PAR_MIN)
        for (ptrdiff_t i = 0; i < len; i++)
            y[i] = tanhf(x[i]);
        break;
    default:
        return stk__error(-EINVAL, "eltwise: unknown function %d", (int)alg);
    }
    return 0;
}

static int cpu_eltwise_backward(void *ctx, stk__eltwise_t alg, float alpha, size_t n, const float *restrict x,
                                const float *restrict y, const float *restrict dy, float *restrict dx)
{
    (void)ctx;
    ptrdiff_t len = (ptrdiff_t)n;
    const float inv_sqrt_2pi = 0.3989422804014327f;
    switch (alg) {
    case STK__ELT_RELU:
#pragma omp parallel for if (len > PAR_MIN)
        for (ptrdiff_t i = 0; i < len; i++)
            dx[i] = y[i] > 0.0f ? dy[i] : 0.0f; /* branch-free with restrict: vectorized */
        break;
    case STK__ELT_LEAKY_RELU:
#pragma omp parallel for if (len > PAR_MIN)
        for (ptrdiff_t i = 0; i < len; i++)
            dx[i] = x[i] > 0.0f ? dy[i] : alpha * dy[i];
        break;
    case STK__ELT_GELU:
#pragma omp parallel for if (len > PAR_MIN)
        for (ptrdiff_t i = 0; i < len; i++)
            dx[i] = dy[i] * (gelu_cdf(x[i]) + x[i] * inv_sqrt_2pi * expf(-0.5f * x[i] * x[i]));
        break;
    case STK__ELT_SIGMOID:
#pragma omp parallel for if (len > PAR_MIN)
        for (ptrdiff_t i = 0; i < len; i++)
            dx[i] = dy[i] * y[i] * (1.0f - y[i]);
        break;
    case STK__ELT_TANH:
#pragma omp parallel for if (len > PAR_MIN)
        for (ptrdiff_t i = 0; i < len; i++)
            dx[i] = dy[i] * (1.0f - y[i] * y[i]);
        break;
    default:
        return stk__error(-EINVAL, "eltwise: unknown function %d", (int)alg);
    }
    return 0;
}

static void cpu_add(void *ctx, size_t n, const float *a, const float *b, float *y)
{
    (void)ctx;
    ptrdiff_t len = (ptrdiff_t)n;
#pragma omp parallel for if (len > PAR_MIN)
    for (ptrdiff_t i = 0; i < len; i++)
        y[i] = a[i] + b[i];
}

static void cpu_accumulate(void *ctx, size_t n, const float *x, float *y)
{
    (void)ctx;
    ptrdiff_t len = (ptrdiff_t)n;
#pragma omp parallel for if (len > PAR_MIN)
    for (ptrdiff_t i = 0; i < len; i++)
        y[i] += x[i];
}

/* BF16 and FP16 are emulated (cpu_dnnl.c): the GPU's roundings around
 * fp32 arithmetic, for checking a recipe's numerics; slower than fp32. */
static int cpu_set_precision(void *ctx, stk_precision_t want, stk_precision_t *used)
{
    cpu_ctx_t *c = ctx;
    switch (want) {
    case STK_PRECISION_FP32:
    case STK_PRECISION_TF32: /* no tensor cores here: TF32 is computed as FP32 */
        c->precision = STK_PRECISION_FP32;
        *used = STK_PRECISION_FP32;
        return 0;
    case STK_PRECISION_BF16:
    case STK_PRECISION_FP16:
        c->precision = want;
        *used = want;
        return 0;
    }
    return stk__error(STK_ECONFIG, "the CPU backend has no precision %d", (int)want);
}

static int cpu_unscale_grads(void *ctx, size_t n, float *g, float inv_scale, int *nonfinite)
{
    (void)ctx;
    ptrdiff_t len = (ptrdiff_t)n;
    int bad = 0;
#pragma omp parallel for if (len > PAR_MIN) reduction(| : bad)
    for (ptrdiff_t i = 0; i < len; i++) {
        bad |= !isfinite(g[i]);
        g[i] *= inv_scale;
    }
    *nonfinite = bad;
    return 0;
}

static void cpu_concat_forward(void *ctx, int64_t n, int64_t ca, int64_t cb, int64_t hw, const float *a,
                               const float *b, float *y)
{
    (void)ctx;
    for (int64_t i = 0; i < n; i++) {
        float *row = y + i * (ca + cb) * hw;
        memcpy(row, a + i * ca * hw, (size_t)(ca * hw) * sizeof(float));
        memcpy(row + ca * hw, b + i * cb * hw, (size_t)(cb * hw) * sizeof(float));
    }
}

static void split_part(const float *src, float *dst, int64_t len, int acc)
{
    if (acc)
        for (int64_t j = 0; j < len; j++)
            dst[j] += src[j];
    else
        memcpy(dst, src, (size_t)len * sizeof(float));
}

static void cpu_concat_backward(void *ctx, int64_t n, int64_t ca, int64_t cb, int64_t hw, const float *dy,
                                float *da, float *db, int acc_a, int acc_b)
{
    (void)ctx;
    for (int64_t i = 0; i < n; i++) {
        const float *row = dy + i * (ca + cb) * hw;
        if (da)
            split_part(row, da + i * ca * hw, ca * hw, acc_a);
        if (db)
            split_part(row + ca * hw, db + i * cb * hw, cb * hw, acc_b);
    }
}

/* The dropout mask of elements [4 blk, 4 blk + 4): keep where the 24-bit
 * uniform of the Philox word is >= p. */
static void dropout_block(uint64_t key, uint64_t step, uint64_t blk, float p, float keep[4], float scale)
{
    uint32_t r[4];
    stk_philox4x32(key, step, blk, r);
    for (int j = 0; j < 4; j++)
        keep[j] = stk__dropout_keep(r[j], p) ? scale : 0.0f;
}

static void dropout_apply(size_t n, float p, uint64_t key, uint64_t step, const float *x, float *y)
{
    float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    ptrdiff_t blocks = (ptrdiff_t)((n + 3) / 4);
#pragma omp parallel for if (blocks > PAR_MIN / 4)
    for (ptrdiff_t b = 0; b < blocks; b++) {
        float keep[4];
        dropout_block(key, step, (uint64_t)b, p, keep, scale);
        size_t base = (size_t)b * 4;
        for (size_t j = 0; j < 4 && base + j < n; j++)
            y[base + j] = x[base + j] * keep[j];
    }
}

static void cpu_dropout_forward(void *ctx, size_t n, float p, uint64_t key, uint64_t step, const float *x, float *y)
{
    (void)ctx;
    dropout_apply(n, p, key, step, x, y);
}

static void cpu_dropout_backward(void *ctx, size_t n, float p, uint64_t key, uint64_t step, const float *dy,
                                 float *dx)
{
    (void)ctx;
    dropout_apply(n, p, key, step, dy, dx);
}

static void cpu_bn_update_running(void *ctx, int64_t c, int64_t count, float momentum, const float *mean,
                                  const float *var, float *running_mean, float *running_var)
{
    (void)ctx;
    double unbias = count > 1 ? (double)count / (double)(count - 1) : 1.0;
    for (int64_t i = 0; i < c; i++) {
        running_mean[i] = (1.0f - momentum) * running_mean[i] + momentum * mean[i];
        running_var[i] = (1.0f - momentum) * running_var[i] + momentum * (float)(var[i] * unbias);
    }
}

static int cpu_xent_forward(void *ctx, int64_t n, int64_t k, const float *logits, const int64_t *labels,
                            const float *soft, float smoothing, float *prob, float *loss)
{
    (void)ctx;
    double total = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const float *z = logits + i * k;
        float *p = prob + i * k;
        float mx = z[0];
        for (int64_t j = 1; j < k; j++)
            mx = z[j] > mx ? z[j] : mx;
        double sum = 0.0;
        for (int64_t j = 0; j < k; j++) {
            p[j] = expf(z[j] - mx);
            sum += p[j];
        }
        double lse = log(sum) + mx; /* log-sum-exp */
        float inv = (float)(1.0 / sum);
        for (int64_t j = 0; j < k; j++)
            p[j] *= inv;
        /* loss_i = -sum_j t_j log p_j with t smoothed: t(1-e) + e/k */
        double l = 0.0;
        for (int64_t j = 0; j < k; j++) {
            double t = labels ? (j == labels[i] ? 1.0 : 0.0) : soft[i * k + j];
            t = t * (1.0 - smoothing) + smoothing / (double)k;
            if (t != 0.0)
                l -= t * ((double)z[j] - lse);
        }
        total += l;
    }
    *loss = (float)(total / (double)n);
    return 0;
}

static void cpu_xent_backward(void *ctx, int64_t n, int64_t k, const float *prob, const int64_t *labels,
                              const float *soft, float smoothing, float scale, float *dlogits)
{
    (void)ctx;
    float s = scale / (float)n;
    for (int64_t i = 0; i < n; i++) {
        /* The smoothed targets of a row sum to 1, so d/dz_j = p_j - t_j. */
        for (int64_t j = 0; j < k; j++) {
            float t = labels ? (j == labels[i] ? 1.0f : 0.0f) : soft[i * k + j];
            t = t * (1.0f - smoothing) + smoothing / (float)k;
            dlogits[i * k + j] = s * (prob[i * k + j] - t);
        }
    }
}

static int cpu_count_correct(void *ctx, int64_t n, int64_t k, int topk, const float *logits, const int64_t *labels,
                             int64_t *correct)
{
    (void)ctx;
    int64_t c = 0;
    for (int64_t i = 0; i < n; i++) {
        const float *z = logits + i * k;
        int64_t y = labels[i];
        int64_t rank = 0;
        for (int64_t j = 0; j < k && rank < topk; j++)
            rank += z[j] > z[y] || (j < y && z[j] == z[y]);
        c += rank < topk;
    }
    *correct = c;
    return 0;
}

static const stk__backend_iface_t cpu_iface = {
    .name = "cpu",
    .host_memory = 1,
    .blocked_layouts = 1,
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .copy = cpu_copy,
    .zero = cpu_zero,
    .set_threads = cpu_set_threads,
    .max_threads = cpu_max_threads,
    .op_destroy = stk__cpu_op_destroy,
    .conv_create = stk__cpu_conv_create,
    .conv_forward = stk__cpu_conv_forward,
    .conv_backward_data = stk__cpu_conv_backward_data,
    .conv_backward_weights = stk__cpu_conv_backward_weights,
    .conv_fused_create = stk__cpu_conv_fused_create,
    .conv_fused_forward = stk__cpu_conv_fused_forward,
    .bn_create = stk__cpu_bn_create,
    .bn_forward = stk__cpu_bn_forward,
    .bn_backward = stk__cpu_bn_backward,
    .bn_update_running = cpu_bn_update_running,
    .bn_stats = stk__cpu_bn_stats,
    .bn_backward_sums = stk__cpu_bn_backward_sums,
    .bn_backward_apply = stk__cpu_bn_backward_apply,
    .pool_create = stk__cpu_pool_create,
    .pool_forward = stk__cpu_pool_forward,
    .pool_backward = stk__cpu_pool_backward,
    .reorder_create = stk__cpu_reorder_create,
    .reorder_run = stk__cpu_reorder_run,
    .linear_create = stk__cpu_linear_create,
    .linear_forward = stk__cpu_linear_forward,
    .linear_backward_data = stk__cpu_linear_backward_data,
    .linear_backward_weights = stk__cpu_linear_backward_weights,
    .eltwise_forward = cpu_eltwise_forward,
    .eltwise_backward = cpu_eltwise_backward,
    .add = cpu_add,
    .accumulate = cpu_accumulate,
    .concat_forward = cpu_concat_forward,
    .concat_backward = cpu_concat_backward,
    .dropout_forward = cpu_dropout_forward,
    .dropout_backward = cpu_dropout_backward,
    .xent_forward = cpu_xent_forward,
    .xent_backward = cpu_xent_backward,
    .count_correct = cpu_count_correct,
    .optim_create = stk__cpu_optim_create,
    .optim_update = stk__cpu_optim_update,
    .rnn_create = stk__cpu_rnn_create,
    .rnn_destroy = stk__cpu_rnn_destroy,
    .rnn_forward = stk__cpu_rnn_forward,
    .rnn_backward = stk__cpu_rnn_backward,
    .gather_rows = stk__cpu_gather_rows,
    .scatter_add_rows = stk__cpu_scatter_add_rows,
    .seq_pool_forward = stk__cpu_seq_pool_forward,
    .seq_pool_backward = stk__cpu_seq_pool_backward,
    .set_precision = cpu_set_precision,
    .unscale_grads = cpu_unscale_grads,
};

int stk__cpu_backend_open(stk__backend_t *b)
{
    cpu_ctx_t *c = calloc(1, sizeof(*c));
    if (!c)
        return stk__error(-ENOMEM, "cpu backend: out of memory");
    int rc = stk__cpu_dnnl_init(c);
    if (rc < 0) {
        free(c);
        return rc;
    }
    b->iface = &cpu_iface;
    b->ctx = c;
    const char *staged = getenv("STK_ENGINE_STAGED");
    if (staged && strcmp(staged, "0") != 0 && (rc = stk__cpu_staged_enable(c, &cpu_iface, &b->iface)) < 0) {
        cpu_destroy(c);
        b->iface = NULL;
        b->ctx = NULL;
        return rc;
    }
    return 0;
}
