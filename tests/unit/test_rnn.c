/* SPDX-License-Identifier: MIT */
/* The recurrent backend slots (engine/backend_rnn.h) on the CPU backend:
 * LSTM and GRU forward and backward against PyTorch fixtures
 * (tools/gen_rnn_fixtures.py), against central finite differences (with
 * dropout between layers), a ragged batch against each sequence run alone,
 * the shape cache past its capacity, a batch split among threads against
 * the same batch in one piece, and the error paths. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "test_util.h"
#include "engine/cpu/cpu.h"
#include "engine/model.h"
#include "stoker/engine.h"

typedef struct fixture {
    char *buf;
    stk__st_file_t f;
} fixture_t;

static void fixture_open(fixture_t *fx, const char *name)
{
    char path[512];
    size_t len = 0;
    snprintf(path, sizeof(path), "%s/rnn/%s.safetensors", data_dir(), name);
    fx->buf = read_file(path, &len);
    if (!fx->buf)
        fail_msg("cannot read %s", path);
    if (stk__safetensors_parse(fx->buf, len, &fx->f) < 0)
        fail_msg("%s: %s", path, stk_error_message());
}

static void fixture_close(fixture_t *fx)
{
    stk__safetensors_free(&fx->f);
    free(fx->buf);
}

/* A tensor of the fixture, or NULL when absent. */
static const void *fx_get(const fixture_t *fx, const char *name, size_t *count)
{
    const stk__st_entry_t *e = stk__safetensors_find(&fx->f, name);
    if (!e)
        return NULL;
    if (count)
        *count = (size_t)(e->end - e->begin) / (strcmp(e->dtype, "I64") == 0 ? 8 : 4);
    return fx->f.data + e->begin;
}

static long meta_int(const fixture_t *fx, const char *key)
{
    const char *v = stk__safetensors_meta(&fx->f, key);
    if (!v)
        fail_msg("fixture has no metadata '%s'", key);
    return strtol(v, NULL, 10);
}

/* Largest |a - b| relative to (tol_abs + tol_rel |b|); > 1 fails. */
static void expect_close(const char *what, const float *a, const float *b, size_t n, double tol_abs, double tol_rel)
{
    double worst = 0.0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double diff = fabs((double)a[i] - (double)b[i]);
        double err = diff == 0.0 ? 0.0 : diff / (tol_abs + tol_rel * fabs((double)b[i]));
        if (!(err <= worst)) {
            worst = err;
            at = i;
        }
    }
    if (!(worst <= 1.0))
        fail_msg("%s: element %zu is %.8g, expected %.8g (%.2fx the tolerance)", what, at, (double)a[at],
                 (double)b[at], worst);
}

static float *falloc(size_t n)
{
    float *p = calloc(n ? n : 1, sizeof(float));
    assert_non_null(p);
    return p;
}

typedef struct rnn_env {
    stk__backend_t be;
    stk__rnn_op_t *op;
    stk__rnn_desc_t d;
} rnn_env_t;

static void env_open(rnn_env_t *e, const stk__rnn_desc_t *d)
{
    memset(e, 0, sizeof(*e));
    assert_int_equal(stk__backend_open(&e->be, STK_DEVICE_CPU), 0);
    e->d = *d;
    int rc = e->be.iface->rnn_create(e->be.ctx, d, &e->op);
    if (rc < 0)
        fail_msg("rnn_create: %s", stk_error_message());
}

static void env_close(rnn_env_t *e)
{
    e->be.iface->rnn_destroy(e->be.ctx, e->op);
    stk__backend_close(&e->be);
}

static void run_fwd(rnn_env_t *e, int train, const stk__rnn_args_t *a)
{
    int rc = e->be.iface->rnn_forward(e->be.ctx, e->op, train, a);
    if (rc < 0)
        fail_msg("rnn_forward: %s", stk_error_message());
}

static void run_bwd(rnn_env_t *e, const stk__rnn_args_t *a)
{
    int rc = e->be.iface->rnn_backward(e->be.ctx, e->op, a);
    if (rc < 0)
        fail_msg("rnn_backward: %s", stk_error_message());
}

/* ------------------------------------------------- PyTorch fixtures */

static void check_case(const char *name)
{
    fixture_t fx;
    fixture_open(&fx, name);
    const char *cell = stk__safetensors_meta(&fx.f, "cell");
    assert_non_null(cell);
    stk__rnn_desc_t d = {
        .cell = strcmp(cell, "lstm") == 0 ? STK__RNN_LSTM : STK__RNN_GRU,
        .batch = meta_int(&fx, "batch"),
        .steps = meta_int(&fx, "steps"),
        .input = meta_int(&fx, "input"),
        .hidden = meta_int(&fx, "hidden"),
        .layers = (int)meta_int(&fx, "layers"),
        .bidirectional = (int)meta_int(&fx, "bidirectional"),
    };
    int lstm = d.cell == STK__RNN_LSTM, nd = d.bidirectional ? 2 : 1;
    int64_t n = d.batch, t = d.steps, h = d.hidden;
    size_t nstate = (size_t)(d.layers * nd * n * h), ny = (size_t)(n * t * nd * h), nx = (size_t)(n * t * d.input);
    size_t np = stk__rnn_param_count(&d);

    /* the parameter block from PyTorch's named tensors */
    float *w = falloc(np), *dw = falloc(np), *dw_ref = falloc(np);
    const char *names[4] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh"};
    for (int l = 0; l < d.layers; l++)
        for (int di = 0; di < nd; di++)
            for (int k = 0; k < 4; k++) {
                char pn[96];
                size_t cnt = 0, want = 0, off = stk__rnn_param_offset(&d, l, di, k, &want);
                snprintf(pn, sizeof(pn), "param.%s_l%d%s", names[k], l, di ? "_reverse" : "");
                const float *src = fx_get(&fx, pn, &cnt);
                if (!src || cnt != want)
                    fail_msg("%s: %s missing or %zu floats, expected %zu", name, pn, cnt, want);
                memcpy(w + off, src, want * sizeof(float));
                pn[0] = 'g', pn[1] = 'r', pn[2] = 'a', pn[3] = 'd', pn[4] = '.';
                memmove(pn + 5, pn + 6, strlen(pn + 6) + 1);
                src = fx_get(&fx, pn, &cnt);
                if (!src || cnt != want)
                    fail_msg("%s: %s missing", name, pn);
                memcpy(dw_ref + off, src, want * sizeof(float));
            }

    /* safetensors data need not be 8-byte aligned */
    int64_t lengths[64];
    size_t nlen = 0;
    const void *lsrc = fx_get(&fx, "lengths", &nlen);
    assert_true(lsrc && nlen == (size_t)n && n <= 64);
    memcpy(lengths, lsrc, (size_t)n * sizeof(int64_t));
    rnn_env_t e;
    env_open(&e, &d);
    float *y = falloc(ny), *hn = falloc(nstate), *cn = falloc(nstate);
    float *dx = falloc(nx), *dh0 = falloc(nstate), *dc0 = falloc(nstate);
    stk__rnn_args_t a = {
        .n = n,
        .t = t,
        .lengths = lengths,
        .w = w,
        .x = fx_get(&fx, "x", NULL),
        .h0 = fx_get(&fx, "h0", NULL),
        .c0 = fx_get(&fx, "c0", NULL),
        .y = y,
        .hn = hn,
        .cn = lstm ? cn : NULL,
        .dy = fx_get(&fx, "dy", NULL),
        .dhn = fx_get(&fx, "dhn", NULL),
        .dcn = fx_get(&fx, "dcn", NULL),
        .dx = dx,
        .dh0 = dh0,
        .dc0 = lstm ? dc0 : NULL,
        .dw = dw,
    };
    /* twice: the second call reuses the cached primitives and must agree */
    for (int rep = 0; rep < 2; rep++) {
        run_fwd(&e, 1, &a);
        run_bwd(&e, &a);
        char what[160];
#define CMP(buf, key, cnt, ta, tr)                                                                     \
        do {                                                                                           \
            snprintf(what, sizeof(what), "%s %s rep %d", name, key, rep);                                        \
            expect_close(what, buf, fx_get(&fx, key, NULL), cnt, ta, tr);                              \
        } while (0)
        CMP(y, "y", ny, 2e-6, 1e-5);
        CMP(hn, "hn", nstate, 2e-6, 1e-5);
        if (lstm)
            CMP(cn, "cn", nstate, 2e-6, 1e-5);
        CMP(dx, "dx", nx, 1e-5, 1e-4);
        if (a.h0) {
            CMP(dh0, "dh0", nstate, 1e-5, 1e-4);
            if (lstm)
                CMP(dc0, "dc0", nstate, 1e-5, 1e-4);
        }
        snprintf(what, sizeof(what), "%s parameter gradients", name);
        expect_close(what, dw, dw_ref, np, 1e-5, 1e-4);
#undef CMP
    }
    env_close(&e);
    free(w);
    free(dw);
    free(dw_ref);
    free(y);
    free(hn);
    free(cn);
    free(dx);
    free(dh0);
    free(dc0);
    fixture_close(&fx);
}

static void test_pytorch_fixtures(void **state)
{
    (void)state;
    char path[512];
    size_t len = 0;
    snprintf(path, sizeof(path), "%s/rnn/cases.txt", data_dir());
    char *list = read_file(path, &len);
    if (!list)
        fail_msg("cannot read %s", path);
    int cases = 0;
    for (char *line = strtok(list, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#' || line[0] == 0)
            continue;
        check_case(line);
        cases++;
    }
    free(list);
    /* 2 cells x 2 depths x 2 directions x 2 initial states x 2 lengths + 2 */
    assert_int_equal(cases, 34);
}

/* --------------------------------------------- seeded random problems */

static void fill(float *p, size_t n, uint64_t seed, float scale)
{
    stk_rng_t r;
    stk_rng_init(&r, seed, 0);
    for (size_t i = 0; i < n; i++)
        p[i] = (2.0f * stk_rng_uniform(&r) - 1.0f) * scale;
}

typedef struct problem {
    stk__rnn_desc_t d;
    int64_t n, t;
    int64_t len[16];
    float *w, *x, *h0, *c0, *dy, *dhn, *dcn;
    size_t np, nx, ny, ns;
} problem_t;

static void problem_make(problem_t *p, int cell, int layers, int bidir, float dropout, int64_t n, int64_t t,
                         int64_t in, int64_t h, const int64_t *len, uint64_t seed)
{
    memset(p, 0, sizeof(*p));
    p->d = (stk__rnn_desc_t){.cell = cell, .batch = n, .steps = t, .input = in, .hidden = h, .layers = layers,
                             .bidirectional = bidir, .dropout = dropout};
    p->n = n;
    p->t = t;
    int nd = bidir ? 2 : 1;
    memcpy(p->len, len, (size_t)n * sizeof(int64_t));
    p->np = stk__rnn_param_count(&p->d);
    p->nx = (size_t)(n * t * in);
    p->ny = (size_t)(n * t * nd * h);
    p->ns = (size_t)(layers * nd * n * h);
    p->w = falloc(p->np);
    p->x = falloc(p->nx);
    p->h0 = falloc(p->ns);
    p->c0 = falloc(p->ns);
    p->dy = falloc(p->ny);
    p->dhn = falloc(p->ns);
    p->dcn = falloc(p->ns);
    fill(p->w, p->np, seed, 0.5f);
    fill(p->x, p->nx, seed + 1, 1.0f);
    fill(p->h0, p->ns, seed + 2, 0.5f);
    fill(p->c0, p->ns, seed + 3, 0.5f);
    fill(p->dy, p->ny, seed + 4, 1.0f);
    fill(p->dhn, p->ns, seed + 5, 1.0f);
    fill(p->dcn, p->ns, seed + 6, 1.0f);
    /* padding holds garbage: the layer must not read it */
    for (int64_t i = 0; i < n; i++)
        for (int64_t s = len[i]; s < t; s++)
            for (int64_t f = 0; f < in; f++)
                p->x[(i * t + s) * in + f] = 1e3f;
}

static void problem_free(problem_t *p)
{
    free(p->w);
    free(p->x);
    free(p->h0);
    free(p->c0);
    free(p->dy);
    free(p->dhn);
    free(p->dcn);
}

/* The scalar whose gradient backward computes: sum(y dy) + sum(hn dhn)
 * + sum(cn dcn), over valid steps only (dy past the ends is ignored). */
static double loss_of(rnn_env_t *e, const problem_t *p, float *y, float *hn, float *cn)
{
    int lstm = p->d.cell == STK__RNN_LSTM;
    stk__rnn_args_t a = {.n = p->n, .t = p->t, .lengths = p->len, .w = p->w, .x = p->x, .h0 = p->h0,
                         .c0 = lstm ? p->c0 : NULL, .y = y, .hn = hn, .cn = lstm ? cn : NULL, .key = 42, .step = 7};
    run_fwd(e, 1, &a);
    double s = 0.0;
    int64_t f = (p->d.bidirectional ? 2 : 1) * p->d.hidden;
    for (int64_t i = 0; i < p->n; i++)
        for (int64_t st = 0; st < p->len[i]; st++)
            for (int64_t j = 0; j < f; j++)
                s += (double)y[(i * p->t + st) * f + j] * p->dy[(i * p->t + st) * f + j];
    for (size_t i = 0; i < p->ns; i++) {
        s += (double)hn[i] * p->dhn[i];
        if (lstm)
            s += (double)cn[i] * p->dcn[i];
    }
    return s;
}

static void fd_check(int cell)
{
    static const int64_t len[3] = {4, 1, 3};
    problem_t p;
    problem_make(&p, cell, 2, 1, 0.3f, 3, 4, 3, 3, len, 100 + (uint64_t)cell);
    int lstm = cell == STK__RNN_LSTM;
    rnn_env_t e;
    env_open(&e, &p.d);
    float *y = falloc(p.ny), *hn = falloc(p.ns), *cn = falloc(p.ns);
    float *dx = falloc(p.nx), *dh0 = falloc(p.ns), *dc0 = falloc(p.ns), *dw = falloc(p.np);
    loss_of(&e, &p, y, hn, cn);
    stk__rnn_args_t a = {.n = p.n, .t = p.t, .lengths = p.len, .w = p.w, .dy = p.dy, .dhn = p.dhn,
                         .dcn = lstm ? p.dcn : NULL, .dx = dx, .dh0 = dh0, .dc0 = lstm ? dc0 : NULL, .dw = dw};
    run_bwd(&e, &a);
    /* every parameter, input element and initial state element */
    struct { const char *what; float *v; float *g; size_t n; } sets[4] = {
        {"w", p.w, dw, p.np}, {"x", p.x, dx, p.nx}, {"h0", p.h0, dh0, p.ns}, {"c0", p.c0, dc0, lstm ? p.ns : 0}};
    const float eps = 1e-2f;
    int checked = 0;
    for (int s = 0; s < 4; s++) {
        for (size_t i = 0; i < sets[s].n; i++) {
            float keep = sets[s].v[i];
            if (s == 1 && keep == 1e3f)
                continue; /* padding: no gradient, checked to be zero below */
            sets[s].v[i] = keep + eps;
            double up = loss_of(&e, &p, y, hn, cn);
            sets[s].v[i] = keep - eps;
            double down = loss_of(&e, &p, y, hn, cn);
            sets[s].v[i] = keep;
            double fd = (up - down) / (2.0 * eps), an = sets[s].g[i];
            if (fabs(fd - an) > 2e-3 + 1e-2 * fabs(fd))
                fail_msg("%s %s[%zu]: finite difference %.6g, backward %.6g", lstm ? "lstm" : "gru", sets[s].what, i,
                         fd, an);
            checked++;
        }
    }
    for (size_t i = 0; i < p.nx; i++)
        if (p.x[i] == 1e3f)
            assert_true(dx[i] == 0.0f);
    assert_true(checked > 200);
    env_close(&e);
    free(y);
    free(hn);
    free(cn);
    free(dx);
    free(dh0);
    free(dc0);
    free(dw);
    problem_free(&p);
}

static void test_fd_lstm(void **state)
{
    (void)state;
    fd_check(STK__RNN_LSTM);
}

static void test_fd_gru(void **state)
{
    (void)state;
    fd_check(STK__RNN_GRU);
}

/* A ragged batch (with a length of 0 and ties) gives each sequence the
 * outputs, final states and gradients it gets alone, and the batch's
 * weight gradient is the sum of the sequences'. */
static void ragged_check(int cell, int64_t in_features, int64_t hidden)
{
    enum { N = 7, T = 9 };
    static const int64_t len[N] = {3, 9, 0, 5, 5, 1, 8};
    problem_t p;
    assert_true(hidden <= 64);
    problem_make(&p, cell, 2, 1, 0.0f, N, T, in_features, hidden, len, 300 + (uint64_t)cell);
    int lstm = cell == STK__RNN_LSTM;
    int64_t h = p.d.hidden, f = 2 * h, in = p.d.input, nst = 2 * 2; /* layers x directions */
    rnn_env_t e;
    env_open(&e, &p.d);
    float *y = falloc(p.ny), *hn = falloc(p.ns), *cn = falloc(p.ns);
    float *dx = falloc(p.nx), *dh0 = falloc(p.ns), *dc0 = falloc(p.ns), *dw = falloc(p.np), *dw_sum = falloc(p.np);
    stk__rnn_args_t a = {.n = N, .t = T, .lengths = p.len, .w = p.w, .x = p.x, .h0 = p.h0,
                         .c0 = lstm ? p.c0 : NULL, .y = y, .hn = hn, .cn = lstm ? cn : NULL, .dy = p.dy,
                         .dhn = p.dhn, .dcn = lstm ? p.dcn : NULL, .dx = dx, .dh0 = dh0,
                         .dc0 = lstm ? dc0 : NULL, .dw = dw};
    run_fwd(&e, 1, &a);
    run_bwd(&e, &a);
    float *y1 = falloc((size_t)(T * f)), *x1 = falloc((size_t)(T * in)), *dy1 = falloc((size_t)(T * f));
    float *dx1 = falloc((size_t)(T * in)), *dw1 = falloc(p.np);
    float s1[6][4 * 64]; /* h0, c0, dhn, dcn, hn/dh0, cn/dc0 of one sequence: [nst, h] */
    float hn1[4 * 64], cn1[4 * 64], dh01[4 * 64], dc01[4 * 64];
    for (int64_t i = 0; i < N; i++) {
        int64_t L = len[i];
        memcpy(x1, p.x + i * T * in, (size_t)(L * in) * sizeof(float));
        memcpy(dy1, p.dy + i * T * f, (size_t)(L * f) * sizeof(float));
        for (int64_t k = 0; k < nst; k++) {
            const float *src[4] = {p.h0, p.c0, p.dhn, p.dcn};
            for (int j = 0; j < 4; j++)
                memcpy(s1[j] + k * h, src[j] + (k * N + i) * h, (size_t)h * sizeof(float));
        }
        stk__rnn_args_t b = {.n = 1, .t = L, .w = p.w, .x = x1, .h0 = s1[0], .c0 = lstm ? s1[1] : NULL,
                             .y = y1, .hn = hn1, .cn = lstm ? cn1 : NULL, .dy = dy1, .dhn = s1[2],
                             .dcn = lstm ? s1[3] : NULL, .dx = dx1, .dh0 = dh01, .dc0 = lstm ? dc01 : NULL,
                             .dw = dw1};
        run_fwd(&e, 1, &b);
        run_bwd(&e, &b);
        char what[64];
        snprintf(what, sizeof(what), "sequence %lld y", (long long)i);
        expect_close(what, y + i * T * f, y1, (size_t)(L * f), 1e-6, 1e-5);
        for (int64_t s = L * f; s < T * f; s++)
            assert_true(y[i * T * f + s] == 0.0f);
        snprintf(what, sizeof(what), "sequence %lld dx", (long long)i);
        expect_close(what, dx + i * T * in, dx1, (size_t)(L * in), 1e-6, 1e-5);
        for (int64_t s = L * in; s < T * in; s++)
            assert_true(dx[i * T * in + s] == 0.0f);
        for (int64_t k = 0; k < nst; k++) {
            snprintf(what, sizeof(what), "sequence %lld state %lld", (long long)i, (long long)k);
            expect_close(what, hn + (k * N + i) * h, hn1 + k * h, (size_t)h, 1e-6, 1e-5);
            expect_close(what, dh0 + (k * N + i) * h, dh01 + k * h, (size_t)h, 1e-6, 1e-5);
            if (lstm) {
                expect_close(what, cn + (k * N + i) * h, cn1 + k * h, (size_t)h, 1e-6, 1e-5);
                expect_close(what, dc0 + (k * N + i) * h, dc01 + k * h, (size_t)h, 1e-6, 1e-5);
            }
            if (L == 0) { /* nothing ran: the state passes through */
                expect_close(what, hn1 + k * h, s1[0] + k * h, (size_t)h, 0, 0);
                expect_close(what, dh01 + k * h, s1[2] + k * h, (size_t)h, 0, 0);
            }
        }
        for (size_t j = 0; j < p.np; j++)
            dw_sum[j] += dw1[j];
    }
    expect_close("weight gradient = sum over sequences", dw, dw_sum, p.np, 1e-5, 1e-4);
    env_close(&e);
    free(y);
    free(hn);
    free(cn);
    free(dx);
    free(dh0);
    free(dc0);
    free(dw);
    free(dw_sum);
    free(y1);
    free(x1);
    free(dy1);
    free(dx1);
    free(dw1);
    problem_free(&p);
}

static void test_ragged_lstm(void **state)
{
    (void)state;
    ragged_check(STK__RNN_LSTM, 5, 6);
    /* a second layer whose input (2 x 24) is much wider than the first's:
     * each layer's segments need workspaces of their own sizes */
    ragged_check(STK__RNN_LSTM, 3, 24);
}

static void test_ragged_gru(void **state)
{
    (void)state;
    ragged_check(STK__RNN_GRU, 5, 6);
    ragged_check(STK__RNN_GRU, 3, 24);
}

/* More segment shapes than the op caches: evicted shapes are made again
 * and give the same numbers. */
static void test_shape_cache(void **state)
{
    (void)state;
    enum { N = 24, T = 16 };
    int64_t len[N];
    for (int i = 0; i < N; i++)
        len[i] = T;
    problem_t p;
    problem_make(&p, STK__RNN_LSTM, 1, 0, 0.0f, N, T, 4, 4, len, 7);
    rnn_env_t e;
    env_open(&e, &p.d);
    float *y = falloc(p.ny), *first = falloc(p.ny);
    stk__rnn_args_t a = {.n = 3, .t = 5, .w = p.w, .x = p.x, .y = first};
    run_fwd(&e, 0, &a);
    int shapes = 0;
    a.y = y;
    for (a.n = 1; a.n <= N; a.n++)
        for (a.t = 1; a.t <= T; a.t++, shapes++)
            run_fwd(&e, 0, &a);
    assert_true(shapes > 256);
    a.n = 3;
    a.t = 5;
    run_fwd(&e, 0, &a);
    expect_close("after eviction", y, first, (size_t)(3 * 5 * 4), 0, 0);
    env_close(&e);
    free(y);
    free(first);
    problem_free(&p);
}

/* With threads the op cuts a batch into slices run side by side: the
 * outputs, states and gradients are those of the batch in one piece (up
 * to float rounding), dropout masks included; slices of uneven length
 * balance the work. */
static void split_check(int cell, int bidir)
{
    enum { N = 13, T = 11 };
    static const int64_t len[N] = {11, 2, 0, 7, 7, 11, 1, 9, 3, 10, 5, 11, 4};
    problem_t p;
    problem_make(&p, cell, 2, bidir, 0.25f, N, T, 5, 8, len, 500 + (uint64_t)(cell * 2 + bidir));
    int lstm = cell == STK__RNN_LSTM;
    float *out[2][8];
    for (int pass = 0; pass < 2; pass++) {
        rnn_env_t e;
        memset(&e, 0, sizeof(e));
        assert_int_equal(stk__backend_open(&e.be, STK_DEVICE_CPU), 0);
        /* pass 0: one thread, one piece; pass 1: three threads */
        int threads = e.be.iface->max_threads(e.be.ctx);
        assert_int_equal(e.be.iface->set_threads(e.be.ctx, pass ? 3 : 1), 0);
        if (e.be.iface->rnn_create(e.be.ctx, &p.d, &e.op) < 0)
            fail_msg("rnn_create: %s", stk_error_message());
        float **o = out[pass];
        o[0] = falloc(p.ny), o[1] = falloc(p.ns), o[2] = falloc(p.ns), o[3] = falloc(p.nx);
        o[4] = falloc(p.ns), o[5] = falloc(p.ns), o[6] = falloc(p.np), o[7] = falloc(p.np);
        stk__rnn_args_t a = {.n = N, .t = T, .lengths = p.len, .w = p.w, .x = p.x, .h0 = p.h0,
                             .c0 = lstm ? p.c0 : NULL, .y = o[0], .hn = o[1], .cn = lstm ? o[2] : NULL,
                             .dy = p.dy, .dhn = p.dhn, .dcn = lstm ? p.dcn : NULL, .dx = o[3], .dh0 = o[4],
                             .dc0 = lstm ? o[5] : NULL, .dw = o[6], .key = 11, .step = 3};
        /* twice: the second call's weight gradient overwrites the first's */
        for (int k = 0; k < 2; k++) {
            run_fwd(&e, 1, &a);
            run_bwd(&e, &a);
        }
        assert_int_equal(stk__cpu_rnn_parts(e.op), pass ? 3 : 0);
        if (pass) {
            /* errors name the sequence in the whole batch, not in its slice */
            int64_t bad[N];
            memcpy(bad, len, sizeof(bad));
            bad[9] = T + 1;
            stk__rnn_args_t b = a;
            b.lengths = bad;
            assert_int_equal(e.be.iface->rnn_forward(e.be.ctx, e.op, 1, &b), -EINVAL);
            assert_non_null(strstr(stk_error_message(), "length 12 of sequence 9"));
            assert_int_equal(e.be.iface->rnn_backward(e.be.ctx, e.op, &a), STK_ESTATE);
            run_fwd(&e, 1, &a);
            b = a;
            b.t = T - 1;
            assert_int_equal(e.be.iface->rnn_backward(e.be.ctx, e.op, &b), -EINVAL);
            assert_non_null(strstr(stk_error_message(), "but the forward was"));
        }
        /* a batch too small to split runs in one piece */
        stk__rnn_args_t small = a;
        small.n = 2;
        small.dw = o[7];
        run_fwd(&e, 1, &small);
        assert_int_equal(stk__cpu_rnn_parts(e.op), 0);
        assert_int_equal(e.be.iface->set_threads(e.be.ctx, threads), 0);
        env_close(&e);
    }
    static const char *what[7] = {"y", "hn", "cn", "dx", "dh0", "dc0", "dw"};
    size_t cnt[7] = {p.ny, p.ns, p.ns, p.nx, p.ns, p.ns, p.np};
    for (int i = 0; i < 7; i++) {
        if (lstm || (i != 2 && i != 5))
            expect_close(what[i], out[1][i], out[0][i], cnt[i], 1e-5, 1e-4);
    }
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < 8; i++)
            free(out[pass][i]);
    problem_free(&p);
}

static void test_split(void **state)
{
    (void)state;
    split_check(STK__RNN_LSTM, 0);
    split_check(STK__RNN_LSTM, 1);
    split_check(STK__RNN_GRU, 1);
}

static void test_errors(void **state)
{
    (void)state;
    int64_t len[2] = {3, 2};
    problem_t p;
    problem_make(&p, STK__RNN_GRU, 1, 0, 0.0f, 2, 3, 2, 2, len, 9);
    rnn_env_t e;
    env_open(&e, &p.d);
    const stk__backend_iface_t *I = e.be.iface;
    float y[12], dw[64], dx[12];
    assert_true(p.np <= 64);
    stk__rnn_args_t a = {.n = 2, .t = 3, .lengths = len, .w = p.w, .x = p.x, .y = y, .dy = y, .dw = dw, .dx = dx};
    /* backward first */
    assert_int_equal(I->rnn_backward(e.be.ctx, e.op, &a), STK_ESTATE);
    assert_non_null(strstr(stk_error_message(), "without a forward"));
    /* a length past t, a negative one */
    len[1] = 4;
    assert_int_equal(I->rnn_forward(e.be.ctx, e.op, 1, &a), -EINVAL);
    assert_non_null(strstr(stk_error_message(), "length 4 of sequence 1"));
    len[1] = -1;
    assert_int_equal(I->rnn_forward(e.be.ctx, e.op, 1, &a), -EINVAL);
    len[1] = 2;
    /* larger than the plan */
    a.n = 3;
    assert_int_equal(I->rnn_forward(e.be.ctx, e.op, 1, &a), -EINVAL);
    assert_non_null(strstr(stk_error_message(), "exceeds the plan"));
    a.n = 2;
    /* a failed forward leaves nothing to go back through */
    assert_int_equal(I->rnn_backward(e.be.ctx, e.op, &a), STK_ESTATE);
    /* backward after an eval forward (no dropout), and of another shape */
    run_fwd(&e, 0, &a);
    a.t = 2;
    assert_int_equal(I->rnn_backward(e.be.ctx, e.op, &a), -EINVAL);
    a.t = 3;
    run_bwd(&e, &a);
    env_close(&e);
    /* bad plans */
    stk__backend_t be;
    assert_int_equal(stk__backend_open(&be, STK_DEVICE_CPU), 0);
    stk__rnn_op_t *op = NULL;
    stk__rnn_desc_t bad[] = {
        {.cell = 3, .batch = 1, .steps = 1, .input = 1, .hidden = 1, .layers = 1},
        {.cell = STK__RNN_LSTM, .batch = 0, .steps = 1, .input = 1, .hidden = 1, .layers = 1},
        {.cell = STK__RNN_LSTM, .batch = 1, .steps = 1, .input = 1, .hidden = 1, .layers = 0},
        {.cell = STK__RNN_LSTM, .batch = 1, .steps = 1, .input = 1, .hidden = 1, .layers = 1, .dropout = 1.0f},
        {.cell = STK__RNN_LSTM, .batch = 1, .steps = 1, .input = 1, .hidden = 1, .layers = 1, .bidirectional = 2},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(be.iface->rnn_create(be.ctx, &bad[i], &op), -EINVAL);
        assert_null(op);
        assert_non_null(strstr(stk_error_message(), "bad plan"));
    }
    stk__backend_close(&be);
    problem_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pytorch_fixtures), cmocka_unit_test(test_fd_lstm),
        cmocka_unit_test(test_fd_gru),           cmocka_unit_test(test_ragged_lstm),
        cmocka_unit_test(test_ragged_gru),       cmocka_unit_test(test_shape_cache),
        cmocka_unit_test(test_split),            cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
