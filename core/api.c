#include "api.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "log.h"
#include "metrics.h"
#include "verify.h"

struct brm_api {
    const struct brm_config *cfg;
    struct brm_scope *scope;
    struct brm_sandbox *sb;
    int dry_run;
    int targets; /* registry reference: name -> { options, adapter, secrets } */
    int mask;    /* registry reference to brume.target.mask */
    struct brm_state *state;
    double (*clock)(void *arg); /* what time it is (brume test's simulated clock), or NULL */
    void *clock_arg;
};

void brm_actions_reset(struct brm_actions *a) {
    for (size_t i = 0; i < a->n; i++) {
        struct brm_action *x = &a->v[i];
        free(x->key);
        free(x->rule);
        free(x->target);
        free(x->topic);
        free(x->event_id);
        free(x->message);
        free(x->method);
        free(x->url);
        free(x->headers);
        free(x->body);
        free(x->plan);
        free(x->display);
        free(x->ticket);
    }
    free(a->v);
    a->v = NULL;
    a->n = a->cap = 0;
}

void brm_api_set_scope(struct brm_api *api, struct brm_scope *scope) {
    api->scope = scope;
}

void brm_api_set_dry_run(struct brm_api *api, int on) {
    api->dry_run = on;
}

void brm_api_set_state(struct brm_api *api, struct brm_state *state) {
    api->state = state;
}

void brm_api_set_clock(struct brm_api *api, double (*clock)(void *arg), void *arg) {
    api->clock = clock;
    api->clock_arg = arg;
}

/* What time it is for the rules. */
static double now(const struct brm_api *api) {
    return api->clock ? api->clock(api->clock_arg) : brm_time_now();
}

static struct brm_api *get_api(lua_State *L) {
    return lua_touserdata(L, lua_upvalueindex(1));
}

static struct brm_scope *need_scope(lua_State *L, const char *fn) {
    struct brm_scope *s = get_api(L)->scope;
    if (!s) luaL_error(L, "%s can only be called while handling an event", fn);
    return s;
}

/* ---- actions ------------------------------------------------------------ */

/* Checks what an adapter returned (on top of the stack): a request
 * { method, url, headers, body }, or for a ticket kind a plan { ticket,
 * lookup, create, update } of such requests. Raises when it is neither. */
static void check_request(lua_State *L, int idx, const char *kind, int ticket) {
    idx = lua_absindex(L, idx);
    if (lua_type(L, idx) != LUA_TTABLE)
        luaL_error(L, "brume.send: the %s adapter returned %s, not a request", kind,
                   luaL_typename(L, idx));
    if (ticket) {
        if (lua_getfield(L, idx, "ticket") != LUA_TSTRING)
            luaL_error(L, "brume.send: the %s adapter's plan has no ticket key", kind);
        lua_pop(L, 1);
        int steps = 0;
        static const char *const names[] = { "lookup", "create", "update" };
        for (size_t i = 0; i < BRM_ARRAY_LEN(names); i++) {
            if (lua_getfield(L, idx, names[i]) == LUA_TTABLE) {
                check_request(L, -1, kind, 0);
                steps++;
            }
            lua_pop(L, 1);
        }
        if (!steps) luaL_error(L, "brume.send: the %s adapter's plan has no request", kind);
        return;
    }
    if (lua_getfield(L, idx, "method") != LUA_TSTRING || lua_getfield(L, idx, "url") != LUA_TSTRING)
        luaL_error(L, "brume.send: the %s adapter's request needs a method and a url", kind);
    lua_pop(L, 2);
    int t = lua_getfield(L, idx, "body");
    if (t != LUA_TNIL && t != LUA_TSTRING)
        luaL_error(L, "brume.send: the %s adapter's request body must be a string", kind);
    lua_pop(L, 1);
    /* The key the target's deliveries keep their order by: a store key. */
    t = lua_getfield(L, idx, "order");
    size_t olen;
    const char *order = t == LUA_TSTRING ? lua_tolstring(L, -1, &olen) : NULL;
    if (t != LUA_TNIL && (!order || olen == 0 || olen > BRM_MAX_ORDER_KEY || strlen(order) != olen))
        luaL_error(L, "brume.send: the %s adapter's order key must be 1 to %d bytes without NUL",
                   kind, BRM_MAX_ORDER_KEY);
    lua_pop(L, 1);
    if (lua_getfield(L, idx, "headers") == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            brm_sandbox_charge(L, 1);
            size_t nlen, vlen;
            const char *name = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &nlen) : NULL;
            const char *value = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &vlen) : NULL;
            if (!name || !value)
                luaL_error(L, "brume.send: the %s adapter's headers must be strings", kind);
            /* A line break would start a header (or a body) of its own. */
            if (nlen == 0 || strcspn(name, "\r\n:") != nlen || strlen(name) != nlen ||
                strcspn(value, "\r\n") != vlen || strlen(value) != vlen)
                luaL_error(L, "brume.send: the %s adapter's header '%s' has a bad name or value",
                           kind, name);
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
}

/* Pushes the value at IDX as JSON text; raises on failure. [-0, +1] */
static void push_json(lua_State *L, int idx, const char *what) {
    struct brm_err err;
    size_t len;
    if (brm_json_encode(L, idx, &err) < 0)
        luaL_error(L, "%s cannot be encoded as JSON: %s", what, err.msg);
    lua_tolstring(L, -1, &len);
    if (len > BRM_MAX_MESSAGE)
        luaL_error(L, "%s is %d bytes, more than the %d allowed", what, (int)len,
                   (int)BRM_MAX_MESSAGE);
}

/* Pushes the headers of the request at REQ as "Name: value" lines, or nil
 * when it has none. [-0, +1] */
static void push_headers(lua_State *L, int req) {
    if (lua_getfield(L, req, "headers") != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_pushnil(L);
        return;
    }
    int headers = lua_gettop(L);
    lua_Integer n = 0;
    lua_newtable(L);
    lua_pushnil(L);
    while (lua_next(L, headers)) { /* names and values are strings (check_request) */
        lua_pushfstring(L, "%s: %s", lua_tostring(L, -2), lua_tostring(L, -1));
        lua_rawseti(L, headers + 1, ++n);
        lua_pop(L, 1);
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (lua_Integer i = 1; i <= n; i++) {
        if (i > 1) luaL_addchar(&b, '\n');
        lua_rawgeti(L, headers + 1, i);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    if (n == 0) {
        lua_pop(L, 1);
        lua_pushnil(L);
    }
    lua_replace(L, headers);
    lua_settop(L, headers);
}

static char *dup_field(lua_State *L, int idx, size_t *len) {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    if (len) *len = s ? n : 0;
    return s ? brm_xstrndup(s, n) : NULL;
}

/* In the masked copy of a request at IDX, which a dry run shows (the
 * request sent is another copy), each body that is a JSON object or array
 * becomes that value, so that it shows as JSON rather than as a string
 * holding JSON. Goes into a plan's steps. [-0, +0] */
static void show_json_bodies(lua_State *L, int idx, int depth) {
    if (depth > 4 || !lua_checkstack(L, 4)) return;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -1) == LUA_TTABLE) show_json_bodies(L, lua_gettop(L), depth + 1);
        lua_pop(L, 1);
    }
    static const char *const fields[] = { "body", "value" }; /* value: a kafka message's */
    for (size_t i = 0; i < BRM_ARRAY_LEN(fields); i++) {
        lua_pushstring(L, fields[i]);
        if (lua_rawget(L, idx) == LUA_TSTRING) {
            struct brm_err err;
            size_t n;
            const char *s = lua_tolstring(L, -1, &n);
            size_t blank = strspn(s, " \t\r\n");
            if ((s[blank] == '{' || s[blank] == '[') && brm_json_decode(L, s, n, &err) == 0) {
                lua_pushstring(L, fields[i]);
                lua_insert(L, -2);
                lua_rawset(L, idx);
            }
        }
        lua_pop(L, 1);
    }
}

/*
 * Appends an action for the request at REQ (and the message at MSG, 0 for
 * none) to TARGET. Everything that can raise (encoding, masking, growing
 * the stack) happens first and leaves Lua strings on the stack; only then
 * is C memory taken, by steps that cannot raise: a longjmp cannot leak it.
 * A plain request is kept as its parts, as the outbox sends them; a ticket
 * plan as JSON. Its ticket key, or a plain request's order key, is the key
 * its target's deliveries keep their order by. The message and a masked copy of the request are
 * made for dry runs only (`brume test` shows them).
 */
static void add_action(lua_State *L, struct brm_api *api, const struct brm_target *target, int msg,
                       int req, const char *ticket, const char *key) {
    struct brm_scope *s = api->scope;
    luaL_checkstack(L, 16, NULL);
    int top = lua_gettop(L);
    if (ticket) {
        push_json(L, req, "brume.send: the request");
        lua_pushnil(L), lua_pushnil(L), lua_pushnil(L), lua_pushnil(L);
        lua_pushstring(L, ticket);
    } else {
        lua_pushnil(L);
        lua_getfield(L, req, "method");
        lua_getfield(L, req, "url");
        push_headers(L, req);
        lua_getfield(L, req, "body");
        lua_getfield(L, req, "order"); /* a string or nil (check_request) */
    }
    lua_getfield(L, req, "sign");
    int sign = lua_type(L, -1) == LUA_TSTRING;
    lua_pop(L, 1);
    int display = 0, message = 0;
    if (api->dry_run) {
        struct brm_err err;
        if (!msg || brm_json_encode(L, msg, &err) < 0) lua_pushliteral(L, "null");
        message = lua_gettop(L);
        if (api->mask != LUA_NOREF) {
            lua_rawgeti(L, LUA_REGISTRYINDEX, api->mask);
            lua_pushvalue(L, req);
            lua_rawgeti(L, LUA_REGISTRYINDEX, api->targets);
            lua_getfield(L, -1, target->name);
            lua_getfield(L, -1, "secrets");
            lua_replace(L, -3);
            lua_pop(L, 1);
            lua_pushstring(L, key);
            if (lua_pcall(L, 3, 1, 0) == LUA_OK) {
                if (lua_type(L, -1) == LUA_TTABLE) show_json_bodies(L, lua_gettop(L), 0);
                if (brm_json_encode(L, -1, &err) == 0) display = lua_gettop(L);
            }
        }
    }
    /* The copies below are C memory, which the VM's allocator never sees. */
    brm_sandbox_charge(L, 1 + (long)((lua_rawlen(L, top + 1) + lua_rawlen(L, top + 5) +
                                      (message ? lua_rawlen(L, message) : 0) +
                                      (display ? lua_rawlen(L, display) : 0)) /
                                     BRM_SANDBOX_BYTES_PER_UNIT));
    struct brm_actions *a = s->sink;
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 8;
        a->v = brm_xrealloc(a->v, a->cap * sizeof(*a->v));
    }
    struct brm_action *x = &a->v[a->n++];
    *x = (struct brm_action){
        .key = brm_xstrdup(key),
        .rule = brm_xstrdup(s->rule),
        .target = brm_xstrdup(target->name),
        .topic = brm_xstrdup(s->topic),
        .event_id = brm_xstrdup(s->event_id),
        .event = s->index,
        .seq = s->sent,
        .plan = dup_field(L, top + 1, NULL),
        .method = dup_field(L, top + 2, NULL),
        .url = dup_field(L, top + 3, NULL),
        .headers = dup_field(L, top + 4, NULL),
        .sign = sign,
        .message = message ? dup_field(L, message, NULL) : NULL,
        .display = display ? dup_field(L, display, NULL) : NULL,
        .ticket = dup_field(L, top + 6, NULL),
    };
    x->body = dup_field(L, top + 5, &x->body_len);
    lua_settop(L, top);
}

/* Counts one more message for the scope and writes its key into KEY. */
static void next_key(lua_State *L, struct brm_scope *s, char *key, size_t size) {
    if (s->rule_sent >= BRM_MAX_ACTIONS_PER_EVENT)
        luaL_error(L, "brume.send: more than %d messages from one rule for one event",
                   BRM_MAX_ACTIONS_PER_EVENT);
    s->sent++;
    s->rule_sent++;
    snprintf(key, size, "%llu:%zu:%s:%zu", (unsigned long long)s->delivery, s->index, s->rule_key,
             s->rule_sent);
}

static int api_send(lua_State *L) {
    struct brm_api *api = get_api(L);
    struct brm_scope *s = need_scope(L, "brume.send");
    const char *name = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        lua_pushnil(L);
        if (lua_next(L, 3))
            return luaL_argerror(
                L, 3, lua_pushfstring(L, "unknown option '%s'", luaL_tolstring(L, -2, NULL)));
    }
    lua_settop(L, 2);
    const struct brm_target *t = brm_config_target(api->cfg, name);
    if (!t) return luaL_error(L, "brume.send: no target named '%s' in the config", name);
    if (strcmp(t->kind, BRM_HTTP_TARGET) == 0)
        return luaL_error(L, "brume.send: '%s' is brume.http's target", name);
    if (t->unset) /* an offline run's config (brm_config_load_offline) */
        return luaL_error(L, "brume.send: target %s needs %s, which is not set", name, t->unset);
    char key[400];
    next_key(L, s, key, sizeof(key));
    /* request = adapter.request(options, message, ctx) */
    lua_rawgeti(L, LUA_REGISTRYINDEX, api->targets);
    lua_getfield(L, -1, name); /* 4: { options, adapter, secrets } */
    lua_getfield(L, 4, "adapter");
    lua_getfield(L, -1, "request");
    lua_getfield(L, 4, "options");
    lua_pushvalue(L, 2);
    lua_createtable(L, 0, 5);
    lua_pushstring(L, key);
    lua_setfield(L, -2, "key");
    lua_pushstring(L, s->rule);
    lua_setfield(L, -2, "rule");
    lua_pushstring(L, s->topic);
    lua_setfield(L, -2, "topic");
    lua_pushstring(L, s->event_id);
    lua_setfield(L, -2, "event");
    lua_pushstring(L, name);
    lua_setfield(L, -2, "target");
    lua_call(L, 3, 1); /* still inside the rule's protected call */
    int req = lua_gettop(L);
    check_request(L, req, t->kind, t->ticket);
    const char *ticket = NULL;
    if (t->ticket) {
        lua_getfield(L, req, "ticket");
        ticket = lua_tostring(L, -1);
    }
    add_action(L, api, t, 2, req, ticket, key);
    return 0;
}

/* brume.http{ url =, method = "POST", headers = {}, body = string or table }. */
static int api_http(lua_State *L) {
    struct brm_api *api = get_api(L);
    struct brm_scope *s = need_scope(L, "brume.http");
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    lua_createtable(L, 0, 4); /* 2: the request */
    if (lua_getfield(L, 1, "url") != LUA_TSTRING ||
        (strncmp(lua_tostring(L, -1), "http://", 7) != 0 &&
         strncmp(lua_tostring(L, -1), "https://", 8) != 0))
        return luaL_argerror(L, 1, "url must be an http:// or https:// URL");
    lua_setfield(L, 2, "url");
    if (lua_getfield(L, 1, "method") == LUA_TNIL) {
        lua_pop(L, 1);
        lua_pushliteral(L, "POST");
    } else if (lua_type(L, -1) != LUA_TSTRING) {
        return luaL_argerror(L, 1, "method must be a string");
    }
    lua_setfield(L, 2, "method");
    lua_createtable(L, 0, 2); /* 3: headers */
    if (lua_getfield(L, 1, "headers") == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            brm_sandbox_charge(L, 1);
            if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
                return luaL_argerror(L, 1, "headers must be strings");
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_rawset(L, 3);
        }
    }
    lua_pop(L, 1);
    int bt = lua_getfield(L, 1, "body");
    if (bt == LUA_TTABLE) {
        struct brm_err err;
        if (brm_json_encode(L, -1, &err) < 0)
            return luaL_error(L, "brume.http: the body cannot be encoded as JSON: %s", err.msg);
        lua_replace(L, -2);
        lua_getfield(L, 3, "Content-Type");
        if (lua_isnil(L, -1)) {
            lua_pushliteral(L, "application/json");
            lua_setfield(L, 3, "Content-Type");
        }
        lua_pop(L, 1);
    } else if (bt != LUA_TNIL && bt != LUA_TSTRING) {
        return luaL_argerror(L, 1, "body must be a string or a table");
    }
    lua_setfield(L, 2, "body");
    lua_pushvalue(L, 3);
    lua_setfield(L, 2, "headers");
    char key[400];
    next_key(L, s, key, sizeof(key));
    add_action(L, api, brm_config_target(api->cfg, BRM_HTTP_TARGET), 0, 2, NULL, key);
    return 0;
}

static int api_emit(lua_State *L) {
    struct brm_scope *s = need_scope(L, "brume.emit");
    size_t tlen;
    const char *topic = luaL_checklstring(L, 1, &tlen);
    luaL_checktype(L, 2, LUA_TTABLE);
    char name[BRM_TOPIC_MAX];
    if (tlen == 0 || brm_topic_normalize(topic, tlen, name, sizeof(name)) < 0)
        return luaL_argerror(L, 1, "not a topic name");
    if (s->depth + 1 > BRM_MAX_EMIT_DEPTH)
        return luaL_error(L, "brume.emit: events emitted more than %d deep (a loop?)",
                          BRM_MAX_EMIT_DEPTH);
    if (*s->emitted >= BRM_MAX_EMITS_PER_EVENT)
        return luaL_error(L, "brume.emit: more than %d events emitted for one event",
                          BRM_MAX_EMITS_PER_EVENT);
    (*s->emitted)++;
    /* queue[#queue + 1] = { topic, event, depth } */
    lua_createtable(L, 3, 0);
    lua_pushstring(L, name);
    lua_rawseti(L, -2, 1);
    lua_pushvalue(L, 2);
    lua_rawseti(L, -2, 2);
    lua_pushinteger(L, s->depth + 1);
    lua_rawseti(L, -2, 3);
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->emit_queue);
    lua_insert(L, -2);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
    return 0;
}

/* ---- state --------------------------------------------------------------- */

/* A duration argument: seconds, or "90s", "15m", "24h". */
#define MAX_DURATION (10 * 365 * 86400.0) /* seconds: a window, a timer's delay */

static double check_duration(lua_State *L, int arg) {
    double d;
    if (lua_type(L, arg) == LUA_TNUMBER) {
        d = lua_tonumber(L, arg);
    } else {
        const char *s = luaL_checkstring(L, arg);
        if (brm_parse_duration(s, &d) < 0)
            return luaL_argerror(L, arg,
                                 "expected a duration (seconds, \"90s\", \"15m\", \"24h\")");
    }
    if (!(d > 0)) return luaL_argerror(L, arg, "a duration must be positive");
    if (d > MAX_DURATION) return luaL_argerror(L, arg, "a duration is at most 10 years");
    return d;
}

static const char *check_key(lua_State *L, int arg) {
    size_t len;
    const char *k = luaL_checklstring(L, arg, &len);
    if (len == 0 || len > BRM_STATE_MAX_KEY) luaL_argerror(L, arg, "a key is 1 to 1024 bytes");
    if (memchr(k, '\0', len) || memchr(k, '\x1f', len))
        luaL_argerror(L, arg, "a key cannot hold NUL or \\x1f");
    return k;
}

/* The state, for FN. Once a call met a busy key the body is to be run again,
 * and every state call raises until the rule ends. */
static struct brm_state *need_state(lua_State *L, struct brm_api *api, const char *fn) {
    struct brm_scope *s = need_scope(L, fn);
    if (!api->state) luaL_error(L, "%s: no state in this run", fn);
    if (*s->busy) luaL_error(L, "%s: the state is busy (this body runs again)", fn);
    return api->state;
}

/* Raises for a failed state call: RC is -1 (full) or BRM_STATE_BUSY. */
static int state_failed(lua_State *L, struct brm_api *api, int rc, const char *fn) {
    if (rc == BRM_STATE_BUSY) { /* the whole call stops: the body runs again, whole */
        *api->scope->busy = 1;
        return brm_sandbox_abort(L, "the state is busy (this body runs again)");
    }
    if (strncmp(fn, "brume.timer", 11) == 0 || strncmp(fn, "brume.group", 11) == 0)
        return luaL_error(L, "%s: rule '%s' holds %d timers and digests already", fn,
                          api->scope->rule, BRM_STATE_MAX_TIMERS);
    return luaL_error(L, "%s: the state holds %d keys already", fn, BRM_STATE_MAX_ENTRIES);
}

/* brume.once(key, ttl): true the first time key is seen within ttl. */
static int api_once(lua_State *L) {
    struct brm_api *api = get_api(L);
    struct brm_state *st = need_state(L, api, "brume.once");
    const char *key = check_key(L, 1);
    double ttl = check_duration(L, 2);
    int rc = brm_state_once(st, key, ttl, now(api), api->scope->txn);
    if (rc < 0) return state_failed(L, api, rc, "brume.once");
    lua_pushboolean(L, rc);
    return 1;
}

/* brume.throttle(key, limit, window): true while under limit per window. */
static int api_throttle(lua_State *L) {
    struct brm_api *api = get_api(L);
    struct brm_state *st = need_state(L, api, "brume.throttle");
    const char *key = check_key(L, 1);
    lua_Integer limit = luaL_checkinteger(L, 2);
    luaL_argcheck(L, limit > 0, 2, "the limit must be positive");
    double window = check_duration(L, 3);
    int rc = brm_state_throttle(st, key, (long)limit, window, now(api), api->scope->txn);
    if (rc < 0) return state_failed(L, api, rc, "brume.throttle");
    lua_pushboolean(L, rc);
    return 1;
}

static int api_state_get(lua_State *L) {
    struct brm_api *api = get_api(L);
    struct brm_state *st = need_state(L, api, "brume.state.get");
    char *json;
    int rc = brm_state_get(st, check_key(L, 1), now(api), api->scope->txn, &json);
    if (rc < 0) return state_failed(L, api, rc, "brume.state.get");
    struct brm_err err;
    if (!json) {
        lua_pushnil(L);
        return 1;
    }
    rc = brm_json_decode(L, json, strlen(json), &err);
    free(json);
    if (rc < 0) lua_pushnil(L);
    return 1;
}

/* brume.state.set(key, value [, ttl]): nil deletes. */
static int api_state_set(lua_State *L) {
    struct brm_api *api = get_api(L);
    struct brm_state *st = need_state(L, api, "brume.state.set");
    const char *key = check_key(L, 1);
    luaL_checkany(L, 2);
    double ttl = lua_isnoneornil(L, 3) ? 0 : check_duration(L, 3);
    const char *json = NULL;
    if (!lua_isnil(L, 2)) {
        struct brm_err err;
        size_t len;
        if (brm_json_encode(L, 2, &err) < 0)
            return luaL_error(L, "brume.state.set: the value cannot be encoded as JSON: %s",
                              err.msg);
        json = lua_tolstring(L, -1, &len);
        if (len > BRM_STATE_MAX_VALUE)
            return luaL_error(L, "brume.state.set: the value is %d bytes, more than %d", (int)len,
                              BRM_STATE_MAX_VALUE);
    }
    int rc = brm_state_set(st, key, json, ttl, now(api), api->scope->txn);
    if (rc < 0) return state_failed(L, api, rc, "brume.state.set");
    return 0;
}

/* brume.state.incr(key [, n [, ttl]]): the new number. */
static int api_state_incr(lua_State *L) {
    struct brm_api *api = get_api(L);
    struct brm_state *st = need_state(L, api, "brume.state.incr");
    const char *key = check_key(L, 1);
    double n = luaL_optnumber(L, 2, 1);
    double ttl = lua_isnoneornil(L, 3) ? 0 : check_duration(L, 3);
    double v;
    int rc = brm_state_incr(st, key, n, ttl, now(api), api->scope->txn, &v);
    if (rc == -1 || rc == BRM_STATE_BUSY) return state_failed(L, api, rc, "brume.state.incr");
    if (rc == -2) return luaL_error(L, "brume.state.incr: '%s' does not hold a number", key);
    /* In range before the conversion: converting 1e300 is undefined. */
    if (v >= -0x1p63 && v < 0x1p63 && v == (lua_Number)(lua_Integer)v)
        lua_pushinteger(L, (lua_Integer)v);
    else
        lua_pushnumber(L, v);
    return 1;
}

/* ---- timers and digests --------------------------------------------------- */

/* The value at ARG as JSON of at most MAX bytes, left on the stack; NULL
 * for nil. Raises when it cannot be encoded or is too long. */
static const char *check_json(lua_State *L, int arg, size_t max, const char *fn) {
    struct brm_err err;
    size_t len;
    if (lua_isnoneornil(L, arg)) return NULL;
    if (brm_json_encode(L, arg, &err) < 0)
        luaL_error(L, "%s: the value cannot be encoded as JSON: %s", fn, err.msg);
    const char *json = lua_tolstring(L, -1, &len);
    if (len > max) luaL_error(L, "%s: the value is %d bytes, more than %d", fn, (int)len, (int)max);
    return json;
}

/* A delay: a duration, or 0 (at once). */
static double check_delay(lua_State *L, int arg) {
    if (lua_type(L, arg) == LUA_TNUMBER && lua_tonumber(L, arg) == 0) return 0;
    return check_duration(L, arg);
}

/* brume.timer.set(key, delay [, data]): arms (or arms again) this rule's
 * timer KEY; on_timer(key, data, ctx) runs when it is due. */
static int api_timer_set(lua_State *L) {
    struct brm_api *api = get_api(L);
    struct brm_state *st = need_state(L, api, "brume.timer.set");
    const char *key = check_key(L, 1);
    double delay = check_delay(L, 2);
    const char *data = check_json(L, 3, BRM_STATE_MAX_DATA, "brume.timer.set");
    int rc =
        brm_state_timer_set(st, api->scope->rule, key, now(api) + delay, data, api->scope->txn);
    if (rc < 0) return state_failed(L, api, rc, "brume.timer.set");
    return 0;
}

/* brume.timer.cancel(key): true when a pending timer was cancelled. */
static int api_timer_cancel(lua_State *L) {
    struct brm_api *api = get_api(L);
    struct brm_state *st = need_state(L, api, "brume.timer.cancel");
    int rc = brm_state_timer_cancel(st, api->scope->rule, check_key(L, 1), api->scope->txn);
    if (rc < 0) return state_failed(L, api, rc, "brume.timer.cancel");
    lua_pushboolean(L, rc);
    return 1;
}

/* brume.timer.get(key): its due time and data, or nil. */
static int api_timer_get(lua_State *L) {
    struct brm_api *api = get_api(L);
    struct brm_state *st = need_state(L, api, "brume.timer.get");
    double due = 0;
    char *data;
    int rc =
        brm_state_timer_get(st, api->scope->rule, check_key(L, 1), api->scope->txn, &due, &data);
    if (rc < 0) return state_failed(L, api, rc, "brume.timer.get");
    if (rc == 0) {
        lua_pushnil(L);
        return 1;
    }
    struct brm_err err;
    lua_pushnumber(L, due);
    int decoded = brm_json_decode(L, data, strlen(data), &err) == 0;
    free(data);
    if (!decoded) lua_pushnil(L);
    if (lua_islightuserdata(L, -1) && !lua_touserdata(L, -1)) { /* armed without data */
        lua_pop(L, 1);
        lua_pushnil(L);
    }
    return 2;
}

/* The options of brume.group.add at ARG: debounce, max_wait, max_items. */
static void check_group_opts(lua_State *L, int arg, struct brm_group_opts *o) {
    o->debounce = 0, o->max_wait = 0, o->max_items = 100;
    if (lua_isnoneornil(L, arg)) return;
    luaL_checktype(L, arg, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, arg)) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
        if (strcmp(k, "debounce") == 0) {
            o->debounce = lua_toboolean(L, -1);
        } else if (strcmp(k, "max_wait") == 0) {
            o->max_wait = check_duration(L, lua_gettop(L));
        } else if (strcmp(k, "max_items") == 0) {
            lua_Integer n = lua_tointeger(L, -1);
            if (!lua_isinteger(L, -1) || n < 0 || n > BRM_STATE_MAX_ITEMS)
                luaL_argerror(L, arg,
                              lua_pushfstring(L, "max_items: 0 to %d", BRM_STATE_MAX_ITEMS));
            o->max_items = (long)n;
        } else {
            luaL_argerror(
                L, arg,
                lua_pushfstring(L, "unknown option '%s' (debounce, max_wait, max_items)", k));
        }
        lua_pop(L, 1);
    }
}

/* brume.group.add(key, window [, item [, opts]]): adds ITEM to this rule's
 * digest KEY; on_group(key, items, ctx) runs when its window closes.
 * Returns how many adds it has had. */
static int api_group_add(lua_State *L) {
    struct brm_api *api = get_api(L);
    struct brm_state *st = need_state(L, api, "brume.group.add");
    const char *key = check_key(L, 1);
    struct brm_group_opts o;
    o.window = check_duration(L, 2);
    check_group_opts(L, 4, &o);
    lua_settop(L, 3);
    const char *item = check_json(L, 3, BRM_STATE_MAX_ITEM, "brume.group.add");
    long count = 0;
    int rc =
        brm_state_group_add(st, api->scope->rule, key, item, &o, now(api), api->scope->txn, &count);
    if (rc < 0) return state_failed(L, api, rc, "brume.group.add");
    lua_pushinteger(L, count);
    return 1;
}

/* ---- logging ------------------------------------------------------------ */

#define MAX_LOG_FIELDS 16
/* What writing a record costs the rule: a write(2) is some thousand
 * instructions' worth. A dropped record costs a unit. */
#define LOG_UNITS 1000

/* Registry key: rule name -> its struct rule_log (a full userdata). */
static const char LOG_LIMITS;

/* How much one rule logs in this VM (so: per rule and worker). */
struct rule_log {
    struct brm_log_limit limit;
    struct brm_counter *dropped;
};

static struct rule_log *rule_log(lua_State *L, const char *rule) {
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &LOG_LIMITS) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &LOG_LIMITS);
    }
    if (lua_getfield(L, -1, rule) != LUA_TUSERDATA) {
        lua_pop(L, 1);
        memset(lua_newuserdatauv(L, sizeof(struct rule_log), 0), 0, sizeof(struct rule_log));
        lua_pushvalue(L, -1);
        lua_setfield(L, -3, rule);
    }
    struct rule_log *r = lua_touserdata(L, -1); /* anchored in the table: it stays put */
    lua_pop(L, 2);
    return r;
}

/* The running rule's limit when it may write one more record now, else
 * NULL: a dropped record is counted (brume_log_dropped_total), and a
 * window that dropped some is told of in one line of brume's own. */
static struct rule_log *admit(lua_State *L, const struct brm_scope *s) {
    const char *rule = s ? s->rule : "";
    struct rule_log *r = rule_log(L, rule);
    uint64_t report;
    int ok = brm_log_limit_admit(&r->limit, brm_time_mono_ms(), &report);
    if (report) {
        char n[32], window[32];
        snprintf(n, sizeof(n), "%llu", (unsigned long long)report);
        snprintf(window, sizeof(window), "%ds", BRM_LOG_WINDOW_MS / 1000);
        brm_log_warn("rule log lines dropped", "rule", rule, "dropped", n, "window", window);
    }
    if (!ok) {
        if (!r->dropped)
            r->dropped = brm_metrics_counter(
                "brume_log_dropped_total",
                "Log lines from rules (brume.log, print) dropped by the rate limit.", "rule", rule,
                NULL);
        brm_counter_add(r->dropped, 1);
        brm_sandbox_charge(L, 1);
    }
    return ok ? r : NULL;
}

/* Writes MSG and FIELDS as a record of user text (log.h: cut to
 * BRM_LOG_USER_MAX bytes, keys escaped), with the rule and event of the
 * scope when there is one; its text is paid for from R's bucket. */
static void write_record(lua_State *L, struct rule_log *r, const struct brm_scope *s,
                         enum brm_log_level level, const char *msg, size_t msglen, size_t omitted,
                         const struct brm_log_field *fields, size_t n) {
    const char *fixed[6];
    char request[32];
    size_t nfixed = 0;
    if (s) {
        snprintf(request, sizeof(request), "%llu", (unsigned long long)s->delivery);
        fixed[0] = "rule", fixed[1] = s->rule;
        fixed[2] = "request", fixed[3] = request;
        fixed[4] = "event", fixed[5] = s->event_id;
        nfixed = 3;
    }
    brm_sandbox_charge(L, LOG_UNITS); /* a call out of budget writes nothing */
    size_t text = msglen + omitted;
    for (size_t i = 0; i < n; i++) text += fields[i].klen + fields[i].vlen;
    brm_log_limit_spend(&r->limit, text < BRM_LOG_USER_MAX ? text : BRM_LOG_USER_MAX);
    brm_log_user(level, msg, msglen, omitted, fixed, nfixed, fields, n);
}

/* Logs MSG (argument 1) and the first MAX_LOG_FIELDS string-keyed FIELDS
 * (argument 2). */
static int log_at(lua_State *L, enum brm_log_level level) {
    struct brm_scope *s = get_api(L)->scope;
    struct rule_log *r;
    if (!brm_log_enabled(level) || !(r = admit(L, s))) return 0;
    luaL_checkstack(L, 2 * MAX_LOG_FIELDS + 8, NULL);
    size_t msglen;
    const char *msg = luaL_tolstring(L, 1, &msglen);
    struct brm_log_field f[MAX_LOG_FIELDS];
    size_t n = 0;
    if (lua_type(L, 2) == LUA_TTABLE) {
        long seen = 0; /* entries looked at, string keys or not */
        lua_pushnil(L);
        while (n < MAX_LOG_FIELDS && lua_next(L, 2)) {
            if (++seen % 64 == 0) brm_sandbox_charge(L, 64);
            if (lua_type(L, -2) == LUA_TSTRING) {
                /* Both strings are anchored on the stack: a __tostring may
                 * empty the table and collect garbage before we log. */
                lua_pushvalue(L, -2);
                lua_insert(L, 3);
                f[n].key = lua_tolstring(L, 3, &f[n].klen);
                f[n].value = luaL_tolstring(L, -1, &f[n].vlen);
                lua_insert(L, 3);
                n++;
            }
            lua_pop(L, 1);
        }
    }
    write_record(L, r, s, level, msg, msglen, 0, f, n);
    return 0;
}

static int api_log_debug(lua_State *L) {
    return log_at(L, BRM_LOG_DEBUG);
}
static int api_log_info(lua_State *L) {
    return log_at(L, BRM_LOG_INFO);
}
static int api_log_warn(lua_State *L) {
    return log_at(L, BRM_LOG_WARN);
}
static int api_log_error(lua_State *L) {
    return log_at(L, BRM_LOG_ERROR);
}

/* print(...) logs its arguments at info, tab-separated, as Lua's would;
 * only what fits in a record is copied. */
static int api_print(lua_State *L) {
    struct brm_scope *s = get_api(L)->scope;
    struct rule_log *r;
    if (!brm_log_enabled(BRM_LOG_INFO) || !(r = admit(L, s))) return 0;
    char text[BRM_LOG_USER_MAX + 1]; /* one byte more: the record sees it is cut */
    size_t len = 0, omitted = 0;
    for (int i = 1, n = lua_gettop(L); i <= n; i++) {
        size_t l;
        const char *p = luaL_tolstring(L, i, &l);
        for (int part = i > 1 ? 0 : 1; part < 2; part++) {
            const char *from = part ? p : "\t";
            size_t want = part ? l : 1, take = sizeof(text) - len;
            if (take > want) take = want;
            memcpy(text + len, from, take);
            len += take;
            omitted += want - take;
        }
        lua_pop(L, 1);
    }
    write_record(L, r, s, BRM_LOG_INFO, text, len, omitted, NULL, 0);
    return 0;
}

/* ---- data --------------------------------------------------------------- */

/* JSON and base64 read their input a byte at a time: charged before they
 * run (what they make is charged as it is allocated). */
static void charge_scan(lua_State *L, size_t bytes) {
    brm_sandbox_charge(L, 1 + (long)(bytes / BRM_SANDBOX_SCAN_BYTES_PER_UNIT));
}

/* The text it makes, charged after (the codec's own buffer is not the VM's). */
static int api_json_encode(lua_State *L) {
    struct brm_err err;
    luaL_checkany(L, 1);
    if (brm_json_encode(L, 1, &err) < 0) {
        luaL_pushfail(L);
        lua_pushstring(L, err.msg);
        return 2;
    }
    charge_scan(L, lua_rawlen(L, -1));
    return 1;
}

static int api_json_decode(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    struct brm_err err;
    charge_scan(L, len);
    if (brm_json_decode(L, s, len, &err) < 0) {
        luaL_pushfail(L);
        lua_pushstring(L, err.msg);
        return 2;
    }
    return 1;
}

static int api_now(lua_State *L) {
    lua_pushnumber(L, now(get_api(L)));
    return 1;
}

/* brume.hmac_sha256(key, data [, "hex"|"base64"|"raw"]), hex by default. */
static int api_hmac_sha256(lua_State *L) {
    static const char *const formats[] = { "hex", "base64", "raw", NULL };
    size_t klen, dlen;
    const char *key = luaL_checklstring(L, 1, &klen);
    const char *data = luaL_checklstring(L, 2, &dlen);
    int fmt = luaL_checkoption(L, 3, "hex", formats);
    /* Hashing allocates nothing for the allocator to charge. */
    brm_sandbox_charge(L, 1 + (long)((klen + dlen) / BRM_SANDBOX_SCAN_BYTES_PER_UNIT));
    unsigned char mac[BRM_VERIFY_MAX_MAC];
    char out[2 * BRM_VERIFY_MAX_MAC + 1];
    size_t n = brm_verify_hmac(BRM_VERIFY_SHA256, key, klen, data, dlen, mac);
    if (fmt == 0) {
        brm_hex_encode(mac, n, out);
        lua_pushstring(L, out);
    } else if (fmt == 1) {
        brm_base64_encode(mac, n, out);
        lua_pushstring(L, out);
    } else {
        lua_pushlstring(L, (const char *)mac, n);
    }
    return 1;
}

static int api_base64_encode(lua_State *L) {
    size_t n;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
    charge_scan(L, n);
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, brm_base64_encoded_len(n) + 1);
    brm_base64_encode(s, n, out);
    luaL_pushresultsize(&b, brm_base64_encoded_len(n));
    return 1;
}

static int api_base64_decode(lua_State *L) {
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    charge_scan(L, n);
    luaL_Buffer b;
    unsigned char *out = (unsigned char *)luaL_buffinitsize(L, &b, n / 4 * 3 + 3);
    long len = brm_base64_decode(s, n, out);
    if (len < 0) {
        luaL_pushfail(L);
        lua_pushliteral(L, "invalid base64");
        return 2;
    }
    luaL_pushresultsize(&b, (size_t)len);
    return 1;
}

static const luaL_Reg brume_funcs[] = {
    { "send", api_send },
    { "http", api_http },
    { "once", api_once },
    { "throttle", api_throttle },
    { "emit", api_emit },
    { "now", api_now },
    { "hmac_sha256", api_hmac_sha256 },
    { NULL, NULL },
};

static const luaL_Reg log_funcs[] = {
    { "debug", api_log_debug }, { "info", api_log_info }, { "warn", api_log_warn },
    { "error", api_log_error }, { NULL, NULL },
};

static const luaL_Reg json_funcs[] = {
    { "encode", api_json_encode },
    { "decode", api_json_decode },
    { NULL, NULL },
};

static const luaL_Reg state_funcs[] = {
    { "get", api_state_get },
    { "set", api_state_set },
    { "incr", api_state_incr },
    { NULL, NULL },
};

static const luaL_Reg timer_funcs[] = {
    { "set", api_timer_set },
    { "cancel", api_timer_cancel },
    { "get", api_timer_get },
    { NULL, NULL },
};

static const luaL_Reg group_funcs[] = {
    { "add", api_group_add },
    { NULL, NULL },
};

static const luaL_Reg base64_funcs[] = {
    { "encode", api_base64_encode },
    { "decode", api_base64_decode },
    { NULL, NULL },
};

/* Adds a sub-table of functions sharing the api upvalue at UPV. */
static void add_lib(lua_State *L, int upv, const char *name, const luaL_Reg *funcs) {
    lua_newtable(L);
    lua_pushvalue(L, upv);
    luaL_setfuncs(L, funcs, 1);
    lua_setfield(L, -2, name);
}

struct brm_api *brm_api_open(struct brm_sandbox *sb, const struct brm_config *cfg) {
    lua_State *L = brm_sandbox_state(sb);
    struct brm_api *api = lua_newuserdatauv(L, sizeof(*api), 0);
    memset(api, 0, sizeof(*api));
    api->cfg = cfg;
    api->scope = NULL;
    api->sb = sb;
    api->dry_run = 0;
    api->targets = api->mask = LUA_NOREF;
    api->state = NULL;
    int upv = lua_gettop(L);
    /* Anchor the state in the registry: it lives as long as the VM. */
    lua_pushvalue(L, upv);
    luaL_ref(L, LUA_REGISTRYINDEX);

    brm_json_open(L);
    int codec = lua_gettop(L);
    lua_newtable(L);
    lua_pushvalue(L, upv);
    luaL_setfuncs(L, brume_funcs, 1);
    add_lib(L, upv, "log", log_funcs);
    add_lib(L, upv, "json", json_funcs);
    add_lib(L, upv, "base64", base64_funcs);
    add_lib(L, upv, "state", state_funcs);
    add_lib(L, upv, "timer", timer_funcs);
    add_lib(L, upv, "group", group_funcs);
    lua_getfield(L, codec, "null");
    lua_setfield(L, -2, "null");
    lua_pushliteral(L, BRM_VERSION);
    lua_setfield(L, -2, "version");
    brm_sandbox_expose(sb, "brume");
    lua_pushvalue(L, upv);
    lua_pushcclosure(L, api_print, 1);
    brm_sandbox_expose(sb, "print");
    lua_settop(L, upv - 1);
    return api;
}

void brm_api_open_for_config(struct brm_sandbox *sb, const struct brm_config *cfg, void *arg) {
    (void)arg;
    brm_api_open(sb, cfg);
}

int brm_api_load_targets(struct brm_api *api, struct brm_err *err) {
    static const char loader[] =
        "local t = require 'brume.target'\n"
        "local name, kind = ...\n"
        "if not name then return t.mask end\n"
        "local adapter, why = t.adapter(kind)\n"
        "if not adapter then error(('target %s: %s'):format(name, why), 0) end\n"
        "return adapter\n";
    lua_State *L = brm_sandbox_state(api->sb);
    const struct brm_config *cfg = api->cfg;
    int top = lua_gettop(L);
    /* The masking function first: brume.http's requests are shown too. */
    if (brm_sandbox_loadbuffer(api->sb, loader, sizeof(loader) - 1, "=targets", err) < 0 ||
        brm_sandbox_call(api->sb, 0, 1, err) != BRM_CALL_OK)
        goto fail;
    api->mask = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_newtable(L);
    for (size_t i = 0; i < cfg->ntargets; i++) {
        const struct brm_target *t = &cfg->targets[i];
        lua_createtable(L, 0, 3);
        lua_createtable(L, (int)t->nsecrets, 0);
        for (size_t k = 0; k < t->nsecrets; k++) {
            lua_pushstring(L, t->secrets[k]);
            lua_rawseti(L, -2, (lua_Integer)k + 1);
        }
        lua_setfield(L, -2, "secrets");
        if (t->options) { /* brume.http's own target has no adapter */
            if (brm_sandbox_loadbuffer(api->sb, loader, sizeof(loader) - 1, "=targets", err) < 0)
                goto fail;
            lua_pushstring(L, t->name);
            lua_pushstring(L, t->kind);
            if (brm_sandbox_call(api->sb, 2, 1, err) != BRM_CALL_OK) goto fail;
            lua_setfield(L, -2, "adapter");
            if (brm_json_decode(L, t->options, strlen(t->options), err) < 0) goto fail;
            lua_setfield(L, -2, "options");
        }
        lua_setfield(L, top + 1, t->name);
    }
    api->targets = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
fail:
    lua_settop(L, top);
    return -1;
}
