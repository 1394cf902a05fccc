#define _GNU_SOURCE
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "tls.h"

#define INITIAL_BUFFER 8192 /* a 10-event Mist batch and its head fit in one read */
#define SHRINK_ABOVE   65536
#define SWEEP_MS       250
#define ACCEPT_BATCH   64
#define LINGER_MS      2000 /* how long unread input is drained before a close */

/* C_LINGER: answered and closing; what the client still sends is read and
 * dropped, so that its unread bytes do not turn the close into a reset
 * that destroys the answer before the client reads it (nginx's
 * lingering_close). */
enum state { C_IDLE, C_HEAD, C_BODY, C_HANDLING, C_WRITING, C_LINGER };

struct conn {
    struct brm_http *h;
    struct conn *prev, *next;
    int fd;
    struct event rev, wev;
    int reading; /* rev is added */
    enum state state;
    char *buf;
    size_t len, cap;
    size_t scan;     /* head: bytes already searched for its end */
    size_t head_len; /* request line and headers */
    /* The parsed head holds offsets into buf: buf moves when it grows, so
     * the request's pointers are made from them only when it is final. */
    struct brm_wire_head head;
    struct brm_wire_chunked chunks; /* a chunked body's decoding, from buf + head_len */
    size_t consumed;                /* bytes the finished request took from buf */
    size_t held;                    /* bytes counted against opts.max_unverified */
    int close_after, peer_closed, in_process, dead;
    int linger;            /* the answer came before all of the request was read */
    uint64_t deadline;     /* monotonic ms; 0: none */
    struct routes *routes; /* the table req.route is in, while there is one */
    struct brm_buf out;    /* what is still to be written, from out_off */
    size_t out_off;
    struct brm_tls_conn *tls; /* NULL: plain HTTP */
    int handshaking;
    int read_wants_write; /* a TLS read waits for the socket to be writable */
    int write_wants_read; /* ...a TLS write for it to be readable */
    struct brm_http_req req;
    char peer[64];
};

/* Statuses counted apart; the rest count as "other". */
static const int counted_statuses[] = { 200, 202, 204, 400, 401, 403, 404, 405, 408,
                                        411, 413, 417, 422, 431, 500, 501, 503, 505 };
#define NSTATUS (BRM_ARRAY_LEN(counted_statuses) + 1)

struct route_rt {
    struct brm_http_route r; /* its path and label are the table's own copies */
    struct brm_counter *by_status[NSTATUS];
};

/* A route table. A reload puts in another; a request keeps the table it
 * was routed by until it is answered. */
struct routes {
    int refs;
    size_t n;
    struct route_rt v[];
};

struct listener {
    struct brm_http *h;
    int fd;
    struct event *ev;
    struct brm_tls *tls; /* a reference, or NULL: plain HTTP */
};

struct brm_http {
    struct event_base *base;
    struct brm_http_opts opts;
    _Atomic long own_connections;
    _Atomic size_t own_unverified;
    struct routes *routes;
    struct route_rt none; /* requests no route took: 404, 400 ... */
    struct listener *listeners;
    size_t nlisteners;
    struct event *sweep, *resume;
    struct conn *conns;
    size_t nconns;
    int draining;
    char date[64]; /* "Date: ...\r\n", refreshed by the sweep */
    time_t date_sec;
};

static int process(struct conn *c);
static void conn_close(struct conn *c);

static const struct {
    int status;
    const char *reason;
} reasons[] = {
    { 100, "Continue" },
    { 200, "OK" },
    { 202, "Accepted" },
    { 204, "No Content" },
    { 400, "Bad Request" },
    { 401, "Unauthorized" },
    { 403, "Forbidden" },
    { 404, "Not Found" },
    { 405, "Method Not Allowed" },
    { 408, "Request Timeout" },
    { 411, "Length Required" },
    { 413, "Content Too Large" },
    { 417, "Expectation Failed" },
    { 422, "Unprocessable Content" },
    { 431, "Request Header Fields Too Large" },
    { 500, "Internal Server Error" },
    { 501, "Not Implemented" },
    { 503, "Service Unavailable" },
    { 505, "HTTP Version Not Supported" },
};

const char *brm_http_reason(int status) {
    for (size_t i = 0; i < BRM_ARRAY_LEN(reasons); i++)
        if (reasons[i].status == status) return reasons[i].reason;
    return "Unknown";
}

static uint64_t now_ms(void) {
    return brm_time_mono_ms();
}

static uint64_t after(double seconds) {
    return now_ms() + (uint64_t)(seconds * 1000);
}

static void count(struct route_rt *rt, int status) {
    size_t i = 0;
    while (i < BRM_ARRAY_LEN(counted_statuses) && counted_statuses[i] != status) i++;
    if (!rt->by_status[i]) {
        char s[16];
        snprintf(s, sizeof(s), "%d", status);
        rt->by_status[i] = brm_metrics_counter(
            "brume_http_requests_total", "HTTP requests answered, by route and status.", "route",
            rt->r.label, "status", i < NSTATUS - 1 ? s : "other", NULL);
    }
    brm_counter_add(rt->by_status[i], 1);
}

static void refresh_date(struct brm_http *h) {
    time_t t = time(NULL);
    if (t == h->date_sec) return;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(h->date, sizeof(h->date), "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
    h->date_sec = t;
}

const char *brm_http_header(const struct brm_http_req *req, const char *name, size_t *len) {
    size_t n = strlen(name);
    for (size_t i = 0; i < req->nheaders; i++) {
        const struct brm_http_header *hd = &req->headers[i];
        if (hd->name_len == n && strncasecmp(hd->name, name, n) == 0) {
            if (len) *len = hd->value_len;
            return hd->value;
        }
    }
    return NULL;
}

/* ---- connections -------------------------------------------------------- */

static void reading(struct conn *c, int on) {
    if (on == c->reading || c->fd < 0) return;
    if (on)
        event_add(&c->rev, NULL);
    else
        event_del(&c->rev);
    c->reading = on;
    /* Bytes OpenSSL decrypted already raise no readable event. */
    if (on && c->tls && brm_tls_pending(c->tls)) event_active(&c->rev, EV_READ, 0);
}

static struct routes *new_routes(const struct brm_http_route *routes, size_t n) {
    struct routes *t = brm_xcalloc(1, sizeof(*t) + n * sizeof(t->v[0]));
    t->refs = 1;
    t->n = n;
    for (size_t i = 0; i < n; i++) {
        t->v[i].r = routes[i];
        t->v[i].r.path = brm_xstrdup(routes[i].path);
        t->v[i].r.label = brm_xstrdup(routes[i].label);
    }
    return t;
}

static void release_routes(struct routes *t) {
    if (!t || --t->refs > 0) return;
    for (size_t i = 0; i < t->n; i++) {
        free((char *)t->v[i].r.path);
        free((char *)t->v[i].r.label);
    }
    free(t);
}

/* Counts BYTES of the buffer of a connection waiting for a body against
 * the cap shared by every server (what it counted already included).
 * Unsigned clients must not make brume hold more than the cap: 0 when
 * BYTES would pass it, and nothing is counted. */
static int hold(struct conn *c, size_t bytes) {
    _Atomic size_t *all = c->h->opts.unverified;
    if (!c->h->opts.max_unverified || bytes <= c->held) return 1;
    size_t more = bytes - c->held;
    if (atomic_fetch_add(all, more) + more > c->h->opts.max_unverified) {
        atomic_fetch_sub(all, more);
        return 0;
    }
    c->held = bytes;
    return 1;
}

/* The body is complete, refused or gone: it no longer counts. */
static void release(struct conn *c) {
    if (!c->held) return;
    atomic_fetch_sub(c->h->opts.unverified, c->held);
    c->held = 0;
}

static void conn_free(struct conn *c) {
    release_routes(c->routes);
    free(c->buf);
    brm_buf_reset(&c->out);
    free(c);
}

static void conn_close(struct conn *c) {
    struct brm_http *h = c->h;
    release(c);
    if (c->fd >= 0) {
        event_del(&c->rev);
        event_del(&c->wev);
        brm_tls_conn_free(c->tls);
        c->tls = NULL;
        close(c->fd);
        c->fd = -1;
        if (c->prev)
            c->prev->next = c->next;
        else
            h->conns = c->next;
        if (c->next) c->next->prev = c->prev;
        h->nconns--;
        atomic_fetch_sub(h->opts.connections, 1);
    }
    if (c->state == C_HANDLING) {
        /* The handler still holds the request: free when it answers. */
        c->peer_closed = 1;
        return;
    }
    if (c->in_process)
        c->dead = 1; /* process() frees it on its way out */
    else
        conn_free(c);
}

/* Makes room for N more bytes, up to a buffer of LIMIT. 1: done; 0: full;
 * -1: a buffer waiting for a body would pass the cap on those. */
static int grow(struct conn *c, size_t n, size_t limit) {
    if (c->len + n <= c->cap) return 1;
    size_t cap = c->cap ? c->cap : INITIAL_BUFFER;
    while (cap < c->len + n) cap *= 2;
    if (cap > limit) cap = limit;
    if (cap <= c->cap) return 0;
    if (c->state == C_BODY && !hold(c, cap)) return -1;
    c->buf = brm_xrealloc(c->buf, cap);
    c->cap = cap;
    return 1;
}

static void reset_request(struct conn *c) {
    release_routes(c->routes);
    c->routes = NULL;
    c->scan = c->head_len = c->consumed = 0;
    memset(&c->head, 0, sizeof(c->head));
    memset(&c->chunks, 0, sizeof(c->chunks));
    memset(&c->req, 0, sizeof(c->req));
    c->req.conn = c;
    c->req.peer = c->peer;
}

/* The request is answered and written: keep the connection for the next
 * one (moving any pipelined bytes to the front), or close it. Returns 0
 * when the connection is gone. */
static int request_done(struct conn *c) {
    if (c->close_after || c->h->draining) {
        if (c->linger && !c->h->draining) {
            shutdown(c->fd, SHUT_WR); /* the answer is out: FIN after it */
            c->state = C_LINGER;
            c->len = 0;
            c->deadline = now_ms() + LINGER_MS;
            reading(c, 1);
            return 0;
        }
        conn_close(c);
        return 0;
    }
    size_t left = c->len - c->consumed;
    if (left) memmove(c->buf, c->buf + c->consumed, left);
    c->len = left;
    if (!left && c->cap > SHRINK_ABOVE) {
        free(c->buf);
        c->buf = NULL;
        c->cap = 0;
    }
    reset_request(c);
    c->state = C_IDLE;
    c->deadline = after(c->h->opts.idle_timeout);
    reading(c, 1);
    return 1;
}

/* Writes what c->out holds. 1: all of it; 0: the rest waits for the socket
 * (the write event is on, or for TLS maybe the read event); -1: the
 * connection failed (the caller closes it). */
static int flush_out(struct conn *c) {
    while (c->out_off < c->out.len) {
        const char *p = c->out.data + c->out_off;
        size_t n = c->out.len - c->out_off, w;
        if (c->tls) {
            enum brm_tls_io io;
            w = brm_tls_write(c->tls, p, n, &io);
            if (io == BRM_TLS_WANT_READ) { /* a key update, read first */
                c->write_wants_read = 1;
                event_del(&c->wev);
                reading(c, 1); /* even with a full buffer: on_read writes first */
                return 0;
            }
            if (io == BRM_TLS_WANT_WRITE) break;
            if (io != BRM_TLS_OK) return -1;
        } else {
            ssize_t r = write(c->fd, p, n);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0 && errno == EAGAIN) break;
            if (r <= 0) return -1;
            w = (size_t)r;
        }
        c->out_off += w;
    }
    if (c->out_off < c->out.len) {
        event_add(&c->wev, NULL);
        return 0;
    }
    event_del(&c->wev);
    c->out.len = c->out_off = 0;
    if (c->out.cap > SHRINK_ABOVE) brm_buf_reset(&c->out);
    return 1;
}

/* Moves a TLS handshake on. 1: done; 0: waiting; -1: failed and closed. */
static int handshake(struct conn *c) {
    switch (brm_tls_handshake(c->tls)) {
    case BRM_TLS_OK:
        c->handshaking = 0;
        event_del(&c->wev);
        c->deadline = after(c->h->opts.idle_timeout);
        return 1;
    case BRM_TLS_WANT_READ: event_del(&c->wev); return 0;
    case BRM_TLS_WANT_WRITE: event_add(&c->wev, NULL); return 0;
    default:
        if (brm_log_enabled(BRM_LOG_DEBUG)) {
            char why[256];
            brm_log_debug("TLS handshake failed", "peer", c->peer, "error",
                          brm_tls_error(why, sizeof(why)));
        }
        conn_close(c);
        return -1;
    }
}

static void on_read(evutil_socket_t fd, short what, void *arg);

static void on_write(evutil_socket_t fd, short what, void *arg) {
    struct conn *c = arg;
    (void)what;
    if (c->handshaking) {
        if (handshake(c) == 1) on_read(fd, EV_READ, c); /* what came with it */
        return;
    }
    if (c->read_wants_write) {
        c->read_wants_write = 0;
        if (c->out_off == c->out.len) event_del(&c->wev);
        on_read(fd, EV_READ, c);
        return;
    }
    int rc = flush_out(c);
    if (rc < 0) {
        conn_close(c);
        return;
    }
    /* An interim "100 Continue" may have been what was waiting. */
    if (rc == 1 && c->state == C_WRITING && request_done(c)) process(c);
}

void brm_http_respond(struct brm_http_req *req, int status, const char *content_type,
                      const char *body, size_t len, const char *extra_headers) {
    struct conn *c = req->conn;
    struct brm_http *h = c->h;
    struct route_rt *rt = req->route ? (struct route_rt *)req->route : &h->none;
    count(rt, status);
    if (c->peer_closed) { /* closed while the handler had it */
        if (c->in_process)
            c->dead = 1;
        else
            conn_free(c);
        return;
    }
    c->state = C_WRITING;
    int closing = c->close_after || !c->head.keepalive || h->draining;
    char head[1024];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\n%sContent-Type: %s\r\nContent-Length: %zu\r\n%s%s\r\n",
                     status, brm_http_reason(status), h->date,
                     content_type ? content_type : "text/plain; charset=utf-8", len,
                     closing          ? "Connection: close\r\n"
                     : c->head.http10 ? "Connection: keep-alive\r\n"
                                      : "",
                     extra_headers ? extra_headers : "");
    if (n < 0 || (size_t)n >= sizeof(head)) n = (int)strlen(head);
    if (req->method == BRM_HTTP_HEAD) len = 0;
    c->close_after = closing;
    brm_buf_append(&c->out, head, (size_t)n);
    if (len) brm_buf_append(&c->out, body, len);
    c->deadline = after(h->opts.body_timeout);
    if (!c->tls) {
        /* Written once this pass of the event loop has run what was ready
         * (on_write), with the other answers it made, as Redis writes its
         * replies before it sleeps: the client is woken once for them, not
         * once for each. At 10 events a body, a client on another CPU
         * woken for every answer cost the worker 9 us a request. */
        event_active(&c->wev, EV_WRITE, 1);
        return;
    }
    int rc = flush_out(c);
    if (rc < 0) {
        conn_close(c);
    } else if (rc == 1) {
        if (request_done(c) && !c->in_process) process(c);
    }
}

/* Answers from the head alone (an error before the body). The connection
 * survives only when the whole body is already here to be skipped. */
static void reply_early(struct conn *c, int status, const char *msg, const char *extra) {
    release(c);
    if (!c->head.chunked && c->head_len && c->len - c->head_len >= c->head.content_length)
        c->consumed = c->head_len + (size_t)c->head.content_length;
    else
        c->close_after = 1;
    c->linger = c->close_after;
    c->state = C_HANDLING;
    char body[256];
    int n = snprintf(body, sizeof(body), "%s\n", msg);
    brm_http_respond(&c->req, status, NULL, body, (size_t)n, extra);
}

/* ---- requests ----------------------------------------------------------- */

static void refuse_unverified(struct conn *c) {
    c->close_after = 1;
    reply_early(c, 503, "too many bodies in progress", "Retry-After: 1\r\n");
}

/* Points the request's path and headers into buf as it is now. */
static void materialize(struct conn *c) {
    c->req.path = c->buf + c->head.path;
    c->req.path_len = c->head.path_len;
    c->req.query = NULL;
    c->req.query_len = 0;
    const char *end = c->req.path + c->req.path_len; /* the target ends at a space (wire) */
    if (*end == '?') {
        const char *sp = memchr(end, ' ', (size_t)(c->buf + c->head_len - end));
        c->req.query = end + 1;
        c->req.query_len = sp ? (size_t)(sp - end - 1) : 0;
    }
    c->req.nheaders = c->head.nfields;
    for (size_t i = 0; i < c->head.nfields; i++) {
        const struct brm_wire_field *f = &c->head.fields[i];
        struct brm_http_header *hd = &c->req.headers[i];
        hd->name = c->buf + f->name;
        hd->name_len = f->name_len;
        hd->value = c->buf + f->value;
        hd->value_len = f->value_len;
    }
}

static const struct route_rt *find_route(const struct brm_http *h, const struct brm_http_req *r) {
    for (size_t i = 0; i < h->routes->n; i++) {
        const char *p = h->routes->v[i].r.path;
        if (strlen(p) == r->path_len && memcmp(p, r->path, r->path_len) == 0)
            return &h->routes->v[i];
    }
    return NULL;
}

static void allow_header(unsigned methods, char *out, size_t size) {
    snprintf(out, size, "Allow: %s%s%s\r\n", methods & BRM_HTTP_GET ? "GET" : "",
             (methods & BRM_HTTP_GET) && (methods & BRM_HTTP_POST) ? ", " : "",
             methods & BRM_HTTP_POST ? "POST" : "");
}

/* The head is complete: route it, check it, and get ready for the body. */
static void start_request(struct conn *c) {
    struct brm_http *h = c->h;
    int status = brm_wire_parse_head(c->buf, c->head_len, &c->head);
    c->req.method = (enum brm_http_method)c->head.method;
    if (status) {
        c->close_after = 1;
        reply_early(c, status, status == 431 ? "too many header fields" : "malformed request",
                    NULL);
        return;
    }
    materialize(c);
    const struct route_rt *rt = find_route(h, &c->req);
    if (!rt) {
        reply_early(c, 404, "no such path", NULL);
        return;
    }
    c->req.route = &rt->r;
    c->routes = h->routes;
    c->routes->refs++;
    if (!(rt->r.methods & c->req.method)) {
        char allow[64];
        allow_header(rt->r.methods, allow, sizeof(allow));
        reply_early(c, 405, "method not allowed", allow);
        return;
    }
    if (!c->head.chunked && c->head.content_length > rt->r.max_body) {
        c->close_after = 1; /* not reading a body that large, not even to skip it */
        char msg[96];
        snprintf(msg, sizeof(msg), "body larger than %llu bytes",
                 (unsigned long long)rt->r.max_body);
        reply_early(c, 413, msg, NULL);
        return;
    }
    const char *why = NULL;
    if (rt->r.check_head && (status = rt->r.check_head(rt->r.arg, &c->req, &why)) != 0) {
        reply_early(c, status, why ? why : brm_http_reason(status), NULL);
        return;
    }
    /* The buffer grows as the body arrives, not to Content-Length at once:
     * an unauthenticated client must send bytes to make us hold bytes. */
    if (c->head.expect_continue &&
        (c->head.chunked || c->len - c->head_len < c->head.content_length)) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        if (c->tls) {
            brm_buf_append(&c->out, cont, sizeof(cont) - 1); /* TLS writes go through out */
            if (flush_out(c) < 0) {
                conn_close(c);
                return;
            }
        } else if (write(c->fd, cont, sizeof(cont) - 1) < 0) { /* the body's read will tell */
        }
    }
    c->state = C_BODY;
    c->deadline = after(h->opts.body_timeout);
}

/* 1: the body is complete (req.body set); 0: need more; -1: refused. */
static int body_ready(struct conn *c) {
    if (!c->head.chunked) {
        if (c->len - c->head_len < c->head.content_length) return 0;
        c->req.body = c->buf + c->head_len;
        c->req.body_len = (size_t)c->head.content_length;
        c->consumed = c->head_len + (size_t)c->head.content_length;
        return 1;
    }
    size_t len = c->len - c->head_len;
    enum brm_wire_status st =
        brm_wire_chunked(&c->chunks, c->buf + c->head_len, &len, c->req.route->max_body);
    c->len = c->head_len + len;
    switch (st) {
    case BRM_WIRE_MORE: return 0;
    case BRM_WIRE_DONE:
        c->req.body = c->buf + c->head_len;
        c->req.body_len = c->chunks.out;
        c->consumed = c->head_len + c->chunks.in;
        return 1;
    case BRM_WIRE_TOO_LARGE:
        c->close_after = 1;
        reply_early(c, 413, "body too large", NULL);
        return -1;
    default:
        c->close_after = 1;
        reply_early(c, 400, "bad chunk framing", NULL);
        return -1;
    }
}

/* How large the buffer may grow in the connection's state. */
static size_t buffer_limit(const struct conn *c) {
    switch (c->state) {
    case C_IDLE:
    case C_HEAD: return c->cap > BRM_WIRE_MAX_HEAD ? c->cap : BRM_WIRE_MAX_HEAD;
    case C_BODY:
        if (c->head.chunked) return c->head_len + (size_t)c->req.route->max_body + 65536;
        return c->head_len + (size_t)c->head.content_length;
    default: return c->cap; /* the handler has the buffer: no growing under it */
    }
}

/* Moves the connection along as far as the bytes in its buffer allow. */
static int process(struct conn *c) {
    struct brm_http *h = c->h;
    c->in_process = 1;
    while (!c->dead && c->fd >= 0) {
        if (c->state == C_IDLE) {
            size_t skip = brm_wire_skip_blank(c->buf, c->len);
            if (skip) {
                memmove(c->buf, c->buf + skip, c->len - skip);
                c->len -= skip;
            }
            if (c->len == 0) break;
            c->state = C_HEAD;
            c->deadline = after(h->opts.header_timeout);
            c->req.received_at = brm_time_now();
        }
        if (c->state == C_HEAD) {
            enum brm_wire_status st = brm_wire_head_end(c->buf, c->len, &c->scan, &c->head_len);
            if (st == BRM_WIRE_TOO_LARGE) {
                c->close_after = 1;
                reply_early(c, 431, "request head too large", NULL);
                continue;
            }
            if (st == BRM_WIRE_MORE) break;
            start_request(c);
            continue;
        }
        if (c->state == C_BODY) {
            int rc = body_ready(c);
            if (rc < 0) continue;
            if (rc == 0) {
                if (c->len >= buffer_limit(c)) { /* chunked framing past the cap */
                    c->close_after = 1;
                    reply_early(c, 413, "body too large", NULL);
                    continue;
                }
                if (!hold(c, c->cap)) { /* waiting for the rest holds the buffer */
                    refuse_unverified(c);
                    continue;
                }
                break;
            }
            release(c);
            c->state = C_HANDLING;
            c->deadline = 0;
            materialize(c); /* the buffer may have moved while the body came */
            c->req.route->handle(c->req.route->arg, &c->req);
            continue;
        }
        break; /* C_HANDLING, C_WRITING: waiting for the handler or the socket */
    }
    c->in_process = 0;
    if (!c->dead) return 1;
    conn_free(c);
    return 0;
}

/* Reads what the socket (or OpenSSL) has into the buffer: > 0 bytes, 0 at
 * the end of the stream, -1 when it would block (or failed: *FAILED). */
static ssize_t conn_read(struct conn *c, int *failed) {
    *failed = 0;
    if (!c->tls) {
        ssize_t r = read(c->fd, c->buf + c->len, c->cap - c->len);
        if (r < 0 && errno != EAGAIN && errno != EINTR) *failed = 1;
        return r < 0 ? -1 : r;
    }
    enum brm_tls_io io;
    size_t n = brm_tls_read(c->tls, c->buf + c->len, c->cap - c->len, &io);
    if (n) return (ssize_t)n;
    switch (io) {
    case BRM_TLS_WANT_WRITE: /* a handshake message to send first */
        c->read_wants_write = 1;
        event_add(&c->wev, NULL);
        return -1;
    case BRM_TLS_WANT_READ: return -1;
    case BRM_TLS_CLOSED: return 0;
    default: *failed = 1; return -1;
    }
}

static void on_read(evutil_socket_t fd, short what, void *arg) {
    struct conn *c = arg;
    (void)what;
    if (c->state == C_LINGER) {
        char sink[16384]; /* closing: TLS or not, the bytes go unread */
        ssize_t r = read(fd, sink, sizeof(sink));
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) conn_close(c);
        return;
    }
    if (c->handshaking && handshake(c) != 1) return;
    if (c->write_wants_read) {
        c->write_wants_read = 0;
        on_write(fd, EV_WRITE, c);
        return;
    }
    do {
        int room = c->len < c->cap ? 1 : grow(c, 4096, buffer_limit(c));
        if (room < 0) {
            refuse_unverified(c);
            return;
        }
        if (room == 0) {
            reading(c, 0); /* a pipelining client waits until we catch up */
            return;
        }
        int failed;
        ssize_t r = conn_read(c, &failed);
        if (r < 0 && !failed) return;
        if (r <= 0) {
            if (c->state == C_HANDLING || c->state == C_WRITING) {
                reading(c, 0); /* answer what was asked; it goes nowhere, then close */
                c->close_after = 1;
                return;
            }
            conn_close(c);
            return;
        }
        c->len += (size_t)r;
        /* OpenSSL may hold more decrypted bytes than one read took. */
    } while (process(c) && c->fd >= 0 && c->tls && c->reading && brm_tls_pending(c->tls));
}
static void new_conn(struct brm_http *h, int fd, const struct sockaddr_storage *ss,
                     struct brm_tls *tls) {
    struct conn *c = brm_xcalloc(1, sizeof(*c));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->h = h;
    c->fd = fd;
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
        port = ntohs(a->sin_port);
        snprintf(c->peer, sizeof(c->peer), "%s:%d", host, port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
        port = ntohs(a->sin6_port);
        snprintf(c->peer, sizeof(c->peer), "[%s]:%d", host, port);
    } else {
        snprintf(c->peer, sizeof(c->peer), "unix");
    }
    reset_request(c);
    c->state = C_IDLE;
    c->deadline = after(h->opts.idle_timeout);
    if (tls) {
        if (!(c->tls = brm_tls_accept(tls, fd))) {
            close(fd);
            atomic_fetch_sub(h->opts.connections, 1);
            free(c);
            return;
        }
        c->handshaking = 1;
        c->deadline = after(h->opts.header_timeout); /* a slow handshake is a slow head */
    }
    event_assign(&c->rev, h->base, fd, EV_READ | EV_PERSIST, on_read, c);
    event_assign(&c->wev, h->base, fd, EV_WRITE | EV_PERSIST, on_write, c);
    c->next = h->conns;
    if (h->conns) h->conns->prev = c;
    h->conns = c;
    h->nconns++;
    reading(c, 1);
}

/* ---- listeners and timers ----------------------------------------------- */

static void pause_accepting(struct brm_http *h) {
    for (size_t i = 0; i < h->nlisteners; i++) event_del(h->listeners[i].ev);
    struct timeval one = { 1, 0 };
    event_add(h->resume, &one);
}

static void on_resume(evutil_socket_t fd, short what, void *arg) {
    struct brm_http *h = arg;
    (void)fd, (void)what;
    if (h->draining) return;
    for (size_t i = 0; i < h->nlisteners; i++) event_add(h->listeners[i].ev, NULL);
}

static void on_accept(evutil_socket_t fd, short what, void *arg) {
    struct listener *l = arg;
    struct brm_http *h = l->h;
    (void)what;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int cfd = accept4(fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* Out of descriptors: stop a second, or the readable
                 * listener would spin this loop. */
                brm_log_warn("cannot accept connections for a second", "error", strerror(errno));
                pause_accepting(h);
            }
            return;
        }
        if (atomic_fetch_add(h->opts.connections, 1) >= h->opts.max_connections) {
            atomic_fetch_sub(h->opts.connections, 1);
            static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
                                       "Connection: close\r\nContent-Length: 21\r\n\r\n"
                                       "too many connections\n";
            /* Over TLS there is no answering before a handshake: just close. */
            if (!l->tls && write(cfd, busy, sizeof(busy) - 1) < 0) { /* best effort */
            }
            close(cfd);
            count(&h->none, 503);
            continue;
        }
        new_conn(h, cfd, &ss, l->tls);
    }
}

/* Enforces deadlines: idle connections close, slow requests get a 408. */
static void on_sweep(evutil_socket_t fd, short what, void *arg) {
    struct brm_http *h = arg;
    (void)fd, (void)what;
    uint64_t now = now_ms();
    refresh_date(h);
    struct conn *c = h->conns, *next;
    for (; c; c = next) {
        next = c->next;
        if (!c->deadline || now < c->deadline) continue;
        if (c->state == C_HEAD || c->state == C_BODY) {
            static const char slow[] = "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                                       "Content-Type: text/plain\r\nContent-Length: 16\r\n\r\n"
                                       "request timeout\n";
            if (c->tls) { /* best effort: whatever the socket takes now */
                enum brm_tls_io io;
                brm_tls_write(c->tls, slow, sizeof(slow) - 1, &io);
            } else if (write(c->fd, slow, sizeof(slow) - 1) < 0) { /* best effort */
            }
            count(c->req.route ? (struct route_rt *)c->req.route : &h->none, 408);
        }
        conn_close(c);
    }
}

struct brm_http *brm_http_new(struct event_base *base, const struct brm_http_opts *opts,
                              const struct brm_http_route *routes, size_t nroutes) {
    struct brm_http *h = brm_xcalloc(1, sizeof(*h));
    h->base = base;
    h->opts = *opts;
    if (!h->opts.connections) h->opts.connections = &h->own_connections;
    if (!h->opts.unverified) h->opts.unverified = &h->own_unverified;
    h->routes = new_routes(routes, nroutes);
    h->none.r.label = "";
    h->sweep = event_new(base, -1, EV_PERSIST, on_sweep, h);
    h->resume = event_new(base, -1, 0, on_resume, h);
    struct timeval tv = { 0, SWEEP_MS * 1000 };
    event_add(h->sweep, &tv);
    refresh_date(h);
    return h;
}

void brm_http_add_listener(struct brm_http *h, int fd, struct brm_tls *tls) {
    h->listeners = brm_xrealloc(h->listeners, (h->nlisteners + 1) * sizeof(*h->listeners));
    struct listener *l = &h->listeners[h->nlisteners++];
    l->h = h;
    l->fd = fd;
    l->ev = NULL;
    l->tls = tls ? brm_tls_ref(tls) : NULL;
    /* The array may have moved: point every event at its current slot. */
    for (size_t i = 0; i < h->nlisteners; i++) {
        struct listener *x = &h->listeners[i];
        if (x->ev) event_free(x->ev);
        x->ev = event_new(h->base, x->fd, EV_READ | EV_PERSIST, on_accept, x);
        if (!h->draining) event_add(x->ev, NULL);
    }
}

void brm_http_set_tls(struct brm_http *h, size_t i, struct brm_tls *tls) {
    if (i >= h->nlisteners || !h->listeners[i].tls) return;
    brm_tls_free(h->listeners[i].tls); /* its connections hold their own */
    h->listeners[i].tls = brm_tls_ref(tls);
}

static void close_listeners(struct brm_http *h) {
    for (size_t i = 0; i < h->nlisteners; i++) {
        event_free(h->listeners[i].ev);
        close(h->listeners[i].fd);
        brm_tls_free(h->listeners[i].tls);
    }
    free(h->listeners);
    h->listeners = NULL;
    h->nlisteners = 0;
}

void brm_http_set_routes(struct brm_http *h, const struct brm_http_route *routes, size_t n) {
    struct routes *old = h->routes;
    h->routes = new_routes(routes, n);
    release_routes(old);
}

void brm_http_set_opts(struct brm_http *h, const struct brm_http_opts *opts) {
    _Atomic long *shared = h->opts.connections;
    _Atomic size_t *unverified = h->opts.unverified;
    h->opts = *opts;
    h->opts.connections = shared;
    h->opts.unverified = unverified;
}

void brm_http_drain(struct brm_http *h) {
    h->draining = 1;
    close_listeners(h);
    struct conn *c = h->conns, *next;
    for (; c; c = next) {
        next = c->next;
        if ((c->state == C_IDLE && c->len == 0) || c->state == C_LINGER) conn_close(c);
    }
}

size_t brm_http_connections(const struct brm_http *h) {
    return h->nconns;
}

/* The loop is over: what a plain connection still holds to write (an
 * answer made in its last pass, or after it, for bodies committed as the
 * drain ended) goes now, as far as the socket takes it. */
static void write_what_is_left(struct conn *c) {
    while (c->fd >= 0 && !c->tls && c->out_off < c->out.len) {
        ssize_t r = write(c->fd, c->out.data + c->out_off, c->out.len - c->out_off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        c->out_off += (size_t)r;
    }
}

void brm_http_free(struct brm_http *h) {
    if (!h) return;
    close_listeners(h);
    while (h->conns) {
        struct conn *c = h->conns;
        write_what_is_left(c);
        c->state = C_IDLE; /* the server is going: no handler will answer */
        conn_close(c);
    }
    event_free(h->sweep);
    event_free(h->resume);
    release_routes(h->routes);
    free(h);
}

int brm_http_listen(const char *addr, int reuseport, int *port, struct brm_err *err) {
    char host[256], service[16];
    int p, fd = -1, one = 1;
    struct addrinfo hints = { 0 }, *ai = NULL;
    if (brm_split_addr(addr, host, sizeof(host), &p) < 0) {
        brm_err_set(err, "%s: not an address (host:port)", addr);
        return -1;
    }
    snprintf(service, sizeof(service), "%d", p);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int rc = getaddrinfo(host[0] && strcmp(host, "*") != 0 ? host : NULL, service, &hints, &ai);
    if (rc != 0) {
        brm_err_set(err, "%s: %s", addr, gai_strerror(rc));
        return -1;
    }
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) goto fail;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) goto fail;
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 1024) < 0) goto fail;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        *port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                               : ((struct sockaddr_in *)&ss)->sin_port);
    freeaddrinfo(ai);
    return fd;
fail:;
    int saved = errno;
    brm_err_set(err, "cannot listen on %s: %s", addr, strerror(saved));
    if (fd >= 0) close(fd);
    freeaddrinfo(ai);
    return -1;
}
