/*
 * state: what rules keep between events (brume.once, brume.throttle,
 * brume.state) and the sources' dedupe marks, shared by every worker: one
 * hash table in memory under one lock, so "once" is once across workers.
 *
 * Changes are transactional. A thread's first call opens a transaction
 * that lasts until it calls brm_state_end, after storing (or failing to
 * store) the bodies whose rules made the changes; meanwhile other threads
 * wait at their first call. So no worker acts on another's change before
 * it is in the store: a dedupe mark or brume.once of a body that is then
 * refused (503) or lost in a crash never hides another body's event, and a
 * refused body's changes are undone.
 * Every change is noted in the caller's log; the journal saves the noted
 * keys with the bodies that changed them (brm_state_save), and
 * brm_state_load reads the store back at start. Values are JSON texts, as
 * lua-cjson encoded the rule's value. Depends on store, util.
 */
#ifndef BRM_STATE_H
#define BRM_STATE_H

#include <stddef.h>

#include "store.h"

#define BRM_STATE_MAX_KEY     1024
#define BRM_STATE_MAX_VALUE   (64 * 1024)
#define BRM_STATE_MAX_ENTRIES 1000000

/* The keys a body's rules changed, to be saved with it. */
struct brm_state_log {
    char **keys;
    size_t n, cap;
};

void brm_state_log_reset(struct brm_state_log *log);

struct brm_state;

struct brm_state *brm_state_new(void);
void brm_state_free(struct brm_state *s);

/* Functions that add a key return -1 when the state holds
 * BRM_STATE_MAX_ENTRIES live keys already. TTLs and windows are seconds;
 * NOW is brm_time_now(). */

/* 1 the first time KEY is seen within TTL (and marks it), else 0. */
int brm_state_once(struct brm_state *s, const char *key, double ttl, double now,
                   struct brm_state_log *log);
/* 1 while KEY has been allowed fewer than LIMIT times in the current window
 * of WINDOW seconds (and counts this one), else 0. */
int brm_state_throttle(struct brm_state *s, const char *key, long limit, double window, double now,
                       struct brm_state_log *log);
/* A copy of KEY's value (JSON text), or NULL. */
char *brm_state_get(struct brm_state *s, const char *key, double now);
/* Sets KEY to JSON (NULL deletes it), for TTL seconds (0: for good). */
int brm_state_set(struct brm_state *s, const char *key, const char *json, double ttl, double now,
                  struct brm_state_log *log);
/* Adds N to the number at KEY (0 when absent; TTL applies when it is
 * created) and writes the result to *OUT. -2 when KEY holds something else
 * than a number. */
int brm_state_incr(struct brm_state *s, const char *key, double n, double ttl, double now,
                   struct brm_state_log *log, double *out);
/* Dedupe: 1 when event ID of TOPIC was seen within WINDOW seconds, else 0
 * (and it is marked seen). */
int brm_state_seen(struct brm_state *s, const char *topic, const char *id, double window,
                   double now, struct brm_state_log *log);

/* Ends this thread's open transaction (if it has one): KEEP keeps its
 * changes, 0 undoes them; then other threads may go on. */
void brm_state_end(struct brm_state *s, int keep);

/* Writes the current value of every key of LOG to the store, in the
 * caller's transaction. */
int brm_state_save(struct brm_state *s, struct brm_store *st, const struct brm_state_log *log,
                   struct brm_err *err);
/* Loads the store's live entries. */
int brm_state_load(struct brm_state *s, struct brm_store *st, double now, struct brm_err *err);
/* Drops expired entries; returns how many. */
size_t brm_state_sweep(struct brm_state *s, double now);
size_t brm_state_count(struct brm_state *s);

#endif
