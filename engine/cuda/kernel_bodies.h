/* SPDX-License-Identifier: MIT */
/* What one CUDA thread computes, as host-and-device functions: the .cu
 * kernels wrap each in a grid-stride loop, and tests/unit/test_cuda_bodies
 * runs the same functions on the host over every index against the CPU
 * backend, so the index arithmetic and the formulas are checked on a
 * machine without a GPU. Only the parallel reductions (sums over a channel
 * or a row) live in the .cu files. nvcc (CUDA C++) only. */
#ifndef STOKER_ENGINE_CUDA_KERNEL_BODIES_H
#define STOKER_ENGINE_CUDA_KERNEL_BODIES_H

#include "../optim_kernels.h"
#include "kernels.h"
#include "philox.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

#define KB static inline STK__HOSTDEV

/* ------------------------------------------------------------ eltwise */

KB float kb_gelu_cdf(float x)
{
    return 0.5f * (1.0f + erff(x * 0.70710678118654752f));
}

KB float kb_elt_fwd(int alg, float alpha, float x)
{
    switch (alg) {
    case STK__K_RELU:
        return x > 0.0f ? x : 0.0f;
    case STK__K_LEAKY_RELU:
        return x > 0.0f ? x : alpha * x;
    case STK__K_GELU:
        return x * kb_gelu_cdf(x);
    case STK__K_SIGMOID:
        return 1.0f / (1.0f + expf(-x));
    default: /* STK__K_TANH; the launcher rejects other values */
        return tanhf(x);
    }
}

/* dx from x and/or y = f(x), as the CPU backend: ReLU, sigmoid and tanh
 * from y; leaky ReLU and GELU from x. */
KB float kb_elt_bwd(int alg, float alpha, float x, float y, float dy)
{
    switch (alg) {
    case STK__K_RELU:
        return y > 0.0f ? dy : 0.0f;
    case STK__K_LEAKY_RELU:
        return x > 0.0f ? dy : alpha * dy;
    case STK__K_GELU:
        return dy * (kb_gelu_cdf(x) + x * 0.3989422804014327f * expf(-0.5f * x * x));
    case STK__K_SIGMOID:
        return dy * y * (1.0f - y);
    default:
        return dy * (1.0f - y * y);
    }
}

/* ------------------------------------------------------------- concat */

/* Element i of y [n, ca+cb, hw]. */
KB float kb_concat_fwd_at(int64_t i, int64_t ca, int64_t cb, int64_t hw, const float *a, const float *b)
{
    int64_t row = (ca + cb) * hw;
    int64_t s = i / row, r = i - s * row;
    return r < ca * hw ? a[s * ca * hw + r] : b[s * cb * hw + (r - ca * hw)];
}

/* Element i of the part [n, cp, hw]: its source in dy [n, ct, hw]. */
KB int64_t kb_concat_src(int64_t i, int64_t ct, int64_t c0, int64_t cp, int64_t hw)
{
    int64_t row = cp * hw;
    int64_t s = i / row, r = i - s * row;
    return s * ct * hw + c0 * hw + r;
}

/* ------------------------------------------------------------ dropout */

/* Elements [4 blk, 4 blk + 4) (those below n), as the CPU backend. */
KB void kb_dropout_block(uint64_t blk, size_t n, float p, float scale, uint64_t key, uint64_t step,
                         const float *x, float *y)
{
    uint32_t r[4];
    stk__philox4x32_10(key, step, blk, r);
    size_t base = (size_t)blk * 4;
    for (int j = 0; j < 4 && base + (size_t)j < n; j++)
        y[base + j] = x[base + j] * (stk__dropout_keep(r[j], p) ? scale : 0.0f);
}

/* ------------------------------------------------------------ reorder */

/* Offset in nChw8c of plain element (s, ch, h, w). */
KB int64_t kb_blocked8(int64_t s, int64_t ch, int64_t hh, int64_t ww, int64_t c, int64_t h, int64_t w)
{
    return (((s * (c / 8) + ch / 8) * h + hh) * w + ww) * 8 + (ch % 8);
}

/* ---------------------------------------------------------- batchnorm */

/* y at element i of [n, c, hw], with the ReLU mask bit in *keep. */
KB float kb_bn_apply_at(int64_t i, int64_t c, int64_t hw, float eps, int relu, const float *x, const float *gamma,
                        const float *beta, const float *mean, const float *var, int *keep)
{
    int64_t ch = (i / hw) % c;
    float rstd = 1.0f / sqrtf(var[ch] + eps);
    float y = gamma[ch] * ((x[i] - mean[ch]) * rstd) + beta[ch];
    *keep = 1;
    if (relu && !(y > 0.0f)) {
        *keep = 0;
        y = 0.0f;
    }
    return y;
}

/* Channel ch of an eval-mode batch norm folded into the convolution
 * before it (the fused op, cuda_conv.c): s = gamma / sqrt(var + eps),
 * t = (b - mean) s + beta (b NULL: no bias). The CPU backend's
 * stk__cpu_bn_fold does the same float operations. */
KB void kb_bn_fold_at(int64_t ch, float eps, const float *b, const float *gamma, const float *beta,
                      const float *mean, const float *var, float *s, float *t)
{
    float sk = gamma[ch] / sqrtf(var[ch] + eps);
    s[ch] = sk;
    t[ch] = ((b ? b[ch] : 0.0f) - mean[ch]) * sk + beta[ch];
}

/* dx at element i, from the channel sums dgamma = sum dy' xhat and
 * dbeta = sum dy' over m = n * hw elements. */
KB float kb_bn_dx_at(int64_t i, int64_t c, int64_t hw, int64_t m, float eps, const float *x, const float *dy,
                     const float *gamma, const float *mean, const float *var, const uint8_t *mask,
                     const float *dgamma, const float *dbeta)
{
    int64_t ch = (i / hw) % c;
    float rstd = 1.0f / sqrtf(var[ch] + eps);
    float xhat = (x[i] - mean[ch]) * rstd;
    float g = mask && !mask[i] ? 0.0f : dy[i];
    float inv_m = 1.0f / (float)m;
    return gamma[ch] * rstd * (g - dbeta[ch] * inv_m - xhat * dgamma[ch] * inv_m);
}

/* ------------------------------------------------------------ pooling */

/* Output element o = ((s * c + ch) * oh + y) * ow + x: the pooled value,
 * and (max) the index of the maximum in the input plane, first one wins. */
KB float kb_pool_fwd_at(const stk__k_pool_t *p, int64_t o, const float *x, int32_t *arg)
{
    int64_t ox = o % p->ow, oy = (o / p->ow) % p->oh, plane = o / (p->ow * p->oh);
    const float *in = x + plane * p->ih * p->iw;
    int64_t y0 = oy * p->sh - p->ph, x0 = ox * p->sw - p->pw;
    float best = -INFINITY, sum = 0.0f;
    int32_t at = -1;
    for (int64_t ky = 0; ky < p->kh; ky++) {
        int64_t iy = y0 + ky;
        if (iy < 0 || iy >= p->ih)
            continue;
        for (int64_t kx = 0; kx < p->kw; kx++) {
            int64_t ix = x0 + kx;
            if (ix < 0 || ix >= p->iw)
                continue;
            float v = in[iy * p->iw + ix];
            sum += v;
            /* NaN wins, as a comparison `v > best || v != v` propagates it. */
            if (at < 0 || v > best || (v != v && best == best)) {
                best = v;
                at = (int32_t)(iy * p->iw + ix);
            }
        }
    }
    if (!p->max)
        return sum / (float)(p->kh * p->kw);
    *arg = at;
    return best;
}

/* The outputs along one axis whose window covers input position i. */
KB void kb_pool_range(int64_t i, int64_t pad, int64_t k, int64_t stride, int64_t out, int64_t *lo, int64_t *hi)
{
    int64_t first = i + pad - k + 1; /* o * stride >= first */
    *lo = first <= 0 ? 0 : (first + stride - 1) / stride;
    int64_t last = (i + pad) / stride; /* o * stride <= i + pad */
    *hi = last < out - 1 ? last : out - 1;
}

/* Input element e: the sum of the gradients of the windows that took it. */
KB float kb_pool_bwd_at(const stk__k_pool_t *p, int64_t e, const float *dy, const int32_t *argmax)
{
    int64_t ix = e % p->iw, iy = (e / p->iw) % p->ih, plane = e / (p->iw * p->ih);
    int64_t ylo, yhi, xlo, xhi;
    kb_pool_range(iy, p->ph, p->kh, p->sh, p->oh, &ylo, &yhi);
    kb_pool_range(ix, p->pw, p->kw, p->sw, p->ow, &xlo, &xhi);
    const float *g = dy + plane * p->oh * p->ow;
    const int32_t *a = argmax ? argmax + plane * p->oh * p->ow : 0;
    int32_t me = (int32_t)(iy * p->iw + ix);
    float sum = 0.0f, inv = 1.0f / (float)(p->kh * p->kw);
    for (int64_t oy = ylo; oy <= yhi; oy++)
        for (int64_t ox = xlo; ox <= xhi; ox++) {
            int64_t o = oy * p->ow + ox;
            if (p->max)
                sum += a[o] == me ? g[o] : 0.0f;
            else
                sum += g[o] * inv;
        }
    return sum;
}

/* ------------------------------------------------------ cross-entropy */

/* The smoothed target of (row i, class j), in float as the CPU backward. */
KB float kb_xent_target(int64_t i, int64_t j, int64_t k, const int64_t *labels, const float *soft, float smoothing)
{
    float t = labels ? (j == labels[i] ? 1.0f : 0.0f) : soft[i * k + j];
    return t * (1.0f - smoothing) + smoothing / (float)k;
}

KB float kb_xent_bwd_at(int64_t e, int64_t n, int64_t k, const float *prob, const int64_t *labels,
                        const float *soft, float smoothing, float scale)
{
    int64_t i = e / k, j = e - i * k;
    float s = scale / (float)n;
    return s * (prob[e] - kb_xent_target(i, j, k, labels, soft, smoothing));
}

/* ---------------------------------------------------------- sequences */

/* Element e of dst [n, f] = src[idx[e / f]] row; *bad when that index is
 * outside [0, rows) (the element is then 0). */
KB float kb_gather_at(int64_t e, int64_t f, int64_t rows, const int64_t *idx, const float *src, int *bad)
{
    int64_t i = e / f, r = idx[i];
    *bad = r < 0 || r >= rows;
    return *bad ? 0.0f : src[r * f + (e - i * f)];
}

/* Element e = i f + j of y [n, f]: the last valid step of sequence i, or
 * the mean of its valid steps (summed in step order, as the CPU). */
KB float kb_seq_pool_fwd_at(int64_t e, int mean, int64_t t, int64_t f, const int64_t *lengths, const float *x)
{
    int64_t i = e / f, j = e - i * f, len = lengths[i];
    const float *xi = x + i * t * f;
    if (len <= 0)
        return 0.0f;
    if (!mean)
        return xi[(len - 1) * f + j];
    float sum = 0.0f;
    for (int64_t s = 0; s < len; s++)
        sum += xi[s * f + j];
    return sum * (1.0f / (float)len);
}

/* Element e = (i t + s) f + j of dx [n, t, f]. */
KB float kb_seq_pool_bwd_at(int64_t e, int mean, int64_t t, int64_t f, const int64_t *lengths, const float *dy)
{
    int64_t j = e % f, s = (e / f) % t, i = e / (f * t), len = lengths[i];
    if (len <= 0 || s >= len || (!mean && s != len - 1))
        return 0.0f;
    return mean ? dy[i * f + j] * (1.0f / (float)len) : dy[i * f + j];
}

/* ---------------------------------------------------------- optimizer */

/* Element i of one step, in optim_kernels.c's order of float operations
 * (PyTorch's): with no FMA contraction (-fmad=false) and IEEE square
 * root and division (nvcc's defaults), the same bits as the CPU. */
KB void kb_optim_at(const stk__optim_scalars_t *k, size_t i, float *p, const float *g, float *s0, float *s1,
                    float *s2)
{
    switch (k->kind) {
    case STK_OPTIM_SGD: {
        float d = k->sign < 0.0f ? -g[i] : g[i];
        if (k->use_wd)
            d = d + k->wd * p[i];
        if (k->use_mom) {
            float b = k->first ? d : s0[i] * k->mom + k->damp1 * d;
            s0[i] = b;
            d = k->nesterov ? d + k->mom * b : b;
        }
        p[i] = p[i] + k->neglr * d;
        break;
    }
    case STK_OPTIM_ADAM:
    case STK_OPTIM_ADAMW: {
        float d = g[i] * k->sign, w = p[i];
        if (k->decoupled)
            w = w * k->decay;
        if (k->use_wd)
            d = d + k->wd * w;
        float m = s0[i] * k->b1 + k->omb1 * d;
        s0[i] = m;
        float x = s1[i] * k->b2 + (k->omb2 * d) * d;
        s1[i] = x;
        if (k->amsgrad) {
            float a = s2[i];
            a = (a != a || a > x) ? a : x; /* torch.maximum propagates NaN */
            s2[i] = a;
            x = a;
        }
        p[i] = w + (k->neg_step * m) / (sqrtf(x) / k->bc2s + k->eps);
        break;
    }
    case STK_OPTIM_RMSPROP: {
        float d = g[i] * k->sign;
        if (k->use_wd)
            d = d + k->wd * p[i];
        float sq = s0[i] * k->alpha + (k->oma * d) * d;
        s0[i] = sq;
        if (k->centered) {
            float x = s2[i] * k->alpha + k->oma * d;
            s2[i] = x;
            sq = sq + (-x) * x;
        }
        float avg = sqrtf(sq) + k->eps;
        if (k->use_mom) {
            float b = s1[i] * k->mom + d / avg;
            s1[i] = b;
            p[i] = p[i] + k->neglr * b;
        } else {
            p[i] = p[i] + (k->neglr * d) / avg;
        }
        break;
    }
    }
}

/* ----------------------------------------------------------- accuracy */

/* Whether row i's label ranks below topk (ties to the lower index). */
KB int kb_correct_at(int64_t i, int64_t k, int topk, const float *logits, const int64_t *labels)
{
    const float *z = logits + i * k;
    int64_t y = labels[i], rank = 0;
    if (y < 0 || y >= k)
        return 0;
    for (int64_t j = 0; j < k; j++)
        rank += z[j] > z[y] || (j < y && z[j] == z[y]);
    return rank < topk;
}

/* ----------------------------------------------- half inputs to f32 */

/* One f16 (IEEE binary16; bf16 = 0) or bf16 (bf16 = 1) value as f32,
 * exactly, as common/dtype.c's stk_f16_to_f32 / stk_bf16_to_f32: the
 * feed's conversion on the device gives the floats the host's would. */
KB float kb_half_to_f32(uint16_t h, int bf16)
{
    union {
        uint32_t u;
        float f;
    } v;
    if (bf16) {
        v.u = (uint32_t)h << 16;
        return v.f;
    }
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
    if (e == 0) {
        if (m == 0) {
            v.u = sign;
            return v.f;
        }
        float sub = (float)m * (1.0f / 16777216.0f); /* m * 2^-24 */
        return sign ? -sub : sub;
    }
    v.u = e == 31 ? sign | 0x7F800000u | (m << 13) : sign | ((e + 112) << 23) | (m << 13);
    return v.f;
}

/* ------------------------------------------------- mixed precision */

/* The NCHW offset of the element at NHWC offset e of an n x c x h x w
 * tensor (n is not needed: the batch index is what is left). */
KB int64_t kb_nhwc_to_nchw(int64_t e, int64_t c, int64_t h, int64_t w)
{
    int64_t ch = e % c, r = e / c; /* r = (s h + y) w + x */
    int64_t x = r % w;
    r /= w;
    int64_t y = r % h, s = r / h;
    return ((s * c + ch) * h + y) * w + x;
}

/* The NHWC offset of the element at NCHW offset e. */
KB int64_t kb_nchw_to_nhwc(int64_t e, int64_t c, int64_t h, int64_t w)
{
    int64_t x = e % w, r = e / w; /* r = (s c + ch) h + y */
    int64_t y = r % h;
    r /= h;
    int64_t ch = r % c, s = r / c;
    return ((s * h + y) * w + x) * c + ch;
}

/* CUDA's own conversions, round to nearest even both (FP16 overflows to
 * infinity, which loss scaling's check then sees). */
KB void kb_to_half(float v, __nv_bfloat16 *d)
{
    *d = __float2bfloat16_rn(v);
}
KB void kb_to_half(float v, __half *d)
{
    *d = __float2half_rn(v);
}
KB float kb_from_half(__nv_bfloat16 v)
{
    return __bfloat162float(v);
}
KB float kb_from_half(__half v)
{
    return __half2float(v);
}

/* v as the half type H holds it. */
template <typename H>
KB float kb_round_half(float v)
{
    H h;
    kb_to_half(v, &h);
    return kb_from_half(h);
}

/* Element e (NHWC order) of the half copy of x (NCHW f32): the kernel's
 * writes are contiguous, its reads strided. */
template <typename H>
KB void kb_to_half_nhwc_at(int64_t e, int64_t c, int64_t h, int64_t w, const float *x, H *y)
{
    kb_to_half(x[kb_nhwc_to_nchw(e, c, h, w)], &y[e]);
}

/* Element e (NCHW order) of the f32 copy of y (NHWC half). */
template <typename H>
KB float kb_from_half_nhwc_at(int64_t e, int64_t c, int64_t h, int64_t w, const H *y)
{
    return kb_from_half(y[kb_nchw_to_nhwc(e, c, h, w)]);
}

#endif
