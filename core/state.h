/*
 * state: what rules keep between events (brume.once, brume.throttle,
 * brume.state), their timers and digests (brume.timer, brume.group), and
 * the sources' dedupe marks, shared by every worker: one hash table in
 * memory under one lock, so "once" is once across workers, and a heap of
 * timers and digests by due time, so that finding the due ones scans
 * nothing.
 *
 * Changes are transactional, key by key. A worker's changes belong to a
 * transaction (struct brm_state_txn), one per group of bodies the worker
 * hands the journal. The first change a transaction makes to a key makes it
 * the key's owner until brm_state_release, after the group was stored (or
 * failed to be): meanwhile another transaction that reads or changes the
 * key is told BRM_STATE_BUSY instead of waiting, and the caller runs that
 * body again later (intake parks it). So no worker acts on a change that is
 * not stored yet: a dedupe mark or brume.once of a body that is then refused
 * (503) or lost in a crash never hides another body's event, and a refused
 * group's changes are undone. No lock is held across the disk, and no
 * worker waits for another.
 *
 * A transaction keeps, for each key it changed, what the key held before,
 * at every body boundary (brm_state_mark): one body can be undone alone
 * (brm_state_rollback) when it meets a busy key. brm_state_save writes the
 * current value of every key a transaction changed, in the store's open
 * transaction; brm_state_load reads the store back at start. Values are
 * JSON texts. Expired entries are swept in small steps (brm_state_sweep),
 * which hand back their keys for the store to delete. Depends on store,
 * util.
 */
#ifndef BRM_STATE_H
#define BRM_STATE_H

#include <stddef.h>
#include <stdint.h>

#include "store.h"

#define BRM_STATE_MAX_KEY     1024
#define BRM_STATE_MAX_VALUE   (64 * 1024)
#define BRM_STATE_MAX_ENTRIES 1000000
#define BRM_STATE_MAX_TIMERS  100000      /* timers and digests, per rule */
#define BRM_STATE_MAX_DATA    (16 * 1024) /* a timer's data, as JSON */
#define BRM_STATE_MAX_ITEMS   10000       /* items a digest keeps (it counts them all) */
#define BRM_STATE_MAX_ITEM    (16 * 1024) /* one item, as JSON */

/* Returned by the functions below when another transaction owns the key. */
#define BRM_STATE_BUSY (-3)

struct brm_state;
struct brm_state_txn;

struct brm_state *brm_state_new(void);
void brm_state_free(struct brm_state *s);

/* A new, empty transaction on S. */
struct brm_state_txn *brm_state_begin(struct brm_state *s);
/* Ends T: KEEP keeps its changes (its group is stored), 0 undoes them;
 * either way its keys are free again. Returns 1 when another transaction
 * was told BRM_STATE_BUSY for one of them (it may want to try again), else
 * 0. Frees T; NULL is a no-op returning 0. */
int brm_state_release(struct brm_state_txn *t, int keep);
/* 1 when T changed nothing. */
int brm_state_txn_empty(const struct brm_state_txn *t);
/* A body boundary: what T changes from now on can be undone alone. */
size_t brm_state_mark(struct brm_state_txn *t);
/* Undoes what T changed since MARK. Returns 1 when another transaction was
 * told BRM_STATE_BUSY for a key that is now free again, else 0. */
int brm_state_rollback(struct brm_state_txn *t, size_t mark);

/*
 * The calls below change state within T (NULL: outside any transaction,
 * for offline runs: the change is simply made). They return
 * BRM_STATE_BUSY when another transaction owns the key, and -1 when adding
 * a key would pass BRM_STATE_MAX_ENTRIES. TTLs and windows are seconds; NOW
 * is brm_time_now().
 */

/* 1 the first time KEY is seen within TTL (and marks it), else 0. */
int brm_state_once(struct brm_state *s, const char *key, double ttl, double now,
                   struct brm_state_txn *t);
/* 1 while KEY has been allowed fewer than LIMIT times in the current window
 * of WINDOW seconds (and counts this one), else 0. */
int brm_state_throttle(struct brm_state *s, const char *key, long limit, double window, double now,
                       struct brm_state_txn *t);
/* A copy of KEY's value (JSON text) in *OUT, or NULL. Returns 0 or BUSY. */
int brm_state_get(struct brm_state *s, const char *key, double now, struct brm_state_txn *t,
                  char **out);
/* Sets KEY to JSON (NULL deletes it), for TTL seconds (0: for good). */
int brm_state_set(struct brm_state *s, const char *key, const char *json, double ttl, double now,
                  struct brm_state_txn *t);
/* Adds N to the number at KEY (0 when absent; TTL applies when it is
 * created) and writes the result to *OUT. -2 when KEY holds something else
 * than a number. */
int brm_state_incr(struct brm_state *s, const char *key, double n, double ttl, double now,
                   struct brm_state_txn *t, double *out);
/* Dedupe: 1 when event ID of TOPIC was seen within WINDOW seconds, else 0
 * (and it is marked seen). */
int brm_state_seen(struct brm_state *s, const char *topic, const char *id, double window,
                   double now, struct brm_state_txn *t);

/*
 * Timers and digests belong to a rule (RULE, its name) and are named by
 * KEY within it. Times are seconds since the epoch. Like the calls above,
 * these change state within T, return BRM_STATE_BUSY when another
 * transaction owns the key, and -1 when the rule holds
 * BRM_STATE_MAX_TIMERS timers and digests already.
 */

/* Arms (or arms again) timer KEY for DUE with DATA (JSON, NULL: null). */
int brm_state_timer_set(struct brm_state *s, const char *rule, const char *key, double due,
                        const char *data, struct brm_state_txn *t);
/* 1 when a pending timer was cancelled, 0 when there was none. */
int brm_state_timer_cancel(struct brm_state *s, const char *rule, const char *key,
                           struct brm_state_txn *t);
/* 1 with *DUE and a copy of its data in *DATA, or 0 when KEY is not armed. */
int brm_state_timer_get(struct brm_state *s, const char *rule, const char *key,
                        struct brm_state_txn *t, double *due, char **data);

/* When a digest closes: WINDOW seconds after its first add; with DEBOUNCE,
 * WINDOW after its last one, but no later than MAX_WAIT (0: no limit)
 * after its first. It keeps MAX_ITEMS items and counts them all. */
struct brm_group_opts {
    double window;
    int debounce;
    double max_wait;
    long max_items;
};
/* Adds ITEM (JSON, or NULL to count only) to digest KEY, opening it with
 * OPTS at its first add (later adds keep the settings it opened with).
 * *COUNT is how many adds it has had. */
int brm_state_group_add(struct brm_state *s, const char *rule, const char *key, const char *item,
                        const struct brm_group_opts *opts, double now, struct brm_state_txn *t,
                        long *count);

/* A timer or digest that came due, handed over by brm_state_fire; its
 * strings are the caller's (brm_fired_reset). */
enum { BRM_FIRED_TIMER = 1, BRM_FIRED_GROUP = 2 };
struct brm_fired {
    int kind;
    char *rule, *key;
    double due;
    char *data;   /* a timer's, as JSON */
    char **items; /* a digest's, as JSON, NITEMS of its COUNT adds */
    size_t nitems;
    long count;
    double opened;
};
void brm_fired_reset(struct brm_fired *f);

/* Called (with the state's lock held: be quick, take no lock) when the
 * earliest due time got earlier, so a scheduler waiting for it looks again. */
void brm_state_set_due_hook(struct brm_state *s, void (*fn)(void *arg), void *arg);
/* Takes the earliest timer or digest due by NOW off the heap, with its
 * key (as brm_state_fire wants it) in KEY; one a transaction holds waits
 * for it. Returns 1, or 0 when none is due; *NEXT is the earliest due time
 * left (0: none). */
int brm_state_pop_due(struct brm_state *s, double now, char *key, size_t size, double *next);
/* Fires KEY within T: if it is (still) due by NOW, it is deleted in T and
 * handed over in OUT; returns 1, 0 when it was cancelled or armed again
 * for later since it was popped, or BUSY. */
int brm_state_fire(struct brm_state *s, const char *key, double now, struct brm_state_txn *t,
                   struct brm_fired *out);
/* Deletes, within T, every timer and digest of RULE (a reload removed it);
 * returns how many. Those a transaction holds stay. */
long brm_state_drop_rule(struct brm_state *s, const char *rule, struct brm_state_txn *t);
/* Timers and digests pending. */
size_t brm_state_pending(struct brm_state *s);
/* For the console: KEY is a timer's or digest's key as brm_state_pop_due
 * gives it. Cancels it within T (1, 0 when there is none, or BUSY); makes
 * it due at NOW within T, so that it fires now (the same). */
int brm_state_cancel_due(struct brm_state *s, const char *key, struct brm_state_txn *t);
/* The key of RULE's timer (GROUP 0) or digest (1) named NAME, as the two
 * above and the shared state take it. The caller frees it. */
char *brm_state_due_key(int group, const char *rule, const char *name);
int brm_state_due_now(struct brm_state *s, const char *key, double now, struct brm_state_txn *t);
/* Calls FN (with the state's lock held: be quick) for the LIMIT soonest
 * timers and digests: KIND (BRM_FIRED_TIMER or _GROUP), their key, RULE
 * (RULE_LEN bytes), NAME within it, DUE, a timer's DATA or a digest's
 * COUNT. */
typedef void brm_state_due_fn(void *arg, int kind, const char *key, const char *rule,
                              size_t rule_len, const char *name, double due, const char *data,
                              long count);
void brm_state_each_due(struct brm_state *s, size_t limit, brm_state_due_fn *fn, void *arg);
/* Calls FN as brm_state_each_due would for the timer or digest KEY held
 * elsewhere (shared state: Redis), its VALUE as stored, due at DUE.
 * Returns 0, or -1 (FN not called) when KEY is not a timer's or digest's. */
int brm_state_due_entry(const char *key, const char *value, double due, brm_state_due_fn *fn,
                        void *arg);

/*
 * Shared mode (state = "redis://..."): the table is this instance's cache
 * of what the shared store (Redis, through shared.h) holds, and a
 * transaction is checked against the shared store when its group is
 * committed. Everything above works as before on what is cached, with
 * these differences: every key a transaction looks at is noted with what
 * it saw (a live value of some version, or none: a key not cached is taken
 * to be absent, which the check then confirms or refutes); the due heap
 * is not kept (the shared store says what is due), nor the limit of timers
 * per rule; brm_state_save writes nothing; the sweep drops whatever no
 * transaction holds once the cache is larger than BRM_STATE_CACHE.
 */
#define BRM_STATE_CACHE 100000

/* Puts S in shared mode, before it holds anything. */
void brm_state_set_shared(struct brm_state *s);
int brm_state_is_shared(struct brm_state *s);
/* 1 when T read or changed a key since MARK (noted reads count in shared
 * mode only). */
int brm_state_touched(const struct brm_state_txn *t, size_t mark);

/* What a transaction did to one key, for the shared store: whether it
 * read it first (and what it saw), and what it wrote, with what the key
 * held before (to undo it). */
struct brm_state_change {
    char *key;
    void *entry; /* the state's own */
    int is_due;  /* a timer's or a digest's key */
    int is_group;
    int read;      /* T saw it before changing it (or only read it): */
    int read_live; /* a live value of READ_VERSION, or (0) none */
    uint64_t read_version;
    int write; /* T changed it: VALUE (NULL: deleted), EXPIRES (0: never), DUE */
    char *value;
    double expires, due;
    uint64_t version; /* the value's in the shared store, once committed (0: none) */
    int group_fresh;  /* a digest T opened: its items replace any older ones */
    char **items;     /* the items T added to the digest (after those stored) */
    size_t nitems;
    char *old_value; /* what it held before T */
    double old_expires, old_due;
    uint64_t old_version;
    int old_group, old_same; /* it was a digest; the same one (items were appended) */
    size_t old_nitems;       /* its items then ... */
    char **old_items;        /* ... and, when it is not the same one, what they were */
};
/* T's changes, one per key it read or changed, in *OUT (free them with
 * brm_state_changes_free); returns how many. */
size_t brm_state_changes(struct brm_state_txn *t, struct brm_state_change **out);
void brm_state_changes_free(struct brm_state_change *v, size_t n);
/* T's changes V (N of them) are in the shared store now: VERSIONS[i] is
 * the version change i has there (written ones; 0: deleted). */
void brm_state_set_versions(struct brm_state_txn *t, const struct brm_state_change *v,
                            const uint64_t *versions, size_t n);
/* What the shared store holds at KEY, into the cache (unless a
 * transaction holds the key): VALUE (NULL: nothing) of VERSION, EXPIRES,
 * DUE, and a digest's NITEMS ITEMS. */
void brm_state_cache_put(struct brm_state *s, const char *key, const char *value, double expires,
                         double due, uint64_t version, const char *const *items, size_t nitems);
/* The cache forgets KEY (unless a transaction holds it): its next read
 * takes it to be absent, and the shared store says. */
void brm_state_cache_forget(struct brm_state *s, const char *key);

/* Writes the current value of every key T changed to the store, in the
 * caller's store transaction. */
int brm_state_save(struct brm_state_txn *t, struct brm_store *st, struct brm_err *err);
/* Loads the store's live entries. */
int brm_state_load(struct brm_state *s, struct brm_store *st, double now, struct brm_err *err);
/* Drops expired entries no transaction owns, looking at up to BUCKETS
 * buckets from where the last call stopped, and deletes them from the store
 * through ST (in the caller's store transaction; NULL: memory only).
 * Returns how many went, or -1 when the store failed (memory is then left
 * as it was). */
long brm_state_sweep(struct brm_state *s, size_t buckets, double now, struct brm_store *st,
                     struct brm_err *err);
size_t brm_state_count(struct brm_state *s);

#endif
