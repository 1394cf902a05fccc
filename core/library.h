/*
 * library: Lua's standard functions as rules get them, each priced by the
 * work it does in C, where the budget's count hook never fires. Most of
 * them do a bounded amount of work and stay as Lua made them. Some are
 * charged up front from their arguments (string.byte's values, tonumber's
 * bytes) and then run Lua's own code, in the same call frame so that their
 * errors still name them. The ones whose loops the rule steers (a __len
 * that says "huge", an __index or __newindex that is a C function, a long
 * format) are written again here so that every step is charged as it is
 * taken: table.insert, remove, move, concat, unpack and sort,
 * string.format and string.byte, utf8.len, codepoint, offset and codes.
 * The formats of string.pack, packsize, unpack and os.date are capped, so
 * one of their calls stays short. README's "The sandbox" lists how every
 * function a rule can reach is bounded. Depends on Lua.
 */
#ifndef BRM_LIBRARY_H
#define BRM_LIBRARY_H

#include <lua.h>

/* Called with the units a function's work costs; raises (a Lua error) when
 * the budget or the time is gone. */
typedef void brm_library_charge(lua_State *L, long units);

/* Bytes one unit pays for when C reads them one at a time (decoding UTF-8,
 * converting a number, escaping, scanning a format). */
#define BRM_LIBRARY_SCAN_BYTES 16
/* The longest format string.pack, packsize, unpack and os.date accept. */
#define BRM_LIBRARY_MAX_FORMAT 4096

/* Replaces the functions of library NAME ("_G", "string", "table", "utf8",
 * "os") in the table at IDX with priced ones. [-0, +0] */
void brm_library_open(lua_State *L, const char *name, int idx, brm_library_charge *charge);

/* Prices the arithmetic metamethods of the string metatable at IDX: "10" + 1
 * converts a string of any length in C. [-0, +0] */
void brm_library_open_string_meta(lua_State *L, int idx, brm_library_charge *charge);

#endif
