/* SPDX-License-Identifier: MIT */
/* stoker-pack: converts IDX, CIFAR binary, .npy, image folders and text into .stk
 * shard sets, and checks (verify) or describes (info) a packed set. A thin
 * CLI: the importers are the library's (include/stoker/pack.h). */
#define _GNU_SOURCE
#include "stoker/pack.h"
#include "tool_args.h"
#include "tool_clock.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

typedef struct progress {
    int on;
    int last_pct;
    const char *what;
} progress_t;

static void progress_init(progress_t *p, const char *what, int quiet)
{
    p->on = !quiet && isatty(2);
    p->last_pct = -1;
    p->what = what;
}

/* Progress callback of stk_pack_write / stk_pack_verify: draws the bar
 * and stops the library's loop after SIGINT or SIGTERM. */
static int progress_update(uint64_t done, uint64_t total, void *user)
{
    progress_t *p = user;
    if (interrupted)
        return 1;
    if (!p->on || total == 0)
        return 0;
    int pct = (int)(done * 100 / total);
    if (pct == p->last_pct)
        return 0;
    p->last_pct = pct;
    char bar[41];
    int fill = pct * 40 / 100;
    for (int i = 0; i < 40; i++)
        bar[i] = i < fill ? '#' : ' ';
    bar[40] = '\0';
    fprintf(stderr, "\r%s [%s] %3d%% %" PRIu64 "/%" PRIu64, p->what, bar, pct, done, total);
    if (done == total)
        fputc('\n', stderr);
    return 0;
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
    else if (!strcmp(cmd, "text"))
        fprintf(f, "usage: stoker-pack text FILE -o DIR [--vocab FILE [--chars] [--unk-id N]] [options]\n"
                   "  One record per line of FILE (gzip or plain; the newline and a '\\r'\n"
                   "  before it dropped) as token ids. Without --vocab each byte is a token:\n"
                   "  schema tokens:u8[-1]. With --vocab (one token per line, line k = id k)\n"
                   "  a line splits into whitespace-separated words, or into UTF-8\n"
                   "  characters with --chars; a token not in the vocabulary becomes\n"
                   "  --unk-id (default 0; -1: an error). Schema tokens:i32[-1]. Writes\n"
                   "  DIR/text.json (and DIR/vocab.txt). --field names the field.\n");
    fprintf(f, "options:\n"
               "  -o, --output DIR          output directory (created if needed)\n"
               "  -n, --records-per-shard N records per shard file (default 10000; 0 = one)\n"
               "  -l, --level N|auto        zstd level 0..22, 0 stores raw (default auto:\n"
               "                            compress a 2000-record sample at level 3 with a\n"
               "                            dictionary; compress only if stored/raw < 0.5)\n"
               "      --dict / --no-dict    train a zstd dictionary (default on)\n"
               "      --dict-size BYTES     dictionary size (default 65536)\n"
               "      --limit N             pack only the first N records\n"
               "      --prefix NAME         shard file prefix (default shard)\n"
               "  -f, --force               replace the set in DIR (else DIR must be new or\n"
               "                            empty); the new set replaces the old atomically\n"
               "  -q, --quiet               no progress bar or summary\n"
               "  -h, --help                this text\n");
}

static void usage_synth(FILE *f)
{
    fprintf(f, "usage: stoker-pack synth -o DIR [--records N] [--shape C,H,W] [--classes K] [--seed S]\n"
               "                         [-n RECORDS_PER_SHARD] [-f] [-q]\n"
               "  Synthetic images for benchmarks: N records (default 1024) of uniformly\n"
               "  random u8 pixels of shape C,H,W (default 3,224,224) and a random label\n"
               "  below K (default 1000), stored raw; the same seed (default 0) gives the\n"
               "  same set. Schema: image:u8[C,H,W] label:i64[]\n");
}

static void usage(FILE *f)
{
    fprintf(f, "usage: stoker-pack COMMAND ...\n"
               "  idx IMAGES LABELS -o DIR   pack IDX (MNIST, Fashion-MNIST) files\n"
               "  cifar FILE... -o DIR       pack CIFAR-10/100 binary batches\n"
               "  npy DATA LABELS -o DIR     pack a .npy data array and its labels\n"
               "  folder ROOT -o DIR         pack a folder with one subfolder per class\n"
               "  text FILE -o DIR           pack a text file, one record of token ids per line\n"
               "  synth -o DIR               write random images and labels (benchmarks)\n"
               "  verify DIR                 check every record's checksum\n"
               "  info DIR                   print the schema and shard list\n"
               "Run 'stoker-pack COMMAND --help' for options.\n");
}

typedef struct opts {
    const char *out;
    const char *field;
    const char *vocab;
    int chars;
    int64_t unk_id;
    int quiet;
    int cifar100;
    stk_pack_config_t pack;
    uint64_t limit;
} opts_t;

static int run_pack(stk_pack_source_t *src, const opts_t *o)
{
    stk_pack_config_t cfg = o->pack;
    progress_t pr;
    progress_init(&pr, "packing", o->quiet);
    cfg.progress = progress_update;
    cfg.progress_user = &pr;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    stk_pack_result_t res;
    double t0 = tool_now_s();
    int rc = stk_pack_write(src, o->out, &cfg, &res);
    double dt = tool_now_s() - t0;
    if (rc == -ECANCELED) {
        fprintf(stderr, "\nstoker-pack: interrupted; %s left as it was\n", o->out);
        return 130;
    }
    if (rc) {
        fprintf(stderr, "%sstoker-pack: %s\n", pr.on && pr.last_pct >= 0 ? "\n" : "",
                stk_error_message());
        return 1;
    }
    if (!o->quiet && res.auto_ratio >= 0)
        fprintf(stderr, "stoker-pack: level auto: sample compresses to %.3f at level 3%s -> %s\n",
                res.auto_ratio, cfg.use_dict ? " with a dictionary" : "",
                res.zstd_level ? "compress" : "store raw");
    if (!o->quiet) {
        char schema[1024];
        stk_schema_format(stk_pack_source_schema(src), schema, sizeof schema);
        printf("packed %" PRIu64 " records into %" PRIu64 " shard(s) in %s in %.2f s\n", res.records,
               res.shards, o->out, dt);
        printf("schema: %s\n", schema);
        printf("level %d, dictionary %" PRIu64 " bytes; raw %" PRIu64 " bytes, stored %" PRIu64
               " bytes, ratio %.4f\n",
               res.zstd_level, res.dict_bytes, res.raw_bytes, res.stored_bytes,
               res.raw_bytes ? (double)res.stored_bytes / (double)res.raw_bytes : 1.0);
    }
    return 0;
}

static int cmd_pack(const char *cmd, int argc, char **argv)
{
    opts_t o = {.field = NULL};
    stk_pack_config_default(&o.pack);
    static const struct option lo[] = {
        {"output", required_argument, 0, 'o'}, {"records-per-shard", required_argument, 0, 'n'},
        {"level", required_argument, 0, 'l'},  {"dict", no_argument, 0, 'D'},
        {"no-dict", no_argument, 0, 'N'},      {"dict-size", required_argument, 0, 'S'},
        {"limit", required_argument, 0, 'L'},  {"prefix", required_argument, 0, 'P'},
        {"field", required_argument, 0, 'F'},  {"cifar100", no_argument, 0, 'C'},
        {"force", no_argument, 0, 'f'},        {"quiet", no_argument, 0, 'q'},
        {"vocab", required_argument, 0, 'V'},  {"chars", no_argument, 0, 'c'},
        {"unk-id", required_argument, 0, 'U'},
        {"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
    int c;
    int64_t v;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:n:l:fqh", lo, NULL)) != -1) {
        switch (c) {
        case 'o': o.out = optarg; break;
        case 'n':
            if (tool_parse_i64("stoker-pack", "--records-per-shard", optarg, 0, INT64_MAX, &v))
                return 2;
            o.pack.records_per_shard = (uint64_t)v;
            break;
        case 'l':
            if (!strcmp(optarg, "auto"))
                o.pack.zstd_level = STK_PACK_LEVEL_AUTO;
            else if (tool_parse_int("stoker-pack", "--level", optarg, 0, 22, &o.pack.zstd_level))
                return 2;
            break;
        case 'D': o.pack.use_dict = 1; break;
        case 'N': o.pack.use_dict = 0; break;
        case 'S':
            if (tool_parse_i64("stoker-pack", "--dict-size", optarg, 256, 1 << 30, &v))
                return 2;
            o.pack.dict_size = (size_t)v;
            break;
        case 'L':
            if (tool_parse_i64("stoker-pack", "--limit", optarg, 1, INT64_MAX, &v))
                return 2;
            o.limit = (uint64_t)v;
            break;
        case 'P': o.pack.prefix = optarg; break;
        case 'F': o.field = optarg; break;
        case 'C': o.cifar100 = 1; break;
        case 'V': o.vocab = optarg; break;
        case 'c': o.chars = 1; break;
        case 'U':
            if (tool_parse_i64("stoker-pack", "--unk-id", optarg, -1, INT32_MAX, &o.unk_id))
                return 2;
            break;
        case 'f': o.pack.overwrite = 1; break;
        case 'q': o.quiet = 1; break;
        case 'h': usage_pack(stdout, cmd); return 0;
        default: usage_pack(stderr, cmd); return 2;
        }
    }
    int npos = argc - optind;
    int want = !strcmp(cmd, "idx") || !strcmp(cmd, "npy") ? 2 : !strcmp(cmd, "folder") || !strcmp(cmd, "text") ? 1 : -1;
    if ((o.vocab || o.chars || o.unk_id) && strcmp(cmd, "text")) {
        fprintf(stderr, "stoker-pack %s: --vocab, --chars and --unk-id are text's\n", cmd);
        return 2;
    }
    if ((want > 0 && npos != want) || (want < 0 && npos < 1) || !o.out) {
        fprintf(stderr, "stoker-pack %s: %s\n", cmd,
                !o.out ? "missing -o DIR" : "wrong number of input files");
        usage_pack(stderr, cmd);
        return 2;
    }
    stk_pack_source_config_t sc;
    stk_pack_source_config_default(&sc);
    sc.format = stk_pack_format_from_name(!strcmp(cmd, "cifar") && o.cifar100 ? "cifar100" : cmd);
    sc.inputs = (const char *const *)(argv + optind);
    sc.ninputs = (size_t)npos;
    sc.field = o.field;
    sc.limit = o.limit;
    sc.vocab = o.vocab;
    sc.vocab_chars = o.chars;
    sc.unk_id = o.unk_id;
    stk_pack_source_t *src = NULL;
    if (stk_pack_source_create(&src, &sc)) {
        fprintf(stderr, "stoker-pack: %s\n", stk_error_message());
        return 1;
    }
    int rc = run_pack(src, &o);
    stk_pack_source_destroy(&src);
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
    if (stk_shardset_create(set, dir)) {
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
    stk_shardset_destroy(&set);
    return 0;
}

typedef struct verify_ctx {
    progress_t pr;
    uint64_t shown;
} verify_ctx_t;

static int verify_progress(uint64_t done, uint64_t total, void *user)
{
    return progress_update(done, total, &((verify_ctx_t *)user)->pr);
}

static void verify_bad(uint64_t index, int code, const char *msg, void *user)
{
    verify_ctx_t *v = user;
    (void)index;
    (void)code;
    if (v->shown++ < 20)
        fprintf(stderr, "%sstoker-pack: %s\n", v->pr.on ? "\n" : "", msg);
}

/* "C,H,W": three whole numbers in [1, 65536]. */
static int parse_shape(const char *arg, int64_t shape[3])
{
    char *end;
    const char *p = arg;
    for (int i = 0; i < 3; i++) {
        long long v = strtoll(p, &end, 10);
        if (end == p || v < 1 || v > 65536 || (i < 2 ? *end != ',' : *end != '\0')) {
            fprintf(stderr, "stoker-pack synth: --shape %s: want C,H,W (each 1..65536)\n", arg);
            return -1;
        }
        shape[i] = v;
        p = end + 1;
    }
    return 0;
}

static int cmd_synth(int argc, char **argv)
{
    static const struct option lo[] = {
        {"output", required_argument, 0, 'o'}, {"records", required_argument, 0, 'R'},
        {"shape", required_argument, 0, 'S'},  {"classes", required_argument, 0, 'K'},
        {"seed", required_argument, 0, 's'},   {"records-per-shard", required_argument, 0, 'n'},
        {"force", no_argument, 0, 'f'},        {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
    const char *out = NULL;
    int64_t records = 1024, classes = 1000, seed = 0, shape[3] = {3, 224, 224};
    int quiet = 0;
    stk_writer_config_t wc;
    stk_writer_config_default(&wc);
    wc.zstd_level = 0; /* random pixels do not compress */
    int c;
    int64_t v;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:n:fqh", lo, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'R':
            if (tool_parse_i64("stoker-pack synth", "--records", optarg, 1, INT64_MAX, &records))
                return 2;
            break;
        case 'S':
            if (parse_shape(optarg, shape))
                return 2;
            break;
        case 'K':
            if (tool_parse_i64("stoker-pack synth", "--classes", optarg, 1, INT32_MAX, &classes))
                return 2;
            break;
        case 's':
            if (tool_parse_i64("stoker-pack synth", "--seed", optarg, 0, INT64_MAX, &seed))
                return 2;
            break;
        case 'n':
            if (tool_parse_i64("stoker-pack synth", "--records-per-shard", optarg, 0, INT64_MAX, &v))
                return 2;
            wc.records_per_shard = (uint64_t)v;
            break;
        case 'f': wc.overwrite = 1; break;
        case 'q': quiet = 1; break;
        case 'h': usage_synth(stdout); return 0;
        default: usage_synth(stderr); return 2;
        }
    }
    if (optind < argc || !out) {
        fprintf(stderr, "stoker-pack synth: %s\n", !out ? "missing -o DIR" : "no input files are taken");
        usage_synth(stderr);
        return 2;
    }
    stk_schema_t schema = {0};
    int64_t none[1] = {0};
    size_t bytes = (size_t)(shape[0] * shape[1] * shape[2]);
    stk_writer_t *w = NULL;
    unsigned char *img = malloc(bytes + 4);
    int rc = img ? 0 : -ENOMEM;
    if (rc == 0 && (rc = stk_schema_add(&schema, "image", STK_DTYPE_U8, 3, shape)) == 0)
        rc = stk_schema_add(&schema, "label", STK_DTYPE_I64, 0, none);
    if (rc == 0)
        rc = stk_writer_create(&w, out, &schema, &wc);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    double t0 = tool_now_s();
    stk_rng_t r;
    for (int64_t i = 0; i < records && rc == 0; i++) {
        if (interrupted) {
            stk_writer_destroy(&w);
            free(img);
            fprintf(stderr, "stoker-pack: interrupted; %s left as it was\n", out);
            return 130;
        }
        /* One stream per record: a record does not depend on the count. */
        stk_rng_init(&r, (uint64_t)seed, (uint64_t)i);
        for (size_t k = 0; k < bytes; k += 4) {
            uint32_t u = stk_rng_u32(&r);
            memcpy(img + k, &u, 4);
        }
        int64_t label = (int64_t)stk_rng_below(&r, (uint64_t)classes);
        const void *data[2] = {img, &label};
        rc = stk_writer_add(w, data, NULL);
    }
    if (rc == 0)
        rc = stk_writer_finish(w);
    if (rc) {
        fprintf(stderr, "stoker-pack synth: %s\n", rc == -ENOMEM && !img ? "out of memory" : stk_error_message());
        stk_writer_destroy(&w);
        free(img);
        return 1;
    }
    stk_writer_stats_t st;
    stk_writer_stats(w, &st);
    stk_writer_destroy(&w);
    free(img);
    if (!quiet)
        printf("wrote %" PRIu64 " synthetic records (image:u8[%lld,%lld,%lld] label:i64[]) into %" PRIu64
               " shard(s) in %s in %.2f s, %" PRIu64 " bytes\n",
               st.records, (long long)shape[0], (long long)shape[1], (long long)shape[2], st.shards, out,
               tool_now_s() - t0, st.stored_bytes);
    return 0;
}

static int cmd_verify(int argc, char **argv)
{
    stk_shardset_t *set;
    int quiet;
    int rc = open_set("verify", argc, argv, &set, &quiet);
    if (rc >= 0)
        return rc;
    /* open_set checked that it opens; the verify call reopens it by path. */
    const char *path = NULL;
    for (int i = 1; i < argc && !path; i++)
        if (argv[i][0] != '-')
            path = argv[i];
    verify_ctx_t v = {.shown = 0};
    progress_init(&v.pr, "verifying", quiet);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    stk_pack_verify_result_t res;
    double t0 = tool_now_s();
    rc = stk_pack_verify(path, &res, verify_progress, verify_bad, &v);
    double dt = tool_now_s() - t0;
    if (rc == -ECANCELED) {
        fprintf(stderr, "\nstoker-pack: interrupted\n");
        stk_shardset_destroy(&set);
        return 130;
    }
    if (rc && rc != STK_EDATA) {
        fprintf(stderr, "stoker-pack: %s\n", stk_error_message());
        stk_shardset_destroy(&set);
        return 1;
    }
    print_summary(set);
    printf("verify:  %" PRIu64 " records checked in %.2f s, %" PRIu64 " bad: %s\n", res.records, dt,
           res.bad, res.bad ? "FAILED" : "OK");
    stk_shardset_destroy(&set);
    return res.bad ? 1 : 0;
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
        !strcmp(cmd, "folder") || !strcmp(cmd, "text"))
        return cmd_pack(cmd, argc - 1, argv + 1);
    if (!strcmp(cmd, "synth"))
        return cmd_synth(argc - 1, argv + 1);
    if (!strcmp(cmd, "verify"))
        return cmd_verify(argc - 1, argv + 1);
    if (!strcmp(cmd, "info"))
        return cmd_info(argc - 1, argv + 1);
    fprintf(stderr, "stoker-pack: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
