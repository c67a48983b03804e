/* SPDX-License-Identifier: MIT */
/* A folder per class, as torchvision's ImageFolder: classes are the
 * subfolders of ROOT in sorted order; files are found by walking each
 * class folder, folders in sorted path order and files sorted within each
 * (as Python's sorted(os.walk(..., followlinks=True))). Every regular file
 * is taken (no extension filter) and stored as bytes in data:u8[-1]; the
 * class names go to classes.txt beside the shards. */
#define _GNU_SOURCE
#include "pack_internal.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* A walk that finds this many folders under one class is a symlink loop. */
#define MAX_FOLDERS 100000

typedef struct strv {
    char **v;
    size_t n, cap;
} strv_t;

typedef struct folder_priv {
    strv_t classes;
    strv_t files;
    int64_t *labels;
    unsigned char *buf;
    size_t buf_cap;
    int64_t label;
} folder_priv_t;

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int strv_push(strv_t *s, char *str)
{
    if (s->n == s->cap) {
        size_t c = s->cap ? s->cap * 2 : 64;
        char **p = realloc(s->v, c * sizeof *p);
        if (!p)
            return stk__error(-ENOMEM, "out of memory");
        s->v = p;
        s->cap = c;
    }
    s->v[s->n++] = str;
    return 0;
}

static void strv_free(strv_t *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
    memset(s, 0, sizeof *s);
}

/* Appends the entries of dir that are folders (want_dir) or regular files
 * to out, sorted, following symlinks. */
static int list_dir(const char *dir, int want_dir, strv_t *out)
{
    DIR *d = opendir(dir);
    if (!d)
        return stk__error(-errno, "%s: %s", dir, strerror(errno));
    size_t first = out->n;
    struct dirent *e;
    int rc = 0;
    while (!rc && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char *full;
        if (asprintf(&full, "%s/%s", dir, e->d_name) < 0) {
            rc = stk__error(-ENOMEM, "out of memory");
            break;
        }
        struct stat st;
        if (stat(full, &st) == 0 && (want_dir ? S_ISDIR(st.st_mode) : S_ISREG(st.st_mode))) {
            if ((rc = strv_push(out, full)))
                free(full);
        } else {
            free(full);
        }
    }
    closedir(d);
    if (!rc && out->n - first > 1)
        qsort(out->v + first, out->n - first, sizeof *out->v, cmp_str);
    return rc;
}

/* Every file under one class folder, in ImageFolder's order. */
static int walk_class(folder_priv_t *p, const char *class_dir, int64_t label)
{
    strv_t dirs = {0};
    char *first = strdup(class_dir);
    int rc = first ? strv_push(&dirs, first) : stk__error(-ENOMEM, "out of memory");
    if (rc)
        free(first);
    for (size_t i = 0; !rc && i < dirs.n; i++) {
        if (dirs.n > MAX_FOLDERS)
            rc = stk__error(STK_EFORMAT, "%s: over %d folders (symlink loop?)", class_dir, MAX_FOLDERS);
        else
            rc = list_dir(dirs.v[i], 1, &dirs);
    }
    if (!rc)
        qsort(dirs.v, dirs.n, sizeof *dirs.v, cmp_str);
    size_t before = p->files.n;
    for (size_t i = 0; !rc && i < dirs.n; i++) {
        rc = list_dir(dirs.v[i], 0, &p->files);
        if (!rc && p->files.cap) {
            int64_t *l = realloc(p->labels, p->files.cap * sizeof *l);
            if (!l)
                rc = stk__error(-ENOMEM, "out of memory");
            else
                p->labels = l;
        }
        for (size_t k = before; !rc && k < p->files.n; k++)
            p->labels[k] = label;
    }
    strv_free(&dirs);
    if (!rc && p->files.n == before)
        rc = stk__error(STK_EEMPTY, "%s: class folder has no files", class_dir);
    return rc;
}

static int folder_open(stk_pack_source_t *src, const stk_pack_source_config_t *cfg)
{
    if (cfg->ninputs != 1)
        return stk__error(STK_ECONFIG, "folder: takes 1 input (the root), got %zu", cfg->ninputs);
    folder_priv_t *p = calloc(1, sizeof *p);
    if (!p)
        return stk__error(-ENOMEM, "out of memory");
    src->priv = p;
    const char *root = cfg->inputs[0];
    int rc = list_dir(root, 1, &p->classes);
    if (rc)
        return rc;
    if (p->classes.n == 0)
        return stk__error(STK_EEMPTY, "%s: no class subfolders", root);
    for (size_t c = 0; !rc && c < p->classes.n; c++)
        rc = walk_class(p, p->classes.v[c], (int64_t)c);
    if (rc)
        return rc;
    src->count = cfg->limit && cfg->limit < p->files.n ? cfg->limit : p->files.n;
    const int64_t var[1] = {-1};
    if ((rc = stk_schema_add(&src->schema, "data", STK_DTYPE_U8, 1, var)) ||
        (rc = stk_schema_add(&src->schema, "label", STK_DTYPE_I64, 0, NULL)))
        return rc;
    return 0;
}

static int folder_next(stk_pack_source_t *src, const void **data, int64_t *ext)
{
    folder_priv_t *p = src->priv;
    const char *path = p->files.v[src->pos];
    FILE *f = fopen(path, "rb");
    if (!f)
        return stk__error(-errno, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) < 0 || (uint64_t)st.st_size > UINT32_MAX - 64) {
        fclose(f);
        return stk__error(STK_ESHAPE, "%s: cannot size, or over 4 GiB", path);
    }
    size_t len = (size_t)st.st_size;
    if (len + 1 > p->buf_cap) {
        unsigned char *b = realloc(p->buf, len + 1);
        if (!b) {
            fclose(f);
            return stk__error(-ENOMEM, "out of memory");
        }
        p->buf = b;
        p->buf_cap = len + 1;
    }
    size_t got = fread(p->buf, 1, len, f);
    int extra = fgetc(f) != EOF;
    fclose(f);
    if (got != len || extra)
        return stk__error(STK_EFORMAT, "%s: changed size while packing", path);
    p->label = p->labels[src->pos];
    data[0] = p->buf;
    data[1] = &p->label;
    ext[0] = (int64_t)len;
    src->pos++;
    return 0;
}

static int folder_rewind(stk_pack_source_t *src)
{
    (void)src;
    return 0;
}

static int folder_side_files(stk_pack_source_t *src, stk_writer_t *w)
{
    folder_priv_t *p = src->priv;
    size_t len = 0;
    for (size_t i = 0; i < p->classes.n; i++)
        len += strlen(strrchr(p->classes.v[i], '/') + 1) + 1;
    char *text = malloc(len + 1);
    if (!text)
        return stk__error(-ENOMEM, "out of memory");
    size_t o = 0;
    for (size_t i = 0; i < p->classes.n; i++) {
        const char *name = strrchr(p->classes.v[i], '/') + 1;
        size_t k = strlen(name);
        memcpy(text + o, name, k);
        text[o + k] = '\n';
        o += k + 1;
    }
    int rc = stk_writer_add_file(w, "classes.txt", text, len);
    free(text);
    return rc;
}

static void folder_close(stk_pack_source_t *src)
{
    folder_priv_t *p = src->priv;
    if (!p)
        return;
    strv_free(&p->classes);
    strv_free(&p->files);
    free(p->labels);
    free(p->buf);
    free(p);
    src->priv = NULL;
}

const stk__pack_fmt_t stk__pack_folder = {
    .name = "folder",
    .open = folder_open,
    .next = folder_next,
    .rewind = folder_rewind,
    .close = folder_close,
    .side_files = folder_side_files,
};
