"""The command line: exit codes (0, 1 user error, 2 usage), help, check,
sign, test and run's start-up failures; `brume outbox list` and `brume
replay` as people read them (columns, statuses, times, topics)."""
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import unittest

import harness
from harness import Brume, SRC, run_cli

EXAMPLE = os.path.join(SRC, "examples", "brume.lua")
PING = os.path.join(harness.FIXTURES, "ping--webhook-event-delivery-test-delivery-log.json")
ENV = {"MIST_WEBHOOK_SECRET": "cli-secret"}


class Cli(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="brume-cli-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_usage_and_help(self):
        r = run_cli()
        self.assertEqual(r.returncode, 2)
        self.assertIn("usage: brume <command>", r.stderr)
        self.assertEqual(run_cli("--help").returncode, 0)
        self.assertEqual(run_cli("nonsense").returncode, 2)
        for cmd in ("run", "check", "test", "sign", "version"):
            r = run_cli(cmd, "--help")
            self.assertEqual((cmd, r.returncode), (cmd, 0))
            self.assertIn("usage: brume " + cmd, r.stdout)
        self.assertEqual(run_cli("run", "--bogus").returncode, 2)
        self.assertEqual(run_cli("check", "extra-argument").returncode, 2)
        self.assertEqual(run_cli("test").returncode, 2)
        self.assertEqual(run_cli("sign").returncode, 2)
        self.assertEqual(run_cli("run", "-c").returncode, 2)
        self.assertEqual(run_cli("version", "extra").returncode, 2)
        r = run_cli("version")
        self.assertEqual(r.returncode, 0)
        self.assertRegex(r.stdout, r"^brume \d+\.\d+\.\d+ \(Lua 5\.4")

    def test_check(self):
        r = run_cli("check", "-c", EXAMPLE, env=ENV)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("ok: ", r.stdout)
        self.assertIn("1 source, 1 target, 1 rule", r.stdout)
        env = dict(os.environ)
        env.pop("MIST_WEBHOOK_SECRET", None)
        r = run_cli("check", "-c", EXAMPLE, env={"MIST_WEBHOOK_SECRET": ""})
        self.assertEqual(r.returncode, 1)
        self.assertIn("sources.mist.secret: a secret cannot be empty", r.stderr)
        r = harness.subprocess.run([harness.BRUME, "check", "-c", EXAMPLE], capture_output=True,
                                   text=True, env=env)
        self.assertEqual(r.returncode, 1)
        self.assertIn("examples/brume.lua:24: environment variable MIST_WEBHOOK_SECRET is not set",
                      r.stderr)
        # Every problem, config and rules alike.
        self.write("rules/a.lua", "return {\n  topics = 'alarms',\n  on_event = function( end\n}")
        self.write("rules/b.lua", "return { topic = 'alarms', on_event = print }")
        cfg = self.write("brume.lua", "sources = { mist = { path = '/m', secret = 's' } }\n")
        r = run_cli("check", "-c", cfg)
        self.assertEqual(r.returncode, 1)
        self.assertIn("rules/a.lua:3:", r.stderr)
        self.assertIn("rules/b.lua:1: unknown key 'topic' in the rule (did you mean 'topics'?)",
                      r.stderr)
        self.assertIn("rules/b.lua: topics: expected", r.stderr)
        # Config problems do not hide the rules', nor one another.
        cfg = self.write("brume.lua", """sources = { mist = { path = '/m' } }
targets = {
  a = { kind = "no-such-kind" },
  f = { kind = "file" },
  s = { kind = "slack", url = "https://hooks.slack.com/x", nonsense = 1 },
}
""")
        r = run_cli("check", "-c", cfg)
        self.assertEqual(r.returncode, 1)
        for want in ("sources.mist: no secret", "targets.a.kind: unknown kind 'no-such-kind'",
                     "targets.f.path: required for kind file",
                     "targets.s.nonsense: unknown setting for kind slack",
                     "rules/a.lua:3:", "rules/b.lua:1: unknown key 'topic'"):
            self.assertIn(want, r.stderr)
        r = run_cli("check", "-c", os.path.join(self.tmp, "missing.lua"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot read the config", r.stderr)
        # A check opens no file target (it may run where brume will not),
        # but asks librdkafka about a kafka target's properties.
        os.makedirs(os.path.join(self.tmp, "empty"))
        head = "rules = 'empty'\nsources = { mist = { path = '/m', secret = 's' } }\n"
        cfg = self.write("brume.lua", head +
                                      "targets = { f = { kind = 'file', path = 'out/f.jsonl' } }\n")
        r = run_cli("check", "-c", cfg)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "out")))
        cfg = self.write("brume.lua", head +
                                      "targets = { k = { kind = 'kafka', brokers = 'h:9092', "
                                      "topic = 't', properties = { ['linger.ms'] = 'soon' } } }\n")
        r = run_cli("check", "-c", cfg)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("target k: linger.ms: ", r.stderr)

    def test_check_of_many_mistakes_shows_the_first_and_counts_the_rest(self):
        """A loop in the config can make a mistake per name: brume check
        prints the first ones and how many more, in bounded memory and time
        (120,000 kept errors are 92 MB; finding each one's line scanned every
        name), and a NUL byte in a name or a value is one of them."""
        cfg = self.write("brume.lua", "sources = { mist = { path = '/m', secret = 's' } }\n"
                                      "for i = 1, 120000 do _ENV['k' .. i] = i end\n"
                                      "targets = { ['a\\0b'] = { kind = 'file', path = 'x' } }\n")
        # A Python of its own runs it, so that its peak RSS is brume's alone.
        measure = ("import resource, subprocess, sys\n"
                   "r = subprocess.run(sys.argv[1:])\n"
                   "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
                   "sys.exit(r.returncode)\n")
        r = harness.subprocess.run([sys.executable, "-c", measure, harness.BRUME, "check", "-c",
                                    cfg], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 1)
        lines = r.stderr.splitlines()
        self.assertTrue(lines[0].endswith("brume.lua:3: targets.a: a name holds a NUL byte"),
                        lines[0])
        self.assertEqual(lines[-1], "... and 119903 more errors")
        self.assertEqual(len(lines), 100)
        self.assertLess(int(r.stdout), 110 * 1024)  # KB

    def test_check_suggests_rule_keys_and_warns_of_sends_to_no_target(self):
        cfg = self.write("brume.lua", """sources = { mist = { path = '/m', secret = 's' } }
targets = { secops = { kind = "file", path = "out.jsonl" } }
""")
        self.write("rules/typo.lua", """return {
  topics = "alarms",
  onevent = function(ev) end,
}""")
        r = run_cli("check", "-c", cfg)
        self.assertEqual(r.returncode, 1)
        self.assertIn("rules/typo.lua:3: unknown key 'onevent' in the rule "
                      "(did you mean 'on_event'?)", r.stderr)
        # A send to a target the config lacks is a warning: check still passes.
        self.write("rules/typo.lua", """-- brume.send("in-a-comment", {})
return { topics = "alarms", on_event = function(ev)
  brume.send("secops", { title = "ok" })
  brume.send('secop', { title = "brume.send('in-a-string', {})" })
  brume.send(ev.target, {})
end }""")
        r = run_cli("check", "-c", cfg)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("ok: ", r.stdout)
        self.assertEqual(r.stderr.strip().splitlines(), [
            os.path.join(self.tmp, "rules", "typo.lua") +
            ":4: brume.send to 'secop': no such target (did you mean 'secops'?)"])

    def test_check_warns_of_timers_and_digests_with_no_handler(self):
        cfg = self.write("brume.lua", """sources = { mist = { path = '/m', secret = 's' } }
""")
        self.write("rules/t.lua", """return { topics = "alarms", on_event = function(ev)
  -- brume.timer.set("in-a-comment", 1)
  brume.timer.set(ev.id, 60)
  brume.group.add(ev.id, "5m", ev.type)
end }""")
        self.write("rules/ok.lua", """return { topics = "alarms",
  on_event = function(ev) brume.timer.set(ev.id, 60); brume.group.add(ev.id, "5m") end,
  on_timer = function() end, on_group = function() end }""")
        r = run_cli("check", "-c", cfg)
        self.assertEqual(r.returncode, 0, r.stderr)
        t = os.path.join(self.tmp, "rules", "t.lua")
        self.assertEqual(sorted(r.stderr.strip().splitlines()), [
            t + ":3: brume.timer.set in a rule without on_timer: its timers will be dropped "
            "when they come due",
            t + ":4: brume.group.add in a rule without on_group: its digests will be dropped "
            "when they close"])

    def test_check_targets(self):
        cfg = self.write("brume.lua", """sources = { mist = { path = '/m', secret = 's' } }
targets = {
  hook = { kind = "webhook", url = "https://h.example.com/x", secret = "whsec_***not base64***" },
  room = { kind = "webex", token = "T", room_id = "R", to_person_email = "a@b.c" },
}
""")
        os.makedirs(os.path.join(self.tmp, "rules"))
        r = run_cli("check", "-c", cfg)
        self.assertEqual(r.returncode, 1)
        self.assertIn("targets.hook.kind: secret: after whsec_ comes the base64", r.stderr)
        self.assertIn("targets.room.kind: webex needs one of room_id and to_person_email",
                      r.stderr)

    def test_example_configs_check(self):
        env = dict(ENV, SLACK_WEBHOOK_URL="https://hooks.slack.com/services/T0/B0/X",
                   TEAMS_WORKFLOW_URL="https://prod.westus.logic.azure.com/workflows/x",
                   PAGERDUTY_ROUTING_KEY="R0", SERVICENOW_PASSWORD="p")
        r = run_cli("check", "-c", os.path.join(SRC, "examples", "targets.lua"), env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("1 source, 5 targets, 1 rule", r.stdout)

    def test_sign(self):
        compact = harness.json.dumps(harness.json.loads(harness.read(PING)), separators=(",", ":"))
        path = self.write("ping.json", compact)
        r = run_cli("sign", "--secret", "secret", path)
        self.assertEqual((r.returncode, r.stdout),
                         (0, "729193ef29300de1b3064b996a763a91d56bfbd05af0ca54a80e9401feaa266d\n"))
        r = run_cli("sign", "--secret", "secret", stdin=compact)
        self.assertEqual(r.stdout.strip(),
                         "729193ef29300de1b3064b996a763a91d56bfbd05af0ca54a80e9401feaa266d")
        r = run_cli("sign", "--secret", "secret", "--sha1", path)
        self.assertEqual(r.stdout.strip(), harness.sign(compact, "secret", harness.hashlib.sha1))
        # The secret can come from the config's source.
        r = run_cli("sign", "-c", EXAMPLE, path, env=ENV)
        self.assertEqual(r.stdout.strip(), harness.sign(compact, "cli-secret"))
        cfg = self.write("two.lua", "sources = { a = { path = '/a', secret = 'sa' },"
                                    " b = { path = '/b', secret = 'sb' } }\n")
        r = run_cli("sign", "-c", cfg, path)
        self.assertEqual(r.returncode, 1)
        self.assertIn("name one with --source", r.stderr)
        r = run_cli("sign", "-c", cfg, "--source", "b", path)
        self.assertEqual(r.stdout.strip(), harness.sign(compact, "sb"))
        r = run_cli("sign", "--secret", "s", os.path.join(self.tmp, "nope.json"))
        self.assertEqual(r.returncode, 1)

    def test_test_command(self):
        rogue = os.path.join(harness.FIXTURES, "alarms--rogue-ap-const-alarm-defs.json")
        r = run_cli("test", "-c", EXAMPLE, rogue, PING, env=ENV)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = [harness.json.loads(line) for line in r.stdout.splitlines()]
        self.assertEqual(len(lines), 1)
        self.assertEqual(lines[0]["rule"], "rogue_ap")
        self.assertEqual(lines[0]["target"], "secops")
        self.assertEqual(lines[0]["message"]["title"], "Rogue AP detected")
        # Nothing was written: the example's target file is not touched.
        self.assertFalse(os.path.exists(os.path.join(SRC, "var", "alerts.jsonl.test-marker")))
        bad = self.write("bad.json", '{"topic": "alarms", "events": [')
        r = run_cli("test", "-c", EXAMPLE, bad, rogue, env=ENV)
        self.assertEqual(r.returncode, 1)
        self.assertIn("bad.json: not a Mist webhook body: invalid JSON", r.stderr)
        self.assertEqual(len(r.stdout.splitlines()), 1)  # the good payload still ran
        r = run_cli("test", "-c", EXAMPLE, "-", stdin=harness.read(rogue).decode(), env=ENV)
        self.assertEqual(len(r.stdout.splitlines()), 1)

    def test_test_names_the_payload_and_shows_json_bodies(self):
        self.write("rules/r.lua", """return { topics = "*", on_event = function(ev, ctx)
  brume.send("hook", { title = "t", fields = { n = 1 } })
  brume.http({ url = "https://h.example.com/raw", body = "not json" })
  if ctx.topic == "alarms" then error("boom") end
end }""")
        cfg = self.write("brume.lua", "sources = { m = { path = '/m', secret = 's' } }\n"
                                      "targets = { hook = { kind = 'webhook', "
                                      "url = 'https://h.example.com/x' } }\n")
        rogue = os.path.join(harness.FIXTURES, "alarms--rogue-ap-const-alarm-defs.json")
        r = run_cli("test", "-c", cfg, PING, rogue)
        self.assertEqual(r.returncode, 1)
        lines = [harness.json.loads(line) for line in r.stdout.splitlines()]
        self.assertEqual(len(lines), 4)
        hook, raw = lines[0]["request"], lines[1]["request"]
        self.assertEqual(hook["body"]["title"], "t")  # JSON, not a string holding JSON
        self.assertEqual(hook["body"]["fields"], {"n": 1})
        self.assertEqual(raw["body"], "not json")
        # The failing rule's record names the payload it ran on; the good one's nothing.
        failures = [x for x in r.stderr.splitlines() if "rule failed" in x]
        self.assertEqual(len(failures), 1)
        self.assertIn("payload=" + rogue, failures[0])
        self.assertIn("rules/r.lua:4: boom", failures[0])

    def test_test_needs_no_secret_it_does_not_use(self):
        self.write("rules/r.lua", """return { topics = "*", on_event = function(ev, ctx)
  brume.send("archive", { title = ctx.topic })
  if ctx.topic == "alarms" then brume.send("secops", { title = "rogue" }) end
end }""")
        cfg = self.write("brume.lua", """
sources = { mist = { path = "/m", secret = env("BRUME_CLI_UNSET_SECRET") } }
admin = { addr = "127.0.0.1:9090", token = env("BRUME_CLI_UNSET_TOKEN") }
targets = {
  archive = { kind = "file", path = "out.jsonl" },
  secops = { kind = "slack", url = env("BRUME_CLI_UNSET_SLACK") },
}
""")
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRUME_CLI_UNSET")}
        run = lambda *args: harness.subprocess.run([harness.BRUME] + list(args),
                                                   capture_output=True, text=True, env=env,
                                                   timeout=60)
        r = run("test", "-c", cfg, PING)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual([harness.json.loads(x)["target"] for x in r.stdout.splitlines()],
                         ["archive"])
        # Sending to the target that needs it fails loudly, naming the variable.
        rogue = os.path.join(harness.FIXTURES, "alarms--rogue-ap-const-alarm-defs.json")
        r = run("test", "-c", cfg, rogue)
        self.assertEqual(r.returncode, 1)
        self.assertIn("target secops needs BRUME_CLI_UNSET_SLACK, which is not set", r.stderr)
        self.assertIn("payload=" + rogue, r.stderr)
        # The daemon and check still want every variable.
        for cmd in ("check", "run"):
            r = run(cmd, "-c", cfg)
            self.assertEqual(r.returncode, 1)
            for name in ("SECRET", "TOKEN", "SLACK"):
                self.assertIn("environment variable BRUME_CLI_UNSET_%s is not set" % name,
                              r.stderr)
        # A setting that is no secret needs its variable, even for brume test.
        with open(cfg, "a") as f:
            f.write('rules = env("BRUME_CLI_UNSET_RULES")\n')
        r = run("test", "-c", cfg, PING)
        self.assertEqual(r.returncode, 1)
        self.assertIn("rules: environment variable BRUME_CLI_UNSET_RULES is not set", r.stderr)

    def test_test_writes_nothing(self):
        self.write("rules/r.lua", "return { topics = '*', on_event = function(ev)"
                                  " brume.send('f', { x = 1 }) end }")
        cfg = self.write("brume.lua", "sources = { m = { path = '/m', insecure = true } }\n"
                                      "targets = { f = { kind = 'file', path = 'out/f.jsonl' } }\n")
        r = run_cli("test", "-c", cfg, PING)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(r.stdout.splitlines()), 1)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "out")))

    def test_test_at_and_clock_tests(self):
        self.write("rules/r.lua", "return { topics = '*', on_event = function(ev, ctx)\n"
                                  "  if brume.once('k', '1h') then brume.send('f', {"
                                  " now = brume.now(), at = ctx.received_at }) end\n"
                                  "  brume.timer.set('t', 60)\n"
                                  "end, on_timer = function(key, data, ctx)\n"
                                  "  brume.send('f', { fired = brume.now() }) end }\n")
        cfg = self.write("brume.lua", "sources = { m = { path = '/m', insecure = true } }\n"
                                      "targets = { f = { kind = 'file', path = 'out/f.jsonl' } }\n")
        # --at: the time to pretend it is, for brume.now(), ctx and once.
        r = run_cli("test", "-c", cfg, "--at", "2026-11-01T10:00Z", PING, PING)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = [harness.json.loads(line) for line in r.stdout.splitlines()]
        self.assertEqual([x["message"] for x in lines], [{"now": 1793527200, "at": 1793527200}])
        r = run_cli("test", "-c", cfg, "--at", "1700000000", PING)
        self.assertEqual(harness.json.loads(r.stdout)["message"]["now"], 1700000000)
        r = run_cli("test", "-c", cfg, "--at", "someday", PING)
        self.assertEqual(r.returncode, 2)
        self.assertIn("--at 'someday': not a time", r.stderr)
        # A clock test: passes, fails with a diff, or names a bad line.
        case = ("local P = %r\nreturn { steps = {\n"
                "  { at = '0s', payload = P, expect = { { target = 'f', now = %s } } },\n"
                "  { at = '1m', expect = { { fired = %s } } } } }\n")
        good = self.write("good.lua", case % (PING, "1767225600", "1767225660"))
        r = run_cli("test", "-c", cfg, good)
        self.assertEqual((r.returncode, r.stdout), (0, "ok   %s: 2 steps, 2 messages\n" % good))
        r = run_cli("test", "-c", cfg, "--at", "2026-11-01", good)  # --at moves the start
        self.assertEqual(r.returncode, 1)
        self.assertIn("step 1 (at 0s)\n  message 1: now: got 1793491200, want 1767225600\n",
                      r.stdout)
        self.assertIn("step 2 (at 1m)\n  message 1: fired: got 1793491260, want 1767225660\n",
                      r.stdout)
        self.assertTrue(r.stdout.endswith("good.lua: 2 of 2 steps failed\n"), r.stdout)
        bad = self.write("bad.lua", "return { steps = {\n  { at = '1m' },\n  { at = '0s' } } }\n")
        r = run_cli("test", "-c", cfg, bad, PING)
        self.assertEqual(r.returncode, 1)
        self.assertIn("bad.lua:3: step 2: at: 0s is before the previous step's", r.stderr)
        self.assertEqual(len(r.stdout.splitlines()), 1)  # the payload after it still ran
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "out")))

    def test_run_refuses_to_start(self):
        cfg = self.write("bad.lua", "sources = {}\n")
        r = run_cli("run", "-c", cfg, timeout=30)
        self.assertEqual(r.returncode, 1)
        self.assertIn("no sources", r.stderr)
        # A port another process holds.
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        try:
            cfg = self.write("port.lua", "listen = '127.0.0.1:%d'\nadmin = false\n"
                                         "sources = { m = { path = '/m', secret = 's' } }\n" % port)
            self.write("rules/.keep", "")
            r = run_cli("run", "-c", cfg, timeout=30)
            self.assertEqual(r.returncode, 1)
            self.assertIn("cannot listen", r.stderr)
        finally:
            s.close()
        # A second brume on the same data folder.
        with Brume('sources = { m = { path = "/m", secret = "s" } }') as b:
            r = run_cli("run", "-c", b.config_path, timeout=30)
            self.assertEqual(r.returncode, 1)
            self.assertIn("another brume runs on this data folder", r.stderr)


def table(text):
    """The rows of a table `brume outbox list` printed, as dicts by column
    name: each cell lies under its heading, or the columns do not line up."""
    lines = text.splitlines()
    heads = [(m.start(), m.group()) for m in re.finditer(r"EVENT ID|\S+", lines[0])]
    rows = []
    for line in lines[1:]:
        row = {}
        for i, (start, name) in enumerate(heads):
            end = heads[i + 1][0] if i + 1 < len(heads) else len(line)
            if i + 1 < len(heads):
                assert line[end - 2:end] == "  " or line[end - 1:end] == " ", (name, line)
            row[name] = line[start:end].strip()
        rows.append(row)
    return rows


class Deliveries(unittest.TestCase):
    """A daemon whose webhook target refuses connections and whose file
    target works, stopped: its store is what the commands read."""

    @classmethod
    def setUpClass(cls):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()  # nothing listens there: connections are refused
        cls.b = Brume("""
sources = { mist = { path = "/mist", secret = "%s" } }
targets = {
  down = { kind = "webhook", url = "http://127.0.0.1:%d/hook", backoff = "0.2s" },
  f = { kind = "file", path = "var/f.jsonl" },
}
""" % (harness.SECRET, port), rules={"r.lua": """
return { topics = "*", on_event = function(ev, ctx)
  brume.send("down", { title = "to the refusing target" })
  brume.send("f", { title = "to the file" })
end }"""}, workers=1).start()
        try:
            # Two events without an id of their own, then one with an id.
            for body in ({"topic": "device-events", "events": [{"type": "AP_RESTARTED"},
                                                                {"type": "AP_CONFIGURED"}]},
                         {"topic": "alarms", "events": [{"id": "alarm-7f3e", "type": "x"}]}):
                assert cls.b.post(json.dumps(body)).status == 200
            cls.b.wait_lines("f.jsonl", 3)
            deadline = time.time() + 20
            while True:
                rows = table(run_cli("outbox", "-c", cls.b.config_path).stdout)
                if len(rows) == 3 and all(r["STATUS"] != "-" for r in rows):
                    break
                assert time.time() < deadline, rows
                time.sleep(0.1)
            assert cls.b.stop() == 0
        except BaseException:
            cls.b.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.b.cleanup()

    def cli(self, *args):
        return run_cli(args[0], "-c", self.b.config_path, *args[1:])

    def test_outbox_list(self):
        r = self.cli("outbox", "list")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout.splitlines()[0], r"^ID +STATE +TARGET +ATTEMPTS +STATUS +CREATED"
                         r" +LAST +NEXT +RULE +EVENT +EVENT ID +ERROR$")
        rows = table(r.stdout)
        self.assertEqual([x["TARGET"] for x in rows], ["down"] * 3)
        # Events tell apart: body id and position, and the event's own id.
        self.assertEqual([(x["EVENT"], x["EVENT ID"]) for x in rows],
                         [("2:1", "alarm-7f3e"), ("1:2", "-"), ("1:1", "-")])
        for x in rows:
            self.assertEqual((x["STATE"], x["STATUS"], x["RULE"]), ("pending", "refused", "r"))
            self.assertGreaterEqual(int(x["ATTEMPTS"]), 1)
            self.assertRegex(x["CREATED"], r"^\d+(s|m\d\ds) ago$")
            self.assertRegex(x["LAST"], r"^\d+(s|m\d\ds) ago$")
            self.assertRegex(x["NEXT"], r"^(now|in \d+(s|m\d\ds))$")
            self.assertRegex(x["ERROR"], r"^request: (Failed to connect|Couldn.t connect)")
        # Done ones too: a line written to a file is "ok".
        rows = table(self.cli("outbox", "list", "--all").stdout)
        done = [x for x in rows if x["STATE"] == "done"]
        self.assertEqual(sorted(x["EVENT"] for x in done), ["1:1", "1:2", "2:1"])
        self.assertEqual({(x["TARGET"], x["STATUS"], x["ERROR"]) for x in done},
                         {("f", "ok", "-")})

    def test_outbox_retry_keeps_the_last_attempt(self):
        rows = table(self.cli("outbox").stdout)
        one = rows[-1]
        self.assertEqual(self.cli("outbox", "retry", one["ID"]).returncode, 0)
        again = [x for x in table(self.cli("outbox").stdout) if x["ID"] == one["ID"]][0]
        self.assertEqual((again["ATTEMPTS"], again["NEXT"], again["STATUS"]), ("0", "now", "refused"))
        self.assertRegex(again["LAST"], r" ago$")

    def test_replay_times(self):
        now = time.time()
        accepted = {"2h": 2, "2h ago": 2, "30m": 2, "2000-01-01": 2, "2000-01-01T00:00Z": 2,
                    "2000-01-01 10:00:00.5+02:00": 2, str(int(now) - 3600): 2,
                    time.strftime("%Y-%m-%dT%H:%M", time.gmtime(now + 120)): 0}
        for when, bodies in accepted.items():
            r = self.cli("replay", "--since", when)
            self.assertEqual((when, r.returncode), (when, 0), r.stderr)
            self.assertIn("replayed %d bod" % bodies, r.stderr)
        r = self.cli("replay", "--until", "2000-01-01")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("replayed 0 bodies", r.stderr)
        refused = {
            "yesterday": "not a time",
            "2026-13-45": "there is no month 13 (months are 01 to 12)",
            "2026-02-29": "2026-02 has no day 29 (it has 28)",
            "2026-11-21T25:00": "25:00:00 is not a time of day",
            "3600": "for 3600 seconds ago write 3600s",
            "1763719200000": "milliseconds?",
            "": "not a time",
        }
        for option in ("--since", "--until"):
            for when, why in refused.items():
                r = self.cli("replay", option, when)
                self.assertEqual((when, r.returncode), (when, 2), r.stderr)
                self.assertTrue(r.stderr.startswith("brume: %s '%s': " % (option, when)), r.stderr)
                self.assertIn(why, r.stderr.splitlines()[0])
                self.assertIn("%s takes a time ago (90s, 30m, 2h, 7d), an ISO 8601 date" % option,
                              r.stderr)
                self.assertNotIn("usage:", r.stderr)
                self.assertEqual(r.stdout, "")
        r = self.cli("replay", "--since", "1h", "--until", "2h")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--until '2h' is not after --since '1h'", r.stderr)

    def test_replay_topic_that_matches_nothing(self):
        r = self.cli("replay", "--topic", "audits")
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stdout, "")
        self.assertIn("brume: no body of topic audits in the journal"
                      " (topics seen: device-events, alarms)", r.stderr)
        r = self.cli("replay", "--topic", "alarms", "--since", "2099-01-01")
        self.assertEqual(r.returncode, 1)
        self.assertIn("no body of topic alarms in the journal received since"
                      " 2099-01-01T00:00:00.000Z (no body at all then)", r.stderr)
        # Mist's two spellings of a topic are one topic.
        r = self.cli("replay", "--topic", "device_events")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("replayed 1 body (2 events): 4 messages", r.stderr)
        self.assertEqual(len(r.stdout.splitlines()), 4)


if __name__ == "__main__":
    unittest.main()
