/* SPDX-License-Identifier: MIT */
/* dist/: where a rank stands from each launcher's variables (and every
 * malformed one), the world of one, backend choice and its refusals, the
 * rendezvous store over real sockets (waits, late rank 0, unreachable
 * address, port in use, a stale store), TCP ranks as real processes that
 * die, stop or disagree, and DDP's buckets and accumulation. Multi-rank
 * training itself is checked by tests/dist (mpirun, stoker-launch). */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "dist/store.h"
#include "stoker/dist.h"

/* ---- helpers ---------------------------------------------------------- */

static const char *k_env_vars[] = {
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
    "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE",
    "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS", "SLURM_PROCID", "SLURM_STEP_ID",
    "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_STEP_TASKS_PER_NODE",
    "SLURM_TASKS_PER_NODE", "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_JOB_ID", "STK_COMM_BACKEND",
    "STK_DIST_TIMEOUT",
};

static void clear_env(void)
{
    for (size_t i = 0; i < sizeof(k_env_vars) / sizeof(k_env_vars[0]); i++)
        unsetenv(k_env_vars[i]);
}

static int free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof(a);
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(s, (struct sockaddr *)&a, &l), 0);
    close(s);
    return ntohs(a.sin_port);
}

static stk_dist_env_t env_of(int rank, int world, int port)
{
    stk_dist_env_t e;
    memset(&e, 0, sizeof(e));
    e.launcher = world > 1 ? STK_LAUNCHER_TORCHRUN : STK_LAUNCHER_NONE;
    e.rank = rank;
    e.world_size = world;
    e.local_rank = rank;
    e.local_world_size = world;
    strcpy(e.master_addr, "127.0.0.1");
    e.master_port = port;
    return e;
}

static void expect_msg(int rc, int want, const char *needle)
{
    if (rc != want)
        fail_msg("got %s (%s), want %s", stk_err_name(rc), stk_error_message(), stk_err_name(want));
    if (needle && !strstr(stk_error_message(), needle))
        fail_msg("message '%s' lacks '%s'", stk_error_message(), needle);
}

/* ---- bootstrap from the environment ------------------------------------ */

static void test_env_none(void **state)
{
    (void)state;
    clear_env();
    stk_dist_env_t e;
    assert_int_equal(stk_dist_env_detect(&e), 0);
    assert_int_equal(e.launcher, STK_LAUNCHER_NONE);
    assert_int_equal(e.rank, 0);
    assert_int_equal(e.world_size, 1);
    assert_int_equal(e.local_world_size, 1);
    assert_string_equal(e.master_addr, "");
    assert_string_equal(stk_dist_launcher_name(e.launcher), "none");
    /* An sbatch script is not a step: SLURM_PROCID alone is no job. */
    setenv("SLURM_PROCID", "0", 1);
    setenv("SLURM_NTASKS", "8", 1);
    assert_int_equal(stk_dist_env_detect(&e), 0);
    assert_int_equal(e.launcher, STK_LAUNCHER_NONE);
    assert_int_equal(e.world_size, 1);
    assert_int_equal(stk_dist_env_detect(NULL), -EINVAL);
    clear_env();
}

static void test_env_torchrun(void **state)
{
    (void)state;
    clear_env();
    setenv("RANK", "5", 1);
    setenv("WORLD_SIZE", "8", 1);
    setenv("LOCAL_RANK", "1", 1);
    setenv("LOCAL_WORLD_SIZE", "4", 1);
    setenv("MASTER_ADDR", "node7", 1);
    setenv("MASTER_PORT", "29511", 1);
    /* Inside mpirun (or srun) the explicit variables still win. */
    setenv("OMPI_COMM_WORLD_RANK", "0", 1);
    setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
    stk_dist_env_t e;
    assert_int_equal(stk_dist_env_detect(&e), 0);
    assert_int_equal(e.launcher, STK_LAUNCHER_TORCHRUN);
    assert_int_equal(e.rank, 5);
    assert_int_equal(e.world_size, 8);
    assert_int_equal(e.local_rank, 1);
    assert_int_equal(e.local_world_size, 4);
    assert_string_equal(e.master_addr, "node7");
    assert_int_equal(e.master_port, 29511);
    clear_env();
}

static void test_env_mpi(void **state)
{
    (void)state;
    clear_env();
    setenv("OMPI_COMM_WORLD_RANK", "3", 1);
    setenv("OMPI_COMM_WORLD_SIZE", "4", 1);
    setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1", 1);
    setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "2", 1);
    stk_dist_env_t e;
    assert_int_equal(stk_dist_env_detect(&e), 0);
    assert_int_equal(e.launcher, STK_LAUNCHER_MPI);
    assert_int_equal(e.rank, 3);
    assert_int_equal(e.world_size, 4);
    assert_int_equal(e.local_rank, 1);
    assert_int_equal(e.local_world_size, 2);
    clear_env();
    /* MPICH's Hydra. */
    setenv("PMI_RANK", "2", 1);
    setenv("PMI_SIZE", "3", 1);
    assert_int_equal(stk_dist_env_detect(&e), 0);
    assert_int_equal(e.launcher, STK_LAUNCHER_MPI);
    assert_int_equal(e.rank, 2);
    assert_int_equal(e.world_size, 3);
    assert_string_equal(stk_dist_launcher_name(e.launcher), "mpi");
    clear_env();
}

static void test_env_slurm(void **state)
{
    (void)state;
    clear_env();
    setenv("SLURM_PROCID", "3", 1);
    setenv("SLURM_STEP_ID", "0", 1);
    setenv("SLURM_STEP_NUM_TASKS", "6", 1);
    setenv("SLURM_NTASKS", "99", 1); /* the allocation's, not the step's */
    setenv("SLURM_LOCALID", "1", 1);
    setenv("SLURM_NODEID", "1", 1);
    setenv("SLURM_STEP_TASKS_PER_NODE", "2(x2),1,1", 1);
    setenv("SLURM_STEP_NODELIST", "gpu[07-09,12],cpu1", 1);
    setenv("SLURM_JOB_ID", "12345", 1);
    stk_dist_env_t e;
    assert_int_equal(stk_dist_env_detect(&e), 0);
    assert_int_equal(e.launcher, STK_LAUNCHER_SLURM);
    assert_int_equal(e.rank, 3);
    assert_int_equal(e.world_size, 6);
    assert_int_equal(e.local_rank, 1);
    assert_int_equal(e.local_world_size, 2);
    assert_string_equal(e.master_addr, "gpu07");
    assert_int_equal(e.master_port, 20000 + 12345 % 20000);
    /* Node 2 of "2(x2),1,1" runs one task; an explicit address wins. */
    setenv("SLURM_NODEID", "2", 1);
    setenv("SLURM_LOCALID", "0", 1);
    setenv("MASTER_ADDR", "10.1.2.3", 1);
    setenv("MASTER_PORT", "4000", 1);
    assert_int_equal(stk_dist_env_detect(&e), 0);
    assert_int_equal(e.local_world_size, 1);
    assert_string_equal(e.master_addr, "10.1.2.3");
    assert_int_equal(e.master_port, 4000);
    assert_string_equal(stk_dist_launcher_name(e.launcher), "slurm");
    clear_env();
}

static void test_env_errors(void **state)
{
    (void)state;
    stk_dist_env_t e;
    struct {
        const char *vars[9];
        const char *needle;
    } cases[] = {
        {{"RANK", "1", NULL}, "WORLD_SIZE is not"},
        {{"WORLD_SIZE", "2", NULL}, "RANK is not"},
        {{"RANK", "4", "WORLD_SIZE", "4", NULL}, "rank 4 is not below the world size 4"},
        {{"RANK", "x1", "WORLD_SIZE", "4", NULL}, "RANK='x1'"},
        {{"RANK", "-1", "WORLD_SIZE", "4", NULL}, "RANK='-1'"},
        {{"RANK", "0", "WORLD_SIZE", "0", NULL}, "world size 0"},
        {{"RANK", "1", "WORLD_SIZE", "4", "LOCAL_RANK", "2", NULL}, "local rank 2"},
        {{"MASTER_PORT", "70000", NULL}, "MASTER_PORT=70000"},
        {{"MASTER_PORT", "29500x", NULL}, "MASTER_PORT='29500x'"},
        {{"OMPI_COMM_WORLD_RANK", "1", NULL}, "OMPI_COMM_WORLD_SIZE is not"},
        {{"SLURM_PROCID", "0", "SLURM_STEP_ID", "3", NULL}, "SLURM_STEP_NUM_TASKS"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        clear_env();
        for (int k = 0; cases[i].vars[k]; k += 2)
            setenv(cases[i].vars[k], cases[i].vars[k + 1], 1);
        if (strstr(cases[i].needle, "local rank"))
            setenv("LOCAL_WORLD_SIZE", "2", 1);
        e.rank = 12345;
        expect_msg(stk_dist_env_detect(&e), STK_ECONFIG, cases[i].needle);
        assert_int_equal(e.rank, 12345); /* untouched on error */
    }
    clear_env();
}

/* ---- the world of one and the choice of backend ---------------------- */

static void test_single(void **state)
{
    (void)state;
    clear_env();
    stk_comm_t *c = NULL;
    assert_int_equal(stk_comm_create(&c, NULL), 0);
    assert_int_equal(stk_comm_backend(c), STK_COMM_SINGLE);
    assert_string_equal(stk_comm_backend_name(stk_comm_backend(c)), "single");
    assert_int_equal(stk_comm_rank(c), 0);
    assert_int_equal(stk_comm_size(c), 1);
    assert_int_equal(stk_comm_local_rank(c), 0);
    assert_int_equal(stk_comm_local_size(c), 1);
    float x[4] = {1, 2, 3, 4}, y[4] = {0};
    assert_int_equal(stk_comm_allreduce(c, x, 4, STK_DTYPE_F32, STK_REDUCE_AVG), 0);
    assert_true(x[3] == 4.0f);
    assert_int_equal(stk_comm_broadcast(c, x, 4, STK_DTYPE_F32, 0), 0);
    assert_int_equal(stk_comm_allgather(c, x, y, 4, STK_DTYPE_F32), 0);
    assert_memory_equal(x, y, sizeof(x));
    assert_int_equal(stk_comm_barrier(c), 0);
    assert_int_equal(stk_comm_allreduce(c, NULL, 0, STK_DTYPE_F32, STK_REDUCE_SUM), 0);
    stk_comm_work_t *w = NULL;
    int done = 0;
    assert_int_equal(stk_comm_allreduce_async(c, x, 4, STK_DTYPE_F32, STK_REDUCE_SUM, &w), 0);
    assert_int_equal(stk_comm_test(w, &done), 0);
    assert_int_equal(done, 1);
    assert_int_equal(stk_comm_wait(&w), 0);
    assert_null(w);
    assert_int_equal(stk_comm_wait(&w), 0); /* NULL handle */
    /* Refusals, each before anything starts. */
    expect_msg(stk_comm_allreduce(c, NULL, 3, STK_DTYPE_F32, STK_REDUCE_SUM), -EINVAL, "NULL buffer");
    expect_msg(stk_comm_allreduce(c, x, 4, STK_DTYPE_INVALID, STK_REDUCE_SUM), -EINVAL, "dtype");
    expect_msg(stk_comm_allreduce(c, x, 4, STK_DTYPE_F32, (stk_reduce_op_t)9), -EINVAL, "reduction");
    expect_msg(stk_comm_allreduce(c, x, 2, STK_DTYPE_F16, STK_REDUCE_SUM), -ENOTSUP, "does not reduce f16");
    expect_msg(stk_comm_broadcast(c, x, 4, STK_DTYPE_F32, 1), -EINVAL, "root 1");
    expect_msg(stk_comm_broadcast(c, x, 4, STK_DTYPE_F32, -1), -EINVAL, "root -1");
    expect_msg(stk_comm_allgather(c, NULL, y, 4, STK_DTYPE_F32), -EINVAL, "NULL buffer");
    expect_msg(stk_comm_allreduce_async(NULL, x, 4, STK_DTYPE_F32, STK_REDUCE_SUM, &w), -EINVAL, NULL);
    assert_null(w);
    assert_int_equal(stk_comm_set_timeout(c, 0), -EINVAL);
    assert_int_equal(stk_comm_set_timeout(c, 5), 0);
    assert_int_equal(stk_comm_set_stream(c, NULL), 0);
    stk_comm_stats_t st;
    stk_comm_stats(c, &st);
    assert_int_equal(st.allreduce, 3);
    assert_int_equal(st.broadcast, 1);
    assert_int_equal(st.allgather, 1);
    assert_int_equal(st.barrier, 1);
    assert_int_equal(st.bytes, 16 * 4); /* the empty all-reduce moves nothing */
    stk_comm_destroy(&c);
    assert_null(c);
    stk_comm_destroy(&c);
    stk_comm_destroy(NULL);
    assert_int_equal(stk_comm_backend_from_name("tcp"), STK_COMM_TCP);
    assert_int_equal(stk_comm_backend_from_name("nccl"), STK_COMM_NCCL);
    assert_int_equal(stk_comm_backend_from_name("gloo"), -1);
    assert_string_equal(stk_comm_backend_name((stk_comm_backend_t)42), "invalid");
}

static void test_backend_choice(void **state)
{
    (void)state;
    clear_env();
    stk_comm_config_t cfg;
    stk_comm_config_default(&cfg);
    assert_int_equal(cfg.backend, STK_COMM_AUTO);
    assert_true(cfg.timeout_s == 300.0);
    setenv("STK_DIST_TIMEOUT", "12.5", 1);
    stk_comm_config_default(&cfg);
    assert_true(cfg.timeout_s == 12.5);
    clear_env();
    stk_comm_config_default(&cfg);
    stk_comm_t *c = NULL;
    stk_dist_env_t e = env_of(1, 2, 0);

    /* stoker-launch's ranks cannot use MPI: said before MPI starts. */
    cfg.env = &e;
    cfg.backend = STK_COMM_MPI;
    int rc = stk_comm_create(&c, &cfg);
    assert_null(c);
    if (rc != STK_ECONFIG || (!strstr(stk_error_message(), "needs mpirun or srun") &&
                              !strstr(stk_error_message(), "built without the mpi backend")))
        fail_msg("mpi under torchrun variables: %s %s", stk_err_name(rc), stk_error_message());
    cfg.backend = STK_COMM_SINGLE;
    expect_msg(stk_comm_create(&c, &cfg), STK_ECONFIG, "world of one");
    cfg.backend = STK_COMM_TCP; /* no MASTER_ADDR */
    e.master_addr[0] = '\0';
    expect_msg(stk_comm_create(&c, &cfg), STK_ECONFIG, "MASTER_ADDR and MASTER_PORT");
    cfg.backend = STK_COMM_AUTO;
    setenv("STK_COMM_BACKEND", "gloo", 1);
    expect_msg(stk_comm_create(&c, &cfg), STK_ECONFIG, "STK_COMM_BACKEND='gloo'");
    clear_env();
    cfg.backend = STK_COMM_NCCL;
    expect_msg(stk_comm_create(&c, &cfg), STK_ECONFIG, NULL);
    cfg.timeout_s = -1;
    expect_msg(stk_comm_create(&c, &cfg), STK_ECONFIG, "timeout_s");
    cfg.timeout_s = 5;
    cfg.backend = (stk_comm_backend_t)17;
    expect_msg(stk_comm_create(&c, &cfg), STK_ECONFIG, "unknown backend");
    /* CUDA buffers: NCCL, which needs a GPU (or was not built). */
    stk_dist_env_t one = env_of(0, 1, 0);
    cfg.env = &one;
    cfg.backend = STK_COMM_AUTO;
    cfg.device = STK_DEVICE_CUDA;
    rc = stk_comm_create(&c, &cfg);
    if (rc == 0) {
        /* A machine with a GPU: a world of one over NCCL works. */
        assert_int_equal(stk_comm_backend(c), STK_COMM_NCCL);
        stk_comm_destroy(&c);
    } else if (rc != STK_EDEVICE && rc != STK_ECONFIG) {
        fail_msg("nccl without a GPU: %s %s", stk_err_name(rc), stk_error_message());
    }
    cfg.device = STK_DEVICE_CPU;
    cfg.backend = STK_COMM_NCCL;
    expect_msg(stk_comm_create(&c, &cfg), STK_ECONFIG, NULL);
    assert_int_equal(stk_comm_create(NULL, &cfg), -EINVAL);
}

/* ---- the store ---------------------------------------------------------- */

typedef struct store_arg {
    int port, rank, delay_ms, n;
    uint32_t generation;
    double timeout_s;
    int rc;
    char msg[1024];
} store_arg_t;

static void sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static stk__store_config_t store_cfg(int port, int serve, int rank, double timeout_s)
{
    stk__store_config_t sc = {.addr = "127.0.0.1", .port = port, .serve = serve, .rank = rank,
                              .timeout_s = timeout_s, .generation = 1};
    return sc;
}

/* A rank that sets its key after a delay, then waits in a barrier. */
static void *late_setter(void *p)
{
    store_arg_t *a = p;
    sleep_ms(a->delay_ms);
    stk__store_t *s = NULL;
    stk__store_config_t sc = store_cfg(a->port, 0, a->rank, a->timeout_s);
    a->rc = stk__store_open(&s, &sc);
    if (a->rc == 0)
        a->rc = stk__store_set(s, "late", "value", 5);
    if (a->rc == 0)
        a->rc = stk__store_barrier(s, "b1", a->n);
    if (a->rc < 0)
        snprintf(a->msg, sizeof(a->msg), "%s", stk_error_message());
    stk__store_close(&s);
    return NULL;
}

static void test_store(void **state)
{
    (void)state;
    int port = free_port();
    stk__store_t *s0 = NULL;
    stk__store_config_t sc = store_cfg(port, 1, 0, 10);
    assert_int_equal(stk__store_open(&s0, &sc), 0);
    assert_string_equal(stk__store_local_addr(s0), "127.0.0.1");
    char where[64];
    snprintf(where, sizeof(where), "127.0.0.1:%d", port);
    assert_string_equal(stk__store_where(s0), where);
    assert_int_equal(stk__store_set(s0, "k", "abc", 3), 0);
    char buf[16];
    size_t len = 0;
    assert_int_equal(stk__store_get(s0, "k", buf, sizeof(buf), &len), 0);
    assert_int_equal(len, 3);
    assert_memory_equal(buf, "abc", 3);
    assert_int_equal(stk__store_set(s0, "k", "", 0), 0); /* overwrite, empty */
    assert_int_equal(stk__store_get(s0, "k", buf, sizeof(buf), &len), 0);
    assert_int_equal(len, 0);
    int64_t v = 0;
    assert_int_equal(stk__store_add(s0, "n", 5, &v), 0);
    assert_int_equal(stk__store_add(s0, "n", -2, &v), 0);
    assert_int_equal(v, 3);
    assert_int_equal(stk__store_set(s0, "big", "0123456789", 10), 0);
    expect_msg(stk__store_get(s0, "big", buf, 4, &len), -ENOSPC, "10 bytes");
    assert_int_equal(stk__store_get(s0, "big", buf, sizeof(buf), &len), 0); /* still in step */
    char longkey[300];
    memset(longkey, 'k', sizeof(longkey) - 1);
    longkey[sizeof(longkey) - 1] = '\0';
    expect_msg(stk__store_set(s0, longkey, "x", 1), -EINVAL, "too long");

    /* A get waits for another rank's set; three ranks meet in a barrier. */
    store_arg_t a = {.port = port, .rank = 1, .delay_ms = 300, .n = 3, .timeout_s = 10};
    store_arg_t b = {.port = port, .rank = 2, .delay_ms = 0, .n = 3, .timeout_s = 10};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, late_setter, &a);
    pthread_create(&tb, NULL, late_setter, &b);
    assert_int_equal(stk__store_get(s0, "late", buf, sizeof(buf), &len), 0);
    assert_memory_equal(buf, "value", 5);
    assert_int_equal(stk__store_barrier(s0, "b1", 3), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    if (a.rc || b.rc)
        fail_msg("ranks: %s / %s", a.msg, b.msg);

    /* A key nobody sets: the wait ends, naming the key and the store. */
    stk__store_t *s1 = NULL;
    sc = store_cfg(port, 0, 1, 0.5);
    assert_int_equal(stk__store_open(&s1, &sc), 0);
    expect_msg(stk__store_get(s1, "never", buf, sizeof(buf), &len), STK_ERANK, "key 'never'");
    assert_non_null(strstr(stk_error_message(), where));
    stk__store_close(&s1);

    /* Rank 0 listens already: a second one cannot. */
    sc = store_cfg(port, 1, 0, 1);
    expect_msg(stk__store_open(&s1, &sc), -EADDRINUSE, where);
    assert_null(s1);
    /* A rank of another communicator (generation) is turned away. */
    sc = store_cfg(port, 0, 1, 0.5);
    sc.generation = 2;
    expect_msg(stk__store_open(&s1, &sc), STK_ERANK, where);
    stk__store_close(&s0);

    /* Rank 0 gone: the store ends, naming the address rank 0 should have. */
    sc = store_cfg(port, 0, 3, 0.5);
    expect_msg(stk__store_open(&s1, &sc), STK_ERANK, "MASTER_ADDR:MASTER_PORT");
    assert_non_null(strstr(stk_error_message(), where));
    assert_non_null(strstr(stk_error_message(), "refused"));
    sc.addr = "";
    assert_int_equal(stk__store_open(&s1, &sc), -EINVAL);
    stk__store_close(NULL);
}

/* Ranks start before rank 0 listens: they retry until it is up. */
static void test_store_late_rank0(void **state)
{
    (void)state;
    int port = free_port();
    store_arg_t a = {.port = port, .rank = 1, .delay_ms = 0, .n = 2, .timeout_s = 10};
    pthread_t t;
    pthread_create(&t, NULL, late_setter, &a);
    sleep_ms(400);
    stk__store_t *s0 = NULL;
    stk__store_config_t sc = store_cfg(port, 1, 0, 10);
    assert_int_equal(stk__store_open(&s0, &sc), 0);
    char buf[8];
    size_t len;
    assert_int_equal(stk__store_get(s0, "late", buf, sizeof(buf), &len), 0);
    assert_int_equal(stk__store_barrier(s0, "b1", 2), 0);
    pthread_join(t, NULL);
    if (a.rc)
        fail_msg("rank 1: %s", a.msg);
    stk__store_close(&s0);
}

/* ---- TCP ranks as real processes --------------------------------------- */

typedef int (*rank_fn)(int rank, int world, int port);

/* Forks one process per rank; returns each one's exit status in codes.
 * stop_rank >= 0: that rank is killed once the others have finished. */
static void run_ranks(int world, rank_fn fn, int *codes, int stop_rank)
{
    int port = free_port();
    pid_t pids[8];
    fflush(NULL);
    for (int r = 0; r < world; r++) {
        pids[r] = fork();
        assert_true(pids[r] >= 0);
        if (pids[r] == 0) {
            alarm(60);
            _exit(fn(r, world, port));
        }
    }
    for (int r = 0; r < world; r++) {
        if (r == stop_rank)
            continue;
        int st;
        waitpid(pids[r], &st, 0);
        codes[r] = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
    if (stop_rank >= 0) {
        kill(pids[stop_rank], SIGKILL);
        int st;
        waitpid(pids[stop_rank], &st, 0);
        codes[stop_rank] = 0;
    }
}

static int tcp_create(int rank, int world, int port, double timeout_s, stk_dist_env_t *e, stk_comm_t **c)
{
    *e = env_of(rank, world, port);
    stk_comm_config_t cfg;
    stk_comm_config_default(&cfg);
    cfg.backend = STK_COMM_TCP;
    cfg.env = e;
    cfg.timeout_s = timeout_s;
    return stk_comm_create(c, &cfg);
}

static stk_comm_t *tcp_comm(int rank, int world, int port, double timeout_s, stk_dist_env_t *e)
{
    stk_comm_t *c = NULL;
    if (tcp_create(rank, world, port, timeout_s, e, &c) < 0)
        fprintf(stderr, "rank %d: create: %s\n", rank, stk_error_message());
    return c;
}

/* Prints the message and returns 0 when it is rc with every needle. */
static int check_error(int rank, int rc, int want, const char *n1, const char *n2)
{
    const char *m = stk_error_message();
    fprintf(stderr, "rank %d: %s: %s\n", rank, stk_err_name(rc), m);
    return rc == want && (!n1 || strstr(m, n1)) && (!n2 || strstr(m, n2)) ? 0 : 1;
}

static int rank_dies(int rank, int world, int port)
{
    stk_dist_env_t e;
    stk_comm_t *c = tcp_comm(rank, world, port, 30, &e);
    if (!c)
        return 2;
    if (rank == 1)
        _exit(0); /* dies without a word, between collectives */
    float x[1000] = {0};
    int rc = stk_comm_allreduce(c, x, 1000, STK_DTYPE_F32, STK_REDUCE_SUM);
    int bad = check_error(rank, rc, STK_ERANK, "allreduce #1", "lost the connection (it exited or died) to rank 1");
    /* Broken now: later calls fail at once, with the first reason. */
    rc = stk_comm_barrier(c);
    bad |= check_error(rank, rc, STK_ERANK, "failed earlier", "rank 1");
    stk_comm_destroy(&c);
    return bad;
}

static void test_tcp_peer_dies(void **state)
{
    (void)state;
    int codes[2];
    run_ranks(2, rank_dies, codes, -1);
    assert_int_equal(codes[0], 0);
}

static int rank_stops(int rank, int world, int port)
{
    stk_dist_env_t e;
    stk_comm_t *c = tcp_comm(rank, world, port, 1.0, &e);
    if (!c)
        return 2;
    if (rank == 2)
        raise(SIGSTOP);
    float x[100] = {0};
    int rc = stk_comm_allreduce(c, x, 100, STK_DTYPE_F32, STK_REDUCE_SUM);
    char want[64];
    snprintf(want, sizeof(want), "on rank %d of 3 (tcp)", rank);
    /* Rank 0 receives from the stopped rank 2; rank 1 from rank 0, which
     * gives up: either way the peer is named and nobody hangs. */
    int bad = check_error(rank, rc, STK_ERANK, want, rank == 0 ? "no data for 1 s" : NULL);
    if (rank == 0 && !strstr(stk_error_message(), "from rank 2"))
        bad = 1;
    stk_comm_destroy(&c);
    return bad;
}

static void test_tcp_peer_stops(void **state)
{
    (void)state;
    int codes[3];
    run_ranks(3, rank_stops, codes, 2);
    assert_int_equal(codes[0], 0);
    assert_int_equal(codes[1], 0);
}

static int rank_wrong_world(int rank, int world, int port)
{
    (void)world;
    /* Rank 1 believes in a world of three. */
    stk_dist_env_t e;
    stk_comm_t *c = NULL;
    int rc = tcp_create(rank, rank == 1 ? 3 : 2, port, 2.0, &e, &c);
    int bad = c != NULL;
    if (rank == 0)
        bad |= check_error(rank, rc, STK_ERANK, "rank 1 says the world has 3 ranks", "rank 0 says 2");
    else
        bad |= check_error(rank, rc, STK_ERANK, NULL, NULL); /* waits for a rank 2 in vain */
    stk_comm_destroy(&c);
    return bad;
}

static void test_tcp_world_mismatch(void **state)
{
    (void)state;
    int codes[2];
    run_ranks(2, rank_wrong_world, codes, -1);
    assert_int_equal(codes[0], 0);
    assert_int_equal(codes[1], 0);
}

/* ---- DDP ------------------------------------------------------------------- */

static const char *k_model =
    "input    name=data shape=1,8,8\n"
    "conv2d   name=conv1 out=4 kernel=3 pad=1\n"
    "relu     name=relu1\n"
    "flatten  name=flat\n"
    "linear   name=fc1 out=16\n"
    "relu     name=relu2\n"
    "linear   name=fc2 out=5\n"
    "cross_entropy name=loss\n";

static stk_model_t *make_model(const char *text, uint64_t seed)
{
    stk_model_builder_t *b = NULL;
    assert_int_equal(stk_model_builder_create(&b), 0);
    assert_int_equal(stk_model_builder_parse(b, text, "test"), 0);
    stk_model_config_t cfg;
    stk_model_config_default(&cfg);
    cfg.batch_size = 4;
    cfg.seed = seed;
    cfg.threads = 1;
    stk_model_t *m = NULL;
    assert_int_equal(stk_model_create(&m, b, &cfg), 0);
    stk_model_builder_destroy(&b);
    return m;
}

/* The model keeps the input by pointer until backward (conv1's weight
 * gradient reads it): static, not on this function's stack. */
static void forward(stk_model_t *m)
{
    static float x[4 * 64];
    static int64_t y[4] = {0, 1, 2, 3};
    for (int i = 0; i < 4 * 64; i++)
        x[i] = (float)((i * 37) % 17) / 17.0f - 0.5f;
    float loss;
    assert_int_equal(stk_model_forward(m, x, 4, y, NULL, &loss), 0);
}

static void test_ddp_single(void **state)
{
    (void)state;
    clear_env();
    stk_comm_t *c = NULL;
    assert_int_equal(stk_comm_create(&c, NULL), 0);
    stk_model_t *m = make_model(k_model, 3);
    stk_ddp_config_t dc;
    stk_ddp_config_default(&dc);
    assert_int_equal(dc.bucket_bytes, 25u << 20);
    assert_int_equal(dc.first_bucket_bytes, 1u << 20);
    assert_int_equal(dc.average, 1);
    dc.bucket_bytes = 600 * sizeof(float);
    dc.trace_events = 256;
    stk_ddp_t *d = NULL;
    assert_int_equal(stk_ddp_create(&d, c, m, &dc), 0);

    /* Buckets: contiguous, from the top of the arena down, each within
     * the capacity unless one tensor alone is larger (fc1.weight: 4096):
     * fc2 and fc1.bias | fc1.weight | conv1. */
    size_t total = 0, nb = stk_ddp_num_buckets(d);
    stk_model_params(m, &total);
    assert_int_equal(nb, 3);
    size_t expect_hi = total;
    for (size_t i = 0; i < nb; i++) {
        size_t off, cnt;
        assert_int_equal(stk_ddp_bucket(d, i, &off, &cnt), 0);
        assert_int_equal(off + cnt, expect_hi);
        assert_true(cnt <= 600 || cnt == 256 * 16);
        expect_hi = off;
    }
    assert_int_equal(expect_hi, 0);
    assert_int_equal(stk_ddp_bucket(d, nb, NULL, NULL), -ERANGE);
    assert_int_equal(stk_ddp_bucket(NULL, 0, NULL, NULL), -EINVAL);

    /* Accumulation: two local micro-steps, then one that reduces. */
    for (int k = 0; k < 3; k++) {
        forward(m);
        assert_int_equal(stk_ddp_backward(d, k == 2), 0);
    }
    stk_ddp_stats_t st;
    stk_ddp_stats(d, &st);
    assert_int_equal(st.local_steps, 2);
    assert_int_equal(st.sync_steps, 1);
    assert_int_equal(st.reductions, nb);
    stk_comm_stats_t cs;
    stk_comm_stats(c, &cs);
    /* create: 1 all-gather (layout) + 1 (parameter check); then nb. */
    assert_int_equal(cs.allreduce, nb);
    assert_int_equal(cs.allgather, 2);

    /* The trace: one gradient-ready event per layer with parameters in
     * the sync step (3 here), reductions inside it, in bucket order. */
    stk_ddp_event_t ev[256];
    size_t n = stk_ddp_events(d, ev, 256);
    assert_true(n <= 256);
    size_t ready = 0, begins = 0;
    int sync_step = 0;
    for (size_t i = 0; i < n; i++) {
        if (ev[i].kind == STK_DDP_EV_BACKWARD_BEGIN)
            sync_step = ev[i].value == 1;
        if (sync_step && ev[i].kind == STK_DDP_EV_GRAD_READY)
            ready++;
        if (ev[i].kind == STK_DDP_EV_REDUCE_BEGIN)
            assert_int_equal(ev[i].value, begins++);
        if (i)
            assert_true(ev[i].t >= ev[i - 1].t);
    }
    assert_int_equal(ready, 3);
    assert_int_equal(begins, nb);

    /* A group closed early: its local gradients reduced at once. */
    forward(m);
    assert_int_equal(stk_ddp_backward(d, 0), 0);
    assert_int_equal(stk_ddp_sync_grads(d), 0);
    stk_ddp_stats(d, &st);
    assert_int_equal(st.reductions, 2 * nb);
    assert_int_equal(stk_ddp_sync_grads(NULL), -EINVAL);

    /* The two-halves form, and its misuse. */
    assert_int_equal(stk_ddp_finish(d), STK_ESTATE);
    assert_int_equal(stk_ddp_prepare(d, 1), 0);
    assert_int_equal(stk_ddp_prepare(d, 1), STK_ESTATE);
    forward(m);
    assert_int_equal(stk_model_backward(m), 0);
    assert_int_equal(stk_ddp_finish(d), 0);
    /* A backward without a forward: its error, and nothing left running. */
    expect_msg(stk_ddp_backward(d, 1), STK_ESTATE, "forward");
    assert_int_equal(stk_ddp_broadcast_buffers(d), 0);
    assert_int_equal(stk_ddp_check_params(d), 0);
    stk_ddp_destroy(&d);
    assert_null(d);
    stk_ddp_destroy(&d);
    /* A small first bucket (PyTorch's first_bucket_bytes): fc2 alone (85
     * floats), then all the rest in one. */
    dc.bucket_bytes = (size_t)25 << 20;
    dc.first_bucket_bytes = 100 * sizeof(float);
    assert_int_equal(stk_ddp_create(&d, c, m, &dc), 0);
    assert_int_equal(stk_ddp_num_buckets(d), 2);
    size_t off0, cnt0;
    assert_int_equal(stk_ddp_bucket(d, 0, &off0, &cnt0), 0);
    assert_int_equal(cnt0, 85);
    assert_int_equal(off0 + cnt0, total);
    stk_ddp_destroy(&d);
    dc.bucket_bytes = 2;
    expect_msg(stk_ddp_create(&d, c, m, &dc), STK_ECONFIG, "bucket_bytes");
    assert_int_equal(stk_ddp_create(&d, NULL, m, NULL), -EINVAL);
    stk_model_destroy(&m);
    stk_comm_destroy(&c);
}

/* conv1 + bn1 (4 channels: plain layout) with a fused ReLU, then conv2 +
 * bn2 (8 channels: blocked) without. */
static const char *k_model_bn =
    "input    name=data shape=1,8,8\n"
    "conv2d   name=conv1 out=4 kernel=3 pad=1\n"
    "batchnorm2d name=bn1\n"
    "relu     name=relu1\n"
    "conv2d   name=conv2 out=8 kernel=3 pad=1\n"
    "batchnorm2d name=bn2\n"
    "flatten  name=flat\n"
    "linear   name=fc1 out=5\n"
    "cross_entropy name=loss\n";

static double max_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        if (fabs((double)a[i] - (double)b[i]) > m)
            m = fabs((double)a[i] - (double)b[i]);
    return m;
}

/* A world of one with sync_bn: the synchronized path (own statistics and
 * backward passes around the collectives) must train as plain batchnorm
 * (oneDNN's training primitives) does; each training forward gathers once
 * per batchnorm layer, eval forwards never; a backend without it refuses. */
static void test_ddp_sync_bn(void **state)
{
    (void)state;
    clear_env();
    stk_comm_t *c = NULL;
    assert_int_equal(stk_comm_create(&c, NULL), 0);
    stk_model_t *m = make_model(k_model_bn, 3), *ref = make_model(k_model_bn, 3);
    stk_ddp_config_t dc;
    stk_ddp_config_default(&dc);
    assert_int_equal(dc.sync_bn, 0);
    dc.sync_bn = 1;
    stk_ddp_t *d = NULL;
    assert_int_equal(stk_ddp_create(&d, c, m, &dc), 0);
    size_t np = 0, nb = 0;
    float *p = stk_model_params(m, &np), *pr = stk_model_params(ref, NULL);
    const float *g = stk_model_grads(m, NULL), *gr = stk_model_grads(ref, NULL);
    stk_model_buffers(m, &nb);
    stk_comm_stats_t c0, c1;
    double worst_g = 0, worst_b = 0;
    for (int s = 0; s < 3; s++) {
        stk_comm_stats(c, &c0);
        forward(m);
        assert_int_equal(stk_ddp_backward(d, 1), 0);
        stk_comm_stats(c, &c1);
        assert_int_equal(c1.allgather - c0.allgather, 2);
        assert_int_equal(c1.allreduce - c0.allreduce, stk_ddp_num_buckets(d) + 2);
        forward(ref);
        assert_int_equal(stk_model_backward(ref), 0);
        double dg = max_diff(g, gr, np);
        if (dg > 1e-5)
            fail_msg("step %d: gradients differ from plain batchnorm by %g", s, dg);
        worst_g = dg > worst_g ? dg : worst_g;
        for (size_t i = 0; i < np; i++) {
            p[i] -= 0.1f * g[i];
            pr[i] -= 0.1f * gr[i];
        }
        stk_model_zero_grad(m);
        stk_model_zero_grad(ref);
        double db = max_diff(stk_model_buffers(m, NULL), stk_model_buffers(ref, NULL), nb);
        if (db > 1e-5)
            fail_msg("step %d: running statistics differ from plain batchnorm by %g", s, db);
        worst_b = db > worst_b ? db : worst_b;
    }
    print_message("sync_bn in a world of one against plain batchnorm, 3 steps: max |gradient diff| %.3g, max "
                  "|running stats diff| %.3g (limit 1e-5)\n", worst_g, worst_b);
    /* Eval mode: the running statistics, no collective. */
    stk_model_set_train(m, 0);
    stk_comm_stats(c, &c0);
    forward(m);
    stk_comm_stats(c, &c1);
    assert_int_equal(c1.allgather, c0.allgather);
    stk_model_set_train(m, 1);
    /* Destroy takes the synchronization away with it. */
    stk_ddp_destroy(&d);
    stk_comm_stats(c, &c0);
    forward(m);
    assert_int_equal(stk_model_backward(m), 0);
    stk_comm_stats(c, &c1);
    assert_int_equal(c1.allgather, c0.allgather);
    assert_int_equal(c1.allreduce, c0.allreduce);
    stk_model_destroy(&m);
    stk_model_destroy(&ref);

    /* The CPU backend posing as a device has no synchronized batchnorm
     * (nor has CUDA): refused, naming the backend and the layer; a model
     * without batchnorm there takes the option (nothing to synchronize). */
    setenv("STK_ENGINE_STAGED", "1", 1);
    m = make_model(k_model_bn, 3);
    expect_msg(stk_ddp_create(&d, c, m, &dc), STK_ECONFIG, "the cpu-staged backend has none (batchnorm 'bn1')");
    assert_null(d);
    stk_model_destroy(&m);
    m = make_model(k_model, 3);
    assert_int_equal(stk_ddp_create(&d, c, m, &dc), 0);
    forward(m);
    assert_int_equal(stk_ddp_backward(d, 1), 0);
    stk_ddp_destroy(&d);
    stk_model_destroy(&m);
    unsetenv("STK_ENGINE_STAGED");
    stk_comm_destroy(&c);
}

/* Rank 1's model has another layer width: both ranks refuse, and rank 1
 * names its tensor that is not rank 0's. */
static int rank_other_model(int rank, int world, int port)
{
    stk_dist_env_t e;
    stk_comm_t *c = tcp_comm(rank, world, port, 20, &e);
    if (!c)
        return 2;
    char text[1024];
    snprintf(text, sizeof(text), "%s", k_model);
    if (rank == 1) {
        /* Same sizes, other names: the layout check must name the tensor. */
        char *p = strstr(text, "fc2");
        p[0] = 'g';
    }
    stk_model_t *m = make_model(text, 1);
    stk_ddp_t *d = NULL;
    int rc = stk_ddp_create(&d, c, m, NULL);
    int bad = check_error(rank, rc, STK_ECONFIG, "rank 1's model", rank == 1 ? "'gc2.weight'" : NULL);
    stk_model_destroy(&m);
    stk_comm_destroy(&c);
    return bad || d != NULL;
}

static void test_ddp_layout_mismatch(void **state)
{
    (void)state;
    int codes[2];
    run_ranks(2, rank_other_model, codes, -1);
    assert_int_equal(codes[0], 0);
    assert_int_equal(codes[1], 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_env_none),
        cmocka_unit_test(test_env_torchrun),
        cmocka_unit_test(test_env_mpi),
        cmocka_unit_test(test_env_slurm),
        cmocka_unit_test(test_env_errors),
        cmocka_unit_test(test_single),
        cmocka_unit_test(test_backend_choice),
        cmocka_unit_test(test_store),
        cmocka_unit_test(test_store_late_rank0),
        cmocka_unit_test(test_tcp_peer_dies),
        cmocka_unit_test(test_tcp_peer_stops),
        cmocka_unit_test(test_tcp_world_mismatch),
        cmocka_unit_test(test_ddp_single),
        cmocka_unit_test(test_ddp_sync_bn),
        cmocka_unit_test(test_ddp_layout_mismatch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
