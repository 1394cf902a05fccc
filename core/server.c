#define _GNU_SOURCE
#include "server.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <lua.h>
#include <openssl/crypto.h>
#include <openssl/opensslv.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backfill.h"
#include "console.h"
#include "engine.h"
#include "http.h"
#include "intake.h"
#include "journal.h"
#include "log.h"
#include "metrics.h"
#include "outbox.h"
#include "shared.h"
#include "snapshot.h"
#include "tls.h"
#include "watch.h"

#define DRAIN_POLL_MS 50
#define SWEEP_BUCKETS 4096 /* of the rule state, looked at each second for expired keys */
#define DUE_KEY       1280 /* a timer's key in the state: namespace, rule, key */
#define DUE_RETRY     0.02 /* seconds before looking again at a due timer a group holds */
#define DEBOUNCE      0.3  /* seconds of quiet after a file change before reloading */
/* Shared state: the scheduler asks Redis for due timers this often (and at
 * the earliest due time it knows of), claiming at most CLAIM_LIMIT a time;
 * held bodies are run again in batches of DRAIN_BATCH. */
#define CLAIM_POLL  0.5
#define CLAIM_LIMIT 256
#define DRAIN_POLL  0.2
#define DRAIN_BATCH 64
#define MAX_REPORT  (64u << 10)
/* Timers wait for the catch-up from Mist's delivery log at start (so that
 * a device that came back while brume was stopped cancels its hold-down),
 * at most this long. */
#define CATCH_UP_HOLD 120

struct server;

/* A body the backfill took from Mist's delivery log, on its way to a
 * worker's intake. */
struct handed {
    struct handed *next;
    const struct brm_backfill_body *b;
    struct brm_intake_tally tally;
};

/* A POST /backfill waiting for its report. */
struct asked {
    struct asked *next;
    struct server *srv;
    struct brm_http_req *req;
    struct brm_backfill_report *report;
};

struct worker {
    struct server *srv;
    int id;
    pthread_t thread;
    int started;
    struct event_base *base;
    struct brm_http *http;
    struct brm_intake *intake;
    int mailfd; /* eventfd: main -> worker */
    struct event *mail, *drain_timer;
    pthread_mutex_t lock; /* guards the mailbox fields below */
    struct brm_engine *next_engine;
    struct brm_tls **next_tls; /* per listen entry (NULL: plain, or no change) */
    int drain;
    uint64_t drain_deadline;
    struct handed *handed;    /* bodies from Mist's delivery log, to run */
    _Atomic int wants_engine; /* its VM is full of kept memory: build another */
};

/* What a config needs built before it can run: one engine per worker and
 * the TLS contexts of the listeners. */
struct rule_set {
    const struct brm_config *cfg; /* a reference */
    struct brm_snapshot *files;   /* what its rules and scripts were read from (a reference) */
    struct brm_engine **engines;
    struct brm_tls **tls; /* per listen entry of the running listeners */
};

struct server {
    const struct brm_config *cfg;     /* the running config (a reference) */
    const struct brm_config *started; /* the one listeners, workers and data came from */
    struct brm_snapshot *files;       /* the running set's sources: a VM rebuilt runs the same */
    struct event_base *base;
    struct brm_http *admin;
    struct worker *workers;
    int nworkers;
    struct brm_outbox *outbox;
    struct brm_journal *journal;
    int mailfd; /* eventfd: workers -> main */
    struct event *mail, *sigterm, *sigint, *sighup;
    int duefd; /* eventfd: the state -> main, when a timer came due earlier */
    struct event *due_mail, *due_timer;
    char **rule_names; /* of the running set: a reload drops the timers of those it removes */
    size_t nrule_names;
    struct brm_watch *watch;
    _Atomic long connections;
    _Atomic size_t unverified;      /* bytes held for bodies not checked yet, all workers */
    _Atomic long rules, generation; /* rules in the running set, and its version */
    int lockfd;
    struct brm_counter *reloads, *reload_failures;
    struct brm_state *state;
    struct brm_shared *shared;     /* the state in Redis, or NULL */
    struct brm_store *held_reader; /* shared: reads the held bodies back */
    struct event *drain_timer;
    int64_t drain_after;        /* the last held body handed over */
    _Atomic long drain_pending; /* held bodies handed over, not done with */
    _Atomic int claiming, claim_more;
    _Atomic long long claim_next_ms; /* the earliest due time Redis knows of (ms) */
    _Atomic long timers_pending;
    struct brm_buf last_reload;  /* the last reload's outcome, a JSON object (/healthz) */
    struct brm_console *console; /* on the admin listener, or NULL */
    struct brm_backfill *backfill;
    _Atomic unsigned next_worker; /* the one the next backfilled body goes to */
    int holding;                  /* timers wait for the catch-up */
    struct event *hold_timer;
    _Atomic int caught_up;      /* the catch-up is done: the main thread lets timers go */
    pthread_mutex_t asked_lock; /* guards ANSWERED */
    struct asked *answered;     /* POST /backfill reports to send */
};

static void note_admin(struct server *s, const char *admin);

static void post(int fd) {
    uint64_t one = 1;
    if (write(fd, &one, sizeof(one)) < 0) { /* the counter saturates only at 2^64 */
    }
}

static void drain_mail(int fd) {
    uint64_t v;
    if (read(fd, &v, sizeof(v)) < 0) { /* EAGAIN: nothing pending */
    }
}

static void free_tls(struct brm_tls **v, size_t n) {
    for (size_t i = 0; v && i < n; i++) brm_tls_free(v[i]);
    free(v);
}

/* ---- intake routes (worker threads) ------------------------------------- */

static void intake_done(void *arg, enum brm_status st, const char *reason) {
    struct brm_http_req *req = arg;
    int code = st == BRM_OK             ? 200
               : st == BRM_UNAUTHORIZED ? 401
               : st == BRM_BAD_REQUEST  ? 400
               : st == BRM_TOO_LARGE    ? 413
                                        : 503;
    char body[600];
    int n = snprintf(body, sizeof(body), "%s\n", reason);
    if (n < 0 || (size_t)n >= sizeof(body)) n = (int)strlen(body);
    brm_http_respond(req, code, NULL, body, (size_t)n, code == 503 ? "Retry-After: 5\r\n" : NULL);
}

/* A route's label is its source's name; the source itself is looked up in
 * the config in place now, which a reload may have changed. */
static const struct brm_source *route_source(struct worker *w, const struct brm_http_req *req) {
    return brm_intake_source(w->intake, req->route->label);
}

/* A post to a source that wants a signature, with none or one that cannot
 * be one, is refused before its body is read. */
static int source_check_head(void *arg, const struct brm_http_req *req, const char **reason) {
    const struct brm_source *src = route_source(arg, req);
    size_t v2_len = 0, v1_len = 0;
    const char *v2 = brm_http_header(req, "x-mist-signature-v2", &v2_len);
    const char *v1 = brm_http_header(req, "x-mist-signature", &v1_len);
    if (!src) return 404;
    *reason = brm_intake_refuse_head(src, v2, v2_len, v1, v1_len);
    return *reason ? 401 : 0;
}

static void source_handle(void *arg, struct brm_http_req *req) {
    struct worker *w = arg;
    const struct brm_source *src = route_source(w, req);
    if (!src) { /* removed by a reload while the body came */
        brm_http_respond(req, 404, NULL, "no such path\n", 13, NULL);
        return;
    }
    struct brm_intake_req ir = {
        .source = src,
        .body = req->body,
        .len = req->body_len,
        .received_at = req->received_at,
        .peer = req->peer,
    };
    ir.sig = brm_http_header(req, "x-mist-signature-v2", &ir.sig_len);
    ir.sig1 = brm_http_header(req, "x-mist-signature", &ir.sig1_len);
    brm_intake_submit(w->intake, &ir, intake_done, req);
    if (brm_engine_exhausted(brm_intake_engine(w->intake)) && !atomic_exchange(&w->wants_engine, 1))
        post(w->srv->mailfd);
}

/* Points W's server at the sources and limits of CFG. */
static void route_sources(struct worker *w, const struct brm_config *cfg) {
    struct brm_http_route *routes = brm_xcalloc(cfg->nsources, sizeof(*routes));
    for (size_t i = 0; i < cfg->nsources; i++) {
        routes[i] = (struct brm_http_route){
            .path = cfg->sources[i].path,
            .label = cfg->sources[i].name,
            .methods = BRM_HTTP_POST,
            .max_body = cfg->sources[i].max_body,
            .check_head = source_check_head,
            .handle = source_handle,
            .arg = w,
        };
    }
    brm_http_set_routes(w->http, routes, cfg->nsources);
    free(routes);
}

static struct brm_http_opts http_opts(struct server *s, const struct brm_config *cfg) {
    return (struct brm_http_opts){
        .header_timeout = cfg->http.header_timeout,
        .body_timeout = cfg->http.body_timeout,
        .idle_timeout = cfg->http.idle_timeout,
        .max_connections = cfg->http.max_connections,
        .connections = &s->connections,
        .max_unverified = (size_t)cfg->http.max_unverified,
        .unverified = &s->unverified,
    };
}

/* ---- workers ------------------------------------------------------------ */

static void on_drain_poll(evutil_socket_t fd, short what, void *arg) {
    struct worker *w = arg;
    (void)fd, (void)what;
    size_t open = brm_http_connections(w->http);
    if (open == 0 || brm_time_mono_ms() >= w->drain_deadline) {
        if (open) {
            char n[32];
            snprintf(n, sizeof(n), "%zu", open);
            brm_log_warn("drain timeout: closing connections still open", "connections", n);
        }
        event_base_loopbreak(w->base);
    }
}

static void handed_done(void *arg, enum brm_status st, const char *reason) {
    struct handed *h = arg;
    struct brm_backfill_outcome o = { st, st == BRM_OK ? NULL : reason, h->tally.events,
                                      h->tally.duplicates, h->tally.messages };
    brm_backfill_taken(h->b, &o);
    free(h);
}

/* Runs a body from Mist's delivery log through INTAKE as a post, trusted
 * (it came from Mist's API with the source's token). */
static void take_handed(struct brm_intake *intake, struct handed *h) {
    const struct brm_source *src = brm_intake_source(intake, h->b->source);
    if (!src) {
        handed_done(h, BRM_UNAVAILABLE, "a reload removed its source");
        return;
    }
    struct brm_intake_req req = { .source = src,
                                  .body = h->b->body,
                                  .len = h->b->len,
                                  .received_at = brm_time_now(),
                                  .peer = "mist-delivery-log" };
    brm_intake_submit_backfilled(intake, &req, &h->tally, handed_done, h);
}

/* The backfill's host (on its thread): a worker runs the body, as a post. */
static void backfill_take(void *arg, const struct brm_backfill_body *b) {
    struct server *s = arg;
    struct handed *h = brm_xcalloc(1, sizeof(*h));
    h->b = b;
    struct worker *w = &s->workers[atomic_fetch_add(&s->next_worker, 1) % (unsigned)s->nworkers];
    pthread_mutex_lock(&w->lock);
    h->next = w->handed;
    w->handed = h;
    pthread_mutex_unlock(&w->lock);
    post(w->mailfd);
}

static void on_worker_mail(evutil_socket_t fd, short what, void *arg) {
    struct worker *w = arg;
    (void)what;
    drain_mail(fd);
    pthread_mutex_lock(&w->lock);
    struct brm_engine *e = w->next_engine;
    struct brm_tls **tls = w->next_tls;
    struct handed *handed = w->handed;
    int drain = w->drain;
    w->next_engine = NULL;
    w->next_tls = NULL;
    w->handed = NULL;
    pthread_mutex_unlock(&w->lock);
    /* Between two requests: the next body runs on the new set. */
    if (e) {
        const struct brm_config *cfg = brm_engine_config(e);
        route_sources(w, cfg);
        struct brm_http_opts o = http_opts(w->srv, cfg);
        brm_http_set_opts(w->http, &o);
        brm_intake_swap(w->intake, e);
    }
    size_t nlisten = w->srv->started->nlisten;
    for (size_t i = 0; tls && i < nlisten; i++)
        if (tls[i]) brm_http_set_tls(w->http, i, tls[i]);
    free_tls(tls, nlisten);
    for (struct handed *h = handed, *next; h; h = next) {
        next = h->next;
        take_handed(w->intake, h);
    }
    if (drain && !w->drain_timer) {
        brm_http_drain(w->http);
        w->drain_timer = event_new(w->base, -1, EV_PERSIST, on_drain_poll, w);
        struct timeval tv = { 0, DRAIN_POLL_MS * 1000 };
        event_add(w->drain_timer, &tv);
        on_drain_poll(-1, 0, w);
    }
}

static void *worker_main(void *arg) {
    struct worker *w = arg;
    char name[32];
    snprintf(name, sizeof(name), "worker %d", w->id + 1);
    brm_thread_name(name);
    brm_metrics_set_slot(w->id + 1);
    event_base_dispatch(w->base);
    brm_intake_flush(w->intake); /* the drain may end the loop before a commit */
    return NULL;
}

static struct event_base *new_base(void) {
    struct event_config *ec = event_config_new();
    /* Each base belongs to one thread; other threads only write its eventfd. */
    event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK);
    struct event_base *b = event_base_new_with_config(ec);
    event_config_free(ec);
    if (!b) {
        fprintf(stderr, "brume: cannot create an event base\n");
        abort();
    }
    return b;
}

/* Mails W an engine (and TLS contexts, NULL for none), taking ownership. */
static void hand(struct worker *w, struct brm_engine *e, struct brm_tls **tls) {
    size_t nlisten = w->srv->started->nlisten;
    pthread_mutex_lock(&w->lock);
    struct brm_engine *stale = NULL; /* never picked up: superseded */
    struct brm_tls **stale_tls = NULL;
    if (e) {
        stale = w->next_engine;
        w->next_engine = e;
    }
    if (tls) {
        stale_tls = w->next_tls;
        w->next_tls = tls;
    }
    pthread_mutex_unlock(&w->lock);
    brm_engine_free(stale);
    free_tls(stale_tls, nlisten);
    post(w->mailfd);
}

/* A state key some worker's parked body waited for is free: every worker
 * looks at its parked bodies (any thread). */
static void wake_workers(void *arg) {
    struct server *s = arg;
    for (int i = 0; i < s->nworkers; i++)
        if (s->workers[i].intake) brm_intake_wake(s->workers[i].intake);
}

static int setup_worker(struct server *s, struct worker *w, int id, struct brm_engine *e) {
    w->srv = s;
    w->id = id;
    w->base = new_base();
    pthread_mutex_init(&w->lock, NULL);
    w->mailfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->mailfd < 0) return -1;
    w->mail = event_new(w->base, w->mailfd, EV_READ | EV_PERSIST, on_worker_mail, w);
    event_add(w->mail, NULL);
    w->intake = brm_intake_new(e, s->outbox, s->journal, s->state, w->base, wake_workers, s);
    if (s->shared) brm_intake_set_shared(w->intake, s->shared);
    struct brm_http_opts o = http_opts(s, s->cfg);
    w->http = brm_http_new(w->base, &o, NULL, 0);
    route_sources(w, s->cfg);
    return 0;
}

static void free_worker(struct worker *w) {
    if (!w->base) return;
    for (struct handed *h = w->handed, *next; h; h = next) { /* the backfill stopped first */
        next = h->next;
        handed_done(h, BRM_UNAVAILABLE, "brume is stopping");
    }
    brm_http_free(w->http);
    brm_intake_free(w->intake);
    brm_engine_free(w->next_engine);
    free_tls(w->next_tls, w->srv->started->nlisten);
    if (w->drain_timer) event_free(w->drain_timer);
    if (w->mail) event_free(w->mail);
    if (w->mailfd >= 0) close(w->mailfd);
    pthread_mutex_destroy(&w->lock);
    event_base_free(w->base);
}

/* Writes ADDR with its port replaced by PORT (the one bind picked for 0). */
static void format_addr(const char *addr, int port, char *out, size_t size) {
    char host[256];
    int ignored;
    brm_split_addr(addr, host, sizeof(host), &ignored);
    if (strchr(host, ':'))
        snprintf(out, size, "[%s]:%d", host, port);
    else
        snprintf(out, size, "%s:%d", host, port);
}

/* Binds every listen address once per worker: port 0 is resolved by the
 * first socket so all workers share the port it got. */
static int open_listeners(struct server *s, struct brm_tls **tls) {
    const struct brm_config *cfg = s->started;
    struct brm_err err;
    for (size_t i = 0; i < cfg->nlisten; i++) {
        char addr[300];
        snprintf(addr, sizeof(addr), "%s", cfg->listen[i].addr);
        for (int k = 0; k < s->nworkers; k++) {
            int bound;
            int fd = brm_http_listen(addr, 1, &bound, &err);
            if (fd < 0) {
                brm_log_error("cannot listen", "error", err.msg);
                return -1;
            }
            brm_http_add_listener(s->workers[k].http, fd, tls[i]);
            if (k == 0) format_addr(cfg->listen[i].addr, bound, addr, sizeof(addr));
        }
        brm_log_info("listening", "addr", addr, "tls", tls[i] ? "on" : NULL);
    }
    return 0;
}

/* ---- rule sets and reloads (main thread) -------------------------------- */

static void rule_set_reset(struct rule_set *rs, int nworkers, size_t nlisten) {
    for (int i = 0; rs->engines && i < nworkers; i++) brm_engine_free(rs->engines[i]);
    free(rs->engines);
    free_tls(rs->tls, nlisten);
    brm_config_free(rs->cfg);
    brm_snapshot_free(rs->files);
    memset(rs, 0, sizeof(*rs));
}

/* 1 when listen lists A and B have the same addresses, each with TLS or
 * without it alike (certificate files may differ). */
static int same_listeners(const struct brm_config *a, const struct brm_config *b) {
    if (a->nlisten != b->nlisten) return 0;
    for (size_t i = 0; i < a->nlisten; i++)
        if (strcmp(a->listen[i].addr, b->listen[i].addr) != 0 ||
            !a->listen[i].cert != !b->listen[i].cert)
            return 0;
    return 1;
}

static int same_string(const char *a, const char *b) {
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* Notes, in WARNINGS, the settings of NEW that a running brume cannot take
 * from OLD (they wait for the next start). */
static void restart_only(const struct brm_config *old, const struct brm_config *new,
                         struct brm_errors *warnings) {
    if (!same_listeners(old, new)) brm_errors_addf(warnings, NULL, 0, "listen");
    if (!same_string(old->admin, new->admin)) brm_errors_addf(warnings, NULL, 0, "admin");
    if (old->workers != new->workers) brm_errors_addf(warnings, NULL, 0, "workers");
    if (strcmp(old->data_dir, new->data_dir) != 0) brm_errors_addf(warnings, NULL, 0, "data_dir");
    if (old->store_max != new->store_max) brm_errors_addf(warnings, NULL, 0, "store.max_size");
    int same_state = same_string(old->state.url, new->state.url) &&
                     old->state.nsentinels == new->state.nsentinels &&same_string(
                                                  old->state.master, new->state.master) &&
                     same_string(old->state.password, new->state.password) &&
                     same_string(old->state.prefix, new->state.prefix);
    for (size_t i = 0; same_state && i < old->state.nsentinels; i++)
        same_state = strcmp(old->state.sentinels[i], new->state.sentinels[i]) == 0;
    if (!same_state) brm_errors_addf(warnings, NULL, 0, "state");
}

/* Builds everything CFG needs to run, all or nothing: an engine per worker,
 * the listeners' TLS contexts (from CFG's files when its listeners are the
 * running ones, else from the running config's), and a look at every file
 * target. Returns 0, or -1 with every problem in ERRS. */
static int prepare(struct server *s, const struct brm_config *cfg, struct rule_set *rs,
                   struct brm_errors *errs) {
    const struct brm_config *files = same_listeners(s->started, cfg) ? cfg : s->started;
    size_t nlisten = s->started->nlisten, before = brm_errors_count(errs);
    struct brm_err err;
    rs->cfg = brm_config_ref(cfg);
    rs->files = brm_snapshot_new();
    rs->tls = brm_xcalloc(nlisten, sizeof(*rs->tls));
    for (size_t i = 0; i < nlisten; i++) {
        const struct brm_listen *l = &files->listen[i];
        if (l->cert && !(rs->tls[i] = brm_tls_new(l->cert, l->key, &err)))
            brm_errors_add(errs, &err);
    }
    brm_outbox_check_targets(cfg, 1, errs);
    /* The rules are loaded whatever else failed, to report their problems
     * too; once per worker only when all went well. */
    rs->engines = brm_xcalloc((size_t)s->nworkers, sizeof(*rs->engines));
    rs->engines[0] = brm_engine_build(cfg, rs->files, errs);
    for (int i = 1; i < s->nworkers && brm_errors_count(errs) == before; i++)
        rs->engines[i] = brm_engine_build(cfg, rs->files, errs);
    if (brm_errors_count(errs) == before) {
        struct brm_errors warnings = { 0 };
        brm_engine_lint(rs->engines[0], &warnings);
        for (size_t i = 0; i < warnings.n; i++) {
            char msg[1024];
            brm_err_format(&warnings.v[i], msg, sizeof(msg));
            brm_log_warn("rule warning", "warning", msg);
        }
        brm_errors_reset(&warnings);
        return 0;
    }
    rule_set_reset(rs, s->nworkers, nlisten);
    return -1;
}

/* Puts RS in place (taking what it holds): every worker swaps between two
 * requests, the outbox moves onto its targets. */
static void apply(struct server *s, struct rule_set *rs) {
    const struct brm_config *cfg = rs->cfg, *old = s->cfg;
    size_t nlisten = s->started->nlisten;
    for (int i = 0; i < s->nworkers; i++) {
        struct brm_tls **tls = brm_xcalloc(nlisten, sizeof(*tls));
        for (size_t k = 0; k < nlisten; k++)
            if (rs->tls[k]) tls[k] = brm_tls_ref(rs->tls[k]);
        hand(&s->workers[i], rs->engines[i], tls);
        rs->engines[i] = NULL;
    }
    brm_outbox_configure(s->outbox, cfg);
    brm_journal_configure(s->journal, cfg);
    if (s->backfill) brm_backfill_configure(s->backfill, cfg);
    brm_log_setup(cfg->log_level, cfg->log_format);
    s->cfg = brm_config_ref(cfg);
    brm_config_free(old);
    brm_snapshot_free(s->files);
    s->files = brm_snapshot_ref(rs->files);
    rule_set_reset(rs, s->nworkers, nlisten);
}

static void watch_files(struct server *s);
static void drop_removed_timers(struct server *s, const struct brm_engine *e);

/* Keeps how the reload that just ended went, for /healthz: {"ok": true,
 * "at": "..."} or {"ok": false, "at": "...", "errors": ["file:line: ..."]}. */
static void note_reload(struct server *s, int ok, const struct brm_errors *errs) {
    struct brm_buf *b = &s->last_reload;
    char at[40];
    brm_time_iso8601(brm_time_now(), at, sizeof(at));
    b->len = 0;
    brm_buf_printf(b, "{\"ok\":%s,\"at\":\"%s\"", ok ? "true" : "false", at);
    if (!ok) {
        brm_buf_puts(b, ",\"errors\":[");
        for (size_t i = 0; i < errs->n && b->len < MAX_REPORT; i++) {
            char msg[1024];
            brm_err_format(&errs->v[i], msg, sizeof(msg));
            if (i) brm_buf_puts(b, ",");
            brm_buf_json_string(b, msg, strlen(msg));
        }
        brm_buf_puts(b, "]");
    }
    brm_buf_puts(b, "}");
}

/*
 * Loads the config file again and everything it names, and puts it in
 * place, or keeps what runs if anything fails. Appends to REPORT (when
 * given) a JSON object: {"ok": true, "rule_set": n, "rules": n, "warnings":
 * [...]} or {"ok": false, "errors": ["file:line: ...", ...]}. Returns 0 or -1.
 */
static int reload(struct server *s, const char *trigger, struct brm_buf *report) {
    struct brm_errors errs = { 0 }, warnings = { 0 };
    struct rule_set rs = { 0 };
    brm_log_info("reloading", "trigger", trigger);
    struct brm_config *cfg = brm_config_load(s->cfg->file, brm_api_open_for_config, NULL, &errs);
    int rc = -1;
    /* The admin listener stays where it started: reachable from elsewhere,
     * it keeps wanting a token whatever the new config says. */
    if (cfg && s->started->admin && !brm_addr_loopback(s->started->admin) && !cfg->admin_token) {
        brm_errors_addf(&errs, cfg->file, 0,
                        "admin: the running admin listener (%s) is reachable from other hosts "
                        "and needs a token",
                        s->started->admin);
        brm_config_free(cfg);
        cfg = NULL;
    }
    if (cfg && prepare(s, cfg, &rs, &errs) == 0) {
        restart_only(s->started, cfg, &warnings);
        size_t rules = brm_engine_rule_count(rs.engines[0]);
        drop_removed_timers(s, rs.engines[0]);
        apply(s, &rs);
        atomic_store(&s->rules, (long)rules);
        long version = atomic_fetch_add(&s->generation, 1) + 1;
        brm_counter_add(s->reloads, 1);
        for (size_t i = 0; i < warnings.n; i++)
            brm_log_warn("setting changed: it takes effect at the next start", "setting",
                         warnings.v[i].msg);
        char n[32], v[32];
        snprintf(n, sizeof(n), "%zu", rules);
        snprintf(v, sizeof(v), "%ld", version);
        brm_log_info("reloaded", "trigger", trigger, "rules", n, "rule_set", v);
        if (s->console) {
            brm_console_configure(s->console, s->cfg, s->files, version);
            brm_console_reloaded(s->console, trigger, NULL);
        }
        if (report)
            brm_buf_printf(report, "{\"ok\":true,\"rule_set\":%ld,\"rules\":%zu,\"warnings\":[",
                           version, rules);
        rc = 0;
    } else {
        brm_counter_add(s->reload_failures, 1);
        for (size_t i = 0; i < errs.n; i++) {
            char msg[1024];
            brm_err_format(&errs.v[i], msg, sizeof(msg));
            brm_log_error("reload refused", "error", msg);
        }
        brm_log_error("reload failed: the running rule set stays", "trigger", trigger);
        if (s->console) brm_console_reloaded(s->console, trigger, &errs);
        if (report) brm_buf_puts(report, "{\"ok\":false,\"errors\":[");
    }
    const struct brm_errors *list = rc == 0 ? &warnings : &errs;
    for (size_t i = 0; report && i < list->n && report->len < MAX_REPORT; i++) {
        char msg[1024];
        if (rc == 0)
            snprintf(msg, sizeof(msg), "%s: changed; it takes effect at the next start",
                     list->v[i].msg);
        else
            brm_err_format(&list->v[i], msg, sizeof(msg));
        if (i) brm_buf_puts(report, ",");
        brm_buf_json_string(report, msg, strlen(msg));
    }
    if (report) brm_buf_puts(report, "]}\n");
    note_reload(s, rc == 0, &errs);
    brm_config_free(cfg);
    brm_errors_reset(&errs);
    brm_errors_reset(&warnings);
    watch_files(s); /* folders may have been replaced, or the config names others */
    return rc;
}

static void on_changed(void *arg) {
    reload(arg, "watch", NULL);
}

/* Watches the config file, the rules and the scripts, when the config
 * wants it. */
static void watch_files(struct server *s) {
    struct brm_err err;
    if (!s->cfg->watch) {
        brm_watch_free(s->watch);
        s->watch = NULL;
        return;
    }
    if (!s->watch && !(s->watch = brm_watch_new(s->base, DEBOUNCE, on_changed, s, &err))) {
        brm_log_warn("cannot watch the rules: reload with SIGHUP or POST /reload", "error",
                     err.msg);
        return;
    }
    const char *paths[] = { s->cfg->file, s->cfg->rules_dir, s->cfg->scripts_dir };
    brm_watch_set(s->watch, paths, BRM_ARRAY_LEN(paths));
}

/* ---- main thread -------------------------------------------------------- */

static void release_timers(struct server *s, const char *why);
static void answer_backfills(struct server *s);

static void on_main_mail(evutil_socket_t fd, short what, void *arg) {
    struct server *s = arg;
    (void)what;
    drain_mail(fd);
    if (atomic_exchange(&s->caught_up, 0)) release_timers(s, NULL);
    answer_backfills(s);
    for (int i = 0; i < s->nworkers; i++) {
        struct worker *w = &s->workers[i];
        if (!atomic_load(&w->wants_engine)) continue;
        char id[16];
        snprintf(id, sizeof(id), "%d", i);
        brm_log_warn("a rule keeps memory the VM cannot free: rebuilding this worker's VM",
                     "worker", id);
        struct brm_errors errs = { 0 };
        struct brm_engine *e = brm_engine_build(s->cfg, s->files, &errs); /* the same sources */
        if (e)
            hand(w, e, NULL);
        else /* cannot happen with the same bytes, short of memory: say so */
            brm_log_error("cannot rebuild the VM", "worker", id, "error",
                          errs.n ? errs.v[0].msg : "?");
        brm_errors_reset(&errs);
        atomic_store(&w->wants_engine, 0);
    }
}

static void on_stop(evutil_socket_t sig, short what, void *arg) {
    struct server *s = arg;
    (void)what;
    brm_log_info("stopping: finishing requests in flight", "signal", strsignal((int)sig));
    /* First, while the workers still take what it hands them: a body it
     * handed in is waited for. */
    brm_backfill_stop(s->backfill);
    if (s->shared) brm_shared_finish(s->shared); /* no waiting for a Redis that is away */
    uint64_t deadline = brm_time_mono_ms() + (uint64_t)(s->cfg->http.drain_timeout * 1000);
    for (int i = 0; i < s->nworkers; i++) {
        struct worker *w = &s->workers[i];
        pthread_mutex_lock(&w->lock);
        w->drain = 1;
        w->drain_deadline = deadline;
        pthread_mutex_unlock(&w->lock);
        post(w->mailfd);
    }
    event_base_loopbreak(s->base);
}

/* ---- timers and digests (main thread) ------------------------------------- */

/* The state's hook: a timer came due earlier than the scheduler waits for
 * (any thread, the state's lock held: only an eventfd write). */
static void due_earlier(void *arg) {
    post(((struct server *)arg)->duefd);
}

/* The worker that fires KEY ("timer\x1fRULE\x1f..."): one per rule, so a
 * rule's timers fire in due order. */
static struct worker *worker_for(struct server *s, const char *key) {
    const char *rule = strchr(key, '\x1f') + 1;
    uint64_t h = 1469598103934665603ull;
    for (const char *p = rule; *p && *p != '\x1f'; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    return &s->workers[h % (uint64_t)s->nworkers];
}

/* Redis answered a claim (on its client's thread): the claimed timers go to
 * their workers, and the scheduler looks again. */
static void claimed(void *arg, const char *const *keys, size_t n, double next, long pending) {
    struct server *s = arg;
    for (size_t i = 0; i < n; i++) brm_intake_fire(worker_for(s, keys[i])->intake, keys[i]);
    if (pending >= 0) atomic_store(&s->timers_pending, pending);
    double now = brm_time_now();
    double at = next > 0 ? next : now + CLAIM_POLL; /* no answer, or none pending */
    atomic_store(&s->claim_next_ms, (long long)(at * 1000));
    atomic_store(&s->claim_more, n == CLAIM_LIMIT);
    atomic_store(&s->claiming, 0);
    post(s->duefd);
}

/* Shared state: claims what is due in Redis, one claim at a time; then
 * waits until the earliest due time Redis told of, or the poll, whichever
 * comes first (other instances arm timers too). */
static void schedule_shared(struct server *s, int now_please) {
    if (atomic_load(&s->claiming)) return; /* its answer comes here again */
    double now = brm_time_now(), next = (double)atomic_load(&s->claim_next_ms) / 1000;
    evtimer_del(s->due_timer);
    if (now_please || atomic_exchange(&s->claim_more, 0) || next <= now) {
        atomic_store(&s->claiming, 1);
        brm_shared_claim(s->shared, now, CLAIM_LIMIT, claimed, s);
        return;
    }
    double wait = next - now < CLAIM_POLL ? next - now : CLAIM_POLL;
    struct timeval tv = { (time_t)wait, (suseconds_t)((wait - (double)(time_t)wait) * 1e6) };
    evtimer_add(s->due_timer, &tv);
}

/* Hands every timer and digest that is due to its worker, then waits for
 * the next (or for the hook to say one came earlier). */
static void on_due(evutil_socket_t fd, short what, void *arg) {
    struct server *s = arg;
    (void)what;
    if (fd >= 0) drain_mail(fd);
    if (s->holding) return; /* until the catch-up is done: release_timers */
    if (s->shared) {
        schedule_shared(s, fd < 0);
        return;
    }
    double now = brm_time_now(), next;
    char key[DUE_KEY];
    while (brm_state_pop_due(s->state, now, key, sizeof(key), &next))
        brm_intake_fire(worker_for(s, key)->intake, key);
    evtimer_del(s->due_timer);
    if (!next) return;
    double wait = next > now ? next - now : DUE_RETRY; /* a group holds the first */
    if (wait > 86400) wait = 86400;                    /* looked at again then: a time_t holds it */
    struct timeval tv = { (time_t)wait, (suseconds_t)((wait - (double)(time_t)wait) * 1e6) };
    evtimer_add(s->due_timer, &tv);
}

/* The names of the running set's rules. */
static void keep_rule_names(struct server *s, const struct brm_engine *e) {
    for (size_t i = 0; i < s->nrule_names; i++) free(s->rule_names[i]);
    free(s->rule_names);
    s->nrule_names = brm_engine_rule_count(e);
    s->rule_names = brm_xcalloc(s->nrule_names + 1, sizeof(char *));
    for (size_t i = 0; i < s->nrule_names; i++)
        s->rule_names[i] = brm_xstrdup(brm_engine_rule_name(e, i));
}

/* The deletion of a removed rule's timers, stored by the journal. */
struct drop {
    struct brm_journal_group jg;
};

static void drop_done(struct brm_journal_job *job, int stored, const struct brm_err *err) {
    struct drop *d = (struct drop *)job;
    (void)err; /* kept when refused: they are dropped when they come due */
    brm_state_release(d->jg.txn, stored);
    brm_config_free(d->jg.cfg);
    free(d);
}

/* Drops RULE's timers and digests (the rule is gone), saying so with WHY. */
static void drop_rule_timers(struct server *s, const char *rule, const char *why) {
    struct brm_state_txn *t = brm_state_begin(s->state);
    long n = brm_state_drop_rule(s->state, rule, t);
    if (n == 0) {
        brm_state_release(t, 1);
        return;
    }
    char count[32];
    snprintf(count, sizeof(count), "%ld", n);
    brm_log_info(why, "rule", rule, "count", count);
    struct drop *d = brm_xcalloc(1, sizeof(*d));
    d->jg.cfg = brm_config_ref(s->cfg);
    d->jg.txn = t;
    d->jg.job.done = drop_done;
    brm_journal_group_init(&d->jg, 0);
    brm_journal_submit(s->journal, &d->jg.job);
}

/* A reload that removes a rule drops its timers and digests, with a line.
 * (Shared: other instances may run the rule still, during an upgrade;
 * when one comes due where its rule is gone, it is dropped then.) */
static void drop_removed_timers(struct server *s, const struct brm_engine *e) {
    for (size_t i = 0; i < s->nrule_names && !s->shared; i++)
        if (!brm_engine_has_rule(e, s->rule_names[i]))
            drop_rule_timers(s, s->rule_names[i],
                             "a reload removed a rule: its timers and digests are dropped");
    keep_rule_names(s, e);
}

struct gone {
    struct server *s;
    char **names; /* rules of the store's timers that the running set lacks */
    size_t n;
};

static void note_gone(void *arg, int kind, const char *key, const char *rule, size_t rule_len,
                      const char *name, double due, const char *data, long count) {
    struct gone *g = arg;
    (void)kind, (void)key, (void)name, (void)due, (void)data, (void)count;
    for (size_t i = 0; i < g->s->nrule_names; i++)
        if (strlen(g->s->rule_names[i]) == rule_len &&
            memcmp(g->s->rule_names[i], rule, rule_len) == 0)
            return;
    for (size_t i = 0; i < g->n; i++)
        if (strlen(g->names[i]) == rule_len && memcmp(g->names[i], rule, rule_len) == 0) return;
    g->names = brm_xrealloc(g->names, (g->n + 1) * sizeof(char *));
    g->names[g->n++] = brm_xstrndup(rule, rule_len);
}

/* At start: the timers and digests of rules removed while brume was
 * stopped go, with a line each, as a reload would drop them. (Shared:
 * they are in Redis, and go when one comes due where its rule is gone.) */
static void drop_gone_timers(struct server *s) {
    if (s->shared) return;
    struct gone g = { s, NULL, 0 };
    brm_state_each_due(s->state, brm_state_pending(s->state), note_gone, &g);
    for (size_t i = 0; i < g.n; i++) {
        drop_rule_timers(s, g.names[i],
                         "a rule removed while brume was stopped had timers or digests: they are "
                         "dropped");
        free(g.names[i]);
    }
    free(g.names);
}

static double gauge_timers(void *arg) {
    struct server *s = arg;
    if (s->shared) return (double)atomic_load(&s->timers_pending);
    return (double)brm_state_pending(s->state);
}

static void on_hup(evutil_socket_t sig, short what, void *arg) {
    (void)sig, (void)what;
    reload(arg, "SIGHUP", NULL);
}

/* The journal writer's upkeep hook: expired rule state goes, a slice of the
 * table at a time, so that no step holds the state's lock for long. */
static int sweep_state(void *arg, struct brm_store *st, double now, struct brm_err *err) {
    struct server *s = arg;
    return brm_state_sweep(s->state, SWEEP_BUCKETS, now, st, err);
}

/* Opens the store: loads the rules' state, continues the journal's ids
 * and starts its writer. */
static int open_store(struct server *s) {
    struct brm_err err;
    char *path = brm_outbox_store_path(s->cfg);
    struct brm_store *st = brm_store_open(path, &err);
    /* Ids must go on after the last: one handed out again would take the
     * keys of deliveries still in the store (and be dropped as queued). */
    int64_t last = -1, held = 0;
    /* Shared, the rules' state is in Redis: the local store's is not read. */
    int ok = st &&
             (s->shared || (brm_store_prune_state(st, brm_time_now(), &err) == 0 &&
                            brm_state_load(s->state, st, brm_time_now(), &err) == 0)) &&
             (last = brm_store_last_body(st, &err)) >= 0 &&
             (held = brm_store_held_count(st, &err)) >= 0;
    if (ok) brm_journal_start(last);
    brm_store_close(st);
    if (ok) s->journal = brm_journal_new(path, s->cfg, sweep_state, s, &err);
    if (ok && s->journal && s->shared) s->held_reader = brm_store_open_reader(path, &err);
    free(path);
    if (!ok || !s->journal || (s->shared && !s->held_reader) ||
        brm_journal_run(s->journal, &err) < 0) {
        brm_log_error("cannot open the store", "error", err.msg);
        return -1;
    }
    if (held && !s->shared) {
        char n[32];
        snprintf(n, sizeof(n), "%lld", (long long)held);
        brm_log_warn("bodies held for a shared state are in the journal, and no state is set: "
                     "their rules do not run (set state as it was to run them)",
                     "bodies", n);
    }
    if (s->shared) brm_shared_set_draining(s->shared, (long)held);
    return 0;
}

/* ---- shared state (Redis) --------------------------------------------------- */

/* What CFG's state says, for the Redis client. */
static void redis_cfg(const struct brm_config *cfg, struct brm_redis_cfg *rc) {
    struct brm_err err;
    memset(rc, 0, sizeof(*rc));
    if (cfg->state.url) brm_redis_parse_url(cfg->state.url, rc, &err); /* checked at load */
    rc->timeout = cfg->state.timeout;
    if (cfg->state.password && !rc->password) rc->password = brm_xstrdup(cfg->state.password);
    if (cfg->state.ca) rc->ca = brm_xstrdup(cfg->state.ca);
    if (cfg->state.nsentinels) {
        rc->tls = cfg->state.tls;
        rc->db = cfg->state.db;
        rc->master = brm_xstrdup(cfg->state.master);
        for (size_t i = 0; i < cfg->state.nsentinels && i < BRM_REDIS_MAX_SENTINELS; i++)
            rc->sentinels[rc->nsentinels++] = brm_xstrdup(cfg->state.sentinels[i]);
    }
}

/* Redis came or went (on its client's thread): one line each time. */
static void shared_state(void *arg, int up, const char *why) {
    struct server *s = arg;
    char n[32];
    snprintf(n, sizeof(n), "%ld", brm_shared_held(s->shared));
    if (up)
        brm_log_info("shared state: Redis reachable: held bodies run now, in order", "held", n);
    else
        brm_log_warn("shared state: Redis unreachable: bodies whose rules use state are "
                     "journaled, answered and held until it is back",
                     "error", why);
    post(s->duefd); /* claims go on */
}

struct drain_read {
    struct server *s;
    long handed;
};

static int drain_one(void *arg, const struct brm_body *b) {
    struct drain_read *d = arg;
    struct server *s = d->s;
    if (b->damage) { /* it cannot run; the others do, and the drain ends without it */
        char id[32];
        snprintf(id, sizeof(id), "%lld", (long long)b->id);
        brm_log_error("a held body cannot be read: its rules do not run", "request", id, "error",
                      b->damage);
        return 0;
    }
    atomic_fetch_add(&s->drain_pending, 1);
    brm_intake_rerun(s->workers[0].intake, b, &s->drain_pending); /* one worker: in order */
    s->drain_after = b->id;
    d->handed++;
    return 0;
}

/* Runs the held bodies again, a batch at a time, oldest first, while Redis
 * is reachable; when none is left (and none was held meanwhile), bodies
 * run as they come again. */
static void on_drain(evutil_socket_t fd, short what, void *arg) {
    struct server *s = arg;
    (void)fd, (void)what;
    if (!brm_shared_up(s->shared) || !brm_shared_draining(s->shared) ||
        atomic_load(&s->drain_pending) > 0 || brm_shared_unresolved(s->shared) > 0)
        return;
    uint64_t mark = brm_shared_drain_mark(s->shared);
    struct drain_read d = { s, 0 };
    struct brm_err err;
    if (brm_store_held(s->held_reader, s->drain_after, DRAIN_BATCH, drain_one, &d, &err) < 0) {
        brm_log_warn("cannot read the held bodies", "error", err.msg);
        return;
    }
    if (d.handed) return;
    if (s->drain_after) { /* once more from the start: some may have been left held */
        s->drain_after = 0;
        return;
    }
    if (brm_shared_drain_end(s->shared, mark))
        brm_log_info("shared state: every held body has run: bodies run as they come again");
}

static double gauge_redis_up(void *arg) {
    return brm_shared_up(((struct server *)arg)->shared);
}

static double gauge_held(void *arg) {
    return (double)brm_shared_held(((struct server *)arg)->shared);
}

/* Shares the rules' state through Redis when the config says so. */
static int open_shared(struct server *s) {
    const struct brm_config *cfg = s->cfg;
    if (!cfg->state.url && !cfg->state.nsentinels) return 0;
    struct brm_redis_cfg rc;
    struct brm_err err;
    char where[300];
    redis_cfg(cfg, &rc);
    brm_redis_cfg_display(&rc, where, sizeof(where));
    brm_state_set_shared(s->state);
    s->shared = brm_shared_new(s->state, &rc, cfg->state.prefix, cfg->state.lease, shared_state, s);
    brm_redis_cfg_reset(&rc);
    brm_log_info("rule state shared through Redis", "redis", where, "prefix", cfg->state.prefix);
    brm_metrics_gauge("brume_state_redis_up", "1 while Redis, where rule state is shared, answers.",
                      gauge_redis_up, s, NULL);
    brm_metrics_gauge("brume_state_held_bodies",
                      "Bodies journaled whose rules wait for the shared state.", gauge_held, s,
                      NULL);
    (void)err;
    return 0;
}

/* Starts the Redis client, once the workers that hear from it are there. */
static int start_shared(struct server *s) {
    struct brm_err err;
    if (!s->shared) return 0;
    if (brm_shared_start(s->shared, &err) < 0) {
        brm_log_error("cannot start the shared state", "error", err.msg);
        return -1;
    }
    /* Bodies that come before Redis answers are held: give it a moment. */
    brm_shared_wait(s->shared, s->cfg->state.timeout + 1);
    s->drain_timer = event_new(s->base, -1, EV_PERSIST, on_drain, s);
    struct timeval tv = { 0, (suseconds_t)(DRAIN_POLL * 1e6) };
    event_add(s->drain_timer, &tv);
    return 0;
}

/* ---- backfill (main thread) ------------------------------------------------ */

/* Timers wait no longer: the catch-up is done, or took too long (WHY). */
static void release_timers(struct server *s, const char *why) {
    if (!s->holding) return;
    s->holding = 0;
    evtimer_del(s->hold_timer);
    if (why)
        brm_log_warn(why);
    else
        brm_log_info("caught up from Mist's delivery log: timers fire now");
    on_due(-1, 0, s);
}

static void on_hold_timeout(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    release_timers(arg, "the catch-up from Mist's delivery log is taking more than 2 minutes: "
                        "timers fire now, without waiting for it");
}

/* The catch-up is done (on the backfill's thread): its report was logged. */
static void caught_up(void *arg, struct brm_backfill_report *report) {
    struct server *s = arg;
    brm_backfill_report_free(report);
    atomic_store(&s->caught_up, 1);
    post(s->mailfd);
}

/* Starts the backfill's thread, with the catch-up as its first run when a
 * source names Mist's API: timers wait for it (CATCH_UP_HOLD at most).
 * Without it (no thread, no memory) brume runs on, and says so. */
static void start_backfill(struct server *s) {
    struct brm_err err;
    char *path = brm_outbox_store_path(s->cfg);
    s->backfill = brm_backfill_new(s->cfg, path, backfill_take, s, s->nworkers + 3);
    free(path);
    if (brm_backfill_start(s->backfill, 1, &err) < 0) {
        brm_log_error("cannot start the backfill: brume runs without it", "error", err.msg);
        brm_backfill_free(s->backfill);
        s->backfill = NULL;
        return;
    }
    int catch_up = 0;
    for (size_t i = 0; i < s->cfg->nsources; i++)
        catch_up |= s->cfg->sources[i].mist.api && s->cfg->sources[i].mist.catch_up > 0;
    if (!catch_up) return;
    struct brm_backfill_ask ask = { .catch_up = 1 };
    s->holding = 1;
    s->hold_timer = evtimer_new(s->base, on_hold_timeout, s);
    struct timeval tv = { CATCH_UP_HOLD, 0 };
    evtimer_add(s->hold_timer, &tv);
    brm_log_info("catching up from Mist's delivery log: timers wait for it");
    brm_backfill_ask(s->backfill, &ask, caught_up, s);
}

/* A run POST /backfill asked for is done (on the backfill's thread): the
 * main thread answers it. */
static void backfill_answered(void *arg, struct brm_backfill_report *report) {
    struct asked *a = arg;
    struct server *s = a->srv;
    a->report = report;
    pthread_mutex_lock(&s->asked_lock);
    a->next = s->answered;
    s->answered = a;
    pthread_mutex_unlock(&s->asked_lock);
    post(s->mailfd);
}

/* Sends the reports of the runs that are done: 200 when every source's run
 * went through, 502 when one stopped on Mist's answer (or on none). */
static void answer_backfills(struct server *s) {
    pthread_mutex_lock(&s->asked_lock);
    struct asked *list = s->answered;
    s->answered = NULL;
    pthread_mutex_unlock(&s->asked_lock);
    for (struct asked *a = list, *next; a; a = next) {
        next = a->next;
        const struct brm_buf *t = &a->report->text;
        brm_http_respond(a->req, a->report->ok ? 200 : 502, "text/plain; charset=utf-8", t->data,
                         t->len, NULL);
        brm_backfill_report_free(a->report);
        free(a);
    }
}

/* ---- admin endpoints ---------------------------------------------------- */

/* 1 when REQ may use /metrics and /reload: the config has no admin token,
 * or REQ carries it ("Authorization: Bearer TOKEN"), compared in constant
 * time. */
static int authorized(const struct server *s, const struct brm_http_req *req) {
    const char *token = s->cfg->admin_token;
    if (!token) return 1;
    size_t n, want = strlen(token);
    const char *h = brm_http_header(req, "authorization", &n);
    if (!h || n != want + 7 || strncmp(h, "Bearer ", 7) != 0) return 0;
    return CRYPTO_memcmp(h + 7, token, want) == 0;
}

static void refuse(struct brm_http_req *req) {
    brm_http_respond(req, 401, NULL, "admin token missing or wrong\n", 29,
                     "WWW-Authenticate: Bearer realm=\"brume\"\r\n");
}

static void admin_metrics(void *arg, struct brm_http_req *req) {
    if (!authorized(arg, req)) {
        refuse(req);
        return;
    }
    struct brm_buf b;
    brm_buf_init(&b);
    brm_metrics_render(&b);
    brm_http_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", b.data, b.len, NULL);
    brm_buf_reset(&b);
}

/* Up (200) while the store takes bodies; 503 when the journal's writer,
 * which makes every commit, saw its last one fail, so that a load balancer
 * sends Mist elsewhere. A failing store is tried again every second with
 * no body needed, so health comes back when the store does. After a
 * reload, "reload" says how the last one went: a failed one keeps the
 * running set, so it is still 200. */
static void admin_healthz(void *arg, struct brm_http_req *req) {
    struct server *s = arg;
    struct brm_journal_stats js;
    brm_journal_stats(s->journal, &js);
    int store_ok = js.ok;
    double oldest;
    long pending = brm_outbox_pending(s->outbox, &oldest);
    struct brm_buf b;
    brm_buf_init(&b);
    brm_buf_printf(&b,
                   "{\"status\":\"%s\",\"version\":\"%s\",\"workers\":%d,\"rules\":%ld,"
                   "\"rule_set\":%ld,\"store\":\"%s\",\"outbox\":{\"pending\":%ld,"
                   "\"oldest_seconds\":%.0f},\"connections\":%ld",
                   store_ok ? "ok" : "degraded", BRM_VERSION, s->nworkers, atomic_load(&s->rules),
                   atomic_load(&s->generation), store_ok ? "ok" : "failing", pending, oldest,
                   atomic_load(&s->connections));
    if (s->last_reload.len) brm_buf_printf(&b, ",\"reload\":%s", s->last_reload.data);
    if (s->shared) {
        /* Redis away does not make this instance unhealthy: it still takes
         * and journals what Mist sends (holding what needs the state), and
         * a load balancer that took every instance out when Redis blinks
         * would refuse Mist's posts, which Mist does not send again. */
        char where[300];
        struct brm_redis_cfg rc;
        redis_cfg(s->cfg, &rc);
        brm_redis_cfg_display(&rc, where, sizeof(where));
        brm_redis_cfg_reset(&rc);
        brm_buf_printf(&b, ",\"state\":{\"backend\":\"redis\",\"at\":");
        brm_buf_json_string(&b, where, strlen(where));
        brm_buf_printf(&b, ",\"redis\":\"%s\",\"held\":%ld,\"draining\":%s}",
                       brm_shared_up(s->shared) ? "up" : "down", brm_shared_held(s->shared),
                       brm_shared_draining(s->shared) ? "true" : "false");
    } else {
        brm_buf_puts(&b, ",\"state\":{\"backend\":\"embedded\"}");
    }
    brm_buf_puts(&b, "}\n");
    brm_http_respond(req, store_ok ? 200 : 503, "application/json", b.data, b.len, NULL);
    brm_buf_reset(&b);
}

static void admin_reload(void *arg, struct brm_http_req *req) {
    if (!authorized(arg, req)) {
        refuse(req);
        return;
    }
    /* A browser sends Origin with a cross-site POST, which needs no
     * preflight: a page elsewhere must not make a loopback brume reload. */
    if (!brm_console_same_origin(req)) {
        brm_http_respond(req, 403, NULL, "Origin is not this host\n", 24, NULL);
        return;
    }
    struct brm_buf b;
    brm_buf_init(&b);
    int rc = reload(arg, "admin", &b);
    brm_http_respond(req, rc == 0 ? 200 : 422, "application/json", b.data, b.len, NULL);
    brm_buf_reset(&b);
}

/* POST /backfill?source=&since=&until=&topic=&dry_run=1: `brume backfill`
 * asks the running brume to read Mist's delivery log, and waits for the
 * report (text, as the command prints it). As the console's changes: the
 * admin token, or without one a loopback peer and X-Brume-Console. */
static void admin_backfill(void *arg, struct brm_http_req *req) {
    struct server *s = arg;
    const char *why;
    int code = brm_console_check(s->cfg->admin_token, req, 1, &why);
    struct brm_backfill_ask ask;
    char source[BRM_TOPIC_MAX], topic[BRM_TOPIC_MAX], msg[600];
    struct brm_err err;
    if (code == 0 && !s->backfill) {
        code = 503;
        why = "the backfill is not running (see the log at start)";
    } else if (code == 0 && (brm_backfill_parse(req->query, req->query_len, &ask, source, topic,
                                                sizeof(topic), &err) < 0 ||
                             brm_backfill_check(s->cfg, &ask, &err) < 0)) {
        code = 400;
        why = err.msg;
    }
    if (code) {
        int n = snprintf(msg, sizeof(msg), "error: %s\n", why);
        brm_http_respond(req, code, "text/plain; charset=utf-8", msg,
                         n > 0 && (size_t)n < sizeof(msg) ? (size_t)n : strlen(msg), NULL);
        return;
    }
    struct asked *a = brm_xcalloc(1, sizeof(*a));
    a->srv = s;
    a->req = req;
    brm_backfill_ask(s->backfill, &ask, backfill_answered, a);
}

static double gauge_generation(void *arg) {
    return (double)atomic_load(&((struct server *)arg)->generation);
}

static double gauge_rules(void *arg) {
    return (double)atomic_load(&((struct server *)arg)->rules);
}

static double gauge_one(void *arg) {
    (void)arg;
    return 1;
}

static void server_metrics(struct server *s) {
    s->reloads =
        brm_metrics_counter("brume_reloads_total", "Reloads, by result.", "result", "ok", NULL);
    s->reload_failures =
        brm_metrics_counter("brume_reloads_total", "Reloads, by result.", "result", "failed", NULL);
    brm_metrics_gauge("brume_rule_set", "Version of the running rule set (1 at start).",
                      gauge_generation, s, NULL);
    brm_metrics_gauge("brume_rules", "Rules in the running set.", gauge_rules, s, NULL);
    brm_metrics_gauge("brume_build_info", "What brume was built from.", gauge_one, NULL, "version",
                      BRM_VERSION, "lua", LUA_RELEASE, "libevent", event_get_version(), "openssl",
                      OPENSSL_VERSION_STR, NULL);
}

/* The admin listener: /metrics, /healthz, /reload, and the console (its
 * own read-only connection to the store). */
static int open_admin(struct server *s) {
    static const struct brm_http_route proto[] = {
        { "/metrics", "admin", BRM_HTTP_GET, 0, NULL, admin_metrics, NULL },
        { "/healthz", "admin", BRM_HTTP_GET, 0, NULL, admin_healthz, NULL },
        { "/reload", "admin", BRM_HTTP_POST, 1024, NULL, admin_reload, NULL },
        { "/backfill", "admin", BRM_HTTP_POST, 1024, NULL, admin_backfill, NULL },
    };
    struct brm_http_route routes[BRM_ARRAY_LEN(proto) + BRM_CONSOLE_MAX_ROUTES];
    struct brm_err err;
    int port;
    if (!s->started->admin) return 0;
    for (size_t i = 0; i < BRM_ARRAY_LEN(proto); i++) {
        routes[i] = proto[i];
        routes[i].arg = s;
    }
    char *path = brm_outbox_store_path(s->cfg);
    s->console = brm_console_new(s->base, path, s->journal, s->outbox, &err);
    free(path);
    if (!s->console) {
        brm_log_error("cannot open the console", "error", err.msg);
        return -1;
    }
    brm_console_set_state(s->console, s->state, s->shared);
    brm_console_configure(s->console, s->cfg, s->files, atomic_load(&s->generation));
    size_t n = BRM_ARRAY_LEN(proto) + brm_console_routes(s->console, routes + BRM_ARRAY_LEN(proto));
    struct brm_http_opts o = {
        .header_timeout = 5, .body_timeout = 5, .idle_timeout = 30, .max_connections = 64
    };
    s->admin = brm_http_new(s->base, &o, routes, n);
    int fd = brm_http_listen(s->started->admin, 0, &port, &err);
    if (fd < 0) {
        brm_log_error("cannot open the admin listener", "error", err.msg);
        return -1;
    }
    brm_http_add_listener(s->admin, fd, NULL);
    char addr[300];
    format_addr(s->started->admin, port, addr, sizeof(addr));
    brm_log_info("admin listening", "addr", addr);
    note_admin(s, addr);
    return 0;
}

/* ---- life --------------------------------------------------------------- */

/* The lock file says who holds it: our pid, and ADMIN, the admin
 * listener's address (port 0 resolved), for `brume backfill` to ask. */
static void note_admin(struct server *s, const char *admin) {
    char text[400];
    int n = snprintf(text, sizeof(text), "%d\n%s\n", (int)getpid(), admin ? admin : "");
    if (n < 0 || (size_t)n >= sizeof(text)) return;
    if (ftruncate(s->lockfd, 0) < 0 || pwrite(s->lockfd, text, (size_t)n, 0) < 0) { /* advisory */
    }
}

/* mkdir -p DIR, then an exclusive lock on DIR/brume.lock: a second brume on
 * the same data would share its ports (SO_REUSEPORT) and its store. */
static int lock_data_dir(struct server *s) {
    const char *dir = s->cfg->data_dir;
    brm_mkdirs(dir, 0750);
    char *path = brm_path_join(dir, "brume.lock");
    s->lockfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (s->lockfd < 0 || flock(s->lockfd, LOCK_EX | LOCK_NB) < 0) {
        int saved = errno;
        brm_log_error(saved == EWOULDBLOCK ? "another brume runs on this data folder"
                                           : "cannot lock the data folder",
                      "path", path, "error", strerror(saved));
        free(path);
        return -1;
    }
    char pid[32];
    int n = snprintf(pid, sizeof(pid), "%d\n", (int)getpid());
    if (ftruncate(s->lockfd, 0) < 0 || write(s->lockfd, pid, (size_t)n) < 0) { /* advisory */
    }
    free(path);
    return 0;
}

/* Starts the worker threads, with the signals left to this one. */
static void start_workers(struct server *s) {
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    for (int i = 0; i < s->nworkers; i++) {
        struct worker *w = &s->workers[i];
        int rc = pthread_create(&w->thread, NULL, worker_main, w); /* the error, not errno */
        if (rc != 0) {
            brm_log_error("cannot start a worker thread", "error", strerror(rc));
            break;
        }
        w->started = 1;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* Workers stop within the drain timeout; one that does not is stuck in
 * something no budget stops. What it holds was never answered, so leaving
 * it loses nothing acknowledged. */
static void stop_workers(struct server *s) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)s->cfg->http.drain_timeout + 5;
    for (int i = 0; i < s->nworkers; i++) {
        struct worker *w = &s->workers[i];
        if (!w->started) continue;
        pthread_mutex_lock(&w->lock);
        w->drain = 1; /* when the loop ended without a signal */
        pthread_mutex_unlock(&w->lock);
        post(w->mailfd);
        if (pthread_timedjoin_np(w->thread, NULL, &until) != 0) {
            brm_log_error("a worker did not stop in time: exiting without it");
            _exit(1);
        }
    }
}

static void add_events(struct server *s) {
    s->mailfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    s->mail = event_new(s->base, s->mailfd, EV_READ | EV_PERSIST, on_main_mail, s);
    event_add(s->mail, NULL);
    s->sigterm = evsignal_new(s->base, SIGTERM, on_stop, s);
    s->sigint = evsignal_new(s->base, SIGINT, on_stop, s);
    s->sighup = evsignal_new(s->base, SIGHUP, on_hup, s);
    event_add(s->sigterm, NULL);
    event_add(s->sigint, NULL);
    event_add(s->sighup, NULL);
    s->duefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    s->due_mail = event_new(s->base, s->duefd, EV_READ | EV_PERSIST, on_due, s);
    s->due_timer = evtimer_new(s->base, on_due, s);
    event_add(s->due_mail, NULL);
    brm_state_set_due_hook(s->state, due_earlier, s);
}

static void free_server(struct server *s, struct rule_set *rs) {
    brm_backfill_free(s->backfill); /* first: it hands bodies to the workers */
    answer_backfills(s);            /* what it ended as it stopped: dropped with their requests */
    brm_shared_free(s->shared);     /* what it hands back goes to workers still there */
    s->shared = NULL;
    if (s->drain_timer) event_free(s->drain_timer);
    brm_store_close(s->held_reader);
    rule_set_reset(rs, s->nworkers, s->started->nlisten);
    for (int i = 0; s->workers && i < s->nworkers; i++) free_worker(&s->workers[i]);
    free(s->workers);
    brm_console_free(s->console); /* the journal has stopped: no change is in flight */
    brm_http_free(s->admin);
    brm_watch_free(s->watch);
    if (s->mail) event_free(s->mail);
    if (s->sigterm) event_free(s->sigterm);
    if (s->sigint) event_free(s->sigint);
    if (s->sighup) event_free(s->sighup);
    if (s->state) brm_state_set_due_hook(s->state, NULL, NULL);
    if (s->due_mail) event_free(s->due_mail);
    if (s->due_timer) event_free(s->due_timer);
    if (s->hold_timer) event_free(s->hold_timer);
    if (s->duefd >= 0) close(s->duefd);
    for (size_t i = 0; i < s->nrule_names; i++) free(s->rule_names[i]);
    free(s->rule_names);
    if (s->mailfd >= 0) close(s->mailfd);
    if (s->base) event_base_free(s->base);
    brm_outbox_free(s->outbox); /* writes what it learnt through the journal: first */
    brm_journal_free(s->journal);
    brm_state_free(s->state);
    if (s->lockfd >= 0) close(s->lockfd);
    brm_config_free(s->cfg);
    brm_config_free(s->started);
    brm_snapshot_free(s->files);
    brm_buf_reset(&s->last_reload);
    pthread_mutex_destroy(&s->asked_lock);
}

int brm_server_run(const struct brm_config *cfg) {
    struct server s = { .cfg = brm_config_ref(cfg),
                        .started = brm_config_ref(cfg),
                        .nworkers = cfg->workers,
                        .mailfd = -1,
                        .duefd = -1,
                        .lockfd = -1,
                        .generation = 1 };
    struct rule_set rs = { 0 };
    struct brm_errors errs = { 0 };
    struct brm_err err;
    int rc = 1;

    pthread_mutex_init(&s.asked_lock, NULL);
    brm_metrics_init(cfg->workers + 4); /* main, workers, outbox, journal, backfill */
    brm_metrics_set_slot(0);
    server_metrics(&s);
    char workers[16];
    snprintf(workers, sizeof(workers), "%d", cfg->workers);
    brm_log_info("brume starting", "version", BRM_VERSION, "config", cfg->file, "workers", workers);
    for (size_t i = 0; i < cfg->nsources; i++)
        if (cfg->sources[i].insecure)
            brm_log_warn("source accepts unsigned posts (insecure = true)", "source",
                         cfg->sources[i].name, "path", cfg->sources[i].path);
    if (lock_data_dir(&s) < 0) goto done;
    s.state = brm_state_new();
    if (open_shared(&s) < 0 || open_store(&s) < 0) goto done;
    if (!(s.outbox = brm_outbox_new(cfg, s.journal, &err))) {
        brm_log_error("cannot open the outbox", "error", err.msg);
        goto done;
    }
    if (prepare(&s, cfg, &rs, &errs) < 0) {
        for (size_t i = 0; i < errs.n; i++) {
            char msg[1024];
            brm_err_format(&errs.v[i], msg, sizeof(msg));
            brm_log_error("cannot start", "error", msg);
        }
        goto done;
    }
    atomic_store(&s.rules, (long)brm_engine_rule_count(rs.engines[0]));
    keep_rule_names(&s, rs.engines[0]);
    s.files = brm_snapshot_ref(rs.files);
    s.base = new_base();
    s.workers = brm_xcalloc((size_t)s.nworkers, sizeof(*s.workers));
    for (int i = 0; i < s.nworkers; i++) {
        s.workers[i].mailfd = -1;
        if (setup_worker(&s, &s.workers[i], i, rs.engines[i]) < 0) goto done;
        rs.engines[i] = NULL; /* the intake owns it */
    }
    if (open_listeners(&s, rs.tls) < 0 || open_admin(&s) < 0) goto done;
    if (brm_outbox_start(s.outbox, &err) < 0) {
        brm_log_error("cannot start the outbox", "error", err.msg);
        goto done;
    }
    add_events(&s);
    if (start_shared(&s) < 0) goto done;
    watch_files(&s);
    start_workers(&s);
    start_backfill(&s);
    brm_metrics_gauge("brume_timers_pending", "Timers and digests not yet due.", gauge_timers, &s,
                      NULL);
    drop_gone_timers(&s);
    on_due(-1, 0, &s); /* what came due while brume was stopped fires now, in due order */
    char n[32];
    snprintf(n, sizeof(n), "%ld", atomic_load(&s.rules));
    brm_log_info("brume ready", "rules", n);
    event_base_dispatch(s.base);
    rc = 0;
    brm_backfill_stop(s.backfill); /* when the loop ended on its own */
    stop_workers(&s);
    /* Workers are done storing: attempts in flight get a moment, the rest
     * stays pending in the store for the next start. */
    brm_outbox_stop(s.outbox, s.cfg->http.drain_timeout < 5 ? s.cfg->http.drain_timeout : 5);
    brm_journal_stop(s.journal); /* what is queued is written first */
    brm_log_info("brume stopped");
done:
    brm_errors_reset(&errs);
    free_server(&s, &rs);
    return rc;
}

/* ---- brume backfill, with no daemon ----------------------------------------- */

int brm_server_running(const struct brm_config *cfg, char *admin, size_t size) {
    char *path = brm_path_join(cfg->data_dir, "brume.lock");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    free(path);
    admin[0] = '\0';
    if (fd < 0) return errno == ENOENT ? 0 : -1;
    int running = 0;
    if (flock(fd, LOCK_SH | LOCK_NB) < 0) {
        running = errno == EWOULDBLOCK ? 1 : -1;
    } else {
        flock(fd, LOCK_UN);
    }
    char text[400];
    ssize_t n = running == 1 ? pread(fd, text, sizeof(text) - 1, 0) : 0;
    close(fd);
    if (n > 0) { /* "pid\nadmin\n" */
        text[n] = '\0';
        char *line = strchr(text, '\n');
        if (line) snprintf(admin, size, "%.*s", (int)strcspn(line + 1, "\n"), line + 1);
    }
    return running;
}

/* A run of `brume backfill` on this thread: one intake, the journal's
 * writer, the backfill's thread handing it bodies. */
struct offline {
    struct server *srv;
    struct event_base *base;
    struct brm_intake *intake;
    int mailfd;
    pthread_mutex_t lock; /* guards the two below */
    struct handed *handed;
    struct brm_backfill_report *report; /* set when the run is done */
};

static void offline_take(void *arg, const struct brm_backfill_body *b) {
    struct offline *o = arg;
    struct handed *h = brm_xcalloc(1, sizeof(*h));
    h->b = b;
    pthread_mutex_lock(&o->lock);
    h->next = o->handed;
    o->handed = h;
    pthread_mutex_unlock(&o->lock);
    post(o->mailfd);
}

static void offline_done(void *arg, struct brm_backfill_report *report) {
    struct offline *o = arg;
    pthread_mutex_lock(&o->lock);
    o->report = report;
    pthread_mutex_unlock(&o->lock);
    post(o->mailfd);
}

static void on_offline_mail(evutil_socket_t fd, short what, void *arg) {
    struct offline *o = arg;
    (void)what;
    drain_mail(fd);
    pthread_mutex_lock(&o->lock);
    struct handed *list = o->handed;
    int done = o->report != NULL;
    o->handed = NULL;
    pthread_mutex_unlock(&o->lock);
    for (struct handed *h = list, *next; h; h = next) {
        next = h->next;
        take_handed(o->intake, h);
    }
    if (done) event_base_loopbreak(o->base);
}

static void offline_wake(void *arg) {
    struct offline *o = arg;
    if (o->intake) brm_intake_wake(o->intake);
}

/* Takes the data folder, its store and rule state, and an intake for S. */
static int offline_open(struct server *s, struct offline *o, struct brm_errors *errs) {
    if (lock_data_dir(s) < 0) {
        brm_errors_addf(errs, NULL, 0, "cannot take the data folder %s (see above)",
                        s->cfg->data_dir);
        return -1;
    }
    s->state = brm_state_new();
    if (open_store(s) < 0) {
        brm_errors_addf(errs, NULL, 0, "cannot open the store (see above)");
        return -1;
    }
    struct brm_engine *e = brm_engine_new(s->cfg, errs);
    if (!e) return -1;
    o->base = new_base();
    o->mailfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    o->intake = brm_intake_new(e, NULL, s->journal, s->state, o->base, offline_wake, o);
    return 0;
}

int brm_server_backfill(const struct brm_config *cfg, const struct brm_backfill_ask *ask,
                        struct brm_backfill_report **out, struct brm_errors *errs) {
    struct server s = { .cfg = brm_config_ref(cfg),
                        .started = brm_config_ref(cfg),
                        .mailfd = -1,
                        .duefd = -1,
                        .lockfd = -1 };
    struct offline o = { .srv = &s, .mailfd = -1 };
    struct brm_err err;
    struct event *mail = NULL;
    int rc = -1;
    pthread_mutex_init(&s.asked_lock, NULL);
    pthread_mutex_init(&o.lock, NULL);
    brm_metrics_init(cfg->workers + 4);
    brm_metrics_set_slot(1); /* the intake's, as a worker's */
    *out = NULL;
    /* A dry run only reads: Mist, and the journal (for what it holds). */
    if (!ask->dry_run && offline_open(&s, &o, errs) < 0) goto done;
    if (ask->dry_run) {
        o.base = new_base();
        o.mailfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    }
    mail = event_new(o.base, o.mailfd, EV_READ | EV_PERSIST, on_offline_mail, &o);
    event_add(mail, NULL);
    char *path = brm_outbox_store_path(cfg);
    s.backfill =
        brm_backfill_new(cfg, path, ask->dry_run ? NULL : offline_take, &o, cfg->workers + 3);
    free(path);
    if (brm_backfill_start(s.backfill, 0, &err) < 0) {
        brm_errors_add(errs, &err);
        goto done;
    }
    brm_backfill_ask(s.backfill, ask, offline_done, &o);
    event_base_dispatch(o.base);
    brm_backfill_stop(s.backfill);
    if (o.intake) brm_intake_flush(o.intake); /* every body was stored: this is quick */
    *out = o.report;
    o.report = NULL;
    rc = 0;
done:
    brm_backfill_free(s.backfill);
    s.backfill = NULL;
    brm_intake_free(o.intake);
    if (mail) event_free(mail);
    if (o.mailfd >= 0) close(o.mailfd);
    if (o.base) event_base_free(o.base);
    brm_backfill_report_free(o.report);
    pthread_mutex_destroy(&o.lock);
    brm_journal_free(s.journal); /* writes what is queued first */
    s.journal = NULL;
    struct rule_set rs = { 0 };
    free_server(&s, &rs);
    return rc;
}
