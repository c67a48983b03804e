/* SPDX-License-Identifier: MIT */
/* Where everything of a batch lies in its slot (computed once in main,
 * sent to workers as plain numbers), which field the augmentation takes,
 * and the system limits a loader would hit later, checked up front with
 * one message each. */
#define _GNU_SOURCE
#include "loader_internal.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static size_t align_up(size_t v, size_t a)
{
    return (v + a - 1) / a * a;
}

/* Image-like: a fixed shape of 2 dims (H, W) or 3 (with channels). */
static int image_like(const stk_field_t *f)
{
    if (f->ndim != 2 && f->ndim != 3)
        return 0;
    for (uint32_t d = 0; d < f->ndim; d++)
        if (f->shape[d] <= 0)
            return 0;
    return 1;
}

/* "data u8[28,28], label i64" */
static void list_fields(const stk_schema_t *sc, char *buf, size_t cap)
{
    size_t o = 0;
    buf[0] = '\0';
    for (uint32_t f = 0; f < sc->nfields && o < cap; f++) {
        const stk_field_t *fs = &sc->fields[f];
        o += (size_t)snprintf(buf + o, cap - o, "%s%s %s", f ? ", " : "", fs->name,
                              stk_dtype_name(fs->dtype));
        for (uint32_t d = 0; d < fs->ndim && o < cap; d++)
            o += (size_t)snprintf(buf + o, cap - o, "%s%lld%s", d ? "," : "[",
                                  (long long)fs->shape[d], d + 1 == fs->ndim ? "]" : "");
    }
}

/* The field the augmentation takes: the one named, or with no name,
 * "image", else the only image-like field. A negative code naming the
 * fields there are when there is none (or no single one). */
static int augment_field_of(const stk_schema_t *sc, const char *name)
{
    char have[400];
    const char *want = name && name[0] ? name : "image";
    for (uint32_t f = 0; f < sc->nfields; f++)
        if (strcmp(sc->fields[f].name, want) == 0)
            return (int)f;
    list_fields(sc, have, sizeof have);
    if (name && name[0])
        return stk__error(STK_ECONFIG, "augment_field: no field \"%s\" in the dataset (its "
                          "fields: %s)", name, have);
    int k = -1, n = 0;
    for (uint32_t f = 0; f < sc->nfields; f++)
        if (image_like(&sc->fields[f])) {
            k = (int)f;
            n++;
        }
    if (n == 1)
        return k;
    return stk__error(STK_ECONFIG, "augment: no field \"image\" and %s image-like field "
                      "(2 or 3 fixed dims) to augment; name one with augment_field (the "
                      "dataset's fields: %s)", n ? "more than one" : "no", have);
}

static int image_desc(const stk_field_t *fs, stk_layout_t layout, stk_image_desc_t *d)
{
    memset(d, 0, sizeof *d);
    d->dtype = fs->dtype;
    d->layout = layout;
    for (uint32_t i = 0; i < fs->ndim; i++)
        if (fs->shape[i] <= 0)
            return stk__error(STK_ECONFIG, "augment field %s has a variable shape", fs->name);
    if (fs->ndim == 2) {
        d->c = 1;
        d->h = (uint32_t)fs->shape[0];
        d->w = (uint32_t)fs->shape[1];
    } else if (fs->ndim == 3 && layout == STK_LAYOUT_CHW) {
        d->c = (uint32_t)fs->shape[0];
        d->h = (uint32_t)fs->shape[1];
        d->w = (uint32_t)fs->shape[2];
    } else if (fs->ndim == 3) {
        d->h = (uint32_t)fs->shape[0];
        d->w = (uint32_t)fs->shape[1];
        d->c = (uint32_t)fs->shape[2];
    } else {
        return stk__error(STK_ECONFIG, "augment field %s has %u dims (want 2 or 3)", fs->name,
                          fs->ndim);
    }
    return 0;
}

int stk__layout_make(stk__worker_spec_t *spec, const stk_dataset_t *ds, const char *augment,
                     const char *augment_field, stk_layout_t aug_layout, uint64_t batch,
                     uint32_t nslots)
{
    stk__layout_t *L = &spec->layout;
    const stk_schema_t *sc = &ds->schema;
    int rc;
    memset(L, 0, sizeof *L);
    L->batch_size = batch;
    L->nslots = nslots;
    L->nfields = sc->nfields;
    L->aug_field = -1;
    if (augment && augment[0]) {
        int k = augment_field_of(sc, augment_field);
        if (k < 0)
            return k;
        rc = image_desc(&sc->fields[k], aug_layout, &spec->aug_in);
        if (rc)
            return rc;
        if (strlen(augment) >= sizeof spec->augment)
            return stk__error(STK_ECONFIG, "augment: spec longer than %zu bytes",
                              sizeof spec->augment - 1);
        strcpy(spec->augment, augment);
        L->aug_field = k;
    }
    size_t off = align_up(sizeof(stk__slot_hdr_t), 64);
    L->indices_off = off;
    off = align_up(off + batch * sizeof(uint64_t), 64);
    L->lengths_off = off;
    off = align_up(off + (size_t)sc->nfields * batch * sizeof(int64_t), 64);
    for (uint32_t k = 0; k < sc->nfields; k++) {
        const stk_field_t *fs = &sc->fields[k];
        stk_batch_field_t *o = &L->out[k];
        memcpy(o->name, fs->name, sizeof o->name);
        L->var_dim[k] = -1;
        o->var_dim = -1;
        if ((int)k == L->aug_field) {
            stk_augment_t *aug = NULL;
            rc = stk_augment_create(&aug, augment, &spec->aug_in, 0);
            if (rc)
                return stk__error_prefix(rc, "augment");
            stk_image_desc_t od;
            stk_augment_output(aug, &od);
            L->field_stride[k] = stk_augment_output_bytes(aug);
            stk_augment_destroy(&aug);
            o->dtype = od.dtype;
            o->ndim = 3;
            o->shape[0] = od.c;
            o->shape[1] = od.h;
            o->shape[2] = od.w;
        } else {
            size_t esz = stk_dtype_size(fs->dtype);
            if (esz == 0 || fs->ndim > STK_MAX_DIMS)
                return stk__error(STK_ECONFIG, "field %s: bad dtype or rank", fs->name);
            o->dtype = fs->dtype;
            o->ndim = fs->ndim;
            size_t unit = esz;
            for (uint32_t d = 0; d < fs->ndim; d++) {
                o->shape[d] = fs->shape[d];
                if (fs->shape[d] < 0) {
                    if (L->var_dim[k] >= 0)
                        return stk__error(STK_ECONFIG, "field %s: more than one variable dim",
                                          fs->name);
                    L->var_dim[k] = (int32_t)d;
                    o->var_dim = (int)d + 1;
                } else {
                    unit *= (size_t)fs->shape[d];
                }
            }
            if (L->var_dim[k] >= 0) {
                /* Room for the longest sample the dataset can hold. */
                size_t maxext = unit ? ds->max_sample / unit : 0;
                L->field_unit[k] = unit;
                L->field_stride[k] = align_up(maxext * unit, 8);
            } else {
                L->field_stride[k] = unit;
            }
        }
        L->field_off[k] = off;
        off = align_up(off + batch * L->field_stride[k], 64);
    }
    L->slot_bytes = align_up(off, 4096);
    return 0;
}

static long count_dir(const char *path)
{
    DIR *d = opendir(path);
    long n = 0;
    if (!d)
        return 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static int read_u64_file(const char *path, uint64_t *v, int *is_max)
{
    FILE *f = fopen(path, "re");
    char buf[64];
    *is_max = 0;
    if (!f)
        return -1;
    char *ok = fgets(buf, sizeof buf, f);
    fclose(f);
    if (!ok)
        return -1;
    if (strncmp(buf, "max", 3) == 0) {
        *is_max = 1;
        return 0;
    }
    *v = strtoull(buf, NULL, 10);
    return 0;
}

int stk__loader_check_limits(const stk_dataset_t *ds, uint32_t nworkers, size_t arena_bytes,
                             int pin_memlock)
{
    struct rlimit rl;
    uint64_t per_worker = ds->ops->open_fds ? ds->ops->open_fds(ds->inst) : 0;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        /* A worker: its dataset's files, socket, stdio, io_uring. */
        uint64_t need_w = per_worker + 8;
        uint64_t need_m = (uint64_t)count_dir("/proc/self/fd") + nworkers + 4;
        if (nworkers && need_w > rl.rlim_cur)
            return stk__error(STK_ELIMIT, "RLIMIT_NOFILE is %llu; each worker holds %llu files "
                              "of the dataset open and needs %llu (raise it with ulimit -n)",
                              (unsigned long long)rl.rlim_cur, (unsigned long long)per_worker,
                              (unsigned long long)need_w);
        if (need_m > rl.rlim_cur)
            return stk__error(STK_ELIMIT, "RLIMIT_NOFILE is %llu; the main process needs %llu "
                              "descriptors (open ones plus %u workers)",
                              (unsigned long long)rl.rlim_cur, (unsigned long long)need_m,
                              nworkers);
    }
    if (pin_memlock && getrlimit(RLIMIT_MEMLOCK, &rl) == 0 &&
        rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur < arena_bytes)
        return stk__error(STK_ELIMIT, "RLIMIT_MEMLOCK is %llu bytes; pinning the batch arena "
                          "needs %zu bytes (raise it with ulimit -l, or do not pin)",
                          (unsigned long long)rl.rlim_cur, arena_bytes);
    uint64_t max = 0, cur = 0;
    int is_max = 1, cur_max = 0;
    if (read_u64_file(stk__cgroup_memory_max_path, &max, &is_max) == 0 && !is_max) {
        if (read_u64_file(stk__cgroup_memory_current_path, &cur, &cur_max) != 0 || cur_max)
            cur = 0;
        if (cur + arena_bytes > max)
            return stk__error(STK_ELIMIT, "cgroup memory.max is %llu bytes (%llu in use); the "
                              "batch arena needs %zu more (lower batch_size, prefetch or "
                              "num_workers)", (unsigned long long)max, (unsigned long long)cur,
                              arena_bytes);
    }
    return 0;
}

