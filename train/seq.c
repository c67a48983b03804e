/* SPDX-License-Identifier: MIT */
/* Sequences in the training layer: a batch of token records (a padded
 * variable-length field with its lengths) into a language model's inputs
 * and per-step targets (next_token), a data set's sequence lengths for the
 * bucketing sampler, and the data check for a model whose input is a
 * sequence. */
#define _GNU_SOURCE
#include "train_seq.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void stk__train_seq_free(stk__train_seq_t *s)
{
    free(s->tok);
    free(s->tg);
    free(s->len);
    memset(s, 0, sizeof(*s));
}

static int token_at(const stk_batch_field_t *f, size_t i, int64_t *v)
{
    switch (f->dtype) {
    case STK_DTYPE_U8: *v = ((const uint8_t *)f->data)[i]; return 0;
    case STK_DTYPE_I8: *v = ((const int8_t *)f->data)[i]; return 0;
    case STK_DTYPE_I32: *v = ((const int32_t *)f->data)[i]; return 0;
    case STK_DTYPE_I64: *v = ((const int64_t *)f->data)[i]; return 0;
    default:
        return stk__error(STK_ECONFIG, "token field '%s' has dtype %s; token ids are u8, i8, i32 or i64", f->name,
                          stk_dtype_name(f->dtype));
    }
}

int stk__train_next_token(stk__train_seq_t *s, const stk_batch_field_t *f, int64_t boundary, stk_tensor_t *input,
                          stk_tensor_t *target)
{
    if (f->ndim != 2 || f->var_dim != 1 || !f->lengths)
        return stk__error(STK_ESHAPE, "token field '%s' is not one variable-length sequence per sample", f->name);
    size_t n = (size_t)f->shape[0], w = (size_t)f->shape[1], t = w + 1;
    if (n * t > s->cap) {
        size_t cap = n * t * 2;
        int64_t *tok = realloc(s->tok, cap * sizeof(*tok)), *tg = tok ? realloc(s->tg, cap * sizeof(*tg)) : NULL;
        if (tok)
            s->tok = tok;
        if (tg)
            s->tg = tg;
        if (!tok || !tg)
            return stk__error(-ENOMEM, "train inputs: out of memory");
        s->cap = cap;
    }
    if (n > s->len_cap) {
        int64_t *len = realloc(s->len, n * 2 * sizeof(*len));
        if (!len)
            return stk__error(-ENOMEM, "train inputs: out of memory");
        s->len = len;
        s->len_cap = n * 2;
    }
    /* input: boundary, then the tokens; target: the tokens, then the
     * boundary; past the end, id 0 and a target the loss never reads */
    for (size_t i = 0; i < n; i++) {
        int64_t L = f->lengths[i], *tok = s->tok + i * t, *tg = s->tg + i * t;
        tok[0] = boundary;
        for (int64_t k = 0; k < L; k++) {
            int64_t v = 0;
            int rc = token_at(f, i * w + (size_t)k, &v);
            if (rc)
                return rc;
            tok[k + 1] = v;
            tg[k] = v;
        }
        tg[L] = boundary;
        for (size_t k = (size_t)L + 1; k < t; k++)
            tok[k] = tg[k] = 0;
        s->len[i] = L + 1;
    }
    int64_t shape[2] = {(int64_t)n, (int64_t)t};
    int rc = stk_tensor_init(input, s->tok, STK_DTYPE_I64, 2, shape);
    input->lengths = s->len;
    if (rc == 0 && target)
        rc = stk_tensor_init(target, s->tg, STK_DTYPE_I64, 2, shape);
    return rc;
}

int stk_train_sequence_lengths(stk_dataset_t *ds, const char *field, uint64_t n, uint32_t *out)
{
    if (!ds || !field || (!out && n))
        return stk__error(-EINVAL, "stk_train_sequence_lengths: NULL argument");
    const stk_schema_t *schema = stk_dataset_schema(ds);
    int f = stk_schema_find(schema, field);
    if (f < 0)
        return stk__error(STK_ENOTFOUND, "the data has no field '%s'", field);
    int var = 0;
    for (uint32_t d = 0; d < schema->fields[f].ndim; d++)
        var |= schema->fields[f].shape[d] < 0;
    if (!var)
        return stk__error(STK_ESHAPE, "field '%s' has a fixed shape: its samples have no lengths", field);
    if (n > stk_dataset_len(ds))
        return stk__error(-EINVAL, "stk_train_sequence_lengths: %llu samples of %llu", (unsigned long long)n,
                          (unsigned long long)stk_dataset_len(ds));
    for (uint64_t i = 0; i < n; i++) {
        stk_record_t rec;
        int rc = stk_dataset_get(ds, i, &rec);
        if (rc)
            return rc;
        if (rec.var_extent[f] < 0 || rec.var_extent[f] > UINT32_MAX)
            return stk__error(STK_EDATA, "sample %llu: field '%s' has length %lld", (unsigned long long)i, field,
                              (long long)rec.var_extent[f]);
        out[i] = (uint32_t)rec.var_extent[f];
    }
    return 0;
}

int stk__train_check_sequence(const stk_schema_t *schema, int field, const stk_train_inputs_config_t *cfg,
                              const char *desc, const stk_model_t *model)
{
    const stk_field_t *fl = &schema->fields[field];
    int64_t steps = stk_model_input_steps(model);
    if (stk_model_input_dtype(model) == STK_DTYPE_I64) {
        if (!cfg->next_token)
            return stk__error(STK_ECONFIG, "the model takes token ids: the target must be next_token (a language "
                                           "model over field '%s')",
                              fl->name);
        if (fl->ndim != 1 || fl->shape[0] >= 0 ||
            (fl->dtype != STK_DTYPE_U8 && fl->dtype != STK_DTYPE_I8 && fl->dtype != STK_DTYPE_I32 &&
             fl->dtype != STK_DTYPE_I64))
            return stk__error(STK_ESHAPE, "field '%s' is not a variable-length sequence of integer token ids (the "
                                          "data has %s)",
                              fl->name, desc);
        return 0;
    }
    if (cfg->next_token)
        return stk__error(STK_ECONFIG, "next_token needs a model whose input is token ids (steps=T tokens=1)");
    (void)steps;
    return 1; /* features: the caller's element-count check applies */
}
