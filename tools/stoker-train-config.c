/* SPDX-License-Identifier: MIT */
/* stoker-train's configuration: "key = value" lines with # comments, one
 * table of keys (type, bounds, help) drives parsing, --set overrides and
 * the effective-config dump, so a key cannot be parsed one way and printed
 * another. Errors name the origin, the line and the key. */
#define _GNU_SOURCE
#include "stoker-train.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum key_type { K_STR, K_PATH, K_INT, K_U64, K_F64, K_BOOL, K_ENUM } key_type_t;

typedef struct key_def {
    const char *name;
    key_type_t type;
    size_t off;
    size_t cap;        /* K_STR, K_PATH, K_ENUM: buffer size */
    double min, max;   /* K_INT, K_U64, K_F64 */
    const char *choices; /* K_ENUM: "a|b|c" */
} key_def_t;

#define OFF(f) offsetof(train_config_t, f)
#define STR(f) OFF(f), sizeof(((train_config_t *)0)->f)

static const key_def_t keys[] = {
    {"run_dir", K_PATH, STR(run_dir), 0, 0, NULL},
    {"train_data", K_PATH, STR(train_data), 0, 0, NULL},
    {"test_data", K_PATH, STR(test_data), 0, 0, NULL},
    {"model", K_PATH, STR(model), 0, 0, NULL},
    {"augment", K_STR, STR(augment), 0, 0, NULL},
    {"test_augment", K_STR, STR(test_augment), 0, 0, NULL},
    {"image_field", K_STR, STR(image_field), 0, 0, NULL},
    {"label_field", K_STR, STR(label_field), 0, 0, NULL},
    {"target", K_ENUM, STR(target), 0, 0, "label|next_token"},
    {"boundary_token", K_INT, OFF(boundary_token), 0, 0, 2147483647.0, NULL},
    {"bucket_pool", K_INT, OFF(bucket_pool), 0, 0, 1 << 20, NULL},
    {"train_limit", K_U64, OFF(train_limit), 0, 0, 1e15, NULL},
    {"test_limit", K_U64, OFF(test_limit), 0, 0, 1e15, NULL},
    {"optimizer", K_STR, STR(optimizer), 0, 0, NULL},
    {"scheduler", K_STR, STR(scheduler), 0, 0, NULL},
    {"epochs", K_INT, OFF(epochs), 0, 1, 1e6, NULL},
    {"clip_norm", K_F64, OFF(clip_norm), 0, 0, 1e12, NULL},
    {"stop_after_epochs", K_INT, OFF(stop_after_epochs), 0, 0, 1e6, NULL},
    {"batch_size", K_INT, OFF(batch_size), 0, 1, 1 << 20, NULL},
    {"eval_batch_size", K_INT, OFF(eval_batch_size), 0, 0, 1 << 20, NULL},
    {"accum_steps", K_INT, OFF(accum_steps), 0, 1, 1 << 16, NULL},
    {"drop_last", K_BOOL, OFF(drop_last), 0, 0, 1, NULL},
    {"workers", K_INT, OFF(workers), 0, 0, 256, NULL},
    {"prefetch", K_INT, OFF(prefetch), 0, 1, 64, NULL},
    {"seed", K_U64, OFF(seed), 0, 0, 1.9e19, NULL},
    {"threads", K_INT, OFF(threads), 0, 0, 1024, NULL},
    {"device", K_STR, STR(device), 0, 0, NULL},
    {"precision", K_ENUM, STR(precision), 0, 0, "fp32|tf32|bf16|fp16"},
    {"cuda_graph", K_ENUM, STR(cuda_graph), 0, 0, "on|off"},
    {"loss_scale", K_ENUM, STR(loss_scale), 0, 0, "auto|dynamic|off"},
    {"loss_scale_init", K_F64, OFF(loss_scale_init), 0, 1, 3.4028234663852886e38, NULL},
    {"loss_scale_growth_interval", K_INT, OFF(loss_scale_growth_interval), 0, 1, 1e9, NULL},
    {"timeout", K_INT, OFF(timeout), 0, 0, 86400, NULL},
    {"stop_grace", K_INT, OFF(stop_grace), 0, 1, 86400, NULL},
    {"checkpoint_dir", K_PATH, STR(checkpoint_dir), 0, 0, NULL},
    {"keep_last", K_INT, OFF(keep_last), 0, 0, 1 << 20, NULL},
    {"checkpoint_steps", K_INT, OFF(checkpoint_steps), 0, 0, 1 << 30, NULL},
    {"metrics", K_PATH, STR(metrics), 0, 0, NULL},
    {"plot", K_PATH, STR(plot), 0, 0, NULL},
    {"progress", K_ENUM, 0, 0, 0, 0, "auto|on|off"},
    {"progress_every", K_INT, OFF(progress_every), 0, 1, 86400, NULL},
    {"profile", K_BOOL, OFF(profile), 0, 0, 1, NULL},
    {"bucket_mb", K_F64, OFF(bucket_mb), 0, 0.0001, 1e6, NULL},
    {"sync_bn", K_BOOL, OFF(sync_bn), 0, 0, 1, NULL},
    {"cudnn", K_ENUM, STR(cudnn), 0, 0, "heuristic|benchmark|deterministic"},
    {"cudnn_cache", K_PATH, STR(cudnn_cache), 0, 0, NULL},
    {"cudnn_workspace_mb", K_F64, OFF(cudnn_workspace_mb), 0, 0, 1e7, NULL},
};

void train_config_default(train_config_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    strcpy(cfg->image_field, "image");
    strcpy(cfg->label_field, "label");
    strcpy(cfg->target, "label");
    cfg->boundary_token = 10; /* '\n': words and lines of text end there */
    strcpy(cfg->optimizer, "sgd:lr=0.1");
    strcpy(cfg->scheduler, "constant");
    cfg->epochs = 1;
    cfg->batch_size = 128;
    cfg->accum_steps = 1;
    cfg->drop_last = 1;
    cfg->workers = 2;
    cfg->prefetch = 2;
    cfg->threads = 0;
    strcpy(cfg->device, "auto");
    strcpy(cfg->precision, "fp32");
    strcpy(cfg->cuda_graph, "off");
    strcpy(cfg->loss_scale, "auto");
    cfg->loss_scale_init = 65536;
    cfg->loss_scale_growth_interval = 2000;
    cfg->keep_last = 3;
    cfg->progress = -1;
    cfg->progress_every = 30;
    cfg->stop_grace = 30;
    cfg->bucket_mb = 25;
    strcpy(cfg->cudnn, "heuristic");
}

_Static_assert(sizeof keys / sizeof keys[0] <= sizeof((train_config_t *)0)->origin /
                                                 sizeof((train_config_t *)0)->origin[0],
               "train_config_t.origin has a slot per key");

static int errf(char *err, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int errf(char *err, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
    return -1;
}

static const key_def_t *find_key(const char *name)
{
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (strcmp(keys[i].name, name) == 0)
            return &keys[i];
    return NULL;
}

/* Suggests a known key within edit distance 2 of an unknown one. */
static const char *suggest(const char *name)
{
    const char *best = NULL;
    size_t bestd = 3, n = strlen(name);
    if (n > 40)
        return NULL;
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        const char *t = keys[k].name;
        size_t m = strlen(t);
        size_t d[48][48];
        for (size_t i = 0; i <= n; i++)
            d[i][0] = i;
        for (size_t j = 0; j <= m; j++)
            d[0][j] = j;
        for (size_t i = 1; i <= n; i++)
            for (size_t j = 1; j <= m; j++) {
                size_t c = d[i - 1][j - 1] + (name[i - 1] != t[j - 1]);
                if (d[i - 1][j] + 1 < c)
                    c = d[i - 1][j] + 1;
                if (d[i][j - 1] + 1 < c)
                    c = d[i][j - 1] + 1;
                d[i][j] = c;
            }
        if (d[n][m] < bestd) {
            bestd = d[n][m];
            best = t;
        }
    }
    return best;
}

static int set_value(train_config_t *cfg, const key_def_t *k, const char *val, const char *where, char *err,
                     size_t cap)
{
    char *base = (char *)cfg;
    char *end;
    switch (k->type) {
    case K_STR:
    case K_PATH:
        if (strlen(val) >= k->cap)
            return errf(err, cap, "%skey '%s': value is longer than %zu characters", where, k->name, k->cap - 1);
        strcpy(base + k->off, val);
        return 0;
    case K_INT:
    case K_U64: {
        if (!val[0] || val[0] == '-' || val[0] == '+')
            goto not_int;
        errno = 0;
        unsigned long long v = strtoull(val, &end, 10);
        if (errno || *end)
            goto not_int;
        if ((double)v < k->min || (double)v > k->max)
            return errf(err, cap, "%skey '%s': %s is out of range [%.0f, %.0f]", where, k->name, val, k->min,
                        k->max);
        if (k->type == K_INT)
            *(int *)(base + k->off) = (int)v;
        else
            *(uint64_t *)(base + k->off) = (uint64_t)v;
        return 0;
    not_int:
        return errf(err, cap, "%skey '%s': '%s' is not a non-negative integer", where, k->name, val);
    }
    case K_F64: {
        errno = 0;
        double v = strtod(val, &end);
        if (!val[0] || errno || *end || !isfinite(v))
            return errf(err, cap, "%skey '%s': '%s' is not a number", where, k->name, val);
        if (v < k->min || v > k->max)
            return errf(err, cap, "%skey '%s': %s is out of range [%g, %g]", where, k->name, val, k->min, k->max);
        *(double *)(base + k->off) = v;
        return 0;
    }
    case K_BOOL: {
        int v;
        if (!strcmp(val, "true") || !strcmp(val, "1") || !strcmp(val, "yes") || !strcmp(val, "on"))
            v = 1;
        else if (!strcmp(val, "false") || !strcmp(val, "0") || !strcmp(val, "no") || !strcmp(val, "off"))
            v = 0;
        else
            return errf(err, cap, "%skey '%s': '%s' is not a boolean (true/false)", where, k->name, val);
        *(int *)(base + k->off) = v;
        return 0;
    }
    case K_ENUM: {
        size_t n = strlen(val);
        const char *c = k->choices;
        int idx = 0, found = -1;
        while (*c) {
            const char *bar = strchr(c, '|');
            size_t len = bar ? (size_t)(bar - c) : strlen(c);
            if (n && len == n && !strncmp(c, val, n)) {
                found = idx;
                break;
            }
            c += len + (bar ? 1 : 0);
            idx++;
        }
        if (found < 0)
            return errf(err, cap, "%skey '%s': '%s' is not one of %s", where, k->name, val, k->choices);
        if (!strcmp(k->name, "progress"))
            cfg->progress = found == 0 ? -1 : found == 1 ? 1 : 0;
        else
            strcpy(base + k->off, val);
        return 0;
    }
    }
    return errf(err, cap, "%skey '%s': internal error", where, k->name);
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

/* Strips a comment: '#' at the start of the value or after whitespace
 * (augment specs and paths may contain '#' otherwise). */
static void strip_comment(char *s)
{
    for (char *p = s; *p; p++)
        if (*p == '#' && (p == s || isspace((unsigned char)p[-1]))) {
            *p = '\0';
            return;
        }
}

static int apply_kv(train_config_t *cfg, char *line, const char *where, const char *origin, char *err, size_t cap)
{
    char *eq = strchr(line, '=');
    if (!eq)
        return errf(err, cap, "%sexpected 'key = value', got '%s'", where, trim(line));
    *eq = '\0';
    char *key = trim(line), *val = trim(eq + 1);
    if (!key[0])
        return errf(err, cap, "%smissing key before '='", where);
    const key_def_t *k = find_key(key);
    if (!k) {
        const char *s = suggest(key);
        if (s)
            return errf(err, cap, "%sunknown key '%s' (did you mean '%s'?)", where, key, s);
        return errf(err, cap, "%sunknown key '%s'", where, key);
    }
    int rc = set_value(cfg, k, val, where, err, cap);
    if (rc == 0)
        snprintf(cfg->origin[k - keys], sizeof cfg->origin[0], "%s", origin);
    return rc;
}

int train_config_parse(train_config_t *cfg, const char *text, const char *origin, char *err, size_t errcap)
{
    const char *p = text;
    int lineno = 0;
    while (*p) {
        lineno++;
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        char *line = strndup(p, len);
        if (!line)
            return errf(err, errcap, "%s: out of memory", origin);
        strip_comment(line);
        char *t = trim(line);
        int rc = 0;
        if (t[0]) {
            char where[TRAIN_PATH_MAX + 32];
            snprintf(where, sizeof where, "%s:%d: ", origin, lineno);
            char at[TRAIN_PATH_MAX + 16];
            snprintf(at, sizeof at, "%s:%d", origin, lineno);
            rc = apply_kv(cfg, t, where, at, err, errcap);
        }
        free(line);
        if (rc)
            return rc;
        p = nl ? nl + 1 : p + len;
    }
    return 0;
}

int train_config_load(train_config_t *cfg, const char *path, char *err, size_t errcap)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return errf(err, errcap, "cannot open config %s: %s", path, strerror(errno));
    char *text = NULL;
    size_t cap = 0, len = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = cap ? 2 * cap : 8192;
            char *nt = realloc(text, cap);
            if (!nt) {
                free(text);
                fclose(f);
                return errf(err, errcap, "%s: out of memory", path);
            }
            text = nt;
        }
        size_t r = fread(text + len, 1, 4096, f);
        len += r;
        if (r < 4096)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(text);
        return errf(err, errcap, "cannot read config %s", path);
    }
    text[len] = '\0';
    if (strlen(text) != len) {
        free(text);
        return errf(err, errcap, "%s: contains a NUL byte (not a text file)", path);
    }
    int rc = train_config_parse(cfg, text, path, err, errcap);
    free(text);
    return rc;
}

int train_config_set(train_config_t *cfg, const char *assignment, char *err, size_t errcap)
{
    char *copy = strdup(assignment);
    if (!copy)
        return errf(err, errcap, "out of memory");
    char where[TRAIN_SPEC_MAX + 32];
    snprintf(where, sizeof where, "--set %.*s: ", TRAIN_SPEC_MAX, assignment);
    int rc = apply_kv(cfg, copy, where, "--set", err, errcap);
    free(copy);
    return rc;
}

/* key's slot in origin[] */
static size_t key_index(const char *name)
{
    const key_def_t *k = find_key(name);
    return k ? (size_t)(k - keys) : 0;
}

const char *train_config_where(const train_config_t *cfg, const char *key, char *buf, size_t cap)
{
    const key_def_t *k = find_key(key);
    const char *o = k ? cfg->origin[k - keys] : "";
    snprintf(buf, cap, "%s%skey '%s'", o, o[0] ? ": " : "", key);
    return buf;
}

/* A path under run_dir for an output key left empty. */
static int run_default(train_config_t *cfg, char *dst, size_t cap, const char *key, const char *name, char *err,
                       size_t errcap)
{
    if (dst[0] || !cfg->run_dir[0])
        return 0;
    int w = snprintf(dst, cap, "%s/%s", cfg->run_dir, name);
    if (w < 0 || (size_t)w >= cap)
        return errf(err, errcap, "key 'run_dir': %s/%s is longer than %zu characters", cfg->run_dir, name, cap - 1);
    snprintf(cfg->origin[key_index(key)], sizeof cfg->origin[0], "%s", cfg->origin[key_index("run_dir")]);
    return 0;
}

int train_config_check(train_config_t *cfg, const char *path, char *err, size_t errcap)
{
    if (run_default(cfg, cfg->checkpoint_dir, sizeof cfg->checkpoint_dir, "checkpoint_dir", "checkpoints", err,
                    errcap) ||
        run_default(cfg, cfg->metrics, sizeof cfg->metrics, "metrics", "metrics.jsonl", err, errcap))
        return -1;
    static const char *required[] = {"train_data", "test_data", "model"};
    const char *vals[] = {cfg->train_data, cfg->test_data, cfg->model};
    char where[TRAIN_PATH_MAX + 64];
    for (int i = 0; i < 3; i++) {
        if (vals[i][0])
            continue;
        if (cfg->origin[key_index(required[i])][0])
            return errf(err, errcap, "%s is empty", train_config_where(cfg, required[i], where, sizeof where));
        return errf(err, errcap, "%s: key '%s' is required", path, required[i]);
    }
    if (cfg->stop_after_epochs > cfg->epochs)
        return errf(err, errcap, "%s: %d is more than epochs (%d)",
                    train_config_where(cfg, "stop_after_epochs", where, sizeof where), cfg->stop_after_epochs,
                    cfg->epochs);
    if (cfg->checkpoint_steps && !cfg->checkpoint_dir[0])
        return errf(err, errcap, "%s: needs checkpoint_dir",
                    train_config_where(cfg, "checkpoint_steps", where, sizeof where));
    stk_device_t kind;
    int index;
    if (train_device_parse(cfg->device, &kind, &index))
        return errf(err, errcap, "%s: '%s' is not auto, cpu, cuda or cuda:N",
                    train_config_where(cfg, "device", where, sizeof where), cfg->device);
    if (cfg->cudnn_cache[0] && strcmp(cfg->cudnn, "benchmark") != 0)
        return errf(err, errcap, "%s: a cache holds what the benchmark policy timed; set cudnn = benchmark",
                    train_config_where(cfg, "cudnn_cache", where, sizeof where));
    return 0;
}

int train_device_parse(const char *text, stk_device_t *kind, int *index)
{
    *kind = STK_DEVICE_CPU;
    *index = -1;
    if (!strcmp(text, "auto") || !strcmp(text, "cpu"))
        return 0;
    if (strncmp(text, "cuda", 4))
        return -1;
    *kind = STK_DEVICE_CUDA;
    if (!text[4])
        return 0;
    char *end;
    errno = 0;
    long n = text[4] == ':' && isdigit((unsigned char)text[5]) ? strtol(text + 5, &end, 10) : -1;
    if (n < 0 || n > 1024 || errno || *end)
        return -1;
    *index = (int)n;
    return 0;
}

int train_precision_parse(const char *text, stk_precision_t *p)
{
    static const stk_precision_t all[] = {STK_PRECISION_FP32, STK_PRECISION_TF32, STK_PRECISION_BF16,
                                          STK_PRECISION_FP16};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (!strcmp(text, stk_precision_name(all[i]))) {
            *p = all[i];
            return 0;
        }
    return -1;
}

int train_config_format(const train_config_t *cfg, char *buf, size_t cap)
{
    size_t used = 0;
    const char *base = (const char *)cfg;
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const key_def_t *k = &keys[i];
        char val[TRAIN_PATH_MAX + 8];
        switch (k->type) {
        case K_STR:
        case K_PATH:
        case K_ENUM:
            if (!strcmp(k->name, "progress"))
                snprintf(val, sizeof val, "%s", cfg->progress < 0 ? "auto" : cfg->progress ? "on" : "off");
            else
                snprintf(val, sizeof val, "%s", base + k->off);
            break;
        case K_INT:
            snprintf(val, sizeof val, "%d", *(const int *)(base + k->off));
            break;
        case K_U64:
            snprintf(val, sizeof val, "%llu", (unsigned long long)*(const uint64_t *)(base + k->off));
            break;
        case K_F64:
            snprintf(val, sizeof val, "%.17g", *(const double *)(base + k->off));
            break;
        case K_BOOL:
            snprintf(val, sizeof val, "%s", *(const int *)(base + k->off) ? "true" : "false");
            break;
        }
        int w = snprintf(buf + used, used < cap ? cap - used : 0, "%s = %s\n", k->name, val);
        if (w < 0)
            return -1;
        used += (size_t)w;
    }
    return used < cap ? 0 : -1;
}

void train_config_eval_augment(const train_config_t *cfg, char *buf, size_t cap)
{
    if (cfg->test_augment[0]) {
        snprintf(buf, cap, "%s", cfg->test_augment);
        return;
    }
    /* Evaluation sees the data as the model does after augmentation,
     * without the random parts. */
    if (stk_train_normalize_spec(cfg->augment, buf, cap) != 0)
        buf[0] = '\0';
}

void train_config_diff(const train_config_t *a, const train_config_t *b, const char *list, char *buf, size_t cap)
{
    size_t used = 0;
    buf[0] = '\0';
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s", list);
    for (char *save = NULL, *name = strtok_r(tmp, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
        const key_def_t *k = find_key(name);
        if (!k)
            continue;
        const char *pa = (const char *)a + k->off, *pb = (const char *)b + k->off;
        int same;
        switch (k->type) {
        case K_STR:
        case K_PATH:
            same = strcmp(pa, pb) == 0;
            break;
        case K_U64:
            same = *(const uint64_t *)pa == *(const uint64_t *)pb;
            break;
        case K_F64:
            same = *(const double *)pa == *(const double *)pb;
            break;
        case K_ENUM:
            /* an enum without storage (progress) is a choice of this run only */
            same = k->cap == 0 || strcmp(pa, pb) == 0;
            break;
        default:
            same = *(const int *)pa == *(const int *)pb;
            break;
        }
        if (!same) {
            int w = snprintf(buf + used, cap - used, "%s%s", used ? ", " : "", name);
            if (w > 0 && (size_t)w < cap - used)
                used += (size_t)w;
        }
    }
}
