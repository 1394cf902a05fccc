#include "config.h"

#include <errno.h>
#include <lauxlib.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "log.h"
#include "redis.h"
#include "sandbox.h"

/* The config file itself runs under these limits. */
#define CONFIG_INSTRUCTIONS 1000000  /* the file's: a config is a few thousand */
#define CHECK_INSTRUCTIONS  10000000 /* each target adapter's check */
#define CONFIG_TIME         5.0
#define CONFIG_MEMORY       (64u << 20)
#define MAX_CONFIG_FILE     (1u << 20)
#define MAX_ENTRIES         1000 /* sources, targets */
/* Values the search for env() placeholders looks at in one load, at most:
 * a table that holds itself a few times over is not walked for ever. */
#define MAX_LOOKS 1000000
/* Bytes of all targets' options together, as JSON (one shared table named
 * by every target is as large as its copies). */
#define MAX_OPTIONS_TEXT (16u << 20)

/* ---- loading state ------------------------------------------------------ */

struct loader {
    lua_State *L;
    struct brm_errors *errs;
    size_t errs_at_start;
    const char *display; /* the config file as shown in errors */
    const char *dir;
    struct brm_buf text; /* the file, to find the line of a nested key */
    int lines;           /* stack index: top-level key -> line it was set on */
    int *sorted;         /* those lines in order (made by locate, once the file ran) */
    size_t nsorted;
    int fatal;                /* the file could not be read or run: nothing was set */
    brm_config_open_fn *open; /* readies the VM the adapters check targets in */
    void *open_arg;
    int offline;         /* brm_config_load_offline: unset env() variables give placeholders */
    long looks;          /* find_unset's, left of MAX_LOOKS */
    size_t options_text; /* targets' options so far, as JSON */
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

static int compare_ints(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
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
    if (!ld->sorted) { /* once: a config may set a hundred thousand names */
        size_t cap = 16;
        ld->sorted = brm_xmalloc(cap * sizeof(int));
        lua_pushnil(L);
        while (lua_next(L, ld->lines)) {
            if (ld->nsorted == cap) ld->sorted = brm_xrealloc(ld->sorted, (cap *= 2) * sizeof(int));
            ld->sorted[ld->nsorted++] = (int)lua_tointeger(L, -1);
            lua_pop(L, 1);
        }
        qsort(ld->sorted, ld->nsorted, sizeof(int), compare_ints);
    }
    /* The search starts after the setting before this one. */
    size_t lo = 0, hi = ld->nsorted;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ld->sorted[mid] < end)
            lo = mid + 1;
        else
            hi = mid;
    }
    int start = lo ? ld->sorted[lo - 1] + 1 : 1;
    int line = start;
    for (const char *part = path; *part;) {
        size_t len = strcspn(part, ".");
        int found = find_word(ld, part, len, line, end);
        if (found) line = found;
        part += len + (part[len] == '.');
    }
    return line > start || find_word(ld, path, strcspn(path, "."), start, end) ? line : end;
}

/* Appends an error at the line of PATH below the top-level setting TOP (no
 * line when TOP is NULL). */
static void report(struct loader *ld, const char *top, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void report(struct loader *ld, const char *top, const char *path, const char *fmt, ...) {
    struct brm_err e = { 0 };
    if (brm_errors_full(ld->errs)) { /* only counted: not worth finding its line (a scan) */
        brm_errors_add(ld->errs, &e);
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.msg, sizeof(e.msg), fmt, ap);
    va_end(ap);
    snprintf(e.file, sizeof(e.file), "%s", ld->display);
    e.line = top ? locate(ld, top, path) : 0;
    brm_errors_add(ld->errs, &e);
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

/*
 * In an offline load, what env(NAME) gives when NAME is not set: a text
 * that says so, should it ever be shown, and that the walk finds again
 * wherever it went (whole, or inside a string the config built from it).
 */
#define UNSET_OPEN   "<brume: "
#define UNSET_CLOSE  " is not set>"
#define MAX_ENV_NAME 100

static int env_name_ok(const char *name) {
    size_t n = strlen(name);
    return n > 0 && n <= MAX_ENV_NAME &&
           strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                        "0123456789_") == n;
}

/* 1 when the N bytes at S hold a placeholder, with its variable in NAME. */
static int find_placeholder(const char *s, size_t n, char name[MAX_ENV_NAME + 1]) {
    const char *end = s + n;
    for (const char *p = s; (p = memchr(p, '<', (size_t)(end - p))); p++) {
        if ((size_t)(end - p) < sizeof(UNSET_OPEN) - 1 ||
            memcmp(p, UNSET_OPEN, sizeof(UNSET_OPEN) - 1) != 0)
            continue;
        const char *q = p + sizeof(UNSET_OPEN) - 1, *v = q;
        while (q < end && q - v <= MAX_ENV_NAME && is_word_char(*q)) q++;
        if (q > v && q - v <= MAX_ENV_NAME && (size_t)(end - q) >= sizeof(UNSET_CLOSE) - 1 &&
            memcmp(q, UNSET_CLOSE, sizeof(UNSET_CLOSE) - 1) == 0) {
            memcpy(name, v, (size_t)(q - v));
            name[q - v] = '\0';
            return 1;
        }
    }
    return 0;
}

enum found { FOUND_NOTHING, FOUND_UNSET, FOUND_REPORTED };

/* Looks through the value at IDX (tables raw, DEPTH levels at most) for a
 * placeholder (its variable goes to NAME) or a value env() or file()
 * already reported. Past MAX_LOOKS values in the load, it says so once,
 * and finds nothing more. */
static enum found find_unset(struct loader *ld, int idx, int depth, char name[MAX_ENV_NAME + 1]) {
    lua_State *L = ld->L;
    enum found f = FOUND_NOTHING;
    size_t n;
    if (ld->looks <= 0) return FOUND_NOTHING;
    if (--ld->looks == 0)
        report(ld, NULL, NULL,
               "the config's tables hold too much to look through: more than %d values are "
               "reached from its settings (does a table hold itself?)",
               MAX_LOOKS);
    if (is_reported(L, idx)) return FOUND_REPORTED;
    if (lua_type(L, idx) == LUA_TSTRING) {
        const char *s = lua_tolstring(L, idx, &n);
        return find_placeholder(s, n, name) ? FOUND_UNSET : FOUND_NOTHING;
    }
    if (lua_type(L, idx) != LUA_TTABLE || depth <= 0 || !lua_checkstack(L, 3)) return f;
    idx = lua_absindex(L, idx);
    lua_pushnil(L);
    while (f != FOUND_REPORTED && lua_next(L, idx)) {
        enum found v = find_unset(ld, -1, depth - 1, name);
        if (v > f) f = v;
        lua_pop(L, 1);
    }
    if (f == FOUND_REPORTED) lua_pop(L, 1); /* the key lua_next left */
    return f;
}

static int cfg_env(lua_State *L) {
    struct loader *ld = lua_touserdata(L, lua_upvalueindex(1));
    const char *name = luaL_checkstring(L, 1);
    const char *v = getenv(name);
    if (v) {
        lua_pushstring(L, v);
    } else if (lua_gettop(L) >= 2) {
        lua_pushvalue(L, 2);
    } else if (ld->offline && env_name_ok(name)) {
        lua_pushfstring(L, UNSET_OPEN "%s" UNSET_CLOSE, name);
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

/* ---- setting types ------------------------------------------------------ */

/*
 * A setting is a row: its key, its type, where its value goes (an offset
 * into the struct being filled: struct brm_config, or one element of a
 * map), its default and its limits. A type is three small functions: one
 * converts the Lua value on top of the stack into the field, one writes
 * the default, one frees what the field owns. Adding a setting is adding a
 * row (and its field in config.h).
 */

struct walk {
    struct loader *ld;
    const char *top; /* top-level setting being walked, for locate() */
    char where[256]; /* "sources.mist" */
};

struct setting;
struct schema;

/* What a converter made of the value; convert() words the failures. */
enum verdict {
    TAKEN,        /* stored, or what was wrong inside the value is reported */
    WRONG,        /* "expected <type>, got <value>" */
    INVALID,      /* "'<value>' is not <type>" */
    OUT_OF_RANGE, /* "must be between <min> and <max>" */
};

struct type {
    const char *expected; /* "a size (bytes, or \"8MB\")"; NULL: the row's names */
    enum verdict (*convert)(struct walk *w, const struct setting *st, char *obj);
    void (*init)(const struct setting *st, char *obj, const char *dir); /* NULL: zero */
    void (*release)(const struct setting *st, char *obj);               /* NULL: owns nothing */
};

/* One of the names an enum setting takes, and its value. */
struct name {
    const char *name;
    int value;
};

struct setting {
    const char *key;
    const struct type *type;
    size_t off;               /* where the value goes */
    size_t off2;              /* listen, map, targets: the count; admin: the token */
    double def;               /* the default of a number, a boolean or an enum */
    const char *text;         /* the default of a string, a path or an address */
    double min, max;          /* a number's limits (every number has them) */
    const struct name *names; /* enum: the names, then { NULL } */
    const struct schema *sub; /* table: settings of the same struct; map: of each element */
};

struct schema {
    const struct setting *settings;
    size_t n;
    size_t elem_size; /* map elements: each starts with `char *name` */
};

#define FIELD(T, obj, off) (*(T *)(void *)((obj) + (off)))

static void walk_table(struct walk *w, const struct schema *sc, int idx, char *obj);
static void apply_defaults(const struct schema *sc, char *obj, const char *dir);
static void release(const struct schema *sc, char *obj);

static void report_setting(struct walk *w, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* KEY as the user knows it: "sources.mist.max_body" while walking
 * sources.mist, "workers" at the top. */
static const char *setting_name(const struct walk *w, const char *key, char *buf, size_t size) {
    if (snprintf(buf, size, "%s%s%s", w->where, *w->where ? "." : "", key) < 0) buf[0] = '\0';
    return buf;
}

/* KEY's path below the top-level setting, for locate(): "mist.max_body"
 * while walking sources.mist. */
static const char *subpath(const struct walk *w, const char *key, char *buf, size_t size) {
    const char *dot = strchr(w->where, '.');
    if (!dot) return key;
    snprintf(buf, size, "%s.%s", dot + 1, key);
    return buf;
}

/* Reports "<KEY's name><FMT...>" at KEY's line. */
static void report_setting(struct walk *w, const char *key, const char *fmt, ...) {
    char name[300], pbuf[300], tail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tail, sizeof(tail), fmt, ap);
    va_end(ap);
    report(w->ld, w->top, subpath(w, key, pbuf, sizeof(pbuf)), "%s%s",
           setting_name(w, key, name, sizeof(name)), tail);
}

static int in_range(const struct setting *st, double v) {
    return v >= st->min && v <= st->max; /* false for NaN */
}

static int valid_addr(const char *s) {
    char host[256];
    int port;
    return brm_split_addr(s, host, sizeof(host), &port) == 0;
}

/* -- strings and paths -- */

static void init_string(const struct setting *st, char *obj, const char *dir) {
    (void)dir;
    FIELD(char *, obj, st->off) = st->text ? brm_xstrdup(st->text) : NULL;
}

static void init_path(const struct setting *st, char *obj, const char *dir) {
    FIELD(char *, obj, st->off) = st->text ? brm_path_join(dir, st->text) : NULL;
}

static void release_string(const struct setting *st, char *obj) {
    free(FIELD(char *, obj, st->off));
}

static enum verdict convert_string(struct walk *w, const struct setting *st, char *obj) {
    lua_State *L = w->ld->L;
    if (lua_type(L, -1) != LUA_TSTRING) return WRONG;
    release_string(st, obj);
    FIELD(char *, obj, st->off) = brm_xstrdup(lua_tostring(L, -1));
    return TAKEN;
}

/* A path, resolved from the config's folder. */
static enum verdict convert_path(struct walk *w, const struct setting *st, char *obj) {
    lua_State *L = w->ld->L;
    if (lua_type(L, -1) != LUA_TSTRING) return WRONG;
    release_string(st, obj);
    FIELD(char *, obj, st->off) = brm_path_join(w->ld->dir, lua_tostring(L, -1));
    return TAKEN;
}

/* -- numbers -- */

static enum verdict read_integer(struct walk *w, const struct setting *st, lua_Integer *v) {
    lua_State *L = w->ld->L;
    if (!lua_isinteger(L, -1)) return WRONG;
    *v = lua_tointeger(L, -1);
    return in_range(st, (double)*v) ? TAKEN : OUT_OF_RANGE;
}

static enum verdict convert_long(struct walk *w, const struct setting *st, char *obj) {
    lua_Integer v;
    enum verdict r = read_integer(w, st, &v);
    if (r == TAKEN) FIELD(long, obj, st->off) = (long)v;
    return r;
}

static enum verdict convert_int(struct walk *w, const struct setting *st, char *obj) {
    lua_Integer v;
    enum verdict r = read_integer(w, st, &v);
    if (r == TAKEN) FIELD(int, obj, st->off) = (int)v;
    return r;
}

static void init_long(const struct setting *st, char *obj, const char *dir) {
    (void)dir;
    FIELD(long, obj, st->off) = (long)st->def;
}

/* For int fields: integers, booleans and enums. */
static void init_int(const struct setting *st, char *obj, const char *dir) {
    (void)dir;
    FIELD(int, obj, st->off) = (int)st->def;
}

/* Bytes, or "8MB". The limits are checked before a number becomes a
 * uint64_t: a size's max keeps the conversion defined. */
static enum verdict convert_size(struct walk *w, const struct setting *st, char *obj) {
    lua_State *L = w->ld->L;
    uint64_t v;
    if (lua_type(L, -1) == LUA_TNUMBER) {
        double d = lua_tonumber(L, -1);
        if (!(d >= 0)) return WRONG;
        if (!in_range(st, d)) return OUT_OF_RANGE;
        v = (uint64_t)d;
    } else if (lua_type(L, -1) != LUA_TSTRING || brm_parse_size(lua_tostring(L, -1), &v) < 0) {
        return WRONG;
    } else if (!in_range(st, (double)v)) {
        return OUT_OF_RANGE;
    }
    FIELD(uint64_t, obj, st->off) = v;
    return TAKEN;
}

static void init_size(const struct setting *st, char *obj, const char *dir) {
    (void)dir;
    FIELD(uint64_t, obj, st->off) = (uint64_t)st->def;
}

/* Seconds, or "90s", "15m", "24h". */
static enum verdict convert_duration(struct walk *w, const struct setting *st, char *obj) {
    lua_State *L = w->ld->L;
    double v;
    if (lua_type(L, -1) == LUA_TNUMBER)
        v = lua_tonumber(L, -1);
    else if (lua_type(L, -1) != LUA_TSTRING || brm_parse_duration(lua_tostring(L, -1), &v) < 0)
        return WRONG;
    if (!in_range(st, v)) return OUT_OF_RANGE;
    FIELD(double, obj, st->off) = v;
    return TAKEN;
}

static void init_double(const struct setting *st, char *obj, const char *dir) {
    (void)dir;
    FIELD(double, obj, st->off) = st->def;
}

/* -- booleans and enums -- */

static enum verdict convert_bool(struct walk *w, const struct setting *st, char *obj) {
    lua_State *L = w->ld->L;
    if (lua_type(L, -1) != LUA_TBOOLEAN) return WRONG;
    FIELD(int, obj, st->off) = lua_toboolean(L, -1);
    return TAKEN;
}

static enum verdict convert_enum(struct walk *w, const struct setting *st, char *obj) {
    lua_State *L = w->ld->L;
    if (lua_type(L, -1) != LUA_TSTRING) return WRONG;
    for (const struct name *n = st->names; n->name; n++)
        if (strcmp(n->name, lua_tostring(L, -1)) == 0) {
            FIELD(int, obj, st->off) = n->value;
            return TAKEN;
        }
    return WRONG;
}

/* What an enum takes: "\"full\" or \"none\"", or "one of \"a\", \"b\", \"c\"". */
static const char *describe_names(const struct name *names, char *buf, size_t size) {
    size_t n = 0, len;
    while (names[n].name) n++;
    snprintf(buf, size, "%s", n == 2 ? "" : "one of ");
    for (size_t i = 0; i < n && (len = strlen(buf)) < size; i++)
        snprintf(buf + len, size - len, "%s\"%s\"",
                 i == 0   ? ""
                 : n == 2 ? " or "
                          : ", ",
                 names[i].name);
    return buf;
}

/* What ST takes, for "expected ...". */
static const char *describe(const struct setting *st, char *buf, size_t size) {
    return st->type->expected ? st->type->expected : describe_names(st->names, buf, size);
}

/* -- addresses -- */

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
static char *string_field(struct walk *w, const char *what, const char *key, int path) {
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

static void free_listen(struct brm_listen *v, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free(v[i].addr);
        free(v[i].cert);
        free(v[i].key);
    }
    free(v);
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
    l->addr = string_field(w, what, "addr", 0);
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
        l->cert = string_field(w, sub, "cert", 1);
        l->key = string_field(w, sub, "key", 1);
        if (!l->cert || !l->key) report(w->ld, w->top, w->top, "%s: needs cert and key", sub);
    } else if (t != LUA_TNIL) {
        report(w->ld, w->top, w->top, "%s.tls: expected { cert = ..., key = ... }", what);
    }
    lua_pop(L, 1);
    return 1;
}

/* An address, or a list of them: struct brm_listen * at OFF, its count at
 * OFF2. */
static enum verdict convert_listen(struct walk *w, const struct setting *st, char *obj) {
    lua_State *L = w->ld->L;
    struct brm_listen **list = &FIELD(struct brm_listen *, obj, st->off);
    size_t *count = &FIELD(size_t, obj, st->off2), n = 1;
    int t = lua_type(L, -1);
    /* One address (a string or a table with addr), or a list of them. */
    int one = t == LUA_TSTRING || (t == LUA_TTABLE && lua_getfield(L, -1, "addr") != LUA_TNIL);
    if (t == LUA_TTABLE) lua_pop(L, 1);
    if (t == LUA_TTABLE && !one)
        n = lua_rawlen(L, -1);
    else if (!one)
        return WRONG;
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
            report_setting(w, st->key, "[%zu]: expected %s", i, st->type->expected);
        lua_pop(L, 1);
    }
    if (n == 0) report_setting(w, st->key, ": needs at least one address");
    return TAKEN;
}

static void init_listen(const struct setting *st, char *obj, const char *dir) {
    (void)dir;
    struct brm_listen *l = brm_xcalloc(1, sizeof(*l));
    l->addr = brm_xstrdup(st->text);
    FIELD(struct brm_listen *, obj, st->off) = l;
    FIELD(size_t, obj, st->off2) = 1;
}

static void release_listen(const struct setting *st, char *obj) {
    free_listen(FIELD(struct brm_listen *, obj, st->off), FIELD(size_t, obj, st->off2));
}

/* "host:port", { addr = "host:port", token = ... }, or false: the address
 * at OFF, the token at OFF2. */
static enum verdict convert_admin(struct walk *w, const struct setting *st, char *obj) {
    static const char *const keys[] = { "addr", "token", NULL };
    lua_State *L = w->ld->L;
    char **addr = &FIELD(char *, obj, st->off), **token = &FIELD(char *, obj, st->off2);
    free(*addr);
    free(*token);
    *addr = *token = NULL;
    switch (lua_type(L, -1)) {
    case LUA_TBOOLEAN: return lua_toboolean(L, -1) ? WRONG : TAKEN;
    case LUA_TSTRING:
        if (!valid_addr(lua_tostring(L, -1))) return INVALID;
        *addr = brm_xstrdup(lua_tostring(L, -1));
        return TAKEN;
    case LUA_TTABLE:
        only_keys(w, st->key, keys);
        *addr = string_field(w, st->key, "addr", 0);
        *token = string_field(w, st->key, "token", 0);
        if (!*addr || !valid_addr(*addr))
            report_setting(w, st->key, ".addr: expected an address \"host:port\"");
        if (*token && strlen(*token) < 16)
            report_setting(w, st->key, ".token: at least 16 characters");
        return TAKEN;
    }
    return WRONG;
}

static void release_admin(const struct setting *st, char *obj) {
    free(FIELD(char *, obj, st->off));
    free(FIELD(char *, obj, st->off2));
}

/* -- where rule state lives: "redis://...", or a table -- */

#define MAX_SENTINELS 8

static void release_state(const struct setting *st, char *obj) {
    struct brm_config *c = (struct brm_config *)(void *)(obj + st->off);
    free(c->state.url);
    if (c->state.password) memset(c->state.password, 0, strlen(c->state.password));
    free(c->state.password);
    free(c->state.ca);
    for (size_t i = 0; i < c->state.nsentinels; i++) free(c->state.sentinels[i]);
    free(c->state.sentinels);
    free(c->state.master);
    free(c->state.prefix);
    memset(&c->state, 0, sizeof(c->state));
}

static void init_state(const struct setting *st, char *obj, const char *dir) {
    (void)dir;
    struct brm_config *c = (struct brm_config *)(void *)(obj + st->off);
    c->state.prefix = brm_xstrdup("brume:");
    c->state.timeout = 2;
    c->state.lease = 30;
}

/* A number of seconds in [MIN, MAX] at KEY of the table on top, or DEF. */
static double seconds_field(struct walk *w, const char *key, double def, double min, double max) {
    lua_State *L = w->ld->L;
    double v = def;
    int t = lua_getfield(L, -1, key);
    if (t == LUA_TNUMBER) {
        v = lua_tonumber(L, -1);
    } else if (t == LUA_TSTRING && brm_parse_duration(lua_tostring(L, -1), &v) == 0) {
    } else if (t != LUA_TNIL) {
        report(w->ld, w->top, w->top, "state.%s: expected a duration (\"2s\", \"30s\")", key);
        v = def;
    }
    if (!(v >= min && v <= max)) {
        report(w->ld, w->top, w->top, "state.%s: must be between %g and %g seconds", key, min, max);
        v = def;
    }
    lua_pop(L, 1);
    return v;
}

/* The sentinels' list at the top of the table on top. */
static void read_sentinels(struct walk *w, struct brm_config *c) {
    lua_State *L = w->ld->L;
    int t = lua_getfield(L, -1, "sentinels");
    size_t n = t == LUA_TTABLE ? lua_rawlen(L, -1) : 0;
    if (t != LUA_TNIL && (n == 0 || n > MAX_SENTINELS)) {
        report(w->ld, w->top, w->top, "state.sentinels: expected a list of 1 to %d addresses",
               MAX_SENTINELS);
        n = 0;
    }
    c->state.sentinels = brm_xcalloc(n + 1, sizeof(char *));
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i);
        const char *a = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        if (a && valid_addr(a))
            c->state.sentinels[c->state.nsentinels++] = brm_xstrdup(a);
        else
            report(w->ld, w->top, w->top, "state.sentinels[%zu]: expected an address \"host:port\"",
                   i);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* Whether the table on top of L's stack sets KEY. */
static int has_field(lua_State *L, const char *key) {
    int set = lua_getfield(L, -1, key) != LUA_TNIL;
    lua_pop(L, 1);
    return set;
}

static enum verdict convert_state(struct walk *w, const struct setting *st, char *obj) {
    static const char *const keys[] = { "url", "password", "ca",      "sentinels", "master", "db",
                                        "tls", "prefix",   "timeout", "lease",     NULL };
    lua_State *L = w->ld->L;
    struct brm_config *c = (struct brm_config *)(void *)(obj + st->off);
    int t = lua_type(L, -1);
    if (t != LUA_TSTRING && t != LUA_TTABLE) return WRONG;
    release_state(st, obj);
    init_state(st, obj, NULL);
    if (t == LUA_TSTRING) {
        c->state.url = brm_xstrdup(lua_tostring(L, -1));
    } else {
        only_keys(w, st->key, keys);
        c->state.url = string_field(w, st->key, "url", 0);
        c->state.password = string_field(w, st->key, "password", 0);
        c->state.ca = string_field(w, st->key, "ca", 1);
        c->state.master = string_field(w, st->key, "master", 0);
        char *prefix = string_field(w, st->key, "prefix", 0);
        if (prefix && (!*prefix || strcspn(prefix, " \t\r\n") != strlen(prefix))) {
            report(w->ld, w->top, w->top, "state.prefix: a non-empty word");
        } else if (prefix) {
            free(c->state.prefix);
            c->state.prefix = prefix;
            prefix = NULL;
        }
        free(prefix);
        read_sentinels(w, c);
        c->state.timeout = seconds_field(w, "timeout", 2, 0.05, 60);
        c->state.lease = seconds_field(w, "lease", 30, 1, 3600);
        if (lua_getfield(L, -1, "db") != LUA_TNIL) {
            if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 0 || lua_tointeger(L, -1) > 1000000)
                report(w->ld, w->top, w->top, "state.db: expected a number, 0 to 1000000");
            else
                c->state.db = (int)lua_tointeger(L, -1);
        }
        lua_pop(L, 1);
        c->state.tls = lua_getfield(L, -1, "tls") == LUA_TBOOLEAN && lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    struct brm_redis_cfg rc = { 0 };
    struct brm_err err;
    if (c->state.url && c->state.nsentinels) {
        report(w->ld, w->top, w->top, "state: url or sentinels (with master), not both");
    } else if (c->state.nsentinels && !c->state.master) {
        report(w->ld, w->top, w->top,
               "state.master: the Sentinel name of the master set is needed");
    } else if (c->state.url && brm_redis_parse_url(c->state.url, &rc, &err) < 0) {
        report(w->ld, w->top, w->top, "state: %s", err.msg);
    } else if (!c->state.url && !c->state.nsentinels) {
        report(w->ld, w->top, w->top, "state: needs url = \"redis://host:port/db\" (or sentinels)");
    } else if (rc.password && c->state.password) {
        report(w->ld, w->top, w->top, "state: a password in the URL and in password");
    } else if (c->state.url && t == LUA_TTABLE && has_field(L, "db")) {
        report(w->ld, w->top, w->top, "state.db: with url, the database is the URL's (\"/db\")");
    } else if (c->state.url && t == LUA_TTABLE && has_field(L, "tls")) {
        report(w->ld, w->top, w->top, "state.tls: with url, rediss:// is TLS");
    }
    brm_redis_cfg_reset(&rc);
    return TAKEN;
}

/* -- a source's secrets: a string or a list of one or two -- */

static enum verdict convert_secrets(struct walk *w, const struct setting *st, char *obj) {
    lua_State *L = w->ld->L;
    struct brm_source *src = (struct brm_source *)(void *)obj;
    int t = lua_type(L, -1);
    size_t n = t == LUA_TTABLE ? lua_rawlen(L, -1) : 1;
    if ((t != LUA_TTABLE && t != LUA_TSTRING) || n < 1 || n > 2) return WRONG;
    for (size_t i = 1; i <= n; i++) {
        if (t == LUA_TTABLE)
            lua_rawgeti(L, -1, (lua_Integer)i);
        else
            lua_pushvalue(L, -1);
        size_t len;
        if (is_reported(L, -1)) {
            /* env() already said what is missing */
        } else if (lua_type(L, -1) != LUA_TSTRING) {
            report_setting(w, st->key, ": expected %s", st->type->expected);
        } else {
            const char *s = lua_tolstring(L, -1, &len);
            if (len == 0) {
                report_setting(w, st->key, ": a secret cannot be empty");
            } else {
                src->secrets[src->nsecrets] = brm_xstrndup(s, len);
                src->secret_len[src->nsecrets++] = len;
            }
        }
        lua_pop(L, 1);
    }
    return TAKEN;
}

static void release_secrets(const struct setting *st, char *obj) {
    (void)st;
    struct brm_source *src = (struct brm_source *)(void *)obj;
    for (int j = 0; j < src->nsecrets; j++) {
        /* Secrets do not linger in freed memory. */
        memset(src->secrets[j], 0, src->secret_len[j]);
        free(src->secrets[j]);
    }
}

/* -- a source's dedupe: a window, or { window = ..., fields = { topic = { field, ... } } } -- */

#define MAX_DEDUPE_FIELDS 32

static void free_dedupe(struct brm_dedupe *d) {
    for (size_t i = 0; i < d->ntopics; i++) {
        for (size_t j = 0; j < d->topics[i].nfields; j++) free(d->topics[i].fields[j]);
        free(d->topics[i].fields);
        free(d->topics[i].topic);
    }
    free(d->topics);
    d->topics = NULL;
    d->ntopics = 0;
}

static void release_dedupe(const struct setting *st, char *obj) {
    free_dedupe(&FIELD(struct brm_dedupe, obj, st->off));
}

/* A field path: names joined by single dots, none empty. */
static int valid_field(const char *s, size_t n) {
    if (n == 0 || s[0] == '.' || s[n - 1] == '.') return 0;
    for (size_t i = 1; i < n; i++)
        if (s[i] == '.' && s[i - 1] == '.') return 0;
    return memchr(s, '\0', n) == NULL;
}

/* Reads TOPIC's list of field paths, on top of the stack, into T: 1, or 0
 * when it is not one (reported under the setting KEY). */
static int read_dedupe_list(struct walk *w, const char *key, const char *topic,
                            struct brm_dedupe_topic *t) {
    lua_State *L = w->ld->L;
    size_t n = lua_type(L, -1) == LUA_TTABLE ? lua_rawlen(L, -1) : 0;
    if (n == 0 || n > MAX_DEDUPE_FIELDS) {
        report_setting(w, key, ".fields.%s: expected a list of 1 to %d field names", topic,
                       MAX_DEDUPE_FIELDS);
        return 0;
    }
    t->fields = brm_xcalloc(n, sizeof(char *));
    for (size_t i = 1; i <= n; i++) {
        size_t len;
        const char *f =
            lua_rawgeti(L, -1, (lua_Integer)i) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
        if (f && valid_field(f, len)) {
            t->fields[t->nfields++] = brm_xstrndup(f, len);
        } else {
            report_setting(w, key,
                           ".fields.%s[%zu]: expected a field name (\"mac\", or \"a.b\" for "
                           "field b of object a)",
                           topic, i);
        }
        lua_pop(L, 1);
    }
    return t->nfields == n;
}

/* fields = { topic = { field, ... } } on top of the stack, into D. */
static void read_dedupe_fields(struct walk *w, const char *key, struct brm_dedupe *d) {
    lua_State *L = w->ld->L;
    int fields = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, fields)) {
        char topic[BRM_TOPIC_MAX];
        size_t len;
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &len) : NULL;
        if (!k || len == 0 || brm_topic_normalize(k, len, topic, sizeof(topic)) < 0) {
            report_setting(w, key, ".fields: keys are topic names ([\"device-events\"] = ...)");
            lua_pop(L, 1);
            continue;
        }
        struct brm_dedupe_topic t = { 0 };
        if (brm_config_dedupe_fields(d, topic)) {
            report_setting(w, key, ".fields: topic %s is named twice", topic);
        } else if (read_dedupe_list(w, key, topic, &t)) {
            t.topic = brm_xstrdup(topic);
            d->topics = brm_xrealloc(d->topics, (d->ntopics + 1) * sizeof(*d->topics));
            d->topics[d->ntopics++] = t;
            t.fields = NULL;
            t.nfields = 0;
        }
        for (size_t j = 0; j < t.nfields; j++) free(t.fields[j]);
        free(t.fields);
        lua_pop(L, 1);
    }
}

static enum verdict convert_dedupe(struct walk *w, const struct setting *st, char *obj) {
    static const char *const keys[] = { "window", "fields", NULL };
    lua_State *L = w->ld->L;
    struct brm_dedupe *d = &FIELD(struct brm_dedupe, obj, st->off);
    char name[300];
    free_dedupe(d);
    d->window = 0;
    /* convert_duration writes the window: it is the struct's first field */
    if (lua_type(L, -1) != LUA_TTABLE) return convert_duration(w, st, obj);
    only_keys(w, setting_name(w, st->key, name, sizeof(name)), keys);
    int t = lua_getfield(L, -1, "window");
    enum verdict v = t == LUA_TNIL ? TAKEN : convert_duration(w, st, obj);
    if (t == LUA_TNIL)
        report_setting(w, st->key, ".window: needed (how long an event stays seen: \"10m\")");
    else if (v == OUT_OF_RANGE)
        report_setting(w, st->key, ".window: must be between %.15g and %.15g", st->min, st->max);
    else if (v != TAKEN)
        report_setting(w, st->key, ".window: expected a duration (seconds, or \"10m\")");
    lua_pop(L, 1);
    t = lua_getfield(L, -1, "fields");
    if (t == LUA_TTABLE)
        read_dedupe_fields(w, st->key, d);
    else if (t != LUA_TNIL)
        report_setting(w, st->key, ".fields: expected { topic = { \"field\", ... }, ... }");
    lua_pop(L, 1);
    return TAKEN;
}

/* -- tables of settings -- */

/* Nested settings of the same struct: limits = { ... }. */
static enum verdict convert_table(struct walk *w, const struct setting *st, char *obj) {
    if (lua_type(w->ld->L, -1) != LUA_TTABLE) return WRONG;
    struct walk sub = *w;
    setting_name(w, st->key, sub.where, sizeof(sub.where));
    walk_table(&sub, st->sub, lua_gettop(w->ld->L), obj);
    return TAKEN;
}

static void init_table(const struct setting *st, char *obj, const char *dir) {
    apply_defaults(st->sub, obj, dir);
}

static void release_table(const struct setting *st, char *obj) {
    release(st->sub, obj);
}

/* 1 when the table on top holds at most MAX_ENTRIES entries, else 0 with
 * ST's error: a loop can make a million sources, each of which costs a
 * walk and its errors. */
static int few_entries(struct walk *w, const struct setting *st) {
    lua_State *L = w->ld->L;
    int t = lua_gettop(L);
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        if (++n > MAX_ENTRIES) {
            lua_pop(L, 1);
            report(w->ld, w->top, NULL, "%s: more than %d entries", st->key, MAX_ENTRIES);
            return 0;
        }
    }
    return 1;
}

/* name = { settings }: an array of structs at OFF, its count at OFF2. */
static enum verdict convert_map(struct walk *w, const struct setting *st, char *obj) {
    lua_State *L = w->ld->L;
    if (lua_type(L, -1) != LUA_TTABLE) return WRONG;
    if (!few_entries(w, st)) return TAKEN;
    char **arr = &FIELD(char *, obj, st->off);
    size_t *count = &FIELD(size_t, obj, st->off2), size = st->sub->elem_size;
    int map = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, map)) {
        if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TTABLE) {
            report(w->ld, w->top, NULL, "%s: each entry must be name = { ... }", st->key);
            lua_pop(L, 1);
            continue;
        }
        *arr = brm_xrealloc(*arr, (*count + 1) * size);
        char *elem = memset(*arr + *count * size, 0, size);
        apply_defaults(st->sub, elem, w->ld->dir);
        FIELD(char *, elem, 0) = brm_xstrdup(lua_tostring(L, -2));
        (*count)++;
        struct walk sub = *w;
        if (snprintf(sub.where, sizeof(sub.where), "%s%s%s.%s", w->where, *w->where ? "." : "",
                     st->key, lua_tostring(L, -2)) < 0)
            sub.where[0] = '\0';
        walk_table(&sub, st->sub, lua_gettop(L), elem);
        lua_pop(L, 1);
    }
    return TAKEN;
}

static void release_map(const struct setting *st, char *obj) {
    char *arr = FIELD(char *, obj, st->off);
    for (size_t i = 0; i < FIELD(size_t, obj, st->off2); i++) {
        char *elem = arr + i * st->sub->elem_size;
        free(FIELD(char *, elem, 0));
        release(st->sub, elem);
    }
    free(arr);
}

/* -- targets: name -> options, which each kind's adapter checks -- */

/* Takes each target's name, kind and options (as JSON, for the adapter to
 * check once the walk is done: the adapters live in the scripts folder,
 * which is itself a setting). */
static enum verdict convert_targets(struct walk *w, const struct setting *st, char *obj) {
    lua_State *L = w->ld->L;
    if (lua_type(L, -1) != LUA_TTABLE) return WRONG;
    if (!few_entries(w, st)) return TAKEN;
    struct brm_target **targets = &FIELD(struct brm_target *, obj, st->off);
    size_t *count = &FIELD(size_t, obj, st->off2);
    int map = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, map)) {
        struct brm_err err;
        const char *name = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
        if (!name || lua_type(L, -1) != LUA_TTABLE) {
            report(w->ld, w->top, NULL, "%s: each entry must be name = { kind = ..., ... }",
                   st->key);
        } else if (strcmp(name, BRM_HTTP_TARGET) == 0) {
            report(w->ld, w->top, name, "%s.%s: the name is brume.http's own target", st->key,
                   name);
        } else {
            *targets = brm_xrealloc(*targets, (*count + 1) * sizeof(**targets));
            struct brm_target *tg = memset(&(*targets)[(*count)++], 0, sizeof(**targets));
            char unset[MAX_ENV_NAME + 1];
            enum found found = find_unset(w->ld, -1, 8, unset);
            tg->name = brm_xstrdup(name);
            if (lua_getfield(L, -1, "kind") == LUA_TSTRING)
                tg->kind = brm_xstrdup(lua_tostring(L, -1));
            lua_pop(L, 1);
            if (found == FOUND_UNSET) tg->unset = brm_xstrdup(unset);
            if (found == FOUND_REPORTED) {
                /* env() or file() said what is wrong: no options, so no check */
            } else if (brm_json_encode(L, -1, &err) < 0) {
                report(w->ld, w->top, name, "%s.%s: options must be plain values (%s)", st->key,
                       name, err.msg);
            } else if ((w->ld->options_text += lua_rawlen(L, -1)) > MAX_OPTIONS_TEXT) {
                report(w->ld, w->top, name,
                       "%s: the options of its targets take more than %u MB as JSON (up to %s)",
                       st->key, MAX_OPTIONS_TEXT >> 20, name);
                lua_pop(L, 3); /* the text, the options, the key: no further targets */
                return TAKEN;
            } else {
                tg->options = brm_xstrdup(lua_tostring(L, -1));
                lua_pop(L, 1);
            }
        }
        lua_pop(L, 1);
    }
    return TAKEN;
}

static void free_target(struct brm_target *t) {
    free(t->name);
    free(t->kind);
    free(t->options);
    free(t->proxy);
    free(t->path);
    free(t->signing_secret);
    free(t->unset);
    for (size_t j = 0; j < t->nsecrets; j++) free(t->secrets[j]);
    free(t->secrets);
    for (size_t j = 0; j < 2 * t->nsettings; j++) free(t->settings[j]);
    free(t->settings);
}

static void release_targets(const struct setting *st, char *obj) {
    struct brm_target *targets = FIELD(struct brm_target *, obj, st->off);
    for (size_t i = 0; i < FIELD(size_t, obj, st->off2); i++) free_target(&targets[i]);
    free(targets);
}

/* -- the types -- */

static const struct type string_type = { "a string", convert_string, init_string, release_string };
/* A string that is a secret (an API token): a placeholder in an offline load. */
static const struct type secret_string_type = { "a string", convert_string, init_string,
                                                release_string };
static const struct type path_type = { "a string", convert_path, init_path, release_string };
static const struct type long_type = { "an integer", convert_long, init_long, NULL };
static const struct type int_type = { "an integer", convert_int, init_int, NULL };
static const struct type size_type = { "a size (bytes, or \"8MB\")", convert_size, init_size,
                                       NULL };
static const struct type duration_type = { "a duration (seconds, or \"90s\", \"15m\", \"24h\")",
                                           convert_duration, init_double, NULL };
static const struct type bool_type = { "true or false", convert_bool, init_int, NULL };
static const struct type enum_type = { NULL, convert_enum, init_int, NULL };
static const struct type listen_type = {
    "an address \"host:port\", { addr = ..., tls = { cert = ..., key = ... } }, or a list of them",
    convert_listen, init_listen, release_listen
};
static const struct type admin_type = {
    "an address \"host:port\", { addr = ..., token = ... }, or false", convert_admin, init_string,
    release_admin
};
static const struct type dedupe_type = { "a duration (seconds, or \"10m\"), or { window = ..., "
                                         "fields = { topic = { \"field\", ... } } }",
                                         convert_dedupe, init_double, release_dedupe };
static const struct type secrets_type = { "a string or a list of one or two strings",
                                          convert_secrets, NULL, release_secrets };
static const struct type table_type = { "a table", convert_table, init_table, release_table };
static const struct type state_type = { "a Redis URL \"redis://host:port/db\", or { url = ..., "
                                        "password = ..., ... }",
                                        convert_state, init_state, release_state };
static const struct type map_type = { "a table", convert_map, NULL, release_map };
static const struct type targets_type = { "a table", convert_targets, NULL, release_targets };

/* ---- the settings ------------------------------------------------------- */

#define CFG(field) offsetof(struct brm_config, field)
#define SRC(field) offsetof(struct brm_source, field)
#define SCHEMA(rows, size)                                                                         \
    { rows, BRM_ARRAY_LEN(rows), size }

static const struct name log_levels[] = {
    { "debug", BRM_LOG_DEBUG },
    { "info", BRM_LOG_INFO },
    { "warn", BRM_LOG_WARN },
    { "error", BRM_LOG_ERROR },
    { NULL, 0 },
};
static const struct name log_formats[] = {
    { "logfmt", BRM_LOG_LOGFMT },
    { "json", BRM_LOG_JSON },
    { NULL, 0 },
};
static const struct name durabilities[] = { { "full", 1 }, { "none", 0 }, { NULL, 0 } };

static const struct setting limits_settings[] = {
    { "instructions", &long_type, .off = CFG(instructions), .def = 1000000, .min = 1000,
      .max = 1e12 },
    { "time", &duration_type, .off = CFG(time_limit), .def = 1, .min = 0.001, .max = 3600 },
    { "memory", &size_type, .off = CFG(memory), .def = 64u << 20, .min = 1u << 20, .max = 1e12 },
};
static const struct setting http_settings[] = {
    { "header_timeout", &duration_type, .off = CFG(http.header_timeout), .def = 10, .min = 0.05,
      .max = 3600 },
    { "body_timeout", &duration_type, .off = CFG(http.body_timeout), .def = 30, .min = 0.05,
      .max = 3600 },
    { "idle_timeout", &duration_type, .off = CFG(http.idle_timeout), .def = 60, .min = 0.05,
      .max = 86400 },
    { "drain_timeout", &duration_type, .off = CFG(http.drain_timeout), .def = 10, .min = 0,
      .max = 3600 },
    { "max_connections", &long_type, .off = CFG(http.max_connections), .def = 1024, .min = 1,
      .max = 1000000 },
    { "max_unverified", &size_type, .off = CFG(http.max_unverified), .def = 64u << 20,
      .min = 64 << 10, .max = 1e12 },
};
static const struct setting log_settings[] = {
    { "level", &enum_type, .off = CFG(log_level), .def = BRM_LOG_INFO, .names = log_levels },
    { "format", &enum_type, .off = CFG(log_format), .def = BRM_LOG_LOGFMT, .names = log_formats },
};
static const struct setting journal_settings[] = {
    { "retention", &duration_type, .off = CFG(journal.retention), .def = 7 * 86400, .min = 60,
      .max = 10 * 365 * 86400.0 },
    { "max_size", &size_type, .off = CFG(journal.max_size), .def = 1024ull << 20, .min = 0,
      .max = 1e15 },
};
static const struct setting store_settings[] = {
    { "max_size", &size_type, .off = CFG(store_max), .def = 0, .min = 0, .max = 1e15 },
};
/* A source's `mist`: where Mist keeps the webhook's delivery log. */
static const struct setting mist_settings[] = {
    { "api", &string_type, .off = SRC(mist.api) },
    { "token", &secret_string_type, .off = SRC(mist.token) },
    { "org_id", &string_type, .off = SRC(mist.org_id) },
    { "site_id", &string_type, .off = SRC(mist.site_id) },
    { "webhook_id", &string_type, .off = SRC(mist.webhook_id) },
    { "every", &duration_type, .off = SRC(mist.every), .def = 0, .min = 0, .max = 86400 },
    { "catch_up", &duration_type, .off = SRC(mist.catch_up), .def = 86400, .min = 0,
      .max = 30 * 86400.0 },
};
static const struct schema mist_schema = SCHEMA(mist_settings, 0);

static const struct setting source_settings[] = {
    { "path", &string_type, .off = SRC(path) },
    { "secret", &secrets_type, .off = 0 },
    { "allow_sha1", &bool_type, .off = SRC(allow_sha1) },
    { "insecure", &bool_type, .off = SRC(insecure) },
    { "max_body", &size_type, .off = SRC(max_body), .def = 1u << 20, .min = 64, .max = 1u << 30 },
    { "dedupe", &dedupe_type, .off = SRC(dedupe), .def = 0, .min = 0, .max = 30 * 86400.0 },
    { "durability", &enum_type, .off = SRC(durable), .def = 1, .names = durabilities },
    { "mist", &table_type, .off = 0, .sub = &mist_schema },
};

static const struct schema limits_schema = SCHEMA(limits_settings, 0);
static const struct schema http_schema = SCHEMA(http_settings, 0);
static const struct schema log_schema = SCHEMA(log_settings, 0);
static const struct schema journal_schema = SCHEMA(journal_settings, 0);
static const struct schema store_schema = SCHEMA(store_settings, 0);
static const struct schema source_schema = SCHEMA(source_settings, sizeof(struct brm_source));

static const struct setting top_settings[] = {
    { "listen", &listen_type, .off = CFG(listen), .off2 = CFG(nlisten), .text = "0.0.0.0:8080" },
    { "admin", &admin_type, .off = CFG(admin), .off2 = CFG(admin_token), .text = "127.0.0.1:9090" },
    { "watch", &bool_type, .off = CFG(watch), .def = 1 },
    { "workers", &int_type, .off = CFG(workers), .def = 0, .min = 0, .max = BRM_MAX_WORKERS },
    { "data_dir", &path_type, .off = CFG(data_dir), .text = "var" },
    { "rules", &path_type, .off = CFG(rules_dir), .text = "rules" },
    { "scripts", &path_type, .off = CFG(scripts_dir), .text = "scripts" },
    { "limits", &table_type, .off = 0, .sub = &limits_schema },
    { "http", &table_type, .off = 0, .sub = &http_schema },
    { "log", &table_type, .off = 0, .sub = &log_schema },
    { "journal", &table_type, .off = 0, .sub = &journal_schema },
    { "store", &table_type, .off = 0, .sub = &store_schema },
    { "state", &state_type, .off = 0 },
    { "sources", &map_type, .off = CFG(sources), .off2 = CFG(nsources), .sub = &source_schema },
    { "targets", &targets_type, .off = CFG(targets), .off2 = CFG(ntargets) },
};
static const struct schema top_schema = SCHEMA(top_settings, 0);

/* ---- walking what the file set ------------------------------------------ */

/* In an offline load, a placeholder may stand for a secret: a source's
 * secret or its mist.token, the admin token, a target's option. In any other setting it is
 * reported as env() reports an unset variable, and 1 returned. Tables of
 * settings are walked one by one, so their settings answer for
 * themselves. */
static int unset_elsewhere(struct walk *w, const struct setting *st) {
    lua_State *L = w->ld->L;
    const struct type *t = st->type;
    char name[MAX_ENV_NAME + 1];
    enum found found;
    if (t == &secrets_type || t == &secret_string_type || t == &targets_type || t == &table_type ||
        t == &map_type)
        return 0;
    if (t == &state_type && lua_type(L, -1) == LUA_TTABLE) { /* its password is a secret */
        lua_getfield(L, -1, "url");
        found = find_unset(w->ld, -1, 1, name);
        lua_pop(L, 1);
    } else if (t == &admin_type && lua_type(L, -1) == LUA_TTABLE) { /* its token is a secret */
        lua_getfield(L, -1, "addr");
        found = find_unset(w->ld, -1, 1, name);
        lua_pop(L, 1);
    } else {
        found = find_unset(w->ld, -1, 8, name);
    }
    if (found != FOUND_UNSET) return 0;
    report_setting(w, st->key, ": environment variable %s is not set", name);
    return 1;
}

/* Converts the value on top of the stack for ST into OBJ, or reports why
 * it cannot. */
static void convert(struct walk *w, const struct setting *st, char *obj) {
    lua_State *L = w->ld->L;
    char buf[160];
    if (is_reported(L, -1)) return;
    if (w->ld->offline && unset_elsewhere(w, st)) return;
    enum verdict v = st->type->convert(w, st, obj);
    const char *expected = describe(st, buf, sizeof(buf));
    switch (v) {
    case TAKEN: break;
    case WRONG:
        if (lua_type(L, -1) == LUA_TSTRING)
            report_setting(w, st->key, ": expected %s, got \"%s\"", expected, lua_tostring(L, -1));
        else
            report_setting(w, st->key, ": expected %s, got %s", expected, luaL_typename(L, -1));
        break;
    case INVALID:
        report_setting(w, st->key, ": '%s' is not %s", lua_tostring(L, -1), expected);
        break;
    case OUT_OF_RANGE:
        report_setting(w, st->key, ": must be between %.15g and %.15g", st->min, st->max);
        break;
    }
}

static void report_unknown(struct walk *w, const struct schema *sc, const char *key) {
    const char *names[64];
    char hint[160], pbuf[300];
    size_t n = 0;
    for (size_t i = 0; i < sc->n && n < BRM_ARRAY_LEN(names); i++) names[n++] = sc->settings[i].key;
    brm_suggest(key, names, n, hint, sizeof(hint));
    report(w->ld, w->top, subpath(w, key, pbuf, sizeof(pbuf)), "%s%sunknown setting '%s'%s",
           w->where, *w->where ? ": " : "", key, hint);
}

/* Converts each key of the table at IDX that SC knows into OBJ. */
static void walk_table(struct walk *w, const struct schema *sc, int idx, char *obj) {
    lua_State *L = w->ld->L;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        const struct setting *st = NULL;
        if (lua_type(L, -2) == LUA_TSTRING) {
            const char *k = lua_tostring(L, -2);
            if (sc == &top_schema) w->top = k;
            for (size_t i = 0; i < sc->n && !st; i++)
                if (strcmp(sc->settings[i].key, k) == 0) st = &sc->settings[i];
            if (!st) report_unknown(w, sc, k);
        } else {
            report(w->ld, w->top, NULL, "%s: keys must be names", w->where);
        }
        if (st) convert(w, st, obj);
        lua_pop(L, 1);
    }
}

/* Gives OBJ the defaults of SC's settings (paths resolved from DIR). */
static void apply_defaults(const struct schema *sc, char *obj, const char *dir) {
    for (size_t i = 0; i < sc->n; i++)
        if (sc->settings[i].type->init) sc->settings[i].type->init(&sc->settings[i], obj, dir);
}

/* Frees what OBJ's fields for SC own. */
static void release(const struct schema *sc, char *obj) {
    for (size_t i = 0; i < sc->n; i++)
        if (sc->settings[i].type->release) sc->settings[i].type->release(&sc->settings[i], obj);
}

/* ---- checks across settings --------------------------------------------- */

/* 1 when URL (http://...) names a loopback host: the token may go there in
 * the clear (a test's mock, a local proxy), and nowhere else. */
static int loopback_url(const char *url) {
    const char *host = url + 7;
    size_t n = strcspn(host, "/?#");
    char addr[300];
    if (n == 0 || n >= sizeof(addr) - 4 || memchr(host, '@', n)) return 0;
    int ported =
        host[n - 1] != ']' && memchr(host, ':', n) && (host[0] != '[' || host[n - 1] != ']');
    snprintf(addr, sizeof(addr), ported ? "%.*s" : "%.*s:80", (int)n, host);
    return brm_addr_loopback(addr);
}

/* A source's `mist` needs all of api, token, webhook_id and one of org_id
 * and site_id, or none of them. The token goes to api: https, or http to
 * a loopback address only. */
static void check_mist(struct loader *ld, const struct brm_source *s) {
    const char *why = NULL;
    if (!s->mist.api) {
        if (s->mist.token || s->mist.org_id || s->mist.site_id || s->mist.webhook_id)
            why = "needs api (\"https://api.mist.com\", or your region's)";
    } else if (strncmp(s->mist.api, "https://", 8) != 0 &&
               strncmp(s->mist.api, "http://", 7) != 0) {
        why = "api: expected an https:// URL (\"https://api.mist.com\", or your region's)";
    } else if (strncmp(s->mist.api, "http://", 7) == 0 && !loopback_url(s->mist.api)) {
        why = "api: the token would go in the clear: use https:// (http:// only to a loopback "
              "address)";
    } else if (!s->mist.token || !*s->mist.token) {
        why = "needs token (an API token, e.g. env(\"MIST_API_TOKEN\"))";
    } else if (!s->mist.webhook_id) {
        why = "needs webhook_id (the webhook's id in Mist)";
    } else if (!s->mist.org_id == !s->mist.site_id) {
        why = "needs one of org_id (an org webhook) or site_id (a site webhook)";
    }
    if (why) report(ld, "sources", s->name, "sources.%s.mist: %s", s->name, why);
}

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
        check_mist(ld, s);
    }
}

/* ---- targets' options, checked by their adapters ------------------------ */

/* Pushes T[K] read raw: the tables come from Lua code in the scripts
 * folder, and no metamethod may run outside a protected call. T is an
 * absolute index. Returns the value's type. [-0, +1] */
static int raw_field(lua_State *L, int t, const char *k) {
    lua_pushstring(L, k);
    return lua_rawget(L, t);
}

static double meta_number(lua_State *L, int t, const char *k) {
    raw_field(L, t, k);
    double v = lua_tonumber(L, -1);
    lua_pop(L, 1);
    return v;
}

static char *meta_string(lua_State *L, int t, const char *k) {
    char *v = raw_field(L, t, k) == LUA_TSTRING ? brm_xstrdup(lua_tostring(L, -1)) : NULL;
    lua_pop(L, 1);
    return v;
}

/* Fills what the C side needs from the META table at IDX (absolute); a
 * file target's path resolves from DIR. */
static void read_meta(lua_State *L, int idx, const char *dir, struct brm_target *tg) {
    tg->timeout = meta_number(L, idx, "timeout");
    tg->max_age = meta_number(L, idx, "max_age");
    tg->backoff = meta_number(L, idx, "backoff");
    tg->rate = meta_number(L, idx, "rate");
    tg->concurrency = (long)meta_number(L, idx, "concurrency");
    tg->proxy = meta_string(L, idx, "proxy");
    tg->signing_secret = meta_string(L, idx, "signing_secret");
    char *path = meta_string(L, idx, "path");
    if (path) tg->path = brm_path_join(dir, path);
    free(path);
    raw_field(L, idx, "ticket");
    tg->ticket = lua_toboolean(L, -1);
    lua_pop(L, 1);
    size_t n = raw_field(L, idx, "secrets") == LUA_TTABLE ? lua_rawlen(L, -1) : 0;
    tg->secrets = brm_xcalloc(n, sizeof(char *));
    for (size_t i = 1; i <= n; i++) {
        if (lua_rawgeti(L, -1, (lua_Integer)i) == LUA_TSTRING)
            tg->secrets[tg->nsecrets++] = brm_xstrdup(lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (raw_field(L, idx, "settings") == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, -2)) { /* raw: no metamethod runs */
            if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING) {
                tg->settings = brm_xrealloc(tg->settings, 2 * (tg->nsettings + 1) * sizeof(char *));
                tg->settings[2 * tg->nsettings] = brm_xstrdup(lua_tostring(L, -2));
                tg->settings[2 * tg->nsettings++ + 1] = brm_xstrdup(lua_tostring(L, -1));
            }
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
}

/* The string at IDX, or "?". */
static const char *string_or(lua_State *L, int idx) {
    return lua_type(L, idx) == LUA_TSTRING ? lua_tostring(L, idx) : "?";
}

/* Reports each { key, message [, names] } problem of the list at IDX
 * (absolute) at its key's line. NAMES, sent with an unknown option, are
 * the options the kind takes: the closest is suggested. */
static void report_problems(struct loader *ld, lua_State *L, int idx, const struct brm_target *tg) {
    size_t n = lua_rawlen(L, idx);
    for (size_t k = 1; k <= n; k++) {
        const char *names[64];
        size_t nnames = 0;
        char path[300], hint[160];
        int top = lua_gettop(L);
        if (lua_rawgeti(L, idx, (lua_Integer)k) != LUA_TTABLE) {
            lua_settop(L, top);
            continue;
        }
        lua_rawgeti(L, top + 1, 1);
        lua_rawgeti(L, top + 1, 2);
        const char *key = string_or(L, top + 2);
        /* The names stay referenced by the list on the stack while used. */
        if (lua_rawgeti(L, top + 1, 3) == LUA_TTABLE)
            for (size_t i = 1; i <= lua_rawlen(L, top + 4) && nnames < BRM_ARRAY_LEN(names); i++) {
                if (lua_rawgeti(L, top + 4, (lua_Integer)i) == LUA_TSTRING)
                    names[nnames++] = lua_tostring(L, -1);
                lua_pop(L, 1);
            }
        brm_suggest(key, names, nnames, hint, sizeof(hint));
        snprintf(path, sizeof(path), "%s.%s", tg->name, key);
        report(ld, "targets", path, "targets.%s.%s: %s%s", tg->name, key, string_or(L, top + 3),
               hint);
        lua_settop(L, top);
    }
}

/*
 * Has TG's adapter check its options in SB: brume.target.check(kind,
 * options) returns the options with defaults filled in, what the C side
 * needs (meta), and a list of problems. The options are taken (and bad
 * cleared) only when there is none.
 */
static void check_target(struct loader *ld, struct brm_sandbox *sb, const char *dir,
                         struct brm_target *tg) {
    static const char checker[] = "return require('brume.target').check(...)";
    lua_State *L = brm_sandbox_state(sb);
    int top = lua_gettop(L);
    struct brm_err err;
    char msg[1024];
    if (brm_sandbox_loadbuffer(sb, checker, sizeof(checker) - 1, "=targets", &err) < 0) goto fail;
    lua_pushstring(L, tg->kind);
    if (brm_json_decode(L, tg->options, strlen(tg->options), &err) < 0 ||
        brm_sandbox_call(sb, 2, 3, &err) != BRM_CALL_OK)
        goto fail;
    if (lua_type(L, top + 3) != LUA_TTABLE) {
        brm_err_set(&err, "brume.target.check returned no list of problems");
        goto fail;
    }
    report_problems(ld, L, top + 3, tg);
    if (lua_rawlen(L, top + 3) == 0) {
        if (lua_type(L, top + 1) != LUA_TTABLE || lua_type(L, top + 2) != LUA_TTABLE) {
            brm_err_set(&err, "brume.target.check returned no options");
            goto fail;
        }
        if (brm_json_encode(L, top + 1, &err) < 0) {
            char why[sizeof(err.msg)];
            snprintf(why, sizeof(why), "%s", err.msg);
            brm_err_set(&err, "the options with the adapter's defaults are not plain values (%s)",
                        why);
            goto fail;
        }
        free(tg->options);
        tg->options = brm_xstrdup(lua_tostring(L, -1));
        read_meta(L, top + 2, dir, tg);
        tg->bad = 0;
    }
    lua_settop(L, top);
    return;
fail:
    brm_err_format(&err, msg, sizeof(msg));
    report(ld, "targets", tg->name, "targets.%s: %s", tg->name, msg);
    lua_settop(L, top);
}

/*
 * Has each target's adapter check its options, in a sandbox that finds
 * the user's scripts first, as the workers' VMs will. Adapters may call
 * the brume module: the caller's hook opens it (config cannot, as the
 * module reads the config).
 */
static void check_targets(struct loader *ld, struct brm_config *c) {
    if (!c->ntargets) return;
    struct brm_sandbox_opts o = { .instructions = CHECK_INSTRUCTIONS,
                                  .time_limit = CONFIG_TIME,
                                  .memory = CONFIG_MEMORY,
                                  .scripts_dir = c->scripts_dir };
    struct brm_sandbox *sb = brm_sandbox_new(&o);
    brm_json_open(brm_sandbox_state(sb)); /* the options travel as JSON */
    lua_pop(brm_sandbox_state(sb), 1);
    if (ld->open) ld->open(sb, c, ld->open_arg);
    for (size_t i = 0; i < c->ntargets; i++) {
        struct brm_target *tg = &c->targets[i];
        tg->bad = 1; /* until its adapter took its options */
        if (!tg->kind)
            report(ld, "targets", tg->name,
                   "targets.%s: no kind (one of discord, file, gchat, "
                   "jira, mattermost, opsgenie, pagerduty, servicenow, slack, teams, webex, "
                   "webhook, zendesk)",
                   tg->name);
        else if (tg->options && tg->unset)
            tg->bad = 0; /* sending to it fails: see brm_config_load_offline */
        else if (tg->options)
            check_target(ld, sb, c->dir, tg);
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

/* ---- loading ------------------------------------------------------------ */

/* Gives the chunk at CHUNK its environment: env() and file(), the safe
 * library behind, and a __newindex that notes the line of each top-level
 * key in the table at ld->lines. Returns the environment's index. [-0, +1] */
static int make_environment(struct loader *ld, struct brm_sandbox *sb, int chunk) {
    lua_State *L = ld->L;
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
    lua_setupvalue(L, chunk, 1);
    return env;
}

/*
 * Refuses a NUL byte in any string the table at IDX holds, in its keys and
 * its values, and in the tables below it (WHERE names it; TOP is its
 * top-level setting, for the line): C takes names and values up to their
 * first NUL, so sources "m\0a" and "m\0b" would be two sources named "m".
 * A table met again (through a cycle, or shared) is looked at once, in
 * the table at SEEN.
 */
static void refuse_nul(struct loader *ld, int idx, int seen, const char *top, const char *where,
                       int depth) {
    lua_State *L = ld->L;
    if (depth > 32 || !lua_checkstack(L, 8)) return; /* deeper than any setting goes */
    lua_pushvalue(L, idx);
    if (lua_rawget(L, seen) != LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    lua_pop(L, 1);
    lua_pushvalue(L, idx);
    lua_pushboolean(L, 1);
    lua_rawset(L, seen);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        size_t klen = 0, vlen = 0;
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &klen) : NULL;
        const char *v = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &vlen) : NULL;
        int bad_key = k && memchr(k, '\0', klen), bad_value = v && memchr(v, '\0', vlen);
        if (bad_key || bad_value || lua_type(L, -1) == LUA_TTABLE) { /* named only then */
            char name[300];
            if (k)
                snprintf(name, sizeof(name), "%s%s%s", where, *where ? "." : "", k);
            else
                snprintf(name, sizeof(name), "%s[%.14g]", where,
                         lua_type(L, -2) == LUA_TNUMBER ? lua_tonumber(L, -2) : 0);
            const char *t = depth ? top : k;
            if (bad_key) report(ld, t, NULL, "%s: a name holds a NUL byte", name);
            if (bad_value) report(ld, t, NULL, "%s: holds a NUL byte", name);
            if (lua_type(L, -1) == LUA_TTABLE)
                refuse_nul(ld, lua_gettop(L), seen, t, name, depth + 1);
        }
        lua_pop(L, 1);
    }
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
    int chunk = lua_gettop(L);
    brm_json_open(L); /* to carry targets' options to their adapters */
    lua_pop(L, 1);
    lua_newtable(L); /* top-level key -> line */
    ld->lines = lua_gettop(L);
    int env = make_environment(ld, sb, chunk);
    lua_pushvalue(L, chunk);
    if (brm_sandbox_call(sb, 0, 0, &err) != BRM_CALL_OK) {
        brm_errors_add(ld->errs, &err);
        goto done;
    }
    ld->fatal = 0;
    lua_pushnil(L); /* env() and file() are not settings */
    lua_setfield(L, env, "env");
    lua_pushnil(L);
    lua_setfield(L, env, "file");
    lua_newtable(L);
    refuse_nul(ld, env, lua_gettop(L), NULL, "", 0);
    lua_pop(L, 1);
    struct walk w = { .ld = ld, .top = NULL, .where = "" };
    walk_table(&w, &top_schema, env, (char *)c);
    /* Checks across settings need the line table, so they run in here.
     * Each target is checked whatever else is wrong: brume check reports
     * every problem. */
    if (brm_errors_count(ld->errs) == ld->errs_at_start) check_config(ld, c);
    check_targets(ld, c);
done:
    brm_sandbox_free(sb);
    ld->L = NULL;
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

static struct brm_config *load(const char *path, brm_config_open_fn *open, void *arg,
                               struct brm_errors *errs, int lenient, int offline) {
    struct brm_config *c = brm_xcalloc(1, sizeof(*c));
    struct loader ld = { .errs = errs,
                         .errs_at_start = brm_errors_count(errs),
                         .open = open,
                         .open_arg = arg,
                         .offline = offline,
                         .looks = MAX_LOOKS };
    c->refs = 1;
    c->file = brm_xstrdup(path);
    c->dir = brm_path_dir(path);
    char *display = brm_path_display(path);
    ld.display = display;
    ld.dir = c->dir;
    brm_buf_init(&ld.text);
    apply_defaults(&top_schema, (char *)c, c->dir);
    evaluate(&ld, c);
    add_http_target(c);
    if (c->workers == 0) c->workers = brm_cpu_count();
    if (c->workers > BRM_MAX_WORKERS) c->workers = BRM_MAX_WORKERS;
    brm_buf_reset(&ld.text);
    free(ld.sorted);
    free(display);
    if (brm_errors_count(errs) > ld.errs_at_start) {
        if (lenient && !ld.fatal) {
            drop_bad_targets(c);
            return c;
        }
        brm_config_free(c);
        return NULL;
    }
    return c;
}

struct brm_config *brm_config_load(const char *path, brm_config_open_fn *open, void *arg,
                                   struct brm_errors *errs) {
    return load(path, open, arg, errs, 0, 0);
}

struct brm_config *brm_config_load_offline(const char *path, brm_config_open_fn *open, void *arg,
                                           struct brm_errors *errs) {
    return load(path, open, arg, errs, 0, 1);
}

struct brm_config *brm_config_check(const char *path, brm_config_open_fn *open, void *arg,
                                    struct brm_errors *errs) {
    return load(path, open, arg, errs, 1, 0);
}

const struct brm_config *brm_config_ref(const struct brm_config *c) {
    atomic_fetch_add(&((struct brm_config *)c)->refs, 1);
    return c;
}

void brm_config_free(const struct brm_config *cc) {
    struct brm_config *c = (struct brm_config *)cc; /* the last holder owns it */
    if (!c || atomic_fetch_sub(&c->refs, 1) > 1) return;
    release(&top_schema, (char *)c);
    free(c->file);
    free(c->dir);
    free(c);
}

const struct brm_target *brm_config_target(const struct brm_config *c, const char *name) {
    for (size_t i = 0; i < c->ntargets; i++)
        if (strcmp(c->targets[i].name, name) == 0) return &c->targets[i];
    return NULL;
}

const struct brm_dedupe_topic *brm_config_dedupe_fields(const struct brm_dedupe *d,
                                                        const char *topic) {
    for (size_t i = 0; i < d->ntopics; i++)
        if (strcmp(d->topics[i].topic, topic) == 0) return &d->topics[i];
    return NULL;
}

double brm_config_id_skew(const struct brm_config *c) {
    return c->http.header_timeout + c->http.body_timeout + 1;
}

const struct brm_source *brm_config_source(const struct brm_config *c, const char *name) {
    for (size_t i = 0; i < c->nsources; i++)
        if (strcmp(c->sources[i].name, name) == 0) return &c->sources[i];
    return NULL;
}
