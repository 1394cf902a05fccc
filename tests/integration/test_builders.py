"""The rule builders in the real daemon: brume.holddown's wait is a durable
timer and its raised mark rule state, named by ctx.rule, so a restart in
the middle loses nothing and two rules built alike keep apart; a
brume.digest's items come out in one message, after a kill -9 too;
brume.absence fires on a silence that spans a restart and resolves when
the key is heard again; brume.flap triggers once and resolves once quiet."""
import signal
import json
import time
import unittest
import uuid

import harness
from harness import Brume

CONFIG = """
sources = { mist = { path = "/mist", secret = "%s" } }
targets = { out = { kind = "file", path = "var/out.jsonl" } }
""" % harness.SECRET

HOLD = """
return require "brume.holddown" {
  topics = "device-events",
  key = function(ev) return ev.ap end,
  down = function(ev) return ev.type == "AP_DISCONNECTED" end,
  up = function(ev) return ev.type == "AP_CONNECTED" end,
  after = "%s",
  send = function(ev, action, ctx)
    brume.send("out", { rule = ctx.rule, action = action, key = ctx.key, since = ctx.since })
  end,
}"""

DIGEST = """
return require "brume.digest" {
  topics = "client-join", window = "1s", target = "out", title = "joins at %s",
  key = function(ev) return ev.site end, line = function(mac) return mac end,
  item = function(ev) return ev.mac end,
}"""


ABSENCE = """
return require "brume.absence" {
  topics = "device-events",
  key = function(ev) return ev.site end,
  within = "2s",
  send = function(ev, action, ctx)
    brume.send("out", { action = action, key = ctx.key, last = ev.id })
  end,
}"""

FLAP = """
return require "brume.flap" {
  topics = "device-events",
  key = function(ev) return ev.ap end,
  count = 3, within = "10s", quiet = "2s",
  send = function(ev, action, ctx)
    brume.send("out", { action = action, key = ctx.key })
  end,
}"""


def body(topic, **fields):
    fields.setdefault("id", uuid.uuid4().hex)
    return json.dumps({"topic": topic, "events": [fields]})


class Builders(unittest.TestCase):
    def test_holddown_across_a_restart(self):
        b = Brume(CONFIG, rules={"slow.lua": HOLD % "2s", "fast.lua": HOLD % "1s"}).start()
        try:
            self.assertEqual(b.post(body("device-events", type="AP_DISCONNECTED",
                                         ap="ap1")).status, 200)
            self.assertEqual(b.stop(), 0)  # before either wait is over
            b.start()
            got = b.wait_lines("out.jsonl", 2, timeout=20)
            self.assertEqual(sorted((m["message"]["rule"], m["message"]["action"]) for m in got),
                             [("fast", "trigger"), ("slow", "trigger")])
            self.assertEqual({m["message"]["key"] for m in got}, {"ap1"})
            self.assertEqual(b.post(body("device-events", type="AP_CONNECTED",
                                         ap="ap1")).status, 200)
            got = b.wait_lines("out.jsonl", 4, timeout=20)[2:]
            self.assertEqual(sorted((m["message"]["rule"], m["message"]["action"]) for m in got),
                             [("fast", "resolve"), ("slow", "resolve")])
            # A blip shorter than the wait sends nothing at all.
            b.post(body("device-events", type="AP_DISCONNECTED", ap="ap2"))
            b.post(body("device-events", type="AP_CONNECTED", ap="ap2"))
            time.sleep(3)
            self.assertEqual(len(b.lines("out.jsonl")), 4)
        finally:
            b.cleanup()

    def test_digest_sends_one_message(self):
        b = Brume(CONFIG, rules={"joins.lua": DIGEST}).start()
        try:
            for mac in ("m1", "m2", "m3"):
                self.assertEqual(b.post(body("client-join", site="HQ", mac=mac)).status, 200)
            got = b.wait_lines("out.jsonl", 1, timeout=20)
            time.sleep(1.5)
            got = b.lines("out.jsonl")
            self.assertEqual(len(got), 1)
            self.assertEqual(got[0]["message"]["title"], "joins at HQ")
            self.assertEqual(got[0]["message"]["text"], "- m1\n- m2\n- m3")
        finally:
            b.cleanup()


if __name__ == "__main__":
    unittest.main()


class MoreBuilders(unittest.TestCase):
    def test_digest_survives_a_kill_9_and_sends_once(self):
        b = Brume(CONFIG, rules={"joins.lua": DIGEST.replace('"1s"', '"3s"')}).start()
        try:
            for mac in ("m1", "m2"):
                self.assertEqual(b.post(body("client-join", site="HQ", mac=mac)).status, 200)
            b.stop(sig=signal.SIGKILL)
            b.start()
            self.assertEqual(b.post(body("client-join", site="HQ", mac="m3")).status, 200)
            b.wait_lines("out.jsonl", 1, timeout=20)
            time.sleep(4)  # a second window would have closed by now
            got = b.lines("out.jsonl")
            self.assertEqual(len(got), 1)
            self.assertEqual(got[0]["message"]["text"], "- m1\n- m2\n- m3")
        finally:
            b.cleanup()

    def test_absence_fires_across_a_restart_and_resolves(self):
        b = Brume(CONFIG, rules={"quiet.lua": ABSENCE}).start()
        try:
            self.assertEqual(b.post(body("device-events", site="HQ", id="last")).status, 200)
            self.assertEqual(b.post(body("device-events", site="B1")).status, 200)
            self.assertEqual(b.post(body("device-events", site="B1")).status, 200)
            self.assertEqual(b.stop(), 0)  # silent through the stop
            b.start()
            got = [m["message"] for m in b.wait_lines("out.jsonl", 2, timeout=20)]
            self.assertEqual(sorted((m["action"], m["key"]) for m in got),
                             [("trigger", "B1"), ("trigger", "HQ")])
            self.assertEqual([m["last"] for m in got if m["key"] == "HQ"], ["last"])
            time.sleep(3)
            self.assertEqual(len(b.lines("out.jsonl")), 2)  # once per silence
            self.assertEqual(b.post(body("device-events", site="HQ")).status, 200)
            got = [m["message"] for m in b.wait_lines("out.jsonl", 3, timeout=20)]
            self.assertEqual((got[2]["action"], got[2]["key"]), ("resolve", "HQ"))
        finally:
            b.cleanup()

    def test_flap_triggers_once_and_resolves_once_quiet(self):
        b = Brume(CONFIG, rules={"flap.lua": FLAP}).start()
        try:
            for kind in ("AP_DISCONNECTED", "AP_CONNECTED", "AP_DISCONNECTED", "AP_CONNECTED"):
                self.assertEqual(b.post(body("device-events", type=kind, ap="ap1")).status, 200)
            self.assertEqual(b.post(body("device-events", type="AP_CONNECTED", ap="ap2")).status,
                             200)  # one change of another AP: not flapping
            got = [m["message"] for m in b.wait_lines("out.jsonl", 2, timeout=20)]
            self.assertEqual([(m["action"], m["key"]) for m in got],
                             [("trigger", "ap1"), ("resolve", "ap1")])
            time.sleep(3)
            self.assertEqual(len(b.lines("out.jsonl")), 2)
        finally:
            b.cleanup()
