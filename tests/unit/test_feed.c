/* SPDX-License-Identifier: MIT */
/* Feeding a model from a loader (engine.h, "feeding a device"): the
 * loader's arena pinned through stk_model_pin_host as its pin hook, each
 * batch put into the double-buffered feed while the step before it is
 * queued, then used, then done and released. The same steps with each
 * batch copied plainly before its step must give the same losses, bit for
 * bit: the feed changes when copies happen, not what is computed.
 *
 *   test_feed cpu      host memory: the feed hands the batch over as is
 *   test_feed staged   the CPU posing as a device (STK_ENGINE_STAGED):
 *                      a backend without feed slots, copies by upload
 *   test_feed cuda     the CUDA backend's copy stream and events; exits
 *                      77 without a GPU (STK_REQUIRE_GPU=1: a failure)
 * Plain main: the skip needs the exit code. */
#define _GNU_SOURCE
#include "engine/model.h"
#include "stoker/engine.h"
#include "stoker/loader.h"
#include "stoker/optim.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { N = 320, C = 1, H = 16, W = 16, IMG = C * H * W, BATCH = 32, EPOCHS = 2 };

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                   \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)
#define STK(x) CHECK((x) == 0, "%s: %s", #x, stk_error_message())

static const char *const MODEL = "input name=x shape=1,16,16\n"
                                 "conv2d name=c1 out=8 kernel=3 pad=1\nbatchnorm2d name=bn1\nrelu name=r1\n"
                                 "maxpool2d name=p1 kernel=2\nflatten name=f\nlinear name=fc out=10\n"
                                 "cross_entropy name=loss\n";

static stk_device_t g_dev;
static int g_staged;
/* The workers' normalize: f32, or bf16 / f16 for the half runs. */
static const char *g_aug = "normalize:mean=0.5,std=0.25";

static stk_model_t *make_model(void)
{
    stk_model_builder_t *b = NULL;
    STK(stk_model_builder_create(&b));
    STK(stk_model_builder_parse(b, MODEL, "test_feed"));
    stk_model_config_t cfg;
    stk_model_config_default(&cfg);
    cfg.batch_size = BATCH;
    cfg.seed = 5;
    cfg.device = g_dev;
    if (g_staged)
        setenv("STK_ENGINE_STAGED", "1", 1);
    stk_model_t *m = NULL;
    STK(stk_model_create(&m, b, &cfg));
    unsetenv("STK_ENGINE_STAGED");
    stk_model_builder_destroy(&b);
    return m;
}

static stk_dataset_t *make_dataset(unsigned char **img, int64_t **lab)
{
    stk_schema_t sc;
    memset(&sc, 0, sizeof sc);
    int64_t shape[3] = {C, H, W};
    STK(stk_schema_add(&sc, "image", STK_DTYPE_U8, 3, shape));
    STK(stk_schema_add(&sc, "label", STK_DTYPE_I64, 0, NULL));
    *img = malloc((size_t)N * IMG);
    *lab = malloc(N * sizeof(int64_t));
    CHECK(*img && *lab, "out of memory");
    /* Each class its pattern, plus noise: something to learn. */
    for (int i = 0; i < N; i++) {
        (*lab)[i] = i * 7 % 10;
        for (int k = 0; k < IMG; k++)
            (*img)[(size_t)i * IMG + k] =
                (unsigned char)((((*lab)[i] * 37 + k * 11) % 200) + ((i * 2654435761u + k * 97) >> 27));
    }
    const void *fields[2] = {*img, *lab};
    stk_dataset_t *ds = NULL;
    STK(stk_dataset_memory_create(&ds, &sc, fields, N));
    return ds;
}

static stk_loader_t *make_loader(stk_dataset_t *ds, stk_model_t *pin_for)
{
    stk_loader_config_t c;
    stk_loader_config_default(&c);
    c.batch_size = BATCH;
    c.num_workers = 2;
    c.shuffle = 1;
    c.seed = 9;
    c.augment = g_aug;
    c.augment_field = "image";
    if (pin_for) {
        c.pin = stk_model_pin_host;
        c.unpin = stk_model_unpin_host;
        c.pin_user = pin_for;
        c.pin_no_memlock = 1;
    }
    stk_loader_t *l = NULL;
    STK(stk_loader_create(&l, ds, &c));
    return l;
}

static int is_half(stk_dtype_t dt)
{
    return dt == STK_DTYPE_F16 || dt == STK_DTYPE_BF16;
}

/* The batch's images as f32 on the host (half ones converted here). */
static const float *host_f32(const stk_batch_field_t *f, float *buf)
{
    if (!is_half(f->dtype))
        return f->data;
    const uint16_t *h = f->data;
    for (size_t i = 0; i < f->bytes / 2; i++)
        buf[i] = f->dtype == STK_DTYPE_BF16 ? stk_bf16_to_f32(h[i]) : stk_f16_to_f32(h[i]);
    return buf;
}

/* One step on input (the model's memory) and the batch's labels (host). */
static float step(stk_model_t *m, stk_optim_t *opt, const float *input, const stk_batch_t *b)
{
    float loss = 0;
    STK(stk_model_forward(m, input, (int64_t)b->size, (const int64_t *)b->fields[1].data, NULL, &loss));
    STK(stk_model_backward(m));
    STK(stk_optim_step_model(opt, m));
    stk_model_zero_grad(m);
    return loss;
}

/* The reference: each batch copied (upload, waits) right before its step. */
static int run_plain(stk_dataset_t *ds, float *losses)
{
    stk_model_t *m = make_model();
    stk_optim_t *opt = NULL;
    STK(stk_optim_create_for_model(&opt, m, "sgd:lr=0.05,momentum=0.9"));
    stk_loader_t *l = make_loader(ds, NULL);
    float *dev = m->be.iface->host_memory ? NULL : m->be.iface->alloc(m->be.ctx, (size_t)BATCH * IMG * 4);
    int n = 0;
    for (uint64_t e = 0; e < EPOCHS; e++) {
        STK(stk_loader_set_epoch(l, e));
        stk_batch_t b;
        int rc;
        while ((rc = stk_loader_next(l, &b)) == 0) {
            static float conv[BATCH * IMG];
            const float *in = host_f32(&b.fields[0], conv);
            if (dev) {
                STK(m->be.iface->upload(m->be.ctx, dev, in, (size_t)b.size * IMG * sizeof(float)));
                in = dev;
            }
            losses[n++] = step(m, opt, in, &b);
            stk_loader_release(l, &b);
        }
        CHECK(rc == STK_DONE, "next: %s", stk_error_message());
    }
    if (dev)
        m->be.iface->free(m->be.ctx, dev);
    stk_loader_destroy(&l);
    stk_optim_destroy(&opt);
    stk_model_destroy(&m);
    return n;
}

/* stk_feed_put, or stk_feed_put_half for half images. */
static void put(stk_feed_t *f, const stk_batch_t *b, const void **dev)
{
    const stk_batch_field_t *x = &b->fields[0];
    if (is_half(x->dtype))
        STK(stk_feed_put_half(f, x->data, x->bytes / 2, x->dtype, dev));
    else
        STK(stk_feed_put(f, x->data, x->bytes, dev));
}

/* The feed: batch k + 1 put (its copy starts) before step k is queued. */
static int run_feed(stk_dataset_t *ds, float *losses)
{
    stk_model_t *m = make_model();
    stk_optim_t *opt = NULL;
    STK(stk_optim_create_for_model(&opt, m, "sgd:lr=0.05,momentum=0.9"));
    stk_loader_t *l = make_loader(ds, m);
    stk_feed_t *f = NULL;
    STK(stk_feed_create(&f, m, (size_t)BATCH * IMG * sizeof(float)));
    int n = 0;
    for (uint64_t e = 0; e < EPOCHS; e++) {
        STK(stk_loader_set_epoch(l, e));
        stk_batch_t cur, nxt;
        const void *dcur = NULL, *dnxt = NULL;
        int rc = stk_loader_next(l, &cur);
        CHECK(rc == 0, "first batch: %s", stk_error_message());
        put(f, &cur, &dcur);
        for (;;) {
            int more = (rc = stk_loader_next(l, &nxt)) == 0;
            CHECK(more || rc == STK_DONE, "next: %s", stk_error_message());
            if (more)
                put(f, &nxt, &dnxt);
            STK(stk_feed_use(f, dcur));
            losses[n++] = step(m, opt, dcur, &cur);
            STK(stk_feed_done(f, dcur));
            stk_loader_release(l, &cur);
            if (!more)
                break;
            cur = nxt;
            dcur = dnxt;
        }
    }
    /* What the feed copied: every batch once on a device, nothing on the
     * CPU; a time for each copy (device events on CUDA, the upload's host
     * time staged). */
    stk_feed_stats_t fs;
    STK(stk_feed_stats(f, &fs));
    if (m->be.iface->host_memory) {
        CHECK(fs.copies == 0 && fs.bytes == 0 && fs.copy_s == 0.0, "a CPU feed counted %llu copies",
              (unsigned long long)fs.copies);
    } else {
        /* Half images cross as halves where the device converts them. */
        size_t esz = strstr(g_aug, "dtype=") && m->be.iface->feed_copy_half ? 2 : sizeof(float);
        CHECK(fs.copies == (uint64_t)n && fs.bytes == (uint64_t)n * BATCH * IMG * esz,
              "%llu copies of %llu bytes for %d batches", (unsigned long long)fs.copies,
              (unsigned long long)fs.bytes, n);
        CHECK(fs.copy_s > 0.0, "copies of %llu bytes took %g s", (unsigned long long)fs.bytes, fs.copy_s);
        printf("feed: %llu copies, %.1f MB/s\n", (unsigned long long)fs.copies, (double)fs.bytes / fs.copy_s / 1e6);
    }
    CHECK(stk_feed_stats(f, NULL) == -EINVAL && stk_feed_stats(NULL, &fs) == -EINVAL, "NULL stats");
    stk_feed_destroy(&f);
    stk_loader_destroy(&l);
    stk_optim_destroy(&opt);
    stk_model_destroy(&m);
    return n;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *mode = argc > 1 ? argv[1] : "cpu";
    g_staged = !strcmp(mode, "staged");
    g_dev = !strcmp(mode, "cuda") ? STK_DEVICE_CUDA : STK_DEVICE_CPU;
    CHECK(g_dev == STK_DEVICE_CUDA || g_staged || !strcmp(mode, "cpu"), "usage: test_feed cpu|staged|cuda");
    STK(stk_loader_forkserver_start());
    if (g_dev == STK_DEVICE_CUDA && stk_device_count(STK_DEVICE_CUDA) < 1) {
        const char *req = getenv("STK_REQUIRE_GPU");
        int must = req && !strcmp(req, "1");
        fprintf(stderr, "%s no usable GPU: %s\n", must ? "FAIL" : "SKIP", stk_error_message());
        return must ? 1 : 77;
    }
    char what[256];
    STK(stk_device_describe(g_dev, -1, what, sizeof(what)));
    printf("%s: %s\n", mode, what);

    unsigned char *img;
    int64_t *lab;
    stk_dataset_t *ds = make_dataset(&img, &lab);
    float a[EPOCHS * (N / BATCH + 1)], b[EPOCHS * (N / BATCH + 1)];
    int na = run_plain(ds, a), nb = run_feed(ds, b);
    CHECK(na == nb && na == EPOCHS * (N / BATCH), "%d and %d steps", na, nb);
    for (int i = 0; i < na; i++)
        CHECK(a[i] == b[i], "step %d: loss %.9g copied plainly, %.9g through the feed", i, (double)a[i],
              (double)b[i]);
    CHECK(a[na - 1] < 0.5f * a[0], "no learning: loss %.4f -> %.4f", (double)a[0], (double)a[na - 1]);
    printf("%s: %d steps, the same losses through the feed (%.4f -> %.4f)\n", mode, na, (double)a[0],
           (double)a[na - 1]);
    /* Half images from the workers: converted by the feed (on a GPU after
     * the copy) or on the host first, the same floats, the same steps. */
    static const char *const halves[] = {"normalize:mean=0.5,std=0.25,dtype=bf16",
                                         "normalize:mean=0.5,std=0.25,dtype=f16"};
    for (int k = 0; k < 2; k++) {
        g_aug = halves[k];
        na = run_plain(ds, a);
        nb = run_feed(ds, b);
        CHECK(na == nb && na == EPOCHS * (N / BATCH), "%s: %d and %d steps", g_aug, na, nb);
        for (int i = 0; i < na; i++)
            CHECK(a[i] == b[i], "%s, step %d: loss %.9g converted on the host, %.9g by the feed", g_aug, i,
                  (double)a[i], (double)b[i]);
        printf("%s: %s, the same losses converted by the feed\n", mode, g_aug);
    }

    /* Misuse is an error, not a crash. */
    stk_model_t *m = make_model();
    stk_feed_t *f = NULL;
    const void *d = NULL;
    STK(stk_feed_create(&f, m, sizeof(float) * 32));
    float src[32] = {0};
    CHECK(stk_feed_put(f, src, sizeof(src) + 1, &d) == -ENOSPC, "an oversize put: %s", stk_error_message());
    STK(stk_feed_put(f, src, sizeof(src), &d));
    if (!m->be.iface->host_memory)
        CHECK(stk_feed_use(f, src) == -EINVAL, "use of a pointer that is not the feed's");
    STK(stk_feed_use(f, d));
    STK(stk_feed_done(f, d));
    uint16_t h[32] = {0};
    CHECK(stk_feed_put_half(f, h, 33, STK_DTYPE_BF16, &d) == -ENOSPC, "an oversize half put: %s",
          stk_error_message());
    CHECK(stk_feed_put_half(f, h, 32, STK_DTYPE_F32, &d) == -EINVAL, "a half put of f32");
    CHECK(stk_feed_put_half(f, NULL, 32, STK_DTYPE_BF16, &d) == -EINVAL, "a half put of NULL");
    /* Values that need every branch of f16: zero, subnormal, normal, inf, NaN. */
    static const uint16_t f16[8] = {0x0000, 0x8000, 0x0001, 0x03ff, 0x3c00, 0xc500, 0x7c00, 0x7e00};
    for (int i = 0; i < 32; i++)
        h[i] = f16[i % 8];
    STK(stk_feed_put_half(f, h, 32, STK_DTYPE_F16, &d));
    STK(stk_feed_use(f, d));
    float back[32];
    STK(m->be.iface->download(m->be.ctx, back, d, sizeof(back)));
    STK(stk_feed_done(f, d));
    for (int i = 0; i < 32; i++) {
        float want = stk_f16_to_f32(h[i]);
        CHECK(!memcmp(&want, &back[i], sizeof(float)), "f16 0x%04x: %a, want %a", h[i], (double)back[i],
              (double)want);
    }
    stk_feed_destroy(&f);
    stk_feed_destroy(&f);
    stk_model_destroy(&m);

    stk_dataset_destroy(&ds);
    free(img);
    free(lab);
    stk_loader_forkserver_stop();
    return 0;
}
