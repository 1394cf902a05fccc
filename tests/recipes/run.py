#!/usr/bin/env python3
"""Clock tests, run through `brume test CASES.lua` as users run theirs:

- every recipe's test, examples/recipes/tests/*.lua, on the config the
  recipes run with (examples/recipes/brume.lua, its secrets set here);
- the rule builders' tests (brume.holddown, digest, absence, flap),
  tests/recipes/helpers/cases/*.lua, on tests/recipes/helpers/brume.lua.

Each must exit 0 with its "ok" line; `brume check` must accept the recipes'
config; every recipe must have a test; and a rule builder given a wrong
table must be reported as the rule file's error.
"""
import glob
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("BRUME_SRC", os.path.dirname(os.path.dirname(HERE)))
BRUME = os.environ.get("BRUME", os.path.join(SRC, "build", "brume"))
RECIPES = os.path.join(SRC, "examples", "recipes")

# What the recipes' config reads with env(): test values, nothing is sent.
ENV = {
    "MIST_WEBHOOK_SECRET": "recipe-tests",
    "SLACK_SECOPS_URL": "https://hooks.slack.com/services/T000/B000/secops",
    "SLACK_FACILITIES_URL": "https://hooks.slack.com/services/T000/B000/facilities",
    "TEAMS_NETOPS_URL": "https://example.westeurope.logic.azure.com/workflows/netops",
    "PAGERDUTY_ROUTING_KEY": "R0000000000000000000000000000000",
    "SERVICENOW_URL": "https://example.service-now.com",
    "SERVICENOW_PASSWORD": "recipe-tests",
    "LOCATION_WEBHOOK_URL": "https://example.com/locations",
    "LOCATION_WEBHOOK_SECRET": "whsec_cmVjaXBlLXRlc3Rz",
}


def brume(*args):
    env = dict(os.environ, **ENV)
    return subprocess.run([BRUME] + list(args), capture_output=True, text=True, env=env,
                          timeout=120)


def run_case(config, case):
    proc = brume("test", "-c", config, case)
    name = os.path.relpath(case, SRC)
    if proc.returncode != 0 or not proc.stdout.startswith("ok "):
        print("FAIL %s (exit %d)\n%s%s" % (name, proc.returncode, proc.stdout, proc.stderr))
        return False
    print(proc.stdout.strip())
    return True


# A rule builder given a wrong table: `brume check` names the rule file (a
# `return require "brume.x" {...}` is a tail call: no line of it is left).
BAD_RULES = {
    "hold.lua": ('return require "brume.holddown" {\n  topics = "x", key = print, down = print,\n'
                 '  send = print, afterr = "5m" }\n',
                 "hold.lua: brume.holddown: unknown option 'afterr' (after, down, keep, key, "
                 "send, stable, up, or a rule's name, topics, where, description, late)"),
    "need.lua": ('return require "brume.absence" { topics = "x", key = print, send = print }\n',
                 "need.lua: brume.absence: within is required"),
    "when.lua": ('return require "brume.flap" { topics = "x", key = print, send = print,\n'
                 '  count = 3, within = "soon" }\n',
                 'when.lua: brume.flap: within: expected a duration ("90s", "15m", "24h"), '
                 'not soon'),
    "count.lua": ('return require "brume.flap" { topics = "x", key = print, send = print,\n'
                  '  count = 1, within = "5m" }\n',
                  "count.lua: brume.flap: count: expected a whole number from 2 to 1000"),
    "where.lua": ('return require "brume.digest" { topics = "x", window = "5m" }\n',
                  "where.lua: brume.digest: give target, or send = function(key, items, ctx, "
                  "message)"),
    "topics.lua": ('return require "brume.digest" { window = "5m", target = "out" }\n',
                   "topics.lua: brume.digest: topics is required"),
}


def check_bad_rules():
    ok = True
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "brume.lua"), "w") as f:
            f.write('sources = { mist = { path = "/mist", secret = "s" } }\n'
                    'targets = { out = { kind = "file", path = "out.jsonl" } }\n')
        os.mkdir(os.path.join(d, "rules"))
        for name, (text, _) in BAD_RULES.items():
            with open(os.path.join(d, "rules", name), "w") as f:
                f.write(text)
        proc = brume("check", "-c", os.path.join(d, "brume.lua"))
        for name, (_, want) in sorted(BAD_RULES.items()):
            if proc.returncode != 1 or ("rules/" + want) not in proc.stderr:
                print("FAIL brume check does not say %r\n%s" % (want, proc.stderr))
                ok = False
    print("ok   the rule builders' errors name the rule file" if ok else "")
    return ok


def main():
    results = []
    config = os.path.join(RECIPES, "brume.lua")
    proc = brume("check", "-c", config)
    print(proc.stdout.strip() or proc.stderr.strip())
    results.append(proc.returncode == 0)
    rules = sorted(os.path.basename(p) for p in glob.glob(os.path.join(RECIPES, "rules", "*.lua")))
    tests = sorted(os.path.basename(p) for p in glob.glob(os.path.join(RECIPES, "tests", "*.lua")))
    for r in rules:
        if r not in tests:
            print("FAIL recipe %s has no test in examples/recipes/tests" % r)
            results.append(False)
    for t in tests:
        results.append(run_case(config, os.path.join(RECIPES, "tests", t)))
    helpers = os.path.join(HERE, "helpers")
    for case in sorted(glob.glob(os.path.join(helpers, "cases", "*.lua"))):
        results.append(run_case(os.path.join(helpers, "brume.lua"), case))
    results.append(check_bad_rules())
    print("%d checks, %d failed" % (len(results), results.count(False)))
    return 0 if len(results) > 1 and all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
