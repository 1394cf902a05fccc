/* http: the request parser, keep-alive, pipelining, chunked bodies, early
 * refusals, deferred answers and timeouts, driven in-process over
 * socketpairs; the accept path and the connection cap over loopback. */
#include "../../core/http.c"

#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>

#include "test.h"

static struct event_base *base;
static struct brm_http *h;
static struct brm_http_req *parked; /* a request the async route answers later */

static void echo(void *arg, struct brm_http_req *req) {
    (void)arg;
    char *body = brm_xasprintf("%.*s %.*s", (int)req->path_len, req->path, (int)req->body_len,
                               req->body ? req->body : "");
    brm_http_respond(req, 200, NULL, body, strlen(body), "X-Test: yes\r\n");
    free(body);
}

static void park(void *arg, struct brm_http_req *req) {
    (void)arg;
    parked = req;
}

static int needs_sig(void *arg, const struct brm_http_req *req, const char **reason) {
    (void)arg;
    if (brm_http_header(req, "x-sig", NULL)) return 0;
    if (brm_http_header(req, "x-bad-sig", NULL)) *reason = "bad signature";
    return 401;
}

/* The clients of check_one_wake_a_pass, and how many of them had an answer
 * to read while a handler ran. */
static int probes[3], answered_meanwhile;

static void probe(void *arg, struct brm_http_req *req) {
    for (size_t i = 0; i < BRM_ARRAY_LEN(probes); i++) {
        struct pollfd p = { .fd = probes[i], .events = POLLIN };
        answered_meanwhile += poll(&p, 1, 0) == 1;
    }
    echo(arg, req);
}

static const struct brm_http_route routes[] = {
    { "/mist", "mist", BRM_HTTP_POST, 1000, needs_sig, echo, NULL },
    { "/open", "open", BRM_HTTP_POST, 100000, NULL, echo, NULL },
    { "/get", "get", BRM_HTTP_GET, 0, NULL, echo, NULL },
    { "/async", "async", BRM_HTTP_POST, 1000, NULL, park, NULL },
    { "/probe", "probe", BRM_HTTP_POST, 1000, NULL, probe, NULL },
};

/* Runs the loop briefly: enough for a round trip over a socketpair. */
static void pump(int ms) {
    for (int i = 0; i < ms; i++) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        usleep(1000);
    }
}

static int client(void) {
    int sv[2];
    CHECK_INT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    struct sockaddr_storage ss = { .ss_family = AF_UNIX };
    new_conn(h, sv[0], &ss, NULL);
    atomic_fetch_add(h->opts.connections, 1);
    return sv[1];
}

static void send_all(int fd, const char *s, size_t n) {
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w > 0)
            s += w, n -= (size_t)w;
        else
            pump(1);
    }
}

/* Everything the server wrote back so far; "" if nothing. *CLOSED tells
 * whether it closed its end. */
static const char *receive(int fd, int *closed) {
    static char buf[65536];
    size_t len = 0;
    *closed = 0;
    pump(20);
    for (;;) {
        ssize_t r = read(fd, buf + len, sizeof(buf) - 1 - len);
        if (r > 0) {
            len += (size_t)r;
            continue;
        }
        if (r == 0 || (r < 0 && errno != EAGAIN)) *closed = 1;
        break;
    }
    buf[len] = '\0';
    return buf;
}

static const char *exchange(int fd, const char *req, int *closed) {
    send_all(fd, req, strlen(req));
    return receive(fd, closed);
}

static int count_of(const char *hay, const char *needle) {
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p++) n++;
    return n;
}

static void check_basics(void) {
    int closed, fd = client();
    const char *r = exchange(fd,
                             "POST /mist HTTP/1.1\r\nHost: x\r\nX-Sig: 1\r\n"
                             "Content-Length: 5\r\n\r\nhello",
                             &closed);
    CHECK_HAS(r, "HTTP/1.1 200 OK\r\n");
    CHECK_HAS(r, "\r\nDate: ");
    CHECK_HAS(r, "\r\nContent-Length: 11\r\n");
    CHECK_HAS(r, "\r\nX-Test: yes\r\n");
    CHECK(strstr(r, "Connection: close") == NULL);
    CHECK_HAS(r, "\r\n\r\n/mist hello");
    CHECK(!closed);
    /* Keep-alive: the next request on the same connection. */
    r = exchange(fd, "POST /open?x=1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", &closed);
    CHECK_HAS(r, "\r\n\r\n/open abc");
    /* Pipelining: two requests in one write, answered in order. */
    r = exchange(fd,
                 "POST /open HTTP/1.1\r\nContent-Length: 1\r\n\r\n1"
                 "POST /open HTTP/1.1\r\nContent-Length: 1\r\n\r\n2",
                 &closed);
    CHECK_INT(count_of(r, "HTTP/1.1 200"), 2);
    CHECK(strstr(r, "/open 1") && strstr(r, "/open 2") &&
          strstr(r, "/open 1") < strstr(r, "/open 2"));
    /* A request that arrives a byte at a time. */
    const char *slow = "POST /open HTTP/1.1\r\nContent-Length: 4\r\n\r\nslow";
    for (const char *p = slow; *p; p++) {
        send_all(fd, p, 1);
        pump(1);
    }
    r = receive(fd, &closed);
    CHECK_HAS(r, "/open slow");
    /* Bare LF line ends. */
    r = exchange(fd, "POST /open HTTP/1.1\nContent-Length: 2\n\nlf", &closed);
    CHECK_HAS(r, "/open lf");
    /* Empty lines between requests are skipped. */
    r = exchange(fd, "\r\n\r\nGET /get HTTP/1.1\r\n\r\n", &closed);
    CHECK_HAS(r, "200 OK");
    r = exchange(fd, "POST /open HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                 &closed);
    CHECK_HAS(r, "Connection: close\r\n");
    CHECK(closed);
    close(fd);
}

static void check_refusals(void) {
    static const struct {
        const char *req, *status;
        int closes;
    } cases[] = {
        { "GET /nope HTTP/1.1\r\n\r\n", "404 Not Found", 0 },
        { "GET /mist HTTP/1.1\r\n\r\n", "405 Method Not Allowed", 0 },
        { "get /get HTTP/1.1\r\n\r\n", "405", 0 },
        { "POST /mist HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi", "401 Unauthorized", 0 },
        { "POST /mist HTTP/1.1\r\nContent-Length: 200\r\n\r\nhi", "401", 1 },
        { "POST /mist HTTP/1.1\r\nX-Sig: 1\r\nContent-Length: 1001\r\n\r\n", "413", 1 },
        { "POST /mist HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", "400",
          1 },
        { "POST /mist HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "501", 1 },
        { "POST /mist HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "400", 1 },
        { "POST /mist HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "400", 1 },
        { "POST /mist HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", "400", 1 },
        { "POST /mist HTTP/1.1\r\nExpect: 200-ok\r\n\r\n", "417", 1 },
        { "POST /mist HTTP/2.0\r\n\r\n", "505", 1 },
        { "POST /mist\r\n\r\n", "400", 1 },
        { "POST  /mist HTTP/1.1\r\n\r\n", "400", 1 },
        { "P(ST /mist HTTP/1.1\r\n\r\n", "400", 1 },
        { "POST /mist HTTP/1.1\r\nNo colon here\r\n\r\n", "400", 1 },
        { "POST /mist HTTP/1.1\r\nBad Name: x\r\n\r\n", "400", 1 },
        { "POST /mist HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n", "400", 1 },
        { "POST /mist HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "400", 1 },
        { "POST /open HTTP/1.1\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n", "400", 1 },
        { "POST /mist HTTP/1.1\r\nX-Bad-Sig: 1\r\nContent-Length: 0\r\n\r\n",
          "401 Unauthorized\r\n", 0 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int closed, fd = client();
        const char *r = exchange(fd, cases[i].req, &closed);
        char want[64];
        snprintf(want, sizeof(want), "HTTP/1.1 %s", cases[i].status);
        if (!strstr(r, want)) fprintf(stderr, "case %zu: %s\n", i, r);
        CHECK_HAS(r, want);
        CHECK_INT(closed, cases[i].closes);
        close(fd);
    }
    /* A NUL in a header value is refused too; the hook's reason is the body. */
    static const char nul[] = "POST /open HTTP/1.1\r\nX-A: a\0b\r\nContent-Length: 0\r\n\r\n";
    int closed, fd = client();
    send_all(fd, nul, sizeof(nul) - 1);
    const char *r = receive(fd, &closed);
    CHECK_HAS(r, "HTTP/1.1 400 ");
    CHECK(closed);
    close(fd);
    fd = client();
    r = exchange(fd, "POST /mist HTTP/1.1\r\nX-Bad-Sig: 1\r\nContent-Length: 0\r\n\r\n", &closed);
    CHECK_HAS(r, "\r\n\r\nbad signature\n");
    r = exchange(fd, "POST /mist HTTP/1.1\r\nContent-Length: 0\r\n\r\n", &closed);
    CHECK_HAS(r, "\r\n\r\nUnauthorized\n"); /* no reason given: the reason phrase */
    close(fd);

    /* 405 says what is allowed; HEAD gets no body. */
    fd = client();
    r = exchange(fd, "GET /mist HTTP/1.1\r\n\r\n", &closed);
    CHECK_HAS(r, "Allow: POST\r\n");
    r = exchange(fd, "HEAD /mist HTTP/1.1\r\n\r\n", &closed);
    CHECK_HAS(r, "405");
    CHECK(strstr(r, "method not allowed") == NULL);
    close(fd);

    /* Too many header fields, and a head too large. */
    struct brm_buf b;
    brm_buf_init(&b);
    brm_buf_puts(&b, "POST /open HTTP/1.1\r\n");
    for (int i = 0; i < 70; i++) brm_buf_printf(&b, "X-%d: %d\r\n", i, i);
    brm_buf_puts(&b, "\r\n");
    fd = client();
    CHECK_HAS(exchange(fd, b.data, &closed), "431");
    CHECK(closed);
    close(fd);
    b.len = 0;
    brm_buf_puts(&b, "POST /open HTTP/1.1\r\nX-Big: ");
    for (int i = 0; i < 20000; i++) brm_buf_puts(&b, "a");
    fd = client();
    CHECK_HAS(exchange(fd, b.data, &closed), "431");
    CHECK(closed);
    close(fd);
    brm_buf_reset(&b);
}

static void check_bodies(void) {
    int closed, fd = client();
    const char *r = exchange(fd,
                             "POST /open HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                             "5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nworld!\r\n0\r\nTrailer: x\r\n\r\n",
                             &closed);
    CHECK_HAS(r, "/open hello world!");
    CHECK(!closed);
    /* The connection goes on after a chunked body. */
    r = exchange(fd, "POST /open HTTP/1.1\r\nContent-Length: 2\r\n\r\nok", &closed);
    CHECK_HAS(r, "/open ok");
    close(fd);

    fd = client();
    r = exchange(fd,
                 "POST /mist HTTP/1.1\r\nX-Sig: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "400\r\n",
                 &closed);
    CHECK_HAS(r, "413");
    CHECK(closed);
    close(fd);
    fd = client();
    r = exchange(fd, "POST /open HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", &closed);
    CHECK_HAS(r, "400");
    close(fd);
    fd = client();
    r = exchange(fd, "POST /open HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
                 &closed);
    CHECK_HAS(r, "400");
    close(fd);

    /* A body larger than the first buffer, sent in pieces. */
    struct brm_buf b;
    brm_buf_init(&b);
    brm_buf_printf(&b, "POST /open HTTP/1.1\r\nContent-Length: 50000\r\n\r\n");
    for (int i = 0; i < 50000; i++) brm_buf_append(&b, i % 2 ? "b" : "a", 1);
    fd = client();
    for (size_t off = 0; off < b.len; off += 7000) {
        send_all(fd, b.data + off, b.len - off < 7000 ? b.len - off : 7000);
        pump(2);
    }
    r = receive(fd, &closed);
    CHECK_HAS(r, "200 OK");
    CHECK_HAS(r, "Content-Length: 50006");
    close(fd);
    brm_buf_reset(&b);

    /* Expect: 100-continue gets the interim answer before the body. */
    fd = client();
    r = exchange(fd, "POST /open HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
                 &closed);
    CHECK_STR(r, "HTTP/1.1 100 Continue\r\n\r\n");
    r = exchange(fd, "abc", &closed);
    CHECK_HAS(r, "200 OK");
    CHECK_HAS(r, "/open abc");
    /* ... but not when the request is refused from its head. */
    r = exchange(fd, "POST /mist HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
                 &closed);
    CHECK(strstr(r, "100 Continue") == NULL);
    CHECK_HAS(r, "401");
    close(fd);
}

/* Sends a head for a body of LEN bytes and the body's first 10 bytes. */
static int start_body(size_t len) {
    int fd = client();
    char head[128];
    int n = snprintf(head, sizeof(head), "POST /open HTTP/1.1\r\nContent-Length: %zu\r\n\r\n", len);
    send_all(fd, head, (size_t)n);
    send_all(fd, "0123456789", 10);
    return fd;
}

/* Bodies still coming hold their buffers against a cap all connections
 * share; past it the request is answered 503 and the connection closed. */
static void check_unverified_cap(void) {
    h->opts.max_unverified = 20000; /* two initial buffers fit, not three */
    int closed;
    int a = start_body(50000), b = start_body(5000);
    pump(10);
    CHECK_INT(atomic_load(h->opts.unverified), 2 * INITIAL_BUFFER);
    int c = start_body(50000);
    const char *r = receive(c, &closed);
    CHECK_HAS(r, "HTTP/1.1 503 Service Unavailable\r\n");
    CHECK_HAS(r, "Retry-After: 1\r\n");
    CHECK_HAS(r, "too many bodies in progress");
    CHECK(closed);
    close(c);
    /* A's buffer would have to grow past the cap for the rest of its body. */
    struct brm_buf body;
    brm_buf_init(&body);
    for (int i = 0; i < 20000; i++) brm_buf_append(&body, "x", 1);
    send_all(a, body.data, body.len);
    r = receive(a, &closed);
    CHECK_HAS(r, "HTTP/1.1 503 ");
    close(a);
    pump(10);
    CHECK_INT(atomic_load(h->opts.unverified), INITIAL_BUFFER); /* B's */
    /* B fits in its buffer: it completes, and holds nothing any more. */
    send_all(b, body.data, 4990);
    r = receive(b, &closed);
    CHECK_HAS(r, "HTTP/1.1 200 OK");
    CHECK(!closed);
    CHECK_INT(atomic_load(h->opts.unverified), 0);
    /* A body that comes with its head never waits, so never counts. */
    h->opts.max_unverified = 1;
    r = exchange(b, "POST /open HTTP/1.1\r\nContent-Length: 2\r\n\r\nok", &closed);
    CHECK_HAS(r, "/open ok");
    close(b);
    brm_buf_reset(&body);
    h->opts.max_unverified = 0;
    pump(5);
    CHECK_INT(atomic_load(h->opts.unverified), 0);
}

static void check_versions(void) {
    int closed, fd = client();
    const char *r = exchange(fd, "GET /get HTTP/1.0\r\n\r\n", &closed);
    CHECK_HAS(r, "HTTP/1.1 200");
    CHECK_HAS(r, "Connection: close");
    CHECK(closed);
    close(fd);
    fd = client();
    r = exchange(fd, "GET /get HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &closed);
    CHECK_HAS(r, "Connection: keep-alive");
    CHECK(!closed);
    close(fd);
}

static void check_deferred(void) {
    int closed, fd = client();
    const char *r = exchange(fd,
                             "POST /async HTTP/1.1\r\nContent-Length: 1\r\n\r\na"
                             "POST /open HTTP/1.1\r\nContent-Length: 1\r\n\r\nb",
                             &closed);
    /* Nothing yet: the first answer is held, the second waits behind it. */
    CHECK_STR(r, "");
    CHECK(parked != NULL);
    if (parked) {
        CHECK_INT(parked->body_len, 1);
        brm_http_respond(parked, 202, NULL, "later", 5, NULL);
        parked = NULL;
    }
    r = receive(fd, &closed);
    CHECK_HAS(r, "202 Accepted");
    CHECK_HAS(r, "/open b");
    CHECK(strstr(r, "202") < strstr(r, "/open b"));
    close(fd);

    /* The client leaves while the answer is held: answering is harmless. */
    fd = client();
    exchange(fd, "POST /async HTTP/1.1\r\nContent-Length: 1\r\n\r\nc", &closed);
    CHECK(parked != NULL);
    close(fd);
    pump(5);
    if (parked) brm_http_respond(parked, 200, NULL, "x", 1, NULL);
    parked = NULL;
    pump(5);
}

/* Requests ready in one pass of the event loop are all handled before any
 * answer is written: a client is woken once for them. A client that shuts
 * its side after asking still gets its answer. */
static void check_one_wake_a_pass(void) {
    static const char ask[] = "POST /probe HTTP/1.1\r\nContent-Length: 1\r\n\r\np";
    for (size_t i = 0; i < BRM_ARRAY_LEN(probes); i++) {
        probes[i] = client();
        send_all(probes[i], ask, sizeof(ask) - 1);
    }
    shutdown(probes[1], SHUT_WR);
    answered_meanwhile = 0;
    for (size_t i = 0; i < BRM_ARRAY_LEN(probes); i++) {
        int closed;
        const char *r = receive(probes[i], &closed);
        CHECK_HAS(r, "HTTP/1.1 200 OK\r\n");
        CHECK_HAS(r, "/probe p");
        CHECK(closed == (i == 1)); /* the one that shut its side is closed after its answer */
    }
    CHECK_INT(answered_meanwhile, 0);
    for (size_t i = 0; i < BRM_ARRAY_LEN(probes); i++) close(probes[i]);
    pump(5);
}

/* An answer made once the loop is over (bodies committed as a drain ended)
 * is written when the server goes, not lost. Frees H. */
static void check_answers_left_at_free(void) {
    int closed, fd = client();
    exchange(fd, "POST /async HTTP/1.1\r\nContent-Length: 1\r\n\r\nz", &closed);
    CHECK(parked != NULL);
    if (parked) brm_http_respond(parked, 200, NULL, "stored", 6, NULL);
    parked = NULL;
    brm_http_free(h); /* no pass of the loop in between */
    h = NULL;
    char buf[512] = "";
    ssize_t r = read(fd, buf, sizeof(buf) - 1);
    if (r > 0) buf[r] = '\0';
    CHECK_HAS(buf, "HTTP/1.1 200 OK\r\n");
    CHECK_HAS(buf, "\r\n\r\nstored");
    close(fd);
}

static void check_timeouts(void) {
    int closed, fd = client();
    send_all(fd, "POST /open HTTP/1.1\r\nContent-", 29);
    pump(600); /* header_timeout is 0.2s; the sweep runs every 250ms */
    const char *r = receive(fd, &closed);
    CHECK_HAS(r, "408 Request Timeout");
    CHECK(closed);
    close(fd);
    fd = client();
    send_all(fd, "POST /open HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc", 47);
    pump(600);
    r = receive(fd, &closed);
    CHECK_HAS(r, "408");
    CHECK(closed);
    close(fd);
    /* An idle connection is closed without a word. */
    fd = client();
    pump(900); /* idle_timeout is 0.5s */
    r = receive(fd, &closed);
    CHECK_STR(r, "");
    CHECK(closed);
    close(fd);
}

static void check_listener(void) {
    struct brm_err err;
    int port = 0;
    int lfd = brm_http_listen("127.0.0.1:0", 0, &port, &err);
    CHECK(lfd >= 0 && port > 0);
    brm_http_add_listener(h, lfd, NULL);
    long before = atomic_load(h->opts.connections);
    /* The cap is before + 1: the first connection gets in, the second is told 503. */
    h->opts.max_connections = before + 1;
    int c[2];
    const char *r;
    int closed;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    for (int i = 0; i < 2; i++) {
        c[i] = socket(AF_INET, SOCK_STREAM, 0);
        CHECK_INT(connect(c[i], (struct sockaddr *)&a, sizeof(a)), 0);
        fcntl(c[i], F_SETFL, O_NONBLOCK);
        pump(10);
    }
    r = exchange(c[0], "GET /get HTTP/1.1\r\n\r\n", &closed);
    CHECK_HAS(r, "200 OK");
    r = receive(c[1], &closed);
    CHECK_HAS(r, "503 Service Unavailable");
    CHECK_HAS(r, "Retry-After: 1");
    CHECK(closed);
    close(c[0]);
    close(c[1]);
    pump(10);
    h->opts.max_connections = 1000;
    /* Draining closes the listener: new connections are refused. */
    brm_http_drain(h);
    int d = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(connect(d, (struct sockaddr *)&a, sizeof(a)) < 0);
    close(d);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN); /* as brume does: a write to a closed peer fails, not kills */
    base = event_base_new();
    struct brm_http_opts o = {
        .header_timeout = 0.2, .body_timeout = 0.2, .idle_timeout = 0.5, .max_connections = 1000
    };
    h = brm_http_new(base, &o, routes, sizeof(routes) / sizeof(routes[0]));
    check_basics();
    check_refusals();
    check_bodies();
    check_unverified_cap();
    check_versions();
    check_deferred();
    check_one_wake_a_pass();
    check_timeouts();
    check_listener();
    CHECK_STR(brm_http_reason(413), "Content Too Large");
    CHECK_STR(brm_http_reason(299), "Unknown");
    check_answers_left_at_free();
    event_base_free(base);
    return test_done();
}
