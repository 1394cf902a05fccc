/*
 * json: the JSON codec of a VM, and Mist's envelope. lua-cjson does the
 * work under lua_pcall (its errors are Lua errors); this module sets its
 * limits, turns whole numbers back into Lua integers (Debian's lua-cjson
 * 2.1.0 decodes every number as a float, so a count of 16 would print as
 * "16.0" in a rule), and checks that a body is {"topic": string,
 * "events": [object, ...]}. No user code runs here. This is DESIGN.md's
 * "decode" module, named for what it holds. Depends on Lua, lua-cjson, util.
 */
#ifndef BRM_JSON_H
#define BRM_JSON_H

#include <lua.h>
#include <stddef.h>

#include "util.h"

#define BRM_TOPIC_MAX 128

/* Loads a lua-cjson instance with brume's settings into L's registry and
 * pushes its module table (encode, decode, null). [-0, +1] */
void brm_json_open(lua_State *L);

/* Decodes S into a Lua value. Returns 0 and pushes it, or -1 with ERR set
 * ("Expected value but found T_END at character 1") and nothing pushed.
 * [-0, +(0|1)] */
int brm_json_decode(lua_State *L, const char *s, size_t len, struct brm_err *err);

/* Encodes the value at IDX. Returns 0 and pushes the JSON text as a Lua
 * string, or -1 with ERR set and nothing pushed. [-0, +(0|1)] */
int brm_json_encode(lua_State *L, int idx, struct brm_err *err);

struct brm_envelope {
    char topic[BRM_TOPIC_MAX]; /* as sent */
    char name[BRM_TOPIC_MAX];  /* normalised: '_' read as '-' */
    int known;                 /* a topic Mist documents */
    size_t nevents;
};

/*
 * Decodes a webhook body and checks its envelope. Returns 0 and pushes the
 * envelope table, or -1 with a one-line reason in ERR (for the 400) and
 * nothing pushed. [-0, +(0|1)]
 */
int brm_json_envelope(lua_State *L, const char *body, size_t len, struct brm_envelope *env,
                      struct brm_err *err);

/* Writes topic S with '_' read as '-' (Mist's examples say device_events
 * where its subscriptions say device-events). -1 when it does not fit. */
int brm_topic_normalize(const char *s, size_t n, char *out, size_t size);
/* 1 when NAME (normalised) is a topic Mist documents. */
int brm_topic_known(const char *name);

#endif
