/* SPDX-License-Identifier: MIT */
/* Fuzz target for the engine's two parsers: a model file and a state
 * (safetensors) blob. Input starting with 8 bytes whose little-endian value
 * fits the input is a state, loaded into a small fixed model; anything else
 * is model-file text, parsed and (when it parses and stays small) built.
 * Built with libFuzzer under -Dfuzz=true; otherwise a plain main replays
 * files and directories given on the command line (CI runs the corpus). */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "replay.h"
#include "stoker/engine.h"

static stk_model_t *fixed;

static void run_state(const uint8_t *data, size_t size)
{
    if (!fixed) {
        stk_model_builder_t *b = NULL;
        if (stk_model_builder_create(&b) != 0 ||
            stk_model_builder_parse(b, "input shape=1,4,4\nconv2d name=c out=2 kernel=3\nbatchnorm2d name=bn\n"
                                       "flatten\nlinear name=fc out=2\ncross_entropy", "fixed") != 0)
            abort();
        stk_model_config_t cfg;
        stk_model_config_default(&cfg);
        cfg.batch_size = 1;
        if (stk_model_create(&fixed, b, &cfg) != 0)
            abort();
        stk_model_builder_destroy(&b);
    }
    stk_model_state_load_mem(fixed, data, size);
}

static void run_text(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return;
    memcpy(text, data, size);
    text[size] = 0;
    stk_model_builder_t *b = NULL;
    if (stk_model_builder_create(&b) == 0 && stk_model_builder_parse(b, text, "fuzz") == 0) {
        /* Building allocates activations: only for small graphs. */
        stk_model_config_t cfg;
        stk_model_config_default(&cfg);
        cfg.batch_size = 1;
        stk_model_t *m = NULL;
        if (size < 512 && stk_model_create(&m, b, &cfg) == 0) {
            char buf[256];
            stk_model_summary(m, buf, sizeof(buf));
            int64_t shape[4];
            stk_model_input_shape(m, shape);
            if (shape[1] * shape[2] * shape[3] <= 4096) {
                float *x = calloc((size_t)(shape[1] * shape[2] * shape[3]), sizeof(float));
                if (x)
                    stk_model_forward(m, x, 1, NULL, NULL, NULL);
                free(x);
            }
        }
        stk_model_destroy(&m);
    }
    stk_model_builder_destroy(&b);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t hl = 0;
    if (size >= 8) {
        for (int i = 0; i < 8; i++)
            hl |= (uint64_t)data[i] << (8 * i);
    }
    if (size >= 8 && hl <= size - 8)
        run_state(data, size);
    else
        run_text(data, size);
    return 0;
}

#ifndef STK_LIBFUZZER
int main(int argc, char **argv)
{
    int rc = stk_fuzz_replay("fuzz_model", argc, argv);
    stk_model_destroy(&fixed);
    return rc;
}
#endif
