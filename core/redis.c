#include "redis.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "tls.h"

#define RECONNECT_WAIT 0.5 /* seconds between two attempts to connect */
#define PING_IDLE      1.0 /* seconds of quiet after which a PING checks the server */
#define READ_CHUNK     16384

/* ---- configuration ------------------------------------------------------ */

static void wipe(char *s) {
    if (s) memset(s, 0, strlen(s));
    free(s);
}

void brm_redis_cfg_reset(struct brm_redis_cfg *c) {
    free(c->host);
    free(c->user);
    wipe(c->password);
    free(c->ca);
    for (size_t i = 0; i < c->nsentinels; i++) free(c->sentinels[i]);
    free(c->master);
    memset(c, 0, sizeof(*c));
}

static char *dup_or_null(const char *s) {
    return s ? brm_xstrdup(s) : NULL;
}

void brm_redis_cfg_copy(struct brm_redis_cfg *dst, const struct brm_redis_cfg *src) {
    *dst = *src;
    dst->host = dup_or_null(src->host);
    dst->user = dup_or_null(src->user);
    dst->password = dup_or_null(src->password);
    dst->ca = dup_or_null(src->ca);
    dst->master = dup_or_null(src->master);
    for (size_t i = 0; i < src->nsentinels; i++) dst->sentinels[i] = brm_xstrdup(src->sentinels[i]);
}

static int hex_digit(char c) {
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* A copy of S[0, N) with %XX decoded, or NULL when an escape is bad or
 * decodes to NUL. */
static char *percent_decode(const char *s, size_t n) {
    char *out = brm_xmalloc(n + 1), *o = out;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            *o++ = s[i];
            continue;
        }
        int hi = i + 2 < n ? hex_digit(s[i + 1]) : -1;
        int lo = i + 2 < n ? hex_digit(s[i + 2]) : -1;
        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
            free(out);
            return NULL;
        }
        *o++ = (char)(hi * 16 + lo);
        i += 2;
    }
    *o = '\0';
    return out;
}

/* The number S[0, N) as an int in [MIN, MAX], or -1. */
static long parse_number(const char *s, size_t n, long min, long max) {
    if (n == 0 || n > 9) return -1;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v < min || v > max ? -1 : v;
}

int brm_redis_parse_url(const char *url, struct brm_redis_cfg *c, struct brm_err *err) {
    brm_redis_cfg_reset(c);
    c->port = 6379;
    c->timeout = 2;
    const char *p;
    if (strncmp(url, "redis://", 8) == 0) {
        p = url + 8;
    } else if (strncmp(url, "rediss://", 9) == 0) {
        p = url + 9;
        c->tls = 1;
    } else {
        brm_err_set(err, "redis URL: expected redis://host:port/db or rediss://... (TLS)");
        return -1;
    }
    size_t auth_end = strcspn(p, "/?#");
    const char *at = NULL;
    for (const char *q = p; q < p + auth_end; q++)
        if (*q == '@') at = q;
    if (at) { /* [[user:]password@] as redis-cli reads it */
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *pw = colon ? colon + 1 : p;
        if (colon && colon > p && !(c->user = percent_decode(p, (size_t)(colon - p))))
            goto bad_escape;
        if (at == pw) {
            brm_err_set(err, "redis URL: the password before '@' is empty");
            goto fail;
        }
        if (!(c->password = percent_decode(pw, (size_t)(at - pw)))) goto bad_escape;
        p = at + 1;
    }
    const char *host = p, *host_end;
    if (*p == '[') {
        host = p + 1;
        host_end = strchr(host, ']');
        if (!host_end) {
            brm_err_set(err, "redis URL: an IPv6 address needs its closing ']'");
            goto fail;
        }
        p = host_end + 1;
    } else {
        p += strcspn(p, ":/?#");
        host_end = p;
    }
    if (host_end == host) {
        brm_err_set(err, "redis URL: no host");
        goto fail;
    }
    c->host = brm_xstrndup(host, (size_t)(host_end - host));
    if (*p == ':') {
        size_t n = strcspn(p + 1, "/?#");
        long port = parse_number(p + 1, n, 1, 65535);
        if (port < 0) {
            brm_err_set(err, "redis URL: the port must be 1 to 65535");
            goto fail;
        }
        c->port = (int)port;
        p += 1 + n;
    }
    if (*p == '/') {
        size_t n = strcspn(p + 1, "?#");
        long db = n ? parse_number(p + 1, n, 0, 1000000) : 0;
        if (db < 0) {
            brm_err_set(err, "redis URL: the database after '/' must be a number (0 to 1000000)");
            goto fail;
        }
        c->db = (int)db;
        p += 1 + n;
    }
    if (*p) {
        brm_err_set(err, "redis URL: unexpected '%s' (options go in the state table)", p);
        goto fail;
    }
    return 0;
bad_escape:
    brm_err_set(err, "redis URL: a bad %%-escape in the user or password");
fail:
    brm_redis_cfg_reset(c);
    return -1;
}

void brm_redis_cfg_display(const struct brm_redis_cfg *c, char *out, size_t size) {
    const char *scheme = c->tls ? "rediss" : "redis";
    if (c->nsentinels)
        snprintf(out, size, "%s://sentinel:%s(%zu sentinels)/%d", scheme,
                 c->master ? c->master : "?", c->nsentinels, c->db);
    else if (c->host && strchr(c->host, ':'))
        snprintf(out, size, "%s://[%s]:%d/%d", scheme, c->host, c->port, c->db);
    else
        snprintf(out, size, "%s://%s:%d/%d", scheme, c->host ? c->host : "?", c->port, c->db);
}

void brm_redis_script_init(struct brm_redis_script *s, const char *text) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    s->text = text;
    EVP_Digest(text, strlen(text), md, &n, EVP_sha1(), NULL);
    brm_hex_encode(md, n, s->sha);
}

/* ---- requests ------------------------------------------------------------ */

struct brm_redis_req *brm_redis_req_new(void) {
    struct brm_redis_req *r = brm_xcalloc(1, sizeof(*r));
    brm_buf_init(&r->args);
    return r;
}

void brm_redis_req_free(struct brm_redis_req *r) {
    if (!r) return;
    brm_buf_reset(&r->args);
    if (r->reply) freeReplyObject(r->reply);
    free(r);
}

void brm_redis_arg(struct brm_redis_req *r, const void *p, size_t n) {
    uint32_t len = (uint32_t)n;
    brm_buf_append(&r->args, &len, sizeof(len));
    brm_buf_append(&r->args, p, n);
    r->argc++;
}

void brm_redis_arg_str(struct brm_redis_req *r, const char *s) {
    brm_redis_arg(r, s, strlen(s));
}

void brm_redis_arg_num(struct brm_redis_req *r, double v) {
    char text[40];
    if (v > -9e15 && v < 9e15 && v == (double)(long long)v)
        snprintf(text, sizeof(text), "%lld", (long long)v);
    else
        snprintf(text, sizeof(text), "%.17g", v);
    brm_redis_arg_str(r, text);
}

void brm_redis_arg_int(struct brm_redis_req *r, long long v) {
    char text[24];
    snprintf(text, sizeof(text), "%lld", v);
    brm_redis_arg_str(r, text);
}

void brm_redis_eval(struct brm_redis_req *r, const struct brm_redis_script *s, int nkeys) {
    r->script = s;
    brm_redis_arg_str(r, "EVALSHA");
    brm_redis_arg_str(r, s->sha);
    brm_redis_arg_int(r, nkeys);
}

static void put_bulk(struct brm_buf *out, const void *p, size_t n) {
    brm_buf_printf(out, "$%zu\r\n", n);
    brm_buf_append(out, p, n);
    brm_buf_append(out, "\r\n", 2);
}

void brm_redis_format(const struct brm_redis_req *r, int text, struct brm_buf *out) {
    brm_buf_printf(out, "*%d\r\n", r->argc);
    const char *p = r->args.data, *end = p + r->args.len;
    for (int i = 0; p < end; i++) {
        uint32_t len;
        memcpy(&len, p, sizeof(len));
        p += sizeof(len);
        if (text && r->script && i == 0)
            put_bulk(out, "EVAL", 4);
        else if (text && r->script && i == 1)
            put_bulk(out, r->script->text, strlen(r->script->text));
        else
            put_bulk(out, p, len);
        p += len;
    }
}

/* ---- the connection (the client's thread) -------------------------------- */

struct conn {
    int fd;
    struct brm_tls_conn *tls;
    redisReader *reader;
};

struct brm_redis {
    struct brm_redis_cfg cfg;
    const struct brm_redis_script *const *scripts;
    size_t nscripts;
    brm_redis_state_fn *state_fn;
    void *state_arg;
    struct brm_tls *tls; /* the client context, for rediss:// */
    pthread_t thread;
    int started;
    size_t next_sentinel; /* the one asked first next time */

    pthread_mutex_t lock; /* guards what is below */
    pthread_cond_t wake;
    struct brm_redis_req *queue, **tail;
    struct brm_redis_req *resend, **resend_tail; /* LOST, to be sent again, oldest first */
    int stopping, final;
    int fd; /* the socket, for brm_redis_free to interrupt a read */

    _Atomic int up;
    int told; /* the state callback has been called */
};

static int set_nonblock(int fd, int on) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0) return -1;
    return fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
}

static void conn_close(struct brm_redis *r, struct conn *c) {
    if (c->tls) brm_tls_conn_free(c->tls);
    if (c->reader) redisReaderFree(c->reader);
    if (c->fd >= 0) {
        pthread_mutex_lock(&r->lock);
        r->fd = -1;
        pthread_mutex_unlock(&r->lock);
        close(c->fd);
    }
    c->fd = -1;
    c->tls = NULL;
    c->reader = NULL;
}

/* Every read and write on FD gives up after SECONDS. */
static int set_timeouts(int fd, double seconds) {
    struct timeval tv = { (time_t)seconds,
                          (suseconds_t)((seconds - (double)(time_t)seconds) * 1e6) };
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)) < 0)
        return -1;
    return 0;
}

/* Connects FD to AI within TIMEOUT seconds: 0, or -1 with errno set. */
static int connect_within(int fd, const struct addrinfo *ai, double timeout) {
    if (set_nonblock(fd, 1) < 0) return -1;
    int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
    if (rc < 0 && errno == EINPROGRESS) {
        struct pollfd pfd = { fd, POLLOUT, 0 };
        do rc = poll(&pfd, 1, (int)(timeout * 1000));
        while (rc < 0 && errno == EINTR);
        if (rc == 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        int soerr = 0;
        socklen_t len = sizeof(soerr);
        if (rc < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0) return -1;
        if (soerr) {
            errno = soerr;
            return -1;
        }
        rc = 0;
    }
    return rc < 0 || set_nonblock(fd, 0) < 0 ? -1 : 0;
}

/* Opens C to HOST:PORT (TLS when the client has a context): 0, or -1 with
 * WHY set. The socket blocks, each read and write within the timeout. */
static int conn_open(struct brm_redis *r, const char *host, int port, struct conn *c, char *why,
                     size_t size) {
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *ai = NULL;
    char service[16];
    snprintf(service, sizeof(service), "%d", port);
    c->fd = -1;
    c->tls = NULL;
    c->reader = NULL;
    int rc = getaddrinfo(host, service, &hints, &ai);
    if (rc != 0) {
        snprintf(why, size, "%s: %s", host, gai_strerror(rc));
        return -1;
    }
    int saved = 0;
    for (struct addrinfo *a = ai; a && c->fd < 0; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd >= 0 && connect_within(fd, a, r->cfg.timeout) == 0 &&
            set_timeouts(fd, r->cfg.timeout) == 0) {
            c->fd = fd;
        } else {
            saved = errno;
            if (fd >= 0) close(fd);
        }
    }
    freeaddrinfo(ai);
    if (c->fd < 0) {
        snprintf(why, size, "%s:%d: %s", host, port, strerror(saved));
        return -1;
    }
    pthread_mutex_lock(&r->lock);
    r->fd = c->fd;
    pthread_mutex_unlock(&r->lock);
    if (r->tls) {
        char e[200];
        c->tls = brm_tls_connect(r->tls, c->fd, host);
        if (!c->tls || brm_tls_handshake(c->tls) != BRM_TLS_OK) {
            snprintf(why, size, "%s:%d: TLS: %s", host, port, brm_tls_error(e, sizeof(e)));
            conn_close(r, c);
            return -1;
        }
    }
    c->reader = redisReaderCreate();
    return 0;
}

static int conn_write(struct conn *c, const char *p, size_t n) {
    while (n) {
        size_t put;
        if (c->tls) {
            enum brm_tls_io io;
            if (!(put = brm_tls_write(c->tls, p, n, &io))) return -1;
        } else {
            ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) return -1;
            put = (size_t)w;
        }
        p += put;
        n -= put;
    }
    return 0;
}

/* The next reply in *OUT: 0, or -1 with WHY (no answer in time, closed, not
 * Redis's protocol). */
static int conn_read(struct brm_redis *r, struct conn *c, redisReply **out, char *why,
                     size_t size) {
    for (;;) {
        void *reply = NULL;
        if (redisReaderGetReply(c->reader, &reply) != REDIS_OK) {
            snprintf(why, size, "not Redis's protocol: %s", c->reader->errstr);
            return -1;
        }
        if (reply) {
            *out = reply;
            return 0;
        }
        char buf[READ_CHUNK];
        size_t got;
        if (c->tls) {
            enum brm_tls_io io;
            got = brm_tls_read(c->tls, buf, sizeof(buf), &io);
            if (!got) {
                int late = io == BRM_TLS_WANT_READ || io == BRM_TLS_WANT_WRITE;
                if (late)
                    snprintf(why, size, "no answer within %gs", r->cfg.timeout);
                else
                    snprintf(why, size, "the server closed the connection");
                return -1;
            }
        } else {
            ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) {
                if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                    snprintf(why, size, "no answer within %gs", r->cfg.timeout);
                else
                    snprintf(why, size, "%s",
                             n == 0 ? "the server closed the connection" : strerror(errno));
                return -1;
            }
            got = (size_t)n;
        }
        if (redisReaderFeed(c->reader, buf, got) != REDIS_OK) {
            snprintf(why, size, "not Redis's protocol: %s", c->reader->errstr);
            return -1;
        }
    }
}

/* Sends the N commands in REQS and reads their replies into them. Returns
 * 0, or -1 with WHY: the connection failed (what was read is there). */
static int conn_commands(struct brm_redis *r, struct conn *c, struct brm_redis_req **reqs, size_t n,
                         char *why, size_t size) {
    struct brm_buf out;
    brm_buf_init(&out);
    for (size_t i = 0; i < n; i++) brm_redis_format(reqs[i], 0, &out);
    int rc = conn_write(c, out.data, out.len);
    brm_buf_reset(&out);
    if (rc < 0) {
        snprintf(why, size, "cannot write: %s", strerror(errno));
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        if (conn_read(r, c, &reqs[i]->reply, why, size) < 0) return -1;
    return 0;
}

/* An error reply's text, or NULL when REPLY is not one. */
static const char *reply_error(const redisReply *reply) {
    return reply && reply->type == REDIS_REPLY_ERROR ? reply->str : NULL;
}

/* After connecting: AUTH, SELECT, the scripts loaded, and, for a master
 * Sentinel named, ROLE says master. 0, or -1 with WHY. */
static int conn_setup(struct brm_redis *r, struct conn *c, char *why, size_t size) {
    struct brm_redis_req *reqs[4 + 16];
    const char *names[4 + 16];
    size_t n = 0;
    if (r->cfg.password) {
        reqs[n] = brm_redis_req_new();
        brm_redis_arg_str(reqs[n], "AUTH");
        if (r->cfg.user) brm_redis_arg_str(reqs[n], r->cfg.user);
        brm_redis_arg_str(reqs[n], r->cfg.password);
        names[n++] = "AUTH";
    }
    if (r->cfg.db) {
        reqs[n] = brm_redis_req_new();
        brm_redis_arg_str(reqs[n], "SELECT");
        brm_redis_arg_int(reqs[n], r->cfg.db);
        names[n++] = "SELECT";
    }
    if (r->cfg.nsentinels) {
        reqs[n] = brm_redis_req_new();
        brm_redis_arg_str(reqs[n], "ROLE");
        names[n++] = "ROLE";
    }
    for (size_t i = 0; i < r->nscripts && n < BRM_ARRAY_LEN(reqs); i++) {
        reqs[n] = brm_redis_req_new();
        brm_redis_arg_str(reqs[n], "SCRIPT");
        brm_redis_arg_str(reqs[n], "LOAD");
        brm_redis_arg_str(reqs[n], r->scripts[i]->text);
        names[n++] = "SCRIPT LOAD";
    }
    int rc = conn_commands(r, c, reqs, n, why, size);
    for (size_t i = 0; i < n && rc == 0; i++) {
        const redisReply *rep = reqs[i]->reply;
        const char *e = reply_error(rep);
        if (e) {
            snprintf(why, size, "%s: %s", names[i], e);
            rc = -1;
        } else if (strcmp(names[i], "ROLE") == 0 &&
                   !(rep->type == REDIS_REPLY_ARRAY && rep->elements > 0 &&
                     rep->element[0]->type == REDIS_REPLY_STRING &&
                     strcmp(rep->element[0]->str, "master") == 0)) {
            snprintf(why, size, "the server Sentinel named is not a master (yet)");
            rc = -1;
        }
    }
    for (size_t i = 0; i < n; i++) brm_redis_req_free(reqs[i]);
    return rc;
}

/* Asks the sentinels in turn where the master is: 0 with HOST and *PORT,
 * or -1 with WHY (the last one's answer). */
static int discover(struct brm_redis *r, char *host, size_t hsize, int *port, char *why,
                    size_t size) {
    for (size_t k = 0; k < r->cfg.nsentinels; k++) {
        size_t i = (r->next_sentinel + k) % r->cfg.nsentinels;
        char shost[256];
        int sport;
        struct conn c;
        if (brm_split_addr(r->cfg.sentinels[i], shost, sizeof(shost), &sport) < 0 ||
            conn_open(r, shost, sport, &c, why, size) < 0)
            continue;
        struct brm_redis_req *q = brm_redis_req_new();
        brm_redis_arg_str(q, "SENTINEL");
        brm_redis_arg_str(q, "get-master-addr-by-name");
        brm_redis_arg_str(q, r->cfg.master);
        int rc = conn_commands(r, &c, &q, 1, why, size);
        conn_close(r, &c);
        const redisReply *rep = q->reply;
        if (rc == 0 && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
            rep->element[0]->type == REDIS_REPLY_STRING &&
            rep->element[1]->type == REDIS_REPLY_STRING) {
            snprintf(host, hsize, "%s", rep->element[0]->str);
            *port = atoi(rep->element[1]->str);
            brm_redis_req_free(q);
            r->next_sentinel = i; /* it knew: ask it first next time */
            return 0;
        }
        if (rc == 0)
            snprintf(why, size, "sentinel %s: %s", r->cfg.sentinels[i],
                     reply_error(rep) ? reply_error(rep) : "does not know the master set");
        brm_redis_req_free(q);
    }
    return -1;
}

static int connect_server(struct brm_redis *r, struct conn *c, char *why, size_t size) {
    char host[256];
    int port = r->cfg.port;
    if (r->cfg.nsentinels) {
        if (discover(r, host, sizeof(host), &port, why, size) < 0) return -1;
    } else {
        snprintf(host, sizeof(host), "%s", r->cfg.host);
    }
    if (conn_open(r, host, port, c, why, size) < 0) return -1;
    if (conn_setup(r, c, why, size) < 0) {
        conn_close(r, c);
        return -1;
    }
    return 0;
}

/* ---- the client's thread -------------------------------------------------- */

static void set_state(struct brm_redis *r, int up, const char *why) {
    int was = atomic_exchange(&r->up, up);
    pthread_mutex_lock(&r->lock);
    int told = r->told;
    pthread_mutex_unlock(&r->lock);
    if ((!told || was != up) && r->state_fn) r->state_fn(r->state_arg, up, why);
    pthread_mutex_lock(&r->lock); /* brm_redis_wait returns once the callback is done */
    r->told = 1;
    pthread_cond_broadcast(&r->wake);
    pthread_mutex_unlock(&r->lock);
}

static void complete(struct brm_redis_req *req, enum brm_redis_status st) {
    req->status = st;
    req->done(req);
}

/* A request that was written and not answered: to be sent again, or
 * handed back LOST. */
static void lost(struct brm_redis *r, struct brm_redis_req *req) {
    if (req->reply) freeReplyObject(req->reply);
    req->reply = NULL;
    pthread_mutex_lock(&r->lock);
    int again = req->retry && !r->final && !r->stopping;
    if (again) {
        req->next = NULL;
        *r->resend_tail = req;
        r->resend_tail = &req->next;
    }
    pthread_mutex_unlock(&r->lock);
    if (!again)
        complete(req, BRM_REDIS_LOST);
    else if (req->lost)
        req->lost(req);
}

/* Takes the list at *HEAD (with its TAIL) under the lock. */
static struct brm_redis_req *take_list(struct brm_redis_req **head, struct brm_redis_req ***tail) {
    struct brm_redis_req *list = *head;
    *head = NULL;
    *tail = head;
    return list;
}

static double mono(void) {
    return (double)brm_time_mono_ms() / 1000;
}

static void deadline_after(double seconds, struct timespec *ts) {
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += (time_t)seconds;
    ts->tv_nsec += (long)((seconds - (double)(time_t)seconds) * 1e9);
    if (ts->tv_nsec >= 1000000000L) ts->tv_sec++, ts->tv_nsec -= 1000000000L;
}

/* Down: waits SECONDS before the next attempt, handing back UNSENT what
 * comes meanwhile (and LOST what waited to be sent again, once the daemon
 * is stopping). */
static void wait_down(struct brm_redis *r, double seconds) {
    struct timespec until;
    deadline_after(seconds, &until);
    pthread_mutex_lock(&r->lock);
    for (;;) {
        struct brm_redis_req *list = take_list(&r->queue, &r->tail);
        struct brm_redis_req *gone =
            r->final || r->stopping ? take_list(&r->resend, &r->resend_tail) : NULL;
        int stop = r->stopping;
        pthread_mutex_unlock(&r->lock);
        for (struct brm_redis_req *q = list, *next; q; q = next) {
            next = q->next;
            complete(q, BRM_REDIS_UNSENT);
        }
        for (struct brm_redis_req *q = gone, *next; q; q = next) {
            next = q->next;
            complete(q, BRM_REDIS_LOST);
        }
        pthread_mutex_lock(&r->lock);
        if (stop) break;
        if (r->queue) continue;
        if (pthread_cond_timedwait(&r->wake, &r->lock, &until) == ETIMEDOUT) break;
    }
    pthread_mutex_unlock(&r->lock);
}

/* Up: what is to be sent, the requests LOST first; NULL when nothing came
 * within WAIT seconds (time for a PING) or the client is stopping. */
static struct brm_redis_req *take_batch(struct brm_redis *r, double wait) {
    struct timespec until;
    deadline_after(wait > 0 ? wait : 0, &until);
    pthread_mutex_lock(&r->lock);
    while (!r->stopping && !r->queue && !r->resend &&
           pthread_cond_timedwait(&r->wake, &r->lock, &until) != ETIMEDOUT) {
    }
    struct brm_redis_req *batch = NULL;
    if (!r->stopping) {
        struct brm_redis_req **tail = r->resend_tail;
        batch = take_list(&r->resend, &r->resend_tail);
        if (batch)
            *tail = take_list(&r->queue, &r->tail);
        else
            batch = take_list(&r->queue, &r->tail);
    }
    pthread_mutex_unlock(&r->lock);
    return batch;
}

/* Sends BATCH (AS_TEXT: scripts as their text) and hands back each
 * request as its reply comes; a script the server did not know goes again
 * as its text. Returns 0, or -1 with WHY when the connection failed (the
 * requests not answered are LOST). */
static int run_batch(struct brm_redis *r, struct conn *c, struct brm_redis_req *batch, int as_text,
                     char *why, size_t size) {
    struct brm_buf out;
    brm_buf_init(&out);
    for (struct brm_redis_req *q = batch; q; q = q->next) brm_redis_format(q, as_text, &out);
    int rc = conn_write(c, out.data, out.len);
    brm_buf_reset(&out);
    if (rc < 0) snprintf(why, size, "cannot write: %s", strerror(errno));
    struct brm_redis_req *again = NULL, **again_tail = &again;
    struct brm_redis_req *q = batch, *next;
    for (; rc == 0 && q; q = next) {
        next = q->next;
        if (conn_read(r, c, &q->reply, why, size) < 0) {
            rc = -1;
            break;
        }
        const char *e = reply_error(q->reply);
        if (e && q->script && !as_text && strncmp(e, "NOSCRIPT", 8) == 0) {
            freeReplyObject(q->reply);
            q->reply = NULL;
            q->next = NULL;
            *again_tail = q;
            again_tail = &q->next;
            continue;
        }
        complete(q, BRM_REDIS_REPLY);
    }
    for (; q; q = next) { /* written, not answered */
        next = q->next;
        lost(r, q);
    }
    if (again && rc == 0) return run_batch(r, c, again, 1, why, size);
    for (q = again; q; q = next) {
        next = q->next;
        lost(r, q);
    }
    return rc;
}

static void ping_done(struct brm_redis_req *req) {
    brm_redis_req_free(req);
}

static void *client_main(void *arg) {
    struct brm_redis *r = arg;
    brm_thread_name("redis");
    struct conn c = { -1, NULL, NULL };
    double last = 0;
    char why[256];
    for (;;) {
        pthread_mutex_lock(&r->lock);
        int stop = r->stopping;
        pthread_mutex_unlock(&r->lock);
        if (stop) break;
        if (c.fd < 0) {
            if (connect_server(r, &c, why, sizeof(why)) < 0) {
                set_state(r, 0, why);
                wait_down(r, RECONNECT_WAIT);
                continue;
            }
            set_state(r, 1, NULL);
            last = mono();
        }
        struct brm_redis_req *batch = take_batch(r, PING_IDLE - (mono() - last));
        pthread_mutex_lock(&r->lock);
        stop = r->stopping;
        pthread_mutex_unlock(&r->lock);
        if (stop && !batch) break;
        if (!batch) {
            batch = brm_redis_req_new();
            brm_redis_arg_str(batch, "PING");
            batch->done = ping_done;
        }
        if (run_batch(r, &c, batch, 0, why, sizeof(why)) < 0) {
            conn_close(r, &c);
            set_state(r, 0, why);
        }
        last = mono();
    }
    conn_close(r, &c);
    pthread_mutex_lock(&r->lock);
    struct brm_redis_req *queued = take_list(&r->queue, &r->tail);
    struct brm_redis_req *waiting = take_list(&r->resend, &r->resend_tail);
    pthread_mutex_unlock(&r->lock);
    for (struct brm_redis_req *q = queued, *next; q; q = next) {
        next = q->next;
        complete(q, BRM_REDIS_UNSENT);
    }
    for (struct brm_redis_req *q = waiting, *next; q; q = next) {
        next = q->next;
        complete(q, BRM_REDIS_LOST);
    }
    return NULL;
}

/* ---- life ------------------------------------------------------------------ */

struct brm_redis *brm_redis_new(const struct brm_redis_cfg *cfg,
                                const struct brm_redis_script *const *scripts, size_t n,
                                brm_redis_state_fn *state, void *arg) {
    struct brm_redis *r = brm_xcalloc(1, sizeof(*r));
    brm_redis_cfg_copy(&r->cfg, cfg);
    if (r->cfg.timeout <= 0) r->cfg.timeout = 2;
    r->scripts = scripts;
    r->nscripts = n;
    r->state_fn = state;
    r->state_arg = arg;
    r->fd = -1;
    r->tail = &r->queue;
    r->resend_tail = &r->resend;
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->wake, NULL);
    return r;
}

int brm_redis_start(struct brm_redis *r, struct brm_err *err) {
    if (r->cfg.tls && !r->tls && !(r->tls = brm_tls_client_new(r->cfg.ca, err))) return -1;
    int rc = pthread_create(&r->thread, NULL, client_main, r);
    if (rc != 0) {
        brm_err_set(err, "cannot start the Redis client's thread: %s", strerror(rc));
        return -1;
    }
    r->started = 1;
    return 0;
}

void brm_redis_finish(struct brm_redis *r) {
    pthread_mutex_lock(&r->lock);
    r->final = 1;
    pthread_cond_signal(&r->wake);
    pthread_mutex_unlock(&r->lock);
}

void brm_redis_free(struct brm_redis *r) {
    if (!r) return;
    pthread_mutex_lock(&r->lock);
    r->stopping = 1;
    if (r->fd >= 0) shutdown(r->fd, SHUT_RDWR); /* a read waiting for an answer ends now */
    pthread_cond_signal(&r->wake);
    pthread_mutex_unlock(&r->lock);
    if (r->started) {
        pthread_join(r->thread, NULL);
    } else {
        for (struct brm_redis_req *q = take_list(&r->queue, &r->tail), *next; q; q = next) {
            next = q->next;
            complete(q, BRM_REDIS_UNSENT);
        }
    }
    brm_tls_free(r->tls);
    brm_redis_cfg_reset(&r->cfg);
    pthread_cond_destroy(&r->wake);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

void brm_redis_call(struct brm_redis *r, struct brm_redis_req *req) {
    req->next = NULL;
    req->status = BRM_REDIS_UNSENT;
    pthread_mutex_lock(&r->lock);
    int stopping = r->stopping;
    if (!stopping) {
        *r->tail = req;
        r->tail = &req->next;
        pthread_cond_signal(&r->wake);
    }
    pthread_mutex_unlock(&r->lock);
    if (stopping) complete(req, BRM_REDIS_UNSENT);
}

int brm_redis_wait(struct brm_redis *r, double seconds) {
    struct timespec until;
    deadline_after(seconds, &until);
    pthread_mutex_lock(&r->lock);
    while (!r->told && pthread_cond_timedwait(&r->wake, &r->lock, &until) != ETIMEDOUT) {
    }
    pthread_mutex_unlock(&r->lock);
    return brm_redis_up(r);
}

int brm_redis_up(const struct brm_redis *r) {
    return atomic_load(&((struct brm_redis *)r)->up);
}
