/* SPDX-License-Identifier: MIT */
/* The rendezvous store: rank 0 serves a key-value map over TCP from one
 * thread (poll over every connection; a get for a missing key parks until
 * some set provides it); every rank talks to it with blocking calls that
 * give up after the timeout, naming the key and the address. */
#define _GNU_SOURCE
#include "store.h"

#include "internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define STORE_KEY_MAX 255
#define STORE_VAL_MAX (1u << 20)

enum { OP_SET = 1, OP_GET = 2, OP_ADD = 3, OP_HELLO = 4 };

/* Request: op, 3 pad bytes, key length, value length (little-endian u32),
 * key, value. Response: status (0 ok), 3 pad, length, data. */
typedef struct msg_hdr {
    uint8_t op, pad[3];
    uint32_t klen, vlen;
} msg_hdr_t;

typedef struct entry {
    char *key;
    void *val;
    size_t len;
} entry_t;

typedef struct client {
    int fd;
    unsigned char *in;   /* request being received */
    size_t in_len, in_cap;
    char *waiting;       /* parked get: its key */
} client_t;

typedef struct server {
    int lfd, wake[2];
    uint32_t generation;
    pthread_t thread;
    entry_t *e;
    size_t ne, cap_e;
    client_t *cl;
    size_t ncl, cap_cl;
} server_t;

struct stk__store {
    int fd;
    int rank;
    uint32_t generation;
    double timeout_s;
    char where[300];
    char local[INET6_ADDRSTRLEN];
    server_t *srv;
};


/* ---------------------------------------------------------------- server */

static entry_t *find_entry(server_t *s, const char *key)
{
    for (size_t i = 0; i < s->ne; i++)
        if (strcmp(s->e[i].key, key) == 0)
            return &s->e[i];
    return NULL;
}

static int put_entry(server_t *s, const char *key, const void *val, size_t len)
{
    entry_t *e = find_entry(s, key);
    void *copy = malloc(len ? len : 1);
    if (!copy)
        return -ENOMEM;
    memcpy(copy, val, len);
    if (!e) {
        if (s->ne == s->cap_e) {
            size_t cap = s->cap_e ? 2 * s->cap_e : 16;
            entry_t *ne = realloc(s->e, cap * sizeof(*ne));
            if (!ne) {
                free(copy);
                return -ENOMEM;
            }
            s->e = ne;
            s->cap_e = cap;
        }
        e = &s->e[s->ne];
        e->key = strdup(key);
        if (!e->key) {
            free(copy);
            return -ENOMEM;
        }
        s->ne++;
    } else {
        free(e->val);
    }
    e->val = copy;
    e->len = len;
    return 0;
}

/* Blocking write of a whole buffer to a client (responses are small; a
 * client that stops reading is dropped by its send timeout). */
static int write_all(int fd, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    while (len) {
        ssize_t w = send(fd, p, len, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

static int respond(int fd, int status, const void *data, uint32_t len)
{
    msg_hdr_t h = {.op = (uint8_t)status, .klen = 0, .vlen = len};
    int rc = write_all(fd, &h, sizeof(h));
    if (rc == 0 && len)
        rc = write_all(fd, data, len);
    return rc;
}

static void drop_client(server_t *s, size_t i)
{
    close(s->cl[i].fd);
    free(s->cl[i].in);
    free(s->cl[i].waiting);
    s->cl[i] = s->cl[--s->ncl];
}

/* Handles the complete request in c->in; returns < 0 to drop the client. */
static int handle_request(server_t *s, client_t *c)
{
    msg_hdr_t h;
    memcpy(&h, c->in, sizeof(h));
    char key[STORE_KEY_MAX + 1];
    memcpy(key, c->in + sizeof(h), h.klen);
    key[h.klen] = '\0';
    const unsigned char *val = c->in + sizeof(h) + h.klen;
    switch (h.op) {
    case OP_HELLO: {
        uint32_t g;
        if (h.vlen != sizeof(g))
            return -1;
        memcpy(&g, val, sizeof(g));
        if (g != s->generation) {
            respond(c->fd, 2, NULL, 0);
            return -1;
        }
        return respond(c->fd, 0, NULL, 0) < 0 ? -1 : 0;
    }
    case OP_SET: {
        int rc = put_entry(s, key, val, h.vlen);
        if (rc < 0)
            return respond(c->fd, 1, NULL, 0) < 0 ? -1 : 0;
        if (respond(c->fd, 0, NULL, 0) < 0)
            return -1;
        /* Wake the gets parked on this key. */
        entry_t *e = find_entry(s, key);
        for (size_t i = 0; i < s->ncl; i++) {
            client_t *w = &s->cl[i];
            if (w->waiting && strcmp(w->waiting, key) == 0) {
                free(w->waiting);
                w->waiting = NULL;
                respond(w->fd, 0, e->val, (uint32_t)e->len);
            }
        }
        return 0;
    }
    case OP_GET: {
        entry_t *e = find_entry(s, key);
        if (e)
            return respond(c->fd, 0, e->val, (uint32_t)e->len) < 0 ? -1 : 0;
        c->waiting = strdup(key);
        return c->waiting ? 0 : -1;
    }
    case OP_ADD: {
        int64_t delta, cur = 0;
        if (h.vlen != sizeof(delta))
            return -1;
        memcpy(&delta, val, sizeof(delta));
        entry_t *e = find_entry(s, key);
        if (e && e->len == sizeof(cur))
            memcpy(&cur, e->val, sizeof(cur));
        cur += delta;
        if (put_entry(s, key, &cur, sizeof(cur)) < 0)
            return respond(c->fd, 1, NULL, 0) < 0 ? -1 : 0;
        return respond(c->fd, 0, &cur, sizeof(cur)) < 0 ? -1 : 0;
    }
    default:
        return -1;
    }
}

/* Reads what a client sent; handles each complete request. */
static int client_readable(server_t *s, client_t *c)
{
    if (c->in_cap - c->in_len < 4096) {
        size_t cap = c->in_cap ? 2 * c->in_cap : 8192;
        unsigned char *n = realloc(c->in, cap);
        if (!n)
            return -1;
        c->in = n;
        c->in_cap = cap;
    }
    ssize_t r = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
    if (r == 0 || (r < 0 && errno != EINTR && errno != EAGAIN))
        return -1;
    if (r < 0)
        return 0;
    c->in_len += (size_t)r;
    for (;;) {
        msg_hdr_t h;
        if (c->in_len < sizeof(h))
            return 0;
        memcpy(&h, c->in, sizeof(h));
        if (h.klen > STORE_KEY_MAX || h.vlen > STORE_VAL_MAX)
            return -1;
        size_t need = sizeof(h) + h.klen + h.vlen;
        if (c->in_len < need) {
            if (c->in_cap < need) {
                unsigned char *n = realloc(c->in, need);
                if (!n)
                    return -1;
                c->in = n;
                c->in_cap = need;
            }
            return 0;
        }
        if (handle_request(s, c) < 0)
            return -1;
        memmove(c->in, c->in + need, c->in_len - need);
        c->in_len -= need;
    }
}

static void *serve(void *arg)
{
    server_t *s = arg;
    struct pollfd *pf = NULL;
    size_t cap_pf = 0;
    for (;;) {
        size_t n = 2 + s->ncl;
        if (n > cap_pf) {
            struct pollfd *np = realloc(pf, n * sizeof(*np));
            if (!np)
                break;
            pf = np;
            cap_pf = n;
        }
        pf[0] = (struct pollfd){.fd = s->wake[0], .events = POLLIN};
        pf[1] = (struct pollfd){.fd = s->lfd, .events = POLLIN};
        for (size_t i = 0; i < s->ncl; i++)
            pf[2 + i] = (struct pollfd){.fd = s->cl[i].fd, .events = POLLIN};
        int r = poll(pf, n, -1);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (pf[0].revents)
            break;
        /* Clients first, from the back: drop_client moves the last one. */
        for (size_t i = s->ncl; i-- > 0;)
            if (pf[2 + i].revents && client_readable(s, &s->cl[i]) < 0)
                drop_client(s, i);
        if (pf[1].revents & POLLIN) {
            int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
            if (fd >= 0) {
                if (s->ncl == s->cap_cl) {
                    size_t cap = s->cap_cl ? 2 * s->cap_cl : 8;
                    client_t *nc = realloc(s->cl, cap * sizeof(*nc));
                    if (!nc) {
                        close(fd);
                        continue;
                    }
                    s->cl = nc;
                    s->cap_cl = cap;
                }
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                struct timeval tv = {.tv_sec = 10};
                setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
                s->cl[s->ncl++] = (client_t){.fd = fd};
            }
        }
    }
    free(pf);
    return NULL;
}

static void server_free(server_t *s)
{
    if (!s)
        return;
    while (s->ncl)
        drop_client(s, s->ncl - 1);
    free(s->cl);
    for (size_t i = 0; i < s->ne; i++) {
        free(s->e[i].key);
        free(s->e[i].val);
    }
    free(s->e);
    if (s->lfd >= 0)
        close(s->lfd);
    if (s->wake[0] >= 0) {
        close(s->wake[0]);
        close(s->wake[1]);
    }
    free(s);
}

/* Listens on every interface at port (IPv6 dual stack where there is one,
 * else IPv4): MASTER_ADDR may be any name of this host. */
static int listen_any(int port, int *out)
{
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1, zero = 0;
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
        struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port),
                                 .sin6_addr = in6addr_any};
        if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(fd, 1024) == 0) {
            *out = fd;
            return 0;
        }
        int e = errno;
        close(fd);
        if (e == EADDRINUSE)
            return -e;
    }
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 1024) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    *out = fd;
    return 0;
}

static int server_start(stk__store_t *st, int port)
{
    server_t *s = calloc(1, sizeof(*s));
    if (!s)
        return stk__error(-ENOMEM, "store: out of memory");
    s->lfd = -1;
    s->wake[0] = s->wake[1] = -1;
    s->generation = st->generation;
    int rc = listen_any(port, &s->lfd);
    if (rc < 0) {
        server_free(s);
        return stk__error(rc, "store: rank 0 cannot listen at %s (MASTER_PORT %d): %s%s", st->where, port,
                          strerror(-rc), rc == -EADDRINUSE ? " (another job, or a previous run, holds the port)" : "");
    }
    if (pipe2(s->wake, O_CLOEXEC) < 0) {
        rc = -errno;
        server_free(s);
        return stk__error(rc, "store: pipe: %s", strerror(-rc));
    }
    rc = pthread_create(&s->thread, NULL, serve, s);
    if (rc != 0) {
        server_free(s);
        return stk__error(-rc, "store: cannot start the serving thread: %s", strerror(rc));
    }
    st->srv = s;
    return 0;
}

static void server_stop(server_t *s)
{
    if (!s)
        return;
    ssize_t w;
    do
        w = write(s->wake[1], "x", 1);
    while (w < 0 && errno == EINTR);
    pthread_join(s->thread, NULL);
    server_free(s);
}

/* ---------------------------------------------------------------- client */

/* One connect attempt to every address of host:port; 0 and *fd, or -errno
 * of the last failure. */
static int try_connect(const char *host, int port, int *fd)
{
    char ports[16];
    snprintf(ports, sizeof(ports), "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int g = getaddrinfo(host, ports, &hints, &res);
    if (g != 0)
        return g == EAI_SYSTEM ? -errno : -EHOSTUNREACH;
    int err = -ECONNREFUSED;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        int s = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (s < 0) {
            err = -errno;
            continue;
        }
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

static int xfer(stk__store_t *s, void *buf, size_t len, int sending, double deadline, const char *key);

/* Says which communicator this rank wants; 0 when the store is that one's,
 * 1 when it is another's (or went away meanwhile): then retry. */
static int hello(stk__store_t *st, double deadline)
{
    msg_hdr_t h = {.op = OP_HELLO, .klen = 0, .vlen = sizeof(st->generation)}, r;
    double d = deadline < stk__now_s() + 5.0 ? deadline : stk__now_s() + 5.0;
    if (xfer(st, &h, sizeof(h), 1, d, "(hello)") < 0 || xfer(st, &st->generation, sizeof(st->generation), 1, d,
                                                             "(hello)") < 0 ||
        xfer(st, &r, sizeof(r), 0, d, "(hello)") < 0 || r.op != 0)
        return 1;
    return 0;
}

static int client_connect(stk__store_t *st, const char *host, int port)
{
    double deadline = stk__now_s() + st->timeout_s;
    double pause = 0.05;
    int err = 0;
    for (;;) {
        int fd = -1;
        err = try_connect(host, port, &fd);
        if (err == 0) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            st->fd = fd;
            if (hello(st, deadline) != 0) {
                close(fd);
                st->fd = -1;
                err = -ECONNREFUSED;
                goto retry;
            }
            struct sockaddr_storage ss;
            socklen_t sl = sizeof(ss);
            if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
                if (ss.ss_family == AF_INET)
                    inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, st->local, sizeof(st->local));
                else if (ss.ss_family == AF_INET6) {
                    const struct in6_addr *a6 = &((struct sockaddr_in6 *)&ss)->sin6_addr;
                    if (IN6_IS_ADDR_V4MAPPED(a6))
                        inet_ntop(AF_INET, &a6->s6_addr[12], st->local, sizeof(st->local));
                    else
                        inet_ntop(AF_INET6, a6, st->local, sizeof(st->local));
                }
            }
            return 0;
        }
    retry:;
        /* Rank 0 may not listen yet: retry what a late start looks like. */
        double now = stk__now_s();
        if (now >= deadline)
            break;
        double t = pause < deadline - now ? pause : deadline - now;
        struct timespec ts = {.tv_sec = (time_t)t, .tv_nsec = (long)((t - (double)(time_t)t) * 1e9)};
        nanosleep(&ts, NULL);
        if (pause < 1.0)
            pause *= 2;
    }
    return stk__error(STK_ERANK,
                      "store: rank %d cannot reach the store at MASTER_ADDR:MASTER_PORT = %s (hosted by rank 0) "
                      "after %.0f s: %s",
                      st->rank, st->where, st->timeout_s, strerror(-err));
}

int stk__store_open(stk__store_t **out, const stk__store_config_t *cfg)
{
    if (!out || !cfg || !cfg->addr || !cfg->addr[0] || cfg->port <= 0 || cfg->port > 65535)
        return stk__error(-EINVAL, "store: needs an address and a port in 1..65535");
    *out = NULL;
    stk__store_t *st = calloc(1, sizeof(*st));
    if (!st)
        return stk__error(-ENOMEM, "store: out of memory");
    st->fd = -1;
    st->rank = cfg->rank;
    st->generation = cfg->generation;
    st->timeout_s = cfg->timeout_s > 0 ? cfg->timeout_s : 300.0;
    if (strchr(cfg->addr, ':'))
        snprintf(st->where, sizeof(st->where), "[%s]:%d", cfg->addr, cfg->port);
    else
        snprintf(st->where, sizeof(st->where), "%s:%d", cfg->addr, cfg->port);
    int rc = 0;
    if (cfg->serve)
        rc = server_start(st, cfg->port);
    if (rc == 0)
        rc = client_connect(st, cfg->addr, cfg->port);
    if (rc < 0) {
        stk__store_close(&st);
        return rc;
    }
    *out = st;
    return 0;
}

void stk__store_close(stk__store_t **s)
{
    if (!s || !*s)
        return;
    stk__store_t *st = *s;
    if (st->fd >= 0)
        close(st->fd);
    server_stop(st->srv);
    free(st);
    *s = NULL;
}

/* Moves len bytes to or from the store with poll, giving up at deadline. */
static int xfer(stk__store_t *s, void *buf, size_t len, int sending, double deadline, const char *key)
{
    unsigned char *p = buf;
    while (len) {
        double left = deadline - stk__now_s();
        if (left <= 0)
            return stk__error(STK_ERANK, "store %s: rank %d waited %.0f s for key '%s' (a rank never set it: "
                              "did one die or take another path?)", s->where, s->rank, s->timeout_s, key);
        struct pollfd pf = {.fd = s->fd, .events = sending ? POLLOUT : POLLIN};
        int ms = left > 1.0 ? 1000 : (int)(left * 1000) + 1;
        int r = poll(&pf, 1, ms);
        if (r < 0 && errno != EINTR)
            return stk__error(-errno, "store %s: poll: %s", s->where, strerror(errno));
        if (r <= 0)
            continue;
        ssize_t n = sending ? send(s->fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT) : recv(s->fd, p, len, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN))
            return stk__error(STK_ERANK, "store %s: rank %d lost the connection to rank 0's store (key '%s'): %s",
                              s->where, s->rank, key, n == 0 ? "closed (did rank 0 exit?)" : strerror(errno));
        if (n > 0) {
            p += n;
            len -= (size_t)n;
        }
    }
    return 0;
}

/* One request and its response header; the response data is left to read. */
static int request(stk__store_t *s, int op, const char *key, const void *val, size_t vlen, msg_hdr_t *resp,
                   double deadline)
{
    size_t klen = strlen(key);
    if (klen > STORE_KEY_MAX || vlen > STORE_VAL_MAX)
        return stk__error(-EINVAL, "store: key '%.40s...' or its value is too long", key);
    msg_hdr_t h = {.op = (uint8_t)op, .klen = (uint32_t)klen, .vlen = (uint32_t)vlen};
    int rc = xfer(s, &h, sizeof(h), 1, deadline, key);
    if (rc == 0)
        rc = xfer(s, (void *)key, klen, 1, deadline, key);
    if (rc == 0 && vlen)
        rc = xfer(s, (void *)val, vlen, 1, deadline, key);
    if (rc == 0)
        rc = xfer(s, resp, sizeof(*resp), 0, deadline, key);
    if (rc == 0 && resp->op != 0)
        rc = stk__error(-ENOMEM, "store %s: rank 0's store refused key '%s' (out of memory)", s->where, key);
    if (rc == 0 && resp->vlen > STORE_VAL_MAX)
        rc = stk__error(STK_EDATA, "store %s: reply of %u bytes for key '%s'", s->where, resp->vlen, key);
    return rc;
}

int stk__store_set(stk__store_t *s, const char *key, const void *val, size_t len)
{
    msg_hdr_t r;
    return request(s, OP_SET, key, val, len, &r, stk__now_s() + s->timeout_s);
}

int stk__store_get(stk__store_t *s, const char *key, void *buf, size_t cap, size_t *len)
{
    msg_hdr_t r;
    double deadline = stk__now_s() + s->timeout_s;
    int rc = request(s, OP_GET, key, NULL, 0, &r, deadline);
    if (rc < 0)
        return rc;
    if (len)
        *len = r.vlen;
    if (r.vlen > cap) {
        /* Drain it so that the connection stays in step. */
        unsigned char tmp[4096];
        size_t left = r.vlen;
        while (left && rc == 0) {
            size_t n = left < sizeof(tmp) ? left : sizeof(tmp);
            rc = xfer(s, tmp, n, 0, deadline, key);
            left -= n;
        }
        return rc < 0 ? rc : stk__error(-ENOSPC, "store: value of '%s' is %u bytes, room for %zu", key, r.vlen, cap);
    }
    return xfer(s, buf, r.vlen, 0, deadline, key);
}

int stk__store_add(stk__store_t *s, const char *key, int64_t delta, int64_t *result)
{
    msg_hdr_t r;
    double deadline = stk__now_s() + s->timeout_s;
    int rc = request(s, OP_ADD, key, &delta, sizeof(delta), &r, deadline);
    if (rc < 0)
        return rc;
    int64_t v = 0;
    if (r.vlen != sizeof(v))
        return stk__error(STK_EDATA, "store %s: add '%s' returned %u bytes", s->where, key, r.vlen);
    rc = xfer(s, &v, sizeof(v), 0, deadline, key);
    if (rc == 0 && result)
        *result = v;
    return rc;
}

int stk__store_barrier(stk__store_t *s, const char *name, int n)
{
    char key[STORE_KEY_MAX + 1];
    int64_t v = 0;
    snprintf(key, sizeof(key), "%s/count", name);
    int rc = stk__store_add(s, key, 1, &v);
    if (rc < 0)
        return rc;
    snprintf(key, sizeof(key), "%s/done", name);
    if (v == n)
        rc = stk__store_set(s, key, "1", 1);
    char one;
    size_t len;
    if (rc == 0)
        rc = stk__store_get(s, key, &one, 1, &len);
    if (rc < 0)
        return stk__error_prefix(rc, "barrier '%s' (%d ranks)", name, n);
    return 0;
}

const char *stk__store_local_addr(const stk__store_t *s)
{
    return s->local;
}

const char *stk__store_where(const stk__store_t *s)
{
    return s->where;
}
