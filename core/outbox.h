/*
 * outbox: delivers what rules send, durably and with retries.
 *
 * The journal stores each action as a delivery with the body that sent it,
 * before anything is attempted (brm_journal_add_deliveries). The outbox
 * thread - its own event_base, with transfer.c driving libcurl on it: no
 * blocking call, no thread per request - reads due deliveries from the
 * store in batches and makes their requests (plan.c reads them back):
 * HTTP(S), appends for kind file, messages for kind kafka (kafka.c: the
 * delivery report is the attempt's outcome), entries for kind redis-stream
 * (stream.c: XADD's reply is), and for ticket kinds the
 * adapter's plan (find the ticket, create it once, update it after). What it learns -
 * outcomes, ticket ids - goes to the journal's writer in batches, one
 * transaction for many: the outbox thread itself never writes the store.
 *
 * Network errors, timeouts, 408, 425, 429 and 5xx are retried with
 * exponential backoff and full jitter, Retry-After being a floor, until the
 * target's max_age has passed; anything else, and a give-up, is a dead
 * letter with the last status and a short reason. Each target has its own
 * rate and concurrency, so a slow or dead target never holds up another.
 * The thread runs no user Lua: a private VM only decodes JSON.
 *
 * Depends on store (reading), journal (writing), plan, transfer, kafka, stream, config, api
 * (the action list), json, verify, metrics, log, util; libevent.
 */
#ifndef BRM_OUTBOX_H
#define BRM_OUTBOX_H

#include "api.h"
#include "config.h"
#include "journal.h"
#include "store.h"

struct brm_outbox;

/* The outbox of CFG (it takes a reference), writing through J, not yet
 * running. NULL with ERR set when the store or a target file cannot be
 * opened. */
struct brm_outbox *brm_outbox_new(const struct brm_config *cfg, struct brm_journal *j,
                                  struct brm_err *err);
/* Appends to ERRS a problem for each kafka target of CFG whose settings
 * librdkafka refuses, each redis-stream target whose URL is bad and, when
 * LOCAL (the check runs where brume runs: a start, a reload), each file
 * target that cannot be opened for appending (its folder is made) and
 * each kafka target whose plugins do not load. `brume check`, which may
 * run elsewhere, checks without LOCAL: it opens and loads nothing. */
void brm_outbox_check_targets(const struct brm_config *cfg, int local, struct brm_errors *errs);
/* Moves the outbox onto CFG, a reloaded config (any thread; the outbox
 * thread takes it at its next turn). */
void brm_outbox_configure(struct brm_outbox *ob, const struct brm_config *cfg);
/* Starts the outbox thread. */
int brm_outbox_start(struct brm_outbox *ob, struct brm_err *err);
/* Stops the thread: no new attempt starts; attempts in flight get up to
 * WAIT seconds, then are abandoned (their deliveries stay pending); what
 * was learnt is written. Call it before the journal stops. */
void brm_outbox_stop(struct brm_outbox *ob, double wait);
void brm_outbox_free(struct brm_outbox *ob);

/* Tells the outbox thread there is new work (any thread). */
void brm_outbox_wake(struct brm_outbox *ob);

/* Pending deliveries and the age of the oldest, as last counted. */
long brm_outbox_pending(const struct brm_outbox *ob, double *oldest);

/* The store's path for CFG: data_dir/brume.db. */
char *brm_outbox_store_path(const struct brm_config *cfg);

/* Appends ACTION as one JSON object for `brume test`: rule, target, topic,
 * event, message, and the request with secrets masked. */
void brm_action_json(const struct brm_action *action, struct brm_buf *out);

/* S with every secret of target T replaced by "****" (a secret URL keeps its
 * scheme and host: "https://hooks.slack.com/" and "****"). */
void brm_outbox_mask(const struct brm_target *t, const char *s, struct brm_buf *out);

#endif
