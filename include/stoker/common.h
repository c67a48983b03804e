/* SPDX-License-Identifier: MIT */
/* Stoker common API: status codes, error context, logging, the counter-based
 * RNG and dtypes. Every other public header includes this one. Only libc
 * headers here, so it compiles alone as C11 and as C++. */
#ifndef STOKER_COMMON_H
#define STOKER_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(STK_BUILDING_LIBRARY) && defined(__GNUC__)
#define STK_API __attribute__((visibility("default")))
#else
#define STK_API
#endif

#if defined(__GNUC__)
#define STK_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define STK_PRINTF(f, a)
#endif

/* Status codes. Calls that can fail return 0 or a negative code: POSIX
 * errors are negated errno values (-ENOENT), Stoker's own sit at -1000 and
 * below. STK_DONE (positive) marks the natural end of a stream. */
#define STK_ERROR_LIST(X)                                                   \
    X(EDATA, -1001, "corrupt or inconsistent data")                         \
    X(EFORMAT, -1002, "not a Stoker file, or an unsupported version")       \
    X(EWORKER, -1003, "a worker process failed")                            \
    X(ERANK, -1004, "a rank failed")                                        \
    X(EDEVICE, -1005, "device error")                                       \
    X(ECONFIG, -1006, "bad configuration")                                  \
    X(EBACKEND, -1007, "error in a backend library")                        \
    X(ESHAPE, -1008, "shape or size mismatch")                              \
    X(ELIMIT, -1009, "a system limit is too low")                           \
    X(ESTATE, -1010, "call not valid in the object's current state")        \
    X(EEMPTY, -1011, "empty data set")                                      \
    X(ENOTFOUND, -1012, "no such name")

enum {
#define STK__ENUM(name, value, text) STK_##name = value,
    STK_ERROR_LIST(STK__ENUM)
#undef STK__ENUM
    STK_OK = 0,
    STK_DONE = 1
};

/* Text for a status code (never NULL). POSIX codes use the C library's text.
 * Thread-safe. */
STK_API const char *stk_strerror(int code);
/* Symbolic name of a status code, e.g. "STK_EDATA" or "ENOENT". Thread-safe. */
STK_API const char *stk_err_name(int code);

/* The context of the last error raised on this thread: which file, record,
 * key, line, rank, pid or signal. Valid until the next failing call on the
 * same thread. Never NULL (empty when there is none). */
STK_API const char *stk_error_message(void);
/* Forget this thread's last error message. */
STK_API void stk_error_clear(void);

/* Logging. The library never prints: messages go to the callback set here
 * (none by default). The callback may be called from any thread that calls
 * into Stoker; it must be thread-safe. Set it before starting workers. */
typedef enum stk_log_level {
    STK_LOG_ERROR = 0,
    STK_LOG_WARN = 1,
    STK_LOG_INFO = 2,
    STK_LOG_DEBUG = 3
} stk_log_level_t;

typedef void (*stk_log_fn)(stk_log_level_t level, const char *msg, void *user);
STK_API void stk_log_set_callback(stk_log_fn fn, void *user, stk_log_level_t max_level);
/* A ready-made callback that writes "stoker: <level>: msg" to stderr. */
STK_API void stk_log_stderr(stk_log_level_t level, const char *msg, void *user);

/* Counter-based RNG: Philox4x32-10 (Salmon et al., "Parallel random numbers:
 * as easy as 1, 2, 3", SC'11). Output is a pure function of (key, counter),
 * so any worker can reproduce the draws of any sample without shared state. */
STK_API void stk_philox4x32(uint64_t key, uint64_t ctr_hi, uint64_t ctr_lo, uint32_t out[4]);

/* Mixes values into a 64-bit key (splitmix64 finalizer over a running hash):
 * chained as stk_rng_mix(stk_rng_mix(seed, epoch), index) to key a draw
 * by several values. */
STK_API uint64_t stk_rng_mix(uint64_t a, uint64_t b);

/* A stream of draws from one Philox key. Plain struct, cheap to copy; two
 * streams with the same (key, stream) yield the same numbers. */
typedef struct stk_rng {
    uint64_t key;
    uint64_t stream;  /* high counter word: which stream under this key */
    uint64_t counter; /* low counter word: block number within the stream */
    uint32_t buf[4];
    unsigned avail;   /* unread words left in buf */
} stk_rng_t;

STK_API void stk_rng_init(stk_rng_t *rng, uint64_t key, uint64_t stream);
STK_API uint32_t stk_rng_u32(stk_rng_t *rng);
STK_API uint64_t stk_rng_u64(stk_rng_t *rng);
/* Uniform integer in [0, bound), unbiased (Lemire's method); bound > 0. */
STK_API uint64_t stk_rng_below(stk_rng_t *rng, uint64_t bound);
/* Uniform float in [0, 1) with 24 random bits. */
STK_API float stk_rng_uniform(stk_rng_t *rng);
/* Uniform double in [0, 1) with 53 random bits. */
STK_API double stk_rng_uniform_f64(stk_rng_t *rng);

/* Element types of shard fields and tensors. Values are stored on disk
 * (shard schema): never renumber. */
typedef enum stk_dtype {
    STK_DTYPE_INVALID = 0,
    STK_DTYPE_U8 = 1,
    STK_DTYPE_I8 = 2,
    STK_DTYPE_I32 = 3,
    STK_DTYPE_I64 = 4,
    STK_DTYPE_F16 = 5,
    STK_DTYPE_BF16 = 6,
    STK_DTYPE_F32 = 7
} stk_dtype_t;

/* Bytes per element; 0 for an invalid dtype. */
STK_API size_t stk_dtype_size(stk_dtype_t dt);
/* "u8", "i8", "i32", "i64", "f16", "bf16", "f32"; "invalid" otherwise. */
STK_API const char *stk_dtype_name(stk_dtype_t dt);
/* Parses a name as printed by stk_dtype_name; STK_DTYPE_INVALID if unknown. */
STK_API stk_dtype_t stk_dtype_from_name(const char *name);

/* IEEE binary16 and bfloat16 conversions, round to nearest even. */
STK_API uint16_t stk_f32_to_f16(float f);
STK_API float stk_f16_to_f32(uint16_t h);
STK_API uint16_t stk_f32_to_bf16(float f);
STK_API float stk_bf16_to_f32(uint16_t b);

/* Library version as "MAJOR.MINOR.PATCH". */
STK_API const char *stk_version(void);

#ifdef __cplusplus
}
#endif
#endif
