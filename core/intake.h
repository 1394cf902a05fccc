/*
 * intake: what happens to one webhook body, with no HTTP in sight: check
 * its signature against the source's secrets, decode it, run the rules,
 * hand the body and what its rules did to the journal, and say how it went.
 * One per worker: it owns that worker's prepared signature keys and its
 * engine.
 *
 * The bodies of one turn of the worker's loop form a group, with one state
 * transaction; at the end of the turn the group goes to the journal's
 * writer, and the worker goes on with its next requests. When the writer is
 * done, the worker answers the group's bodies: 200 once stored, 503 when
 * the store refused them. A body whose rules meet rule state that another
 * group has changed but not stored yet is undone and parked, and runs again
 * once that group is done: nothing is acted on before it is stored, and no
 * worker waits. With the state shared through Redis, a group that used it
 * is committed there first (shared.h), and bodies run again or are held
 * for later when that does not go through. Depends on verify, json,
 * engine, journal, outbox, state, shared, metrics, log.
 */
#ifndef BRM_INTAKE_H
#define BRM_INTAKE_H

#include "config.h"
#include "engine.h"
#include "journal.h"
#include "outbox.h"
#include "shared.h"
#include "state.h"
#include "store.h"

struct event_base;

struct brm_intake_req {
    const struct brm_source *source;
    const char *sig; /* X-Mist-Signature-v2, or NULL */
    size_t sig_len;
    const char *sig1; /* X-Mist-Signature (HMAC-SHA1), or NULL */
    size_t sig1_len;
    const char *body;
    size_t len;
    double received_at;
    const char *peer; /* for logs */
};

/* How a body fared: BRM_OK (accepted), BRM_UNAUTHORIZED, BRM_BAD_REQUEST
 * or BRM_UNAVAILABLE, with a one-line reason for the client. */
typedef void brm_intake_done_fn(void *arg, enum brm_status status, const char *reason);

struct brm_intake;

/* Called (from any thread) when a state key some parked body waited for is
 * free again: the server tells every intake (brm_intake_wake). */
typedef void brm_intake_wake_fn(void *arg);

/* An intake running ENGINE's rules on the sources of ENGINE's config (it
 * takes ownership of ENGINE), journaling through J, waking OB (or NULL: no
 * outbox runs, what is queued waits for the next start), with the shared
 * STATE (all borrowed), on the worker's BASE. WAKE(ARG) is how it asks for
 * parked bodies to be tried again. */
struct brm_intake *brm_intake_new(struct brm_engine *engine, struct brm_outbox *ob,
                                  struct brm_journal *j, struct brm_state *state,
                                  struct event_base *base, brm_intake_wake_fn *wake, void *arg);
void brm_intake_free(struct brm_intake *in);

/* Parked bodies should try again (any thread). */
void brm_intake_wake(struct brm_intake *in);

/* The state is shared through Redis (before the first body): a group that
 * used state is committed there before it is journaled, and a body that
 * uses state while Redis is away (or held bodies wait) is journaled held,
 * its rules to run later. */
void brm_intake_set_shared(struct brm_intake *in, struct brm_shared *shared);
/* Runs held body B (from the journal; copied) through the rules in this
 * worker's next turn, after the bodies handed over before it; its outcome
 * is stored and its mark goes. PENDING is decremented when it is done with
 * (stored, or left held). Any thread. */
void brm_intake_rerun(struct brm_intake *in, const struct brm_body *b, _Atomic long *pending);

/* Timer or digest KEY came due (brm_state_pop_due): this worker fires it
 * in its next group (any thread; the key is copied). */
void brm_intake_fire(struct brm_intake *in, const char *key);

/* The worker's loop is ending: hands over the open group, waits until every
 * group is done and answered, and runs parked bodies until none is left.
 * Call it from the worker's thread. */
void brm_intake_flush(struct brm_intake *in);

/* Puts ENGINE, and the config it runs on (sources, secrets, targets), in
 * place for the next body, taking ownership of it; the one it replaces is
 * freed. Bodies are handled whole: when a group waits for its commit, the
 * swap comes after it, so no body runs on one set and is stored with the
 * other's config. */
void brm_intake_swap(struct brm_intake *in, struct brm_engine *engine);
struct brm_engine *brm_intake_engine(struct brm_intake *in);
/* The source NAME of the config in place, or NULL (a reload removed it). */
const struct brm_source *brm_intake_source(const struct brm_intake *in, const char *name);

/*
 * Whether a request to SRC carrying these signature headers (V2 is
 * X-Mist-Signature-v2, V1 X-Mist-Signature; NULL when absent) is worth
 * reading the body of: NULL when it is (an insecure source, or a header the
 * source accepts shaped as a signature: 64 hex digits for v2, 40 for v1,
 * either case), else the one-line reason for its 401. Only the shape is
 * checked here; the digits are checked against the body.
 */
const char *brm_intake_refuse_head(const struct brm_source *src, const char *v2, size_t v2_len,
                                   const char *v1, size_t v1_len);

/*
 * Handles one body and calls DONE with the outcome: at once when it is
 * refused (or its source has durability = "none"), else once it is in the
 * journal with what its rules did. Bodies that come in the same turn of
 * the event loop are journaled together - one transaction, one fsync,
 * shared with other workers' groups - and answered after it (group commit).
 * REQ's strings and body must stay valid until DONE is called.
 */
void brm_intake_submit(struct brm_intake *in, const struct brm_intake_req *req,
                       brm_intake_done_fn *done, void *arg);

/* What became of a body's events, for whoever handed it in. */
struct brm_intake_tally {
    size_t events;     /* in the body */
    size_t duplicates; /* of those, not run: seen already within the source's dedupe window */
    size_t messages;   /* its rules sent */
};

/*
 * Handles one body taken from Mist's delivery log (backfill) as a post is
 * handled, but trusted: it came from Mist's API over TLS with the
 * source's token, so there is no signature to check. It is journaled
 * marked backfilled, its rules see ctx.backfilled = true, and DONE is
 * called once it is stored (or refused), whatever the source's durability.
 * TALLY, when given, is set before DONE for a body that ran. REQ's sig
 * fields are not read; its strings and body, and TALLY, must stay valid
 * until DONE. Call it on the intake's worker thread.
 */
void brm_intake_submit_backfilled(struct brm_intake *in, const struct brm_intake_req *req,
                                  struct brm_intake_tally *tally, brm_intake_done_fn *done,
                                  void *arg);

/*
 * Decodes BODY into E's VM and runs the rules on its events, appending what
 * they send to SINK: the path every body takes once trusted (live after its
 * signature, `brume test` from a file). Returns BRM_OK, BRM_BAD_REQUEST
 * or BRM_TOO_LARGE (too large for the rules' memory once decoded) with the
 * one-line reason in ERR, or BRM_BUSY when it met state another
 * transaction has not stored (see brm_engine_dispatch). ENV and STATS may
 * be NULL.
 */
enum brm_status brm_intake_run(struct brm_engine *e, const char *body, size_t len,
                               const struct brm_batch *batch, struct brm_actions *sink,
                               struct brm_envelope *env, struct brm_dispatch_stats *stats,
                               struct brm_err *err);

#endif
