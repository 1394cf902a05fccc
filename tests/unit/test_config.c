/* config: a good config loads with defaults and resolved paths; every kind
 * of mistake is reported with file:line, all of them at once. Each setting
 * type is tried with a good value, a wrong type, a bad value and its
 * limits; the rows themselves are checked (defaults within limits). The
 * .c is included for its table of settings. */
#include <math.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../core/config.c"
#include "api.h"
#include "test.h"

static char dir[64];

static char *write_config(const char *name, const char *text) {
    char *path = brm_xasprintf("%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
    return path;
}

static void make_dir(const char *name) {
    char *path = brm_xasprintf("%s/%s", dir, name);
    CHECK(mkdir(path, 0700) == 0);
    free(path);
}

/* Loads TEXT with the hook OPEN; returns the config or NULL, with the
 * errors formatted into one string (each "file:line: msg" on its own line)
 * in OUT. */
static struct brm_config *try_load_with(const char *text, brm_config_open_fn *open, void *arg,
                                        struct brm_buf *out) {
    char *path = write_config("brume.lua", text);
    struct brm_errors errs = { 0 };
    struct brm_config *c = brm_config_load(path, open, arg, &errs);
    out->len = 0;
    brm_buf_puts(out, "");
    for (size_t i = 0; i < errs.n; i++) {
        char line[1024];
        brm_err_format(&errs.v[i], line, sizeof(line));
        /* Drop the folder: the file is shown as written. */
        const char *base = strstr(line, "brume.lua");
        brm_buf_printf(out, "%s\n", base ? base : line);
    }
    CHECK(c != NULL || errs.n > 0);
    brm_errors_reset(&errs);
    free(path);
    return c;
}

/* Loads TEXT as brume does. */
static struct brm_config *try_load(const char *text, struct brm_buf *out) {
    return try_load_with(text, brm_api_open_for_config, NULL, out);
}

#define GOOD "sources = { mist = { path = '/mist', secret = 's' } }\n"

static void check_good(void) {
    struct brm_buf e;
    brm_buf_init(&e);
    setenv("BRUME_TEST_SECRET", "from-env", 1);
    char *secret_path = write_config("secret.txt", "from-file\n");
    free(secret_path);
    struct brm_config *c = try_load(
        "-- a full config\n"
        "listen = { '127.0.0.1:8080', '[::1]:8081',\n"
        "  { addr = ':8443', tls = { cert = 'tls/cert.pem', key = '/etc/k.pem' } } }\n"
        "admin = false\n"
        "watch = false\n"
        "workers = 3\n"
        "data_dir = 'state'\n"
        "rules = '/etc/brume/rules'\n"
        "limits = { instructions = 5000, memory = '16MB' }\n"
        "http = { header_timeout = '2s', body_timeout = 5, idle_timeout = '1m', "
        "max_connections = 10, max_unverified = '16MB' }\n"
        "log = { level = 'debug', format = 'json' }\n"
        "local base = '/mist'\n"
        "sources = {\n"
        "  mist = { path = base, secret = { env('BRUME_TEST_SECRET'), file('secret.txt') },\n"
        "           allow_sha1 = true, max_body = '2MB' },\n"
        "  lab = { path = '/lab', insecure = true },\n"
        "}\n"
        "targets = { secops = { kind = 'file', path = 'alerts.jsonl' } }\n",
        &e);
    CHECK_STR(e.data, "");
    CHECK(c != NULL);
    if (c) {
        CHECK_INT(c->nlisten, 3);
        CHECK_STR(c->listen[1].addr, "[::1]:8081");
        CHECK(c->listen[1].cert == NULL);
        CHECK_STR(c->listen[2].addr, ":8443");
        char *cert = brm_xasprintf("%s/tls/cert.pem", dir);
        CHECK_STR(c->listen[2].cert, cert); /* from the config's folder */
        free(cert);
        CHECK_STR(c->listen[2].key, "/etc/k.pem");
        CHECK(c->admin == NULL);
        CHECK(!c->watch);
        CHECK_INT(c->workers, 3);
        char *want = brm_xasprintf("%s/state", dir);
        CHECK_STR(c->data_dir, want);
        free(want);
        CHECK_STR(c->rules_dir, "/etc/brume/rules");
        CHECK_INT(c->instructions, 5000);
        CHECK_INT(c->memory, 16 << 20);
        CHECK(c->http.header_timeout == 2 && c->http.body_timeout == 5);
        CHECK(c->http.idle_timeout == 60 && c->http.max_connections == 10);
        CHECK_INT(c->http.max_unverified, 16 << 20);
        CHECK_INT(c->log_level, BRM_LOG_DEBUG);
        CHECK_INT(c->log_format, BRM_LOG_JSON);
        CHECK_INT(c->nsources, 2);
        const struct brm_source *s = brm_config_source(c, "mist");
        CHECK(s != NULL);
        if (s) {
            CHECK_STR(s->path, "/mist");
            CHECK_INT(s->nsecrets, 2);
            CHECK_STR(s->secrets[0], "from-env");
            CHECK_STR(s->secrets[1], "from-file"); /* the newline is not part of it */
            CHECK(s->allow_sha1 && !s->insecure);
            CHECK_INT(s->max_body, 2 << 20);
        }
        s = brm_config_source(c, "lab");
        CHECK(s && s->insecure && s->nsecrets == 0 && s->max_body == 1 << 20);
        const struct brm_target *t = brm_config_target(c, "secops");
        CHECK(t != NULL);
        if (t) {
            want = brm_xasprintf("%s/alerts.jsonl", dir);
            CHECK_STR(t->path, want);
            free(want);
        }
        CHECK(brm_config_target(c, "nope") == NULL);
    }
    brm_config_free(c);

    c = try_load(GOOD, &e);
    CHECK(c != NULL);
    if (c) { /* the defaults */
        CHECK_STR(c->listen[0].addr, "0.0.0.0:8080");
        CHECK_STR(c->admin, "127.0.0.1:9090");
        CHECK(c->admin_token == NULL && c->watch);
        CHECK(c->workers >= 1);
        CHECK_INT(c->instructions, 1000000);
        CHECK_INT(c->memory, 64 << 20);
        CHECK(c->http.header_timeout == 10);
        CHECK_INT(c->http.max_connections, 1024);
        CHECK_INT(c->http.max_unverified, 64 << 20);
    }
    brm_config_free(c);
    brm_buf_reset(&e);
}

static void check_errors(void) {
    struct brm_buf e;
    brm_buf_init(&e);
    struct brm_config *c;

    c = try_load(GOOD "listn = '0.0.0.0:80'\n", &e);
    CHECK(c == NULL);
    CHECK_STR(e.data, "brume.lua:2: unknown setting 'listn' (did you mean 'listen'?)\n");

    c = try_load(GOOD "workers = 'four'\n", &e);
    CHECK_STR(e.data, "brume.lua:2: workers: expected an integer, got \"four\"\n");

    c = try_load("workers = 2\n"
                 "sources = {\n"
                 "  mist = {\n"
                 "    path = '/mist', secret = 's',\n"
                 "    max_bodyy = '1MB',\n"
                 "  },\n"
                 "}\n",
                 &e);
    CHECK_STR(e.data, "brume.lua:5: sources.mist: unknown setting 'max_bodyy' (did you mean "
                      "'max_body'?)\n");

    c = try_load("sources = {\n"
                 "  mist = { path = '/mist', secret = env('BRUME_TEST_UNSET_VARIABLE') },\n"
                 "}\n",
                 &e);
    CHECK_STR(e.data, "brume.lua:2: environment variable BRUME_TEST_UNSET_VARIABLE is not set\n");

    c = try_load("sources = { mist = { path = '/mist', secret = env('BRUME_TEST_UNSET_VARIABLE', "
                 "'dflt') } }\n",
                 &e);
    CHECK(c != NULL && strcmp(c->sources[0].secrets[0], "dflt") == 0);
    brm_config_free(c);

    c = try_load("sources = { mist = { path = '/mist', secret = file('missing.txt') } }\n", &e);
    CHECK_HAS(e.data, "brume.lua:1: cannot read ");
    CHECK_HAS(e.data, "missing.txt: No such file or directory");

    /* A NUL byte in a name or a value: C would read "m\0a" and "m\0b" as
     * two sources named "m", a secret up to its NUL. */
    c = try_load("sources = { ['m\\0a'] = { path = '/a', secret = 's' },\n"
                 "            ['m\\0b'] = { path = '/b', secret = 's' } }\n",
                 &e);
    CHECK(c == NULL);
    CHECK_HAS(e.data, "brume.lua:2: sources.m: a name holds a NUL byte\n");
    c = try_load("sources = { mist = { path = '/mist', secret = 'a\\0b' } }\n", &e);
    CHECK(c == NULL);
    CHECK_STR(e.data, "brume.lua:1: sources.mist.secret: holds a NUL byte\n");
    c = try_load(GOOD "targets = { t = { kind = 'webhook', url = 'https://h/\\0',\n"
                      "  headers = { { 'x' } } } }\nt = {}\nt[1] = t\nt[2] = '\\0'\n",
                 &e);
    CHECK(c == NULL);
    CHECK_HAS(e.data, "targets.t.url: holds a NUL byte\n");
    CHECK_HAS(e.data, "t[2]: holds a NUL byte\n"); /* the cycle is walked once */

    /* A loop's thousand and one sources. */
    c = try_load("s = {}\nfor i = 1, 1001 do s['m' .. i] = { path = '/m' .. i, secret = 'x' } end\n"
                 "sources = s\n",
                 &e);
    CHECK(c == NULL);
    CHECK_HAS(e.data, "brume.lua:3: sources: more than 1000 entries\n"); /* in any order */
    CHECK_HAS(e.data, "brume.lua:1: unknown setting 's'\n");

    /* Targets whose options each hold the table of all of them (found by
     * fuzz_config): looking through 828 entries eight levels deep for env()
     * placeholders would never end. */
    c = try_load("local s = {}\n"
                 "for i = 3, 830 do s['m' .. i] = { miqt = { path = '/m', s } } end\n"
                 "targets = s\n",
                 &e);
    CHECK(c == NULL);
    CHECK_HAS(e.data, "the config's tables hold too much to look through: more than 1000000 "
                      "values are reached from its settings (does a table hold itself?)\n");
    CHECK_HAS(e.data, "options must be plain values (tables nested deeper than 128 levels");

    /* A thousand targets naming one table of 100,000 numbers: 800 MB as
     * JSON, each target's copy checked by its adapter. */
    c = try_load(
        "local big = {}\n"
        "for i = 1, 100000 do big[i] = 1000000 end\n"
        "local t = {}\n"
        "for i = 1, 1000 do t['x' .. i] = { kind = 'webhook', url = 'https://h/', b = big }"
        " end\n"
        "targets = t\n",
        &e);
    CHECK(c == NULL);
    CHECK_HAS(e.data, "brume.lua:5: targets: the options of its targets take more than 16 MB as "
                      "JSON (up to x");

    /* Several mistakes: every one is reported. */
    c = try_load("listen = 8080\n"
                 "limits = { memory = 'lots', instructions = 10 }\n"
                 "log = { level = 'loud' }\n"
                 "sources = { mist = { path = '/mist', secret = 's' } }\n"
                 "http = { header_timeout = '5 fortnights' }\n",
                 &e);
    CHECK(c == NULL);
    CHECK_HAS(e.data, "brume.lua:1: listen: expected an address \"host:port\", { addr = ..., "
                      "tls = { cert = ..., key = ... } }, or a list of them, got number\n");
    CHECK_HAS(e.data, "brume.lua:2: limits.memory: expected a size");
    CHECK_HAS(e.data, "brume.lua:2: limits.instructions: must be between 1000 and");
    CHECK_HAS(e.data, "brume.lua:3: log.level: expected one of");
    CHECK_HAS(e.data, "brume.lua:5: http.header_timeout: expected a duration");

    c = try_load("listen = { '127.0.0.1:80', 'nonsense' }\n" GOOD, &e);
    CHECK_HAS(e.data, "brume.lua:1: listen[2]: expected an address \"host:port\"");
    c = try_load("listen = { addr = ':443', tls = { cert = 'c.pem' } }\n" GOOD, &e);
    CHECK_STR(e.data, "brume.lua:1: listen[1].tls: needs cert and key\n");
    c = try_load("listen = { addr = ':443', tls = { cert = 'c', key = 'k', ca = 'x' } }\n" GOOD,
                 &e);
    CHECK_STR(e.data, "brume.lua:1: listen[1].tls: unknown setting 'ca'\n");
    /* The admin endpoints leave the loopback only behind a token. */
    c = try_load("admin = '0.0.0.0:9090'\n" GOOD, &e);
    CHECK_HAS(e.data, "brume.lua:1: admin: 0.0.0.0:9090 is reachable from other hosts");
    /* Loopback is parsed, not a prefix: a name that starts with 127. is not. */
    c = try_load("admin = '127.attacker.example:9090'\n" GOOD, &e);
    CHECK_HAS(e.data, "brume.lua:1: admin: 127.attacker.example:9090 is reachable");
    static const char *const loopbacks[] = { "127.0.0.1:9", "127.9.8.7:9", "[::1]:9",
                                             "localhost:9" };
    for (size_t i = 0; i < BRM_ARRAY_LEN(loopbacks); i++) {
        char *text = brm_xasprintf("admin = '%s'\n" GOOD, loopbacks[i]);
        c = try_load(text, &e);
        CHECK_STR(e.data, "");
        brm_config_free(c);
        free(text);
    }
    c = try_load("admin = { addr = '0.0.0.0:9090', token = 'short' }\n" GOOD, &e);
    CHECK_STR(e.data, "brume.lua:1: admin.token: at least 16 characters\n");
    c = try_load("admin = { addr = '0.0.0.0:9090', token = 'a-long-enough-token' }\n" GOOD, &e);
    CHECK(c != NULL && strcmp(c->admin_token, "a-long-enough-token") == 0);
    brm_config_free(c);

    c = try_load("sources = {}\n", &e);
    CHECK_HAS(e.data, "brume.lua: no sources");

    c = try_load("sources = { mist = { path = '/mist' } }\n", &e);
    CHECK_HAS(e.data, "brume.lua:1: sources.mist: no secret (set secret, or insecure = true");

    c = try_load("sources = { mist = { path = 'mist', secret = 's' } }\n", &e);
    CHECK_HAS(e.data, "sources.mist.path: must start with '/'");

    c = try_load("sources = { mist = { path = '/m', secret = 's', insecure = true } }\n", &e);
    CHECK_HAS(e.data, "insecure = true with a secret set");

    c = try_load("sources = { mist = { path = '/m', secret = { 'a', 'b', 'c' } } }\n", &e);
    CHECK_HAS(e.data, "sources.mist.secret: expected a string or a list of one or two strings");

    c = try_load("http = { max_unverified = '1MB' }\n"
                 "sources = { mist = { path = '/m', secret = 's', max_body = '2MB' } }\n",
                 &e);
    CHECK_HAS(e.data, "sources.mist.max_body: larger than http.max_unverified");

    c = try_load("sources = { mist = { path = '/m', secret = '' } }\n", &e);
    CHECK_HAS(e.data, "a secret cannot be empty");

    /* Where Mist keeps the delivery log: all of it or none, and the token
     * goes over https, or over http to this host only. */
#define MIST(x) "sources = { m = { path = '/m', secret = 's', mist = { " x " } } }\n"
#define IDS     "token = 'tok', org_id = 'o1', webhook_id = 'w1'"
    static const struct {
        const char *text, *error; /* NULL: accepted */
    } mists[] = {
        { MIST("api = 'https://api.eu.mist.com', " IDS), NULL },
        { MIST("api = 'https://api.mist.com', token = 'tok', site_id = 's1', webhook_id = 'w1', "
               "every = '15m', catch_up = '2h'"),
          NULL },
        { MIST("api = 'http://127.0.0.1:8080', " IDS), NULL },
        { MIST("api = 'http://localhost/', " IDS), NULL },
        { MIST("api = 'http://[::1]:9000', " IDS), NULL },
        { MIST("api = 'http://api.mist.com', " IDS), "the token would go in the clear" },
        { MIST("api = 'http://127.0.0.1.example.com', " IDS), "the token would go in the clear" },
        { MIST("api = 'http://user@127.0.0.1', " IDS), "the token would go in the clear" },
        { MIST("api = 'ftp://api.mist.com', " IDS), "api: expected an https:// URL" },
        { MIST(IDS), "needs api" },
        { MIST("api = 'https://api.mist.com', org_id = 'o1', webhook_id = 'w1'"), "needs token" },
        { MIST("api = 'https://api.mist.com', token = 'tok', org_id = 'o1'"), "needs webhook_id" },
        { MIST("api = 'https://api.mist.com', token = 'tok', webhook_id = 'w1'"),
          "needs one of org_id" },
        { MIST("api = 'https://api.mist.com', " IDS ", site_id = 's1'"), "needs one of org_id" },
        { MIST("api = 'https://api.mist.com', " IDS ", every = -1"), "mist.every" },
    };
    for (size_t i = 0; i < BRM_ARRAY_LEN(mists); i++) {
        c = try_load(mists[i].text, &e);
        if (!mists[i].error) {
            CHECK_STR(e.data, "");
        } else {
            CHECK(c == NULL);
            CHECK_HAS(e.data, mists[i].error);
            CHECK(!strstr(e.data, "'tok'") && !strstr(e.data, "= tok")); /* never the token */
        }
        if (c && i == 1) {
            const struct brm_source *m = brm_config_source(c, "m");
            CHECK(m && m->mist.every == 900 && m->mist.catch_up == 7200 && m->mist.site_id);
        }
        if (c && i == 0) CHECK(brm_config_source(c, "m")->mist.catch_up == 86400);
        brm_config_free(c);
    }
#undef MIST
#undef IDS

    c = try_load("sources = {\n"
                 "  a = { path = '/m', secret = 's' },\n"
                 "  b = { path = '/m', secret = 's' },\n"
                 "}\n",
                 &e);
    CHECK_HAS(e.data, "/m is also the path of");

    /* Targets are checked by their kind's adapter, at the option's line. */
    c = try_load(GOOD "targets = {\n  chat = {\n    kind = 'slack',\n    url = 'hooks.example/x',\n"
                      "    chanel = '#x',\n  },\n}\n",
                 &e);
    CHECK_HAS(e.data, "brume.lua:5: targets.chat.url: expected an http(s) URL\n");
    CHECK_HAS(e.data, "brume.lua:6: targets.chat.chanel: unknown setting for kind slack (did "
                      "you mean 'channel'?)\n");
    CHECK(strstr(e.data, "required") == NULL); /* a bad url is not also a missing one */
    c = try_load(GOOD "targets = {\n  chat = { kind = 'slack' },\n}\n", &e);
    CHECK_STR(e.data, "brume.lua:3: targets.chat.url: required for kind slack\n");
    c = try_load(GOOD "targets = { f = { kind = 'file' } }\n", &e);
    CHECK_STR(e.data, "brume.lua:2: targets.f.path: required for kind file\n");
    c = try_load(GOOD "targets = {\n  x = { kind = 'carrier-pigeon' },\n}\n", &e);
    CHECK_HAS(e.data, "brume.lua:3: targets.x.kind: unknown kind 'carrier-pigeon' (kinds: ");
    c = try_load(GOOD "targets = { x = { url = 'https://a' } }\n", &e);
    CHECK_HAS(e.data, "targets.x: no kind (one of discord, file,");
    c = try_load(GOOD
                 "targets = {\n  pd = { kind = 'pagerduty', routing_key = 'k', rate = 'lots' },\n"
                 "  sn = { kind = 'servicenow', url = 'https://x.service-now.com' },\n}\n",
                 &e);
    CHECK_HAS(e.data, "brume.lua:3: targets.pd.rate: expected a rate");
    CHECK_HAS(e.data, "brume.lua:4: targets.sn.kind: servicenow needs token, or user and password");
    c = try_load(GOOD "targets = { http = { kind = 'webhook', url = 'https://x' } }\n", &e);
    CHECK_HAS(e.data, "targets.http: the name is brume.http's own target");
    c = try_load(GOOD "targets = { f = { kind = 'file', path = function() end } }\n", &e);
    CHECK_HAS(e.data, "targets.f: options must be plain values");

    /* A good one: defaults filled in, what the outbox needs read out. */
    c = try_load(
        GOOD "targets = {\n"
             "  pd = { kind = 'pagerduty', routing_key = 'R0UT1NGKEY', rate = '20/m',"
             " timeout = '5s', concurrency = 2 },\n"
             "  hook = { kind = 'webhook', url = 'https://h.example/in', secret = 'whsec_abc=' },\n"
             "  f = { kind = 'file', path = 'out/f.jsonl' },\n}\n",
        &e);
    CHECK_STR(e.data, "");
    if (c) {
        const struct brm_target *t = brm_config_target(c, "pd");
        CHECK(t && t->rate > 0.33 && t->rate < 0.34 && t->timeout == 5 && t->concurrency == 2);
        CHECK(t && t->max_age == 86400 && !t->ticket && t->nsecrets == 1);
        if (t && t->nsecrets) CHECK_STR(t->secrets[0], "R0UT1NGKEY");
        CHECK(t && strstr(t->options, "\"source\":\"brume\"")); /* a default */
        t = brm_config_target(c, "hook");
        CHECK(t && t->signing_secret && strcmp(t->signing_secret, "whsec_abc=") == 0);
        t = brm_config_target(c, "f");
        char *want = brm_xasprintf("%s/out/f.jsonl", dir);
        CHECK(t && t->path && strcmp(t->path, want) == 0);
        free(want);
        CHECK(brm_config_target(c, BRM_HTTP_TARGET) != NULL);
    }
    brm_config_free(c);

    c = try_load(GOOD "x = = 1\n", &e);
    CHECK_HAS(e.data, "brume.lua:2: unexpected symbol near '='");

    c = try_load(GOOD "error('custom failure')\n", &e);
    CHECK_STR(e.data, "brume.lua:2: custom failure\n");

    c = try_load(GOOD "while true do end\n", &e);
    CHECK_HAS(e.data, "brume.lua:2: instruction budget exceeded");

    c = try_load(GOOD "local x = io.open('/etc/passwd')\n", &e);
    CHECK_HAS(e.data, "brume.lua:2: attempt to index a nil value (global 'io')");

    /* A helper function left global reads as an unknown setting. */
    c = try_load(GOOD "function helper() end\n", &e);
    CHECK_HAS(e.data, "brume.lua:2: unknown setting 'helper'");

    struct brm_errors errs = { 0 };
    c = brm_config_load("/nonexistent/brume.lua", NULL, NULL, &errs);
    CHECK(c == NULL && errs.n == 1);
    if (errs.n) CHECK_HAS(errs.v[0].msg, "cannot read the config");
    brm_errors_reset(&errs);
    brm_buf_reset(&e);
}

/* Each case: a config and every error it must give, exactly. */
struct error_case {
    const char *text, *want;
};

static void check_cases(const struct error_case *cases, size_t n) {
    struct brm_buf e;
    brm_buf_init(&e);
    for (size_t i = 0; i < n; i++) {
        struct brm_config *c = try_load(cases[i].text, &e);
        CHECK(c == NULL);
        CHECK_STR(e.data, cases[i].want);
        brm_config_free(c);
    }
    brm_buf_reset(&e);
}

/* A wrong type, a bad value and the limits of each kind of setting. */
static void check_converters(void) {
    static const struct error_case cases[] = {
        /* strings */
        { "sources = { mist = { path = 5, secret = 's' } }\n",
          "brume.lua:1: sources.mist.path: expected a string, got number\n" },
        { "sources = { mist = { secret = 's' } }\n", /* no default */
          "brume.lua:1: sources.mist.path: must start with '/'\n" },
        /* paths */
        { GOOD "rules = false\n", "brume.lua:2: rules: expected a string, got boolean\n" },
        /* integers (long) */
        { GOOD "limits = { instructions = 1.5 }\n",
          "brume.lua:2: limits.instructions: expected an integer, got number\n" },
        { GOOD "limits = { instructions = 'many' }\n",
          "brume.lua:2: limits.instructions: expected an integer, got \"many\"\n" },
        { GOOD "limits = { instructions = 999 }\n",
          "brume.lua:2: limits.instructions: must be between 1000 and 1000000000000\n" },
        { GOOD "http = { max_connections = 1000001 }\n",
          "brume.lua:2: http.max_connections: must be between 1 and 1000000\n" },
        /* integers (int) */
        { GOOD "workers = 65\n", "brume.lua:2: workers: must be between 0 and 64\n" },
        { GOOD "workers = -1\n", "brume.lua:2: workers: must be between 0 and 64\n" },
        /* sizes */
        { GOOD "limits = { memory = true }\n",
          "brume.lua:2: limits.memory: expected a size (bytes, or \"8MB\"), got boolean\n" },
        { GOOD "limits = { memory = 'lots' }\n",
          "brume.lua:2: limits.memory: expected a size (bytes, or \"8MB\"), got \"lots\"\n" },
        { GOOD "limits = { memory = -1 }\n",
          "brume.lua:2: limits.memory: expected a size (bytes, or \"8MB\"), got number\n" },
        { GOOD "limits = { memory = 0/0 }\n",
          "brume.lua:2: limits.memory: expected a size (bytes, or \"8MB\"), got number\n" },
        { GOOD "limits = { memory = '512KB' }\n",
          "brume.lua:2: limits.memory: must be between 1048576 and 1000000000000\n" },
        /* Past 2^64: refused before it becomes a uint64_t. */
        { GOOD "limits = { memory = 1e300 }\n",
          "brume.lua:2: limits.memory: must be between 1048576 and 1000000000000\n" },
        { "sources = { mist = { path = '/m', secret = 's', max_body = 63 } }\n",
          "brume.lua:1: sources.mist.max_body: must be between 64 and 1073741824\n" },
        /* durations */
        { GOOD "http = { idle_timeout = {} }\n",
          "brume.lua:2: http.idle_timeout: expected a duration (seconds, or \"90s\", \"15m\", "
          "\"24h\"), got table\n" },
        { GOOD "http = { header_timeout = 0.01 }\n",
          "brume.lua:2: http.header_timeout: must be between 0.05 and 3600\n" },
        { GOOD "http = { drain_timeout = 0/0 }\n",
          "brume.lua:2: http.drain_timeout: must be between 0 and 3600\n" },
        { GOOD "journal = { retention = '30s' }\n",
          "brume.lua:2: journal.retention: must be between 60 and 315360000\n" },
        /* booleans */
        { GOOD "watch = 'yes'\n", "brume.lua:2: watch: expected true or false, got \"yes\"\n" },
        { "sources = { mist = { path = '/m', secret = 's', allow_sha1 = 1 } }\n",
          "brume.lua:1: sources.mist.allow_sha1: expected true or false, got number\n" },
        /* enums */
        { GOOD "log = { level = 'loud' }\n",
          "brume.lua:2: log.level: expected one of \"debug\", \"info\", \"warn\", \"error\", got "
          "\"loud\"\n" },
        { GOOD "log = { format = 1 }\n",
          "brume.lua:2: log.format: expected \"logfmt\" or \"json\", got number\n" },
        { "sources = { mist = { path = '/m', secret = 's', durability = 'some' } }\n",
          "brume.lua:1: sources.mist.durability: expected \"full\" or \"none\", got \"some\"\n" },
        /* addresses */
        { "listen = {}\n" GOOD, "brume.lua:1: listen: needs at least one address\n" },
        { "admin = 'nonsense'\n" GOOD,
          "brume.lua:1: admin: 'nonsense' is not an address \"host:port\", { addr = ..., token = "
          "... }, or false\n" },
        { "admin = true\n" GOOD,
          "brume.lua:1: admin: expected an address \"host:port\", { addr = ..., token = ... }, or "
          "false, got boolean\n" },
        { "admin = { token = 'a-long-enough-token' }\n" GOOD,
          "brume.lua:1: admin.addr: expected an address \"host:port\"\n" },
        /* secrets */
        { "sources = { mist = { path = '/m', secret = { 's', 5 } } }\n",
          "brume.lua:1: sources.mist.secret: expected a string or a list of one or two strings\n" },
        { "sources = { mist = { path = '/m', secret = {} } }\n",
          "brume.lua:1: sources.mist.secret: expected a string or a list of one or two strings, "
          "got table\n" },
        /* tables, maps, targets */
        { GOOD "limits = 5\n", "brume.lua:2: limits: expected a table, got number\n" },
        { GOOD "http = {\n  idle_timeot = 5,\n}\n",
          "brume.lua:3: http: unknown setting 'idle_timeot' (did you mean 'idle_timeout'?)\n" },
        { GOOD "http = { [1] = 5 }\n", "brume.lua:2: http: keys must be names\n" },
        { "sources = 'x'\n", "brume.lua:1: sources: expected a table, got \"x\"\n" },
        { "sources = { mist = 'x' }\n",
          "brume.lua:1: sources: each entry must be name = { ... }\n" },
        { GOOD "targets = 5\n", "brume.lua:2: targets: expected a table, got number\n" },
        { GOOD "targets = { 'x' }\n",
          "brume.lua:2: targets: each entry must be name = { kind = ..., ... }\n" },
        /* A target's timeout of 0 would be none: a stuck target would hold
         * its transfers for good. */
        { GOOD "targets = { f = { kind = 'file', path = 'f.jsonl', timeout = 0 } }\n",
          "brume.lua:2: targets.f.timeout: must be between 0.05 and 3600\n" },
    };
    check_cases(cases, BRM_ARRAY_LEN(cases));

    /* Good values at the limits, and the other forms each type takes. */
    struct brm_buf e;
    brm_buf_init(&e);
    struct brm_config *c = try_load(GOOD "workers = 64\n"
                                         "limits = { instructions = 1000, memory = 1048576, "
                                         "time = '1h' }\n"
                                         "http = { drain_timeout = 0, idle_timeout = 86400 }\n"
                                         "journal = { retention = '10d', max_size = 0 }\n"
                                         "store = { max_size = '2GB' }\n"
                                         "log = { level = 'error' }\n"
                                         "admin = '127.0.0.1:9999'\n"
                                         "listen = '[::]:8080'\n",
                                    &e);
    CHECK_STR(e.data, "");
    if (c) {
        CHECK_INT(c->workers, 64);
        CHECK_INT(c->instructions, 1000);
        CHECK_INT(c->memory, 1 << 20);
        CHECK(c->time_limit == 3600);
        CHECK(c->http.drain_timeout == 0 && c->http.idle_timeout == 86400);
        CHECK(c->journal.retention == 10 * 86400 && c->journal.max_size == 0);
        CHECK_INT(c->store_max, 2ull << 30);
        CHECK_INT(c->log_level, BRM_LOG_ERROR);
        CHECK_STR(c->admin, "127.0.0.1:9999");
        CHECK(c->nlisten == 1 && strcmp(c->listen[0].addr, "[::]:8080") == 0);
    }
    brm_config_free(c);
    c = try_load("sources = { mist = { path = '/m', secret = 's', durability = 'none', "
                 "dedupe = '1h', insecure = false } }\n",
                 &e);
    CHECK_STR(e.data, "");
    CHECK(c && c->sources[0].durable == 0 && c->sources[0].dedupe.window == 3600);
    brm_config_free(c);
    brm_buf_reset(&e);
}

/* state: the embedded store unless a Redis URL or Sentinels are given;
 * every mistake in it reported at its line. */
static void check_state(void) {
    struct brm_buf e;
    brm_buf_init(&e);
    struct brm_config *c = try_load(GOOD, &e);
    CHECK(c && !c->state.url && !c->state.nsentinels);
    CHECK_STR(c ? c->state.prefix : NULL, "brume:");
    CHECK(c && c->state.timeout == 2 && c->state.lease == 30);
    brm_config_free(c);
    c = try_load(GOOD "state = 'redis://127.0.0.1:6379/1'\n", &e);
    CHECK_STR(e.data, "");
    CHECK_STR(c ? c->state.url : NULL, "redis://127.0.0.1:6379/1");
    brm_config_free(c);
    setenv("BRUME_TEST_REDIS_PASSWORD", "from-env", 1);
    c = try_load(GOOD "state = { url = 'rediss://cache:6380/0', password = "
                      "env('BRUME_TEST_REDIS_PASSWORD'),\n"
                      "  ca = 'ca.pem', prefix = 'site-a:', timeout = '500ms', lease = 60 }\n",
                 &e);
    CHECK_STR(e.data, "");
    if (c) {
        CHECK_STR(c->state.password, "from-env");
        CHECK_STR(c->state.prefix, "site-a:");
        char *ca = brm_xasprintf("%s/ca.pem", dir);
        CHECK_STR(c->state.ca, ca);
        free(ca);
        CHECK(c->state.timeout == 0.5 && c->state.lease == 60);
    }
    brm_config_free(c);
    c = try_load(GOOD "state = { sentinels = { '10.0.0.1:26379', '10.0.0.2:26379' },\n"
                      "  master = 'brume', db = 3 }\n",
                 &e);
    CHECK_STR(e.data, "");
    CHECK(c && c->state.nsentinels == 2 && c->state.db == 3);
    CHECK_STR(c ? c->state.sentinels[1] : NULL, "10.0.0.2:26379");
    brm_config_free(c);
    static const struct error_case cases[] = {
        { GOOD "state = 6379\n",
          "brume.lua:2: state: expected a Redis URL \"redis://host:port/db\", or { url = ..., "
          "password = ..., ... }, got number\n" },
        { GOOD "state = 'http://cache:6379'\n",
          "brume.lua:2: state: redis URL: expected redis://host:port/db or rediss://... (TLS)\n" },
        { GOOD "state = 'redis://cache:70000/0'\n",
          "brume.lua:2: state: redis URL: the port must be 1 to 65535\n" },
        { GOOD "state = { url = 'redis://:a@h', password = 'b' }\n",
          "brume.lua:2: state: a password in the URL and in password\n" },
        { GOOD "state = { sentinels = { 'a:1' } }\n",
          "brume.lua:2: state.master: the Sentinel name of the master set is needed\n" },
        { GOOD "state = { url = 'redis://h', sentinels = { 'a:1' }, master = 'm' }\n",
          "brume.lua:2: state: url or sentinels (with master), not both\n" },
        { GOOD "state = { password = 'x' }\n",
          "brume.lua:2: state: needs url = \"redis://host:port/db\" (or sentinels)\n" },
        { GOOD "state = { url = 'redis://h', timeout = '2 weeks', lease = 0, prefix = 'a b',\n"
               "  sentinel = {} }\n",
          "brume.lua:2: state: unknown setting 'sentinel'\n"
          "brume.lua:2: state.prefix: a non-empty word\n"
          "brume.lua:2: state.timeout: expected a duration (\"2s\", \"30s\")\n"
          "brume.lua:2: state.lease: must be between 1 and 3600 seconds\n" },
        { GOOD "state = { url = 'redis://h/1', db = 2 }\n",
          "brume.lua:2: state.db: with url, the database is the URL's (\"/db\")\n" },
        { GOOD "state = { url = 'redis://h/1', tls = true }\n",
          "brume.lua:2: state.tls: with url, rediss:// is TLS\n" },
        { GOOD "state = { sentinels = { 'nohost' }, master = 'm' }\n",
          "brume.lua:2: state.sentinels[1]: expected an address \"host:port\"\n"
          "brume.lua:2: state: needs url = \"redis://host:port/db\" (or sentinels)\n" },
    };
    check_cases(cases, BRM_ARRAY_LEN(cases));
    brm_buf_reset(&e);
}

/* What a config that sets nothing but a source gets. */
static void check_defaults(void) {
    struct brm_buf e;
    brm_buf_init(&e);
    struct brm_config *c = try_load(GOOD, &e);
    CHECK_STR(e.data, "");
    if (c) {
        CHECK_INT(c->nlisten, 1);
        CHECK(c->listen[0].cert == NULL && c->listen[0].key == NULL);
        char *want = brm_xasprintf("%s/var", dir);
        CHECK_STR(c->data_dir, want);
        free(want);
        want = brm_xasprintf("%s/rules", dir);
        CHECK_STR(c->rules_dir, want);
        free(want);
        want = brm_xasprintf("%s/scripts", dir);
        CHECK_STR(c->scripts_dir, want);
        free(want);
        CHECK(c->time_limit == 1);
        CHECK(c->http.body_timeout == 30 && c->http.idle_timeout == 60);
        CHECK(c->http.drain_timeout == 10 && c->http.max_connections == 1024);
        CHECK_INT(c->log_level, BRM_LOG_INFO);
        CHECK_INT(c->log_format, BRM_LOG_LOGFMT);
        CHECK(c->journal.retention == 7 * 86400);
        CHECK_INT(c->journal.max_size, 1024ull << 20);
        CHECK_INT(c->store_max, 0);
        const struct brm_source *s = &c->sources[0];
        CHECK(s->durable == 1 && s->dedupe.window == 0 && !s->allow_sha1 && !s->insecure);
        CHECK_INT(s->max_body, 1 << 20);
        CHECK_INT(c->ntargets, 1); /* brume.http's own */
    }
    brm_config_free(c);
    brm_buf_reset(&e);
}

static int is_number(const struct type *t) {
    return t == &long_type || t == &int_type || t == &size_type || t == &duration_type ||
           t == &dedupe_type;
}

/* The rows themselves: unique keys, a default within the limits, sizes
 * that fit a uint64_t, an enum default that is one of its names. */
static void check_rows(const struct schema *sc, const char *where) {
    for (size_t i = 0; i < sc->n; i++) {
        const struct setting *st = &sc->settings[i];
        char name[128];
        snprintf(name, sizeof(name), "%s%s", where, st->key);
        CHECK(st->type && st->type->convert);
        for (size_t j = 0; j < i; j++) CHECK(strcmp(st->key, sc->settings[j].key) != 0);
        if (is_number(st->type)) {
            if (!(st->min < st->max && st->def >= st->min && st->def <= st->max))
                CHECK_STR(name, "a number row with a default within min < max");
        }
        if (st->type == &size_type) CHECK(st->max < 0x1p64);
        if (st->type == &enum_type) {
            int found = 0;
            for (const struct name *n = st->names; n->name; n++) found |= n->value == st->def;
            if (!found) CHECK_STR(name, "an enum row whose default is one of its names");
        }
        if (st->type == &listen_type || st->type == &admin_type) CHECK(valid_addr(st->text));
        if (st->type == &table_type || st->type == &map_type) {
            CHECK(st->sub != NULL);
            if (st->sub) check_rows(st->sub, st->key);
        }
    }
}

static int opened;
static const struct brm_config *opened_with;

/* A hook that counts, and opens the brume module as brume's own does. */
static void counting_open(struct brm_sandbox *sb, const struct brm_config *c, void *arg) {
    (*(int *)arg)++;
    opened_with = c;
    brm_api_open(sb, c);
}

/* The adapters' checks, run through the caller's hook. */
static void check_target_hook(void) {
    struct brm_buf e;
    brm_buf_init(&e);
    const char *whsec = GOOD "targets = {\n"
                             "  hook = { kind = 'webhook', url = 'https://h.example/in', "
                             "secret = 'whsec_abc=' },\n}\n";
    struct brm_config *c = try_load_with(whsec, counting_open, &opened, &e);
    CHECK_STR(e.data, "");
    CHECK_INT(opened, 1); /* one VM for all the targets */
    CHECK(c != NULL && opened_with == c);
    brm_config_free(c);
    /* No targets, no VM. */
    c = try_load_with(GOOD, counting_open, &opened, &e);
    CHECK(c != NULL && opened == 1);
    brm_config_free(c);
    /* Without a hook the adapters have no brume module: webhook's check
     * needs brume.base64. */
    c = try_load_with(whsec, NULL, NULL, &e);
    CHECK(c == NULL);
    CHECK_HAS(e.data, "brume.lua:3: targets.hook: ");
    CHECK_HAS(e.data, "(global 'brume')");
    brm_buf_reset(&e);
}

/* A misspelt option gets the closest name the kind takes; adapters from
 * the scripts folder that return what the loader cannot take are errors. */
static void check_target_problems(void) {
    struct brm_buf e;
    brm_buf_init(&e);
    struct brm_config *c;
    c = try_load(GOOD
                 "targets = {\n  chat = {\n    kind = 'slack', url = 'https://h.example/x',\n"
                 "    chanel = '#x',\n    username = 'b', icon = ':x:',\n    zzz = 1,\n  },\n}\n",
                 &e);
    CHECK(c == NULL);
    CHECK_HAS(e.data, "brume.lua:5: targets.chat.chanel: unknown setting for kind slack (did you "
                      "mean 'channel'?)\n");
    CHECK_HAS(e.data, "brume.lua:6: targets.chat.icon: unknown setting for kind slack\n");
    CHECK_HAS(e.data, "brume.lua:7: targets.chat.zzz: unknown setting for kind slack\n");
    /* Common options are names the kind takes too. */
    c = try_load(GOOD "targets = { pd = { kind = 'pagerduty', routing_key = 'k', timout = 5 } }\n",
                 &e);
    CHECK_STR(e.data, "brume.lua:2: targets.pd.timout: unknown setting for kind pagerduty (did "
                      "you mean 'timeout'?)\n");
    make_dir("scripts");
    make_dir("scripts/brume");
    make_dir("scripts/brume/targets");
    free(write_config("scripts/brume/targets/pigeon.lua",
                      "return { options = { coop = { 'string', default = function() end } },\n"
                      "         request = function() end }\n"));
    c = try_load(GOOD "targets = { p = { kind = 'pigeon' } }\n", &e);
    CHECK(c == NULL);
    CHECK_HAS(e.data, "brume.lua:2: targets.p: the options with the adapter's defaults are not "
                      "plain values (");
    /* An adapter's settings (string values) reach the C side; a problem
     * its check names an option for is shown at that option's line. */
    free(write_config(
        "scripts/brume/targets/dove.lua",
        "return { options = { loft = { 'string', required = true },\n"
        "                     keys = { 'table', secret = { 'pw' } } },\n"
        "  settings = function(o) return { ['loft.name'] = o.loft, n = 3 } end,\n"
        "  check = function(o) if o.loft == 'bad' then return 'no such loft', 'loft' end end,\n"
        "  request = function() end }\n"));
    c = try_load(GOOD "targets = { d = { kind = 'dove', loft = 'north',\n"
                      "  keys = { user = 'bird', pw = 'P4SSWORD' } } }\n",
                 &e);
    CHECK_STR(e.data, "");
    const struct brm_target *t = c ? brm_config_target(c, "d") : NULL;
    CHECK(t && t->nsettings == 1 && t->nsecrets == 1);
    if (t && t->nsettings == 1) {
        CHECK_STR(t->settings[0], "loft.name");
        CHECK_STR(t->settings[1], "north");
    }
    if (t && t->nsecrets == 1) CHECK_STR(t->secrets[0], "P4SSWORD");
    brm_config_free(c);
    c = try_load(GOOD "targets = {\n  d = { kind = 'dove',\n    loft = 'bad' } }\n", &e);
    CHECK_STR(e.data, "brume.lua:4: targets.d.loft: no such loft\n");
    /* A scripts folder whose brume.target is not brume's. */
    make_dir("alt");
    make_dir("alt/brume");
    free(
        write_config("alt/brume/target.lua", "return { check = function() return 1, 2, 3 end }\n"));
    c = try_load(GOOD "scripts = 'alt'\ntargets = { s = { kind = 'slack' } }\n", &e);
    CHECK_STR(e.data, "brume.lua:3: targets.s: brume.target.check returned no list of problems\n");
    free(write_config("alt/brume/target.lua",
                      "return { check = function() return nil, nil, {} end }\n"));
    c = try_load(GOOD "scripts = 'alt'\ntargets = { s = { kind = 'slack' } }\n", &e);
    CHECK_STR(e.data, "brume.lua:3: targets.s: brume.target.check returned no options\n");
    brm_buf_reset(&e);
}

/* dedupe: a window, or a window and the fields that tell a topic's events
 * apart (topics normalised, nested fields). */
static void check_dedupe(void) {
    struct brm_buf e;
    brm_buf_init(&e);
    struct brm_config *c =
        try_load("sources = { mist = { path = '/m', secret = 's', dedupe = {\n"
                 "  window = '10m',\n"
                 "  fields = { ['device_events'] = { 'mac', 'type', 'timestamp' },\n"
                 "             alarms = { 'id' }, audits = { 'site.id', 'admin_name' } },\n"
                 "} } }\n",
                 &e);
    CHECK_STR(e.data, "");
    if (c) {
        const struct brm_dedupe *d = &c->sources[0].dedupe;
        CHECK(d->window == 600);
        CHECK_INT(d->ntopics, 3);
        const struct brm_dedupe_topic *t = brm_config_dedupe_fields(d, "device-events");
        CHECK(t && t->nfields == 3 && strcmp(t->fields[2], "timestamp") == 0);
        t = brm_config_dedupe_fields(d, "audits");
        CHECK(t && t->nfields == 2 && strcmp(t->fields[0], "site.id") == 0);
        CHECK(brm_config_dedupe_fields(d, "device_events") == NULL); /* callers normalise */
        CHECK(brm_config_dedupe_fields(d, "location") == NULL);
    }
    brm_config_free(c);
    c = try_load("sources = { mist = { path = '/m', secret = 's', dedupe = { window = 30 } } }\n",
                 &e);
    CHECK_STR(e.data, "");
    CHECK(c && c->sources[0].dedupe.window == 30 && c->sources[0].dedupe.ntopics == 0);
    brm_config_free(c);
    static const struct error_case cases[] = {
        { "sources = { mist = { path = '/m', secret = 's', dedupe = 'soon' } }\n",
          "brume.lua:1: sources.mist.dedupe: expected a duration (seconds, or \"10m\"), or { "
          "window = ..., fields = { topic = { \"field\", ... } } }, got \"soon\"\n" },
        { "sources = { mist = { path = '/m', secret = 's', dedupe = { fields = {} } } }\n",
          "brume.lua:1: sources.mist.dedupe.window: needed (how long an event stays seen: "
          "\"10m\")\n" },
        { "sources = { mist = { path = '/m', secret = 's', dedupe = { window = '99d' } } }\n",
          "brume.lua:1: sources.mist.dedupe.window: must be between 0 and 2592000\n" },
        { "sources = { mist = { path = '/m', secret = 's', dedupe = { window = 60, feilds = 1 } "
          "} }\n",
          "brume.lua:1: sources.mist.dedupe: unknown setting 'feilds'\n" },
        { "sources = { mist = { path = '/m', secret = 's', dedupe = { window = 60,\n"
          "  fields = { alarms = 'id' } } } }\n",
          "brume.lua:1: sources.mist.dedupe.fields.alarms: expected a list of 1 to 32 field "
          "names\n" },
        { "sources = { mist = { path = '/m', secret = 's', dedupe = { window = 60,\n"
          "  fields = { alarms = { 'id', '', 'a..b', 7 } } } } }\n",
          "brume.lua:1: sources.mist.dedupe.fields.alarms[2]: expected a field name (\"mac\", or "
          "\"a.b\" for field b of object a)\n"
          "brume.lua:1: sources.mist.dedupe.fields.alarms[3]: expected a field name (\"mac\", or "
          "\"a.b\" for field b of object a)\n"
          "brume.lua:1: sources.mist.dedupe.fields.alarms[4]: expected a field name (\"mac\", or "
          "\"a.b\" for field b of object a)\n" },
        { "sources = { mist = { path = '/m', secret = 's', dedupe = { window = 60,\n"
          "  fields = { [1] = { 'id' } } } } }\n",
          "brume.lua:1: sources.mist.dedupe.fields: keys are topic names ([\"device-events\"] = "
          "...)\n" },
        { "sources = { mist = { path = '/m', secret = 's', dedupe = { window = 60, fields = 1 "
          "} } }\n",
          "brume.lua:1: sources.mist.dedupe.fields: expected { topic = { \"field\", ... }, ... "
          "}\n" },
    };
    check_cases(cases, BRM_ARRAY_LEN(cases));
    /* device_events and device-events are one topic. */
    c = try_load("sources = { mist = { path = '/m', secret = 's', dedupe = { window = 60,\n"
                 "  fields = { device_events = { 'mac' }, ['device-events'] = { 'type' } } } } }\n",
                 &e);
    CHECK(c == NULL);
    CHECK_HAS(e.data, "sources.mist.dedupe.fields: topic device-events is named twice\n");
    brm_buf_reset(&e);
}

/* An offline load (brume test) needs no secret it does not use: an unset
 * variable is a placeholder where secrets go, an error anywhere else; a
 * target holding one is kept, unchecked, and says which variable. */
static void check_offline(void) {
    struct brm_buf e;
    brm_buf_init(&e);
    const char *text =
        "admin = { addr = '127.0.0.1:9090', token = env('BRUME_TEST_UNSET_TOKEN') }\n"
        "sources = { mist = { path = '/m', secret = env('BRUME_TEST_UNSET_SECRET'),\n"
        "                     mist = { api = 'https://api.mist.com', org_id = 'o',\n"
        "                              webhook_id = 'w', token = env('BRUME_TEST_UNSET_API') } },\n"
        "            two = { path = '/t', secret = { env('BRUME_TEST_UNSET_A'), 'old' } } }\n"
        "targets = {\n"
        "  chat = { kind = 'slack', url = 'https://hooks.slack.com/services/' ..\n"
        "           env('BRUME_TEST_UNSET_SLACK') },\n"
        "  pd = { kind = 'pagerduty', routing_key = env('BRUME_TEST_UNSET_PD') },\n"
        "  archive = { kind = 'file', path = 'out.jsonl' },\n"
        "}\n";
    char *path = write_config("brume.lua", text);
    struct brm_errors errs = { 0 };
    struct brm_config *c = brm_config_load(path, brm_api_open_for_config, NULL, &errs);
    CHECK(c == NULL);
    CHECK_INT(errs.n, 6); /* the daemon still wants every variable */
    brm_errors_reset(&errs);
    c = brm_config_load_offline(path, brm_api_open_for_config, NULL, &errs);
    CHECK_INT(errs.n, 0);
    CHECK(c != NULL);
    if (c) {
        const struct brm_target *chat = brm_config_target(c, "chat");
        const struct brm_target *pd = brm_config_target(c, "pd");
        const struct brm_target *archive = brm_config_target(c, "archive");
        CHECK(chat && chat->unset && strcmp(chat->unset, "BRUME_TEST_UNSET_SLACK") == 0);
        CHECK(pd && pd->unset && strcmp(pd->unset, "BRUME_TEST_UNSET_PD") == 0);
        CHECK(archive && archive->unset == NULL && archive->path != NULL);
        CHECK_INT(c->sources[0].nsecrets + c->sources[1].nsecrets, 3);
    }
    brm_config_free(c);
    /* Elsewhere an unset variable is an error, offline too; a default or
     * a set variable is no placeholder. */
    free(write_config("brume.lua", GOOD "rules = env('BRUME_TEST_UNSET_RULES')\n"
                                        "data_dir = env('BRUME_TEST_UNSET_DATA', 'var')\n"
                                        "listen = { { addr = env('BRUME_TEST_UNSET_ADDR') } }\n"));
    c = brm_config_load_offline(path, brm_api_open_for_config, NULL, &errs);
    CHECK(c == NULL);
    e.len = 0;
    brm_buf_puts(&e, "");
    for (size_t i = 0; i < errs.n; i++) {
        char line[1024];
        brm_err_format(&errs.v[i], line, sizeof(line));
        brm_buf_printf(&e, "%s\n", strstr(line, "brume.lua"));
    }
    CHECK_HAS(e.data,
              "brume.lua:2: rules: environment variable BRUME_TEST_UNSET_RULES is not set\n");
    CHECK_HAS(e.data,
              "brume.lua:4: listen: environment variable BRUME_TEST_UNSET_ADDR is not set\n");
    CHECK_INT(errs.n, 2);
    brm_errors_reset(&errs);
    free(path);
    brm_buf_reset(&e);
}

int main(void) {
    snprintf(dir, sizeof(dir), "/tmp/brume-config-XXXXXX");
    CHECK(mkdtemp(dir) != NULL);
    check_good();
    check_errors();
    check_converters();
    check_defaults();
    check_state();
    check_dedupe();
    check_offline();
    check_rows(&top_schema, "");
    check_target_hook();
    check_target_problems();
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    CHECK_INT(system(cmd), 0);
    return test_done();
}
