#include "sandbox.h"

#include <errno.h>
#include <lauxlib.h>
#include <lualib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "embedded.h"
#include "pattern.h"
#include "snapshot.h"

/* How many instructions pass between two looks at the budget, and how many
 * looks between two looks at the clock. */
#define HOOK_STEP  1000
#define CLOCK_STEP 8
/* Largest Lua source file read from disk. */
#define MAX_SOURCE (4u << 20)

struct brm_sandbox {
    lua_State *L;
    size_t used, limit;
    size_t ceiling; /* when set, the VM holds no more, user code or not */
    int enforce;    /* >0 while user code runs: the cap applies */
    int limit_hit;  /* the last refusal came from the cap */
    long budget;    /* instructions per outermost call */
    long left;      /* of the current call */
    int exhausted;
    const char *why;               /* what ran out: "instruction budget", "time limit" */
    uint64_t time_limit, deadline; /* ns per outermost call, and when it ends */
    unsigned hooks;
    char mem_file[256]; /* where the memory cap was first hit in this call */
    int mem_line;
    char *scripts_dir, *rules_dir;
    struct brm_snapshot *files; /* what user code is read through (a reference) */
};

/* Registry keys: addresses of these statics. */
static const char LIBRARY_KEY, ENV_MT_KEY, LOADED_KEY, PROXIES_KEY, PROXY_OF_KEY;
/* Marks a module that is being loaded, to catch circular requires. */
static const char LOADING;

/* Notes where user code runs now, for a memory error: no message handler
 * runs for those. Only reads the call stack (no allocation), which is safe
 * from inside the allocator. */
static void note_position(struct brm_sandbox *sb) {
    lua_Debug ar;
    sb->mem_file[0] = '\0';
    sb->mem_line = 0;
    for (int level = 0; sb->L && lua_getstack(sb->L, level, &ar); level++) {
        if (!lua_getinfo(sb->L, "Sl", &ar) || ar.currentline <= 0) continue;
        snprintf(sb->mem_file, sizeof(sb->mem_file), "%s", ar.short_src);
        sb->mem_line = ar.currentline;
        return;
    }
}

static void exhaust(struct brm_sandbox *sb, const char *why);
static int out_of_time(const struct brm_sandbox *sb);

/* Allocating is charged to the budget as the work of filling what was
 * allocated: the count hook sees one instruction in a ".." of two long
 * strings, or in a string.rep, whatever they copy. A call that runs out
 * does not fail here (only the cap does that) but at its next instruction:
 * lua_sethook may be called from anywhere. */
static void charge_allocation(struct brm_sandbox *sb, size_t bytes) {
    sb->left -= (long)(bytes / BRM_SANDBOX_BYTES_PER_UNIT);
    if (sb->exhausted) return;
    if (sb->budget > 0 && sb->left <= 0)
        exhaust(sb, "instruction budget");
    else if (bytes >= (64u << 10) && out_of_time(sb))
        exhaust(sb, "time limit");
}

static void *sandbox_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    struct brm_sandbox *sb = ud;
    if (!ptr) osize = 0; /* then osize tells the object's type, not a size */
    if (nsize == 0) {
        free(ptr);
        sb->used -= osize;
        return NULL;
    }
    if (nsize > osize && sb->ceiling && sb->used + (nsize - osize) > sb->ceiling)
        return NULL; /* Lua collects garbage, retries, then raises LUA_ERRMEM */
    if (nsize > osize && sb->enforce > 0) {
        if (sb->limit && sb->used + (nsize - osize) > sb->limit) {
            if (!sb->limit_hit) note_position(sb);
            sb->limit_hit = 1;
            return NULL; /* Lua collects garbage, retries, then raises LUA_ERRMEM */
        }
        charge_allocation(sb, nsize - osize);
    }
    void *p = realloc(ptr, nsize);
    if (!p) return NULL;
    sb->used = sb->used - osize + nsize;
    return p;
}

struct brm_sandbox *brm_sandbox_of(lua_State *L) {
    void *ud;
    lua_getallocf(L, &ud);
    return ud;
}

/* ---- read-only proxies -------------------------------------------------- */

static int ro_newindex(lua_State *L) {
    return luaL_error(L, "attempt to modify read-only table '%s' (field '%s')",
                      lua_tostring(L, lua_upvalueindex(1)), luaL_tolstring(L, 2, NULL));
}

/* __index of a proxy over a table that holds tables: wraps what it returns. */
static int ro_index(lua_State *L) {
    lua_settop(L, 2);
    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(1)) == LUA_TTABLE) {
        const char *key = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : "?";
        const char *name = lua_pushfstring(L, "%s.%s", lua_tostring(L, lua_upvalueindex(2)), key);
        brm_sandbox_push_readonly(L, 3, name);
    }
    return 1;
}

static int ro_len(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)lua_rawlen(L, lua_upvalueindex(1)));
    return 1;
}

/* next() over the real table, handing out proxies for table values. */
static int ro_next(lua_State *L) {
    lua_settop(L, 2);
    if (!lua_next(L, lua_upvalueindex(1))) return 0;
    if (lua_type(L, -1) == LUA_TTABLE) {
        brm_sandbox_push_readonly(L, -1, lua_tostring(L, lua_upvalueindex(2)));
        lua_replace(L, -2);
    }
    return 2;
}

static int ro_pairs(lua_State *L) {
    lua_getmetatable(L, 1);
    lua_getfield(L, -1, "__next");
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

static int holds_tables(lua_State *L, int idx) {
    idx = lua_absindex(L, idx);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -1) == LUA_TTABLE) {
            lua_pop(L, 2);
            return 1;
        }
        lua_pop(L, 1);
    }
    return 0;
}

static void push_proxy(lua_State *L, int idx, const char *name, int shallow);

void brm_sandbox_push_readonly(lua_State *L, int idx, const char *name) {
    push_proxy(L, idx, name, 0);
}

/* A proxy of the table at IDX. SHALLOW (the standard libraries, whose
 * fields are functions and stay so) looks fields up in the table itself;
 * otherwise every lookup goes through ro_index, which wraps any table it
 * hands out, including one added to the module later. */
static void push_proxy(lua_State *L, int idx, const char *name, int shallow) {
    idx = lua_absindex(L, idx);
    luaL_checkstack(L, 8, NULL);
    /* One proxy per table, so proxies compare equal when their tables do. */
    lua_rawgetp(L, LUA_REGISTRYINDEX, &PROXY_OF_KEY);
    lua_pushvalue(L, idx);
    if (lua_rawget(L, -2) == LUA_TTABLE) {
        lua_remove(L, -2);
        return;
    }
    lua_pop(L, 1);
    lua_newtable(L); /* the proxy */
    lua_createtable(L, 0, 7);
    lua_pushstring(L, name);
    int nameidx = lua_gettop(L);
    if (!shallow || holds_tables(L, idx)) {
        lua_pushvalue(L, idx);
        lua_pushvalue(L, nameidx);
        lua_pushcclosure(L, ro_index, 2);
    } else {
        lua_pushvalue(L, idx); /* plain lookups need no C call */
    }
    lua_setfield(L, -3, "__index");
    lua_pushvalue(L, nameidx);
    lua_pushcclosure(L, ro_newindex, 1);
    lua_setfield(L, -3, "__newindex");
    lua_pushvalue(L, idx);
    lua_pushcclosure(L, ro_len, 1);
    lua_setfield(L, -3, "__len");
    lua_pushvalue(L, idx);
    lua_pushvalue(L, nameidx);
    lua_pushcclosure(L, ro_next, 2);
    lua_setfield(L, -3, "__next");
    lua_pushcfunction(L, ro_pairs);
    lua_setfield(L, -3, "__pairs");
    lua_pushboolean(L, 0);
    lua_setfield(L, -3, "__metatable");
    lua_pop(L, 1); /* name */
    lua_setmetatable(L, -2);
    /* Remember it: table -> proxy (weak), and the proxy as one of ours. */
    lua_pushvalue(L, idx);
    lua_pushvalue(L, -2);
    lua_rawset(L, -4);
    lua_remove(L, -2);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &PROXIES_KEY);
    lua_pushvalue(L, -2);
    lua_pushboolean(L, 1);
    lua_rawset(L, -3);
    lua_pop(L, 1);
}

static int is_proxy(lua_State *L, int idx) {
    lua_rawgetp(L, LUA_REGISTRYINDEX, &PROXIES_KEY);
    lua_pushvalue(L, idx);
    int yes = lua_rawget(L, -2) != LUA_TNIL;
    lua_pop(L, 2);
    return yes;
}

/* ---- charging library functions for their work in C --------------------- */

/* How a library function's C work is measured. */
enum cost {
    COST_STRING,  /* the bytes of argument 1 */
    COST_STRINGS, /* the bytes of every string argument */
    COST_LENGTH,  /* the length of the table at argument 1 (insert, remove) */
    COST_SORT,    /* n log n comparisons for the table at argument 1 */
    COST_RANGE,   /* the elements from integer argument I to argument I + 1 */
    COST_SOURCE,  /* compiling the string at argument 1 */
};

static long string_units(lua_State *L, int i) {
    return lua_type(L, i) == LUA_TSTRING ? (long)(lua_rawlen(L, i) / BRM_SANDBOX_BYTES_PER_UNIT)
                                         : 0;
}

/* The units a call with these arguments costs. Argument 1 is checked here,
 * so that its error names the function the rule called. */
static long cost_of(lua_State *L, enum cost kind, int arg) {
    int n = lua_gettop(L);
    long units = 1;
    if (kind == COST_LENGTH || kind == COST_SORT || kind == COST_RANGE)
        luaL_checktype(L, 1, LUA_TTABLE);
    switch (kind) {
    case COST_STRING:
        luaL_checklstring(L, 1, NULL);
        units += string_units(L, 1);
        break;
    case COST_STRINGS:
        for (int i = 1; i <= n; i++) units += string_units(L, i);
        break;
    case COST_LENGTH:
        if (lua_type(L, 1) == LUA_TTABLE) units += (long)lua_rawlen(L, 1);
        break;
    case COST_SORT:
        if (lua_type(L, 1) == LUA_TTABLE) {
            double len = (double)lua_rawlen(L, 1);
            units += (long)(len * log2(len + 1));
        }
        break;
    case COST_RANGE: {
        int ok_from, ok_to; /* 3e8 counts: Lua takes floats with integer values */
        double from = (double)lua_tointegerx(L, arg, &ok_from);
        double to = (double)lua_tointegerx(L, arg + 1, &ok_to);
        if (ok_from && ok_to && to >= from) units += (long)fmin(to - from + 1, 1e15);
        break;
    }
    case COST_SOURCE: units += string_units(L, 1); break; /* scanning; the code is allocated */
    }
    return units;
}

/* The charged stand-in of a library function: upvalue 1 the function, 2
 * the cost kind, 3 the argument COST_RANGE starts at. Charged before the
 * call: table.move walks its range whether or not anything is there. */
static int charged(lua_State *L) {
    brm_sandbox_charge(L, cost_of(L, (enum cost)lua_tointeger(L, lua_upvalueindex(2)),
                                  (int)lua_tointeger(L, lua_upvalueindex(3))));
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

/* string.rep: Lua's loops N times even when the result is empty, which no
 * allocation pays for; here that is "" at once. (What it copies otherwise
 * is charged as it is allocated.) */
static int api_rep(lua_State *L) {
    size_t ls, lsep = 0;
    luaL_checklstring(L, 1, &ls);
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_optlstring(L, 3, "", &lsep);
    if (n <= 0 || (ls == 0 && lsep == 0)) {
        lua_pushliteral(L, "");
        return 1;
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

/* The functions whose C work is not paid for by what they allocate (which
 * the allocator charges): they scan, shift or walk. */
static const struct charge_spec {
    const char *lib, *name;
    enum cost kind;
    int arg; /* COST_RANGE: the first index argument */
} charges[] = {
    { "string", "byte", COST_STRING, 0 },  { "string", "unpack", COST_STRINGS, 0 },
    { "table", "insert", COST_LENGTH, 0 }, { "table", "remove", COST_LENGTH, 0 },
    { "table", "sort", COST_SORT, 0 },     { "table", "move", COST_RANGE, 2 },
    { "table", "unpack", COST_RANGE, 2 },  { "utf8", "len", COST_STRING, 0 },
    { "utf8", "offset", COST_STRING, 0 },  { "utf8", "codepoint", COST_STRING, 0 },
    { "_G", "tonumber", COST_STRINGS, 0 },
};

/* Replaces the functions of CHARGES found in the table at IDX (library
 * NAME) with charged ones; string.rep with api_rep. */
static void charge_library(lua_State *L, int idx, const char *name) {
    idx = lua_absindex(L, idx);
    for (size_t i = 0; i < BRM_ARRAY_LEN(charges); i++) {
        if (strcmp(charges[i].lib, name) != 0) continue;
        if (lua_getfield(L, idx, charges[i].name) != LUA_TFUNCTION) {
            lua_pop(L, 1);
            continue;
        }
        lua_pushinteger(L, charges[i].kind);
        lua_pushinteger(L, charges[i].arg);
        lua_pushcclosure(L, charged, 3);
        lua_setfield(L, idx, charges[i].name);
    }
    if (strcmp(name, "string") == 0) {
        lua_getfield(L, idx, "rep");
        lua_pushcclosure(L, api_rep, 1);
        lua_setfield(L, idx, "rep");
    }
}

/* ---- the safe library --------------------------------------------------- */

static int api_setmetatable(lua_State *L) {
    int t = lua_type(L, 2);
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_argexpected(L, t == LUA_TNIL || t == LUA_TTABLE, 2, "nil or table");
    /* A finalizer would run whenever the collector pleases, outside any
     * budget: a looping __gc could hang the worker. */
    if (t == LUA_TTABLE && lua_getfield(L, 2, "__gc") != LUA_TNIL)
        return luaL_error(L, "__gc metamethods are not allowed in rules");
    if (luaL_getmetafield(L, 1, "__metatable") != LUA_TNIL)
        return luaL_error(L, "cannot change a protected metatable");
    lua_settop(L, 2);
    lua_setmetatable(L, 1);
    return 1;
}

static int api_rawset(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checkany(L, 2);
    luaL_checkany(L, 3);
    if (is_proxy(L, 1)) return luaL_error(L, "attempt to modify a read-only table");
    lua_settop(L, 3);
    lua_rawset(L, 1);
    return 1;
}

static int api_collectgarbage(lua_State *L) {
    const char *opt = luaL_optstring(L, 1, "collect");
    if (strcmp(opt, "count") != 0)
        return luaL_error(L, "collectgarbage: only \"count\" is allowed in rules");
    int kb = lua_gc(L, LUA_GCCOUNT), b = lua_gc(L, LUA_GCCOUNTB);
    lua_pushnumber(L, (lua_Number)kb + (lua_Number)b / 1024);
    return 1;
}

/*
 * xpcall(f, handler, ...). Lua calls a message handler before unwinding,
 * and when the error comes from the budget's hook, hooks are still off at
 * that point: a handler that loops would run forever. Rules have no debug
 * library, so all a handler can do is turn the error value into another;
 * this xpcall unwinds first (a plain pcall) and then calls the handler as
 * ordinary code, under the budget. A failing handler's error is returned
 * as xpcall's would be.
 */
static int api_xpcall(lua_State *L) {
    int n = lua_gettop(L);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushvalue(L, 1);
    for (int i = 3; i <= n; i++) lua_pushvalue(L, i);
    if (lua_pcall(L, n - 2, LUA_MULTRET, 0) == LUA_OK) {
        lua_pushboolean(L, 1);
        lua_replace(L, n); /* n >= 2: the handler's slot is free now */
        return lua_gettop(L) - n + 1;
    }
    lua_pushvalue(L, 2);
    lua_insert(L, -2);
    lua_pcall(L, 1, 1, 0);
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
}

/* Pushes a fresh chunk environment: its own globals, misses go to the
 * library; _G names the environment itself. [-0, +1] */
static void push_env(lua_State *L) {
    lua_createtable(L, 0, 2);
    lua_pushvalue(L, -1);
    lua_setfield(L, -2, "_G");
    lua_rawgetp(L, LUA_REGISTRYINDEX, &ENV_MT_KEY);
    lua_setmetatable(L, -2);
}

/* load(chunk [, chunkname [, mode [, env]]]): text only; the loaded code
 * gets a fresh environment unless one is given. */
static int api_load(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    const char *name = luaL_optstring(L, 2, "=(load)");
    const char *mode = luaL_optstring(L, 3, "t");
    if (!strchr(mode, 't')) return luaL_error(L, "load: only text chunks are allowed");
    int has_env = !lua_isnone(L, 4);
    brm_sandbox_charge(L, cost_of(L, COST_SOURCE, 0));
    if (luaL_loadbufferx(L, s, len, name, "t") != LUA_OK) {
        luaL_pushfail(L);
        lua_insert(L, -2);
        return 2;
    }
    if (has_env)
        lua_pushvalue(L, 4);
    else
        push_env(L);
    lua_setupvalue(L, -2, 1);
    return 1;
}

static const char *const base_names[] = {
    "assert",   "error", "ipairs",   "next",   "pairs",  "pcall",        "select",   "tonumber",
    "tostring", "type",  "rawequal", "rawlen", "rawget", "getmetatable", "_VERSION",
};

static const luaL_Reg wrapped[] = {
    { "setmetatable", api_setmetatable },
    { "rawset", api_rawset },
    { "collectgarbage", api_collectgarbage },
    { "load", api_load },
    { "xpcall", api_xpcall },
    { NULL, NULL },
};

/* Opens a standard library, strips what rules must not have, and files a
 * read-only proxy of it into the library table at LIB. */
static void add_stdlib(lua_State *L, int lib, const char *name, lua_CFunction open,
                       const char *const *drop, const char *const *keep) {
    luaL_requiref(L, name, open, 0);
    int t = lua_gettop(L);
    if (keep) {
        lua_newtable(L);
        for (; *keep; keep++) {
            lua_getfield(L, t, *keep);
            lua_setfield(L, -2, *keep);
        }
        lua_replace(L, t);
    }
    for (; drop && *drop; drop++) {
        lua_pushnil(L);
        lua_setfield(L, t, *drop);
    }
    charge_library(L, t, name);
    push_proxy(L, t, name, 1);
    lua_setfield(L, lib, name);
    lua_pop(L, 1);
}

static int api_require(lua_State *L);

static void open_library(struct brm_sandbox *sb) {
    lua_State *L = sb->L;
    static const char *const no_dump[] = { "dump", NULL };
    static const char *const os_keep[] = { "time", "clock", "date", "difftime", NULL };

    lua_newtable(L); /* weak map table -> proxy */
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &PROXY_OF_KEY);
    lua_newtable(L); /* weak set of proxies */
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &PROXIES_KEY);
    lua_newtable(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &LOADED_KEY);

    luaL_requiref(L, "_G", luaopen_base, 0);
    int g = lua_gettop(L);
    lua_newtable(L);
    int lib = lua_gettop(L);
    for (size_t i = 0; i < BRM_ARRAY_LEN(base_names); i++) {
        lua_getfield(L, g, base_names[i]);
        lua_setfield(L, lib, base_names[i]);
    }
    luaL_setfuncs(L, wrapped, 0);
    charge_library(L, lib, "_G");
    lua_pushlightuserdata(L, sb);
    lua_pushcclosure(L, api_require, 1);
    lua_setfield(L, lib, "require");

    add_stdlib(L, lib, "string", luaopen_string, no_dump, NULL);
    add_stdlib(L, lib, "table", luaopen_table, NULL, NULL);
    add_stdlib(L, lib, "math", luaopen_math, NULL, NULL);
    add_stdlib(L, lib, "utf8", luaopen_utf8, NULL, NULL);
    add_stdlib(L, lib, "os", luaopen_os, NULL, os_keep);

    /* Lock the string metatable: getmetatable("") must not hand out the
     * table every string method is looked up in. Its __index is the string
     * library itself, whose matchers become budgeted ones (pattern.h). */
    lua_pushliteral(L, "");
    lua_getmetatable(L, -1);
    lua_getfield(L, -1, "__index");
    brm_pattern_open(L, -1, brm_sandbox_charge);
    lua_pop(L, 1);
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 2);

    lua_pushvalue(L, lib);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &LIBRARY_KEY);
    lua_createtable(L, 0, 2); /* shared by every environment, so locked */
    lua_pushvalue(L, lib);
    lua_setfield(L, -2, "__index");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &ENV_MT_KEY);
    lua_settop(L, g - 1);
}

struct brm_sandbox *brm_sandbox_new(const struct brm_sandbox_opts *opts) {
    struct brm_sandbox *sb = brm_xcalloc(1, sizeof(*sb));
    sb->limit = opts->memory;
    sb->budget = opts->instructions;
    sb->time_limit = (uint64_t)(opts->time_limit * 1e9);
    sb->scripts_dir = opts->scripts_dir ? brm_xstrdup(opts->scripts_dir) : NULL;
    sb->rules_dir = opts->rules_dir ? brm_xstrdup(opts->rules_dir) : NULL;
    sb->files = opts->files ? brm_snapshot_ref(opts->files) : brm_snapshot_new();
    sb->L = lua_newstate(sandbox_alloc, sb);
    if (!sb->L) {
        fprintf(stderr, "brume: cannot create a Lua state\n");
        abort();
    }
    /* Most garbage is one request's events: the generational mode frees it
     * young, without full sweeps over the rule set. */
    lua_gc(sb->L, LUA_GCGEN, 0, 0);
    open_library(sb);
    return sb;
}

void brm_sandbox_free(struct brm_sandbox *sb) {
    if (!sb) return;
    if (sb->L) lua_close(sb->L);
    free(sb->scripts_dir);
    free(sb->rules_dir);
    brm_snapshot_free(sb->files);
    free(sb);
}

struct brm_snapshot *brm_sandbox_files(struct brm_sandbox *sb) {
    return sb->files;
}

lua_State *brm_sandbox_state(struct brm_sandbox *sb) {
    return sb->L;
}

size_t brm_sandbox_memory(const struct brm_sandbox *sb) {
    return sb->used;
}

void brm_sandbox_set_ceiling(struct brm_sandbox *sb, size_t bytes) {
    sb->ceiling = bytes;
}

size_t brm_sandbox_memory_limit(const struct brm_sandbox *sb) {
    return sb->limit;
}

void brm_sandbox_push_library(struct brm_sandbox *sb) {
    lua_rawgetp(sb->L, LUA_REGISTRYINDEX, &LIBRARY_KEY);
}

void brm_sandbox_expose(struct brm_sandbox *sb, const char *name) {
    lua_State *L = sb->L;
    int v = lua_gettop(L);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &LIBRARY_KEY);
    if (lua_type(L, v) == LUA_TTABLE) {
        brm_sandbox_push_readonly(L, v, name);
        lua_rawgetp(L, LUA_REGISTRYINDEX, &LOADED_KEY);
        lua_pushvalue(L, -2);
        lua_setfield(L, -2, name);
        lua_pop(L, 1);
    } else {
        lua_pushvalue(L, v);
    }
    lua_setfield(L, -2, name);
    lua_settop(L, v - 1);
}

/* ---- loading ------------------------------------------------------------ */

/* Splits "file:12: msg" into ERR; a message without a position is kept whole. */
static void split_position(struct brm_err *err, const char *msg) {
    const char *p = msg;
    while ((p = strchr(p, ':')) != NULL) {
        const char *d = p + 1;
        while (*d >= '0' && *d <= '9') d++;
        if (d > p + 1 && d[0] == ':' && d[1] == ' ') {
            size_t flen = (size_t)(p - msg);
            if (flen >= sizeof(err->file)) flen = sizeof(err->file) - 1;
            memcpy(err->file, msg, flen);
            err->file[flen] = '\0';
            err->line = atoi(p + 1);
            snprintf(err->msg, sizeof(err->msg), "%s", d + 2);
            return;
        }
        p++;
    }
    brm_err_set(err, "%s", msg);
}

int brm_sandbox_loadbuffer(struct brm_sandbox *sb, const char *src, size_t len,
                           const char *chunkname, struct brm_err *err) {
    lua_State *L = sb->L;
    sb->enforce++; /* compiling user text may not blow the cap either */
    int st = luaL_loadbufferx(L, src, len, chunkname, "t");
    sb->enforce--;
    if (st != LUA_OK) {
        if (st == LUA_ERRMEM)
            brm_err_at(err, chunkname + 1, 0, "memory limit reached while compiling");
        else
            split_position(err, lua_tostring(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    push_env(L);
    lua_setupvalue(L, -2, 1);
    return 0;
}

int brm_sandbox_loadfile(struct brm_sandbox *sb, const char *path, const char *display,
                         struct brm_err *err) {
    struct brm_buf src;
    brm_buf_init(&src);
    if (brm_snapshot_read(sb->files, path, MAX_SOURCE, &src) < 0) {
        brm_err_at(err, display, 0, "cannot read: %s", strerror(errno));
        brm_buf_reset(&src);
        return -1;
    }
    char *chunkname = brm_xasprintf("@%s", display);
    int rc = brm_sandbox_loadbuffer(sb, src.data ? src.data : "", src.len, chunkname, err);
    free(chunkname);
    brm_buf_reset(&src);
    return rc;
}

/* Module names are dotted words: no "..", no slashes, nothing absolute. */
static int valid_module_name(const char *s) {
    if (!*s || *s == '.') return 0;
    for (const char *p = s; *p; p++) {
        int ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
                 *p == '_' || *p == '-' || *p == '.';
        if (!ok || (p[0] == '.' && (p[1] == '.' || p[1] == '\0'))) return 0;
    }
    return 1;
}

/* Finds module NAME and pushes its loaded chunk; raises when it is missing
 * or does not compile. */
static void find_module(lua_State *L, struct brm_sandbox *sb, const char *name) {
    char rel[512];
    struct brm_err err;
    snprintf(rel, sizeof(rel), "%s.lua", name);
    for (char *p = rel; *p && strcmp(p, ".lua") != 0; p++)
        if (*p == '.') *p = '/';
    const char *dirs[] = { sb->scripts_dir, sb->rules_dir };
    for (size_t i = 0; i < BRM_ARRAY_LEN(dirs); i++) {
        if (!dirs[i]) continue;
        char *path = brm_path_join(dirs[i], rel);
        struct brm_buf probe;
        brm_buf_init(&probe);
        int there = brm_snapshot_read(sb->files, path, MAX_SOURCE, &probe) == 0 || errno != ENOENT;
        brm_buf_reset(&probe);
        if (there) {
            char *display = brm_path_display(path);
            int rc = brm_sandbox_loadfile(sb, path, display, &err);
            free(display);
            free(path);
            if (rc < 0) goto fail;
            return;
        }
        free(path);
    }
    for (size_t i = 0; i < brm_embedded_count; i++) {
        if (strcmp(brm_embedded_scripts[i].name, rel) == 0) {
            char chunkname[600];
            snprintf(chunkname, sizeof(chunkname), "@builtin/%s", rel);
            if (brm_sandbox_loadbuffer(sb, brm_embedded_scripts[i].src, brm_embedded_scripts[i].len,
                                       chunkname, &err) < 0)
                goto fail;
            return;
        }
    }
    luaL_error(L,
               "module '%s' not found (looked for %s in the scripts and rules folders and "
               "among the built-in scripts)",
               name, rel);
    return;
fail:;
    char msg[1024];
    brm_err_format(&err, msg, sizeof(msg));
    luaL_error(L, "error loading module '%s': %s", name, msg);
}

/* Finds module NAME (argument 2) and runs its chunk. [-0, +1] */
static int load_module(lua_State *L) {
    struct brm_sandbox *sb = lua_touserdata(L, 1);
    const char *name = lua_tostring(L, 2);
    find_module(L, sb, name);
    lua_pushvalue(L, 2);
    lua_call(L, 1, 1);
    return 1;
}

static int api_require(lua_State *L) {
    struct brm_sandbox *sb = lua_touserdata(L, lua_upvalueindex(1));
    const char *name = luaL_checkstring(L, 1);
    lua_settop(L, 1);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &LOADED_KEY); /* 2 */
    lua_getfield(L, 2, name);
    if (lua_touserdata(L, -1) == &LOADING)
        return luaL_error(L, "module '%s' requires itself (circular require)", name);
    if (!lua_isnil(L, -1)) return 1;
    if (!valid_module_name(name)) return luaL_argerror(L, 1, "not a valid module name");
    lua_pushlightuserdata(L, (void *)&LOADING);
    lua_setfield(L, 2, name);
    /* Found and run protected: a module that fails (or runs out of budget
     * or memory) is forgotten, so the next require tries again instead of
     * reporting a circular require. */
    lua_pushcfunction(L, load_module);
    lua_pushlightuserdata(L, sb);
    lua_pushstring(L, name);
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
        lua_pushnil(L);
        lua_setfield(L, 2, name);
        return lua_error(L);
    }
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushboolean(L, 1);
    } else if (lua_type(L, -1) == LUA_TTABLE) {
        brm_sandbox_push_readonly(L, -1, name);
        lua_remove(L, -2);
    }
    lua_pushvalue(L, -1);
    lua_setfield(L, 2, name);
    return 1;
}

/* ---- calling ------------------------------------------------------------ */

static void count_hook(lua_State *L, lua_Debug *ar);

/* From now on every instruction raises: a pcall in the rule can catch one
 * error but not get another instruction done. */
static void exhaust(struct brm_sandbox *sb, const char *why) {
    if (sb->exhausted) return;
    sb->exhausted = 1;
    sb->why = why;
    lua_sethook(sb->L, count_hook, LUA_MASKCOUNT, 1);
}

static int out_of_time(const struct brm_sandbox *sb) {
    return sb->time_limit && brm_time_cpu_ns() > sb->deadline;
}

/* Pushes what ran out, e.g. "instruction budget exceeded (1000000
 * instructions)". [-0, +1] */
static const char *push_exhausted(lua_State *L, const struct brm_sandbox *sb) {
    if (strcmp(sb->why, "time limit") == 0)
        return lua_pushfstring(L, "time limit exceeded (%f s)", (double)sb->time_limit / 1e9);
    return lua_pushfstring(L, "instruction budget exceeded (%d instructions)", (int)sb->budget);
}

static void count_hook(lua_State *L, lua_Debug *ar) {
    struct brm_sandbox *sb = brm_sandbox_of(L);
    if (!sb->exhausted) {
        sb->left -= HOOK_STEP;
        if (sb->budget > 0 && sb->left <= 0)
            exhaust(sb, "instruction budget");
        else if (++sb->hooks % CLOCK_STEP == 0 && out_of_time(sb))
            exhaust(sb, "time limit"); /* a long string op per instruction ("..") */
        else
            return;
    }
    lua_getinfo(L, "Sl", ar);
    const char *what = push_exhausted(L, sb);
    if (ar->currentline > 0) lua_pushfstring(L, "%s:%d: %s", ar->short_src, ar->currentline, what);
    lua_error(L);
}

void brm_sandbox_charge(lua_State *L, long units) {
    struct brm_sandbox *sb = brm_sandbox_of(L);
    if (sb->enforce == 0) return;
    if (!sb->exhausted) {
        sb->left -= units;
        if (sb->budget > 0 && sb->left <= 0)
            exhaust(sb, "instruction budget");
        else if (out_of_time(sb))
            exhaust(sb, "time limit");
        else
            return;
    }
    push_exhausted(L, sb); /* the message handler places it at the rule's line */
    lua_error(L);
}

static int has_position(const char *msg) {
    const char *p = strchr(msg, ':');
    if (!p || p == msg) return 0;
    const char *d = p + 1;
    while (*d >= '0' && *d <= '9') d++;
    return d > p + 1 && d[0] == ':';
}

/* Turns any error object into "file:line: message", placing it at the
 * innermost Lua function when the message does not say where it was. */
static int msghandler(lua_State *L) {
    const char *msg = lua_tostring(L, 1);
    if (!msg) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            msg = lua_tostring(L, -1);
        else
            msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    if (has_position(msg)) {
        lua_pushstring(L, msg);
        return 1;
    }
    lua_Debug ar;
    for (int level = 1; lua_getstack(L, level, &ar); level++) {
        lua_getinfo(L, "Sl", &ar);
        if (ar.currentline > 0) {
            lua_pushfstring(L, "%s:%d: %s", ar.short_src, ar.currentline, msg);
            return 1;
        }
    }
    lua_pushstring(L, msg);
    return 1;
}

enum brm_call_status brm_sandbox_call(struct brm_sandbox *sb, int nargs, int nresults,
                                      struct brm_err *err) {
    lua_State *L = sb->L;
    int base = lua_gettop(L) - nargs;
    int outer = sb->enforce == 0;
    lua_pushcfunction(L, msghandler);
    lua_insert(L, base);
    if (outer) {
        sb->limit_hit = 0;
        sb->exhausted = 0;
        sb->left = sb->budget;
        /* CPU time, not the wall clock: waiting (for another worker's state
         * transaction, for the disk) is not the rule's doing. */
        sb->deadline = sb->time_limit ? brm_time_cpu_ns() + sb->time_limit : 0;
        if (sb->budget > 0 || sb->time_limit) lua_sethook(L, count_hook, LUA_MASKCOUNT, HOOK_STEP);
    }
    sb->enforce++;
    int st = lua_pcall(L, nargs, nresults, base);
    sb->enforce--;
    if (outer) lua_sethook(L, NULL, 0, 0);
    lua_remove(L, base);
    if (st == LUA_OK) return BRM_CALL_OK;

    enum brm_call_status rc = BRM_CALL_ERROR;
    brm_err_clear(err);
    if (st == LUA_ERRMEM) {
        rc = BRM_CALL_MEMORY;
        if (sb->limit_hit) {
            brm_err_at(err, sb->mem_line ? sb->mem_file : "", sb->mem_line,
                       "memory limit of %zu KB reached", sb->limit / 1024);
        } else {
            brm_err_set(err, "out of memory");
        }
    } else {
        const char *msg = lua_tostring(L, -1);
        split_position(err, msg ? msg : "(error in the error handler)");
        if (sb->exhausted) rc = BRM_CALL_BUDGET;
    }
    lua_pop(L, 1);
    return rc;
}
