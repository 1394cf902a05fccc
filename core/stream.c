#define _GNU_SOURCE
#include "stream.h"

#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "log.h"
#include "redis.h"

struct brm_stream_add {
    struct brm_stream *s;
    struct brm_stream_add *next; /* on the finished list */
    brm_stream_done_fn *done;    /* NULL: cancelled (the base's thread only) */
    void *arg;
    /* Set on the client's thread, read on the base's after the hand-over. */
    int failed, retry;
    char text[300]; /* the id, or why it failed */
};

struct brm_stream {
    char *name;
    struct brm_redis *redis;
    int fd; /* eventfd: the client's thread says "finished" */
    struct event *ready;
    pthread_mutex_t lock; /* guards finished, why */
    struct brm_stream_add *finished;
    char why[200]; /* the connection's last failure */
};

/* An error reply a retry may mend: the server is starting, full, busy,
 * or a replica. */
static int passing(const char *e) {
    static const char *const codes[] = { "LOADING",     "OOM",        "BUSY",
                                         "MASTERDOWN",  "READONLY",   "TRYAGAIN",
                                         "CLUSTERDOWN", "NOREPLICAS", "MISCONF" };
    for (size_t i = 0; i < BRM_ARRAY_LEN(codes); i++) {
        size_t n = strlen(codes[i]);
        if (strncmp(e, codes[i], n) == 0 && (e[n] == ' ' || e[n] == '\0')) return 1;
    }
    return 0;
}

/* On the client's thread. */
static void on_state(void *arg, int up, const char *why) {
    struct brm_stream *s = arg;
    pthread_mutex_lock(&s->lock);
    snprintf(s->why, sizeof(s->why), "%s", up ? "" : why);
    pthread_mutex_unlock(&s->lock);
    if (up)
        brm_log_info("redis-stream: connected", "target", s->name);
    else
        brm_log_warn("redis-stream: Redis unreachable", "target", s->name, "error", why);
}

/* On the client's thread: the reply goes to the finished list. */
static void on_reply(struct brm_redis_req *q) {
    struct brm_stream_add *a = q->arg;
    struct brm_stream *s = a->s;
    redisReply *r = q->reply;
    pthread_mutex_lock(&s->lock);
    if (q->status == BRM_REDIS_REPLY && r && r->type == REDIS_REPLY_STRING) {
        snprintf(a->text, sizeof(a->text), "%.*s", (int)r->len, r->str);
    } else if (q->status == BRM_REDIS_REPLY && r && r->type == REDIS_REPLY_ERROR) {
        a->failed = 1;
        a->retry = passing(r->str);
        snprintf(a->text, sizeof(a->text), "XADD: %.*s", (int)r->len, r->str);
    } else {
        a->failed = a->retry = 1;
        snprintf(a->text, sizeof(a->text), "%s%s%s",
                 q->status == BRM_REDIS_LOST     ? "the connection failed before the answer"
                 : q->status == BRM_REDIS_UNSENT ? "Redis is unreachable"
                                                 : "XADD: an unexpected reply",
                 s->why[0] ? ": " : "", s->why);
    }
    a->next = s->finished;
    s->finished = a;
    pthread_mutex_unlock(&s->lock);
    brm_redis_req_free(q);
    uint64_t one = 1;
    if (write(s->fd, &one, sizeof(one)) < 0) { /* cannot fail short of a bad fd */
    }
}

/* On the base's thread: the callbacks of what finished, oldest first. */
static void take_finished(struct brm_stream *s) {
    pthread_mutex_lock(&s->lock);
    struct brm_stream_add *list = s->finished, *rev = NULL;
    s->finished = NULL;
    pthread_mutex_unlock(&s->lock);
    while (list) { /* the list is newest first */
        struct brm_stream_add *next = list->next;
        list->next = rev;
        rev = list;
        list = next;
    }
    while (rev) {
        struct brm_stream_add *a = rev;
        rev = a->next;
        if (a->done) {
            struct brm_stream_result res = { a->failed, a->retry, a->failed ? a->text : NULL,
                                             a->failed ? NULL : a->text };
            a->done(a->arg, &res);
        }
        free(a);
    }
}

static void on_ready(evutil_socket_t fd, short what, void *arg) {
    uint64_t v;
    (void)what;
    if (read(fd, &v, sizeof(v)) < 0) { /* EAGAIN: already drained */
    }
    take_finished(arg);
}

int brm_stream_check(const char *url, struct brm_err *err) {
    struct brm_redis_cfg cfg = { 0 };
    if (!url) {
        brm_err_set(err, "no url");
        return -1;
    }
    int rc = brm_redis_parse_url(url, &cfg, err);
    brm_redis_cfg_reset(&cfg);
    return rc;
}

struct brm_stream *brm_stream_new(struct event_base *base, const char *name, const char *url,
                                  double timeout, struct brm_err *err) {
    struct brm_redis_cfg cfg = { 0 };
    if (brm_redis_parse_url(url, &cfg, err) < 0) return NULL;
    if (timeout > 0) cfg.timeout = timeout;
    struct brm_stream *s = brm_xcalloc(1, sizeof(*s));
    s->name = brm_xstrdup(name);
    pthread_mutex_init(&s->lock, NULL);
    s->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    s->redis = brm_redis_new(&cfg, NULL, 0, on_state, s);
    brm_redis_cfg_reset(&cfg);
    if (s->fd < 0) {
        brm_err_set(err, "cannot make an eventfd: %s", strerror(errno));
        goto fail;
    }
    s->ready = event_new(base, s->fd, EV_READ | EV_PERSIST, on_ready, s);
    event_add(s->ready, NULL);
    if (brm_redis_start(s->redis, err) < 0) goto fail;
    return s;
fail:
    brm_stream_free(s);
    return NULL;
}

void brm_stream_free(struct brm_stream *s) {
    if (!s) return;
    brm_redis_finish(s->redis);
    brm_redis_free(s->redis); /* what is left comes back, UNSENT or LOST */
    take_finished(s);
    if (s->ready) event_free(s->ready);
    if (s->fd >= 0) close(s->fd);
    pthread_mutex_destroy(&s->lock);
    free(s->name);
    free(s);
}

struct brm_stream_add *brm_stream_add(struct brm_stream *s, const struct brm_stream_entry *e,
                                      brm_stream_done_fn *done, void *arg) {
    struct brm_stream_add *a = brm_xcalloc(1, sizeof(*a));
    a->s = s;
    a->done = done;
    a->arg = arg;
    struct brm_redis_req *q = brm_redis_req_new();
    brm_redis_arg_str(q, "XADD");
    brm_redis_arg_str(q, e->key);
    if (e->maxlen > 0) {
        brm_redis_arg_str(q, "MAXLEN");
        brm_redis_arg_str(q, e->exact ? "=" : "~");
        brm_redis_arg_int(q, e->maxlen);
    }
    brm_redis_arg_str(q, "*");
    for (size_t i = 0; i < e->nfields; i++) {
        const char *colon = strchr(e->fields[i], ':');
        if (!colon) continue; /* api.c lets none through */
        const char *value = colon + 1;
        while (*value == ' ') value++;
        brm_redis_arg(q, e->fields[i], (size_t)(colon - e->fields[i]));
        brm_redis_arg_str(q, value);
    }
    brm_redis_arg_str(q, "message");
    brm_redis_arg(q, e->value ? e->value : "", e->value ? e->len : 0);
    q->done = on_reply;
    q->arg = a;
    brm_redis_call(s->redis, q);
    return a;
}

void brm_stream_cancel(struct brm_stream_add *a) {
    if (!a) return;
    a->done = NULL;
    a->arg = NULL;
}
