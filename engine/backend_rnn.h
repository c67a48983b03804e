/* SPDX-License-Identifier: MIT */
/* The recurrent part of the backend interface: the plan description of an
 * LSTM / GRU stack, the arguments of its forward and backward slots, and
 * where each PyTorch parameter sits in the stack's parameter block. The
 * slots themselves are in stk__backend_iface_t (backend.h). */
#ifndef STOKER_ENGINE_BACKEND_RNN_H
#define STOKER_ENGINE_BACKEND_RNN_H

#include <stddef.h>
#include <stdint.h>

typedef struct stk__rnn_op stk__rnn_op_t; /* a backend's planned RNN, opaque here */

typedef enum stk__rnn_cell {
    STK__RNN_LSTM = 1, /* gates i, f, g, o (PyTorch's and oneDNN's order) */
    STK__RNN_GRU = 2   /* PyTorch's GRU: gates r, z, n, with the hidden
                        * bias inside r * (W_hn h + b_hn), i.e. oneDNN's
                        * linear-before-reset GRU and cuDNN's GRU */
} stk__rnn_cell_t;

/* A stack as torch.nn.LSTM / torch.nn.GRU(batch_first=True). */
typedef struct stk__rnn_desc {
    int cell;          /* stk__rnn_cell_t */
    int64_t batch;     /* most sequences in one call */
    int64_t steps;     /* most time steps in one call (the padded length) */
    int64_t input;     /* features of one step of the input */
    int64_t hidden;    /* features of the state of one direction */
    int layers;        /* >= 1 */
    int bidirectional; /* 0 or 1 */
    float dropout;     /* on every layer's output but the last, training only */
} stk__rnn_desc_t;

/* One call's tensors. Unless marked host, pointers are device memory.
 *
 * Shapes (n, t: this call's sequences and padded steps, at most the
 * plan's batch and steps; D = 2 when bidirectional else 1, L = layers,
 * H = hidden, G = 4 for LSTM and 3 for GRU):
 *   x, dx     [n, t, input]       batch-first, padded
 *   y, dy     [n, t, D * H]       forward direction's features first
 *   h0..dcn   [L * D, n, H]       layer-major, then direction (PyTorch's)
 *   w, dw     the parameter block (stk__rnn_param_offset)
 *
 * Packed-sequence semantics: step s of sequence i exists when s <
 * lengths[i]. y is zero past each length and dy there is ignored (takes
 * no gradient); dx is zero there. hn / cn hold each sequence's state after
 * its last step (h0 / c0 for a length of 0), and the reverse direction of
 * a sequence starts at its own last step, as torch's PackedSequence. */
typedef struct stk__rnn_args {
    int64_t n, t;
    const int64_t *lengths; /* host, [n], each in [0, t]; NULL: all t */
    const float *w;         /* parameters (forward and backward) */
    /* forward */
    const float *x;
    const float *h0, *c0;   /* NULL: zeros; c0 is LSTM only */
    float *y;
    float *hn, *cn;         /* NULL: not wanted */
    uint64_t key, step;     /* dropout: the mask is a pure function of (key, step, layer, element) */
    /* backward (of the last forward on the op, whose x, lengths and saved
     * activations it uses) */
    const float *dy;
    const float *dhn, *dcn; /* NULL: zeros */
    float *dx;              /* NULL: not wanted */
    float *dh0, *dc0;       /* NULL: not wanted */
    float *dw;              /* overwritten, same layout as w */
} stk__rnn_args_t;

static inline int stk__rnn_gates(int cell)
{
    return cell == STK__RNN_LSTM ? 4 : 3;
}

/* The parameter block holds, for each layer l and then each direction d
 * (d = 1: PyTorch's _reverse), weight_ih [G*H, in_l], weight_hh [G*H, H],
 * bias_ih [G*H], bias_hh [G*H], in that order and back to back, where in_l
 * is the input for l = 0 and D * H after. `which` is 0..3 in that order;
 * returns the offset in floats and the count in *count. */
static inline size_t stk__rnn_param_offset(const stk__rnn_desc_t *d, int l, int dir, int which, size_t *count)
{
    size_t g = (size_t)stk__rnn_gates(d->cell), h = (size_t)d->hidden, nd = d->bidirectional ? 2 : 1;
    size_t off = 0, n[4] = {0, 0, 0, 0};
    for (int li = 0; li < d->layers; li++) {
        size_t in = li == 0 ? (size_t)d->input : nd * h;
        n[0] = g * h * in;
        n[1] = g * h * h;
        n[2] = n[3] = g * h;
        for (int di = 0; di < (int)nd; di++) {
            for (int k = 0; k < 4; k++) {
                if (li == l && di == dir && k == which) {
                    if (count)
                        *count = n[k];
                    return off;
                }
                off += n[k];
            }
        }
    }
    if (count)
        *count = 0;
    return off; /* past the end: the block's size */
}

/* Floats in the whole parameter block. */
static inline size_t stk__rnn_param_count(const stk__rnn_desc_t *d)
{
    return stk__rnn_param_offset(d, d->layers, 0, 0, NULL);
}

#endif
