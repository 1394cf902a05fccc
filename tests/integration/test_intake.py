"""Every Mist fixture, signed, is accepted and each of its events reaches the
rules of its topic; the shipped rogue-AP rule writes its alerts."""
import json
import os
import shutil
import time
import unittest

import harness
from harness import Brume, SRC, fixtures, read


def topic_of(name):
    return name.replace("_", "-")


class Intake(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.b = Brume(
            """
sources = { mist = { path = "/mist", secret = "%s" } }
targets = {
  all = { kind = "file", path = "var/all.jsonl" },
  devices = { kind = "file", path = "var/devices.jsonl" },
  secops = { kind = "file", path = "var/alerts.jsonl" },
}
""" % harness.SECRET,
            rules={
                "00-all.lua": """
return { topics = "*", on_event = function(ev, ctx)
  brume.send("all", { topic = ctx.topic, id = ev.id or ev.audit_id, index = ctx.index })
end }""",
                "10-devices.lua": """
return { topics = { "device-events" }, on_event = function(ev, ctx)
  brume.send("devices", { type = ev.type })
end }""",
            })
        shutil.copy(os.path.join(SRC, "rules", "rogue_ap.lua"), cls.b.path("rules"))
        cls.b.start()
        cls.sent = {}
        for path in fixtures():
            body = read(path)
            r = cls.b.post(body)
            cls.sent[os.path.basename(path)] = (r, json.loads(body))
        # The outbox writes the targets' lines from its own thread.
        cls.b.wait_lines("all.jsonl", sum(len(b["events"]) for _, b in cls.sent.values()))
        cls.b.wait_lines("alerts.jsonl", 2)

    @classmethod
    def tearDownClass(cls):
        cls.b.cleanup()

    def test_every_fixture_is_accepted(self):
        self.assertEqual(len(self.sent), 62)
        for name, (r, _) in self.sent.items():
            self.assertEqual((name, r.status, r.body), (name, 200, "ok\n"))

    def test_every_event_reaches_the_rules_of_its_topic(self):
        want = {}
        for _, body in self.sent.values():
            t = topic_of(body["topic"])
            want[t] = want.get(t, 0) + len(body["events"])
        got = {}
        for line in self.b.lines("all.jsonl"):
            got[line["message"]["topic"]] = got.get(line["message"]["topic"], 0) + 1
            self.assertEqual(line["rule"], "00-all")
            self.assertEqual(line["target"], "all")
        self.assertEqual(got, want)
        # device_events and device-events both reach the device-events rule.
        devices = sum(len(b["events"]) for _, b in self.sent.values()
                      if topic_of(b["topic"]) == "device-events")
        self.assertEqual(len(self.b.lines("devices.jsonl")), devices)
        self.assertGreaterEqual(devices, 18)

    def test_each_message_is_written_once(self):
        # Wait past the first retry a failed write would have had.
        time.sleep(2.5)
        lines = self.b.lines("all.jsonl")
        self.assertEqual(len(lines), sum(len(b["events"]) for _, b in self.sent.values()))
        self.assertNotIn("delivery failed", self.b.log())
        self.assertEqual(self.b.metrics().get('brume_deliveries_total{target="all",outcome="retry"}'),
                         0)

    def test_shipped_rogue_ap_rule(self):
        alerts = self.b.lines("alerts.jsonl")
        self.assertEqual(len(alerts), 2)
        self.assertEqual({a["rule"] for a in alerts}, {"rogue_ap"})
        self.assertEqual({a["event"] for a in alerts},
                         {"59be9221-1e26-4466-baa3-6afbce1b7bcb",
                          "95193bda-1fef-4ea6-xxxx-xxxxxxxxxxxx"})
        for a in alerts:
            self.assertEqual(a["message"]["title"], "Rogue AP detected")
            self.assertEqual(a["message"]["severity"], "warning")
            self.assertIn("at", a)

    def test_unknown_topics_are_counted_and_logged_once(self):
        m = self.b.metrics()
        # The two "string" topics (not among the topics brume knows).
        self.assertEqual(m["brume_unknown_topic_bodies_total"], 2)
        self.assertEqual(m['brume_events_total{topic="other"}'], 2)
        self.assertEqual(m['brume_events_total{topic="vbeacon"}'], 2)
        self.assertEqual(m['brume_events_total{topic="alarms"}'], 10)
        log = self.b.log()
        self.assertEqual(log.count("accepted a topic Mist does not document"), 1)  # once a topic
        self.assertEqual(m['brume_http_requests_total{route="mist",status="200"}'], 62)

    def test_compact_ping_test_vector(self):
        body = json.dumps(json.loads(read(os.path.join(harness.FIXTURES,
                          "ping--webhook-event-delivery-test-delivery-log.json"))),
                          separators=(",", ":")).encode()
        r = self.b.request("POST", "/mist", body, {
            "X-Mist-Signature-v2":
                "729193ef29300de1b3064b996a763a91d56bfbd05af0ca54a80e9401feaa266d"})
        self.assertEqual(r.status, 401)  # this daemon's secret is not "secret"
        with Brume('sources = { mist = { path = "/mist", secret = "secret" } }') as b:
            r = b.request("POST", "/mist", body, {
                "X-Mist-Signature-v2":
                    "729193ef29300de1b3064b996a763a91d56bfbd05af0ca54a80e9401feaa266d"})
            self.assertEqual(r.status, 200)

    def test_healthz(self):
        r = self.b.request("GET", "/healthz", admin=True)
        self.assertEqual(r.status, 200)
        h = json.loads(r.body)
        self.assertEqual(h["status"], "ok")
        self.assertEqual(h["workers"], 2)
        self.assertEqual(h["rules"], 3)


if __name__ == "__main__":
    unittest.main()
