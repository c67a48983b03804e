/* SPDX-License-Identifier: MIT */
/* SGD, Adam, AdamW and RMSprop updates, element by element as PyTorch
 * 1.13's single-tensor code: float32 arithmetic in the same order, scalar
 * hyper-parameters rounded to float as its CPU kernels do (see
 * optim_kernels.h). Each kind's loop is instantiated per combination of
 * its flags so that every instance is branch-free and vectorizes. */
#include "optim_kernels.h"

#include <math.h>
#include <string.h>
#if defined(__SSE__)
#include <immintrin.h>
#endif

void stk__optim_scalars(stk_optim_kind_t kind, const stk_optim_hparams_t *h, int64_t step, int first,
                        stk__optim_scalars_t *k)
{
    memset(k, 0, sizeof(*k));
    k->kind = kind;
    k->sign = h->maximize ? -1.0f : 1.0f;
    k->wd = (float)h->weight_decay;
    k->eps = (float)h->eps;
    k->mom = (float)h->momentum;
    k->neglr = (float)(-h->lr);
    switch (kind) {
    case STK_OPTIM_SGD:
        k->damp1 = (float)(1.0 - h->dampening);
        k->use_mom = h->momentum != 0;
        k->use_wd = h->weight_decay != 0;
        k->nesterov = h->nesterov;
        k->first = first;
        break;
    case STK_OPTIM_ADAM:
    case STK_OPTIM_ADAMW: {
        const double t = (double)step;
        const double bc1 = 1.0 - pow(h->beta1, t), bc2 = 1.0 - pow(h->beta2, t);
        k->b1 = (float)h->beta1;
        k->omb1 = (float)(1.0 - h->beta1);
        k->b2 = (float)h->beta2;
        k->omb2 = (float)(1.0 - h->beta2);
        k->neg_step = (float)(-(h->lr / bc1));
        k->bc2s = (float)sqrt(bc2);
        k->decoupled = kind == STK_OPTIM_ADAMW;
        k->decay = (float)(1.0 - h->lr * h->weight_decay);
        k->use_wd = !k->decoupled && h->weight_decay != 0;
        k->amsgrad = h->amsgrad;
        break;
    }
    case STK_OPTIM_RMSPROP:
        k->alpha = (float)h->alpha;
        k->oma = (float)(1.0 - h->alpha);
        k->use_wd = h->weight_decay != 0;
        k->use_mom = h->momentum > 0;
        k->centered = h->centered;
        break;
    }
}

/* Square roots of a block, in place. A plain sqrtf loop does not
 * vectorize: GCC keeps errno semantics for sqrtf unless the whole build
 * has -fno-math-errno (an optimize attribute or pragma does not do it).
 * SSE's sqrtps rounds exactly as sqrtf, so results are the same bits. The
 * Adam and RMSprop loops below are split around this call in blocks that
 * stay in L1, so the rest of them vectorizes too (about 4x faster). */
#define SQRT_BLOCK 512

static void sqrt_block(float *x, size_t n)
{
    size_t i = 0;
#if defined(__SSE__)
    for (; i + 4 <= n; i += 4)
        _mm_storeu_ps(x + i, _mm_sqrt_ps(_mm_loadu_ps(x + i)));
#endif
    for (; i < n; i++)
        x[i] = sqrtf(x[i]);
}

/* In the functions below every operation is float, in PyTorch's order:
 * `a.add_(b, alpha=s)` is a + s*b, `addcmul_(b, c, value=s)` is
 * a + (s*b)*c and `addcdiv_(b, c, value=s)` is a + (s*b)/c. */

static void sgd(const stk__optim_scalars_t *k, float *restrict p, const float *restrict gr, float *restrict buf,
                size_t n)
{
    const float wd = k->wd, mom = k->mom, damp1 = k->damp1, neglr = k->neglr;
    const int use_mom = k->use_mom, nest = k->nesterov, use_wd = k->use_wd, first = k->first;
    const int maxi = k->sign < 0;
    for (size_t i = 0; i < n; i++) {
        float d = maxi ? -gr[i] : gr[i];
        if (use_wd)
            d = d + wd * p[i];
        if (use_mom) {
            float b = first ? d : buf[i] * mom + damp1 * d;
            buf[i] = b;
            d = nest ? d + mom * b : b;
        }
        p[i] = p[i] + neglr * d;
    }
}

/* The body, specialised by constant flags (see adam) so that each
 * instance is a branch-free loop the compiler vectorizes. maximize is a
 * multiplication by -1, which is exact. */
static inline __attribute__((always_inline)) void
adam_body(const stk__optim_scalars_t *k, float *restrict p, const float *restrict gr, float *restrict m,
          float *restrict v, float *restrict vmax, size_t n, const int decoupled, const int use_wd, const int ams)
{
    const float b1 = k->b1, omb1 = k->omb1, b2 = k->b2, omb2 = k->omb2, neg_step = k->neg_step;
    const float bc2s = k->bc2s, eps = k->eps, wd = k->wd, decay = k->decay, sign = k->sign;
    float root[SQRT_BLOCK];
    for (size_t at = 0; at < n; at += SQRT_BLOCK) {
        size_t len = n - at < SQRT_BLOCK ? n - at : SQRT_BLOCK;
        float *restrict pp = p + at, *restrict mm = m + at, *restrict vv = v + at;
        const float *restrict gg = gr + at;
        for (size_t j = 0; j < len; j++) {
            float d = gg[j] * sign;
            if (decoupled)
                pp[j] = pp[j] * decay;
            if (use_wd)
                d = d + wd * pp[j];
            mm[j] = mm[j] * b1 + omb1 * d;
            float x = vv[j] * b2 + (omb2 * d) * d;
            vv[j] = x;
            if (ams) {
                /* torch.maximum propagates NaN */
                float a = vmax[at + j];
                a = (a != a || a > x) ? a : x;
                vmax[at + j] = a;
                x = a;
            }
            root[j] = x;
        }
        sqrt_block(root, len);
        for (size_t j = 0; j < len; j++)
            pp[j] = pp[j] + (neg_step * mm[j]) / (root[j] / bc2s + eps);
    }
}

static void adam(const stk__optim_scalars_t *k, float *restrict p, const float *restrict gr, float *restrict m,
                 float *restrict v, float *restrict vmax, size_t n)
{
    if (k->amsgrad) {
        if (k->decoupled)
            adam_body(k, p, gr, m, v, vmax, n, 1, 0, 1);
        else if (k->use_wd)
            adam_body(k, p, gr, m, v, vmax, n, 0, 1, 1);
        else
            adam_body(k, p, gr, m, v, vmax, n, 0, 0, 1);
    } else {
        if (k->decoupled)
            adam_body(k, p, gr, m, v, vmax, n, 1, 0, 0);
        else if (k->use_wd)
            adam_body(k, p, gr, m, v, vmax, n, 0, 1, 0);
        else
            adam_body(k, p, gr, m, v, vmax, n, 0, 0, 0);
    }
}

static inline __attribute__((always_inline)) void
rmsprop_body(const stk__optim_scalars_t *k, float *restrict p, const float *restrict gr, float *restrict sq,
             float *restrict buf, float *restrict ga, size_t n, const int use_wd, const int cen, const int use_mom)
{
    const float a = k->alpha, oma = k->oma, eps = k->eps, wd = k->wd, mom = k->mom, neglr = k->neglr;
    const float sign = k->sign;
    float root[SQRT_BLOCK], dd[SQRT_BLOCK];
    for (size_t at = 0; at < n; at += SQRT_BLOCK) {
        size_t len = n - at < SQRT_BLOCK ? n - at : SQRT_BLOCK;
        float *restrict pp = p + at, *restrict ss = sq + at;
        const float *restrict gg = gr + at;
        for (size_t j = 0; j < len; j++) {
            float d = gg[j] * sign;
            if (use_wd)
                d = d + wd * pp[j];
            dd[j] = d;
            float s = ss[j] * a + (oma * d) * d;
            ss[j] = s;
            if (cen) {
                float x = ga[at + j] * a + oma * d;
                ga[at + j] = x;
                s = s + (-x) * x;
            }
            root[j] = s;
        }
        sqrt_block(root, len);
        for (size_t j = 0; j < len; j++) {
            float avg = root[j] + eps;
            if (use_mom) {
                float b = buf[at + j] * mom + dd[j] / avg;
                buf[at + j] = b;
                pp[j] = pp[j] + neglr * b;
            } else {
                pp[j] = pp[j] + (neglr * dd[j]) / avg;
            }
        }
    }
}

static void rmsprop(const stk__optim_scalars_t *k, float *restrict p, const float *restrict gr, float *restrict sq,
                    float *restrict buf, float *restrict ga, size_t n)
{
    /* Eight constant-flag instances, one per combination. */
#define RMS(W, C, M) rmsprop_body(k, p, gr, sq, buf, ga, n, W, C, M)
    if (k->use_wd) {
        if (k->centered) {
            if (k->use_mom) RMS(1, 1, 1); else RMS(1, 1, 0);
        } else {
            if (k->use_mom) RMS(1, 0, 1); else RMS(1, 0, 0);
        }
    } else {
        if (k->centered) {
            if (k->use_mom) RMS(0, 1, 1); else RMS(0, 1, 0);
        } else {
            if (k->use_mom) RMS(0, 0, 1); else RMS(0, 0, 0);
        }
    }
#undef RMS
}

void stk__optim_kernel(const stk__optim_scalars_t *k, float *p, const float *g, float *s0, float *s1, float *s2,
                       size_t n)
{
    switch (k->kind) {
    case STK_OPTIM_SGD:
        sgd(k, p, g, s0, n);
        break;
    case STK_OPTIM_ADAM:
    case STK_OPTIM_ADAMW:
        adam(k, p, g, s0, s1, s2, n);
        break;
    case STK_OPTIM_RMSPROP:
        rmsprop(k, p, g, s0, s1, s2, n);
        break;
    }
}
