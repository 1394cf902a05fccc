/*
 * console: the operator's console on the admin listener. A small page
 * (console/: plain HTML, CSS and JavaScript compiled into the binary) and
 * the JSON endpoints under /api/ that it reads, which the CLI can use too:
 * an overview of the last hour, the journal with what the rules did to each
 * body, deliveries with their attempts (retry, drop), timers and digests,
 * and a playground that runs the current rules on a payload, dry.
 *
 * It runs on the main thread with its own read-only store connection (WAL:
 * readers never block the writer). Every page goes by id, through an index,
 * and looks at a bounded number of rows, so a large journal stays fast and a
 * console left open does not slow intake. What changes the store (retry,
 * drop) is a job for the journal's writer, the store's one writer, in steps
 * of a few hundred rows; the request is answered once its last step is
 * stored. The playground builds a dry engine from the running rule set's
 * files (with an edited rule in place of one, never saved) and a fresh
 * state, under the sandbox's limits. A ring of per-minute samples of the
 * counters, taken by a timer, gives the overview its charts.
 *
 * Access, as for /metrics: with an admin token in the config every call
 * wants it (Authorization: Bearer). Without one the listener is loopback
 * only, and calls must come from a loopback peer naming a loopback Host (a
 * page that rebinds its own name to 127.0.0.1 gets nothing). Every call that
 * changes something also carries a header no form or cross-site simple
 * request can send (the token's, or X-Brume-Console: 1), and an Origin, when
 * a browser sends one, of the same host. No cookies. Answers carry a strict
 * Content-Security-Policy, X-Frame-Options: DENY and Cache-Control: no-store.
 *
 * Depends on http, store, journal, outbox, engine, intake, snapshot, state,
 * shared, json, metrics, config, log, util.
 */
#ifndef BRM_CONSOLE_H
#define BRM_CONSOLE_H

#include <stddef.h>

#include "config.h"
#include "http.h"
#include "journal.h"
#include "outbox.h"
#include "shared.h"
#include "snapshot.h"
#include "state.h"

struct event_base;
struct brm_console;

/* The most routes brm_console_routes gives. */
#define BRM_CONSOLE_MAX_ROUTES 20

/* A console on BASE (the main thread's) reading the store at PATH, writing
 * through J, waking OB after a retry; its first sample is taken now. NULL
 * with ERR set when the store cannot be opened. */
struct brm_console *brm_console_new(struct event_base *base, const char *path,
                                    struct brm_journal *j, struct brm_outbox *ob,
                                    struct brm_err *err);
/* Call once the journal has stopped: changes still waiting for their
 * answer are dropped with their requests. NULL is fine. */
void brm_console_free(struct brm_console *c);
/* The rule state whose timers and digests the console shows, and cancels
 * or fires; in Redis when SHARED is not NULL (both borrowed; SHARED must
 * outlive the console's requests: brm_shared_free before
 * brm_console_free). */
void brm_console_set_state(struct brm_console *c, struct brm_state *state,
                           struct brm_shared *shared);

/* The running config, the files its rule set was built from (references
 * are taken) and the set's version: at start and after each reload. */
void brm_console_configure(struct brm_console *c, const struct brm_config *cfg,
                           struct brm_snapshot *files, long generation);
/* A reload ended (TRIGGER: "SIGHUP", "admin", "watch"): ERRS is what made
 * it fail, or NULL when it went through. The overview shows the last one. */
void brm_console_reloaded(struct brm_console *c, const char *trigger,
                          const struct brm_errors *errs);

/* Writes the console's routes (their ARG is C) into OUT, which has room for
 * BRM_CONSOLE_MAX_ROUTES; returns how many. */
size_t brm_console_routes(struct brm_console *c, struct brm_http_route *out);

/*
 * Whether REQ may use the console's API under TOKEN (the config's admin
 * token, or NULL), WRITES when it changes something: 0, or the status to
 * refuse it with (401, 403) and a one-line reason in *WHY.
 */
int brm_console_check(const char *token, const struct brm_http_req *req, int writes,
                      const char **why);
/* 0 when REQ carries an Origin (a browser's) whose host is not REQ's Host:
 * a page of another site. 1 otherwise (curl sends none). */
int brm_console_same_origin(const struct brm_http_req *req);

#endif
