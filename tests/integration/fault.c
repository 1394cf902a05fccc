/*
 * A fault for the integration tests, preloaded into brume: while the file
 * named by BRUME_FAULT_FLAG exists, every write and sync to brume's store
 * (a file whose path holds "brume.db") fails with EROFS, as on a disk that
 * went read-only; once it is removed, they work again. Nothing else changes.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static int faulty(int fd) {
    const char *flag = getenv("BRUME_FAULT_FLAG");
    if (!flag || access(flag, F_OK) != 0) return 0;
    char link[64], path[4096];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof(path) - 1);
    if (n <= 0) return 0;
    path[n] = '\0';
    return strstr(path, "brume.db") != NULL;
}

#define NEXT(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))

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
    if (faulty(fd)) return errno = EROFS, -1;
    return NEXT(fsync)(fd);
}

int fdatasync(int fd) {
    if (faulty(fd)) return errno = EROFS, -1;
    return NEXT(fdatasync)(fd);
}
