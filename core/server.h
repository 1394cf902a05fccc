/*
 * server: the running daemon. It takes the data folder's lock, opens the
 * outbox, builds one rule engine per worker and starts the workers: each a
 * thread with its own event_base, its own listening sockets on the shared
 * ports (SO_REUSEPORT: the kernel spreads connections, no thundering herd)
 * and its own VM, so nothing on the request path takes a lock. The main
 * thread keeps the admin listener, the signals and the rule builds:
 * SIGHUP rebuilds the rule set in fresh VMs and hands one to each worker,
 * which swaps it in between two requests (all or nothing: if any rule fails
 * the running set stays); SIGTERM and SIGINT stop accepting, let requests
 * in flight finish within the drain timeout, and exit 0. A backfill thread
 * (backfill.h) takes in what Mist failed to deliver, handing each body to a
 * worker as a post; at start its catch-up runs before the first timer
 * fires. Depends on http, intake, engine, outbox, backfill, config, metrics,
 * log.
 */
#ifndef BRM_SERVER_H
#define BRM_SERVER_H

#include "backfill.h"
#include "config.h"

/* Runs the daemon on CFG until it is told to stop. Returns the process's
 * exit status: 0 after a clean stop, 1 when it could not start. */
int brm_server_run(const struct brm_config *cfg);

/* Whether a brume runs on CFG's data folder: 1 (with its admin listener's
 * address in ADMIN, SIZE bytes, "" when it has none), 0, or -1 when the
 * lock cannot be read. */
int brm_server_running(const struct brm_config *cfg, char *admin, size_t size);

/*
 * `brume backfill` when no brume runs: takes the data folder (as `brume
 * run` does, so that none starts meanwhile), its store and rule state, and
 * runs ASK, each body through an intake on this thread as a worker runs a
 * post. What the rules send is queued, and timers they arm are stored: a
 * brume started later delivers and fires them. A dry run only reads.
 * Returns 0 with *REPORT (brm_backfill_report_free), or -1 with ERRS.
 */
int brm_server_backfill(const struct brm_config *cfg, const struct brm_backfill_ask *ask,
                        struct brm_backfill_report **report, struct brm_errors *errs);

#endif
