/* SPDX-License-Identifier: MIT */
/* Reads .stk shard sets: opens one shard, a directory, a glob or a
 * manifest, checks every header, footer and index up front, and maps a
 * global record number to (shard, offset, lengths, checksum). Decoders
 * are shard_decoder.c's, the loader's flattened copy shard_export.c's. */
#define _GNU_SOURCE
#include "shardset_impl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define MANIFEST_MAX (64u << 20)

/* Sets packed with `stoker-pack -n N` have equal shards: a record's shard
 * is then a division, not a search whose branches a random order
 * mispredicts. */
void stk__shardset_set_stride(stk_shardset_t *set)
{
    set->stride = set->n ? set->shards[0].nrec : 0;
    for (uint32_t i = 0; i + 1 < set->n && set->stride; i++)
        if (set->shards[i].nrec != set->stride || set->shards[i].first != i * set->stride)
            set->stride = 0;
}

int stk__pread_all(int fd, void *buf, size_t len, uint64_t off, const char *path)
{
    unsigned char *p = buf;
    while (len) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return stk__error(-errno, "read %s: %s", path, strerror(errno));
        }
        if (n == 0)
            return stk__error(STK_EDATA, "%s: truncated (read past end at offset %" PRIu64 ")",
                              path, off);
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}



static inline uint32_t shard_of(const stk_shardset_t *set, uint64_t index)
{
    uint32_t lo = 0, hi = set->n;
    if (set->stride) {
        uint64_t q = index / set->stride;
        lo = q < set->n ? (uint32_t)q : set->n - 1;
    } else {
        /* Last shard whose first index <= index. */
        while (hi - lo > 1) {
            uint32_t mid = lo + (hi - lo) / 2;
            if (set->shards[mid].first <= index)
                lo = mid;
            else
                hi = mid;
        }
    }
    /* Empty shards are skipped by the strict comparison. */
    while (index - set->shards[lo].first >= set->shards[lo].nrec)
        lo++;
    return lo;
}


static void shard_free(shard_t *s)
{
    if (s->fd >= 0)
        close(s->fd);
    free(s->path);
    if (!s->borrowed) {
        free(s->index);
        free(s->dict);
    }
}

/* Opens and checks one shard file completely (everything but record
 * payloads, which decoders check). */
static int shard_load(shard_t *s, stk_schema_t *schema, const char *path)
{
    memset(s, 0, sizeof *s);
    s->fd = -1;
    s->dict_slot = -1;
    s->path = strdup(path);
    if (!s->path)
        return stk__error(-ENOMEM, "out of memory");
    /* O_NONBLOCK: a FIFO named in a manifest must not hang the open. */
    s->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (s->fd < 0)
        return stk__error(-errno, "open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(s->fd, &st) < 0)
        return stk__error(-errno, "stat %s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return stk__error(STK_EFORMAT, "%s: not a regular file", path);
    s->size = (uint64_t)st.st_size;
    s->dev = (uint64_t)st.st_dev;
    s->ino = (uint64_t)st.st_ino;

    unsigned char h[STK__HEADER_FIXED];
    if (s->size < 8)
        return stk__error(STK_EFORMAT, "%s: not a Stoker shard (%" PRIu64 " bytes)", path,
                          s->size);
    int rc = stk__pread_all(s->fd, h, 8, 0, path);
    if (rc)
        return rc;
    if (memcmp(h, STK__SHARD_MAGIC, 8) != 0)
        return stk__error(STK_EFORMAT, "%s: not a Stoker shard (bad magic)", path);
    if (s->size < STK__HEADER_FIXED + STK__FOOTER_SIZE)
        return stk__error(STK_EFORMAT, "%s: truncated (%" PRIu64 " bytes)", path, s->size);
    if ((rc = stk__pread_all(s->fd, h, sizeof h, 0, path)))
        return rc;
    uint32_t version = stk__get_u32(h + 8);
    if (version > STK__SHARD_VERSION)
        return stk__error(STK_EFORMAT,
                          "%s: format version %u is newer than this reader supports (%u)", path,
                          version, STK__SHARD_VERSION);
    if (version == 0)
        return stk__error(STK_EFORMAT, "%s: bad format version 0", path);
    uint64_t hlen = stk__get_u32(h + 12);
    uint32_t nfields = stk__get_u32(h + 16);
    s->dict_len = stk__get_u32(h + 20);
    s->level = (int)stk__get_u32(h + 24);
    if (nfields == 0 || nfields > STK_MAX_FIELDS)
        return stk__error(STK_EFORMAT, "%s: header says %u fields (1..%d)", path, nfields,
                          STK_MAX_FIELDS);
    if (hlen != STK__HEADER_FIXED + (uint64_t)nfields * STK__FIELD_DESC + s->dict_len)
        return stk__error(STK_EFORMAT, "%s: header length %" PRIu64 " disagrees with its fields",
                          path, hlen);
    if (hlen + STK__FOOTER_SIZE > s->size)
        return stk__error(STK_EFORMAT, "%s: truncated (header of %" PRIu64 " bytes, file %" PRIu64
                          ")", path, hlen, s->size);
    s->header_len = hlen;
    unsigned char *hdr = malloc(hlen);
    if (!hdr)
        return stk__error(-ENOMEM, "out of memory");
    if ((rc = stk__pread_all(s->fd, hdr, hlen, 0, path))) {
        free(hdr);
        return rc;
    }
    unsigned char f[STK__FOOTER_SIZE];
    if ((rc = stk__pread_all(s->fd, f, sizeof f, s->size - sizeof f, path))) {
        free(hdr);
        return rc;
    }
    if (memcmp(f + 40, STK__FOOTER_MAGIC, 8) != 0) {
        free(hdr);
        return stk__error(STK_EFORMAT, "%s: no footer (truncated or unfinished shard)", path);
    }
    s->index_offset = stk__get_u64(f);
    s->nrec = stk__get_u64(f + 8);
    uint64_t ihash = stk__get_u64(f + 16);
    s->set_id = stk__get_u64(f + 32);
    /* Checked before the schema is parsed, so that a flipped bit reads as
     * corruption rather than as a strange schema. */
    if (stk__get_u64(f + 24) != stk__xxh64(hdr, hlen, 0)) {
        free(hdr);
        return stk__error(STK_EDATA, "%s: header checksum mismatch", path);
    }
    rc = stk__schema_decode(schema, hdr + STK__HEADER_FIXED, nfields);
    if (!rc && s->dict_len) {
        s->dict = malloc(s->dict_len);
        if (!s->dict)
            rc = stk__error(-ENOMEM, "out of memory");
        else
            memcpy(s->dict, hdr + STK__HEADER_FIXED + (size_t)nfields * STK__FIELD_DESC,
                   s->dict_len);
    }
    free(hdr);
    if (rc)
        return stk__error_prefix(rc, "%s", path);

    uint64_t area_end = s->size - STK__FOOTER_SIZE;
    if (s->index_offset < hlen || s->index_offset > area_end ||
        s->nrec > (area_end - s->index_offset) / STK__INDEX_ENTRY)
        return stk__error(STK_EFORMAT,
                          "%s: index (offset %" PRIu64 ", %" PRIu64
                          " entries) points past the end of the file (%" PRIu64 " bytes)",
                          path, s->index_offset, s->nrec, s->size);
    if (s->index_offset + s->nrec * STK__INDEX_ENTRY != area_end)
        return stk__error(STK_EFORMAT,
                          "%s: index (offset %" PRIu64 ", %" PRIu64
                          " entries) does not end at the footer (offset %" PRIu64 ")",
                          path, s->index_offset, s->nrec, area_end);
    size_t ilen = (size_t)(s->nrec * STK__INDEX_ENTRY);
    s->index = malloc(ilen ? ilen : 1);
    if (!s->index)
        return stk__error(-ENOMEM, "out of memory");
    if ((rc = stk__pread_all(s->fd, s->index, ilen, s->index_offset, path)))
        return rc;
    if (stk__xxh64(s->index, ilen, 0) != ihash)
        return stk__error(STK_EDATA, "%s: index checksum mismatch", path);
    return 0;
}

/* Checks every index entry against the file and the schema, so that
 * locate and the buffer sizes it implies can be trusted. */
static int shard_check_index(shard_t *s, const stk__schema_sizes_t *sz, uint64_t *max_raw,
                             uint64_t *max_stored)
{
    int dense = s->nrec > 0;
    uint64_t base = 0, size = 0;
    for (uint64_t i = 0; i < s->nrec; i++) {
        const unsigned char *e = s->index + i * STK__INDEX_ENTRY;
        uint64_t off = stk__get_u64(e);
        uint64_t slen = stk__get_u32(e + 8);
        uint64_t rlen = stk__get_u32(e + 12);
        if (off < s->header_len || off > s->index_offset || slen > s->index_offset - off)
            return stk__error(STK_EFORMAT,
                              "%s: record %" PRIu64 ": offset %" PRIu64 " + %" PRIu64
                              " bytes points outside the record area",
                              s->path, i, off, slen);
        if (sz->nvar == 0 ? rlen != sz->min_raw : rlen < sz->min_raw)
            return stk__error(STK_EDATA,
                              "%s: record %" PRIu64 ": raw length %" PRIu64
                              " disagrees with the schema (%s%" PRIu64 " bytes)",
                              s->path, i, rlen, sz->nvar ? "at least " : "", sz->min_raw);
        if (slen > rlen || (slen == 0 && rlen != 0))
            return stk__error(STK_EDATA,
                              "%s: record %" PRIu64 ": stored length %" PRIu64
                              " impossible for raw length %" PRIu64,
                              s->path, i, slen, rlen);
        s->raw_bytes += rlen;
        s->stored_bytes += slen;
        if (rlen > *max_raw)
            *max_raw = rlen;
        if (slen > *max_stored)
            *max_stored = slen;
        if (i == 0) {
            base = off;
            size = rlen;
        }
        dense = dense && slen == rlen && rlen == size && rlen > 0 && off == base + i * size;
    }
    s->dense_base = dense ? base : 0;
    s->dense_size = dense ? size : 0;
    return 0;
}

static int set_add_shard(stk_shardset_t *set, const char *path)
{
    if (set->n == set->cap) {
        uint32_t cap = set->cap ? set->cap * 2 : 8;
        shard_t *p = realloc(set->shards, cap * sizeof *p);
        if (!p)
            return stk__error(-ENOMEM, "out of memory");
        set->shards = p;
        set->cap = cap;
    }
    shard_t *s = &set->shards[set->n];
    stk_schema_t schema;
    int rc = shard_load(s, &schema, path);
    set->n++; /* even on failure, so that close frees it */
    if (rc)
        return rc;
    for (uint32_t i = 0; i + 1 < set->n; i++)
        if (set->shards[i].dev == s->dev && set->shards[i].ino == s->ino)
            return stk__error(STK_EFORMAT, "%s is the same file as %s: a set lists each shard once",
                              path, set->shards[i].path);
    if (set->n == 1) {
        set->schema = schema;
        stk__schema_sizes(&schema, &set->sizes);
    } else if (!stk__schema_equal(&schema, &set->schema)) {
        char a[1024], b[1024];
        stk_schema_format(&schema, a, sizeof a);
        stk_schema_format(&set->schema, b, sizeof b);
        return stk__error(STK_EFORMAT, "%s: schema '%s' differs from %s: '%s'", path, a,
                          set->shards[0].path, b);
    }
    /* A folder is one pack's: shards of two packs side by side (an
     * interrupted re-pack by an older writer, files copied together) would
     * read as one set. A glob or a hand-written manifest may combine packs
     * on purpose. */
    if (set->one_pack && set->n > 1 && s->set_id != set->shards[0].set_id)
        return stk__error(STK_EFORMAT,
                          "%s belongs to another pack (set %016" PRIx64 ") than %s (set %016" PRIx64
                          "): a folder holds the shards of one pack; re-pack it, or list the "
                          "shards in a manifest to combine packs",
                          path, s->set_id, set->shards[0].path, set->shards[0].set_id);
    if ((rc = shard_check_index(s, &set->sizes, &set->max_raw, &set->max_stored)))
        return rc;
    s->first = set->total;
    set->total += s->nrec;
    /* One decoder dictionary per distinct dictionary, not per shard: a
     * writer stores the same one in every shard it makes. */
    if (s->dict_len) {
        for (uint32_t k = 0; k < set->ndicts; k++) {
            shard_t *o = &set->shards[set->dict_owner[k]];
            if (o->dict_len == s->dict_len && memcmp(o->dict, s->dict, s->dict_len) == 0) {
                s->dict_slot = (int)k;
                return 0;
            }
        }
        uint32_t *p = realloc(set->dict_owner, (set->ndicts + 1) * sizeof *p);
        if (!p)
            return stk__error(-ENOMEM, "out of memory");
        set->dict_owner = p;
        p[set->ndicts] = set->n - 1;
        s->dict_slot = (int)set->ndicts++;
    }
    return 0;
}

static int has_glob_chars(const char *s)
{
    return strpbrk(s, "*?[") != NULL;
}

static int open_glob(stk_shardset_t *set, const char *pattern)
{
    glob_t g;
    int grc = glob(pattern, GLOB_ERR, NULL, &g);
    if (grc == GLOB_NOMATCH)
        return stk__error(STK_EEMPTY, "%s: no shard files match", pattern);
    if (grc != 0)
        return stk__error(-EIO, "%s: glob failed", pattern);
    int rc = 0;
    for (size_t i = 0; !rc && i < g.gl_pathc; i++)
        rc = set_add_shard(set, g.gl_pathv[i]);
    globfree(&g);
    return rc;
}

/* A whole unsigned number in base 10 (at most 20 digits) or 16 (at most
 * 16), and nothing else but trailing spaces: no sign, no overflow. */
static int parse_u64(const char *s, int base, uint64_t *out)
{
    uint64_t v = 0;
    int digits = 0;
    for (; *s && *s != ' ' && *s != '\t' && *s != '\r'; s++, digits++) {
        int d;
        if (*s >= '0' && *s <= '9')
            d = *s - '0';
        else if (base == 16 && *s >= 'a' && *s <= 'f')
            d = *s - 'a' + 10;
        else if (base == 16 && *s >= 'A' && *s <= 'F')
            d = *s - 'A' + 10;
        else
            return -1;
        if (v > (UINT64_MAX - (uint64_t)d) / (uint64_t)base)
            return -1;
        v = v * (uint64_t)base + (uint64_t)d;
    }
    while (*s == ' ' || *s == '\t' || *s == '\r')
        s++;
    if (!digits || *s)
        return -1;
    *out = v;
    return 0;
}

static int open_manifest(stk_shardset_t *set, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return stk__error(-errno, "open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > MANIFEST_MAX) {
        close(fd);
        return stk__error(STK_EFORMAT, "%s: not a readable manifest", path);
    }
    size_t len = (size_t)st.st_size;
    char *text = malloc(len + 1);
    if (!text) {
        close(fd);
        return stk__error(-ENOMEM, "out of memory");
    }
    int rc = stk__pread_all(fd, text, len, 0, path);
    close(fd);
    if (rc) {
        free(text);
        return rc;
    }
    text[len] = '\0';
    if (memchr(text, '\0', len)) {
        free(text);
        return stk__error(STK_EFORMAT, "%s: manifest contains a NUL byte", path);
    }
    const char *slash = strrchr(path, '/');
    int dlen = slash ? (int)(slash - path) : 1;
    const char *dir = slash ? path : ".";
    uint64_t declared = 0, declared_set = 0;
    int line_no = 0, have_magic = 0, records_line = 0, set_line = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line && !rc;
         line = strtok_r(NULL, "\n", &save)) {
        line_no++;
        if (!have_magic) {
            if (strcmp(line, STK__MANIFEST_MAGIC) != 0) {
                rc = stk__error(STK_EFORMAT, "%s: not a Stoker manifest (first line)", path);
                break;
            }
            have_magic = 1;
            continue;
        }
        char name[4096];
        uint64_t recs, bytes;
        char tail;
        if (strncmp(line, "schema ", 7) == 0 || line[0] == '#') {
            continue; /* informative; the shards' own schemas are checked */
        } else if (strncmp(line, "records ", 8) == 0) {
            if (records_line)
                rc = stk__error(STK_EFORMAT, "%s: line %d: a second records line (first on line %d)",
                                path, line_no, records_line);
            else if (parse_u64(line + 8, 10, &declared))
                rc = stk__error(STK_EFORMAT,
                                "%s: line %d: records must be a whole number of at most 20 digits, "
                                "got '%.40s'", path, line_no, line + 8);
            records_line = line_no;
        } else if (strncmp(line, "set ", 4) == 0) {
            if (set_line)
                rc = stk__error(STK_EFORMAT, "%s: line %d: a second set line (first on line %d)",
                                path, line_no, set_line);
            else if (parse_u64(line + 4, 16, &declared_set) || declared_set == 0)
                rc = stk__error(STK_EFORMAT, "%s: line %d: set must be a non-zero hex id, got '%.40s'",
                                path, line_no, line + 4);
            set_line = line_no;
        } else if (sscanf(line, "shard %4095s %" SCNu64 " %" SCNu64 " %c", name, &recs, &bytes,
                          &tail) == 3) {
            char *full = NULL;
            if (name[0] == '/' ? asprintf(&full, "%s", name) < 0
                               : asprintf(&full, "%.*s/%s", dlen, dir, name) < 0) {
                rc = stk__error(-ENOMEM, "out of memory");
                break;
            }
            rc = set_add_shard(set, full);
            shard_t *s = &set->shards[set->n - 1];
            if (!rc && (s->nrec != recs || s->size != bytes))
                rc = stk__error(STK_EFORMAT,
                                "%s: manifest %s line %d says %" PRIu64 " records, %" PRIu64
                                " bytes; the shard has %" PRIu64 ", %" PRIu64,
                                full, path, line_no, recs, bytes, s->nrec, s->size);
            free(full);
        } else {
            rc = stk__error(STK_EFORMAT, "%s: line %d: cannot parse '%.60s'", path, line_no, line);
        }
    }
    free(text);
    if (rc)
        return rc;
    if (!have_magic)
        return stk__error(STK_EFORMAT, "%s: empty manifest", path);
    if (records_line && declared != set->total)
        return stk__error(STK_EFORMAT, "%s: manifest says %" PRIu64 " records, shards hold %" PRIu64,
                          path, declared, set->total);
    for (uint32_t i = 0; set_line && i < set->n; i++)
        if (set->shards[i].set_id != declared_set)
            return stk__error(STK_EFORMAT,
                              "%s: manifest is of set %016" PRIx64 " but %s is of set %016" PRIx64
                              " (a shard from another pack)",
                              path, declared_set, set->shards[i].path, set->shards[i].set_id);
    return 0;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static int open_dir(stk_shardset_t *set, const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return stk__error(-errno, "open %s: %s", dir, strerror(errno));
    char *manifest = NULL;
    int count = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || !ends_with(e->d_name, ".manifest"))
            continue;
        if (count++ == 0 && asprintf(&manifest, "%s/%s", dir, e->d_name) < 0)
            manifest = NULL;
    }
    closedir(d);
    int rc;
    if (count > 1)
        rc = stk__error(STK_ECONFIG, "%s: %d manifests; open one of them by name", dir, count);
    else if (count == 1 && !manifest)
        rc = stk__error(-ENOMEM, "out of memory");
    else if (count == 1)
        rc = open_manifest(set, manifest);
    else {
        char *pattern = NULL;
        if (asprintf(&pattern, "%s/*.stk", dir) < 0)
            return stk__error(-ENOMEM, "out of memory");
        set->one_pack = 1;
        rc = open_glob(set, pattern);
        if (rc == STK_EEMPTY)
            rc = stk__error(STK_EEMPTY, "%s: no shards (*.stk) and no manifest", dir);
        free(pattern);
    }
    free(manifest);
    return rc;
}

int stk_shardset_create(stk_shardset_t **out, const char *path)
{
    if (!out || !path)
        return stk__error(STK_ECONFIG, "stk_shardset_create: NULL argument");
    *out = NULL;
    stk_shardset_t *set = calloc(1, sizeof *set);
    if (!set)
        return stk__error(-ENOMEM, "out of memory");
    int rc;
    struct stat st;
    if (stat(path, &st) < 0) {
        int e = errno;
        if (e == ENOENT && has_glob_chars(path))
            rc = open_glob(set, path);
        else
            rc = stk__error(-e, "open %s: %s", path, strerror(e));
    } else if (S_ISDIR(st.st_mode)) {
        rc = open_dir(set, path);
    } else {
        /* A file is a shard or a manifest; tell them by their first bytes. */
        char head[sizeof STK__MANIFEST_MAGIC] = {0};
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        ssize_t n = fd < 0 ? -1 : pread(fd, head, sizeof head - 1, 0);
        int e = errno;
        if (fd >= 0)
            close(fd);
        if (n < 0)
            rc = stk__error(-e, "open %s: %s", path, strerror(e));
        else if (strncmp(head, STK__MANIFEST_MAGIC, strlen("stoker-manifest")) == 0)
            rc = open_manifest(set, path);
        else
            rc = set_add_shard(set, path);
    }
    if (!rc && set->n == 0)
        rc = stk__error(STK_EEMPTY, "%s: no shards", path);
    if (!rc && set->total == 0)
        rc = stk__error(STK_EEMPTY, "%s: the data set has no records", path);
    if (!rc)
        stk__shardset_set_stride(set);
    if (rc) {
        stk_shardset_destroy(&set);
        return rc;
    }
    *out = set;
    return 0;
}

void stk_shardset_destroy(stk_shardset_t **setp)
{
    if (!setp || !*setp)
        return;
    stk_shardset_t *set = *setp;
    for (uint32_t i = 0; i < set->n; i++)
        shard_free(&set->shards[i]);
    free(set->shards);
    free(set->dict_owner);
    free(set);
    *setp = NULL;
}

uint64_t stk_shardset_len(const stk_shardset_t *set)
{
    return set ? set->total : 0;
}

const stk_schema_t *stk_shardset_schema(const stk_shardset_t *set)
{
    return set ? &set->schema : NULL;
}

uint32_t stk_shardset_num_shards(const stk_shardset_t *set)
{
    return set ? set->n : 0;
}

const char *stk_shardset_shard_path(const stk_shardset_t *set, uint32_t shard)
{
    return set && shard < set->n ? set->shards[shard].path : NULL;
}

uint64_t stk_shardset_max_raw(const stk_shardset_t *set)
{
    return set ? set->max_raw : 0;
}

uint64_t stk_shardset_max_stored(const stk_shardset_t *set)
{
    return set ? set->max_stored : 0;
}

int stk_shardset_shard_info(const stk_shardset_t *set, uint32_t shard, stk_shard_info_t *out)
{
    if (!set || !out)
        return stk__error(-EINVAL, "stk_shardset_shard_info: NULL argument");
    if (shard >= set->n)
        return stk__error(-ERANGE, "no shard %u (the set has %u)", shard, set->n);
    const shard_t *s = &set->shards[shard];
    out->records = s->nrec;
    out->first_index = s->first;
    out->file_bytes = s->size;
    out->raw_bytes = s->raw_bytes;
    out->stored_bytes = s->stored_bytes;
    out->dict_bytes = s->dict_len;
    out->zstd_level = s->level;
    return 0;
}

int stk_shardset_locate(const stk_shardset_t *set, uint64_t index, stk_record_loc_t *loc)
{
    if (!set || !loc)
        return stk__error(-EINVAL, "stk_shardset_locate: NULL argument");
    if (index >= set->total)
        return stk__error(-ERANGE, "record %" PRIu64 " out of range (%" PRIu64 " records)", index,
                          set->total);
    uint32_t lo = shard_of(set, index);
    const shard_t *s = &set->shards[lo];
    uint64_t li = index - s->first;
    const unsigned char *e = s->index + li * STK__INDEX_ENTRY;
    loc->shard = lo;
    loc->fd = s->fd;
    loc->local_index = li;
    loc->offset = stk__get_u64(e);
    loc->stored_len = stk__get_u32(e + 8);
    loc->raw_len = stk__get_u32(e + 12);
    loc->checksum = stk__get_u64(e + 16);
    return 0;
}

int stk__shardset_dense(const stk_shardset_t *set, uint32_t shard, stk__dense_shard_t *out)
{
    if (!set || shard >= set->n)
        return 0;
    const shard_t *s = &set->shards[shard];
    out->fd = s->fd;
    out->first = s->first;
    out->nrec = s->nrec;
    out->base = s->dense_base;
    out->size = s->dense_size;
    out->file_bytes = s->size;
    return s->dense_size != 0;
}

uint64_t stk__shardset_stride(const stk_shardset_t *set)
{
    return set->stride;
}

void stk__shardset_prefetch(const stk_shardset_t *set, uint64_t index)
{
    if (index < set->total) {
        const shard_t *s = &set->shards[shard_of(set, index)];
        __builtin_prefetch(s->index + (index - s->first) * STK__INDEX_ENTRY, 0, 0);
    }
}

int stk_shardset_read_raw(const stk_shardset_t *set, uint64_t index, void *buf, size_t cap,
                          stk_record_loc_t *loc)
{
    stk_record_loc_t l;
    int rc = stk_shardset_locate(set, index, &l);
    if (rc)
        return rc;
    if (loc)
        *loc = l;
    if (!buf)
        return stk__error(-EINVAL, "stk_shardset_read_raw: NULL buffer");
    if (cap < l.stored_len)
        return stk__error(-ENOSPC, "%s: record %" PRIu64 ": needs %" PRIu64
                          " bytes, buffer has %zu", set->shards[l.shard].path, l.local_index,
                          l.stored_len, cap);
    rc = stk__pread_all(l.fd, buf, l.stored_len, l.offset, set->shards[l.shard].path);
    if (rc)
        return stk__error_prefix(rc, "record %" PRIu64, index);
    return 0;
}
