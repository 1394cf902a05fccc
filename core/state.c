#include "state.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Keys are namespaced, so brume.once("x") and brume.state.set("x") differ. */
#define ONCE     "once\x1f"
#define THROTTLE "throttle\x1f"
#define STATE    "state\x1f"
#define DEDUPE   "dedupe\x1f"

struct entry {
    struct entry *next;
    char *key;
    char *value;    /* JSON text; for throttle "count window_start" */
    double expires; /* 0: never */
};

/* What a key held before the open transaction first changed it. */
struct undo {
    char *key;
    char *value; /* NULL: it held nothing */
    double expires;
};

struct brm_state {
    pthread_mutex_t lock; /* guards everything below */
    struct entry **buckets;
    size_t nbuckets, count;
    /* The open transaction: one thread at a time reads and changes the
     * state between its first call and brm_state_end; the others wait. */
    pthread_cond_t released;
    int held;
    pthread_t holder;
    struct undo *undo;
    size_t nundo, capundo;
};

static uint64_t hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

void brm_state_log_reset(struct brm_state_log *log) {
    for (size_t i = 0; i < log->n; i++) free(log->keys[i]);
    free(log->keys);
    log->keys = NULL;
    log->n = log->cap = 0;
}

static void note(struct brm_state_log *log, const char *key) {
    if (!log) return;
    for (size_t i = 0; i < log->n; i++)
        if (strcmp(log->keys[i], key) == 0) return;
    if (log->n == log->cap) {
        log->cap = log->cap ? log->cap * 2 : 8;
        log->keys = brm_xrealloc(log->keys, log->cap * sizeof(char *));
    }
    log->keys[log->n++] = brm_xstrdup(key);
}

struct brm_state *brm_state_new(void) {
    struct brm_state *s = brm_xcalloc(1, sizeof(*s));
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->released, NULL);
    s->nbuckets = 1024;
    s->buckets = brm_xcalloc(s->nbuckets, sizeof(*s->buckets));
    return s;
}

static void entry_free(struct entry *e) {
    free(e->key);
    free(e->value);
    free(e);
}

void brm_state_free(struct brm_state *s) {
    if (!s) return;
    for (size_t i = 0; i < s->nbuckets; i++) {
        for (struct entry *e = s->buckets[i], *next; e; e = next) {
            next = e->next;
            entry_free(e);
        }
    }
    free(s->buckets);
    for (size_t i = 0; i < s->nundo; i++) {
        free(s->undo[i].key);
        free(s->undo[i].value);
    }
    free(s->undo);
    pthread_cond_destroy(&s->released);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* Takes the lock, and the transaction unless this thread has it: what
 * another thread changed is not read or changed before it is stored (or
 * undone). */
static void enter(struct brm_state *s) {
    pthread_mutex_lock(&s->lock);
    while (s->held && !pthread_equal(s->holder, pthread_self()))
        pthread_cond_wait(&s->released, &s->lock);
    s->held = 1;
    s->holder = pthread_self();
}

static void leave(struct brm_state *s) {
    pthread_mutex_unlock(&s->lock);
}

static int live(const struct entry *e, double now) {
    return e->expires == 0 || e->expires > now;
}

/* The entry of KEY, live or not; caller holds the lock. */
static struct entry *find(struct brm_state *s, const char *key) {
    for (struct entry *e = s->buckets[hash(key) & (s->nbuckets - 1)]; e; e = e->next)
        if (strcmp(e->key, key) == 0) return e;
    return NULL;
}

static void grow(struct brm_state *s) {
    size_t n = s->nbuckets * 2;
    struct entry **b = brm_xcalloc(n, sizeof(*b));
    for (size_t i = 0; i < s->nbuckets; i++) {
        for (struct entry *e = s->buckets[i], *next; e; e = next) {
            next = e->next;
            size_t j = hash(e->key) & (n - 1);
            e->next = b[j];
            b[j] = e;
        }
    }
    free(s->buckets);
    s->buckets = b;
    s->nbuckets = n;
}

/* The entry of KEY, created (empty) when missing; NULL when full. */
static struct entry *upsert(struct brm_state *s, const char *key) {
    struct entry *e = find(s, key);
    if (e) return e;
    if (s->count >= BRM_STATE_MAX_ENTRIES) return NULL;
    if (s->count >= s->nbuckets) grow(s);
    e = brm_xcalloc(1, sizeof(*e));
    e->key = brm_xstrdup(key);
    size_t i = hash(key) & (s->nbuckets - 1);
    e->next = s->buckets[i];
    s->buckets[i] = e;
    s->count++;
    return e;
}

/* Notes what KEY holds (E may be NULL) before the transaction's first
 * change to it; caller holds the lock. */
static void remember(struct brm_state *s, const char *key, const struct entry *e) {
    for (size_t i = 0; i < s->nundo; i++)
        if (strcmp(s->undo[i].key, key) == 0) return;
    if (s->nundo == s->capundo) {
        s->capundo = s->capundo ? s->capundo * 2 : 16;
        s->undo = brm_xrealloc(s->undo, s->capundo * sizeof(*s->undo));
    }
    struct undo *u = &s->undo[s->nundo++];
    u->key = brm_xstrdup(key);
    u->value = e && e->value ? brm_xstrdup(e->value) : NULL;
    u->expires = e ? e->expires : 0;
}

static void set_value(struct entry *e, const char *value, double expires) {
    free(e->value);
    e->value = brm_xstrdup(value);
    e->expires = expires;
}

static char *nskey(const char *ns, const char *key) {
    return brm_xasprintf("%s%s", ns, key);
}

int brm_state_once(struct brm_state *s, const char *key, double ttl, double now,
                   struct brm_state_log *log) {
    char *k = nskey(ONCE, key);
    enter(s);
    struct entry *e = upsert(s, k);
    int rc = -1;
    if (e && e->value && live(e, now)) {
        rc = 0;
    } else if (e) {
        remember(s, k, e);
        set_value(e, "true", now + ttl);
        rc = 1;
    }
    leave(s);
    if (rc == 1) note(log, k);
    free(k);
    return rc;
}

int brm_state_throttle(struct brm_state *s, const char *key, long limit, double window, double now,
                       struct brm_state_log *log) {
    char *k = nskey(THROTTLE, key);
    enter(s);
    struct entry *e = upsert(s, k);
    int rc = -1;
    if (e) {
        long count = 0;
        double start = now; /* a new window, unless the current one is live */
        if (!(e->value && live(e, now) && sscanf(e->value, "%ld %lf", &count, &start) == 2))
            count = 0, start = now;
        rc = count < limit;
        if (rc) {
            char v[64];
            snprintf(v, sizeof(v), "%ld %.6f", count + 1, start);
            remember(s, k, e);
            set_value(e, v, start + window);
        }
    }
    leave(s);
    if (rc == 1) note(log, k);
    free(k);
    return rc;
}

char *brm_state_get(struct brm_state *s, const char *key, double now) {
    char *k = nskey(STATE, key), *v = NULL;
    enter(s);
    struct entry *e = find(s, k);
    if (e && e->value && live(e, now)) v = brm_xstrdup(e->value);
    leave(s);
    free(k);
    return v;
}

int brm_state_set(struct brm_state *s, const char *key, const char *json, double ttl, double now,
                  struct brm_state_log *log) {
    char *k = nskey(STATE, key);
    int rc = 0;
    enter(s);
    if (!json) {
        struct entry *e = find(s, k);
        if (e) {
            remember(s, k, e);
            free(e->value);
            e->value = NULL; /* the sweep unlinks it; the log deletes it from the store */
            e->expires = now;
        }
    } else {
        struct entry *e = upsert(s, k);
        if (e) {
            remember(s, k, e);
            set_value(e, json, ttl > 0 ? now + ttl : 0);
        } else {
            rc = -1;
        }
    }
    leave(s);
    if (rc == 0) note(log, k);
    free(k);
    return rc;
}

int brm_state_incr(struct brm_state *s, const char *key, double n, double ttl, double now,
                   struct brm_state_log *log, double *out) {
    char *k = nskey(STATE, key);
    int rc = -1;
    enter(s);
    struct entry *e = upsert(s, k);
    if (e) {
        double v = 0, expires = ttl > 0 ? now + ttl : 0;
        if (e->value && live(e, now)) {
            char *end;
            v = strtod(e->value, &end);
            expires = e->expires;
            if (end == e->value || *end) rc = -2;
        }
        if (rc != -2) {
            char text[64];
            v += n;
            if (v == (double)(long long)v && v > -9e15 && v < 9e15)
                snprintf(text, sizeof(text), "%lld", (long long)v);
            else
                snprintf(text, sizeof(text), "%.17g", v);
            remember(s, k, e);
            set_value(e, text, expires);
            *out = v;
            rc = 0;
        }
    }
    leave(s);
    if (rc == 0) note(log, k);
    free(k);
    return rc;
}

int brm_state_seen(struct brm_state *s, const char *topic, const char *id, double window,
                   double now, struct brm_state_log *log) {
    char *k = brm_xasprintf("%s%s\x1f%s", DEDUPE, topic, id);
    enter(s);
    struct entry *e = upsert(s, k);
    int rc = -1;
    if (e && e->value && live(e, now)) {
        rc = 1;
    } else if (e) {
        remember(s, k, e);
        set_value(e, "true", now + window);
        rc = 0;
    }
    leave(s);
    if (rc == 0) note(log, k);
    free(k);
    return rc;
}

int brm_state_save(struct brm_state *s, struct brm_store *st, const struct brm_state_log *log,
                   struct brm_err *err) {
    for (size_t i = 0; i < log->n; i++) {
        char *value = NULL;
        double expires = 0;
        pthread_mutex_lock(&s->lock);
        struct entry *e = find(s, log->keys[i]);
        if (e && e->value) {
            value = brm_xstrdup(e->value);
            expires = e->expires;
        }
        pthread_mutex_unlock(&s->lock);
        int rc = brm_store_put_state(st, log->keys[i], value, expires, err);
        free(value);
        if (rc < 0) return -1;
    }
    return 0;
}

void brm_state_end(struct brm_state *s, int keep) {
    pthread_mutex_lock(&s->lock);
    if (!s->held || !pthread_equal(s->holder, pthread_self())) {
        pthread_mutex_unlock(&s->lock);
        return;
    }
    for (size_t i = s->nundo; i-- > 0;) {
        struct undo *u = &s->undo[i];
        if (!keep) {
            struct entry *e = u->value ? upsert(s, u->key) : find(s, u->key);
            if (e && u->value) {
                set_value(e, u->value, u->expires);
            } else if (e) { /* it held nothing: the sweep unlinks it */
                free(e->value);
                e->value = NULL;
            }
        }
        free(u->key);
        free(u->value);
    }
    s->nundo = 0;
    s->held = 0;
    pthread_cond_broadcast(&s->released);
    pthread_mutex_unlock(&s->lock);
}

static void load_one(void *arg, const char *key, const char *value, double expires) {
    struct brm_state *s = arg;
    struct entry *e = upsert(s, key);
    if (e) set_value(e, value, expires);
}

int brm_state_load(struct brm_state *s, struct brm_store *st, double now, struct brm_err *err) {
    pthread_mutex_lock(&s->lock);
    int rc = brm_store_load_state(st, now, load_one, s, err);
    pthread_mutex_unlock(&s->lock);
    return rc;
}

size_t brm_state_sweep(struct brm_state *s, double now) {
    size_t gone = 0;
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < s->nbuckets; i++) {
        struct entry **p = &s->buckets[i];
        while (*p) {
            struct entry *e = *p;
            if (!e->value || !live(e, now)) {
                *p = e->next;
                entry_free(e);
                s->count--;
                gone++;
            } else {
                p = &e->next;
            }
        }
    }
    pthread_mutex_unlock(&s->lock);
    return gone;
}

size_t brm_state_count(struct brm_state *s) {
    pthread_mutex_lock(&s->lock);
    size_t n = s->count;
    pthread_mutex_unlock(&s->lock);
    return n;
}
