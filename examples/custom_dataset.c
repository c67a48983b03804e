/* SPDX-License-Identifier: MIT */
/* A dataset of one's own through the dataset vtable: the rows of a CSV
 * file ("label,x,y"), read by each worker process from the path in the
 * argument blob (a dataset never hands pointers to workers), fed through a
 * loader with 2 workers into a small MLP. Exits 0 when the MLP separates
 * the classes (test accuracy over 90%).
 *   custom_dataset [CSV]   (without CSV: three Gaussian blobs are written
 *                           to a temporary file first) */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <stoker/stoker.h>

#define CHECK(call)                                                                                                   \
    do {                                                                                                              \
        int rc_ = (call);                                                                                             \
        if (rc_ < 0) {                                                                                                \
            fprintf(stderr, "%s: %s (%s)\n", #call, stk_error_message(), stk_err_name(rc_));                          \
            exit(1);                                                                                                  \
        }                                                                                                             \
    } while (0)

/* ---- the dataset: one instance per process, built from the path --------- */

typedef struct csv {
    uint64_t n;
    float *xy;      /* 2 features per row */
    int64_t *label;
} csv_t;

static void csv_close(void *inst)
{
    csv_t *c = inst;
    free(c->xy);
    free(c->label);
    free(c);
}

static int csv_open(const void *args, size_t len, uint32_t worker, void **inst)
{
    (void)worker;
    (void)len;
    FILE *f = fopen((const char *)args, "r"); /* args: the path, NUL included */
    if (!f)
        return -errno;
    csv_t *c = calloc(1, sizeof *c);
    uint64_t cap = 0;
    long long label;
    float x, y;
    int rc = 0;
    while (c && (rc = fscanf(f, "%lld,%f,%f\n", &label, &x, &y)) == 3) {
        if (c->n == cap) {
            cap = cap ? 2 * cap : 256;
            c->xy = realloc(c->xy, cap * 2 * sizeof *c->xy);
            c->label = realloc(c->label, cap * sizeof *c->label);
            if (!c->xy || !c->label)
                break;
        }
        c->xy[2 * c->n] = x;
        c->xy[2 * c->n + 1] = y;
        c->label[c->n++] = label;
    }
    fclose(f);
    if (!c || !c->xy || !c->label || rc != EOF) {
        if (c)
            csv_close(c);
        return c ? STK_EDATA : -ENOMEM; /* a line that is not "label,x,y" */
    }
    *inst = c;
    return 0;
}

static uint64_t csv_len(void *inst)
{
    return ((csv_t *)inst)->n;
}

static int csv_schema(void *inst, stk_schema_t *out)
{
    (void)inst;
    int64_t two = 2;
    memset(out, 0, sizeof *out);
    int rc = stk_schema_add(out, "features", STK_DTYPE_F32, 1, &two);
    return rc ? rc : stk_schema_add(out, "label", STK_DTYPE_I64, 0, NULL);
}

static size_t csv_max_sample_bytes(void *inst)
{
    (void)inst;
    return 2 * sizeof(float) + sizeof(int64_t);
}

/* A sample depends on its index only: any worker may load any of them. */
static int csv_get(void *inst, uint64_t i, void *buf, size_t cap, stk_record_t *rec, stk_dataset_stats_t *st)
{
    (void)buf;
    (void)cap;
    (void)st;
    csv_t *c = inst;
    rec->nfields = 2;
    rec->data[0] = &c->xy[2 * i];
    rec->bytes[0] = 2 * sizeof(float);
    rec->var_extent[0] = -1;
    rec->data[1] = &c->label[i];
    rec->bytes[1] = sizeof(int64_t);
    rec->var_extent[1] = -1;
    return 0;
}

static const stk_dataset_ops_t csv_ops = {
    .name = "csv",
    .open = csv_open,
    .close = csv_close,
    .len = csv_len,
    .schema = csv_schema,
    .max_sample_bytes = csv_max_sample_bytes,
    .get = csv_get,
};

/* ---- a CSV to read, and a model that learns it ----------------------------- */

static void write_blobs(const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        exit(1);
    }
    stk_rng_t rng;
    stk_rng_init(&rng, 42, 0);
    const float cx[3] = {-2, 2, 0}, cy[3] = {-1, -1, 2};
    for (int i = 0; i < 600; i++) {
        int k = (int)stk_rng_below(&rng, 3);
        /* Box-Muller: two normal draws */
        double u = stk_rng_uniform_f64(&rng) + 1e-12, v = stk_rng_uniform_f64(&rng);
        double r = 0.9 * sqrt(-2 * log(u));
        fprintf(f, "%d,%.5f,%.5f\n", k, cx[k] + r * cos(6.283185307 * v), cy[k] + r * sin(6.283185307 * v));
    }
    fclose(f);
}

static stk_loader_t *make_loader(stk_dataset_t *ds, int train)
{
    stk_loader_config_t c;
    stk_loader_config_default(&c);
    c.batch_size = 32;
    c.shuffle = train;
    c.seed = 3;
    c.num_workers = 2;
    c.persistent_workers = 1;
    stk_loader_t *l;
    CHECK(stk_loader_create(&l, ds, &c));
    return l;
}

int main(int argc, char **argv)
{
    CHECK(stk_loader_forkserver_start());
    char path[64] = "/tmp/stoker-blobs-XXXXXX";
    if (argc > 1) {
        snprintf(path, sizeof path, "%s", argv[1]);
    } else {
        int fd = mkstemp(path);
        if (fd < 0)
            return 1;
        close(fd);
        write_blobs(path);
    }
    stk_dataset_t *ds;
    CHECK(stk_dataset_create(&ds, &csv_ops, path, strlen(path) + 1));
    printf("%s: %llu rows\n", path, (unsigned long long)stk_dataset_len(ds));
    stk_loader_t *train = make_loader(ds, 1), *eval = make_loader(ds, 0);

    stk_model_builder_t *b;
    CHECK(stk_model_builder_create(&b));
    CHECK(stk_model_builder_parse(b, "input shape=2\nlinear out=16\nrelu\nlinear out=3\ncross_entropy\n", "mlp"));
    stk_model_config_t mc;
    stk_model_config_default(&mc);
    mc.batch_size = 32;
    mc.seed = 1;
    stk_model_t *model;
    CHECK(stk_model_create(&model, b, &mc));
    stk_model_builder_destroy(&b);
    stk_optim_t *opt;
    CHECK(stk_optim_create_for_model(&opt, model, "adam:lr=0.02"));
    stk_train_inputs_config_t ic;
    stk_train_inputs_config_default(&ic);
    ic.image_field = "features";
    stk_train_inputs_t *inputs;
    CHECK(stk_train_inputs_create(&inputs, &ic));

    stk_train_eval_t ev = {0};
    for (uint64_t epoch = 0; epoch < 8; epoch++) {
        CHECK(stk_loader_set_epoch(train, epoch));
        stk_batch_t batch;
        int rc;
        while ((rc = stk_loader_next(train, &batch)) == 0) {
            stk_tensor_t x, y;
            float loss;
            CHECK(stk_train_inputs_get(inputs, &batch, &x, &y));
            CHECK(stk_model_forward_tensor(model, &x, &y, &loss));
            CHECK(stk_model_backward(model));
            CHECK(stk_optim_step_model(opt, model));
            stk_model_zero_grad(model);
            stk_loader_release(train, &batch);
        }
        CHECK(rc);
        CHECK(stk_train_evaluate(model, eval, inputs, 1, NULL, &ev));
        printf("epoch %llu: loss %.4f, accuracy %.2f%%\n", (unsigned long long)epoch + 1, ev.loss, 100 * ev.top1);
    }

    stk_train_inputs_destroy(&inputs);
    stk_optim_destroy(&opt);
    stk_model_destroy(&model);
    stk_loader_destroy(&train);
    stk_loader_destroy(&eval);
    stk_dataset_destroy(&ds);
    stk_loader_forkserver_stop();
    if (argc == 1)
        unlink(path);
    return ev.top1 > 0.9 ? 0 : 1;
}
