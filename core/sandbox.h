/*
 * sandbox: the only code that runs user Lua (rules, the modules they
 * require, the config file). It owns a lua_State and three guards:
 *
 *   - memory: an accounting allocator that refuses to grow the VM past its
 *     cap while user code runs (HAProxy's hlua_alloc); the rule then fails
 *     with a memory error and the VM carries on;
 *   - time: an instruction budget per call, counted by a hook that raises
 *     when it runs out and then fires on every instruction, so a pcall in the
 *     rule cannot swallow it (Redis's luaMaskCountHook, HAProxy's hlua_hook);
 *     the work library functions do in C is charged to the same budget
 *     (library.h, pattern.h); and a CPU-time limit per call as a backstop,
 *     kept by a timer on each thread's CPU clock (its signal is SIGRTMIN),
 *     so that no call pays a system call for it;
 *   - reach: each chunk gets its own _ENV whose misses fall through to a
 *     shared library of safe functions; the library tables (string, table,
 *     math, utf8, os, brume, required modules) are read-only proxies and the
 *     string metatable is locked, so no rule can change what another sees.
 *     No io, no os.execute, no debug, no package.loadlib, no binary chunks;
 *     `require` finds modules in the user's scripts and rules folders and in
 *     the scripts built into the binary.
 *
 * Every entry into user code goes through brm_sandbox_call: a message
 * handler that places the error at file:line, lua_pcall, guards on, guards
 * off. Depends on Lua 5.4, util and the generated table of built-in scripts.
 */
#ifndef BRM_SANDBOX_H
#define BRM_SANDBOX_H

#include <lua.h>
#include <stddef.h>

#include "library.h"
#include "util.h"

struct brm_snapshot;

struct brm_sandbox_opts {
    long instructions;          /* budget per call; 0: none */
    double time_limit;          /* CPU seconds per call; 0: none (a backstop to the budget) */
    size_t memory;              /* VM cap in bytes; 0: none */
    const char *scripts_dir;    /* user modules, searched first; may be NULL */
    const char *rules_dir;      /* then these; may be NULL */
    struct brm_snapshot *files; /* read files through it (shared by the engines of one rule
                                   set); NULL: a snapshot of its own */
};

enum brm_call_status {
    BRM_CALL_OK,
    BRM_CALL_ERROR,   /* the code raised an error */
    BRM_CALL_BUDGET,  /* it ran out of instructions, or of time */
    BRM_CALL_MEMORY,  /* it hit the memory cap */
    BRM_CALL_ABORTED, /* C code it called stopped it (brm_sandbox_abort) */
};

struct brm_sandbox;

/* A new VM with the safe library in place. Aborts when out of memory. */
struct brm_sandbox *brm_sandbox_new(const struct brm_sandbox_opts *opts);
void brm_sandbox_free(struct brm_sandbox *sb);
/* From now on, once *FLAG (set from any thread) is nonzero, every call ends
 * as out of time: the one in progress within an instruction step (or at
 * its next charge), later ones at once. NULL: never. FLAG must outlive SB. */
void brm_sandbox_set_cancel(struct brm_sandbox *sb, const _Atomic int *flag);

lua_State *brm_sandbox_state(struct brm_sandbox *sb);
/* What the sandbox reads user code through (borrowed). */
struct brm_snapshot *brm_sandbox_files(struct brm_sandbox *sb);
/* The sandbox a state belongs to (found through its allocator). */
struct brm_sandbox *brm_sandbox_of(lua_State *L);

/* Pops the value on top of the stack and makes it a global of every chunk.
 * A table is exposed through a read-only proxy and is also what
 * require(NAME) returns. [-1, +0] */
void brm_sandbox_expose(struct brm_sandbox *sb, const char *name);

/* Pushes the shared library table that chunk environments fall back to.
 * Callers must not hand it to user code. [-0, +1] */
void brm_sandbox_push_library(struct brm_sandbox *sb);

/*
 * Compiles the Lua text file PATH (binary chunks are refused) and pushes it
 * as a function whose _ENV is a fresh table falling back to the library.
 * Errors read "DISPLAY:LINE: msg". Returns 0, or -1 with ERR set and nothing
 * pushed. [-0, +(0|1)]
 */
int brm_sandbox_loadfile(struct brm_sandbox *sb, const char *path, const char *display,
                         struct brm_err *err);
/* The same for text in memory, named CHUNKNAME ("@file" or "=name"). */
int brm_sandbox_loadbuffer(struct brm_sandbox *sb, const char *src, size_t len,
                           const char *chunkname, struct brm_err *err);

/*
 * Calls the function below the NARGS arguments on top of the stack with the
 * guards on: the instruction budget and the time limit start afresh (unless
 * this call is nested in another, whose they then share) and the memory cap
 * is enforced. On BRM_CALL_OK the function and arguments are replaced by
 * NRESULTS results; otherwise they are popped and ERR holds the message
 * and, when known, the file:line it came from (for a call stopped by the
 * budget, the time or an abort: where it was stopped, even if the code
 * caught the error and returned). [-(nargs+1), +(nresults|0)]
 */
enum brm_call_status brm_sandbox_call(struct brm_sandbox *sb, int nargs, int nresults,
                                      struct brm_err *err);

/*
 * Charges UNITS of the running call's budget for work done in C, where the
 * count hook never fires (library functions over long strings or tables,
 * the pattern matcher, JSON). Raises the budget's error when it is spent,
 * or when the call's time limit has passed; cheap enough to call every few
 * dozen steps of a loop (no clock is read). Does nothing outside a call.
 */
void brm_sandbox_charge(lua_State *L, long units);
/* A unit stands for about one VM instruction's worth of work: */
#define BRM_SANDBOX_BYTES_PER_UNIT      64                     /* bytes allocated or copied */
#define BRM_SANDBOX_SCAN_BYTES_PER_UNIT BRM_LIBRARY_SCAN_BYTES /* read one at a time */

/*
 * For C code that user code called: stops the whole running call for good,
 * as the budget does (the error WHY is raised now and then again at every
 * instruction, so neither pcall nor xpcall's handler gets more code done),
 * and brm_sandbox_call returns BRM_CALL_ABORTED with ERR holding WHY and
 * the file:line of the code that called. Never returns; typed int for
 * `return brm_sandbox_abort(L, why)`. Outside a call it only raises WHY.
 */
int brm_sandbox_abort(lua_State *L, const char *why);

/* Caps what the VM may hold at BYTES (0 lifts it), user code running or
 * not: C code filling the VM (decoding a body) then fails with LUA_ERRMEM
 * past it instead of taking what rules need. */
void brm_sandbox_set_ceiling(struct brm_sandbox *sb, size_t bytes);

/* Bytes the VM holds now, and its cap (0: none). */
size_t brm_sandbox_memory(const struct brm_sandbox *sb);
size_t brm_sandbox_memory_limit(const struct brm_sandbox *sb);

/* Wraps the table at IDX in a read-only proxy (tables inside it are wrapped
 * as they are reached); NAME appears in the error a write raises. [-0, +1] */
void brm_sandbox_push_readonly(lua_State *L, int idx, const char *name);

#endif
