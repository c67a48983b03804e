/* SPDX-License-Identifier: MIT */
/* The built-in dataset over a shard set: each worker opens the set itself,
 * reads a batch's records through the reader (one io_uring submission, or
 * pread) and decodes each record as its read completes. */
#define _GNU_SOURCE
#include "loader_internal.h"
#include "shard_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct shard_args {
    int32_t io;          /* resolved: STK_IO_URING, STK_IO_PREAD or STK_IO_MMAP */
    uint32_t max_batch;
    int32_t auto_mmap;   /* STK_IO_AUTO: map the set when all its records are raw */
    int32_t verify;      /* stk_verify_t */
    int32_t cold_io;     /* STK_IO_MMAP: how the first batch is read (URING or PREAD) */
    int32_t pad;
    uint64_t set_off;    /* the set as checked by the creating process */
    uint64_t set_len;    /* (stk__shardset_export), 8-aligned after path */
    char path[];
} shard_args_t;

typedef struct shard_inst {
    stk_shardset_t *set;
    stk_decoder_t *dec;
    stk__reader_t *reader;
    stk_io_mode_t io;
    uint32_t max_batch;
    size_t max_stored, max_raw;
    unsigned char *stored;     /* grown to the largest batch read, registered */
    size_t stored_cap;
    unsigned char *raw;        /* one decoded record */
    stk_record_loc_t *locs;
    stk__read_req_t *reqs;
    /* batch in progress */
    stk_dataset_sink_fn sink;
    void *sink_ctx;
    stk_dataset_stats_t *st;
    uint64_t sink_ns, decode_ns;
    size_t base;               /* position of this chunk in the batch */
    unsigned char **maps;      /* STK_IO_MMAP: each shard mapped whole */
    size_t *map_len;
    uint32_t cold_batches;     /* STK_IO_MMAP: batches still to read with cold_io */
    stk_io_mode_t cold_io;
    /* STK_IO_MMAP over dense shards (stk__shardset_dense), every one of
     * the same record size: a verified record's bytes are at
     * dense_at[shard] + (index - dense_first[shard]) * dense_size. */
    int dense;                 /* 0: not looked at yet, 1: usable, -1: not */
    uint32_t dense_n;
    uint64_t dense_stride, dense_size;
    const unsigned char **dense_at;
    uint64_t *dense_first;
} shard_inst_t;

static void shard_close(void *p)
{
    shard_inst_t *s = p;
    if (!s)
        return;
    stk__reader_destroy(&s->reader);
    if (s->maps) {
        for (uint32_t i = 0; i < stk_shardset_num_shards(s->set); i++)
            if (s->maps[i])
                munmap(s->maps[i], s->map_len[i]);
        free(s->maps);
        free(s->map_len);
    }
    stk_decoder_destroy(&s->dec);
    stk_shardset_destroy(&s->set);
    free(s->dense_at);
    free(s->dense_first);
    free(s->stored);
    free(s->raw);
    free(s->locs);
    free(s->reqs);
    free(s);
}

/* The STK_IO_AUTO rule: a set whose shards were all packed raw (level 0)
 * is read through a mapping. Raw records need no decode buffer, so from
 * the page cache a mapping costs no system call and no copy per record
 * (the checksum and the augment read the cached pages in place), where
 * io_uring or pread pay about 1 us of kernel time per small record plus a
 * copy into a bounce buffer. Compressed sets keep io_uring: they need a
 * buffer to decompress from anyway and gain from batched, asynchronous
 * reads when the data is not cached. Every process opening the same set
 * decides the same way, so the creating process reports the workers' mode. */
static int set_is_raw(const stk_shardset_t *set)
{
    for (uint32_t i = 0; i < stk_shardset_num_shards(set); i++) {
        stk_shard_info_t info;
        if (stk_shardset_shard_info(set, i, &info) != 0 || info.zstd_level != 0)
            return 0;
    }
    return stk_shardset_max_stored(set) == stk_shardset_max_raw(set);
}

/* STK_IO_AUTO for compressed sets: where the set already lies in the
 * page cache (read in an earlier epoch or run: the usual case for a
 * data set that fits in memory), decompressing straight from a mapping
 * beats io_uring, whose ~1.5 us of kernel time per small record buys
 * nothing when no read waits on a disk (Fashion-MNIST at level 3: 420k
 * against 245k records/s, one process). A set mostly not cached keeps
 * io_uring: a disk needs its batched asynchronous reads, where a mapping
 * would fault one page at a time. The creating process checks (mincore)
 * and tells the workers. */
static int set_is_cached(const stk_shardset_t *set)
{
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    long phys = sysconf(_SC_PHYS_PAGES);
    uint64_t total = 0, resident = 0;
    uint32_t n = stk_shardset_num_shards(set);
    for (uint32_t i = 0; i < n; i++) {
        stk_shard_info_t info;
        if (stk_shardset_shard_info(set, i, &info) != 0)
            return 0;
        total += (info.file_bytes + page - 1) / page;
    }
    if (phys > 0 && total > (uint64_t)phys / 2)
        return 0; /* cannot be all cached; not worth looking */
    unsigned char vec[4096];
    for (uint32_t i = 0; i < n; i++) {
        stk_shard_info_t info;
        stk_record_loc_t loc;
        if (stk_shardset_shard_info(set, i, &info) != 0)
            return 0;
        if (info.records == 0)
            continue;
        if (stk_shardset_locate(set, info.first_index, &loc) != 0)
            return 0;
        size_t size = (size_t)info.file_bytes;
        unsigned char *m = mmap(NULL, size, PROT_READ, MAP_SHARED, loc.fd, 0);
        if (m == MAP_FAILED)
            return 0;
        for (size_t off = 0; off < size; off += sizeof vec * page) {
            size_t len = size - off < sizeof vec * page ? size - off : sizeof vec * page;
            if (mincore(m + off, len, vec) != 0)
                break;
            for (size_t k = 0; k < (len + page - 1) / page; k++)
                resident += vec[k] & 1;
        }
        munmap(m, size);
    }
    /* Nearly all, not all: proactive reclaim (DAMON here) takes a few
     * percent of a set's pages between two epochs; those fault back in
     * once, which a mapping pays less for than io_uring pays every read. */
    return resident * 10 >= total * 9;
}

static int shard_open(const void *args, size_t len, uint32_t worker, void **out)
{
    const shard_args_t *a = args;
    int rc;
    (void)worker;
    if (len < sizeof *a + 1 || a->set_off < sizeof *a + 1 || a->set_off > len ||
        a->set_len > len - a->set_off || memchr(a->path, '\0', a->set_off - sizeof *a) == NULL)
        return stk__error(STK_EDATA, "shard dataset: malformed argument blob");
    shard_inst_t *s = calloc(1, sizeof *s);
    if (!s)
        return stk__error(-ENOMEM, "shard dataset: out of memory");
    s->io = (stk_io_mode_t)a->io;
    s->cold_io = a->cold_io == STK_IO_URING ? STK_IO_URING : STK_IO_PREAD;
    s->max_batch = a->max_batch ? a->max_batch : 1;
    /* Reopen the files, not reread and recheck every index: the creating
     * process did that and the index lies in the shared blob. */
    rc = stk__shardset_import(&s->set, (const unsigned char *)args + a->set_off, a->set_len);
    if (rc)
        goto fail;
    rc = stk_decoder_create(&s->dec, s->set);
    if (rc == 0)
        rc = stk_decoder_set_verify(s->dec, (stk_verify_t)a->verify);
    if (rc)
        goto fail;
    s->max_stored = stk_shardset_max_stored(s->set);
    s->max_raw = stk_shardset_max_raw(s->set);
    if (a->auto_mmap && set_is_raw(s->set))
        s->io = STK_IO_MMAP;
    *out = s;
    return 0;
fail:
    shard_close(s);
    return rc;
}

/* Buffers and ring come with the first read: the creating process mostly
 * answers len and schema only. */
static int shard_buffers(shard_inst_t *s)
{
    int rc;
    if (s->reader || (s->maps && !s->cold_batches))
        return 0;
    if (s->io == STK_IO_MMAP && !s->maps) {
        uint32_t n = stk_shardset_num_shards(s->set);
        s->maps = calloc(n, sizeof *s->maps);
        s->map_len = calloc(n, sizeof *s->map_len);
        if (!s->maps || !s->map_len)
            return stk__error(-ENOMEM, "shard dataset: out of memory");
        /* A worker's first batch maps its records' pages for the first
         * time: each such fault maps 16 cached pages around it, about 8 us
         * here, 2 ms for a batch of 256 random records, 4x what reading
         * them costs. Reads take the first batch, which is all the time to
         * first batch waits for; the mapping warms from the second on.
         * io_uring where allowed: pages reclaimed since the set was last
         * read (this VM's proactive reclaim takes a few percent a minute)
         * then come from the disk in parallel, not one pread at a time. */
        s->cold_batches = 1;
    }
    rc = stk__reader_create(&s->reader, s->io == STK_IO_MMAP ? s->cold_io : s->io,
                            s->max_batch);
    if (rc)
        return rc;
    if (!s->raw)
        s->raw = malloc(s->max_raw ? s->max_raw : 1);
    if (!s->locs)
        s->locs = calloc(s->max_batch, sizeof *s->locs);
    if (!s->reqs)
        s->reqs = calloc(s->max_batch, sizeof *s->reqs);
    if (!s->raw || !s->locs || !s->reqs) {
        stk__reader_destroy(&s->reader);
        return stk__error(-ENOMEM, "shard dataset: buffers for %u records", s->max_batch);
    }
    return 0;
}

/* Room for `need` stored bytes: sized by what batches really read, not
 * max_batch times the largest record (which, pinned for fixed-buffer
 * reads, would cost time and RSS up front). */
static int shard_room(shard_inst_t *s, size_t need)
{
    if (need <= s->stored_cap)
        return 0;
    size_t cap = need + need / 4;
    unsigned char *b = malloc(cap);
    if (!b)
        return stk__error(-ENOMEM, "shard dataset: read buffer of %zu bytes", cap);
    free(s->stored);
    s->stored = b;
    s->stored_cap = cap;
    if (s->reader)
        stk__reader_register(s->reader, b, cap);
    return 0;
}

static uint64_t shard_len(void *p)
{
    return stk_shardset_len(((shard_inst_t *)p)->set);
}

static int shard_schema(void *p, stk_schema_t *out)
{
    *out = *stk_shardset_schema(((shard_inst_t *)p)->set);
    return 0;
}

static size_t shard_max_sample(void *p)
{
    return ((shard_inst_t *)p)->max_raw;
}

static uint64_t shard_fds(void *p)
{
    return stk_shardset_num_shards(((shard_inst_t *)p)->set) + 2;
}

static const unsigned char *shard_map(shard_inst_t *s, const stk_record_loc_t *loc);

static int shard_get(void *p, uint64_t index, void *buf, size_t cap, stk_record_t *rec,
                     stk_dataset_stats_t *st)
{
    shard_inst_t *s = p;
    stk_record_loc_t loc;
    uint64_t t0 = stk__now_ns();
    int rc = shard_buffers(s);
    if (rc)
        return rc;
    const unsigned char *stored = s->stored;
    if (s->maps) {
        rc = stk_shardset_locate(s->set, index, &loc);
        if (rc == 0 && !(stored = shard_map(s, &loc)))
            rc = stk__error(STK_EDATA, "%s: record %llu: cannot map it",
                            stk_shardset_shard_path(s->set, loc.shard),
                            (unsigned long long)loc.local_index);
    } else {
        rc = shard_room(s, s->max_stored ? s->max_stored : 1);
        if (rc == 0)
            rc = stk_shardset_read_raw(s->set, index, s->stored, s->max_stored, &loc);
    }
    uint64_t t1 = stk__now_ns();
    if (rc == 0) {
        uint64_t checked = stk__decoder_checked(s->dec);
        st->read.ns += t1 - t0;
        st->read.bytes += loc.stored_len;
        rc = stk_decoder_decode(s->dec, &loc, stored, buf, cap, rec);
        st->checked += stk__decoder_checked(s->dec) - checked;
        st->decode.ns += stk__now_ns() - t1;
        st->decode.bytes += loc.raw_len;
    }
    return rc;
}

static int shard_done(void *ctx, size_t i, int res)
{
    shard_inst_t *s = ctx;
    stk_record_t rec;
    if (res < 0) {
        stk__error(res, "%s: record %llu: read failed",
                   stk_shardset_shard_path(s->set, s->locs[i].shard),
                   (unsigned long long)s->locs[i].local_index);
        return s->sink(s->sink_ctx, s->base + i, res, NULL);
    }
    uint64_t t0 = stk__ticks();
    /* Records stored raw are "decoded" in place: checksum, no copy. */
    const stk_record_loc_t *loc = &s->locs[i];
    void *out = loc->stored_len == loc->raw_len ? s->reqs[i].buf : s->raw;
    size_t cap = loc->stored_len == loc->raw_len ? loc->raw_len : s->max_raw;
    int rc = stk_decoder_decode(s->dec, loc, s->reqs[i].buf, out, cap, &rec);
    uint64_t t1 = stk__ticks();
    s->decode_ns += t1 - t0;
    if (rc == 0)
        s->st->decode.bytes += s->locs[i].raw_len;
    rc = s->sink(s->sink_ctx, s->base + i, rc, rc ? NULL : &rec);
    s->sink_ns += stk__ticks() - t1;
    return rc;
}

static const unsigned char *shard_map(shard_inst_t *s, const stk_record_loc_t *loc)
{
    if (!s->maps[loc->shard]) {
        struct stat stt;
        if (fstat(loc->fd, &stt) != 0)
            return NULL;
        void *p = mmap(NULL, (size_t)stt.st_size, PROT_READ, MAP_SHARED, loc->fd, 0);
        if (p == MAP_FAILED)
            return NULL;
#ifdef MADV_HUGEPAGE
        /* Pages that fault in through this mapping (a set not cached, or
         * parts reclaimed since) come in 2 MiB folios, mapped as huge
         * pages, as stoker-pack leaves a fresh set: one TLB entry for
         * 2 MiB of records that a random order reads one per 4 KiB page.
         * Only advice: where the kernel has no file THP, nothing changes. */
        madvise(p, (size_t)stt.st_size, MADV_HUGEPAGE);
#endif
        s->maps[loc->shard] = p;
        s->map_len[loc->shard] = (size_t)stt.st_size;
    }
    if (loc->offset + loc->stored_len > s->map_len[loc->shard])
        return NULL;
    return s->maps[loc->shard] + loc->offset;
}

/* Asks for the first bytes of a mapped record ahead of its use: records
 * of a random batch lie in random pages, and without this every one
 * stalls on memory (and the TLB) in turn when the checksum first reads it. */
static void prefetch_record(const unsigned char *p, size_t len)
{
    size_t n = len < 2048 ? len : 2048;
    for (size_t o = 0; o < n; o += 64)
        __builtin_prefetch(p + o, 0, 0);
}

/* STK_IO_MMAP: records come straight from the page cache; raw records
 * are checksummed where they lie and handed over without a copy. Up to
 * max_batch records at a time, as a pipeline: a record's index entry is
 * prefetched 2*AHEAD places before its turn, the record located and its
 * bytes prefetched AHEAD places before. A random order makes each of these
 * a cache miss; taken in turn, each would stall. Stage times come from
 * every 8th record (decode, then sink), scaled to all; read is the rest:
 * a clock read costs ~12 ns here, and timing every record was 5-11% of a
 * raw batch's perf profile. */
/* Locates record i of the chunk, maps it and asks for its bytes; *p is
 * its mapping, NULL where it does not map. */
static int look_ahead(shard_inst_t *s, const uint64_t *indices, size_t i,
                      const unsigned char **p)
{
    int rc = stk_shardset_locate(s->set, indices[i], &s->locs[i]);
    if (rc)
        return rc;
    *p = shard_map(s, &s->locs[i]);
    if (*p)
        prefetch_record(*p, s->locs[i].stored_len);
    return 0;
}

static int shard_get_mapped_chunk(shard_inst_t *s, const uint64_t *indices, size_t n,
                                  stk_dataset_stats_t *st)
{
    enum { AHEAD = 8, EVERY = 8 };
    uint64_t dec = 0, snk = 0, timed = 0, t0 = stk__ticks();
    const unsigned char *ptr[AHEAD] = {0};
    /* A steady trickle of misses the memory system overlaps: asking for
     * all index entries first queued them behind each other. */
    for (size_t i = 0; i < 2 * AHEAD && i < n; i++)
        stk__shardset_prefetch(s->set, indices[i]);
    for (size_t i = 0; i < AHEAD && i < n; i++) {
        int rc = look_ahead(s, indices, i, &ptr[i]);
        if (rc)
            return rc;
    }
    for (size_t j = 0; j < n; j++) {
        /* ptr[j % AHEAD] holds record j's mapping (NULL when it does not
         * map); it was looked up AHEAD records before it is handled. */
        const stk_record_loc_t *loc = &s->locs[j];
        const unsigned char *p = ptr[j % AHEAD];
        stk_record_t rec;
        int rc = 0;
        if (!p)
            rc = stk__error(STK_EDATA, "%s: record %llu: cannot map %llu bytes at %llu",
                            stk_shardset_shard_path(s->set, loc->shard),
                            (unsigned long long)loc->local_index,
                            (unsigned long long)loc->stored_len, (unsigned long long)loc->offset);
        if (j + 2 * AHEAD < n)
            stk__shardset_prefetch(s->set, indices[j + 2 * AHEAD]);
        if (j + AHEAD < n) {
            int lrc = look_ahead(s, indices, j + AHEAD, &ptr[j % AHEAD]);
            if (lrc)
                return lrc;
        }
        int timing = j % EVERY == 0;
        uint64_t t1 = timing ? stk__ticks() : 0;
        if (rc == 0) {
            /* out == stored: the decoder only reads (checksum, parse). */
            int raw = loc->stored_len == loc->raw_len;
            rc = stk_decoder_decode(s->dec, loc, p, raw ? (void *)(uintptr_t)p : s->raw,
                                    raw ? loc->raw_len : s->max_raw, &rec);
        }
        uint64_t t2 = timing ? stk__ticks() : 0;
        st->read.bytes += loc->stored_len;
        if (rc == 0)
            st->decode.bytes += loc->raw_len;
        rc = s->sink(s->sink_ctx, s->base + j, rc, rc ? NULL : &rec);
        if (rc)
            return rc;
        if (timing) {
            dec += t2 - t1;
            snk += stk__ticks() - t2;
            timed++;
        }
    }
    uint64_t total = stk__ticks() - t0;
    double tick = stk__ns_per_tick(), scale = timed ? (double)n / (double)timed : 0;
    double d = (double)dec * scale, k = (double)snk * scale, all = (double)total;
    st->decode.ns += (uint64_t)(d * tick);
    st->read.ns += (uint64_t)((all > d + k ? all - d - k : 0) * tick);
    return 0;
}

/* Whether the dense path can take this set: every non-empty shard dense,
 * mapped, with records of one size; equal shards (so that a record's
 * shard is a division); a fixed layout; and verify-once (under
 * STK_VERIFY_ALWAYS every record is hashed, which reads it anyway).
 * Maps the shards not mapped yet. */
static int dense_usable(shard_inst_t *s)
{
    uint32_t n = stk_shardset_num_shards(s->set);
    if (!stk__decoder_verified(s->dec) || !stk__shardset_stride(s->set) ||
        !stk__decoder_fixed(s->dec, NULL, NULL))
        return -1;
    s->dense_at = calloc(n, sizeof *s->dense_at);
    s->dense_first = calloc(n, sizeof *s->dense_first);
    if (!s->dense_at || !s->dense_first)
        return -1; /* the general path works without them */
    for (uint32_t i = 0; i < n; i++) {
        stk__dense_shard_t d;
        int dense = stk__shardset_dense(s->set, i, &d);
        if (d.nrec == 0)
            continue;
        if (!dense || (s->dense_size && d.size != s->dense_size))
            return -1;
        s->dense_size = d.size;
        stk_record_loc_t loc = {.shard = i, .fd = d.fd, .offset = d.base,
                                .stored_len = d.nrec * d.size};
        const unsigned char *m = shard_map(s, &loc);
        if (!m)
            return -1; /* the general path names the record it cannot map */
        s->dense_at[i] = m;
        s->dense_first[i] = d.first;
    }
    if (!s->dense_size)
        return -1;
    s->dense_n = n;
    s->dense_stride = stk__shardset_stride(s->set);
    return 1;
}

static inline const unsigned char *dense_ptr(const shard_inst_t *s, uint64_t index)
{
    uint64_t sh = s->dense_n == 1 ? 0 : index / s->dense_stride;
    if (sh >= s->dense_n)
        sh = s->dense_n - 1;
    return s->dense_at[sh] + (index - s->dense_first[sh]) * s->dense_size;
}

/* The mapped path for dense sets: no index entry is read for a record
 * already verified, so the only cache misses left are the record's own
 * bytes (prefetched AHEAD records before their turn). A record not yet
 * verified (the first epoch) takes the locate and checksum of the general
 * path. Raw Fashion-MNIST: locating each record was 15% of a worker's
 * profile, and its index entry one more miss per record. */
static int shard_get_dense_chunk(shard_inst_t *s, const uint64_t *indices, size_t n,
                                 stk_dataset_stats_t *st)
{
    enum { AHEAD = 8, EVERY = 8 };
    const uint64_t *ok = stk__decoder_verified(s->dec);
    const uint64_t total = stk_shardset_len(s->set);
    uint64_t snk = 0, timed = 0, t0 = stk__ticks();
    /* ptr[j % AHEAD]: record j's bytes, worked out (a division where the
     * set has several shards) once, when they are prefetched. */
    const unsigned char *ptr[AHEAD] = {0};
#define VERIFIED(gi) \
    ((gi) < total && (__atomic_load_n(&ok[(gi) / 64], __ATOMIC_RELAXED) >> ((gi) % 64) & 1))
    for (size_t i = 0; i < AHEAD && i < n; i++)
        if (indices[i] < total) {
            ptr[i] = dense_ptr(s, indices[i]);
            prefetch_record(ptr[i], s->dense_size);
        }
    for (size_t i = 0; i < 2 * AHEAD && i < n; i++)
        if (!VERIFIED(indices[i]))
            stk__shardset_prefetch(s->set, indices[i]);
    for (size_t j = 0; j < n; j++) {
        uint64_t gi = indices[j];
        const unsigned char *p = ptr[j % AHEAD];
        if (j + AHEAD < n && indices[j + AHEAD] < total) {
            ptr[j % AHEAD] = dense_ptr(s, indices[j + AHEAD]);
            prefetch_record(ptr[j % AHEAD], s->dense_size);
        }
        if (j + 2 * AHEAD < n && !VERIFIED(indices[j + 2 * AHEAD]))
            stk__shardset_prefetch(s->set, indices[j + 2 * AHEAD]);
        stk_record_t rec;
        int rc;
        if (VERIFIED(gi)) {
            stk__decoder_fixed(s->dec, p, &rec);
            rc = 0;
        } else {
            /* Verifies it (or says what is wrong with it, or that gi is
             * out of range: then p is not used). */
            stk_record_loc_t *loc = &s->locs[j];
            rc = stk_shardset_locate(s->set, gi, loc);
            if (rc == 0)
                rc = stk_decoder_decode(s->dec, loc, p, (void *)(uintptr_t)p, loc->raw_len, &rec);
        }
        st->read.bytes += s->dense_size;
        if (rc == 0)
            st->decode.bytes += s->dense_size;
        int timing = j % EVERY == 0;
        uint64_t t1 = timing ? stk__ticks() : 0;
        rc = s->sink(s->sink_ctx, s->base + j, rc, rc ? NULL : &rec);
        if (rc)
            return rc;
        if (timing) {
            snk += stk__ticks() - t1;
            timed++;
        }
    }
#undef VERIFIED
    /* What is not the sink's is reading: there is no decode left. */
    double k = timed ? (double)snk * (double)n / (double)timed : 0;
    double all = (double)(stk__ticks() - t0);
    st->read.ns += (uint64_t)((all > k ? all - k : 0) * stk__ns_per_tick());
    return 0;
}

/* Reads up to max_batch records in one reader run. */
static int shard_get_chunk(shard_inst_t *s, const uint64_t *indices, size_t n, stk_dataset_stats_t *st)
{
    int rc;
    size_t off = 0;
    uint64_t t0 = stk__ticks();
    for (size_t i = 0; i < n; i++) {
        rc = stk_shardset_locate(s->set, indices[i], &s->locs[i]);
        if (rc)
            return rc;
        off += s->locs[i].stored_len;
    }
    rc = shard_room(s, off ? off : 1);
    if (rc)
        return rc;
    off = 0;
    for (size_t i = 0; i < n; i++) {
        s->reqs[i].fd = s->locs[i].fd;
        s->reqs[i].offset = s->locs[i].offset;
        s->reqs[i].len = s->locs[i].stored_len;
        s->reqs[i].buf = s->stored + off;
        off += s->locs[i].stored_len;
        st->read.bytes += s->locs[i].stored_len;
    }
    s->sink_ns = s->decode_ns = 0;
    rc = stk__reader_run(s->reader, s->reqs, n, shard_done, s);
    uint64_t total = stk__ticks() - t0;
    double tick = stk__ns_per_tick();
    uint64_t other = s->decode_ns + s->sink_ns;
    st->decode.ns += (uint64_t)((double)s->decode_ns * tick);
    st->read.ns += (uint64_t)((double)(total > other ? total - other : 0) * tick);
    return rc;
}

static int shard_get_batch_chunks(shard_inst_t *s, const uint64_t *indices, size_t n,
                                  stk_dataset_stats_t *st);

static int shard_get_batch(void *p, const uint64_t *indices, size_t n, stk_dataset_sink_fn sink,
                           void *sink_ctx, stk_dataset_stats_t *st)
{
    shard_inst_t *s = p;
    uint64_t checked = stk__decoder_checked(s->dec);
    int rc = shard_buffers(s);
    if (rc)
        return rc;
    s->sink = sink;
    s->sink_ctx = sink_ctx;
    s->st = st;
    rc = shard_get_batch_chunks(s, indices, n, st);
    st->checked += stk__decoder_checked(s->dec) - checked;
    return rc;
}

static int shard_get_batch_chunks(shard_inst_t *s, const uint64_t *indices, size_t n,
                                  stk_dataset_stats_t *st)
{
    int rc;
    for (size_t b = 0; b < n; b += s->max_batch) {
        size_t k = n - b < s->max_batch ? n - b : s->max_batch;
        s->base = b;
        if (s->maps && !s->cold_batches && !s->dense)
            s->dense = dense_usable(s);
        if (s->maps && !s->cold_batches)
            rc = s->dense > 0 ? shard_get_dense_chunk(s, indices + b, k, st)
                              : shard_get_mapped_chunk(s, indices + b, k, st);
        else
            rc = shard_get_chunk(s, indices + b, k, st);
        if (rc)
            return rc;
    }
    if (s->cold_batches && --s->cold_batches == 0) {
        /* Warm from now on: the ring and its buffer (a batch of stored
         * records, 9.6 MB for 64 images of 3x224x224) would only hold RSS. */
        stk__reader_destroy(&s->reader);
        free(s->stored);
        s->stored = NULL;
        s->stored_cap = 0;
    }
    return 0;
}

/* The verify-once bitmap, shared by all instances of a loader: a record
 * one worker verified, no other hashes again. With a bitmap per worker,
 * n workers over e epochs hashed each record up to min(n, e) times (each
 * worker meets most records sooner or later): 15 workers, 10 epochs of
 * raw 28x28 records, most of the data set hashed ten times over. */
static size_t shard_shared_bytes(void *p)
{
    return stk__decoder_verified_bytes(((shard_inst_t *)p)->dec);
}

static void shard_attach_shared(void *p, void *mem, size_t bytes)
{
    shard_inst_t *s = p;
    if (mem && bytes < stk__decoder_verified_bytes(s->dec))
        return; /* not the size we asked for: keep our own */
    stk__decoder_share_verified(s->dec, mem);
}

static const stk_dataset_ops_t shard_ops = {
    .name = "shard",
    .open = shard_open,
    .close = shard_close,
    .len = shard_len,
    .schema = shard_schema,
    .max_sample_bytes = shard_max_sample,
    .get = shard_get,
    .get_batch = shard_get_batch,
    .open_fds = shard_fds,
    .shared_bytes = shard_shared_bytes,
    .attach_shared = shard_attach_shared,
};

void stk_dataset_shard_config_default(stk_dataset_shard_config_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->io = STK_IO_AUTO;
    cfg->max_batch = 1024;
    cfg->verify = STK_VERIFY_ONCE;
}

int stk_dataset_shard_create(stk_dataset_t **out, const char *path,
                             const stk_dataset_shard_config_t *cfg)
{
    stk_dataset_shard_config_t def;
    if (!out || !path)
        return stk__error(-EINVAL, "stk_dataset_shard_create: NULL argument");
    *out = NULL;
    if (!cfg) {
        stk_dataset_shard_config_default(&def);
        cfg = &def;
    }
    if (cfg->io != STK_IO_AUTO && cfg->io != STK_IO_URING && cfg->io != STK_IO_PREAD &&
        cfg->io != STK_IO_MMAP)
        return stk__error(STK_ECONFIG, "shard dataset: io mode %d unknown", (int)cfg->io);
    if (cfg->verify != STK_VERIFY_ONCE && cfg->verify != STK_VERIFY_ALWAYS)
        return stk__error(STK_ECONFIG, "shard dataset: verify mode %d unknown", (int)cfg->verify);
    stk_io_mode_t io;
    int rc = stk__io_resolve(cfg->io, &io);
    if (rc)
        return rc;
    stk_shardset_t *set = NULL;
    rc = stk_shardset_create(&set, path);
    if (rc)
        return rc;
    size_t plen = strlen(path);
    size_t set_off = (sizeof(shard_args_t) + plen + 1 + 7) & ~(size_t)7;
    size_t set_len = stk__shardset_export_size(set);
    size_t len = set_off + set_len;
    shard_args_t *a = calloc(1, len);
    if (!a) {
        stk_shardset_destroy(&set);
        return stk__error(-ENOMEM, "shard dataset: out of memory");
    }
    a->cold_io = (int32_t)io; /* URING or PREAD as probed, before the mapping rules */
    if (cfg->io == STK_IO_AUTO && !set_is_raw(set) && set_is_cached(set))
        io = STK_IO_MMAP;
    a->io = (int32_t)io;
    a->auto_mmap = cfg->io == STK_IO_AUTO;
    a->verify = (int32_t)cfg->verify;
    a->max_batch = cfg->max_batch ? cfg->max_batch : 1024;
    a->set_off = set_off;
    a->set_len = set_len;
    memcpy(a->path, path, plen + 1);
    stk__shardset_export(set, (unsigned char *)a + set_off);
    stk_shardset_destroy(&set);
    rc = stk_dataset_create(out, &shard_ops, a, len);
    free(a);
    if (rc == 0)
        (*out)->io = ((shard_inst_t *)(*out)->inst)->io;
    return rc;
}
