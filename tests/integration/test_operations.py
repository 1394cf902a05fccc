"""Live operations: reloads under load lose nothing and run nothing twice
(SIGHUP, POST /reload, the file watch), a broken rule set never runs; the
admin endpoints (health, metrics in Prometheus's format, the token); HTTPS
with a certificate made here, reloaded with the rules; SIGTERM under load."""
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest
import uuid

import harness
from harness import Brume, sign

RULE = """
return { topics = "ping", on_event = function(ev)
  brume.send("out", { v = %s, id = ev.id })
end }"""

BROKEN = RULE % '"broken"' + "\nthis does not compile"

CONFIG = """
sources = { mist = { path = "/mist", secret = "%s" } }
targets = { out = { kind = "file", path = "var/out.jsonl" } }
""" % harness.SECRET


def ping():
    event = str(uuid.uuid4())
    return event, json.dumps({"topic": "ping", "events": [{"id": event}]})


class Load:
    """Clients posting pings on keep-alive connections until stopped; every
    answer is recorded."""

    def __init__(self, b, clients=4):
        self.b, self.acked, self.other, self.lock = b, [], [], threading.Lock()
        self.stop_flag = threading.Event()
        self.threads = [threading.Thread(target=self.run) for _ in range(clients)]

    def run(self):
        conn = self.b.connection()
        while not self.stop_flag.is_set():
            event, body = ping()
            try:
                r = self.b.post(body, conn=conn)
            except OSError as e:  # only a stop may close a connection
                with self.lock:
                    self.other.append(repr(e))
                conn = self.b.connection()
                continue
            with self.lock:
                (self.acked if r.status == 200 else self.other).append(
                    event if r.status == 200 else r.status)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        for t in self.threads:
            t.join(30)


def versions_by_event(b, acked, timeout=60):
    """Waits until every acknowledged event's line is written; returns
    {event: [versions it was sent with]}."""
    deadline = time.time() + timeout
    while True:
        got = {}
        for line in b.lines("out.jsonl"):
            got.setdefault(line["message"]["id"], []).append(line["message"]["v"])
        missing = set(acked) - set(got)
        if not missing:
            return got
        if time.time() > deadline:
            raise AssertionError("%d acknowledged events never ran, e.g. %s" %
                                 (len(missing), sorted(missing)[:3]))
        time.sleep(0.1)


class Reload(unittest.TestCase):
    def test_rewrites_under_load_lose_nothing_and_run_nothing_twice(self):
        b = Brume(CONFIG, rules={"r.lua": RULE % 0}, workers=2).start()
        try:
            rule_set = 1
            with Load(b) as load:
                time.sleep(0.3)
                for version in range(1, 12):
                    broken = version == 6  # reloaded by POST /reload, below
                    b.write_rule("r.lua", BROKEN if broken else RULE % version)
                    rule_set += 0 if broken else 1
                    if version % 2:
                        b.send_signal(signal.SIGHUP)
                        b.wait_log(r"msg=reloaded trigger=SIGHUP rules=1 rule_set=%d\b" % rule_set,
                                   timeout=20)
                    else:
                        r = b.request("POST", "/reload", admin=True)
                        report = json.loads(r.body)
                        self.assertEqual(r.status, 422 if broken else 200, r.body)
                        self.assertEqual(report["ok"], not broken)
                        if broken:
                            self.assertIn("rules/r.lua:5:", report["errors"][0])
                    time.sleep(0.25)
                time.sleep(0.3)
            self.assertEqual(load.other, [])  # every answer a 200, no 5xx, no reset
            self.assertGreater(len(load.acked), 50)
            got = versions_by_event(b, load.acked)
            for event in load.acked:
                self.assertEqual(len(got[event]), 1, event)  # exactly one action each
            seen = {v for vs in got.values() for v in vs}
            self.assertNotIn("broken", seen)
            self.assertEqual(max(v for v in seen if isinstance(v, int)), 11)
            m = b.metrics()
            self.assertEqual(m['brume_reloads_total{result="ok"}'], 10)
            self.assertEqual(m['brume_reloads_total{result="failed"}'], 1)
            self.assertEqual(m["brume_rule_set"], 11)
            # The last version is live on every worker.
            for _ in range(10):
                event, body = ping()
                self.assertEqual(b.post(body).status, 200)
                self.assertEqual(versions_by_event(b, [event])[event], [11])
        finally:
            b.cleanup()

    def test_health_says_when_the_last_reload_failed(self):
        b = Brume(CONFIG, rules={"r.lua": RULE % 1}, workers=1).start()
        try:
            health = lambda: json.loads(b.request("GET", "/healthz", admin=True).body)
            self.assertNotIn("reload", health())  # none yet
            b.write_rule("r.lua", BROKEN)
            self.assertEqual(b.request("POST", "/reload", admin=True).status, 422)
            r = b.request("GET", "/healthz", admin=True)
            self.assertEqual(r.status, 200)  # the running set still runs
            h = json.loads(r.body)
            self.assertEqual(h["status"], "ok")
            self.assertFalse(h["reload"]["ok"])
            self.assertRegex(h["reload"]["at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
            self.assertEqual(len(h["reload"]["errors"]), 1)
            self.assertIn("rules/r.lua:5:", h["reload"]["errors"][0])
            self.assertEqual(h["rule_set"], 1)
            # A reload that works says so, and the errors go.
            b.write_rule("r.lua", RULE % 2)
            b.send_signal(signal.SIGHUP)
            b.wait_log(r"msg=reloaded trigger=SIGHUP rules=1 rule_set=2\b", timeout=20)
            h = health()
            self.assertEqual(h["reload"]["ok"], True)
            self.assertNotIn("errors", h["reload"])
            self.assertEqual(h["rule_set"], 2)
        finally:
            b.cleanup()

    def test_a_send_to_a_missing_target_is_a_warning_at_start_and_reload(self):
        rule = """
return { topics = "ping", on_event = function(ev)
  brume.send("outt", { id = ev.id })
end }"""
        b = Brume(CONFIG, rules={"r.lua": rule}, workers=2).start()
        try:
            want = ("rules/r.lua:3: brume.send to 'outt': no such target "
                    "(did you mean 'out'?)")
            b.wait_log(re.escape(want))
            self.assertEqual(b.log().count(want), 1)  # once, not once per worker
            b.write_rule("r.lua", rule.replace("outt", "out"))
            self.assertEqual(b.request("POST", "/reload", admin=True).status, 200)
            b.write_rule("r.lua", rule.replace("outt", "nowhere"))
            self.assertEqual(b.request("POST", "/reload", admin=True).status, 200)  # no error
            b.wait_log(re.escape("rules/r.lua:3: brume.send to 'nowhere': no such target"))
            self.assertEqual(b.log().count(want), 1)
        finally:
            b.cleanup()

    def test_config_reload_rotates_a_secret_and_adds_a_source(self):
        b = Brume(CONFIG, rules={"r.lua": RULE % 1}, workers=2).start()
        try:
            event, body = ping()
            self.assertEqual(b.post(body).status, 200)
            with open(b.config_path) as f:
                text = f.read()
            text = text.replace('secret = "%s" }' % harness.SECRET,
                                'secret = { "rotated-secret", "%s" } },\n'
                                '  lab = { path = "/lab", secret = "lab-secret" }' % harness.SECRET)
            text += 'http = { max_connections = 100 }\nworkers = 5\n'
            with open(b.config_path, "w") as f:
                f.write(text)
            r = b.request("POST", "/reload", admin=True)
            self.assertEqual(r.status, 200, r.body)
            self.assertIn("workers: changed; it takes effect at the next start",
                          json.loads(r.body)["warnings"])
            time.sleep(0.3)
            for secret in ("rotated-secret", harness.SECRET):  # during a rotation, both
                self.assertEqual(b.post(ping()[1], secret=secret).status, 200)
            self.assertEqual(b.post(ping()[1], path="/lab", secret="lab-secret").status, 200)
            self.assertEqual(b.post(ping()[1], path="/lab").status, 401)
            # A config that does not load changes nothing.
            with open(b.config_path, "a") as f:
                f.write("sources = 42\n")
            self.assertEqual(b.request("POST", "/reload", admin=True).status, 422)
            self.assertEqual(b.post(ping()[1], path="/lab", secret="lab-secret").status, 200)
        finally:
            b.cleanup()

    def test_a_reload_cannot_drop_the_token_of_an_open_admin_listener(self):
        token = "a-token-for-the-open-admin"
        b = Brume(CONFIG + 'admin = { addr = "0.0.0.0:0", token = "%s" }\n' % token,
                  rules={"r.lua": RULE % 1}, workers=1).start()
        try:
            with open(b.config_path, "a") as f:
                f.write('admin = "127.0.0.1:9999"\n')  # no token: the listener stays open
            auth = {"Authorization": "Bearer " + token}
            r = b.request("POST", "/reload", admin=True, headers=auth)
            self.assertEqual(r.status, 422)
            self.assertIn("needs a token", r.body)
            self.assertEqual(b.request("GET", "/metrics", admin=True).status, 401)
        finally:
            b.cleanup()

    def test_the_watch_follows_editors_and_git(self):
        b = Brume(CONFIG + "watch = true\n", rules={"r.lua": RULE % 1}, workers=1).start()
        try:
            def expect(version):
                event, body = ping()
                self.assertEqual(b.post(body).status, 200)
                self.assertEqual(versions_by_event(b, [event])[event], [version])

            expect(1)
            # An editor: write a temporary file, rename it over the rule.
            tmp = b.path("rules", ".r.lua.swp")
            with open(tmp, "w") as f:
                f.write(RULE % 2)
            os.replace(tmp, b.path("rules", "r.lua"))
            b.wait_log(r"msg=reloaded trigger=watch rules=1 rule_set=2\b")
            expect(2)
            # git checkout: the whole folder goes and comes back.
            shutil.rmtree(b.path("rules"))
            time.sleep(0.1)
            os.makedirs(b.path("rules"))
            b.write_rule("r.lua", RULE % 3)
            b.wait_log(r"rule_set=3\b", timeout=20)
            expect(3)
            # A broken save is refused; the running set goes on.
            b.write_rule("r.lua", BROKEN)
            b.wait_log('rule set stays" trigger=watch')
            expect(3)
            # The config file itself is watched too.
            b.write_rule("r.lua", RULE % 4)
            b.wait_log(r"rule_set=4\b")
            with open(b.config_path, "a") as f:
                f.write("log = { level = 'debug' }\n")
            b.wait_log(r"rule_set=5\b")
            expect(4)
            self.assertNotIn(".swp", b.log())
        finally:
            b.cleanup()


# ---- admin endpoints -------------------------------------------------------

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (-?[0-9.e+]+|NaN|\+Inf|-Inf)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def parse_metrics(text):
    """Prometheus's text format, strictly: returns {family: (type, [(name,
    {labels}, value)])}; raises on anything out of place."""
    families, current = {}, None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert name not in families, "family twice: " + name
            families[name] = [None, []]
            current = name
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert name == current, line
            assert kind in ("counter", "gauge", "histogram"), line
            families[name][0] = kind
        else:
            m = SAMPLE.match(line)
            assert m, "not a sample: %r" % line
            name, labels = m.group(1), {}
            body = m.group(3) or ""
            pos = 0
            while pos < len(body):
                lm = LABEL.match(body, pos)
                assert lm, "bad labels: %r" % line
                labels[lm.group(1)] = lm.group(2)
                pos = lm.end()
            base = re.sub(r"_(bucket|sum|count)$", "", name) if families.get(
                current, [None])[0] == "histogram" else name
            assert base == current, "sample %s outside its family %s" % (name, current)
            families[current][1].append((name, labels, float(m.group(4))))
    for name, (kind, samples) in families.items():
        assert kind, "no TYPE for " + name
        if kind == "histogram":
            series = {}
            for n, labels, v in samples:
                key = tuple(sorted((k, x) for k, x in labels.items() if k != "le"))
                series.setdefault(key, {"buckets": [], "count": None})
                if n.endswith("_bucket"):
                    series[key]["buckets"].append((labels["le"], v))
                elif n.endswith("_count"):
                    series[key]["count"] = v
            for s in series.values():
                counts = [v for _, v in s["buckets"]]
                assert counts == sorted(counts), "buckets not cumulative in " + name
                assert s["buckets"][-1][0] == "+Inf" and counts[-1] == s["count"], name
    return families


class Admin(unittest.TestCase):
    TOKEN = "an-admin-token-for-tests"

    @classmethod
    def setUpClass(cls):
        cls.b = Brume(CONFIG + 'admin = { addr = "127.0.0.1:0", token = "%s" }\n' % cls.TOKEN,
                      rules={"r.lua": RULE % 1}, workers=2).start()

    @classmethod
    def tearDownClass(cls):
        cls.b.cleanup()

    def admin(self, method, path, token=TOKEN):
        headers = {"Authorization": "Bearer " + token} if token else {}
        return self.b.request(method, path, admin=True, headers=headers)

    def test_health(self):
        r = self.admin("GET", "/healthz", token=None)  # open: for load balancers
        self.assertEqual(r.status, 200)
        h = json.loads(r.body)
        self.assertEqual(h["status"], "ok")
        self.assertEqual((h["workers"], h["rules"], h["store"]), (2, 1, "ok"))
        self.assertIn("pending", h["outbox"])
        self.assertIsInstance(h["rule_set"], int)

    def test_threads_are_named_for_top_and_perf(self):
        task = "/proc/%d/task" % self.b.proc.pid
        names = set()
        for tid in os.listdir(task):
            with open(os.path.join(task, tid, "comm")) as f:
                names.add(f.read().strip())
        self.assertLessEqual({"worker 1", "worker 2", "writer", "outbox"}, names)

    def test_the_daemon_skips_gnutls_init(self):
        # libcurl's dependencies link GnuTLS, which brume never calls: the
        # daemon starts itself again, same pid, with GnuTLS told not to
        # initialise as it loads (0.8 MB of memory).
        with open("/proc/%d/environ" % self.b.proc.pid, "rb") as f:
            env = f.read().split(b"\0")
        self.assertIn(b"GNUTLS_NO_IMPLICIT_INIT=1", env)
        with open("/proc/%d/cmdline" % self.b.proc.pid, "rb") as f:
            self.assertEqual(f.read().split(b"\0")[1], b"run")
        # By its own path: its name stays brume's for ps and pgrep.
        with open("/proc/%d/comm" % self.b.proc.pid) as f:
            self.assertEqual(f.read().strip(), os.path.basename(harness.BRUME)[:15])

    def test_the_token(self):
        for path, method in (("/metrics", "GET"), ("/reload", "POST")):
            self.assertEqual(self.admin(method, path, token=None).status, 401)
            self.assertEqual(self.admin(method, path, token="wrong-token-of-some-length").status,
                             401)
        self.assertEqual(self.admin("POST", "/reload").status, 200)

    def test_metrics_parse(self):
        for _ in range(3):
            self.assertEqual(self.b.post(ping()[1]).status, 200)
        self.assertEqual(self.b.post(ping()[1], secret="wrong").status, 401)
        self.b.wait_lines("out.jsonl", 3)
        families = parse_metrics(self.admin("GET", "/metrics").body)
        for name in ("brume_http_requests_total", "brume_events_total", "brume_rule_runs_total",
                     "brume_rule_errors_total", "brume_rule_duration_seconds",
                     "brume_deliveries_total", "brume_outbox_pending",
                     "brume_outbox_oldest_seconds", "brume_journal_lag_seconds",
                     "brume_reloads_total", "brume_rule_set", "brume_build_info"):
            self.assertIn(name, families)
        requests = {(s[1]["route"], s[1]["status"]): s[2]
                    for s in families["brume_http_requests_total"][1]}
        self.assertGreaterEqual(requests[("mist", "200")], 3)
        self.assertGreaterEqual(requests[("mist", "401")], 1)
        build = families["brume_build_info"][1][0]
        self.assertEqual(build[2], 1)
        self.assertRegex(build[1]["version"], r"^\d+\.\d+\.\d+$")
        self.assertEqual(families["brume_rule_duration_seconds"][0], "histogram")


# ---- HTTPS -------------------------------------------------------------------

def make_cert(folder, name):
    """A self-signed certificate for 127.0.0.1 and localhost (openssl CLI)."""
    cert, key = os.path.join(folder, name + ".pem"), os.path.join(folder, name + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert, "-days",
                    "2", "-subj", "/CN=" + name, "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class Https(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="brume-tls-")
        self.cert, self.key = make_cert(self.tmp, "first")
        config = CONFIG + """
listen = { { addr = "127.0.0.1:0", tls = { cert = "%s", key = "%s" } } }
""" % (self.cert, self.key)
        self.b = Brume(config, rules={"r.lua": RULE % 1}, workers=2).start()

    def tearDown(self):
        self.b.cleanup()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def context(self, cafile):
        ctx = ssl.create_default_context(cafile=cafile)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def connect(self, cafile=None):
        raw = socket.create_connection(("127.0.0.1", self.b.port), timeout=10)
        return self.context(cafile or self.cert).wrap_socket(raw, server_hostname="localhost")

    def post_on(self, s, body, chunked=False):
        if chunked:
            half = len(body) // 2
            data = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:half], body[half:]))
            s.sendall(b"POST /mist HTTP/1.1\r\nHost: x\r\nX-Mist-Signature-v2: %s\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n%s0\r\n\r\n" % (sign(body).encode(), data))
        else:
            s.sendall(b"POST /mist HTTP/1.1\r\nHost: x\r\nX-Mist-Signature-v2: %s\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (sign(body).encode(), len(body), body))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            self.assertTrue(chunk, head)
            head += chunk
        return head

    def test_https_intake(self):
        s = self.connect()
        self.assertEqual(s.version() in ("TLSv1.2", "TLSv1.3"), True)
        events = []
        for i in range(5):  # keep-alive on one TLS connection
            event, body = ping()
            events.append(event)
            self.assertTrue(self.post_on(s, body.encode(), chunked=i % 2 == 1)
                            .startswith(b"HTTP/1.1 200 OK"))
        # A big body, in more records than one read takes.
        big = json.dumps({"topic": "ping", "events": [{"id": "big", "pad": "x" * 300000}]})
        self.assertTrue(self.post_on(s, big.encode()).startswith(b"HTTP/1.1 200 OK"))
        s.close()
        self.assertEqual(len(versions_by_event(self.b, events + ["big"])), 6)
        # Plain HTTP to the TLS port gets no answer, and the daemon goes on.
        out = self.b.raw(b"POST /mist HTTP/1.1\r\nContent-Length: 0\r\n\r\n", read_timeout=3)
        self.assertFalse(out.startswith(b"HTTP/1.1"))
        # A client that trusts another certificate is refused by its own side.
        other, _ = make_cert(self.tmp, "other")
        with self.assertRaises(ssl.SSLError):
            self.connect(cafile=other)

    def test_certificates_reload_with_the_rules(self):
        old = self.connect()
        second_cert, second_key = make_cert(self.tmp, "second")
        shutil.copy(second_cert, self.cert)
        shutil.copy(second_key, self.key)
        self.b.send_signal(signal.SIGHUP)
        self.b.wait_log("msg=reloaded trigger=SIGHUP")
        time.sleep(0.3)
        s = self.connect(cafile=second_cert)  # new connections: the new certificate
        self.assertTrue(self.post_on(s, ping()[1].encode()).startswith(b"HTTP/1.1 200 OK"))
        s.close()
        # The connection made before goes on with the old one.
        self.assertTrue(self.post_on(old, ping()[1].encode()).startswith(b"HTTP/1.1 200 OK"))
        old.close()


# ---- stopping ----------------------------------------------------------------

class Stop(unittest.TestCase):
    def test_sigterm_under_load_exits_0_and_loses_nothing(self):
        b = Brume(CONFIG + 'http = { drain_timeout = "5s" }\n', rules={"r.lua": RULE % 1},
                  workers=2).start()
        try:
            with Load(b) as load:
                time.sleep(1)
                t0 = time.time()
                b.send_signal(signal.SIGTERM)
                self.assertEqual(b.wait_exit(30), 0)
                self.assertLess(time.time() - t0, 10)
            self.assertGreater(len(load.acked), 20)
            # What was answered 200 is written, or pending for the next start.
            b.start()
            got = versions_by_event(b, load.acked)
            for event in load.acked:
                self.assertEqual(len(got[event]), 1, event)
        finally:
            b.cleanup()


if __name__ == "__main__":
    unittest.main()
