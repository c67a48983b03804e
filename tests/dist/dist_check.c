/* SPDX-License-Identifier: MIT */
/* One rank of a data-parallel check, run as real processes by mpirun or
 * stoker-launch (tests/dist/meson.build): collectives against values every
 * rank can compute; DDP against one process that takes the whole global
 * batch; accumulation against one process with more micro-steps; the
 * order of reductions and backward; a stopped or killed peer. Exits 0
 * (pass), 1 (fail), 3 (the expected failure was seen: stop mode), 77. */
#define _GNU_SOURCE
#include <stoker/stoker.h>

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int g_rank, g_world;

static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "dist_check: rank %d: FAIL: ", g_rank);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

#define CHECK(rc, what)                                                                       \
    do {                                                                                      \
        int rc_ = (rc);                                                                       \
        if (rc_ < 0)                                                                          \
            fail("%s: %s (%s): %s", what, stk_err_name(rc_), stk_strerror(rc_), stk_error_message()); \
    } while (0)

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------ collectives */

/* Element i of rank r's buffer: values every rank can recompute. */
static float valf(int r, size_t i) { return (float)((int)((i * 7 + (size_t)r * 13) % 101) - 50) * 0.25f; }
static int64_t vali(int r, size_t i) { return (int64_t)((i * 31 + (size_t)r * 1000003) % 100000) - 50000; }

static void check_allreduce_f32(stk_comm_t *c, size_t n, stk_reduce_op_t op)
{
    float *b = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++)
        b[i] = valf(g_rank, i);
    CHECK(stk_comm_allreduce(c, b, n, STK_DTYPE_F32, op), "allreduce f32");
    for (size_t i = 0; i < n; i++) {
        /* Sums of multiples of 0.25 below 2^20 are exact in any order. */
        float want = valf(0, i);
        for (int r = 1; r < g_world; r++) {
            float v = valf(r, i);
            if (op == STK_REDUCE_MAX)
                want = v > want ? v : want;
            else if (op == STK_REDUCE_MIN)
                want = v < want ? v : want;
            else
                want += v;
        }
        if (op == STK_REDUCE_AVG)
            want /= (float)g_world;
        if (b[i] != want)
            fail("allreduce f32 op %d n %zu: element %zu is %g, want %g", (int)op, n, i, b[i], want);
    }
    free(b);
}

static void check_allreduce_i64(stk_comm_t *c, size_t n)
{
    int64_t *b = malloc((n ? n : 1) * sizeof(int64_t));
    for (size_t i = 0; i < n; i++)
        b[i] = vali(g_rank, i);
    CHECK(stk_comm_allreduce(c, b, n, STK_DTYPE_I64, STK_REDUCE_SUM), "allreduce i64");
    for (size_t i = 0; i < n; i++) {
        int64_t want = 0;
        for (int r = 0; r < g_world; r++)
            want += vali(r, i);
        if (b[i] != want)
            fail("allreduce i64 n %zu: element %zu is %lld, want %lld", n, i, (long long)b[i], (long long)want);
    }
    free(b);
}

static int mode_collectives(stk_comm_t *c)
{
    const size_t sizes[] = {0, 1, 7, 1000, 262147, (size_t)3 << 20};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        check_allreduce_f32(c, sizes[k], STK_REDUCE_SUM);
        check_allreduce_i64(c, sizes[k]);
    }
    check_allreduce_f32(c, 1001, STK_REDUCE_AVG);
    check_allreduce_f32(c, 1001, STK_REDUCE_MAX);
    check_allreduce_f32(c, 1001, STK_REDUCE_MIN);
    int32_t i32[5] = {g_rank, 1, -g_rank, 7, 100};
    CHECK(stk_comm_allreduce(c, i32, 5, STK_DTYPE_I32, STK_REDUCE_SUM), "allreduce i32");
    int tri = g_world * (g_world - 1) / 2;
    if (i32[0] != tri || i32[1] != g_world || i32[2] != -tri || i32[4] != 100 * g_world)
        fail("allreduce i32: %d %d %d", i32[0], i32[1], i32[2]);

    /* Broadcast from every root, sizes over a ring segment. */
    for (int root = 0; root < g_world; root++) {
        size_t n = (size_t)(1 << 19) + 3;
        unsigned char *b = malloc(n);
        for (size_t i = 0; i < n; i++)
            b[i] = (unsigned char)(g_rank == root ? (i * 11 + (size_t)root) : 0xEE);
        CHECK(stk_comm_broadcast(c, b, n, STK_DTYPE_U8, root), "broadcast");
        for (size_t i = 0; i < n; i++)
            if (b[i] != (unsigned char)(i * 11 + (size_t)root))
                fail("broadcast from %d: byte %zu is %u", root, i, b[i]);
        free(b);
    }
    /* All-gather, separate and in place. */
    size_t n = 12345;
    float *send = malloc(n * sizeof(float)), *all = malloc(n * (size_t)g_world * sizeof(float));
    for (size_t i = 0; i < n; i++)
        send[i] = valf(g_rank, i);
    CHECK(stk_comm_allgather(c, send, all, n, STK_DTYPE_F32), "allgather");
    for (int r = 0; r < g_world; r++)
        for (size_t i = 0; i < n; i++)
            if (all[(size_t)r * n + i] != valf(r, i))
                fail("allgather: rank %d element %zu", r, i);
    memset(all, 0, n * (size_t)g_world * sizeof(float));
    memcpy(all + (size_t)g_rank * n, send, n * sizeof(float));
    CHECK(stk_comm_allgather(c, all + (size_t)g_rank * n, all, n, STK_DTYPE_F32), "allgather in place");
    for (int r = 0; r < g_world; r++)
        if (all[(size_t)r * n + 5] != valf(r, 5))
            fail("allgather in place: rank %d", r);
    free(send);
    free(all);
    CHECK(stk_comm_barrier(c), "barrier");

    /* Asynchronous: three in flight, waited for in reverse order. */
    float a[3][1000];
    stk_comm_work_t *w[3];
    for (int k = 0; k < 3; k++) {
        for (int i = 0; i < 1000; i++)
            a[k][i] = (float)(k + 1);
        CHECK(stk_comm_allreduce_async(c, a[k], 1000, STK_DTYPE_F32, STK_REDUCE_SUM, &w[k]), "allreduce_async");
    }
    for (int k = 2; k >= 0; k--) {
        CHECK(stk_comm_wait(&w[k]), "wait");
        if (w[k] != NULL || a[k][999] != (float)((k + 1) * g_world))
            fail("async allreduce %d: %g", k, a[k][999]);
    }
    /* A reduction the host backends refuse is refused before it starts. */
    uint16_t h[2] = {0, 0};
    if (stk_comm_backend(c) != STK_COMM_NCCL &&
        stk_comm_allreduce(c, h, 2, STK_DTYPE_F16, STK_REDUCE_SUM) != -ENOTSUP)
        fail("f16 allreduce on a host backend was not refused");
    stk_comm_stats_t st;
    stk_comm_stats(c, &st);
    /* 6 sizes x 2 + 3 + 1 i32 + 3 async; world roots; 2; 1 */
    if (st.allreduce != 19 || st.broadcast != (uint64_t)g_world || st.allgather != 2 || st.barrier != 1)
        fail("stats: %llu allreduce, %llu broadcast, %llu allgather, %llu barrier", (unsigned long long)st.allreduce,
             (unsigned long long)st.broadcast, (unsigned long long)st.allgather, (unsigned long long)st.barrier);
    printf("dist_check: rank %d of %d (%s): collectives ok\n", g_rank, g_world,
           stk_comm_backend_name(stk_comm_backend(c)));
    return 0;
}

/* ---------------------------------------------------------------- models */

/* No batchnorm and no dropout: a step of N ranks then equals one step of
 * one process over the whole global batch, up to float rounding. */
static const char *k_model =
    "input    name=data shape=1,28,28\n"
    "conv2d   name=conv1 out=16 kernel=3 pad=1\n"
    "relu     name=relu1\n"
    "conv2d   name=conv2 out=16 kernel=3 pad=1\n"
    "relu     name=relu2\n"
    "maxpool2d name=pool1 kernel=2\n"
    "conv2d   name=conv3 out=32 kernel=3 pad=1\n"
    "relu     name=relu3\n"
    "maxpool2d name=pool2 kernel=2\n"
    "flatten  name=flat\n"
    "linear   name=fc1 out=64\n"
    "relu     name=relu4\n"
    "linear   name=fc2 out=10\n"
    "cross_entropy name=loss\n";

/* The same with wide early layers: backward spends tens of ms after the
 * last layer's gradients are ready, so the communicator's thread is
 * scheduled before it ends even on a loaded machine. */
static const char *k_model_wide =
    "input    name=data shape=1,28,28\n"
    "conv2d   name=conv1 out=32 kernel=3 pad=1\n"
    "relu     name=relu1\n"
    "conv2d   name=conv2 out=32 kernel=3 pad=1\n"
    "relu     name=relu2\n"
    "maxpool2d name=pool1 kernel=2\n"
    "conv2d   name=conv3 out=32 kernel=3 pad=1\n"
    "relu     name=relu3\n"
    "maxpool2d name=pool2 kernel=2\n"
    "flatten  name=flat\n"
    "linear   name=fc1 out=64\n"
    "relu     name=relu4\n"
    "linear   name=fc2 out=10\n"
    "cross_entropy name=loss\n";

static const char *g_model_text;

static stk_model_t *make_model(int64_t batch, uint64_t seed)
{
    stk_model_builder_t *b = NULL;
    CHECK(stk_model_builder_create(&b), "builder");
    CHECK(stk_model_builder_parse(b, g_model_text ? g_model_text : k_model, "dist_check"), "parse");
    stk_model_config_t cfg;
    stk_model_config_default(&cfg);
    cfg.batch_size = batch;
    cfg.seed = seed;
    cfg.threads = 1;
    stk_model_t *m = NULL;
    CHECK(stk_model_create(&m, b, &cfg), "model");
    stk_model_builder_destroy(&b);
    return m;
}

/* Sample j of step s: a pure function, so every rank and the reference
 * draw the same global batch. */
static void make_batch(uint64_t step, size_t first, size_t n, float *x, int64_t *y)
{
    for (size_t j = 0; j < n; j++) {
        stk_rng_t rng;
        stk_rng_init(&rng, stk_rng_mix(1234, step), first + j);
        for (size_t k = 0; k < 28 * 28; k++)
            x[j * 28 * 28 + k] = stk_rng_uniform(&rng) - 0.5f;
        y[j] = (int64_t)stk_rng_below(&rng, 10);
    }
}

static void sgd(stk_model_t *m, float lr)
{
    size_t n = 0;
    float *p = stk_model_params(m, &n);
    const float *g = stk_model_grads(m, NULL);
    for (size_t i = 0; i < n; i++)
        p[i] -= lr * g[i];
    stk_model_zero_grad(m);
}

/* Largest |a - b| beyond the tolerance atol + rtol * |b|, as a ratio. */
static double compare(const float *a, const float *b, size_t n, double atol, double rtol, double *maxdiff)
{
    double worst = 0;
    *maxdiff = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        double lim = atol + rtol * fabs((double)b[i]);
        if (d > *maxdiff)
            *maxdiff = d;
        if (d / lim > worst)
            worst = d / lim;
    }
    return worst;
}

/* The tolerance of every DDP-against-one-process comparison below: the
 * two sum the batch in other orders (per-rank means, then the average). */
#define ATOL 1e-6
#define RTOL 1e-5

typedef struct run_opts {
    int64_t batch;     /* per rank, per micro-step */
    int accum;         /* micro-steps per optimizer step on each rank */
    int steps;
    size_t bucket_bytes;
    size_t trace;
    /* The reference: 1 = one forward over the whole global batch; else
     * world * accum micro-batches of batch each, accumulated. */
    int ref_whole;
} run_opts_t;

/* DDP over c: steps optimizer steps, each of accum micro-steps; rank r
 * takes micro-batches r * accum ... r * accum + accum - 1 of the step's
 * world * accum. Checks against one process doing all world * accum
 * micro-batches, after every step. Returns the final parameters. */
static float *run_ddp(stk_comm_t *c, const run_opts_t *o, int with_reference, stk_ddp_stats_t *stats,
                      stk_ddp_event_t *ev, size_t *nev, size_t *nbuckets)
{
    int64_t b = o->batch;
    int nmicro = g_world * o->accum;
    stk_model_t *m = make_model(b, 7 + (uint64_t)g_rank); /* different init: DDP must broadcast */
    int64_t ref_b = o->ref_whole ? b * nmicro : b;
    int ref_micro = o->ref_whole ? 1 : nmicro;
    stk_model_t *ref = with_reference ? make_model(ref_b, 7) : NULL;
    stk_ddp_config_t dc;
    stk_ddp_config_default(&dc);
    dc.bucket_bytes = o->bucket_bytes;
    dc.trace_events = o->trace;
    stk_ddp_t *d = NULL;
    CHECK(stk_ddp_create(&d, c, m, &dc), "ddp create");
    size_t np = 0;
    float *p = stk_model_params(m, &np);
    if (ref) {
        double md;
        if (compare(p, stk_model_params(ref, NULL), np, 0, 0, &md) > 0)
            fail("parameters after the broadcast are not rank 0's initial ones (max diff %g)", md);
    }
    stk_comm_stats_t cs0, cs1;
    float *x = malloc((size_t)ref_b * 784 * sizeof(float));
    int64_t *y = malloc((size_t)ref_b * sizeof(int64_t));
    for (int s = 0; s < o->steps; s++) {
        stk_comm_stats(c, &cs0);
        stk_model_set_loss_scale(m, 1.0f / (float)o->accum);
        for (int k = 0; k < o->accum; k++) {
            int mb = g_rank * o->accum + k;
            make_batch((uint64_t)s, (size_t)mb * (size_t)b, (size_t)b, x, y);
            float loss;
            CHECK(stk_model_forward(m, x, b, y, NULL, &loss), "forward");
            CHECK(stk_ddp_backward(d, k == o->accum - 1), "ddp backward");
        }
        stk_comm_stats(c, &cs1);
        /* Exactly one all-reduce per bucket per optimizer step: counted by
         * the communicator, which knows what really ran. */
        if (cs1.allreduce - cs0.allreduce != stk_ddp_num_buckets(d))
            fail("step %d: %llu all-reduces for %zu buckets", s, (unsigned long long)(cs1.allreduce - cs0.allreduce),
                 stk_ddp_num_buckets(d));
        sgd(m, 0.05f);
        if (stk_comm_backend(c) != STK_COMM_NCCL) /* it hashes host memory */
            CHECK(stk_ddp_check_params(d), "parameters equal on every rank");
        if (ref) {
            stk_model_set_loss_scale(ref, 1.0f / (float)ref_micro);
            for (int k = 0; k < ref_micro; k++) {
                make_batch((uint64_t)s, (size_t)k * (size_t)ref_b, (size_t)ref_b, x, y);
                float loss;
                CHECK(stk_model_forward(ref, x, ref_b, y, NULL, &loss), "reference forward");
                CHECK(stk_model_backward(ref), "reference backward");
            }
            sgd(ref, 0.05f);
            double md;
            double worst = compare(p, stk_model_params(ref, NULL), np, ATOL, RTOL, &md);
            if (worst > 1)
                fail("step %d: parameters differ from one process over the global batch by %g (%.2fx the "
                     "tolerance atol %g + rtol %g)", s + 1, md, worst, ATOL, RTOL);
            if (g_rank == 0)
                printf("dist_check: step %d: max |ddp - one process| = %.3g (%.3f of the tolerance)\n", s + 1, md,
                       worst);
        }
    }
    stk_ddp_stats(d, stats);
    if (ev)
        *nev = stk_ddp_events(d, ev, o->trace);
    if (nbuckets)
        *nbuckets = stk_ddp_num_buckets(d);
    float *out = malloc(np * sizeof(float));
    memcpy(out, p, np * sizeof(float));
    free(x);
    free(y);
    stk_ddp_destroy(&d);
    stk_model_destroy(&m);
    stk_model_destroy(&ref);
    return out;
}

static int mode_ddp(stk_comm_t *c, int accum)
{
    /* accum 1: one process over the whole global batch; accum k: one
     * process doing world * k micro-steps on the same samples. */
    run_opts_t o = {.batch = 8, .accum = accum, .steps = 3, .bucket_bytes = (size_t)25 << 20, .ref_whole = accum == 1};
    stk_ddp_stats_t st;
    float *p = run_ddp(c, &o, 1, &st, NULL, NULL, NULL);
    free(p);
    if (st.sync_steps != 3 || st.local_steps != (uint64_t)(3 * (accum - 1)))
        fail("ddp stats: %llu sync and %llu local steps", (unsigned long long)st.sync_steps,
             (unsigned long long)st.local_steps);
    printf("dist_check: rank %d of %d (%s): ddp accum %d ok, %llu reductions in %llu sync steps\n", g_rank, g_world,
           stk_comm_backend_name(stk_comm_backend(c)), accum, (unsigned long long)st.reductions,
           (unsigned long long)st.sync_steps);
    return 0;
}

/* Buckets of one tensor each: the first reduction must start while
 * backward still runs; and any bucket size gives the same parameters. */
static int mode_order(stk_comm_t *c)
{
    g_model_text = k_model_wide;
    run_opts_t o = {.batch = 32, .accum = 1, .steps = 3, .bucket_bytes = 4, .trace = 4096};
    stk_ddp_stats_t st;
    static stk_ddp_event_t ev[4096];
    size_t n = 0, nb_small = 0;
    float *p_small = run_ddp(c, &o, 0, &st, ev, &n, &nb_small);
    if (n > 4096)
        fail("trace overflow: %zu events", n);
    int step = -1, seen_reduce = 0, seen_end = 0;
    for (size_t i = 0; i < n; i++) {
        switch (ev[i].kind) {
        case STK_DDP_EV_BACKWARD_BEGIN:
            step++;
            seen_reduce = seen_end = 0;
            break;
        case STK_DDP_EV_REDUCE_BEGIN:
            if (!seen_reduce && seen_end)
                fail("step %d: the first reduction began after backward ended", step);
            if (!seen_reduce && ev[i].value != 0)
                fail("step %d: bucket %llu began first, not bucket 0 (the last layer)", step,
                     (unsigned long long)ev[i].value);
            seen_reduce = 1;
            break;
        case STK_DDP_EV_BACKWARD_END:
            if (!seen_reduce)
                fail("step %d: backward ended before any reduction began", step);
            seen_end = 1;
            break;
        default:
            break;
        }
    }
    if (step != 2)
        fail("trace saw %d backward passes, expected 3", step + 1);
    if (g_rank == 0) {
        printf("dist_check: events of the last step (ms from its backward's start):\n");
        size_t first = 0;
        for (size_t i = 0; i < n; i++)
            if (ev[i].kind == STK_DDP_EV_BACKWARD_BEGIN)
                first = i;
        static const char *names[] = {"backward begin", "grad ready", "reduce begin", "reduce end", "backward end"};
        for (size_t i = first; i < n; i++)
            printf("  %8.3f  %-14s %llu\n", (ev[i].t - ev[first].t) * 1e3, names[ev[i].kind],
                   (unsigned long long)ev[i].value);
    }
    printf("dist_check: rank %d: %zu buckets, %llu of %llu reductions began before backward ended\n", g_rank,
           nb_small, (unsigned long long)st.early, (unsigned long long)st.reductions);

    const size_t sizes[] = {(size_t)64 << 10, (size_t)25 << 20};
    for (size_t k = 0; k < 2; k++) {
        run_opts_t o2 = o;
        o2.bucket_bytes = sizes[k];
        o2.trace = 0;
        float *p = run_ddp(c, &o2, 0, &st, NULL, NULL, NULL);
        stk_model_t *probe = make_model(1, 0);
        size_t count = 0;
        stk_model_params(probe, &count);
        stk_model_destroy(&probe);
        double md;
        /* Two ranks: a sum of two numbers is the same in either order, so
         * the result must not move by a bit. More ranks: MPI may pick
         * another summation order per message size. */
        double worst = compare(p, p_small, count, g_world == 2 ? 0 : ATOL, g_world == 2 ? 0 : RTOL, &md);
        if (worst > 0 && (g_world == 2 || worst > 1))
            fail("bucket size %zu B gives other parameters than 4 B buckets (max diff %g)", sizes[k], md);
        free(p);
    }
    free(p_small);
    printf("dist_check: rank %d: parameters identical for 4 B, 64 KiB and 25 MiB buckets\n", g_rank);
    return 0;
}

/* ------------------------------------------------ synchronized batchnorm */

/* Batchnorm with a fused ReLU on 8 channels (kept blocked, nChw8c) and
 * one on 12 channels (plain NCHW) whose input gradient feeds a conv. */
static const char *k_model_bn =
    "input    name=data shape=1,28,28\n"
    "conv2d   name=conv1 out=8 kernel=3 pad=1\n"
    "batchnorm2d name=bn1\n"
    "relu     name=relu1\n"
    "maxpool2d name=pool1 kernel=2\n"
    "conv2d   name=conv2 out=12 kernel=3 pad=1\n"
    "batchnorm2d name=bn2\n"
    "maxpool2d name=pool2 kernel=2\n"
    "relu     name=relu2\n"
    "flatten  name=flat\n"
    "linear   name=fc1 out=10\n"
    "cross_entropy name=loss\n";

#define BN_LAYERS 2

/* The tolerance of the batchnorm comparisons: besides the summation
 * order, the two compute the statistics differently (oneDNN in float, the
 * synchronized path in double) and batchnorm divides by the standard
 * deviation of small activations, which magnifies rounding. */
#define BN_ATOL 1e-5
#define BN_RTOL 1e-4

/* 3 steps of DDP with or without sync_bn, each rank taking batch samples of
 * the world * batch of a step, against one process over all of them:
 * returns the largest excess over the tolerance (as a ratio) of the
 * parameters and of the running statistics over the steps. */
static void run_syncbn(stk_comm_t *c, int sync, int64_t batch, double *worst_p, double *worst_b, double *max_p,
                       double *max_b)
{
    int64_t gb = batch * g_world;
    stk_model_t *m = make_model(batch, 7 + (uint64_t)g_rank);
    stk_model_t *ref = make_model(gb, 7);
    stk_ddp_config_t dc;
    stk_ddp_config_default(&dc);
    dc.sync_bn = sync;
    stk_ddp_t *d = NULL;
    CHECK(stk_ddp_create(&d, c, m, &dc), "ddp create");
    size_t np = 0, nb = 0;
    float *p = stk_model_params(m, &np);
    const float *buf = stk_model_buffers(m, &nb);
    float *x = malloc((size_t)gb * 784 * sizeof(float));
    int64_t *y = malloc((size_t)gb * sizeof(int64_t));
    *worst_p = *worst_b = *max_p = *max_b = 0;
    for (int s = 0; s < 3; s++) {
        stk_comm_stats_t cs0, cs1;
        stk_comm_stats(c, &cs0);
        make_batch((uint64_t)s, (size_t)g_rank * (size_t)batch, (size_t)batch, x, y);
        float loss;
        CHECK(stk_model_forward(m, x, batch, y, NULL, &loss), "forward");
        CHECK(stk_ddp_backward(d, 1), "ddp backward");
        stk_comm_stats(c, &cs1);
        /* Synchronized: one all-gather per batchnorm layer in forward and
         * one all-reduce in backward, beside one per bucket. */
        uint64_t ag = cs1.allgather - cs0.allgather, ar = cs1.allreduce - cs0.allreduce;
        uint64_t want_ag = sync ? BN_LAYERS : 0, want_ar = stk_ddp_num_buckets(d) + (sync ? BN_LAYERS : 0);
        if (ag != want_ag || ar != want_ar)
            fail("sync_bn %d, step %d: %llu all-gathers and %llu all-reduces, expected %llu and %llu", sync, s + 1,
                 (unsigned long long)ag, (unsigned long long)ar, (unsigned long long)want_ag,
                 (unsigned long long)want_ar);
        sgd(m, 0.05f);
        CHECK(stk_ddp_check_params(d), "parameters equal on every rank");

        make_batch((uint64_t)s, 0, (size_t)gb, x, y);
        CHECK(stk_model_forward(ref, x, gb, y, NULL, &loss), "reference forward");
        CHECK(stk_model_backward(ref), "reference backward");
        sgd(ref, 0.05f);
        double md, w = compare(p, stk_model_params(ref, NULL), np, BN_ATOL, BN_RTOL, &md);
        if (w > *worst_p)
            *worst_p = w;
        if (md > *max_p)
            *max_p = md;
        w = compare(buf, stk_model_buffers(ref, NULL), nb, BN_ATOL, BN_RTOL, &md);
        if (w > *worst_b)
            *worst_b = w;
        if (md > *max_b)
            *max_b = md;
    }
    free(x);
    free(y);
    stk_ddp_destroy(&d);
    stk_model_destroy(&m);
    stk_model_destroy(&ref);
}

/* Ranks with different batch sizes (rank r: 3 + 2r samples): one
 * synchronized training forward must give the running statistics of one
 * process over all the samples, which needs each rank's count. */
static void check_uneven(stk_comm_t *c)
{
    int64_t gb = 0, first = 0;
    for (int r = 0; r < g_world; r++) {
        if (r < g_rank)
            first += 3 + 2 * r;
        gb += 3 + 2 * r;
    }
    int64_t mine = 3 + 2 * g_rank;
    stk_model_t *m = make_model(mine, 7);
    stk_model_t *ref = make_model(gb, 7);
    stk_ddp_config_t dc;
    stk_ddp_config_default(&dc);
    dc.sync_bn = 1;
    stk_ddp_t *d = NULL;
    CHECK(stk_ddp_create(&d, c, m, &dc), "ddp create");
    float *x = malloc((size_t)gb * 784 * sizeof(float));
    int64_t *y = malloc((size_t)gb * sizeof(int64_t));
    float loss;
    make_batch(9, (size_t)first, (size_t)mine, x, y);
    CHECK(stk_model_forward(m, x, mine, y, NULL, &loss), "forward");
    make_batch(9, 0, (size_t)gb, x, y);
    CHECK(stk_model_forward(ref, x, gb, y, NULL, &loss), "reference forward");
    size_t nb = 0;
    const float *b = stk_model_buffers(m, &nb);
    double md, w = compare(b, stk_model_buffers(ref, NULL), nb, BN_ATOL, BN_RTOL, &md);
    if (w > 1)
        fail("uneven batches: running statistics differ from one process over the %lld samples by %g (%.2fx the "
             "tolerance)", (long long)gb, md, w);
    if (g_rank == 0)
        printf("dist_check: uneven batches (%lld samples): max |running stats - one process| = %.3g\n",
               (long long)gb, md);
    free(x);
    free(y);
    stk_ddp_destroy(&d);
    stk_model_destroy(&m);
    stk_model_destroy(&ref);
}

static int mode_syncbn(stk_comm_t *c)
{
    if (g_world < 2) {
        printf("dist_check: SKIP: synchronized batchnorm needs two ranks to differ from per-rank statistics\n");
        return 77;
    }
    g_model_text = k_model_bn;
    double wp, wb, mp, mb;
    run_syncbn(c, 1, 8, &wp, &wb, &mp, &mb);
    if (g_rank == 0)
        printf("dist_check: sync_bn on: max |ddp - one process| over 3 steps: parameters %.3g (%.3f of the "
               "tolerance), running stats %.3g (%.3f); atol %g + rtol %g\n", mp, wp, mb, wb, BN_ATOL, BN_RTOL);
    if (wp > 1 || wb > 1)
        fail("sync_bn on: after 3 steps the parameters (max diff %g, %.2fx the tolerance) or running stats (%g, "
             "%.2fx) differ from one process over the global batch", mp, wp, mb, wb);
    /* Per-rank statistics (the default) are another computation: both
     * must land far outside the tolerance, or the check above proves
     * nothing. */
    run_syncbn(c, 0, 8, &wp, &wb, &mp, &mb);
    if (g_rank == 0)
        printf("dist_check: sync_bn off: max |ddp - one process|: parameters %.3g (%.1fx the tolerance), running "
               "stats %.3g (%.1fx)\n", mp, wp, mb, wb);
    if (wp < 10 || wb < 10)
        fail("sync_bn off: parameters (%.2fx the tolerance) or running stats (%.2fx) are within 10x the tolerance "
             "of one process over the global batch: per-rank statistics should differ", wp, wb);
    check_uneven(c);
    printf("dist_check: rank %d of %d (%s): sync_bn ok\n", g_rank, g_world, stk_comm_backend_name(stk_comm_backend(c)));
    return 0;
}

/* The last rank stops itself (SIGSTOP) before step 2's backward; the
 * others must fail their collective with the timeout, naming it. */
static int mode_stop(stk_comm_t *c, const char *how)
{
    if (g_world < 2) {
        printf("dist_check: SKIP: a stopped peer needs two ranks\n");
        return 77;
    }
    CHECK(stk_comm_set_timeout(c, 3.0), "set timeout");
    run_opts_t o = {.batch = 4, .accum = 1, .steps = 1, .bucket_bytes = (size_t)25 << 20};
    stk_model_t *m = make_model(o.batch, 7);
    stk_ddp_t *d = NULL;
    CHECK(stk_ddp_create(&d, c, m, NULL), "ddp create");
    float *x = malloc(4 * 784 * sizeof(float));
    int64_t y[4];
    for (int s = 0; s < 4; s++) {
        make_batch((uint64_t)s, (size_t)g_rank * 4, 4, x, y);
        float loss;
        CHECK(stk_model_forward(m, x, 4, y, NULL, &loss), "forward");
        if (s == 2 && g_rank == g_world - 1) {
            printf("dist_check: rank %d: stopping (%s) before step %d\n", g_rank, how, s);
            fflush(stdout);
            raise(strcmp(how, "kill") == 0 ? SIGKILL : SIGSTOP);
        }
        double t0 = now_s();
        int rc = stk_ddp_backward(d, 1);
        if (rc < 0) {
            const char *msg = stk_error_message();
            char want[64];
            snprintf(want, sizeof(want), "rank %d of %d", g_rank, g_world);
            if (rc != STK_ERANK || !strstr(msg, "allreduce") || !strstr(msg, want))
                fail("step %d: expected STK_ERANK naming the allreduce and '%s', got %s: %s", s, want,
                     stk_err_name(rc), msg);
            printf("dist_check: rank %d: after %.1f s: %s: %s\n", g_rank, now_s() - t0, stk_err_name(rc), msg);
            fflush(stdout);
            /* The communicator is broken now; leave without waiting on it. */
            _exit(3);
        }
        sgd(m, 0.05f);
    }
    fail("no collective failed although rank %d stopped", g_world - 1);
    return 1;
}

/* Steady training steps for the benchmark: per-rank batch, the step time,
 * and the share of the reductions hidden under backward. */
static int mode_bench(stk_comm_t *c, const char *model_path, int64_t batch, int steps, int overlap, int use_ddp,
                      size_t bucket_bytes)
{
    stk_model_config_t cfg;
    stk_model_config_default(&cfg);
    cfg.batch_size = batch;
    cfg.seed = 7;
    cfg.threads = 1;
    stk_model_t *m = NULL;
    CHECK(stk_model_create_from_file(&m, model_path, &cfg), model_path);
    stk_ddp_t *d = NULL;
    stk_ddp_config_t dc;
    stk_ddp_config_default(&dc);
    dc.overlap = overlap;
    if (bucket_bytes)
        dc.bucket_bytes = dc.first_bucket_bytes = bucket_bytes;
    if (use_ddp)
        CHECK(stk_ddp_create(&d, c, m, &dc), "ddp create");
    float *x = malloc((size_t)batch * 784 * sizeof(float));
    int64_t *y = malloc((size_t)batch * sizeof(int64_t));
    make_batch(0, (size_t)g_rank * (size_t)batch, (size_t)batch, x, y);
    double t0 = 0;
    for (int s = 0; s < steps + 2; s++) {
        if (s == 2) {
            if (use_ddp)
                CHECK(stk_comm_barrier(c), "barrier");
            t0 = now_s();
            stk_ddp_destroy(&d);
            if (use_ddp)
                CHECK(stk_ddp_create(&d, c, m, &dc), "ddp create");
        }
        float loss;
        CHECK(stk_model_forward(m, x, batch, y, NULL, &loss), "forward");
        if (use_ddp)
            CHECK(stk_ddp_backward(d, 1), "backward");
        else
            CHECK(stk_model_backward(m), "backward");
        sgd(m, 0.01f);
    }
    double dt = (now_s() - t0) / steps;
    stk_ddp_stats_t st;
    stk_ddp_stats(d, &st);
    double hidden = st.reduce_s > 0 ? 1.0 - st.exposed_s / st.reduce_s : 0;
    printf("bench: rank %d of %d backend %s overlap %d batch %lld buckets %zu: %.2f ms/step, backward %.2f; reduce "
           "%.2f ms/step, exposed %.2f ms/step, hidden %.1f%%\n", g_rank, g_world,
           use_ddp ? stk_comm_backend_name(stk_comm_backend(c)) : "none", overlap, (long long)batch,
           stk_ddp_num_buckets(d), dt * 1e3, st.backward_s / steps * 1e3, st.reduce_s / steps * 1e3,
           st.exposed_s / steps * 1e3, hidden * 100);
    stk_ddp_destroy(&d);
    stk_model_destroy(&m);
    free(x);
    free(y);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: dist_check collectives|ddp|accum|order|syncbn|stop|kill\n"
                        "       dist_check bench MODEL BATCH STEPS OVERLAP [BUCKET_BYTES (0: default) | none]\n");
        return 1;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *mode = argv[1];
    stk_comm_config_t cc;
    stk_comm_config_default(&cc);
    /* NCCL reduces device buffers; the CPU engine's arenas are host
     * memory, which the NCCL backend stages through the device. */
    const char *be = getenv("STK_COMM_BACKEND");
    if (be && strcmp(be, "nccl") == 0)
        cc.device = STK_DEVICE_CUDA;
    stk_comm_t *c = NULL;
    int no_comm = strcmp(mode, "bench") == 0 && argc > 6 && strcmp(argv[6], "none") == 0;
    if (!no_comm)
        CHECK(stk_comm_create(&c, &cc), "comm create");
    g_rank = stk_comm_rank(c);
    g_world = stk_comm_size(c);
    int rc = 1;
    if (strcmp(mode, "collectives") == 0)
        rc = mode_collectives(c);
    else if (strcmp(mode, "ddp") == 0)
        rc = mode_ddp(c, 1);
    else if (strcmp(mode, "accum") == 0)
        rc = mode_ddp(c, 2);
    else if (strcmp(mode, "order") == 0)
        rc = mode_order(c);
    else if (strcmp(mode, "syncbn") == 0)
        rc = mode_syncbn(c);
    else if (strcmp(mode, "stop") == 0 || strcmp(mode, "kill") == 0)
        rc = mode_stop(c, mode);
    else if (strcmp(mode, "bench") == 0 && argc >= 6)
        rc = mode_bench(c, argv[2], atoll(argv[3]), atoi(argv[4]), atoi(argv[5]), !no_comm,
                        argc > 6 && !no_comm ? (size_t)atoll(argv[6]) : 0);
    else
        fail("unknown mode '%s'", mode);
    stk_comm_destroy(&c);
    return rc;
}
