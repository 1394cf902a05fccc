"""Rule state shared through Redis (state = "redis://..."): two brume
instances on one redis-server (Debian's, started here on 127.0.0.1 and a
free port, stopped by its pid) act as one. brume.once and throttle hold
across them, even when they race; the org and the site copy of an event
posted to different instances run the rules once; a hold-down armed on one
instance fires on the other after the first is killed with kill -9, and a
digest gathers what both added; either console lists, cancels and fires
every instance's timers; Redis stopped and started again under
load loses nothing acknowledged, holds what needs the state (and says so
in /healthz, the metrics and the log) and runs it, in order, once Redis is
back. deploy/ (haproxy in front of two instances) does what it says.
Skipped (77) where redis-server is not installed (build.sh test installs
it, and haproxy)."""
import http.client
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid

import harness
from harness import Brume, Redis

SOURCES = """
sources = { mist = { path = "/mist", secret = "%s"%s } }
targets = { out = { kind = "file", path = "var/out.jsonl" } }
""" % (harness.SECRET, "%s")

# once per key, throttle per key, and a counter of every event, shared.
COUNT_RULE = """
return {
  topics = "alarms",
  on_event = function(ev, ctx)
    local n = brume.state.incr("seen")
    if ev.once and brume.once("once:" .. ev.once, "1h") then
      brume.send("out", { once = ev.once, n = n })
    end
    if ev.throttle and brume.throttle("t:" .. ev.throttle, 3, "1h") then
      brume.send("out", { throttled = ev.throttle, id = ev.id })
    end
    if ev.plain then brume.send("out", { plain = ev.plain }) end
  end,
}"""

HOLDDOWN_RULE = """
return {
  topics = "device-updowns",
  on_event = function(ev, ctx)
    if ev.type == "AP_DISCONNECTED" then
      brume.timer.set(ev.ap, ev.delay or 2, { ap = ev.ap, at = ctx.delivery })
    else
      brume.timer.cancel(ev.ap)
    end
    brume.group.add("flaps", 3, ev.ap .. ":" .. ev.type)
  end,
  on_timer = function(key, data, ctx)
    brume.send("out", { down = key, late = ctx.late })
  end,
  on_group = function(key, items, ctx)
    brume.send("out", { digest = items, count = ctx.count })
  end,
}"""


def alarm(**fields):
    fields.setdefault("id", uuid.uuid4().hex)
    return json.dumps({"topic": "alarms", "events": [fields]})


def updown(ap, kind, **more):
    ev = dict(ap=ap, type=kind, id=uuid.uuid4().hex, **more)
    return json.dumps({"topic": "device-updowns", "events": [ev]})


def messages(*instances):
    return [x["message"] for b in instances for x in b.lines("out.jsonl")]


def wait_for(pred, timeout=20, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("%s not met within %ss" % (what, timeout))


class Shared(unittest.TestCase):
    def setUp(self):
        self.redis = Redis().start()
        self.brumes = []

    def tearDown(self):
        for b in self.brumes:
            b.cleanup()
        self.redis.cleanup()

    def brume(self, rules, state=None, source_extra="", workers=2):
        state = state or 'state = { url = "%s", timeout = "1s" }' % self.redis.url()
        b = Brume(SOURCES % source_extra + state, rules=rules, workers=workers)
        self.brumes.append(b)
        return b.start()

    def pair(self, rules, **kw):
        return self.brume(rules, **kw), self.brume(rules, **kw)

    def test_once_throttle_and_state_hold_across_instances(self):
        a, b = self.pair({"c.lua": COUNT_RULE})
        for i in range(12):
            target = a if i % 2 else b
            self.assertEqual(target.post(alarm(once="k%d" % (i % 4), throttle="site")).status, 200)
        got = wait_for(lambda: len(messages(a, b)) >= 7 and messages(a, b), what="7 messages")
        time.sleep(0.5)
        got = messages(a, b)
        self.assertEqual(sorted(m["once"] for m in got if "once" in m), ["k0", "k1", "k2", "k3"])
        self.assertEqual(len([m for m in got if "throttled" in m]), 3)
        self.assertEqual(sorted(m["n"] for m in got if "once" in m), [1, 2, 3, 4])
        self.assertEqual(self.redis.cli("HGET", "brume:s:state\x1fseen", "v").strip(), "12")
        for x in (a, b):
            h = json.loads(x.request("GET", "/healthz", admin=True).body)
            self.assertEqual(h["state"]["backend"], "redis")
            self.assertEqual(h["state"]["redis"], "up")
            self.assertEqual(h["state"]["at"], self.redis.url())
            self.assertEqual(x.metrics().get("brume_state_redis_up"), 1)

    def test_racing_instances_keep_once_and_throttle(self):
        """Both instances, four workers each, hit the same keys at once: the
        commits that lose a race run again with what won."""
        a, b = self.pair({"c.lua": COUNT_RULE}, workers=4)
        errors = []

        def post(target, n):
            conn = target.connection()
            for i in range(n):
                r = target.post(alarm(once="same", throttle="hot"), conn=conn)
                if r.status != 200:
                    errors.append(r)
            conn.close()

        threads = [threading.Thread(target=post, args=(x, 25)) for x in (a, b, a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        wait_for(lambda: len(messages(a, b)) >= 4, what="4 messages")
        time.sleep(1)
        got = messages(a, b)
        self.assertEqual(len([m for m in got if m.get("once") == "same"]), 1, got)
        self.assertEqual(len([m for m in got if m.get("throttled") == "hot"]), 3, got)
        self.assertEqual(self.redis.cli("HGET", "brume:s:state\x1fseen", "v").strip(), "100")
        conflicts = sum(x.metrics().get("brume_state_conflicts_total", 0) for x in (a, b))
        self.assertGreater(conflicts, 0)

    def test_org_and_site_copies_on_different_instances_run_once(self):
        a, b = self.pair({"c.lua": COUNT_RULE}, source_extra=', dedupe = "10m"')
        for i in range(10):
            ev = {"plain": "e%d" % i, "id": "ev%d" % i, "type": "AP_DOWN"}
            org = json.dumps({"topic": "alarms", "org_id": "o1", "events": [ev]})
            site = json.dumps({"topic": "alarms", "site_id": "s1", "events": [ev]})
            first, second = (a, b) if i % 2 else (b, a)
            results = []
            ts = [threading.Thread(target=lambda x=x, body=body: results.append(x.post(body)))
                  for x, body in ((first, org), (second, site))]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            self.assertEqual([r.status for r in results], [200, 200])
        wait_for(lambda: len(messages(a, b)) >= 10, what="10 messages")
        time.sleep(1)
        got = sorted(m["plain"] for m in messages(a, b))
        self.assertEqual(got, ["e%d" % i for i in range(10)])
        dupes = sum(x.metrics().get("brume_duplicate_events_total", 0) for x in (a, b))
        self.assertEqual(dupes, 10)

    def test_holddown_armed_on_a_fires_on_b_after_kill_9(self):
        a, b = self.pair({"h.lua": HOLDDOWN_RULE})
        self.assertEqual(a.post(updown("ap1", "AP_DISCONNECTED")).status, 200)
        self.assertEqual(a.post(updown("ap2", "AP_DISCONNECTED")).status, 200)
        self.assertEqual(b.post(updown("ap2", "AP_CONNECTED")).status, 200)  # cancelled on B
        a.send_signal(signal.SIGKILL)
        a.wait_exit(10)
        got = wait_for(lambda: [m for m in messages(b) if "down" in m], what="the timer on B")
        digest = wait_for(lambda: [m for m in messages(b) if "digest" in m], what="the digest")
        time.sleep(1)
        self.assertEqual([m["down"] for m in messages(b) if "down" in m], ["ap1"])
        self.assertLess(got[0]["late"], 2)
        self.assertEqual(digest[0]["count"], 3)
        self.assertEqual(sorted(digest[0]["digest"]),
                         ["ap1:AP_DISCONNECTED", "ap2:AP_CONNECTED", "ap2:AP_DISCONNECTED"])
        self.assertEqual(messages(a), [])
        self.assertEqual(self.redis.cli("ZCARD", "brume:due").strip(), "0")
        self.assertEqual(b.metrics().get('brume_timers_total{rule="h",outcome="fired"}'), 2)

    def test_a_timer_fires_on_one_instance_only(self):
        """Ten timers armed through both instances, both running: each fires
        once, on one of them."""
        a, b = self.pair({"h.lua": HOLDDOWN_RULE})
        for i in range(10):
            x = a if i % 2 else b
            self.assertEqual(x.post(updown("ap%d" % i, "AP_DISCONNECTED", delay=1)).status, 200)
        wait_for(lambda: len([m for m in messages(a, b) if "down" in m]) >= 10, what="10 timers")
        time.sleep(1.5)
        fired = sorted(m["down"] for m in messages(a, b) if "down" in m)
        self.assertEqual(fired, sorted("ap%d" % i for i in range(10)))

    def test_the_console_shows_cancels_and_fires_every_instances_timers(self):
        """Timers armed through A are listed, cancelled and fired from B's
        console (they are in Redis): the cancelled one never fires, the fired
        one fires at once, on one instance; with Redis away the console
        says so (503)."""
        a, b = self.pair({"h.lua": HOLDDOWN_RULE})
        for ap in ("ap1", "ap2"):
            self.assertEqual(a.post(updown(ap, "AP_DISCONNECTED", delay=60)).status, 200)

        def console(x, op=None, **body):
            if op is None:
                r = x.request("GET", "/api/timers", admin=True)
            else:
                r = x.request("POST", "/api/timers/" + op, json.dumps(body), admin=True,
                              headers={"Content-Type": "application/json",
                                       "X-Brume-Console": "1"})
            return r.status, json.loads(r.body)

        status, listing = console(b)
        self.assertEqual(status, 200)
        self.assertTrue(listing["shared"])
        timers = {t["key"]: t for t in listing["timers"] if t["kind"] == "timer"}
        self.assertEqual(sorted(timers), ["ap1", "ap2"])
        self.assertEqual(timers["ap1"]["rule"], "h")
        self.assertEqual(timers["ap1"]["data"]["ap"], "ap1")
        self.assertGreater(timers["ap1"]["due"], time.time() + 50)
        digests = [t for t in listing["timers"] if t["kind"] == "digest"]
        self.assertEqual([(d["key"], d["count"]) for d in digests], [("flaps", 2)])

        self.assertEqual(console(b, "cancel", kind="timer", rule="h", key="ap1"),
                         (200, {"ok": True}))
        self.assertEqual(console(b, "cancel", kind="timer", rule="h", key="ap1")[0], 404)
        self.assertEqual(console(a, "fire", kind="timer", rule="h", key="nope")[0], 404)
        self.assertEqual(sorted(t["key"] for t in console(a)[1]["timers"]), ["ap2", "flaps"])
        self.assertEqual(console(b, "fire", kind="timer", rule="h", key="ap2"),
                         (200, {"ok": True}))
        wait_for(lambda: [m for m in messages(a, b) if "down" in m], timeout=10,
                 what="the fired timer")
        time.sleep(1)
        self.assertEqual([m["down"] for m in messages(a, b) if "down" in m], ["ap2"])
        self.assertEqual([t["key"] for t in console(b)[1]["timers"]], ["flaps"])

        self.redis.stop()
        status, answer = console(b)
        self.assertEqual(status, 503)
        self.assertIn("Redis", answer["error"])


class RedisAway(unittest.TestCase):
    """Redis stopped and started again while bodies come."""

    def setUp(self):
        self.redis = Redis().start()
        state = 'state = { url = "%s", timeout = "0.5s" }' % self.redis.url()
        self.b = Brume(SOURCES % "" + state, rules={"c.lua": COUNT_RULE}).start()

    def tearDown(self):
        self.b.cleanup()
        self.redis.cleanup()

    def health(self):
        return json.loads(self.b.request("GET", "/healthz", admin=True).body)

    def test_bodies_are_held_answered_and_run_in_order_when_redis_is_back(self):
        b = self.b
        keys = []
        stop = threading.Event()
        statuses = []

        def load():
            conn = b.connection()
            i = 0
            while not stop.is_set():
                k = "k%d" % (i % 40)  # each key twice: once must hold across the outage
                r = b.post(alarm(once=k, plain="p%d" % i), conn=conn)
                statuses.append(r.status)
                if r.status == 200:
                    keys.append(k)
                i += 1
                time.sleep(0.01)
            conn.close()

        t = threading.Thread(target=load)
        t.start()
        try:
            time.sleep(0.5)
            self.redis.stop()
            b.wait_log(r"shared state: Redis unreachable", 10)
            wait_for(lambda: self.health()["state"]["redis"] == "down", what="healthz down")
            h = wait_for(lambda: self.health()["state"]["held"] > 0 and self.health(),
                         what="held bodies")
            self.assertEqual(h["status"], "ok")  # still taking what Mist sends
            self.assertTrue(h["state"]["draining"])
            m = b.metrics()
            self.assertEqual(m.get("brume_state_redis_up"), 0)
            self.assertGreater(m.get("brume_state_held_bodies"), 0)
            time.sleep(0.5)
            self.redis.start()
            b.wait_log(r"shared state: Redis reachable", 10)
            time.sleep(0.5)
        finally:
            stop.set()
            t.join()
        self.assertEqual(set(statuses), {200})
        wait_for(lambda: not self.health()["state"]["draining"], what="the backlog drained")
        n = len(statuses)
        got = wait_for(lambda: len([m for m in messages(b) if "plain" in m]) >= n and messages(b),
                       what="every plain message")
        time.sleep(0.5)
        got = messages(b)
        self.assertEqual(sorted(int(m["plain"][1:]) for m in got if "plain" in m), list(range(n)))
        onces = [m["once"] for m in got if "once" in m]
        self.assertEqual(sorted(onces), sorted(set(keys)))  # once each, the outage or not
        # The held bodies ran in the order they came: "seen" counts up with the ids.
        ns = [m["n"] for m in got if "once" in m]
        self.assertEqual(ns, sorted(ns))
        self.assertEqual(self.redis.cli("HGET", "brume:s:state\x1fseen", "v").strip(), str(n))
        self.assertEqual(self.health()["state"]["held"], 0)
        self.assertEqual(b.metrics().get("brume_state_held_bodies"), 0)
        self.assertGreater(b.metrics().get("brume_state_held_total"), 0)
        b.wait_log(r"every held body has run", 5)

    def test_a_commit_whose_answer_is_lost_is_applied_once(self):
        """Redis frozen (SIGSTOP) while a commit is on its way: the body is
        answered within the timeout (held), the commit runs when Redis
        thaws though brume gave up on its answer, and brume, sending it
        again, learns from its marker that it ran: the message goes once,
        with the state it set."""
        b = self.b
        self.assertEqual(b.post(alarm(once="warm")).status, 200)
        self.redis.proc.send_signal(signal.SIGSTOP)
        try:
            t0 = time.time()
            self.assertEqual(b.post(alarm(once="frozen")).status, 200)
            self.assertLess(time.time() - t0, 5)
            b.wait_log(r"shared state: Redis unreachable", 10)
            self.assertEqual(self.health()["state"]["held"], 1)
        finally:
            self.redis.proc.send_signal(signal.SIGCONT)
        b.wait_log(r"shared state: Redis reachable", 10)
        wait_for(lambda: not self.health()["state"]["draining"], what="the backlog drained")
        got = wait_for(lambda: len(messages(b)) >= 2 and messages(b), what="two messages")
        time.sleep(0.5)
        self.assertEqual(sorted(m["once"] for m in messages(b)), ["frozen", "warm"])
        self.assertEqual(self.redis.cli("HGET", "brume:s:state\x1fseen", "v").strip(), "2")
        self.assertEqual([m["n"] for m in got], [1, 2])
        self.assertEqual(self.health()["state"]["held"], 0)

    def test_held_bodies_survive_a_restart_of_brume(self):
        b = self.b
        self.redis.stop()
        b.wait_log(r"shared state: Redis unreachable", 10)
        for i in range(5):
            self.assertEqual(b.post(alarm(once="r%d" % i)).status, 200)
        wait_for(lambda: self.health()["state"]["held"] == 5, what="5 held")
        self.assertEqual(b.stop(), 0)
        self.redis.start()
        b.start()
        wait_for(lambda: len(messages(b)) >= 5, what="the held bodies' messages")
        time.sleep(0.5)
        self.assertEqual(sorted(m["once"] for m in messages(b)), ["r%d" % i for i in range(5)])
        self.assertEqual(self.health()["state"]["held"], 0)

    def test_a_held_body_that_cannot_be_read_holds_up_no_other(self):
        """A held body's packed row damaged (by hand, as a bad disk might):
        it cannot run, and says so; the others run, the drain ends, and
        bodies run as they come again."""
        b = self.b
        self.redis.stop()
        b.wait_log(r"shared state: Redis unreachable", 10)
        pad = "rogue_ap f688779c " * 40  # so that the body is stored packed
        for i in range(5):
            self.assertEqual(b.post(alarm(once="d%d" % i, pad=pad)).status, 200)
        wait_for(lambda: self.health()["state"]["held"] == 5, what="5 held")
        self.assertEqual(b.stop(), 0)
        db = sqlite3.connect(b.path("var", "brume.db"))
        ids = [i for (i,) in db.execute("SELECT id FROM held ORDER BY id")]
        self.assertEqual(db.execute("SELECT count(size) FROM bodies").fetchone()[0], 5)
        db.execute("UPDATE bodies SET size = size + 7 WHERE id = ?", (ids[2],))
        db.commit()
        db.close()
        self.redis.start()
        b.start()
        b.wait_log(r"a held body cannot be read: its rules do not run.*request=%d" % ids[2], 20)
        wait_for(lambda: not self.health()["state"]["draining"], what="the drain's end")
        self.assertEqual(b.post(alarm(once="after")).status, 200)
        wait_for(lambda: len(messages(b)) >= 5, what="the other held bodies' messages and a new one")
        time.sleep(0.5)
        self.assertEqual(sorted(m["once"] for m in messages(b)),
                         ["after", "d0", "d1", "d3", "d4"])
        self.assertEqual(self.health()["state"]["held"], 1)  # still held: its bytes are gone


class Connection(unittest.TestCase):
    """How brume reaches Redis: a password from env() (never shown), TLS
    (rediss://, the server's certificate checked), Sentinel."""

    def setUp(self):
        self.redises, self.brumes = [], []

    def tearDown(self):
        for b in self.brumes:
            b.cleanup()
        for r in self.redises:
            r.cleanup()

    def redis(self, extra=""):
        r = Redis(extra)
        self.redises.append(r)
        return r.start()

    def brume(self, state, env=None):
        b = Brume(SOURCES % "" + state, rules={"c.lua": COUNT_RULE}, env=env)
        self.brumes.append(b)
        return b.start()

    def works(self, b, key):
        self.assertEqual(b.post(alarm(once=key)).status, 200)
        wait_for(lambda: [m for m in messages(b) if m.get("once") == key], what="the message")

    def test_a_password_from_env_reaches_redis_and_is_never_shown(self):
        r = self.redis("requirepass pa55-w0rd-xyz")
        b = self.brume('state = { url = "redis://127.0.0.1:%d/2", password = env("REDIS_PW") }'
                       % r.port, env={"REDIS_PW": "pa55-w0rd-xyz"})
        self.works(b, "p1")
        self.assertEqual(r.cli("-a", "pa55-w0rd-xyz", "--no-auth-warning", "-n", "2", "EXISTS",
                               "brume:s:once\x1fonce:p1").strip(), "1")
        health = b.request("GET", "/healthz", admin=True).body
        self.assertIn("redis://127.0.0.1:%d/2" % r.port, health)
        for text in (health, b.log(), b.request("GET", "/metrics", admin=True).body):
            self.assertNotIn("pa55-w0rd-xyz", text)

    def test_a_wrong_password_says_why_and_holds(self):
        r = self.redis("requirepass right-one")
        b = self.brume('state = "redis://:wrong-one@127.0.0.1:%d/0"' % r.port)
        b.wait_log(r"Redis unreachable.*error=\"?AUTH: WRONGPASS", 10)
        self.assertEqual(b.post(alarm(once="w")).status, 200)
        h = json.loads(b.request("GET", "/healthz", admin=True).body)
        self.assertEqual((h["state"]["redis"], h["state"]["held"]), ("down", 1))
        self.assertNotIn("wrong-one", b.log() + json.dumps(h))

    def tls_redis(self):
        d = tempfile.mkdtemp(prefix="brume-tls-")
        self.addCleanup(shutil.rmtree, d, True)
        cert, key = os.path.join(d, "redis.pem"), os.path.join(d, "redis.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-keyout", key, "-out", cert, "-subj", "/CN=brume-test",
                        "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True)
        port = harness.free_port()  # TLS there; the plain port stays for redis-cli
        r = self.redis("tls-port %d\ntls-cert-file %s\ntls-key-file %s\n"
                       "tls-ca-cert-file %s\ntls-auth-clients no" % (port, cert, key, cert))
        return r, port, cert

    def test_tls_with_the_servers_certificate_checked(self):
        r, port, cert = self.tls_redis()
        b = self.brume('state = { url = "rediss://127.0.0.1:%d/0", ca = "%s" }' % (port, cert))
        self.works(b, "t1")
        h = json.loads(b.request("GET", "/healthz", admin=True).body)
        self.assertEqual(h["state"]["at"], "rediss://127.0.0.1:%d/0" % port)
        # Against the system's CAs the self-signed certificate does not pass.
        other = self.brume('state = "rediss://127.0.0.1:%d/0"' % port)
        other.wait_log(r"Redis unreachable.*certificate verify failed", 10)
        # Nor does a name the certificate does not hold (it holds 127.0.0.1).
        named = self.brume('state = { url = "rediss://localhost:%d/0", ca = "%s" }'
                           % (port, cert))
        named.wait_log(r"Redis unreachable.*certificate verify failed", 10)

    def test_sentinel_names_the_master(self):
        r = self.redis()
        sport = harness.free_port()
        conf = os.path.join(r.dir, "sentinel.conf")
        with open(conf, "w") as f:
            f.write("bind 127.0.0.1\nport %d\ndir %s\nprotected-mode no\n"
                    "sentinel monitor brume 127.0.0.1 %d 1\n" % (sport, r.dir, r.port))
        sentinel = subprocess.Popen(["redis-server", conf, "--sentinel"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: (sentinel.terminate(), sentinel.wait(10)))
        b = self.brume('state = { sentinels = { "127.0.0.1:%d", "127.0.0.1:%d" }, '
                       'master = "brume" }' % (harness.free_port(), sport))
        self.works(b, "s1")
        self.assertEqual(r.cli("EXISTS", "brume:s:once\x1fonce:s1").strip(), "1")
        h = json.loads(b.request("GET", "/healthz", admin=True).body)
        self.assertEqual(h["state"]["at"], "redis://sentinel:brume(2 sentinels)/0")
        unknown = self.brume('state = { sentinels = { "127.0.0.1:%d" }, master = "nope" }'
                             % sport)
        unknown.wait_log(r"Redis unreachable.*does not know the master set", 10)


class Deployment(unittest.TestCase):
    """deploy/: haproxy (Debian's) in front of two instances that run
    deploy/brume.lua with their env files' settings and share one Redis.
    Posts through haproxy run the rules once whichever instance takes them,
    and go on being answered 200 when one instance is killed with kill -9."""

    def setUp(self):
        if not shutil.which("haproxy"):
            self.skipTest("haproxy is not installed")
        self.redis = Redis().start()
        self.brumes, self.haproxy = [], None
        deploy = os.path.join(harness.SRC, "deploy")
        with open(os.path.join(deploy, "brume.lua")) as f:
            config = f.read()
        self.assertIn('secops = { kind = "slack", url = env("SLACK_WEBHOOK_URL") }', config)
        config = config.replace('"/etc/brume/rules"', '"rules"').replace(
            'secops = { kind = "slack", url = env("SLACK_WEBHOOK_URL") }',
            'out = { kind = "file", path = "var/out.jsonl" }')
        ports = {}
        for name in ("a", "b"):
            env = {}
            with open(os.path.join(deploy, name + ".env")) as f:
                for line in f:
                    if line.strip() and not line.startswith("#"):
                        k, v = line.strip().split("=", 1)
                        env[k] = v
            port, admin = harness.free_port(), harness.free_port()
            ports[env["BRUME_LISTEN"]], ports[env["BRUME_ADMIN"]] = port, admin
            env.update(BRUME_LISTEN="127.0.0.1:%d" % port, BRUME_ADMIN="127.0.0.1:%d" % admin,
                       BRUME_DATA="var", BRUME_REDIS=self.redis.url(),
                       MIST_WEBHOOK_SECRET=harness.SECRET)
            b = Brume(config, rules={"c.lua": COUNT_RULE}, env=env)
            self.brumes.append(b)
            b.start()
        with open(os.path.join(deploy, "haproxy.cfg")) as f:
            cfg = f.read()
        self.front = harness.free_port()
        cfg = cfg.replace("bind :8080", "bind 127.0.0.1:%d" % self.front)
        for where, port in ports.items():
            old = where.rsplit(":", 1)[1]
            cfg = re.sub(r"\b%s\b" % old, str(port), cfg)
        # Here haproxy runs in the foreground, as this user, logging nowhere.
        cfg = re.sub(r"^\s*(user|group|daemon|log /dev/log).*$", "", cfg, flags=re.M)
        self.cfg = os.path.join(self.brumes[0].dir, "haproxy.cfg")
        with open(self.cfg, "w") as f:
            f.write(cfg)
        check = subprocess.run(["haproxy", "-c", "-f", self.cfg], capture_output=True, text=True)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
        self.haproxy = subprocess.Popen(["haproxy", "-db", "-f", self.cfg],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def tearDown(self):
        if self.haproxy:
            self.haproxy.terminate()
            self.haproxy.wait(10)
        for b in self.brumes:
            b.cleanup()
        self.redis.cleanup()

    def post(self, body):
        conn = http.client.HTTPConnection("127.0.0.1", self.front, timeout=harness.REQUEST_TIMEOUT)
        try:
            h = {"Content-Type": "application/json", "User-Agent": "Mist-webhook",
                 "X-Mist-Signature-v2": harness.sign(body)}
            conn.request("POST", "/mist", body.encode(), h)
            r = conn.getresponse()
            r.read()
            return r.status
        except OSError:
            return None
        finally:
            conn.close()

    def test_the_unit_is_one_systemd_takes(self):
        if not shutil.which("systemd-analyze"):
            self.skipTest("systemd-analyze is not installed")
        d = tempfile.mkdtemp(prefix="brume-unit-")
        self.addCleanup(shutil.rmtree, d, True)
        with open(os.path.join(harness.SRC, "deploy", "brume@.service")) as f:
            unit = f.read()
        self.assertIn("ExecStart=/usr/bin/brume run -c /etc/brume/brume.lua", unit)
        self.assertIn("EnvironmentFile=/etc/brume/%i.env", unit)
        with open(os.path.join(d, "brume@.service"), "w") as f:
            f.write(unit.replace("/usr/bin/brume", harness.BRUME))
        r = subprocess.run(["systemd-analyze", "verify", "--man=no", "brume@a.service"], cwd=d,
                           capture_output=True, text=True, timeout=60)
        self.assertEqual((r.returncode, r.stdout + r.stderr), (0, ""))

    def test_through_haproxy_once_each_and_one_instance_lost(self):
        a, b = self.brumes
        wait_for(lambda: self.post(alarm(plain="warm")) == 200, what="haproxy up")
        for i in range(10):
            ev = {"plain": "e%d" % i, "id": "ev%d" % i, "type": "AP_DOWN", "once": "o%d" % (i % 3)}
            for copy in ({"org_id": "o1"}, {"site_id": "s1"}):
                body = dict(topic="alarms", events=[ev], **copy)
                self.assertEqual(self.post(json.dumps(body)), 200)
        wait_for(lambda: len(messages(a, b)) >= 14, what="14 messages")
        a.send_signal(signal.SIGKILL)
        a.wait_exit(10)
        statuses = [self.post(alarm(plain="after%d" % i)) for i in range(10)]
        self.assertEqual(statuses, [200] * 10)
        wait_for(lambda: len(messages(a, b)) >= 24, what="24 messages")
        time.sleep(0.5)
        got = messages(a, b)
        plain = sorted(m["plain"] for m in got if "plain" in m)
        self.assertEqual(plain, sorted(["warm"] + ["e%d" % i for i in range(10)] +
                                       ["after%d" % i for i in range(10)]))
        self.assertEqual(sorted(m["once"] for m in got if "once" in m), ["o0", "o1", "o2"])
        # Both instances took posts: the balancer spread them.
        self.assertTrue(a.lines("out.jsonl") and b.lines("out.jsonl"))


if __name__ == "__main__":
    if not harness.have_redis():
        print("redis-server is not installed: skipped")
        sys.exit(77)
    unittest.main(verbosity=2)
