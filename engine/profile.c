/* SPDX-License-Identifier: MIT */
/* Per-layer timing while profiling is on (stk_model_set_profiling).
 *
 * Which clock. On a backend whose slots run on the calling thread (the
 * CPU) a layer's host time is its time. On one that queues work on a
 * stream (CUDA) host time is only the time to enqueue, so each layer's
 * forward and backward are bracketed by timer marks recorded on the
 * model's stream (backend.h, timer_*), and their elapsed device time is
 * read later: when the next pass of the same kind starts (its marks are
 * about to be recorded again), when the profile is read, or when
 * profiling stops. That read waits for the last mark: one wait per step,
 * and only while profiling.
 *
 * Marks: forward of layer i 2i (before) and 2i + 1 (after), backward of
 * layer i 2 nl + 2i and 2 nl + 2i + 1; made once when profiling starts.
 * A pass also adds its span (the first layer's start to the last one's
 * end) to the profile's total, so that the layers' sum can be checked
 * against it. Steps captured into a device graph are not timed: the
 * engine runs no graphs while profiling (graph.c). */
#include "model.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct stk__prof {
    int device; /* marks on the backend's stream; 0: host clock */
    /* Per pass kind (0 forward, 1 backward): the layers whose marks are
     * recorded and not yet read (first and last in recording order, -1
     * none), whether the pass ended (its span is then complete), and
     * the host time it started. */
    int first[2], last[2];
    int ended[2];
    double t0[2];
    unsigned char *done[2]; /* per layer: both marks recorded */
    double span_s;
    uint64_t passes;
};


static int mark_of(const stk_model_t *m, int bwd, int layer, int end)
{
    return (bwd ? 2 * m->nl : 0) + 2 * layer + end;
}

static void drop_pending(stk__prof_t *p, int kind, int nl)
{
    p->first[kind] = p->last[kind] = -1;
    p->ended[kind] = 0;
    memset(p->done[kind], 0, (size_t)nl);
}

void stk__prof_free(stk_model_t *m)
{
    if (!m->prof)
        return;
    free(m->prof->done[0]);
    free(m->prof->done[1]);
    free(m->prof);
    m->prof = NULL;
}

/* The profile's state, made the first time profiling is turned on. A
 * backend whose marks cannot be made (out of memory, events) is timed on
 * the host, and the table says so. */
static stk__prof_t *prof_make(stk_model_t *m)
{
    if (m->prof)
        return m->prof;
    stk__prof_t *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->done[0] = calloc((size_t)m->nl, 1);
    p->done[1] = calloc((size_t)m->nl, 1);
    if (!p->done[0] || !p->done[1]) {
        free(p->done[0]);
        free(p->done[1]);
        free(p);
        return NULL;
    }
    const stk__backend_iface_t *be = m->be.iface;
    p->device = be->timer_reserve && be->timer_mark && be->timer_elapsed &&
                be->timer_reserve(m->be.ctx, 4 * m->nl) == 0;
    drop_pending(p, 0, m->nl);
    drop_pending(p, 1, m->nl);
    m->prof = p;
    return p;
}

void stk__prof_set(stk_model_t *m, int on)
{
    if (on && !m->profiling && !prof_make(m))
        return; /* out of memory: no profile (the stats stay as they were) */
    if (!on && m->profiling)
        stk__prof_settle(m);
    m->profiling = on != 0;
}

/* Reads the elapsed times of the marks of one pass kind. The times live
 * behind pointers (the profile, the layers), so a const model can settle
 * them: reading the profile is what makes them current. */
static int settle_kind(const stk_model_t *m, stk__prof_t *p, int kind)
{
    if (p->first[kind] < 0)
        return 0;
    const stk__backend_iface_t *be = m->be.iface;
    int rc = 0;
    double sec;
    for (int i = 0; i < m->nl && rc == 0; i++) {
        if (!p->done[kind][i])
            continue;
        rc = be->timer_elapsed(m->be.ctx, mark_of(m, kind, i, 0), mark_of(m, kind, i, 1), &sec);
        if (rc == 0) {
            if (kind)
                m->layers[i].bsec += sec;
            else
                m->layers[i].fsec += sec;
        }
    }
    if (rc == 0 && p->ended[kind] &&
        (rc = be->timer_elapsed(m->be.ctx, mark_of(m, kind, p->first[kind], 0),
                                mark_of(m, kind, p->last[kind], 1), &sec)) == 0) {
        p->span_s += sec;
        p->passes++;
    }
    drop_pending(p, kind, m->nl);
    return rc;
}

int stk__prof_settle(const stk_model_t *m)
{
    stk__prof_t *p = m->prof;
    if (!p || !p->device)
        return 0;
    int rc = settle_kind(m, p, 0);
    int rc1 = settle_kind(m, p, 1);
    return rc < 0 ? rc : rc1;
}

int stk__prof_timing(const stk_model_t *m)
{
    return m->profiling && m->prof && !m->graph_phase;
}

int stk__prof_pass_begin(stk_model_t *m, int bwd)
{
    stk__prof_t *p = m->prof;
    /* Marks about to be recorded again: read what they hold first. */
    int rc = p->device ? settle_kind(m, p, bwd) : 0;
    p->first[bwd] = p->last[bwd] = -1;
    p->ended[bwd] = 0;
    p->t0[bwd] = stk__now_s();
    return rc;
}

int stk__prof_layer_begin(stk_model_t *m, int bwd, int layer, double *t0)
{
    stk__prof_t *p = m->prof;
    if (!p->device) {
        *t0 = stk__now_s();
        return 0;
    }
    return m->be.iface->timer_mark(m->be.ctx, mark_of(m, bwd, layer, 0));
}

int stk__prof_layer_end(stk_model_t *m, int bwd, int layer, double t0)
{
    stk__prof_t *p = m->prof;
    stk__layer_t *l = &m->layers[layer];
    if (bwd)
        l->bcalls++;
    else
        l->fcalls++;
    if (!p->device) {
        double dt = stk__now_s() - t0;
        if (bwd)
            l->bsec += dt;
        else
            l->fsec += dt;
        return 0;
    }
    int rc = m->be.iface->timer_mark(m->be.ctx, mark_of(m, bwd, layer, 1));
    if (rc < 0)
        return rc;
    p->done[bwd][layer] = 1;
    if (p->first[bwd] < 0)
        p->first[bwd] = layer;
    p->last[bwd] = layer;
    return 0;
}

void stk__prof_pass_end(stk_model_t *m, int bwd)
{
    stk__prof_t *p = m->prof;
    if (p->device) {
        p->ended[bwd] = p->first[bwd] >= 0;
        return;
    }
    p->span_s += stk__now_s() - p->t0[bwd];
    p->passes++;
}

void stk__prof_reset(stk_model_t *m)
{
    stk__prof_t *p = m->prof;
    if (!p)
        return;
    drop_pending(p, 0, m->nl);
    drop_pending(p, 1, m->nl);
    p->span_s = 0.0;
    p->passes = 0;
}

int stk_model_profile_info(const stk_model_t *m, stk_profile_info_t *out)
{
    if (!m || !out)
        return stk__error(-EINVAL, "stk_model_profile_info: NULL argument");
    int rc = stk__prof_settle(m);
    const stk__prof_t *p = m->prof;
    out->clock = p && p->device ? STK_PROFILE_DEVICE : STK_PROFILE_HOST;
    out->passes = p ? p->passes : 0;
    out->span_s = p ? p->span_s : 0.0;
    return rc;
}

const char *stk_profile_clock_name(stk_profile_clock_t clock)
{
    return clock == STK_PROFILE_DEVICE ? "GPU time" : "host time";
}
