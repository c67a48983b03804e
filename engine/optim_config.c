/* SPDX-License-Identifier: MIT */
/* Optimizers, the configuration: defaults per kind, the hyperparameters'
 * checks, and the text form ("adamw:lr=1e-3,betas=0.9;0.999") with the
 * text-value parsers the schedulers share (optim_util.h). Separate from
 * optim.c because none of it touches an optimizer's groups, state or
 * steps: it only fills and checks plain configs. */
#include "internal.h"
#include "optim_internal.h"
#include "optim_util.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- text values ------------------------------------------------------ */

int stk__parse_f64(const char *s, double *out)
{
    char *end;
    if (!s || !*s)
        return -1;
    errno = 0;
    double v = strtod(s, &end);
    if (*end != '\0' || errno == ERANGE || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

int stk__parse_flag(const char *s, int *out)
{
    if (!strcmp(s, "1") || !strcasecmp(s, "true") || !strcasecmp(s, "yes")) {
        *out = 1;
        return 0;
    }
    if (!strcmp(s, "0") || !strcasecmp(s, "false") || !strcasecmp(s, "no")) {
        *out = 0;
        return 0;
    }
    return -1;
}

int stk__parse_count(const char *s, int64_t steps_per_epoch, int64_t *out)
{
    size_t n = strlen(s);
    if (n > 2 && !strcmp(s + n - 2, "ep")) {
        char tmp[64];
        if (n - 2 >= sizeof(tmp))
            return -1;
        memcpy(tmp, s, n - 2);
        tmp[n - 2] = '\0';
        double ep;
        if (stk__parse_f64(tmp, &ep) || ep < 0 || ep > 1e15)
            return -1;
        if (steps_per_epoch <= 0)
            return -2;
        double steps = ep * (double)steps_per_epoch;
        if (steps > 9e18)
            return -1;
        *out = (int64_t)llround(steps);
        return 0;
    }
    char *end;
    if (!*s || *s == '-' || *s == '+')
        return -1;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*end != '\0' || errno == ERANGE || v < 0)
        return -1;
    *out = v;
    return 0;
}

/* ---- configuration ---------------------------------------------------- */

const char *stk_optim_kind_name(stk_optim_kind_t kind)
{
    switch (kind) {
    case STK_OPTIM_SGD: return "sgd";
    case STK_OPTIM_ADAM: return "adam";
    case STK_OPTIM_ADAMW: return "adamw";
    case STK_OPTIM_RMSPROP: return "rmsprop";
    }
    return "invalid";
}

int stk__optim_kind_valid(stk_optim_kind_t kind)
{
    return kind >= STK_OPTIM_SGD && kind <= STK_OPTIM_RMSPROP;
}

void stk_optim_hparams_default(stk_optim_hparams_t *h, stk_optim_kind_t kind)
{
    if (!h)
        return;
    memset(h, 0, sizeof(*h));
    h->beta1 = 0.9;
    h->beta2 = 0.999;
    h->eps = 1e-8;
    h->alpha = 0.99;
    switch (kind) {
    case STK_OPTIM_SGD: h->lr = 0.01; break;
    case STK_OPTIM_ADAM: h->lr = 1e-3; break;
    case STK_OPTIM_ADAMW: h->lr = 1e-3; h->weight_decay = 1e-2; break;
    case STK_OPTIM_RMSPROP: h->lr = 1e-2; break;
    }
}

void stk_optim_config_default(stk_optim_config_t *cfg, stk_optim_kind_t kind, size_t n_params)
{
    if (!cfg)
        return;
    memset(cfg, 0, sizeof(*cfg));
    cfg->kind = kind;
    cfg->n_params = n_params;
    stk_optim_hparams_default(&cfg->defaults, kind);
}

/* Which keys a kind reads, as a bit set over the key table below. */
enum {
    K_LR = 1 << 0, K_WD = 1 << 1, K_MOM = 1 << 2, K_DAMP = 1 << 3, K_B1 = 1 << 4,
    K_B2 = 1 << 5, K_EPS = 1 << 6, K_ALPHA = 1 << 7, K_NEST = 1 << 8, K_AMS = 1 << 9,
    K_CENT = 1 << 10, K_MAX = 1 << 11, K_BETAS = 1 << 12
};

static unsigned kind_keys(stk_optim_kind_t kind)
{
    switch (kind) {
    case STK_OPTIM_SGD: return K_LR | K_WD | K_MOM | K_DAMP | K_NEST | K_MAX;
    case STK_OPTIM_ADAM:
    case STK_OPTIM_ADAMW: return K_LR | K_WD | K_B1 | K_B2 | K_BETAS | K_EPS | K_AMS | K_MAX;
    case STK_OPTIM_RMSPROP: return K_LR | K_WD | K_MOM | K_EPS | K_ALPHA | K_CENT | K_MAX;
    }
    return 0;
}

int stk__optim_check_hparams(stk_optim_kind_t kind, const stk_optim_hparams_t *h, const char *where)
{
    unsigned k = kind_keys(kind);
#define BAD(cond, key, fmt, val)                                                       \
    do {                                                                               \
        if (cond)                                                                      \
            return stk__error(STK_ECONFIG, "%s%s: invalid %s " fmt, where,             \
                              stk_optim_kind_name(kind), key, val);                    \
    } while (0)
    BAD(!(h->lr >= 0) || !isfinite(h->lr), "lr", "%g (must be >= 0)", h->lr);
    BAD(!(h->weight_decay >= 0) || !isfinite(h->weight_decay), "weight_decay", "%g (must be >= 0)",
        h->weight_decay);
    if (k & K_MOM)
        BAD(!(h->momentum >= 0) || !isfinite(h->momentum), "momentum", "%g (must be >= 0)",
            h->momentum);
    if (k & K_DAMP)
        BAD(!isfinite(h->dampening), "dampening", "%g", h->dampening);
    if (k & K_B1)
        BAD(!(h->beta1 >= 0 && h->beta1 < 1), "beta1", "%g (must be in [0, 1))", h->beta1);
    if (k & K_B2)
        BAD(!(h->beta2 >= 0 && h->beta2 < 1), "beta2", "%g (must be in [0, 1))", h->beta2);
    if (k & K_EPS)
        BAD(!(h->eps >= 0) || !isfinite(h->eps), "eps", "%g (must be >= 0)", h->eps);
    if (k & K_ALPHA)
        BAD(!(h->alpha >= 0) || !isfinite(h->alpha), "alpha", "%g (must be >= 0)", h->alpha);
    if (kind == STK_OPTIM_SGD && h->nesterov)
        BAD(h->momentum <= 0 || h->dampening != 0, "nesterov", "%s",
            "(needs momentum > 0 and dampening = 0)");
#undef BAD
    return 0;
}

struct key_def {
    const char *name;
    unsigned bit;
};

static const struct key_def key_defs[] = {
    {"lr", K_LR}, {"weight_decay", K_WD}, {"momentum", K_MOM}, {"dampening", K_DAMP},
    {"beta1", K_B1}, {"beta2", K_B2}, {"betas", K_BETAS}, {"eps", K_EPS}, {"alpha", K_ALPHA},
    {"nesterov", K_NEST}, {"amsgrad", K_AMS}, {"centered", K_CENT}, {"maximize", K_MAX},
};

static int set_key(stk_optim_kind_t kind, stk_optim_hparams_t *h, const char *key, const char *val, int *no_decay)
{
    if (!strcmp(key, "no_decay")) {
        if (!no_decay)
            return stk__error(STK_ECONFIG, "optimizer %s: key 'no_decay' needs the model's parameter names (use "
                              "stk_optim_create_for_model)", stk_optim_kind_name(kind));
        static const char *const nd[] = {"none", "bias", "norm", "bias_norm"};
        for (int i = 0; i < 4; i++)
            if (!strcmp(val, nd[i])) {
                *no_decay = i;
                return 0;
            }
        return stk__error(STK_ECONFIG, "optimizer %s: bad value '%s' for key 'no_decay' (none, bias, norm, "
                          "bias_norm)", stk_optim_kind_name(kind), val);
    }
    unsigned bit = 0;
    for (size_t i = 0; i < STK__ARRAY_LEN(key_defs); i++)
        if (!strcmp(key, key_defs[i].name))
            bit = key_defs[i].bit;
    if (!bit)
        return stk__error(STK_ECONFIG, "optimizer %s: unknown key '%s'", stk_optim_kind_name(kind), key);
    if (!(kind_keys(kind) & bit))
        return stk__error(STK_ECONFIG, "optimizer %s: key '%s' does not apply to %s",
                          stk_optim_kind_name(kind), key, stk_optim_kind_name(kind));
    int rc = 0;
    switch (bit) {
    case K_LR: rc = stk__parse_f64(val, &h->lr); break;
    case K_WD: rc = stk__parse_f64(val, &h->weight_decay); break;
    case K_MOM: rc = stk__parse_f64(val, &h->momentum); break;
    case K_DAMP: rc = stk__parse_f64(val, &h->dampening); break;
    case K_B1: rc = stk__parse_f64(val, &h->beta1); break;
    case K_B2: rc = stk__parse_f64(val, &h->beta2); break;
    case K_EPS: rc = stk__parse_f64(val, &h->eps); break;
    case K_ALPHA: rc = stk__parse_f64(val, &h->alpha); break;
    case K_NEST: rc = stk__parse_flag(val, &h->nesterov); break;
    case K_AMS: rc = stk__parse_flag(val, &h->amsgrad); break;
    case K_CENT: rc = stk__parse_flag(val, &h->centered); break;
    case K_MAX: rc = stk__parse_flag(val, &h->maximize); break;
    case K_BETAS: {
        const char *semi = strchr(val, ';');
        char b1[64];
        if (!semi || (size_t)(semi - val) >= sizeof(b1)) {
            rc = -1;
            break;
        }
        memcpy(b1, val, (size_t)(semi - val));
        b1[semi - val] = '\0';
        rc = stk__parse_f64(b1, &h->beta1) || stk__parse_f64(semi + 1, &h->beta2) ? -1 : 0;
        break;
    }
    default: break;
    }
    if (rc)
        return stk__error(STK_ECONFIG, "optimizer %s: bad value '%s' for key '%s'",
                          stk_optim_kind_name(kind), val, key);
    return 0;
}

int stk__optim_apply_items(stk_optim_kind_t kind, stk_optim_hparams_t *h, char *items, int *no_decay)
{
    char *save = NULL;
    for (char *it = strtok_r(items, ",", &save); it; it = strtok_r(NULL, ",", &save)) {
        while (*it == ' ')
            it++;
        char *eq = strchr(it, '=');
        if (!eq || eq == it)
            return stk__error(STK_ECONFIG, "optimizer %s: expected key=value, got '%s'",
                              stk_optim_kind_name(kind), it);
        *eq = '\0';
        int rc = set_key(kind, h, it, eq + 1, no_decay);
        if (rc)
            return rc;
    }
    return stk__optim_check_hparams(kind, h, "optimizer ");
}

int stk_optim_hparams_parse(const char *text, stk_optim_kind_t kind, stk_optim_hparams_t *h)
{
    if (!text || !h || !stk__optim_kind_valid(kind))
        return stk__error(-EINVAL, "stk_optim_hparams_parse: NULL argument or bad kind");
    char *copy = strdup(text);
    if (!copy)
        return stk__error(-ENOMEM, "stk_optim_hparams_parse: out of memory");
    stk_optim_hparams_t tmp = *h;
    int rc = stk__optim_apply_items(kind, &tmp, copy, NULL);
    free(copy);
    if (rc == 0)
        *h = tmp;
    return rc;
}

stk_optim_kind_t stk__optim_kind_from_name(const char *name)
{
    for (int k = STK_OPTIM_SGD; k <= STK_OPTIM_RMSPROP; k++)
        if (!strcmp(name, stk_optim_kind_name((stk_optim_kind_t)k)))
            return (stk_optim_kind_t)k;
    return (stk_optim_kind_t)0;
}

int stk_optim_config_parse(const char *text, stk_optim_config_t *cfg)
{
    if (!text || !cfg)
        return stk__error(-EINVAL, "stk_optim_config_parse: NULL argument");
    char *copy = strdup(text);
    if (!copy)
        return stk__error(-ENOMEM, "stk_optim_config_parse: out of memory");
    char *colon = strchr(copy, ':');
    if (colon)
        *colon = '\0';
    stk_optim_kind_t kind = stk__optim_kind_from_name(copy);
    int rc;
    if (strchr(text, '|')) {
        rc = stk__error(STK_ECONFIG, "optimizer: parameter groups ('|') need the model's parameter names (use "
                        "stk_optim_create_for_model)");
    } else if (!kind) {
        rc = stk__error(STK_ECONFIG, "optimizer: unknown kind '%s' (sgd, adam, adamw, rmsprop)", copy);
    } else {
        stk_optim_hparams_t h;
        stk_optim_hparams_default(&h, kind);
        rc = colon ? stk__optim_apply_items(kind, &h, colon + 1, NULL)
                   : stk__optim_check_hparams(kind, &h, "optimizer ");
        if (rc == 0) {
            cfg->kind = kind;
            cfg->defaults = h;
        }
    }
    free(copy);
    return rc;
}
