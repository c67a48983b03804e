/* SPDX-License-Identifier: MIT */
/* Checkpoint files: a header, a table of named sections and the sections'
 * bytes, each checksummed with XXH64. Saves go to a temporary file that is
 * fsynced and renamed, then the directory is fsynced, so a crash never
 * leaves a torn checkpoint under the final name. Layout (little-endian):
 *   header  64 B: magic "STKCKPT\0", u32 version, u32 nsections,
 *                 u64 file_size, u64 table_checksum, u64 header_checksum
 *                 (of the 32 bytes before it), zero padding
 *   table   nsections x 80 B: char name[48], u64 offset, u64 length,
 *                 u64 checksum, u64 reserved (0)
 *   data    each section at a 64-byte aligned offset, zero padding between */
#define _GNU_SOURCE
#include "internal.h"
#include "stoker/checkpoint.h"
#include "checkpoint_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "checkpoint.c writes native little-endian integers"
#endif

#define CK_MAGIC "STKCKPT"
#define CK_HEADER 64
#define CK_ENTRY 80
#define CK_NAME 48
#define CK_ALIGN 64
#define CK_MAX_SECTIONS 4096

void (*stk__ckpt_test_hook)(int phase, const char *path);

static void hook(int phase, const char *path)
{
    if (stk__ckpt_test_hook)
        stk__ckpt_test_hook(phase, path);
}

/* Sections are checked with the same XXH64 (seed 0) as shard records. */
uint64_t stk_ckpt_checksum(const void *data, size_t len)
{
    return stk__xxh64(data, len, 0);
}

/* ---- Writing ------------------------------------------------------------ */

static uint64_t align_up(uint64_t x)
{
    return (x + CK_ALIGN - 1) & ~(uint64_t)(CK_ALIGN - 1);
}

static int check_name(const char *name)
{
    if (!name || !name[0])
        return stk__error(STK_ECONFIG, "checkpoint section name is empty");
    size_t n = strlen(name);
    if (n > STK_CKPT_NAME_MAX)
        return stk__error(STK_ECONFIG, "checkpoint section name '%.*s…' is longer than %d characters",
                          20, name, STK_CKPT_NAME_MAX);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c <= 0x20 || c >= 0x7f)
            return stk__error(STK_ECONFIG, "checkpoint section name '%s' has a character that is not printable ASCII",
                              name);
    }
    return 0;
}

static int write_all(int fd, const void *buf, size_t len, uint64_t off, const char *path)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t w = pwrite(fd, p, len, (off_t)off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return stk__error(-errno, "write %s: %s", path, strerror(errno));
        }
        p += w;
        off += (uint64_t)w;
        len -= (size_t)w;
    }
    return 0;
}

/* Directory part of path ("." when there is none), for the fsync that
 * makes the rename durable. */
static int fsync_parent(const char *path)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (!slash) {
        strcpy(dir, ".");
    } else if (slash == path) {
        strcpy(dir, "/");
    } else {
        size_t n = (size_t)(slash - path);
        if (n >= sizeof dir)
            return stk__error(-ENAMETOOLONG, "path too long: %s", path);
        memcpy(dir, path, n);
        dir[n] = '\0';
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return stk__error(-errno, "open directory %s: %s", dir, strerror(errno));
    int rc = 0;
    if (fsync(fd) != 0 && errno != EINVAL)
        rc = stk__error(-errno, "fsync directory %s: %s", dir, strerror(errno));
    close(fd);
    return rc;
}

int stk_ckpt_save(const char *path, const stk_ckpt_section_t *sections, size_t n)
{
    if (!path || (!sections && n > 0))
        return stk__error(-EINVAL, "stk_ckpt_save: NULL argument");
    if (n > CK_MAX_SECTIONS)
        return stk__error(STK_ECONFIG, "checkpoint %s: %zu sections, at most %d", path, n, CK_MAX_SECTIONS);
    for (size_t i = 0; i < n; i++) {
        int rc = check_name(sections[i].name);
        if (rc)
            return rc;
        if (!sections[i].data && sections[i].len)
            return stk__error(-EINVAL, "checkpoint section '%s': NULL data", sections[i].name);
        for (size_t j = 0; j < i; j++)
            if (strcmp(sections[i].name, sections[j].name) == 0)
                return stk__error(STK_ECONFIG, "checkpoint section '%s' appears twice", sections[i].name);
    }

    size_t head_len = CK_HEADER + n * CK_ENTRY;
    unsigned char *head = calloc(1, head_len);
    if (!head)
        return stk__error(-ENOMEM, "checkpoint %s: out of memory", path);
    uint64_t off = align_up(head_len);
    for (size_t i = 0; i < n; i++) {
        unsigned char *e = head + CK_HEADER + i * CK_ENTRY;
        uint64_t len = sections[i].len;
        uint64_t sum = stk_ckpt_checksum(sections[i].data, sections[i].len);
        uint64_t zero = 0;
        memcpy(e, sections[i].name, strlen(sections[i].name));
        memcpy(e + 48, &off, 8);
        memcpy(e + 56, &len, 8);
        memcpy(e + 64, &sum, 8);
        memcpy(e + 72, &zero, 8);
        off = align_up(off + len);
    }
    uint64_t file_size = off;
    uint32_t version = STK_CKPT_VERSION, nsec = (uint32_t)n;
    uint64_t table_sum = stk_ckpt_checksum(head + CK_HEADER, n * CK_ENTRY);
    memcpy(head, CK_MAGIC, 8); /* includes the NUL */
    memcpy(head + 8, &version, 4);
    memcpy(head + 12, &nsec, 4);
    memcpy(head + 16, &file_size, 8);
    memcpy(head + 24, &table_sum, 8);
    uint64_t head_sum = stk_ckpt_checksum(head, 32);
    memcpy(head + 32, &head_sum, 8);

    char tmp[4096];
    int w = snprintf(tmp, sizeof tmp, "%s.tmp-%ld", path, (long)getpid());
    if (w < 0 || (size_t)w >= sizeof tmp) {
        free(head);
        return stk__error(-ENAMETOOLONG, "checkpoint path too long: %s", path);
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        free(head);
        return stk__error(-e, "create %s: %s", tmp, strerror(e));
    }
    int rc = write_all(fd, head, head_len, 0, tmp);
    free(head);
    off = align_up(head_len);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        rc = write_all(fd, sections[i].data, sections[i].len, off, tmp);
        off = align_up(off + sections[i].len);
    }
    /* The padding after the last section is part of file_size. */
    if (rc == 0 && ftruncate(fd, (off_t)file_size) != 0)
        rc = stk__error(-errno, "truncate %s: %s", tmp, strerror(errno));
    if (rc == 0)
        hook(STK__CKPT_WRITTEN, path);
    if (rc == 0 && fsync(fd) != 0)
        rc = stk__error(-errno, "fsync %s: %s", tmp, strerror(errno));
    if (close(fd) != 0 && rc == 0)
        rc = stk__error(-errno, "close %s: %s", tmp, strerror(errno));
    if (rc == 0)
        hook(STK__CKPT_SYNCED, path);
    if (rc == 0 && rename(tmp, path) != 0)
        rc = stk__error(-errno, "rename %s to %s: %s", tmp, path, strerror(errno));
    if (rc) {
        unlink(tmp);
        return rc;
    }
    hook(STK__CKPT_RENAMED, path);
    return fsync_parent(path);
}

/* ---- Reading ------------------------------------------------------------ */

struct stk_ckpt {
    char *path;
    unsigned char *buf;
    size_t size;
    size_t n;
    char (*names)[CK_NAME];
    uint64_t *offs, *lens;
};

void stk_ckpt_destroy(stk_ckpt_t **ck)
{
    if (!ck || !*ck)
        return;
    free((*ck)->path);
    free((*ck)->buf);
    free((*ck)->names);
    free((*ck)->offs);
    free((*ck)->lens);
    free(*ck);
    *ck = NULL;
}

static int read_file(const char *path, unsigned char **out, size_t *size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return stk__error(-errno, "open checkpoint %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return stk__error(-e, "stat %s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return stk__error(STK_EFORMAT, "checkpoint %s is not a regular file", path);
    }
    size_t len = (size_t)st.st_size;
    unsigned char *buf = malloc(len ? len : 1);
    if (!buf) {
        close(fd);
        return stk__error(-ENOMEM, "checkpoint %s: out of memory for %zu bytes", path, len);
    }
    size_t got = 0;
    while (got < len) {
        ssize_t r = pread(fd, buf + got, len - got, (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            free(buf);
            close(fd);
            return stk__error(-e, "read %s: %s", path, strerror(e));
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    *out = buf;
    *size = got;
    return 0;
}

int stk_ckpt_create(stk_ckpt_t **out, const char *path)
{
    if (!out || !path)
        return stk__error(-EINVAL, "stk_ckpt_create: NULL argument");
    *out = NULL;
    stk_ckpt_t *ck = calloc(1, sizeof *ck);
    if (!ck || !(ck->path = strdup(path))) {
        free(ck);
        return stk__error(-ENOMEM, "checkpoint %s: out of memory", path);
    }
    int rc = read_file(path, &ck->buf, &ck->size);
    if (rc)
        goto fail;
    const unsigned char *b = ck->buf;
    if (ck->size < 8 || memcmp(b, CK_MAGIC, 8) != 0) {
        rc = stk__error(STK_EFORMAT, "%s is not a Stoker checkpoint (bad magic)", path);
        goto fail;
    }
    if (ck->size < CK_HEADER) {
        rc = stk__error(STK_EDATA, "checkpoint %s is truncated: %zu bytes, header needs %d", path, ck->size,
                        CK_HEADER);
        goto fail;
    }
    uint32_t version, nsec;
    uint64_t file_size, table_sum, head_sum;
    memcpy(&version, b + 8, 4);
    memcpy(&nsec, b + 12, 4);
    memcpy(&file_size, b + 16, 8);
    memcpy(&table_sum, b + 24, 8);
    memcpy(&head_sum, b + 32, 8);
    if (stk_ckpt_checksum(b, 32) != head_sum) {
        rc = stk__error(STK_EDATA, "checkpoint %s: header checksum mismatch (corrupt header)", path);
        goto fail;
    }
    if (version != STK_CKPT_VERSION) {
        rc = stk__error(STK_EFORMAT, "checkpoint %s has format version %u; this build reads version %d", path,
                        version, STK_CKPT_VERSION);
        goto fail;
    }
    if (file_size != ck->size) {
        rc = stk__error(STK_EDATA, "checkpoint %s is %s: %zu bytes, header says %llu", path,
                        ck->size < file_size ? "truncated" : "longer than recorded", ck->size,
                        (unsigned long long)file_size);
        goto fail;
    }
    if (nsec > CK_MAX_SECTIONS || CK_HEADER + (uint64_t)nsec * CK_ENTRY > file_size) {
        rc = stk__error(STK_EDATA, "checkpoint %s: section table (%u sections) does not fit the file", path, nsec);
        goto fail;
    }
    if (stk_ckpt_checksum(b + CK_HEADER, (size_t)nsec * CK_ENTRY) != table_sum) {
        rc = stk__error(STK_EDATA, "checkpoint %s: section table checksum mismatch", path);
        goto fail;
    }
    ck->n = nsec;
    ck->names = calloc(nsec ? nsec : 1, CK_NAME);
    ck->offs = calloc(nsec ? nsec : 1, sizeof *ck->offs);
    ck->lens = calloc(nsec ? nsec : 1, sizeof *ck->lens);
    if (!ck->names || !ck->offs || !ck->lens) {
        rc = stk__error(-ENOMEM, "checkpoint %s: out of memory", path);
        goto fail;
    }
    for (uint32_t i = 0; i < nsec; i++) {
        const unsigned char *e = b + CK_HEADER + (size_t)i * CK_ENTRY;
        uint64_t off, len, sum;
        memcpy(ck->names[i], e, CK_NAME);
        memcpy(&off, e + 48, 8);
        memcpy(&len, e + 56, 8);
        memcpy(&sum, e + 64, 8);
        if (ck->names[i][CK_NAME - 1] != '\0' || ck->names[i][0] == '\0') {
            rc = stk__error(STK_EDATA, "checkpoint %s: section %u has a bad name", path, i);
            goto fail;
        }
        if (off > file_size || len > file_size - off) {
            rc = stk__error(STK_EDATA, "checkpoint %s: section '%s' (%llu bytes at %llu) lies outside the file", path,
                            ck->names[i], (unsigned long long)len, (unsigned long long)off);
            goto fail;
        }
        if (stk_ckpt_checksum(b + off, (size_t)len) != sum) {
            rc = stk__error(STK_EDATA, "checkpoint %s: section '%s' checksum mismatch (corrupt data)", path,
                            ck->names[i]);
            goto fail;
        }
        ck->offs[i] = off;
        ck->lens[i] = len;
    }
    *out = ck;
    return 0;
fail:
    stk_ckpt_destroy(&ck);
    return rc;
}

size_t stk_ckpt_num_sections(const stk_ckpt_t *ck)
{
    return ck ? ck->n : 0;
}

int stk_ckpt_section_at(const stk_ckpt_t *ck, size_t i, const char **name, const void **data, size_t *len)
{
    if (!ck)
        return stk__error(-EINVAL, "stk_ckpt_section_at: NULL checkpoint");
    if (i >= ck->n)
        return stk__error(-ERANGE, "checkpoint section %zu of %zu", i, ck->n);
    if (name)
        *name = ck->names[i];
    if (data)
        *data = ck->buf + ck->offs[i];
    if (len)
        *len = (size_t)ck->lens[i];
    return 0;
}

int stk_ckpt_find(const stk_ckpt_t *ck, const char *name, const void **data, size_t *len)
{
    if (!ck || !name)
        return stk__error(-EINVAL, "stk_ckpt_find: NULL argument");
    for (size_t i = 0; i < ck->n; i++)
        if (strcmp(ck->names[i], name) == 0)
            return stk_ckpt_section_at(ck, i, NULL, data, len);
    return stk__error(STK_ENOTFOUND, "checkpoint %s has no section '%s'", ck->path, name);
}

int stk_ckpt_read(const stk_ckpt_t *ck, const char *name, void *dst, size_t len)
{
    const void *data;
    size_t have;
    int rc = stk_ckpt_find(ck, name, &data, &have);
    if (rc)
        return rc;
    if (have != len)
        return stk__error(STK_ESHAPE, "checkpoint %s: section '%s' holds %zu bytes, expected %zu", ck->path, name,
                          have, len);
    if (len)
        memcpy(dst, data, len);
    return 0;
}

const char *stk_ckpt_path(const stk_ckpt_t *ck)
{
    return ck ? ck->path : "";
}

/* ---- Directories -------------------------------------------------------- */

static int valid_run(const char *run)
{
    size_t n = strlen(run);
    if (n == 0 || n > STK_CKPT_RUN_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = run[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'))
            return 0;
    }
    return 1;
}

/* One checkpoint file name taken apart: "ckpt-<12 digits>[-<run>].stkc"
 * followed by rest ("" for a checkpoint, ".tmp-<pid>" for a temporary). */
typedef struct ck_name {
    uint64_t step;
    char run[STK_CKPT_RUN_MAX + 1];
    const char *rest;
} ck_name_t;

static int parse_ckpt_name(const char *name, ck_name_t *out)
{
    if (strncmp(name, "ckpt-", 5) != 0)
        return 0;
    uint64_t s = 0;
    for (int i = 5; i < 17; i++) {
        if (name[i] < '0' || name[i] > '9')
            return 0;
        s = s * 10 + (uint64_t)(name[i] - '0');
    }
    const char *p = name + 17;
    out->run[0] = '\0';
    if (*p == '-') {
        const char *dot = strchr(p + 1, '.');
        size_t n = dot ? (size_t)(dot - p - 1) : 0;
        if (n == 0 || n > STK_CKPT_RUN_MAX)
            return 0;
        memcpy(out->run, p + 1, n);
        out->run[n] = '\0';
        if (!valid_run(out->run))
            return 0;
        p = dot;
    }
    if (strncmp(p, ".stkc", 5) != 0)
        return 0;
    out->step = s;
    out->rest = p + 5;
    return 1;
}

static int cmp_entry(const void *a, const void *b)
{
    const ck_name_t *x = a, *y = b;
    int c = strcmp(x->run, y->run);
    if (c)
        return c;
    return x->step < y->step ? -1 : x->step > y->step;
}

/* Collects the complete checkpoints in dir, sorted by run tag then step
 * ascending, and removes temporary files whose writer is gone when clean
 * is set. A missing dir holds none when missing_ok. */
static int scan_dir(const char *dir, ck_name_t **entries, size_t *count, int clean, int missing_ok)
{
    *entries = NULL;
    *count = 0;
    DIR *d = opendir(dir);
    if (!d) {
        if (missing_ok && errno == ENOENT)
            return 0;
        return stk__error(-errno, "open checkpoint directory %s: %s", dir, strerror(errno));
    }
    size_t n = 0, cap = 16;
    ck_name_t *v = malloc(cap * sizeof *v);
    if (!v) {
        closedir(d);
        return stk__error(-ENOMEM, "out of memory");
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        ck_name_t e;
        if (!parse_ckpt_name(de->d_name, &e))
            continue;
        if (e.rest[0] == '\0') {
            if (n == cap) {
                ck_name_t *nv = realloc(v, 2 * cap * sizeof *v);
                if (!nv) {
                    free(v);
                    closedir(d);
                    return stk__error(-ENOMEM, "out of memory");
                }
                v = nv;
                cap *= 2;
            }
            v[n++] = e;
        } else if (clean && strncmp(e.rest, ".tmp-", 5) == 0) {
            char *endp;
            long pid = strtol(e.rest + 5, &endp, 10);
            if (*endp == '\0' && pid > 0 && pid != (long)getpid() && kill((pid_t)pid, 0) != 0 && errno == ESRCH)
                unlinkat(dirfd(d), de->d_name, 0);
        }
    }
    closedir(d);
    qsort(v, n, sizeof *v, cmp_entry);
    *entries = v;
    *count = n;
    return 0;
}

static int ckpt_name(char *buf, size_t cap, const char *dir, const char *run, uint64_t step)
{
    int w = run && run[0] ? snprintf(buf, cap, "%s/ckpt-%012llu-%s.stkc", dir, (unsigned long long)step, run)
                          : snprintf(buf, cap, "%s/ckpt-%012llu.stkc", dir, (unsigned long long)step);
    if (w < 0 || (size_t)w >= cap)
        return stk__error(-ENAMETOOLONG, "checkpoint path too long in %s", dir);
    return 0;
}

int stk_ckpt_dir_save(const char *dir, const char *run, uint64_t step, const stk_ckpt_section_t *sections, size_t n,
                      unsigned keep_last, char *path_out, size_t cap)
{
    if (!dir)
        return stk__error(-EINVAL, "stk_ckpt_dir_save: NULL dir");
    if (run && !valid_run(run))
        return stk__error(STK_ECONFIG, "checkpoint run tag '%.40s' is not 1..%d characters of [0-9A-Za-z_]", run,
                          STK_CKPT_RUN_MAX);
    if (step > 999999999999ull)
        return stk__error(STK_ECONFIG, "checkpoint step %llu has more than 12 digits", (unsigned long long)step);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return stk__error(-errno, "create checkpoint directory %s: %s", dir, strerror(errno));
    char path[4096];
    int rc = ckpt_name(path, sizeof path, dir, run, step);
    if (rc)
        return rc;
    rc = stk_ckpt_save(path, sections, n);
    if (rc)
        return rc;
    if (path_out && cap > strlen(path))
        strcpy(path_out, path);
    hook(STK__CKPT_PRUNE, path);
    ck_name_t *v;
    size_t count;
    rc = scan_dir(dir, &v, &count, 1, 0);
    if (rc)
        return rc;
    /* This run's entries are one sorted stretch of v. */
    const char *tag = run ? run : "";
    size_t first = 0, mine = 0;
    while (first < count && strcmp(v[first].run, tag) != 0)
        first++;
    while (first + mine < count && strcmp(v[first + mine].run, tag) == 0)
        mine++;
    for (size_t i = 0; keep_last > 0 && i + keep_last < mine; i++) {
        char old[4096];
        if (ckpt_name(old, sizeof old, dir, tag, v[first + i].step) == 0 && unlink(old) != 0 && errno != ENOENT) {
            rc = stk__error(-errno, "remove old checkpoint %s: %s", old, strerror(errno));
            break;
        }
    }
    free(v);
    return rc;
}

int stk_ckpt_dir_latest(const char *dir, const char *run, char *path, size_t cap)
{
    if (!dir || !path)
        return stk__error(-EINVAL, "stk_ckpt_dir_latest: NULL argument");
    ck_name_t *v;
    size_t count;
    int rc = scan_dir(dir, &v, &count, 0, 0);
    if (rc)
        return rc;
    const ck_name_t *best = NULL;
    for (size_t i = 0; i < count; i++) {
        if (run && strcmp(v[i].run, run) != 0)
            continue;
        if (!run && best && strcmp(best->run, v[i].run) != 0) {
            char names[256];
            size_t used = 0;
            names[0] = '\0';
            for (size_t j = 0; j < count; j++)
                if (j == 0 || strcmp(v[j].run, v[j - 1].run) != 0) {
                    int w = snprintf(names + used, sizeof names - used, "%s'%s'", used ? ", " : "",
                                     v[j].run[0] ? v[j].run : "(untagged)");
                    if (w < 0 || (size_t)w >= sizeof names - used)
                        break;
                    used += (size_t)w;
                }
            free(v);
            return stk__error(STK_ESTATE, "%s holds checkpoints of more than one run (%s): name the run or a file",
                              dir, names);
        }
        best = &v[i]; /* ascending steps within a run */
    }
    if (!best) {
        free(v);
        if (run)
            return stk__error(STK_ENOTFOUND, "no checkpoint of run '%s' (ckpt-*-%s.stkc) in %s", run, run, dir);
        return stk__error(STK_ENOTFOUND, "no checkpoint (ckpt-*.stkc) in %s", dir);
    }
    rc = ckpt_name(path, cap, dir, best->run, best->step);
    free(v);
    /* The name fits in no buffer of the caller's size: say so as every
     * call with a caller's buffer does. */
    return rc == -ENAMETOOLONG ? stk__error(-ENOSPC, "%s: the newest checkpoint's path needs more than %zu bytes", dir, cap)
                               : rc;
}

int stk_ckpt_dir_runs(const char *dir, char (*runs)[STK_CKPT_RUN_MAX + 1], size_t n, size_t *count)
{
    if (!dir || (!runs && n))
        return stk__error(-EINVAL, "stk_ckpt_dir_runs: NULL argument");
    ck_name_t *v;
    size_t total;
    int rc = scan_dir(dir, &v, &total, 0, 1);
    if (rc)
        return rc;
    size_t k = 0;
    for (size_t i = 0; i < total; i++) {
        if (i > 0 && strcmp(v[i].run, v[i - 1].run) == 0)
            continue;
        if (k < n)
            strcpy(runs[k], v[i].run);
        k++;
    }
    free(v);
    if (count)
        *count = k;
    return 0;
}
