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

static stk_model_t *build(void)
{
    stk_layer_desc_t dilated = stk_layer_conv2d("conv3", 64, 3, 1, 2);
    dilated.dilation_h = dilated.dilation_w = 2;
    const stk_layer_desc_t layers[] = {
        stk_layer_input("data", 1, 28, 28),
        stk_layer_conv2d("conv1", 32, 3, 1, 1), /* out, kernel, stride, pad */
        stk_layer_batchnorm2d("bn1"),
        stk_layer_relu("relu1"),
        stk_layer_conv2d("conv2", 32, 3, 1, 1),
        stk_layer_batchnorm2d("bn2"),
        stk_layer_relu("relu2"),
        stk_layer_maxpool2d("pool1", 2, 0, 0), /* kernel, stride (0: the kernel), pad */
        dilated,
        stk_layer_batchnorm2d("bn3"),
        stk_layer_relu("relu3"),
        stk_layer_conv2d("conv4", 64, 3, 1, 1),
        stk_layer_batchnorm2d("bn4"),
        stk_layer_relu("relu4"),
        stk_layer_maxpool2d("pool2", 2, 0, 0),
        stk_layer_flatten("flatten"),
        stk_layer_linear("fc1", 128),
        stk_layer_relu("relu5"),
        stk_layer_dropout("drop", 0.25f),
        stk_layer_linear("fc2", 10),
        stk_layer_cross_entropy("loss", 0),
    };
    stk_model_builder_t *b;
    CHECK(stk_model_builder_create(&b));
    for (size_t i = 0; i < sizeof layers / sizeof layers[0]; i++)
        CHECK(stk_model_builder_add(b, &layers[i]));
    stk_model_config_t mc;
    stk_model_config_default(&mc);
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
    stk_model_config_t mc;
    stk_model_config_default(&mc);
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
    /* Same initial values (a state blob holds every parameter and buffer). */
    size_t sm = stk_model_state_size(m), sf = stk_model_state_size(f);
    char *bm = malloc(sm), *bf = malloc(sf);
    CHECK(stk_model_state_save_mem(m, bm, sm, &sm));
    CHECK(stk_model_state_save_mem(f, bf, sf, &sf));
    same = same && sm == sf && !memcmp(bm, bf, sm);
    /* The same batch through both, in evaluation mode. */
    static float x[4 * 28 * 28];
    for (size_t i = 0; i < sizeof x / sizeof x[0]; i++)
        x[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    float lm[40], lf[40];
    stk_model_set_train(m, 0);
    stk_model_set_train(f, 0);
    CHECK(stk_model_forward(m, x, 4, NULL, NULL, NULL));
    CHECK(stk_model_read_logits(m, lm, 40));
    CHECK(stk_model_forward(f, x, 4, NULL, NULL, NULL));
    CHECK(stk_model_read_logits(f, lf, 40));
    same = same && !memcmp(lm, lf, sizeof lm);
    printf("%s %s: %zu parameters and buffers' bytes\n", same ? "same model as" : "DIFFERENT from", argv[1], sm);
    free(bm);
    free(bf);
    stk_model_destroy(&m);
    stk_model_destroy(&f);
    return same ? 0 : 1;
}
