/* SPDX-License-Identifier: MIT */
/* Where this process stands in a job, read from what the launcher that
 * started it exported: torchrun-style variables (stoker-launch, torchrun),
 * OpenMPI's and MPICH's, or Slurm's. No launcher of our own: the cluster's
 * way of starting jobs is reused. */
#define _GNU_SOURCE
#include "internal.h"
#include "stoker/dist.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reads a non-negative integer variable. 0 when absent (*present = 0),
 * STK_ECONFIG naming it when malformed. */
static int env_int(const char *name, int *v, int *present)
{
    const char *s = getenv(name);
    *present = 0;
    if (!s)
        return 0;
    char *end;
    errno = 0;
    long x = strtol(s, &end, 10);
    if (errno || end == s || *end != '\0' || x < 0 || x > INT_MAX)
        return stk__error(STK_ECONFIG, "environment: %s='%s' is not a non-negative integer", name, s);
    *v = (int)x;
    *present = 1;
    return 0;
}

/* Tasks on node `node` from Slurm's "2(x3),1" form (per-node counts, with
 * repeats). 0 when it does not parse. */
static int slurm_tasks_on_node(const char *s, int node)
{
    int idx = 0;
    while (s && *s) {
        char *end;
        long n = strtol(s, &end, 10);
        if (end == s || n <= 0)
            return 0;
        long rep = 1;
        if (*end == '(') {
            if (end[1] != 'x')
                return 0;
            rep = strtol(end + 2, &end, 10);
            if (*end != ')' || rep <= 0)
                return 0;
            end++;
        }
        if (node < idx + rep)
            return (int)n;
        idx += (int)rep;
        s = *end == ',' ? end + 1 : NULL;
    }
    return 0;
}

/* First host of a Slurm host list ("gpu[07-09,12],cpu1" -> "gpu07"): rank
 * 0 runs there under the default block distribution. */
static int slurm_first_host(const char *list, char *out, size_t cap)
{
    size_t n = strcspn(list, ",[");
    if (n == 0 || n >= cap)
        return -1;
    memcpy(out, list, n);
    out[n] = '\0';
    if (list[n] == '[') {
        const char *p = list + n + 1;
        size_t d = strspn(p, "0123456789");
        if (d == 0 || n + d >= cap)
            return -1;
        memcpy(out + n, p, d);
        out[n + d] = '\0';
    }
    return 0;
}

static int read_torchrun(stk_dist_env_t *e)
{
    int v, have_rank, have_world, have;
    int rc = env_int("RANK", &e->rank, &have_rank);
    if (rc == 0)
        rc = env_int("WORLD_SIZE", &e->world_size, &have_world);
    if (rc < 0)
        return rc;
    if (!have_rank || !have_world)
        return stk__error(STK_ECONFIG, "environment: %s is set but %s is not (torchrun-style launchers set both)",
                          have_rank ? "RANK" : "WORLD_SIZE", have_rank ? "WORLD_SIZE" : "RANK");
    e->local_rank = e->rank;
    e->local_world_size = e->world_size;
    if ((rc = env_int("LOCAL_RANK", &v, &have)) < 0)
        return rc;
    if (have)
        e->local_rank = v;
    if ((rc = env_int("LOCAL_WORLD_SIZE", &v, &have)) < 0)
        return rc;
    if (have)
        e->local_world_size = v;
    e->launcher = STK_LAUNCHER_TORCHRUN;
    return 0;
}

static int read_mpi(stk_dist_env_t *e, const char *rank, const char *size, const char *lrank, const char *lsize)
{
    int have, v, rc = env_int(rank, &e->rank, &have);
    if (rc == 0)
        rc = env_int(size, &e->world_size, &have);
    if (rc < 0)
        return rc;
    if (!have)
        return stk__error(STK_ECONFIG, "environment: %s is set but %s is not", rank, size);
    e->local_rank = e->rank;
    e->local_world_size = e->world_size;
    if ((rc = env_int(lrank, &v, &have)) < 0)
        return rc;
    if (have)
        e->local_rank = v;
    if ((rc = env_int(lsize, &v, &have)) < 0)
        return rc;
    if (have)
        e->local_world_size = v;
    e->launcher = STK_LAUNCHER_MPI;
    return 0;
}

static int read_slurm(stk_dist_env_t *e)
{
    int have, v, rc = env_int("SLURM_PROCID", &e->rank, &have);
    if (rc < 0)
        return rc;
    if ((rc = env_int("SLURM_STEP_NUM_TASKS", &e->world_size, &have)) < 0)
        return rc;
    if (!have && ((rc = env_int("SLURM_NTASKS", &e->world_size, &have)) < 0))
        return rc;
    if (!have)
        return stk__error(STK_ECONFIG, "environment: SLURM_PROCID is set but neither SLURM_STEP_NUM_TASKS "
                          "nor SLURM_NTASKS");
    e->local_rank = 0;
    e->local_world_size = 1;
    if ((rc = env_int("SLURM_LOCALID", &v, &have)) < 0)
        return rc;
    if (have)
        e->local_rank = v;
    int node = 0;
    if ((rc = env_int("SLURM_NODEID", &v, &have)) < 0)
        return rc;
    if (have)
        node = v;
    const char *tpn = getenv("SLURM_STEP_TASKS_PER_NODE");
    if (!tpn)
        tpn = getenv("SLURM_TASKS_PER_NODE");
    int n = slurm_tasks_on_node(tpn, node);
    e->local_world_size = n > 0 ? n : e->local_rank + 1;
    if (!e->master_addr[0]) {
        const char *list = getenv("SLURM_STEP_NODELIST");
        if (!list)
            list = getenv("SLURM_JOB_NODELIST");
        if (list && slurm_first_host(list, e->master_addr, sizeof(e->master_addr)) < 0)
            e->master_addr[0] = '\0';
    }
    if (!e->master_port) {
        /* One port per job, so that two jobs sharing a node do not meet. */
        int job;
        if (env_int("SLURM_JOB_ID", &job, &have) == 0 && have)
            e->master_port = 20000 + job % 20000;
    }
    e->launcher = STK_LAUNCHER_SLURM;
    return 0;
}

int stk_dist_env_detect(stk_dist_env_t *env)
{
    if (!env)
        return stk__error(-EINVAL, "stk_dist_env_detect: NULL env");
    stk_dist_env_t e;
    memset(&e, 0, sizeof(e));
    e.world_size = 1;
    e.local_world_size = 1;

    const char *addr = getenv("MASTER_ADDR");
    if (addr && addr[0]) {
        if (strlen(addr) >= sizeof(e.master_addr))
            return stk__error(STK_ECONFIG, "environment: MASTER_ADDR is longer than %zu bytes",
                              sizeof(e.master_addr) - 1);
        strcpy(e.master_addr, addr);
    }
    int have, rc = env_int("MASTER_PORT", &e.master_port, &have);
    if (rc < 0)
        return rc;
    if (have && (e.master_port < 1 || e.master_port > 65535))
        return stk__error(STK_ECONFIG, "environment: MASTER_PORT=%d is outside 1..65535", e.master_port);

    if (getenv("RANK") || getenv("WORLD_SIZE"))
        rc = read_torchrun(&e);
    else if (getenv("OMPI_COMM_WORLD_RANK"))
        rc = read_mpi(&e, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                      "OMPI_COMM_WORLD_LOCAL_SIZE");
    else if (getenv("PMI_RANK"))
        rc = read_mpi(&e, "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS");
    else if (getenv("SLURM_PROCID") && getenv("SLURM_STEP_ID"))
        rc = read_slurm(&e);
    if (rc < 0)
        return rc;

    if (e.world_size < 1)
        return stk__error(STK_ECONFIG, "environment (%s): world size %d", stk_dist_launcher_name(e.launcher),
                          e.world_size);
    if (e.rank >= e.world_size)
        return stk__error(STK_ECONFIG, "environment (%s): rank %d is not below the world size %d",
                          stk_dist_launcher_name(e.launcher), e.rank, e.world_size);
    if (e.local_world_size < 1 || e.local_rank >= e.local_world_size || e.local_world_size > e.world_size)
        return stk__error(STK_ECONFIG, "environment (%s): local rank %d of %d ranks on this node (world %d)",
                          stk_dist_launcher_name(e.launcher), e.local_rank, e.local_world_size, e.world_size);
    *env = e;
    return 0;
}

const char *stk_dist_launcher_name(stk_dist_launcher_t l)
{
    switch (l) {
    case STK_LAUNCHER_NONE: return "none";
    case STK_LAUNCHER_TORCHRUN: return "torchrun";
    case STK_LAUNCHER_MPI: return "mpi";
    case STK_LAUNCHER_SLURM: return "slurm";
    }
    return "invalid";
}
