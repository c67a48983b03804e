/* SPDX-License-Identifier: MIT */
/* Host collectives over TCP rings, for CPU ranks that no MPI launcher
 * started (stoker-launch, torchrun-style variables): OpenMPI 4's
 * singletons cannot join one another without an ompi-server. Each rank
 * sends to the next and receives from the previous one; ranks meet through
 * the store. A peer that dies closes its sockets, so a waiting rank fails
 * at once naming it; a peer that stops fails the wait after the timeout. */
#define _GNU_SOURCE
#include "comm_impl.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Ring pieces: each rank's share of a piece is at most this many bytes, so
 * the receive scratch stays small and big buffers pipeline. */
#define SEG_BYTES (1u << 20)
#define HELLO_MAGIC 0x53544b52u /* "STKR" */

typedef struct tcp_ctx {
    int next_fd, prev_fd;
    int next, prev;
    unsigned char *scratch;
    stk_comm_work_t *w; /* the operation running, for messages */
} tcp_ctx_t;

typedef struct hello {
    uint32_t magic, rank, world, generation;
} hello_t;

static int fail_peer(stk_comm_t *c, tcp_ctx_t *t, int peer, const char *how)
{
    char what[160];
    return stk__error(STK_ERANK, "%s on rank %d of %d (tcp): %s rank %d", t->w ? stk__work_what(t->w, what,
                      sizeof(what)) : "set-up", c->rank, c->size, how, peer);
}

/* Sends slen bytes to the next rank while receiving rlen from the previous
 * one; fails when either side makes no progress for the timeout. */
static int duplex(stk_comm_t *c, tcp_ctx_t *t, const void *sbuf, size_t slen, void *rbuf, size_t rlen)
{
    const unsigned char *sp = sbuf;
    unsigned char *rp = rbuf;
    double last = stk__now_s();
    while (slen || rlen) {
        struct pollfd pf[2];
        int n = 0, si = -1, ri = -1;
        if (slen) {
            si = n;
            pf[n++] = (struct pollfd){.fd = t->next_fd, .events = POLLOUT};
        }
        if (rlen) {
            ri = n;
            pf[n++] = (struct pollfd){.fd = t->prev_fd, .events = POLLIN};
        }
        int r = poll(pf, (nfds_t)n, 1000);
        if (r < 0 && errno != EINTR)
            return stk__error(-errno, "tcp: poll: %s", strerror(errno));
        double now = stk__now_s();
        if (r <= 0) {
            if (now - last > c->timeout_s) {
                char how[200];
                if (rlen)
                    snprintf(how, sizeof(how), "no data for %.0f s (collective timeout; STK_DIST_TIMEOUT sets it) "
                             "from", c->timeout_s);
                else
                    snprintf(how, sizeof(how), "no data taken for %.0f s (collective timeout; STK_DIST_TIMEOUT "
                             "sets it) by", c->timeout_s);
                return fail_peer(c, t, rlen ? t->prev : t->next, how);
            }
            continue;
        }
        if (si >= 0 && pf[si].revents) {
            ssize_t w = send(t->next_fd, sp, slen, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w < 0 && errno != EAGAIN && errno != EINTR)
                return fail_peer(c, t, t->next, errno == EPIPE || errno == ECONNRESET
                                 ? "lost the connection (it exited or died) to" : "cannot send to");
            if (w > 0) {
                sp += w;
                slen -= (size_t)w;
                last = now;
            }
        }
        if (ri >= 0 && pf[ri].revents) {
            ssize_t g = recv(t->prev_fd, rp, rlen, MSG_DONTWAIT);
            if (g == 0 || (g < 0 && errno != EAGAIN && errno != EINTR))
                return fail_peer(c, t, t->prev, "lost the connection (it exited or died) to");
            if (g > 0) {
                rp += g;
                rlen -= (size_t)g;
                last = now;
            }
        }
    }
    return 0;
}

/* ------------------------------------------------------------ collectives */

static size_t chunk_lo(size_t len, int n, int i)
{
    return (size_t)((unsigned __int128)len * (unsigned)i / (unsigned)n);
}

static int ring_allreduce(stk_comm_t *c, tcp_ctx_t *t, stk_comm_work_t *w)
{
    int n = c->size, r = c->rank;
    size_t es = stk_dtype_size(w->dtype);
    size_t seg = SEG_BYTES / es;
    unsigned char *buf = w->buf;
    for (size_t base = 0; base < w->count; base += seg * (size_t)n) {
        size_t len = w->count - base < seg * (size_t)n ? w->count - base : seg * (size_t)n;
        unsigned char *p = buf + base * es;
        /* Reduce-scatter: after n - 1 steps rank r holds chunk r + 1 whole. */
        for (int s = 0; s < n - 1; s++) {
            int sc = ((r - s) % n + n) % n, rc = ((r - s - 1) % n + n) % n;
            size_t s0 = chunk_lo(len, n, sc), s1 = chunk_lo(len, n, sc + 1);
            size_t r0 = chunk_lo(len, n, rc), r1 = chunk_lo(len, n, rc + 1);
            int e = duplex(c, t, p + s0 * es, (s1 - s0) * es, t->scratch, (r1 - r0) * es);
            if (e < 0)
                return e;
            stk__reduce_host(p + r0 * es, t->scratch, r1 - r0, w->dtype, w->op);
        }
        int own = (r + 1) % n;
        if (w->op == STK_REDUCE_AVG) {
            size_t o0 = chunk_lo(len, n, own), o1 = chunk_lo(len, n, own + 1);
            stk__divide_host(p + o0 * es, o1 - o0, w->dtype, n);
        }
        /* All-gather: the finished chunks travel once around. */
        for (int s = 0; s < n - 1; s++) {
            int sc = ((r + 1 - s) % n + n) % n, rc = ((r - s) % n + n) % n;
            size_t s0 = chunk_lo(len, n, sc), s1 = chunk_lo(len, n, sc + 1);
            size_t r0 = chunk_lo(len, n, rc), r1 = chunk_lo(len, n, rc + 1);
            int e = duplex(c, t, p + s0 * es, (s1 - s0) * es, p + r0 * es, (r1 - r0) * es);
            if (e < 0)
                return e;
        }
    }
    return 0;
}

static int ring_broadcast(stk_comm_t *c, tcp_ctx_t *t, stk_comm_work_t *w)
{
    int n = c->size;
    int d = (c->rank - w->root + n) % n; /* hops from the root */
    size_t bytes = stk__work_bytes(w);
    size_t nseg = (bytes + SEG_BYTES - 1) / SEG_BYTES;
    unsigned char *p = w->buf;
    /* Step k forwards segment k - 1 while segment k arrives. */
    for (size_t k = 0; k <= nseg; k++) {
        const void *sb = NULL;
        void *rb = NULL;
        size_t sl = 0, rl = 0;
        if (d < n - 1 && k >= 1) {
            sb = p + (k - 1) * SEG_BYTES;
            sl = bytes - (k - 1) * SEG_BYTES < SEG_BYTES ? bytes - (k - 1) * SEG_BYTES : SEG_BYTES;
        }
        if (d > 0 && k < nseg) {
            rb = p + k * SEG_BYTES;
            rl = bytes - k * SEG_BYTES < SEG_BYTES ? bytes - k * SEG_BYTES : SEG_BYTES;
        }
        int e = duplex(c, t, sb, sl, rb, rl);
        if (e < 0)
            return e;
    }
    return 0;
}

static int ring_allgather(stk_comm_t *c, tcp_ctx_t *t, stk_comm_work_t *w)
{
    int n = c->size, r = c->rank;
    size_t blk = stk__work_bytes(w);
    unsigned char *out = w->buf;
    if (w->send != out + (size_t)r * blk)
        memmove(out + (size_t)r * blk, w->send, blk);
    for (int s = 0; s < n - 1; s++) {
        int sc = ((r - s) % n + n) % n, rc = ((r - s - 1) % n + n) % n;
        int e = duplex(c, t, out + (size_t)sc * blk, blk, out + (size_t)rc * blk, blk);
        if (e < 0)
            return e;
    }
    return 0;
}

static int tcp_run(stk_comm_t *c, void *ctx, stk_comm_work_t *w)
{
    tcp_ctx_t *t = ctx;
    t->w = w;
    int rc = 0;
    if (c->size == 1) {
        if (w->kind == STK__COLL_ALLGATHER && w->send != w->buf && w->count)
            memmove(w->buf, w->send, stk__work_bytes(w));
        return 0;
    }
    switch (w->kind) {
    case STK__COLL_ALLREDUCE:
        rc = ring_allreduce(c, t, w);
        break;
    case STK__COLL_BROADCAST:
        rc = ring_broadcast(c, t, w);
        break;
    case STK__COLL_ALLGATHER:
        rc = ring_allgather(c, t, w);
        break;
    case STK__COLL_BARRIER: {
        int32_t z = 0;
        stk_comm_work_t b = *w;
        b.buf = &z;
        b.count = 1;
        b.dtype = STK_DTYPE_I32;
        b.op = STK_REDUCE_SUM;
        rc = ring_allreduce(c, t, &b);
        break;
    }
    }
    t->w = NULL;
    return rc;
}

/* ---------------------------------------------------------------- set-up */

static int set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ? -errno : 0;
}

static int listen_ephemeral(int *fd, int *port)
{
    int s = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int zero = 0;
    struct sockaddr_storage ss;
    socklen_t sl;
    if (s >= 0) {
        setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
        struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = in6addr_any};
        if (bind(s, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(s, 16) < 0) {
            close(s);
            s = -1;
        }
    }
    if (s < 0) {
        s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (s < 0)
            return -errno;
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY)};
        if (bind(s, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(s, 16) < 0) {
            int e = -errno;
            close(s);
            return e;
        }
    }
    sl = sizeof(ss);
    if (getsockname(s, (struct sockaddr *)&ss, &sl) < 0) {
        int e = -errno;
        close(s);
        return e;
    }
    *port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                           : ((struct sockaddr_in *)&ss)->sin_port);
    *fd = s;
    return 0;
}

static int connect_to(const char *host, const char *port, int *fd)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int g = getaddrinfo(host, port, &hints, &res);
    if (g != 0)
        return -EHOSTUNREACH;
    int err = -ECONNREFUSED;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        int s = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (s < 0)
            continue;
        if (connect(s, a->ai_addr, a->ai_addrlen) == 0) {
            freeaddrinfo(res);
            *fd = s;
            return 0;
        }
        err = -errno;
        close(s);
    }
    freeaddrinfo(res);
    return err;
}

static void tcp_free(tcp_ctx_t *t)
{
    if (!t)
        return;
    if (t->next_fd >= 0)
        close(t->next_fd);
    if (t->prev_fd >= 0)
        close(t->prev_fd);
    free(t->scratch);
    free(t);
}

static int tcp_open(stk_comm_t *c, void **ctx)
{
    int rc, lfd = -1, port = 0;
    char key[64], val[128];
    c->rank = c->env.rank;
    c->size = c->env.world_size;
    c->local_rank = c->env.local_rank;
    c->local_size = c->env.local_world_size;
    tcp_ctx_t *t = calloc(1, sizeof(*t));
    if (!t)
        return stk__error(-ENOMEM, "tcp: out of memory");
    t->next_fd = t->prev_fd = -1;
    t->next = (c->rank + 1) % c->size;
    t->prev = (c->rank + c->size - 1) % c->size;
    if (c->size == 1) {
        *ctx = t;
        return 0;
    }
    t->scratch = malloc(SEG_BYTES);
    if (!t->scratch) {
        tcp_free(t);
        return stk__error(-ENOMEM, "tcp: out of memory");
    }
    if ((rc = stk__comm_open_store(c)) < 0)
        goto fail;
    if ((rc = listen_ephemeral(&lfd, &port)) < 0) {
        rc = stk__error(rc, "tcp: rank %d cannot listen for its ring peer: %s", c->rank, strerror(-rc));
        goto fail;
    }
    /* Peers reach this rank on the address it reached the store from. */
    snprintf(key, sizeof(key), "tcp/addr/%d", c->rank);
    snprintf(val, sizeof(val), "%s %d %d", stk__store_local_addr(c->store), port, c->size);
    if ((rc = stk__store_set(c->store, key, val, strlen(val))) < 0)
        goto fail;
    snprintf(key, sizeof(key), "tcp/addr/%d", t->next);
    size_t len = 0;
    if ((rc = stk__store_get(c->store, key, val, sizeof(val) - 1, &len)) < 0)
        goto fail;
    val[len] = '\0';
    char host[INET6_ADDRSTRLEN + 1], ports[16];
    int world = 0;
    if (sscanf(val, "%46s %15s %d", host, ports, &world) != 3) {
        rc = stk__error(STK_EDATA, "tcp: rank %d published '%s'", t->next, val);
        goto fail;
    }
    if (world != c->size) {
        rc = stk__error(STK_ERANK, "tcp: rank %d says the world has %d ranks, rank %d says %d (WORLD_SIZE differs)",
                        t->next, world, c->rank, c->size);
        goto fail;
    }
    if ((rc = connect_to(host, ports, &t->next_fd)) < 0) {
        rc = stk__error(STK_ERANK, "tcp: rank %d cannot connect to rank %d at %s:%s: %s", c->rank, t->next, host,
                        ports, strerror(-rc));
        goto fail;
    }
    hello_t h = {HELLO_MAGIC, (uint32_t)c->rank, (uint32_t)c->size, c->generation};
    if ((rc = set_nonblock(t->next_fd)) < 0 || (rc = duplex(c, t, &h, sizeof(h), NULL, 0)) < 0)
        goto fail;
    /* The previous rank connects to this one. */
    struct pollfd pf = {.fd = lfd, .events = POLLIN};
    int r = poll(&pf, 1, (int)(c->timeout_s * 1000));
    if (r <= 0) {
        rc = stk__error(STK_ERANK, "tcp: rank %d waited %.0f s for rank %d to connect", c->rank, c->timeout_s,
                        t->prev);
        goto fail;
    }
    t->prev_fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (t->prev_fd < 0) {
        rc = stk__error(-errno, "tcp: accept: %s", strerror(errno));
        goto fail;
    }
    hello_t ph;
    if ((rc = set_nonblock(t->prev_fd)) < 0 || (rc = duplex(c, t, NULL, 0, &ph, sizeof(ph))) < 0)
        goto fail;
    if (ph.magic != HELLO_MAGIC || (int)ph.rank != t->prev || (int)ph.world != c->size ||
        ph.generation != c->generation) {
        rc = stk__error(STK_ERANK, "tcp: rank %d expected rank %d of %d, got a connection from rank %u of %u",
                        c->rank, t->prev, c->size, ph.rank, ph.world);
        goto fail;
    }
    int one = 1;
    setsockopt(t->next_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(t->prev_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    close(lfd);
    lfd = -1;
    /* Everyone is wired before anyone leaves the store behind. */
    if ((rc = stk__store_barrier(c->store, "tcp/ready", c->size)) < 0)
        goto fail;
    if (c->rank != 0)
        stk__store_close(&c->store);
    *ctx = t;
    return 0;
fail:
    if (lfd >= 0)
        close(lfd);
    tcp_free(t);
    return rc;
}

static void tcp_close(stk_comm_t *c, void *ctx, int broken)
{
    (void)c;
    (void)broken;
    tcp_free(ctx);
}

const stk__comm_iface_t stk__tcp_iface = {
    .name = "tcp",
    .threaded = 1,
    .own_timeout = 1,
    .open = tcp_open,
    .close = tcp_close,
    .run = tcp_run,
};
