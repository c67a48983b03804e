/* SPDX-License-Identifier: MIT */
/* Dynamic loss scaling's state machine (PyTorch's GradScaler.update): no
 * backend in it, so that the CPU tests drive every transition. The check
 * it is fed is the engine's (stk_model_unscale_grads), done where the
 * gradients live. */
#include "internal.h"
#include "stoker/train.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>

struct stk_loss_scaler {
    stk_loss_scaler_config_t cfg;
    float scale;
    float growth, backoff; /* as PyTorch: the factors are float32 too */
    uint32_t clean;        /* clean steps since the last change */
    uint64_t skipped;
};

void stk_loss_scaler_config_default(stk_loss_scaler_config_t *cfg)
{
    if (!cfg)
        return;
    cfg->init_scale = 65536.0;
    cfg->growth_factor = 2.0;
    cfg->backoff_factor = 0.5;
    cfg->growth_interval = 2000;
}

int stk_loss_scaler_create(stk_loss_scaler_t **out, const stk_loss_scaler_config_t *cfg)
{
    if (!out || !cfg)
        return stk__error(-EINVAL, "stk_loss_scaler_create: NULL argument");
    *out = NULL;
    if (!(cfg->init_scale > 0) || !(cfg->init_scale <= FLT_MAX))
        return stk__error(STK_ECONFIG, "loss scaler: init_scale %g is not in (0, %g]", cfg->init_scale,
                          (double)FLT_MAX);
    if (!(cfg->growth_factor > 1) || !isfinite(cfg->growth_factor))
        return stk__error(STK_ECONFIG, "loss scaler: growth_factor %g is not a finite number > 1",
                          cfg->growth_factor);
    if (!(cfg->backoff_factor > 0 && cfg->backoff_factor < 1))
        return stk__error(STK_ECONFIG, "loss scaler: backoff_factor %g is not in (0, 1)", cfg->backoff_factor);
    if (cfg->growth_interval < 1)
        return stk__error(STK_ECONFIG, "loss scaler: growth_interval is 0 (at least 1 clean step)");
    stk_loss_scaler_t *s = calloc(1, sizeof *s);
    if (!s)
        return stk__error(-ENOMEM, "loss scaler: out of memory");
    s->cfg = *cfg;
    s->scale = (float)cfg->init_scale;
    s->growth = (float)cfg->growth_factor;
    s->backoff = (float)cfg->backoff_factor;
    *out = s;
    return 0;
}

void stk_loss_scaler_destroy(stk_loss_scaler_t **s)
{
    if (!s || !*s)
        return;
    free(*s);
    *s = NULL;
}

float stk_loss_scaler_scale(const stk_loss_scaler_t *s)
{
    return s ? s->scale : 1.0f;
}

uint64_t stk_loss_scaler_skipped(const stk_loss_scaler_t *s)
{
    return s ? s->skipped : 0;
}

void stk_loss_scaler_get_state(const stk_loss_scaler_t *s, stk_loss_scaler_state_t *out)
{
    if (!out)
        return;
    *out = (stk_loss_scaler_state_t){.scale = s ? s->scale : 1.0f, .clean = s ? s->clean : 0,
                                     .skipped = s ? s->skipped : 0};
}

int stk_loss_scaler_set_state(stk_loss_scaler_t *s, const stk_loss_scaler_state_t *st)
{
    if (!s || !st)
        return stk__error(-EINVAL, "stk_loss_scaler_set_state: NULL argument");
    if (!(st->scale > 0) || !isfinite(st->scale))
        return stk__error(-EINVAL, "loss scaler: scale %g is not a finite number > 0", (double)st->scale);
    s->scale = st->scale;
    s->clean = st->clean;
    s->skipped = st->skipped;
    return 0;
}

int stk_loss_scaler_update(stk_loss_scaler_t *s, int nonfinite)
{
    if (!s)
        return 0;
    if (nonfinite) {
        /* Never to zero: a scale that underflowed would zero every
         * gradient and hide the overflow it is meant to catch. */
        float lower = s->scale * s->backoff;
        if (lower > 0)
            s->scale = lower;
        s->clean = 0;
        s->skipped++;
        return 1;
    }
    if (++s->clean >= s->cfg.growth_interval) {
        float higher = s->scale * s->growth;
        if (isfinite(higher))
            s->scale = higher;
        s->clean = 0;
    }
    return 0;
}
