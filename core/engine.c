#include "engine.h"

#include <dirent.h>
#include <pthread.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fingerprint.h"
#include "lint.h"
#include "log.h"
#include "metrics.h"
#include "sandbox.h"
#include "snapshot.h"

#define MAX_EVENT_ID  128
#define MAX_RULE_NAME 100        /* %-encoded in delivery keys, it must fit theirs */
#define MAX_RULE_FILE (4u << 20) /* as the sandbox reads rule files */
/* A rule failing on every event would write a line per event: at most this
 * many lines per rule per window, then one line saying how many were not
 * written. The metrics count every failure. */
#define FAILURE_LOGS   10
#define FAILURE_WINDOW 10000 /* ms */

struct rule {
    char *name;
    char *key_name;         /* NAME %-encoded, as it goes into delivery keys */
    char *file;             /* as shown in errors */
    char *path;             /* as read, through the snapshot */
    int fn;                 /* registry reference to on_event */
    int on_timer, on_group; /* registry references, or LUA_NOREF */
    double late;            /* timers late by more than this are dropped; < 0: fire them all */
    int where;              /* registry reference to the where table, or LUA_NOREF */
    int all;                /* topics = "*" */
    char **topics;
    size_t ntopics;
    struct brm_counter *runs, *errors, *budget, *memory;
    struct brm_counter *fired, *late_fired, *late_dropped;
    struct brm_histogram *seconds;
    uint64_t log_window; /* start of the current failure-log window, ms */
    unsigned logged, suppressed;
    uint64_t event;  /* the posted event SENT counts for */
    size_t sent;     /* messages this rule sent for it, emitted events included */
    char *json_name; /* NAME as a JSON string, for run logs */
};

/* The rules one topic runs, in file-name order. */
struct topic {
    char *name;
    size_t *rules;
    size_t n;
};

struct brm_engine {
    const struct brm_config *cfg;
    struct brm_sandbox *sb;
    struct brm_api *api;
    struct rule *rules;
    size_t nrules;
    struct topic *topics;
    size_t ntopics;
    struct topic all; /* the "*" rules: what a topic no rule names runs */
    uint64_t event;   /* posted events dispatched so far */
    int queue;        /* registry reference to the brume.emit queue */
    int exhausted;
    int quiet; /* a dry engine in the daemon: no metrics, no failure logs */
    struct brm_state *state;
    struct brm_fingerprint *fp; /* made at the first event deduped */
    const char *payload;        /* brume test: the payload file being run */
};

static const char *const rule_keys[] = { "name",     "topics",   "where", "on_event",
                                         "on_timer", "on_group", "late",  "description" };
#define LATE_DEFAULT 3600.0 /* a timer late by more than an hour is dropped */
#define LATE_SLACK   1.0    /* a timer firing later than this after its due time is late */

/* ---- loading ------------------------------------------------------------ */

static int by_strcmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The *.lua files directly in DIR, sorted by name. -1 when DIR cannot be read. */
static int list_rules(struct brm_snapshot *files, const char *dir, char ***out, size_t *n) {
    struct brm_buf names;
    brm_buf_init(&names);
    size_t cap = 0;
    *out = NULL;
    *n = 0;
    if (brm_snapshot_list(files, dir, &names) < 0) return -1;
    for (char *p = names.data, *nl; p && (nl = strchr(p, '\n')); p = nl + 1) {
        *nl = '\0';
        size_t len = strlen(p);
        if (p[0] == '.' || len < 5 || strcmp(p + len - 4, ".lua") != 0) continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            *out = brm_xrealloc(*out, cap * sizeof(char *));
        }
        (*out)[(*n)++] = brm_xstrdup(p);
    }
    brm_buf_reset(&names);
    if (*n) qsort(*out, *n, sizeof(char *), by_strcmp);
    return 0;
}

static int is_scalar(lua_State *L, int idx) {
    int t = lua_type(L, idx);
    return t == LUA_TSTRING || t == LUA_TNUMBER || t == LUA_TBOOLEAN;
}

/* Checks the where table at IDX: field = value, or field = { values }. */
static int check_where(lua_State *L, int idx, const char *file, struct brm_errors *errs) {
    int ok = 1;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
        int good = k && is_scalar(L, -1);
        if (k && lua_type(L, -1) == LUA_TTABLE) {
            size_t n = lua_rawlen(L, -1);
            good = n > 0;
            for (size_t i = 1; i <= n && good; i++) {
                lua_rawgeti(L, -1, (lua_Integer)i);
                good = is_scalar(L, -1);
                lua_pop(L, 1);
            }
        }
        if (!good) {
            brm_errors_addf(errs, file, 0,
                            "where.%s: expected a string, number or boolean, or a list of them",
                            k ? k : "?");
            ok = 0;
        }
        lua_pop(L, 1);
    }
    return ok;
}

/* 1 the first time this process warns about TOPIC in FILE: every worker
 * loads the same rules, and once is enough. */
static int first_warning(const char *file, const char *topic) {
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static uint64_t seen[256];
    static size_t nseen;
    uint64_t h = 1469598103934665603ull;
    for (const char *p = file; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
    h = (h ^ 0x1f) * 1099511628211ull;
    for (const char *p = topic; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
    int first = 1;
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < nseen && first; i++) first = seen[i] != h;
    if (first && nseen < BRM_ARRAY_LEN(seen)) seen[nseen++] = h;
    pthread_mutex_unlock(&lock);
    return first;
}

/* Reads topics (a name, "*", or a list of names) into R. */
static int read_topics(lua_State *L, int idx, struct rule *r, struct brm_errors *errs) {
    size_t n = lua_type(L, idx) == LUA_TTABLE ? lua_rawlen(L, idx) : 1;
    if (lua_type(L, idx) != LUA_TTABLE && lua_type(L, idx) != LUA_TSTRING) n = 0;
    if (n == 0) {
        brm_errors_addf(errs, r->file, 0,
                        "topics: expected a topic name, a list of them, or \"*\" for every topic");
        return 0;
    }
    r->topics = brm_xcalloc(n, sizeof(char *));
    for (size_t i = 1; i <= n; i++) {
        if (lua_type(L, idx) == LUA_TTABLE)
            lua_rawgeti(L, idx, (lua_Integer)i);
        else
            lua_pushvalue(L, idx);
        size_t len;
        const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
        char name[BRM_TOPIC_MAX];
        if (!s || len == 0 || brm_topic_normalize(s, len, name, sizeof(name)) < 0) {
            brm_errors_addf(errs, r->file, 0, "topics[%zu]: expected a topic name", i);
            lua_pop(L, 1);
            return 0;
        }
        if (strcmp(name, "*") == 0)
            r->all = 1;
        else {
            if (!brm_topic_known(name) && first_warning(r->file, name))
                brm_log_warn("rule names a topic Mist does not document (a typo?)", "rule", r->name,
                             "file", r->file, "topic", name);
            r->topics[r->ntopics++] = brm_xstrdup(name);
        }
        lua_pop(L, 1);
    }
    return 1;
}

/* Pushes t[KEY] without metamethods: the rule's table is read outside the
 * sandbox's door, so no user code may run here. [-0, +1] */
static int rawfield(lua_State *L, int t, const char *key) {
    lua_pushstring(L, key);
    return lua_rawget(L, t);
}

/* An optional handler KEY of the rule table at T, as a registry reference
 * in *REF. */
static int read_handler(lua_State *L, int t, const char *key, const char *args,
                        const struct rule *r, int *ref, struct brm_errors *errs) {
    int type = rawfield(L, t, key);
    if (type == LUA_TFUNCTION) {
        *ref = luaL_ref(L, LUA_REGISTRYINDEX);
        return 1;
    }
    lua_pop(L, 1);
    if (type == LUA_TNIL) return 1;
    brm_errors_addf(errs, r->file, 0, "%s: expected a function %s", key, args);
    return 0;
}

/* The rule's `late`: "fire" (always), "drop" (any late timer), or a
 * duration: timers late by more than it are dropped. */
static int read_late(lua_State *L, int t, struct rule *r, struct brm_errors *errs) {
    int type = rawfield(L, t, "late"), ok = 1;
    const char *v = type == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    r->late = LATE_DEFAULT;
    if (type == LUA_TNUMBER && lua_tonumber(L, -1) >= 0)
        r->late = lua_tonumber(L, -1);
    else if (v && strcmp(v, "fire") == 0)
        r->late = -1;
    else if (v && strcmp(v, "drop") == 0)
        r->late = 0;
    else if (!(v && brm_parse_duration(v, &r->late) == 0) && type != LUA_TNIL)
        ok = 0, brm_errors_addf(errs, r->file, 0,
                                "late: expected \"fire\", \"drop\" or a duration (\"30m\")");
    lua_pop(L, 1);
    return ok;
}

/* The line KEY is set on in the rule file at PATH, or 0 (see lint.h). */
static int key_line(struct brm_engine *e, const char *path, const char *key) {
    struct brm_buf text;
    brm_buf_init(&text);
    int line = brm_snapshot_read(brm_sandbox_files(e->sb), path, MAX_RULE_FILE, &text) == 0
                   ? brm_lint_key_line(text.data ? text.data : "", text.len, key)
                   : 0;
    brm_buf_reset(&text);
    return line;
}

/* Reports an unknown key K of R's table, at its line, with the key it
 * likely meant or else the keys there are. */
static void unknown_key(struct brm_engine *e, const struct rule *r, const char *k,
                        struct brm_errors *errs) {
    char hint[160];
    brm_suggest(k, rule_keys, BRM_ARRAY_LEN(rule_keys), hint, sizeof(hint));
    if (!hint[0]) {
        size_t len = (size_t)snprintf(hint, sizeof(hint), " (expected");
        for (size_t i = 0; i < BRM_ARRAY_LEN(rule_keys) && len < sizeof(hint); i++)
            len += (size_t)snprintf(hint + len, sizeof(hint) - len, "%s %s", i ? "," : "",
                                    rule_keys[i]);
        if (len < sizeof(hint)) snprintf(hint + len, sizeof(hint) - len, ")");
    }
    brm_errors_addf(errs, r->file, key_line(e, r->path, k), "unknown key '%s' in the rule%s", k,
                    hint);
}

/* Checks the table a rule file returned (on top of the stack) and fills R. */
static int read_rule(struct brm_engine *e, struct rule *r, struct brm_errors *errs) {
    lua_State *L = brm_sandbox_state(e->sb);
    int t = lua_gettop(L), ok = 1;
    if (lua_type(L, t) != LUA_TTABLE) {
        brm_errors_addf(errs, r->file, 0,
                        "a rule must return a table with topics and on_event (it returned %s)",
                        luaL_typename(L, t));
        return 0;
    }
    lua_pushnil(L);
    while (lua_next(L, t)) {
        size_t i = 0;
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "";
        while (i < BRM_ARRAY_LEN(rule_keys) && strcmp(rule_keys[i], k) != 0) i++;
        if (i == BRM_ARRAY_LEN(rule_keys)) {
            unknown_key(e, r, k, errs);
            ok = 0;
        }
        lua_pop(L, 1);
    }
    if (rawfield(L, t, "name") == LUA_TSTRING) {
        free(r->name);
        r->name = brm_xstrdup(lua_tostring(L, -1));
    } else if (!lua_isnil(L, -1)) {
        brm_errors_addf(errs, r->file, 0, "name: expected a string");
        ok = 0;
    }
    if (strlen(r->name) == 0 || strlen(r->name) > MAX_RULE_NAME || strchr(r->name, '\x1f')) {
        brm_errors_addf(errs, r->file, 0, "name: 1 to %d characters, no \\x1f", MAX_RULE_NAME);
        ok = 0;
    }
    lua_pop(L, 1);
    rawfield(L, t, "topics");
    ok &= read_topics(L, lua_gettop(L), r, errs);
    lua_pop(L, 1);
    if (rawfield(L, t, "where") == LUA_TTABLE) {
        if (check_where(L, lua_gettop(L), r->file, errs))
            r->where = luaL_ref(L, LUA_REGISTRYINDEX);
        else
            ok = 0, lua_pop(L, 1);
    } else {
        if (!lua_isnil(L, -1)) {
            brm_errors_addf(errs, r->file, 0, "where: expected a table");
            ok = 0;
        }
        lua_pop(L, 1);
    }
    if (rawfield(L, t, "on_event") == LUA_TFUNCTION) {
        r->fn = luaL_ref(L, LUA_REGISTRYINDEX);
    } else {
        brm_errors_addf(errs, r->file, 0, "on_event: expected a function (ev, ctx)");
        lua_pop(L, 1);
        ok = 0;
    }
    ok &= read_handler(L, t, "on_timer", "(key, data, ctx)", r, &r->on_timer, errs);
    ok &= read_handler(L, t, "on_group", "(key, items, ctx)", r, &r->on_group, errs);
    ok &= read_late(L, t, r, errs);
    return ok;
}

/* NAME with every byte but letters, digits, '.', '_' and '-' as %XX: keys
 * stay header-safe, and two names never give the same key. */
static char *key_name(const char *name) {
    struct brm_buf b;
    brm_buf_init(&b);
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            *p == '.' || *p == '_' || *p == '-')
            brm_buf_append(&b, p, 1);
        else
            brm_buf_printf(&b, "%%%02X", *p);
    }
    return b.data;
}

static void rule_metrics(struct rule *r) {
    r->runs = brm_metrics_counter("brume_rule_runs_total", "Rule calls.", "rule", r->name, NULL);
    r->errors = brm_metrics_counter("brume_rule_errors_total", "Rule calls that failed.", "rule",
                                    r->name, "reason", "error", NULL);
    r->budget = brm_metrics_counter("brume_rule_errors_total", "Rule calls that failed.", "rule",
                                    r->name, "reason", "budget", NULL);
    r->memory = brm_metrics_counter("brume_rule_errors_total", "Rule calls that failed.", "rule",
                                    r->name, "reason", "memory", NULL);
    r->seconds = brm_metrics_histogram("brume_rule_duration_seconds", "Time in one rule call.",
                                       "rule", r->name, NULL);
    static const char help[] = "Timers and digests that came due, by what became of them.";
    r->fired =
        brm_metrics_counter("brume_timers_total", help, "rule", r->name, "outcome", "fired", NULL);
    r->late_fired = brm_metrics_counter("brume_timers_total", help, "rule", r->name, "outcome",
                                        "fired_late", NULL);
    r->late_dropped = brm_metrics_counter("brume_timers_total", help, "rule", r->name, "outcome",
                                          "dropped_late", NULL);
}

static void load_rule(struct brm_engine *e, const char *fname, struct brm_errors *errs) {
    lua_State *L = brm_sandbox_state(e->sb);
    char *path = brm_path_join(e->cfg->rules_dir, fname);
    struct rule r = {
        .fn = LUA_NOREF, .where = LUA_NOREF, .on_timer = LUA_NOREF, .on_group = LUA_NOREF
    };
    struct brm_err err;
    r.file = brm_path_display(path);
    r.path = path;
    r.name = brm_xstrndup(fname, strlen(fname) - 4);
    int top = lua_gettop(L);
    if (brm_sandbox_loadfile(e->sb, path, r.file, &err) < 0 ||
        brm_sandbox_call(e->sb, 0, 1, &err) != BRM_CALL_OK) {
        /* A shipped script that refuses how the rule called it (a rule
         * builder: `return require "brume.holddown" { ... }`, a tail call,
         * so no line of the rule's is left) is the rule's error. */
        if (strncmp(err.file, "builtin/", 8) == 0)
            brm_errors_addf(errs, r.file, 0, "%s (raised at %s:%d)", err.msg, err.file, err.line);
        else
            brm_errors_add(errs, &err);
        goto fail;
    }
    if (!read_rule(e, &r, errs)) goto fail;
    for (size_t i = 0; i < e->nrules; i++) {
        if (strcmp(e->rules[i].name, r.name) == 0) {
            brm_errors_addf(errs, r.file, 0, "another rule is named '%s' (%s)", r.name,
                            e->rules[i].file);
            goto fail;
        }
    }
    if (!e->quiet) rule_metrics(&r);
    r.key_name = key_name(r.name);
    struct brm_buf jn;
    brm_buf_init(&jn);
    brm_buf_json_string(&jn, r.name, strlen(r.name));
    r.json_name = jn.data;
    e->rules = brm_xrealloc(e->rules, (e->nrules + 1) * sizeof(*e->rules));
    e->rules[e->nrules++] = r; /* with PATH */
    lua_settop(L, top);
    return;
fail:
    for (size_t i = 0; i < r.ntopics; i++) free(r.topics[i]);
    free(r.topics);
    free(r.name);
    free(r.file);
    lua_settop(L, top);
    free(path);
}

/* Builds the topic -> rules index, keeping file-name order. */
static void index_topics(struct brm_engine *e) {
    for (size_t i = 0; i < e->nrules; i++) {
        struct rule *r = &e->rules[i];
        if (r->all) {
            e->all.rules = brm_xrealloc(e->all.rules, (e->all.n + 1) * sizeof(size_t));
            e->all.rules[e->all.n++] = i;
        }
        for (size_t j = 0; j < r->ntopics; j++) {
            size_t k = 0;
            while (k < e->ntopics && strcmp(e->topics[k].name, r->topics[j]) != 0) k++;
            if (k == e->ntopics) {
                e->topics = brm_xrealloc(e->topics, (e->ntopics + 1) * sizeof(*e->topics));
                e->topics[k] = (struct topic){ brm_xstrdup(r->topics[j]), NULL, 0 };
                e->ntopics++;
            }
        }
    }
    for (size_t k = 0; k < e->ntopics; k++) {
        struct topic *t = &e->topics[k];
        for (size_t i = 0; i < e->nrules; i++) {
            struct rule *r = &e->rules[i];
            int hit = r->all;
            for (size_t j = 0; j < r->ntopics && !hit; j++)
                hit = strcmp(r->topics[j], t->name) == 0;
            if (!hit) continue;
            t->rules = brm_xrealloc(t->rules, (t->n + 1) * sizeof(size_t));
            t->rules[t->n++] = i;
        }
    }
}

struct brm_engine *brm_engine_new(const struct brm_config *cfg, struct brm_errors *errs) {
    return brm_engine_build(cfg, NULL, errs);
}

static struct brm_engine *build(const struct brm_config *cfg, struct brm_snapshot *files,
                                struct brm_errors *errs, int quiet) {
    struct brm_engine *e = brm_xcalloc(1, sizeof(*e));
    size_t errs_before = brm_errors_count(errs);
    e->quiet = quiet;
    e->cfg = brm_config_ref(cfg);
    struct brm_sandbox_opts o = {
        .instructions = cfg->instructions,
        .time_limit = cfg->time_limit,
        .memory = cfg->memory,
        .scripts_dir = cfg->scripts_dir,
        .rules_dir = cfg->rules_dir,
        .files = files,
    };
    e->sb = brm_sandbox_new(&o);
    e->api = brm_api_open(e->sb, cfg);
    struct brm_err err;
    if (brm_api_load_targets(e->api, &err) < 0) brm_errors_add(errs, &err);
    lua_newtable(brm_sandbox_state(e->sb));
    e->queue = luaL_ref(brm_sandbox_state(e->sb), LUA_REGISTRYINDEX);
    char **names = NULL;
    size_t n = 0;
    if (list_rules(brm_sandbox_files(e->sb), cfg->rules_dir, &names, &n) < 0) {
        char *display = brm_path_display(cfg->rules_dir);
        brm_errors_addf(errs, display, 0, "cannot read the rules folder");
        free(display);
    }
    for (size_t i = 0; i < n; i++) {
        load_rule(e, names[i], errs);
        free(names[i]);
    }
    free(names);
    if (brm_errors_count(errs) > errs_before) {
        brm_engine_free(e);
        return NULL;
    }
    index_topics(e);
    return e;
}

struct brm_engine *brm_engine_build(const struct brm_config *cfg, struct brm_snapshot *files,
                                    struct brm_errors *errs) {
    return build(cfg, files, errs, 0);
}

struct brm_engine *brm_engine_build_dry(const struct brm_config *cfg, struct brm_snapshot *files,
                                        struct brm_errors *errs) {
    struct brm_engine *e = build(cfg, files, errs, 1);
    if (e) brm_engine_set_dry_run(e, 1);
    return e;
}

void brm_engine_free(struct brm_engine *e) {
    if (!e) return;
    for (size_t i = 0; i < e->nrules; i++) {
        struct rule *r = &e->rules[i];
        for (size_t j = 0; j < r->ntopics; j++) free(r->topics[j]);
        free(r->topics);
        free(r->name);
        free(r->key_name);
        free(r->json_name);
        free(r->file);
        free(r->path);
    }
    free(e->rules);
    for (size_t k = 0; k < e->ntopics; k++) {
        free(e->topics[k].name);
        free(e->topics[k].rules);
    }
    free(e->topics);
    free(e->all.rules);
    brm_sandbox_free(e->sb);
    brm_fingerprint_free(e->fp);
    brm_config_free(e->cfg);
    free(e);
}

const struct brm_config *brm_engine_config(const struct brm_engine *e) {
    return e->cfg;
}

lua_State *brm_engine_state(struct brm_engine *e) {
    return brm_sandbox_state(e->sb);
}

int brm_engine_decode(struct brm_engine *e, const char *body, size_t len, struct brm_envelope *env,
                      struct brm_err *err) {
    size_t limit = brm_sandbox_memory_limit(e->sb), used = brm_sandbox_memory(e->sb);
    if (limit) brm_sandbox_set_ceiling(e->sb, used + limit / 2 < limit ? used + limit / 2 : limit);
    int rc = brm_json_envelope(brm_sandbox_state(e->sb), body, len, env, err);
    brm_sandbox_set_ceiling(e->sb, 0);
    if (rc == -2)
        brm_err_set(err, "the decoded body would take more than half of the rules' memory (%zu MB)",
                    limit >> 20);
    return rc;
}

const char *brm_engine_rule_name(const struct brm_engine *e, size_t i) {
    return e->rules[i].name;
}

size_t brm_engine_rule_count(const struct brm_engine *e) {
    return e->nrules;
}

struct lint {
    const struct brm_config *cfg;
    const struct rule *rule;
    struct brm_errors *warnings;
};

/* A brume.send("NAME", ...) of a rule: NAME should be a target. */
static void lint_send(void *arg, const char *name, size_t len, int line) {
    struct lint *l = arg;
    const struct brm_config *c = l->cfg;
    char target[128], hint[160];
    if (len >= sizeof(target)) return; /* no target has a name that long */
    memcpy(target, name, len);
    target[len] = '\0';
    if (strcmp(target, BRM_HTTP_TARGET) == 0) {
        brm_errors_addf(l->warnings, l->rule->file, line,
                        "brume.send to '%s': that is brume.http's own target", target);
        return;
    }
    if (brm_config_target(c, target)) return;
    const char **names = brm_xcalloc(c->ntargets + 1, sizeof(char *));
    size_t n = 0;
    for (size_t i = 0; i < c->ntargets; i++)
        if (strcmp(c->targets[i].name, BRM_HTTP_TARGET) != 0) names[n++] = c->targets[i].name;
    brm_suggest(target, names, n, hint, sizeof(hint));
    free(names);
    brm_errors_addf(l->warnings, l->rule->file, line, "brume.send to '%s': no such target%s",
                    target, hint);
}

void brm_engine_lint(struct brm_engine *e, struct brm_errors *warnings) {
    struct brm_buf text;
    brm_buf_init(&text);
    for (size_t i = 0; i < e->nrules; i++) {
        struct lint l = { e->cfg, &e->rules[i], warnings };
        text.len = 0;
        if (brm_snapshot_read(brm_sandbox_files(e->sb), e->rules[i].path, MAX_RULE_FILE, &text) !=
            0)
            continue;
        const char *t = text.data ? text.data : "";
        brm_lint_sends(t, text.len, lint_send, &l);
        /* A timer or digest with nothing to run when it comes due is
         * dropped then: say so now. */
        int line;
        if (e->rules[i].on_timer == LUA_NOREF &&
            (line = brm_lint_call_line(t, text.len, "timer", "set")))
            brm_errors_addf(warnings, e->rules[i].file, line,
                            "brume.timer.set in a rule without on_timer: its timers will be "
                            "dropped when they come due");
        if (e->rules[i].on_group == LUA_NOREF &&
            (line = brm_lint_call_line(t, text.len, "group", "add")))
            brm_errors_addf(warnings, e->rules[i].file, line,
                            "brume.group.add in a rule without on_group: its digests will be "
                            "dropped when they close");
    }
    brm_buf_reset(&text);
}

void brm_engine_describe(const struct brm_engine *e, struct brm_buf *out) {
    brm_buf_puts(out, "[");
    for (size_t i = 0; i < e->nrules; i++) {
        const struct rule *r = &e->rules[i];
        brm_buf_printf(out, "%s{\"name\":%s,\"file\":", i ? "," : "", r->json_name);
        brm_buf_json_string(out, r->file, strlen(r->file));
        brm_buf_puts(out, ",\"topics\":[");
        if (r->all) brm_buf_puts(out, "\"*\"");
        for (size_t j = 0; j < r->ntopics; j++) {
            if (j || r->all) brm_buf_puts(out, ",");
            brm_buf_json_string(out, r->topics[j], strlen(r->topics[j]));
        }
        brm_buf_printf(out, "],\"where\":%s}", r->where != LUA_NOREF ? "true" : "false");
    }
    brm_buf_puts(out, "]");
}

void brm_engine_set_dry_run(struct brm_engine *e, int on) {
    brm_api_set_dry_run(e->api, on);
}

void brm_engine_set_payload(struct brm_engine *e, const char *file) {
    e->payload = file;
}

void brm_engine_set_state(struct brm_engine *e, struct brm_state *state) {
    e->state = state;
    brm_api_set_state(e->api, state);
}

void brm_engine_set_cancel(struct brm_engine *e, const _Atomic int *flag) {
    brm_sandbox_set_cancel(e->sb, flag);
}

int brm_engine_exhausted(const struct brm_engine *e) {
    return e->exhausted;
}

size_t brm_engine_memory(const struct brm_engine *e) {
    return brm_sandbox_memory(e->sb);
}

/* ---- dispatch ----------------------------------------------------------- */

static const struct topic *find_topic(const struct brm_engine *e, const char *name) {
    for (size_t k = 0; k < e->ntopics; k++)
        if (strcmp(e->topics[k].name, name) == 0) return &e->topics[k];
    return &e->all;
}

/* 1 when every field of the where table at W equals (one of) its value(s)
 * in the event at EV. Plain table reads: no user code runs. */
static int where_matches(lua_State *L, int w, int ev) {
    lua_pushnil(L);
    while (lua_next(L, w)) {
        lua_pushvalue(L, -2);
        lua_rawget(L, ev);
        int hit = 0;
        if (lua_type(L, -2) == LUA_TTABLE) {
            size_t n = lua_rawlen(L, -2);
            for (size_t i = 1; i <= n && !hit; i++) {
                lua_rawgeti(L, -2, (lua_Integer)i);
                hit = lua_rawequal(L, -1, -2);
                lua_pop(L, 1);
            }
        } else {
            hit = lua_rawequal(L, -1, -2);
        }
        lua_pop(L, 2);
        if (!hit) {
            lua_pop(L, 1);
            return 0;
        }
    }
    return 1;
}

/* The id logs and actions name an event by: ev.id, ev.audit_id, or
 * "topic#index" when it has neither. Returns 1 when the event has an id of
 * its own. */
static int event_id(lua_State *L, int ev, const char *topic, size_t index, char *out) {
    static const char *const fields[] = { "id", "audit_id" };
    for (size_t i = 0; i < BRM_ARRAY_LEN(fields); i++) {
        lua_pushstring(L, fields[i]);
        if (lua_type(L, ev) == LUA_TTABLE && lua_rawget(L, ev) == LUA_TSTRING) {
            snprintf(out, MAX_EVENT_ID, "%s", lua_tostring(L, -1));
            lua_pop(L, 1);
            return 1;
        }
        lua_pop(L, 1);
    }
    snprintf(out, MAX_EVENT_ID, "%s#%zu", topic, index);
    return 0;
}

/* PAYLOAD: the payload file the event came from (brume test), or NULL. */
static void log_failure(struct rule *r, const struct brm_scope *s, enum brm_call_status st,
                        const struct brm_err *err, const char *payload) {
    static const char *const reasons[] = { "ok", "error", "budget", "memory", "aborted" };
    uint64_t now = brm_time_mono_ms();
    if (now - r->log_window >= FAILURE_WINDOW) {
        if (r->suppressed) {
            char n[32];
            snprintf(n, sizeof(n), "%u", r->suppressed);
            brm_log_error("rule failures not logged in the last window", "rule", r->name,
                          "suppressed", n);
        }
        r->log_window = now;
        r->logged = r->suppressed = 0;
    }
    if (r->logged >= FAILURE_LOGS) {
        r->suppressed++;
        return;
    }
    r->logged++;
    struct brm_err where = *err;
    char msg[1024], file[300] = "";
    if (!where.file[0]) /* a memory error has no line, but it has a rule */
        snprintf(where.file, sizeof(where.file), "%s", r->file);
    brm_err_format(&where, msg, sizeof(msg));
    if (where.line > 0)
        snprintf(file, sizeof(file), "%s:%d", where.file, where.line);
    else
        snprintf(file, sizeof(file), "%s", where.file);
    char request[32];
    snprintf(request, sizeof(request), "%llu", (unsigned long long)s->delivery);
    brm_log_error("rule failed", "rule", r->name, "file", file, "request", request, "event",
                  s->event_id, "topic", s->topic, "reason", reasons[st], "error", msg, "payload",
                  payload);
}

static void log_run(struct brm_run_log *log, const struct rule *r, const struct brm_scope *scope,
                    enum brm_call_status st, const struct brm_err *err);

/* Calls the function of rule R below its NARGS arguments on the stack
 * through the sandbox's door, in SCOPE; counts and logs how it went. */
static void call_rule(struct brm_engine *e, struct rule *r, int nargs, struct brm_scope *scope,
                      struct brm_dispatch_stats *stats) {
    lua_State *L = brm_sandbox_state(e->sb);
    struct brm_err err;
    scope->rule = r->name;
    scope->rule_key = r->key_name;
    scope->rule_sent = r->sent;
    brm_api_set_scope(e->api, scope);
    uint64_t t0 = brm_time_mono_ns();
    enum brm_call_status st = brm_sandbox_call(e->sb, nargs, 0, &err);
    if (!e->quiet) brm_histogram_observe(r->seconds, (double)(brm_time_mono_ns() - t0) / 1e9);
    brm_api_set_scope(e->api, NULL);
    r->sent = scope->rule_sent;
    if (*scope->busy) return;
    if (!e->quiet) brm_counter_add(r->runs, 1);
    stats->runs++;
    if (stats->log) log_run(stats->log, r, scope, st, &err);
    if (st == BRM_CALL_OK) return;
    stats->errors++;
    if (!e->quiet) {
        brm_counter_add(st == BRM_CALL_BUDGET   ? r->budget
                        : st == BRM_CALL_MEMORY ? r->memory
                                                : r->errors,
                        1);
        log_failure(r, scope, st, &err, e->payload);
    }
    if (st == BRM_CALL_MEMORY) {
        /* Collect what the failed call left; if the VM is still nearly
         * full, something holds on to it and only a fresh VM helps. */
        lua_gc(L, LUA_GCCOLLECT);
        size_t limit = brm_sandbox_memory_limit(e->sb);
        if (limit && brm_sandbox_memory(e->sb) > limit / 10 * 9) e->exhausted = 1;
    }
}

/* ---- run log ------------------------------------------------------------ */

void brm_run_log_end(struct brm_run_log *log) {
    if (log->more) {
        brm_buf_printf(&log->text, "%s{\"more\":%zu}", log->text.len ? "," : "[", log->more);
        log->more = 0;
    }
    if (log->text.len) brm_buf_puts(&log->text, "]");
}

void brm_run_log_clear(struct brm_run_log *log) {
    log->text.len = 0;
    if (log->text.data) log->text.data[0] = '\0';
    log->more = 0;
}

static void put_index(struct brm_buf *b, size_t v) {
    char digits[24];
    size_t n = 0;
    do digits[sizeof(digits) - ++n] = (char)('0' + v % 10);
    while ((v /= 10) && n < sizeof(digits));
    brm_buf_append(b, digits + sizeof(digits) - n, n);
}

/* Notes rule R's call on the event of SCOPE: compact when it went well on
 * a posted event (the common case costs a few bytes and no formatting). */
static void log_run(struct brm_run_log *log, const struct rule *r, const struct brm_scope *scope,
                    enum brm_call_status st, const struct brm_err *err) {
    static const char *const statuses[] = { "ok", "error", "budget", "memory" };
    struct brm_buf *b = &log->text;
    if (b->len >= BRM_RUN_LOG_MAX) {
        log->more++;
        return;
    }
    brm_buf_puts(b, b->len ? "," : "[");
    if (st == BRM_CALL_OK && scope->depth == 0) {
        brm_buf_puts(b, "[");
        put_index(b, scope->index);
        brm_buf_puts(b, ",");
        brm_buf_puts(b, r->json_name);
        brm_buf_puts(b, "]");
        return;
    }
    brm_buf_printf(b, "{\"i\":%zu,\"rule\":%s", scope->index, r->json_name);
    if (scope->depth > 0) {
        brm_buf_puts(b, ",\"topic\":");
        brm_buf_json_string(b, scope->topic, strlen(scope->topic));
    }
    if (st != BRM_CALL_OK) {
        char at[300];
        const char *file = err->file[0] ? err->file : r->file;
        if (err->line > 0)
            snprintf(at, sizeof(at), "%s:%d", file, err->line);
        else
            snprintf(at, sizeof(at), "%s", file);
        size_t n = strlen(err->msg);
        if (n > BRM_RUN_LOG_MSG) { /* cut, but not inside a UTF-8 sequence */
            n = BRM_RUN_LOG_MSG;
            while (n > 0 && ((unsigned char)err->msg[n] & 0xC0) == 0x80) n--;
        }
        brm_buf_printf(b, ",\"status\":\"%s\",\"at\":", statuses[st]);
        brm_buf_json_string(b, at, strlen(at));
        brm_buf_puts(b, ",\"msg\":");
        brm_buf_json_string(b, err->msg, n);
    }
    brm_buf_puts(b, "}");
}

/* Runs the rules of topic T on the event at EV with the ctx at CTX. */
static void run_rules(struct brm_engine *e, const struct topic *t, int ev, int ctx,
                      struct brm_scope *scope, struct brm_dispatch_stats *stats) {
    lua_State *L = brm_sandbox_state(e->sb);
    stats->events++;
    for (size_t i = 0; i < t->n; i++) {
        struct rule *r = &e->rules[t->rules[i]];
        if (r->where != LUA_NOREF) {
            lua_rawgeti(L, LUA_REGISTRYINDEX, r->where);
            int hit = where_matches(L, lua_gettop(L), ev);
            lua_pop(L, 1);
            if (!hit) continue;
        }
        /* ctx.rule: helpers that build rules (brume.holddown...) name
         * their state by it. Raw: a rule may have given ctx a metatable. */
        lua_pushliteral(L, "rule");
        lua_pushstring(L, r->name);
        lua_rawset(L, ctx);
        lua_rawgeti(L, LUA_REGISTRYINDEX, r->fn);
        lua_pushvalue(L, ev);
        lua_pushvalue(L, ctx);
        if (r->event != e->event) { /* its first call for this posted event */
            r->event = e->event;
            r->sent = 0;
        }
        call_rule(e, r, 2, scope, stats);
        if (*scope->busy) return; /* not a failure: the body runs again later */
    }
}

/* Pushes ctx for event INDEX: the envelope's fields other than topic and
 * events, then topic, source, received_at, delivery, index, and backfilled
 * (true, for a body taken from Mist's delivery log). [-0, +1] */
static void push_ctx(lua_State *L, int envelope, const char *topic, const struct brm_batch *b,
                     size_t index) {
    lua_createtable(L, 0, 6);
    int ctx = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, envelope)) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
        if (k && strcmp(k, "topic") != 0 && strcmp(k, "events") != 0) {
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_rawset(L, ctx);
        } else {
            lua_pop(L, 1);
        }
    }
    lua_pushstring(L, topic);
    lua_setfield(L, ctx, "topic");
    lua_pushstring(L, b->source ? b->source : "");
    lua_setfield(L, ctx, "source");
    lua_pushnumber(L, b->received_at);
    lua_setfield(L, ctx, "received_at");
    lua_pushinteger(L, (lua_Integer)b->delivery);
    lua_setfield(L, ctx, "delivery");
    lua_pushinteger(L, (lua_Integer)index);
    lua_setfield(L, ctx, "index");
    if (b->backfilled) {
        lua_pushboolean(L, 1);
        lua_setfield(L, ctx, "backfilled");
    }
}

/* Empties the queue brume.emit fills. */
static void clear_emitted(struct brm_engine *e) {
    lua_State *L = brm_sandbox_state(e->sb);
    lua_rawgeti(L, LUA_REGISTRYINDEX, e->queue);
    for (lua_Integer q = (lua_Integer)lua_rawlen(L, -1); q > 0; q--) {
        lua_pushnil(L);
        lua_rawseti(L, -2, q);
    }
    lua_pop(L, 1);
}

/* Runs what the rules emitted for one posted event, oldest first; what
 * those rules emit joins the end of the queue. */
static void run_emitted(struct brm_engine *e, int ctx, struct brm_scope *parent,
                        struct brm_dispatch_stats *stats) {
    lua_State *L = brm_sandbox_state(e->sb);
    lua_rawgeti(L, LUA_REGISTRYINDEX, e->queue);
    int queue = lua_gettop(L);
    for (lua_Integer q = 1; q <= (lua_Integer)lua_rawlen(L, queue); q++) {
        lua_rawgeti(L, queue, q);
        int item = lua_gettop(L);
        lua_rawgeti(L, item, 1); /* topic */
        lua_rawgeti(L, item, 2); /* event */
        lua_rawgeti(L, item, 3); /* depth */
        const char *topic = lua_tostring(L, item + 1);
        char id[MAX_EVENT_ID];
        event_id(L, item + 2, topic, parent->index, id);
        /* The emitted event's ctx: the parent's, under its new topic. */
        lua_createtable(L, 0, 8);
        lua_pushnil(L);
        while (lua_next(L, ctx)) {
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_rawset(L, -4);
        }
        lua_pushvalue(L, item + 1);
        lua_setfield(L, -2, "topic");
        lua_pushstring(L, parent->topic);
        lua_setfield(L, -2, "emitted_from");
        /* Messages count on with the posted event's: they share its index,
         * so their keys ("<delivery>:<index>:<n>") must not repeat its. */
        struct brm_scope s = *parent;
        s.topic = topic;
        s.event_id = id;
        s.depth = (int)lua_tointeger(L, item + 3);
        run_rules(e, find_topic(e, topic), item + 2, lua_gettop(L), &s, stats);
        parent->sent = s.sent;
        lua_settop(L, item - 1);
        if (*s.busy) break;
    }
    lua_pop(L, 1);
    clear_emitted(e); /* for the next posted event */
}

/* Mist sends a topic twice when it is set at org and at site level: 1 when
 * the event at EV was seen on its topic within the window (and marks it
 * seen), 0, or BRM_STATE_BUSY. */
static int seen_before(struct brm_engine *e, const struct brm_envelope *env,
                       const struct brm_batch *b, int ev) {
    const struct brm_dedupe_topic *t = brm_config_dedupe_fields(b->dedupe, env->name);
    char fp[BRM_FINGERPRINT_HEX];
    if (!e->fp) e->fp = brm_fingerprint_new();
    if (brm_fingerprint_event(e->fp, brm_sandbox_state(e->sb), ev,
                              t ? (const char *const *)t->fields : NULL, t ? t->nfields : 0,
                              fp) < 0)
        return 0; /* nested too deep to tell: it runs */
    return brm_state_seen(e->state, env->name, fp, b->dedupe->window, b->received_at, b->txn);
}

int brm_engine_dispatch(struct brm_engine *e, const struct brm_envelope *env,
                        const struct brm_batch *batch, struct brm_actions *sink,
                        struct brm_dispatch_stats *stats) {
    lua_State *L = brm_sandbox_state(e->sb);
    int envelope = lua_gettop(L);
    const struct topic *t = find_topic(e, env->name);
    int busy = 0, dedupe = batch->dedupe && batch->dedupe->window > 0 && e->state;
    struct brm_run_log *log = stats->log;
    memset(stats, 0, sizeof(*stats));
    stats->log = log;
    if (t->n == 0 && !dedupe) {
        lua_pop(L, 1);
        return 0;
    }
    luaL_checkstack(L, 16, NULL);
    lua_getfield(L, envelope, "events");
    int events = lua_gettop(L);
    for (size_t i = 1; i <= env->nevents && !busy; i++) {
        char id[MAX_EVENT_ID];
        size_t emitted = 0;
        lua_rawgeti(L, events, (lua_Integer)i);
        int ev = lua_gettop(L);
        event_id(L, ev, env->name, i, id);
        int seen = dedupe ? seen_before(e, env, batch, ev) : 0;
        if (seen == BRM_STATE_BUSY) {
            busy = 1;
            break;
        }
        if (seen == 1) {
            stats->duplicates++;
            lua_settop(L, events);
            continue;
        }
        e->event++; /* each rule's messages count afresh for it (keys) */
        push_ctx(L, envelope, env->name, batch, i);
        struct brm_scope scope = {
            .delivery = batch->delivery,
            .topic = env->name,
            .event_id = id,
            .index = i,
            .sink = sink,
            .emit_queue = e->queue,
            .emitted = &emitted,
            .txn = batch->txn,
            .busy = &busy,
        };
        run_rules(e, t, ev, ev + 1, &scope, stats);
        if (emitted && !busy) run_emitted(e, ev + 1, &scope, stats);
        lua_settop(L, events);
    }
    if (busy) clear_emitted(e); /* what the stopped event emitted must not run later */
    lua_settop(L, envelope - 1);
    return busy ? BRM_STATE_BUSY : 0;
}

/* ---- timers and digests ------------------------------------------------- */

static struct rule *find_rule(struct brm_engine *e, const char *name) {
    for (size_t i = 0; i < e->nrules; i++)
        if (strcmp(e->rules[i].name, name) == 0) return &e->rules[i];
    return NULL;
}

void brm_engine_set_clock(struct brm_engine *e, double (*clock)(void *arg), void *arg) {
    brm_api_set_clock(e->api, clock, arg);
}

int brm_engine_has_rule(const struct brm_engine *e, const char *name) {
    return find_rule((struct brm_engine *)e, name) != NULL;
}

/* Pushes JSON text S decoded, JSON null as nil. [-0, +1] */
static void push_decoded(lua_State *L, const char *s) {
    struct brm_err err;
    if (brm_json_decode(L, s, strlen(s), &err) < 0) {
        lua_pushnil(L);
    } else if (lua_islightuserdata(L, -1) && !lua_touserdata(L, -1)) {
        lua_pop(L, 1);
        lua_pushnil(L);
    }
}

/* Pushes the handler's arguments: key, data or items, ctx. [-0, +3] */
static void push_fired(lua_State *L, const struct brm_fired *f, const struct brm_batch *b) {
    lua_pushstring(L, f->key);
    if (f->kind == BRM_FIRED_TIMER) {
        push_decoded(L, f->data);
    } else {
        lua_createtable(L, (int)f->nitems, 0);
        for (size_t i = 0; i < f->nitems; i++) {
            push_decoded(L, f->items[i]);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
    }
    lua_createtable(L, 0, 10);
    lua_pushstring(L, f->key);
    lua_setfield(L, -2, "key");
    lua_pushstring(L, f->rule);
    lua_setfield(L, -2, "rule");
    lua_pushnumber(L, f->due);
    lua_setfield(L, -2, "due");
    double late = b->received_at - f->due;
    lua_pushnumber(L, late > 0 ? late : 0);
    lua_setfield(L, -2, "late");
    lua_pushnumber(L, b->received_at);
    lua_setfield(L, -2, "fired_at");
    lua_pushinteger(L, (lua_Integer)b->delivery);
    lua_setfield(L, -2, "delivery");
    lua_pushstring(L, f->kind == BRM_FIRED_TIMER ? "timer" : "group");
    lua_setfield(L, -2, "topic");
    if (f->kind == BRM_FIRED_GROUP) {
        lua_pushinteger(L, f->count);
        lua_setfield(L, -2, "count");
        lua_pushnumber(L, f->opened);
        lua_setfield(L, -2, "opened_at");
    }
}

int brm_engine_fire(struct brm_engine *e, const struct brm_fired *f, const struct brm_batch *batch,
                    struct brm_actions *sink, struct brm_dispatch_stats *stats,
                    enum brm_fire_outcome *outcome) {
    lua_State *L = brm_sandbox_state(e->sb);
    memset(stats, 0, sizeof(*stats));
    struct rule *r = find_rule(e, f->rule);
    int fn = !r ? LUA_NOREF : f->kind == BRM_FIRED_TIMER ? r->on_timer : r->on_group;
    if (!r || fn == LUA_NOREF) {
        *outcome = r ? BRM_FIRE_NO_HANDLER : BRM_FIRE_NO_RULE;
        return 0;
    }
    double late = batch->received_at - f->due;
    int is_late = late > LATE_SLACK;
    if (is_late && r->late >= 0 && late > r->late) {
        *outcome = BRM_FIRE_DROPPED_LATE;
        brm_counter_add(r->late_dropped, 1);
        return 0;
    }
    *outcome = BRM_FIRE_RAN;
    int busy = 0;
    char id[MAX_EVENT_ID];
    snprintf(id, sizeof(id), "%s", f->key);
    struct brm_scope scope = {
        .delivery = batch->delivery,
        .topic = f->kind == BRM_FIRED_TIMER ? "timer" : "group",
        .event_id = id,
        .index = 0,
        .sink = sink,
        .emit_queue = e->queue,
        .txn = batch->txn,
        .busy = &busy,
    };
    size_t emitted = 0;
    scope.emitted = &emitted;
    e->event++;
    r->event = e->event;
    r->sent = 0;
    luaL_checkstack(L, 8, NULL);
    int top = lua_gettop(L);
    push_fired(L, f, batch); /* key, data or items, ctx: kept for emitted events */
    lua_rawgeti(L, LUA_REGISTRYINDEX, fn);
    for (int i = 1; i <= 3; i++) lua_pushvalue(L, top + i);
    call_rule(e, r, 3, &scope, stats);
    if (emitted && !busy) run_emitted(e, top + 3, &scope, stats);
    if (busy) clear_emitted(e);
    lua_settop(L, top);
    if (busy) return BRM_STATE_BUSY;
    brm_counter_add(is_late ? r->late_fired : r->fired, 1);
    return 0;
}
