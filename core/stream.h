/*
 * stream: the outbox's redis-stream targets: XADD to a Redis stream,
 * capped with MAXLEN, through a Redis client (redis.c, on a thread of its
 * own: the outbox's loop never waits for Redis). The client's replies are
 * brought back to an event_base's thread (an eventfd it watches), one
 * callback per entry: added, with its id, or failed, saying whether trying
 * again could mend it (unreachable, connection lost, LOADING, OOM...) or
 * not (WRONGTYPE, NOPERM...). One connection carries a target's entries in
 * the order they were added. It knows nothing of deliveries. Depends on
 * redis, util, libevent.
 */
#ifndef BRM_STREAM_H
#define BRM_STREAM_H

#include <stddef.h>

#include "util.h"

struct event_base;

struct brm_stream_result {
    int failed;
    int retry;         /* the failure may pass */
    const char *error; /* when FAILED */
    const char *id;    /* when not: the entry's id */
};

/* Called once per entry, on the base's thread; RESULT is borrowed. */
typedef void brm_stream_done_fn(void *arg, const struct brm_stream_result *result);

struct brm_stream;
struct brm_stream_add;

/* 0, or -1 with ERR set when URL (NULL: none) is not a Redis URL. */
int brm_stream_check(const char *url, struct brm_err *err);
/* A client of the Redis at URL (redis://, rediss://; see redis.h) whose
 * reads and writes wait at most TIMEOUT seconds, reporting on BASE; NAME
 * is for its log lines. NULL with ERR set when URL is bad or the client
 * cannot start (an unreachable server is no error: entries wait, then
 * fail and are tried again). */
struct brm_stream *brm_stream_new(struct event_base *base, const char *name, const char *url,
                                  double timeout, struct brm_err *err);
/* Stops the client: what is queued or waits for an answer gets its
 * callback (failed, retry). Accepts NULL. */
void brm_stream_free(struct brm_stream *s);

/* One entry: XADD KEY MAXLEN ~ MAXLEN * field value... (MAXLEN 0: no cap;
 * EXACT: "=" rather than "~"). FIELDS are "name: value" lines, NFIELDS of
 * them, then the field "message" with VALUE. */
struct brm_stream_entry {
    const char *key;
    long long maxlen;
    int exact;
    const char *const *fields;
    size_t nfields;
    const char *value;
    size_t len;
};

/* Queues E (copied), calling DONE(ARG) with the outcome. */
struct brm_stream_add *brm_stream_add(struct brm_stream *s, const struct brm_stream_entry *e,
                                      brm_stream_done_fn *done, void *arg);
/* Forgets an entry on its way: DONE is not called (it may still be added). */
void brm_stream_cancel(struct brm_stream_add *a);

#endif
