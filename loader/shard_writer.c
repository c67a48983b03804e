/* SPDX-License-Identifier: MIT */
/* Writes .stk shards: records compressed one by one with zstd (optionally
 * with a dictionary trained on the first records; the encoder is in
 * shard_encode.c), an index and a footer.
 * A set is built whole in a staging folder beside its destination
 * (.<name>.tmp-XXXXXX) and switched into place by one rename (or an
 * atomic exchange with the set it replaces), so that the destination
 * always holds one complete set, the old or the new, whenever the process
 * dies. Every shard of one pack carries the same random set id, so that
 * shards of two packs put together are refused by readers. */
#define _GNU_SOURCE
#include "shard_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "shard_encode.h"

/* Shards go to the file in writes that end on 2 MiB boundaries (the
 * first and last excepted): the page cache then keeps a fresh shard in
 * 2 MiB folios, which a reader's mapping maps as huge pages. A loader's
 * random reads of a mapped set take a TLB miss per record on 4 KiB pages;
 * raw Fashion-MNIST loads ~25% faster from huge ones. 1 MiB writes at
 * unaligned offsets gave 4 KiB folios. */
#define WBUF_SIZE (2u << 20)
#define DICT_SAMPLE_MAX (64u << 20) /* bytes of records buffered for training */

/* ---- Writer ---------------------------------------------------------- */

typedef struct shard_file {
    char *path;    /* in the staging folder */
    uint64_t records;
    uint64_t bytes;
} shard_file_t;

struct stk_writer {
    char *dir;     /* destination, as given (for messages) */
    char *target;  /* destination with symlinks resolved: what is switched */
    char *stage;   /* staging folder beside target, NULL once switched */
    uint64_t set_id;
    char prefix[128];
    stk_schema_t schema;
    stk_writer_config_t cfg;
    stk__shard_enc_t enc;
    int dict_decided;

    /* Records held back until the dictionary is trained. */
    unsigned char *pend;
    size_t pend_len, pend_cap;
    size_t *pend_sizes;
    size_t npend, pend_sizes_cap;
    size_t sample_budget;

    /* The shard being written (fd < 0: none). */
    int fd;
    uint64_t pos;
    uint64_t shard_records;
    unsigned char *index;
    size_t index_cap;
    unsigned char *wbuf;
    size_t wlen;
    uint64_t wstart; /* file offset of wbuf[0] */
    uint64_t header_hash;

    unsigned char *raw;
    size_t raw_cap;

    shard_file_t *shards;
    uint32_t nshards, shards_cap;
    stk_writer_stats_t stats;
    int finished, failed;
};

void stk_writer_config_default(stk_writer_config_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->zstd_level = 0;
    cfg->use_dict = 1;
    cfg->dict_size = 64 << 10;
    cfg->records_per_shard = 0;
    cfg->prefix = "shard";
}

static int write_all(int fd, const void *buf, size_t len, const char *path)
{
    const char *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return stk__error(-errno, "write %s: %s", path, strerror(errno));
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int mkdir_p(const char *dir)
{
    char *tmp = strdup(dir);
    if (!tmp)
        return stk__error(-ENOMEM, "out of memory");
    for (char *p = tmp + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(tmp, 0777) < 0 && errno != EEXIST) {
                int e = errno;
                free(tmp);
                return stk__error(-e, "mkdir %s: %s", dir, strerror(e));
            }
            *p = c;
            if (c == '\0')
                break;
        }
    }
    free(tmp);
    struct stat st;
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
        return stk__error(-ENOTDIR, "%s is not a directory", dir);
    return 0;
}

static char *path_join(const char *dir, const char *name)
{
    char *s = NULL;
    if (asprintf(&s, "%s/%s", dir, name) < 0)
        return NULL;
    return s;
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return stk__error(-errno, "open %s: %s", dir, strerror(errno));
    int rc = 0;
    if (fsync(fd) < 0 && errno != EINVAL)
        rc = stk__error(-errno, "fsync %s: %s", dir, strerror(errno));
    close(fd);
    return rc;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* What a shard set folder may hold: shards, manifests, side files a pack
 * writes, and what an interrupted pack of an older writer left. */
static int is_set_file(const char *name)
{
    return ends_with(name, ".stk") || ends_with(name, ".manifest") ||
           strcmp(name, "classes.txt") == 0 || strcmp(name, "vocab.txt") == 0 || strcmp(name, "text.json") == 0 ||
           strstr(name, ".tmp-") != NULL;
}

/* Checks that an existing destination may be replaced: empty, or (with
 * overwrite) holding nothing but a shard set's files. */
static int check_replaceable(const char *dir, const char *shown, int overwrite)
{
    DIR *d = opendir(dir);
    if (!d)
        return stk__error(-errno, "open %s: %s", shown, strerror(errno));
    int rc = 0;
    struct dirent *e;
    while (!rc && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        if (!overwrite)
            rc = stk__error(-EEXIST,
                            "%s is not empty (it holds %s); pack into a new folder, or overwrite "
                            "(stoker-pack --force) to replace the set in it",
                            shown, e->d_name);
        else if (!is_set_file(e->d_name) || e->d_type == DT_DIR)
            rc = stk__error(-EEXIST,
                            "%s holds %s, which is not part of a shard set: not replacing the folder",
                            shown, e->d_name);
    }
    closedir(d);
    return rc;
}

/* Removes a staging (or replaced) folder and the set files in it. */
static void remove_set_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                continue;
            char *p = path_join(dir, e->d_name);
            if (p)
                unlink(p);
            free(p);
        }
        closedir(d);
    }
    if (rmdir(dir) < 0 && errno != ENOENT)
        stk__log(STK_LOG_WARN, "cannot remove %s: %s", dir, strerror(errno));
}

/* Resolves where the set goes and makes the staging folder beside it. */
static int make_stage(stk_writer_t *w, const char *dir, int overwrite)
{
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/')
        n--;
    char *given = strndup(dir, n);
    if (!given)
        return stk__error(-ENOMEM, "out of memory");
    struct stat st;
    int rc = 0;
    if (stat(given, &st) == 0) {
        if (!S_ISDIR(st.st_mode))
            rc = stk__error(-ENOTDIR, "%s exists and is not a folder", given);
        else if (!(w->target = realpath(given, NULL)))
            rc = stk__error(-errno, "%s: %s", given, strerror(errno));
        else
            rc = check_replaceable(w->target, given, overwrite);
    } else if (errno != ENOENT) {
        rc = stk__error(-errno, "%s: %s", given, strerror(errno));
    } else if (!(w->target = strdup(given))) {
        rc = stk__error(-ENOMEM, "out of memory");
    }
    if (rc) {
        free(given);
        return rc;
    }
    /* The staging folder lies in the same parent, so that the switch is a
     * rename within one file system. */
    char *slash = strrchr(w->target, '/');
    const char *base = slash ? slash + 1 : w->target;
    char *parent = slash ? strndup(w->target, slash == w->target ? 1 : (size_t)(slash - w->target))
                         : strdup(".");
    if (!parent || !*base || !strcmp(base, ".") || !strcmp(base, "..")) {
        rc = parent ? stk__error(STK_ECONFIG, "%s: name a folder to pack into", given)
                    : stk__error(-ENOMEM, "out of memory");
    } else if (!(rc = mkdir_p(parent))) {
        if (asprintf(&w->stage, "%s/.%s.tmp-XXXXXX", parent, base) < 0) {
            w->stage = NULL;
            rc = stk__error(-ENOMEM, "out of memory");
        } else if (!mkdtemp(w->stage)) {
            rc = stk__error(-errno, "create %s: %s", w->stage, strerror(errno));
            free(w->stage);
            w->stage = NULL;
        } else if (chmod(w->stage, 0755) < 0) {
            rc = stk__error(-errno, "chmod %s: %s", w->stage, strerror(errno));
        }
    }
    free(parent);
    free(given);
    return rc;
}

int stk_writer_create(stk_writer_t **out, const char *dir, const stk_schema_t *schema,
                      const stk_writer_config_t *cfg)
{
    if (!out)
        return stk__error(STK_ECONFIG, "stk_writer_create: NULL out");
    *out = NULL;
    stk_writer_config_t def;
    if (!cfg) {
        stk_writer_config_default(&def);
        cfg = &def;
    }
    if (!dir || !*dir || !schema)
        return stk__error(STK_ECONFIG, "stk_writer_create: NULL directory or schema");
    if (cfg->zstd_level < 0 || cfg->zstd_level > ZSTD_maxCLevel())
        return stk__error(STK_ECONFIG, "zstd level %d outside 0..%d", cfg->zstd_level,
                          ZSTD_maxCLevel());
    if (cfg->use_dict && cfg->zstd_level > 0 && (cfg->dict_size < 256 || cfg->dict_size > (1u << 30)))
        return stk__error(STK_ECONFIG, "dictionary size %zu outside 256 B..1 GiB", cfg->dict_size);
    const char *prefix = cfg->prefix && *cfg->prefix ? cfg->prefix : "shard";
    /* The manifest lists names separated by spaces, one per line. */
    if (strpbrk(prefix, "/ \t\n\r") || strlen(prefix) > 100 || prefix[0] == '.')
        return stk__error(STK_ECONFIG, "bad shard prefix '%s'", prefix);
    if (schema->nfields == 0 || schema->nfields > STK_MAX_FIELDS)
        return stk__error(STK_ECONFIG, "schema has %u fields (1..%d)", schema->nfields,
                          STK_MAX_FIELDS);
    for (uint32_t i = 0; i < schema->nfields; i++) {
        int rc = stk__field_check(&schema->fields[i]);
        if (rc)
            return rc;
    }

    stk_writer_t *w = calloc(1, sizeof *w);
    if (!w)
        return stk__error(-ENOMEM, "out of memory");
    w->fd = -1;
    w->dir = strdup(dir);
    w->wbuf = malloc(WBUF_SIZE);
    w->schema = *schema;
    w->cfg = *cfg;
    snprintf(w->prefix, sizeof w->prefix, "%s", prefix);
    w->cfg.prefix = w->prefix;
    int rc = 0;
    if (!w->dir || !w->wbuf) {
        rc = stk__error(-ENOMEM, "out of memory");
        goto fail;
    }
    /* 0 would read as "written before set ids" (FORMAT.md). */
    while (w->set_id == 0)
        if (getrandom(&w->set_id, sizeof w->set_id, 0) != (ssize_t)sizeof w->set_id) {
            rc = stk__error(-errno, "getrandom: %s", strerror(errno));
            goto fail;
        }
    if ((rc = make_stage(w, dir, cfg->overwrite)))
        goto fail;
    rc = stk__shard_enc_init(&w->enc, cfg->zstd_level);
    if (rc)
        goto fail;
    w->dict_decided = !(cfg->use_dict && cfg->zstd_level > 0);
    w->sample_budget = cfg->dict_size * 100;
    if (w->sample_budget > DICT_SAMPLE_MAX)
        w->sample_budget = DICT_SAMPLE_MAX;
    *out = w;
    return 0;
fail:
    stk_writer_destroy(&w);
    return rc;
}

static int wflush(stk_writer_t *w)
{
    int rc = write_all(w->fd, w->wbuf, w->wlen, w->shards[w->nshards - 1].path);
    w->wstart += w->wlen;
    w->wlen = 0;
    return rc;
}

static int wappend(stk_writer_t *w, const void *p, size_t len)
{
    const unsigned char *b = p;
    while (len) {
        /* Up to the next 2 MiB boundary of the file. */
        size_t room = WBUF_SIZE - (size_t)(w->wstart % WBUF_SIZE) - w->wlen;
        size_t k = len < room ? len : room;
        memcpy(w->wbuf + w->wlen, b, k);
        w->wlen += k;
        b += k;
        len -= k;
        if (k == room) {
            int rc = wflush(w);
            if (rc)
                return rc;
        }
    }
    return 0;
}

static int shard_open(stk_writer_t *w)
{
    if (w->nshards == w->shards_cap) {
        uint32_t cap = w->shards_cap ? w->shards_cap * 2 : 8;
        shard_file_t *s = realloc(w->shards, cap * sizeof *s);
        if (!s)
            return stk__error(-ENOMEM, "out of memory");
        w->shards = s;
        w->shards_cap = cap;
    }
    shard_file_t *sf = &w->shards[w->nshards];
    memset(sf, 0, sizeof *sf);
    char name[160];
    snprintf(name, sizeof name, "%s-%05u.stk", w->prefix, w->nshards);
    sf->path = path_join(w->stage, name);
    if (!sf->path)
        return stk__error(-ENOMEM, "out of memory");
    w->nshards++;
    w->fd = open(sf->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (w->fd < 0)
        return stk__error(-errno, "create %s: %s", sf->path, strerror(errno));

    size_t flen = (size_t)w->schema.nfields * STK__FIELD_DESC;
    size_t hlen = STK__HEADER_FIXED + flen + w->enc.dict_len;
    unsigned char *h = calloc(1, hlen);
    if (!h)
        return stk__error(-ENOMEM, "out of memory");
    memcpy(h, STK__SHARD_MAGIC, 8);
    stk__put_u32(h + 8, STK__SHARD_VERSION);
    stk__put_u32(h + 12, (uint32_t)hlen);
    stk__put_u32(h + 16, w->schema.nfields);
    stk__put_u32(h + 20, (uint32_t)w->enc.dict_len);
    stk__put_u32(h + 24, (uint32_t)w->cfg.zstd_level);
    stk__put_u32(h + 28, 0);
    stk__schema_encode(&w->schema, h + STK__HEADER_FIXED);
    if (w->enc.dict_len)
        memcpy(h + STK__HEADER_FIXED + flen, w->enc.dict, w->enc.dict_len);
    w->header_hash = stk__xxh64(h, hlen, 0);
    w->wstart = 0;
    w->wlen = 0;
    int rc = wappend(w, h, hlen);
    free(h);
    w->pos = hlen;
    w->shard_records = 0;
    return rc;
}

static int shard_close(stk_writer_t *w)
{
    shard_file_t *sf = &w->shards[w->nshards - 1];
    uint64_t n = w->shard_records;
    size_t ilen = (size_t)n * STK__INDEX_ENTRY;
    unsigned char foot[STK__FOOTER_SIZE];
    stk__put_u64(foot, w->pos);
    stk__put_u64(foot + 8, n);
    stk__put_u64(foot + 16, stk__xxh64(w->index, ilen, 0));
    stk__put_u64(foot + 24, w->header_hash);
    stk__put_u64(foot + 32, w->set_id);
    memcpy(foot + 40, STK__FOOTER_MAGIC, 8);
    int rc = wappend(w, w->index, ilen);
    if (!rc)
        rc = wappend(w, foot, sizeof foot);
    if (!rc)
        rc = wflush(w);
    if (!rc && fsync(w->fd) < 0)
        rc = stk__error(-errno, "fsync %s: %s", sf->path, strerror(errno));
    if (close(w->fd) < 0 && !rc)
        rc = stk__error(-errno, "close %s: %s", sf->path, strerror(errno));
    w->fd = -1;
    sf->records = n;
    sf->bytes = w->pos + ilen + sizeof foot;
    return rc;
}

static int write_record(stk_writer_t *w, const void *raw, size_t len)
{
    int rc;
    if (w->fd < 0 && (rc = shard_open(w)))
        return rc;
    const void *stored;
    size_t slen;
    if ((rc = stk__shard_enc_record(&w->enc, raw, len, &stored, &slen)))
        return rc;
    size_t need = (size_t)(w->shard_records + 1) * STK__INDEX_ENTRY;
    if (need > w->index_cap) {
        size_t cap = w->index_cap ? w->index_cap * 2 : 4096 * STK__INDEX_ENTRY;
        unsigned char *p = realloc(w->index, cap);
        if (!p)
            return stk__error(-ENOMEM, "out of memory");
        w->index = p;
        w->index_cap = cap;
    }
    unsigned char *e = w->index + (size_t)w->shard_records * STK__INDEX_ENTRY;
    stk__put_u64(e, w->pos);
    stk__put_u32(e + 8, (uint32_t)slen);
    stk__put_u32(e + 12, (uint32_t)len);
    stk__put_u64(e + 16, stk__xxh64(raw, len, 0));
    if ((rc = wappend(w, stored, slen)))
        return rc;
    w->pos += slen;
    w->shard_records++;
    w->stats.records++;
    w->stats.raw_bytes += len;
    w->stats.stored_bytes += slen;
    if (w->cfg.records_per_shard && w->shard_records == w->cfg.records_per_shard)
        return shard_close(w);
    return 0;
}

/* Trains the dictionary on the held-back records, then writes them. */
static int decide_dict(stk_writer_t *w)
{
    int rc = stk__shard_enc_train(&w->enc, w->pend, w->pend_sizes, w->npend, w->cfg.dict_size);
    w->dict_decided = 1;
    w->stats.dict_bytes = w->enc.dict_len;
    size_t off = 0;
    for (size_t i = 0; !rc && i < w->npend; i++) {
        rc = write_record(w, w->pend + off, w->pend_sizes[i]);
        off += w->pend_sizes[i];
    }
    free(w->pend);
    free(w->pend_sizes);
    w->pend = NULL;
    w->pend_sizes = NULL;
    w->npend = w->pend_len = w->pend_cap = w->pend_sizes_cap = 0;
    return rc;
}

static int hold_record(stk_writer_t *w, const void *raw, size_t len)
{
    if (w->pend_len + len > w->pend_cap) {
        size_t cap = w->pend_cap ? w->pend_cap : 1 << 20;
        while (cap < w->pend_len + len)
            cap *= 2;
        unsigned char *p = realloc(w->pend, cap);
        if (!p)
            return stk__error(-ENOMEM, "out of memory");
        w->pend = p;
        w->pend_cap = cap;
    }
    if (w->npend == w->pend_sizes_cap) {
        size_t cap = w->pend_sizes_cap ? w->pend_sizes_cap * 2 : 1024;
        size_t *p = realloc(w->pend_sizes, cap * sizeof *p);
        if (!p)
            return stk__error(-ENOMEM, "out of memory");
        w->pend_sizes = p;
        w->pend_sizes_cap = cap;
    }
    memcpy(w->pend + w->pend_len, raw, len);
    w->pend_len += len;
    w->pend_sizes[w->npend++] = len;
    /* ZDICT counts samples in an unsigned int. */
    if (w->pend_len >= w->sample_budget || w->npend >= (1u << 30))
        return decide_dict(w);
    return 0;
}

int stk__writer_add_raw(stk_writer_t *w, const void *raw, size_t len)
{
    if (!w)
        return stk__error(STK_ECONFIG, "NULL writer");
    if (w->finished || w->failed)
        return stk__error(STK_ESTATE, "writer for %s is %s", w->dir,
                          w->finished ? "finished" : "failed");
    if (len > UINT32_MAX)
        return stk__error(STK_ESHAPE, "record of %zu bytes is over 4 GiB", len);
    int rc = w->dict_decided ? write_record(w, raw, len) : hold_record(w, raw, len);
    if (rc)
        w->failed = 1;
    return rc;
}

int stk_writer_add(stk_writer_t *w, const void *const *data, const int64_t *var_extent)
{
    if (!w || !data)
        return stk__error(STK_ECONFIG, "stk_writer_add: NULL argument");
    size_t len;
    int rc = stk_record_raw_size(&w->schema, var_extent, &len);
    if (rc)
        return rc;
    if (len > w->raw_cap) {
        size_t cap = len < 4096 ? 4096 : len;
        unsigned char *p = realloc(w->raw, cap);
        if (!p)
            return stk__error(-ENOMEM, "out of memory");
        w->raw = p;
        w->raw_cap = cap;
    }
    rc = stk_record_build(&w->schema, data, var_extent, w->raw, w->raw_cap, &len);
    if (rc)
        return rc;
    return stk__writer_add_raw(w, w->raw, len);
}

/* Writes a whole file in the staging folder and fsyncs it. */
static int write_stage_file(stk_writer_t *w, const char *name, const void *data, size_t len)
{
    char *path = path_join(w->stage, name);
    if (!path)
        return stk__error(-ENOMEM, "out of memory");
    int rc = 0;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        rc = stk__error(-errno, "create %s: %s", path, strerror(errno));
    if (!rc)
        rc = write_all(fd, data, len, path);
    if (!rc && fsync(fd) < 0)
        rc = stk__error(-errno, "fsync %s: %s", path, strerror(errno));
    if (fd >= 0 && close(fd) < 0 && !rc)
        rc = stk__error(-errno, "close %s: %s", path, strerror(errno));
    free(path);
    return rc;
}

int stk_writer_add_file(stk_writer_t *w, const char *name, const void *data, size_t len)
{
    if (!w || !name || (!data && len))
        return stk__error(STK_ECONFIG, "stk_writer_add_file: NULL argument");
    if (w->finished || w->failed)
        return stk__error(STK_ESTATE, "writer for %s is %s", w->dir,
                          w->finished ? "finished" : "failed");
    if (!*name || name[0] == '.' || strchr(name, '/') || strlen(name) > 200 ||
        ends_with(name, ".stk") || ends_with(name, ".manifest") || strstr(name, ".tmp-"))
        return stk__error(STK_ECONFIG, "side file name '%s' (no '/', no leading '.', not *.stk, "
                          "*.manifest or .tmp-)", name);
    int rc = write_stage_file(w, name, data, len);
    if (rc)
        w->failed = 1;
    return rc;
}

static int write_manifest(stk_writer_t *w)
{
    char name[160], schema_txt[2048];
    snprintf(name, sizeof name, "%s.manifest", w->prefix);
    int rc = stk_schema_format(&w->schema, schema_txt, sizeof schema_txt);
    if (rc)
        return rc;
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        return stk__error(-ENOMEM, "out of memory");
    fprintf(f, "%s\nschema %s\nset %016" PRIx64 "\nrecords %" PRIu64 "\n", STK__MANIFEST_MAGIC,
            schema_txt, w->set_id, w->stats.records);
    for (uint32_t i = 0; i < w->nshards; i++) {
        const char *base = strrchr(w->shards[i].path, '/') + 1;
        fprintf(f, "shard %s %" PRIu64 " %" PRIu64 "\n", base, w->shards[i].records,
                w->shards[i].bytes);
    }
    if (fclose(f) != 0 || !text) {
        free(text);
        return stk__error(-ENOMEM, "out of memory");
    }
    rc = write_stage_file(w, name, text, len);
    free(text);
    return rc;
}

/* Puts the staging folder where the set belongs. A destination that does
 * not exist, or is empty, is replaced by a rename; one that holds a set is
 * exchanged with the staging folder atomically, so that readers see the
 * old set or the new one and nothing in between, whenever this process
 * dies. Where the file system cannot exchange, the old set is first moved
 * aside to a .tmp- name: then a crash in between leaves no set at the
 * destination, but never a mixed one. On return, *old names the folder
 * (now at a staging name) holding the replaced set, or is NULL. */
static int switch_in(stk_writer_t *w, char **old)
{
    *old = NULL;
    if (rename(w->stage, w->target) == 0)
        return 0;
    if (errno != EEXIST && errno != ENOTEMPTY)
        return stk__error(-errno, "rename %s to %s: %s", w->stage, w->dir, strerror(errno));
    /* Checked again: something may have appeared there since create. */
    int rc = check_replaceable(w->target, w->dir, w->cfg.overwrite);
    if (rc)
        return rc;
    if (renameat2(AT_FDCWD, w->stage, AT_FDCWD, w->target, RENAME_EXCHANGE) == 0) {
        *old = w->stage;
        w->stage = NULL;
        return 0;
    }
    if (errno != EINVAL && errno != ENOSYS)
        return stk__error(-errno, "exchange %s with %s: %s", w->stage, w->dir, strerror(errno));
    char *aside = NULL;
    if (asprintf(&aside, "%s.old", w->stage) < 0)
        return stk__error(-ENOMEM, "out of memory");
    if (rename(w->target, aside) < 0) {
        rc = stk__error(-errno, "rename %s to %s: %s", w->dir, aside, strerror(errno));
        free(aside);
        return rc;
    }
    if (rename(w->stage, w->target) < 0) {
        rc = stk__error(-errno, "rename %s to %s: %s", w->stage, w->dir, strerror(errno));
        if (rename(aside, w->target) < 0)
            stk__log(STK_LOG_ERROR, "the set that was at %s is now at %s", w->dir, aside);
        free(aside);
        return rc;
    }
    *old = aside;
    return 0;
}

int stk_writer_finish(stk_writer_t *w)
{
    if (!w)
        return stk__error(STK_ECONFIG, "NULL writer");
    if (w->finished || w->failed)
        return stk__error(STK_ESTATE, "writer for %s is %s", w->dir,
                          w->finished ? "already finished" : "failed");
    int rc = 0;
    if (!w->dict_decided)
        rc = decide_dict(w);
    if (!rc && w->fd >= 0)
        rc = shard_close(w);
    if (!rc && w->stats.records == 0)
        rc = stk__error(STK_EEMPTY, "%s: no records were added", w->dir);
    if (!rc)
        rc = write_manifest(w);
    if (!rc)
        rc = fsync_dir(w->stage);
    char *old = NULL;
    if (!rc)
        rc = switch_in(w, &old);
    if (rc) {
        w->failed = 1;
        return rc;
    }
    /* The set is in place: from here on, failing would not undo that. */
    w->finished = 1;
    char *slash = strrchr(w->target, '/');
    char *parent = slash ? strndup(w->target, slash == w->target ? 1 : (size_t)(slash - w->target))
                         : strdup(".");
    if (parent)
        rc = fsync_dir(parent);
    free(parent);
    if (old)
        remove_set_dir(old);
    free(old);
    return rc;
}

void stk_writer_destroy(stk_writer_t **wp)
{
    if (!wp || !*wp)
        return;
    stk_writer_t *w = *wp;
    if (w->fd >= 0)
        close(w->fd);
    if (w->stage && !w->finished)
        remove_set_dir(w->stage);
    for (uint32_t i = 0; i < w->nshards; i++)
        free(w->shards[i].path);
    stk__shard_enc_free(&w->enc);
    free(w->shards);
    free(w->pend);
    free(w->pend_sizes);
    free(w->index);
    free(w->wbuf);
    free(w->raw);
    free(w->dir);
    free(w->target);
    free(w->stage);
    free(w);
    *wp = NULL;
}

void stk_writer_stats(const stk_writer_t *w, stk_writer_stats_t *out)
{
    memset(out, 0, sizeof *out);
    if (!w)
        return;
    *out = w->stats;
    out->shards = w->nshards;
}
