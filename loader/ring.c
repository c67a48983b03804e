/* SPDX-License-Identifier: MIT */
/* The task ring's shared memory and its protocol (see ring.h): the
 * producer pushes at tail, any consumer claims the task at head by
 * compare-and-swap, done marks per cell, and wake-ups in both directions
 * that are sent only to a side that said it sleeps. */
#define _GNU_SOURCE
#include "ring.h"

#include <errno.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

size_t stk__ring_bytes(uint32_t cap, uint32_t nconsumers, uint32_t ncells)
{
    size_t b = sizeof(stk__ring_hdr_t) + (size_t)nconsumers * sizeof(stk__ring_ctl_t) +
               (size_t)ncells * sizeof(stk__ring_cell_t) + (size_t)cap * sizeof(stk__ring_entry_t);
    return (b + 63) / 64 * 64;
}

void stk__ring_attach(stk__ring_t *r, void *mem, uint32_t cap, uint32_t nconsumers,
                      uint32_t ncells)
{
    unsigned char *m = mem;
    memset(r, 0, sizeof *r);
    r->hdr = (stk__ring_hdr_t *)m;
    m += sizeof(stk__ring_hdr_t);
    r->ctl = (stk__ring_ctl_t *)m;
    m += (size_t)nconsumers * sizeof(stk__ring_ctl_t);
    r->cells = (stk__ring_cell_t *)m;
    m += (size_t)ncells * sizeof(stk__ring_cell_t);
    r->ent = (stk__ring_entry_t *)m;
    r->cap = cap;
    r->nconsumers = nconsumers;
    r->ncells = ncells;
}

uint32_t stk__ring_test_sleep_race_us;

/* ---- Producer ------------------------------------------------------ */

int stk__ring_push(stk__ring_t *r, uint32_t cell, uint64_t epoch, uint64_t batch, uint64_t *gen,
                   uint64_t *qpos)
{
    stk__ring_hdr_t *h = r->hdr;
    uint64_t tail = atomic_load_explicit(&h->tail, memory_order_relaxed);
    if (tail - atomic_load_explicit(&h->head, memory_order_acquire) >= r->cap)
        return -EAGAIN;
    uint64_t g = ++r->last_gen;
    stk__ring_entry_t *e = &r->ent[tail % r->cap];
    atomic_store_explicit(&e->cell, cell, memory_order_relaxed);
    atomic_store_explicit(&e->epoch, epoch, memory_order_relaxed);
    atomic_store_explicit(&e->batch, batch, memory_order_relaxed);
    atomic_store_explicit(&e->gen, g, memory_order_relaxed);
    atomic_store_explicit(&h->tail, tail + 1, memory_order_release);
    *gen = g;
    *qpos = tail;
    return 0;
}

/* Wakes consumer i if it sleeps. Should its socket be full, wake-ups are
 * queued already; should it be gone, the pool hears of it (end of file). */
static int wake_one(stk__ring_t *r, uint32_t i, int fd)
{
    if (!atomic_load_explicit(&r->ctl[i].sleeping, memory_order_relaxed))
        return 0;
    char t = 1;
    ssize_t k;
    do {
        k = send(fd, &t, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (k < 0 && errno == EINTR);
    return 1;
}

void stk__ring_wake(stk__ring_t *r, const int *fds)
{
    stk__ring_hdr_t *h = r->hdr;
    /* Pairs with the consumer's fence between saying it sleeps and
     * looking at tail again: one of the two sees the other. */
    atomic_thread_fence(memory_order_seq_cst);
    uint64_t waiting = atomic_load_explicit(&h->tail, memory_order_relaxed) -
                       atomic_load_explicit(&h->head, memory_order_relaxed);
    for (uint32_t k = 0; k < r->nconsumers && waiting; k++) {
        uint32_t i = (r->wake_next + k) % r->nconsumers;
        if (fds[i] >= 0 && wake_one(r, i, fds[i])) {
            waiting--;
            r->wake_next = i + 1;
        }
    }
}

int stk__ring_is_done(const stk__ring_t *r, uint32_t cell, uint64_t gen)
{
    return atomic_load_explicit(&r->cells[cell].done_gen, memory_order_acquire) == gen;
}

void stk__ring_main_waits(stk__ring_t *r, uint64_t gen)
{
    atomic_store_explicit(&r->hdr->main_waits, gen, memory_order_relaxed);
    if (gen)
        atomic_thread_fence(memory_order_seq_cst); /* pairs with the consumer's in finish */
}

int stk__ring_taken(const stk__ring_t *r, uint64_t qpos)
{
    return qpos < atomic_load(&r->hdr->head);
}

void stk__ring_drop_queued(stk__ring_t *r)
{
    atomic_store(&r->hdr->head, atomic_load(&r->hdr->tail));
    atomic_store(&r->hdr->main_waits, 0);
}

void stk__ring_reset_consumer(stk__ring_t *r, uint32_t i)
{
    stk__ring_ctl_t *c = &r->ctl[i];
    atomic_store(&c->busy_gen, 0);
    atomic_store(&c->progress, 0);
    atomic_store(&c->sleeping, 0);
    atomic_store(&c->stop, 0);
    atomic_store(&c->sleeps, 0);
}

void stk__ring_stop(stk__ring_t *r, uint32_t i)
{
    atomic_store(&r->ctl[i].stop, 1);
}

uint64_t stk__ring_progress(const stk__ring_t *r, uint32_t i)
{
    return atomic_load_explicit(&r->ctl[i].progress, memory_order_relaxed);
}

uint64_t stk__ring_sleeps(const stk__ring_t *r, uint32_t i)
{
    return atomic_load_explicit(&r->ctl[i].sleeps, memory_order_relaxed);
}

uint64_t stk__ring_busy(const stk__ring_t *r, uint32_t i)
{
    return atomic_load(&r->ctl[i].busy_gen);
}

uint32_t stk__ring_holder(const stk__ring_t *r, uint64_t gen, const unsigned char *alive)
{
    /* acquire: a holder clears its mark only after marking the task done
     * or reporting its failure, which the caller reads next. */
    for (uint32_t i = 0; i < r->nconsumers; i++)
        if (alive[i] && atomic_load_explicit(&r->ctl[i].busy_gen, memory_order_acquire) == gen)
            return i;
    return UINT32_MAX;
}

int stk__ring_unheld(const stk__ring_t *r, uint64_t gen, uint64_t qpos, const unsigned char *alive)
{
    /* Head first: a consumer marks busy before it claims, so once the
     * claim is seen, a live claimer's mark is too. */
    if (!stk__ring_taken(r, qpos))
        return 0;
    for (uint32_t i = 0; i < r->nconsumers; i++)
        if (alive[i] && atomic_load(&r->ctl[i].busy_gen) == gen)
            return 0;
    return 1;
}

/* ---- Consumer ------------------------------------------------------ */

int stk__ring_take(stk__ring_t *r, uint32_t i, int fd, stk__ring_task_t *t)
{
    stk__ring_hdr_t *h = r->hdr;
    stk__ring_ctl_t *c = &r->ctl[i];
    for (;;) {
        if (atomic_load_explicit(&c->stop, memory_order_relaxed))
            return -1;
        uint64_t head = atomic_load_explicit(&h->head, memory_order_acquire);
        if (atomic_load_explicit(&h->tail, memory_order_acquire) != head) {
            /* Read before the claim: main writes this entry again only
             * once head has passed it, which our claim (release) orders
             * after these reads; a failed claim just tries again. */
            const stk__ring_entry_t *e = &r->ent[head % r->cap];
            t->cell = (uint32_t)atomic_load_explicit(&e->cell, memory_order_relaxed);
            t->epoch = atomic_load_explicit(&e->epoch, memory_order_relaxed);
            t->batch = atomic_load_explicit(&e->batch, memory_order_relaxed);
            t->gen = atomic_load_explicit(&e->gen, memory_order_relaxed);
            /* Busy before the claim, so that a consumer killed right
             * after it is known to hold the task (see unheld). */
            atomic_store_explicit(&c->busy_gen, t->gen, memory_order_seq_cst);
            if (atomic_compare_exchange_strong(&h->head, &head, head + 1)) {
                atomic_fetch_add_explicit(&c->progress, 1, memory_order_relaxed);
                return 0;
            }
            continue;
        }
        atomic_store_explicit(&c->busy_gen, 0, memory_order_relaxed);
        if (stk__ring_test_sleep_race_us)
            usleep(stk__ring_test_sleep_race_us);
        atomic_store_explicit(&c->sleeping, 1, memory_order_relaxed);
        /* Pairs with the producer's fence between pushing a task and
         * looking at sleeping: either it sees us asleep and wakes us, or
         * we see its task here. */
        atomic_thread_fence(memory_order_seq_cst);
        if (atomic_load_explicit(&h->tail, memory_order_acquire) == head) {
            char wake[16];
            atomic_fetch_add_explicit(&c->sleeps, 1, memory_order_relaxed);
            ssize_t k = read(fd, wake, sizeof wake);
            if (k == 0 || (k < 0 && errno != EINTR)) {
                atomic_store_explicit(&c->sleeping, 0, memory_order_relaxed);
                return -1; /* end of file: main is gone or stops us */
            }
        }
        atomic_store_explicit(&c->sleeping, 0, memory_order_relaxed);
    }
}

void stk__ring_finish(stk__ring_t *r, uint32_t i, const stk__ring_task_t *t, int main_fd)
{
    stk__ring_ctl_t *c = &r->ctl[i];
    atomic_store_explicit(&r->cells[t->cell].done_gen, t->gen, memory_order_release);
    atomic_store_explicit(&c->busy_gen, 0, memory_order_release);
    atomic_fetch_add_explicit(&c->progress, 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst); /* pairs with main_waits' */
    uint64_t w = atomic_load_explicit(&r->hdr->main_waits, memory_order_relaxed);
    if (w == t->gen || w == STK__WAIT_ANY) {
        uint64_t one = 1;
        ssize_t k;
        do {
            k = write(main_fd, &one, sizeof one);
        } while (k < 0 && errno == EINTR);
    }
}

void stk__ring_release(stk__ring_t *r, uint32_t i)
{
    atomic_store_explicit(&r->ctl[i].busy_gen, 0, memory_order_release);
    atomic_fetch_add_explicit(&r->ctl[i].progress, 1, memory_order_relaxed);
}

int stk__ring_queued(const stk__ring_t *r)
{
    return atomic_load_explicit(&r->hdr->tail, memory_order_acquire) !=
           atomic_load_explicit(&r->hdr->head, memory_order_relaxed);
}
