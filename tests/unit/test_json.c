/* json: every Mist fixture decodes to an envelope; broken bodies are refused
 * with a reason; numbers come back as Lua integers when whole. */
#include <dirent.h>
#include <lauxlib.h>
#include <lualib.h>
#include <math.h>
#include <stdlib.h>

#include "json.h"
#include "test.h"

static lua_State *L;

static int envelope(const char *body, size_t len, struct brm_envelope *env, struct brm_err *err) {
    int top = lua_gettop(L);
    int rc = brm_json_envelope(L, body, len, env, err);
    CHECK_INT(lua_gettop(L), top + (rc == 0));
    if (rc == 0) lua_pop(L, 1);
    return rc;
}

static int refused(const char *body, const char *reason) {
    struct brm_envelope env;
    struct brm_err err;
    brm_err_clear(&err);
    int rc = envelope(body, strlen(body), &env, &err);
    CHECK(rc < 0);
    CHECK_HAS(err.msg, reason);
    return rc < 0;
}

/* Decodes S and leaves field K of the result on the stack. */
static void decode_field(const char *s, const char *k) {
    struct brm_err err;
    CHECK_INT(brm_json_decode(L, s, strlen(s), &err), 0);
    lua_getfield(L, -1, k);
    lua_remove(L, -2);
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
        struct brm_envelope env;
        struct brm_err err;
        int rc = envelope(b.data, b.len, &env, &err);
        if (rc != 0) fprintf(stderr, "%s: %s\n", de->d_name, err.msg);
        CHECK_INT(rc, 0);
        CHECK(env.nevents >= 1);
        CHECK(strchr(env.name, '_') == NULL);
        /* The file name starts with the topic as subscribed. */
        CHECK(strncmp(de->d_name, env.name, strlen(env.name)) == 0 ||
              strcmp(env.name, "string") == 0);
        /* Every prefix that stops before the closing brace is refused, and
         * nothing crashes on the way. */
        size_t end = b.len;
        while (end > 0 && b.data[end - 1] != '}') end--;
        for (size_t cut = 0; cut + 1 < end; cut += 1 + end / 23) {
            struct brm_envelope e2;
            CHECK(envelope(b.data, cut, &e2, &err) < 0);
        }
        brm_buf_reset(&b);
        n++;
    }
    if (d) closedir(d);
    CHECK_INT(n, 61);
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
    refused("{", "invalid JSON");
    refused("{\"topic\":\"alarms\",\"events\":[{}]", "invalid JSON");
    refused("{\"topic\":\"alarms\",\"events\":[{}]}x", "invalid JSON");
    refused("{\"topic\":\"alarms\",\"events\":[NaN]}", "invalid JSON");
    refused("{\"topic\":\"alarms\",\"events\":[{\"a\":Infinity}]}", "invalid JSON");
    refused("{\"topic\":\"alarms\",\"events\":[{\"a\":\"\\ud800\"}]}", "invalid JSON");
    refused("{\"events\":[]}", "no string \"topic\"");
    refused("{\"topic\":7,\"events\":[]}", "no string \"topic\"");
    refused("{\"topic\":\"\",\"events\":[]}", "must be a name");
    refused("{\"topic\":\"alarms\"}", "no \"events\" array");
    refused("{\"topic\":\"alarms\",\"events\":\"x\"}", "no \"events\" array");
    refused("{\"topic\":\"alarms\",\"events\":{\"a\":{}}}", "\"events\" is not an array");
    refused("{\"topic\":\"alarms\",\"events\":[{},3]}", "events[2] is not an object");
    refused("{\"topic\":\"alarms\",\"events\":[null]}", "events[1] is not an object");
    refused("{\"topic\":\"alarms\",\"events\":[[1,2]]}", "events[1] is not an object");
    /* Invalid UTF-8 outside a string is not JSON. */
    refused("{\"topic\":\"alarms\",\"events\":[\xff]}", "invalid JSON");

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
    refused(deep, "too many nested");
    p = snprintf(deep, sizeof(deep), "{\"topic\":\"alarms\",\"events\":[{\"a\":");
    for (int i = 0; i < 100; i++) deep[p++] = '[';
    for (int i = 0; i < 100; i++) deep[p++] = ']';
    strcpy(deep + p, "}]}");
    struct brm_envelope env;
    struct brm_err err;
    CHECK_INT(envelope(deep, strlen(deep), &env, &err), 0);
}

static void check_values(void) {
    struct brm_envelope env;
    struct brm_err err;
    /* An empty batch is a batch: accepted, nothing to run. */
    const char *b = "{\"topic\":\"alarms\",\"events\":[]}";
    CHECK_INT(envelope(b, strlen(b), &env, &err), 0);
    CHECK_INT(env.nevents, 0);
    b = "{\"topic\":\"alarms\",\"events\":{}}"; /* decodes as [] does */
    CHECK_INT(envelope(b, strlen(b), &env, &err), 0);

    /* Whole numbers are integers, so a rule prints 16, not 16.0. */
    decode_field("{\"n\":1629862968}", "n");
    CHECK(lua_isinteger(L, -1));
    CHECK_INT(lua_tointeger(L, -1), 1629862968);
    lua_pop(L, 1);
    decode_field("{\"n\":-3}", "n");
    CHECK(lua_isinteger(L, -1) && lua_tointeger(L, -1) == -3);
    lua_pop(L, 1);
    decode_field("{\"n\":2.0}", "n");
    CHECK(lua_isinteger(L, -1));
    lua_pop(L, 1);
    decode_field("{\"n\":1685985159.0102212}", "n");
    CHECK(!lua_isinteger(L, -1));
    CHECK(lua_tonumber(L, -1) > 1685985159.01 && lua_tonumber(L, -1) < 1685985159.011);
    lua_pop(L, 1);
    decode_field("{\"a\":[{\"n\":[1,2,3]}]}", "a");
    lua_rawgeti(L, -1, 1);
    lua_getfield(L, -1, "n");
    lua_rawgeti(L, -1, 3);
    CHECK(lua_isinteger(L, -1) && lua_tointeger(L, -1) == 3);
    lua_pop(L, 4);
    /* Huge numbers stay floats; past double range they are infinite. */
    decode_field("{\"n\":12345678901234567890}", "n");
    CHECK(!lua_isinteger(L, -1));
    CHECK(lua_tonumber(L, -1) > 1.2e19);
    lua_pop(L, 1);
    decode_field("{\"n\":1e400}", "n");
    CHECK(!lua_isinteger(L, -1) && lua_tonumber(L, -1) == HUGE_VAL);
    lua_pop(L, 1);
    decode_field("{\"n\":-9223372036854775808}", "n");
    CHECK(lua_isinteger(L, -1) && lua_tointeger(L, -1) == LUA_MININTEGER);
    lua_pop(L, 1);
    /* Invalid UTF-8 inside a string is kept byte for byte: an SSID is bytes,
     * and dropping a batch of alarms over one would lose them all. */
    decode_field("{\"ssid\":\"caf\xe9\xff\"}", "ssid");
    CHECK_STR(lua_tostring(L, -1), "caf\xe9\xff");
    lua_pop(L, 1);
    decode_field("{\"n\":null}", "n");
    CHECK(lua_type(L, -1) == LUA_TLIGHTUSERDATA && lua_touserdata(L, -1) == NULL);
    lua_pop(L, 1);

    /* Encoding: integers stay integers; NaN becomes null, sparse arrays objects. */
    lua_newtable(L);
    lua_pushinteger(L, 16);
    lua_setfield(L, -2, "count");
    lua_pushnumber(L, 0.0 / 0.0);
    lua_setfield(L, -2, "nan");
    CHECK_INT(brm_json_encode(L, -1, &err), 0);
    CHECK_HAS(lua_tostring(L, -1), "\"count\":16");
    CHECK_HAS(lua_tostring(L, -1), "\"nan\":null");
    lua_pop(L, 2);
    lua_newtable(L);
    lua_pushinteger(L, 1);
    lua_rawseti(L, -2, 1000);
    CHECK_INT(brm_json_encode(L, -1, &err), 0);
    CHECK_STR(lua_tostring(L, -1), "{\"1000\":1}");
    lua_pop(L, 2);
    lua_pushcfunction(L, luaopen_base);
    CHECK_INT(brm_json_encode(L, -1, &err), -1);
    CHECK_HAS(err.msg, "function");
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
    brm_json_open(L);
    lua_pop(L, 1);
    check_fixtures();
    check_counts();
    check_refusals();
    check_values();
    check_topics();
    CHECK_INT(lua_gettop(L), 0);
    lua_close(L);
    return test_done();
}
