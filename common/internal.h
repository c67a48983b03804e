/* SPDX-License-Identifier: MIT */
/* Internal helpers shared by every module: raising errors with context and
 * logging. Not installed; names are stk__ (two underscores). */
#ifndef STOKER_COMMON_INTERNAL_H
#define STOKER_COMMON_INTERNAL_H

#include "config.h"
#include "stoker/common.h"

#include <stdarg.h>

/* Records `code` with a printf-style context message for this thread,
 * sends it to the logger at debug level, and returns `code`, so that
 * `return stk__error(-ENOENT, "open %s", path);` reads naturally. */
int stk__error(int code, const char *fmt, ...) STK_PRINTF(2, 3);
int stk__verror(int code, const char *fmt, va_list ap);
/* Prepends "prefix: " to this thread's message and returns `code`;
 * for adding outer context (the shard path) to an inner error. */
int stk__error_prefix(int code, const char *fmt, ...) STK_PRINTF(2, 3);

void stk__log(stk_log_level_t level, const char *fmt, ...) STK_PRINTF(2, 3);
/* True when a callback would receive messages of this level. */
int stk__log_enabled(stk_log_level_t level);

/* CLOCK_MONOTONIC in nanoseconds and in seconds (common/clock.c): for
 * timeouts and the time figures every module reports. */
uint64_t stk__now_ns(void);
double stk__now_s(void);

/* XXH64 of len bytes with the given seed (xxHash specification). */
uint64_t stk__xxh64(const void *data, size_t len, uint64_t seed);

#define STK__ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
