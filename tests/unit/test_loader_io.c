/* SPDX-License-Identifier: MIT */
/* loader/, shards and reads: the I/O mode's resolution (io_uring, pread,
 * auto), the shard dataset through workers (corrupt records named and
 * skipped), the set a dataset exports to its workers, checksums verified
 * once per loader, and STK_IO_AUTO reading or mapping a set by what of it
 * is cached. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <dirent.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "../../loader/loader_internal.h"
#include "../../loader/shard_internal.h"
#include "loader_fixture.h"

#if STK_HAVE_IO_URING
#include <liburing.h>
#endif
#include <sys/vfs.h>

/* Whether this process may make an io_uring, asked of the kernel
 * directly: what STK_IO_AUTO must pick when nothing turns it off. Where
 * it may not (a seccomp profile, kernel.io_uring_disabled), the io_uring
 * read path cannot run here: the tests say so on stderr, and
 * STK_REQUIRE_IO_URING=1 makes that a failure (for CI machines that have
 * it). */
static int uring_allowed(void)
{
    int ok = 0;
#if STK_HAVE_IO_URING
    struct io_uring r;
    ok = io_uring_queue_init(8, &r, 0) == 0;
    if (ok)
        io_uring_queue_exit(&r);
#endif
    if (!ok) {
        const char *req = getenv("STK_REQUIRE_IO_URING");
        if (req && strcmp(req, "1") == 0)
            fail_msg("STK_REQUIRE_IO_URING=1 but io_uring %s", STK_HAVE_IO_URING ?
                     "is refused in this process" : "is not built in");
        fprintf(stderr, "note: io_uring %s here: its read path is not run (the pread "
                "fallback is)\n", STK_HAVE_IO_URING ? "is refused" : "is not built in");
    }
    return ok;
}

static int warnings;

static void count_warning(stk_log_level_t level, const char *msg, void *user)
{
    (void)level;
    warnings++;
    keep_log(level, msg, user);
}

/* Modes resolve as asked; STK_IO_AUTO to io_uring exactly where the
 * kernel allows it; STK_IO_URING=0 turns it off on purpose: AUTO falls
 * back to pread with one warning per process naming why, and forced
 * io_uring fails saying so. */
static void test_io_resolve(void **state)
{
    (void)state;
    stk_io_mode_t got;
    assert_int_equal(stk__io_resolve(STK_IO_PREAD, &got), 0);
    assert_int_equal(got, STK_IO_PREAD);
    int allowed = uring_allowed();
    atomic_store(&stk__io_uring_warned, 0);
    warnings = 0;
    logged[0] = '\0';
    stk_log_set_callback(count_warning, NULL, STK_LOG_WARN);
    assert_int_equal(stk__io_resolve(STK_IO_AUTO, &got), 0);
    assert_int_equal(got, allowed ? STK_IO_URING : STK_IO_PREAD);
    assert_int_equal(warnings, allowed ? 0 : 1);
    int rc = stk__io_resolve(STK_IO_URING, &got);
    if (allowed) {
        assert_int_equal(rc, 0);
        assert_int_equal(got, STK_IO_URING);
    } else {
        assert_int_equal(rc, STK_HAVE_IO_URING ? -EPERM : STK_ECONFIG);
    }

    setenv("STK_IO_URING", "0", 1);
    atomic_store(&stk__io_uring_warned, 0);
    warnings = 0;
    logged[0] = '\0';
    for (int k = 0; k < 3; k++) {
        assert_int_equal(stk__io_resolve(STK_IO_AUTO, &got), 0);
        assert_int_equal(got, STK_IO_PREAD);
    }
    if (STK_HAVE_IO_URING) {
        assert_int_equal(warnings, 1); /* once, however often it resolves */
        assert_non_null(strstr(logged, "io_uring unavailable (STK_IO_URING=0 in the environment): "
                                       "reading records with pread"));
        assert_int_equal(stk__io_resolve(STK_IO_URING, &got), -EPERM);
        assert_non_null(strstr(stk_error_message(), "STK_IO_URING=0"));
    }
    unsetenv("STK_IO_URING");
    stk_log_set_callback(NULL, NULL, STK_LOG_WARN);
    assert_int_equal(stk__io_resolve(STK_IO_MMAP, &got), 0);
    assert_int_equal(got, STK_IO_MMAP);
    stk_dataset_t *ds = NULL;
    stk_dataset_shard_config_t sc;
    stk_dataset_shard_config_default(&sc);
    sc.io = (stk_io_mode_t)42;
    assert_int_equal(stk_dataset_shard_create(&ds, "/nonexistent", &sc), STK_ECONFIG);
    sc.io = STK_IO_PREAD;
    assert_true(stk_dataset_shard_create(&ds, "/nonexistent", &sc) < 0);
    assert_null(ds);
}

/* Shards written with the writer, read by workers through io_uring and
 * pread: identical batches; a corrupt byte names shard and record. */
static void write_shards(const char *dir, int level)
{
    stk_schema_t sc;
    memset(&sc, 0, sizeof sc);
    int64_t ishape[3] = {1, IMG, IMG};
    assert_int_equal(stk_schema_add(&sc, "image", STK_DTYPE_U8, 3, ishape), 0);
    assert_int_equal(stk_schema_add(&sc, "label", STK_DTYPE_I64, 0, NULL), 0);
    stk_writer_config_t wc;
    stk_writer_config_default(&wc);
    wc.zstd_level = level;
    wc.records_per_shard = 128;
    stk_writer_t *w = NULL;
    assert_int_equal(stk_writer_create(&w, dir, &sc, &wc), 0);
    for (uint64_t i = 0; i < 300; i++) {
        unsigned char img[IMG * IMG];
        int64_t lab = (int64_t)i;
        img_of(i, img);
        const void *data[2] = {img, &lab};
        assert_int_equal(stk_writer_add(w, data, NULL), 0);
    }
    assert_int_equal(stk_writer_finish(w), 0);
    stk_writer_destroy(&w);
}

/* Where record index of the set in dir lies: *loc, and its shard's path. */
static void locate_record(const char *dir, uint64_t index, stk_record_loc_t *loc, char *path,
                          size_t cap)
{
    stk_shardset_t *set = NULL;
    assert_int_equal(stk_shardset_create(&set, dir), 0);
    assert_int_equal(stk_shardset_locate(set, index, loc), 0);
    snprintf(path, cap, "%s", stk_shardset_shard_path(set, loc->shard));
    stk_shardset_destroy(&set);
}

static void rm_rf(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* The set a dataset hands its workers: the same records, shards and
 * dictionaries as opening it; malformed blobs and changed files refused. */
static void test_shardset_export(void **state)
{
    (void)state;
    char zdir[] = "/tmp/stk-loader-x-XXXXXX";
    assert_non_null(mkdtemp(zdir));
    write_shards(zdir, 3);
    stk_shardset_t *set = NULL, *imp = NULL;
    assert_int_equal(stk_shardset_create(&set, zdir), 0);
    size_t n = stk__shardset_export_size(set);
    unsigned char *blob = malloc(n);
    assert_non_null(blob);
    stk__shardset_export(set, blob);
    assert_int_equal(stk__shardset_import(&imp, blob, n), 0);
    assert_int_equal(stk_shardset_len(imp), stk_shardset_len(set));
    assert_int_equal(stk_shardset_num_shards(imp), stk_shardset_num_shards(set));
    assert_int_equal(stk_shardset_max_raw(imp), stk_shardset_max_raw(set));
    assert_int_equal(stk_shardset_max_stored(imp), stk_shardset_max_stored(set));
    assert_true(stk__schema_equal(stk_shardset_schema(imp), stk_shardset_schema(set)));
    stk_decoder_t *dec = NULL;
    assert_int_equal(stk_decoder_create(&dec, imp), 0);
    unsigned char *buf = malloc(stk_shardset_max_raw(set));
    assert_non_null(buf);
    for (uint64_t i = 0; i < stk_shardset_len(set); i++) {
        stk_record_loc_t a, b;
        assert_int_equal(stk_shardset_locate(set, i, &a), 0);
        assert_int_equal(stk_shardset_locate(imp, i, &b), 0);
        assert_int_equal(a.offset, b.offset);
        assert_int_equal(a.checksum, b.checksum);
        assert_int_equal(a.shard, b.shard);
        stk_record_t rec;
        assert_int_equal(stk_shardset_get(imp, dec, i, buf, stk_shardset_max_raw(set), &rec), 0);
    }
    stk_shard_info_t ia, ib;
    assert_int_equal(stk_shardset_shard_info(set, 1, &ia), 0);
    assert_int_equal(stk_shardset_shard_info(imp, 1, &ib), 0);
    assert_int_equal(ia.first_index, ib.first_index);
    assert_int_equal(ia.stored_bytes, ib.stored_bytes);
    assert_int_equal(ia.zstd_level, ib.zstd_level);
    stk_decoder_destroy(&dec);
    stk_shardset_destroy(&imp);
    /* Malformed: short, wrong length, bad magic, a path without its NUL. */
    assert_int_equal(stk__shardset_import(&imp, blob, 8), STK_EDATA);
    assert_int_equal(stk__shardset_import(&imp, blob, n - 8), STK_EDATA);
    blob[0] ^= 1;
    assert_int_equal(stk__shardset_import(&imp, blob, n), STK_EDATA);
    blob[0] ^= 1;
    unsigned char *copy = malloc(n);
    assert_non_null(copy);
    memcpy(copy, blob, n);
    char *path0 = (char *)memmem(copy, n, stk_shardset_shard_path(set, 0),
                                 strlen(stk_shardset_shard_path(set, 0)) + 1);
    assert_non_null(path0);
    memset(path0, 'x', strlen(path0) + 1);
    assert_int_equal(stk__shardset_import(&imp, copy, n), STK_EDATA);
    assert_null(imp);
    free(copy);
    /* A shard that grew since the set was checked is not the checked one. */
    int fd = open(stk_shardset_shard_path(set, 1), O_WRONLY | O_APPEND);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "x", 1), 1);
    close(fd);
    assert_int_equal(stk__shardset_import(&imp, blob, n), STK_EDATA);
    assert_non_null(strstr(stk_error_message(), "changed since"));
    assert_null(imp);
    /* A shard that is gone: the open's errno. */
    assert_int_equal(unlink(stk_shardset_shard_path(set, 1)), 0);
    assert_int_equal(stk__shardset_import(&imp, blob, n), -ENOENT);
    free(buf);
    free(blob);
    stk_shardset_destroy(&set);
    rm_rf(zdir);
}

static void read_set(const char *dir)
{
    char path[600], buf[65536];
    for (int k = 0;; k++) {
        snprintf(path, sizeof path, "%s/shard-%05d.stk", dir, k);
        int fd = open(path, O_RDONLY);
        if (fd < 0)
            break;
        while (read(fd, buf, sizeof buf) > 0)
            ;
        close(fd);
    }
}

/* Verify-once is per loader, shared by its workers: over 3 epochs every
 * record is hashed exactly once, whatever the worker count. A record
 * corrupted after it matched stays trusted by that loader; a new loader
 * checks again and names it. */
static void test_verify_shared(void **state)
{
    (void)state;
    char dir[] = "/tmp/stk-loader-v-XXXXXX";
    assert_non_null(mkdtemp(dir));
    write_shards(dir, 0);
    stk_dataset_t *ds = NULL;
    assert_int_equal(stk_dataset_shard_create(&ds, dir, NULL), 0);
    for (uint32_t wk = 0; wk <= 3; wk += 3) {
        stk_loader_config_t c = base_cfg(wk, 2);
        c.batch_size = 8;
        run_t r = run_epochs(ds, &c, 3);
        assert_each_once(&r, 300, -1);
        free(r.seen);
    }
    stk_record_loc_t loc;
    char shard[512];
    locate_record(dir, 77, &loc, shard, sizeof shard);
    for (uint32_t wk = 0; wk <= 2; wk += 2) {
        stk_loader_config_t c = base_cfg(wk, 2);
        c.batch_size = 8;
        stk_loader_t *l = NULL;
        assert_int_equal(stk_loader_create(&l, ds, &c), 0);
        run_t r;
        memset(&r, 0, sizeof r);
        assert_int_equal(drain_epoch(l, &r, 300), STK_DONE);
        stk_loader_stats_t st;
        stk_loader_get_stats(l, &st);
        assert_int_equal(st.checked, 300);
        int fd = open(shard, O_RDWR);
        unsigned char byte;
        assert_int_equal(pread(fd, &byte, 1, (off_t)loc.offset + 3), 1);
        byte ^= 0x40;
        assert_int_equal(pwrite(fd, &byte, 1, (off_t)loc.offset + 3), 1);
        for (uint64_t e = 1; e < 4; e++) {
            assert_int_equal(stk_loader_set_epoch(l, e), 0);
            assert_int_equal(drain_epoch(l, &r, 300), STK_DONE);
        }
        stk_loader_get_stats(l, &st);
        assert_int_equal(st.checked, 300);
        stk_loader_destroy(&l);
        assert_int_equal(stk_loader_create(&l, ds, &c), 0);
        run_t r2;
        memset(&r2, 0, sizeof r2);
        assert_int_equal(drain_epoch(l, &r2, 300), STK_EDATA);
        assert_non_null(strstr(stk_error_message(), "record 77"));
        stk_loader_destroy(&l);
        byte ^= 0x40;
        assert_int_equal(pwrite(fd, &byte, 1, (off_t)loc.offset + 3), 1);
        close(fd);
        free(r.seen);
        free(r2.seen);
    }
    stk_dataset_destroy(&ds);
    rm_rf(dir);
}

/* Percent of the set's pages in the page cache; with evict, after
 * asking the kernel to drop them. */
static int resident_share(const char *dir, int evict)
{
    char path[600];
    size_t pages = 0, resident = 0;
    for (int k = 0;; k++) {
        snprintf(path, sizeof path, "%s/shard-%05d.stk", dir, k);
        int fd = open(path, O_RDONLY);
        if (fd < 0)
            break;
        struct stat st;
        assert_int_equal(fstat(fd, &st), 0);
        if (evict) {
            assert_int_equal(fdatasync(fd), 0);
            assert_int_equal(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
        }
        unsigned char *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
        assert_true(m != MAP_FAILED);
        size_t n = ((size_t)st.st_size + 4095) / 4096;
        unsigned char *vec = malloc(n);
        assert_non_null(vec);
        assert_int_equal(mincore(m, (size_t)st.st_size, vec), 0);
        for (size_t i = 0; i < n; i++)
            resident += vec[i] & 1;
        pages += n;
        free(vec);
        munmap(m, (size_t)st.st_size);
        close(fd);
    }
    return pages ? (int)(resident * 100 / pages) : 0;
}

/* STK_IO_AUTO on a compressed set of 2.4 MB (one shard, so that opening
 * it, which reads the head and the tail, leaves most pages uncached):
 * evicted, it is read with io_uring where the kernel allows it, and with
 * pread under STK_IO_URING=0; cached again, it is mapped. The batches are
 * the same every way. The set lies in the build tree when there is one
 * (/tmp may be a tmpfs, whose pages cannot be evicted). */
static void test_auto_io(void **state)
{
    (void)state;
    char dir[400];
    const char *root = getenv("STK_BUILD_ROOT");
    snprintf(dir, sizeof dir, "%s/stk-loader-a-XXXXXX", root && root[0] ? root : "/tmp");
    assert_non_null(mkdtemp(dir));
    stk_schema_t sc;
    memset(&sc, 0, sizeof sc);
    int64_t shape[1] = {1024};
    assert_int_equal(stk_schema_add(&sc, "image", STK_DTYPE_U8, 1, shape), 0);
    stk_writer_config_t wc;
    stk_writer_config_default(&wc);
    wc.zstd_level = 3;
    wc.use_dict = 0;
    stk_writer_t *w = NULL;
    assert_int_equal(stk_writer_create(&w, dir, &sc, &wc), 0);
    stk_rng_t r;
    stk_rng_init(&r, 99, 0);
    for (int i = 0; i < 2400; i++) {
        uint32_t rec[256];
        for (int k = 0; k < 256; k++)
            rec[k] = k < 64 ? (uint32_t)i : stk_rng_u32(&r); /* compresses a little */
        const void *data[1] = {rec};
        assert_int_equal(stk_writer_add(w, data, NULL), 0);
    }
    assert_int_equal(stk_writer_finish(w), 0);
    stk_writer_destroy(&w);
    int allowed = uring_allowed();
    const stk_io_mode_t want[3] = {allowed ? STK_IO_URING : STK_IO_PREAD, STK_IO_PREAD, STK_IO_MMAP};
    uint64_t sums[3];
    for (int pass = 0; pass < 3; pass++) {
        if (pass == 1)
            setenv("STK_IO_URING", "0", 1);
        if (pass < 2)
            resident_share(dir, 1);
        else
            read_set(dir);
        stk_dataset_t *ds = NULL;
        assert_int_equal(stk_dataset_shard_create(&ds, dir, NULL), 0);
        unsetenv("STK_IO_URING");
        int share = resident_share(dir, 0);
        if (pass < 2 && share >= 90) {
            struct statfs fs;
            statfs(dir, &fs);
            fail_msg("%s stays in the page cache (%d%% after eviction; filesystem type 0x%lx)",
                     dir, share, (unsigned long)fs.f_type);
        }
        assert_int_equal(stk_dataset_io_mode(ds), want[pass]);
        stk_loader_config_t c = base_cfg(2, 2);
        run_t rr = run_epochs(ds, &c, 1);
        assert_each_once(&rr, 2400, -1);
        sums[pass] = rr.sum;
        free(rr.seen);
        stk_dataset_destroy(&ds);
    }
    assert_true(sums[0] == sums[1] && sums[1] == sums[2]);
    rm_rf(dir);
}

static void test_shard_dataset(void **state)
{
    (void)state;
    char dir[] = "/tmp/stk-loader-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char zdir[] = "/tmp/stk-loader-z-XXXXXX";
    assert_non_null(mkdtemp(zdir));
    write_shards(dir, 0);
    write_shards(zdir, 3); /* compressed: decoded into a buffer, not in place */
    stk_shardset_t *zset = NULL;
    assert_int_equal(stk_shardset_create(&zset, zdir), 0);
    assert_true(stk_shardset_max_stored(zset) < stk_shardset_max_raw(zset));
    stk_shardset_destroy(&zset);

    stk_dataset_t *mem = make_mem_ds(300);
    stk_loader_config_t c = base_cfg(0, 2);
    c.augment = "crop:8,pad=2|hflip";
    /* Two epochs: a mapped raw set reads verified records by arithmetic
     * from the second on (the dense path), and must not change a byte. */
    run_t ref = run_epochs(mem, &c, 2);
    stk_dataset_destroy(&mem);
    for (int io = 1; io <= 6; io++) {
        stk_dataset_shard_config_t sc2;
        stk_dataset_shard_config_default(&sc2);
        sc2.io = (stk_io_mode_t)(io > 3 ? io - 3 : io);
        sc2.max_batch = 5; /* batches of 16 go in chunks */
        stk_dataset_t *ds = NULL;
        int rc = stk_dataset_shard_create(&ds, io > 3 ? zdir : dir, &sc2);
        if (sc2.io == STK_IO_URING && !uring_allowed()) {
            assert_int_equal(rc, STK_HAVE_IO_URING ? -EPERM : STK_ECONFIG);
            continue; /* refused here (uring_allowed said so); pread is run below */
        }
        assert_int_equal(rc, 0);
        assert_int_equal(stk_dataset_io_mode(ds), sc2.io);
        for (uint32_t wk = 0; wk < 3; wk += 2) {
            c.num_workers = wk;
            run_t r = run_epochs(ds, &c, 2);
            assert_true(r.sum == ref.sum);
            free(r.seen);
        }
        stk_dataset_destroy(&ds);
    }
    /* AUTO maps the raw set and, as it was just written and is all in
     * the page cache, the compressed one (test_auto_io has it evicted). */
    for (int z = 0; z < 2; z++) {
        stk_dataset_t *ds = NULL;
        assert_int_equal(stk_dataset_shard_create(&ds, z ? zdir : dir, NULL), 0);
        assert_int_equal(stk_dataset_io_mode(ds), STK_IO_MMAP);
        c.num_workers = 1;
        run_t r = run_epochs(ds, &c, 2);
        assert_true(r.sum == ref.sum);
        free(r.seen);
        stk_dataset_destroy(&ds);
    }
    free(ref.seen);

    /* Flip a byte inside record 10 of the first shard. */
    stk_dataset_t *ds = NULL;
    assert_int_equal(stk_dataset_shard_create(&ds, dir, NULL), 0);
    stk_record_loc_t loc;
    char shard[512];
    locate_record(dir, 10, &loc, shard, sizeof shard);
    int fd = open(shard, O_RDWR);
    unsigned char byte;
    assert_int_equal(pread(fd, &byte, 1, (off_t)loc.offset + 20), 1);
    byte ^= 0x5a;
    assert_int_equal(pwrite(fd, &byte, 1, (off_t)loc.offset + 20), 1);
    close(fd);
    for (uint32_t wk = 0; wk < 3; wk += 2) {
        c.num_workers = wk;
        c.skip_corrupt = 0;
        stk_loader_t *l = NULL;
        run_t r;
        memset(&r, 0, sizeof r);
        assert_int_equal(stk_loader_create(&l, ds, &c), 0);
        assert_int_equal(drain_epoch(l, &r, 300), STK_EDATA);
        assert_non_null(strstr(stk_error_message(), "record 10"));
        assert_non_null(strstr(stk_error_message(), ".stk"));
        stk_loader_destroy(&l);
        free(r.seen);
        c.skip_corrupt = 1;
        memset(&r, 0, sizeof r);
        assert_int_equal(stk_loader_create(&l, ds, &c), 0);
        assert_int_equal(drain_epoch(l, &r, 300), STK_DONE);
        assert_each_once(&r, 300, 10);
        stk_loader_stats_t st;
        stk_loader_get_stats(l, &st);
        assert_int_equal(st.skipped, 1);
        assert_true(st.read.bytes > 0);
        if (wk) {
            /* Workers report peak RSS and private memory (which leaves out
             * the mapped shards' pages, so it is the smaller). */
            assert_true(st.worker_max_private_kb > 0);
            assert_true(st.worker_max_private_kb <= st.worker_max_rss_kb);
        }
        /* Checksums are verified once per worker (STK_VERIFY_ONCE), but a
         * record never matched is checked, and skipped, every epoch. */
        free(r.seen);
        memset(&r, 0, sizeof r);
        assert_int_equal(stk_loader_set_epoch(l, 1), 0);
        assert_int_equal(drain_epoch(l, &r, 300), STK_DONE);
        assert_each_once(&r, 300, 10);
        stk_loader_get_stats(l, &st);
        assert_int_equal(st.skipped, 2);
        stk_loader_destroy(&l);
        free(r.seen);
    }
    stk_dataset_destroy(&ds);
    rm_rf(dir);
    rm_rf(zdir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_io_resolve),
        cmocka_unit_test(test_shard_dataset),
        cmocka_unit_test(test_shardset_export),
        cmocka_unit_test(test_auto_io),
        cmocka_unit_test(test_verify_shared),
    };
    /* Workers are forked from the fork server, started here while this
     * process is still small. */
    stk_loader_forkserver_start();
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    stk_loader_forkserver_stop();
    return rc;
}
