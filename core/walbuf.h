/*
 * walbuf: a SQLite VFS over the system's that makes the writes of a
 * transaction to its WAL file in a few large writes instead of two per page.
 *
 * SQLite writes each frame of the WAL as two pwrite calls, its 24-byte
 * header and its page: about 24 system calls for a group of small bodies,
 * and 4 or more per body once a body needs an overflow page. walbuf keeps a
 * WAL file's writes in a buffer (BRM_WALBUF_SIZE) while they follow one
 * another, and makes them as one write when the next does not follow, when
 * the buffer is full, and before anything that must see the file as SQLite
 * wrote it: a read, a sync, a truncation, its size, a file control, its
 * close. It also makes them right after the page of a commit frame (a frame
 * header whose commit field is not 0), before SQLite returns from the
 * commit and publishes the frames in the WAL index, so another connection
 * never finds a committed frame that is not in the file; and a write that
 * fails there fails that commit, as a failed pwrite of SQLite's own would.
 * Database files and every other file go to the system's VFS untouched.
 * Depends on SQLite alone.
 */
#ifndef BRM_WALBUF_H
#define BRM_WALBUF_H

#define BRM_WALBUF_SIZE (64u << 10)

/* The VFS's name, for sqlite3_open_v2; registered on the first call (any
 * thread). NULL when it could not be: then SQLite's default serves. */
const char *brm_walbuf_vfs(void);

#endif
