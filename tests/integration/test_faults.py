"""I/O faults in the store, by countdown (SQLite's test_malloc.c and
faultsim are the model): a scripted load runs once clean under the fault
shim (tests/integration/fault.c), which numbers every read, write, sync,
open and truncate the store makes; then again for a sample of N across that
whole range, with call N failing (EIO or ENOSPC), once or until the test
clears it. For every N: brume never crashes (exit status, sanitizer
reports); once the fault is gone and brume restarts without the shim, every
body answered 200 is in the journal and none answered 503 is, every message
the 200 bodies' rules sent arrives, and the store passes SQLite's integrity
check; a fault that lasts gets 503s and a failing /healthz, and both come
back once it clears, without a restart and before any body comes.

The load makes about 380 calls, and a run of it with a fault costs about a
second under the sanitizers (more on a busy machine): stepping N over every
call takes five to eight minutes, more than CI gives the whole suite. So the
test takes a deterministic sample: the first call of each kind (op and file)
the clean run made, and the rest spread evenly over the whole range, with
the four kinds of fault (EIO or ENOSPC, once or lasting) taken in turn.
BRUME_FAULT_SAMPLES=K sets the sample's size (default 56, about a minute);
BRUME_FAULT_SAMPLES=all steps N over every call.
"""
import json
import os
import re
import shutil
import sqlite3
import tempfile
import time
import unittest

import harness
from harness import Brume

CONFIG = """
sources = { mist = { path = "/mist", secret = "%s" } }
targets = { out = { kind = "file", path = "var/out.jsonl" } }
""" % harness.SECRET

RULES = {
    # Alarms send a message per event; every body counts in rule state.
    "send.lua": """
return { topics = "alarms", on_event = function(ev, ctx)
  brume.send("out", { id = ev.fault_id })
end }""",
    "count.lua": """
return { topics = "*", on_event = function(ev, ctx)
  brume.state.incr("seen:" .. ctx.topic)
end }""",
}

FIXTURES = ["alarms--rogue-ap-detected-juniper-doc.json", "device-events--ap-connected-const.json",
            "alarms--switch-down-const-alarm-defs.json"]
SANITIZER = re.compile(r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:")
SAMPLES = os.environ.get("BRUME_FAULT_SAMPLES", "56")
HEALTH_TIMEOUT = 5  # seconds /healthz may take to see that the store is back


class Body:
    """A signed Mist body from the fixtures, its events marked with ids of
    their own."""
    count = 0

    def __init__(self, fixture):
        Body.count += 1
        with open(os.path.join(harness.FIXTURES, fixture)) as f:
            payload = json.load(f)
        self.topic = payload["topic"]
        self.ids = []
        for i, ev in enumerate(payload["events"]):
            ev["fault_id"] = "b%d-%d" % (Body.count, i)
            self.ids.append(ev["fault_id"])
        self.data = json.dumps(payload).encode()


class Run:
    """One run of the scripted load: two phases (brume started, three bodies
    posted, the outbox given time to deliver, brume stopped), so that the
    calls of a restart are counted too; then a check without the shim."""

    def __init__(self, case, at=None, error="EIO", hold=False):
        self.case = case
        self.tmp = tempfile.mkdtemp(prefix="brume-faults-")
        self.count = os.path.join(self.tmp, "count")
        self.trace = os.path.join(self.tmp, "trace")
        self.hold = os.path.join(self.tmp, "hold") if hold else None
        env = harness.fault_env(os.path.join(self.tmp, "no-flag"))
        env.update(BRUME_FAULT_COUNT=self.count, BRUME_FAULT_ERRNO=error)
        if at is None:
            env["BRUME_FAULT_TRACE"] = self.trace  # count, fail none
        else:
            env["BRUME_FAULT_AT"] = str(at)
        if hold:
            env["BRUME_FAULT_HOLD"] = self.hold
        self.what = "fault at call %s (%s%s)" % (at, error, ", lasting" if hold else "")
        self.brume = Brume(CONFIG, rules=RULES, workers=1, env=env)
        self.acked = []     # bodies answered 200
        self.refused = []   # bodies answered 503
        self.fired = False  # the fault happened
        self.cleared = 0    # lasting faults seen and cleared

    def fail(self, msg):
        b = self.brume
        log = b.log() if os.path.exists(b.log_path) else ""
        self.case.fail("%s: %s\n--- brume's log ---\n%s" % (self.what, msg, log[-6000:]))

    def log_since_start(self):
        return self.brume.log()[getattr(self.brume, "_since", 0):]

    # ---- the load ---------------------------------------------------------

    def load(self):
        for phase in range(2):
            self.start()
            for fixture in FIXTURES:
                self.post(Body(fixture))
            self.settle()
            self.stop()
        self.fired = "brume-fault: call" in self.brume.log()
        return self

    def start(self):
        """Starts brume under the shim. A fault while it opens the store may
        keep it from starting: then it must say so and exit 1, and start
        once the fault has cleared."""
        for _ in range(3):
            self.clear()  # a lasting fault that came while brume stopped
            try:
                self.brume.start()
                return
            except AssertionError:
                if self.brume.proc.poll() is None:
                    raise
                code = self.brume.stop()
                self.check_exit(code, "at start", allowed=(1,))
                if not re.search(r'level=error msg="cannot open the (store|outbox|console)"',
                                 self.log_since_start()):
                    self.fail("brume exited %s at start without saying why" % code)
        self.fail("brume did not start three times in a row")

    def post(self, body):
        r = self.brume.post(body.data)
        if r.status == 200:
            self.acked.append(body)
        elif r.status == 503:
            self.refused.append(body)
            self.case.assertEqual(r.headers.get("Retry-After"), "5", self.what)
        else:
            self.fail("a post was answered %d: %s" % (r.status, r.body))
        if self.hold and os.path.exists(self.hold):
            self.lasting()

    def lasting(self):
        """The fault lasts: bodies are refused and /healthz says so; once it
        clears, /healthz says the store is back with no body to prove it,
        and bodies are taken again."""
        b = self.brume
        body = Body(FIXTURES[0])
        r = b.post(body.data)
        if r.status != 503:
            self.fail("a body was answered %d while the store was failing" % r.status)
        self.refused.append(body)
        h = b.request("GET", "/healthz", admin=True)
        if h.status != 503 or json.loads(h.body)["store"] != "failing":
            self.fail("/healthz said %d %s while the store was failing" % (h.status, h.body))
        self.clear()
        deadline = time.time() + HEALTH_TIMEOUT
        while True:
            h = b.request("GET", "/healthz", admin=True)
            if h.status == 200 and json.loads(h.body)["store"] == "ok":
                break
            if time.time() > deadline:
                self.fail("/healthz still said %d %s %ss after the fault cleared" %
                          (h.status, h.body, HEALTH_TIMEOUT))
            time.sleep(0.1)
        body = Body(FIXTURES[0])
        r = b.post(body.data)
        if r.status != 200:
            self.fail("a body was answered %d after the fault cleared" % r.status)
        self.acked.append(body)

    def clear(self):
        if self.hold and os.path.exists(self.hold):
            os.unlink(self.hold)
            self.cleared += 1

    def settle(self):
        """Gives the outbox a moment to deliver what was sent (its reads and
        writes are part of the load)."""
        want = {i for body in self.acked if body.topic == "alarms" for i in body.ids}
        deadline = time.time() + 2
        while time.time() < deadline and not want <= self.delivered():
            time.sleep(0.05)

    def stop(self):
        self.check_exit(self.brume.stop(), "on SIGTERM", allowed=(0,))

    def check_exit(self, code, when, allowed):
        log = self.log_since_start()
        if SANITIZER.search(log):
            self.fail("a sanitizer report %s" % when)
        if code not in allowed:
            self.fail("brume exited %s %s" % (code, when))

    # ---- after ------------------------------------------------------------

    def delivered(self):
        return {line["message"]["id"] for line in self.brume.lines("out.jsonl")}

    def verify(self):
        """With the fault gone and no shim: brume starts, everything its
        bodies sent arrives, and every body answered 200 is journaled."""
        self.clear()
        b = self.brume
        b.env = {k: v for k, v in b.env.items() if not k.startswith("BRUME_FAULT")}
        b.env.pop("LD_PRELOAD")
        try:
            b.start()
        except AssertionError as e:
            self.fail("brume did not start once the fault was gone: %s" % str(e)[:300])
        want = {i for body in self.acked if body.topic == "alarms" for i in body.ids}
        deadline = time.time() + 20
        while not want <= self.delivered():
            if time.time() > deadline:
                self.fail("messages of bodies answered 200 never arrived: %s" %
                          sorted(want - self.delivered()))
            time.sleep(0.05)
        self.stop()
        db = sqlite3.connect(b.path("var", "brume.db"))
        try:
            check = db.execute("PRAGMA integrity_check").fetchall()
            journal = {body for _, body in harness.journal_bodies(db)}
        finally:
            db.close()
        if check != [("ok",)]:
            self.fail("the store is damaged: %s" % check)
        lost = [body.ids for body in self.acked if body.data not in journal]
        if lost:
            self.fail("bodies answered 200 are not in the journal: %s" % lost)
        traces = [body.ids for body in self.refused if body.data in journal]
        if traces:
            self.fail("bodies answered 503 are in the journal: %s" % traces)

    def cleanup(self):
        self.brume.cleanup()
        shutil.rmtree(self.tmp, ignore_errors=True)


def sample(trace, size):
    """The calls to fail: the first of each kind (op and file), then the rest
    spread evenly over the whole range, without repeats, in order."""
    calls = [line.split() for line in trace]
    total = len(calls)
    if size == "all" or int(size) >= total:
        return list(range(1, total + 1))
    picked, kinds = set(), set()
    for n, op, file in calls:
        if (op, file) not in kinds:
            kinds.add((op, file))
            picked.add(int(n))
    rest = max(int(size) - len(picked), 1)
    for i in range(rest):
        picked.add(1 + (i * (total - 1)) // max(rest - 1, 1))
    return sorted(picked)


class Countdown(unittest.TestCase):
    def test_every_call_the_store_makes_may_fail(self):
        started = time.time()
        clean = Run(self).load()
        try:
            clean.verify()
            with open(clean.trace) as f:
                trace = f.read().split("\n")[:-1]
            self.assertEqual(clean.refused, [], "the clean run refused bodies")
            self.assertEqual(len(clean.acked), 2 * len(FIXTURES))
        finally:
            clean.cleanup()
        kinds = sorted({tuple(line.split()[1:]) for line in trace})
        # SQLite reads, writes, syncs, opens and truncates the store's files.
        for op in ("read", "write", "sync", "open", "truncate"):
            self.assertIn(op, {k[0] for k in kinds}, "the clean load made no %s call" % op)
        points = sample(trace, SAMPLES)
        fired = refused = cleared = 0
        for i, at in enumerate(points):
            run = Run(self, at, error="ENOSPC" if i % 4 >= 2 else "EIO", hold=i % 2 == 1)
            try:
                run.load()
                run.verify()
                if not run.hold and len(run.refused) > 1:
                    self.fail("%s: %d bodies refused for one failed call" %
                              (run.what, len(run.refused)))
            finally:
                run.cleanup()
            fired += run.fired
            refused += len(run.refused)
            cleared += run.cleared
        print("\ncountdown: %d calls in the clean load (%d kinds), %d faults injected, %d fired, "
              "%d bodies refused, %d lasting faults cleared, %.0fs" %
              (len(trace), len(kinds), len(points), fired, refused, cleared,
               time.time() - started))
        # Timing moves a call or two between runs (the outbox and the
        # writer's upkeep run on their own clocks), so the last of the range
        # may not come: nearly all must.
        self.assertGreaterEqual(fired, len(points) * 9 // 10, "the faults did not take effect")
        self.assertGreater(refused, 0, "no fault ever refused a body")
        self.assertGreater(cleared, 0, "no lasting fault was seen")


if __name__ == "__main__":
    unittest.main()
