/* outbox: alone with its store, its writer and an HTTP server in the test
 * (evhttp on its own thread, 127.0.0.1). Its backoff (full jitter under
 * an exponential ceiling, Retry-After a floor), its masking of secrets,
 * and deliveries run to their outcome: a 200 is done with one attempt, a
 * 503 is tried again until it is answered, a 400 is dead at once with its
 * answer kept, a refused connection is tried until max_age and then dead,
 * a delivery whose target is gone from the config is buried, and a kafka
 * delivery is done by its delivery report (librdkafka's mock cluster). Includes
 * outbox.c for its statics. */
#include "../../core/outbox.c"

#include <event2/buffer.h>
#include <event2/http.h>
#include <stdatomic.h>

#include "test.h"

/* ---- the server (its own thread and event_base) --------------------------- */

static struct {
    struct event_base *base;
    struct evhttp *http;
    struct event *quit;
    int port, stop[2]; /* a byte on stop[1] ends the server's loop */
    pthread_t thread;
    atomic_int ok, busy, bad;
} srv;

static void reply(struct evhttp_request *req, int code, const char *body) {
    struct evbuffer *out = evbuffer_new();
    evbuffer_add(out, body, strlen(body));
    evhttp_send_reply(req, code, "X", out);
    evbuffer_free(out);
}

static void on_ok(struct evhttp_request *req, void *arg) {
    (void)arg;
    srv.ok++;
    reply(req, 200, "fine");
}

/* Busy twice, then fine. */
static void on_busy(struct evhttp_request *req, void *arg) {
    (void)arg;
    if (++srv.busy <= 2) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "0");
        reply(req, 503, "busy, come back");
    } else {
        reply(req, 200, "fine now");
    }
}

static void on_bad(struct evhttp_request *req, void *arg) {
    (void)arg;
    srv.bad++;
    reply(req, 400, "no such channel");
}

static void *serve(void *arg) {
    (void)arg;
    event_base_dispatch(srv.base);
    return NULL;
}

static void on_quit(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    event_base_loopbreak(arg);
}

static void start_server(void) {
    srv.base = event_base_new();
    srv.http = evhttp_new(srv.base);
    CHECK_INT(pipe(srv.stop), 0);
    srv.quit = event_new(srv.base, srv.stop[0], EV_READ, on_quit, srv.base);
    event_add(srv.quit, NULL);
    evhttp_set_cb(srv.http, "/ok", on_ok, NULL);
    evhttp_set_cb(srv.http, "/busy", on_busy, NULL);
    evhttp_set_cb(srv.http, "/bad", on_bad, NULL);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(srv.http, "127.0.0.1", 0);
    struct sockaddr_in sin;
    socklen_t len = sizeof(sin);
    getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sin, &len);
    srv.port = ntohs(sin.sin_port);
    pthread_create(&srv.thread, NULL, serve, NULL);
}

static void stop_server(void) {
    CHECK_INT(write(srv.stop[1], "q", 1), 1);
    pthread_join(srv.thread, NULL);
    event_free(srv.quit);
    close(srv.stop[0]);
    close(srv.stop[1]);
    evhttp_free(srv.http);
    event_base_free(srv.base);
}

/* A port nothing listens on: bound, then closed. */
static int closed_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof(sin);
    bind(fd, (struct sockaddr *)&sin, sizeof(sin));
    getsockname(fd, (struct sockaddr *)&sin, &len);
    close(fd);
    return ntohs(sin.sin_port);
}

/* ---- backoff and masking --------------------------------------------------- */

static void test_backoff(void) {
    struct brm_target t = { .backoff = 2 };
    for (int attempts = 0; attempts < 12; attempts++) {
        double ceiling = fmin(BACKOFF_CAP, 2 * pow(2, attempts)), lo = 1e9, hi = 0;
        for (int i = 0; i < 200; i++) {
            double d = backoff(&t, attempts, 0);
            lo = fmin(lo, d);
            hi = fmax(hi, d);
        }
        CHECK(lo >= 1.0);                                /* never at once */
        CHECK(hi <= ceiling);                            /* under the exponential ceiling, capped */
        if (attempts >= 3) CHECK(hi - lo > ceiling / 4); /* jittered, not fixed */
    }
    CHECK(backoff(&t, 30, 0) <= BACKOFF_CAP);
    CHECK(backoff(&t, 0, 90) >= 90); /* Retry-After is a floor */
    struct brm_target quick = { .backoff = 0.1 };
    for (int i = 0; i < 100; i++) {
        double d = backoff(&quick, 0, 0);
        CHECK(d >= 0.1 && d <= 0.2);
    }
    struct brm_target unset = { 0 }; /* 2 s by default */
    CHECK(backoff(&unset, 0, 0) <= 2.0);
}

static void check_mask(const struct brm_target *t, const char *s, const char *want) {
    struct brm_buf out;
    brm_buf_init(&out);
    brm_outbox_mask(t, s, &out);
    CHECK_STR(out.data, want);
    brm_buf_reset(&out);
}

static void test_mask(void) {
    char s0[] = "https://hooks.slack.com/services/T0/B0/XYZ", s1[] = "tok-1234",
         s2[] = "tok-12345678", s3[] = "abc", name[] = "secops";
    char *secrets[] = { s0, s1, s2, s3 };
    struct brm_target t = { .name = name, .secrets = secrets, .nsecrets = 4 };
    check_mask(&t, "posting to https://hooks.slack.com/services/T0/B0/XYZ failed",
               "posting to https://hooks.slack.com/**** failed");
    /* The longest secret that matches wins; one under 4 bytes is left. */
    check_mask(&t, "Bearer tok-12345678, abc", "Bearer ****, abc");
    check_mask(&t, "tok-1234tok-1234", "********");
    check_mask(&t, "", "");
    check_mask(NULL, "tok-1234", "tok-1234");
}

/* A done delivery's request goes when it may hold a secret, not for one
 * in its URL alone (which stays anyway). */
static void test_holds_secret(void) {
    char url[] = "https://hooks.slack.com/services/T0/B0/XYZ", key[] = "R0UT1NGK3Y";
    char *secrets[] = { url, key };
    struct brm_target t = { .secrets = secrets, .nsecrets = 2 };
    struct brm_delivery d = { .url = url,
                              .headers = "Content-Type: application/json",
                              .body = "{\"text\":\"ap-1 down\"}",
                              .body_len = 20 };
    CHECK_INT(holds_secret(&t, &d), 0);
    d.body = "{\"routing_key\":\"R0UT1NGK3Y\"}"; /* a routing key, in the body */
    d.body_len = strlen(d.body);
    CHECK_INT(holds_secret(&t, &d), 1);
    d.body_len = 10; /* the body is its length, not up to a NUL */
    CHECK_INT(holds_secret(&t, &d), 0);
    d.headers = "Authorization: GenieKey R0UT1NGK3Y";
    CHECK_INT(holds_secret(&t, &d), 1);
    d.headers = NULL;
    d.plan = "{\"create\":{}}"; /* a ticket's plan: its credentials are encoded */
    CHECK_INT(holds_secret(&t, &d), 1);
    struct brm_target none = { 0 };
    d.plan = NULL;
    d.body_len = strlen(d.body);
    CHECK_INT(holds_secret(&none, &d), 0);
}

/* ---- deliveries run to their outcome --------------------------------------- */

static char dir[] = "/tmp/brume-outbox-XXXXXX";

/* Stores a delivery to TARGET as the journal would, given up after MAX_AGE
 * seconds (the journal takes it from the target's max_age). */
static void add(struct brm_store *st, const char *key, const char *target, const char *url,
                double max_age) {
    double now = brm_time_now();
    struct brm_delivery d = { .key = key,
                              .target = target,
                              .rule = "route",
                              .topic = "alarms",
                              .event = "e1",
                              .method = "POST",
                              .url = url,
                              .headers = "Content-Type: application/json",
                              .body = "{\"text\":\"ap-1 down\"}",
                              .body_len = 20,
                              .state = BRM_DELIVERY_PENDING,
                              .created = now,
                              .next_at = now,
                              .expires = now + max_age };
    struct brm_err err;
    CHECK_INT(brm_store_add_delivery(st, &d, &err), 1);
}

struct seen {
    int n, done, dead, pending;
    char dead_error[600], bad_status[16];
    int64_t bad_id, gone_attempts, kafka_id;
    char kafka_error[600];
};

static int count(void *arg, const struct brm_delivery *d) {
    struct seen *s = arg;
    s->n++;
    if (d->state == BRM_DELIVERY_DONE) s->done++;
    if (d->state == BRM_DELIVERY_DONE && strcmp(d->target, "k") == 0) s->kafka_id = d->id;
    if (d->state == BRM_DELIVERY_DEAD && strcmp(d->target, "k") == 0)
        snprintf(s->kafka_error, sizeof(s->kafka_error), "%s", d->last_error);
    if (d->state == BRM_DELIVERY_PENDING) s->pending++;
    if (d->state == BRM_DELIVERY_DEAD) {
        s->dead++;
        if (strcmp(d->target, "bad") == 0) {
            snprintf(s->dead_error, sizeof(s->dead_error), "%s", d->last_error);
            snprintf(s->bad_status, sizeof(s->bad_status), "%d", d->last_status);
            s->bad_id = d->id;
        }
        if (strcmp(d->target, "gone") == 0) s->gone_attempts = d->attempts;
    }
    return 0;
}

static int last_answer(void *arg, const struct brm_attempt *a) {
    snprintf(arg, 64, "%s", a->answer ? a->answer : "");
    return 1;
}

/* Waits (up to 20 s) until no delivery is pending. */
static struct seen settle(struct brm_store *reader) {
    struct seen s;
    struct brm_err err;
    for (int i = 0; i < 400; i++) {
        memset(&s, 0, sizeof(s));
        CHECK_INT(brm_store_list(reader, 1, 100, count, &s, &err), 0);
        if (s.pending == 0) break;
        usleep(50 * 1000);
    }
    return s;
}

static void test_deliveries(void) {
    CHECK(mkdtemp(dir) != NULL);
    start_server();
    int gone = closed_port();
    char *text = brm_xasprintf(
        "data_dir = '%s'\n"
        "sources = { mist = { path = '/mist', secret = 's3cret' } }\n"
        "targets = {\n"
        "  ok = { kind = 'webhook', url = 'http://127.0.0.1:%d/ok' },\n"
        "  busy = { kind = 'webhook', url = 'http://127.0.0.1:%d/busy', backoff = '0.1s' },\n"
        "  bad = { kind = 'webhook', url = 'http://127.0.0.1:%d/bad' },\n"
        "  gone = { kind = 'webhook', url = 'http://127.0.0.1:%d/', backoff = '0.1s' },\n"
        "  k = { kind = 'kafka', topic = 't', properties = { ['test.mock.num.brokers'] = '1',\n"
        "        log_level = '0' } },\n"
        "}\n",
        dir, srv.port, srv.port, srv.port, gone);
    char *path = brm_path_join(dir, "brume.lua");
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
    free(text);
    struct brm_errors errs = { 0 };
    struct brm_config *cfg = brm_config_load(path, brm_api_open_for_config, NULL, &errs);
    for (size_t i = 0; i < errs.n; i++) fprintf(stderr, "  %s\n", errs.v[i].msg);
    brm_errors_reset(&errs);
    free(path);
    CHECK(cfg != NULL);
    if (!cfg) return;

    /* What rules sent, stored as the journal stores it. */
    struct brm_err err;
    char *db = brm_outbox_store_path(cfg);
    struct brm_store *st = brm_store_open(db, &err);
    CHECK(st != NULL);
    CHECK_INT(brm_store_begin(st, &err), 0);
    char url[128];
    for (int i = 0; i < 3; i++) {
        char key[32];
        snprintf(key, sizeof(key), "1:%d:route:1", i);
        snprintf(url, sizeof(url), "http://127.0.0.1:%d/ok", srv.port);
        add(st, key, "ok", url, 3600);
    }
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/busy", srv.port);
    add(st, "2:0:route:1", "busy", url, 3600);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/bad", srv.port);
    add(st, "3:0:route:1", "bad", url, 3600);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", gone);
    add(st, "4:0:route:1", "gone", url, 1);
    /* To librdkafka's mock cluster; a request that is not a kafka one is dead. */
    add(st, "6:0:route:1", "k", "kafka:t", 3600);
    add(st, "7:0:route:1", "k", "http://127.0.0.1:1/", 3600);
    /* A delivery whose target a reload removed is buried, not tried. */
    add(st, "5:0:route:1", "removed", "http://127.0.0.1:1/", 3600);
    CHECK_INT(brm_store_commit(st, &err), 0);
    brm_store_close(st);

    brm_journal_start(10);
    struct brm_journal *j = brm_journal_new(db, cfg, NULL, NULL, &err);
    CHECK(j != NULL);
    CHECK_INT(brm_journal_run(j, &err), 0);
    struct brm_outbox *ob = brm_outbox_new(cfg, j, &err);
    CHECK(ob != NULL);
    CHECK_INT(brm_outbox_start(ob, &err), 0);
    struct brm_store *reader = brm_store_open_reader(db, &err);
    struct seen s = settle(reader);
    brm_outbox_stop(ob, 1);

    CHECK_INT(s.n, 9);
    CHECK_INT(s.pending, 0);
    CHECK_INT(s.done, 5); /* three ok, busy after two 503s, kafka */
    CHECK_INT(s.dead, 4); /* bad, gone, removed, the kafka one that is not */
    CHECK_HAS(s.kafka_error, "the stored request is not a kafka message");
    CHECK_INT(srv.ok, 3);
    CHECK_INT(srv.busy, 3);
    CHECK_INT(srv.bad, 1); /* a 400 is not tried again */
    CHECK_HAS(s.dead_error, "HTTP 400: no such channel");
    CHECK_STR(s.bad_status, "400");
    CHECK(s.gone_attempts >= 2); /* refused, tried again, then given up */
    char answer[64] = "";
    CHECK_INT(brm_store_attempts(reader, s.bad_id, 10, last_answer, answer, &err), 0);
    CHECK_STR(answer, "no such channel");
    CHECK_INT(brm_store_attempts(reader, s.kafka_id, 10, last_answer, answer, &err), 0);
    CHECK(strncmp(answer, "partition ", 10) == 0); /* no key: any partition */
    CHECK_HAS(answer, " offset 0");
    long pending;
    double oldest;
    CHECK_INT(brm_store_pending(reader, brm_time_now(), &pending, &oldest), 0);
    CHECK_INT(pending, 0);

    brm_store_close(reader);
    brm_outbox_free(ob);
    brm_journal_stop(j);
    brm_journal_free(j);
    free(db);
    brm_config_free(cfg);
    stop_server();
    char *cmd = brm_xasprintf("rm -rf %s", dir);
    CHECK_INT(system(cmd), 0);
    free(cmd);
}

int main(void) {
    test_backoff();
    test_mask();
    test_holds_secret();
    test_deliveries();
    return test_done();
}
