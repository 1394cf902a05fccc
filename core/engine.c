#include "engine.h"

#include <dirent.h>
#include <pthread.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "sandbox.h"
#include "snapshot.h"

#define MAX_EVENT_ID  128
#define MAX_RULE_NAME 100 /* %-encoded in delivery keys, it must fit theirs */
/* A rule failing on every event would write a line per event: at most this
 * many lines per rule per window, then one line saying how many were not
 * written. The metrics count every failure. */
#define FAILURE_LOGS   10
#define FAILURE_WINDOW 10000 /* ms */

struct rule {
    char *name;
    char *key_name; /* NAME %-encoded, as it goes into delivery keys */
    char *file;     /* as shown in errors */
    int fn;         /* registry reference to on_event */
    int where;      /* registry reference to the where table, or LUA_NOREF */
    int all;        /* topics = "*" */
    char **topics;
    size_t ntopics;
    struct brm_counter *runs, *errors, *budget, *memory;
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
};

static const char *const rule_keys[] = { "name", "topics", "where", "on_event", "description" };

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
            brm_errors_addf(errs, r->file, 0,
                            "unknown key '%s' in the rule (expected name, topics, where, "
                            "on_event, description)",
                            k);
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
    if (strlen(r->name) == 0 || strlen(r->name) > MAX_RULE_NAME) {
        brm_errors_addf(errs, r->file, 0, "name: 1 to %d characters", MAX_RULE_NAME);
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
}

static void load_rule(struct brm_engine *e, const char *fname, struct brm_errors *errs) {
    lua_State *L = brm_sandbox_state(e->sb);
    char *path = brm_path_join(e->cfg->rules_dir, fname);
    struct rule r = { .fn = LUA_NOREF, .where = LUA_NOREF };
    struct brm_err err;
    r.file = brm_path_display(path);
    r.name = brm_xstrndup(fname, strlen(fname) - 4);
    int top = lua_gettop(L);
    if (brm_sandbox_loadfile(e->sb, path, r.file, &err) < 0 ||
        brm_sandbox_call(e->sb, 0, 1, &err) != BRM_CALL_OK) {
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
    e->rules[e->nrules++] = r;
    lua_settop(L, top);
    free(path);
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
    size_t errs_before = errs->n;
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
    if (errs->n > errs_before) {
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
    }
    free(e->rules);
    for (size_t k = 0; k < e->ntopics; k++) {
        free(e->topics[k].name);
        free(e->topics[k].rules);
    }
    free(e->topics);
    free(e->all.rules);
    brm_sandbox_free(e->sb);
    brm_config_free(e->cfg);
    free(e);
}

const struct brm_config *brm_engine_config(const struct brm_engine *e) {
    return e->cfg;
}

lua_State *brm_engine_state(struct brm_engine *e) {
    return brm_sandbox_state(e->sb);
}

size_t brm_engine_rule_count(const struct brm_engine *e) {
    return e->nrules;
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

void brm_engine_set_state(struct brm_engine *e, struct brm_state *state) {
    e->state = state;
    brm_api_set_state(e->api, state);
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
 * its own (what dedupe goes by). */
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

static void log_failure(struct rule *r, const struct brm_scope *s, enum brm_call_status st,
                        const struct brm_err *err) {
    static const char *const reasons[] = { "ok", "error", "budget", "memory" };
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
                  s->event_id, "topic", s->topic, "reason", reasons[st], "error", msg);
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
    struct brm_err err;
    stats->events++;
    for (size_t i = 0; i < t->n; i++) {
        struct rule *r = &e->rules[t->rules[i]];
        if (r->where != LUA_NOREF) {
            lua_rawgeti(L, LUA_REGISTRYINDEX, r->where);
            int hit = where_matches(L, lua_gettop(L), ev);
            lua_pop(L, 1);
            if (!hit) continue;
        }
        lua_rawgeti(L, LUA_REGISTRYINDEX, r->fn);
        lua_pushvalue(L, ev);
        lua_pushvalue(L, ctx);
        if (r->event != e->event) { /* its first call for this posted event */
            r->event = e->event;
            r->sent = 0;
        }
        scope->rule = r->name;
        scope->rule_key = r->key_name;
        scope->rule_sent = r->sent;
        brm_api_set_scope(e->api, scope);
        uint64_t t0 = brm_time_mono_ns();
        enum brm_call_status st = brm_sandbox_call(e->sb, 2, 0, &err);
        if (!e->quiet) brm_histogram_observe(r->seconds, (double)(brm_time_mono_ns() - t0) / 1e9);
        brm_api_set_scope(e->api, NULL);
        r->sent = scope->rule_sent;
        if (*scope->busy) return; /* not a failure: the body runs again later */
        if (!e->quiet) brm_counter_add(r->runs, 1);
        stats->runs++;
        if (stats->log) log_run(stats->log, r, scope, st, &err);
        if (st == BRM_CALL_OK) continue;
        stats->errors++;
        if (!e->quiet) {
            brm_counter_add(st == BRM_CALL_BUDGET   ? r->budget
                            : st == BRM_CALL_MEMORY ? r->memory
                                                    : r->errors,
                            1);
            log_failure(r, scope, st, &err);
        }
        if (st == BRM_CALL_MEMORY) {
            /* Collect what the failed call left; if the VM is still nearly
             * full, something holds on to it and only a fresh VM helps. */
            lua_gc(L, LUA_GCCOLLECT);
            size_t limit = brm_sandbox_memory_limit(e->sb);
            if (limit && brm_sandbox_memory(e->sb) > limit / 10 * 9) e->exhausted = 1;
        }
    }
}

/* Pushes ctx for event INDEX: the envelope's fields other than topic and
 * events, then topic, source, received_at, delivery and index. [-0, +1] */
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

int brm_engine_dispatch(struct brm_engine *e, const struct brm_envelope *env,
                        const struct brm_batch *batch, struct brm_actions *sink,
                        struct brm_dispatch_stats *stats) {
    lua_State *L = brm_sandbox_state(e->sb);
    int envelope = lua_gettop(L);
    const struct topic *t = find_topic(e, env->name);
    int busy = 0;
    struct brm_run_log *log = stats->log;
    memset(stats, 0, sizeof(*stats));
    stats->log = log;
    if (t->n == 0 && batch->dedupe <= 0) {
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
        int own_id = event_id(L, ev, env->name, i, id);
        /* Mist sends a topic twice when it is set at org and at site level:
         * an id already seen on the topic within the window is not run again. */
        int seen = own_id && batch->dedupe > 0 && e->state
                       ? brm_state_seen(e->state, env->name, id, batch->dedupe, batch->received_at,
                                        batch->txn)
                       : 0;
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
