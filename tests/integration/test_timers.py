"""Time in rules, through the real daemon: timers and digests fire once,
after a restart, a kill -9 and a reload too; late ones follow the rule's
`late`; a removed rule's timers go with one log line; a handler that fails
is reported like any rule."""
import json
import signal
import time
import unittest
import uuid

import harness
from harness import Brume

CONFIG = """
sources = { mist = { path = "/mist", secret = "%s" } }
targets = { out = { kind = "file", path = "var/out.jsonl" } }
""" % harness.SECRET

# An alarm arms KEY's timer for ev.delay seconds (or cancels it); on_timer
# writes what it got.
TIMER_RULE = """
return {
  topics = "alarms",
  %s
  on_event = function(ev, ctx)
    if ev.cancel then
      brume.send("out", { cancelled = brume.timer.cancel(ev.key) })
    else
      brume.timer.set(ev.key, ev.delay, { from = ev.id })
    end
  end,
  on_timer = function(key, data, ctx)
    brume.send("out", { %s key = key, from = data.from, late = ctx.late, due = ctx.due })
  end,
}"""


def alarm(**fields):
    fields.setdefault("id", uuid.uuid4().hex)
    return json.dumps({"topic": "alarms", "events": [fields]})


def messages(b):
    return [x["message"] for x in b.lines("out.jsonl")]


class Timers(unittest.TestCase):
    def brume(self, late="", extra="", workers=2):
        return Brume(CONFIG, rules={"t.lua": TIMER_RULE % (late, extra)}, workers=workers)

    def test_fires_once_with_its_data_and_cancel_stops_it(self):
        b = self.brume().start()
        try:
            self.assertEqual(b.post(alarm(key="k1", delay=1, id="a1")).status, 200)
            self.assertEqual(b.post(alarm(key="k2", delay=1)).status, 200)
            self.assertEqual(b.post(alarm(key="k2", cancel=True)).status, 200)
            self.assertEqual(b.post(alarm(key="k3", delay="1s", id="old")).status, 200)
            self.assertEqual(b.post(alarm(key="k3", delay=2, id="new")).status, 200)  # armed again
            got = b.wait_lines("out.jsonl", 3, timeout=20)
            time.sleep(1.5)
            got = messages(b)
            self.assertIn({"cancelled": True}, got)
            fired = {m["key"]: m for m in got if "key" in m}
            self.assertEqual(sorted(fired), ["k1", "k3"])
            self.assertEqual(fired["k1"]["from"], "a1")
            self.assertEqual(fired["k3"]["from"], "new")
            self.assertLess(fired["k1"]["late"], 1)
            self.assertEqual(len([m for m in got if m.get("key") == "k1"]), 1)
            m = b.metrics()
            self.assertEqual(m.get('brume_timers_total{rule="t",outcome="fired"}'), 2)
            self.assertEqual(m.get("brume_timers_pending"), 0)
        finally:
            b.cleanup()

    def test_survives_a_restart_and_a_kill_9_and_fires_once(self):
        b = self.brume().start()
        try:
            self.assertEqual(b.post(alarm(key="soft", delay=2)).status, 200)
            self.assertEqual(b.stop(), 0)
            b.start()
            self.assertEqual(b.post(alarm(key="hard", delay=2)).status, 200)
            b.send_signal(signal.SIGKILL)
            b.wait_exit(10)
            b.start()
            b.wait_lines("out.jsonl", 2, timeout=20)
            time.sleep(1)
            self.assertEqual(sorted(m["key"] for m in messages(b)), ["hard", "soft"])
            self.assertEqual(b.stop(), 0)
            b.start()  # fired and stored: not again
            time.sleep(1.5)
            self.assertEqual(len(messages(b)), 2)
        finally:
            b.cleanup()

    def test_late_timers_fire_at_start_unless_the_rule_says(self):
        for late, fires in (("", True), ('late = "fire",', True), ('late = "drop",', False),
                            ('late = "1s",', False), ('late = "1h",', True)):
            b = self.brume(late=late).start()
            try:
                self.assertEqual(b.post(alarm(key="k", delay=1)).status, 200)
                self.assertEqual(b.stop(), 0)
                time.sleep(3.5)  # it comes due while brume is stopped
                b.start()
                if fires:
                    got = b.wait_lines("out.jsonl", 1, timeout=10)
                    self.assertGreater(got[0]["message"]["late"], 1.5, late)
                else:
                    b.wait_log("timer dropped: later than the rule's `late` allows")
                    time.sleep(0.5)
                    self.assertEqual(messages(b), [], late)
                    self.assertEqual(
                        b.metrics().get('brume_timers_total{rule="t",outcome="dropped_late"}'), 1)
            finally:
                b.cleanup()

    def test_a_reload_that_edits_the_handler_uses_it(self):
        b = self.brume().start()
        try:
            self.assertEqual(b.post(alarm(key="k", delay=2)).status, 200)
            b.write_rule("t.lua", TIMER_RULE % ("", "edited = true,"))
            r = b.request("POST", "/reload", admin=True)
            self.assertEqual(r.status, 200, r.body)
            got = b.wait_lines("out.jsonl", 1, timeout=10)
            self.assertTrue(got[0]["message"].get("edited"))
        finally:
            b.cleanup()

    def test_a_reload_that_removes_the_rule_drops_its_timers(self):
        b = self.brume().start()
        try:
            for i in range(3):
                self.assertEqual(b.post(alarm(key="k%d" % i, delay=2)).status, 200)
            b.write_rule("t.lua", "return { topics = 'audits', on_event = function() end }")
            # The file is replaced by a rule of another name: t is gone.
            import os
            os.rename(b.path("rules", "t.lua"), b.path("rules", "other.lua"))
            r = b.request("POST", "/reload", admin=True)
            self.assertEqual(r.status, 200, r.body)
            b.wait_log(r'its timers and digests are dropped" rule=t count=3')
            time.sleep(3)
            self.assertEqual(messages(b), [])
            self.assertEqual(b.metrics().get("brume_timers_pending"), 0)
            self.assertEqual(b.stop(), 0)
            b.start()
            time.sleep(1)
            self.assertEqual(messages(b), [])  # not back after a restart either
        finally:
            b.cleanup()

    def test_a_rule_removed_while_stopped_has_its_timers_dropped_at_start(self):
        b = self.brume().start()
        try:
            for i in range(2):
                self.assertEqual(b.post(alarm(key="k%d" % i, delay=3600)).status, 200)
            self.assertEqual(b.stop(), 0)
            import os
            os.rename(b.path("rules", "t.lua"), b.path("rules", "other.lua"))
            b.write_rule("other.lua", "return { topics = 'audits', on_event = function() end }")
            b.start()
            b.wait_log(r'removed while brume was stopped had timers or digests: they are dropped" '
                       r'rule=t count=2')
            self.assertEqual(b.metrics().get("brume_timers_pending"), 0)
            self.assertEqual(b.stop(), 0)
            b.start()
            self.assertEqual(b.metrics().get("brume_timers_pending"), 0)  # stored as gone
            self.assertEqual(b.log().count("removed while brume was stopped"), 1)
        finally:
            b.cleanup()

    def test_a_handler_that_fails_is_reported_and_the_timer_is_gone(self):
        b = Brume(CONFIG, rules={"f.lua": """
return {
  topics = "alarms",
  on_event = function(ev) brume.timer.set(ev.key, 0.5) end,
  on_timer = function(key)
    if key == "loop" then while true do end end
    error("no " .. key)
  end,
}"""}).start()
        try:
            self.assertEqual(b.post(alarm(key="boom")).status, 200)
            self.assertEqual(b.post(alarm(key="loop")).status, 200)
            b.wait_log(r'rule=f file=.*f.lua:7.*event=boom topic=timer reason=error')
            b.wait_log(r'rule=f file=.*f.lua:6.*event=loop topic=timer reason=budget')
            time.sleep(1)
            m = b.metrics()
            self.assertEqual(m.get("brume_timers_pending"), 0)
            self.assertEqual(m.get('brume_rule_errors_total{rule="f",reason="error"}'), 1)
            self.assertEqual(m.get('brume_rule_errors_total{rule="f",reason="budget"}'), 1)
            self.assertEqual(b.post(alarm(key="after")).status, 200)  # the worker answers
        finally:
            b.cleanup()

    def test_limits_and_bad_arguments_are_clear_errors(self):
        b = Brume(CONFIG, rules={"l.lua": """
return {
  topics = "alarms",
  on_event = function(ev)
    local ok, err = pcall(brume.timer.set, ev.key, -1)
    brume.send("out", { negative = err })
    ok, err = pcall(brume.timer.set, ev.key, 1, string.rep("x", 20000))
    brume.send("out", { big = err })
    ok, err = pcall(brume.group.add, ev.key, "1m", nil, { max_items = -2 })
    brume.send("out", { opts = err })
    ok, err = pcall(brume.group.add, ev.key, "1m", nil, { colour = "red" })
    brume.send("out", { unknown = err })
    ok, err = pcall(brume.timer.set, ev.key, 1e300)
    brume.send("out", { far = err })
    ok, err = pcall(brume.group.add, ev.key, 1/0)
    brume.send("out", { endless = err })
  end,
}"""}).start()
        try:
            self.assertEqual(b.post(alarm(key="x")).status, 200)
            got = {k: v for m in (x["message"] for x in b.wait_lines("out.jsonl", 6))
                   for k, v in m.items()}
            self.assertIn("a duration must be positive", got["negative"])
            self.assertIn("more than 16384", got["big"])
            self.assertIn("max_items: 0 to 10000", got["opts"])
            self.assertIn("unknown option 'colour'", got["unknown"])
            self.assertIn("a duration is at most 10 years", got["far"])
            self.assertIn("a duration is at most 10 years", got["endless"])
            self.assertEqual(b.metrics().get("brume_timers_pending", 0), 0)
        finally:
            b.cleanup()


DIGEST_RULE = """
return {
  topics = "client-join",
  on_event = function(ev, ctx)
    brume.group.add(ev.site_id, "1s", { mac = ev.mac }, { max_items = 3 })
  end,
  on_group = function(site, items, ctx)
    local macs = {}
    for i, it in ipairs(items) do macs[i] = it.mac end
    brume.send("out", { site = site, macs = macs, count = ctx.count, opened = ctx.opened_at })
  end,
}"""


class Digests(unittest.TestCase):
    def test_one_message_per_window_per_key_with_the_first_items(self):
        b = Brume(CONFIG, rules={"d.lua": DIGEST_RULE}).start()
        try:
            def join(site, mac):
                return json.dumps({"topic": "client-join",
                                   "events": [{"site_id": site, "mac": mac}]})
            for i in range(5):
                self.assertEqual(b.post(join("s1", "m%d" % i)).status, 200)
            self.assertEqual(b.post(join("s2", "x")).status, 200)
            got = b.wait_lines("out.jsonl", 2, timeout=10)
            time.sleep(1.5)
            by_site = {x["message"]["site"]: x["message"] for x in b.lines("out.jsonl")}
            self.assertEqual(len(b.lines("out.jsonl")), 2)
            self.assertEqual(by_site["s1"]["macs"], ["m0", "m1", "m2"])
            self.assertEqual(by_site["s1"]["count"], 5)
            self.assertEqual(by_site["s2"]["macs"], ["x"])
            # The next join opens a new window.
            self.assertEqual(b.post(join("s1", "later")).status, 200)
            b.wait_lines("out.jsonl", 3, timeout=10)
            self.assertEqual(b.lines("out.jsonl")[-1]["message"]["macs"], ["later"])
        finally:
            b.cleanup()

    def test_a_digest_survives_a_restart_with_its_items(self):
        b = Brume(CONFIG.replace('"var/out.jsonl"', '"var/out.jsonl"'),
                  rules={"d.lua": DIGEST_RULE.replace('"1s"', '"3s"')}).start()
        try:
            for i in range(2):
                self.assertEqual(b.post(json.dumps({"topic": "client-join", "events": [
                    {"site_id": "s", "mac": "m%d" % i}]})).status, 200)
            self.assertEqual(b.stop(), 0)
            b.start()
            self.assertEqual(b.post(json.dumps({"topic": "client-join", "events": [
                {"site_id": "s", "mac": "m2"}]})).status, 200)
            got = b.wait_lines("out.jsonl", 1, timeout=15)
            self.assertEqual(got[0]["message"]["macs"], ["m0", "m1", "m2"])
        finally:
            b.cleanup()


if __name__ == "__main__":
    unittest.main()
