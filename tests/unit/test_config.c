/* config: a good config loads with defaults and resolved paths; every kind
 * of mistake is reported with file:line, all of them at once. */
#include <stdlib.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "test.h"

static char dir[64];

static char *write_config(const char *name, const char *text) {
    char *path = brm_xasprintf("%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
    return path;
}

/* Loads TEXT; returns the config or NULL, with the errors formatted into
 * one string (each "file:line: msg" on its own line) in OUT. */
static struct brm_config *load(const char *text, struct brm_buf *out) {
    char *path = write_config("brume.lua", text);
    struct brm_errors errs = { 0 };
    struct brm_config *c = brm_config_load(path, &errs);
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

#define GOOD "sources = { mist = { path = '/mist', secret = 's' } }\n"

static void check_good(void) {
    struct brm_buf e;
    brm_buf_init(&e);
    setenv("BRUME_TEST_SECRET", "from-env", 1);
    char *secret_path = write_config("secret.txt", "from-file\n");
    free(secret_path);
    struct brm_config *c =
        load("-- a full config\n"
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

    c = load(GOOD, &e);
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

    c = load(GOOD "listn = '0.0.0.0:80'\n", &e);
    CHECK(c == NULL);
    CHECK_STR(e.data, "brume.lua:2: unknown setting 'listn' (did you mean 'listen'?)\n");

    c = load(GOOD "workers = 'four'\n", &e);
    CHECK_STR(e.data, "brume.lua:2: workers: expected an integer, got \"four\"\n");

    c = load("workers = 2\n"
             "sources = {\n"
             "  mist = {\n"
             "    path = '/mist', secret = 's',\n"
             "    max_bodyy = '1MB',\n"
             "  },\n"
             "}\n",
             &e);
    CHECK_STR(e.data, "brume.lua:5: sources.mist: unknown setting 'max_bodyy' (did you mean "
                      "'max_body'?)\n");

    c = load("sources = {\n"
             "  mist = { path = '/mist', secret = env('BRUME_TEST_UNSET_VARIABLE') },\n"
             "}\n",
             &e);
    CHECK_STR(e.data, "brume.lua:2: environment variable BRUME_TEST_UNSET_VARIABLE is not set\n");

    c = load("sources = { mist = { path = '/mist', secret = env('BRUME_TEST_UNSET_VARIABLE', "
             "'dflt') } }\n",
             &e);
    CHECK(c != NULL && strcmp(c->sources[0].secrets[0], "dflt") == 0);
    brm_config_free(c);

    c = load("sources = { mist = { path = '/mist', secret = file('missing.txt') } }\n", &e);
    CHECK_HAS(e.data, "brume.lua:1: cannot read ");
    CHECK_HAS(e.data, "missing.txt: No such file or directory");

    /* Several mistakes: every one is reported. */
    c = load("listen = 8080\n"
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

    c = load("listen = { '127.0.0.1:80', 'nonsense' }\n" GOOD, &e);
    CHECK_HAS(e.data, "brume.lua:1: listen[2]: expected an address \"host:port\"");
    c = load("listen = { addr = ':443', tls = { cert = 'c.pem' } }\n" GOOD, &e);
    CHECK_STR(e.data, "brume.lua:1: listen[1].tls: needs cert and key\n");
    c = load("listen = { addr = ':443', tls = { cert = 'c', key = 'k', ca = 'x' } }\n" GOOD, &e);
    CHECK_STR(e.data, "brume.lua:1: listen[1].tls: unknown setting 'ca'\n");
    /* The admin endpoints leave the loopback only behind a token. */
    c = load("admin = '0.0.0.0:9090'\n" GOOD, &e);
    CHECK_HAS(e.data, "brume.lua:1: admin: 0.0.0.0:9090 is reachable from other hosts");
    /* Loopback is parsed, not a prefix: a name that starts with 127. is not. */
    c = load("admin = '127.attacker.example:9090'\n" GOOD, &e);
    CHECK_HAS(e.data, "brume.lua:1: admin: 127.attacker.example:9090 is reachable");
    static const char *const loopbacks[] = { "127.0.0.1:9", "127.9.8.7:9", "[::1]:9",
                                             "localhost:9" };
    for (size_t i = 0; i < BRM_ARRAY_LEN(loopbacks); i++) {
        char *text = brm_xasprintf("admin = '%s'\n" GOOD, loopbacks[i]);
        c = load(text, &e);
        CHECK_STR(e.data, "");
        brm_config_free(c);
        free(text);
    }
    c = load("admin = { addr = '0.0.0.0:9090', token = 'short' }\n" GOOD, &e);
    CHECK_STR(e.data, "brume.lua:1: admin.token: at least 16 characters\n");
    c = load("admin = { addr = '0.0.0.0:9090', token = 'a-long-enough-token' }\n" GOOD, &e);
    CHECK(c != NULL && strcmp(c->admin_token, "a-long-enough-token") == 0);
    brm_config_free(c);

    c = load("sources = {}\n", &e);
    CHECK_HAS(e.data, "brume.lua: no sources");

    c = load("sources = { mist = { path = '/mist' } }\n", &e);
    CHECK_HAS(e.data, "brume.lua:1: sources.mist: no secret (set secret, or insecure = true");

    c = load("sources = { mist = { path = 'mist', secret = 's' } }\n", &e);
    CHECK_HAS(e.data, "sources.mist.path: must start with '/'");

    c = load("sources = { mist = { path = '/m', secret = 's', insecure = true } }\n", &e);
    CHECK_HAS(e.data, "insecure = true with a secret set");

    c = load("sources = { mist = { path = '/m', secret = { 'a', 'b', 'c' } } }\n", &e);
    CHECK_HAS(e.data, "sources.mist.secret: expected a string or a list of one or two strings");

    c = load("http = { max_unverified = '1MB' }\n"
             "sources = { mist = { path = '/m', secret = 's', max_body = '2MB' } }\n",
             &e);
    CHECK_HAS(e.data, "sources.mist.max_body: larger than http.max_unverified");

    c = load("sources = { mist = { path = '/m', secret = '' } }\n", &e);
    CHECK_HAS(e.data, "a secret cannot be empty");

    c = load("sources = {\n"
             "  a = { path = '/m', secret = 's' },\n"
             "  b = { path = '/m', secret = 's' },\n"
             "}\n",
             &e);
    CHECK_HAS(e.data, "/m is also the path of");

    /* Targets are checked by their kind's adapter, at the option's line. */
    c = load(GOOD "targets = {\n  chat = {\n    kind = 'slack',\n    url = 'hooks.example/x',\n"
                  "    chanel = '#x',\n  },\n}\n",
             &e);
    CHECK_HAS(e.data, "brume.lua:5: targets.chat.url: expected an http(s) URL\n");
    CHECK_HAS(e.data, "brume.lua:6: targets.chat.chanel: unknown setting for kind slack\n");
    CHECK(strstr(e.data, "required") == NULL); /* a bad url is not also a missing one */
    c = load(GOOD "targets = {\n  chat = { kind = 'slack' },\n}\n", &e);
    CHECK_STR(e.data, "brume.lua:3: targets.chat.url: required for kind slack\n");
    c = load(GOOD "targets = { f = { kind = 'file' } }\n", &e);
    CHECK_STR(e.data, "brume.lua:2: targets.f.path: required for kind file\n");
    c = load(GOOD "targets = {\n  x = { kind = 'carrier-pigeon' },\n}\n", &e);
    CHECK_HAS(e.data, "brume.lua:3: targets.x.kind: unknown kind 'carrier-pigeon' (kinds: ");
    c = load(GOOD "targets = { x = { url = 'https://a' } }\n", &e);
    CHECK_HAS(e.data, "targets.x: no kind (one of discord, file,");
    c = load(GOOD "targets = {\n  pd = { kind = 'pagerduty', routing_key = 'k', rate = 'lots' },\n"
                  "  sn = { kind = 'servicenow', url = 'https://x.service-now.com' },\n}\n",
             &e);
    CHECK_HAS(e.data, "brume.lua:3: targets.pd.rate: expected a rate");
    CHECK_HAS(e.data, "brume.lua:4: targets.sn.kind: servicenow needs token, or user and password");
    c = load(GOOD "targets = { http = { kind = 'webhook', url = 'https://x' } }\n", &e);
    CHECK_HAS(e.data, "targets.http: the name is brume.http's own target");
    c = load(GOOD "targets = { f = { kind = 'file', path = function() end } }\n", &e);
    CHECK_HAS(e.data, "targets.f: options must be plain values");

    /* A good one: defaults filled in, what the outbox needs read out. */
    c = load(GOOD
             "targets = {\n"
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

    c = load(GOOD "x = = 1\n", &e);
    CHECK_HAS(e.data, "brume.lua:2: unexpected symbol near '='");

    c = load(GOOD "error('custom failure')\n", &e);
    CHECK_STR(e.data, "brume.lua:2: custom failure\n");

    c = load(GOOD "while true do end\n", &e);
    CHECK_HAS(e.data, "brume.lua:2: instruction budget exceeded");

    c = load(GOOD "local x = io.open('/etc/passwd')\n", &e);
    CHECK_HAS(e.data, "brume.lua:2: attempt to index a nil value (global 'io')");

    /* A helper function left global reads as an unknown setting. */
    c = load(GOOD "function helper() end\n", &e);
    CHECK_HAS(e.data, "brume.lua:2: unknown setting 'helper'");

    struct brm_errors errs = { 0 };
    c = brm_config_load("/nonexistent/brume.lua", &errs);
    CHECK(c == NULL && errs.n == 1);
    if (errs.n) CHECK_HAS(errs.v[0].msg, "cannot read the config");
    brm_errors_reset(&errs);
    brm_buf_reset(&e);
}

int main(void) {
    snprintf(dir, sizeof(dir), "/tmp/brume-config-XXXXXX");
    CHECK(mkdtemp(dir) != NULL);
    check_good();
    check_errors();
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    CHECK_INT(system(cmd), 0);
    return test_done();
}
