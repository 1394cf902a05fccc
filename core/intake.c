#include "intake.h"

#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "journal.h"
#include "log.h"
#include "metrics.h"
#include "verify.h"

#define MAX_TOPIC_SERIES 64 /* events_total series; later topics count as "other" */

/* The prepared keys of one source: a secret (or two, during a rotation)
 * for each signature the source accepts. */
struct source_keys {
    struct brm_verify_key *v2[2], *v1[2];
};

/* An accepted body waiting for its group to be stored. */
struct held {
    brm_intake_done_fn *done; /* NULL: answered already (durability = "none") */
    void *arg;
    int64_t id;
    const struct brm_source *source;
    char topic[BRM_TOPIC_MAX];
    double received;
    size_t events;
    const char *body; /* the request's, until it is answered */
    size_t len;
    char *copy; /* or a copy, when it was answered first */
    struct brm_actions actions;
    struct brm_run_log runs; /* what its rules did, stored with it */
    int fired;               /* not a body: what a timer's or digest's handler did */
    int backfilled;
};

/* The bodies of one turn, handed to the journal together. */
struct group {
    struct brm_journal_group jg; /* first: the journal's job is the group */
    struct brm_intake *in;
    struct held *held;
    struct brm_journal_entry *entries;
    int stored;
    char error[512];
    struct group *next; /* on the intake's list of groups done */
};

/* A timer or digest the scheduler found due, for this worker to fire. */
struct fire {
    struct fire *next;
    char *key;
};

/* A body that met rule state another group has not stored yet: it runs
 * again, whole, once that group is done. */
struct parked {
    struct parked *next;
    char *timer;              /* a timer's or digest's key (then nothing below counts) */
    brm_intake_done_fn *done; /* NULL: answered already (durability = "none") */
    void *arg;
    int64_t id;
    char *source; /* by name: a reload may come before it runs again */
    const char *body;
    size_t len;
    char *copy;
    double received;
    char *peer;
    int backfilled;
    struct brm_intake_tally *tally;
};

struct brm_intake {
    const struct brm_config *cfg; /* the engine's */
    struct brm_engine *engine;
    struct brm_engine *next; /* to put in place once the open group is handed over */
    struct brm_outbox *outbox;
    struct brm_journal *journal;
    struct brm_state *state;   /* shared by the workers */
    struct brm_state_txn *txn; /* the open group's, or NULL */
    struct event *commit;      /* runs after this turn's requests */
    struct held *held;         /* the open group */
    size_t nheld, capheld;
    struct parked *parked, **parked_tail;
    brm_intake_wake_fn *wake;
    void *wake_arg;

    /* Groups done, handed back by the journal's thread. */
    pthread_mutex_t lock;
    pthread_cond_t done_cond;
    struct group *done;
    struct fire *fires, **fires_tail; /* timers and digests to fire, from the scheduler */
    size_t inflight; /* groups handed over and not yet answered (worker's thread) */
    int donefd;      /* eventfd: the journal's thread, or a wake -> this worker */
    struct event *done_ev;
    _Atomic int retry; /* parked bodies should run again */

    uint64_t failure_logged; /* when the last refused group was logged (ms) */
    size_t failed_bodies, failed_lost;
    struct source_keys *keys; /* parallel to cfg->sources */
    struct brm_counter *unknown, *other_topic, *duplicates, *parked_count;
    uint64_t drops_logged; /* when timer drops were last logged (ms) */
    unsigned drops_shown, drops_hidden;
    struct brm_histogram *lag;
    struct {
        char name[BRM_TOPIC_MAX];
        struct brm_counter *c;
    } topics[MAX_TOPIC_SERIES];
    size_t ntopics;
};

static void on_commit(evutil_socket_t fd, short what, void *arg);

/* Prepares the signature keys of every source of IN's config. */
static void make_keys(struct brm_intake *in) {
    in->keys = brm_xcalloc(in->cfg->nsources, sizeof(*in->keys));
    for (size_t i = 0; i < in->cfg->nsources; i++) {
        const struct brm_source *s = &in->cfg->sources[i];
        for (int j = 0; j < s->nsecrets; j++) {
            in->keys[i].v2[j] =
                brm_verify_key_new(BRM_VERIFY_SHA256, s->secrets[j], s->secret_len[j]);
            if (s->allow_sha1)
                in->keys[i].v1[j] =
                    brm_verify_key_new(BRM_VERIFY_SHA1, s->secrets[j], s->secret_len[j]);
        }
    }
}

static void free_keys(struct brm_intake *in) {
    for (size_t i = 0; in->keys && i < in->cfg->nsources; i++) {
        for (int j = 0; j < 2; j++) {
            brm_verify_key_free(in->keys[i].v2[j]);
            brm_verify_key_free(in->keys[i].v1[j]);
        }
    }
    free(in->keys);
    in->keys = NULL;
}

/* Puts ENGINE (and its config: sources, secrets, targets) in place. */
static void install(struct brm_intake *in, struct brm_engine *engine) {
    if (in->engine) {
        free_keys(in);
        brm_engine_free(in->engine);
    }
    in->engine = engine;
    in->cfg = brm_engine_config(engine);
    brm_engine_set_state(engine, in->state);
    make_keys(in);
}

static void on_done(evutil_socket_t fd, short what, void *arg);

struct brm_intake *brm_intake_new(struct brm_engine *engine, struct brm_outbox *ob,
                                  struct brm_journal *j, struct brm_state *state,
                                  struct event_base *base, brm_intake_wake_fn *wake, void *arg) {
    struct brm_intake *in = brm_xcalloc(1, sizeof(*in));
    in->outbox = ob;
    in->journal = j;
    in->state = state;
    in->wake = wake;
    in->wake_arg = arg;
    in->parked_tail = &in->parked;
    in->fires_tail = &in->fires;
    in->commit = event_new(base, -1, 0, on_commit, in);
    pthread_mutex_init(&in->lock, NULL);
    pthread_cond_init(&in->done_cond, NULL);
    in->donefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (in->donefd < 0) {
        fprintf(stderr, "brume: cannot create an eventfd: %s\n", strerror(errno));
        abort();
    }
    in->done_ev = event_new(base, in->donefd, EV_READ | EV_PERSIST, on_done, in);
    event_add(in->done_ev, NULL);
    install(in, engine);
    in->lag = brm_metrics_histogram("brume_journal_lag_seconds",
                                    "From a body's arrival to its commit with its outcome.", NULL);
    in->unknown = brm_metrics_counter("brume_unknown_topic_bodies_total",
                                      "Accepted bodies whose topic Mist does not document.", NULL);
    in->other_topic = brm_metrics_counter("brume_events_total", "Events received, by topic.",
                                          "topic", "other", NULL);
    in->duplicates =
        brm_metrics_counter("brume_duplicate_events_total",
                            "Events not run again: seen within the dedupe window.", NULL);
    in->parked_count = brm_metrics_counter(
        "brume_state_waits_total",
        "Bodies run again because their rules met state another group had not stored yet.", NULL);
    return in;
}

static void free_held(struct held *h, size_t n) {
    for (size_t i = 0; i < n; i++) {
        brm_actions_reset(&h[i].actions);
        brm_buf_reset(&h[i].runs.text);
        free(h[i].copy);
    }
    free(h);
}

static void free_parked(struct parked *p) {
    free(p->timer);
    free(p->source);
    free(p->copy);
    free(p->peer);
    free(p);
}

void brm_intake_free(struct brm_intake *in) {
    if (!in) return;
    free_keys(in);
    brm_engine_free(in->engine);
    brm_engine_free(in->next);
    /* What is still held or parked was never answered, so never
     * acknowledged: the server that would answer is gone. (flush has waited
     * for the groups handed over.) */
    free_held(in->held, in->nheld);
    brm_state_release(in->txn, 0);
    for (struct parked *p = in->parked, *next; p; p = next) {
        next = p->next;
        free_parked(p);
    }
    /* Timers handed over and not fired stay in the store: they fire at the
     * next start. */
    for (struct fire *f = in->fires, *next; f; f = next) {
        next = f->next;
        free(f->key);
        free(f);
    }
    event_free(in->commit);
    event_free(in->done_ev);
    close(in->donefd);
    pthread_cond_destroy(&in->done_cond);
    pthread_mutex_destroy(&in->lock);
    free(in);
}

void brm_intake_swap(struct brm_intake *in, struct brm_engine *engine) {
    if (in->nheld) { /* after this group is handed over: its bodies ran on the old set */
        brm_engine_free(in->next);
        in->next = engine;
        return;
    }
    install(in, engine);
}

struct brm_engine *brm_intake_engine(struct brm_intake *in) {
    return in->engine;
}

const struct brm_source *brm_intake_source(const struct brm_intake *in, const char *name) {
    return brm_config_source(in->cfg, name);
}

/* S[0, N) is WANT hex digits, either case. */
static int is_hex(const char *s, size_t n, size_t want) {
    if (n != want) return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!(ch >= '0' && ch <= '9') && !(ch >= 'a' && ch <= 'f') && !(ch >= 'A' && ch <= 'F'))
            return 0;
    }
    return 1;
}

const char *brm_intake_refuse_head(const struct brm_source *src, const char *v2, size_t v2_len,
                                   const char *v1, size_t v1_len) {
    if (src->insecure) return NULL;
    /* v2 decides when present, even if a v1 header came too (signature_ok) */
    if (v2) return is_hex(v2, v2_len, 64) ? NULL : "malformed X-Mist-Signature-v2 (64 hex digits)";
    if (v1 && src->allow_sha1)
        return is_hex(v1, v1_len, 40) ? NULL : "malformed X-Mist-Signature (40 hex digits)";
    return "missing signature";
}

/* 1 when the request carries a valid signature (or needs none). Every
 * secret is tried, so the time taken does not tell which one matched. */
static int signature_ok(struct brm_intake *in, const struct brm_intake_req *r) {
    const struct brm_source *s = r->source;
    struct source_keys *k = &in->keys[s - in->cfg->sources];
    int ok = 0;
    if (s->insecure) return 1;
    if (r->sig) { /* v2 decides when present, even if a v1 header came too */
        for (int j = 0; j < s->nsecrets; j++)
            ok |= brm_verify_signature(k->v2[j], r->sig, r->sig_len, r->body, r->len);
    } else if (r->sig1 && s->allow_sha1) {
        for (int j = 0; j < s->nsecrets; j++)
            ok |= brm_verify_signature(k->v1[j], r->sig1, r->sig1_len, r->body, r->len);
    }
    return ok;
}

/* Topics Mist does not document are logged the first time they arrive. */
static void note_unknown_topic(const struct brm_envelope *env, const char *source) {
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static char seen[MAX_TOPIC_SERIES][BRM_TOPIC_MAX];
    static size_t nseen;
    int first = 1;
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < nseen && first; i++) first = strcmp(seen[i], env->name) != 0;
    if (first && nseen < MAX_TOPIC_SERIES) strcpy(seen[nseen++], env->name);
    pthread_mutex_unlock(&lock);
    if (first)
        brm_log_warn("accepted a topic Mist does not document (logged once per topic)", "topic",
                     env->topic, "source", source);
}

static void count_events(struct brm_intake *in, const struct brm_envelope *env) {
    if (!env->known) {
        brm_counter_add(in->unknown, 1);
        brm_counter_add(in->other_topic, env->nevents);
        return;
    }
    size_t i = 0;
    while (i < in->ntopics && strcmp(in->topics[i].name, env->name) != 0) i++;
    if (i == in->ntopics) {
        if (i == MAX_TOPIC_SERIES) {
            brm_counter_add(in->other_topic, env->nevents);
            return;
        }
        snprintf(in->topics[i].name, BRM_TOPIC_MAX, "%s", env->name);
        in->topics[i].c = brm_metrics_counter("brume_events_total", "Events received, by topic.",
                                              "topic", env->name, NULL);
        in->ntopics++;
    }
    brm_counter_add(in->topics[i].c, env->nevents);
}

enum brm_status brm_intake_run(struct brm_engine *e, const char *body, size_t len,
                               const struct brm_batch *batch, struct brm_actions *sink,
                               struct brm_envelope *env, struct brm_dispatch_stats *stats,
                               struct brm_err *err) {
    struct brm_envelope env_local;
    struct brm_dispatch_stats stats_local = { 0 };
    if (!env) env = &env_local;
    if (!stats) stats = &stats_local;
    int rc = brm_engine_decode(e, body, len, env, err);
    if (rc < 0) return rc == -2 ? BRM_TOO_LARGE : BRM_BAD_REQUEST;
    if (brm_engine_dispatch(e, env, batch, sink, stats) == BRM_STATE_BUSY) return BRM_BUSY;
    return BRM_OK;
}

/* Where a body goes once it ran: into the open group, or parked. */
struct body {
    const struct brm_source *source;
    int64_t id;
    const char *body;
    size_t len;
    double received;
    const char *peer;
    int backfilled; /* from Mist's delivery log: answered once stored, whatever the source says */
    struct brm_intake_tally *tally; /* or NULL */
};

static void park(struct brm_intake *in, const struct body *b, brm_intake_done_fn *done, void *arg,
                 char *copy) {
    struct parked *p = brm_xcalloc(1, sizeof(*p));
    *p = (struct parked){ .done = done,
                          .arg = arg,
                          .id = b->id,
                          .source = brm_xstrdup(b->source->name),
                          .body = b->body,
                          .len = b->len,
                          .copy = copy,
                          .received = b->received,
                          .peer = brm_xstrdup(b->peer),
                          .backfilled = b->backfilled,
                          .tally = b->tally };
    *in->parked_tail = p;
    in->parked_tail = &p->next;
    brm_counter_add(in->parked_count, 1);
}

/*
 * Runs body B (its signature checked) and holds it for the open group, or
 * refuses it, or parks it. DONE is called at once unless the answer waits
 * for the group; COPY is B's body when it was copied already (a parked body
 * that was answered first), and is then the intake's.
 */
static void take(struct brm_intake *in, const struct body *b, brm_intake_done_fn *done, void *arg,
                 char *copy) {
    struct brm_err err;
    struct brm_envelope env;
    struct brm_run_log runs = { 0 };
    struct brm_dispatch_stats stats = { .log = &runs };
    struct brm_actions actions = { 0 };
    const struct brm_source *src = b->source;
    char rid[32];
    snprintf(rid, sizeof(rid), "%lld", (long long)b->id);
    if (!in->txn) in->txn = brm_state_begin(in->state);
    size_t mark = brm_state_mark(in->txn);
    struct brm_batch batch = { src->name,    (uint64_t)b->id, b->received,
                               &src->dedupe, in->txn,         b->backfilled };
    enum brm_status st =
        brm_intake_run(in->engine, b->body, b->len, &batch, &actions, &env, &stats, &err);
    if (st == BRM_BUSY) {
        /* Undone, as if it never came; it runs again when the group that
         * holds the state is done. */
        if (brm_state_rollback(in->txn, mark)) in->wake(in->wake_arg);
        brm_actions_reset(&actions);
        brm_buf_reset(&runs.text);
        if (!copy && !src->durable && !b->backfilled) {
            copy = brm_xstrndup(b->body, b->len);
            done(arg, BRM_OK, "ok"); /* answered at once, as the source chose */
            done = NULL;
        }
        struct body again = *b;
        if (copy) again.body = copy;
        park(in, &again, done, arg, copy);
        return;
    }
    if (st != BRM_OK) {
        brm_state_rollback(in->txn, mark); /* nothing: a body that does not decode ran no rule */
        brm_log_warn(st == BRM_TOO_LARGE ? "refused a post: too large once decoded"
                                         : "refused a post: not a Mist webhook body",
                     "request", rid, "source", src->name, "peer", b->peer, "reason", err.msg);
        brm_actions_reset(&actions);
        brm_buf_reset(&runs.text);
        free(copy);
        if (done) done(arg, st, err.msg);
        return;
    }
    count_events(in, &env);
    if (stats.duplicates) brm_counter_add(in->duplicates, stats.duplicates);
    if (b->tally) *b->tally = (struct brm_intake_tally){ env.nevents, stats.duplicates, actions.n };
    if (!env.known) note_unknown_topic(&env, src->name);
    if (brm_log_enabled(BRM_LOG_DEBUG)) {
        char n[32], sent[32];
        snprintf(n, sizeof(n), "%zu", env.nevents);
        snprintf(sent, sizeof(sent), "%zu", actions.n);
        brm_log_debug("accepted", "request", rid, "source", src->name, "topic", env.topic, "events",
                      n, "messages", sent);
    }
    /* Held for the group. The commit event was made active by the first
     * body of this turn, so it runs after every request the loop read in
     * this turn: the group is handed over then, and answered when stored. */
    if (in->nheld == in->capheld) {
        in->capheld = in->capheld ? in->capheld * 2 : 16;
        in->held = brm_xrealloc(in->held, in->capheld * sizeof(*in->held));
    }
    struct held *h = &in->held[in->nheld++];
    brm_run_log_end(&runs);
    *h = (struct held){ .done = done,
                        .arg = arg,
                        .id = b->id,
                        .source = src,
                        .received = b->received,
                        .events = env.nevents,
                        .body = b->body,
                        .len = b->len,
                        .copy = copy,
                        .actions = actions,
                        .runs = runs,
                        .backfilled = b->backfilled };
    snprintf(h->topic, sizeof(h->topic), "%s", env.name);
    if (!src->durable && h->done && !b->backfilled) {
        /* Answered now: the request's buffer moves on, so keep a copy. */
        h->copy = brm_xstrndup(b->body, b->len);
        h->body = h->copy;
        h->done = NULL;
        done(arg, BRM_OK, "ok");
    }
    if (in->nheld == 1) event_active(in->commit, 0, 0);
}

void brm_intake_submit(struct brm_intake *in, const struct brm_intake_req *r,
                       brm_intake_done_fn *done, void *arg) {
    const struct brm_source *src = r->source;
    /* The body's id is its request's in every log line about it. */
    struct body b = {
        src, brm_journal_next_id(), r->body, r->len, r->received_at, r->peer, 0, NULL
    };
    if (!signature_ok(in, r)) {
        char rid[32];
        snprintf(rid, sizeof(rid), "%lld", (long long)b.id);
        brm_log_warn("refused a post: signature missing or wrong", "request", rid, "source",
                     src->name, "peer", r->peer);
        done(arg, BRM_UNAUTHORIZED, "signature missing or wrong");
        return;
    }
    take(in, &b, done, arg, NULL);
}

void brm_intake_submit_backfilled(struct brm_intake *in, const struct brm_intake_req *r,
                                  struct brm_intake_tally *tally, brm_intake_done_fn *done,
                                  void *arg) {
    struct body b = { r->source, brm_journal_next_id(), r->body, r->len, r->received_at, r->peer, 1,
                      tally };
    take(in, &b, done, arg, NULL);
}

/* Holds what a fired timer's handler did (ACTIONS, taken) for the open
 * group: it is stored with the group, or the timer is back as it was. */
static void hold_fired(struct brm_intake *in, int64_t id, struct brm_actions *actions) {
    if (in->nheld == in->capheld) {
        in->capheld = in->capheld ? in->capheld * 2 : 16;
        in->held = brm_xrealloc(in->held, in->capheld * sizeof(*in->held));
    }
    struct held *h = &in->held[in->nheld++];
    *h = (struct held){ .id = id, .received = brm_time_now(), .actions = *actions, .fired = 1 };
    snprintf(h->topic, sizeof(h->topic), "timer");
    if (in->nheld == 1) event_active(in->commit, 0, 0);
}

/* Says that a timer was dropped (rule gone, no handler, too late): ten
 * lines per ten seconds at most, then how many were not shown. */
static void log_drop(struct brm_intake *in, const struct brm_fired *f, const char *why) {
    uint64_t now = brm_time_mono_ms();
    if (now - in->drops_logged >= 10000) {
        if (in->drops_hidden) {
            char n[32];
            snprintf(n, sizeof(n), "%u", in->drops_hidden);
            brm_log_warn("timers dropped and not logged in the last window", "count", n);
        }
        in->drops_logged = now;
        in->drops_shown = in->drops_hidden = 0;
    }
    if (in->drops_shown++ >= 10) {
        in->drops_hidden++;
        return;
    }
    char late[32];
    snprintf(late, sizeof(late), "%.0fs", brm_time_now() - f->due);
    brm_log_warn(why, "rule", f->rule, "timer", f->key, "late", late);
}

static void park_fire(struct brm_intake *in, const char *key) {
    struct parked *p = brm_xcalloc(1, sizeof(*p));
    p->timer = brm_xstrdup(key);
    *in->parked_tail = p;
    in->parked_tail = &p->next;
    brm_counter_add(in->parked_count, 1);
}

/* Fires timer or digest KEY in the open group: its handler runs, and what
 * it did is stored with the group, the timer gone in the same transaction;
 * or it waits (parked) for a group that holds it. */
static void fire(struct brm_intake *in, const char *key) {
    struct brm_fired f;
    double now = brm_time_now();
    if (!in->txn) in->txn = brm_state_begin(in->state);
    size_t mark = brm_state_mark(in->txn);
    int rc = brm_state_fire(in->state, key, now, in->txn, &f);
    if (rc == BRM_STATE_BUSY) {
        park_fire(in, key);
        return;
    }
    if (rc == 0) return; /* cancelled, or armed again for later */
    int64_t id = brm_journal_next_id();
    struct brm_batch batch = { "timer", (uint64_t)id, now, 0, in->txn, 0 };
    struct brm_actions actions = { 0 };
    struct brm_dispatch_stats stats = { 0 };
    enum brm_fire_outcome out;
    if (brm_engine_fire(in->engine, &f, &batch, &actions, &stats, &out) == BRM_STATE_BUSY) {
        if (brm_state_rollback(in->txn, mark)) in->wake(in->wake_arg);
        brm_actions_reset(&actions);
        park_fire(in, key);
    } else {
        if (out == BRM_FIRE_NO_RULE) log_drop(in, &f, "timer dropped: its rule is gone");
        if (out == BRM_FIRE_NO_HANDLER) log_drop(in, &f, "timer dropped: its rule has no handler");
        if (out == BRM_FIRE_DROPPED_LATE)
            log_drop(in, &f, "timer dropped: later than the rule's `late` allows");
        hold_fired(in, id, &actions); /* the timer's deletion goes with the group */
    }
    brm_fired_reset(&f);
}

void brm_intake_fire(struct brm_intake *in, const char *key) {
    struct fire *f = brm_xcalloc(1, sizeof(*f));
    f->key = brm_xstrdup(key);
    uint64_t one = 1;
    pthread_mutex_lock(&in->lock);
    *in->fires_tail = f;
    in->fires_tail = &f->next;
    pthread_mutex_unlock(&in->lock);
    if (write(in->donefd, &one, sizeof(one)) < 0) { /* saturated: the worker looks anyway */
    }
}

/* Fires what the scheduler handed over. */
static void run_fires(struct brm_intake *in) {
    pthread_mutex_lock(&in->lock);
    struct fire *list = in->fires;
    in->fires = NULL;
    in->fires_tail = &in->fires;
    pthread_mutex_unlock(&in->lock);
    for (struct fire *f = list, *next; f; f = next) {
        next = f->next;
        fire(in, f->key);
        free(f->key);
        free(f);
    }
}

/* Runs the parked bodies again, in the order they came. */
static void run_parked(struct brm_intake *in) {
    struct parked *list = in->parked;
    in->parked = NULL;
    in->parked_tail = &in->parked;
    for (struct parked *p = list, *next; p; p = next) {
        next = p->next;
        if (p->timer) {
            fire(in, p->timer);
            free_parked(p);
            continue;
        }
        const struct brm_source *src = brm_config_source(in->cfg, p->source);
        if (!src) {
            char rid[32];
            snprintf(rid, sizeof(rid), "%lld", (long long)p->id);
            brm_log_error(p->done ? "a reload removed the source of a waiting body: answered 503"
                                  : "a reload removed the source of a waiting body: lost",
                          "request", rid, "source", p->source);
            if (p->done) p->done(p->arg, BRM_UNAVAILABLE, "the source is gone; try again");
            free_parked(p);
            continue;
        }
        struct body b = {
            src, p->id, p->body, p->len, p->received, p->peer, p->backfilled, p->tally
        };
        take(in, &b, p->done, p->arg, p->copy);
        p->copy = NULL; /* take owns it now */
        free_parked(p);
    }
}

void brm_intake_wake(struct brm_intake *in) {
    uint64_t one = 1;
    pthread_mutex_lock(&in->lock);
    atomic_store(&in->retry, 1);
    pthread_cond_signal(&in->done_cond); /* a worker in brm_intake_flush */
    pthread_mutex_unlock(&in->lock);
    if (write(in->donefd, &one, sizeof(one)) < 0) { /* saturated: a wake is pending anyway */
    }
}

/* The journal is done with a group (on the writer's thread): free the state
 * it held, and hand the group back to its worker. */
static void group_done(struct brm_journal_job *job, int stored, const struct brm_err *err) {
    struct group *g = (struct group *)job;
    struct brm_intake *in = g->in;
    g->stored = stored;
    if (!stored) snprintf(g->error, sizeof(g->error), "%s", err->msg);
    if (brm_state_release(g->jg.txn, stored)) in->wake(in->wake_arg);
    g->jg.txn = NULL;
    if (stored && g->jg.messages && in->outbox) brm_outbox_wake(in->outbox);
    pthread_mutex_lock(&in->lock);
    g->next = in->done;
    in->done = g;
    pthread_cond_signal(&in->done_cond);
    pthread_mutex_unlock(&in->lock);
    uint64_t one = 1;
    if (write(in->donefd, &one, sizeof(one)) < 0) { /* saturated: the worker looks anyway */
    }
}

/* Logs a refused group: a full disk refuses every group, so a line a
 * second with the counts. */
static void log_refused(struct brm_intake *in, const struct group *g, size_t lost) {
    in->failed_bodies += g->jg.n;
    in->failed_lost += lost;
    uint64_t now = brm_time_mono_ms();
    if (now - in->failure_logged < 1000) return;
    char count[32], dropped[32];
    snprintf(count, sizeof(count), "%zu", in->failed_bodies);
    snprintf(dropped, sizeof(dropped), "%zu", in->failed_lost);
    brm_log_error("could not store a group of bodies: answered 503", "bodies", count,
                  "lost_not_durable", dropped, "error", g->error);
    in->failure_logged = now;
    in->failed_bodies = in->failed_lost = 0;
}

/* Answers the bodies of a group the journal is done with, and frees it. */
static void answer(struct brm_intake *in, struct group *g) {
    size_t lost = 0;
    double now = brm_time_now();
    for (size_t i = 0; i < g->jg.n; i++) {
        struct held *h = &g->held[i];
        if (g->stored && !h->fired) brm_histogram_observe(in->lag, now - h->received);
        if (h->done)
            h->done(h->arg, g->stored ? BRM_OK : BRM_UNAVAILABLE,
                    g->stored ? "ok" : "cannot store the body now; try again");
        else if (!g->stored && !h->fired) /* a timer's is undone: it fires again */
            lost++;
    }
    if (!g->stored) log_refused(in, g, lost);
    free_held(g->held, g->jg.n);
    free(g->entries);
    brm_config_free(g->jg.cfg);
    free(g);
    in->inflight--;
}

/* Takes the groups the journal handed back. */
static struct group *take_done(struct brm_intake *in) {
    pthread_mutex_lock(&in->lock);
    struct group *list = in->done;
    in->done = NULL;
    pthread_mutex_unlock(&in->lock);
    /* Oldest first: the list was pushed at its head. */
    struct group *rev = NULL;
    while (list) {
        struct group *next = list->next;
        list->next = rev;
        rev = list;
        list = next;
    }
    return rev;
}

static void on_done(evutil_socket_t fd, short what, void *arg) {
    struct brm_intake *in = arg;
    uint64_t v;
    (void)what;
    if (read(fd, &v, sizeof(v)) < 0) { /* EAGAIN: drained already */
    }
    for (struct group *g = take_done(in), *next; g; g = next) {
        next = g->next;
        answer(in, g); /* may free requests and start others */
    }
    if (atomic_exchange(&in->retry, 0)) run_parked(in);
    run_fires(in);
}

/* Hands the open group to the journal (the end of a turn). */
static void on_commit(evutil_socket_t fd, short what, void *arg) {
    struct brm_intake *in = arg;
    (void)fd, (void)what;
    size_t n = in->nheld;
    if (!n) return;
    struct group *g = brm_xcalloc(1, sizeof(*g));
    int durable = 0;
    g->in = in;
    g->held = in->held;
    g->entries = brm_xmalloc(n * sizeof(*g->entries));
    for (size_t i = 0; i < n; i++) {
        struct held *h = &g->held[i];
        durable |= h->done != NULL;
        g->entries[i] = (struct brm_journal_entry){
            h->id,
            h->source ? h->source->name : "timer",
            h->topic,
            h->received,
            h->events,
            h->body,
            h->len,
            &h->actions,
            h->runs.text.data,
            h->runs.text.len,
            h->body ? brm_hash64(h->body, h->len) : 0,
            h->backfilled,
        };
    }
    g->jg.cfg = brm_config_ref(in->cfg); /* source names and targets, while it is written */
    g->jg.entries = g->entries;
    g->jg.n = n;
    g->jg.txn = in->txn;
    g->jg.job.done = group_done;
    /* A group of durability = "none" bodies alone, answered already, need
     * not wait for the disk: that is what the source chose. */
    brm_journal_group_init(&g->jg, durable);
    in->txn = NULL;
    in->held = NULL;
    in->nheld = in->capheld = 0;
    in->inflight++;
    brm_journal_submit(in->journal, &g->jg.job);
    if (in->next) {
        struct brm_engine *e = in->next;
        in->next = NULL;
        install(in, e);
    }
}

void brm_intake_flush(struct brm_intake *in) {
    event_del(in->commit);
    for (;;) {
        on_commit(-1, 0, in);
        if (!in->inflight && !in->parked) break;
        pthread_mutex_lock(&in->lock);
        while (!in->done && !atomic_load(&in->retry)) pthread_cond_wait(&in->done_cond, &in->lock);
        pthread_mutex_unlock(&in->lock);
        for (struct group *g = take_done(in), *next; g; g = next) {
            next = g->next;
            answer(in, g);
        }
        if (atomic_exchange(&in->retry, 0)) run_parked(in);
    }
    brm_state_release(in->txn, 0); /* a transaction that held nothing */
    in->txn = NULL;
}
