/*
 * The Kafka side of the kafka target's tests: librdkafka's mock cluster,
 * steered through stdin, and a consumer that reads messages back.
 *
 *   kafka_peer cluster BROKERS     starts a mock cluster, prints
 *                                  "bootstraps HOST:PORT,..." and then obeys
 *                                  one command a line, answering "ok":
 *       topic NAME PARTITIONS      creates a topic
 *       down ID | up ID            takes broker ID (1..) down or up
 *       errors CODE COUNT          the next COUNT Produce requests fail with
 *                                  Kafka error CODE
 *       quit                       (or end of input)
 *   kafka_peer consume BOOTSTRAPS TOPIC PARTITIONS COUNT SECONDS
 *                                  reads COUNT messages of TOPIC from the
 *                                  start, one JSON line each: partition,
 *                                  offset, key, value, headers; exits 1 when
 *                                  fewer came within SECONDS
 *
 * Keys, values and headers are printed as JSON strings (the tests' own are
 * plain text).
 */
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void json_string(const void *p, size_t n) {
    const unsigned char *s = p;
    putchar('"');
    for (size_t i = 0; s && i < n; i++) {
        if (s[i] == '"' || s[i] == '\\')
            printf("\\%c", s[i]);
        else if (s[i] < 0x20)
            printf("\\u%04x", s[i]);
        else
            putchar(s[i]);
    }
    putchar('"');
}

static rd_kafka_t *make(rd_kafka_type_t type, const char *const *props) {
    char why[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    for (size_t i = 0; props[i]; i += 2) {
        if (rd_kafka_conf_set(conf, props[i], props[i + 1], why, sizeof(why)) != RD_KAFKA_CONF_OK) {
            fprintf(stderr, "kafka_peer: %s: %s\n", props[i], why);
            exit(2);
        }
    }
    rd_kafka_t *rk = rd_kafka_new(type, conf, why, sizeof(why));
    if (!rk) {
        fprintf(stderr, "kafka_peer: %s\n", why);
        exit(2);
    }
    return rk;
}

static int cluster(int brokers) {
    const char *props[] = { "log_level", "0", NULL };
    rd_kafka_t *rk = make(RD_KAFKA_PRODUCER, props);
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, brokers);
    if (!mc) {
        fprintf(stderr, "kafka_peer: no mock cluster\n");
        return 2;
    }
    printf("bootstraps %s\n", rd_kafka_mock_cluster_bootstraps(mc));
    fflush(stdout);
    char line[512], name[256];
    int a, b;
    while (fgets(line, sizeof(line), stdin)) {
        if (sscanf(line, "topic %255s %d", name, &a) == 2) {
            rd_kafka_mock_topic_create(mc, name, a, brokers < 3 ? brokers : 3);
        } else if (sscanf(line, "down %d", &a) == 1) {
            rd_kafka_mock_broker_set_down(mc, a);
        } else if (sscanf(line, "up %d", &a) == 1) {
            rd_kafka_mock_broker_set_up(mc, a);
        } else if (sscanf(line, "errors %d %d", &a, &b) == 2) {
            rd_kafka_resp_err_t *errs = calloc((size_t)b, sizeof(*errs));
            for (int i = 0; i < b; i++) errs[i] = (rd_kafka_resp_err_t)a;
            rd_kafka_mock_push_request_errors_array(mc, 0 /* Produce */, (size_t)b, errs);
            free(errs);
        } else if (strncmp(line, "quit", 4) == 0) {
            break;
        } else {
            fprintf(stderr, "kafka_peer: what is '%s'?\n", line);
            return 2;
        }
        printf("ok\n");
        fflush(stdout);
    }
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(rk);
    return 0;
}

static void print_message(const rd_kafka_message_t *m) {
    printf("{\"partition\":%d,\"offset\":%lld,\"key\":", (int)m->partition, (long long)m->offset);
    json_string(m->key, m->key_len);
    printf(",\"value\":");
    json_string(m->payload, m->len);
    printf(",\"headers\":{");
    rd_kafka_headers_t *h = NULL;
    if (rd_kafka_message_headers(m, &h) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        const char *name;
        const void *value;
        size_t size;
        for (size_t i = 0; rd_kafka_header_get_all(h, i, &name, &value, &size) == 0; i++) {
            if (i) putchar(',');
            json_string(name, strlen(name));
            putchar(':');
            json_string(value, size);
        }
    }
    printf("}}\n");
}

static int consume(const char *bootstraps, const char *topic, int partitions, int count,
                   int seconds) {
    const char *props[] = {
        "bootstrap.servers", bootstraps, "group.id", "kafka-peer", "enable.auto.commit", "false",
        "log_level",         "0",        NULL
    };
    rd_kafka_t *rk = make(RD_KAFKA_CONSUMER, props);
    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(partitions);
    for (int p = 0; p < partitions; p++)
        rd_kafka_topic_partition_list_add(parts, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(rk, parts);
    rd_kafka_topic_partition_list_destroy(parts);
    int got = 0;
    time_t end = time(NULL) + seconds;
    while (got < count && time(NULL) < end) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
        if (!m) continue;
        if (!m->err) {
            print_message(m);
            got++;
        }
        rd_kafka_message_destroy(m);
    }
    fflush(stdout);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return got < count;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "cluster") == 0) return cluster(atoi(argv[2]));
    if (argc == 7 && strcmp(argv[1], "consume") == 0)
        return consume(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]), atoi(argv[6]));
    fprintf(stderr, "usage: kafka_peer cluster BROKERS | consume BOOTSTRAPS TOPIC PARTITIONS "
                    "COUNT SECONDS\n");
    return 2;
}
