/* console: who may use the API (the token; without one a loopback peer and
 * Host, the header a change needs, the Origin), query parameters, label
 * values of counters. The endpoints themselves run against the real daemon
 * in tests/integration/browser_console.py. */
#include "console.c"

#include "test.h"

/* A request from PEER with the headers given as name, value pairs. */
static struct brm_http_req request(const char *peer, const char *query, ...) {
    struct brm_http_req r = { .method = BRM_HTTP_GET, .peer = peer };
    va_list ap;
    va_start(ap, query);
    const char *name;
    while ((name = va_arg(ap, const char *)) != NULL) {
        const char *value = va_arg(ap, const char *);
        r.headers[r.nheaders++] =
            (struct brm_http_header){ name, value, strlen(name), strlen(value) };
    }
    va_end(ap);
    r.query = query;
    r.query_len = query ? strlen(query) : 0;
    return r;
}

static int check(const char *token, const struct brm_http_req *r, int writes) {
    const char *why = NULL;
    int st = brm_console_check(token, r, writes, &why);
    CHECK(st == 0 || (why && *why));
    return st;
}

static void check_access(void) {
    /* No token: loopback peers naming a loopback Host only. */
    struct brm_http_req r = request("127.0.0.1:5000", NULL, "Host", "127.0.0.1:9090", NULL);
    CHECK_INT(check(NULL, &r, 0), 0);
    r = request("[::1]:5000", NULL, "Host", "localhost:9090", NULL);
    CHECK_INT(check(NULL, &r, 0), 0);
    r = request("[::1]:5000", NULL, "Host", "[::1]:9090", NULL);
    CHECK_INT(check(NULL, &r, 0), 0);
    r = request("10.1.2.3:5000", NULL, "Host", "127.0.0.1:9090", NULL); /* from elsewhere */
    CHECK_INT(check(NULL, &r, 0), 403);
    r = request("192.168.0.7:5000", NULL, NULL);
    CHECK_INT(check(NULL, &r, 0), 403);
    r = request("127.0.0.1:5000", NULL, "Host", "evil.example:9090", NULL); /* rebinding */
    CHECK_INT(check(NULL, &r, 0), 403);
    r = request("127.0.0.1:5000", NULL, "Host", "127.0.0.1.evil.example", NULL);
    CHECK_INT(check(NULL, &r, 0), 403);
    /* A change wants the console's header, which no form can send. */
    r = request("127.0.0.1:5000", NULL, "Host", "127.0.0.1:9090", NULL);
    CHECK_INT(check(NULL, &r, 1), 403);
    r = request("127.0.0.1:5000", NULL, "Host", "127.0.0.1:9090", "X-Brume-Console", "1", NULL);
    CHECK_INT(check(NULL, &r, 1), 0);
    r = request("127.0.0.1:5000", NULL, "Host", "127.0.0.1:9090", "X-Brume-Console", "1", "Origin",
                "http://127.0.0.1:9090", NULL);
    CHECK_INT(check(NULL, &r, 1), 0);
    r = request("127.0.0.1:5000", NULL, "Host", "127.0.0.1:9090", "X-Brume-Console", "1", "Origin",
                "https://evil.example", NULL);
    CHECK_INT(check(NULL, &r, 1), 403);
    r = request("127.0.0.1:5000", NULL, "Host", "127.0.0.1:9090", "Origin", "null", NULL);
    CHECK(!brm_console_same_origin(&r));
    /* A token: wanted from everyone, loopback or not; then any Host. */
    const char *token = "s3cr3t-token";
    r = request("127.0.0.1:5000", NULL, "Host", "127.0.0.1:9090", "X-Brume-Console", "1", NULL);
    CHECK_INT(check(token, &r, 0), 401);
    r = request("10.1.2.3:5000", NULL, "Authorization", "Bearer s3cr3t-token", "Host",
                "brume.example.net", NULL);
    CHECK_INT(check(token, &r, 0), 0);
    CHECK_INT(check(token, &r, 1), 0);
    r = request("10.1.2.3:5000", NULL, "Authorization", "Bearer s3cr3t-tokeX", NULL);
    CHECK_INT(check(token, &r, 0), 401);
    r = request("10.1.2.3:5000", NULL, "Authorization", "Bearer s3cr3t-token2", NULL);
    CHECK_INT(check(token, &r, 0), 401);
    r = request("10.1.2.3:5000", NULL, "Authorization", "Basic s3cr3t-token", NULL);
    CHECK_INT(check(token, &r, 0), 401);
}

static void check_params(void) {
    char v[16];
    long long n;
    double t;
    struct brm_http_req r =
        request("127.0.0.1:1", "topic=device_events&q=a+b%2Fc&empty=&x=%zz", NULL);
    CHECK_INT(param(&r, "topic", v, sizeof(v)), 1);
    CHECK_STR(v, "device_events");
    CHECK_INT(param(&r, "q", v, sizeof(v)), 1);
    CHECK_STR(v, "a b/c");
    CHECK_INT(param(&r, "empty", v, sizeof(v)), 0);
    CHECK_INT(param(&r, "missing", v, sizeof(v)), 0);
    CHECK_INT(param(&r, "x", v, sizeof(v)), -1); /* not %-hex */
    CHECK_INT(param(&r, "to", v, sizeof(v)), 0); /* a prefix of topic is not topic */
    r = request("127.0.0.1:1", "q=%41%0", NULL);
    CHECK_INT(param(&r, "q", v, sizeof(v)), -1); /* cut short */
    r = request("127.0.0.1:1", "q=%00", NULL);
    CHECK_INT(param(&r, "q", v, sizeof(v)), -1);
    r = request("127.0.0.1:1", "q=0123456789abcdefgh", NULL);
    CHECK_INT(param(&r, "q", v, sizeof(v)), -1); /* longer than the room */
    r = request("127.0.0.1:1", "limit=20&before=x&since=1700000000&until=2h", NULL);
    CHECK_INT(param_int(&r, "limit", 1, 200, 50, &n), 0);
    CHECK_INT(n, 20);
    CHECK_INT(param_int(&r, "before", 1, 100, 0, &n), -1);
    CHECK_INT(param_int(&r, "absent", 1, 100, 7, &n), 0);
    CHECK_INT(n, 7);
    CHECK_INT(param_int(&r, "limit", 1, 10, 5, &n), -1); /* out of range */
    char msg[1024];
    CHECK_INT(read_time("since", "1700000000", &t, msg, sizeof(msg)), 0);
    CHECK(t == 1700000000);
    CHECK_INT(read_time("until", "2h", &t, msg, sizeof(msg)), 0);
    CHECK(fabs(brm_time_now() - 7200 - t) < 5);
    CHECK_INT(read_time("since", "2030-01-01", &t, msg, sizeof(msg)), 0);
    CHECK(t == 1893456000);
    CHECK_INT(read_time("since", "2026-13-45", &t, msg, sizeof(msg)), -1);
    CHECK(strncmp(msg, "since '2026-13-45': ", 20) == 0 && strstr(msg, "a time is a time ago"));
    CHECK(valid_field("device.name") && valid_field("bssids[0]") && valid_field("type"));
    CHECK(!valid_field("a'b") && !valid_field(".x") && !valid_field("") && !valid_field("a b"));
}

static void check_labels(void) {
    char v[64];
    label("route=\"mist\",status=\"200\"", "status", v, sizeof(v));
    CHECK_STR(v, "200");
    label("route=\"admin\"", "route", v, sizeof(v));
    CHECK_STR(v, "admin");
    label("xroute=\"no\"", "route", v, sizeof(v));
    CHECK_STR(v, "");
    label("topic=\"a\\\"b\"", "topic", v, sizeof(v));
    CHECK_STR(v, "a\"b");
    CHECK(credential_header("X-Api-Key", 9) && credential_header("authorization", 13));
    CHECK(!credential_header("Content-Type", 12));
}

int main(void) {
    check_access();
    check_params();
    check_labels();
    return test_done();
}
