/* log: keys escaped as values are (no text starts a record of its own),
 * records of user text capped with a marker, the rate limit. Records are
 * read back from stderr, sent to a file for the test. */
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "log.h"
#include "test.h"
#include "util.h"

static char path[64];
static int saved_stderr;

/* Sends stderr to a fresh file. */
static void capture(void) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0);
    dup2(fd, STDERR_FILENO);
    close(fd);
}

/* What was logged since capture(), with stderr back; the caller frees it. */
static char *captured(void) {
    struct brm_buf b;
    dup2(saved_stderr, STDERR_FILENO);
    brm_buf_init(&b);
    CHECK(brm_read_file(path, 1 << 24, &b) == 0);
    brm_buf_puts(&b, "");
    return b.data;
}

static int lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

static struct brm_log_field field(const char *k, size_t klen, const char *v, size_t vlen) {
    return (struct brm_log_field){ k, v, klen, vlen };
}

#define FIELD(k, v) field(k, sizeof(k) - 1, v, sizeof(v) - 1)

static void check_keys(enum brm_log_format format) {
    brm_log_setup(BRM_LOG_INFO, format);
    static const char *const fixed[] = { "rule", "r1", "event", "e1" };
    struct brm_log_field f[] = {
        FIELD("x\nts=2024-01-01T00:00:00Z level=error msg=forged", "v"),
        FIELD("a b=c", "d\ne"),
        FIELD("level", "error"),
        FIELD("msg", "m"),
        FIELD("rule", "other"),
        FIELD("nul", "a\0b"),
        FIELD("", "empty"),
    };
    capture();
    brm_log_user(BRM_LOG_INFO, "hello\nlevel=error", 17, 0, fixed, 2, f, BRM_ARRAY_LEN(f));
    brm_log_info("plain", "key with space", "v");
    char *out = captured();
    CHECK_INT(lines(out), 2); /* nothing a rule wrote began a line */
    CHECK(strstr(out, "\nts=2024") == NULL && strstr(out, "\nlevel") == NULL);
    if (format == BRM_LOG_LOGFMT) {
        CHECK_HAS(out, " \"x\\nts=2024-01-01T00:00:00Z level=error msg=forged\"=v");
        CHECK_HAS(out, " \"a b=c\"=\"d\\ne\"");
        CHECK_HAS(out, " field.level=error field.msg=m field.rule=other");
        CHECK_HAS(out, " nul=\"a\\u0000b\" \"\"=empty");
        CHECK_HAS(out, "msg=\"hello\\nlevel=error\" rule=r1 event=e1");
        CHECK_HAS(out, " \"key with space\"=v");
    } else {
        CHECK_HAS(out, ",\"x\\nts=2024-01-01T00:00:00Z level=error msg=forged\":\"v\"");
        CHECK_HAS(out, ",\"field.level\":\"error\",\"field.msg\":\"m\",\"field.rule\":\"other\"");
        CHECK_HAS(out, "\"msg\":\"hello\\nlevel=error\",\"rule\":\"r1\",\"event\":\"e1\"");
        CHECK_HAS(out, ",\"nul\":\"a\\u0000b\"");
    }
    free(out);
}

static void check_cap(enum brm_log_format format) {
    brm_log_setup(BRM_LOG_INFO, format);
    size_t big = 8u << 20;
    char *s = malloc(big);
    memset(s, 'x', big);
    capture();
    /* An 8 MB message: cut to the cap, marked, the rest counted. */
    brm_log_user(BRM_LOG_INFO, s, big, 0, NULL, 0, NULL, 0);
    char *out = captured();
    CHECK_INT(lines(out), 1);
    CHECK(strlen(out) > BRM_LOG_USER_MAX && strlen(out) < BRM_LOG_USER_MAX + 200);
    CHECK_HAS(out, "xxx...");
    char want[64];
    snprintf(want, sizeof(want), format == BRM_LOG_JSON ? "\"truncated\":\"%zu\"" : "truncated=%zu",
             big - BRM_LOG_USER_MAX);
    CHECK_HAS(out, want);
    free(out);
    /* Fields share the room: what does not fit at all is left out, and
     * counted with the bytes passed over (OMITTED). */
    struct brm_log_field f[] = { field("a", 1, s, 3000), field("b", 1, s, 3000), FIELD("c", "d") };
    capture();
    brm_log_user(BRM_LOG_INFO, "m", 1, 7, NULL, 0, f, 3);
    out = captured();
    CHECK(strlen(out) < BRM_LOG_USER_MAX + 200);
    CHECK(strstr(out, "\"c\"") == NULL && strstr(out, " c=") == NULL);
    size_t kept_b = BRM_LOG_USER_MAX - 1 - 1 - 3000 - 1; /* msg, a, its value, b */
    snprintf(want, sizeof(want), format == BRM_LOG_JSON ? "\"truncated\":\"%zu\"" : "truncated=%zu",
             7 + (3000 - kept_b) + 2);
    CHECK_HAS(out, want);
    free(out);
    /* A cut does not split a UTF-8 character. */
    size_t n = BRM_LOG_USER_MAX + 10;
    for (size_t i = 0; i + 1 < n; i += 2) s[i] = '\xc3', s[i + 1] = '\xa9';
    capture();
    brm_log_user(BRM_LOG_INFO, s + 1, n - 1, 0, NULL, 0, NULL, 0); /* starts mid-character */
    out = captured();
    CHECK_HAS(out, "\xc3\xa9...");
    free(out);
    free(s);
}

static void check_limit(void) {
    struct brm_log_limit lim = { 0 };
    uint64_t report, t = 1000000, admitted = 0;
    for (int i = 0; i < 1000; i++) admitted += (uint64_t)brm_log_limit_admit(&lim, t, &report);
    CHECK_INT(admitted, BRM_LOG_BURST); /* the burst, then nothing */
    CHECK_INT(report, 0);
    /* It refills at BRM_LOG_RATE a second. */
    admitted = 0;
    for (int i = 0; i < 1000; i++)
        admitted += (uint64_t)brm_log_limit_admit(&lim, t + 500, &report);
    CHECK_INT(admitted, BRM_LOG_RATE / 2);
    /* The first call after the window tells what the window dropped. */
    CHECK(brm_log_limit_admit(&lim, t + BRM_LOG_WINDOW_MS, &report));
    CHECK_INT(report, 1000 - BRM_LOG_BURST + 1000 - BRM_LOG_RATE / 2);
    CHECK(brm_log_limit_admit(&lim, t + BRM_LOG_WINDOW_MS, &report));
    CHECK_INT(report, 0);
    /* A record pays for its text too: a token per KB. */
    admitted = 0;
    for (int i = 0; i < 1000; i++)
        if (brm_log_limit_admit(&lim, t + 5 * BRM_LOG_WINDOW_MS, &report)) {
            brm_log_limit_spend(&lim, 4096);
            admitted++;
        }
    CHECK_INT(admitted, BRM_LOG_BURST / 5);
    /* A quiet source gets its burst back, no more. */
    admitted = 0;
    for (int i = 0; i < 1000; i++)
        admitted += (uint64_t)brm_log_limit_admit(&lim, t + 10 * BRM_LOG_WINDOW_MS, &report);
    CHECK_INT(admitted, BRM_LOG_BURST);
}

int main(void) {
    snprintf(path, sizeof(path), "/tmp/brume-log-XXXXXX");
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    saved_stderr = dup(STDERR_FILENO);
    check_keys(BRM_LOG_LOGFMT);
    check_keys(BRM_LOG_JSON);
    check_cap(BRM_LOG_LOGFMT);
    check_cap(BRM_LOG_JSON);
    check_limit();
    unlink(path);
    return test_done();
}
