/* SPDX-License-Identifier: MIT */
/* An optimizer made for a model: its parameter groups come from the text
 * spec by parameter name (globs, and the no_decay option for biases and
 * norm layers), its state lives in the model's backend memory, and a step
 * is the backend's fused update over the model's arenas, one call per
 * group. */
#include "optim_internal.h"

#include <errno.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { ND_NONE = 0, ND_BIAS = 1, ND_NORM = 2, ND_BIAS_NORM = 3 };

/* One '|' piece after the first: patterns and their overrides. */
typedef struct piece {
    char *patterns; /* ';'-separated globs */
    stk_optim_hparams_t h;
    size_t matched;
} piece_t;

static int pattern_match(const char *patterns, const char *name)
{
    const char *p = patterns;
    while (*p) {
        const char *semi = strchr(p, ';');
        size_t len = semi ? (size_t)(semi - p) : strlen(p);
        char one[256];
        if (len && len < sizeof(one)) {
            memcpy(one, p, len);
            one[len] = '\0';
            if (fnmatch(one, name, 0) == 0)
                return 1;
        }
        if (!semi)
            break;
        p = semi + 1;
    }
    return 0;
}

static int no_decay_selects(int nd, int kind)
{
    int bias = kind == STK_PARAM_BIAS, norm = kind == STK_PARAM_BN_WEIGHT || kind == STK_PARAM_BN_BIAS;
    return ((nd & ND_BIAS) && bias) || ((nd & ND_NORM) && norm);
}

/* Parameter i's group: the first piece whose pattern matches its name,
 * else the no-decay group when no_decay selects it, else group 0. */
static size_t group_of(const stk_model_t *m, size_t i, piece_t *pieces, size_t np, int nd)
{
    const stk_param_info_t *p = &m->pinfo[i].info;
    for (size_t k = 0; k < np; k++)
        if (pattern_match(pieces[k].patterns, p->name)) {
            pieces[k].matched++;
            return 1 + k;
        }
    return nd != ND_NONE && no_decay_selects(nd, p->kind) ? 1 + np : 0;
}

/* Ranges of each group, adjacent tensors merged (the fused update then
 * runs over long spans). */
static int build_groups(const stk_model_t *m, const size_t *gid, size_t ng, const stk_optim_hparams_t *hs,
                        stk_optim_group_t *groups, stk_optim_range_t *ranges)
{
    size_t at = 0;
    for (size_t g = 0; g < ng; g++) {
        groups[g].ranges = ranges + at;
        groups[g].n_ranges = 0;
        groups[g].h = hs[g];
        for (size_t i = 0; i < m->npinfo; i++) {
            if (gid[i] != g)
                continue;
            const stk_param_info_t *p = &m->pinfo[i].info;
            stk_optim_range_t *last = groups[g].n_ranges ? &ranges[at - 1] : NULL;
            if (last && last->offset + last->count == p->offset) {
                last->count += p->count;
            } else {
                ranges[at++] = (stk_optim_range_t){p->offset, p->count};
                groups[g].n_ranges++;
            }
        }
    }
    return 0;
}

int stk_optim_create_for_model(stk_optim_t **out, stk_model_t *m, const char *spec)
{
    if (!out || !m || !spec)
        return stk__error(-EINVAL, "stk_optim_create_for_model: NULL argument");
    *out = NULL;
    char *copy = strdup(spec);
    size_t npieces = 0;
    for (const char *c = spec; *c; c++)
        npieces += *c == '|';
    piece_t *pieces = calloc(npieces + 1, sizeof(*pieces));
    size_t *gid = calloc(m->npinfo + 1, sizeof(*gid));
    stk_optim_hparams_t *hs = calloc(npieces + 2, sizeof(*hs));
    stk_optim_group_t *groups = calloc(npieces + 2, sizeof(*groups));
    stk_optim_range_t *ranges = calloc(m->npinfo + 1, sizeof(*ranges));
    stk_optim_t *o = NULL;
    int rc = 0;
    if (!copy || !pieces || !gid || !hs || !groups || !ranges) {
        rc = stk__error(-ENOMEM, "optimizer: out of memory");
        goto out;
    }
    /* The first piece: "kind[:key=value,...]" with the defaults. */
    char *save = NULL, *first = strtok_r(copy, "|", &save);
    if (!first) {
        rc = stk__error(STK_ECONFIG, "optimizer: empty spec (sgd, adam, adamw, rmsprop)");
        goto out;
    }
    char *colon = strchr(first, ':');
    if (colon)
        *colon = '\0';
    stk_optim_kind_t kind = stk__optim_kind_from_name(first);
    if (!kind) {
        rc = stk__error(STK_ECONFIG, "optimizer: unknown kind '%s' (sgd, adam, adamw, rmsprop)", first);
        goto out;
    }
    int nd = ND_NONE;
    stk_optim_hparams_default(&hs[0], kind);
    char empty[1] = "";
    if ((rc = stk__optim_apply_items(kind, &hs[0], colon ? colon + 1 : empty, &nd)) != 0)
        goto out;
    /* Then "pattern[;pattern...]:key=value,...", one group each. */
    size_t np = 0;
    for (char *pc = strtok_r(NULL, "|", &save); pc; pc = strtok_r(NULL, "|", &save), np++) {
        while (*pc == ' ')
            pc++;
        char *c = strchr(pc, ':');
        if (!c || c == pc) {
            rc = stk__error(STK_ECONFIG, "optimizer group %zu: expected 'pattern[;pattern...]:key=value,...', got "
                            "'%s'", np + 1, pc);
            goto out;
        }
        *c = '\0';
        pieces[np].patterns = pc;
        hs[1 + np] = hs[0];
        int nd_here = -1;
        if ((rc = stk__optim_apply_items(kind, &hs[1 + np], c + 1, &nd_here)) != 0) {
            stk__error_prefix(rc, "optimizer group %zu ('%s')", np + 1, pc);
            goto out;
        }
        if (nd_here != -1) {
            rc = stk__error(STK_ECONFIG, "optimizer group %zu ('%s'): key 'no_decay' goes with the defaults, before "
                            "the first '|'", np + 1, pc);
            goto out;
        }
    }
    if (np != npieces) {
        rc = stk__error(STK_ECONFIG, "optimizer: empty group in '%s' (two '|' in a row, or one at an end)", spec);
        goto out;
    }
    for (size_t i = 0; i < m->npinfo; i++)
        gid[i] = group_of(m, i, pieces, np, nd);
    for (size_t k = 0; k < np; k++)
        if (!pieces[k].matched) {
            rc = stk__error(STK_ECONFIG, "optimizer group %zu: pattern '%s' matches no parameter (names are like "
                            "'%s')", k + 1, pieces[k].patterns, m->npinfo ? m->pinfo[0].name : "conv1.weight");
            goto out;
        }
    size_t ng = 1 + np;
    if (nd != ND_NONE) {
        hs[ng] = hs[0];
        hs[ng].weight_decay = 0;
        ng++;
    }
    build_groups(m, gid, ng, hs, groups, ranges);
    stk_optim_config_t cfg = {.kind = kind, .n_params = m->np, .defaults = hs[0], .groups = groups, .n_groups = ng};
    if ((rc = stk_optim_create(&o, &cfg)) != 0)
        goto out;
    o->model = m;
    o->be = &m->be;
    for (size_t g = 0; g < ng && rc == 0; g++)
        if (o->groups[g].n_ranges)
            rc = m->be.iface->optim_create(m->be.ctx, o->groups[g].ranges, o->groups[g].n_ranges,
                                            &o->groups[g].op);
    if (rc) {
        stk__error_prefix(rc, "optimizer: planning the update on the %s backend", m->be.iface->name);
        stk_optim_destroy(&o);
        goto out;
    }
    *out = o;
out:
    free(copy);
    free(pieces);
    free(gid);
    free(hs);
    free(groups);
    free(ranges);
    return rc;
}

int stk_optim_step_model(stk_optim_t *o, stk_model_t *m)
{
    if (!o || !m)
        return stk__error(-EINVAL, "stk_optim_step_model: NULL argument");
    if (!o->model)
        return stk__error(STK_ESTATE, "stk_optim_step_model: this optimizer was made over arrays "
                          "(stk_optim_create): step it with stk_optim_step");
    if (o->model != m)
        return stk__error(-EINVAL, "stk_optim_step_model: the optimizer was made for another model");
    int rc = stk_optim_step_begin(o);
    if (rc)
        return rc;
    const stk__backend_iface_t *be = m->be.iface;
    if (m->threads > 0)
        be->set_threads(m->be.ctx, m->threads);
    for (size_t g = 0; g < o->ng && rc == 0; g++)
        if (o->groups[g].op)
            rc = be->optim_update(m->be.ctx, o->groups[g].op, &o->groups[g].k, m->params, m->grads, o->buf[0],
                                  o->buf[1], o->buf[2]);
    stk_optim_step_end(o);
    return rc ? stk__error_prefix(rc, "optimizer step") : 0;
}
