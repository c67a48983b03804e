/* SPDX-License-Identifier: MIT */
/* The logger: the library's only way to say something. Messages go to a
 * user callback; nothing is printed unless a callback is installed. */
#include "internal.h"

#include <stdio.h>

static stk_log_fn stk__log_fn;
static void *stk__log_user;
static stk_log_level_t stk__log_max = STK_LOG_INFO;

void stk_log_set_callback(stk_log_fn fn, void *user, stk_log_level_t max_level)
{
    stk__log_fn = fn;
    stk__log_user = user;
    stk__log_max = max_level;
}

int stk__log_enabled(stk_log_level_t level)
{
    return stk__log_fn != NULL && level <= stk__log_max;
}

void stk__log(stk_log_level_t level, const char *fmt, ...)
{
    char msg[1536];
    va_list ap;
    if (!stk__log_enabled(level))
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    stk__log_fn(level, msg, stk__log_user);
}

void stk_log_stderr(stk_log_level_t level, const char *msg, void *user)
{
    static const char *const names[] = {"error", "warning", "info", "debug"};
    (void)user;
    fprintf(stderr, "stoker: %s: %s\n", names[level <= STK_LOG_DEBUG ? level : STK_LOG_DEBUG], msg);
}

const char *stk_version(void)
{
    return STK_VERSION;
}
