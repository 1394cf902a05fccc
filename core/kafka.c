#define _GNU_SOURCE
#include "kafka.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

#define POLL_EVERY    1 /* seconds: poll at least this often, whatever the pipe says */
#define PURGE_WAIT_MS 2000

struct brm_kafka_send {
    brm_kafka_done_fn *done; /* NULL: cancelled */
    void *arg;
};

struct brm_kafka {
    struct event_base *base;
    char *name;
    char **settings; /* a copy, to make the producer again */
    size_t n;
    rd_kafka_t *rk;
    rd_kafka_queue_t *queue;
    int pipe[2]; /* librdkafka writes to [1] when its queue has work */
    struct event *readable, *tick;
    long inflight;
    int polling, doomed; /* brm_kafka_free from inside a report: freed after the poll */
    char fatal[400];     /* the producer's fatal error, or "" */
    char why[512];       /* what a refused send says */
};

/* ---- what librdkafka reports ------------------------------------------- */

/* 0 for a failure that trying again will not mend. */
static int retriable(rd_kafka_resp_err_t e) {
    switch (e) {
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_MSG:
    case RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_INVALID_REQUIRED_ACKS:
    case RD_KAFKA_RESP_ERR_UNSUPPORTED_FOR_MESSAGE_FORMAT:
    case RD_KAFKA_RESP_ERR_POLICY_VIOLATION:
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION: return 0;
    default: return 1;
    }
}

static void describe(char *out, size_t size, rd_kafka_resp_err_t e) {
    snprintf(out, size, "%s: %s", rd_kafka_err2name(e), rd_kafka_err2str(e));
}

static void on_report(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    struct brm_kafka *k = opaque;
    struct brm_kafka_send *s = m->_private;
    (void)rk;
    k->inflight--;
    if (s && s->done) {
        char why[512] = "";
        struct brm_kafka_result res = { .partition = m->partition, .offset = m->offset };
        if (m->err) {
            describe(why, sizeof(why), m->err);
            res.failed = 1;
            res.retry = retriable(m->err);
            res.error = why;
        }
        s->done(s->arg, &res);
    }
    free(s);
}

static void on_error(rd_kafka_t *rk, int e, const char *reason, void *opaque) {
    struct brm_kafka *k = opaque;
    (void)reason;
    if (e != RD_KAFKA_RESP_ERR__FATAL) return; /* the others pass, or show in the reports */
    char why[300];
    rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, why, sizeof(why));
    snprintf(k->fatal, sizeof(k->fatal), "%s: the producer hit a fatal error: %s",
             rd_kafka_err2name(orig), why);
    brm_log_error("kafka: producer failed; it is made again", "target", k->name, "error", k->fatal);
}

/* librdkafka's own threads: its warnings and errors (broker down, ...). */
static void on_log(const rd_kafka_t *rk, int level, const char *facility, const char *line) {
    const struct brm_kafka *k = rd_kafka_opaque(rk);
    if (level <= 4)
        brm_log(level <= 3 ? BRM_LOG_ERROR : BRM_LOG_WARN, "kafka", "target", k->name, "facility",
                facility, "message", line, (char *)NULL);
}

/* ---- the producer ------------------------------------------------------- */

static rd_kafka_conf_t *make_conf(const char *const *settings, size_t n, int plugins,
                                  struct brm_err *err) {
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char why[512];
    for (size_t i = 0; i < n; i++) {
        const char *name = settings[2 * i], *value = settings[2 * i + 1];
        if (!plugins && strcmp(name, "plugin.library.paths") == 0) continue;
        if (rd_kafka_conf_set(conf, name, value, why, sizeof(why)) != RD_KAFKA_CONF_OK) {
            brm_err_set(err, "%s: %s", name, why);
            rd_kafka_conf_destroy(conf);
            return NULL;
        }
    }
    if (rd_kafka_conf_set(conf, "enable.idempotence", "true", why, sizeof(why)) !=
        RD_KAFKA_CONF_OK) {
        brm_err_set(err, "enable.idempotence: %s", why);
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    return conf;
}

int brm_kafka_check(const char *const *settings, size_t n, int plugins, struct brm_err *err) {
    rd_kafka_conf_t *conf = make_conf(settings, n, plugins, err);
    if (!conf) return -1;
    rd_kafka_conf_destroy(conf);
    return 0;
}

static int start_producer(struct brm_kafka *k, struct brm_err *err) {
    char why[512];
    rd_kafka_conf_t *conf = make_conf((const char *const *)k->settings, k->n, 1, err);
    if (!conf) return -1;
    rd_kafka_conf_set_dr_msg_cb(conf, on_report);
    rd_kafka_conf_set_error_cb(conf, on_error);
    rd_kafka_conf_set_log_cb(conf, on_log);
    rd_kafka_conf_set_opaque(conf, k);
    k->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, sizeof(why));
    if (!k->rk) { /* the conf is still ours */
        rd_kafka_conf_destroy(conf);
        brm_err_set(err, "cannot start a producer: %s", why);
        return -1;
    }
    k->queue = rd_kafka_queue_get_main(k->rk);
    rd_kafka_queue_io_event_enable(k->queue, k->pipe[1], "!", 1);
    k->fatal[0] = '\0';
    return 0;
}

static void poll_reports(struct brm_kafka *k) {
    k->polling = 1;
    while (!k->doomed && k->rk && rd_kafka_poll(k->rk, 0) > 0) {
    }
    k->polling = 0;
}

/* Purges what is queued or in flight, serves the reports that brings
 * (their callbacks run), and destroys the producer. */
static void stop_producer(struct brm_kafka *k) {
    if (!k->rk) return;
    k->polling = 1;
    rd_kafka_purge(k->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_flush(k->rk, PURGE_WAIT_MS);
    rd_kafka_queue_io_event_enable(k->queue, -1, NULL, 0);
    rd_kafka_queue_destroy(k->queue);
    rd_kafka_destroy(k->rk);
    k->rk = NULL;
    k->queue = NULL;
    k->polling = 0;
}

static void destroy(struct brm_kafka *k) {
    stop_producer(k);
    if (k->readable) event_free(k->readable);
    if (k->tick) event_free(k->tick);
    for (int i = 0; i < 2; i++)
        if (k->pipe[i] >= 0) close(k->pipe[i]);
    for (size_t i = 0; i < 2 * k->n; i++) free(k->settings[i]);
    free(k->settings);
    free(k->name);
    free(k);
}

static void on_readable(evutil_socket_t fd, short what, void *arg) {
    struct brm_kafka *k = arg;
    char buf[256];
    (void)what;
    while (fd >= 0 && read(fd, buf, sizeof(buf)) > 0) {
    }
    poll_reports(k);
    if (k->doomed) destroy(k);
}

struct brm_kafka *brm_kafka_new(struct event_base *base, const char *name,
                                const char *const *settings, size_t n, struct brm_err *err) {
    struct brm_kafka *k = brm_xcalloc(1, sizeof(*k));
    k->base = base;
    k->name = brm_xstrdup(name);
    k->pipe[0] = k->pipe[1] = -1;
    k->settings = brm_xcalloc(2 * n + 1, sizeof(char *));
    for (size_t i = 0; i < 2 * n; i++) k->settings[i] = brm_xstrdup(settings[i]);
    k->n = n;
    if (pipe2(k->pipe, O_NONBLOCK | O_CLOEXEC) < 0) {
        brm_err_set(err, "cannot make a pipe: %s", strerror(errno));
        goto fail;
    }
    if (start_producer(k, err) < 0) goto fail;
    k->readable = event_new(base, k->pipe[0], EV_READ | EV_PERSIST, on_readable, k);
    k->tick = event_new(base, -1, EV_PERSIST, on_readable, k);
    struct timeval every = { POLL_EVERY, 0 };
    event_add(k->readable, NULL);
    event_add(k->tick, &every);
    return k;
fail:
    destroy(k);
    return NULL;
}

void brm_kafka_free(struct brm_kafka *k) {
    if (!k) return;
    if (k->polling) { /* from a report's callback: on_readable frees it */
        k->doomed = 1;
        return;
    }
    destroy(k);
}

const char *brm_kafka_mock_bootstraps(const struct brm_kafka *k) {
    rd_kafka_mock_cluster_t *mc = k->rk ? rd_kafka_handle_mock_cluster(k->rk) : NULL;
    return mc ? rd_kafka_mock_cluster_bootstraps(mc) : NULL;
}

/* ---- messages ----------------------------------------------------------- */

static rd_kafka_headers_t *make_headers(const char *const *lines, size_t n) {
    if (!n) return NULL;
    rd_kafka_headers_t *h = rd_kafka_headers_new(n);
    for (size_t i = 0; i < n; i++) {
        const char *colon = strchr(lines[i], ':');
        if (!colon) continue; /* api.c lets none through */
        const char *value = colon + 1;
        while (*value == ' ') value++;
        rd_kafka_header_add(h, lines[i], colon - lines[i], value, -1);
    }
    return h;
}

static struct brm_kafka_send *refused(struct brm_kafka *k, struct brm_kafka_result *now, int retry,
                                      const char *why) {
    snprintf(k->why, sizeof(k->why), "%s", why);
    *now = (struct brm_kafka_result){ .failed = 1, .retry = retry, .error = k->why };
    return NULL;
}

struct brm_kafka_send *brm_kafka_send(struct brm_kafka *k, const struct brm_kafka_message *msg,
                                      brm_kafka_done_fn *done, void *arg,
                                      struct brm_kafka_result *now) {
    struct brm_err err;
    if (k->fatal[0] && k->inflight == 0 && !k->polling) { /* every message has reported */
        stop_producer(k);
        if (start_producer(k, &err) < 0) {
            snprintf(k->fatal, sizeof(k->fatal), "the producer cannot be made again: %.300s",
                     err.msg);
            return refused(k, now, 1, k->fatal);
        }
    }
    if (k->fatal[0] || !k->rk) return refused(k, now, 1, k->fatal);
    struct brm_kafka_send *s = brm_xcalloc(1, sizeof(*s));
    s->done = done;
    s->arg = arg;
    rd_kafka_headers_t *h = make_headers(msg->headers, msg->nheaders);
    rd_kafka_resp_err_t e = rd_kafka_producev(
        k->rk, RD_KAFKA_V_TOPIC(msg->topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_KEY(msg->key, msg->key ? strlen(msg->key) : 0),
        RD_KAFKA_V_VALUE((void *)msg->value, msg->len), RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_OPAQUE(s),
        RD_KAFKA_V_END);
    if (e) { /* the headers are still ours */
        if (h) rd_kafka_headers_destroy(h);
        free(s);
        char why[512];
        describe(why, sizeof(why), e);
        return refused(k, now, retriable(e), why);
    }
    k->inflight++;
    return s;
}

void brm_kafka_cancel(struct brm_kafka_send *s) {
    if (!s) return;
    s->done = NULL;
    s->arg = NULL;
}
