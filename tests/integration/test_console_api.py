"""The console's JSON API where it can hurt: a bulk retry or drop takes only
a filter it understands (a misspelt key, a bad time or a target that is not
a name is a 400 that changes nothing), and the playground runs off the
admin listener's thread, so a rule that runs to its limits holds up neither
/healthz nor a stop."""
import http.client
import json
import signal
import threading
import time
import unittest
import uuid

import harness
from harness import Brume

# Deliveries to a port nothing listens on stay pending, retried.
CONFIG = """
sources = { mist = { path = "/mist", secret = "%s" } }
targets = { hook = { kind = "webhook", url = "http://127.0.0.1:9/x", timeout = "1s" } }
limits = { time = "1s", instructions = 1000000000000 }
http = { drain_timeout = "2s" }
""" % harness.SECRET

RULE = """
return {
  topics = "alarms",
  on_event = function(ev, ctx) brume.send("hook", { title = ev.id }) end,
}"""

# What the playground runs instead of RULE: each event runs to the time limit.
LOOP = """
return {
  topics = "alarms",
  on_event = function(ev, ctx) while true do end end,
}"""

HEADERS = {"X-Brume-Console": "1", "Content-Type": "application/json"}


def alarms(n):
    return json.dumps({"topic": "alarms",
                       "events": [{"id": uuid.uuid4().hex, "type": "x"} for _ in range(n)]})


class ConsoleApi(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.b = Brume(CONFIG, rules={"r.lua": RULE}, workers=1).start()
        for _ in range(3):
            assert cls.b.post(alarms(1)).status == 200

    @classmethod
    def tearDownClass(cls):
        cls.b.cleanup()

    def api(self, method, path, body=None, timeout=10):
        conn = http.client.HTTPConnection("127.0.0.1", self.b.admin_port, timeout=timeout)
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None,
                         headers=HEADERS)
            r = conn.getresponse()
            return r.status, json.loads(r.read() or b"null"), dict(r.getheaders())
        finally:
            conn.close()

    def pending(self):
        status, page, _ = self.api("GET", "/api/deliveries?status=pending&limit=200")
        self.assertEqual(status, 200)
        return len(page["deliveries"])

    def test_a_bulk_change_refuses_a_filter_it_cannot_read(self):
        self.assertEqual(self.pending(), 3)
        for body, says in (
            ({"all": True, "status": "pending", "since": "2030-13-01"}, "since '2030-13-01'"),
            ({"all": True, "status": "pending", "until": "someday"}, "until 'someday'"),
            ({"all": True, "status": "pending", "since": {"x": 1}}, "since: a time"),
            ({"all": True, "status": "pending", "targt": "hook"}, "unknown key 'targt'"),
            ({"all": True, "status": "pending", "target": 7}, "target: a target's name"),
            ({"all": "yes", "status": "pending"}, "all: true"),
            ({"id": 1, "all": True, "status": "pending"}, "id or all"),
        ):
            for op in ("drop", "retry"):
                status, answer, _ = self.api("POST", "/api/deliveries/" + op, body)
                self.assertEqual(status, 400, (op, body, answer))
                self.assertIn(says, answer["error"], body)
        self.assertEqual(self.pending(), 3)  # nothing changed
        # A filter it reads: a window in the future matches none of them.
        status, answer, _ = self.api("POST", "/api/deliveries/drop",
                                     {"all": True, "status": "pending", "since": "2030-01-01"})
        self.assertEqual((status, answer["changed"]), (200, 0), answer)
        status, _, _ = self.api("GET", "/api/deliveries?since=2026-13-45")
        self.assertEqual(status, 400)
        status, answer, _ = self.api("GET", "/api/events?since=2026-13-45")
        self.assertEqual(status, 400)
        self.assertIn("since '2026-13-45'", answer["error"])
        status, page, _ = self.api("GET", "/api/events?since=2020-01-01T00:00Z")
        self.assertEqual((status, len(page["events"])), (200, 3))
        self.assertEqual(self.pending(), 3)

    def test_a_long_playground_run_holds_up_nothing(self):
        run = {"payload": alarms(4), "file": "r.lua", "text": LOOP}
        answers = []
        t = threading.Thread(target=lambda: answers.append(
            self.api("POST", "/api/playground", run, timeout=30)))
        t0 = time.monotonic()
        t.start()
        time.sleep(0.5)  # it is running: 4 events of 1 s each
        status, health, _ = self.api("GET", "/healthz", timeout=5)
        self.assertEqual((status, health["status"]), (200, "ok"))
        self.assertLess(time.monotonic() - t0, 2.0)
        status, answer, headers = self.api("POST", "/api/playground", run)
        self.assertEqual(status, 503)
        self.assertIn("busy", answer["error"])
        self.assertEqual(headers.get("Retry-After"), "1")
        t.join(30)
        status, answer, _ = answers[0]
        self.assertEqual((status, answer["ok"], answer["events"], answer["failed"]),
                         (200, True, 4, 4), answer)
        self.assertTrue(all("time limit" in json.dumps(r) for r in answer["runs"]), answer)
        # Nothing it did was sent or stored.
        self.assertEqual(self.pending(), 3)


class Stop(unittest.TestCase):
    def test_sigterm_during_a_playground_run_is_prompt(self):
        b = Brume(CONFIG, rules={"r.lua": RULE}, workers=1).start()
        try:
            run = {"payload": alarms(100), "file": "r.lua", "text": LOOP}  # 100 s if left alone
            conn = http.client.HTTPConnection("127.0.0.1", b.admin_port, timeout=30)
            conn.request("POST", "/api/playground", body=json.dumps(run), headers=HEADERS)
            time.sleep(1)
            t0 = time.monotonic()
            b.send_signal(signal.SIGTERM)
            self.assertEqual(b.wait_exit(15), 0)
            self.assertLess(time.monotonic() - t0, 5.0)
            conn.close()
        finally:
            b.cleanup()


if __name__ == "__main__":
    unittest.main()
