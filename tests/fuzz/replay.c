/*
 * replay: the main of a fuzz target where libFuzzer is not (gcc, the test
 * suite): runs LLVMFuzzerTestOneInput once on every file named, and on
 * every file in each folder named, in name order. Each input is in an
 * allocation of its exact size, as libFuzzer gives it, so a read past its
 * end is caught by AddressSanitizer. Exits 0 when all ran, 1 when a file
 * could not be read or none was found.
 */
#include <dirent.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"
#include "util.h"

#define REPLAY_MAX_INPUT (4u << 20)

static int run_file(const char *path) {
    struct brm_buf b;
    brm_buf_init(&b);
    if (brm_read_file(path, REPLAY_MAX_INPUT, &b) < 0) {
        perror(path);
        return -1;
    }
    size_t len = b.len;
    uint8_t *exact = brm_xmalloc(len ? len : 1);
    memcpy(exact, b.data ? b.data : "", len);
    brm_buf_reset(&b);
    LLVMFuzzerTestOneInput(exact, len);
    free(exact);
    return 0;
}

static int by_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Runs every regular file in DIR; returns how many, or -1. */
static int run_dir(const char *dir) {
    struct dirent **list;
    int n = scandir(dir, &list, NULL, NULL);
    if (n < 0) {
        perror(dir);
        return -1;
    }
    char **names = brm_xcalloc((size_t)n + 1, sizeof(*names));
    int count = 0, rc = 0;
    for (int i = 0; i < n; i++) {
        if (list[i]->d_name[0] != '.') names[count++] = brm_path_join(dir, list[i]->d_name);
        free(list[i]);
    }
    free(list);
    qsort(names, (size_t)count, sizeof(*names), by_name);
    for (int i = 0; i < count; i++) {
        struct stat st;
        if (rc == 0 && stat(names[i], &st) == 0 && S_ISREG(st.st_mode) && run_file(names[i]) < 0)
            rc = -1;
        free(names[i]);
    }
    free(names);
    return rc < 0 ? -1 : count;
}

int main(int argc, char **argv) {
    int total = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        int n = stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode) ? run_dir(argv[i])
                : run_file(argv[i]) == 0                       ? 1
                                                               : -1;
        if (n < 0) return 1;
        total += n;
    }
    printf("%d inputs replayed\n", total);
    return total > 0 ? 0 : 1;
}
