/* state: once, throttle, get/set/incr and dedupe marks; expiry; "once" is
 * once across threads; saving noted keys and loading them back. */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "state.h"
#include "test.h"

static struct brm_state *shared;
static int winners;
static pthread_mutex_t winners_lock = PTHREAD_MUTEX_INITIALIZER;

static void *race(void *arg) {
    (void)arg;
    for (int i = 0; i < 1000; i++) {
        char key[32];
        snprintf(key, sizeof(key), "k%d", i);
        if (brm_state_once(shared, key, 3600, 1000, NULL) == 1) {
            pthread_mutex_lock(&winners_lock);
            winners++;
            pthread_mutex_unlock(&winners_lock);
        }
        brm_state_end(shared, 1); /* as a worker does after each group's commit */
    }
    return NULL;
}

/* A second thread's first call waits for the first thread's transaction. */
static _Atomic int second_done, second_got;

static void *second(void *arg) {
    (void)arg;
    second_got = brm_state_once(shared, "iso", 3600, 1000, NULL);
    brm_state_end(shared, 1);
    second_done = 1;
    return NULL;
}

static void check_transactions(void) {
    struct brm_state *s = brm_state_new();
    double v;
    /* Undone: as if the changes never came. */
    brm_state_set(s, "keep", "1", 0, 100, NULL);
    brm_state_end(s, 1);
    CHECK_INT(brm_state_once(s, "u", 10, 100, NULL), 1);
    CHECK_INT(brm_state_seen(s, "alarms", "e1", 600, 100, NULL), 0);
    CHECK_INT(brm_state_incr(s, "n", 5, 0, 100, NULL, &v), 0);
    CHECK_INT(brm_state_set(s, "keep", "2", 0, 100, NULL), 0);
    CHECK_INT(brm_state_set(s, "keep", NULL, 0, 100, NULL), 0);
    CHECK_INT(brm_state_throttle(s, "t", 1, 60, 100, NULL), 1);
    brm_state_end(s, 0);
    CHECK_INT(brm_state_once(s, "u", 10, 100, NULL), 1);
    CHECK_INT(brm_state_seen(s, "alarms", "e1", 600, 100, NULL), 0);
    CHECK_INT(brm_state_incr(s, "n", 5, 0, 100, NULL, &v), 0);
    CHECK(v == 5);
    char *got = brm_state_get(s, "keep", 100);
    CHECK_STR(got, "1");
    free(got);
    CHECK_INT(brm_state_throttle(s, "t", 1, 60, 100, NULL), 1);
    brm_state_end(s, 1); /* kept */
    CHECK_INT(brm_state_once(s, "u", 10, 100, NULL), 0);
    CHECK_INT(brm_state_throttle(s, "t", 1, 60, 100, NULL), 0);
    brm_state_end(s, 1);
    brm_state_free(s);

    /* Isolated: another thread neither sees nor changes this one's
     * changes before they end; undone, they never were. */
    shared = brm_state_new();
    CHECK_INT(brm_state_once(shared, "iso", 3600, 1000, NULL), 1);
    pthread_t t;
    pthread_create(&t, NULL, second, NULL);
    usleep(200 * 1000);
    CHECK_INT(second_done, 0); /* waiting */
    brm_state_end(shared, 0);
    pthread_join(t, NULL);
    CHECK_INT(second_done, 1);
    CHECK_INT(second_got, 1); /* the first one's mark was undone */
    brm_state_free(shared);
}

int main(void) {
    struct brm_state *s = brm_state_new();
    struct brm_state_log log = { 0 };
    double v = 0;

    CHECK_INT(brm_state_once(s, "a", 10, 100, &log), 1);
    CHECK_INT(brm_state_once(s, "a", 10, 105, &log), 0);
    CHECK_INT(brm_state_once(s, "a", 10, 111, &log), 1); /* expired: again */
    CHECK_INT(brm_state_once(s, "b", 10, 111, &log), 1);

    for (int i = 0; i < 3; i++) CHECK_INT(brm_state_throttle(s, "t", 3, 60, 200 + i, &log), 1);
    CHECK_INT(brm_state_throttle(s, "t", 3, 60, 210, &log), 0);
    CHECK_INT(brm_state_throttle(s, "t", 3, 60, 259, &log), 0);
    CHECK_INT(brm_state_throttle(s, "t", 3, 60, 260, &log), 1); /* a new window */

    CHECK(brm_state_get(s, "x", 100) == NULL);
    CHECK_INT(brm_state_set(s, "x", "{\"n\":1}", 0, 100, &log), 0);
    char *got = brm_state_get(s, "x", 1e9);
    CHECK_STR(got, "{\"n\":1}");
    free(got);
    CHECK_INT(brm_state_set(s, "y", "\"short\"", 5, 100, &log), 0);
    got = brm_state_get(s, "y", 104);
    CHECK_STR(got, "\"short\"");
    free(got);
    CHECK(brm_state_get(s, "y", 106) == NULL);
    CHECK_INT(brm_state_set(s, "x", NULL, 0, 100, &log), 0); /* deleted */
    CHECK(brm_state_get(s, "x", 100) == NULL);
    /* Namespaces: once("x") is not state "x". */
    CHECK_INT(brm_state_once(s, "x", 10, 100, &log), 1);
    CHECK(brm_state_get(s, "x", 100) == NULL);

    CHECK_INT(brm_state_incr(s, "n", 1, 0, 100, &log, &v), 0);
    CHECK(v == 1);
    CHECK_INT(brm_state_incr(s, "n", 2.5, 0, 100, &log, &v), 0);
    CHECK(v == 3.5);
    got = brm_state_get(s, "n", 100);
    CHECK_STR(got, "3.5");
    free(got);
    CHECK_INT(brm_state_incr(s, "n", -0.5, 0, 100, &log, &v), 0);
    got = brm_state_get(s, "n", 100);
    CHECK_STR(got, "3"); /* whole numbers print as integers */
    free(got);
    brm_state_set(s, "str", "\"abc\"", 0, 100, &log);
    CHECK_INT(brm_state_incr(s, "str", 1, 0, 100, &log, &v), -2);
    CHECK_INT(brm_state_incr(s, "ttl", 1, 5, 100, &log, &v), 0);
    CHECK_INT(brm_state_incr(s, "ttl", 1, 500, 102, &log, &v), 0); /* ttl set on creation */
    CHECK(v == 2);
    CHECK(brm_state_get(s, "ttl", 106) == NULL);

    CHECK_INT(brm_state_seen(s, "alarms", "id1", 600, 100, &log), 0);
    CHECK_INT(brm_state_seen(s, "alarms", "id1", 600, 200, &log), 1);
    CHECK_INT(brm_state_seen(s, "audits", "id1", 600, 200, &log), 0); /* per topic */
    CHECK_INT(brm_state_seen(s, "alarms", "id1", 600, 701, &log), 0); /* the window passed */

    size_t before = brm_state_count(s);
    CHECK(brm_state_sweep(s, 1e12) > 0);
    CHECK(brm_state_count(s) < before);
    CHECK(brm_state_count(s) >= 2); /* the ones kept for good: "n", "str" */

    /* Save what the log noted; load it into a fresh state. */
    char dir[] = "/tmp/brume-state-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char *path = brm_xasprintf("%s/brume.db", dir);
    struct brm_err err;
    struct brm_store *st = brm_store_open(path, &err);
    CHECK(st != NULL);
    struct brm_state *s2 = brm_state_new();
    if (st) {
        struct brm_state *fresh = brm_state_new();
        struct brm_state_log log2 = { 0 };
        brm_state_once(fresh, "kept", 3600, brm_time_now(), &log2);
        brm_state_set(fresh, "v", "[1,2]", 0, brm_time_now(), &log2);
        brm_state_set(fresh, "gone", "1", 0, brm_time_now(), &log2);
        brm_state_set(fresh, "gone", NULL, 0, brm_time_now(), &log2);
        CHECK_INT(log2.n, 3);
        CHECK_INT(brm_store_begin(st, &err), 0);
        CHECK_INT(brm_state_save(fresh, st, &log2, &err), 0);
        CHECK_INT(brm_store_commit(st, &err), 0);
        CHECK_INT(brm_state_load(s2, st, brm_time_now(), &err), 0);
        CHECK_INT(brm_state_once(s2, "kept", 3600, brm_time_now(), NULL), 0);
        got = brm_state_get(s2, "v", brm_time_now());
        CHECK_STR(got, "[1,2]");
        free(got);
        CHECK(brm_state_get(s2, "gone", brm_time_now()) == NULL);
        brm_state_log_reset(&log2);
        brm_state_free(fresh);
        brm_store_close(st);
    }
    brm_state_free(s2);
    free(path);
    char *cmd = brm_xasprintf("rm -rf %s", dir);
    CHECK_INT(system(cmd), 0);
    free(cmd);

    check_transactions();

    /* Four threads race for a thousand keys: each is won exactly once. */
    shared = brm_state_new();
    pthread_t th[4];
    for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, race, NULL);
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    CHECK_INT(winners, 1000);
    brm_state_free(shared);

    brm_state_log_reset(&log);
    brm_state_free(s);
    return test_done();
}
