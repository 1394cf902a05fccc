"""Measures brume and the bare responder with wrk on 127.0.0.1.

The server runs on CPU 0 and wrk on CPU 1 (taskset), brume with one worker,
32 connections, signed Mist alarm bodies of 1 and 10 events (the shipped
rogue-AP rule sends one message per event to a file target on /dev/null).
Prints req/s, events/s, p50 and p99 latency, peak RSS, and brume's
throughput as a ratio of the responder's; brume runs twice, its source
durable (the default: answered after the group's fsync) and with
durability = "none" (answered at once, committed after).
"""
import hashlib
import hmac
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

BUILD, SECONDS = sys.argv[1], int(sys.argv[2])
SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECRET = "bench-secret"
PORT = 18480
CONNS = 32


def bodies(tmp):
    with open(os.path.join(SRC, "tests/fixtures/mist/alarms--rogue-ap-const-alarm-defs.json")) as f:
        ev = json.load(f)["events"][0]
    out = {}
    for n in (1, 10):
        events = []
        for i in range(n):
            e = dict(ev, id="%s-%d" % (ev["id"][:-4], i))
            events.append(e)
        body = json.dumps({"topic": "alarms", "events": events}, separators=(",", ":"))
        sig = hmac.new(SECRET.encode(), body.encode(), hashlib.sha256).hexdigest()
        path = os.path.join(tmp, "post%d.lua" % n)
        with open(path, "w") as f:
            f.write('wrk.method = "POST"\nwrk.body = %s\n'
                    'wrk.headers["Content-Type"] = "application/json"\n'
                    'wrk.headers["User-Agent"] = "Mist-webhook"\n'
                    'wrk.headers["X-Mist-Signature-v2"] = "%s"\n' % (json.dumps(body), sig))
        out[n] = (path, len(body))
    return out


def wait_port(port, proc):
    import socket
    for _ in range(200):
        if proc.poll() is not None:
            raise SystemExit("server exited: %s" % proc.returncode)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("server did not listen on %d" % port)


def peak_rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1))


def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    x = float(m.group(1))
    return {"us": x / 1000, "ms": x, "s": x * 1000}[m.group(2)]


def wrk(script):
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c%d" % CONNS,
                          "-d%ds" % SECONDS, "--latency", "-s", script,
                          "http://127.0.0.1:%d/mist" % PORT],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        raise SystemExit("%s non-2xx answers:\n%s" % (bad.group(1), out))
    return rps, p50, p99


def serve(cmd, tmp, profile=None):
    log = open(os.path.join(tmp, "server.log"), "w")
    proc = subprocess.Popen(["taskset", "-c", "0"] + cmd, stdout=log, stderr=log, cwd=tmp)
    wait_port(PORT, proc)
    return proc, log


def main():
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    tmp = tempfile.mkdtemp(prefix="brume-bench-")
    posts = bodies(tmp)
    for name, durability in (("brume", "full"), ("brume-nodurable", "none")):
        with open(os.path.join(tmp, name + ".lua"), "w") as f:
            f.write('listen = "127.0.0.1:%d"\nadmin = false\nworkers = 1\ndata_dir = "%s"\n'
                    'rules = "%s/rules"\nlog = { level = "warn" }\n'
                    'sources = { mist = { path = "/mist", secret = "%s", durability = "%s" } }\n'
                    'targets = { secops = { kind = "file", path = "/dev/null" } }\n'
                    % (PORT, "var-" + name, SRC, SECRET, durability))
    servers = [
        ("responder", [os.path.join(SRC, BUILD, "tests", "bench_responder"), str(PORT)]),
        ("brume", [os.path.join(SRC, BUILD, "brume"), "run", "-c", "brume.lua"]),
        ("brume, durability none", [os.path.join(SRC, BUILD, "brume"), "run", "-c",
                                    "brume-nodurable.lua"]),
    ]
    results = {}
    for name, cmd in servers:
        proc, log = serve(cmd, tmp)
        try:
            for n, (script, size) in posts.items():
                subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c%d" % CONNS, "-d1s",
                                "-s", script, "http://127.0.0.1:%d/mist" % PORT],
                               capture_output=True, check=True)  # warm up
                results[(name, n)] = wrk(script) + (size,)
                if name == "brume" and n == 10 and os.environ.get("PROFILE"):
                    profile(proc.pid, script, tmp)
            rss = peak_rss_kb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            log.close()
        for n in posts:
            results[(name, n)] += (rss,)
    cpu = re.search(r"model name\s*:\s*(.*)", open("/proc/cpuinfo").read())
    print("machine: %s, %d CPUs, Linux %s; %ds per run, %d connections, server on CPU 0, "
          "wrk on CPU 1" % (cpu.group(1) if cpu else platform.machine(), os.cpu_count(),
                           platform.release(), SECONDS, CONNS))
    print("| server | body | req/s | events/s | p50 ms | p99 ms | peak RSS | vs responder |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for (name, n), (rps, p50, p99, size, rss) in sorted(results.items()):
        ratio = rps / results[("responder", n)][0]
        print("| %s | %d event%s (%d B) | %.0f | %.0f | %.2f | %.2f | %.1f MB | %.2f |" % (
            name, n, "" if n == 1 else "s", size, rps, rps * n, p50, p99, rss / 1024, ratio))
    body10 = os.path.join(tmp, "body10.json")
    with open(posts[10][0]) as f:
        body = json.loads(re.search(r"wrk.body = (.*)", f.read()).group(1))
    with open(body10, "w") as f:
        f.write(body)
    print("\nstages, per 10-event body, one core, no network (bench_stages):")
    out = subprocess.run(["taskset", "-c", "0", os.path.join(SRC, BUILD, "tests", "bench_stages"),
                          body10] + [os.path.join(SRC, d) for d in
                                     ("tests/bench/rules-noop", "tests/bench/rules-send", "rules")],
                         capture_output=True, text=True, check=True, cwd=SRC).stdout
    print("    " + out.strip().replace("\n", "\n    "))
    shutil.rmtree(tmp, ignore_errors=True)


def profile(pid, script, tmp):
    """Where brume's time goes, by library, from perf (if it works here)."""
    data = os.path.join(tmp, "perf.data")
    load = subprocess.Popen(["taskset", "-c", "1", "wrk", "-t1", "-c%d" % CONNS, "-d6s", "-s",
                             script, "http://127.0.0.1:%d/mist" % PORT],
                            stdout=subprocess.DEVNULL)
    time.sleep(1)
    r = subprocess.run(["perf", "record", "-F", "2000", "-p", str(pid), "-o", data, "--",
                        "sleep", "4"], capture_output=True, text=True)
    load.wait()
    if r.returncode != 0:
        print("perf record failed: %s" % r.stderr.strip()[:200])
        return
    rep = subprocess.run(["perf", "report", "-i", data, "--sort", "dso", "--stdio"],
                         capture_output=True, text=True).stdout
    print("where brume's time goes (10-event bodies, perf samples by library):")
    for line in rep.splitlines():
        if "%" in line and not line.startswith("#"):
            print("   ", line.strip())


if __name__ == "__main__":
    main()
