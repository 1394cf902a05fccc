"""Rules that error, loop forever, eat memory or hoard it cannot hurt the
daemon: every post still gets its 200, the other rules still run on every
event, and each failure is logged (rule, file:line, event id) and counted."""
import json
import re
import signal
import threading
import time
import unittest

import harness
from harness import Brume

def batch(tag="ev"):
    return json.dumps({"topic": "alarms", "events": [
        {"id": "%s-%d" % (tag, i), "type": "switch_down", "site_id": "s1"} for i in range(3)]})


BATCH = batch()


class MisbehavingRules(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.b = Brume("""
sources = { mist = { path = "/mist", secret = "%s" } }
targets = { out = { kind = "file", path = "var/out.jsonl" } }
limits = { instructions = 200000, memory = "8MB" }
""" % harness.SECRET, rules={
            "10-errors.lua": """
return { topics = "alarms", on_event = function(ev)
  local name = ev.site.name
end }""",
            "20-loops.lua": """
return { topics = "alarms", on_event = function(ev)
  while true do end
end }""",
            "30-eats.lua": """
return { topics = "alarms", on_event = function(ev)
  local t, s = {}, ("x"):rep(4096)
  for i = 1, 1e9 do t[i] = s .. i end
end }""",
            "40-catches.lua": """
return { topics = "alarms", on_event = function(ev)
  while true do pcall(function() while true do end end) end
end }""",
            "50-good.lua": """
return { topics = "alarms", on_event = function(ev, ctx)
  brume.send("out", { id = ev.id, index = ctx.index })
end }""",
        }, workers=2).start()

    @classmethod
    def tearDownClass(cls):
        cls.b.cleanup()

    def test_the_daemon_serves_and_the_good_rule_runs(self):
        m0 = self.b.metrics()
        for _ in range(10):
            r = self.b.post(batch("serves"))
            self.assertEqual(r.status, 200)
        deadline = time.time() + 20
        while time.time() < deadline:
            out = [o for o in self.b.lines("out.jsonl") if o["message"]["id"].startswith("serves-")]
            if len(out) >= 30:
                break
            time.sleep(0.05)
        self.assertEqual(len(out), 30)
        self.assertEqual(sorted({o["message"]["id"] for o in out}),
                         ["serves-0", "serves-1", "serves-2"])
        m = self.b.metrics()
        for key in ('brume_rule_runs_total{rule="50-good"}',
                    'brume_rule_errors_total{rule="10-errors",reason="error"}',
                    'brume_rule_errors_total{rule="20-loops",reason="budget"}',
                    'brume_rule_errors_total{rule="30-eats",reason="memory"}',
                    'brume_rule_errors_total{rule="40-catches",reason="budget"}'):
            self.assertEqual(m[key] - m0.get(key, 0), 30, key)
        self.assertEqual(self.b.request("GET", "/healthz", admin=True).status, 200)

    def test_failures_are_logged_with_rule_position_and_event(self):
        self.b.post(BATCH)
        log = self.b.log()
        self.assertRegex(log, r'msg="rule failed" rule=10-errors file=rules/10-errors.lua:3 '
                              r'request=\d+ event=ev-\d topic=alarms reason=error error="rules/10-errors.lua:3: '
                              r"attempt to index a nil value \(field 'site'\)\"")
        self.assertRegex(log, r'rule=20-loops file=rules/20-loops.lua:3 request=\d+ event=ev-\d .*'
                              r'reason=budget error="rules/20-loops.lua:3: instruction budget '
                              r'exceeded \(200000 instructions\)"')
        # A memory error runs no message handler: its line is where the cap was hit.
        self.assertRegex(log, r'rule=30-eats file=rules/30-eats.lua:4 request=\d+ event=ev-\d .*'
                              r'reason=memory error="rules/30-eats.lua:4: memory limit of 8192 KB reached"')

    def test_failure_logs_are_rate_limited(self):
        for _ in range(5):
            self.b.post(BATCH)
        log = self.b.log()
        # Ten lines per rule per ten seconds; the metrics count the rest.
        self.assertLessEqual(len(re.findall(r"rule=10-errors file=", log)), 10 * 2)


class EscapingRules(unittest.TestCase):
    """Rules that once took a worker for good or flooded the log: C work
    steered by metamethods or formats, logs of megabytes, forged records.
    One worker, so that it is the one that must keep answering."""

    @classmethod
    def setUpClass(cls):
        cls.b = Brume("""
sources = { mist = { path = "/mist", secret = "%s" } }
targets = { out = { kind = "file", path = "var/out.jsonl" } }
""" % harness.SECRET, rules={
            "10-insert.lua": """
return { topics = "alarms", on_event = function(ev)
  local t = setmetatable({}, { __len = function() return math.maxinteger - 1 end })
  table.insert(t, 1, "x")
end }""",
            "15-insert-c.lua": """
return { topics = "alarms", on_event = function(ev)
  local t = setmetatable({}, { __len = function() return math.maxinteger - 1 end,
                               __index = rawlen, __newindex = rawequal })
  table.insert(t, 1, "x")
end }""",
            "20-packsize.lua": """
return { topics = "alarms", on_event = function(ev)
  for i = 1, 4000 do string.packsize(("i16"):rep(2e6)) end
end }""",
            "25-packsize-fits.lua": """
return { topics = "alarms", on_event = function(ev)
  local f = ("i16"):rep(1365)
  while true do string.packsize(f) end
end }""",
            "30-flood.lua": """
local big = ("x"):rep(8 << 20)
return { topics = "alarms", on_event = function(ev)
  for i = 1, 1e5 do brume.log.info(big, { field = big }) end
end }""",
            "35-print.lua": """
local big = ("y"):rep(20 << 20)
return { topics = "alarms", on_event = function(ev)
  for i = 1, 1e5 do print(big, big) end
end }""",
            "40-forge.lua": """
return { topics = "alarms", on_event = function(ev)
  brume.log.info("hi", { ["x\\nts=2020-01-01T00:00:00Z level=error msg=forged"] = "v",
                         level = "error" })
end }""",
            "90-good.lua": """
return { topics = "alarms", on_event = function(ev, ctx)
  brume.send("out", { id = ev.id })
end }""",
        }, workers=1).start()
        cls.started = time.time()

    @classmethod
    def tearDownClass(cls):
        cls.b.cleanup()

    def test_the_worker_keeps_answering_and_the_log_stays_small(self):
        m0 = self.b.metrics()
        t0 = time.time()
        for _ in range(3):
            self.assertEqual(self.b.post(batch("esc")).status, 200)
        self.b.wait_lines("out.jsonl", 9, timeout=60)
        self.assertEqual(self.b.request("GET", "/healthz", admin=True).status, 200)
        # Nine events through seven bad rules, each stopped within its second.
        self.assertLess(time.time() - t0, 9 * 7 * 1.5)
        m = self.b.metrics()
        for rule in ("10-insert", "15-insert-c", "25-packsize-fits"):
            key = 'brume_rule_errors_total{rule="%s",reason="budget"}' % rule
            self.assertEqual(m[key] - m0.get(key, 0), 9, key)
        key = 'brume_rule_errors_total{rule="20-packsize",reason="error"}'
        self.assertEqual(m[key] - m0.get(key, 0), 9, key)
        log = self.b.log()
        self.assertIn("format longer than 4096 bytes", log)
        # A record holds at most 4 KB of a rule's text, cut with a marker;
        # the rate limit drops the rest, and counts it.
        flood = [l for l in log.splitlines() if "rule=30-flood" in l and "msg=xxx" in l]
        self.assertTrue(flood)
        self.assertTrue(all(len(l) < 4096 + 300 and "xxx..." in l and "truncated=" in l
                            for l in flood))
        printed = [l for l in log.splitlines() if "rule=35-print" in l and "msg=yyy" in l]
        self.assertTrue(printed)
        self.assertTrue(all(len(l) < 4096 + 300 and "truncated=" in l for l in printed))
        # 20 such records a second at most (after a burst of 40), each rule.
        elapsed = time.time() - self.started
        for lines in (flood, printed):
            self.assertLessEqual(len(lines), 40 + 20 * (elapsed + 1))
        for rule in ("30-flood", "35-print"):
            self.assertGreater(m.get('brume_log_dropped_total{rule="%s"}' % rule, 0), 0, rule)
        # A key is escaped as a value is: no record of the rule's making.
        self.assertNotIn("\nts=2020", log)
        self.assertIn('rule=40-forge', log)
        self.assertRegex(log, r'msg=hi rule=40-forge request=\d+ event=esc-\d '
                              r'.*"x\\nts=2020-01-01T00:00:00Z level=error msg=forged"=v')
        self.assertRegex(log, r'rule=40-forge .*field.level=error')

    def test_dropped_lines_are_told_once_a_window(self):
        self.b.post(batch("window"))
        self.b.wait_lines("out.jsonl", 3, timeout=60)
        time.sleep(10.5)  # the window (10 s) ends; the next record tells it
        self.b.post(batch("window2"))
        self.b.wait_log(r'level=warn msg="rule log lines dropped" rule=30-flood dropped=\d+ '
                        r'window=10s', 30)


class PromptStop(unittest.TestCase):
    """A rule whose only bound is limits.time does not hold a stop for the
    drain timeout: its call ends at its time limit, then brume stops."""

    def test_stop_waits_for_the_call_not_the_drain_timeout(self):
        with Brume("""
sources = { mist = { path = "/mist", secret = "%s" } }
limits = { instructions = 1000000000000, time = "1s" }
http = { drain_timeout = "60s" }
""" % harness.SECRET, rules={
            "spin.lua": """
return { topics = "alarms", on_event = function(ev)
  local t = setmetatable({}, { __len = function() return math.maxinteger - 1 end,
                               __index = rawlen, __newindex = rawequal })
  table.insert(t, 1, "x")
end }""",
        }, workers=1) as b:
            answers = []
            body = json.dumps({"topic": "alarms", "events": [{"id": "spin%d" % i} for i in range(3)]})
            poster = threading.Thread(target=lambda: answers.append(b.post(body).status))
            poster.start()
            b.wait_log(r"rule=spin .*time limit exceeded \(1\.0 s\)", 30)
            t0 = time.time()
            b.send_signal(signal.SIGTERM)
            self.assertEqual(b.wait_exit(30), 0)
            self.assertLess(time.time() - t0, 10)
            poster.join(30)
            self.assertEqual(answers, [200])


class HoardingRule(unittest.TestCase):
    """A rule that keeps what it allocates fills its VM; brume gives the
    worker a fresh one and goes on."""

    def test_vm_is_rebuilt(self):
        with Brume("""
sources = { mist = { path = "/mist", secret = "%s" } }
targets = { out = { kind = "file", path = "var/out.jsonl" } }
limits = { memory = "8MB" }
""" % harness.SECRET, rules={
            "hoard.lua": """
local kept = {}
return { topics = "alarms", on_event = function(ev)
  for i = 1, 500 do kept[#kept + 1] = ("x"):rep(1024) .. #kept end
end }""",
            "good.lua": """
return { topics = "alarms", on_event = function(ev) brume.send("out", { id = ev.id }) end }""",
        }, workers=1) as b:
            for i in range(40):
                self.assertEqual(b.post(BATCH).status, 200)
                if "rebuilding this worker's VM" in b.log():
                    break
            b.wait_log("rebuilding this worker's VM", 10)
            time.sleep(0.2)
            for _ in range(3):
                self.assertEqual(b.post(BATCH).status, 200)
            b.wait_lines("out.jsonl", 9)


if __name__ == "__main__":
    unittest.main()
