/* SPDX-License-Identifier: MIT */
/* Internals of stoker-train shared by its source files: the run
 * configuration (parsed from a key = value file plus --set overrides, each
 * value remembering the file and line it came from) and the report writers
 * (JSON lines, SVG plot, summary table). Not a library API: only the tool
 * uses it; tests run the tool. */
#ifndef STOKER_TRAIN_TOOL_H
#define STOKER_TRAIN_TOOL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "stoker/train.h"

#define TRAIN_PATH_MAX 1024
#define TRAIN_SPEC_MAX 512
#define TRAIN_NAME_MAX 32

typedef struct train_config {
    /* where a run's outputs go by default: <run_dir>/checkpoints,
     * <run_dir>/metrics.jsonl (and .svg) */
    char run_dir[TRAIN_PATH_MAX];
    /* data and model */
    char train_data[TRAIN_PATH_MAX];
    char test_data[TRAIN_PATH_MAX];
    char model[TRAIN_PATH_MAX];
    char augment[TRAIN_SPEC_MAX];
    char test_augment[TRAIN_SPEC_MAX]; /* "" = the normalize steps of augment */
    char image_field[TRAIN_NAME_MAX];
    char label_field[TRAIN_NAME_MAX];
    /* sequences: "label" or "next_token" (a language model over the
     * image field's token ids), its boundary token, and bucketing of the
     * training batches by length (batches per sorted pool; 0 = off) */
    char target[16];
    int boundary_token;
    int bucket_pool;
    uint64_t train_limit, test_limit; /* 0 = every sample */
    /* optimizer and scheduler, in optim.h's text forms */
    char optimizer[TRAIN_SPEC_MAX]; /* "sgd:lr=0.1,momentum=0.9,..." */
    char scheduler[TRAIN_SPEC_MAX]; /* "warmup:1ep,start=0.1|cosine" */
    /* loop */
    int epochs;
    double clip_norm;          /* 0 = off */
    int timeout;               /* seconds a batch may take (workers); 0 = wait forever */
    int stop_grace;            /* seconds a stop may take before the run exits at once */
    int stop_after_epochs; /* 0 = run to `epochs`; else stop (and checkpoint) early */
    int batch_size, eval_batch_size, accum_steps;
    int drop_last;
    int workers, prefetch;
    uint64_t seed;
    int threads;
    char device[TRAIN_NAME_MAX]; /* auto | cpu | cuda | cuda:N */
    char precision[8];           /* fp32 | tf32 | bf16 | fp16 */
    char cuda_graph[8];          /* on | off */
    char loss_scale[8];          /* auto (dynamic with fp16) | dynamic | off */
    double loss_scale_init;
    int loss_scale_growth_interval;
    /* output */
    char checkpoint_dir[TRAIN_PATH_MAX];
    int keep_last;
    int checkpoint_steps; /* 0 = at the end of each epoch only */
    char metrics[TRAIN_PATH_MAX];
    char plot[TRAIN_PATH_MAX]; /* "" = metrics path with .svg */
    int progress;              /* -1 auto (terminal), 0 off, 1 on */
    int progress_every;        /* seconds between progress lines in a log */
    int profile;               /* per-layer and per-phase timing at the end */
    double bucket_mb;          /* data-parallel: gradient bucket capacity, MiB */
    int sync_bn;               /* data-parallel: batchnorm over the global batch */
    /* CUDA: how convolutions pick cuDNN engines (engine.h's cudnn_*) */
    char cudnn[16];                   /* heuristic | benchmark | deterministic */
    char cudnn_cache[TRAIN_PATH_MAX]; /* benchmark: the cache file; "" none */
    double cudnn_workspace_mb;        /* per convolution direction; 0 = no limit */
    /* Where each key's value came from ("file:line", "--set"), by key
     * index; "" for a default. */
    char origin[64][TRAIN_PATH_MAX + 16];
} train_config_t;

void train_config_default(train_config_t *cfg);
/* Applies the text of a config file (origin names it in messages). Errors
 * write "origin:LINE: key 'k': why" into err and return -1. */
int train_config_parse(train_config_t *cfg, const char *text, const char *origin, char *err, size_t errcap);
/* Reads and parses a file. */
int train_config_load(train_config_t *cfg, const char *path, char *err, size_t errcap);
/* Applies one "key=value" (from --set). */
int train_config_set(train_config_t *cfg, const char *assignment, char *err, size_t errcap);
/* Cross-field checks after parsing (required keys present, stop before
 * the end; errors cite the value's file:line, or path), and the defaults
 * run_dir gives. The optimizer and scheduler
 * texts are checked by optim.h's parsers when the run is set up. */
int train_config_check(train_config_t *cfg, const char *path, char *err, size_t errcap);
/* "file:line: key 'k'" (or "--set: key 'k'", or "key 'k'" for a default)
 * into buf: how an error about a key's value starts. */
const char *train_config_where(const train_config_t *cfg, const char *key, char *buf, size_t cap);
/* Writes every key as "key = value" lines (the effective config). */
int train_config_format(const train_config_t *cfg, char *buf, size_t cap);
/* The test-time augment spec: test_augment, or else the normalize steps
 * of augment. */
void train_config_eval_augment(const train_config_t *cfg, char *buf, size_t cap);
/* The device a "device" value names: auto (a GPU when there is one),
 * cpu, cuda (the first GPU) or cuda:N. 0, or -1 for any other text. */
int train_device_parse(const char *text, stk_device_t *kind, int *index);

/* The precision a "precision" value names; -1 for another text. */
int train_precision_parse(const char *text, stk_precision_t *p);

/* Names of the keys whose values differ between a and b, comma-separated,
 * among those listed in keys ("a,b,c"); "" when none. */
void train_config_diff(const train_config_t *a, const train_config_t *b, const char *keys, char *buf, size_t cap);

/* ---- The run (stoker-train-setup.c) ---------------------------------- */

#define EXIT_RUNTIME 1
#define EXIT_USAGE 2
#define EXIT_STOPPED 130

/* One run of the tool: its config, the pieces, the state, the outputs. */
typedef struct run {
    train_config_t cfg;
    const char *config_path;
    char eval_augment[TRAIN_SPEC_MAX];
    char plot_path[TRAIN_PATH_MAX + 8];
    int json, force, tty, quiet;

    stk_dataset_t *train_ds, *test_ds;
    stk_sampler_t *train_sampler, *test_sampler;
    stk_batch_sampler_t *train_buckets; /* bucket_pool > 0 */
    uint32_t *train_lengths;
    stk_loader_t *train_loader, *test_loader;
    stk_train_inputs_t *train_in, *test_in;
    stk_model_t *model;
    char device[256]; /* the device the model runs on, for the summary */
    int on_device;    /* 1: not host memory (batches go by the feed) */
    stk_optim_t *opt;
    stk_sched_t *sched;
    uint64_t batches_per_epoch, steps_per_epoch;

    stk_train_state_t st;
    char identity[256]; /* the "run" section: model and data fingerprints */
    char resumed_from[TRAIN_PATH_MAX + 64];
    char last_ckpt[4096];
    FILE *metrics;
    double t_print, compute_s, optim_s;
    /* STK_TRAIN_TEST_PAUSE=EPOCH:BATCH: the run stops itself (SIGSTOP)
     * after that micro-batch, once, so that a test can deliver a signal
     * at an exact point; continued, it waits up to 1 s for the stop. */
    uint64_t pause_epoch, pause_batch;
    /* Data-parallel (dist.h): this rank in the job its launcher started
     * (stoker-launch, mpirun, srun); a world of one has no communicator. */
    stk_dist_env_t env;
    stk_comm_t *comm;
    stk_ddp_t *ddp;
    int cuda_index;   /* the model's GPU, for the communicator */
    /* What the run computes with, for the summary: the precision the
     * engine uses, and loss scaling's last scale and skipped steps. */
    stk_precision_t precision;
    int loss_scaling;
    float loss_scale;
    uint64_t skipped;
} run_t;

/* "stoker-train: error: ..." on stderr; returns code. */
int train_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* An error about a key's value: "file:line: key 'k': what: message (CODE)". */
int train_fail_key(const run_t *r, int code, const char *key, int rc, const char *what);
/* A library error: "what: message: text (CODE)", exit status 1. */
int train_fail_stk(int rc, const char *what);
/* Opens the data, builds the model, loaders, optimizer and scheduler, and
 * settles the run's identity (new, or the one resume names). Writes
 * nothing. Returns 0 or an exit status, after its message. */
int train_setup(run_t *r, const char *resume);
/* Creates the checkpoint folder, the metrics file (appended to) and the
 * plot's folder. Returns 0 or an exit status. */
int train_open_outputs(run_t *r);
void train_teardown(run_t *r);

/* ---- Reports (stoker-train-report.c) ---------------------------------- */

/* Appends one JSON line with the epoch's metrics and the run id. */
int train_metrics_write(FILE *f, const char *run_id, const stk_train_epoch_t *s);
/* The run id of the first line of a metrics file ("" when it has none);
 * 0, or -errno (a missing file is 0 and ""). *lines gets the line count. */
int train_metrics_run(const char *path, char *run_id, size_t cap, size_t *lines);
/* Writes an SVG with three panels (loss, accuracy, lr per epoch) to path,
 * via a temporary file renamed into place. Returns 0 or -errno. */
int train_plot_svg(const char *path, const stk_train_epoch_t *hist, size_t n);
/* Prints the final summary table. */
void train_summary_print(FILE *f, const stk_train_epoch_t *hist, size_t n);

#endif
