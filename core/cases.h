/*
 * cases: clock tests, `brume test CASES.lua` (in the spirit of Prometheus's
 * `promtool test rules`). A case file is Lua that returns
 *
 *     { start = "2026-11-01T00:00:00Z", source = "mist", rules = { "x" },
 *       steps = { { at = "0s", payload = "fixtures/a.json" or { topic =, events = },
 *                   expect = { { target = "oncall", title = "AP down" } } },
 *                 { at = "5m", expect = {} } } }
 *
 * The rules run in a fresh engine on a fresh state, in a dry run (nothing
 * is stored or sent), reading a simulated clock. Each step moves the clock
 * to start + at, firing on the way every timer and digest that comes due,
 * at its own due time and in due order (those due at the same time in the
 * order of their rule and key); then the step's payloads run at that time,
 * deduped as the source says. The messages sent since the previous step
 * (from timers and payloads) are compared, in order, with the step's
 * expectations: each names a subset of a message's fields, and optionally
 * of its request. Depends on engine, intake, state, sandbox, json, outbox
 * (for the actions' JSON), config, util.
 */
#ifndef BRM_CASES_H
#define BRM_CASES_H

#include <stdio.h>

#include "config.h"
#include "util.h"

/* The start of a case file that names none (and `brume test --at`
 * gives no other): 2026-01-01T00:00:00Z, so that runs repeat exactly. */
#define BRM_CASES_START 1767225600.0

/* 1 when PATH names a case file (it ends in .lua), else 0. */
int brm_cases_is_file(const char *path);

/*
 * Runs the case file PATH on CFG's rules, the clock starting at the file's
 * `start`, else at START. Writes a report to OUT: one line when every step
 * passed, otherwise a readable diff per failing step. Returns 0 when every
 * step passed, 1 when one did not (or a rule failed), -1 when the case
 * file is bad (cannot be read or run, or is not of the form above), with
 * ERR naming its file:line.
 */
int brm_cases_run(const struct brm_config *cfg, const char *path, double start, FILE *out,
                  struct brm_err *err);

/* Reads "2026-11-01T00:00:00Z" (seconds and Z optional, or a date alone)
 * or seconds since the epoch. Returns 0, or -1 when S is neither. */
int brm_cases_parse_time(const char *s, double *out);

#endif
