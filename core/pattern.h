/*
 * pattern: string.find, string.match, string.gmatch and string.gsub for
 * rules, with Lua 5.4's pattern semantics, written again so that every step
 * of the matcher is charged to the rule's instruction budget. Lua's own
 * matcher runs in C, where the budget's count hook never fires: a rule
 * matching ("a"):rep(4000) against ".-.-.-b" would hold its worker for
 * hours. Here the same rule stops at its budget, like any loop.
 *
 * Same results and errors as Lua 5.4's string library (tests/unit/
 * test_pattern.c compares them on thousands of patterns). Depends on Lua.
 */
#ifndef BRM_PATTERN_H
#define BRM_PATTERN_H

#include <lua.h>

/* Called every so many matcher steps with their count; raises (with a Lua
 * error) when the budget is gone. */
typedef void brm_pattern_charge(lua_State *L, long steps);

/* Replaces find, match, gmatch and gsub in the table at IDX (the string
 * library) with the budgeted ones. */
void brm_pattern_open(lua_State *L, int idx, brm_pattern_charge *charge);

#endif
