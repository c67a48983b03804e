/* SPDX-License-Identifier: MIT */
/* Helpers shared by optim.c and sched.c: a little-endian blob writer and a
 * bounds-checked reader (state blobs for checkpoints), a checksum, and the
 * small value parsers of the "kind:key=value,..." text forms. Internal. */
#ifndef STOKER_ENGINE_OPTIM_UTIL_H
#define STOKER_ENGINE_OPTIM_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Writer: with p == NULL it only counts, so one serializer gives both the
 * size and the bytes. */
typedef struct stk__blobw {
    uint8_t *p;
    size_t len;
    size_t cap;
} stk__blobw_t;

typedef struct stk__blobr {
    const uint8_t *p;
    size_t len;
    size_t pos;
    int bad; /* set once a read ran past the end */
} stk__blobr_t;

static inline void stk__w_bytes(stk__blobw_t *w, const void *src, size_t n)
{
    if (w->p && w->len + n <= w->cap)
        memcpy(w->p + w->len, src, n);
    w->len += n;
}

static inline void stk__w_u64(stk__blobw_t *w, uint64_t v)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    stk__w_bytes(w, b, 8);
}

static inline void stk__w_u32(stk__blobw_t *w, uint32_t v)
{
    uint8_t b[4];
    for (int i = 0; i < 4; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    stk__w_bytes(w, b, 4);
}

static inline void stk__w_f64(stk__blobw_t *w, double d)
{
    uint64_t v;
    memcpy(&v, &d, 8);
    stk__w_u64(w, v);
}

/* Floats as little-endian IEEE binary32. */
static inline void stk__w_f32s(stk__blobw_t *w, const float *x, size_t n)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    stk__w_bytes(w, x, n * sizeof(float));
#else
    for (size_t i = 0; i < n; i++) {
        uint32_t v;
        memcpy(&v, &x[i], 4);
        stk__w_u32(w, v);
    }
#endif
}

static inline const uint8_t *stk__r_take(stk__blobr_t *r, size_t n)
{
    if (r->bad || n > r->len - r->pos) {
        r->bad = 1;
        return NULL;
    }
    const uint8_t *q = r->p + r->pos;
    r->pos += n;
    return q;
}

static inline uint64_t stk__r_u64(stk__blobr_t *r)
{
    const uint8_t *q = stk__r_take(r, 8);
    uint64_t v = 0;
    if (q)
        for (int i = 0; i < 8; i++)
            v |= (uint64_t)q[i] << (8 * i);
    return v;
}

static inline uint32_t stk__r_u32(stk__blobr_t *r)
{
    const uint8_t *q = stk__r_take(r, 4);
    uint32_t v = 0;
    if (q)
        for (int i = 0; i < 4; i++)
            v |= (uint32_t)q[i] << (8 * i);
    return v;
}

static inline double stk__r_f64(stk__blobr_t *r)
{
    uint64_t v = stk__r_u64(r);
    double d;
    memcpy(&d, &v, 8);
    return d;
}

static inline void stk__r_f32s(stk__blobr_t *r, float *x, size_t n)
{
    if (n > SIZE_MAX / 4) {
        r->bad = 1;
        return;
    }
    const uint8_t *q = stk__r_take(r, n * 4);
    if (!q)
        return;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(x, q, n * 4);
#else
    for (size_t i = 0; i < n; i++) {
        uint32_t v = (uint32_t)q[4 * i] | (uint32_t)q[4 * i + 1] << 8 |
                     (uint32_t)q[4 * i + 2] << 16 | (uint32_t)q[4 * i + 3] << 24;
        memcpy(&x[i], &v, 4);
    }
#endif
}

/* FNV-1a 64 over the blob: catches truncation and flipped bytes (not an
 * adversary). Processes 8 bytes per round for speed on large buffers. */
static inline uint64_t stk__blob_hash(const void *data, size_t n)
{
    const uint8_t *p = (const uint8_t *)data;
    uint64_t h = 0xcbf29ce484222325ull;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        h = (h ^ v) * 0x100000001b3ull;
        h ^= h >> 29;
    }
    for (; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

/* Text-form values. Each returns 0 or -1 (not a value of that type). */
int stk__parse_f64(const char *s, double *out);
int stk__parse_flag(const char *s, int *out);
/* A count of steps: "N" or "Xep" (X epochs, times steps_per_epoch, rounded
 * to the nearest). Returns 0, -1 (malformed), -2 ('ep' without
 * steps_per_epoch). */
int stk__parse_count(const char *s, int64_t steps_per_epoch, int64_t *out);

#endif
