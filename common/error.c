/* SPDX-License-Identifier: MIT */
/* Status code names and texts, generated from STK_ERROR_LIST, and the
 * per-thread error context that carries path, record, key or pid. */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define STK__ERRMSG_MAX 1024

static _Thread_local char stk__errmsg[STK__ERRMSG_MAX];

const char *stk_strerror(int code)
{
    switch (code) {
    case STK_OK: return "success";
    case STK_DONE: return "end of stream";
#define STK__TEXT(name, value, text) case STK_##name: return text;
        STK_ERROR_LIST(STK__TEXT)
#undef STK__TEXT
    default: break;
    }
    if (code < 0 && code > -4096) {
        const char *s = strerrordesc_np(-code);
        if (s)
            return s;
    }
    return "unknown error";
}

const char *stk_err_name(int code)
{
    switch (code) {
    case STK_OK: return "STK_OK";
    case STK_DONE: return "STK_DONE";
#define STK__NAME(name, value, text) case STK_##name: return "STK_" #name;
        STK_ERROR_LIST(STK__NAME)
#undef STK__NAME
    default: break;
    }
    if (code < 0 && code > -4096) {
        const char *s = strerrorname_np(-code);
        if (s)
            return s;
    }
    return "STK_EUNKNOWN";
}

const char *stk_error_message(void)
{
    return stk__errmsg;
}

void stk_error_clear(void)
{
    stk__errmsg[0] = '\0';
}

int stk__verror(int code, const char *fmt, va_list ap)
{
    vsnprintf(stk__errmsg, sizeof stk__errmsg, fmt, ap);
    if (stk__log_enabled(STK_LOG_DEBUG))
        stk__log(STK_LOG_DEBUG, "%s (%s)", stk__errmsg, stk_err_name(code));
    return code;
}

int stk__error(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    stk__verror(code, fmt, ap);
    va_end(ap);
    return code;
}

int stk__error_prefix(int code, const char *fmt, ...)
{
    char prefix[STK__ERRMSG_MAX];
    char old[STK__ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, stk__errmsg, sizeof old);
    /* Truncation of an over-long context is acceptable; say so to gcc. */
    size_t n = strnlen(prefix, sizeof prefix - 1);
    if (n > sizeof stk__errmsg - 3)
        n = sizeof stk__errmsg - 3;
    memcpy(stk__errmsg, prefix, n);
    memcpy(stk__errmsg + n, ": ", 2);
    size_t room = sizeof stk__errmsg - n - 2;
    size_t m = strnlen(old, room - 1);
    memcpy(stk__errmsg + n + 2, old, m);
    stk__errmsg[n + 2 + m] = '\0';
    return code;
}
