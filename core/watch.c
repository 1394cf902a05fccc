#include "watch.h"

#include <dirent.h>
#include <errno.h>
#include <event2/event.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

#define MAX_DEPTH 8 /* subfolders below a watched folder */
#define EVENTS                                                                                     \
    (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_DELETE_SELF |       \
     IN_MOVE_SELF)

/* One inotify watch: a folder, and the one name in it that matters, or
 * NULL for its *.lua files and subfolders. */
struct spot {
    int wd;
    char *name;
};

struct brm_watch {
    int fd;
    struct event *ev, *timer;
    double debounce;
    void (*changed)(void *arg);
    void *arg;
    struct spot *spots;
    size_t nspots, cap;
};

static void add_spot(struct brm_watch *w, const char *dir, const char *name) {
    int wd = inotify_add_watch(w->fd, dir, EVENTS);
    if (wd < 0) return; /* gone already: its parent's watch tells when it is back */
    for (size_t i = 0; i < w->nspots; i++) {
        if (w->spots[i].wd != wd) continue;
        /* One watch per folder: "anything" wins over a name. */
        if (!name || (w->spots[i].name && strcmp(w->spots[i].name, name) != 0)) {
            free(w->spots[i].name);
            w->spots[i].name = NULL;
        }
        return;
    }
    if (w->nspots == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 16;
        w->spots = brm_xrealloc(w->spots, w->cap * sizeof(*w->spots));
    }
    w->spots[w->nspots++] = (struct spot){ wd, name ? brm_xstrdup(name) : NULL };
}

/* DIR and the folders below it. */
static void add_tree(struct brm_watch *w, const char *dir, int depth) {
    add_spot(w, dir, NULL);
    DIR *d = depth < MAX_DEPTH ? opendir(dir) : NULL;
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') continue;
        char *sub = brm_path_join(dir, de->d_name);
        struct stat st;
        if (stat(sub, &st) == 0 && S_ISDIR(st.st_mode)) add_tree(w, sub, depth + 1);
        free(sub);
    }
    closedir(d);
}

void brm_watch_set(struct brm_watch *w, const char *const *paths, size_t n) {
    /* The new watches first: a folder watched before keeps its descriptor,
     * so a change queued meanwhile (a save during a reload) still counts.
     * Then the old ones no longer wanted go. */
    struct spot *old = w->spots;
    size_t nold = w->nspots;
    w->spots = NULL;
    w->nspots = w->cap = 0;
    for (size_t i = 0; i < n; i++) {
        /* The path's folder, for the path itself coming, going or being
         * replaced; and a folder's own tree. */
        char *parent = brm_path_dir(paths[i]);
        const char *base = strrchr(paths[i], '/') ? strrchr(paths[i], '/') + 1 : paths[i];
        add_spot(w, parent, base);
        free(parent);
        struct stat st;
        if (stat(paths[i], &st) == 0 && S_ISDIR(st.st_mode)) add_tree(w, paths[i], 0);
    }
    for (size_t i = 0; i < nold; i++) {
        int kept = 0;
        for (size_t k = 0; k < w->nspots && !kept; k++) kept = w->spots[k].wd == old[i].wd;
        if (!kept) inotify_rm_watch(w->fd, old[i].wd);
        free(old[i].name);
    }
    free(old);
}

static int is_lua(const char *name) {
    size_t n = strlen(name);
    return name[0] != '.' && n > 4 && strcmp(name + n - 4, ".lua") == 0;
}

/* Does event E on its spot matter? */
static int matters(const struct brm_watch *w, const struct inotify_event *e) {
    if (e->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_Q_OVERFLOW)) return 1;
    for (size_t i = 0; i < w->nspots; i++) {
        if (w->spots[i].wd != e->wd) continue;
        if (!e->len) return 0;
        if (w->spots[i].name) return strcmp(w->spots[i].name, e->name) == 0;
        return is_lua(e->name) || ((e->mask & IN_ISDIR) && e->name[0] != '.');
    }
    return 0;
}

static void on_timer(evutil_socket_t fd, short what, void *arg) {
    struct brm_watch *w = arg;
    (void)fd, (void)what;
    w->changed(w->arg);
}

static void on_events(evutil_socket_t fd, short what, void *arg) {
    struct brm_watch *w = arg;
    char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
    int hit = 0;
    (void)what;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n <= 0) break;
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *e = (const struct inotify_event *)p;
            hit |= matters(w, e);
            p += sizeof(*e) + e->len;
        }
    }
    if (!hit) return;
    /* Each change puts the call off again: one call for a burst. */
    struct timeval tv = { (time_t)w->debounce,
                          (suseconds_t)((w->debounce - (double)(time_t)w->debounce) * 1e6) };
    evtimer_add(w->timer, &tv);
}

struct brm_watch *brm_watch_new(struct event_base *base, double debounce,
                                void (*changed)(void *arg), void *arg, struct brm_err *err) {
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0) {
        brm_err_set(err, "inotify: %s", strerror(errno));
        return NULL;
    }
    struct brm_watch *w = brm_xcalloc(1, sizeof(*w));
    w->fd = fd;
    w->debounce = debounce;
    w->changed = changed;
    w->arg = arg;
    w->ev = event_new(base, fd, EV_READ | EV_PERSIST, on_events, w);
    w->timer = evtimer_new(base, on_timer, w);
    event_add(w->ev, NULL);
    return w;
}

void brm_watch_free(struct brm_watch *w) {
    if (!w) return;
    for (size_t i = 0; i < w->nspots; i++) free(w->spots[i].name);
    free(w->spots);
    event_free(w->ev);
    event_free(w->timer);
    close(w->fd);
    free(w);
}
