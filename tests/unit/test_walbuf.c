/*
 * walbuf: a transaction's WAL frames reach the file in a few writes, are
 * there before another connection can see the commit, and a write that
 * fails fails the commit. The writes are counted, and failed on demand,
 * through the unix VFS's own system-call table.
 */
#include <errno.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <sys/types.h>
#include <unistd.h>

#include "test.h"
#include "walbuf.h"

static int writes, failing;
static sqlite3_syscall_ptr real_pwrite, real_pwrite64;

static ssize_t counted_pwrite(int fd, const void *p, size_t n, off_t off) {
    writes++;
    if (failing) {
        errno = EIO;
        return -1;
    }
    return ((ssize_t(*)(int, const void *, size_t, off_t))real_pwrite)(fd, p, n, off);
}

static ssize_t counted_pwrite64(int fd, const void *p, size_t n, off_t off) {
    writes++;
    if (failing) {
        errno = EIO;
        return -1;
    }
    return ((ssize_t(*)(int, const void *, size_t, off_t))real_pwrite64)(fd, p, n, off);
}

static sqlite3 *open_db(const char *path, const char *vfs) {
    sqlite3 *db = NULL;
    CHECK_INT(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, vfs),
              SQLITE_OK);
    CHECK_INT(sqlite3_exec(db,
                           "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;"
                           "PRAGMA wal_autocheckpoint = 0;"
                           "CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY, v BLOB)",
                           NULL, NULL, NULL),
              SQLITE_OK);
    return db;
}

/* Adds COUNT rows of SIZE bytes in one transaction; the SQLite result of
 * its commit. */
static int add_rows(sqlite3 *db, int count, int size) {
    sqlite3_stmt *st;
    sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
    sqlite3_prepare_v2(db, "INSERT INTO t (v) VALUES (randomblob(?))", -1, &st, NULL);
    for (int i = 0; i < count; i++) {
        sqlite3_bind_int(st, 1, size);
        sqlite3_step(st);
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    int rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    if (rc != SQLITE_OK) sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

static long long count_rows(sqlite3 *db) {
    sqlite3_stmt *st;
    long long n = -1;
    sqlite3_prepare_v2(db, "SELECT count(*) FROM t", -1, &st, NULL);
    if (sqlite3_step(st) == SQLITE_ROW) n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

static const char *integrity(sqlite3 *db) {
    static char out[64];
    sqlite3_stmt *st;
    snprintf(out, sizeof(out), "?");
    sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL);
    if (sqlite3_step(st) == SQLITE_ROW)
        snprintf(out, sizeof(out), "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    return out;
}

int main(void) {
    char dir[] = "/tmp/brume-walbuf-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    sqlite3_vfs *unix_vfs = sqlite3_vfs_find("unix");
    real_pwrite = unix_vfs->xGetSystemCall(unix_vfs, "pwrite");
    real_pwrite64 = unix_vfs->xGetSystemCall(unix_vfs, "pwrite64");
    if (real_pwrite)
        unix_vfs->xSetSystemCall(unix_vfs, "pwrite", (sqlite3_syscall_ptr)counted_pwrite);
    if (real_pwrite64)
        unix_vfs->xSetSystemCall(unix_vfs, "pwrite64", (sqlite3_syscall_ptr)counted_pwrite64);
    const char *vfs = brm_walbuf_vfs();
    CHECK(vfs != NULL);

    char plain_path[64], path[64];
    snprintf(plain_path, sizeof(plain_path), "%s/plain.db", dir);
    snprintf(path, sizeof(path), "%s/buffered.db", dir);

    /* Twenty small rows: SQLite alone writes two pieces per page. */
    sqlite3 *plain = open_db(plain_path, NULL);
    add_rows(plain, 1, 10);
    writes = 0;
    CHECK_INT(add_rows(plain, 20, 400), SQLITE_OK);
    int plain_writes = writes;
    CHECK(plain_writes >= 6);
    sqlite3_close(plain);

    /* Through walbuf: one write for the whole commit, and a reader on the
     * system's VFS sees it once the commit returns. */
    sqlite3 *db = open_db(path, vfs);
    sqlite3 *reader = open_db(path, NULL);
    add_rows(db, 1, 10);
    writes = 0;
    CHECK_INT(add_rows(db, 20, 400), SQLITE_OK);
    CHECK_INT(writes, 1);
    CHECK_INT(count_rows(reader), 21);

    /* A commit larger than the buffer: a write per buffer's worth. */
    writes = 0;
    CHECK_INT(add_rows(db, 200, 4000), SQLITE_OK);
    CHECK(writes >= 200 * 4000 / (int)BRM_WALBUF_SIZE);
    CHECK(writes <= 2 * (200 * 8192 / (int)BRM_WALBUF_SIZE) + 2);
    CHECK_INT(count_rows(reader), 221);

    /* A disk that fails: the commit fails, nobody sees its rows, and the
     * next commit, on a disk that works again, is whole. */
    failing = 1;
    CHECK(add_rows(db, 20, 400) != SQLITE_OK);
    failing = 0;
    CHECK_INT(count_rows(reader), 221);
    CHECK_INT(count_rows(db), 221);
    CHECK_INT(add_rows(db, 5, 400), SQLITE_OK);
    CHECK_INT(count_rows(reader), 226);

    /* A checkpoint reads the frames back; the WAL starts again after it. */
    int frames = -1, done = -1;
    CHECK_INT(sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_TRUNCATE, &frames, &done),
              SQLITE_OK);
    CHECK_INT(frames, done);
    CHECK_INT(add_rows(db, 30, 400), SQLITE_OK);
    CHECK_INT(count_rows(reader), 256);
    sqlite3_close(reader);
    sqlite3_close(db);

    /* Reopened, on the system's VFS: every committed row, and no damage. */
    db = open_db(path, NULL);
    CHECK_INT(count_rows(db), 256);
    CHECK_STR(integrity(db), "ok");
    sqlite3_close(db);

    char cmd[96];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    CHECK_INT(system(cmd), 0);
    return test_done();
}
