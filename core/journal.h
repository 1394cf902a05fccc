/*
 * journal: the durable record of accepted bodies. The bodies one worker
 * accepts in one turn of its event loop are committed in one transaction
 * together with everything their rules did: the body itself, the
 * deliveries to make, the state the rules changed. One fsync for the
 * group, and the 200s go out after it (group commit, as Redis writes its
 * AOF before the replies in beforeSleep). So a body in the journal always
 * has its outcome stored with it: there is no "accepted but not yet run"
 * to recover after a crash, and a body whose rules crash the process is
 * never acknowledged, so it cannot crash it again at every start.
 *
 * Ids are handed out before the rules run (they are ctx.delivery, and part
 * of every delivery's idempotency key), continuing after the journal's last
 * at start. `brume replay` reads bodies back; retention prunes them by age
 * and size. Depends on store, outbox (to store deliveries), state, config.
 */
#ifndef BRM_JOURNAL_H
#define BRM_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

#include "api.h"
#include "config.h"
#include "state.h"
#include "store.h"

/* A body whose rules ran, waiting for its group's commit. */
struct brm_journal_entry {
    int64_t id;
    const char *source, *topic;
    double received;
    size_t events;
    const char *body; /* borrowed until the commit returns */
    size_t len;
    const struct brm_actions *actions;
};

/* Ids go on after LAST (the journal's highest at start). */
void brm_journal_start(int64_t last);
/* A new body id; unique in this process and after its restarts. */
int64_t brm_journal_next_id(void);

/*
 * Commits the N entries, their deliveries and their state changes in one
 * transaction through ST (the calling thread's connection). Returns 0, or
 * -1 with ERR set and nothing stored.
 */
int brm_journal_commit(struct brm_store *st, const struct brm_config *cfg, struct brm_state *state,
                       const struct brm_journal_entry *e, size_t n, struct brm_err *err);

/* Deletes bodies older than the config's retention, and the oldest past
 * its size; returns how many went, or -1. */
long brm_journal_prune(struct brm_store *st, const struct brm_config *cfg, double now,
                       struct brm_err *err);

#endif
