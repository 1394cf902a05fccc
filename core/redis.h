/*
 * redis: a client of one Redis server, on a thread of its own. Callers on
 * any thread queue requests (brm_redis_call); the client's thread writes
 * whatever is queued in one go (a pipeline), reads the replies in order,
 * and hands each request back through its callback, on the client's
 * thread. So no worker's event loop ever waits for Redis: the client's
 * thread is the one that blocks on the socket, with the configured timeout
 * on every read and write.
 *
 * The connection: a plain TCP socket, or TLS (rediss://, OpenSSL through
 * tls.h, the server's certificate checked against the system's CAs or a
 * given one, and its name); AUTH and SELECT after connecting, and the
 * scripts the caller registered loaded, so that EVALSHA finds them (a
 * NOSCRIPT answer sends the script itself). With Sentinel addresses the
 * client asks them in turn which server is the master of the named set,
 * and checks with ROLE that it is. When the server does not answer in
 * time, or closes, the client says so (the state callback), fails what is
 * queued at once (BRM_REDIS_UNSENT), and connects again every half second;
 * a request that was written but not answered is BRM_REDIS_LOST, or sent
 * again first thing after reconnecting when the caller asked for it (a
 * script that knows whether it ran before). While the connection is idle
 * a PING a second says whether the server is still there.
 *
 * The client knows nothing of rule state: shared.c is one user, and any
 * other module that talks to Redis (a target that XADDs to a stream, say)
 * opens a client of its own (its own connection and thread, so neither
 * waits behind the other's requests), from its own URL or the state's:
 *
 *     struct brm_redis_cfg cfg = { .timeout = 2 };
 *     brm_redis_parse_url("redis://cache:6379/0", &cfg, &err);
 *     struct brm_redis *r = brm_redis_new(&cfg, NULL, 0, NULL, NULL);
 *     brm_redis_start(r, &err);
 *     struct brm_redis_req *q = brm_redis_req_new();
 *     brm_redis_arg_str(q, "XADD"); ... q->done = on_answer; q->arg = ...;
 *     brm_redis_call(r, q);   // on_answer runs on the client's thread
 *
 * A state callback, scripts and retry are each optional.
 *
 * Replies are read with hiredis's protocol reader (Debian's libhiredis
 * 0.14, which has no TLS and no timeouts of its own: the connection is
 * this module's). brm_redis_parse_url is pure. Depends on tls, util,
 * hiredis, OpenSSL (for script digests).
 */
#ifndef BRM_REDIS_H
#define BRM_REDIS_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis.h>

#include "util.h"

#define BRM_REDIS_MAX_SENTINELS 8

/* Where the server is and how to talk to it. */
struct brm_redis_cfg {
    char *host;     /* NULL with sentinels: the master they name */
    int port;       /* 6379 by default */
    int db;         /* SELECT; 0 by default */
    char *user;     /* AUTH user password (ACL); NULL: AUTH password alone */
    char *password; /* NULL: no AUTH */
    int tls;        /* rediss:// */
    char *ca;       /* PEM file of the CA that signed the server's certificate; NULL: the
                       system's */
    double timeout; /* seconds: connecting, and waiting on any read or write */
    char *sentinels[BRM_REDIS_MAX_SENTINELS]; /* "host:port" */
    size_t nsentinels;
    char *master; /* the Sentinel name of the master set */
};

/*
 * Fills CFG from URL: redis://[[user]:password@]host[:port][/db] or
 * rediss://... for TLS (a bare IPv6 address in brackets). Returns 0, or -1
 * with ERR saying what is wrong ("redis URL: the port must be 1 to 65535").
 * What CFG held is freed first.
 */
int brm_redis_parse_url(const char *url, struct brm_redis_cfg *cfg, struct brm_err *err);
/* Frees what CFG holds (the password is wiped first) and zeroes it. */
void brm_redis_cfg_reset(struct brm_redis_cfg *cfg);
/* A copy of SRC into DST. */
void brm_redis_cfg_copy(struct brm_redis_cfg *dst, const struct brm_redis_cfg *src);
/* What CFG points at, for logs and /healthz, with no secret in it:
 * "rediss://10.0.0.5:6380/0", "sentinel mymaster (2 sentinels)/1". */
void brm_redis_cfg_display(const struct brm_redis_cfg *cfg, char *out, size_t size);

/* A Lua script the client loads on every connection; SHA is its SHA-1 in
 * hex (brm_redis_script_init). */
struct brm_redis_script {
    const char *text;
    char sha[41];
};
void brm_redis_script_init(struct brm_redis_script *s, const char *text);

enum brm_redis_status {
    BRM_REDIS_REPLY,  /* REPLY holds the server's answer (an error reply too) */
    BRM_REDIS_UNSENT, /* not sent: the server is unreachable */
    BRM_REDIS_LOST,   /* sent, and the connection failed before the answer: it may have run */
};

/*
 * A request: its caller builds the command with brm_redis_arg* (or
 * brm_redis_eval), sets DONE (and ARG), and calls brm_redis_call; it must
 * not touch the request again until DONE, called on the client's thread,
 * which owns it from then on (brm_redis_req_free).
 */
struct brm_redis_req {
    struct brm_redis_req *next; /* the client's */
    struct brm_buf args;        /* each argument: its length (a uint32_t), then its bytes */
    int argc;
    const struct brm_redis_script *script; /* brm_redis_eval's: NOSCRIPT sends its text */
    int retry; /* LOST: send it again once connected (it is safe to run twice) */
    /* When given: told (on the client's thread) each time a RETRY request
     * is LOST and waits to be sent again; DONE comes once it is answered. */
    void (*lost)(struct brm_redis_req *req);
    void (*done)(struct brm_redis_req *req);
    void *arg;
    enum brm_redis_status status; /* out */
    redisReply *reply;            /* out: the reply, freed with the request */
};

struct brm_redis_req *brm_redis_req_new(void);
void brm_redis_req_free(struct brm_redis_req *req); /* NULL is fine */
void brm_redis_arg(struct brm_redis_req *req, const void *p, size_t n);
void brm_redis_arg_str(struct brm_redis_req *req, const char *s);
void brm_redis_arg_num(struct brm_redis_req *req, double v); /* %.17g, whole numbers as such */
void brm_redis_arg_int(struct brm_redis_req *req, long long v);
/* Starts REQ as EVALSHA of SCRIPT with NKEYS keys (the keys and the other
 * arguments follow). */
void brm_redis_eval(struct brm_redis_req *req, const struct brm_redis_script *script, int nkeys);
/* Writes REQ's command in Redis's protocol (RESP) to OUT; with TEXT, an
 * EVALSHA goes as EVAL of its script. For the client and its tests. */
void brm_redis_format(const struct brm_redis_req *req, int text, struct brm_buf *out);

/* Called on the client's thread when the connection comes up (UP 1) or
 * goes down (0, WHY saying why: "connection refused", "no answer within
 * 2s", "AUTH: WRONGPASS ..."). */
typedef void brm_redis_state_fn(void *arg, int up, const char *why);

struct brm_redis;

/* A client of CFG (copied) that loads the N SCRIPTS (borrowed for its
 * life; none: NULL, 0) on every connection; STATE(ARG), or NULL, hears of
 * its connection. Nothing happens before brm_redis_start. */
struct brm_redis *brm_redis_new(const struct brm_redis_cfg *cfg,
                                const struct brm_redis_script *const *scripts, size_t n,
                                brm_redis_state_fn *state, void *arg);
/* Starts the client's thread, which connects at once. Returns 0, or -1
 * with ERR set. */
int brm_redis_start(struct brm_redis *r, struct brm_err *err);
/* From now on a request LOST is not sent again: it is handed back LOST
 * (the daemon is stopping and will not wait for the server). Any thread. */
void brm_redis_finish(struct brm_redis *r);
/* Stops the thread: what is queued is handed back UNSENT, what waits for
 * an answer LOST. Frees R (NULL is fine). */
void brm_redis_free(struct brm_redis *r);
/* Queues REQ (any thread). */
void brm_redis_call(struct brm_redis *r, struct brm_redis_req *req);
/* 1 while connected (any thread). */
int brm_redis_up(const struct brm_redis *r);
/* Waits until the first attempt to connect ended, at most SECONDS; returns
 * brm_redis_up. */
int brm_redis_wait(struct brm_redis *r, double seconds);

#endif
