/* SPDX-License-Identifier: MIT */
/* stoker-bench: reads a shard set through the loader as a training loop
 * would and reports throughput, time to first batch, the per-stage
 * breakdown, peak RSS of main and workers, memcpy bandwidth measured in
 * the same run, and with --checksum a checksum of every delivered batch
 * (two runs with the same seed must print the same one). SIGINT and
 * SIGTERM end a run at once, whatever its workers do (status 130 / 143);
 * a second one kills it. */
#define _GNU_SOURCE
#include <stoker/stoker.h>
#include "tool_args.h"
#include "tool_clock.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: stoker-bench DIR [--batch N] [--workers N|auto] [--prefetch N] [--io uring|pread|mmap]\n"
               "                   [--augment SPEC] [--field NAME] [--epochs N] [--timeout SECONDS]\n"
               "                   [--sampler random|sequential] [--seed N] [--no-checksum]\n"
               "                   [--work-us N] [--no-memcpy] [--json]\n"
               "  --timeout S  fail when a batch is not ready after S seconds (default 0: no\n"
               "               limit; a worker that stops moving is reported every so often)\n"
               "  --field NAME the field --augment takes (default: \"image\", or the only\n"
               "               image-like field)\n"
               "  --workers auto  as many workers as CPUs, or none, whichever the first\n"
               "               batches show faster (the choice is printed)\n"
               "  --prefetch N batches in flight per worker (default 0: the loader's choice)\n"
               "  --work-us N  main's own work per batch, N us of CPU (a training step's\n"
               "               stand-in): what workers can overlap and loading in process cannot\n");
}

/* CPU work for us microseconds, as a training step would do between
 * batches (a sleep would leave the CPU to the workers). */
static void busy_us(int64_t us)
{
    double end = tool_now_s() + (double)us * 1e-6;
    while (tool_now_s() < end) {
    }
}

static stk_loader_t *volatile running_loader;
static volatile sig_atomic_t stop_signal;

/* Ends the run at once, even with a worker stopped or hung: the loader's
 * wait returns -EINTR. SA_RESETHAND: a second signal kills. */
static void on_stop(int sig)
{
    stop_signal = sig;
    stk_loader_interrupt(running_loader);
}

/* Four independent multiply-xor lanes: fast enough not to be what the
 * benchmark measures, and order-sensitive. */
static uint64_t mix_bytes(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t l[4] = {h, h ^ 0x9e3779b97f4a7c15ull, h ^ 0xc2b2ae3d27d4eb4full, h ^ 0x165667b19e3779f9ull};
    size_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; k++) {
            uint64_t w;
            memcpy(&w, b + i + 8 * k, 8);
            l[k] = (l[k] ^ w) * 0x100000001b3ull;
        }
    for (; i < n; i++)
        l[0] = (l[0] ^ b[i]) * 0x100000001b3ull;
    return stk_rng_mix(stk_rng_mix(l[0], l[1]), stk_rng_mix(l[2], l[3])) ^ n;
}

/* memcpy bandwidth in MB/s over a buffer bigger than the caches. */
static double memcpy_mbs(void)
{
    size_t n = (size_t)256 << 20;
    char *a = malloc(n), *b = malloc(n);
    if (!a || !b) {
        free(a);
        free(b);
        return 0;
    }
    memset(a, 1, n);
    memset(b, 2, n);
    double best = 0;
    for (int r = 0; r < 3; r++) {
        double t0 = tool_now_s();
        memcpy(b, a, n);
        double dt = tool_now_s() - t0;
        if (dt > 0 && n / dt / 1e6 > best)
            best = n / dt / 1e6;
    }
    volatile char sink = b[n / 2];
    (void)sink;
    free(a);
    free(b);
    return best;
}

int main(int argc, char **argv)
{
    const char *dir = NULL, *augment = NULL, *field = NULL, *sampler = "random", *io = NULL;
    const char *me = "stoker-bench";
    int64_t batch = 256, workers = 2, prefetch = 0, epochs = 1, seed = 0, work_us = 0;
    double timeout_s = 0;
    /* The checksum is on by default, so that two runs can be compared
     * for content; it re-reads every batch on the main thread (36% of a
     * workload-2 run), so throughput comparisons with PyTorch's loop,
     * which reads nothing either, pass --no-checksum. */
    int json = 0, checksum = 1, memcpy_too = 1;
    /* Before anything else: workers come from this still-small process. */
    stk_loader_forkserver_start();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NUM(name, var, lo, hi)                                           \
    if (!strcmp(a, name)) {                                              \
        if (!v) {                                                        \
            usage(stderr);                                               \
            return 2;                                                    \
        }                                                                \
        if (tool_parse_i64(me, name, v, lo, hi, &var) < 0)               \
            return 2;                                                    \
        i++;                                                             \
        continue;                                                        \
    }
#define STR(name, var)                                                   \
    if (!strcmp(a, name)) {                                              \
        if (!v) {                                                        \
            usage(stderr);                                               \
            return 2;                                                    \
        }                                                                \
        var = v;                                                         \
        i++;                                                             \
        continue;                                                        \
    }
        NUM("--batch", batch, 1, 1 << 24)
        if (!strcmp(a, "--workers") && v && !strcmp(v, "auto")) {
            workers = -1;
            i++;
            continue;
        }
        NUM("--workers", workers, 0, 1024)
        NUM("--prefetch", prefetch, 0, 64)
        NUM("--epochs", epochs, 1, 1000000000)
        NUM("--seed", seed, 0, INT64_MAX)
        NUM("--work-us", work_us, 0, 10000000)
        if (!strcmp(a, "--timeout")) {
            if (!v) {
                usage(stderr);
                return 2;
            }
            if (tool_parse_f64(me, a, v, 0, 4294967.0, &timeout_s) < 0)
                return 2;
            i++;
            continue;
        }
        STR("--augment", augment)
        STR("--field", field)
        STR("--sampler", sampler)
        STR("--io", io)
        if (!strcmp(a, "--json")) {
            json = 1;
            continue;
        }
        if (!strcmp(a, "--no-memcpy")) {
            memcpy_too = 0;
            continue;
        }
        if (!strcmp(a, "--checksum") || !strcmp(a, "--no-checksum")) {
            checksum = a[2] == 'c';
            continue;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (a[0] == '-' || dir) {
            usage(stderr);
            return 2;
        }
        dir = a;
    }
    if (!dir) {
        usage(stderr);
        return 2;
    }
    if (strcmp(sampler, "random") != 0 && strcmp(sampler, "sequential") != 0) {
        fprintf(stderr, "stoker-bench: --sampler: '%s' is neither random nor sequential\n", sampler);
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sa.sa_flags = SA_RESETHAND; /* no SA_RESTART: a wait returns at once */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    /* INFO: what --workers auto chose and why. */
    stk_log_set_callback(stk_log_stderr, NULL, STK_LOG_INFO);

    stk_dataset_shard_config_t dc;
    stk_dataset_shard_config_default(&dc);
    if (io && !strcmp(io, "uring"))
        dc.io = STK_IO_URING;
    else if (io && !strcmp(io, "pread"))
        dc.io = STK_IO_PREAD;
    else if (io && !strcmp(io, "mmap"))
        dc.io = STK_IO_MMAP;
    else if (io) {
        usage(stderr);
        return 2;
    }
    if (batch > dc.max_batch)
        dc.max_batch = (uint32_t)batch;

    double t_open = tool_now_s();
    stk_dataset_t *ds = NULL;
    int rc = stk_dataset_shard_create(&ds, dir, &dc);
    if (rc) {
        fprintf(stderr, "stoker-bench: %s: %s (%s)\n", dir, stk_error_message(), stk_err_name(rc));
        return 1;
    }
    stk_loader_config_t lc;
    stk_loader_config_default(&lc);
    lc.batch_size = (uint64_t)batch;
    lc.timeout_ms = (uint32_t)ceil(timeout_s * 1000);
    lc.num_workers = workers < 0 ? STK_LOADER_WORKERS_AUTO : (uint32_t)workers;
    lc.prefetch = (uint32_t)prefetch;
    lc.persistent_workers = 1;
    lc.seed = (uint64_t)seed;
    lc.shuffle = strcmp(sampler, "sequential") != 0;
    lc.augment = augment;
    lc.augment_field = field;
    stk_loader_t *l = NULL;
    double t0 = tool_now_s();
    rc = stk_loader_create(&l, ds, &lc);
    if (rc) {
        fprintf(stderr, "stoker-bench: %s (%s)\n", stk_error_message(), stk_err_name(rc));
        stk_dataset_destroy(&ds);
        return 1;
    }
    running_loader = l;
    if (stop_signal) /* came before there was a loader to interrupt */
        stk_loader_interrupt(l);
    int tty = isatty(2) && !json;
    struct rusage ru0;
    getrusage(RUSAGE_SELF, &ru0);
    uint64_t sum = 0x5354424e43480000ull, samples = 0, bytes = 0, nb = 0;
    double first = -1, last_print = t0;
    uint64_t rss_epoch1 = 0, private_epoch1 = 0;
    stk_batch_t b;
    for (int64_t e = 0; e < epochs && rc == 0; e++) {
        rc = stk_loader_set_epoch(l, (uint64_t)e);
        while (rc == 0 && (rc = stk_loader_next(l, &b)) == 0) {
            if (first < 0)
                first = tool_now_s() - t0;
            if (checksum) {
                sum = mix_bytes(sum, b.indices, b.size * sizeof *b.indices);
                for (uint32_t f = 0; f < b.nfields; f++)
                    sum = mix_bytes(sum, b.fields[f].data, b.fields[f].bytes);
            }
            for (uint32_t f = 0; f < b.nfields; f++)
                bytes += b.fields[f].bytes;
            samples += b.size;
            nb++;
            stk_loader_release(l, &b);
            if (work_us)
                busy_us(work_us);
            if (tty && (nb & 15) == 0) {
                double t = tool_now_s();
                if (t - last_print > 0.25) {
                    fprintf(stderr, "\repoch %lld  batch %llu/%llu  %.0f samples/s   ", (long long)e,
                            (unsigned long long)b.number + 1, (unsigned long long)stk_loader_len(l),
                            samples / (t - t0));
                    last_print = t;
                }
            }
        }
        if (rc == STK_DONE)
            rc = 0;
        if (e == 0) {
            stk_loader_stats_t s1;
            stk_loader_get_stats(l, &s1);
            rss_epoch1 = s1.worker_max_rss_kb;
            private_epoch1 = s1.worker_max_private_kb;
        }
    }
    double dt = tool_now_s() - t0;
    if (tty)
        fprintf(stderr, "\r%60s\r", "");
    if (rc) {
        int sig = stop_signal;
        if (sig && rc == -EINTR)
            fprintf(stderr, "stoker-bench: stopped by SIG%s after %llu batches\n",
                    sigabbrev_np(sig), (unsigned long long)nb);
        else
            fprintf(stderr, "stoker-bench: %s (%s)\n", stk_error_message(), stk_err_name(rc));
        running_loader = NULL;
        stk_loader_destroy(&l);
        stk_dataset_destroy(&ds);
        return sig && rc == -EINTR ? 128 + sig : 1;
    }
    stk_loader_stats_t st;
    stk_loader_get_stats(l, &st);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    /* Where a batch's time goes, in CPU time (what a busy machine does
     * not inflate): main's own, a worker's, and how often each slept. */
    double main_cpu = (double)(ru.ru_utime.tv_sec - ru0.ru_utime.tv_sec + ru.ru_stime.tv_sec -
                               ru0.ru_stime.tv_sec) * 1e6 +
                      (double)(ru.ru_utime.tv_usec - ru0.ru_utime.tv_usec + ru.ru_stime.tv_usec -
                               ru0.ru_stime.tv_usec);
    double per = nb ? 1.0 / (double)nb : 0;
    double main_us = main_cpu * per;
    double worker_us = st.worker_cpu_batches ? st.worker_cpu_ns / 1e3 / st.worker_cpu_batches : 0;
    char wtxt[32];
    snprintf(wtxt, sizeof wtxt, "%u%s", st.num_workers,
             workers < 0 ? (st.auto_decided ? " (auto)" : " (auto, undecided)") : "");
    /* After the RSS reading: its buffers are not the loader's. */
    double mcpy = memcpy_too ? memcpy_mbs() : 0;
    static const char *const ionames[] = {"auto", "uring", "pread", "mmap"};
    const char *iomode = ionames[stk_dataset_io_mode(ds) & 3];
    double sps = samples / dt, mbs = bytes / dt / 1e6;
    char cks[24] = "null";
    if (checksum)
        snprintf(cks, sizeof cks, "\"%016llx\"", (unsigned long long)sum);
    if (json) {
        printf("{\"dir\":\"%s\",\"batch\":%llu,\"workers\":%u,\"workers_auto\":%s,"
               "\"prefetch\":%llu,\"io\":\"%s\","
               "\"augment\":\"%s\",\"epochs\":%llu,\"seed\":%llu,\"work_us\":%lld,"
               "\"samples\":%llu,\"batches\":%llu,"
               "\"seconds\":%.6f,\"samples_per_s\":%.1f,\"mb_per_s\":%.1f,\"memcpy_mb_per_s\":%.1f,"
               "\"first_batch_ms\":%.3f,\"open_ms\":%.3f,"
               "\"read_ms\":%.3f,\"read_mb\":%.3f,\"decode_ms\":%.3f,\"decode_mb\":%.3f,"
               "\"augment_ms\":%.3f,\"augment_mb\":%.3f,\"collate_ms\":%.3f,\"collate_mb\":%.3f,"
               "\"wait_ms\":%.3f,\"skipped\":%llu,\"checked\":%llu,\"main_max_rss_kb\":%ld,"
               "\"worker_max_rss_kb\":%llu,"
               "\"worker_rss_after_epoch1_kb\":%llu,\"worker_max_private_kb\":%llu,"
               "\"worker_private_after_epoch1_kb\":%llu,\"main_cpu_us_per_batch\":%.2f,"
               "\"worker_cpu_us_per_batch\":%.2f,\"main_sleeps_per_batch\":%.3f,"
               "\"worker_sleeps_per_batch\":%.3f,\"checksum\":%s}\n",
               dir, (unsigned long long)batch, st.num_workers, workers < 0 ? "true" : "false",
               (unsigned long long)prefetch, iomode, augment ? augment : "",
               (unsigned long long)epochs, (unsigned long long)seed, (long long)work_us,
               (unsigned long long)samples, (unsigned long long)nb, dt, sps, mbs, mcpy, first * 1e3,
               (t0 - t_open) * 1e3, st.read.ns / 1e6, st.read.bytes / 1e6, st.decode.ns / 1e6,
               st.decode.bytes / 1e6, st.augment.ns / 1e6, st.augment.bytes / 1e6,
               st.collate.ns / 1e6, st.collate.bytes / 1e6, st.wait.ns / 1e6,
               (unsigned long long)st.skipped, (unsigned long long)st.checked, ru.ru_maxrss,
               (unsigned long long)st.worker_max_rss_kb,
               (unsigned long long)rss_epoch1, (unsigned long long)st.worker_max_private_kb,
               (unsigned long long)private_epoch1, main_us, worker_us,
               (double)st.main_sleeps * per, (double)st.worker_sleeps * per, cks);
    } else {
        printf("stoker-bench %s: batch %llu, workers %s, prefetch %llu, io %s, augment \"%s\"\n",
               dir, (unsigned long long)batch, wtxt, (unsigned long long)prefetch, iomode,
               augment ? augment : "");
        printf("  %llu samples in %llu batches, %llu epoch(s), %.3f s\n",
               (unsigned long long)samples, (unsigned long long)nb, (unsigned long long)epochs, dt);
        printf("  %.0f samples/s, %.1f MB/s (memcpy %.0f MB/s in this run)\n", sps, mbs, mcpy);
        printf("  time to first batch %.3f ms (dataset open %.3f ms)\n", first * 1e3,
               (t0 - t_open) * 1e3);
        printf("  stage     time(ms, summed over workers)  MB\n");
        printf("  read      %10.1f  %10.1f\n", st.read.ns / 1e6, st.read.bytes / 1e6);
        printf("  decode    %10.1f  %10.1f\n", st.decode.ns / 1e6, st.decode.bytes / 1e6);
        printf("  augment   %10.1f  %10.1f\n", st.augment.ns / 1e6, st.augment.bytes / 1e6);
        printf("  collate   %10.1f  %10.1f\n", st.collate.ns / 1e6, st.collate.bytes / 1e6);
        printf("  wait(main)%10.1f\n", st.wait.ns / 1e6);
        printf("  per batch: main CPU %.1f us, worker CPU %.1f us; main slept %.2f times, "
               "workers %.2f times\n", main_us, worker_us, (double)st.main_sleeps * per,
               (double)st.worker_sleeps * per);
        printf("  records checksummed: %llu (once per loader)\n", (unsigned long long)st.checked);
        printf("  peak RSS: main %ld kB, worker %llu kB (after epoch 1: %llu kB)\n", ru.ru_maxrss,
               (unsigned long long)st.worker_max_rss_kb, (unsigned long long)rss_epoch1);
        printf("  worker private memory (RSS less shared and mapped pages): peak %llu kB "
               "(after epoch 1: %llu kB)\n", (unsigned long long)st.worker_max_private_kb,
               (unsigned long long)private_epoch1);
        if (checksum)
            printf("  checksum %016llx\n", (unsigned long long)sum);
    }
    stk_loader_destroy(&l);
    stk_dataset_destroy(&ds);
    stk_loader_forkserver_stop();
    return 0;
}
