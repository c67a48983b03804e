/* SPDX-License-Identifier: MIT */
/* Engine benchmark: forward + backward images/s of a model file on random
 * data (no optimizer step, as tools/bench_engine_torch.py), with per-layer
 * timing; --train adds the optimizer step (the stepper, as stoker-train
 * steps), --device cuda runs on a GPU with the batch already there (what
 * tools/bench_train_torch.py measures for PyTorch), --json ends with one
 * JSON line. --data feeds the training steps from a shard set through the
 * loader (workers, --augment) and the feed, as stoker-train does, and
 * reports the share of the time spent waiting for data and the
 * host-to-device bandwidth of the feed's copies; without it the batch is
 * resident. --export also writes the state, an input batch and its
 * eval-mode logits, for tools/load_safetensors.py. --eval times eval-mode
 * forwards instead (inference: conv + batchnorm chains fused unless
 * STK_NO_FUSION=1). */
#include <stoker/engine.h>
#include <stoker/loader.h>
#include <stoker/optim.h>
#include <stoker/train.h>
#include "tool_clock.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int write_raw(const char *path, const void *p, size_t bytes)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, bytes, f) != bytes) {
        if (f)
            fclose(f);
        return -1;
    }
    return fclose(f);
}

static void usage(void)
{
    fprintf(stderr, "usage: stoker-enginebench [--model FILE] [--batch N] [--threads N] [--iters N] "
                    "[--warmup N] [--profile] [--summary] [--export PREFIX] [--train] [--optimizer SPEC] "
                    "[--device cpu|cuda|cuda:N] [--precision fp32|tf32|bf16|fp16] [--cuda-graph] [--json] [--eval]\n"
                    "                          [--data DIR [--augment SPEC] [--workers N] [--prefetch N]]\n"
                    "  --data DIR  training steps (--train) fed from the shards at DIR through the\n"
                    "              loader with --workers processes (default: the CPUs) and the feed;\n"
                    "              the image field is \"image\", the label \"label\"\n");
}

/* The loader side of --data: the shard set, its loader, and the batch's
 * conversion to an input tensor, as stoker-train makes them. */
typedef struct data_feed {
    stk_dataset_t *ds;
    stk_loader_t *loader;
    stk_train_inputs_t *inputs;
    /* converted and fed as in stk_train_run: on a GPU the next batch's
     * copy runs while the step computes */
    stk_train_batches_t *batches;
    uint64_t epoch;
} data_feed_t;

static int data_open(data_feed_t *d, stk_model_t *m, const char *dir, const char *augment, int batch, int workers,
                     int prefetch, int on_device)
{
    stk_dataset_shard_config_t dc;
    stk_dataset_shard_config_default(&dc);
    int rc = stk_dataset_shard_create(&d->ds, dir, &dc);
    stk_train_inputs_config_t icfg;
    stk_train_inputs_config_default(&icfg);
    icfg.normalize = augment;
    /* Half images (normalize's dtype=) go to the feed as they are: on a
     * GPU half the bytes cross the bus, converted there. */
    icfg.keep_half = 1;
    if (rc == 0)
        rc = stk_train_check_data(d->ds, &icfg, augment, m);
    if (rc == 0 && stk_dataset_len(d->ds) < (uint64_t)batch) {
        fprintf(stderr, "stoker-enginebench: --data %s: %llu samples make no batch of %d\n", dir,
                (unsigned long long)stk_dataset_len(d->ds), batch);
        return 1;
    }
    stk_loader_config_t lcfg;
    stk_loader_config_default(&lcfg);
    lcfg.batch_size = (uint64_t)batch;
    lcfg.drop_last = 1;
    lcfg.shuffle = 1;
    lcfg.seed = 1;
    lcfg.num_workers = (uint32_t)workers;
    lcfg.prefetch = (uint32_t)prefetch;
    lcfg.persistent_workers = 1;
    lcfg.augment = augment;
    lcfg.augment_field = "image";
    if (on_device) {
        /* The arena page-locked once: batches go to the GPU by DMA. */
        lcfg.pin = stk_model_pin_host;
        lcfg.unpin = stk_model_unpin_host;
        lcfg.pin_user = m;
        lcfg.pin_no_memlock = 1;
    }
    if (rc == 0)
        rc = stk_loader_create(&d->loader, d->ds, &lcfg);
    if (rc == 0)
        rc = stk_train_inputs_create(&d->inputs, &icfg);
    if (rc == 0)
        rc = stk_train_batches_create(&d->batches, m, d->loader, d->inputs);
    if (rc)
        fprintf(stderr, "stoker-enginebench: --data %s: %s\n", dir, stk_error_message());
    return rc;
}

static void data_close(data_feed_t *d)
{
    stk_train_batches_destroy(&d->batches);
    stk_train_inputs_destroy(&d->inputs);
    stk_loader_destroy(&d->loader);
    stk_dataset_destroy(&d->ds);
}

/* One training step on the next batch (a new epoch when one ends). */
static int data_step(data_feed_t *d, stk_train_stepper_t *stepper, uint64_t it, float *loss)
{
    stk_tensor_t input, target;
    int rc = stk_train_batches_next(d->batches, NULL, &input, &target);
    if (rc == STK_DONE && (rc = stk_loader_set_epoch(d->loader, ++d->epoch)) == 0)
        rc = stk_train_batches_next(d->batches, NULL, &input, &target);
    if (rc)
        return rc;
    stk_train_step_metrics_t sm;
    rc = stk_train_stepper_step(stepper, &input, &target, it, &sm);
    *loss = sm.loss;
    return stk_train_batches_done(d->batches, rc);
}

/* A whole decimal in [lo, hi], or -1. */
static long whole(const char *s, long lo, long hi)
{
    char *end;
    long v = strtol(s, &end, 10);
    return *s && !*end && v >= lo && v <= hi ? v : -1;
}

int main(int argc, char **argv)
{
    const char *model = "models/fmnist-cnn.model", *export = NULL, *device = "cpu", *precision = "fp32";
    const char *optimizer = "sgd:lr=0.01,momentum=0.9";
    int batch = 128, threads = 2, iters = 20, warmup = 3, profile = 0, summary = 0, train = 0, json = 0, graph = 0;
    const char *data = NULL, *augment = "";
    int workers = stk_engine_cpu_count(), prefetch = 0;
    int eval = 0;
    /* OpenMP threads that wait passively unless OMP_WAIT_POLICY says
     * otherwise (it executes us again once). */
    if (stk_engine_passive_wait(argv) < 0)
        fprintf(stderr, "stoker-enginebench: %s\n", stk_error_message());
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"batch", required_argument, 0, 'b'},
        {"threads", required_argument, 0, 't'}, {"iters", required_argument, 0, 'i'},
        {"warmup", required_argument, 0, 'w'}, {"profile", no_argument, 0, 'p'},
        {"summary", no_argument, 0, 's'}, {"export", required_argument, 0, 'e'},
        {"train", no_argument, 0, 'T'}, {"optimizer", required_argument, 0, 'o'},
        {"device", required_argument, 0, 'd'}, {"precision", required_argument, 0, 'P'},
        {"json", no_argument, 0, 'j'}, {"cuda-graph", no_argument, 0, 'G'}, {"help", no_argument, 0, 'h'},
        {"data", required_argument, 0, 'D'}, {"augment", required_argument, 0, 'A'},
        {"workers", required_argument, 0, 'W'}, {"prefetch", required_argument, 0, 'F'},
        {"eval", no_argument, 0, 'E'},
        {0, 0, 0, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "m:b:t:i:w:pse:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'b': batch = (int)whole(optarg, 1, 1 << 20); break;
        case 't': threads = (int)whole(optarg, 1, 1024); break;
        case 'i': iters = (int)whole(optarg, 1, 1 << 30); break;
        case 'w': warmup = (int)whole(optarg, 0, 1 << 30); break;
        case 'p': profile = 1; break;
        case 's': summary = 1; break;
        case 'e': export = optarg; break;
        case 'T': train = 1; break;
        case 'o': optimizer = optarg; break;
        case 'd': device = optarg; break;
        case 'P': precision = optarg; break;
        case 'j': json = 1; break;
        case 'G': graph = 1; break;
        case 'D': data = optarg; break;
        case 'A': augment = optarg; break;
        case 'W': workers = (int)whole(optarg, 0, 1024); break;
        case 'F': prefetch = (int)whole(optarg, 0, 1024); break;
        case 'E': eval = 1; break;
        default: usage(); return c == 'h' ? 0 : 2;
        }
    }
    if (optind < argc || batch < 1 || threads < 1 || iters < 1 || warmup < 0 || workers < 0 || prefetch < 0) {
        usage();
        return 2;
    }
    if (eval && (train || data || graph)) {
        fprintf(stderr, "stoker-enginebench: --eval times forwards: no --train, --data or --cuda-graph\n");
        return 2;
    }
    if (data && (!train || export)) {
        fprintf(stderr, "stoker-enginebench: --data feeds training steps: it needs --train (and no --export)\n");
        return 2;
    }
    if (!data && (augment[0] || prefetch)) {
        fprintf(stderr, "stoker-enginebench: --augment and --prefetch are --data's\n");
        return 2;
    }
    stk_model_config_t cfg;
    stk_model_config_default(&cfg);
    cfg.batch_size = batch;
    cfg.threads = threads;
    cfg.seed = 1;
    if (!strcmp(device, "cuda") || !strncmp(device, "cuda:", 5)) {
        cfg.device = STK_DEVICE_CUDA;
        cfg.device_index = device[4] ? (int)whole(device + 5, 0, 1024) : -1;
        if (device[4] && cfg.device_index < 0) {
            fprintf(stderr, "stoker-enginebench: --device %s: not cpu, cuda or cuda:N\n", device);
            return 2;
        }
    } else if (strcmp(device, "cpu")) {
        fprintf(stderr, "stoker-enginebench: --device %s: not cpu, cuda or cuda:N\n", device);
        return 2;
    }
    int known = 0;
    for (int p = STK_PRECISION_FP32; p <= STK_PRECISION_FP16; p++)
        if (!strcmp(precision, stk_precision_name((stk_precision_t)p))) {
            cfg.precision = (stk_precision_t)p;
            known = 1;
        }
    if (!known) {
        fprintf(stderr, "stoker-enginebench: --precision %s: not fp32, tf32, bf16 or fp16\n", precision);
        return 2;
    }
    if (export && cfg.device != STK_DEVICE_CPU) {
        fprintf(stderr, "stoker-enginebench: --export reads the model back on the host: CPU only\n");
        return 2;
    }
    /* Workers fork from a process without CUDA in it. */
    if (data && workers > 0 && stk_loader_forkserver_start() != 0) {
        fprintf(stderr, "stoker-enginebench: the loader's fork server: %s\n", stk_error_message());
        return 1;
    }
    stk_model_t *m = NULL;
    if (stk_model_create_from_file(&m, model, &cfg) < 0) {
        fprintf(stderr, "stoker-enginebench: %s\n", stk_error_message());
        return 1;
    }
    if (eval)
        stk_model_set_train(m, 0);
    if (summary)
        stk_model_summary_print(m, stdout);
    int64_t shape[4];
    stk_model_input_shape(m, shape);
    size_t nx = data ? 1 : (size_t)(shape[0] * shape[1] * shape[2] * shape[3]);
    float *x = malloc(nx * sizeof(float));
    int64_t *y = malloc((size_t)batch * sizeof(int64_t));
    int64_t k = stk_model_num_classes(m);
    stk_rng_t r;
    stk_rng_init(&r, 7, 0);
    for (size_t i = 0; i < nx; i++)
        x[i] = stk_rng_uniform(&r);
    for (int i = 0; i < batch; i++)
        y[i] = (int64_t)stk_rng_below(&r, (uint64_t)(k > 0 ? k : 1));
    float loss = 0.0f;
    double t0 = 0.0;
    int rc = 0;
    /* The batch on the model's device once, as data already there. */
    stk_feed_t *feed = NULL;
    const void *xin = x;
    if (!x || !y)
        rc = -1;
    data_feed_t df = {0};
    if (rc == 0 && data &&
        data_open(&df, m, data, augment, batch, workers, prefetch, cfg.device != STK_DEVICE_CPU) != 0) {
        data_close(&df);
        stk_model_destroy(&m);
        free(x);
        free(y);
        return 1;
    }
    if (rc == 0 && cfg.device != STK_DEVICE_CPU && !data) {
        rc = stk_feed_create(&feed, m, nx * sizeof(float));
        if (rc == 0)
            rc = stk_feed_put(feed, x, nx * sizeof(float), &xin);
        if (rc == 0)
            rc = stk_feed_use(feed, xin);
    }
    stk_optim_t *opt = NULL;
    stk_train_stepper_t *stepper = NULL;
    /* Whole steps as CUDA graphs: the stepper's path for a GPU model. */
    if (rc == 0 && graph)
        rc = stk_model_set_cuda_graph(m, 1);
    if (rc == 0 && train) {
        stk_train_stepper_config_t scfg;
        stk_train_stepper_config_default(&scfg);
        rc = stk_optim_create_for_model(&opt, m, optimizer);
        if (rc == 0)
            rc = stk_train_stepper_create(&stepper, m, opt, NULL, &scfg);
    }
    stk_tensor_t xt, yt;
    int64_t yshape[1] = {batch};
    if (rc == 0 && (rc = stk_tensor_init(&xt, (void *)xin, STK_DTYPE_F32, 4, shape)) == 0)
        rc = stk_tensor_init(&yt, y, STK_DTYPE_I64, 1, yshape);
    xt.device = cfg.device;
    stk_train_batches_stats_t ds0 = {0}, ds1 = {0};
    for (int it = 0; it < warmup + iters && rc == 0; it++) {
        if (it == warmup) {
            stk_model_set_profiling(m, profile);
            stk_model_reset_stats(m);
            if (df.batches)
                stk_train_batches_stats(df.batches, &ds0);
            t0 = tool_now_s();
        }
        if (data) {
            rc = data_step(&df, stepper, (uint64_t)it, &loss);
            continue;
        }
        if (stepper) {
            stk_train_step_metrics_t sm;
            rc = stk_train_stepper_step(stepper, &xt, &yt, (uint64_t)it, &sm);
            loss = sm.loss;
            continue;
        }
        if (eval) {
            rc = stk_model_forward_tensor(m, &xt, &yt, &loss);
            continue;
        }
        stk_model_set_step(m, (uint64_t)it);
        stk_model_zero_grad(m);
        rc = stk_model_forward_tensor(m, &xt, &yt, &loss);
        if (rc == 0)
            rc = stk_model_backward(m);
    }
    /* Each step read its loss back; the last update is waited for here. */
    if (rc == 0 && feed)
        rc = stk_feed_done(feed, xin);
    double dt = tool_now_s() - t0;
    if (df.batches)
        stk_train_batches_stats(df.batches, &ds1);
    /* The batch fetched ahead goes back unstepped. */
    if (df.batches && rc == 0)
        rc = stk_train_batches_drop(df.batches);
    stk_train_stepper_destroy(&stepper);
    stk_optim_destroy(&opt);
    stk_feed_destroy(&feed);
    if (rc != 0 && rc != -1) {
        fprintf(stderr, "stoker-enginebench: %s\n", stk_error_message());
        rc = -2;
    }
    data_close(&df);
    if (rc < 0) {
        if (rc == -1)
            fprintf(stderr, "stoker-enginebench: out of memory\n");
        stk_model_destroy(&m);
        free(x);
        free(y);
        return 1;
    }
    static const char *const waits[] = {"spin", "passive", "active"};
    printf("stoker: %s batch %d, %s on %s, threads %d (backend max %d, wait %s): %.1f images/s (%.2f ms/iter, "
           "loss %.4f)\n",
           model, batch, train ? "training step" : eval ? "eval forward" : "forward+backward", device, threads,
           stk_model_threads(m), waits[stk_engine_wait_policy()], (double)iters * batch / dt, 1e3 * dt / iters, (double)loss);
    /* The feed's copies after the warm-up: bytes over their device time. */
    uint64_t h2d_bytes = ds1.feed.bytes - ds0.feed.bytes, h2d_copies = ds1.feed.copies - ds0.feed.copies;
    double h2d_s = ds1.feed.copy_s - ds0.feed.copy_s, wait = dt > 0 ? (ds1.wait_s - ds0.wait_s) / dt : 0.0;
    double h2d_bps = h2d_s > 0 ? (double)h2d_bytes / h2d_s : 0.0;
    if (data && h2d_copies)
        printf("data: %s through %d workers, augment \"%s\": data wait %.2f%% of the time; host-to-device "
               "%.1f MB per batch, %.2f GB/s (%.2f ms per copy)\n",
               data, workers, augment, 100 * wait, (double)h2d_bytes / (double)h2d_copies / 1e6, h2d_bps / 1e9,
               1e3 * h2d_s / (double)h2d_copies);
    else if (data)
        printf("data: %s through %d workers, augment \"%s\": data wait %.2f%% of the time; no host-to-device "
               "copies (the model reads host memory)\n",
               data, workers, augment, 100 * wait);
    if (profile) {
        size_t n = stk_model_stats_format(m, NULL, 0);
        char *buf = malloc(n + 1);
        stk_model_stats_format(m, buf, n + 1);
        fputs(buf, stdout);
        free(buf);
    }
    if (export) {
        char path[4096];
        size_t nz = (size_t)batch * (size_t)stk_model_num_classes(m);
        float *z = malloc((nz ? nz : 1) * sizeof(float));
        stk_model_set_train(m, 0);
        snprintf(path, sizeof(path), "%s.safetensors", export);
        if (!z || stk_model_state_save(m, path) < 0 || stk_model_forward(m, x, batch, NULL, NULL, NULL) < 0 ||
            stk_model_read_logits(m, z, nz) < 0) {
            fprintf(stderr, "stoker-enginebench: %s\n", stk_error_message());
            rc = 1;
        } else {
            snprintf(path, sizeof(path), "%s.input.f32", export);
            rc |= write_raw(path, x, nx * sizeof(float));
            snprintf(path, sizeof(path), "%s.logits.f32", export);
            rc |= write_raw(path, z, nz * sizeof(float));
            printf("exported %s.{safetensors,input.f32,logits.f32}\n", export);
        }
        free(z);
    }
    uint64_t captures = 0, replays = 0;
    int graphs = stk_model_cuda_graph(m, &captures, &replays);
    stk_fusion_stats_t fus;
    stk_model_fusion_stats(m, &fus);
    if (eval) {
        printf("eval fusion: %d of %d conv+batchnorm chains fused (%d fell back)\n", fus.fused, fus.chains,
               fus.fallbacks);
        if (fus.fallbacks)
            stk_model_summary_print(m, stdout);
    }
    if (json)
        printf("{\"tool\":\"stoker\",\"model\":\"%s\",\"batch\":%d,\"device\":\"%s\",\"precision\":\"%s\","
               "\"train\":%s,\"cuda_graph\":%s,\"graph_replays\":%llu,\"iters\":%d,\"images_per_s\":%.1f,"
               "\"ms_per_iter\":%.3f,\"input\":\"%s\",\"workers\":%d,\"data_wait\":%.6f,\"h2d_bytes\":%llu,"
               "\"h2d_copy_s\":%.6f,\"h2d_bytes_per_s\":%.1f,\"loss\":%.6f,\"eval\":%s,\"fused\":%d,"
               "\"fusion_chains\":%d,\"fusion_fallbacks\":%d}\n",
               model, batch, device, stk_precision_name(stk_model_precision(m)), train ? "true" : "false",
               graphs ? "true" : "false", (unsigned long long)replays, iters, (double)iters * batch / dt,
               1e3 * dt / iters, data ? "loader" : "resident", data ? workers : 0, wait,
               (unsigned long long)h2d_bytes, h2d_s, h2d_bps, (double)loss, eval ? "true" : "false", fus.fused,
               fus.chains, fus.fallbacks);
    free(x);
    free(y);
    stk_model_destroy(&m);
    return rc ? 1 : 0;
}
