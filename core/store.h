/*
 * store: brume's durable state in one SQLite database (data_dir/brume.db,
 * WAL mode, synchronous=FULL, file mode 0600 since stored requests carry
 * targets' credentials). The only file that includes sqlite3.h. Each thread
 * opens its own connection; in the daemon one of them, the journal's
 * writer, makes every write (other processes, such as `brume outbox retry`,
 * queue on SQLite's lock). The schema is versioned (PRAGMA user_version)
 * and migrated forward on open.
 *
 * What it holds: the journal (every accepted body, with its topic, source
 * and time), deliveries (every message a rule sent, from before its first
 * attempt until it is done or dead), tickets (the ticket a target opened
 * for a dedup key, so later messages update it), rule state (brume.once,
 * throttle, state) and dedupe marks. Depends on util.
 */
#ifndef BRM_STORE_H
#define BRM_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

enum brm_delivery_state { BRM_DELIVERY_PENDING = 0, BRM_DELIVERY_DONE = 1, BRM_DELIVERY_DEAD = 2 };

/* A delivery as stored. Its strings are borrowed: from the caller when it
 * is added, from the store until the callback that is handed one returns.
 * What it sends is a plain request (METHOD, URL, HEADERS, BODY, SIGN), or a
 * ticket's PLAN: the JSON the adapter made. A done delivery keeps
 * neither. */
struct brm_delivery {
    int64_t id;
    const char *key; /* idempotency key: "<body>:<event>:<rule>:<n>" */
    const char *target, *rule, *topic, *event;
    const char *method, *url;
    const char *headers; /* "Name: value" lines, '\n'-separated, or NULL */
    const char *body;    /* BODY_LEN bytes, or NULL */
    size_t body_len;
    int sign; /* sign it as Standard Webhooks do */
    const char *plan;
    const char *ticket; /* dedup key of a ticket target, or NULL */
    enum brm_delivery_state state;
    int attempts;
    double created, next_at, expires;
    int last_status; /* HTTP status of the last attempt; 0: none or a network error */
    const char *last_error;
};

struct brm_store;

/* Opens (creating and migrating) the database at PATH. NULL with ERR set
 * when it cannot. */
struct brm_store *brm_store_open(const char *path, struct brm_err *err);
void brm_store_close(struct brm_store *s);
/* With RELAXED, commits on this connection stop waiting for fsync (WAL
 * stays consistent; the last commits may be lost in a power cut); 0 goes
 * back to synchronous = FULL. For writes whose loss only repeats work (the
 * outcome of an attempt) or that nothing acknowledged waits for. */
int brm_store_relax(struct brm_store *s, int relaxed, struct brm_err *err);

int brm_store_begin(struct brm_store *s, struct brm_err *err);
int brm_store_commit(struct brm_store *s, struct brm_err *err);
void brm_store_rollback(struct brm_store *s);

/* Inserts D (id, state, attempts are set by the store) unless a delivery
 * with its key exists. Returns 1 inserted, 0 already there, -1 on error. */
int brm_store_add_delivery(struct brm_store *s, const struct brm_delivery *d, struct brm_err *err);

/* Calls FN for each pending delivery due by NOW, oldest first, at most
 * LIMIT; stops early when FN returns nonzero. Returns 0 or -1. */
int brm_store_due(struct brm_store *s, double now, int limit,
                  int (*fn)(void *arg, const struct brm_delivery *d), void *arg,
                  struct brm_err *err);
/* The same for one target; a ticket's deliveries come only when no older
 * one of the same ticket is pending. */
int brm_store_due_for(struct brm_store *s, const char *target, double now, int limit,
                      int (*fn)(void *arg, const struct brm_delivery *d), void *arg,
                      struct brm_err *err);
/* The earliest next_at after AFTER among pending deliveries, or 0 when
 * none. (Those due already wait for something that reschedules anyway: an
 * attempt to end, a rate token, an older message of the same ticket.) */
double brm_store_next_due(struct brm_store *s, double after);

/* Records an attempt's outcome: done, pending again at NEXT_AT, or dead. */
int brm_store_finish(struct brm_store *s, int64_t id, enum brm_delivery_state state, double next_at,
                     int status, const char *error, struct brm_err *err);

/* Deliveries for `brume outbox list`: pending and dead (DONE too when
 * ALL), newest first, at most LIMIT. */
int brm_store_list(struct brm_store *s, int all, int limit,
                   int (*fn)(void *arg, const struct brm_delivery *d), void *arg,
                   struct brm_err *err);
/* Makes delivery ID pending again: due now, with its max_age counted from
 * now and its attempts (so its backoff) from zero. Returns 1, 0 when there
 * is no such pending or dead delivery, -1. */
int brm_store_retry(struct brm_store *s, int64_t id, struct brm_err *err);
/* Deletes delivery ID. Returns 1, 0 when there is none, -1. */
int brm_store_drop(struct brm_store *s, int64_t id, struct brm_err *err);
/* Counts pending deliveries; the age in seconds of the oldest in *OLDEST. */
int brm_store_pending(struct brm_store *s, double now, long *count, double *oldest);

/* The ticket target TARGET opened for KEY: a copy of its reference in REF
 * (SIZE bytes). Returns 1, 0 when there is none, -1. */
int brm_store_ticket(struct brm_store *s, const char *target, const char *key, char *ref,
                     size_t size);
int brm_store_set_ticket(struct brm_store *s, const char *target, const char *key, const char *ref,
                         struct brm_err *err);
/* The ticket of KEY was resolved: a later message for KEY opens another. */
int brm_store_forget_ticket(struct brm_store *s, const char *target, const char *key,
                            struct brm_err *err);

/* A journaled body. Strings and BODY are borrowed (from the caller, or
 * from the store until the callback returns). */
struct brm_body {
    int64_t id;
    const char *source, *topic; /* topic as normalised */
    double received;
    size_t events;
    const void *body;
    size_t len;
};

int brm_store_add_body(struct brm_store *s, const struct brm_body *b, struct brm_err *err);
/* The highest body id ever journaled, even if retention removed it since
 * (0 for a new store), or -1 with ERR set when the store cannot be read. */
int64_t brm_store_last_body(struct brm_store *s, struct brm_err *err);
/* The journal's bookkeeping, kept with the data: "last_body" (the highest
 * id journaled), "journal_bytes" and "journal_rows". Reading returns the
 * value (0 when there is none), or -1 with ERR set. */
int brm_store_set_meta(struct brm_store *s, const char *key, int64_t value, struct brm_err *err);
int64_t brm_store_meta(struct brm_store *s, const char *key, struct brm_err *err);
/* Calls FN for each body received in [SINCE, UNTIL), oldest first; stops
 * when FN returns nonzero. */
int brm_store_bodies(struct brm_store *s, double since, double until,
                     int (*fn)(void *arg, const struct brm_body *b), void *arg,
                     struct brm_err *err);
/* One step of the journal's ring: the caller keeps AFTER (the highest id
 * removed so far), BYTES and ROWS (the journal's size) across steps. */
struct brm_prune {
    int64_t after;
    double before;      /* bodies received before this go */
    uint64_t max_bytes; /* and the oldest while the journal holds more (0: no cap) */
    int limit;          /* bodies looked at in this step, at most */
    uint64_t bytes;
    int64_t rows;
    long removed;  /* out: bodies removed by this step */
    int exhausted; /* out: every body left was looked at */
};
/* Deletes the oldest bodies (from after P->after) the rules of P say must
 * go, with their done deliveries, at most P->limit of them. Returns 0 with
 * P updated, or -1. */
int brm_store_prune_bodies(struct brm_store *s, struct brm_prune *p, struct brm_err *err);

/* Writes a body of BYTES (zeros) and deletes it again, in the open
 * transaction: it fails as journaling a body that size would, on a failing
 * or full disk or past the store's cap, and leaves nothing behind. */
int brm_store_probe(struct brm_store *s, size_t bytes, struct brm_err *err);

/* Saves state KEY (VALUE NULL deletes it); EXPIRES 0 is never. */
int brm_store_put_state(struct brm_store *s, const char *key, const char *value, double expires,
                        struct brm_err *err);
/* Hands every live state entry to FN. */
int brm_store_load_state(struct brm_store *s, double now,
                         void (*fn)(void *arg, const char *key, const char *value, double expires),
                         void *arg, struct brm_err *err);
/* Deletes every expired state entry (at start: the running daemon sweeps
 * in steps, see state.h). */
int brm_store_prune_state(struct brm_store *s, double now, struct brm_err *err);

/* This connection checkpoints the WAL itself (brm_store_checkpoint), none
 * is made by a commit; a WAL file left larger than WAL_LIMIT bytes is cut
 * back to it. */
int brm_store_own_checkpoints(struct brm_store *s, uint64_t wal_limit, struct brm_err *err);
/* Frames in the WAL after this connection's last commit or checkpoint. */
int brm_store_wal_frames(const struct brm_store *s);
/* Copies what it can of the WAL into the database without waiting for
 * readers (SQLite's passive checkpoint). */
int brm_store_checkpoint(struct brm_store *s, struct brm_err *err);

/* Caps the database file at MAX_BYTES (0: no cap): past it writes fail as
 * on a full disk. */
int brm_store_limit(struct brm_store *s, uint64_t max_bytes, struct brm_err *err);

#endif
