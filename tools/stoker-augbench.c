/* SPDX-License-Identifier: MIT */
/* stoker-augbench: throughput of each augmentation transform (and of whole
 * pipelines, fused and unfused) on 1x28x28 and 3x224x224 u8 images, in MB/s
 * of input and as a ratio to memcpy of the same bytes in the same run.
 * One thread; each figure is the best of 5 trials. A plain C loop doing
 * crop + flip + normalize one pixel at a time is timed alongside. Usage: stoker-augbench [-t SECONDS_PER_ROW] [-s SHAPE]
 * where SHAPE is 28 or 224 (default both). */
#include <stoker/augment.h>
#include "tool_args.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static volatile unsigned sink;

/* The obvious C loop for crop (zero padding) + horizontal flip +
 * normalize, one output pixel at a time: the yardstick the fused pass is
 * compared with in the same run. */
static void plain_crop_flip_norm(const unsigned char *in, uint32_t c, uint32_t side, uint32_t pad,
                                 float *out, uint32_t y0, uint32_t x0, int flip)
{
    const float s = 1.0f / (255.0f * 0.353f), b = -0.286f / 0.353f;
    for (uint32_t ch = 0; ch < c; ch++)
        for (uint32_t y = 0; y < side; y++)
            for (uint32_t x = 0; x < side; x++) {
                int sy = (int)(y + y0) - (int)pad;
                int sx = (int)((flip ? side - 1 - x : x) + x0) - (int)pad;
                unsigned char v = sy < 0 || sx < 0 || sy >= (int)side || sx >= (int)side
                                      ? 0
                                      : in[((size_t)ch * side + (size_t)sy) * side + (size_t)sx];
                out[((size_t)ch * side + y) * side + x] = (float)v * s + b;
            }
}

enum { RUN_MEMCPY, RUN_AUG, RUN_PLAIN };

/* Runs one kind for about secs in 5 trials; returns the best trial's
 * seconds per sample (the machine is shared: the minimum is the most
 * repeatable figure). */
static double time_it(int what, const stk_augment_t *aug, const unsigned char *in, uint32_t c,
                      uint32_t side, unsigned char *out, void *scratch, double secs)
{
    size_t in_bytes = (size_t)c * side * side;
    double best = 1e30;
    uint64_t done = 0;
    for (int trial = 0; trial < 5; trial++) {
        size_t iters = 4, n = 0;
        double t0 = now(), t;
        for (;;) {
            for (size_t i = 0; i < iters; i++, n++, done++) {
                if (what == RUN_AUG)
                    stk_augment_apply(aug, in, out, scratch, 1, 0, done);
                else if (what == RUN_MEMCPY)
                    memcpy(out, in + (done & 1), in_bytes);
                else
                    plain_crop_flip_norm(in, c, side, side / 14, (float *)out,
                                         (uint32_t)(done * 7 % (side / 7 + 1)),
                                         (uint32_t)(done * 3 % (side / 7 + 1)), (int)(done & 1));
                sink += out[done % 64];
            }
            t = now() - t0;
            if (t >= secs / 5)
                break;
            iters *= 2;
        }
        double per = t / (double)n;
        best = per < best ? per : best;
    }
    return best;
}

static void bench_shape(uint32_t c, uint32_t side, double secs)
{
    const char *specs28[] = {
        "crop:28,pad=2", "crop:28,pad=2,mode=reflect", "centercrop:24", "rrcrop:28",
        "resize:32", "hflip:p=1", "vflip:p=1", "rot90:k=1",
        "jitter:brightness=0.4,contrast=0.4", "cutout:8", "normalize:mean=0.286,std=0.353",
        "normalize:mean=0.286,std=0.353,dtype=bf16", "normalize:mean=0.286,std=0.353,dtype=f16",
        "crop:28,pad=2|hflip|normalize:mean=0.286,std=0.353",
        NULL};
    const char *specs224[] = {
        "crop:224,pad=16", "crop:224,pad=16,mode=reflect", "centercrop:200", "rrcrop:224",
        "resize:256", "hflip:p=1", "vflip:p=1", "rot90:k=1",
        "jitter:brightness=0.4,contrast=0.4", "cutout:56",
        "normalize:mean=0.485/0.456/0.406,std=0.229/0.224/0.225",
        "normalize:mean=0.485/0.456/0.406,std=0.229/0.224/0.225,dtype=bf16",
        "normalize:mean=0.485/0.456/0.406,std=0.229/0.224/0.225,dtype=f16",
        "crop:224,pad=16|hflip|normalize:mean=0.485/0.456/0.406,std=0.229/0.224/0.225",
        "rrcrop:224|hflip|normalize:mean=0.485/0.456/0.406,std=0.229/0.224/0.225",
        "resize:256|centercrop:224|normalize:mean=0.485/0.456/0.406,std=0.229/0.224/0.225",
        NULL};
    const char **specs = side == 28 ? specs28 : specs224;
    stk_image_desc_t d = {c, side, side, STK_DTYPE_U8, STK_LAYOUT_CHW};
    size_t in_bytes = (size_t)c * side * side;
    size_t cap = (size_t)c * 256 * 256 * 4 + 64;
    unsigned char *in = malloc(in_bytes + 1), *out = malloc(cap);
    for (size_t i = 0; i <= in_bytes; i++)
        in[i] = (unsigned char)(i * 2654435761u >> 13);
    double tm = time_it(RUN_MEMCPY, NULL, in, c, side, out, NULL, secs);
    double mb_memcpy = (double)in_bytes / tm / 1e6;
    printf("\n%ux%ux%u u8 (%zu bytes): memcpy %.0f MB/s, %.1f ns/image\n", c, side, side, in_bytes,
           mb_memcpy, tm * 1e9);
    printf("%-86s %6s %10s %9s %7s\n", "spec", "passes", "MB/s", "ns/image", "ratio");
    double tp = time_it(RUN_PLAIN, NULL, in, c, side, out, NULL, secs);
    printf("%-86s %6s %10.0f %9.1f %7.3f\n", "(plain C loop: crop pad=side/14 + hflip + normalize f32)",
           "-", (double)in_bytes / tp / 1e6, tp * 1e9, (double)in_bytes / tp / 1e6 / mb_memcpy);
    for (size_t k = 0; specs[k]; k++) {
        for (unsigned flags = 0; flags <= STK_AUGMENT_NO_FUSE; flags++) {
            stk_augment_t *aug;
            if (stk_augment_create(&aug, specs[k], &d, flags)) {
                fprintf(stderr, "stoker-augbench: %s: %s\n", specs[k], stk_error_message());
                exit(1);
            }
            size_t passes = stk_augment_pass_count(aug);
            if (flags && strchr(specs[k], '|') == NULL) {
                stk_augment_destroy(&aug);
                continue; /* one transform: nothing to unfuse */
            }
            void *scratch = malloc(stk_augment_scratch_bytes(aug) + 1);
            double t = time_it(RUN_AUG, aug, in, c, side, out, scratch, secs);
            double mb = (double)in_bytes / t / 1e6;
            char label[200];
            snprintf(label, sizeof label, "%s%s", specs[k], flags ? "  [unfused]" : "");
            printf("%-86s %6zu %10.0f %9.1f %7.3f\n", label, passes, mb, t * 1e9, mb / mb_memcpy);
            free(scratch);
            stk_augment_destroy(&aug);
        }
    }
    free(in);
    free(out);
}

int main(int argc, char **argv)
{
    double secs = 0.3;
    int only = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-t") && i + 1 < argc) {
            if (tool_parse_f64("stoker-augbench", "-t", argv[++i], 0.001, 3600, &secs) < 0)
                return 2;
        } else if (!strcmp(argv[i], "-s") && i + 1 < argc) {
            if (tool_parse_int("stoker-augbench", "-s", argv[++i], 28, 224, &only) < 0)
                return 2;
            if (only != 28 && only != 224) {
                fprintf(stderr, "stoker-augbench: -s: %d is neither 28 nor 224\n", only);
                return 2;
            }
        } else {
            bool help = !strcmp(argv[i], "--help") || !strcmp(argv[i], "-h");
            fprintf(help ? stdout : stderr, "usage: %s [-t SECONDS_PER_ROW] [-s 28|224]\n", argv[0]);
            return help ? 0 : 2;
        }
    }
    printf("stoker-augbench %s: one thread; MB/s of input bytes; ratio = MB/s / memcpy MB/s\n",
           stk_version());
    if (!only || only == 28)
        bench_shape(1, 28, secs);
    if (!only || only == 224)
        bench_shape(3, 224, secs);
    return 0;
}
