"""Backfill from Mist's delivery log, through the real daemon and a mock of
Mist's API (mock_mist.py): every event Mist failed to deliver is run once
and nothing twice (paged windows, a 429 in the middle, a body brume has
already, an org and a site copy of one event); the catch-up at start runs
before timers, so an AP that came back while brume was stopped cancels its
hold-down; a schedule; a bad token and an API that cannot be reached end
with a clear message and exit 1; a dry run stores nothing; the token shows
nowhere but in the Authorization header."""
import copy
import json
import os
import re
import sqlite3
import time
import unittest
import uuid

import harness
from harness import Brume
from mock_mist import MockMist

TOKEN = "mist-test-token-8f2c"  # distinctive, to look for it where it must not be
ORG, SITE = str(uuid.uuid4()), str(uuid.uuid4())
WH_ORG, WH_SITE = str(uuid.uuid4()), str(uuid.uuid4())

SOURCES = """
sources = {
  org = { path = "/mist", secret = "%(secret)s", dedupe = "1h",
          mist = { api = "%(api)s", token = env("MIST_API_TOKEN"), org_id = "%(org)s",
                   webhook_id = "%(wh_org)s" %(extra)s } },
  site = { path = "/mist-site", secret = "%(secret)s", dedupe = "1h",
           mist = { api = "%(api)s", token = env("MIST_API_TOKEN"), site_id = "%(site)s",
                    webhook_id = "%(wh_site)s" %(extra)s } },
}
targets = { out = { kind = "file", path = "var/out.jsonl" } }
"""

# Every event it sees, with what ctx says of it.
ECHO = """
return {
  topics = { "alarms", "audits", "device-updowns" },
  on_event = function(ev, ctx)
    brume.send("out", { topic = ctx.topic, id = ev.id, source = ctx.source,
                        backfilled = ctx.backfilled == true })
  end,
}"""

# device_down.lua's hold-down, on device-updowns (a topic Mist keeps
# delivery results for), with a short wait.
HOLDDOWN = """
return require "brume.holddown" {
  topics = "device-updowns",
  key = function(ev) return ev.ap end,
  down = function(ev) return ev.type == "AP_DISCONNECTED" end,
  up = function(ev) return ev.type == "AP_CONNECTED" end,
  after = "3s",
  send = function(ev, action, ctx)
    brume.send("out", { page = action, ap = ctx.key })
  end,
}"""

FIXTURES = ["alarms--rogue-ap-const-alarm-defs.json", "audits--update-site-settings-delivery-log.json",
            "device-updowns--openapi-schema-example.json"]


def sample(i, event_id, **fields):
    """A real sample body (one of FIXTURES, by I), its event given EVENT_ID
    and FIELDS; its topic."""
    doc = json.loads(harness.read(os.path.join(harness.FIXTURES, FIXTURES[i % len(FIXTURES)])))
    doc = copy.deepcopy(doc)
    doc["events"] = doc["events"][:1]
    doc["events"][0]["id"] = event_id
    doc["events"][0].update(fields)
    return doc["topic"], json.dumps(doc)


def updown(ap, kind, at):
    return json.dumps({"topic": "device-updowns", "events": [
        {"ap": ap, "ap_name": "ap-" + ap, "type": kind, "org_id": ORG, "site_id": SITE,
         "timestamp": at}]})


def backfill(b, *args, env=None):
    e = {"MIST_API_TOKEN": TOKEN}
    e.update(env or {})
    return harness.run_cli("backfill", "-c", b.config_path, *args, env=e, timeout=120)


def bodies_in_store(b):
    db = sqlite3.connect("file:%s?mode=ro" % b.path("var", "brume.db"), uri=True)
    try:
        return db.execute("SELECT count(*), coalesce(sum(backfilled), 0) FROM bodies").fetchone()
    finally:
        db.close()


class Backfill(unittest.TestCase):
    def setUp(self):
        self.mist = MockMist(tokens={TOKEN}).__enter__()
        self.brumes = []

    def tearDown(self):
        for b in self.brumes:
            b.cleanup()
        self.mist.__exit__(None, None, None)

    def brume(self, rules=None, extra="", token=TOKEN, api=None):
        config = SOURCES % {"secret": harness.SECRET, "api": api or self.mist.url, "org": ORG,
                            "site": SITE, "wh_org": WH_ORG, "wh_site": WH_SITE, "extra": extra}
        b = Brume(config, rules=rules or {"echo.lua": ECHO}, env={"MIST_API_TOKEN": token})
        self.brumes.append(b)
        return b

    def no_token_anywhere(self, b, *outputs):
        self.assertNotIn(TOKEN, b.log())
        for out in outputs:
            self.assertNotIn(TOKEN, out)
        for r in self.mist.searches():
            self.assertNotIn(TOKEN, r.path + "?" + r.query)
            self.assertIn(r.headers.get("authorization"), ("Token " + TOKEN, "Token wrong-token-77aa"))

    def test_every_missed_event_runs_once_and_nothing_twice(self):
        b = self.brume().start()
        b.wait_log("caught up from Mist's delivery log")
        # One event came live, and Mist logged its post as failed anyway
        # (brume stored it, the answer was late): its bytes are in the journal.
        _, live = sample(0, "live-1")
        posted = time.time()
        self.assertEqual(b.post(live).status, 200)
        base = int(time.time()) - 1800
        m = self.mist
        ids = []
        for i in range(250):  # three a second: a page ends in the middle of one
            topic, body = sample(i, "org-%d" % i)
            m.add(webhook=WH_ORG, org=ORG, topic=topic, ts=base + i // 3 + 0.25, body=body)
            ids.append("org-%d" % i)
            if i % 10 == 0:  # delivered: not in a search for failures
                m.add(webhook=WH_ORG, org=ORG, topic=topic, ts=base + i // 3 + 0.5,
                      body=sample(i, "ok-%d" % i)[1], status="success")
        m.add(webhook=str(uuid.uuid4()), org=ORG, topic="alarms", ts=base + 5,
              body=sample(0, "other-webhook")[1])
        m.add(webhook=WH_ORG, org=ORG, topic="alarms", ts=posted, body=live)
        # One event, at organisation and at site level: two webhooks, two
        # bodies (written differently), one event.
        event = json.loads(sample(0, "both-1")[1])
        m.add(webhook=WH_ORG, org=ORG, topic="alarms", ts=base + 91, body=json.dumps(event))
        m.add(webhook=WH_SITE, site=SITE, topic="alarms", ts=base + 91.5,
              body=json.dumps(event, indent=1, sort_keys=True))
        before = len(m.searches())
        m.fault(429, {"Retry-After": "1"}, at=before + 1)

        r = backfill(b, "--since", "1h")
        self.assertEqual(r.returncode, 0, r.stderr + r.stdout)
        # Sources run one after the other, in no set order: the first to meet
        # the event takes it, the other's copy is a duplicate.
        self.assertRegex(r.stdout, r"source org: .*: 252 found, 25[01] taken, [12] skipped, 0 failed "
                                   r"\(4 requests, 25[01] messages queued\)")
        self.assertRegex(r.stdout, r"source site: .*: 1 found, [01] taken, [01] skipped, 0 failed")
        self.assertRegex(r.stdout, r"total: 253 found, 251 taken, 2 skipped, 0 failed")
        self.assertEqual(len(re.findall(r"skipped +org +alarms .* in the journal already", r.stdout)), 1)
        self.assertEqual(len(re.findall(r"skipped +\w+ +alarms .* its events were run already "
                                        r"\(dedupe\)", r.stdout)), 1)

        got = b.wait_lines("out.jsonl", 252)
        seen = [x["message"]["id"] for x in got]
        self.assertEqual(len(seen), 252)
        self.assertEqual(sorted(seen), sorted(ids + ["live-1", "both-1"]))  # each once
        self.assertEqual({x["message"]["backfilled"] for x in got if x["message"]["id"] != "live-1"},
                         {True})
        self.assertEqual([x["message"]["backfilled"] for x in got if x["message"]["id"] == "live-1"],
                         [False])
        self.assertEqual(bodies_in_store(b), (253, 252))  # the live one, 251, the other copy

        metrics = b.metrics()

        def total(outcome):
            return sum(metrics.get('brume_backfill_bodies_total{source="%s",outcome="%s"}' %
                                   (src, outcome), 0) for src in ("org", "site"))

        self.assertEqual((total("taken"), total("skipped"), total("failed")), (251, 2, 0))
        self.assertEqual(metrics.get('brume_backfill_requests_total{source="org",status="429"}'), 1)
        self.assertEqual(metrics.get('brume_backfill_requests_total{source="org",status="200"}'), 4)
        self.assertEqual(metrics.get('brume_backfill_requests_total{source="site",status="200"}'), 2)
        self.assertEqual(metrics.get("brume_duplicate_events_total"), 1)

        run = m.searches()[before:]
        self.assertEqual(len(run), 5)  # org: 3 pages and a 429; site: 1 page
        for x in run:
            self.assertEqual(x.params["status"], "failure")
            self.assertEqual(x.params["sort"], "timestamp")
            self.assertEqual(x.params["limit"], "100")
        org = [x for x in run if x.path.startswith("/api/v1/orgs/%s/webhooks/%s/" % (ORG, WH_ORG))]
        site = [x for x in run if x.path.startswith("/api/v1/sites/%s/webhooks/%s/" % (SITE, WH_SITE))]
        self.assertEqual((len(org), len(site)), (4, 1))
        starts = [int(x.params["start"]) for x in org]
        again = [i for i in range(3) if starts[i] == starts[i + 1]]
        self.assertEqual(len(again), 1)  # the 429's page, asked for again...
        self.assertGreaterEqual(org[again[0] + 1].time - org[again[0]].time, 0.9)  # ...after its wait
        pages = sorted(set(starts))
        self.assertEqual(len(pages), 3)
        self.assertEqual(pages[1], int(base) + 33)  # the second of page 1's last result
        gaps = [y.time - x.time for x, y in zip(run, run[1:])]
        self.assertGreaterEqual(min(gaps), 0.6, gaps)  # paced (0.75 s, less what latency takes)

        # Again: all of it is in the journal now; nothing runs.
        r2 = backfill(b, "--since", "1h")
        self.assertEqual(r2.returncode, 0, r2.stderr)
        self.assertRegex(r2.stdout, r"source org: .*: 252 found, 0 taken, 252 skipped")
        self.assertRegex(r2.stdout, r"source site: .*: 1 found, 0 taken, 1 skipped")
        # Every body is journaled: the live one near when Mist logged its
        # post, those backfill handed in (the copy dedupe skipped too) when
        # taken, long after: found by their digest.
        self.assertEqual(len(re.findall(r"skipped +\w+ +\S+ .* in the journal already", r2.stdout)),
                         253, r2.stdout)
        time.sleep(0.5)
        self.assertEqual(len(b.lines("out.jsonl")), 252)
        self.no_token_anywhere(b, r.stdout, r.stderr, r2.stdout, r2.stderr)

    def test_a_body_logged_far_from_when_it_came_is_stopped_by_dedupe(self):
        # brume's clock and Mist's 25 minutes apart: the live body is not
        # looked for that far from when Mist says it posted it (the look is
        # bounded), and the source's dedupe keeps its event from running twice.
        b = self.brume().start()
        b.wait_log("caught up from Mist's delivery log")
        _, live = sample(0, "skewed-1")
        self.assertEqual(b.post(live).status, 200)
        b.wait_lines("out.jsonl", 1)
        self.mist.add(webhook=WH_ORG, org=ORG, topic="alarms", ts=time.time() - 1500, body=live)
        r = backfill(b, "--source", "org", "--since", "1h")
        self.assertEqual(r.returncode, 0, r.stderr + r.stdout)
        self.assertRegex(r.stdout, r"skipped +org +alarms .* its events were run already \(dedupe\)")
        self.assertNotIn("in the journal already", r.stdout)
        time.sleep(0.5)
        self.assertEqual([x["message"]["id"] for x in b.lines("out.jsonl")], ["skewed-1"])

    def test_catch_up_at_start_cancels_the_hold_down_of_an_ap_that_came_back(self):
        b = self.brume(rules={"echo.lua": ECHO, "hold.lua": HOLDDOWN})
        b.start()
        b.wait_log("caught up from Mist's delivery log")
        t0 = time.time()
        self.assertEqual(b.post(updown("ap1", "AP_DISCONNECTED", t0)).status, 200)
        self.assertEqual(b.post(updown("ap2", "AP_DISCONNECTED", t0)).status, 200)
        self.assertEqual(b.stop(), 0)
        # While brume is stopped: ap1 comes back, an alarm is raised, and
        # Mist cannot post either; the hold-downs come due.
        m = self.mist
        m.add(webhook=WH_ORG, org=ORG, topic="device-updowns", ts=time.time(),
              body=updown("ap1", "AP_CONNECTED", time.time()))
        topic, alarm = sample(0, "missed-1")
        m.add(webhook=WH_ORG, org=ORG, topic=topic, ts=time.time() + 0.5, body=alarm)
        time.sleep(4)
        before = len(m.searches())
        m.slow(1.5)  # a slow API: timers that did not wait would fire meanwhile
        b.start()
        b.wait_log("caught up from Mist's delivery log", timeout=30)
        got = b.wait_lines("out.jsonl", 4, timeout=20)  # 2 live downs, ap1's up, the alarm...
        time.sleep(2)  # ...and ap2's page, once timers go
        got = [x["message"] for x in b.lines("out.jsonl")]
        pages = [x for x in got if "page" in x]
        self.assertEqual(pages, [{"page": "trigger", "ap": "ap2"}])  # ap1 came back: no page
        self.assertIn({"topic": "alarms", "id": "missed-1", "source": "org", "backfilled": True},
                      got)
        log = b.log()[b._since:]
        self.assertLess(log.index("caught up from Mist's delivery log"), len(log))
        # Back to the last body the journal held of the source, less a
        # margin: not the whole catch_up (24h), as for the other source,
        # which has none.
        org = [x for x in m.searches()[before:] if "/orgs/" in x.path]
        site = [x for x in m.searches()[before:] if "/sites/" in x.path]
        self.assertEqual((len(org), len(site)), (1, 1))
        self.assertAlmostEqual(int(org[0].params["start"]), t0 - 300, delta=5)
        self.assertAlmostEqual(int(site[0].params["start"]), time.time() - 86400, delta=60)
        self.assertRegex(log, r'msg="backfill done" source=org run=catch-up .*found=2 taken=2')
        self.assertEqual(b.metrics().get(
            'brume_backfill_bodies_total{source="org",outcome="taken"}'), 2)
        self.no_token_anywhere(b)

    def test_a_restart_during_the_catch_up_reads_on_from_where_it_stopped(self):
        b = self.brume()
        base = int(time.time()) - 3000
        for i in range(250):  # 3 pages, 10 s apart: nothing in the last 8 minutes
            topic, body = sample(i, "gap-%d" % i)
            self.mist.add(webhook=WH_ORG, org=ORG, topic=topic, ts=base + 10 * i + 0.5, body=body)
        # The org's second page is refused for a long while: brume stops there.
        self.mist.fault(429, {"Retry-After": "600"},
                        at=lambda q: "/orgs/" in q.path and int(q.params["start"]) > base)
        b.start()
        b.wait_log("answered 429 \\(rate limit\\): waiting", timeout=30)
        self.assertEqual(len(b.wait_lines("out.jsonl", 100)), 100)  # page 1, stored
        self.assertTrue(os.path.exists(b.path("var", "catch-up.org")))
        self.assertEqual(b.stop(), 0)
        # What it took is newer in the journal than what it did not read:
        # the next catch-up reads on from its mark, not from those.
        b.start()
        b.wait_log("caught up from Mist's delivery log", timeout=60)
        got = b.wait_lines("out.jsonl", 250, timeout=30)
        time.sleep(0.5)
        ids = [x["message"]["id"] for x in b.lines("out.jsonl")]
        self.assertEqual(sorted(ids), sorted("gap-%d" % i for i in range(250)))  # each once
        self.assertEqual(len(got), 250)
        self.assertFalse(os.path.exists(b.path("var", "catch-up.org")))  # done: no mark
        self.assertRegex(b.log(), r'msg="backfill done" source=org run=catch-up .*taken=150')
        self.no_token_anywhere(b)

    def test_a_schedule_picks_up_what_failed_while_brume_ran(self):
        b = self.brume(extra=', every = "1s"').start()
        b.wait_log("caught up from Mist's delivery log")
        topic, body = sample(1, "blip-1")
        self.mist.add(webhook=WH_SITE, site=SITE, topic=topic, ts=time.time(), body=body)
        got = b.wait_lines("out.jsonl", 1, timeout=20)
        self.assertEqual(got[0]["message"], {"topic": "audits", "id": "blip-1", "source": "site",
                                             "backfilled": True})
        b.wait_log(r'msg="backfill done" source=site run=schedule .*taken=1')
        time.sleep(2.5)  # later runs find it again, in the journal
        self.assertEqual(len(b.lines("out.jsonl")), 1)
        # A run that Mist refuses leaves its window to the next one.
        before = len(self.mist.searches())
        self.mist.fault(401, at=lambda q: "/sites/" in q.path)
        b.wait_log(r'msg="backfill stopped" source=site run=schedule .*answered 401')
        deadline = time.time() + 20
        while time.time() < deadline:
            site = [x for x in self.mist.searches()[before:] if "/sites/" in x.path]
            if len(site) >= 2:
                break
            time.sleep(0.2)
        self.assertEqual(site[1].params["start"], site[0].params["start"])  # read again
        # The admin endpoint `brume backfill` uses: a change, as the console's.
        r = b.request("POST", "/backfill?dry_run=1", admin=True)
        self.assertEqual(r.status, 403)
        self.assertIn("X-Brume-Console", r.body)
        h = {"X-Brume-Console": "1"}
        r = b.request("POST", "/backfill?since=soon", headers=h, admin=True)
        self.assertEqual((r.status, r.body.split(":")[0]), (400, "error"))
        r = b.request("POST", "/backfill?source=nope", headers=h, admin=True)
        self.assertEqual(r.status, 400)
        self.assertIn("no source named nope", r.body)
        r = b.request("POST", "/backfill?dry_run=1&source=site&since=%d" % (time.time() - 600),
                      headers=h, admin=True)
        self.assertEqual(r.status, 200, r.body)
        self.assertRegex(r.body, r"would skip +site +audits .* in the journal already")
        self.no_token_anywhere(b, r.body)

    def test_a_bad_token_says_what_it_lacks_and_exits_1(self):
        b = self.brume(token="wrong-token-77aa")
        b.start()
        # The catch-up at start stops at the first 401, says why, and lets
        # timers go.
        b.wait_log("caught up from Mist's delivery log")
        self.assertRegex(b.log(), r'msg="backfill stopped" source=org run=catch-up .*answered 401')
        r = backfill(b, "--source", "org", env={"MIST_API_TOKEN": "wrong-token-77aa"})
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("source org: Mist's API answered 401: the token (sources.org.mist.token) "
                      "cannot read the webhooks of org %s; it needs read access to them (an API "
                      "token of an Observer or better)" % ORG, r.stderr)
        self.assertNotIn("wrong-token-77aa", r.stdout + r.stderr + b.log())
        self.assertEqual(b.stop(), 0)
        # And with no brume running: the same.
        r = backfill(b, "--source", "site", env={"MIST_API_TOKEN": "wrong-token-77aa"})
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("answered 401", r.stderr)
        self.assertIn("webhooks of site %s" % SITE, r.stderr)
        self.assertNotIn("wrong-token-77aa", r.stdout + r.stderr)
        searches = [x for x in self.mist.searches() if SITE in x.path]
        self.assertEqual(len(searches), 2)  # one at the catch-up, one now: no retry

    def test_a_stop_does_not_wait_for_the_rate_limit(self):
        self.mist.fault(429, {"Retry-After": "600"}, at=0)
        b = self.brume().start()
        b.wait_log("answered 429 \\(rate limit\\): waiting")
        t = time.time()
        self.assertEqual(b.stop(), 0)
        self.assertLess(time.time() - t, 10)
        self.assertRegex(b.log(), r'msg="backfill stopped" source=\w+ run=catch-up .*brume is '
                                  r'stopping')

    def test_an_api_that_cannot_be_reached_exits_1(self):
        b = self.brume(api="http://127.0.0.1:1")
        r = backfill(b, "--source", "org")
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertRegex(r.stderr, r"source org: cannot reach Mist's API \(127\.0\.0\.1:1\): ")
        self.assertNotIn(TOKEN, r.stdout + r.stderr)

    def test_answers_that_decode_to_too_much_are_refused_within_a_bound(self):
        b = self.brume()
        # A page of 4 MB of empty lists: 100 MB as Lua tables.
        flood = b'{"results":[' + b"[]," * ((4 << 20) // 3) + b'[]]}'
        self.mist.fault(200, body=flood, at=0)
        r = backfill(b, "--dry-run", "--source", "org", "--since", "1h")
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertRegex(r.stderr, r"source org: Mist's API answered a page of 4194\d+ bytes that "
                                   r"takes more than 48 MB decoded")
        # A body of 2 MB of them fails alone; the one after it is taken.
        now = time.time()
        self.mist.add(webhook=WH_ORG, org=ORG, topic="alarms", ts=now - 60,
                      body='{"topic":"alarms","events":[' + "[]," * ((2 << 20) // 3) + "[]]}")
        self.mist.add(webhook=WH_ORG, org=ORG, topic="alarms", ts=now - 50,
                      body=sample(0, "after-the-flood")[1])
        r = backfill(b, "--source", "org", "--since", "1h")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"failed +org +alarms .*not a Mist webhook body: it takes more "
                                   r"than 32 MB decoded")
        self.assertRegex(r.stdout, r"source org: .*: 2 found, 1 taken, 0 skipped, 1 failed")
        b.start()
        got = b.wait_lines("out.jsonl", 1)
        self.assertEqual(got[0]["message"]["id"], "after-the-flood")

    def test_a_dry_run_stores_nothing_and_says_why(self):
        b = self.brume().start()
        b.wait_log("caught up from Mist's delivery log")
        topic, have = sample(0, "have-1")
        self.assertEqual(b.post(have).status, 200)
        now = time.time()
        m = self.mist
        m.add(webhook=WH_ORG, org=ORG, topic=topic, ts=now - 60, body=have)
        t2, other = sample(2, "new-1")
        m.add(webhook=WH_ORG, org=ORG, topic=t2, ts=now - 30, body=other)
        m.add(webhook=WH_ORG, org=ORG, topic="alarms", ts=now - 20, body='{"not": "mist"}')
        for running in (True, False):
            stored = bodies_in_store(b) if not running else None
            r = backfill(b, "--dry-run", "--source", "org", "--since", "10m")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertRegex(r.stdout, r"would skip +org +alarms +\d{4}-\d\d-\d\dT[\d:.]+Z +1 event "
                                       r"+in the journal already")
            self.assertRegex(r.stdout, r"would take +org +device-updowns +\S+ +1 event")
            self.assertRegex(r.stdout, r"would fail +org +alarms +\S+ +- +not a Mist webhook body")
            self.assertRegex(r.stdout, r"source org: .*: 3 found, 1 to take, 1 skipped, 1 failed")
            if running:
                time.sleep(0.5)
                self.assertEqual(len(b.lines("out.jsonl")), 1)  # the live one only
                self.assertFalse([k for k in b.metrics() if k.startswith("brume_backfill_bodies")])
                self.assertEqual(b.stop(), 0)
            else:
                self.assertEqual(bodies_in_store(b), stored)
            self.no_token_anywhere(b, r.stdout, r.stderr)

    def test_with_no_brume_running_it_takes_them_in_for_the_next_start(self):
        b = self.brume(extra=", catch_up = 0")
        now = time.time()
        for i in range(3):
            topic, body = sample(i, "down-%d" % i)
            self.mist.add(webhook=WH_ORG, org=ORG, topic=topic, ts=now - 100 + i, body=body)
        self.mist.fault(503, at=0)  # tried again, after a second
        r = backfill(b, "--since", "1h", "--source", "org")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"source org: .*: 3 found, 3 taken, 0 skipped, 0 failed "
                                   r"\(2 requests, 3 messages queued\)")
        self.assertIn("note: brume is not running: the 3 messages queued go out when it starts",
                      r.stdout)
        self.assertIn("backfill: Mist's API failed: trying again", r.stderr)
        org = [x for x in self.mist.searches() if "/orgs/" in x.path]
        self.assertGreaterEqual(org[1].time - org[0].time, 0.85)
        self.assertEqual(bodies_in_store(b), (3, 3))
        self.assertEqual(b.lines("out.jsonl"), [])
        b.start()
        got = b.wait_lines("out.jsonl", 3)
        self.assertEqual(sorted(x["message"]["id"] for x in got), ["down-0", "down-1", "down-2"])
        r = backfill(b, "--since", "1h")  # through the running brume now: all in the journal
        self.assertRegex(r.stdout, r"source org: .*: 3 found, 0 taken, 3 skipped")
        # A replay of them says they were backfilled, as the first run did.
        p = harness.run_cli("replay", "-c", b.config_path, "--since", "1h",
                            env={"MIST_API_TOKEN": TOKEN})
        self.assertEqual(p.returncode, 0, p.stderr)
        replayed = [json.loads(line)["message"] for line in p.stdout.splitlines()]
        self.assertEqual(len(replayed), 3)
        self.assertEqual({x["backfilled"] for x in replayed}, {True})
        self.no_token_anywhere(b, r.stdout, r.stderr)

    def test_an_offline_backfill_of_the_last_hour_does_not_hide_the_outage_before_it(self):
        b = self.brume().start()
        self.assertEqual(b.post(sample(0, "live-before")[1]).status, 200)
        self.assertEqual(b.stop(), 0)
        # That post came two hours ago; brume has been down since.
        db = sqlite3.connect(b.path("var", "brume.db"))
        db.execute("UPDATE bodies SET received = received - 7200")
        db.commit()
        db.close()
        now = time.time()
        for ts, name in ((now - 5400, "in-the-outage"), (now - 600, "last-hour")):
            topic, body = sample(0, name)
            self.mist.add(webhook=WH_ORG, org=ORG, topic=topic, ts=ts, body=body)
        r = backfill(b, "--since", "1h", "--source", "org")
        self.assertRegex(r.stdout, r"source org: .*: 1 found, 1 taken, 0 skipped")
        # The catch-up reads back from the last post, not from what the
        # backfill took: the outage's failure is taken, the hour's skipped.
        b.start()
        b.wait_log("caught up from Mist's delivery log", timeout=60)
        self.assertRegex(b.log(), r'msg="backfill done" source=org run=catch-up .*found=2 '
                                  r'taken=1 skipped=1')
        got = b.wait_lines("out.jsonl", 3)
        self.assertEqual(sorted(x["message"]["id"] for x in got),
                         ["in-the-outage", "last-hour", "live-before"])

    def test_a_second_with_more_than_a_page_moves_on_and_says_so(self):
        b = self.brume()
        base = int(time.time()) - 600
        for i in range(130):
            self.mist.add(webhook=WH_ORG, org=ORG, topic="alarms", ts=base + 0.5,
                          body=sample(0, "burst-%d" % i)[1])
        self.mist.add(webhook=WH_ORG, org=ORG, topic="alarms", ts=base + 10.5,
                      body=sample(0, "after")[1])
        r = backfill(b, "--dry-run", "--source", "org", "--since", "20m")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"note: source org: more than 100 failures in the second of "
                                   r"\S+: some of them may be missed")
        self.assertRegex(r.stdout, r"source org: .*: 101 found, 101 to take, 0 skipped, 0 failed "
                                   r"\(3 requests\)")
        self.assertIn("a whole page of failures in one second", r.stderr)
        # On to the burst's second, which fills a page again: on by a second.
        starts = [int(x.params["start"]) for x in self.mist.searches()]
        self.assertEqual(starts[1:], [base, base + 1])

    def test_pages_smaller_than_asked_for_are_read_to_the_end(self):
        # A Mist that gives 40 a page, whatever the limit asked: a page of 40
        # is full, and the window goes on after it.
        self.mist.max_limit = 40
        b = self.brume()
        base = int(time.time()) - 900
        for i in range(100):
            self.mist.add(webhook=WH_ORG, org=ORG, topic="alarms", ts=base + i * 3 + 0.5,
                          body=sample(0, "small-page-%d" % i)[1])
        r = backfill(b, "--dry-run", "--source", "org", "--since", "20m")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"source org: .*: 100 found, 100 to take, 0 skipped, 0 failed")
        self.assertNotIn("more than", r.stdout)
        self.assertGreaterEqual(len(self.mist.searches()), 3)

    def test_usage_and_config_errors(self):
        b = self.brume()
        r = backfill(b, "--source", "nope")
        self.assertEqual(r.returncode, 1)
        self.assertIn("no source named nope", r.stderr)
        r = backfill(b, "--since", "1h", "--until", "2h")
        self.assertEqual(r.returncode, 2)
        self.assertIn("is not after --since", r.stderr)
        r = backfill(b, "--since", "yesterday")
        self.assertEqual(r.returncode, 2)
        r = harness.run_cli("backfill", "--help")
        self.assertEqual(r.returncode, 0)
        self.assertIn("--dry-run", r.stdout)


if __name__ == "__main__":
    try:
        unittest.main()
    finally:
        harness.stop_all()
