/* SPDX-License-Identifier: MIT */
/* CPU backend, recurrent stacks: PyTorch's LSTM and GRU (layers,
 * directions, dropout between layers) on oneDNN's lstm and lbr_gru
 * primitives, with packed-sequence semantics for variable lengths.
 *
 * oneDNN has no lengths. So a call sorts its sequences by length and packs
 * them time-major as torch's PackedSequence does: step s holds the rows of
 * the bs[s] sequences still running, and a run of steps over which bs stays
 * the same (a segment) is one dense (steps, bs, features) block. Each
 * segment is one primitive call on that smaller batch, its initial state
 * the previous segment's final state (whose first bs rows are the live
 * sequences), so no padded step is computed, a finished sequence's state
 * is the previous segment's dst_iter, and backward injects its dhn there.
 * The reverse direction runs left to right over each sequence reversed in
 * place (same packing, rows permuted). oneDNN's own multi-layer and
 * bidirectional modes do not feed one layer's concatenated directions to
 * the next, so every layer and direction is its own primitive.
 *
 * This header holds what the four files of the recurrent op share: the
 * op's struct and the internal calls between them. cpu_rnn_plan.c makes
 * the primitives and the op (shapes, cache, weight formats), cpu_rnn_pack.c
 * the packed layout and the moves between it and the caller's tensors,
 * cpu_rnn.c the forward and backward passes, and cpu_rnn_split.c the
 * batch splitting and the backend's entry points (cpu.h). */
#ifndef STOKER_ENGINE_CPU_RNN_H
#define STOKER_ENGINE_CPU_RNN_H

#include "cpu.h"

#include <stddef.h>
#include <stdint.h>

#include <oneapi/dnnl/dnnl.h>

#define RNN_MAX_ARGS 20
/* Primitives kept per op, one per (steps, batch, input) segment shape;
 * the least recently used goes when full. Creating one costs ~0.4 ms. */
#define CACHE_MAX 256
#define PAR_MIN 16384
/* Batch splitting: at most this many parts, each of at least
 * PART_MIN sequences. */
#define RNN_PARTS 8
#define PART_MIN 2

typedef struct rprim {
    dnnl_primitive_t p;
    int nargs;
    int scratch; /* args[scratch] is the op's scratchpad; 0: none (args[0] never is) */
    dnnl_exec_arg_t args[RNN_MAX_ARGS];
} rprim_t;

typedef struct shape {
    int64_t steps, n, in;
    uint64_t used;
    dnnl_primitive_desc_t fpd, bpd;
    rprim_t fwd, bwd;
    size_t ws;
} shape_t;

typedef struct seg {
    int64_t t0, steps, n;
} seg_t;

/* Weight formats the primitives take, by index. */
enum { W_FL, W_FI, W_BL, W_BI, W_DL, W_DI, W_N };

typedef struct rdir {
    float *w[4];      /* W_FL..W_BI in the primitives' formats */
    float *bias;      /* oneDNN's bias [Gb, H] */
    float *dw[2];     /* W_DL, W_DI: diff weights, accumulated over segments */
    float *dbias;
    float *xr;        /* reverse direction: the layer input, sequences reversed */
    float *y;         /* [R, H], this direction's row order */
    float *h, *c;     /* state slots: slot 0 the initial state, slot k + 1 after segment k */
    char *ws;         /* the segments' workspaces, back to back */
    size_t ws_cap;
    size_t *ws_off;   /* per segment of the last forward: the sizes depend on the layer's input */
} rdir_t;

typedef struct rlayer {
    int64_t in;
    dnnl_memory_desc_t md[W_N];
    rprim_t re[W_N]; /* plain <-> md[k]: into the format for k < W_DL, out of it after */
    float *input;    /* [R, in] packed (dropout applied); layer 0: the op's x0 */
    rdir_t dir[2];
} rlayer_t;

struct stk__rnn_op {
    stk__rnn_desc_t d;
    cpu_ctx_t *c;
    int g, gb, nd; /* gates, bias gates (lbr GRU has 4), directions */
    rlayer_t *layers;
    shape_t cache[CACHE_MAX];
    int ncache;
    uint64_t tick;
    /* this call's packing */
    int64_t n, t, r, nseg, maxlen;
    int64_t *order, *len, *off, *rowseq, *rowt, *rev, *slot_of, *seg_of_step;
    seg_t *seg;
    float *x0;          /* packed input [R, input] */
    float *tmp[2];      /* plain (ldgoi) weights scratch */
    float *dout, *din;  /* backward: [R, max(in, D H)] */
    float *dyd, *dxa, *dxb;
    float *ds[4];       /* backward state ping-pong: h, h', c, c' [batch, H] */
    float *dhn_s, *dcn_s; /* one (layer, direction)'s dhn / dcn in sorted order */
    float *zero;
    int trained;
    uint64_t key, step;
    /* The state tensors ([L*D, sn, H]) and the dropout mask's element
     * index see this op's sequences as sbase.. of a batch of sn. */
    int64_t sn, sbase;
    /* Primitives run with a scratchpad of the op's own (user mode), so
     * parts can run side by side on their own streams. */
    dnnl_stream_t stream, own_stream;
    dnnl_primitive_attr_t attr;
    void *scratch;
    size_t scratch_cap;
    /* Batch splitting (see split_ok): parts, each a whole op of its own
     * for a slice of the batch; the dw of parts 1.. before the sum. */
    int np, split;
    struct stk__rnn_op *part[RNN_PARTS];
    float *pdw[RNN_PARTS];
    int64_t pb[RNN_PARTS + 1];
    char perr[RNN_PARTS][256];
};


/* cpu_rnn_plan.c: primitives and the op */
void *stk__cpu_rnn_zalloc(size_t bytes);
int stk__cpu_rnn_prim_run(stk__rnn_op_t *op, rprim_t *pr, void *const *ptrs);
int stk__cpu_rnn_shape_get(stk__rnn_op_t *op, const rlayer_t *ly, int64_t steps, int64_t n, int bwd, shape_t **out);
int stk__cpu_rnn_core_create(cpu_ctx_t *c, const stk__rnn_desc_t *d, int own_stream, stk__rnn_op_t **out);
void stk__cpu_rnn_core_destroy(stk__rnn_op_t *op);

/* cpu_rnn_pack.c: the packed layout */
int stk__cpu_rnn_pack(stk__rnn_op_t *op, int64_t n, int64_t t, const int64_t *lengths);
void stk__cpu_rnn_rows_permute(int64_t r, int64_t f, const int64_t *perm, const float *src, float *dst);
void stk__cpu_rnn_dropout_rows(const stk__rnn_op_t *op, int layer, float *x, int64_t f);
void stk__cpu_rnn_state_gather(const stk__rnn_op_t *op, const float *src, int l, int di, float *dst);
void stk__cpu_rnn_state_scatter(const stk__rnn_op_t *op, const float *slots, int l, int di, float *dst);
void stk__cpu_rnn_state_scatter_sorted(const stk__rnn_op_t *op, const float *sorted, int l, int di, float *dst);

/* cpu_rnn.c: one op's passes over a whole (unsplit) batch */
int stk__cpu_rnn_core_forward(stk__rnn_op_t *op, int train, const stk__rnn_args_t *a, int64_t sn, int64_t sbase);
int stk__cpu_rnn_core_backward(stk__rnn_op_t *op, const stk__rnn_args_t *a);

#endif
