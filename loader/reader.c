/* SPDX-License-Identifier: MIT */
/* Record readers for shard workers: io_uring (all reads of a batch in one
 * submission, handled as they complete, into a registered buffer where one
 * is given) and the pread fallback. The only file that knows whether
 * liburing is built in. */
#define _GNU_SOURCE
#include "loader_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if STK_HAVE_IO_URING
#include <liburing.h>
#endif

struct stk__reader {
    stk_io_mode_t mode;
    unsigned depth;
#if STK_HAVE_IO_URING
    struct io_uring ring;
    int ring_ok;
    char *reg_buf;        /* registered with the ring (READ_FIXED) */
    size_t reg_len;
#endif
};

_Atomic int stk__io_uring_warned;

/* STK_IO_URING=0 in the environment turns io_uring off, as libuv's
 * UV_USE_IO_URING=0 does: for a kernel whose io_uring misbehaves, and so
 * that the fallback is tested on machines where io_uring works. */
static int uring_env_off(void)
{
    const char *e = getenv("STK_IO_URING");
    return e && strcmp(e, "0") == 0;
}

#if STK_HAVE_IO_URING
/* 0 = allowed, 1 = only for a group, 2 = disabled (Linux 6.6+). */
static int uring_sysctl(void)
{
    FILE *f = fopen("/proc/sys/kernel/io_uring_disabled", "re");
    int v = 0;
    if (!f)
        return 0;
    if (fscanf(f, "%d", &v) != 1)
        v = 0;
    fclose(f);
    return v;
}
#endif

int stk__io_resolve(stk_io_mode_t want, stk_io_mode_t *got)
{
    *got = want == STK_IO_MMAP ? STK_IO_MMAP : STK_IO_PREAD;
    if (want == STK_IO_PREAD || want == STK_IO_MMAP)
        return 0;
#if STK_HAVE_IO_URING
    char why[160] = "";
    int sys = uring_sysctl();
    if (uring_env_off()) {
        snprintf(why, sizeof why, "STK_IO_URING=0 in the environment");
    } else if (sys == 2) {
        snprintf(why, sizeof why, "kernel.io_uring_disabled = 2");
    } else {
        /* Seccomp profiles (Docker's default before 25.0) and kernels
         * without io_uring refuse here, not later. */
        struct io_uring ring;
        int rc = io_uring_queue_init(8, &ring, 0);
        if (rc == 0) {
            io_uring_queue_exit(&ring);
            *got = STK_IO_URING;
            return 0;
        }
        snprintf(why, sizeof why, "io_uring_setup refused: %s%s", strerror(-rc),
                 sys == 1 ? " (kernel.io_uring_disabled = 1)" : "");
    }
    if (want == STK_IO_URING)
        return stk__error(-EPERM, "io_uring forced but unavailable: %s", why);
    if (!atomic_exchange(&stk__io_uring_warned, 1))
        stk__log(STK_LOG_WARN, "io_uring unavailable (%s): reading records with pread", why);
    return 0;
#else
    if (want == STK_IO_URING)
        return stk__error(STK_ECONFIG, "io_uring forced but Stoker was built without liburing");
    (void)uring_env_off;
    return 0;
#endif
}

int stk__reader_create(stk__reader_t **out, stk_io_mode_t mode, unsigned depth)
{
    stk__reader_t *r = calloc(1, sizeof *r);
    if (!r)
        return stk__error(-ENOMEM, "reader: out of memory");
    r->mode = mode;
    r->depth = depth ? depth : 64;
#if STK_HAVE_IO_URING
    if (mode == STK_IO_URING) {
        unsigned entries = 1;
        while (entries < r->depth && entries < 4096)
            entries <<= 1;
        r->depth = entries;
        int rc = io_uring_queue_init(entries, &r->ring, 0);
        if (rc < 0) {
            free(r);
            return stk__error(rc, "reader: io_uring_queue_init(%u): %s", entries, strerror(-rc));
        }
        r->ring_ok = 1;
    }
#else
    if (mode == STK_IO_URING) {
        free(r);
        return stk__error(STK_ECONFIG, "reader: built without liburing");
    }
#endif
    *out = r;
    return 0;
}

void stk__reader_destroy(stk__reader_t **pr)
{
    if (!pr || !*pr)
        return;
#if STK_HAVE_IO_URING
    if ((*pr)->ring_ok)
        io_uring_queue_exit(&(*pr)->ring);
#endif
    free(*pr);
    *pr = NULL;
}

void stk__reader_register(stk__reader_t *r, void *buf, size_t len)
{
#if STK_HAVE_IO_URING
    if (!r->ring_ok)
        return;
    if (r->reg_buf) {
        io_uring_unregister_buffers(&r->ring);
        r->reg_buf = NULL;
    }
    struct iovec iov = {.iov_base = buf, .iov_len = len};
    /* Fixed buffers save the kernel a page pin per read; when the memlock
     * limit refuses them, plain reads are just as correct. */
    if (len && io_uring_register_buffers(&r->ring, &iov, 1) == 0) {
        r->reg_buf = buf;
        r->reg_len = len;
    }
#else
    (void)r;
    (void)buf;
    (void)len;
#endif
}

static int pread_full(const stk__read_req_t *q)
{
    size_t done = 0;
    while (done < q->len) {
        ssize_t k = pread(q->fd, (char *)q->buf + done, q->len - done, (off_t)(q->offset + done));
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (k == 0)
            return -EIO; /* file shorter than its index says */
        done += (size_t)k;
    }
    return 0;
}

#if STK_HAVE_IO_URING
static void prep_read(stk__reader_t *r, struct io_uring_sqe *sqe, const stk__read_req_t *q, size_t i)
{
    char *b = q->buf;
    if (r->reg_buf && b >= r->reg_buf && b + q->len <= r->reg_buf + r->reg_len)
        io_uring_prep_read_fixed(sqe, q->fd, b, (unsigned)q->len, q->offset, 0);
    else
        io_uring_prep_read(sqe, q->fd, b, (unsigned)q->len, q->offset);
    io_uring_sqe_set_data64(sqe, i);
}

static int uring_run(stk__reader_t *r, const stk__read_req_t *reqs, size_t n, stk__read_done_fn done,
                     void *ctx)
{
    size_t next = 0, inflight = 0;
    int first_err = 0;
    while (next < n || inflight) {
        /* The whole batch goes in one submission when the ring is deep
         * enough (it is sized to the batch). */
        while (next < n && inflight < r->depth) {
            struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
            if (!sqe)
                break;
            prep_read(r, sqe, &reqs[next], next);
            next++;
            inflight++;
        }
        int rc = io_uring_submit_and_wait(&r->ring, 1);
        if (rc < 0 && rc != -EINTR)
            return stk__error(rc, "reader: io_uring_submit: %s", strerror(-rc));
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&r->ring, head, cqe) {
            size_t i = (size_t)io_uring_cqe_get_data64(cqe);
            int res = cqe->res;
            seen++;
            int st = 0;
            if (res < 0) {
                st = res;
            } else if ((size_t)res < reqs[i].len) {
                /* Short read (rare on regular files): finish with pread. */
                stk__read_req_t rest = reqs[i];
                rest.offset += (uint64_t)res;
                rest.buf = (char *)rest.buf + res;
                rest.len -= (size_t)res;
                st = pread_full(&rest);
            }
            int drc = done(ctx, i, st);
            if (drc && !first_err)
                first_err = drc;
        }
        io_uring_cq_advance(&r->ring, seen);
        inflight -= seen;
        if (first_err && next < n)
            n = next; /* stop submitting; drain what is in flight */
    }
    return first_err;
}
#endif

int stk__reader_run(stk__reader_t *r, const stk__read_req_t *reqs, size_t n, stk__read_done_fn done,
                    void *ctx)
{
#if STK_HAVE_IO_URING
    if (r->ring_ok)
        return uring_run(r, reqs, n, done, ctx);
#else
    (void)r;
#endif
    for (size_t i = 0; i < n; i++) {
        int rc = done(ctx, i, pread_full(&reqs[i]));
        if (rc)
            return rc;
    }
    return 0;
}
