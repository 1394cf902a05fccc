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
/* Bytes of a worker's bodies handed to the journal and not stored yet past
 * which a durability = "none" body's answer waits for its commit too. */
#define MAX_AHEAD (1u << 20)

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
    char *timer;             /* shared state: the key of the timer it fired (to fire it again) */
    int stateful;            /* shared state: its rules read or changed state */
    int held;                /* BRM_JOURNAL_HOLD: journaled without its rules' outcome, for later */
    int was_held;            /* a held body run now (BRM_JOURNAL_RELEASE once it ran) */
    _Atomic long *pending;   /* a held body's: the server counts it done here */
    int backfilled;          /* from Mist's delivery log */
};

/* The bodies of one turn, handed to the journal together. */
struct group {
    struct brm_journal_group jg; /* first: the journal's job is the group */
    struct brm_intake *in;
    struct held *held;
    struct brm_journal_entry *entries;
    int stored;
    char error[512];
    enum brm_shared_outcome outcome; /* shared state: how its commit to Redis went */
    int queued;                      /* on the intake's committed list */
    int has_final;                   /* the final outcome came while a PENDING waited there */
    enum brm_shared_outcome final;
    int resolving;      /* its bodies were held when the answer was lost: it stores their outcome
                           if the commit went through after all */
    uint64_t counted;   /* its bytes in the intake's unstored */
    struct group *next; /* on the intake's list of groups done (or committed) */
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
    _Atomic long *pending; /* a held body run again (see struct held) */
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
    struct brm_shared *shared; /* the state's in Redis, or NULL (embedded) */
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
    struct group *committed;              /* groups Redis answered, newest first */
    struct fire *fires, **fires_tail;     /* timers and digests to fire, from the scheduler */
    struct parked *reruns, **reruns_tail; /* held bodies to run, from the server */
    size_t inflight;   /* groups handed over and not yet answered (worker's thread) */
    uint64_t unstored; /* their body bytes (worker's thread) */
    int donefd;        /* eventfd: the journal's thread, or a wake -> this worker */
    struct event *done_ev;
    _Atomic int retry; /* parked bodies should run again */

    uint64_t failure_logged; /* when the last refused group was logged (ms) */
    size_t failed_bodies, failed_lost;
    struct source_keys *keys; /* parallel to cfg->sources */
    struct brm_counter *unknown, *other_topic, *duplicates, *parked_count, *conflicts, *holds;
    struct brm_counter *behind;
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
    in->reruns_tail = &in->reruns;
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
    in->conflicts = brm_metrics_counter(
        "brume_state_conflicts_total",
        "Groups whose commit to the shared state met a change made elsewhere: they ran again.",
        NULL);
    in->holds = brm_metrics_counter(
        "brume_state_held_total",
        "Bodies journaled with their rules held for the shared state (Redis away, or a backlog).",
        NULL);
    in->behind = brm_metrics_counter(
        "brume_journal_behind_total",
        "Bodies of durability = \"none\" sources answered after their commit, not before: "
        "the journal's writer was more than 1 MB behind their worker.",
        NULL);
    return in;
}

static void free_held(struct held *h, size_t n) {
    for (size_t i = 0; i < n; i++) {
        brm_actions_reset(&h[i].actions);
        brm_buf_reset(&h[i].runs.text);
        free(h[i].copy);
        free(h[i].timer);
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
    for (struct parked *p = in->reruns, *next; p; p = next) { /* still held in the journal */
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
    _Atomic long *pending;          /* a held body run now (shared state): counted done there */
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
                          .peer = brm_xstrdup(b->peer ? b->peer : ""),
                          .backfilled = b->backfilled,
                          .tally = b->tally,
                          .pending = b->pending };
    *in->parked_tail = p;
    in->parked_tail = &p->next;
    brm_counter_add(in->parked_count, 1);
}

/* A held body is done with (stored with its outcome, or left held). */
static void held_done(_Atomic long *pending) {
    if (pending) atomic_fetch_sub(pending, 1);
}

/* A place for one more body in the open group; the commit event runs
 * after this turn's requests when it is the first. */
static struct held *hold_slot(struct brm_intake *in) {
    if (in->nheld == in->capheld) {
        in->capheld = in->capheld ? in->capheld * 2 : 16;
        in->held = brm_xrealloc(in->held, in->capheld * sizeof(*in->held));
    }
    struct held *h = &in->held[in->nheld++];
    memset(h, 0, sizeof(*h));
    if (in->nheld == 1) event_active(in->commit, 0, 0);
    return h;
}

/* Shared state: whether body B, whose rules used state (or met a key
 * another group holds), is held for later instead: 1 when Redis is away
 * or older bodies wait (a held body run now stays held only while Redis
 * is away: then it is done with, left in the journal). */
static int hold_instead(struct brm_intake *in, const struct body *b) {
    if (b->pending) {
        if (brm_shared_up(in->shared)) return 0;
        held_done(b->pending);
        return -1;
    }
    return brm_shared_hold_begin(in->shared, 0);
}

/* Whether body B, which DONE would answer, is one that need not wait for
 * the disk: posted to a durability = "none" source. */
static int not_durable(const struct body *b, brm_intake_done_fn *done) {
    return done && !b->source->durable && !b->backfilled;
}

/*
 * Whether body B, which DONE would answer, is answered now, before it is
 * stored: a durability = "none" body is, while this worker's bodies handed
 * to the journal and not stored stay under MAX_AHEAD. Past it the answer
 * waits for the commit (still with no fsync), so a writer that falls
 * behind slows the clients down instead of growing a queue in memory.
 */
static int answer_first(const struct brm_intake *in, const struct body *b,
                        brm_intake_done_fn *done) {
    return not_durable(b, done) && in->unstored < MAX_AHEAD;
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
    if (!in->txn) in->txn = brm_state_begin(in->state);
    size_t mark = brm_state_mark(in->txn);
    struct brm_batch batch = { src->name,    (uint64_t)b->id, b->received,
                               &src->dedupe, in->txn,         b->backfilled };
    enum brm_status st =
        brm_intake_run(in->engine, b->body, b->len, &batch, &actions, &env, &stats, &err);
    int hold = 0;
    if (in->shared && (st == BRM_BUSY || (st == BRM_OK && brm_state_touched(in->txn, mark)))) {
        hold = hold_instead(in, b);
        if (hold) { /* as if its rules had not run: they run when the state is back */
            if (brm_state_rollback(in->txn, mark)) in->wake(in->wake_arg);
            brm_actions_reset(&actions);
            brm_buf_reset(&runs.text);
            memset(&runs, 0, sizeof(runs));
            if (hold < 0) { /* a held body: it stays so */
                free(copy);
                return;
            }
            brm_counter_add(in->holds, 1);
            st = BRM_OK; /* it decoded (BUSY comes from its rules) */
            stats.duplicates = 0;
        }
    }
    if (st == BRM_BUSY) {
        /* Undone, as if it never came; it runs again when the group that
         * holds the state is done. */
        if (brm_state_rollback(in->txn, mark)) in->wake(in->wake_arg);
        brm_actions_reset(&actions);
        brm_buf_reset(&runs.text);
        if (!copy && answer_first(in, b, done)) {
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
        if (hold) brm_shared_hold_end(in->shared, 0);
        snprintf(rid, sizeof(rid), "%lld", (long long)b->id);
        brm_log_warn(st == BRM_TOO_LARGE ? "refused a post: too large once decoded"
                                         : "refused a post: not a Mist webhook body",
                     "request", rid, "source", src->name, "peer", b->peer, "reason", err.msg);
        brm_actions_reset(&actions);
        brm_buf_reset(&runs.text);
        free(copy);
        held_done(b->pending);
        if (done) done(arg, st, err.msg);
        return;
    }
    count_events(in, &env);
    if (stats.duplicates) brm_counter_add(in->duplicates, stats.duplicates);
    if (b->tally) *b->tally = (struct brm_intake_tally){ env.nevents, stats.duplicates, actions.n };
    if (!env.known) note_unknown_topic(&env, src->name);
    if (brm_log_enabled(BRM_LOG_DEBUG)) {
        char n[32], sent[32];
        snprintf(rid, sizeof(rid), "%lld", (long long)b->id);
        snprintf(n, sizeof(n), "%zu", env.nevents);
        snprintf(sent, sizeof(sent), "%zu", actions.n);
        brm_log_debug(hold ? "held for the shared state" : "accepted", "request", rid, "source",
                      src->name, "topic", env.topic, "events", n, "messages", sent);
    }
    /* Held for the group. The commit event was made active by the first
     * body of this turn, so it runs after every request the loop read in
     * this turn: the group is handed over then, and answered when stored. */
    struct held *h = hold_slot(in);
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
                        .stateful = in->shared && brm_state_touched(in->txn, mark),
                        .held = hold ? BRM_JOURNAL_HOLD : 0,
                        .was_held = b->pending != NULL,
                        .pending = b->pending,
                        .backfilled = b->backfilled };
    snprintf(h->topic, sizeof(h->topic), "%s", env.name);
    if (answer_first(in, b, h->done)) {
        /* Answered now: the request's buffer moves on, so keep a copy. */
        h->copy = brm_xstrndup(b->body, b->len);
        h->body = h->copy;
        h->done = NULL;
        done(arg, BRM_OK, "ok");
    } else if (not_durable(b, done)) {
        brm_counter_add(in->behind, 1);
    }
}

void brm_intake_submit(struct brm_intake *in, const struct brm_intake_req *r,
                       brm_intake_done_fn *done, void *arg) {
    const struct brm_source *src = r->source;
    /* The body's id is its request's in every log line about it. */
    struct body b = { .source = src,
                      .id = brm_journal_next_id(),
                      .body = r->body,
                      .len = r->len,
                      .received = r->received_at,
                      .peer = r->peer };
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
    struct body b = { .source = r->source,
                      .id = brm_journal_next_id(),
                      .body = r->body,
                      .len = r->len,
                      .received = r->received_at,
                      .peer = r->peer,
                      .backfilled = 1,
                      .tally = tally };
    take(in, &b, done, arg, NULL);
}

/* Holds what a fired timer's handler did (ACTIONS, taken) for the open
 * group: it is stored with the group, or the timer is back as it was. */
static void hold_fired(struct brm_intake *in, int64_t id, const char *key,
                       struct brm_actions *actions) {
    struct held *h = hold_slot(in);
    *h = (struct held){ .id = id, .received = brm_time_now(), .actions = *actions, .fired = 1 };
    if (in->shared) { /* fired again if its commit meets a change made elsewhere */
        h->timer = brm_xstrdup(key);
        h->stateful = 1;
    }
    snprintf(h->topic, sizeof(h->topic), "timer");
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
        hold_fired(in, id, key, &actions); /* the timer's deletion goes with the group */
    }
    brm_fired_reset(&f);
}

/* Wakes the worker's loop (any thread); a saturated eventfd means a wake
 * is pending anyway. */
static void poke(struct brm_intake *in) {
    uint64_t one = 1;
    if (write(in->donefd, &one, sizeof(one)) < 0) {
    }
}

void brm_intake_fire(struct brm_intake *in, const char *key) {
    struct fire *f = brm_xcalloc(1, sizeof(*f));
    f->key = brm_xstrdup(key);
    pthread_mutex_lock(&in->lock);
    *in->fires_tail = f;
    in->fires_tail = &f->next;
    pthread_mutex_unlock(&in->lock);
    poke(in);
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
        if (!src && p->pending) { /* its rules never run: it is released with no outcome */
            char rid[32];
            snprintf(rid, sizeof(rid), "%lld", (long long)p->id);
            brm_log_error("a reload removed the source of a held body: its rules do not run",
                          "request", rid, "source", p->source);
            struct held *h = hold_slot(in);
            *h = (struct held){
                .id = p->id, .received = p->received, .was_held = 1, .pending = p->pending
            };
            snprintf(h->topic, sizeof(h->topic), "held");
            free_parked(p);
            continue;
        }
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
        struct body b = { .source = src,
                          .id = p->id,
                          .body = p->body,
                          .len = p->len,
                          .received = p->received,
                          .peer = p->peer,
                          .backfilled = p->backfilled,
                          .tally = p->tally,
                          .pending = p->pending };
        take(in, &b, p->done, p->arg, p->copy);
        p->copy = NULL; /* take owns it now */
        free_parked(p);
    }
}

void brm_intake_wake(struct brm_intake *in) {
    pthread_mutex_lock(&in->lock);
    atomic_store(&in->retry, 1);
    pthread_cond_signal(&in->done_cond); /* a worker in brm_intake_flush */
    pthread_mutex_unlock(&in->lock);
    poke(in);
}

void brm_intake_set_shared(struct brm_intake *in, struct brm_shared *shared) {
    in->shared = shared;
}

void brm_intake_rerun(struct brm_intake *in, const struct brm_body *b, _Atomic long *pending) {
    struct parked *p = brm_xcalloc(1, sizeof(*p));
    p->id = b->id;
    p->source = brm_xstrdup(b->source);
    p->copy = brm_xstrndup(b->body ? b->body : "", b->len);
    p->body = p->copy;
    p->len = b->len;
    p->received = b->received;
    p->peer = brm_xstrdup("journal");
    p->pending = pending;
    pthread_mutex_lock(&in->lock);
    *in->reruns_tail = p;
    in->reruns_tail = &p->next;
    pthread_mutex_unlock(&in->lock);
    poke(in);
}

/* Runs the held bodies the server handed over, in the order it did. */
static void run_reruns(struct brm_intake *in) {
    pthread_mutex_lock(&in->lock);
    struct parked *list = in->reruns;
    in->reruns = NULL;
    in->reruns_tail = &in->reruns;
    pthread_mutex_unlock(&in->lock);
    if (!list) return;
    /* Behind the bodies parked already, in order: run_parked takes them all. */
    *in->parked_tail = list;
    while (*in->parked_tail) in->parked_tail = &(*in->parked_tail)->next;
    run_parked(in);
}

/* The journal is done with a group (on the writer's thread): free the state
 * it held, and hand the group back to its worker. */
static void group_done(struct brm_journal_job *job, int stored, const struct brm_err *err) {
    struct group *g = (struct group *)job;
    struct brm_intake *in = g->in;
    g->stored = stored;
    if (!stored) snprintf(g->error, sizeof(g->error), "%s", err->msg);
    if (in->shared && !stored && g->jg.txn) /* what Redis applied goes too */
        brm_shared_undo(in->shared, g->jg.txn, in->wake, in->wake_arg);
    else if (brm_state_release(g->jg.txn, stored))
        in->wake(in->wake_arg);
    g->jg.txn = NULL;
    if (stored && g->jg.messages && in->outbox) brm_outbox_wake(in->outbox);
    pthread_mutex_lock(&in->lock);
    g->next = in->done;
    in->done = g;
    pthread_cond_signal(&in->done_cond);
    pthread_mutex_unlock(&in->lock);
    poke(in);
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

static void free_group(struct brm_intake *in, struct group *g) {
    free_held(g->held, g->jg.n);
    free(g->entries);
    brm_config_free(g->jg.cfg);
    in->unstored -= g->counted;
    free(g);
    in->inflight--;
}

/* Answers the bodies of a group the journal is done with, and frees it. */
static void answer(struct brm_intake *in, struct group *g) {
    size_t lost = 0;
    double now = brm_time_now();
    for (size_t i = 0; i < g->jg.n; i++) {
        struct held *h = &g->held[i];
        if (g->stored && !h->fired) brm_histogram_observe(in->lag, now - h->received);
        if (h->held) brm_shared_hold_end(in->shared, g->stored);
        if (h->was_held && g->stored) brm_shared_released(in->shared, 1);
        held_done(h->pending); /* refused: still held, for a later drain */
        if (h->done)
            h->done(h->arg, g->stored ? BRM_OK : BRM_UNAVAILABLE,
                    g->stored ? "ok" : "cannot store the body now; try again");
        else if (!g->stored && !h->fired && !h->was_held) /* a timer's is undone: it fires again */
            lost++;
    }
    if (!g->stored) log_refused(in, g, lost);
    if (g->resolving) brm_shared_unresolved_add(in->shared, -1);
    free_group(in, g);
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

/* Takes the groups Redis answered, oldest first. */
static struct group *take_committed(struct brm_intake *in) {
    pthread_mutex_lock(&in->lock);
    struct group *list = in->committed;
    in->committed = NULL;
    for (struct group *g = list; g; g = g->next) g->queued = 0;
    pthread_mutex_unlock(&in->lock);
    struct group *rev = NULL;
    while (list) {
        struct group *next = list->next;
        list->next = rev;
        rev = list;
        list = next;
    }
    return rev;
}

/* Redis answered a group's commit (on the client's thread): hand it back. */
static void committed(void *arg, enum brm_shared_outcome outcome, int wanted) {
    struct group *g = arg;
    struct brm_intake *in = g->in;
    if (wanted) in->wake(in->wake_arg);
    pthread_mutex_lock(&in->lock);
    if (g->queued) { /* its PENDING is still there: this comes after it */
        g->has_final = 1;
        g->final = outcome;
    } else {
        g->outcome = outcome;
        g->queued = 1;
        g->next = in->committed;
        in->committed = g;
    }
    pthread_cond_signal(&in->done_cond);
    pthread_mutex_unlock(&in->lock);
    poke(in);
}

/* The entries the journal writes for G's bodies; G's job is set up. */
static void fill_entries(struct group *g) {
    int durable = 0, waits = 0;
    struct brm_intake *in = g->in;
    free(g->entries);
    g->entries = brm_xmalloc((g->jg.n ? g->jg.n : 1) * sizeof(*g->entries));
    for (size_t i = 0; i < g->jg.n; i++) {
        struct held *h = &g->held[i];
        /* A durability = "none" body may wait for its commit, not its fsync. */
        durable |= h->done && (h->backfilled || h->source->durable);
        waits |= h->done != NULL;
        g->entries[i] = (struct brm_journal_entry){
            h->id,
            h->source  ? h->source->name
            : h->fired ? "timer"
                       : "",
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
            h->held       ? BRM_JOURNAL_HOLD
            : h->was_held ? BRM_JOURNAL_RELEASE
                          : 0,
        };
    }
    g->jg.entries = g->entries;
    /* A group of durability = "none" bodies alone need not wait for the
     * disk: that is what the source chose. */
    brm_journal_group_init(&g->jg, durable);
    g->jg.job.lingers = !waits;
    in->unstored = in->unstored - g->counted + g->jg.job.bytes;
    g->counted = g->jg.job.bytes;
}

/* A group whose commit Redis did not apply (its transaction is undone):
 * bodies that used no state go to the journal as they are; the others run
 * again (CONFLICT: the cache has what Redis holds now) or are held (DOWN);
 * a timer fires again, now or when its claim runs out. Stopping (LOST),
 * nothing is stored: what waits is answered 503. */
static void not_applied(struct brm_intake *in, struct group *g) {
    enum brm_shared_outcome out = g->outcome;
    size_t kept = 0;
    g->jg.txn = NULL;
    if (out == BRM_SHARED_CONFLICT) brm_counter_add(in->conflicts, 1);
    for (size_t i = 0; i < g->jg.n; i++) {
        struct held h = g->held[i];
        if (!h.stateful) {
            g->held[kept++] = h;
            continue;
        }
        brm_actions_reset(&h.actions);
        brm_buf_reset(&h.runs.text);
        if (h.fired && out == BRM_SHARED_CONFLICT) park_fire(in, h.timer);
        if (h.fired) {
            free(h.timer);
            continue;
        }
        struct body b = { .source = h.source,
                          .id = h.id,
                          .body = h.body,
                          .len = h.len,
                          .received = h.received,
                          .backfilled = h.backfilled,
                          .pending = h.pending };
        if (out == BRM_SHARED_CONFLICT) {
            park(in, &b, h.done, h.arg, h.copy);
        } else if (out == BRM_SHARED_LOST || h.was_held) {
            if (h.done) h.done(h.arg, BRM_UNAVAILABLE, "cannot store the body now; try again");
            held_done(h.pending); /* a held body stays held */
            free(h.copy);
        } else { /* DOWN */
            brm_shared_hold_begin(in->shared, 1);
            brm_counter_add(in->holds, 1);
            h.held = BRM_JOURNAL_HOLD;
            h.stateful = 0;
            memset(&h.runs, 0, sizeof(h.runs));
            memset(&h.actions, 0, sizeof(h.actions));
            g->held[kept++] = h;
        }
    }
    g->jg.n = kept;
    if (out == BRM_SHARED_CONFLICT) atomic_store(&in->retry, 1);
    if (!kept) {
        free_group(in, g);
        return;
    }
    fill_entries(g);
    brm_journal_submit(in->journal, &g->jg.job);
}

/*
 * The answer to G's commit was lost with the connection: it is sent again
 * once Redis is back. Meanwhile nothing waits: what used no state is
 * journaled now, and every body that used some is journaled held (and
 * answered) in a group of its own. G keeps what their rules did: if the
 * commit went through after all, G stores it (their deliveries and runs,
 * as a held body's that ran); if not, they run again from the journal.
 */
static void resolve_later(struct brm_intake *in, struct group *g) {
    struct group *now = brm_xcalloc(1, sizeof(*now));
    now->in = in;
    now->held = brm_xcalloc(g->jg.n + 1, sizeof(*now->held));
    now->jg.cfg = brm_config_ref(g->jg.cfg);
    now->jg.job.done = group_done;
    size_t kept = 0;
    for (size_t i = 0; i < g->jg.n; i++) {
        struct held *h = &g->held[i];
        if (!h->stateful) { /* it needs no answer from Redis */
            now->held[now->jg.n++] = *h;
            continue;
        }
        if (!h->fired && !h->was_held) {
            struct held *c = &now->held[now->jg.n++];
            *c = (struct held){ .done = h->done,
                                .arg = h->arg,
                                .id = h->id,
                                .source = h->source,
                                .received = h->received,
                                .events = h->events,
                                .body = h->body,
                                .len = h->len,
                                .copy = h->copy,
                                .held = BRM_JOURNAL_HOLD };
            snprintf(c->topic, sizeof(c->topic), "%s", h->topic);
            brm_shared_hold_begin(in->shared, 1);
            brm_counter_add(in->holds, 1);
            h->done = NULL;
            h->body = NULL;
            h->copy = NULL;
            h->was_held = 1; /* if the commit went through: its outcome, as a held body's */
        }
        held_done(h->pending); /* a held body run again: the drain waits for the outcome */
        h->pending = NULL;
        g->held[kept++] = *h;
    }
    g->jg.n = kept;
    g->resolving = 1;
    brm_shared_unresolved_add(in->shared, 1);
    in->inflight++;
    if (now->jg.n) {
        fill_entries(now);
        brm_journal_submit(in->journal, &now->jg.job);
    } else {
        free_group(in, now);
    }
}

static void after_commit(struct brm_intake *in, struct group *g) {
    if (g->outcome == BRM_SHARED_PENDING) {
        resolve_later(in, g);
    } else if (g->outcome == BRM_SHARED_OK) {
        if (g->resolving) fill_entries(g); /* what the held bodies' rules did, at last */
        brm_journal_submit(in->journal, &g->jg.job);
    } else {
        if (g->resolving) { /* its bodies run again from the journal */
            brm_shared_unresolved_add(in->shared, -1);
            g->jg.txn = NULL;
            free_group(in, g);
            return;
        }
        not_applied(in, g);
    }
}

/* Runs after_commit for each of LIST, and for the final outcome that came
 * while a group's PENDING waited. */
static void after_commits(struct brm_intake *in, struct group *list) {
    for (struct group *g = list, *next; g; g = next) {
        next = g->next;
        pthread_mutex_lock(&in->lock);
        int final = g->has_final;
        enum brm_shared_outcome outcome = g->final;
        g->has_final = 0;
        pthread_mutex_unlock(&in->lock);
        after_commit(in, g);
        if (final) {
            g->outcome = outcome;
            after_commit(in, g);
        }
    }
}

static void on_done(evutil_socket_t fd, short what, void *arg) {
    struct brm_intake *in = arg;
    uint64_t v;
    (void)what;
    if (read(fd, &v, sizeof(v)) < 0) { /* EAGAIN: drained already */
    }
    after_commits(in, take_committed(in));
    for (struct group *g = take_done(in), *next; g; g = next) {
        next = g->next;
        answer(in, g); /* may free requests and start others */
    }
    if (atomic_exchange(&in->retry, 0)) run_parked(in);
    run_fires(in);
    run_reruns(in);
}

/* Hands the open group to the journal (the end of a turn): through Redis
 * first when it used the shared state. */
static void on_commit(evutil_socket_t fd, short what, void *arg) {
    struct brm_intake *in = arg;
    (void)fd, (void)what;
    size_t n = in->nheld;
    if (!n) return;
    struct group *g = brm_xcalloc(1, sizeof(*g));
    g->in = in;
    g->held = in->held;
    g->jg.cfg = brm_config_ref(in->cfg); /* source names and targets, while it is written */
    g->jg.n = n;
    g->jg.txn = in->txn;
    g->jg.job.done = group_done;
    fill_entries(g);
    in->txn = NULL;
    in->held = NULL;
    in->nheld = in->capheld = 0;
    in->inflight++;
    if (in->shared && g->jg.txn && !brm_state_txn_empty(g->jg.txn))
        brm_shared_commit(in->shared, g->jg.txn, committed, g);
    else
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
        while (!in->done && !in->committed && !atomic_load(&in->retry))
            pthread_cond_wait(&in->done_cond, &in->lock);
        pthread_mutex_unlock(&in->lock);
        after_commits(in, take_committed(in));
        for (struct group *g = take_done(in), *next; g; g = next) {
            next = g->next;
            answer(in, g);
        }
        if (atomic_exchange(&in->retry, 0)) run_parked(in);
    }
    brm_state_release(in->txn, 0); /* a transaction that held nothing */
    in->txn = NULL;
}
