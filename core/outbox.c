#define _GNU_SOURCE
#include "outbox.h"

#include <curl/curl.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json.h"
#include "log.h"
#include "metrics.h"
#include "verify.h"

#define MAX_RESPONSE   (64 * 1024) /* kept of an answer: for ticket ids and error excerpts */
#define BACKOFF_CAP    600.0       /* the longest wait between two attempts */
#define POLL_INTERVAL  5.0         /* look at the store at least this often */
#define KEEP_DONE      (7 * 86400) /* done deliveries are kept this long (for their keys) */
#define PRUNE_INTERVAL 3600.0
#define FILE_BATCH     256 /* kind-file deliveries one pass may make */

enum step { STEP_PLAIN, STEP_LOOKUP, STEP_CREATE, STEP_UPDATE, NSTEPS };

/* One request of a delivery, decoded from its JSON. */
struct request {
    char *method, *url, *body, *ref;
    size_t body_len;
    struct curl_slist *headers;
    int sign; /* Standard Webhooks */
    int present;
};

struct target_rt {
    const struct brm_target *t;
    const struct brm_config *cfg; /* T's (a reference) */
    int retired;                  /* a reload removed it: freed when its last attempt ends */
    int inflight;
    double tokens, refilled; /* rate: a token bucket of one */
    int fd;                  /* kind file */
    struct brm_counter *done, *retried, *dead;
};

struct job {
    struct brm_outbox *ob;
    struct target_rt *tr;
    struct job *next;
    int64_t id;
    char *key, *ticket, *rule, *event;
    int attempts;
    double created, expires;
    struct request req[NSTEPS];
    enum step step;
    int closes;  /* a ticket plan that resolves its ticket */
    long status; /* of the last request */
    char ref[256];
    CURL *easy;
    struct brm_buf response;
    double retry_after;
    char errbuf[CURL_ERROR_SIZE];
};

/* The outcome of an attempt, written to the store in one transaction per
 * loop iteration. */
struct result {
    int64_t id;
    enum brm_delivery_state state;
    double next_at;
    int status;
    char *error;
};

struct brm_outbox {
    const struct brm_config *cfg; /* a reference */
    char *path;
    struct brm_store *store; /* the outbox thread's own connection */
    struct target_rt **targets;
    size_t ntargets;
    pthread_mutex_t lock;              /* guards next_cfg */
    const struct brm_config *next_cfg; /* a reload's, for the thread to take */
    pthread_t thread;
    int running;
    struct event_base *base;
    int mailfd;
    struct event *mail, *timer, *curl_timer, *work, *stop_timer;
    CURLM *multi;
    lua_State *L; /* decodes requests and answers; no user code */
    struct job *jobs;
    struct result *results;
    size_t nresults, cap_results;
    _Atomic int stopping;
    double stop_wait;
    double paused_until; /* the store refused the last outcomes */
    double last_prune, last_count, last_orphans;
    _Atomic long pending;
    _Atomic long long oldest_ms;
};

static void take_config(struct brm_outbox *ob, const struct brm_config *cfg);

/* ---- masking ------------------------------------------------------------ */

void brm_outbox_mask(const struct brm_target *t, const char *s, struct brm_buf *out) {
    out->len = 0;
    brm_buf_puts(out, "");
    while (*s) {
        size_t best = 0;
        for (size_t i = 0; t && i < t->nsecrets; i++) {
            size_t n = strlen(t->secrets[i]);
            if (n >= 4 && strncmp(s, t->secrets[i], n) == 0 && n > best) best = n;
        }
        if (best) {
            brm_buf_puts(out, "****");
            s += best;
        } else {
            brm_buf_append(out, s++, 1);
        }
    }
}

/* ---- adding (worker threads) -------------------------------------------- */

int brm_outbox_add(const struct brm_config *cfg, struct brm_store *st, const struct brm_actions *a,
                   double now, struct brm_err *err) {
    int added = 0;
    for (size_t i = 0; i < a->n; i++) {
        const struct brm_action *x = &a->v[i];
        const struct brm_target *t = brm_config_target(cfg, x->target);
        struct brm_delivery d = {
            .key = x->key,
            .target = x->target,
            .rule = x->rule,
            .topic = x->topic,
            .event = x->event_id,
            .request = x->request,
            .ticket = x->ticket,
            .created = now,
            .next_at = now,
            .expires = now + (t ? t->max_age : 86400),
        };
        int rc = brm_store_add_delivery(st, &d, err);
        if (rc < 0) return -1;
        added += rc;
    }
    return added;
}

void brm_outbox_wake(struct brm_outbox *ob) {
    uint64_t one = 1;
    if (write(ob->mailfd, &one, sizeof(one)) < 0) { /* the poll finds the work anyway */
    }
}

long brm_outbox_pending(const struct brm_outbox *ob, double *oldest) {
    if (oldest) *oldest = (double)atomic_load(&ob->oldest_ms) / 1000;
    return atomic_load(&ob->pending);
}

char *brm_outbox_store_path(const struct brm_config *cfg) {
    return brm_path_join(cfg->data_dir, "brume.db");
}

/* ---- decoding requests -------------------------------------------------- */

static char *opt_string(lua_State *L, int t, const char *k) {
    lua_getfield(L, t, k);
    char *v = lua_type(L, -1) == LUA_TSTRING ? brm_xstrdup(lua_tostring(L, -1)) : NULL;
    lua_pop(L, 1);
    return v;
}

static void request_reset(struct request *r) {
    free(r->method);
    free(r->url);
    free(r->body);
    free(r->ref);
    curl_slist_free_all(r->headers);
    memset(r, 0, sizeof(*r));
}

/* Reads the request table at IDX into R. */
static void read_request(lua_State *L, int idx, struct request *r) {
    r->present = 1;
    r->method = opt_string(L, idx, "method");
    r->url = opt_string(L, idx, "url");
    r->ref = opt_string(L, idx, "ref");
    lua_getfield(L, idx, "body");
    if (lua_type(L, -1) == LUA_TSTRING) {
        size_t n;
        const char *b = lua_tolstring(L, -1, &n);
        r->body = brm_xstrndup(b, n);
        r->body_len = n;
    }
    lua_pop(L, 1);
    lua_getfield(L, idx, "sign");
    r->sign = lua_type(L, -1) == LUA_TSTRING;
    lua_pop(L, 1);
    if (lua_getfield(L, idx, "headers") == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING) {
                char *h = brm_xasprintf("%s: %s", lua_tostring(L, -2), lua_tostring(L, -1));
                r->headers = curl_slist_append(r->headers, h);
                free(h);
            }
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
}

/* Decodes a delivery's stored request into JOB. -1 when it is not JSON. */
static int decode_job(struct brm_outbox *ob, struct job *job, const char *json) {
    lua_State *L = ob->L;
    struct brm_err err;
    if (brm_json_decode(L, json, strlen(json), &err) < 0 || lua_type(L, -1) != LUA_TTABLE) {
        lua_settop(L, 0);
        return -1;
    }
    static const char *const steps[] = {
        [STEP_LOOKUP] = "lookup", [STEP_CREATE] = "create", [STEP_UPDATE] = "update"
    };
    if (job->ticket) {
        lua_getfield(L, -1, "closes");
        job->closes = lua_toboolean(L, -1);
        lua_pop(L, 1);
        for (int s = STEP_LOOKUP; s < NSTEPS; s++) {
            if (lua_getfield(L, -1, steps[s]) == LUA_TTABLE)
                read_request(L, lua_gettop(L), &job->req[s]);
            lua_pop(L, 1);
        }
    } else {
        read_request(L, lua_gettop(L), &job->req[STEP_PLAIN]);
    }
    lua_settop(L, 0);
    return 0;
}

/* 1 when the string field FIELD of the table on top of the stack is one of
 * the '|'-separated VALUES. */
static int field_in(lua_State *L, const char *field, const char *values) {
    size_t n, vlen = strlen(values);
    lua_getfield(L, -1, field);
    const char *v = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : NULL;
    int in = 0;
    for (const char *p = values; v && p <= values + vlen && !in; p += strcspn(p, "|") + 1)
        in = strcspn(p, "|") == n && memcmp(p, v, n) == 0;
    lua_pop(L, 1);
    return in;
}

/* Replaces the array on top of the stack by its first element that passes
 * the test "field=a|b" or "field!=a|b" (nil when none does). */
static void pick_element(lua_State *L, const char *test) {
    char field[64];
    size_t n = strcspn(test, "!=");
    int negate = test[n] == '!';
    const char *values = test + n + (negate ? 2 : 1);
    snprintf(field, sizeof(field), "%.*s", (int)n, test);
    size_t len = lua_rawlen(L, -1);
    for (size_t i = 1; i <= len; i++) {
        if (lua_rawgeti(L, -1, (lua_Integer)i) == LUA_TTABLE &&
            field_in(L, field, values) != negate) {
            lua_remove(L, -2);
            return;
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    lua_pushnil(L);
}

/* The string at dotted PATH ("result.0.sys_id") of the JSON answer BODY;
 * array positions count from 0, and "?field!=a|b" picks the first element
 * whose field is not a or b ("?field=a|b": is). */
static int extract_ref(struct brm_outbox *ob, const char *body, size_t len, const char *path,
                       char *out, size_t size) {
    lua_State *L = ob->L;
    struct brm_err err;
    int found = 0;
    if (brm_json_decode(L, body, len, &err) < 0) return 0;
    char part[128];
    const char *p = path;
    while (*p && lua_type(L, -1) == LUA_TTABLE) {
        size_t n = strcspn(p, ".");
        snprintf(part, sizeof(part), "%.*s", (int)n, p);
        char *end;
        long idx = strtol(part, &end, 10);
        if (part[0] == '?') {
            pick_element(L, part + 1);
        } else {
            if (*part && !*end)
                lua_rawgeti(L, -1, idx + 1);
            else
                lua_getfield(L, -1, part);
            lua_remove(L, -2);
        }
        p += n + (p[n] == '.');
    }
    if (!*p && (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER)) {
        if (lua_isinteger(L, -1))
            snprintf(out, size, "%lld", (long long)lua_tointeger(L, -1));
        else
            snprintf(out, size, "%s", lua_tostring(L, -1));
        found = out[0] != '\0';
    }
    lua_settop(L, 0);
    return found;
}

/* ---- jobs --------------------------------------------------------------- */

static void job_free(struct job *job) {
    for (int s = 0; s < NSTEPS; s++) request_reset(&job->req[s]);
    if (job->easy) {
        curl_multi_remove_handle(job->ob->multi, job->easy);
        curl_easy_cleanup(job->easy);
    }
    brm_buf_reset(&job->response);
    free(job->key);
    free(job->ticket);
    free(job->rule);
    free(job->event);
    free(job);
}

static void target_free(struct target_rt *tr) {
    if (!tr) return;
    if (tr->fd >= 0) close(tr->fd);
    brm_config_free(tr->cfg);
    free(tr);
}

static void unlink_job(struct job *job) {
    struct job **p = &job->ob->jobs;
    while (*p && *p != job) p = &(*p)->next;
    if (*p) *p = job->next;
    if (--job->tr->inflight == 0 && job->tr->retired) {
        target_free(job->tr);
        job->tr = NULL;
    }
}

static void add_result(struct brm_outbox *ob, int64_t id, enum brm_delivery_state state,
                       double next_at, int status, const char *error) {
    if (ob->nresults == ob->cap_results) {
        ob->cap_results = ob->cap_results ? ob->cap_results * 2 : 16;
        ob->results = brm_xrealloc(ob->results, ob->cap_results * sizeof(*ob->results));
    }
    ob->results[ob->nresults++] =
        (struct result){ id, state, next_at, status, error ? brm_xstrdup(error) : NULL };
    event_active(ob->work, 0, 0);
}

/*
 * Writes the outcomes gathered so far, in one transaction. Returns 0, or
 * -1 when the store refused them (a full disk): they are kept to be written
 * later, and no attempt starts meanwhile - else a done delivery, still
 * pending in the store, would be sent again and again.
 */
static int flush_results(struct brm_outbox *ob) {
    struct brm_err err;
    if (!ob->nresults) return 0;
    if (brm_store_begin(ob->store, &err) == 0) {
        int ok = 1;
        for (size_t i = 0; i < ob->nresults && ok; i++) {
            struct result *r = &ob->results[i];
            ok = brm_store_finish(ob->store, r->id, r->state, r->next_at, r->status, r->error,
                                  &err) == 0;
        }
        if (ok && brm_store_commit(ob->store, &err) == 0) {
            for (size_t i = 0; i < ob->nresults; i++) free(ob->results[i].error);
            ob->nresults = 0;
            return 0;
        }
        brm_store_rollback(ob->store);
    }
    if (brm_time_now() >= ob->paused_until) /* once per pause, not per pass */
        brm_log_error("outbox: cannot record delivery outcomes; pausing", "error", err.msg);
    ob->paused_until = brm_time_now() + POLL_INTERVAL;
    return -1;
}

static const char *step_name(enum step s) {
    static const char *const names[] = { "request", "lookup", "create", "update" };
    return names[s];
}

/* The attempt is over: done, or dead, or pending again after a backoff. */
static void job_finish(struct job *job, int done, int retry, int status, const char *reason) {
    struct brm_outbox *ob = job->ob;
    struct target_rt *tr = job->tr;
    double now = brm_time_now();
    char id[32], attempt[16], st[16], request[32];
    snprintf(id, sizeof(id), "%lld", (long long)job->id);
    /* The key starts with the id of the body that sent it: its request. */
    snprintf(request, sizeof(request), "%.*s", (int)strcspn(job->key, ":"), job->key);
    snprintf(attempt, sizeof(attempt), "%d", job->attempts + 1);
    snprintf(st, sizeof(st), "%d", status);
    struct brm_buf masked;
    brm_buf_init(&masked);
    brm_outbox_mask(tr->t, reason ? reason : "", &masked);
    if (done) {
        add_result(ob, job->id, BRM_DELIVERY_DONE, now, status, NULL);
        brm_counter_add(tr->done, 1);
        brm_log_debug("delivered", "target", tr->t->name, "delivery", id, "request", request,
                      "event", job->event, "status", st);
    } else {
        /* Full jitter: anywhere up to the exponential ceiling (but not at
         * once: at least the backoff, or a second), and never before the
         * server said to come back. */
        double base = tr->t->backoff > 0 ? tr->t->backoff : 2;
        double ceiling = fmin(BACKOFF_CAP, base * pow(2, job->attempts));
        double delay = fmax(fmin(1.0, base), ceiling * ((double)random() / RAND_MAX));
        delay = fmax(delay, job->retry_after);
        if (retry && now + delay <= job->expires) {
            add_result(ob, job->id, BRM_DELIVERY_PENDING, now + delay, status, masked.data);
            brm_counter_add(tr->retried, 1);
            char in[32];
            snprintf(in, sizeof(in), "%.0fs", delay);
            brm_log_warn("delivery failed; will retry", "target", tr->t->name, "delivery", id,
                         "request", request, "event", job->event, "attempt", attempt, "status", st,
                         "error", masked.data, "retry_in", in);
        } else {
            char why[600];
            if (retry)
                snprintf(why, sizeof(why), "gave up after %.0fs: %s", now - job->created,
                         masked.data);
            else
                snprintf(why, sizeof(why), "%s", masked.data);
            add_result(ob, job->id, BRM_DELIVERY_DEAD, now, status, why);
            brm_counter_add(tr->dead, 1);
            brm_log_error("delivery dead", "target", tr->t->name, "delivery", id, "request",
                          request, "rule", job->rule, "event", job->event, "attempts", attempt,
                          "status", st, "error", why);
        }
    }
    brm_buf_reset(&masked);
    unlink_job(job); /* may free TR */
    job_free(job);
}

static size_t on_body(char *data, size_t size, size_t n, void *arg) {
    struct job *job = arg;
    size_t len = size * n;
    if (job->response.len < MAX_RESPONSE)
        brm_buf_append(&job->response, data,
                       len < MAX_RESPONSE - job->response.len ? len
                                                              : MAX_RESPONSE - job->response.len);
    return len;
}

/* Retry-After: seconds, or an HTTP date. */
static size_t on_header(char *data, size_t size, size_t n, void *arg) {
    struct job *job = arg;
    size_t len = size * n;
    static const char name[] = "retry-after:";
    if (len > sizeof(name) && strncasecmp(data, name, sizeof(name) - 1) == 0) {
        char v[64];
        snprintf(v, sizeof(v), "%.*s", (int)(len - sizeof(name) + 1), data + sizeof(name) - 1);
        char *end;
        double secs = strtod(v, &end);
        if (end == v) {
            time_t when = curl_getdate(v, NULL);
            secs = when > 0 ? (double)when - brm_time_now() : 0;
        }
        if (secs > 0) job->retry_after = fmin(secs, 86400);
    }
    return len;
}

/* Standard Webhooks: webhook-id (the delivery key, the same on every
 * attempt), webhook-timestamp and webhook-signature, made now. */
static struct curl_slist *sign_headers(struct job *job, struct request *r, struct curl_slist *h) {
    const char *secret = job->tr->t->signing_secret;
    size_t len = strlen(secret), keylen = len;
    unsigned char *key = brm_xmalloc(len + 4), mac[BRM_VERIFY_MAX_MAC];
    if (strncmp(secret, "whsec_", 6) == 0) { /* the adapter's check made sure it decodes */
        long n = brm_base64_decode(secret + 6, len - 6, key);
        keylen = n > 0 ? (size_t)n : 0;
    } else {
        memcpy(key, secret, len);
    }
    long ts = (long)brm_time_now();
    char *content =
        brm_xasprintf("%s.%ld.%.*s", job->key, ts, (int)r->body_len, r->body ? r->body : "");
    size_t n = brm_verify_hmac(BRM_VERIFY_SHA256, key, keylen, content, strlen(content), mac);
    char sig[BRM_VERIFY_MAX_MAC * 2], line[256];
    brm_base64_encode(mac, n, sig);
    snprintf(line, sizeof(line), "webhook-id: %s", job->key);
    h = curl_slist_append(h, line);
    snprintf(line, sizeof(line), "webhook-timestamp: %ld", ts);
    h = curl_slist_append(h, line);
    snprintf(line, sizeof(line), "webhook-signature: v1,%s", sig);
    h = curl_slist_append(h, line);
    free(content);
    memset(key, 0, keylen);
    free(key);
    return h;
}

static void job_fail_now(struct job *job, const char *reason);

/* Starts the HTTP request of the job's current step. */
static void perform(struct job *job) {
    struct brm_outbox *ob = job->ob;
    const struct brm_target *t = job->tr->t;
    struct request *r = &job->req[job->step];
    char *url = r->url;
    char *with_ref = NULL;
    if (job->ref[0] && strstr(r->url, "{ref}")) {
        char *enc = curl_easy_escape(NULL, job->ref, 0);
        struct brm_buf b;
        brm_buf_init(&b);
        const char *at = strstr(r->url, "{ref}");
        brm_buf_append(&b, r->url, (size_t)(at - r->url));
        brm_buf_puts(&b, enc ? enc : job->ref);
        brm_buf_puts(&b, at + 5);
        curl_free(enc);
        url = with_ref = b.data;
    }
    CURL *e = job->easy = curl_easy_init();
    if (!e) {
        free(with_ref);
        job_fail_now(job, "cannot create a transfer");
        return;
    }
    brm_buf_reset(&job->response);
    job->retry_after = 0;
    job->errbuf[0] = '\0';
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, job);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(t->timeout * 1000));
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(fmin(t->timeout, 10) * 1000));
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_USERAGENT, "brume/" BRM_VERSION);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, job);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, job);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, job->errbuf);
    if (t->proxy) curl_easy_setopt(e, CURLOPT_PROXY, t->proxy);
    if (strcmp(r->method, "GET") == 0) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, r->method);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body ? r->body : "");
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
    }
    /* The slist must live as long as the transfer: rebuilt into the
     * request's own list with the per-attempt headers at its end. */
    struct curl_slist *h = NULL;
    for (struct curl_slist *x = r->headers; x; x = x->next) h = curl_slist_append(h, x->data);
    h = curl_slist_append(h, "Expect:");
    if (r->sign && t->signing_secret) h = sign_headers(job, r, h);
    curl_slist_free_all(r->headers);
    r->headers = h;
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
    free(with_ref);
    curl_multi_add_handle(ob->multi, e);
}

/* Fails the whole attempt without a transfer (retried later). */
static void job_fail_now(struct job *job, const char *reason) {
    job_finish(job, 0, 1, 0, reason);
}

/* Appends the line of a kind-file delivery, stamped with when: the
 * adapter's JSON object gets an "at" member first. */
static void append_line(struct job *job) {
    struct request *r = &job->req[STEP_PLAIN];
    struct brm_buf line;
    char at[40];
    brm_buf_init(&line);
    brm_time_iso8601(brm_time_now(), at, sizeof(at));
    brm_buf_printf(&line, "{\"at\":\"%s\"", at);
    if (r->body_len > 2 && r->body[0] == '{') {
        brm_buf_puts(&line, ",");
        brm_buf_append(&line, r->body + 1, r->body_len - 1);
    } else {
        brm_buf_puts(&line, "}");
    }
    brm_buf_puts(&line, "\n");
    ssize_t w = write(job->tr->fd, line.data, line.len);
    int ok = w == (ssize_t)line.len;
    char why[256] = "";
    if (!ok)
        snprintf(why, sizeof(why), "writing %s failed: %s", job->tr->t->path,
                 w < 0 ? strerror(errno) : "short write");
    brm_buf_reset(&line);
    job_finish(job, ok, 1, 0, why);
}

/* Moves a ticket plan to its next step, or finishes it. */
static void next_step(struct job *job) {
    struct request *rq = job->req;
    struct brm_err err;
    switch (job->step) {
    case STEP_PLAIN: break;
    case STEP_LOOKUP:
        if (job->ref[0] && rq[STEP_UPDATE].present) {
            job->step = STEP_UPDATE;
        } else if (!job->ref[0] && rq[STEP_CREATE].present) {
            job->step = STEP_CREATE;
        } else {
            /* Found with nothing to add, or nothing to resolve. */
            job_finish(job, 1, 0, (int)job->status, NULL);
            return;
        }
        perform(job);
        return;
    case STEP_UPDATE:
        /* Resolved: the next message for this key is a new alert, with a
         * ticket of its own (the lookups find open tickets only). */
        if (job->closes &&
            brm_store_forget_ticket(job->ob->store, job->tr->t->name, job->ticket, &err) < 0)
            brm_log_error("outbox: cannot record a resolved ticket", "error", err.msg);
        break;
    case STEP_CREATE:
    case NSTEPS: break;
    }
    job_finish(job, 1, 0, (int)job->status, NULL);
}

static void start_job(struct brm_outbox *ob, struct target_rt *tr, struct brm_delivery *d) {
    struct job *job = brm_xcalloc(1, sizeof(*job));
    job->ob = ob;
    job->tr = tr;
    job->id = d->id;
    job->key = brm_xstrdup(d->key);
    job->ticket = d->ticket ? brm_xstrdup(d->ticket) : NULL;
    job->rule = brm_xstrdup(d->rule);
    job->event = brm_xstrdup(d->event);
    job->attempts = d->attempts;
    job->created = d->created;
    job->expires = d->expires;
    brm_buf_init(&job->response);
    job->next = ob->jobs;
    ob->jobs = job;
    tr->inflight++;
    if (decode_job(ob, job, d->request) < 0) {
        job_finish(job, 0, 0, 0, "the stored request is not JSON");
        return;
    }
    if (strcmp(tr->t->kind, "file") == 0) {
        append_line(job);
        return;
    }
    if (!job->ticket) {
        if (!job->req[STEP_PLAIN].method || !job->req[STEP_PLAIN].url) {
            job_finish(job, 0, 0, 0, "the stored request has no method or url");
            return;
        }
        job->step = STEP_PLAIN;
        perform(job);
        return;
    }
    int known = brm_store_ticket(ob->store, tr->t->name, job->ticket, job->ref, sizeof(job->ref));
    if (known > 0 && job->req[STEP_UPDATE].present)
        job->step = STEP_UPDATE;
    else if (known <= 0 && job->req[STEP_LOOKUP].present)
        job->step = STEP_LOOKUP;
    else if (known <= 0 && job->req[STEP_CREATE].present)
        job->step = STEP_CREATE;
    else {
        job_finish(job, 1, 0, 0, NULL); /* a resolve with no ticket: nothing to do */
        return;
    }
    perform(job);
}

static int retryable(CURLcode rc, long status) {
    switch (rc) {
    case CURLE_OK: return status == 408 || status == 425 || status == 429 || status >= 500;
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE: return 0; /* a config problem: retrying will not help */
    default: return 1;
    }
}

/* A transfer ended: decide what the job does next. */
static void transfer_done(struct job *job, CURLcode rc) {
    long status = 0;
    curl_easy_getinfo(job->easy, CURLINFO_RESPONSE_CODE, &status);
    job->status = status;
    curl_multi_remove_handle(job->ob->multi, job->easy);
    curl_easy_cleanup(job->easy);
    job->easy = NULL;
    if (rc != CURLE_OK || status < 200 || status > 299) {
        char why[512];
        if (rc != CURLE_OK)
            snprintf(why, sizeof(why), "%s%s%s", step_name(job->step), job->errbuf[0] ? ": " : ": ",
                     job->errbuf[0] ? job->errbuf : curl_easy_strerror(rc));
        else
            snprintf(why, sizeof(why), "%s: HTTP %ld: %.200s", step_name(job->step), status,
                     job->response.data ? job->response.data : "");
        for (char *p = why; *p; p++)
            if (*p == '\n' || *p == '\r') *p = ' ';
        job_finish(job, 0, retryable(rc, status), (int)status, why);
        return;
    }
    struct request *r = &job->req[job->step];
    if ((job->step == STEP_LOOKUP || job->step == STEP_CREATE) && r->ref) {
        char ref[256] = "";
        int found = extract_ref(job->ob, job->response.data ? job->response.data : "",
                                job->response.len, r->ref, ref, sizeof(ref));
        if (!found && job->step == STEP_CREATE) {
            char why[300];
            snprintf(why, sizeof(why), "create: the answer has no %s", r->ref);
            job_finish(job, 0, 0, (int)status, why);
            return;
        }
        if (found) {
            struct brm_err err;
            snprintf(job->ref, sizeof(job->ref), "%s", ref);
            if (brm_store_set_ticket(job->ob->store, job->tr->t->name, job->ticket, ref, &err) < 0)
                brm_log_error("outbox: cannot record a ticket", "error", err.msg);
        }
    }
    next_step(job);
}

/* ---- libcurl on libevent ------------------------------------------------ */

struct sock {
    struct event *ev;
    struct brm_outbox *ob;
};

static void check_transfers(struct brm_outbox *ob) {
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(ob->multi, &left))) {
        if (msg->msg != CURLMSG_DONE) continue;
        struct job *job;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&job);
        transfer_done(job, msg->data.result);
    }
}

static void on_socket(evutil_socket_t fd, short what, void *arg) {
    struct brm_outbox *ob = arg;
    int running;
    int flags = (what & EV_READ ? CURL_CSELECT_IN : 0) | (what & EV_WRITE ? CURL_CSELECT_OUT : 0);
    curl_multi_socket_action(ob->multi, fd, flags, &running);
    check_transfers(ob);
}

static void on_curl_timer(evutil_socket_t fd, short what, void *arg) {
    struct brm_outbox *ob = arg;
    int running;
    (void)fd, (void)what;
    curl_multi_socket_action(ob->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_transfers(ob);
}

static int curl_socket_cb(CURL *e, curl_socket_t s, int what, void *arg, void *sockp) {
    struct brm_outbox *ob = arg;
    struct sock *sk = sockp;
    (void)e;
    if (what == CURL_POLL_REMOVE) {
        if (sk) {
            event_free(sk->ev);
            free(sk);
        }
        return 0;
    }
    if (!sk) {
        sk = brm_xcalloc(1, sizeof(*sk));
        sk->ob = ob;
        curl_multi_assign(ob->multi, s, sk);
    } else {
        event_free(sk->ev);
    }
    short events =
        EV_PERSIST | (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0);
    sk->ev = event_new(ob->base, s, events, on_socket, ob);
    event_add(sk->ev, NULL);
    return 0;
}

static int curl_timer_cb(CURLM *multi, long ms, void *arg) {
    struct brm_outbox *ob = arg;
    (void)multi;
    if (ms < 0) {
        evtimer_del(ob->curl_timer);
    } else {
        struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
        evtimer_add(ob->curl_timer, &tv);
    }
    return 0;
}

/* ---- scheduling --------------------------------------------------------- */

struct pass {
    struct brm_outbox *ob;
    struct target_rt *tr;
    double now;
    int room; /* attempts this target may still start */
};

static int is_running(struct brm_outbox *ob, int64_t id) {
    for (struct job *j = ob->jobs; j; j = j->next)
        if (j->id == id) return 1;
    return 0;
}

static int ticket_busy(struct brm_outbox *ob, struct target_rt *tr, const char *ticket) {
    for (struct job *j = ob->jobs; j; j = j->next)
        if (j->tr == tr && j->ticket && strcmp(j->ticket, ticket) == 0) return 1;
    return 0;
}

/* Takes tokens as time passed; 1 when one is there to spend. */
static int take_token(struct target_rt *tr, double now) {
    if (tr->t->rate <= 0) return 1;
    tr->tokens = fmin(1.0, tr->tokens + (now - tr->refilled) * tr->t->rate);
    tr->refilled = now;
    if (tr->tokens < 1.0) return 0;
    tr->tokens -= 1.0;
    return 1;
}

static int start_due(void *arg, struct brm_delivery *d) {
    struct pass *p = arg;
    if (p->room <= 0) return 1;
    if (is_running(p->ob, d->id)) return 0;
    if (d->ticket && ticket_busy(p->ob, p->tr, d->ticket)) return 0;
    if (!take_token(p->tr, p->now)) return 1;
    start_job(p->ob, p->tr, d);
    p->room--;
    return 0;
}

static struct target_rt *target_rt(struct brm_outbox *ob, const char *name) {
    for (size_t i = 0; i < ob->ntargets; i++)
        if (ob->targets[i] && strcmp(ob->targets[i]->t->name, name) == 0) return ob->targets[i];
    return NULL;
}

/* Deliveries to a target no longer in the config cannot be made. */
static int bury_orphan(void *arg, struct brm_delivery *d) {
    struct brm_outbox *ob = arg;
    if (target_rt(ob, d->target)) return 0;
    char why[300];
    snprintf(why, sizeof(why), "no target named %s in the config", d->target);
    add_result(ob, d->id, BRM_DELIVERY_DEAD, brm_time_now(), 0, why);
    return 0;
}

static void housekeeping(struct brm_outbox *ob, double now) {
    struct brm_err err;
    if (now - ob->last_prune >= PRUNE_INTERVAL) {
        ob->last_prune = now;
        /* Their keys are what keeps a replay from queueing them again: kept
         * as long as the bodies a replay could run. */
        double keep = fmax(KEEP_DONE, ob->cfg->journal.retention);
        if (brm_store_prune(ob->store, now - keep, &err) < 0)
            brm_log_warn("outbox: cannot prune done deliveries", "error", err.msg);
    }
    if (now - ob->last_orphans >= 60) {
        ob->last_orphans = now;
        brm_store_due(ob->store, now, 100, bury_orphan, ob, &err);
    }
    if (now - ob->last_count >= 1) {
        long count;
        double oldest;
        ob->last_count = now;
        if (brm_store_pending(ob->store, now, &count, &oldest) == 0) {
            atomic_store(&ob->pending, count);
            atomic_store(&ob->oldest_ms, (long long)(oldest * 1000));
        }
    }
}

/* Records outcomes, starts what is due and may start, and sets the timer
 * for the next time something could be. */
static void schedule(struct brm_outbox *ob) {
    struct brm_err err;
    double now = brm_time_now(), wake = now + POLL_INTERVAL;
    int flushed = flush_results(ob) == 0;
    if (atomic_load(&ob->stopping)) {
        if (!ob->jobs) event_base_loopbreak(ob->base);
        return;
    }
    if (!flushed) {
        struct timeval tv = { (time_t)POLL_INTERVAL, 0 };
        evtimer_add(ob->timer, &tv);
        return;
    }
    housekeeping(ob, now);
    for (size_t i = 0; i < ob->ntargets; i++) {
        struct target_rt *tr = ob->targets[i];
        /* A file append ends before the next starts: concurrency means
         * nothing there, and a pass takes a good batch. */
        int room = tr->fd >= 0 ? FILE_BATCH : (int)tr->t->concurrency - tr->inflight;
        struct pass p = { ob, tr, now, room };
        if (p.room <= 0) continue;
        if (brm_store_due_for(ob->store, tr->t->name, now, p.room + tr->inflight, start_due, &p,
                              &err) < 0) {
            brm_log_error("outbox: cannot read due deliveries", "error", err.msg);
            break;
        }
        if (tr->t->rate > 0 && tr->tokens < 1.0)
            wake = fmin(wake, now + (1.0 - tr->tokens) / tr->t->rate);
    }
    flush_results(ob); /* what failed at once (file targets, bad requests) */
    double due = brm_store_next_due(ob->store, now);
    if (due > 0) wake = fmin(wake, due);
    struct timeval tv = { (time_t)(wake - now), (suseconds_t)(fmod(wake - now, 1.0) * 1e6) };
    evtimer_add(ob->timer, &tv);
}

static void on_work(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    schedule(arg);
}

static void on_mail(evutil_socket_t fd, short what, void *arg) {
    struct brm_outbox *ob = arg;
    uint64_t v;
    (void)what;
    if (read(fd, &v, sizeof(v)) < 0) { /* EAGAIN: already drained */
    }
    pthread_mutex_lock(&ob->lock);
    const struct brm_config *cfg = ob->next_cfg;
    ob->next_cfg = NULL;
    pthread_mutex_unlock(&ob->lock);
    if (cfg) {
        take_config(ob, cfg);
        brm_config_free(cfg);
    }
    if (atomic_load(&ob->stopping)) {
        /* Let attempts in flight finish for a while, then leave. */
        if (!ob->jobs) {
            event_base_loopbreak(ob->base);
            return;
        }
        struct timeval tv = { (time_t)ob->stop_wait, 0 };
        evtimer_add(ob->stop_timer, &tv);
        return;
    }
    schedule(ob);
}

static void on_stop_timer(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    event_base_loopbreak(((struct brm_outbox *)arg)->base);
}

static void *outbox_main(void *arg) {
    struct brm_outbox *ob = arg;
    brm_metrics_set_slot(ob->cfg->workers + 1);
    srandom((unsigned)(brm_time_mono_ns() ^ (uint64_t)getpid())); /* jitter differs per run */
    schedule(ob);
    event_base_dispatch(ob->base);
    flush_results(ob);
    return NULL;
}

/* ---- targets ------------------------------------------------------------ */

/* Opens the file of a kind-file target for appending, making its folder. */
static int open_target_file(const struct brm_target *t, struct brm_err *err) {
    char *dir = brm_path_dir(t->path);
    brm_mkdirs(dir, 0750);
    free(dir);
    int fd = open(t->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0)
        brm_err_set(err, "target %s: cannot open %s: %s", t->name, t->path, strerror(errno));
    return fd;
}

/* The outbox's side of target T of CFG (of which it takes a reference). */
static struct target_rt *target_new(const struct brm_config *cfg, const struct brm_target *t,
                                    struct brm_err *err) {
    struct target_rt *tr = brm_xcalloc(1, sizeof(*tr));
    tr->t = t;
    tr->cfg = brm_config_ref(cfg);
    tr->tokens = 1;
    tr->fd = t->path ? open_target_file(t, err) : -1;
    tr->done = brm_metrics_counter("brume_deliveries_total", "Delivery attempts by outcome.",
                                   "target", t->name, "outcome", "done", NULL);
    tr->retried = brm_metrics_counter("brume_deliveries_total", "Delivery attempts by outcome.",
                                      "target", t->name, "outcome", "retry", NULL);
    tr->dead = brm_metrics_counter("brume_deliveries_total", "Delivery attempts by outcome.",
                                   "target", t->name, "outcome", "dead", NULL);
    if (t->path && tr->fd < 0) {
        target_free(tr);
        return NULL;
    }
    return tr;
}

/* Moves the outbox onto CFG (a reload): a target of the same name keeps
 * its attempts in flight, its rate tokens and its counters, and takes the
 * new settings; a new target starts; one that is gone stays until its
 * last attempt ends. On the outbox thread. */
static void take_config(struct brm_outbox *ob, const struct brm_config *cfg) {
    struct brm_err err;
    struct target_rt **v = brm_xcalloc(cfg->ntargets, sizeof(*v));
    size_t n = 0;
    for (size_t i = 0; i < cfg->ntargets; i++) {
        const struct brm_target *t = &cfg->targets[i];
        struct target_rt *tr = target_rt(ob, t->name);
        if (!tr) {
            if (!(tr = target_new(cfg, t, &err))) {
                brm_log_error("outbox: target not started", "target", t->name, "error", err.msg);
                continue;
            }
        } else {
            for (size_t k = 0; k < ob->ntargets; k++)
                if (ob->targets[k] == tr) ob->targets[k] = NULL; /* moved */
            if (!t->path && tr->fd >= 0) {                       /* no longer a file target */
                close(tr->fd);
                tr->fd = -1;
            }
            if (t->path && (!tr->t->path || strcmp(t->path, tr->t->path) != 0)) {
                int fd = open_target_file(t, &err);
                if (fd < 0) {
                    brm_log_error("outbox: target not moved", "target", t->name, "error", err.msg);
                    v[n++] = tr; /* goes on as it was */
                    continue;
                }
                if (tr->fd >= 0) close(tr->fd);
                tr->fd = fd;
            }
            const struct brm_config *old = tr->cfg;
            tr->t = t;
            tr->cfg = brm_config_ref(cfg);
            brm_config_free(old);
        }
        v[n++] = tr;
    }
    for (size_t k = 0; k < ob->ntargets; k++) {
        struct target_rt *tr = ob->targets[k];
        if (!tr) continue;
        if (tr->inflight)
            tr->retired = 1;
        else
            target_free(tr);
    }
    free(ob->targets);
    ob->targets = v;
    ob->ntargets = n;
    const struct brm_config *old = ob->cfg;
    ob->cfg = brm_config_ref(cfg);
    brm_config_free(old);
}

void brm_outbox_check_files(const struct brm_config *cfg, struct brm_errors *errs) {
    struct brm_err err;
    for (size_t i = 0; i < cfg->ntargets; i++) {
        if (!cfg->targets[i].path) continue;
        int fd = open_target_file(&cfg->targets[i], &err);
        if (fd < 0)
            brm_errors_add(errs, &err);
        else
            close(fd);
    }
}

void brm_outbox_configure(struct brm_outbox *ob, const struct brm_config *cfg) {
    pthread_mutex_lock(&ob->lock);
    const struct brm_config *stale = ob->next_cfg; /* never taken: superseded */
    ob->next_cfg = brm_config_ref(cfg);
    pthread_mutex_unlock(&ob->lock);
    brm_config_free(stale);
    brm_outbox_wake(ob);
}

/* ---- life --------------------------------------------------------------- */

static double gauge_pending(void *arg) {
    return (double)brm_outbox_pending(arg, NULL);
}

static double gauge_oldest(void *arg) {
    double oldest;
    brm_outbox_pending(arg, &oldest);
    return oldest;
}

struct brm_outbox *brm_outbox_new(const struct brm_config *cfg, struct brm_err *err) {
    struct brm_outbox *ob = brm_xcalloc(1, sizeof(*ob));
    ob->cfg = brm_config_ref(cfg);
    ob->mailfd = -1;
    pthread_mutex_init(&ob->lock, NULL);
    ob->path = brm_outbox_store_path(cfg);
    if (!(ob->store = brm_store_open(ob->path, err))) goto fail;
    /* Losing an attempt's outcome in a power cut means one more attempt,
     * never a lost message: no fsync for outcomes. */
    if (brm_store_relax(ob->store, 1, err) < 0 ||
        brm_store_limit(ob->store, cfg->store_max, err) < 0)
        goto fail;
    ob->targets = brm_xcalloc(cfg->ntargets, sizeof(*ob->targets));
    for (size_t i = 0; i < cfg->ntargets; i++) {
        if (!(ob->targets[i] = target_new(cfg, &cfg->targets[i], err))) goto fail;
        ob->ntargets++;
    }
    ob->L = luaL_newstate();
    if (!ob->L) {
        brm_err_set(err, "outbox: cannot create a Lua state");
        goto fail;
    }
    brm_json_open(ob->L);
    lua_settop(ob->L, 0);
    struct event_config *ec = event_config_new();
    event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK);
    ob->base = event_base_new_with_config(ec);
    event_config_free(ec);
    ob->mailfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!ob->base || ob->mailfd < 0) {
        brm_err_set(err, "outbox: cannot set up its event loop");
        goto fail;
    }
    ob->mail = event_new(ob->base, ob->mailfd, EV_READ | EV_PERSIST, on_mail, ob);
    ob->timer = evtimer_new(ob->base, on_work, ob);
    ob->work = event_new(ob->base, -1, 0, on_work, ob);
    ob->curl_timer = evtimer_new(ob->base, on_curl_timer, ob);
    ob->stop_timer = evtimer_new(ob->base, on_stop_timer, ob);
    event_add(ob->mail, NULL);
    ob->multi = curl_multi_init();
    curl_multi_setopt(ob->multi, CURLMOPT_SOCKETFUNCTION, curl_socket_cb);
    curl_multi_setopt(ob->multi, CURLMOPT_SOCKETDATA, ob);
    curl_multi_setopt(ob->multi, CURLMOPT_TIMERFUNCTION, curl_timer_cb);
    curl_multi_setopt(ob->multi, CURLMOPT_TIMERDATA, ob);
    brm_metrics_gauge("brume_outbox_pending", "Deliveries not yet done or dead.", gauge_pending, ob,
                      NULL);
    brm_metrics_gauge("brume_outbox_oldest_seconds", "Age of the oldest pending delivery.",
                      gauge_oldest, ob, NULL);
    return ob;
fail:
    brm_outbox_free(ob);
    return NULL;
}

int brm_outbox_start(struct brm_outbox *ob, struct brm_err *err) {
    int rc = pthread_create(&ob->thread, NULL, outbox_main, ob); /* the error, not errno */
    if (rc != 0) {
        brm_err_set(err, "cannot start the outbox thread: %s", strerror(rc));
        return -1;
    }
    ob->running = 1;
    return 0;
}

void brm_outbox_stop(struct brm_outbox *ob, double wait) {
    if (!ob || !ob->running) return;
    ob->stop_wait = wait;
    atomic_store(&ob->stopping, 1);
    uint64_t one = 1;
    if (write(ob->mailfd, &one, sizeof(one)) < 0) { /* cannot happen with an eventfd */
    }
    pthread_join(ob->thread, NULL);
    ob->running = 0;
}

void brm_outbox_free(struct brm_outbox *ob) {
    if (!ob) return;
    brm_outbox_stop(ob, 0);
    while (ob->jobs) {
        struct job *j = ob->jobs;
        unlink_job(j);
        job_free(j);
    }
    for (size_t i = 0; i < ob->nresults; i++) free(ob->results[i].error);
    free(ob->results);
    if (ob->multi) curl_multi_cleanup(ob->multi);
    if (ob->mail) event_free(ob->mail);
    if (ob->timer) event_free(ob->timer);
    if (ob->work) event_free(ob->work);
    if (ob->curl_timer) event_free(ob->curl_timer);
    if (ob->stop_timer) event_free(ob->stop_timer);
    if (ob->base) event_base_free(ob->base);
    if (ob->mailfd >= 0) close(ob->mailfd);
    if (ob->L) lua_close(ob->L);
    for (size_t i = 0; i < ob->ntargets; i++) target_free(ob->targets[i]);
    free(ob->targets);
    brm_config_free(ob->next_cfg);
    brm_config_free(ob->cfg);
    pthread_mutex_destroy(&ob->lock);
    brm_store_close(ob->store);
    free(ob->path);
    free(ob);
}

/* ---- showing actions ---------------------------------------------------- */

void brm_action_json(const struct brm_action *a, struct brm_buf *out) {
    brm_buf_puts(out, "{\"rule\":");
    brm_buf_json_string(out, a->rule, strlen(a->rule));
    brm_buf_puts(out, ",\"target\":");
    brm_buf_json_string(out, a->target, strlen(a->target));
    brm_buf_puts(out, ",\"topic\":");
    brm_buf_json_string(out, a->topic, strlen(a->topic));
    brm_buf_puts(out, ",\"event\":");
    brm_buf_json_string(out, a->event_id, strlen(a->event_id));
    brm_buf_puts(out, ",\"message\":");
    brm_buf_puts(out, a->message ? a->message : "null");
    brm_buf_puts(out, ",\"request\":");
    brm_buf_puts(out, a->display ? a->display : a->request);
    brm_buf_puts(out, "}");
}
