#include "backfill.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <math.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "json.h"
#include "log.h"
#include "metrics.h"
#include "store.h"
#include "transfer.h"

#define MAX_ANSWER      (64u << 20) /* bytes of one page's answer, at most */
#define TIMEOUT         60          /* seconds one request may take */
#define CONNECT_TIMEOUT 10
#define NET_RETRIES     4          /* a 5xx or a network error is tried again this often */
#define MAX_LIMITED     8          /* 429s in a row before a run gives up */
#define LIMITED_WAIT    60.0       /* seconds a 429 without Retry-After waits */
#define MAX_WAIT        3600       /* seconds of a Retry-After honoured, at most */
#define MARGIN          300.0      /* seconds a run reaches back before the last body or run */
#define LAST_SCAN       100000     /* bodies looked at for a source's last one */
#define MAX_TEXT        (1u << 20) /* bytes of a report's lines; past them, a count */
#define KEY_BYTES       16
/* A decode of N bytes (a page, a body) may grow the thread's VM by
 * DECODED_BASE + DECODED_PER_BYTE * N at most: text of strings takes about
 * its size, while 64 MB of "[]," would take 1.5 GB. */
#define DECODED_BASE     (16u << 20)
#define DECODED_PER_BYTE 8

/* ---- pure parts ---------------------------------------------------------- */

enum brm_backfill_step brm_backfill_next_start(long start, long end, size_t n, size_t limit,
                                               double last, long *next) {
    *next = start;
    if (n < limit || start >= end) return BRM_BACKFILL_DONE;
    long second = isfinite(last) ? (long)floor(last) : start;
    if (second > start) {
        if (second >= end) return BRM_BACKFILL_DONE;
        *next = second; /* that second's results come again: they are passed over */
        return BRM_BACKFILL_NEXT;
    }
    /* A whole page in one second: the start must move on, or the same page
     * comes back for ever. */
    *next = start + 1;
    return *next < end ? BRM_BACKFILL_CROWDED : BRM_BACKFILL_DONE;
}

/* Appends S percent-encoded (all but RFC 3986's unreserved characters). */
static void put_escaped(struct brm_buf *b, const char *s) {
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '_' || *p == '.' || *p == '~') {
            brm_buf_append(b, p, 1);
        } else {
            char e[3] = { '%', hex[*p >> 4], hex[*p & 15] };
            brm_buf_append(b, e, 3);
        }
    }
}

char *brm_backfill_url(const struct brm_source *src, long start, long end, const char *topic) {
    struct brm_buf b;
    brm_buf_init(&b);
    const char *api = src->mist.api;
    size_t n = strlen(api);
    while (n && api[n - 1] == '/') n--;
    brm_buf_append(&b, api, n);
    brm_buf_puts(&b, src->mist.org_id ? "/api/v1/orgs/" : "/api/v1/sites/");
    put_escaped(&b, src->mist.org_id ? src->mist.org_id : src->mist.site_id);
    brm_buf_puts(&b, "/webhooks/");
    put_escaped(&b, src->mist.webhook_id);
    brm_buf_printf(&b, "/events/search?start=%ld&end=%ld&limit=%d&status=failure&sort=timestamp",
                   start, end, BRM_BACKFILL_LIMIT);
    if (topic) {
        brm_buf_puts(&b, "&topic=");
        put_escaped(&b, topic);
    }
    return b.data;
}

int brm_backfill_check(const struct brm_config *cfg, const struct brm_backfill_ask *ask,
                       struct brm_err *err) {
    if (ask->source) {
        const struct brm_source *s = brm_config_source(cfg, ask->source);
        if (!s) {
            brm_err_set(err, "no source named %s in %s", ask->source, cfg->file);
            return -1;
        }
        if (!s->mist.api) {
            brm_err_set(err,
                        "source %s does not name Mist's API: set sources.%s.mist = { api, token, "
                        "org_id or site_id, webhook_id }",
                        s->name, s->name);
            return -1;
        }
        return 0;
    }
    for (size_t i = 0; i < cfg->nsources; i++)
        if (cfg->sources[i].mist.api) return 0;
    brm_err_set(err,
                "no source in %s names Mist's API: set sources.NAME.mist = { api, token, org_id "
                "or site_id, webhook_id }",
                cfg->file);
    return -1;
}

void brm_backfill_report_free(struct brm_backfill_report *r) {
    if (!r) return;
    brm_buf_reset(&r->text);
    free(r);
}

static struct brm_backfill_report *report_new(void) {
    struct brm_backfill_report *r = brm_xcalloc(1, sizeof(*r));
    r->ok = 1;
    brm_buf_init(&r->text);
    brm_buf_puts(&r->text, "");
    return r;
}

static void report_line(struct brm_backfill_report *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void report_line(struct brm_backfill_report *r, const char *fmt, ...) {
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (r->text.len < MAX_TEXT) brm_buf_printf(&r->text, "%s\n", line);
}

/* ---- the results of a run: what it saw ----------------------------------- */

/* Keys of what a run saw (16 bytes of a SHA-256), an open-addressed set. */
struct seen {
    unsigned char (*keys)[KEY_BYTES];
    unsigned char *used;
    size_t n, cap;
};

static void key_of(const char *kind, const char *s, size_t len, unsigned char out[KEY_BYTES]) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) ||
        !EVP_DigestUpdate(ctx, kind, strlen(kind) + 1) || !EVP_DigestUpdate(ctx, s, len) ||
        !EVP_DigestFinal_ex(ctx, md, &mdlen)) {
        fprintf(stderr, "brume: SHA-256 is not available\n");
        abort();
    }
    EVP_MD_CTX_free(ctx);
    memcpy(out, md, KEY_BYTES);
}

static size_t slot_for(const struct seen *s, const unsigned char *k) {
    uint64_t h;
    memcpy(&h, k, sizeof(h));
    size_t i = (size_t)h & (s->cap - 1);
    while (s->used[i] && memcmp(s->keys[i], k, KEY_BYTES) != 0) i = (i + 1) & (s->cap - 1);
    return i;
}

/* Adds K; 1 when it was there already. */
static int seen_add(struct seen *s, const unsigned char k[KEY_BYTES]) {
    if (s->n * 2 >= s->cap) {
        struct seen bigger = { 0 };
        bigger.cap = s->cap ? s->cap * 2 : 256;
        bigger.keys = brm_xcalloc(bigger.cap, KEY_BYTES);
        bigger.used = brm_xcalloc(bigger.cap, 1);
        for (size_t i = 0; i < s->cap; i++)
            if (s->used[i]) seen_add(&bigger, s->keys[i]);
        free(s->keys);
        free(s->used);
        *s = bigger;
    }
    size_t i = slot_for(s, k);
    if (s->used[i]) return 1;
    memcpy(s->keys[i], k, KEY_BYTES);
    s->used[i] = 1;
    s->n++;
    return 0;
}

static void seen_reset(struct seen *s) {
    free(s->keys);
    free(s->used);
    memset(s, 0, sizeof(*s));
}

/* ---- the backfill -------------------------------------------------------- */

struct queued {
    struct queued *next;
    struct brm_backfill_ask ask; /* its strings are copies */
    brm_backfill_done_fn *done;
    void *arg;
};

/* A source's schedule (mist.every). */
struct schedule {
    char *source;
    double next_at;
    double last_end; /* where its last run's window ended */
};

struct brm_backfill {
    brm_backfill_take_fn *take;
    void *take_arg;
    char *store_path;
    int slot;
    pthread_t thread;
    int started, schedule;
    _Atomic int stopping;

    pthread_mutex_t lock; /* guards the fields below */
    pthread_cond_t wake;
    const struct brm_config *cfg;
    struct queued *queue, **tail;
    struct schedule *sched;
    size_t nsched;

    /* The body handed in, and how it fared. */
    pthread_mutex_t taken_lock;
    pthread_cond_t taken_cond;
    int taken;
    struct brm_backfill_outcome outcome;
    char reason[256]; /* the outcome's */

    /* The thread's own. */
    CURL *easy;
    lua_State *L;
    size_t held, held_limit; /* bytes L holds, and may (counted_alloc) */
    uint64_t next_request;   /* monotonic ms */
};

struct brm_backfill *brm_backfill_new(const struct brm_config *cfg, const char *store_path,
                                      brm_backfill_take_fn *take, void *arg, int slot) {
    struct brm_backfill *bf = brm_xcalloc(1, sizeof(*bf));
    bf->take = take;
    bf->take_arg = arg;
    bf->store_path = brm_xstrdup(store_path);
    bf->slot = slot;
    bf->cfg = brm_config_ref(cfg);
    bf->tail = &bf->queue;
    pthread_mutex_init(&bf->lock, NULL);
    pthread_cond_init(&bf->wake, NULL);
    pthread_mutex_init(&bf->taken_lock, NULL);
    pthread_cond_init(&bf->taken_cond, NULL);
    return bf;
}

/* L's allocator: what it holds is counted, and growing past held_limit
 * fails as out of memory does (the decode then says so). */
static void *counted_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    struct brm_backfill *bf = ud;
    if (!ptr) osize = 0; /* then it says what kind of object is made */
    if (nsize == 0) {
        free(ptr);
        bf->held -= osize;
        return NULL;
    }
    if (nsize > osize && nsize - osize > bf->held_limit - bf->held) return NULL;
    void *p = realloc(ptr, nsize);
    if (p) bf->held = bf->held - osize + nsize;
    return p;
}

/* Lets the next decode, of LEN bytes, grow L by so much at most. Returns
 * that, in MB. */
static size_t allow_decode(struct brm_backfill *bf, size_t len) {
    size_t room = DECODED_BASE + len * DECODED_PER_BYTE; /* LEN is at most MAX_ANSWER */
    bf->held_limit = bf->held + room;
    return room >> 20;
}

/* Sources' schedules for CFG, keeping those of sources that had one
 * (the caller holds the lock). */
static void reschedule(struct brm_backfill *bf, const struct brm_config *cfg, double now) {
    struct schedule *v = brm_xcalloc(cfg->nsources + 1, sizeof(*v));
    size_t n = 0;
    for (size_t i = 0; i < cfg->nsources; i++) {
        const struct brm_source *s = &cfg->sources[i];
        if (!s->mist.api || s->mist.every <= 0) continue;
        struct schedule *old = NULL;
        for (size_t k = 0; k < bf->nsched && !old; k++)
            if (strcmp(bf->sched[k].source, s->name) == 0) old = &bf->sched[k];
        v[n].source = brm_xstrdup(s->name);
        v[n].last_end = old ? old->last_end : now;
        v[n].next_at = v[n].last_end + s->mist.every;
        n++;
    }
    for (size_t k = 0; k < bf->nsched; k++) free(bf->sched[k].source);
    free(bf->sched);
    bf->sched = v;
    bf->nsched = n;
}

void brm_backfill_configure(struct brm_backfill *bf, const struct brm_config *cfg) {
    const struct brm_config *old;
    pthread_mutex_lock(&bf->lock);
    old = bf->cfg;
    bf->cfg = brm_config_ref(cfg);
    if (bf->schedule) reschedule(bf, cfg, brm_time_now());
    pthread_cond_signal(&bf->wake);
    pthread_mutex_unlock(&bf->lock);
    brm_config_free(old);
}

static char *dup_or_null(const char *s) {
    return s ? brm_xstrdup(s) : NULL;
}

void brm_backfill_ask(struct brm_backfill *bf, const struct brm_backfill_ask *ask,
                      brm_backfill_done_fn *done, void *arg) {
    struct queued *q = brm_xcalloc(1, sizeof(*q));
    q->ask = *ask;
    q->ask.source = dup_or_null(ask->source);
    q->ask.topic = dup_or_null(ask->topic);
    q->done = done;
    q->arg = arg;
    pthread_mutex_lock(&bf->lock);
    *bf->tail = q;
    bf->tail = &q->next;
    pthread_cond_signal(&bf->wake);
    pthread_mutex_unlock(&bf->lock);
}

static void free_queued(struct queued *q) {
    free((char *)q->ask.source);
    free((char *)q->ask.topic);
    free(q);
}

/* Waits SECONDS, or less when brume is stopping: -1 then. */
static int nap(struct brm_backfill *bf, double seconds) {
    uint64_t until = brm_time_mono_ms() + (uint64_t)(seconds * 1000);
    pthread_mutex_lock(&bf->lock);
    while (!atomic_load(&bf->stopping)) {
        uint64_t now = brm_time_mono_ms();
        if (now >= until) break;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t left = until - now;
        ts.tv_sec += (time_t)(left / 1000);
        ts.tv_nsec += (long)(left % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&bf->wake, &bf->lock, &ts);
    }
    int stopping = atomic_load(&bf->stopping);
    pthread_mutex_unlock(&bf->lock);
    return stopping ? -1 : 0;
}

/* ---- one request ---------------------------------------------------------- */

struct answer {
    struct brm_buf body;
    int too_large;
    double retry_after;
    struct brm_backfill *bf;
};

static size_t on_body(char *data, size_t size, size_t n, void *arg) {
    struct answer *a = arg;
    size_t len = size * n;
    if (a->body.len + len > MAX_ANSWER) {
        a->too_large = 1;
        return 0; /* ends the transfer */
    }
    brm_buf_append(&a->body, data, len);
    return len;
}

static size_t on_header(char *data, size_t size, size_t n, void *arg) {
    struct answer *a = arg;
    size_t len = size * n;
    double secs = brm_transfer_retry_after(data, len);
    if (isfinite(secs) && secs > 0) a->retry_after = fmin(secs, MAX_WAIT);
    return len;
}

static int on_progress(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un) {
    struct answer *a = arg;
    (void)dt, (void)dn, (void)ut, (void)un;
    return atomic_load(&a->bf->stopping); /* nonzero aborts the transfer */
}

/*
 * GETs URL with the token in its Authorization header (and only there),
 * into A. Returns the HTTP status, or 0 with why in ERRBUF when no answer
 * came. The header's copy of the token is wiped once the request is done.
 */
static long perform(struct brm_backfill *bf, const char *url, const char *token, struct answer *a,
                    char errbuf[CURL_ERROR_SIZE]) {
    CURL *e = bf->easy;
    size_t hlen = strlen(token) + 32;
    char *auth = brm_xmalloc(hlen);
    snprintf(auth, hlen, "Authorization: Token %s", token);
    struct curl_slist *headers = curl_slist_append(NULL, auth);
    headers = curl_slist_append(headers, "Accept: application/json");
    curl_easy_reset(e);
    errbuf[0] = '\0';
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT, (long)TIMEOUT);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, (long)CONNECT_TIMEOUT);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "brume/" BRM_VERSION);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, a);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, a);
    curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(e, CURLOPT_XFERINFODATA, a);
    curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
    CURLcode rc = curl_easy_perform(e);
    long status = 0;
    if (rc == CURLE_OK)
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    else if (!errbuf[0])
        snprintf(errbuf, CURL_ERROR_SIZE, "%s", curl_easy_strerror(rc));
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, NULL);
    for (struct curl_slist *h = headers; h; h = h->next) memset(h->data, 0, strlen(h->data));
    curl_slist_free_all(headers);
    memset(auth, 0, hlen);
    free(auth);
    return status;
}

/* S with every copy of TOKEN made "****": what Mist or libcurl says is
 * shown, and must not carry it. */
static void scrub(char *s, const char *token) {
    size_t n = strlen(token);
    char *p;
    if (n == 0) return;
    while ((p = strstr(s, token))) {
        memcpy(p, "****", n < 4 ? n : 4);
        memmove(p + (n < 4 ? n : 4), p + n, strlen(p + n) + 1);
    }
}

/* ---- a run ----------------------------------------------------------------- */

enum outcome { TAKEN, SKIPPED, FAILED };
static const char *const outcome_names[] = { "taken", "skipped", "failed" };

struct run {
    struct brm_backfill *bf;
    const struct brm_source *src;
    struct brm_store *journal; /* a reader, or NULL */
    struct brm_backfill_report *report;
    const char *kind; /* "catch-up", "schedule", "asked" */
    const char *topic;
    char topic_name[BRM_TOPIC_MAX]; /* normalised */
    int dry_run;
    long start, end;
    struct seen seen;
    long found, taken, skipped, failed, requests, messages;
    int crowded;
    char *mark; /* a catch-up's mark (catch_up_mark), or NULL */
};

/* A result of the search. */
struct result {
    char *body; /* req_payload, or NULL when it had none */
    size_t len;
    double timestamp;
    char *topic;
    char *id;
};

static void free_results(struct result *v, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free(v[i].body);
        free(v[i].topic);
        free(v[i].id);
    }
    free(v);
}

static void count_request(struct run *r, long status) {
    char s[24] = "error";
    if (status) snprintf(s, sizeof(s), "%ld", status);
    brm_counter_add(brm_metrics_counter("brume_backfill_requests_total",
                                        "Requests to Mist's API for its delivery log, by status "
                                        "(error: no answer).",
                                        "source", r->src->name, "status", s, NULL),
                    1);
    r->requests++;
}

static void count_body(struct run *r, enum outcome o) {
    if (o == TAKEN) r->taken++;
    if (o == SKIPPED) r->skipped++;
    if (o == FAILED) r->failed++;
    if (r->dry_run) return;
    brm_counter_add(brm_metrics_counter("brume_backfill_bodies_total",
                                        "Bodies found in Mist's delivery log, by what became of "
                                        "them.",
                                        "source", r->src->name, "outcome", outcome_names[o], NULL),
                    1);
}

/* What the token lacks, for a 401 or 403. */
static void auth_error(const struct run *r, long status, struct brm_err *err) {
    const struct brm_source *s = r->src;
    brm_err_set(err,
                "source %s: Mist's API answered %ld: the token (sources.%s.mist.token) cannot "
                "read the webhooks of %s %s; it needs read access to them (an API token of an "
                "Observer or better)",
                s->name, status, s->name, s->mist.org_id ? "org" : "site",
                s->mist.org_id ? s->mist.org_id : s->mist.site_id);
}

/* The host part of the source's api, for messages. */
static void api_host(const struct brm_source *s, char *out, size_t size) {
    const char *p = strstr(s->mist.api, "://");
    p = p ? p + 3 : s->mist.api;
    snprintf(out, size, "%.*s", (int)strcspn(p, "/"), p);
}

/*
 * GETs URL into A, paced, through 429s (Retry-After) and a few retries of
 * 5xx and network errors. Returns 0 with a 200's answer, or -1 with why in
 * ERR.
 */
static int get_page(struct run *r, const char *url, struct answer *a, struct brm_err *err) {
    struct brm_backfill *bf = r->bf;
    const struct brm_source *s = r->src;
    int failures = 0, limited = 0;
    char errbuf[CURL_ERROR_SIZE], host[256];
    api_host(s, host, sizeof(host));
    for (;;) {
        uint64_t now = brm_time_mono_ms();
        if (now < bf->next_request && nap(bf, (double)(bf->next_request - now) / 1000) < 0)
            goto stopping;
        bf->next_request = brm_time_mono_ms() + (uint64_t)(BRM_BACKFILL_PACE * 1000);
        a->body.len = 0;
        a->too_large = 0;
        a->retry_after = 0;
        long status = perform(bf, url, s->mist.token, a, errbuf);
        count_request(r, status);
        if (atomic_load(&bf->stopping)) goto stopping;
        scrub(errbuf, s->mist.token);
        if (status == 200) return 0;
        if (status == 401 || status == 403) {
            auth_error(r, status, err);
            return -1;
        }
        if (a->too_large) {
            brm_err_set(err, "source %s: Mist's API answered more than %u MB for one page", s->name,
                        MAX_ANSWER >> 20);
            return -1;
        }
        double wait;
        if (status == 429) {
            if (++limited > MAX_LIMITED) {
                brm_err_set(err,
                            "source %s: Mist's API answered 429 (rate limit) %d times in a row: "
                            "the token's 5,000 calls an hour are used up",
                            s->name, MAX_LIMITED + 1);
                return -1;
            }
            wait = a->retry_after > 0 ? a->retry_after : LIMITED_WAIT;
            char w[32];
            snprintf(w, sizeof(w), "%.0fs", wait);
            brm_log_warn("backfill: Mist's API answered 429 (rate limit): waiting", "source",
                         s->name, "retry_after", w);
        } else if (status == 0 || status >= 500) {
            if (++failures > NET_RETRIES) {
                if (status)
                    brm_err_set(err, "source %s: Mist's API (%s) answered %ld, %d times", s->name,
                                host, status, failures);
                else
                    brm_err_set(err, "source %s: cannot reach Mist's API (%s): %s", s->name, host,
                                errbuf);
                return -1;
            }
            wait = a->retry_after > 0 ? a->retry_after : (double)(1 << (failures - 1));
            char st[24];
            snprintf(st, sizeof(st), "%ld", status);
            brm_log_warn("backfill: Mist's API failed: trying again", "source", s->name, "status",
                         status ? st : NULL, "error", status ? NULL : errbuf);
        } else {
            char said[201];
            snprintf(said, sizeof(said), "%.200s", a->body.data ? a->body.data : "");
            for (char *p = said; *p; p++)
                if (*p == '\n' || *p == '\r') *p = ' ';
            scrub(said, s->mist.token);
            if (status == 404)
                brm_err_set(err,
                            "source %s: Mist's API (%s) answered 404: no webhook %s in %s %s "
                            "(check sources.%s.mist: webhook_id, %s, and api's region)",
                            s->name, host, s->mist.webhook_id, s->mist.org_id ? "org" : "site",
                            s->mist.org_id ? s->mist.org_id : s->mist.site_id, s->name,
                            s->mist.org_id ? "org_id" : "site_id");
            else
                brm_err_set(err, "source %s: Mist's API (%s) answered %ld: %s", s->name, host,
                            status, said);
            return -1;
        }
        if (nap(bf, wait) < 0) goto stopping;
    }
stopping:
    brm_err_set(err, "source %s: brume is stopping", s->name);
    return -1;
}

/* A string field of the table at IDX, copied, or NULL. [-0, +0] */
static char *string_field(lua_State *L, int idx, const char *name, size_t *len) {
    char *v = NULL;
    lua_getfield(L, idx, name);
    if (lua_type(L, -1) == LUA_TSTRING) {
        size_t n;
        const char *s = lua_tolstring(L, -1, &n);
        v = brm_xstrndup(s, n);
        if (len) *len = n;
    }
    lua_pop(L, 1);
    return v;
}

/*
 * Reads a page's answer: its results in order, those of this webhook that
 * failed (a result of another webhook or status is not ours, and is left
 * out). Returns 0 with *OUT (N of them; the caller frees), the results
 * listed in *LISTED, the last one's time in *LAST (NaN: none) and the page
 * size in *PAGE, or -1 with ERR set. The page size is what was asked for,
 * or the answer's "limit" when Mist gave fewer a page than that: a page of
 * that many is full, and the window goes on after it.
 */
static int read_page(struct run *r, const struct answer *a, struct result **out, size_t *n,
                     size_t *listed, double *last, size_t *page, struct brm_err *err) {
    lua_State *L = r->bf->L;
    struct brm_err why;
    *out = NULL;
    *n = *listed = 0;
    *last = NAN;
    lua_settop(L, 0);
    size_t room = allow_decode(r->bf, a->body.len);
    int rc = brm_json_decode(L, a->body.data ? a->body.data : "", a->body.len, &why);
    if (rc == -2) {
        brm_err_set(err,
                    "source %s: Mist's API answered a page of %zu bytes that takes more than "
                    "%zu MB decoded",
                    r->src->name, a->body.len, room);
        lua_settop(L, 0);
        return -1;
    }
    if (rc != 0 || !lua_istable(L, 1)) {
        brm_err_set(err, "source %s: Mist's API answered something that is not a search result%s%s",
                    r->src->name, rc ? ": " : "", rc ? why.msg : "");
        lua_settop(L, 0);
        return -1;
    }
    *page = BRM_BACKFILL_LIMIT;
    lua_getfield(L, 1, "limit");
    if (lua_type(L, -1) == LUA_TNUMBER && lua_tonumber(L, -1) >= 1 &&
        lua_tonumber(L, -1) < BRM_BACKFILL_LIMIT)
        *page = (size_t)lua_tonumber(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, 1, "results");
    if (!lua_istable(L, 2)) {
        int missing = lua_isnil(L, 2);
        lua_settop(L, 0);
        if (missing) return 0; /* no result at all */
        brm_err_set(err, "source %s: Mist's API answered results that are not a list",
                    r->src->name);
        return -1;
    }
    size_t count = (size_t)lua_rawlen(L, 2);
    struct result *v = brm_xcalloc(count + 1, sizeof(*v));
    for (size_t i = 1; i <= count; i++) {
        lua_rawgeti(L, 2, (lua_Integer)i);
        if (!lua_istable(L, 3)) {
            lua_pop(L, 1);
            continue;
        }
        (*listed)++;
        lua_getfield(L, 3, "timestamp");
        double ts = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : NAN;
        lua_pop(L, 1);
        if (isfinite(ts)) *last = ts; /* paging goes by every result listed, ours or not */
        char *hook = string_field(L, 3, "webhook_id", NULL);
        char *status = string_field(L, 3, "status", NULL);
        int ours = (!hook || strcmp(hook, r->src->mist.webhook_id) == 0) &&
                   (!status || strcmp(status, "failure") == 0);
        free(hook);
        free(status);
        if (ours) {
            struct result *x = &v[(*n)++];
            x->body = string_field(L, 3, "req_payload", &x->len);
            x->topic = string_field(L, 3, "topic", NULL);
            x->id = string_field(L, 3, "id", NULL);
            x->timestamp = ts;
        }
        lua_pop(L, 1);
    }
    lua_settop(L, 0);
    lua_gc(L, LUA_GCCOLLECT, 0);
    *out = v;
    return 0;
}

static const char *plural(long n, const char *one, const char *many) {
    return n == 1 ? one : many;
}

/* Notes body X's outcome O (REASON for a skip or a failure, EVENTS its
 * count, -1: unknown) in the report, and counts it. */
static void note(struct run *r, const struct result *x, enum outcome o, long events,
                 const char *reason) {
    static const char *const done[] = { "took", "skipped", "failed" };
    static const char *const would[] = { "would take", "would skip", "would fail" };
    char at[40], n[32] = "-";
    brm_time_iso8601(isfinite(x->timestamp) ? x->timestamp : 0, at, sizeof(at));
    if (events >= 0) snprintf(n, sizeof(n), "%ld %s", events, plural(events, "event", "events"));
    report_line(r->report, "%-10s  %-8s  %-16s  %s  %-9s%s%s", (r->dry_run ? would : done)[o],
                r->src->name, x->topic ? x->topic : "?", at, n, reason ? "  " : "",
                reason ? reason : "");
    count_body(r, o);
}

/* Hands X to the host and waits until it is stored or refused. */
static enum outcome hand_in(struct run *r, const struct result *x, const char **reason) {
    struct brm_backfill *bf = r->bf;
    struct brm_backfill_body b = { bf, r->src->name, x->body, x->len, x->timestamp };
    pthread_mutex_lock(&bf->taken_lock);
    bf->taken = 0;
    pthread_mutex_unlock(&bf->taken_lock);
    bf->take(bf->take_arg, &b);
    pthread_mutex_lock(&bf->taken_lock);
    while (!bf->taken) pthread_cond_wait(&bf->taken_cond, &bf->taken_lock);
    struct brm_backfill_outcome o = bf->outcome;
    pthread_mutex_unlock(&bf->taken_lock);
    if (o.status != BRM_OK) {
        *reason = bf->reason;
        return FAILED;
    }
    r->messages += (long)o.messages;
    size_t events = o.events, duplicates = o.duplicates;
    if (events && duplicates == events) {
        *reason = "its events were run already (dedupe)";
        return SKIPPED;
    }
    *reason = duplicates ? "some of its events were run already (dedupe)" : NULL;
    return TAKEN;
}

void brm_backfill_taken(const struct brm_backfill_body *b, const struct brm_backfill_outcome *o) {
    struct brm_backfill *bf = b->backfill;
    pthread_mutex_lock(&bf->taken_lock);
    bf->outcome = *o;
    snprintf(bf->reason, sizeof(bf->reason), "%s", o->reason ? o->reason : "");
    bf->outcome.reason = bf->reason;
    bf->taken = 1;
    pthread_cond_signal(&bf->taken_cond);
    pthread_mutex_unlock(&bf->taken_lock);
}

/* One result of the search: passed over (seen in this run), skipped,
 * handed in, or said what would become of it. HAVE: the journal holds its
 * bytes (in_journal). */
static void handle(struct run *r, const struct result *x, int have) {
    unsigned char key[KEY_BYTES];
    if (x->id)
        key_of("id", x->id, strlen(x->id), key);
    else
        key_of("record", x->body ? x->body : "", x->body ? x->len : 0, key);
    if (seen_add(&r->seen, key)) return; /* the same record, on the page after */
    if (r->topic && x->topic) {
        char name[BRM_TOPIC_MAX];
        if (brm_topic_normalize(x->topic, strlen(x->topic), name, sizeof(name)) == 0 &&
            strcmp(name, r->topic_name) != 0)
            return; /* an API that did not filter: not asked for */
    }
    r->found++;
    if (!x->body) {
        note(r, x, FAILED, -1, "Mist's record holds no body (req_payload)");
        return;
    }
    struct brm_envelope env;
    struct brm_err why;
    lua_State *L = r->bf->L;
    size_t room = allow_decode(r->bf, x->len);
    int rc = brm_json_envelope(L, x->body, x->len, &env, &why);
    if (rc == -2) brm_err_set(&why, "it takes more than %zu MB decoded", room);
    if (rc != 0) {
        char reason[600];
        snprintf(reason, sizeof(reason), "not a Mist webhook body: %s", why.msg);
        note(r, x, FAILED, -1, reason);
        return;
    }
    lua_settop(L, 0);
    long events = (long)env.nevents;
    key_of("body", x->body, x->len, key);
    if (seen_add(&r->seen, key)) {
        note(r, x, SKIPPED, events, "the same body as another in this run");
        return;
    }
    if (have) {
        note(r, x, SKIPPED, events, "in the journal already");
        return;
    }
    if (r->dry_run || !r->bf->take) {
        note(r, x, TAKEN, events, NULL);
        return;
    }
    const char *reason = NULL;
    enum outcome o = hand_in(r, x, &reason);
    note(r, x, o, events, reason);
}

/*
 * Which of a page's N results the journal holds already, in FOUND (zeroed
 * by the caller): bodies brume stored but whose answer Mist did not get in
 * time, or that an earlier run took in. Mist's log says when it posted
 * each body, brume received it then: the look goes through the bodies
 * received within POSTED_SKEW of each post, whatever the journal's size.
 */
#define POSTED_SKEW 600.0 /* seconds brume's clock and Mist's may disagree by */

static void in_journal(struct run *r, const struct result *v, size_t n, int *found) {
    if (!r->journal || n == 0) return;
    struct brm_store_probe *p = brm_xcalloc(n, sizeof(*p));
    for (size_t i = 0; i < n; i++) {
        const char *body = v[i].body ? v[i].body : "";
        p[i] = (struct brm_store_probe){ brm_hash64(body, v[i].len), body, v[i].len, v[i].timestamp,
                                         0 };
    }
    struct brm_err err;
    if (brm_store_has_bodies(r->journal, p, n, POSTED_SKEW, &err) < 0)
        brm_log_warn("backfill: cannot look in the journal", "source", r->src->name, "error",
                     err.msg); /* then dedupe is what keeps them from running twice */
    else
        for (size_t i = 0; i < n; i++) found[i] = v[i].body && p[i].found;
    free(p);
}

/* ---- a catch-up's mark ----------------------------------------------------- */

/*
 * A catch-up that ends before its window does (brume stopped, or Mist
 * refused or could not be reached) leaves a mark in the data folder: where
 * the part it has not read starts. The journal cannot say it: the bodies
 * the catch-up took, and the posts that came meanwhile, are newer than
 * what is still missing. The next catch-up reads from the mark (at most
 * catch_up back), and removes it once it reaches the end of its window.
 */
static char *catch_up_mark(const struct brm_config *cfg, const char *source) {
    struct brm_buf name;
    brm_buf_init(&name);
    brm_buf_puts(&name, "catch-up.");
    put_escaped(&name, source);
    char *path = brm_path_join(cfg->data_dir, name.data);
    brm_buf_reset(&name);
    return path;
}

/* The second the mark at PATH holds: 1 with it in *AT, or 0 (none, or unreadable). */
static int mark_read(const char *path, long *at) {
    char text[32], *end;
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = '\0';
    errno = 0;
    long v = strtol(text, &end, 10);
    if (end == text || (*end && *end != '\n') || errno || v <= 0) return 0;
    *at = v;
    return 1;
}

/* Puts AT in the mark at PATH (a whole file, synced, in place at once). */
static void mark_write(const struct run *r, long at) {
    size_t size = strlen(r->mark) + 5;
    char text[32], *tmp = brm_xmalloc(size);
    int n = snprintf(text, sizeof(text), "%ld\n", at);
    snprintf(tmp, size, "%s.new", r->mark);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int ok = fd >= 0 && write(fd, text, (size_t)n) == n && fsync(fd) == 0;
    if (fd >= 0 && close(fd) < 0) ok = 0;
    if (!ok || rename(tmp, r->mark) < 0) {
        brm_log_warn("backfill: cannot keep the catch-up's progress: a restart before it ends may "
                     "miss what it has not read",
                     "source", r->src->name, "path", r->mark, "error", strerror(errno));
        unlink(tmp);
    }
    free(tmp);
}

static void mark_drop(const struct run *r) {
    if (unlink(r->mark) < 0 && errno != ENOENT)
        brm_log_warn("backfill: cannot remove the catch-up's mark", "source", r->src->name, "path",
                     r->mark, "error", strerror(errno));
}

/* Reads [R->start, R->end) page by page. Returns 0, or -1 with ERR. */
static int read_window(struct run *r, struct brm_err *err) {
    long start = r->start;
    for (;;) {
        char *url = brm_backfill_url(r->src, start, r->end, r->topic);
        struct answer a = { .bf = r->bf };
        brm_buf_init(&a.body);
        int rc = get_page(r, url, &a, err);
        free(url);
        struct result *v = NULL;
        size_t n = 0, listed = 0, page = BRM_BACKFILL_LIMIT;
        double last = NAN;
        if (rc == 0) rc = read_page(r, &a, &v, &n, &listed, &last, &page, err);
        brm_buf_reset(&a.body);
        if (rc < 0) return -1;
        int *found = brm_xcalloc(n ? n : 1, sizeof(*found));
        in_journal(r, v, n, found);
        for (size_t i = 0; i < n && !atomic_load(&r->bf->stopping); i++) handle(r, &v[i], found[i]);
        free(found);
        free_results(v, n);
        if (atomic_load(&r->bf->stopping)) {
            brm_err_set(err, "source %s: brume is stopping", r->src->name);
            return -1;
        }
        long next;
        enum brm_backfill_step step =
            brm_backfill_next_start(start, r->end, listed, page, last, &next);
        if (step == BRM_BACKFILL_CROWDED) {
            char at[40];
            brm_time_iso8601((double)start, at, sizeof(at));
            brm_log_warn("backfill: a whole page of failures in one second: moving on, some of "
                         "that second's may be missed",
                         "source", r->src->name, "second", at);
            report_line(r->report,
                        "note: source %s: more than %d failures in the second of %s: some of "
                        "them may be missed",
                        r->src->name, (int)page, at);
            r->crowded++;
        }
        if (step == BRM_BACKFILL_DONE) return 0;
        if (r->mark) mark_write(r, next); /* what is before NEXT is stored */
        start = next;
    }
}

/* The window of a catch-up of S: back to the last body the journal holds
 * of it (less a margin: what failed just before), at most catch_up. */
static double catch_up_since(const struct brm_source *s, struct brm_store *journal, double now) {
    double floor_at = now - s->mist.catch_up, last = 0;
    struct brm_err err;
    if (!journal) return floor_at;
    int rc = brm_store_source_last(journal, s->name, floor_at, LAST_SCAN, &last, &err);
    if (rc < 0) brm_log_warn("backfill: cannot read the journal", "error", err.msg);
    return rc == 1 && last - MARGIN > floor_at ? last - MARGIN : floor_at;
}

/* Runs S over [SINCE, UNTIL) for ASK, into REPORT. */
static void run_source(struct brm_backfill *bf, const struct brm_source *s,
                       const struct brm_backfill_ask *ask, const char *kind, double since,
                       double until, struct brm_store *journal, char *mark,
                       struct brm_backfill_report *report) {
    struct run r = { .bf = bf,
                     .src = s,
                     .journal = journal,
                     .report = report,
                     .kind = kind,
                     .topic = ask->topic,
                     .dry_run = ask->dry_run,
                     .start = (long)floor(since),
                     .end = (long)ceil(until),
                     .mark = mark };
    if (r.end <= r.start) r.end = r.start + 1;
    if (mark) mark_write(&r, r.start);
    if (ask->topic)
        brm_topic_normalize(ask->topic, strlen(ask->topic), r.topic_name, sizeof(r.topic_name));
    struct brm_err err;
    int rc = read_window(&r, &err);
    if (mark && rc == 0) mark_drop(&r);
    char from[40], to[40], found[32], taken[32], skipped[32], failed[32], requests[32];
    brm_time_iso8601((double)r.start, from, sizeof(from));
    brm_time_iso8601((double)r.end, to, sizeof(to));
    snprintf(found, sizeof(found), "%ld", r.found);
    snprintf(taken, sizeof(taken), "%ld", r.taken);
    snprintf(skipped, sizeof(skipped), "%ld", r.skipped);
    snprintf(failed, sizeof(failed), "%ld", r.failed);
    snprintf(requests, sizeof(requests), "%ld", r.requests);
    const char *kv[] = { "source",   s->name,
                         "run",      kind,
                         "since",    from,
                         "until",    to,
                         "found",    found,
                         "taken",    taken,
                         "skipped",  skipped,
                         "failed",   failed,
                         "requests", requests,
                         "dry_run",  ask->dry_run ? "true" : NULL,
                         "error",    rc < 0 ? err.msg : NULL };
    brm_log_kv(rc < 0 ? BRM_LOG_ERROR : BRM_LOG_INFO, rc < 0 ? "backfill stopped" : "backfill done",
               kv, BRM_ARRAY_LEN(kv) / 2);
    char sent[64] = "";
    if (!ask->dry_run)
        snprintf(sent, sizeof(sent), ", %ld %s queued", r.messages,
                 plural(r.messages, "message", "messages"));
    report_line(report,
                "source %s: %s to %s: %ld found, %ld %s, %ld skipped, %ld failed (%ld %s%s)",
                s->name, from, to, r.found, r.taken, ask->dry_run ? "to take" : "taken", r.skipped,
                r.failed, r.requests, plural(r.requests, "request", "requests"), sent);
    if (rc < 0) {
        report_line(report, "error: %s", err.msg);
        report->ok = 0;
    }
    report->found += r.found;
    report->taken += r.taken;
    report->skipped += r.skipped;
    report->failed += r.failed;
    report->messages += r.messages;
    seen_reset(&r.seen);
}

/* Runs ASK on CFG: each of its sources in turn. */
static struct brm_backfill_report *run_ask(struct brm_backfill *bf, const struct brm_config *cfg,
                                           const struct brm_backfill_ask *ask, const char *kind) {
    struct brm_backfill_report *report = report_new();
    struct brm_err err;
    if (brm_backfill_check(cfg, ask, &err) < 0) {
        report_line(report, "error: %s", err.msg);
        report->ok = 0;
        return report;
    }
    /* No store yet is no body yet; one that cannot be read is said. */
    struct brm_store *journal = NULL;
    if (access(bf->store_path, F_OK) == 0 &&
        !(journal = brm_store_open_reader(bf->store_path, &err))) {
        brm_log_warn("backfill: cannot read the journal: bodies it holds are not skipped", "error",
                     err.msg);
        report_line(report, "note: cannot read the journal (%s): bodies it holds are not skipped",
                    err.msg);
    }
    double now = brm_time_now();
    int sources = 0;
    for (size_t i = 0; i < cfg->nsources && !atomic_load(&bf->stopping); i++) {
        const struct brm_source *s = &cfg->sources[i];
        if (!s->mist.api || (ask->source && strcmp(ask->source, s->name) != 0)) continue;
        if (ask->catch_up && s->mist.catch_up <= 0) continue;
        double since = ask->catch_up ? catch_up_since(s, journal, now) : ask->since;
        double until = !ask->catch_up && ask->until > 0 ? ask->until : now;
        char *mark = ask->catch_up && !ask->dry_run ? catch_up_mark(cfg, s->name) : NULL;
        long unread;
        if (mark && mark_read(mark, &unread) && unread < since)
            since = fmax((double)unread, now - s->mist.catch_up); /* an earlier one's rest */
        run_source(bf, s, ask, kind, since, until, journal, mark, report);
        free(mark);
        sources++;
    }
    if (sources > 1)
        report_line(report, "total: %ld found, %ld %s, %ld skipped, %ld failed", report->found,
                    report->taken, ask->dry_run ? "to take" : "taken", report->skipped,
                    report->failed);
    brm_store_close(journal);
    return report;
}

/* The scheduled run that is due, or the time the next one is (0: none). */
static struct schedule *due_schedule(struct brm_backfill *bf, double now, double *next) {
    struct schedule *due = NULL;
    *next = 0;
    for (size_t i = 0; i < bf->nsched; i++) {
        struct schedule *x = &bf->sched[i];
        if (x->next_at <= now && (!due || x->next_at < due->next_at)) due = x;
        if (!*next || x->next_at < *next) *next = x->next_at;
    }
    return due;
}

/* Runs source NAME's schedule: since its last run's end, less a margin
 * (a post that fails is logged by Mist after its timeout). Returns 1 when
 * it read its window through, 0 when not (the next run reads it again). */
static int run_schedule(struct brm_backfill *bf, const struct brm_config *cfg, const char *name,
                        double last_end, double now) {
    struct brm_backfill_ask ask = { .source = name, .since = last_end - MARGIN, .until = now };
    struct brm_backfill_report *report = run_ask(bf, cfg, &ask, "schedule");
    int ok = report->ok;
    brm_backfill_report_free(report);
    return ok;
}

static void *backfill_main(void *arg) {
    struct brm_backfill *bf = arg;
    brm_thread_name("backfill");
    brm_metrics_set_slot(bf->slot);
    pthread_mutex_lock(&bf->lock);
    while (!atomic_load(&bf->stopping)) {
        const struct brm_config *cfg = brm_config_ref(bf->cfg);
        struct queued *q = bf->queue;
        double now = brm_time_now(), next = 0;
        if (q) {
            bf->queue = q->next;
            if (!bf->queue) bf->tail = &bf->queue;
            pthread_mutex_unlock(&bf->lock);
            struct brm_backfill_report *report =
                run_ask(bf, cfg, &q->ask, q->ask.catch_up ? "catch-up" : "asked");
            q->done(q->arg, report);
            free_queued(q);
            brm_config_free(cfg);
            pthread_mutex_lock(&bf->lock);
            continue;
        }
        struct schedule *due = due_schedule(bf, now, &next);
        if (due) {
            char *name = brm_xstrdup(due->source);
            double last_end = due->last_end;
            pthread_mutex_unlock(&bf->lock);
            int read = run_schedule(bf, cfg, name, last_end, now);
            pthread_mutex_lock(&bf->lock);
            for (size_t i = 0; i < bf->nsched; i++) { /* a reload may have changed them */
                struct schedule *x = &bf->sched[i];
                const struct brm_source *s = brm_config_source(bf->cfg, x->source);
                if (strcmp(x->source, name) != 0 || !s) continue;
                if (read) x->last_end = now; /* else what it did not read is read next time */
                x->next_at = brm_time_now() + s->mist.every;
            }
            free(name);
            brm_config_free(cfg);
            continue;
        }
        brm_config_free(cfg);
        if (!next) {
            pthread_cond_wait(&bf->wake, &bf->lock);
            continue;
        }
        struct timespec ts; /* NEXT is on the wall clock, as the cond's wait is */
        ts.tv_sec = (time_t)next;
        ts.tv_nsec = (long)((next - (double)ts.tv_sec) * 1e9);
        pthread_cond_timedwait(&bf->wake, &bf->lock, &ts);
    }
    pthread_mutex_unlock(&bf->lock);
    return NULL;
}

int brm_backfill_start(struct brm_backfill *bf, int schedule, struct brm_err *err) {
    bf->easy = curl_easy_init();
    bf->held_limit = SIZE_MAX;
    bf->L = lua_newstate(counted_alloc, bf);
    if (!bf->easy || !bf->L) {
        brm_err_set(err, "backfill: cannot set up libcurl or a Lua state");
        return -1;
    }
    brm_json_open(bf->L);
    lua_settop(bf->L, 0);
    pthread_mutex_lock(&bf->lock);
    bf->schedule = schedule;
    if (schedule) reschedule(bf, bf->cfg, brm_time_now());
    pthread_mutex_unlock(&bf->lock);
    int rc = pthread_create(&bf->thread, NULL, backfill_main, bf);
    if (rc != 0) {
        brm_err_set(err, "cannot start the backfill thread: %s", strerror(rc));
        return -1;
    }
    bf->started = 1;
    return 0;
}

void brm_backfill_stop(struct brm_backfill *bf) {
    if (!bf) return;
    pthread_mutex_lock(&bf->lock);
    atomic_store(&bf->stopping, 1);
    pthread_cond_broadcast(&bf->wake);
    struct queued *q = bf->queue;
    bf->queue = NULL;
    bf->tail = &bf->queue;
    pthread_mutex_unlock(&bf->lock);
    if (bf->started) pthread_join(bf->thread, NULL);
    bf->started = 0;
    for (struct queued *next; q; q = next) {
        next = q->next;
        struct brm_backfill_report *report = report_new();
        report->ok = 0;
        report_line(report, "error: brume is stopping");
        q->done(q->arg, report);
        free_queued(q);
    }
}

void brm_backfill_free(struct brm_backfill *bf) {
    if (!bf) return;
    brm_backfill_stop(bf);
    for (size_t k = 0; k < bf->nsched; k++) free(bf->sched[k].source);
    free(bf->sched);
    if (bf->easy) curl_easy_cleanup(bf->easy);
    if (bf->L) lua_close(bf->L);
    brm_config_free(bf->cfg);
    free(bf->store_path);
    pthread_cond_destroy(&bf->taken_cond);
    pthread_mutex_destroy(&bf->taken_lock);
    pthread_cond_destroy(&bf->wake);
    pthread_mutex_destroy(&bf->lock);
    free(bf);
}

/* ---- asking a running brume ----------------------------------------------- */

void brm_backfill_query(const struct brm_backfill_ask *ask, struct brm_buf *out) {
    brm_buf_printf(out, "since=%.3f&until=%.3f", ask->since, ask->until);
    if (ask->source) {
        brm_buf_puts(out, "&source=");
        put_escaped(out, ask->source);
    }
    if (ask->topic) {
        brm_buf_puts(out, "&topic=");
        put_escaped(out, ask->topic);
    }
    if (ask->dry_run) brm_buf_puts(out, "&dry_run=1");
}

static int hexval(char c) {
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* Decodes the value of a query's KEY=VALUE pair in [P, END) into OUT. */
static int unescape(const char *p, const char *end, char *out, size_t size) {
    size_t n = 0;
    for (; p < end; p++) {
        char c = *p;
        if (c == '+') c = ' ';
        if (c == '%') {
            int hi = end - p > 2 ? hexval(p[1]) : -1, lo = hi >= 0 ? hexval(p[2]) : -1;
            if (lo < 0) return -1;
            c = (char)(hi * 16 + lo);
            p += 2;
        }
        if (c == '\0' || n + 1 >= size) return -1;
        out[n++] = c;
    }
    out[n] = '\0';
    return 0;
}

int brm_backfill_parse(const char *query, size_t len, struct brm_backfill_ask *ask, char *source,
                       char *topic, size_t size, struct brm_err *err) {
    const char *p = query, *end = query ? query + len : NULL;
    memset(ask, 0, sizeof(*ask));
    while (p && p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p)), *stop = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(stop - p));
        char value[256], *tail;
        if (!eq || unescape(eq + 1, stop, value, sizeof(value)) < 0) goto bad;
        size_t klen = (size_t)(eq - p);
        if (klen == 6 && memcmp(p, "source", 6) == 0) {
            if (snprintf(source, size, "%s", value) >= (int)size || !*value) goto bad;
            ask->source = source;
        } else if (klen == 5 && memcmp(p, "topic", 5) == 0) {
            if (snprintf(topic, size, "%s", value) >= (int)size || !*value) goto bad;
            ask->topic = topic;
        } else if ((klen == 5 && memcmp(p, "since", 5) == 0) ||
                   (klen == 5 && memcmp(p, "until", 5) == 0)) {
            double t = strtod(value, &tail);
            if (*tail || !isfinite(t) || t < 0) goto bad;
            *(p[0] == 's' ? &ask->since : &ask->until) = t;
        } else if (klen == 7 && memcmp(p, "dry_run", 7) == 0) {
            /* Anything but 0 or 1 is refused: "dry_run=true" must not run for real. */
            if (strcmp(value, "0") != 0 && strcmp(value, "1") != 0) goto bad;
            ask->dry_run = value[0] == '1';
        } else {
            goto bad;
        }
        p = amp ? amp + 1 : end;
    }
    return 0;
bad:
    brm_err_set(err, "bad parameters: source, topic, since and until (seconds since the epoch), "
                     "dry_run (0 or 1)");
    return -1;
}

static size_t gather(char *data, size_t size, size_t n, void *arg) {
    brm_buf_append(arg, data, size * n);
    return size * n;
}

int brm_backfill_remote(const char *admin, const char *token, const struct brm_backfill_ask *ask,
                        struct brm_buf *out, struct brm_err *err) {
    char host[256], auth[600], errbuf[CURL_ERROR_SIZE] = "";
    int port;
    if (brm_split_addr(admin, host, sizeof(host), &port) < 0) {
        brm_err_set(err, "cannot read the admin address %s", admin);
        return -1;
    }
    /* An address that binds everything is reached on loopback. */
    const char *reach = !*host || strcmp(host, "0.0.0.0") == 0 ? "127.0.0.1"
                        : strcmp(host, "::") == 0              ? "::1"
                                                               : host;
    struct brm_buf url;
    brm_buf_init(&url);
    brm_buf_printf(&url, strchr(reach, ':') ? "http://[%s]:%d/backfill?" : "http://%s:%d/backfill?",
                   reach, port);
    brm_backfill_query(ask, &url);
    if (token)
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
    else
        snprintf(auth, sizeof(auth), "X-Brume-Console: 1");
    CURL *e = curl_easy_init();
    struct curl_slist *headers = curl_slist_append(NULL, auth);
    memset(auth, 0, sizeof(auth));
    long status = -1;
    if (e && headers) {
        curl_easy_setopt(e, CURLOPT_URL, url.data);
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http");
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, 5L);
        curl_easy_setopt(e, CURLOPT_NOPROXY, "*"); /* the admin listener is ours, not a proxy's */
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, 0L);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, gather);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, out);
        curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
        CURLcode rc = curl_easy_perform(e);
        if (rc == CURLE_OK)
            curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
        else
            brm_err_set(err, "cannot reach the running brume's admin listener at %s: %s", admin,
                        errbuf[0] ? errbuf : curl_easy_strerror(rc));
    } else {
        brm_err_set(err, "cannot set up libcurl");
    }
    for (struct curl_slist *h = headers; h; h = h->next) memset(h->data, 0, strlen(h->data));
    curl_slist_free_all(headers);
    if (e) curl_easy_cleanup(e);
    brm_buf_reset(&url);
    return (int)status;
}
