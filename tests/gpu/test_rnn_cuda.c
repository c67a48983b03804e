/* SPDX-License-Identifier: MIT */
/* The CUDA backend's sequence slots: every PyTorch LSTM/GRU fixture of
 * tests/data/rnn (forward and backward, ragged lengths, initial states)
 * through cuDNN's RNN API, and the row gather, scatter-add and sequence
 * heads against the CPU backend on the same inputs. Exits 77 when no GPU
 * is usable (STK_REQUIRE_GPU=1 makes that a failure). Plain main: prints
 * one line per check, exits 1 on any failure. */
#include "engine/backend.h"
#include "engine/model.h"
#include "../unit/test_util.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;
static stk__backend_t gpu, cpu;

static void compare(const char *what, const float *a, const float *b, size_t n, double atol, double rtol)
{
    double worst = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]), e = d == 0 ? 0 : d / (atol + rtol * fabs((double)b[i]));
        if (!(e <= worst)) {
            worst = e;
            at = i;
        }
    }
    if (!(worst <= 1.0)) {
        printf("FAIL %s: element %zu is %.8g, expected %.8g\n", what, at, (double)a[at], (double)b[at]);
        failures++;
    }
}

/* Device copy of host memory (NULL stays NULL). */
static void *up(const void *host, size_t bytes)
{
    if (!host)
        return NULL;
    void *d = gpu.iface->alloc(gpu.ctx, bytes ? bytes : 4);
    if (!d || gpu.iface->upload(gpu.ctx, d, host, bytes) < 0) {
        printf("FAIL upload of %zu bytes: %s\n", bytes, stk_error_message());
        exit(1);
    }
    return d;
}

/* Zeroed device memory. */
static void *dev0(size_t bytes)
{
    void *d = gpu.iface->alloc(gpu.ctx, bytes ? bytes : 4);
    if (!d) {
        printf("FAIL alloc of %zu bytes\n", bytes);
        exit(1);
    }
    return d;
}

static float *down(const void *dev, size_t n)
{
    float *h = calloc(n ? n : 1, sizeof(float));
    if (gpu.iface->download(gpu.ctx, h, dev, n * sizeof(float)) < 0) {
        printf("FAIL download: %s\n", stk_error_message());
        exit(1);
    }
    return h;
}

static const void *tensor(const stk__st_file_t *f, const char *name, size_t *bytes)
{
    const stk__st_entry_t *e = stk__safetensors_find(f, name);
    if (!e)
        return NULL;
    if (bytes)
        *bytes = (size_t)(e->end - e->begin);
    return f->data + e->begin;
}

static long meta(const stk__st_file_t *f, const char *key)
{
    const char *v = stk__safetensors_meta(f, key);
    return v ? strtol(v, NULL, 10) : 0;
}

static void rnn_case(const char *dir, const char *name)
{
    char path[1024];
    size_t len;
    snprintf(path, sizeof(path), "%s/rnn/%s.safetensors", dir, name);
    char *buf = read_file(path, &len);
    stk__st_file_t f;
    if (!buf || stk__safetensors_parse(buf, len, &f) < 0) {
        printf("FAIL %s: cannot read\n", path);
        failures++;
        free(buf);
        return;
    }
    const char *cell = stk__safetensors_meta(&f, "cell");
    stk__rnn_desc_t d = {.cell = cell && !strcmp(cell, "lstm") ? STK__RNN_LSTM : STK__RNN_GRU,
                         .batch = meta(&f, "batch"),
                         .steps = meta(&f, "steps"),
                         .input = meta(&f, "input"),
                         .hidden = meta(&f, "hidden"),
                         .layers = (int)meta(&f, "layers"),
                         .bidirectional = (int)meta(&f, "bidirectional")};
    int lstm = d.cell == STK__RNN_LSTM, nd = d.bidirectional ? 2 : 1;
    size_t np = stk__rnn_param_count(&d), ns = (size_t)(d.layers * nd * d.batch * d.hidden);
    size_t ny = (size_t)(d.batch * d.steps * nd * d.hidden), nx = (size_t)(d.batch * d.steps * d.input);
    float *w = calloc(np, sizeof(float)), *dw_ref = calloc(np, sizeof(float));
    static const char *names[4] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh"};
    for (int l = 0; l < d.layers; l++)
        for (int di = 0; di < nd; di++)
            for (int k = 0; k < 4; k++) {
                char pn[96], gn[96];
                size_t cnt = 0, off = stk__rnn_param_offset(&d, l, di, k, &cnt);
                snprintf(pn, sizeof(pn), "param.%s_l%d%s", names[k], l, di ? "_reverse" : "");
                snprintf(gn, sizeof(gn), "grad.%s_l%d%s", names[k], l, di ? "_reverse" : "");
                memcpy(w + off, tensor(&f, pn, NULL), cnt * sizeof(float));
                memcpy(dw_ref + off, tensor(&f, gn, NULL), cnt * sizeof(float));
            }
    int64_t lengths[64];
    memcpy(lengths, tensor(&f, "lengths", NULL), (size_t)d.batch * sizeof(int64_t));
    float *dw_d = up(w, np * sizeof(float)), *w_d = up(w, np * sizeof(float));
    stk__rnn_args_t a = {
        .n = d.batch,
        .t = d.steps,
        .lengths = lengths,
        .w = w_d,
        .x = up(tensor(&f, "x", NULL), nx * 4),
        .h0 = up(tensor(&f, "h0", NULL), ns * 4),
        .c0 = up(tensor(&f, "c0", NULL), ns * 4),
        .y = dev0(ny * 4),
        .hn = dev0(ns * 4),
        .cn = lstm ? dev0(ns * 4) : NULL,
        .dy = up(tensor(&f, "dy", NULL), ny * 4),
        .dhn = up(tensor(&f, "dhn", NULL), ns * 4),
        .dcn = up(tensor(&f, "dcn", NULL), ns * 4),
        .dx = dev0(nx * 4),
        .dh0 = dev0(ns * 4),
        .dc0 = lstm ? dev0(ns * 4) : NULL,
        .dw = dw_d,
    };
    stk__rnn_op_t *op = NULL;
    int rc = gpu.iface->rnn_create(gpu.ctx, &d, &op);
    if (rc == 0)
        rc = gpu.iface->rnn_forward(gpu.ctx, op, 1, &a);
    if (rc == 0)
        rc = gpu.iface->rnn_backward(gpu.ctx, op, &a);
    if (rc < 0) {
        printf("FAIL %s: %s\n", name, stk_error_message());
        failures++;
    } else {
        struct { const char *key; const void *dev; size_t n; double atol, rtol; } outs[] = {
            {"y", a.y, ny, 2e-6, 1e-5},     {"hn", a.hn, ns, 2e-6, 1e-5},   {"cn", a.cn, ns, 2e-6, 1e-5},
            {"dx", a.dx, nx, 1e-5, 1e-4},   {"dh0", a.dh0, ns, 1e-5, 1e-4}, {"dc0", a.dc0, ns, 1e-5, 1e-4},
        };
        for (size_t k = 0; k < sizeof(outs) / sizeof(outs[0]); k++) {
            const void *ref = tensor(&f, outs[k].key, NULL);
            if (!outs[k].dev || !ref)
                continue;
            float *got = down(outs[k].dev, outs[k].n);
            char what[160];
            snprintf(what, sizeof(what), "%s %s", name, outs[k].key);
            compare(what, got, ref, outs[k].n, outs[k].atol, outs[k].rtol);
            free(got);
        }
        float *dw = down(dw_d, np);
        char what[160];
        snprintf(what, sizeof(what), "%s parameter gradients", name);
        compare(what, dw, dw_ref, np, 1e-5, 1e-4);
        free(dw);
    }
    gpu.iface->rnn_destroy(gpu.ctx, op);
    const void *ptrs[] = {a.w, a.x, a.h0, a.c0, a.y, a.hn, a.cn, a.dy, a.dhn, a.dcn, a.dx, a.dh0, a.dc0, a.dw};
    for (size_t k = 0; k < sizeof(ptrs) / sizeof(ptrs[0]); k++)
        gpu.iface->free(gpu.ctx, (void *)ptrs[k]);
    free(w);
    free(dw_ref);
    stk__safetensors_free(&f);
    free(buf);
}

/* Gather, scatter-add (repeated indices) and both heads on the GPU and
 * the CPU backend, same inputs: equal within a float rounding. */
static void helpers(void)
{
    enum { N = 37, T = 9, F = 13, ROWS = 11 };
    float x[N * T * F], tab[ROWS * F], dy[N * F];
    int64_t idx[N * T], lengths[N];
    stk_rng_t r;
    stk_rng_init(&r, 4, 0);
    for (int i = 0; i < N * T * F; i++)
        x[i] = stk_rng_uniform(&r) - 0.5f;
    for (int i = 0; i < ROWS * F; i++)
        tab[i] = stk_rng_uniform(&r);
    for (int i = 0; i < N * F; i++)
        dy[i] = stk_rng_uniform(&r) - 0.5f;
    for (int i = 0; i < N * T; i++)
        idx[i] = (int64_t)stk_rng_below(&r, ROWS);
    for (int i = 0; i < N; i++)
        lengths[i] = 1 + (int64_t)stk_rng_below(&r, T);
    float cg[N * T * F], cs[ROWS * F] = {0}, cp[2][N * F], cb[2][N * T * F];
    if (cpu.iface->gather_rows(cpu.ctx, N * T, F, ROWS, idx, tab, cg) < 0)
        failures++;
    cpu.iface->scatter_add_rows(cpu.ctx, N * T, F, idx, 3, x, cs);
    float *x_d = up(x, sizeof(x)), *tab_d = up(tab, sizeof(tab)), *dy_d = up(dy, sizeof(dy));
    int64_t *idx_d = up(idx, sizeof(idx)), *len_d = up(lengths, sizeof(lengths));
    float *g_d = gpu.iface->alloc(gpu.ctx, sizeof(cg)), *s_d = gpu.iface->alloc(gpu.ctx, sizeof(cs));
    float *p_d = gpu.iface->alloc(gpu.ctx, sizeof(cp[0])), *b_d = gpu.iface->alloc(gpu.ctx, sizeof(cb[0]));
    if (gpu.iface->gather_rows(gpu.ctx, N * T, F, ROWS, idx_d, tab_d, g_d) < 0) {
        printf("FAIL gather_rows: %s\n", stk_error_message());
        failures++;
    }
    gpu.iface->scatter_add_rows(gpu.ctx, N * T, F, idx_d, 3, x_d, s_d);
    float *got = down(g_d, N * T * F);
    compare("gather_rows", got, cg, N * T * F, 0, 0);
    free(got);
    got = down(s_d, ROWS * F);
    compare("scatter_add_rows", got, cs, ROWS * F, 1e-6, 1e-6);
    free(got);
    for (int mean = 0; mean < 2; mean++) {
        cpu.iface->seq_pool_forward(cpu.ctx, mean, N, T, F, lengths, x, cp[mean]);
        cpu.iface->seq_pool_backward(cpu.ctx, mean, N, T, F, lengths, dy, cb[mean]);
        gpu.iface->seq_pool_forward(gpu.ctx, mean, N, T, F, len_d, x_d, p_d);
        gpu.iface->seq_pool_backward(gpu.ctx, mean, N, T, F, len_d, dy_d, b_d);
        got = down(p_d, N * F);
        compare(mean ? "seq_mean forward" : "seq_last forward", got, cp[mean], N * F, 1e-6, 1e-6);
        free(got);
        got = down(b_d, N * T * F);
        compare(mean ? "seq_mean backward" : "seq_last backward", got, cb[mean], N * T * F, 1e-7, 1e-6);
        free(got);
    }
    /* a bad index is -EINVAL naming the row: from the call or, as
     * backend.h allows a device, from the next synchronous slot */
    idx[5] = ROWS;
    gpu.iface->upload(gpu.ctx, idx_d, idx, sizeof(idx));
    int grc = gpu.iface->gather_rows(gpu.ctx, N * T, F, ROWS, idx_d, tab_d, g_d);
    if (grc == 0)
        grc = gpu.iface->synchronize(gpu.ctx);
    if (grc != -EINVAL || !strstr(stk_error_message(), "row 5")) {
        printf("FAIL gather_rows accepted a bad index (%s)\n", stk_error_message());
        failures++;
    }
    void *ptrs[] = {x_d, tab_d, dy_d, idx_d, len_d, g_d, s_d, p_d, b_d};
    for (size_t k = 0; k < sizeof(ptrs) / sizeof(ptrs[0]); k++)
        gpu.iface->free(gpu.ctx, ptrs[k]);
}

int main(void)
{
    const char *req = getenv("STK_REQUIRE_GPU");
    if (stk__backend_open(&gpu, STK_DEVICE_CUDA) < 0) {
        if (req && !strcmp(req, "1")) {
            printf("FAIL STK_REQUIRE_GPU=1 and the CUDA backend does not open: %s\n", stk_error_message());
            return 1;
        }
        fprintf(stderr, "SKIP no usable GPU (%s); set STK_REQUIRE_GPU=1 to fail\n", stk_error_message());
        return 77;
    }
    if (stk__backend_open(&cpu, STK_DEVICE_CPU) < 0) {
        printf("FAIL CPU backend: %s\n", stk_error_message());
        return 1;
    }
    const char *dir = getenv("STK_TEST_DATA");
    dir = dir ? dir : "tests/data";
    char path[1024];
    size_t len;
    snprintf(path, sizeof(path), "%s/rnn/cases.txt", dir);
    char *list = read_file(path, &len);
    int cases = 0;
    for (char *line = list ? strtok(list, "\n") : NULL; line; line = strtok(NULL, "\n"))
        if (line[0] && line[0] != '#') {
            rnn_case(dir, line);
            cases++;
        }
    free(list);
    if (cases != 34) {
        printf("FAIL %d RNN cases, expected 34\n", cases);
        failures++;
    }
    helpers();
    stk__backend_close(&cpu);
    stk__backend_close(&gpu);
    printf("%s: %d RNN fixtures and the sequence helpers, %d failures\n", failures ? "FAIL" : "OK", cases, failures);
    return failures ? 1 : 0;
}
