#!/bin/sh
# brume's set-up in one place. On a fresh Debian 12 machine:
#
#   ./build.sh run    install what is missing, build, start brume on examples/brume.lua
#   ./build.sh test   install what is missing, build with ASan+UBSan, run the whole suite
#   ./build.sh bench  build Release and run the benchmark (tests/bench/run.sh [seconds])
#   ./build.sh bench shared [S]  the cost of shared rule state in Redis (tests/bench/shared.py)
#   ./build.sh fuzz [S] [--runs N] [--jobs J] [--sanitize LIST] [TARGET...]  build the
#                     fuzz targets with clang and libFuzzer, run each (default: all) for
#                     S seconds (default 60) or N inputs, in J processes (default 1), under
#                     LIST (default address,undefined); new inputs go to build-fuzz/corpus/
#                     and crashes to build-fuzz/crashes/
#   ./build.sh deb [DIR] build the Debian package DIR/brume_<version>_<arch>.deb (DIR:
#                     build-deb); install it with: sudo apt install ./build-deb/brume_*.deb
#
# Packages come from Debian's archive only (apt-get, as root or through sudo).
set -eu
cd "$(dirname "$0")"

DEPS="cmake make gcc pkg-config python3 liblua5.4-dev libevent-dev libssl-dev
      libsqlite3-dev libcurl4-openssl-dev libhiredis-dev librdkafka-dev liblz4-dev openssl"
BENCH_DEPS="wrk nginx libnginx-mod-http-lua lua-cjson redis-server" # wrk, the nginx+Lua peer, Redis
FUZZ_DEPS="clang libclang-rt-14-dev"
FUZZ_TARGETS="wire verify json config pattern api" # tests/fuzz/fuzz_*.c
RUN_DEPS="curl" # the README's quick start posts with it
DEB_DEPS="dpkg-dev file" # cpack's DEB generator runs dpkg-shlibdeps and file
# The package's test builds one and checks it; the console's browser test
# (tests/integration/browser_console.py) drives headless Chromium through
# chromedriver from Debian's python3.
# The shared-state tests start Debian's redis-server (TLS and Sentinel
# included) on 127.0.0.1, and haproxy in front of two instances (deploy/).
TEST_DEPS="$DEB_DEPS lintian chromium chromium-driver python3-selenium redis-server haproxy"

need() {
    missing=""
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing="$missing $p"
    done
    [ -z "$missing" ] && return 0
    echo "build.sh: installing$missing" >&2
    if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
        echo "build.sh: need root (or sudo) to install:$missing" >&2
        exit 1
    fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    # shellcheck disable=SC2086
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
}

jobs=$(nproc 2>/dev/null || echo 2)

build() { # build DIR TYPE [cmake options...]
    dir=$1 type=$2
    shift 2
    cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE="$type" "$@" >/dev/null
    cmake --build "$dir" -j "$jobs"
}

# Builds the fuzz targets with libFuzzer under $sanitize and runs each of
# $targets for $seconds seconds or $runs inputs, one after the other, from
# its committed corpus, in $fuzz_jobs processes at once (each its share of
# the runs, with its own seed and log, sharing the corpus); says how many
# inputs each target ran, in how long, and where the input of any crash
# went. Fails when one crashed.
fuzz_campaigns() {
    dir=build-fuzz out=build-fuzz crashed=""
    [ "$sanitize" = address,undefined ] || dir="build-fuzz-$(echo "$sanitize" | tr , -)"
    limit="-max_total_time=$seconds"
    [ -z "$runs" ] || limit="-runs=$(((runs + fuzz_jobs - 1) / fuzz_jobs))"
    cmake -S . -B $dir -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang \
        -DBRUME_SANITIZE="fuzzer-no-link,$sanitize" -DBRUME_WERROR=OFF >/dev/null
    for t in $targets; do
        cmake --build $dir -j "$jobs" --target "fuzz_$t" >$dir/build.log 2>&1 ||
            { cat $dir/build.log >&2; exit 1; }
    done
    mkdir -p $out/crashes
    for t in $targets; do
        mkdir -p "$out/corpus/$t"
        log="$out/fuzz_$t.log" rc=0 start=$(date +%s) pids="" logs="" timeout=10
        # An input of config runs a config twice (load, then check), each
        # within the config's own 5 s of CPU.
        [ "$t" != config ] || timeout=30
        for j in $(seq 1 "$fuzz_jobs"); do
            [ "$fuzz_jobs" = 1 ] || log="$out/fuzz_$t.$j.log"
            logs="$logs $log"
            "$dir/tests/fuzz/fuzz_$t" "$limit" -seed="$j$start" -timeout=$timeout -rss_limit_mb=2048 \
                -print_final_stats=1 -artifact_prefix="$out/crashes/$t-" \
                "$out/corpus/$t" "tests/fuzz/corpus/$t" >"$log" 2>&1 &
            pids="$pids $!"
        done
        for p in $pids; do wait "$p" || rc=$?; done
        # shellcheck disable=SC2086
        ran=$(sed -n 's/^stat::number_of_executed_units: *//p' $logs | awk '{ n += $1 } END { print n }')
        took=$(($(date +%s) - start))
        if [ $rc -eq 0 ]; then
            echo "fuzz_$t: ${ran:-?} executions in ${took}s (processes: $fuzz_jobs, sanitizers: $sanitize), no crash"
        else
            crashed="$crashed $t"
            echo "fuzz_$t: CRASH after ${ran:-?} executions (logs:$logs)"
            # shellcheck disable=SC2086
            grep -E "^SUMMARY|^==[0-9]+==ERROR|property broken|Test unit written" $logs | sed 's/^/    /'
        fi
    done
    [ -z "$crashed" ] || { echo "build.sh: crashes in:$crashed" >&2; exit 1; }
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
run)
    need $DEPS $RUN_DEPS
    build build Release
    if [ -z "${MIST_WEBHOOK_SECRET:-}" ]; then
        # A secret for trying brume out; set your own (the one in Mist) to use it for real.
        mkdir -p var
        [ -s var/quickstart-secret ] ||
            (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >var/quickstart-secret)
        MIST_WEBHOOK_SECRET=$(cat var/quickstart-secret)
        export MIST_WEBHOOK_SECRET
        echo "build.sh: MIST_WEBHOOK_SECRET is not set; using the one in var/quickstart-secret" >&2
    fi
    exec build/brume run -c examples/brume.lua "$@"
    ;;
test)
    need $DEPS $TEST_DEPS
    # The suite runs under AddressSanitizer and UndefinedBehaviorSanitizer,
    # in an optimised build so -O2's warnings are errors too.
    build build-test RelWithDebInfo -DBRUME_SANITIZE=address,undefined
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:strict_string_checks=1} \
    UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
        ctest --test-dir build-test --output-on-failure -j "$jobs" "$@"
    ;;
bench)
    need $DEPS $BENCH_DEPS
    exec tests/bench/run.sh "$@"
    ;;
fuzz)
    need $DEPS $FUZZ_DEPS
    seconds=60 runs="" targets="" fuzz_jobs=1 sanitize=address,undefined
    case "${1:-}" in [0-9]*) seconds=$1 && shift ;; esac
    while :; do
        case "${1:-}" in
        --runs) runs=${2:?"build.sh: --runs takes a count"} ;;
        --jobs) fuzz_jobs=${2:?"build.sh: --jobs takes a count"} ;;
        --sanitize) sanitize=${2:?"build.sh: --sanitize takes a list (address,undefined)"} ;;
        *) break ;;
        esac
        shift 2
    done
    for t in "$@"; do
        case " $FUZZ_TARGETS " in
        *" $t "*) targets="$targets $t" ;;
        *) echo "build.sh: no fuzz target $t (there are: $FUZZ_TARGETS)" >&2 && exit 2 ;;
        esac
    done
    targets=${targets:-$FUZZ_TARGETS}
    fuzz_campaigns
    ;;
deb)
    need $DEPS $DEB_DEPS
    dir=${1:-build-deb}
    # Built as Debian builds its packages: the flags of dpkg-buildflags with
    # every hardening feature (PIE, relro and bindnow, fortify, stack
    # protector), no build type's own on top; without the tests.
    export DEB_BUILD_MAINT_OPTIONS=hardening=+all
    maintainer="brume maintainers <brume@example.org>"
    [ -n "${DEBEMAIL:-}" ] && maintainer="${DEBFULLNAME:-$DEBEMAIL} <$DEBEMAIL>"
    build "$dir" None -DBRUME_DEB=ON -DBRUME_TESTS=OFF -DCMAKE_INSTALL_PREFIX=/usr \
        -DCMAKE_C_FLAGS="$(dpkg-buildflags --get CFLAGS) $(dpkg-buildflags --get CPPFLAGS)" \
        -DCMAKE_EXE_LINKER_FLAGS="$(dpkg-buildflags --get LDFLAGS)" \
        -DBRUME_DEB_MAINTAINER="$maintainer"
    rm -f "$dir"/brume_*.deb
    (cd "$dir" && cpack -G DEB >cpack.log 2>&1) || { cat "$dir/cpack.log" >&2; exit 1; }
    ls "$dir"/brume_*.deb
    ;;
*)
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
