/* SPDX-License-Identifier: MIT */
/* The registry of layer kinds: the one place that lists them. A new kind
 * is one line here and one file beside this one (see engine/layer.h). */
#include "../layer.h"

extern const stk__layer_class_t stk__layer_input, stk__layer_conv2d, stk__layer_batchnorm2d, stk__layer_relu,
    stk__layer_leaky_relu, stk__layer_gelu, stk__layer_sigmoid, stk__layer_tanh, stk__layer_maxpool2d,
    stk__layer_avgpool2d, stk__layer_global_avgpool, stk__layer_linear, stk__layer_dropout, stk__layer_flatten,
    stk__layer_add, stk__layer_concat, stk__layer_cross_entropy, stk__layer_embedding, stk__layer_lstm,
    stk__layer_gru, stk__layer_seq_last, stk__layer_seq_mean;

static const stk__layer_class_t *const classes[STK_LAYER_KIND_COUNT] = {
    [STK_LAYER_INPUT] = &stk__layer_input,                   /* shape.c */
    [STK_LAYER_CONV2D] = &stk__layer_conv2d,                 /* conv.c */
    [STK_LAYER_BATCHNORM2D] = &stk__layer_batchnorm2d,       /* norm.c */
    [STK_LAYER_RELU] = &stk__layer_relu,                     /* activation.c */
    [STK_LAYER_LEAKY_RELU] = &stk__layer_leaky_relu,         /* activation.c */
    [STK_LAYER_GELU] = &stk__layer_gelu,                     /* activation.c */
    [STK_LAYER_SIGMOID] = &stk__layer_sigmoid,               /* activation.c */
    [STK_LAYER_TANH] = &stk__layer_tanh,                     /* activation.c */
    [STK_LAYER_MAXPOOL2D] = &stk__layer_maxpool2d,           /* pool.c */
    [STK_LAYER_AVGPOOL2D] = &stk__layer_avgpool2d,           /* pool.c */
    [STK_LAYER_GLOBAL_AVGPOOL] = &stk__layer_global_avgpool, /* pool.c */
    [STK_LAYER_LINEAR] = &stk__layer_linear,                 /* linear.c */
    [STK_LAYER_DROPOUT] = &stk__layer_dropout,               /* dropout.c */
    [STK_LAYER_FLATTEN] = &stk__layer_flatten,               /* shape.c */
    [STK_LAYER_ADD] = &stk__layer_add,                       /* shape.c */
    [STK_LAYER_CONCAT] = &stk__layer_concat,                 /* shape.c */
    [STK_LAYER_CROSS_ENTROPY] = &stk__layer_cross_entropy,   /* loss.c */
    [STK_LAYER_EMBEDDING] = &stk__layer_embedding,           /* embedding.c */
    [STK_LAYER_LSTM] = &stk__layer_lstm,                     /* rnn.c */
    [STK_LAYER_GRU] = &stk__layer_gru,                       /* rnn.c */
    [STK_LAYER_SEQ_LAST] = &stk__layer_seq_last,             /* seq_head.c */
    [STK_LAYER_SEQ_MEAN] = &stk__layer_seq_mean,             /* seq_head.c */
};

const stk__layer_class_t *stk__layer_class(stk_layer_kind_t kind)
{
    if ((int)kind <= 0 || kind >= STK_LAYER_KIND_COUNT)
        return NULL;
    return classes[kind];
}
