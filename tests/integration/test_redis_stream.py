"""The redis-stream target against Debian's redis-server, started here on
127.0.0.1 and a free port and stopped by its pid: entries arrive with
their fields, in order per key, capped by MAXLEN; a Redis that is down is
waited for and the deliveries are tried again until done; a key of the
wrong type is a dead letter; the password never shows.

Skipped (77) where redis-server is not installed (build.sh test installs
it)."""
import json
import sys
import time
import unittest
import uuid

import harness
from harness import Brume, Redis, run_cli

RULE = """
return { topics = "alarms", on_event = function(ev, ctx)
  brume.send(ev.target, { title = "event " .. ev.id, fields = { site = ev.site, n = ev.n } })
end }
"""
PASSWORD = "REDIS-PASSWORD-31"


def _is_id(s):
    a, _, b = s.partition("-")
    return a.isdigit() and b.isdigit()


class RedisStream(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.redis = Redis(extra="requirepass %s" % PASSWORD).start()
        url = "redis://:%s@127.0.0.1:%d/0" % (PASSWORD, cls.redis.port)
        cls.b = Brume("""
sources = { mist = { path = "/mist", secret = "%s" } }
targets = {
  events = { kind = "redis-stream", url = "%s", stream = "mist:{topic}", key = "fields.site",
             maxlen = 5, exact = true, backoff = "0.2s", timeout = "1s" },
  wrong = { kind = "redis-stream", url = "%s", stream = "not-a-stream" },
}
""" % (harness.SECRET, url, url), rules={"s.lua": RULE}).start()

    @classmethod
    def tearDownClass(cls):
        cls.b.cleanup()
        cls.redis.cleanup()

    def cli(self, *args):
        return self.redis.cli("-a", PASSWORD, "--no-auth-warning", *args)

    def xrange(self, stream):
        """[(id, {field: value})] of STREAM, through redis-cli's raw output."""
        lines = self.cli("XRANGE", stream, "-", "+").splitlines()
        got, i = [], 0
        while i < len(lines):
            entry, i = (lines[i], {}), i + 1
            while i + 1 < len(lines) and not _is_id(lines[i]):
                entry[1][lines[i]] = lines[i + 1]
                i += 2
            got.append(entry)
        return got

    def post(self, *events):
        for e in events:
            e.setdefault("id", uuid.uuid4().hex)
            e.setdefault("type", "x")
        self.assertEqual(self.b.post(json.dumps({"topic": "alarms", "events": list(events)})).status,
                         200)

    def rows(self, target):
        out = run_cli("outbox", "-c", self.b.config_path, "list", "--all").stdout
        return [(c[0], c[1], int(c[3]), c[4]) for c in (l.split() for l in out.splitlines()[1:])
                if len(c) > 4 and c[2] == target]

    def wait_rows(self, target, ok, timeout=20):
        deadline = time.time() + timeout
        while not ok(self.rows(target)):
            if time.time() > deadline:
                raise AssertionError("%r\n%s" % (self.rows(target), self.b.log()[-3000:]))
            time.sleep(0.2)
        return self.rows(target)

    def test_entries_in_order_per_key_capped_by_maxlen(self):
        self.cli("DEL", "mist:alarms")
        self.post(*[{"target": "events", "site": "s%d" % (n % 2), "n": n} for n in range(8)])
        self.wait_rows("events", lambda r: len(r) >= 8 and all(x[1] == "done" for x in r))
        got = self.xrange("mist:alarms")
        self.assertEqual(len(got), 5)  # MAXLEN = 5
        self.assertEqual(self.cli("XLEN", "mist:alarms").strip(), "5")
        for s in ("s0", "s1"):
            ns = [json.loads(f["message"])["fields"]["n"] for _, f in got if f["key"] == s]
            self.assertEqual(ns, sorted(ns))
        last = got[-1][1]
        self.assertEqual(last["rule"], "s")
        self.assertEqual(last["topic"], "alarms")
        self.assertEqual(json.loads(last["message"])["title"], "event " + last["event"])

    def test_redis_down_is_waited_for_then_done(self):
        self.redis.stop()
        try:
            self.post({"target": "events", "site": "down", "n": 100})
            self.wait_rows("events", lambda r: any(x[1] == "pending" and x[2] >= 1 for x in r))
        finally:
            self.redis.start()
        self.wait_rows("events", lambda r: all(x[1] == "done" for x in r), timeout=30)
        got = [f for _, f in self.xrange("mist:alarms") if f["key"] == "down"]
        self.assertGreaterEqual(len(got), 1)
        self.assertIn('msg="delivery failed; will retry" target=events', self.b.log())

    def test_a_key_of_the_wrong_type_is_a_dead_letter(self):
        self.cli("SET", "not-a-stream", "x")
        self.post({"target": "wrong", "site": "w", "n": 1})
        rows = self.wait_rows("wrong", lambda r: len(r) == 1 and r[0][1] == "dead")
        self.assertEqual(rows[0][2], 1)
        self.assertIn("WRONGTYPE", run_cli("outbox", "-c", self.b.config_path, "list").stdout)

    def test_the_password_never_shows(self):
        listing = run_cli("outbox", "-c", self.b.config_path, "list", "--all").stdout
        tested = run_cli("test", "-c", self.b.config_path, "/dev/stdin",
                         stdin=json.dumps({"topic": "alarms", "events": [
                             {"id": "t1", "target": "events", "site": "x", "n": 1}]}))
        self.assertIn('"xadd":', tested.stdout, tested.stderr)
        for shown in (listing, tested.stdout, tested.stderr, self.b.log()):
            self.assertNotIn(PASSWORD, shown)

    def test_bad_options_are_config_errors(self):
        cases = [
            ('{ kind = "redis-stream", url = "http://h:6379", stream = "s" }',
             "expected redis://"),
            ('{ kind = "redis-stream", url = "redis://h:6379", stream = "{nope" }',
             "is not a template"),
            ('{ kind = "redis-stream", url = "redis://h:6379", stream = "s", maxlen = -1 }',
             "must be between 0 and 1000000000"),
            ('{ kind = "redis-stream", stream = "s" }', "required for kind redis-stream"),
        ]
        path = self.b.path("bad.lua")
        for target, want in cases:
            with open(path, "w") as f:
                f.write('rules = "rules"\ntargets = { t = %s }\n' % target)
            r = run_cli("check", "-c", path)
            self.assertNotEqual(r.returncode, 0, target)
            self.assertIn(want, r.stdout + r.stderr, target)


if __name__ == "__main__":
    if not harness.have_redis():
        print("redis-server is not installed: skipped")
        sys.exit(77)
    unittest.main()
