"""brume's benchmark: brume against a bare responder and an nginx+Lua peer.

    bench.py BUILD_DIR SECONDS

Every server runs on CPU 0 (taskset) with one worker, wrk on CPU 1, 32
connections, signed Mist alarm bodies of 1 and 10 events, each body size
warmed up for 1 s and then measured for SECONDS. The servers, in one run:

- responder: bench_responder, bare evhttp answering 200 to everything;
- nginx+Lua: nginx with Debian's ngx_http_lua, tests/bench/nginx_peer.lua:
  HMAC-SHA256 by LuaJIT FFI to libcrypto, constant-time compare, lua-cjson
  decode, the light rule per event;
- brume's light path (tests/bench/rules-light), durability "none" and "full";
- brume with the shipped rules (rules/rogue_ap.lua: one message per event),
  to a file target on /dev/null and to a webhook target on a local sink
  (bench_responder again); deliveries are counted from brume's /metrics.

Then bench_stages (per-stage costs on one core, no network) and a long run:
LONG_SECONDS at full speed on the durable light path with journal.max_size
= 32MB, sampling the store's size and brume's RSS every 0.5 s, then SIGTERM
under load. Prints a markdown table, the machine, and a block of targets
(each ratio or limit with its measured value, met or short).

Any non-2xx answer, socket error, or server that exits fails the benchmark
(non-zero, with the server's log; in the long run, after its report). Every
process started here is stopped by its pid, also on errors. PROFILE=1 adds a
perf profile (cpu-clock) of each brume run.
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
import threading
import time

BUILD, SECONDS = sys.argv[1], int(sys.argv[2])
SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(SRC, "tests", "bench")
SECRET = "bench-secret"


def free_ports(n):
    """N distinct ports no one listens on now (others may run this benchmark
    at the same time)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


PORT, ADMIN, SINK = free_ports(3)  # brume's (or the peer's), its admin's, the webhook sink's
CONNS = 32
LONG_SECONDS = 75
JOURNAL_MAX_MB = 32
DRAIN_S = 10
RSS_LIMIT_MB = 16
SERVER_CPU, WRK_CPU = "0", "1"
# The webhook sink must not take brume's CPU: a third CPU when there is one,
# else wrk's (the sink answers a few thousand tiny requests a second).
SINK_CPU = "2" if os.cpu_count() > 2 else WRK_CPU

running = []  # every process started here, stopped by pid in stop_all()


class Failed(Exception):
    pass


# ---------------------------------------------------------------- processes


class Server:
    def __init__(self, name, cmd, tmp, cpu=SERVER_CPU, port=PORT):
        self.name = name
        if listening(port):
            raise Failed("port %d, for %s, is taken by another process" % (port, name))
        self.log_path = os.path.join(tmp, re.sub(r"\W+", "-", name) + ".log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(["taskset", "-c", cpu] + cmd, stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=tmp)
        running.append(self.proc)
        self.pid = self.proc.pid
        wait_port(port, self)

    def alive(self):
        if self.proc.poll() is not None:
            raise Failed("%s exited (status %s) during the run\n%s" % (
                self.name, self.proc.returncode, self.log_tail()))

    def log_tail(self, lines=20):
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path) as f:
            return "".join("    " + line for line in f.readlines()[-lines:])

    def stop(self, expect=(0,)):
        """SIGTERM; waits; fails unless the exit status is in EXPECT."""
        self.alive()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise Failed("%s did not exit within 30 s of SIGTERM\n%s" % (self.name,
                                                                        self.log_tail()))
        finally:
            running.remove(self.proc)
            self.log.close()
        if rc not in expect:
            raise Failed("%s exited with status %d on SIGTERM\n%s" % (self.name, rc,
                                                                     self.log_tail()))


def stop_all():
    for p in list(running):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        running.remove(p)


def listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def wait_port(port, server):
    for _ in range(200):
        server.alive()
        if listening(port):
            return
        time.sleep(0.05)
    raise Failed("%s did not listen on %d\n%s" % (server.name, port, server.log_tail()))


def cpu_seconds(pid):
    """User and system CPU time of process PID so far."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_kb(pid, field):
    """FIELD of /proc/PID/status in KB; OSError once the process has exited
    (a zombie's status has no memory fields)."""
    with open("/proc/%d/status" % pid) as f:
        m = re.search(field + r":\s+(\d+)", f.read())
    if not m:
        raise OSError("process %d has exited" % pid)
    return int(m.group(1))


# --------------------------------------------------------------------- load


def bodies(tmp):
    with open(os.path.join(SRC, "tests/fixtures/mist/alarms--rogue-ap-const-alarm-defs.json")) as f:
        ev = json.load(f)["events"][0]
    out = {}
    for n in (1, 10):
        events = [dict(ev, id="%s-%d" % (ev["id"][:-4], i)) for i in range(n)]
        body = json.dumps({"topic": "alarms", "events": events}, separators=(",", ":"))
        path = os.path.join(tmp, "post%d.lua" % n)
        with open(path, "w") as f:
            f.write('wrk.method = "POST"\nwrk.body = %s\n'
                    'wrk.headers["Content-Type"] = "application/json"\n'
                    'wrk.headers["User-Agent"] = "Mist-webhook"\n'
                    'wrk.headers["X-Mist-Signature-v2"] = "%s"\n' % (json.dumps(body), sign(body)))
        out[n] = (path, body)
    return out


def sign(body):
    return hmac.new(SECRET.encode(), body.encode(), hashlib.sha256).hexdigest()


def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", v)
    if not m:
        raise Failed("cannot read wrk's latency %r" % v)
    x = float(m.group(1))
    return {"us": x / 1000, "ms": x, "s": x * 1000, "m": x * 60000}[m.group(2)]


def wrk_cmd(script, seconds, latency=True):
    return (["taskset", "-c", WRK_CPU, "wrk", "-t1", "-c%d" % CONNS, "-d%ds" % seconds,
             "--timeout", "10s"] + (["--latency"] if latency else []) +
            ["-s", script, "http://127.0.0.1:%d/mist" % PORT])


def wrk(script, seconds, what, strict=True):
    """req/s, p50, p99, max (ms), the number of requests, and what went
    wrong ("errors": non-2xx answers, socket errors), which fails the run
    when STRICT, and is only reported otherwise."""
    r = subprocess.run(wrk_cmd(script, seconds), capture_output=True, text=True)
    out = r.stdout
    if r.returncode != 0 or "Requests/sec" not in out:
        raise Failed("%s: wrk failed (%d): %s%s" % (what, r.returncode, r.stderr.strip(), out))
    errors = []
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        errors.append("%s non-2xx answers" % bad.group(1))
    sock = re.search(r"Socket errors: (.*)", out)
    if sock:
        errors.append("socket errors (%s)" % sock.group(1))
    if strict and errors:
        raise Failed("%s: %s\n%s" % (what, "; ".join(errors), out))
    lat = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": ms(re.search(r"\s50%\s+(\S+)", out).group(1)),
            "p99": ms(re.search(r"\s99%\s+(\S+)", out).group(1)),
            "max": ms(lat.group(3)),
            "requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "errors": "; ".join(errors), "out": out}


def post(body, sig):
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
    try:
        headers = {"Content-Type": "application/json"}
        if sig is not None:
            headers["X-Mist-Signature-v2"] = sig
        c.request("POST", "/mist", body=body, headers=headers)
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def preflight(server, body):
    """The server does the work it is measured on: it checks the signature
    and decodes the body (the responder does neither, by design)."""
    for what, b, sig, want in (("a signed body", body, sign(body), 200),
                               ("an upper-case signature", body, sign(body).upper(), 200),
                               ("a wrong signature", body, sign(body + " "), 401),
                               ("no signature", body, None, 401),
                               ("signed non-JSON", "{not json", sign("{not json"), 400)):
        got = post(b, sig)
        if got != want:
            raise Failed("%s answers %d to %s, not %d\n%s" % (server.name, got, what, want,
                                                               server.log_tail()))


def metrics_text():
    c = http.client.HTTPConnection("127.0.0.1", ADMIN, timeout=10)
    try:
        c.request("GET", "/metrics")
        r = c.getresponse()
        text = r.read().decode()
        if r.status != 200:
            raise Failed("/metrics answered %d" % r.status)
    finally:
        c.close()
    return text


def metrics():
    """brume_deliveries_total by outcome, summed over targets, and
    brume_events_total, from the admin listener."""
    text = metrics_text()
    out = {"done": 0.0, "retry": 0.0, "dead": 0.0, "events": 0.0}
    for m in re.finditer(r'^brume_deliveries_total\{[^}]*outcome="(\w+)"[^}]*\} (\S+)$', text,
                         re.M):
        out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    for m in re.finditer(r"^brume_events_total(?:\{[^}]*\})? (\S+)$", text, re.M):
        out["events"] += float(m.group(1))
    return out


# ------------------------------------------------------------------ servers


def brume_config(tmp, name, rules, durability, target=None, extra=""):
    path = os.path.join(tmp, name + ".lua")
    target = target or '{ kind = "file", path = "/dev/null" }'
    with open(path, "w") as f:
        f.write('listen = "127.0.0.1:%d"\nadmin = "127.0.0.1:%d"\nworkers = 1\n'
                'data_dir = "%s"\nrules = "%s"\nlog = { level = "info" }\n'
                'sources = { mist = { path = "/mist", secret = "%s", durability = "%s" } }\n'
                'targets = { secops = %s }\n%s'
                % (PORT, ADMIN, os.path.join(tmp, "var-" + name), rules, SECRET, durability,
                   target, extra))
    return [os.path.join(SRC, BUILD, "brume"), "run", "-c", path]


NGINX_CONF = """\
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
daemon off;
master_process off;
worker_processes 1;
pid nginx.pid;
error_log nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path nginx-body;
    proxy_temp_path nginx-proxy;
    fastcgi_temp_path nginx-fastcgi;
    uwsgi_temp_path nginx-uwsgi;
    scgi_temp_path nginx-scgi;
    client_body_buffer_size 1m;
    client_max_body_size 8m;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    lua_package_path "@BENCH@/?.lua;/usr/share/lua/5.1/?.lua;;";
    init_by_lua_block { require("nginx_peer").init("@SECRET@") }
    server {
        listen 127.0.0.1:@PORT@;
        location = /mist { content_by_lua_block { require("nginx_peer").handle() } }
    }
}
"""


def nginx_cmd(tmp):
    prefix = os.path.join(tmp, "nginx")
    os.makedirs(prefix, exist_ok=True)
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.replace("@BENCH@", BENCH).replace("@SECRET@", SECRET)
                .replace("@PORT@", str(PORT)))
    return ["nginx", "-e", os.path.join(prefix, "nginx-error.log"), "-p", prefix + "/",
            "-c", conf]


def measure(tmp, posts, name, cmd, kind):
    """Runs server NAME on both bodies. KIND: "bare", "peer", "light", "send"."""
    rows = []
    server = Server(name, cmd, tmp)  # stopped by main's stop_all() if this fails
    if kind != "bare":
        preflight(server, posts[1][1])
    for n, (script, body) in posts.items():
        what = "%s, %d event%s" % (name, n, "" if n == 1 else "s")
        wrk(script, 1, what + " (warm-up)")
        server.alive()
        if kind == "send":
            drain(server, what)  # the window starts with an empty outbox
        before, t0 = (metrics() if kind == "send" else None), time.monotonic()
        row = wrk(script, SECONDS, what)
        elapsed = time.monotonic() - t0
        server.alive()
        row.update(name=name, n=n, size=len(body), kind=kind)
        if kind == "send":
            after = metrics()
            row["delivered"] = (after["done"] - before["done"]) / elapsed
            row["pending"] = after["events"] - after["done"]
            if after["dead"] > 0:
                raise Failed("%s: %d dead deliveries\n%s" % (what, after["dead"],
                                                             server.log_tail()))
            if row["delivered"] <= 0:
                raise Failed("%s: no delivery was made during the run\n%s" % (
                    what, server.log_tail()))
            row["drain_s"] = drain(server, what)
        if kind in ("light", "send") and n == 10 and os.environ.get("PROFILE"):
            profile(server.pid, script, tmp, what)
        rows.append(row)
    rss = status_kb(server.pid, "VmHWM") / 1024
    server.stop(expect=(0, -signal.SIGTERM) if kind == "bare" else (0,))
    for row in rows:
        row["rss"] = rss
    return rows


def drain(server, what, limit=60):
    """Waits until brume has delivered one message per event it took (every
    event of the bodies matches rogue_ap.lua); the seconds it took, or None."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        server.alive()
        m = metrics()
        if m["dead"] > 0:
            raise Failed("%s: %d dead deliveries\n%s" % (what, m["dead"], server.log_tail()))
        if m["done"] >= m["events"]:
            return time.monotonic() - t0
        time.sleep(0.1)
    return None


def profile(pid, script, tmp, what):
    """Where brume's time goes, by library and by function, from perf."""
    if not shutil.which("perf"):
        print("PROFILE: perf is not installed (apt-get install linux-perf)")
        return
    data = os.path.join(tmp, "perf.data")
    load = subprocess.Popen(wrk_cmd(script, 6, latency=False), stdout=subprocess.DEVNULL)
    running.append(load)
    time.sleep(1)
    r = subprocess.run(["perf", "record", "-e", "cpu-clock", "-F", "2000", "-p", str(pid),
                        "-o", data, "--", "sleep", "4"], capture_output=True, text=True)
    load.wait()
    running.remove(load)
    if r.returncode != 0:
        print("perf record failed: %s" % r.stderr.strip()[:200])
        return
    print("where brume's time goes (%s; perf samples):" % what)
    for sort, top in (("dso", 8), ("sym", 15)):
        rep = subprocess.run(["perf", "report", "-i", data, "--sort", sort, "--stdio"],
                             capture_output=True, text=True).stdout
        lines = [line.strip() for line in rep.splitlines()
                 if "%" in line and not line.startswith("#")]
        print("  by %s:\n" % ("library" if sort == "dso" else "function") +
              "\n".join("    " + line for line in lines[:top]))


# ----------------------------------------------------------------- long run


def writer_times(text, name):
    """The count, the mean (ms), how many took over 100 ms, and the upper
    bound (s) of the highest bucket that holds one, of histogram NAME."""
    buckets = [(float(le), float(n)) for le, n in
               re.findall(r'^%s_bucket\{le="([^"]+)"\} (\S+)$' % name, text, re.M)]
    count = float(re.search(r"^%s_count (\S+)$" % name, text, re.M).group(1))
    total = float(re.search(r"^%s_sum (\S+)$" % name, text, re.M).group(1))
    upto = dict(buckets)
    top = next((le for le, n in buckets if n >= count), float("inf"))
    return {"count": count, "mean_ms": total * 1000 / count if count else 0,
            "over_100ms": count - upto.get(0.1, count), "top": top}


def long_run(tmp, posts):
    """LONG_SECONDS at full speed on the durable light path with 10-event
    bodies and journal.max_size = JOURNAL_MAX_MB, then SIGTERM under load."""
    cmd = brume_config(tmp, "long", os.path.join(BENCH, "rules-light"), "full",
                       extra='journal = { max_size = "%dMB" }\nhttp = { drain_timeout = "%ds" }\n'
                       % (JOURNAL_MAX_MB, DRAIN_S))
    data = os.path.join(tmp, "var-long")
    script = posts[10][0]
    server = Server("brume long run", cmd, tmp)
    samples, stop = [], threading.Event()
    t_start = time.monotonic()

    def sample():
        while not stop.is_set():
            size = 0
            for suffix in ("", "-wal", "-shm"):
                try:
                    size += os.path.getsize(os.path.join(data, "brume.db" + suffix))
                except OSError:
                    pass
            try:
                rss = status_kb(server.pid, "VmRSS")
            except OSError:  # it has exited
                rss = None
            samples.append((time.monotonic() - t_start, size, rss))
            stop.wait(0.5)

    sampler = threading.Thread(target=sample)
    sampler.start()
    tail = None
    try:
        res = wrk(script, LONG_SECONDS, "long run", strict=False)  # failed after the report
        res["load_end"] = time.monotonic() - t_start
        server.alive()
        text = metrics_text()
        res["writer"] = {w: writer_times(text, "brume_journal_%s_seconds" % w)
                         for w in ("commit", "checkpoint")}
        # SIGTERM with requests in flight: a second load, whose answers are
        # not measured, keeps the connections busy through the drain.
        tail = subprocess.Popen(wrk_cmd(script, LONG_SECONDS, latency=False),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        running.append(tail)
        time.sleep(1)
        server.alive()
        t_term = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        try:
            rc = server.proc.wait(DRAIN_S + 5)
        except subprocess.TimeoutExpired:
            rc = None
        res["exit_s"] = time.monotonic() - t_term
        res["exit_rc"] = rc
    finally:
        stop.set()
        sampler.join()
        if tail is not None and tail.poll() is None:
            tail.send_signal(signal.SIGINT)  # wrk prints what it did so far and exits
            try:
                tail.wait(10)
            except subprocess.TimeoutExpired:
                tail.kill()
                tail.wait()
        if tail is not None:
            running.remove(tail)
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
        running.remove(server.proc)
        server.log.close()
    with open(server.log_path) as f:
        res["slow"] = [line.strip() for line in f if "the store was slow" in line]
    drained = tail.stdout.read() if tail else ""
    m = re.search(r"(\d+) requests in", drained)
    res["drain_requests"] = int(m.group(1)) if m else 0
    res["samples"] = samples
    return res


# ------------------------------------------------------------------- output


def machine(load):
    """The machine line; LOAD is the load average before the benchmark."""
    cpu = re.search(r"model name\s*:\s*(.*)", open("/proc/cpuinfo").read())
    fs = subprocess.run(["df", "--output=fstype", tempfile.gettempdir()], capture_output=True,
                        text=True).stdout.split()[-1:]
    return ("machine: %s, %d cores, Linux %s, %s, load average %.1f before the run; stores on "
            "%s; %d s per run, %d connections; servers on CPU %s, wrk on CPU %s, webhook sink "
            "on CPU %s%s" % (cpu.group(1) if cpu else platform.machine(), os.cpu_count(),
                             platform.release(), time.strftime("%Y-%m-%d"), load,
                             fs[0] if fs else "?", SECONDS, CONNS, SERVER_CPU, WRK_CPU, SINK_CPU,
                             " (shared with wrk)" if SINK_CPU == WRK_CPU else ""))


def table(rows):
    peer = {r["n"]: r["rps"] for r in rows if r["kind"] == "peer"}
    print("| server | body | req/s | events/s | delivered/s | p50 ms | p99 ms | max ms "
          "| peak RSS | vs nginx+Lua |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in (1, 10):
        for r in (r for r in rows if r["n"] == n):
            print("| %s | %d event%s (%d B) | %.0f | %.0f | %s | %.2f | %.2f | %.1f | %.1f MB "
                  "| %.2f |" % (r["name"], n, "" if n == 1 else "s", r["size"], r["rps"],
                                r["rps"] * n,
                                "%.0f" % r["delivered"] if "delivered" in r else "",
                                r["p50"], r["p99"], r["max"], r["rss"], r["rps"] / peer[n]))


def targets(rows, long):
    by = {(r["name"], r["n"]): r for r in rows}
    out = []

    def check(what, ok, shown, goal=""):
        out.append("- %s: %s: %s%s" % (what, shown, "met" if ok else "short", goal))

    for n in (1, 10):
        ev = "%d event%s" % (n, "" if n == 1 else "s")
        peer = by[("nginx+Lua", n)]["rps"]
        for d in ("none", "full"):
            x = by[("brume light, durability %s" % d, n)]["rps"] / peer
            check("light path (durability %s) vs nginx+Lua, %s, at least 1.0x" % (d, ev),
                  x >= 1.0, "%.2fx" % x, "; goal 1.25x %s" % ("met" if x >= 1.25 else "short"))
    for n in (1, 10):
        x = by[("brume light, durability full", n)]["rps"] / \
            by[("brume light, durability none", n)]["rps"]
        check("durable light path vs durability none, %d event%s, at least 0.8x" % (
            n, "" if n == 1 else "s"), x >= 0.8, "%.2fx" % x)
    for t in ("file", "webhook"):
        for n in (1, 10):
            s = by[("brume rogue_ap, %s target" % t, n)]
            light = by[("brume light, durability full", n)]["rps"]
            # A store that fills faster than the outbox empties it is not
            # throughput: count the lower of accepted and delivered rates.
            rate = min(s["rps"], s["delivered"] / n)
            x = rate / light
            check("one message per event (%s target) vs light path, %d event%s, at least 0.5x"
                  % (t, n, "" if n == 1 else "s"), x >= 0.5,
                  "%.2fx (%.0f req/s, %.0f delivered/s; %.0f undelivered at the end, %s)" % (
                      x, s["rps"], s["delivered"], s["pending"],
                      "delivered in %.1f s more" % s["drain_s"] if s["drain_s"] is not None
                      else "not all delivered 60 s later"))
    for n, limit in ((1, 1.5), (10, 3.0)):
        for d in ("none", "full"):
            p99 = by[("brume light, durability %s" % d, n)]["p99"]
            check("light path (durability %s) p99, %d event%s, %d connections, at most %.1f ms"
                  % (d, n, "" if n == 1 else "s", CONNS, limit), p99 <= limit,
                  "%.2f ms" % p99)
    rss = max(r["rss"] for r in rows if r["name"].startswith("brume"))
    check("peak RSS of a one-worker brume, every run, at most %d MB" % RSS_LIMIT_MB,
          rss <= RSS_LIMIT_MB, "%.1f MB" % rss)
    if long:
        cap = 3 * JOURNAL_MAX_MB
        peak = max(s[1] for s in long["samples"]) / 2**20
        check("long run: store (brume.db + -wal + -shm) at most 3 x journal.max_size = %d MB"
              % cap, peak <= cap, "peak %.1f MB" % peak)
        check("long run: every request answered 2xx", not long["errors"],
              long["errors"] or "%d requests" % long["requests"])
        check("long run: no request over 100 ms", long["max"] <= 100,
              "longest %.1f ms (p99 %.2f ms)" % (long["max"], long["p99"]))
        rc, t = long["exit_rc"], long["exit_s"]
        check("long run: SIGTERM under load exits 0 within http.drain_timeout (%d s)" % DRAIN_S,
              rc == 0 and t <= DRAIN_S,
              ("exit %d after %.2f s" % (rc, t)) if rc is not None else
              "still running %.0f s after it (killed)" % t)
        end = long["load_end"]
        first = [s[2] for s in long["samples"] if s[0] <= 10 and s[2]]
        last = [s[2] for s in long["samples"] if end - 10 <= s[0] <= end and s[2]]
        if first and last:
            a, b = max(first) / 1024, max(last) / 1024
            check("long run: RSS at most %d MB and flat (last 10 s within 10%% of the first 10 s)"
                  % RSS_LIMIT_MB, b <= RSS_LIMIT_MB and b <= a * 1.1,
                  "first 10 s %.1f MB, last 10 s %.1f MB" % (a, b))
    print("targets:")
    print("\n".join(out))


def print_long(long):
    samples = long["samples"]
    peak = max(samples, key=lambda s: s[1])
    rss = [s[2] for s in samples if s[2]]
    print("long run: %d s, light path, durability full, 10-event bodies, journal.max_size = "
          "%dMB: %.0f req/s, p50 %.2f ms, p99 %.2f ms, longest request %.1f ms" % (
              LONG_SECONDS, JOURNAL_MAX_MB, long["rps"], long["p50"], long["p99"], long["max"]))
    print("  store peak %.1f MB at %.0f s (3 x journal.max_size = %d MB); RSS %.1f to %.1f MB; "
          "store size every 5 s (MB):" % (peak[1] / 2**20, peak[0], 3 * JOURNAL_MAX_MB,
                                          min(rss) / 1024, max(rss) / 1024))
    marks = [s for i, s in enumerate(samples) if i % 10 == 0]
    print("   " + " ".join("%.0f" % (s[1] / 2**20) for s in marks))
    for what, w in sorted(long.get("writer", {}).items()):
        print("  the writer's %ss: %d, mean %.2f ms, %d over 100 ms, the longest at most %s" % (
            what, w["count"], w["mean_ms"], w["over_100ms"],
            "%g s" % w["top"] if w["top"] != float("inf") else "over 10 s"))
    for line in long["slow"][:10]:
        print("  brume logged: %s" % line)
    rc = long["exit_rc"]
    if long["errors"]:
        print("  errors: %s" % long["errors"])
    print("  SIGTERM with 32 connections busy: %s after %.2f s; %d requests answered meanwhile" % (
        "exit %d" % rc if rc is not None else "no exit (killed)", long["exit_s"],
        long["drain_requests"]))


def stages(tmp, posts):
    body10 = os.path.join(tmp, "body10.json")
    with open(body10, "w") as f:
        f.write(posts[10][1])
    r = subprocess.run(["taskset", "-c", SERVER_CPU,
                        os.path.join(SRC, BUILD, "tests", "bench_stages"), body10] +
                       [os.path.join(SRC, d) for d in ("tests/bench/rules-noop",
                                                       "tests/bench/rules-light",
                                                       "tests/bench/rules-send", "rules")],
                       capture_output=True, text=True, cwd=SRC)
    if r.returncode != 0:
        raise Failed("bench_stages failed (%d): %s" % (r.returncode, r.stderr.strip()))
    print("stages, per 10-event body, one core, no network (bench_stages):")
    print("    " + r.stdout.strip().replace("\n", "\n    "))


def main():
    for tool in ("wrk", "nginx", "taskset"):
        if not shutil.which(tool):
            raise Failed("%s is needed (./build.sh bench installs it)" % tool)
    if not os.path.exists("/usr/lib/nginx/modules/ngx_http_lua_module.so"):
        raise Failed("ngx_http_lua is needed: apt-get install libnginx-mod-http-lua")
    if os.cpu_count() < 2:
        raise Failed("the benchmark needs 2 CPUs (server and wrk apart)")
    os.sched_setaffinity(0, {int(WRK_CPU)})  # this script stays off the servers' CPU
    tmp = tempfile.mkdtemp(prefix="brume-bench-")
    t0, load, ok = time.monotonic(), os.getloadavg()[0], False
    try:
        posts = bodies(tmp)
        light = os.path.join(BENCH, "rules-light")
        shipped = os.path.join(SRC, "rules")
        hook = '{ kind = "webhook", url = "http://127.0.0.1:%d/hook" }' % SINK
        runs = [
            ("responder", [os.path.join(SRC, BUILD, "tests", "bench_responder"), str(PORT)],
             "bare"),
            ("nginx+Lua", nginx_cmd(tmp), "peer"),
            ("brume light, durability none", brume_config(tmp, "light-none", light, "none"),
             "light"),
            ("brume light, durability full", brume_config(tmp, "light-full", light, "full"),
             "light"),
            ("brume rogue_ap, file target", brume_config(tmp, "send-file", shipped, "full"),
             "send"),
            ("brume rogue_ap, webhook target",
             brume_config(tmp, "send-hook", shipped, "full", target=hook), "send"),
        ]
        only = os.environ.get("ONLY")  # a quick look at some rows: no long run, no targets
        if only:
            runs = [r for r in runs if r[2] == "peer" or only in r[0]]
        rows, sink_load = [], None
        for name, cmd, kind in runs:
            if kind == "send" and "webhook" in name:
                sink = Server("webhook sink", [os.path.join(SRC, BUILD, "tests",
                                                            "bench_responder"), str(SINK)],
                              tmp, cpu=SINK_CPU, port=SINK)
                cpu, t = cpu_seconds(sink.pid), time.monotonic()
                rows += measure(tmp, posts, name, cmd, kind)
                sink_load = (cpu_seconds(sink.pid) - cpu) / (time.monotonic() - t)
                sink.stop(expect=(0, -signal.SIGTERM))
            else:
                rows += measure(tmp, posts, name, cmd, kind)
        print(machine(load))
        print()
        table(rows)
        if sink_load is not None:
            print("\nThe webhook sink (bench_responder on CPU %s%s) used %.0f%% of a CPU during "
                  "its runs." % (SINK_CPU, ", shared with wrk" if SINK_CPU == WRK_CPU else "",
                                 sink_load * 100))
        if only:
            ok = True
            return
        print()
        stages(tmp, posts)
        print()
        long = long_run(tmp, posts)
        print_long(long)
        print()
        targets(rows, long)
        print("\n(the benchmark took %.0f s)" % (time.monotonic() - t0))
        if long["errors"]:
            raise Failed("long run: %s\n%s" % (long["errors"], long["out"]))
        ok = True
    finally:
        stop_all()
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("bench: files kept in %s" % tmp, file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except Failed as e:
        print("bench: FAILED: %s" % e, file=sys.stderr)
        sys.exit(1)
