/* SPDX-License-Identifier: MIT */
/* CPU threads on a shared machine: how many CPUs this process may really
 * use (its affinity mask, capped by the cgroup CPU quota: v2 cpu.max or v1
 * cfs_quota_us, at every level up to the root), which is a model's default
 * thread count; and OpenMP's wait policy. libgomp (oneDNN's runtime on
 * Debian) reads OMP_WAIT_POLICY and GOMP_SPINCOUNT once, in its constructor,
 * before main; a setenv later (even in a .preinit_array function: libc's
 * own initializer then resets environ) changes nothing, and it has no call
 * to change them. Unset, its threads spin about 3 ms (300000 rounds) at
 * every wait, which on a loaded machine burns the CPU time the thread they
 * wait for needs. So the only way a program can choose passive waiting for
 * itself is to set the variable and execute itself again, which is what
 * stk_engine_passive_wait does. */
#define _GNU_SOURCE 1 /* sched_getaffinity, CPU_COUNT */
#include "cpu.h"

#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* ---------------------------------------------------------- CPU quota */

/* ceil(quota / period) from one cgroup directory, 0 when unlimited or not
 * readable. v2: "cpu.max" = "max|QUOTA PERIOD"; v1: cpu.cfs_quota_us (-1:
 * none) and cpu.cfs_period_us. */
static long dir_limit(const char *dir, int v2)
{
    char path[PATH_MAX + 32]; /* dir is at most PATH_MAX */
    long long q = -1, p = 0;
    FILE *f;
    if (v2) {
        snprintf(path, sizeof(path), "%s/cpu.max", dir);
        if (!(f = fopen(path, "r")))
            return 0;
        char qs[32];
        if (fscanf(f, "%31s %lld", qs, &p) != 2 || !strcmp(qs, "max"))
            q = -1;
        else
            q = strtoll(qs, NULL, 10);
        fclose(f);
    } else {
        snprintf(path, sizeof(path), "%s/cpu.cfs_quota_us", dir);
        if (!(f = fopen(path, "r")))
            return 0;
        if (fscanf(f, "%lld", &q) != 1)
            q = -1;
        fclose(f);
        snprintf(path, sizeof(path), "%s/cpu.cfs_period_us", dir);
        if (!(f = fopen(path, "r")))
            return 0;
        if (fscanf(f, "%lld", &p) != 1)
            p = 0;
        fclose(f);
    }
    if (q <= 0 || p <= 0)
        return 0;
    return (long)((q + p - 1) / p);
}

/* The smallest limit from dir up to (and including) top. */
static long walk_up(char *dir, size_t top_len, int v2)
{
    long best = 0;
    for (;;) {
        long l = dir_limit(dir, v2);
        if (l > 0 && (best == 0 || l < best))
            best = l;
        char *slash = strrchr(dir, '/');
        if (strlen(dir) <= top_len || !slash || (size_t)(slash - dir) < top_len)
            break;
        *slash = '\0';
    }
    return best;
}

/* This process's cgroup path for v2 ("0::/x") or for the v1 hierarchy
 * that has the cpu controller ("4:cpu,cpuacct:/x"). */
static int cgroup_path(const char *cgroup_file, int v2, char *out, size_t cap)
{
    FILE *f = fopen(cgroup_file, "r");
    if (!f)
        return -1;
    char line[1024];
    int found = -1;
    while (found < 0 && fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = '\0';
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2)
            continue;
        *c2 = '\0';
        const char *ctrls = c1 + 1;
        int match = 0;
        if (v2) {
            match = *ctrls == '\0' && !strncmp(line, "0:", 2);
        } else {
            char tmp[256];
            snprintf(tmp, sizeof(tmp), "%s", ctrls);
            char *save = NULL;
            for (char *t = strtok_r(tmp, ",", &save); t; t = strtok_r(NULL, ",", &save))
                match |= !strcmp(t, "cpu");
        }
        if (match) {
            snprintf(out, cap, "%s", c2 + 1);
            found = 0;
        }
    }
    fclose(f);
    return found;
}

long stk__cgroup_cpu_limit(const char *mountinfo, const char *cgroup_file, const char *prefix)
{
    FILE *f = fopen(mountinfo, "r");
    if (!f)
        return 0;
    char line[2048];
    long best = 0;
    while (fgets(line, sizeof(line), f)) {
        /* id parent maj:min root mountpoint options ... - fstype source superopts */
        char root[512], mnt[512], fstype[64], super[512];
        char *dash = strstr(line, " - ");
        if (!dash || sscanf(line, "%*s %*s %*s %511s %511s", root, mnt) != 2 ||
            sscanf(dash + 3, "%63s %*s %511s", fstype, super) != 2)
            continue;
        int v2 = !strcmp(fstype, "cgroup2");
        if (!v2) {
            if (strcmp(fstype, "cgroup") != 0)
                continue;
            int cpu = 0;
            char *save = NULL;
            for (char *t = strtok_r(super, ",", &save); t; t = strtok_r(NULL, ",", &save))
                cpu |= !strcmp(t, "cpu");
            if (!cpu)
                continue;
        }
        char cg[1024];
        if (cgroup_path(cgroup_file, v2, cg, sizeof(cg)) < 0)
            continue;
        /* Inside a cgroup namespace the mount's root is where the
         * process's path starts. */
        const char *rel = cg;
        size_t rl = strlen(root);
        if (strcmp(root, "/") != 0 && !strncmp(cg, root, rl))
            rel = cg + rl;
        char dir[PATH_MAX];
        int n = snprintf(dir, sizeof(dir), "%s%s%s", prefix, mnt, strcmp(rel, "/") ? rel : "");
        if (n < 0 || (size_t)n >= sizeof(dir))
            continue;
        size_t top = strlen(prefix) + strlen(mnt);
        long l = walk_up(dir, top, v2);
        if (l > 0 && (best == 0 || l < best))
            best = l;
    }
    fclose(f);
    return best;
}

int stk_engine_cpu_count(void)
{
    int n = 0;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        n = CPU_COUNT(&set);
    if (n < 1) {
        long on = sysconf(_SC_NPROCESSORS_ONLN);
        n = on > 0 ? (int)on : 1;
    }
    long quota = stk__cgroup_cpu_limit("/proc/self/mountinfo", "/proc/self/cgroup", "");
    if (quota > 0 && quota < n)
        n = (int)quota;
    return n;
}

int stk__default_threads(void)
{
    const char *env = getenv("OMP_NUM_THREADS");
    return env && *env ? 0 : stk_engine_cpu_count();
}

/* --------------------------------------------------------- wait policy */

/* What libgomp read: the environment as it was when this library was
 * loaded (libgomp, a dependency, was initialized before). */
static stk_wait_policy_t policy_at_load = STK_WAIT_SPIN;

static stk_wait_policy_t policy_of_env(void)
{
    const char *w = getenv("OMP_WAIT_POLICY"), *s = getenv("GOMP_SPINCOUNT");
    if (s && *s) {
        char *end;
        long long v = strtoll(s, &end, 10);
        return v == 0 && end != s ? STK_WAIT_PASSIVE : STK_WAIT_SPIN;
    }
    if (w && !strcasecmp(w, "passive"))
        return STK_WAIT_PASSIVE;
    if (w && !strcasecmp(w, "active"))
        return STK_WAIT_ACTIVE;
    return STK_WAIT_SPIN;
}

__attribute__((constructor)) static void record_policy(void)
{
    policy_at_load = policy_of_env();
}

stk_wait_policy_t stk_engine_wait_policy(void)
{
#ifdef _OPENMP
    return policy_at_load;
#else
    return STK_WAIT_PASSIVE;
#endif
}

int stk_engine_passive_wait(char **argv)
{
#ifdef _OPENMP
    const char *w = getenv("OMP_WAIT_POLICY"), *s = getenv("GOMP_SPINCOUNT");
    /* The user's choice stands; and a second pass finds it set. */
    if ((w && *w) || (s && *s))
        return 0;
    if (setenv("OMP_WAIT_POLICY", "passive", 1) != 0)
        return stk__error(-errno, "passive wait: setenv failed");
    if (!argv || !argv[0])
        return stk__error(-EINVAL, "passive wait: no argv to execute again (OMP_WAIT_POLICY is set for children)");
    execv("/proc/self/exe", argv);
    int e = errno;
    return stk__error(-e, "passive wait: cannot execute /proc/self/exe again (%s); OpenMP threads will spin",
                      strerror(e));
#else
    (void)argv;
    return 0;
#endif
}
