/* SPDX-License-Identifier: MIT */
/* Test hook of the checkpoint writer: called at each step of a save, so
 * that a test can stop the writer at an exact point (raise(SIGSTOP)) and
 * kill it there, instead of racing a timer against the write. Internal. */
#ifndef STOKER_CHECKPOINT_INTERNAL_H
#define STOKER_CHECKPOINT_INTERNAL_H

enum {
    STK__CKPT_WRITTEN = 1, /* temporary file written, not yet fsynced */
    STK__CKPT_SYNCED = 2,  /* temporary file fsynced, not yet renamed */
    STK__CKPT_RENAMED = 3, /* renamed over the final name, directory not yet fsynced */
    STK__CKPT_PRUNE = 4    /* a directory save: saved, about to delete older checkpoints */
};
/* NULL (default): no hook. path is the final name being written. */
extern void (*stk__ckpt_test_hook)(int phase, const char *path);

#endif
