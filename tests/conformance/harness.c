/* SPDX-License-Identifier: MIT */
/* The conformance test's harness (see harness.h): fixtures, device
 * buffers through the backend's own slots, outputs and comparisons. */
#include "harness.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int g_failures;

void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("FAIL ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    g_failures++;
}

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1))) {
            if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
                free(buf);
                buf = NULL;
            } else {
                buf[n] = 0;
                *len = (size_t)n;
            }
        }
    }
    fclose(f);
    return buf;
}

int fixture_load(fixture_t *fx, const char *dir, const char *file)
{
    char path[1024];
    memset(fx, 0, sizeof(*fx));
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    snprintf(fx->name, sizeof(fx->name), "%.*s", (int)(strlen(file) - strlen(".safetensors")), file);
    size_t len = 0;
    if (!(fx->buf = read_all(path, &len))) {
        fail("%s: cannot read", path);
        return -1;
    }
    if (stk__safetensors_parse(fx->buf, len, &fx->f) < 0) {
        fail("%s: %s", path, stk_error_message());
        free(fx->buf);
        fx->buf = NULL;
        return -1;
    }
    const char *op = stk__safetensors_meta(&fx->f, "op"), *params = stk__safetensors_meta(&fx->f, "params");
    if (!op || !params) {
        fail("%s: no op/params metadata", path);
        fixture_free(fx);
        return -1;
    }
    snprintf(fx->op, sizeof(fx->op), "%s", op);
    snprintf(fx->params, sizeof(fx->params), "%s", params);
    return 0;
}

void fixture_free(fixture_t *fx)
{
    if (fx->buf) {
        stk__safetensors_free(&fx->f);
        free(fx->buf);
    }
    fx->buf = NULL;
}

int fx_has(const fixture_t *fx, const char *key)
{
    size_t kl = strlen(key);
    for (const char *p = fx->params; p && *p;) {
        if (strncmp(p, key, kl) == 0 && p[kl] == '=')
            return 1;
        p = strchr(p, ',');
        p = p ? p + 1 : NULL;
    }
    return 0;
}

double fx_param(const fixture_t *fx, const char *key)
{
    size_t kl = strlen(key);
    for (const char *p = fx->params; p && *p;) {
        if (strncmp(p, key, kl) == 0 && p[kl] == '=')
            return strtod(p + kl + 1, NULL);
        p = strchr(p, ',');
        p = p ? p + 1 : NULL;
    }
    fail("%s: parameter '%s' missing from '%s'", fx->name, key, fx->params);
    return 0.0;
}

int64_t fx_int(const fixture_t *fx, const char *key)
{
    size_t kl = strlen(key);
    for (const char *p = fx->params; p && *p;) {
        if (strncmp(p, key, kl) == 0 && p[kl] == '=')
            return strtoll(p + kl + 1, NULL, 0);
        p = strchr(p, ',');
        p = p ? p + 1 : NULL;
    }
    fail("%s: parameter '%s' missing from '%s'", fx->name, key, fx->params);
    return 0;
}

void *fx_tensor(const fixture_t *fx, const char *name, size_t *n)
{
    const stk__st_entry_t *e = stk__safetensors_find(&fx->f, name);
    if (!e)
        return NULL;
    size_t bytes = (size_t)(e->end - e->begin), elem = strcmp(e->dtype, "I64") == 0 ? 8 : 4;
    /* safetensors does not align its data: copy. */
    size_t cap = (bytes + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, cap ? cap : 64);
    if (p)
        memcpy(p, fx->f.data + e->begin, bytes);
    *n = bytes / elem;
    return p;
}

void run_init(run_t *r, stk__backend_t *be, const char *be_name)
{
    memset(r, 0, sizeof(*r));
    r->be = be;
    r->be_name = be_name;
}

void run_free(run_t *r)
{
    for (int i = 0; i < r->nalloc; i++)
        r->be->iface->free(r->be->ctx, r->alloc[i]);
    for (int i = 0; i < r->nout; i++)
        free(r->out[i].v);
    r->nalloc = r->nout = 0;
}

int run_check(run_t *r, int rc, const char *what)
{
    if (rc >= 0)
        return 0;
    if (!r->failed)
        fail("%s: %s: %s (%s)", r->be_name, what, stk_err_name(rc), stk_error_message());
    r->failed = 1;
    return 1;
}

void *run_alloc(run_t *r, size_t bytes)
{
    if (r->nalloc == RUN_MAX_ALLOC) {
        fail("%s: more than %d buffers in one run", r->be_name, RUN_MAX_ALLOC);
        r->failed = 1;
        return NULL;
    }
    void *p = r->be->iface->alloc(r->be->ctx, bytes);
    if (!p) {
        run_check(r, -ENOMEM, "alloc");
        return NULL;
    }
    r->alloc[r->nalloc++] = p;
    return p;
}

void *run_upload(run_t *r, const void *host, size_t bytes)
{
    void *d = run_alloc(r, bytes);
    if (d && run_check(r, r->be->iface->upload(r->be->ctx, d, host, bytes), "upload"))
        return NULL;
    return d;
}

void *run_input(run_t *r, const fixture_t *fx, const char *name, size_t *n)
{
    size_t cnt = 0;
    void *h = fx_tensor(fx, name, &cnt);
    if (!h) {
        fail("%s: no tensor '%s'", fx->name, name);
        r->failed = 1;
        return NULL;
    }
    const stk__st_entry_t *e = stk__safetensors_find(&fx->f, name);
    void *d = run_upload(r, h, (size_t)(e->end - e->begin));
    free(h);
    if (n)
        *n = cnt;
    return d;
}

void run_output(run_t *r, const char *name, const void *dev, size_t n)
{
    if (r->failed || !dev)
        return;
    if (r->nout == RUN_MAX_OUT) {
        fail("%s: more than %d outputs", r->be_name, RUN_MAX_OUT);
        r->failed = 1;
        return;
    }
    float *h = malloc((n ? n : 1) * sizeof(float));
    if (!h || run_check(r, r->be->iface->download(r->be->ctx, h, dev, n * sizeof(float)), "download")) {
        free(h);
        return;
    }
    run_out_t *o = &r->out[r->nout++];
    snprintf(o->name, sizeof(o->name), "%s", name);
    o->v = h;
    o->n = n;
}

void run_output_host(run_t *r, const char *name, const float *host, size_t n)
{
    if (r->failed)
        return;
    if (r->nout == RUN_MAX_OUT) {
        fail("%s: more than %d outputs", r->be_name, RUN_MAX_OUT);
        r->failed = 1;
        return;
    }
    run_out_t *o = &r->out[r->nout++];
    snprintf(o->name, sizeof(o->name), "%s", name);
    o->v = malloc((n ? n : 1) * sizeof(float));
    if (o->v)
        memcpy(o->v, host, n * sizeof(float));
    o->n = o->v ? n : 0;
}

const run_out_t *run_find(const run_t *r, const char *name)
{
    for (int i = 0; i < r->nout; i++)
        if (strcmp(r->out[i].name, name) == 0)
            return &r->out[i];
    return NULL;
}

/* Worst violation; prints the line and returns 1 when out of tolerance. */
static int compare(const char *label, const char *name, const float *a, const float *b, size_t n, tol_t tol)
{
    double worst = -INFINITY, maxabs = 0.0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        double over = d - (tol.atol + tol.rtol * fabs((double)b[i]));
        if (isnan(a[i]) != isnan(b[i]))
            over = INFINITY;
        if (d > maxabs)
            maxabs = d;
        if (over > worst) {
            worst = over;
            at = i;
        }
    }
    int bad = n && worst > 0.0;
    printf("  %-24s %-26s n=%-6zu max|diff| %.3g%s\n", label, name, n, maxabs, bad ? "  <-- out of tolerance" : "");
    if (bad)
        fail("%s: %s: element %zu: %.9g vs %.9g (rtol %g, atol %g)", label, name, at, (double)a[at], (double)b[at],
             tol.rtol, tol.atol);
    return bad;
}

int compare_fixture(const run_t *r, const fixture_t *fx, tol_t tol, const char *label)
{
    int bad = 0;
    if (r->failed)
        return 1;
    for (int i = 0; i < r->nout; i++) {
        /* "y@inplace" is another way to compute the fixture's "y". */
        char base[32];
        snprintf(base, sizeof(base), "%s", r->out[i].name);
        char *at = strchr(base, '@');
        if (at)
            *at = '\0';
        size_t n = 0;
        float *want = fx_tensor(fx, base, &n);
        if (!want) {
            fail("%s: fixture %s has no '%s'", label, fx->name, base);
            bad++;
            continue;
        }
        if (n != r->out[i].n) {
            fail("%s: %s: %zu elements, fixture has %zu", label, r->out[i].name, r->out[i].n, n);
            bad++;
        } else {
            bad += compare(label, r->out[i].name, r->out[i].v, want, n, tol);
        }
        free(want);
    }
    return bad;
}

int compare_runs(const run_t *r, const run_t *ref, tol_t tol, const char *label)
{
    int bad = 0;
    if (r->failed || ref->failed)
        return 1;
    if (r->nout != ref->nout) {
        fail("%s: %d outputs, the reference has %d", label, r->nout, ref->nout);
        return 1;
    }
    for (int i = 0; i < r->nout; i++) {
        const run_out_t *o = run_find(ref, r->out[i].name);
        if (!o || o->n != r->out[i].n) {
            fail("%s: output %s does not match the reference's", label, r->out[i].name);
            bad++;
            continue;
        }
        bad += compare(label, r->out[i].name, r->out[i].v, o->v, o->n, tol);
    }
    return bad;
}
