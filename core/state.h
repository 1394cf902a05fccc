/*
 * state: what rules keep between events (brume.once, brume.throttle,
 * brume.state) and the sources' dedupe marks, shared by every worker: one
 * hash table in memory under one lock, so "once" is once across workers.
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

#include "store.h"

#define BRM_STATE_MAX_KEY     1024
#define BRM_STATE_MAX_VALUE   (64 * 1024)
#define BRM_STATE_MAX_ENTRIES 1000000

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
