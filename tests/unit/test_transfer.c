/* transfer: requests against an HTTP server in the test (evhttp on its own
 * thread and event_base, 127.0.0.1): status and answer (cut to 64 KB),
 * Retry-After as seconds or a date, a timeout, a refused connection, bad
 * URLs and schemes, a certificate no CA signed, what a request carries, a
 * proxy, transfers in flight together, one started from a callback,
 * cancelled ones, and transfers freed in flight. */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "test.h"
#include "transfer.h"

/* ---- the server (its own thread; nothing here runs on the client's) ------ */

#define BIG_ANSWER (100 * 1024)
#define MAX_PARKED 16

/* A request answered later (slow, gate) or never (hang). */
struct parked {
    struct evhttp_request *req; /* NULL once its connection closed */
    struct event *timer;        /* slow: when to answer */
    char id[32];
};

static struct {
    struct event_base *base;
    struct evhttp *http;
    struct event *stop_ev;
    int stop[2];
    int port;
    pthread_t thread;
    struct parked parked[MAX_PARKED];
    atomic_int requests, hung;
} srv;

static char big[BIG_ANSWER];

static const char *query_value(struct evhttp_request *req, const char *name, char *buf,
                               size_t size) {
    struct evkeyvalq q;
    const char *v = NULL;
    const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    buf[0] = '\0';
    if (query && evhttp_parse_query_str(query, &q) == 0) {
        v = evhttp_find_header(&q, name);
        if (v) snprintf(buf, size, "%s", v);
        evhttp_clear_headers(&q);
    }
    return v ? buf : NULL;
}

static void reply(struct evhttp_request *req, int code, const char *body, size_t len) {
    struct evbuffer *out = evbuffer_new();
    evbuffer_add(out, body, len);
    evhttp_send_reply(req, code, "X", out);
    evbuffer_free(out);
}

static void on_ok(struct evhttp_request *req, void *arg) {
    (void)arg;
    srv.requests++;
    reply(req, 200, "hello", 5);
}

static void on_empty(struct evhttp_request *req, void *arg) {
    (void)arg;
    srv.requests++;
    evhttp_send_reply(req, 204, "No Content", NULL);
}

static void on_big(struct evhttp_request *req, void *arg) {
    (void)arg;
    srv.requests++;
    reply(req, 202, big, sizeof(big));
}

/* 500 "down", with Retry-After: 7. */
static void on_busy(struct evhttp_request *req, void *arg) {
    (void)arg;
    srv.requests++;
    evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "7");
    reply(req, 500, "down", 4);
}

/* 429 with Retry-After as the HTTP date 30 seconds from now. */
static void on_limited(struct evhttp_request *req, void *arg) {
    (void)arg;
    srv.requests++;
    char date[64];
    time_t when = time(NULL) + 30;
    struct tm tm;
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", gmtime_r(&when, &tm));
    evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", date);
    reply(req, 429, "slow down", 9);
}

/* 503 with the header NAME (default Retry-After) set to the query's v. */
static void on_retry(struct evhttp_request *req, void *arg) {
    (void)arg;
    char v[128], name[64];
    srv.requests++;
    if (!query_value(req, "name", name, sizeof(name))) snprintf(name, sizeof(name), "Retry-After");
    if (query_value(req, "v", v, sizeof(v)))
        evhttp_add_header(evhttp_request_get_output_headers(req), name, v);
    reply(req, 503, "", 0);
}

static const char *method_name(enum evhttp_cmd_type c) {
    switch (c) {
    case EVHTTP_REQ_GET: return "GET";
    case EVHTTP_REQ_POST: return "POST";
    case EVHTTP_REQ_PUT: return "PUT";
    case EVHTTP_REQ_PATCH: return "PATCH";
    case EVHTTP_REQ_DELETE: return "DELETE";
    default: return "?";
    }
}

/* "METHOD uri\n", the headers as "Name: value" lines, "\n", the body. */
static void on_echo(struct evhttp_request *req, void *arg) {
    (void)arg;
    srv.requests++;
    struct evbuffer *out = evbuffer_new();
    evbuffer_add_printf(out, "%s %s\n", method_name(evhttp_request_get_command(req)),
                        evhttp_request_get_uri(req));
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);
    for (struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next)
        evbuffer_add_printf(out, "%s: %s\n", kv->key, kv->value);
    evbuffer_add(out, "\n", 1);
    evbuffer_add_buffer(out, evhttp_request_get_input_buffer(req));
    evhttp_send_reply(req, 200, "OK", out);
    evbuffer_free(out);
}

static uint64_t fnv1a(const unsigned char *p, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

/* "len=N fnv=H expect=E" of the body and its Expect header. */
static void on_sum(struct evhttp_request *req, void *arg) {
    (void)arg;
    srv.requests++;
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    char text[64];
    const char *expect = evhttp_find_header(evhttp_request_get_input_headers(req), "Expect");
    int len = snprintf(text, sizeof(text), "len=%zu fnv=%016llx expect=%s", n,
                       (unsigned long long)fnv1a(evbuffer_pullup(in, -1), n), expect ? expect : "");
    reply(req, 200, text, (size_t)len);
}

static void parked_closed(struct evhttp_connection *c, void *arg) {
    struct parked *pk = arg;
    (void)c;
    pk->req = NULL;
    if (pk->timer) event_free(pk->timer);
    pk->timer = NULL;
}

static struct parked *park(struct evhttp_request *req) {
    for (int i = 0; i < MAX_PARKED; i++) {
        struct parked *pk = &srv.parked[i];
        if (pk->req) continue;
        pk->req = req;
        query_value(req, "id", pk->id, sizeof(pk->id));
        evhttp_connection_set_closecb(evhttp_request_get_connection(req), parked_closed, pk);
        return pk;
    }
    reply(req, 507, "parked too many", 15);
    return NULL;
}

static void unpark(struct parked *pk, int code) {
    evhttp_connection_set_closecb(evhttp_request_get_connection(pk->req), NULL, NULL);
    if (pk->timer) event_free(pk->timer);
    pk->timer = NULL;
    struct evhttp_request *req = pk->req;
    pk->req = NULL;
    reply(req, code, pk->id, strlen(pk->id));
}

static void on_hang(struct evhttp_request *req, void *arg) {
    (void)arg;
    srv.requests++;
    srv.hung++;
    park(req);
}

static void slow_due(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    unpark(arg, 200);
}

/* Answers its id after ms milliseconds. */
static void on_slow(struct evhttp_request *req, void *arg) {
    (void)arg;
    char ms[16];
    srv.requests++;
    struct parked *pk = park(req);
    if (!pk) return;
    long n = query_value(req, "ms", ms, sizeof(ms)) ? atol(ms) : 100;
    struct timeval tv = { n / 1000, (n % 1000) * 1000 };
    pk->timer = evtimer_new(srv.base, slow_due, pk);
    evtimer_add(pk->timer, &tv);
}

static int at_gate(const struct parked *pk) {
    return pk->req && pk->id[0] == 'g';
}

/* Holds requests (ids "g...") until n of them wait, then answers them all,
 * the last come first: only transfers in flight together get through. */
static void on_gate(struct evhttp_request *req, void *arg) {
    (void)arg;
    char n[16];
    srv.requests++;
    int want = query_value(req, "n", n, sizeof(n)) ? atoi(n) : 2;
    if (!park(req)) return;
    int waiting = 0;
    for (int i = 0; i < MAX_PARKED; i++) waiting += at_gate(&srv.parked[i]);
    if (waiting < want) return;
    for (int i = MAX_PARKED - 1; i >= 0; i--)
        if (at_gate(&srv.parked[i])) unpark(&srv.parked[i], 200);
}

static void on_stop(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what, (void)arg;
    event_base_loopbreak(srv.base);
}

static void *serve(void *arg) {
    (void)arg;
    event_base_dispatch(srv.base);
    return NULL;
}

static int server_start(void) {
    for (size_t i = 0; i < sizeof(big); i++) big[i] = (char)('a' + (i * 7 + i / 1024) % 26);
    srv.base = event_base_new();
    srv.http = evhttp_new(srv.base);
    evhttp_set_allowed_methods(srv.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
                                             EVHTTP_REQ_PATCH | EVHTTP_REQ_DELETE);
    static const struct {
        const char *path;
        void (*cb)(struct evhttp_request *, void *);
    } routes[] = {
        { "/ok", on_ok },     { "/empty", on_empty },     { "/big", on_big },
        { "/busy", on_busy }, { "/limited", on_limited }, { "/retry", on_retry },
        { "/echo", on_echo }, { "/sum", on_sum },         { "/hang", on_hang },
        { "/slow", on_slow }, { "/gate", on_gate },
    };
    for (size_t i = 0; i < BRM_ARRAY_LEN(routes); i++)
        evhttp_set_cb(srv.http, routes[i].path, routes[i].cb, NULL);
    struct evhttp_bound_socket *bound = evhttp_bind_socket_with_handle(srv.http, "127.0.0.1", 0);
    if (!bound || pipe(srv.stop) != 0) return -1;
    struct sockaddr_in sin;
    socklen_t len = sizeof(sin);
    getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&sin, &len);
    srv.port = ntohs(sin.sin_port);
    srv.stop_ev = event_new(srv.base, srv.stop[0], EV_READ, on_stop, NULL);
    event_add(srv.stop_ev, NULL);
    return pthread_create(&srv.thread, NULL, serve, NULL) == 0 ? 0 : -1;
}

static void server_stop(void) {
    CHECK_INT(write(srv.stop[1], "x", 1), 1);
    pthread_join(srv.thread, NULL);
    evhttp_free(srv.http); /* closes what is parked: the close callbacks run */
    for (int i = 0; i < MAX_PARKED; i++) CHECK(srv.parked[i].req == NULL);
    event_free(srv.stop_ev);
    event_base_free(srv.base);
    close(srv.stop[0]);
    close(srv.stop[1]);
}

/* ---- the client ------------------------------------------------------------- */

static struct event_base *base;
static struct brm_transfers *transfers;

/* What one transfer's callback saw. */
struct outcome {
    int calls;
    int status, failed, config_error;
    char error[CURL_ERROR_SIZE + 64];
    char *answer; /* a copy */
    size_t answer_len;
    int terminated; /* answer[answer_len] was '\0' */
    double retry_after;
    uint64_t at_ms;
    struct brm_transfer *cancel[4]; /* transfers to cancel from the callback */
    const char *then_url;           /* a transfer to start from the callback */
    struct outcome *then;
};

static int done_count;

static void on_done(void *arg, const struct brm_transfer_result *r);

static struct brm_transfer *start_full(const struct brm_transfer_request *req, struct outcome *o) {
    memset(o, 0, sizeof(*o));
    return brm_transfer_start(transfers, req, on_done, o);
}

static struct brm_transfer *start(const char *method, const char *url, struct outcome *o) {
    struct brm_transfer_request req = { .method = method, .url = url, .timeout = 5 };
    return start_full(&req, o);
}

static void on_done(void *arg, const struct brm_transfer_result *r) {
    struct outcome *o = arg;
    o->calls++;
    done_count++;
    o->status = r->status;
    o->failed = r->failed;
    o->config_error = r->config_error;
    snprintf(o->error, sizeof(o->error), "%s", r->error ? r->error : "");
    if (r->failed) CHECK(r->error != NULL && r->error[0]);
    if (!r->failed) CHECK(r->error == NULL);
    CHECK(r->answer != NULL);
    free(o->answer);
    o->answer = r->answer ? brm_xstrndup(r->answer, r->answer_len) : NULL;
    o->answer_len = r->answer_len;
    o->terminated = r->answer && r->answer[r->answer_len] == '\0';
    o->retry_after = r->retry_after;
    o->at_ms = brm_time_mono_ms();
    for (int i = 0; i < 4; i++) brm_transfer_cancel(o->cancel[i]);
    if (o->then_url) {
        struct outcome *then = o->then;
        CHECK(start("GET", o->then_url, then) != NULL);
    }
}

static void tick(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what, (void)arg;
}

/* Runs the client's loop until WANT more callbacks ran or SECS passed;
 * returns 1 when they did. */
static int run_until(int want, double secs) {
    int goal = done_count + want;
    uint64_t end = brm_time_mono_ms() + (uint64_t)(secs * 1000);
    while (done_count < goal && brm_time_mono_ms() < end) event_base_loop(base, EVLOOP_ONCE);
    return done_count >= goal;
}

static void run_for(double secs) {
    run_until(1000000, secs);
}

static char *url(const char *path) {
    return brm_xasprintf("http://127.0.0.1:%d%s", srv.port, path);
}

/* Starts a GET of PATH and runs until it ends. */
static void get(const char *path, struct outcome *o) {
    char *u = url(path);
    CHECK(start("GET", u, o) != NULL);
    CHECK(run_until(1, 5));
    CHECK_INT(o->calls, 1);
    free(u);
}

static void reset(struct outcome *o) {
    free(o->answer);
    o->answer = NULL;
}

/* ---- the cases ------------------------------------------------------------- */

static void check_answers(void) {
    struct outcome o;
    get("/ok", &o);
    CHECK_INT(o.status, 200);
    CHECK(!o.failed && !o.config_error);
    CHECK_STR(o.answer, "hello");
    CHECK_INT(o.answer_len, 5);
    CHECK(o.terminated);
    CHECK(o.retry_after == 0);
    reset(&o);

    get("/empty", &o);
    CHECK_INT(o.status, 204);
    CHECK(!o.failed);
    CHECK_STR(o.answer, "");
    CHECK_INT(o.answer_len, 0);
    CHECK(o.terminated);
    reset(&o);

    /* the first 64 KB of a 100 KB answer, NUL-terminated */
    get("/big", &o);
    CHECK_INT(o.status, 202);
    CHECK(!o.failed);
    CHECK_INT(o.answer_len, BRM_TRANSFER_MAX_ANSWER);
    CHECK_INT(o.answer_len, 65536);
    CHECK(o.terminated);
    CHECK(o.answer && memcmp(o.answer, big, BRM_TRANSFER_MAX_ANSWER) == 0);
    reset(&o);

    /* a status that is not 2xx is no failure of the transfer */
    get("/busy", &o);
    CHECK_INT(o.status, 500);
    CHECK(!o.failed && !o.config_error);
    CHECK_STR(o.answer, "down");
    CHECK(o.retry_after == 7);
    reset(&o);

    get("/limited", &o);
    CHECK_INT(o.status, 429);
    CHECK(!o.failed);
    CHECK_STR(o.answer, "slow down");
    CHECK(o.retry_after > 28 && o.retry_after <= 30.5);
    if (!(o.retry_after > 28 && o.retry_after <= 30.5))
        fprintf(stderr, "  retry_after %.3f\n", o.retry_after);
    reset(&o);

    get("/nowhere", &o); /* evhttp's own 404 */
    CHECK_INT(o.status, 404);
    CHECK(!o.failed);
    reset(&o);
}

static void check_retry_after(void) {
    static const struct {
        const char *query;
        double want;
    } cases[] = {
        { "", 0 },
        { "?v=0", 0 },
        { "?v=1.5", 1.5 },
        { "?v=%2012%20", 12 },
        { "?v=-5", 0 },
        { "?v=soon", 0 },
        { "?v=999999999", 86400 },                           /* a day at most */
        { "?v=Sun,%2006%20Nov%201994%2008:49:37%20GMT", 0 }, /* passed */
        { "?v=Sun%20Nov%20%206%2008:49:37%201994", 0 },      /* asctime, passed */
        { "?v=9&name=retry-after", 9 },
        { "?v=9&name=RETRY-AFTER", 9 },
        { "?v=9&name=Retry-After-Not", 0 },
        { "?v=9&name=X-Retry-After", 0 },
    };
    for (size_t i = 0; i < BRM_ARRAY_LEN(cases); i++) {
        struct outcome o;
        char *path = brm_xasprintf("/retry%s", cases[i].query);
        get(path, &o);
        CHECK_INT(o.status, 503);
        CHECK(o.retry_after == cases[i].want);
        if (o.retry_after != cases[i].want)
            fprintf(stderr, "  %s: retry_after %.3f, want %.3f\n", path, o.retry_after,
                    cases[i].want);
        free(path);
        reset(&o);
    }
    /* a date some time ahead, in the RFC 850 form */
    char date[96], day[16], mon[8], *path;
    time_t when = time(NULL) + 100;
    struct tm tm;
    gmtime_r(&when, &tm);
    strftime(day, sizeof(day), "%A", &tm);
    strftime(mon, sizeof(mon), "%b", &tm);
    snprintf(date, sizeof(date), "%s,%%20%02d-%s-%02d%%20%02d:%02d:%02d%%20GMT", day, tm.tm_mday,
             mon, tm.tm_year % 100, tm.tm_hour, tm.tm_min, tm.tm_sec);
    path = brm_xasprintf("/retry?v=%s", date);
    struct outcome o;
    get(path, &o);
    CHECK(o.retry_after > 98 && o.retry_after <= 100.5);
    free(path);
    reset(&o);
}

static void check_failures(void) {
    struct outcome o;
    /* a server that never answers: the transfer's timeout */
    char *u = url("/hang");
    struct brm_transfer_request req = { .method = "GET", .url = u, .timeout = 0.3 };
    uint64_t t0 = brm_time_mono_ms();
    int hung = srv.hung;
    CHECK(start_full(&req, &o) != NULL);
    CHECK(run_until(1, 5));
    uint64_t took = o.at_ms - t0;
    CHECK(took >= 250 && took < 3000);
    CHECK_INT(srv.hung, hung + 1);
    CHECK(o.failed && !o.config_error);
    CHECK_INT(o.status, 0);
    CHECK_HAS(o.error, "timed out");
    CHECK_INT(o.answer_len, 0);
    CHECK_STR(o.answer, "");
    free(u);
    reset(&o);

    /* a closed port: refused, worth retrying */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof(sin);
    CHECK(bind(s, (struct sockaddr *)&sin, sizeof(sin)) == 0);
    CHECK(getsockname(s, (struct sockaddr *)&sin, &len) == 0);
    close(s);
    u = brm_xasprintf("http://127.0.0.1:%d/ok", ntohs(sin.sin_port));
    CHECK(start("POST", u, &o) != NULL);
    CHECK(run_until(1, 5));
    CHECK(o.failed && !o.config_error);
    CHECK_INT(o.status, 0);
    CHECK_HAS(o.error, "onnect");
    free(u);
    reset(&o);

    /* in the config: a URL that is no URL, a scheme other than http(s) */
    static const char *const bad[] = {
        "http://exa mple.com/",  "http://127.0.0.1:99999/", "",
        "ftp://127.0.0.1/x",     "file:///etc/passwd",      "gopher://127.0.0.1/",
        "telnet://127.0.0.1:1/", "nosuch://127.0.0.1/",     "dict://127.0.0.1/x",
    };
    for (size_t i = 0; i < BRM_ARRAY_LEN(bad); i++) {
        CHECK(start("GET", bad[i], &o) != NULL);
        CHECK(run_until(1, 5));
        CHECK(o.failed && o.config_error);
        if (!o.config_error) fprintf(stderr, "  %s: %s\n", bad[i], o.error);
        CHECK_INT(o.status, 0);
        CHECK_INT(o.answer_len, 0); /* nothing of /etc/passwd */
        reset(&o);
    }
    CHECK(start("GET", "ftp://127.0.0.1/x", &o) != NULL);
    CHECK(run_until(1, 5));
    CHECK_HAS(o.error, "ftp");
    reset(&o);
}

/* ---- TLS: a certificate no CA signed ---------------------------------------- */

static struct {
    SSL_CTX *ctx;
    int fd, port;
    pthread_t thread;
    int accepted, handshake; /* a connection came; SSL_accept's result */
} tls;

/* A server context with a self-signed certificate for 127.0.0.1. */
static SSL_CTX *self_signed(void) {
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *cert = X509_new();
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
    X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
    X509_set_pubkey(cert, key);
    X509_NAME *name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"127.0.0.1", -1, -1,
                               0);
    X509_set_issuer_name(cert, name);
    X509_sign(cert, key, EVP_sha256());
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    CHECK(key && ctx && SSL_CTX_use_certificate(ctx, cert) == 1 &&
          SSL_CTX_use_PrivateKey(ctx, key) == 1);
    X509_free(cert);
    EVP_PKEY_free(key);
    return ctx;
}

/* Takes one connection (for 5 s at most) and tries the handshake. */
static void *tls_serve(void *arg) {
    (void)arg;
    struct pollfd p = { .fd = tls.fd, .events = POLLIN };
    if (poll(&p, 1, 5000) != 1) return NULL;
    int c = accept(tls.fd, NULL, NULL);
    if (c < 0) return NULL;
    tls.accepted = 1;
    struct timeval tv = { 5, 0 };
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    SSL *ssl = SSL_new(tls.ctx);
    SSL_set_fd(ssl, c);
    tls.handshake = SSL_accept(ssl);
    SSL_free(ssl);
    close(c);
    return NULL;
}

static void check_tls(void) {
    struct outcome o;
    tls.ctx = self_signed();
    tls.fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof(sin);
    CHECK(bind(tls.fd, (struct sockaddr *)&sin, sizeof(sin)) == 0 && listen(tls.fd, 4) == 0 &&
          getsockname(tls.fd, (struct sockaddr *)&sin, &len) == 0);
    CHECK(pthread_create(&tls.thread, NULL, tls_serve, NULL) == 0);
    /* the certificate is checked: refusing it is a config error */
    char *u = brm_xasprintf("https://127.0.0.1:%d/ok", ntohs(sin.sin_port));
    CHECK(start("GET", u, &o) != NULL);
    CHECK(run_until(1, 5));
    pthread_join(tls.thread, NULL);
    CHECK(tls.accepted);
    CHECK(tls.handshake != 1);
    CHECK(o.failed && o.config_error);
    CHECK_INT(o.status, 0);
    CHECK_HAS(o.error, "certificate");
    reset(&o);
    free(u);
    close(tls.fd);
    SSL_CTX_free(tls.ctx);
    /* TLS to a server that speaks plain HTTP: a failure, retried (a
     * handshake can fail for reasons that pass) */
    u = brm_xasprintf("https://127.0.0.1:%d/ok", srv.port);
    CHECK(start("GET", u, &o) != NULL);
    CHECK(run_until(1, 5));
    CHECK(o.failed && !o.config_error);
    CHECK_INT(o.status, 0);
    reset(&o);
    free(u);
}

/* The header line NAME: ... of an echo, or NULL. */
static const char *echoed(const char *answer, const char *line) {
    const char *end = strstr(answer, "\n\n");
    for (const char *p = strchr(answer, '\n'); p && p < end; p = strchr(p + 1, '\n'))
        if (strncmp(p + 1, line, strlen(line)) == 0) return p + 1;
    return NULL;
}

static void check_requests(void) {
    static const char body[] = "{\"a\":1}\0\x01\xff binary\r\n\r\nend";
    const char *headers[] = { "Content-Type: application/json", "X-Spaced: a  b c",
                              "Authorization: Bearer t0k" };
    char *u = url("/echo?q=1");
    char *length = brm_xasprintf("Content-Length: %zu\n", sizeof(body) - 1);
    static const char *const methods[] = { "POST", "PUT", "PATCH" };
    for (size_t m = 0; m < BRM_ARRAY_LEN(methods); m++) {
        struct outcome o;
        struct brm_transfer_request req = { methods[m], u, body, sizeof(body) - 1,
                                            headers,    3, NULL, 5 };
        CHECK(start_full(&req, &o) != NULL);
        CHECK(run_until(1, 5));
        CHECK_INT(o.status, 200);
        char *first = brm_xasprintf("%s /echo?q=1\n", methods[m]);
        CHECK(o.answer && strncmp(o.answer, first, strlen(first)) == 0);
        free(first);
        const char *a = o.answer ? o.answer : "";
        CHECK(echoed(a, "Content-Type: application/json\n") != NULL);
        CHECK(echoed(a, "X-Spaced: a  b c\n") != NULL);
        CHECK(echoed(a, "Authorization: Bearer t0k\n") != NULL);
        CHECK(echoed(a, length) != NULL);
        CHECK(echoed(a, "User-Agent: brume/") != NULL);
        CHECK(echoed(a, "Expect:") == NULL);
        CHECK(echoed(a, "Host: 127.0.0.1:") != NULL);
        const char *sep = strstr(a, "\n\n");
        CHECK(sep && o.answer_len - (size_t)(sep + 2 - a) == sizeof(body) - 1 &&
              memcmp(sep + 2, body, sizeof(body) - 1) == 0);
        reset(&o);
    }
    free(length);
    /* no body: an empty one; a GET sends none even when given one */
    struct outcome o;
    struct brm_transfer_request req = { "DELETE", u, NULL, 0, NULL, 0, NULL, 5 };
    CHECK(start_full(&req, &o) != NULL);
    CHECK(run_until(1, 5));
    CHECK(o.answer && strncmp(o.answer, "DELETE /echo?q=1\n", 17) == 0);
    CHECK(o.answer && echoed(o.answer, "Content-Length: 0\n") != NULL);
    CHECK(o.answer && o.answer_len >= 2 && strcmp(o.answer + o.answer_len - 2, "\n\n") == 0);
    reset(&o);
    req = (struct brm_transfer_request){ "GET", u, body, sizeof(body) - 1, headers, 1, NULL, 5 };
    CHECK(start_full(&req, &o) != NULL);
    CHECK(run_until(1, 5));
    CHECK(o.answer && strncmp(o.answer, "GET /echo?q=1\n", 14) == 0);
    CHECK(o.answer && echoed(o.answer, "Content-Length:") == NULL);
    CHECK(o.answer && strcmp(o.answer + o.answer_len - 2, "\n\n") == 0);
    reset(&o);
    free(u);

    /* a body far larger than an answer goes whole, at once (no "Expect:
     * 100-continue" to wait for) */
    size_t n = 1200 * 1024; /* past where libcurl would ask "Expect: 100-continue" */
    char *large = brm_xmalloc(n);
    for (size_t i = 0; i < n; i++) large[i] = (char)(i * 31 % 256);
    u = url("/sum");
    req = (struct brm_transfer_request){ "POST", u, large, n, NULL, 0, NULL, 5 };
    CHECK(start_full(&req, &o) != NULL);
    free(large); /* the request is copied */
    large = brm_xmalloc(n);
    for (size_t i = 0; i < n; i++) large[i] = (char)(i * 31 % 256);
    CHECK(run_until(1, 5));
    char want[64];
    snprintf(want, sizeof(want), "len=%zu fnv=%016llx expect=", n,
             (unsigned long long)fnv1a((unsigned char *)large, n));
    CHECK_STR(o.answer, want);
    reset(&o);
    free(large);
    free(u);
}

/* A target's proxy, and the environment's: an absolute URI reaches the
 * server in the test, which no name lookup happens for. */
static void check_proxy(void) {
    struct outcome o;
    char *proxy = brm_xasprintf("http://127.0.0.1:%d", srv.port);
    struct brm_transfer_request req = {
        "GET", "http://brume-test.localhost:1/echo", NULL, 0, NULL, 0, proxy, 5
    };
    CHECK(start_full(&req, &o) != NULL);
    CHECK(run_until(1, 5));
    CHECK_INT(o.status, 200);
    CHECK(o.answer && strncmp(o.answer, "GET http://brume-test.localhost:1/echo\n", 39) == 0);
    reset(&o);
    setenv("http_proxy", proxy, 1);
    req.proxy = NULL;
    CHECK(start_full(&req, &o) != NULL);
    CHECK(run_until(1, 5));
    CHECK_INT(o.status, 200);
    CHECK(o.answer && strncmp(o.answer, "GET http://brume-test.localhost:1/echo\n", 39) == 0);
    unsetenv("http_proxy");
    reset(&o);
    free(proxy);
}

static void check_in_flight(void) {
    /* four at once: the gate answers only when all four wait */
    struct outcome o[4];
    char *u[4];
    for (int i = 0; i < 4; i++) {
        u[i] = brm_xasprintf("http://127.0.0.1:%d/gate?n=4&id=g%d", srv.port, i);
        CHECK(start("GET", u[i], &o[i]) != NULL);
    }
    CHECK(run_until(4, 5));
    for (int i = 0; i < 4; i++) {
        char id[8];
        snprintf(id, sizeof(id), "g%d", i);
        CHECK_INT(o[i].calls, 1);
        CHECK_INT(o[i].status, 200);
        CHECK_STR(o[i].answer, id);
        reset(&o[i]);
    }
    for (int i = 0; i < 4; i++) free(u[i]);
    /* one started from a callback, as a plan's next step is */
    struct outcome first, second;
    char *ok = url("/ok"), *echo = url("/echo");
    CHECK(start("GET", ok, &first) != NULL);
    first.then_url = echo;
    first.then = &second;
    CHECK(run_until(2, 5));
    CHECK_INT(first.calls, 1);
    CHECK_INT(second.calls, 1);
    CHECK_INT(second.status, 200);
    CHECK(second.answer && strncmp(second.answer, "GET /echo\n", 10) == 0);
    CHECK(second.at_ms >= first.at_ms);
    reset(&first);
    reset(&second);
    free(ok);
    free(echo);
}

static void check_cancel(void) {
    struct outcome a, b, c;
    char *slow = url("/slow?ms=300&id=s");
    /* cancelled before the loop ever ran, and cancelled in flight */
    CHECK(start("GET", slow, &a) != NULL);
    struct brm_transfer *xb = start("GET", slow, &b);
    struct brm_transfer *xc = start("GET", slow, &c);
    CHECK(xb && xc);
    int asked = srv.requests;
    brm_transfer_cancel(xc);
    uint64_t end = brm_time_mono_ms() + 5000;
    while (srv.requests < asked + 2 && brm_time_mono_ms() < end) event_base_loop(base, EVLOOP_ONCE);
    CHECK_INT(srv.requests, asked + 2); /* a and b wait at the server; c never left */
    CHECK_INT(a.calls + b.calls + c.calls, 0);
    brm_transfer_cancel(xb);
    CHECK(run_until(1, 5));
    CHECK_INT(a.calls, 1);
    CHECK_INT(a.status, 200);
    CHECK_STR(a.answer, "s");
    run_for(0.4); /* past when the others would have ended */
    CHECK_INT(b.calls, 0);
    CHECK_INT(c.calls, 0);
    CHECK_INT(srv.requests, asked + 2);
    brm_transfer_cancel(NULL);
    reset(&a);

    /* cancelled from another's callback, with its answer there already:
     * the gate answers all three at once */
    struct outcome g[3];
    struct brm_transfer *x[3];
    char *u[3];
    for (int i = 0; i < 3; i++) {
        u[i] = brm_xasprintf("http://127.0.0.1:%d/gate?n=3&id=g%d", srv.port, i);
        x[i] = start("GET", u[i], &g[i]);
        CHECK(x[i] != NULL);
    }
    /* whichever ends first cancels the other two */
    for (int i = 0; i < 3; i++)
        for (int j = 0, k = 0; j < 3; j++)
            if (j != i) g[i].cancel[k++] = x[j];
    int before = done_count;
    CHECK(run_until(1, 5));
    run_for(0.3); /* and no other */
    CHECK_INT(done_count - before, 1);
    CHECK_INT(g[0].calls + g[1].calls + g[2].calls, 1);
    for (int i = 0; i < 3; i++) {
        if (g[i].calls) CHECK_INT(g[i].status, 200);
        reset(&g[i]);
        free(u[i]);
    }
    free(slow);
}

/* Freed with transfers in flight: no callback, and no event left on the
 * base (a base of its own, so that only the loop's ticker is on it). */
static void check_free_in_flight(void) {
    struct event_base *saved_base = base;
    struct brm_transfers *saved = transfers;
    base = event_base_new();
    struct timeval tv = { 0, 20000 };
    struct event *ticker = event_new(base, -1, EV_PERSIST, tick, NULL);
    event_add(ticker, &tv);
    transfers = brm_transfers_new(base);
    struct outcome o[3];
    char *hang = url("/hang"), *slow = url("/slow?ms=3000&id=late");
    int asked = srv.requests;
    CHECK(start("GET", hang, &o[0]) != NULL);
    CHECK(start("GET", hang, &o[1]) != NULL);
    CHECK(start("GET", slow, &o[2]) != NULL);
    uint64_t end = brm_time_mono_ms() + 5000;
    while (srv.requests < asked + 3 && brm_time_mono_ms() < end) event_base_loop(base, EVLOOP_ONCE);
    CHECK_INT(srv.requests, asked + 3); /* all three asked, and wait */
    CHECK(event_base_get_num_events(base, EVENT_BASE_COUNT_ADDED) > 1);
    brm_transfers_free(transfers);
    CHECK_INT(event_base_get_num_events(base, EVENT_BASE_COUNT_ADDED), 1);
    run_for(0.1);
    for (int i = 0; i < 3; i++) CHECK_INT(o[i].calls, 0);
    brm_transfers_free(NULL);
    event_free(ticker);
    event_base_free(base);
    base = saved_base;
    transfers = saved;
    free(hang);
    free(slow);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    static const char *const proxies[] = { "http_proxy", "https_proxy", "HTTPS_PROXY", "all_proxy",
                                           "ALL_PROXY",  "no_proxy",    "NO_PROXY" };
    for (size_t i = 0; i < BRM_ARRAY_LEN(proxies); i++) unsetenv(proxies[i]);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (server_start() != 0) {
        fprintf(stderr, "cannot start the test server\n");
        return 1;
    }
    base = event_base_new();
    struct timeval tv = { 0, 20000 };
    struct event *ticker = event_new(base, -1, EV_PERSIST, tick, NULL);
    event_add(ticker, &tv); /* the loop wakes up to look at the clock */
    transfers = brm_transfers_new(base);
    check_answers();
    check_retry_after();
    check_failures();
    check_requests();
    check_proxy();
    check_tls();
    check_in_flight();
    check_cancel();
    check_free_in_flight();
    brm_transfers_free(transfers);
    event_free(ticker);
    event_base_free(base);
    server_stop();
    curl_global_cleanup();
    return test_done();
}
