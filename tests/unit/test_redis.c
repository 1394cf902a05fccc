/* redis: URLs read and refused, what is shown of them (no password), the
 * protocol a request is written in, script digests; and the client against
 * a small fake server on a thread of its own: pipelined replies in order,
 * an unknown script sent again as its text, an unreachable server (UNSENT),
 * an answer that never comes (LOST, or sent again after reconnecting); a
 * second user's client with no scripts. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "redis.h"
#include "test.h"

static void check_urls(void) {
    struct brm_redis_cfg c = { 0 };
    struct brm_err err;
    char shown[300];
    CHECK_INT(brm_redis_parse_url("redis://cache", &c, &err), 0);
    CHECK_STR(c.host, "cache");
    CHECK_INT(c.port, 6379);
    CHECK_INT(c.db, 0);
    CHECK(!c.tls && !c.password && !c.user);
    CHECK_INT(brm_redis_parse_url("rediss://:s3cret@10.0.0.5:6380/2", &c, &err), 0);
    CHECK_STR(c.host, "10.0.0.5");
    CHECK_INT(c.port, 6380);
    CHECK_INT(c.db, 2);
    CHECK(c.tls);
    CHECK_STR(c.password, "s3cret");
    CHECK(c.user == NULL);
    brm_redis_cfg_display(&c, shown, sizeof(shown));
    CHECK_STR(shown, "rediss://10.0.0.5:6380/2");
    CHECK_INT(brm_redis_parse_url("redis://brume:p%40ss%3Aw@h:1/", &c, &err), 0);
    CHECK_STR(c.user, "brume");
    CHECK_STR(c.password, "p@ss:w");
    CHECK_INT(c.db, 0);
    CHECK_INT(brm_redis_parse_url("redis://justpassword@h", &c, &err), 0); /* as redis-cli */
    CHECK_STR(c.password, "justpassword");
    CHECK(c.user == NULL);
    CHECK_INT(brm_redis_parse_url("redis://[::1]:7000/15", &c, &err), 0);
    CHECK_STR(c.host, "::1");
    CHECK_INT(c.port, 7000);
    brm_redis_cfg_display(&c, shown, sizeof(shown));
    CHECK_STR(shown, "redis://[::1]:7000/15");

    static const struct {
        const char *url, *why;
    } bad[] = {
        { "http://h:6379", "expected redis://" },
        { "redis://", "no host" },
        { "redis://:6379/0", "no host" },
        { "redis://h:0", "1 to 65535" },
        { "redis://h:65536", "1 to 65535" },
        { "redis://h:12x", "1 to 65535" },
        { "redis://h/zero", "must be a number" },
        { "redis://h/0?timeout=1", "unexpected '?timeout=1'" },
        { "redis://:@h", "password before '@' is empty" },
        { "redis://:pw%4@h", "bad %-escape" },
        { "redis://:pw%00@h", "bad %-escape" },
        { "redis://[::1:6379", "closing ']'" },
    };
    for (size_t i = 0; i < BRM_ARRAY_LEN(bad); i++) {
        CHECK_INT(brm_redis_parse_url(bad[i].url, &c, &err), -1);
        CHECK_HAS(err.msg, bad[i].why);
        CHECK(c.host == NULL && c.password == NULL); /* nothing kept */
    }
    struct brm_redis_cfg s = { 0 };
    s.nsentinels = 2;
    s.sentinels[0] = brm_xstrdup("a:26379");
    s.sentinels[1] = brm_xstrdup("b:26379");
    s.master = brm_xstrdup("mymaster");
    s.password = brm_xstrdup("hidden");
    s.db = 1;
    struct brm_redis_cfg copy;
    brm_redis_cfg_copy(&copy, &s);
    brm_redis_cfg_display(&copy, shown, sizeof(shown));
    CHECK_STR(shown, "redis://sentinel:mymaster(2 sentinels)/1");
    CHECK(strstr(shown, "hidden") == NULL);
    CHECK_STR(copy.sentinels[1], "b:26379");
    brm_redis_cfg_reset(&copy);
    brm_redis_cfg_reset(&s);
    CHECK(s.master == NULL && s.nsentinels == 0);
}

static void check_format(void) {
    struct brm_redis_req *q = brm_redis_req_new();
    struct brm_buf out;
    brm_buf_init(&out);
    brm_redis_arg_str(q, "SET");
    brm_redis_arg(q, "k\0ey", 4); /* binary safe */
    brm_redis_arg_num(q, 1.5);
    brm_redis_arg_num(q, 3);
    brm_redis_arg_int(q, -7);
    brm_redis_format(q, 0, &out);
    CHECK_INT(out.len, 47);
    CHECK(memcmp(out.data, "*5\r\n$3\r\nSET\r\n$4\r\nk\0ey\r\n$3\r\n1.5\r\n$1\r\n3\r\n$2\r\n-7\r\n",
                 47) == 0);
    brm_redis_req_free(q);

    struct brm_redis_script sc;
    brm_redis_script_init(&sc, "return 1");
    CHECK_STR(sc.sha, "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"); /* as Redis's SCRIPT LOAD says */
    q = brm_redis_req_new();
    brm_redis_eval(q, &sc, 1);
    brm_redis_arg_str(q, "key");
    out.len = 0;
    brm_redis_format(q, 0, &out);
    CHECK_STR(out.data, "*4\r\n$7\r\nEVALSHA\r\n$40\r\ne0e1f9fabfc9d4800c877a703b823ac0578ff8db\r\n"
                        "$1\r\n1\r\n$3\r\nkey\r\n");
    out.len = 0;
    brm_redis_format(q, 1, &out);
    CHECK_STR(out.data, "*4\r\n$4\r\nEVAL\r\n$8\r\nreturn 1\r\n$1\r\n1\r\n$3\r\nkey\r\n");
    brm_redis_req_free(q);
    brm_buf_reset(&out);
}

/* ---- a fake server ---------------------------------------------------------- */

/* It answers PING, SCRIPT LOAD (the digest of what it was given), ECHO,
 * EVALSHA (NOSCRIPT) and EVAL ("+ran"); HANG it never answers, and it
 * closes that connection a moment later. It counts the EVALs it ran. */
struct fake {
    int fd, port;
    pthread_t thread;
    _Atomic int stop, evals, connections, hangs;
};

static void reply(int fd, const char *s) {
    if (write(fd, s, strlen(s)) < 0) {
    }
}

static void serve(struct fake *f, int fd) {
    redisReader *rd = redisReaderCreate();
    char buf[4096];
    for (;;) {
        void *r = NULL;
        if (redisReaderGetReply(rd, &r) != REDIS_OK) break;
        if (!r) {
            ssize_t n = read(fd, buf, sizeof(buf));
            if (n <= 0) break;
            redisReaderFeed(rd, buf, (size_t)n);
            continue;
        }
        redisReply *cmd = r;
        const char *name = cmd->element[0]->str;
        if (strcmp(name, "PING") == 0) {
            reply(fd, "+PONG\r\n");
        } else if (strcmp(name, "SCRIPT") == 0) {
            struct brm_redis_script s;
            char line[64];
            brm_redis_script_init(&s, cmd->element[2]->str);
            snprintf(line, sizeof(line), "$40\r\n%s\r\n", s.sha);
            reply(fd, line);
        } else if (strcmp(name, "ECHO") == 0) {
            char line[128];
            snprintf(line, sizeof(line), "$%zu\r\n%s\r\n", cmd->element[1]->len,
                     cmd->element[1]->str);
            reply(fd, line);
        } else if (strcmp(name, "EVALSHA") == 0) {
            reply(fd, "-NOSCRIPT No matching script. Please use EVAL.\r\n");
        } else if (strcmp(name, "EVAL") == 0) {
            f->evals++;
            reply(fd, "+ran\r\n");
        } else if (strcmp(name, "HANG") == 0) {
            freeReplyObject(r);
            if (f->hangs++ == 0) { /* the first time: no answer, then a close */
                usleep(600 * 1000);
                break;
            }
            reply(fd, "+late\r\n");
            continue;
        } else {
            reply(fd, "-ERR unknown\r\n");
        }
        freeReplyObject(r);
    }
    redisReaderFree(rd);
    close(fd);
}

static void *fake_main(void *arg) {
    struct fake *f = arg;
    while (!f->stop) {
        int fd = accept(f->fd, NULL, NULL);
        if (fd < 0) break;
        f->connections++;
        serve(f, fd);
    }
    return NULL;
}

static void fake_start(struct fake *f) {
    memset(f, 0, sizeof(*f));
    f->fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof(a);
    CHECK_INT(bind(f->fd, (struct sockaddr *)&a, sizeof(a)), 0);
    CHECK_INT(listen(f->fd, 8), 0);
    getsockname(f->fd, (struct sockaddr *)&a, &len);
    f->port = ntohs(a.sin_port);
    pthread_create(&f->thread, NULL, fake_main, f);
}

static void fake_stop(struct fake *f) {
    f->stop = 1;
    shutdown(f->fd, SHUT_RDWR);
    close(f->fd);
    pthread_join(f->thread, NULL);
}

/* ---- the client ---------------------------------------------------------------- */

struct seen {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int done, ups, downs, losts;
    char order[512];
    char why[256];
    enum brm_redis_status last;
};

static struct seen seen = {
    PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, "", "", BRM_REDIS_REPLY
};

static void on_state(void *arg, int up, const char *why) {
    (void)arg;
    pthread_mutex_lock(&seen.lock);
    if (up) {
        seen.ups++;
    } else {
        seen.downs++;
        snprintf(seen.why, sizeof(seen.why), "%s", why ? why : "");
    }
    pthread_mutex_unlock(&seen.lock);
}

static void on_reply(struct brm_redis_req *q) {
    pthread_mutex_lock(&seen.lock);
    seen.last = q->status;
    if (q->status == BRM_REDIS_REPLY && q->reply->type == REDIS_REPLY_STRING)
        strncat(seen.order, q->reply->str, sizeof(seen.order) - strlen(seen.order) - 1);
    else if (q->status == BRM_REDIS_REPLY && q->reply->type == REDIS_REPLY_STATUS)
        strncat(seen.order, q->reply->str, sizeof(seen.order) - strlen(seen.order) - 1);
    seen.done++;
    pthread_cond_signal(&seen.cond);
    pthread_mutex_unlock(&seen.lock);
    brm_redis_req_free(q);
}

static void on_lost(struct brm_redis_req *q) {
    (void)q;
    pthread_mutex_lock(&seen.lock);
    seen.losts++;
    pthread_mutex_unlock(&seen.lock);
}

static void wait_done(int n) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 10;
    pthread_mutex_lock(&seen.lock);
    while (seen.done < n && pthread_cond_timedwait(&seen.cond, &seen.lock, &until) == 0) {
    }
    pthread_mutex_unlock(&seen.lock);
}

static void reset_seen(void) {
    pthread_mutex_lock(&seen.lock);
    seen.done = seen.ups = seen.downs = seen.losts = 0;
    seen.order[0] = seen.why[0] = '\0';
    pthread_mutex_unlock(&seen.lock);
}

static struct brm_redis_req *command(const char *name, const char *arg) {
    struct brm_redis_req *q = brm_redis_req_new();
    brm_redis_arg_str(q, name);
    if (arg) brm_redis_arg_str(q, arg);
    q->done = on_reply;
    return q;
}

static void check_client(void) {
    struct brm_err err;
    struct brm_redis_script sc;
    brm_redis_script_init(&sc, "return 'x'");
    const struct brm_redis_script *scripts[] = { &sc };
    struct fake f;
    fake_start(&f);

    struct brm_redis_cfg cfg = { .host = (char *)"127.0.0.1", .port = f.port, .timeout = 0.3 };
    reset_seen();
    struct brm_redis *r = brm_redis_new(&cfg, scripts, 1, on_state, NULL);
    CHECK_INT(brm_redis_start(r, &err), 0);
    CHECK_INT(brm_redis_wait(r, 5), 1);
    char digits[3];
    for (int i = 0; i < 50; i++) { /* pipelined: answered in order */
        snprintf(digits, sizeof(digits), "%d", i % 10);
        brm_redis_call(r, command("ECHO", digits));
    }
    wait_done(50);
    CHECK_STR(seen.order, "01234567890123456789012345678901234567890123456789");
    /* An EVALSHA the server does not know goes again as EVAL. */
    struct brm_redis_req *q = brm_redis_req_new();
    brm_redis_eval(q, &sc, 0);
    q->done = on_reply;
    seen.order[0] = '\0';
    brm_redis_call(r, q);
    wait_done(51);
    CHECK_STR(seen.order, "ran");
    CHECK_INT(f.evals, 1);
    /* No answer within the timeout: LOST, the server said to be down; a
     * request that may run twice goes again once it is back. */
    q = command("HANG", NULL);
    q->retry = 1;
    q->lost = on_lost;
    brm_redis_call(r, q);
    wait_done(52);
    CHECK_INT(seen.last, BRM_REDIS_REPLY);
    CHECK_STR(seen.order, "ranlate");
    CHECK_INT(seen.losts, 1);
    CHECK(seen.downs >= 1 && seen.ups >= 2);
    CHECK_HAS(seen.why, "no answer within 0.3s");
    CHECK(f.connections >= 2);
    q = command("HANG", NULL); /* hangs++ is 2 now: answered */
    brm_redis_call(r, q);
    wait_done(53);
    brm_redis_free(r);

    /* Without retry a request lost with the connection is LOST. */
    f.hangs = 0;
    reset_seen();
    r = brm_redis_new(&cfg, scripts, 1, on_state, NULL);
    CHECK_INT(brm_redis_start(r, &err), 0);
    CHECK_INT(brm_redis_wait(r, 5), 1);
    brm_redis_call(r, command("HANG", NULL));
    wait_done(1);
    CHECK_INT(seen.last, BRM_REDIS_LOST);
    brm_redis_free(r);

    /* Another user's client (a target, say): no scripts, no state
     * callback; its commands go and come back as the state's do. */
    reset_seen();
    r = brm_redis_new(&cfg, NULL, 0, NULL, NULL);
    CHECK_INT(brm_redis_start(r, &err), 0);
    CHECK_INT(brm_redis_wait(r, 5), 1);
    brm_redis_call(r, command("ECHO", "a"));
    brm_redis_call(r, command("PING", NULL));
    brm_redis_call(r, command("ECHO", "b"));
    wait_done(3);
    CHECK_STR(seen.order, "aPONGb");
    CHECK_INT(seen.ups, 0); /* nobody to tell */
    brm_redis_free(r);
    fake_stop(&f);

    /* Nobody there: down at once, what comes is UNSENT. */
    reset_seen();
    cfg.port = f.port; /* closed now */
    r = brm_redis_new(&cfg, scripts, 1, on_state, NULL);
    CHECK_INT(brm_redis_start(r, &err), 0);
    CHECK_INT(brm_redis_wait(r, 5), 0);
    CHECK_INT(seen.downs, 1);
    CHECK_HAS(seen.why, "Connection refused");
    brm_redis_call(r, command("PING", NULL));
    wait_done(1);
    CHECK_INT(seen.last, BRM_REDIS_UNSENT);
    CHECK(!brm_redis_up(r));
    brm_redis_free(r);
}

int main(void) {
    check_urls();
    check_format();
    check_client();
    return test_done();
}
