/* json: every Mist fixture decodes to an envelope and round-trips; broken
 * bodies are refused with a reason and the byte; numbers come back as Lua
 * integers when whole and exactly up to 64 bits; strings keep their bytes;
 * encoding picks arrays and objects as lua-cjson did, does not escape '/',
 * fails cleanly on what JSON cannot hold; and both stay inside a VM's
 * memory cap. */
#include <dirent.h>
#include <lauxlib.h>
#include <lualib.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "json.h"
#include "sandbox.h"
#include "test.h"

static lua_State *L;

static int envelope(const char *body, size_t len, struct brm_envelope *env, struct brm_err *err) {
    int top = lua_gettop(L);
    brm_err_clear(err);
    int rc = brm_json_envelope(L, body, len, env, err);
    CHECK_INT(lua_gettop(L), top + (rc == 0));
    if (rc == 0) lua_pop(L, 1);
    return rc;
}

static int refused(const char *body, const char *reason) {
    struct brm_envelope env;
    struct brm_err err;
    int rc = envelope(body, strlen(body), &env, &err);
    CHECK(rc == -1);
    CHECK_HAS(err.msg, reason);
    return rc < 0;
}

/* Decodes S (which must succeed) and leaves the value on the stack. */
static void decode(const char *s, size_t len) {
    struct brm_err err;
    int top = lua_gettop(L);
    int rc = brm_json_decode(L, s, len, &err);
    CHECK_INT(rc, 0);
    if (rc != 0) {
        fprintf(stderr, "  decoding %.80s: %s\n", s, err.msg);
        lua_pushnil(L);
    }
    CHECK_INT(lua_gettop(L), top + 1);
}

/* S must not decode: -1, nothing pushed, a reason containing WANT. */
static void bad(const char *s, size_t len, const char *want) {
    struct brm_err err;
    int top = lua_gettop(L);
    brm_err_clear(&err);
    CHECK_INT(brm_json_decode(L, s, len, &err), -1);
    CHECK_INT(lua_gettop(L), top);
    CHECK_HAS(err.msg, want);
}
#define BAD(s, want) bad(s, sizeof(s) - 1, want)

/* Decodes S and leaves field K of the result on the stack. */
static void decode_field(const char *s, const char *k) {
    decode(s, strlen(s));
    lua_getfield(L, -1, k);
    lua_remove(L, -2);
}

/* Encodes the value on top (which must succeed), pops it, and pushes the
 * text. */
static const char *encode_top(void) {
    struct brm_err err;
    int rc = brm_json_encode(L, -1, &err);
    CHECK_INT(rc, 0);
    if (rc != 0) {
        fprintf(stderr, "  encoding: %s\n", err.msg);
        lua_pushliteral(L, "");
    }
    lua_remove(L, -2);
    return lua_tostring(L, -1);
}

/* Runs Lua SRC (returning one value) in L. */
static void push_lua(const char *src) {
    CHECK_INT(luaL_dostring(L, src), LUA_OK);
}

static int same(int a, int b);

static size_t count_keys(int t) {
    size_t n = 0;
    luaL_checkstack(L, 3, "counting keys");
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        n++;
    }
    return n;
}

/* Every key of the table at A is in the table at B with the same value. */
static int covered(int a, int b) {
    luaL_checkstack(L, 4, "comparing tables"); /* they nest up to 128 deep */
    lua_pushnil(L);
    while (lua_next(L, a)) {
        lua_pushvalue(L, -2);
        lua_rawget(L, b);
        int ok = same(lua_gettop(L) - 1, lua_gettop(L));
        lua_pop(L, 2);
        if (!ok) {
            lua_pop(L, 1);
            return 0;
        }
    }
    return 1;
}

/* Structural equality; an integer is not the float of the same value. */
static int same(int a, int b) {
    a = lua_absindex(L, a);
    b = lua_absindex(L, b);
    if (lua_type(L, a) != lua_type(L, b)) return 0;
    switch (lua_type(L, a)) {
    case LUA_TNUMBER: return lua_isinteger(L, a) == lua_isinteger(L, b) && lua_rawequal(L, a, b);
    case LUA_TTABLE: return count_keys(a) == count_keys(b) && covered(a, b);
    default: return lua_rawequal(L, a, b);
    }
}

/* The value on top encodes, and its text decodes to the same value; pops
 * it. */
static void round_trips(void) {
    struct brm_err err;
    int v = lua_gettop(L);
    CHECK_INT(brm_json_encode(L, v, &err), 0);
    size_t len;
    const char *text = lua_tolstring(L, -1, &len);
    CHECK(text && !strstr(text, "\\/"));
    CHECK_INT(brm_json_decode(L, text, len, &err), 0);
    CHECK(same(v, -1));
    lua_settop(L, v - 1);
}

/* Every prefix of TEXT that stops before its last value ends fails, with
 * nothing pushed, and nothing crashes on the way. */
static void check_truncations(const char *text, size_t len) {
    size_t end = len;
    while (end > 0 && strchr(" \t\r\n", text[end - 1])) end--;
    for (size_t cut = 0; cut < end; cut++) {
        struct brm_err err;
        brm_err_clear(&err);
        int top = lua_gettop(L);
        int rc = brm_json_decode(L, text, cut, &err);
        CHECK_INT(rc, -1);
        CHECK(err.msg[0] != '\0');
        if (rc == 0) lua_pop(L, 1);
        CHECK_INT(lua_gettop(L), top);
    }
}

static void check_fixture(const char *name, const struct brm_buf *b) {
    struct brm_envelope env;
    struct brm_err err;
    int rc = envelope(b->data, b->len, &env, &err);
    if (rc != 0) fprintf(stderr, "%s: %s\n", name, err.msg);
    CHECK_INT(rc, 0);
    CHECK(env.nevents >= 1);
    CHECK(strchr(env.name, '_') == NULL);
    /* The file name starts with the topic as subscribed. */
    CHECK(strncmp(name, env.name, strlen(env.name)) == 0 || strcmp(env.name, "string") == 0);
    decode(b->data, b->len);
    round_trips();
    check_truncations(b->data, b->len);
}

static void check_fixtures(void) {
    DIR *d = opendir(FIXTURES "/mist");
    struct dirent *de;
    int n = 0;
    CHECK(d != NULL);
    while (d && (de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len < 6 || strcmp(de->d_name + len - 5, ".json") != 0) continue;
        char path[512];
        snprintf(path, sizeof(path), "%s/mist/%s", FIXTURES, de->d_name);
        struct brm_buf b;
        brm_buf_init(&b);
        CHECK_INT(brm_read_file(path, 1 << 20, &b), 0);
        check_fixture(de->d_name, &b);
        brm_buf_reset(&b);
        n++;
    }
    if (d) closedir(d);
    CHECK_INT(n, 62);
}

static void check_counts(void) {
    static const struct {
        const char *file, *topic, *name;
        size_t events;
        int known;
    } cases[] = {
        { "zone--sdk-wifi-asset-postman.json", "zone", "zone", 3, 1 },
        { "device-events--ap-radsec-mwtt.json", "device-events", "device-events", 3, 1 },
        { "device-events--openapi-schema-example.json", "device_events", "device-events", 1, 1 },
        { "location-asset--openapi.json", "location_asset", "location-asset", 1, 1 },
        { "nac-events--nac-client-permit-openapi.json", "string", "string", 1, 0 },
        { "mxedge-events--me-service-mwtt.json", "mxedge-events", "mxedge-events", 3, 1 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char path[512];
        snprintf(path, sizeof(path), "%s/mist/%s", FIXTURES, cases[i].file);
        struct brm_buf b;
        brm_buf_init(&b);
        brm_read_file(path, 1 << 20, &b);
        struct brm_envelope env;
        struct brm_err err;
        CHECK_INT(envelope(b.data, b.len, &env, &err), 0);
        CHECK_STR(env.topic, cases[i].topic);
        CHECK_STR(env.name, cases[i].name);
        CHECK_INT(env.nevents, cases[i].events);
        CHECK_INT(env.known, cases[i].known);
        brm_buf_reset(&b);
    }
}

static void check_refusals(void) {
    refused("", "empty body");
    refused(" \r\n\t", "empty body");
    refused("[]", "not a JSON object");
    refused("42", "not a JSON object");
    refused("\"topic\"", "not a JSON object");
    refused("{", "invalid JSON: unexpected end of text after byte 1");
    refused("{\"topic\":\"alarms\",\"events\":[{}]", "invalid JSON");
    refused("{\"topic\":\"alarms\",\"events\":[{}]}x",
            "invalid JSON: trailing characters at byte 33");
    refused("{\"topic\":\"alarms\",\"events\":[NaN]}", "invalid JSON");
    refused("{\"topic\":\"alarms\",\"events\":[{\"a\":Infinity}]}", "invalid JSON");
    refused("{\"events\":[]}", "no string \"topic\"");
    refused("{\"topic\":7,\"events\":[]}", "no string \"topic\"");
    refused("{\"topic\":\"\",\"events\":[]}", "must be a name");
    refused("{\"topic\":\"alarms\"}", "no \"events\" array");
    refused("{\"topic\":\"alarms\",\"events\":\"x\"}", "no \"events\" array");
    refused("{\"topic\":\"alarms\",\"events\":{\"a\":{}}}", "\"events\" is not an array");
    /* DESIGN.md: events not an array -> 400, even when it is empty. */
    refused("{\"topic\":\"alarms\",\"events\":{}}", "\"events\" is not an array");
    refused("{\"topic\":\"alarms\",\"events\":[],\"events\":{}}", "\"events\" is not an array");
    refused("{\"topic\":\"alarms\",\"events\":[{},3]}", "events[2] is not an object");
    refused("{\"topic\":\"alarms\",\"events\":[null]}", "events[1] is not an object");
    refused("{\"topic\":\"alarms\",\"events\":[[1,2]]}", "events[1] is not an object");
    /* Invalid UTF-8 outside a string is not JSON. */
    refused("{\"topic\":\"alarms\",\"events\":[\xff]}",
            "invalid JSON: unexpected byte 0xff at byte 29");

    char longtopic[300] = "{\"topic\":\"";
    memset(longtopic + 10, 'a', 200);
    strcpy(longtopic + 210, "\",\"events\":[]}");
    refused(longtopic, "must be a name");

    /* Deep nesting stops at 128 levels; Mist's events are a few deep. */
    char deep[1200];
    int p = snprintf(deep, sizeof(deep), "{\"topic\":\"alarms\",\"events\":[{\"a\":");
    for (int i = 0; i < 200; i++) deep[p++] = '[';
    for (int i = 0; i < 200; i++) deep[p++] = ']';
    strcpy(deep + p, "}]}");
    refused(deep, "invalid JSON: nested deeper than 128 levels at byte 159");
    p = snprintf(deep, sizeof(deep), "{\"topic\":\"alarms\",\"events\":[{\"a\":");
    for (int i = 0; i < 100; i++) deep[p++] = '[';
    for (int i = 0; i < 100; i++) deep[p++] = ']';
    strcpy(deep + p, "}]}");
    struct brm_envelope env;
    struct brm_err err;
    CHECK_INT(envelope(deep, strlen(deep), &env, &err), 0);
}

static void check_envelopes(void) {
    struct brm_envelope env;
    struct brm_err err;
    /* An empty batch is a batch: accepted, nothing to run. */
    const char *b = "{\"topic\":\"alarms\",\"events\":[]}";
    CHECK_INT(envelope(b, strlen(b), &env, &err), 0);
    CHECK_INT(env.nevents, 0);
    /* The last of duplicate keys counts, as in the table. */
    b = "{\"topic\":\"alarms\",\"events\":{},\"events\":[{}]}";
    CHECK_INT(envelope(b, strlen(b), &env, &err), 0);
    CHECK_INT(env.nevents, 1);
    /* Only the top level's "events" is the batch; an empty array in an
     * event is an object without fields. */
    b = " {\"topic\":\"alarms\",\"events\":[{\"events\":{}},[]]} ";
    CHECK_INT(envelope(b, strlen(b), &env, &err), 0);
    CHECK_INT(env.nevents, 2);
}

static void check_integers(void) {
    static const struct {
        const char *text;
        lua_Integer want;
    } ints[] = {
        { "1629862968", 1629862968 },
        { "-3", -3 },
        { "0", 0 },
        { "-0", 0 },
        { "-0.0", 0 },
        { "2.0", 2 },
        { "1.0", 1 },
        { "1e2", 100 },
        { "1E+2", 100 },
        { "0.5e1", 5 },
        { "12500e-2", 125 },
        { "9223372036854775807", INT64_MAX },
        { "-9223372036854775808", INT64_MIN },
        { "-9223372036854775807", -INT64_MAX },
        { "999999999999999999", 999999999999999999 },
        { "1000000000000000000", 1000000000000000000 },
        { "9007199254740993", 9007199254740993 }, /* 2^53 + 1: no double holds it */
    };
    for (size_t i = 0; i < BRM_ARRAY_LEN(ints); i++) {
        decode(ints[i].text, strlen(ints[i].text));
        CHECK(lua_isinteger(L, -1));
        CHECK_INT(lua_tointeger(L, -1), ints[i].want);
        if (lua_tointeger(L, -1) != ints[i].want) fprintf(stderr, "  %s\n", ints[i].text);
        lua_pop(L, 1);
    }
    /* Past int64 an integer becomes a float: 2^63, and far beyond. */
    decode("9223372036854775808", 19);
    CHECK(!lua_isinteger(L, -1) && lua_tonumber(L, -1) == 0x1p63);
    lua_pop(L, 1);
    decode("-9223372036854775809", 20); /* reads as -2^63, yet it is no int64 */
    CHECK(!lua_isinteger(L, -1) && lua_tonumber(L, -1) == -0x1p63);
    lua_pop(L, 1);
    decode_field("{\"n\":12345678901234567890}", "n");
    CHECK(!lua_isinteger(L, -1) && lua_tonumber(L, -1) > 1.2e19);
    lua_pop(L, 1);
    decode_field("{\"n\":1e400}", "n");
    CHECK(!lua_isinteger(L, -1) && lua_tonumber(L, -1) == HUGE_VAL);
    lua_pop(L, 1);
    decode_field("{\"n\":1685985159.0102212}", "n");
    CHECK(!lua_isinteger(L, -1));
    CHECK(lua_tonumber(L, -1) == 1685985159.0102212);
    lua_pop(L, 1);
    /* A literal longer than the scratch buffer is read all the same. */
    char lit[400] = "0.";
    memset(lit + 2, '0', 300);
    strcpy(lit + 302, "15");
    decode(lit, strlen(lit));
    CHECK(!lua_isinteger(L, -1) && lua_tonumber(L, -1) == 1.5e-301);
    lua_pop(L, 1);
    memset(lit, '1', 300);
    lit[300] = '\0';
    decode(lit, 300);
    CHECK(!lua_isinteger(L, -1) && lua_tonumber(L, -1) > 1.1e299);
    lua_pop(L, 1);

    /* Encoding keeps integers exact, at both ends too. */
    lua_pushinteger(L, INT64_MIN);
    CHECK_STR(encode_top(), "-9223372036854775808");
    lua_pop(L, 1);
    lua_pushinteger(L, INT64_MAX);
    CHECK_STR(encode_top(), "9223372036854775807");
    lua_pop(L, 1);
    lua_pushinteger(L, 0);
    CHECK_STR(encode_top(), "0");
    lua_pop(L, 1);
    lua_Integer edges[] = { INT64_MIN, INT64_MIN + 1, -1, 0, 7, 9007199254740993, INT64_MAX };
    for (size_t i = 0; i < BRM_ARRAY_LEN(edges); i++) {
        lua_pushinteger(L, edges[i]);
        round_trips();
    }
}

static void check_floats(void) {
    double vs[] = { 0.1,
                    1.0 / 3,
                    1e-300,
                    5e-324,
                    1.7976931348623157e308,
                    -2.5,
                    123456.789,
                    1685985159.0102212,
                    0x1p63,
                    1e20,
                    -1e300,
                    2.2250738585072014e-308 };
    for (size_t i = 0; i < BRM_ARRAY_LEN(vs); i++) {
        lua_pushnumber(L, vs[i]);
        round_trips();
    }
    /* The fewest digits that read back the same. */
    static const struct {
        double v;
        const char *text;
    } texts[] = {
        { 0.1, "0.1" },
        { 1.0 / 3, "0.3333333333333333" },
        { 5e-324, "4.94065645841247e-324" },
        { -2.5, "-2.5" },
        { 1e20, "1e+20" },
        { 0x1p63, "9.223372036854776e+18" },
        { 3.0, "3" },
        { -0.0, "-0" },
    };
    for (size_t i = 0; i < BRM_ARRAY_LEN(texts); i++) {
        lua_pushnumber(L, texts[i].v);
        CHECK_STR(encode_top(), texts[i].text);
        lua_pop(L, 1);
    }
    /* A whole float reads back as the integer: brume's rule for whole
     * numbers, which no JSON text can tell from a float's. */
    lua_pushnumber(L, 3.0);
    encode_top();
    decode(lua_tostring(L, -1), 1);
    CHECK(lua_isinteger(L, -1) && lua_tointeger(L, -1) == 3);
    lua_pop(L, 2);
    /* JSON has no NaN or infinity: they become null (lenient out). */
    push_lua("return { count = 16, nan = 0/0, inf = math.huge, ninf = -math.huge }");
    const char *s = encode_top();
    CHECK_HAS(s, "\"count\":16");
    CHECK_HAS(s, "\"nan\":null");
    CHECK_HAS(s, "\"inf\":null");
    CHECK_HAS(s, "\"ninf\":null");
    lua_pop(L, 1);
}

/* Decodes the JSON string literal LIT and checks its bytes. */
static void check_string(const char *lit, const char *want, size_t want_len) {
    size_t len;
    decode(lit, strlen(lit));
    const char *s = lua_tolstring(L, -1, &len);
    CHECK(s && len == want_len && memcmp(s, want, len) == 0);
    if (!s || len != want_len || memcmp(s, want, len) != 0) fprintf(stderr, "  %s\n", lit);
    lua_pop(L, 1);
}
#define STRING_IS(lit, want) check_string(lit, want, sizeof(want) - 1)

static void check_strings(void) {
    STRING_IS("\"\"", "");
    STRING_IS("\"plain\"", "plain");
    STRING_IS("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "\"\\/\b\f\n\r\t");
    STRING_IS("\"a\\u0000b\"", "a\0b");
    STRING_IS("\"\\u00e9\\u00C9\"", "\xc3\xa9\xc3\x89");
    STRING_IS("\"\\u20ac\"", "\xe2\x82\xac");
    STRING_IS("\"x\\ud83d\\ude00y\"", "x\xf0\x9f\x98\x80y"); /* a surrogate pair */
    STRING_IS("\"\\udbff\\udfff\"", "\xf4\x8f\xbf\xbf");
    /* Lone surrogates keep their 3-byte form: nothing is lost. */
    STRING_IS("\"\\ud800\"", "\xed\xa0\x80");
    STRING_IS("\"\\udc00x\"", "\xed\xb0\x80x");
    STRING_IS("\"\\ud800\\u0041\"", "\xed\xa0\x80"
                                    "A");
    STRING_IS("\"\\ud800\\ud800\\udc00\"", "\xed\xa0\x80\xf0\x90\x80\x80");
    /* Bytes stay bytes: invalid UTF-8, and raw control bytes Mist might
     * send, are kept rather than lose the body. */
    STRING_IS("\"caf\xe9\xff\"", "caf\xe9\xff");
    STRING_IS("\"a\x01\tb\x1f\"", "a\x01\tb\x1f");
    STRING_IS("\"\xed\xa0\x80\"", "\xed\xa0\x80");
    decode_field("{\"ssid\":\"caf\xe9\xff\"}", "ssid");
    CHECK_STR(lua_tostring(L, -1), "caf\xe9\xff");
    lua_pop(L, 1);
    BAD("\"abc", "unterminated string at byte 1");
    BAD("[\"a\\\"]", "unterminated string at byte 2");
    BAD("\"\\", "unexpected end of text after byte 2");
    BAD("\"\\q\"", "invalid escape '\\q' at byte 2");
    BAD("\"\\'\"", "invalid escape");
    BAD("\"\\u12\"", "invalid \\u escape at byte 2");
    BAD("\"\\u12G4\"", "invalid \\u escape");
    BAD("\"\\ud800\\u12\"", "invalid \\u escape at byte 8");
    BAD("\"\\x41\"", "invalid escape");

    /* Encoding escapes what JSON requires and nothing more: no "\/". */
    lua_pushlstring(L, "a\"b\\c/d\b\f\n\r\t\x01\x1f\x7f\xc3\xa9\xff\0e", 20);
    CHECK_STR(encode_top(),
              "\"a\\\"b\\\\c/d\\b\\f\\n\\r\\t\\u0001\\u001f\x7f\xc3\xa9\xff\\u0000e\"");
    lua_pop(L, 1);
    lua_pushstring(L, "https://manage.mist.com/admin/?org_id=1");
    CHECK_STR(encode_top(), "\"https://manage.mist.com/admin/?org_id=1\"");
    lua_pop(L, 1);
    const char *all = "\"\\ud800 \\udfff \\u0000\\u0001 \xff\xfe \\\" \\\\ \\/ \\ud83d\\ude00\"";
    decode(all, strlen(all));
    round_trips();
}

static void check_grammar(void) {
    static const char *const good[] = {
        "0",
        "-1",
        "1.5",
        "1e5",
        "1E-5",
        "-0.0e+0",
        "true",
        "false",
        "null",
        "\"\"",
        "[]",
        "{}",
        " \t\r\n[ 1 , 2 ] \t\r\n",
        "{ \"a\" : [ { } , [ ] ] }",
        "[[[[]]]]",
    };
    for (size_t i = 0; i < BRM_ARRAY_LEN(good); i++) {
        decode(good[i], strlen(good[i]));
        lua_pop(L, 1);
    }
    BAD("", "unexpected end of text after byte 0");
    BAD("  ", "unexpected end of text after byte 2");
    BAD("x", "unexpected character 'x' at byte 1");
    BAD("{} x", "trailing characters at byte 4");
    BAD("[1]]", "trailing characters at byte 4");
    BAD("1 2", "trailing characters at byte 3");
    BAD("[1]\0", "trailing characters at byte 4");
    BAD("[1,]", "unexpected character ']' at byte 4");
    BAD("{\"a\":1,}", "unexpected character '}' at byte 8");
    BAD("[01]", "unexpected character '1' at byte 3");
    BAD("[.5]", "unexpected character '.' at byte 2");
    BAD("[1.]", "unexpected character ']' at byte 4");
    BAD("[1e]", "unexpected character ']' at byte 4");
    BAD("[-]", "unexpected character ']' at byte 3");
    BAD("[+1]", "unexpected character '+' at byte 2");
    BAD("[0x10]", "unexpected character 'x' at byte 3");
    BAD("[NaN]", "unexpected character 'N' at byte 2");
    BAD("[-Infinity]", "unexpected character 'I' at byte 3");
    BAD("[tru]", "unexpected character ']' at byte 5");
    BAD("[nul", "unexpected end of text after byte 4");
    BAD("[True]", "unexpected character 'T'");
    BAD("['a']", "unexpected character ''' at byte 2");
    BAD("{a:1}", "unexpected character 'a' at byte 2");
    BAD("{\"a\" 1}", "unexpected character '1' at byte 6");
    BAD("{1:1}", "unexpected character '1' at byte 2");
    BAD("[1 2]", "unexpected character '2' at byte 4");
    BAD("// c\n1", "unexpected character '/' at byte 1");
    BAD("/* c */ 1", "unexpected character '/'");
    BAD("\v1", "unexpected byte 0x0b at byte 1");
    BAD("\f1", "unexpected byte 0x0c at byte 1");
    BAD("\xc2\xa0 1", "unexpected byte 0xc2 at byte 1");
    BAD("[1,", "unexpected end of text after byte 3");
    BAD("{\"a\":", "unexpected end of text after byte 5");
    BAD("{\"a\"", "unexpected end of text after byte 4");

    /* 128 levels in and out; 129 is refused. */
    char deep[600];
    for (int levels = 127; levels <= 129; levels++) {
        memset(deep, '[', (size_t)levels);
        memset(deep + levels, ']', (size_t)levels);
        struct brm_err err;
        int rc = brm_json_decode(L, deep, 2 * (size_t)levels, &err);
        CHECK_INT(rc, levels <= 128 ? 0 : -1);
        if (rc == 0)
            round_trips(); /* [] comes back {}: an empty table is an object */
        else
            CHECK_STR(err.msg, "nested deeper than 128 levels at byte 129");
    }
    memset(deep, '{', 300); /* deep objects fail alike, and nothing leaks */
    BAD("{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":", "unexpected end of text after byte 30");
    bad(deep, 300, "unexpected character '{' at byte 2");
}

static void check_tables(void) {
    /* Objects and arrays of every size decode in full; past GATHER_MAX
     * elements the table grows as it fills. */
    for (int n = 0; n <= 1200; n += n < 10 ? 1 : 83) {
        struct brm_buf b;
        brm_buf_init(&b);
        brm_buf_puts(&b, "{\"list\":[");
        for (int i = 0; i < n; i++) {
            char item[32];
            snprintf(item, sizeof(item), "%s%d", i ? "," : "", i * 3);
            brm_buf_puts(&b, item);
        }
        brm_buf_puts(&b, "],\"map\":{");
        for (int i = 0; i < n; i++) {
            char item[40];
            snprintf(item, sizeof(item), "%s\"k%d\":%d", i ? "," : "", i, i);
            brm_buf_puts(&b, item);
        }
        brm_buf_puts(&b, ",\"k0\":\"last\"}}" + (n == 0));
        decode(b.data, b.len);
        lua_getfield(L, -1, "list");
        CHECK_INT(lua_rawlen(L, -1), n);
        CHECK(n == 0 ||
              (lua_rawgeti(L, -1, n) == LUA_TNUMBER && lua_tointeger(L, -1) == 3 * n - 3));
        lua_settop(L, lua_gettop(L) - (n > 0) - 1);
        lua_getfield(L, -1, "map");
        lua_getfield(L, -1, n ? "k0" : "none");
        CHECK(n == 0 ? lua_isnil(L, -1) : lua_type(L, -1) == LUA_TSTRING); /* the last k0 */
        lua_pop(L, 1);
        if (n) {
            lua_getfield(L, -1, "k1");
            CHECK(n < 2 || lua_tointeger(L, -1) == 1);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
        round_trips();
        brm_buf_reset(&b);
    }
    decode_field("{\"a\":[{\"n\":[1,2,3]}]}", "a");
    lua_rawgeti(L, -1, 1);
    lua_getfield(L, -1, "n");
    lua_rawgeti(L, -1, 3);
    CHECK(lua_isinteger(L, -1) && lua_tointeger(L, -1) == 3);
    lua_pop(L, 4);
    /* Keys and string values met again at the same place come from
     * decode_cached's cache: orders, prefixes and escapes must not fool it. */
    const char *keys = "[{\"ab\":1,\"a\":2},{\"a\":3,\"ab\":4},{\"a\\u0062\":5,\"a\":6},"
                       "{\"abc\":7,\"a\":8},{\"ab\":9,\"a\":10,\"a\":11},"
                       "{\"v\":\"x\",\"w\":\"xy\"},{\"v\":\"xy\",\"w\":\"x\"},{\"v\":\"x\\u0079\"},"
                       "{\"v\":\"xyz\"},{\"v\":1},{\"v\":\"\"},{\"v\":\"x\"}]";
    decode(keys, strlen(keys));
    push_lua("return {{ab = 1, a = 2}, {a = 3, ab = 4}, {ab = 5, a = 6}, {abc = 7, a = 8}, "
             "{ab = 9, a = 11}, {v = 'x', w = 'xy'}, {v = 'xy', w = 'x'}, {v = 'xy'}, "
             "{v = 'xyz'}, {v = 1}, {v = ''}, {v = 'x'}}");
    CHECK(same(-1, -2));
    lua_pop(L, 2);
    decode_field("{\"n\":null}", "n");
    CHECK(lua_type(L, -1) == LUA_TLIGHTUSERDATA && lua_touserdata(L, -1) == NULL);
    lua_pop(L, 1);
    decode("[null,1,null]", 13); /* null is a value: the array has no hole */
    CHECK_INT(lua_rawlen(L, -1), 3);
    CHECK_STR(encode_top(), "[null,1,null]");
    lua_pop(L, 1);
}

/* The table Lua SRC returns encodes as WANT. */
static void encodes(const char *src, const char *want) {
    push_lua(src);
    CHECK_STR(encode_top(), want);
    lua_pop(L, 1);
}

/* The value Lua SRC returns does not encode: -1, a reason with WANT, and
 * the stack as it was. */
static void unencodable(const char *src, const char *want) {
    struct brm_err err;
    push_lua(src);
    int top = lua_gettop(L);
    CHECK_INT(brm_json_encode(L, -1, &err), -1);
    CHECK_INT(lua_gettop(L), top);
    CHECK_HAS(err.msg, want);
    lua_pop(L, 1);
}

/* What the encoder writes for byte C inside a string, byte by byte: the
 * reference the encoder's eight-at-a-time scan must agree with. */
static void escaped(struct brm_buf *b, unsigned char c) {
    static const char short_forms[] = "\b\t\n\f\r";
    static const char letters[] = "btnfr";
    const char *f = c ? strchr(short_forms, c) : NULL;
    if (c == '"' || c == '\\')
        brm_buf_printf(b, "\\%c", c);
    else if (f)
        brm_buf_printf(b, "\\%c", letters[f - short_forms]);
    else if (c < 0x20)
        brm_buf_printf(b, "\\u%04x", c);
    else
        brm_buf_append(b, (const char *)&c, 1);
}

/* Every byte at every position of strings of 1 to 20 bytes (either side
 * of a word of eight), among plain bytes and bytes past 0x7f. */
static void check_string_scan(void) {
    struct brm_buf want;
    brm_buf_init(&want);
    int failed = 0;
    for (size_t n = 1; n <= 20 && !failed; n++) {
        for (size_t at = 0; at < n && !failed; at++) {
            for (int c = 0; c < 256 && !failed; c++) {
                char s[20];
                for (size_t i = 0; i < n; i++) s[i] = i % 3 == 2 ? (char)0xc3 : 'a';
                s[at] = (char)c;
                want.len = 0;
                brm_buf_puts(&want, "\"");
                for (size_t i = 0; i < n; i++) escaped(&want, (unsigned char)s[i]);
                brm_buf_puts(&want, "\"");
                lua_pushlstring(L, s, n);
                const char *got = encode_top();
                if (strcmp(got, want.data) != 0) {
                    CHECK_STR(got, want.data);
                    failed = 1;
                }
                lua_pop(L, 1);
            }
        }
    }
    CHECK(!failed);
    brm_buf_reset(&want);
}

static void check_encoding(void) {
    encodes("return {}", "{}");
    encodes("return {{}, {{}}}", "[{},[{}]]");
    encodes("return {1, 'two', true, false}", "[1,\"two\",true,false]");
    encodes("return {[1] = 1, [3] = 3}", "[1,null,3]");
    encodes("return {[10] = 1}", "[null,null,null,null,null,null,null,null,null,1]");
    /* lua-cjson's sparse rule: past 10, more than half empty is an object. */
    encodes("return {[1000] = 1}", "{\"1000\":1}");
    encodes("local t = {} for i = 1, 9 do t[i] = i end t[20] = 20 return t",
            "[1,2,3,4,5,6,7,8,9,null,null,null,null,null,null,null,null,null,null,20]");
    encodes("local t = {} for i = 1, 9 do t[i] = i end t[22] = 1 t[9] = nil return t",
            "{\"1\":1,\"2\":2,\"3\":3,\"4\":4,\"5\":5,\"6\":6,\"7\":7,\"8\":8,\"22\":1}");
    encodes("return {[0] = 'z'}", "{\"0\":\"z\"}");
    encodes("return {[-1] = 'm'}", "{\"-1\":\"m\"}");
    encodes("return {[1.5] = 'f'}", "{\"1.5\":\"f\"}");
    encodes("return {[2^63] = 'big'}", "{\"9.223372036854776e+18\":\"big\"}");
    encodes("return {[math.huge] = 1}", "{\"inf\":1}");
    encodes("return {a = {b = {c = {}}}}", "{\"a\":{\"b\":{\"c\":{}}}}");
    encodes("return {['a/b'] = 'c/d'}", "{\"a/b\":\"c/d\"}");
    encodes("return {['\\n'] = '\\0'}", "{\"\\n\":\"\\u0000\"}");
    push_lua("return {1, 2, x = brume_null}");
    const char *s = encode_top();
    CHECK(s && s[0] == '{' && strlen(s) == strlen("{\"1\":1,\"2\":2,\"x\":null}"));
    CHECK_HAS(s, "\"1\":1");
    CHECK_HAS(s, "\"x\":null");
    lua_pop(L, 1);
    /* Metamethods do not run: what is encoded is what the table holds. */
    encodes("return setmetatable({}, {__index = function() error('ran') end, "
            "__pairs = function() error('ran') end, __len = function() return 5 end})",
            "{}");
    push_lua("return {1, 2.5, 'x', {a = {true}}, brume_null}");
    round_trips();

    unencodable("return {[true] = 1}", "table key must be a number or a string");
    unencodable("return {[{}] = 1}", "table key must be a number or a string");
    unencodable("return print", "cannot encode a function");
    unencodable("return {a = {print}}", "cannot encode a function");
    unencodable("return coroutine.create(print)", "cannot encode a thread");
    unencodable("return io.stdout", "cannot encode a userdata");
    unencodable("local t = {} t.self = t return t", "nested deeper than 128 levels");
    unencodable("local a, b = {}, {} a[1] = b b.x = a return a", "nested deeper than 128 levels");
    /* 128 levels encode; 129 do not. */
    unencodable("local t = {} for i = 1, 128 do t = {t} end return t", "nested deeper");
    push_lua("local t = {} for i = 1, 127 do t = {t} end return t");
    round_trips();
    lua_pushlightuserdata(L, &L);
    struct brm_err err;
    CHECK_INT(brm_json_encode(L, -1, &err), -1);
    CHECK_HAS(err.msg, "cannot encode a userdata");
    lua_pop(L, 1);
    lua_pushnil(L); /* nil alone is null, as in lua-cjson */
    CHECK_STR(encode_top(), "null");
    lua_pop(L, 1);
}

/* A text past BRM_JSON_MAX_TEXT fails with a reason, and the process (which
 * lua-cjson's exit() ended) and the VM go on. */
static void check_huge_text(void) {
    struct brm_err err;
    size_t n = 28u << 20;
    char *ones = malloc(n);
    CHECK(ones != NULL);
    if (!ones) return;
    memset(ones, 1, n); /* each byte escapes to 6: 168 MB of text */
    lua_createtable(L, 2, 0);
    lua_pushlstring(L, ones, n);
    lua_pushvalue(L, -1);
    lua_rawseti(L, -3, 1);
    lua_rawseti(L, -2, 2);
    free(ones);
    int top = lua_gettop(L);
    CHECK_INT(brm_json_encode(L, -1, &err), -1);
    CHECK_HAS(err.msg, "longer than 64 MB");
    CHECK_INT(lua_gettop(L), top);
    lua_pop(L, 1);
    /* Exactly the limit is allowed: a string of MAX - 2 bytes and quotes. */
    char *xs = malloc(BRM_JSON_MAX_TEXT - 1);
    CHECK(xs != NULL);
    if (!xs) return;
    memset(xs, 'x', BRM_JSON_MAX_TEXT - 1);
    lua_pushlstring(L, xs, BRM_JSON_MAX_TEXT - 2);
    CHECK_INT(brm_json_encode(L, -1, &err), 0);
    CHECK_INT(lua_rawlen(L, -1), BRM_JSON_MAX_TEXT);
    lua_pop(L, 2);
    lua_pushlstring(L, xs, BRM_JSON_MAX_TEXT - 1);
    CHECK_INT(brm_json_encode(L, -1, &err), -1);
    lua_pop(L, 1);
    free(xs);
    lua_gc(L, LUA_GCCOLLECT);
    lua_pushinteger(L, 1);
    CHECK_STR(encode_top(), "1");
    lua_pop(L, 1);
}

/* ---- under a memory cap ------------------------------------------------- */

struct job {
    const char *text;
    size_t len;
    int envelope; /* 1: brm_json_envelope, 2: brm_json_encode of argument 2 */
    int rc;
    struct brm_err err;
};

/* Run through brm_sandbox_call, as a rule's brume.json calls are, so the
 * cap applies. Argument 1 is the job. */
static int run_job(lua_State *S) {
    struct job *j = lua_touserdata(S, 1);
    struct brm_envelope env;
    if (j->envelope == 2)
        j->rc = brm_json_encode(S, 2, &j->err);
    else if (j->envelope)
        j->rc = brm_json_envelope(S, j->text, j->len, &env, &j->err);
    else
        j->rc = brm_json_decode(S, j->text, j->len, &j->err);
    return 0;
}

static void run_capped(struct brm_sandbox *sb, struct job *j, int nargs_extra) {
    lua_State *S = brm_sandbox_state(sb);
    struct brm_err err;
    lua_pushcfunction(S, run_job);
    lua_insert(S, lua_gettop(S) - nargs_extra);
    lua_pushlightuserdata(S, j);
    lua_insert(S, lua_gettop(S) - nargs_extra);
    brm_err_clear(&j->err);
    CHECK_INT(brm_sandbox_call(sb, 1 + nargs_extra, 0, &err), BRM_CALL_OK);
}

static void check_memory_cap(void) {
    struct brm_sandbox_opts o = { .memory = 2 << 20 };
    struct brm_sandbox *sb = brm_sandbox_new(&o);
    lua_State *S = brm_sandbox_state(sb);
    brm_json_open(S);
    lua_pop(S, 1);
    /* 200,000 empty tables take far more than 2 MB. */
    struct brm_buf b;
    brm_buf_init(&b);
    brm_buf_puts(&b, "{\"topic\":\"alarms\",\"events\":[");
    for (int i = 0; i < 200000; i++) brm_buf_puts(&b, "[],");
    brm_buf_puts(&b, "[]]}");
    struct job j = { .text = b.data + 27, .len = b.len - 28 };
    run_capped(sb, &j, 0);
    CHECK_INT(j.rc, -2);
    CHECK_HAS(j.err.msg, "not enough memory to decode");
    CHECK_INT(lua_gettop(S), 0);
    j = (struct job){ .text = b.data, .len = b.len, .envelope = 1 };
    run_capped(sb, &j, 0);
    CHECK_INT(j.rc, -2);
    CHECK_HAS(j.err.msg, "not enough memory");
    CHECK_INT(lua_gettop(S), 0);
    /* The VM goes on: a small body decodes, and Lua runs. */
    lua_gc(S, LUA_GCCOLLECT);
    CHECK(brm_sandbox_memory(sb) < (1u << 20));
    const char *small = "{\"topic\":\"alarms\",\"events\":[{\"a\":[1,2,{\"b\":\"\\u00e9\"}]}]}";
    j = (struct job){ .text = small, .len = strlen(small), .envelope = 1 };
    run_capped(sb, &j, 0);
    CHECK_INT(j.rc, 0);
    lua_settop(S, 0);
    /* The same body fits with no cap. */
    lua_State *saved = L;
    L = luaL_newstate();
    decode(b.data, b.len);
    lua_close(L);
    L = saved;
    brm_buf_reset(&b);

    /* Encoding grows its text in the VM's memory: a 4 MB text fails there. */
    char *xs = malloc(1 << 20);
    CHECK(xs != NULL);
    if (xs) {
        memset(xs, 'x', 1 << 20);
        lua_createtable(S, 4, 0);
        for (int i = 1; i <= 4; i++) {
            lua_pushlstring(S, xs, 1 << 20);
            lua_rawseti(S, -2, i);
        }
        free(xs);
        j = (struct job){ .envelope = 2 };
        run_capped(sb, &j, 1);
        CHECK_INT(j.rc, -1);
        CHECK_HAS(j.err.msg, "not enough memory to encode");
        lua_settop(S, 0);
        lua_gc(S, LUA_GCCOLLECT);
        CHECK(brm_sandbox_memory(sb) < (1u << 20));
        lua_pushinteger(S, 42);
        j = (struct job){ .envelope = 2 };
        run_capped(sb, &j, 1);
        CHECK_INT(j.rc, 0);
    }
    brm_sandbox_free(sb);
}

static void check_module(void) {
    /* brm_json_open's table: encode, decode and null, as lua-cjson's. */
    push_lua("local t = codec.decode('{\"a\":[1,2.5,null]}') "
             "return codec.encode(t) .. ' ' .. tostring(t.a[3] == codec.null) .. ' ' .. "
             "tostring(codec.null) .. ' ' .. tostring(getmetatable(codec.null))");
    CHECK_STR(lua_tostring(L, -1), "{\"a\":[1,2.5,null]} true null false");
    lua_pop(L, 1);
    push_lua("local ok, err = pcall(codec.decode, '[1,') return err");
    CHECK_HAS(lua_tostring(L, -1), "unexpected end of text after byte 3");
    lua_pop(L, 1);
    push_lua("local ok, err = pcall(codec.encode, print) return err");
    CHECK_HAS(lua_tostring(L, -1), "cannot encode a function");
    lua_pop(L, 1);
}

static void check_topics(void) {
    char out[BRM_TOPIC_MAX];
    CHECK_INT(brm_topic_normalize("device_events", 13, out, sizeof(out)), 0);
    CHECK_STR(out, "device-events");
    CHECK(brm_topic_known("device-events"));
    CHECK(brm_topic_known("sdkclient-scan-data"));
    CHECK(!brm_topic_known("device_events"));
    CHECK(!brm_topic_known("alarm"));
    CHECK_INT(brm_topic_normalize("x", 1, out, 1), -1);
}

int main(void) {
    L = luaL_newstate();
    luaL_openlibs(L);
    brm_json_open(L);
    lua_pushvalue(L, -1);
    lua_setglobal(L, "codec");
    lua_getfield(L, -1, "null");
    lua_setglobal(L, "brume_null");
    lua_pop(L, 1);
    check_fixtures();
    check_counts();
    check_refusals();
    check_envelopes();
    check_integers();
    check_floats();
    check_strings();
    check_grammar();
    check_tables();
    check_encoding();
    check_string_scan();
    check_huge_text();
    check_memory_cap();
    check_module();
    check_topics();
    CHECK_INT(lua_gettop(L), 0);
    lua_close(L);
    return test_done();
}
