/* SPDX-License-Identifier: MIT */
/* Reads the PyTorch reference files of tests/data/optim (written by
 * tools/gen_optim_fixtures.py): text, one record per line, "tag rest". */
#ifndef STOKER_TEST_OPTIM_FIXTURE_H
#define STOKER_TEST_OPTIM_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct fx_line {
    char *tag;
    char *rest;
} fx_line_t;

typedef struct fixture {
    char *text;
    fx_line_t *lines;
    size_t n;
} fixture_t;

/* Loads $STK_TEST_DATA/optim/<name>.txt; returns 0 or -1. */
static int fx_load(fixture_t *fx, const char *name)
{
    const char *dir = getenv("STK_TEST_DATA");
    char path[1024];
    snprintf(path, sizeof(path), "%s/optim/%s.txt", dir ? dir : "tests/data", name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open fixture %s\n", path);
        return -1;
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    fx->text = malloc((size_t)len + 1);
    if (fread(fx->text, 1, (size_t)len, f) != (size_t)len) {
        fclose(f);
        return -1;
    }
    fclose(f);
    fx->text[len] = '\0';
    fx->n = 0;
    for (long i = 0; i < len; i++)
        fx->n += fx->text[i] == '\n';
    fx->lines = calloc(fx->n + 1, sizeof(*fx->lines));
    size_t k = 0;
    char *save = NULL;
    for (char *l = strtok_r(fx->text, "\n", &save); l && k <= fx->n; l = strtok_r(NULL, "\n", &save)) {
        char *sp = strchr(l, ' ');
        fx->lines[k].tag = l;
        fx->lines[k].rest = sp ? sp + 1 : l + strlen(l);
        if (sp)
            *sp = '\0';
        k++;
    }
    fx->n = k;
    return 0;
}

static void fx_free(fixture_t *fx)
{
    free(fx->text);
    free(fx->lines);
}

/* The rest of the first line tagged `tag` (NULL if none). */
static const char *fx_get(const fixture_t *fx, const char *tag)
{
    for (size_t i = 0; i < fx->n; i++)
        if (!strcmp(fx->lines[i].tag, tag))
            return fx->lines[i].rest;
    return NULL;
}

/* Parses up to max doubles from s; returns how many. */
static size_t fx_doubles(const char *s, double *out, size_t max)
{
    size_t n = 0;
    char *end;
    while (n < max) {
        double v = strtod(s, &end);
        if (end == s)
            break;
        out[n++] = v;
        s = end;
    }
    return n;
}

#endif
