/*
 * outbox: delivers what rules send, durably and with retries.
 *
 * brm_outbox_add (from any worker) stores each action as a delivery, in the
 * journal's transaction, before anything is attempted. The outbox thread
 * - its own event_base driving libcurl's multi interface: no blocking call,
 * no thread per request - takes due deliveries from the store and makes
 * their requests: HTTP(S) with certificate verification, through a target's
 * proxy or the usual environment variables; appends for kind file; and for
 * ticket kinds the adapter's plan (find the ticket, create it once, update
 * it after), remembering each ticket in the store.
 *
 * Network errors, timeouts, 408, 425, 429 and 5xx are retried with
 * exponential backoff and full jitter, Retry-After being a floor, until the
 * target's max_age has passed; anything else, and a give-up, is a dead
 * letter with the last status and a short reason. Each target has its own
 * rate and concurrency, so a slow or dead target never holds up another.
 * The thread runs no user Lua: a private VM only decodes JSON.
 *
 * Depends on store, config, api (the action list), json, verify, metrics,
 * log, util; libcurl and libevent.
 */
#ifndef BRM_OUTBOX_H
#define BRM_OUTBOX_H

#include "api.h"
#include "config.h"
#include "store.h"

struct brm_outbox;

/* The outbox of CFG (it takes a reference), not yet running. NULL with ERR
 * set when the store or a target file cannot be opened. */
struct brm_outbox *brm_outbox_new(const struct brm_config *cfg, struct brm_err *err);
/* Appends to ERRS a problem for each file target of CFG that cannot be
 * opened for appending (its folder is made): a reload checks before it
 * commits to a config. */
void brm_outbox_check_files(const struct brm_config *cfg, struct brm_errors *errs);
/* Moves the outbox onto CFG, a reloaded config (any thread; the outbox
 * thread takes it at its next turn). */
void brm_outbox_configure(struct brm_outbox *ob, const struct brm_config *cfg);
/* Starts the outbox thread. */
int brm_outbox_start(struct brm_outbox *ob, struct brm_err *err);
/* Stops the thread: no new attempt starts; attempts in flight get up to
 * WAIT seconds, then are abandoned (their deliveries stay pending). */
void brm_outbox_stop(struct brm_outbox *ob, double wait);
void brm_outbox_free(struct brm_outbox *ob);

/*
 * Stores the actions of A as deliveries through ST (the calling thread's
 * own connection), inside the caller's transaction: the journal stores a
 * body, its deliveries and its state in one. An action whose key is
 * already stored is not stored again. Returns how many were stored, or -1
 * with ERR set.
 */
int brm_outbox_add(const struct brm_config *cfg, struct brm_store *st, const struct brm_actions *a,
                   double now, struct brm_err *err);
/* Tells the outbox thread there is new work (any thread). */
void brm_outbox_wake(struct brm_outbox *ob);

/* Pending deliveries and the age of the oldest, as last counted. */
long brm_outbox_pending(const struct brm_outbox *ob, double *oldest);

/* The store's path for CFG: data_dir/brume.db. */
char *brm_outbox_store_path(const struct brm_config *cfg);

/* Appends ACTION as one JSON object for `brume test`: rule, target, topic,
 * event, message, and the request with secrets masked. */
void brm_action_json(const struct brm_action *action, struct brm_buf *out);

/* S with every secret of target T replaced by ****. */
void brm_outbox_mask(const struct brm_target *t, const char *s, struct brm_buf *out);

#endif
