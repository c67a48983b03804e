/* SPDX-License-Identifier: MIT */
/* Learning-rate schedulers: a chain of phases (SequentialLR), each a closed
 * form of local time, evaluated in double and written into the optimizer's
 * group lrs; ReduceLROnPlateau as a stateful single phase. Also the state
 * blob; the text form is sched_parse.c's. */
#include "internal.h"
#include "optim_util.h"
#include "stoker/optim.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SCHED_MAGIC "STKSCHD"
#define SCHED_VERSION 1u

struct stk_sched {
    stk_optim_t *opt;
    stk_sched_config_t cfg; /* resolved: lengths and derived counts filled */
    int64_t start[STK_SCHED_MAX_PHASES]; /* milestone of each phase */
    uint64_t fingerprint;
    size_t ng;
    int64_t t;
    double *base;
    double *lr;       /* last value set, per group (PLATEAU: its state) */
    /* PLATEAU */
    double best;
    int64_t num_bad;
    int64_t cooldown_counter;
};

const char *stk_sched_kind_name(stk_sched_kind_t kind)
{
    switch (kind) {
    case STK_SCHED_CONSTANT: return "constant";
    case STK_SCHED_STEP: return "step";
    case STK_SCHED_MULTISTEP: return "multistep";
    case STK_SCHED_EXPONENTIAL: return "exponential";
    case STK_SCHED_COSINE: return "cosine";
    case STK_SCHED_LINEAR: return "linear";
    case STK_SCHED_COOLDOWN: return "cooldown";
    case STK_SCHED_ONECYCLE: return "onecycle";
    case STK_SCHED_PLATEAU: return "plateau";
    }
    return "invalid";
}

void stk_sched_phase_default(stk_sched_phase_t *p, stk_sched_kind_t kind)
{
    if (!p)
        return;
    memset(p, 0, sizeof(*p));
    p->kind = kind;
    p->factor = kind == STK_SCHED_PLATEAU ? 0.1 : 1.0;
    p->gamma = 0.1;
    p->start_factor = 1.0 / 3;
    p->end_factor = 1.0;
    p->pct_start = 0.3;
    p->div_factor = 25.0;
    p->final_div_factor = 1e4;
    p->cycle_momentum = 1;
    p->base_momentum = 0.85;
    p->max_momentum = 0.95;
    p->patience = 10;
    p->threshold = 1e-4;
    p->eps = 1e-8;
}

void stk_sched_config_default(stk_sched_config_t *cfg)
{
    if (cfg)
        memset(cfg, 0, sizeof(*cfg));
}

/* ---- values ----------------------------------------------------------- */

static double onecycle_anneal(const stk_sched_phase_t *p, double start, double end, double pct)
{
    if (p->anneal_linear)
        return (end - start) * pct + start;
    double cos_out = cos(M_PI * pct) + 1;
    return end + (start - end) / 2.0 * cos_out;
}

/* OneCycleLR.get_lr, PyTorch's arithmetic: lr and (cycled) momentum at k. */
static void onecycle_value(const stk_sched_phase_t *p, double max_lr, int64_t k, double *lr, double *mom)
{
    double total = (double)p->total_steps;
    double initial = max_lr / p->div_factor, min_lr = initial / p->final_div_factor;
    double ends[3], lr_from[3], lr_to[3], m_from[3], m_to[3];
    int nph;
    /* PyTorch extrapolates at k == total_steps (below min_lr: a negative lr
     * with linear annealing) and raises after; we hold the final value. */
    if (k > p->total_steps - 1)
        k = p->total_steps - 1;
    if (p->three_phase) {
        nph = 3;
        ends[0] = p->pct_start * total - 1;
        ends[1] = 2 * p->pct_start * total - 2;
        ends[2] = total - 1;
        lr_from[0] = initial, lr_to[0] = max_lr, m_from[0] = p->max_momentum, m_to[0] = p->base_momentum;
        lr_from[1] = max_lr, lr_to[1] = initial, m_from[1] = p->base_momentum, m_to[1] = p->max_momentum;
        lr_from[2] = initial, lr_to[2] = min_lr, m_from[2] = p->max_momentum, m_to[2] = p->max_momentum;
    } else {
        nph = 2;
        ends[0] = p->pct_start * total - 1;
        ends[1] = total - 1;
        lr_from[0] = initial, lr_to[0] = max_lr, m_from[0] = p->max_momentum, m_to[0] = p->base_momentum;
        lr_from[1] = max_lr, lr_to[1] = min_lr, m_from[1] = p->base_momentum, m_to[1] = p->max_momentum;
    }
    double start_step = 0, step = (double)k;
    for (int i = 0; i < nph; i++) {
        if (step <= ends[i] || i == nph - 1) {
            double span = ends[i] - start_step;
            /* PyTorch divides by zero here; a phase of no length is done. */
            double pct = span != 0 ? (step - start_step) / span : 1.0;
            *lr = onecycle_anneal(p, lr_from[i], lr_to[i], pct);
            *mom = onecycle_anneal(p, m_from[i], m_to[i], pct);
            return;
        }
        start_step = ends[i];
    }
}

/* Value of phase i at its local time k for group g. *mom is set (and
 * *has_mom = 1) when the phase cycles momentum. */
static double phase_value(const stk_sched_t *s, size_t i, int64_t k, size_t g, double *mom, int *has_mom)
{
    const stk_sched_phase_t *p = &s->cfg.phases[i];
    double b = s->base[g];
    switch (p->kind) {
    case STK_SCHED_CONSTANT:
        return k < p->total_iters ? b * p->factor : b;
    case STK_SCHED_STEP:
        return b * pow(p->gamma, (double)(k / p->step_size));
    case STK_SCHED_MULTISTEP: {
        int64_t passed = 0;
        for (size_t j = 0; j < p->n_milestones; j++)
            passed += p->milestones[j] <= k;
        return b * pow(p->gamma, (double)passed);
    }
    case STK_SCHED_EXPONENTIAL:
        return b * pow(p->gamma, (double)k);
    case STK_SCHED_COSINE:
        return p->eta_min + (b - p->eta_min) * (1 + cos(M_PI * (double)k / (double)p->t_max)) / 2;
    case STK_SCHED_LINEAR: {
        int64_t kk = k < p->total_iters ? k : p->total_iters;
        return b * (p->start_factor + (p->end_factor - p->start_factor) * (double)kk / (double)p->total_iters);
    }
    case STK_SCHED_COOLDOWN: {
        double from = b;
        if (i > 0) {
            double m;
            int hm;
            from = phase_value(s, i - 1, s->cfg.phases[i - 1].steps, g, &m, &hm);
        }
        int64_t kk = k < p->total_iters ? k : p->total_iters;
        return from + (b * p->final_factor - from) * (double)kk / (double)p->total_iters;
    }
    case STK_SCHED_ONECYCLE: {
        double lr = 0, m = 0;
        onecycle_value(p, p->max_lr > 0 ? p->max_lr : b, k, &lr, &m);
        if (p->cycle_momentum) {
            *mom = m;
            *has_mom = 1;
        }
        return lr;
    }
    case STK_SCHED_PLATEAU:
        return s->lr[g];
    }
    return b;
}

/* Writes the values at s->t into s->lr and the optimizer. */
static void apply(stk_sched_t *s)
{
    size_t i = 0;
    while (i + 1 < s->cfg.n_phases && s->start[i + 1] <= s->t)
        i++;
    int64_t k = s->t - s->start[i];
    for (size_t g = 0; g < s->ng; g++) {
        double mom = 0;
        int has_mom = 0;
        double lr = phase_value(s, i, k, g, &mom, &has_mom);
        if (!(lr >= 0))
            lr = 0; /* a negative eta_min, say: the optimizer refuses < 0 */
        s->lr[g] = lr;
        stk_optim_set_lr(s->opt, g, lr);
        if (has_mom)
            stk_optim_set_momentum(s->opt, g, mom);
    }
}

/* ---- configuration ---------------------------------------------------- */

static int kind_valid(stk_sched_kind_t k)
{
    return k >= STK_SCHED_CONSTANT && k <= STK_SCHED_PLATEAU;
}

#define PBAD(...) stk__error(STK_ECONFIG, __VA_ARGS__)

/* Checks cfg and fills lengths and derived counts into *out. */
static int resolve(const stk_sched_config_t *cfg, stk_sched_config_t *out)
{
    *out = *cfg;
    size_t n = cfg->n_phases;
    if (n < 1 || n > STK_SCHED_MAX_PHASES)
        return PBAD("schedule: %zu phases (1 to %d)", n, STK_SCHED_MAX_PHASES);
    if (cfg->total_steps < 0)
        return PBAD("schedule: total_steps %lld < 0", (long long)cfg->total_steps);
    int64_t known = 0;
    int open_mid = -1;
    for (size_t i = 0; i < n; i++) {
        const stk_sched_phase_t *p = &cfg->phases[i];
        if (!kind_valid(p->kind))
            return PBAD("schedule phase %zu: invalid kind %d", i, (int)p->kind);
        if (p->steps < 0)
            return PBAD("schedule phase %zu (%s): steps %lld < 0", i, stk_sched_kind_name(p->kind),
                        (long long)p->steps);
        if (p->kind == STK_SCHED_PLATEAU && n > 1)
            return PBAD("schedule phase %zu (plateau): plateau cannot be chained with other phases", i);
        if (p->steps == 0 && i + 1 < n) {
            if (open_mid >= 0)
                return PBAD("schedule phase %zu (%s): needs steps (only one middle phase may be open-ended)", i,
                            stk_sched_kind_name(p->kind));
            open_mid = (int)i;
        }
        known += p->steps;
    }
    if (open_mid >= 0) {
        if (cfg->total_steps <= known)
            return PBAD("schedule phase %d (%s): open-ended in the middle needs the run's length: total_steps > "
                        "%lld (the other phases' steps), got %lld", open_mid, stk_sched_kind_name(cfg->phases[open_mid].kind),
                        (long long)known, (long long)cfg->total_steps);
        out->phases[open_mid].steps = cfg->total_steps - known;
    } else if (out->phases[n - 1].steps == 0 && cfg->total_steps > known) {
        /* The last phase runs on regardless; its length in the run only
         * sizes its defaults (T_max, total_iters, total_steps). */
        out->phases[n - 1].steps = cfg->total_steps - known;
    }
    for (size_t i = 0; i < n; i++) {
        stk_sched_phase_t *p = &out->phases[i];
        const char *kn = stk_sched_kind_name(p->kind);
#define NEED(cond, key, ...)                                                                       \
    do {                                                                                           \
        if (!(cond))                                                                               \
            return PBAD("schedule phase %zu (%s): invalid %s: " __VA_ARGS__);                      \
    } while (0)
/* A count that defaults to the phase length when neither it, the phase
 * length nor the run's length (total_steps) is known. */
#define NEED_LEN(val, key)                                                                                    \
    do {                                                                                                      \
        if ((val) == 0)                                                                                       \
            return PBAD("schedule phase %zu (%s): key '%s': needs the run's length, which is unknown: give %s, "  \
                        "a phase length ('%s:N' in steps or '%s:Nep' in epochs) or the run's total_steps", i, kn, \
                        key, key, kn, kn);                                                                    \
    } while (0)
        switch (p->kind) {
        case STK_SCHED_CONSTANT:
            if (p->total_iters == 0)
                p->total_iters = p->steps;
            NEED(isfinite(p->factor) && p->factor >= 0 && p->factor <= 1, "factor", "%g (must be in [0, 1])", i,
                 kn, "factor", p->factor);
            NEED(p->total_iters >= 0, "total_iters", "%lld", i, kn, "total_iters", (long long)p->total_iters);
            break;
        case STK_SCHED_STEP:
            NEED(p->step_size > 0, "step_size", "%lld (required, > 0)", i, kn, "step_size",
                 (long long)p->step_size);
            /* fall through */
        case STK_SCHED_EXPONENTIAL:
            NEED(isfinite(p->gamma) && p->gamma >= 0, "gamma", "%g (must be >= 0)", i, kn, "gamma", p->gamma);
            break;
        case STK_SCHED_MULTISTEP:
            NEED(isfinite(p->gamma) && p->gamma >= 0, "gamma", "%g (must be >= 0)", i, kn, "gamma", p->gamma);
            NEED(p->n_milestones >= 1 && p->n_milestones <= STK_SCHED_MAX_MILESTONES, "milestones",
                 "%zu of them (1 to %d)", i, kn, "milestones", p->n_milestones, STK_SCHED_MAX_MILESTONES);
            for (size_t j = 0; j < p->n_milestones; j++)
                NEED(p->milestones[j] >= 0 && (j == 0 || p->milestones[j] >= p->milestones[j - 1]),
                     "milestones", "must be >= 0 and ascending (milestone %zu)", i, kn, "milestones", j);
            break;
        case STK_SCHED_COSINE:
            if (p->t_max == 0)
                p->t_max = p->steps;
            NEED_LEN(p->t_max, "T_max");
            NEED(p->t_max > 0, "T_max", "%lld (give T_max or the phase length)", i, kn, "T_max",
                 (long long)p->t_max);
            NEED(isfinite(p->eta_min), "eta_min", "%g", i, kn, "eta_min", p->eta_min);
            break;
        case STK_SCHED_LINEAR:
            if (p->total_iters == 0)
                p->total_iters = p->steps ? p->steps : 5;
            NEED(p->total_iters > 0, "total_iters", "%lld", i, kn, "total_iters", (long long)p->total_iters);
            NEED(p->start_factor >= 0 && p->start_factor <= 1, "start_factor", "%g (must be in [0, 1])", i, kn,
                 "start_factor", p->start_factor);
            NEED(p->end_factor >= 0 && p->end_factor <= 1, "end_factor", "%g (must be in [0, 1])", i, kn,
                 "end_factor", p->end_factor);
            break;
        case STK_SCHED_COOLDOWN:
            if (p->total_iters == 0)
                p->total_iters = p->steps;
            NEED_LEN(p->total_iters, "total_iters");
            NEED(p->total_iters > 0, "total_iters", "%lld (give total_iters or the phase length)", i, kn,
                 "total_iters", (long long)p->total_iters);
            NEED(isfinite(p->final_factor) && p->final_factor >= 0, "final_factor", "%g (must be >= 0)", i, kn,
                 "final_factor", p->final_factor);
            break;
        case STK_SCHED_ONECYCLE:
            if (p->total_steps == 0)
                p->total_steps = p->steps ? p->steps : cfg->total_steps;
            NEED_LEN(p->total_steps, "total_steps");
            NEED(p->total_steps > 0, "total_steps", "%lld (give total_steps, the phase length or the "
                 "config's total_steps)", i, kn, "total_steps", (long long)p->total_steps);
            NEED(p->pct_start >= 0 && p->pct_start <= 1, "pct_start", "%g (must be in [0, 1])", i, kn,
                 "pct_start", p->pct_start);
            NEED(isfinite(p->max_lr) && p->max_lr >= 0, "max_lr", "%g", i, kn, "max_lr", p->max_lr);
            NEED(isfinite(p->div_factor) && p->div_factor > 0, "div_factor", "%g (must be > 0)", i, kn,
                 "div_factor", p->div_factor);
            NEED(isfinite(p->final_div_factor) && p->final_div_factor > 0, "final_div_factor",
                 "%g (must be > 0)", i, kn, "final_div_factor", p->final_div_factor);
            if (p->cycle_momentum) {
                NEED(p->base_momentum >= 0 && p->base_momentum < 1, "base_momentum", "%g (must be in [0, 1))", i,
                     kn, "base_momentum", p->base_momentum);
                NEED(p->max_momentum >= 0 && p->max_momentum < 1, "max_momentum", "%g (must be in [0, 1))", i,
                     kn, "max_momentum", p->max_momentum);
            }
            break;
        case STK_SCHED_PLATEAU:
            NEED(p->factor >= 0 && p->factor < 1, "factor", "%g (must be in [0, 1))", i, kn, "factor", p->factor);
            NEED(p->patience >= 0, "patience", "%lld", i, kn, "patience", (long long)p->patience);
            NEED(p->cooldown >= 0, "cooldown", "%lld", i, kn, "cooldown", (long long)p->cooldown);
            NEED(isfinite(p->threshold), "threshold", "%g", i, kn, "threshold", p->threshold);
            NEED(isfinite(p->min_lr) && p->min_lr >= 0, "min_lr", "%g", i, kn, "min_lr", p->min_lr);
            NEED(isfinite(p->eps) && p->eps >= 0, "eps", "%g", i, kn, "eps", p->eps);
            break;
        }
#undef NEED
#undef NEED_LEN
    }
    return 0;
}

/* Hash of the resolved schedule, field by field (no struct padding). */
static uint64_t fingerprint(const stk_sched_config_t *c)
{
    uint8_t tmp[sizeof(stk_sched_phase_t) * 2];
    uint64_t h = 0x9e3779b97f4a7c15ull ^ c->n_phases;
    for (size_t i = 0; i < c->n_phases; i++) {
        const stk_sched_phase_t *p = &c->phases[i];
        stk__blobw_t w = {tmp, 0, sizeof(tmp)};
        stk__w_u32(&w, (uint32_t)p->kind);
        stk__w_u64(&w, (uint64_t)p->steps);
        switch (p->kind) {
        case STK_SCHED_CONSTANT:
            stk__w_f64(&w, p->factor);
            stk__w_u64(&w, (uint64_t)p->total_iters);
            break;
        case STK_SCHED_STEP:
            stk__w_u64(&w, (uint64_t)p->step_size);
            stk__w_f64(&w, p->gamma);
            break;
        case STK_SCHED_MULTISTEP:
            stk__w_f64(&w, p->gamma);
            for (size_t j = 0; j < p->n_milestones; j++)
                stk__w_u64(&w, (uint64_t)p->milestones[j]);
            break;
        case STK_SCHED_EXPONENTIAL: stk__w_f64(&w, p->gamma); break;
        case STK_SCHED_COSINE:
            stk__w_u64(&w, (uint64_t)p->t_max);
            stk__w_f64(&w, p->eta_min);
            break;
        case STK_SCHED_LINEAR:
            stk__w_u64(&w, (uint64_t)p->total_iters);
            stk__w_f64(&w, p->start_factor);
            stk__w_f64(&w, p->end_factor);
            break;
        case STK_SCHED_COOLDOWN:
            stk__w_u64(&w, (uint64_t)p->total_iters);
            stk__w_f64(&w, p->final_factor);
            break;
        case STK_SCHED_ONECYCLE:
            stk__w_f64(&w, p->max_lr);
            stk__w_u64(&w, (uint64_t)p->total_steps);
            stk__w_f64(&w, p->pct_start);
            stk__w_u32(&w, (uint32_t)p->anneal_linear);
            stk__w_f64(&w, p->div_factor);
            stk__w_f64(&w, p->final_div_factor);
            stk__w_u32(&w, (uint32_t)p->three_phase);
            stk__w_u32(&w, (uint32_t)p->cycle_momentum);
            stk__w_f64(&w, p->base_momentum);
            stk__w_f64(&w, p->max_momentum);
            break;
        case STK_SCHED_PLATEAU:
            stk__w_u32(&w, (uint32_t)p->mode_max);
            stk__w_f64(&w, p->factor);
            stk__w_u64(&w, (uint64_t)p->patience);
            stk__w_f64(&w, p->threshold);
            stk__w_u32(&w, (uint32_t)p->threshold_abs);
            stk__w_u64(&w, (uint64_t)p->cooldown);
            stk__w_f64(&w, p->min_lr);
            stk__w_f64(&w, p->eps);
            break;
        }
        h = (h ^ stk__blob_hash(tmp, w.len)) * 0x100000001b3ull;
    }
    return h;
}

/* ---- lifetime and stepping -------------------------------------------- */

static void plateau_reset(stk_sched_t *s)
{
    const stk_sched_phase_t *p = &s->cfg.phases[0];
    s->best = p->mode_max ? -INFINITY : INFINITY;
    s->num_bad = 0;
    s->cooldown_counter = 0;
}

int stk_sched_create_from_text(stk_sched_t **out, stk_optim_t *opt, const char *text, int64_t steps_per_epoch,
                               int64_t total_steps)
{
    if (!out || !opt || !text)
        return stk__error(-EINVAL, "stk_sched_create_from_text: NULL argument");
    *out = NULL;
    if (total_steps < 0 || steps_per_epoch < 0)
        return stk__error(-EINVAL, "stk_sched_create_from_text: negative steps_per_epoch %lld or total_steps %lld",
                          (long long)steps_per_epoch, (long long)total_steps);
    stk_sched_config_t cfg;
    stk_sched_config_default(&cfg);
    cfg.total_steps = total_steps;
    int rc = stk_sched_parse(text, steps_per_epoch, &cfg);
    return rc ? rc : stk_sched_create(out, &cfg, opt);
}

int stk_sched_create(stk_sched_t **out, const stk_sched_config_t *cfg, stk_optim_t *opt)
{
    if (!out || !cfg || !opt)
        return stk__error(-EINVAL, "stk_sched_create: NULL argument");
    *out = NULL;
    stk_sched_config_t r;
    int rc = resolve(cfg, &r);
    if (rc)
        return rc;
    size_t ng = stk_optim_num_groups(opt);
    const stk_sched_phase_t *p0 = &r.phases[0];
    stk_sched_t *s = calloc(1, sizeof(*s));
    if (!s)
        return stk__error(-ENOMEM, "scheduler: out of memory");
    s->opt = opt;
    s->cfg = r;
    s->ng = ng;
    s->fingerprint = fingerprint(&r);
    for (size_t i = 1; i < r.n_phases; i++)
        s->start[i] = s->start[i - 1] + r.phases[i - 1].steps;
    s->base = calloc(ng ? ng : 1, sizeof(double));
    s->lr = calloc(ng ? ng : 1, sizeof(double));
    if (!s->base || !s->lr) {
        stk_sched_destroy(&s);
        return stk__error(-ENOMEM, "scheduler: out of memory");
    }
    for (size_t g = 0; g < ng; g++) {
        stk_optim_get_base_lr(opt, g, &s->base[g]);
        s->lr[g] = s->base[g];
    }
    if (p0->kind == STK_SCHED_PLATEAU)
        plateau_reset(s);
    apply(s);
    *out = s;
    return 0;
}

void stk_sched_destroy(stk_sched_t **s)
{
    if (!s || !*s)
        return;
    free((*s)->base);
    free((*s)->lr);
    free(*s);
    *s = NULL;
}

static int is_plateau(const stk_sched_t *s)
{
    return s->cfg.phases[0].kind == STK_SCHED_PLATEAU;
}

int stk_sched_step(stk_sched_t *s)
{
    if (!s)
        return stk__error(-EINVAL, "stk_sched_step: NULL argument");
    if (is_plateau(s))
        return stk__error(STK_ESTATE, "plateau scheduler: step it with stk_sched_step_metric");
    s->t++;
    apply(s);
    return 0;
}

/* ReduceLROnPlateau.step, in PyTorch's order. */
static void plateau_step(stk_sched_t *s, double cur)
{
    const stk_sched_phase_t *p = &s->cfg.phases[0];
    int better;
    if (!p->mode_max)
        better = p->threshold_abs ? cur < s->best - p->threshold : cur < s->best * (1. - p->threshold);
    else
        better = p->threshold_abs ? cur > s->best + p->threshold : cur > s->best * (p->threshold + 1.);
    if (better) {
        s->best = cur;
        s->num_bad = 0;
    } else {
        s->num_bad++;
    }
    if (s->cooldown_counter > 0) {
        s->cooldown_counter--;
        s->num_bad = 0;
    }
    if (s->num_bad > p->patience) {
        for (size_t g = 0; g < s->ng; g++) {
            double old = s->lr[g];
            double nw = old * p->factor;
            if (nw < p->min_lr)
                nw = p->min_lr;
            if (old - nw > p->eps)
                s->lr[g] = nw;
        }
        s->cooldown_counter = p->cooldown;
        s->num_bad = 0;
    }
}

int stk_sched_step_metric(stk_sched_t *s, double metric)
{
    if (!s)
        return stk__error(-EINVAL, "stk_sched_step_metric: NULL argument");
    s->t++;
    if (is_plateau(s))
        plateau_step(s, metric);
    apply(s);
    return 0;
}

int64_t stk_sched_steps(const stk_sched_t *s)
{
    return s ? s->t : 0;
}

double stk_sched_lr(const stk_sched_t *s, size_t group)
{
    return s && group < s->ng ? s->lr[group] : 0;
}

/* ---- state blob ------------------------------------------------------- *
 * "STKSCHD\0", u32 version, u32 n_groups, u64 fingerprint, i64 t,
 * f64 base[n_groups], f64 lr[n_groups], f64 best, i64 num_bad,
 * i64 cooldown_counter, u64 checksum. Little-endian. */

static void sched_serialize(const stk_sched_t *s, stk__blobw_t *w)
{
    stk__w_bytes(w, SCHED_MAGIC, 8);
    stk__w_u32(w, SCHED_VERSION);
    stk__w_u32(w, (uint32_t)s->ng);
    stk__w_u64(w, s->fingerprint);
    stk__w_u64(w, (uint64_t)s->t);
    for (size_t g = 0; g < s->ng; g++)
        stk__w_f64(w, s->base[g]);
    for (size_t g = 0; g < s->ng; g++)
        stk__w_f64(w, s->lr[g]);
    stk__w_f64(w, s->best);
    stk__w_u64(w, (uint64_t)s->num_bad);
    stk__w_u64(w, (uint64_t)s->cooldown_counter);
}

size_t stk_sched_state_size(const stk_sched_t *s)
{
    if (!s)
        return 0;
    stk__blobw_t w = {NULL, 0, 0};
    sched_serialize(s, &w);
    return w.len + 8;
}

int stk_sched_state_save(const stk_sched_t *s, void *buf, size_t cap, size_t *written)
{
    if (!s || !written || (!buf && cap))
        return stk__error(-EINVAL, "stk_sched_state_save: NULL argument");
    size_t need = stk_sched_state_size(s);
    *written = need;
    if (cap < need)
        return stk__error(-ENOSPC, "scheduler state: needs %zu bytes, buffer has %zu", need, cap);
    stk__blobw_t w = {buf, 0, cap};
    sched_serialize(s, &w);
    stk__w_u64(&w, stk__blob_hash(buf, w.len));
    return 0;
}

int stk_sched_state_load(stk_sched_t *s, const void *buf, size_t len)
{
    if (!s || (!buf && len))
        return stk__error(-EINVAL, "stk_sched_state_load: NULL argument");
    if (len < 16 || memcmp(buf, SCHED_MAGIC, 8) != 0)
        return stk__error(STK_EFORMAT, "scheduler state: not a scheduler state blob (%zu bytes, bad magic)", len);
    stk__blobr_t r = {buf, len - 8, 8, 0};
    uint32_t version = stk__r_u32(&r);
    if (version != SCHED_VERSION)
        return stk__error(STK_EFORMAT, "scheduler state: version %u, this library reads version %u", version,
                          SCHED_VERSION);
    uint64_t sum = 0;
    for (int i = 0; i < 8; i++)
        sum |= (uint64_t)((const uint8_t *)buf)[len - 8 + (size_t)i] << (8 * i);
    if (sum != stk__blob_hash(buf, len - 8))
        return stk__error(STK_EFORMAT, "scheduler state: checksum mismatch (truncated or corrupt blob of %zu bytes)",
                          len);
    uint32_t ng = stk__r_u32(&r);
    uint64_t fp = stk__r_u64(&r);
    if (ng != s->ng)
        return stk__error(STK_ESHAPE, "scheduler state: saved for %u groups, this optimizer has %zu", ng, s->ng);
    if (fp != s->fingerprint)
        return stk__error(STK_ESHAPE, "scheduler state: saved by a different schedule (phases, lengths or "
                                      "parameters differ)");
    int64_t t = (int64_t)stk__r_u64(&r);
    size_t at = r.pos;
    if (!stk__r_take(&r, 16 * (size_t)ng + 24) || r.pos != r.len)
        return stk__error(STK_EFORMAT, "scheduler state: blob of %zu bytes has the wrong size", len);
    if (t < 0)
        return stk__error(STK_EDATA, "scheduler state: negative step count");
    r.pos = at;
    for (size_t g = 0; g < ng; g++)
        s->base[g] = stk__r_f64(&r);
    for (size_t g = 0; g < ng; g++)
        s->lr[g] = stk__r_f64(&r);
    s->best = stk__r_f64(&r);
    s->num_bad = (int64_t)stk__r_u64(&r);
    s->cooldown_counter = (int64_t)stk__r_u64(&r);
    s->t = t;
    apply(s);
    return 0;
}
