#include "config.h"

#include <errno.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "json.h"
#include "log.h"
#include "sandbox.h"

/* The config file itself runs under these limits. */
#define CONFIG_INSTRUCTIONS 10000000
#define CONFIG_TIME         5.0
#define CONFIG_MEMORY       (64u << 20)
#define MAX_CONFIG_FILE     (1u << 20)

/* ---- the declarative table of settings ---------------------------------- */

enum type {
    T_STRING,     /* char * */
    T_PATH,       /* char *, resolved from the config's folder */
    T_ADMIN,      /* admin, admin_token: "host:port", { addr =, token = }, or false */
    T_LISTEN,     /* struct brm_listen * + count at offset2: an address or a list of them */
    T_INT,        /* long */
    T_WORKERS,    /* int */
    T_SIZE,       /* uint64_t: bytes or "8MB" */
    T_DURATION,   /* double: seconds or "90s" */
    T_BOOL,       /* int */
    T_LEVEL,      /* int: log level name */
    T_FORMAT,     /* int: log format name */
    T_DURABILITY, /* int: "full" 1, "none" 0 */
    T_SECRETS,    /* struct brm_source: a string or a list of one or two */
    T_TABLE,      /* nested settings in the same struct */
    T_MAP,        /* name -> settings: an array of structs */
    T_TARGETS,    /* name -> options, checked by each kind's adapter */
};

struct schema;

struct setting {
    const char *key;
    enum type type;
    size_t off, off2;         /* where the value goes (and its count) */
    const struct schema *sub; /* T_TABLE, T_MAP */
    double min, max;          /* T_INT, T_SIZE, T_DURATION bounds */
};

struct schema {
    const struct setting *settings;
    size_t n;
    size_t elem_size;         /* T_MAP: each element starts with `char *name` */
    void (*init)(void *elem); /* T_MAP: an element's defaults */
};

#define S(k, t, field)                                                                             \
    { k, t, offsetof(struct brm_config, field), 0, NULL, 0, 0 }
#define SR(k, t, field, lo, hi)                                                                    \
    { k, t, offsetof(struct brm_config, field), 0, NULL, lo, hi }

static const struct setting limits_settings[] = {
    SR("instructions", T_INT, instructions, 1000, 1e12),
    SR("time", T_DURATION, time_limit, 0.001, 3600),
    SR("memory", T_SIZE, memory, 1 << 20, 1e12),
};
static const struct setting http_settings[] = {
    SR("header_timeout", T_DURATION, http.header_timeout, 0.05, 3600),
    SR("body_timeout", T_DURATION, http.body_timeout, 0.05, 3600),
    SR("idle_timeout", T_DURATION, http.idle_timeout, 0.05, 86400),
    SR("drain_timeout", T_DURATION, http.drain_timeout, 0, 3600),
    SR("max_connections", T_INT, http.max_connections, 1, 1000000),
    SR("max_unverified", T_SIZE, http.max_unverified, 64 << 10, 1e12),
};
static const struct setting journal_settings[] = {
    SR("retention", T_DURATION, journal.retention, 60, 10 * 365 * 86400.0),
    SR("max_size", T_SIZE, journal.max_size, 0, 1e15),
};
static const struct setting store_settings[] = {
    SR("max_size", T_SIZE, store_max, 0, 1e15),
};
static const struct setting log_settings[] = {
    S("level", T_LEVEL, log_level),
    S("format", T_FORMAT, log_format),
};

#define SRC(k, t, field, lo, hi)                                                                   \
    { k, t, offsetof(struct brm_source, field), 0, NULL, lo, hi }
static const struct setting source_settings[] = {
    SRC("path", T_STRING, path, 0, 0),
    { "secret", T_SECRETS, 0, 0, NULL, 0, 0 },
    SRC("allow_sha1", T_BOOL, allow_sha1, 0, 0),
    SRC("insecure", T_BOOL, insecure, 0, 0),
    SRC("max_body", T_SIZE, max_body, 64, 1u << 30),
    SRC("dedupe", T_DURATION, dedupe, 0, 30 * 86400.0),
    SRC("durability", T_DURABILITY, durable, 0, 0),
};

static const struct schema limits_schema = { limits_settings, BRM_ARRAY_LEN(limits_settings), 0,
                                             NULL };
static const struct schema http_schema = { http_settings, BRM_ARRAY_LEN(http_settings), 0, NULL };
static const struct schema log_schema = { log_settings, BRM_ARRAY_LEN(log_settings), 0, NULL };
static const struct schema journal_schema = { journal_settings, BRM_ARRAY_LEN(journal_settings), 0,
                                              NULL };
static const struct schema store_schema = { store_settings, BRM_ARRAY_LEN(store_settings), 0,
                                            NULL };
static void source_defaults(void *elem) {
    struct brm_source *s = elem;
    s->max_body = 1u << 20;
    s->durable = 1;
}

static const struct schema source_schema = { source_settings, BRM_ARRAY_LEN(source_settings),
                                             sizeof(struct brm_source), source_defaults };
static const struct setting top_settings[] = {
    { "listen", T_LISTEN, offsetof(struct brm_config, listen), offsetof(struct brm_config, nlisten),
      NULL, 0, 0 },
    S("admin", T_ADMIN, admin),
    S("watch", T_BOOL, watch),
    SR("workers", T_WORKERS, workers, 0, BRM_MAX_WORKERS),
    S("data_dir", T_PATH, data_dir),
    S("rules", T_PATH, rules_dir),
    S("scripts", T_PATH, scripts_dir),
    { "limits", T_TABLE, 0, 0, &limits_schema, 0, 0 },
    { "http", T_TABLE, 0, 0, &http_schema, 0, 0 },
    { "log", T_TABLE, 0, 0, &log_schema, 0, 0 },
    { "journal", T_TABLE, 0, 0, &journal_schema, 0, 0 },
    { "store", T_TABLE, 0, 0, &store_schema, 0, 0 },
    { "sources", T_MAP, offsetof(struct brm_config, sources), offsetof(struct brm_config, nsources),
      &source_schema, 0, 0 },
    { "targets", T_TARGETS, 0, 0, NULL, 0, 0 },
};
static const struct schema top_schema = { top_settings, BRM_ARRAY_LEN(top_settings), 0, NULL };

/* ---- loading state ------------------------------------------------------ */

struct loader {
    lua_State *L;
    struct brm_errors *errs;
    size_t errs_at_start;
    const char *display; /* the config file as shown in errors */
    const char *dir;
    struct brm_buf text; /* the file, to find the line of a nested key */
    int lines;           /* stack index: top-level key -> line it was set on */
    int fatal;           /* the file could not be read or run: nothing was set */
};

/* Returned by env() and file() after they reported a problem: the walk
 * skips it instead of reporting the same setting again. */
static const char REPORTED;

static int is_reported(lua_State *L, int idx) {
    return lua_touserdata(L, idx) == &REPORTED;
}

static int is_word_char(char c) {
    return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* The first line in [FROM, TO] of the config's text holding WORD as a word
 * (WORD is LEN bytes), or 0. */
static int find_word(struct loader *ld, const char *word, size_t len, int from, int to) {
    const char *p = ld->text.data ? ld->text.data : "";
    for (int line = 1; *p && line <= to; line++) {
        const char *eol = strchr(p, '\n');
        size_t n = eol ? (size_t)(eol - p) : strlen(p);
        for (const char *q = p; line >= from && q + len <= p + n; q++)
            if ((q == p || !is_word_char(q[-1])) && !is_word_char(q[len]) &&
                memcmp(q, word, len) == 0)
                return line;
        if (!eol) break;
        p = eol + 1;
    }
    return 0;
}

/*
 * The line a nested setting was written on. Lua tables do not remember
 * where their fields came from, so: TOP's own assignment gives the end of
 * a range (the line of the previous top-level assignment its start), and
 * the parts of PATH ("mist.max_body") are looked for as words, in order,
 * within it. Falls back to TOP's line.
 */
static int locate(struct loader *ld, const char *top, const char *path) {
    lua_State *L = ld->L;
    if (!L) return 0;
    lua_getfield(L, ld->lines, top);
    int end = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    if (!path || end <= 0) return end;
    int start = 1;
    lua_pushnil(L);
    while (lua_next(L, ld->lines)) {
        int l = (int)lua_tointeger(L, -1);
        if (l < end && l + 1 > start) start = l + 1;
        lua_pop(L, 1);
    }
    int line = start;
    for (const char *part = path; *part;) {
        size_t len = strcspn(part, ".");
        int found = find_word(ld, part, len, line, end);
        if (found) line = found;
        part += len + (part[len] == '.');
    }
    return line > start || find_word(ld, path, strcspn(path, "."), start, end) ? line : end;
}

static void report(struct loader *ld, const char *top, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void report(struct loader *ld, const char *top, const char *key, const char *fmt, ...) {
    struct brm_err e;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.msg, sizeof(e.msg), fmt, ap);
    va_end(ap);
    snprintf(e.file, sizeof(e.file), "%s", ld->display);
    e.line = top ? locate(ld, top, key) : 0;
    brm_errors_add(ld->errs, &e);
}

/* Levenshtein distance, to suggest the setting a typo meant. */
static size_t distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b), prev[64], cur[64];
    if (la >= 63 || lb >= 63) return 99;
    for (size_t j = 0; j <= lb; j++) prev[j] = j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            size_t del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, (lb + 1) * sizeof(size_t));
    }
    return prev[lb];
}

static void report_unknown(struct loader *ld, const struct schema *sc, const char *top,
                           const char *where, const char *key, const char *path) {
    const char *best = NULL;
    size_t bestd = 3;
    for (size_t i = 0; i < sc->n; i++) {
        size_t d = distance(key, sc->settings[i].key);
        if (d < bestd) bestd = d, best = sc->settings[i].key;
    }
    if (best)
        report(ld, top, path, "%s%sunknown setting '%s' (did you mean '%s'?)", where,
               *where ? ": " : "", key, best);
    else
        report(ld, top, path, "%s%sunknown setting '%s'", where, *where ? ": " : "", key);
}

/* ---- env() and file() --------------------------------------------------- */

static void record_error(lua_State *L, const char *fmt, const char *arg) {
    struct loader *ld = lua_touserdata(L, lua_upvalueindex(1));
    lua_Debug ar;
    int line = 0;
    if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "l", &ar)) line = ar.currentline;
    char msg[512];
    snprintf(msg, sizeof(msg), fmt, arg);
    brm_errors_addf(ld->errs, ld->display, line, "%s", msg);
}

static int cfg_env(lua_State *L) {
    const char *name = luaL_checkstring(L, 1);
    const char *v = getenv(name);
    if (v) {
        lua_pushstring(L, v);
    } else if (lua_gettop(L) >= 2) {
        lua_pushvalue(L, 2);
    } else {
        record_error(L, "environment variable %s is not set", name);
        lua_pushlightuserdata(L, (void *)&REPORTED);
    }
    return 1;
}

static int cfg_file(lua_State *L) {
    struct loader *ld = lua_touserdata(L, lua_upvalueindex(1));
    const char *rel = luaL_checkstring(L, 1);
    char *path = brm_path_join(ld->dir, rel);
    struct brm_buf b;
    brm_buf_init(&b);
    if (brm_read_file(path, 1u << 20, &b) < 0) {
        char what[600];
        snprintf(what, sizeof(what), "%s: %s", path, strerror(errno));
        record_error(L, "cannot read %s", what);
        lua_pushlightuserdata(L, (void *)&REPORTED);
    } else {
        size_t n = b.len;
        if (n && b.data[n - 1] == '\n') n--; /* files written by echo end in a newline */
        if (n && b.data[n - 1] == '\r') n--;
        lua_pushlstring(L, b.data ? b.data : "", n);
    }
    brm_buf_reset(&b);
    free(path);
    return 1;
}

/* __newindex of the config's environment: store, and remember the line. */
static int cfg_newindex(lua_State *L) {
    lua_Debug ar;
    lua_settop(L, 3);
    if (lua_type(L, 2) == LUA_TSTRING && lua_getstack(L, 1, &ar) && lua_getinfo(L, "l", &ar)) {
        lua_pushvalue(L, 2);
        lua_pushinteger(L, ar.currentline);
        lua_rawset(L, lua_upvalueindex(1));
    }
    lua_rawset(L, 1);
    return 0;
}

/* ---- converting values -------------------------------------------------- */

static const char *type_name(enum type t) {
    switch (t) {
    case T_STRING:
    case T_PATH: return "a string";
    case T_ADMIN: return "an address \"host:port\", { addr = ..., token = ... }, or false";
    case T_LISTEN:
        return "an address \"host:port\", { addr = ..., tls = { cert = ..., key = ... } }, "
               "or a list of them";
    case T_INT:
    case T_WORKERS: return "an integer";
    case T_SIZE: return "a size (bytes, or \"8MB\")";
    case T_DURATION: return "a duration (seconds, or \"90s\", \"15m\", \"24h\")";
    case T_BOOL: return "true or false";
    case T_LEVEL: return "one of \"debug\", \"info\", \"warn\", \"error\"";
    case T_FORMAT: return "\"logfmt\" or \"json\"";
    case T_DURABILITY: return "\"full\" or \"none\"";
    case T_SECRETS: return "a string or a list of one or two strings";
    case T_TABLE:
    case T_MAP:
    case T_TARGETS: return "a table";
    }
    return "?";
}

static int valid_addr(const char *s) {
    char host[256];
    int port;
    return brm_split_addr(s, host, sizeof(host), &port) == 0;
}

static int in_range(const struct setting *st, double v) {
    return !(st->min || st->max) || (v >= st->min && v <= st->max);
}

struct walk {
    struct loader *ld;
    const char *top; /* top-level setting being walked, for locate() */
    char where[256]; /* "sources.mist" */
};

static void walk_table(struct walk *w, const struct schema *sc, int idx, void *obj);

/* KEY's path below the top-level setting, for locate(): "mist.max_body"
 * while walking sources.mist. */
static const char *subpath(const struct walk *w, const char *key, char *buf, size_t size) {
    const char *dot = strchr(w->where, '.');
    if (!dot) return key;
    snprintf(buf, size, "%s.%s", dot + 1, key);
    return buf;
}

/* Takes each target's name, kind and options (as JSON, for the adapter to
 * check once the walk is done: the adapters live in the scripts folder,
 * which is itself a setting). */
static void read_targets(struct walk *w, int map, struct brm_config *c) {
    lua_State *L = w->ld->L;
    lua_pushnil(L);
    while (lua_next(L, map)) {
        struct brm_err err;
        const char *name = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
        if (!name || lua_type(L, -1) != LUA_TTABLE) {
            report(w->ld, "targets", NULL,
                   "targets: each entry must be name = { kind = ..., ... }");
        } else if (strcmp(name, BRM_HTTP_TARGET) == 0) {
            report(w->ld, "targets", name, "targets.%s: the name is brume.http's own target", name);
        } else {
            c->targets = brm_xrealloc(c->targets, (c->ntargets + 1) * sizeof(*c->targets));
            struct brm_target *tg = memset(&c->targets[c->ntargets++], 0, sizeof(*tg));
            tg->name = brm_xstrdup(name);
            lua_getfield(L, -1, "kind");
            if (lua_type(L, -1) == LUA_TSTRING) tg->kind = brm_xstrdup(lua_tostring(L, -1));
            lua_pop(L, 1);
            if (brm_json_encode(L, -1, &err) < 0) {
                report(w->ld, "targets", name, "targets.%s: options must be plain values (%s)",
                       name, err.msg);
            } else {
                tg->options = brm_xstrdup(lua_tostring(L, -1));
                lua_pop(L, 1);
            }
        }
        lua_pop(L, 1);
    }
}

static void free_listen(struct brm_listen *v, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free(v[i].addr);
        free(v[i].cert);
        free(v[i].key);
    }
    free(v);
}

/* Reports the keys of the table on top of the stack that are not in KEYS. */
static void only_keys(struct walk *w, const char *what, const char *const *keys) {
    lua_State *L = w->ld->L;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
        int known = 0;
        for (const char *const *p = keys; *p && !known; p++) known = strcmp(*p, k) == 0;
        if (!known) report(w->ld, w->top, w->top, "%s: unknown setting '%s'", what, k);
        lua_pop(L, 1);
    }
}

/* A string field of the table on top of the stack, or NULL; a wrong type
 * is reported as WHAT.KEY. PATH: resolved from the config's folder. */
static char *string_setting(struct walk *w, const char *what, const char *key, int path) {
    lua_State *L = w->ld->L;
    char *v = NULL;
    int t = lua_getfield(L, -1, key);
    if (t == LUA_TSTRING)
        v = path ? brm_path_join(w->ld->dir, lua_tostring(L, -1))
                 : brm_xstrdup(lua_tostring(L, -1));
    else if (t != LUA_TNIL && !is_reported(L, -1))
        report(w->ld, w->top, w->top, "%s.%s: expected a string", what, key);
    lua_pop(L, 1);
    return v;
}

/* One listen entry on top of the stack: "host:port" or { addr =, tls = {
 * cert =, key = } }. 0 when it is neither. */
static int read_listen(struct walk *w, struct brm_listen *l, size_t i) {
    static const char *const keys[] = { "addr", "tls", NULL }, *const tls_keys[] = { "cert", "key",
                                                                                     NULL };
    lua_State *L = w->ld->L;
    char what[64];
    snprintf(what, sizeof(what), "listen[%zu]", i);
    if (lua_type(L, -1) == LUA_TSTRING) {
        if (!valid_addr(lua_tostring(L, -1))) return 0;
        l->addr = brm_xstrdup(lua_tostring(L, -1));
        return 1;
    }
    if (lua_type(L, -1) != LUA_TTABLE) return 0;
    only_keys(w, what, keys);
    l->addr = string_setting(w, what, "addr", 0);
    if (!l->addr || !valid_addr(l->addr)) {
        free(l->addr);
        l->addr = NULL;
        return 0;
    }
    int t = lua_getfield(L, -1, "tls");
    if (t == LUA_TTABLE) {
        char sub[80];
        snprintf(sub, sizeof(sub), "%s.tls", what);
        only_keys(w, sub, tls_keys);
        l->cert = string_setting(w, sub, "cert", 1);
        l->key = string_setting(w, sub, "key", 1);
        if (!l->cert || !l->key) report(w->ld, w->top, w->top, "%s: needs cert and key", sub);
    } else if (t != LUA_TNIL) {
        report(w->ld, w->top, w->top, "%s.tls: expected { cert = ..., key = ... }", what);
    }
    lua_pop(L, 1);
    return 1;
}

/* admin = { addr = "host:port", token = ... } on top of the stack. */
static void read_admin(struct walk *w, struct brm_config *c) {
    static const char *const keys[] = { "addr", "token", NULL };
    only_keys(w, "admin", keys);
    c->admin = string_setting(w, "admin", "addr", 0);
    c->admin_token = string_setting(w, "admin", "token", 0);
    if (!c->admin || !valid_addr(c->admin))
        report(w->ld, w->top, w->top, "admin.addr: expected an address \"host:port\"");
    if (c->admin_token && strlen(c->admin_token) < 16)
        report(w->ld, w->top, w->top, "admin.token: at least 16 characters");
}

/* Converts the value on top of the stack for ST into OBJ. */
static void convert(struct walk *w, const struct setting *st, void *obj) {
    lua_State *L = w->ld->L;
    char *field = (char *)obj + st->off;
    int t = lua_type(L, -1);
    const char *key = st->key;
    char pbuf[300];
    const char *path = subpath(w, key, pbuf, sizeof(pbuf));
    if (is_reported(L, -1)) return;
    switch (st->type) {
    case T_STRING:
    case T_PATH:
        if (t != LUA_TSTRING) goto wrong;
        free(*(char **)field);
        *(char **)field = st->type == T_PATH ? brm_path_join(w->ld->dir, lua_tostring(L, -1))
                                             : brm_xstrdup(lua_tostring(L, -1));
        return;
    case T_ADMIN: {
        struct brm_config *c = obj;
        free(c->admin);
        free(c->admin_token);
        c->admin = c->admin_token = NULL;
        if (t == LUA_TBOOLEAN && !lua_toboolean(L, -1)) return;
        if (t == LUA_TTABLE) {
            read_admin(w, c);
            return;
        }
        if (t != LUA_TSTRING) goto wrong;
        if (!valid_addr(lua_tostring(L, -1))) goto bad;
        c->admin = brm_xstrdup(lua_tostring(L, -1));
        return;
    }
    case T_LISTEN: {
        struct brm_listen **list = (struct brm_listen **)field;
        size_t *count = (size_t *)((char *)obj + st->off2), n = 1;
        /* One address (a string or a table with addr), or a list of them. */
        int one = t == LUA_TSTRING || (t == LUA_TTABLE && lua_getfield(L, -1, "addr") != LUA_TNIL);
        if (t == LUA_TTABLE) lua_pop(L, 1);
        if (t == LUA_TTABLE && !one)
            n = lua_rawlen(L, -1);
        else if (!one)
            goto wrong;
        free_listen(*list, *count);
        *list = brm_xcalloc(n, sizeof(**list));
        *count = 0;
        for (size_t i = 1; i <= n; i++) {
            if (one)
                lua_pushvalue(L, -1);
            else
                lua_rawgeti(L, -1, (lua_Integer)i);
            if (read_listen(w, &(*list)[*count], i))
                (*count)++;
            else
                report(w->ld, w->top, path, "%s[%zu]: expected %s", key, i, type_name(T_LISTEN));
            lua_pop(L, 1);
        }
        if (n == 0) report(w->ld, w->top, path, "%s: needs at least one address", key);
        return;
    }
    case T_INT:
    case T_WORKERS: {
        if (!lua_isinteger(L, -1)) goto wrong;
        lua_Integer v = lua_tointeger(L, -1);
        if (!in_range(st, (double)v)) goto range;
        if (st->type == T_INT)
            *(long *)field = (long)v;
        else
            *(int *)field = (int)v;
        return;
    }
    case T_SIZE: {
        uint64_t v;
        if (t == LUA_TNUMBER && lua_tonumber(L, -1) >= 0)
            v = (uint64_t)lua_tonumber(L, -1);
        else if (t != LUA_TSTRING || brm_parse_size(lua_tostring(L, -1), &v) < 0)
            goto wrong;
        if (!in_range(st, (double)v)) goto range;
        *(uint64_t *)field = v;
        return;
    }
    case T_DURATION: {
        double v;
        if (t == LUA_TNUMBER)
            v = lua_tonumber(L, -1);
        else if (t != LUA_TSTRING || brm_parse_duration(lua_tostring(L, -1), &v) < 0)
            goto wrong;
        if (!in_range(st, v)) goto range;
        *(double *)field = v;
        return;
    }
    case T_BOOL:
        if (t != LUA_TBOOLEAN) goto wrong;
        *(int *)field = lua_toboolean(L, -1);
        return;
    case T_LEVEL: {
        int lvl = t == LUA_TSTRING ? brm_log_level_parse(lua_tostring(L, -1)) : -1;
        if (lvl < 0) goto wrong;
        *(int *)field = lvl;
        return;
    }
    case T_DURABILITY: {
        const char *s = t == LUA_TSTRING ? lua_tostring(L, -1) : "";
        if (strcmp(s, "full") == 0)
            *(int *)field = 1;
        else if (strcmp(s, "none") == 0)
            *(int *)field = 0;
        else
            goto wrong;
        return;
    }
    case T_FORMAT: {
        const char *s = t == LUA_TSTRING ? lua_tostring(L, -1) : "";
        if (strcmp(s, "logfmt") == 0)
            *(int *)field = BRM_LOG_LOGFMT;
        else if (strcmp(s, "json") == 0)
            *(int *)field = BRM_LOG_JSON;
        else
            goto wrong;
        return;
    }
    case T_SECRETS: {
        struct brm_source *src = obj;
        size_t n = 1;
        if (t == LUA_TTABLE)
            n = lua_rawlen(L, -1);
        else if (t != LUA_TSTRING)
            goto wrong;
        if (n < 1 || n > 2) goto wrong;
        for (size_t i = 1; i <= n; i++) {
            if (t == LUA_TTABLE)
                lua_rawgeti(L, -1, (lua_Integer)i);
            else
                lua_pushvalue(L, -1);
            size_t len;
            if (is_reported(L, -1)) {
                /* env() already said what is missing */
            } else if (lua_type(L, -1) != LUA_TSTRING) {
                report(w->ld, w->top, path, "%s.%s: expected %s", w->where, key,
                       type_name(T_SECRETS));
            } else {
                const char *s = lua_tolstring(L, -1, &len);
                if (len == 0) {
                    report(w->ld, w->top, path, "%s.%s: a secret cannot be empty", w->where, key);
                } else {
                    src->secrets[src->nsecrets] = brm_xstrndup(s, len);
                    src->secret_len[src->nsecrets++] = len;
                }
            }
            lua_pop(L, 1);
        }
        return;
    }
    case T_TABLE: {
        if (t != LUA_TTABLE) goto wrong;
        struct walk sub = *w;
        snprintf(sub.where, sizeof(sub.where), "%s", key);
        walk_table(&sub, st->sub, lua_gettop(L), obj);
        return;
    }
    case T_MAP: {
        if (t != LUA_TTABLE) goto wrong;
        void **arr = (void **)field;
        size_t *count = (size_t *)((char *)obj + st->off2);
        int map = lua_gettop(L);
        lua_pushnil(L);
        while (lua_next(L, map)) {
            if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TTABLE) {
                report(w->ld, w->top, NULL, "%s: each entry must be name = { ... }", key);
                lua_pop(L, 1);
                continue;
            }
            *arr = brm_xrealloc(*arr, (*count + 1) * st->sub->elem_size);
            char *elem = (char *)*arr + *count * st->sub->elem_size;
            memset(elem, 0, st->sub->elem_size);
            if (st->sub->init) st->sub->init(elem);
            *(char **)elem = brm_xstrdup(lua_tostring(L, -2));
            (*count)++;
            struct walk sub = *w;
            snprintf(sub.where, sizeof(sub.where), "%s.%s", key, lua_tostring(L, -2));
            walk_table(&sub, st->sub, lua_gettop(L), elem);
            lua_pop(L, 1);
        }
        return;
    }
    case T_TARGETS:
        if (t != LUA_TTABLE) goto wrong;
        read_targets(w, lua_gettop(L), obj);
        return;
    }
wrong:
    if (t == LUA_TSTRING)
        report(w->ld, w->top, path, "%s%s%s: expected %s, got \"%s\"", w->where,
               *w->where ? "." : "", key, type_name(st->type), lua_tostring(L, -1));
    else
        report(w->ld, w->top, path, "%s%s%s: expected %s, got %s", w->where, *w->where ? "." : "",
               key, type_name(st->type), luaL_typename(L, -1));
    return;
bad:
    report(w->ld, w->top, path, "%s%s%s: '%s' is not %s", w->where, *w->where ? "." : "", key,
           lua_tostring(L, -1), type_name(st->type));
    return;
range:
    report(w->ld, w->top, path, "%s%s%s: must be between %g and %g", w->where, *w->where ? "." : "",
           key, st->min, st->max);
}

static void walk_table(struct walk *w, const struct schema *sc, int idx, void *obj) {
    lua_State *L = w->ld->L;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        const struct setting *st = NULL;
        if (lua_type(L, -2) == LUA_TSTRING) {
            const char *k = lua_tostring(L, -2);
            if (sc == &top_schema) w->top = k;
            for (size_t i = 0; i < sc->n && !st; i++)
                if (strcmp(sc->settings[i].key, k) == 0) st = &sc->settings[i];
            char pbuf[300];
            if (!st)
                report_unknown(w->ld, sc, w->top, w->where, k, subpath(w, k, pbuf, sizeof(pbuf)));
        } else {
            report(w->ld, w->top, NULL, "%s: keys must be names", w->where);
        }
        if (st) convert(w, st, obj);
        lua_pop(L, 1);
    }
}

/* ---- checks across settings --------------------------------------------- */

static void check_config(struct loader *ld, struct brm_config *c) {
    /* /reload and /metrics are for the operator: reachable from elsewhere
     * only behind a token. */
    if (c->admin && !c->admin_token && !brm_addr_loopback(c->admin))
        report(ld, "admin", NULL,
               "admin: %s is reachable from other hosts: set admin = { addr = \"%s\", token = "
               "env(\"BRUME_ADMIN_TOKEN\") }, or listen on 127.0.0.1",
               c->admin, c->admin);
    if (c->nsources == 0)
        report(ld, NULL, NULL,
               "no sources: add sources = { mist = { path = \"/mist\", secret = "
               "env(\"MIST_WEBHOOK_SECRET\") } }");
    for (size_t i = 0; i < c->nsources; i++) {
        struct brm_source *s = &c->sources[i];
        if (!s->path || s->path[0] != '/')
            report(ld, "sources", s->name, "sources.%s.path: must start with '/'", s->name);
        for (size_t j = 0; j < i && s->path; j++)
            if (c->sources[j].path && strcmp(c->sources[j].path, s->path) == 0)
                report(ld, "sources", s->name, "sources.%s.path: %s is also the path of %s",
                       s->name, s->path, c->sources[j].name);
        if (s->nsecrets == 0 && !s->insecure)
            report(ld, "sources", s->name,
                   "sources.%s: no secret (set secret, or insecure = true to accept unsigned "
                   "posts)",
                   s->name);
        if (s->nsecrets > 0 && s->insecure)
            report(ld, "sources", s->name, "sources.%s: insecure = true with a secret set",
                   s->name);
        if (s->max_body > c->http.max_unverified)
            report(ld, "sources", s->name,
                   "sources.%s.max_body: larger than http.max_unverified, so no such body fits",
                   s->name);
    }
}

static double number_field(lua_State *L, int t, const char *k) {
    lua_getfield(L, t, k);
    double v = lua_tonumber(L, -1);
    lua_pop(L, 1);
    return v;
}

static char *string_field(lua_State *L, int t, const char *k) {
    lua_getfield(L, t, k);
    char *v = lua_type(L, -1) == LUA_TSTRING ? brm_xstrdup(lua_tostring(L, -1)) : NULL;
    lua_pop(L, 1);
    return v;
}

/* Fills what the C side needs from the META table at IDX. */
static void read_meta(lua_State *L, int idx, struct brm_config *c, struct brm_target *tg) {
    tg->timeout = number_field(L, idx, "timeout");
    tg->max_age = number_field(L, idx, "max_age");
    tg->backoff = number_field(L, idx, "backoff");
    tg->rate = number_field(L, idx, "rate");
    tg->concurrency = (long)number_field(L, idx, "concurrency");
    tg->proxy = string_field(L, idx, "proxy");
    tg->signing_secret = string_field(L, idx, "signing_secret");
    char *path = string_field(L, idx, "path");
    if (path) tg->path = brm_path_join(c->dir, path);
    free(path);
    lua_getfield(L, idx, "ticket");
    tg->ticket = lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, idx, "secrets");
    size_t n = lua_rawlen(L, -1);
    tg->secrets = brm_xcalloc(n, sizeof(char *));
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i);
        if (lua_type(L, -1) == LUA_TSTRING)
            tg->secrets[tg->nsecrets++] = brm_xstrdup(lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/*
 * Has each target's adapter check its options: brume.target.check(kind,
 * options) in a sandbox that finds the user's scripts first, as the
 * workers' VMs will. Problems come back as { key, message } and are
 * reported at the key's line.
 */
static void check_targets(struct loader *ld, struct brm_config *c) {
    static const char checker[] = "return require('brume.target').check(...)";
    if (!c->ntargets) return;
    struct brm_sandbox_opts o = { .instructions = CONFIG_INSTRUCTIONS,
                                  .time_limit = CONFIG_TIME,
                                  .memory = CONFIG_MEMORY,
                                  .scripts_dir = c->scripts_dir };
    struct brm_sandbox *sb = brm_sandbox_new(&o);
    lua_State *L = brm_sandbox_state(sb);
    struct brm_err err;
    brm_api_open(sb, c);
    for (size_t i = 0; i < c->ntargets; i++) {
        struct brm_target *tg = &c->targets[i];
        tg->bad = 1; /* until its adapter took its options */
        if (!tg->kind) {
            report(ld, "targets", tg->name,
                   "targets.%s: no kind (one of discord, file, gchat, "
                   "jira, mattermost, opsgenie, pagerduty, servicenow, slack, teams, webex, "
                   "webhook, zendesk)",
                   tg->name);
            continue;
        }
        if (!tg->options) continue;
        int top = lua_gettop(L);
        if (brm_sandbox_loadbuffer(sb, checker, sizeof(checker) - 1, "=targets", &err) < 0) break;
        lua_pushstring(L, tg->kind);
        brm_json_decode(L, tg->options, strlen(tg->options), &err);
        if (brm_sandbox_call(sb, 2, 3, &err) != BRM_CALL_OK) {
            char msg[1024];
            brm_err_format(&err, msg, sizeof(msg));
            report(ld, "targets", tg->name, "targets.%s: %s", tg->name, msg);
            continue;
        }
        size_t nproblems = lua_rawlen(L, top + 3);
        for (size_t k = 1; k <= nproblems; k++) {
            char path[300];
            lua_rawgeti(L, top + 3, (lua_Integer)k);
            lua_rawgeti(L, -1, 1);
            lua_rawgeti(L, -2, 2);
            snprintf(path, sizeof(path), "%s.%s", tg->name, lua_tostring(L, -2));
            report(ld, "targets", path, "targets.%s.%s: %s", tg->name, lua_tostring(L, -2),
                   lua_tostring(L, -1));
            lua_pop(L, 3);
        }
        if (nproblems == 0 && brm_json_encode(L, top + 1, &err) == 0) {
            free(tg->options);
            tg->options = brm_xstrdup(lua_tostring(L, -1));
            lua_pop(L, 1);
            read_meta(L, top + 2, c, tg);
            tg->bad = 0;
        }
        lua_settop(L, top);
    }
    brm_sandbox_free(sb);
}

/* brume.http's own target: plain requests, no adapter. */
static void add_http_target(struct brm_config *c) {
    c->targets = brm_xrealloc(c->targets, (c->ntargets + 1) * sizeof(*c->targets));
    struct brm_target *tg = memset(&c->targets[c->ntargets++], 0, sizeof(*tg));
    tg->name = brm_xstrdup(BRM_HTTP_TARGET);
    tg->kind = brm_xstrdup(BRM_HTTP_TARGET);
    tg->timeout = 10;
    tg->max_age = 86400;
    tg->backoff = 2;
    tg->concurrency = 4;
}

static void set_defaults(struct brm_config *c) {
    c->listen = brm_xcalloc(1, sizeof(*c->listen));
    c->listen[0].addr = brm_xstrdup("0.0.0.0:8080");
    c->nlisten = 1;
    c->admin = brm_xstrdup("127.0.0.1:9090");
    c->watch = 1;
    c->workers = 0;
    c->data_dir = brm_path_join(c->dir, "var");
    c->rules_dir = brm_path_join(c->dir, "rules");
    c->scripts_dir = brm_path_join(c->dir, "scripts");
    c->instructions = 1000000;
    c->time_limit = 1;
    c->memory = 64u << 20;
    c->http.header_timeout = 10;
    c->http.body_timeout = 30;
    c->http.idle_timeout = 60;
    c->http.drain_timeout = 10;
    c->http.max_connections = 1024;
    c->http.max_unverified = 64u << 20;
    c->log_level = BRM_LOG_INFO;
    c->journal.retention = 7 * 86400;
    c->journal.max_size = 1024ull << 20;
    c->log_format = BRM_LOG_LOGFMT;
}

/* Runs the config file in a sandbox and walks what it set. */
static void evaluate(struct loader *ld, struct brm_config *c) {
    struct brm_sandbox_opts o = { .instructions = CONFIG_INSTRUCTIONS,
                                  .time_limit = CONFIG_TIME,
                                  .memory = CONFIG_MEMORY };
    struct brm_sandbox *sb = brm_sandbox_new(&o);
    lua_State *L = ld->L = brm_sandbox_state(sb);
    struct brm_err err;
    ld->fatal = 1; /* until the file ran */
    if (brm_read_file(c->file, MAX_CONFIG_FILE, &ld->text) < 0) {
        brm_errors_addf(ld->errs, ld->display, 0, "cannot read the config: %s", strerror(errno));
        goto done;
    }
    char *chunkname = brm_xasprintf("@%s", ld->display);
    int rc = brm_sandbox_loadbuffer(sb, ld->text.data ? ld->text.data : "", ld->text.len, chunkname,
                                    &err);
    free(chunkname);
    if (rc < 0) {
        brm_errors_add(ld->errs, &err);
        goto done;
    }
    brm_json_open(L); /* to carry targets' options to their adapters */
    lua_pop(L, 1);
    lua_newtable(L); /* top-level key -> line */
    ld->lines = lua_gettop(L);
    /* The file's environment: env() and file(), the safe library behind. */
    lua_newtable(L);
    int env = lua_gettop(L);
    lua_pushlightuserdata(L, ld);
    lua_pushcclosure(L, cfg_env, 1);
    lua_setfield(L, env, "env");
    lua_pushlightuserdata(L, ld);
    lua_pushcclosure(L, cfg_file, 1);
    lua_setfield(L, env, "file");
    lua_createtable(L, 0, 2);
    brm_sandbox_push_library(sb);
    lua_setfield(L, -2, "__index");
    lua_pushvalue(L, ld->lines);
    lua_pushcclosure(L, cfg_newindex, 1);
    lua_setfield(L, -2, "__newindex");
    lua_setmetatable(L, env);
    lua_pushvalue(L, env);
    lua_setupvalue(L, env - 2, 1);
    lua_pushvalue(L, env - 2);
    if (brm_sandbox_call(sb, 0, 0, &err) != BRM_CALL_OK) {
        brm_errors_add(ld->errs, &err);
        goto done;
    }
    ld->fatal = 0;
    lua_pushnil(L); /* env() and file() are not settings */
    lua_setfield(L, env, "env");
    lua_pushnil(L);
    lua_setfield(L, env, "file");
    struct walk w = { .ld = ld, .top = NULL, .where = "" };
    walk_table(&w, &top_schema, env, c);
    /* Checks across settings need the line table, so they run in here.
     * Each target is checked whatever else is wrong: brume check reports
     * every problem. */
    if (ld->errs->n == ld->errs_at_start) check_config(ld, c);
    check_targets(ld, c);
done:
    brm_sandbox_free(sb);
    ld->L = NULL;
}

static void free_target(struct brm_target *t) {
    free(t->name);
    free(t->kind);
    free(t->options);
    free(t->proxy);
    free(t->path);
    free(t->signing_secret);
    for (size_t j = 0; j < t->nsecrets; j++) free(t->secrets[j]);
    free(t->secrets);
}

/* Drops the targets whose options were refused (brume check goes on to the
 * rules without them). */
static void drop_bad_targets(struct brm_config *c) {
    size_t kept = 0;
    for (size_t i = 0; i < c->ntargets; i++) {
        if (c->targets[i].bad)
            free_target(&c->targets[i]);
        else
            c->targets[kept++] = c->targets[i];
    }
    c->ntargets = kept;
}

static struct brm_config *load(const char *path, struct brm_errors *errs, int lenient) {
    struct brm_config *c = brm_xcalloc(1, sizeof(*c));
    struct loader ld = { .errs = errs, .errs_at_start = errs->n };
    c->refs = 1;
    c->file = brm_xstrdup(path);
    c->dir = brm_path_dir(path);
    char *display = brm_path_display(path);
    ld.display = display;
    ld.dir = c->dir;
    brm_buf_init(&ld.text);
    set_defaults(c);
    evaluate(&ld, c);
    add_http_target(c);
    if (c->workers == 0) c->workers = brm_cpu_count();
    if (c->workers > BRM_MAX_WORKERS) c->workers = BRM_MAX_WORKERS;
    brm_buf_reset(&ld.text);
    free(display);
    if (errs->n > ld.errs_at_start) {
        if (lenient && !ld.fatal) {
            drop_bad_targets(c);
            return c;
        }
        brm_config_free(c);
        return NULL;
    }
    return c;
}

struct brm_config *brm_config_load(const char *path, struct brm_errors *errs) {
    return load(path, errs, 0);
}

struct brm_config *brm_config_check(const char *path, struct brm_errors *errs) {
    return load(path, errs, 1);
}

const struct brm_config *brm_config_ref(const struct brm_config *c) {
    atomic_fetch_add(&((struct brm_config *)c)->refs, 1);
    return c;
}

void brm_config_free(const struct brm_config *cc) {
    struct brm_config *c = (struct brm_config *)cc; /* the last holder owns it */
    if (!c || atomic_fetch_sub(&c->refs, 1) > 1) return;
    free(c->file);
    free(c->dir);
    free_listen(c->listen, c->nlisten);
    free(c->admin);
    free(c->admin_token);
    free(c->data_dir);
    free(c->rules_dir);
    free(c->scripts_dir);
    for (size_t i = 0; i < c->nsources; i++) {
        struct brm_source *s = &c->sources[i];
        free(s->name);
        free(s->path);
        for (int j = 0; j < s->nsecrets; j++) {
            /* Secrets do not linger in freed memory. */
            memset(s->secrets[j], 0, s->secret_len[j]);
            free(s->secrets[j]);
        }
    }
    free(c->sources);
    for (size_t i = 0; i < c->ntargets; i++) free_target(&c->targets[i]);
    free(c->targets);
    free(c);
}

const struct brm_target *brm_config_target(const struct brm_config *c, const char *name) {
    for (size_t i = 0; i < c->ntargets; i++)
        if (strcmp(c->targets[i].name, name) == 0) return &c->targets[i];
    return NULL;
}

const struct brm_source *brm_config_source(const struct brm_config *c, const char *name) {
    for (size_t i = 0; i < c->nsources; i++)
        if (strcmp(c->sources[i].name, name) == 0) return &c->sources[i];
    return NULL;
}
