/* SPDX-License-Identifier: MIT */
/* Batch-level mixup and cutmix with soft labels (as torchvision.transforms.v2
 * MixUp / CutMix: partner = previous image, one Beta(alpha, alpha) lambda
 * per batch). Draws are keyed by (seed, epoch, batch index), so a batch
 * mixes the same way whichever process collates it. */
#include "augment_internal.h"

#include <errno.h>
#include <math.h>
#include <string.h>

#define MIX_STREAM 0x6d6978u /* "mix" */

void stk_augment_mix_config_default(stk_augment_mix_config_t *cfg)
{
    if (cfg)
        *cfg = (stk_augment_mix_config_t){.mixup_alpha = 0.2f, .cutmix_alpha = 0.0f, .prob = 1.0f,
                                          .switch_prob = 0.5f, .label_smoothing = 0.0f};
}

/* (0, 1]: safe under log and as a divisor. */
static double open_uniform(stk_rng_t *r)
{
    return 1.0 - stk_rng_uniform_f64(r);
}

static double std_normal(stk_rng_t *r)
{
    double u1 = open_uniform(r), u2 = stk_rng_uniform_f64(r);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* Gamma(a, 1): Marsaglia and Tsang (2000); a < 1 by boosting to a + 1. */
static double gamma_draw(stk_rng_t *r, double a)
{
    double boost = 1.0;
    if (a < 1.0) {
        boost = pow(open_uniform(r), 1.0 / a);
        a += 1.0;
    }
    double d = a - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x, v;
        do {
            x = std_normal(r);
            v = 1.0 + c * x;
        } while (v <= 0.0);
        v = v * v * v;
        double u = open_uniform(r);
        if (log(u) < 0.5 * x * x + d - d * v + d * log(v))
            return d * v * boost;
    }
}

static double beta_draw(stk_rng_t *r, double a)
{
    double x = gamma_draw(r, a), y = gamma_draw(r, a);
    /* Both can underflow for tiny alpha; Beta(a, a) is symmetric. */
    return x + y > 0 ? x / (x + y) : 0.5;
}

static void blend(float *restrict out, const float *restrict a, const float *restrict b, size_t n,
                  float la, float lb)
{
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] * la + b[i] * lb;
}

int stk_augment_mix_batch(const stk_augment_mix_config_t *cfg, const float *in, float *out, size_t n,
                          uint32_t c, uint32_t h, uint32_t w, const int64_t *labels,
                          uint32_t num_classes, float *soft_labels, uint64_t seed, uint64_t epoch,
                          uint64_t batch_index, float *lambda_out)
{
    if (!cfg || !in || !out || !labels || !soft_labels || n == 0 || in == out || c == 0 || h == 0 ||
        w == 0 || num_classes == 0)
        return stk__error(-EINVAL, "mix: NULL or empty argument (or in == out)");
    if (!(cfg->mixup_alpha >= 0) || !(cfg->cutmix_alpha >= 0) || !isfinite(cfg->mixup_alpha) ||
        !isfinite(cfg->cutmix_alpha) || !(cfg->prob >= 0 && cfg->prob <= 1) ||
        !(cfg->switch_prob >= 0 && cfg->switch_prob <= 1) ||
        !(cfg->label_smoothing >= 0 && cfg->label_smoothing < 1))
        return stk__error(STK_ECONFIG,
                          "mix: bad config (mixup_alpha %g, cutmix_alpha %g, prob %g, "
                          "switch_prob %g, label_smoothing %g)",
                          (double)cfg->mixup_alpha, (double)cfg->cutmix_alpha, (double)cfg->prob,
                          (double)cfg->switch_prob, (double)cfg->label_smoothing);
    for (size_t i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= (int64_t)num_classes)
            return stk__error(STK_EDATA, "mix: label %lld of sample %zu is outside [0, %u)",
                              (long long)labels[i], i, num_classes);

    stk_rng_t rng;
    stk_rng_init(&rng, stk_rng_mix(stk_rng_mix(seed, epoch), batch_index), MIX_STREAM);
    bool mixup = cfg->mixup_alpha > 0, cutmix = cfg->cutmix_alpha > 0;
    bool apply = stk_rng_uniform_f64(&rng) < cfg->prob && (mixup || cutmix);
    if (apply && mixup && cutmix)
        mixup = !(stk_rng_uniform_f64(&rng) < cfg->switch_prob);
    double lam = 1.0;
    size_t plane = (size_t)h * w, img = plane * c;
    if (!apply) {
        memcpy(out, in, n * img * sizeof *out);
    } else if (mixup) {
        lam = beta_draw(&rng, cfg->mixup_alpha);
        for (size_t i = 0; i < n; i++)
            blend(out + i * img, in + i * img, in + ((i + n - 1) % n) * img, img, (float)lam,
                  (float)(1.0 - lam));
    } else {
        lam = beta_draw(&rng, cfg->cutmix_alpha);
        int64_t rx = (int64_t)stk_rng_below(&rng, w), ry = (int64_t)stk_rng_below(&rng, h);
        double r = 0.5 * sqrt(1.0 - lam);
        int64_t rw = (int64_t)(r * w), rh = (int64_t)(r * h);
        int64_t x1 = rx - rw < 0 ? 0 : rx - rw, y1 = ry - rh < 0 ? 0 : ry - rh;
        int64_t x2 = rx + rw > w ? w : rx + rw, y2 = ry + rh > h ? h : ry + rh;
        memcpy(out, in, n * img * sizeof *out);
        for (size_t i = 0; i < n; i++) {
            const float *partner = in + ((i + n - 1) % n) * img;
            for (uint32_t ch = 0; ch < c; ch++)
                for (int64_t y = y1; y < y2; y++) {
                    size_t o = i * img + ch * plane + (size_t)y * w + (size_t)x1;
                    memcpy(out + o, partner + (o - i * img), (size_t)(x2 - x1) * sizeof *out);
                }
        }
        lam = 1.0 - (double)((x2 - x1) * (y2 - y1)) / (double)plane;
    }
    float eps = cfg->label_smoothing;
    float off = eps / (float)num_classes, on = 1.0f - eps + off;
    for (size_t i = 0; i < n; i++) {
        float *row = soft_labels + i * num_classes;
        for (uint32_t k = 0; k < num_classes; k++)
            row[k] = off;
        int64_t a = labels[i], b = labels[(i + n - 1) % n];
        row[a] += (on - off) * (float)lam;
        row[b] += (on - off) * (float)(1.0 - lam);
    }
    if (lambda_out)
        *lambda_out = (float)lam;
    return 0;
}
