/*
 * shared: rule state in Redis, shared by every brume that names the same
 * server (state = "redis://..."): brume.once, throttle and state, dedupe
 * marks, timers and digests.
 *
 * The state module stays the rules' view (state.h, shared mode): a cache
 * of what Redis holds, in which each group of bodies runs as a
 * transaction and notes what it saw of every key. Nothing is fetched
 * before a rule runs: a key not cached is taken to be absent. When the
 * group is handed over, brm_shared_commit sends its transaction to Redis
 * as one Lua script, which checks that every key the group saw is still
 * as it saw it (the version of a live value, or no live value) and, if so,
 * applies all the group's changes at once; if not, it answers with what
 * those keys hold now, the cache takes that in, and the group's bodies run
 * again (optimistic concurrency, as WATCH/MULTI gives, in one round trip).
 * So one body's changes are applied whole or not at all, and a body acts
 * on no value another instance has changed since. brume.once is a key
 * whose absence was checked and which is set with its TTL, as SET NX PX
 * would; Redis expires what has a TTL.
 *
 * Each commit also leaves a marker (the transaction's id) for a day, so
 * that a commit whose answer was lost with the connection is sent again
 * and told it ran already (with the versions it wrote) rather than run
 * twice; later commits delete the markers that are answered.
 *
 * Timers and digests are hashes like any key, and members of one sorted
 * set scored by due time. brm_shared_claim takes the due ones, each
 * claimed atomically by moving its score a lease ahead, so one instance
 * fires it; the firing deletes it in the firing's transaction, checked
 * like any other; a claim that is not followed by a firing (an instance
 * that died) comes due again when the lease ends, on any instance.
 *
 * When Redis is unreachable the module says so (brm_shared_up) and keeps
 * the count of bodies held for it: a body whose rules used state is
 * journaled without its rules' outcome and answered; once Redis is back
 * the server runs the held bodies through the rules, in the order they
 * came, and until the backlog is empty later bodies that use state are
 * held as well (brm_shared_holding), so that no body overtakes an older
 * one. Depends on state, redis, util.
 */
#ifndef BRM_SHARED_H
#define BRM_SHARED_H

#include <stddef.h>
#include <stdint.h>

#include "redis.h"
#include "state.h"

struct brm_shared;

/* Called on the Redis client's thread when Redis becomes reachable (UP 1)
 * or unreachable (0, WHY). */
typedef void brm_shared_state_fn(void *arg, int up, const char *why);

/*
 * Shares STATE (borrowed; put in shared mode) through the Redis of CFG
 * (copied), its keys under PREFIX ("brume:"), claims of due timers held
 * for LEASE seconds. STATE(ARG) hears of the connection. Nothing happens
 * before brm_shared_start.
 */
struct brm_shared *brm_shared_new(struct brm_state *state, const struct brm_redis_cfg *cfg,
                                  const char *prefix, double lease, brm_shared_state_fn *fn,
                                  void *arg);
int brm_shared_start(struct brm_shared *sh, struct brm_err *err);
/* The daemon is stopping: a commit whose answer was lost is not sent
 * again (it is handed back BRM_SHARED_LOST). */
void brm_shared_finish(struct brm_shared *sh);
/* Stops the client; what is still in flight is handed back. */
void brm_shared_free(struct brm_shared *sh);
/* 1 while Redis is reachable. */
int brm_shared_up(const struct brm_shared *sh);
/* Waits for the first attempt to reach Redis, at most SECONDS; returns
 * brm_shared_up. */
int brm_shared_wait(struct brm_shared *sh, double seconds);

enum brm_shared_outcome {
    BRM_SHARED_OK,       /* applied: the transaction's keys carry their new versions */
    BRM_SHARED_CONFLICT, /* another change came first: T is undone, the cache has what Redis
                            holds now; run the bodies again */
    BRM_SHARED_DOWN,     /* Redis is unreachable: not applied, T is undone */
    BRM_SHARED_LOST,     /* sent, and the answer lost while stopping: it may have been applied;
                            T is undone and its keys forgotten */
    BRM_SHARED_PENDING,  /* sent, and the answer lost with the connection: it is sent again
                            once Redis is back (its marker says whether it ran), and the outcome
                            comes then, in a second call; T stays as it is meanwhile */
};

/* Called on the client's thread with the outcome of a commit (T released
 * unless OK); WANTED is 1 when a body that waited for one of T's keys may
 * run again. */
typedef void brm_shared_commit_fn(void *arg, enum brm_shared_outcome outcome, int wanted);

/* Commits T (a transaction of the shared state, not empty) to Redis; FN
 * (ARG) is called once with the outcome, on the client's thread (twice
 * when the first is BRM_SHARED_PENDING). Until then T is not to be
 * touched; after an OK it is the caller's again (to release once the
 * group is stored, or to undo). */
void brm_shared_commit(struct brm_shared *sh, struct brm_state_txn *t, brm_shared_commit_fn *fn,
                       void *arg);

/* Undoes in Redis what the committed T changed, key by key, where no one
 * changed the key since (a refused group's), then releases T undone and
 * forgets its keys; takes T. WAKE(ARG), when given, is called (on the
 * client's thread) if a body waited for one of them. */
void brm_shared_undo(struct brm_shared *sh, struct brm_state_txn *t, void (*wake)(void *arg),
                     void *arg);

/* Due timers and digests: KEYS (N of them, the state's keys, borrowed for
 * the call), each claimed and its content in the cache; NEXT the earliest
 * due time still pending (0: none), PENDING how many are. N is 0 when Redis
 * did not answer (then NEXT and PENDING are -1). On the client's thread. */
typedef void brm_shared_claim_fn(void *arg, const char *const *keys, size_t n, double next,
                                 long pending);
/* Claims up to LIMIT timers and digests due by NOW. */
void brm_shared_claim(struct brm_shared *sh, double now, size_t limit, brm_shared_claim_fn *fn,
                      void *arg);

/* The console's view of the timers and digests in Redis, every
 * instance's. KEY: the state's key ("timer\x1f<rule>\x1f<key>" or
 * "group\x1f..."); VALUE: a timer's data, a digest's settings and count. */
struct brm_shared_due {
    const char *key;
    double due;
    const char *value;
};
/* V: the soonest (N of them, borrowed for the call) of TOTAL; TOTAL is -1
 * when Redis did not answer. On the client's thread. */
typedef void brm_shared_list_fn(void *arg, const struct brm_shared_due *v, size_t n, long total);
void brm_shared_list_due(struct brm_shared *sh, size_t limit, brm_shared_list_fn *fn, void *arg);
/* RESULT: 1 done, 0 no such timer or digest, -1 Redis did not answer. */
typedef void brm_shared_changed_fn(void *arg, int result);
/* Cancels the timer or digest KEY (FIRE 0), or makes it due at NOW (1), in
 * Redis, whichever instance armed it; the next claim fires it. */
void brm_shared_change_due(struct brm_shared *sh, const char *key, int fire, double now,
                           brm_shared_changed_fn *fn, void *arg);

/*
 * Bodies held while Redis is unreachable (and, after, until the backlog
 * is drained). brm_shared_holding: 1 when a body that uses state is to be
 * held. brm_shared_hold_begin: 1 when the body is to be held (FORCE: it
 * must be, whatever the mode; it is counted as in flight until
 * brm_shared_hold_end, STORED once it is in the journal). The drain: the
 * server counts what it hands over with brm_shared_released, and ends the
 * backlog with brm_shared_drain_end, which succeeds (1) only when no body
 * was held since brm_shared_drain_mark gave MARK and none is in flight.
 */
int brm_shared_holding(struct brm_shared *sh);
int brm_shared_hold_begin(struct brm_shared *sh, int force);
void brm_shared_hold_end(struct brm_shared *sh, int stored);
void brm_shared_set_draining(struct brm_shared *sh, long held);
uint64_t brm_shared_drain_mark(struct brm_shared *sh);
int brm_shared_drain_end(struct brm_shared *sh, uint64_t mark);
void brm_shared_released(struct brm_shared *sh, long n);
/* Commits whose outcome is not known yet (PENDING until their second
 * call, and what the caller does then): the caller counts them with
 * brm_shared_unresolved_add; held bodies wait until there are none. */
void brm_shared_unresolved_add(struct brm_shared *sh, long n);
long brm_shared_unresolved(struct brm_shared *sh);
/* Bodies held in the journal now, and whether the backlog is being drained. */
long brm_shared_held(struct brm_shared *sh);
int brm_shared_draining(struct brm_shared *sh);

#endif
