/*
 * http: a small HTTP/1.1 server on a libevent event_base, for webhook intake
 * and the admin endpoints. It is not evhttp, on purpose: evhttp re-arms its
 * events and timers around every request (about seven syscalls each, four of
 * them epoll_ctl), and on the virtual machines brume runs on syscalls are
 * dear. Here a keep-alive request costs one read and one writev: each
 * connection keeps one persistent read event, and the header, body and idle
 * timeouts are deadlines that one timer per server sweeps four times a
 * second.
 *
 * What it does: requests framed by wire (request line and headers, CRLF or
 * bare LF, Content-Length and chunked bodies), Expect: 100-continue,
 * keep-alive and pipelining, routing by exact path and method (404, 405), a
 * body cap per route checked before the body is read (413), a hook that can
 * refuse a request from its head alone (the 401 of an unsigned post), a
 * connection cap and a cap on the bytes held for bodies still coming, both
 * shared by all workers (503 past either), 408 on slow clients, and replies
 * held until the handler is ready (it may answer later, e.g. after a group
 * commit). It counts requests by route and status. Depends on wire,
 * libevent, tls, metrics, util.
 */
#ifndef BRM_HTTP_H
#define BRM_HTTP_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"
#include "wire.h"

struct event_base;
struct brm_tls;

enum brm_http_method {
    BRM_HTTP_GET = BRM_WIRE_GET,
    BRM_HTTP_HEAD = BRM_WIRE_HEAD,
    BRM_HTTP_POST = BRM_WIRE_POST,
    BRM_HTTP_OTHER = BRM_WIRE_OTHER,
};

#define BRM_HTTP_MAX_HEADERS BRM_WIRE_MAX_HEADERS

struct brm_http_header {
    const char *name, *value;
    size_t name_len, value_len;
};

struct brm_http_route;

/* A request, valid from its handler's call until brm_http_respond. */
struct brm_http_req {
    enum brm_http_method method;
    const char *path; /* without the query; not NUL-terminated */
    size_t path_len;
    const char *query; /* what follows the path's '?' (not NUL-terminated), or NULL */
    size_t query_len;
    struct brm_http_header headers[BRM_HTTP_MAX_HEADERS];
    size_t nheaders;
    const char *body;
    size_t body_len;
    double received_at; /* when its first byte came in */
    const char *peer;   /* "127.0.0.1:50412" */
    const struct brm_http_route *route;
    struct conn *conn;
};

/* The value of header NAME (case-insensitive), or NULL. */
const char *brm_http_header(const struct brm_http_req *req, const char *name, size_t *len);

struct brm_http_route {
    const char *path;  /* matched exactly */
    const char *label; /* for metrics and logs: the source name, "admin" */
    unsigned methods;  /* BRM_HTTP_GET | ... */
    uint64_t max_body;
    /* Optional: looks at the head before the body is read. Returns 0 to go
     * on, or the status to answer with (the body is then not read), and may
     * point *REASON at a one-line reason for the client that outlives the
     * call (the reason phrase otherwise). */
    int (*check_head)(void *arg, const struct brm_http_req *req, const char **reason);
    /* Called with the whole request; must call brm_http_respond once,
     * now or later. */
    void (*handle)(void *arg, struct brm_http_req *req);
    void *arg;
};

/*
 * Answers REQ. BODY (LEN bytes, may be NULL) is copied; EXTRA_HEADERS is
 * NULL or complete header lines ("Retry-After: 1\r\n"). After this the
 * request is gone. If the client went away meanwhile the answer is dropped.
 */
void brm_http_respond(struct brm_http_req *req, int status, const char *content_type,
                      const char *body, size_t len, const char *extra_headers);

struct brm_http_opts {
    double header_timeout, body_timeout, idle_timeout; /* seconds */
    long max_connections;
    _Atomic long *connections; /* shared by the servers the cap spans */
    /* Bytes the buffers of connections waiting for the rest of a body may
     * hold, counted in UNVERIFIED, shared like CONNECTIONS: a body is not
     * checked until it is whole, so this is what unsigned clients could pin.
     * Past it the request is answered 503 (Retry-After) and the connection
     * closed. 0: no cap. */
    size_t max_unverified;
    _Atomic size_t *unverified;
};

struct brm_http;

/* A server on BASE with a copy of ROUTES (their strings copied too). */
struct brm_http *brm_http_new(struct event_base *base, const struct brm_http_opts *opts,
                              const struct brm_http_route *routes, size_t nroutes);
/* Closes every connection and listener. */
void brm_http_free(struct brm_http *h);
/* Routes the next requests by ROUTES instead (copied); requests already
 * routed keep the table they were routed by until they are answered. */
void brm_http_set_routes(struct brm_http *h, const struct brm_http_route *routes, size_t n);
/* New timeouts and caps, for what comes next (the shared counters stay the
 * ones the server was made with). */
void brm_http_set_opts(struct brm_http *h, const struct brm_http_opts *opts);

/* Accepts on FD, a listening socket; the server owns it from now on. With
 * TLS (the server takes a reference), connections speak HTTPS. */
void brm_http_add_listener(struct brm_http *h, int fd, struct brm_tls *tls);
/* Accepts the next connections of TLS listener I (in the order they were
 * added) with TLS instead: a reload's certificate. Open ones keep theirs. */
void brm_http_set_tls(struct brm_http *h, size_t i, struct brm_tls *tls);
/* Stops accepting and closes idle connections; requests in progress are
 * answered with Connection: close. */
void brm_http_drain(struct brm_http *h);
/* Open connections. */
size_t brm_http_connections(const struct brm_http *h);

/*
 * Opens a non-blocking listening socket on ADDR ("host:port", "[v6]:port",
 * ":port"; port 0 picks one). REUSEPORT lets each worker bind its own socket
 * to the same port, the kernel spreading connections over them. Returns the
 * socket and writes the bound port to *PORT, or -1 with ERR set.
 */
int brm_http_listen(const char *addr, int reuseport, int *port, struct brm_err *err);

/* "Not Found" for 404 and so on; "Unknown" for codes it does not know. */
const char *brm_http_reason(int status);

#endif
