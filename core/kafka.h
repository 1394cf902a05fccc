/*
 * kafka: a Kafka producer on an event_base, for the outbox's kafka targets.
 *
 * librdkafka speaks the protocol on threads of its own; what it reports
 * comes back on the base's thread: librdkafka writes to a pipe when its
 * queue has work, and the base's callback polls it there. Each message
 * sent gets one callback, when the brokers acknowledged it (acks=all: every
 * in-sync replica has it) or when it failed, saying whether trying again
 * could mend the failure. The producer is idempotent: its own retries
 * neither duplicate nor reorder messages within a partition. After a fatal
 * error (the idempotent producer lost its sequence) the producer is made
 * again once its last message has reported. It knows nothing of
 * deliveries. Depends on librdkafka, libevent, util.
 */
#ifndef BRM_KAFKA_H
#define BRM_KAFKA_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

struct event_base;

struct brm_kafka_result {
    int failed;
    int retry;         /* the failure may pass: time out, broker down, leader moved... */
    const char *error; /* when FAILED: "<ERROR_NAME>: <what librdkafka says>" */
    int32_t partition; /* when not FAILED: where the message went */
    int64_t offset;
};

/* Called once per message, on the base's thread; RESULT is borrowed. */
typedef void brm_kafka_done_fn(void *arg, const struct brm_kafka_result *result);

struct brm_kafka;
struct brm_kafka_send;

/* Nothing, or ERR set ("<property>: <why>") when librdkafka refuses one
 * of SETTINGS, N name/value pairs of its properties (2 * N strings).
 * Without PLUGINS, plugin.library.paths is passed over: librdkafka would
 * load (and run) the plugins it names, which `brume check` must not, on a
 * host that may not be brume's. */
int brm_kafka_check(const char *const *settings, size_t n, int plugins, struct brm_err *err);
/* A producer on BASE with SETTINGS (as above; enable.idempotence is
 * forced on); NAME is for its log lines (librdkafka's warnings and errors
 * are logged). NULL with ERR set when a setting is refused or librdkafka
 * cannot start. */
struct brm_kafka *brm_kafka_new(struct event_base *base, const char *name,
                                const char *const *settings, size_t n, struct brm_err *err);
/* Purges what is queued or in flight (their callbacks are called, failed
 * and retry), then destroys the producer. Accepts NULL. */
void brm_kafka_free(struct brm_kafka *k);

/* The mock cluster's bootstrap servers ("127.0.0.1:port,...") when the
 * settings asked librdkafka for one (test.mock.num.brokers), else NULL. */
const char *brm_kafka_mock_bootstraps(const struct brm_kafka *k);

/* One message: VALUE (LEN bytes) to TOPIC under KEY (NULL: none, the
 * partitioner picks), with HEADERS ("Name: value", NHEADERS of them). */
struct brm_kafka_message {
    const char *topic;
    const char *key;
    const char *value;
    size_t len;
    const char *const *headers;
    size_t nheaders;
};

/* Queues MSG (copied), calling DONE(ARG) with its delivery report. Returns
 * the send, or NULL when librdkafka refused it at once: then NOW says why
 * and DONE is not called. */
struct brm_kafka_send *brm_kafka_send(struct brm_kafka *k, const struct brm_kafka_message *msg,
                                      brm_kafka_done_fn *done, void *arg,
                                      struct brm_kafka_result *now);
/* Forgets a send in flight: DONE is not called (librdkafka may still
 * deliver the message). */
void brm_kafka_cancel(struct brm_kafka_send *s);

#endif
