/*
 * journal: the one writer of the store, and the durable record of accepted
 * bodies.
 *
 * One thread owns the store's write connection (SQLite allows one writer
 * anyway), as PostgreSQL's WAL writer or Redis's AOF thread do. Workers
 * hand it jobs - the group of bodies one worker took in one turn of its
 * event loop, with everything their rules did (brm_journal_group) - and
 * the outbox hands it the outcomes of its attempts; every job queued
 * meanwhile goes into one transaction with one fsync (when any job waits
 * for it), after which each job's done callback tells its owner, who then
 * answers its 200s. Workers go on parsing and running rules meanwhile: no
 * worker waits for the disk, and no lock is held across an fsync.
 *
 * The journal is a bounded ring: its byte and row counts are kept with the
 * data (meta), and each transaction removes the oldest bodies past
 * journal.max_size or journal.retention, by id range, in steps of at most a
 * few hundred bodies, so the store stays near its cap at any inflow and no
 * step takes long. Between transactions the writer does the rest of the
 * store's upkeep in small steps: retention when nothing comes in, the
 * caller's upkeep hook (expired rule state), and WAL checkpoints (on this
 * thread only; the WAL file is cut back to a bounded size).
 *
 * Ids are handed out before the rules run (they are ctx.delivery, and part
 * of every delivery's idempotency key), continuing after the journal's last
 * at start. Depends on store, state, api (the action list), config, log.
 */
#ifndef BRM_JOURNAL_H
#define BRM_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

#include "api.h"
#include "config.h"
#include "state.h"
#include "store.h"

/* Ids go on after LAST (the journal's highest at start). */
void brm_journal_start(int64_t last);
/* A new body id; unique in this process and after its restarts. */
int64_t brm_journal_next_id(void);

/*
 * A unit of work for the writer. Its owner fills in the callbacks, submits
 * it, and must not touch it again until DONE is called.
 */
struct brm_journal_job {
    struct brm_journal_job *next; /* the writer's */
    /* Writes the job into ST's open transaction, on the writer's thread.
     * Returns 0, or -1 with ERR set: then the transaction is given up, and
     * each of its jobs is tried again alone. */
    int (*write)(struct brm_journal_job *job, struct brm_store *st, struct brm_err *err);
    /* Once the transaction ended: STORED 1, or 0 with ERR saying why. On the
     * writer's thread: hand the job back to its owner and return. */
    void (*done)(struct brm_journal_job *job, int stored, const struct brm_err *err);
    int durable;     /* its owner waits for the fsync */
    int lingers;     /* nobody waits for it: it may wait for others to share its commit */
    uint64_t bytes;  /* body bytes it adds to the journal */
    uint64_t saved;  /* of those, what the store did not take (set by write): what packing
                      * saved, the runs of a held body the ring removed meanwhile */
    int64_t rows;    /* bodies it adds */
    int64_t last_id; /* the highest body id in it, or 0 */
};

/* A body whose rules ran, waiting for its group's commit. */
struct brm_journal_entry {
    int64_t id;
    const char *source, *topic;
    double received;
    size_t events;
    const char *body; /* borrowed until the group is done; NULL: a timer or digest that
                         fired (only what its handler did is stored) */
    size_t len;
    const struct brm_actions *actions;
    const char *runs; /* what its rules did (engine.h's run log), or NULL; borrowed too */
    size_t runs_len;
    uint64_t digest; /* brm_hash64 of BODY */
    int backfilled;  /* taken from Mist's delivery log (backfill), not posted */
    int held;        /* BRM_JOURNAL_HOLD or _RELEASE (shared state), else 0 */
};
/* A body held for the shared state: stored with no outcome, marked held
 * (its actions and runs are not written). A held body whose rules ran
 * now: its row is there; its deliveries and runs are stored, the mark goes. */
#define BRM_JOURNAL_HOLD    1
#define BRM_JOURNAL_RELEASE 2

/* A worker's group: bodies, the deliveries their rules made, the state
 * they changed. The caller sets CFG (its targets give deliveries their
 * max_age), ENTRIES, TXN and job.done, then calls brm_journal_group_init. */
struct brm_journal_group {
    struct brm_journal_job job;
    const struct brm_config *cfg;
    const struct brm_journal_entry *entries;
    size_t n;
    struct brm_state_txn *txn; /* NULL: no state changed */
    size_t messages;           /* out: deliveries stored */
};

/* Sets G's job up to write its entries (durable when DURABLE). */
void brm_journal_group_init(struct brm_journal_group *g, int durable);

struct brm_journal;

/* Upkeep the writer runs between transactions, about once a second, inside
 * a store transaction of its own (expired state). Returns 0 or -1. */
typedef int brm_journal_upkeep_fn(void *arg, struct brm_store *st, double now, struct brm_err *err);

/* The writer of the store at PATH, for CFG's journal settings (a reference
 * is taken). NULL with ERR set when the store cannot be opened. */
struct brm_journal *brm_journal_new(const char *path, const struct brm_config *cfg,
                                    brm_journal_upkeep_fn *upkeep, void *arg, struct brm_err *err);
/* Starts the writer's thread. */
int brm_journal_run(struct brm_journal *j, struct brm_err *err);
/* Queues JOB (any thread). */
void brm_journal_submit(struct brm_journal *j, struct brm_journal_job *job);
/* Takes the journal settings of CFG, a reloaded config (any thread). */
void brm_journal_configure(struct brm_journal *j, const struct brm_config *cfg);
/* Writes what is queued, then stops the thread. Jobs submitted after this
 * are done at once, not stored. */
void brm_journal_stop(struct brm_journal *j);
void brm_journal_free(struct brm_journal *j);

/* The journal's size now, and whether the store takes bodies: OK is 0 from
 * a transaction that fails until one that stores bodies goes through, or
 * the writer's probe (once a second while failing, a durable write larger
 * than the bodies that failed, taken out again) does. */
struct brm_journal_stats {
    uint64_t bytes;
    int64_t rows;
    int ok;
};
void brm_journal_stats(struct brm_journal *j, struct brm_journal_stats *out);

/* Stores the deliveries of A through ST in its open transaction (targets
 * of CFG give them their max_age); an action whose key is already stored
 * is skipped. Returns how many were stored, or -1 with ERR set. For
 * `brume replay --send` too. */
int brm_journal_add_deliveries(const struct brm_config *cfg, struct brm_store *st,
                               const struct brm_actions *a, double now, struct brm_err *err);

#endif
