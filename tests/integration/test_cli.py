"""The command line: exit codes (0, 1 user error, 2 usage), help, check,
sign, test and run's start-up failures."""
import os
import shutil
import socket
import tempfile
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
        self.assertIn("rules/b.lua: unknown key 'topic'", r.stderr)
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
                     "rules/a.lua:3:", "rules/b.lua: unknown key 'topic'"):
            self.assertIn(want, r.stderr)
        r = run_cli("check", "-c", os.path.join(self.tmp, "missing.lua"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot read the config", r.stderr)

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
        self.assertIn("--at someday is not a time", r.stderr)
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


if __name__ == "__main__":
    unittest.main()
