/* SPDX-License-Identifier: MIT */
/* The loader's workers, seen from the main process: the task queue and
 * the wake-ups around it, starting workers through the fork server,
 * reaping them, and what happens when one dies or hangs. */
#define _GNU_SOURCE
#include "loader_main.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- Workers ----------------------------------------------------- */

/* Wakes worker i if it sleeps in recv() on its socket. Should the socket
 * be full, wake-ups are queued already; should the worker be gone, the
 * wait loop hears of it (end of file). */
static int wake(stk_loader_t *l, uint32_t i)
{
    if (!atomic_load_explicit(&wctl(l, i)->sleeping, memory_order_relaxed))
        return 0;
    char t = 1;
    ssize_t k;
    do {
        k = send(l->w[i].sock, &t, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (k < 0 && errno == EINTR);
    return 1;
}

int stk__ld_send_task(stk_loader_t *l, uint32_t s)
{
    slot_info_t *si = &l->slots[s];
    stk__queue_t *q = queue(l);
    si->gen = ++l->last_gen;
    si->worker = 0;
    uint64_t tail = atomic_load_explicit(&q->tail, memory_order_relaxed);
    si->qpos = tail;
    if (tail - atomic_load_explicit(&q->head, memory_order_acquire) >= l->spec.ring_cap)
        return stk__ld_fail(l, STK_ESTATE, "loader: %u tasks queued already", l->spec.ring_cap);
    stk__task_t *t = &q->ring[tail % l->spec.ring_cap];
    atomic_store_explicit(&t->slot, s, memory_order_relaxed);
    atomic_store_explicit(&t->epoch, l->epoch, memory_order_relaxed);
    atomic_store_explicit(&t->batch, si->batch, memory_order_relaxed);
    atomic_store_explicit(&t->gen, si->gen, memory_order_relaxed);
    atomic_store_explicit(&q->tail, tail + 1, memory_order_release);
    return 0;
}

/* Wakes as many sleeping workers as tasks wait unclaimed, starting after
 * the one woken last, so that a stopped worker holding a wake-up does
 * not take every one. */
void stk__ld_wake_workers(stk_loader_t *l)
{
    stk__queue_t *q = queue(l);
    /* Pairs with the worker's fence between setting sleeping and looking
     * at tail again: one of the two sees the other. */
    atomic_thread_fence(memory_order_seq_cst);
    uint64_t waiting = atomic_load_explicit(&q->tail, memory_order_relaxed) -
                       atomic_load_explicit(&q->head, memory_order_relaxed);
    for (uint32_t k = 0; k < l->nworkers && waiting; k++) {
        uint32_t i = (l->wake_next + k) % l->nworkers;
        if (l->w[i].sock >= 0 && wake(l, i)) {
            waiting--;
            l->wake_next = i + 1;
        }
    }
}

/* Marks slot s done if a worker says so in shared memory. */
int stk__ld_collect(stk_loader_t *l, uint32_t s)
{
    slot_info_t *si = &l->slots[s];
    if (si->state != SLOT_ISSUED)
        return 0;
    const stk__slot_hdr_t *h = (const stk__slot_hdr_t *)slot_mem(l, s);
    if (atomic_load_explicit(&h->done_gen, memory_order_acquire) != si->gen)
        return 0;
    si->state = SLOT_DONE;
    si->status = 0;
    return 1;
}

void stk__ld_collect_all(stk_loader_t *l)
{
    for (uint32_t s = 0; s < LY(l)->nslots; s++)
        stk__ld_collect(l, s);
}

/* Tells the workers that main sleeps waiting for the task gen (any with
 * STK__WAIT_ANY; 0: no longer). */
void stk__ld_set_main_waits(stk_loader_t *l, uint64_t gen)
{
    atomic_store_explicit(&queue(l)->main_waits, gen, memory_order_relaxed);
    if (gen)
        atomic_thread_fence(memory_order_seq_cst); /* pairs with the worker's */
}

/* The live worker filling (or taking) task gen, or UINT32_MAX. */
static uint32_t holder_of(const stk_loader_t *l, uint64_t gen)
{
    for (uint32_t i = 0; i < l->nworkers; i++)
        if (l->w[i].pid > 0 && l->w[i].sock >= 0 &&
            atomic_load_explicit(&wctl(l, i)->busy_gen, memory_order_acquire) == gen)
            return i;
    return UINT32_MAX;
}

uint64_t stk__ld_worker_seed(const stk_loader_t *l, uint32_t i)
{
    return stk_rng_mix(l->cfg.seed, 0x776f726b00000000ull + i);
}

/* Notes, per worker, when its progress count last moved. */
void stk__ld_note_progress(stk_loader_t *l, uint64_t now)
{
    for (uint32_t i = 0; i < l->nworkers; i++) {
        uint64_t p = atomic_load_explicit(&wctl(l, i)->progress, memory_order_relaxed);
        if (p != l->w[i].seen_progress) {
            l->w[i].seen_progress = p;
            l->w[i].seen_ns = now;
        }
    }
}

/* After a timeout on slot s: the worker to blame, or UINT32_MAX when none
 * is stuck. The one holding the batch (*holds = 1); else, while the
 * batch waits in the queue, the worker that has not moved for longest,
 * if that is the whole timeout (stopped or hung on another batch, or
 * before it could take one). */
uint32_t stk__ld_hung_worker(stk_loader_t *l, uint32_t s, uint64_t now, int *holds)
{
    uint32_t h = holder_of(l, l->slots[s].gen);
    *holds = h != UINT32_MAX;
    if (h != UINT32_MAX)
        return h;
    if (l->slots[s].qpos < atomic_load(&queue(l)->head))
        return UINT32_MAX; /* just taken, or done: look again */
    stk__ld_note_progress(l, now);
    uint32_t best = UINT32_MAX;
    for (uint32_t i = 0; i < l->nworkers; i++)
        if (l->w[i].pid > 0 && l->w[i].sock >= 0 &&
            (best == UINT32_MAX || l->w[i].seen_ns < l->w[best].seen_ns))
            best = i;
    if (best != UINT32_MAX && now - l->w[best].seen_ns < (uint64_t)l->cfg.timeout_ms * 1000000ull)
        best = UINT32_MAX;
    return best;
}

/* Gives workers ids[0..n) their socket pairs (main's end in l->w). Tasks
 * may be queued on them before the workers exist. */
static int make_sockets(stk_loader_t *l, uint32_t n, const uint32_t *ids, int *theirs)
{
    for (uint32_t i = 0; i < n; i++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
            int rc = stk__error(-errno, "loader: socketpair for worker %u", ids[i]);
            while (i-- > 0)
                close(theirs[i]);
            return rc;
        }
        l->w[ids[i]].sock = sv[0];
        theirs[i] = sv[1];
        /* The worker before it, if any, is gone. */
        stk__wctl_t *c = wctl(l, ids[i]);
        atomic_store(&c->busy_gen, 0);
        atomic_store(&c->progress, 0);
        atomic_store(&c->sleeping, 0);
        atomic_store(&c->stop, 0);
        l->w[ids[i]].seen_progress = 0;
        l->w[ids[i]].seen_ns = stk__now_ns();
    }
    return 0;
}

/* Reads the server's answers to the requests spawn_begin sent: the
 * workers' pids (0 for one that did not start). */
int stk__ld_spawn_finish(stk_loader_t *l)
{
    if (!l->spawn_pending)
        return 0;
    l->spawn_pending = 0;
    int rc = stk__forkserver_spawn_wait(l->spawn_sent, l->spawn_ids, l->spawn_pids);
    for (uint32_t i = 0; i < l->spawn_sent; i++)
        l->w[l->spawn_ids[i]].pid = l->spawn_pids[i];
    if (rc)
        rc = stk__error_prefix(rc, "loader: start of %u worker(s)", l->spawn_sent);
    return rc;
}

/* Asks the server for workers ids[0..n) on the sockets made for them, one
 * trip for all, and closes the workers' ends here; spawn_finish collects
 * the answers. */
static int spawn_begin(stk_loader_t *l, uint32_t n, const uint32_t *ids, int *theirs)
{
    int rc = 0;
    uint64_t *seeds = calloc(n, sizeof *seeds);
    if (!seeds)
        rc = stk__error(-ENOMEM, "loader: out of memory");
    for (uint32_t i = 0; rc == 0 && i < n; i++)
        seeds[i] = stk__ld_worker_seed(l, ids[i]);
    for (uint32_t i = 0; i < n; i++) {
        l->w[ids[i]].pid = 0;
        l->spawn_ids[i] = ids[i];
    }
    if (seeds) {
        /* Sent or not, the server's lock is held until spawn_finish. */
        rc = stk__forkserver_spawn_send(&l->spec, n, ids, seeds, theirs, l->arena_fd,
                                        l->ds->args_fd, l->wake_fd, &l->spawn_sent);
        l->spawn_pending = 1;
    }
    for (uint32_t i = 0; i < n; i++)
        close(theirs[i]);
    free(seeds);
    if (rc)
        rc = stk__error_prefix(rc, "loader: start of %u worker(s)", n);
    return rc;
}

/* Both halves at once: the workers are running (or reported) on return. */
static int spawn_workers(stk_loader_t *l, uint32_t n, const uint32_t *ids, int *theirs)
{
    int rc = spawn_begin(l, n, ids, theirs);
    int rc2 = stk__ld_spawn_finish(l);
    return rc ? rc : rc2;
}

/* Waits for a worker's end (the fork server reports it) and describes it. */
static void reap_worker(stk_loader_t *l, uint32_t i, char *why, size_t cap)
{
    int st = 0;
    pid_t pid = l->w[i].pid;
    if (l->w[i].sock >= 0)
        close(l->w[i].sock);
    l->w[i].sock = -1;
    if (pid <= 0)
        return;
    int rc = stk__forkserver_wait(pid, 1000, &st);
    if (rc == -ETIMEDOUT) {
        kill(pid, SIGKILL);
        rc = stk__forkserver_wait(pid, 2000, &st);
    }
    if (why) {
        if (rc)
            snprintf(why, cap, "worker %u (pid %d) is gone (no exit status: %s)", i, (int)pid,
                     stk_strerror(rc));
        else if (WIFSIGNALED(st))
            snprintf(why, cap, "worker %u (pid %d) killed by signal %d (SIG%s)", i, (int)pid,
                     WTERMSIG(st), sigabbrev_np(WTERMSIG(st)) ? sigabbrev_np(WTERMSIG(st)) : "?");
        else
            snprintf(why, cap, "worker %u (pid %d) exited with status %d", i, (int)pid,
                     WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    }
    stk__forkserver_forget(pid);
    l->w[i].pid = 0;
}

void stk__ld_stop_workers(stk_loader_t *l, int hard)
{
    if (!l->running)
        return;
    /* The stop flag, then EOF on its socket, tell a worker to exit (it
     * queues no more batches); a failed loader may have a stopped or hung
     * worker, which gets SIGKILL at once. */
    for (uint32_t i = 0; i < l->nworkers; i++) {
        atomic_store(&wctl(l, i)->stop, 1);
        if (hard && l->w[i].pid > 0)
            kill(l->w[i].pid, SIGKILL);
        if (l->w[i].sock >= 0) {
            close(l->w[i].sock);
            l->w[i].sock = -1;
        }
    }
    for (uint32_t i = 0; i < l->nworkers; i++)
        reap_worker(l, i, NULL, 0);
    for (uint32_t s = 0; s < LY(l)->nslots; s++)
        if (l->slots[s].state == SLOT_ISSUED)
            l->slots[s].state = SLOT_FREE;
    l->running = 0;
}

/* Workers that could not all start: stop those that did, fail the
 * loader with the reason. */
static int start_failed(stk_loader_t *l)
{
    stk__ld_spawn_finish(l);
    l->running = 1;
    stk__ld_stop_workers(l, 1);
    return stk__ld_fail(l, STK_EWORKER, "%s", stk_error_message());
}

/* Starts the workers; with tasks, queues the first batches on their
 * sockets before the fork (the sampler must be ready then). With defer,
 * returns once the server has the requests; finish_start completes. */
int stk__ld_start_workers(stk_loader_t *l, int tasks, int defer)
{
    if (l->running || l->nworkers == 0)
        return 0;
    uint32_t *ids = malloc(l->nworkers * sizeof *ids);
    int *theirs = malloc(l->nworkers * sizeof *theirs);
    if (!ids || !theirs) {
        free(ids);
        free(theirs);
        return stk__ld_fail(l, -ENOMEM, "loader: out of memory");
    }
    for (uint32_t i = 0; i < l->nworkers; i++)
        ids[i] = i;
    /* No worker is left to take what stopped workers left in the queue
     * (their slots are free again): the queue starts empty. */
    stk__queue_t *q = queue(l);
    atomic_store(&q->head, atomic_load(&q->tail));
    atomic_store(&q->main_waits, 0);
    int rc = make_sockets(l, l->nworkers, ids, theirs);
    if (rc == 0) {
        l->running = 1;
        /* The first tasks wait in the queue while the server forks, so a
         * worker starts on batch work without a round trip. */
        rc = tasks ? stk__ld_issue(l) : 0;
        if (rc == 0)
            rc = defer ? spawn_begin(l, l->nworkers, ids, theirs)
                       : spawn_workers(l, l->nworkers, ids, theirs);
        else
            for (uint32_t i = 0; i < l->nworkers; i++)
                close(theirs[i]);
    }
    free(ids);
    free(theirs);
    return rc ? start_failed(l) : 0;
}

int stk__ld_finish_start(stk_loader_t *l)
{
    return stk__ld_spawn_finish(l) ? start_failed(l) : 0;
}

/* A worker died (or was killed for hanging): respawn it and hand it its
 * unfinished batches again, or fail naming it. */
int stk__ld_worker_lost(stk_loader_t *l, uint32_t i, const char *context)
{
    char why[256];
    reap_worker(l, i, why, sizeof why);
    stk__ld_collect_all(l); /* what it finished before it went is not lost */
    if (l->failed)
        return l->failed; /* it said why before it went (failed start) */
    /* The task it held: marked busy by it, taken off the queue (by it: a
     * live worker that took it would have marked it busy before), not
     * done. Read in this order, each seq_cst, against the worker's busy
     * store before its claim. */
    uint32_t lost = UINT32_MAX;
    uint64_t gen = atomic_load(&wctl(l, i)->busy_gen);
    uint64_t head = atomic_load(&queue(l)->head);
    for (uint32_t s = 0; gen && s < LY(l)->nslots; s++)
        if (l->slots[s].state == SLOT_ISSUED && l->slots[s].gen == gen &&
            l->slots[s].qpos < head && holder_of(l, gen) == UINT32_MAX)
            lost = s;
    if (!l->cfg.respawn || l->respawns >= l->cfg.max_respawns) {
        if (lost != UINT32_MAX)
            return stk__ld_fail(l, STK_EWORKER, "%s%s while loading batch %" PRIu64 " of epoch %" PRIu64
                        "%s", why, context, l->slots[lost].batch, l->epoch,
                        l->cfg.respawn ? " (respawn limit reached)" : "");
        return stk__ld_fail(l, STK_EWORKER, "%s%s", why, context);
    }
    stk__log(STK_LOG_WARN, "%s%s; respawning it", why, context);
    l->respawns++;
    int theirs;
    int rc = make_sockets(l, 1, &i, &theirs);
    if (rc == 0)
        rc = spawn_workers(l, 1, &i, &theirs);
    if (rc)
        return stk__ld_fail(l, STK_EWORKER, "%s; respawn failed: %s", why, stk_error_message());
    if (lost != UINT32_MAX && !stk__test_skip_reissue) {
        rc = stk__ld_send_task(l, lost);
        if (rc)
            return rc;
    }
    stk__ld_wake_workers(l);
    return 0;
}

/* The one way a task can be lost: its worker died right after claiming
 * it, while another worker, whose claim of the same entry had just
 * failed, still showed it busy; stk__ld_worker_lost then left it to that
 * one. It is taken, held by no live worker, and not done. The reads go
 * in the order that makes that sure: head (taken), every live worker's
 * busy (acquire: a holder clears it only after storing done_gen or
 * sending its error report), the sockets (error reports), done_gen.
 * Then it goes back in the queue (reissue) or its slot is simply freed. */
int stk__ld_recover(stk_loader_t *l, uint32_t s, int reissue)
{
    slot_info_t *si = &l->slots[s];
    if (si->state != SLOT_ISSUED || si->qpos >= atomic_load(&queue(l)->head) ||
        holder_of(l, si->gen) != UINT32_MAX)
        return 0;
    int rc = stk__ld_pump(l, 0, UINT32_MAX);
    if (rc || si->state != SLOT_ISSUED || stk__ld_collect(l, s))
        return rc;
    if (!reissue) {
        si->state = SLOT_FREE;
        return 0;
    }
    stk__log(STK_LOG_WARN, "loader: batch %" PRIu64 " was taken by a worker that is gone; "
             "issuing it again", si->batch);
    rc = stk__ld_send_task(l, s);
    stk__ld_wake_workers(l);
    return rc;
}

static void take_done(stk_loader_t *l, const stk__done_msg_t *m, ssize_t len, uint32_t wi)
{
    if (m->slot == UINT32_MAX) {
        /* The worker could not start: it will exit; remember why. */
        if (!l->failed)
            stk__ld_fail(l, STK_EWORKER, "worker %u (pid %d) failed to start: %s (%s)", wi,
                 (int)l->w[wi].pid, len > (ssize_t)offsetof(stk__done_msg_t, msg) ? m->msg : "",
                 stk_err_name(m->status));
        return;
    }
    if (m->slot >= LY(l)->nslots)
        return;
    slot_info_t *s = &l->slots[m->slot];
    if (s->state != SLOT_ISSUED || s->batch != m->batch || m->epoch != l->epoch)
        return; /* stale: from before a respawn or a rewind */
    s->state = SLOT_DONE;
    s->status = m->status;
    s->worker = wi;
    free(s->msg);
    s->msg = NULL;
    if (m->status && len > (ssize_t)offsetof(stk__done_msg_t, msg))
        s->msg = strndup(m->msg, sizeof m->msg);
}

/* Reads what workers sent, handling deaths, for up to timeout_ms.
 * With only < nworkers, just that worker's messages wake the caller:
 * main waits for one batch, and being woken by the others' (whose slots
 * it cannot hand back before this one) cost a cross-CPU wake-up each
 * (raw Fashion-MNIST, 2 workers: ~10% more samples/s without them). Their
 * messages wait in the sockets; a death still wakes us (poll reports
 * POLLHUP and POLLERR whatever events asks for). Returns 0, or the
 * loader's failure. */
int stk__ld_pump(stk_loader_t *l, int timeout_ms, uint32_t only)
{
    struct pollfd *p = l->pfd;
    for (uint32_t i = 0; i < l->nworkers; i++) {
        p[i].fd = l->w[i].sock;
        p[i].events = only >= l->nworkers || i == only ? POLLIN : 0;
        p[i].revents = 0;
    }
    p[l->nworkers].fd = l->wake_fd;
    p[l->nworkers].events = POLLIN;
    p[l->nworkers].revents = 0;
    int n = poll(p, l->nworkers + 1, timeout_ms);
    if (n < 0)
        return errno == EINTR ? 0 : stk__ld_fail(l, -errno, "loader: poll");
    if (p[l->nworkers].revents) {
        uint64_t count;
        if (read(l->wake_fd, &count, sizeof count) < 0 && errno != EAGAIN && errno != EINTR)
            return stk__ld_fail(l, -errno, "loader: read of the wake-up eventfd");
    }
    for (uint32_t i = 0; i < l->nworkers && n > 0; i++) {
        if (!p[i].revents)
            continue;
        int eof = 0;
        for (;;) {
            stk__done_msg_t m;
            ssize_t k = recv(l->w[i].sock, &m, sizeof m, MSG_DONTWAIT);
            if (k > 0) {
                take_done(l, &m, k, i);
                continue;
            }
            if (k < 0 && errno == ECONNRESET && !eof) {
                /* The worker closed with tasks unread: Linux reports the
                 * reset once, ahead of what it sent before dying. */
                eof = 1;
                continue;
            }
            if (k == 0 || (errno != EAGAIN && errno != EINTR))
                eof = 1;
            break;
        }
        if (eof) {
            int rc = stk__ld_worker_lost(l, i, "");
            if (rc)
                return rc;
        }
    }
    return l->failed;
}
