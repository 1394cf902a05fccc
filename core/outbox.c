#include "outbox.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct brm_outbox {
    const struct brm_config *cfg;
    int *fds; /* per target */
};

/* mkdir -p of PATH's folder. */
static int make_parent(const char *path) {
    char *dir = brm_path_dir(path);
    int rc = 0;
    for (char *p = dir + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(dir, 0750) < 0 && errno != EEXIST) rc = -1;
        *p = '/';
    }
    if (mkdir(dir, 0750) < 0 && errno != EEXIST) rc = -1;
    free(dir);
    return rc;
}

struct brm_outbox *brm_outbox_new(const struct brm_config *cfg, struct brm_err *err) {
    struct brm_outbox *ob = brm_xcalloc(1, sizeof(*ob));
    ob->cfg = cfg;
    ob->fds = brm_xcalloc(cfg->ntargets, sizeof(int));
    for (size_t i = 0; i < cfg->ntargets; i++) ob->fds[i] = -1;
    for (size_t i = 0; i < cfg->ntargets; i++) {
        const struct brm_target *t = &cfg->targets[i];
        make_parent(t->path);
        ob->fds[i] = open(t->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (ob->fds[i] < 0) {
            brm_err_set(err, "target %s: cannot open %s: %s", t->name, t->path, strerror(errno));
            brm_outbox_free(ob);
            return NULL;
        }
    }
    return ob;
}

void brm_outbox_free(struct brm_outbox *ob) {
    if (!ob) return;
    for (size_t i = 0; i < ob->cfg->ntargets; i++)
        if (ob->fds[i] >= 0) close(ob->fds[i]);
    free(ob->fds);
    free(ob);
}

void brm_action_json(const struct brm_action *a, double at, struct brm_buf *out) {
    brm_buf_puts(out, "{");
    if (at > 0) {
        char ts[40];
        brm_time_iso8601(at, ts, sizeof(ts));
        brm_buf_printf(out, "\"at\":\"%s\",", ts);
    }
    brm_buf_puts(out, "\"rule\":");
    brm_buf_json_string(out, a->rule, strlen(a->rule));
    brm_buf_puts(out, ",\"target\":");
    brm_buf_json_string(out, a->target, strlen(a->target));
    brm_buf_puts(out, ",\"topic\":");
    brm_buf_json_string(out, a->topic, strlen(a->topic));
    brm_buf_puts(out, ",\"event\":");
    brm_buf_json_string(out, a->event_id, strlen(a->event_id));
    brm_buf_puts(out, ",\"message\":");
    brm_buf_append(out, a->body, a->len);
    brm_buf_puts(out, "}");
}

/* The index of target NAME, or -1. */
static int target_index(const struct brm_outbox *ob, const char *name) {
    for (size_t t = 0; t < ob->cfg->ntargets; t++)
        if (strcmp(ob->cfg->targets[t].name, name) == 0) return (int)t;
    return -1;
}

int brm_outbox_deliver(struct brm_outbox *ob, const struct brm_actions *a, struct brm_err *err) {
    struct brm_buf lines;
    int rc = 0;
    double now = brm_time_now();
    brm_buf_init(&lines);
    /* One write per target per body: the lines of a batch land together. */
    for (size_t t = 0; t < ob->cfg->ntargets && rc == 0; t++) {
        lines.len = 0;
        for (size_t i = 0; i < a->n; i++) {
            if (target_index(ob, a->v[i].target) != (int)t) continue;
            brm_action_json(&a->v[i], now, &lines);
            brm_buf_append(&lines, "\n", 1);
        }
        if (lines.len == 0) continue;
        ssize_t w = write(ob->fds[t], lines.data, lines.len);
        if (w != (ssize_t)lines.len) {
            brm_err_set(err, "target %s: writing %s failed: %s", ob->cfg->targets[t].name,
                        ob->cfg->targets[t].path, w < 0 ? strerror(errno) : "short write");
            rc = -1;
        }
    }
    for (size_t i = 0; i < a->n && rc == 0; i++) {
        if (target_index(ob, a->v[i].target) < 0) {
            brm_err_set(err, "no target named %s", a->v[i].target);
            rc = -1;
        }
    }
    brm_buf_reset(&lines);
    return rc;
}
