#include "state.h"

#include <pthread.h>
#include <stdatomic.h>
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
    char *value;    /* JSON text; for throttle "count window_start"; NULL: none */
    double expires; /* 0: never */
    uint64_t owner; /* the transaction whose change is not stored yet; 0: none */
    size_t body;    /* the owner's body (mark) that last noted an undo for it */
    int wanted;     /* another transaction was told it is busy */
    uint64_t saved; /* the save that last wrote it (each save writes a key once) */
};

/* What an entry held before a body of the transaction first changed it.
 * An entry a transaction owns is never freed, so the pointer holds. */
struct undo {
    struct entry *e;
    char *value;
    double expires;
    uint64_t owner;
    size_t body;
};

struct brm_state_txn {
    struct brm_state *s;
    uint64_t id;
    size_t body; /* the current body: its undo records start at undo[body - 1]... */
    struct undo *undo;
    size_t nundo, capundo;
};

struct brm_state {
    pthread_mutex_t lock; /* guards everything below, and every entry */
    struct entry **buckets;
    size_t nbuckets, count;
    size_t sweep_at; /* the bucket the next sweep starts from */
    _Atomic uint64_t next_txn, next_save;
};

static uint64_t hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

struct brm_state *brm_state_new(void) {
    struct brm_state *s = brm_xcalloc(1, sizeof(*s));
    pthread_mutex_init(&s->lock, NULL);
    s->nbuckets = 1024;
    s->buckets = brm_xcalloc(s->nbuckets, sizeof(*s->buckets));
    s->next_txn = 1;
    s->next_save = 1;
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
    pthread_mutex_destroy(&s->lock);
    free(s);
}

static int live(const struct entry *e, double now) {
    return e->value && (e->expires == 0 || e->expires > now);
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
    s->sweep_at = 0;
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

/* 1 when another transaction than T owns E (and it is told so). */
static int busy(struct entry *e, const struct brm_state_txn *t) {
    if (!e || !e->owner || (t && e->owner == t->id)) return 0;
    e->wanted = 1;
    return 1;
}

/* ---- transactions ------------------------------------------------------- */

struct brm_state_txn *brm_state_begin(struct brm_state *s) {
    struct brm_state_txn *t = brm_xcalloc(1, sizeof(*t));
    t->s = s;
    t->id = atomic_fetch_add(&s->next_txn, 1);
    t->body = 1;
    return t;
}

int brm_state_txn_empty(const struct brm_state_txn *t) {
    return !t || t->nundo == 0;
}

size_t brm_state_mark(struct brm_state_txn *t) {
    t->body++;
    return t->nundo;
}

/* Notes what E holds before T's current body first changes it, and makes T
 * its owner; caller holds the lock. */
static void take(struct brm_state_txn *t, struct entry *e) {
    if (!t || (e->owner == t->id && e->body == t->body)) return;
    if (t->nundo == t->capundo) {
        t->capundo = t->capundo ? t->capundo * 2 : 16;
        t->undo = brm_xrealloc(t->undo, t->capundo * sizeof(*t->undo));
    }
    t->undo[t->nundo++] = (struct undo){
        e, e->value ? brm_xstrdup(e->value) : NULL, e->expires, e->owner, e->body,
    };
    e->owner = t->id;
    e->body = t->body;
}

/* Puts back what undo record U says; caller holds the lock. */
static void restore(struct undo *u) {
    struct entry *e = u->e;
    free(e->value);
    e->value = u->value;
    e->expires = u->expires;
    e->owner = u->owner;
    e->body = u->body;
    u->value = NULL;
}

int brm_state_rollback(struct brm_state_txn *t, size_t mark) {
    int wanted = 0;
    pthread_mutex_lock(&t->s->lock);
    while (t->nundo > mark) {
        struct undo *u = &t->undo[--t->nundo];
        restore(u);
        if (!u->e->owner && u->e->wanted) {
            wanted = 1;
            u->e->wanted = 0;
        }
    }
    pthread_mutex_unlock(&t->s->lock);
    return wanted;
}

int brm_state_release(struct brm_state_txn *t, int keep) {
    if (!t) return 0;
    int wanted = 0;
    pthread_mutex_lock(&t->s->lock);
    for (size_t i = t->nundo; i-- > 0;) {
        struct undo *u = &t->undo[i];
        wanted |= u->e->wanted;
        u->e->wanted = 0;
        if (keep) {
            u->e->owner = 0;
            free(u->value);
        } else {
            restore(u); /* the first record of each key puts back owner 0 */
        }
    }
    pthread_mutex_unlock(&t->s->lock);
    free(t->undo);
    free(t);
    return wanted;
}

/* ---- changes ------------------------------------------------------------ */

static void set_value(struct entry *e, const char *value, double expires) {
    free(e->value);
    e->value = value ? brm_xstrdup(value) : NULL;
    e->expires = expires;
}

/* Looks KEY up for T (creating it when CREATE), under the lock taken here.
 * Returns 0 with *E set (NULL: absent), BUSY, or -1 when full. The caller
 * unlocks. */
static int lookup(struct brm_state *s, const char *key, int create, const struct brm_state_txn *t,
                  struct entry **e) {
    pthread_mutex_lock(&s->lock);
    *e = create ? upsert(s, key) : find(s, key);
    if (busy(*e, t)) return BRM_STATE_BUSY;
    return create && !*e ? -1 : 0;
}

/* 1 the first time, 0 after, for "once" and dedupe marks alike. */
static int mark_once(struct brm_state *s, const char *k, double ttl, double now,
                     struct brm_state_txn *t) {
    struct entry *e;
    int rc = lookup(s, k, 1, t, &e);
    if (rc == 0 && live(e, now)) {
        rc = 0;
    } else if (rc == 0) {
        take(t, e);
        set_value(e, "true", now + ttl);
        rc = 1;
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

int brm_state_once(struct brm_state *s, const char *key, double ttl, double now,
                   struct brm_state_txn *t) {
    char *k = brm_xasprintf("%s%s", ONCE, key);
    int rc = mark_once(s, k, ttl, now, t);
    free(k);
    return rc;
}

int brm_state_seen(struct brm_state *s, const char *topic, const char *id, double window,
                   double now, struct brm_state_txn *t) {
    char *k = brm_xasprintf("%s%s\x1f%s", DEDUPE, topic, id);
    int rc = mark_once(s, k, window, now, t);
    free(k);
    return rc < 0 ? rc : !rc;
}

int brm_state_throttle(struct brm_state *s, const char *key, long limit, double window, double now,
                       struct brm_state_txn *t) {
    char *k = brm_xasprintf("%s%s", THROTTLE, key);
    struct entry *e;
    int rc = lookup(s, k, 1, t, &e);
    if (rc == 0) {
        long count = 0;
        double start = now; /* a new window, unless the current one is live */
        if (!(live(e, now) && sscanf(e->value, "%ld %lf", &count, &start) == 2))
            count = 0, start = now;
        rc = count < limit;
        if (rc) {
            char v[64];
            snprintf(v, sizeof(v), "%ld %.6f", count + 1, start);
            take(t, e);
            set_value(e, v, start + window);
        }
    }
    pthread_mutex_unlock(&s->lock);
    free(k);
    return rc;
}

int brm_state_get(struct brm_state *s, const char *key, double now, struct brm_state_txn *t,
                  char **out) {
    char *k = brm_xasprintf("%s%s", STATE, key);
    struct entry *e;
    int rc = lookup(s, k, 0, t, &e);
    *out = rc == 0 && e && live(e, now) ? brm_xstrdup(e->value) : NULL;
    pthread_mutex_unlock(&s->lock);
    free(k);
    return rc;
}

int brm_state_set(struct brm_state *s, const char *key, const char *json, double ttl, double now,
                  struct brm_state_txn *t) {
    char *k = brm_xasprintf("%s%s", STATE, key);
    struct entry *e;
    int rc = lookup(s, k, json != NULL, t, &e);
    if (rc == 0 && e) {
        take(t, e);
        /* A deleted key keeps its entry (and owner) until the sweep. */
        set_value(e, json, json && ttl > 0 ? now + ttl : json ? 0 : now);
    }
    pthread_mutex_unlock(&s->lock);
    free(k);
    return rc;
}

/* The text of number V as state keeps it: whole numbers without a dot. */
static void format_number(double v, char *out, size_t size) {
    if (v > -9e15 && v < 9e15 && v == (double)(long long)v) /* in range first: no UB */
        snprintf(out, size, "%lld", (long long)v);
    else
        snprintf(out, size, "%.17g", v);
}

int brm_state_incr(struct brm_state *s, const char *key, double n, double ttl, double now,
                   struct brm_state_txn *t, double *out) {
    char *k = brm_xasprintf("%s%s", STATE, key);
    struct entry *e;
    int rc = lookup(s, k, 1, t, &e);
    if (rc == 0) {
        double v = 0, expires = ttl > 0 ? now + ttl : 0;
        if (live(e, now)) {
            char *end;
            v = strtod(e->value, &end);
            expires = e->expires;
            if (end == e->value || *end) rc = -2;
        }
        if (rc == 0) {
            char text[64];
            v += n;
            format_number(v, text, sizeof(text));
            take(t, e);
            set_value(e, text, expires);
            *out = v;
        }
    }
    pthread_mutex_unlock(&s->lock);
    free(k);
    return rc;
}

/* ---- the store ---------------------------------------------------------- */

int brm_state_save(struct brm_state_txn *t, struct brm_store *st, struct brm_err *err) {
    struct brm_state *s = t->s;
    uint64_t save = atomic_fetch_add(&s->next_save, 1);
    for (size_t i = 0; i < t->nundo; i++) {
        struct entry *e = t->undo[i].e;
        char *value = NULL;
        double expires = 0;
        /* Only T changes E until it is released: reading it needs the lock
         * against the sweep's neighbours in the bucket, nothing more. */
        pthread_mutex_lock(&s->lock);
        int again = e->saved == save;
        e->saved = save;
        if (e->value) {
            value = brm_xstrdup(e->value);
            expires = e->expires;
        }
        pthread_mutex_unlock(&s->lock);
        int rc = again ? 0 : brm_store_put_state(st, e->key, value, expires, err);
        free(value);
        if (rc < 0) return -1;
    }
    return 0;
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

long brm_state_sweep(struct brm_state *s, size_t buckets, double now, struct brm_store *st,
                     struct brm_err *err) {
    long gone = 0;
    int failed = 0;
    pthread_mutex_lock(&s->lock);
    for (size_t n = 0; n < buckets && n < s->nbuckets; n++) {
        struct entry **p = &s->buckets[s->sweep_at];
        s->sweep_at = (s->sweep_at + 1) & (s->nbuckets - 1);
        while (*p) {
            struct entry *e = *p;
            if (e->owner || live(e, now)) {
                p = &e->next;
                continue;
            }
            /* A value that expired is still in the store; a deleted one
             * went with the commit that deleted it. */
            if (e->value && st && !failed && brm_store_put_state(st, e->key, NULL, 0, err) < 0)
                failed = 1;
            *p = e->next;
            entry_free(e);
            s->count--;
            gone++;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return failed ? -1 : gone;
}

size_t brm_state_count(struct brm_state *s) {
    pthread_mutex_lock(&s->lock);
    size_t n = s->count;
    pthread_mutex_unlock(&s->lock);
    return n;
}
