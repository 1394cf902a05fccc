"""The operator's console in a real browser.

Headless Chromium from Debian (chromium, chromium-driver, python3-selenium:
`./build.sh test` installs them) drives the console of the real daemon:
each view loads, signed events appear in the journal, an event shows its
body and what each rule did (an error with its file:line), a dead delivery
is retried from the page and delivered to a mock target, the playground runs
a payload against the rules and an edited, unsaved copy of one, and the
browser's console logs no error. The API's access rules are checked over
HTTP: the token where the config has one, loopback Host and peer, and the
header every change needs. The test reads the DOM; no screenshot is taken.
Every process it starts is stopped by its pid.
"""
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import unittest

import harness
from harness import Brume, sign
from mock_target import MockTarget

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError as e:  # a failure, not a skip: build.sh test installs it
    sys.exit("browser_console: %s: install chromium, chromium-driver and python3-selenium "
             "(./build.sh test does), and run this with Debian's python3" % e)

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 15  # seconds for the page to show what the daemon did (sanitizer builds are slow)

RULES = {
    "10_page.lua": 'return {\n'
                   '  topics = { "alarms" },\n'
                   '  on_event = function(ev, ctx)\n'
                   '    brume.send("hook", { title = "alarm " .. tostring(ev.type), text = ev.id })\n'
                   '  end,\n'
                   '}\n',
    "20_check.lua": 'return {\n'
                    '  topics = "*",\n'
                    '  on_event = function(ev, ctx)\n'
                    '    if ev.type == "broken" then error("this event is broken") end\n'
                    '    if ev.type == "hold" then brume.timer.set(ev.id, "1h", { why = "held" }) end\n'
                    '  end,\n'
                    '  on_timer = function(key, data) end,\n'
                    '}\n',
}


def body(topic, *events):
    return json.dumps({"topic": topic, "events": list(events)})


def children(pid):
    """Pids of PID's descendants, from /proc."""
    kids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for k in kids.get(p, []):
            out.append(k)
            todo.append(k)
    return out


class Browser:
    """Headless Chromium through chromedriver, with a fresh profile and
    nothing that reaches for the network."""

    def __init__(self):
        self.profile = tempfile.mkdtemp(prefix="brume-chromium-")
        o = webdriver.ChromeOptions()
        o.binary_location = CHROMIUM
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-default-apps",
                  "--disable-extensions", "--window-size=1280,900",
                  "--user-data-dir=" + self.profile):
            o.add_argument(a)
        o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.service = Service(CHROMEDRIVER)
        self.d = webdriver.Chrome(service=self.service, options=o)
        self.pids = [self.service.process.pid] + children(self.service.process.pid)
        self.logs = []

    def quit(self):
        try:
            self.logs += self.d.get_log("browser")
            self.d.quit()
        finally:
            for pid in self.pids:  # whatever quit left behind
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            shutil.rmtree(self.profile, ignore_errors=True)

    def errors(self):
        self.logs += self.d.get_log("browser")
        return [e for e in self.logs if e["level"] in ("SEVERE", "ERROR")]

    def wait(self, fn, what):
        try:
            # The page rebuilds its tables: an element may go while it is read.
            return WebDriverWait(self.d, WAIT, poll_frequency=0.1,
                                 ignored_exceptions=(StaleElementReferenceException,)).until(
                                     lambda d: fn())
        except Exception:
            raise AssertionError("the page did not show %s; it shows:\n%s" %
                                 (what, self.d.find_element(By.TAG_NAME, "body").text[:3000]))

    def find(self, css):
        return self.d.find_element(By.CSS_SELECTOR, css)

    def finds(self, css):
        return self.d.find_elements(By.CSS_SELECTOR, css)

    def text(self, css):
        found = self.finds(css)
        return found[0].text if found else ""


class Console(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.m = MockTarget().__enter__()
        # The first attempt is refused for good (a dead letter); later ones go through.
        cls.m.script("/hook", [{"status": 400, "body": "card rejected: no title"},
                               {"status": 200, "body": "ok"}])
        cls.b = Brume('sources = { mist = { path = "/mist", secret = "%s" } }\n'
                      'targets = { hook = { kind = "webhook", url = "%s", '
                      'secret = "whsec-console-test", backoff = "1s" } }\n'
                      % (harness.SECRET, cls.m.url("/hook")), rules=RULES, workers=1).start()
        cls.base = "http://127.0.0.1:%d/" % cls.b.admin_port
        cls.w = Browser()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.w.quit()
        finally:
            cls.b.cleanup()
            cls.m.__exit__(None, None, None)

    def go(self, hash_):
        self.w.d.get(self.base + "#" + hash_)

    def test_the_console(self):
        w = self.w
        # Overview: the rule set and the counters.
        self.go("overview")
        w.wait(lambda: len(w.finds("#rules-table tbody tr")) == 2, "the two rules")
        self.assertIn("10_page", w.text("#rules-table"))
        self.assertIn("rules/20_check.lua", w.text("#rules-table"))
        self.assertEqual(w.text("#card-requests .value"), "0")
        self.assertIn("None since brume started", w.text("#reload"))

        # Signed events, then the journal shows them, newest first.
        alarm = body("alarms", {"type": "rogue_ap", "id": "alarm-1", "site_id": "s-1"})
        audit = body("audits", {"type": "broken", "id": "audit-1", "message": "needle in it"})
        for b in (alarm, audit):
            self.assertEqual(self.b.post(b).status, 200)
        self.go("events")

        def both():
            rows = w.finds("#events-table tbody tr")
            if len(rows) < 2:
                w.find("#ev-search").click()
                return False
            return rows
        rows = w.wait(both, "the two posted bodies")
        alarm_id, audit_id = int(rows[1].get_attribute("data-id")), int(rows[0].get_attribute("data-id"))
        self.assertLess(alarm_id, audit_id)
        self.assertIn("audits", rows[0].text)
        self.assertIn("1 failed", rows[0].text)

        # Filters: a text match and a JSON-field match.
        w.find("#ev-match").send_keys("NEEDLE")
        w.find("#ev-search").click()
        w.wait(lambda: [r.get_attribute("data-id") for r in w.finds("#events-table tbody tr")] ==
               [str(audit_id)], "only the body with the text")
        Select(w.find("#ev-kind")).select_by_value("field")
        w.find("#ev-match").clear()
        w.find("#ev-match").send_keys("site_id=s-1")
        w.find("#ev-search").click()
        w.wait(lambda: [r.get_attribute("data-id") for r in w.finds("#events-table tbody tr")] ==
               [str(alarm_id)], "only the body with the field")

        # One event: its body, how each rule ran, what it sent.
        w.find('#events-table tbody tr[data-id="%d"]' % alarm_id).click()
        w.wait(lambda: w.finds("#event-body"), "the event")
        self.assertIn('"rogue_ap"', w.text("#event-body"))
        runs = [r.text for r in w.finds("#runs-table tbody tr")]
        self.assertEqual(len(runs), 2, runs)
        self.assertTrue(runs[0].startswith("1 10_page ok"), runs)
        w.wait(lambda: "dead" in w.text("#sent-table"), "the delivery dead (the mock said 400)")
        self.assertIn("hook", w.text("#sent-table"))

        self.go("event/%d" % audit_id)
        w.wait(lambda: w.finds("#runs-table tr[data-status=error]"), "the failed rule call")
        failed = w.text("#runs-table tr[data-status=error]")
        self.assertIn("rules/20_check.lua:4", failed)
        self.assertIn("this event is broken", failed)

        # Deliveries: the dead one, its attempt, its request; retried, delivered.
        self.go("deliveries")
        Select(w.find("#dl-status")).select_by_value("dead")
        w.wait(lambda: w.finds("#deliveries-table tbody tr[data-state=dead]"), "the dead delivery")
        w.find("#deliveries-table tbody tr[data-state=dead]").click()
        w.wait(lambda: w.finds("#attempts-table tbody tr"), "the attempt")
        self.assertIn("400", w.text("#attempts-table"))
        self.assertIn("card rejected", w.text("#attempts-table"))
        request = w.text("#dv-request")
        self.assertIn("POST http://127.0.0.1:%d/****" % self.m.port, request)  # URLs carry tokens
        self.assertIn('"title": "alarm rogue_ap"', request)
        self.assertNotIn("whsec-console-test", w.find("body").text)
        self.assertEqual(w.text("#dv-state"), "dead")
        w.find("#dv-retry").click()
        self.m.wait_for(lambda reqs: len(reqs) >= 2, path="/hook")
        w.wait(lambda: w.text("#dv-state") == "done", "the retried delivery done")
        self.assertEqual(len(w.finds("#attempts-table tbody tr")), 2)

        # Timers and digests: one a rule armed, cancelled from the page.
        self.assertEqual(self.b.post(body("audits", {"type": "hold", "id": "h1"})).status, 200)
        self.go("timers")
        w.wait(lambda: w.finds("#timers-table tbody tr"), "the armed timer")
        row = w.text("#timers-table")
        self.assertIn("h1", row)
        self.assertIn("20_check", row)
        self.assertIn('"why":"held"', row.replace(" ", ""))
        w.find("#timers-table tbody tr button.danger").click()
        w.wait(lambda: w.finds("#timers-empty"), "the timers view, empty after the cancel")
        self.assertIn("Nothing is pending", w.text("#timers-empty"))

        # Playground: a pasted payload through the running rules, then
        # through an edited copy of one, which is never saved.
        self.go("playground")
        w.wait(lambda: len(w.finds("#pg-rule option")) == 3, "the rules to edit")
        Select(w.find("#pg-source")).select_by_value("payload")
        w.find("#pg-payload").send_keys(body("alarms", {"type": "rogue_ap", "id": "try-1"}))
        w.find("#pg-run").click()
        w.wait(lambda: "1 messages" in w.text("#pg-summary"), "the playground's run")
        self.assertIn("alarm rogue_ap", w.text("#pg-messages"))
        self.assertIn("http://127.0.0.1:%d/****" % self.m.port, w.text(".pg-request"))
        self.assertNotIn("/hook", w.text(".pg-request"))

        Select(w.find("#pg-rule")).select_by_value("10_page.lua")
        w.wait(lambda: "brume.send" in w.find("#pg-rule-text").get_property("value"), "the rule")
        edited = RULES["10_page.lua"].replace('"alarm "', '"edited "')
        w.d.execute_script("arguments[0].value = arguments[1]", w.find("#pg-rule-text"), edited)
        w.find("#pg-run").click()
        w.wait(lambda: "edited rogue_ap" in w.text("#pg-messages"), "the edited rule's message")
        with open(self.b.path("rules", "10_page.lua")) as f:
            self.assertEqual(f.read(), RULES["10_page.lua"])
        w.d.execute_script("arguments[0].value = arguments[1]", w.find("#pg-rule-text"),
                           "return { topics = {\"alarms\"}, on_event = function( }")
        w.find("#pg-run").click()
        w.wait(lambda: "rules/10_page.lua:1" in w.text("#pg-errors"), "the edit's syntax error")

        # Nothing the playground did was sent.
        time.sleep(0.3)
        self.assertEqual(len(self.m.received("/hook")), 2)

        # A reload that fails: the overview says where.
        self.b.write_rule("30_broken.lua", "return {\n  topics = 'alarms',\n  on_event = 42,\n}\n")
        self.assertEqual(self.b.request("POST", "/reload", admin=True).status, 422)
        self.go("overview")
        w.wait(lambda: w.finds("#reload-errors li"), "the reload's errors")
        self.assertIn("rules/30_broken.lua", w.text("#reload-errors"))
        self.assertIn("on_event", w.text("#reload-errors"))
        self.assertIn("failed", w.text("#reload"))
        self.assertEqual(len(w.finds("#rules-table tbody tr")), 2)  # the running set stays
        os.unlink(self.b.path("rules", "30_broken.lua"))
        self.assertEqual(w.errors(), [])

    def test_changes_need_the_console_header_and_a_loopback_host(self):
        b = self.b
        ok = {"X-Brume-Console": "1", "Content-Type": "application/json"}
        retry = json.dumps({"id": 999999})
        r = b.request("POST", "/api/deliveries/retry", retry, admin=True)
        self.assertEqual(r.status, 403, r)  # a form or a cross-site fetch cannot add the header
        r = b.request("POST", "/api/deliveries/retry", retry, ok, admin=True)
        self.assertEqual(r.status, 404, r)  # allowed; there is no such delivery
        r = b.request("POST", "/api/deliveries/retry", retry,
                      dict(ok, Origin="http://evil.example"), admin=True)
        self.assertEqual(r.status, 403, r)
        r = b.request("GET", "/api/events", headers={"Host": "brume.evil.example:80"}, admin=True)
        self.assertEqual(r.status, 403, r)  # a page that rebinds its name to 127.0.0.1
        r = b.request("POST", "/reload", headers={"Origin": "http://evil.example"}, admin=True)
        self.assertEqual(r.status, 403, r)
        r = b.request("GET", "/api/overview", admin=True)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers.get("Cache-Control"), "no-store")
        self.assertEqual(r.headers.get("X-Frame-Options"), "DENY")
        self.assertIn("script-src 'self'", r.headers.get("Content-Security-Policy"))
        self.assertNotIn("Set-Cookie", r.headers)


class Api(unittest.TestCase):
    """The endpoints as curl sees them: pages and their continuation, every
    dead delivery of a target retried in one call, what needs a filter."""

    def test_pages_and_changes_of_all_that_match(self):
        h = {"X-Brume-Console": "1"}
        with MockTarget() as m:
            m.script("/hook", [{"status": 404, "body": "no such hook"}] * 3 + [{"status": 200}])
            with Brume('sources = { mist = { path = "/mist", secret = "%s" } }\n'
                       'targets = { hook = { kind = "webhook", url = "%s" } }\n'
                       % (harness.SECRET, m.url("/hook")),
                       rules={"10_page.lua": RULES["10_page.lua"]}, workers=1) as b:
                for i in range(3):
                    self.assertEqual(b.post(body("alarms", {"type": "t%d" % i})).status, 200)
                def get(path):
                    r = b.request("GET", path, admin=True)
                    self.assertEqual(r.status, 200, r)
                    return json.loads(r.body)
                page = get("/api/events?limit=2")
                self.assertEqual(len(page["events"]), 2)
                rest = get("/api/events?limit=2&before=%d" % page["next"])
                self.assertEqual(len(rest["events"]), 1)
                self.assertIsNone(rest["next"])
                deadline = time.time() + harness.REQUEST_TIMEOUT
                while len(get("/api/deliveries?status=dead&target=hook")["deliveries"]) < 3:
                    self.assertLess(time.time(), deadline, "three dead deliveries")
                    time.sleep(0.1)
                r = b.request("POST", "/api/deliveries/retry",
                              '{"all": true, "status": "dead", "target": "hook"}', h, admin=True)
                self.assertEqual((r.status, json.loads(r.body)), (200, {"ok": True, "changed": 3}))
                m.wait_for(lambda reqs: len(reqs) == 6, path="/hook")
                while len(get("/api/deliveries?status=done")["deliveries"]) < 3:
                    self.assertLess(time.time(), deadline, "three done deliveries")
                    time.sleep(0.1)
                d = get("/api/delivery?id=%d" % get("/api/deliveries?status=done")["deliveries"][0]["id"])
                self.assertEqual([a["status"] for a in d["attempts"]], [200, 404])
                self.assertEqual(d["attempts"][1]["answer"], "no such hook")
                self.assertIsNone(d["request"])  # a done delivery keeps no request
                # Done ones stay (their keys stop re-runs); a filter must say which.
                r = b.request("POST", "/api/deliveries/drop", '{"all": true, "status": "done"}', h,
                              admin=True)
                self.assertEqual(r.status, 400)
                r = b.request("POST", "/api/deliveries/drop", '{"all": true}', h, admin=True)
                self.assertEqual(r.status, 400)
                self.assertEqual(b.request("POST", "/api/deliveries/retry", "[1]", h,
                                           admin=True).status, 400)


class Token(unittest.TestCase):
    TOKEN = "console-token-for-tests"

    def test_a_listener_reachable_from_elsewhere_wants_the_token(self):
        with Brume('sources = { mist = { path = "/mist", secret = "%s" } }\n'
                   'admin = { addr = "0.0.0.0:0", token = "%s" }\n'
                   % (harness.SECRET, self.TOKEN), rules=RULES, workers=1) as b:
            auth = {"Authorization": "Bearer " + self.TOKEN}
            for method, path, data in (("GET", "/api/overview", None),
                                       ("GET", "/api/events", None),
                                       ("POST", "/api/playground", '{"payload":"{}"}'),
                                       ("POST", "/api/deliveries/drop", '{"id":1}')):
                self.assertEqual(b.request(method, path, data, admin=True).status, 401, path)
                wrong = {"Authorization": "Bearer " + "x" * len(self.TOKEN)}
                self.assertEqual(b.request(method, path, data, wrong, admin=True).status, 401)
            self.assertEqual(b.request("GET", "/api/overview", headers=auth, admin=True).status, 200)
            # With the token, no other header is needed, whatever the Host.
            r = b.request("POST", "/api/deliveries/drop", '{"id":1}',
                          dict(auth, Host="brume.example.net"), admin=True)
            self.assertEqual(r.status, 404, r)
            # The page itself holds no data: it loads, and asks for the token.
            page = b.request("GET", "/", admin=True)
            self.assertEqual(page.status, 200)
            self.assertIn('src="/app.js"', page.body)
            self.assertNotIn("<script>", page.body)


if __name__ == "__main__":
    try:
        unittest.main()
    finally:
        harness.stop_all()
