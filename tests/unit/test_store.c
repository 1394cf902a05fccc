/* store: schema, idempotent inserts, due order (and a ticket's deliveries
 * one at a time, oldest first), outcomes, list/retry/drop, prune, tickets. */
#include <math.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store.h"
#include "test.h"

static char dir[64];

static int64_t ids[64];
static int nids;

static struct {
    int64_t id;
    int attempts;
    double expires;
} last_retried;

/* Runs SQL on a connection of the test's own; OUT gets column COL of
 * each row it returns, joined with " / ". */
static void query(const char *path, const char *sql, int col, char *out, size_t size) {
    sqlite3 *db;
    sqlite3_stmt *st = NULL;
    out[0] = '\0';
    CHECK_INT(sqlite3_open(path, &db), SQLITE_OK);
    CHECK_INT(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    while (st && sqlite3_step(st) == SQLITE_ROW) {
        size_t n = strlen(out);
        snprintf(out + n, size - n, "%s%s", n ? " / " : "", sqlite3_column_text(st, col));
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
}

/* The outbox's reads of a backlog go through the indexes of pending
 * deliveries: one entry read for the next wake-up and the oldest age, and
 * a due batch found by next_at, whatever the backlog's size. Replay reads
 * a range of the journal in id order as it scans it, without a sort. */
static void check_plans(const char *path) {
    static const struct {
        const char *sql, *plan;
    } cases[] = {
        { "SELECT min(next_at) FROM queue WHERE next_at > 1",
          "SEARCH queue USING COVERING INDEX queue_due (next_at>?)" },
        { "SELECT created FROM deliveries WHERE id = (SELECT min(id) FROM queue)",
          "SEARCH deliveries USING INTEGER PRIMARY KEY (rowid=?) / SCALAR SUBQUERY 1 / SEARCH "
          "queue" },
        { "SELECT id FROM queue WHERE target = 'x' AND next_at <= 1 ORDER BY next_at, id LIMIT 9",
          "SEARCH queue USING COVERING INDEX queue_target (target=? AND next_at<?)" },
        /* Replay's read: a range of the rowid in its order, no sort. */
        { "SELECT id, body FROM bodies NOT INDEXED WHERE id > 1 AND id < 9 AND received >= 1"
          " AND received < 2 ORDER BY id",
          "SEARCH bodies USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)" },
    };
    char plan[512], sql[512];
    for (size_t i = 0; i < BRM_ARRAY_LEN(cases); i++) {
        snprintf(sql, sizeof(sql), "EXPLAIN QUERY PLAN %s", cases[i].sql);
        query(path, sql, 3, plan, sizeof(plan));
        CHECK_STR(plan, cases[i].plan);
    }
}

static struct brm_delivery seen; /* the last delivery collect() saw: its numbers */
static int seen_request;         /* and whether it had its request */
static int seen_body;            /* and a body in it */

static int collect(void *arg, const struct brm_delivery *d) {
    (void)arg;
    ids[nids++] = d->id;
    seen = (struct brm_delivery){ .id = d->id,
                                  .state = d->state,
                                  .attempts = d->attempts,
                                  .last_status = d->last_status,
                                  .last_attempt = d->last_attempt };
    seen_request = d->method && d->url;
    seen_body = d->body != NULL;
    if (d->id == 1) {
        last_retried.id = d->id;
        last_retried.attempts = d->attempts;
        last_retried.expires = d->expires;
    }
    return 0;
}

static int collect_body(void *arg, const struct brm_body *b) {
    (void)arg;
    ids[nids++] = b->id;
    return 0;
}

static int collect_attempt(void *arg, const struct brm_attempt *a) {
    (void)arg;
    if (nids < (int)BRM_ARRAY_LEN(ids)) ids[nids] = a->status;
    nids++;
    return 0;
}

static void due_for(struct brm_store *s, const char *target, double now) {
    struct brm_err err;
    nids = 0;
    CHECK_INT(brm_store_due_for(s, target, now, 16, NULL, collect, NULL, &err), 0);
}

static int add(struct brm_store *s, const char *key, const char *target, const char *ticket,
               double next_at) {
    struct brm_err err;
    char rule[] = "r", topic[] = "alarms", event[] = "e1", method[] = "POST", url[] = "http://x/";
    struct brm_delivery d = { .key = key,
                              .target = target,
                              .rule = rule,
                              .topic = topic,
                              .event = event,
                              .method = method,
                              .url = url,
                              .ticket = ticket,
                              .created = 100,
                              .next_at = next_at,
                              .expires = 1000 };
    int rc = brm_store_add_delivery(s, &d, &err);
    if (rc < 0) fprintf(stderr, "add: %s\n", err.msg);
    return rc;
}

/* Fills P with N bytes that do not pack: the ring's sums are then the
 * bodies' own sizes. */
static void scramble(char *p, size_t n) {
    uint64_t x = 0x9E3779B97F4A7C15u;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        p[i] = (char)(x >> 56);
    }
}

/* A page of bodies for Q: their ids in IDS, NIDS. */
/* Journals the one-event BODY as body ID of SOURCE, received at RECEIVED. */
static void add_small_body(struct brm_store *s, int64_t id, const char *source, double received,
                           const char *body, int backfilled) {
    struct brm_err err;
    struct brm_body b = { .id = id,
                          .source = source,
                          .topic = "alarms",
                          .received = received,
                          .events = 1,
                          .body = body,
                          .len = strlen(body),
                          .digest = brm_hash64(body, strlen(body)),
                          .backfilled = backfilled };
    CHECK_INT(brm_store_add_body(s, &b, NULL, &err), 0);
}

/* Backfill's look for one body Mist logged as posted at AT, give or take
 * SKEW seconds: 1 or 0. */
static int has_body(struct brm_store *s, const void *body, size_t len, double at, double skew) {
    struct brm_store_probe p = { brm_hash64(body, len), body, len, at, -1 };
    struct brm_err err;
    CHECK_INT(brm_store_has_bodies(s, &p, 1, skew, &err), 0);
    return p.found;
}

static void page(struct brm_store *s, struct brm_body_query *q) {
    struct brm_err err;
    nids = 0;
    CHECK_INT(brm_store_find_bodies(s, q, collect_body, NULL, &err), 0);
}

/* The ring frees the pages of the bodies it removes without writing them:
 * Debian's SQLite is built with SECURE_DELETE, which zeroes every freed
 * page through the WAL, twice the pages a full ring writes per body. */
/* Old done deliveries the ring has no body for (a timer's firing's) go by
 * the sweep, with their attempts; pending and dead ones stay. */
static void sweep_takes_old_done_deliveries(const char *path) {
    struct brm_err err;
    struct brm_store *s = brm_store_open(path, &err);
    CHECK(s != NULL);
    if (!s) return;
    char rule[] = "r", topic[] = "alarms", event[] = "e", url[] = "http://x/";
    int64_t id[7] = { 0 };
    for (int i = 0; i < 7; i++) {
        char key[32];
        snprintf(key, sizeof(key), "%d:t:hold:1", 500 + i); /* firing ids: no body rows */
        struct brm_delivery d = { .key = key,
                                  .target = "slack",
                                  .rule = rule,
                                  .topic = topic,
                                  .event = event,
                                  .url = url,
                                  .created = 100 + i * 100, /* 100 ... 700 */
                                  .next_at = 0,
                                  .expires = 1e9 };
        CHECK_INT(brm_store_add_delivery(s, &d, &err), 1);
    }
    struct brm_delivery_query q = { .state = -1, .limit = 10 };
    nids = 0;
    CHECK_INT(brm_store_find_deliveries(s, &q, collect, NULL, &err), 0);
    CHECK_INT(nids, 7);
    for (int i = 0; i < 7 && i < nids; i++) id[i] = ids[6 - i]; /* newest first */
    /* 0, 1, 4, 5 done at their first try; 2 dead; 3 pending; 6 done after
     * retries, just now. */
    for (int i = 0; i < 7; i++) {
        if (i == 3) continue;
        enum brm_delivery_state st = i == 2 ? BRM_DELIVERY_DEAD : BRM_DELIVERY_DONE;
        struct brm_attempt a = { i == 6 ? brm_time_now() : 1, 200, NULL, NULL };
        CHECK_INT(brm_store_finish(s, id[i], i == 6 ? 3 : 0, 0, st, 0, 200, NULL, &err), 0);
        CHECK_INT(brm_store_add_attempt(s, id[i], 0, BRM_DELIVERY_DONE, &a, &err), 0);
    }
    int64_t cursor = 0;
    /* A step of two looks at two; then the sweep stops at the first made
     * since BEFORE (450): 0, 1 go; 2 (dead) and 3 (pending) stay. */
    CHECK_INT(brm_store_sweep_done(s, &cursor, 450, 2000, 2, &err), 2);
    CHECK(cursor == id[1]);
    CHECK_INT(brm_store_sweep_done(s, &cursor, 450, 2000, 10, &err), 2);
    CHECK(cursor == id[3]);
    CHECK_INT(brm_store_sweep_done(s, &cursor, 450, 2000, 10, &err), 0);
    nids = 0;
    CHECK_INT(brm_store_find_deliveries(s, &q, collect, NULL, &err), 0);
    CHECK(nids == 5 && ids[0] == id[6] && ids[1] == id[5] && ids[2] == id[4] && ids[3] == id[3] &&
          ids[4] == id[2]);
    nids = 0;
    CHECK_INT(brm_store_attempts(s, id[0], 10, collect_attempt, NULL, &err), 0);
    CHECK_INT(nids, 0); /* its attempt went with it */
    nids = 0;
    CHECK_INT(brm_store_attempts(s, id[2], 10, collect_attempt, NULL, &err), 0);
    CHECK_INT(nids, 1);
    /* From the oldest again, later: the dead and pending are passed over,
     * and one done just now after retries, made long ago, stays. */
    cursor = 0;
    CHECK_INT(brm_store_sweep_done(s, &cursor, 1000, 2000, 10, &err), 5);
    nids = 0;
    CHECK_INT(brm_store_find_deliveries(s, &q, collect, NULL, &err), 0);
    CHECK(nids == 3 && ids[0] == id[6] && ids[1] == id[3] && ids[2] == id[2]);
    /* The newest gone, their ids come again: a cursor past them comes back. */
    CHECK_INT(brm_store_drop(s, id[6], &err), 1);
    CHECK_INT(brm_store_sweep_done(s, &cursor, 1000, 2000, 10, &err), 0);
    CHECK(cursor == id[3]);
    /* The dead one retried by hand and done at its next try (its row keeps
     * the time it died): aged by that try, it stays. */
    CHECK_INT(brm_store_retry(s, id[2], &err), 1);
    struct brm_attempt now_ok = { brm_time_now(), 200, NULL, NULL };
    CHECK_INT(brm_store_finish(s, id[2], 0, 0, BRM_DELIVERY_DONE, 0, 200, NULL, &err), 0);
    CHECK_INT(brm_store_add_attempt(s, id[2], 0, BRM_DELIVERY_DONE, &now_ok, &err), 0);
    cursor = 0;
    CHECK_INT(brm_store_sweep_done(s, &cursor, 1000, 2000, 10, &err), 2);
    CHECK_INT(brm_store_delivery(s, id[2], collect, NULL, &err), 1);
    /* One that says it was made in the future (a clock set back since) is
     * passed over, not waited for: the old done one behind it goes. */
    const char *later[] = { "900:t:hold:1", "901:t:hold:1" };
    double made[] = { 1e7, 100 };
    for (int i = 0; i < 2; i++) {
        struct brm_delivery d = { .key = later[i],
                                  .target = "slack",
                                  .rule = rule,
                                  .topic = topic,
                                  .event = event,
                                  .url = url,
                                  .created = made[i],
                                  .expires = 1e9 };
        CHECK_INT(brm_store_add_delivery(s, &d, &err), 1);
    }
    nids = 0;
    CHECK_INT(brm_store_find_deliveries(s, &q, collect, NULL, &err), 0);
    int64_t behind = nids ? ids[0] : 0; /* the newest: made at 100 */
    struct brm_attempt old_ok = { 100, 200, NULL, NULL };
    CHECK_INT(brm_store_finish(s, behind, 0, 0, BRM_DELIVERY_DONE, 0, 200, NULL, &err), 0);
    CHECK_INT(brm_store_add_attempt(s, behind, 0, BRM_DELIVERY_DONE, &old_ok, &err), 0);
    CHECK_INT(brm_store_sweep_done(s, &cursor, 1000, 2000, 10, &err), 2);
    CHECK_INT(brm_store_delivery(s, behind, collect, NULL, &err), 0);
    brm_store_close(s);
}

static void ring_frees_without_writing(const char *path) {
    struct brm_err err;
    struct brm_store *s = brm_store_open(path, &err);
    CHECK(s != NULL);
    if (!s) return;
    CHECK_INT(brm_store_own_checkpoints(s, 1 << 20, &err), 0);
    static char blob[8000]; /* two overflow pages a body */
    scramble(blob, sizeof(blob));
    CHECK_INT(brm_store_begin(s, &err), 0);
    for (int i = 1; i <= 40; i++) {
        struct brm_body b = { .id = i,
                              .source = "mist",
                              .topic = "alarms",
                              .received = i,
                              .events = 1,
                              .body = blob,
                              .len = sizeof(blob) };
        CHECK_INT(brm_store_add_body(s, &b, NULL, &err), 0);
    }
    CHECK_INT(brm_store_commit(s, &err), 0);
    CHECK(brm_store_wal_frames(s) >= 80);
    CHECK_INT(brm_store_checkpoint(s, &err), 0);
    CHECK_INT(brm_store_begin(s, &err), 0);
    struct brm_prune p = { .before = 1e12, .limit = 100, .bytes = 40 * sizeof(blob), .rows = 40 };
    CHECK_INT(brm_store_prune_bodies(s, &p, &err), 0);
    CHECK_INT(p.removed, 40);
    CHECK_INT(brm_store_commit(s, &err), 0);
    CHECK(brm_store_wal_frames(s) < 20); /* the leaves, the freelist, page 1: not 80 pages */
    brm_store_close(s);
}

/* The console's reads: pages by id through the indexes, bounded scans with
 * a place to go on from, times through the received index, text and JSON
 * field matches; deliveries by state; the attempts log and its pruning; a
 * read-only connection. */
static void console_reads(const char *path) {
    struct brm_err err;
    struct brm_store *s = brm_store_open(path, &err);
    CHECK(s != NULL);
    if (!s) return;
    static const char *const topics[] = { "alarms", "audits", "device-updowns" };
    char text[200];
    for (int i = 1; i <= 30; i++) {
        snprintf(text, sizeof(text),
                 "{\"topic\":\"%s\",\"events\":[{\"type\":\"t%d\",\"n\":%d%s}]}", topics[i % 3],
                 i % 5, i, i == 17 ? ",\"note\":\"Needle here\"" : "");
        struct brm_body b = { .id = i,
                              .source = i % 2 ? "mist" : "lab",
                              .topic = topics[i % 3],
                              .received = 1000 + i * 10,
                              .events = 1,
                              .body = text,
                              .len = strlen(text),
                              .runs = "[[1,\"r\"]]",
                              .runs_len = 9 };
        CHECK_INT(brm_store_add_body(s, &b, NULL, &err), 0);
    }
    struct brm_store *r = brm_store_open_reader(path, &err);
    CHECK(r != NULL);
    if (!r) {
        brm_store_close(s);
        return;
    }
    /* Newest first, a page at a time. */
    struct brm_body_query q = { .limit = 4 };
    page(r, &q);
    CHECK(nids == 4 && ids[0] == 30 && ids[3] == 27);
    CHECK_INT(q.next, 27);
    q.before = q.next;
    page(r, &q);
    CHECK(nids == 4 && ids[0] == 26);
    /* One topic, through its index; a source; both. */
    q = (struct brm_body_query){ .limit = 100, .topic = "audits" };
    page(r, &q);
    CHECK(nids == 10 && ids[0] == 28 && ids[9] == 1);
    CHECK_INT(q.next, 0);
    q.source = "lab";
    page(r, &q);
    CHECK(nids == 5 && ids[0] == 28 && ids[1] == 22);
    /* A bounded scan says where it stopped, even with nothing found. */
    q = (struct brm_body_query){ .limit = 100, .source = "nowhere", .scan = 10 };
    page(r, &q);
    CHECK_INT(nids, 0);
    CHECK_INT(q.next, 21);
    q.before = q.next;
    page(r, &q);
    CHECK_INT(q.next, 11);
    /* Times: [since, until), whatever the skew allowed for. */
    q = (struct brm_body_query){ .limit = 100, .since = 1100, .until = 1150, .skew = 15 };
    page(r, &q);
    CHECK(nids == 5 && ids[0] == 14 && ids[4] == 10);
    /* Text (ASCII letters in either case) and a field of an event. */
    q = (struct brm_body_query){ .limit = 100, .text = "needle HERE" };
    page(r, &q);
    CHECK(nids == 1 && ids[0] == 17);
    q = (struct brm_body_query){ .limit = 100, .field = "type", .value = "t3" };
    page(r, &q);
    CHECK(nids == 6 && ids[0] == 28 && ids[5] == 3);
    q.field = "n";
    q.value = "12"; /* a number, compared as text */
    page(r, &q);
    CHECK(nids == 1 && ids[0] == 12);
    q.field = "missing";
    page(r, &q);
    CHECK_INT(nids, 0);
    /* One body, whole, with its runs. */
    CHECK_INT(brm_store_body(r, 17, collect_body, NULL, &err), 1);
    CHECK_INT(brm_store_body(r, 99, collect_body, NULL, &err), 0);

    /* Deliveries: pending and dead come from their indexes. */
    CHECK_INT(add(s, "17:1:r:1", "slack", NULL, 100), 1);
    CHECK_INT(add(s, "17:1:r:2", "slack", NULL, 100), 1);
    CHECK_INT(add(s, "18:1:r:1", "jira", NULL, 100), 1);
    int64_t first = 0;
    struct brm_delivery_query dq = { .state = -1, .limit = 10 };
    nids = 0;
    CHECK_INT(brm_store_find_deliveries(r, &dq, collect, NULL, &err), 0);
    CHECK_INT(nids, 3);
    if (nids == 3) first = ids[2];
    CHECK_INT(brm_store_finish(s, first, 0, 0, BRM_DELIVERY_DEAD, 200, 400, "HTTP 400", &err), 0);
    struct brm_attempt at = { 150, 503, "busy", "HTTP 503" }, at2 = { 200, 400, NULL, "HTTP 400" };
    CHECK_INT(brm_store_add_attempt(s, first, 0, BRM_DELIVERY_PENDING, &at, &err), 0);
    CHECK_INT(brm_store_add_attempt(s, first, 1, BRM_DELIVERY_DEAD, &at2, &err), 0);
    /* Done at its first attempt: it only leaves the queue, and reads as
     * done with that attempt's status and time, its request kept. */
    struct brm_attempt ok = { 210, 204, NULL, NULL };
    CHECK_INT(brm_store_finish(s, first + 2, 0, 0, BRM_DELIVERY_DONE, 200, 204, NULL, &err), 0);
    CHECK_INT(brm_store_add_attempt(s, first + 2, 0, BRM_DELIVERY_DONE, &ok, &err), 0);
    CHECK_INT(brm_store_delivery(r, first + 2, collect, NULL, &err), 1);
    CHECK(seen.state == BRM_DELIVERY_DONE && seen.attempts == 1 && seen.last_status == 204 &&
          seen.last_attempt == 210 && seen_request);
    CHECK_INT(brm_store_delivery(r, first, collect, NULL, &err), 1);
    CHECK(seen.state == BRM_DELIVERY_DEAD && seen.attempts == 1 && seen.last_status == 400 &&
          seen_request);
    dq = (struct brm_delivery_query){ .state = BRM_DELIVERY_DEAD, .limit = 10 };
    nids = 0;
    brm_store_find_deliveries(r, &dq, collect, NULL, &err);
    CHECK(nids == 1 && ids[0] == first);
    dq = (struct brm_delivery_query){ .state = BRM_DELIVERY_PENDING, .limit = 10 };
    nids = 0;
    brm_store_find_deliveries(r, &dq, collect, NULL, &err);
    CHECK(nids == 1 && ids[0] == first + 1);
    dq = (struct brm_delivery_query){ .state = -1, .target = "jira", .limit = 10 };
    nids = 0;
    brm_store_find_deliveries(r, &dq, collect, NULL, &err);
    CHECK(nids == 1 && ids[0] == first + 2);
    dq = (struct brm_delivery_query){ .state = -1, .limit = 1 };
    nids = 0;
    brm_store_find_deliveries(r, &dq, collect, NULL, &err);
    CHECK(nids == 1 && dq.next == first + 2);
    nids = 0;
    CHECK_INT(brm_store_body_deliveries(r, 17, 10, collect, NULL, &err), 0);
    CHECK(nids == 2 && ids[0] == first && ids[1] == first + 1);
    CHECK_INT(brm_store_delivery(r, first, collect, NULL, &err), 1);
    /* Attempts, newest first; a delivery keeps its newest
     * BRM_STORE_ATTEMPTS_KEPT, whatever others do; dropped with theirs. */
    nids = 0;
    CHECK_INT(brm_store_attempts(r, first, 10, collect_attempt, NULL, &err), 0);
    CHECK(nids == 2 && ids[0] == 400 && ids[1] == 503);
    for (int i = 0; i < BRM_STORE_ATTEMPTS_KEPT + 5; i++) {
        struct brm_attempt again = { 300 + i, 500 + i % 2, NULL, "HTTP 5xx" };
        CHECK_INT(brm_store_add_attempt(s, first + 1, 1, BRM_DELIVERY_PENDING, &again, &err), 0);
    }
    nids = 0;
    brm_store_attempts(r, first + 1, 100, collect_attempt, NULL, &err);
    CHECK_INT(nids, BRM_STORE_ATTEMPTS_KEPT);
    /* A first attempt that succeeded does not look (the common case costs
     * one insert)... */
    struct brm_attempt first_again = { 390, 503, NULL, "HTTP 503" };
    CHECK_INT(brm_store_add_attempt(s, first + 1, 0, BRM_DELIVERY_DONE, &first_again, &err), 0);
    nids = 0;
    brm_store_attempts(r, first + 1, 100, collect_attempt, NULL, &err);
    CHECK_INT(nids, BRM_STORE_ATTEMPTS_KEPT + 1);
    /* ...the next one does. */
    struct brm_attempt last = { 400, 502, NULL, "HTTP 502" };
    CHECK_INT(brm_store_add_attempt(s, first + 1, 1, BRM_DELIVERY_PENDING, &last, &err), 0);
    nids = 0;
    brm_store_attempts(r, first + 1, 100, collect_attempt, NULL, &err);
    CHECK_INT(nids, BRM_STORE_ATTEMPTS_KEPT);
    CHECK(ids[0] == 502); /* the newest kept */
    nids = 0;
    brm_store_attempts(r, first + 2, 100, collect_attempt, NULL, &err);
    CHECK(nids == 1 && ids[0] == 204); /* another delivery's one attempt stays */
    nids = 0;
    brm_store_attempts(r, first, 100, collect_attempt, NULL, &err);
    CHECK_INT(nids, 2);
    CHECK_INT(brm_store_drop(s, first + 1, &err), 1);
    nids = 0;
    brm_store_attempts(r, first + 1, 10, collect_attempt, NULL, &err);
    CHECK_INT(nids, 0);
    /* The reader cannot write. */
    struct brm_body b = {
        .id = 500, .source = "x", .topic = "y", .received = 1, .body = "{}", .len = 2
    };
    CHECK_INT(brm_store_add_body(r, &b, NULL, &err), -1);
    brm_store_close(r);
    brm_store_close(s);
}

static int damaged;

static int collect_any(void *arg, const struct brm_body *b) {
    (void)arg;
    ids[nids++] = b->id;
    damaged += b->damage != NULL && b->body == NULL;
    return 0;
}

static char got_body[8192];
static size_t got_len;

static int copy_body(void *arg, const struct brm_body *b) {
    (void)arg;
    if (b->body) memcpy(got_body, b->body, b->len < sizeof(got_body) ? b->len : sizeof(got_body));
    got_len = b->len; /* a listing's: the size alone */
    return 0;
}

/* A body that packs is stored packed, and every read gives its bytes as
 * they came: whole, in a listing's size, in the console's text and field
 * matches, in backfill's exact match, held and released, and in the
 * journal's own SQL. One that does not pack, or is small, is stored as it
 * came; a packed row that does not unpack is an error, not a body. */
static void packed_bodies(const char *path) {
    struct brm_err err;
    struct brm_store *s = brm_store_open(path, &err);
    CHECK(s != NULL);
    if (!s) return;
    static char batch[4200], noise[4000];
    size_t n = (size_t)snprintf(batch, sizeof(batch), "{\"topic\":\"alarms\",\"events\":[");
    for (int i = 0; i < 30; i++)
        n += (size_t)snprintf(batch + n, sizeof(batch) - n,
                              "%s{\"type\":\"rogue_ap\",\"site_id\":\"f688779c\",\"n\":%d}",
                              i ? "," : "", i);
    n += (size_t)snprintf(batch + n, sizeof(batch) - n, ",{\"type\":\"Needle\",\"n\":99}]}");
    scramble(noise, sizeof(noise));
    static const char small[] = "{\"topic\":\"alarms\",\"events\":[{\"a\":\"aaaaaaaaaaaaaaaa\"}]}";
    const struct {
        const char *body;
        size_t len;
        int packs;
    } cases[] = { { batch, n, 1 }, { noise, sizeof(noise), 0 }, { small, sizeof(small) - 1, 0 } };
    for (size_t i = 0; i < BRM_ARRAY_LEN(cases); i++) {
        struct brm_body b = { .id = (int64_t)i + 1,
                              .source = "mist",
                              .topic = "alarms",
                              .received = 1000 + (double)i,
                              .events = 1,
                              .body = cases[i].body,
                              .len = cases[i].len,
                              .digest = brm_hash64(cases[i].body, cases[i].len) };
        size_t stored = 0;
        CHECK_INT(brm_store_add_body(s, &b, &stored, &err), 0);
        if (cases[i].packs)
            CHECK(stored < cases[i].len / 4); /* 30 events alike */
        else
            CHECK_INT((long)stored, (long)cases[i].len);
        got_len = 0;
        CHECK_INT(brm_store_body(s, b.id, copy_body, NULL, &err), 1);
        CHECK_INT((long)got_len, (long)cases[i].len);
        CHECK(memcmp(got_body, cases[i].body, cases[i].len) == 0);
        CHECK_INT(has_body(s, cases[i].body, cases[i].len, b.received, 0), 1);
    }
    char got[256];
    query(path, "SELECT group_concat(coalesce(size, 'as it came'), ',') FROM bodies", 0, got,
          sizeof(got));
    char want[64];
    snprintf(want, sizeof(want), "%zu,as it came,as it came", n);
    CHECK_STR(got, want);
    /* The ring's count is what is stored. */
    query(path, "SELECT length(body) < 1000 FROM bodies WHERE id = 1", 0, got, sizeof(got));
    CHECK_STR(got, "1");
    /* The console's reads see the bytes as they came. */
    struct brm_body_query q = { .text = "needle", .limit = 10 };
    page(s, &q);
    CHECK(nids == 1 && ids[0] == 1);
    q = (struct brm_body_query){ .field = "n", .value = "99", .limit = 10 };
    page(s, &q);
    CHECK(nids == 1 && ids[0] == 1);
    q = (struct brm_body_query){ .limit = 10 };
    got_len = 0;
    CHECK_INT(brm_store_find_bodies(s, &q, copy_body, NULL, &err), 0);
    CHECK_INT((long)got_len, (long)n); /* the oldest last: its size as it came */
    /* Replay's and recovery's read. */
    nids = 0;
    CHECK_INT(brm_store_bodies(s, 0, 1e12, 0, collect_body, NULL, &err), 0);
    CHECK_INT(nids, 3);
    /* Backfill's exact match compares the bytes as they came. */
    batch[n - 4] = '8'; /* "n":98 */
    CHECK_INT(has_body(s, batch, n, 0, 1e12), 0);
    batch[n - 4] = '9';
    /* Held, then released: the bytes as they came. */
    CHECK_INT(brm_store_hold(s, 1, &err), 0);
    nids = 0;
    CHECK_INT(brm_store_held(s, 0, 10, collect_body, NULL, &err), 0);
    CHECK(nids == 1 && ids[0] == 1);
    got_len = 0;
    CHECK_INT(brm_store_held(s, 0, 10, copy_body, NULL, &err), 0);
    CHECK(got_len == n && memcmp(got_body, batch, n) == 0);
    CHECK_INT(brm_store_release_held(s, 1, "[]", 2, &err), 1);
    CHECK_INT(brm_store_release_held(s, 99, "[]", 2, &err), 0); /* the ring took it */
    for (int i = 1; i <= 3; i++) CHECK_INT(brm_store_hold(s, i, &err), 0);
    brm_store_close(s);
    /* A packed row that does not unpack (a damaged file), and one whose
     * size is wrong. */
    query(path, "UPDATE bodies SET body = zeroblob(100) WHERE id = 1", 0, got, sizeof(got));
    query(path,
          "UPDATE bodies SET body = (SELECT body FROM bodies WHERE id = 1), size = -1 WHERE id = 2",
          0, got, sizeof(got));
    s = brm_store_open_reader(path, &err);
    CHECK(s != NULL);
    if (!s) return;
    CHECK_INT(brm_store_body(s, 1, copy_body, NULL, &err), -1);
    CHECK_HAS(err.msg, "does not unpack");
    CHECK_INT(brm_store_body(s, 2, copy_body, NULL, &err), -1);
    CHECK_HAS(err.msg, "cannot have");
    CHECK_INT(brm_store_body(s, 3, copy_body, NULL, &err), 1);
    /* Replay's read and the drain's go on past them, and say which. */
    nids = damaged = 0;
    CHECK_INT(brm_store_bodies(s, 0, 1e12, 0, collect_any, NULL, &err), 0);
    CHECK(nids == 3 && damaged == 2);
    nids = damaged = 0;
    CHECK_INT(brm_store_held(s, 0, 1, collect_any, NULL, &err), 0); /* one readable */
    CHECK(nids == 3 && damaged == 2 && ids[2] == 3);
    /* The console's text search: a damaged body matches nothing. */
    struct brm_body_query dq = { .text = "rogue", .limit = 10 };
    page(s, &dq);
    CHECK_INT(nids, 0);
    brm_store_close(s);
}

int main(void) {
    struct brm_err err;
    snprintf(dir, sizeof(dir), "/tmp/brume-store-XXXXXX");
    CHECK(mkdtemp(dir) != NULL);
    char *path = brm_xasprintf("%s/brume.db", dir);
    struct brm_store *s = brm_store_open(path, &err);
    CHECK(s != NULL);
    if (!s) return test_done();
    struct stat st;
    CHECK_INT(stat(path, &st), 0);
    CHECK_INT(st.st_mode & 077, 0); /* stored requests carry credentials */

    CHECK_INT(add(s, "1:1:1", "slack", NULL, 100), 1);
    CHECK_INT(add(s, "1:1:1", "slack", NULL, 100), 0); /* the same key: not twice */
    CHECK_INT(add(s, "1:1:2", "slack", NULL, 50), 1);
    CHECK_INT(add(s, "1:2:1", "slack", NULL, 500), 1);
    CHECK_INT(add(s, "2:1:1", "snow", "K", 100), 1);
    CHECK_INT(add(s, "2:1:2", "snow", "K", 90), 1); /* same ticket, due earlier */
    CHECK_INT(add(s, "2:1:3", "snow", "OTHER", 100), 1);

    due_for(s, "slack", 200); /* by next_at; the one due at 500 is not yet */
    CHECK_INT(nids, 2);
    CHECK(nids == 2 && ids[0] == 2 && ids[1] == 1);
    due_for(s, "snow", 200); /* a ticket's oldest goes first, whatever its next_at */
    CHECK_INT(nids, 2);
    CHECK(nids == 2 && ids[0] == 4 && ids[1] == 6);
    CHECK(brm_store_next_due(s, 0) == 50);
    CHECK(brm_store_next_due(s, 200) == 500); /* what is due already does not count */
    CHECK(brm_store_next_due(s, 500) == 0);

    /* Outcomes: done, pending again later, dead. */
    CHECK_INT(brm_store_begin(s, &err), 0);
    CHECK_INT(brm_store_finish(s, 4, 0, 0, BRM_DELIVERY_DONE, 200, 201, NULL, &err), 0);
    CHECK_INT(brm_store_finish(s, 2, 0, 0, BRM_DELIVERY_PENDING, 300, 429, "slow down", &err), 0);
    CHECK_INT(brm_store_finish(s, 1, 0, 0, BRM_DELIVERY_DEAD, 200, 400, "bad", &err), 0);
    CHECK_INT(brm_store_commit(s, &err), 0);
    due_for(s, "snow", 200);
    CHECK(nids == 2 && ids[0] == 5 && ids[1] == 6); /* the next of ticket K may go now */
    due_for(s, "slack", 200);
    CHECK_INT(nids, 0);
    long count;
    double oldest;
    CHECK_INT(brm_store_pending(s, 200, &count, &oldest), 0);
    CHECK_INT(count, 4);
    CHECK(oldest == 100);

    nids = 0;
    CHECK_INT(brm_store_list(s, 0, 10, collect, NULL, &err), 0);
    CHECK_INT(nids, 5); /* pending and dead, not done */
    CHECK(ids[0] == 6); /* newest first */
    nids = 0;
    CHECK_INT(brm_store_list(s, 1, 10, collect, NULL, &err), 0);
    CHECK_INT(nids, 6);

    CHECK_INT(brm_store_retry(s, 1, &err), 1); /* dead -> pending, due now */
    CHECK_INT(brm_store_retry(s, 4, &err), 0); /* done stays done */
    CHECK_INT(brm_store_retry(s, 99, &err), 0);
    due_for(s, "slack", brm_time_now());
    CHECK_INT(nids, 3);
    /* ...with its max_age (expires - created: 900s) from now, attempts from 0. */
    nids = 0;
    CHECK_INT(brm_store_list(s, 0, 10, collect, NULL, &err), 0);
    CHECK(last_retried.id == 1 && last_retried.attempts == 0);
    CHECK(last_retried.expires - brm_time_now() > 890 &&
          last_retried.expires - brm_time_now() < 901);
    CHECK_INT(brm_store_drop(s, 3, &err), 1);
    CHECK_INT(brm_store_drop(s, 3, &err), 0);
    /* Done after a failed attempt: its row says so, with both attempts. */
    CHECK_INT(brm_store_finish(s, 2, 1, 0, BRM_DELIVERY_DONE, 400, 200, NULL, &err), 0);
    CHECK_INT(brm_store_delivery(s, 2, collect, NULL, &err), 1);
    CHECK(seen.state == BRM_DELIVERY_DONE && seen.attempts == 2 && seen.last_status == 200);
    CHECK_INT(brm_store_retry(s, 2, &err), 0); /* done stays done */
    CHECK_INT(brm_store_pending(s, 200, &count, &oldest), 0);
    CHECK_INT(count, 3); /* 1 (retried), 5 and 6 */
    /* Done at its first attempt to a target with secrets: its request,
     * which may hold them, goes; its row says done. */
    char body[] = "{\"routing_key\":\"R0UT1NGK3Y\"}";
    struct brm_delivery secret = { .key = "9:1:1",
                                   .target = "pd",
                                   .rule = "r",
                                   .topic = "alarms",
                                   .event = "e1",
                                   .method = "POST",
                                   .url = "https://events.pagerduty.com/v2/enqueue",
                                   .body = body,
                                   .body_len = strlen(body),
                                   .created = 100,
                                   .next_at = 100,
                                   .expires = 1000 };
    CHECK_INT(brm_store_add_delivery(s, &secret, &err), 1);
    nids = 0;
    CHECK_INT(brm_store_list(s, 0, 1, collect, NULL, &err), 0); /* the newest: it */
    int64_t pd = nids == 1 ? ids[0] : 0;
    CHECK_INT(brm_store_finish(s, pd, 0, 1, BRM_DELIVERY_DONE, 200, 202, NULL, &err), 0);
    CHECK_INT(brm_store_delivery(s, pd, collect, NULL, &err), 1);
    CHECK(seen.state == BRM_DELIVERY_DONE && seen.attempts == 1 && seen.last_status == 202 &&
          !seen_body);
    /* Done deliveries go with their body, keys and all; pending ones stay. */
    char small[] = "{}";
    struct brm_body two = { .id = 2,
                            .source = "mist",
                            .topic = "alarms",
                            .received = 500,
                            .events = 1,
                            .body = small,
                            .len = 2 };
    CHECK_INT(brm_store_add_body(s, &two, NULL, &err), 0);
    struct brm_prune p = { .before = 600, .limit = 10, .bytes = 2, .rows = 1 };
    CHECK_INT(brm_store_prune_bodies(s, &p, &err), 0);
    CHECK_INT(p.removed, 1);
    CHECK(p.after == 2 && p.bytes == 0 && p.rows == 0 && p.exhausted);
    CHECK_INT(add(s, "2:1:1", "snow", "K", 100), 1);
    CHECK_INT(add(s, "2:1:2", "snow", "K", 100), 0); /* pending: kept */

    char ref[64];
    CHECK_INT(brm_store_ticket(s, "snow", "K", ref, sizeof(ref)), 0);
    CHECK_INT(brm_store_set_ticket(s, "snow", "K", "SYS1", &err), 0);
    CHECK_INT(brm_store_ticket(s, "snow", "K", ref, sizeof(ref)), 1);
    CHECK_STR(ref, "SYS1");
    CHECK_INT(brm_store_ticket(s, "jira", "K", ref, sizeof(ref)), 0);
    CHECK_INT(brm_store_set_ticket(s, "snow", "K", "SYS2", &err), 0);
    brm_store_ticket(s, "snow", "K", ref, sizeof(ref));
    CHECK_STR(ref, "SYS2");
    /* The journal: bodies by time, the last id, pruning by age and size. */
    CHECK_INT(brm_store_last_body(s, &err), 0);
    char blob[1000];
    scramble(blob, sizeof(blob));
    for (int i = 1; i <= 10; i++) {
        struct brm_body b = { .id = i * 10,
                              .source = "mist",
                              .topic = "alarms",
                              .received = 1000 + i,
                              .events = 1,
                              .body = blob,
                              .len = 1000 };
        CHECK_INT(brm_store_add_body(s, &b, NULL, &err), 0);
    }
    CHECK_INT(brm_store_last_body(s, &err), 100);
    nids = 0;
    CHECK_INT(brm_store_bodies(s, 1003, 1006, 0, collect_body, NULL, &err), 0);
    CHECK_INT(nids, 3); /* received 1003, 1004, 1005 */
    CHECK(nids == 3 && ids[0] == 30 && ids[2] == 50);
    p = (struct brm_prune){ .before = 1003, .limit = 100, .bytes = 10000, .rows = 10 };
    CHECK_INT(brm_store_prune_bodies(s, &p, &err), 0);
    CHECK_INT(p.removed, 2); /* received before 1003 */
    CHECK(p.after == 20 && p.bytes == 8000 && p.rows == 8 && !p.exhausted);
    p.before = 0;
    p.max_bytes = 5000;
    p.limit = 2; /* a step looks at no more than its limit */
    CHECK_INT(brm_store_prune_bodies(s, &p, &err), 0);
    CHECK_INT(p.removed, 2);
    p.limit = 100;
    CHECK_INT(brm_store_prune_bodies(s, &p, &err), 0);
    CHECK_INT(p.removed, 1); /* 8 000 bytes of bodies down to 5 000 */
    CHECK(p.bytes == 5000 && p.after == 50);
    nids = 0;
    brm_store_bodies(s, 0, 1e12, 0, collect_body, NULL, &err);
    CHECK_INT(nids, 5);
    CHECK(nids && ids[0] == 60);
    /* Retention may empty the journal; its ids do not start again. */
    p.before = 1e12;
    CHECK_INT(brm_store_prune_bodies(s, &p, &err), 0);
    CHECK_INT(p.removed, 5);
    CHECK(p.exhausted && p.rows == 0);
    CHECK_INT(brm_store_set_meta(s, "last_body", 100, &err), 0);
    CHECK_INT(brm_store_last_body(s, &err), 100);
    CHECK_INT(brm_store_meta(s, "journal_rows", &err), 0);
    CHECK_INT(brm_store_set_meta(s, "journal_rows", 7, &err), 0);
    CHECK_INT(brm_store_meta(s, "journal_rows", &err), 7);

    /* Backfill: a body is found by its exact bytes (the digest finds the
     * row, the bytes decide), and a source's newest body in a bounded look. */
    const char *live = "{\"topic\":\"alarms\",\"events\":[{\"id\":\"a\"}]}";
    const char *other = "{\"topic\":\"alarms\",\"events\":[{\"id\":\"b\"}]}";
    uint64_t d = brm_hash64(live, strlen(live));
    CHECK_INT(has_body(s, live, strlen(live), 0, 1e12), 0);
    add_small_body(s, 200, "org", 3000, live, 0);
    add_small_body(s, 201, "site", 3100, other, 1);
    CHECK_INT(has_body(s, live, strlen(live), 3005, 10), 1);
    CHECK_INT(has_body(s, live, strlen(live) - 1, 3005, 10), 0); /* not the same bytes */
    /* Received outside the window Mist's log gives: not looked at. */
    CHECK_INT(has_body(s, live, strlen(live), 3500, 499), 0);
    CHECK_INT(has_body(s, live, strlen(live), 1500, 1499), 0);
    /* A body backfill took in was received when it was taken: found by its
     * digest, whatever the window. */
    CHECK_INT(has_body(s, other, strlen(other), 5, 5), 1);
    CHECK_INT(has_body(s, other, strlen(other), NAN, 5), 1);
    CHECK_INT(has_body(s, live, strlen(live), NAN, 1e12), 0); /* no time: no window */
    {
        /* A page at once: each probe says for itself; the same bytes twice
         * are found twice; one of the same digest but other bytes is not. */
        char twisted[64];
        snprintf(twisted, sizeof(twisted), "%s", live);
        twisted[strlen(twisted) - 4] = 'z';
        struct brm_store_probe pr[] = {
            { brm_hash64(other, strlen(other)), other, strlen(other), 3000, -1 },
            { d, live, strlen(live), 3000, -1 },
            { d, twisted, strlen(twisted), 3000, -1 }, /* a digest that lies */
            { brm_hash64("{}", 2), "{}", 2, 3000, -1 },
            { d, live, strlen(live), NAN, -1 }, /* no time: found in another's window */
        };
        CHECK_INT(brm_store_has_bodies(s, pr, 5, 60, &err), 0);
        CHECK(pr[0].found == 1 && pr[1].found == 1 && pr[2].found == 0 && pr[3].found == 0 &&
              pr[4].found == 1);
        /* Windows apart: the body received at 1000 and the one at 3000
         * are found, each in its own short window. */
        const char *far = "{\"topic\":\"alarms\",\"events\":[{\"id\":\"far\"}]}";
        add_small_body(s, 202, "org", 1000, far, 0);
        struct brm_store_probe apart[] = {
            { d, live, strlen(live), 3001, -1 },
            { brm_hash64(far, strlen(far)), far, strlen(far), 999, -1 },
        };
        CHECK_INT(brm_store_has_bodies(s, apart, 2, 2, &err), 0);
        CHECK(apart[0].found == 1 && apart[1].found == 1);
        /* Between the two windows is not looked at: a probe without a time
         * for the body received at 3000, with windows at 1000 and 5000. */
        struct brm_store_probe between[] = {
            { brm_hash64(far, strlen(far)), far, strlen(far), 999, -1 },
            { brm_hash64("{}", 2), "{}", 2, 5000, -1 },
            { d, live, strlen(live), NAN, -1 },
        };
        CHECK_INT(brm_store_has_bodies(s, between, 3, 2, &err), 0);
        CHECK(between[0].found == 1 && between[1].found == 0 && between[2].found == 0);
        CHECK_INT(brm_store_has_bodies(s, pr, 0, 60, &err), 0);
    }
    double last = -1;
    CHECK_INT(brm_store_source_last(s, "org", 0, 100, &last, &err), 1);
    CHECK(last == 3000);
    /* The site's one body was backfilled: it says nothing of when the site
     * last posted. */
    CHECK_INT(brm_store_source_last(s, "site", 0, 100, &last, &err), 0);
    CHECK_INT(brm_store_source_last(s, "org", 3050, 100, &last, &err), 0); /* too old */
    CHECK_INT(brm_store_source_last(s, "org", 0, 1, &last, &err), 0);      /* past the look */
    CHECK(last == 0);
    CHECK_INT(brm_store_source_last(s, "nobody", 0, 100, &last, &err), 0);
    p = (struct brm_prune){ .before = 1e12, .limit = 100, .after = 100, .bytes = 1000, .rows = 3 };
    CHECK_INT(brm_store_prune_bodies(s, &p, &err), 0);
    CHECK_INT(p.removed, 3);

    /* A probe writes a body's worth and leaves no body behind. */
    CHECK_INT(brm_store_probe(s, 5000, &err), 0);
    nids = 0;
    CHECK_INT(brm_store_bodies(s, 0, 1e12, 0, collect_body, NULL, &err), 0);
    CHECK_INT(nids, 0);

    /* A cap on the file: writes past it fail as on a full disk. */
    CHECK_INT(brm_store_limit(s, 64 * 4096, &err), 0);
    int full = 0;
    for (int i = 0; i < 500 && !full; i++) {
        struct brm_body b = { .id = 1000 + i,
                              .source = "mist",
                              .topic = "alarms",
                              .received = 2000,
                              .events = 1,
                              .body = blob,
                              .len = 1000 };
        if (brm_store_add_body(s, &b, NULL, &err) < 0) full = 1;
    }
    CHECK(full);
    CHECK_HAS(err.msg, "full");
    CHECK_INT(brm_store_probe(s, 1000, &err), -1); /* so /healthz does not say it is back */
    CHECK_HAS(err.msg, "full");
    brm_store_close(s);

    /* Reopening keeps everything, and does not migrate twice. */
    s = brm_store_open(path, &err);
    CHECK(s != NULL);
    if (s) {
        CHECK_INT(brm_store_ticket(s, "snow", "K", ref, sizeof(ref)), 1);
        CHECK_INT(add(s, "1:1:2", "slack", NULL, 50), 0);
        brm_store_close(s);
    }
    /* A store from before version 10, its meta a rowid table with an index
     * of its keys, keeps its values in the table of one B-tree. */
    char got[256];
    long before_count;
    double before_oldest;
    s = brm_store_open(path, &err);
    CHECK(s != NULL);
    if (!s) return test_done();
    CHECK_INT(brm_store_pending(s, 1000, &before_count, &before_oldest), 0);
    CHECK(before_count > 0);
    brm_store_close(s);
    static const char *const v9[] = {
        /* Before version 12, what was pending said so in its row, with
         * four partial indexes of them. */
        "UPDATE deliveries SET state = 1 WHERE state = 0 AND id NOT IN (SELECT id FROM queue)",
        "DROP TABLE queue",
        "CREATE INDEX deliveries_target ON deliveries(target, next_at) WHERE state = 0",
        "CREATE INDEX deliveries_ticket ON deliveries(target, ticket, id)"
        " WHERE state = 0 AND ticket IS NOT NULL",
        "CREATE INDEX deliveries_due ON deliveries(next_at) WHERE state = 0",
        "CREATE INDEX deliveries_age ON deliveries(created) WHERE state = 0",
        "DROP TABLE meta",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        "INSERT INTO meta VALUES ('last_body', 1234), ('journal_bytes', 99)",
        "ALTER TABLE bodies DROP COLUMN size",
        /* Attempts of a delivery that is gone, and of one that is not. */
        "INSERT INTO attempts (delivery, at, status) VALUES (987654, 1, 500),"
        " ((SELECT min(id) FROM deliveries), 2, 503)",
        "PRAGMA user_version = 9",
    };
    for (size_t i = 0; i < sizeof(v9) / sizeof(v9[0]); i++) query(path, v9[i], 0, got, sizeof(got));
    s = brm_store_open(path, &err);
    CHECK(s != NULL);
    if (s) {
        CHECK_INT(brm_store_meta(s, "last_body", &err), 1234);
        CHECK_INT(brm_store_meta(s, "journal_bytes", &err), 99);
        CHECK_INT(brm_store_set_meta(s, "journal_bytes", 100, &err), 0);
        CHECK_INT(brm_store_meta(s, "journal_bytes", &err), 100);
        /* Version 12 queued what was pending, and only that. */
        CHECK_INT(brm_store_pending(s, 1000, &count, &oldest), 0);
        CHECK(count == before_count && oldest == before_oldest);
        nids = 0;
        CHECK_INT(brm_store_list(s, 0, 100, collect, NULL, &err), 0);
        CHECK(nids >= count); /* pending (and dead) ones */
        brm_store_close(s);
    }
    query(path, "SELECT sql FROM sqlite_schema WHERE name = 'meta'", 0, got, sizeof(got));
    CHECK_HAS(got, "WITHOUT ROWID");
    query(path, "SELECT count(*) FROM sqlite_schema WHERE tbl_name = 'meta'", 0, got, sizeof(got));
    CHECK_STR(got, "1");
    /* Version 13: the received index carries the digest; only backfilled
     * bodies' digests have an index of their own. */
    query(path, "SELECT group_concat(name) FROM pragma_index_info('bodies_received')", 0, got,
          sizeof(got));
    CHECK_STR(got, "received,digest");
    query(path, "SELECT sql FROM sqlite_schema WHERE name = 'bodies_digest'", 0, got, sizeof(got));
    CHECK_HAS(got, "WHERE backfilled = 1");
    /* Version 14: attempts live with their delivery; an orphan went. */
    query(path, "SELECT count(*) FROM attempts WHERE delivery = 987654", 0, got, sizeof(got));
    CHECK_STR(got, "0");
    query(path, "SELECT count(*) FROM attempts WHERE at = 2 AND status = 503", 0, got, sizeof(got));
    CHECK_STR(got, "1");
    /* A database from a newer brume is refused, not damaged. */
    check_plans(path);
    char version[16];
    query(path, "PRAGMA user_version = 99", 0, version, sizeof(version));
    s = brm_store_open(path, &err);
    CHECK(s == NULL);
    CHECK_HAS(err.msg, "from a newer brume");
    free(path);
    path = brm_xasprintf("%s/console.db", dir);
    console_reads(path);
    free(path);
    path = brm_xasprintf("%s/packed.db", dir);
    packed_bodies(path);
    free(path);
    path = brm_xasprintf("%s/ring.db", dir);
    ring_frees_without_writing(path);
    free(path);
    path = brm_xasprintf("%s/sweep.db", dir);
    sweep_takes_old_done_deliveries(path);
    free(path);
    char *cmd = brm_xasprintf("rm -rf %s", dir);
    CHECK_INT(system(cmd), 0);
    free(cmd);
    return test_done();
}
