#!/bin/sh
# brume's benchmark (not a test): builds Release and measures brume against
# the bare libevent responder built from the same tree, in the same run.
#   tests/bench/run.sh [seconds per run, default 10]
# PROFILE=1 also records where brume's time goes (perf, when it works here).
set -eu
cd "$(dirname "$0")/../.."
cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-bench -j "$(nproc)" >/dev/null
exec python3 tests/bench/bench.py build-bench "${1:-10}"
