#include "snapshot.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
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
    pthread_mutex_t lock; /* a worker's require at run time may read while a copy is made */
    struct file *v;
    size_t n, cap;
};

struct brm_snapshot *brm_snapshot_new(void) {
    struct brm_snapshot *s = brm_xcalloc(1, sizeof(*s));
    s->refs = 1;
    pthread_mutex_init(&s->lock, NULL);
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
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* A new entry for KEY (taking it), empty. The caller holds the lock. */
static struct file *add_entry(struct brm_snapshot *s, char *key) {
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 32;
        s->v = brm_xrealloc(s->v, s->cap * sizeof(*s->v));
    }
    struct file *f = &s->v[s->n++];
    f->key = key;
    f->error = 0;
    brm_buf_init(&f->data);
    return f;
}

/* The entry of KEY, read from PATH on first use. The caller holds the lock. */
static struct file *entry(struct brm_snapshot *s, char kind, const char *path, size_t max) {
    char *key = brm_xasprintf("%c:%s", kind, path);
    for (size_t i = 0; i < s->n; i++) {
        if (strcmp(s->v[i].key, key) == 0) {
            free(key);
            return &s->v[i];
        }
    }
    struct file *f = add_entry(s, key);
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
    pthread_mutex_lock(&s->lock);
    int rc = copy_out(entry(s, 'f', path, max), out);
    int saved = errno;
    pthread_mutex_unlock(&s->lock);
    errno = saved;
    return rc;
}

int brm_snapshot_list(struct brm_snapshot *s, const char *dir, struct brm_buf *out) {
    pthread_mutex_lock(&s->lock);
    int rc = copy_out(entry(s, 'd', dir, 0), out);
    int saved = errno;
    pthread_mutex_unlock(&s->lock);
    errno = saved;
    return rc;
}

struct brm_snapshot *brm_snapshot_with(struct brm_snapshot *s, const char *path, const char *text,
                                       size_t len) {
    struct brm_snapshot *c = brm_snapshot_new();
    char *key = brm_xasprintf("f:%s", path);
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < s->n; i++) {
        if (strcmp(s->v[i].key, key) == 0) continue;
        struct file *f = add_entry(c, brm_xstrdup(s->v[i].key));
        f->error = s->v[i].error;
        if (s->v[i].data.data) brm_buf_append(&f->data, s->v[i].data.data, s->v[i].data.len);
    }
    pthread_mutex_unlock(&s->lock);
    struct file *f = add_entry(c, key);
    brm_buf_append(&f->data, text, len);
    brm_buf_puts(&f->data, ""); /* an empty text is a file too */
    return c;
}
