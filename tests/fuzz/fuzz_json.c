/*
 * Decode and envelope (core/json.h) in a VM made by the sandbox, as intake
 * runs them on a body whose signature checked out: any bytes either give
 * an envelope that says what the decoded body holds, or a one-line reason
 * for the 400; the VM's stack is as it was after either. Whatever decodes
 * and encodes again decodes again, to the same value once the first round
 * has rounded its floats (a fixed point, compared value by value: key
 * order in the text may differ).
 */
#include <lauxlib.h>
#include <string.h>

#include "fuzz.h"
#include "json.h"
#include "sandbox.h"

static lua_State *L;

static lua_State *vm(void) {
    static struct brm_sandbox *sb;
    if (!sb) {
        struct brm_sandbox_opts o = { .memory = 64u << 20 };
        sb = brm_sandbox_new(&o);
        L = brm_sandbox_state(sb);
        brm_json_open(L);
        lua_pop(L, 1);
    }
    return L;
}

/* The values at A and B are equal, tables compared by content. */
static int same(int a, int b, int depth) {
    a = lua_absindex(L, a), b = lua_absindex(L, b);
    if (lua_type(L, a) != lua_type(L, b)) return 0;
    if (lua_type(L, a) != LUA_TTABLE) return lua_rawequal(L, a, b);
    MUST(depth < 200);
    luaL_checkstack(L, 8, "compare");
    size_t na = 0, nb = 0;
    int eq = 1;
    lua_pushnil(L);
    while (eq && lua_next(L, a)) {
        na++;
        lua_pushvalue(L, -2);
        lua_rawget(L, b);
        eq = same(-2, -1, depth + 1);
        lua_pop(L, 2);
    }
    if (!eq) {
        lua_pop(L, 1); /* the key lua_next left */
        return 0;
    }
    lua_pushnil(L);
    while (lua_next(L, b)) {
        nb++;
        lua_pop(L, 1);
    }
    return na == nb;
}

/* Encodes the value on top; pushes the text and returns 1, or pushes
 * nothing and returns 0. */
static int encode(void) {
    struct brm_err err;
    return brm_json_encode(L, -1, &err) == 0;
}

static int decode_text(void) {
    struct brm_err err;
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    return brm_json_decode(L, s, n, &err) == 0;
}

static void check_round_trip(const char *body, size_t len) {
    struct brm_err err;
    int top = lua_gettop(L);
    if (brm_json_decode(L, body, len, &err) < 0) {
        MUST(err.msg[0] && !strchr(err.msg, '\n'));
        MUST(lua_gettop(L) == top);
        return;
    }
    /* d1 -> t1 -> d2 -> t2 -> d3: d2 and d3 must be equal. */
    if (encode()) {
        MUST(decode_text()); /* d2 */
        MUST(encode());      /* t2 */
        MUST(decode_text()); /* d3 */
        MUST(same(-1, -3, 0));
    }
    lua_settop(L, top);
}

static void check_envelope(const char *body, size_t len) {
    struct brm_envelope env;
    struct brm_err err;
    if (brm_json_envelope(L, body, len, &env, &err) < 0) {
        MUST(err.msg[0] && !strchr(err.msg, '\n')); /* the 400's one line */
        MUST(lua_gettop(L) == 0);
        return;
    }
    MUST(lua_gettop(L) == 1 && lua_type(L, 1) == LUA_TTABLE);
    size_t tlen = strnlen(env.topic, sizeof(env.topic));
    MUST(tlen > 0 && tlen < sizeof(env.topic));
    char name[BRM_TOPIC_MAX];
    MUST(brm_topic_normalize(env.topic, tlen, name, sizeof(name)) == 0);
    MUST(strcmp(name, env.name) == 0 && env.known == brm_topic_known(name));
    MUST(lua_getfield(L, 1, "topic") == LUA_TSTRING && strcmp(lua_tostring(L, -1), env.topic) == 0);
    MUST(lua_getfield(L, 1, "events") == LUA_TTABLE && lua_rawlen(L, -1) == env.nevents);
    for (size_t i = 1; i <= env.nevents; i++) {
        MUST(lua_rawgeti(L, -1, (lua_Integer)i) == LUA_TTABLE);
        lua_pop(L, 1);
    }
    lua_settop(L, 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    vm();
    check_envelope((const char *)data, size);
    check_round_trip((const char *)data, size);
    MUST(lua_gettop(L) == 0);
    /* What the input made is freed within it, so the fuzzer's leak check
     * (more mallocs than frees in one input) only fires on a real leak. */
    lua_gc(L, LUA_GCCOLLECT);
    return 0;
}
