/*
 * json: brume's JSON codec, and Mist's envelope. Decoding reads strict JSON
 * (RFC 8259) straight into Lua values: whole numbers are Lua integers (16,
 * not 16.0; integers are read exactly, up to 64 bits), strings are kept
 * byte for byte (an SSID need not be UTF-8), null is brume.null (a light
 * userdata NULL), and each table is made at its final size. It runs under
 * lua_pcall, and every byte it takes comes from the VM's allocator, so the
 * sandbox's memory cap holds. Encoding reads tables raw (no metamethod, no
 * user code runs), grows its text through the VM's allocator up to
 * BRM_JSON_MAX_TEXT, and never escapes '/'. The envelope check makes sure a
 * body is {"topic": string, "events": [object, ...]}. This is DESIGN.md's
 * "decode" module, named for what it holds. Depends on Lua, util.
 */
#ifndef BRM_JSON_H
#define BRM_JSON_H

#include <lua.h>
#include <stddef.h>

#include "util.h"

#define BRM_TOPIC_MAX 128
/* The longest text brm_json_encode makes; past it the encode fails. */
#define BRM_JSON_MAX_TEXT ((size_t)64 << 20)
/* How deep arrays and objects may nest, in and out. */
#define BRM_JSON_MAX_DEPTH 128

/* Gives JSON null (light userdata NULL) its metatable (__tostring "null",
 * locked) and pushes a module table: encode, decode (both raise on
 * failure) and null. [-0, +1] */
void brm_json_open(lua_State *L);

/*
 * Decodes S into a Lua value. Returns 0 and pushes it; -1 with ERR set to
 * a reason naming the byte ("unexpected character 'x' at byte 12"); or -2
 * when the VM ran out of memory. Nothing is pushed on failure.
 * [-0, +(0|1)]
 */
int brm_json_decode(lua_State *L, const char *s, size_t len, struct brm_err *err);

/*
 * Encodes the value at IDX. A table whose keys are positive integers is an
 * array, holes as null, unless its largest key passes both 10 and twice
 * the number of keys (lua-cjson's rule for sparse arrays): then, as any
 * other table, an object with string keys; an empty table is {}. NaN and
 * infinities become null. A float prints in the fewest digits that read
 * back the same double, and a whole one without a fraction ("3", "1e+20"),
 * so 3.0 decodes as the integer 3. Returns 0 and pushes the text as a Lua
 * string, or -1 with ERR set and nothing pushed. [-0, +(0|1)]
 */
int brm_json_encode(lua_State *L, int idx, struct brm_err *err);

struct brm_envelope {
    char topic[BRM_TOPIC_MAX]; /* as sent */
    char name[BRM_TOPIC_MAX];  /* normalised: '_' read as '-' */
    int known;                 /* a topic Mist documents */
    size_t nevents;
};

/*
 * Decodes a webhook body and checks its envelope. Returns 0 and pushes the
 * envelope table; -1 with a one-line reason in ERR (for the 400); or -2
 * when the VM ran out of memory decoding it. Nothing is pushed on failure.
 * [-0, +(0|1)]
 */
int brm_json_envelope(lua_State *L, const char *body, size_t len, struct brm_envelope *env,
                      struct brm_err *err);

/* Writes topic S with '_' read as '-' (Mist's examples say device_events
 * where its subscriptions say device-events). -1 when it does not fit. */
int brm_topic_normalize(const char *s, size_t n, char *out, size_t size);
/* 1 when NAME (normalised) is a topic Mist documents. */
int brm_topic_known(const char *name);

#endif
