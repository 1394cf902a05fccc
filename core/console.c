#include "console.h"

#include <errno.h>
#include <event2/event.h>
#include <lauxlib.h>
#include <math.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "embedded.h"
#include "engine.h"
#include "intake.h"
#include "json.h"
#include "log.h"
#include "metrics.h"
#include "state.h"
#include "store.h"

#define SAMPLES           60   /* per-minute samples: the overview's hour */
#define SAMPLE_EVERY      60.0 /* seconds */
#define MAX_TOPICS        24   /* topics the overview charts; later ones count as "other" */
#define MAX_TIMERS_SHOWN  200  /* the soonest timers and digests the list shows */
#define PAGE_DEFAULT      50
#define PAGE_MAX          200
#define SCAN_ROWS         5000        /* rows a page of the journal looks at, at most... */
#define SCAN_MATCH        500         /* ...when each row's body is read (text and field matches) */
#define BODY_SHOWN        (1u << 20)  /* bytes of a body the event view gets */
#define REQUEST_SHOWN     (16u << 10) /* bytes of a stored request's body or plan */
#define ATTEMPTS_SHOWN    50
#define SENT_SHOWN        200          /* deliveries one event view lists */
#define CHANGE_STEP       500          /* deliveries one writer's transaction retries or drops */
#define PLAYGROUND_MAX    (512u << 10) /* a playground request: payload and rule text */
#define PLAYGROUND_EVENTS 100
#define RELOAD_ERRORS     50

/* Counters at one minute's end; the charts show what changed between two. */
struct sample {
    double at;
    uint64_t requests, runs, errors, done, retried, dead;
    uint64_t topics[MAX_TOPICS + 1]; /* by c->topics, then "other" */
    long pending;
    double oldest;
    uint64_t journal_bytes;
    int64_t journal_rows;
};

/* A retry or drop on its way through the writer, a step at a time. */
struct change {
    struct brm_journal_job job; /* first: the writer's job is the change */
    struct brm_console *c;
    struct brm_http_req *req;
    int drop;   /* else retry */
    int64_t id; /* one delivery; 0: every one Q matches */
    struct brm_delivery_query q;
    char *target;
    long changed;
    struct brm_state_txn *txn; /* a timer's or digest's change (then nothing below) */
    int status;                /* shared state: the answer Redis's thread made, in ANSWER */
    struct brm_buf answer;
    /* What the writer's last try of this step did (a failed batch is tried
     * again job by job, so a step counts only once it is stored). */
    long step_changed;
    int64_t step_next;
    int stored;
    char error[512];
    struct change *next;
};

struct brm_console {
    struct event_base *base;
    struct brm_store *store; /* read-only, this thread's */
    struct brm_journal *journal;
    struct brm_outbox *outbox;
    struct brm_state *state;      /* rule state: timers and digests */
    struct brm_shared *shared;    /* or in Redis */
    const struct brm_config *cfg; /* the running one (a reference) */
    struct brm_snapshot *files;   /* its rule set's files (a reference) */
    long generation;
    struct brm_buf rules; /* the rule set described (a JSON list), for GENERATION */
    long rules_of;
    struct brm_buf reload; /* the last reload, a JSON object, or empty */
    lua_State *L;          /* decodes request bodies; runs no user code */

    struct sample ring[SAMPLES];
    size_t nsamples, head;
    char topics[MAX_TOPICS][BRM_TOPIC_MAX];
    size_t ntopics;
    struct event *timer;

    /* Changes handed back by the writer's thread. */
    pthread_mutex_t lock;
    struct change *done;
    int donefd;
    struct event *done_ev;

    struct play *play; /* the playground's run, or NULL */
    int playfd;        /* its thread says it is done */
    struct event *play_ev;
};

/* ---- access and answers ------------------------------------------------- */

static const char security_headers[] =
    "Cache-Control: no-store\r\n"
    "X-Frame-Options: DENY\r\n"
    "X-Content-Type-Options: nosniff\r\n"
    "Referrer-Policy: no-referrer\r\n"
    "Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'\r\n";

/* 1 when HOST ("name", "name:port", "[v6]:port") is a loopback address or
 * localhost, read as text: nothing is looked up. */
static int host_is_loopback(const char *host, size_t n) {
    char addr[300];
    if (n == 0 || n >= 280) return 0;
    memcpy(addr, host, n);
    addr[n] = '\0';
    char *colon = strrchr(addr, ':');
    int bracketed = addr[0] == '[';
    if (!colon || (bracketed && colon < strchr(addr, ']'))) strcat(addr, ":0");
    char name[280];
    int port;
    if (brm_split_addr(addr, name, sizeof(name), &port) < 0) return 0;
    if (strcasecmp(name, "localhost") == 0) return 1;
    return brm_addr_loopback(addr);
}

int brm_console_same_origin(const struct brm_http_req *req) {
    size_t olen, hlen;
    const char *origin = brm_http_header(req, "origin", &olen);
    const char *host = brm_http_header(req, "host", &hlen);
    if (!origin) return 1;
    for (size_t skip = 0; skip < olen; skip++) {
        if (origin[skip] == ':' && skip + 2 < olen && origin[skip + 1] == '/' &&
            origin[skip + 2] == '/') {
            origin += skip + 3, olen -= skip + 3;
            return host && olen == hlen && strncasecmp(origin, host, hlen) == 0;
        }
    }
    return 0;
}

int brm_console_check(const char *token, const struct brm_http_req *req, int writes,
                      const char **why) {
    size_t n;
    if (token) {
        size_t want = strlen(token);
        const char *h = brm_http_header(req, "authorization", &n);
        if (!h || n != want + 7 || strncmp(h, "Bearer ", 7) != 0 ||
            CRYPTO_memcmp(h + 7, token, want) != 0) {
            *why = "admin token missing or wrong";
            return 401;
        }
    } else {
        /* Without a token the listener is loopback only; a peer from
         * elsewhere means something in between forwards to it. */
        if (!req->peer || !brm_addr_loopback(req->peer)) {
            *why = "not from a loopback address, and the config has no admin token";
            return 403;
        }
        const char *host = brm_http_header(req, "host", &n);
        if (host && !host_is_loopback(host, n)) {
            *why = "Host is not a loopback address (set an admin token to use another name)";
            return 403;
        }
        if (writes && !brm_http_header(req, "x-brume-console", &n)) {
            *why = "a change needs the X-Brume-Console header (or the admin token)";
            return 403;
        }
    }
    if (writes && !brm_console_same_origin(req)) {
        *why = "Origin is not this console";
        return 403;
    }
    return 0;
}

static void reply(struct brm_http_req *req, int status, const char *type, const char *body,
                  size_t len, const char *extra) {
    char headers[1024];
    snprintf(headers, sizeof(headers), "%s%s", security_headers, extra ? extra : "");
    brm_http_respond(req, status, type, body, len, headers);
}

static void reply_json(struct brm_http_req *req, int status, struct brm_buf *b) {
    brm_buf_puts(b, "\n");
    reply(req, status, "application/json", b->data, b->len, NULL);
}

/* {"ok":false,"error":MSG} */
static void reply_error(struct brm_http_req *req, int status, const char *msg) {
    struct brm_buf b;
    brm_buf_init(&b);
    brm_buf_puts(&b, "{\"ok\":false,\"error\":");
    brm_buf_json_string(&b, msg, strlen(msg));
    brm_buf_puts(&b, "}");
    reply_json(req, status, &b);
    brm_buf_reset(&b);
}

/* 1 when REQ may go on; else it is answered. */
static int allowed(struct brm_console *c, struct brm_http_req *req, int writes) {
    const char *why = NULL;
    int st = brm_console_check(c->cfg->admin_token, req, writes, &why);
    if (!st) return 1;
    char extra[64] = "";
    if (st == 401) snprintf(extra, sizeof(extra), "WWW-Authenticate: Bearer realm=\"brume\"\r\n");
    struct brm_buf b;
    brm_buf_init(&b);
    brm_buf_puts(&b, "{\"ok\":false,\"error\":");
    brm_buf_json_string(&b, why, strlen(why));
    brm_buf_puts(&b, "}\n");
    reply(req, st, "application/json", b.data, b.len, extra);
    brm_buf_reset(&b);
    return 0;
}

/* ---- request parameters ------------------------------------------------- */

static int hexval(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* Query parameter NAME of REQ, %-decoded ('+' is a space), in OUT: 1; 0
 * when absent or empty; -1 when malformed or longer than SIZE - 1. */
static int param(const struct brm_http_req *req, const char *name, char *out, size_t size) {
    const char *p = req->query, *end = p ? p + req->query_len : NULL;
    size_t nlen = strlen(name);
    while (p && p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        if ((size_t)(stop - p) > nlen && memcmp(p, name, nlen) == 0 && p[nlen] == '=') {
            size_t n = 0;
            for (const char *q = p + nlen + 1; q < stop; q++) {
                char ch = *q;
                if (ch == '+') ch = ' ';
                if (ch == '%') {
                    int hi = q + 2 < stop ? hexval(q[1]) : -1;
                    int lo = hi >= 0 ? hexval(q[2]) : -1;
                    if (lo < 0) return -1;
                    ch = (char)(hi * 16 + lo);
                    q += 2;
                }
                if (ch == '\0' || n + 1 >= size) return -1;
                out[n++] = ch;
            }
            out[n] = '\0';
            return n > 0;
        }
        p = amp ? amp + 1 : end;
    }
    return 0;
}

/* A whole number parameter in [MIN, MAX]; DEF when absent. -1 when bad. */
static int param_int(const struct brm_http_req *req, const char *name, long long min, long long max,
                     long long def, long long *out) {
    char v[32], *end;
    int rc = param(req, name, v, sizeof(v));
    *out = def;
    if (rc == 0) return 0;
    if (rc < 0) return -1;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (errno || *end || n < min || n > max) return -1;
    *out = n;
    return 0;
}

/* Reads time TEXT (brm_parse_time's forms) into *OUT; on a bad one writes
 * "NAME 'TEXT': why" into MSG and returns -1. */
static int read_time(const char *name, const char *text, double *out, char *msg, size_t size) {
    struct brm_err err;
    if (brm_parse_time(text, brm_time_now(), out, &err) == 0) return 0;
    snprintf(msg, size, "%s '%.64s': %.200s; a time is %s", name, text, err.msg, BRM_TIME_FORMS);
    return -1;
}

/* The since and until parameters (0 when absent); -1 after answering 400
 * with which one is wrong and why. */
static int param_times(struct brm_http_req *req, double *since, double *until) {
    static const char *const names[] = { "since", "until" };
    double *outs[] = { since, until };
    for (int i = 0; i < 2; i++) {
        char v[128], msg[1024];
        int rc = param(req, names[i], v, sizeof(v));
        *outs[i] = 0;
        if (rc < 0) snprintf(v, sizeof(v), "(too long)");
        if (rc != 0 && (rc < 0 || read_time(names[i], v, outs[i], msg, sizeof(msg)) < 0)) {
            if (rc < 0) snprintf(msg, sizeof(msg), "%s: too long to be a time", names[i]);
            reply_error(req, 400, msg);
            return -1;
        }
    }
    return 0;
}

/* Decodes REQ's body, a JSON object, onto the console's VM (the stack
 * holds it alone). 0, or -1 after answering 400. */
static int decode_body(struct brm_console *c, struct brm_http_req *req) {
    struct brm_err err;
    lua_settop(c->L, 0);
    if (brm_json_decode(c->L, req->body ? req->body : "", req->body_len, &err) != 0 ||
        lua_type(c->L, 1) != LUA_TTABLE) {
        lua_settop(c->L, 0);
        reply_error(req, 400, "the body must be a JSON object");
        return -1;
    }
    return 0;
}

/* Member NAME of the object at 1: a string (borrowed while it stays on the
 * stack), else NULL. */
static const char *member_string(lua_State *L, const char *name, size_t *len) {
    lua_getfield(L, 1, name);
    if (lua_type(L, -1) == LUA_TSTRING) return lua_tolstring(L, -1, len);
    lua_pop(L, 1);
    return NULL;
}

/* Member NAME as a number: 1 with *OUT, else 0. */
static int member_number(lua_State *L, const char *name, double *out) {
    lua_getfield(L, 1, name);
    int ok = lua_type(L, -1) == LUA_TNUMBER;
    if (ok) *out = lua_tonumber(L, -1);
    lua_pop(L, 1);
    return ok;
}

/* Member NAME as a time (seconds since the epoch, or text brm_parse_time
 * reads); 0 when absent. -1 with MSG set when it is something else. */
static int member_time(lua_State *L, const char *name, double *out, char *msg, size_t size) {
    lua_getfield(L, 1, name);
    int type = lua_type(L, -1), rc = 0;
    *out = 0;
    if (type == LUA_TNUMBER && isfinite(lua_tonumber(L, -1)))
        *out = lua_tonumber(L, -1);
    else if (type == LUA_TSTRING)
        rc = read_time(name, lua_tostring(L, -1), out, msg, size);
    else if (type != LUA_TNIL)
        rc = -1,
        snprintf(msg, size, "%s: a time (seconds since the epoch, or %s)", name, BRM_TIME_FORMS);
    lua_pop(L, 1);
    return rc;
}

/* Whether the object at 1 has only keys among KEYS (NULL-terminated); when
 * not, writes which one it has into MSG. */
static int only_keys(lua_State *L, const char *const *keys, char *msg, size_t size) {
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        lua_pop(L, 1);
        const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?";
        size_t i = 0;
        while (keys[i] && strcmp(keys[i], k) != 0) i++;
        if (!keys[i]) {
            snprintf(msg, size, "unknown key '%.64s'", k);
            lua_pop(L, 1);
            return 0;
        }
    }
    return 1;
}

/* ---- samples and the overview ------------------------------------------- */

/* The value of label KEY in LABELS (`a="x",b="y"`) into OUT, or "". */
static void label(const char *labels, const char *key, char *out, size_t size) {
    char pat[64];
    snprintf(pat, sizeof(pat), "%s=\"", key);
    const char *p = strstr(labels, pat);
    size_t n = 0;
    if (p && (p == labels || p[-1] == ',')) {
        for (p += strlen(pat); *p && *p != '"' && n + 1 < size; p++) {
            if (*p == '\\' && p[1]) p++;
            out[n++] = *p;
        }
    }
    out[n] = '\0';
}

struct tally {
    struct brm_console *c;
    struct sample *s;
};

static void add_counter(void *arg, const char *name, const char *labels, uint64_t v) {
    struct tally *t = arg;
    struct sample *s = t->s;
    char value[BRM_TOPIC_MAX];
    if (strcmp(name, "brume_http_requests_total") == 0) {
        label(labels, "route", value, sizeof(value));
        if (strcmp(value, "admin") != 0) s->requests += v; /* the console's own are not */
    } else if (strcmp(name, "brume_rule_runs_total") == 0) {
        s->runs += v;
    } else if (strcmp(name, "brume_rule_errors_total") == 0) {
        s->errors += v;
    } else if (strcmp(name, "brume_deliveries_total") == 0) {
        label(labels, "outcome", value, sizeof(value));
        if (strcmp(value, "done") == 0) s->done += v;
        if (strcmp(value, "retry") == 0) s->retried += v;
        if (strcmp(value, "dead") == 0) s->dead += v;
    } else if (strcmp(name, "brume_events_total") == 0) {
        struct brm_console *c = t->c;
        label(labels, "topic", value, sizeof(value));
        size_t i = 0;
        while (i < c->ntopics && strcmp(c->topics[i], value) != 0) i++;
        if (i == c->ntopics && i < MAX_TOPICS && strcmp(value, "other") != 0)
            snprintf(c->topics[c->ntopics++], BRM_TOPIC_MAX, "%s", value);
        s->topics[i < c->ntopics ? i : MAX_TOPICS] += v;
    }
}

/* The counters and gauges now. */
static void take_sample(struct brm_console *c, struct sample *s) {
    struct brm_journal_stats js;
    memset(s, 0, sizeof(*s));
    s->at = brm_time_now();
    struct tally t = { c, s };
    brm_metrics_each_counter(add_counter, &t);
    s->pending = brm_outbox_pending(c->outbox, &s->oldest);
    brm_journal_stats(c->journal, &js);
    s->journal_bytes = js.bytes;
    s->journal_rows = js.rows;
}

static void on_sample(evutil_socket_t fd, short what, void *arg) {
    struct brm_console *c = arg;
    (void)fd, (void)what;
    take_sample(c, &c->ring[c->head]);
    c->head = (c->head + 1) % SAMPLES;
    if (c->nsamples < SAMPLES) c->nsamples++;
}

/* Appends "NAME":[...] with one point per minute: what a counter gained
 * (GAUGE 0) or what a gauge read at the minute's end, from field OFF. */
static void series(struct brm_buf *b, const char *name, const struct sample *v, size_t n,
                   size_t off, int gauge) {
    brm_buf_printf(b, ",\"%s\":[", name);
    for (size_t i = 1; i < n; i++) {
        const char *cur = (const char *)&v[i] + off, *prev = (const char *)&v[i - 1] + off;
        if (i > 1) brm_buf_puts(b, ",");
        if (off == offsetof(struct sample, oldest))
            brm_buf_printf(b, "%.1f", *(const double *)cur);
        else if (off == offsetof(struct sample, pending))
            brm_buf_printf(b, "%ld", *(const long *)cur);
        else if (gauge)
            brm_buf_printf(b, "%llu", (unsigned long long)*(const uint64_t *)cur);
        else
            brm_buf_printf(b, "%llu",
                           (unsigned long long)(*(const uint64_t *)cur - *(const uint64_t *)prev));
    }
    brm_buf_puts(b, "]");
}

static void overview_series(struct brm_console *c, struct brm_buf *b) {
    struct sample v[SAMPLES + 1];
    size_t n = 0;
    for (size_t i = 0; i < c->nsamples; i++)
        v[n++] = c->ring[(c->head + SAMPLES - c->nsamples + i) % SAMPLES];
    take_sample(c, &v[n++]); /* the minute under way, so far */
    brm_buf_puts(b, "\"series\":{\"at\":[");
    for (size_t i = 1; i < n; i++) brm_buf_printf(b, "%s%.0f", i > 1 ? "," : "", v[i].at);
    brm_buf_puts(b, "]");
    series(b, "requests", v, n, offsetof(struct sample, requests), 0);
    series(b, "runs", v, n, offsetof(struct sample, runs), 0);
    series(b, "errors", v, n, offsetof(struct sample, errors), 0);
    series(b, "done", v, n, offsetof(struct sample, done), 0);
    series(b, "retry", v, n, offsetof(struct sample, retried), 0);
    series(b, "dead", v, n, offsetof(struct sample, dead), 0);
    series(b, "pending", v, n, offsetof(struct sample, pending), 1);
    series(b, "oldest", v, n, offsetof(struct sample, oldest), 1);
    series(b, "journal_bytes", v, n, offsetof(struct sample, journal_bytes), 1);
    brm_buf_puts(b, ",\"topics\":{");
    for (size_t k = 0; k <= c->ntopics; k++) {
        const char *name = k < c->ntopics ? c->topics[k] : "other";
        size_t slot = k < c->ntopics ? k : MAX_TOPICS;
        if (k) brm_buf_puts(b, ",");
        brm_buf_json_string(b, name, strlen(name));
        brm_buf_puts(b, ":[");
        for (size_t i = 1; i < n; i++)
            brm_buf_printf(b, "%s%llu", i > 1 ? "," : "",
                           (unsigned long long)(v[i].topics[slot] - v[i - 1].topics[slot]));
        brm_buf_puts(b, "]");
    }
    const struct sample *now = &v[n - 1];
    brm_buf_printf(b,
                   "}},\"totals\":{\"requests\":%llu,\"runs\":%llu,\"errors\":%llu,\"done\":%llu,"
                   "\"retry\":%llu,\"dead\":%llu},\"outbox\":{\"pending\":%ld,"
                   "\"oldest_seconds\":%.1f},\"journal\":{\"bytes\":%llu,\"rows\":%lld,"
                   "\"max_bytes\":%llu,\"retention\":%.0f}",
                   (unsigned long long)now->requests, (unsigned long long)now->runs,
                   (unsigned long long)now->errors, (unsigned long long)now->done,
                   (unsigned long long)now->retried, (unsigned long long)now->dead, now->pending,
                   now->oldest, (unsigned long long)now->journal_bytes,
                   (long long)now->journal_rows, (unsigned long long)c->cfg->journal.max_size,
                   c->cfg->journal.retention);
}

/* The running rule set as a JSON list (engine.h), described once per
 * version from a dry engine built from its files. */
static const char *rule_list(struct brm_console *c) {
    if (c->rules_of == c->generation && c->rules.len) return c->rules.data;
    struct brm_errors errs = { 0 };
    struct brm_engine *e = brm_engine_build_dry(c->cfg, c->files, &errs);
    c->rules.len = 0;
    if (e)
        brm_engine_describe(e, &c->rules);
    else
        brm_buf_puts(&c->rules, "[]");
    brm_engine_free(e);
    brm_errors_reset(&errs);
    c->rules_of = c->generation;
    return c->rules.data;
}

static void api_overview(void *arg, struct brm_http_req *req) {
    struct brm_console *c = arg;
    if (!allowed(c, req, 0)) return;
    struct brm_buf b;
    brm_buf_init(&b);
    brm_buf_printf(&b, "{\"now\":%.3f,\"version\":\"%s\",\"rule_set\":%ld,\"workers\":%d,",
                   brm_time_now(), BRM_VERSION, c->generation, c->cfg->workers);
    overview_series(c, &b);
    brm_buf_printf(&b, ",\"rules\":%s,\"reload\":%s}", rule_list(c),
                   c->reload.len ? c->reload.data : "null");
    reply_json(req, 200, &b);
    brm_buf_reset(&b);
}

/* ---- events ------------------------------------------------------------- */

/* A run log as stored (ours: a JSON list), or null. */
static void put_runs(struct brm_buf *b, const char *runs, size_t len) {
    if (runs && len && runs[0] == '[')
        brm_buf_append(b, runs, len);
    else
        brm_buf_puts(b, "null");
}

struct page {
    struct brm_buf *out;
    size_t n;
};

/* Ends page B (its list open) with the id the next page starts before, and
 * answers it; or, when ERR is set, answers that instead. Frees B. */
static void reply_page(struct brm_http_req *req, struct brm_buf *b, const struct brm_err *err,
                       int64_t next) {
    if (err) {
        reply_error(req, 500, err->msg);
    } else {
        if (next)
            brm_buf_printf(b, "],\"next\":%lld}", (long long)next);
        else
            brm_buf_puts(b, "],\"next\":null}");
        reply_json(req, 200, b);
    }
    brm_buf_reset(b);
}

static int list_body(void *arg, const struct brm_body *body) {
    struct page *p = arg;
    struct brm_buf *b = p->out;
    brm_buf_printf(b, "%s{\"id\":%lld,\"received\":%.3f,\"source\":", p->n++ ? "," : "",
                   (long long)body->id, body->received);
    brm_buf_json_string(b, body->source, strlen(body->source));
    brm_buf_puts(b, ",\"topic\":");
    brm_buf_json_string(b, body->topic, strlen(body->topic));
    brm_buf_printf(b, ",\"events\":%zu,\"bytes\":%zu,\"runs\":", body->events, body->len);
    put_runs(b, body->runs, body->runs_len);
    brm_buf_puts(b, "}");
    return 0;
}

/* A dotted path of names and [n] indexes: what json_extract reads after "$.". */
static int valid_field(const char *f) {
    for (const char *p = f; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '.' || *p == '[' || *p == ']'))
            return 0;
    return f[0] && f[0] != '.' && f[0] != '[';
}

static void api_events(void *arg, struct brm_http_req *req) {
    struct brm_console *c = arg;
    if (!allowed(c, req, 0)) return;
    char topic[BRM_TOPIC_MAX], name[BRM_TOPIC_MAX], source[256], text[256], field[128], value[512];
    long long before, limit;
    struct brm_body_query q = { .scan = SCAN_ROWS, .skew = brm_config_id_skew(c->cfg) };
    int rt = param(req, "topic", topic, sizeof(topic)), rs = param(req, "source", source, 256);
    int rq = param(req, "q", text, sizeof(text)), rf = param(req, "field", field, sizeof(field));
    int rv = param(req, "value", value, sizeof(value));
    if (param_int(req, "before", 1, INT64_MAX, 0, &before) < 0 ||
        param_int(req, "limit", 1, PAGE_MAX, PAGE_DEFAULT, &limit) < 0 || rt < 0 || rs < 0 ||
        rq < 0 || rf < 0 || rv < 0 ||
        (rt && brm_topic_normalize(topic, strlen(topic), name, sizeof(name)) < 0) ||
        (rf && !valid_field(field))) {
        reply_error(req, 400,
                    "bad parameters: before, limit (1-200), topic, source, q, field (a dotted "
                    "path), value");
        return;
    }
    if (param_times(req, &q.since, &q.until) < 0) return;
    q.before = before;
    q.limit = (int)limit;
    q.topic = rt ? name : NULL;
    q.source = rs ? source : NULL;
    q.text = rq ? text : NULL;
    q.field = rf ? field : NULL;
    q.value = rv ? value : "";
    if (q.text || q.field) q.scan = SCAN_MATCH;
    struct brm_buf b;
    struct brm_err err;
    brm_buf_init(&b);
    brm_buf_puts(&b, "{\"events\":[");
    struct page p = { &b, 0 };
    int rc = brm_store_find_bodies(c->store, &q, list_body, &p, &err);
    reply_page(req, &b, rc < 0 ? &err : NULL, q.next);
}

/* A delivery's state as a word. */
static const char *state_name(enum brm_delivery_state st) {
    return st == BRM_DELIVERY_DONE ? "done" : st == BRM_DELIVERY_DEAD ? "dead" : "pending";
}

static void put_string(struct brm_buf *b, const char *key, const char *s) {
    brm_buf_printf(b, ",\"%s\":", key);
    if (s)
        brm_buf_json_string(b, s, strlen(s));
    else
        brm_buf_puts(b, "null");
}

/* A delivery's row, without its request. */
static void delivery_json(struct brm_buf *b, const struct brm_delivery *d) {
    brm_buf_printf(b, "{\"id\":%lld", (long long)d->id);
    put_string(b, "key", d->key);
    put_string(b, "target", d->target);
    put_string(b, "rule", d->rule);
    put_string(b, "topic", d->topic);
    put_string(b, "event", d->event);
    brm_buf_printf(b,
                   ",\"state\":\"%s\",\"attempts\":%d,\"created\":%.3f,\"next_at\":%.3f,"
                   "\"expires\":%.3f,\"last_attempt\":",
                   state_name(d->state), d->attempts, d->created, d->next_at, d->expires);
    if (d->last_attempt > 0)
        brm_buf_printf(b, "%.3f", d->last_attempt);
    else
        brm_buf_puts(b, "null");
    brm_buf_printf(b, ",\"last_status\":%d", d->last_status);
    put_string(b, "last_error", d->last_error);
    brm_buf_puts(b, "}");
}

static int list_delivery(void *arg, const struct brm_delivery *d) {
    struct page *p = arg;
    if (p->n++) brm_buf_puts(p->out, ",");
    delivery_json(p->out, d);
    return 0;
}

static int show_body(void *arg, const struct brm_body *body) {
    struct brm_buf *b = arg;
    size_t shown = body->len < BODY_SHOWN ? body->len : BODY_SHOWN;
    brm_buf_printf(b, "{\"id\":%lld,\"received\":%.3f,\"source\":", (long long)body->id,
                   body->received);
    brm_buf_json_string(b, body->source, strlen(body->source));
    brm_buf_puts(b, ",\"topic\":");
    brm_buf_json_string(b, body->topic, strlen(body->topic));
    brm_buf_printf(b, ",\"events\":%zu,\"bytes\":%zu,\"truncated\":%s,\"body\":", body->events,
                   body->len, shown < body->len ? "true" : "false");
    brm_buf_json_string(b, body->body, shown);
    brm_buf_puts(b, ",\"runs\":");
    put_runs(b, body->runs, body->runs_len);
    return 0;
}

static void api_event(void *arg, struct brm_http_req *req) {
    struct brm_console *c = arg;
    if (!allowed(c, req, 0)) return;
    long long id;
    if (param_int(req, "id", 1, INT64_MAX, 0, &id) < 0 || id == 0) {
        reply_error(req, 400, "id: a body's id");
        return;
    }
    struct brm_buf b;
    struct brm_err err;
    brm_buf_init(&b);
    int rc = brm_store_body(c->store, id, show_body, &b, &err);
    struct page p = { &b, 0 };
    if (rc > 0) {
        brm_buf_puts(&b, ",\"sent\":[");
        rc = brm_store_body_deliveries(c->store, id, SENT_SHOWN, list_delivery, &p, &err) < 0 ? -1
                                                                                              : 1;
        brm_buf_puts(&b, "]}");
    }
    if (rc < 0)
        reply_error(req, 500, err.msg);
    else if (rc == 0)
        reply_error(req, 404, "no such body in the journal (retention may have removed it)");
    else
        reply_json(req, 200, &b);
    brm_buf_reset(&b);
}

/* ---- deliveries ---------------------------------------------------------- */

/* Parses STATUS ("pending", "dead", "done", "all" or absent) into *STATE. */
static int parse_state(const char *status, int *state) {
    static const char *const names[] = { "pending", "done", "dead" };
    *state = -1;
    if (!status || strcmp(status, "all") == 0) return 0;
    for (int i = 0; i < 3; i++)
        if (strcmp(status, names[i]) == 0) *state = i;
    return *state >= 0 ? 0 : -1;
}

static void api_deliveries(void *arg, struct brm_http_req *req) {
    struct brm_console *c = arg;
    if (!allowed(c, req, 0)) return;
    char status[16], target[256];
    long long before, limit;
    struct brm_delivery_query q = { .scan = SCAN_ROWS };
    int rs = param(req, "status", status, sizeof(status));
    int rt = param(req, "target", target, sizeof(target));
    if (param_int(req, "before", 1, INT64_MAX, 0, &before) < 0 ||
        param_int(req, "limit", 1, PAGE_MAX, PAGE_DEFAULT, &limit) < 0 || rs < 0 || rt < 0 ||
        parse_state(rs ? status : NULL, &q.state) < 0) {
        reply_error(req, 400,
                    "bad parameters: status (pending, dead, done, all), target, before, limit "
                    "(1-200)");
        return;
    }
    if (param_times(req, &q.since, &q.until) < 0) return;
    q.before = before;
    q.limit = (int)limit;
    q.target = rt ? target : NULL;
    struct brm_buf b;
    struct brm_err err;
    brm_buf_init(&b);
    brm_buf_puts(&b, "{\"deliveries\":[");
    struct page p = { &b, 0 };
    int rc = brm_store_find_deliveries(c->store, &q, list_delivery, &p, &err);
    reply_page(req, &b, rc < 0 ? &err : NULL, q.next);
}

/* Appends "KEY": S masked with target T's secrets and cut to
 * REQUEST_SHOWN bytes (after masking: no secret is cut in half). */
static void put_masked(struct brm_buf *b, const char *key, const struct brm_target *t,
                       const char *s) {
    struct brm_buf m;
    brm_buf_init(&m);
    brm_outbox_mask(t, s, &m);
    size_t n = m.len < REQUEST_SHOWN ? m.len : REQUEST_SHOWN;
    brm_buf_printf(b, ",\"%s\":", key);
    brm_buf_json_string(b, m.data, n);
    if (n < m.len) brm_buf_printf(b, ",\"%s_truncated\":true", key);
    brm_buf_reset(&m);
}

/* 1 when a header named NAME (N bytes) carries credentials whatever its
 * value ("Authorization: Basic ..." holds no secret verbatim): shown as
 * ****, as `brume test` shows it. */
static int credential_header(const char *name, size_t n) {
    static const char *const words[] = { "authorization", "token",    "key",   "secret",
                                         "signature",     "password", "cookie" };
    for (size_t w = 0; w < BRM_ARRAY_LEN(words); w++) {
        size_t m = strlen(words[w]);
        for (size_t i = 0; i + m <= n; i++)
            if (strncasecmp(name + i, words[w], m) == 0) return 1;
    }
    return 0;
}

/* Appends header LINE ("Name: value") masked, as a JSON string. */
static void put_header(struct brm_buf *b, const struct brm_target *t, const char *line, size_t n) {
    const char *colon = memchr(line, ':', n);
    struct brm_buf m;
    brm_buf_init(&m);
    if (colon && credential_header(line, (size_t)(colon - line))) {
        brm_buf_append(&m, line, (size_t)(colon - line));
        brm_buf_puts(&m, ": ****");
        brm_buf_json_string(b, m.data, m.len);
    } else {
        char *copy = brm_xstrndup(line, n);
        brm_outbox_mask(t, copy, &m);
        brm_buf_json_string(b, m.data, m.len);
        free(copy);
    }
    brm_buf_reset(&m);
}

/* Masks the decoded plan at IDX in place: strings through the target's
 * secrets, the values of credential headers wholly. [-0, +0] */
static void mask_plan(lua_State *L, int idx, const struct brm_target *t, int headers) {
    struct brm_buf m;
    brm_buf_init(&m);
    luaL_checkstack(L, 6, NULL);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        size_t klen = 0;
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &klen) : NULL;
        if (lua_type(L, -1) == LUA_TTABLE) {
            mask_plan(L, lua_gettop(L), t, k && strcmp(k, "headers") == 0);
        } else if (lua_type(L, -1) == LUA_TSTRING) {
            if (headers && k && credential_header(k, klen)) {
                brm_buf_puts(&m, "****");
            } else {
                brm_outbox_mask(t, lua_tostring(L, -1), &m);
            }
            lua_pushvalue(L, -2);
            lua_pushlstring(L, m.data, m.len);
            lua_rawset(L, idx); /* an existing key: the traversal goes on */
        }
        lua_pop(L, 1);
    }
    brm_buf_reset(&m);
}

struct shown {
    struct brm_console *c;
    struct brm_buf *out;
    size_t n;
};

/* The delivery, then the request it makes, secrets masked. */
static int show_delivery(void *arg, const struct brm_delivery *d) {
    struct shown *s = arg;
    struct brm_buf *b = s->out;
    const struct brm_target *t = brm_config_target(s->c->cfg, d->target);
    brm_buf_puts(b, "{\"delivery\":");
    delivery_json(b, d);
    brm_buf_puts(b, ",\"request\":");
    if (d->state == BRM_DELIVERY_DONE) {
        brm_buf_puts(b, "null,\"request_note\":\"a done delivery keeps no request\"");
    } else if (!t) {
        /* Its secrets are not known any more: nothing is shown. */
        brm_buf_puts(b, "null,\"request_note\":\"its target is not in the running config\"");
    } else if (d->method && d->url) {
        brm_buf_puts(b, "{\"method\":");
        brm_buf_json_string(b, d->method, strlen(d->method));
        put_masked(b, "url", t, d->url);
        brm_buf_puts(b, ",\"headers\":[");
        size_t k = 0;
        for (const char *h = d->headers; h && *h;) {
            size_t n = strcspn(h, "\n");
            if (k++) brm_buf_puts(b, ",");
            put_header(b, t, h, n);
            h += n + (h[n] == '\n');
        }
        brm_buf_printf(b, "],\"signed\":%s", d->sign ? "true" : "false");
        if (d->ticket) put_masked(b, "order", t, d->ticket); /* a kafka key, say */
        if (d->body) {
            char *body = brm_xstrndup(d->body, d->body_len);
            put_masked(b, "body", t, body);
            free(body);
        }
        brm_buf_puts(b, "}");
    } else if (d->plan) {
        lua_State *L = s->c->L;
        struct brm_err err;
        int top = lua_gettop(L);
        brm_buf_puts(b, "{\"kind\":\"plan\"");
        if (brm_json_decode(L, d->plan, strlen(d->plan), &err) == 0 &&
            lua_type(L, -1) == LUA_TTABLE) {
            mask_plan(L, lua_gettop(L), t, 0);
            if (brm_json_encode(L, lua_gettop(L), &err) == 0)
                put_masked(b, "plan", t, lua_tostring(L, -1));
            else
                brm_buf_puts(b, ",\"plan\":null");
        } else {
            brm_buf_puts(b, ",\"plan\":null"); /* not a plan this brume can show */
        }
        lua_settop(L, top);
        brm_buf_puts(b, "}");
    } else {
        brm_buf_puts(b, "null,\"request_note\":\"no request is stored\"");
    }
    return 0;
}

static int show_attempt(void *arg, const struct brm_attempt *a) {
    struct shown *s = arg;
    struct brm_buf *b = s->out;
    brm_buf_printf(b, "%s{\"at\":%.3f,\"status\":%d", s->n++ ? "," : "", a->at, a->status);
    put_string(b, "answer", a->answer);
    put_string(b, "error", a->error);
    brm_buf_puts(b, "}");
    return 0;
}

static void api_delivery(void *arg, struct brm_http_req *req) {
    struct brm_console *c = arg;
    if (!allowed(c, req, 0)) return;
    long long id;
    if (param_int(req, "id", 1, INT64_MAX, 0, &id) < 0 || id == 0) {
        reply_error(req, 400, "id: a delivery's id");
        return;
    }
    struct brm_buf b;
    struct brm_err err;
    brm_buf_init(&b);
    struct shown s = { c, &b, 0 };
    int rc = brm_store_delivery(c->store, id, show_delivery, &s, &err);
    if (rc > 0) {
        brm_buf_puts(&b, ",\"attempts\":[");
        rc = brm_store_attempts(c->store, id, ATTEMPTS_SHOWN, show_attempt, &s, &err) < 0 ? -1 : 1;
        brm_buf_puts(&b, "]}");
    }
    if (rc < 0)
        reply_error(req, 500, err.msg);
    else if (rc == 0)
        reply_error(req, 404, "no such delivery");
    else
        reply_json(req, 200, &b);
    brm_buf_reset(&b);
}

/* ---- retry and drop: jobs for the writer -------------------------------- */

struct ids {
    int64_t v[CHANGE_STEP];
    int n;
};

static int collect_id(void *arg, const struct brm_delivery *d) {
    struct ids *ids = arg;
    ids->v[ids->n++] = d->id;
    return 0;
}

/* On the writer's thread, in its open transaction: one step. */
static int write_change(struct brm_journal_job *job, struct brm_store *st, struct brm_err *err) {
    struct change *ch = (struct change *)job;
    if (ch->txn) return brm_state_save(ch->txn, st, err);
    struct ids *ids = brm_xcalloc(1, sizeof(*ids));
    int rc = 0;
    ch->step_changed = 0;
    ch->step_next = 0;
    if (ch->id) {
        ids->v[ids->n++] = ch->id;
    } else {
        struct brm_delivery_query q = ch->q;
        q.limit = CHANGE_STEP;
        rc = brm_store_find_deliveries(st, &q, collect_id, ids, err);
        ch->step_next = q.next;
    }
    for (int i = 0; rc == 0 && i < ids->n; i++) {
        int one =
            ch->drop ? brm_store_drop(st, ids->v[i], err) : brm_store_retry(st, ids->v[i], err);
        if (one < 0) rc = -1;
        ch->step_changed += one > 0;
    }
    free(ids);
    return rc;
}

/* From another thread (the writer's, Redis's): back to the main thread's
 * loop. */
static void hand_back(struct brm_console *c, struct change *ch) {
    pthread_mutex_lock(&c->lock);
    ch->next = c->done;
    c->done = ch;
    pthread_mutex_unlock(&c->lock);
    uint64_t one = 1;
    if (write(c->donefd, &one, sizeof(one)) < 0) { /* saturated: the loop looks anyway */
    }
}

/* On the writer's thread. */
static void change_done(struct brm_journal_job *job, int stored, const struct brm_err *err) {
    struct change *ch = (struct change *)job;
    struct brm_console *c = ch->c;
    ch->stored = stored;
    if (ch->txn) brm_state_release(ch->txn, stored); /* refused: undone */
    ch->txn = NULL;
    if (!stored) snprintf(ch->error, sizeof(ch->error), "%s", err ? err->msg : "not stored");
    hand_back(c, ch);
}

static void free_change(struct change *ch) {
    free(ch->target);
    brm_buf_reset(&ch->answer);
    free(ch);
}

static void submit_change(struct brm_console *c, struct change *ch) {
    ch->job = (struct brm_journal_job){ .write = write_change, .done = change_done, .durable = 1 };
    brm_journal_submit(c->journal, &ch->job);
}

/* A change's step came back: go on, or answer. */
static void step_back(struct brm_console *c, struct change *ch) {
    if (ch->status) { /* answered in Redis */
        reply_json(ch->req, ch->status, &ch->answer);
        free_change(ch);
        return;
    }
    if (!ch->stored) {
        char msg[700];
        snprintf(msg, sizeof(msg), "the store refused the change (%ld changed before): %s",
                 ch->changed, ch->error);
        reply_error(ch->req, 503, msg);
        free_change(ch);
        return;
    }
    ch->changed += ch->step_changed;
    if (ch->q.limit < 0) { /* a timer's or digest's change */
        struct brm_buf b;
        brm_buf_init(&b);
        brm_buf_puts(&b, "{\"ok\":true}");
        reply_json(ch->req, 200, &b);
        brm_buf_reset(&b);
        free_change(ch);
        return;
    }
    if (!ch->drop && ch->step_changed) brm_outbox_wake(c->outbox);
    if (!ch->id && ch->step_next) { /* a full step: the next one below it */
        ch->q.before = ch->step_next;
        submit_change(c, ch);
        return;
    }
    struct brm_buf b;
    brm_buf_init(&b);
    brm_buf_printf(&b, "{\"ok\":true,\"changed\":%ld}", ch->changed);
    if (ch->id && !ch->changed)
        reply_error(ch->req, 404,
                    ch->drop ? "no such delivery" : "no such pending or dead delivery");
    else
        reply_json(ch->req, 200, &b);
    brm_buf_reset(&b);
    free_change(ch);
}

static void on_change_done(evutil_socket_t fd, short what, void *arg) {
    struct brm_console *c = arg;
    uint64_t v;
    (void)what;
    if (read(fd, &v, sizeof(v)) < 0) { /* EAGAIN: drained already */
    }
    pthread_mutex_lock(&c->lock);
    struct change *list = c->done;
    c->done = NULL;
    pthread_mutex_unlock(&c->lock);
    while (list) {
        struct change *next = list->next;
        step_back(c, list);
        list = next;
    }
}

/*
 * POST /api/deliveries/retry, /api/deliveries/drop: {"id": N}, or {"all":
 * true, "status": "dead" | "pending", "target", "since", "until"} for every
 * delivery the filter matches (in steps, each its own transaction).
 */
static void api_change(void *arg, struct brm_http_req *req) {
    struct brm_console *c = arg;
    if (!allowed(c, req, 1) || decode_body(c, req) < 0) return;
    lua_State *L = c->L;
    struct change *ch = brm_xcalloc(1, sizeof(*ch));
    double id = 0;
    size_t n;
    ch->c = c;
    ch->req = req;
    ch->drop = req->path_len >= 5 && memcmp(req->path + req->path_len - 5, "/drop", 5) == 0;
    ch->q.state = -1;
    static const char *const keys[] = { "id", "all", "status", "target", "since", "until", NULL };
    char msg[1024];
    const char *bad = NULL;
    lua_getfield(L, 1, "all");
    int all = lua_toboolean(L, -1), all_type = lua_type(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, 1, "target");
    int target_type = lua_type(L, -1);
    lua_pop(L, 1);
    const char *status = member_string(L, "status", &n);
    const char *target = member_string(L, "target", &n);
    if (!only_keys(L, keys, msg, sizeof(msg))) {
        snprintf(msg + strlen(msg), sizeof(msg) - strlen(msg),
                 " (the keys are id, or all, status, target, since and until)");
        bad = msg;
    } else if (member_number(L, "id", &id)) {
        if (id < 1 || id > 9e15 || id != floor(id)) bad = "id: a delivery's id";
        if (all_type != LUA_TNIL) bad = "id or all, not both";
        ch->id = (int64_t)id;
    } else if (!all || all_type != LUA_TBOOLEAN) {
        bad = "give the delivery's id, or all: true with a status filter";
    } else if (!status || parse_state(status, &ch->q.state) < 0 || ch->q.state == 1 ||
               ch->q.state < 0) {
        bad = "status: \"dead\" or \"pending\" (done deliveries stay: their keys stop re-runs)";
    } else if (target_type != LUA_TNIL && !target) {
        bad = "target: a target's name";
    } else if (member_time(L, "since", &ch->q.since, msg, sizeof(msg)) < 0 ||
               member_time(L, "until", &ch->q.until, msg, sizeof(msg)) < 0) {
        bad = msg;
    } else {
        ch->target = target ? brm_xstrdup(target) : NULL;
        ch->q.target = ch->target;
    }
    if (bad) {
        reply_error(req, 400, bad);
        lua_settop(L, 0);
        free_change(ch);
        return;
    }
    char what[64];
    snprintf(what, sizeof(what), "%lld", (long long)ch->id);
    brm_log_info(ch->drop ? "console: dropping deliveries" : "console: retrying deliveries",
                 "delivery", ch->id ? what : "all matching", "status", status, "target", target,
                 "peer", req->peer);
    lua_settop(L, 0);
    submit_change(c, ch);
}

/* ---- timers and digests -------------------------------------------------- */

/* One pending timer or digest, as the list shows it. */
static void list_timer(void *arg, int kind, const char *fullkey, const char *rule, size_t rule_len,
                       const char *name, double due, const char *data, long count) {
    struct brm_buf *b = arg;
    (void)fullkey;
    if (b->data[b->len - 1] != '[') brm_buf_puts(b, ",");
    brm_buf_printf(b, "{\"kind\":\"%s\",\"rule\":", kind == BRM_FIRED_TIMER ? "timer" : "digest");
    brm_buf_json_string(b, rule, rule_len);
    brm_buf_puts(b, ",\"key\":");
    brm_buf_json_string(b, name, strlen(name));
    brm_buf_printf(b, ",\"due\":%.3f", due);
    if (kind == BRM_FIRED_TIMER)
        brm_buf_printf(b, ",\"data\":%s}", data ? data : "null");
    else
        brm_buf_printf(b, ",\"count\":%ld}", count);
}

#define REDIS_AWAY                                                                                 \
    "{\"ok\":false,\"error\":\"Redis, where the timers are, did not answer: try again\"}"

/* Shared state, on Redis's thread: the listing, as list_timer writes it. */
static void listed(void *arg, const struct brm_shared_due *v, size_t n, long total) {
    struct change *ch = arg;
    if (total < 0) {
        ch->status = 503;
        brm_buf_puts(&ch->answer, REDIS_AWAY);
    } else {
        ch->status = 200;
        brm_buf_printf(&ch->answer, "{\"store\":true,\"shared\":true,\"total\":%ld,\"timers\":[",
                       total);
        for (size_t i = 0; i < n; i++)
            brm_state_due_entry(v[i].key, v[i].value, v[i].due, list_timer, &ch->answer);
        brm_buf_puts(&ch->answer, "]}");
    }
    hand_back(ch->c, ch);
}

/* Shared state, on Redis's thread: a cancel's or fire's outcome. */
static void changed_due(void *arg, int result) {
    struct change *ch = arg;
    ch->status = result == 1 ? 200 : result == 0 ? 404 : 503;
    brm_buf_puts(&ch->answer, result == 1   ? "{\"ok\":true}"
                              : result == 0 ? "{\"ok\":false,\"error\":\"no such timer or digest\"}"
                                            : REDIS_AWAY);
    hand_back(ch->c, ch);
}

/*
 * The timers and digests rules armed: GET lists the soonest ({"timers":
 * [{"kind": "timer"|"digest", "rule", "key", "due", "data"|"count"}],
 * "store": true}), POST cancel and fire one ({"kind", "rule", "key"}: its
 * change goes through the writer like a rule's; {"ok": true} once stored, or
 * 404 when there is none). With shared state they are Redis's, every
 * instance's ("shared": true, and "total"), and a cancel or fire is made
 * there. Returns the status, or 0 when the answer comes later.
 */
static int timers(struct brm_console *c, struct brm_http_req *req, const char *op, const char *kind,
                  const char *rule, const char *key, struct brm_buf *out) {
    struct change *ch;
    if (strcmp(op, "list") == 0) {
        if (!c->shared) {
            brm_buf_puts(out, "{\"store\":true,\"timers\":[");
            brm_state_each_due(c->state, MAX_TIMERS_SHOWN, list_timer, out);
            brm_buf_puts(out, "]}");
            return 200;
        }
        ch = brm_xcalloc(1, sizeof(*ch));
        ch->c = c;
        ch->req = req;
        brm_shared_list_due(c->shared, MAX_TIMERS_SHOWN, listed, ch);
        return 0;
    }
    int fire = strcmp(op, "fire") == 0;
    char *full = brm_state_due_key(kind && strcmp(kind, "digest") == 0, rule, key);
    struct brm_state_txn *t = NULL;
    if (!c->shared) {
        t = brm_state_begin(c->state);
        int rc = fire ? brm_state_due_now(c->state, full, brm_time_now(), t)
                      : brm_state_cancel_due(c->state, full, t);
        if (rc != 1) {
            free(full);
            brm_state_release(t, 0);
            brm_buf_puts(out, rc == BRM_STATE_BUSY
                                  ? "{\"ok\":false,\"error\":\"a rule is changing it: try again\"}"
                                  : "{\"ok\":false,\"error\":\"no such timer or digest\"}");
            return rc == BRM_STATE_BUSY ? 409 : 404;
        }
    }
    ch = brm_xcalloc(1, sizeof(*ch));
    ch->c = c;
    ch->req = req;
    brm_log_info(fire ? "console: firing a timer now" : "console: cancelling a timer", "rule", rule,
                 "timer", key, "peer", req->peer);
    if (c->shared) {
        brm_shared_change_due(c->shared, full, fire, brm_time_now(), changed_due, ch);
    } else {
        ch->txn = t;
        ch->q.limit = -1; /* step_back: answers a timer's change */
        submit_change(c, ch);
    }
    free(full);
    return 0;
}

static void api_timers(void *arg, struct brm_http_req *req) {
    struct brm_console *c = arg;
    int writes = req->method == BRM_HTTP_POST;
    if (!allowed(c, req, writes) || (writes && decode_body(c, req) < 0)) return;
    size_t n;
    const char *op = !writes ? "list"
                     : req->path_len >= 5 && memcmp(req->path + req->path_len - 5, "/fire", 5) == 0
                         ? "fire"
                         : "cancel";
    const char *rule = writes ? member_string(c->L, "rule", &n) : NULL;
    const char *key = writes ? member_string(c->L, "key", &n) : NULL;
    struct brm_buf b;
    brm_buf_init(&b);
    if (writes && (!rule || !key)) {
        reply_error(req, 400, "rule and key: the timer's or digest's");
    } else {
        const char *kind = writes ? member_string(c->L, "kind", &n) : NULL;
        int st = timers(c, req, op, kind, rule, key, &b);
        if (st) reply_json(req, st, &b);
    }
    lua_settop(c->L, 0);
    brm_buf_reset(&b);
}

/* ---- rules and the playground -------------------------------------------- */

static void api_rules(void *arg, struct brm_http_req *req) {
    struct brm_console *c = arg;
    if (!allowed(c, req, 0)) return;
    struct brm_buf b;
    brm_buf_init(&b);
    brm_buf_printf(&b, "{\"rule_set\":%ld,\"rules\":%s}", c->generation, rule_list(c));
    reply_json(req, 200, &b);
    brm_buf_reset(&b);
}

/* 1 when NAME is a rule file of the running set's rules folder. */
static int is_rule_file(struct brm_console *c, const char *name) {
    size_t n = strlen(name);
    if (n < 5 || n > 255 || strcmp(name + n - 4, ".lua") != 0 || strchr(name, '/') ||
        name[0] == '.')
        return 0;
    struct brm_buf list;
    brm_buf_init(&list);
    int found = 0;
    if (brm_snapshot_list(c->files, c->cfg->rules_dir, &list) == 0)
        for (char *p = list.data, *nl; p && !found && (nl = strchr(p, '\n')); p = nl + 1)
            found = (size_t)(nl - p) == n && memcmp(p, name, n) == 0;
    brm_buf_reset(&list);
    return found;
}

/* GET /api/rule?file=x.lua: the text the running set was built from. */
static void api_rule(void *arg, struct brm_http_req *req) {
    struct brm_console *c = arg;
    if (!allowed(c, req, 0)) return;
    char file[256];
    if (param(req, "file", file, sizeof(file)) <= 0 || !is_rule_file(c, file)) {
        reply_error(req, 404, "file: a rule file of the rules folder (x.lua)");
        return;
    }
    struct brm_buf text, b;
    brm_buf_init(&text);
    brm_buf_init(&b);
    char *path = brm_path_join(c->cfg->rules_dir, file);
    if (brm_snapshot_read(c->files, path, PLAYGROUND_MAX, &text) < 0) {
        reply_error(req, 404, "the running set has no such rule file");
    } else {
        brm_buf_puts(&b, "{\"file\":");
        brm_buf_json_string(&b, file, strlen(file));
        brm_buf_puts(&b, ",\"text\":");
        brm_buf_json_string(&b, text.data ? text.data : "", text.len);
        brm_buf_puts(&b, "}");
        reply_json(req, 200, &b);
    }
    free(path);
    brm_buf_reset(&text);
    brm_buf_reset(&b);
}

static int copy_body(void *arg, const struct brm_body *body) {
    brm_buf_append(arg, body->body, body->len);
    return 0;
}

/*
 * A playground run. Rules may take their limits on each of up to
 * PLAYGROUND_EVENTS events, so the run has a thread of its own: the
 * console's thread also takes signals, reloads and timers. One at a time.
 */
struct play {
    struct brm_console *c;
    struct brm_http_req *req;
    const struct brm_config *cfg; /* references */
    struct brm_snapshot *files;
    struct brm_buf payload;
    int64_t id;
    _Atomic int cancel; /* brume stops: the rules' calls end at once */
    struct brm_buf answer;
    pthread_t thread;
};

/* {"ok":false,"errors":[...]}: what kept the playground from running. */
static void play_errors(struct brm_buf *b, const struct brm_errors *errs) {
    brm_buf_puts(b, "{\"ok\":false,\"errors\":[");
    for (size_t i = 0; i < errs->n; i++) {
        char msg[1024];
        brm_err_format(&errs->v[i], msg, sizeof(msg));
        if (i) brm_buf_puts(b, ",");
        brm_buf_json_string(b, msg, strlen(msg));
    }
    brm_buf_puts(b, "]}");
}

/* Runs the payload through a dry engine of the run's set with a fresh
 * state, as `brume test` does, and writes what it did into the answer. */
static void play(struct play *p) {
    struct brm_errors errs = { 0 };
    struct brm_engine *e = brm_engine_build_dry(p->cfg, p->files, &errs);
    if (!e) {
        play_errors(&p->answer, &errs);
        brm_errors_reset(&errs);
        return;
    }
    brm_engine_set_cancel(e, &p->cancel);
    struct brm_state *state = brm_state_new();
    brm_engine_set_state(e, state);
    struct brm_run_log runs = { 0 };
    struct brm_dispatch_stats stats = { .log = &runs };
    struct brm_actions actions = { 0 };
    struct brm_envelope env;
    struct brm_err err;
    struct brm_batch batch = { "console", (uint64_t)p->id, brm_time_now(), 0, NULL, 0 };
    lua_State *L = brm_engine_state(e);
    const char *payload = p->payload.data ? p->payload.data : "";
    if (brm_json_envelope(L, payload, p->payload.len, &env, &err) != 0) {
        brm_errors_addf(&errs, NULL, 0, "not a Mist webhook body: %s", err.msg);
    } else if (env.nevents > PLAYGROUND_EVENTS) {
        lua_pop(L, 1);
        brm_errors_addf(&errs, NULL, 0, "%zu events: the playground runs %d at most", env.nevents,
                        PLAYGROUND_EVENTS);
    } else {
        brm_engine_dispatch(e, &env, &batch, &actions, &stats);
    }
    struct brm_buf *b = &p->answer;
    if (errs.n) {
        play_errors(b, &errs);
    } else {
        brm_run_log_end(&runs);
        brm_buf_puts(b, "{\"ok\":true,\"topic\":");
        brm_buf_json_string(b, env.name, strlen(env.name));
        brm_buf_printf(b, ",\"events\":%zu,\"calls\":%zu,\"failed\":%zu,\"runs\":", env.nevents,
                       stats.runs, stats.errors);
        put_runs(b, runs.text.data, runs.text.len);
        brm_buf_puts(b, ",\"messages\":[");
        for (size_t i = 0; i < actions.n; i++) {
            if (i) brm_buf_puts(b, ",");
            brm_action_json(&actions.v[i], b);
        }
        brm_buf_puts(b, "]}");
    }
    brm_buf_reset(&runs.text);
    brm_actions_reset(&actions);
    brm_errors_reset(&errs);
    brm_engine_free(e);
    brm_state_free(state);
}

static void *play_main(void *arg) {
    struct play *p = arg;
    brm_thread_name("playground");
    play(p);
    uint64_t one = 1;
    if (write(p->c->playfd, &one, sizeof(one)) < 0) { /* saturated: the loop looks anyway */
    }
    return NULL;
}

static void free_play(struct play *p) {
    brm_config_free(p->cfg);
    brm_snapshot_free(p->files);
    brm_buf_reset(&p->payload);
    brm_buf_reset(&p->answer);
    free(p);
}

/* The run ended: answer it (every answer is 200: the run worked, and says
 * what it found). */
static void on_play_done(evutil_socket_t fd, short what, void *arg) {
    struct brm_console *c = arg;
    (void)what;
    uint64_t n;
    if (read(fd, &n, sizeof(n)) < 0 || !c->play) return;
    struct play *p = c->play;
    c->play = NULL;
    pthread_join(p->thread, NULL);
    reply_json(p->req, 200, &p->answer);
    free_play(p);
}

/*
 * POST /api/playground: {"payload": a body (object or text) | "event": a
 * journaled body's id, "file": "x.lua", "text": an edited x.lua (optional,
 * never saved)}.
 */
static void api_playground(void *arg, struct brm_http_req *req) {
    struct brm_console *c = arg;
    if (!allowed(c, req, 1)) return;
    if (c->play) {
        static const char busy[] = "{\"ok\":false,\"error\":\"the playground is busy with "
                                   "another run\"}\n";
        reply(req, 503, "application/json", busy, sizeof(busy) - 1, "Retry-After: 1\r\n");
        return;
    }
    if (decode_body(c, req) < 0) return;
    lua_State *L = c->L;
    struct brm_buf payload;
    struct brm_err err;
    brm_buf_init(&payload);
    size_t n = 0, text_len = 0;
    double id = 0;
    const char *bad = NULL, *file = member_string(L, "file", &n);
    const char *text = member_string(L, "text", &text_len);
    lua_getfield(L, 1, "payload");
    if (lua_type(L, -1) == LUA_TTABLE && brm_json_encode(L, lua_gettop(L), &err) == 0)
        lua_replace(L, -2);
    if (lua_type(L, -1) == LUA_TSTRING) {
        const char *s = lua_tolstring(L, -1, &n);
        brm_buf_append(&payload, s, n);
    } else if (member_number(L, "event", &id)) {
        int rc = id >= 1 && id == floor(id)
                     ? brm_store_body(c->store, (int64_t)id, copy_body, &payload, &err)
                     : 0;
        if (rc <= 0) bad = "event: no such body in the journal";
    } else {
        bad = "payload (a webhook body) or event (a journaled body's id)";
    }
    if (!bad && (text != NULL) != (file != NULL)) bad = "file and text go together";
    if (!bad && file && !is_rule_file(c, file)) bad = "file: a rule file of the rules folder";
    if (bad) {
        reply_error(req, 400, bad);
    } else {
        struct play *p = brm_xcalloc(1, sizeof(*p));
        p->c = c;
        p->req = req;
        p->cfg = brm_config_ref(c->cfg);
        if (file) {
            char *path = brm_path_join(c->cfg->rules_dir, file);
            p->files = brm_snapshot_with(c->files, path, text, text_len);
            free(path);
        } else {
            p->files = brm_snapshot_ref(c->files);
        }
        p->payload = payload; /* the run's now */
        brm_buf_init(&payload);
        p->id = (int64_t)id;
        sigset_t block, old; /* the signals stay with this thread */
        sigemptyset(&block);
        sigaddset(&block, SIGTERM);
        sigaddset(&block, SIGINT);
        sigaddset(&block, SIGHUP);
        pthread_sigmask(SIG_BLOCK, &block, &old);
        int rc = pthread_create(&p->thread, NULL, play_main, p);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (rc != 0) {
            reply_error(req, 503, "cannot start the playground's thread");
            free_play(p);
        } else {
            c->play = p;
        }
    }
    lua_settop(L, 0);
    brm_buf_reset(&payload);
}

/* ---- the page ------------------------------------------------------------ */

static void page(void *arg, struct brm_http_req *req) {
    (void)arg;
    static const struct {
        const char *path, *name, *type;
    } files[] = {
        { "/", "index.html", "text/html; charset=utf-8" },
        { "/app.js", "app.js", "text/javascript; charset=utf-8" },
        { "/style.css", "style.css", "text/css; charset=utf-8" },
    };
    for (size_t i = 0; i < BRM_ARRAY_LEN(files); i++) {
        if (strlen(files[i].path) != req->path_len ||
            memcmp(files[i].path, req->path, req->path_len) != 0)
            continue;
        for (size_t k = 0; k < brm_console_asset_count; k++) {
            if (strcmp(brm_console_assets[k].name, files[i].name) == 0) {
                reply(req, 200, files[i].type, brm_console_assets[k].src, brm_console_assets[k].len,
                      NULL);
                return;
            }
        }
    }
    reply_error(req, 404, "no such page");
}

size_t brm_console_routes(struct brm_console *c, struct brm_http_route *out) {
    static const struct brm_http_route proto[] = {
        { "/", "admin", BRM_HTTP_GET, 0, NULL, page, NULL },
        { "/app.js", "admin", BRM_HTTP_GET, 0, NULL, page, NULL },
        { "/style.css", "admin", BRM_HTTP_GET, 0, NULL, page, NULL },
        { "/api/overview", "admin", BRM_HTTP_GET, 0, NULL, api_overview, NULL },
        { "/api/events", "admin", BRM_HTTP_GET, 0, NULL, api_events, NULL },
        { "/api/event", "admin", BRM_HTTP_GET, 0, NULL, api_event, NULL },
        { "/api/deliveries", "admin", BRM_HTTP_GET, 0, NULL, api_deliveries, NULL },
        { "/api/delivery", "admin", BRM_HTTP_GET, 0, NULL, api_delivery, NULL },
        { "/api/deliveries/retry", "admin", BRM_HTTP_POST, 4096, NULL, api_change, NULL },
        { "/api/deliveries/drop", "admin", BRM_HTTP_POST, 4096, NULL, api_change, NULL },
        { "/api/timers", "admin", BRM_HTTP_GET, 0, NULL, api_timers, NULL },
        { "/api/timers/cancel", "admin", BRM_HTTP_POST, 4096, NULL, api_timers, NULL },
        { "/api/timers/fire", "admin", BRM_HTTP_POST, 4096, NULL, api_timers, NULL },
        { "/api/rules", "admin", BRM_HTTP_GET, 0, NULL, api_rules, NULL },
        { "/api/rule", "admin", BRM_HTTP_GET, 0, NULL, api_rule, NULL },
        { "/api/playground", "admin", BRM_HTTP_POST, PLAYGROUND_MAX, NULL, api_playground, NULL },
    };
    _Static_assert(BRM_ARRAY_LEN(proto) <= BRM_CONSOLE_MAX_ROUTES, "room for the routes");
    for (size_t i = 0; i < BRM_ARRAY_LEN(proto); i++) {
        out[i] = proto[i];
        out[i].arg = c;
    }
    return BRM_ARRAY_LEN(proto);
}

/* ---- life ---------------------------------------------------------------- */

struct brm_console *brm_console_new(struct event_base *base, const char *path,
                                    struct brm_journal *j, struct brm_outbox *ob,
                                    struct brm_err *err) {
    struct brm_console *c = brm_xcalloc(1, sizeof(*c));
    c->base = base;
    c->journal = j;
    c->outbox = ob;
    c->donefd = c->playfd = -1;
    pthread_mutex_init(&c->lock, NULL);
    if (!(c->store = brm_store_open_reader(path, err))) goto fail;
    if (!(c->L = luaL_newstate())) {
        brm_err_set(err, "console: cannot create a Lua state");
        goto fail;
    }
    brm_json_open(c->L);
    lua_settop(c->L, 0);
    c->donefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (c->donefd < 0) {
        brm_err_set(err, "console: cannot create an eventfd: %s", strerror(errno));
        goto fail;
    }
    c->done_ev = event_new(base, c->donefd, EV_READ | EV_PERSIST, on_change_done, c);
    event_add(c->done_ev, NULL);
    c->playfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (c->playfd < 0) {
        brm_err_set(err, "console: cannot create an eventfd: %s", strerror(errno));
        goto fail;
    }
    c->play_ev = event_new(base, c->playfd, EV_READ | EV_PERSIST, on_play_done, c);
    event_add(c->play_ev, NULL);
    c->timer = event_new(base, -1, EV_PERSIST, on_sample, c);
    struct timeval every = { (time_t)SAMPLE_EVERY, 0 };
    event_add(c->timer, &every);
    on_sample(-1, 0, c); /* the first minute's start */
    return c;
fail:
    brm_console_free(c);
    return NULL;
}

void brm_console_set_state(struct brm_console *c, struct brm_state *state,
                           struct brm_shared *shared) {
    c->state = state;
    c->shared = shared;
}

void brm_console_free(struct brm_console *c) {
    if (!c) return;
    for (struct change *ch = c->done, *next; ch; ch = next) {
        next = ch->next;
        free_change(ch); /* its request went with the admin listener */
    }
    if (c->play) { /* its request went with the admin listener */
        atomic_store(&c->play->cancel, 1);
        pthread_join(c->play->thread, NULL);
        free_play(c->play);
    }
    if (c->timer) event_free(c->timer);
    if (c->done_ev) event_free(c->done_ev);
    if (c->donefd >= 0) close(c->donefd);
    if (c->play_ev) event_free(c->play_ev);
    if (c->playfd >= 0) close(c->playfd);
    if (c->L) lua_close(c->L);
    brm_store_close(c->store);
    brm_config_free(c->cfg);
    brm_snapshot_free(c->files);
    brm_buf_reset(&c->rules);
    brm_buf_reset(&c->reload);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

void brm_console_configure(struct brm_console *c, const struct brm_config *cfg,
                           struct brm_snapshot *files, long generation) {
    const struct brm_config *old = c->cfg;
    struct brm_snapshot *old_files = c->files;
    c->cfg = brm_config_ref(cfg);
    c->files = brm_snapshot_ref(files);
    c->generation = generation;
    brm_config_free(old);
    brm_snapshot_free(old_files);
}

void brm_console_reloaded(struct brm_console *c, const char *trigger,
                          const struct brm_errors *errs) {
    struct brm_buf *b = &c->reload;
    b->len = 0;
    brm_buf_printf(b, "{\"at\":%.3f,\"trigger\":", brm_time_now());
    brm_buf_json_string(b, trigger, strlen(trigger));
    brm_buf_printf(b, ",\"ok\":%s,\"errors\":[", errs ? "false" : "true");
    for (size_t i = 0; errs && i < errs->n && i < RELOAD_ERRORS; i++) {
        const struct brm_err *e = &errs->v[i];
        brm_buf_puts(b, i ? ",{\"file\":" : "{\"file\":");
        if (e->file[0])
            brm_buf_json_string(b, e->file, strlen(e->file));
        else
            brm_buf_puts(b, "null");
        brm_buf_printf(b, ",\"line\":%d,\"message\":", e->line);
        brm_buf_json_string(b, e->msg, strlen(e->msg));
        brm_buf_puts(b, "}");
    }
    brm_buf_puts(b, "]}");
}
