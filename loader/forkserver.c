/* SPDX-License-Identifier: MIT */
/* The fork server: a small process forked from the program once, early
 * (stk_loader_forkserver_start, or the first loader), that forks every
 * worker on request.
 *
 * Why a fork server and not spawn of a helper binary: a dataset is a table
 * of C functions in the user's program; only a fork of that program image
 * can call them (an exec'd helper cannot). Why not fork the caller
 * directly: by the time a loader is made, the caller may hold a CUDA
 * context, other threads, big heaps and open files, and a forked worker
 * would inherit them all. The server is forked while the program is still
 * clean, closes every descriptor but its own socket, and stays
 * single-threaded, so workers start from that clean image; what a worker
 * needs (dataset blob, arena) reaches it as memfds over SCM_RIGHTS.
 *
 * Workers are the server's children: it reaps them and reports each exit
 * (pid, wait status) to the main process, which learns of a death first
 * from EOF on the worker's socket. The server exits, killing its workers,
 * when the main process closes its socket or dies; should the server
 * itself be killed, its workers die with it (PDEATHSIG), and main, which
 * reaps the server, says so for each of them. */
#define _GNU_SOURCE
#include "loader_internal.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

enum { MSG_SPAWN = 1, MSG_SPAWNED = 2, MSG_EXITED = 3 };

typedef struct srv_req {
    int32_t type;
    stk__worker_spec_t spec;
} srv_req_t;

typedef struct srv_rep {
    int32_t type;
    int32_t err;     /* SPAWNED: 0 or -errno */
    int32_t pid;
    int32_t status;  /* EXITED: wait status */
} srv_rep_t;

typedef struct exit_rec {
    pid_t pid;
    int status;
    char *lost;      /* lost with the server: how the server ended */
} exit_rec_t;

static pthread_mutex_t fs_lock = PTHREAD_MUTEX_INITIALIZER;
static int fs_fd = -1;         /* main's end of the control socket */
static pid_t fs_pid;
static exit_rec_t *fs_exits;   /* exits reported but not yet asked for */
static size_t fs_nexits, fs_capexits;
static pid_t *fs_kids;         /* forked by the running server, not yet reported gone */
static size_t fs_nkids, fs_capkids;

/* ---- Server side ------------------------------------------------- */

#define SRV_MAX_CHILDREN 4096

static void srv_send(int fd, const srv_rep_t *r)
{
    ssize_t k;
    do {
        k = send(fd, r, sizeof *r, MSG_NOSIGNAL);
    } while (k < 0 && errno == EINTR);
}

static void srv_close_others(int keep)
{
    /* Everything the program had open at fork time stays out of workers. */
    if (keep > 3)
        close_range(3, (unsigned)keep - 1, 0);
    close_range((unsigned)keep + 1, ~0u, 0);
}

static __attribute__((noreturn)) void srv_main(int ctrl)
{
    pid_t kids[SRV_MAX_CHILDREN];
    size_t nkids = 0;
    sigset_t chld, old;

    srv_close_others(ctrl);
    /* Ctrl-C goes to the whole process group; the main process decides
     * what it means, so the server and its workers ignore it. */
    signal(SIGINT, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, &old);
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0)
        _exit(1);

    for (;;) {
        struct pollfd p[2] = {{.fd = ctrl, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[1].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
            }
            int st;
            pid_t w;
            while ((w = waitpid(-1, &st, WNOHANG)) > 0) {
                for (size_t i = 0; i < nkids; i++)
                    if (kids[i] == w) {
                        kids[i] = kids[--nkids];
                        break;
                    }
                srv_rep_t r = {.type = MSG_EXITED, .pid = w, .status = st};
                srv_send(ctrl, &r);
            }
        }
        if (!p[0].revents)
            continue;
        static srv_req_t req;
        int fds[4] = {-1, -1, -1, -1};
        char cbuf[CMSG_SPACE(sizeof fds)];
        struct iovec iov = {.iov_base = &req, .iov_len = sizeof req};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                            .msg_controllen = sizeof cbuf};
        ssize_t k = recvmsg(ctrl, &mh, MSG_CMSG_CLOEXEC);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break; /* main process gone or closed us */
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                size_t nfd = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                memcpy(fds, CMSG_DATA(c), (nfd < 4 ? nfd : 4) * sizeof(int));
            }
        srv_rep_t r = {.type = MSG_SPAWNED};
        if (k != (ssize_t)sizeof req || req.type != MSG_SPAWN || fds[0] < 0 || fds[1] < 0 ||
            fds[2] < 0 || fds[3] < 0 || nkids == SRV_MAX_CHILDREN) {
            r.err = -EPROTO;
        } else {
            pid_t server = getpid();
            pid_t pid = fork();
            if (pid == 0) {
                close(ctrl);
                close(sfd);
                sigprocmask(SIG_SETMASK, &old, NULL);
                signal(SIGPIPE, SIG_DFL);
                /* Dies with the server (single-threaded, so no thread-exit
                 * surprise); the socket EOF covers the rest. */
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (getppid() != server)
                    _exit(1);
                stk__worker_main(&req.spec, fds[0], fds[1], fds[2], fds[3]);
            }
            if (pid < 0)
                r.err = -errno;
            else
                kids[nkids++] = pid;
            r.pid = pid;
        }
        for (int i = 0; i < 4; i++)
            if (fds[i] >= 0)
                close(fds[i]);
        srv_send(ctrl, &r);
    }
    for (size_t i = 0; i < nkids; i++)
        kill(kids[i], SIGKILL);
    while (waitpid(-1, NULL, 0) > 0 || errno == EINTR) {
    }
    _exit(0);
}

/* ---- Main-process side ------------------------------------------ */

/* libcuda mapped means CUDA is (or is about to be) initialised here. */
static int process_has_cuda(void)
{
    FILE *f = fopen("/proc/self/maps", "re");
    char line[512];
    int found = 0;
    if (!f)
        return 0;
    while (!found && fgets(line, sizeof line, f))
        found = strstr(line, "libcuda.so") != NULL;
    fclose(f);
    return found;
}

/* A child forked by the program (not by us) must not talk on its
 * parent's control socket: it starts its own server when it needs one. */
static void forget_all(void)
{
    for (size_t i = 0; i < fs_nexits; i++)
        free(fs_exits[i].lost);
    free(fs_exits);
    fs_exits = NULL;
    fs_nexits = fs_capexits = 0;
    free(fs_kids);
    fs_kids = NULL;
    fs_nkids = fs_capkids = 0;
}

static void atfork_child(void)
{
    if (fs_fd >= 0)
        close(fs_fd);
    fs_fd = -1;
    fs_pid = 0;
    forget_all();
    pthread_mutex_init(&fs_lock, NULL);
}

static void stop_locked(void);

/* A program that returns from main (or calls exit) with the server
 * running, on an error path say, reaps it here: otherwise the server
 * outlives it briefly and is left to the program's parent (or a
 * subreaper) to reap. Skipped when another thread holds the lock. */
static void stop_at_exit(void)
{
    if (pthread_mutex_trylock(&fs_lock) != 0)
        return;
    stop_locked();
    pthread_mutex_unlock(&fs_lock);
}

static pthread_once_t fs_once = PTHREAD_ONCE_INIT;
static void register_atfork(void)
{
    pthread_atfork(NULL, NULL, atfork_child);
    atexit(stop_at_exit);
}

static int start_locked(void)
{
    int sv[2];
    if (fs_fd >= 0)
        return 0;
    if (process_has_cuda())
        stk__log(STK_LOG_WARN, "fork server started after CUDA was loaded in this process; call "
                 "stk_loader_forkserver_start() at the start of main so workers come from a "
                 "clean process");
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
        return stk__error(-errno, "fork server: socketpair");
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(sv[0]);
        close(sv[1]);
        return stk__error(-e, "fork server: fork");
    }
    if (pid == 0) {
        close(sv[0]);
        srv_main(sv[1]);
    }
    close(sv[1]);
    fs_fd = sv[0];
    fs_pid = pid;
    return 0;
}

int stk_loader_forkserver_start(void)
{
    pthread_once(&fs_once, register_atfork);
    pthread_mutex_lock(&fs_lock);
    int rc = start_locked();
    pthread_mutex_unlock(&fs_lock);
    return rc;
}

static void stop_locked(void)
{
    if (fs_fd < 0)
        return;
    close(fs_fd);
    fs_fd = -1;
    /* EOF makes the server kill its workers and exit; reap it. */
    while (waitpid(fs_pid, NULL, 0) < 0 && errno == EINTR) {
    }
    fs_pid = 0;
    forget_all();
}

void stk_loader_forkserver_stop(void)
{
    pthread_mutex_lock(&fs_lock);
    stop_locked();
    pthread_mutex_unlock(&fs_lock);
}

static void note_exit(pid_t pid, int status, char *lost)
{
    for (size_t i = 0; i < fs_nkids; i++)
        if (fs_kids[i] == pid) {
            fs_kids[i] = fs_kids[--fs_nkids];
            break;
        }
    if (fs_nexits == fs_capexits) {
        size_t cap = fs_capexits ? fs_capexits * 2 : 16;
        exit_rec_t *n = realloc(fs_exits, cap * sizeof *n);
        if (!n) {
            free(lost);
            return;
        }
        fs_exits = n;
        fs_capexits = cap;
    }
    fs_exits[fs_nexits].pid = pid;
    fs_exits[fs_nexits].status = status;
    fs_exits[fs_nexits].lost = lost;
    fs_nexits++;
}

static void note_kid(pid_t pid)
{
    if (fs_nkids == fs_capkids) {
        size_t cap = fs_capkids ? fs_capkids * 2 : 16;
        pid_t *n = realloc(fs_kids, cap * sizeof *n);
        if (!n)
            return; /* its end is then reported without the server's */
        fs_kids = n;
        fs_capkids = cap;
    }
    fs_kids[fs_nkids++] = pid;
}

/* The server closed its socket: it is dead (killed: it exits only when
 * main closes its end). Reaps it and records, for each worker it had,
 * that the worker went with it and how the server ended. */
static void server_died(void)
{
    char how[160];
    int st = 0;
    pid_t w = 0;
    close(fs_fd);
    fs_fd = -1;
    /* Its socket closes as it exits: a zombie within moments. */
    for (int i = 0; i < 2000 && (w = waitpid(fs_pid, &st, WNOHANG)) == 0; i++)
        usleep(1000);
    if (w == 0) {
        kill(fs_pid, SIGKILL);
        w = waitpid(fs_pid, &st, 0);
    }
    if (w != fs_pid)
        snprintf(how, sizeof how, "the fork server (pid %d) is gone (reaped elsewhere)",
                 (int)fs_pid);
    else if (WIFSIGNALED(st))
        snprintf(how, sizeof how, "the fork server (pid %d) was killed by signal %d (SIG%s), and "
                 "its workers with it", (int)fs_pid, WTERMSIG(st),
                 sigabbrev_np(WTERMSIG(st)) ? sigabbrev_np(WTERMSIG(st)) : "?");
    else
        snprintf(how, sizeof how, "the fork server (pid %d) exited with status %d, and its "
                 "workers with it", (int)fs_pid, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    while (fs_nkids)
        note_exit(fs_kids[fs_nkids - 1], 0, strdup(how));
    fs_pid = 0;
}

/* Reads one message, waiting up to timeout_ms; 1 when one was read,
 * 0 on timeout, negative on a dead server. */
static int read_one(srv_rep_t *r, int timeout_ms)
{
    struct pollfd p = {.fd = fs_fd, .events = POLLIN};
    int n = poll(&p, 1, timeout_ms);
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    if (n == 0)
        return 0;
    ssize_t k = recv(fs_fd, r, sizeof *r, 0);
    if (k < 0 && errno == EINTR)
        return 0;
    if (k != (ssize_t)sizeof *r) {
        server_died();
        return -EPIPE;
    }
    if (r->type == MSG_EXITED)
        note_exit(r->pid, r->status, NULL);
    return 1;
}

static int send_spawn(const stk__worker_spec_t *spec, const int fds[4])
{
    static srv_req_t req;
    char cbuf[CMSG_SPACE(4 * sizeof(int))];
    memset(&req, 0, sizeof req);
    req.type = MSG_SPAWN;
    req.spec = *spec;
    memset(cbuf, 0, sizeof cbuf);
    struct iovec iov = {.iov_base = &req, .iov_len = sizeof req};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                        .msg_controllen = sizeof cbuf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(4 * sizeof(int));
    memcpy(CMSG_DATA(c), fds, 4 * sizeof(int));
    ssize_t k;
    do {
        k = sendmsg(fs_fd, &mh, MSG_NOSIGNAL);
    } while (k < 0 && errno == EINTR);
    return k < 0 ? -errno : 0;
}

int stk__forkserver_spawn_send(const stk__worker_spec_t *spec, uint32_t n, const uint32_t *ids,
                               const uint64_t *seeds, const int *socks, int arena_fd, int args_fd,
                               int wake_fd, uint32_t *sent)
{
    int rc = 0;
    *sent = 0;
    pthread_once(&fs_once, register_atfork);
    pthread_mutex_lock(&fs_lock);
    stk__worker_spec_t *one = malloc(sizeof *one);
    if (!one)
        return stk__error(-ENOMEM, "fork server: out of memory");
    *one = *spec;
    for (int attempt = 0; attempt < 2; attempt++) {
        rc = start_locked();
        if (rc)
            break;
        /* Every request first, then every answer: the server forks the
         * workers back to back, not one per round trip. */
        uint32_t k = 0;
        for (; k < n; k++) {
            int fds[4] = {socks[k], arena_fd, args_fd, wake_fd};
            one->worker = ids[k];
            one->seed = seeds[k];
            rc = send_spawn(one, fds);
            if (rc)
                break;
        }
        if (rc && k == 0 && attempt == 0) {
            /* The server died (someone killed it): start a new one. */
            server_died();
            continue;
        }
        if (rc)
            rc = stk__error(rc, "fork server (pid %d): send", (int)fs_pid);
        *sent = k;
        break;
    }
    free(one);
    return rc;
}

int stk__forkserver_spawn_wait(uint32_t sent, const uint32_t *ids, pid_t *pids)
{
    int rc = 0;
    for (uint32_t i = 0; i < sent; i++)
        pids[i] = 0;
    for (uint32_t got = 0; got < sent;) {
        srv_rep_t r;
        int k = read_one(&r, 10000);
        if (k <= 0) {
            rc = k ? stk__error(k, "fork server died while starting workers")
                   : stk__error(-ETIMEDOUT, "fork server (pid %d) did not answer in 10 s",
                                (int)fs_pid);
            break;
        }
        if (r.type != MSG_SPAWNED)
            continue;
        if (r.err && !rc)
            rc = stk__error(r.err, "fork server: fork of worker %u failed", ids[got]);
        if (!r.err)
            note_kid(r.pid);
        pids[got++] = r.err ? 0 : r.pid;
    }
    pthread_mutex_unlock(&fs_lock);
    return rc;
}

int stk__forkserver_wait(pid_t pid, int timeout_ms, int *wstatus)
{
    uint64_t deadline = stk__now_ns() + (uint64_t)timeout_ms * 1000000ull;
    int rc = -ETIMEDOUT;
    pthread_mutex_lock(&fs_lock);
    for (;;) {
        for (size_t i = 0; i < fs_nexits; i++)
            if (fs_exits[i].pid == pid) {
                *wstatus = fs_exits[i].status;
                rc = fs_exits[i].lost ? stk__error(-ESRCH, "%s", fs_exits[i].lost) : 0;
                goto out;
            }
        if (fs_fd < 0) {
            rc = stk__error(-ESRCH, "no fork server reports its end");
            break;
        }
        /* What the server sent is read even when the time is up: the
         * caller kills a pid it hears nothing of. */
        uint64_t now = stk__now_ns();
        int left = now >= deadline ? 0 : (int)((deadline - now) / 1000000ull) + 1;
        srv_rep_t r;
        int got = read_one(&r, left);
        if (got < 0 && fs_fd >= 0) {
            rc = stk__error(got, "fork server: %s", strerror(-got));
            break;
        }
        if (got == 0 && left == 0)
            break;
    }
out:
    pthread_mutex_unlock(&fs_lock);
    return rc;
}

void stk__forkserver_forget(pid_t pid)
{
    pthread_mutex_lock(&fs_lock);
    for (size_t i = 0; i < fs_nexits; i++)
        if (fs_exits[i].pid == pid) {
            free(fs_exits[i].lost);
            fs_exits[i] = fs_exits[--fs_nexits];
            break;
        }
    pthread_mutex_unlock(&fs_lock);
}

pid_t stk__forkserver_pid(void)
{
    pthread_mutex_lock(&fs_lock);
    pid_t pid = fs_fd >= 0 ? fs_pid : 0;
    pthread_mutex_unlock(&fs_lock);
    return pid;
}
