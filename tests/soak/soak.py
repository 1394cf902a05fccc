#!/usr/bin/env python3
"""A soak: brume for a long while (ten minutes by default) under a steady
stream of signed Mist bodies, its rules reloaded every 30 s, sending to a
webhook target that flaps, with brume's RSS and open fds sampled as it goes.

    tests/soak/soak.py [--minutes 10] [--rate 200] [--brume build-rel/brume]

Bodies are the fixtures of tests/fixtures/mist in turn, each event marked
with an id of its own; every event is sent on to the mock target, and
brume.once marks each for a minute (so rule state is written and expires
all the time). The mock target (on 127.0.0.1) goes through a cycle: it
answers 200 for a while, then 500, then holds requests past the target's
timeout, then refuses connections.

It fails (exit 1, with the samples) when brume exits early or answers
anything but 200 or 503, when memory or fds grow past the bound after the
warm-up (the last minute's mean RSS, or fd count, above the second minute's
by more than 20%; fds by at least 5), or when anything is lost: at the end
every body answered 200 must be in the journal, and every event of those
bodies must have arrived at the mock or still be a pending or dead delivery
in the store; every delivery the store calls done must have arrived.
Everything it starts is stopped by its pid; traffic stays on 127.0.0.1.
"""
import argparse
import http.client
import json
import os
import sqlite3
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import harness  # noqa: E402

RULE = """-- generation %d
return { topics = "*", on_event = function(ev, ctx)
  if brume.once("soak:" .. ev.soak_id, "1m") then
    brume.send("hook", { id = ev.soak_id, topic = ctx.topic })
  end
end }
"""

CONFIG = """
sources = { mist = { path = "/mist", secret = "%s" } }
targets = { hook = { kind = "webhook", url = "%s", secret = "whsec_c29haw==",
                     timeout = "1s", backoff = "0.5s", concurrency = 8 } }
"""

# The mock's cycle, in seconds: (phase, how long).
CYCLE = [("ok", 30), ("error", 10), ("stall", 5), ("refuse", 15)]


class Flapping:
    """A webhook target on 127.0.0.1 that goes through CYCLE. It records
    what it answered 200 to: webhook-ids and the messages' ids."""

    def __init__(self):
        self.lock = threading.Lock()
        self.keys, self.ids = set(), set()
        self.answered = {"ok": 0, "error": 0, "stall": 0}
        self.started = time.time()
        self.server = self._serve(0)
        self.port = self.server.server_address[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._cycle, daemon=True)
        self.thread.start()

    def phase(self):
        t = (time.time() - self.started) % sum(d for _, d in CYCLE)
        for name, length in CYCLE:
            if t < length:
                return name
            t -= length
        return CYCLE[-1][0]

    def _serve(self, port):
        mock = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                phase = mock.phase()
                if phase == "stall":
                    mock.count("stall")
                    time.sleep(2)  # past the target's timeout: brume gives up
                    self.close_connection = True
                    return
                status = 200 if phase in ("ok", "refuse") else 500
                if status == 200:
                    with mock.lock:
                        mock.keys.add(self.headers.get("webhook-id"))
                        mock.ids.add(json.loads(body)["id"])
                mock.count("ok" if status == 200 else "error")
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def count(self, what):
        with self.lock:
            self.answered[what] += 1

    def _cycle(self):
        """Closes the listening socket while the phase is "refuse" (brume's
        connections are refused) and opens it again after."""
        while not self.stop.wait(0.2):
            refusing = self.phase() == "refuse"
            if refusing and self.server:
                self.server.shutdown()
                self.server.server_close()
                self.server = None
            elif not refusing and not self.server:
                self.server = self._serve(self.port)

    def close(self):
        self.stop.set()
        self.thread.join(5)
        if self.server:
            self.server.shutdown()
            self.server.server_close()


class Poster:
    """Posts signed bodies at RATE a second over keep-alive connections from
    THREADS threads; records the ids of those answered 200."""

    def __init__(self, brume, rate, threads=2):
        self.brume = brume
        self.fixtures = []
        for path in harness.fixtures():
            with open(path) as f:
                self.fixtures.append(json.load(f))
        self.lock = threading.Lock()
        self.acked = set()  # soak ids of events in bodies answered 200
        self.status = {}
        self.errors = []
        self.serial = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(rate / threads,), daemon=True)
                        for _ in range(threads)]
        for t in self.threads:
            t.start()

    def _body(self):
        with self.lock:
            self.serial += 1
            n = self.serial
        payload = json.loads(json.dumps(self.fixtures[n % len(self.fixtures)]))
        ids = []
        for i, ev in enumerate(payload["events"]):
            if isinstance(ev, dict):
                ev["soak_id"] = "s%d-%d" % (n, i)
                ids.append(ev["soak_id"])
        return ids, json.dumps(payload).encode()

    def _run(self, rate):
        conn, next_at = None, time.time()
        while not self.stop.is_set():
            next_at += 1.0 / rate
            delay = next_at - time.time()
            if delay > 0:
                time.sleep(delay)
            ids, data = self._body()
            try:
                conn = conn or self.brume.connection()
                r = self.brume.post(data, conn=conn)
            except (OSError, http.client.HTTPException) as e:
                with self.lock:
                    self.errors.append(repr(e))
                conn = None
                continue
            with self.lock:
                self.status[r.status] = self.status.get(r.status, 0) + 1
                if r.status == 200:
                    self.acked.update(ids)
                elif r.status != 503:
                    self.errors.append("answered %d: %s" % (r.status, r.body[:200]))
            if r.headers.get("Connection", "").lower() == "close":
                conn = None

    def close(self):
        self.stop.set()
        for t in self.threads:
            t.join(30)


def sample(pid):
    with open("/proc/%d/status" % pid) as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return rss, len(os.listdir("/proc/%d/fd" % pid))


def minute_mean(samples, minute, index):
    values = [s[index] for s in samples if minute * 60 <= s[0] < (minute + 1) * 60]
    return statistics.mean(values) if values else None


def grown(samples, minutes, bound):
    """What grew past the bound: the last minute against the second."""
    out = []
    last = minutes - 1
    for index, name, slack in ((1, "rss_kb", 0), (2, "fds", 5)):
        second, final = minute_mean(samples, 1, index), minute_mean(samples, last, index)
        if second is None or final is None:
            continue
        if final > second * (1 + bound) and final - second >= slack:
            out.append("%s: %.0f in minute 2, %.0f in the last" % (name, second, final))
    return out


def check_store(path, acked, mock):
    """Returns what was lost, and the counts of deliveries by state."""
    db = sqlite3.connect(path)
    try:
        journal = set()
        for _, body in harness.journal_bodies(db):
            for ev in json.loads(body)["events"]:
                if isinstance(ev, dict) and "soak_id" in ev:
                    journal.add(ev["soak_id"])
        waiting, done_keys, states = set(), [], {0: 0, 1: 0, 2: 0}
        # Pending while queued, dead when its row says so, else done.
        for key, state, body in db.execute(
                "SELECT key, CASE WHEN q.id IS NOT NULL THEN 0 WHEN d.state = 2 THEN 2 ELSE 1 END,"
                " body FROM deliveries d LEFT JOIN queue q ON q.id = d.id"):
            states[state] += 1
            if state == 1:
                done_keys.append(key)
            else:
                waiting.add(json.loads(body)["id"])
    finally:
        db.close()
    lost = []
    if acked - journal:
        lost.append("%d bodies' events answered 200 are not in the journal, e.g. %s" %
                    (len(acked - journal), sorted(acked - journal)[:5]))
    missing = acked - mock.ids - waiting
    if missing:
        lost.append("%d events neither arrived nor wait in the store, e.g. %s" %
                    (len(missing), sorted(missing)[:5]))
    unseen = [k for k in done_keys if k not in mock.keys]
    if unseen:
        lost.append("%d deliveries are done without having arrived, e.g. %s" %
                    (len(unseen), unseen[:5]))
    return lost, states


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--rate", type=float, default=200, help="bodies a second")
    ap.add_argument("--reload-every", type=float, default=30, help="seconds")
    ap.add_argument("--sample-every", type=float, default=5, help="seconds")
    ap.add_argument("--bound", type=float, default=0.20,
                    help="growth allowed, last minute over the second")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--brume", default=os.environ.get("BRUME", os.path.join(
        harness.SRC, "build-rel", "brume")))
    args = ap.parse_args()
    if args.minutes < 3:
        ap.error("--minutes must be at least 3: the bound compares the last minute with the "
                 "second, after a minute's warm-up")
    if not os.access(args.brume, os.X_OK):
        ap.error("no brume at %s (build one: cmake -S . -B build-rel "
                 "-DCMAKE_BUILD_TYPE=Release && cmake --build build-rel)" % args.brume)
    harness.BRUME = os.path.abspath(args.brume)

    mock = Flapping()
    generation = 1
    b = harness.Brume(CONFIG % (harness.SECRET, "http://127.0.0.1:%d/hook" % mock.port),
                      rules={"soak.lua": RULE % generation}, workers=args.workers).start()
    samples, reloads, failures = [], {"ok": 0, "failed": 0}, []
    poster = None
    started = time.time()
    try:
        poster = Poster(b, args.rate)
        end = started + args.minutes * 60
        next_sample, next_reload = started, started + args.reload_every
        while time.time() < end:
            now = time.time()
            if b.proc.poll() is not None:
                failures.append("brume exited %s during the soak" % b.proc.returncode)
                break
            if now >= next_sample:
                rss, fds = sample(b.proc.pid)
                samples.append((round(now - started, 1), rss, fds))
                next_sample += args.sample_every
            if now >= next_reload:
                generation += 1
                b.write_rule("soak.lua", RULE % generation)
                r = b.request("POST", "/reload", admin=True)
                reloads["ok" if r.status == 200 else "failed"] += 1
                if r.status != 200:
                    failures.append("a reload answered %d: %s" % (r.status, r.body))
                next_reload += args.reload_every
            time.sleep(0.1)
        poster.close()
        code = b.stop()
        if code != 0 and not failures:
            failures.append("brume exited %s on SIGTERM" % code)
        mock.close()
        lost, states = check_store(b.path("var", "brume.db"), poster.acked, mock)
        failures += lost
        failures += grown(samples, int(args.minutes), args.bound)
        if poster.errors:
            failures.append("%d posts failed, e.g. %s" % (len(poster.errors), poster.errors[:3]))
        report = {
            "minutes": args.minutes,
            "rate": args.rate,
            "posts": poster.status,
            "events_acked": len(poster.acked),
            "reloads": reloads,
            "mock": dict(mock.answered, arrived=len(mock.ids)),
            "deliveries": {"pending": states[0], "done": states[1], "dead": states[2]},
            "rss_kb": {"start": samples[0][1], "end": samples[-1][1],
                       "minute2": minute_mean(samples, 1, 1),
                       "last_minute": minute_mean(samples, int(args.minutes) - 1, 1)},
            "fds": {"start": samples[0][2], "end": samples[-1][2],
                    "minute2": minute_mean(samples, 1, 2),
                    "last_minute": minute_mean(samples, int(args.minutes) - 1, 2)},
        }
        print(json.dumps(report, indent=1))
        if failures:
            print("samples (seconds, rss_kb, fds):", json.dumps(samples))
            for f in failures:
                print("FAIL:", f)
            return 1
        print("soak passed")
        return 0
    finally:
        if poster:
            poster.close()
        mock.close()
        b.stop()
        harness.shutil.rmtree(b.dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
