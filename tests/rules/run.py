#!/usr/bin/env python3
"""Rule tests, run through `brume test` as users run theirs.

Each folder in cases/ holds a case.json:
  {"config": "brume.lua" (relative to the case, or "@examples/brume.lua"),
   "payloads": ["../../fixtures/mist/x.json" or "@fixtures" for all of them],
   "exit": 0, "stderr": ["text that must appear", ...]}
and expected.jsonl: the lines brume test must print, compared as JSON
(key order does not matter), in order.
"""
import glob
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("BRUME_SRC", os.path.dirname(os.path.dirname(HERE)))
BRUME = os.environ.get("BRUME", os.path.join(SRC, "build", "brume"))
FIXTURES = os.path.join(SRC, "tests", "fixtures", "mist")


def resolve(case_dir, p):
    if p == "@fixtures":
        return sorted(glob.glob(os.path.join(FIXTURES, "*.json")))
    if p.startswith("@"):
        return [os.path.join(SRC, p[1:])]
    return [os.path.normpath(os.path.join(case_dir, p))]


def normalize(v):
    """Request bodies are JSON inside strings: compare them parsed, so the
    order of keys (Lua's hash order) does not matter."""
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            if k == "body" and isinstance(x, str):
                try:
                    x = json.loads(x)
                except ValueError:
                    pass
            out[k] = normalize(x)
        return out
    if isinstance(v, list):
        return [normalize(x) for x in v]
    return v


def run_case(case_dir):
    spec = json.load(open(os.path.join(case_dir, "case.json")))
    config = resolve(case_dir, spec["config"])[0]
    payloads = [x for p in spec["payloads"] for x in resolve(case_dir, p)]
    env = dict(os.environ, MIST_WEBHOOK_SECRET="rule-tests")
    proc = subprocess.run([BRUME, "test", "-c", config] + payloads, capture_output=True,
                          text=True, env=env, timeout=60)
    problems = []
    if proc.returncode != spec.get("exit", 0):
        problems.append("exit %d, want %d" % (proc.returncode, spec.get("exit", 0)))
    for want in spec.get("stderr", []):
        if want not in proc.stderr:
            problems.append("stderr lacks %r" % want)
    got = [normalize(json.loads(line)) for line in proc.stdout.splitlines() if line.strip()]
    with open(os.path.join(case_dir, "expected.jsonl")) as f:
        want = [normalize(json.loads(line)) for line in f if line.strip()]
    if got != want:
        problems.append("output differs:\n  got:\n    %s\n  want:\n    %s" % (
            "\n    ".join(json.dumps(g, sort_keys=True) for g in got),
            "\n    ".join(json.dumps(w, sort_keys=True) for w in want)))
    if problems:
        print("FAIL %s\n  %s\n  stderr:\n%s" % (os.path.basename(case_dir), "\n  ".join(problems),
                                                proc.stderr))
        return False
    print("ok   %s (%d messages)" % (os.path.basename(case_dir), len(got)))
    return True


def main():
    cases = sorted(d for d in glob.glob(os.path.join(HERE, "cases", "*")) if os.path.isdir(d))
    results = [run_case(d) for d in cases]
    print("%d cases, %d failed" % (len(results), results.count(False)))
    return 0 if cases and all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
