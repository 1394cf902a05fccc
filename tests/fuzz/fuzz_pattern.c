/*
 * The budgeted pattern matcher (core/pattern.h) against Lua's own
 * string.find, match, gmatch and gsub, on the same subject, pattern and
 * arguments: results and error messages must be the same text, as
 * tests/unit/test_pattern.c checks on random cases. A case that runs out
 * of the budget in brume's matcher is not run in Lua's (it would take as
 * long there, with nothing to stop it).
 *
 * Input: a byte choosing the function and the kinds of its arguments, a
 * byte for init, the subject's and the pattern's lengths (a byte each),
 * then the subject, the pattern, and the replacement of gsub.
 */
#include <lauxlib.h>
#include <lualib.h>
#include <string.h>

#include "fuzz.h"
#include "pattern.h"
#include "util.h"

#define BUDGET 200000 /* matcher steps */

static const char driver[] =
    "local fn, s, p, init, plain, repl, rkind, max = ...\n"
    "local out = {}\n"
    "local function put(...)\n"
    "  local t = {}\n"
    "  for i = 1, select('#', ...) do\n"
    "    local v = select(i, ...)\n"
    "    t[i] = type(v) == 'string' and ('%q'):format(v) or type(v) .. ':' .. tostring(v)\n"
    "  end\n"
    "  out[#out + 1] = table.concat(t, '|')\n"
    "end\n"
    "if fn == 0 then put(pcall(string.find, s, p, init, plain))\n"
    "elseif fn == 1 then put(pcall(string.match, s, p, init))\n"
    "elseif fn == 2 then put(pcall(function()\n"
    "  local r = {}\n"
    "  for a, b in string.gmatch(s, p, init) do\n"
    "    r[#r + 1] = tostring(a) .. ',' .. tostring(b)\n"
    "    if #r >= 50 then break end\n"
    "  end\n"
    "  return table.concat(r, ';')\n"
    "end))\n"
    "else\n"
    "  local r = repl\n"
    "  if rkind == 1 then r = { [repl] = 'T', a = false, b = 7 }\n"
    "  elseif rkind == 2 then r = function(...) return ... end\n"
    "  elseif rkind == 3 then r = function(c) return #c > 2 and c:upper() or nil end end\n"
    "  put(pcall(string.gsub, s, p, r, max))\n"
    "end\n"
    "return table.concat(out, '\\n')\n";

static long charged;
static int over_budget;

static void charge(lua_State *L, long steps) {
    charged += steps;
    if (charged > BUDGET) {
        over_budget = 1;
        luaL_error(L, "budget gone");
    }
}

static lua_State *new_state(int budgeted) {
    lua_State *L = luaL_newstate();
    MUST(L != NULL);
    luaL_openlibs(L);
    if (budgeted) {
        lua_getglobal(L, "string");
        brm_pattern_open(L, -1, charge);
        lua_pop(L, 1);
    }
    MUST(luaL_loadbufferx(L, driver, sizeof(driver) - 1, "=driver", "t") == LUA_OK);
    lua_setglobal(L, "driver");
    return L;
}

struct call {
    int fn, plain, rkind, init, max;
    const char *s, *p, *repl;
    size_t slen, plen, rlen;
};

/* Runs the driver on C in L; returns its text (a copy) or NULL. */
static char *run(lua_State *L, const struct call *c) {
    lua_getglobal(L, "driver");
    lua_pushinteger(L, c->fn);
    lua_pushlstring(L, c->s, c->slen);
    lua_pushlstring(L, c->p, c->plen);
    if (c->init)
        lua_pushinteger(L, c->init);
    else
        lua_pushnil(L);
    if (c->plain)
        lua_pushboolean(L, c->plain - 1);
    else
        lua_pushnil(L);
    lua_pushlstring(L, c->repl, c->rlen);
    lua_pushinteger(L, c->rkind);
    if (c->max >= 0)
        lua_pushinteger(L, c->max);
    else
        lua_pushnil(L);
    int rc = lua_pcall(L, 8, 1, 0);
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    char *out = rc == LUA_OK && s ? brm_xstrndup(s, n) : NULL;
    lua_settop(L, 0);
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static lua_State *mine, *lua;
    if (!mine) {
        mine = new_state(1);
        lua = new_state(0);
    }
    struct fuzz_in in = { data, size };
    struct call c;
    uint8_t kinds = fuzz_byte(&in), init = fuzz_byte(&in);
    size_t slen = fuzz_byte(&in), plen = fuzz_byte(&in);
    c.fn = kinds & 3;
    c.plain = (kinds >> 2) & 3 ? ((kinds >> 2) & 3) % 2 + 1 : 0; /* nil, false, true */
    c.rkind = (kinds >> 4) & 3;
    c.max = kinds & 0x40 ? (kinds >> 7) + (init & 3) : -1;
    c.init = (int)(int8_t)init % 24;
    c.s = fuzz_bytes(&in, slen, &c.slen);
    c.p = fuzz_bytes(&in, plen, &c.plen);
    c.repl = fuzz_bytes(&in, 32, &c.rlen);

    charged = 0;
    over_budget = 0;
    char *got = run(mine, &c);
    if (!over_budget) {
        char *want = run(lua, &c);
        MUST(want != NULL && got != NULL);
        if (strcmp(want, got) != 0) {
            fprintf(stderr, "lua:   %s\nbrume: %s\n", want, got);
            MUST(!"brume's matcher differs from Lua's");
        }
        free(want);
    }
    free(got);
    MUST(lua_gettop(mine) == 0 && lua_gettop(lua) == 0);
    /* What the input made is freed within it, so the fuzzer's leak check
     * (more mallocs than frees in one input) only fires on a real leak. */
    lua_gc(mine, LUA_GCCOLLECT);
    lua_gc(lua, LUA_GCCOLLECT);
    return 0;
}
