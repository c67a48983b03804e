/* SPDX-License-Identifier: MIT */
/* stoker-launch: torchrun for one node. Starts N ranks of a program with
 * RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT
 * (and STK_CUDA_DEVICE), prefixes their output with the rank (and keeps
 * per-rank logs on request), forwards SIGINT/SIGTERM, and when a rank
 * fails stops the others (SIGTERM, SIGKILL after a grace period) and says
 * which rank failed, how, and its last lines. Across nodes, one launcher
 * per node with --nnodes/--node-rank (mpirun and srun are the usual way). */
#define _GNU_SOURCE
#include "tool_args.h"
#include "tool_clock.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define TOOL "stoker-launch"
#define LINE_MAX_BYTES 65536
/* After the first failure, how long another rank's death may still turn
 * out to be the cause (its peers can notice it and exit first). */
#define SETTLE_S 1.0

typedef struct stream {
    int fd;              /* -1 once closed */
    FILE *out;           /* where prefixed lines go */
    char *buf;
    size_t len;
} stream_t;

typedef struct rank {
    int rank, local;
    pid_t pid;           /* 0 once reaped */
    pid_t pgid;          /* its process group (its first pid), kept */
    int status;          /* wait status */
    int failed, exited;
    double t_end;
    stream_t s[2];       /* stdout, stderr */
    FILE *log;
    char **tail;         /* ring of the last lines */
    size_t tail_n, tail_pos;
} rank_t;

typedef struct opts {
    int nproc, nnodes, node_rank, port, prefix, tail;
    double grace;
    const char *addr, *log_dir;
    char **argv;
} opts_t;

static int sig_pipe[2] = {-1, -1};
static volatile sig_atomic_t got_signal;

static void on_signal(int sig)
{
    int saved = errno;
    if (sig != SIGCHLD)
        got_signal = sig;
    unsigned char b = (unsigned char)sig;
    ssize_t w = write(sig_pipe[1], &b, 1);
    (void)w;
    errno = saved;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: " TOOL " [options] [--] PROGRAM [ARGS...]\n"
            "  --nproc-per-node N|gpu  ranks on this node (default 1; gpu: one per visible GPU)\n"
            "  --nnodes N              nodes in the job (default 1)\n"
            "  --node-rank R           this node's index, 0..nnodes-1 (default 0)\n"
            "  --master-addr ADDR      host of rank 0, where its store listens (default 127.0.0.1)\n"
            "  --master-port PORT      the store's port (default 29500; 0: pick a free one, one node only)\n"
            "  --log-dir DIR           also write rank N's output to DIR/rank<N>.log\n"
            "  --no-prefix             do not prefix output lines with [rank N]\n"
            "  --grace S               seconds from SIGTERM to SIGKILL when stopping ranks (default 10)\n"
            "  --tail N                lines of a failed rank's output to repeat (default 20)\n"
            "Each rank gets RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR,\n"
            "MASTER_PORT, STK_CUDA_DEVICE (its GPU: the local rank) and, unless set, OMP_NUM_THREADS\n"
            "(this node's CPUs / N). Exit status: 0 when every rank\n"
            "exits 0; else the first failed rank's status, or 128 + the signal that killed it.\n");
}

/* GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else the
 * driver's list (no CUDA library needed). */
static int count_gpus(void)
{
    const char *v = getenv("CUDA_VISIBLE_DEVICES");
    if (v) {
        int n = 0;
        for (const char *p = v; *p;) {
            size_t len = strcspn(p, ",");
            if (len > 0 && !(len == 2 && strncmp(p, "-1", 2) == 0))
                n++;
            else if (len == 2)
                break; /* "-1" hides every device after it */
            p += len;
            if (*p == ',')
                p++;
        }
        return n;
    }
    DIR *d = opendir("/proc/driver/nvidia/gpus");
    if (!d)
        return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

/* A port nobody listens on now (the ranks' store binds it right after). */
static int free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY)};
    socklen_t l = sizeof(a);
    int port = -1;
    if (bind(s, (struct sockaddr *)&a, sizeof(a)) == 0 && getsockname(s, (struct sockaddr *)&a, &l) == 0)
        port = ntohs(a.sin_port);
    close(s);
    return port;
}

static int is_opt(const char *a, const char *name)
{
    /* torchrun spells them both ways: --nproc-per-node, --nproc_per_node */
    if (strncmp(a, "--", 2) != 0)
        return 0;
    a += 2;
    for (; *a && *name; a++, name++) {
        char x = *a == '_' ? '-' : *a;
        if (x != *name)
            return 0;
    }
    return *name == '\0' && (*a == '\0' || *a == '=');
}

static const char *opt_value(int argc, char **argv, int *i)
{
    const char *eq = strchr(argv[*i], '=');
    if (eq)
        return eq + 1;
    if (*i + 1 >= argc) {
        fprintf(stderr, TOOL ": %s needs a value\n", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

static int parse(int argc, char **argv, opts_t *o)
{
    *o = (opts_t){.nproc = 1, .nnodes = 1, .port = 29500, .prefix = 1, .tail = 20, .grace = 10.0,
                  .addr = "127.0.0.1"};
    int i = 1;
    for (; i < argc; i++) {
        const char *a = argv[i], *v;
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        }
        if (a[0] != '-')
            break;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            exit(0);
        } else if (is_opt(a, "no-prefix")) {
            o->prefix = 0;
        } else if (is_opt(a, "nproc-per-node")) {
            if (!(v = opt_value(argc, argv, &i)))
                return -1;
            if (strcmp(v, "gpu") == 0) {
                o->nproc = count_gpus();
                if (o->nproc == 0) {
                    fprintf(stderr, TOOL ": --nproc-per-node gpu: no GPU is visible (CUDA_VISIBLE_DEVICES, "
                                    "/proc/driver/nvidia/gpus)\n");
                    return -1;
                }
            } else if (tool_parse_int(TOOL, "--nproc-per-node", v, 1, 4096, &o->nproc) < 0) {
                return -1;
            }
        } else if (is_opt(a, "nnodes")) {
            if (!(v = opt_value(argc, argv, &i)) || tool_parse_int(TOOL, "--nnodes", v, 1, 65536, &o->nnodes) < 0)
                return -1;
        } else if (is_opt(a, "node-rank")) {
            if (!(v = opt_value(argc, argv, &i)) ||
                tool_parse_int(TOOL, "--node-rank", v, 0, 65535, &o->node_rank) < 0)
                return -1;
        } else if (is_opt(a, "master-addr")) {
            if (!(v = opt_value(argc, argv, &i)))
                return -1;
            if (!*v) {
                fprintf(stderr, TOOL ": --master-addr is empty\n");
                return -1;
            }
            o->addr = v;
        } else if (is_opt(a, "master-port")) {
            if (!(v = opt_value(argc, argv, &i)) || tool_parse_int(TOOL, "--master-port", v, 0, 65535, &o->port) < 0)
                return -1;
        } else if (is_opt(a, "log-dir")) {
            if (!(v = opt_value(argc, argv, &i)))
                return -1;
            o->log_dir = v;
        } else if (is_opt(a, "grace")) {
            if (!(v = opt_value(argc, argv, &i)) || tool_parse_f64(TOOL, "--grace", v, 0, 3600, &o->grace) < 0)
                return -1;
        } else if (is_opt(a, "tail")) {
            if (!(v = opt_value(argc, argv, &i)) || tool_parse_int(TOOL, "--tail", v, 0, 10000, &o->tail) < 0)
                return -1;
        } else {
            fprintf(stderr, TOOL ": unknown option '%s'\n", a);
            usage(stderr);
            return -1;
        }
    }
    if (i >= argc) {
        fprintf(stderr, TOOL ": no program to run\n");
        usage(stderr);
        return -1;
    }
    if (o->node_rank >= o->nnodes) {
        fprintf(stderr, TOOL ": --node-rank %d is not below --nnodes %d\n", o->node_rank, o->nnodes);
        return -1;
    }
    if (o->port == 0) {
        if (o->nnodes > 1) {
            fprintf(stderr, TOOL ": --master-port 0 (pick a free port) works on one node only: the other nodes "
                            "could not know it\n");
            return -1;
        }
        if ((o->port = free_port()) < 0) {
            fprintf(stderr, TOOL ": cannot find a free port: %s\n", strerror(errno));
            return -1;
        }
    }
    if ((int64_t)o->nproc * o->nnodes > 1 << 20) {
        fprintf(stderr, TOOL ": %d nodes x %d ranks is too many\n", o->nnodes, o->nproc);
        return -1;
    }
    o->argv = argv + i;
    return 0;
}

/* -------------------------------------------------------------- output */

static void keep_tail(rank_t *r, const char *line, size_t len, int tail)
{
    if (tail <= 0)
        return;
    char *copy = strndup(line, len);
    if (!copy)
        return;
    if (r->tail_n < (size_t)tail) {
        r->tail[r->tail_n++] = copy;
        return;
    }
    free(r->tail[r->tail_pos]);
    r->tail[r->tail_pos] = copy;
    r->tail_pos = (r->tail_pos + 1) % (size_t)tail;
}

static void emit_line(const opts_t *o, rank_t *r, stream_t *s, const char *line, size_t len)
{
    if (o->prefix)
        fprintf(s->out, "[rank %d] %.*s\n", r->rank, (int)len, line);
    else
        fprintf(s->out, "%.*s\n", (int)len, line);
    fflush(s->out);
    if (r->log) {
        fprintf(r->log, "%.*s\n", (int)len, line);
        fflush(r->log);
    }
    keep_tail(r, line, len, o->tail);
}

/* Reads what is there; emits whole lines (and over-long pieces). Returns 0
 * at EOF. */
static int pump(const opts_t *o, rank_t *r, stream_t *s)
{
    if (!s->buf && !(s->buf = malloc(LINE_MAX_BYTES)))
        return 0;
    ssize_t n = read(s->fd, s->buf + s->len, LINE_MAX_BYTES - s->len);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return 1;
    if (n <= 0) {
        if (s->len)
            emit_line(o, r, s, s->buf, s->len);
        s->len = 0;
        close(s->fd);
        s->fd = -1;
        return 0;
    }
    s->len += (size_t)n;
    size_t start = 0;
    for (size_t i = 0; i < s->len; i++) {
        if (s->buf[i] == '\n') {
            emit_line(o, r, s, s->buf + start, i - start);
            start = i + 1;
        }
    }
    if (start == 0 && s->len == LINE_MAX_BYTES) {
        emit_line(o, r, s, s->buf, s->len);
        start = s->len;
    }
    memmove(s->buf, s->buf + start, s->len - start);
    s->len -= start;
    return 1;
}

/* --------------------------------------------------------------- ranks */

static int start_rank(const opts_t *o, rank_t *r, int world)
{
    int out[2], err[2];
    if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
        fprintf(stderr, TOOL ": pipe: %s\n", strerror(errno));
        return -1;
    }
    /* A stop may come before the child has its default handlers back: held
     * until then, it takes effect instead of running our handler there. */
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &old);
    pid_t pid = fork();
    if (pid < 0) {
        sigprocmask(SIG_SETMASK, &old, NULL);
        fprintf(stderr, TOOL ": fork: %s\n", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        /* Its own process group: stopping a rank reaches its workers too. */
        setpgid(0, 0);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        signal(SIGCHLD, SIG_DFL);
        signal(SIGPIPE, SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(out[1], STDOUT_FILENO);
        dup2(err[1], STDERR_FILENO);
        char v[32];
        snprintf(v, sizeof(v), "%d", r->rank);
        setenv("RANK", v, 1);
        snprintf(v, sizeof(v), "%d", r->local);
        setenv("LOCAL_RANK", v, 1);
        setenv("STK_CUDA_DEVICE", v, 1);
        snprintf(v, sizeof(v), "%d", world);
        setenv("WORLD_SIZE", v, 1);
        snprintf(v, sizeof(v), "%d", o->nproc);
        setenv("LOCAL_WORLD_SIZE", v, 1);
        snprintf(v, sizeof(v), "%d", o->node_rank);
        setenv("GROUP_RANK", v, 1);
        setenv("MASTER_ADDR", o->addr, 1);
        /* Ranks share the node's CPUs: each gets its part for its threads
         * (OpenMP, oneDNN) unless told otherwise, as torchrun does. */
        if (!getenv("OMP_NUM_THREADS")) {
            cpu_set_t cs;
            int ncpu = sched_getaffinity(0, sizeof cs, &cs) == 0 ? CPU_COUNT(&cs) : 1;
            snprintf(v, sizeof(v), "%d", ncpu / o->nproc > 0 ? ncpu / o->nproc : 1);
            setenv("OMP_NUM_THREADS", v, 1);
        }
        snprintf(v, sizeof(v), "%d", o->port);
        setenv("MASTER_PORT", v, 1);
        execvp(o->argv[0], o->argv);
        fprintf(stderr, TOOL ": cannot run '%s': %s\n", o->argv[0], strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid); /* also here: no race with an early kill */
    sigprocmask(SIG_SETMASK, &old, NULL);
    r->pgid = pid;
    close(out[1]);
    close(err[1]);
    r->pid = pid;
    r->s[0].fd = out[0];
    r->s[1].fd = err[0];
    fcntl(out[0], F_SETFL, O_NONBLOCK);
    fcntl(err[0], F_SETFL, O_NONBLOCK);
    return 0;
}

static void describe(const rank_t *r, char *buf, size_t cap)
{
    if (WIFSIGNALED(r->status)) {
        int sig = WTERMSIG(r->status);
        snprintf(buf, cap, "was killed by signal %d (SIG%s)%s", sig, sigabbrev_np(sig) ? sigabbrev_np(sig) : "?",
                 WCOREDUMP(r->status) ? ", core dumped" : "");
    } else {
        snprintf(buf, cap, "exited with status %d", WEXITSTATUS(r->status));
    }
}

static void signal_all(rank_t *ranks, int n, int sig)
{
    for (int i = 0; i < n; i++) {
        if (ranks[i].pid > 0) {
            killpg(ranks[i].pgid, sig);
            /* A stopped rank gets the signal only once it runs again. */
            if (sig == SIGTERM)
                killpg(ranks[i].pgid, SIGCONT);
        }
    }
}

static void print_tail(const opts_t *o, const rank_t *r)
{
    if (!r->tail_n)
        return;
    fprintf(stderr, TOOL ": last %zu line%s of rank %d:\n", r->tail_n, r->tail_n == 1 ? "" : "s", r->rank);
    for (size_t k = 0; k < r->tail_n; k++) {
        size_t idx = r->tail_n < (size_t)o->tail ? k : (r->tail_pos + k) % (size_t)o->tail;
        fprintf(stderr, "  | %s\n", r->tail[idx]);
    }
}

int main(int argc, char **argv)
{
    opts_t o;
    if (parse(argc, argv, &o) < 0)
        return 2;
    int n = o.nproc, world = o.nproc * o.nnodes;
    rank_t *ranks = calloc((size_t)n, sizeof(*ranks));
    if (!ranks)
        return 1;
    if (o.log_dir && mkdir(o.log_dir, 0777) < 0 && errno != EEXIST) {
        fprintf(stderr, TOOL ": --log-dir %s: %s\n", o.log_dir, strerror(errno));
        return 1;
    }
    if (pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
        return 1;
    /* Orphaned grandchildren (a rank's workers) come back to us, so that
     * none is left behind. */
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGCHLD, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    for (int i = 0; i < n; i++) {
        rank_t *r = &ranks[i];
        r->local = i;
        r->rank = o.node_rank * o.nproc + i;
        r->s[0] = (stream_t){.fd = -1, .out = stdout};
        r->s[1] = (stream_t){.fd = -1, .out = stderr};
        if (o.tail > 0 && !(r->tail = calloc((size_t)o.tail, sizeof(char *))))
            return 1;
        if (o.log_dir) {
            char path[4096];
            snprintf(path, sizeof(path), "%s/rank%d.log", o.log_dir, r->rank);
            if (!(r->log = fopen(path, "w"))) {
                fprintf(stderr, TOOL ": %s: %s\n", path, strerror(errno));
                return 1;
            }
        }
    }
    int rc = 0, live = 0;
    for (int i = 0; i < n; i++) {
        if (start_rank(&o, &ranks[i], world) < 0) {
            rc = 1;
            break;
        }
        live++;
    }

    int stopping = rc != 0, killed = 0, first_fail = -1, reported = 0;
    double settle_until = 0;
    double kill_at = stopping ? tool_now_s() + o.grace : 0;
    int forwarded = 0;
    if (stopping)
        signal_all(ranks, n, SIGTERM);
    struct pollfd *pf = calloc((size_t)(2 * n + 1), sizeof(*pf));
    int (*who)[2] = calloc((size_t)(2 * n + 1), sizeof(*who));
    if (!pf || !who)
        return 1;
    for (;;) {
        int open_streams = 0;
        for (int i = 0; i < n; i++)
            open_streams += (ranks[i].s[0].fd >= 0) + (ranks[i].s[1].fd >= 0);
        if (live == 0 && open_streams == 0)
            break;
        int np = 0;
        pf[np++] = (struct pollfd){.fd = sig_pipe[0], .events = POLLIN};
        for (int i = 0; i < n; i++)
            for (int k = 0; k < 2; k++)
                if (ranks[i].s[k].fd >= 0) {
                    who[np][0] = i;
                    who[np][1] = k;
                    pf[np++] = (struct pollfd){.fd = ranks[i].s[k].fd, .events = POLLIN};
                }
        int ms = -1;
        if (stopping && !killed) {
            double left = kill_at - tool_now_s();
            ms = left > 0 ? (int)(left * 1000) + 1 : 0;
        }
        if (first_fail >= 0 && !reported) {
            double left = settle_until - tool_now_s();
            int sm = left > 0 ? (int)(left * 1000) + 1 : 0;
            ms = ms < 0 || sm < ms ? sm : ms;
        }
        /* A rank's workers may hold its pipes open after it died: once
         * every rank is gone, give them a moment, not forever. */
        if (live == 0)
            ms = 2000;
        int pr = poll(pf, (nfds_t)np, ms);
        if (pr == 0 && live == 0) {
            for (int i = 0; i < n; i++) {
                if (ranks[i].pgid > 0)
                    killpg(ranks[i].pgid, SIGKILL);
                for (int k = 0; k < 2; k++)
                    if (ranks[i].s[k].fd >= 0) {
                        close(ranks[i].s[k].fd);
                        ranks[i].s[k].fd = -1;
                    }
            }
            continue;
        }
        for (int j = 1; j < np && pr > 0; j++)
            if (pf[j].revents)
                pump(&o, &ranks[who[j][0]], &ranks[who[j][0]].s[who[j][1]]);
        if (pf[0].revents) {
            unsigned char b[64];
            while (read(sig_pipe[0], b, sizeof(b)) > 0) {
            }
        }
        if (got_signal && !forwarded) {
            /* Forward the first SIGINT/SIGTERM; a second one kills. */
            forwarded = got_signal;
            got_signal = 0;
            fprintf(stderr, TOOL ": got SIG%s, passing it to the ranks\n", sigabbrev_np(forwarded));
            signal_all(ranks, n, forwarded == SIGHUP ? SIGTERM : forwarded);
            if (forwarded != SIGINT)
                signal_all(ranks, n, SIGCONT);
            if (!stopping) {
                stopping = 1;
                kill_at = tool_now_s() + o.grace;
            }
        } else if (got_signal && forwarded) {
            got_signal = 0;
            signal_all(ranks, n, SIGKILL);
            killed = 1;
        }
        /* Reap: ranks, and orphans handed to us as subreaper. */
        for (;;) {
            int st;
            pid_t p = waitpid(-1, &st, WNOHANG);
            if (p <= 0)
                break;
            for (int i = 0; i < n; i++) {
                rank_t *r = &ranks[i];
                if (r->pid != p)
                    continue;
                r->pid = 0;
                r->status = st;
                r->exited = 1;
                r->t_end = tool_now_s();
                live--;
                /* Its workers (same process group) go with it. */
                killpg(r->pgid, SIGKILL);
                if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
                    continue;
                r->failed = 1;
                if (first_fail < 0 && !stopping) {
                    first_fail = i;
                    settle_until = r->t_end + SETTLE_S;
                    stopping = 1;
                    kill_at = r->t_end + o.grace;
                    signal_all(ranks, n, SIGTERM);
                } else if (first_fail >= 0 && !reported && r->t_end <= settle_until && WIFSIGNALED(st) &&
                           WTERMSIG(st) != SIGTERM && !WIFSIGNALED(ranks[first_fail].status)) {
                    /* A peer that saw this rank die may be reaped first;
                     * a death by a signal nobody here sent is the cause. */
                    first_fail = i;
                }
            }
        }
        if (first_fail >= 0 && !reported && (live == 0 || tool_now_s() >= settle_until)) {
            reported = 1;
            rank_t *r = &ranks[first_fail];
            char how[128];
            describe(r, how, sizeof(how));
            if (live)
                fprintf(stderr, TOOL ": rank %d (local %d) %s; stopping the other ranks (%d still running)\n",
                        r->rank, r->local, how, live);
            else
                fprintf(stderr, TOOL ": rank %d (local %d) %s; the other ranks were stopped\n", r->rank, r->local,
                        how);
        }
        if (stopping && !killed && live > 0 && tool_now_s() >= kill_at) {
            fprintf(stderr, TOOL ": %d rank%s still running after %.0f s: SIGKILL\n", live, live == 1 ? "" : "s",
                    o.grace);
            signal_all(ranks, n, SIGKILL);
            killed = 1;
        }
    }
    /* Leftover orphans (already killed with their groups) are reaped. */
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }

    if (first_fail >= 0) {
        rank_t *f = &ranks[first_fail];
        print_tail(&o, f);
        for (int i = 0; i < n; i++) {
            if (i == first_fail || !ranks[i].exited)
                continue;
            char how[128];
            describe(&ranks[i], how, sizeof(how));
            fprintf(stderr, TOOL ": rank %d %s\n", ranks[i].rank, how);
        }
        char how[128];
        describe(f, how, sizeof(how));
        fprintf(stderr, TOOL ": failed: rank %d %s\n", f->rank, how);
        rc = WIFSIGNALED(f->status) ? 128 + WTERMSIG(f->status) : WEXITSTATUS(f->status);
    } else if (forwarded) {
        rc = 128 + forwarded;
    } else if (rc == 0) {
        for (int i = 0; i < n; i++)
            if (ranks[i].failed) {
                rc = 1;
                break;
            }
    }
    for (int i = 0; i < n; i++) {
        if (ranks[i].log)
            fclose(ranks[i].log);
        for (size_t k = 0; k < ranks[i].tail_n; k++)
            free(ranks[i].tail[k]);
        free(ranks[i].tail);
        free(ranks[i].s[0].buf);
        free(ranks[i].s[1].buf);
    }
    free(ranks);
    free(pf);
    free(who);
    return rc;
}
