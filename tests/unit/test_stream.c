/* stream: which error replies may pass; a URL that is not Redis's; an
 * entry for a server that is not there fails on the base's thread, to be
 * tried again; a cancelled entry calls nothing. (It includes stream.c for
 * its statics.) */
#include "stream.c"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "test.h"

struct seen {
    int calls, failed, retry;
    char error[300];
    struct event_base *base;
};

static void done(void *arg, const struct brm_stream_result *r) {
    struct seen *s = arg;
    s->calls++;
    s->failed = r->failed;
    s->retry = r->retry;
    snprintf(s->error, sizeof(s->error), "%s", r->error ? r->error : "");
    event_base_loopbreak(s->base);
}

/* A port on 127.0.0.1 that nothing listens on. */
static int closed_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t n = sizeof(a);
    bind(fd, (struct sockaddr *)&a, sizeof(a));
    getsockname(fd, (struct sockaddr *)&a, &n);
    close(fd);
    return ntohs(a.sin_port);
}

static void check_passing(void) {
    CHECK(passing("LOADING Redis is loading the dataset in memory"));
    CHECK(passing("OOM command not allowed when used memory > 'maxmemory'."));
    CHECK(passing("READONLY You can't write against a read only replica."));
    CHECK(!passing("WRONGTYPE Operation against a key holding the wrong kind of value"));
    CHECK(!passing("NOPERM this user has no permissions"));
    CHECK(!passing("OOMX"));
}

static void check_urls(void) {
    struct brm_err err;
    CHECK_INT(brm_stream_check("redis://127.0.0.1:6379/0", &err), 0);
    CHECK_INT(brm_stream_check("redis://127.0.0.1:99999/0", &err), -1);
    CHECK_HAS(err.msg, "port");
    CHECK_INT(brm_stream_check(NULL, &err), -1);
}

static void check_unreachable(void) {
    struct brm_err err;
    struct event_base *base = event_base_new();
    char url[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d/0", closed_port());
    struct brm_stream *s = brm_stream_new(base, "t", url, 1, &err);
    CHECK(s != NULL);
    if (!s) {
        event_base_free(base);
        return;
    }
    const char *fields[] = { "key: k1", "rule: r" };
    struct brm_stream_entry e = { "mist", 10, 0, fields, 2, "{}", 2 };
    struct seen seen = { .base = base }, cancelled = { .base = base };
    brm_stream_cancel(brm_stream_add(s, &e, done, &cancelled));
    brm_stream_add(s, &e, done, &seen);
    struct timeval tv = { 10, 0 };
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
    CHECK(seen.calls == 1 && seen.failed && seen.retry);
    CHECK_HAS(seen.error, "Redis is unreachable");
    CHECK_INT(cancelled.calls, 0);
    /* Queued when the client goes: handed back, to be tried again. */
    struct seen last = { .base = base };
    brm_stream_add(s, &e, done, &last);
    brm_stream_free(s);
    CHECK(last.calls == 1 && last.failed && last.retry);
    event_base_free(base);
}

int main(void) {
    check_passing();
    check_urls();
    check_unreachable();
    return test_done();
}
