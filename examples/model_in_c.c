/* SPDX-License-Identifier: MIT */
/* The reference Fashion-MNIST CNN (models/fmnist-cnn.model) built with the
 * C builder instead of a model file. Prints its summary; given the model
 * file, checks that both build the same model: the same parameters by
 * name and shape, the same initial values from the same seed, and the
 * same logits for the same batch.
 *   model_in_c [models/fmnist-cnn.model] */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <stoker/stoker.h>

#define CHECK(call)                                                                                                   \
    do {                                                                                                              \
        int rc_ = (call);                                                                                             \
        if (rc_ < 0) {                                                                                                \
            fprintf(stderr, "%s: %s (%s)\n", #call, stk_error_message(), stk_err_name(rc_));                          \
            exit(1);                                                                                                  \
        }                                                                                                             \
    } while (0)

static stk_model_builder_t *b;

static void add(stk_layer_kind_t kind, const char *name, void (*set)(stk_layer_desc_t *, int64_t), int64_t arg)
{
    stk_layer_desc_t d = stk_layer_desc_default(kind);
    d.name = name;
    if (set)
        set(&d, arg);
    CHECK(stk_model_builder_add(b, &d));
}

static void input_1x28x28(stk_layer_desc_t *d, int64_t unused)
{
    (void)unused;
    d->in_c = 1;
    d->in_h = d->in_w = 28;
}

/* A 3x3 convolution with `out` channels, padding 1. */
static void conv3(stk_layer_desc_t *d, int64_t out)
{
    d->out = out;
    d->kernel_h = d->kernel_w = 3;
    d->pad_h = d->pad_w = 1;
}

/* The same, dilated by 2 (padding 2 keeps the size). */
static void conv3_dilated(stk_layer_desc_t *d, int64_t out)
{
    conv3(d, out);
    d->pad_h = d->pad_w = 2;
    d->dilation_h = d->dilation_w = 2;
}

static void pool2(stk_layer_desc_t *d, int64_t unused)
{
    (void)unused;
    d->kernel_h = d->kernel_w = 2;
}

static void linear(stk_layer_desc_t *d, int64_t out)
{
    d->out = out;
}

static void dropout(stk_layer_desc_t *d, int64_t percent)
{
    d->p = (float)percent / 100.0f;
}

static stk_model_t *build(void)
{
    CHECK(stk_model_builder_create(&b));
    add(STK_LAYER_INPUT, "data", input_1x28x28, 0);
    add(STK_LAYER_CONV2D, "conv1", conv3, 32);
    add(STK_LAYER_BATCHNORM2D, "bn1", NULL, 0);
    add(STK_LAYER_RELU, "relu1", NULL, 0);
    add(STK_LAYER_CONV2D, "conv2", conv3, 32);
    add(STK_LAYER_BATCHNORM2D, "bn2", NULL, 0);
    add(STK_LAYER_RELU, "relu2", NULL, 0);
    add(STK_LAYER_MAXPOOL2D, "pool1", pool2, 0);
    add(STK_LAYER_CONV2D, "conv3", conv3_dilated, 64);
    add(STK_LAYER_BATCHNORM2D, "bn3", NULL, 0);
    add(STK_LAYER_RELU, "relu3", NULL, 0);
    add(STK_LAYER_CONV2D, "conv4", conv3, 64);
    add(STK_LAYER_BATCHNORM2D, "bn4", NULL, 0);
    add(STK_LAYER_RELU, "relu4", NULL, 0);
    add(STK_LAYER_MAXPOOL2D, "pool2", pool2, 0);
    add(STK_LAYER_FLATTEN, "flatten", NULL, 0);
    add(STK_LAYER_LINEAR, "fc1", linear, 128);
    add(STK_LAYER_RELU, "relu5", NULL, 0);
    add(STK_LAYER_DROPOUT, "drop", dropout, 25);
    add(STK_LAYER_LINEAR, "fc2", linear, 10);
    add(STK_LAYER_CROSS_ENTROPY, "loss", NULL, 0);
    stk_model_config_t mc = stk_model_config_default();
    mc.batch_size = 4;
    mc.seed = 1;
    stk_model_t *m;
    CHECK(stk_model_create(&m, b, &mc));
    stk_model_builder_destroy(&b);
    return m;
}

int main(int argc, char **argv)
{
    stk_model_t *m = build();
    CHECK(stk_model_summary_print(m, stdout));
    if (argc < 2) {
        stk_model_destroy(&m);
        return 0;
    }
    stk_model_config_t mc = stk_model_config_default();
    mc.batch_size = 4;
    mc.seed = 1;
    stk_model_t *f;
    CHECK(stk_model_create_from_file(&f, argv[1], &mc));
    int same = stk_model_num_params(m) == stk_model_num_params(f);
    for (size_t i = 0; same && i < stk_model_num_params(m); i++) {
        stk_param_info_t a, c;
        CHECK(stk_model_param_info(m, i, &a));
        CHECK(stk_model_param_info(f, i, &c));
        same = !strcmp(a.name, c.name) && a.count == c.count && a.ndim == c.ndim &&
               !memcmp(a.shape, c.shape, sizeof a.shape);
        if (!same)
            fprintf(stderr, "parameter %zu: %s (%zu) in C, %s (%zu) in %s\n", i, a.name, a.count, c.name, c.count,
                    argv[1]);
    }
    size_t n, nf;
    const float *pm = stk_model_params(m, &n), *pf = stk_model_params(f, &nf);
    same = same && n == nf && !memcmp(pm, pf, n * sizeof *pm);
    /* The same batch through both, in evaluation mode. */
    float x[4 * 28 * 28];
    for (size_t i = 0; i < sizeof x / sizeof x[0]; i++)
        x[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    stk_model_set_train(m, 0);
    stk_model_set_train(f, 0);
    const float *lm, *lf;
    int64_t rows, cols;
    CHECK(stk_model_forward(m, x, 4, NULL, NULL, NULL));
    CHECK(stk_model_logits(m, &lm, &rows, &cols));
    float keep[40];
    memcpy(keep, lm, sizeof keep);
    CHECK(stk_model_forward(f, x, 4, NULL, NULL, NULL));
    CHECK(stk_model_logits(f, &lf, &rows, &cols));
    same = same && rows * cols == 40 && !memcmp(keep, lf, sizeof keep);
    printf("%s %s: %zu parameters\n", same ? "same model as" : "DIFFERENT from", argv[1], n);
    stk_model_destroy(&m);
    stk_model_destroy(&f);
    return same ? 0 : 1;
}
