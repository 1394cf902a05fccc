/*
 * Faults for the integration tests, preloaded into brume (LD_PRELOAD) in
 * front of libc. Only calls on brume's store count: files whose path holds
 * "brume.db" (the database and its -wal, -shm and -journal).
 *
 * - While the file named by BRUME_FAULT_FLAG exists, every write and sync
 *   to the store fails with EROFS, as on a disk that went read-only; once it
 *   is removed, they work again.
 * - BRUME_FAULT_SYNC_MS=N makes every sync of the store take N ms longer,
 *   as on a slow disk, so that a test can kill brume in the middle of one;
 *   BRUME_FAULT_SYNCED=PATH appends a line to PATH for each sync of the
 *   store that succeeded: "BEGAN ENDED FILE", CLOCK_MONOTONIC nanoseconds
 *   when the call was made and when it returned, so that a test can tell
 *   whether an answer waited for a sync made after its request was sent;
 *   BRUME_FAULT_WRITE_MS=N does the same to every write, so that the
 *   journal's writer falls behind what the workers take in.
 * - A countdown, as SQLite's own test_malloc.c and faultsim do it: the
 *   store's calls of the kinds in BRUME_FAULT_OPS (a comma-separated list
 *   of read, write, sync, open, truncate; all of them by default) are
 *   numbered from 1, and call number BRUME_FAULT_AT fails with
 *   BRUME_FAULT_ERRNO (EIO, the default, or ENOSPC) and says so on stderr
 *   ("brume-fault: call N (pwrite64 brume.db-wal) failed with EIO").
 *   With BRUME_FAULT_HOLD=PATH, that call creates PATH and every counted
 *   call fails as long as PATH exists: a fault that lasts until the test
 *   clears it by removing the file.
 *   BRUME_FAULT_COUNT=PATH keeps the numbering in that file (the count so
 *   far, in decimal), so that it goes on across a restart and a test can
 *   read how many calls a clean load makes; BRUME_FAULT_TRACE=PATH appends
 *   a line per counted call ("N op file").
 *
 * The calls are those SQLite's unix VFS makes on Linux: this build of
 * libsqlite3 imports open64, pread64, pwrite64, fdatasync, ftruncate64,
 * read and write (strace shows openat, pread64, pwrite64, fdatasync and
 * ftruncate on the store's files). Each is caught under its plain and its
 * 64-bit name, with openat and fsync besides. The -shm file is mapped, so
 * what SQLite writes there is not a call; its ftruncate and open are.
 *
 * A malformed setting stops the process at its first call with a message
 * (exit status 2). Nothing else changes.
 */
#define _GNU_SOURCE
#undef _FORTIFY_SOURCE /* its inline open() would clash with the one below */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

enum op { OP_READ, OP_WRITE, OP_SYNC, OP_OPEN, OP_TRUNCATE, NOPS };
static const char *const op_names[NOPS] = { "read", "write", "sync", "open", "truncate" };

/* The next definitions of what this file replaces (libc's, or a
 * sanitizer's interceptor in front of it). */
static struct {
    ssize_t (*read)(int, void *, size_t);
    ssize_t (*pread)(int, void *, size_t, off_t);
    ssize_t (*pread64)(int, void *, size_t, off64_t);
    ssize_t (*write)(int, const void *, size_t);
    ssize_t (*pwrite)(int, const void *, size_t, off_t);
    ssize_t (*pwrite64)(int, const void *, size_t, off64_t);
    int (*fsync)(int);
    int (*fdatasync)(int);
    int (*ftruncate)(int, off_t);
    int (*ftruncate64)(int, off64_t);
    int (*open)(const char *, int, ...);
    int (*open64)(const char *, int, ...);
    int (*openat)(int, const char *, int, ...);
    int (*openat64)(int, const char *, int, ...);
} real;

/* The settings, read once. */
static struct {
    const char *flag, *hold;
    long sync_ms, write_ms;
    int counting; /* BRUME_FAULT_AT, _COUNT or _TRACE is set */
    long long at; /* 0: count, fail none */
    unsigned ops; /* 1 << enum op */
    int error;
} cfg;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static long long calls; /* counted so far, with those of earlier processes */
static int count_fd = -1, trace_fd = -1, synced_fd = -1;

static void say(const char *text) {
    size_t n = strlen(text);
    while (n > 0) {
        ssize_t w = real.write(2, text, n);
        if (w <= 0) return;
        text += w, n -= (size_t)w;
    }
}

static void die(const char *what, const char *value) {
    char msg[512];
    snprintf(msg, sizeof(msg), "brume-fault: %s, not \"%s\"\n", what, value);
    say(msg);
    _exit(2);
}

static long long number(const char *name, const char *text) {
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno || end == text || *end || v < 0) {
        char what[96];
        snprintf(what, sizeof(what), "%s must be a whole number", name);
        die(what, text);
    }
    return v;
}

static unsigned parse_ops(const char *text) {
    unsigned ops = 0;
    const char *p = text;
    while (*p) {
        size_t n = strcspn(p, ",");
        int found = 0;
        for (int i = 0; i < NOPS; i++)
            if (strlen(op_names[i]) == n && strncmp(p, op_names[i], n) == 0)
                ops |= 1u << i, found = 1;
        if (!found) die("BRUME_FAULT_OPS must list read, write, sync, open or truncate", text);
        p += n + (p[n] == ',');
    }
    return ops;
}

static void setup(void) {
#define FIND(name) real.name = (__typeof__(real.name))dlsym(RTLD_NEXT, #name)
    FIND(read), FIND(pread), FIND(pread64), FIND(write), FIND(pwrite), FIND(pwrite64);
    FIND(fsync), FIND(fdatasync), FIND(ftruncate), FIND(ftruncate64);
    FIND(open), FIND(open64), FIND(openat), FIND(openat64);
#undef FIND
    const char *v;
    cfg.flag = getenv("BRUME_FAULT_FLAG");
    cfg.hold = getenv("BRUME_FAULT_HOLD");
    if ((v = getenv("BRUME_FAULT_SYNC_MS"))) cfg.sync_ms = (long)number("BRUME_FAULT_SYNC_MS", v);
    if ((v = getenv("BRUME_FAULT_WRITE_MS")))
        cfg.write_ms = (long)number("BRUME_FAULT_WRITE_MS", v);
    if ((v = getenv("BRUME_FAULT_AT"))) cfg.at = number("BRUME_FAULT_AT", v), cfg.counting = 1;
    cfg.ops = (1u << NOPS) - 1;
    if ((v = getenv("BRUME_FAULT_OPS"))) cfg.ops = parse_ops(v);
    cfg.error = EIO;
    if ((v = getenv("BRUME_FAULT_ERRNO"))) {
        if (strcmp(v, "EIO") == 0)
            cfg.error = EIO;
        else if (strcmp(v, "ENOSPC") == 0)
            cfg.error = ENOSPC;
        else
            die("BRUME_FAULT_ERRNO must be EIO or ENOSPC", v);
    }
    if ((v = getenv("BRUME_FAULT_COUNT"))) {
        count_fd = real.open(v, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (count_fd < 0) die("cannot open BRUME_FAULT_COUNT", v);
        cfg.counting = 1;
        char text[32] = "";
        ssize_t n = real.pread(count_fd, text, sizeof(text) - 1, 0);
        if (n > 0) {
            text[strcspn(text, "\n")] = '\0';
            calls = number("the count in BRUME_FAULT_COUNT", text);
        }
    }
    if ((v = getenv("BRUME_FAULT_SYNCED"))) {
        synced_fd = real.open(v, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (synced_fd < 0) die("cannot open BRUME_FAULT_SYNCED", v);
    }
    if ((v = getenv("BRUME_FAULT_TRACE"))) {
        trace_fd = real.open(v, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (trace_fd < 0) die("cannot open BRUME_FAULT_TRACE", v);
        cfg.counting = 1;
    }
}

/* The last part of PATH when it is a file of brume's store, else NULL. */
static const char *store_file(const char *path) {
    if (!path || !strstr(path, "brume.db")) return NULL;
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* The file of the store FD is open on, in BUF, or NULL. */
static const char *store_fd(int fd, char *buf, size_t size) {
    char link[64];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, buf, size - 1);
    if (n <= 0) return NULL;
    buf[n] = '\0';
    return store_file(buf);
}

/* Counts a call of kind OP (NAME) on FILE and says whether the countdown
 * makes it fail: 0, or the errno it fails with. */
static int countdown(enum op op, const char *name, const char *file) {
    if (!(cfg.ops & (1u << op))) return 0;
    pthread_mutex_lock(&lock);
    long long n = ++calls;
    char line[300];
    if (count_fd >= 0) {
        int len = snprintf(line, sizeof(line), "%lld\n", n);
        if (real.pwrite(count_fd, line, (size_t)len, 0) != len) die("cannot write the count", "");
    }
    if (trace_fd >= 0) {
        int len = snprintf(line, sizeof(line), "%lld %s %s\n", n, op_names[op], file);
        if (real.write(trace_fd, line, (size_t)len) != len) die("cannot write the trace", "");
    }
    int error = 0;
    if (cfg.hold && access(cfg.hold, F_OK) == 0) {
        error = cfg.error;
    } else if (n == cfg.at && cfg.at > 0) {
        error = cfg.error;
        if (cfg.hold) {
            int fd = real.open(cfg.hold, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
            if (fd < 0) die("cannot create BRUME_FAULT_HOLD", cfg.hold);
            close(fd);
        }
        snprintf(line, sizeof(line), "brume-fault: call %lld (%s %s) failed with %s%s\n", n, name,
                 file, error == EIO ? "EIO" : "ENOSPC", cfg.hold ? ", and fails on" : "");
        say(line);
    }
    pthread_mutex_unlock(&lock);
    return error;
}

/* 0, or the errno call NAME of kind OP on FD fails with. */
static int fault_fd(enum op op, const char *name, int fd) {
    pthread_once(&once, setup);
    char path[4096];
    const char *file = store_fd(fd, path, sizeof(path));
    if (!file) return 0;
    long slow = op == OP_SYNC ? cfg.sync_ms : op == OP_WRITE ? cfg.write_ms : 0;
    if (slow > 0) {
        struct timespec ts = { slow / 1000, (slow % 1000) * 1000000L };
        nanosleep(&ts, NULL);
    }
    if ((op == OP_WRITE || op == OP_SYNC) && cfg.flag && access(cfg.flag, F_OK) == 0) return EROFS;
    return cfg.counting ? countdown(op, name, file) : 0;
}

static int fault_path(const char *name, const char *path) {
    pthread_once(&once, setup);
    const char *file = store_file(path);
    return file && cfg.counting ? countdown(OP_OPEN, name, file) : 0;
}

#define FAIL_FD(op, name, fd)                                                                      \
    do {                                                                                           \
        int e_ = fault_fd(op, name, fd);                                                           \
        if (e_) return errno = e_, -1;                                                             \
    } while (0)

ssize_t read(int fd, void *buf, size_t n) {
    FAIL_FD(OP_READ, "read", fd);
    return real.read(fd, buf, n);
}

ssize_t pread(int fd, void *buf, size_t n, off_t off) {
    FAIL_FD(OP_READ, "pread", fd);
    return real.pread(fd, buf, n, off);
}

ssize_t pread64(int fd, void *buf, size_t n, off64_t off) {
    FAIL_FD(OP_READ, "pread64", fd);
    return real.pread64(fd, buf, n, off);
}

ssize_t write(int fd, const void *buf, size_t n) {
    FAIL_FD(OP_WRITE, "write", fd);
    return real.write(fd, buf, n);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    FAIL_FD(OP_WRITE, "pwrite", fd);
    return real.pwrite(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) {
    FAIL_FD(OP_WRITE, "pwrite64", fd);
    return real.pwrite64(fd, buf, n, off);
}

static long long monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* A sync of FD, made at BEGAN, succeeded: a line in BRUME_FAULT_SYNCED. */
static void note_synced(int fd, long long began) {
    char path[4096], line[4200];
    const char *file = synced_fd >= 0 ? store_fd(fd, path, sizeof(path)) : NULL;
    if (!file) return;
    int len = snprintf(line, sizeof(line), "%lld %lld %s\n", began, monotonic_ns(), file);
    if (real.write(synced_fd, line, (size_t)len) != len) die("cannot write BRUME_FAULT_SYNCED", "");
}

int fsync(int fd) {
    long long began = monotonic_ns();
    FAIL_FD(OP_SYNC, "fsync", fd);
    int rc = real.fsync(fd);
    if (rc == 0) note_synced(fd, began);
    return rc;
}

int fdatasync(int fd) {
    long long began = monotonic_ns();
    FAIL_FD(OP_SYNC, "fdatasync", fd);
    int rc = real.fdatasync(fd);
    if (rc == 0) note_synced(fd, began);
    return rc;
}

int ftruncate(int fd, off_t len) {
    FAIL_FD(OP_TRUNCATE, "ftruncate", fd);
    return real.ftruncate(fd, len);
}

int ftruncate64(int fd, off64_t len) {
    FAIL_FD(OP_TRUNCATE, "ftruncate64", fd);
    return real.ftruncate64(fd, len);
}

/* The mode argument is there when the flags create a file. */
#define MODE(flags, mode)                                                                          \
    do {                                                                                           \
        if (((flags)&O_CREAT) || ((flags)&O_TMPFILE) == O_TMPFILE) {                               \
            va_list ap_;                                                                           \
            va_start(ap_, flags);                                                                  \
            mode = va_arg(ap_, int);                                                               \
            va_end(ap_);                                                                           \
        }                                                                                          \
    } while (0)

#define FAIL_PATH(name, path)                                                                      \
    do {                                                                                           \
        int e_ = fault_path(name, path);                                                           \
        if (e_) return errno = e_, -1;                                                             \
    } while (0)

int open(const char *path, int flags, ...) {
    int mode = 0;
    MODE(flags, mode);
    FAIL_PATH("open", path);
    return real.open(path, flags, mode);
}

int open64(const char *path, int flags, ...) {
    int mode = 0;
    MODE(flags, mode);
    FAIL_PATH("open64", path);
    return real.open64(path, flags, mode);
}

int openat(int dir, const char *path, int flags, ...) {
    int mode = 0;
    MODE(flags, mode);
    FAIL_PATH("openat", path);
    return real.openat(dir, path, flags, mode);
}

int openat64(int dir, const char *path, int flags, ...) {
    int mode = 0;
    MODE(flags, mode);
    FAIL_PATH("openat64", path);
    return real.openat64(dir, path, flags, mode);
}
