#include "store.h"

#include <limits.h>
#include <pthread.h>
#include <lz4.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* Each entry moves the schema one version forward; never edit one that has
 * shipped, add the next. */
static const char *const migrations[] = {
    /* 1: deliveries and tickets */
    "CREATE TABLE deliveries ("
    "  id INTEGER PRIMARY KEY,"
    "  key TEXT NOT NULL UNIQUE,"
    "  target TEXT NOT NULL,"
    "  rule TEXT NOT NULL,"
    "  topic TEXT NOT NULL,"
    "  event TEXT NOT NULL,"
    "  request TEXT NOT NULL,"
    "  ticket TEXT,"
    "  state INTEGER NOT NULL,"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  created REAL NOT NULL,"
    "  next_at REAL NOT NULL,"
    "  expires REAL NOT NULL,"
    "  last_status INTEGER NOT NULL DEFAULT 0,"
    "  last_error TEXT,"
    "  finished REAL);"
    /* Partial indexes: a delivery leaves them when it is done, so they
     * hold only what is pending and finishing one costs little. */
    "CREATE INDEX deliveries_due ON deliveries(next_at) WHERE state = 0;"
    "CREATE INDEX deliveries_target ON deliveries(target, next_at) WHERE state = 0;"
    "CREATE INDEX deliveries_ticket ON deliveries(target, ticket, id)"
    "  WHERE state = 0 AND ticket IS NOT NULL;"
    "CREATE TABLE tickets ("
    "  target TEXT NOT NULL,"
    "  key TEXT NOT NULL,"
    "  ref TEXT NOT NULL,"
    "  created REAL NOT NULL,"
    "  PRIMARY KEY (target, key));",
    /* 2: the journal of accepted bodies; rule state and dedupe marks. A body
     * row is committed with its deliveries and state in one transaction:
     * its being there means its rules ran and their outcome is stored. */
    "CREATE TABLE bodies ("
    "  id INTEGER PRIMARY KEY,"
    "  source TEXT NOT NULL,"
    "  topic TEXT NOT NULL,"
    "  received REAL NOT NULL,"
    "  events INTEGER NOT NULL,"
    "  body BLOB NOT NULL);"
    "CREATE INDEX bodies_received ON bodies(received);"
    "CREATE TABLE state ("
    "  key TEXT PRIMARY KEY,"
    "  value TEXT NOT NULL,"
    "  expires REAL NOT NULL);", /* 0: never */
    /* 3: the highest body id ever journaled. Retention may empty the
     * journal; ids must still not start again, or new deliveries would take
     * the keys of old ones (and be dropped as already queued). */
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
    "INSERT INTO meta VALUES ('last_body', coalesce((SELECT max(id) FROM bodies), 0));",
    /* 4: requests as columns the outbox reads as they are (no JSON to decode
     * for a plain request; a ticket's plan, and what older versions stored,
     * stays JSON), and no index the queries do not use. The journal's size
     * is kept with it (meta), not summed over every body. SQLite cannot drop
     * a NOT NULL: the table is made again. */
    "CREATE TABLE deliveries4 ("
    "  id INTEGER PRIMARY KEY,"
    "  key TEXT NOT NULL UNIQUE,"
    "  target TEXT NOT NULL,"
    "  rule TEXT NOT NULL,"
    "  topic TEXT NOT NULL,"
    "  event TEXT NOT NULL,"
    "  method TEXT,"
    "  url TEXT,"
    "  headers TEXT,"
    "  body BLOB,"
    "  sign INTEGER NOT NULL DEFAULT 0,"
    "  plan TEXT,"
    "  ticket TEXT,"
    "  state INTEGER NOT NULL,"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  created REAL NOT NULL,"
    "  next_at REAL NOT NULL,"
    "  expires REAL NOT NULL,"
    "  last_status INTEGER NOT NULL DEFAULT 0,"
    "  last_error TEXT,"
    "  finished REAL);"
    "INSERT INTO deliveries4 (id, key, target, rule, topic, event, plan, ticket, state, attempts,"
    "  created, next_at, expires, last_status, last_error, finished)"
    "  SELECT id, key, target, rule, topic, event, CASE WHEN state = 1 THEN NULL ELSE request END,"
    "  ticket, state, attempts, created, next_at, expires, last_status, last_error, finished"
    "  FROM deliveries;"
    "DROP TABLE deliveries;"
    "ALTER TABLE deliveries4 RENAME TO deliveries;"
    "CREATE INDEX deliveries_target ON deliveries(target, next_at) WHERE state = 0;"
    "CREATE INDEX deliveries_ticket ON deliveries(target, ticket, id)"
    "  WHERE state = 0 AND ticket IS NOT NULL;"
    "INSERT OR REPLACE INTO meta VALUES"
    "  ('journal_bytes', (SELECT coalesce(sum(length(body)), 0) FROM bodies)),"
    "  ('journal_rows', (SELECT count(*) FROM bodies));",
    /* 5: time in rules. A timer or a digest is a state row with a due time;
     * a digest's items are rows of their own, so a busy one is not one
     * value of 64 KB. */
    "ALTER TABLE state ADD COLUMN due REAL NOT NULL DEFAULT 0;"
    "CREATE TABLE group_items ("
    "  key TEXT NOT NULL,"
    "  seq INTEGER NOT NULL,"
    "  item TEXT NOT NULL,"
    "  PRIMARY KEY (key, seq)) WITHOUT ROWID;",
    /* 6: what the console reads. A body's row keeps what its rules did
     * (runs: compact JSON, engine.h), written by the same INSERT, a blob so
     * that length() is its size in bytes (it counts in the journal's size).
     * bodies_topic (the rowid is its second column) makes a page of one
     * topic's bodies a range: one entry of a few dozen bytes per body, put
     * at the end of its topic's range (ids grow), beside the row's hundreds
     * of bytes. A delivery enters deliveries_dead only when it dies (rare),
     * and leaves it when it is retried or dropped. attempts: one row per
     * attempt's outcome, written with the outcomes' batch (a few per
     * delivery), pruned by age and count in the writer's upkeep, and with
     * their done delivery when the ring removes its body. */
    "ALTER TABLE bodies ADD COLUMN runs BLOB;"
    "CREATE INDEX bodies_topic ON bodies(topic);"
    "CREATE INDEX deliveries_dead ON deliveries(state) WHERE state = 2;"
    "CREATE TABLE attempts ("
    "  id INTEGER PRIMARY KEY,"
    "  delivery INTEGER NOT NULL,"
    "  at REAL NOT NULL,"
    "  status INTEGER NOT NULL,"
    "  answer TEXT,"
    "  error TEXT);"
    "CREATE INDEX attempts_delivery ON attempts(delivery);",
    /* 7: backfill. A body keeps a 64-bit digest of its bytes, so that one
     * taken again from Mist's delivery log is known by a look in an index
     * (the bytes are compared too: the digest only finds the row), and
     * whether it came from that log. The index leaves out the rows journaled
     * before this version, which have no digest. */
    "ALTER TABLE bodies ADD COLUMN digest INTEGER;"
    "ALTER TABLE bodies ADD COLUMN backfilled INTEGER NOT NULL DEFAULT 0;"
    "CREATE INDEX bodies_digest ON bodies(digest) WHERE digest IS NOT NULL;",
    /* 8: bodies journaled while the shared state (Redis) was unreachable,
     * their rules not run yet: they run, in id order, when it is back, and
     * their outcome (deliveries, runs) is stored then. */
    "CREATE TABLE held (id INTEGER PRIMARY KEY);",
    /* 9: a backlog costs what is read of it. The outbox's next wake-up (the
     * soonest pending next_at after now) and its oldest-age gauge each read
     * one entry of an index of pending deliveries, not all of them: at 80k
     * pending, 42 and 400 ms became well under 1 ms. */
    "CREATE INDEX deliveries_due ON deliveries(next_at) WHERE state = 0;"
    "CREATE INDEX deliveries_age ON deliveries(created) WHERE state = 0;",
    /* 10: the writer sets meta's values in every commit it makes. With a
     * rowid and an index on its key, each commit wrote two of its pages to
     * the WAL (of about twelve for a group of small bodies); one now. */
    "CREATE TABLE meta_keyed (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;"
    "INSERT INTO meta_keyed SELECT key, value FROM meta;"
    "DROP TABLE meta;"
    "ALTER TABLE meta_keyed RENAME TO meta;",
    /* 11: a body may be stored packed (LZ4, see brm_store_add_body): SIZE
     * is then its size as it came, and brume_body(body, size) unpacks it.
     * NULL: stored as it came, as every body before this version. */
    "ALTER TABLE bodies ADD COLUMN size INTEGER;",
    /* 12: what is still to be sent in a narrow table of its own: a
     * delivery is pending while its row is in queue. Finishing one rewrote
     * its whole deliveries row (about 700 bytes with its request), read its
     * page back first, and took it out of four partial indexes; now a
     * delivery done at its first attempt only leaves queue (a few dozen
     * bytes, in id order, beside the others of its batch) and its
     * deliveries row is never written again: its outcome is its attempt's
     * row. One that failed first (the rare path) has its row updated as
     * before: state 1 or 2, its attempts, last status and error. The
     * request stays with the delivery, for the console to show, until the
     * ring removes its body (the space a done request left was never used
     * again anyway: rows go at the end of the table), unless it may hold
     * a secret other than in its URL (the outbox says): it goes when the
     * delivery is done, as before. At 10 messages a request, the writer
     * wrote 44 KB a request, now 29. */
    "CREATE TABLE queue ("
    "  id INTEGER PRIMARY KEY," /* the delivery's */
    "  target TEXT NOT NULL,"
    "  next_at REAL NOT NULL,"
    "  ticket TEXT);"
    "INSERT INTO queue SELECT id, target, next_at, ticket FROM deliveries WHERE state = 0;"
    "DROP INDEX deliveries_due;"
    "DROP INDEX deliveries_target;"
    "DROP INDEX deliveries_ticket;"
    "DROP INDEX deliveries_age;"
    "CREATE INDEX queue_target ON queue(target, next_at);"
    "CREATE INDEX queue_due ON queue(next_at);"
    "CREATE INDEX queue_ticket ON queue(target, ticket, id) WHERE ticket IS NOT NULL;",
    /* 13: backfill finds a body Mist logged as failed by when Mist posted
     * it (brm_store_has_bodies), not by an index of every digest: those
     * come in no order, and the writer put each in its own page of the
     * index (a WAL frame a body, of about sixteen a commit at one event a
     * body). The digest goes beside the time in the received index, which
     * grows at its end; the bodies backfill took in, whose received time
     * is when they were taken, keep an index of their digests. */
    "DROP INDEX bodies_digest;"
    "DROP INDEX bodies_received;"
    "CREATE INDEX bodies_received ON bodies(received, digest);"
    "CREATE INDEX bodies_digest ON bodies(digest) WHERE backfilled = 1;",
    /* 14: a delivery's attempts live as long as it does, its newest 16 at
     * most (brm_store_add_attempt); they were pruned by age (7 days) and
     * count (200,000), which at 40,000 messages a second took a done
     * delivery's one attempt, so its status and time, within seconds.
     * Attempts whose delivery is gone (none should be) go now: nothing
     * would remove them later. */
    "DELETE FROM attempts WHERE NOT EXISTS"
    "  (SELECT 1 FROM deliveries d WHERE d.id = attempts.delivery);",
};

enum stmt {
    S_BEGIN,
    S_COMMIT,
    S_ROLLBACK,
    S_ADD,
    S_DUE,
    S_DUE_TARGET,
    S_NEXT_DUE,
    S_QUEUE,
    S_FINISH,
    S_REQUEUE,
    S_DEQUEUE,
    S_REQUEUE_NOW,
    S_LIST,
    S_LIST_ALL,
    S_RETRY,
    S_DROP,
    S_PENDING,
    S_OLDEST,
    S_TICKET,
    S_SET_TICKET,
    S_FORGET_TICKET,
    S_ADD_BODY,
    S_SET_META,
    S_META,
    S_MAX_BODY,
    S_BODIES,
    S_OLDEST_BODIES,
    S_PRUNE_BODIES,
    S_PRUNE_DONE_ATTEMPTS,
    S_PRUNE_DONE,
    S_DELIVERIES_FROM,
    S_SWEEP_DONE_ATTEMPTS,
    S_SWEEP_DONE,
    S_MAX_DELIVERY,
    S_PUT_STATE,
    S_DEL_STATE,
    S_STATE,
    S_PRUNE_STATE,
    S_PUT_ITEM,
    S_DROP_ITEMS,
    S_ITEMS,
    S_ADD_ATTEMPT,
    S_TRIM_ATTEMPTS,
    S_DROP_ATTEMPTS,
    S_C_BODIES,
    S_C_BODIES_TOPIC,
    S_C_ID_FROM,
    S_C_ID_BEFORE,
    S_C_BODY,
    S_C_FIELD,
    S_C_DELIVERIES,
    S_C_PENDING,
    S_C_DEAD,
    S_C_DELIVERY,
    S_C_OF_BODY,
    S_C_ATTEMPTS,
    S_PROBE_ADD,
    S_PROBE_DROP,
    S_HAS_TAKEN,
    S_RECEIVED_DIGESTS,
    S_SAME_BYTES,
    S_SOURCE_LAST,
    S_HOLD,
    S_UNHOLD,
    S_SET_RUNS,
    S_HELD,
    S_HELD_COUNT,
    S_PRUNE_HELD,
    NSTMT
};

/*
 * A delivery as read_delivery takes it, from deliveries d and its queue row
 * q (NULL when it is not pending). Not in queue and never failed (stored
 * state 0): done at its first attempt, whose row has its status and time.
 */
#define FIRST_TRY "(q.id IS NULL AND d.state = 0)"
#define ON_FIRST_TRY(then, otherwise)                                                              \
    " CASE WHEN " FIRST_TRY " THEN " then " ELSE " otherwise " END"
#define LAST_ATTEMPT(col)                                                                          \
    "(SELECT " col " FROM attempts a WHERE a.delivery = d.id ORDER BY a.id DESC LIMIT 1)"
#define STATE_COLUMN    " CASE WHEN q.id IS NOT NULL THEN 0 WHEN d.state = 2 THEN 2 ELSE 1 END"
#define ATTEMPTS_COLUMN ON_FIRST_TRY("1", "attempts")
#define STATUS_COLUMN   ON_FIRST_TRY("coalesce(" LAST_ATTEMPT("status") ", 0)", "last_status")
#define ERROR_COLUMN    ON_FIRST_TRY("NULL", "last_error")
#define FINISHED_COLUMN ON_FIRST_TRY(LAST_ATTEMPT("at"), "finished")
#define DELIVERY_COLUMNS                                                                           \
    "d.id, key, d.target, rule, topic, event, d.ticket," STATE_COLUMN "," ATTEMPTS_COLUMN          \
    ", created, coalesce(q.next_at, d.next_at), expires," STATUS_COLUMN "," ERROR_COLUMN           \
    ", method, url, headers, body, sign, plan," FINISHED_COLUMN
/* Done: neither pending (in queue) nor dead. */
#define DONE          "d.state <> 2 AND NOT EXISTS (SELECT 1 FROM queue q WHERE q.id = d.id)"
#define WITH_QUEUE    " LEFT JOIN queue q ON q.id = d.id"
#define DELIVERY_JOIN " FROM deliveries d" WITH_QUEUE
#define QUEUE_JOIN    " FROM queue q JOIN deliveries d ON d.id = q.id"
/* Done before ?3: at its last attempt (as FINISHED_COLUMN says; one retried
 * by hand and done at its next try has the time it died as finished). */
#define SWEPT        "coalesce(" LAST_ATTEMPT("at") ", d.finished, d.created) < ?3"
#define FUTURE_SLACK 60.0 /* seconds: a delivery made later than now + this says a clock lied */
/* A body row holds the bytes ?2 (as they came, packed or not). */
#define SAME_BYTES "coalesce(size, length(body)) = length(?2) AND brume_body(body, size) = ?2"
/* The console's listings. */
#define CONSOLE_DELIVERY "SELECT " DELIVERY_COLUMNS " FROM deliveries d"
#define CONSOLE_BODY                                                                               \
    "SELECT id, source, topic, received, events, coalesce(size, length(body)), runs FROM bodies"

static const char *const sql[NSTMT] = {
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
    [S_ADD] =
        "INSERT INTO deliveries (key, target, rule, topic, event, ticket, state, created,"
        " next_at, expires, method, url, headers, body, sign, plan)"
        " VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
    [S_QUEUE] = "INSERT INTO queue (id, target, next_at, ticket) VALUES (?, ?, ?, ?)",
    [S_DUE] = "SELECT " DELIVERY_COLUMNS QUEUE_JOIN " WHERE q.next_at <= ?"
              " ORDER BY q.next_at, q.id LIMIT ?",
    /* A ticket's deliveries go one at a time, oldest first: an update must
     * not overtake the create, nor a resolve the incident it resolves. */
    [S_DUE_TARGET] = "SELECT " DELIVERY_COLUMNS QUEUE_JOIN " WHERE q.target = ? AND q.next_at <= ?"
                     " AND (q.ticket IS NULL OR NOT EXISTS (SELECT 1 FROM queue e"
                     " WHERE e.target = q.target AND e.ticket = q.ticket AND e.id < q.id))"
                     " ORDER BY q.next_at, q.id LIMIT ?",
    [S_NEXT_DUE] = "SELECT min(next_at) FROM queue WHERE next_at > ?",
    /* A delivery done at its first attempt only leaves queue (migration
     * 12); one that failed has its row say so, and one whose request may
     * hold a secret loses its request (?7). A done delivery keeps its key
     * (a re-run must not queue it again). FINISHED is when the last attempt
     * ended, whatever its outcome. */
    [S_FINISH] = "UPDATE deliveries SET state = ?1, next_at = ?2, attempts = attempts + 1,"
                 " last_status = ?3, last_error = ?4, finished = ?5,"
                 " headers = CASE WHEN ?7 THEN NULL ELSE headers END,"
                 " body = CASE WHEN ?7 THEN NULL ELSE body END,"
                 " plan = CASE WHEN ?7 THEN NULL ELSE plan END WHERE id = ?6",
    [S_REQUEUE] = "UPDATE queue SET next_at = ? WHERE id = ?",
    [S_DEQUEUE] = "DELETE FROM queue WHERE id = ?",
    [S_LIST] = "SELECT " DELIVERY_COLUMNS DELIVERY_JOIN " WHERE q.id IS NOT NULL OR d.state = 2"
               " ORDER BY d.id DESC LIMIT ?",
    [S_LIST_ALL] = "SELECT " DELIVERY_COLUMNS DELIVERY_JOIN " ORDER BY d.id DESC LIMIT ?",
    /* Due now, with its max_age afresh and its backoff from the start (the
     * last attempt's status, error and time stay, for `brume outbox list`):
     * a dead one or a pending one, not one done. */
    [S_RETRY] = "UPDATE deliveries SET state = 0, next_at = ?1, expires = ?1 + expires - created,"
                " attempts = 0 WHERE id = ?2"
                " AND (state = 2 OR EXISTS (SELECT 1 FROM queue q WHERE q.id = ?2))",
    [S_REQUEUE_NOW] = "INSERT OR REPLACE INTO queue (id, target, next_at, ticket)"
                      " SELECT id, target, next_at, ticket FROM deliveries WHERE id = ?",
    [S_DROP] = "DELETE FROM deliveries WHERE id = ?",
    [S_PENDING] = "SELECT count(*) FROM queue",
    /* Ids grow with time: the oldest pending is the first in queue. */
    [S_OLDEST] = "SELECT (SELECT created FROM deliveries WHERE id = (SELECT min(id) FROM queue))",
    [S_TICKET] = "SELECT ref FROM tickets WHERE target = ? AND key = ?",
    [S_SET_TICKET] = "INSERT INTO tickets (target, key, ref, created) VALUES (?, ?, ?, ?)"
                     " ON CONFLICT (target, key) DO UPDATE SET ref = excluded.ref",
    [S_FORGET_TICKET] = "DELETE FROM tickets WHERE target = ? AND key = ?",
    [S_ADD_BODY] = "INSERT INTO bodies (id, source, topic, received, events, body, runs, digest,"
                   " backfilled, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    [S_SET_META] = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
    [S_META] = "SELECT value FROM meta WHERE key = ?",
    [S_MAX_BODY] = "SELECT max(coalesce((SELECT max(id) FROM bodies), 0),"
                   " coalesce((SELECT value FROM meta WHERE key = 'last_body'), 0))",
    /* A range of the rowid (brm_store_bodies), in its order: through the
     * received index, the rows would be sorted in a temporary table first. */
    [S_BODIES] = "SELECT id, source, topic, received, events, body, backfilled, size"
                 " FROM bodies NOT INDEXED WHERE id > ?1 AND id < ?2 AND received >= ?3"
                 " AND received < ?4 ORDER BY id",
    /* length() of a blob reads its size from the record, not its pages. The
     * ring counts what is stored: a packed body's packed bytes. */
    [S_OLDEST_BODIES] = "SELECT id, received, length(body) + coalesce(length(runs), 0) FROM bodies"
                        " WHERE id > ? ORDER BY id LIMIT ?",
    [S_PRUNE_BODIES] = "DELETE FROM bodies WHERE id > ? AND id <= ?",
    /* A body's deliveries have keys "<body>:...": its done ones go with it
     * (their keys are what keeps a replay of it from queueing them again). */
    [S_PRUNE_DONE_ATTEMPTS] = "DELETE FROM attempts WHERE delivery IN (SELECT id FROM deliveries d"
                              " WHERE key >= ?1 || ':' AND key < ?1 || ';' AND " DONE ")",
    [S_PRUNE_DONE] = "DELETE FROM deliveries AS d WHERE key >= ?1 || ':' AND key < ?1 || ';'"
                     " AND " DONE,
    /* The sweep of old done deliveries (brm_store_sweep_done): a step's
     * rows in id order, then those of them that are done, by id range. */
    [S_DELIVERIES_FROM] = "SELECT id, created FROM deliveries WHERE id > ? ORDER BY id LIMIT ?",
    [S_SWEEP_DONE_ATTEMPTS] = "DELETE FROM attempts WHERE delivery IN (SELECT id FROM deliveries d"
                              " WHERE d.id > ?1 AND d.id <= ?2 AND " DONE " AND " SWEPT ")",
    [S_SWEEP_DONE] =
        "DELETE FROM deliveries AS d WHERE d.id > ?1 AND d.id <= ?2 AND " DONE " AND " SWEPT,
    [S_MAX_DELIVERY] = "SELECT coalesce(max(id), 0) FROM deliveries",
    [S_PUT_STATE] = "INSERT INTO state (key, value, expires, due) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
                    " expires = excluded.expires, due = excluded.due",
    [S_DEL_STATE] = "DELETE FROM state WHERE key = ?",
    [S_STATE] = "SELECT key, value, expires, due FROM state WHERE expires = 0 OR expires > ?",
    [S_PRUNE_STATE] = "DELETE FROM state WHERE expires <> 0 AND expires <= ?",
    [S_PUT_ITEM] = "INSERT OR REPLACE INTO group_items (key, seq, item) VALUES (?, ?, ?)",
    [S_DROP_ITEMS] = "DELETE FROM group_items WHERE key = ?",
    [S_ITEMS] = "SELECT key, seq, item FROM group_items ORDER BY key, seq",
    [S_ADD_ATTEMPT] = "INSERT INTO attempts (delivery, at, status, answer, error)"
                      " VALUES (?, ?, ?, ?, ?)",
    /* All but the delivery's newest ?2 (through attempts_delivery). */
    [S_TRIM_ATTEMPTS] = "DELETE FROM attempts WHERE delivery = ?1 AND id <= (SELECT id FROM"
                        " attempts WHERE delivery = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
    [S_DROP_ATTEMPTS] = "DELETE FROM attempts WHERE delivery = ?",
    /* The console reads pages by id, newest first: a range of the rowid or
     * of bodies_topic, stepped row by row so that a page looks at a bounded
     * number of rows whatever its filters. */
    [S_C_BODIES] = CONSOLE_BODY " WHERE id < ?1 AND id > ?2 ORDER BY id DESC",
    [S_C_BODIES_TOPIC] = CONSOLE_BODY " INDEXED BY bodies_topic WHERE topic = ?3 AND id < ?1"
                                      " AND id > ?2 ORDER BY id DESC",
    [S_C_ID_FROM] = "SELECT id FROM bodies WHERE received >= ? ORDER BY received LIMIT 1",
    [S_C_ID_BEFORE] = "SELECT id FROM bodies WHERE received < ? ORDER BY received DESC LIMIT 1",
    /* The rows' readers unpack in C (row_body): a damaged row is then one
     * body that cannot be read, not a read that fails, and a sort keeps the
     * packed bytes. */
    [S_C_BODY] =
        "SELECT id, source, topic, received, events, body, runs, size FROM bodies WHERE id = ?",
    /* SQLite's JSON functions; a body that is not JSON to them matches
     * nothing. */
    [S_C_FIELD] = "SELECT 1 FROM bodies, json_each(CAST(brume_body(bodies.body, bodies.size)"
                  " AS TEXT), '$.events') AS e"
                  " WHERE bodies.id = ?1 AND CAST(json_extract(e.value, ?2) AS TEXT) = ?3 LIMIT 1",
    [S_C_DELIVERIES] = CONSOLE_DELIVERY WITH_QUEUE " WHERE d.id < ?1 ORDER BY d.id DESC",
    /* Pending and dead ones come from what holds only them: queue (the
     * outbox's own working set) and the partial index of dead letters. */
    [S_C_PENDING] = "SELECT " DELIVERY_COLUMNS QUEUE_JOIN " WHERE q.id < ?1 ORDER BY q.id DESC",
    [S_C_DEAD] = CONSOLE_DELIVERY " INDEXED BY deliveries_dead" WITH_QUEUE
                                  " WHERE d.state = 2 AND d.id < ?1 ORDER BY d.id DESC",
    [S_C_DELIVERY] = CONSOLE_DELIVERY WITH_QUEUE " WHERE d.id = ?",
    [S_C_OF_BODY] = CONSOLE_DELIVERY WITH_QUEUE " WHERE key >= ?1 || ':' AND key < ?1 || ';'"
                                                " ORDER BY d.id LIMIT ?2",
    [S_C_ATTEMPTS] = "SELECT at, status, answer, error FROM attempts WHERE delivery = ?"
                     " ORDER BY id DESC LIMIT ?",
    /* Body ids start at 1: id 0 is the probe's, and never outlives its
     * transaction. */
    [S_PROBE_ADD] = "INSERT INTO bodies (id, source, topic, received, events, body)"
                    " VALUES (0, '', '', 0, 0, zeroblob(?))",
    [S_PROBE_DROP] = "DELETE FROM bodies WHERE id = 0",
    /* Backfill's look (brm_store_has_bodies): the bodies it took in, by
     * digest; the others received in a window, from the received index
     * alone; a row of the same digest has the same bytes when SAME_BYTES. */
    [S_HAS_TAKEN] = "SELECT 1 FROM bodies INDEXED BY bodies_digest WHERE digest = ?1"
                    " AND backfilled = 1 AND " SAME_BYTES " LIMIT 1",
    [S_RECEIVED_DIGESTS] = "SELECT id, digest FROM bodies INDEXED BY bodies_received"
                           " WHERE received >= ?1 AND received <= ?2 AND digest IS NOT NULL",
    [S_SAME_BYTES] = "SELECT 1 FROM bodies WHERE id = ?1 AND " SAME_BYTES,
    /* The newest of the last ?3 bodies (through bodies_received), not
     * every body of the window: a rare source among busy ones is looked
     * for that far back only. */
    [S_SOURCE_LAST] = "SELECT max(received) FROM (SELECT source, received, backfilled FROM bodies"
                      " INDEXED BY bodies_received WHERE received >= ?2 ORDER BY received DESC"
                      " LIMIT ?3) WHERE source = ?1 AND backfilled = 0",
    [S_HOLD] = "INSERT OR IGNORE INTO held (id) VALUES (?)",
    [S_UNHOLD] = "DELETE FROM held WHERE id = ?",
    [S_SET_RUNS] = "UPDATE bodies SET runs = ? WHERE id = ?",
    /* Read until LIMIT readable ones (brm_store_held): a damaged one
     * does not count. */
    [S_HELD] = "SELECT b.id, b.source, b.topic, b.received, b.events, b.body, b.size FROM held h"
               " JOIN bodies b ON b.id = h.id WHERE h.id > ? ORDER BY h.id",
    [S_HELD_COUNT] = "SELECT count(*) FROM held h JOIN bodies b ON b.id = h.id",
    [S_PRUNE_HELD] = "DELETE FROM held WHERE id > ? AND id <= ?",
};

/* Bytes a store reuses from one body to the next; one larger than
 * ROOM_KEEP goes back once it is done with (room_done). */
struct room {
    char *bytes;
    size_t size;
};

#define ROOM_KEEP (256 * 1024)

static char *room_for(struct room *r, size_t n) {
    if (r->size < n) {
        r->bytes = brm_xrealloc(r->bytes, n);
        r->size = n;
    }
    return r->bytes;
}

static void room_done(struct room *r) {
    if (r->size <= ROOM_KEEP) return;
    free(r->bytes);
    r->bytes = NULL;
    r->size = 0;
}

struct brm_store {
    sqlite3 *db;
    sqlite3_stmt *stmt[NSTMT];
    int wal_frames;       /* in the WAL after the last commit */
    struct room pack;     /* for a body packed (brm_store_add_body) */
    struct room unpacked; /* for a body a reader unpacked (row_body) */
};

static int fail(struct brm_store *s, struct brm_err *err, const char *what) {
    if (err) brm_err_set(err, "store: %s: %s", what, sqlite3_errmsg(s->db));
    return -1;
}

static int exec(struct brm_store *s, const char *text, struct brm_err *err) {
    char *msg = NULL;
    if (sqlite3_exec(s->db, text, NULL, NULL, &msg) != SQLITE_OK) {
        if (err) brm_err_set(err, "store: %s", msg ? msg : sqlite3_errmsg(s->db));
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

static int migrate(struct brm_store *s, struct brm_err *err) {
    sqlite3_stmt *st;
    int version = 0;
    if (sqlite3_prepare_v2(s->db, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK)
        return fail(s, err, "reading the schema version");
    if (sqlite3_step(st) == SQLITE_ROW) version = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    if (version > (int)BRM_ARRAY_LEN(migrations)) {
        brm_err_set(err, "store: the database is from a newer brume (schema %d, this one knows %d)",
                    version, (int)BRM_ARRAY_LEN(migrations));
        return -1;
    }
    for (; version < (int)BRM_ARRAY_LEN(migrations); version++) {
        char pragma[64];
        snprintf(pragma, sizeof(pragma), "PRAGMA user_version = %d", version + 1);
        if (exec(s, "BEGIN IMMEDIATE", err) < 0) return -1;
        if (exec(s, migrations[version], err) < 0 || exec(s, pragma, err) < 0) {
            exec(s, "ROLLBACK", NULL);
            return -1;
        }
        if (exec(s, "COMMIT", err) < 0) return -1;
    }
    return 0;
}

/*
 * Waits for another connection's write lock in steps of 50µs growing to
 * 2ms, for up to 10s. SQLite's own handler sleeps 1, 2, 5, 10... ms: with
 * workers and the outbox taking turns many times a second, those sleeps
 * were most of a request's latency.
 */
static int busy(void *arg, int n) {
    (void)arg;
    static const long total_us = 10000000;
    long step = n < 6 ? 50L << n : 2000;
    long waited = n < 6 ? 50L * ((1L << n) - 1) : 50L * 63 + (long)(n - 6) * 2000;
    if (waited >= total_us) return 0;
    struct timespec ts = { 0, step * 1000 };
    nanosleep(&ts, NULL);
    return 1;
}

/* Whether SIZE can be what N packed bytes unpack to: LZ4 makes at most 255
 * bytes of one, so a larger SIZE is damage, and must not become an
 * allocation. */
static int possible_size(sqlite3_int64 size, int n) {
    return size > 0 && size <= INT_MAX && size <= (sqlite3_int64)n * 255 + 16;
}

/* Unpacks the N bytes at PACKED into the SIZE bytes at OUT: NULL, or why it
 * could not (a block that does not make exactly SIZE bytes is damage, not a
 * short body). */
static const char *unpack(const char *packed, int n, sqlite3_int64 size, char *out) {
    if (!packed || LZ4_decompress_safe(packed, out, n, (int)size) != (int)size)
        return "a packed body that does not unpack";
    return NULL;
}

#define IMPOSSIBLE_SIZE "a packed body of a size it cannot have"

/* brume_body(BODY, SIZE): a body's bytes as they came (SIZE: NULL for one
 * stored as it came), for SQL that reads them (the console's field match,
 * backfill's). */
static void sql_body(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
    (void)argc;
    if (sqlite3_value_type(argv[1]) == SQLITE_NULL) {
        sqlite3_result_value(ctx, argv[0]);
        return;
    }
    sqlite3_int64 size = sqlite3_value_int64(argv[1]);
    int n = sqlite3_value_bytes(argv[0]);
    if (!possible_size(size, n)) {
        sqlite3_result_error(ctx, IMPOSSIBLE_SIZE, -1);
        return;
    }
    char *out = sqlite3_malloc64((sqlite3_uint64)size);
    if (!out) {
        sqlite3_result_error_nomem(ctx);
        return;
    }
    const char *why = unpack(sqlite3_value_blob(argv[0]), n, size, out);
    if (why) {
        sqlite3_free(out);
        sqlite3_result_error(ctx, why, -1);
        return;
    }
    sqlite3_result_blob64(ctx, out, (sqlite3_uint64)size, sqlite3_free);
}

/* Prepares every statement of sql[] on S's connection, with the function
 * they read bodies through. */
static int prepare(struct brm_store *s, struct brm_err *err) {
    if (sqlite3_create_function_v2(s->db, "brume_body", 2,
                                   SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_INNOCUOUS, NULL,
                                   sql_body, NULL, NULL, NULL) != SQLITE_OK)
        return fail(s, err, "adding brume_body()");
    for (int i = 0; i < NSTMT; i++) {
        if (sqlite3_prepare_v3(s->db, sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->stmt[i], NULL) !=
            SQLITE_OK)
            return fail(s, err, "preparing a statement");
    }
    return 0;
}

/* Before SQLite's first use: no count of its memory, which it would keep
 * under a global mutex on every allocation of every connection (brume
 * never asks for it). */
static void configure_sqlite(void) {
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
}

static pthread_once_t configured = PTHREAD_ONCE_INIT;

struct brm_store *brm_store_open(const char *path, struct brm_err *err) {
    pthread_once(&configured, configure_sqlite);
    struct brm_store *s = brm_xcalloc(1, sizeof(*s));
    /* Stored requests carry targets' credentials: the file is the owner's. */
    mode_t old = umask(077);
    int rc = sqlite3_open_v2(
        path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    umask(old);
    if (rc != SQLITE_OK) {
        brm_err_set(err, "store: cannot open %s: %s", path,
                    s->db ? sqlite3_errmsg(s->db) : "out of memory");
        goto fail;
    }
    /* SQLite opens a file it cannot open for writing read-only, and says
     * nothing: after one failed open (EIO) the writer would hold a store
     * that refuses every body until a restart. */
    if (sqlite3_db_readonly(s->db, "main") == 1) {
        brm_err_set(err, "store: cannot open %s for writing", path);
        goto fail;
    }
    sqlite3_busy_handler(s->db, busy, NULL);
    /* WAL: readers never wait for the writer. synchronous=FULL: a commit
     * is on disk when it returns, which is what a 200 promises. A page
     * cache of 256 KB, not SQLite's 2 MB: the journal appends, and the
     * pages of bodies it wrote are seldom read again; with the default the
     * writer's cache filled with them (1.5 MB of a worker's RSS), and 512
     * KB held 0.35 MB more than this at 10-event bodies for the same
     * throughput. secure_delete FAST: Debian builds SQLite with
     * SECURE_DELETE, which zeroes every page a delete frees, through the
     * WAL; the ring frees a body's pages in every commit, and that was 45%
     * of the writes of a store at its cap. FAST still clears what a delete
     * leaves on the pages it writes anyway. */
    if (exec(s,
             "PRAGMA page_size = 4096; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; "
             "PRAGMA cache_size = -256; PRAGMA secure_delete = FAST;",
             err) < 0)
        goto fail;
    if (migrate(s, err) < 0) goto fail;
    if (prepare(s, err) < 0) goto fail;
    return s;
fail:
    brm_store_close(s);
    return NULL;
}

struct brm_store *brm_store_open_reader(const char *path, struct brm_err *err) {
    pthread_once(&configured, configure_sqlite);
    struct brm_store *s = brm_xcalloc(1, sizeof(*s));
    sqlite3_stmt *st = NULL;
    int version = -1;
    if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        brm_err_set(err, "store: cannot open %s: %s", path,
                    s->db ? sqlite3_errmsg(s->db) : "out of memory");
        goto fail;
    }
    sqlite3_busy_handler(s->db, busy, NULL);
    if (sqlite3_prepare_v2(s->db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        version = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    if (version != (int)BRM_ARRAY_LEN(migrations)) { /* the writer migrates, first */
        brm_err_set(err, "store: %s has schema %d, not %d", path, version,
                    (int)BRM_ARRAY_LEN(migrations));
        goto fail;
    }
    if (prepare(s, err) < 0) goto fail;
    return s;
fail:
    brm_store_close(s);
    return NULL;
}

int brm_store_relax(struct brm_store *s, int relaxed, struct brm_err *err) {
    return exec(s, relaxed ? "PRAGMA synchronous = NORMAL" : "PRAGMA synchronous = FULL", err);
}

void brm_store_close(struct brm_store *s) {
    if (!s) return;
    for (int i = 0; i < NSTMT; i++) sqlite3_finalize(s->stmt[i]);
    sqlite3_close(s->db);
    free(s->pack.bytes);
    free(s->unpacked.bytes);
    free(s);
}

/* Runs a statement that returns no rows; resets it. */
static int run(struct brm_store *s, enum stmt i, struct brm_err *err, const char *what) {
    int rc = sqlite3_step(s->stmt[i]);
    sqlite3_reset(s->stmt[i]);
    sqlite3_clear_bindings(s->stmt[i]);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) return fail(s, err, what);
    return 0;
}

int brm_store_begin(struct brm_store *s, struct brm_err *err) {
    return run(s, S_BEGIN, err, "begin");
}

int brm_store_commit(struct brm_store *s, struct brm_err *err) {
    if (run(s, S_COMMIT, err, "commit") == 0) return 0;
    brm_store_rollback(s);
    return -1;
}

void brm_store_rollback(struct brm_store *s) {
    if (!sqlite3_get_autocommit(s->db)) run(s, S_ROLLBACK, NULL, "rollback");
}

static void bind_text(sqlite3_stmt *st, int i, const char *v) {
    if (v)
        sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, i);
}

int brm_store_add_delivery(struct brm_store *s, const struct brm_delivery *d, struct brm_err *err) {
    sqlite3_stmt *st = s->stmt[S_ADD];
    bind_text(st, 1, d->key);
    bind_text(st, 2, d->target);
    bind_text(st, 3, d->rule);
    bind_text(st, 4, d->topic);
    bind_text(st, 5, d->event);
    bind_text(st, 6, d->ticket);
    sqlite3_bind_double(st, 7, d->created);
    sqlite3_bind_double(st, 8, d->next_at);
    sqlite3_bind_double(st, 9, d->expires);
    bind_text(st, 10, d->method);
    bind_text(st, 11, d->url);
    bind_text(st, 12, d->headers);
    if (d->body)
        sqlite3_bind_blob(st, 13, d->body, (int)d->body_len, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 13);
    sqlite3_bind_int(st, 14, d->sign);
    bind_text(st, 15, d->plan);
    if (run(s, S_ADD, err, "adding a delivery") < 0) return -1;
    if (sqlite3_changes(s->db) == 0) return 0; /* queued before */
    st = s->stmt[S_QUEUE];
    sqlite3_bind_int64(st, 1, sqlite3_last_insert_rowid(s->db));
    bind_text(st, 2, d->target);
    sqlite3_bind_double(st, 3, d->next_at);
    bind_text(st, 4, d->ticket);
    return run(s, S_QUEUE, err, "queueing a delivery") < 0 ? -1 : 1;
}

static const char *column_text(sqlite3_stmt *st, int i) {
    return (const char *)sqlite3_column_text(st, i);
}

static void read_delivery(sqlite3_stmt *st, struct brm_delivery *d) {
    d->id = sqlite3_column_int64(st, 0);
    d->key = column_text(st, 1);
    d->target = column_text(st, 2);
    d->rule = column_text(st, 3);
    d->topic = column_text(st, 4);
    d->event = column_text(st, 5);
    d->ticket = column_text(st, 6);
    d->state = (enum brm_delivery_state)sqlite3_column_int(st, 7);
    d->attempts = sqlite3_column_int(st, 8);
    d->created = sqlite3_column_double(st, 9);
    d->next_at = sqlite3_column_double(st, 10);
    d->expires = sqlite3_column_double(st, 11);
    d->last_status = sqlite3_column_int(st, 12);
    d->last_error = column_text(st, 13);
    d->method = column_text(st, 14);
    d->url = column_text(st, 15);
    d->headers = column_text(st, 16);
    if (sqlite3_column_type(st, 17) != SQLITE_NULL) {
        d->body = sqlite3_column_blob(st, 17);
        d->body_len = (size_t)sqlite3_column_bytes(st, 17);
        if (!d->body) d->body = ""; /* an empty blob */
    }
    d->sign = sqlite3_column_int(st, 18);
    d->plan = column_text(st, 19);
    d->last_attempt = sqlite3_column_double(st, 20); /* NULL reads as 0 */
}

/* Steps a query of deliveries, handing each to FN but those SKIP (if
 * any) says to pass over, known by their id before the rest is read. */
static int each(struct brm_store *s, enum stmt i, int (*skip)(void *, int64_t),
                int (*fn)(void *, const struct brm_delivery *), void *arg, struct brm_err *err,
                const char *what) {
    sqlite3_stmt *st = s->stmt[i];
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (skip && skip(arg, sqlite3_column_int64(st, 0))) continue;
        struct brm_delivery d = { 0 };
        read_delivery(st, &d);
        if (fn(arg, &d)) {
            rc = SQLITE_DONE;
            break;
        }
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? 0 : fail(s, err, what);
}

int brm_store_due(struct brm_store *s, double now, int limit,
                  int (*fn)(void *arg, const struct brm_delivery *d), void *arg,
                  struct brm_err *err) {
    sqlite3_bind_double(s->stmt[S_DUE], 1, now);
    sqlite3_bind_int(s->stmt[S_DUE], 2, limit);
    return each(s, S_DUE, NULL, fn, arg, err, "reading due deliveries");
}

int brm_store_due_for(struct brm_store *s, const char *target, double now, int limit,
                      int (*skip)(void *arg, int64_t id),
                      int (*fn)(void *arg, const struct brm_delivery *d), void *arg,
                      struct brm_err *err) {
    sqlite3_stmt *st = s->stmt[S_DUE_TARGET];
    bind_text(st, 1, target);
    sqlite3_bind_double(st, 2, now);
    sqlite3_bind_int(st, 3, limit);
    return each(s, S_DUE_TARGET, skip, fn, arg, err, "reading due deliveries");
}

double brm_store_next_due(struct brm_store *s, double after) {
    sqlite3_stmt *st = s->stmt[S_NEXT_DUE];
    double t = 0;
    sqlite3_bind_double(st, 1, after);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
        t = sqlite3_column_double(st, 0);
    sqlite3_reset(st);
    return t;
}

/* Done at its first attempt: its attempt's row is its outcome, and it has
 * no other attempt to trim (but after a retry by hand). */
static int done_at_first(int tried, enum brm_delivery_state state) {
    return state == BRM_DELIVERY_DONE && !tried;
}

int brm_store_finish(struct brm_store *s, int64_t id, int tried, int secret,
                     enum brm_delivery_state state, double next_at, int status, const char *error,
                     struct brm_err *err) {
    if (state == BRM_DELIVERY_PENDING) {
        sqlite3_bind_double(s->stmt[S_REQUEUE], 1, next_at);
        sqlite3_bind_int64(s->stmt[S_REQUEUE], 2, id);
        if (run(s, S_REQUEUE, err, "recording an attempt") < 0) return -1;
    } else {
        sqlite3_bind_int64(s->stmt[S_DEQUEUE], 1, id);
        if (run(s, S_DEQUEUE, err, "recording an attempt") < 0) return -1;
        if (done_at_first(tried, state) && !secret) return 0; /* its attempt's row says the rest */
    }
    sqlite3_stmt *st = s->stmt[S_FINISH];
    sqlite3_bind_int(st, 1, (int)state);
    sqlite3_bind_double(st, 2, next_at);
    sqlite3_bind_int(st, 3, status);
    bind_text(st, 4, error);
    sqlite3_bind_double(st, 5, brm_time_now());
    sqlite3_bind_int64(st, 6, id);
    sqlite3_bind_int(st, 7, state == BRM_DELIVERY_DONE && secret);
    return run(s, S_FINISH, err, "recording an attempt");
}

int brm_store_list(struct brm_store *s, int all, int limit,
                   int (*fn)(void *arg, const struct brm_delivery *d), void *arg,
                   struct brm_err *err) {
    enum stmt i = all ? S_LIST_ALL : S_LIST;
    sqlite3_bind_int(s->stmt[i], 1, limit);
    return each(s, i, NULL, fn, arg, err, "listing deliveries");
}

int brm_store_retry(struct brm_store *s, int64_t id, struct brm_err *err) {
    sqlite3_stmt *st = s->stmt[S_RETRY];
    sqlite3_bind_double(st, 1, brm_time_now());
    sqlite3_bind_int64(st, 2, id);
    if (run(s, S_RETRY, err, "retrying a delivery") < 0) return -1;
    if (sqlite3_changes(s->db) == 0) return 0; /* none, or done */
    sqlite3_bind_int64(s->stmt[S_REQUEUE_NOW], 1, id);
    return run(s, S_REQUEUE_NOW, err, "retrying a delivery") < 0 ? -1 : 1;
}

int brm_store_drop(struct brm_store *s, int64_t id, struct brm_err *err) {
    sqlite3_bind_int64(s->stmt[S_DROP], 1, id);
    if (run(s, S_DROP, err, "dropping a delivery") < 0) return -1;
    if (sqlite3_changes(s->db) == 0) return 0;
    sqlite3_bind_int64(s->stmt[S_DEQUEUE], 1, id);
    sqlite3_bind_int64(s->stmt[S_DROP_ATTEMPTS], 1, id);
    if (run(s, S_DEQUEUE, err, "dropping a delivery") < 0 ||
        run(s, S_DROP_ATTEMPTS, err, "dropping a delivery's attempts") < 0)
        return -1;
    return 1;
}

/* Two statements, not one: min() alone reads one index entry, and a
 * count(*) beside it would make SQLite visit every row for it. */
int brm_store_pending(struct brm_store *s, double now, long *count, double *oldest) {
    sqlite3_stmt *n = s->stmt[S_PENDING], *age = s->stmt[S_OLDEST];
    int rc = sqlite3_step(n), rc_age = rc == SQLITE_ROW ? sqlite3_step(age) : rc;
    *count = rc == SQLITE_ROW ? (long)sqlite3_column_int64(n, 0) : 0;
    *oldest = rc_age == SQLITE_ROW && sqlite3_column_type(age, 0) != SQLITE_NULL
                  ? now - sqlite3_column_double(age, 0)
                  : 0;
    sqlite3_reset(n);
    sqlite3_reset(age);
    return rc == SQLITE_ROW && rc_age == SQLITE_ROW ? 0 : -1;
}

int brm_store_ticket(struct brm_store *s, const char *target, const char *key, char *ref,
                     size_t size) {
    sqlite3_stmt *st = s->stmt[S_TICKET];
    bind_text(st, 1, target);
    bind_text(st, 2, key);
    int rc = sqlite3_step(st), found = 0;
    if (rc == SQLITE_ROW) {
        snprintf(ref, size, "%s", (const char *)sqlite3_column_text(st, 0));
        found = 1;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? found : -1;
}

int brm_store_set_ticket(struct brm_store *s, const char *target, const char *key, const char *ref,
                         struct brm_err *err) {
    sqlite3_stmt *st = s->stmt[S_SET_TICKET];
    bind_text(st, 1, target);
    bind_text(st, 2, key);
    bind_text(st, 3, ref);
    sqlite3_bind_double(st, 4, brm_time_now());
    return run(s, S_SET_TICKET, err, "recording a ticket");
}

int brm_store_forget_ticket(struct brm_store *s, const char *target, const char *key,
                            struct brm_err *err) {
    sqlite3_stmt *st = s->stmt[S_FORGET_TICKET];
    bind_text(st, 1, target);
    bind_text(st, 2, key);
    return run(s, S_FORGET_TICKET, err, "forgetting a ticket");
}

/* ---- the journal -------------------------------------------------------- */

/*
 * A body of PACK_MIN bytes or more is stored packed when LZ4 saves at least
 * a quarter of it. Mist's batches repeat their keys and most values event
 * after event: a 10-event alarm body of 4,009 bytes packs to 464 in about
 * 1.5 us, and the writer then writes, checkpoints and frees one page for
 * several bodies instead of one or two pages for each. Smaller bodies gain
 * too little to pay for the unpacking of every read.
 */
#define PACK_MIN 512

/* The body's bytes packed in S's room, with their count in N; NULL when it
 * is stored as it came. */
static const char *pack(struct brm_store *s, const struct brm_body *b, int *n) {
    if (b->len < PACK_MIN || b->len > INT_MAX) return NULL;
    size_t room = b->len - (b->len + 3) / 4; /* LZ4 gives up past it */
    char *out = room_for(&s->pack, room);
    *n = LZ4_compress_default(b->body, out, (int)b->len, (int)room);
    return *n > 0 ? out : NULL;
}

/* B's body from columns BODY and SIZE of ST's row: the column's bytes, or
 * unpacked into S's room; when it cannot be read, B->body is NULL and
 * B->damage says why. */
static void row_body(struct brm_store *s, sqlite3_stmt *st, int body, int size,
                     struct brm_body *b) {
    const char *bytes = sqlite3_column_blob(st, body);
    int n = sqlite3_column_bytes(st, body);
    b->damage = NULL;
    if (sqlite3_column_type(st, size) == SQLITE_NULL) {
        b->body = bytes ? bytes : "";
        b->len = (size_t)n;
        return;
    }
    sqlite3_int64 want = sqlite3_column_int64(st, size);
    b->body = NULL;
    b->len = 0;
    if (!possible_size(want, n)) {
        b->damage = IMPOSSIBLE_SIZE;
        return;
    }
    char *out = room_for(&s->unpacked, (size_t)want);
    b->damage = unpack(bytes, n, want, out);
    if (!b->damage) {
        b->body = out;
        b->len = (size_t)want;
    }
}

int brm_store_add_body(struct brm_store *s, const struct brm_body *b, size_t *stored,
                       struct brm_err *err) {
    sqlite3_stmt *st = s->stmt[S_ADD_BODY];
    int packed_len = 0;
    const char *packed = b->body ? pack(s, b, &packed_len) : NULL;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)b->id);
    bind_text(st, 2, b->source);
    bind_text(st, 3, b->topic);
    sqlite3_bind_double(st, 4, b->received);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)b->events);
    if (packed) {
        sqlite3_bind_blob(st, 6, packed, packed_len, SQLITE_STATIC);
        sqlite3_bind_int64(st, 10, (sqlite3_int64)b->len);
    } else {
        sqlite3_bind_blob(st, 6, b->body ? b->body : "", (int)b->len, SQLITE_STATIC);
        sqlite3_bind_null(st, 10);
    }
    if (b->runs)
        sqlite3_bind_blob(st, 7, b->runs, (int)b->runs_len, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 7);
    sqlite3_bind_int64(st, 8, (sqlite3_int64)b->digest);
    sqlite3_bind_int(st, 9, b->backfilled != 0);
    int rc = run(s, S_ADD_BODY, err, "journaling a body");
    room_done(&s->pack);
    if (stored) *stored = packed ? (size_t)packed_len : b->len;
    return rc;
}

/* 1 when statement WHICH, with KEY for ?1 and P's bytes for ?2, finds a
 * row, 0 when not, -1 with ERR set. */
static int holds(struct brm_store *s, enum stmt which, sqlite3_int64 key,
                 const struct brm_store_probe *p, struct brm_err *err) {
    sqlite3_stmt *st = s->stmt[which];
    sqlite3_bind_int64(st, 1, key);
    sqlite3_bind_blob(st, 2, p->body ? p->body : "", (int)p->len, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return fail(s, err, "looking for a body");
    return rc == SQLITE_ROW;
}

struct by_digest {
    uint64_t digest;
    struct brm_store_probe *probe;
};

static int cmp_digest(const void *a, const void *b) {
    uint64_t x = ((const struct by_digest *)a)->digest, y = ((const struct by_digest *)b)->digest;
    return (x > y) - (x < y);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* One pass over the received index's entries in [FROM, TO], each looked
 * for among the NLEFT probes LEFT (sorted by digest), *UNFOUND of them not
 * found yet. 0, or -1 with ERR set. */
static int scan_received(struct brm_store *s, struct by_digest *left, size_t nleft, size_t *unfound,
                         double from, double to, struct brm_err *err) {
    sqlite3_stmt *st = s->stmt[S_RECEIVED_DIGESTS];
    sqlite3_bind_double(st, 1, from);
    sqlite3_bind_double(st, 2, to);
    int rc = 0, step = SQLITE_DONE;
    while (rc >= 0 && *unfound && (step = sqlite3_step(st)) == SQLITE_ROW) {
        struct by_digest key = { (uint64_t)sqlite3_column_int64(st, 1), NULL };
        struct by_digest *hit = bsearch(&key, left, nleft, sizeof(*left), cmp_digest);
        while (hit && hit > left && hit[-1].digest == key.digest) hit--;
        for (; hit && hit < left + nleft && hit->digest == key.digest && rc >= 0; hit++) {
            if (hit->probe->found) continue;
            rc = holds(s, S_SAME_BYTES, sqlite3_column_int64(st, 0), hit->probe, err);
            if (rc == 1) {
                hit->probe->found = 1;
                --*unfound;
            }
        }
    }
    if (rc >= 0 && step != SQLITE_ROW && step != SQLITE_DONE)
        rc = fail(s, err, "looking for bodies");
    sqlite3_reset(st);
    return rc < 0 ? -1 : 0;
}

int brm_store_has_bodies(struct brm_store *s, struct brm_store_probe *p, size_t n, double skew,
                         struct brm_err *err) {
    struct by_digest *left = brm_xcalloc(n ? n : 1, sizeof(*left));
    double *at = brm_xcalloc(n ? n : 1, sizeof(*at));
    size_t nleft = 0, nat = 0;
    int rc = 0;
    for (size_t i = 0; i < n && rc >= 0; i++) {
        rc = holds(s, S_HAS_TAKEN, (sqlite3_int64)p[i].digest, &p[i], err);
        p[i].found = rc == 1;
        if (rc != 0) continue;
        left[nleft++] = (struct by_digest){ p[i].digest, &p[i] };
        if (isfinite(p[i].at)) at[nat++] = p[i].at;
    }
    qsort(left, nleft, sizeof(*left), cmp_digest);
    qsort(at, nat, sizeof(*at), cmp_double);
    /* The windows around the probes' times, merged where they meet: a
     * page of failures a week apart looks at two short spans, not the
     * week between. */
    size_t unfound = nleft;
    for (size_t i = 0; rc >= 0 && unfound && i < nat;) {
        double from = at[i] - skew, to = at[i] + skew;
        while (++i < nat && at[i] - skew <= to) to = at[i] + skew;
        rc = scan_received(s, left, nleft, &unfound, from, to, err);
    }
    free(at);
    free(left);
    return rc < 0 ? -1 : 0;
}

int brm_store_source_last(struct brm_store *s, const char *source, double after, long scan,
                          double *received, struct brm_err *err) {
    sqlite3_stmt *st = s->stmt[S_SOURCE_LAST];
    bind_text(st, 1, source);
    sqlite3_bind_double(st, 2, after);
    sqlite3_bind_int64(st, 3, scan);
    int rc = sqlite3_step(st);
    int found = rc == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL;
    *received = found ? sqlite3_column_double(st, 0) : 0;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return fail(s, err, "reading a source's last body");
    return found;
}

/* A value the query I returns in its first row's first column, 0 when it
 * returns no row, -1 on error. Resets it. */
static int64_t one_value(struct brm_store *s, enum stmt i, struct brm_err *err, const char *what) {
    sqlite3_stmt *st = s->stmt[i];
    int64_t v = 0;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) v = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? v : fail(s, err, what);
}

int64_t brm_store_last_body(struct brm_store *s, struct brm_err *err) {
    return one_value(s, S_MAX_BODY, err, "reading the journal's last id");
}

int brm_store_set_meta(struct brm_store *s, const char *key, int64_t value, struct brm_err *err) {
    sqlite3_stmt *st = s->stmt[S_SET_META];
    bind_text(st, 1, key);
    sqlite3_bind_int64(st, 2, value);
    return run(s, S_SET_META, err, "saving the journal's size");
}

int64_t brm_store_meta(struct brm_store *s, const char *key, struct brm_err *err) {
    bind_text(s->stmt[S_META], 1, key);
    return one_value(s, S_META, err, "reading the journal's size");
}

static void id_range(struct brm_store *s, const struct brm_body_query *q, int64_t *lo, int64_t *hi);

int brm_store_bodies(struct brm_store *s, double since, double until, double skew,
                     int (*fn)(void *arg, const struct brm_body *b), void *arg,
                     struct brm_err *err) {
    sqlite3_stmt *st = s->stmt[S_BODIES];
    struct brm_body_query q = { .since = since, .until = until, .skew = skew };
    int64_t lo, hi;
    int rc;
    id_range(s, &q, &lo, &hi);
    sqlite3_bind_int64(st, 1, lo);
    sqlite3_bind_int64(st, 2, hi);
    sqlite3_bind_double(st, 3, since);
    sqlite3_bind_double(st, 4, until);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct brm_body b = {
            .id = sqlite3_column_int64(st, 0),
            .source = (const char *)sqlite3_column_text(st, 1),
            .topic = (const char *)sqlite3_column_text(st, 2),
            .received = sqlite3_column_double(st, 3),
            .events = (size_t)sqlite3_column_int64(st, 4),
            .backfilled = sqlite3_column_int(st, 6),
        };
        row_body(s, st, 5, 7, &b);
        if (fn(arg, &b)) {
            rc = SQLITE_DONE;
            break;
        }
    }
    sqlite3_reset(st);
    room_done(&s->unpacked);
    return rc == SQLITE_DONE ? 0 : fail(s, err, "reading the journal");
}

int brm_store_hold(struct brm_store *s, int64_t id, struct brm_err *err) {
    sqlite3_bind_int64(s->stmt[S_HOLD], 1, (sqlite3_int64)id);
    return run(s, S_HOLD, err, "holding a body");
}

int brm_store_release_held(struct brm_store *s, int64_t id, const char *runs, size_t runs_len,
                           struct brm_err *err) {
    sqlite3_stmt *st = s->stmt[S_SET_RUNS];
    if (runs)
        sqlite3_bind_blob(st, 1, runs, (int)runs_len, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 1);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)id);
    if (run(s, S_SET_RUNS, err, "storing a held body's outcome") < 0) return -1;
    int kept = sqlite3_changes(s->db) > 0;
    sqlite3_bind_int64(s->stmt[S_UNHOLD], 1, (sqlite3_int64)id);
    return run(s, S_UNHOLD, err, "storing a held body's outcome") < 0 ? -1 : kept;
}

int brm_store_held(struct brm_store *s, int64_t after, int limit,
                   int (*fn)(void *arg, const struct brm_body *b), void *arg, struct brm_err *err) {
    sqlite3_stmt *st = s->stmt[S_HELD];
    int rc = SQLITE_DONE, readable = 0;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)after);
    while (readable < limit && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct brm_body b = {
            .id = sqlite3_column_int64(st, 0),
            .source = (const char *)sqlite3_column_text(st, 1),
            .topic = (const char *)sqlite3_column_text(st, 2),
            .received = sqlite3_column_double(st, 3),
            .events = (size_t)sqlite3_column_int64(st, 4),
        };
        row_body(s, st, 5, 6, &b);
        readable += !b.damage;
        if (fn(arg, &b)) break;
    }
    if (rc == SQLITE_ROW) rc = SQLITE_DONE; /* stopped before the end */
    sqlite3_reset(st);
    room_done(&s->unpacked);
    return rc == SQLITE_DONE ? 0 : fail(s, err, "reading the held bodies");
}

int64_t brm_store_held_count(struct brm_store *s, struct brm_err *err) {
    return one_value(s, S_HELD_COUNT, err, "counting the held bodies");
}

int brm_store_prune_bodies(struct brm_store *s, struct brm_prune *p, struct brm_err *err) {
    sqlite3_stmt *st = s->stmt[S_OLDEST_BODIES];
    int64_t upto = p->after;
    int rc, looked = 0;
    p->removed = 0;
    sqlite3_bind_int64(st, 1, p->after);
    sqlite3_bind_int(st, 2, p->limit);
    /* The oldest go while they are older than BEFORE or the journal is over
     * its size; each of their done deliveries goes with it. */
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        looked++;
        int64_t id = sqlite3_column_int64(st, 0), len = sqlite3_column_int64(st, 2);
        double received = sqlite3_column_double(st, 1);
        if (received >= p->before && (p->max_bytes == 0 || p->bytes <= p->max_bytes)) break;
        sqlite3_bind_int64(s->stmt[S_PRUNE_DONE_ATTEMPTS], 1, id);
        sqlite3_bind_int64(s->stmt[S_PRUNE_DONE], 1, id);
        if (run(s, S_PRUNE_DONE_ATTEMPTS, err, "pruning the journal") < 0 ||
            run(s, S_PRUNE_DONE, err, "pruning the journal") < 0) {
            sqlite3_reset(st);
            return -1;
        }
        upto = id;
        p->bytes = p->bytes > (uint64_t)len ? p->bytes - (uint64_t)len : 0;
        p->rows--;
        p->removed++;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return fail(s, err, "pruning the journal");
    /* Nothing older is left to look at: the query ran out before its limit. */
    p->exhausted = rc == SQLITE_DONE && looked < p->limit;
    if (upto == p->after) return 0;
    sqlite3_bind_int64(s->stmt[S_PRUNE_BODIES], 1, p->after);
    sqlite3_bind_int64(s->stmt[S_PRUNE_BODIES], 2, upto);
    if (run(s, S_PRUNE_BODIES, err, "pruning the journal") < 0) return -1;
    sqlite3_bind_int64(s->stmt[S_PRUNE_HELD], 1, p->after);
    sqlite3_bind_int64(s->stmt[S_PRUNE_HELD], 2, upto);
    if (run(s, S_PRUNE_HELD, err, "pruning the journal") < 0) return -1;
    p->after = upto;
    return 0;
}

long brm_store_sweep_done(struct brm_store *s, int64_t *cursor, double before, double now,
                          int limit, struct brm_err *err) {
    sqlite3_stmt *st = s->stmt[S_DELIVERIES_FROM];
    sqlite3_bind_int64(st, 1, *cursor);
    sqlite3_bind_int(st, 2, limit);
    int64_t upto = *cursor;
    long passed = 0;
    int rc;
    /* Ids grow with time: the step ends at the first made since BEFORE,
     * unless it says it was made in the future (a clock set back since):
     * it is passed over, not waited for. */
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        double created = sqlite3_column_double(st, 1);
        if (created >= before && created <= now + FUTURE_SLACK) break;
        upto = sqlite3_column_int64(st, 0);
        passed++;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return fail(s, err, "sweeping deliveries");
    if (upto > *cursor) {
        static const enum stmt attempts_then_deliveries[] = { S_SWEEP_DONE_ATTEMPTS, S_SWEEP_DONE };
        for (size_t i = 0; i < BRM_ARRAY_LEN(attempts_then_deliveries); i++) {
            enum stmt which = attempts_then_deliveries[i];
            sqlite3_bind_int64(s->stmt[which], 1, *cursor);
            sqlite3_bind_int64(s->stmt[which], 2, upto);
            sqlite3_bind_double(s->stmt[which], 3, before);
            if (run(s, which, err, "sweeping deliveries") < 0) return -1;
        }
    }
    /* The newest gone (by this step, the ring or a drop), their ids come
     * again: the cursor must not be past them. */
    int64_t max = one_value(s, S_MAX_DELIVERY, err, "sweeping deliveries");
    if (max < 0) return -1;
    *cursor = upto < max ? upto : max;
    return passed;
}

int brm_store_probe(struct brm_store *s, size_t bytes, struct brm_err *err) {
    sqlite3_bind_int64(s->stmt[S_PROBE_ADD], 1, (sqlite3_int64)bytes);
    if (run(s, S_PROBE_ADD, err, "probing the store") < 0) return -1;
    return run(s, S_PROBE_DROP, err, "probing the store");
}

/* ---- rule state and dedupe marks ---------------------------------------- */

int brm_store_put_state(struct brm_store *s, const char *key, const char *value, double expires,
                        double due, struct brm_err *err) {
    if (!value) {
        bind_text(s->stmt[S_DEL_STATE], 1, key);
        return run(s, S_DEL_STATE, err, "deleting state");
    }
    sqlite3_stmt *st = s->stmt[S_PUT_STATE];
    bind_text(st, 1, key);
    bind_text(st, 2, value);
    sqlite3_bind_double(st, 3, expires);
    sqlite3_bind_double(st, 4, due);
    return run(s, S_PUT_STATE, err, "saving state");
}

int brm_store_load_state(struct brm_store *s, double now,
                         void (*fn)(void *arg, const char *key, const char *value, double expires,
                                    double due),
                         void *arg, struct brm_err *err) {
    sqlite3_stmt *st = s->stmt[S_STATE];
    int rc;
    sqlite3_bind_double(st, 1, now);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        fn(arg, (const char *)sqlite3_column_text(st, 0), (const char *)sqlite3_column_text(st, 1),
           sqlite3_column_double(st, 2), sqlite3_column_double(st, 3));
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : fail(s, err, "loading state");
}

int brm_store_put_item(struct brm_store *s, const char *key, long seq, const char *item,
                       struct brm_err *err) {
    sqlite3_stmt *st = s->stmt[S_PUT_ITEM];
    bind_text(st, 1, key);
    sqlite3_bind_int64(st, 2, seq);
    bind_text(st, 3, item);
    return run(s, S_PUT_ITEM, err, "saving a digest item");
}

int brm_store_drop_items(struct brm_store *s, const char *key, struct brm_err *err) {
    bind_text(s->stmt[S_DROP_ITEMS], 1, key);
    return run(s, S_DROP_ITEMS, err, "deleting a digest's items");
}

int brm_store_load_items(struct brm_store *s,
                         void (*fn)(void *arg, const char *key, long seq, const char *item),
                         void *arg, struct brm_err *err) {
    sqlite3_stmt *st = s->stmt[S_ITEMS];
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        fn(arg, (const char *)sqlite3_column_text(st, 0), (long)sqlite3_column_int64(st, 1),
           (const char *)sqlite3_column_text(st, 2));
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : fail(s, err, "loading digests");
}

int brm_store_prune_state(struct brm_store *s, double now, struct brm_err *err) {
    sqlite3_bind_double(s->stmt[S_PRUNE_STATE], 1, now);
    return run(s, S_PRUNE_STATE, err, "pruning state");
}

/* Counts the WAL's frames after every commit of this connection. */
static int on_wal(void *arg, sqlite3 *db, const char *name, int frames) {
    (void)db, (void)name;
    ((struct brm_store *)arg)->wal_frames = frames;
    return SQLITE_OK;
}

int brm_store_own_checkpoints(struct brm_store *s, uint64_t wal_limit, struct brm_err *err) {
    char text[128];
    snprintf(text, sizeof(text), "PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = %llu",
             (unsigned long long)wal_limit);
    if (exec(s, text, err) < 0) return -1;
    sqlite3_wal_hook(s->db, on_wal, s);
    return 0;
}

int brm_store_wal_frames(const struct brm_store *s) {
    return s->wal_frames;
}

int brm_store_checkpoint(struct brm_store *s, struct brm_err *err) {
    int frames = 0, done = 0;
    int rc = sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &frames, &done);
    if (rc != SQLITE_OK && rc != SQLITE_BUSY) return fail(s, err, "checkpointing");
    /* All copied: the next commit starts the WAL from its beginning. */
    s->wal_frames = frames > done ? frames - done : 0;
    return 0;
}

int brm_store_limit(struct brm_store *s, uint64_t max_bytes, struct brm_err *err) {
    char sqltext[96];
    if (!max_bytes) return 0;
    /* A hard cap on the database file: past it writes fail with
     * SQLITE_FULL, as on a full disk, and brume answers 503. */
    snprintf(sqltext, sizeof(sqltext), "PRAGMA max_page_count = %llu",
             (unsigned long long)(max_bytes / 4096 ? max_bytes / 4096 : 1));
    return exec(s, sqltext, err);
}

/* ---- attempts ----------------------------------------------------------- */

int brm_store_add_attempt(struct brm_store *s, int64_t delivery, int tried,
                          enum brm_delivery_state state, const struct brm_attempt *a,
                          struct brm_err *err) {
    sqlite3_stmt *st = s->stmt[S_ADD_ATTEMPT];
    sqlite3_bind_int64(st, 1, delivery);
    sqlite3_bind_double(st, 2, a->at);
    sqlite3_bind_int(st, 3, a->status);
    bind_text(st, 4, a->answer);
    bind_text(st, 5, a->error);
    if (run(s, S_ADD_ATTEMPT, err, "recording an attempt") < 0) return -1;
    if (done_at_first(tried, state)) return 0;
    st = s->stmt[S_TRIM_ATTEMPTS];
    sqlite3_bind_int64(st, 1, delivery);
    sqlite3_bind_int(st, 2, BRM_STORE_ATTEMPTS_KEPT);
    return run(s, S_TRIM_ATTEMPTS, err, "trimming a delivery's attempts");
}

int brm_store_attempts(struct brm_store *s, int64_t delivery, int limit,
                       int (*fn)(void *arg, const struct brm_attempt *a), void *arg,
                       struct brm_err *err) {
    sqlite3_stmt *st = s->stmt[S_C_ATTEMPTS];
    int rc;
    sqlite3_bind_int64(st, 1, delivery);
    sqlite3_bind_int(st, 2, limit);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct brm_attempt a = { sqlite3_column_double(st, 0), sqlite3_column_int(st, 1),
                                 column_text(st, 2), column_text(st, 3) };
        if (fn(arg, &a)) {
            rc = SQLITE_DONE;
            break;
        }
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? 0 : fail(s, err, "reading attempts");
}

/* ---- the console's reads ------------------------------------------------ */

/* The first id of a body received at or after T (FROM), or before it: the
 * received index, one descent. 0 when there is none. */
static int64_t id_at(struct brm_store *s, enum stmt i, double t) {
    sqlite3_stmt *st = s->stmt[i];
    int64_t id = 0;
    sqlite3_bind_double(st, 1, t);
    if (sqlite3_step(st) == SQLITE_ROW) id = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return id;
}

/* 1 when HAY[0, N) holds NEEDLE, ASCII letters in either case. */
static int contains(const char *hay, size_t n, const char *needle) {
    size_t m = strlen(needle);
    if (m == 0) return 1;
    for (size_t i = 0; i + m <= n; i++) {
        size_t k = 0;
        while (k < m) {
            unsigned char a = (unsigned char)hay[i + k], b = (unsigned char)needle[k];
            if (a >= 'A' && a <= 'Z') a = (unsigned char)(a + 32);
            if (b >= 'A' && b <= 'Z') b = (unsigned char)(b + 32);
            if (a != b) break;
            k++;
        }
        if (k == m) return 1;
    }
    return 0;
}

/* 1 when body ID matches Q's text and field: the body is read (by rowid) only
 * for those. */
static int body_matches(struct brm_store *s, int64_t id, const struct brm_body_query *q) {
    int hit = 1;
    if (q->text && q->text[0]) {
        sqlite3_stmt *st = s->stmt[S_C_BODY];
        struct brm_body b = { 0 };
        sqlite3_bind_int64(st, 1, id);
        if (sqlite3_step(st) == SQLITE_ROW) row_body(s, st, 5, 7, &b);
        hit = b.body && contains(b.body, b.len, q->text); /* a damaged one matches nothing */
        sqlite3_reset(st);
        room_done(&s->unpacked);
    }
    if (hit && q->field && q->field[0]) {
        char path[300];
        snprintf(path, sizeof(path), "$.%s", q->field);
        sqlite3_stmt *st = s->stmt[S_C_FIELD];
        sqlite3_bind_int64(st, 1, id);
        bind_text(st, 2, path);
        bind_text(st, 3, q->value ? q->value : "");
        hit = sqlite3_step(st) == SQLITE_ROW;
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
    }
    return hit;
}

/*
 * Ids are handed out in arrival order, at most SKEW seconds after a body's
 * first byte came (its received time): so a body received before T - SKEW
 * has a smaller id than any body received at T or later. The time range
 * becomes a range of ids, found through the received index; rows in it are
 * still checked against the times.
 */
static void id_range(struct brm_store *s, const struct brm_body_query *q, int64_t *lo,
                     int64_t *hi) {
    *hi = q->before > 0 ? q->before : INT64_MAX;
    *lo = 0;
    if (q->until > 0) {
        int64_t id = id_at(s, S_C_ID_FROM, q->until + q->skew);
        if (id > 0 && id < *hi) *hi = id;
    }
    if (q->since > 0) *lo = id_at(s, S_C_ID_BEFORE, q->since - q->skew);
}

int brm_store_find_bodies(struct brm_store *s, struct brm_body_query *q,
                          int (*fn)(void *arg, const struct brm_body *b), void *arg,
                          struct brm_err *err) {
    int64_t lo, hi;
    id_range(s, q, &lo, &hi);
    enum stmt i = q->topic ? S_C_BODIES_TOPIC : S_C_BODIES;
    sqlite3_stmt *st = s->stmt[i];
    sqlite3_bind_int64(st, 1, hi);
    sqlite3_bind_int64(st, 2, lo);
    if (q->topic) bind_text(st, 3, q->topic);
    int rc, found = 0, looked = 0;
    q->next = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t id = sqlite3_column_int64(st, 0);
        if (found >= q->limit || (q->scan > 0 && looked >= q->scan)) {
            q->next = id + 1; /* the next page starts at this row */
            break;
        }
        looked++;
        struct brm_body b = {
            .id = id,
            .source = column_text(st, 1),
            .topic = column_text(st, 2),
            .received = sqlite3_column_double(st, 3),
            .events = (size_t)sqlite3_column_int64(st, 4),
            .len = (size_t)sqlite3_column_int64(st, 5),
            .runs = sqlite3_column_blob(st, 6),
            .runs_len = (size_t)sqlite3_column_bytes(st, 6),
        };
        if (q->source && strcmp(b.source, q->source) != 0) continue;
        if ((q->since > 0 && b.received < q->since) || (q->until > 0 && b.received >= q->until))
            continue;
        if (!body_matches(s, id, q)) continue;
        found++;
        if (fn(arg, &b)) {
            q->next = id;
            rc = SQLITE_DONE;
            break;
        }
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : fail(s, err, "reading the journal");
}

int brm_store_body(struct brm_store *s, int64_t id, int (*fn)(void *arg, const struct brm_body *b),
                   void *arg, struct brm_err *err) {
    sqlite3_stmt *st = s->stmt[S_C_BODY];
    sqlite3_bind_int64(st, 1, id);
    int rc = sqlite3_step(st), found = rc == SQLITE_ROW;
    if (found) {
        struct brm_body b = {
            .id = sqlite3_column_int64(st, 0),
            .source = column_text(st, 1),
            .topic = column_text(st, 2),
            .received = sqlite3_column_double(st, 3),
            .events = (size_t)sqlite3_column_int64(st, 4),
            .runs = sqlite3_column_blob(st, 6),
            .runs_len = (size_t)sqlite3_column_bytes(st, 6),
        };
        row_body(s, st, 5, 7, &b);
        if (b.damage) {
            brm_err_set(err, "store: body %lld cannot be read: %s", (long long)id, b.damage);
            found = -1;
        } else {
            fn(arg, &b);
        }
    }
    sqlite3_reset(st);
    room_done(&s->unpacked);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return fail(s, err, "reading a body");
    return found;
}

int brm_store_find_deliveries(struct brm_store *s, struct brm_delivery_query *q,
                              int (*fn)(void *arg, const struct brm_delivery *d), void *arg,
                              struct brm_err *err) {
    enum stmt i = q->state == BRM_DELIVERY_PENDING ? S_C_PENDING
                  : q->state == BRM_DELIVERY_DEAD  ? S_C_DEAD
                                                   : S_C_DELIVERIES;
    sqlite3_stmt *st = s->stmt[i];
    sqlite3_bind_int64(st, 1, q->before > 0 ? q->before : INT64_MAX);
    int rc, found = 0, looked = 0;
    q->next = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct brm_delivery d = { 0 };
        read_delivery(st, &d);
        if (found >= q->limit || (q->scan > 0 && looked >= q->scan)) {
            q->next = d.id + 1;
            break;
        }
        looked++;
        /* Deliveries are created in id order: older ones cannot match. */
        if (q->since > 0 && d.created < q->since - 60) break;
        if (q->state >= 0 && (int)d.state != q->state) continue;
        if (q->target && strcmp(d.target, q->target) != 0) continue;
        if ((q->since > 0 && d.created < q->since) || (q->until > 0 && d.created >= q->until))
            continue;
        found++;
        if (fn(arg, &d)) {
            q->next = d.id;
            rc = SQLITE_DONE;
            break;
        }
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : fail(s, err, "reading deliveries");
}

int brm_store_delivery(struct brm_store *s, int64_t id,
                       int (*fn)(void *arg, const struct brm_delivery *d), void *arg,
                       struct brm_err *err) {
    sqlite3_stmt *st = s->stmt[S_C_DELIVERY];
    sqlite3_bind_int64(st, 1, id);
    int rc = sqlite3_step(st), found = rc == SQLITE_ROW;
    if (found) {
        struct brm_delivery d = { 0 };
        read_delivery(st, &d);
        fn(arg, &d);
    }
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return fail(s, err, "reading a delivery");
    return found;
}

int brm_store_body_deliveries(struct brm_store *s, int64_t body, int limit,
                              int (*fn)(void *arg, const struct brm_delivery *d), void *arg,
                              struct brm_err *err) {
    sqlite3_stmt *st = s->stmt[S_C_OF_BODY];
    int rc;
    sqlite3_bind_int64(st, 1, body);
    sqlite3_bind_int(st, 2, limit);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct brm_delivery d = { 0 };
        read_delivery(st, &d);
        if (fn(arg, &d)) {
            rc = SQLITE_DONE;
            break;
        }
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : fail(s, err, "reading a body's deliveries");
}
