/* util: sizes, durations, times, hex, base64, addresses, paths, JSON strings. */
#include <math.h>
#include <stdlib.h>

#include "test.h"
#include "util.h"

#define HASH64_EMPTY 0x9ca066f1a4ab2eeaull
#define HASH64_TOPIC 0x212fde032afb7fc7ull

static double duration(const char *s) {
    double v = -1;
    return brm_parse_duration(s, &v) == 0 ? v : -1;
}

static long long size(const char *s) {
    uint64_t v = 0;
    return brm_parse_size(s, &v) == 0 ? (long long)v : -1;
}

static char why[512];

/* brm_parse_time at a fixed now; -1 (and the reason in WHY) when refused. */
static double when(const char *s) {
    static struct brm_err err;
    double v = 0;
    return brm_parse_time(s, 1763719200, &v, &err) == 0
               ? v
               : (brm_err_format(&err, why, sizeof(why)), -1);
}

static void check_base64(const char *plain, const char *encoded) {
    char out[256];
    unsigned char back[256];
    brm_base64_encode((const unsigned char *)plain, strlen(plain), out);
    CHECK_STR(out, encoded);
    CHECK_INT(brm_base64_encoded_len(strlen(plain)), strlen(encoded));
    long n = brm_base64_decode(encoded, strlen(encoded), back);
    CHECK_INT(n, strlen(plain));
    CHECK(n >= 0 && memcmp(back, plain, (size_t)n) == 0);
}

static const char *json(const char *s, size_t n) {
    static struct brm_buf b;
    brm_buf_reset(&b);
    brm_buf_json_string(&b, s, n);
    return b.data;
}

/* An error list keeps BRM_MAX_ERRORS, the last saying how many more came. */
static void check_errors_cap(void) {
    struct brm_errors errs = { 0 };
    for (int i = 0; i < 250; i++) brm_errors_addf(&errs, "brume.lua", i + 1, "error %d", i);
    CHECK(errs.n == BRM_MAX_ERRORS);
    CHECK(brm_errors_count(&errs) == 250);
    CHECK_STR(errs.v[0].msg, "error 0");
    CHECK_STR(errs.v[BRM_MAX_ERRORS - 2].msg, "error 98");
    char msg[1024];
    brm_err_format(&errs.v[BRM_MAX_ERRORS - 1], msg, sizeof(msg));
    CHECK_STR(msg, "... and 151 more errors");
    brm_errors_reset(&errs);
    CHECK(errs.n == 0 && brm_errors_count(&errs) == 0);
}

int main(void) {
    check_errors_cap();
    CHECK(duration("90s") == 90);
    CHECK(duration("15m") == 900);
    CHECK(duration("24h") == 86400);
    CHECK(duration("2d") == 172800);
    CHECK(fabs(duration("250ms") - 0.25) < 1e-9);
    CHECK(duration("10") == 10);
    CHECK(duration("1.5s") == 1.5);
    CHECK(duration("") == -1);
    CHECK(duration("s") == -1);
    CHECK(duration("10x") == -1);
    CHECK(duration("-1s") == -1);
    CHECK(duration("1.s") == -1);

    /* Times: ago, ISO 8601, epoch seconds; 1763719200 is 2025-11-21T10:00:00Z. */
    CHECK(when("2h") == 1763719200 - 7200);
    CHECK(when("2h ago") == 1763719200 - 7200);
    CHECK(when("90s") == 1763719200 - 90);
    CHECK(when("7d") == 1763719200 - 7 * 86400);
    CHECK(when("1763719200") == 1763719200);
    CHECK(when("1763719200.5") == 1763719200.5);
    CHECK(when("2025-11-21") == 1763683200);
    CHECK(when("2025-11-21T10:00") == 1763719200);
    CHECK(when("2025-11-21 10:00:00Z") == 1763719200);
    CHECK(when("2025-11-21T10:00:00.250Z") == 1763719200.25);
    CHECK(when("2025-11-21T12:00+02:00") == 1763719200);
    CHECK(when("2025-11-21T04:30-0530") == 1763719200);
    CHECK(when("2024-02-29") == 1709164800);
    CHECK(when("2000-02-29") == 951782400);
    CHECK(when("yesterday") == -1);
    CHECK_STR(why, "not a time");
    CHECK(when("") == -1);
    CHECK(when("2026-13-45") == -1);
    CHECK_STR(why, "there is no month 13 (months are 01 to 12)");
    CHECK(when("2026-02-29") == -1);
    CHECK_STR(why, "2026-02 has no day 29 (it has 28)");
    CHECK(when("1900-02-29") == -1);
    CHECK(when("2026-11-21T24:00") == -1);
    CHECK_STR(why, "24:00:00 is not a time of day");
    CHECK(when("2026-11-21T10:60") == -1);
    CHECK(when("2026-11-21T10:00+25:00") == -1);
    CHECK(when("2026-1-2") == -1);
    CHECK_STR(why, "not a time");
    CHECK(when("2026-11-21T10") == -1);
    CHECK(when("2026-11-21T10:00:00.") == -1);
    CHECK(when("2026-11-21x") == -1);
    CHECK(when("3600") == -1);
    CHECK_STR(why, "a bare number is seconds since the epoch, and 3600 is before 2001;"
                   " for 3600 seconds ago write 3600s");
    CHECK(when("1763719200000") == -1);
    CHECK(when("1763719200 ago") == -1);
    CHECK(when("2h later") == -1);
    CHECK(when("-2h") == -1);

    CHECK_INT(size("8MB"), 8 << 20);
    CHECK_INT(size("64kb"), 64 << 10);
    CHECK_INT(size("1G"), 1 << 30);
    CHECK_INT(size("512"), 512);
    CHECK_INT(size("512 B"), 512);
    CHECK_INT(size("1.5KB"), 1536);
    CHECK_INT(size("MB"), -1);
    CHECK_INT(size("8 parsecs"), -1);
    CHECK_INT(size("99999999999999999999GB"), -1);

    char hex[9];
    unsigned char bytes[4] = { 0xde, 0xad, 0x00, 0x0f }, back[4];
    brm_hex_encode(bytes, 4, hex);
    CHECK_STR(hex, "dead000f");
    CHECK_INT(brm_hex_decode("DEAD000F", 4, back), 0);
    CHECK(memcmp(back, bytes, 4) == 0);
    CHECK_INT(brm_hex_decode("dead00xf", 4, back), -1);

    /* RFC 4648 section 10. */
    check_base64("", "");
    check_base64("f", "Zg==");
    check_base64("fo", "Zm8=");
    check_base64("foo", "Zm9v");
    check_base64("foob", "Zm9vYg==");
    check_base64("fooba", "Zm9vYmE=");
    check_base64("foobar", "Zm9vYmFy");
    unsigned char out[16];
    CHECK_INT(brm_base64_decode("Zm9vYg", 6, out), 4); /* padding is optional */
    CHECK_INT(brm_base64_decode("Zm9v!g==", 8, out), -1);
    CHECK_INT(brm_base64_decode("Z", 1, out), -1);

    char host[64];
    int port = -1;
    CHECK_INT(brm_split_addr("127.0.0.1:8080", host, sizeof(host), &port), 0);
    CHECK_STR(host, "127.0.0.1");
    CHECK_INT(port, 8080);
    CHECK_INT(brm_split_addr("[::1]:443", host, sizeof(host), &port), 0);
    CHECK_STR(host, "::1");
    CHECK_INT(port, 443);
    CHECK_INT(brm_split_addr(":0", host, sizeof(host), &port), 0);
    CHECK_STR(host, "");
    CHECK_INT(port, 0);
    CHECK_INT(brm_split_addr("localhost", host, sizeof(host), &port), -1);
    CHECK_INT(brm_split_addr("h:70000", host, sizeof(host), &port), -1);
    CHECK_INT(brm_split_addr("h:", host, sizeof(host), &port), -1);
    CHECK_INT(brm_split_addr("h:80x", host, sizeof(host), &port), -1);
    CHECK_INT(brm_split_addr("[::1:80", host, sizeof(host), &port), -1);

    /* Loopback is what the address is, not what its text starts with. */
    static const char *const loopback[] = { "127.0.0.1:1", "127.255.0.9:1", "[::1]:1",
                                            "[::ffff:127.0.0.1]:1", "localhost:1" };
    static const char *const elsewhere[] = {
        "127.attacker.example:1", "127.0.0.1.nip.io:1", "128.0.0.1:1", "0.0.0.0:1", ":1", "[::]:1",
        "[::ffff:10.0.0.1]:1",    "10.127.0.1:1",       "127.0.0.1"
    };
    for (size_t i = 0; i < BRM_ARRAY_LEN(loopback); i++) CHECK(brm_addr_loopback(loopback[i]));
    for (size_t i = 0; i < BRM_ARRAY_LEN(elsewhere); i++) CHECK(!brm_addr_loopback(elsewhere[i]));

    char *p = brm_path_join("examples", "../var");
    CHECK_STR(p, "examples/../var");
    free(p);
    p = brm_path_join("examples/", "/abs");
    CHECK_STR(p, "/abs");
    free(p);
    p = brm_path_join(".", "rules");
    CHECK_STR(p, "rules");
    free(p);
    p = brm_path_dir("examples/brume.lua");
    CHECK_STR(p, "examples");
    free(p);
    p = brm_path_dir("brume.lua");
    CHECK_STR(p, ".");
    free(p);
    p = brm_path_dir("/brume.lua");
    CHECK_STR(p, "/");
    free(p);

    CHECK_STR(json("plain", 5), "\"plain\"");
    CHECK_STR(json("a\"b\\c", 5), "\"a\\\"b\\\\c\"");
    CHECK_STR(json("l1\nl2\t\r", 7), "\"l1\\nl2\\t\\r\"");
    CHECK_STR(json("\x01\x7f", 2), "\"\\u0001\\u007f\"");
    CHECK_STR(json("nul\0x", 5), "\"nul\\u0000x\"");
    CHECK_STR(json("caf\xc3\xa9", 5), "\"caf\xc3\xa9\"");

    char ts[40];
    brm_time_iso8601(1685985159.0102212, ts, sizeof(ts));
    CHECK_STR(ts, "2023-06-05T17:12:39.010Z");

    struct brm_err e;
    char msg[128];
    brm_err_at(&e, "rules/x.lua", 12, "boom %d", 1);
    brm_err_format(&e, msg, sizeof(msg));
    CHECK_STR(msg, "rules/x.lua:12: boom 1");
    brm_err_at(&e, "rules/x.lua", 0, "no line");
    brm_err_format(&e, msg, sizeof(msg));
    CHECK_STR(msg, "rules/x.lua: no line");
    brm_err_set(&e, "plain");
    brm_err_format(&e, msg, sizeof(msg));
    CHECK_STR(msg, "plain");

    /* The journal's digest: pinned (a store moved between machines keeps
     * finding its bodies), and any change of a byte or of the length moves it. */
    CHECK(brm_hash64("", 0) == HASH64_EMPTY);
    CHECK(brm_hash64("{\"topic\":\"alarms\"}", 18) == HASH64_TOPIC);
    char buf[21] = "0123456789abcdefghij";
    uint64_t base = brm_hash64(buf, 20);
    int moved = 0;
    for (int i = 0; i < 20; i++) {
        buf[i] ^= 1;
        moved += brm_hash64(buf, 20) != base;
        buf[i] ^= 1;
    }
    CHECK_INT(moved, 20);
    CHECK(brm_hash64("a", 1) != brm_hash64("a\0", 2));
    CHECK(brm_hash64(buf, 8) != brm_hash64(buf, 9));
    CHECK(brm_hash64(buf, 16) != brm_hash64(buf, 17));
    return test_done();
}
