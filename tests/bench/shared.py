"""The cost of shared rule state: two brumes sharing one Redis against one
brume with the embedded store, in one run.

    shared.py BUILD_DIR SECONDS

The rule (RULE below) writes one key per event with a TTL (brume.once on
the instance's name, the body's delivery id and the event's id: delivery
ids are each instance's own, so the name keeps the keys apart and every
event writes a key no other holds) and reads a per-site key nobody writes
(checked at commit like any read). Bodies are signed Mist alarm
bodies of 1 and 10 events, durability "full", one worker per brume, 16
connections per brume. Three set-ups, each warmed up for 1 s and measured
for SECONDS:

- embedded: one brume, rule state in its own SQLite store;
- redis x1: one brume, rule state in Redis (one round trip per group);
- redis x2: two brumes on one Redis, each with its own wrk, at once.

Reported: requests/s and events/s (summed over the instances), p50 and
p99 per instance (the worse of the two), brume's CPU per event (user and
system time over events, summed over the instances) and Redis's. The cost
of shared state per event is brume's CPU per event on Redis less brume's
on the embedded store, plus Redis's own. Every answer must be 200, every
event counted by /metrics, no body held for Redis and Redis must hold the
keys written; else the run fails. Every process started here is stopped
by its pid.
"""
import hashlib
import hmac
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

BUILD, SECONDS = sys.argv[1], int(sys.argv[2])
SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECRET = "bench-secret"
CONNS = 16
NCPU = os.cpu_count() or 1
# Brume on CPU 0; wrk and Redis share CPU 1 (on a bigger machine, their own).
BRUME_CPU = "0"
WRK_CPU = "1" if NCPU > 1 else "0"
REDIS_CPU = "2" if NCPU > 2 else WRK_CPU

RULE = """
return {
  topics = "alarms",
  on_event = function(ev, ctx)
    local first = brume.once("%s:" .. ctx.delivery .. ":" .. ev.id, "10m")
    local muted = brume.state.get("site:" .. tostring(ev.site_id))
    local msg = brume.json.encode({ title = "Rogue AP", site = ev.site_id, first = first,
                                    muted = muted ~= nil })
  end,
}
"""

running = []


class Failed(Exception):
    pass


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def start(cmd, cpu, log, cwd):
    p = subprocess.Popen(["taskset", "-c", cpu] + cmd, stdout=log, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, cwd=cwd)
    running.append(p)
    return p


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in running:
        running.remove(p)
    return p.returncode


def stop_all():
    for p in list(running):
        stop(p)


def wait_port(port, p, what):
    for _ in range(200):
        if p.poll() is not None:
            raise Failed("%s exited (%s) before it listened" % (what, p.returncode))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise Failed("%s did not listen on %d" % (what, port))


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sign(body):
    return hmac.new(SECRET.encode(), body.encode(), hashlib.sha256).hexdigest()


def wrk_script(tmp, n):
    with open(os.path.join(SRC, "tests/fixtures/mist/alarms--rogue-ap-const-alarm-defs.json")) as f:
        ev = json.load(f)["events"][0]
    events = [dict(ev, id="%s-%d" % (ev["id"][:-4], i)) for i in range(n)]
    body = json.dumps({"topic": "alarms", "events": events}, separators=(",", ":"))
    path = os.path.join(tmp, "post%d.lua" % n)
    with open(path, "w") as f:
        f.write('wrk.method = "POST"\nwrk.body = %s\n'
                'wrk.headers["Content-Type"] = "application/json"\n'
                'wrk.headers["User-Agent"] = "Mist-webhook"\n'
                'wrk.headers["X-Mist-Signature-v2"] = "%s"\n' % (json.dumps(body), sign(body)))
    return path


def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", v)
    if not m:
        raise Failed("cannot read wrk's latency %r" % v)
    x = float(m.group(1))
    return {"us": x / 1000, "ms": x, "s": x * 1000, "m": x * 60000}[m.group(2)]


def wrk_cmd(script, seconds, port):
    return ["taskset", "-c", WRK_CPU, "wrk", "-t1", "-c%d" % CONNS, "-d%ds" % seconds,
            "--timeout", "10s", "--latency", "-s", script, "http://127.0.0.1:%d/mist" % port]


def wrk_read(out, what):
    if "Requests/sec" not in out:
        raise Failed("%s: wrk failed: %s" % (what, out))
    for pat in (r"Non-2xx or 3xx responses: (\d+)", r"Socket errors: (.*)"):
        m = re.search(pat, out)
        if m:
            raise Failed("%s: %s\n%s" % (what, m.group(0), out))
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": ms(re.search(r"\s50%\s+(\S+)", out).group(1)),
            "p99": ms(re.search(r"\s99%\s+(\S+)", out).group(1)),
            "requests": int(re.search(r"(\d+) requests in", out).group(1))}


def metrics(admin):
    c = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    try:
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
    finally:
        c.close()
    out = {}
    for m in re.finditer(r"^(brume_[a-z_]+)(?:\{[^}]*\})? (\S+)$", text, re.M):
        out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


class Redis:
    def __init__(self, tmp, name):
        self.port = free_ports(1)[0]
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir)
        conf = os.path.join(self.dir, "redis.conf")
        with open(conf, "w") as f:  # as deploy/redis.conf: an append-only file, fsync a second
            f.write("bind 127.0.0.1\nport %d\ndir %s\nappendonly yes\nappendfsync everysec\n"
                    "save \"\"\nprotected-mode no\nloglevel warning\n" % (self.port, self.dir))
        self.log = open(os.path.join(self.dir, "log"), "w")
        self.proc = start(["redis-server", conf], REDIS_CPU, self.log, self.dir)
        wait_port(self.port, self.proc, "redis-server")

    def cli(self, *args):
        return subprocess.run(["redis-cli", "-p", str(self.port)] + list(args), check=True,
                              capture_output=True, text=True, timeout=20).stdout.strip()


class Brume:
    def __init__(self, tmp, name, state):
        self.port, self.admin = free_ports(2)
        rules = os.path.join(tmp, "rules-" + name)
        os.makedirs(rules)
        with open(os.path.join(rules, "state.lua"), "w") as f:
            f.write(RULE % name)
        path = os.path.join(tmp, name + ".lua")
        with open(path, "w") as f:
            f.write('listen = "127.0.0.1:%d"\nadmin = "127.0.0.1:%d"\nworkers = 1\n'
                    'data_dir = "%s"\nrules = "%s"\nlog = { level = "warn" }\n'
                    'sources = { mist = { path = "/mist", secret = "%s" } }\n'
                    'targets = { secops = { kind = "file", path = "/dev/null" } }\n%s\n'
                    % (self.port, self.admin, os.path.join(tmp, "var-" + name),
                       rules, SECRET, state))
        self.log_path = os.path.join(tmp, name + ".log")
        self.log = open(self.log_path, "w")
        self.proc = start([os.path.join(SRC, BUILD, "brume"), "run", "-c", path], BRUME_CPU,
                          self.log, tmp)
        wait_port(self.port, self.proc, name)

    def tail(self):
        self.log.flush()
        with open(self.log_path) as f:
            return "".join(f.readlines()[-20:])


def measure(instances, script, events_per_body, what, redis=None):
    for b in instances:  # warm up
        subprocess.run(wrk_cmd(script, 1, b.port), capture_output=True)
    before = [metrics(b.admin) for b in instances]
    cpu0 = [cpu_seconds(b.proc.pid) for b in instances]
    rcpu0 = cpu_seconds(redis.proc.pid) if redis else 0
    loads = [subprocess.Popen(wrk_cmd(script, SECONDS, b.port), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for b in instances]
    outs = [p.communicate(timeout=SECONDS + 60)[0] for p in loads]
    cpu = sum(cpu_seconds(b.proc.pid) for b in instances) - sum(cpu0)
    rcpu = (cpu_seconds(redis.proc.pid) - rcpu0) if redis else 0
    res = [wrk_read(o, what) for o in outs]
    after = [metrics(b.admin) for b in instances]
    events = 0
    for b, r, m0, m1 in zip(instances, res, before, after):
        if b.proc.poll() is not None:
            raise Failed("%s: brume exited\n%s" % (what, b.tail()))
        got = m1.get("brume_events_total", 0) - m0.get("brume_events_total", 0)
        # wrk's count leaves out what was in flight at its end: the store's may be a little more.
        if got < r["requests"] * events_per_body:
            raise Failed("%s: %d events counted, %d posted" % (what, got,
                                                              r["requests"] * events_per_body))
        events += got
        if m1.get("brume_state_held_bodies", 0):
            raise Failed("%s: bodies held for Redis during the run\n%s" % (what, b.tail()))
    conflicts = sum(m1.get("brume_state_conflicts_total", 0) - m0.get("brume_state_conflicts_total",
                                                                        0)
                    for m0, m1 in zip(before, after))
    return {"what": what, "rps": sum(r["rps"] for r in res),
            "eps": events / SECONDS, "p50": max(r["p50"] for r in res),
            "p99": max(r["p99"] for r in res), "cpu_us": cpu / events * 1e6,
            "redis_us": rcpu / events * 1e6, "conflicts": conflicts}


def main():
    tmp = tempfile.mkdtemp(prefix="brume-bench-shared-")
    rows = []
    try:
        for n in (1, 10):
            script = wrk_script(tmp, n)
            b = Brume(tmp, "embedded-%d" % n, "")
            rows.append((n, measure([b], script, n, "embedded")))
            stop(b.proc)
            r = Redis(tmp, "redis-%d" % n)
            url = 'state = "redis://127.0.0.1:%d/0"' % r.port
            b = Brume(tmp, "redis1-%d" % n, url)
            rows.append((n, measure([b], script, n, "redis x1", r)))
            stop(b.proc)
            pair = [Brume(tmp, "redis2a-%d" % n, url), Brume(tmp, "redis2b-%d" % n, url)]
            rows.append((n, measure(pair, script, n, "redis x2", r)))
            keys = int(r.cli("DBSIZE"))
            if keys < 1000:
                raise Failed("Redis holds %d keys: the rule's writes did not reach it" % keys)
            for x in pair:
                stop(x.proc)
            stop(r.proc)
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    print("| events/body | set-up | req/s | events/s | p50 ms | p99 ms | brume CPU us/event "
          "| Redis CPU us/event | conflicts |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, x in rows:
        print("| %d | %s | %.0f | %.0f | %.2f | %.2f | %.1f | %.1f | %d |"
              % (n, x["what"], x["rps"], x["eps"], x["p50"], x["p99"], x["cpu_us"],
                 x["redis_us"], x["conflicts"]))
    print()
    for n in (1, 10):
        base = [x for m, x in rows if m == n and x["what"] == "embedded"][0]
        for x in (x for m, x in rows if m == n and x["what"] != "embedded"):
            print("%d-event bodies, %s: shared state costs %.1f us of CPU per event "
                  "(brume %+.1f, Redis %.1f); p99 %.2f ms against %.2f ms"
                  % (n, x["what"], x["cpu_us"] - base["cpu_us"] + x["redis_us"],
                     x["cpu_us"] - base["cpu_us"], x["redis_us"], x["p99"], base["p99"]))
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = re.search(r"model name\s*:\s*(.*)", f.read()).group(1)
    except (OSError, AttributeError):
        pass
    redis_v = subprocess.run(["redis-server", "--version"], capture_output=True,
                             text=True).stdout.split()[2].replace("v=", "Redis ")
    print("\n%s, %d CPUs, %s; %s; %s; %d s per run; brume on CPU %s, wrk on %s, Redis on %s"
          % (model, NCPU, platform.platform(), redis_v, time.strftime("%Y-%m-%d"), SECONDS,
             BRUME_CPU, WRK_CPU, REDIS_CPU))


if __name__ == "__main__":
    try:
        main()
    except Failed as e:
        print("benchmark failed: %s" % e, file=sys.stderr)
        sys.exit(1)
