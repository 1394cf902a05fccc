/*
 * store: brume's durable state in one SQLite database (data_dir/brume.db,
 * WAL mode, synchronous=FULL, file mode 0600 since stored requests carry
 * targets' credentials). The only file that includes sqlite3.h. Each thread
 * opens its own connection; in the daemon one of them, the journal's
 * writer, makes every write (other processes, such as `brume outbox retry`,
 * queue on SQLite's lock). The schema is versioned (PRAGMA user_version)
 * and migrated forward on open.
 *
 * What it holds: the journal (every accepted body, with its topic, source,
 * time, a digest of its bytes, and whether it was taken from Mist's
 * delivery log rather than posted), deliveries (every message a rule sent, from before its first
 * attempt until it is done or dead), tickets (the ticket a target opened
 * for a dedup key, so later messages update it), rule state (brume.once,
 * throttle, state) and dedupe marks; for the console, what each body's
 * rules did (runs) and every attempt's outcome; the bodies held while the
 * shared state was away. A reader connection
 * (brm_store_open_reader) serves the console's pages: by id, newest
 * first, through indexes, each looking at a bounded number of rows.
 * Depends on util.
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
    double last_attempt; /* when the last attempt ended; 0: none (read only) */
};

struct brm_store;

/* Opens (creating and migrating) the database at PATH. NULL with ERR set
 * when it cannot. */
struct brm_store *brm_store_open(const char *path, struct brm_err *err);
/* A read-only connection to the database at PATH, which its writer has
 * made (and migrated) already. NULL with ERR set when it cannot. WAL: its
 * reads never wait for the writer, nor the writer for them. */
struct brm_store *brm_store_open_reader(const char *path, struct brm_err *err);
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
 * one of the same ticket is pending. Those SKIP (if not NULL) says are
 * passed over (they count in LIMIT) before their columns are read: the
 * outbox's own, in flight. */
int brm_store_due_for(struct brm_store *s, const char *target, double now, int limit,
                      int (*skip)(void *arg, int64_t id),
                      int (*fn)(void *arg, const struct brm_delivery *d), void *arg,
                      struct brm_err *err);
/* The earliest next_at after AFTER among pending deliveries, or 0 when
 * none. (Those due already wait for something that reschedules anyway: an
 * attempt to end, a rate token, an older message of the same ticket.) */
double brm_store_next_due(struct brm_store *s, double after);

/* Records the outcome of an attempt at delivery ID, which TRIED attempts
 * came before (since it was queued or last retried): done, pending again at
 * NEXT_AT, or dead. One done at its first attempt only leaves the queue:
 * its attempt's row (brm_store_add_attempt) is its outcome, and its request
 * stays, unless SECRET (the outbox found that its headers, body or plan may
 * hold one of its target's secrets): a done delivery's request then goes,
 * but for its URL. */
int brm_store_finish(struct brm_store *s, int64_t id, int tried, int secret,
                     enum brm_delivery_state state, double next_at, int status, const char *error,
                     struct brm_err *err);

/* Deliveries for `brume outbox list`: pending and dead (DONE too when
 * ALL), newest first, at most LIMIT. */
int brm_store_list(struct brm_store *s, int all, int limit,
                   int (*fn)(void *arg, const struct brm_delivery *d), void *arg,
                   struct brm_err *err);
/* Makes delivery ID pending again: due now, with its max_age counted from
 * now and its attempts (so its backoff) from zero. Returns 1, 0 when there
 * is no such pending or dead delivery, -1. */
int brm_store_retry(struct brm_store *s, int64_t id, struct brm_err *err);
/* Deletes delivery ID and its attempts. Returns 1, 0 when there is none, -1. */
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

/* A journaled body. Strings, BODY and RUNS are borrowed (from the caller,
 * or from the store until the callback returns). */
struct brm_body {
    int64_t id;
    const char *source, *topic; /* topic as normalised */
    double received;
    size_t events;
    const void *body; /* NULL in a listing (brm_store_find_bodies): LEN is still its size */
    size_t len;
    const char *runs; /* what its rules did, JSON (engine.h), RUNS_LEN bytes; or NULL */
    size_t runs_len;
    uint64_t digest; /* brm_hash64 of BODY (written; not read back) */
    int backfilled;  /* taken from Mist's delivery log, not posted (read by brm_store_bodies) */
    /* Read: why BODY could not be read (a damaged packed row: BODY is NULL),
     * or NULL. brm_store_bodies and brm_store_held hand such a body over
     * and go on; brm_store_body fails with it. */
    const char *damage;
};

/* Journals B, packed when that saves room (store.c); STORED, unless NULL,
 * gets the bytes its body takes in the store, which the ring counts. */
int brm_store_add_body(struct brm_store *s, const struct brm_body *b, size_t *stored,
                       struct brm_err *err);
/* What backfill asks the journal of a body Mist logged: does it hold
 * these bytes? */
struct brm_store_probe {
    uint64_t digest; /* brm_hash64 of BODY */
    const void *body;
    size_t len;
    double at; /* when Mist's log says it posted it; NAN: it does not say */
    int found; /* set by brm_store_has_bodies */
};
/* Sets FOUND in each of the N PROBES: 1 when the journal holds a body of
 * exactly its bytes that backfill took in (at any time), or that was
 * received within SKEW seconds of a probe's AT (brume received it when
 * Mist posted it: the look costs what those windows hold, not the
 * journal's size; a probe without a time is found in the others' windows
 * only). Returns 0, or -1 with ERR set. */
int brm_store_has_bodies(struct brm_store *s, struct brm_store_probe *p, size_t n, double skew,
                         struct brm_err *err);
/* When the newest body SOURCE posted (a backfilled one is not) received at
 * AFTER or later was received, looking at the newest SCAN bodies only: 1
 * with it in *RECEIVED, 0 when none of them is, -1 with ERR set. */
int brm_store_source_last(struct brm_store *s, const char *source, double after, long scan,
                          double *received, struct brm_err *err);
/* The highest body id ever journaled, even if retention removed it since
 * (0 for a new store), or -1 with ERR set when the store cannot be read. */
int64_t brm_store_last_body(struct brm_store *s, struct brm_err *err);
/* The journal's bookkeeping, kept with the data: "last_body" (the highest
 * id journaled), "journal_bytes" and "journal_rows". Reading returns the
 * value (0 when there is none), or -1 with ERR set. */
int brm_store_set_meta(struct brm_store *s, const char *key, int64_t value, struct brm_err *err);
int64_t brm_store_meta(struct brm_store *s, const char *key, struct brm_err *err);
/* Calls FN for each body received in [SINCE, UNTIL), oldest first (one
 * that cannot be read with its DAMAGE); stops when FN returns nonzero. The
 * time range becomes a range of ids (SKEW as in struct brm_body_query), read
 * in order as it is scanned, whatever its size. */
int brm_store_bodies(struct brm_store *s, double since, double until, double skew,
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
/* One step of the sweep of old done deliveries: looks at the deliveries
 * after *CURSOR in id order, LIMIT at most, deletes those of them made
 * and last tried before BEFORE, with their attempts, and moves *CURSOR
 * past the ones made before BEFORE (and those made after NOW, whose clock
 * lied), never past the newest id (ids come again after the newest go).
 * The ring removes a body's done deliveries with it; this removes those
 * that have no body (a timer's firing's) or that were done after their
 * body went. Returns how many it passed (LIMIT: more may be due), or -1
 * with ERR set. */
long brm_store_sweep_done(struct brm_store *s, int64_t *cursor, double before, double now,
                          int limit, struct brm_err *err);

/*
 * Bodies held for the shared state (shared.h): journaled while Redis was
 * unreachable, their rules to run when it is back. brm_store_hold marks
 * body ID held (in the open transaction that adds it); release stores what
 * its rules did (RUNS, as brm_body's; NULL: none) and unmarks it;
 * brm_store_held hands FN, oldest first, up to LIMIT held bodies after id
 * AFTER, whole (FN returning nonzero stops there); count says how many are
 * held (-1 with ERR on failure). The ring removes a held body like any
 * other.
 */
int brm_store_hold(struct brm_store *s, int64_t id, struct brm_err *err);
/* Stores held body ID's RUNS and lets it go: 1, or 0 when the ring removed
 * the body meanwhile (its runs are not kept), or -1 with ERR set. */
int brm_store_release_held(struct brm_store *s, int64_t id, const char *runs, size_t runs_len,
                           struct brm_err *err);
/* (LIMIT counts the held bodies that can be read; FN also gets those that
 * cannot, with their DAMAGE.) */
int brm_store_held(struct brm_store *s, int64_t after, int limit,
                   int (*fn)(void *arg, const struct brm_body *b), void *arg, struct brm_err *err);
int64_t brm_store_held_count(struct brm_store *s, struct brm_err *err);

/* Writes a body of BYTES (zeros) and deletes it again, in the open
 * transaction: it fails as journaling a body that size would, on a failing
 * or full disk or past the store's cap, and leaves nothing behind. */
int brm_store_probe(struct brm_store *s, size_t bytes, struct brm_err *err);

/* Saves state KEY (VALUE NULL deletes it); EXPIRES 0 is never; DUE is a
 * timer's or a digest's due time (0: neither). */
int brm_store_put_state(struct brm_store *s, const char *key, const char *value, double expires,
                        double due, struct brm_err *err);
/* Hands every live state entry to FN. */
int brm_store_load_state(struct brm_store *s, double now,
                         void (*fn)(void *arg, const char *key, const char *value, double expires,
                                    double due),
                         void *arg, struct brm_err *err);
/* A digest's items: item SEQ (from 0) of digest KEY, saved, all deleted,
 * and handed to FN in order at start. */
int brm_store_put_item(struct brm_store *s, const char *key, long seq, const char *item,
                       struct brm_err *err);
int brm_store_drop_items(struct brm_store *s, const char *key, struct brm_err *err);
int brm_store_load_items(struct brm_store *s,
                         void (*fn)(void *arg, const char *key, long seq, const char *item),
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

/* One attempt's outcome. Strings borrowed, as for deliveries. */
struct brm_attempt {
    double at;
    int status;         /* HTTP status; 0: none (a network error, a file target) */
    const char *answer; /* the start of the answer, masked, or NULL */
    const char *error;  /* why it failed, or NULL */
};
/* A delivery's attempts log keeps its newest this many: it lives as long
 * as the delivery (with its body, when done), so the log is bounded by the
 * deliveries the store holds, and each shows how its last tries went. */
#define BRM_STORE_ATTEMPTS_KEPT 16
/* Logs an attempt of DELIVERY (the outbox's outcomes, in their batch),
 * which TRIED attempts came before and which left it in STATE (as
 * brm_store_finish is told). Unless it was done at its first (the common
 * case: one insert), the delivery's oldest beyond BRM_STORE_ATTEMPTS_KEPT
 * go: it may have others, a retry by hand counting from zero again. */
int brm_store_add_attempt(struct brm_store *s, int64_t delivery, int tried,
                          enum brm_delivery_state state, const struct brm_attempt *a,
                          struct brm_err *err);
/* Hands FN the attempts of DELIVERY, newest first, at most LIMIT. */
int brm_store_attempts(struct brm_store *s, int64_t delivery, int limit,
                       int (*fn)(void *arg, const struct brm_attempt *a), void *arg,
                       struct brm_err *err);

/*
 * A page of the journal, newest first: bodies below BEFORE that match every
 * filter given. TOPIC goes through its index; the time range becomes a
 * range of ids through the received index (SKEW: the most seconds after its
 * first byte a body may get its id; the live path's header and body
 * timeouts); SOURCE, TEXT (in the body, ASCII letters in either case) and
 * FIELD = VALUE (an event whose field at that dotted path, as SQLite's
 * json_extract reads "$.FIELD", is VALUE as text) are checked row by row. At
 * most SCAN rows (0: no bound) are looked at, so a page costs a bounded
 * amount whatever the journal's size; NEXT then says where to go on.
 */
struct brm_body_query {
    int64_t before;             /* 0: from the newest */
    const char *topic, *source; /* NULL: any */
    double since, until;        /* received in [SINCE, UNTIL); 0: no bound */
    double skew;
    const char *text;          /* or NULL */
    const char *field, *value; /* or NULL */
    int limit;                 /* bodies handed to FN, at most */
    int scan;
    int64_t next; /* out: BEFORE of the next page; 0 when nothing older can match */
};
/* Hands FN each body of Q's page (without its BODY); FN returning nonzero
 * ends the page there. Returns 0, or -1 with ERR set. */
int brm_store_find_bodies(struct brm_store *s, struct brm_body_query *q,
                          int (*fn)(void *arg, const struct brm_body *b), void *arg,
                          struct brm_err *err);
/* Hands FN body ID, whole. Returns 1, 0 when there is none, -1 (also when
 * it cannot be read: ERR says why). */
int brm_store_body(struct brm_store *s, int64_t id, int (*fn)(void *arg, const struct brm_body *b),
                   void *arg, struct brm_err *err);

/* A page of deliveries, newest first, like struct brm_body_query: pending
 * and dead ones come from the indexes that hold only them (a page of
 * pending ones sorts them all: they are the outbox's working set), the
 * others from the rowid; target and times are checked row by row. */
struct brm_delivery_query {
    int64_t before; /* 0: from the newest */
    int state;      /* an enum brm_delivery_state, or -1 for any */
    const char *target;
    double since, until; /* created in [SINCE, UNTIL); 0: no bound */
    int limit, scan;
    int64_t next; /* out */
};
int brm_store_find_deliveries(struct brm_store *s, struct brm_delivery_query *q,
                              int (*fn)(void *arg, const struct brm_delivery *d), void *arg,
                              struct brm_err *err);
/* Hands FN delivery ID (FINISHED set too). Returns 1, 0 when there is none, -1. */
int brm_store_delivery(struct brm_store *s, int64_t id,
                       int (*fn)(void *arg, const struct brm_delivery *d), void *arg,
                       struct brm_err *err);
/* Hands FN the deliveries body BODY's rules made (by their keys), oldest
 * first, at most LIMIT. */
int brm_store_body_deliveries(struct brm_store *s, int64_t body, int limit,
                              int (*fn)(void *arg, const struct brm_delivery *d), void *arg,
                              struct brm_err *err);

#endif
