/* engine: rules load in file-name order and run on the events of their
 * topic; a failing rule is contained; the brume module works in a rule;
 * dedupe goes by the event's fingerprint or the source's fields; what the
 * rules' text shows (keys' lines, brume.send targets) is reported. */
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine.h"
#include "fingerprint.h"
#include "snapshot.h"
#include "state.h"
#include "intake.h"
#include "log.h"
#include "metrics.h"
#include "test.h"

static char dir[64];
static struct brm_config *cfg;

static void write_file(const char *rel, const char *text) {
    char *path = brm_xasprintf("%s/%s", dir, rel);
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
    free(path);
}

static void clear_rules(void) {
    char *cmd = brm_xasprintf("rm -rf %s/rules && mkdir -p %s/rules", dir, dir);
    CHECK_INT(system(cmd), 0);
    free(cmd);
}

/* Loads the engine; errors are formatted into ERRS_OUT (may be NULL). */
static struct brm_engine *engine(struct brm_buf *errs_out) {
    struct brm_errors errs = { 0 };
    struct brm_engine *e = brm_engine_new(cfg, &errs);
    if (e) brm_engine_set_dry_run(e, 1); /* actions carry their messages, to compare */
    for (size_t i = 0; i < errs.n && errs_out; i++) {
        char line[1024];
        brm_err_format(&errs.v[i], line, sizeof(line));
        const char *base = strstr(line, "rules/");
        brm_buf_printf(errs_out, "%s\n", base ? base : line);
    }
    if (!e && !errs_out)
        for (size_t i = 0; i < errs.n; i++) fprintf(stderr, "  %s\n", errs.v[i].msg);
    brm_errors_reset(&errs);
    return e;
}

/* Runs BODY; the messages sent are joined, one "rule>target>json" a line. */
static struct brm_dispatch_stats run(struct brm_engine *e, const char *body, struct brm_buf *out) {
    struct brm_actions a = { 0 };
    struct brm_dispatch_stats st = { 0 };
    struct brm_err err;
    struct brm_batch b = { "mist", 42, 1700000000.5, 0, NULL, 0 };
    out->len = 0;
    brm_buf_puts(out, "");
    int rc = brm_intake_run(e, body, strlen(body), &b, &a, NULL, &st, &err);
    CHECK_INT(rc, BRM_OK);
    for (size_t i = 0; i < a.n; i++)
        brm_buf_printf(out, "%s>%s>%s\n", a.v[i].rule, a.v[i].target, a.v[i].message);
    brm_actions_reset(&a);
    CHECK_INT(lua_gettop(brm_engine_state(e)), 0);
    return st;
}

#define ALARM(type) "{\"topic\":\"alarms\",\"events\":[{\"id\":\"a1\",\"type\":\"" type "\"}]}"

static void check_order_and_topics(void) {
    struct brm_buf out;
    brm_buf_init(&out);
    clear_rules();
    write_file("rules/20-second.lua", "return { topics = 'alarms', on_event = function(ev) "
                                      "brume.send('t', { n = 2 }) end }");
    write_file("rules/10-first.lua", "return { topics = { 'alarms' }, on_event = function(ev) "
                                     "brume.send('t', { n = 1 }) end }");
    write_file("rules/30-devices.lua",
               "return { name = 'devices', topics = { 'device_events' }, "
               "on_event = function(ev, ctx) brume.send('t', { topic = ctx.topic }) end }");
    write_file("rules/40-all.lua", "return { topics = '*', on_event = function(ev, ctx) "
                                   "brume.send('t', { all = ctx.topic }) end }");
    write_file("rules/README.md", "not a rule");
    write_file("rules/.hidden.lua", "syntax error here");
    struct brm_engine *e = engine(NULL);
    CHECK(e != NULL);
    if (!e) return;
    CHECK_INT(brm_engine_rule_count(e), 4);
    struct brm_dispatch_stats st = run(e, ALARM("x"), &out);
    CHECK_STR(out.data,
              "10-first>t>{\"n\":1}\n20-second>t>{\"n\":2}\n40-all>t>{\"all\":\"alarms\"}\n");
    CHECK_INT(st.events, 1);
    CHECK_INT(st.runs, 3);
    /* '_' and '-' are the same in topic names, on either side. */
    run(e, "{\"topic\":\"device-events\",\"events\":[{}]}", &out);
    CHECK_STR(out.data, "devices>t>{\"topic\":\"device-events\"}\n"
                        "40-all>t>{\"all\":\"device-events\"}\n");
    run(e, "{\"topic\":\"device_events\",\"events\":[{}]}", &out);
    CHECK_HAS(out.data, "devices>t>");
    /* A topic no rule names reaches the "*" rules only. */
    run(e, "{\"topic\":\"brand-new\",\"events\":[{},{}]}", &out);
    CHECK_STR(out.data, "40-all>t>{\"all\":\"brand-new\"}\n40-all>t>{\"all\":\"brand-new\"}\n");
    run(e, "{\"topic\":\"alarms\",\"events\":[]}", &out);
    CHECK_STR(out.data, "");
    brm_engine_free(e);
    brm_buf_reset(&out);
}

static void check_where_and_ctx(void) {
    struct brm_buf out;
    brm_buf_init(&out);
    clear_rules();
    write_file("rules/rogue.lua",
               "return { topics = 'alarms', where = { type = { 'rogue_ap', 'rogue-ap-detected' } },"
               " on_event = function(ev) brume.send('t', { type = ev.type }) end }");
    write_file("rules/count.lua",
               "return { topics = 'alarms', where = { count = 16, update = true },"
               " on_event = function(ev) brume.send('t', { count = ev.count }) end }");
    write_file("rules/ctx.lua",
               "return { topics = 'ping', on_event = function(ev, ctx) brume.send('t', {"
               " topic = ctx.topic, source = ctx.source, delivery = ctx.delivery,"
               " index = ctx.index, org = ctx.org_id, at = ctx.received_at,"
               " events = ctx.events }) end }");
    struct brm_engine *e = engine(NULL);
    CHECK(e != NULL);
    if (!e) return;
    run(e, ALARM("rogue_ap"), &out);
    CHECK_STR(out.data, "rogue>t>{\"type\":\"rogue_ap\"}\n");
    run(e, ALARM("rogue-ap-detected"), &out);
    CHECK_STR(out.data, "rogue>t>{\"type\":\"rogue-ap-detected\"}\n");
    run(e, ALARM("rogue_client"), &out);
    CHECK_STR(out.data, "");
    run(e,
        "{\"topic\":\"alarms\",\"events\":[{\"count\":16,\"update\":true},"
        "{\"count\":16},{\"count\":16.0,\"update\":true}]}",
        &out);
    CHECK_STR(out.data, "count>t>{\"count\":16}\ncount>t>{\"count\":16}\n");
    run(e, "{\"topic\":\"ping\",\"org_id\":\"o1\",\"events\":[{},{}]}", &out);
    /* JSON objects come out in hash order: look for each field. */
    CHECK_HAS(out.data, "\"index\":1");
    CHECK_HAS(out.data, "\"index\":2");
    CHECK_HAS(out.data, "\"org\":\"o1\"");
    CHECK_HAS(out.data, "\"topic\":\"ping\"");
    CHECK_HAS(out.data, "\"source\":\"mist\"");
    CHECK_HAS(out.data, "\"at\":1700000000.5");
    CHECK_HAS(out.data, "\"delivery\":42");
    CHECK(strstr(out.data, "\"events\"") == NULL);
    brm_engine_free(e);
    brm_buf_reset(&out);
}

static void check_failures(void) {
    struct brm_buf out;
    brm_buf_init(&out);
    clear_rules();
    write_file("rules/1-errors.lua",
               "return { topics = 'alarms', on_event = function(ev) error('boom') end }");
    write_file("rules/2-loops.lua",
               "return { topics = 'alarms', on_event = function(ev) while true do end end }");
    write_file("rules/3-eats.lua",
               "return { topics = 'alarms', on_event = function(ev) local t = {}"
               " for i = 1, 1e9 do t[i] = ('x'):rep(4096) .. i end end }");
    write_file("rules/4-nil.lua",
               "return { topics = 'alarms', on_event = function(ev) return ev.nope.deeper end }");
    write_file("rules/5-sends.lua",
               "return { topics = 'alarms', on_event = function(ev) brume.send('t', { id = ev.id })"
               " end }");
    write_file(
        "rules/6-bad-send.lua",
        "return { topics = 'alarms', on_event = function(ev) brume.send('nowhere', {}) end }");
    write_file("rules/7-too-many.lua", "return { topics = 'alarms', on_event = function(ev)"
                                       " for i = 1, 200 do brume.send('t', { i = i }) end end }");
    write_file("rules/8-bad-message.lua",
               "return { topics = 'alarms', on_event = function(ev) brume.send('t', { f = print })"
               " end }");
    struct brm_engine *e = engine(NULL);
    CHECK(e != NULL);
    if (!e) return;
    /* Every event still reaches the rule that works, and the VM goes on. */
    for (int i = 0; i < 3; i++) {
        struct brm_dispatch_stats st =
            run(e, "{\"topic\":\"alarms\",\"events\":[{\"id\":\"e1\"},{\"id\":\"e2\"}]}", &out);
        CHECK_INT(st.runs, 16);
        CHECK_INT(st.errors, 14);
        CHECK_HAS(out.data, "5-sends>t>{\"id\":\"e1\"}\n");
        CHECK_HAS(out.data, "5-sends>t>{\"id\":\"e2\"}\n");
        /* brume.send stopped at 100 messages for the event. */
        size_t n = 0;
        for (const char *p = out.data; (p = strstr(p, "7-too-many>")); p++) n++;
        CHECK_INT(n, 2 * BRM_MAX_ACTIONS_PER_EVENT); /* per rule, not shared */
    }
    CHECK(brm_engine_memory(e) < cfg->memory);
    brm_engine_free(e);
    brm_buf_reset(&out);
}

static void check_api(void) {
    struct brm_buf out;
    brm_buf_init(&out);
    clear_rules();
    write_file(
        "rules/api.lua",
        "local mist = require 'brume.mist'\n"
        "return { topics = 'audits', on_event = function(ev, ctx)\n"
        "  local after = brume.json.decode(ev.after)\n"
        "  local bad, msg = brume.json.decode('{')\n"
        "  brume.send('t', {\n"
        "    power = after.radio_config.band_24.power,\n"
        "    null = after.radio_config.band_24.power_min == brume.null,\n"
        "    bad = bad == nil and msg ~= nil,\n"
        "    hmac = brume.hmac_sha256('secret', '') ,\n"
        "    b64 = brume.base64.encode('foobar'),\n"
        "    back = brume.base64.decode('Zm9vYmFy'),\n"
        "    now = brume.now() > 1700000000,\n"
        "    json = brume.json.encode({ a = 1 }),\n"
        "    changes = #mist.audit_diff(ev),\n"
        "  })\n"
        "  brume.log.info('audit seen', { admin = ev.admin_name })\n"
        /* A __tostring that empties the fields and collects garbage
         * while brume.log holds their keys (found in review; ASan
         * saw the use after free). */
        "  local f = {}\n"
        "  for i = 1, 12 do f[('key%d_'):format(i) .. ('x'):rep(60)] = 'v' .. i end\n"
        "  f.zzz = setmetatable({}, { __tostring = function()\n"
        "    for k in pairs(f) do if k ~= 'zzz' then f[k] = nil end end\n"
        "    local j = {} for i = 1, 4000 do j[i % 100 + 1] = { i, tostring(i) .. 'g' } end\n"
        "    return 'boom' end })\n"
        "  brume.log.debug('fields', f)\n"
        "  print('printed', 1, nil)\n"
        "end }\n");
    write_file("rules/emit.lua",
               "return { topics = 'alarms', on_event = function(ev, ctx)\n"
               "  brume.emit('derived_things', { id = 'd-' .. ev.id, from = ctx.topic })\n"
               "end }\n");
    write_file("rules/derived.lua",
               "return { topics = 'derived-things', on_event = function(ev, ctx)\n"
               "  brume.send('t', { id = ev.id, from = ev.from, topic = ctx.topic,"
               " emitted_from = ctx.emitted_from })\n"
               "end }\n");
    write_file("rules/loop.lua", "return { topics = 'loop', on_event = function(ev, ctx)\n"
                                 "  brume.send('t', { depth = ev.depth })\n"
                                 "  brume.emit('loop', { depth = ev.depth + 1 })\n"
                                 "end }\n");
    struct brm_engine *e = engine(NULL);
    CHECK(e != NULL);
    if (!e) return;
    char path[512];
    snprintf(path, sizeof(path), "%s/mist/audits--update-site-settings-delivery-log.json",
             FIXTURES);
    struct brm_buf body;
    brm_buf_init(&body);
    brm_read_file(path, 1 << 20, &body);
    struct brm_dispatch_stats st = run(e, body.data, &out);
    CHECK_INT(st.errors, 0);
    CHECK_HAS(out.data, "\"power\":10");
    CHECK_HAS(out.data, "\"null\":true");
    CHECK_HAS(out.data, "\"bad\":true");
    CHECK_HAS(out.data,
              "\"hmac\":\"f9e66e179b6747ae54108f82f8ade8b3c25d76fd30afde6c395822c530196169\"");
    CHECK_HAS(out.data, "\"b64\":\"Zm9vYmFy\"");
    CHECK_HAS(out.data, "\"back\":\"foobar\"");
    CHECK_HAS(out.data, "\"now\":true");
    CHECK_HAS(out.data, "\"json\":\"{\\\"a\\\":1}\"");
    CHECK_HAS(out.data, "\"changes\":4"); /* power_min, power_max, power, preamble */
    brm_buf_reset(&body);

    /* A posted event's messages and its emitted events' have distinct keys,
     * made of the rule and its own count: another rule's coming or going
     * does not change them (a replay with new rules queues what is new). */
    {
        struct brm_actions a = { 0 };
        struct brm_err err;
        struct brm_batch b = { "mist", 7, 1.0, 0, NULL, 0 };
        const char *alarm = ALARM("x");
        write_file("rules/also.lua", "return { topics = 'alarms', on_event = function(ev)"
                                     " brume.send('t', { parent = true }) end }");
        struct brm_engine *e2 = engine(NULL);
        CHECK(e2 != NULL);
        if (e2) {
            CHECK_INT(brm_intake_run(e2, alarm, strlen(alarm), &b, &a, NULL, NULL, &err), BRM_OK);
            CHECK_INT(a.n, 2);
            if (a.n == 2) {
                CHECK_STR(a.v[0].key, "7:1:also:1");
                CHECK_STR(a.v[1].key, "7:1:derived:1");
            }
            brm_actions_reset(&a);
            brm_engine_free(e2);
        }
        char *also = brm_xasprintf("%s/rules/also.lua", dir);
        unlink(also);
        free(also);
        e2 = engine(NULL);
        CHECK(e2 != NULL);
        if (e2) {
            CHECK_INT(brm_intake_run(e2, alarm, strlen(alarm), &b, &a, NULL, NULL, &err), BRM_OK);
            CHECK_INT(a.n, 1);
            if (a.n == 1) CHECK_STR(a.v[0].key, "7:1:derived:1");
            brm_actions_reset(&a);
            brm_engine_free(e2);
        }
    }
    st = run(e, ALARM("x"), &out);
    CHECK_HAS(out.data, "derived>t>{");
    CHECK_HAS(out.data, "\"from\":\"alarms\"");
    CHECK_HAS(out.data, "\"id\":\"d-a1\"");
    CHECK_HAS(out.data, "\"topic\":\"derived-things\"");
    CHECK_HAS(out.data, "\"emitted_from\":\"alarms\"");
    CHECK_INT(st.events, 2);
    /* A rule that emits into its own topic stops at the depth limit. */
    st = run(e, "{\"topic\":\"loop\",\"events\":[{\"depth\":0}]}", &out);
    size_t n = 0;
    for (const char *p = out.data; (p = strstr(p, "loop>")); p++) n++;
    CHECK_INT(n, BRM_MAX_EMIT_DEPTH + 1);
    CHECK_INT(st.errors, 1);
    brm_engine_free(e);
    brm_buf_reset(&out);
}

static void check_bad_rules(void) {
    struct brm_buf errs;
    brm_buf_init(&errs);
    clear_rules();
    write_file("rules/a-syntax.lua", "return {\n  topics = 'alarms',\n  on_event = function(ev)\n"
                                     "    if then\n  end,\n}\n");
    write_file("rules/b-number.lua", "return 42");
    write_file("rules/c-typo.lua", "return { topic = 'alarms', on_event = function() end }");
    write_file("rules/d-no-fn.lua", "return { topics = 'alarms' }");
    write_file("rules/e-empty-topics.lua", "return { topics = {}, on_event = function() end }");
    write_file("rules/f-where.lua",
               "return { topics = 'x', where = { type = {} }, on_event = function() end }");
    write_file("rules/g-send-at-load.lua", "brume.send('t', {})\nreturn {}");
    write_file("rules/h-loop-at-load.lua", "while true do end");
    write_file("rules/i-dup.lua", "return { name = 'dup', topics = 'x', on_event = print }");
    write_file("rules/j-dup.lua", "return { name = 'dup', topics = 'x', on_event = print }");
    write_file("rules/k-requires.lua", "require 'missing.module'\nreturn {}");
    write_file("rules/l-onevent.lua",
               "return {\n  topics = 'alarms',\n  -- onevent = 1 (a comment)\n"
               "  onevent = function() end,\n}\n");
    write_file("rules/m-colour.lua", "local colour = 1\nreturn { topics = 'x', on_event = print,\n"
                                     "  [\"colour\"] = 'red' }");
    struct brm_engine *e = engine(&errs);
    CHECK(e == NULL);
    CHECK_HAS(errs.data, "rules/a-syntax.lua:4: unexpected symbol near 'then'\n");
    CHECK_HAS(errs.data, "rules/b-number.lua: a rule must return a table with topics and "
                         "on_event (it returned number)\n");
    CHECK_HAS(errs.data,
              "rules/c-typo.lua:1: unknown key 'topic' in the rule (did you mean 'topics'?)\n");
    CHECK_HAS(
        errs.data,
        "rules/l-onevent.lua:4: unknown key 'onevent' in the rule (did you mean 'on_event'?)\n");
    CHECK_HAS(errs.data, "rules/m-colour.lua:3: unknown key 'colour' in the rule (expected name, "
                         "topics, where, on_event");
    CHECK_HAS(errs.data, "rules/c-typo.lua: topics: expected a topic name");
    CHECK_HAS(errs.data, "rules/d-no-fn.lua: on_event: expected a function");
    CHECK_HAS(errs.data, "rules/e-empty-topics.lua: topics: expected");
    CHECK_HAS(errs.data, "rules/f-where.lua: where.type: expected");
    CHECK_HAS(errs.data, "rules/g-send-at-load.lua:1: brume.send can only be called while "
                         "handling an event\n");
    CHECK_HAS(errs.data, "rules/h-loop-at-load.lua:1: instruction budget exceeded");
    CHECK_HAS(errs.data, "rules/j-dup.lua: another rule is named 'dup'");
    CHECK_HAS(errs.data, "rules/k-requires.lua:1: module 'missing.module' not found");
    brm_buf_reset(&errs);
}

/* brume.send to a literal target the config lacks is a warning with its
 * line; names in comments and strings, and targets not written as a
 * literal, are not looked at. */
static void check_lint(void) {
    clear_rules();
    write_file("rules/sends.lua", "-- brume.send('in-a-comment', {})\n"
                                  "local s = \"brume.send('in-a-string', {})\"\n"
                                  "--[==[ brume.send('in-a-long-comment', {}) ]==]\n"
                                  "return { topics = 'alarms', on_event = function(ev)\n"
                                  "  brume.send('t', {})\n"
                                  "  brume.send(\"tt\", { text = [[brume.send('x', {})]] })\n"
                                  "  brume . send ( 'nowhere' , {} )\n"
                                  "  brume.send(ev.target, {})\n"
                                  "  brume.send('t' .. ev.n, {})\n"
                                  "  brume.send('http', {})\n"
                                  "end }\n");
    struct brm_engine *e = engine(NULL);
    CHECK(e != NULL);
    if (!e) return;
    struct brm_errors warnings = { 0 };
    brm_engine_lint(e, &warnings);
    struct brm_buf out;
    brm_buf_init(&out);
    brm_buf_puts(&out, "");
    for (size_t i = 0; i < warnings.n; i++) {
        char line[1024];
        brm_err_format(&warnings.v[i], line, sizeof(line));
        const char *base = strstr(line, "rules/");
        brm_buf_printf(&out, "%s\n", base ? base : line);
    }
    CHECK_STR(out.data,
              "rules/sends.lua:6: brume.send to 'tt': no such target (did you mean 't'?)\n"
              "rules/sends.lua:7: brume.send to 'nowhere': no such target\n"
              "rules/sends.lua:10: brume.send to 'http': that is brume.http's own target\n");
    brm_errors_reset(&warnings);
    brm_buf_reset(&out);
    brm_engine_free(e);
}

/* Runs BODY with dedupe D at time AT; returns the messages' count. */
static size_t run_deduped(struct brm_engine *e, const char *body, const struct brm_dedupe *d,
                          double at, struct brm_dispatch_stats *st) {
    struct brm_actions a = { 0 };
    struct brm_err err;
    struct brm_batch b = { "mist", 1, at, d, NULL, 0 };
    CHECK_INT(brm_intake_run(e, body, strlen(body), &b, &a, NULL, st, &err), BRM_OK);
    size_t n = a.n;
    brm_actions_reset(&a);
    return n;
}

/* The fingerprint of the first event of BODY, decoded in E's VM. */
static void fingerprint_of(struct brm_engine *e, const char *body, const char *const *fields,
                           size_t n, char out[BRM_FINGERPRINT_HEX]) {
    lua_State *L = brm_engine_state(e);
    struct brm_envelope env;
    struct brm_err err;
    struct brm_fingerprint *f = brm_fingerprint_new();
    out[0] = '\0';
    if (brm_engine_decode(e, body, strlen(body), &env, &err) == 0) {
        lua_getfield(L, -1, "events");
        lua_rawgeti(L, -1, 1);
        CHECK_INT(brm_fingerprint_event(f, L, -1, fields, n, out), 0);
        lua_pop(L, 3);
    }
    brm_fingerprint_free(f);
}

static void check_fingerprint(struct brm_engine *e) {
    char a[BRM_FINGERPRINT_HEX], b[BRM_FINGERPRINT_HEX];
    /* Key order, number spelling and string escapes do not count. */
    fingerprint_of(
        e, "{\"topic\":\"x\",\"events\":[{\"a\":1,\"b\":[1,2.5,{\"c\":null}],\"s\":\"\\u00e9\"}]}",
        NULL, 0, a);
    fingerprint_of(e,
                   "{\"topic\":\"x\",\"events\":[{\"s\":\"\xc3\xa9\",\"b\":[1.0,25e-1,{\"c\":null}]"
                   ",\"a\":1e0}]}",
                   NULL, 0, b);
    CHECK_INT(strlen(a), 32);
    CHECK_STR(a, b);
    /* What does count: values, types, array order, keys. */
    static const char *const others[] = {
        "{\"topic\":\"x\",\"events\":[{\"a\":2,\"b\":[1,2.5,{\"c\":null}],\"s\":\"\xc3\xa9\"}]}",
        "{\"topic\":\"x\",\"events\":[{\"a\":\"1\",\"b\":[1,2.5,{\"c\":null}],\"s\":\"\xc3\xa9\"}]"
        "}",
        "{\"topic\":\"x\",\"events\":[{\"a\":1,\"b\":[2.5,1,{\"c\":null}],\"s\":\"\xc3\xa9\"}]}",
        "{\"topic\":\"x\",\"events\":[{\"a\":1,\"b\":[1,2.5,{\"c\":false}],\"s\":\"\xc3\xa9\"}]}",
        "{\"topic\":\"x\",\"events\":[{\"a\":1,\"b\":[1,2.5,{\"d\":null}],\"s\":\"\xc3\xa9\"}]}",
        "{\"topic\":\"x\",\"events\":[{\"a\":1,\"b\":{\"1\":1,\"2\":2.5,\"3\":{\"c\":null}},"
        "\"s\":\"\xc3\xa9\"}]}",
        "{\"topic\":\"x\",\"events\":[{\"a\":1,\"b\":[1,2.5,{\"c\":null}]}]}",
    };
    for (size_t i = 0; i < BRM_ARRAY_LEN(others); i++) {
        fingerprint_of(e, others[i], NULL, 0, b);
        CHECK(strcmp(a, b) != 0);
    }
    /* Named fields: only they count, nested ones too; none there, the
     * whole event. */
    static const char *const fields[] = { "mac", "site.id" };
    fingerprint_of(e, "{\"topic\":\"x\",\"events\":[{\"mac\":\"m1\",\"site\":{\"id\":7},\"t\":1}]}",
                   fields, 2, a);
    fingerprint_of(e,
                   "{\"topic\":\"x\",\"events\":[{\"t\":2,\"site\":{\"id\":7.0},\"mac\":\"m1\"}]}",
                   fields, 2, b);
    CHECK_STR(a, b);
    fingerprint_of(e, "{\"topic\":\"x\",\"events\":[{\"mac\":\"m1\",\"site\":{\"id\":8}}]}", fields,
                   2, b);
    CHECK(strcmp(a, b) != 0);
    fingerprint_of(e, "{\"topic\":\"x\",\"events\":[{\"mac\":\"m1\"}]}", fields, 2, a);
    fingerprint_of(e, "{\"topic\":\"x\",\"events\":[{\"mac\":\"m1\",\"site\":\"s\"}]}", fields, 2,
                   b);
    CHECK_STR(a, b); /* site.id is missing from both */
    fingerprint_of(e, "{\"topic\":\"x\",\"events\":[{\"t\":1}]}", fields, 2, a);
    fingerprint_of(e, "{\"topic\":\"x\",\"events\":[{\"t\":1}]}", NULL, 0, b);
    CHECK_STR(a, b);
}

#define DEVICE_EVENT                                                                               \
    "{\"topic\":\"device-events\",\"events\":[{\"mac\":\"5c5b35000001\",\"type\":\"AP_"            \
    "RESTARTED\","                                                                                 \
    "\"timestamp\":1700000000,\"site_id\":\"s1\"}]}"
/* The same event, as the other copy might write it. */
#define DEVICE_EVENT_COPY                                                                          \
    "{\"events\":[{\"site_id\":\"s1\",\"timestamp\":1.7e9,\"type\":\"AP_RESTARTED\","              \
    "\"mac\":\"5c5b35000001\"}],\"topic\":\"device_events\"}"
#define LOCATION(x)                                                                                \
    "{\"topic\":\"location\",\"events\":[{\"id\":\"c-1\",\"mac\":\"aa\",\"x\":" x ",\"y\":2}]}"

static void check_dedupe(void) {
    clear_rules();
    write_file("rules/all.lua", "return { topics = '*', on_event = function(ev)"
                                " brume.send('t', { n = 1 }) end }");
    write_file("dedupe.lua",
               "sources = {\n"
               "  plain = { path = '/p', secret = 's', dedupe = '10m' },\n"
               "  named = { path = '/n', secret = 's', dedupe = { window = 600, fields = {\n"
               "    ['device_events'] = { 'mac', 'type' }, alarms = { 'id' } } } },\n"
               "}\n"
               "targets = { t = { kind = 'file', path = 'out.jsonl' } }\n");
    char *path = brm_xasprintf("%s/dedupe.lua", dir);
    struct brm_errors errs = { 0 };
    struct brm_config *dc = brm_config_load(path, brm_api_open_for_config, NULL, &errs);
    free(path);
    brm_errors_reset(&errs);
    struct brm_engine *e = engine(NULL);
    struct brm_state *state = brm_state_new();
    CHECK(dc && e);
    if (!dc || !e) goto done;
    check_fingerprint(e);
    brm_engine_set_state(e, state);
    const struct brm_dedupe *plain = &brm_config_source(dc, "plain")->dedupe;
    const struct brm_dedupe *named = &brm_config_source(dc, "named")->dedupe;
    double t0 = 1700000000;
    struct brm_dispatch_stats st = { 0 };

    /* Org and site copies of an event without id: it runs once, however
     * the copy is written. */
    CHECK_INT(run_deduped(e, DEVICE_EVENT, plain, t0, &st), 1);
    CHECK_INT(run_deduped(e, DEVICE_EVENT_COPY, plain, t0 + 1, &st), 0);
    CHECK_INT(st.duplicates, 1);
    CHECK_INT(run_deduped(e, DEVICE_EVENT, plain, t0 + 2, &st), 0);
    /* Another event of the device is not a copy. */
    CHECK_INT(run_deduped(e,
                          "{\"topic\":\"device-events\",\"events\":[{\"mac\":\"5c5b35000001\","
                          "\"type\":\"AP_CONFIGURED\",\"timestamp\":1700000000}]}",
                          plain, t0 + 3, &st),
              1);
    /* A client's position updates share its id: each one runs. */
    CHECK_INT(run_deduped(e, LOCATION("1.5"), plain, t0, &st), 1);
    CHECK_INT(run_deduped(e, LOCATION("3"), plain, t0 + 1, &st), 1);
    CHECK_INT(run_deduped(e, LOCATION("1.5"), plain, t0 + 2, &st), 0);
    /* The same event on another topic, or after the window, runs. */
    CHECK_INT(run_deduped(e,
                          "{\"topic\":\"zone\",\"events\":[{\"id\":\"c-1\",\"mac\":\"aa\","
                          "\"x\":1.5,\"y\":2}]}",
                          plain, t0 + 3, &st),
              1);
    CHECK_INT(run_deduped(e, DEVICE_EVENT, plain, t0 + 601, &st), 1);
    /* No dedupe: copies run. */
    CHECK_INT(run_deduped(e, DEVICE_EVENT, NULL, t0 + 602, &st), 1);

    /* Named fields: events alike in them are copies, whatever else differs. */
    CHECK_INT(run_deduped(e, DEVICE_EVENT, named, t0 + 1000, &st), 1);
    CHECK_INT(run_deduped(e,
                          "{\"topic\":\"device-events\",\"events\":[{\"type\":\"AP_RESTARTED\","
                          "\"mac\":\"5c5b35000001\",\"timestamp\":1700000099}]}",
                          named, t0 + 1001, &st),
              0);
    CHECK_INT(run_deduped(e, "{\"topic\":\"alarms\",\"events\":[{\"id\":\"A\",\"count\":1}]}",
                          named, t0 + 1000, &st),
              1);
    CHECK_INT(run_deduped(e,
                          "{\"topic\":\"alarms\",\"events\":[{\"id\":\"A\",\"count\":2},"
                          "{\"id\":\"B\"}]}",
                          named, t0 + 1001, &st),
              1);
    CHECK_INT(st.duplicates, 1);
    /* An alarm without id falls back to its fingerprint. */
    CHECK_INT(run_deduped(e, "{\"topic\":\"alarms\",\"events\":[{\"type\":\"x\",\"n\":1}]}", named,
                          t0 + 1000, &st),
              1);
    CHECK_INT(run_deduped(e, "{\"topic\":\"alarms\",\"events\":[{\"type\":\"x\",\"n\":2}]}", named,
                          t0 + 1001, &st),
              1);
    CHECK_INT(run_deduped(e, "{\"topic\":\"alarms\",\"events\":[{\"n\":1,\"type\":\"x\"}]}", named,
                          t0 + 1002, &st),
              0);
done:
    brm_engine_free(e);
    brm_state_free(state);
    brm_config_free(dc);
}

static void check_kept_memory(void) {
    /* A rule that keeps what it allocates fills the VM; the engine says so,
     * so the worker can swap in a fresh VM. */
    struct brm_buf out;
    brm_buf_init(&out);
    clear_rules();
    write_file("rules/hoard.lua", "local kept = {}\nreturn { topics = 'alarms', on_event = "
                                  "function(ev) for i = 1, 2000 do kept[#kept + 1] = "
                                  "('x'):rep(1024) .. #kept end end }");
    struct brm_engine *e = engine(NULL);
    CHECK(e != NULL);
    if (!e) return;
    for (int i = 0; i < 40 && !brm_engine_exhausted(e); i++) run(e, ALARM("x"), &out);
    CHECK(brm_engine_exhausted(e));
    brm_engine_free(e);
    brm_buf_reset(&out);
}

/* The engines of one rule set run the same code, whatever changes on disk
 * while they are built: they read through one snapshot. */
static void check_snapshot(void) {
    clear_rules();
    write_file("rules/v.lua", "return { topics = 'alarms', on_event = function(ev)"
                              " brume.send('t', { v = 1 }) end }");
    struct brm_snapshot *files = brm_snapshot_new();
    struct brm_errors errs = { 0 };
    struct brm_engine *a = brm_engine_build(cfg, files, &errs);
    write_file("rules/v.lua", "return { topics = 'alarms', on_event = function(ev)"
                              " brume.send('t', { v = 2 }) end }");
    write_file("rules/new.lua", "return { topics = 'alarms', on_event = function() end }");
    struct brm_engine *b = brm_engine_build(cfg, files, &errs);
    struct brm_engine *c = brm_engine_new(cfg, &errs); /* from disk */
    CHECK(a && b && c);
    if (a && b && c) {
        brm_engine_set_dry_run(b, 1);
        brm_engine_set_dry_run(c, 1);
        CHECK_INT(brm_engine_rule_count(b), 1); /* not new.lua */
        CHECK_INT(brm_engine_rule_count(c), 2);
        struct brm_buf out;
        brm_buf_init(&out);
        run(b, ALARM("s"), &out);
        CHECK_HAS(out.data, "\"v\":1");
        run(c, ALARM("s"), &out);
        CHECK_HAS(out.data, "\"v\":2");
        brm_buf_reset(&out);
    }
    brm_engine_free(a);
    brm_engine_free(b);
    brm_engine_free(c);
    brm_snapshot_free(files);
    brm_errors_reset(&errs);
    clear_rules();
}

/* The run log: compact for calls that went well, the failures with where
 * and why, emitted events with their topic, and a bound on its size. */
static void check_run_log(void) {
    clear_rules();
    write_file("rules/10-ok.lua", "return { topics = 'alarms', on_event = function(ev) end }");
    write_file("rules/20-fails.lua", "return { topics = 'alarms', on_event = function(ev)\n"
                                     "  if ev.type == 'boom' then error(('x'):rep(300)) end\n"
                                     "  if ev.type == 'loop' then while true do end end\n"
                                     "  if ev.type == 'emit' then brume.emit('derived', {}) end\n"
                                     "end }");
    write_file("rules/30-derived.lua", "return { name = 'on \"derived\"', topics = 'derived', "
                                       "on_event = function(ev) end }");
    struct brm_engine *e = engine(NULL);
    CHECK(e != NULL);
    if (!e) return;
    struct brm_run_log log = { 0 };
    struct brm_actions a = { 0 };
    struct brm_dispatch_stats st = { .log = &log };
    struct brm_err err;
    struct brm_batch b = { "mist", 42, 1700000000.5, 0, NULL, 0 };
    const char *body = "{\"topic\":\"alarms\",\"events\":[{\"type\":\"x\"},{\"type\":\"boom\"},"
                       "{\"type\":\"loop\"},{\"type\":\"emit\"}]}";
    CHECK_INT(brm_intake_run(e, body, strlen(body), &b, &a, NULL, &st, &err), BRM_OK);
    brm_run_log_end(&log);
    char cut[BRM_RUN_LOG_MSG + 1];
    memset(cut, 'x', BRM_RUN_LOG_MSG);
    cut[BRM_RUN_LOG_MSG] = '\0';
    char *want = brm_xasprintf(
        "[[1,\"10-ok\"],[1,\"20-fails\"],[2,\"10-ok\"],{\"i\":2,\"rule\":\"20-fails\",\"status\":"
        "\"error\",\"at\":\"%s/rules/20-fails.lua:2\",\"msg\":\"%s\"},[3,\"10-ok\"],{\"i\":3,"
        "\"rule\":\"20-fails\",\"status\":\"budget\",\"at\":\"%s/rules/20-fails.lua:3\",\"msg\":"
        "\"instruction budget exceeded (100000 instructions)\"},[4,\"10-ok\"],[4,\"20-fails\"],"
        "{\"i\":4,\"rule\":\"on \\\"derived\\\"\",\"topic\":\"derived\"}]",
        dir, cut, dir);
    CHECK_STR(log.text.data, want);
    CHECK_INT(st.runs, 9);
    CHECK_INT(st.errors, 2);
    free(want);
    /* Past its cap the log counts what it does not list. */
    struct brm_buf many;
    brm_buf_init(&many);
    brm_buf_puts(&many, "{\"topic\":\"alarms\",\"events\":[");
    for (int i = 0; i < 500; i++) brm_buf_puts(&many, i ? ",{}" : "{}");
    brm_buf_puts(&many, "]}");
    brm_run_log_clear(&log);
    CHECK_INT(brm_intake_run(e, many.data, many.len, &b, &a, NULL, &st, &err), BRM_OK);
    brm_run_log_end(&log);
    CHECK(log.text.len < BRM_RUN_LOG_MAX + 64);
    CHECK_HAS(log.text.data, "{\"more\":");
    CHECK(log.text.data[log.text.len - 1] == ']');
    /* A dry engine counts nothing into the daemon's metrics. */
    struct brm_buf before, after;
    brm_buf_init(&before);
    brm_buf_init(&after);
    write_file("rules/40-dry.lua", "return { name = 'only-dry', topics = 'alarms', "
                                   "on_event = function(ev) error('no') end }");
    struct brm_errors errs = { 0 };
    struct brm_snapshot *files = brm_snapshot_new();
    struct brm_engine *dry = brm_engine_build_dry(cfg, files, &errs);
    CHECK(dry != NULL);
    if (dry) {
        brm_run_log_clear(&log);
        CHECK_INT(brm_intake_run(dry, ALARM("x"), strlen(ALARM("x")), &b, &a, NULL, &st, &err),
                  BRM_OK);
        CHECK_INT(st.errors, 1);
        brm_metrics_render(&after);
        CHECK(strstr(after.data, "only-dry") == NULL);
        CHECK(a.n == 0);
        brm_engine_describe(dry, &before);
        CHECK_HAS(before.data, "{\"name\":\"only-dry\",\"file\":");
        CHECK_HAS(before.data, "\"topics\":[\"alarms\"],\"where\":false}]");
        /* The same set with an edited rule, never written to disk. */
        char *path = brm_xasprintf("%s/rules/40-dry.lua", dir);
        const char *edit = "return { name = 'edited', topics = '*', on_event = function() end }";
        struct brm_snapshot *with = brm_snapshot_with(files, path, edit, strlen(edit));
        struct brm_engine *ed = brm_engine_build_dry(cfg, with, &errs);
        CHECK(ed != NULL);
        if (ed) {
            before.len = 0;
            brm_engine_describe(ed, &before);
            CHECK_HAS(before.data, "\"edited\"");
            CHECK(strstr(before.data, "only-dry") == NULL);
        }
        struct brm_buf disk;
        brm_buf_init(&disk);
        CHECK_INT(brm_read_file(path, 1 << 20, &disk), 0);
        CHECK_HAS(disk.data, "only-dry");
        brm_buf_reset(&disk);
        brm_engine_free(ed);
        brm_snapshot_free(with);
        free(path);
        struct brm_engine *live = brm_engine_build(cfg, files, &errs); /* the same rules */
        after.len = 0;
        brm_metrics_render(&after);
        CHECK_HAS(after.data, "rule=\"only-dry\"");
        brm_engine_free(live);
    }
    brm_errors_reset(&errs);
    brm_engine_free(dry);
    brm_snapshot_free(files);
    brm_actions_reset(&a);
    brm_buf_reset(&log.text);
    brm_buf_reset(&many);
    brm_buf_reset(&before);
    brm_buf_reset(&after);
    brm_engine_free(e);
    clear_rules();
}

int main(void) {
    snprintf(dir, sizeof(dir), "/tmp/brume-engine-XXXXXX");
    CHECK(mkdtemp(dir) != NULL);
    brm_log_setup(BRM_LOG_DEBUG, BRM_LOG_LOGFMT);
    write_file("brume.lua", "sources = { mist = { path = '/mist', secret = 's' } }\n"
                            "targets = { t = { kind = 'file', path = 'out.jsonl' } }\n"
                            "limits = { instructions = 100000, memory = '8MB' }\n");
    char *path = brm_xasprintf("%s/brume.lua", dir);
    struct brm_errors errs = { 0 };
    cfg = brm_config_load(path, brm_api_open_for_config, NULL, &errs);
    free(path);
    CHECK(cfg != NULL);
    if (!cfg) return test_done();
    check_order_and_topics();
    check_where_and_ctx();
    check_failures();
    check_api();
    check_bad_rules();
    check_lint();
    check_dedupe();
    check_kept_memory();
    check_snapshot();
    check_run_log();
    brm_config_free(cfg);
    char *cmd = brm_xasprintf("rm -rf %s", dir);
    CHECK_INT(system(cmd), 0);
    free(cmd);
    return test_done();
}
