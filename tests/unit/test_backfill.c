/* backfill: paging a time window that has no cursor, the search URL, the
 * admin query, masking the token, and what a run has seen. */
#include "backfill.c"

#include "test.h"

static enum brm_backfill_step step(long start, long end, size_t n, double last, long *next) {
    return brm_backfill_next_start(start, end, n, BRM_BACKFILL_LIMIT, last, next);
}

static void paging(void) {
    long next;
    /* A short page: the window is read. */
    CHECK_INT(step(1000, 2000, 99, 1500.5, &next), BRM_BACKFILL_DONE);
    CHECK_INT(step(1000, 2000, 0, NAN, &next), BRM_BACKFILL_DONE);
    /* A full page: on from the second of its last result, which comes
     * again (so what shares that second past the page is not lost). */
    CHECK_INT(step(1000, 2000, 100, 1500.7, &next), BRM_BACKFILL_NEXT);
    CHECK_INT(next, 1500);
    CHECK_INT(step(1500, 2000, 100, 1500.9, &next), BRM_BACKFILL_CROWDED);
    CHECK_INT(next, 1501); /* a whole page in one second: on, or the same page for ever */
    CHECK_INT(step(1999, 2000, 100, 1999.5, &next), BRM_BACKFILL_DONE);   /* nothing left after */
    CHECK_INT(step(1000, 2000, 100, 2000.0, &next), BRM_BACKFILL_DONE);   /* the window's end */
    CHECK_INT(step(1000, 2000, 100, 999.0, &next), BRM_BACKFILL_CROWDED); /* times before start */
    CHECK_INT(next, 1001);
    CHECK_INT(step(1000, 2000, 100, NAN, &next), BRM_BACKFILL_CROWDED); /* no time in the answer */
    CHECK_INT(step(2000, 2000, 100, 2000.5, &next), BRM_BACKFILL_DONE);

    /* Whatever the pages say, the window shrinks at every step. */
    unsigned seed = 7;
    for (int trial = 0; trial < 1000; trial++) {
        long start = 1000, end = 1000 + (long)(rand_r(&seed) % 500), steps = 0;
        for (;;) {
            double last = (double)(start - 5 + rand_r(&seed) % 40) + 0.5;
            size_t n = rand_r(&seed) % 8 ? BRM_BACKFILL_LIMIT : rand_r(&seed) % 100;
            long was = start;
            if (step(start, end, n, last, &start) == BRM_BACKFILL_DONE) break;
            CHECK(start > was && start < end);
            if (++steps > 600) break;
        }
        CHECK(steps <= 500);
    }
}

static char name[] = "org", api[] = "https://api.eu.mist.com/", token[] = "secret-token",
            org[] = "fc7e2967-e7ef-41e6-b007-1217713de05a", hook[] = "7a11b901", site[] = "a/b c",
            local[] = "http://127.0.0.1:8080", plain[] = "plain", mist[] = "mist",
            file[] = "brume.lua";

static void urls(void) {
    struct brm_source s = { .name = name };
    s.mist.api = api;
    s.mist.token = token;
    s.mist.org_id = org;
    s.mist.webhook_id = hook;
    char *u = brm_backfill_url(&s, 1700000000, 1700003600, NULL);
    CHECK_STR(u, "https://api.eu.mist.com/api/v1/orgs/fc7e2967-e7ef-41e6-b007-1217713de05a/"
                 "webhooks/7a11b901/events/search?start=1700000000&end=1700003600&limit=100"
                 "&status=failure&sort=timestamp");
    CHECK(!strstr(u, "secret-token"));
    free(u);
    s.mist.org_id = NULL;
    s.mist.site_id = site;
    s.mist.api = local;
    u = brm_backfill_url(&s, 1, 2, "device-updowns&x=1");
    CHECK_STR(u, "http://127.0.0.1:8080/api/v1/sites/a%2Fb%20c/webhooks/7a11b901/events/search"
                 "?start=1&end=2&limit=100&status=failure&sort=timestamp"
                 "&topic=device-updowns%26x%3D1");
    free(u);
}

static void queries(void) {
    struct brm_backfill_ask ask = { .source = "site a",
                                    .since = 1700000000.25,
                                    .until = 1700003600,
                                    .topic = "alarms",
                                    .dry_run = 1 };
    struct brm_buf q;
    brm_buf_init(&q);
    brm_backfill_query(&ask, &q);
    CHECK_STR(q.data, "since=1700000000.250&until=1700003600.000&source=site%20a&topic=alarms"
                      "&dry_run=1");
    struct brm_backfill_ask back;
    char source[64], topic[64];
    struct brm_err err;
    CHECK_INT(brm_backfill_parse(q.data, q.len, &back, source, topic, 64, &err), 0);
    CHECK_STR(back.source, "site a");
    CHECK_STR(back.topic, "alarms");
    CHECK(back.since == 1700000000.25 && back.until == 1700003600 && back.dry_run);
    CHECK(!back.catch_up); /* not something a request can ask for */
    CHECK_INT(brm_backfill_parse(NULL, 0, &back, source, topic, 64, &err), 0);
    CHECK(!back.source && !back.topic && back.since == 0 && !back.dry_run);
    const char *bad[] = { "since=soon",   "until=-5", "nope=1",     "source=",      "topic=%zz",
                          "source=a%00b", "since",    "catch_up=1", "dry_run=true", "dry_run=" };
    for (size_t i = 0; i < BRM_ARRAY_LEN(bad); i++) {
        CHECK_INT(brm_backfill_parse(bad[i], strlen(bad[i]), &back, source, topic, 64, &err), -1);
        CHECK_HAS(err.msg, "bad parameters");
    }
    char big[200];
    memset(big, 'x', sizeof(big));
    memcpy(big, "source=", 7);
    CHECK_INT(brm_backfill_parse(big, sizeof(big), &back, source, topic, 64, &err), -1);
    brm_buf_reset(&q);
}

static void masking(void) {
    char s[128] = "401 for tok3n-abc, and again tok3n-abc.";
    scrub(s, "tok3n-abc");
    CHECK_STR(s, "401 for ****, and again ****.");
    char t[16] = "a ab abc";
    scrub(t, "ab");
    CHECK_STR(t, "a ** **c");
    char u[16] = "nothing";
    scrub(u, "");
    CHECK_STR(u, "nothing");
}

static void seen_sets(void) {
    struct seen s = { 0 };
    unsigned char k[KEY_BYTES];
    char text[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(text, sizeof(text), "body %d", i);
        key_of("body", text, strlen(text), k);
        CHECK(!seen_add(&s, k) || !"a new key is new");
    }
    CHECK_INT(s.n, 5000);
    int again = 0;
    for (int i = 0; i < 5000; i++) {
        snprintf(text, sizeof(text), "body %d", i);
        key_of("body", text, strlen(text), k);
        again += seen_add(&s, k);
    }
    CHECK_INT(again, 5000);
    key_of("id", "body 1", 6, k); /* a record's id is not a body */
    CHECK_INT(seen_add(&s, k), 0);
    seen_reset(&s);
}

static void checks(void) {
    struct brm_source sources[2] = { { .name = plain }, { .name = mist } };
    sources[1].mist.api = api;
    struct brm_config cfg = { .file = file, .sources = sources, .nsources = 2 };
    struct brm_err err;
    struct brm_backfill_ask ask = { 0 };
    CHECK_INT(brm_backfill_check(&cfg, &ask, &err), 0);
    ask.source = "mist";
    CHECK_INT(brm_backfill_check(&cfg, &ask, &err), 0);
    ask.source = "plain";
    CHECK_INT(brm_backfill_check(&cfg, &ask, &err), -1);
    CHECK_HAS(err.msg, "source plain does not name Mist's API: set sources.plain.mist");
    ask.source = "nope";
    CHECK_INT(brm_backfill_check(&cfg, &ask, &err), -1);
    CHECK_STR(err.msg, "no source named nope in brume.lua");
    ask.source = NULL;
    cfg.nsources = 1;
    CHECK_INT(brm_backfill_check(&cfg, &ask, &err), -1);
    CHECK_HAS(err.msg, "no source in brume.lua names Mist's API");
}

int main(void) {
    paging();
    urls();
    queries();
    masking();
    seen_sets();
    checks();
    return test_done();
}
