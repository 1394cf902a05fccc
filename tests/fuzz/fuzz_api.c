/*
 * The `brume` module rules call (core/api.h), with arguments a rule could
 * pass: the fuzzer picks one of its functions (found by walking the module,
 * so functions added later are fuzzed too), with or without an event being
 * handled, and up to five arguments (nil, booleans, integers, floats,
 * strings, words the functions know, nested tables, brume.null, a
 * function), and calls it from Lua through the sandbox's door, as a rule
 * would. Whatever it does - return, raise, run out of budget or memory -
 * the VM stays usable, its stack empty, its memory under the cap, and what
 * the call queued is well formed. Changes to the state are undone after
 * each input, so inputs do not depend on each other.
 */
#include <lauxlib.h>
#include <string.h>
#include <unistd.h>

#include "api.h"
#include "config.h"
#include "fuzz.h"
#include "log.h"
#include "state.h"

#define MEMORY    (16u << 20)
#define MAX_DEPTH 3

static const char config_text[] =
    "sources = { mist = { path = '/mist', insecure = true } }\n"
    "targets = {\n"
    "  out = { kind = 'file', path = 'out.jsonl' },\n"
    "  hook = { kind = 'webhook', url = 'https://hooks.example/x', secret = "
    "'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw' },\n"
    "  chat = { kind = 'slack', url = 'https://hooks.slack.com/services/x', rate = '1/s' },\n"
    "  page = { kind = 'pagerduty', routing_key = '0123456789abcdef0123456789abcdef' },\n"
    "}\n";

/* Returns brume's functions (and print) in name order, a function that
 * calls one as a rule does, and brume.null. */
static const char setup_text[] =
    "local funcs = {}\n"
    "local function walk(prefix, t, depth)\n"
    "  local keys = {}\n"
    "  for k in pairs(t) do if type(k) == 'string' then keys[#keys + 1] = k end end\n"
    "  table.sort(keys)\n"
    "  for _, k in ipairs(keys) do\n"
    "    local v = t[k]\n"
    "    if type(v) == 'function' then\n"
    "      funcs[#funcs + 1] = v\n"
    "    elseif type(v) == 'table' and depth < 2 then\n"
    "      walk(prefix .. k .. '.', v, depth + 1)\n"
    "    end\n"
    "  end\n"
    "end\n"
    "walk('brume.', brume, 0)\n"
    "funcs[#funcs + 1] = print\n"
    "return funcs, function(f, ...) return f(...) end, brume.null\n";

static const char *const words[] = {
    "out",
    "hook",
    "chat",
    "page",
    "http",
    "nope",
    "alarms",
    "device_events",
    "",
    "90s",
    "15m",
    "24h",
    "0s",
    "-1",
    "1e309",
    "nan",
    "key",
    "title",
    "text",
    "severity",
    "url",
    "method",
    "headers",
    "body",
    "https://example.com/x",
    "POST",
    "GET",
    "raw",
    "fields",
    "link",
    "dedup_key",
    "critical",
};

static struct {
    char dir[64];
    struct brm_config *cfg;
    struct brm_sandbox *sb;
    struct brm_state *state;
    struct brm_api *api;
    lua_State *L;
    int funcs, trampoline, null; /* registry references */
    size_t nfuncs;
    struct brm_actions sink;
    struct brm_scope scope;
    size_t emitted;
    int busy;
} g;

static void cleanup(void) {
    brm_sandbox_free(g.sb);
    brm_state_release(g.scope.txn, 0);
    brm_state_free(g.state);
    brm_config_free(g.cfg);
    char *path = brm_path_join(g.dir, "brume.lua");
    unlink(path);
    free(path);
    rmdir(g.dir);
}

static struct brm_config *load_config(void) {
    snprintf(g.dir, sizeof(g.dir), "/tmp/brume-fuzz-api-XXXXXX");
    MUST(mkdtemp(g.dir) != NULL);
    char *path = brm_path_join(g.dir, "brume.lua");
    FILE *f = fopen(path, "w");
    MUST(f && fputs(config_text, f) >= 0 && fclose(f) == 0);
    struct brm_errors errs = { 0 };
    struct brm_config *c = brm_config_load(path, brm_api_open_for_config, NULL, &errs);
    for (size_t i = 0; i < errs.n; i++) fprintf(stderr, "config: %s\n", errs.v[i].msg);
    MUST(c != NULL);
    brm_errors_reset(&errs);
    free(path);
    return c;
}

static void setup(void) {
    struct brm_err err;
    brm_log_setup(BRM_LOG_ERROR, BRM_LOG_LOGFMT);
    g.cfg = load_config();
    struct brm_sandbox_opts o = { .instructions = 200000, .time_limit = 1, .memory = MEMORY };
    g.sb = brm_sandbox_new(&o);
    g.L = brm_sandbox_state(g.sb);
    g.api = brm_api_open(g.sb, g.cfg);
    MUST(brm_api_load_targets(g.api, &err) == 0);
    g.state = brm_state_new();
    brm_api_set_state(g.api, g.state);
    MUST(brm_sandbox_loadbuffer(g.sb, setup_text, sizeof(setup_text) - 1, "=fuzz", &err) == 0);
    MUST(brm_sandbox_call(g.sb, 0, 3, &err) == BRM_CALL_OK);
    g.null = luaL_ref(g.L, LUA_REGISTRYINDEX);
    g.trampoline = luaL_ref(g.L, LUA_REGISTRYINDEX);
    g.nfuncs = lua_rawlen(g.L, -1);
    g.funcs = luaL_ref(g.L, LUA_REGISTRYINDEX);
    MUST(g.nfuncs > 10);
    lua_newtable(g.L);
    g.scope = (struct brm_scope){ .delivery = 1,
                                  .rule = "fuzz",
                                  .rule_key = "fuzz",
                                  .topic = "alarms",
                                  .event_id = "e1",
                                  .index = 1,
                                  .sink = &g.sink,
                                  .emit_queue = luaL_ref(g.L, LUA_REGISTRYINDEX),
                                  .emitted = &g.emitted,
                                  .txn = brm_state_begin(g.state),
                                  .busy = &g.busy };
    atexit(cleanup);
}

static void push_value(struct fuzz_in *in, int depth);

static void push_table(struct fuzz_in *in, int depth) {
    lua_State *L = g.L;
    int n = fuzz_byte(in) % 6;
    lua_createtable(L, 0, n);
    for (int i = 0; i < n; i++) {
        uint8_t k = fuzz_byte(in);
        if (k & 1)
            lua_pushinteger(L, (k >> 1) % 4 + 1); /* array-like */
        else
            lua_pushstring(L, words[(k >> 1) % BRM_ARRAY_LEN(words)]);
        push_value(in, depth + 1);
        lua_rawset(L, -3);
    }
}

/* Pushes a value the input chooses. [-0, +1] */
static void push_value(struct fuzz_in *in, int depth) {
    lua_State *L = g.L;
    uint8_t t = fuzz_byte(in);
    union {
        uint8_t b[8];
        int64_t i;
        double d;
    } u = { { 0 } };
    size_t n;
    const char *s;
    switch (t % 11) {
    case 0: lua_pushnil(L); break;
    case 1: lua_pushboolean(L, t & 16); break;
    case 2: lua_pushinteger(L, (int8_t)fuzz_byte(in)); break;
    case 3:
    case 4:
        for (int i = 0; i < 8; i++) u.b[i] = fuzz_byte(in);
        if (t % 11 == 3)
            lua_pushinteger(L, (lua_Integer)u.i);
        else
            lua_pushnumber(L, u.d); /* NaN and infinities too */
        break;
    case 5:
        s = fuzz_bytes(in, fuzz_byte(in) % 65, &n);
        lua_pushlstring(L, s, n);
        break;
    case 6:
    case 7: lua_pushstring(L, words[fuzz_byte(in) % BRM_ARRAY_LEN(words)]); break;
    case 8:
        if (depth < MAX_DEPTH)
            push_table(in, depth);
        else
            lua_pushnil(L); /* no deeper */
        break;
    case 9: lua_rawgeti(L, LUA_REGISTRYINDEX, g.null); break;
    default: lua_rawgeti(L, LUA_REGISTRYINDEX, g.trampoline); break; /* a function */
    }
}

/* What a call queued is well formed. */
static void check_sink(void) {
    for (size_t i = 0; i < g.sink.n; i++) {
        const struct brm_action *a = &g.sink.v[i];
        MUST(a->key && a->rule && a->target && ((a->method && a->url) || a->plan));
        MUST(brm_config_target(g.cfg, a->target) != NULL);
    }
    MUST(g.sink.n <= BRM_MAX_ACTIONS_PER_EVENT);
}

/* The VM still runs code after the call, whatever the call did. */
static void check_vm(void) {
    struct brm_err err;
    static const char probe[] = "local t = {} for i = 1, 100 do t[i] = i end return #t";
    MUST(lua_gettop(g.L) == 0);
    MUST(brm_sandbox_memory(g.sb) <= MEMORY);
    MUST(brm_sandbox_loadbuffer(g.sb, probe, sizeof(probe) - 1, "=probe", &err) == 0);
    MUST(brm_sandbox_call(g.sb, 0, 1, &err) == BRM_CALL_OK);
    MUST(lua_tointeger(g.L, -1) == 100);
    lua_settop(g.L, 0);
}

/* Undoes what the call did to the state and the event's scope. */
static void reset(void) {
    brm_actions_reset(&g.sink);
    brm_state_release(g.scope.txn, 0);
    g.scope.txn = brm_state_begin(g.state);
    g.busy = 0;
    g.emitted = 0;
    g.scope.sent = g.scope.rule_sent = 0;
    lua_newtable(g.L);
    lua_rawseti(g.L, LUA_REGISTRYINDEX, g.scope.emit_queue);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g.sb) setup();
    struct fuzz_in in = { data, size };
    lua_State *L = g.L;
    uint8_t which = fuzz_byte(&in), how = fuzz_byte(&in);
    int nargs = (how >> 1) % 6;
    lua_rawgeti(L, LUA_REGISTRYINDEX, g.trampoline);
    lua_rawgeti(L, LUA_REGISTRYINDEX, g.funcs);
    lua_rawgeti(L, -1, (lua_Integer)(which % g.nfuncs) + 1);
    lua_remove(L, -2);
    for (int i = 0; i < nargs; i++) push_value(&in, 0);
    /* Without an event the functions that need one must say so. */
    brm_api_set_scope(g.api, how & 1 ? NULL : &g.scope);
    struct brm_err err;
    brm_sandbox_call(g.sb, nargs + 1, LUA_MULTRET, &err);
    brm_api_set_scope(g.api, NULL);
    lua_settop(L, 0);
    check_sink();
    reset();
    check_vm();
    /* What the input made is freed within it, so the fuzzer's leak check
     * (more mallocs than frees in one input) only fires on a real leak. */
    lua_gc(L, LUA_GCCOLLECT);
    return 0;
}
