#include "cases.h"

#include <errno.h>
#include <lauxlib.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"
#include "intake.h"
#include "json.h"
#include "outbox.h"
#include "sandbox.h"
#include "state.h"

/* The case file runs under limits like the config's. Its VM also holds
 * the payloads it builds and the messages it is compared with. */
#define CASE_INSTRUCTIONS 10000000
#define CASE_TIME         5.0
#define CASE_MEMORY       (256u << 20)
#define MAX_CASE_FILE     (4u << 20)
#define MAX_PAYLOAD       (64u << 20)
/* A timer's key in the state: namespace, rule and key. */
#define DUE_KEY 2304
/* Timers fired on the way to one step: past this a handler that arms its
 * own timer with no delay would loop for ever. */
#define MAX_FIRES_PER_STEP 100000
/* Top-level settings whose lines the report knows (a case file has four). */
#define MAX_KEYS 16
/* How much of a value a diff line shows. */
#define SHOW_MAX 300
/* How much of two long strings a diff line shows around where they differ. */
#define SHOW_CONTEXT 60

struct step {
    double at; /* seconds after the start */
    int line;  /* where it was written, or 0 */
};

struct run {
    const struct brm_config *cfg;
    char *display; /* the case file as the report names it */
    char *dir;     /* its folder: payload paths are relative to it */
    struct brm_sandbox *sb;
    lua_State *L; /* the case file's VM */
    int spec;     /* stack index of the table the file returned */
    struct brm_engine *engine;
    struct brm_state *state;
    double start, now;
    uint64_t delivery; /* ids of bodies and fired timers, as the journal's would be */
    const char *source;
    const struct brm_dedupe *dedupe;
    char **rules; /* compare only these rules' messages; NULL: all */
    size_t nrules;
    struct step *steps;
    size_t nsteps;
    int steps_line;
    struct {
        const char *name; /* in the case file's text */
        size_t len;
        int line;
    } keys[MAX_KEYS]; /* where the top-level settings were written */
    size_t nkeys;
    long messages, failed;
    FILE *out;
};

int brm_cases_is_file(const char *path) {
    size_t n = strlen(path);
    return n > 4 && strcmp(path + n - 4, ".lua") == 0;
}

int brm_cases_parse_time(const char *s, double *out) {
    char *end;
    double d = strtod(s, &end);
    if (*s && !*end && end != s && isfinite(d)) {
        *out = d;
        return 0;
    }
    int y, mo, da, h = 0, mi = 0, n = 0, m = 0;
    double se = 0;
    if (sscanf(s, "%4d-%2d-%2d%n", &y, &mo, &da, &n) != 3 || n != 10) return -1;
    const char *rest = s + n;
    if (*rest == 'T' || *rest == ' ') {
        if (sscanf(rest + 1, "%2d:%2d%n", &h, &mi, &m) != 2 || m != 5) return -1;
        rest += 1 + m;
        if (*rest == ':') {
            if (sscanf(rest + 1, "%lf%n", &se, &m) != 1 || se < 0 || se >= 61) return -1;
            rest += 1 + m;
        }
    }
    if (*rest == 'Z') rest++;
    if (*rest || mo < 1 || mo > 12 || da < 1 || da > 31 || h > 23 || mi > 59) return -1;
    struct tm tm = {
        .tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = da, .tm_hour = h, .tm_min = mi
    };
    *out = (double)timegm(&tm) + se;
    return 0;
}

/* "0s", "90s", "5m", "1h30m", "2d3h": an offset from the start. */
static void format_offset(double s, char *buf, size_t size) {
    if (s != floor(s) || s < 0 || s > 1e12) {
        snprintf(buf, size, "%gs", s);
        return;
    }
    long long v = (long long)s, parts[] = { v / 86400, v / 3600 % 24, v / 60 % 60, v % 60 };
    static const char units[] = "dhms";
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; i < 4; i++)
        if (parts[i] && len < size)
            len += (size_t)snprintf(buf + len, size - len, "%lld%c", parts[i], units[i]);
    if (!len) snprintf(buf, size, "0s");
}

/* ---- where the steps were written ----------------------------------------- */

/* Skips a long bracket ("[[", "[==[") at S, returning where it ends, or
 * NULL when S opens none. Counts the lines it crosses. */
static const char *skip_long(const char *s, const char *end, int *line) {
    const char *p = s + 1;
    size_t level = 0;
    while (p < end && *p == '=') p++, level++;
    if (p >= end || *p != '[') return NULL;
    for (p++; p < end; p++) {
        if (*p == '\n') (*line)++;
        if (*p != ']') continue;
        const char *q = p + 1;
        size_t l = 0;
        while (q < end && *q == '=') q++, l++;
        if (l == level && q < end && *q == ']') return q + 1;
    }
    return end;
}

/*
 * Lua tables do not remember where they were written, so the report finds
 * the steps in the text: the line of each brace that opens an element of
 * `steps = { ... }`, skipping comments and strings. Steps built by code are
 * not found; their errors name the line of `steps`, or none.
 */
static void find_steps(struct run *r, const char *s, size_t n, int *lines, size_t max) {
    const char *p = s, *end = s + n;
    int line = 1, depth = 0, steps_depth = 0, pending = 0;
    size_t found = 0;
    while (p < end) {
        char c = *p;
        if (c == '\n') {
            line++, p++;
        } else if (c == '-' && p + 1 < end && p[1] == '-') {
            const char *q = p + 2 < end && p[2] == '[' ? skip_long(p + 2, end, &line) : NULL;
            if (q) {
                p = q;
            } else {
                while (p < end && *p != '\n') p++;
            }
        } else if (c == '"' || c == '\'') {
            for (p++; p < end && *p != c && *p != '\n'; p++)
                if (*p == '\\' && p + 1 < end && *++p == '\n') line++;
            p++;
            pending = 0;
        } else if (c == '[' && skip_long(p, end, &(int){ 0 })) {
            p = skip_long(p, end, &line);
            pending = 0;
        } else if (c == '_' || ((c | 32) >= 'a' && (c | 32) <= 'z')) {
            const char *w = p;
            while (p < end && (*p == '_' || ((*p | 32) >= 'a' && (*p | 32) <= 'z') ||
                               (*p >= '0' && *p <= '9')))
                p++;
            size_t len = (size_t)(p - w);
            /* The file's table is its last `return`'s: forget what came before. */
            if (depth == 0 && len == 6 && memcmp(w, "return", 6) == 0)
                r->nkeys = 0, r->steps_line = 0, steps_depth = 0, found = 0;
            pending = depth == 1 && !steps_depth && len == 5 && memcmp(w, "steps", 5) == 0;
            if (pending) r->steps_line = line;
            const char *q = p;
            while (q < end && (*q == ' ' || *q == '\t')) q++;
            if (depth == 1 && q + 1 < end && q[0] == '=' && q[1] != '=' && r->nkeys < MAX_KEYS)
                r->keys[r->nkeys].name = w, r->keys[r->nkeys].len = len,
                r->keys[r->nkeys++].line = line;
        } else if (c == '=' && pending == 1 && !(p + 1 < end && p[1] == '=')) {
            pending = 2, p++;
        } else if (c == '{') {
            depth++, p++;
            if (pending == 2)
                steps_depth = depth;
            else if (steps_depth && depth == steps_depth + 1 && found < max)
                lines[found++] = line;
            pending = 0;
        } else if (c == '}') {
            if (depth == steps_depth) steps_depth = -1; /* done: no other `steps` counts */
            depth--, p++;
            pending = 0;
        } else {
            if (c != ' ' && c != '\t' && c != '\r') pending = 0;
            p++;
        }
    }
}

/* ---- the case file ------------------------------------------------------ */

/* json.read(path): the JSON file PATH (relative to the case file) decoded. */
static int case_json_read(lua_State *L) {
    const char *rel = luaL_checkstring(L, 1);
    char *path = brm_path_join(lua_tostring(L, lua_upvalueindex(1)), rel);
    struct brm_buf b;
    struct brm_err err;
    brm_buf_init(&b);
    int rc = brm_read_file(path, MAX_PAYLOAD, &b);
    if (rc < 0) {
        brm_err_set(&err, "json.read: %s: %s", rel, strerror(errno));
    } else if ((rc = brm_json_decode(L, b.data ? b.data : "", b.len, &err)) < 0) {
        char why[sizeof(err.msg)];
        snprintf(why, sizeof(why), "%s", err.msg);
        brm_err_set(&err, "json.read: %s: %s", rel, why);
    }
    free(path);
    brm_buf_reset(&b);
    if (rc < 0) return luaL_error(L, "%s", err.msg);
    return 1;
}

/* The line the top-level setting NAME was written on, or 0. */
static int key_line(const struct run *r, const char *name) {
    for (size_t i = 0; i < r->nkeys; i++)
        if (r->keys[i].len == strlen(name) && memcmp(r->keys[i].name, name, r->keys[i].len) == 0)
            return r->keys[i].line;
    return 0;
}

/* Sets ERR at step I's line (I from 1), or for I = 0 at the line of the
 * setting KEY (NULL: none). Returns -1. */
static int bad(struct run *r, struct brm_err *err, size_t i, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int bad(struct run *r, struct brm_err *err, size_t i, const char *key, const char *fmt,
               ...) {
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (i) {
        int line = r->steps[i - 1].line ? r->steps[i - 1].line : r->steps_line;
        brm_err_at(err, r->display, line, "step %zu: %s", i, msg);
    } else {
        brm_err_at(err, r->display, key ? key_line(r, key) : 0, "%s", msg);
    }
    return -1;
}

/* Pushes T[NAME] of the table at IDX, raw: a case file's tables may have
 * metatables, and no user code runs outside the sandbox's door. Returns
 * the value's type. [-0, +1] */
static int rawfield(lua_State *L, int idx, const char *name) {
    idx = lua_absindex(L, idx);
    lua_pushstring(L, name);
    return lua_rawget(L, idx);
}

/* 1 when the table at IDX has only keys from NAMES (NULL-ended); else 0
 * with the first other key in BAD. */
static int only_keys(lua_State *L, int idx, const char *const *names, char *badkey, size_t size) {
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        int ok = 0;
        if (lua_type(L, -1) == LUA_TSTRING)
            for (const char *const *n = names; *n && !ok; n++)
                ok = strcmp(*n, lua_tostring(L, -1)) == 0;
        if (!ok) {
            if (lua_type(L, -1) == LUA_TSTRING)
                snprintf(badkey, size, "%s", lua_tostring(L, -1));
            else
                snprintf(badkey, size, "[%s]", luaL_typename(L, -1));
            lua_pop(L, 1);
            return 0;
        }
    }
    return 1;
}

/* A duration or a number of seconds at IDX into *OUT; -1 when neither. */
static int read_offset(lua_State *L, int idx, double *out) {
    if (lua_type(L, idx) == LUA_TNUMBER) {
        *out = lua_tonumber(L, idx);
        return *out >= 0 && isfinite(*out) ? 0 : -1;
    }
    if (lua_type(L, idx) != LUA_TSTRING) return -1;
    const char *s = lua_tostring(L, idx);
    if (strcmp(s, "0") == 0 || strcmp(s, "0s") == 0) return *out = 0, 0;
    return brm_parse_duration(s, out);
}

/* Checks the top-level settings: start, source, rules. */
static int read_settings(struct run *r, struct brm_err *err) {
    static const char *const keys[] = { "start", "source", "rules", "steps", NULL };
    lua_State *L = r->L;
    char key[300];
    if (!only_keys(L, r->spec, keys, key, sizeof(key)))
        return bad(r, err, 0, key, "unknown setting '%s' (start, source, rules, steps)", key);
    int t = rawfield(L, r->spec, "start");
    if (t == LUA_TNUMBER)
        r->start = lua_tonumber(L, -1);
    else if (t == LUA_TSTRING && brm_cases_parse_time(lua_tostring(L, -1), &r->start) < 0)
        return bad(r, err, 0, "start", "start: '%s' is not a time like \"2026-11-01T00:00:00Z\"",
                   lua_tostring(L, -1));
    else if (t != LUA_TNIL && t != LUA_TSTRING)
        return bad(r, err, 0, "start", "start: expected a time, not a %s", lua_typename(L, t));
    lua_pop(L, 1);
    t = rawfield(L, r->spec, "source"); /* stays on the stack: r->source points into it */
    if (t == LUA_TSTRING) {
        r->source = lua_tostring(L, -1);
    } else if (t != LUA_TNIL) {
        return bad(r, err, 0, "source", "source: expected a source's name, not a %s",
                   lua_typename(L, t));
    } else if (r->cfg->nsources == 1) {
        r->source = r->cfg->sources[0].name;
    }
    const struct brm_source *src = r->source ? brm_config_source(r->cfg, r->source) : NULL;
    if (r->source && !src)
        return bad(r, err, 0, "source", "source: the config has no source %s", r->source);
    r->dedupe = src ? &src->dedupe : NULL;
    t = rawfield(L, r->spec, "rules");
    if (t == LUA_TSTRING) {
        lua_createtable(L, 1, 0);
        lua_insert(L, -2);
        lua_rawseti(L, -2, 1);
    } else if (t != LUA_TTABLE && t != LUA_TNIL) {
        return bad(r, err, 0, "rules", "rules: expected a rule's name or a list of them, not a %s",
                   lua_typename(L, t));
    }
    if (t != LUA_TNIL) {
        r->nrules = lua_rawlen(L, -1);
        r->rules = brm_xcalloc(r->nrules + 1, sizeof(char *));
        for (size_t i = 0; i < r->nrules; i++) {
            if (lua_rawgeti(L, -1, (lua_Integer)i + 1) != LUA_TSTRING)
                return bad(r, err, 0, "rules", "rules: expected names of rules, not a %s",
                           luaL_typename(L, -1));
            r->rules[i] = brm_xstrdup(lua_tostring(L, -1));
            lua_pop(L, 1);
            if (!brm_engine_has_rule(r->engine, r->rules[i]))
                return bad(r, err, 0, "rules", "rules: the rules folder has no rule named %s",
                           r->rules[i]);
        }
    }
    lua_pop(L, 1);
    return 0;
}

/* Checks the payload at IDX: a file's path, an envelope, or a list of them. */
static int check_payload(struct run *r, int idx, size_t i, int nested, struct brm_err *err) {
    lua_State *L = r->L;
    int t = lua_type(L, idx);
    if (t == LUA_TSTRING) return 0;
    if (t != LUA_TTABLE)
        return bad(r, err, i, NULL,
                   "payload: expected a file's path, a body { topic =, events = } "
                   "or a list of them, not a %s",
                   lua_typename(L, t));
    if (rawfield(L, idx, "topic") != LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    lua_pop(L, 1);
    if (nested || lua_rawlen(L, idx) == 0)
        return bad(r, err, i, NULL, "payload: a body needs a topic");
    for (lua_Integer k = 1; k <= (lua_Integer)lua_rawlen(L, idx); k++) {
        lua_rawgeti(L, idx, k);
        int rc = check_payload(r, lua_gettop(L), i, 1, err);
        lua_pop(L, 1);
        if (rc < 0) return -1;
    }
    return 0;
}

/* Checks step I (from 1), on top of the stack, and notes its time. */
static int check_step(struct run *r, size_t i, struct brm_err *err) {
    static const char *const keys[] = { "at", "name", "source", "payload", "expect", NULL };
    lua_State *L = r->L;
    int s = lua_gettop(L);
    char key[300];
    if (!lua_istable(L, s))
        return bad(r, err, i, NULL, "expected a table { at =, payload =, expect = }, not a %s",
                   luaL_typename(L, s));
    if (!only_keys(L, s, keys, key, sizeof(key)))
        return bad(r, err, i, NULL, "unknown key '%s' (at, name, source, payload, expect)", key);
    rawfield(L, s, "at");
    if (read_offset(L, -1, &r->steps[i - 1].at) < 0)
        return bad(r, err, i, NULL,
                   "at: expected a time after the start (\"0s\", \"5m\", 90), not %s",
                   lua_isnil(L, -1)      ? "nothing"
                   : lua_isstring(L, -1) ? lua_tostring(L, -1)
                                         : luaL_typename(L, -1));
    if (i > 1 && r->steps[i - 1].at < r->steps[i - 2].at)
        return bad(r, err, i, NULL,
                   "at: %s is before the previous step's (steps go forward in time)",
                   lua_tostring(L, -1));
    if (rawfield(L, s, "name") > LUA_TNIL && !lua_isstring(L, -1))
        return bad(r, err, i, NULL, "name: expected a string, not a %s", luaL_typename(L, -1));
    int t = rawfield(L, s, "source");
    if (t != LUA_TNIL && (t != LUA_TSTRING || !brm_config_source(r->cfg, lua_tostring(L, -1))))
        return bad(r, err, i, NULL, "source: the config has no source %s",
                   t == LUA_TSTRING ? lua_tostring(L, -1) : luaL_typename(L, -1));
    if (rawfield(L, s, "payload") != LUA_TNIL && check_payload(r, lua_gettop(L), i, 0, err))
        return -1;
    t = rawfield(L, s, "expect");
    if (t != LUA_TNIL && t != LUA_TTABLE)
        return bad(r, err, i, NULL, "expect: expected a list of messages' fields, not a %s",
                   lua_typename(L, t));
    for (lua_Integer k = 1; t == LUA_TTABLE && k <= (lua_Integer)lua_rawlen(L, -1); k++) {
        if (lua_rawgeti(L, -1, k) != LUA_TTABLE)
            return bad(r, err, i, NULL,
                       "expect: each entry is a table of a message's fields, not a %s",
                       luaL_typename(L, -1));
        lua_pop(L, 1);
    }
    lua_settop(L, s);
    return 0;
}

static int read_steps(struct run *r, int *lines, size_t nlines, struct brm_err *err) {
    lua_State *L = r->L;
    if (rawfield(L, r->spec, "steps") != LUA_TTABLE || lua_rawlen(L, -1) == 0)
        return brm_err_at(err, r->display, r->steps_line,
                          "steps: expected a list of steps { at =, payload =, expect = }"),
               -1;
    r->nsteps = lua_rawlen(L, -1);
    r->steps = brm_xcalloc(r->nsteps, sizeof(*r->steps));
    for (size_t i = 0; i < r->nsteps; i++) r->steps[i].line = i < nlines ? lines[i] : 0;
    for (size_t i = 1; i <= r->nsteps; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i);
        if (check_step(r, i, err) < 0) return -1;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return 0;
}

/* Runs the case file; leaves the table it returned at r->spec. */
static int load_case(struct run *r, const char *path, struct brm_err *err) {
    struct brm_buf text;
    brm_buf_init(&text);
    int rc = -1;
    if (brm_read_file(path, MAX_CASE_FILE, &text) < 0) {
        brm_err_at(err, r->display, 0, "cannot read the case file: %s", strerror(errno));
        goto done;
    }
    struct brm_sandbox_opts o = { .instructions = CASE_INSTRUCTIONS,
                                  .time_limit = CASE_TIME,
                                  .memory = CASE_MEMORY };
    r->sb = brm_sandbox_new(&o);
    lua_State *L = r->L = brm_sandbox_state(r->sb);
    brm_json_open(L); /* json.encode, decode, null and read, for the case file */
    lua_pushstring(L, r->dir);
    lua_pushcclosure(L, case_json_read, 1);
    lua_setfield(L, -2, "read");
    brm_sandbox_expose(r->sb, "json");
    char *chunkname = brm_xasprintf("@%s", r->display);
    int loaded =
        brm_sandbox_loadbuffer(r->sb, text.data ? text.data : "", text.len, chunkname, err);
    free(chunkname);
    if (loaded < 0 || brm_sandbox_call(r->sb, 0, 1, err) != BRM_CALL_OK) goto done;
    if (!lua_istable(L, -1)) {
        brm_err_at(err, r->display, 0, "a case file returns a table { steps = { ... } }, not a %s",
                   luaL_typename(L, -1));
        goto done;
    }
    r->spec = lua_gettop(L);
    size_t max = text.len / 2 + 1; /* a step takes two bytes at least */
    int *lines = brm_xcalloc(max, sizeof(int));
    find_steps(r, text.data ? text.data : "", text.len, lines, max);
    rc = read_settings(r, err);
    if (rc == 0) rc = read_steps(r, lines, max, err);
    free(lines);
done:
    brm_buf_reset(&text);
    return rc;
}

/* ---- running ------------------------------------------------------------ */

static double clock_now(void *arg) {
    return ((struct run *)arg)->now;
}

static int compare_keys(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Fires KEY at the clock's time, appending what its handler sends. */
static void fire(struct run *r, const char *key, struct brm_actions *sink, struct brm_buf *notes,
                 size_t *errors) {
    struct brm_fired f;
    if (brm_state_fire(r->state, key, r->now, NULL, &f) != 1) return; /* cancelled meanwhile */
    struct brm_batch batch = { "timer", ++r->delivery, r->now, 0, NULL, 0 };
    struct brm_dispatch_stats stats;
    enum brm_fire_outcome out;
    brm_engine_fire(r->engine, &f, &batch, sink, &stats, &out);
    *errors += stats.errors;
    if (out != BRM_FIRE_RAN) {
        char when[32];
        format_offset(f.due - r->start, when, sizeof(when));
        const char *kind = f.kind == BRM_FIRED_TIMER ? "timer" : "digest";
        brm_buf_printf(notes, "  %s %s of rule %s came due at %s and was dropped: %s\n", kind,
                       f.key, f.rule, when,
                       out == BRM_FIRE_NO_RULE ? "no such rule"
                       : out == BRM_FIRE_NO_HANDLER
                           ? (f.kind == BRM_FIRED_TIMER ? "the rule has no on_timer"
                                                        : "the rule has no on_group")
                           : "later than the rule's `late` allows");
    }
    brm_fired_reset(&f);
}

/*
 * Moves the clock to TO, firing every timer and digest due by then at its
 * own due time: the earliest first, those due together in key order (so
 * runs repeat exactly), and those their handlers arm on the way too.
 * Returns 0, or -1 when it fired MAX_FIRES_PER_STEP (a timer that re-arms
 * itself at once).
 */
static int advance(struct run *r, double to, struct brm_actions *sink, struct brm_buf *notes,
                   size_t *errors) {
    char key[DUE_KEY];
    size_t fired = 0;
    for (;;) {
        double next, left;
        brm_state_pop_due(r->state, -HUGE_VAL, key, sizeof(key), &next); /* pops none: a look */
        if (next == 0 || next > to) break;
        char **keys = NULL;
        size_t n = 0, cap = 0;
        while (brm_state_pop_due(r->state, next, key, sizeof(key), &left)) {
            if (n == cap) keys = brm_xrealloc(keys, (cap = cap ? cap * 2 : 8) * sizeof(char *));
            keys[n++] = brm_xstrdup(key);
        }
        qsort(keys, n, sizeof(char *), compare_keys);
        if (next > r->now) r->now = next;
        for (size_t i = 0; i < n; i++) {
            fire(r, keys[i], sink, notes, errors);
            free(keys[i]);
        }
        free(keys);
        if ((fired += n) >= MAX_FIRES_PER_STEP) return -1;
    }
    r->now = to;
    return 0;
}

/* Runs one body (the JSON text on top of the stack) at the clock's time. */
static int run_body(struct run *r, size_t i, const char *source, struct brm_actions *sink,
                    size_t *errors, struct brm_err *err) {
    size_t len;
    const char *body = lua_tolstring(r->L, -1, &len);
    const struct brm_source *src = source ? brm_config_source(r->cfg, source) : NULL;
    struct brm_batch batch = { source ? source : "test",       ++r->delivery, r->now,
                               src ? &src->dedupe : r->dedupe, NULL,          0 };
    struct brm_dispatch_stats stats = { 0 };
    struct brm_err why;
    if (brm_intake_run(r->engine, body, len, &batch, sink, NULL, &stats, &why) != BRM_OK)
        return bad(r, err, i, NULL, "payload: not a Mist webhook body: %s", why.msg);
    *errors += stats.errors;
    return 0;
}

/* Runs the payload at IDX (checked by check_payload). */
static int run_payload(struct run *r, int idx, size_t i, const char *source,
                       struct brm_actions *sink, size_t *errors, struct brm_err *err) {
    lua_State *L = r->L;
    int rc;
    if (lua_type(L, idx) == LUA_TSTRING) {
        char *path = brm_path_join(r->dir, lua_tostring(L, idx));
        struct brm_buf b;
        brm_buf_init(&b);
        if (brm_read_file(path, MAX_PAYLOAD, &b) < 0) {
            char what[600];
            snprintf(what, sizeof(what), "%s: %s", lua_tostring(L, idx), strerror(errno));
            rc = bad(r, err, i, NULL, "payload: %s", what);
        } else {
            lua_pushlstring(L, b.data ? b.data : "", b.len);
            rc = run_body(r, i, source, sink, errors, err);
            lua_pop(L, 1);
        }
        brm_buf_reset(&b);
        free(path);
        return rc;
    }
    if (rawfield(L, idx, "topic") != LUA_TNIL) {
        struct brm_err why;
        lua_pop(L, 1);
        if (brm_json_encode(L, idx, &why) < 0)
            return bad(r, err, i, NULL, "payload: cannot be made JSON: %s", why.msg);
        rc = run_body(r, i, source, sink, errors, err);
        lua_pop(L, 1);
        return rc;
    }
    lua_pop(L, 1);
    for (lua_Integer k = 1; k <= (lua_Integer)lua_rawlen(L, idx); k++) {
        lua_rawgeti(L, idx, k);
        rc = run_payload(r, lua_gettop(L), i, source, sink, errors, err);
        lua_pop(L, 1);
        if (rc < 0) return -1;
    }
    return 0;
}

/* ---- comparing ---------------------------------------------------------- */

/* Appends the value at IDX as the report shows it: JSON where it can. */
static void show(lua_State *L, int idx, struct brm_buf *out) {
    struct brm_err err;
    idx = lua_absindex(L, idx);
    if (lua_isnoneornil(L, idx)) {
        brm_buf_puts(out, "nothing");
    } else if (lua_type(L, idx) == LUA_TFUNCTION) {
        brm_buf_puts(out, "a function");
    } else if (brm_json_encode(L, idx, &err) == 0) {
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        brm_buf_append(out, s, len > SHOW_MAX ? SHOW_MAX : len);
        if (len > SHOW_MAX) brm_buf_puts(out, "...");
        lua_pop(L, 1);
    } else {
        brm_buf_printf(out, "a %s", luaL_typename(L, idx));
    }
}

struct key {
    int is_int;
    lua_Integer i;
    const char *s; /* a key of the table: it lives as long as the table */
};

static int compare_key(const void *a, const void *b) {
    const struct key *x = a, *y = b;
    if (x->is_int != y->is_int) return x->is_int ? -1 : 1;
    if (x->is_int) return x->i < y->i ? -1 : x->i > y->i;
    return strcmp(x->s, y->s);
}

/* The string and integer keys of the table at IDX, sorted; *N of them. */
static struct key *sorted_keys(lua_State *L, int idx, size_t *n) {
    size_t cap = 8;
    struct key *v = brm_xcalloc(cap, sizeof(*v));
    *n = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        int t = lua_type(L, -1);
        if (t != LUA_TSTRING && !lua_isinteger(L, -1)) continue;
        if (*n == cap) v = brm_xrealloc(v, (cap *= 2) * sizeof(*v));
        v[*n].is_int = t != LUA_TSTRING;
        if (v[*n].is_int)
            v[*n].i = lua_tointeger(L, -1);
        else
            v[*n].s = lua_tostring(L, -1); /* a string already: no conversion in place */
        (*n)++;
    }
    qsort(v, *n, sizeof(*v), compare_key);
    return v;
}

static void push_key(lua_State *L, const struct key *k) {
    if (k->is_int)
        lua_pushinteger(L, k->i);
    else
        lua_pushstring(L, k->s);
}

/* Two long strings that differ: where, and a little around it, so that
 * the difference shows however long they are. */
static int compare_strings(lua_State *L, int want, int got, struct brm_buf *path,
                           const char *prefix, struct brm_buf *diffs) {
    size_t wlen, glen, at = 0;
    const char *w = lua_tolstring(L, want, &wlen), *g = lua_tolstring(L, got, &glen);
    brm_buf_printf(diffs, "%s%s: got ", prefix, path->len ? path->data : "message");
    if (wlen + glen <= 2 * SHOW_CONTEXT) {
        brm_buf_json_string(diffs, g, glen);
        brm_buf_puts(diffs, ", want ");
        brm_buf_json_string(diffs, w, wlen);
        brm_buf_puts(diffs, "\n");
        return 1;
    }
    while (at < wlen && at < glen && w[at] == g[at]) at++;
    size_t from = at > SHOW_CONTEXT / 2 ? at - SHOW_CONTEXT / 2 : 0;
    const char *sides[2] = { g, w };
    size_t lens[2] = { glen, wlen };
    for (int i = 0; i < 2; i++) {
        size_t n = lens[i] > from ? lens[i] - from : 0;
        if (n > SHOW_CONTEXT) n = SHOW_CONTEXT;
        if (i) brm_buf_puts(diffs, ", want ");
        if (from) brm_buf_puts(diffs, "...");
        brm_buf_json_string(diffs, sides[i] + from, n);
        if (from + n < lens[i]) brm_buf_puts(diffs, "...");
    }
    brm_buf_printf(diffs, " (they differ from byte %zu)\n", at + 1);
    return 1;
}

/*
 * Compares what was expected (WANT) with what was sent (GOT): a table
 * matches a table holding at least its keys, each matching (a JSON text
 * is compared decoded, as request bodies are); anything else must be
 * equal. Appends a line per difference to DIFFS, prefixed with PREFIX and
 * the path. Returns how many there were.
 */
static int compare(lua_State *L, int want, int got, struct brm_buf *path, const char *prefix,
                   struct brm_buf *diffs, int depth) {
    want = lua_absindex(L, want), got = lua_absindex(L, got);
    if (depth > BRM_JSON_MAX_DEPTH || !lua_checkstack(L, 8)) { /* a table that holds itself */
        brm_buf_printf(diffs, "%s%s: nested too deep to compare\n", prefix, path->data);
        return 1;
    }
    if (lua_istable(L, want) && lua_type(L, got) == LUA_TSTRING) {
        struct brm_err err;
        size_t len;
        const char *s = lua_tolstring(L, got, &len);
        int decoded = brm_json_decode(L, s, len, &err) == 0;
        if (decoded && lua_istable(L, -1)) {
            int n = compare(L, want, -1, path, prefix, diffs, depth + 1);
            lua_pop(L, 1);
            return n;
        }
        if (decoded) lua_pop(L, 1);
    }
    if (!lua_istable(L, want) || !lua_istable(L, got)) {
        if (lua_rawequal(L, want, got)) return 0;
        if (lua_type(L, want) == LUA_TSTRING && lua_type(L, got) == LUA_TSTRING)
            return compare_strings(L, want, got, path, prefix, diffs);
        brm_buf_printf(diffs, "%s%s: got ", prefix, path->len ? path->data : "message");
        show(L, got, diffs);
        brm_buf_puts(diffs, ", want ");
        show(L, want, diffs);
        brm_buf_puts(diffs, "\n");
        return 1;
    }
    size_t n, len = path->len;
    struct key *keys = sorted_keys(L, want, &n);
    int differences = 0;
    for (size_t i = 0; i < n; i++) {
        if (keys[i].is_int)
            brm_buf_printf(path, "[%lld]", (long long)keys[i].i);
        else
            brm_buf_printf(path, "%s%s", len ? "." : "", keys[i].s);
        push_key(L, &keys[i]);
        lua_rawget(L, want);
        push_key(L, &keys[i]);
        lua_rawget(L, got);
        differences += compare(L, -2, -1, path, prefix, diffs, depth + 1);
        lua_pop(L, 2);
        path->len = len;
        if (path->data) path->data[len] = '\0';
    }
    free(keys);
    return differences;
}

/* The fields of an action that are not the message's. */
static int action_field(const char *k) {
    return strcmp(k, "rule") == 0 || strcmp(k, "target") == 0 || strcmp(k, "topic") == 0 ||
           strcmp(k, "event") == 0 || strcmp(k, "request") == 0;
}

/* Compares expectation WANT with the action table at GOT ({ rule, target,
 * topic, event, message, request }). */
static int compare_entry(lua_State *L, int want, int got, const char *prefix,
                         struct brm_buf *diffs) {
    struct brm_buf path;
    brm_buf_init(&path);
    size_t n;
    struct key *keys = sorted_keys(L, want, &n);
    int differences = 0;
    if (rawfield(L, got, "message") != LUA_TTABLE) { /* compared with nothing */
        lua_pop(L, 1);
        lua_newtable(L);
    }
    int message = lua_gettop(L);
    for (size_t i = 0; i < n; i++) {
        path.len = 0;
        if (keys[i].is_int)
            brm_buf_printf(&path, "[%lld]", (long long)keys[i].i);
        else
            brm_buf_puts(&path, keys[i].s);
        push_key(L, &keys[i]);
        lua_rawget(L, want);
        push_key(L, &keys[i]);
        lua_rawget(L, !keys[i].is_int && action_field(keys[i].s) ? got : message);
        differences += compare(L, -2, -1, &path, prefix, diffs, 1);
        lua_pop(L, 2);
    }
    lua_pop(L, 1);
    free(keys);
    brm_buf_reset(&path);
    return differences;
}

static int counted(const struct run *r, const struct brm_action *a) {
    if (!r->rules) return 1;
    for (size_t i = 0; i < r->nrules; i++)
        if (strcmp(r->rules[i], a->rule) == 0) return 1;
    return 0;
}

/* Compares the messages of step I with its expect (at EXPECT, or 0 for
 * none: not checked). Appends the differences to DIFFS. */
static void compare_step(struct run *r, int expect, const struct brm_actions *sink,
                         struct brm_buf *diffs) {
    lua_State *L = r->L;
    struct brm_buf line;
    brm_buf_init(&line);
    size_t want = expect ? lua_rawlen(L, expect) : 0, k = 0;
    for (size_t a = 0; a < sink->n; a++) {
        if (!counted(r, &sink->v[a])) continue;
        r->messages++;
        if (!expect) continue;
        line.len = 0;
        brm_action_json(&sink->v[a], &line);
        struct brm_err err;
        char prefix[64];
        snprintf(prefix, sizeof(prefix), "  message %zu: ", ++k);
        if (brm_json_decode(L, line.data, line.len, &err) < 0) {
            brm_buf_printf(diffs, "%scannot be read back: %s\n", prefix, err.msg);
            continue;
        }
        int got = lua_gettop(L);
        if (k <= want) {
            lua_rawgeti(L, expect, (lua_Integer)k);
            compare_entry(L, got + 1, got, prefix, diffs);
        } else {
            rawfield(L, got, "message");
            brm_buf_printf(diffs, "%snot expected: rule %s, target %s: ", prefix, sink->v[a].rule,
                           sink->v[a].target);
            show(L, -1, diffs);
            brm_buf_puts(diffs, "\n");
        }
        lua_settop(L, got - 1);
    }
    for (k++; k <= want; k++) {
        lua_rawgeti(L, expect, (lua_Integer)k);
        brm_buf_printf(diffs, "  message %zu: not sent, want ", k);
        show(L, -1, diffs);
        brm_buf_puts(diffs, "\n");
        lua_pop(L, 1);
    }
    brm_buf_reset(&line);
}

/* What the rules sent at a failing step, for context. */
static void list_sent(const struct run *r, const struct brm_actions *sink, struct brm_buf *out) {
    size_t shown = 0;
    for (size_t a = 0; a < sink->n; a++) {
        if (!counted(r, &sink->v[a])) continue;
        const struct brm_action *x = &sink->v[a];
        const char *m = x->message ? x->message : "null";
        size_t len = strlen(m);
        if (!shown++) brm_buf_puts(out, "  sent at this step:\n");
        brm_buf_printf(out, "    %s -> %s: %.*s%s\n", x->rule, x->target,
                       (int)(len > SHOW_MAX ? SHOW_MAX : len), m, len > SHOW_MAX ? "..." : "");
    }
    if (!shown) brm_buf_puts(out, "  nothing was sent at this step\n");
}

/* Runs step I (from 1). Returns 0, or -1 with ERR set (a bad payload). */
static int run_step(struct run *r, size_t i, struct brm_err *err) {
    lua_State *L = r->L;
    int top = lua_gettop(L);
    rawfield(L, r->spec, "steps");
    lua_rawgeti(L, -1, (lua_Integer)i);
    int s = lua_gettop(L);
    struct brm_actions sink = { 0 };
    struct brm_buf diffs;
    brm_buf_init(&diffs);
    size_t errors = 0;
    int rc = 0;
    double at = r->start + r->steps[i - 1].at;
    if (advance(r, at, &sink, &diffs, &errors) < 0)
        brm_buf_printf(&diffs,
                       "  %d timers fired on the way to this step: does a handler arm "
                       "its own timer with no delay?\n",
                       MAX_FIRES_PER_STEP);
    rawfield(L, s, "source");
    const char *source = lua_isstring(L, -1) ? lua_tostring(L, -1) : r->source;
    if (rawfield(L, s, "payload") != LUA_TNIL)
        rc = run_payload(r, lua_gettop(L), i, source, &sink, &errors, err);
    int expect = rawfield(L, s, "expect") == LUA_TTABLE ? lua_gettop(L) : 0;
    if (rc == 0) {
        compare_step(r, expect, &sink, &diffs);
        if (errors)
            brm_buf_printf(&diffs, "  %zu rule call%s failed (the log above says why)\n", errors,
                           errors == 1 ? "" : "s");
        if (diffs.len) {
            char when[32], where[32] = "";
            format_offset(r->steps[i - 1].at, when, sizeof(when));
            if (r->steps[i - 1].line) snprintf(where, sizeof(where), ":%d", r->steps[i - 1].line);
            int named = rawfield(L, s, "name") == LUA_TSTRING;
            fprintf(r->out, "FAIL %s%s: step %zu (at %s%s%s)\n%s", r->display, where, i, when,
                    named ? ", " : "", named ? lua_tostring(L, -1) : "", diffs.data);
            diffs.len = 0;
            list_sent(r, &sink, &diffs);
            fputs(diffs.data, r->out);
            r->failed++;
        }
    }
    brm_buf_reset(&diffs);
    brm_actions_reset(&sink);
    lua_settop(L, top);
    return rc;
}

int brm_cases_run(const struct brm_config *cfg, const char *path, double start, FILE *out,
                  struct brm_err *err) {
    struct run r = { .cfg = cfg, .out = out, .start = start };
    struct brm_errors errs = { 0 };
    int rc = -1;
    r.display = brm_path_display(path);
    r.dir = brm_path_dir(path);
    r.state = brm_state_new();
    r.engine = brm_engine_new(cfg, &errs);
    if (!r.engine) {
        if (errs.n)
            *err = errs.v[0];
        else
            brm_err_set(err, "the rules did not load");
        goto done;
    }
    brm_engine_set_dry_run(r.engine, 1);
    brm_engine_set_state(r.engine, r.state);
    brm_engine_set_clock(r.engine, clock_now, &r);
    if (load_case(&r, path, err) < 0) goto done;
    r.now = r.start;
    for (size_t i = 1; i <= r.nsteps; i++)
        if (run_step(&r, i, err) < 0) goto done;
    if (r.failed)
        fprintf(out, "FAIL %s: %ld of %zu step%s failed\n", r.display, r.failed, r.nsteps,
                r.nsteps == 1 ? "" : "s");
    else
        fprintf(out, "ok   %s: %zu step%s, %ld message%s\n", r.display, r.nsteps,
                r.nsteps == 1 ? "" : "s", r.messages, r.messages == 1 ? "" : "s");
    fflush(out);
    rc = r.failed ? 1 : 0;
done:
    for (size_t i = 0; i < r.nrules; i++) free(r.rules[i]);
    free(r.rules);
    free(r.steps);
    brm_sandbox_free(r.sb);
    brm_engine_free(r.engine);
    brm_state_free(r.state);
    brm_errors_reset(&errs);
    free(r.display);
    free(r.dir);
    return rc;
}
