/* SPDX-License-Identifier: MIT */
/* End-to-end: runs the stoker-pack binary on real inputs and reads every
 * record back through the library, bit for bit. "fmnist" packs the first
 * 2,000 Fashion-MNIST records from the Debian package (skips, exit 77, if
 * it is absent); "formats" packs IDX, CIFAR-10/100, .npy and folder inputs
 * that it writes itself, and checks the CLI's error exits and messages. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

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

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(p);
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

/* Opens a packed set and hands every record to check(i, rec). */
typedef int (*rec_check_fn)(uint64_t i, const stk_record_t *rec, void *user);
static int read_back(const char *dir, uint64_t want_n, const char *want_schema, rec_check_fn fn,
                     void *user)
{
    stk_shardset_t *set = NULL;
    if (stk_shardset_open(&set, dir)) {
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
    stk_shardset_close(&set);
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
    /* Label count disagreeing with the images. */
    lab[7] = 4;
    write_file(tp("lab4.idx"), lab, sizeof lab - 1);
    CHECK(pack("idx", tp("img.idx"), tp("lab4.idx"), "-o", tp("idx2"), NULL) != 0);
    CHECK(strstr(err_text, "lab4.idx") != NULL);
    /* Truncated image data. */
    write_file(tp("short.idx"), img, sizeof img - 3);
    CHECK(pack("idx", tp("short.idx"), tp("lab.idx"), "-o", tp("idx3"), "--level", "0", NULL) !=
          0);
    CHECK(strstr(err_text, "short.idx") && strstr(err_text, "truncated"));
    CHECK(access(tp("idx3/shard.manifest"), F_OK) != 0);
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
    CHECK(pack("cifar", "--cifar100", tp("c10_a.bin"), "-o", tp("c100x"), NULL) != 0);
    CHECK(strstr(err_text, "c10_a.bin") != NULL);
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
    CHECK(pack("npy", tp("xf.npy"), tp("y.npy"), "-o", tp("npyf"), NULL) != 0);
    CHECK(strstr(err_text, "xf.npy") && strstr(err_text, "fortran"));
    write_npy(tp("x8.npy"), "<f8", "False", "(5, 3)", data, 5 * 3 * 8);
    CHECK(pack("npy", tp("x8.npy"), tp("y.npy"), "-o", tp("npy8"), NULL) != 0);
    CHECK(strstr(err_text, "x8.npy") && strstr(err_text, "<f8"));
    write_npy(tp("y4.npy"), "<i4", "False", "(4,)", labels, 16);
    CHECK(pack("npy", tp("x.npy"), tp("y4.npy"), "-o", tp("npy4"), NULL) != 0);
    CHECK(strstr(err_text, "y4.npy") != NULL);
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
    CHECK(pack("folder", tp("root"), "-o", tp("folder2"), NULL) != 0);
    CHECK(strstr(err_text, "root/empty") != NULL);
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
    CHECK(pack("verify", tp("nope-dir"), NULL) == 1);
    CHECK(strstr(err_text, "nope-dir") != NULL);
    CHECK(pack("info", tp("nope-dir"), NULL) == 1);
    /* verify finds a flipped byte and names the shard and record. */
    CHECK(pack("verify", tp("c10"), NULL) == 0);
    stk_shardset_t *set = NULL;
    CHECK(stk_shardset_open(&set, tp("c10")) == 0);
    stk_record_loc_t loc;
    CHECK(stk_shardset_locate(set, 6, &loc) == 0);
    stk_shardset_close(&set);
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
