/* SPDX-License-Identifier: MIT */
/* Internals of stoker-train shared by its source files: the run
 * configuration (parsed from a key = value file plus --set overrides), the
 * per-epoch metrics record, and the report writers (JSON lines, SVG plot,
 * summary table). Not a library API: only the tool and its tests use it. */
#ifndef STOKER_TRAIN_TOOL_H
#define STOKER_TRAIN_TOOL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define TRAIN_PATH_MAX 1024
#define TRAIN_SPEC_MAX 512
#define TRAIN_NAME_MAX 32

typedef struct train_config {
    /* data and model */
    char train_data[TRAIN_PATH_MAX];
    char test_data[TRAIN_PATH_MAX];
    char model[TRAIN_PATH_MAX];
    char augment[TRAIN_SPEC_MAX];
    char test_augment[TRAIN_SPEC_MAX]; /* "" = the normalize steps of augment */
    char image_field[TRAIN_NAME_MAX];
    char label_field[TRAIN_NAME_MAX];
    uint64_t train_limit, test_limit; /* 0 = every sample */
    /* optimizer and scheduler, in optim.h's text forms */
    char optimizer[TRAIN_SPEC_MAX]; /* "sgd:lr=0.1,momentum=0.9,..." */
    char scheduler[TRAIN_SPEC_MAX]; /* "warmup:1ep,start=0.1|cosine" */
    /* loop */
    int epochs;
    int stop_after_epochs; /* 0 = run to `epochs`; else stop (and checkpoint) early */
    int batch_size, eval_batch_size, accum_steps;
    int drop_last;
    int workers, prefetch;
    uint64_t seed;
    int threads;
    /* output */
    char checkpoint_dir[TRAIN_PATH_MAX];
    int keep_last;
    int checkpoint_steps; /* 0 = at the end of each epoch only */
    char metrics[TRAIN_PATH_MAX];
    char plot[TRAIN_PATH_MAX]; /* "" = metrics path with .svg */
    int progress;              /* -1 auto (terminal), 0 off, 1 on */
    int profile;               /* per-layer and per-phase timing at the end */
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
 * the end). The optimizer and scheduler texts are checked by optim.h's
 * parsers when the run is set up. */
int train_config_check(const train_config_t *cfg, char *err, size_t errcap);
/* Writes every key as "key = value" lines (the effective config). */
int train_config_format(const train_config_t *cfg, char *buf, size_t cap);
/* The test-time augment spec: test_augment, or else the normalize steps
 * of augment. */
void train_config_eval_augment(const train_config_t *cfg, char *buf, size_t cap);

/* One row of the per-epoch history (also kept in checkpoints). */
typedef struct train_epoch_stats {
    int epoch;          /* 1-based */
    uint64_t step;      /* optimizer steps so far */
    double train_loss, train_acc;
    double test_loss, test_acc;
    double lr;          /* at the end of the epoch */
    double images_per_s;
    double data_wait;   /* share of training time spent waiting for data */
    double epoch_s;
} train_epoch_stats_t;

/* Appends one JSON line with the epoch's metrics. */
int train_metrics_write(FILE *f, const train_epoch_stats_t *s);
/* Writes an SVG with three panels (loss, accuracy, lr per epoch) to path,
 * via a temporary file renamed into place. Returns 0 or -errno. */
int train_plot_svg(const char *path, const train_epoch_stats_t *hist, size_t n);
/* Prints the final summary table. */
void train_summary_print(FILE *f, const train_epoch_stats_t *hist, size_t n);

#endif
