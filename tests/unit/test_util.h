/* SPDX-License-Identifier: MIT */
/* Small helpers several test programs share: where the committed fixtures
 * are, a path in a temporary folder, reading a whole file, writing a text
 * file, and removing a temporary tree. Static inline, so that a program
 * that uses some of them does not warn about the others. write_text needs
 * <cmocka.h> first, rm_one _GNU_SOURCE. */
#ifndef STOKER_TEST_UTIL_H
#define STOKER_TEST_UTIL_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

/* $STK_TEST_DATA (set by the suite), or tests/data from the checkout. */
static inline const char *data_dir(void)
{
    const char *d = getenv("STK_TEST_DATA");
    return d ? d : "tests/data";
}

/* The whole file, NUL-terminated (heap; the caller frees), its length in
 * *len; NULL when it cannot be read. */
static inline char *read_file(const char *path, size_t *len)
{
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    if (buf)
        buf[n] = 0;
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* dir/name in one of eight rotating buffers, so that a call can take
 * several such paths at once. */
static inline const char *path_in(const char *dir, const char *name)
{
    static char buf[8][512];
    static int k;
    char *b = buf[k++ & 7];
    snprintf(b, sizeof(buf[0]), "%s/%s", dir, name);
    return b;
}

#ifdef assert_non_null
/* Writes text to path; fails the test when it cannot (cmocka programs). */
static inline void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}
#endif

#if defined(_GNU_SOURCE) || defined(_XOPEN_SOURCE)
/* An nftw callback removing each entry: nftw(dir, rm_one, 16,
 * FTW_DEPTH | FTW_PHYS) removes the tree at dir. */
static inline int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(p);
}
#endif

#endif
