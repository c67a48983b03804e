/* SPDX-License-Identifier: MIT */
/* Why stoker-train takes its signals in a thread of its own: runs the
 * same forward and backward of a model file over and over while another
 * thread sends the process a signal every few microseconds, and checks
 * that logits and gradients stay bit-identical to a first, quiet step.
 *
 *   stoker-signalstress MODEL [--handler] [--steps N] [--every-us U]
 *
 * Default: the signal is blocked in every thread and one thread takes it
 * with sigwait (stoker-train's way): no step changes. --handler installs a
 * flag-setting handler instead (the old way): the handler's frame lands
 * wherever the interrupted thread's stack pointer is, and oneDNN's JIT
 * kernels move it into heap memory, so the run soon dies in free() with
 * "corrupted size vs. prev_size" or "invalid pointer". Not installed. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "stoker/stoker.h"
#include "tool_args.h"

static volatile sig_atomic_t done, seen;
static sigset_t set;

static void on_signal(int sig)
{
    (void)sig;
    seen = 1;
}

static void *sender(void *arg)
{
    int us = *(int *)arg;
    while (!done) {
        kill(getpid(), SIGUSR1);
        usleep((useconds_t)us);
    }
    return NULL;
}

static void *waiter(void *arg)
{
    (void)arg;
    for (;;) {
        int sig;
        if (sigwait(&set, &sig) == 0)
            seen = 1;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int handler = 0, steps = 40, us = 20;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--handler"))
            handler = 1;
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc) {
            if (tool_parse_int("stoker-signalstress", "--steps", argv[++i], 1, 1000000, &steps))
                return 2;
        } else if (!strcmp(argv[i], "--every-us") && i + 1 < argc) {
            if (tool_parse_int("stoker-signalstress", "--every-us", argv[++i], 1, 1000000, &us))
                return 2;
        } else {
            fprintf(stderr, "usage: stoker-signalstress MODEL [--handler] [--steps N] [--every-us U]\n");
            return 2;
        }
    }
    if (argc < 2) {
        fprintf(stderr, "usage: stoker-signalstress MODEL [--handler] [--steps N] [--every-us U]\n");
        return 2;
    }
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    pthread_t t;
    if (handler) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigaction(SIGUSR1, &sa, NULL);
    } else {
        /* Before the engine makes its threads: they inherit the mask. */
        pthread_sigmask(SIG_BLOCK, &set, NULL);
        pthread_create(&t, NULL, waiter, NULL);
    }
    stk_model_config_t mc;
    stk_model_config_default(&mc);
    mc.batch_size = 128;
    mc.threads = 2;
    stk_model_t *m;
    if (stk_model_create_from_file(&m, argv[1], &mc) != 0) {
        fprintf(stderr, "stoker-signalstress: %s\n", stk_error_message());
        return 1;
    }
    int64_t shape[4];
    stk_model_input_shape(m, shape);
    size_t per = (size_t)(shape[1] * shape[2] * shape[3]), np, nc = (size_t)stk_model_num_classes(m) * 128;
    float *x = malloc(128 * per * sizeof *x);
    int64_t y[128];
    for (size_t i = 0; i < 128 * per; i++)
        x[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
    for (int i = 0; i < 128; i++)
        y[i] = i % stk_model_num_classes(m);
    stk_model_grads(m, &np);
    float *g0 = malloc(np * sizeof *g0), *l0 = malloc(nc * sizeof *l0), *l1 = malloc(nc * sizeof *l1), loss0, loss;
    /* The parameters do not change (no optimizer step) and dropout is
     * replayed at step 0: every step computes the same bits. */
    stk_model_set_step(m, 0);
    stk_model_forward(m, x, 128, y, NULL, &loss0);
    stk_model_read_logits(m, l0, nc);
    stk_model_backward(m);
    memcpy(g0, stk_model_grads(m, NULL), np * sizeof *g0);
    pthread_t s;
    pthread_create(&s, NULL, sender, &us);
    int bad = 0;
    for (int it = 0; it < steps; it++) {
        stk_model_set_step(m, 0);
        stk_model_zero_grad(m);
        stk_model_forward(m, x, 128, y, NULL, &loss);
        stk_model_read_logits(m, l1, nc);
        stk_model_backward(m);
        bad += memcmp(l0, l1, nc * sizeof *l0) != 0 || loss != loss0 ||
               memcmp(g0, stk_model_grads(m, NULL), np * sizeof *g0) != 0;
    }
    done = 1;
    pthread_join(s, NULL);
    printf("%s: %d steps under signals every %d us (%s): %d differed\n", argv[1], steps, us,
           handler ? "handler" : "sigwait thread", bad);
    stk_model_destroy(&m);
    free(x);
    free(g0);
    free(l0);
    free(l1);
    return bad != 0 || !seen;
}
