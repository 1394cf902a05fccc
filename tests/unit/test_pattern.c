/* pattern: the budgeted matchers give what Lua's own string library gives,
 * results and errors alike, on thousands of random patterns; and their
 * steps are charged, so a backtracking pattern can be stopped. */
#include <lauxlib.h>
#include <lualib.h>
#include <stdlib.h>

#include "pattern.h"
#include "test.h"
#include "util.h"

#define CASES 4000

static long charged, charge_limit;

static void charge(lua_State *L, long steps) {
    charged += steps;
    if (charge_limit && charged > charge_limit) luaL_error(L, "budget gone");
}

/* A VM with the standard libraries, the string matchers budgeted or not. */
static lua_State *new_state(int budgeted) {
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    if (budgeted) {
        lua_getglobal(L, "string");
        brm_pattern_open(L, -1, charge);
        lua_pop(L, 1);
    }
    return L;
}

/* Runs the cases script in L and returns its text (malloc'd), or NULL.
 * The script quotes strings with %q, so the text holds no NUL. */
static char *run_cases(lua_State *L, int n) {
    if (luaL_loadfilex(L, SRCDIR "/tests/unit/pattern_cases.lua", "t") != LUA_OK) {
        fprintf(stderr, "%s\n", lua_tostring(L, -1));
        return NULL;
    }
    lua_pushinteger(L, n);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        fprintf(stderr, "%s\n", lua_tostring(L, -1));
        return NULL;
    }
    char *text = brm_xstrdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    return text;
}

/* Prints the first line where A and B differ. */
static void show_difference(const char *a, const char *b) {
    int line = 1;
    const char *sa = a, *sb = b;
    while (*a && *a == *b) {
        if (*a == '\n') {
            line++;
            sa = a + 1;
            sb = b + 1;
        }
        a++, b++;
    }
    fprintf(stderr, "  case line %d:\n  lua:   %.*s\n  brume: %.*s\n", line, (int)strcspn(sa, "\n"),
            sa, (int)strcspn(sb, "\n"), sb);
}

static void check_same_as_lua(void) {
    lua_State *ref = new_state(0), *mine = new_state(1);
    char *want = run_cases(ref, CASES), *got = run_cases(mine, CASES);
    CHECK(want != NULL && got != NULL);
    if (want && got) {
        CHECK(strlen(want) > CASES * 20); /* the script did produce the cases */
        CHECK(strcmp(want, got) == 0);
        if (strcmp(want, got) != 0) show_difference(want, got);
    }
    CHECK(charged > 0);
    free(want);
    free(got);
    lua_close(ref);
    lua_close(mine);
}

/* Returns the message of pcall(CODE) in a budgeted state, or NULL when
 * CODE succeeded. */
static char *fails(lua_State *L, const char *code) {
    CHECK(luaL_loadstring(L, code) == LUA_OK);
    if (lua_pcall(L, 0, 0, 0) == LUA_OK) return NULL;
    char *msg = brm_xstrdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    return msg;
}

static void check_charged(void) {
    lua_State *L = new_state(1);
    /* Backtracking: about n^3/6 steps for n = 3000, far past the limit. */
    static const char *const bombs[] = {
        "string.find(('a'):rep(3000), '.-.-.-b')",
        "string.match(('a'):rep(3000), '^(.*)(.*)(.*)b')",
        "for _ in string.gmatch(('a'):rep(3000), 'a*a*a*b') do end",
        "string.gsub(('a'):rep(3000), '.-.-.-b', 'x')",
        "string.find(('('):rep(3000), '%b()')",
    };
    for (size_t i = 0; i < BRM_ARRAY_LEN(bombs); i++) {
        charged = 0;
        charge_limit = 1000000;
        uint64_t t0 = brm_time_mono_ms();
        char *msg = fails(L, bombs[i]);
        CHECK_HAS(msg, "budget gone");
        CHECK(charged > charge_limit && charged < 2 * charge_limit);
        /* Stopped at its budget, not at its end (generous: sanitizers). */
        CHECK(brm_time_mono_ms() - t0 < 20000);
        free(msg);
    }
    /* Linear work is charged linearly. */
    charged = 0;
    charge_limit = 0;
    CHECK(fails(L, "assert(string.find(('a'):rep(10000) .. 'b', 'a*b') == 1)") == NULL);
    CHECK(charged >= 10000 && charged < 100000);
    /* A plain find needs no matcher: it is charged by the bytes memmem may
     * read (a step per 64), before it runs. */
    charged = 0;
    CHECK(fails(L, "assert(string.find(('a'):rep(10000), 'b', 1, true) == nil)") == NULL);
    CHECK_INT(charged, 1 + 10001 / 64);
    /* A long set is read for every character it is tried on, and where the
     * pattern is read again: 100 characters, each against a 1600-byte set
     * (a step per 16 bytes), is more than 10,000 steps; without that it
     * would be a few hundred. */
    charged = 0;
    CHECK(fails(L, "assert(not string.find(('x'):rep(100), '[' .. ('a'):rep(1600) .. ']'))") ==
          NULL);
    CHECK(charged > 100 * 1600 / 16);
    /* A back-reference compares its capture again: here about 2000 matcher
     * steps, and 500,000 bytes compared (the captures of 1 to 1000 bytes). */
    charged = 0;
    CHECK(fails(L, "assert(not (('a'):rep(2000) .. 'b'):find('^(.+)%1c'))") == NULL);
    CHECK(charged > 500000 / 16);
    lua_close(L);
}

int main(void) {
    check_same_as_lua();
    check_charged();
    return test_done();
}
