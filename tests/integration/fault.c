/*
 * Faults for the integration tests, preloaded into brume:
 *
 * - while the file named by BRUME_FAULT_FLAG exists, every write and sync
 *   to brume's store (a file whose path holds "brume.db") fails with EROFS,
 *   as on a disk that went read-only; once it is removed, they work again;
 * - BRUME_FAULT_SYNC_MS=N makes every sync of the store take N ms longer,
 *   as on a slow disk, so that a test can kill brume in the middle of one.
 *
 * Nothing else changes.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

/* 1 when FD is a file of brume's store. */
static int is_store(int fd) {
    char link[64], path[4096];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof(path) - 1);
    if (n <= 0) return 0;
    path[n] = '\0';
    return strstr(path, "brume.db") != NULL;
}

static int faulty(int fd) {
    const char *flag = getenv("BRUME_FAULT_FLAG");
    return flag && access(flag, F_OK) == 0 && is_store(fd);
}

#define NEXT(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))

/* A sync of the store waits BRUME_FAULT_SYNC_MS first. */
static void slow(int fd) {
    const char *ms = getenv("BRUME_FAULT_SYNC_MS");
    if (!ms || !is_store(fd)) return;
    struct timespec ts = { atol(ms) / 1000, (atol(ms) % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

ssize_t write(int fd, const void *buf, size_t n) {
    if (faulty(fd)) return errno = EROFS, -1;
    return NEXT(write)(fd, buf, n);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    if (faulty(fd)) return errno = EROFS, -1;
    return NEXT(pwrite)(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) {
    if (faulty(fd)) return errno = EROFS, -1;
    return NEXT(pwrite64)(fd, buf, n, off);
}

int fsync(int fd) {
    slow(fd);
    if (faulty(fd)) return errno = EROFS, -1;
    return NEXT(fsync)(fd);
}

int fdatasync(int fd) {
    slow(fd);
    if (faulty(fd)) return errno = EROFS, -1;
    return NEXT(fdatasync)(fd);
}
