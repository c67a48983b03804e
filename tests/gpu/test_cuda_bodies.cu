/* SPDX-License-Identifier: MIT */
/* The CUDA kernels' thread bodies (engine/cuda/kernel_bodies.h), run on
 * the host over every index and compared with the CPU backend on the same
 * inputs: activations, concat, dropout (bit for bit: the same Philox
 * code), reorder, batch-norm normalize and input gradient, the eval-mode
 * batch-norm fold of the fused convolution, pooling forward
 * and backward (argmax and gather), the cross-entropy gradient, the
 * accuracy count, and the optimizer updates (bit for bit). What runs
 * on a GPU is these functions inside grid-stride loops, so their index
 * arithmetic and formulas are checked here on a machine without one; the
 * parallel reductions and the launches are left to the GPU tests.
 * Built whenever the CUDA toolkit is found; needs no device. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "engine/backend.h"
#include "engine/optim_kernels.h"
}
#include "engine/cuda/kernel_bodies.h"

static int failures;

#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                   \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)
#define OK(call) EXPECT((call) == 0, "%s: %s", #call, stk_error_message())

static float *fbuf(size_t n)
{
    float *p = (float *)calloc(n ? n : 1, sizeof(float));
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

static void fill(float *x, size_t n, uint64_t seed, float scale)
{
    stk_rng_t r;
    stk_rng_init(&r, seed, 0);
    for (size_t i = 0; i < n; i++)
        x[i] = (stk_rng_uniform(&r) * 2.0f - 1.0f) * scale;
}

/* Largest |a - b| - (atol + rtol |b|) over n; reports the worst element. */
static void close_enough(const char *what, const float *a, const float *b, size_t n, double rtol, double atol)
{
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= atol + rtol * fabs((double)b[i]))) {
            EXPECT(0, "%s: element %zu: %.9g vs CPU %.9g", what, i, (double)a[i], (double)b[i]);
            return;
        }
    }
    printf("  %-24s %zu elements match the CPU backend\n", what, n);
}

static void test_eltwise(const stk__backend_t *cpu)
{
    const size_t n = 4099;
    float *x = fbuf(n), *dy = fbuf(n), *y = fbuf(n), *dx = fbuf(n), *ky = fbuf(n), *kdx = fbuf(n);
    fill(x, n, 1, 4.0f);
    fill(dy, n, 2, 1.0f);
    const char *names[] = {"relu", "leaky_relu", "gelu", "sigmoid", "tanh"};
    for (int alg = STK__K_RELU; alg <= STK__K_TANH; alg++) {
        OK(cpu->iface->eltwise_forward(cpu->ctx, (stk__eltwise_t)alg, 0.1f, n, x, y));
        OK(cpu->iface->eltwise_backward(cpu->ctx, (stk__eltwise_t)alg, 0.1f, n, x, y, dy, dx));
        for (size_t i = 0; i < n; i++) {
            ky[i] = kb_elt_fwd(alg, 0.1f, x[i]);
            kdx[i] = kb_elt_bwd(alg, 0.1f, x[i], ky[i], dy[i]);
        }
        char what[64];
        snprintf(what, sizeof(what), "%s forward", names[alg]);
        close_enough(what, ky, y, n, 1e-6, 1e-7);
        snprintf(what, sizeof(what), "%s backward", names[alg]);
        close_enough(what, kdx, dx, n, 1e-5, 1e-7);
    }
    free(x), free(dy), free(y), free(dx), free(ky), free(kdx);
}

static void test_concat_dropout(const stk__backend_t *cpu)
{
    const int64_t n = 3, ca = 5, cb = 2, hw = 7;
    const size_t na = n * ca * hw, nb = n * cb * hw, ny = na + nb;
    float *a = fbuf(na), *b = fbuf(nb), *y = fbuf(ny), *ky = fbuf(ny), *da = fbuf(na), *kda = fbuf(na);
    float *db = fbuf(nb), *kdb = fbuf(nb);
    fill(a, na, 3, 1.0f);
    fill(b, nb, 4, 1.0f);
    cpu->iface->concat_forward(cpu->ctx, n, ca, cb, hw, a, b, y);
    for (size_t i = 0; i < ny; i++)
        ky[i] = kb_concat_fwd_at((int64_t)i, ca, cb, hw, a, b);
    close_enough("concat forward", ky, y, ny, 0, 0);
    cpu->iface->concat_backward(cpu->ctx, n, ca, cb, hw, y, da, db, 0, 0);
    for (size_t i = 0; i < na; i++)
        kda[i] = y[kb_concat_src((int64_t)i, ca + cb, 0, ca, hw)];
    for (size_t i = 0; i < nb; i++)
        kdb[i] = y[kb_concat_src((int64_t)i, ca + cb, ca, cb, hw)];
    close_enough("concat backward (a)", kda, da, na, 0, 0);
    close_enough("concat backward (b)", kdb, db, nb, 0, 0);

    const size_t nd = 1023; /* not a multiple of 4 */
    float *x = fbuf(nd), *dr = fbuf(nd), *kd = fbuf(nd);
    fill(x, nd, 5, 1.0f);
    const float ps[] = {0.0f, 0.25f, 0.5f, 0.9f};
    for (size_t t = 0; t < 4; t++) {
        float p = ps[t], scale = 1.0f / (1.0f - p);
        uint64_t key = 0x9E3779B97F4A7C15ull + t, step = 1000003ull * t;
        cpu->iface->dropout_forward(cpu->ctx, nd, p, key, step, x, dr);
        for (uint64_t blk = 0; blk < (nd + 3) / 4; blk++)
            kb_dropout_block(blk, nd, p, scale, key, step, x, kd);
        EXPECT(memcmp(kd, dr, nd * sizeof(float)) == 0, "dropout p=%g: the mask differs from the CPU's", (double)p);
    }
    printf("  %-24s same bits as the CPU backend for 4 rates\n", "dropout");
    free(a), free(b), free(y), free(ky), free(da), free(kda), free(db), free(kdb), free(x), free(dr), free(kd);
}

static void test_reorder(const stk__backend_t *cpu)
{
    const int64_t n = 2, c = 16, h = 3, w = 5;
    const size_t total = n * c * h * w;
    float *x = fbuf(total), *bl = fbuf(total), *kbl = fbuf(total);
    fill(x, total, 6, 1.0f);
    stk__op_t *op = NULL;
    OK(cpu->iface->reorder_create(cpu->ctx, n, c, h, w, STK__LAYOUT_PLAIN, STK__LAYOUT_BLOCKED8, &op));
    OK(cpu->iface->reorder_run(cpu->ctx, op, 0, x, bl));
    cpu->iface->op_destroy(cpu->ctx, op);
    for (size_t e = 0; e < total; e++) {
        int64_t ww = e % w, hh = (e / w) % h, ch = (e / (w * h)) % c, s = e / (w * h * c);
        kbl[kb_blocked8(s, ch, hh, ww, c, h, w)] = x[e];
    }
    close_enough("reorder to nChw8c", kbl, bl, total, 0, 0);
    free(x), free(bl), free(kbl);
}

static void test_batchnorm(const stk__backend_t *cpu, int relu)
{
    stk__bn_desc_t d;
    memset(&d, 0, sizeof(d));
    d.n = 4, d.c = 3, d.h = 5, d.w = 6, d.eps = 1e-5f, d.relu = relu, d.fmt = STK__LAYOUT_PLAIN;
    const int64_t hw = d.h * d.w, m = d.n * hw;
    const size_t total = (size_t)(d.n * d.c * hw);
    float *x = fbuf(total), *dy = fbuf(total), *y = fbuf(total), *dx = fbuf(total), *ky = fbuf(total);
    float *kdx = fbuf(total), g[3] = {0.7f, 1.3f, -0.4f}, b[3] = {0.1f, -0.5f, 0.3f};
    float mean[3], var[3], dg[3], db[3];
    uint8_t *mask = (uint8_t *)calloc(total, 1);
    fill(x, total, 7, 2.0f);
    fill(dy, total, 8, 1.0f);
    stk__op_t *op = NULL;
    OK(cpu->iface->bn_create(cpu->ctx, &d, &op));
    OK(cpu->iface->bn_forward(cpu->ctx, op, 1, x, g, b, mean, var, y));
    OK(cpu->iface->bn_backward(cpu->ctx, op, x, dy, g, mean, var, dx, dg, db));
    cpu->iface->op_destroy(cpu->ctx, op);
    for (size_t i = 0; i < total; i++) {
        int keep;
        ky[i] = kb_bn_apply_at((int64_t)i, d.c, hw, d.eps, relu, x, g, b, mean, var, &keep);
        mask[i] = (uint8_t)keep;
    }
    close_enough(relu ? "batch norm + relu apply" : "batch norm apply", ky, y, total, 1e-5, 1e-6);
    /* The channel sums the reduction kernel makes, from the same data. */
    float sg[3] = {0}, sb[3] = {0};
    for (int64_t ch = 0; ch < d.c; ch++) {
        double a = 0, q = 0;
        float rstd = 1.0f / sqrtf(var[ch] + d.eps);
        for (int64_t e = 0; e < m; e++) {
            int64_t s = e / hw, i = (s * d.c + ch) * hw + e % hw;
            float gi = relu && !mask[i] ? 0.0f : dy[i];
            a += gi;
            q += (double)gi * (double)((x[i] - mean[ch]) * rstd);
        }
        sb[ch] = (float)a, sg[ch] = (float)q;
    }
    close_enough("batch norm dgamma", sg, dg, 3, 1e-5, 1e-5);
    close_enough("batch norm dbeta", sb, db, 3, 1e-5, 1e-5);
    for (size_t i = 0; i < total; i++)
        kdx[i] = kb_bn_dx_at((int64_t)i, d.c, hw, m, d.eps, x, dy, g, mean, var, relu ? mask : NULL, sg, sb);
    close_enough(relu ? "batch norm + relu dx" : "batch norm dx", kdx, dx, total, 1e-4, 1e-5);
    free(x), free(dy), free(y), free(dx), free(ky), free(kdx), free(mask);
}

/* The eval-mode fold of the fused convolution: v s + t with the body's
 * s, t is the CPU backend's eval batch norm of v + b (the convolution's
 * bias), for running statistics far from 0 and 1. */
static void test_bn_fold(const stk__backend_t *cpu, int bias)
{
    stk__bn_desc_t d;
    memset(&d, 0, sizeof(d));
    d.n = 3, d.c = 5, d.h = 4, d.w = 3, d.eps = 1e-3f, d.fmt = STK__LAYOUT_PLAIN;
    const int64_t hw = d.h * d.w;
    const size_t total = (size_t)(d.n * d.c * hw);
    float *v = fbuf(total), *vb = fbuf(total), *y = fbuf(total), *ky = fbuf(total);
    float g[5] = {0.7f, 1.3f, -0.4f, 2.5f, 0.05f}, be[5] = {0.1f, -0.5f, 0.3f, 0.0f, 4.0f};
    float mean[5] = {0.5f, -3.0f, 10.0f, 0.0f, -0.25f}, var[5] = {0.01f, 4.0f, 30.0f, 1.0f, 0.0f};
    float b[5] = {-0.3f, 2.0f, 7.5f, 0.0f, -1.0f}, sc[5], sh[5];
    fill(v, total, 11, 3.0f);
    for (size_t i = 0; i < total; i++)
        vb[i] = v[i] + (bias ? b[(i / (size_t)hw) % 5] : 0.0f);
    stk__op_t *op = NULL;
    OK(cpu->iface->bn_create(cpu->ctx, &d, &op));
    OK(cpu->iface->bn_forward(cpu->ctx, op, 0, vb, g, be, mean, var, y));
    cpu->iface->op_destroy(cpu->ctx, op);
    for (int64_t ch = 0; ch < d.c; ch++)
        kb_bn_fold_at(ch, d.eps, bias ? b : NULL, g, be, mean, var, sc, sh);
    for (size_t i = 0; i < total; i++) {
        size_t ch = (i / (size_t)hw) % 5;
        ky[i] = v[i] * sc[ch] + sh[ch];
    }
    close_enough(bias ? "batch norm fold (bias)" : "batch norm fold", ky, y, total, 1e-5, 1e-4);
    free(v), free(vb), free(y), free(ky);
}

static void test_pool(const stk__backend_t *cpu, int max, int64_t k, int64_t s, int64_t p)
{
    stk__pool_desc_t d;
    memset(&d, 0, sizeof(d));
    d.n = 2, d.c = 3, d.ih = 9, d.iw = 8, d.kh = k, d.kw = k, d.sh = s, d.sw = s, d.ph = p, d.pw = p, d.max = max;
    d.oh = (d.ih + 2 * p - k) / s + 1, d.ow = (d.iw + 2 * p - k) / s + 1, d.fmt = STK__LAYOUT_PLAIN;
    stk__k_pool_t kp = {d.n, d.c, d.ih, d.iw, d.oh, d.ow, d.kh, d.kw, d.sh, d.sw, d.ph, d.pw, d.max};
    const size_t nx = (size_t)(d.n * d.c * d.ih * d.iw), ny = (size_t)(d.n * d.c * d.oh * d.ow);
    float *x = fbuf(nx), *dy = fbuf(ny), *y = fbuf(ny), *dx = fbuf(nx), *ky = fbuf(ny), *kdx = fbuf(nx);
    int32_t *arg = (int32_t *)calloc(ny, sizeof(int32_t));
    fill(x, nx, 9, 1.0f);
    fill(dy, ny, 10, 1.0f);
    stk__op_t *op = NULL;
    OK(cpu->iface->pool_create(cpu->ctx, &d, &op));
    OK(cpu->iface->pool_forward(cpu->ctx, op, 1, x, y));
    OK(cpu->iface->pool_backward(cpu->ctx, op, dy, dx));
    cpu->iface->op_destroy(cpu->ctx, op);
    for (size_t o = 0; o < ny; o++)
        ky[o] = kb_pool_fwd_at(&kp, (int64_t)o, x, &arg[o]);
    for (size_t e = 0; e < nx; e++)
        kdx[e] = kb_pool_bwd_at(&kp, (int64_t)e, dy, max ? arg : NULL);
    char what[64];
    snprintf(what, sizeof(what), "%s pool k%lld s%lld p%lld", max ? "max" : "avg", (long long)k, (long long)s,
             (long long)p);
    close_enough(what, ky, y, ny, 1e-6, 1e-7);
    snprintf(what, sizeof(what), "%s pool backward k%lld s%lld p%lld", max ? "max" : "avg", (long long)k,
             (long long)s, (long long)p);
    close_enough(what, kdx, dx, nx, 1e-5, 1e-6);
    free(x), free(dy), free(y), free(dx), free(ky), free(kdx), free(arg);
}

static void test_xent(const stk__backend_t *cpu, int soft, float smoothing)
{
    const int64_t n = 5, k = 11;
    const size_t total = (size_t)(n * k);
    float *z = fbuf(total), *prob = fbuf(total), *dz = fbuf(total), *kdz = fbuf(total), *t = fbuf(total);
    int64_t labels[5] = {0, 10, 3, 3, 7};
    fill(z, total, 11, 3.0f);
    for (int64_t i = 0; i < n; i++) {
        float sum = 0;
        for (int64_t j = 0; j < k; j++)
            sum += t[i * k + j] = (float)((i + 2 * j) % 5) + 0.5f;
        for (int64_t j = 0; j < k; j++)
            t[i * k + j] /= sum;
    }
    float loss;
    const int64_t *lab = soft ? NULL : labels;
    const float *st = soft ? t : NULL;
    OK(cpu->iface->xent_forward(cpu->ctx, n, k, z, lab, st, smoothing, prob, &loss));
    cpu->iface->xent_backward(cpu->ctx, n, k, prob, lab, st, smoothing, 0.75f, dz);
    for (size_t e = 0; e < total; e++)
        kdz[e] = kb_xent_bwd_at((int64_t)e, n, k, prob, lab, st, smoothing, 0.75f);
    close_enough(soft ? "cross-entropy soft dz" : "cross-entropy dz", kdz, dz, total, 0, 0);
    free(z), free(prob), free(dz), free(kdz), free(t);
}

static void test_correct(const stk__backend_t *cpu)
{
    const int64_t n = 40, k = 7;
    float *z = fbuf((size_t)(n * k));
    int64_t labels[40], want = 0;
    fill(z, (size_t)(n * k), 12, 1.0f);
    for (int64_t i = 0; i < n; i++) {
        labels[i] = (i * 5) % k;
        if (i % 4 == 0) /* ties, which go to the lower index */
            z[i * k + labels[i]] = z[i * k + (labels[i] + 3) % k];
    }
    for (int topk = 1; topk <= 3; topk++) {
        int64_t c = -1, got = 0;
        OK(cpu->iface->count_correct(cpu->ctx, n, k, topk, z, labels, &c));
        for (int64_t i = 0; i < n; i++)
            got += kb_correct_at(i, k, topk, z, labels);
        EXPECT(got == c, "top-%d correct: %lld, the CPU counts %lld", topk, (long long)got, (long long)c);
        want += c;
    }
    printf("  %-24s top-1..3 counts match the CPU backend (%lld in all)\n", "accuracy", (long long)want);
    free(z);
}

static void test_seq(const stk__backend_t *cpu)
{
    const int64_t n = 5, t = 6, f = 7, rows = 9, lengths[5] = {6, 1, 0, 3, 5};
    int64_t idx[5] = {3, 8, 0, 3, 5};
    float *src = fbuf(rows * f), *g = fbuf(n * f), *kg = fbuf(n * f);
    float *x = fbuf(n * t * f), *dy = fbuf(n * f), *y = fbuf(n * f), *ky = fbuf(n * f);
    float *dx = fbuf(n * t * f), *kdx = fbuf(n * t * f);
    fill(src, rows * f, 30, 1.0f);
    fill(x, n * t * f, 31, 1.0f);
    fill(dy, n * f, 32, 1.0f);
    OK(cpu->iface->gather_rows(cpu->ctx, n, f, rows, idx, src, g));
    int bad = 0, any = 0;
    for (int64_t e = 0; e < n * f; e++) {
        kg[e] = kb_gather_at(e, f, rows, idx, src, &bad);
        any |= bad;
    }
    EXPECT(!any, "gather: an index in range was taken for a bad one");
    close_enough("gather rows", kg, g, (size_t)(n * f), 0, 0);
    idx[2] = rows;
    kb_gather_at(2 * f, f, rows, idx, src, &bad);
    EXPECT(bad, "gather: index %lld of %lld rows not flagged", (long long)rows, (long long)rows);
    for (int mean = 0; mean < 2; mean++) {
        cpu->iface->seq_pool_forward(cpu->ctx, mean, n, t, f, lengths, x, y);
        cpu->iface->seq_pool_backward(cpu->ctx, mean, n, t, f, lengths, dy, dx);
        for (int64_t e = 0; e < n * f; e++)
            ky[e] = kb_seq_pool_fwd_at(e, mean, t, f, lengths, x);
        for (int64_t e = 0; e < n * t * f; e++)
            kdx[e] = kb_seq_pool_bwd_at(e, mean, t, f, lengths, dy);
        close_enough(mean ? "sequence mean" : "sequence last step", ky, y, (size_t)(n * f), 0, 0);
        close_enough(mean ? "sequence mean backward" : "sequence last backward", kdx, dx, (size_t)(n * t * f), 0, 0);
    }
    free(src), free(g), free(kg), free(x), free(dy), free(y), free(ky), free(dx), free(kdx);
}

/* Every kind and flag combination, 5 steps, against the CPU's kernels:
 * the same bits, parameters and state. */
static void test_optim(void)
{
    const size_t n = 777;
    struct {
        stk_optim_kind_t kind;
        double lr, wd, mom, damp;
        int nesterov, ams, centered, maximize;
    } cases[] = {
        {STK_OPTIM_SGD, 0.1, 0, 0, 0, 0, 0, 0, 0},       {STK_OPTIM_SGD, 0.1, 5e-4, 0.9, 0, 1, 0, 0, 0},
        {STK_OPTIM_SGD, 0.05, 1e-3, 0.8, 0.3, 0, 0, 0, 1}, {STK_OPTIM_ADAM, 1e-3, 0, 0, 0, 0, 0, 0, 0},
        {STK_OPTIM_ADAM, 2e-3, 1e-2, 0, 0, 0, 1, 0, 1},  {STK_OPTIM_ADAMW, 1e-3, 0.05, 0, 0, 0, 0, 0, 0},
        {STK_OPTIM_ADAMW, 1e-3, 0.05, 0, 0, 0, 1, 0, 0}, {STK_OPTIM_RMSPROP, 1e-2, 0, 0, 0, 0, 0, 0, 0},
        {STK_OPTIM_RMSPROP, 1e-2, 1e-3, 0.9, 0, 0, 0, 1, 0},
    };
    float *buf[2][5];
    for (int s = 0; s < 2; s++)
        for (int a = 0; a < 5; a++)
            buf[s][a] = fbuf(n);
    float *g = fbuf(n);
    for (size_t c = 0; c < STK__ARRAY_LEN(cases); c++) {
        stk_optim_hparams_t h;
        stk_optim_hparams_default(&h, cases[c].kind);
        h.lr = cases[c].lr, h.weight_decay = cases[c].wd, h.momentum = cases[c].mom, h.dampening = cases[c].damp;
        h.nesterov = cases[c].nesterov, h.amsgrad = cases[c].ams, h.centered = cases[c].centered;
        h.maximize = cases[c].maximize;
        for (int s = 0; s < 2; s++) {
            fill(buf[s][0], n, 20 + c, 1.0f);
            for (int a = 1; a < 4; a++)
                memset(buf[s][a], 0, n * sizeof(float));
        }
        for (int t = 1; t <= 5; t++) {
            fill(g, n, 100 * c + t, 1.0f);
            stk__optim_scalars_t k;
            stk__optim_scalars(cases[c].kind, &h, t, t == 1, &k);
            stk__optim_kernel(&k, buf[0][0], g, buf[0][1], buf[0][2], buf[0][3], n);
            for (size_t i = 0; i < n; i++)
                kb_optim_at(&k, i, buf[1][0], g, buf[1][1], buf[1][2], buf[1][3]);
        }
        for (int a = 0; a < 4; a++)
            EXPECT(memcmp(buf[0][a], buf[1][a], n * sizeof(float)) == 0,
                   "optimizer case %zu (kind %d): array %d differs from the CPU's kernel", c, (int)cases[c].kind, a);
    }
    printf("  %-24s %zu cases x 5 steps: the same bits as the CPU kernels\n", "optimizer", STK__ARRAY_LEN(cases));
    for (int s = 0; s < 2; s++)
        for (int a = 0; a < 5; a++)
            free(buf[s][a]);
    free(g);
}

/* Every f16 and bf16 value: the feed's conversion gives the host's bits
 * (NaNs: a NaN, payload kept as the host keeps it). */
static void test_half(void)
{
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        for (int bf16 = 0; bf16 < 2; bf16++) {
            float want = bf16 ? stk_bf16_to_f32((uint16_t)h) : stk_f16_to_f32((uint16_t)h);
            float got = kb_half_to_f32((uint16_t)h, bf16);
            if (memcmp(&want, &got, sizeof(float)) && bad++ < 5)
                EXPECT(0, "%s 0x%04x: %a, the host gives %a", bf16 ? "bf16" : "f16", h, (double)got, (double)want);
        }
    }
    EXPECT(bad == 0, "%d half values convert otherwise than on the host", bad);
    printf("  %-24s every f16 and bf16 value: the same bits as the host's conversion\n", "half to f32");
}

/* Mixed precision's casts: the NCHW <-> NHWC index maps against a plain
 * loop over (s, ch, y, x), odd shapes included; CUDA's conversions
 * against round to nearest even done on the bits (BF16) and against
 * FP16's known edges; the round trip back to f32 NCHW. */
static uint16_t bf16_rne_ref(float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

template <typename H> static uint16_t bits16(H v)
{
    uint16_t b;
    memcpy(&b, &v, 2);
    return b;
}

/* u: the type's unit roundoff (half its epsilon). */
template <typename H>
static void amp_shape(const char *type, double u, int64_t n, int64_t c, int64_t h, int64_t w)
{
    const size_t total = (size_t)(n * c * h * w);
    float *x = fbuf(total), *back = fbuf(total);
    H *y = (H *)calloc(total, sizeof(H));
    unsigned char *seen = (unsigned char *)calloc(total, 1);
    if (!y || !seen) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    fill(x, total, 40 + (uint64_t)total, 3.0f);
    for (size_t e = 0; e < total; e++)
        kb_to_half_nhwc_at<H>((int64_t)e, c, h, w, x, y);
    for (size_t e = 0; e < total; e++)
        back[e] = kb_from_half_nhwc_at<H>((int64_t)e, c, h, w, y);
    int bad = 0;
    for (int64_t s = 0; s < n; s++)
        for (int64_t ch = 0; ch < c; ch++)
            for (int64_t yy = 0; yy < h; yy++)
                for (int64_t xx = 0; xx < w; xx++) {
                    int64_t nchw = ((s * c + ch) * h + yy) * w + xx, nhwc = ((s * h + yy) * w + xx) * c + ch;
                    H want;
                    kb_to_half(x[nchw], &want);
                    bad += kb_nhwc_to_nchw(nhwc, c, h, w) != nchw || kb_nchw_to_nhwc(nchw, c, h, w) != nhwc;
                    bad += bits16(y[nhwc]) != bits16(want);
                    bad += back[nchw] != kb_from_half(want);
                    /* Rounding moves a value by at most u relative, or
                     * half FP16's smallest subnormal (2^-25). */
                    bad += !(fabs((double)back[nchw] - (double)x[nchw]) <= u * fabs((double)x[nchw]) + 3e-8);
                    seen[nhwc]++;
                }
    for (size_t e = 0; e < total; e++)
        bad += seen[e] != 1;
    EXPECT(bad == 0, "%s cast %lldx%lldx%lldx%lld: %d mismatches", type, (long long)n, (long long)c, (long long)h,
           (long long)w, bad);
    free(x), free(back), free(y), free(seen);
}

static void test_amp(void)
{
    static const int64_t shapes[][4] = {{2, 3, 5, 7}, {1, 1, 1, 1}, {3, 1, 4, 4}, {2, 16, 3, 3},
                                        {5, 7, 1, 1}, {1, 9, 2, 11}, {4, 8, 28, 28}};
    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
        amp_shape<__nv_bfloat16>("bf16", 1.0 / 256, shapes[i][0], shapes[i][1], shapes[i][2], shapes[i][3]);
        amp_shape<__half>("fp16", 1.0 / 2048, shapes[i][0], shapes[i][1], shapes[i][2], shapes[i][3]);
    }
    /* BF16: every 65536th bit pattern of f32 (NaN left out), and the
     * ties either way, against rounding on the bits. */
    int bad = 0;
    for (uint64_t u = 0; u <= 0xffffffffull; u += 65521) {
        uint32_t b = (uint32_t)u;
        float v;
        memcpy(&v, &b, 4);
        if (v != v)
            continue;
        __nv_bfloat16 got;
        kb_to_half(v, &got);
        bad += bits16(got) != bf16_rne_ref(v);
    }
    static const uint32_t ties[] = {0x3f808000u, 0x3f818000u, 0xbf808000u, 0x3f80c000u, 0x7f7fffffu};
    for (size_t i = 0; i < sizeof(ties) / sizeof(ties[0]); i++) {
        float v;
        memcpy(&v, &ties[i], 4);
        __nv_bfloat16 got;
        kb_to_half(v, &got);
        bad += bits16(got) != bf16_rne_ref(v);
    }
    EXPECT(bad == 0, "bf16: %d conversions are not round to nearest even", bad);
    /* FP16's edges: the largest finite value, the tie above it (to even:
     * infinity), an overflow, the smallest subnormal and a tie to even. */
    static const struct {
        float v;
        uint16_t want;
    } f16[] = {{65504.0f, 0x7bffu}, {65519.0f, 0x7bffu}, {65520.0f, 0x7c00u}, {1e35f, 0x7c00u},
               {-1e35f, 0xfc00u},   {5.9604645e-8f, 0x0001u}, {1.00048828125f, 0x3c00u}, {1.00146484375f, 0x3c02u},
               {0.0f, 0x0000u}};
    bad = 0;
    for (size_t i = 0; i < sizeof(f16) / sizeof(f16[0]); i++) {
        __half got;
        kb_to_half(f16[i].v, &got);
        EXPECT(bits16(got) == f16[i].want, "fp16(%.9g) = 0x%04x, want 0x%04x", (double)f16[i].v, bits16(got),
               f16[i].want);
    }
    /* Rounding in place (linear outputs) as common/dtype.c's conversions,
     * which the CPU backend's emulation of half precision uses. */
    bad = 0;
    for (uint64_t u = 0; u <= 0xffffffffull; u += 65521) {
        uint32_t b = (uint32_t)u;
        float v;
        memcpy(&v, &b, 4);
        if (v != v)
            continue;
        float rb = kb_round_half<__nv_bfloat16>(v), rh = kb_round_half<__half>(v);
        float wb = stk_bf16_to_f32(stk_f32_to_bf16(v)), wh = stk_f16_to_f32(stk_f32_to_f16(v));
        bad += memcmp(&rb, &wb, 4) != 0 || memcmp(&rh, &wh, 4) != 0;
    }
    EXPECT(bad == 0, "rounding in place: %d values differ from common/dtype.c's", bad);
    float inf = kb_from_half(__float2half_rn(1e35f));
    EXPECT(isinf(inf) && inf > 0, "fp16 overflow reads back as %g, not infinity", (double)inf);
    printf("  %-24s NCHW <-> NHWC maps and BF16/FP16 rounding as a plain loop, 7 shapes\n", "mixed-precision casts");
}

int main(void)
{
    stk__backend_t cpu;
    memset(&cpu, 0, sizeof(cpu));
    if (stk__backend_open(&cpu, STK_DEVICE_CPU) < 0) {
        fprintf(stderr, "FAIL cpu backend: %s\n", stk_error_message());
        return 1;
    }
    test_eltwise(&cpu);
    test_concat_dropout(&cpu);
    test_reorder(&cpu);
    test_batchnorm(&cpu, 0);
    test_batchnorm(&cpu, 1);
    test_bn_fold(&cpu, 0);
    test_bn_fold(&cpu, 1);
    test_pool(&cpu, 1, 2, 2, 0);
    test_pool(&cpu, 1, 3, 2, 1);
    test_pool(&cpu, 1, 3, 1, 1);
    test_pool(&cpu, 0, 3, 2, 1);
    test_pool(&cpu, 0, 2, 2, 0);
    test_xent(&cpu, 0, 0.0f);
    test_xent(&cpu, 0, 0.1f);
    test_xent(&cpu, 1, 0.2f);
    test_correct(&cpu);
    test_seq(&cpu);
    test_optim();
    test_half();
    test_amp();
    stk__backend_close(&cpu);
    printf("%d failure(s)\n", failures);
    return failures ? 1 : 0;
}
