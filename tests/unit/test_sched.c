/* SPDX-License-Identifier: MIT */
/* LR schedulers against PyTorch 1.13 lr (and momentum) trajectories over
 * 100 steps, two groups (tests/data/optim/sched_*.txt, from
 * tools/gen_optim_fixtures.py); the cooldown phase against its definition;
 * state save/restore continuing bit-exactly; bad texts and blobs. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "stoker/optim.h"
#include "optim_fixture.h"

/* Our closed forms against PyTorch's recursive products: double rounding
 * only, so 1e-9 relative is already loose. */
#define TOL 1e-9

static const char *const cases[] = {
    "sched_step",          "sched_multistep",   "sched_exp",           "sched_cosine",
    "sched_cosine_wrap",   "sched_linear",      "sched_constant",      "sched_warmup_cosine",
    "sched_chain3",        "sched_onecycle_cos", "sched_onecycle_lin3", "sched_onecycle_adam",
    "sched_plateau_min",   "sched_plateau_max_abs",
};

typedef struct srow {
    double metric, lr[2], mom[2];
} srow_t;

typedef struct scase {
    fixture_t fx;
    stk_sched_config_t cfg;
    stk_optim_kind_t okind;
    srow_t rows[128];
    size_t n_rows;
} scase_t;

static void load_case(scase_t *c, const char *name)
{
    memset(c, 0, sizeof(*c));
    assert_int_equal(fx_load(&c->fx, name), 0);
    double v[5] = {0, 0, 0, 0, 0};
    assert_int_equal(fx_doubles(fx_get(&c->fx, "total_steps"), v, 1), 1);
    stk_sched_config_default(&c->cfg);
    c->cfg.total_steps = (int64_t)v[0];
    assert_int_equal(fx_doubles(fx_get(&c->fx, "steps_per_epoch"), v, 1), 1);
    if (stk_sched_parse(fx_get(&c->fx, "sched"), (int64_t)v[0], &c->cfg))
        fail_msg("%s: %s", name, stk_error_message());
    c->okind = !strcmp(fx_get(&c->fx, "optim"), "adam") ? STK_OPTIM_ADAM : STK_OPTIM_SGD;
    for (size_t i = 0; i < c->fx.n; i++) {
        if (strcmp(c->fx.lines[i].tag, "row"))
            continue;
        assert_true(c->n_rows < 128);
        assert_int_equal(fx_doubles(c->fx.lines[i].rest, v, 5), 5);
        srow_t *r = &c->rows[c->n_rows++];
        *r = (srow_t){v[0], {v[1], v[2]}, {v[3], v[4]}};
    }
}

/* Two groups, lr 0.1 and 0.01, as in the generator; SGD with momentum 0.9
 * or Adam. */
static stk_optim_t *make_opt(stk_optim_kind_t kind)
{
    static stk_optim_range_t ra[1] = {{0, 2}}, rb[1] = {{2, 3}};
    stk_optim_config_t cfg;
    stk_optim_config_default(&cfg, kind, 5);
    stk_optim_group_t gs[2] = {{ra, 1, cfg.defaults}, {rb, 1, cfg.defaults}};
    gs[0].h.lr = 0.1;
    gs[1].h.lr = 0.01;
    if (kind == STK_OPTIM_SGD)
        gs[0].h.momentum = gs[1].h.momentum = 0.9;
    cfg.groups = gs;
    cfg.n_groups = 2;
    stk_optim_t *o = NULL;
    assert_int_equal(stk_optim_create(&o, &cfg), 0);
    return o;
}

static int step(stk_sched_t *s, double metric)
{
    return isnan(metric) ? stk_sched_step(s) : stk_sched_step_metric(s, metric);
}

static void check_row(const char *name, size_t t, int last, stk_optim_t *o, stk_sched_t *s, const srow_t *r)
{
    for (size_t g = 0; g < 2; g++) {
        double lr, m;
        assert_int_equal(stk_optim_get_lr(o, g, &lr), 0);
        assert_true(lr == stk_sched_lr(s, g));
        if (strstr(name, "onecycle") && last) {
            /* PyTorch extrapolates past the end here; we hold min_lr. */
            double max_lr = strstr(name, "lin3") ? 0.5 : (g ? 0.01 : 0.1);
            double min_lr = strstr(name, "lin3") ? max_lr / 10 / 100 : max_lr / 25 / 1e4;
            if (!(fabs(lr - min_lr) <= 1e-12 * min_lr))
                fail_msg("%s t=%zu group %zu: lr %.17g, want min_lr %.17g", name, t, g, lr, min_lr);
            continue;
        }
        if (!(fabs(lr - r->lr[g]) <= TOL * fabs(r->lr[g]) + 1e-15))
            fail_msg("%s t=%zu group %zu: lr %.17g, PyTorch %.17g", name, t, g, lr, r->lr[g]);
        assert_int_equal(stk_optim_get_momentum(o, g, &m), 0);
        if (!(fabs(m - r->mom[g]) <= 1e-12))
            fail_msg("%s t=%zu group %zu: momentum %.17g, PyTorch %.17g", name, t, g, m, r->mom[g]);
    }
}

static void test_trajectories(void **state)
{
    (void)state;
    static scase_t c;
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        load_case(&c, cases[k]);
        stk_optim_t *o = make_opt(c.okind);
        stk_sched_t *s = NULL;
        if (stk_sched_create(&s, &c.cfg, o))
            fail_msg("%s: %s", cases[k], stk_error_message());
        check_row(cases[k], 0, 0, o, s, &c.rows[0]);
        double worst = 0;
        for (size_t t = 1; t < c.n_rows; t++) {
            assert_int_equal(step(s, c.rows[t].metric), 0);
            check_row(cases[k], t, t + 1 == c.n_rows, o, s, &c.rows[t]);
            for (size_t g = 0; g < 2 && t + 1 < c.n_rows; g++) {
                double e = fabs(stk_sched_lr(s, g) - c.rows[t].lr[g]) / fmax(fabs(c.rows[t].lr[g]), 1e-300);
                worst = e > worst ? e : worst;
            }
        }
        fprintf(stderr, "%-22s max relative lr error %.2e\n", cases[k], worst);
        assert_int_equal(stk_sched_steps(s), (int64_t)c.n_rows - 1);
        stk_sched_destroy(&s);
        assert_null(s);
        stk_optim_destroy(&o);
        fx_free(&c.fx);
    }
}

/* Save at t = 37, restore into fresh objects, continue: every lr equal. */
static void test_state_roundtrip(void **state)
{
    (void)state;
    static scase_t c;
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        load_case(&c, cases[k]);
        stk_optim_t *oa = make_opt(c.okind), *ob = make_opt(c.okind);
        stk_sched_t *a = NULL, *b = NULL;
        assert_int_equal(stk_sched_create(&a, &c.cfg, oa), 0);
        assert_int_equal(stk_sched_create(&b, &c.cfg, ob), 0);
        for (size_t t = 1; t <= 37; t++)
            assert_int_equal(step(a, c.rows[t].metric), 0);
        size_t need = stk_sched_state_size(a), wrote;
        unsigned char *blob = malloc(need);
        assert_int_equal(stk_sched_state_save(a, blob, need, &wrote), 0);
        assert_int_equal(stk_sched_state_load(b, blob, wrote), 0);
        assert_int_equal(stk_sched_steps(b), 37);
        for (size_t t = 38; t < c.n_rows; t++) {
            assert_int_equal(step(a, c.rows[t].metric), 0);
            assert_int_equal(step(b, c.rows[t].metric), 0);
            for (size_t g = 0; g < 2; g++) {
                double la, lb, ma, mb;
                stk_optim_get_lr(oa, g, &la);
                stk_optim_get_lr(ob, g, &lb);
                stk_optim_get_momentum(oa, g, &ma);
                stk_optim_get_momentum(ob, g, &mb);
                assert_memory_equal(&la, &lb, sizeof(la));
                assert_memory_equal(&ma, &mb, sizeof(ma));
            }
        }
        free(blob);
        stk_sched_destroy(&a);
        stk_sched_destroy(&b);
        stk_optim_destroy(&oa);
        stk_optim_destroy(&ob);
        fx_free(&c.fx);
    }
}

static void expect_err(int rc, int code, const char *needle)
{
    assert_int_equal(rc, code);
    if (needle && !strstr(stk_error_message(), needle))
        fail_msg("message '%s' lacks '%s'", stk_error_message(), needle);
}

static stk_sched_t *make_sched(const char *text, int64_t spe, int64_t total, stk_optim_t *o)
{
    stk_sched_config_t cfg;
    stk_sched_config_default(&cfg);
    cfg.total_steps = total;
    if (stk_sched_parse(text, spe, &cfg))
        fail_msg("parse '%s': %s", text, stk_error_message());
    stk_sched_t *s = NULL;
    if (stk_sched_create(&s, &cfg, o))
        fail_msg("create '%s': %s", text, stk_error_message());
    return s;
}

static void assert_close(double got, double want, const char *what, int64_t t)
{
    if (!(fabs(got - want) <= 1e-12 * fabs(want) + 1e-18))
        fail_msg("%s t=%lld: %.17g, want %.17g", what, (long long)t, got, want);
}

/* Warmup-stable-decay: linear warmup, constant, then cooldown over the last
 * 20 steps to 0.1 x base. */
static void test_cooldown_wsd(void **state)
{
    (void)state;
    stk_optim_t *o = make_opt(STK_OPTIM_SGD);
    stk_sched_t *s = make_sched("warmup:5,start=0.2|constant|cooldown:20,final=0.1", 0, 100, o);
    for (int64_t t = 0; t <= 110; t++) {
        for (size_t g = 0; g < 2; g++) {
            double b = g ? 0.01 : 0.1, want;
            if (t < 5)
                want = b * (0.2 + 0.8 * (double)t / 5);
            else if (t < 80)
                want = b;
            else
                want = b + (0.1 * b - b) * (double)(t - 80 < 20 ? t - 80 : 20) / 20;
            assert_close(stk_sched_lr(s, g), want, "wsd", t);
        }
        assert_int_equal(stk_sched_step(s), 0);
    }
    stk_sched_destroy(&s);
    stk_optim_destroy(&o);
}

/* Cooldown after cosine starts from the value the cosine would give at the
 * cooldown's milestone. In epochs: 10 steps per epoch. */
static void test_cooldown_after_cosine(void **state)
{
    (void)state;
    stk_optim_t *o = make_opt(STK_OPTIM_SGD);
    stk_sched_t *s = make_sched("cosine:3ep,T_max=10ep,eta_min=0.001|cooldown:1ep", 10, 0, o);
    double from = 0.001 + (0.1 - 0.001) * (1 + cos(M_PI * 30.0 / 100.0)) / 2;
    for (int64_t t = 0; t <= 45; t++) {
        double want;
        if (t < 30)
            want = 0.001 + (0.1 - 0.001) * (1 + cos(M_PI * (double)t / 100.0)) / 2;
        else
            want = from - from * (double)(t - 30 < 10 ? t - 30 : 10) / 10;
        assert_close(stk_sched_lr(s, 0), want, "cos+cooldown", t);
        assert_int_equal(stk_sched_step(s), 0);
    }
    stk_sched_destroy(&s);
    stk_optim_destroy(&o);
}

static void test_parse_errors(void **state)
{
    (void)state;
    stk_sched_config_t cfg;
    stk_sched_config_default(&cfg);
    assert_int_equal(stk_sched_parse("warmup:1ep,start=0.1|cosine:eta_min=0", 50, &cfg), 0);
    assert_int_equal(cfg.n_phases, 2);
    assert_int_equal(cfg.phases[0].kind, STK_SCHED_LINEAR);
    assert_int_equal(cfg.phases[0].steps, 50);
    assert_true(cfg.phases[0].start_factor == 0.1);
    assert_int_equal(cfg.phases[1].kind, STK_SCHED_COSINE);
    assert_int_equal(stk_sched_parse("multistep:milestones=1ep;2.5ep;300", 100, &cfg), 0);
    assert_int_equal(cfg.phases[0].n_milestones, 3);
    assert_int_equal(cfg.phases[0].milestones[1], 250);
    assert_int_equal(stk_sched_parse("plateau:mode=max,threshold_mode=abs,patience=0,eps=0", 0, &cfg), 0);
    assert_true(cfg.phases[0].mode_max && cfg.phases[0].threshold_abs && cfg.phases[0].patience == 0);

    stk_sched_config_t keep = cfg;
    expect_err(stk_sched_parse("cosin:T_max=3", 0, &cfg), STK_ECONFIG, "unknown kind 'cosin'");
    expect_err(stk_sched_parse("warmup:5|cosine:tmax=3", 0, &cfg), STK_ECONFIG,
               "phase 1 (cosine): unknown key 'tmax'");
    expect_err(stk_sched_parse("cosine:gamma=0.5", 0, &cfg), STK_ECONFIG, "key 'gamma' does not apply to cosine");
    expect_err(stk_sched_parse("step:step_size=x", 0, &cfg), STK_ECONFIG, "bad value 'x' for key 'step_size'");
    expect_err(stk_sched_parse("step:step_size=-3", 0, &cfg), STK_ECONFIG, "key 'step_size'");
    expect_err(stk_sched_parse("step:step_size=2ep", 0, &cfg), STK_ECONFIG,
               "key 'step_size' is in epochs ('2ep') but steps_per_epoch is not set");
    expect_err(stk_sched_parse("warmup:1ep", 0, &cfg), STK_ECONFIG, "key 'steps' is in epochs");
    expect_err(stk_sched_parse("linear:5,start", 0, &cfg), STK_ECONFIG, "expected key=value");
    expect_err(stk_sched_parse("plateau:mode=median", 0, &cfg), STK_ECONFIG, "bad value 'median' for key 'mode'");
    expect_err(stk_sched_parse("onecycle:anneal_strategy=exp", 0, &cfg), STK_ECONFIG, "'anneal_strategy'");
    expect_err(stk_sched_parse("multistep:milestones=", 0, &cfg), STK_ECONFIG, "'milestones'");
    expect_err(stk_sched_parse("multistep:milestones=1;2;3;4;5;6;7;8;9;10;11;12;13;14;15;16;17", 0, &cfg),
               STK_ECONFIG, "more than 16");
    expect_err(stk_sched_parse("exp|exp|exp|exp|exp|exp|exp|exp|exp", 0, &cfg), STK_ECONFIG,
               "more than 8 phases");
    expect_err(stk_sched_parse(NULL, 0, &cfg), -EINVAL, NULL);
    assert_memory_equal(&keep, &cfg, sizeof(cfg));
}

static void expect_create_err(const char *text, int64_t total, const char *needle)
{
    stk_optim_t *o = make_opt(STK_OPTIM_SGD);
    stk_sched_config_t cfg;
    stk_sched_config_default(&cfg);
    cfg.total_steps = total;
    assert_int_equal(stk_sched_parse(text, 0, &cfg), 0);
    stk_sched_t *s = NULL;
    expect_err(stk_sched_create(&s, &cfg, o), STK_ECONFIG, needle);
    assert_null(s);
    stk_optim_destroy(&o);
}

static void test_create_errors(void **state)
{
    (void)state;
    expect_create_err("step:gamma=0.5", 0, "invalid step_size");
    expect_create_err("cosine", 0, "key 'T_max': needs the run's length");
    expect_create_err("cosine|exp", 0, "open-ended in the middle needs the run's length: total_steps");
    expect_create_err("cosine|exp:10", 5, "total_steps > 10");
    expect_create_err("cosine|exp|step:step_size=3", 100, "only one middle phase may be open-ended");
    expect_create_err("warmup:5|plateau", 0, "plateau cannot be chained");
    expect_create_err("onecycle", 0, "key 'total_steps': needs the run's length");
    expect_create_err("onecycle:total_steps=10,pct_start=1.5", 0, "invalid pct_start");
    expect_create_err("linear:start=2", 0, "invalid start_factor");
    expect_create_err("cooldown", 0, "key 'total_iters': needs the run's length");
    expect_create_err("plateau:factor=1", 0, "invalid factor");
    expect_create_err("multistep:milestones=5;3", 0, "ascending");
    stk_optim_t *o = make_opt(STK_OPTIM_SGD);
    stk_sched_config_t cfg;
    stk_sched_config_default(&cfg);
    stk_sched_t *s = NULL;
    expect_err(stk_sched_create(&s, &cfg, o), STK_ECONFIG, "0 phases");
    expect_err(stk_sched_create(&s, NULL, o), -EINVAL, NULL);
    cfg.n_phases = 1;
    stk_sched_phase_default(&cfg.phases[0], (stk_sched_kind_t)42);
    expect_err(stk_sched_create(&s, &cfg, o), STK_ECONFIG, "invalid kind");
    stk_optim_destroy(&o);
    stk_sched_destroy(NULL);
    assert_string_equal(stk_sched_kind_name(STK_SCHED_ONECYCLE), "onecycle");
    assert_string_equal(stk_sched_kind_name((stk_sched_kind_t)0), "invalid");
}

static void test_plateau_needs_metric(void **state)
{
    (void)state;
    stk_optim_t *o = make_opt(STK_OPTIM_SGD);
    stk_sched_t *s = make_sched("plateau:patience=0,factor=0.5", 0, 0, o);
    expect_err(stk_sched_step(s), STK_ESTATE, "stk_sched_step_metric");
    assert_int_equal(stk_sched_step_metric(s, 1.0), 0);
    assert_int_equal(stk_sched_step_metric(s, NAN), 0); /* no improvement */
    assert_close(stk_sched_lr(s, 0), 0.05, "plateau nan", 2);
    stk_sched_destroy(&s);
    /* Other kinds take and ignore a metric. */
    s = make_sched("exp:gamma=0.5", 0, 0, o);
    assert_int_equal(stk_sched_step_metric(s, 3.0), 0);
    assert_close(stk_sched_lr(s, 1), 0.005, "exp metric", 1);
    assert_close(stk_sched_lr(s, 7), 0, "bad group", 1);
    expect_err(stk_sched_step(NULL), -EINVAL, NULL);
    expect_err(stk_sched_step_metric(NULL, 1), -EINVAL, NULL);
    stk_sched_destroy(&s);
    /* OneCycle past total_steps holds its last value. */
    s = make_sched("onecycle:total_steps=10,cycle_momentum=0", 0, 0, o);
    for (int i = 0; i < 10; i++)
        assert_int_equal(stk_sched_step(s), 0);
    double at10 = stk_sched_lr(s, 0);
    assert_int_equal(stk_sched_step(s), 0);
    assert_true(stk_sched_lr(s, 0) == at10);
    stk_sched_destroy(&s);
    stk_optim_destroy(&o);
}

static void test_bad_blobs(void **state)
{
    (void)state;
    stk_optim_t *o = make_opt(STK_OPTIM_SGD);
    stk_sched_t *a = make_sched("warmup:5|cosine", 0, 50, o);
    stk_sched_t *same = make_sched("warmup:5|cosine", 0, 50, o);
    stk_sched_t *other = make_sched("warmup:5|cosine", 0, 60, o);
    for (int i = 0; i < 7; i++)
        assert_int_equal(stk_sched_step(a), 0);
    size_t need = stk_sched_state_size(a), wrote = 0;
    unsigned char *blob = malloc(need), *bad = malloc(need);
    expect_err(stk_sched_state_save(a, blob, 3, &wrote), -ENOSPC, "needs");
    assert_int_equal(wrote, need);
    expect_err(stk_sched_state_save(a, NULL, 5, &wrote), -EINVAL, NULL);
    assert_int_equal(stk_sched_state_save(a, blob, need, &wrote), 0);
    expect_err(stk_sched_state_load(other, blob, need), STK_ESHAPE, "different schedule");
    expect_err(stk_sched_state_load(same, blob, 12), STK_EFORMAT, "not a scheduler state");
    expect_err(stk_sched_state_load(same, blob, need - 8), STK_EFORMAT, "checksum");
    memcpy(bad, blob, need);
    bad[8] = 9;
    expect_err(stk_sched_state_load(same, bad, need), STK_EFORMAT, "version 9");
    memcpy(bad, blob, need);
    bad[30] ^= 1;
    expect_err(stk_sched_state_load(same, bad, need), STK_EFORMAT, "checksum");
    expect_err(stk_sched_state_load(NULL, blob, need), -EINVAL, NULL);
    assert_int_equal(stk_sched_steps(same), 0);
    assert_int_equal(stk_sched_state_load(same, blob, need), 0);
    assert_int_equal(stk_sched_steps(same), 7);

    /* Same schedule over a different number of groups. */
    stk_optim_config_t oc;
    stk_optim_config_default(&oc, STK_OPTIM_SGD, 5);
    stk_optim_t *o1 = NULL;
    assert_int_equal(stk_optim_create(&o1, &oc), 0);
    stk_sched_t *one = make_sched("warmup:5|cosine", 0, 50, o1);
    expect_err(stk_sched_state_load(one, blob, need), STK_ESHAPE, "saved for 2 groups");
    stk_sched_destroy(&one);
    stk_optim_destroy(&o1);

    free(blob);
    free(bad);
    stk_sched_destroy(&a);
    stk_sched_destroy(&same);
    stk_sched_destroy(&other);
    stk_optim_destroy(&o);
}

/* A scheduler driving the optimizer: the lr each optimizer step uses is
 * the one the scheduler set, per group. */
static void test_drives_optimizer(void **state)
{
    (void)state;
    stk_optim_range_t ra[1] = {{0, 1}}, rb[1] = {{1, 1}};
    stk_optim_config_t oc;
    stk_optim_config_default(&oc, STK_OPTIM_SGD, 2);
    stk_optim_group_t gs[2] = {{ra, 1, oc.defaults}, {rb, 1, oc.defaults}};
    gs[0].h.lr = 1.0;
    gs[1].h.lr = 0.5;
    oc.groups = gs;
    oc.n_groups = 2;
    stk_optim_t *o = NULL;
    assert_int_equal(stk_optim_create(&o, &oc), 0);
    stk_sched_t *s = make_sched("step:step_size=2,gamma=0.5", 0, 0, o);
    float p[2] = {0, 0}, g[2] = {1, 1};
    double want0 = 0, want1 = 0;
    for (int t = 0; t < 6; t++) {
        double f = pow(0.5, t / 2);
        want0 -= 1.0 * f;
        want1 -= 0.5 * f;
        assert_int_equal(stk_optim_step(o, p, g), 0);
        assert_int_equal(stk_sched_step(s), 0);
    }
    assert_true(fabs(p[0] - want0) < 1e-6 && fabs(p[1] - want1) < 1e-6);
    stk_sched_destroy(&s);
    stk_optim_destroy(&o);
}

/* Random texts from the grammar's alphabet: the parser returns 0 or
 * STK_ECONFIG, never crashes (ASan/UBSan run this too), and a parsed
 * config either creates or fails with STK_ECONFIG. */
static void test_parse_garbage(void **state)
{
    (void)state;
    static const char *const atoms[] = {
        "warmup", "cosine", "step", "multistep", "onecycle", "plateau", "cooldown", "exp", "constant",
        "linear", ":", ",", "|", "=", ";", "ep", "1", "0", "-3", "2.5", "1e400", "nan", "T_max", "eta_min",
        "milestones", "step_size", "gamma", "total_steps", "start", "final", "mode", "max", "abs", "x", " ",
    };
    stk_optim_t *o = make_opt(STK_OPTIM_SGD);
    stk_rng_t rng;
    stk_rng_init(&rng, 42, 0);
    for (int it = 0; it < 3000; it++) {
        char text[256] = "";
        unsigned n = 1 + (unsigned)stk_rng_below(&rng, 14);
        for (unsigned j = 0; j < n; j++)
            strcat(text, atoms[stk_rng_below(&rng, sizeof(atoms) / sizeof(atoms[0]))]);
        stk_sched_config_t cfg;
        stk_sched_config_default(&cfg);
        cfg.total_steps = (int64_t)stk_rng_below(&rng, 3) * 50;
        int rc = stk_sched_parse(text, (int64_t)stk_rng_below(&rng, 3), &cfg);
        if (rc != 0 && rc != STK_ECONFIG)
            fail_msg("parse '%s' returned %d", text, rc);
        if (rc)
            continue;
        stk_sched_t *s = NULL;
        rc = stk_sched_create(&s, &cfg, o);
        if (rc != 0 && rc != STK_ECONFIG)
            fail_msg("create '%s' returned %d", text, rc);
        for (int t = 0; s && t < 5; t++) {
            stk_sched_step_metric(s, 1.0 / (t + 1));
            assert_true(stk_sched_lr(s, 0) >= 0);
        }
        stk_sched_destroy(&s);
    }
    stk_optim_destroy(&o);
}

/* One call with the run's length gives what parse + create give; without
 * the length, a phase that needs it names the key to give. */
static void test_create_from_text(void **state)
{
    (void)state;
    stk_optim_t *oa = make_opt(STK_OPTIM_SGD), *ob = make_opt(STK_OPTIM_SGD);
    const char *text = "warmup:1ep,start=0.1|cosine:eta_min=0";
    stk_sched_t *a = NULL, *b = make_sched(text, 10, 100, ob);
    assert_int_equal(stk_sched_create_from_text(&a, oa, text, 10, 100), 0);
    for (int64_t t = 0; t < 120; t++) {
        double la, lb;
        assert_int_equal(stk_optim_get_lr(oa, 0, &la), 0);
        assert_int_equal(stk_optim_get_lr(ob, 0, &lb), 0);
        assert_true(la == lb);
        assert_int_equal(stk_sched_step(a), 0);
        assert_int_equal(stk_sched_step(b), 0);
    }
    stk_sched_destroy(&a);
    stk_sched_destroy(&b);
    expect_err(stk_sched_create_from_text(&a, oa, "warmup:1ep|cosine", 10, 0), STK_ECONFIG,
               "phase 1 (cosine): key 'T_max': needs the run's length");
    assert_null(a);
    expect_err(stk_sched_create_from_text(&a, oa, "onecycle", 0, 0), STK_ECONFIG, "key 'total_steps'");
    expect_err(stk_sched_create_from_text(&a, oa, "cosine:1ep", 0, 100), STK_ECONFIG, "steps_per_epoch");
    expect_err(stk_sched_create_from_text(&a, oa, "cosine", 10, -1), -EINVAL, "negative");
    expect_err(stk_sched_create_from_text(&a, NULL, "cosine", 10, 5), -EINVAL, "NULL");
    expect_err(stk_sched_create_from_text(&a, oa, "cosinus", 10, 5), STK_ECONFIG, "unknown kind");
    stk_optim_destroy(&oa);
    stk_optim_destroy(&ob);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_trajectories),       cmocka_unit_test(test_state_roundtrip),
        cmocka_unit_test(test_cooldown_wsd),       cmocka_unit_test(test_cooldown_after_cosine),
        cmocka_unit_test(test_parse_errors),       cmocka_unit_test(test_create_errors),
        cmocka_unit_test(test_plateau_needs_metric), cmocka_unit_test(test_bad_blobs),
        cmocka_unit_test(test_drives_optimizer),   cmocka_unit_test(test_parse_garbage),
        cmocka_unit_test(test_create_from_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
