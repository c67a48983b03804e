/* SPDX-License-Identifier: MIT */
/* Sequence data through the importers: the text importer (bytes, a
 * vocabulary of words or of UTF-8 characters, the unknown-token id, CRLF,
 * empty and unterminated lines, gzip, the side files, its errors, and
 * `stoker-pack text`), and .npy sequences of shape (N, T, F) read back as
 * records of T x F. Every record is read back from the shards. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <zlib.h>

#include "test_util.h"
#include "stoker/pack.h"

static char dir[256];

static const char *tp(const char *name)
{
    return path_in(dir, name);
}

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    static char buf[65536];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/stk-pack-text-XXXXXX");
    assert_non_null(mkdtemp(dir));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

/* Packs the text at path with cfg's vocabulary settings into out. */
static int pack_text(const char *path, const char *vocab, int chars, int64_t unk, const char *out)
{
    const char *inputs[1] = {path};
    stk_pack_source_config_t sc;
    stk_pack_source_config_default(&sc);
    sc.format = STK_PACK_TEXT;
    sc.inputs = inputs;
    sc.ninputs = 1;
    sc.vocab = vocab;
    sc.vocab_chars = chars;
    sc.unk_id = unk;
    stk_pack_source_t *src = NULL;
    int rc = stk_pack_source_create(&src, &sc);
    if (rc)
        return rc;
    stk_pack_config_t pc;
    stk_pack_config_default(&pc);
    pc.records_per_shard = 2; /* several shards */
    rc = stk_pack_write(src, out, &pc, NULL);
    stk_pack_source_destroy(&src);
    return rc;
}

/* Record i of the set at path: its field 0 into ids (as i64), count. */
static void read_all(const char *path, int64_t want_records, const int64_t *const *want, const int64_t *want_n,
                     stk_dtype_t dtype)
{
    stk_shardset_t *set = NULL;
    if (stk_shardset_create(&set, path))
        fail_msg("%s", stk_error_message());
    assert_int_equal(stk_shardset_len(set), want_records);
    const stk_schema_t *s = stk_shardset_schema(set);
    assert_int_equal(s->nfields, 1);
    assert_string_equal(s->fields[0].name, "tokens");
    assert_int_equal(s->fields[0].dtype, dtype);
    stk_decoder_t *dec = NULL;
    assert_int_equal(stk_decoder_create(&dec, set), 0);
    for (int64_t i = 0; i < want_records; i++) {
        unsigned char buf[4096];
        stk_record_t rec;
        assert_int_equal(stk_shardset_get(set, dec, (uint64_t)i, buf, sizeof(buf), &rec), 0);
        assert_int_equal(rec.var_extent[0], want_n[i]);
        for (int64_t k = 0; k < want_n[i]; k++) {
            int64_t v = dtype == STK_DTYPE_U8 ? ((const uint8_t *)rec.data[0])[k]
                                              : ((const int32_t *)rec.data[0])[k];
            if (v != want[i][k])
                fail_msg("record %lld token %lld: %lld, expected %lld", (long long)i, (long long)k, (long long)v,
                         (long long)want[i][k]);
        }
    }
    stk_decoder_destroy(&dec);
    stk_shardset_destroy(&set);
}

static void test_bytes(void **state)
{
    (void)state;
    /* CRLF, an empty line, a tab, a non-ASCII byte, no final newline */
    const char text[] = "ab\r\n\nc\td\n\xc3\xa9z";
    write_file(tp("b.txt"), text, sizeof(text) - 1);
    assert_int_equal(pack_text(tp("b.txt"), NULL, 0, 0, tp("b")), 0);
    static const int64_t r0[] = {'a', 'b'}, r2[] = {'c', '\t', 'd'}, r3[] = {0xc3, 0xa9, 'z'};
    const int64_t *want[] = {r0, NULL, r2, r3};
    const int64_t n[] = {2, 0, 3, 3};
    read_all(tp("b"), 4, want, n, STK_DTYPE_U8);
    assert_string_equal(slurp(tp("b/text.json")), "{\"tokens\": \"bytes\", \"vocab_size\": 256}\n");
    assert_null(slurp(tp("b/vocab.txt")));
    /* gzip input, same records */
    gzFile g = gzopen(tp("b.txt.gz"), "wb");
    assert_non_null(g);
    assert_int_equal(gzwrite(g, text, sizeof(text) - 1), (int)sizeof(text) - 1);
    gzclose(g);
    assert_int_equal(pack_text(tp("b.txt.gz"), NULL, 0, 0, tp("bz")), 0);
    read_all(tp("bz"), 4, want, n, STK_DTYPE_U8);
}

static void test_words_and_chars(void **state)
{
    (void)state;
    write_file(tp("v.txt"), "<unk>\nthe\ncat\nsat\n", 18);
    write_file(tp("w.txt"), "the cat  sat\n\tthe dog\n", 22);
    assert_int_equal(pack_text(tp("w.txt"), tp("v.txt"), 0, 0, tp("w")), 0);
    static const int64_t r0[] = {1, 2, 3}, r1[] = {1, 0};
    const int64_t *want[] = {r0, r1};
    const int64_t n[] = {3, 2};
    read_all(tp("w"), 2, want, n, STK_DTYPE_I32);
    assert_string_equal(slurp(tp("w/vocab.txt")), "<unk>\nthe\ncat\nsat\n");
    assert_string_equal(slurp(tp("w/text.json")),
                        "{\"tokens\": \"words\", \"vocab_size\": 4, \"unk_id\": 0, \"vocab\": \"vocab.txt\"}\n");
    /* UTF-8 characters; ' ' is a token too; unknown ones become id 1 */
    write_file(tp("c.txt"), "?\n\xc3\xa9 a\n", 4 + 3);
    write_file(tp("cv.txt"), "a\n?\n\xc3\xa9\n \n", 2 + 2 + 3 + 2);
    assert_int_equal(pack_text(tp("c.txt"), tp("cv.txt"), 1, 1, tp("c")), 0);
    static const int64_t c0[] = {1}, c1[] = {2, 3, 0};
    const int64_t *cw[] = {c0, c1};
    const int64_t cn[] = {1, 3};
    read_all(tp("c"), 2, cw, cn, STK_DTYPE_I32);
    write_file(tp("c2.txt"), "ab\n", 3);
    assert_int_equal(pack_text(tp("c2.txt"), tp("cv.txt"), 1, 1, tp("c2")), 0);
    static const int64_t d0[] = {0, 1};
    const int64_t *dw[] = {d0};
    const int64_t dn[] = {2};
    read_all(tp("c2"), 1, dw, dn, STK_DTYPE_I32);
}

static void test_errors(void **state)
{
    (void)state;
    write_file(tp("v2.txt"), "<unk>\nthe\ncat\n", 14);
    write_file(tp("e.txt"), "the cat\nthe dog\n", 16);
    assert_int_equal(pack_text(tp("e.txt"), tp("v2.txt"), 0, -1, tp("e1")), STK_EFORMAT);
    assert_non_null(strstr(stk_error_message(), "line 2: 'dog' is not in the vocabulary"));
    assert_int_equal(pack_text(tp("e.txt"), tp("v2.txt"), 0, 3, tp("e2")), STK_ECONFIG);
    assert_non_null(strstr(stk_error_message(), "unknown-token id 3"));
    assert_int_equal(pack_text(tp("nope.txt"), NULL, 0, 0, tp("e3")), -ENOENT);
    assert_non_null(strstr(stk_error_message(), "nope.txt"));
    assert_int_equal(pack_text(tp("e.txt"), tp("nope-vocab.txt"), 0, 0, tp("e4")), -ENOENT);
    write_file(tp("dup.txt"), "a\nb\na\n", 6);
    assert_int_equal(pack_text(tp("e.txt"), tp("dup.txt"), 0, 0, tp("e5")), STK_EFORMAT);
    assert_non_null(strstr(stk_error_message(), "line 3: token 'a' is already line 1"));
    write_file(tp("bad8.txt"), "a\xff\n", 3);
    write_file(tp("av.txt"), "a\n", 2);
    assert_int_equal(pack_text(tp("bad8.txt"), tp("av.txt"), 1, 0, tp("e6")), STK_EFORMAT);
    assert_non_null(strstr(stk_error_message(), "line 1: byte 2 is not UTF-8"));
    assert_int_equal(pack_text(tp("e.txt"), NULL, 1, 0, tp("e7")), STK_ECONFIG);
    write_file(tp("empty.txt"), "", 0);
    assert_int_equal(pack_text(tp("empty.txt"), NULL, 0, 0, tp("e8")), STK_EEMPTY);
    write_file(tp("ev.txt"), "", 0);
    assert_int_equal(pack_text(tp("e.txt"), tp("ev.txt"), 0, 0, tp("e9")), STK_EEMPTY);
    /* nothing was left behind by the failures */
    for (int i = 1; i <= 9; i++) {
        char name[8];
        snprintf(name, sizeof(name), "e%d", i);
        assert_int_equal(access(tp(name), F_OK), -1);
    }
}

static int run_tool(const char *const *args)
{
    const char *root = getenv("STK_BUILD_ROOT");
    char tool[512];
    snprintf(tool, sizeof(tool), "%s/tools/stoker-pack", root ? root : "build");
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open("/dev/null", O_WRONLY);
        dup2(fd, 1);
        dup2(fd, 2);
        char *argv[16];
        argv[0] = tool;
        int k = 1;
        for (; args[k - 1] && k < 15; k++)
            argv[k] = (char *)args[k - 1];
        argv[k] = NULL;
        execv(tool, argv);
        _exit(127);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static void test_cli(void **state)
{
    (void)state;
    write_file(tp("cli.txt"), "hello\nworld\n", 12);
    write_file(tp("cv2.txt"), "<unk>\nhello\n", 12);
    assert_int_equal(run_tool((const char *[]){"text", tp("cli.txt"), "-o", tp("cli"), "-q", NULL}), 0);
    static const int64_t r0[] = {'h', 'e', 'l', 'l', 'o'}, r1[] = {'w', 'o', 'r', 'l', 'd'};
    const int64_t *want[] = {r0, r1};
    const int64_t n[] = {5, 5};
    read_all(tp("cli"), 2, want, n, STK_DTYPE_U8);
    /* a vocabulary, replacing the set in place */
    assert_int_equal(run_tool((const char *[]){"text", tp("cli.txt"), "-o", tp("cli"), "--vocab", tp("cv2.txt"),
                                               "--unk-id", "0", "-f", "-q", NULL}),
                     0);
    static const int64_t v0[] = {1}, v1[] = {0};
    const int64_t *vw[] = {v0, v1};
    const int64_t vn[] = {1, 1};
    read_all(tp("cli"), 2, vw, vn, STK_DTYPE_I32);
    /* and back to bytes over a set with vocab.txt and text.json */
    assert_int_equal(run_tool((const char *[]){"text", tp("cli.txt"), "-o", tp("cli"), "-f", "-q", NULL}), 0);
    read_all(tp("cli"), 2, want, n, STK_DTYPE_U8);
    assert_int_equal(run_tool((const char *[]){"text", tp("cli.txt"), "-o", tp("cli2"), "--unk-id", "x", NULL}),
                     2);
    assert_int_equal(run_tool((const char *[]){"text", tp("cli.txt"), tp("cli.txt"), "-o", tp("cli2"), NULL}), 2);
    assert_int_equal(
        run_tool((const char *[]){"npy", tp("a.npy"), tp("b.npy"), "-o", tp("cli2"), "--vocab", tp("cv2.txt"), NULL}),
        2);
    assert_int_equal(run_tool((const char *[]){"text", tp("missing.txt"), "-o", tp("cli2"), "-q", NULL}), 1);
}

/* Writes a v1 .npy of dtype descr and shape. */
static void write_npy(const char *path, const char *descr, int ndim, const int64_t *shape, const void *data,
                      size_t bytes)
{
    char hdr[256], shp[64] = "";
    size_t o = 0;
    for (int i = 0; i < ndim; i++)
        o += (size_t)snprintf(shp + o, sizeof(shp) - o, "%lld,%s", (long long)shape[i], i + 1 < ndim ? " " : "");
    int n = snprintf(hdr, sizeof(hdr), "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, shp);
    size_t total = 10 + (size_t)n + 1;
    size_t pad = (64 - total % 64) % 64;
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    unsigned short hl = (unsigned short)(n + pad + 1);
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    fwrite(&hl, 2, 1, f);
    fwrite(hdr, 1, (size_t)n, f);
    for (size_t i = 0; i < pad; i++)
        fputc(' ', f);
    fputc('\n', f);
    fwrite(data, 1, bytes, f);
    fclose(f);
}

/* (N, T, F) float sequences of fixed length: records of T x F. */
static void test_npy_sequences(void **state)
{
    (void)state;
    enum { N = 5, T = 4, F = 3 };
    float x[N * T * F];
    int64_t y[N];
    for (int i = 0; i < N * T * F; i++)
        x[i] = (float)i * 0.25f - 3.0f;
    for (int i = 0; i < N; i++)
        y[i] = i % 2;
    write_npy(tp("seq.npy"), "<f4", 3, (int64_t[]){N, T, F}, x, sizeof(x));
    write_npy(tp("lab.npy"), "<i8", 1, (int64_t[]){N}, y, sizeof(y));
    assert_int_equal(run_tool((const char *[]){"npy", tp("seq.npy"), tp("lab.npy"), "-o", tp("seq"), "-q", NULL}),
                     0);
    stk_shardset_t *set = NULL;
    assert_int_equal(stk_shardset_create(&set, tp("seq")), 0);
    const stk_schema_t *s = stk_shardset_schema(set);
    assert_int_equal(s->nfields, 2);
    assert_int_equal(s->fields[0].dtype, STK_DTYPE_F32);
    assert_int_equal(s->fields[0].ndim, 2);
    assert_int_equal(s->fields[0].shape[0], T);
    assert_int_equal(s->fields[0].shape[1], F);
    stk_decoder_t *dec = NULL;
    assert_int_equal(stk_decoder_create(&dec, set), 0);
    for (int i = 0; i < N; i++) {
        unsigned char buf[1024];
        stk_record_t rec;
        assert_int_equal(stk_shardset_get(set, dec, (uint64_t)i, buf, sizeof(buf), &rec), 0);
        assert_memory_equal(rec.data[0], x + i * T * F, sizeof(float) * T * F);
        assert_int_equal(*(const int64_t *)rec.data[1], y[i]);
    }
    stk_decoder_destroy(&dec);
    stk_shardset_destroy(&set);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bytes), cmocka_unit_test(test_words_and_chars), cmocka_unit_test(test_errors),
        cmocka_unit_test(test_cli),   cmocka_unit_test(test_npy_sequences),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
