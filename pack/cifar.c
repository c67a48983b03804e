/* SPDX-License-Identifier: MIT */
/* CIFAR binary batches: CIFAR-10 records are <label u8><3072 bytes CHW>,
 * CIFAR-100 records <coarse u8><fine u8><3072>. Files are plain (the
 * archives ship them so); each must hold a whole number of records, which
 * is checked for every file before the first record is read. */
#define _GNU_SOURCE
#include "pack_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CIFAR_PIXELS 3072

typedef struct cifar_priv {
    const char *const *files;
    size_t nfiles;
    size_t cur; /* file being read; nfiles before the first */
    int c100;
    FILE *f;
    uint64_t left_in_file;
    unsigned char rec[CIFAR_PIXELS + 2];
    int64_t labels[2];
} cifar_priv_t;

static size_t rec_bytes(const cifar_priv_t *p)
{
    return CIFAR_PIXELS + (p->c100 ? 2 : 1);
}

static int cifar_rewind(stk_pack_source_t *src)
{
    cifar_priv_t *p = src->priv;
    if (p->f)
        fclose(p->f);
    p->f = NULL;
    p->cur = p->nfiles;
    p->left_in_file = 0;
    return 0;
}

static int cifar_next(stk_pack_source_t *src, const void **data, int64_t *ext)
{
    cifar_priv_t *p = src->priv;
    size_t rb = rec_bytes(p);
    (void)ext;
    while (p->left_in_file == 0) {
        if (p->f)
            fclose(p->f);
        p->f = NULL;
        p->cur = p->cur == p->nfiles ? 0 : p->cur + 1;
        if (p->cur >= p->nfiles)
            return stk__error(STK_EFORMAT, "CIFAR input ended early (files changed while packing?)");
        const char *path = p->files[p->cur];
        struct stat st;
        p->f = fopen(path, "rb");
        if (!p->f || fstat(fileno(p->f), &st) < 0)
            return stk__error(-errno, "%s: %s", path, strerror(errno));
        p->left_in_file = (uint64_t)st.st_size / rb;
    }
    if (fread(p->rec, 1, rb, p->f) != rb)
        return stk__error(STK_EFORMAT, "%s: truncated", p->files[p->cur]);
    p->left_in_file--;
    p->labels[0] = p->rec[0];
    p->labels[1] = p->rec[1];
    data[0] = p->rec + (p->c100 ? 2 : 1);
    data[1] = &p->labels[0];
    data[2] = &p->labels[1];
    src->pos++;
    return 0;
}

static int cifar_open_any(stk_pack_source_t *src, const stk_pack_source_config_t *cfg, int c100)
{
    const char *kind = c100 ? "cifar100" : "cifar10";
    if (cfg->ninputs < 1)
        return stk__error(STK_ECONFIG, "%s: no input files given", kind);
    cifar_priv_t *p = calloc(1, sizeof *p);
    if (!p)
        return stk__error(-ENOMEM, "out of memory");
    src->priv = p;
    p->files = cfg->inputs;
    p->nfiles = cfg->ninputs;
    p->c100 = c100;
    p->cur = p->nfiles;
    size_t rb = rec_bytes(p);
    uint64_t total = 0;
    for (size_t i = 0; i < cfg->ninputs; i++) {
        const char *path = cfg->inputs[i];
        struct stat st;
        if (stat(path, &st) < 0)
            return stk__error(-errno, "%s: %s", path, strerror(errno));
        if (!S_ISREG(st.st_mode))
            return stk__error(STK_EFORMAT, "%s: not a regular file", path);
        if (st.st_size == 0 || (uint64_t)st.st_size % rb != 0)
            return stk__error(STK_EFORMAT,
                              "%s: %jd bytes is not a whole number of %zu-byte CIFAR-%s records",
                              path, (intmax_t)st.st_size, rb, c100 ? "100" : "10");
        total += (uint64_t)st.st_size / rb;
    }
    src->count = cfg->limit && cfg->limit < total ? cfg->limit : total;
    const int64_t shape[3] = {3, 32, 32};
    int rc = stk_schema_add(&src->schema, "image", STK_DTYPE_U8, 3, shape);
    if (!rc && c100)
        rc = stk_schema_add(&src->schema, "coarse_label", STK_DTYPE_I64, 0, NULL);
    if (!rc)
        rc = stk_schema_add(&src->schema, "label", STK_DTYPE_I64, 0, NULL);
    return rc;
}

static int cifar10_open(stk_pack_source_t *src, const stk_pack_source_config_t *cfg)
{
    return cifar_open_any(src, cfg, 0);
}

static int cifar100_open(stk_pack_source_t *src, const stk_pack_source_config_t *cfg)
{
    return cifar_open_any(src, cfg, 1);
}

static void cifar_close(stk_pack_source_t *src)
{
    cifar_priv_t *p = src->priv;
    if (!p)
        return;
    if (p->f)
        fclose(p->f);
    free(p);
    src->priv = NULL;
}

const stk__pack_fmt_t stk__pack_cifar10 = {
    .name = "cifar10",
    .open = cifar10_open,
    .next = cifar_next,
    .rewind = cifar_rewind,
    .close = cifar_close,
};

const stk__pack_fmt_t stk__pack_cifar100 = {
    .name = "cifar100",
    .open = cifar100_open,
    .next = cifar_next,
    .rewind = cifar_rewind,
    .close = cifar_close,
};
