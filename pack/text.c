/* SPDX-License-Identifier: MIT */
/* Text input: one record per line, the line as token ids (tokens:u8[-1]
 * or tokens:i32[-1]). Without a vocabulary each byte is a token (ids
 * 0..255). With one (a file of one token per line; line k is id k) a line
 * splits into whitespace-separated words, or into UTF-8 characters, and a
 * token not in the vocabulary becomes unk_id (or, with unk_id -1, an error
 * naming the line). The newline, and a '\r' before it, are not part of a
 * line; gzip or plain. Beside the shards: text.json (what the ids mean)
 * and, with a vocabulary, vocab.txt (the one used). */
#define _GNU_SOURCE
#include "pack_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct vocab {
    char **tok;      /* by id */
    int64_t n;
    int64_t *slot;   /* open addressing: id + 1, 0 empty */
    size_t cap;      /* power of two, >= 2n */
} vocab_t;

typedef struct text_priv {
    const char *path;
    gzFile f;
    int chars;       /* vocabulary of UTF-8 characters, not words */
    int64_t unk;     /* -1: unknown tokens are errors */
    vocab_t v;       /* n == 0: bytes */
    char *line;      /* the current line */
    size_t line_cap;
    void *ids;       /* its tokens (u8 for bytes, i32 with a vocabulary) */
    size_t ids_cap;
    uint64_t lineno; /* 1-based number of the line last read */
} text_priv_t;

static uint64_t hash_str(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static int64_t vocab_find(const vocab_t *v, const char *s, size_t n)
{
    for (size_t i = hash_str(s, n) & (v->cap - 1);; i = (i + 1) & (v->cap - 1)) {
        int64_t id = v->slot[i] - 1;
        if (id < 0)
            return -1;
        if (strlen(v->tok[id]) == n && memcmp(v->tok[id], s, n) == 0)
            return id;
    }
}

static void vocab_free(vocab_t *v)
{
    for (int64_t i = 0; i < v->n; i++)
        free(v->tok[i]);
    free(v->tok);
    free(v->slot);
    memset(v, 0, sizeof(*v));
}

/* Reads one line of f into *buf (without '\n' and a '\r' before it).
 * Returns 1 and its length in *len, 0 at the end, or an error. */
static int read_line(gzFile f, char **buf, size_t *cap, size_t *len, const char *path)
{
    size_t n = 0;
    for (;;) {
        if (*cap - n < 2) {
            size_t c = *cap ? *cap * 2 : 256;
            char *p = realloc(*buf, c);
            if (!p)
                return stk__error(-ENOMEM, "out of memory");
            *buf = p;
            *cap = c;
        }
        if (!gzgets(f, *buf + n, (int)(*cap - n > INT32_MAX ? INT32_MAX : *cap - n))) {
            int zerr;
            const char *msg = gzerror(f, &zerr);
            if (zerr != Z_OK && zerr != Z_STREAM_END)
                return stk__error(STK_EFORMAT, "%s: %s", path, msg);
            break;
        }
        n += strlen(*buf + n);
        if (n && (*buf)[n - 1] == '\n')
            break;
    }
    if (n == 0 && gzeof(f))
        return 0;
    if (n && (*buf)[n - 1] == '\n')
        n--;
    if (n && (*buf)[n - 1] == '\r')
        n--;
    (*buf)[n] = 0;
    *len = n;
    return 1;
}

static int vocab_load(vocab_t *v, const char *path)
{
    gzFile f;
    int rc = stk__pack_gz_open(&f, path);
    if (rc)
        return rc;
    char *line = NULL;
    size_t cap = 0, len = 0, tcap = 0;
    while ((rc = read_line(f, &line, &cap, &len, path)) == 1) {
        if ((size_t)v->n == tcap) {
            tcap = tcap ? 2 * tcap : 1024;
            char **t = realloc(v->tok, tcap * sizeof(*t));
            if (!t) {
                rc = stk__error(-ENOMEM, "out of memory");
                break;
            }
            v->tok = t;
        }
        if (!(v->tok[v->n] = strdup(line))) {
            rc = stk__error(-ENOMEM, "out of memory");
            break;
        }
        v->n++;
        if (v->n > INT32_MAX) {
            rc = stk__error(STK_EFORMAT, "%s: over 2^31 tokens", path);
            break;
        }
    }
    free(line);
    gzclose(f);
    if (rc < 0)
        return rc;
    if (v->n == 0)
        return stk__error(STK_EEMPTY, "%s: the vocabulary is empty", path);
    for (v->cap = 16; v->cap < 2 * (size_t)v->n; v->cap *= 2)
        ;
    if (!(v->slot = calloc(v->cap, sizeof(*v->slot))))
        return stk__error(-ENOMEM, "out of memory");
    for (int64_t id = 0; id < v->n; id++) {
        size_t n = strlen(v->tok[id]);
        int64_t seen = vocab_find(v, v->tok[id], n);
        if (seen >= 0)
            return stk__error(STK_EFORMAT, "%s: line %" PRId64 ": token '%s' is already line %" PRId64, path, id + 1,
                              v->tok[id], seen + 1);
        size_t i = hash_str(v->tok[id], n) & (v->cap - 1);
        while (v->slot[i])
            i = (i + 1) & (v->cap - 1);
        v->slot[i] = id + 1;
    }
    return 0;
}

/* Bytes in the UTF-8 character at s (of n bytes left); 0 when invalid. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    size_t k = s[0] < 0x80 ? 1 : (s[0] >> 5) == 6 ? 2 : (s[0] >> 4) == 14 ? 3 : (s[0] >> 3) == 30 ? 4 : 0;
    if (k == 0 || k > n)
        return 0;
    for (size_t i = 1; i < k; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    return k;
}

static int ids_room(text_priv_t *p, size_t n)
{
    size_t es = p->v.n ? sizeof(int32_t) : 1;
    if (n * es <= p->ids_cap)
        return 0;
    size_t c = n * es * 2;
    void *q = realloc(p->ids, c);
    if (!q)
        return stk__error(-ENOMEM, "out of memory");
    p->ids = q;
    p->ids_cap = c;
    return 0;
}

/* The current line's tokens into p->ids; *count of them. */
static int tokenize(text_priv_t *p, size_t len, int64_t *count)
{
    int rc = ids_room(p, len + 1);
    if (rc)
        return rc;
    if (!p->v.n) {
        memcpy(p->ids, p->line, len);
        *count = (int64_t)len;
        return 0;
    }
    int32_t *ids = p->ids;
    int64_t n = 0;
    const char *s = p->line;
    for (size_t i = 0; i < len;) {
        size_t k;
        if (p->chars) {
            k = utf8_len((const unsigned char *)s + i, len - i);
            if (!k)
                return stk__error(STK_EFORMAT, "%s: line %" PRIu64 ": byte %zu is not UTF-8", p->path, p->lineno,
                                  i + 1);
        } else {
            if (strchr(" \t\v\f", s[i])) {
                i++;
                continue;
            }
            for (k = 0; i + k < len && !strchr(" \t\v\f", s[i + k]); k++)
                ;
        }
        int64_t id = vocab_find(&p->v, s + i, k);
        if (id < 0 && p->unk < 0)
            return stk__error(STK_EFORMAT, "%s: line %" PRIu64 ": '%.*s' is not in the vocabulary (and no unknown-token "
                                           "id was given)",
                              p->path, p->lineno, (int)k, s + i);
        ids[n++] = (int32_t)(id < 0 ? p->unk : id);
        i += k;
    }
    *count = n;
    return 0;
}

static int text_next(stk_pack_source_t *src, const void **data, int64_t *ext)
{
    text_priv_t *p = src->priv;
    size_t len = 0;
    int rc = read_line(p->f, &p->line, &p->line_cap, &len, p->path);
    if (rc == 0)
        return stk__error(STK_EFORMAT, "%s: ends before line %" PRIu64 " (changed while packing?)", p->path,
                          p->lineno + 1);
    if (rc < 0)
        return rc;
    p->lineno++;
    int64_t n = 0;
    if ((rc = tokenize(p, len, &n)))
        return rc;
    data[0] = p->ids;
    ext[0] = n;
    src->pos++;
    return 0;
}

static int text_rewind(stk_pack_source_t *src)
{
    text_priv_t *p = src->priv;
    if (gzrewind(p->f) != 0)
        return stk__error(-EIO, "%s: cannot rewind", p->path);
    p->lineno = 0;
    src->pos = 0;
    return 0;
}

static void text_close(stk_pack_source_t *src)
{
    text_priv_t *p = src->priv;
    if (!p)
        return;
    if (p->f)
        gzclose(p->f);
    vocab_free(&p->v);
    free(p->line);
    free(p->ids);
    free(p);
    src->priv = NULL;
}

static int text_open(stk_pack_source_t *src, const stk_pack_source_config_t *cfg)
{
    if (cfg->ninputs != 1)
        return stk__error(STK_ECONFIG, "text: takes one input file, got %zu", cfg->ninputs);
    text_priv_t *p = calloc(1, sizeof(*p));
    if (!p)
        return stk__error(-ENOMEM, "out of memory");
    src->priv = p;
    p->path = cfg->inputs[0];
    p->chars = cfg->vocab_chars != 0;
    p->unk = cfg->unk_id;
    int rc;
    if (cfg->vocab && (rc = vocab_load(&p->v, cfg->vocab)))
        return rc;
    if (!cfg->vocab && cfg->vocab_chars)
        return stk__error(STK_ECONFIG, "text: characters need a vocabulary file");
    if (p->v.n && (p->unk < -1 || p->unk >= p->v.n))
        return stk__error(STK_ECONFIG, "text: unknown-token id %" PRId64 " is not a line of %s (0 to %" PRId64 ")",
                          p->unk, cfg->vocab, p->v.n - 1);
    const char *field = cfg->field && *cfg->field ? cfg->field : "tokens";
    int64_t var[1] = {-1};
    if ((rc = stk_schema_add(&src->schema, field, p->v.n ? STK_DTYPE_I32 : STK_DTYPE_U8, 1, var)))
        return rc;
    if ((rc = stk__pack_gz_open(&p->f, p->path)))
        return rc;
    /* Count the lines, tokenizing each, so that a bad one fails here. */
    uint64_t count = 0;
    size_t len;
    while ((rc = read_line(p->f, &p->line, &p->line_cap, &len, p->path)) == 1) {
        p->lineno++;
        int64_t n;
        if ((rc = tokenize(p, len, &n)))
            return rc;
        if (++count == cfg->limit)
            break;
    }
    if (rc < 0)
        return rc;
    src->count = count;
    return text_rewind(src);
}

static int text_side_files(stk_pack_source_t *src, stk_writer_t *w)
{
    text_priv_t *p = src->priv;
    char json[256];
    if (!p->v.n) {
        snprintf(json, sizeof(json), "{\"tokens\": \"bytes\", \"vocab_size\": 256}\n");
        return stk_writer_add_file(w, "text.json", json, strlen(json));
    }
    snprintf(json, sizeof(json),
             "{\"tokens\": \"%s\", \"vocab_size\": %" PRId64 ", \"unk_id\": %" PRId64 ", \"vocab\": \"vocab.txt\"}\n",
             p->chars ? "chars" : "words", p->v.n, p->unk);
    size_t len = 0;
    for (int64_t i = 0; i < p->v.n; i++)
        len += strlen(p->v.tok[i]) + 1;
    char *text = malloc(len + 1);
    if (!text)
        return stk__error(-ENOMEM, "out of memory");
    size_t o = 0;
    for (int64_t i = 0; i < p->v.n; i++) {
        size_t k = strlen(p->v.tok[i]);
        memcpy(text + o, p->v.tok[i], k);
        text[o + k] = '\n';
        o += k + 1;
    }
    int rc = stk_writer_add_file(w, "vocab.txt", text, len);
    free(text);
    return rc ? rc : stk_writer_add_file(w, "text.json", json, strlen(json));
}

const stk__pack_fmt_t stk__pack_text = {
    .name = "text",
    .open = text_open,
    .next = text_next,
    .rewind = text_rewind,
    .close = text_close,
    .side_files = text_side_files,
};
