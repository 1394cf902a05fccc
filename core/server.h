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
 * in flight finish within the drain timeout, and exit 0. Depends on http,
 * intake, engine, outbox, config, metrics, log.
 */
#ifndef BRM_SERVER_H
#define BRM_SERVER_H

#include "config.h"

/* Runs the daemon on CFG until it is told to stop. Returns the process's
 * exit status: 0 after a clean stop, 1 when it could not start. */
int brm_server_run(const struct brm_config *cfg);

#endif
