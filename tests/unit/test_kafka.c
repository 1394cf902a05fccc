/* kafka: settings librdkafka refuses; a message to librdkafka's own mock
 * cluster reports on the base's thread; a refusal at once says whether a
 * retry could mend it; a cancelled send calls nothing; freeing purges what
 * is in flight, and its callbacks say "try again"; after a fatal error the
 * producer is made again. (It includes kafka.c for its statics.) */
#include "kafka.c"

#include <event2/event.h>
#include <string.h>

#include "test.h"

struct seen {
    int calls, failed, retry;
    char error[512];
    struct event_base *base;
};

static void done(void *arg, const struct brm_kafka_result *r) {
    struct seen *s = arg;
    s->calls++;
    s->failed = r->failed;
    s->retry = r->retry;
    snprintf(s->error, sizeof(s->error), "%s", r->error ? r->error : "");
    event_base_loopbreak(s->base);
}

/* Runs BASE until a callback broke the loop or SECONDS passed. */
static void run(struct event_base *base, int seconds) {
    struct timeval tv = { seconds, 0 };
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
}

static void check_settings(void) {
    struct brm_err err;
    const char *bad[] = { "no.such.property", "1" };
    CHECK(brm_kafka_check(bad, 1, 1, &err) == -1);
    CHECK_HAS(err.msg, "no.such.property: ");
    const char *good[] = { "bootstrap.servers", "127.0.0.1:9092", "linger.ms", "5" };
    CHECK(brm_kafka_check(good, 2, 1, &err) == 0);
    /* A plugin is loaded at a start, not by `brume check`. */
    const char *plugin[] = { "plugin.library.paths", "/nonexistent/plugin.so" };
    CHECK(brm_kafka_check(plugin, 1, 1, &err) == -1);
    CHECK_HAS(err.msg, "plugin.library.paths: ");
    CHECK(brm_kafka_check(plugin, 1, 0, &err) == 0);
    struct event_base *base = event_base_new();
    CHECK(brm_kafka_new(base, "t", bad, 1, &err) == NULL);
    CHECK_HAS(err.msg, "no.such.property: ");
    event_base_free(base);
}

static void check_mock_cluster(void) {
    struct brm_err err;
    struct event_base *base = event_base_new();
    const char *settings[] = { "test.mock.num.brokers", "1",     "message.timeout.ms", "5000",
                               "message.max.bytes",     "10000", "log_level",          "0" };
    struct brm_kafka *k = brm_kafka_new(base, "t", settings, 4, &err);
    CHECK(k != NULL);
    if (!k) {
        event_base_free(base);
        return;
    }
    CHECK(brm_kafka_mock_bootstraps(k) &&
          strncmp(brm_kafka_mock_bootstraps(k), "127.0.0.1:", 10) == 0);
    struct seen s = { .base = base };
    const char *headers[] = { "brume-rule: r" };
    struct brm_kafka_message m = { "t1", "key-1", "{\"n\":1}", 7, headers, 1 };
    struct brm_kafka_result now;
    CHECK(brm_kafka_send(k, &m, done, &s, &now) != NULL);
    run(base, 20);
    CHECK(s.calls == 1 && !s.failed);
    /* Too large for message.max.bytes: refused at once, for good. */
    static char big[20000];
    memset(big, 'x', sizeof(big));
    struct brm_kafka_message large = { "t1", "key-1", big, sizeof(big), NULL, 0 };
    CHECK(brm_kafka_send(k, &large, done, &s, &now) == NULL);
    CHECK(now.failed && !now.retry);
    CHECK_HAS(now.error, "MSG_SIZE_TOO_LARGE: ");
    /* Cancelled: no callback, though the message may go. */
    struct brm_kafka_send *x = brm_kafka_send(k, &m, done, &s, &now);
    CHECK(x != NULL);
    brm_kafka_cancel(x);
    run(base, 2);
    CHECK(s.calls == 1);
    /* In flight when the producer goes: purged, to be tried again. */
    struct seen purged = { .base = base };
    CHECK(brm_kafka_send(k, &m, done, &purged, &now) != NULL);
    brm_kafka_free(k);
    CHECK(purged.calls == 1 && purged.failed && purged.retry);
    CHECK_HAS(purged.error, "PURGE");
    event_base_free(base);
}

static void check_fatal(void) {
    struct brm_err err;
    struct event_base *base = event_base_new();
    const char *settings[] = { "test.mock.num.brokers", "1", "log_level", "0" };
    struct brm_kafka *k = brm_kafka_new(base, "t", settings, 2, &err);
    CHECK(k != NULL);
    if (!k) {
        event_base_free(base);
        return;
    }
    rd_kafka_test_fatal_error(k->rk, RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER, "a test");
    run(base, 2); /* the error is served on the base's thread */
    CHECK_HAS(k->fatal, "OUT_OF_ORDER_SEQUENCE_NUMBER: the producer hit a fatal error: ");
    struct seen s = { .base = base };
    struct brm_kafka_message m = { "t1", "k", "v", 1, NULL, 0 };
    struct brm_kafka_result now;
    CHECK(brm_kafka_send(k, &m, done, &s, &now) != NULL); /* a new producer */
    CHECK_STR(k->fatal, "");
    run(base, 20);
    CHECK(s.calls == 1 && !s.failed);
    brm_kafka_free(k);
    event_base_free(base);
}

int main(void) {
    check_settings();
    check_mock_cluster();
    check_fatal();
    return test_done();
}
