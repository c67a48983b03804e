/* SPDX-License-Identifier: MIT */
/* Input formats of stoker-pack: IDX (MNIST, Fashion-MNIST; gzip or plain),
 * CIFAR-10/100 binary batches, NumPy .npy pairs and ImageFolder-style
 * trees. Each yields records for the schema it declares. */
#define _GNU_SOURCE
#include "stoker-pack.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

/* Appends " (record N)" to the message already in src->err. */
static int fail_at(pack_src_t *src)
{
    size_t n = strlen(src->err);
    snprintf(src->err + n, sizeof src->err - n, " (record %" PRIu64 ")", src->pos);
    return -1;
}

static int fail(pack_src_t *src, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(src->err, sizeof src->err, fmt, ap);
    va_end(ap);
    return -1;
}

/* gzread reads plain files too, so every stream input goes through it. */
static int gz_read_exact(pack_src_t *src, gzFile f, void *buf, size_t len, const char *path)
{
    unsigned char *p = buf;
    while (len) {
        unsigned chunk = len > (1u << 30) ? (1u << 30) : (unsigned)len;
        int n = gzread(f, p, chunk);
        if (n < 0) {
            int zerr;
            const char *msg = gzerror(f, &zerr);
            return fail(src, "%s: read error: %s", path, zerr == Z_ERRNO ? strerror(errno) : msg);
        }
        if (n == 0)
            return fail(src, "%s: truncated (unexpected end of file)", path);
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static gzFile gz_open(pack_src_t *src, const char *path)
{
    gzFile f = gzopen(path, "rb");
    if (!f)
        fail(src, "%s: %s", path, errno ? strerror(errno) : "cannot open");
    else
        gzbuffer(f, 1 << 17);
    return f;
}

void pack_src_close(pack_src_t *src)
{
    if (src && src->close)
        src->close(src);
    if (src) {
        src->close = NULL;
        src->priv = NULL;
    }
}

/* ---- IDX ---------------------------------------------------------------
 * Big-endian: magic 0x0000 <type> <ndim>, then ndim u32 sizes, then data.
 * Images become image:<u8|i8>[1,H,W] (CHW, like torchvision's MNIST after
 * ToTensor), labels label:i64[]. */

typedef struct idx_priv {
    const char *images, *labels;
    gzFile fi, fl;
    size_t rec_bytes;
    unsigned char *img;
    int64_t label;
} idx_priv_t;

static int idx_header(pack_src_t *src, gzFile f, const char *path, int *type, uint32_t *dims,
                      int *ndim)
{
    unsigned char m[4];
    if (gz_read_exact(src, f, m, 4, path))
        return -1;
    if (m[0] != 0 || m[1] != 0 || m[3] == 0 || m[3] > 5)
        return fail(src, "%s: not an IDX file (magic %02x%02x%02x%02x)", path, m[0], m[1], m[2],
                    m[3]);
    *type = m[2];
    *ndim = m[3];
    for (int d = 0; d < *ndim; d++) {
        unsigned char b[4];
        if (gz_read_exact(src, f, b, 4, path))
            return -1;
        dims[d] = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
    }
    return 0;
}

static int idx_open_files(pack_src_t *src, idx_priv_t *p)
{
    int ti, tl, ni, nl;
    uint32_t di[5], dl[5];
    if (p->fi)
        gzclose(p->fi);
    if (p->fl)
        gzclose(p->fl);
    p->fi = p->fl = NULL;
    if (!(p->fi = gz_open(src, p->images)) || !(p->fl = gz_open(src, p->labels)))
        return -1;
    if (idx_header(src, p->fi, p->images, &ti, di, &ni) ||
        idx_header(src, p->fl, p->labels, &tl, dl, &nl))
        return -1;
    if (ti != 0x08 && ti != 0x09)
        return fail(src, "%s: IDX element type 0x%02x not supported (u8 0x08, i8 0x09)", p->images,
                    ti);
    if (ni < 2)
        return fail(src, "%s: IDX images need at least 2 dims, file has %d", p->images, ni);
    if (tl != 0x08 || nl != 1)
        return fail(src, "%s: IDX labels must be u8 with 1 dim (type 0x%02x, %d dims)", p->labels,
                    tl, nl);
    if (di[0] != dl[0])
        return fail(src, "%s has %u images but %s has %u labels", p->images, di[0], p->labels,
                    dl[0]);
    if (src->schema.nfields == 0) {
        int64_t shape[STK_MAX_DIMS];
        uint32_t nd = 0;
        if (ni == 3)
            shape[nd++] = 1; /* one channel: CHW */
        if (ni - 1 + (int)nd > STK_MAX_DIMS)
            return fail(src, "%s: %d dims is too many", p->images, ni);
        size_t bytes = 1;
        for (int d = 1; d < ni; d++) {
            shape[nd++] = di[d];
            bytes *= di[d];
        }
        if (bytes == 0)
            return fail(src, "%s: zero-sized images", p->images);
        p->rec_bytes = bytes;
        if (stk_schema_add(&src->schema, "image", ti == 0x08 ? STK_DTYPE_U8 : STK_DTYPE_I8, nd,
                           shape) ||
            stk_schema_add(&src->schema, "label", STK_DTYPE_I64, 0, NULL))
            return fail(src, "%s: %s", p->images, stk_error_message());
        p->img = malloc(bytes);
        if (!p->img)
            return fail(src, "out of memory");
        if (src->count == 0 || src->count > di[0])
            src->count = di[0];
    }
    src->pos = 0;
    return 0;
}

static int idx_next(pack_src_t *src, const void **data, int64_t *ext)
{
    idx_priv_t *p = src->priv;
    unsigned char l;
    (void)ext;
    if (gz_read_exact(src, p->fi, p->img, p->rec_bytes, p->images) ||
        gz_read_exact(src, p->fl, &l, 1, p->labels))
        return fail_at(src);
    p->label = l;
    data[0] = p->img;
    data[1] = &p->label;
    src->pos++;
    return 0;
}

static int idx_rewind(pack_src_t *src)
{
    return idx_open_files(src, src->priv);
}

static void idx_close(pack_src_t *src)
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
}

int pack_src_idx(pack_src_t *src, const char *images, const char *labels, uint64_t limit)
{
    memset(src, 0, sizeof *src);
    idx_priv_t *p = calloc(1, sizeof *p);
    if (!p)
        return fail(src, "out of memory");
    p->images = images;
    p->labels = labels;
    src->priv = p;
    src->count = limit;
    src->next = idx_next;
    src->rewind = idx_rewind;
    src->close = idx_close;
    return idx_open_files(src, p);
}

/* ---- CIFAR binary ------------------------------------------------------
 * CIFAR-10: <label u8><3072 bytes CHW>; CIFAR-100: <coarse><fine><3072>. */

typedef struct cifar_priv {
    char **files;
    int nfiles, cur, c100;
    FILE *f;
    uint64_t left_in_file;
    unsigned char rec[3074];
    int64_t labels[2];
} cifar_priv_t;

static int cifar_rewind(pack_src_t *src)
{
    cifar_priv_t *p = src->priv;
    if (p->f)
        fclose(p->f);
    p->f = NULL;
    p->cur = -1;
    p->left_in_file = 0;
    src->pos = 0;
    return 0;
}

static int cifar_next(pack_src_t *src, const void **data, int64_t *ext)
{
    cifar_priv_t *p = src->priv;
    size_t rb = p->c100 ? 3074 : 3073;
    (void)ext;
    while (p->left_in_file == 0) {
        if (p->f)
            fclose(p->f);
        p->f = NULL;
        if (++p->cur >= p->nfiles)
            return fail(src, "CIFAR input ended early");
        const char *path = p->files[p->cur];
        struct stat st;
        if (stat(path, &st) < 0)
            return fail(src, "%s: %s", path, strerror(errno));
        p->f = fopen(path, "rb");
        if (!p->f)
            return fail(src, "%s: %s", path, strerror(errno));
        p->left_in_file = (uint64_t)st.st_size / rb;
    }
    if (fread(p->rec, 1, rb, p->f) != rb)
        return fail(src, "%s: truncated", p->files[p->cur]);
    p->left_in_file--;
    const unsigned char *img = p->rec + (p->c100 ? 2 : 1);
    p->labels[0] = p->rec[0];
    p->labels[1] = p->rec[1];
    data[0] = img;
    data[1] = &p->labels[0];
    data[2] = &p->labels[1];
    src->pos++;
    return 0;
}

static void cifar_close(pack_src_t *src)
{
    cifar_priv_t *p = src->priv;
    if (!p)
        return;
    if (p->f)
        fclose(p->f);
    free(p);
}

int pack_src_cifar(pack_src_t *src, char **files, int nfiles, int cifar100, uint64_t limit)
{
    memset(src, 0, sizeof *src);
    if (nfiles < 1)
        return fail(src, "no CIFAR files given");
    cifar_priv_t *p = calloc(1, sizeof *p);
    if (!p)
        return fail(src, "out of memory");
    p->files = files;
    p->nfiles = nfiles;
    p->c100 = cifar100;
    p->cur = -1;
    src->priv = p;
    src->next = cifar_next;
    src->rewind = cifar_rewind;
    src->close = cifar_close;
    size_t rb = cifar100 ? 3074 : 3073;
    uint64_t total = 0;
    for (int i = 0; i < nfiles; i++) {
        struct stat st;
        if (stat(files[i], &st) < 0)
            return fail(src, "%s: %s", files[i], strerror(errno));
        if (!S_ISREG(st.st_mode))
            return fail(src, "%s: not a regular file", files[i]);
        if (st.st_size == 0 || (uint64_t)st.st_size % rb != 0)
            return fail(src, "%s: %jd bytes is not a whole number of %zu-byte CIFAR-%s records",
                        files[i], (intmax_t)st.st_size, rb, cifar100 ? "100" : "10");
        total += (uint64_t)st.st_size / rb;
    }
    src->count = limit && limit < total ? limit : total;
    const int64_t shape[3] = {3, 32, 32};
    stk_schema_add(&src->schema, "image", STK_DTYPE_U8, 3, shape);
    if (cifar100) {
        stk_schema_add(&src->schema, "coarse_label", STK_DTYPE_I64, 0, NULL);
        stk_schema_add(&src->schema, "label", STK_DTYPE_I64, 0, NULL);
    } else {
        stk_schema_add(&src->schema, "label", STK_DTYPE_I64, 0, NULL);
    }
    return 0;
}

/* ---- NumPy .npy --------------------------------------------------------
 * "\x93NUMPY", major, minor, header length (u16 in v1, u32 in v2/v3), then
 * a Python dict literal with 'descr', 'fortran_order' and 'shape'. */

typedef struct npy_arr {
    const char *path;
    gzFile f;
    char descr[16];
    size_t itemsize;
    int ndim;
    uint64_t shape[8];
    uint64_t data_off;
} npy_arr_t;

typedef struct npy_priv {
    npy_arr_t data, labels;
    stk_dtype_t dtype;
    size_t rec_bytes;
    unsigned char *rec;
    unsigned char lbuf[8];
    int64_t label;
} npy_priv_t;

/* Finds 'key' in the header dict and returns the text after its colon. */
static const char *npy_value(const char *hdr, const char *key)
{
    char q[40];
    snprintf(q, sizeof q, "'%s'", key);
    const char *p = strstr(hdr, q);
    if (!p) {
        snprintf(q, sizeof q, "\"%s\"", key);
        p = strstr(hdr, q);
    }
    if (!p)
        return NULL;
    p += strlen(q);
    while (*p == ' ')
        p++;
    if (*p != ':')
        return NULL;
    p++;
    while (*p == ' ')
        p++;
    return p;
}

static int npy_open(pack_src_t *src, npy_arr_t *a)
{
    if (a->f)
        gzclose(a->f);
    if (!(a->f = gz_open(src, a->path)))
        return -1;
    unsigned char pre[10];
    if (gz_read_exact(src, a->f, pre, 8, a->path))
        return -1;
    if (memcmp(pre, "\x93NUMPY", 6) != 0)
        return fail(src, "%s: not a .npy file (bad magic)", a->path);
    int major = pre[6];
    uint32_t hlen;
    if (major == 1) {
        if (gz_read_exact(src, a->f, pre + 8, 2, a->path))
            return -1;
        hlen = (uint32_t)pre[8] | (uint32_t)pre[9] << 8;
        a->data_off = 10 + hlen;
    } else if (major == 2 || major == 3) {
        unsigned char b[4];
        if (gz_read_exact(src, a->f, b, 4, a->path))
            return -1;
        hlen = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
        a->data_off = 12 + hlen;
    } else {
        return fail(src, "%s: .npy format version %d not supported", a->path, major);
    }
    if (hlen > (1u << 20))
        return fail(src, "%s: .npy header of %u bytes is implausible", a->path, hlen);
    char *hdr = malloc(hlen + 1);
    if (!hdr)
        return fail(src, "out of memory");
    if (gz_read_exact(src, a->f, hdr, hlen, a->path)) {
        free(hdr);
        return -1;
    }
    hdr[hlen] = '\0';
    int rc = 0;
    const char *v = npy_value(hdr, "descr");
    const char *fo = npy_value(hdr, "fortran_order");
    const char *sh = npy_value(hdr, "shape");
    if (!v || !fo || !sh) {
        rc = fail(src, "%s: .npy header lacks descr, fortran_order or shape", a->path);
    } else if (*v != '\'' && *v != '"') {
        rc = fail(src, "%s: structured dtypes are not supported", a->path);
    } else {
        char quote = *v++;
        const char *end = strchr(v, quote);
        if (!end || end - v >= (long)sizeof a->descr)
            rc = fail(src, "%s: bad descr in .npy header", a->path);
        else {
            memcpy(a->descr, v, (size_t)(end - v));
            a->descr[end - v] = '\0';
        }
    }
    if (!rc && strncmp(fo, "False", 5) != 0)
        rc = fail(src, "%s: fortran_order arrays are not supported (save with C order)", a->path);
    if (!rc) {
        if (*sh != '(')
            rc = fail(src, "%s: bad shape in .npy header", a->path);
        const char *p = sh + 1;
        a->ndim = 0;
        while (!rc) {
            while (*p == ' ' || *p == ',')
                p++;
            if (*p == ')')
                break;
            char *e;
            errno = 0;
            unsigned long long n = strtoull(p, &e, 10);
            if (e == p || errno || a->ndim >= 8) {
                rc = fail(src, "%s: bad shape in .npy header", a->path);
                break;
            }
            a->shape[a->ndim++] = n;
            p = e;
            while (*p == 'L')
                p++;
        }
    }
    free(hdr);
    if (rc)
        return rc;
    /* Byte order: little-endian or not applicable (1-byte types). */
    char bo = a->descr[0];
    const char *t = a->descr + 1;
    if (bo != '<' && bo != '|' && bo != '=' && !(bo == '>' && (t[1] == '1' && t[2] == '\0')))
        return fail(src, "%s: big-endian dtype '%s' not supported", a->path, a->descr);
    a->itemsize = (size_t)atoi(t + 1);
    return 0;
}

static stk_dtype_t npy_dtype(const char *descr)
{
    const char *t = descr + 1;
    static const struct {
        const char *t;
        stk_dtype_t dt;
    } map[] = {{"u1", STK_DTYPE_U8}, {"i1", STK_DTYPE_I8},   {"i4", STK_DTYPE_I32},
               {"i8", STK_DTYPE_I64}, {"f2", STK_DTYPE_F16}, {"f4", STK_DTYPE_F32}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strcmp(t, map[i].t) == 0)
            return map[i].dt;
    return STK_DTYPE_INVALID;
}

static int npy_label_ok(const char *descr)
{
    const char *t = descr + 1;
    return (t[0] == 'u' || t[0] == 'i') && (!strcmp(t + 1, "1") || !strcmp(t + 1, "2") ||
                                             !strcmp(t + 1, "4") || !strcmp(t + 1, "8"));
}

static int npy_next(pack_src_t *src, const void **data, int64_t *ext)
{
    npy_priv_t *p = src->priv;
    (void)ext;
    if (gz_read_exact(src, p->data.f, p->rec, p->rec_bytes, p->data.path) ||
        gz_read_exact(src, p->labels.f, p->lbuf, p->labels.itemsize, p->labels.path))
        return fail_at(src);
    const char *t = p->labels.descr + 1;
    uint64_t u = 0;
    for (size_t i = 0; i < p->labels.itemsize; i++)
        u |= (uint64_t)p->lbuf[i] << (8 * i);
    if (t[0] == 'i' && p->labels.itemsize < 8 && (u >> (8 * p->labels.itemsize - 1)) & 1)
        u |= ~0ull << (8 * p->labels.itemsize); /* sign-extend */
    if (t[0] == 'u' && p->labels.itemsize == 8 && u > INT64_MAX)
        return fail(src, "%s: label %" PRIu64 " at record %" PRIu64 " overflows i64",
                    p->labels.path, u, src->pos);
    p->label = (int64_t)u;
    data[0] = p->rec;
    data[1] = &p->label;
    src->pos++;
    return 0;
}

static int npy_rewind(pack_src_t *src)
{
    npy_priv_t *p = src->priv;
    src->pos = 0;
    if (npy_open(src, &p->data) || npy_open(src, &p->labels))
        return -1;
    return 0;
}

static void npy_close(pack_src_t *src)
{
    npy_priv_t *p = src->priv;
    if (!p)
        return;
    if (p->data.f)
        gzclose(p->data.f);
    if (p->labels.f)
        gzclose(p->labels.f);
    free(p->rec);
    free(p);
}

int pack_src_npy(pack_src_t *src, const char *data, const char *labels, const char *field,
                 uint64_t limit)
{
    memset(src, 0, sizeof *src);
    npy_priv_t *p = calloc(1, sizeof *p);
    if (!p)
        return fail(src, "out of memory");
    src->priv = p;
    src->next = npy_next;
    src->rewind = npy_rewind;
    src->close = npy_close;
    p->data.path = data;
    p->labels.path = labels;
    if (npy_open(src, &p->data) || npy_open(src, &p->labels))
        return -1;
    p->dtype = npy_dtype(p->data.descr);
    if (p->dtype == STK_DTYPE_INVALID)
        return fail(src, "%s: dtype '%s' not supported (u1 i1 i4 i8 f2 f4)", data, p->data.descr);
    if (!npy_label_ok(p->labels.descr))
        return fail(src, "%s: labels must be integers, dtype is '%s'", labels, p->labels.descr);
    if (p->data.ndim < 1 || p->data.ndim > 1 + STK_MAX_DIMS)
        return fail(src, "%s: %d dims not supported (1..%d)", data, p->data.ndim,
                    1 + STK_MAX_DIMS);
    if (p->labels.ndim != 1)
        return fail(src, "%s: labels must be 1-D, array has %d dims", labels, p->labels.ndim);
    if (p->data.shape[0] != p->labels.shape[0])
        return fail(src, "%s has %" PRIu64 " rows but %s has %" PRIu64, data, p->data.shape[0],
                    labels, p->labels.shape[0]);
    int64_t shape[STK_MAX_DIMS];
    for (int d = 1; d < p->data.ndim; d++)
        shape[d - 1] = (int64_t)p->data.shape[d];
    if (stk_schema_add(&src->schema, field, p->dtype, (uint32_t)(p->data.ndim - 1), shape) ||
        stk_schema_add(&src->schema, "label", STK_DTYPE_I64, 0, NULL))
        return fail(src, "%s: %s", data, stk_error_message());
    p->rec_bytes = stk_field_bytes(&src->schema.fields[0], 0);
    if (p->rec_bytes == 0)
        return fail(src, "%s: zero-sized rows", data);
    p->rec = malloc(p->rec_bytes);
    if (!p->rec)
        return fail(src, "out of memory");
    src->count = limit && limit < p->data.shape[0] ? limit : p->data.shape[0];
    return 0;
}

/* ---- Folder per class --------------------------------------------------
 * Like torchvision's ImageFolder: classes are the subfolders of ROOT in
 * sorted order; files are found by walking each class folder, folders in
 * sorted path order and files sorted within each. Every regular file is
 * taken (no extension filter) and stored as bytes in data:u8[-1]. */

typedef struct folder_priv {
    char **classes;
    size_t nclasses;
    char **files;
    int64_t *labels;
    size_t nfiles, cap;
    unsigned char *buf;
    size_t buf_cap;
    int64_t label;
} folder_priv_t;

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int push(char ***arr, size_t *n, size_t *cap, char *s)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        char **p = realloc(*arr, c * sizeof *p);
        if (!p)
            return -1;
        *arr = p;
        *cap = c;
    }
    (*arr)[(*n)++] = s;
    return 0;
}

static void free_strs(char **a, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(a[i]);
    free(a);
}

/* Lists entries of dir that are directories (want_dir) or regular files,
 * following symlinks as os.walk(followlinks=True) does. */
static int list_dir(pack_src_t *src, const char *dir, int want_dir, char ***out, size_t *n)
{
    size_t cap = 0;
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d)
        return fail(src, "%s: %s", dir, strerror(errno));
    struct dirent *e;
    int rc = 0;
    while (!rc && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char *full;
        if (asprintf(&full, "%s/%s", dir, e->d_name) < 0) {
            rc = fail(src, "out of memory");
            break;
        }
        struct stat st;
        if (stat(full, &st) == 0 && (want_dir ? S_ISDIR(st.st_mode) : S_ISREG(st.st_mode))) {
            if (push(out, n, &cap, full) < 0) {
                free(full);
                rc = fail(src, "out of memory");
            }
        } else {
            free(full);
        }
    }
    closedir(d);
    if (!rc && *n > 1)
        qsort(*out, *n, sizeof **out, cmp_str);
    return rc;
}

static int folder_next(pack_src_t *src, const void **data, int64_t *ext)
{
    folder_priv_t *p = src->priv;
    const char *path = p->files[src->pos];
    FILE *f = fopen(path, "rb");
    if (!f)
        return fail(src, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) < 0 || (uint64_t)st.st_size > UINT32_MAX - 64) {
        fclose(f);
        return fail(src, "%s: cannot size, or over 4 GiB", path);
    }
    size_t len = (size_t)st.st_size;
    if (len + 1 > p->buf_cap) {
        unsigned char *b = realloc(p->buf, len + 1);
        if (!b) {
            fclose(f);
            return fail(src, "out of memory");
        }
        p->buf = b;
        p->buf_cap = len + 1;
    }
    size_t got = fread(p->buf, 1, len, f);
    fclose(f);
    if (got != len)
        return fail(src, "%s: short read (file changed while packing?)", path);
    p->label = p->labels[src->pos];
    data[0] = p->buf;
    data[1] = &p->label;
    ext[0] = (int64_t)len;
    ext[1] = -1;
    src->pos++;
    return 0;
}

static int folder_rewind(pack_src_t *src)
{
    src->pos = 0;
    return 0;
}

static int folder_side_files(pack_src_t *src, const char *dir)
{
    folder_priv_t *p = src->priv;
    char *path = NULL, *tmp = NULL;
    if (asprintf(&path, "%s/classes.txt", dir) < 0 || asprintf(&tmp, "%s.tmp", path) < 0) {
        free(path);
        return fail(src, "out of memory");
    }
    FILE *f = fopen(tmp, "w");
    int rc = 0;
    if (!f) {
        rc = fail(src, "%s: %s", tmp, strerror(errno));
    } else {
        for (size_t i = 0; i < p->nclasses; i++)
            fprintf(f, "%s\n", strrchr(p->classes[i], '/') + 1);
        if (fclose(f) != 0 || rename(tmp, path) < 0)
            rc = fail(src, "%s: %s", path, strerror(errno));
    }
    if (rc)
        remove(tmp);
    free(path);
    free(tmp);
    return rc;
}

static void folder_close(pack_src_t *src)
{
    folder_priv_t *p = src->priv;
    if (!p)
        return;
    free_strs(p->classes, p->nclasses);
    free_strs(p->files, p->nfiles);
    free(p->labels);
    free(p->buf);
    free(p);
}

int pack_src_folder(pack_src_t *src, const char *root, uint64_t limit)
{
    memset(src, 0, sizeof *src);
    folder_priv_t *p = calloc(1, sizeof *p);
    if (!p)
        return fail(src, "out of memory");
    src->priv = p;
    src->next = folder_next;
    src->rewind = folder_rewind;
    src->close = folder_close;
    src->side_files = folder_side_files;
    if (list_dir(src, root, 1, &p->classes, &p->nclasses))
        return -1;
    if (p->nclasses == 0)
        return fail(src, "%s: no class subfolders", root);
    size_t lcap = 0;
    for (size_t c = 0; c < p->nclasses; c++) {
        /* All folders under the class, sorted by full path as Python's
         * sorted(os.walk(...)) orders them. */
        char **dirs = NULL;
        size_t nd = 0, dcap = 0;
        char *first = strdup(p->classes[c]);
        if (!first || push(&dirs, &nd, &dcap, first) < 0)
            return fail(src, "out of memory");
        for (size_t i = 0; i < nd; i++) {
            char **sub;
            size_t ns;
            if (nd > 100000) {
                free_strs(dirs, nd);
                return fail(src, "%s: too many folders (symlink loop?)", p->classes[c]);
            }
            if (list_dir(src, dirs[i], 1, &sub, &ns)) {
                free_strs(dirs, nd);
                return -1;
            }
            for (size_t k = 0; k < ns; k++)
                push(&dirs, &nd, &dcap, sub[k]);
            free(sub);
        }
        qsort(dirs, nd, sizeof *dirs, cmp_str);
        size_t before = p->nfiles;
        for (size_t i = 0; i < nd; i++) {
            char **files;
            size_t nf;
            if (list_dir(src, dirs[i], 0, &files, &nf)) {
                free_strs(dirs, nd);
                return -1;
            }
            for (size_t k = 0; k < nf; k++) {
                if (p->nfiles == lcap) {
                    lcap = lcap ? lcap * 2 : 1024;
                    int64_t *l = realloc(p->labels, lcap * sizeof *l);
                    if (l)
                        p->labels = l;
                    char **np = l ? realloc(p->files, lcap * sizeof *np) : NULL;
                    if (!np) {
                        for (size_t j = k; j < nf; j++)
                            free(files[j]);
                        free(files);
                        free_strs(dirs, nd);
                        return fail(src, "out of memory");
                    }
                    p->files = np;
                }
                p->files[p->nfiles] = files[k];
                p->labels[p->nfiles++] = (int64_t)c;
            }
            free(files);
        }
        free_strs(dirs, nd);
        if (p->nfiles == before)
            return fail(src, "%s: class folder has no files", p->classes[c]);
    }
    src->count = limit && limit < p->nfiles ? limit : p->nfiles;
    const int64_t var[1] = {-1};
    stk_schema_add(&src->schema, "data", STK_DTYPE_U8, 1, var);
    stk_schema_add(&src->schema, "label", STK_DTYPE_I64, 0, NULL);
    return 0;
}
