"""Nothing acknowledged is lost: kill -9 under load and a full store; rule
state shared by workers and kept across restarts; dedupe; the journal's
replay and retention; durability = "none"."""
import json
import os
import signal
import threading
import time
import unittest
import uuid

import harness
from harness import Brume, run_cli
from mock_target import MockTarget

SEND_EACH = """
return { topics = "*", on_event = function(ev, ctx)
  brume.send("hook", { id = ev.id, topic = ctx.topic })
end }"""


def body(topic="alarms", n=3, prefix=None):
    prefix = prefix or uuid.uuid4().hex[:8]
    return [("%s-%d" % (prefix, i)) for i in range(n)], json.dumps(
        {"topic": topic, "events": [{"id": "%s-%d" % (prefix, i), "pad": "x" * 200}
                                    for i in range(n)]})


def hook_config(mock, extra=""):
    return """
sources = { mist = { path = "/mist", secret = "%s" } }
targets = { hook = { kind = "webhook", url = "%s", secret = "whsec_a2V5", backoff = "0.2s" } }
%s
""" % (harness.SECRET, mock.url("/hook"), extra)


def wait_ids(mock, ids, timeout=40):
    """Waits until the mock has had every event id in IDS; returns
    {event id: set of webhook-ids it came with}."""
    want = set(ids)
    deadline = time.time() + timeout
    while True:
        got = {}
        for r in mock.received("/hook"):
            got.setdefault(r.json()["id"], set()).add(r.headers["webhook-id"])
        missing = want - set(got)
        if not missing:
            return got
        if time.time() > deadline:
            raise AssertionError("%d of %d acknowledged events never arrived, e.g. %s" %
                                 (len(missing), len(want), sorted(missing)[:3]))
        time.sleep(0.1)


class KillNine(unittest.TestCase):
    def test_every_acknowledged_event_arrives_after_kill_9(self):
        with MockTarget() as m:
            b = Brume(hook_config(m), rules={"send.lua": SEND_EACH}, workers=2).start()
            try:
                acked, lock, stop = [], threading.Lock(), threading.Event()

                def client():
                    conn = b.connection()
                    while not stop.is_set():
                        ids, data = body()
                        try:
                            r = b.post(data, conn=conn)
                        except OSError:
                            return  # killed mid-request: not acknowledged
                        if r.status == 200:
                            with lock:
                                acked.extend(ids)

                threads = [threading.Thread(target=client) for _ in range(4)]
                for t in threads:
                    t.start()
                time.sleep(1.5)
                os.kill(b.proc.pid, signal.SIGKILL)
                stop.set()
                for t in threads:
                    t.join(20)
                b.proc.wait(10)
                self.assertGreater(len(acked), 30)
                b.start()
                got = wait_ids(m, acked)
                # At least once, and one delivery per event: retries of a
                # delivery keep its webhook-id, and no event got two.
                for event, deliveries in got.items():
                    self.assertEqual(len(deliveries), 1, event)
            finally:
                b.cleanup()


class FullStore(unittest.TestCase):
    def test_a_full_store_answers_503_and_loses_nothing_acknowledged(self):
        with MockTarget() as m:
            m.script("/hook", [{"status": 503}])  # keep deliveries pending: the store fills
            b = Brume(hook_config(m, 'store = { max_size = "400KB" }'),
                      rules={"send.lua": SEND_EACH}, workers=1).start()
            try:
                acked, refused = [], None
                for _ in range(400):
                    ids, data = body(n=20)
                    r = b.post(data)
                    if r.status == 200:
                        acked.extend(ids)
                    else:
                        refused = r
                        break
                self.assertIsNotNone(refused, "the store never filled")
                self.assertEqual(refused.status, 503)
                self.assertEqual(refused.headers.get("Retry-After"), "5")
                self.assertGreater(len(acked), 0)
                b.wait_log("could not store a group of bodies: answered 503")
                # Health says so, for a load balancer to send Mist elsewhere.
                h = b.request("GET", "/healthz", admin=True)
                self.assertEqual(h.status, 503)
                self.assertEqual(json.loads(h.body)["store"], "failing")
                self.assertEqual(b.stop(), 0)
                # Room again: everything acknowledged before goes out.
                with open(b.config_path) as f:
                    text = f.read().replace('store = { max_size = "400KB" }', "")
                with open(b.config_path, "w") as f:
                    f.write(text)
                m.script("/hook", [{"status": 200}])
                b.start()
                wait_ids(m, acked, timeout=60)
            finally:
                b.cleanup()


class FailingStore(unittest.TestCase):
    """The store goes read-only mid-run, then comes back, without a restart."""

    def setUp(self):
        self.flag = os.path.join(harness.tempfile.mkdtemp(prefix="brume-fault-"), "read-only")

    def tearDown(self):
        harness.shutil.rmtree(os.path.dirname(self.flag), ignore_errors=True)

    def fault(self, on):
        if on:
            open(self.flag, "w").close()
        elif os.path.exists(self.flag):
            os.unlink(self.flag)

    def test_read_only_under_load_answers_503_and_loses_nothing(self):
        with MockTarget() as m:
            b = Brume(hook_config(m), rules={"send.lua": SEND_EACH}, workers=2,
                      env=harness.fault_env(self.flag)).start()
            try:
                acked, refused, lock, stop = [], [], threading.Lock(), threading.Event()

                def client():
                    conn = b.connection()
                    while not stop.is_set():
                        ids, data = body()
                        r = b.post(data, conn=conn)
                        with lock:
                            if r.status == 200:
                                acked.extend(ids)
                            else:
                                refused.append(r)

                threads = [threading.Thread(target=client) for _ in range(4)]
                for t in threads:
                    t.start()
                time.sleep(0.7)
                self.fault(True)
                time.sleep(1.0)
                self.fault(False)
                time.sleep(0.7)
                stop.set()
                for t in threads:
                    t.join(20)
                self.assertTrue(refused, "the fault never took effect")
                for r in refused:
                    self.assertEqual(r.status, 503)
                    self.assertEqual(r.headers.get("Retry-After"), "5")
                self.assertIn("could not store a group of bodies: answered 503", b.log())
                wait_ids(m, acked)  # what was answered 200, before and after, arrives
            finally:
                self.fault(False)
                b.cleanup()

    def test_a_refused_body_leaves_no_state(self):
        """Its dedupe marks and brume.once are undone: the same body, sent
        again once the store is back, is not taken for a duplicate."""
        rule = """
return { topics = "alarms", on_event = function(ev)
  if brume.once("seen:" .. ev.id, "1h") then brume.send("hook", { id = ev.id }) end
end }"""
        with MockTarget() as m:
            b = Brume(hook_config(m).replace('secret = "%s" }' % harness.SECRET,
                                            'secret = "%s", dedupe = "10m" }' % harness.SECRET),
                      rules={"once.lua": rule}, workers=2, env=harness.fault_env(self.flag)).start()
            try:
                ids, data = body(n=2)
                self.fault(True)
                self.assertEqual(b.post(data).status, 503)
                self.fault(False)
                self.assertEqual(b.post(data).status, 200)
                wait_ids(m, ids)
                self.assertEqual(b.metrics().get("brume_duplicate_events_total", 0), 0)
                self.assertEqual(b.post(data).status, 200)  # now it is one
                time.sleep(0.5)
                self.assertEqual(b.metrics()["brume_duplicate_events_total"], 2)
                self.assertEqual(len(m.received("/hook")), 2)
            finally:
                self.fault(False)
                b.cleanup()


class Pending(unittest.TestCase):
    def test_no_body_is_acknowledged_on_the_strength_of_one_not_stored(self):
        """Body A marks event X seen, then its rules take a while; copies of
        X sent meanwhile (Mist's org + site duplicates) wait for A's commit.
        A crash before it: none of them was answered, so X is not lost."""
        slow = """
return { topics = "alarms", on_event = function(ev)
  if ev.slow then local t = brume.now() while brume.now() < t + 1.5 do end end
end }"""
        with MockTarget() as m:
            cfg = hook_config(m, 'limits = { instructions = 1000000000, time = "10s" }')
            cfg = cfg.replace('secret = "%s" }' % harness.SECRET,
                              'secret = "%s", dedupe = "10m" }' % harness.SECRET)
            b = Brume(cfg, rules={"slow.lua": slow, "send.lua": SEND_EACH}, workers=2).start()
            try:
                a = json.dumps({"topic": "alarms", "events": [{"id": "X"}, {"id": "S", "slow": True}]})
                copy = json.dumps({"topic": "alarms", "events": [{"id": "X"}]})
                answers = []

                def post(data):
                    try:
                        answers.append(b.post(data).status)
                    except OSError:
                        pass  # killed first: no answer

                first = threading.Thread(target=post, args=(a,))
                first.start()
                time.sleep(0.4)  # A has marked X and is in its slow rule
                copies = [threading.Thread(target=post, args=(copy,)) for _ in range(6)]
                for t in copies:
                    t.start()
                time.sleep(0.4)
                os.kill(b.proc.pid, signal.SIGKILL)
                for t in [first] + copies:
                    t.join(30)
                b.proc.wait(10)
                self.assertEqual(answers, [])  # nothing was acknowledged
                b.start()
                self.assertEqual(b.post(copy).status, 200)  # sent again: it runs
                wait_ids(m, ["X"])
            finally:
                b.cleanup()


STATE_RULES = {
    "once.lua": """
return { topics = "ping", on_event = function(ev)
  if brume.once("ping:" .. ev.key, "1h") then brume.send("out", { what = "once" }) end
end }""",
    "throttle.lua": """
return { topics = "ping", on_event = function(ev)
  if brume.throttle("t:" .. ev.key, 3, "1h") then brume.send("out", { what = "throttle" }) end
end }""",
    "count.lua": """
return { topics = "ping", on_event = function(ev)
  local n = brume.state.incr("count:" .. ev.key)
  brume.state.set("last:" .. ev.key, { n = n, id = ev.id })
  local last = brume.state.get("last:" .. ev.key)
  brume.send("out", { what = "count", n = n, same = last.id == ev.id })
end }""",
}


class State(unittest.TestCase):
    def test_once_throttle_and_state_across_workers_and_restarts(self):
        b = Brume("""
sources = { mist = { path = "/mist", secret = "%s" } }
targets = { out = { kind = "file", path = "var/out.jsonl" } }
""" % harness.SECRET, rules=STATE_RULES, workers=2).start()
        try:
            def ping_all(n):
                threads = []
                for i in range(n):
                    data = json.dumps({"topic": "ping", "events": [{"id": "p%d" % i, "key": "A"}]})
                    threads.append(threading.Thread(
                        target=lambda d=data: self.assertEqual(b.post(d).status, 200)))
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()

            ping_all(20)
            lines = [x["message"] for x in b.wait_lines("out.jsonl", 24)]
            self.assertEqual(sum(1 for x in lines if x["what"] == "once"), 1)
            self.assertEqual(sum(1 for x in lines if x["what"] == "throttle"), 3)
            counts = sorted(x["n"] for x in lines if x["what"] == "count")
            self.assertEqual(counts, list(range(1, 21)))  # no lost update across workers
            self.assertTrue(all(x["same"] for x in lines if x["what"] == "count"))
            self.assertEqual(b.stop(), 0)
            b.start()
            ping_all(5)
            lines = [x["message"] for x in b.wait_lines("out.jsonl", 29)][24:]
            self.assertEqual([x["what"] for x in lines], ["count"] * 5)
            self.assertEqual(sorted(x["n"] for x in lines), list(range(21, 26)))
        finally:
            b.cleanup()


class Dedupe(unittest.TestCase):
    def test_copies_run_once_and_a_clients_updates_each_run(self):
        b = Brume("""
sources = {
  mist = { path = "/mist", secret = "%s", dedupe = "10m" },
  named = { path = "/named", secret = "%s", dedupe = { window = "10m",
            fields = { ["device_events"] = { "mac", "type" } } } },
}
targets = { out = { kind = "file", path = "var/out.jsonl" } }
""" % (harness.SECRET, harness.SECRET), rules={"v.lua": """
return { topics = "*", on_event = function(ev, ctx)
  brume.send("out", { topic = ctx.topic, ev = ev })
end }"""}, workers=2).start()
        try:
            def post(topic, events, path="/mist", **kw):
                data = json.dumps({"topic": topic, "events": events}, **kw)
                self.assertEqual(b.post(data, path=path).status, 200)

            restart = {"mac": "5c5b35000001", "type": "AP_RESTARTED", "timestamp": 1700000000,
                       "site_id": "s1", "reason": "power"}
            post("device-events", [restart])
            # The site's copy: no id, keys in another order, the other spelling of the topic.
            post("device_events", [dict(reversed(list(restart.items())))])
            # One client's position updates share its id; each is news.
            post("location", [{"id": "c-1", "mac": "aa", "x": 1.5, "y": 2.0}])
            post("location", [{"id": "c-1", "mac": "aa", "x": 3.0, "y": 2.0}])
            post("location", [{"y": 2.0, "x": 1.5, "mac": "aa", "id": "c-1"}])  # a copy
            # Named fields: the same mac and type are the same event.
            post("device-events", [restart], path="/named")
            post("device-events", [dict(restart, timestamp=1700000005)], path="/named")
            post("device-events", [dict(restart, type="AP_CONFIGURED")], path="/named")
            lines = b.wait_lines("out.jsonl", 5)
            time.sleep(0.5)
            lines = b.lines("out.jsonl")
            got = sorted((x["message"]["topic"], x["message"]["ev"].get("type"),
                          x["message"]["ev"].get("x")) for x in lines)
            self.assertEqual(got, [("device-events", "AP_CONFIGURED", None),
                                   ("device-events", "AP_RESTARTED", None),
                                   ("device-events", "AP_RESTARTED", None),
                                   ("location", None, 1.5), ("location", None, 3)])
            self.assertEqual(b.metrics()["brume_duplicate_events_total"], 3)
            # Dedupe marks outlive a restart.
            self.assertEqual(b.stop(), 0)
            b.start()
            post("device_events", [restart])
            time.sleep(0.5)
            self.assertEqual(len(b.lines("out.jsonl")), 5)
        finally:
            b.cleanup()


class Journal(unittest.TestCase):
    def test_dedupe_replay_retention_and_durability_none(self):
        b = Brume("""
sources = {
  mist = { path = "/mist", secret = "%s", dedupe = "10m" },
  bulk = { path = "/bulk", secret = "%s", durability = "none" },
}
targets = { out = { kind = "file", path = "var/out.jsonl" } }
""" % (harness.SECRET, harness.SECRET), rules={"v.lua": """
return { topics = "*", on_event = function(ev, ctx)
  brume.send("out", { v = 1, id = ev.id, topic = ctx.topic })
end }"""}, workers=2).start()
        try:
            one = json.dumps({"topic": "alarms", "events": [{"id": "dup-1", "n": 1}]})
            self.assertEqual(b.post(one).status, 200)
            # Org and site both send it; the copy need not be written alike.
            copy = json.dumps({"events": [{"n": 1.0, "id": "dup-1"}], "topic": "alarms"}, indent=1)
            self.assertEqual(b.post(copy).status, 200)
            self.assertEqual(b.post(json.dumps({"topic": "audits", "events": [{"id": "dup-1"}]}))
                             .status, 200)
            self.assertEqual(b.post(json.dumps({"topic": "location", "events": [{"id": "l1"}]}),
                                    path="/bulk").status, 200)
            lines = b.wait_lines("out.jsonl", 3)
            time.sleep(0.5)
            lines = b.lines("out.jsonl")
            self.assertEqual(sorted((x["message"]["topic"], x["message"]["id"]) for x in lines),
                             [("alarms", "dup-1"), ("audits", "dup-1"), ("location", "l1")])
            self.assertEqual(b.metrics()["brume_duplicate_events_total"], 1)
            self.assertEqual(b.stop(), 0)

            # Replay, a dry run: every journaled body, the duplicate skipped again.
            r = run_cli("replay", "-c", b.config_path)
            self.assertEqual(r.returncode, 0, r.stderr)
            out = [json.loads(x) for x in r.stdout.splitlines()]
            self.assertEqual(len(out), 3)
            self.assertIn("replayed 4 bodies (3 events): 3 messages; nothing sent", r.stderr)
            self.assertTrue(all(isinstance(x["delivery"], int) for x in out))
            r = run_cli("replay", "-c", b.config_path, "--topic", "audits")
            self.assertEqual(len(r.stdout.splitlines()), 1)
            r = run_cli("replay", "-c", b.config_path, "--since", "2099-01-01")
            self.assertEqual(r.stdout, "")
            r = run_cli("replay", "-c", b.config_path, "--until", "1h")
            self.assertEqual(r.stdout, "")
            self.assertEqual(run_cli("replay", "-c", b.config_path, "--since", "soon").returncode,
                             2)

            # New rules, replayed with --send: only what was not sent before is queued.
            b.write_rule("v.lua", """
return { topics = "*", on_event = function(ev, ctx)
  brume.send("out", { v = 2, id = ev.id, topic = ctx.topic })
  if ctx.topic == "alarms" then brume.send("out", { v = 2, extra = true, id = ev.id }) end
end }""")
            r = run_cli("replay", "-c", b.config_path, "--send")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("4 messages, 1 queued (3 sent before)", r.stderr)
            b.start()
            lines = b.wait_lines("out.jsonl", 4)
            self.assertEqual(lines[-1]["message"], {"v": 2, "extra": True, "id": "dup-1"})
            self.assertEqual(b.stop(), 0)

            # Retention by size: the next start prunes the oldest bodies.
            with open(b.config_path, "a") as f:
                f.write('journal = { max_size = "60" }\n')
            b.start()
            b.wait_log('msg="journal pruned" bodies=')
            self.assertEqual(b.stop(), 0)
            r = run_cli("replay", "-c", b.config_path)
            self.assertIn("replayed 1 body", r.stderr)

            # Retention emptied the journal: ids go on all the same, so the
            # next body's message does not take an old one's key (and vanish).
            with open(b.config_path, "a") as f:
                f.write('journal = { max_size = "1" }\n')
            b.start()
            b.wait_log('msg="journal pruned" bodies=1')
            self.assertEqual(b.stop(), 0)
            b.start()  # on an empty journal
            after = json.dumps({"topic": "audits", "events": [{"id": "after"}]})
            self.assertEqual(b.post(after).status, 200)
            lines = b.wait_lines("out.jsonl", 5)
            self.assertEqual(lines[-1]["message"]["id"], "after")
        finally:
            b.cleanup()


if __name__ == "__main__":
    unittest.main()
