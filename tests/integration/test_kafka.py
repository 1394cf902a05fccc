"""The kafka target against librdkafka's mock cluster: once started by
librdkafka inside brume (test.mock.num.brokers), once by a peer process
(tests/integration/kafka_peer.c) that injects broker errors and takes its
broker down. Messages arrive with their key and headers, in order per key
and without duplicates when the brokers fail requests; a broker that is
down makes deliveries time out and be tried again until they are done; a
permanent refusal is a dead letter; secrets never show."""
import json
import os
import re
import subprocess
import time
import unittest
import uuid

import harness
from harness import Brume, run_cli

PEER = os.environ.get("BRUME_KAFKA_PEER",
                      os.path.join(os.path.dirname(harness.BRUME), "tests", "kafka_peer"))
PASSWORD = "SASL-PASSWORD-42"

RULE = """
return { topics = "alarms", on_event = function(ev, ctx)
  brume.send(ev.target, { title = "event " .. ev.id, fields = { site = ev.site, n = ev.n } })
end }
"""


class Peer:
    """A mock cluster in a process of its own, steered through its stdin."""

    def __init__(self, brokers=1):
        self.proc = subprocess.Popen([PEER, "cluster", str(brokers)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("bootstraps "), line
        self.bootstraps = line.split()[1]

    def command(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def stop(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def consume(bootstraps, topic, partitions, count, seconds=10):
    """The messages of TOPIC, up to COUNT of them, read from the start."""
    r = subprocess.run([PEER, "consume", bootstraps, topic, str(partitions), str(count),
                        str(seconds)], capture_output=True, text=True, timeout=seconds + 20)
    return [json.loads(line) for line in r.stdout.splitlines()]


class Kafka(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.peer = Peer()
        for topic, parts in (("events", 3), ("flaky", 1), ("perm", 1)):
            cls.peer.command("topic %s %d" % (topic, parts))
        bs = cls.peer.bootstraps
        cls.b = Brume("""
sources = { mist = { path = "/mist", secret = "%s" } }
targets = {
  own = { kind = "kafka", topic = "mist.{topic}", key = "fields.site",
          properties = { ["test.mock.num.brokers"] = "1" } },
  peer = { kind = "kafka", brokers = "%s", topic = "events", key = "fields.site",
           concurrency = 8 },
  flaky = { kind = "kafka", brokers = { "%s" }, topic = "flaky", timeout = "1s",
            backoff = "0.3s", properties = { ["reconnect.backoff.max.ms"] = "200" } },
  perm = { kind = "kafka", brokers = "%s", topic = "perm" },
  secure = { kind = "kafka", brokers = "127.0.0.1:1", topic = "closed", timeout = "1s",
             sasl = { mechanism = "PLAIN", username = "brume", password = "%s" } },
}
""" % (harness.SECRET, bs, bs, bs, PASSWORD), rules={"k.lua": RULE}).start()

    @classmethod
    def tearDownClass(cls):
        cls.b.cleanup()
        cls.peer.stop()

    def post(self, *events):
        for e in events:
            e.setdefault("id", uuid.uuid4().hex)
            e.setdefault("type", "x")
        r = self.b.post(json.dumps({"topic": "alarms", "events": list(events)}))
        self.assertEqual(r.status, 200)
        return [e["id"] for e in events]

    def rows(self, target):
        """`brume outbox list --all` rows of TARGET: [id, state, attempts, status, error]."""
        out = run_cli("outbox", "-c", self.b.config_path, "list", "--all").stdout
        rows = []
        for line in out.splitlines()[1:]:
            cells = line.split()
            if len(cells) > 3 and cells[2] == target:
                rows.append((cells[0], cells[1], int(cells[3]), cells[4], " ".join(cells[11:])))
        return rows

    def wait_rows(self, target, ok, timeout=20):
        deadline = time.time() + timeout
        while True:
            rows = self.rows(target)
            if ok(rows):
                return rows
            if time.time() > deadline:
                raise AssertionError("%s: %r\n%s" % (target, rows, self.b.log()[-3000:]))
            time.sleep(0.2)

    def test_brume_starts_the_mock_cluster_and_messages_arrive(self):
        self.post(*[{"target": "own", "site": "s1", "n": n} for n in range(3)])
        self.wait_rows("own", lambda r: len(r) == 3 and all(x[1] == "done" for x in r))
        m = re.search(r'msg="kafka: a mock cluster" target=own bootstraps=(\S+)', self.b.log())
        got = consume(m.group(1), "mist.alarms", 4, 3)
        self.assertEqual([json.loads(x["value"])["fields"]["n"] for x in got], [0, 1, 2])
        self.assertEqual({x["key"] for x in got}, {"s1"})
        self.assertEqual(got[0]["headers"]["brume-rule"], "k")
        self.assertEqual(got[0]["headers"]["brume-topic"], "alarms")
        self.assertEqual(json.loads(got[0]["value"])["title"], "event " + got[0]["headers"]["brume-event"])

    def test_order_per_key_holds_through_broker_errors(self):
        # NOT_LEADER_OR_FOLLOWER on the next Produce requests: librdkafka
        # retries them itself; the idempotent producer neither duplicates
        # nor reorders.
        self.peer.command("errors 6 4")
        sites = ["a", "b", "c", "d"]
        self.post(*[{"target": "peer", "site": sites[n % 4], "n": n} for n in range(24)])
        self.wait_rows("peer", lambda r: len(r) == 24 and all(x[1] == "done" for x in r))
        got = consume(self.peer.bootstraps, "events", 3, 25, seconds=4)
        self.assertEqual(len(got), 24)  # not one more
        for s in sites:
            ns = [json.loads(x["value"])["fields"]["n"] for x in got if x["key"] == s]
            self.assertEqual(ns, sorted(ns), s)
            self.assertEqual(len(ns), 6, s)
            self.assertEqual(len({x["partition"] for x in got if x["key"] == s}), 1)

    def test_a_broker_down_is_retried_until_done(self):
        self.peer.command("down 1")
        try:
            self.post({"target": "flaky", "site": "s", "n": 1}, {"target": "flaky", "site": "s",
                                                                 "n": 2})
            rows = self.wait_rows("flaky", lambda r: len(r) == 2 and any(x[2] >= 1 for x in r))
            self.assertTrue(all(x[1] == "pending" for x in rows), rows)
            self.assertIn("timeout", [x[3] for x in rows if x[2] >= 1])
        finally:
            self.peer.command("up 1")
        rows = self.wait_rows("flaky", lambda r: len(r) == 2 and all(x[1] == "done" for x in r))
        self.assertGreaterEqual(max(x[2] for x in rows), 2)
        got = consume(self.peer.bootstraps, "flaky", 1, 2)
        self.assertEqual([json.loads(x["value"])["fields"]["n"] for x in got], [1, 2])
        self.assertIn('msg="delivery failed; will retry" target=flaky', self.b.log())

    def test_a_permanent_refusal_is_a_dead_letter(self):
        self.peer.command("errors 29 1")  # TOPIC_AUTHORIZATION_FAILED
        self.post({"target": "perm", "site": "s", "n": 1})
        rows = self.wait_rows("perm", lambda r: len(r) == 1 and r[0][1] == "dead")
        self.assertEqual(rows[0][2], 1)
        self.assertEqual(rows[0][3], "TOPIC_AUTHORIZATION_FAILED")
        self.b.wait_log('msg="delivery dead" target=perm')

    def test_secrets_never_show(self):
        self.post({"target": "secure", "site": "s", "n": 1})
        self.wait_rows("secure", lambda r: len(r) == 1 and r[0][2] >= 1)
        listing = run_cli("outbox", "-c", self.b.config_path, "list", "--all").stdout
        delivery = self.rows("secure")[0][0]
        view = self.b.request("GET", "/api/delivery?id=" + delivery, admin=True,
                              headers={"X-Brume-Console": "1"}).body
        self.assertIn('"url":"kafka:closed"', view)
        self.assertIn('"method":"PRODUCE"', view)
        self.assertRegex(view, r'"order":"[0-9a-f]{32}"')  # the kafka key: the event's id
        for shown in (listing, view, self.b.log()):
            self.assertNotIn(PASSWORD, shown)

    def test_a_property_librdkafka_refuses_stops_the_start(self):
        b = Brume('sources = { mist = { path = "/mist", secret = "s" } }\n'
                  'targets = { bad = { kind = "kafka", brokers = "127.0.0.1:1", topic = "t", '
                  'properties = { ["no.such.property"] = "1" } } }')
        try:
            b.start(expect_ready=False)
            self.assertNotEqual(b.wait_exit(30), 0)
            self.assertIn("target bad: no.such.property: ", b.log())
        finally:
            b.cleanup()

    def test_bad_options_are_config_errors(self):
        cases = [
            ('{ kind = "kafka", topic = "t" }', "needs brokers"),
            ('{ kind = "kafka", brokers = "h:9092", topic = "a b" }', "is not a Kafka topic"),
            ('{ kind = "kafka", brokers = "h:9092", topic = "t", properties = '
             '{ ["enable.idempotence"] = "false" } }', "enable.idempotence is always true"),
            ('{ kind = "kafka", brokers = "h:9092", topic = "t", sasl = { mechanism = "X" } }',
             "mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
            # What only librdkafka knows: brume check asks it too.
            ('{ kind = "kafka", brokers = "h:9092", topic = "t", properties = '
             '{ ["no.such.property"] = "1" } }', "target t: no.such.property: "),
        ]
        path = self.b.path("bad.lua")
        for target, want in cases:
            with open(path, "w") as f:
                f.write('rules = "rules"\ntargets = { t = %s }\n' % target)
            r = run_cli("check", "-c", path)
            self.assertNotEqual(r.returncode, 0, target)
            self.assertIn(want, r.stdout + r.stderr, target)


if __name__ == "__main__":
    unittest.main()
