"""The storage path: the journal is a bounded ring whose newest bodies are
kept; a kill -9 in the middle of the writer's commit loses nothing that was
answered 200; a durability = "none" source's answers wait for a writer
that fell behind; a slow disk is logged; a stop is prompt while the writer
has a long prune to do;
workers that need each other's rule state do not wait, and nothing runs on
state that is not stored."""
import json
import os
import re
import signal
import sqlite3
import tempfile
import threading
import time
import unittest
import uuid

import harness
from harness import Brume, run_cli

SOURCE = 'sources = { mist = { path = "/mist", secret = "%s" } }\n' % harness.SECRET
NOTHING = 'return { topics = "*", on_event = function(ev, ctx) end }'


def store_bytes(b):
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += os.path.getsize(b.path("var", "brume.db" + suffix))
        except OSError:
            pass
    return total


def replayed_ids(b):
    r = run_cli("replay", "-c", b.config_path)
    assert r.returncode == 0, r.stderr
    return r


def journal_ids(b):
    """Event ids of every body in the journal (read with SQLite directly)."""
    db = sqlite3.connect(b.path("var", "brume.db"))
    try:
        ids = []
        for _, body in harness.journal_bodies(db):
            ids += [e["id"] for e in json.loads(body)["events"]]
        return ids
    finally:
        db.close()


class Packed(unittest.TestCase):
    def test_a_batch_is_stored_packed_and_read_back_as_it_came(self):
        """Mist's batches repeat their keys, and most values, event after
        event: such a body is stored LZ4-packed, counted by the ring at its
        packed size, and read back byte for byte by replay, the console and
        its search, across a restart. A body that does not pack, and a small
        one, are stored as they came."""
        first = json.loads(harness.read(os.path.join(
            harness.FIXTURES, "alarms--rogue-ap-const-alarm-defs.json")))["events"][0]
        events = [dict(first, id="pk-%d" % i) for i in range(10)]
        events.append(dict(first, id="pk-needle", note="Needle"))
        batch = json.dumps({"topic": "alarms", "events": events})
        noisy = json.dumps({"topic": "alarms", "events": [{"id": "nz", "p": harness.noise(2000)}]})
        small = json.dumps({"topic": "alarms", "events": [{"id": "sm"}]})
        posted = [batch, noisy, small]
        rule = """return { topics = "alarms", on_event = function(ev, ctx)
  brume.send("out", { title = ev.id }) end }"""
        b = Brume(SOURCE + 'targets = { out = { kind = "file", path = "var/out.jsonl" } }\n',
                  rules={"r.lua": rule}).start()
        try:
            for body in posted:
                self.assertEqual(b.post(body).status, 200)
            b.wait_lines("out.jsonl", 13)
            self.assertEqual(b.stop(), 0)
            db = sqlite3.connect(b.path("var", "brume.db"))
            rows = db.execute("SELECT size, length(body) FROM bodies ORDER BY id").fetchall()
            stored = db.execute("SELECT sum(length(body) + coalesce(length(runs), 0))"
                                " FROM bodies").fetchone()[0]
            kept = dict(db.execute("SELECT key, value FROM meta"))
            self.assertEqual([body for _, body in harness.journal_bodies(db)],
                             [p.encode() for p in posted])
            db.close()
            self.assertEqual(rows[0][0], len(batch))
            self.assertLess(rows[0][1], len(batch) / 3, rows)
            self.assertEqual(rows[1:], [(None, len(noisy)), (None, len(small))])
            self.assertEqual(kept["journal_bytes"], stored)
            # Replay reads every body as it came.
            r = replayed_ids(b)
            self.assertIn("replayed 3 bodies", r.stderr)
            titles = [json.loads(line)["message"]["title"] for line in r.stdout.splitlines()]
            self.assertEqual(titles, [e["id"] for e in events] + ["nz", "sm"])
            # And the console, after a restart.
            b.start()
            page = json.loads(b.request("GET", "/api/events?q=needle", admin=True,
                                        headers={"X-Brume-Console": "1"}).body)
            self.assertEqual([(e["events"], e["bytes"]) for e in page["events"]],
                             [(11, len(batch))])
            one = json.loads(b.request("GET", "/api/event?id=%d" % page["events"][0]["id"],
                                       admin=True, headers={"X-Brume-Console": "1"}).body)
            self.assertEqual(one["body"], batch)
            page = json.loads(b.request("GET", "/api/events?field=id&value=pk-7", admin=True,
                                        headers={"X-Brume-Console": "1"}).body)
            self.assertEqual(len(page["events"]), 1)
            self.assertEqual(b.stop(), 0)
            # A damaged packed row is one body that cannot be read: replay
            # says which and replays the others; the console says so.
            db = sqlite3.connect(b.path("var", "brume.db"))
            db.execute("UPDATE bodies SET size = size + 7 WHERE id = (SELECT min(id) FROM bodies)")
            db.commit()
            db.close()
            r = run_cli("replay", "-c", b.config_path)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertRegex(r.stderr, r"body \d+ cannot be read \(a packed body that does not"
                             r" unpack\): not replayed")
            self.assertIn("replayed 2 bodies", r.stderr)
            self.assertIn("1 body not replayed", r.stderr)
            titles = [json.loads(line)["message"]["title"] for line in r.stdout.splitlines()]
            self.assertEqual(titles, ["nz", "sm"])
            b.start()
            r = b.request("GET", "/api/event?id=%d" % one["id"], admin=True,
                          headers={"X-Brume-Console": "1"})
            self.assertEqual(r.status, 500)
            self.assertIn("cannot be read", r.body)
            self.assertEqual(b.stop(), 0)
        finally:
            b.cleanup()


class Ring(unittest.TestCase):
    def test_journal_stays_near_its_cap_and_keeps_the_newest(self):
        cap = 64 * 1024
        b = Brume(SOURCE + 'journal = { max_size = "64KB" }\n',
                  rules={"n.lua": NOTHING}, workers=2).start()
        try:
            pad = harness.noise(3000)
            conn = b.connection()
            peak = 0
            for i in range(600):  # 1.8 MB: 28 times the cap
                body = json.dumps({"topic": "alarms", "events": [{"id": "e%04d" % i, "p": pad}]})
                self.assertEqual(b.post(body, conn=conn).status, 200)
                if i % 50 == 0:
                    peak = max(peak, store_bytes(b))
            conn.close()
            time.sleep(1.5)  # the writer's upkeep: a checkpoint
            peak = max(peak, store_bytes(b))
            # The files: the bodies, the schema, a WAL of a quarter of the cap
            # (at least 64 pages), free pages SQLite keeps. Far from 1.8 MB.
            self.assertLess(peak, 4 * cap + 64 * 4096 + 128 * 1024, peak)
            self.assertEqual(b.stop(), 0)
            ids = journal_ids(b)
            self.assertTrue(ids, "the journal kept nothing")
            self.assertLessEqual(len(ids) * 3000, cap)
            # The newest, in order, up to the last one posted.
            self.assertEqual(ids, ["e%04d" % i for i in range(600 - len(ids), 600)])
            r = replayed_ids(b)
            self.assertIn("replayed %d bod" % len(ids), r.stderr)
            db = sqlite3.connect(b.path("var", "brume.db"))
            kept = dict(db.execute("SELECT key, value FROM meta"))
            db.close()
            self.assertEqual(kept["journal_rows"], len(ids))
            self.assertLessEqual(kept["journal_bytes"], cap)
        finally:
            b.cleanup()

    def test_the_cap_counts_packed_bodies_as_stored(self):
        """Batches that pack: the ring counts their packed bytes, so the cap
        keeps several times more of them, the newest, and its count is what
        the rows hold."""
        cap = 64 * 1024
        b = Brume(SOURCE + 'journal = { max_size = "64KB" }\n',
                  rules={"n.lua": NOTHING}, workers=2).start()
        try:
            conn = b.connection()
            raw = 0
            for i in range(400):
                body = json.dumps({"topic": "alarms", "events": [
                    {"id": "p%04d-%d" % (i, k), "type": "rogue_ap", "site_id": "f688779c",
                     "severity": "critical", "ssids": ["DIRECT-roku-371", "DIRECT-wa-BRAVIA"]}
                    for k in range(10)]})
                raw = len(body)
                self.assertEqual(b.post(body, conn=conn).status, 200)
            conn.close()
            self.assertEqual(b.stop(), 0)
            db = sqlite3.connect(b.path("var", "brume.db"))
            kept = dict(db.execute("SELECT key, value FROM meta"))
            rows, stored, packed = db.execute(
                "SELECT count(*), sum(length(body) + coalesce(length(runs), 0)),"
                " count(size) FROM bodies").fetchone()
            db.close()
            self.assertEqual(packed, rows)
            self.assertEqual((kept["journal_rows"], kept["journal_bytes"]), (rows, stored))
            self.assertLessEqual(stored, cap)
            self.assertGreater(rows, 3 * cap // raw, "the cap counted the bodies unpacked")
            ids = journal_ids(b)
            self.assertEqual(ids[-1], "p0399-9")
            self.assertEqual(len(ids), rows * 10)
            self.assertIn("replayed %d bod" % rows, replayed_ids(b).stderr)
        finally:
            b.cleanup()

    def test_deliveries_and_their_attempts_go_with_their_bodies(self):
        b = Brume(SOURCE + 'journal = { max_size = "256KB" }\n'
                  'targets = { out = { kind = "file", path = "var/out.jsonl" } }\n',
                  rules={"s.lua": """
return { topics = "alarms", on_event = function(ev, ctx)
  for i = 1, 5 do brume.send("out", { title = ev.id .. ":" .. i }) end
end }"""}, workers=2).start()
        try:
            conn = b.connection()
            for i in range(3000):  # 15 000 deliveries, each with an attempt
                body = json.dumps({"topic": "alarms", "events": [{"id": "e%05d" % i,
                                                                   "p": "x" * 200}]})
                self.assertEqual(b.post(body, conn=conn).status, 200)
            conn.close()
            b.wait_lines("out.jsonl", 15000, timeout=120)
            time.sleep(1.5)
            self.assertEqual(b.stop(), 0)
            db = sqlite3.connect(b.path("var", "brume.db"))
            bodies = db.execute("SELECT count(*) FROM bodies").fetchone()[0]
            deliveries = db.execute("SELECT count(*) FROM deliveries").fetchone()[0]
            attempts = db.execute("SELECT count(*) FROM attempts").fetchone()[0]
            db.close()
            # What is kept follows the bodies the ring keeps, not what went
            # through: 5 deliveries a body, an attempt each.
            self.assertLess(bodies, 3000)
            self.assertLessEqual(deliveries, 5 * bodies)
            self.assertLessEqual(attempts, 5 * bodies)
        finally:
            b.cleanup()

    def test_sigterm_during_a_long_prune_is_prompt(self):
        b = Brume(SOURCE + 'http = { drain_timeout = "2s" }\n', rules={"n.lua": NOTHING})
        try:
            b.start()
            self.assertEqual(b.stop(), 0)
            # 60 MB of journal, written behind brume's back, then a cap of
            # 64 KB: the next start has 60 000 bodies to prune.
            db = sqlite3.connect(b.path("var", "brume.db"))
            blob = json.dumps({"topic": "alarms", "events": [{"id": "old", "p": "y" * 1000}]})
            now, rows = time.time(), 60000
            db.executemany("INSERT INTO bodies (id, source, topic, received, events, body)"
                           " VALUES (?, 'mist', 'alarms', ?, 1, ?)",
                           ((i, now, blob) for i in range(1, rows + 1)))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('journal_bytes', ?)",
                       (rows * len(blob),))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('journal_rows', ?)", (rows,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('last_body', ?)", (rows,))
            db.commit()
            db.close()
            with open(b.config_path, "a") as f:
                f.write('journal = { max_size = "64KB" }\n')
            b.start()
            # It answers while it prunes, and stops at once when asked.
            self.assertEqual(b.post(json.dumps({"topic": "alarms", "events": [{"id": "n"}]}))
                             .status, 200)
            t0 = time.monotonic()
            b.send_signal(signal.SIGTERM)
            code = b.wait_exit(10)
            took = time.monotonic() - t0
            self.assertEqual(code, 0, b.log()[-2000:])
            self.assertLess(took, 2.0 + 1.0, "stopped %.2fs after SIGTERM" % took)
            # The prune was still going: the store holds more than the cap.
            db = sqlite3.connect(b.path("var", "brume.db"))
            left = db.execute("SELECT value FROM meta WHERE key = 'journal_bytes'").fetchone()[0]
            db.close()
            self.assertGreater(left, 64 * 1024)
            # The next start goes on where the prune stopped, and gets there.
            b.start()
            deadline = time.time() + 30
            while time.time() < deadline:
                db = sqlite3.connect(b.path("var", "brume.db"))
                rows = db.execute("SELECT value FROM meta WHERE key = 'journal_bytes'").fetchone()
                db.close()
                if rows[0] <= 64 * 1024:
                    break
                time.sleep(0.2)
            self.assertLessEqual(rows[0], 64 * 1024)
            self.assertEqual(b.stop(), 0)
            self.assertIn("n", journal_ids(b))  # the newest stays
        finally:
            b.cleanup()


    def test_retention_keeps_up_with_a_backlog_of_old_bodies(self):
        b = Brume(SOURCE, rules={"n.lua": NOTHING})
        try:
            b.start()
            self.assertEqual(b.stop(), 0)
            # 20 000 bodies two days old, written behind brume's back, then a
            # retention of a day: far more than one step a second removes.
            db = sqlite3.connect(b.path("var", "brume.db"))
            blob = json.dumps({"topic": "alarms", "events": [{"id": "old"}]})
            then = time.time() - 2 * 86400
            db.executemany("INSERT INTO bodies (id, source, topic, received, events, body)"
                           " VALUES (?, 'mist', 'alarms', ?, 1, ?)",
                           ((i, then, blob) for i in range(1, 20001)))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('journal_bytes', ?)",
                       (20000 * len(blob),))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('journal_rows', 20000)")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('last_body', 20000)")
            db.commit()
            db.close()
            with open(b.config_path, "a") as f:
                f.write('journal = { retention = "1d" }\n')
            b.start()
            self.assertEqual(b.post(json.dumps({"topic": "alarms", "events": [{"id": "new"}]}))
                             .status, 200)
            deadline = time.time() + 20  # one step of 256 a second would take 78 s
            while time.time() < deadline:
                db = sqlite3.connect(b.path("var", "brume.db"))
                old = db.execute("SELECT count(*) FROM bodies WHERE received < ?",
                                 (time.time() - 86400,)).fetchone()[0]
                db.close()
                if old == 0:
                    break
                time.sleep(0.2)
            self.assertEqual(old, 0)
            self.assertEqual(b.stop(), 0)
            self.assertEqual(journal_ids(b), ["new"])
        finally:
            b.cleanup()


class WriterBehind(unittest.TestCase):
    def test_durability_none_waits_for_a_writer_that_fell_behind(self):
        """Every write to the store takes 1 ms longer, so the writer stores
        about 2 MB a second while the worker takes in far more: past 1 MB
        behind, a durability = "none" body's answer waits for its commit
        (instead of a queue of bodies growing in memory), and every body
        answered is stored."""
        env = dict(harness.fault_env("/nonexistent"), BRUME_FAULT_WRITE_MS="1")
        b = Brume('sources = { mist = { path = "/mist", secret = "%s", durability = "none" } }\n'
                  % harness.SECRET, rules={"n.lua": NOTHING}, workers=1, env=env).start()
        try:
            pad = harness.noise(60000)
            answers, lock = [], threading.Lock()

            def post(t):
                conn = b.connection()
                for i in range(12):
                    eid = "t%d-%02d" % (t, i)
                    r = b.post(json.dumps({"topic": "alarms", "events": [{"id": eid, "p": pad}]}),
                               conn=conn)
                    with lock:
                        answers.append((eid, r.status))
                conn.close()

            threads = [threading.Thread(target=post, args=(t,)) for t in range(5)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            self.assertEqual(len(answers), 60)
            self.assertEqual([a for a in answers if a[1] != 200], [])
            waited = b.metrics().get("brume_journal_behind_total", 0)
            self.assertGreater(waited, 0, "no answer waited for the writer")
            self.assertLess(waited, 60, "every answer waited: none went ahead of its commit")
            self.assertEqual(b.stop(), 0)
            self.assertEqual(sorted(journal_ids(b)), sorted(e for e, _ in answers))
        finally:
            b.cleanup()


class KillDuringCommit(unittest.TestCase):
    def test_kill_9_while_the_writer_syncs_loses_nothing_acknowledged(self):
        """Every sync of the store takes 150 ms longer, so the kill lands in
        the middle of one: every body answered 200 is there after a restart,
        and none was answered before its sync: each 200 came after a sync of
        the WAL that began after its request was sent and ended before the
        answer (the fault shim logs each sync's start and end on the same
        clock as time.monotonic_ns)."""
        synced = tempfile.NamedTemporaryFile(prefix="brume-synced-", delete=False)
        synced.close()
        env = dict(harness.fault_env("/nonexistent"), BRUME_FAULT_SYNC_MS="150",
                   BRUME_FAULT_SYNCED=synced.name)
        b = Brume(SOURCE, rules={"n.lua": NOTHING}, workers=2, env=env).start()
        try:
            acked, lock, stop = [], threading.Lock(), threading.Event()
            windows = []  # (sent, answered) of each 200, in monotonic ns

            def post():
                conn = b.connection()
                while not stop.is_set():
                    eid = uuid.uuid4().hex
                    sent = time.monotonic_ns()
                    try:
                        r = b.post(json.dumps({"topic": "alarms", "events": [{"id": eid}]}),
                                   conn=conn)
                    except OSError:
                        conn.close()
                        return
                    answered = time.monotonic_ns()
                    if r.status == 200:
                        with lock:
                            acked.append(eid)
                            windows.append((sent, answered))
                conn.close()

            threads = [threading.Thread(target=post) for _ in range(6)]
            for t in threads:
                t.start()
            time.sleep(1.2)
            b.send_signal(signal.SIGKILL)
            b.wait_exit(10)
            stop.set()
            for t in threads:
                t.join(10)
            self.assertTrue(acked, "nothing was answered before the kill")
            with open(synced.name) as f:
                syncs = [(int(began), int(ended)) for began, ended, name in
                         (line.split() for line in f) if name.endswith("-wal")]
            early = [w for w in windows
                     if not any(w[0] <= began and ended <= w[1] for began, ended in syncs)]
            self.assertEqual(early, [], "%d of %d answers came before a sync of their body" %
                             (len(early), len(windows)))
            b.env = dict(os.environ)
            b.start()
            self.assertEqual(b.stop(), 0)
            stored = set(journal_ids(b))
            missing = [e for e in acked if e not in stored]
            self.assertEqual(missing, [], "%d of %d acknowledged bodies lost" %
                             (len(missing), len(acked)))
        finally:
            b.cleanup()
            os.unlink(synced.name)


class SlowStore(unittest.TestCase):
    def test_a_slow_sync_is_logged_and_counted(self):
        """A disk whose syncs take 150 ms holds every durable answer up: the
        writer says so in the log (once a second at most), and its commits'
        histogram has them above 100 ms. A store without the fault counts
        its commits too (whether one of them is slow is the disk's call)."""
        env = dict(harness.fault_env("/nonexistent"), BRUME_FAULT_SYNC_MS="150")
        b = Brume(SOURCE, rules={"n.lua": NOTHING}, workers=1, env=env).start()
        try:
            for i in range(3):
                r = b.post(json.dumps({"topic": "alarms", "events": [{"id": "slow-%d" % i}]}))
                self.assertEqual(r.status, 200, r.body)
            b.wait_log("the store was slow")
            line = [x for x in b.log().splitlines() if "the store was slow" in x][0]
            self.assertIn("write=commit", line)
            self.assertGreaterEqual(int(re.search(r"ms=(\d+)", line).group(1)), 150, line)
            m = b.metrics()
            count = m["brume_journal_commit_seconds_count"]
            fast = m['brume_journal_commit_seconds_bucket{le="0.1"}']
            self.assertGreaterEqual(count - fast, 3, "three durable commits over 100 ms")
            self.assertLessEqual(b.log().count("the store was slow"), 2,
                                 "more than a line a second")
            self.assertEqual(b.stop(), 0)
        finally:
            b.cleanup()
        b = Brume(SOURCE, rules={"n.lua": NOTHING}, workers=1).start()
        try:
            for i in range(3):
                self.assertEqual(b.post(json.dumps({"topic": "alarms",
                                                    "events": [{"id": "f-%d" % i}]})).status, 200)
            self.assertGreaterEqual(b.metrics()["brume_journal_commit_seconds_count"], 3)
            self.assertEqual(b.stop(), 0)
        finally:
            b.cleanup()


STATE_RULE = """
return { topics = "*", on_event = function(ev, ctx)
  if brume.once("k:" .. ev.key, "1h") then brume.send("out", { id = ev.id, key = ev.key }) end
  brume.state.incr("count")
end }"""


class SharedState(unittest.TestCase):
    def test_workers_share_hot_keys_without_running_anything_twice(self):
        """Four workers, posts that all touch the same counter and a few
        once-keys: every once fires exactly once and the counter counts
        every event, with bodies that met a key another group held run
        again (brume_state_waits_total) rather than waiting."""
        b = Brume(SOURCE + 'targets = { out = { kind = "file", path = "var/out.jsonl" } }\n',
                  rules={"s.lua": STATE_RULE}, workers=4).start()
        try:
            errors = []

            def post(n):
                conn = b.connection()
                for i in range(n):
                    r = b.post(json.dumps({"topic": "alarms", "events": [
                        {"id": uuid.uuid4().hex, "key": "k%d" % (i % 7)}]}), conn=conn)
                    if r.status != 200:
                        errors.append(r.status)
                conn.close()

            threads = [threading.Thread(target=post, args=(60,)) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            self.assertEqual(errors, [])
            lines = b.wait_lines("out.jsonl", 7)
            time.sleep(0.5)
            self.assertEqual(sorted(x["message"]["key"] for x in b.lines("out.jsonl")),
                             ["k%d" % i for i in range(7)])
            m = b.metrics()
            self.assertEqual(sum(v for k, v in m.items() if k.startswith("brume_rule_errors_total")),
                             0)
            self.assertIn("brume_state_waits_total", m)
            self.assertEqual(b.stop(), 0)
            db = sqlite3.connect(b.path("var", "brume.db"))
            (count,) = db.execute("SELECT value FROM state WHERE key = 'state\x1fcount'").fetchone()
            db.close()
            self.assertEqual(count, "480")
        finally:
            b.cleanup()


class DecodedSize(unittest.TestCase):
    def test_a_body_too_large_once_decoded_is_refused_before_the_200(self):
        """2.7 million `[]` in 8 MB decode to far more than the VM may hold:
        413 with the reason, nothing stored, memory back, and the rules of
        the next body have their memory."""
        b = Brume(SOURCE.replace('secret =', 'max_body = "8MB", secret =') +
                  'limits = { memory = "32MB" }\n',
                  rules={"big.lua": """
return { topics = "*", on_event = function(ev, ctx)
  local t = {} for i = 1, 200000 do t[i] = i end  -- about 4 MB of the rules' memory
  brume.log.info("room", { n = #t })
end }"""}, workers=1).start()
        try:
            evil = '{"topic":"alarms","events":[{"x":[' + ",".join(["[]"] * 2700000) + ']}]}'
            r = b.post(evil)
            self.assertEqual(r.status, 413, r)
            self.assertIn("half of the rules' memory", r.body)
            ok = json.dumps({"topic": "alarms", "events": [{"id": "fine"}]})
            self.assertEqual(b.post(ok).status, 200)
            b.wait_log('msg=room')
            m = b.metrics()
            self.assertEqual(sum(v for k, v in m.items() if k.startswith("brume_rule_errors_total")),
                             0)
            with open("/proc/%d/status" % b.proc.pid) as f:
                rss = int([x for x in f if x.startswith("VmRSS")][0].split()[1])
            self.assertLess(rss, 400 * 1024, "RSS %d kB" % rss)  # ASan's shadow included
            self.assertEqual(b.stop(), 0)
            self.assertEqual(journal_ids(b), ["fine"])
        finally:
            b.cleanup()


if __name__ == "__main__":
    unittest.main()
