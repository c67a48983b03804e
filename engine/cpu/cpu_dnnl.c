/* SPDX-License-Identifier: MIT */
/* CPU backend, the oneDNN half: convolution, batch normalization, pooling
 * and inner product. Each op is planned once per shape: its primitives and
 * their memory objects are created here and only the data pointers change
 * per call. oneDNN status codes become STK_EBACKEND with oneDNN's name for
 * the status and the call that failed. */
#include "cpu.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>

#define DNNL_TRY(call)                                                                                 \
    do {                                                                                               \
        dnnl_status_t st_ = (call);                                                                    \
        if (st_ != dnnl_success) {                                                                     \
            rc = stk__error(STK_EBACKEND, "oneDNN: %s: %s", #call, dnnl_status2str(st_));             \
            goto fail;                                                                                 \
        }                                                                                              \
    } while (0)

static int md_plain(dnnl_memory_desc_t *md, int ndims, const int64_t *dims, dnnl_format_tag_t tag)
{
    dnnl_dims_t d;
    for (int i = 0; i < ndims; i++)
        d[i] = dims[i];
    dnnl_status_t st = dnnl_memory_desc_init_by_tag(md, ndims, d, dnnl_f32, tag);
    if (st != dnnl_success)
        return stk__error(STK_EBACKEND, "oneDNN: memory desc: %s", dnnl_status2str(st));
    return 0;
}

/* Makes the primitive of pd and a memory object (no data yet) for each
 * (arg, md) pair; workspace memories get the op's workspace pointer. */
static int prim_make(cpu_ctx_t *c, prim_t *pr, dnnl_primitive_desc_t pd, int nargs, const int *argk,
                     const dnnl_memory_desc_t *const *mds)
{
    int rc = 0;
    DNNL_TRY(dnnl_primitive_create(&pr->p, pd));
    pr->nargs = nargs;
    for (int i = 0; i < nargs; i++) {
        pr->args[i].arg = argk[i];
        DNNL_TRY(dnnl_memory_create(&pr->args[i].memory, mds[i], c->eng, DNNL_MEMORY_NONE));
    }
    return 0;
fail:
    return rc;
}

static void prim_free(prim_t *pr)
{
    for (int i = 0; i < pr->nargs; i++)
        if (pr->args[i].memory)
            dnnl_memory_destroy(pr->args[i].memory);
    if (pr->p)
        dnnl_primitive_destroy(pr->p);
    memset(pr, 0, sizeof(*pr));
}

/* Binds ptrs (in argument order) and runs the primitive to completion. */
static int prim_run(cpu_ctx_t *c, prim_t *pr, void *const *ptrs)
{
    int rc = 0;
    for (int i = 0; i < pr->nargs; i++)
        DNNL_TRY(dnnl_memory_set_data_handle(pr->args[i].memory, ptrs[i]));
    DNNL_TRY(dnnl_primitive_execute(pr->p, c->stream, pr->nargs, pr->args));
    DNNL_TRY(dnnl_stream_wait(c->stream));
    return 0;
fail:
    return rc;
}

/* Whether oneDNN picked its reference (scalar) implementation. */
static int is_ref(const_dnnl_primitive_desc_t pd)
{
    const char *impl = NULL;
    if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) != dnnl_success || !impl)
        return 0;
    return strncmp(impl, "ref", 3) == 0;
}

static dnnl_format_tag_t act_tag(int fmt)
{
    return fmt == STK__LAYOUT_BLOCKED8 ? dnnl_nChw8c : dnnl_nchw;
}

/* A reorder primitive from one layout to another, and (when buf is not
 * NULL) a buffer for the `to` side. */
static int reorder_make(cpu_ctx_t *c, prim_t *pr, const dnnl_memory_desc_t *from, const dnnl_memory_desc_t *to,
                        void **buf)
{
    int rc = 0;
    dnnl_primitive_desc_t pd = NULL;
    DNNL_TRY(dnnl_reorder_primitive_desc_create(&pd, from, c->eng, to, c->eng, NULL));
    int ak[2] = {DNNL_ARG_FROM, DNNL_ARG_TO};
    const dnnl_memory_desc_t *m[2] = {from, to};
    rc = prim_make(c, pr, pd, 2, ak, m);
    dnnl_primitive_desc_destroy(pd);
    if (rc == 0 && buf) {
        size_t sz = (dnnl_memory_desc_get_size(to) + 63) & ~(size_t)63;
        *buf = aligned_alloc(64, sz ? sz : 64);
        if (!*buf)
            rc = stk__error(-ENOMEM, "oneDNN: out of memory for a reorder buffer");
    }
    return rc;
fail:
    return rc;
}

static int reorder_exec(cpu_ctx_t *c, prim_t *pr, const void *from, void *to)
{
    void *p[2] = {(void *)from, to};
    return prim_run(c, pr, p);
}

void stk__cpu_op_destroy(void *ctx, stk__op_t *op)
{
    (void)ctx;
    if (!op)
        return;
    prim_free(&op->fwd);
    prim_free(&op->fwd_eval);
    prim_free(&op->bwd_data);
    prim_free(&op->bwd_weights);
    prim_free(&op->w_to_fwd);
    prim_free(&op->w_to_bwd);
    prim_free(&op->dw_from);
    prim_free(&op->bw_src_re);
    prim_free(&op->bw_dst_re);
    free(op->bw_src);
    free(op->bw_dst);
    free(op->workspace);
    free(op->w_fwd);
    free(op->w_bwd);
    free(op->dw);
    free(op->r_src);
    free(op->r_dst);
    free(op->r_w);
    free(op->chunks);
    free(op->fs);
    free(op->ft);
    free(op);
}

static stk__op_t *op_new(int kind)
{
    stk__op_t *op = calloc(1, sizeof(*op));
    if (op)
        op->kind = kind;
    return op;
}

/* ------------------------------------------------ half-precision emulation */

/* Under bf16 / fp16 a convolution or inner product computes as a GPU's
 * autocast path does: its inputs (x or dy, and the weights) rounded to the
 * half type, the product accumulated in fp32 (here by oneDNN's fp32
 * kernels), its output (y, dx or dw) rounded to the half type and kept as
 * fp32; the bias added in fp32 after that rounding, and its gradient
 * summed in fp32 from the unrounded dy, as cuDNN followed by the CUDA
 * backend's own bias kernels does. This CPU has no bf16 arithmetic that
 * oneDNN could use, so this is slower than fp32: it is there to check the
 * numerics of a recipe, not to train fast. */

#define PAR_MIN 16384

static int half_buf(float **buf, size_t n)
{
    *buf = aligned_alloc(64, ((n ? n : 1) * sizeof(float) + 63) & ~(size_t)63);
    return *buf ? 0 : stk__error(-ENOMEM, "oneDNN: out of memory for a rounding buffer");
}

/* The rounding buffers of an op computing in half precision: allocated
 * once here, per op and shape, never per call. */
static int half_setup(stk__op_t *op, size_t n_src, size_t n_dst, size_t n_w)
{
    op->n_src = n_src;
    op->n_dst = n_dst;
    op->n_w = n_w;
    int rc;
    if ((rc = half_buf(&op->r_src, n_src)) || (rc = half_buf(&op->r_dst, n_dst)) || (rc = half_buf(&op->r_w, n_w)))
        return rc;
    return 0;
}

static float *elem_at(float *base, const stk__op_t *op, int64_t n, int64_t c, int64_t i)
{
    if (!op->bias_blocked)
        return base + (n * op->bias_c + c) * op->bias_inner + i;
    int64_t cb = (op->bias_c + 7) / 8;
    return base + ((n * cb + c / 8) * op->bias_inner + i) * 8 + c % 8;
}

static void bias_add(const stk__op_t *op, const float *b, float *y)
{
    ptrdiff_t rows = (ptrdiff_t)(op->bias_outer * op->bias_c);
    int64_t inner = op->bias_inner, step = op->bias_blocked ? 8 : 1;
#pragma omp parallel for if (rows * inner > PAR_MIN)
    for (ptrdiff_t r = 0; r < rows; r++) {
        int64_t n = r / op->bias_c, c = r % op->bias_c;
        float *row = elem_at(y, op, n, c, 0), bc = b[c];
        for (int64_t i = 0; i < inner; i++)
            row[i * step] += bc;
    }
}

/* db[c] = the sum of dy over everything but the channel, in double. */
static void bias_grad(const stk__op_t *op, const float *dy, float *db)
{
    ptrdiff_t channels = (ptrdiff_t)op->bias_c;
    int64_t inner = op->bias_inner, step = op->bias_blocked ? 8 : 1;
#pragma omp parallel for if (op->bias_outer * channels * inner > PAR_MIN)
    for (ptrdiff_t c = 0; c < channels; c++) {
        double sum = 0;
        for (int64_t n = 0; n < op->bias_outer; n++) {
            const float *row = elem_at((float *)dy, op, n, c, 0);
            for (int64_t i = 0; i < inner; i++)
                sum += row[i * step];
        }
        db[c] = (float)sum;
    }
}

/* What a primitive reads for the n floats at src: src itself in fp32;
 * under half precision their rounded copy, made in buf (buf may be src). */
static const float *half_in(const stk__op_t *op, size_t n, const float *src, float *buf)
{
    if (!op->half)
        return src;
    stk__cpu_round_half(op->half, n, src, buf);
    return buf;
}

/* Under half precision, the n floats of an output rounded in place. */
static void half_out(const stk__op_t *op, size_t n, float *v)
{
    half_in(op, n, v, v);
}

static int is_half(stk_precision_t p)
{
    return p == STK_PRECISION_BF16 || p == STK_PRECISION_FP16;
}

/* ------------------------------------------------------------ convolution */

/* The memory descriptors of a convolution: activations in their layouts,
 * the user's weights (OIHW, or GOIHW with groups), the weights as `any`
 * (the primitive picks), the bias. */
static int conv_mds(const stk__conv_desc_t *d, dnnl_memory_desc_t *src, dnnl_memory_desc_t *dst,
                    dnnl_memory_desc_t *wei, dnnl_memory_desc_t *wany, dnnl_memory_desc_t *bia)
{
    int64_t sdims[4] = {d->n, d->ic, d->ih, d->iw}, ddims[4] = {d->n, d->oc, d->oh, d->ow}, bd[1] = {d->oc};
    int rc;
    if ((rc = md_plain(src, 4, sdims, act_tag(d->fmt_in))) || (rc = md_plain(dst, 4, ddims, act_tag(d->fmt_out))))
        return rc;
    if (d->groups > 1) {
        int64_t w[5] = {d->groups, d->oc / d->groups, d->ic / d->groups, d->kh, d->kw};
        if ((rc = md_plain(wei, 5, w, dnnl_goihw)) || (rc = md_plain(wany, 5, w, dnnl_format_tag_any)))
            return rc;
    } else {
        int64_t w[4] = {d->oc, d->ic, d->kh, d->kw};
        if ((rc = md_plain(wei, 4, w, dnnl_oihw)) || (rc = md_plain(wany, 4, w, dnnl_format_tag_any)))
            return rc;
    }
    return md_plain(bia, 1, bd, dnnl_x);
}

/* Strides, dilation (oneDNN's: 0 = dense) and padding. PyTorch floors the
 * output size; oneDNN wants the right padding that gives exactly that
 * size. */
static void conv_dims(const stk__conv_desc_t *d, dnnl_dims_t strides, dnnl_dims_t dil, dnnl_dims_t pl,
                      dnnl_dims_t pr)
{
    strides[0] = d->sh;
    strides[1] = d->sw;
    dil[0] = d->dh - 1;
    dil[1] = d->dw - 1;
    pl[0] = d->ph;
    pl[1] = d->pw;
    pr[0] = (d->oh - 1) * d->sh + (d->kh - 1) * d->dh + 1 - d->ih - d->ph;
    pr[1] = (d->ow - 1) * d->sw + (d->kw - 1) * d->dw + 1 - d->iw - d->pw;
}

/* A convolution's forward primitive from pd (the plain op's and the
 * fused one's): the reorder of OIHW weights into the layout pd chose,
 * when it differs, and the primitive with a bias argument when bia is
 * given. */
static int forward_prim(cpu_ctx_t *c, stk__op_t *op, dnnl_primitive_desc_t pd, const dnnl_memory_desc_t *src,
                        const dnnl_memory_desc_t *wei, const dnnl_memory_desc_t *dst, const dnnl_memory_desc_t *bia)
{
    int rc;
    const dnnl_memory_desc_t *wmd = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    if (!dnnl_memory_desc_equal(wmd, wei) && (rc = reorder_make(c, &op->w_to_fwd, wei, wmd, &op->w_fwd)))
        return rc;
    op->n_wfwd = op->w_fwd ? dnnl_memory_desc_get_size(wmd) / sizeof(float) : 0;
    int ak[4] = {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_DST, DNNL_ARG_BIAS};
    const dnnl_memory_desc_t *m[4] = {src, wmd, dst, bia};
    return prim_make(c, &op->fwd, pd, bia ? 4 : 3, ak, m);
}

int stk__cpu_conv_create(void *ctx, const stk__conv_desc_t *d, stk__op_t **out)
{
    cpu_ctx_t *c = ctx;
    int rc = 0;
    dnnl_primitive_desc_t fpd = NULL, pd = NULL;
    stk__op_t *op = op_new(OP_CONV);
    if (!op)
        return -ENOMEM;
    op->has_bias = d->bias;
    op->half = is_half(c->precision) ? c->precision : STK_PRECISION_FP32;
    /* Half precision adds the bias itself, after rounding y. */
    int dnnl_bias = d->bias && !op->half;
    dnnl_memory_desc_t src, dst, wei, bia, wany;
    int64_t sdims[4] = {d->n, d->ic, d->ih, d->iw}, ddims[4] = {d->n, d->oc, d->oh, d->ow};
    if ((rc = conv_mds(d, &src, &dst, &wei, &wany, &bia)))
        goto fail;
    dnnl_dims_t strides, dil, pl, pr;
    conv_dims(d, strides, dil, pl, pr);
    const dnnl_memory_desc_t *bptr = dnnl_bias ? &bia : NULL;
    if (op->half) {
        op->bias_outer = d->n;
        op->bias_c = d->oc;
        op->bias_inner = d->oh * d->ow;
        op->bias_blocked = d->fmt_out == STK__LAYOUT_BLOCKED8;
        if ((rc = half_setup(op, dnnl_memory_desc_get_size(&src) / sizeof(float),
                             dnnl_memory_desc_get_size(&dst) / sizeof(float),
                             dnnl_memory_desc_get_size(&wei) / sizeof(float))))
            goto fail;
    }

    dnnl_convolution_desc_t cd;
    DNNL_TRY(dnnl_dilated_convolution_forward_desc_init(&cd, dnnl_forward_training, dnnl_convolution_direct, &src,
                                                        &wany, bptr, &dst, strides, dil, pl, pr));
    DNNL_TRY(dnnl_primitive_desc_create(&fpd, &cd, NULL, c->eng, NULL));
    if ((rc = forward_prim(c, op, fpd, &src, &wei, &dst, bptr)))
        goto fail;
    DNNL_TRY(dnnl_dilated_convolution_backward_data_desc_init(&cd, dnnl_convolution_direct, &src, &wany, &dst,
                                                              strides, dil, pl, pr));
    DNNL_TRY(dnnl_primitive_desc_create(&pd, &cd, NULL, c->eng, fpd));
    {
        const dnnl_memory_desc_t *wmd = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
        if (!dnnl_memory_desc_equal(wmd, &wei) && (rc = reorder_make(c, &op->w_to_bwd, &wei, wmd, &op->w_bwd)))
            goto fail;
        op->n_wbwd = op->w_bwd ? dnnl_memory_desc_get_size(wmd) / sizeof(float) : 0;
        int ak[3] = {DNNL_ARG_DIFF_DST, DNNL_ARG_WEIGHTS, DNNL_ARG_DIFF_SRC};
        const dnnl_memory_desc_t *m[3] = {&dst, wmd, &src};
        if ((rc = prim_make(c, &op->bwd_data, pd, 3, ak, m)))
            goto fail;
    }
    dnnl_primitive_desc_destroy(pd);
    pd = NULL;
    DNNL_TRY(dnnl_dilated_convolution_backward_weights_desc_init(&cd, dnnl_convolution_direct, &src, &wany, bptr,
                                                                 &dst, strides, dil, pl, pr));
    DNNL_TRY(dnnl_primitive_desc_create(&pd, &cd, NULL, c->eng, fpd));
    dnnl_memory_desc_t bsrc = src, bdst = dst;
    if ((d->fmt_in != STK__LAYOUT_PLAIN || d->fmt_out != STK__LAYOUT_PLAIN) && is_ref(pd)) {
        /* First let oneDNN pick the layouts (`any`), then try plain NCHW. */
        dnnl_memory_desc_t try_src[2], try_dst[2];
        if ((rc = md_plain(&try_src[0], 4, sdims, dnnl_format_tag_any)) ||
            (rc = md_plain(&try_dst[0], 4, ddims, dnnl_format_tag_any)) ||
            (rc = md_plain(&try_src[1], 4, sdims, dnnl_nchw)) || (rc = md_plain(&try_dst[1], 4, ddims, dnnl_nchw)))
            goto fail;
        for (int t = 0; t < 2; t++) {
            dnnl_primitive_desc_t pd2 = NULL;
            DNNL_TRY(dnnl_dilated_convolution_backward_weights_desc_init(&cd, dnnl_convolution_direct, &try_src[t],
                                                                         &wany, bptr, &try_dst[t], strides, dil, pl,
                                                                         pr));
            if (dnnl_primitive_desc_create(&pd2, &cd, NULL, c->eng, fpd) != dnnl_success)
                continue;
            if (is_ref(pd2)) {
                dnnl_primitive_desc_destroy(pd2);
                continue;
            }
            dnnl_primitive_desc_destroy(pd);
            pd = pd2;
            bsrc = *dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
            bdst = *dnnl_primitive_desc_query_md(pd, dnnl_query_diff_dst_md, 0);
            if (!dnnl_memory_desc_equal(&bsrc, &src) &&
                (rc = reorder_make(c, &op->bw_src_re, &src, &bsrc, &op->bw_src)))
                goto fail;
            if (!dnnl_memory_desc_equal(&bdst, &dst) &&
                (rc = reorder_make(c, &op->bw_dst_re, &dst, &bdst, &op->bw_dst)))
                goto fail;
            break;
        }
    }
    {
        const dnnl_memory_desc_t *wmd = dnnl_primitive_desc_query_md(pd, dnnl_query_diff_weights_md, 0);
        if (!dnnl_memory_desc_equal(wmd, &wei)) {
            if ((rc = reorder_make(c, &op->dw_from, wmd, &wei, NULL)))
                goto fail;
            size_t sz = (dnnl_memory_desc_get_size(wmd) + 63) & ~(size_t)63;
            op->dw = aligned_alloc(64, sz);
            if (!op->dw) {
                rc = stk__error(-ENOMEM, "oneDNN: out of memory");
                goto fail;
            }
        }
        int ak[4] = {DNNL_ARG_SRC, DNNL_ARG_DIFF_DST, DNNL_ARG_DIFF_WEIGHTS, DNNL_ARG_DIFF_BIAS};
        const dnnl_memory_desc_t *m[4] = {&bsrc, &bdst, wmd, &bia};
        if ((rc = prim_make(c, &op->bwd_weights, pd, dnnl_bias ? 4 : 3, ak, m)))
            goto fail;
    }
    dnnl_primitive_desc_destroy(pd);
    dnnl_primitive_desc_destroy(fpd);
    *out = op;
    return 0;
fail:
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    if (fpd)
        dnnl_primitive_desc_destroy(fpd);
    stk__cpu_op_destroy(ctx, op);
    return rc;
}

/* The weights as a primitive takes them: reordered into buf when it has a
 * layout of its own (n floats), and under half precision rounded (in buf,
 * else into the op's r_w). */
static int conv_weights(void *ctx, stk__op_t *op, prim_t *re, float *buf, size_t n, const float *w,
                        const float **out)
{
    int rc;
    if (buf && (rc = reorder_exec(ctx, re, w, buf)) < 0)
        return rc;
    *out = buf ? half_in(op, n, buf, buf) : half_in(op, op->n_w, w, op->r_w);
    return 0;
}

int stk__cpu_conv_forward(void *ctx, stk__op_t *op, const float *x, const float *w, const float *b, float *y)
{
    const float *wk;
    int rc = conv_weights(ctx, op, &op->w_to_fwd, op->w_fwd, op->n_wfwd, w, &wk);
    if (rc < 0)
        return rc;
    x = half_in(op, op->n_src, x, op->r_src);
    void *p[4] = {(void *)x, (void *)wk, y, (void *)b};
    if ((rc = prim_run(ctx, &op->fwd, p)) < 0 || !op->half)
        return rc;
    half_out(op, op->n_dst, y);
    if (b && op->has_bias)
        bias_add(op, b, y);
    return 0;
}

int stk__cpu_conv_backward_data(void *ctx, stk__op_t *op, const float *dy, const float *w, float *dx)
{
    const float *wk;
    int rc = conv_weights(ctx, op, &op->w_to_bwd, op->w_bwd, op->n_wbwd, w, &wk);
    if (rc < 0)
        return rc;
    dy = half_in(op, op->n_dst, dy, op->r_dst);
    void *p[3] = {(void *)dy, (void *)wk, dx};
    if ((rc = prim_run(ctx, &op->bwd_data, p)) < 0 || !op->half)
        return rc;
    half_out(op, op->n_src, dx);
    return 0;
}

int stk__cpu_conv_backward_weights(void *ctx, stk__op_t *op, const float *x, const float *dy, float *dw, float *db)
{
    int rc;
    const float *dy32 = dy;
    x = half_in(op, op->n_src, x, op->r_src);
    dy = half_in(op, op->n_dst, dy, op->r_dst);
    if (op->bw_src && (rc = reorder_exec(ctx, &op->bw_src_re, x, op->bw_src)) < 0)
        return rc;
    if (op->bw_dst && (rc = reorder_exec(ctx, &op->bw_dst_re, dy, op->bw_dst)) < 0)
        return rc;
    void *p[4] = {op->bw_src ? op->bw_src : (void *)x, op->bw_dst ? op->bw_dst : (void *)dy, op->dw ? op->dw : dw, db};
    rc = prim_run(ctx, &op->bwd_weights, p);
    if (rc == 0 && op->dw)
        rc = reorder_exec(ctx, &op->dw_from, op->dw, dw);
    if (rc < 0 || !op->half)
        return rc;
    half_out(op, op->n_w, dw);
    if (db && op->has_bias)
        bias_grad(op, dy32, db);
    return 0;
}

/* ------------------------------------------- eval-mode conv + BN (+ ReLU) */

void stk__cpu_bn_fold(int64_t c, float eps, const float *b, const float *gamma, const float *beta, const float *mean,
                      const float *var, float *s, float *t)
{
    for (int64_t k = 0; k < c; k++) {
        float sk = gamma[k] / sqrtf(var[k] + eps);
        s[k] = sk;
        t[k] = ((b ? b[k] : 0.0f) - mean[k]) * sk + beta[k];
    }
}

/* y = relu(y s + t) per channel, where the primitive did not. */
static void affine_relu(const stk__op_t *op, float *y)
{
    ptrdiff_t rows = (ptrdiff_t)(op->bias_outer * op->bias_c);
    int64_t inner = op->bias_inner, step = op->bias_blocked ? 8 : 1;
    int relu = op->frelu;
#pragma omp parallel for if (rows * inner > PAR_MIN)
    for (ptrdiff_t r = 0; r < rows; r++) {
        int64_t n = r / op->bias_c, c = r % op->bias_c;
        float *row = elem_at(y, op, n, c, 0), sc = op->fs[c], tc = op->ft[c];
        for (int64_t i = 0; i < inner; i++) {
            float v = row[i * step] * sc + tc;
            row[i * step] = relu && !(v > 0.0f) ? 0.0f : v;
        }
    }
}

/* The forward primitive of a fused op. In fp32 the scale s is folded
 * into the weights and the shift t is the primitive's bias, ReLU its
 * eltwise post-op: oneDNN 2.6's binary post-ops (mul s, add t per
 * channel) do the same in the kernel but measured slower on AVX2 than
 * the unfused ops (fmnist-cnn's first convolution 4.5x, the others
 * 10-20%), while folding costs one pass over the weights. Under half
 * precision (fold 0) the plain convolution: y is rounded before the
 * affine, as the unfused convolution rounds it before the bias and the
 * batch norm, and a loop applies s, t and ReLU. The propagation kind is
 * the unfused forward's, so that oneDNN picks the same kernel. */
static int fused_pd(cpu_ctx_t *c, const stk__conv_desc_t *d, int fold, int relu, const dnnl_memory_desc_t *src,
                    const dnnl_memory_desc_t *wany, const dnnl_memory_desc_t *bia, const dnnl_memory_desc_t *dst,
                    dnnl_primitive_desc_t *pd)
{
    int rc = 0;
    dnnl_post_ops_t po = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_dims_t strides, dil, pl, pr;
    conv_dims(d, strides, dil, pl, pr);
    dnnl_convolution_desc_t cd;
    DNNL_TRY(dnnl_dilated_convolution_forward_desc_init(&cd, dnnl_forward_training, dnnl_convolution_direct, src,
                                                        wany, fold ? bia : NULL, dst, strides, dil, pl, pr));
    if (fold && relu) {
        DNNL_TRY(dnnl_post_ops_create(&po));
        DNNL_TRY(dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_relu, 0.0f, 0.0f));
        DNNL_TRY(dnnl_primitive_attr_create(&attr));
        DNNL_TRY(dnnl_primitive_attr_set_post_ops(attr, po));
    }
    DNNL_TRY(dnnl_primitive_desc_create(pd, &cd, attr, c->eng, NULL));
fail:
    if (attr)
        dnnl_primitive_attr_destroy(attr);
    if (po)
        dnnl_post_ops_destroy(po);
    return rc;
}

int stk__cpu_conv_fused_create(void *ctx, const stk__conv_fused_desc_t *fd, stk__op_t **out)
{
    cpu_ctx_t *c = ctx;
    const stk__conv_desc_t *d = &fd->conv;
    int rc = 0;
    dnnl_primitive_desc_t pd = NULL;
    stk__op_t *op = op_new(OP_CONV);
    if (!op)
        return -ENOMEM;
    op->has_bias = d->bias;
    op->half = is_half(c->precision) ? c->precision : STK_PRECISION_FP32;
    op->fc = d->oc;
    op->feps = fd->eps;
    op->frelu = fd->relu;
    op->bias_outer = d->n;
    op->bias_c = d->oc;
    op->bias_inner = d->oh * d->ow;
    op->bias_blocked = d->fmt_out == STK__LAYOUT_BLOCKED8;
    dnnl_memory_desc_t src, dst, wei, bia, wany;
    if ((rc = conv_mds(d, &src, &dst, &wei, &wany, &bia)))
        goto fail;
    if ((rc = half_buf(&op->fs, (size_t)d->oc)) || (rc = half_buf(&op->ft, (size_t)d->oc)))
        goto fail;
    /* r_w: the folded weights in fp32, the rounded ones in half. */
    if ((rc = half_setup(op, op->half ? dnnl_memory_desc_get_size(&src) / sizeof(float) : 0, 0,
                         dnnl_memory_desc_get_size(&wei) / sizeof(float))))
        goto fail;
    op->fpost = !op->half;
    if ((rc = fused_pd(c, d, op->fpost, op->frelu, &src, &wany, &bia, &dst, &pd)))
        goto fail;
    if ((rc = forward_prim(c, op, pd, &src, &wei, &dst, op->fpost ? &bia : NULL)))
        goto fail;
    dnnl_primitive_desc_destroy(pd);
    *out = op;
    return 0;
fail:
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    stk__cpu_op_destroy(ctx, op);
    return rc;
}

int stk__cpu_conv_fused_forward(void *ctx, stk__op_t *op, const float *x, const float *w, const float *b,
                                const float *gamma, const float *beta, const float *mean, const float *var, float *y)
{
    stk__cpu_bn_fold(op->fc, op->feps, op->has_bias ? b : NULL, gamma, beta, mean, var, op->fs, op->ft);
    int rc;
    const float *wk;
    if (op->fpost) {
        /* OIHW (GOIHW): each output channel's weights are contiguous. */
        size_t per = op->n_w / (size_t)op->fc;
        for (int64_t k = 0; k < op->fc; k++)
            for (size_t j = 0; j < per; j++)
                op->r_w[(size_t)k * per + j] = w[(size_t)k * per + j] * op->fs[k];
        if (op->w_fwd && (rc = reorder_exec(ctx, &op->w_to_fwd, op->r_w, op->w_fwd)) < 0)
            return rc;
        void *p[4] = {(void *)x, op->w_fwd ? op->w_fwd : op->r_w, y, op->ft};
        return prim_run(ctx, &op->fwd, p);
    }
    if ((rc = conv_weights(ctx, op, &op->w_to_fwd, op->w_fwd, op->n_wfwd, w, &wk)) < 0)
        return rc;
    x = half_in(op, op->n_src, x, op->r_src);
    void *p[3] = {(void *)x, (void *)wk, y};
    if ((rc = prim_run(ctx, &op->fwd, p)) < 0)
        return rc;
    half_out(op, (size_t)(op->bias_outer * op->bias_c * op->bias_inner), y);
    affine_relu(op, y);
    return 0;
}

int stk__cpu_reorder_create(void *ctx, int64_t n, int64_t c, int64_t h, int64_t w, int from, int to,
                            stk__op_t **out)
{
    stk__op_t *op = op_new(OP_REORDER);
    if (!op)
        return -ENOMEM;
    dnnl_memory_desc_t a, b;
    int64_t dims[4] = {n, c, h, w};
    int rc;
    if ((rc = md_plain(&a, 4, dims, act_tag(from))) || (rc = md_plain(&b, 4, dims, act_tag(to))) ||
        (rc = reorder_make(ctx, &op->fwd, &a, &b, NULL)) || (rc = reorder_make(ctx, &op->fwd_eval, &b, &a, NULL))) {
        stk__cpu_op_destroy(ctx, op);
        return rc;
    }
    *out = op;
    return 0;
}

int stk__cpu_reorder_run(void *ctx, stk__op_t *op, int reverse, const float *src, float *dst)
{
    return reorder_exec(ctx, reverse ? &op->fwd_eval : &op->fwd, src, dst);
}

/* ------------------------------------------------------ batch normalization */

int stk__cpu_bn_create(void *ctx, const stk__bn_desc_t *d, stk__op_t **out)
{
    cpu_ctx_t *c = ctx;
    int rc = 0;
    dnnl_primitive_desc_t fpd = NULL, pd = NULL;
    stk__op_t *op = op_new(OP_BN);
    if (!op)
        return -ENOMEM;
    op->bn = *d;
    dnnl_memory_desc_t data, ch;
    int64_t dd[4] = {d->n, d->c, d->h, d->w}, cd[1] = {d->c};
    if ((rc = md_plain(&data, 4, dd, act_tag(d->fmt))) || (rc = md_plain(&ch, 1, cd, dnnl_x)))
        goto fail;
    unsigned flags = dnnl_use_scale | dnnl_use_shift | (d->relu ? dnnl_fuse_norm_relu : 0u);
    dnnl_batch_normalization_desc_t bd;
    DNNL_TRY(dnnl_batch_normalization_forward_desc_init(&bd, dnnl_forward_training, &data, d->eps, flags));
    DNNL_TRY(dnnl_primitive_desc_create(&fpd, &bd, NULL, c->eng, NULL));
    /* With the fused ReLU, training forward leaves a mask for backward. */
    const dnnl_memory_desc_t *ws = dnnl_primitive_desc_query_md(fpd, dnnl_query_workspace_md, 0);
    size_t wsz = ws ? dnnl_memory_desc_get_size(ws) : 0;
    if (wsz) {
        op->workspace = aligned_alloc(64, (wsz + 63) & ~(size_t)63);
        if (!op->workspace) {
            rc = -ENOMEM;
            goto fail;
        }
    }
    {
        int ak[7] = {DNNL_ARG_SRC,      DNNL_ARG_SCALE, DNNL_ARG_SHIFT,    DNNL_ARG_MEAN,
                     DNNL_ARG_VARIANCE, DNNL_ARG_DST,   DNNL_ARG_WORKSPACE};
        const dnnl_memory_desc_t *m[7] = {&data, &ch, &ch, &ch, &ch, &data, ws};
        if ((rc = prim_make(c, &op->fwd, fpd, wsz ? 7 : 6, ak, m)))
            goto fail;
    }
    DNNL_TRY(dnnl_batch_normalization_forward_desc_init(&bd, dnnl_forward_inference, &data, d->eps,
                                                        flags | dnnl_use_global_stats));
    DNNL_TRY(dnnl_primitive_desc_create(&pd, &bd, NULL, c->eng, NULL));
    {
        int ak[6] = {DNNL_ARG_SRC, DNNL_ARG_SCALE, DNNL_ARG_SHIFT, DNNL_ARG_MEAN, DNNL_ARG_VARIANCE, DNNL_ARG_DST};
        const dnnl_memory_desc_t *m[6] = {&data, &ch, &ch, &ch, &ch, &data};
        if ((rc = prim_make(c, &op->fwd_eval, pd, 6, ak, m)))
            goto fail;
    }
    dnnl_primitive_desc_destroy(pd);
    pd = NULL;
    DNNL_TRY(dnnl_batch_normalization_backward_desc_init(&bd, dnnl_backward, &data, &data, d->eps, flags));
    DNNL_TRY(dnnl_primitive_desc_create(&pd, &bd, NULL, c->eng, fpd));
    {
        /* oneDNN checks that SHIFT is given too, though backward reads
         * only the scale. */
        int ak[10] = {DNNL_ARG_SRC,        DNNL_ARG_DIFF_DST,   DNNL_ARG_SCALE,    DNNL_ARG_MEAN,
                      DNNL_ARG_VARIANCE,   DNNL_ARG_DIFF_SRC,   DNNL_ARG_DIFF_SCALE, DNNL_ARG_DIFF_SHIFT,
                      DNNL_ARG_SHIFT,      DNNL_ARG_WORKSPACE};
        const dnnl_memory_desc_t *m[10] = {&data, &data, &ch, &ch, &ch, &data, &ch, &ch, &ch, ws};
        if ((rc = prim_make(c, &op->bwd_data, pd, wsz ? 10 : 9, ak, m)))
            goto fail;
    }
    dnnl_primitive_desc_destroy(pd);
    dnnl_primitive_desc_destroy(fpd);
    *out = op;
    return 0;
fail:
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    if (fpd)
        dnnl_primitive_desc_destroy(fpd);
    stk__cpu_op_destroy(ctx, op);
    return rc;
}

int stk__cpu_bn_forward(void *ctx, stk__op_t *op, int train, const float *x, const float *gamma, const float *beta,
                        float *mean, float *var, float *y)
{
    void *p[7] = {(void *)x, (void *)gamma, (void *)beta, mean, var, y, op->workspace};
    return prim_run(ctx, train ? &op->fwd : &op->fwd_eval, p);
}

int stk__cpu_bn_backward(void *ctx, stk__op_t *op, const float *x, const float *dy, const float *gamma,
                         const float *mean, const float *var, float *dx, float *dgamma, float *dbeta)
{
    void *p[10] = {(void *)x, (void *)dy, (void *)gamma, (void *)mean, (void *)var,
                   dx, dgamma, dbeta, (void *)gamma, op->workspace};
    return prim_run(ctx, &op->bwd_data, p);
}

/* ---------------------------------------------------------------- pooling */

int stk__cpu_pool_create(void *ctx, const stk__pool_desc_t *d, stk__op_t **out)
{
    cpu_ctx_t *c = ctx;
    int rc = 0;
    dnnl_primitive_desc_t fpd = NULL, pd = NULL;
    stk__op_t *op = op_new(OP_POOL);
    if (!op)
        return -ENOMEM;
    dnnl_memory_desc_t src, dst;
    int64_t sd[4] = {d->n, d->c, d->ih, d->iw}, od[4] = {d->n, d->c, d->oh, d->ow};
    if ((rc = md_plain(&src, 4, sd, act_tag(d->fmt))) || (rc = md_plain(&dst, 4, od, act_tag(d->fmt))))
        goto fail;
    dnnl_alg_kind_t alg = d->max ? dnnl_pooling_max : dnnl_pooling_avg_include_padding;
    dnnl_dims_t strides = {d->sh, d->sw}, kernel = {d->kh, d->kw}, dil = {0, 0}, pl = {d->ph, d->pw};
    dnnl_dims_t pr = {(d->oh - 1) * d->sh + d->kh - d->ih - d->ph, (d->ow - 1) * d->sw + d->kw - d->iw - d->pw};
    dnnl_pooling_v2_desc_t pdsc;
    DNNL_TRY(dnnl_pooling_v2_forward_desc_init(&pdsc, dnnl_forward_training, alg, &src, &dst, strides, kernel, dil,
                                               pl, pr));
    DNNL_TRY(dnnl_primitive_desc_create(&fpd, &pdsc, NULL, c->eng, NULL));
    const dnnl_memory_desc_t *ws = dnnl_primitive_desc_query_md(fpd, dnnl_query_workspace_md, 0);
    size_t wsz = ws ? dnnl_memory_desc_get_size(ws) : 0;
    if (wsz) {
        op->workspace = aligned_alloc(64, (wsz + 63) & ~(size_t)63);
        if (!op->workspace) {
            rc = -ENOMEM;
            goto fail;
        }
    }
    {
        int ak[3] = {DNNL_ARG_SRC, DNNL_ARG_DST, DNNL_ARG_WORKSPACE};
        const dnnl_memory_desc_t *m[3] = {&src, &dst, ws};
        if ((rc = prim_make(c, &op->fwd, fpd, wsz ? 3 : 2, ak, m)))
            goto fail;
    }
    /* Inference needs no workspace: a separate primitive skips writing it. */
    DNNL_TRY(dnnl_pooling_v2_forward_desc_init(&pdsc, dnnl_forward_inference, alg, &src, &dst, strides, kernel, dil,
                                               pl, pr));
    DNNL_TRY(dnnl_primitive_desc_create(&pd, &pdsc, NULL, c->eng, NULL));
    {
        int ak[2] = {DNNL_ARG_SRC, DNNL_ARG_DST};
        const dnnl_memory_desc_t *m[2] = {&src, &dst};
        if ((rc = prim_make(c, &op->fwd_eval, pd, 2, ak, m)))
            goto fail;
    }
    dnnl_primitive_desc_destroy(pd);
    pd = NULL;
    DNNL_TRY(dnnl_pooling_v2_backward_desc_init(&pdsc, alg, &src, &dst, strides, kernel, dil, pl, pr));
    DNNL_TRY(dnnl_primitive_desc_create(&pd, &pdsc, NULL, c->eng, fpd));
    {
        int ak[3] = {DNNL_ARG_DIFF_DST, DNNL_ARG_DIFF_SRC, DNNL_ARG_WORKSPACE};
        const dnnl_memory_desc_t *m[3] = {&dst, &src, ws};
        if ((rc = prim_make(c, &op->bwd_data, pd, wsz ? 3 : 2, ak, m)))
            goto fail;
    }
    dnnl_primitive_desc_destroy(pd);
    dnnl_primitive_desc_destroy(fpd);
    *out = op;
    return 0;
fail:
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    if (fpd)
        dnnl_primitive_desc_destroy(fpd);
    stk__cpu_op_destroy(ctx, op);
    return rc;
}

int stk__cpu_pool_forward(void *ctx, stk__op_t *op, int train, const float *x, float *y)
{
    void *p[3] = {(void *)x, y, op->workspace};
    return prim_run(ctx, train ? &op->fwd : &op->fwd_eval, p);
}

int stk__cpu_pool_backward(void *ctx, stk__op_t *op, const float *dy, float *dx)
{
    void *p[3] = {(void *)dy, dx, op->workspace};
    return prim_run(ctx, &op->bwd_data, p);
}

/* ----------------------------------------------------------- inner product */

int stk__cpu_linear_create(void *ctx, const stk__linear_desc_t *d, stk__op_t **out)
{
    cpu_ctx_t *c = ctx;
    int rc = 0;
    dnnl_primitive_desc_t fpd = NULL, pd = NULL;
    stk__op_t *op = op_new(OP_LINEAR);
    if (!op)
        return -ENOMEM;
    op->has_bias = d->bias;
    op->half = is_half(c->precision) ? c->precision : STK_PRECISION_FP32;
    int dnnl_bias = d->bias && !op->half;
    dnnl_memory_desc_t src, dst, wei, bia;
    int64_t sd[2] = {d->n, d->in}, od[2] = {d->n, d->out}, wd[2] = {d->out, d->in}, bd[1] = {d->out};
    if ((rc = md_plain(&src, 2, sd, dnnl_nc)) || (rc = md_plain(&dst, 2, od, dnnl_nc)) ||
        (rc = md_plain(&wei, 2, wd, dnnl_oi)) || (rc = md_plain(&bia, 1, bd, dnnl_x)))
        goto fail;
    const dnnl_memory_desc_t *bptr = dnnl_bias ? &bia : NULL;
    if (op->half) {
        op->bias_outer = d->n;
        op->bias_c = d->out;
        op->bias_inner = 1;
        if ((rc = half_setup(op, (size_t)(d->n * d->in), (size_t)(d->n * d->out), (size_t)(d->out * d->in))))
            goto fail;
    }
    dnnl_inner_product_desc_t ipd;
    DNNL_TRY(dnnl_inner_product_forward_desc_init(&ipd, dnnl_forward_training, &src, &wei, bptr, &dst));
    DNNL_TRY(dnnl_primitive_desc_create(&fpd, &ipd, NULL, c->eng, NULL));
    {
        int ak[4] = {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_DST, DNNL_ARG_BIAS};
        const dnnl_memory_desc_t *m[4] = {&src, &wei, &dst, &bia};
        if ((rc = prim_make(c, &op->fwd, fpd, dnnl_bias ? 4 : 3, ak, m)))
            goto fail;
    }
    DNNL_TRY(dnnl_inner_product_backward_data_desc_init(&ipd, &src, &wei, &dst));
    DNNL_TRY(dnnl_primitive_desc_create(&pd, &ipd, NULL, c->eng, fpd));
    {
        int ak[3] = {DNNL_ARG_DIFF_DST, DNNL_ARG_WEIGHTS, DNNL_ARG_DIFF_SRC};
        const dnnl_memory_desc_t *m[3] = {&dst, &wei, &src};
        if ((rc = prim_make(c, &op->bwd_data, pd, 3, ak, m)))
            goto fail;
    }
    dnnl_primitive_desc_destroy(pd);
    pd = NULL;
    DNNL_TRY(dnnl_inner_product_backward_weights_desc_init(&ipd, &src, &wei, bptr, &dst));
    DNNL_TRY(dnnl_primitive_desc_create(&pd, &ipd, NULL, c->eng, fpd));
    {
        int ak[4] = {DNNL_ARG_SRC, DNNL_ARG_DIFF_DST, DNNL_ARG_DIFF_WEIGHTS, DNNL_ARG_DIFF_BIAS};
        const dnnl_memory_desc_t *m[4] = {&src, &dst, &wei, &bia};
        if ((rc = prim_make(c, &op->bwd_weights, pd, dnnl_bias ? 4 : 3, ak, m)))
            goto fail;
    }
    dnnl_primitive_desc_destroy(pd);
    dnnl_primitive_desc_destroy(fpd);
    *out = op;
    return 0;
fail:
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    if (fpd)
        dnnl_primitive_desc_destroy(fpd);
    stk__cpu_op_destroy(ctx, op);
    return rc;
}

int stk__cpu_linear_forward(void *ctx, stk__op_t *op, const float *x, const float *w, const float *b, float *y)
{
    x = half_in(op, op->n_src, x, op->r_src);
    w = half_in(op, op->n_w, w, op->r_w);
    void *p[4] = {(void *)x, (void *)w, y, (void *)b};
    int rc = prim_run(ctx, &op->fwd, p);
    if (rc < 0 || !op->half)
        return rc;
    half_out(op, op->n_dst, y);
    if (b && op->has_bias)
        bias_add(op, b, y);
    return 0;
}

int stk__cpu_linear_backward_data(void *ctx, stk__op_t *op, const float *dy, const float *w, float *dx)
{
    dy = half_in(op, op->n_dst, dy, op->r_dst);
    w = half_in(op, op->n_w, w, op->r_w);
    void *p[3] = {(void *)dy, (void *)w, dx};
    int rc = prim_run(ctx, &op->bwd_data, p);
    if (rc < 0 || !op->half)
        return rc;
    half_out(op, op->n_src, dx);
    return 0;
}

int stk__cpu_linear_backward_weights(void *ctx, stk__op_t *op, const float *x, const float *dy, float *dw,
                                     float *db)
{
    const float *dy32 = dy;
    x = half_in(op, op->n_src, x, op->r_src);
    dy = half_in(op, op->n_dst, dy, op->r_dst);
    void *p[4] = {(void *)x, (void *)dy, dw, db};
    int rc = prim_run(ctx, &op->bwd_weights, p);
    if (rc < 0 || !op->half)
        return rc;
    half_out(op, op->n_w, dw);
    if (db && op->has_bias)
        bias_grad(op, dy32, db);
    return 0;
}

/* ------------------------------------------------------------ engine setup */

int stk__cpu_dnnl_init(cpu_ctx_t *c)
{
    int rc = 0;
    DNNL_TRY(dnnl_engine_create(&c->eng, dnnl_cpu, 0));
    DNNL_TRY(dnnl_stream_create(&c->stream, c->eng, dnnl_stream_default_flags));
    return 0;
fail:
    stk__cpu_dnnl_fini(c);
    return rc;
}

void stk__cpu_dnnl_fini(cpu_ctx_t *c)
{
    if (c->stream)
        dnnl_stream_destroy(c->stream);
    if (c->eng)
        dnnl_engine_destroy(c->eng);
    c->stream = NULL;
    c->eng = NULL;
}
