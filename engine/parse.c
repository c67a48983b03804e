/* SPDX-License-Identifier: MIT */
/* The model file parser (format in engine/MODEL_FORMAT.md): one layer per
 * line, "kind key=value ...", '#' comments. Every error names the line and
 * the key so that a user can fix the file without reading code. */
#include "layer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LINE 1024

static int parse_int(const char *v, int64_t *out)
{
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end)
        return -1;
    *out = x;
    return 0;
}

/* "3" or "3,5": one value for both dimensions, or (h, w). */
static int parse_pair(const char *v, int64_t *h, int64_t *w)
{
    const char *comma = strchr(v, ',');
    if (!comma)
        return parse_int(v, h) < 0 ? -1 : (*w = *h, 0);
    char a[64];
    size_t n = (size_t)(comma - v);
    if (n >= sizeof(a))
        return -1;
    memcpy(a, v, n);
    a[n] = 0;
    return parse_int(a, h) < 0 || parse_int(comma + 1, w) < 0 ? -1 : 0;
}

static int parse_float(const char *v, float *out)
{
    char *end;
    errno = 0;
    float x = strtof(v, &end);
    if (errno || end == v || *end)
        return -1;
    *out = x;
    return 0;
}

static int parse_bool(const char *v, int *out)
{
    if (!strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes"))
        *out = 1;
    else if (!strcmp(v, "0") || !strcmp(v, "false") || !strcmp(v, "no"))
        *out = 0;
    else
        return -1;
    return 0;
}

/* The key of cls named key, or NULL: a typo is an error, not a default. */
static const stk__layer_key_t *find_key(const stk__layer_class_t *cls, const char *key)
{
    for (const stk__layer_key_t *k = cls->keys; k && k->key; k++)
        if (!strcmp(k->key, key))
            return k;
    return NULL;
}

/* "C[,H,W]": one value (features) or three. */
static int parse_shape(const char *v, stk_layer_desc_t *d)
{
    int64_t s[3] = {0, 1, 1};
    char tmp[128];
    snprintf(tmp, sizeof(tmp), "%s", v);
    char *sp = NULL;
    int nd = 0;
    for (char *p = strtok_r(tmp, ",", &sp); p; p = strtok_r(NULL, ",", &sp)) {
        if (nd == 3 || parse_int(p, &s[nd]) < 0)
            return -1;
        nd++;
    }
    d->in_c = s[0];
    d->in_h = s[1];
    d->in_w = s[2];
    return nd == 0 || nd == 2 ? -1 : 0;
}

/* Parses v into the desc field(s) k names. 0 or -1 (bad value). */
static int set_value(const stk__layer_key_t *k, const char *v, stk_layer_desc_t *d)
{
    char *base = (char *)d;
    int64_t *i64 = (int64_t *)(base + k->off);
    switch (k->type) {
    case STK__KEY_INT:
        return parse_int(v, i64);
    case STK__KEY_POS_INT:
        return parse_int(v, i64) < 0 || *i64 < 1 ? -1 : 0;
    case STK__KEY_PAIR:
        return parse_pair(v, i64, (int64_t *)(base + k->off2));
    case STK__KEY_FLOAT:
        return parse_float(v, (float *)(base + k->off));
    case STK__KEY_BOOL:
        return parse_bool(v, (int *)(base + k->off));
    case STK__KEY_SHAPE:
        return parse_shape(v, d);
    }
    return -1;
}

static int parse_line(stk_model_builder_t *b, char *line, int lineno, const char *origin)
{
    char *save = NULL;
    char *tok = strtok_r(line, " \t\r", &save);
    if (!tok)
        return 0;
    stk_layer_kind_t kind = stk_layer_kind_from_name(tok);
    const stk__layer_class_t *cls = stk__layer_class(kind);
    if (!cls)
        return stk__error(STK_ECONFIG, "%s: line %d: unknown layer type '%s'", origin, lineno, tok);
    stk_layer_desc_t d;
    stk_layer_desc_default(&d, kind);
    char *inputs_copy = NULL;
    int have_required = cls->required == NULL;
    int rc = 0;
    while ((tok = strtok_r(NULL, " \t\r", &save))) {
        char *eq = strchr(tok, '=');
        if (!eq || eq == tok || !eq[1]) {
            rc = stk__error(STK_ECONFIG, "%s: line %d: '%s' is not key=value", origin, lineno, tok);
            goto out;
        }
        *eq = 0;
        const char *key = tok, *v = eq + 1;
        const stk__layer_key_t *k = find_key(cls, key);
        int bad = 0;
        if (!strcmp(key, "name")) {
            d.name = v;
        } else if (!strcmp(key, "input") && cls->n_inputs == 1) {
            d.inputs[0] = v;
        } else if (!strcmp(key, "inputs") && cls->n_inputs == 2) {
            free(inputs_copy);
            inputs_copy = strdup(v);
            if (!inputs_copy) {
                rc = stk__error(-ENOMEM, "model file: out of memory");
                goto out;
            }
            char *c = strchr(inputs_copy, ',');
            if (!c || c == inputs_copy || !c[1] || strchr(c + 1, ',')) {
                bad = 1;
            } else {
                *c = 0;
                d.inputs[0] = inputs_copy;
                d.inputs[1] = c + 1;
            }
        } else if (k) {
            bad = set_value(k, v, &d) < 0;
            have_required |= !strcmp(key, cls->required ? cls->required : "");
        } else {
            rc = stk__error(STK_ECONFIG, "%s: line %d: key '%s': not a setting of %s", origin, lineno, key,
                            cls->name);
            goto out;
        }
        if (bad) {
            rc = stk__error(STK_ECONFIG, "%s: line %d: key '%s': bad value '%s'", origin, lineno, key, v);
            goto out;
        }
    }
    if (!have_required) {
        rc = stk__error(STK_ECONFIG, "%s: line %d: key '%s': missing (%s needs it)", origin, lineno, cls->required,
                        cls->name);
        goto out;
    }
    rc = stk__builder_add_line(b, &d, lineno);
    if (rc < 0)
        stk__error_prefix(rc, "%s", origin);
out:
    free(inputs_copy);
    return rc;
}

int stk_model_builder_parse(stk_model_builder_t *b, const char *text, const char *origin)
{
    if (!b || !text)
        return stk__error(-EINVAL, "model file: NULL argument");
    if (!origin)
        origin = "<string>";
    int lineno = 0;
    const char *p = text;
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        lineno++;
        if (len >= MAX_LINE)
            return stk__error(STK_ECONFIG, "%s: line %d: longer than %d bytes", origin, lineno, MAX_LINE - 1);
        char line[MAX_LINE];
        memcpy(line, p, len);
        line[len] = 0;
        char *hash = strchr(line, '#');
        if (hash)
            *hash = 0;
        int rc = parse_line(b, line, lineno, origin);
        if (rc < 0)
            return rc;
        p += len + (nl ? 1 : 0);
    }
    if (b->n == 0)
        return stk__error(STK_ECONFIG, "%s: no layers", origin);
    return 0;
}

int stk_model_create_from_file(stk_model_t **out, const char *path, const stk_model_config_t *cfg)
{
    if (!out || !path)
        return stk__error(-EINVAL, "model file: NULL argument");
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return stk__error(-errno, "model file %s: cannot open", path);
    char *text = NULL;
    size_t len = 0, cap = 0;
    int rc = 0;
    for (;;) {
        if (cap - len < 4096) {
            cap = cap ? 2 * cap : 8192;
            if (cap > (64u << 20)) {
                rc = stk__error(STK_ECONFIG, "model file %s: too large", path);
                goto out;
            }
            char *t = realloc(text, cap);
            if (!t) {
                rc = stk__error(-ENOMEM, "model file %s: out of memory", path);
                goto out;
            }
            text = t;
        }
        size_t r = fread(text + len, 1, cap - len - 1, f);
        len += r;
        if (r == 0)
            break;
    }
    if (ferror(f)) {
        rc = stk__error(-EIO, "model file %s: read error", path);
        goto out;
    }
    text[len] = 0;
    stk_model_builder_t *b = NULL;
    if ((rc = stk_model_builder_create(&b)) == 0 && (rc = stk_model_builder_parse(b, text, path)) == 0) {
        rc = stk_model_create(out, b, cfg);
        if (rc < 0 && strstr(stk_error_message(), path) == NULL)
            stk__error_prefix(rc, "%s", path);
    }
    stk_model_builder_destroy(&b);
out:
    free(text);
    fclose(f);
    return rc;
}
