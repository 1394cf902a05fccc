#include "intake.h"

#include <event2/event.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* An accepted body waiting for its group's commit. */
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
};

struct brm_intake {
    const struct brm_config *cfg; /* the engine's */
    struct brm_engine *engine;
    struct brm_engine *next; /* to put in place after the held group's commit */
    struct brm_outbox *outbox;
    struct brm_store *store;           /* this worker's connection */
    struct brm_state *state;           /* shared by the workers */
    struct event *commit;              /* runs after this turn's requests */
    int synced;                        /* the store connection waits for fsync (the default) */
    uint64_t failure_logged;           /* when the last store failure was logged (ms) */
    size_t failed_bodies, failed_lost; /* refused since */
    struct held *held;
    size_t nheld, capheld;
    struct source_keys *keys; /* parallel to cfg->sources */
    struct brm_counter *unknown, *other_topic, *duplicates;
    struct brm_histogram *lag;
    _Atomic int store_ok; /* the last commit worked */
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

struct brm_intake *brm_intake_new(struct brm_engine *engine, struct brm_outbox *ob,
                                  struct brm_store *store, struct brm_state *state,
                                  struct event_base *base) {
    struct brm_intake *in = brm_xcalloc(1, sizeof(*in));
    in->outbox = ob;
    in->store = store;
    in->state = state;
    in->commit = event_new(base, -1, 0, on_commit, in);
    in->synced = 1;
    in->store_ok = 1;
    install(in, engine);
    in->lag = brm_metrics_histogram("brume_journal_lag_seconds",
                                    "From a body's arrival to its commit with its outcome.", NULL);
    in->unknown = brm_metrics_counter("brume_unknown_topic_bodies_total",
                                      "Accepted bodies whose topic Mist does not document.", NULL);
    in->other_topic = brm_metrics_counter("brume_events_total", "Events received, by topic.",
                                          "topic", "other", NULL);
    in->duplicates = brm_metrics_counter("brume_duplicate_events_total",
                                         "Events not run again: their id was seen (dedupe).", NULL);
    return in;
}

void brm_intake_free(struct brm_intake *in) {
    if (!in) return;
    free_keys(in);
    brm_engine_free(in->engine);
    brm_engine_free(in->next);
    /* Bodies still held were never answered, so never acknowledged: the
     * server that would answer is gone, and they are dropped. */
    for (size_t i = 0; i < in->nheld; i++) {
        brm_actions_reset(&in->held[i].actions);
        free(in->held[i].copy);
    }
    free(in->held);
    event_free(in->commit);
    free(in);
}

void brm_intake_flush(struct brm_intake *in) {
    if (in->nheld) {
        event_del(in->commit);
        on_commit(-1, 0, in);
    }
    brm_state_end(in->state, 0); /* nothing of it was stored */
}

void brm_intake_swap(struct brm_intake *in, struct brm_engine *engine) {
    if (in->nheld) { /* after this group's commit: its bodies ran on the old set */
        brm_engine_free(in->next);
        in->next = engine;
        return;
    }
    install(in, engine);
}

struct brm_engine *brm_intake_engine(struct brm_intake *in) {
    return in->engine;
}

int brm_intake_store_ok(const struct brm_intake *in) {
    return atomic_load(&in->store_ok);
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
    struct brm_dispatch_stats stats_local;
    if (!env) env = &env_local;
    if (!stats) stats = &stats_local;
    if (brm_json_envelope(brm_engine_state(e), body, len, env, err) < 0) return BRM_BAD_REQUEST;
    brm_engine_dispatch(e, env, batch, sink, stats);
    return BRM_OK;
}

void brm_intake_submit(struct brm_intake *in, const struct brm_intake_req *r,
                       brm_intake_done_fn *done, void *arg) {
    struct brm_err err;
    struct brm_envelope env;
    struct brm_dispatch_stats stats;
    struct brm_actions actions = { 0 };
    const struct brm_source *src = r->source;
    /* The body's id is its request's in every log line about it. */
    int64_t id = brm_journal_next_id();
    char rid[32];
    snprintf(rid, sizeof(rid), "%lld", (long long)id);
    if (!signature_ok(in, r)) {
        brm_log_warn("refused a post: signature missing or wrong", "request", rid, "source",
                     src->name, "peer", r->peer);
        done(arg, BRM_UNAUTHORIZED, "signature missing or wrong");
        return;
    }
    struct brm_batch batch = { src->name, (uint64_t)id, r->received_at, src->dedupe };
    if (brm_intake_run(in->engine, r->body, r->len, &batch, &actions, &env, &stats, &err) !=
        BRM_OK) {
        brm_log_warn("refused a post: not a Mist webhook body", "request", rid, "source", src->name,
                     "peer", r->peer, "reason", err.msg);
        brm_actions_reset(&actions);
        done(arg, BRM_BAD_REQUEST, err.msg);
        return;
    }
    count_events(in, &env);
    if (stats.duplicates) brm_counter_add(in->duplicates, stats.duplicates);
    if (!env.known) note_unknown_topic(&env, src->name);
    if (brm_log_enabled(BRM_LOG_DEBUG)) {
        char n[32], sent[32];
        snprintf(n, sizeof(n), "%zu", env.nevents);
        snprintf(sent, sizeof(sent), "%zu", actions.n);
        brm_log_debug("accepted", "request", rid, "source", src->name, "topic", env.topic, "events",
                      n, "messages", sent);
    }
    /* Held until the group's commit. The commit event was made active by
     * the first body of this turn, so it runs after every request the loop
     * read in this turn: one transaction, one fsync, then the answers. */
    if (in->nheld == in->capheld) {
        in->capheld = in->capheld ? in->capheld * 2 : 16;
        in->held = brm_xrealloc(in->held, in->capheld * sizeof(*in->held));
    }
    struct held *h = &in->held[in->nheld++];
    *h = (struct held){ done,        arg,     id,     src,  "",     r->received_at,
                        env.nevents, r->body, r->len, NULL, actions };
    snprintf(h->topic, sizeof(h->topic), "%s", env.name);
    if (!src->durable) {
        /* Answered now: the request's buffer moves on, so keep a copy. */
        h->copy = brm_xstrndup(r->body, r->len);
        h->body = h->copy;
        h->done = NULL;
        done(arg, BRM_OK, "ok");
    }
    if (in->nheld == 1) event_active(in->commit, 0, 0);
}

static void on_commit(evutil_socket_t fd, short what, void *arg) {
    struct brm_intake *in = arg;
    struct brm_err err;
    (void)fd, (void)what;
    size_t n = in->nheld, messages = 0, lost = 0;
    int waiting = 0; /* bodies whose 200 waits for this commit */
    struct brm_journal_entry *entries = brm_xmalloc(n * sizeof(*entries));
    for (size_t i = 0; i < n; i++) {
        struct held *h = &in->held[i];
        waiting |= h->done != NULL;
        entries[i] =
            (struct brm_journal_entry){ h->id,     h->source->name, h->topic, h->received,
                                        h->events, h->body,         h->len,   &h->actions };
        messages += h->actions.n;
    }
    /* A group of durability = "none" bodies alone, answered already, need
     * not wait for the disk: that is what the source chose. */
    int rc = 0;
    if (waiting != in->synced) {
        if (brm_store_relax(in->store, !waiting, &err) == 0)
            in->synced = waiting;
        else if (waiting)
            rc = -1; /* cannot promise the disk: refuse */
    }
    if (rc == 0) rc = brm_journal_commit(in->store, in->cfg, in->state, entries, n, &err);
    free(entries);
    atomic_store(&in->store_ok, rc == 0);
    if (rc == 0) {
        double now = brm_time_now();
        for (size_t i = 0; i < n; i++) brm_histogram_observe(in->lag, now - in->held[i].received);
    }
    /* Stored: other workers may now see what these bodies' rules changed;
     * refused: it is undone, as if they never came. */
    brm_state_end(in->state, rc == 0);
    if (rc == 0 && messages) brm_outbox_wake(in->outbox);
    /* Answering may free requests and start others: take the group first. */
    struct held *held = in->held;
    in->held = NULL;
    in->nheld = in->capheld = 0;
    for (size_t i = 0; i < n; i++) {
        if (held[i].done)
            held[i].done(held[i].arg, rc == 0 ? BRM_OK : BRM_UNAVAILABLE,
                         rc == 0 ? "ok" : "cannot store the body now; try again");
        else if (rc < 0)
            lost++;
        brm_actions_reset(&held[i].actions);
        free(held[i].copy);
    }
    free(held);
    if (in->next && !in->nheld) {
        struct brm_engine *e = in->next;
        in->next = NULL;
        install(in, e);
    }
    if (rc < 0) {
        /* A full disk fails every group: a line a second, with the count. */
        in->failed_bodies += n;
        in->failed_lost += lost;
        uint64_t now = brm_time_mono_ms();
        if (now - in->failure_logged >= 1000) {
            char count[32], dropped[32];
            snprintf(count, sizeof(count), "%zu", in->failed_bodies);
            snprintf(dropped, sizeof(dropped), "%zu", in->failed_lost);
            brm_log_error("could not store a group of bodies: answered 503", "bodies", count,
                          "lost_not_durable", dropped, "error", err.msg);
            in->failure_logged = now;
            in->failed_bodies = in->failed_lost = 0;
        }
    }
}
