/*
 * engine: a rule set loaded into one VM, and the dispatch of a decoded
 * batch to the rules of its topic. Rules are the *.lua files directly in
 * the rules folder, loaded in file-name order; each returns
 *
 *     { name = "...", topics = { "alarms" } or "*", where = { field = value
 *       or { value, ... } }, on_event = function(ev, ctx) ... end }
 *
 * For every event, the rules of its topic run in file-name order, each
 * through the sandbox's door with its own instruction budget; one rule's
 * error, loop or memory blow-up is logged (rule, file:line, event id),
 * counted, and the others still run. Events a rule emits run after the
 * rules of the event that emitted them. An engine belongs to one thread.
 * Depends on sandbox, api, json, config, fingerprint, lint, metrics, log.
 */
#ifndef BRM_ENGINE_H
#define BRM_ENGINE_H

#include <lua.h>
#include <stdint.h>

#include "api.h"
#include "config.h"
#include "json.h"
#include "state.h"

struct brm_engine;
struct brm_snapshot;

/* Where a batch came from, for ctx. */
struct brm_batch {
    const char *source; /* config name of the source */
    uint64_t delivery;  /* id of this body (its journal id) */
    double received_at;
    const struct brm_dedupe *dedupe; /* the source's (NULL, or a window of 0: no dedupe) */
    struct brm_state_txn *txn;       /* the transaction state changes belong to (NULL: none) */
    int backfilled; /* taken from Mist's delivery log, not posted: ctx.backfilled = true */
};

/*
 * What the rules did with a body's events, kept with the body (the
 * console shows it): a JSON list, one element per rule call. A call that
 * went well is [index, "rule"] (index: the event's position, from 1); one
 * that failed, and any call on an emitted event, is an object {"i": index,
 * "rule": ..., "topic": the emitted event's topic, "status": "error" |
 * "budget" | "memory", "at": "rules/x.lua:12", "msg": the error, cut to
 * BRM_RUN_LOG_MSG bytes} (the members that apply). Calls past
 * BRM_RUN_LOG_MAX bytes are counted, not listed: {"more": n} ends the list.
 */
#define BRM_RUN_LOG_MAX 4096
#define BRM_RUN_LOG_MSG 200
struct brm_run_log {
    struct brm_buf text; /* the list once ended; empty when no rule ran */
    size_t more;
};
/* Closes LOG's list (nothing when no call was logged). */
void brm_run_log_end(struct brm_run_log *log);
/* Forgets every call (a body that runs again), keeping the buffer. */
void brm_run_log_clear(struct brm_run_log *log);

struct brm_dispatch_stats {
    size_t events;           /* posted and emitted events handled */
    size_t runs;             /* rule calls */
    size_t errors;           /* rule calls that failed */
    size_t duplicates;       /* posted events not handed to rules: seen already */
    struct brm_run_log *log; /* in (zero the rest): where rule calls are noted, or NULL */
};

/*
 * Loads every rule of CFG's rules folder into a fresh VM. Returns the
 * engine, or NULL with every problem found (not just the first) appended to
 * ERRS as file:line: message. The engine holds a reference to CFG.
 */
struct brm_engine *brm_engine_new(const struct brm_config *cfg, struct brm_errors *errs);
/* The same, reading the rules and scripts through FILES (see snapshot.h):
 * the engines of one rule set are then built from the same bytes. */
struct brm_engine *brm_engine_build(const struct brm_config *cfg, struct brm_snapshot *files,
                                    struct brm_errors *errs);
/* The same for a dry run in a running daemon (the console's playground):
 * actions carry their requests masked for showing (brm_engine_set_dry_run),
 * and rule calls count in no metric and log no failure (the run log has
 * them). */
struct brm_engine *brm_engine_build_dry(const struct brm_config *cfg, struct brm_snapshot *files,
                                        struct brm_errors *errs);
void brm_engine_free(struct brm_engine *e);
/* The config the engine runs on (borrowed for as long as the engine). */
const struct brm_config *brm_engine_config(const struct brm_engine *e);

/* The VM, for decoding a body into it (json.h). */
lua_State *brm_engine_state(struct brm_engine *e);

/* Decodes BODY into the VM and checks its envelope (brm_json_envelope),
 * its decoded form held to half of the VM's memory cap, so that a body
 * never takes what its rules need. Returns 0 with the envelope table
 * pushed, -1 (not a Mist body) or -2 (too large once decoded) with the
 * reason in ERR. [-0, +(0|1)] */
int brm_engine_decode(struct brm_engine *e, const char *body, size_t len, struct brm_envelope *env,
                      struct brm_err *err);

/*
 * Runs the rules for every event of the envelope table on top of the VM's
 * stack (as brm_json_envelope left it), and pops it. With the batch's
 * dedupe on, an event whose fingerprint (see fingerprint.h: the whole
 * event, or the fields its source names for the topic) was seen on the
 * topic within the window is counted as a duplicate and not run. Messages
 * rules send are appended to SINK; state changes (theirs, and dedupe
 * marks) go into the batch's transaction. Rule errors are logged and counted in STATS.
 * Returns 0, or BRM_STATE_BUSY when the body met state another transaction
 * has not stored yet: it stopped there, and must be run again later, whole
 * (the caller undoes what it changed and drops what it sent). [-1, +0]
 */
int brm_engine_dispatch(struct brm_engine *e, const struct brm_envelope *env,
                        const struct brm_batch *batch, struct brm_actions *sink,
                        struct brm_dispatch_stats *stats);

/* What became of a timer or digest that came due. */
enum brm_fire_outcome {
    BRM_FIRE_RAN,          /* its handler ran (it may have failed: STATS say) */
    BRM_FIRE_NO_RULE,      /* no rule of that name (a reload removed it) */
    BRM_FIRE_NO_HANDLER,   /* the rule has no on_timer (or on_group) now */
    BRM_FIRE_DROPPED_LATE, /* later than the rule's `late` allows */
};

/*
 * Runs the handler of timer or digest F, which came due at F->due and
 * fires at BATCH->received_at (on_timer(key, data, ctx) or on_group(key,
 * items, ctx), ctx holding due, late, fired_at...), as dispatch runs
 * on_event: what it sends goes to SINK, its state changes to the batch's
 * transaction. *OUTCOME says whether it ran. Returns 0, or BRM_STATE_BUSY
 * as dispatch does (run it again later, whole).
 */
int brm_engine_fire(struct brm_engine *e, const struct brm_fired *f, const struct brm_batch *batch,
                    struct brm_actions *sink, struct brm_dispatch_stats *stats,
                    enum brm_fire_outcome *outcome);
/* Rules read the time from CLOCK(ARG) (brume test's simulated clock). */
void brm_engine_set_clock(struct brm_engine *e, double (*clock)(void *arg), void *arg);
/* 1 when the engine has a rule named NAME. */
int brm_engine_has_rule(const struct brm_engine *e, const char *name);

size_t brm_engine_rule_count(const struct brm_engine *e);
/* The name of rule I (in file-name order), borrowed for the engine's life. */
const char *brm_engine_rule_name(const struct brm_engine *e, size_t i);
/* Appends to WARNINGS, as file:line: message, what the rules' text shows
 * that loading them does not: a brume.send to a literal target name the
 * config lacks ("rules/x.lua:12: brume.send to 'secop': no such target
 * (did you mean 'secops'?)"). */
void brm_engine_lint(struct brm_engine *e, struct brm_errors *warnings);
/* Appends the rules, in the order they run, as a JSON list of {"name",
 * "file", "topics": [...] ("*" for every topic), "where": bool}. */
void brm_engine_describe(const struct brm_engine *e, struct brm_buf *out);
/* In a dry run (brume test) actions also carry their requests with
 * secrets masked, for showing. */
void brm_engine_set_dry_run(struct brm_engine *e, int on);
/* brume test: the payload file that rule failures name, from now on
 * (borrowed until the next call; NULL: none). */
void brm_engine_set_payload(struct brm_engine *e, const char *file);
/* The state the rules and dedupe use (borrowed; shared by engines). */
void brm_engine_set_state(struct brm_engine *e, struct brm_state *state);
/* Rules stop as out of time once *FLAG is nonzero (see brm_sandbox_set_cancel). */
void brm_engine_set_cancel(struct brm_engine *e, const _Atomic int *flag);
/* 1 when a rule kept so much memory that the VM should be rebuilt. */
int brm_engine_exhausted(const struct brm_engine *e);
size_t brm_engine_memory(const struct brm_engine *e);

#endif
