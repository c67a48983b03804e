/* SPDX-License-Identifier: MIT */
/* End-to-end: runs the stoker-pack binary and the library's importers on
 * real inputs and reads every record back, bit for bit. "fmnist" packs the
 * first 2,000 Fashion-MNIST records from the Debian package (skips, exit
 * 77, if it is absent); "formats" packs IDX, CIFAR-10/100, .npy and folder
 * inputs that it writes itself, and checks the importers' errors (library
 * calls) and the CLI's exits; "crash" kills or fails a re-pack at every
 * file-system call (ptrace) and checks the folder always holds one whole
 * set. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#if defined(__x86_64__)
#include <sys/user.h>
#endif
#include <unistd.h>
#include <zlib.h>

#include "../unit/test_util.h"
#include "stoker/pack.h"
#include "stoker/shard.h"

#define FMNIST_DIR "/usr/share/datasets/fashion-mnist"
#define FMNIST_N 2000

static char tmpdir[256];
static char tool[1024];
static int failures;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                               \
            return;                                                                   \
        }                                                                             \
    } while (0)

static const char *tp(const char *name)
{
    static char buf[8][512];
    static int k;
    char *b = buf[k++ & 7];
    snprintf(b, 512, "%s/%s", tmpdir, name);
    return b;
}

static char out_text[65536], err_text[65536];

static void slurp(const char *path, char *buf, size_t cap)
{
    buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = '\0';
    fclose(f);
}

/* Runs stoker-pack with the given arguments (NULL-terminated); returns
 * its exit status and leaves stdout/stderr in out_text/err_text. */
static int pack(const char *arg0, ...)
{
    const char *argv[64];
    int n = 0;
    argv[n++] = tool;
    va_list ap;
    va_start(ap, arg0);
    for (const char *a = arg0; a && n < 63; a = va_arg(ap, const char *))
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    char so[600], se[600];
    snprintf(so, sizeof so, "%s/stdout.txt", tmpdir);
    snprintf(se, sizeof se, "%s/stderr.txt", tmpdir);
    pid_t pid = fork();
    if (pid == 0) {
        int o = open(so, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int e = open(se, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(o, 1);
        dup2(e, 2);
        execv(tool, (char *const *)argv);
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    slurp(so, out_text, sizeof out_text);
    slurp(se, err_text, sizeof err_text);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    fclose(f);
}

/* Opens a source with the library (as stoker-pack would) and returns its
 * status; on success, packs it into out (when not NULL) and returns that
 * status. The message stays in stk_error_message(). */
static int lib_pack(stk_pack_format_t fmt, const char *a, const char *b, const char *out)
{
    const char *inputs[2] = {a, b};
    stk_pack_source_config_t sc;
    stk_pack_source_config_default(&sc);
    sc.format = fmt;
    sc.inputs = inputs;
    sc.ninputs = b ? 2 : 1;
    stk_pack_source_t *src = NULL;
    int rc = stk_pack_source_create(&src, &sc);
    if (rc == 0 && (src == NULL || stk_pack_source_count(src) == 0))
        return -9999;
    if (rc == 0 && out) {
        stk_pack_config_t cfg;
        stk_pack_config_default(&cfg);
        cfg.zstd_level = 0;
        rc = stk_pack_write(src, out, &cfg, NULL);
    }
    stk_pack_source_destroy(&src);
    return rc;
}

static int msg_has(const char *needle)
{
    if (strstr(stk_error_message(), needle))
        return 1;
    fprintf(stderr, "message '%s' lacks '%s'\n", stk_error_message(), needle);
    return 0;
}

static void write_gz(const char *path, const void *data, size_t len)
{
    gzFile f = gzopen(path, "wb");
    if (!f || gzwrite(f, data, (unsigned)len) != (int)len) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    gzclose(f);
}

/* Opens a packed set and hands every record to check(i, rec). */
typedef int (*rec_check_fn)(uint64_t i, const stk_record_t *rec, void *user);
static int read_back(const char *dir, uint64_t want_n, const char *want_schema, rec_check_fn fn,
                     void *user)
{
    stk_shardset_t *set = NULL;
    if (stk_shardset_create(&set, dir)) {
        fprintf(stderr, "open %s: %s\n", dir, stk_error_message());
        return -1;
    }
    char schema[512];
    stk_schema_format(stk_shardset_schema(set), schema, sizeof schema);
    int rc = 0;
    if (stk_shardset_len(set) != want_n || strcmp(schema, want_schema) != 0) {
        fprintf(stderr, "%s: %llu records '%s', want %llu '%s'\n", dir,
                (unsigned long long)stk_shardset_len(set), schema, (unsigned long long)want_n,
                want_schema);
        rc = -1;
    }
    stk_decoder_t *dec = NULL;
    size_t cap = stk_shardset_max_raw(set);
    void *buf = malloc(cap ? cap : 1);
    if (!rc && stk_decoder_create(&dec, set))
        rc = -1;
    for (uint64_t i = 0; !rc && i < want_n; i++) {
        stk_record_t rec;
        if (stk_shardset_get(set, dec, i, buf, cap, &rec)) {
            fprintf(stderr, "%s\n", stk_error_message());
            rc = -1;
        } else if (fn(i, &rec, user)) {
            fprintf(stderr, "%s: record %llu differs\n", dir, (unsigned long long)i);
            rc = -1;
        }
    }
    free(buf);
    stk_decoder_destroy(&dec);
    stk_shardset_destroy(&set);
    return rc;
}

static int64_t rec_i64(const stk_record_t *rec, int field)
{
    int64_t v;
    memcpy(&v, rec->data[field], 8);
    return v;
}

/* ---- Fashion-MNIST ------------------------------------------------------ */

typedef struct fm_ref {
    unsigned char *images;
    unsigned char *labels;
} fm_ref_t;

static int fm_check(uint64_t i, const stk_record_t *rec, void *user)
{
    fm_ref_t *r = user;
    return rec->bytes[0] != 784 || memcmp(rec->data[0], r->images + i * 784, 784) != 0 ||
           rec_i64(rec, 1) != r->labels[i];
}

static int gz_read_prefix(const char *path, size_t skip, void *buf, size_t len)
{
    gzFile f = gzopen(path, "rb");
    if (!f)
        return -1;
    unsigned char hdr[16];
    int ok = gzread(f, hdr, (unsigned)skip) == (int)skip && gzread(f, buf, (unsigned)len) == (int)len;
    gzclose(f);
    return ok ? 0 : -1;
}

static int test_fmnist(void)
{
    const char *img = FMNIST_DIR "/train-images-idx3-ubyte.gz";
    const char *lab = FMNIST_DIR "/train-labels-idx1-ubyte.gz";
    if (access(img, R_OK) != 0 || access(lab, R_OK) != 0) {
        fprintf(stderr, "SKIP: %s not found (apt install dataset-fashion-mnist)\n", FMNIST_DIR);
        return 77;
    }
    fm_ref_t ref = {malloc(FMNIST_N * 784), malloc(FMNIST_N)};
    if (gz_read_prefix(img, 16, ref.images, FMNIST_N * 784) ||
        gz_read_prefix(lab, 8, ref.labels, FMNIST_N)) {
        fprintf(stderr, "cannot read %s\n", FMNIST_DIR);
        return 1;
    }
    const char *schema = "image:u8[1,28,28] label:i64[]";
    /* Default (level auto: stored raw), several shards. */
    int rc = pack("idx", img, lab, "--limit", "2000", "-n", "700", "-o", tp("fm"), NULL);
    if (rc != 0)
        fprintf(stderr, "pack failed (%d): %s\n", rc, err_text), failures++;
    else if (read_back(tp("fm"), FMNIST_N, schema, fm_check, &ref))
        failures++;
    if (!strstr(err_text, "store raw") && !strstr(err_text, "compress"))
        fprintf(stderr, "no level auto decision in: %s\n", err_text), failures++;
    /* zstd with a trained dictionary. */
    rc = pack("idx", img, lab, "--limit", "2000", "--level", "3", "--dict-size", "16384", "-o",
              tp("fmz"), "-q", NULL);
    if (rc != 0)
        fprintf(stderr, "pack failed (%d): %s\n", rc, err_text), failures++;
    else if (read_back(tp("fmz"), FMNIST_N, schema, fm_check, &ref))
        failures++;
    if (pack("verify", tp("fmz"), NULL) != 0 || !strstr(out_text, "0 bad: OK") ||
        strstr(out_text, "dictionary 0\n"))
        fprintf(stderr, "verify: %s%s\n", out_text, err_text), failures++;
    if (pack("info", tp("fm"), NULL) != 0 || !strstr(out_text, schema) ||
        !strstr(out_text, "shard-00002.stk"))
        fprintf(stderr, "info: %s%s\n", out_text, err_text), failures++;
    free(ref.images);
    free(ref.labels);
    return failures ? 1 : 0;
}

/* ---- Formats written here ---------------------------------------------- */

static unsigned char pix(uint64_t i, size_t k)
{
    return (unsigned char)(i * 31 + k * 7 + (k >> 5));
}

static int idx_check(uint64_t i, const stk_record_t *rec, void *user)
{
    (void)user;
    const unsigned char *p = rec->data[0];
    for (size_t k = 0; k < 6; k++)
        if (p[k] != pix(i, k))
            return 1;
    return rec->bytes[0] != 6 || rec_i64(rec, 1) != (int64_t)(9 - i);
}

static void test_idx(void)
{
    unsigned char img[16 + 5 * 6], lab[8 + 5];
    const unsigned char ih[16] = {0, 0, 8, 3, 0, 0, 0, 5, 0, 0, 0, 2, 0, 0, 0, 3};
    const unsigned char lh[8] = {0, 0, 8, 1, 0, 0, 0, 5};
    memcpy(img, ih, 16);
    memcpy(lab, lh, 8);
    for (uint64_t i = 0; i < 5; i++) {
        for (size_t k = 0; k < 6; k++)
            img[16 + i * 6 + k] = pix(i, k);
        lab[8 + i] = (unsigned char)(9 - i);
    }
    write_file(tp("img.idx"), img, sizeof img);
    write_file(tp("lab.idx"), lab, sizeof lab);
    CHECK(pack("idx", tp("img.idx"), tp("lab.idx"), "-o", tp("idx"), "-q", NULL) == 0);
    CHECK(read_back(tp("idx"), 5, "image:u8[1,2,3] label:i64[]", idx_check, NULL) == 0);
    /* The same through the library, gzipped. */
    write_gz(tp("img.idx.gz"), img, sizeof img);
    write_gz(tp("lab.idx.gz"), lab, sizeof lab);
    CHECK(lib_pack(STK_PACK_IDX, tp("img.idx.gz"), tp("lab.idx.gz"), tp("idxgz")) == 0);
    CHECK(read_back(tp("idxgz"), 5, "image:u8[1,2,3] label:i64[]", idx_check, NULL) == 0);
    /* Label count disagreeing with the images. */
    lab[7] = 4;
    write_file(tp("lab4.idx"), lab, sizeof lab - 1);
    CHECK(lib_pack(STK_PACK_IDX, tp("img.idx"), tp("lab4.idx"), NULL) == STK_ESHAPE);
    CHECK(msg_has("lab4.idx"));
    lab[7] = 5;
    /* Truncated image data: plain files are sized up front, gzip ones at
     * the record that is cut. */
    write_file(tp("short.idx"), img, sizeof img - 3);
    CHECK(lib_pack(STK_PACK_IDX, tp("short.idx"), tp("lab.idx"), NULL) == STK_EFORMAT);
    CHECK(msg_has("short.idx") && msg_has("truncated"));
    write_gz(tp("short.idx.gz"), img, sizeof img - 3);
    CHECK(lib_pack(STK_PACK_IDX, tp("short.idx.gz"), tp("lab.idx"), tp("idx3")) == STK_EFORMAT);
    CHECK(msg_has("short.idx.gz") && msg_has("truncated") && msg_has("record 4"));
    CHECK(access(tp("idx3"), F_OK) != 0);
    /* Trailing bytes: a wrong header or two files joined, not ignored. */
    unsigned char longer[sizeof img + 7];
    memcpy(longer, img, sizeof img);
    memset(longer + sizeof img, 0xAB, 7);
    write_file(tp("long.idx"), longer, sizeof longer);
    CHECK(lib_pack(STK_PACK_IDX, tp("long.idx"), tp("lab.idx"), NULL) == STK_EFORMAT);
    CHECK(msg_has("long.idx") && msg_has("7 bytes after the last of its 5 images"));
    write_gz(tp("long.idx.gz"), longer, sizeof longer);
    CHECK(lib_pack(STK_PACK_IDX, tp("long.idx.gz"), tp("lab.idx"), tp("idx4")) == STK_EFORMAT);
    CHECK(msg_has("long.idx.gz") && msg_has("7 bytes after"));
    CHECK(access(tp("idx4"), F_OK) != 0);
    unsigned char lab_long[sizeof lab + 1];
    memcpy(lab_long, lab, sizeof lab);
    lab_long[sizeof lab] = 3;
    write_file(tp("lablong.idx"), lab_long, sizeof lab_long);
    CHECK(lib_pack(STK_PACK_IDX, tp("img.idx"), tp("lablong.idx"), NULL) == STK_EFORMAT);
    CHECK(msg_has("lablong.idx") && msg_has("1 bytes after"));
    /* The CLI says the same and exits 1. */
    CHECK(pack("idx", tp("long.idx"), tp("lab.idx"), "-o", tp("idx5"), NULL) == 1);
    CHECK(strstr(err_text, "long.idx") && strstr(err_text, "bytes after"));
    /* Not IDX; missing file; zero images. */
    CHECK(lib_pack(STK_PACK_IDX, tp("lab4.idx"), tp("lab.idx"), NULL) == STK_EFORMAT);
    CHECK(lib_pack(STK_PACK_IDX, tp("nope.idx"), tp("lab.idx"), NULL) == -ENOENT);
    CHECK(msg_has("nope.idx"));
    const unsigned char ih0[16] = {0, 0, 8, 3, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 3};
    const unsigned char lh0[8] = {0, 0, 8, 1, 0, 0, 0, 0};
    write_file(tp("img0.idx"), ih0, 16);
    write_file(tp("lab0.idx"), lh0, 8);
    CHECK(lib_pack(STK_PACK_IDX, tp("img0.idx"), tp("lab0.idx"), NULL) == STK_EEMPTY);
    CHECK(msg_has("img0.idx"));
}

static int cifar_check(uint64_t i, const stk_record_t *rec, void *user)
{
    int c100 = *(int *)user;
    const unsigned char *p = rec->data[0];
    for (size_t k = 0; k < 3072; k++)
        if (p[k] != pix(i, k))
            return 1;
    if (c100)
        return rec_i64(rec, 1) != (int64_t)(i % 20) || rec_i64(rec, 2) != (int64_t)(i % 100);
    return rec_i64(rec, 1) != (int64_t)(i % 10);
}

static void write_cifar(const char *path, uint64_t first, uint64_t n, int c100)
{
    size_t rb = c100 ? 3074 : 3073;
    unsigned char *buf = malloc(n * rb);
    for (uint64_t j = 0; j < n; j++) {
        uint64_t i = first + j;
        unsigned char *r = buf + j * rb;
        if (c100) {
            r[0] = (unsigned char)(i % 20);
            r[1] = (unsigned char)(i % 100);
        } else {
            r[0] = (unsigned char)(i % 10);
        }
        for (size_t k = 0; k < 3072; k++)
            r[(c100 ? 2 : 1) + k] = pix(i, k);
    }
    write_file(path, buf, n * rb);
    free(buf);
}

static void test_cifar(void)
{
    int c100 = 0;
    write_cifar(tp("c10_a.bin"), 0, 7, 0);
    write_cifar(tp("c10_b.bin"), 7, 5, 0);
    CHECK(pack("cifar", tp("c10_a.bin"), tp("c10_b.bin"), "-o", tp("c10"), "-n", "5", "--level",
               "1", "-q", NULL) == 0);
    CHECK(read_back(tp("c10"), 12, "image:u8[3,32,32] label:i64[]", cifar_check, &c100) == 0);
    c100 = 1;
    write_cifar(tp("c100.bin"), 0, 6, 1);
    CHECK(pack("cifar", "--cifar100", tp("c100.bin"), "-o", tp("c100"), "-q", NULL) == 0);
    CHECK(read_back(tp("c100"), 6, "image:u8[3,32,32] coarse_label:i64[] label:i64[]",
                    cifar_check, &c100) == 0);
    /* A CIFAR-10 file read as CIFAR-100 is not a whole number of records. */
    CHECK(lib_pack(STK_PACK_CIFAR100, tp("c10_a.bin"), NULL, NULL) == STK_EFORMAT);
    CHECK(msg_has("c10_a.bin") && msg_has("CIFAR-100"));
    CHECK(pack("cifar", "--cifar100", tp("c10_a.bin"), "-o", tp("c100x"), NULL) == 1);
    CHECK(strstr(err_text, "c10_a.bin") != NULL);
    CHECK(lib_pack(STK_PACK_CIFAR10, tp("nope.bin"), NULL, NULL) == -ENOENT);
    CHECK(msg_has("nope.bin"));
}

/* A version 1.0 .npy file: magic, version, u16 header length, header
 * padded with spaces to a multiple of 64 and ending in '\n'. */
static void write_npy(const char *path, const char *descr, const char *fortran,
                      const char *shape, const void *data, size_t len)
{
    char hdr[256];
    int n = snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }",
                     descr, fortran, shape);
    int total = 10 + n + 1;
    int pad = (64 - total % 64) % 64;
    memset(hdr + n, ' ', (size_t)pad);
    hdr[n + pad] = '\n';
    uint16_t hl = (uint16_t)(n + pad + 1);
    unsigned char *buf = malloc(10 + hl + len);
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    buf[8] = (unsigned char)(hl & 0xFF);
    buf[9] = (unsigned char)(hl >> 8);
    memcpy(buf + 10, hdr, hl);
    memcpy(buf + 10 + hl, data, len);
    write_file(path, buf, 10 + hl + len);
    free(buf);
}

static int npy_check(uint64_t i, const stk_record_t *rec, void *user)
{
    (void)user;
    float want[6];
    for (int k = 0; k < 6; k++)
        want[k] = (float)i * 0.5f - (float)k;
    return rec->bytes[0] != sizeof want || memcmp(rec->data[0], want, sizeof want) != 0 ||
           rec_i64(rec, 1) != (int64_t)i - 2;
}

static void test_npy(void)
{
    float data[5][6];
    int32_t labels[5];
    for (int i = 0; i < 5; i++) {
        for (int k = 0; k < 6; k++)
            data[i][k] = (float)i * 0.5f - (float)k;
        labels[i] = i - 2; /* negative labels survive the widening to i64 */
    }
    write_npy(tp("x.npy"), "<f4", "False", "(5, 2, 3)", data, sizeof data);
    write_npy(tp("y.npy"), "<i4", "False", "(5,)", labels, sizeof labels);
    CHECK(pack("npy", tp("x.npy"), tp("y.npy"), "-o", tp("npy"), "-q", NULL) == 0);
    CHECK(read_back(tp("npy"), 5, "data:f32[2,3] label:i64[]", npy_check, NULL) == 0);
    write_npy(tp("xf.npy"), "<f4", "True", "(5, 2, 3)", data, sizeof data);
    CHECK(lib_pack(STK_PACK_NPY, tp("xf.npy"), tp("y.npy"), NULL) == STK_EFORMAT);
    CHECK(msg_has("xf.npy") && msg_has("fortran"));
    write_npy(tp("x8.npy"), "<f8", "False", "(5, 3)", data, 5 * 3 * 8);
    CHECK(lib_pack(STK_PACK_NPY, tp("x8.npy"), tp("y.npy"), NULL) == STK_EFORMAT);
    CHECK(msg_has("x8.npy") && msg_has("<f8"));
    write_npy(tp("y4.npy"), "<i4", "False", "(4,)", labels, 16);
    CHECK(lib_pack(STK_PACK_NPY, tp("x.npy"), tp("y4.npy"), NULL) == STK_ESHAPE);
    CHECK(msg_has("y4.npy"));
    write_npy(tp("yf.npy"), "<f4", "False", "(5,)", labels, sizeof labels);
    CHECK(lib_pack(STK_PACK_NPY, tp("x.npy"), tp("yf.npy"), NULL) == STK_EFORMAT);
    CHECK(msg_has("yf.npy") && msg_has("integers"));
    write_file(tp("notnpy.npy"), "hello world", 11);
    CHECK(lib_pack(STK_PACK_NPY, tp("notnpy.npy"), tp("y.npy"), NULL) == STK_EFORMAT);
    CHECK(msg_has("notnpy.npy") && msg_has("magic"));
    /* Too many bytes for the header's shape. */
    float more[6][6] = {{0}};
    write_npy(tp("xl.npy"), "<f4", "False", "(5, 2, 3)", more, sizeof more);
    CHECK(lib_pack(STK_PACK_NPY, tp("xl.npy"), tp("y.npy"), NULL) == STK_EFORMAT);
    CHECK(msg_has("xl.npy") && msg_has("24 bytes after"));
    /* An empty array names the input, and no output folder is left. */
    write_npy(tp("x0.npy"), "<f4", "False", "(0, 2, 3)", data, 0);
    write_npy(tp("y0.npy"), "<i4", "False", "(0,)", labels, 0);
    CHECK(lib_pack(STK_PACK_NPY, tp("x0.npy"), tp("y0.npy"), tp("npy0")) == STK_EEMPTY);
    CHECK(msg_has("x0.npy") && msg_has("no rows"));
    CHECK(pack("npy", tp("x0.npy"), tp("y0.npy"), "-o", tp("npy0"), NULL) == 1);
    CHECK(strstr(err_text, "x0.npy") && !strstr(err_text, "npy0"));
    CHECK(access(tp("npy0"), F_OK) != 0);
}

typedef struct folder_ref {
    const char *content[8];
    int64_t label[8];
} folder_ref_t;

static int folder_check(uint64_t i, const stk_record_t *rec, void *user)
{
    folder_ref_t *r = user;
    size_t len = strlen(r->content[i]);
    return rec->bytes[0] != len || rec->var_extent[0] != (int64_t)len ||
           memcmp(rec->data[0], r->content[i], len) != 0 || rec_i64(rec, 1) != r->label[i];
}

static void test_folder(void)
{
    mkdir(tp("root"), 0755);
    mkdir(tp("root/dog"), 0755);
    mkdir(tp("root/cat"), 0755);
    mkdir(tp("root/cat/sub"), 0755);
    write_file(tp("root/dog/1.jpg"), "woof", 4);
    write_file(tp("root/cat/b.png"), "meow-b", 6);
    write_file(tp("root/cat/a.png"), "meow-a!", 7);
    write_file(tp("root/cat/sub/z.png"), "", 0);
    /* Classes sorted (cat=0, dog=1); folders in sorted path order, files
     * sorted within each, as torchvision's ImageFolder. */
    folder_ref_t ref = {{"meow-a!", "meow-b", "", "woof"}, {0, 0, 0, 1}};
    CHECK(pack("folder", tp("root"), "-o", tp("folder"), "-q", NULL) == 0);
    CHECK(read_back(tp("folder"), 4, "data:u8[-1] label:i64[]", folder_check, &ref) == 0);
    char classes[64];
    slurp(tp("folder/classes.txt"), classes, sizeof classes);
    CHECK(strcmp(classes, "cat\ndog\n") == 0);
    mkdir(tp("root/empty"), 0755);
    CHECK(lib_pack(STK_PACK_FOLDER, tp("root"), NULL, NULL) == STK_EEMPTY);
    CHECK(msg_has("root/empty"));
    CHECK(pack("folder", tp("root"), "-o", tp("folder2"), NULL) == 1);
    CHECK(strstr(err_text, "root/empty") != NULL);
    rmdir(tp("root/empty"));
    CHECK(lib_pack(STK_PACK_FOLDER, tp("nope-root"), NULL, NULL) == -ENOENT);
    CHECK(msg_has("nope-root"));
    mkdir(tp("noclasses"), 0755);
    CHECK(lib_pack(STK_PACK_FOLDER, tp("noclasses"), NULL, NULL) == STK_EEMPTY);
    CHECK(msg_has("noclasses"));
}

static void test_cli(void)
{
    CHECK(pack("--help", NULL) == 0 && strstr(out_text, "verify"));
    const char *cmds[] = {"idx", "cifar", "npy", "folder", "verify", "info"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        CHECK(pack(cmds[i], "--help", NULL) == 0 && strstr(out_text, "usage"));
    CHECK(pack("bogus", NULL) == 2);
    CHECK(pack("idx", tp("nope-images"), tp("nope-labels"), "-o", tp("x"), NULL) == 1);
    CHECK(strstr(err_text, "nope-images") != NULL);
    CHECK(pack("idx", tp("img.idx"), tp("lab.idx"), NULL) == 2); /* no -o */
    CHECK(pack("idx", tp("img.idx"), tp("lab.idx"), "-o", tp("x"), "--level", "99", NULL) == 2);
    /* Every number is checked whole: no "abc" as 0, "2x" as 2, "-1" as
     * UINT64_MAX. */
    const char *bad_numbers[][2] = {
        {"--records-per-shard", "abc"}, {"-n", "2x"}, {"--records-per-shard", "-1"},      {"--limit", "0"},
        {"--limit", "1e3"},  {"--level", "-1"},     {"--level", "3.5"}, {"--dict-size", "100"},
        {"--dict-size", " 4096"}, {"--records-per-shard", "99999999999999999999"}, {"--limit", ""},
    };
    for (size_t i = 0; i < sizeof bad_numbers / sizeof bad_numbers[0]; i++) {
        int rc = pack("idx", tp("img.idx"), tp("lab.idx"), "-o", tp("x"), bad_numbers[i][0],
                      bad_numbers[i][1], NULL);
        const char *opt = strcmp(bad_numbers[i][0], "-n") ? bad_numbers[i][0] : "--records-per-shard";
        if (rc != 2 || !strstr(err_text, opt)) {
            fprintf(stderr, "%s '%s': exit %d, %s\n", bad_numbers[i][0], bad_numbers[i][1], rc,
                    err_text);
            failures++;
        }
    }
    CHECK(access(tp("x"), F_OK) != 0);
    /* A folder that holds a set is replaced only with --force. */
    CHECK(pack("idx", tp("img.idx"), tp("lab.idx"), "-o", tp("idx"), "-q", NULL) == 1);
    CHECK(strstr(err_text, "not empty") && strstr(err_text, "--force"));
    CHECK(pack("idx", tp("img.idx"), tp("lab.idx"), "-o", tp("idx"), "-q", "--force", "--limit",
               "3", NULL) == 0);
    CHECK(pack("verify", tp("idx"), NULL) == 0 && strstr(out_text, "records: 3"));
    CHECK(pack("verify", tp("nope-dir"), NULL) == 1);
    CHECK(strstr(err_text, "nope-dir") != NULL);
    CHECK(pack("info", tp("nope-dir"), NULL) == 1);
    /* verify finds a flipped byte and names the shard and record. */
    CHECK(pack("verify", tp("c10"), NULL) == 0);
    stk_shardset_t *set = NULL;
    CHECK(stk_shardset_create(&set, tp("c10")) == 0);
    stk_record_loc_t loc;
    CHECK(stk_shardset_locate(set, 6, &loc) == 0);
    stk_shardset_destroy(&set);
    int fd = open(tp("c10/shard-00001.stk"), O_RDWR);
    unsigned char b = 0;
    CHECK(pread(fd, &b, 1, (off_t)(loc.offset + 9)) == 1);
    b ^= 1;
    CHECK(pwrite(fd, &b, 1, (off_t)(loc.offset + 9)) == 1);
    close(fd);
    CHECK(pack("verify", tp("c10"), NULL) == 1);
    CHECK(strstr(err_text, "shard-00001.stk") && strstr(err_text, "record 1 (global 6)"));
    CHECK(strstr(out_text, "1 bad"));
}


/* ---- Crash safety of a re-pack ------------------------------------------
 * A child re-packs a set folder under ptrace. One run counts the file-system
 * calls the pack makes; then for each k the child is killed (SIGKILL) at the
 * entry of call k, or call k fails with ENOSPC (skipped, its result
 * replaced), as a full disk or a power cut would. After each run the folder
 * must hold one whole set that verifies, the old one or the new one, and
 * nothing but .tmp- names beside it. The new set has fewer shards than the
 * old, so a mix of the two (what the old writer left) would show. */

#define OLD_N 30
#define NEW_N 12

static void make_set(const char *dir, uint64_t n, int64_t label0, int overwrite)
{
    stk_schema_t s = {0};
    const int64_t shape[1] = {8};
    stk_schema_add(&s, "x", STK_DTYPE_U8, 1, shape);
    stk_schema_add(&s, "label", STK_DTYPE_I64, 0, NULL);
    unsigned char x[64][8];
    int64_t lab[64];
    for (uint64_t i = 0; i < n; i++) {
        memset(x[i], (int)(i + (uint64_t)label0), 8);
        lab[i] = label0 + (int64_t)i;
    }
    const void *fields[2] = {x, lab};
    stk_pack_source_t *src = NULL;
    stk_pack_config_t cfg;
    stk_pack_config_default(&cfg);
    cfg.zstd_level = 0;
    cfg.records_per_shard = 10;
    cfg.overwrite = overwrite;
    if (stk_pack_source_create_arrays(&src, &s, fields, n) || stk_pack_write(src, dir, &cfg, NULL)) {
        fprintf(stderr, "make_set %s: %s\n", dir, stk_error_message());
        _exit(1);
    }
    stk_pack_source_destroy(&src);
}

/* Which set the folder holds: 1 old, 2 new, 0 none or a broken one. */
static int which_set(const char *dir)
{
    stk_pack_verify_result_t vr;
    if (stk_pack_verify(dir, &vr, NULL, NULL, NULL) != 0) {
        fprintf(stderr, "verify %s: %s\n", dir, stk_error_message());
        return 0;
    }
    stk_shardset_t *set = NULL;
    if (stk_shardset_create(&set, dir))
        return 0;
    uint64_t n = stk_shardset_len(set);
    int64_t want0 = n == OLD_N ? 0 : n == NEW_N ? 1000 : -1;
    stk_decoder_t *dec = NULL;
    unsigned char buf[64];
    int ok = want0 >= 0 && stk_decoder_create(&dec, set) == 0;
    for (uint64_t i = 0; ok && i < n; i++) {
        stk_record_t rec;
        int64_t l;
        ok = stk_shardset_get(set, dec, i, buf, sizeof buf, &rec) == 0;
        if (ok) {
            memcpy(&l, rec.data[1], 8);
            ok = l == want0 + (int64_t)i;
        }
    }
    stk_decoder_destroy(&dec);
    stk_shardset_destroy(&set);
    return ok ? (want0 == 0 ? 1 : 2) : 0;
}

/* Entries of dir other than name: each must hold ".tmp-"; returns how
 * many there are (removing them), or -1 for a stranger. */
static int sweep_beside(const char *dir, const char *name)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || !strcmp(e->d_name, name))
            continue;
        if (!strstr(e->d_name, ".tmp-")) {
            fprintf(stderr, "%s/%s left beside the set\n", dir, e->d_name);
            n = -1;
            break;
        }
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        nftw(p, rm_one, 16, FTW_DEPTH | FTW_PHYS);
        n++;
    }
    if (d)
        closedir(d);
    return n;
}

#if defined(__x86_64__)
static int fs_call(long nr, int enospc)
{
    switch (nr) {
    case SYS_write: case SYS_pwrite64: case SYS_fsync: case SYS_fdatasync: case SYS_openat:
    case SYS_mkdir: case SYS_mkdirat: case SYS_rename: case SYS_renameat: case SYS_renameat2:
    case SYS_close:
        return 1;
    case SYS_unlink: case SYS_unlinkat: case SYS_rmdir: case SYS_getdents64:
        return !enospc; /* cleanup calls: a kill matters there, an error is only logged */
    default:
        return 0;
    }
}

/* Runs one traced re-pack of dir. mode 0 (3): count the calls that mode 1
 * (2) would pick in *calls; 1: SIGKILL at the entry of call k; 2: call k
 * fails with ENOSPC. Returns the
 * child's exit status (128 + signal when killed). */
static int traced_repack(const char *dir, int mode, long k, long *calls)
{
    pid_t pid = fork();
    if (pid == 0) {
        ptrace(PTRACE_TRACEME, 0, NULL, NULL);
        raise(SIGSTOP);
        stk_pack_source_t *src = NULL;
        stk_schema_t s = {0};
        const int64_t shape[1] = {8};
        stk_schema_add(&s, "x", STK_DTYPE_U8, 1, shape);
        stk_schema_add(&s, "label", STK_DTYPE_I64, 0, NULL);
        unsigned char x[NEW_N][8];
        int64_t lab[NEW_N];
        for (int i = 0; i < NEW_N; i++) {
            memset(x[i], i + 1000, 8);
            lab[i] = 1000 + i;
        }
        const void *fields[2] = {x, lab};
        stk_pack_config_t cfg;
        stk_pack_config_default(&cfg);
        cfg.zstd_level = 0;
        cfg.records_per_shard = 10;
        cfg.overwrite = 1;
        int rc = stk_pack_source_create_arrays(&src, &s, fields, NEW_N);
        if (!rc)
            rc = stk_pack_write(src, dir, &cfg, NULL);
        stk_pack_source_destroy(&src);
        _exit(rc ? 1 : 0);
    }
    int st;
    waitpid(pid, &st, 0);
    ptrace(PTRACE_SETOPTIONS, pid, NULL, (void *)(long)(PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL));
    long n = 0;
    int in_call = 0, inject = 0, sig = 0;
    for (;;) {
        ptrace(PTRACE_SYSCALL, pid, NULL, (void *)(long)sig);
        sig = 0;
        if (waitpid(pid, &st, 0) < 0)
            return -1;
        if (WIFEXITED(st) || WIFSIGNALED(st))
            break;
        if (WSTOPSIG(st) != (SIGTRAP | 0x80)) {
            sig = WSTOPSIG(st) == SIGTRAP ? 0 : WSTOPSIG(st);
            continue;
        }
        struct user_regs_struct r;
        ptrace(PTRACE_GETREGS, pid, NULL, &r);
        if (!in_call) {
            in_call = 1;
            if (fs_call((long)r.orig_rax, mode >= 2) && ++n == k) {
                if (mode == 1) {
                    kill(pid, SIGKILL);
                    waitpid(pid, &st, 0);
                    break;
                }
                if (mode == 2) {
                    r.orig_rax = (unsigned long long)-1; /* skip the call */
                    ptrace(PTRACE_SETREGS, pid, NULL, &r);
                    inject = 1;
                }
            }
        } else {
            in_call = 0;
            if (inject) {
                r.rax = (unsigned long long)-ENOSPC;
                ptrace(PTRACE_SETREGS, pid, NULL, &r);
                inject = 0;
            }
        }
    }
    if (calls)
        *calls = n;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
#endif

static int test_crash(void)
{
#if !defined(__x86_64__)
    fprintf(stderr, "SKIP: the ptrace fault injector reads x86-64 registers only\n");
    return 77;
#else
    char parent[600], dir[700];
    snprintf(parent, sizeof parent, "%s/crash", tmpdir);
    snprintf(dir, sizeof dir, "%s/set", parent);
    mkdir(parent, 0755);
    make_set(dir, OLD_N, 0, 0);
    long calls = 0;
    int rc = traced_repack(dir, 0, 0, &calls);
    if (rc != 0 || which_set(dir) != 2 || calls < 10) {
        fprintf(stderr, "traced re-pack: exit %d, %ld calls, set %d\n", rc, calls, which_set(dir));
        return 1;
    }
    for (int mode = 1; mode <= 2; mode++) {
        long total = 0;
        make_set(dir, OLD_N, 0, 1);
        traced_repack(dir, mode == 1 ? 0 : 3, 0, &total);
        int olds = 0, news = 0;
        for (long k = 1; k <= total; k++) {
            make_set(dir, OLD_N, 0, 1);
            if (sweep_beside(parent, "set") < 0)
                return 1;
            rc = traced_repack(dir, mode, k, NULL);
            int w = which_set(dir);
            int beside = sweep_beside(parent, "set");
            const char *what = mode == 1 ? "SIGKILL at" : "ENOSPC from";
            if (w == 0 || beside < 0) {
                fprintf(stderr, "%s file-system call %ld of %ld: the folder holds no whole set\n",
                        what, k, total);
                return 1;
            }
            if (mode == 1 && rc != 128 + SIGKILL) {
                fprintf(stderr, "%s call %ld: child exit %d, not killed\n", what, k, rc);
                return 1;
            }
            /* A failed pack that says so leaves the old set, and cleans up
             * after itself (unless the failure came once the new set was in). */
            if (mode == 2 && rc != 0 && w == 1 && beside != 0) {
                fprintf(stderr, "%s call %ld: %d staging folders left\n", what, k, beside);
                return 1;
            }
            if (mode == 2 && rc == 0 && w != 2) {
                fprintf(stderr, "%s call %ld: pack said done, the folder holds the old set\n", what, k);
                return 1;
            }
            olds += w == 1;
            news += w == 2;
        }
        printf("%s at each of %ld file-system calls: old set %d times, new set %d times\n",
               mode == 1 ? "SIGKILL" : "ENOSPC", total, olds, news);
        if (!olds || !news) {
            fprintf(stderr, "the calls did not reach both sides of the switch\n");
            return 1;
        }
    }
    return 0;
#endif
}

int main(int argc, char **argv)
{
    const char *root = getenv("STK_BUILD_ROOT");
    if (!root) {
        fprintf(stderr, "STK_BUILD_ROOT not set (run through meson test)\n");
        return 1;
    }
    snprintf(tool, sizeof tool, "%s/tools/stoker-pack", root);
    if (access(tool, X_OK) != 0) {
        fprintf(stderr, "%s not built\n", tool);
        return 1;
    }
    snprintf(tmpdir, sizeof tmpdir, "/tmp/stk_e2e_pack_XXXXXX");
    if (!mkdtemp(tmpdir))
        return 1;
    int rc;
    if (argc > 1 && strcmp(argv[1], "fmnist") == 0) {
        rc = test_fmnist();
    } else if (argc > 1 && strcmp(argv[1], "crash") == 0) {
        rc = test_crash();
    } else {
        test_idx();
        test_cifar();
        test_npy();
        test_folder();
        test_cli();
        rc = failures ? 1 : 0;
    }
    nftw(tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    if (rc == 0)
        printf("ok\n");
    return rc;
}
