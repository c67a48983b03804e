/* SPDX-License-Identifier: MIT */
/* Optimizers against PyTorch 1.13 trajectories (tests/data/optim, from
 * tools/gen_optim_fixtures.py): two groups over three ranges plus a frozen
 * range, 20 steps, every step compared. Also: state save/restore continues
 * bit-exactly, bad blobs and bad configs fail with clear messages. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "stoker/optim.h"
#include "optim_fixture.h"

#include <stdlib.h>

#define N 12
#define STEPS 20
/* PyTorch's CPU kernels fuse some multiply-adds (FMA) where we round
 * twice, or the other way round when our compiler contracts: about one ulp
 * per operation. So: 1e-6 relative to max(|p|, 1), parameters being O(1). */
#define TOL 1e-6

static const char *const cases[] = {
    "sgd_plain",     "sgd_momentum",     "sgd_dampening",  "sgd_nesterov_wd",  "sgd_wd_mixed",
    "sgd_maximize",  "adam_default",     "adam_wd_betas",  "adam_amsgrad",     "adam_maximize",
    "adamw_default", "adamw_amsgrad_wd", "rmsprop_plain",  "rmsprop_momentum", "rmsprop_centered",
    "rmsprop_centered_wd_max",
};

typedef struct ocase {
    fixture_t fx;
    stk_optim_kind_t kind;
    stk_optim_range_t ra[2], rb[1];
    stk_optim_group_t groups[2];
    stk_optim_config_t cfg;
    float init[N];
    float grad[STEPS][N];
    float param[STEPS][N];
} ocase_t;

static void read_floats(const char *s, float *out, size_t n)
{
    double d[N];
    assert_int_equal(fx_doubles(s, d, N), n);
    for (size_t i = 0; i < n; i++)
        out[i] = (float)d[i];
}

static void load_case(ocase_t *c, const char *name)
{
    memset(c, 0, sizeof(*c));
    assert_int_equal(fx_load(&c->fx, name), 0);
    char text[256];
    snprintf(text, sizeof(text), "%s", fx_get(&c->fx, "optim"));
    stk_optim_config_t tmp;
    stk_optim_config_default(&tmp, STK_OPTIM_SGD, N);
    assert_int_equal(stk_optim_config_parse(text, &tmp), 0);
    c->kind = tmp.kind;
    stk_optim_config_default(&c->cfg, c->kind, N);
    c->ra[0] = (stk_optim_range_t){0, 3};
    c->ra[1] = (stk_optim_range_t){7, 3};
    c->rb[0] = (stk_optim_range_t){3, 4};
    const char *ga = fx_get(&c->fx, "group");
    assert_non_null(ga);
    assert_true(!strncmp(ga, "A ", 2));
    const char *gb = NULL;
    for (size_t i = 0; i < c->fx.n; i++)
        if (!strcmp(c->fx.lines[i].tag, "group") && !strncmp(c->fx.lines[i].rest, "B ", 2))
            gb = c->fx.lines[i].rest;
    assert_non_null(gb);
    c->groups[0] = (stk_optim_group_t){c->ra, 2, {0}};
    c->groups[1] = (stk_optim_group_t){c->rb, 1, {0}};
    stk_optim_hparams_default(&c->groups[0].h, c->kind);
    stk_optim_hparams_default(&c->groups[1].h, c->kind);
    int rc = stk_optim_hparams_parse(ga + 2, c->kind, &c->groups[0].h);
    if (rc)
        fail_msg("%s: group A: %s", name, stk_error_message());
    rc = stk_optim_hparams_parse(gb + 2, c->kind, &c->groups[1].h);
    if (rc)
        fail_msg("%s: group B: %s", name, stk_error_message());
    c->cfg.groups = c->groups;
    c->cfg.n_groups = 2;
    read_floats(fx_get(&c->fx, "init"), c->init, N);
    size_t ng = 0, np = 0;
    for (size_t i = 0; i < c->fx.n; i++) {
        if (!strcmp(c->fx.lines[i].tag, "grad"))
            read_floats(c->fx.lines[i].rest, c->grad[ng++], N);
        else if (!strcmp(c->fx.lines[i].tag, "param"))
            read_floats(c->fx.lines[i].rest, c->param[np++], N);
    }
    assert_int_equal(ng, STEPS);
    assert_int_equal(np, STEPS);
}

/* Compares one step; returns the largest relative error seen. */
static double check_step(const char *name, int step, const float *got, const float *want)
{
    double worst = 0;
    for (int i = 0; i < N; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        double lim = TOL * fmax(fabs((double)want[i]), 1.0);
        if (!(d <= lim))
            fail_msg("%s step %d element %d: got %.9g, PyTorch %.9g", name, step + 1, i, got[i], want[i]);
        double rel = d / fmax(fabs((double)want[i]), 1.0);
        if (rel > worst)
            worst = rel;
    }
    return worst;
}

static void test_trajectories(void **state)
{
    (void)state;
    static ocase_t c;
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        load_case(&c, cases[k]);
        stk_optim_t *opt = NULL;
        if (stk_optim_create(&opt, &c.cfg))
            fail_msg("%s: %s", cases[k], stk_error_message());
        float p[N];
        memcpy(p, c.init, sizeof(p));
        double worst = 0;
        for (int s = 0; s < STEPS; s++) {
            assert_int_equal(stk_optim_step(opt, p, c.grad[s]), 0);
            double w = check_step(cases[k], s, p, c.param[s]);
            if (w > worst)
                worst = w;
            /* The frozen range is never touched. */
            assert_memory_equal(p + 10, c.init + 10, 2 * sizeof(float));
        }
        assert_int_equal(stk_optim_group_steps(opt, 0), STEPS);
        fprintf(stderr, "%-24s max error / max(|p|, 1): %.2e\n", cases[k], worst);
        stk_optim_destroy(&opt);
        assert_null(opt);
        fx_free(&c.fx);
    }
}

/* Save after 9 steps, restore into a fresh optimizer, finish: bit-exact
 * with the uninterrupted run. */
static void test_state_roundtrip(void **state)
{
    (void)state;
    static ocase_t c;
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        load_case(&c, cases[k]);
        stk_optim_t *a = NULL, *b = NULL;
        assert_int_equal(stk_optim_create(&a, &c.cfg), 0);
        assert_int_equal(stk_optim_create(&b, &c.cfg), 0);
        float pa[N], pb[N];
        memcpy(pa, c.init, sizeof(pa));
        for (int s = 0; s < 9; s++)
            assert_int_equal(stk_optim_step(a, pa, c.grad[s]), 0);
        assert_int_equal(stk_optim_set_lr(a, 1, 0.5 * c.groups[1].h.lr), 0);
        size_t need = stk_optim_state_size(a), wrote = 0;
        unsigned char *blob = malloc(need);
        assert_int_equal(stk_optim_state_save(a, blob, need, &wrote), 0);
        assert_int_equal(wrote, need);
        assert_int_equal(stk_optim_state_load(b, blob, wrote), 0);
        memcpy(pb, pa, sizeof(pb));
        double lr;
        assert_int_equal(stk_optim_get_lr(b, 1, &lr), 0);
        assert_true(lr == 0.5 * c.groups[1].h.lr);
        assert_int_equal(stk_optim_group_steps(b, 0), 9);
        for (int s = 9; s < STEPS; s++) {
            assert_int_equal(stk_optim_step(a, pa, c.grad[s]), 0);
            assert_int_equal(stk_optim_step(b, pb, c.grad[s]), 0);
            assert_memory_equal(pa, pb, sizeof(pa));
        }
        /* And a blob saved by b equals one saved by a. */
        unsigned char *blob2 = malloc(need);
        assert_int_equal(stk_optim_state_save(a, blob, need, &wrote), 0);
        assert_int_equal(stk_optim_state_save(b, blob2, need, &wrote), 0);
        assert_memory_equal(blob, blob2, need);
        free(blob);
        free(blob2);
        stk_optim_destroy(&a);
        stk_optim_destroy(&b);
        fx_free(&c.fx);
    }
}

static void expect_err(int rc, int code, const char *needle)
{
    assert_int_equal(rc, code);
    if (needle && !strstr(stk_error_message(), needle))
        fail_msg("message '%s' lacks '%s'", stk_error_message(), needle);
}

static void test_bad_blobs(void **state)
{
    (void)state;
    static ocase_t c;
    load_case(&c, "adam_amsgrad");
    stk_optim_t *a = NULL, *b = NULL;
    assert_int_equal(stk_optim_create(&a, &c.cfg), 0);
    assert_int_equal(stk_optim_create(&b, &c.cfg), 0);
    float p[N];
    memcpy(p, c.init, sizeof(p));
    for (int s = 0; s < 3; s++)
        assert_int_equal(stk_optim_step(a, p, c.grad[s]), 0);
    size_t need = stk_optim_state_size(a), wrote = 0;
    unsigned char *blob = malloc(need), *bad = malloc(need);
    expect_err(stk_optim_state_save(a, blob, need - 1, &wrote), -ENOSPC, "needs");
    assert_int_equal(wrote, need);
    expect_err(stk_optim_state_save(a, NULL, 0, &wrote), -ENOSPC, NULL);
    expect_err(stk_optim_state_save(NULL, blob, need, &wrote), -EINVAL, NULL);
    assert_int_equal(stk_optim_state_save(a, blob, need, &wrote), 0);

    expect_err(stk_optim_state_load(b, blob, 10), STK_EFORMAT, "not an optimizer state");
    expect_err(stk_optim_state_load(b, blob, need - 1), STK_EFORMAT, "checksum");
    memcpy(bad, blob, need);
    bad[0] = 'X';
    expect_err(stk_optim_state_load(b, bad, need), STK_EFORMAT, "bad magic");
    memcpy(bad, blob, need);
    bad[8] = 2;
    expect_err(stk_optim_state_load(b, bad, need), STK_EFORMAT, "version 2");
    memcpy(bad, blob, need);
    bad[need / 2] ^= 0x40;
    expect_err(stk_optim_state_load(b, bad, need), STK_EFORMAT, "checksum");
    expect_err(stk_optim_state_load(NULL, blob, need), -EINVAL, NULL);
    /* A failed load left b untouched: it still starts from scratch. */
    assert_int_equal(stk_optim_group_steps(b, 0), 0);

    /* Kind, size and layout mismatches. */
    stk_optim_config_t other = c.cfg;
    other.kind = STK_OPTIM_ADAMW;
    stk_optim_t *x = NULL;
    assert_int_equal(stk_optim_create(&x, &other), 0);
    expect_err(stk_optim_state_load(x, blob, need), STK_ESHAPE, "saved by adam, this optimizer is adamw");
    stk_optim_destroy(&x);
    other = c.cfg;
    other.n_params = N + 1;
    assert_int_equal(stk_optim_create(&x, &other), 0);
    expect_err(stk_optim_state_load(x, blob, need), STK_ESHAPE, "parameters");
    stk_optim_destroy(&x);
    other = c.cfg;
    other.n_groups = 1;
    assert_int_equal(stk_optim_create(&x, &other), 0);
    expect_err(stk_optim_state_load(x, blob, need), STK_ESHAPE, "groups");
    stk_optim_destroy(&x);
    stk_optim_range_t moved[2] = {{0, 3}, {8, 3}};
    stk_optim_group_t gs[2] = {c.groups[0], c.groups[1]};
    gs[0].ranges = moved;
    other = c.cfg;
    other.groups = gs;
    assert_int_equal(stk_optim_create(&x, &other), 0);
    expect_err(stk_optim_state_load(x, blob, need), STK_ESHAPE, "range 1 was [7, +3), now [8, +3)");
    stk_optim_destroy(&x);

    free(blob);
    free(bad);
    stk_optim_destroy(&a);
    stk_optim_destroy(&b);
    fx_free(&c.fx);
}

static void test_parse(void **state)
{
    (void)state;
    stk_optim_config_t cfg;
    stk_optim_config_default(&cfg, STK_OPTIM_ADAM, 5);
    assert_int_equal(stk_optim_config_parse("sgd:lr=0.1,momentum=0.9,nesterov=1,weight_decay=5e-4", &cfg), 0);
    assert_int_equal(cfg.kind, STK_OPTIM_SGD);
    assert_true(cfg.defaults.lr == 0.1 && cfg.defaults.momentum == 0.9 && cfg.defaults.nesterov == 1);
    assert_true(cfg.defaults.weight_decay == 5e-4);
    assert_int_equal(cfg.n_params, 5);
    assert_int_equal(stk_optim_config_parse("adamw:betas=0.9;0.98,amsgrad=true", &cfg), 0);
    assert_true(cfg.kind == STK_OPTIM_ADAMW && cfg.defaults.beta2 == 0.98 && cfg.defaults.amsgrad);
    assert_true(cfg.defaults.weight_decay == 1e-2 && cfg.defaults.lr == 1e-3);
    assert_int_equal(stk_optim_config_parse("rmsprop", &cfg), 0);
    assert_true(cfg.kind == STK_OPTIM_RMSPROP && cfg.defaults.alpha == 0.99 && cfg.defaults.lr == 1e-2);

    stk_optim_config_t keep = cfg;
    expect_err(stk_optim_config_parse("lamb:lr=1", &cfg), STK_ECONFIG, "unknown kind 'lamb'");
    expect_err(stk_optim_config_parse("sgd:lr=0.1,momentun=0.9", &cfg), STK_ECONFIG, "unknown key 'momentun'");
    expect_err(stk_optim_config_parse("adam:nesterov=1", &cfg), STK_ECONFIG, "key 'nesterov' does not apply");
    expect_err(stk_optim_config_parse("sgd:lr=abc", &cfg), STK_ECONFIG, "bad value 'abc' for key 'lr'");
    expect_err(stk_optim_config_parse("sgd:lr", &cfg), STK_ECONFIG, "expected key=value");
    expect_err(stk_optim_config_parse("sgd:nesterov=maybe", &cfg), STK_ECONFIG, "key 'nesterov'");
    expect_err(stk_optim_config_parse("adam:betas=0.9", &cfg), STK_ECONFIG, "key 'betas'");
    expect_err(stk_optim_config_parse("adam:beta1=1", &cfg), STK_ECONFIG, "beta1");
    expect_err(stk_optim_config_parse("sgd:lr=-1", &cfg), STK_ECONFIG, "lr");
    expect_err(stk_optim_config_parse("sgd:lr=inf", &cfg), STK_ECONFIG, "'inf' for key 'lr'");
    expect_err(stk_optim_config_parse("sgd:nesterov=1", &cfg), STK_ECONFIG, "nesterov");
    expect_err(stk_optim_config_parse("sgd:nesterov=1,momentum=0.9,dampening=0.1", &cfg), STK_ECONFIG,
               "nesterov");
    expect_err(stk_optim_config_parse("rmsprop:eps=-1", &cfg), STK_ECONFIG, "eps");
    expect_err(stk_optim_config_parse(NULL, &cfg), -EINVAL, NULL);
    assert_memory_equal(&keep, &cfg, sizeof(cfg));

    stk_optim_hparams_t h;
    stk_optim_hparams_default(&h, STK_OPTIM_SGD);
    assert_int_equal(stk_optim_hparams_parse("weight_decay=0,lr=0.5", STK_OPTIM_SGD, &h), 0);
    assert_true(h.lr == 0.5);
    expect_err(stk_optim_hparams_parse("alpha=0.5", STK_OPTIM_SGD, &h), STK_ECONFIG, "'alpha'");
    expect_err(stk_optim_hparams_parse("lr=1", (stk_optim_kind_t)9, &h), -EINVAL, NULL);
    assert_string_equal(stk_optim_kind_name(STK_OPTIM_RMSPROP), "rmsprop");
    assert_string_equal(stk_optim_kind_name((stk_optim_kind_t)0), "invalid");
}

static void test_create_errors(void **state)
{
    (void)state;
    stk_optim_t *o = NULL;
    stk_optim_config_t cfg;
    stk_optim_config_default(&cfg, STK_OPTIM_SGD, 10);
    expect_err(stk_optim_create(NULL, &cfg), -EINVAL, NULL);
    expect_err(stk_optim_create(&o, NULL), -EINVAL, NULL);
    cfg.kind = (stk_optim_kind_t)7;
    expect_err(stk_optim_create(&o, &cfg), STK_ECONFIG, "kind");
    stk_optim_config_default(&cfg, STK_OPTIM_ADAM, 10);
    cfg.defaults.beta2 = 1.5;
    expect_err(stk_optim_create(&o, &cfg), STK_ECONFIG, "group 0: adam: invalid beta2");
    stk_optim_config_default(&cfg, STK_OPTIM_SGD, 10);
    stk_optim_range_t r1[1] = {{0, 6}}, r2[1] = {{5, 5}}, r3[1] = {{8, 3}};
    stk_optim_group_t gs[2] = {{r1, 1, cfg.defaults}, {r2, 1, cfg.defaults}};
    cfg.groups = gs;
    cfg.n_groups = 2;
    expect_err(stk_optim_create(&o, &cfg), STK_ECONFIG, "overlap");
    gs[1].ranges = r3;
    expect_err(stk_optim_create(&o, &cfg), STK_ECONFIG, "outside the 10 parameters");
    gs[1].ranges = NULL;
    expect_err(stk_optim_create(&o, &cfg), -EINVAL, "NULL ranges");
    cfg.groups = NULL;
    expect_err(stk_optim_create(&o, &cfg), -EINVAL, "NULL groups");
    assert_null(o);
    stk_optim_destroy(&o);
    stk_optim_destroy(NULL);
}

static void test_accessors(void **state)
{
    (void)state;
    stk_optim_t *o = NULL;
    stk_optim_config_t cfg;
    stk_optim_config_default(&cfg, STK_OPTIM_ADAM, 4);
    assert_int_equal(stk_optim_create(&o, &cfg), 0);
    assert_int_equal(stk_optim_num_groups(o), 1);
    assert_int_equal(stk_optim_kind(o), STK_OPTIM_ADAM);
    double v;
    assert_int_equal(stk_optim_get_momentum(o, 0, &v), 0);
    assert_true(v == 0.9);
    assert_int_equal(stk_optim_set_momentum(o, 0, 0.8), 0);
    expect_err(stk_optim_set_momentum(o, 0, 1.0), -EINVAL, "beta1");
    expect_err(stk_optim_set_lr(o, 0, -1), -EINVAL, "invalid lr");
    expect_err(stk_optim_set_lr(o, 0, NAN), -EINVAL, "invalid lr");
    expect_err(stk_optim_set_lr(o, 1, 0.1), -ERANGE, "group 1 of 1");
    expect_err(stk_optim_get_lr(o, 3, &v), -ERANGE, NULL);
    expect_err(stk_optim_get_base_lr(o, 0, NULL), -EINVAL, NULL);
    assert_int_equal(stk_optim_set_lr(o, 0, 0.5), 0);
    assert_int_equal(stk_optim_get_base_lr(o, 0, &v), 0);
    assert_true(v == 1e-3);
    float p[4] = {1, 2, 3, 4}, g[4] = {1, 1, 1, 1};
    expect_err(stk_optim_step(o, NULL, g), -EINVAL, NULL);
    expect_err(stk_optim_step(NULL, p, g), -EINVAL, NULL);
    assert_int_equal(stk_optim_step(o, p, g), 0);
    assert_int_equal(stk_optim_group_steps(o, 0), 1);
    assert_int_equal(stk_optim_group_steps(o, 5), 0);
    stk_optim_destroy(&o);
}

/* SGD whose momentum goes to 0 and back restarts its buffer from the
 * gradient, as PyTorch does (the buffer is dropped after a step without
 * momentum). */
static void test_sgd_momentum_restart(void **state)
{
    (void)state;
    stk_optim_t *o = NULL;
    stk_optim_config_t cfg;
    stk_optim_config_default(&cfg, STK_OPTIM_SGD, 1);
    cfg.defaults.lr = 1;
    cfg.defaults.momentum = 0.5;
    assert_int_equal(stk_optim_create(&o, &cfg), 0);
    float p[1] = {0}, g[1] = {1};
    assert_int_equal(stk_optim_step(o, p, g), 0); /* buf = 1 */
    assert_true(p[0] == -1.0f);
    assert_int_equal(stk_optim_step(o, p, g), 0); /* buf = 1.5 */
    assert_true(p[0] == -2.5f);
    assert_int_equal(stk_optim_set_momentum(o, 0, 0), 0);
    assert_int_equal(stk_optim_step(o, p, g), 0);
    assert_true(p[0] == -3.5f);
    assert_int_equal(stk_optim_set_momentum(o, 0, 0.5), 0);
    assert_int_equal(stk_optim_step(o, p, g), 0); /* buf = 1 again */
    assert_true(p[0] == -4.5f);
    stk_optim_destroy(&o);
}

/* Random texts from the grammar's alphabet give 0 or STK_ECONFIG; random
 * byte flips in a blob give an error (or, where the checksum cannot tell,
 * a clean load), never a crash. */
static void test_garbage(void **state)
{
    (void)state;
    static const char *const atoms[] = {
        "sgd", "adam", "adamw", "rmsprop", ":", ",", "=", ";", "lr", "momentum", "betas", "nesterov",
        "weight_decay", "eps", "0.9", "1", "-1", "true", "nan", "1e999", "x", " ",
    };
    stk_rng_t rng;
    stk_rng_init(&rng, 7, 0);
    for (int it = 0; it < 3000; it++) {
        char text[256] = "";
        unsigned n = 1 + (unsigned)stk_rng_below(&rng, 12);
        for (unsigned j = 0; j < n; j++)
            strcat(text, atoms[stk_rng_below(&rng, sizeof(atoms) / sizeof(atoms[0]))]);
        stk_optim_config_t cfg;
        stk_optim_config_default(&cfg, STK_OPTIM_SGD, 4);
        int rc = stk_optim_config_parse(text, &cfg);
        if (rc != 0 && rc != STK_ECONFIG)
            fail_msg("parse '%s' returned %d", text, rc);
    }
    stk_optim_config_t cfg;
    stk_optim_config_default(&cfg, STK_OPTIM_RMSPROP, 8);
    cfg.defaults.momentum = 0.5;
    cfg.defaults.centered = 1;
    stk_optim_t *a = NULL, *b = NULL;
    assert_int_equal(stk_optim_create(&a, &cfg), 0);
    assert_int_equal(stk_optim_create(&b, &cfg), 0);
    float p[8] = {1, 2, 3, 4, 5, 6, 7, 8}, g[8] = {1, -1, 1, -1, 1, -1, 1, -1};
    assert_int_equal(stk_optim_step(a, p, g), 0);
    size_t need = stk_optim_state_size(a), wrote;
    unsigned char *blob = malloc(need), *bad = malloc(need);
    assert_int_equal(stk_optim_state_save(a, blob, need, &wrote), 0);
    for (int it = 0; it < 2000; it++) {
        memcpy(bad, blob, need);
        size_t len = stk_rng_below(&rng, 4) ? need : (size_t)stk_rng_below(&rng, need + 1);
        bad[stk_rng_below(&rng, need)] ^= (unsigned char)(1u << stk_rng_below(&rng, 8));
        int rc = stk_optim_state_load(b, bad, len);
        assert_true(rc == 0 || rc == STK_EFORMAT || rc == STK_ESHAPE || rc == STK_EDATA);
    }
    free(blob);
    free(bad);
    stk_optim_destroy(&a);
    stk_optim_destroy(&b);
}

typedef struct slice_job {
    const stk_optim_t *opt;
    float *p;
    const float *g;
    size_t off, cnt;
    int rc;
} slice_job_t;

static void *run_slice(void *arg)
{
    slice_job_t *j = arg;
    j->rc = stk_optim_step_slice(j->opt, j->p, j->g, j->off, j->cnt);
    return NULL;
}

/* begin / slices / end, with slices in a scrambled order and on threads,
 * gives the same bits as stk_optim_step. */
static void test_step_slices(void **state)
{
    (void)state;
    static ocase_t c;
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        load_case(&c, cases[k]);
        stk_optim_t *a = NULL, *b = NULL, *t = NULL;
        assert_int_equal(stk_optim_create(&a, &c.cfg), 0);
        assert_int_equal(stk_optim_create(&b, &c.cfg), 0);
        assert_int_equal(stk_optim_create(&t, &c.cfg), 0);
        float pa[N], pb[N], pt[N];
        memcpy(pa, c.init, sizeof(pa));
        memcpy(pb, c.init, sizeof(pb));
        memcpy(pt, c.init, sizeof(pt));
        for (int s = 0; s < STEPS; s++) {
            assert_int_equal(stk_optim_step(a, pa, c.grad[s]), 0);
            /* Slices cut across the group ranges: [5,12) [0,2) [2,5). */
            assert_int_equal(stk_optim_step_begin(b), 0);
            assert_int_equal(stk_optim_step_slice(b, pb, c.grad[s], 5, 7), 0);
            assert_int_equal(stk_optim_step_slice(b, pb, c.grad[s], 0, 2), 0);
            assert_int_equal(stk_optim_step_slice(b, pb, c.grad[s], 2, 3), 0);
            assert_int_equal(stk_optim_step_end(b), 0);
            assert_memory_equal(pa, pb, sizeof(pa));
            /* Four threads, three elements each. */
            pthread_t th[4];
            slice_job_t jobs[4];
            assert_int_equal(stk_optim_step_begin(t), 0);
            for (int i = 0; i < 4; i++) {
                jobs[i] = (slice_job_t){t, pt, c.grad[s], (size_t)i * 3, 3, -1};
                assert_int_equal(pthread_create(&th[i], NULL, run_slice, &jobs[i]), 0);
            }
            for (int i = 0; i < 4; i++) {
                pthread_join(th[i], NULL);
                assert_int_equal(jobs[i].rc, 0);
            }
            assert_int_equal(stk_optim_step_end(t), 0);
            assert_memory_equal(pa, pt, sizeof(pa));
        }
        stk_optim_destroy(&a);
        stk_optim_destroy(&b);
        stk_optim_destroy(&t);
        fx_free(&c.fx);
    }

    stk_optim_config_t cfg;
    stk_optim_config_default(&cfg, STK_OPTIM_ADAM, 4);
    stk_optim_t *o = NULL;
    assert_int_equal(stk_optim_create(&o, &cfg), 0);
    float p[4] = {0}, g[4] = {1, 1, 1, 1};
    unsigned char blob[4096];
    size_t wrote;
    expect_err(stk_optim_step_slice(o, p, g, 0, 4), STK_ESTATE, "no open step");
    expect_err(stk_optim_step_end(o), STK_ESTATE, "no open step");
    assert_int_equal(stk_optim_step_begin(o), 0);
    expect_err(stk_optim_step_begin(o), STK_ESTATE, "already open");
    expect_err(stk_optim_step(o, p, g), STK_ESTATE, "already open");
    expect_err(stk_optim_state_save(o, blob, sizeof(blob), &wrote), STK_ESTATE, "step is open");
    expect_err(stk_optim_state_load(o, blob, sizeof(blob)), STK_ESTATE, "step is open");
    expect_err(stk_optim_step_slice(o, p, g, 3, 2), -ERANGE, "outside the 4 parameters");
    expect_err(stk_optim_step_slice(o, NULL, g, 0, 1), -EINVAL, NULL);
    assert_int_equal(stk_optim_step_slice(o, p, g, 0, 0), 0);
    assert_int_equal(stk_optim_step_slice(o, p, g, 0, 4), 0);
    assert_int_equal(stk_optim_step_end(o), 0);
    expect_err(stk_optim_step_begin(NULL), -EINVAL, NULL);
    expect_err(stk_optim_step_end(NULL), -EINVAL, NULL);
    assert_int_equal(stk_optim_group_steps(o, 0), 1);
    stk_optim_destroy(&o);
}

/* A large array: stk_optim_step (split over OpenMP threads when the
 * library is built with OpenMP) equals one single-threaded slice. */
static void test_large_step(void **state)
{
    (void)state;
    const size_t n = 300007;
    float *p1 = malloc(n * sizeof(float)), *p2 = malloc(n * sizeof(float)), *g = malloc(n * sizeof(float));
    assert_non_null(p1);
    assert_non_null(p2);
    assert_non_null(g);
    const stk_optim_kind_t kinds[] = {STK_OPTIM_SGD, STK_OPTIM_ADAMW, STK_OPTIM_RMSPROP};
    for (size_t k = 0; k < 3; k++) {
        stk_optim_config_t cfg;
        stk_optim_config_default(&cfg, kinds[k], n);
        cfg.defaults.momentum = 0.9;
        stk_optim_range_t ra[2] = {{0, 100000}, {250000, 50007}}, rb[1] = {{100000, 150000}};
        stk_optim_group_t gs[2] = {{ra, 2, cfg.defaults}, {rb, 1, cfg.defaults}};
        gs[1].h.weight_decay = 0;
        cfg.groups = gs;
        cfg.n_groups = 2;
        stk_optim_t *a = NULL, *b = NULL;
        assert_int_equal(stk_optim_create(&a, &cfg), 0);
        assert_int_equal(stk_optim_create(&b, &cfg), 0);
        stk_rng_t rng;
        stk_rng_init(&rng, 3, k);
        for (size_t i = 0; i < n; i++)
            p1[i] = p2[i] = stk_rng_uniform(&rng) - 0.5f;
        for (int s = 0; s < 3; s++) {
            for (size_t i = 0; i < n; i++)
                g[i] = stk_rng_uniform(&rng) - 0.5f;
            assert_int_equal(stk_optim_step(a, p1, g), 0);
            assert_int_equal(stk_optim_step_begin(b), 0);
            assert_int_equal(stk_optim_step_slice(b, p2, g, 0, n), 0);
            assert_int_equal(stk_optim_step_end(b), 0);
        }
        assert_memory_equal(p1, p2, n * sizeof(float));
        stk_optim_destroy(&a);
        stk_optim_destroy(&b);
    }
    free(p1);
    free(p2);
    free(g);
}

/* ------------------------------------------------ optimizers for a model */

static const char *const small_model =
    "input name=data shape=2,6,6\n"
    "conv2d name=conv1 out=8 kernel=3 pad=1\n"
    "batchnorm2d name=bn1\n"
    "relu name=relu1\n"
    "flatten name=flat\n"
    "linear name=fc out=3\n"
    "cross_entropy name=loss\n";

static stk_model_t *make_model(void)
{
    stk_model_builder_t *b = NULL;
    assert_int_equal(stk_model_builder_create(&b), 0);
    assert_int_equal(stk_model_builder_parse(b, small_model, "small"), 0);
    stk_model_config_t mc;
    stk_model_config_default(&mc);
    mc.batch_size = 2;
    stk_model_t *m = NULL;
    assert_int_equal(stk_model_create(&m, b, &mc), 0);
    stk_model_builder_destroy(&b);
    /* conv1.weight, conv1.bias, bn1.weight, bn1.bias, fc.weight, fc.bias */
    assert_int_equal(stk_model_num_params(m), 6);
    return m;
}

/* A spec, and the same optimizer written out by hand: the defaults' text,
 * each parameter's group (in stk_model_param_info order) and each group's
 * overrides of the defaults. */
typedef struct model_case {
    const char *spec, *defaults;
    size_t ng;
    int gid[6];
    const char *over[3];
} model_case_t;

static const model_case_t model_cases[] = {
    {"adamw:lr=1e-2,weight_decay=0.05,amsgrad=1,no_decay=bias_norm", "adamw:lr=1e-2,weight_decay=0.05,amsgrad=1",
     2, {0, 1, 1, 1, 0, 1}, {"", "weight_decay=0"}},
    {"sgd:lr=0.1,momentum=0.9,nesterov=1,weight_decay=1e-3|fc.*:lr=0.01|bn*:weight_decay=0",
     "sgd:lr=0.1,momentum=0.9,nesterov=1,weight_decay=1e-3", 3, {0, 0, 2, 2, 1, 1},
     {"", "lr=0.01", "weight_decay=0"}},
    /* bn1.bias is a norm parameter, not a bias: no_decay=bias leaves it. */
    {"rmsprop:lr=1e-3,momentum=0.9,centered=1,weight_decay=1e-2,no_decay=bias|*.weight:lr=2e-3",
     "rmsprop:lr=1e-3,momentum=0.9,centered=1,weight_decay=1e-2", 3, {1, 2, 1, 0, 1, 2},
     {"", "lr=2e-3", "weight_decay=0"}},
    {"adam:lr=1e-3,weight_decay=1e-4,no_decay=norm", "adam:lr=1e-3,weight_decay=1e-4", 2, {0, 0, 1, 1, 0, 0},
     {"", "weight_decay=0"}},
};

static void fill_grads(stk_model_t *m, stk_rng_t *rng)
{
    size_t n;
    float *g = stk_model_grads(m, &n);
    for (size_t i = 0; i < n; i++)
        g[i] = stk_rng_uniform(rng) - 0.5f;
}

/* An optimizer made for a model from text steps the model's arenas through
 * the backend exactly (bit for bit) as the hand-made one over arrays, so
 * the groups, the no_decay option and the fused update slot are right. */
static void test_model_groups(void **state)
{
    (void)state;
    for (size_t c = 0; c < sizeof(model_cases) / sizeof(model_cases[0]); c++) {
        const model_case_t *mc = &model_cases[c];
        stk_model_t *m = make_model();
        stk_optim_t *opt = NULL;
        if (stk_optim_create_for_model(&opt, m, mc->spec) != 0)
            fail_msg("%s: %s", mc->spec, stk_error_message());
        assert_int_equal(stk_optim_num_groups(opt), mc->ng);
        /* The same by hand: one range per tensor. */
        stk_optim_config_t cfg;
        memset(&cfg, 0, sizeof(cfg));
        assert_int_equal(stk_optim_config_parse(mc->defaults, &cfg), 0);
        size_t np;
        float *params = stk_model_params(m, &np);
        cfg.n_params = np;
        stk_optim_range_t ranges[6];
        stk_optim_group_t groups[3];
        size_t nr = 0;
        for (size_t g = 0; g < mc->ng; g++) {
            groups[g].ranges = ranges + nr;
            groups[g].n_ranges = 0;
            groups[g].h = cfg.defaults;
            assert_int_equal(stk_optim_hparams_parse(mc->over[g], cfg.kind, &groups[g].h), 0);
            for (size_t i = 0; i < 6; i++) {
                if (mc->gid[i] != (int)g)
                    continue;
                stk_param_info_t info;
                assert_int_equal(stk_model_param_info(m, i, &info), 0);
                ranges[nr++] = (stk_optim_range_t){info.offset, info.count};
                groups[g].n_ranges++;
            }
            double lr;
            assert_int_equal(stk_optim_get_base_lr(opt, g, &lr), 0);
            assert_true(lr == groups[g].h.lr);
        }
        cfg.groups = groups;
        cfg.n_groups = mc->ng;
        stk_optim_t *ref = NULL;
        assert_int_equal(stk_optim_create(&ref, &cfg), 0);
        float *p = malloc(np * sizeof(float)), *keep = malloc(np * sizeof(float));
        memcpy(p, params, np * sizeof(float));
        stk_rng_t rng;
        stk_rng_init(&rng, 7, c);
        for (int s = 0; s < 4; s++) {
            fill_grads(m, &rng);
            if (s == 3) {
                /* Save, step, then rewind and step a fresh optimizer that
                 * loaded the saved state: the state moves through the
                 * backend both ways. */
                size_t len = stk_optim_state_size(opt), w = 0;
                void *blob = malloc(len);
                assert_int_equal(stk_optim_state_save(opt, blob, len, &w), 0);
                memcpy(keep, params, np * sizeof(float));
                assert_int_equal(stk_optim_step_model(opt, m), 0);
                float *after = malloc(np * sizeof(float));
                memcpy(after, params, np * sizeof(float));
                memcpy(params, keep, np * sizeof(float));
                stk_optim_t *again = NULL;
                assert_int_equal(stk_optim_create_for_model(&again, m, mc->spec), 0);
                assert_int_equal(stk_optim_state_load(again, blob, w), 0);
                assert_int_equal(stk_optim_step_model(again, m), 0);
                assert_memory_equal(after, params, np * sizeof(float));
                stk_optim_destroy(&again);
                free(after);
                free(blob);
            } else {
                assert_int_equal(stk_optim_step_model(opt, m), 0);
            }
            assert_int_equal(stk_optim_step(ref, p, stk_model_grads(m, NULL)), 0);
            if (memcmp(p, params, np * sizeof(float)) != 0)
                fail_msg("%s: step %d differs from the optimizer over arrays", mc->spec, s);
        }
        free(p);
        free(keep);
        stk_optim_destroy(&ref);
        stk_optim_destroy(&opt);
        stk_model_destroy(&m);
    }
}

static void expect_model_err(stk_model_t *m, const char *spec, int code, const char *needle)
{
    stk_optim_t *o = NULL;
    int rc = stk_optim_create_for_model(&o, m, spec);
    if (rc != code)
        fail_msg("'%s': got %d (%s), expected %d", spec, rc, stk_error_message(), code);
    assert_null(o);
    if (needle && !strstr(stk_error_message(), needle))
        fail_msg("'%s': message '%s' lacks '%s'", spec, stk_error_message(), needle);
}

static void test_model_errors(void **state)
{
    (void)state;
    stk_model_t *m = make_model(), *other = make_model();
    expect_model_err(m, "sgd|nomatch*:lr=1", STK_ECONFIG, "pattern 'nomatch*' matches no parameter");
    expect_model_err(m, "sgd:no_decay=maybe", STK_ECONFIG, "key 'no_decay'");
    expect_model_err(m, "sgd||", STK_ECONFIG, "empty group");
    expect_model_err(m, "sgd|*.bias:lr=1|", STK_ECONFIG, "empty group");
    expect_model_err(m, "sgd|*.bias", STK_ECONFIG, "expected 'pattern");
    expect_model_err(m, "sgd|*.bias:nesterov=1", STK_ECONFIG, "group 1 ('*.bias')");
    expect_model_err(m, "sgd|*.bias:bogus=1", STK_ECONFIG, "unknown key 'bogus'");
    expect_model_err(m, "sgd|*.bias:no_decay=bias", STK_ECONFIG, "'no_decay' goes with the defaults");
    expect_model_err(m, "sgdx:lr=1", STK_ECONFIG, "unknown kind 'sgdx'");
    expect_model_err(m, "", STK_ECONFIG, "empty spec");
    expect_model_err(m, "adam:lr=-1", STK_ECONFIG, "lr");
    stk_optim_t *o = NULL;
    assert_int_equal(stk_optim_create_for_model(NULL, m, "sgd"), -EINVAL);
    assert_int_equal(stk_optim_create_for_model(&o, NULL, "sgd"), -EINVAL);
    assert_int_equal(stk_optim_create_for_model(&o, m, NULL), -EINVAL);
    /* The model-only keys are refused where there is no model. */
    stk_optim_config_t cfg;
    stk_optim_config_default(&cfg, STK_OPTIM_SGD, 4);
    assert_int_equal(stk_optim_config_parse("sgd:no_decay=bias_norm", &cfg), STK_ECONFIG);
    assert_non_null(strstr(stk_error_message(), "stk_optim_create_for_model"));
    assert_int_equal(stk_optim_config_parse("sgd|*.bias:lr=1", &cfg), STK_ECONFIG);
    assert_non_null(strstr(stk_error_message(), "stk_optim_create_for_model"));
    /* A pattern group takes its parameters before no_decay does. */
    assert_int_equal(stk_optim_create_for_model(&o, m, "sgd:lr=0.5,no_decay=bias_norm|*:lr=0.25"), 0);
    assert_int_equal(stk_optim_num_groups(o), 3);
    double lr;
    assert_int_equal(stk_optim_get_base_lr(o, 1, &lr), 0);
    assert_true(lr == 0.25);
    /* Stepping: only its own model; an optimizer over arrays refuses. */
    assert_int_equal(stk_optim_step_model(o, other), -EINVAL);
    assert_int_equal(stk_optim_step_model(o, NULL), -EINVAL);
    assert_int_equal(stk_optim_step_model(NULL, m), -EINVAL);
    assert_int_equal(stk_optim_step_model(o, m), 0);
    assert_int_equal(stk_optim_group_steps(o, 0), 1);
    stk_optim_t *arr = NULL;
    stk_optim_config_default(&cfg, STK_OPTIM_SGD, 4);
    assert_int_equal(stk_optim_create(&arr, &cfg), 0);
    assert_int_equal(stk_optim_step_model(arr, m), STK_ESTATE);
    /* A blob of the array optimizer does not load into the model's. */
    float p[4] = {0}, g[4] = {1, 1, 1, 1};
    assert_int_equal(stk_optim_step(arr, p, g), 0);
    size_t len = stk_optim_state_size(arr), w;
    void *blob = malloc(len);
    assert_int_equal(stk_optim_state_save(arr, blob, len, &w), 0);
    assert_int_equal(stk_optim_state_load(o, blob, w), STK_ESHAPE);
    free(blob);
    stk_optim_destroy(&arr);
    stk_optim_destroy(&o);
    stk_model_destroy(&other);
    stk_model_destroy(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_trajectories),   cmocka_unit_test(test_state_roundtrip),
        cmocka_unit_test(test_bad_blobs),      cmocka_unit_test(test_parse),
        cmocka_unit_test(test_create_errors),  cmocka_unit_test(test_accessors),
        cmocka_unit_test(test_sgd_momentum_restart), cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_step_slices),          cmocka_unit_test(test_large_step),
        cmocka_unit_test(test_model_groups),         cmocka_unit_test(test_model_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
