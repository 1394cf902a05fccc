#include "json.h"

#include <lauxlib.h>
#include <lua-cjson.h>
#include <math.h>
#include <string.h>

/* Mist's events nest a few levels; anything deeper is not a Mist body. */
#define MAX_DEPTH 128

static const char CODEC_KEY;

static const char *const known_topics[] = {
    "alarms",
    "asset-raw",
    "asset-raw-rssi",
    "audits",
    "client-info",
    "client-join",
    "client-latency",
    "client-sessions",
    "device-events",
    "device-updowns",
    "discovered-raw-rssi",
    "guest-authorizations",
    "location",
    "location-asset",
    "location-centrak",
    "location-client",
    "location-sdk",
    "location-unclient",
    "minis-application",
    "minis-reachability",
    "mxedge-events",
    "nac-accounting",
    "nac-events",
    "occupancy-alerts",
    "ping",
    "rssizone",
    "sdkclient-scan-data",
    "site-sle",
    "wifi-conn-raw",
    "wifi-unconn-raw",
    "zone",
};

/* Calls codec[FN](args...) with lua-cjson's settings functions. */
static void configure(lua_State *L, int codec, const char *fn, const char *arg, int num) {
    lua_getfield(L, codec, fn);
    if (arg)
        lua_pushstring(L, arg);
    else
        lua_pushinteger(L, num);
    lua_call(L, 1, 0);
}

static int null_tostring(lua_State *L) {
    lua_pushliteral(L, "null");
    return 1;
}

void brm_json_open(lua_State *L) {
    lua_pushcfunction(L, luaopen_cjson);
    lua_call(L, 0, 1);
    int codec = lua_gettop(L);
    configure(L, codec, "decode_max_depth", NULL, MAX_DEPTH);
    configure(L, codec, "encode_max_depth", NULL, MAX_DEPTH);
    /* Strict JSON in: no NaN, Infinity or hex literals. */
    lua_getfield(L, codec, "decode_invalid_numbers");
    lua_pushboolean(L, 0);
    lua_call(L, 1, 0);
    /* Lenient out: a sparse array becomes an object and NaN or infinity
     * become null, rather than failing the rule's send. */
    lua_getfield(L, codec, "encode_sparse_array");
    lua_pushboolean(L, 1);
    lua_call(L, 1, 0);
    configure(L, codec, "encode_invalid_numbers", "null", 0);
    configure(L, codec, "encode_number_precision", NULL, 14);
    /* JSON null is a light userdata, and light userdata share one
     * metatable: give it a name when printed, and lock it. */
    lua_pushlightuserdata(L, NULL);
    lua_createtable(L, 0, 2);
    lua_pushcfunction(L, null_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
    lua_pop(L, 1);
    lua_pushvalue(L, codec);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &CODEC_KEY);
}

/* Replaces whole floats by integers in the table at IDX and below. */
static void restore_integers(lua_State *L, int idx) {
    luaL_checkstack(L, 4, "JSON nesting");
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        int t = lua_type(L, -1);
        if (t == LUA_TNUMBER && !lua_isinteger(L, -1)) {
            lua_Number n = lua_tonumber(L, -1);
            /* Within (-2^63, 2^63) and whole: representable exactly. */
            if (n == floor(n) && n >= -9223372036854775808.0 && n < 9223372036854775808.0) {
                lua_pushvalue(L, -2);
                lua_pushinteger(L, (lua_Integer)n);
                lua_rawset(L, idx); /* changing an existing field keeps next() valid */
            }
        } else if (t == LUA_TTABLE) {
            restore_integers(L, lua_gettop(L));
        }
        lua_pop(L, 1);
    }
}

static int call_decode(lua_State *L) {
    /* 1: the text, 2: cjson.decode */
    lua_pushvalue(L, 1);
    lua_call(L, 1, 1);
    if (lua_type(L, -1) == LUA_TTABLE) restore_integers(L, lua_gettop(L));
    return 1;
}

int brm_json_decode(lua_State *L, const char *s, size_t len, struct brm_err *err) {
    lua_pushcfunction(L, call_decode);
    lua_pushlstring(L, s, len);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &CODEC_KEY);
    lua_getfield(L, -1, "decode");
    lua_remove(L, -2);
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        brm_err_set(err, "%s", msg ? msg : "not enough memory");
        lua_pop(L, 1);
        return -1;
    }
    return 0;
}

int brm_json_encode(lua_State *L, int idx, struct brm_err *err) {
    idx = lua_absindex(L, idx);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &CODEC_KEY);
    lua_getfield(L, -1, "encode");
    lua_remove(L, -2);
    lua_pushvalue(L, idx);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        brm_err_set(err, "%s", msg ? msg : "not enough memory");
        lua_pop(L, 1);
        return -1;
    }
    return 0;
}

int brm_topic_normalize(const char *s, size_t n, char *out, size_t size) {
    if (n >= size) return -1;
    for (size_t i = 0; i < n; i++) out[i] = s[i] == '_' ? '-' : s[i];
    out[n] = '\0';
    return 0;
}

int brm_topic_known(const char *name) {
    for (size_t i = 0; i < BRM_ARRAY_LEN(known_topics); i++)
        if (strcmp(name, known_topics[i]) == 0) return 1;
    return 0;
}

/* Checks the decoded envelope at IDX; fills ENV. */
static int check_envelope(lua_State *L, int idx, struct brm_envelope *env, struct brm_err *err) {
    size_t tlen;
    if (lua_getfield(L, idx, "topic") != LUA_TSTRING) {
        brm_err_set(err, "no string \"topic\" in the body");
        goto fail;
    }
    const char *topic = lua_tolstring(L, -1, &tlen);
    if (tlen == 0 || memchr(topic, '\0', tlen) ||
        brm_topic_normalize(topic, tlen, env->name, sizeof(env->name)) < 0) {
        brm_err_set(err, "\"topic\" must be a name of 1 to %d characters", BRM_TOPIC_MAX - 1);
        goto fail;
    }
    memcpy(env->topic, topic, tlen + 1);
    env->known = brm_topic_known(env->name);
    lua_pop(L, 1);

    if (lua_getfield(L, idx, "events") != LUA_TTABLE) {
        brm_err_set(err, "no \"events\" array in the body");
        goto fail;
    }
    int events = lua_gettop(L);
    env->nevents = lua_rawlen(L, events);
    if (env->nevents == 0) {
        /* {} and [] decode alike; an object with keys is not a batch. */
        lua_pushnil(L);
        if (lua_next(L, events)) {
            lua_pop(L, 2);
            brm_err_set(err, "\"events\" is not an array");
            goto fail;
        }
    }
    for (size_t i = 1; i <= env->nevents; i++) {
        /* An array decodes to a table too: one with a length. ([] and {}
         * decode alike, and pass as an object without fields.) */
        if (lua_rawgeti(L, events, (lua_Integer)i) != LUA_TTABLE || lua_rawlen(L, -1) > 0) {
            brm_err_set(err, "events[%zu] is not an object", i);
            lua_pop(L, 1);
            goto fail;
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return 0;
fail:
    lua_pop(L, 1);
    return -1;
}

int brm_json_envelope(lua_State *L, const char *body, size_t len, struct brm_envelope *env,
                      struct brm_err *err) {
    struct brm_err jerr;
    size_t i = 0;
    while (i < len && (body[i] == ' ' || body[i] == '\t' || body[i] == '\r' || body[i] == '\n'))
        i++;
    if (i == len) {
        brm_err_set(err, "empty body");
        return -1;
    }
    if (body[i] != '{') {
        brm_err_set(err, "body is not a JSON object");
        return -1;
    }
    if (brm_json_decode(L, body, len, &jerr) < 0) {
        brm_err_set(err, "invalid JSON: %s", jerr.msg);
        return -1;
    }
    if (check_envelope(L, lua_gettop(L), env, err) < 0) {
        lua_pop(L, 1);
        return -1;
    }
    return 0;
}
