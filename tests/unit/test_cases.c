/* cases: clock tests fire timers and digests at their due times, in due
 * order, as the clock passes them; expectations match subsets of messages
 * and requests, in order; a mismatch is a readable diff; a bad case file
 * names its file:line. */
#include <stdlib.h>
#include <unistd.h>

#include "../../core/cases.c"
#include "api.h"
#include "log.h"
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

/* Runs case file REL (written with TEXT); its report in OUT, a bad case
 * file's error in ERR_OUT. Returns what brm_cases_run returned. */
static int run_case(const char *rel, const char *text, struct brm_buf *out, char *err_out,
                    size_t size) {
    write_file(rel, text);
    char *path = brm_xasprintf("%s/%s", dir, rel), *report = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&report, &len);
    struct brm_err err;
    brm_err_clear(&err);
    int rc = brm_cases_run(cfg, path, BRM_CASES_START, f, &err);
    fclose(f);
    out->len = 0;
    brm_buf_puts(out, report ? report : "");
    free(report);
    free(path);
    char msg[1024];
    brm_err_format(&err, msg, sizeof(msg));
    const char *base = strrchr(msg, '/'); /* the temporary folder varies */
    snprintf(err_out, size, "%s", rc < 0 ? (base ? base + 1 : msg) : "");
    return rc;
}

static void check_parse_time(void) {
    double t = 0;
    CHECK_INT(brm_cases_parse_time("2026-11-01T00:00:00Z", &t), 0);
    CHECK(t == 1793491200.0);
    CHECK_INT(brm_cases_parse_time("2026-11-01", &t), 0);
    CHECK(t == 1793491200.0);
    CHECK_INT(brm_cases_parse_time("2026-11-01T10:30Z", &t), 0);
    CHECK(t == 1793491200.0 + 37800);
    CHECK_INT(brm_cases_parse_time("2026-11-01 10:30:15.5", &t), 0);
    CHECK(t == 1793491200.0 + 37815.5);
    CHECK_INT(brm_cases_parse_time("1700000000", &t), 0);
    CHECK(t == 1700000000.0);
    static const char *const bad[] = {
        "",         "yesterday",       "2026-13-01", "2026-11-01T10", "2026-11-01T10:30Y",
        "2026-1-1", "2026-11-01T25:00"
    };
    for (size_t i = 0; i < BRM_ARRAY_LEN(bad); i++) CHECK_INT(brm_cases_parse_time(bad[i], &t), -1);
}

static void check_offsets(void) {
    static const struct {
        double s;
        const char *want;
    } cases[] = { { 0, "0s" },       { 90, "1m30s" }, { 3600, "1h" },
                  { 93600, "1d2h" }, { 1.5, "1.5s" }, { 86400 + 61, "1d1m1s" } };
    for (size_t i = 0; i < BRM_ARRAY_LEN(cases); i++) {
        char buf[32];
        format_offset(cases[i].s, buf, sizeof(buf));
        CHECK_STR(buf, cases[i].want);
    }
}

static void check_find_steps(void) {
    const char *text = "-- steps = { { not this } }\n"                                  /* 1 */
                       "local s = \"steps = { {\"\n"                                    /* 2 */
                       "--[[ { steps = { {\n"                                           /* 3 */
                       "]] return { start = 0, steps = {\n"                             /* 4 */
                       "  { at = '0s', payload = { topic = 'x', events = { {} } } },\n" /* 5 */
                       "  [[ { ]]\n"                                                    /* 6 */
                       "  {\n"                                                          /* 7 */
                       "    at = 60 },{ at = 61 },\n"                                   /* 8 */
                       "}, other = { steps = { { } } } }\n";                            /* 9 */
    struct run r = { 0 };
    int lines[8] = { 0 };
    find_steps(&r, text, strlen(text), lines, 8);
    CHECK_INT(r.steps_line, 4);
    CHECK_INT(lines[0], 5);
    CHECK_INT(lines[1], 7);
    CHECK_INT(lines[2], 8);
    CHECK_INT(lines[3], 0);
}

/* Rules with timers and a digest; each message says when it was sent. */
static void write_rules(void) {
    write_file("rules/timers.lua",
               "return { topics = 'alarms', on_event = function(ev, ctx)\n"
               "  if ev.cancel then brume.timer.cancel(ev.cancel) return end\n"
               "  brume.timer.set(ev.id, ev.delay, { n = ev.n })\n"
               "end, on_timer = function(key, data, ctx)\n"
               "  brume.send('t', { title = key, at = brume.now(), due = ctx.due, n = data.n })\n"
               "  if data.n == 1 then brume.timer.set('chained', 30, { n = 2 }) end\n"
               "end }\n");
    write_file("rules/digest.lua",
               "return { topics = 'audits', on_event = function(ev)\n"
               "  brume.group.add('d', '10m', ev.id)\n"
               "end, on_group = function(key, items, ctx)\n"
               "  brume.send('t', { title = 'digest', items = items, count = ctx.count,"
               " at = brume.now() })\n"
               "end }\n");
    write_file("rules/seen.lua", "return { topics = 'ping', on_event = function(ev, ctx)\n"
                                 "  brume.send('t', { title = 'ping ' .. ev.id,"
                                 " at = ctx.received_at, rule = ctx.rule })\n"
                                 "end }\n");
    write_file("rules/nohandler.lua",
               "return { topics = 'zone', on_event = function(ev) brume.timer.set('z', 5) end }\n");
    write_file("rules/loop.lua", "return { topics = 'minis', on_event = function(ev)\n"
                                 "  brume.timer.set('again', 0) end,\n"
                                 "  on_timer = function() brume.timer.set('again', 0) end }\n");
}

#define T0 "1767225600"

static void check_clock(void) {
    struct brm_buf out;
    char err[1024];
    brm_buf_init(&out);
    /* Timers fire at their own due times, in due order, ties by key;
     * one armed by a handler fires on the way too. */
    int rc = run_case(
        "clock.lua",
        "local function alarm(id, delay, n)\n"
        "  return { topic = 'alarms', events = { { id = id, delay = delay, n = n } } }\n"
        "end\n"
        "return { rules = 'timers', steps = {\n"
        "  { at = '0s', payload = { alarm('b', 60, 1), alarm('a', 60, 0), alarm('c', 300, 3) },\n"
        "    expect = {} },\n"
        "  { at = '10m', expect = {\n"
        "    { title = 'a', at = " T0 " + 60, due = " T0 " + 60, rule = 'timers', target = 't' },\n"
        "    { title = 'b', at = " T0 " + 60, n = 1 },\n"
        "    { title = 'chained', at = " T0 " + 90, n = 2 },\n"
        "    { title = 'c', at = " T0 " + 300 } } },\n"
        "  { at = '10m', payload = { alarm('d', 60), { topic = 'alarms', events = {\n"
        "    { id = 'e', cancel = 'd' } } } } },\n"
        "  { at = '1h', expect = {} },\n"
        "} }\n",
        &out, err, sizeof(err));
    CHECK_INT(rc, 0);
    if (rc) fputs(out.data, stderr);
    CHECK_HAS(out.data, "clock.lua: 4 steps, 4 messages\n");
    CHECK_STR(err, "");

    /* A digest closes when its window ends, with the clock at that time. */
    rc = run_case("digest.lua",
                  "local a = { topic = 'audits', events = { { id = 'x' }, { id = 'y' } } }\n"
                  "return { start = '2026-11-01T00:00:00Z', steps = {\n"
                  "  { at = 0, payload = a, expect = {} },\n"
                  "  { at = '9m', payload = { topic = 'audits', events = { { id = 'z' } } },\n"
                  "    expect = {} },\n"
                  "  { at = '11m', expect = { { title = 'digest', count = 3,\n"
                  "    items = { 'x', 'y', 'z' }, at = 1793491800 } } },\n"
                  "} }\n",
                  &out, err, sizeof(err));
    CHECK_INT(rc, 0);
    if (rc) fputs(out.data, stderr);
    CHECK_HAS(out.data, "digest.lua: 3 steps, 1 message\n");

    /* Dedupe follows the source's window on the simulated clock; ctx.rule
     * names the rule. */
    rc = run_case("dedupe.lua",
                  "local p = { topic = 'ping', events = { { id = 'p1' } } }\n"
                  "return { rules = { 'seen' }, steps = {\n"
                  "  { at = 0, payload = p, expect = { { title = 'ping p1', rule = 'seen' } } },\n"
                  "  { at = '9m', payload = p, expect = {} },\n"
                  "  { at = '11m', payload = p, expect = { { at = " T0 " + 660 } } },\n"
                  "} }\n",
                  &out, err, sizeof(err));
    CHECK_INT(rc, 0);
    if (rc) fputs(out.data, stderr);
    CHECK_HAS(out.data, "dedupe.lua: 3 steps, 2 messages\n");
    brm_buf_reset(&out);
}

static void check_diffs(void) {
    struct brm_buf out;
    char err[1024];
    brm_buf_init(&out);
    int rc = run_case(
        "diff.lua",
        "return { rules = 'seen', steps = {\n"
        "  { at = 0, payload = { topic = 'ping', events = { { id = 'p1' }, { id = 'p2' } } },\n"
        "    expect = { { title = 'ping p1', target = 'nope' } } },\n"
        "  { at = 30, name = 'the second', payload = { topic = 'ping', events = { { id = 'p3' }"
        " } },\n"
        "    expect = { { title = 'ping p3', request = { body = { title = 'x' } } },\n"
        "               { title = 'never' } } },\n"
        "  { at = 60, payload = { topic = 'ping', events = { { id = 'p4' } } } },\n"
        "} }\n",
        &out, err, sizeof(err));
    CHECK_INT(rc, 1);
    CHECK_HAS(out.data, "diff.lua:2: step 1 (at 0s)\n"
                        "  message 1: target: got \"t\", want \"nope\"\n"
                        "  message 2: not expected: rule seen, target t: {");
    CHECK_HAS(out.data, "  sent at this step:\n    seen -> t: {");
    CHECK_HAS(out.data, "diff.lua:4: step 2 (at 30s, the second)\n"
                        "  message 1: request.body.title: got \"ping p3\", want \"x\"\n"
                        "  message 2: not sent, want {\"title\":\"never\"}\n");
    CHECK_HAS(out.data, "FAIL ");
    CHECK_HAS(out.data, "diff.lua: 2 of 3 steps failed\n");
    CHECK(strstr(out.data, "step 3") == NULL); /* no expect: not checked */

    /* A timer whose rule has no handler, and a rule that fails, fail the step. */
    rc = run_case("nohandler.lua",
                  "return { rules = 'nohandler', steps = {\n"
                  "  { at = 0, payload = { topic = 'zone', events = { {} } }, expect = {} },\n"
                  "  { at = 10, expect = {} } } }\n",
                  &out, err, sizeof(err));
    CHECK_INT(rc, 1);
    CHECK_HAS(out.data, "step 2 (at 10s)\n  timer z of rule nohandler came due at 5s and was "
                        "dropped: the rule has no on_timer\n");
    rc = run_case("failing.lua",
                  "return { steps = { { at = 0, payload = { topic = 'alarms', events = {\n"
                  "  { id = 'x', delay = 'soon' } } }, expect = {} } } }\n",
                  &out, err, sizeof(err));
    CHECK_INT(rc, 1);
    CHECK_HAS(out.data, "  1 rule call failed (the log above says why)\n");

    /* A handler that arms its own timer with no delay is stopped. */
    rc = run_case("loop.lua",
                  "return { steps = { { at = 0, payload = { topic = 'minis', events = { {} } } },\n"
                  "  { at = 1 } } }\n",
                  &out, err, sizeof(err));
    CHECK_INT(rc, 1);
    CHECK_HAS(out.data, "100000 timers fired on the way to this step");
    brm_buf_reset(&out);
}

static void check_bad_files(void) {
    static const struct {
        const char *text, *want;
    } cases[] = {
        { "return { steps = {\n  { at = '0s' },\n  { at = '1m', expct = {} } } }\n",
          "bad.lua:3: step 2: unknown key 'expct' (at, name, source, payload, expect)" },
        { "return { steps = {\n  { at = '5m' },\n  { at = '1m' } } }\n",
          "bad.lua:3: step 2: at: 1m is before the previous step's (steps go forward in time)" },
        { "return { steps = {\n  { at = 'soon' } } }\n",
          "bad.lua:2: step 1: at: expected a time after the start (\"0s\", \"5m\", 90), not soon" },
        { "return { steps = {\n  { payload = {} } } }\n",
          "bad.lua:2: step 1: at: expected a time after the start (\"0s\", \"5m\", 90), not "
          "nothing" },
        { "return { steps = {\n  { at = 0, payload = { events = {} } } } }\n",
          "bad.lua:2: step 1: payload: a body needs a topic" },
        { "return { steps = {\n  { at = 0, payload = 'missing.json' } } }\n",
          "bad.lua:2: step 1: payload: missing.json: No such file or directory" },
        { "return { steps = {\n  { at = 0, payload = { topic = 'x', events = 3 } } } }\n",
          "bad.lua:2: step 1: payload: not a Mist webhook body: " },
        { "return { steps = {\n  { at = 0, expect = { 'title' } } } }\n",
          "bad.lua:2: step 1: expect: each entry is a table of a message's fields, not a string" },
        { "return { steps = {\n  { at = 0, source = 'other' } } }\n",
          "bad.lua:2: step 1: source: the config has no source other" },
        { "return {\n  stepz = {} }\n", "bad.lua:2: unknown setting 'stepz' (start, source, "
                                        "rules, steps)" },
        { "return { steps = {} }\n",
          "bad.lua:1: steps: expected a list of steps { at =, payload =, expect = }" },
        { "return { steps = { { at = 0 } },\n  start = 'monday' }\n",
          "bad.lua:2: start: 'monday' is not a time like \"2026-11-01T00:00:00Z\"" },
        { "local x = { rules = 1 }\nreturn { rules = 'ghost', steps = { { at = 0 } } }\n",
          "bad.lua:2: rules: the rules folder has no rule named ghost" },
        { "return 42\n", "bad.lua: a case file returns a table { steps = { ... } }, not a number" },
        { "return {\n  steps = { { at = 0 }\n",
          "bad.lua:3: '}' expected (to close '{' at line 2)" },
        { "local x = json.read('nope.json')\nreturn {}\n",
          "bad.lua:1: json.read: nope.json: No such file or directory" },
    };
    struct brm_buf out;
    char err[1024];
    brm_buf_init(&out);
    for (size_t i = 0; i < BRM_ARRAY_LEN(cases); i++) {
        int rc = run_case("bad.lua", cases[i].text, &out, err, sizeof(err));
        CHECK_INT(rc, -1);
        CHECK_HAS(err, cases[i].want);
    }
    /* json.read reads a fixture, relative to the case file. */
    write_file("p.json", "{\"topic\":\"ping\",\"events\":[{\"id\":\"from-file\"}]}");
    write_file("p2.json", "{\"topic\":\"ping\",\"events\":[{\"id\":\"other\"}]}");
    int rc = run_case("read.lua",
                      "local p = json.read('p.json')\n"
                      "p.events[2] = { id = 'added' }\n"
                      "return { rules = 'seen', steps = { { at = 0, payload = { p, 'p2.json' },\n"
                      "  expect = { { title = 'ping from-file' }, { title = 'ping added' },\n"
                      "             { title = 'ping other' } } } } }\n",
                      &out, err, sizeof(err));
    CHECK_INT(rc, 0);
    CHECK_STR(err, "");
    brm_buf_reset(&out);
}

int main(void) {
    snprintf(dir, sizeof(dir), "/tmp/brume-cases-XXXXXX");
    CHECK(mkdtemp(dir) != NULL);
    brm_log_setup(BRM_LOG_ERROR, BRM_LOG_LOGFMT);
    char *rules = brm_xasprintf("%s/rules", dir);
    brm_mkdirs(rules, 0700);
    free(rules);
    write_file("brume.lua",
               "sources = { mist = { path = '/mist', secret = 's', dedupe = '10m' } }\n"
               "targets = { t = { kind = 'webhook', url = 'http://127.0.0.1:9/' } }\n");
    write_rules();
    char *path = brm_xasprintf("%s/brume.lua", dir);
    struct brm_errors errs = { 0 };
    cfg = brm_config_load(path, brm_api_open_for_config, NULL, &errs);
    for (size_t i = 0; i < errs.n; i++) fprintf(stderr, "  %s\n", errs.v[i].msg);
    brm_errors_reset(&errs);
    free(path);
    CHECK(cfg != NULL);
    if (!cfg) return test_done();
    check_parse_time();
    check_offsets();
    check_find_steps();
    check_clock();
    check_diffs();
    check_bad_files();
    brm_config_free(cfg);
    char *cmd = brm_xasprintf("rm -rf %s", dir);
    CHECK_INT(system(cmd), 0);
    free(cmd);
    return test_done();
}
