#include "state.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Keys are namespaced, so brume.once("x") and brume.state.set("x") differ;
 * a timer's and a digest's keys hold their rule's name too. */
#define ONCE     "once\x1f"
#define THROTTLE "throttle\x1f"
#define STATE    "state\x1f"
#define DEDUPE   "dedupe\x1f"
#define TIMER    "timer\x1f"
#define GROUP    "group\x1f"

/* A digest's items, in the order they were added (the first max_items). */
struct group {
    char **items; /* JSON texts */
    size_t n, cap;
    size_t saved; /* items the store holds already */
    int fresh;    /* not stored yet: the store may hold an older digest's items */
    long count;   /* adds, those past max_items too */
    double opened;
};

struct entry {
    struct entry *next;
    char *key;
    char *value;         /* JSON text; for throttle "count window_start"; a timer's data; a
                            digest's settings; NULL: none */
    double expires;      /* 0: never */
    double due;          /* a timer's or an open digest's due time; 0: not one */
    size_t heap;         /* its place in the due heap, plus one; 0: not in it */
    struct group *group; /* an open digest's items */
    uint64_t owner;      /* the transaction whose change is not stored yet; 0: none */
    size_t body;         /* the owner's body (mark) that last noted an undo for it */
    int wanted;          /* another transaction was told it is busy */
    uint64_t saved;      /* the save that last wrote it (each save writes a key once) */
    /* Shared mode (the table caches what Redis holds): */
    uint64_t version;  /* of the value as the shared store has it; 0: none there */
    uint64_t read_txn; /* the last transaction that noted reading it */
    unsigned pins;     /* read notes of live transactions: it stays in memory */
    size_t change;     /* its place in the list brm_state_changes makes */
};

/* What an entry held before a body of the transaction first changed it.
 * An entry a transaction owns is never freed, so the pointer holds. */
struct undo {
    struct entry *e;
    size_t at; /* the transaction's body that made it */
    char *value;
    double expires, due;
    uint64_t version;
    uint64_t owner;
    size_t body;
    struct group *group; /* and its size then: items added since are undone */
    size_t nitems;
    long count;
};

/* Shared mode: what a transaction saw of a key it did not own, so that
 * the shared store can tell whether it still holds. */
struct read {
    struct entry *e; /* pinned */
    size_t at;       /* the body that read it */
    int live;        /* it saw a live value of VERSION, or none */
    uint64_t version;
};

struct brm_state_txn {
    struct brm_state *s;
    uint64_t id;
    size_t body; /* the current body */
    struct undo *undo;
    size_t nundo, capundo;
    struct read *reads;
    size_t nreads, capreads;
};

/* Timers and digests a rule holds, against BRM_STATE_MAX_TIMERS. */
struct rule_count {
    char *rule;
    long n;
};

struct brm_state {
    pthread_mutex_t lock; /* guards everything below, and every entry */
    struct entry **buckets;
    size_t nbuckets, count;
    size_t sweep_at;     /* the bucket the next sweep starts from */
    struct entry **heap; /* timers and open digests, earliest due first */
    size_t nheap, capheap;
    struct rule_count *rules;
    size_t nrules;
    void (*on_earlier)(void *arg);
    void *on_earlier_arg;
    _Atomic uint64_t next_txn, next_save;
    int shared; /* a cache of the shared store: no due heap, nothing saved, reads noted */
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

static void group_free(struct group *g) {
    if (!g) return;
    for (size_t i = 0; i < g->n; i++) free(g->items[i]);
    free(g->items);
    free(g);
}

static void entry_free(struct entry *e) {
    free(e->key);
    free(e->value);
    group_free(e->group);
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
    free(s->heap);
    for (size_t i = 0; i < s->nrules; i++) free(s->rules[i].rule);
    free(s->rules);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

void brm_state_set_due_hook(struct brm_state *s, void (*fn)(void *arg), void *arg) {
    pthread_mutex_lock(&s->lock);
    s->on_earlier = fn;
    s->on_earlier_arg = arg;
    pthread_mutex_unlock(&s->lock);
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

/* ---- the due heap ------------------------------------------------------- */

static void heap_place(struct brm_state *s, size_t i, struct entry *e) {
    s->heap[i] = e;
    e->heap = i + 1;
}

static void heap_up(struct brm_state *s, size_t i) {
    struct entry *e = s->heap[i];
    while (i > 0 && s->heap[(i - 1) / 2]->due > e->due) {
        heap_place(s, i, s->heap[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    heap_place(s, i, e);
}

static void heap_down(struct brm_state *s, size_t i) {
    struct entry *e = s->heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= s->nheap) break;
        if (c + 1 < s->nheap && s->heap[c + 1]->due < s->heap[c]->due) c++;
        if (s->heap[c]->due >= e->due) break;
        heap_place(s, i, s->heap[c]);
        i = c;
    }
    heap_place(s, i, e);
}

static void heap_remove(struct brm_state *s, struct entry *e) {
    size_t i = e->heap - 1;
    e->heap = 0;
    struct entry *last = s->heap[--s->nheap];
    if (i == s->nheap) return;
    heap_place(s, i, last);
    heap_up(s, i);
    heap_down(s, last->heap - 1);
}

/* The rule's count of timers and digests; KEY is "timer\x1fRULE\x1f...". */
static long *rule_count(struct brm_state *s, const char *key) {
    const char *rule = strchr(key, '\x1f') + 1;
    size_t n = strcspn(rule, "\x1f");
    for (size_t i = 0; i < s->nrules; i++)
        if (strlen(s->rules[i].rule) == n && memcmp(s->rules[i].rule, rule, n) == 0)
            return &s->rules[i].n;
    s->rules = brm_xrealloc(s->rules, (s->nrules + 1) * sizeof(*s->rules));
    s->rules[s->nrules] = (struct rule_count){ brm_xstrndup(rule, n), 0 };
    return &s->rules[s->nrules++].n;
}

/* Gives E its due time (0: none), keeping the heap and the rule's count;
 * tells the hook when the earliest due time got earlier. Caller holds the
 * lock. */
static void set_due(struct brm_state *s, struct entry *e, double due) {
    if (s->shared) { /* the shared store keeps them by due time, and says when */
        e->due = due;
        return;
    }
    double first = s->nheap ? s->heap[0]->due : 0;
    if (!e->due != !due) *rule_count(s, e->key) += due ? 1 : -1;
    e->due = due;
    if (!due) {
        if (e->heap) heap_remove(s, e);
        return;
    }
    if (!e->heap) {
        if (s->nheap == s->capheap) {
            s->capheap = s->capheap ? s->capheap * 2 : 64;
            s->heap = brm_xrealloc(s->heap, s->capheap * sizeof(*s->heap));
        }
        heap_place(s, s->nheap++, e);
    }
    heap_up(s, e->heap - 1);
    heap_down(s, e->heap - 1);
    if (s->heap[0] == e && (!first || due < first) && s->on_earlier)
        s->on_earlier(s->on_earlier_arg);
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
    return !t || (t->nundo == 0 && t->nreads == 0);
}

size_t brm_state_mark(struct brm_state_txn *t) {
    return ++t->body;
}

int brm_state_touched(const struct brm_state_txn *t, size_t mark) {
    return (t->nundo && t->undo[t->nundo - 1].at >= mark) ||
           (t->nreads && t->reads[t->nreads - 1].at >= mark);
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
        e,
        t->body,
        e->value ? brm_xstrdup(e->value) : NULL,
        e->expires,
        e->due,
        e->version,
        e->owner,
        e->body,
        e->group,
        e->group ? e->group->n : 0,
        e->group ? e->group->count : 0,
    };
    e->owner = t->id;
    e->body = t->body;
}

/* Puts back what undo record U says; caller holds the lock. */
static void restore(struct brm_state *s, struct undo *u) {
    struct entry *e = u->e;
    free(e->value);
    e->value = u->value;
    u->value = NULL;
    e->expires = u->expires;
    set_due(s, e, u->due);
    e->version = u->version;
    e->owner = u->owner;
    e->body = u->body;
    if (e->group != u->group) group_free(e->group); /* opened after U: undone */
    e->group = u->group;
    if (e->group) {
        while (e->group->n > u->nitems) free(e->group->items[--e->group->n]);
        e->group->count = u->count;
    }
}

/* Forgets read note R; caller holds the lock. */
static void unread(struct brm_state_txn *t, struct read *r) {
    r->e->pins--;
    if (r->e->read_txn == t->id) r->e->read_txn = 0;
}

int brm_state_rollback(struct brm_state_txn *t, size_t mark) {
    int wanted = 0;
    pthread_mutex_lock(&t->s->lock);
    while (t->nreads && t->reads[t->nreads - 1].at >= mark) unread(t, &t->reads[--t->nreads]);
    while (t->nundo && t->undo[t->nundo - 1].at >= mark) {
        struct undo *u = &t->undo[--t->nundo];
        restore(t->s, u);
        if (!u->e->owner && u->e->wanted) {
            wanted = 1;
            u->e->wanted = 0;
        }
    }
    pthread_mutex_unlock(&t->s->lock);
    return wanted;
}

/* After T was stored: the digests it closed go (their items with them),
 * and those it kept are as the store has them. Caller holds the lock. */
static void settle_groups(struct brm_state_txn *t) {
    for (size_t i = 0; i < t->nundo; i++) {
        struct undo *u = &t->undo[i];
        struct group *g = u->group;
        if (!g || g == u->e->group) continue;
        group_free(g); /* closed by T: the records after this one may name it too */
        for (size_t k = i; k < t->nundo; k++)
            if (t->undo[k].group == g) t->undo[k].group = NULL;
    }
    for (size_t i = 0; i < t->nundo; i++) {
        struct group *g = t->undo[i].e->group;
        if (g) g->saved = g->n, g->fresh = 0;
    }
}

int brm_state_release(struct brm_state_txn *t, int keep) {
    if (!t) return 0;
    int wanted = 0;
    pthread_mutex_lock(&t->s->lock);
    if (keep) settle_groups(t);
    for (size_t i = t->nundo; i-- > 0;) {
        struct undo *u = &t->undo[i];
        wanted |= u->e->wanted;
        u->e->wanted = 0;
        if (keep) {
            u->e->owner = 0;
            free(u->value);
        } else {
            restore(t->s, u); /* the first record of each key puts back owner 0 */
        }
    }
    for (size_t i = 0; i < t->nreads; i++) unread(t, &t->reads[i]);
    pthread_mutex_unlock(&t->s->lock);
    free(t->undo);
    free(t->reads);
    free(t);
    return wanted;
}

/* ---- values ------------------------------------------------------------- */

static void set_value(struct entry *e, const char *value, double expires) {
    free(e->value);
    e->value = value ? brm_xstrdup(value) : NULL;
    e->expires = expires;
}

/* Shared mode: notes that T read E at NOW, unless T changed it already or
 * noted it before; caller holds the lock. */
static void note_read(struct brm_state_txn *t, struct entry *e, double now) {
    if (e->owner == t->id || e->read_txn == t->id) return;
    if (t->nreads == t->capreads) {
        t->capreads = t->capreads ? t->capreads * 2 : 16;
        t->reads = brm_xrealloc(t->reads, t->capreads * sizeof(*t->reads));
    }
    int seen = live(e, now);
    t->reads[t->nreads++] = (struct read){ e, t->body, seen, seen ? e->version : 0 };
    e->read_txn = t->id;
    e->pins++;
}

/* Looks KEY up for T at NOW (creating it when CREATE), under the lock
 * taken here. Returns 0 with *E set (NULL: absent), BUSY, or -1 when full.
 * In shared mode what T reads is noted (an absent key gets an empty entry
 * to note it on). The caller unlocks. */
static int lookup(struct brm_state *s, const char *key, int create, double now,
                  struct brm_state_txn *t, struct entry **e) {
    pthread_mutex_lock(&s->lock);
    if (s->shared && t) create = 1;
    *e = create ? upsert(s, key) : find(s, key);
    if (busy(*e, t)) return BRM_STATE_BUSY;
    if (create && !*e) return -1;
    if (s->shared && t) note_read(t, *e, now);
    return 0;
}

/* 1 the first time, 0 after, for "once" and dedupe marks alike. */
static int mark_once(struct brm_state *s, const char *k, double ttl, double now,
                     struct brm_state_txn *t) {
    struct entry *e;
    int rc = lookup(s, k, 1, now, t, &e);
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
    int rc = lookup(s, k, 1, now, t, &e);
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
    int rc = lookup(s, k, 0, now, t, &e);
    *out = rc == 0 && e && live(e, now) ? brm_xstrdup(e->value) : NULL;
    pthread_mutex_unlock(&s->lock);
    free(k);
    return rc;
}

int brm_state_set(struct brm_state *s, const char *key, const char *json, double ttl, double now,
                  struct brm_state_txn *t) {
    char *k = brm_xasprintf("%s%s", STATE, key);
    struct entry *e;
    int rc = lookup(s, k, json != NULL, now, t, &e);
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
    int rc = lookup(s, k, 1, now, t, &e);
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

/* ---- timers and digests ------------------------------------------------- */

/* Deletes timer or digest E within T. A digest's items stay with T's undo
 * record until T is stored (brm_state_release frees them then). */
static void close_entry(struct brm_state *s, struct brm_state_txn *t, struct entry *e) {
    take(t, e);
    if (!t) group_free(e->group);
    e->group = NULL;
    set_value(e, NULL, 0);
    set_due(s, e, 0);
}

static char *due_key(const char *ns, const char *rule, const char *key) {
    return brm_xasprintf("%s%s\x1f%s", ns, rule, key);
}

char *brm_state_due_key(int group, const char *rule, const char *name) {
    return due_key(group ? GROUP : TIMER, rule, name);
}

/* Looks up the timer or digest K for a change that may add it: -1 when
 * the rule holds BRM_STATE_MAX_TIMERS already. The caller unlocks. */
static int lookup_due(struct brm_state *s, const char *k, struct brm_state_txn *t,
                      struct entry **e) {
    int rc = lookup(s, k, 1, 0, t, e);
    /* Shared: the limit would be this instance's view alone; the shared
     * store has no count per rule. */
    if (rc == 0 && !s->shared && !(*e)->due && *rule_count(s, k) >= BRM_STATE_MAX_TIMERS) rc = -1;
    return rc;
}

int brm_state_timer_set(struct brm_state *s, const char *rule, const char *key, double due,
                        const char *data, struct brm_state_txn *t) {
    char *k = due_key(TIMER, rule, key);
    struct entry *e;
    int rc = lookup_due(s, k, t, &e);
    if (rc == 0) {
        take(t, e);
        set_value(e, data ? data : "null", 0);
        set_due(s, e, due > 0 ? due : 1e-6); /* 0 means "not a timer" */
    }
    pthread_mutex_unlock(&s->lock);
    free(k);
    return rc;
}

int brm_state_timer_cancel(struct brm_state *s, const char *rule, const char *key,
                           struct brm_state_txn *t) {
    char *k = due_key(TIMER, rule, key);
    struct entry *e;
    int rc = lookup(s, k, 0, 0, t, &e);
    if (rc == 0 && e && e->due) {
        close_entry(s, t, e);
        rc = 1;
    }
    pthread_mutex_unlock(&s->lock);
    free(k);
    return rc;
}

int brm_state_timer_get(struct brm_state *s, const char *rule, const char *key,
                        struct brm_state_txn *t, double *due, char **data) {
    char *k = due_key(TIMER, rule, key);
    struct entry *e;
    int rc = lookup(s, k, 0, 0, t, &e);
    *data = NULL;
    if (rc == 0 && e && e->due) {
        *due = e->due;
        *data = brm_xstrdup(e->value);
        rc = 1;
    }
    pthread_mutex_unlock(&s->lock);
    free(k);
    return rc;
}

/* A digest's value: what closes it, when it opened, how many adds. */
static char *group_value(const struct brm_group_opts *o, const struct group *g) {
    return brm_xasprintf("{\"window\":%.17g,\"debounce\":%s,\"max_wait\":%.17g,"
                         "\"max_items\":%ld,\"opened\":%.17g,\"count\":%ld}",
                         o->window, o->debounce ? "true" : "false", o->max_wait, o->max_items,
                         g->opened, g->count);
}

/* Reads a digest's value back (into G too, when given). */
static void read_group(const char *v, struct brm_group_opts *o, struct group *g) {
    char b[8] = "";
    double opened = 0;
    long count = 0;
    if (sscanf(v,
               "{\"window\":%lf,\"debounce\":%5[a-z],\"max_wait\":%lf,\"max_items\":%ld,"
               "\"opened\":%lf,\"count\":%ld}",
               &o->window, b, &o->max_wait, &o->max_items, &opened, &count) != 6)
        *o = (struct brm_group_opts){ 60, 0, 0, BRM_STATE_MAX_ITEMS };
    o->debounce = strcmp(b, "true") == 0;
    if (g) g->opened = opened, g->count = count;
}

/* When a digest opened at OPENED closes, after an add at NOW. */
static double group_due(const struct brm_group_opts *o, double opened, double now) {
    if (!o->debounce) return opened + o->window;
    double due = now + o->window;
    return o->max_wait > 0 && opened + o->max_wait < due ? opened + o->max_wait : due;
}

int brm_state_group_add(struct brm_state *s, const char *rule, const char *key, const char *item,
                        const struct brm_group_opts *opts, double now, struct brm_state_txn *t,
                        long *count) {
    char *k = due_key(GROUP, rule, key);
    struct entry *e;
    int rc = lookup_due(s, k, t, &e);
    if (rc == 0) {
        struct brm_group_opts o = *opts;
        take(t, e);
        if (!e->due) { /* the first add opens it, with these settings */
            e->group = brm_xcalloc(1, sizeof(*e->group));
            e->group->opened = now;
            e->group->fresh = 1;
        } else {
            read_group(e->value, &o, NULL);
        }
        struct group *g = e->group;
        if (item && g->n < (size_t)o.max_items) {
            if (g->n == g->cap) {
                g->cap = g->cap ? g->cap * 2 : 8;
                g->items = brm_xrealloc(g->items, g->cap * sizeof(*g->items));
            }
            g->items[g->n++] = brm_xstrdup(item);
        }
        *count = ++g->count;
        free(e->value);
        e->value = group_value(&o, g);
        e->expires = 0;
        set_due(s, e, group_due(&o, g->opened, now));
    }
    pthread_mutex_unlock(&s->lock);
    free(k);
    return rc;
}

/* Splits a timer's or digest's key "ns\x1fRULE\x1fKEY" into OUT. */
static void split_key(const char *k, struct brm_fired *out) {
    const char *rule = strchr(k, '\x1f') + 1, *key = strchr(rule, '\x1f') + 1;
    out->rule = brm_xstrndup(rule, (size_t)(key - rule - 1));
    out->key = brm_xstrdup(key);
}

int brm_state_pop_due(struct brm_state *s, double now, char *key, size_t size, double *next) {
    int found = 0;
    pthread_mutex_lock(&s->lock);
    /* One a transaction holds waits for it: its due time may move. */
    if (s->nheap && s->heap[0]->due <= now && !s->heap[0]->owner) {
        struct entry *e = s->heap[0];
        heap_remove(s, e);
        snprintf(key, size, "%s", e->key);
        found = 1;
    }
    *next = s->nheap ? s->heap[0]->due : 0;
    pthread_mutex_unlock(&s->lock);
    return found;
}

int brm_state_fire(struct brm_state *s, const char *fullkey, double now, struct brm_state_txn *t,
                   struct brm_fired *out) {
    struct entry *e;
    memset(out, 0, sizeof(*out));
    int rc = lookup(s, fullkey, 0, now, t, &e);
    if (rc == 0 && e && e->due && e->due <= now) { /* not cancelled, nor armed again later */
        split_key(fullkey, out);
        out->due = e->due;
        if (e->group) {
            struct group *g = e->group;
            out->kind = BRM_FIRED_GROUP;
            out->items = brm_xcalloc(g->n + 1, sizeof(char *));
            for (size_t i = 0; i < g->n; i++) out->items[i] = brm_xstrdup(g->items[i]);
            out->nitems = g->n;
            out->count = g->count;
            out->opened = g->opened;
        } else {
            out->kind = BRM_FIRED_TIMER;
            out->data = brm_xstrdup(e->value);
        }
        close_entry(s, t, e);
        rc = 1;
    } else if (rc == 0 && e && e->due && !e->heap) {
        set_due(s, e, e->due); /* popped, and due later now: back in the heap */
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

void brm_fired_reset(struct brm_fired *f) {
    free(f->rule);
    free(f->key);
    free(f->data);
    for (size_t i = 0; i < f->nitems; i++) free(f->items[i]);
    free(f->items);
    memset(f, 0, sizeof(*f));
}

long brm_state_drop_rule(struct brm_state *s, const char *rule, struct brm_state_txn *t) {
    long dropped = 0;
    size_t n = strlen(rule);
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < s->nheap;) {
        struct entry *e = s->heap[i];
        const char *r = strchr(e->key, '\x1f') + 1;
        if (strncmp(r, rule, n) == 0 && r[n] == '\x1f' && !busy(e, t)) {
            close_entry(s, t, e); /* out of the heap: look at I again */
            dropped++;
        } else {
            i++;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return dropped;
}

int brm_state_cancel_due(struct brm_state *s, const char *key, struct brm_state_txn *t) {
    struct entry *e;
    int rc = lookup(s, key, 0, 0, t, &e);
    if (rc == 0 && e && e->due) {
        close_entry(s, t, e);
        rc = 1;
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

int brm_state_due_now(struct brm_state *s, const char *key, double now, struct brm_state_txn *t) {
    struct entry *e;
    int rc = lookup(s, key, 0, now, t, &e);
    if (rc == 0 && e && e->due) {
        take(t, e);
        set_due(s, e, now);
        rc = 1;
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

void brm_state_each_due(struct brm_state *s, size_t limit, brm_state_due_fn *fn, void *arg) {
    /* The LIMIT soonest of a binary heap, without sorting it all: a small
     * heap of candidates, the root first, each popped one adding its two
     * children (O(limit log limit) under the lock, however many there are). */
    pthread_mutex_lock(&s->lock);
    size_t *cand = brm_xmalloc((2 * limit + 2) * sizeof(size_t)), n = 0, shown = 0;
    if (s->nheap) cand[n++] = 0;
    while (n && shown < limit) {
        size_t best = 0;
        for (size_t i = 1; i < n; i++)
            if (s->heap[cand[i]]->due < s->heap[cand[best]]->due) best = i;
        size_t at = cand[best];
        cand[best] = cand[--n];
        struct entry *e = s->heap[at];
        const char *rule = strchr(e->key, '\x1f') + 1, *key = strchr(rule, '\x1f') + 1;
        fn(arg, e->group ? BRM_FIRED_GROUP : BRM_FIRED_TIMER, e->key, rule,
           (size_t)(key - rule - 1), key, e->due, e->group ? NULL : e->value,
           e->group ? e->group->count : 0);
        shown++;
        for (size_t c = 2 * at + 1; c <= 2 * at + 2 && c < s->nheap; c++) cand[n++] = c;
    }
    free(cand);
    pthread_mutex_unlock(&s->lock);
}

int brm_state_due_entry(const char *key, const char *value, double due, brm_state_due_fn *fn,
                        void *arg) {
    int group = strncmp(key, GROUP, strlen(GROUP)) == 0;
    if (!group && strncmp(key, TIMER, strlen(TIMER)) != 0) return -1;
    const char *rule = strchr(key, '\x1f') + 1, *name = strchr(rule, '\x1f');
    if (!name) return -1;
    struct brm_group_opts o;
    struct group g = { 0 };
    if (group) read_group(value, &o, &g);
    fn(arg, group ? BRM_FIRED_GROUP : BRM_FIRED_TIMER, key, rule, (size_t)(name - rule), name + 1,
       due, group ? NULL : value, g.count);
    return 0;
}

size_t brm_state_pending(struct brm_state *s) {
    pthread_mutex_lock(&s->lock);
    size_t n = s->nheap;
    pthread_mutex_unlock(&s->lock);
    return n;
}

/* ---- the store ---------------------------------------------------------- */

/* What one entry's save writes, copied under the lock. */
struct saving {
    char *value;
    double expires, due;
    int group, fresh; /* a digest's key; its items are written from FROM */
    size_t from, n;
    char **items;
};

static void saving_reset(struct saving *v) {
    free(v->value);
    for (size_t i = 0; i < v->n; i++) free(v->items[i]);
    free(v->items);
}

/* Copies what E's save must write, unless save SAVE wrote it already;
 * caller holds the lock. Returns 0 when there is nothing to write. */
static int copy_for_save(struct entry *e, uint64_t save, struct saving *v) {
    memset(v, 0, sizeof(*v));
    if (e->saved == save) return 0;
    e->saved = save;
    v->value = e->value ? brm_xstrdup(e->value) : NULL;
    v->expires = e->expires;
    v->due = e->due;
    v->group = strncmp(e->key, GROUP, strlen(GROUP)) == 0;
    if (e->group) {
        struct group *g = e->group;
        v->fresh = g->fresh;
        v->from = g->fresh ? 0 : g->saved;
        v->n = g->n - v->from;
        v->items = brm_xcalloc(v->n + 1, sizeof(char *));
        for (size_t i = 0; i < v->n; i++) v->items[i] = brm_xstrdup(g->items[v->from + i]);
    }
    return 1;
}

static int write_saving(struct brm_store *st, const char *key, const struct saving *v,
                        struct brm_err *err) {
    if (brm_store_put_state(st, key, v->value, v->expires, v->due, err) < 0) return -1;
    /* A closed digest's items go; a new one's replace an older one's. */
    if (v->group && (!v->value || v->fresh) && brm_store_drop_items(st, key, err) < 0) return -1;
    for (size_t i = 0; i < v->n; i++)
        if (brm_store_put_item(st, key, (long)(v->from + i), v->items[i], err) < 0) return -1;
    return 0;
}

int brm_state_save(struct brm_state_txn *t, struct brm_store *st, struct brm_err *err) {
    struct brm_state *s = t->s;
    if (s->shared) return 0; /* the shared store has it already */
    uint64_t save = atomic_fetch_add(&s->next_save, 1);
    for (size_t i = 0; i < t->nundo; i++) {
        struct entry *e = t->undo[i].e;
        struct saving v;
        /* Only T changes what it owns until it is released: the lock only
         * keeps the copy apart from the sweep and the due heap. */
        pthread_mutex_lock(&s->lock);
        int write = copy_for_save(e, save, &v);
        pthread_mutex_unlock(&s->lock);
        int rc = write ? write_saving(st, e->key, &v, err) : 0;
        saving_reset(&v);
        if (rc < 0) return -1;
    }
    return 0;
}

static void load_one(void *arg, const char *key, const char *value, double expires, double due) {
    struct brm_state *s = arg;
    struct entry *e = upsert(s, key);
    if (!e) return;
    set_value(e, value, expires);
    if (due && strncmp(key, GROUP, strlen(GROUP)) == 0) {
        struct brm_group_opts o;
        e->group = brm_xcalloc(1, sizeof(*e->group));
        read_group(value, &o, e->group);
    }
    if (due) set_due(s, e, due);
}

static void load_item(void *arg, const char *key, long seq, const char *item) {
    struct brm_state *s = arg;
    struct entry *e = find(s, key);
    struct group *g = e ? e->group : NULL;
    if (!g || seq != (long)g->n) return; /* of a digest that is gone, or out of order */
    if (g->n == g->cap) {
        g->cap = g->cap ? g->cap * 2 : 8;
        g->items = brm_xrealloc(g->items, g->cap * sizeof(*g->items));
    }
    g->items[g->n++] = brm_xstrdup(item);
    g->saved = g->n;
}

int brm_state_load(struct brm_state *s, struct brm_store *st, double now, struct brm_err *err) {
    pthread_mutex_lock(&s->lock);
    int rc = brm_store_load_state(st, now, load_one, s, err);
    if (rc == 0) rc = brm_store_load_items(st, load_item, s, err);
    pthread_mutex_unlock(&s->lock);
    return rc;
}

/* 1 when the sweep may drop E at NOW; caller holds the lock. Shared, the
 * table is a cache: what no transaction holds may go (it is in the shared
 * store), live or not once the cache is full. */
static int sweepable(const struct brm_state *s, const struct entry *e, double now) {
    if (e->owner || e->pins) return 0;
    if (s->shared) return s->count > BRM_STATE_CACHE || !live(e, now);
    return !e->due && !e->heap && !live(e, now);
}

long brm_state_sweep(struct brm_state *s, size_t buckets, double now, struct brm_store *st,
                     struct brm_err *err) {
    long gone = 0;
    int failed = 0;
    pthread_mutex_lock(&s->lock);
    if (s->shared) st = NULL; /* nothing of it is in the local store */
    for (size_t n = 0; n < buckets && n < s->nbuckets; n++) {
        struct entry **p = &s->buckets[s->sweep_at];
        s->sweep_at = (s->sweep_at + 1) & (s->nbuckets - 1);
        while (*p) {
            struct entry *e = *p;
            if (!sweepable(s, e, now)) {
                p = &e->next;
                continue;
            }
            /* A value that expired is still in the store; a deleted one
             * went with the commit that deleted it. */
            if (e->value && st && !failed && brm_store_put_state(st, e->key, NULL, 0, 0, err) < 0)
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

/* ---- shared mode ---------------------------------------------------------- */

void brm_state_set_shared(struct brm_state *s) {
    pthread_mutex_lock(&s->lock);
    s->shared = 1;
    pthread_mutex_unlock(&s->lock);
}

int brm_state_is_shared(struct brm_state *s) {
    pthread_mutex_lock(&s->lock);
    int shared = s->shared;
    pthread_mutex_unlock(&s->lock);
    return shared;
}

/* The change of E in the list being made (SAVE marks the entries in it),
 * added when it is not there yet; caller holds the lock. */
static struct brm_state_change *change_of(struct entry *e, uint64_t save,
                                          struct brm_state_change **v, size_t *n, size_t *cap) {
    if (e->saved == save) return &(*v)[e->change];
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 16;
        *v = brm_xrealloc(*v, *cap * sizeof(**v));
    }
    e->saved = save;
    e->change = *n;
    struct brm_state_change *c = &(*v)[(*n)++];
    memset(c, 0, sizeof(*c));
    c->key = brm_xstrdup(e->key);
    c->entry = e;
    c->is_due =
        strncmp(e->key, TIMER, strlen(TIMER)) == 0 || strncmp(e->key, GROUP, strlen(GROUP)) == 0;
    c->is_group = strncmp(e->key, GROUP, strlen(GROUP)) == 0;
    return c;
}

size_t brm_state_changes(struct brm_state_txn *t, struct brm_state_change **out) {
    struct brm_state *s = t->s;
    uint64_t save = atomic_fetch_add(&s->next_save, 1);
    struct brm_state_change *v = NULL;
    size_t n = 0, cap = 0;
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < t->nreads; i++) {
        struct read *r = &t->reads[i];
        struct brm_state_change *c = change_of(r->e, save, &v, &n, &cap);
        if (c->read && (c->read_live != r->live || c->read_version != r->version)) {
            /* Two bodies saw it change in between: no version matches both,
             * and the shared store answers with what it holds now. */
            c->read_live = 1;
            c->read_version = UINT64_MAX;
            continue;
        }
        c->read = 1;
        c->read_live = r->live;
        c->read_version = r->version;
    }
    for (size_t i = 0; i < t->nundo; i++) {
        struct undo *u = &t->undo[i];
        struct entry *e = u->e;
        struct brm_state_change *c = change_of(e, save, &v, &n, &cap);
        if (c->write) continue; /* the first record of a key says what it held before T */
        c->write = 1;
        c->old_value = u->value ? brm_xstrdup(u->value) : NULL;
        c->old_expires = u->expires;
        c->old_due = u->due;
        c->old_version = u->version;
        if (u->group) { /* what the digest held before T: items appended since, or gone */
            c->old_group = 1;
            c->old_same = u->group == e->group;
            c->old_nitems = u->nitems;
            c->old_items = brm_xcalloc(u->nitems + 1, sizeof(char *));
            for (size_t k = 0; !c->old_same && k < u->nitems; k++)
                c->old_items[k] = brm_xstrdup(u->group->items[k]);
        }
        c->value = e->value ? brm_xstrdup(e->value) : NULL;
        c->expires = e->expires;
        c->due = e->due;
        c->version = e->version;
        struct group *g = e->group;
        if (g) {
            c->group_fresh = g->fresh;
            size_t from = g->fresh ? 0 : g->saved;
            c->nitems = g->n - from;
            c->items = brm_xcalloc(c->nitems + 1, sizeof(char *));
            for (size_t k = 0; k < c->nitems; k++) c->items[k] = brm_xstrdup(g->items[from + k]);
        }
    }
    pthread_mutex_unlock(&s->lock);
    *out = v;
    return n;
}

void brm_state_changes_free(struct brm_state_change *v, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free(v[i].key);
        free(v[i].value);
        free(v[i].old_value);
        for (size_t k = 0; k < v[i].nitems; k++) free(v[i].items[k]);
        free(v[i].items);
        for (size_t k = 0; v[i].old_items && k < v[i].old_nitems; k++) free(v[i].old_items[k]);
        free(v[i].old_items);
    }
    free(v);
}

void brm_state_set_versions(struct brm_state_txn *t, const struct brm_state_change *v,
                            const uint64_t *versions, size_t n) {
    pthread_mutex_lock(&t->s->lock);
    for (size_t i = 0; i < n; i++) {
        struct entry *e = v[i].entry;
        if (v[i].write && e->owner == t->id) e->version = versions[i];
    }
    pthread_mutex_unlock(&t->s->lock);
}

void brm_state_cache_put(struct brm_state *s, const char *key, const char *value, double expires,
                         double due, uint64_t version, const char *const *items, size_t nitems) {
    pthread_mutex_lock(&s->lock);
    struct entry *e = value ? upsert(s, key) : find(s, key);
    if (e && !e->owner) {
        group_free(e->group);
        e->group = NULL;
        set_value(e, value, expires);
        e->version = value ? version : 0;
        set_due(s, e, value ? due : 0);
        if (value && due && strncmp(key, GROUP, strlen(GROUP)) == 0) {
            struct brm_group_opts o;
            struct group *g = brm_xcalloc(1, sizeof(*g));
            read_group(value, &o, g);
            g->cap = nitems;
            g->items = brm_xcalloc(nitems + 1, sizeof(char *));
            for (size_t i = 0; i < nitems; i++) g->items[i] = brm_xstrdup(items[i]);
            g->n = g->saved = nitems;
            e->group = g;
        }
    }
    pthread_mutex_unlock(&s->lock);
}

void brm_state_cache_forget(struct brm_state *s, const char *key) {
    brm_state_cache_put(s, key, NULL, 0, 0, 0, NULL, 0);
}
