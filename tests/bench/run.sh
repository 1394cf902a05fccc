#!/bin/sh
# brume's benchmark (not a test): builds Release and measures, in one run,
# the bare libevent responder built from the same tree, nginx with
# ngx_http_lua doing what brume's light path does, brume's light path
# (durability none and full), brume sending one message per event (file and
# webhook targets), then a 75 s run on a 32MB journal (see bench.py).
#   tests/bench/run.sh [seconds per run, default 10]
#   tests/bench/run.sh shared [seconds]   the cost of shared rule state: two
#       brumes on one Redis against one on the embedded store (shared.py)
# PROFILE=1 also records where brume's time goes (perf).
set -eu
cd "$(dirname "$0")/../.."
cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-bench -j "$(nproc)" >/dev/null
if [ "${1:-}" = shared ]; then
    exec python3 tests/bench/shared.py build-bench "${2:-10}"
fi
exec python3 tests/bench/bench.py build-bench "${1:-10}"
