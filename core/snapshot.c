#include "snapshot.h"

#include <dirent.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

struct file {
    char *key; /* "f:" or "d:" and the path */
    struct brm_buf data;
    int error; /* errno of the first read, or 0 */
};

struct brm_snapshot {
    _Atomic int refs;
    struct file *v;
    size_t n, cap;
};

struct brm_snapshot *brm_snapshot_new(void) {
    struct brm_snapshot *s = brm_xcalloc(1, sizeof(*s));
    s->refs = 1;
    return s;
}

struct brm_snapshot *brm_snapshot_ref(struct brm_snapshot *s) {
    atomic_fetch_add(&s->refs, 1);
    return s;
}

void brm_snapshot_free(struct brm_snapshot *s) {
    if (!s || atomic_fetch_sub(&s->refs, 1) > 1) return;
    for (size_t i = 0; i < s->n; i++) {
        free(s->v[i].key);
        brm_buf_reset(&s->v[i].data);
    }
    free(s->v);
    free(s);
}

/* The entry of KEY, made by FILL(PATH) on first use. */
static struct file *entry(struct brm_snapshot *s, char kind, const char *path, size_t max) {
    char *key = brm_xasprintf("%c:%s", kind, path);
    for (size_t i = 0; i < s->n; i++) {
        if (strcmp(s->v[i].key, key) == 0) {
            free(key);
            return &s->v[i];
        }
    }
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 32;
        s->v = brm_xrealloc(s->v, s->cap * sizeof(*s->v));
    }
    struct file *f = &s->v[s->n++];
    f->key = key;
    f->error = 0;
    brm_buf_init(&f->data);
    if (kind == 'f') {
        if (brm_read_file(path, max, &f->data) < 0) f->error = errno;
    } else {
        DIR *d = opendir(path);
        struct dirent *de;
        if (!d) f->error = errno;
        while (d && (de = readdir(d)) != NULL) {
            brm_buf_puts(&f->data, de->d_name);
            brm_buf_puts(&f->data, "\n");
        }
        if (d) closedir(d);
    }
    return f;
}

static int copy_out(const struct file *f, struct brm_buf *out) {
    if (f->error) {
        errno = f->error;
        return -1;
    }
    out->len = 0;
    brm_buf_append(out, f->data.data ? f->data.data : "", f->data.len);
    return 0;
}

int brm_snapshot_read(struct brm_snapshot *s, const char *path, size_t max, struct brm_buf *out) {
    return copy_out(entry(s, 'f', path, max), out);
}

int brm_snapshot_list(struct brm_snapshot *s, const char *dir, struct brm_buf *out) {
    return copy_out(entry(s, 'd', dir, 0), out);
}
