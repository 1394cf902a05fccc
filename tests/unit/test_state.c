/* state: once, throttle, get/set/incr and dedupe marks; expiry; keys owned
 * by a transaction until it is released (busy for the others, never waited
 * for); a body undone alone; saving a transaction's keys and loading them
 * back; the sweep in steps. */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "state.h"
#include "test.h"

static char *get(struct brm_state *s, const char *key, double now, struct brm_state_txn *t) {
    char *v = NULL;
    CHECK_INT(brm_state_get(s, key, now, t, &v), 0);
    return v;
}

static void check_values(void) {
    struct brm_state *s = brm_state_new();
    double v = 0;
    CHECK_INT(brm_state_once(s, "a", 10, 100, NULL), 1);
    CHECK_INT(brm_state_once(s, "a", 10, 105, NULL), 0);
    CHECK_INT(brm_state_once(s, "a", 10, 111, NULL), 1); /* expired: again */
    CHECK_INT(brm_state_once(s, "b", 10, 111, NULL), 1);

    for (int i = 0; i < 3; i++) CHECK_INT(brm_state_throttle(s, "t", 3, 60, 200 + i, NULL), 1);
    CHECK_INT(brm_state_throttle(s, "t", 3, 60, 210, NULL), 0);
    CHECK_INT(brm_state_throttle(s, "t", 3, 60, 259, NULL), 0);
    CHECK_INT(brm_state_throttle(s, "t", 3, 60, 260, NULL), 1); /* a new window */

    CHECK(get(s, "x", 100, NULL) == NULL);
    CHECK_INT(brm_state_set(s, "x", "{\"n\":1}", 0, 100, NULL), 0);
    char *got = get(s, "x", 1e9, NULL);
    CHECK_STR(got, "{\"n\":1}");
    free(got);
    CHECK_INT(brm_state_set(s, "y", "\"short\"", 5, 100, NULL), 0);
    got = get(s, "y", 104, NULL);
    CHECK_STR(got, "\"short\"");
    free(got);
    CHECK(get(s, "y", 106, NULL) == NULL);
    CHECK_INT(brm_state_set(s, "x", NULL, 0, 100, NULL), 0); /* deleted */
    CHECK(get(s, "x", 100, NULL) == NULL);
    /* Namespaces: once("x") is not state "x". */
    CHECK_INT(brm_state_once(s, "x", 10, 100, NULL), 1);
    CHECK(get(s, "x", 100, NULL) == NULL);

    CHECK_INT(brm_state_incr(s, "n", 1, 0, 100, NULL, &v), 0);
    CHECK(v == 1);
    CHECK_INT(brm_state_incr(s, "n", 2.5, 0, 100, NULL, &v), 0);
    CHECK(v == 3.5);
    got = get(s, "n", 100, NULL);
    CHECK_STR(got, "3.5");
    free(got);
    CHECK_INT(brm_state_incr(s, "n", -0.5, 0, 100, NULL, &v), 0);
    got = get(s, "n", 100, NULL);
    CHECK_STR(got, "3"); /* whole numbers print as integers */
    free(got);
    brm_state_set(s, "str", "\"abc\"", 0, 100, NULL);
    CHECK_INT(brm_state_incr(s, "str", 1, 0, 100, NULL, &v), -2);
    CHECK_INT(brm_state_incr(s, "ttl", 1, 5, 100, NULL, &v), 0);
    CHECK_INT(brm_state_incr(s, "ttl", 1, 500, 102, NULL, &v), 0); /* ttl set on creation */
    CHECK(v == 2);
    CHECK(get(s, "ttl", 106, NULL) == NULL);

    CHECK_INT(brm_state_seen(s, "alarms", "id1", 600, 100, NULL), 0);
    CHECK_INT(brm_state_seen(s, "alarms", "id1", 600, 200, NULL), 1);
    CHECK_INT(brm_state_seen(s, "audits", "id1", 600, 200, NULL), 0); /* per topic */
    CHECK_INT(brm_state_seen(s, "alarms", "id1", 600, 701, NULL), 0); /* the window passed */

    /* The sweep goes a slice at a time, and keeps what lives. */
    size_t before = brm_state_count(s);
    long gone = 0;
    for (int i = 0; i < 1024; i++) gone += brm_state_sweep(s, 1, 1e12, NULL, NULL);
    CHECK(gone > 0);
    CHECK_INT(brm_state_count(s), before - (size_t)gone);
    CHECK_INT(brm_state_count(s), 2); /* the ones kept for good: "n", "str" */
    brm_state_free(s);
}

/* Keys a transaction changed are its own until it is released. */
static void check_ownership(void) {
    struct brm_state *s = brm_state_new();
    struct brm_state_txn *a = brm_state_begin(s), *b = brm_state_begin(s);
    double v;
    char *got;
    CHECK(brm_state_txn_empty(a));
    CHECK_INT(brm_state_once(s, "k", 10, 100, a), 1);
    CHECK(!brm_state_txn_empty(a));
    CHECK_INT(brm_state_once(s, "k", 10, 100, a), 0); /* its own change: seen */
    CHECK_INT(brm_state_once(s, "k", 10, 100, b), BRM_STATE_BUSY);
    CHECK_INT(brm_state_seen(s, "alarms", "e", 60, 100, a), 0);
    CHECK_INT(brm_state_seen(s, "alarms", "e", 60, 100, b), BRM_STATE_BUSY);
    CHECK_INT(brm_state_set(s, "v", "1", 0, 100, a), 0);
    CHECK_INT(brm_state_get(s, "v", 100, b, &got), BRM_STATE_BUSY);
    CHECK(got == NULL);
    CHECK_INT(brm_state_incr(s, "v", 1, 0, 100, b, &v), BRM_STATE_BUSY);
    CHECK_INT(brm_state_set(s, "v", NULL, 0, 100, b), BRM_STATE_BUSY);
    CHECK_INT(brm_state_throttle(s, "t", 1, 60, 100, a), 1);
    CHECK_INT(brm_state_throttle(s, "t", 1, 60, 100, b), BRM_STATE_BUSY);
    /* Other keys are free, and a key only read is not taken. */
    CHECK_INT(brm_state_once(s, "other", 10, 100, b), 1);
    CHECK_INT(brm_state_get(s, "nothing", 100, a, &got), 0);
    CHECK_INT(brm_state_set(s, "nothing", "2", 0, 100, b), 0);
    /* Outside any transaction (offline runs) a busy key is busy too. */
    CHECK_INT(brm_state_once(s, "k", 10, 100, NULL), BRM_STATE_BUSY);
    /* Kept: the keys are free, with A's values; B was told busy. */
    CHECK_INT(brm_state_release(a, 1), 1);
    CHECK_INT(brm_state_once(s, "k", 10, 100, b), 0);
    got = get(s, "v", 100, b);
    CHECK_STR(got, "1");
    free(got);
    CHECK_INT(brm_state_throttle(s, "t", 1, 60, 100, b), 0); /* A used the window */
    /* Undone: as if B never came; nobody waited. */
    CHECK_INT(brm_state_incr(s, "v", 5, 0, 100, b, &v), 0);
    CHECK(v == 6);
    CHECK_INT(brm_state_release(b, 0), 0);
    struct brm_state_txn *c = brm_state_begin(s);
    got = get(s, "v", 100, c);
    CHECK_STR(got, "1");
    free(got);
    CHECK_INT(brm_state_once(s, "other", 10, 100, c), 1);
    CHECK(get(s, "nothing", 100, c) == NULL);
    brm_state_release(c, 1);
    CHECK_INT(brm_state_release(NULL, 1), 0);
    brm_state_free(s);
}

/* A body of a transaction undone alone: what it changed goes back to what
 * the bodies before it left, and keys only it took are free again. */
static void check_bodies(void) {
    struct brm_state *s = brm_state_new();
    struct brm_state_txn *a = brm_state_begin(s), *b = brm_state_begin(s);
    double v;
    brm_state_mark(a);
    CHECK_INT(brm_state_incr(s, "n", 1, 0, 100, a, &v), 0);
    size_t mark = brm_state_mark(a);
    CHECK_INT(brm_state_incr(s, "n", 10, 0, 100, a, &v), 0);
    CHECK_INT(brm_state_incr(s, "n", 100, 0, 100, a, &v), 0);
    CHECK(v == 111);
    CHECK_INT(brm_state_once(s, "only-second", 10, 100, a), 1);
    CHECK_INT(brm_state_once(s, "only-second", 10, 100, b), BRM_STATE_BUSY);
    CHECK_INT(brm_state_rollback(a, mark), 1); /* B waited for a key now free */
    CHECK_INT(brm_state_once(s, "only-second", 10, 100, b), 1);
    CHECK_INT(brm_state_incr(s, "n", 0, 0, 100, a, &v), 0);
    CHECK(v == 1); /* the first body's change stays, still A's */
    CHECK_INT(brm_state_incr(s, "n", 0, 0, 100, b, &v), BRM_STATE_BUSY);
    brm_state_release(a, 0);
    brm_state_release(b, 0);
    char *got = get(s, "n", 100, NULL);
    CHECK(got == NULL);
    free(got);
    brm_state_free(s);
}

/* Save what a transaction changed; load it into a fresh state. */
static void check_store(void) {
    char dir[] = "/tmp/brume-state-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char *path = brm_xasprintf("%s/brume.db", dir);
    struct brm_err err;
    struct brm_store *st = brm_store_open(path, &err);
    CHECK(st != NULL);
    if (st) {
        struct brm_state *fresh = brm_state_new(), *s2 = brm_state_new();
        struct brm_state_txn *t = brm_state_begin(fresh);
        double now = brm_time_now();
        brm_state_once(fresh, "kept", 3600, now, t);
        brm_state_set(fresh, "v", "[1,2]", 0, now, t);
        brm_state_mark(t);
        brm_state_set(fresh, "gone", "1", 0, now, t);
        brm_state_set(fresh, "gone", NULL, 0, now, t);
        brm_state_set(fresh, "v", "[1,2,3]", 0, now, t);
        brm_state_once(fresh, "expires", 1, now - 10, t);
        CHECK_INT(brm_store_begin(st, &err), 0);
        CHECK_INT(brm_state_save(t, st, &err), 0);
        brm_store_rollback(st); /* refused: saved again in the next transaction */
        CHECK_INT(brm_store_begin(st, &err), 0);
        CHECK_INT(brm_state_save(t, st, &err), 0);
        CHECK_INT(brm_store_commit(st, &err), 0);
        brm_state_release(t, 1);
        CHECK_INT(brm_state_load(s2, st, now, &err), 0);
        CHECK_INT(brm_state_once(s2, "kept", 3600, now, NULL), 0);
        char *got = get(s2, "v", now, NULL);
        CHECK_STR(got, "[1,2,3]");
        free(got);
        CHECK(get(s2, "gone", now, NULL) == NULL);
        CHECK_INT(brm_state_count(s2), 2); /* the expired mark did not come back */
        /* The sweep deletes what expired from the store too. */
        CHECK_INT(brm_store_begin(st, &err), 0);
        CHECK_INT(brm_state_sweep(fresh, 1 << 20, now, st, &err), 2); /* expired, deleted */
        CHECK_INT(brm_store_commit(st, &err), 0);
        struct brm_state *s3 = brm_state_new();
        CHECK_INT(brm_state_load(s3, st, 0, &err), 0); /* loaded as at time 0: all live */
        CHECK_INT(brm_state_count(s3), 2);
        brm_state_free(s3);
        brm_state_free(fresh);
        brm_state_free(s2);
        brm_store_close(st);
    }
    free(path);
    char *cmd = brm_xasprintf("rm -rf %s", dir);
    CHECK_INT(system(cmd), 0);
    free(cmd);
}

/* Four threads race for a thousand keys, each in transactions of ten keys
 * released at once: each key is won exactly once, and nobody waits. */
static struct brm_state *shared;
static _Atomic int winners, busy;

static void *race(void *arg) {
    (void)arg;
    for (int i = 0; i < 1000; i += 10) {
        struct brm_state_txn *t = brm_state_begin(shared);
        for (int k = i; k < i + 10; k++) {
            char key[32];
            snprintf(key, sizeof(key), "k%d", k);
            int rc;
            while ((rc = brm_state_once(shared, key, 3600, 1000, t)) == BRM_STATE_BUSY) {
                busy++;
                usleep(10);
            }
            if (rc == 1) winners++;
        }
        brm_state_release(t, 1);
    }
    return NULL;
}

/* Timers: armed, armed again, cancelled, popped in due order, fired once,
 * owned like any key, undone with their transaction; limits. */
static void check_timers(void) {
    struct brm_state *s = brm_state_new();
    char key[256], *data;
    double due, next;
    CHECK_INT(brm_state_timer_set(s, "r", "a", 300, "{\"n\":1}", NULL), 0);
    CHECK_INT(brm_state_timer_set(s, "r", "b", 100, NULL, NULL), 0);
    CHECK_INT(brm_state_timer_set(s, "other", "a", 200, "2", NULL), 0);
    CHECK_INT(brm_state_timer_set(s, "r", "a", 250, "{\"n\":2}", NULL), 0); /* armed again */
    CHECK_INT(brm_state_pending(s), 3);
    CHECK_INT(brm_state_timer_get(s, "r", "a", NULL, &due, &data), 1);
    CHECK(due == 250);
    CHECK_STR(data, "{\"n\":2}");
    free(data);
    CHECK_INT(brm_state_timer_get(s, "nope", "a", NULL, &due, &data), 0);
    /* Due order, and nothing before its time. */
    CHECK_INT(brm_state_pop_due(s, 50, key, sizeof(key), &next), 0);
    CHECK(next == 100);
    const char *order[] = { "timer\x1fr\x1f"
                            "b",
                            "timer\x1fother\x1f"
                            "a",
                            "timer\x1fr\x1f"
                            "a" };
    for (int i = 0; i < 3; i++) {
        CHECK_INT(brm_state_pop_due(s, 1000, key, sizeof(key), &next), 1);
        CHECK_STR(key, order[i]);
        struct brm_fired f;
        CHECK_INT(brm_state_fire(s, key, 1000, NULL, &f), 1);
        CHECK_INT(f.kind, BRM_FIRED_TIMER);
        if (i == 0) CHECK(strcmp(f.rule, "r") == 0 && strcmp(f.key, "b") == 0 && f.due == 100);
        if (i == 0) CHECK_STR(f.data, "null");
        brm_fired_reset(&f);
        CHECK_INT(brm_state_fire(s, key, 1000, NULL, &f), 0); /* fires once */
    }
    CHECK_INT(brm_state_pop_due(s, 1e9, key, sizeof(key), &next), 0);
    CHECK(next == 0);
    CHECK_INT(brm_state_pending(s), 0);
    /* Cancelled, and armed again for later after being popped. */
    brm_state_timer_set(s, "r", "c", 10, NULL, NULL);
    CHECK_INT(brm_state_timer_cancel(s, "r", "c", NULL), 1);
    CHECK_INT(brm_state_timer_cancel(s, "r", "c", NULL), 0);
    brm_state_timer_set(s, "r", "d", 10, NULL, NULL);
    CHECK_INT(brm_state_pop_due(s, 20, key, sizeof(key), &next), 1);
    brm_state_timer_set(s, "r", "d", 500, NULL, NULL);
    struct brm_fired f;
    CHECK_INT(brm_state_fire(s, key, 20, NULL, &f), 0);
    CHECK_INT(brm_state_pop_due(s, 600, key, sizeof(key), &next), 1); /* in the heap again */
    CHECK_INT(brm_state_fire(s, key, 600, NULL, &f), 1);
    brm_fired_reset(&f);
    /* Owned until stored; a timer a transaction holds waits to be popped;
     * undone, it is back as it was. */
    struct brm_state_txn *a = brm_state_begin(s), *b = brm_state_begin(s);
    CHECK_INT(brm_state_timer_set(s, "r", "e", 30, "1", a), 0);
    CHECK_INT(brm_state_timer_cancel(s, "r", "e", b), BRM_STATE_BUSY);
    CHECK_INT(brm_state_pop_due(s, 100, key, sizeof(key), &next), 0);
    CHECK(next == 30);
    brm_state_release(a, 1);
    CHECK_INT(brm_state_pop_due(s, 100, key, sizeof(key), &next), 1);
    CHECK_INT(brm_state_fire(s, key, 100, b, &f), 1);
    brm_fired_reset(&f);
    CHECK_INT(brm_state_pending(s), 0);
    brm_state_release(b, 0); /* the firing was not stored: the timer is back */
    CHECK_INT(brm_state_pending(s), 1);
    CHECK_INT(brm_state_pop_due(s, 100, key, sizeof(key), &next), 1);
    CHECK_INT(brm_state_fire(s, key, 100, NULL, &f), 1);
    brm_fired_reset(&f);
    /* A rule's limit. */
    struct brm_state_txn *t = brm_state_begin(s);
    int rc = 0;
    for (int i = 0; i < BRM_STATE_MAX_TIMERS && rc == 0; i++) {
        char k[16];
        snprintf(k, sizeof(k), "k%d", i);
        rc = brm_state_timer_set(s, "busy", k, 1e9, NULL, t);
    }
    CHECK_INT(rc, 0);
    CHECK_INT(brm_state_timer_set(s, "busy", "one-more", 1e9, NULL, t), -1);
    CHECK_INT(brm_state_timer_set(s, "busy", "k7", 2e9, NULL, t), 0); /* armed again: fine */
    CHECK_INT(brm_state_timer_set(s, "calm", "x", 1e9, NULL, t), 0);  /* another rule's */
    CHECK_INT(brm_state_drop_rule(s, "busy", t), BRM_STATE_MAX_TIMERS);
    CHECK_INT(brm_state_pending(s), 1);
    brm_state_release(t, 0); /* undone: never there */
    CHECK_INT(brm_state_pending(s), 0);
    brm_state_free(s);
}

/* Digests: the first add opens the window, later ones count; the first N
 * items are kept; debounce with a maximum wait; closed when fired; undone
 * with their transaction, items and all. */
static void check_groups(void) {
    struct brm_state *s = brm_state_new();
    struct brm_group_opts fixed = { 60, 0, 0, 2 }, bounce = { 10, 1, 25, 100 };
    long count;
    char key[256];
    double next;
    struct brm_fired f;
    CHECK_INT(brm_state_group_add(s, "r", "site1", "\"a\"", &fixed, 100, NULL, &count), 0);
    CHECK_INT(count, 1);
    brm_state_group_add(s, "r", "site1", "\"b\"", &fixed, 130, NULL, &count);
    brm_state_group_add(s, "r", "site1", "\"c\"", &bounce, 150, NULL, &count); /* kept opts */
    CHECK_INT(count, 3);
    CHECK_INT(brm_state_pop_due(s, 159, key, sizeof(key), &next), 0);
    CHECK(next == 160); /* fixed: 60 s after the first add */
    CHECK_INT(brm_state_pop_due(s, 160, key, sizeof(key), &next), 1);
    CHECK_INT(brm_state_fire(s, key, 160, NULL, &f), 1);
    CHECK_INT(f.kind, BRM_FIRED_GROUP);
    CHECK_INT(f.nitems, 2); /* max_items 2 of 3 adds */
    CHECK_INT(f.count, 3);
    CHECK(f.opened == 100);
    if (f.nitems == 2) CHECK(strcmp(f.items[0], "\"a\"") == 0 && strcmp(f.items[1], "\"b\"") == 0);
    brm_fired_reset(&f);
    /* Debounce: each add moves the close, up to max_wait after the first. */
    brm_state_group_add(s, "r", "s2", NULL, &bounce, 0.5e3, NULL, &count);
    brm_state_pop_due(s, 0, key, sizeof(key), &next);
    CHECK(next == 510);
    brm_state_group_add(s, "r", "s2", NULL, &bounce, 508, NULL, &count);
    brm_state_pop_due(s, 0, key, sizeof(key), &next);
    CHECK(next == 518);
    brm_state_group_add(s, "r", "s2", NULL, &bounce, 520 - 3, NULL, &count);
    brm_state_pop_due(s, 0, key, sizeof(key), &next);
    CHECK(next == 525); /* the maximum wait */
    /* A transaction's adds undone, and a close undone. */
    struct brm_state_txn *t = brm_state_begin(s);
    brm_state_group_add(s, "r", "s3", "1", &fixed, 100, t, &count);
    brm_state_release(t, 1);
    t = brm_state_begin(s);
    brm_state_group_add(s, "r", "s3", "2", &fixed, 101, t, &count);
    CHECK_INT(count, 2);
    brm_state_release(t, 0);
    t = brm_state_begin(s);
    brm_state_group_add(s, "r", "s3", "3", &fixed, 102, t, &count);
    CHECK_INT(count, 2); /* the undone add is not counted */
    CHECK_INT(brm_state_fire(s, "group\x1fr\x1fs3", 200, t, &f), 1);
    CHECK_INT(f.nitems, 2);
    brm_fired_reset(&f);
    brm_state_group_add(s, "r", "s3", "new", &fixed, 200, t, &count); /* opens another */
    CHECK_INT(count, 1);
    brm_state_release(t, 0); /* the close and the new one undone */
    t = brm_state_begin(s);
    CHECK_INT(brm_state_fire(s, "group\x1fr\x1fs3", 200, t, &f), 1);
    CHECK_INT(f.nitems, 1);
    CHECK_INT(f.count, 1);
    brm_fired_reset(&f);
    brm_state_release(t, 1);
    brm_state_free(s);
}

/* Timers and digests are stored with their transaction and come back at
 * start, due times and items and all. */
static void check_timer_store(void) {
    char dir[] = "/tmp/brume-timers-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char *path = brm_xasprintf("%s/brume.db", dir);
    struct brm_err err;
    struct brm_store *st = brm_store_open(path, &err);
    CHECK(st != NULL);
    if (st) {
        struct brm_state *s = brm_state_new();
        struct brm_state_txn *t = brm_state_begin(s);
        struct brm_group_opts o = { 60, 0, 0, 10 };
        long count;
        brm_state_timer_set(s, "r", "t1", 500, "{\"x\":1}", t);
        brm_state_timer_set(s, "r", "gone", 600, NULL, t);
        brm_state_timer_cancel(s, "r", "gone", t);
        brm_state_group_add(s, "r", "g", "\"i1\"", &o, 100, t, &count);
        brm_state_group_add(s, "r", "g", "\"i2\"", &o, 101, t, &count);
        CHECK_INT(brm_store_begin(st, &err), 0);
        CHECK_INT(brm_state_save(t, st, &err), 0);
        CHECK_INT(brm_store_commit(st, &err), 0);
        brm_state_release(t, 1);
        t = brm_state_begin(s); /* one more item, in a later transaction */
        brm_state_group_add(s, "r", "g", "\"i3\"", &o, 102, t, &count);
        CHECK_INT(brm_store_begin(st, &err), 0);
        CHECK_INT(brm_state_save(t, st, &err), 0);
        CHECK_INT(brm_store_commit(st, &err), 0);
        brm_state_release(t, 1);
        struct brm_state *s2 = brm_state_new();
        CHECK_INT(brm_state_load(s2, st, 0, &err), 0);
        CHECK_INT(brm_state_pending(s2), 2);
        char key[256], *data;
        double next, due;
        CHECK_INT(brm_state_timer_get(s2, "r", "t1", NULL, &due, &data), 1);
        CHECK(due == 500);
        CHECK_STR(data, "{\"x\":1}");
        free(data);
        CHECK_INT(brm_state_pop_due(s2, 1000, key, sizeof(key), &next), 1);
        struct brm_fired f;
        CHECK_INT(brm_state_fire(s2, key, 1000, NULL, &f), 1);
        CHECK_INT(f.kind, BRM_FIRED_GROUP);
        CHECK_INT(f.nitems, 3);
        CHECK_INT(f.count, 3);
        CHECK(f.opened == 100 && f.due == 160);
        brm_fired_reset(&f);
        brm_state_free(s2);
        brm_state_free(s);
        brm_store_close(st);
    }
    free(path);
    char *cmd = brm_xasprintf("rm -rf %s", dir);
    CHECK_INT(system(cmd), 0);
    free(cmd);
}

/* Shared mode: what a transaction saw and changed, one change per key;
 * versions from the shared store; the cache taking what it says; two
 * bodies that saw a key change in between; no due heap; the sweep. */
static struct brm_state_change *change(struct brm_state_change *v, size_t n, const char *key) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i].key, key) == 0) return &v[i];
    return NULL;
}

static void check_shared(void) {
    struct brm_state *s = brm_state_new();
    brm_state_set_shared(s);
    CHECK(brm_state_is_shared(s));
    struct brm_state_txn *t = brm_state_begin(s);
    CHECK(brm_state_txn_empty(t));
    size_t m1 = brm_state_mark(t);
    char *got = get(s, "only-read", 100, t);
    CHECK(got == NULL);
    CHECK(!brm_state_txn_empty(t)); /* a read counts: it must be checked */
    CHECK(brm_state_touched(t, m1));
    CHECK_INT(brm_state_once(s, "k", 60, 100, t), 1); /* not cached: taken to be absent */
    size_t m2 = brm_state_mark(t);
    CHECK(!brm_state_touched(t, m2));
    CHECK_INT(brm_state_set(s, "rolled", "1", 0, 100, t), 0);
    CHECK(brm_state_touched(t, m2));
    CHECK_INT(brm_state_rollback(t, m2), 0); /* that body is undone, and what it saw */
    CHECK(!brm_state_touched(t, m2));
    struct brm_state_change *v;
    size_t n = brm_state_changes(t, &v);
    CHECK_INT(n, 2);
    struct brm_state_change *c = change(v, n, "state\x1fonly-read");
    CHECK(c && c->read && !c->read_live && !c->write);
    c = change(v, n, "once\x1fk");
    CHECK(c && c->read && !c->read_live && c->write && c->expires == 160 && !c->is_due);
    CHECK_STR(c ? c->value : NULL, "true");
    CHECK(c && c->old_value == NULL);
    CHECK(change(v, n, "state\x1frolled") == NULL);
    uint64_t versions[2] = { 0, 0 };
    versions[c - v] = 41;
    brm_state_set_versions(t, v, versions, n);
    brm_state_changes_free(v, n);
    brm_state_release(t, 1);

    /* A later transaction saw a live value of version 41. */
    t = brm_state_begin(s);
    brm_state_mark(t);
    CHECK_INT(brm_state_once(s, "k", 60, 110, t), 0);
    n = brm_state_changes(t, &v);
    CHECK_INT(n, 1);
    CHECK(v[0].read && v[0].read_live && v[0].read_version == 41 && !v[0].write);
    brm_state_changes_free(v, n);
    brm_state_release(t, 1);

    /* What the shared store says goes into the cache (not over a key a
     * transaction holds), and is read as it says. */
    brm_state_cache_put(s, "state\x1fx", "[1]", 0, 0, 7, NULL, 0);
    t = brm_state_begin(s);
    struct brm_state_txn *other = brm_state_begin(s);
    brm_state_mark(t);
    got = get(s, "x", 100, t);
    CHECK_STR(got, "[1]");
    free(got);
    CHECK_INT(brm_state_set(s, "held", "1", 0, 100, other), 0);
    brm_state_cache_put(s, "state\x1fheld", "2", 0, 0, 9, NULL, 0); /* other holds it */
    brm_state_release(other, 0);
    got = get(s, "held", 100, t);
    CHECK(got == NULL); /* undone, and never replaced */
    /* Another body of T sees X anew after it changed: no version fits both. */
    brm_state_mark(t);
    brm_state_cache_put(s, "state\x1fx", "[2]", 0, 0, 8, NULL, 0);
    got = get(s, "x", 100, t);
    CHECK_STR(got, "[2]"); /* what is cached now; T's note stays the first: the check fails */
    free(got);
    n = brm_state_changes(t, &v);
    c = change(v, n, "state\x1fx");
    CHECK(c && c->read_live && c->read_version == 7);
    brm_state_changes_free(v, n);
    brm_state_release(t, 1);
    struct brm_state_txn *t1 = brm_state_begin(s), *t2 = brm_state_begin(s);
    brm_state_mark(t1);
    got = get(s, "x", 100, t1); /* [2] of version 8 */
    free(got);
    got = get(s, "x", 100, t2); /* t2's note takes the key's last reader */
    free(got);
    brm_state_cache_put(s, "state\x1fx", "[3]", 0, 0, 10, NULL, 0);
    brm_state_mark(t1);
    got = get(s, "x", 100, t1); /* noted again: version 10 */
    CHECK_STR(got, "[3]");
    free(got);
    n = brm_state_changes(t1, &v);
    c = change(v, n, "state\x1fx");
    CHECK(c && c->read_live && c->read_version == UINT64_MAX);
    brm_state_changes_free(v, n);
    brm_state_release(t1, 1);
    brm_state_release(t2, 1);

    /* Timers: no heap (the shared store says what is due); a digest from
     * the store fires with its items; a change keeps what it held before. */
    CHECK_INT(brm_state_timer_set(s, "r", "a", 50, "1", NULL), 0);
    char key[256];
    double next;
    CHECK_INT(brm_state_pop_due(s, 1000, key, sizeof(key), &next), 0);
    CHECK(next == 0);
    CHECK_INT(brm_state_pending(s), 0);
    const char *items[] = { "\"a\"", "\"b\"" };
    brm_state_cache_put(s, "group\x1fr\x1fg",
                        "{\"window\":60,\"debounce\":false,\"max_wait\":0,\"max_items\":100,"
                        "\"opened\":10,\"count\":2}",
                        0, 70, 12, items, 2);
    t = brm_state_begin(s);
    brm_state_mark(t);
    long count;
    struct brm_group_opts o = { 60, 0, 0, 100 };
    CHECK_INT(brm_state_group_add(s, "r", "g", "\"c\"", &o, 20, t, &count), 0);
    CHECK_INT(count, 3);
    n = brm_state_changes(t, &v);
    c = change(v, n, "group\x1fr\x1fg");
    CHECK(c && c->is_due && c->is_group && c->read_live && c->read_version == 12);
    CHECK(c && c->write && !c->group_fresh && c->nitems == 1 && c->due == 70);
    CHECK_STR(c && c->nitems ? c->items[0] : NULL, "\"c\"");
    CHECK(c && c->old_group && c->old_same && c->old_nitems == 2);
    brm_state_changes_free(v, n);
    struct brm_fired f;
    CHECK_INT(brm_state_fire(s, "group\x1fr\x1fg", 100, t, &f), 1);
    CHECK_INT(f.nitems, 3);
    CHECK_STR(f.items[2], "\"c\"");
    brm_fired_reset(&f);
    n = brm_state_changes(t, &v);
    c = change(v, n, "group\x1fr\x1fg");
    CHECK(c && c->write && c->value == NULL); /* fired: deleted */
    CHECK(c && c->old_group && !c->old_same && c->old_nitems == 2);
    CHECK_STR(c && c->old_items ? c->old_items[1] : NULL, "\"b\"");
    brm_state_changes_free(v, n);
    brm_state_release(t, 0);

    /* Nothing is saved to the local store; the sweep drops what no
     * transaction holds or has read. */
    t = brm_state_begin(s);
    got = get(s, "x", 100, t); /* pinned by T's note */
    free(got);
    brm_state_cache_forget(s, "state\x1fk");
    size_t before = brm_state_count(s);
    long gone = brm_state_sweep(s, 1 << 20, 1e12, NULL, NULL);
    CHECK(gone > 0);
    CHECK_INT(brm_state_count(s), before - (size_t)gone);
    CHECK(brm_state_count(s) >= 1);
    brm_state_release(t, 0);
    CHECK_INT(brm_state_sweep(s, 1 << 20, 1e12, NULL, NULL), 0); /* live, and few */
    brm_state_free(s);
}

int main(void) {
    check_values();
    check_timers();
    check_groups();
    check_timer_store();
    check_ownership();
    check_bodies();
    check_store();
    check_shared();
    shared = brm_state_new();
    pthread_t th[4];
    for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, race, NULL);
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    CHECK_INT(winners, 1000);
    brm_state_free(shared);
    return test_done();
}
