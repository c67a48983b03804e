/* SPDX-License-Identifier: MIT */
/* IDX input (MNIST, Fashion-MNIST; gzip or plain). Big-endian: magic
 * 0x0000 <type> <ndim>, ndim u32 sizes, then the data. Images become
 * image:<u8|i8>[1,H,W] (CHW, as torchvision's MNIST after ToTensor),
 * labels label:i64[]. Bytes after the last record are an error: they mean
 * a wrong header or a damaged file, and would otherwise be dropped. */
#define _GNU_SOURCE
#include "pack_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct idx_priv {
    const char *images, *labels;
    gzFile fi, fl;
    uint32_t n;        /* records the headers declare */
    size_t rec_bytes;
    unsigned char *img;
    int64_t label;
} idx_priv_t;

typedef struct idx_hdr {
    int type, ndim;
    uint32_t dims[5];
    uint64_t header_bytes;
} idx_hdr_t;

static int idx_header(gzFile f, const char *path, idx_hdr_t *h)
{
    unsigned char m[4];
    int rc = stk__pack_gz_read(f, m, 4, path);
    if (rc)
        return rc;
    if (m[0] != 0 || m[1] != 0 || m[3] == 0 || m[3] > 5)
        return stk__error(STK_EFORMAT, "%s: not an IDX file (magic %02x%02x%02x%02x)", path, m[0],
                          m[1], m[2], m[3]);
    h->type = m[2];
    h->ndim = m[3];
    for (int d = 0; d < h->ndim; d++) {
        unsigned char b[4];
        if ((rc = stk__pack_gz_read(f, b, 4, path)))
            return rc;
        h->dims[d] = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
    }
    h->header_bytes = 4 + 4 * (uint64_t)h->ndim;
    return 0;
}

/* A plain (not gzip) file's size is known up front: check it whole, so
 * that trailing bytes are caught under a record limit too. */
static int idx_check_size(gzFile f, const char *path, uint64_t want, uint32_t n, const char *what)
{
    struct stat st;
    if (!gzdirect(f) || stat(path, &st) < 0 || !S_ISREG(st.st_mode))
        return 0;
    if ((uint64_t)st.st_size > want)
        return stk__error(STK_EFORMAT,
                          "%s: %" PRIu64 " bytes after the last of its %u %s (wrong header, or "
                          "two files joined?)",
                          path, (uint64_t)st.st_size - want, n, what);
    if ((uint64_t)st.st_size < want)
        return stk__error(STK_EFORMAT,
                          "%s: truncated (%jd bytes, the header's %u %s need %" PRIu64 ")", path,
                          (intmax_t)st.st_size, n, what, want);
    return 0;
}

static int idx_open_files(stk_pack_source_t *src, idx_priv_t *p, int first)
{
    if (p->fi)
        gzclose(p->fi);
    if (p->fl)
        gzclose(p->fl);
    p->fi = p->fl = NULL;
    idx_hdr_t hi, hl;
    int rc;
    if ((rc = stk__pack_gz_open(&p->fi, p->images)) || (rc = stk__pack_gz_open(&p->fl, p->labels)) ||
        (rc = idx_header(p->fi, p->images, &hi)) || (rc = idx_header(p->fl, p->labels, &hl)))
        return rc;
    src->pos = 0;
    if (!first)
        return 0;
    if (hi.type != 0x08 && hi.type != 0x09)
        return stk__error(STK_EFORMAT, "%s: IDX element type 0x%02x not supported (u8 0x08, i8 0x09)",
                          p->images, hi.type);
    if (hi.ndim < 2)
        return stk__error(STK_EFORMAT, "%s: IDX images need at least 2 dims, file has %d", p->images,
                          hi.ndim);
    if (hl.type != 0x08 || hl.ndim != 1)
        return stk__error(STK_EFORMAT, "%s: IDX labels must be u8 with 1 dim (type 0x%02x, %d dims)",
                          p->labels, hl.type, hl.ndim);
    if (hi.dims[0] != hl.dims[0])
        return stk__error(STK_ESHAPE, "%s has %u images but %s has %u labels", p->images, hi.dims[0],
                          p->labels, hl.dims[0]);
    if (hi.dims[0] == 0)
        return stk__error(STK_EEMPTY, "%s: no images (the header says 0)", p->images);
    int64_t shape[STK_MAX_DIMS];
    uint32_t nd = 0;
    if (hi.ndim == 3)
        shape[nd++] = 1; /* one channel: CHW */
    if (hi.ndim - 1 + (int)nd > STK_MAX_DIMS)
        return stk__error(STK_EFORMAT, "%s: %d dims is too many", p->images, hi.ndim);
    uint64_t bytes = 1;
    for (int d = 1; d < hi.ndim; d++) {
        shape[nd++] = hi.dims[d];
        bytes *= hi.dims[d];
    }
    if (bytes == 0)
        return stk__error(STK_EFORMAT, "%s: zero-sized images", p->images);
    if (bytes > UINT32_MAX)
        return stk__error(STK_EFORMAT, "%s: images of %" PRIu64 " bytes are over 4 GiB", p->images,
                          bytes);
    p->n = hi.dims[0];
    p->rec_bytes = (size_t)bytes;
    if ((rc = idx_check_size(p->fi, p->images, hi.header_bytes + bytes * p->n, p->n, "images")) ||
        (rc = idx_check_size(p->fl, p->labels, hl.header_bytes + p->n, p->n, "labels")))
        return rc;
    if ((rc = stk_schema_add(&src->schema, "image", hi.type == 0x08 ? STK_DTYPE_U8 : STK_DTYPE_I8, nd,
                             shape)) ||
        (rc = stk_schema_add(&src->schema, "label", STK_DTYPE_I64, 0, NULL)))
        return stk__error_prefix(rc, "%s", p->images);
    p->img = malloc(p->rec_bytes);
    if (!p->img)
        return stk__error(-ENOMEM, "out of memory");
    return 0;
}

static int idx_open(stk_pack_source_t *src, const stk_pack_source_config_t *cfg)
{
    if (cfg->ninputs != 2)
        return stk__error(STK_ECONFIG, "idx: takes 2 inputs (images, labels), got %zu", cfg->ninputs);
    idx_priv_t *p = calloc(1, sizeof *p);
    if (!p)
        return stk__error(-ENOMEM, "out of memory");
    src->priv = p;
    p->images = cfg->inputs[0];
    p->labels = cfg->inputs[1];
    int rc = idx_open_files(src, p, 1);
    if (rc)
        return rc;
    src->count = cfg->limit && cfg->limit < p->n ? cfg->limit : p->n;
    return 0;
}

static int idx_next(stk_pack_source_t *src, const void **data, int64_t *ext)
{
    idx_priv_t *p = src->priv;
    unsigned char l;
    (void)ext;
    int rc;
    if ((rc = stk__pack_gz_read(p->fi, p->img, p->rec_bytes, p->images)) ||
        (rc = stk__pack_gz_read(p->fl, &l, 1, p->labels)))
        return rc;
    p->label = l;
    data[0] = p->img;
    data[1] = &p->label;
    src->pos++;
    /* Read whole: a gzip file's trailing bytes show only at the end. */
    if (src->pos == p->n &&
        ((rc = stk__pack_gz_expect_end(p->fi, p->images, p->n, "images")) ||
         (rc = stk__pack_gz_expect_end(p->fl, p->labels, p->n, "labels"))))
        return rc;
    return 0;
}

static int idx_rewind(stk_pack_source_t *src)
{
    return idx_open_files(src, src->priv, 0);
}

static void idx_close(stk_pack_source_t *src)
{
    idx_priv_t *p = src->priv;
    if (!p)
        return;
    if (p->fi)
        gzclose(p->fi);
    if (p->fl)
        gzclose(p->fl);
    free(p->img);
    free(p);
    src->priv = NULL;
}

const stk__pack_fmt_t stk__pack_idx = {
    .name = "idx",
    .open = idx_open,
    .next = idx_next,
    .rewind = idx_rewind,
    .close = idx_close,
};
