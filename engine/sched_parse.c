/* SPDX-License-Identifier: MIT */
/* Learning-rate schedulers, the text form: stk_sched_parse turns
 * "warmup:1ep,start=0.1|cosine:eta_min=0" into a stk_sched_config_t, which
 * stk_sched_create (sched.c) then checks and resolves. Separate from
 * sched.c because it only fills a config: it knows the key names and
 * which kinds read them, nothing of the schedule's values or state. */
#include "internal.h"
#include "optim_util.h"
#include "stoker/optim.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define PBAD(...) stk__error(STK_ECONFIG, __VA_ARGS__)

static const struct {
    const char *name;
    stk_sched_kind_t kind;
} kind_names[] = {
    {"constant", STK_SCHED_CONSTANT}, {"step", STK_SCHED_STEP},       {"multistep", STK_SCHED_MULTISTEP},
    {"exp", STK_SCHED_EXPONENTIAL},   {"exponential", STK_SCHED_EXPONENTIAL},
    {"cosine", STK_SCHED_COSINE},     {"linear", STK_SCHED_LINEAR},   {"warmup", STK_SCHED_LINEAR},
    {"cooldown", STK_SCHED_COOLDOWN}, {"onecycle", STK_SCHED_ONECYCLE}, {"plateau", STK_SCHED_PLATEAU},
};

/* Which kinds read which key: the bit of each kind, 1 << kind. */
#define KB(k) (1u << (k))
#define K_ALL 0xffffu

static const struct {
    const char *name;
    unsigned kinds;
} sched_keys[] = {
    {"steps", K_ALL},
    {"factor", KB(STK_SCHED_CONSTANT) | KB(STK_SCHED_PLATEAU)},
    {"total_iters", KB(STK_SCHED_CONSTANT) | KB(STK_SCHED_LINEAR) | KB(STK_SCHED_COOLDOWN)},
    {"gamma", KB(STK_SCHED_STEP) | KB(STK_SCHED_MULTISTEP) | KB(STK_SCHED_EXPONENTIAL)},
    {"step_size", KB(STK_SCHED_STEP)},
    {"milestones", KB(STK_SCHED_MULTISTEP)},
    {"t_max", KB(STK_SCHED_COSINE)},
    {"T_max", KB(STK_SCHED_COSINE)},
    {"eta_min", KB(STK_SCHED_COSINE)},
    {"start_factor", KB(STK_SCHED_LINEAR)},
    {"start", KB(STK_SCHED_LINEAR)},
    {"end_factor", KB(STK_SCHED_LINEAR)},
    {"end", KB(STK_SCHED_LINEAR)},
    {"final_factor", KB(STK_SCHED_COOLDOWN)},
    {"final", KB(STK_SCHED_COOLDOWN)},
    {"max_lr", KB(STK_SCHED_ONECYCLE)},
    {"total_steps", KB(STK_SCHED_ONECYCLE)},
    {"pct_start", KB(STK_SCHED_ONECYCLE)},
    {"anneal_strategy", KB(STK_SCHED_ONECYCLE)},
    {"div_factor", KB(STK_SCHED_ONECYCLE)},
    {"final_div_factor", KB(STK_SCHED_ONECYCLE)},
    {"three_phase", KB(STK_SCHED_ONECYCLE)},
    {"cycle_momentum", KB(STK_SCHED_ONECYCLE)},
    {"base_momentum", KB(STK_SCHED_ONECYCLE)},
    {"max_momentum", KB(STK_SCHED_ONECYCLE)},
    {"mode", KB(STK_SCHED_PLATEAU)},
    {"patience", KB(STK_SCHED_PLATEAU)},
    {"threshold", KB(STK_SCHED_PLATEAU)},
    {"threshold_mode", KB(STK_SCHED_PLATEAU)},
    {"cooldown", KB(STK_SCHED_PLATEAU)},
    {"min_lr", KB(STK_SCHED_PLATEAU)},
    {"eps", KB(STK_SCHED_PLATEAU)},
};

static int set_phase_key(stk_sched_phase_t *p, size_t pi, const char *key, const char *val, int64_t spe)
{
    const char *kn = stk_sched_kind_name(p->kind);
    int found = -1;
    for (size_t i = 0; i < STK__ARRAY_LEN(sched_keys); i++)
        if (!strcmp(key, sched_keys[i].name))
            found = (int)i;
    if (found < 0)
        return PBAD("schedule phase %zu (%s): unknown key '%s'", pi, kn, key);
    if (!(sched_keys[found].kinds & KB(p->kind)))
        return PBAD("schedule phase %zu (%s): key '%s' does not apply to %s", pi, kn, key, kn);
    int rc = 0;
    int64_t *cnt = NULL;
    double *dbl = NULL;
    int *flag = NULL;
    if (!strcmp(key, "steps")) cnt = &p->steps;
    else if (!strcmp(key, "factor")) dbl = &p->factor;
    else if (!strcmp(key, "total_iters")) cnt = &p->total_iters;
    else if (!strcmp(key, "gamma")) dbl = &p->gamma;
    else if (!strcmp(key, "step_size")) cnt = &p->step_size;
    else if (!strcmp(key, "t_max") || !strcmp(key, "T_max")) cnt = &p->t_max;
    else if (!strcmp(key, "eta_min")) dbl = &p->eta_min;
    else if (!strcmp(key, "start_factor") || !strcmp(key, "start")) dbl = &p->start_factor;
    else if (!strcmp(key, "end_factor") || !strcmp(key, "end")) dbl = &p->end_factor;
    else if (!strcmp(key, "final_factor") || !strcmp(key, "final")) dbl = &p->final_factor;
    else if (!strcmp(key, "max_lr")) dbl = &p->max_lr;
    else if (!strcmp(key, "total_steps")) cnt = &p->total_steps;
    else if (!strcmp(key, "pct_start")) dbl = &p->pct_start;
    else if (!strcmp(key, "div_factor")) dbl = &p->div_factor;
    else if (!strcmp(key, "final_div_factor")) dbl = &p->final_div_factor;
    else if (!strcmp(key, "three_phase")) flag = &p->three_phase;
    else if (!strcmp(key, "cycle_momentum")) flag = &p->cycle_momentum;
    else if (!strcmp(key, "base_momentum")) dbl = &p->base_momentum;
    else if (!strcmp(key, "max_momentum")) dbl = &p->max_momentum;
    else if (!strcmp(key, "patience")) cnt = &p->patience;
    else if (!strcmp(key, "threshold")) dbl = &p->threshold;
    else if (!strcmp(key, "cooldown")) cnt = &p->cooldown;
    else if (!strcmp(key, "min_lr")) dbl = &p->min_lr;
    else if (!strcmp(key, "eps")) dbl = &p->eps;
    else if (!strcmp(key, "anneal_strategy")) {
        if (!strcmp(val, "cos")) p->anneal_linear = 0;
        else if (!strcmp(val, "linear")) p->anneal_linear = 1;
        else rc = -1;
    } else if (!strcmp(key, "mode")) {
        if (!strcmp(val, "min")) p->mode_max = 0;
        else if (!strcmp(val, "max")) p->mode_max = 1;
        else rc = -1;
    } else if (!strcmp(key, "threshold_mode")) {
        if (!strcmp(val, "rel")) p->threshold_abs = 0;
        else if (!strcmp(val, "abs")) p->threshold_abs = 1;
        else rc = -1;
    } else if (!strcmp(key, "milestones")) {
        char buf[512];
        if (strlen(val) >= sizeof(buf))
            return PBAD("schedule phase %zu (%s): value of key 'milestones' too long", pi, kn);
        strcpy(buf, val);
        size_t n = 0;
        char *save = NULL;
        for (char *m = strtok_r(buf, ";", &save); m && rc == 0; m = strtok_r(NULL, ";", &save)) {
            if (n == STK_SCHED_MAX_MILESTONES)
                return PBAD("schedule phase %zu (%s): key 'milestones': more than %d", pi, kn,
                            STK_SCHED_MAX_MILESTONES);
            rc = stk__parse_count(m, spe, &p->milestones[n++]);
        }
        if (rc == 0 && n == 0)
            rc = -1;
        if (rc == 0)
            p->n_milestones = n;
    }
    if (cnt)
        rc = stk__parse_count(val, spe, cnt);
    else if (dbl)
        rc = stk__parse_f64(val, dbl);
    else if (flag)
        rc = stk__parse_flag(val, flag);
    if (rc == -2)
        return PBAD("schedule phase %zu (%s): key '%s' is in epochs ('%s') but steps_per_epoch is not set", pi, kn,
                    key, val);
    if (rc)
        return PBAD("schedule phase %zu (%s): bad value '%s' for key '%s'", pi, kn, val, key);
    return 0;
}

static int parse_phase(char *text, size_t pi, int64_t spe, stk_sched_phase_t *out)
{
    while (*text == ' ')
        text++;
    char *colon = strchr(text, ':');
    if (colon)
        *colon = '\0';
    stk_sched_kind_t kind = 0;
    for (size_t i = 0; i < STK__ARRAY_LEN(kind_names); i++)
        if (!strcmp(text, kind_names[i].name))
            kind = kind_names[i].kind;
    if (!kind)
        return PBAD("schedule phase %zu: unknown kind '%s' (constant, step, multistep, exp, cosine, linear, "
                    "warmup, cooldown, onecycle, plateau)", pi, text);
    stk_sched_phase_default(out, kind);
    if (!colon)
        return 0;
    char *save = NULL;
    int first = 1;
    for (char *it = strtok_r(colon + 1, ",", &save); it; it = strtok_r(NULL, ",", &save), first = 0) {
        while (*it == ' ')
            it++;
        char *eq = strchr(it, '=');
        int rc;
        if (!eq && first) {
            rc = set_phase_key(out, pi, "steps", it, spe);
        } else if (!eq || eq == it) {
            rc = PBAD("schedule phase %zu (%s): expected key=value, got '%s'", pi, stk_sched_kind_name(kind), it);
        } else {
            *eq = '\0';
            rc = set_phase_key(out, pi, it, eq + 1, spe);
        }
        if (rc)
            return rc;
    }
    return 0;
}

int stk_sched_parse(const char *text, int64_t steps_per_epoch, stk_sched_config_t *cfg)
{
    if (!text || !cfg)
        return stk__error(-EINVAL, "stk_sched_parse: NULL argument");
    char *copy = strdup(text);
    if (!copy)
        return stk__error(-ENOMEM, "stk_sched_parse: out of memory");
    stk_sched_config_t tmp = *cfg;
    tmp.n_phases = 0;
    int rc = 0;
    char *rest = copy;
    for (size_t pi = 0; rc == 0; pi++) {
        char *bar = strchr(rest, '|');
        if (bar)
            *bar = '\0';
        if (pi == STK_SCHED_MAX_PHASES)
            rc = PBAD("schedule: more than %d phases", STK_SCHED_MAX_PHASES);
        else
            rc = parse_phase(rest, pi, steps_per_epoch, &tmp.phases[pi]);
        if (rc)
            break;
        tmp.n_phases = pi + 1;
        if (!bar)
            break;
        rest = bar + 1;
    }
    free(copy);
    if (rc == 0)
        *cfg = tmp;
    return rc;
}
