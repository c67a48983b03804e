/* SPDX-License-Identifier: MIT */
/* The model summary (a torchinfo-like table: output shape, parameters and
 * receptive field per layer, then totals) and the per-layer timing table.
 * Both write into a caller's buffer with snprintf semantics. */
#include "layer.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

typedef struct sbuf {
    char *buf;
    size_t cap, len;
} sbuf_t;

static void put(sbuf_t *s, const char *fmt, ...) STK_PRINTF(2, 3);

static void put(sbuf_t *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = vsnprintf(s->buf && s->len < s->cap ? s->buf + s->len : NULL, s->len < s->cap ? s->cap - s->len : 0,
                      fmt, ap);
    va_end(ap);
    if (r > 0)
        s->len += (size_t)r;
}

/* 1234567 -> "1,234,567" */
static const char *commas(uint64_t v, char *buf)
{
    char tmp[32];
    int n = snprintf(tmp, sizeof(tmp), "%llu", (unsigned long long)v);
    int o = 0;
    for (int i = 0; i < n; i++) {
        if (i && (n - i) % 3 == 0)
            buf[o++] = ',';
        buf[o++] = tmp[i];
    }
    buf[o] = 0;
    return buf;
}

static size_t layer_params(const stk_model_t *m, const stk__layer_t *l)
{
    size_t n = 0;
    for (int t = 0; t < l->nparam; t++)
        n += m->pinfo[l->param0 + t].info.count;
    return n;
}

/* The eval-mode fusions (layers/conv.c): which chains ran fused in the
 * last forward, which may fuse, and which the backend could not fuse. */
static void fusion_lines(const stk_model_t *m, sbuf_t *s)
{
    for (int i = 0; i < m->nl; i++) {
        const stk__layer_t *l = &m->layers[i];
        if (!l->fuse_bn)
            continue;
        int b = l->fuse_bn;
        put(s, "%s+%s", l->name, m->layers[b].name);
        for (int j = b + 1; j < m->nl; j++)
            if (m->layers[j].fused && m->layers[j].in[0] == b)
                put(s, "+%s", m->layers[j].name);
        if (!m->fusion)
            put(s, " not fused (fusion off)\n");
        else if (l->fuse_why)
            put(s, " not fused (eval): %s\n", l->fuse_why);
        else if (l->fuse_ran)
            put(s, " fused (eval)\n");
        else
            put(s, " fuses in eval\n");
    }
}

#define RULE "==========================================================================================\n"

size_t stk_model_summary(const stk_model_t *m, char *buf, size_t cap)
{
    sbuf_t s = {buf, cap, 0};
    if (buf && cap)
        buf[0] = 0;
    char num[32], shape[64], name[64];
    put(&s, RULE);
    put(&s, "%-32s %-22s %12s %18s\n", "Layer (type)", "Output Shape", "Param #", "Receptive field");
    put(&s, RULE);
    size_t act = 0;
    for (int i = 0; i < m->nl; i++) {
        const stk__layer_t *l = &m->layers[i];
        snprintf(name, sizeof(name), "%s (%s)", l->name, stk_layer_kind_name(l->d.kind));
        if (l->cls->is_loss)
            snprintf(shape, sizeof(shape), "[]");
        else if (l->flat)
            snprintf(shape, sizeof(shape), "[%lld, %lld]", (long long)m->batch, (long long)l->c);
        else
            snprintf(shape, sizeof(shape), "[%lld, %lld, %lld, %lld]", (long long)m->batch, (long long)l->c,
                     (long long)l->h, (long long)l->w);
        size_t np = layer_params(m, l);
        char rf[32];
        if (!l->flat)
            snprintf(rf, sizeof(rf), "%lldx%lld", (long long)l->rf, (long long)l->rf);
        else
            snprintf(rf, sizeof(rf), "--");
        put(&s, "%-32s %-22s %12s %18s\n", name, shape, np ? commas(np, num) : "--", rf);
        if (!l->alias && l->cls->n_inputs)
            act += (size_t)(m->batch * l->c * l->h * l->w);
    }
    put(&s, RULE);
    put(&s, "Total params: %s\n", commas(m->np, num));
    put(&s, "Trainable params: %s\n", commas(m->np, num));
    put(&s, "Buffers (non-trainable): %s\n", commas(m->nb, num));
    put(&s, RULE);
    size_t before = s.len;
    fusion_lines(m, &s);
    if (s.len != before)
        put(&s, RULE);
    const stk__layer_t *in = &m->layers[0];
    put(&s, "Input size (MB): %.2f\n", (double)(m->batch * in->c * in->h * in->w) * 4.0 / 1e6);
    put(&s, "Forward/backward pass size (MB): %.2f\n", (double)act * 8.0 / 1e6);
    put(&s, "Params size (MB): %.2f\n", (double)(m->np + m->nb) * 4.0 / 1e6);
    put(&s, RULE);
    return s.len;
}

int stk_model_summary_print(const stk_model_t *m, FILE *f)
{
    size_t n = stk_model_summary(m, NULL, 0);
    char *buf = malloc(n + 1);
    if (!buf)
        return stk__error(-ENOMEM, "summary: out of memory");
    stk_model_summary(m, buf, n + 1);
    int rc = fwrite(buf, 1, n, f) == n ? 0 : stk__error(-EIO, "summary: write failed");
    free(buf);
    return rc;
}

size_t stk_model_stats_format(const stk_model_t *m, char *buf, size_t cap)
{
    sbuf_t s = {buf, cap, 0};
    if (buf && cap)
        buf[0] = 0;
    stk_profile_info_t pi;
    int settled = stk_model_profile_info(m, &pi);
    double total = 0.0;
    for (int i = 0; i < m->nl; i++)
        total += m->layers[i].fsec + m->layers[i].bsec;
    char name[64];
    put(&s, "per-layer %s%s\n", stk_profile_clock_name(pi.clock),
        pi.clock == STK_PROFILE_DEVICE ? " (events on the model's stream)" : "");
    if (settled < 0)
        put(&s, "(device times incomplete: %s)\n", stk_error_message());
    put(&s, "%-32s %10s %12s %12s %8s\n", "Layer (type)", "calls", "fwd ms/call", "bwd ms/call", "share");
    for (int i = 0; i < m->nl; i++) {
        const stk__layer_t *l = &m->layers[i];
        snprintf(name, sizeof(name), "%s (%s)", l->name, stk_layer_kind_name(l->d.kind));
        double f = l->fcalls ? 1e3 * l->fsec / (double)l->fcalls : 0.0;
        double b = l->bcalls ? 1e3 * l->bsec / (double)l->bcalls : 0.0;
        double share = total > 0.0 ? 100.0 * (l->fsec + l->bsec) / total : 0.0;
        put(&s, "%-32s %10llu %12.3f %12.3f %7.1f%%\n", name, (unsigned long long)l->fcalls, f, b, share);
    }
    /* A fused chain's time is its convolution's. */
    fusion_lines(m, &s);
    put(&s, "total: %.3f s of layers; %.3f s from each pass's first layer to its last (%llu passes)\n", total,
        pi.span_s, (unsigned long long)pi.passes);
    return s.len;
}
