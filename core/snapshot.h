/*
 * snapshot: the files one rule set is built from, each read once. A reload
 * builds an engine per worker (and later, maybe, a fresh VM for one whose
 * memory filled up); if each read the rules and scripts from disk, an edit
 * made meanwhile would give workers different code under one rule set.
 * Through a snapshot, the first read of a file, or of a folder's listing,
 * is what every later one gets, missing files included. Reference-counted:
 * every engine built from it holds one. Reads are serialised by a lock (the
 * engines are built on one thread, but a rule may require a module while
 * it runs). Depends on util.
 */
#ifndef BRM_SNAPSHOT_H
#define BRM_SNAPSHOT_H

#include <stddef.h>

#include "util.h"

struct brm_snapshot;

struct brm_snapshot *brm_snapshot_new(void);
struct brm_snapshot *brm_snapshot_ref(struct brm_snapshot *s);
void brm_snapshot_free(struct brm_snapshot *s); /* drops a reference; NULL is fine */

/* The bytes of PATH (at most MAX) as first read: 0 with OUT set, or -1 with
 * errno as the first read failed. */
int brm_snapshot_read(struct brm_snapshot *s, const char *path, size_t max, struct brm_buf *out);

/* The names in folder DIR as first listed, '\n'-separated, in the order
 * readdir gave them (a copy in OUT). 0, or -1 with errno. */
int brm_snapshot_list(struct brm_snapshot *s, const char *dir, struct brm_buf *out);

/* A new snapshot holding what S read so far, except that file PATH holds
 * TEXT (LEN bytes): an edited rule tried without saving it. What S did not
 * read yet is read from disk at first use, as in any snapshot. */
struct brm_snapshot *brm_snapshot_with(struct brm_snapshot *s, const char *path, const char *text,
                                       size_t len);

#endif
