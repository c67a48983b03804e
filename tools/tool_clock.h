/* SPDX-License-Identifier: MIT */
/* The monotonic clock in seconds, for the command-line tools' timings
 * (the library's own clock is internal to it). Not installed. */
#ifndef STOKER_TOOL_CLOCK_H
#define STOKER_TOOL_CLOCK_H

#include <time.h>

static inline double tool_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#endif
