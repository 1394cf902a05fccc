#include "walbuf.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define VFS_NAME     "brume-wal"
#define FRAME_HEADER 24 /* a WAL frame's header; the WAL's own header is 32 bytes */

/* An open WAL file: SQLite's view of it first, the system VFS's file after. */
struct wal_file {
    sqlite3_file base;
    sqlite3_file *real;
    unsigned char *buf; /* writes not made yet, from offset at */
    sqlite3_int64 at;
    size_t len;
    int ends_commit; /* the last write was a commit frame's header */
};

static sqlite3_vfs vfs;
static sqlite3_vfs *sys; /* the VFS under this one */

/* Makes the writes held in W's buffer. */
static int flush(struct wal_file *w) {
    if (!w->len) return SQLITE_OK;
    size_t len = w->len;
    w->len = 0;
    return w->real->pMethods->xWrite(w->real, w->buf, (int)len, w->at);
}

/* ---- the WAL file's methods --------------------------------------------- */

static int wal_close(sqlite3_file *f) {
    struct wal_file *w = (struct wal_file *)f;
    int rc = flush(w);
    int closed = w->real->pMethods->xClose(w->real);
    free(w->buf);
    w->buf = NULL;
    return rc != SQLITE_OK ? rc : closed;
}

static int wal_read(sqlite3_file *f, void *out, int amt, sqlite3_int64 off) {
    struct wal_file *w = (struct wal_file *)f;
    int rc = flush(w);
    return rc != SQLITE_OK ? rc : w->real->pMethods->xRead(w->real, out, amt, off);
}

static int wal_write(sqlite3_file *f, const void *data, int amt, sqlite3_int64 off) {
    struct wal_file *w = (struct wal_file *)f;
    const unsigned char *p = data;
    int rc = SQLITE_OK;
    int ends_commit = w->ends_commit; /* this is the page of a commit frame */
    /* A frame's header says in bytes 4 to 7 how large the database is once
     * its transaction commits, and is 0 for a frame that commits nothing. */
    w->ends_commit = amt == FRAME_HEADER && (p[4] | p[5] | p[6] | p[7]) != 0;
    if (w->len && (off != w->at + (sqlite3_int64)w->len || w->len + (size_t)amt > BRM_WALBUF_SIZE))
        rc = flush(w);
    if (rc != SQLITE_OK) return rc;
    if ((size_t)amt > BRM_WALBUF_SIZE || !w->buf)
        return w->real->pMethods->xWrite(w->real, data, amt, off);
    if (!w->len) w->at = off;
    memcpy(w->buf + w->len, data, (size_t)amt);
    w->len += (size_t)amt;
    return ends_commit ? flush(w) : SQLITE_OK;
}

static int wal_truncate(sqlite3_file *f, sqlite3_int64 size) {
    struct wal_file *w = (struct wal_file *)f;
    int rc = flush(w);
    return rc != SQLITE_OK ? rc : w->real->pMethods->xTruncate(w->real, size);
}

static int wal_sync(sqlite3_file *f, int flags) {
    struct wal_file *w = (struct wal_file *)f;
    int rc = flush(w);
    return rc != SQLITE_OK ? rc : w->real->pMethods->xSync(w->real, flags);
}

static int wal_file_size(sqlite3_file *f, sqlite3_int64 *size) {
    struct wal_file *w = (struct wal_file *)f;
    int rc = flush(w);
    return rc != SQLITE_OK ? rc : w->real->pMethods->xFileSize(w->real, size);
}

static int wal_lock(sqlite3_file *f, int level) {
    struct wal_file *w = (struct wal_file *)f;
    return w->real->pMethods->xLock(w->real, level);
}

static int wal_unlock(sqlite3_file *f, int level) {
    struct wal_file *w = (struct wal_file *)f;
    return w->real->pMethods->xUnlock(w->real, level);
}

static int wal_reserved(sqlite3_file *f, int *out) {
    struct wal_file *w = (struct wal_file *)f;
    return w->real->pMethods->xCheckReservedLock(w->real, out);
}

static int wal_control(sqlite3_file *f, int op, void *arg) {
    struct wal_file *w = (struct wal_file *)f;
    int rc = flush(w);
    return rc != SQLITE_OK ? rc : w->real->pMethods->xFileControl(w->real, op, arg);
}

static int wal_sector_size(sqlite3_file *f) {
    struct wal_file *w = (struct wal_file *)f;
    return w->real->pMethods->xSectorSize(w->real);
}

static int wal_device(sqlite3_file *f) {
    struct wal_file *w = (struct wal_file *)f;
    return w->real->pMethods->xDeviceCharacteristics(w->real);
}

/* Version 1: SQLite maps and shares memory through the database file only. */
static const sqlite3_io_methods wal_methods = {
    1,
    wal_close,
    wal_read,
    wal_write,
    wal_truncate,
    wal_sync,
    wal_file_size,
    wal_lock,
    wal_unlock,
    wal_reserved,
    wal_control,
    wal_sector_size,
    wal_device,
    NULL,
    NULL,
    NULL,
    NULL,
    NULL,
    NULL,
};

/* ---- the VFS ------------------------------------------------------------ */

static int vfs_open(sqlite3_vfs *v, const char *name, sqlite3_file *f, int flags, int *out) {
    (void)v;
    if (!(flags & SQLITE_OPEN_WAL)) return sys->xOpen(sys, name, f, flags, out);
    struct wal_file *w = (struct wal_file *)f;
    memset(w, 0, sizeof(*w));
    w->real = (sqlite3_file *)(w + 1);
    int rc = sys->xOpen(sys, name, w->real, flags, out);
    if (rc != SQLITE_OK) {
        w->base.pMethods = NULL; /* SQLite does not close a file it failed to open */
        return rc;
    }
    w->buf = malloc(BRM_WALBUF_SIZE); /* none: every write goes through at once */
    w->base.pMethods = &wal_methods;
    return SQLITE_OK;
}

static int vfs_delete(sqlite3_vfs *v, const char *name, int sync_dir) {
    (void)v;
    return sys->xDelete(sys, name, sync_dir);
}

static int vfs_access(sqlite3_vfs *v, const char *name, int flags, int *out) {
    (void)v;
    return sys->xAccess(sys, name, flags, out);
}

static int vfs_full_pathname(sqlite3_vfs *v, const char *name, int n, char *out) {
    (void)v;
    return sys->xFullPathname(sys, name, n, out);
}

static void *vfs_dlopen(sqlite3_vfs *v, const char *name) {
    (void)v;
    return sys->xDlOpen(sys, name);
}

static void vfs_dlerror(sqlite3_vfs *v, int n, char *out) {
    (void)v;
    sys->xDlError(sys, n, out);
}

static void (*vfs_dlsym(sqlite3_vfs *v, void *lib, const char *name))(void) {
    (void)v;
    return sys->xDlSym(sys, lib, name);
}

static void vfs_dlclose(sqlite3_vfs *v, void *lib) {
    (void)v;
    sys->xDlClose(sys, lib);
}

static int vfs_randomness(sqlite3_vfs *v, int n, char *out) {
    (void)v;
    return sys->xRandomness(sys, n, out);
}

static int vfs_sleep(sqlite3_vfs *v, int us) {
    (void)v;
    return sys->xSleep(sys, us);
}

static int vfs_current_time(sqlite3_vfs *v, double *out) {
    (void)v;
    return sys->xCurrentTime(sys, out);
}

static int vfs_last_error(sqlite3_vfs *v, int n, char *out) {
    (void)v;
    return sys->xGetLastError ? sys->xGetLastError(sys, n, out) : 0;
}

static int vfs_current_time64(sqlite3_vfs *v, sqlite3_int64 *out) {
    (void)v;
    if (sys->iVersion >= 2 && sys->xCurrentTimeInt64) return sys->xCurrentTimeInt64(sys, out);
    double days;
    int rc = sys->xCurrentTime(sys, &days);
    *out = (sqlite3_int64)(days * 86400000.0);
    return rc;
}

static void register_vfs(void) {
    sys = sqlite3_vfs_find(NULL);
    if (!sys) return;
    int size = (int)sizeof(struct wal_file) + sys->szOsFile;
    vfs = (sqlite3_vfs){
        .iVersion = 2,
        .szOsFile = size > sys->szOsFile ? size : sys->szOsFile,
        .mxPathname = sys->mxPathname,
        .zName = VFS_NAME,
        .xOpen = vfs_open,
        .xDelete = vfs_delete,
        .xAccess = vfs_access,
        .xFullPathname = vfs_full_pathname,
        .xDlOpen = vfs_dlopen,
        .xDlError = vfs_dlerror,
        .xDlSym = vfs_dlsym,
        .xDlClose = vfs_dlclose,
        .xRandomness = vfs_randomness,
        .xSleep = vfs_sleep,
        .xCurrentTime = vfs_current_time,
        .xGetLastError = vfs_last_error,
        .xCurrentTimeInt64 = vfs_current_time64,
    };
    if (sqlite3_vfs_register(&vfs, 0) != SQLITE_OK) sys = NULL;
}

const char *brm_walbuf_vfs(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, register_vfs);
    return sys ? VFS_NAME : NULL;
}
