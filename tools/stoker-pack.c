/* SPDX-License-Identifier: MIT */
/* stoker-pack: converts IDX, CIFAR binary, .npy and image folders into .stk
 * shard sets, and checks (verify) or describes (info) a packed set. The
 * input formats live in stoker-pack-input.c; the format in the library. */
#define _GNU_SOURCE
#include "stoker-pack.h"
#include "tool_clock.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* --level auto: compress a sample of this many records at AUTO_LEVEL with a
 * trained dictionary, and compress the set only when stored/raw is below
 * AUTO_RATIO. Above it, the disk saved is not worth a decode per sample
 * (a raw record is a plain copy for the loader). */
#define AUTO_SAMPLE 2000
#define AUTO_LEVEL 3
#define AUTO_RATIO 0.5

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

typedef struct opts {
    const char *out;
    const char *prefix;
    const char *field;
    int level; /* -1: auto */
    int dict;
    size_t dict_size;
    uint64_t per_shard;
    uint64_t limit;
    int quiet;
    int cifar100;
} opts_t;

typedef struct progress {
    int on;
    uint64_t total;
    int last_pct;
    const char *what;
} progress_t;

static void progress_init(progress_t *p, const char *what, uint64_t total, int quiet)
{
    p->on = !quiet && isatty(2);
    p->total = total;
    p->last_pct = -1;
    p->what = what;
}

static void progress_update(progress_t *p, uint64_t done)
{
    if (!p->on || p->total == 0)
        return;
    int pct = (int)(done * 100 / p->total);
    if (pct == p->last_pct)
        return;
    p->last_pct = pct;
    char bar[41];
    int fill = pct * 40 / 100;
    for (int i = 0; i < 40; i++)
        bar[i] = i < fill ? '#' : ' ';
    bar[40] = '\0';
    fprintf(stderr, "\r%s [%s] %3d%% %" PRIu64 "/%" PRIu64, p->what, bar, pct, done, p->total);
    if (done == p->total)
        fputc('\n', stderr);
}

static void usage_pack(FILE *f, const char *cmd)
{
    if (!strcmp(cmd, "idx"))
        fprintf(f, "usage: stoker-pack idx IMAGES LABELS -o DIR [options]\n"
                   "  IDX images (u8 or i8, gzip or plain) and u8 labels, as MNIST and\n"
                   "  Fashion-MNIST ship them. Schema: image:u8[1,H,W] label:i64[]\n");
    else if (!strcmp(cmd, "cifar"))
        fprintf(f, "usage: stoker-pack cifar FILE... -o DIR [--cifar100] [options]\n"
                   "  CIFAR-10 binary batches (<label><3072 bytes CHW>), or with --cifar100\n"
                   "  (<coarse><fine><3072>). Schema: image:u8[3,32,32] [coarse_label:i64[]]\n"
                   "  label:i64[]\n");
    else if (!strcmp(cmd, "npy"))
        fprintf(f, "usage: stoker-pack npy DATA LABELS -o DIR [--field NAME] [options]\n"
                   "  DATA: .npy of shape (N, ...) in u1 i1 i4 i8 f2 f4, C order; LABELS:\n"
                   "  integer .npy of shape (N,). Schema: data:<dtype>[...] label:i64[]\n");
    else if (!strcmp(cmd, "folder"))
        fprintf(f, "usage: stoker-pack folder ROOT -o DIR [options]\n"
                   "  ROOT/<class>/.../<file>, as torchvision ImageFolder: classes are the\n"
                   "  subfolders in sorted order. Each file is stored as bytes.\n"
                   "  Schema: data:u8[-1] label:i64[]; writes DIR/classes.txt.\n");
    fprintf(f, "options:\n"
               "  -o, --output DIR          output directory (created if needed)\n"
               "  -n, --records-per-shard N records per shard file (default 10000; 0 = one)\n"
               "  -l, --level N|auto        zstd level 0..22, 0 stores raw (default auto:\n"
               "                            compress a %d-record sample at level %d with a\n"
               "                            dictionary; compress only if stored/raw < %.2f)\n"
               "      --dict / --no-dict    train a zstd dictionary (default on)\n"
               "      --dict-size BYTES     dictionary size (default 65536)\n"
               "      --limit N             pack only the first N records\n"
               "      --prefix NAME         shard file prefix (default shard)\n"
               "  -q, --quiet               no progress bar or summary\n"
               "  -h, --help                this text\n",
            AUTO_SAMPLE, AUTO_LEVEL, AUTO_RATIO);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: stoker-pack COMMAND ...\n"
               "  idx IMAGES LABELS -o DIR   pack IDX (MNIST, Fashion-MNIST) files\n"
               "  cifar FILE... -o DIR       pack CIFAR-10/100 binary batches\n"
               "  npy DATA LABELS -o DIR     pack a .npy data array and its labels\n"
               "  folder ROOT -o DIR         pack a folder with one subfolder per class\n"
               "  verify DIR                 check every record's checksum\n"
               "  info DIR                   print the schema and shard list\n"
               "Run 'stoker-pack COMMAND --help' for options.\n");
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-')
        return -1;
    *out = v;
    return 0;
}

/* Reads up to AUTO_SAMPLE records and estimates the compressed ratio. */
static int choose_level(pack_src_t *src, const opts_t *o, int *level, double *ratio)
{
    uint64_t n = src->count < AUTO_SAMPLE ? src->count : AUTO_SAMPLE;
    void **recs = calloc(n ? n : 1, sizeof *recs);
    size_t *lens = calloc(n ? n : 1, sizeof *lens);
    int rc = (!recs || !lens) ? -1 : 0;
    if (rc)
        snprintf(src->err, sizeof src->err, "out of memory");
    for (uint64_t i = 0; !rc && i < n; i++) {
        const void *data[STK_MAX_FIELDS] = {0};
        int64_t ext[STK_MAX_FIELDS];
        for (int f = 0; f < STK_MAX_FIELDS; f++)
            ext[f] = -1;
        if ((rc = src->next(src, data, ext)))
            break;
        size_t len;
        if (stk_record_raw_size(&src->schema, ext, &len) || !(recs[i] = malloc(len ? len : 1)) ||
            stk_record_build(&src->schema, data, ext, recs[i], len, &lens[i])) {
            snprintf(src->err, sizeof src->err, "sample record %" PRIu64 ": %s", i,
                     stk_error_message());
            rc = -1;
        }
    }
    if (!rc) {
        stk_writer_config_t cfg;
        stk_writer_config_default(&cfg);
        cfg.zstd_level = AUTO_LEVEL;
        cfg.use_dict = o->dict;
        cfg.dict_size = o->dict_size;
        if (stk_shard_estimate_ratio((const void *const *)recs, lens, n, &cfg, ratio)) {
            snprintf(src->err, sizeof src->err, "%s", stk_error_message());
            rc = -1;
        }
        *level = *ratio < AUTO_RATIO ? AUTO_LEVEL : 0;
    }
    for (uint64_t i = 0; recs && i < n; i++)
        free(recs[i]);
    free(recs);
    free(lens);
    if (!rc)
        rc = src->rewind(src);
    return rc;
}

static int run_pack(pack_src_t *src, const opts_t *o)
{
    int level = o->level;
    double est = -1;
    if (level < 0) {
        if (choose_level(src, o, &level, &est)) {
            fprintf(stderr, "stoker-pack: %s\n", src->err);
            return 1;
        }
        if (!o->quiet)
            fprintf(stderr,
                    "stoker-pack: level auto: sample compresses to %.3f at level %d%s -> %s\n",
                    est, AUTO_LEVEL, o->dict ? " with a dictionary" : "",
                    level ? "compress" : "store raw");
    }
    stk_writer_config_t cfg;
    stk_writer_config_default(&cfg);
    cfg.zstd_level = level;
    cfg.use_dict = o->dict;
    cfg.dict_size = o->dict_size;
    cfg.records_per_shard = o->per_shard;
    cfg.prefix = o->prefix;
    stk_writer_t *w = NULL;
    if (stk_writer_create(&w, o->out, &src->schema, &cfg)) {
        fprintf(stderr, "stoker-pack: %s\n", stk_error_message());
        return 1;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    progress_t pr;
    progress_init(&pr, "packing", src->count, o->quiet);
    double t0 = tool_now_s();
    int rc = 0;
    for (uint64_t i = 0; i < src->count; i++) {
        if (interrupted) {
            fprintf(stderr, "\nstoker-pack: interrupted; removing partial shards\n");
            rc = 130;
            break;
        }
        const void *data[STK_MAX_FIELDS] = {0};
        int64_t ext[STK_MAX_FIELDS];
        for (int f = 0; f < STK_MAX_FIELDS; f++)
            ext[f] = -1;
        if (src->next(src, data, ext)) {
            fprintf(stderr, "\nstoker-pack: %s\n", src->err);
            rc = 1;
            break;
        }
        if (stk_writer_add(w, data, ext)) {
            fprintf(stderr, "\nstoker-pack: record %" PRIu64 ": %s\n", i, stk_error_message());
            rc = 1;
            break;
        }
        if ((i & 255) == 0 || i + 1 == src->count)
            progress_update(&pr, i + 1);
    }
    if (!rc && src->side_files && src->side_files(src, o->out)) {
        fprintf(stderr, "stoker-pack: %s\n", src->err);
        rc = 1;
    }
    if (!rc && stk_writer_finish(w)) {
        fprintf(stderr, "stoker-pack: %s\n", stk_error_message());
        rc = 1;
    }
    double dt = tool_now_s() - t0;
    stk_writer_stats_t st;
    stk_writer_stats(w, &st);
    stk_writer_destroy(&w);
    if (rc)
        return rc;
    if (!o->quiet) {
        char schema[1024];
        stk_schema_format(&src->schema, schema, sizeof schema);
        printf("packed %" PRIu64 " records into %" PRIu64 " shard(s) in %s in %.2f s\n",
               st.records, st.shards, o->out, dt);
        printf("schema: %s\n", schema);
        printf("level %d, dictionary %" PRIu64 " bytes; raw %" PRIu64 " bytes, stored %" PRIu64
               " bytes, ratio %.4f\n",
               level, st.dict_bytes, st.raw_bytes, st.stored_bytes,
               st.raw_bytes ? (double)st.stored_bytes / (double)st.raw_bytes : 1.0);
    }
    return 0;
}

static int cmd_pack(const char *cmd, int argc, char **argv)
{
    opts_t o = {.level = -1, .dict = 1, .dict_size = 64 << 10, .per_shard = 10000,
                .prefix = "shard", .field = "data"};
    static const struct option lo[] = {
        {"output", required_argument, 0, 'o'}, {"records-per-shard", required_argument, 0, 'n'},
        {"level", required_argument, 0, 'l'},  {"dict", no_argument, 0, 'D'},
        {"no-dict", no_argument, 0, 'N'},      {"dict-size", required_argument, 0, 'S'},
        {"limit", required_argument, 0, 'L'},  {"prefix", required_argument, 0, 'P'},
        {"field", required_argument, 0, 'F'},  {"cifar100", no_argument, 0, 'C'},
        {"quiet", no_argument, 0, 'q'},        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    int c;
    uint64_t v;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:n:l:qh", lo, NULL)) != -1) {
        switch (c) {
        case 'o': o.out = optarg; break;
        case 'n':
            if (parse_u64(optarg, &o.per_shard)) {
                fprintf(stderr, "stoker-pack: bad --records-per-shard '%s'\n", optarg);
                return 2;
            }
            break;
        case 'l':
            if (!strcmp(optarg, "auto"))
                o.level = -1;
            else if (parse_u64(optarg, &v) || v > 22) {
                fprintf(stderr, "stoker-pack: bad --level '%s' (0..22 or auto)\n", optarg);
                return 2;
            } else
                o.level = (int)v;
            break;
        case 'D': o.dict = 1; break;
        case 'N': o.dict = 0; break;
        case 'S':
            if (parse_u64(optarg, &v) || v < 256 || v > (1u << 30)) {
                fprintf(stderr, "stoker-pack: bad --dict-size '%s' (256..2^30)\n", optarg);
                return 2;
            }
            o.dict_size = (size_t)v;
            break;
        case 'L':
            if (parse_u64(optarg, &o.limit) || o.limit == 0) {
                fprintf(stderr, "stoker-pack: bad --limit '%s'\n", optarg);
                return 2;
            }
            break;
        case 'P': o.prefix = optarg; break;
        case 'F': o.field = optarg; break;
        case 'C': o.cifar100 = 1; break;
        case 'q': o.quiet = 1; break;
        case 'h': usage_pack(stdout, cmd); return 0;
        default: usage_pack(stderr, cmd); return 2;
        }
    }
    int npos = argc - optind;
    char **pos = argv + optind;
    int want = !strcmp(cmd, "idx") || !strcmp(cmd, "npy") ? 2 : !strcmp(cmd, "folder") ? 1 : -1;
    if ((want > 0 && npos != want) || (want < 0 && npos < 1) || !o.out) {
        fprintf(stderr, "stoker-pack %s: %s\n", cmd,
                !o.out ? "missing -o DIR" : "wrong number of input files");
        usage_pack(stderr, cmd);
        return 2;
    }
    pack_src_t src;
    int rc;
    if (!strcmp(cmd, "idx"))
        rc = pack_src_idx(&src, pos[0], pos[1], o.limit);
    else if (!strcmp(cmd, "cifar"))
        rc = pack_src_cifar(&src, pos, npos, o.cifar100, o.limit);
    else if (!strcmp(cmd, "npy"))
        rc = pack_src_npy(&src, pos[0], pos[1], o.field, o.limit);
    else
        rc = pack_src_folder(&src, pos[0], o.limit);
    if (rc) {
        fprintf(stderr, "stoker-pack: %s\n", src.err);
        pack_src_close(&src);
        return 1;
    }
    rc = run_pack(&src, &o);
    pack_src_close(&src);
    return rc;
}

static int open_set(const char *cmd, int argc, char **argv, stk_shardset_t **set, int *quiet)
{
    *quiet = 0;
    const char *dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("usage: stoker-pack %s [-q] PATH\n  PATH: a shard, a directory, a glob or a "
                   "manifest.\n%s",
                   cmd,
                   !strcmp(cmd, "verify")
                       ? "  Decodes every record, checks its checksum and size, prints a summary;\n"
                         "  exits 1 if any record is bad.\n"
                       : "  Prints the schema and the shard list.\n");
            return 0;
        } else if (!strcmp(argv[i], "-q") || !strcmp(argv[i], "--quiet")) {
            *quiet = 1;
        } else if (!dir) {
            dir = argv[i];
        } else {
            fprintf(stderr, "stoker-pack %s: one PATH only\n", cmd);
            return 2;
        }
    }
    if (!dir) {
        fprintf(stderr, "usage: stoker-pack %s PATH\n", cmd);
        return 2;
    }
    if (stk_shardset_open(set, dir)) {
        fprintf(stderr, "stoker-pack: %s\n", stk_error_message());
        return 1;
    }
    return -1;
}

static void print_summary(stk_shardset_t *set)
{
    char schema[1024];
    stk_schema_format(stk_shardset_schema(set), schema, sizeof schema);
    uint64_t raw = 0, stored = 0, file = 0, dict = 0;
    for (uint32_t i = 0; i < stk_shardset_num_shards(set); i++) {
        stk_shard_info_t si;
        stk_shardset_shard_info(set, i, &si);
        raw += si.raw_bytes;
        stored += si.stored_bytes;
        file += si.file_bytes;
        dict = si.dict_bytes;
    }
    printf("schema:  %s\n", schema);
    printf("shards:  %u\n", stk_shardset_num_shards(set));
    printf("records: %" PRIu64 "\n", stk_shardset_len(set));
    printf("bytes:   raw %" PRIu64 ", stored %" PRIu64 " (ratio %.4f), files %" PRIu64
           ", dictionary %" PRIu64 "\n",
           raw, stored, raw ? (double)stored / (double)raw : 1.0, file, dict);
}

static int cmd_info(int argc, char **argv)
{
    stk_shardset_t *set;
    int quiet;
    int rc = open_set("info", argc, argv, &set, &quiet);
    if (rc >= 0)
        return rc;
    print_summary(set);
    for (uint32_t i = 0; i < stk_shardset_num_shards(set); i++) {
        stk_shard_info_t si;
        stk_shardset_shard_info(set, i, &si);
        printf("  %s: %" PRIu64 " records from %" PRIu64 ", %" PRIu64
               " bytes, level %d, dictionary %u bytes\n",
               stk_shardset_shard_path(set, i), si.records, si.first_index, si.file_bytes,
               si.zstd_level, si.dict_bytes);
    }
    stk_shardset_close(&set);
    return 0;
}

static int cmd_verify(int argc, char **argv)
{
    stk_shardset_t *set;
    int quiet;
    int rc = open_set("verify", argc, argv, &set, &quiet);
    if (rc >= 0)
        return rc;
    stk_decoder_t *dec = NULL;
    uint64_t cap = stk_shardset_max_raw(set);
    void *buf = malloc(cap ? cap : 1);
    if (!buf || stk_decoder_create(&dec, set)) {
        fprintf(stderr, "stoker-pack: %s\n", buf ? stk_error_message() : "out of memory");
        free(buf);
        stk_shardset_close(&set);
        return 1;
    }
    uint64_t n = stk_shardset_len(set), bad = 0;
    progress_t pr;
    progress_init(&pr, "verifying", n, quiet);
    double t0 = tool_now_s();
    for (uint64_t i = 0; i < n; i++) {
        stk_record_t rec;
        if (stk_shardset_get(set, dec, i, buf, cap, &rec)) {
            if (bad++ < 20)
                fprintf(stderr, "%sstoker-pack: %s\n", pr.on ? "\n" : "", stk_error_message());
        }
        if ((i & 1023) == 0 || i + 1 == n)
            progress_update(&pr, i + 1);
    }
    double dt = tool_now_s() - t0;
    print_summary(set);
    printf("verify:  %" PRIu64 " records checked in %.2f s, %" PRIu64 " bad: %s\n", n, dt, bad,
           bad ? "FAILED" : "OK");
    free(buf);
    stk_decoder_destroy(&dec);
    stk_shardset_close(&set);
    return bad ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "idx") || !strcmp(cmd, "cifar") || !strcmp(cmd, "npy") ||
        !strcmp(cmd, "folder"))
        return cmd_pack(cmd, argc - 1, argv + 1);
    if (!strcmp(cmd, "verify"))
        return cmd_verify(argc - 1, argv + 1);
    if (!strcmp(cmd, "info"))
        return cmd_info(argc - 1, argv + 1);
    fprintf(stderr, "stoker-pack: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
