/* SPDX-License-Identifier: MIT */
/* The loader's workers, seen from the main process (see pool.h):
 * starting them through the fork server, their sockets, reaping, one
 * respawned, which one holds a task or stopped moving, and main's sleep
 * on their sockets and the wake-up eventfd. */
#define _GNU_SOURCE
#include "pool.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

int stk__pool_init(stk__pool_t *p, uint32_t n, stk__ring_t *ring, const stk__worker_spec_t *spec,
                   int arena_fd, int args_fd, int wake_fd, uint64_t seed)
{
    memset(p, 0, sizeof *p);
    p->ring = ring;
    p->spec = spec;
    p->arena_fd = arena_fd;
    p->args_fd = args_fd;
    p->wake_fd = wake_fd;
    p->seed = seed;
    p->n = n;
    size_t m = n ? n : 1;
    p->pid = calloc(m, sizeof *p->pid);
    p->sock = calloc(m, sizeof *p->sock);
    p->alive = calloc(m, sizeof *p->alive);
    p->seen_progress = calloc(m, sizeof *p->seen_progress);
    p->seen_ns = calloc(m, sizeof *p->seen_ns);
    p->pfd = calloc(m + 1, sizeof *p->pfd);
    p->spawn_ids = calloc(m, sizeof *p->spawn_ids);
    p->spawn_pids = calloc(m, sizeof *p->spawn_pids);
    p->theirs = calloc(m, sizeof *p->theirs);
    if (!p->pid || !p->sock || !p->alive || !p->seen_progress || !p->seen_ns || !p->pfd ||
        !p->spawn_ids || !p->spawn_pids || !p->theirs) {
        stk__pool_fini(p);
        return stk__error(-ENOMEM, "loader: out of memory");
    }
    for (uint32_t i = 0; i < m; i++)
        p->sock[i] = p->theirs[i] = -1;
    return 0;
}

void stk__pool_fini(stk__pool_t *p)
{
    if (p->sock)
        stk__pool_stop(p, 1);
    free(p->pid);
    free(p->sock);
    free(p->alive);
    free(p->seen_progress);
    free(p->seen_ns);
    free(p->pfd);
    free(p->spawn_ids);
    free(p->spawn_pids);
    free(p->theirs);
    free(p->ev);
    memset(p, 0, sizeof *p);
}

uint64_t stk__pool_worker_seed(uint64_t loader_seed, uint32_t i)
{
    return stk_rng_mix(loader_seed, 0x776f726b00000000ull + i);
}

static void set_alive(stk__pool_t *p, uint32_t i)
{
    p->alive[i] = p->pid[i] > 0 && p->sock[i] >= 0;
}

static void push_event(stk__pool_t *p, const stk__pool_event_t *e)
{
    if (p->nev == p->capev) {
        size_t cap = p->capev ? p->capev * 2 : 8;
        stk__pool_event_t *n = realloc(p->ev, cap * sizeof *n);
        if (!n)
            return; /* a report lost to memory; a death is seen again as EOF */
        p->ev = n;
        p->capev = cap;
    }
    p->ev[p->nev++] = *e;
}

int stk__pool_event(stk__pool_t *p, stk__pool_event_t *e)
{
    if (p->nev == 0)
        return 0;
    *e = p->ev[0];
    memmove(p->ev, p->ev + 1, (p->nev - 1) * sizeof *p->ev);
    p->nev--;
    return 1;
}

/* Gives workers ids[0..k) their socket pairs (main's end in p->sock,
 * theirs in theirs[]). Tasks may be queued for them before they exist. */
static int make_sockets(stk__pool_t *p, uint32_t k, const uint32_t *ids, int *theirs)
{
    for (uint32_t j = 0; j < k; j++) {
        int sv[2];
        uint32_t i = ids[j];
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
            int rc = stk__error(-errno, "loader: socketpair for worker %u", i);
            while (j-- > 0)
                close(theirs[j]);
            return rc;
        }
        p->sock[i] = sv[0];
        theirs[j] = sv[1];
        /* The worker before it, if any, is gone. */
        stk__ring_reset_consumer(p->ring, i);
        p->seen_progress[i] = 0;
        p->seen_ns[i] = stk__now_ns();
        set_alive(p, i);
    }
    return 0;
}

/* Asks the server for workers ids[0..k) on the sockets made for them,
 * one trip for all, and closes their ends here; finish collects the
 * answers (the server's lock is held until then, sent or not). */
static int spawn_begin(stk__pool_t *p, uint32_t k, const uint32_t *ids, int *theirs)
{
    int rc = 0;
    uint64_t *seeds = calloc(k, sizeof *seeds);
    if (!seeds)
        rc = stk__error(-ENOMEM, "loader: out of memory");
    for (uint32_t j = 0; rc == 0 && j < k; j++)
        seeds[j] = stk__pool_worker_seed(p->seed, ids[j]);
    for (uint32_t j = 0; j < k; j++) {
        p->pid[ids[j]] = 0;
        set_alive(p, ids[j]);
        p->spawn_ids[j] = ids[j];
    }
    if (seeds) {
        rc = stk__forkserver_spawn_send(p->spec, k, ids, seeds, theirs, p->arena_fd, p->args_fd,
                                        p->wake_fd, &p->spawn_sent);
        p->spawn_pending = 1;
    }
    for (uint32_t j = 0; j < k; j++)
        close(theirs[j]);
    free(seeds);
    if (rc)
        rc = stk__error_prefix(rc, "loader: start of %u worker(s)", k);
    return rc;
}

/* Reads the server's answers: the workers' pids (0 for one that did not
 * start). */
static int spawn_end(stk__pool_t *p)
{
    if (!p->spawn_pending)
        return 0;
    p->spawn_pending = 0;
    int rc = stk__forkserver_spawn_wait(p->spawn_sent, p->spawn_ids, p->spawn_pids);
    for (uint32_t j = 0; j < p->spawn_sent; j++) {
        p->pid[p->spawn_ids[j]] = p->spawn_pids[j];
        set_alive(p, p->spawn_ids[j]);
    }
    if (rc)
        rc = stk__error_prefix(rc, "loader: start of %u worker(s)", p->spawn_sent);
    return rc;
}

/* Workers that could not all start: stop those that did; the error and
 * its message stay. */
static int start_failed(stk__pool_t *p, int rc)
{
    char msg[STK__MSG_MAX];
    snprintf(msg, sizeof msg, "%s", stk_error_message());
    spawn_end(p);
    stk__pool_stop(p, 1);
    return stk__error(rc, "%s", msg);
}

int stk__pool_prepare(stk__pool_t *p)
{
    if (p->running)
        return 0;
    /* No worker is left to take what stopped workers left in the queue
     * (the loader frees their slots): it starts empty. */
    stk__ring_drop_queued(p->ring);
    uint32_t *ids = malloc((p->n ? p->n : 1) * sizeof *ids);
    if (!ids)
        return stk__error(-ENOMEM, "loader: out of memory");
    for (uint32_t i = 0; i < p->n; i++)
        ids[i] = i;
    /* The workers' ends wait in p->theirs for spawn_begin. */
    int rc = make_sockets(p, p->n, ids, p->theirs);
    free(ids);
    if (rc == 0)
        p->running = 1;
    return rc;
}

/* Closes the workers' socket ends that were not handed to the server. */
static void close_theirs(stk__pool_t *p)
{
    for (uint32_t i = 0; i < p->n; i++)
        if (p->theirs[i] >= 0) {
            close(p->theirs[i]);
            p->theirs[i] = -1;
        }
}

int stk__pool_spawn_begin(stk__pool_t *p)
{
    uint32_t *ids = malloc((p->n ? p->n : 1) * sizeof *ids);
    int rc;
    if (!ids) {
        rc = stk__error(-ENOMEM, "loader: out of memory");
    } else {
        for (uint32_t i = 0; i < p->n; i++)
            ids[i] = i;
        rc = spawn_begin(p, p->n, ids, p->theirs);
        for (uint32_t i = 0; i < p->n; i++)
            p->theirs[i] = -1; /* closed by spawn_begin */
    }
    free(ids);
    close_theirs(p);
    return rc ? start_failed(p, rc) : 0;
}

int stk__pool_spawn_finish(stk__pool_t *p)
{
    int rc = spawn_end(p);
    return rc ? start_failed(p, rc) : 0;
}

/* Waits until deadline (ns) for worker i's end, as the fork server
 * reports it, then kills it and waits 2 s more; describes how it ended
 * in why, and empties its place. */
static void reap(stk__pool_t *p, uint32_t i, uint64_t deadline, char *why, size_t cap)
{
    int st = 0;
    pid_t pid = p->pid[i];
    if (p->sock[i] >= 0)
        close(p->sock[i]);
    p->sock[i] = -1;
    set_alive(p, i);
    if (pid <= 0)
        return;
    uint64_t now = stk__now_ns();
    int ms = deadline > now ? (int)((deadline - now) / 1000000ull) : 0;
    int rc = stk__forkserver_wait(pid, ms, &st);
    if (rc == -ETIMEDOUT) {
        kill(pid, SIGKILL);
        rc = stk__forkserver_wait(pid, 2000, &st);
    }
    if (why) {
        if (rc)
            snprintf(why, cap, "worker %u (pid %d) is gone: %s", i, (int)pid, stk_error_message());
        else if (WIFSIGNALED(st))
            snprintf(why, cap, "worker %u (pid %d) killed by signal %d (SIG%s)", i, (int)pid,
                     WTERMSIG(st), sigabbrev_np(WTERMSIG(st)) ? sigabbrev_np(WTERMSIG(st)) : "?");
        else
            snprintf(why, cap, "worker %u (pid %d) exited with status %d", i, (int)pid,
                     WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    }
    stk__forkserver_forget(pid);
    p->pid[i] = 0;
    set_alive(p, i);
}

void stk__pool_stop(stk__pool_t *p, int hard)
{
    spawn_end(p); /* a start cut short: release the server */
    close_theirs(p);
    if (!p->running)
        return;
    /* The stop mark, then end of file on its socket, tell a worker to
     * exit (it takes no more tasks); a worker that cannot hear them
     * (stopped, hung) is killed when the second is up. */
    for (uint32_t i = 0; i < p->n; i++) {
        stk__ring_stop(p->ring, i);
        if (hard && p->pid[i] > 0)
            kill(p->pid[i], SIGKILL);
        if (p->sock[i] >= 0) {
            close(p->sock[i]);
            p->sock[i] = -1;
        }
        set_alive(p, i);
    }
    uint64_t deadline = stk__now_ns() + 1000000000ull;
    for (uint32_t i = 0; i < p->n; i++)
        reap(p, i, deadline, NULL, 0);
    p->running = 0;
}

int stk__pool_respawn(stk__pool_t *p, uint32_t i)
{
    int theirs;
    int rc = make_sockets(p, 1, &i, &theirs);
    if (rc == 0) {
        rc = spawn_begin(p, 1, &i, &theirs);
        int rc2 = spawn_end(p);
        rc = rc ? rc : rc2;
    }
    return rc;
}

void stk__pool_kill(stk__pool_t *p, uint32_t i, char *why, size_t cap)
{
    if (p->pid[i] > 0)
        kill(p->pid[i], SIGKILL);
    reap(p, i, stk__now_ns() + 1000000000ull, why, cap);
}

void stk__pool_wake(stk__pool_t *p)
{
    stk__ring_wake(p->ring, p->sock);
}

/* Reads worker i's reports; 1 when its socket is at end of file. */
static int read_reports(stk__pool_t *p, uint32_t i)
{
    int eof = 0;
    for (;;) {
        stk__done_msg_t m;
        ssize_t k = recv(p->sock[i], &m, sizeof m, MSG_DONTWAIT);
        if (k > 0) {
            stk__pool_event_t e;
            memset(&e, 0, sizeof e);
            e.kind = STK__POOL_REPORT;
            e.worker = i;
            e.pid = (int)p->pid[i];
            e.cell = m.slot;
            e.epoch = m.epoch;
            e.batch = m.batch;
            e.status = m.status;
            if (k > (ssize_t)offsetof(stk__done_msg_t, msg))
                memcpy(e.msg, m.msg, sizeof e.msg - 1);
            push_event(p, &e);
            continue;
        }
        if (k < 0 && errno == ECONNRESET && !eof) {
            /* The worker closed with wake-ups unread: Linux reports the
             * reset once, ahead of what it sent before dying. */
            eof = 1;
            continue;
        }
        if (k == 0 || (errno != EAGAIN && errno != EINTR))
            eof = 1;
        return eof;
    }
}

int stk__pool_pump(stk__pool_t *p, int timeout_ms)
{
    struct pollfd *f = p->pfd;
    for (uint32_t i = 0; i < p->n; i++) {
        f[i].fd = p->sock[i];
        f[i].events = POLLIN;
        f[i].revents = 0;
    }
    f[p->n].fd = p->wake_fd;
    f[p->n].events = POLLIN;
    f[p->n].revents = 0;
    int n = poll(f, p->n + 1, timeout_ms);
    if (n < 0)
        return errno == EINTR ? 0 : stk__error(-errno, "loader: poll");
    if (f[p->n].revents) {
        uint64_t count;
        if (read(p->wake_fd, &count, sizeof count) < 0 && errno != EAGAIN && errno != EINTR)
            return stk__error(-errno, "loader: read of the wake-up eventfd");
    }
    for (uint32_t i = 0; i < p->n && n > 0; i++) {
        if (!f[i].revents || p->sock[i] < 0)
            continue;
        if (read_reports(p, i)) {
            stk__pool_event_t e;
            memset(&e, 0, sizeof e);
            e.kind = STK__POOL_DIED;
            e.worker = i;
            e.pid = (int)p->pid[i];
            reap(p, i, stk__now_ns() + 1000000000ull, e.msg, sizeof e.msg);
            push_event(p, &e);
        }
    }
    return 0;
}

uint32_t stk__pool_holder(const stk__pool_t *p, uint64_t gen)
{
    return stk__ring_holder(p->ring, gen, p->alive);
}

int stk__pool_unheld(const stk__pool_t *p, uint64_t gen, uint64_t qpos)
{
    return stk__ring_unheld(p->ring, gen, qpos, p->alive);
}

void stk__pool_note_progress(stk__pool_t *p, uint64_t now)
{
    for (uint32_t i = 0; i < p->n; i++) {
        uint64_t g = stk__ring_progress(p->ring, i);
        if (g != p->seen_progress[i]) {
            p->seen_progress[i] = g;
            p->seen_ns[i] = now;
        }
    }
}

uint32_t stk__pool_stalled(stk__pool_t *p, uint64_t now, uint64_t min_ns)
{
    stk__pool_note_progress(p, now);
    uint32_t best = UINT32_MAX;
    for (uint32_t i = 0; i < p->n; i++)
        if (p->alive[i] && (best == UINT32_MAX || p->seen_ns[i] < p->seen_ns[best]))
            best = i;
    if (best != UINT32_MAX && now - p->seen_ns[best] < min_ns)
        best = UINT32_MAX;
    return best;
}

uint64_t stk__pool_idle_ns(const stk__pool_t *p, uint32_t i, uint64_t now)
{
    return now > p->seen_ns[i] ? now - p->seen_ns[i] : 0;
}

/* The kernel's state letter of pid, from /proc/pid/stat (after the
 * command's closing parenthesis), or '?'. */
static char proc_state(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return '?';
    ssize_t k = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (k <= 0)
        return '?';
    buf[k] = '\0';
    const char *e = strrchr(buf, ')');
    return e && e[1] == ' ' && e[2] ? e[2] : '?';
}

void stk__pool_describe(const stk__pool_t *p, uint32_t i, char *buf, size_t cap)
{
    const char *st;
    switch (p->pid[i] > 0 ? proc_state(p->pid[i]) : '-') {
    case 'R': st = "running"; break;
    case 'S': st = "sleeping"; break;
    case 'D': st = "in uninterruptible I/O wait"; break;
    case 'T': st = "stopped"; break;
    case 't': st = "stopped by a debugger"; break;
    case 'Z': st = "a zombie"; break;
    case '-': st = "not running"; break;
    default: st = "state unknown"; break;
    }
    snprintf(buf, cap, "worker %u (pid %d, %s)", i, (int)p->pid[i], st);
}
