"""The outbox against a mock target on 127.0.0.1: messages reach their
target in its format; 429, 500, timeouts and dropped connections are
retried (Retry-After is a floor); a 400 is a dead letter that `brume outbox`
lists and can re-queue; max_age gives up; rate and concurrency pace each
target without holding up the others; tickets open once per dedup key and
are updated after; Standard Webhooks signatures; secrets never shown, nor
kept in a done delivery's request."""
import base64
import email.utils
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import time
import unittest
import uuid

import harness
from harness import Brume, SRC, run_cli
from mock_target import MockTarget

RULE = """
-- Sends each event's message to the target the event names.
return { topics = "alarms", on_event = function(ev, ctx)
  if ev.raw_url then
    brume.http({ url = ev.raw_url, body = { hello = ev.id }, headers = { ["X-From"] = "brume" } })
    return
  end
  if not ev.target then return end
  brume.send(ev.target, { title = ev.title or ("event " .. ev.id), text = ev.text,
                          severity = ev.severity, dedup_key = ev.key, action = ev.action,
                          fields = ev.fields })
end }
"""


class Outbox(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.m = MockTarget().__enter__()
        m = cls.m
        # A target that never answers: connections complete in the listen
        # backlog, requests go out, and nothing ever comes back.
        cls.hang = socket.socket()
        cls.hang.bind(("127.0.0.1", 0))
        cls.hang.listen(64)
        cls.big_key = bytes(range(256)) * 24  # a 6 KB signing key
        cls.b = Brume("""
sources = { mist = { path = "/mist", secret = "%s" } }
targets = {
  secops = { kind = "slack", url = "%s" },
  retry = { kind = "webhook", url = "%s", backoff = "0.2s" },
  dead = { kind = "webhook", url = "%s" },
  down = { kind = "webhook", url = "%s", backoff = "0.2s", max_age = "1.5s" },
  paced = { kind = "webhook", url = "%s", rate = "5/s" },
  slow = { kind = "webhook", url = "%s", concurrency = 1, timeout = "10s" },
  fast = { kind = "webhook", url = "%s" },
  flaky = { kind = "webhook", url = "%s", timeout = "0.5s", backoff = "0.2s" },
  dropper = { kind = "webhook", url = "%s", backoff = "0.2s" },
  snow = { kind = "servicenow", url = "%s", user = "svc", password = "SNOW-PASSWORD-77",
           backoff = "0.2s" },
  jira = { kind = "jira", url = "%s", project = "OPS", flavor = "cloud", email = "a@b.c",
           token = "JIRA-TOKEN-88", resolve_transition = "31" },
  signed = { kind = "webhook", url = "%s", secret = "whsec_%s", backoff = "0.2s" },
  pd = { kind = "pagerduty", url = "%s", routing_key = "PD-ROUTING-KEY-99" },
  proxied = { kind = "webhook", url = "http://upstream.invalid/hook", proxy = "%s" },
  zd = { kind = "zendesk", url = "%s", email = "a@b.c", token = "ZD-TOKEN-66", backoff = "0.2s" },
  dated = { kind = "webhook", url = "%s", backoff = "0.2s" },
  backoff = { kind = "webhook", url = "%s", backoff = "0.3s" },
  hang = { kind = "webhook", url = "http://127.0.0.1:%d/hang", timeout = "60s" },
  quick = { kind = "webhook", url = "%s" },
  bigsig = { kind = "webhook", url = "%s", secret = "whsec_%s" },
  kept = { kind = "webhook", url = "%s" },
  keyed = { kind = "webhook", url = "%s", headers = { ["X-Api-Key"] = "HOOK-KEY-55" } },
  paged = { kind = "pagerduty", url = "%s", routing_key = "PD-ROUTING-KEY-44" },
}
""" % (harness.SECRET, m.url("/secops"), m.url("/retry"), m.url("/dead"), m.url("/down"),
       m.url("/paced"), m.url("/slow"), m.url("/fast"), m.url("/flaky"), m.url("/dropper"),
       m.url(""), m.url(""), m.url("/signed"), base64.b64encode(b"sign-me").decode(),
       m.url("/pd"), m.url(""), m.url(""), m.url("/dated"), m.url("/backoff"),
       cls.hang.getsockname()[1], m.url("/quick"), m.url("/bigsig"),
       base64.b64encode(cls.big_key).decode(), m.url("/kept"), m.url("/keyed"),
       m.url("/paged")),
            rules={"route.lua": RULE}, workers=2)
        shutil.copy(os.path.join(SRC, "rules", "rogue_ap.lua"), cls.b.path("rules"))
        cls.b.start()

    @classmethod
    def tearDownClass(cls):
        cls.b.cleanup()
        cls.m.__exit__()
        cls.hang.close()

    def post(self, **event):
        event.setdefault("id", str(uuid.uuid4()))
        event.setdefault("type", "test")
        r = self.b.post(json.dumps({"topic": "alarms", "events": [event]}))
        self.assertEqual(r.status, 200)
        return event["id"]

    def outbox(self, *args):
        r = run_cli("outbox", "-c", self.b.config_path, *args)
        return r

    def test_rogue_ap_reaches_slack_in_block_kit(self):
        body = harness.read(os.path.join(harness.FIXTURES, "alarms--rogue-ap-const-alarm-defs.json"))
        self.assertEqual(self.b.post(body).status, 200)
        req = self.m.wait_for(lambda r: len(r) >= 1, path="/secops")[0]
        self.assertEqual(req.method, "POST")
        self.assertEqual(req.headers["content-type"], "application/json")
        msg = req.json()
        self.assertEqual(msg["blocks"][0], {"type": "header", "text": {
            "type": "plain_text", "text": "Rogue AP detected", "emoji": True}})
        self.assertIn("2 rogue BSSIDs", msg["text"])
        self.assertTrue(any(b["type"] == "section" and "fields" in b for b in msg["blocks"]))

    def test_429_and_500_are_retried_and_retry_after_is_a_floor(self):
        self.m.script("/retry", [{"status": 429, "headers": {"Retry-After": "1"}},
                                 {"status": 500, "body": "oops"}, {"status": 200}])
        self.post(target="retry")
        reqs = self.m.wait_for(lambda r: len(r) >= 3, path="/retry")
        self.assertGreaterEqual(reqs[1].time - reqs[0].time, 0.95)  # Retry-After: 1
        self.assertGreaterEqual(reqs[2].time - reqs[1].time, 0.15)  # backoff 0.2s, jittered
        self.assertEqual(reqs[0].body, reqs[2].body)
        time.sleep(0.5)
        self.assertEqual(len(self.m.received("/retry")), 3)  # done after the 200
        self.assertIn('msg="delivery failed; will retry" target=retry', self.b.log())

    def test_400_is_a_dead_letter_that_can_be_retried(self):
        self.m.script("/dead", [{"status": 400, "body": "invalid_payload"}, {"status": 200}])
        self.post(target="dead")
        self.m.wait_for(lambda r: len(r) >= 1, path="/dead")
        self.b.wait_log("msg=\"delivery dead\" target=dead")
        listing = self.outbox("list").stdout
        row = [line for line in listing.splitlines() if " dead " in line and "invalid_payload" in line]
        self.assertEqual(len(row), 1, listing)
        self.assertRegex(row[0], r"^\d+ +dead +dead +1 +400 ")
        delivery = row[0].split()[0]
        r = self.outbox("retry", delivery)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.m.wait_for(lambda r: len(r) >= 2, path="/dead")
        deadline = time.time() + 10
        while delivery in [l.split()[0] for l in self.outbox("list").stdout.splitlines()[1:]]:
            self.assertLess(time.time(), deadline)
            time.sleep(0.1)
        self.assertEqual(self.outbox("retry", "999999").returncode, 1)
        self.assertEqual(self.outbox("retry", "x").returncode, 2)

    def test_gives_up_after_max_age(self):
        self.m.script("/down", [{"status": 503}])
        self.post(target="down")
        self.b.wait_log("msg=\"delivery dead\" target=down", timeout=15)
        self.assertRegex(self.b.log(), r'target=down .*error="gave up after \ds: request: HTTP 503')
        self.assertGreaterEqual(len(self.m.received("/down")), 2)

    def test_rate_paces_a_target(self):
        for _ in range(6):
            self.post(target="paced")
        reqs = self.m.wait_for(lambda r: len(r) >= 6, path="/paced")
        span = reqs[-1].time - reqs[0].time
        self.assertGreaterEqual(span, 0.9)  # 5 gaps at 5/s
        self.assertLess(span, 4)

    def test_a_slow_target_does_not_delay_the_others(self):
        self.m.script("/slow", [{"status": 200, "delay": 3}])
        for _ in range(3):
            self.post(target="slow")
        time.sleep(0.2)
        t0 = time.time()
        for _ in range(3):
            self.post(target="fast")
        self.m.wait_for(lambda r: len(r) >= 3, path="/fast", timeout=5)
        self.assertLess(time.time() - t0, 2)
        self.assertLessEqual(len(self.m.received("/slow")), 1)  # concurrency 1

    def test_retry_after_as_an_http_date_is_a_floor(self):
        when = email.utils.formatdate(time.time() + 3, usegmt=True)
        self.m.script("/dated", [{"status": 503, "headers": {"Retry-After": when}},
                                 {"status": 200}])
        self.post(target="dated")
        reqs = self.m.wait_for(lambda r: len(r) >= 2, path="/dated")
        self.assertGreaterEqual(reqs[1].time - reqs[0].time, 2)  # the date has whole seconds

    def test_backoff_grows_exponentially_with_full_jitter(self):
        self.m.script("/backoff", [{"status": 500}] * 4 + [{"status": 200}])
        self.post(target="backoff")
        reqs = self.m.wait_for(lambda r: len(r) >= 5, path="/backoff", timeout=20)
        gaps = [b.time - a.time for a, b in zip(reqs, reqs[1:])]
        for i, gap in enumerate(gaps):
            # Anywhere from the first wait up to 0.3s * 2^i, plus the loop's slack.
            self.assertGreaterEqual(gap, 0.28, gaps)
            self.assertLessEqual(gap, 0.3 * 2 ** i + 0.5, gaps)
        time.sleep(0.5)
        self.assertEqual(len(self.m.received("/backoff")), 5)

    def test_a_target_that_never_answers_does_not_delay_the_others(self):
        for _ in range(4):
            self.post(target="hang")
        time.sleep(0.3)  # the four requests are out, waiting
        t0 = time.time()
        for _ in range(3):
            self.post(target="quick")
        self.m.wait_for(lambda r: len(r) >= 3, path="/quick", timeout=5)
        self.assertLess(time.time() - t0, 2)

    def test_a_long_signing_key(self):
        self.post(target="bigsig", title="big key")
        r = self.m.wait_for(lambda r: len(r) >= 1, path="/bigsig")[0]
        content = "%s.%s.%s" % (r.headers["webhook-id"], r.headers["webhook-timestamp"], r.body)
        want = hmac.new(self.big_key, content.encode(), hashlib.sha256).digest()
        self.assertEqual(r.headers["webhook-signature"], "v1," + base64.b64encode(want).decode())

    def test_timeouts_and_dropped_connections_are_retried(self):
        self.m.script("/flaky", [{"status": 200, "delay": 2}, {"status": 200}])
        self.m.script("/dropper", [{"close": True}, {"status": 200}])
        self.post(target="flaky")
        self.post(target="dropper")
        self.m.wait_for(lambda r: len(r) >= 2, path="/flaky")
        self.m.wait_for(lambda r: len(r) >= 2, path="/dropper")
        self.b.wait_log(r"target=flaky .*error=\"request: Operation timed out")

    def test_servicenow_incident_is_opened_once_then_updated_then_resolved(self):
        base = "/api/now/table/incident"
        self.m.script(base, [lambda r: {"status": 200, "body": {"result": []}} if r.method == "GET"
                             else {"status": 201, "body": {"result": {"sys_id": "SYS1"}}}])
        self.m.script(base + "/SYS1", [{"status": 200, "body": {"result": {}}}])
        self.post(target="snow", key="KEY-1", title="Core switch down", severity="critical")
        self.m.wait_for(lambda r: any(x.method == "POST" for x in r), path=base)
        self.post(target="snow", key="KEY-1", title="still down")
        self.post(target="snow", key="KEY-1", title="back up", action="resolve")
        patches = self.m.wait_for(lambda r: len(r) >= 2, path=base + "/SYS1")
        posts = [x for x in self.m.received(base) if x.method == "POST" and "KEY-1" in x.body]
        self.assertEqual(len(posts), 1)
        created = posts[0].json()
        self.assertEqual(created["correlation_id"], "KEY-1")
        self.assertEqual(created["short_description"], "Core switch down")
        self.assertEqual((created["urgency"], created["impact"]), ("1", "1"))
        self.assertEqual(posts[0].headers["authorization"],
                         "Basic " + base64.b64encode(b"svc:SNOW-PASSWORD-77").decode())
        self.assertEqual([p.method for p in patches], ["PATCH", "PATCH"])
        self.assertIn("still down", patches[0].json()["work_notes"])
        self.assertEqual(patches[1].json()["state"], "6")
        self.assertIn("back up", patches[1].json()["close_notes"])
        lookups = [x for x in self.m.received(base) if x.method == "GET" and "KEY-1" in x.query]
        self.assertEqual(len(lookups), 1)  # afterwards the stored sys_id is used
        self.assertIn("sysparm_query=correlation_id%3DKEY-1", lookups[0].query)

    def test_servicenow_a_resolved_incident_is_not_updated_again(self):
        base = "/api/now/table/incident"
        made = []

        def answer(r):
            if r.method == "GET":  # the lookup asks for open incidents: there are none
                self.assertIn("active%3Dtrue", r.query)
                return {"status": 200, "body": {"result": []}}
            if "KEY-3" not in r.body:
                return {"status": 201, "body": {"result": {"sys_id": "OTHER"}}}
            made.append("SYS3-%d" % len(made))
            return {"status": 201, "body": {"result": {"sys_id": made[-1]}}}

        self.m.script(base, [answer])
        self.m.script(base + "/SYS3-0", [{"status": 200, "body": {"result": {}}}])
        self.post(target="snow", key="KEY-3", title="down")
        self.post(target="snow", key="KEY-3", title="up", action="resolve")
        self.m.wait_for(lambda r: len(r) >= 1, path=base + "/SYS3-0")
        self.post(target="snow", key="KEY-3", title="down again")  # a new alert
        self.m.wait_for(lambda r: len(made) >= 2, path=base)
        self.assertEqual(made, ["SYS3-0", "SYS3-1"])
        self.assertEqual(self.m.received(base + "/SYS3-0")[0].json()["state"], "6")

    def test_zendesk_ticket_life(self):
        api = "/api/v2/tickets"
        tickets = [{"id": 5, "status": "solved", "external_id": "Z-1"}]

        def listing(r):
            if r.method == "GET":
                return {"status": 200, "body": {"tickets": tickets}}
            tickets.append({"id": 10 + len(tickets), "status": "open", "external_id": "Z-1"})
            return {"status": 201, "body": {"ticket": tickets[-1]}}

        def update(r):
            t = [t for t in tickets if r.path == "%s/%d.json" % (api, t["id"])][0]
            t["status"] = r.json()["ticket"].get("status", t["status"])
            return {"status": 200, "body": {"ticket": t}}

        self.m.script(api + ".json", [listing])
        for n in (11, 12):
            self.m.script("%s/%d.json" % (api, n), [update])
        # The old solved ticket 5 is not reused: a new one opens, takes a
        # comment, is solved; the next alert opens another.
        self.post(target="zd", key="Z-1", title="rogue AP")
        self.post(target="zd", key="Z-1", title="still there")
        self.post(target="zd", key="Z-1", title="gone", action="resolve")
        self.m.wait_for(lambda r: len(r) >= 2, path=api + "/11.json")
        self.post(target="zd", key="Z-1", title="back")
        self.m.wait_for(lambda r: len(tickets) >= 3, path=api + ".json")
        self.assertEqual([t["id"] for t in tickets], [5, 11, 12])
        self.assertEqual([t["status"] for t in tickets], ["solved", "solved", "open"])
        comments = [r.json()["ticket"]["comment"]["body"] for r in self.m.received(api + "/11.json")]
        self.assertIn("still there", comments[0])
        self.assertIn("gone", comments[1])
        self.assertEqual(self.m.received("/api/v2/tickets/5.json"), [])

    def test_servicenow_lost_answer_does_not_open_a_second_incident(self):
        base = "/api/now/table/incident"
        state = {"created": False}

        def answer(r):
            if r.method == "GET":
                found = [{"sys_id": "SYS2"}] if state["created"] else []
                return {"status": 200, "body": {"result": found}}
            if "KEY-2" in r.body:
                state["created"] = True  # it was made, but the answer is lost
                return {"status": 502, "body": "bad gateway"}
            return {"status": 201, "body": {"result": {"sys_id": "OTHER"}}}

        self.m.script(base, [answer])
        self.m.script(base + "/SYS2", [{"status": 200, "body": {"result": {}}}])
        self.post(target="snow", key="KEY-2", title="lost")
        self.m.wait_for(lambda r: len(r) >= 1, path=base + "/SYS2")
        posts = [x for x in self.m.received(base) if x.method == "POST" and "KEY-2" in x.body]
        self.assertEqual(len(posts), 1)

    def test_jira_issue_then_comment_then_transition(self):
        self.m.script("/rest/api/3/search/jql", [{"status": 200, "body": {"issues": []}}])
        self.m.script("/rest/api/3/issue", [{"status": 201, "body": {"id": "1", "key": "OPS-7"}}])
        self.m.script("/rest/api/3/issue/OPS-7/comment", [{"status": 201, "body": {}}])
        self.m.script("/rest/api/3/issue/OPS-7/transitions", [{"status": 204}])
        self.post(target="jira", key="J-1", title="Rogue AP", text="line one\nline two")
        self.m.wait_for(lambda r: len(r) >= 1, path="/rest/api/3/issue")
        self.post(target="jira", key="J-1", title="again")
        self.post(target="jira", key="J-1", title="fixed", action="resolve")
        self.m.wait_for(lambda r: len(r) >= 1, path="/rest/api/3/issue/OPS-7/transitions")
        issue = self.m.received("/rest/api/3/issue")
        self.assertEqual(len(issue), 1)
        fields = issue[0].json()["fields"]
        self.assertEqual(fields["project"], {"key": "OPS"})
        self.assertEqual(fields["summary"], "Rogue AP")
        self.assertEqual(fields["description"]["type"], "doc")
        self.assertEqual(len(fields["description"]["content"]), 2)
        self.assertTrue(any(l.startswith("brume-") for l in fields["labels"]))
        comment = self.m.received("/rest/api/3/issue/OPS-7/comment")[0].json()
        self.assertEqual(comment["body"]["type"], "doc")
        tr = self.m.received("/rest/api/3/issue/OPS-7/transitions")[0].json()
        self.assertEqual(tr["transition"], {"id": "31"})

    def test_standard_webhooks_signature(self):
        self.m.script("/signed", [{"status": 500}, {"status": 200}])
        self.post(target="signed", title="signed")
        reqs = self.m.wait_for(lambda r: len(r) >= 2, path="/signed")
        key = b"sign-me"
        for r in reqs:
            mid, ts = r.headers["webhook-id"], r.headers["webhook-timestamp"]
            want = base64.b64encode(hmac.new(key, ("%s.%s.%s" % (mid, ts, r.body)).encode(),
                                             hashlib.sha256).digest()).decode()
            self.assertEqual(r.headers["webhook-signature"], "v1," + want)
            self.assertLess(abs(int(ts) - time.time()), 30)
        self.assertEqual(reqs[0].headers["webhook-id"], reqs[1].headers["webhook-id"])

    def test_secrets_are_never_shown(self):
        self.m.script("/pd", [lambda r: {"status": 400, "body": "bad request: " + r.body}])
        self.post(target="pd", title="page")
        self.b.wait_log('msg="delivery dead" target=pd')
        listing = self.outbox("list").stdout
        self.assertIn("****", listing)
        for secret in ("PD-ROUTING-KEY-99", "SNOW-PASSWORD-77", "JIRA-TOKEN-88"):
            self.assertNotIn(secret, listing)
            self.assertNotIn(secret, self.b.log())

    def test_a_done_delivery_keeps_its_request_unless_it_holds_a_secret(self):
        # A secret URL stays with a done delivery anyway: its message stays
        # too, for the console. A secret header or body goes once it is done.
        ids = {t: self.post(target=t, title="kept or not") for t in ("kept", "keyed", "paged")}
        for path in ("/kept", "/keyed", "/paged"):
            self.m.wait_for(lambda r: len(r) >= 1, path=path)
        deadline = time.time() + 15
        while True:
            db = sqlite3.connect(self.b.path("var", "brume.db"))
            try:
                rows = {target: (headers, body) for target, headers, body in db.execute(
                    "SELECT d.target, d.headers, d.body FROM deliveries d"
                    " LEFT JOIN queue q ON q.id = d.id WHERE q.id IS NULL AND d.event IN (?, ?, ?)",
                    tuple(ids.values()))}
            finally:
                db.close()
            if len(rows) == 3:
                break
            self.assertLess(time.time(), deadline, rows)
            time.sleep(0.1)
        self.assertIn(b"kept or not", bytes(rows["kept"][1]))
        self.assertEqual(rows["keyed"], (None, None))
        self.assertEqual(rows["paged"], (None, None))
        listing = self.outbox("list", "--all").stdout
        done = [l.split() for l in listing.splitlines()[1:]]
        for target in ("kept", "keyed", "paged"):
            row = [c for c in done if c[2] == target]
            self.assertEqual((row[0][1], row[0][3]), ("done", "1"), listing)

    def test_brume_http_and_proxies(self):
        self.post(raw_url=self.m.url("/raw"))
        r = self.m.wait_for(lambda r: len(r) >= 1, path="/raw")[0]
        self.assertEqual(r.json()["hello"][:0], "")
        self.assertEqual(r.headers["content-type"], "application/json")
        self.assertEqual(r.headers["x-from"], "brume")
        self.post(target="proxied", title="via proxy")
        r = self.m.wait_for(lambda r: len(r) >= 1, path="/hook")[0]
        self.assertEqual(r.headers["host"], "upstream.invalid")


class Restart(unittest.TestCase):
    def test_pending_deliveries_survive_a_restart(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()  # nothing listens there: connections are refused
        b = Brume("""
sources = { mist = { path = "/mist", secret = "%s" } }
targets = { later = { kind = "webhook", url = "http://127.0.0.1:%d/later", backoff = "0.2s" } }
""" % (harness.SECRET, port), rules={"route.lua": RULE}, workers=1).start()
        try:
            body = json.dumps({"topic": "alarms", "events": [{"id": "r1", "target": "later"}]})
            self.assertEqual(b.post(body).status, 200)
            b.wait_log(r'target=later .*error="request: (Couldn.t connect|Failed to connect)')
            self.assertEqual(b.stop(), 0)
            self.assertIn(" pending ", run_cli("outbox", "-c", b.config_path).stdout)
            with MockTarget(port) as m:
                b.start()
                r = m.wait_for(lambda r: len(r) >= 1, path="/later")[0]
                self.assertEqual(r.json()["title"], "event r1")
        finally:
            b.cleanup()


if __name__ == "__main__":
    unittest.main()
