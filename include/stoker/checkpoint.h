/* SPDX-License-Identifier: MIT */
/* Checkpoints: one file of named, checksummed sections (parameters,
 * optimizer and scheduler state, loader cursor, RNG keys…), written
 * atomically so that a crash during a save leaves the previous checkpoint
 * intact, plus a checkpoint directory that keeps the last N. The library
 * does not know what a section means: the training loop names them. */
#ifndef STOKER_CHECKPOINT_H
#define STOKER_CHECKPOINT_H

#include "stoker/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Current file format version. Files of another version are refused
 * with STK_EFORMAT. */
#define STK_CKPT_VERSION 1
/* Longest section name, not counting the terminating NUL. */
#define STK_CKPT_NAME_MAX 47

/* One section to write: a name (1..STK_CKPT_NAME_MAX printable ASCII
 * characters, unique within the file) and bytes (data may be NULL when
 * len is 0). The caller keeps ownership. */
typedef struct stk_ckpt_section {
    const char *name;
    const void *data;
    size_t len;
} stk_ckpt_section_t;

/* Writes sections to path atomically: to "<path>.tmp-<pid>" in the same
 * directory, fsync, rename over path, fsync of the directory. A process
 * killed at any point leaves either the old file or the new one at path
 * (never a torn one), and at worst a stale temporary file.
 * Returns 0; STK_ECONFIG for a bad or duplicate section name;
 * -ENAMETOOLONG for a path too long for its temporary name; -errno from
 * the file system (message names the path); on error the temporary file is
 * removed and path is untouched. Thread-safe for distinct paths. */
STK_API int stk_ckpt_save(const char *path, const stk_ckpt_section_t *sections, size_t n);

/* A loaded, fully validated checkpoint (the whole file is in memory). */
typedef struct stk_ckpt stk_ckpt_t;

/* Reads path and checks magic, version, size, the section table and every
 * section's checksum. Returns 0 and *out; -errno (cannot open or read);
 * STK_EFORMAT (not a checkpoint, or another version); STK_EDATA (truncated,
 * bad checksum, inconsistent table): the message names the path and, for a
 * bad section, its name. Thread-safe. */
STK_API int stk_ckpt_create(stk_ckpt_t **out, const char *path);
/* Frees a checkpoint; accepts NULL and *ck == NULL; sets *ck to NULL. */
STK_API void stk_ckpt_destroy(stk_ckpt_t **ck);

/* Number of sections, and section i's name, bytes and length (each out
 * pointer may be NULL). The pointers stay valid until stk_ckpt_destroy.
 * section_at returns 0, -ERANGE (i >= the number of sections), -EINVAL. */
STK_API size_t stk_ckpt_num_sections(const stk_ckpt_t *ck);
STK_API int stk_ckpt_section_at(const stk_ckpt_t *ck, size_t i, const char **name,
                                const void **data, size_t *len);
/* Finds a section by name. Returns 0; STK_ENOTFOUND (message names the
 * section and file). data/len may be NULL. */
STK_API int stk_ckpt_find(const stk_ckpt_t *ck, const char *name, const void **data, size_t *len);
/* Like stk_ckpt_find, but also requires the section to hold exactly len
 * bytes and copies them to dst. STK_ESHAPE when the size differs (the
 * message gives both sizes: the usual sign of a different model). */
STK_API int stk_ckpt_read(const stk_ckpt_t *ck, const char *name, void *dst, size_t len);
/* The path the checkpoint was loaded from. */
STK_API const char *stk_ckpt_path(const stk_ckpt_t *ck);

/* ---- Checkpoint directories ------------------------------------------ */

/* A directory may hold the checkpoints of several runs side by side: each
 * file carries its run's tag in its name, "ckpt-<step, 12 digits>-<run>.stkc"
 * ("ckpt-<step>.stkc" for untagged checkpoints, run NULL), so that pruning,
 * finding the newest and listing never open a file and never touch
 * another run's checkpoints. A run tag is 1..STK_CKPT_RUN_MAX characters
 * from [0-9A-Za-z_]. */
#define STK_CKPT_RUN_MAX 32

/* Saves to "<dir>/ckpt-<step>[-<run>].stkc" with stk_ckpt_save (dir is
 * created if missing), then deletes all but the newest keep_last
 * checkpoints of the same run (untagged ones when run is NULL; keep_last 0
 * keeps all) and stale temporary files of dead writers. Other runs' files
 * are never touched. The path written goes to path_out (may be NULL) if it
 * fits in cap. Returns 0, STK_ECONFIG (bad run tag, step over 12 digits),
 * or as stk_ckpt_save. Not safe against two writers of one run on one dir. */
STK_API int stk_ckpt_dir_save(const char *dir, const char *run, uint64_t step, const stk_ckpt_section_t *sections,
                              size_t n, unsigned keep_last, char *path_out, size_t cap);
/* Path of the newest checkpoint (highest step) of run in dir. run NULL:
 * of whichever run the directory holds; when it holds checkpoints of more
 * than one run (the untagged ones count as one), STK_ESTATE with the runs
 * named in the message, since "the newest" would mix runs. Returns 0;
 * STK_ENOTFOUND when dir holds none (of that run); -errno when dir cannot
 * be read; -ENOSPC when cap is too small. Does not validate the file. */
STK_API int stk_ckpt_dir_latest(const char *dir, const char *run, char *path, size_t cap);
/* The distinct run tags of the checkpoints in dir, in ascending order:
 * the first min(n, count) go to runs[i] (each STK_CKPT_RUN_MAX + 1 bytes;
 * "" for untagged checkpoints), the count to *count (may be NULL). A
 * missing dir holds none. Returns 0 or -errno. */
STK_API int stk_ckpt_dir_runs(const char *dir, char (*runs)[STK_CKPT_RUN_MAX + 1], size_t n, size_t *count);

/* Checksum used for sections and the table: XXH64 (seed 0) of len bytes.
 * Exposed so that tools and tests can check a section by hand. */
STK_API uint64_t stk_ckpt_checksum(const void *data, size_t len);

#ifdef __cplusplus
}
#endif
#endif
