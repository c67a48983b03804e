/* SPDX-License-Identifier: MIT */
/* Every backend op on every backend that is present, forward and backward,
 * on the same inputs (the idea of ggml's test-backend-ops): the CPU
 * backend against PyTorch (tests/data/conformance, made by
 * tools/gen_conformance_fixtures.py), every other backend against the CPU
 * backend, each op with its tolerances stated in the table below. A
 * backend that keeps activations in a blocked layout also runs the layout
 * ops that way, through its reorder op, against PyTorch.
 *
 * Without a GPU the CUDA backend is reported as absent and the CPU checks
 * still run. `--gpu` (the "gpu" suite) exits 77 instead when no GPU is
 * usable, and STK_REQUIRE_GPU=1 makes an absent GPU a failure. Plain main,
 * no cmocka: a skip needs the exit code. */
#define _GNU_SOURCE
#include "harness.h"
#include "engine/optim_kernels.h"

#include <dirent.h>
#include <stddef.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define F32(n) ((size_t)(n) * sizeof(float))

/* A plain NCHW device tensor in `layout` (a new buffer when blocked). */
static float *to_layout(run_t *r, float *x, int64_t n, int64_t c, int64_t h, int64_t w, int layout)
{
    const stk__backend_iface_t *be = r->be->iface;
    if (layout == STK__LAYOUT_PLAIN || !x || r->failed)
        return x;
    float *y = run_alloc(r, F32(n * c * h * w));
    stk__op_t *op = NULL;
    if (!y || run_check(r, be->reorder_create(r->be->ctx, n, c, h, w, STK__LAYOUT_PLAIN, layout, &op), "reorder"))
        return NULL;
    run_check(r, be->reorder_run(r->be->ctx, op, 0, x, y), "reorder_run");
    be->op_destroy(r->be->ctx, op);
    return y;
}

/* Back to plain (reorder_run's reverse direction). */
static float *from_layout(run_t *r, float *x, int64_t n, int64_t c, int64_t h, int64_t w, int layout)
{
    const stk__backend_iface_t *be = r->be->iface;
    if (layout == STK__LAYOUT_PLAIN || !x || r->failed)
        return x;
    float *y = run_alloc(r, F32(n * c * h * w));
    stk__op_t *op = NULL;
    if (!y || run_check(r, be->reorder_create(r->be->ctx, n, c, h, w, STK__LAYOUT_PLAIN, layout, &op), "reorder"))
        return NULL;
    run_check(r, be->reorder_run(r->be->ctx, op, 1, x, y), "reorder_run");
    be->op_destroy(r->be->ctx, op);
    return y;
}

/* --------------------------------------------------------------- ops */

static int op_conv(run_t *r, const fixture_t *fx, int layout)
{
    const stk__backend_iface_t *be = r->be->iface;
    void *ctx = r->be->ctx;
    stk__conv_desc_t d = {
        .n = fx_int(fx, "n"), .ic = fx_int(fx, "ic"), .ih = fx_int(fx, "ih"), .iw = fx_int(fx, "iw"),
        .oc = fx_int(fx, "oc"), .oh = fx_int(fx, "oh"), .ow = fx_int(fx, "ow"), .kh = fx_int(fx, "kh"),
        .kw = fx_int(fx, "kw"), .sh = fx_int(fx, "sh"), .sw = fx_int(fx, "sw"), .ph = fx_int(fx, "ph"),
        .pw = fx_int(fx, "pw"), .dh = fx_int(fx, "dh"), .dw = fx_int(fx, "dw"), .groups = fx_int(fx, "groups"),
        .bias = (int)fx_int(fx, "bias"),
    };
    /* A model blocks only channel counts that are multiples of 8. */
    d.fmt_in = d.ic % 8 ? STK__LAYOUT_PLAIN : layout;
    d.fmt_out = d.oc % 8 ? STK__LAYOUT_PLAIN : layout;
    size_t nx, nw, nb, ndy;
    float *x = run_input(r, fx, "x", &nx), *w = run_input(r, fx, "w", &nw), *b = run_input(r, fx, "b", &nb);
    float *dy = run_input(r, fx, "dy", &ndy);
    float *y = run_alloc(r, F32(ndy)), *dx = run_alloc(r, F32(nx)), *dw = run_alloc(r, F32(nw));
    float *db = run_alloc(r, F32(nb));
    float *xl = to_layout(r, x, d.n, d.ic, d.ih, d.iw, d.fmt_in), *dyl = to_layout(r, dy, d.n, d.oc, d.oh, d.ow,
                                                                                      d.fmt_out);
    stk__op_t *op = NULL;
    if (r->failed || run_check(r, be->conv_create(ctx, &d, &op), "conv_create"))
        return d.fmt_in != STK__LAYOUT_PLAIN || d.fmt_out != STK__LAYOUT_PLAIN;
    run_check(r, be->conv_forward(ctx, op, xl, w, d.bias ? b : NULL, y), "conv_forward");
    run_check(r, be->conv_backward_data(ctx, op, dyl, w, dx), "conv_backward_data");
    run_check(r, be->conv_backward_weights(ctx, op, xl, dyl, dw, d.bias ? db : NULL), "conv_backward_weights");
    be->op_destroy(ctx, op);
    run_output(r, "y", from_layout(r, y, d.n, d.oc, d.oh, d.ow, d.fmt_out), ndy);
    run_output(r, "dx", from_layout(r, dx, d.n, d.ic, d.ih, d.iw, d.fmt_in), nx);
    run_output(r, "dw", dw, nw);
    if (d.bias)
        run_output(r, "db", db, nb);
    return d.fmt_in != STK__LAYOUT_PLAIN || d.fmt_out != STK__LAYOUT_PLAIN;
}

static int op_batchnorm(run_t *r, const fixture_t *fx, int layout)
{
    const stk__backend_iface_t *be = r->be->iface;
    void *ctx = r->be->ctx;
    stk__bn_desc_t d = {.n = fx_int(fx, "n"), .c = fx_int(fx, "c"), .h = fx_int(fx, "h"), .w = fx_int(fx, "w"),
                        .eps = (float)fx_param(fx, "eps"), .relu = (int)fx_int(fx, "relu")};
    d.fmt = d.c % 8 ? STK__LAYOUT_PLAIN : layout;
    size_t nx, nc;
    float *x = run_input(r, fx, "x", &nx), *gamma = run_input(r, fx, "gamma", &nc);
    float *beta = run_input(r, fx, "beta", NULL), *dy = run_input(r, fx, "dy", NULL);
    float *rm = run_input(r, fx, "running_mean0", NULL), *rv = run_input(r, fx, "running_var0", NULL);
    float *rm0 = run_input(r, fx, "running_mean0", NULL), *rv0 = run_input(r, fx, "running_var0", NULL);
    float *mean = run_alloc(r, F32(nc)), *var = run_alloc(r, F32(nc)), *y = run_alloc(r, F32(nx));
    float *ye = run_alloc(r, F32(nx)), *dx = run_alloc(r, F32(nx)), *dg = run_alloc(r, F32(nc));
    float *dbt = run_alloc(r, F32(nc));
    float *xl = to_layout(r, x, d.n, d.c, d.h, d.w, d.fmt), *dyl = to_layout(r, dy, d.n, d.c, d.h, d.w, d.fmt);
    stk__op_t *op = NULL;
    if (r->failed || run_check(r, be->bn_create(ctx, &d, &op), "bn_create"))
        return d.fmt != STK__LAYOUT_PLAIN;
    run_check(r, be->bn_forward(ctx, op, 1, xl, gamma, beta, mean, var, y), "bn_forward (train)");
    run_check(r, be->bn_backward(ctx, op, xl, dyl, gamma, mean, var, dx, dg, dbt), "bn_backward");
    be->bn_update_running(ctx, d.c, d.n * d.h * d.w, (float)fx_param(fx, "momentum"), mean, var, rm, rv);
    run_check(r, be->bn_forward(ctx, op, 0, xl, gamma, beta, rm0, rv0, ye), "bn_forward (eval)");
    be->op_destroy(ctx, op);
    run_output(r, "y", from_layout(r, y, d.n, d.c, d.h, d.w, d.fmt), nx);
    run_output(r, "mean", mean, nc);
    run_output(r, "var", var, nc);
    run_output(r, "dx", from_layout(r, dx, d.n, d.c, d.h, d.w, d.fmt), nx);
    run_output(r, "dgamma", dg, nc);
    run_output(r, "dbeta", dbt, nc);
    run_output(r, "running_mean", rm, nc);
    run_output(r, "running_var", rv, nc);
    run_output(r, "y_eval", from_layout(r, ye, d.n, d.c, d.h, d.w, d.fmt), nx);
    return d.fmt != STK__LAYOUT_PLAIN;
}

static int op_pool(run_t *r, const fixture_t *fx, int layout)
{
    const stk__backend_iface_t *be = r->be->iface;
    void *ctx = r->be->ctx;
    stk__pool_desc_t d = {
        .n = fx_int(fx, "n"), .c = fx_int(fx, "c"), .ih = fx_int(fx, "ih"), .iw = fx_int(fx, "iw"),
        .oh = fx_int(fx, "oh"), .ow = fx_int(fx, "ow"), .kh = fx_int(fx, "kh"), .kw = fx_int(fx, "kw"),
        .sh = fx_int(fx, "sh"), .sw = fx_int(fx, "sw"), .ph = fx_int(fx, "ph"), .pw = fx_int(fx, "pw"),
        .max = (int)fx_int(fx, "max"),
    };
    d.fmt = d.c % 8 ? STK__LAYOUT_PLAIN : layout;
    size_t nx, ny;
    float *x = run_input(r, fx, "x", &nx), *dy = run_input(r, fx, "dy", &ny);
    float *y = run_alloc(r, F32(ny)), *dx = run_alloc(r, F32(nx));
    float *xl = to_layout(r, x, d.n, d.c, d.ih, d.iw, d.fmt), *dyl = to_layout(r, dy, d.n, d.c, d.oh, d.ow, d.fmt);
    stk__op_t *op = NULL;
    if (r->failed || run_check(r, be->pool_create(ctx, &d, &op), "pool_create"))
        return d.fmt != STK__LAYOUT_PLAIN;
    run_check(r, be->pool_forward(ctx, op, 1, xl, y), "pool_forward");
    run_check(r, be->pool_backward(ctx, op, dyl, dx), "pool_backward");
    be->op_destroy(ctx, op);
    run_output(r, "y", from_layout(r, y, d.n, d.c, d.oh, d.ow, d.fmt), ny);
    run_output(r, "dx", from_layout(r, dx, d.n, d.c, d.ih, d.iw, d.fmt), nx);
    return d.fmt != STK__LAYOUT_PLAIN;
}

static int op_linear(run_t *r, const fixture_t *fx, int layout)
{
    (void)layout;
    const stk__backend_iface_t *be = r->be->iface;
    void *ctx = r->be->ctx;
    stk__linear_desc_t d = {.n = fx_int(fx, "n"), .in = fx_int(fx, "fin"), .out = fx_int(fx, "fout"),
                            .bias = (int)fx_int(fx, "bias")};
    size_t nx, nw, nb, ny;
    float *x = run_input(r, fx, "x", &nx), *w = run_input(r, fx, "w", &nw), *b = run_input(r, fx, "b", &nb);
    float *dy = run_input(r, fx, "dy", &ny);
    float *y = run_alloc(r, F32(ny)), *dx = run_alloc(r, F32(nx)), *dw = run_alloc(r, F32(nw));
    float *db = run_alloc(r, F32(nb));
    stk__op_t *op = NULL;
    if (r->failed || run_check(r, be->linear_create(ctx, &d, &op), "linear_create"))
        return 0;
    run_check(r, be->linear_forward(ctx, op, x, w, d.bias ? b : NULL, y), "linear_forward");
    run_check(r, be->linear_backward_data(ctx, op, dy, w, dx), "linear_backward_data");
    run_check(r, be->linear_backward_weights(ctx, op, x, dy, dw, d.bias ? db : NULL), "linear_backward_weights");
    be->op_destroy(ctx, op);
    run_output(r, "y", y, ny);
    run_output(r, "dx", dx, nx);
    run_output(r, "dw", dw, nw);
    if (d.bias)
        run_output(r, "db", db, nb);
    return 0;
}

static int op_eltwise(run_t *r, const fixture_t *fx, int layout)
{
    (void)layout;
    const stk__backend_iface_t *be = r->be->iface;
    void *ctx = r->be->ctx;
    stk__eltwise_t alg = (stk__eltwise_t)fx_int(fx, "alg");
    float alpha = (float)fx_param(fx, "alpha");
    size_t n;
    float *x = run_input(r, fx, "x", &n), *dy = run_input(r, fx, "dy", NULL);
    float *y = run_alloc(r, F32(n)), *dx = run_alloc(r, F32(n)), *z = run_input(r, fx, "x", NULL);
    if (r->failed)
        return 0;
    run_check(r, be->eltwise_forward(ctx, alg, alpha, n, x, y), "eltwise_forward");
    run_check(r, be->eltwise_backward(ctx, alg, alpha, n, x, y, dy, dx), "eltwise_backward");
    run_check(r, be->eltwise_forward(ctx, alg, alpha, n, z, z), "eltwise_forward in place");
    run_output(r, "y", y, n);
    run_output(r, "dx", dx, n);
    run_output(r, "y@inplace", z, n);
    return 0;
}

static int op_add(run_t *r, const fixture_t *fx, int layout)
{
    (void)layout;
    const stk__backend_iface_t *be = r->be->iface;
    size_t n;
    float *a = run_input(r, fx, "a", &n), *b = run_input(r, fx, "b", NULL), *acc = run_input(r, fx, "y0", NULL);
    float *y = run_alloc(r, F32(n));
    if (r->failed)
        return 0;
    be->add(r->be->ctx, n, a, b, y);
    be->accumulate(r->be->ctx, n, a, acc);
    run_output(r, "y", y, n);
    run_output(r, "acc", acc, n);
    return 0;
}

static int op_concat(run_t *r, const fixture_t *fx, int layout)
{
    (void)layout;
    const stk__backend_iface_t *be = r->be->iface;
    void *ctx = r->be->ctx;
    int64_t n = fx_int(fx, "n"), ca = fx_int(fx, "ca"), cb = fx_int(fx, "cb"), hw = fx_int(fx, "hw");
    size_t na, nb, ny;
    float *a = run_input(r, fx, "a", &na), *b = run_input(r, fx, "b", &nb), *dy = run_input(r, fx, "dy", &ny);
    float *acc = run_input(r, fx, "db0", NULL);
    float *y = run_alloc(r, F32(ny)), *da = run_alloc(r, F32(na)), *db = run_alloc(r, F32(nb));
    if (r->failed)
        return 0;
    be->concat_forward(ctx, n, ca, cb, hw, a, b, y);
    be->concat_backward(ctx, n, ca, cb, hw, dy, da, acc, 0, 1);
    be->concat_backward(ctx, n, ca, cb, hw, dy, NULL, db, 0, 0);
    run_output(r, "y", y, ny);
    run_output(r, "da", da, na);
    run_output(r, "db_acc", acc, nb);
    run_output(r, "db", db, nb);
    return 0;
}

static int op_dropout(run_t *r, const fixture_t *fx, int layout)
{
    (void)layout;
    const stk__backend_iface_t *be = r->be->iface;
    size_t n = (size_t)fx_int(fx, "n");
    float p = (float)fx_param(fx, "p");
    uint64_t key = (uint64_t)fx_int(fx, "key"), step = (uint64_t)fx_int(fx, "step");
    float *x = run_input(r, fx, "x", NULL), *dy = run_input(r, fx, "dy", NULL);
    float *y = run_alloc(r, F32(n)), *dx = run_alloc(r, F32(n));
    if (r->failed)
        return 0;
    be->dropout_forward(r->be->ctx, n, p, key, step, x, y);
    be->dropout_backward(r->be->ctx, n, p, key, step, dy, dx);
    run_output(r, "y", y, n);
    run_output(r, "dx", dx, n);
    return 0;
}

static int op_xent(run_t *r, const fixture_t *fx, int layout)
{
    (void)layout;
    const stk__backend_iface_t *be = r->be->iface;
    void *ctx = r->be->ctx;
    int64_t n = fx_int(fx, "n"), k = fx_int(fx, "k");
    float smoothing = (float)fx_param(fx, "smoothing"), scale = (float)fx_param(fx, "scale");
    int soft = (int)fx_int(fx, "soft");
    float *z = run_input(r, fx, "logits", NULL);
    int64_t *labels = soft ? NULL : run_input(r, fx, "labels", NULL);
    float *target = soft ? run_input(r, fx, "soft", NULL) : NULL;
    float *prob = run_alloc(r, F32(n * k)), *dz = run_alloc(r, F32(n * k)), *loss = run_alloc(r, sizeof(float));
    int64_t *correct = run_alloc(r, 2 * sizeof(int64_t));
    if (r->failed)
        return 0;
    run_check(r, be->xent_forward(ctx, n, k, z, labels, target, smoothing, prob, loss), "xent_forward");
    be->xent_backward(ctx, n, k, prob, labels, target, smoothing, scale, dz);
    run_output(r, "prob", prob, (size_t)(n * k));
    run_output(r, "loss", loss, 1);
    run_output(r, "dlogits", dz, (size_t)(n * k));
    if (soft || r->failed)
        return 0;
    /* Top-1 and top-3 accuracy counts, read back as the engine does. */
    int64_t got[2] = {-1, -1};
    run_check(r, be->count_correct(ctx, n, k, 1, z, labels, correct), "count_correct");
    run_check(r, be->count_correct(ctx, n, k, 3, z, labels, correct + 1), "count_correct (top-3)");
    if (!r->failed && !run_check(r, be->download(ctx, got, correct, sizeof(got)), "download")) {
        float f[2] = {(float)got[0], (float)got[1]};
        run_output_host(r, "correct1", &f[0], 1);
        run_output_host(r, "correct3", &f[1], 1);
    }
    return 0;
}

/* Embedding lookups and their gradient. A bad index is -EINVAL naming it,
 * from the slot or (a device) from the next synchronous slot. */
static int op_rows(run_t *r, const fixture_t *fx, int layout)
{
    (void)layout;
    const stk__backend_iface_t *be = r->be->iface;
    void *ctx = r->be->ctx;
    int64_t n = fx_int(fx, "n"), f = fx_int(fx, "f"), rows = fx_int(fx, "rows"), skip = fx_int(fx, "skip");
    size_t nsrc, nidx;
    float *src = run_input(r, fx, "src", &nsrc), *grad = run_input(r, fx, "grad", NULL);
    int64_t *idx = run_input(r, fx, "idx", &nidx);
    float *a = run_input(r, fx, "dst0", NULL), *b = run_input(r, fx, "dst0", NULL);
    float *dst = run_alloc(r, F32(n * f));
    if (r->failed)
        return 0;
    run_check(r, be->gather_rows(ctx, n, f, rows, idx, src, dst), "gather_rows");
    be->scatter_add_rows(ctx, n, f, idx, -1, grad, a);
    be->scatter_add_rows(ctx, n, f, idx, skip, grad, b);
    run_output(r, "dst", dst, (size_t)(n * f));
    run_output(r, "scatter", a, nsrc);
    run_output(r, "scatter_skip", b, nsrc);
    int64_t *bad = fx_tensor(fx, "idx", &nidx);
    int64_t at = n / 2;
    bad[at] = rows + 3;
    int64_t *dbad = run_upload(r, bad, nidx * sizeof(int64_t));
    free(bad);
    if (!dbad)
        return 0;
    int rc = be->gather_rows(ctx, n, f, rows, dbad, src, dst);
    if (rc == 0 && be->synchronize)
        rc = be->synchronize(ctx);
    char want[64];
    snprintf(want, sizeof(want), "index %lld", (long long)(rows + 3));
    if (rc != -EINVAL || !strstr(stk_error_message(), want))
        fail("%s: %s: a bad index gave %d '%s', expected -EINVAL naming '%s'", r->be_name, fx->name, rc,
             stk_error_message(), want);
    return 0;
}

static int op_seq_pool(run_t *r, const fixture_t *fx, int layout)
{
    (void)layout;
    const stk__backend_iface_t *be = r->be->iface;
    int64_t n = fx_int(fx, "n"), t = fx_int(fx, "t"), f = fx_int(fx, "f");
    size_t nx;
    float *x = run_input(r, fx, "x", &nx), *dy = run_input(r, fx, "dy", NULL);
    int64_t *lengths = run_input(r, fx, "lengths", NULL);
    float *y[2] = {run_alloc(r, F32(n * f)), run_alloc(r, F32(n * f))};
    float *dx[2] = {run_alloc(r, F32(nx)), run_alloc(r, F32(nx))};
    if (r->failed)
        return 0;
    static const char *const yn[2] = {"y_last", "y_mean"}, *const dn[2] = {"dx_last", "dx_mean"};
    for (int mean = 0; mean < 2; mean++) {
        be->seq_pool_forward(r->be->ctx, mean, n, t, f, lengths, x, y[mean]);
        be->seq_pool_backward(r->be->ctx, mean, n, t, f, lengths, dy, dx[mean]);
        run_output(r, yn[mean], y[mean], (size_t)(n * f));
        run_output(r, dn[mean], dx[mean], nx);
    }
    return 0;
}

/* An LSTM / GRU stack, forward and backward, with PyTorch's parameters
 * placed in the backend's parameter block (backend_rnn.h). A backend
 * without recurrent slots is skipped (reported). */
static int op_rnn(run_t *r, const fixture_t *fx, int layout)
{
    (void)layout;
    const stk__backend_iface_t *be = r->be->iface;
    void *ctx = r->be->ctx;
    if (!be->rnn_create) {
        printf("  %-28s rnn        no recurrent slots: not run\n", r->be_name);
        r->failed = 1;
        return 0;
    }
    stk__rnn_desc_t d = {.cell = fx_int(fx, "lstm") ? STK__RNN_LSTM : STK__RNN_GRU,
                         .batch = fx_int(fx, "n"),
                         .steps = fx_int(fx, "t"),
                         .input = fx_int(fx, "input"),
                         .hidden = fx_int(fx, "hidden"),
                         .layers = (int)fx_int(fx, "layers"),
                         .bidirectional = (int)fx_int(fx, "bidirectional")};
    const int lstm = d.cell == STK__RNN_LSTM, nd = d.bidirectional ? 2 : 1;
    const size_t np = stk__rnn_param_count(&d), ns = (size_t)(d.layers * nd * d.batch * d.hidden);
    const size_t ny = (size_t)(d.batch * d.steps * nd * d.hidden), nx = (size_t)(d.batch * d.steps * d.input);
    float *w = calloc(np, sizeof(float));
    static const char *const names[4] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh"};
    for (int l = 0; l < d.layers; l++)
        for (int di = 0; di < nd; di++)
            for (int k = 0; k < 4; k++) {
                char pn[96];
                size_t cnt = 0, got = 0, off = stk__rnn_param_offset(&d, l, di, k, &cnt);
                snprintf(pn, sizeof(pn), "param.%s_l%d%s", names[k], l, di ? "_reverse" : "");
                float *t = fx_tensor(fx, pn, &got);
                if (!t || got != cnt)
                    fail("%s: %s missing or %zu values, not %zu", fx->name, pn, got, cnt);
                else
                    memcpy(w + off, t, cnt * sizeof(float));
                free(t);
            }
    size_t nl;
    int64_t *lengths = fx_tensor(fx, "lengths", &nl); /* host memory */
    stk__rnn_args_t a = {
        .n = d.batch, .t = d.steps, .lengths = lengths, .w = run_upload(r, w, np * sizeof(float)),
        .x = run_input(r, fx, "x", NULL), .h0 = run_input(r, fx, "h0", NULL),
        .c0 = lstm ? run_input(r, fx, "c0", NULL) : NULL, .y = run_alloc(r, F32(ny)), .hn = run_alloc(r, F32(ns)),
        .cn = lstm ? run_alloc(r, F32(ns)) : NULL, .dy = run_input(r, fx, "dy", NULL),
        .dhn = run_input(r, fx, "dhn", NULL), .dcn = lstm ? run_input(r, fx, "dcn", NULL) : NULL,
        .dx = run_alloc(r, F32(nx)), .dh0 = run_alloc(r, F32(ns)), .dc0 = lstm ? run_alloc(r, F32(ns)) : NULL,
        .dw = run_alloc(r, F32(np)),
    };
    free(w);
    stk__rnn_op_t *op = NULL;
    if (!r->failed && !run_check(r, be->rnn_create(ctx, &d, &op), "rnn_create")) {
        run_check(r, be->rnn_forward(ctx, op, 1, &a), "rnn_forward");
        run_check(r, be->rnn_backward(ctx, op, &a), "rnn_backward");
        run_output(r, "y", a.y, ny);
        run_output(r, "hn", a.hn, ns);
        run_output(r, "dx", a.dx, nx);
        run_output(r, "dh0", a.dh0, ns);
        if (lstm) {
            run_output(r, "cn", a.cn, ns);
            run_output(r, "dc0", a.dc0, ns);
        }
        /* The parameter gradients, by PyTorch name. */
        float *dw = malloc(np * sizeof(float));
        if (dw && !run_check(r, be->download(ctx, dw, a.dw, np * sizeof(float)), "download"))
            for (int l = 0; l < d.layers; l++)
                for (int di = 0; di < nd; di++)
                    for (int k = 0; k < 4; k++) {
                        char gn[96];
                        size_t cnt = 0, off = stk__rnn_param_offset(&d, l, di, k, &cnt);
                        snprintf(gn, sizeof(gn), "grad.%s_l%d%s", names[k], l, di ? "_reverse" : "");
                        run_output_host(r, gn, dw + off, cnt);
                    }
        free(dw);
    }
    if (op)
        be->rnn_destroy(ctx, op);
    free(lengths);
    return 0;
}

/* Three steps of a fused update over two ranges of a 1000-float arena,
 * with the scalars the engine computes (stk__optim_scalars). */
static int op_optim(run_t *r, const fixture_t *fx, int layout)
{
    (void)layout;
    const stk__backend_iface_t *be = r->be->iface;
    void *ctx = r->be->ctx;
    stk_optim_kind_t kind = (stk_optim_kind_t)fx_int(fx, "kind");
    stk_optim_hparams_t h;
    stk_optim_hparams_default(&h, kind);
    static const struct {
        const char *key;
        size_t off;
    } dkeys[] = {
        {"lr", offsetof(stk_optim_hparams_t, lr)},
        {"weight_decay", offsetof(stk_optim_hparams_t, weight_decay)},
        {"momentum", offsetof(stk_optim_hparams_t, momentum)},
        {"dampening", offsetof(stk_optim_hparams_t, dampening)},
        {"beta1", offsetof(stk_optim_hparams_t, beta1)},
        {"beta2", offsetof(stk_optim_hparams_t, beta2)},
        {"eps", offsetof(stk_optim_hparams_t, eps)},
        {"alpha", offsetof(stk_optim_hparams_t, alpha)},
    };
    for (size_t i = 0; i < STK__ARRAY_LEN(dkeys); i++)
        if (fx_has(fx, dkeys[i].key))
            *(double *)((char *)&h + dkeys[i].off) = fx_param(fx, dkeys[i].key);
    h.nesterov = fx_has(fx, "nesterov") ? (int)fx_int(fx, "nesterov") : h.nesterov;
    h.amsgrad = fx_has(fx, "amsgrad") ? (int)fx_int(fx, "amsgrad") : h.amsgrad;
    h.centered = fx_has(fx, "centered") ? (int)fx_int(fx, "centered") : h.centered;
    h.maximize = fx_has(fx, "maximize") ? (int)fx_int(fx, "maximize") : h.maximize;
    const int steps = (int)fx_int(fx, "steps");
    const stk_optim_range_t ranges[2] = {{(size_t)fx_int(fx, "r0"), (size_t)fx_int(fx, "n0")},
                                         {(size_t)fx_int(fx, "r1"), (size_t)fx_int(fx, "n1")}};
    size_t size;
    float *p = run_input(r, fx, "p0", &size);
    /* The state arrays this kind and these settings use (the rest NULL). */
    int use[3] = {0, 0, 0};
    if (kind == STK_OPTIM_SGD)
        use[0] = h.momentum != 0;
    else if (kind == STK_OPTIM_RMSPROP)
        use[0] = 1, use[1] = h.momentum > 0, use[2] = h.centered;
    else
        use[0] = use[1] = 1, use[2] = h.amsgrad;
    float *s[3];
    for (int i = 0; i < 3; i++)
        s[i] = use[i] ? run_alloc(r, F32(size)) : NULL;
    stk__op_t *op = NULL;
    if (r->failed || run_check(r, be->optim_create(ctx, ranges, 2, &op), "optim_create"))
        return 0;
    for (int t = 1; t <= steps && !r->failed; t++) {
        char name[16];
        snprintf(name, sizeof(name), "g%d", t - 1);
        float *g = run_input(r, fx, name, NULL);
        stk__optim_scalars_t k;
        stk__optim_scalars(kind, &h, t, t == 1, &k);
        if (g)
            run_check(r, be->optim_update(ctx, op, &k, p, g, s[0], s[1], s[2]), "optim_update");
    }
    be->op_destroy(ctx, op);
    run_output(r, "p", p, size);
    return 0;
}

static int op_reorder(run_t *r, const fixture_t *fx, int layout)
{
    (void)layout;
    const stk__backend_iface_t *be = r->be->iface;
    int64_t n = fx_int(fx, "n"), c = fx_int(fx, "c"), h = fx_int(fx, "h"), w = fx_int(fx, "w");
    size_t nx;
    float *x = run_input(r, fx, "x", &nx);
    float *bl = run_alloc(r, F32(nx)), *back = run_alloc(r, F32(nx));
    stk__op_t *op = NULL;
    if (r->failed ||
        run_check(r, be->reorder_create(r->be->ctx, n, c, h, w, STK__LAYOUT_PLAIN, STK__LAYOUT_BLOCKED8, &op),
                  "reorder_create"))
        return 0;
    run_check(r, be->reorder_run(r->be->ctx, op, 0, x, bl), "reorder_run");
    run_check(r, be->reorder_run(r->be->ctx, op, 1, bl, back), "reorder_run (reverse)");
    be->op_destroy(r->be->ctx, op);
    run_output(r, "blocked", bl, nx);
    run_output(r, "x@roundtrip", back, nx);
    return 0;
}

typedef struct op_entry {
    const char *name;
    /* Returns 1 when it ran something in the blocked layout. */
    int (*run)(run_t *r, const fixture_t *fx, int layout);
    int layouts; /* runs in the blocked layout on a backend that has it */
    tol_t vs_torch, vs_cpu;
    int cases;
} op_entry_t;

/* Tolerances: |got - want| <= atol + rtol |want|. Convolutions and
 * matrix products sum up to a few hundred products in another order than
 * PyTorch; batch norm divides by a standard deviation; pooling, concat,
 * add and reorder move or add values once; dropout multiplies by the same
 * scale (rounded once more in numpy); a scatter-add on a device adds a
 * repeated row in any order; the optimizer kernels repeat the
 * CPU's float operations one for one (bit-equal) and PyTorch's within a
 * rounding or two. */
static op_entry_t ops[] = {
    {"conv", op_conv, 1, {1e-4, 1e-4}, {1e-4, 1e-4}, 0},
    {"batchnorm", op_batchnorm, 1, {1e-4, 1e-4}, {1e-4, 1e-4}, 0},
    {"pool", op_pool, 1, {1e-5, 1e-6}, {1e-5, 1e-6}, 0},
    {"linear", op_linear, 0, {1e-4, 1e-5}, {1e-4, 1e-5}, 0},
    {"eltwise", op_eltwise, 0, {1e-5, 1e-6}, {1e-5, 1e-6}, 0},
    {"add", op_add, 0, {0, 0}, {0, 0}, 0},
    {"concat", op_concat, 0, {0, 0}, {0, 0}, 0},
    {"dropout", op_dropout, 0, {1e-6, 0}, {0, 0}, 0},
    {"xent", op_xent, 0, {1e-5, 1e-6}, {1e-5, 1e-6}, 0},
    {"reorder", op_reorder, 0, {0, 0}, {0, 0}, 0},
    {"optim", op_optim, 0, {1e-6, 1e-7}, {0, 0}, 0},
    {"rows", op_rows, 0, {1e-6, 1e-6}, {1e-6, 1e-6}, 0},
    {"seq_pool", op_seq_pool, 0, {1e-6, 1e-7}, {0, 0}, 0},
    {"rnn", op_rnn, 0, {1e-4, 1e-5}, {1e-4, 1e-5}, 0},
};

/* --------------------------------------------------- memory, threads */

/* upload, copy, zero and download move exactly the bytes asked for. */
static void check_memory(stk__backend_t *b, const char *name)
{
    enum { N = 1000 };
    run_t r;
    run_init(&r, b, name);
    float host[N], back[N];
    for (int i = 0; i < N; i++)
        host[i] = (float)i * 0.25f - 7.0f;
    float *a = run_upload(&r, host, sizeof(host)), *c = run_alloc(&r, sizeof(host));
    if (!r.failed) {
        run_check(&r, b->iface->copy(b->ctx, c, a, sizeof(host)), "copy");
        b->iface->zero(b->ctx, c + 100, 50);
        run_check(&r, b->iface->download(b->ctx, back, c, sizeof(back)), "download");
    }
    for (int i = 0; i < N && !r.failed; i++) {
        float want = i >= 100 && i < 150 ? 0.0f : host[i];
        if (back[i] != want) {
            fail("%s: memory: element %d is %g after copy/zero, expected %g", name, i, (double)back[i],
                 (double)want);
            break;
        }
    }
    if (b->iface->set_threads(b->ctx, 0) != -EINVAL || b->iface->set_threads(b->ctx, 1) != 0 ||
        b->iface->max_threads(b->ctx) < 1)
        fail("%s: set_threads/max_threads", name);
    printf("  %-28s memory     copy, zero, upload, download, threads%s\n", name, r.failed ? ": FAILED" : "");
    run_free(&r);
}

/* --------------------------------------------------------------- main */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The fixture files of dir, sorted; NULL-terminated. */
static char **list_fixtures(const char *dir, int *count)
{
    DIR *d = opendir(dir);
    char **names = NULL;
    int n = 0;
    if (!d)
        return NULL;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l > 12 && strcmp(e->d_name + l - 12, ".safetensors") == 0) {
            char **nn = realloc(names, (size_t)(n + 2) * sizeof(*names));
            if (!nn)
                break;
            names = nn;
            names[n++] = strdup(e->d_name);
            names[n] = NULL;
        }
    }
    closedir(d);
    if (names)
        qsort(names, (size_t)n, sizeof(*names), cmp_str);
    *count = n;
    return names;
}

int main(int argc, char **argv)
{
    int gpu_suite = argc > 1 && strcmp(argv[1], "--gpu") == 0;
    const char *req = getenv("STK_REQUIRE_GPU");
    int require_gpu = req && strcmp(req, "1") == 0;
    setvbuf(stdout, NULL, _IOLBF, 0);

    enum { NB = 2 };
    stk__backend_t be[NB];
    const char *names[NB] = {"cpu", "cuda"};
    const stk_device_t devs[NB] = {STK_DEVICE_CPU, STK_DEVICE_CUDA};
    int present[NB] = {0};
    for (int i = 0; i < NB; i++) {
        memset(&be[i], 0, sizeof(be[i]));
        int rc = stk__backend_open(&be[i], devs[i]);
        present[i] = rc == 0;
        if (rc < 0)
            printf("backend %s: not present: %s\n", names[i], stk_error_message());
        else
            printf("backend %s: present\n", names[i]);
    }
    int early = 0;
    if (!present[0]) {
        fprintf(stderr, "FAIL the CPU backend does not open\n");
        early = 1;
    } else if (!present[1] && require_gpu) {
        fprintf(stderr, "FAIL STK_REQUIRE_GPU=1 and the CUDA backend does not open\n");
        early = 1;
    } else if (!present[1] && gpu_suite) {
        fprintf(stderr, "SKIP no usable GPU (CUDA backend: not present); set STK_REQUIRE_GPU=1 to fail\n");
        early = 77;
    }
    if (early) {
        for (int i = 0; i < NB; i++)
            stk__backend_close(&be[i]);
        return early;
    }

    const char *data = getenv("STK_TEST_DATA");
    char dir[1024];
    snprintf(dir, sizeof(dir), "%s/conformance", data ? data : "tests/data");
    int nf = 0;
    char **files = list_fixtures(dir, &nf);
    if (!files || nf == 0) {
        fprintf(stderr, "FAIL no fixtures in %s\n", dir);
        for (int i = 0; i < NB; i++)
            stk__backend_close(&be[i]);
        return 1;
    }
    for (int fi = 0; fi < nf; fi++) {
        fixture_t fx;
        if (fixture_load(&fx, dir, files[fi]) < 0)
            continue;
        op_entry_t *op = NULL;
        for (size_t i = 0; i < STK__ARRAY_LEN(ops); i++)
            if (strcmp(ops[i].name, fx.op) == 0)
                op = &ops[i];
        if (!op) {
            fail("%s: unknown op '%s'", fx.name, fx.op);
            fixture_free(&fx);
            continue;
        }
        op->cases++;
        printf("%s (%s: %s)\n", fx.name, fx.op, fx.params);
        run_t runs[NB];
        for (int i = 0; i < NB; i++) {
            run_init(&runs[i], &be[i], names[i]);
            if (!present[i])
                continue;
            char label[64];
            op->run(&runs[i], &fx, STK__LAYOUT_PLAIN);
            snprintf(label, sizeof(label), "%s vs %s", names[i], i == 0 ? "pytorch" : "cpu");
            if (i == 0)
                compare_fixture(&runs[0], &fx, op->vs_torch, label);
            else
                compare_runs(&runs[i], &runs[0], op->vs_cpu, label);
            if (op->layouts && be[i].iface->blocked_layouts) {
                run_t rb;
                run_init(&rb, &be[i], names[i]);
                if (op->run(&rb, &fx, STK__LAYOUT_BLOCKED8)) {
                    snprintf(label, sizeof(label), "%s blocked vs pytorch", names[i]);
                    compare_fixture(&rb, &fx, op->vs_torch, label);
                }
                run_free(&rb);
            }
        }
        for (int i = 0; i < NB; i++)
            run_free(&runs[i]);
        fixture_free(&fx);
    }
    for (int i = 0; i < nf; i++)
        free(files[i]);
    free(files);
    for (size_t i = 0; i < STK__ARRAY_LEN(ops); i++)
        if (ops[i].cases == 0)
            fail("op %s has no fixture in %s", ops[i].name, dir);
    for (int i = 0; i < NB; i++)
        if (present[i])
            check_memory(&be[i], names[i]);
    for (int i = 0; i < NB; i++)
        stk__backend_close(&be[i]);
    printf("%d failure(s); backends run: cpu%s\n", g_failures, present[1] ? ", cuda" : " (cuda not present)");
    return g_failures ? 1 : 0;
}
