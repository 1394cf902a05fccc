#!/bin/sh
# brume's benchmark (not a test): builds Release and measures, in one run,
# the bare libevent responder built from the same tree, nginx with
# ngx_http_lua doing what brume's light path does, brume's light path
# (durability none and full), brume sending one message per event (file and
# webhook targets), then a 75 s run on a 32MB journal (see bench.py).
#   tests/bench/run.sh [seconds per run, default 10]
# PROFILE=1 also records where brume's time goes (perf).
set -eu
cd "$(dirname "$0")/../.."
cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-bench -j "$(nproc)" >/dev/null
exec python3 tests/bench/bench.py build-bench "${1:-10}"
