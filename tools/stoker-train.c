/* SPDX-License-Identifier: MIT */
/* stoker-train: a training run from one config file (TRAIN_CONFIG.md), as a
 * thin CLI over train.h. It parses the config, opens the data, builds the
 * model, optimizer and scheduler, settles the run's identity (a new run
 * never mixes with another run's checkpoints or metrics; a resumed one
 * says which run it continues), hands the loop to stk_train_run, and
 * prints progress, metrics, the plot and the summary. A signal stops the
 * run at the next optimizer step with a checkpoint. Everything is
 * validated before the first byte of output is written. */
#define _GNU_SOURCE
#include "stoker-train.h"
#include "tool_args.h"
#include "tool_clock.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "stoker/stoker.h"

/* ---- signals ----------------------------------------------------------- */

/* SIGINT and SIGTERM are blocked in every thread and taken by one thread
 * of their own (sigwait), never by a handler: a handler runs on whichever
 * thread the signal interrupts, and oneDNN's JIT kernels run with the stack
 * pointer moved into heap memory, so the kernel's signal frame (several KB
 * with the AVX-512 state) overwrote malloc's chunk headers there, and the
 * run died of "corrupted size vs. prev_size" at its next free (1 SIGTERM
 * in 16; docs/custom-loop.md, "Signals"). The thread asks the loop to stop
 * at its next optimizer step, ends the loaders' waits (a stopped worker
 * cannot hold the stop), and exits at once on a second signal or when the
 * stop takes longer than stop_grace. */

static volatile sig_atomic_t stop_requested;
static sigset_t stop_signals;
static unsigned stop_grace_s = 30;
static pthread_mutex_t loaders_lock = PTHREAD_MUTEX_INITIALIZER;
static stk_loader_t *loaders[2]; /* to interrupt; set while they exist */

static void *signal_thread(void *arg)
{
    (void)arg;
    int sig = 0;
    if (sigwait(&stop_signals, &sig) != 0)
        return NULL;
    stop_requested = 1;
    pthread_mutex_lock(&loaders_lock);
    for (int i = 0; i < 2; i++)
        if (loaders[i])
            stk_loader_interrupt(loaders[i]);
    pthread_mutex_unlock(&loaders_lock);
    struct timespec grace = {(time_t)stop_grace_s, 0};
    siginfo_t si;
    if (sigtimedwait(&stop_signals, &si, &grace) > 0)
        fprintf(stderr, "\nstoker-train: second signal (SIG%s): exiting at once, without a new checkpoint\n",
                sigabbrev_np(si.si_signo) ? sigabbrev_np(si.si_signo) : "?");
    else
        fprintf(stderr, "\nstoker-train: the run did not stop within %u s of SIG%s: exiting without a new "
                "checkpoint\n", stop_grace_s, sigabbrev_np(sig) ? sigabbrev_np(sig) : "?");
    _exit(EXIT_STOPPED);
}

/* Before any other thread exists (the engine's come later and inherit the
 * mask). Returns 0 or an exit status. */
static int take_signals(void)
{
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_t t;
    if (pthread_sigmask(SIG_BLOCK, &stop_signals, NULL) != 0 || pthread_create(&t, NULL, signal_thread, NULL) != 0)
        return train_fail(EXIT_RUNTIME, "cannot start the signal thread");
    pthread_detach(t);
    return 0;
}

static void publish_loaders(stk_loader_t *a, stk_loader_t *b)
{
    pthread_mutex_lock(&loaders_lock);
    loaders[0] = a;
    loaders[1] = b;
    pthread_mutex_unlock(&loaders_lock);
}

/* ---- messages ---------------------------------------------------------- */

static void usage(FILE *f)
{
    fputs("usage: stoker-train CONFIG [--set key=value]... [--resume PATH [--force]] [--json] [--print-config]\n"
          "  CONFIG          'key = value' lines, # comments (see tools/TRAIN_CONFIG.md)\n"
          "  --set k=v       override one key (repeatable)\n"
          "  --resume PATH   continue the run whose checkpoints are in PATH: a run_dir, a checkpoint\n"
          "                  folder (its newest checkpoint) or a checkpoint file\n"
          "  --force         resume even when the config changed keys that decide the computation\n"
          "  --json          print one JSON object with the results as the last line\n"
          "  --print-config  print the effective config and exit\n",
          f);
}

/* ---- progress ------------------------------------------------------------ */

static void on_step(const stk_train_progress_t *p, void *user)
{
    run_t *r = user;
    if (p->epoch + 1 == r->pause_epoch && p->batch == r->pause_batch) {
        r->pause_epoch = 0;
        raise(SIGSTOP);
        /* A test's signal goes to the signal thread, which runs when it
         * runs: wait for it (up to 1 s) so that the stop lands at this
         * step and not one or two later. */
        for (int i = 0; i < 1000 && !stop_requested; i++)
            nanosleep(&(struct timespec){0, 1000000}, NULL);
    }
    r->compute_s += p->last->compute_s;
    r->optim_s += p->last->optim_s;
    r->skipped += (uint64_t)p->last->skipped;
    r->loss_scale = p->last->loss_scale;
    if (r->quiet)
        return;
    double t = tool_now_s();
    if (t - r->t_print < (r->tty ? 0.25 : r->cfg.progress_every))
        return;
    r->t_print = t;
    fprintf(stderr, "%sepoch %" PRIu64 "/%d  batch %" PRIu64 "/%" PRIu64 "  step %" PRIu64 "  loss %.4f  acc %.2f%%  "
            "lr %.4g  %.0f img/s  wait %.1f%%%s", r->tty ? "\r\033[K" : "", p->epoch + 1, r->cfg.epochs, p->batch,
            p->batches, p->step, p->loss, 100 * p->acc, p->lr, p->images_per_s, 100 * p->data_wait,
            r->tty ? "" : "\n");
    fflush(stderr);
}

static int on_epoch(const stk_train_epoch_t *e, const stk_train_state_t *st, void *user)
{
    run_t *r = user;
    if (!r->quiet) {
        fprintf(stderr, "%sepoch %" PRIu64 "/%d  step %" PRIu64 "  loss %.4f  acc %.2f%%  test_loss %.4f  "
                "test_acc %.2f%%  lr %.4g  %.0f img/s  wait %.1f%%  %.1fs\n", r->tty ? "\r\033[K" : "", e->epoch,
                r->cfg.epochs, e->step, e->train_loss, 100 * e->train_acc, e->test_loss, 100 * e->test_acc, e->lr,
                e->images_per_s, 100 * e->data_wait, e->epoch_s);
        fflush(stderr);
        r->t_print = tool_now_s();
    }
    if (r->metrics && train_metrics_write(r->metrics, st->run_id, e) != 0) {
        train_fail(EXIT_RUNTIME, "key 'metrics': write %s failed", r->cfg.metrics);
        return -EIO;
    }
    int rc;
    if (r->plot_path[0] && (rc = train_plot_svg(r->plot_path, st->history, st->n_history)) != 0) {
        train_fail(EXIT_RUNTIME, "plot %s: %s", r->plot_path, strerror(-rc));
        return rc;
    }
    return 0;
}

static void on_checkpoint(const char *path, const stk_train_state_t *st, void *user)
{
    (void)st;
    run_t *r = user;
    snprintf(r->last_ckpt, sizeof r->last_ckpt, "%s", path);
}

/* The run failed after a stop was asked for: the same signal reached the
 * workers (a process-group SIGTERM, as timeout(1), a shell's job control
 * or a container stop send). The loop leaves the state at its last
 * optimizer step, consistent with the model and optimizer: saved, the run
 * resumes from there. */
static int stopped_by_failure(run_t *r, int lrc, const stk_train_loop_config_t *lc)
{
    char why[1024];
    snprintf(why, sizeof why, "%s (%s)", stk_error_message(), stk_err_name(lrc));
    if (!lc->checkpoint_dir)
        return train_fail(EXIT_STOPPED, "interrupted; then %s; no checkpoint_dir: nothing saved", why);
    /* Data-parallel: rank 0's state is the run's; the others write nothing. */
    if (r->env.rank != 0)
        return train_fail(EXIT_STOPPED, "interrupted; then %s; rank 0 saves the checkpoint", why);
    stk_train_parts_t parts = {r->model, r->opt, r->sched};
    char path[4096];
    int rc = stk_train_checkpoint_save(lc->checkpoint_dir, &parts, &r->st, lc->extra, lc->n_extra, lc->keep_last,
                                       path, sizeof path);
    if (rc)
        return train_fail(EXIT_RUNTIME, "interrupted; then %s; and the checkpoint failed: %s", why,
                          stk_error_message());
    return train_fail(EXIT_STOPPED, "interrupted at epoch %" PRIu64 ", step %" PRIu64 " (then %s); resume from %s",
                      r->st.epoch + 1, r->st.step, why, path);
}

/* ---- results ------------------------------------------------------------- */

static void print_results(const run_t *r, double wall_s)
{
    const stk_train_state_t *st = &r->st;
    train_summary_print(stdout, st->history, st->n_history);
    double best = NAN, final = NAN;
    uint64_t best_epoch = 0;
    for (size_t i = 0; i < st->n_history; i++) {
        if (!(st->history[i].test_acc <= best)) {
            best = st->history[i].test_acc;
            best_epoch = st->history[i].epoch;
        }
        final = st->history[i].test_acc;
    }
    double ips = st->total_train_s > 0 ? (double)st->total_images / st->total_train_s : 0;
    double wait = st->total_train_s > 0 ? st->total_wait_s / st->total_train_s : 0;
    if (!strcmp(r->cfg.target, "next_token")) {
        /* a language model: the loss is per character (counted step), and
         * "images" are the characters trained on */
        double bpc = NAN, best_bpc = NAN;
        for (size_t i = 0; i < st->n_history; i++) {
            double b = st->history[i].test_loss / log(2.0);
            if (!(b >= best_bpc))
                best_bpc = b;
            bpc = b;
        }
        printf("run %s: final test %.4f bits per character, best %.4f, %.0f characters/s, data wait %.2f%%, %.1f s\n",
               st->run_id, bpc, best_bpc, ips, 100 * wait, wall_s);
        if (r->json)
            printf("{\"run\":\"%s\",\"final_test_bpc\":%.6f,\"best_test_bpc\":%.6f,\"final_test_acc\":%.6f,"
                   "\"epochs\":%" PRIu64 ",\"steps\":%" PRIu64 ",\"chars_per_s\":%.1f,\"data_wait\":%.6f,"
                   "\"wall_s\":%.3f,\"train_s\":%.3f}\n",
                   st->run_id, isfinite(bpc) ? bpc : 0, isfinite(best_bpc) ? best_bpc : 0, isfinite(final) ? final : 0,
                   st->epoch, st->step, ips, wait, wall_s, st->total_train_s);
        fflush(stdout);
        return;
    }
    printf("run %s: final test accuracy %.2f%%, best %.2f%% (epoch %" PRIu64 "), %.0f images/s, data wait %.2f%%, "
           "%.1f s\n", st->run_id, 100 * final, 100 * best, best_epoch, ips, 100 * wait, wall_s);
    printf("device: %s\n", r->device);
    if (r->on_device) {
        stk_algo_stats_t as;
        stk_model_algo_stats(r->model, &as);
        printf("cudnn: %s", r->cfg.cudnn);
        if (!strcmp(r->cfg.cudnn, "benchmark"))
            printf(" (%" PRIu64 " convolution plans: %" PRIu64 " from the cache, %" PRIu64 " timed%s%s)", as.plans,
                   as.hits, as.misses, r->cfg.cudnn_cache[0] ? "; cache " : "", r->cfg.cudnn_cache);
        if (r->cfg.cudnn_workspace_mb > 0)
            printf(", workspace limit %g MiB", r->cfg.cudnn_workspace_mb);
        printf("\n");
    }
    char graph[128] = "off";
    uint64_t captures = 0, replays = 0;
    /* Graphs asked for but never captured: say what kept every step out
     * of them (the stepper's and the profile's rules), not just "0". */
    const char *unused = NULL;
    if (r->cfg.profile)
        unused = "profile = true times each layer";
    else if (r->loss_scaling)
        unused = "loss scaling decides each step on the host";
    else if (r->cfg.accum_steps > 1)
        unused = "accum_steps > 1";
    else if (r->cfg.clip_norm > 0)
        unused = "clip_norm";
    else if (r->ddp)
        unused = "data-parallel gradient hooks";
    if (stk_model_cuda_graph(r->model, &captures, &replays) && captures == 0 && unused)
        snprintf(graph, sizeof graph, "on, unused (%s)", unused);
    else if (stk_model_cuda_graph(r->model, NULL, NULL))
        snprintf(graph, sizeof graph, "on (%" PRIu64 " captured, %" PRIu64 " steps replayed)", captures, replays);
    else if (!r->on_device)
        snprintf(graph, sizeof graph, "off (not a GPU)");
    char scaling[96] = "off";
    if (r->loss_scaling)
        snprintf(scaling, sizeof scaling, "dynamic, last scale %g, %" PRIu64 " steps skipped", (double)r->loss_scale,
                 r->skipped);
    /* bf16 and fp16 on the CPU round as a GPU would around fp32
     * arithmetic: for checking a recipe, not for speed. */
    char prec[96];
    const char *used = stk_precision_name(r->precision);
    if (strcmp(r->cfg.precision, used))
        snprintf(prec, sizeof prec, "%s (%s asked; this device computes it as fp32)", used, r->cfg.precision);
    else if (!r->on_device && (r->precision == STK_PRECISION_BF16 || r->precision == STK_PRECISION_FP16))
        snprintf(prec, sizeof prec, "%s (emulated on the CPU, slower than fp32)", used);
    else
        snprintf(prec, sizeof prec, "%s", used);
    printf("precision: %s; cuda graph: %s; loss scaling: %s\n", prec, graph, scaling);
    if (r->json) {
        /* The device line is the engine's (a GPU's name): keep it a string. */
        char dev[sizeof r->device];
        size_t k = 0;
        for (const char *p = r->device; *p && k + 1 < sizeof dev; p++)
            dev[k++] = *p == '"' || *p == '\\' || (unsigned char)*p < 0x20 ? ' ' : *p;
        dev[k] = '\0';
        printf("{\"run\":\"%s\",\"final_test_acc\":%.6f,\"best_test_acc\":%.6f,\"best_epoch\":%" PRIu64
               ",\"epochs\":%" PRIu64 ",\"steps\":%" PRIu64 ",\"images_per_s\":%.1f,\"data_wait\":%.6f,"
               "\"wall_s\":%.3f,\"train_s\":%.3f,\"device\":\"%s\",\"precision\":\"%s\",\"cuda_graph\":%s,"
               "\"loss_scaling\":%s,\"skipped_steps\":%" PRIu64 "}\n",
               st->run_id, isfinite(final) ? final : 0, isfinite(best) ? best : 0, best_epoch, st->epoch, st->step,
               ips, wait, wall_s, st->total_train_s, dev, stk_precision_name(r->precision),
               stk_model_cuda_graph(r->model, NULL, NULL) ? "true" : "false",
               r->loss_scaling ? "true" : "false", r->skipped);
    }
    fflush(stdout);
}

static void print_profile(const run_t *r)
{
    const stk_train_state_t *st = &r->st;
    double train = st->total_train_s > 0 ? st->total_train_s : 1, eval = 0;
    for (size_t i = 0; i < st->n_history; i++)
        eval += st->history[i].epoch_s;
    eval -= st->total_train_s;
    double other = train - r->compute_s - r->optim_s - st->total_wait_s;
    fprintf(stderr, "phase            seconds   share of training\n");
    fprintf(stderr, "forward+backward %8.2f   %5.1f%%\n", r->compute_s, 100 * r->compute_s / train);
    fprintf(stderr, "optimizer step   %8.2f   %5.1f%%\n", r->optim_s, 100 * r->optim_s / train);
    fprintf(stderr, "data wait        %8.2f   %5.1f%%\n", st->total_wait_s, 100 * st->total_wait_s / train);
    fprintf(stderr, "other            %8.2f   %5.1f%%\n", other, 100 * other / train);
    fprintf(stderr, "evaluation       %8.2f   (not in training time)\n", eval > 0 ? eval : 0);
    size_t need = stk_model_stats_format(r->model, NULL, 0);
    char *buf = malloc(need + 1);
    if (buf) {
        stk_model_stats_format(r->model, buf, need + 1);
        fputs(buf, stderr);
        free(buf);
    }
}

/* ---- main ---------------------------------------------------------------- */

static int parse_args(run_t *r, int argc, char **argv, const char **resume, int *print_config)
{
    const char *config = NULL;
    char err[2048];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(a, "--set") || !strcmp(a, "--resume")) {
            if (i + 1 >= argc) {
                usage(stderr);
                return train_fail(EXIT_USAGE, "%s needs an argument", a);
            }
            if (!strcmp(a, "--resume"))
                *resume = argv[i + 1];
            i++;
        } else if (!strncmp(a, "--resume=", 9)) {
            *resume = a + 9;
        } else if (!strcmp(a, "--json")) {
            r->json = 1;
        } else if (!strcmp(a, "--force")) {
            r->force = 1;
        } else if (!strcmp(a, "--print-config")) {
            *print_config = 1;
        } else if (strncmp(a, "--set=", 6) != 0 && a[0] == '-') {
            usage(stderr);
            return train_fail(EXIT_USAGE, "unknown option %s", a);
        } else if (a[0] != '-') {
            if (config) {
                usage(stderr);
                return train_fail(EXIT_USAGE, "more than one config file (%s, %s)", config, a);
            }
            config = a;
        }
    }
    if (!config) {
        usage(stderr);
        return train_fail(EXIT_USAGE, "no config file given");
    }
    if (r->force && !*resume)
        return train_fail(EXIT_USAGE, "--force only applies to --resume");
    r->config_path = config;
    train_config_default(&r->cfg);
    if (train_config_load(&r->cfg, config, err, sizeof err))
        return train_fail(EXIT_USAGE, "%s", err);
    /* --set in order after the file: later settings win. */
    for (int i = 1; i < argc; i++) {
        const char *set = NULL;
        if (!strcmp(argv[i], "--set"))
            set = argv[++i];
        else if (!strcmp(argv[i], "--resume"))
            i++;
        else if (!strncmp(argv[i], "--set=", 6))
            set = argv[i] + 6;
        if (set && train_config_set(&r->cfg, set, err, sizeof err))
            return train_fail(EXIT_USAGE, "%s", err);
    }
    if (train_config_check(&r->cfg, config, err, sizeof err))
        return train_fail(EXIT_USAGE, "%s", err);
    return 0;
}

/* Joins the job the launcher started (after the loaders' fork server, so
 * that workers never inherit the communicator) and wraps the model for
 * data-parallel training: rank 0's parameters everywhere, gradients
 * all-reduced in buckets of bucket_mb during backward. */
static int join_job(run_t *r)
{
    stk_comm_config_t cc;
    stk_comm_config_default(&cc);
    cc.env = &r->env;
    /* Gradients where the model keeps them: NCCL for a GPU's. */
    cc.device = r->on_device ? STK_DEVICE_CUDA : STK_DEVICE_CPU;
    cc.cuda_device = r->cuda_index;
    int rc = stk_comm_create(&r->comm, &cc);
    if (rc)
        return train_fail_stk(rc, "joining the job");
    stk_ddp_config_t dc;
    stk_ddp_config_default(&dc);
    dc.bucket_bytes = (size_t)(r->cfg.bucket_mb * 1048576.0);
    if (dc.bucket_bytes < sizeof(float))
        dc.bucket_bytes = sizeof(float);
    if (dc.first_bucket_bytes > dc.bucket_bytes)
        dc.first_bucket_bytes = dc.bucket_bytes;
    dc.sync_bn = r->cfg.sync_bn;
    if ((rc = stk_ddp_create(&r->ddp, r->comm, r->model, &dc)) != 0)
        return train_fail_stk(rc, "data-parallel setup");
    if (r->env.rank == 0)
        fprintf(stderr, "stoker-train: %d ranks (%s, launched by %s), %zu gradient bucket%s%s\n", r->env.world_size,
                stk_comm_backend_name(stk_comm_backend(r->comm)), stk_dist_launcher_name(r->env.launcher),
                stk_ddp_num_buckets(r->ddp), stk_ddp_num_buckets(r->ddp) == 1 ? "" : "s",
                r->cfg.sync_bn ? ", synchronized batchnorm" : "");
    return 0;
}

int main(int argc, char **argv)
{
    static run_t run;
    run_t *r = &run;
    const char *resume = NULL;
    int print_config = 0;
    /* OpenMP threads that wait passively (it executes us again once). */
    stk_engine_passive_wait(argv);
    double t_begin = tool_now_s();
    int rc = parse_args(r, argc, argv, &resume, &print_config);
    if (rc)
        return rc;
    stop_grace_s = (unsigned)r->cfg.stop_grace;
    const char *pause = getenv("STK_TRAIN_TEST_PAUSE");
    if (pause) {
        char ep[32];
        const char *colon = strchr(pause, ':');
        int64_t e, b;
        if (!colon || (size_t)(colon - pause) >= sizeof ep)
            return train_fail(EXIT_USAGE, "STK_TRAIN_TEST_PAUSE=%s: expected EPOCH:BATCH", pause);
        memcpy(ep, pause, (size_t)(colon - pause));
        ep[colon - pause] = '\0';
        if (tool_parse_i64("stoker-train", "STK_TRAIN_TEST_PAUSE epoch", ep, 1, INT64_MAX, &e) ||
            tool_parse_i64("stoker-train", "STK_TRAIN_TEST_PAUSE batch", colon + 1, 1, INT64_MAX, &b))
            return EXIT_USAGE;
        r->pause_epoch = (uint64_t)e;
        r->pause_batch = (uint64_t)b;
    }
    if (print_config) {
        char *buf = malloc(65536);
        if (!buf || train_config_format(&r->cfg, buf, 65536)) {
            free(buf);
            return train_fail(EXIT_RUNTIME, "config too long to print");
        }
        fputs(buf, stdout);
        free(buf);
        return 0;
    }
    r->tty = isatty(STDERR_FILENO);
    r->quiet = r->cfg.progress == 0;
    if (r->cfg.progress == 1)
        r->tty = 1;
    /* Data-parallel when a launcher started several ranks: rank 0 reports
     * (global figures) and writes; the others train quietly. */
    if ((rc = stk_dist_env_detect(&r->env)) != 0)
        return train_fail(EXIT_USAGE, "%s", stk_error_message());
    if (r->env.rank != 0)
        r->quiet = 1;
    /* profile = true also shows what the library reports as it plans
     * (the cuDNN engine chosen for each convolution, once). */
    stk_log_set_callback(stk_log_stderr, NULL, r->cfg.profile ? STK_LOG_INFO : STK_LOG_WARN);
    /* Workers fork from a clean process made before the model exists (and
     * before the signals are blocked: workers keep the default ones). */
    if (r->cfg.workers > 0 && stk_loader_forkserver_start() != 0)
        return train_fail_stk(-EAGAIN, "fork server");
    if ((rc = take_signals()) != 0)
        return rc;

    rc = train_setup(r, resume);
    publish_loaders(r->train_loader, r->test_loader);
    if (rc == 0 && stop_requested)
        rc = train_fail(EXIT_STOPPED, "interrupted during setup (nothing written)");
    if (rc == 0 && r->env.world_size > 1 && r->st.epoch < (uint64_t)r->cfg.epochs)
        rc = join_job(r);
    if (rc == 0 && r->st.epoch >= (uint64_t)r->cfg.epochs) {
        fprintf(stderr, "stoker-train: run %s is complete (%" PRIu64 " of %d epochs): nothing to do\n", r->st.run_id,
                r->st.epoch, r->cfg.epochs);
        if (r->env.rank == 0)
            print_results(r, tool_now_s() - t_begin);
    } else if (rc == 0 && (rc = train_open_outputs(r)) == 0) {
        if (r->cfg.profile)
            stk_model_set_profiling(r->model, 1);
        stk_train_loop_config_t lc;
        stk_train_loop_config_default(&lc);
        lc.model = r->model;
        lc.optim = r->opt;
        lc.sched = r->sched;
        lc.train_loader = r->train_loader;
        lc.train_inputs = r->train_in;
        lc.eval_loader = r->test_loader;
        lc.eval_inputs = r->test_in;
        lc.epochs = (uint64_t)r->cfg.epochs;
        lc.stop_after = (uint64_t)r->cfg.stop_after_epochs;
        lc.stepper.accum_steps = (uint32_t)r->cfg.accum_steps;
        lc.stepper.clip_norm = r->cfg.clip_norm;
        if (r->loss_scaling) {
            stk_loss_scaler_config_default(&lc.stepper.loss_scaling);
            lc.stepper.loss_scaling.init_scale = r->cfg.loss_scale_init;
            lc.stepper.loss_scaling.growth_interval = (uint32_t)r->cfg.loss_scale_growth_interval;
        }
        lc.checkpoint_dir = r->cfg.checkpoint_dir[0] ? r->cfg.checkpoint_dir : NULL;
        lc.keep_last = (unsigned)r->cfg.keep_last;
        lc.checkpoint_steps = (uint64_t)r->cfg.checkpoint_steps;
        stk_ckpt_section_t ident = {"run", r->identity, strlen(r->identity)};
        lc.extra = &ident;
        lc.n_extra = 1;
        lc.stop = &stop_requested;
        lc.on_step = on_step;
        lc.on_epoch = on_epoch;
        lc.on_checkpoint = on_checkpoint;
        lc.user = r;
        lc.comm = r->comm;
        lc.stepper.ddp = r->ddp;
        int lrc = stk_train_run(&lc, &r->st);
        if (!r->quiet && r->tty)
            fputs("\r\033[K", stderr);
        if (lrc == 0) {
            if (r->env.rank == 0)
                print_results(r, tool_now_s() - t_begin);
            if (r->cfg.profile)
                print_profile(r);
        } else if (lrc == -EINTR) {
            rc = train_fail(EXIT_STOPPED, "interrupted: %s; %s%s", stk_error_message(),
                            r->last_ckpt[0] ? "resume from " : "no checkpoint_dir: nothing saved",
                            r->last_ckpt[0] ? r->last_ckpt : "");
        } else if (stop_requested && lrc != -EIO && lrc != -EDOM) {
            rc = stopped_by_failure(r, lrc, &lc);
        } else if (lrc == -EIO && r->metrics) {
            rc = EXIT_RUNTIME;
        } else {
            rc = train_fail_stk(lrc, "training");
        }
    }
    publish_loaders(NULL, NULL);
    stk_ddp_destroy(&r->ddp);
    stk_comm_destroy(&r->comm);
    train_teardown(r);
    stk_loader_forkserver_stop();
    return rc;
}
