/* SPDX-License-Identifier: MIT */
/* Strict number parsing for the command-line tools: a value is the whole
 * argument, in range, or the tool says which option and why. strtoull alone
 * takes "abc" as 0, "2x" as 2 and "-1" as UINT64_MAX. Not installed. */
#ifndef STOKER_TOOL_ARGS_H
#define STOKER_TOOL_ARGS_H

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* *out = the decimal integer s, within [lo, hi]. Returns 0, or -1 after
 * printing "<tool>: <opt>: ..." to stderr. */
static inline int tool_parse_i64(const char *tool, const char *opt, const char *s, int64_t lo, int64_t hi,
                                 int64_t *out)
{
    if (!s || !*s || isspace((unsigned char)*s)) {
        fprintf(stderr, "%s: %s: expected a number, got '%s'\n", tool, opt, s ? s : "");
        return -1;
    }
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*end != '\0') {
        fprintf(stderr, "%s: %s: '%s' is not a whole number\n", tool, opt, s);
        return -1;
    }
    if (errno == ERANGE || v < lo || v > hi) {
        fprintf(stderr, "%s: %s: %s is outside [%lld, %lld]\n", tool, opt, s, (long long)lo, (long long)hi);
        return -1;
    }
    *out = (int64_t)v;
    return 0;
}

/* The same for an int. */
static inline int tool_parse_int(const char *tool, const char *opt, const char *s, int lo, int hi, int *out)
{
    int64_t v;
    if (tool_parse_i64(tool, opt, s, lo, hi, &v) < 0)
        return -1;
    *out = (int)v;
    return 0;
}

/* *out = the finite decimal number s, within [lo, hi]. */
static inline int tool_parse_f64(const char *tool, const char *opt, const char *s, double lo, double hi, double *out)
{
    if (!s || !*s || isspace((unsigned char)*s)) {
        fprintf(stderr, "%s: %s: expected a number, got '%s'\n", tool, opt, s ? s : "");
        return -1;
    }
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (*end != '\0' || !isfinite(v)) {
        fprintf(stderr, "%s: %s: '%s' is not a finite number\n", tool, opt, s);
        return -1;
    }
    if (v < lo || v > hi) {
        fprintf(stderr, "%s: %s: %s is outside [%g, %g]\n", tool, opt, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

#endif
