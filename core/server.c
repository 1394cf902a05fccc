#define _GNU_SOURCE
#include "server.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
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

#include "engine.h"
#include "http.h"
#include "intake.h"
#include "journal.h"
#include "log.h"
#include "metrics.h"
#include "outbox.h"

#define DRAIN_POLL_MS 50
#define HOUSEKEEPING  60 /* seconds between two rounds of pruning */

struct server;

/* What one route of a worker serves: a source. */
struct source_route {
    struct worker *w;
    const struct brm_source *source;
};

struct worker {
    struct server *srv;
    int id;
    pthread_t thread;
    int started;
    struct event_base *base;
    struct brm_http *http;
    struct brm_intake *intake;
    struct brm_store *store; /* this worker's connection to the store */
    struct source_route *routes;
    int mailfd; /* eventfd: main -> worker */
    struct event *mail, *drain_timer;
    pthread_mutex_t lock; /* guards the mailbox fields below */
    struct brm_engine *next_engine;
    int drain;
    uint64_t drain_deadline;
    _Atomic int wants_engine; /* its VM is full of kept memory: build another */
};

struct server {
    const struct brm_config *cfg;
    struct event_base *base;
    struct brm_http *admin;
    struct worker *workers;
    int nworkers;
    struct brm_outbox *outbox;
    int mailfd; /* eventfd: workers -> main */
    struct event *mail, *sigterm, *sigint, *sighup;
    _Atomic long connections;
    _Atomic long rules;
    int lockfd;
    struct brm_counter *reloads, *reload_failures;
    struct brm_store *store; /* the main thread's: start-up and housekeeping */
    struct brm_state *state;
    struct event *housekeeping;
};

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

/* ---- intake routes (worker threads) ------------------------------------- */

static void intake_done(void *arg, enum brm_status st, const char *reason) {
    struct brm_http_req *req = arg;
    int code = st == BRM_OK             ? 200
               : st == BRM_UNAUTHORIZED ? 401
               : st == BRM_BAD_REQUEST  ? 400
                                        : 503;
    char body[600];
    int n = snprintf(body, sizeof(body), "%s\n", reason);
    if (n < 0 || (size_t)n >= sizeof(body)) n = (int)strlen(body);
    brm_http_respond(req, code, NULL, body, (size_t)n, code == 503 ? "Retry-After: 5\r\n" : NULL);
}

/* An unsigned post to a source that wants a signature is refused before
 * its body is read. */
static int source_check_head(void *arg, const struct brm_http_req *req) {
    struct source_route *r = arg;
    int v2 = brm_http_header(req, "x-mist-signature-v2", NULL) != NULL;
    int v1 = brm_http_header(req, "x-mist-signature", NULL) != NULL;
    return brm_intake_has_signature(r->source, v2, v1) ? 0 : 401;
}

static void source_handle(void *arg, struct brm_http_req *req) {
    struct source_route *r = arg;
    struct brm_intake_req ir = {
        .source = r->source,
        .body = req->body,
        .len = req->body_len,
        .received_at = req->received_at,
        .peer = req->peer,
    };
    ir.sig = brm_http_header(req, "x-mist-signature-v2", &ir.sig_len);
    ir.sig1 = brm_http_header(req, "x-mist-signature", &ir.sig1_len);
    brm_intake_submit(r->w->intake, &ir, intake_done, req);
    struct worker *w = r->w;
    if (brm_engine_exhausted(brm_intake_engine(w->intake)) && !atomic_exchange(&w->wants_engine, 1))
        post(w->srv->mailfd);
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

static void on_worker_mail(evutil_socket_t fd, short what, void *arg) {
    struct worker *w = arg;
    (void)what;
    drain_mail(fd);
    pthread_mutex_lock(&w->lock);
    struct brm_engine *e = w->next_engine;
    int drain = w->drain;
    w->next_engine = NULL;
    pthread_mutex_unlock(&w->lock);
    /* Between two requests: the next body runs on the new set. */
    if (e) brm_intake_swap(w->intake, e);
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

static void hand_engine(struct worker *w, struct brm_engine *e) {
    pthread_mutex_lock(&w->lock);
    struct brm_engine *stale = w->next_engine; /* never picked up: superseded */
    w->next_engine = e;
    pthread_mutex_unlock(&w->lock);
    brm_engine_free(stale);
    post(w->mailfd);
}

static int setup_worker(struct server *s, struct worker *w, int id, struct brm_engine *e) {
    const struct brm_config *cfg = s->cfg;
    w->srv = s;
    w->id = id;
    w->base = new_base();
    pthread_mutex_init(&w->lock, NULL);
    w->mailfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->mailfd < 0) return -1;
    w->mail = event_new(w->base, w->mailfd, EV_READ | EV_PERSIST, on_worker_mail, w);
    event_add(w->mail, NULL);
    char *path = brm_outbox_store_path(cfg);
    struct brm_err err;
    w->store = brm_store_open(path, &err);
    free(path);
    if (!w->store || brm_store_limit(w->store, cfg->store_max, &err) < 0) {
        brm_log_error("cannot open the store", "error", err.msg);
        return -1;
    }
    w->intake = brm_intake_new(e, s->outbox, w->store, s->state, w->base);
    w->routes = brm_xcalloc(cfg->nsources, sizeof(*w->routes));
    struct brm_http_route *routes = brm_xcalloc(cfg->nsources, sizeof(*routes));
    for (size_t i = 0; i < cfg->nsources; i++) {
        w->routes[i] = (struct source_route){ w, &cfg->sources[i] };
        routes[i] = (struct brm_http_route){
            .path = cfg->sources[i].path,
            .label = cfg->sources[i].name,
            .methods = BRM_HTTP_POST,
            .max_body = cfg->sources[i].max_body,
            .check_head = source_check_head,
            .handle = source_handle,
            .arg = &w->routes[i],
        };
    }
    struct brm_http_opts o = {
        .header_timeout = cfg->http.header_timeout,
        .body_timeout = cfg->http.body_timeout,
        .idle_timeout = cfg->http.idle_timeout,
        .max_connections = cfg->http.max_connections,
        .connections = &s->connections,
    };
    w->http = brm_http_new(w->base, &o, routes, cfg->nsources);
    free(routes);
    return 0;
}

static void free_worker(struct worker *w) {
    if (!w->base) return;
    brm_http_free(w->http);
    brm_intake_free(w->intake);
    brm_store_close(w->store);
    brm_engine_free(w->next_engine);
    free(w->routes);
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
static int open_listeners(struct server *s) {
    const struct brm_config *cfg = s->cfg;
    struct brm_err err;
    for (size_t i = 0; i < cfg->nlisten; i++) {
        char addr[300];
        snprintf(addr, sizeof(addr), "%s", cfg->listen[i]);
        for (int k = 0; k < s->nworkers; k++) {
            int bound;
            int fd = brm_http_listen(addr, 1, &bound, &err);
            if (fd < 0) {
                brm_log_error("cannot listen", "error", err.msg);
                return -1;
            }
            brm_http_add_listener(s->workers[k].http, fd);
            if (k == 0) format_addr(cfg->listen[i], bound, addr, sizeof(addr));
        }
        brm_log_info("listening", "addr", addr);
    }
    return 0;
}

/* ---- rule sets ---------------------------------------------------------- */

/* Builds one engine per worker; all or none. */
static struct brm_engine **build_engines(struct server *s) {
    struct brm_engine **v = brm_xcalloc((size_t)s->nworkers, sizeof(*v));
    struct brm_errors errs = { 0 };
    for (int i = 0; i < s->nworkers; i++) {
        v[i] = brm_engine_new(s->cfg, &errs);
        if (!v[i]) break;
    }
    if (errs.n) {
        for (size_t i = 0; i < errs.n; i++) {
            char msg[1024];
            brm_err_format(&errs.v[i], msg, sizeof(msg));
            brm_log_error("rule set not loaded", "error", msg);
        }
        for (int i = 0; i < s->nworkers; i++) brm_engine_free(v[i]);
        free(v);
        v = NULL;
    } else {
        atomic_store(&s->rules, (long)brm_engine_rule_count(v[0]));
    }
    brm_errors_reset(&errs);
    return v;
}

static void reload(struct server *s, const char *why) {
    brm_log_info("reloading rules", "trigger", why);
    struct brm_engine **v = build_engines(s);
    if (!v) {
        brm_counter_add(s->reload_failures, 1);
        brm_log_error("reload failed: the running rule set stays", "trigger", why);
        return;
    }
    for (int i = 0; i < s->nworkers; i++) hand_engine(&s->workers[i], v[i]);
    free(v);
    brm_counter_add(s->reloads, 1);
    char n[32];
    snprintf(n, sizeof(n), "%ld", atomic_load(&s->rules));
    brm_log_info("rules reloaded", "rules", n);
}

/* ---- main thread -------------------------------------------------------- */

static void on_main_mail(evutil_socket_t fd, short what, void *arg) {
    struct server *s = arg;
    (void)what;
    drain_mail(fd);
    for (int i = 0; i < s->nworkers; i++) {
        struct worker *w = &s->workers[i];
        if (!atomic_load(&w->wants_engine)) continue;
        char id[16];
        snprintf(id, sizeof(id), "%d", i);
        brm_log_warn("a rule keeps memory the VM cannot free: rebuilding this worker's VM",
                     "worker", id);
        struct brm_errors errs = { 0 };
        struct brm_engine *e = brm_engine_new(s->cfg, &errs);
        brm_errors_reset(&errs);
        if (e) hand_engine(w, e);
        atomic_store(&w->wants_engine, 0);
    }
}

static void on_stop(evutil_socket_t sig, short what, void *arg) {
    struct server *s = arg;
    (void)what;
    brm_log_info("stopping: finishing requests in flight", "signal", strsignal((int)sig));
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

/* Journal retention, expired state: once a minute, on the main thread. */
static void on_housekeeping(evutil_socket_t fd, short what, void *arg) {
    struct server *s = arg;
    struct brm_err err;
    double now = brm_time_now();
    (void)fd, (void)what;
    long gone = brm_journal_prune(s->store, s->cfg, now, &err);
    if (gone < 0) brm_log_warn("cannot prune the journal", "error", err.msg);
    if (gone > 0) {
        char n[32];
        snprintf(n, sizeof(n), "%ld", gone);
        brm_log_info("journal pruned", "bodies", n);
    }
    if (brm_store_prune_state(s->store, now, &err) < 0)
        brm_log_warn("cannot prune state", "error", err.msg);
    brm_state_sweep(s->state, now);
}

/* Opens the main thread's store connection, continues the journal's ids
 * and loads the rules' state. */
static int open_store(struct server *s) {
    struct brm_err err;
    char *path = brm_outbox_store_path(s->cfg);
    s->store = brm_store_open(path, &err);
    free(path);
    if (!s->store || brm_store_limit(s->store, s->cfg->store_max, &err) < 0 ||
        brm_state_load(s->state, s->store, brm_time_now(), &err) < 0) {
        brm_log_error("cannot open the store", "error", err.msg);
        return -1;
    }
    brm_journal_start(brm_store_last_body(s->store));
    return 0;
}

static void on_hup(evutil_socket_t sig, short what, void *arg) {
    (void)sig, (void)what;
    reload(arg, "SIGHUP");
}

static void admin_metrics(void *arg, struct brm_http_req *req) {
    (void)arg;
    struct brm_buf b;
    brm_buf_init(&b);
    brm_metrics_render(&b);
    brm_http_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", b.data, b.len, NULL);
    brm_buf_reset(&b);
}

static void admin_healthz(void *arg, struct brm_http_req *req) {
    struct server *s = arg;
    char body[256];
    int n =
        snprintf(body, sizeof(body),
                 "{\"status\":\"ok\",\"version\":\"%s\",\"workers\":%d,\"rules\":%ld,"
                 "\"connections\":%ld}\n",
                 BRM_VERSION, s->nworkers, atomic_load(&s->rules), atomic_load(&s->connections));
    brm_http_respond(req, 200, "application/json", body, (size_t)n, NULL);
}

static int open_admin(struct server *s) {
    static const struct brm_http_route proto[] = {
        { "/metrics", "admin", BRM_HTTP_GET, 0, NULL, admin_metrics, NULL },
        { "/healthz", "admin", BRM_HTTP_GET, 0, NULL, admin_healthz, NULL },
    };
    struct brm_http_route routes[BRM_ARRAY_LEN(proto)];
    struct brm_err err;
    int port;
    if (!s->cfg->admin) return 0;
    for (size_t i = 0; i < BRM_ARRAY_LEN(proto); i++) {
        routes[i] = proto[i];
        routes[i].arg = s;
    }
    struct brm_http_opts o = {
        .header_timeout = 5, .body_timeout = 5, .idle_timeout = 30, .max_connections = 64
    };
    s->admin = brm_http_new(s->base, &o, routes, BRM_ARRAY_LEN(routes));
    int fd = brm_http_listen(s->cfg->admin, 0, &port, &err);
    if (fd < 0) {
        brm_log_error("cannot open the admin listener", "error", err.msg);
        return -1;
    }
    brm_http_add_listener(s->admin, fd);
    char addr[300];
    format_addr(s->cfg->admin, port, addr, sizeof(addr));
    brm_log_info("admin listening", "addr", addr);
    return 0;
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

int brm_server_run(const struct brm_config *cfg) {
    struct server s = { .cfg = cfg, .nworkers = cfg->workers, .mailfd = -1, .lockfd = -1 };
    struct brm_err err;
    struct brm_engine **engines = NULL;
    int rc = 1;
    sigset_t block, old;

    brm_metrics_init(cfg->workers + 2); /* main, workers, outbox */
    brm_metrics_set_slot(0);
    s.reloads =
        brm_metrics_counter("brume_reloads_total", "Rule set reloads.", "result", "ok", NULL);
    s.reload_failures =
        brm_metrics_counter("brume_reloads_total", "Rule set reloads.", "result", "failed", NULL);
    char workers[16];
    snprintf(workers, sizeof(workers), "%d", cfg->workers);
    brm_log_info("brume starting", "version", BRM_VERSION, "config", cfg->file, "workers", workers);
    for (size_t i = 0; i < cfg->nsources; i++)
        if (cfg->sources[i].insecure)
            brm_log_warn("source accepts unsigned posts (insecure = true)", "source",
                         cfg->sources[i].name, "path", cfg->sources[i].path);
    if (lock_data_dir(&s) < 0) goto done;
    s.state = brm_state_new();
    if (open_store(&s) < 0) goto done;
    if (!(s.outbox = brm_outbox_new(cfg, &err))) {
        brm_log_error("cannot open the outbox", "error", err.msg);
        goto done;
    }
    if (!(engines = build_engines(&s))) goto done;
    s.base = new_base();
    s.workers = brm_xcalloc((size_t)s.nworkers, sizeof(*s.workers));
    for (int i = 0; i < s.nworkers; i++) {
        s.workers[i].mailfd = -1;
        if (setup_worker(&s, &s.workers[i], i, engines[i]) < 0) goto done;
        engines[i] = NULL; /* the intake owns it */
    }
    if (open_listeners(&s) < 0 || open_admin(&s) < 0) goto done;
    if (brm_outbox_start(s.outbox, &err) < 0) {
        brm_log_error("cannot start the outbox", "error", err.msg);
        goto done;
    }
    s.mailfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    s.mail = event_new(s.base, s.mailfd, EV_READ | EV_PERSIST, on_main_mail, &s);
    event_add(s.mail, NULL);
    s.sigterm = evsignal_new(s.base, SIGTERM, on_stop, &s);
    s.sigint = evsignal_new(s.base, SIGINT, on_stop, &s);
    s.sighup = evsignal_new(s.base, SIGHUP, on_hup, &s);
    event_add(s.sigterm, NULL);
    event_add(s.sigint, NULL);
    event_add(s.sighup, NULL);
    s.housekeeping = event_new(s.base, -1, EV_PERSIST, on_housekeeping, &s);
    struct timeval minute = { HOUSEKEEPING, 0 };
    event_add(s.housekeeping, &minute);
    on_housekeeping(-1, 0, &s);

    /* Workers leave the signals to this thread. */
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    for (int i = 0; i < s.nworkers; i++) {
        struct worker *w = &s.workers[i];
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            brm_log_error("cannot start a worker thread", "error", strerror(errno));
            break;
        }
        w->started = 1;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    char n[32];
    snprintf(n, sizeof(n), "%ld", atomic_load(&s.rules));
    brm_log_info("brume ready", "rules", n);
    event_base_dispatch(s.base);
    rc = 0;
    /* Workers stop within the drain timeout; one that does not is stuck in
     * something no budget stops. What it holds was never answered, so
     * leaving it loses nothing acknowledged. */
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)cfg->http.drain_timeout + 5;
    for (int i = 0; i < s.nworkers; i++) {
        if (!s.workers[i].started) continue;
        if (!s.workers[i].drain) { /* the loop ended without a signal */
            pthread_mutex_lock(&s.workers[i].lock);
            s.workers[i].drain = 1;
            pthread_mutex_unlock(&s.workers[i].lock);
            post(s.workers[i].mailfd);
        }
        if (pthread_timedjoin_np(s.workers[i].thread, NULL, &until) != 0) {
            brm_log_error("a worker did not stop in time: exiting without it");
            _exit(1);
        }
    }
    /* Workers are done storing: attempts in flight get a moment, the rest
     * stays pending in the store for the next start. */
    brm_outbox_stop(s.outbox, cfg->http.drain_timeout < 5 ? cfg->http.drain_timeout : 5);
    brm_log_info("brume stopped");
done:
    if (engines)
        for (int i = 0; i < s.nworkers; i++) brm_engine_free(engines[i]);
    free(engines);
    for (int i = 0; s.workers && i < s.nworkers; i++) free_worker(&s.workers[i]);
    free(s.workers);
    brm_http_free(s.admin);
    if (s.mail) event_free(s.mail);
    if (s.sigterm) event_free(s.sigterm);
    if (s.sigint) event_free(s.sigint);
    if (s.sighup) event_free(s.sighup);
    if (s.housekeeping) event_free(s.housekeeping);
    if (s.mailfd >= 0) close(s.mailfd);
    if (s.base) event_base_free(s.base);
    brm_outbox_free(s.outbox);
    brm_store_close(s.store);
    brm_state_free(s.state);
    if (s.lockfd >= 0) close(s.lockfd);
    return rc;
}
