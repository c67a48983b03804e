/* SPDX-License-Identifier: MIT */
/* The benchmark cache and the policy's filter (algo_cache.h). Plain C:
 * built into every libstoker, so its unit test runs without a GPU.
 *
 * The file is text, one entry a line, after a header line
 *   stoker-algo-cache <format version> <backend version>
 * and each entry is the key's fields, a colon, then the choice:
 *   fprop f32 nchw H200-132 16 0 256 1 28 28 32 3 3 1 1 1 1 1 1 1 : 12 4096 0.0213 2 3=1 5=0
 * (op dtype layout device align tf32 n c h w k r s sh sw ph pw dh dw
 * groups : engine workspace time_ms nknobs type=value...; op is fprop,
 * dgrad, wgrad, or fprop_bn / fprop_bn_relu for the eval-mode fused
 * forwards). Lines that start with '#' are comments. */
#include "algo_cache.h"

#include "common/internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FORMAT_MAGIC "stoker-algo-cache"
#define FORMAT_VERSION 1

static const char *const op_names[STK__ALGO_OPS] = {"fprop", "dgrad", "wgrad", "fprop_bn", "fprop_bn_relu"};

const char *stk__algo_reject(stk_cudnn_policy_t policy, int allow_tf32, unsigned notes, int64_t workspace,
                             uint64_t limit)
{
    if (notes & STK__NOTE_DOWN_CONVERT)
        return "converts inputs down";
    if ((notes & STK__NOTE_TENSOR_CORE) && !allow_tf32)
        return "uses TF32 tensor cores";
    if (policy == STK_CUDNN_DETERMINISTIC && (notes & STK__NOTE_NONDETERMINISTIC))
        return "is not deterministic";
    if (policy == STK_CUDNN_BENCHMARK && (notes & STK__NOTE_RUNTIME_COMPILATION))
        return "compiles at run time";
    if (limit && workspace >= 0 && (uint64_t)workspace > limit)
        return "needs more workspace than the limit";
    return NULL;
}

typedef struct entry {
    stk__algo_key_t key;
    stk__algo_choice_t choice;
} entry_t;

struct stk__algo_cache {
    char version[64];
    entry_t *e;
    size_t n, cap;
};

static int word_ok(const char *s, size_t cap)
{
    size_t len = strnlen(s, cap);
    if (len == 0 || len == cap)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (s[i] <= ' ' || s[i] == ':' || s[i] == '#' || s[i] == 0x7f)
            return 0;
    return 1;
}

static int key_ok(const stk__algo_key_t *k)
{
    return k->op >= 0 && k->op < STK__ALGO_OPS && word_ok(k->dtype, sizeof(k->dtype)) &&
           word_ok(k->layout, sizeof(k->layout)) && word_ok(k->device, sizeof(k->device));
}

static int key_eq(const stk__algo_key_t *a, const stk__algo_key_t *b)
{
    return a->op == b->op && !strcmp(a->dtype, b->dtype) && !strcmp(a->layout, b->layout) &&
           !strcmp(a->device, b->device) && a->align == b->align && a->tf32 == b->tf32 && a->n == b->n &&
           a->c == b->c && a->h == b->h && a->w == b->w && a->k == b->k && a->r == b->r && a->s == b->s &&
           a->sh == b->sh && a->sw == b->sw && a->ph == b->ph && a->pw == b->pw && a->dh == b->dh &&
           a->dw == b->dw && a->groups == b->groups;
}

int stk__algo_key_format(const stk__algo_key_t *k, char *buf, size_t cap)
{
    int len = snprintf(buf, cap,
                       "%s %s %s %s %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld",
                       k->op >= 0 && k->op < STK__ALGO_OPS ? op_names[k->op] : "?", k->dtype, k->layout, k->device,
                       (long long)k->align, (long long)k->tf32, (long long)k->n, (long long)k->c, (long long)k->h,
                       (long long)k->w, (long long)k->k, (long long)k->r, (long long)k->s, (long long)k->sh,
                       (long long)k->sw, (long long)k->ph, (long long)k->pw, (long long)k->dh, (long long)k->dw,
                       (long long)k->groups);
    return len < 0 || (size_t)len >= cap ? -ENAMETOOLONG : 0;
}

int stk__algo_cache_create(stk__algo_cache_t **out, const char *version)
{
    if (!out || !version || !word_ok(version, 64))
        return stk__error(-EINVAL, "algorithm cache: a version is one word of under 64 characters");
    *out = calloc(1, sizeof(**out));
    if (!*out)
        return stk__error(-ENOMEM, "algorithm cache: out of memory");
    snprintf((*out)->version, sizeof((*out)->version), "%s", version);
    return 0;
}

void stk__algo_cache_destroy(stk__algo_cache_t **c)
{
    if (!c || !*c)
        return;
    free((*c)->e);
    free(*c);
    *c = NULL;
}

static entry_t *find(const stk__algo_cache_t *c, const stk__algo_key_t *key)
{
    for (size_t i = 0; i < c->n; i++)
        if (key_eq(&c->e[i].key, key))
            return &c->e[i];
    return NULL;
}

int stk__algo_cache_lookup(const stk__algo_cache_t *c, const stk__algo_key_t *key, stk__algo_choice_t *out)
{
    const entry_t *e = c ? find(c, key) : NULL;
    if (!e)
        return 0;
    if (out)
        *out = e->choice;
    return 1;
}

int stk__algo_cache_insert(stk__algo_cache_t *c, const stk__algo_key_t *key, const stk__algo_choice_t *choice)
{
    if (!c || !key || !choice || !key_ok(key))
        return stk__error(-EINVAL, "algorithm cache: a key's op, dtype, layout and device must be set, one word each");
    if (choice->nknobs < 0 || choice->nknobs > STK__ALGO_MAX_KNOBS)
        return stk__error(-EINVAL, "algorithm cache: %d knobs (at most %d)", choice->nknobs, STK__ALGO_MAX_KNOBS);
    entry_t *e = find(c, key);
    if (!e) {
        if (c->n == c->cap) {
            size_t cap = c->cap ? 2 * c->cap : 16;
            entry_t *p = realloc(c->e, cap * sizeof(*p));
            if (!p)
                return stk__error(-ENOMEM, "algorithm cache: out of memory");
            c->e = p;
            c->cap = cap;
        }
        e = &c->e[c->n++];
        memset(e, 0, sizeof(*e));
    }
    e->key = *key;
    e->choice = *choice;
    return 0;
}

size_t stk__algo_cache_size(const stk__algo_cache_t *c)
{
    return c ? c->n : 0;
}

void stk__algo_cache_clear(stk__algo_cache_t *c)
{
    if (c)
        c->n = 0;
}

/* ---------------------------------------------------------------- file */

int stk__algo_cache_save(const stk__algo_cache_t *c, const char *path)
{
    if (!c || !path || !*path)
        return stk__error(-EINVAL, "algorithm cache: save: no path");
    size_t len = strlen(path);
    char *tmp = malloc(len + 32);
    if (!tmp)
        return stk__error(-ENOMEM, "algorithm cache: out of memory");
    /* The pid keeps two processes saving at once off each other's file. */
    snprintf(tmp, len + 32, "%s.tmp.%ld", path, (long)getpid());
    int rc = 0;
    FILE *f = fopen(tmp, "w");
    if (!f) {
        rc = stk__error(-errno, "algorithm cache: cannot write %s: %s", tmp, strerror(errno));
        free(tmp);
        return rc;
    }
    fprintf(f, "%s %d %s\n", FORMAT_MAGIC, FORMAT_VERSION, c->version);
    fprintf(f, "# op dtype layout device align tf32 n c h w k r s sh sw ph pw dh dw groups : "
               "engine workspace time_ms nknobs type=value...\n");
    char key[512];
    for (size_t i = 0; i < c->n; i++) {
        const stk__algo_choice_t *ch = &c->e[i].choice;
        if (stk__algo_key_format(&c->e[i].key, key, sizeof(key)) < 0)
            continue; /* cannot happen: insert checked the strings' lengths */
        fprintf(f, "%s : %lld %lld %.6g %d", key, (long long)ch->engine, (long long)ch->workspace, ch->time_ms,
                ch->nknobs);
        for (int j = 0; j < ch->nknobs; j++)
            fprintf(f, " %lld=%lld", (long long)ch->knob_type[j], (long long)ch->knob_value[j]);
        fputc('\n', f);
    }
    int werr = ferror(f) ? (errno ? errno : EIO) : 0;
    if (fflush(f) != 0 && !werr)
        werr = errno ? errno : EIO;
    if (fsync(fileno(f)) != 0 && !werr)
        werr = errno;
    if (fclose(f) != 0 && !werr)
        werr = errno ? errno : EIO;
    if (werr) {
        rc = stk__error(-werr, "algorithm cache: writing %s: %s", tmp, strerror(werr));
        unlink(tmp);
    } else if (rename(tmp, path) != 0) {
        rc = stk__error(-errno, "algorithm cache: renaming %s to %s: %s", tmp, path, strerror(errno));
        unlink(tmp);
    }
    free(tmp);
    return rc;
}

/* A whole token as a decimal int64 in [lo, hi]. */
static int parse_i64(const char *t, int64_t lo, int64_t hi, int64_t *out)
{
    if (!t || !*t)
        return 0;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(t, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return 0;
    *out = v;
    return 1;
}

static int parse_word(const char *t, char *dst, size_t cap)
{
    if (!t || strlen(t) >= cap)
        return 0;
    snprintf(dst, cap, "%s", t);
    return word_ok(dst, cap);
}

/* One entry line; 1 when well formed. Tokens are split in place. */
static int parse_entry(char *line, stk__algo_key_t *k, stk__algo_choice_t *ch)
{
    char *save = NULL, *t[64];
    int n = 0;
    for (char *p = strtok_r(line, " \t\r\n", &save); p; p = strtok_r(NULL, " \t\r\n", &save)) {
        if (n == (int)STK__ARRAY_LEN(t))
            return 0;
        t[n++] = p;
    }
    /* 20 key fields, ':', 4 choice fields, then the knobs. */
    if (n < 25 || strcmp(t[20], ":") != 0)
        return 0;
    memset(k, 0, sizeof(*k));
    memset(ch, 0, sizeof(*ch));
    k->op = -1;
    for (int i = 0; i < STK__ALGO_OPS; i++)
        if (!strcmp(t[0], op_names[i]))
            k->op = i;
    if (k->op < 0 || !parse_word(t[1], k->dtype, sizeof(k->dtype)) ||
        !parse_word(t[2], k->layout, sizeof(k->layout)) || !parse_word(t[3], k->device, sizeof(k->device)))
        return 0;
    int64_t *num[16] = {&k->align, &k->tf32, &k->n, &k->c,  &k->h,  &k->w,  &k->k,  &k->r,
                        &k->s,     &k->sh,   &k->sw, &k->ph, &k->pw, &k->dh, &k->dw, &k->groups};
    for (int i = 0; i < 16; i++)
        if (!parse_i64(t[4 + i], 0, INT64_MAX, num[i]))
            return 0;
    int64_t nk = 0;
    char *end = NULL;
    errno = 0;
    ch->time_ms = strtod(t[23], &end);
    if (errno || *end || !(ch->time_ms >= 0.0) || !parse_i64(t[21], 0, INT64_MAX, &ch->engine) ||
        !parse_i64(t[22], 0, INT64_MAX, &ch->workspace) || !parse_i64(t[24], 0, STK__ALGO_MAX_KNOBS, &nk) ||
        n != 25 + (int)nk)
        return 0;
    ch->nknobs = (int)nk;
    for (int j = 0; j < ch->nknobs; j++) {
        char *eq = strchr(t[25 + j], '=');
        if (!eq)
            return 0;
        *eq = '\0';
        if (!parse_i64(t[25 + j], 0, INT64_MAX, &ch->knob_type[j]) ||
            !parse_i64(eq + 1, INT64_MIN, INT64_MAX, &ch->knob_value[j]))
            return 0;
    }
    return 1;
}

int stk__algo_cache_load(stk__algo_cache_t *c, const char *path)
{
    if (!c || !path || !*path)
        return stk__error(-EINVAL, "algorithm cache: load: no path");
    FILE *f = fopen(path, "r");
    if (!f)
        return stk__error(-errno, "algorithm cache: cannot read %s: %s", path, strerror(errno));
    stk__algo_cache_t *tmp = NULL;
    int rc = stk__algo_cache_create(&tmp, c->version);
    char line[1024];
    long lineno = 0;
    if (rc < 0)
        goto out;
    if (!fgets(line, sizeof(line), f)) {
        int e = errno ? errno : EIO;
        if (ferror(f))
            rc = stk__error(-e, "algorithm cache: reading %s: %s", path, strerror(e));
        else
            rc = stk__error(STK_EFORMAT, "algorithm cache %s: empty, not a cache file", path);
        goto out;
    }
    lineno = 1;
    {
        char magic[32], version[80];
        int fv = 0;
        if (sscanf(line, "%31s %d %79s", magic, &fv, version) != 3 || strcmp(magic, FORMAT_MAGIC) != 0) {
            rc = stk__error(STK_EFORMAT, "algorithm cache %s: not a cache file (no '%s' header)", path, FORMAT_MAGIC);
            goto out;
        }
        if (fv != FORMAT_VERSION) {
            rc = stk__error(STK_EFORMAT, "algorithm cache %s: format version %d, this build reads %d", path, fv,
                            FORMAT_VERSION);
            goto out;
        }
        if (strcmp(version, c->version) != 0) {
            rc = stk__error(STK_EFORMAT, "algorithm cache %s: written for %s, this process runs %s", path, version,
                            c->version);
            goto out;
        }
    }
    while (fgets(line, sizeof(line), f)) {
        lineno++;
        size_t len = strlen(line);
        if (len == sizeof(line) - 1 && line[len - 1] != '\n') {
            rc = stk__error(STK_EDATA, "algorithm cache %s: line %ld: too long", path, lineno);
            goto out;
        }
        const char *p = line + strspn(line, " \t\r\n");
        if (*p == '\0' || *p == '#')
            continue;
        stk__algo_key_t k;
        stk__algo_choice_t ch;
        if (!parse_entry(line, &k, &ch)) {
            rc = stk__error(STK_EDATA, "algorithm cache %s: line %ld: not an entry (want op dtype layout device "
                                       "and 16 numbers, ':', engine workspace time_ms nknobs type=value...)",
                            path, lineno);
            goto out;
        }
        if ((rc = stk__algo_cache_insert(tmp, &k, &ch)) < 0)
            goto out;
    }
    if (ferror(f)) {
        rc = stk__error(-EIO, "algorithm cache: reading %s", path);
        goto out;
    }
    for (size_t i = 0; i < tmp->n; i++)
        if ((rc = stk__algo_cache_insert(c, &tmp->e[i].key, &tmp->e[i].choice)) < 0)
            goto out;
    rc = (int)tmp->n;
out:
    stk__algo_cache_destroy(&tmp);
    fclose(f);
    return rc;
}
