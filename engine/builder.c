/* SPDX-License-Identifier: MIT */
/* The model builder: layer descriptions with their defaults, the checks
 * that need no shapes (each kind's own, from the layer table), and the
 * names of the kinds. Shapes are model.c's, when the model is created. */
#include "layer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *stk_layer_kind_name(stk_layer_kind_t kind)
{
    const stk__layer_class_t *c = stk__layer_class(kind);
    return c ? c->name : "invalid";
}

stk_layer_kind_t stk_layer_kind_from_name(const char *name)
{
    if (!name)
        return STK_LAYER_INVALID;
    for (int k = 1; k < STK_LAYER_KIND_COUNT; k++) {
        const stk__layer_class_t *c = stk__layer_class((stk_layer_kind_t)k);
        if (c && strcmp(name, c->name) == 0)
            return (stk_layer_kind_t)k;
    }
    return STK_LAYER_INVALID;
}

void stk_layer_desc_default(stk_layer_desc_t *d, stk_layer_kind_t kind)
{
    if (!d)
        return;
    memset(d, 0, sizeof(*d));
    d->kind = kind;
    d->in_h = d->in_w = 1;
    const stk__layer_class_t *c = stk__layer_class(kind);
    if (c && c->defaults)
        c->defaults(d);
}

const char *stk__layer_where(const stk__layer_t *l, char *buf, size_t cap)
{
    if (l->line > 0)
        snprintf(buf, cap, "line %d (%s '%s')", l->line, stk_layer_kind_name(l->d.kind), l->name);
    else
        snprintf(buf, cap, "layer '%s' (%s)", l->name, stk_layer_kind_name(l->d.kind));
    return buf;
}

int stk_model_builder_create(stk_model_builder_t **out)
{
    if (!out)
        return stk__error(-EINVAL, "model builder: out is NULL");
    *out = calloc(1, sizeof(**out));
    return *out ? 0 : stk__error(-ENOMEM, "model builder: out of memory");
}

void stk__layer_free_strings(stk__layer_t *l)
{
    free(l->name);
    free(l->in_name[0]);
    free(l->in_name[1]);
    l->name = l->in_name[0] = l->in_name[1] = NULL;
}

void stk_model_builder_destroy(stk_model_builder_t **b)
{
    if (!b || !*b)
        return;
    for (int i = 0; i < (*b)->n; i++)
        stk__layer_free_strings(&(*b)->layers[i]);
    free((*b)->layers);
    free(*b);
    *b = NULL;
}

int stk__find_layer(const stk__layer_t *layers, int n, const char *name)
{
    for (int i = n - 1; i >= 0; i--)
        if (strcmp(layers[i].name, name) == 0)
            return i;
    return -1;
}

int stk__builder_add_line(stk_model_builder_t *b, const stk_layer_desc_t *desc, int line)
{
    if (!b || !desc)
        return stk__error(-EINVAL, "model builder: NULL argument");
    char where[160];
    if (line > 0)
        snprintf(where, sizeof(where), "line %d", line);
    else
        snprintf(where, sizeof(where), "layer %d ('%s')", b->n, desc->name ? desc->name : "unnamed");
    const stk__layer_class_t *cls = stk__layer_class(desc->kind);
    if (!cls)
        return stk__error(STK_ECONFIG, "%s: unknown layer kind %d", where, (int)desc->kind);
    if ((b->n == 0) != (cls->n_inputs == 0))
        return stk__error(STK_ECONFIG, "%s: %s", where,
                          b->n == 0 ? "the first layer must be 'input'" : "only the first layer may be 'input'");
    int rc = cls->check ? cls->check(desc, where) : 0;
    if (rc < 0)
        return rc;
    char autoname[64];
    const char *name = desc->name;
    if (!name || !*name) {
        snprintf(autoname, sizeof(autoname), "%s%d", cls->name, b->n);
        name = autoname;
    }
    if (stk__find_layer(b->layers, b->n, name) >= 0)
        return stk__error(STK_ECONFIG, "%s: key 'name': '%s' is already used", where, name);
    if (b->n == b->cap) {
        int cap = b->cap ? 2 * b->cap : 16;
        stk__layer_t *nl = realloc(b->layers, (size_t)cap * sizeof(*nl));
        if (!nl)
            return stk__error(-ENOMEM, "model builder: out of memory");
        b->layers = nl;
        b->cap = cap;
    }
    stk__layer_t *l = &b->layers[b->n];
    memset(l, 0, sizeof(*l));
    l->cls = cls;
    l->d = *desc;
    l->line = line;
    l->name = strdup(name);
    for (int i = 0; i < 2; i++)
        if (desc->inputs[i])
            l->in_name[i] = strdup(desc->inputs[i]);
    if (!l->name || (desc->inputs[0] && !l->in_name[0]) || (desc->inputs[1] && !l->in_name[1])) {
        stk__layer_free_strings(l);
        return stk__error(-ENOMEM, "model builder: out of memory");
    }
    b->n++;
    return 0;
}

int stk_model_builder_add(stk_model_builder_t *b, const stk_layer_desc_t *desc)
{
    return stk__builder_add_line(b, desc, 0);
}
