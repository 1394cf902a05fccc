/* wire: request heads (request line, fields, CRLF and bare LF, limits),
 * the framing fields and the smuggling cases they refuse, and chunked
 * bodies fed whole and a byte at a time. */
#include <stdlib.h>

#include "test.h"
#include "util.h"
#include "wire.h"

/* Finds the end of the head in TEXT and parses it. Returns the parser's
 * status, or -1 when no whole head was found. */
static int parse(const char *text, struct brm_wire_head *h) {
    size_t scan = 0, head_len = 0, len = strlen(text);
    if (brm_wire_head_end(text, len, &scan, &head_len) != BRM_WIRE_DONE) return -1;
    return brm_wire_parse_head(text, head_len, h);
}

/* The value of field NAME (exact case) in TEXT's head, as a static string;
 * NULL when absent. */
static const char *field(const char *text, const struct brm_wire_head *h, const char *name) {
    static char out[256];
    for (size_t i = 0; i < h->nfields; i++) {
        const struct brm_wire_field *f = &h->fields[i];
        if (f->name_len == strlen(name) && memcmp(text + f->name, name, f->name_len) == 0) {
            snprintf(out, sizeof(out), "%.*s", (int)f->value_len, text + f->value);
            return out;
        }
    }
    return NULL;
}

static void check_head_end(void) {
    size_t scan = 0, n = 0;
    CHECK_INT(brm_wire_head_end("GET / HTTP/1.1\r\n\r\nrest", 22, &scan, &n), BRM_WIRE_DONE);
    CHECK_INT(n, 18);
    scan = 0;
    CHECK_INT(brm_wire_head_end("GET / HTTP/1.1\n\nrest", 20, &scan, &n), BRM_WIRE_DONE);
    CHECK_INT(n, 16);
    scan = 0;
    CHECK_INT(brm_wire_head_end("GET / HTTP/1.1\nA: b\r\n\nx", 23, &scan, &n), BRM_WIRE_DONE);
    CHECK_INT(n, 22);
    /* A byte at a time: every prefix needs more, then it is found. */
    const char *req = "POST /a HTTP/1.1\r\nHost: x\r\n\r\n";
    scan = 0;
    for (size_t len = 0; len < strlen(req); len++)
        CHECK_INT(brm_wire_head_end(req, len, &scan, &n), BRM_WIRE_MORE);
    CHECK_INT(brm_wire_head_end(req, strlen(req), &scan, &n), BRM_WIRE_DONE);
    CHECK_INT(n, strlen(req));
    /* A CR alone does not end a line. */
    scan = 0;
    CHECK_INT(brm_wire_head_end("GET / HTTP/1.1\r\r\r\r", 18, &scan, &n), BRM_WIRE_MORE);

    /* The limit: a head of exactly BRM_WIRE_MAX_HEAD bytes is taken, one
     * byte more is too large, however the bytes arrive. */
    char *big = malloc(BRM_WIRE_MAX_HEAD + 64);
    memset(big, 'a', BRM_WIRE_MAX_HEAD + 64);
    memcpy(big, "GET / HTTP/1.1\r\nX: ", 19);
    memcpy(big + BRM_WIRE_MAX_HEAD - 4, "\r\n\r\n", 4);
    scan = 0;
    CHECK_INT(brm_wire_head_end(big, BRM_WIRE_MAX_HEAD + 64, &scan, &n), BRM_WIRE_DONE);
    CHECK_INT(n, BRM_WIRE_MAX_HEAD);
    memset(big + BRM_WIRE_MAX_HEAD - 4, 'a', 4);
    memcpy(big + BRM_WIRE_MAX_HEAD - 3, "\r\n\r\n", 4);
    scan = 0;
    CHECK_INT(brm_wire_head_end(big, BRM_WIRE_MAX_HEAD - 1, &scan, &n), BRM_WIRE_MORE);
    CHECK_INT(brm_wire_head_end(big, BRM_WIRE_MAX_HEAD + 64, &scan, &n), BRM_WIRE_TOO_LARGE);
    struct brm_wire_head h;
    CHECK_INT(brm_wire_parse_head(big, BRM_WIRE_MAX_HEAD + 1, &h), 431);
    free(big);

    CHECK_INT(brm_wire_skip_blank("\r\n\n\rGET", 7), 4);
    CHECK_INT(brm_wire_skip_blank("GET", 3), 0);
    CHECK_INT(brm_wire_skip_blank("\r\n", 2), 2);
}

static void check_request_line(void) {
    struct brm_wire_head h;
    const char *t = "POST /mist?a=1 HTTP/1.1\r\n\r\n";
    CHECK_INT(parse(t, &h), 0);
    CHECK_INT(h.method, BRM_WIRE_POST);
    CHECK_INT(h.path, 5);
    CHECK_INT(h.path_len, 5);
    CHECK(!h.http10 && h.keepalive && h.nfields == 0 && !h.has_length && !h.chunked);
    CHECK_INT(parse("GET / HTTP/1.0\n\n", &h), 0);
    CHECK(h.method == BRM_WIRE_GET && h.http10 && !h.keepalive);
    CHECK_INT(parse("HEAD /x HTTP/1.1\r\n\r\n", &h), 0);
    CHECK_INT(h.method, BRM_WIRE_HEAD);
    CHECK_INT(parse("get /x HTTP/1.1\r\n\r\n", &h), 0); /* methods are case-sensitive */
    CHECK_INT(h.method, BRM_WIRE_OTHER);
    CHECK_INT(parse("M-SEARCH * HTTP/1.1\r\n\r\n", &h), 0);
    CHECK_INT(h.method, BRM_WIRE_OTHER);

    static const struct {
        const char *req;
        int status;
    } bad[] = {
        { "POST /mist HTTP/2.0\r\n\r\n", 505 },
        { "POST /mist HTTP/3.0\r\n\r\n", 505 },
        { "POST /mist HTTP/1.10\r\n\r\n", 400 },
        { "POST /mist HTTP/1.x\r\n\r\n", 400 },
        { "POST /mist HTTPS/1.1\r\n\r\n", 400 },
        { "POST /mist http/1.1\r\n\r\n", 400 },
        { "POST /mist\r\n\r\n", 400 },
        { "POST\r\n\r\n", 400 },
        { " POST /mist HTTP/1.1\r\n\r\n", 400 },
        { "POST  /mist HTTP/1.1\r\n\r\n", 400 },
        { "POST /mist  HTTP/1.1\r\n\r\n", 400 },
        { "POST /mist HTTP/1.1 \r\n\r\n", 400 },
        { "P(ST /mist HTTP/1.1\r\n\r\n", 400 },
        { "POST /mi\rst HTTP/1.1\r\n\r\n", 400 }, /* a bare CR in the target */
        { "POST /mi\tst HTTP/1.1\r\n\r\n", 400 },
        { "POST /mi\x7fst HTTP/1.1\r\n\r\n", 400 },
        { "POST /mist HTTP/1.1\r\r\n\r\n", 400 },
        { "POST /a b HTTP/1.1\r\n\r\n", 400 },
    };
    for (size_t i = 0; i < BRM_ARRAY_LEN(bad); i++) {
        int rc = parse(bad[i].req, &h);
        if (rc != bad[i].status) fprintf(stderr, "  request line case %zu\n", i);
        CHECK_INT(rc, bad[i].status);
    }
    /* A NUL in the target (strlen would stop at it). */
    static const char nul[] = "GET /a\0b HTTP/1.1\r\n\r\n";
    CHECK_INT(brm_wire_parse_head(nul, sizeof(nul) - 1, &h), 400);
    /* Not a whole head: no request line, or no empty line. */
    CHECK_INT(brm_wire_parse_head("\r\n", 2, &h), 400);
    CHECK_INT(brm_wire_parse_head("GET / HTTP/1.1\r\n", 16, &h), 400);
    CHECK_INT(brm_wire_parse_head("", 0, &h), 400);
}

static void check_fields(void) {
    struct brm_wire_head h;
    const char *t = "POST / HTTP/1.1\r\nHost: example\r\nX-Sig:\t abc \t\r\nEmpty:\r\n"
                    "x-mixed-Case: v\n\r\n";
    CHECK_INT(parse(t, &h), 0);
    CHECK_INT(h.nfields, 4);
    CHECK_STR(field(t, &h, "Host"), "example");
    CHECK_STR(field(t, &h, "X-Sig"), "abc"); /* surrounding whitespace is not the value */
    CHECK_STR(field(t, &h, "Empty"), "");
    CHECK_STR(field(t, &h, "x-mixed-Case"), "v");
    /* Other control bytes than CR and NUL pass, as RFC 9110 allows. */
    CHECK_INT(parse("POST / HTTP/1.1\r\nX: a\x01"
                    "b\r\n\r\n",
                    &h),
              0);

    static const struct {
        const char *req;
        int status;
    } bad[] = {
        { "POST / HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n", 400 },
        { "POST / HTTP/1.1\r\nX-A: 1\r\n\tfolded\r\n\r\n", 400 },
        { "POST / HTTP/1.1\r\n leading: x\r\n\r\n", 400 },
        { "POST / HTTP/1.1\r\nNo colon here\r\n\r\n", 400 },
        { "POST / HTTP/1.1\r\n: no name\r\n\r\n", 400 },
        { "POST / HTTP/1.1\r\nBad Name: x\r\n\r\n", 400 },
        { "POST / HTTP/1.1\r\nHost : x\r\n\r\n", 400 },  /* whitespace before the colon */
        { "POST / HTTP/1.1\r\nX-A: a\rb\r\n\r\n", 400 }, /* a bare CR in a value */
        { "POST / HTTP/1.1\r\nX-A: ab\r\r\n\r\n", 400 },
        { "POST / HTTP/1.1\r\nX-A: \r\r\n\r\n", 400 },
        { "POST / HTTP/1.1\r\nX-A\r: b\r\n\r\n", 400 },
        { "POST / HTTP/1.1\r\nExpect: 200-ok\r\n\r\n", 417 },
    };
    for (size_t i = 0; i < BRM_ARRAY_LEN(bad); i++) {
        int rc = parse(bad[i].req, &h);
        if (rc != bad[i].status) fprintf(stderr, "  field case %zu\n", i);
        CHECK_INT(rc, bad[i].status);
    }
    static const char nul[] = "POST / HTTP/1.1\r\nX-A: a\0b\r\n\r\n";
    CHECK_INT(brm_wire_parse_head(nul, sizeof(nul) - 1, &h), 400);
    static const char nul_name[] = "POST / HTTP/1.1\r\nX\0A: b\r\n\r\n";
    CHECK_INT(brm_wire_parse_head(nul_name, sizeof(nul_name) - 1, &h), 400);

    /* BRM_WIRE_MAX_HEADERS fields are fine; one more is 431. */
    struct brm_buf b;
    brm_buf_init(&b);
    brm_buf_puts(&b, "POST / HTTP/1.1\r\n");
    for (int i = 0; i < BRM_WIRE_MAX_HEADERS; i++) brm_buf_printf(&b, "X-%d: %d\r\n", i, i);
    size_t before_end = b.len;
    brm_buf_puts(&b, "\r\n");
    CHECK_INT(parse(b.data, &h), 0);
    CHECK_INT(h.nfields, BRM_WIRE_MAX_HEADERS);
    CHECK_STR(field(b.data, &h, "X-63"), "63");
    b.len = before_end;
    brm_buf_puts(&b, "X-One-More: 1\r\n\r\n");
    CHECK_INT(parse(b.data, &h), 431);
    brm_buf_reset(&b);
}

static void check_framing(void) {
    struct brm_wire_head h;
    CHECK_INT(parse("POST / HTTP/1.1\r\nContent-Length: 42\r\n\r\n", &h), 0);
    CHECK(h.has_length && h.content_length == 42 && !h.chunked);
    CHECK_INT(parse("POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n", &h), 0);
    CHECK(h.has_length && h.content_length == 0);
    CHECK_INT(parse("POST / HTTP/1.1\r\nContent-Length: 999999999999999999\r\n\r\n", &h), 0);
    CHECK(h.content_length == 999999999999999999ull);
    CHECK_INT(parse("POST / HTTP/1.1\r\nContent-Length: 7\r\nContent-Length: 7\r\n\r\n", &h), 0);
    CHECK_INT(h.content_length, 7);
    CHECK_INT(parse("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n", &h), 0);
    CHECK(h.chunked && !h.has_length);
    CHECK_INT(parse("POST / HTTP/1.1\r\nTransfer-Encoding:\tchunked \r\n\r\n", &h), 0);
    CHECK(h.chunked);
    CHECK_INT(parse("POST / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n", &h), 0);
    CHECK(h.expect_continue);
    CHECK_INT(parse("POST / HTTP/1.1\r\nConnection: Upgrade, close\r\n\r\n", &h), 0);
    CHECK(!h.keepalive);
    CHECK_INT(parse("POST / HTTP/1.0\r\nConnection: foo ,Keep-Alive\r\n\r\n", &h), 0);
    CHECK(h.keepalive);
    CHECK_INT(parse("POST / HTTP/1.1\r\nConnection: keep-alive-ish\r\n\r\n", &h), 0);
    CHECK(h.keepalive); /* HTTP/1.1's default */

    /* Smuggling: any doubt about where the body ends is a refusal. */
    static const struct {
        const char *req;
        int status;
    } bad[] = {
        { "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400 },
        { "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n", 400 },
        { "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400 },
        { "POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n", 400 },
        { "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400 },
        { "POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n", 400 },
        { "POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", 400 },
        { "POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n", 400 },
        { "POST / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n", 400 },
        { "POST / HTTP/1.1\r\nContent-Length:\r\n\r\n", 400 },
        { "POST / HTTP/1.1\r\nContent-Length: 1000000000000000000\r\n\r\n", 400 }, /* 19 digits */
        { "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400 },
        { "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501 },
        { "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501 },
        { "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 501 },
        { "POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n", 501 },
        { "POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n", 400 },
        { "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\rContent-Length: 3\r\n\r\n", 400 },
        { "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400 },
    };
    for (size_t i = 0; i < BRM_ARRAY_LEN(bad); i++) {
        int rc = parse(bad[i].req, &h);
        if (rc != bad[i].status) fprintf(stderr, "  framing case %zu\n", i);
        CHECK_INT(rc, bad[i].status);
    }
}

/* Decodes TEXT (after the head) whole with a body cap MAX. Returns the
 * status; BODY gets the decoded body and *END where the request ended. */
static int dechunk(const char *text, uint64_t max, char *body, size_t *end) {
    struct brm_wire_chunked ch = { 0 };
    size_t len = strlen(text);
    char *buf = brm_xstrdup(text);
    int st = brm_wire_chunked(&ch, buf, &len, max);
    if (st == BRM_WIRE_DONE) {
        snprintf(body, 256, "%.*s", (int)ch.out, buf);
        *end = ch.in;
    }
    free(buf);
    return st;
}

/* The same fed a byte at a time, as a slow client sends it: the buffer
 * only ever holds body bytes and the framing not decoded yet. */
static int dechunk_slowly(const char *text, uint64_t max, char *body) {
    struct brm_wire_chunked ch = { 0 };
    size_t n = strlen(text), len = 0;
    char *buf = malloc(n + 1);
    int st = BRM_WIRE_MORE;
    for (size_t i = 0; i < n && st == BRM_WIRE_MORE; i++) {
        buf[len++] = text[i];
        st = brm_wire_chunked(&ch, buf, &len, max);
        if (st == BRM_WIRE_MORE)
            CHECK(len >= ch.out && len - ch.out <= BRM_WIRE_MAX_CHUNK_LINE + 1);
    }
    if (st == BRM_WIRE_DONE) snprintf(body, 256, "%.*s", (int)ch.out, buf);
    free(buf);
    return st;
}

static void check_chunked(void) {
    char body[256], slow[256];
    size_t end = 0;
    const char *t =
        "5\r\nhello\r\n1;ext=1;q=\"x\"\r\n \r\n6\r\nworld!\r\n0\r\nTrailer: x\r\n\r\nNEXT";
    CHECK_INT(dechunk(t, 1000, body, &end), BRM_WIRE_DONE);
    CHECK_STR(body, "hello world!");
    CHECK_STR(t + end, "NEXT"); /* the next request starts there */
    CHECK_INT(dechunk_slowly(t, 1000, slow), BRM_WIRE_DONE);
    CHECK_STR(slow, "hello world!");
    CHECK_INT(dechunk("0\r\n\r\n", 1000, body, &end), BRM_WIRE_DONE);
    CHECK_STR(body, "");
    CHECK_INT(end, 5);
    CHECK_INT(dechunk("A\nabcdefghij\n0\n\n", 1000, body, &end), BRM_WIRE_DONE); /* bare LF */
    CHECK_STR(body, "abcdefghij");
    CHECK_INT(dechunk("00000003 ; x\r\nabc\r\n0\r\n\r\n", 1000, body, &end), BRM_WIRE_DONE);
    CHECK_STR(body, "abc");
    CHECK_INT(dechunk("3\r\nabc\r\n0\r\n", 1000, body, &end), BRM_WIRE_MORE);
    CHECK_INT(dechunk("3\r\nab", 1000, body, &end), BRM_WIRE_MORE);

    /* At the cap and past it, in one chunk or across several. */
    CHECK_INT(dechunk("4\r\nabcd\r\n0\r\n\r\n", 4, body, &end), BRM_WIRE_DONE);
    CHECK_INT(dechunk("5\r\n", 4, body, &end), BRM_WIRE_TOO_LARGE);
    CHECK_INT(dechunk("2\r\nab\r\n3\r\n", 4, body, &end), BRM_WIRE_TOO_LARGE);
    CHECK_INT(dechunk("ffffffffffffffff\r\n", UINT64_MAX - 1, body, &end), BRM_WIRE_TOO_LARGE);
    CHECK_INT(dechunk("1\r\na\r\nffffffffffffffff\r\n", UINT64_MAX, body, &end),
              BRM_WIRE_TOO_LARGE); /* no wrap-around in the running total */

    static const char *const bad[] = {
        "zz\r\n",
        "\r\n",
        " 5\r\nhello\r\n0\r\n\r\n",
        "-1\r\n",
        "0x5\r\nhello\r\n0\r\n\r\n",
        "5x\r\nhello\r\n0\r\n\r\n",
        "10000000000000000\r\n", /* 17 hex digits: past 64 bits */
        "00000000000000005\r\nhello\r\n0\r\n\r\n",
        "2\r\nabc\r\n", /* more data than the size said */
        "2\r\nab\r\r\n0\r\n\r\n",
        "2\r\nabX\r\n",
        "5;a\rb\r\nhello\r\n0\r\n\r\n", /* a bare CR in an extension */
        "0\r\nX: a\rb\r\n\r\n",         /* ...in a trailer */
    };
    for (size_t i = 0; i < BRM_ARRAY_LEN(bad); i++) {
        int st = dechunk(bad[i], 1000, body, &end);
        if (st != BRM_WIRE_BAD) fprintf(stderr, "  chunk case %zu\n", i);
        CHECK_INT(st, BRM_WIRE_BAD);
        CHECK_INT(dechunk_slowly(bad[i], 1000, slow), BRM_WIRE_BAD);
    }
    static const char nul[] = "0\r\nX: a\0b\r\n\r\n";
    struct brm_wire_chunked ch = { 0 };
    char buf[sizeof(nul)];
    memcpy(buf, nul, sizeof(nul));
    size_t len = sizeof(nul) - 1;
    CHECK_INT(brm_wire_chunked(&ch, buf, &len, 1000), BRM_WIRE_BAD);

    /* A size line that never ends is refused once it passes the limit. */
    char *longline = malloc(BRM_WIRE_MAX_CHUNK_LINE + 10);
    memset(longline, 0, BRM_WIRE_MAX_CHUNK_LINE + 10);
    memcpy(longline, "1;", 2);
    memset(longline + 2, 'e', BRM_WIRE_MAX_CHUNK_LINE - 2);
    CHECK_INT(dechunk(longline, 1000, body, &end), BRM_WIRE_MORE);
    memcpy(longline + BRM_WIRE_MAX_CHUNK_LINE, "ee", 2);
    CHECK_INT(dechunk(longline, 1000, body, &end), BRM_WIRE_BAD);
    memcpy(longline + BRM_WIRE_MAX_CHUNK_LINE, "e\n", 2);
    CHECK_INT(dechunk(longline, 1000, body, &end), BRM_WIRE_BAD);
    free(longline);

    /* Framing is dropped as it is decoded: many small chunks of a body
     * never make the buffer hold more than the body and one line. */
    struct brm_buf b;
    brm_buf_init(&b);
    for (int i = 0; i < 500; i++) brm_buf_puts(&b, "1;padding-padding-padding\r\nx\r\n");
    memset(&ch, 0, sizeof(ch));
    len = b.len;
    CHECK_INT(brm_wire_chunked(&ch, b.data, &len, 1000), BRM_WIRE_MORE);
    CHECK_INT(ch.out, 500);
    CHECK_INT(len, 500);
    brm_buf_reset(&b);
}

int main(void) {
    check_head_end();
    check_request_line();
    check_fields();
    check_framing();
    check_chunked();
    return test_done();
}
