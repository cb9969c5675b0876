#!/usr/bin/env bash
# chorus side by side with nginx (configured as a careful user proxies SSE) and
# with no proxy at all, in one run: prints one table and writes
# bench/results/<timestamp>.json (and .md). See README.md, "Performance".
#
#   bash bench/run.sh                 # everything, under 10 minutes on 2 cores
#   SCENARIOS="fanout cancel" bash bench/run.sh
#
# Environment knobs:
#   SCENARIOS        subset of: passthrough h2 ttft distinct fanout cancel startup
#   FANOUT_SIZES     default "1000 10000"
#   ROUNDS           rounds of passthrough, distinct and fan-out, targets
#                    interleaved in each; the table shows each figure's
#                    median over the rounds (default 3)
#   PASS_SECONDS     measured seconds per passthrough run (default 5)
#   CHORUS_ALT_BIN   a second chorus binary measured in the same run as target
#                    "chorus-alt" (e.g. one built with another allocator);
#                    CHORUS_ALT_LABEL names it in the table
#   BENCH_PORT_BASE  first of the 8 loopback ports used (default: the first
#                    of 19100, 19110, ... whose 8 ports nobody listens on)
#   SKIP_INSTALL=1, SKIP_BUILD=1
#
# Layout: the proxy under test runs alone on CPU 0; the mock upstream and the
# load generators share CPU 1 (tokio sizes its worker pool from the affinity
# mask, so chorus runs one worker, like nginx's one worker process). Every
# process it starts is stopped on exit, failure included.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

ALL_SCENARIOS="passthrough h2 ttft distinct fanout cancel startup"
SCENARIOS=${SCENARIOS:-$ALL_SCENARIOS}
for scenario in $SCENARIOS; do
    [[ " $ALL_SCENARIOS " == *" $scenario "* ]] || {
        echo "bench/run.sh: unknown scenario '$scenario' (known: $ALL_SCENARIOS)" >&2
        exit 2
    }
done
FANOUT_SIZES=${FANOUT_SIZES:-"1000 10000"}
ROUNDS=${ROUNDS:-3}
PASS_SECONDS=${PASS_SECONDS:-5}
CHORUS_ALT_BIN=${CHORUS_ALT_BIN:-}
CHORUS_ALT_LABEL=${CHORUS_ALT_LABEL:-chorus-alt}
MOCK_INTERVAL=50ms # 20 events/s

CHORUS=$ROOT/target/release/chorus
LOADGEN=$ROOT/target/release/examples/loadgen
TAG="r$(date +%s)"

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# ---------------------------------------------------------------------------
# Processes we start, stopped whatever happens.

RUN=$(mktemp -d /tmp/chorus-bench.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 60); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [[ -n ${KEEP_RUN_DIR:-} ]]; then
        log "run directory kept: $RUN"
    else
        rm -rf "$RUN"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

forget() {
    local gone=$1 kept=() pid
    for pid in "${PIDS[@]}"; do
        [[ $pid == "$gone" ]] || kept+=("$pid")
    done
    PIDS=("${kept[@]}")
}

stop() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    forget "$pid"
}

# ---------------------------------------------------------------------------
# Set-up

ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)

# Command prefixes (arrays, so that a process started in the background with
# them is the very process whose pid `$!` gives: taskset execs).
if [[ $(nproc) -ge 2 ]] && command -v taskset >/dev/null; then
    PIN=1
    ON_PROXY_CPU=(taskset -c 0)
    ON_LOAD_CPU=(taskset -c 1)
else
    PIN=0
    ON_PROXY_CPU=()
    ON_LOAD_CPU=()
    log "fewer than 2 CPUs or no taskset: nothing is pinned"
fi

# The Debian packages whose commands the run needs and this machine lacks.
missing_packages() {
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || echo nginx-light
    command -v wrk >/dev/null || echo wrk
    command -v h2load >/dev/null || echo nghttp2-client
    command -v curl >/dev/null || echo curl
    command -v python3 >/dev/null || echo python3
    command -v taskset >/dev/null || echo util-linux
}
mapfile -t missing < <(missing_packages)
if [[ ${#missing[@]} -gt 0 && -z ${SKIP_INSTALL:-} ]]; then
    log "installing ${missing[*]} from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
        { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
    mapfile -t missing < <(missing_packages)
fi
[[ ${#missing[@]} -eq 0 ]] || die "missing Debian packages: ${missing[*]} (install them, or run without SKIP_INSTALL)"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

if [[ -z ${SKIP_BUILD:-} ]]; then
    log "building chorus and the load generator (release)"
    # Apart: built with an example, chorus would get its dev-dependencies'
    # features too (tokio's test-util), unlike the binary cargo build makes.
    cargo build --release --locked --bin chorus 2>&1 | grep -v '^\s*Compiling' >&2 || true
    cargo build --release --locked --example loadgen 2>&1 | grep -v '^\s*Compiling' >&2 || true
fi
[[ -x $CHORUS && -x $LOADGEN ]] || die "release build missing: $CHORUS, $LOADGEN"

RESULTS=$RUN/results.jsonl
: >"$RESULTS"

# ---------------------------------------------------------------------------
# Measuring processes

# CPU seconds (user + system) of the given pids, all threads.
cpu_of() {
    local total=0 pid
    for pid in "$@"; do
        # Fields 14 and 15 of stat(5), counted after the ")" of the command name.
        total=$(awk -v t="$total" '{ sub(/.*\) /, ""); print t + ($12 + $13) / 100 }' "/proc/$pid/stat")
    done
    echo "$total"
}
# Sum of a /proc/PID/status field (kB) over the pids.
kib_of() {
    local field=$1 total=0 pid
    shift
    for pid in "$@"; do
        total=$((total + $(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$pid/status")))
    done
    echo "$total"
}
mock_stats() { curl -sf "http://127.0.0.1:$MOCK_PORT/stats"; }

# CPU 0's user + nice + system seconds, and its steal seconds, from /proc/stat:
# what ran on the proxy's core, whoever it was.
cpu0_times() { awk '$1 == "cpu0" { printf "%.2f %.2f", ($2 + $3 + $4) / 100, $9 / 100 }' /proc/stat; }

wait_port() { "$LOADGEN" wait --addr "127.0.0.1:$1" --timeout-ms 10000 >/dev/null; }
# Whether nothing accepts on the port (something else's server would
# otherwise answer our load and "pass" our readiness checks).
port_free() { ! "$LOADGEN" wait --addr "127.0.0.1:$1" --timeout-ms 1 >/dev/null 2>&1; }
ports_free() {
    local port
    for port in $(seq "$1" $(($1 + 7))); do port_free "$port" || return 1; done
}

if [[ -n ${BENCH_PORT_BASE:-} ]]; then
    PORT_BASE=$BENCH_PORT_BASE
    ports_free "$PORT_BASE" || die "a port in $PORT_BASE..$((PORT_BASE + 7)) is in use"
else
    PORT_BASE=""
    for base in $(seq 19100 10 19190); do
        if ports_free "$base"; then
            PORT_BASE=$base
            break
        fi
    done
    [[ -n $PORT_BASE ]] || die "no 8 free ports in 19100..19197; set BENCH_PORT_BASE"
fi
MOCK_PORT=$PORT_BASE
CHORUS_PORT=$((PORT_BASE + 1))
CHORUS_ADMIN_PORT=$((PORT_BASE + 2))
NGINX_PORT=$((PORT_BASE + 3))
ALT_PORT=$((PORT_BASE + 4))
ALT_ADMIN_PORT=$((PORT_BASE + 5))
FLOOR_PORT=$((PORT_BASE + 6))
NGINX_H2_PORT=$((PORT_BASE + 7)) # nginx's HTTP/2 cleartext listener

# ---------------------------------------------------------------------------
# The processes under test. Each start sets PROXY_PIDS (what is measured) and
# PROXY_MAIN (what is stopped).

start_mock() {
    port_free "$MOCK_PORT" || die "port $MOCK_PORT is taken by another process"
    RUST_LOG=warn "${ON_LOAD_CPU[@]}" "$CHORUS" mock-upstream --listen "127.0.0.1:$MOCK_PORT" \
        --interval "$MOCK_INTERVAL" 2>>"$RUN/mock.log" &
    MOCK_PID=$!
    PIDS+=("$MOCK_PID")
    wait_port "$MOCK_PORT" || die "the mock upstream did not start (see $RUN/mock.log)"
}

chorus_env() {
    # $1 port, $2 admin port
    echo "BENCH_CHORUS_PORT=$1 BENCH_CHORUS_ADMIN_PORT=$2 BENCH_MOCK_PORT=$MOCK_PORT RUST_LOG=warn"
}

start_chorus() {
    # $1 binary, $2 port, $3 admin port
    port_free "$2" || die "port $2 is taken by another process"
    env $(chorus_env "$2" "$3") "${ON_PROXY_CPU[@]}" "$1" --config bench/chorus.toml \
        2>>"$RUN/chorus.log" &
    PROXY_MAIN=$!
    PIDS+=("$PROXY_MAIN")
    wait_port "$2" || die "chorus did not start (see $RUN/chorus.log)"
    PROXY_PIDS=("$PROXY_MAIN")
}

nginx_conf() {
    # $1 workers
    local conf=$RUN/nginx-$1.conf reuseport=""
    [[ $1 -gt 1 ]] && reuseport=reuseport
    mkdir -p "$RUN/client_body" "$RUN/proxy" "$RUN/fastcgi" "$RUN/uwsgi" "$RUN/scgi"
    sed -e "s|@RUN@|$RUN|g" -e "s|@PORT@|$NGINX_PORT|g" -e "s|@MOCK_PORT@|$MOCK_PORT|g" \
        -e "s|@H2_PORT@|$NGINX_H2_PORT|g" -e "s|@WORKERS@|$1|g" -e "s|@NOFILE@|$NOFILE|g" -e "s|@REUSEPORT@|$reuseport|g" \
        bench/nginx.conf.in >"$conf"
    echo "$conf"
}

start_nginx() {
    # $1 workers (default 1)
    local workers=${1:-1} conf
    port_free "$NGINX_PORT" || die "port $NGINX_PORT is taken by another process"
    conf=$(nginx_conf "$workers")
    "${ON_PROXY_CPU[@]}" "$NGINX" -c "$conf" -p "$RUN" 2>>"$RUN/nginx.log" &
    PROXY_MAIN=$!
    PIDS+=("$PROXY_MAIN")
    wait_port "$NGINX_PORT" || die "nginx did not start (see $RUN/nginx-error.log)"
    for _ in $(seq 1 100); do
        mapfile -t PROXY_PIDS < <(pgrep -P "$PROXY_MAIN")
        [[ ${#PROXY_PIDS[@]} -ge $workers ]] && break
        sleep 0.01
    done
}

start_floor() {
    # $1 clients, $2 first byte delay ms: the fan-out floor (loadgen broadcast),
    # on the proxy's CPU; it serves one stream to $1 clients and then lingers
    # until stopped, so that its CPU time and memory can be read.
    port_free "$FLOOR_PORT" || die "port $FLOOR_PORT is taken by another process"
    "${ON_PROXY_CPU[@]}" "$LOADGEN" broadcast --listen "127.0.0.1:$FLOOR_PORT" --clients "$1" \
        --tokens 40 --interval-ms "${MOCK_INTERVAL%ms}" --first-byte-delay-ms "$2" --linger-ms 60000 \
        >>"$RUN/floor.log" 2>&1 &
    PROXY_MAIN=$!
    PIDS+=("$PROXY_MAIN")
    wait_port "$FLOOR_PORT" || die "the floor did not start (see $RUN/floor.log)"
    PROXY_PIDS=("$PROXY_MAIN")
}

TARGETS=(direct nginx chorus)
[[ -n $CHORUS_ALT_BIN ]] && TARGETS+=(chorus-alt)

# Starts the proxy for a target and sets ADDR_PORT; direct starts nothing.
start_target() {
    # $1 target, $2 nginx workers
    PROXY_PIDS=()
    PROXY_MAIN=""
    case $1 in
    direct) ADDR_PORT=$MOCK_PORT ;;
    nginx)
        start_nginx "${2:-1}"
        ADDR_PORT=$NGINX_PORT
        ;;
    chorus)
        start_chorus "$CHORUS" "$CHORUS_PORT" "$CHORUS_ADMIN_PORT"
        ADDR_PORT=$CHORUS_PORT
        ;;
    chorus-alt)
        start_chorus "$CHORUS_ALT_BIN" "$ALT_PORT" "$ALT_ADMIN_PORT"
        ADDR_PORT=$ALT_PORT
        ;;
    floor)
        start_floor "$FLOOR_CLIENTS" "$FLOOR_DELAY"
        ADDR_PORT=$FLOOR_PORT
        ;;
    esac
    sleep 0.2
    IDLE_RSS=0
    [[ ${#PROXY_PIDS[@]} -eq 0 ]] || IDLE_RSS=$(kib_of VmRSS "${PROXY_PIDS[@]}")
}

stop_target() {
    [[ -z $PROXY_MAIN ]] || stop "$PROXY_MAIN"
}

# The proxy's figures around a measured command: cpu_s, idle/peak RSS, and
# the mock's counters before and after. Sets PROXY_JSON and MOCK_JSON.
measure() {
    local cpu0 cpu1 stats0 stats1 peak=0 core0 core1
    stats0=$(mock_stats)
    core0=$(cpu0_times)
    cpu0=0
    [[ ${#PROXY_PIDS[@]} -eq 0 ]] || cpu0=$(cpu_of "${PROXY_PIDS[@]}")
    OUT=$("$@")
    core1=$(cpu0_times)
    if [[ ${#PROXY_PIDS[@]} -gt 0 ]]; then
        cpu1=$(cpu_of "${PROXY_PIDS[@]}")
        peak=$(kib_of VmHWM "${PROXY_PIDS[@]}")
        # Work on the proxy's core that was not the proxy's: other processes
        # on this machine competing with it (meaningful only when pinned).
        PROXY_JSON=$(awk -v a="$cpu0" -v b="$cpu1" -v c0="$core0" -v c1="$core1" \
            -v n="${#PROXY_PIDS[@]}" -v idle="$IDLE_RSS" -v peak="$peak" 'BEGIN {
                split(c0, x, " "); split(c1, y, " ")
                other = (y[1] - x[1]) - (b - a); if (other < 0) other = 0
                printf "{\"pids\":%d,\"cpu_s\":%.2f,\"idle_rss_kib\":%d,\"peak_rss_kib\":%d,\"cpu0_other_s\":%.2f,\"cpu0_steal_s\":%.2f}",
                    n, b - a, idle, peak, other, y[2] - x[2] }')
    else
        PROXY_JSON=null
    fi
    # Let the mock's counters settle (a stream's end is counted as it closes).
    sleep 0.3
    stats1=$(mock_stats)
    MOCK_JSON="{\"before\":$stats0,\"after\":$stats1}"
}

emit() {
    # $1 scenario, $2 target, $3 load JSON, then extra "key":value pairs
    local extra=""
    [[ $# -gt 3 ]] && extra=",$4"
    printf '{"scenario":"%s","target":"%s","round":%s,"load":%s,"proxy":%s,"mock":%s,"loadavg":"%s"%s}\n' \
        "$1" "$2" "${ROUND:-1}" "$3" "$PROXY_JSON" "$MOCK_JSON" "$(cut -d' ' -f1-3 /proc/loadavg)" "$extra" >>"$RESULTS"
}

# ---------------------------------------------------------------------------
# Scenarios

wrk_run() {
    # $1 port, $2 seconds, $3 extra header
    BENCH_TAG="$TAG-$RANDOM" BENCH_HEADER=${3:-} "${ON_LOAD_CPU[@]}" wrk -t1 -c64 -d"$2"s \
        -s bench/passthrough.lua "http://127.0.0.1:$1/" | sed -n 's/^JSON //p'
}

# Rounds of a passthrough scenario, targets interleaved: $1 scenario, $2 the
# function that loads a port ($1 port, $2 seconds, $3 extra header) and
# prints its JSON, $3 what the log says, $4 nginx's port for it.
passthrough_rounds() {
    local target base header port
    for ROUND in $(seq 1 "$ROUNDS"); do
        for target in "${TARGETS[@]}" chorus-bypass; do
            base=$target
            header=""
            if [[ $target == chorus-bypass ]]; then
                base=chorus
                header="x-chorus-coalesce: off"
            fi
            log "$3: $target (${PASS_SECONDS}s, round $ROUND/$ROUNDS)"
            start_target "$base"
            port=$ADDR_PORT
            [[ $base == nginx ]] && port=$4
            "$2" "$port" 2 "$header" >/dev/null # warm-up
            measure "$2" "$port" "$PASS_SECONDS" "$header"
            [[ -n $OUT ]] || die "$2 printed no result for $target"
            emit "$1" "$target" "$OUT"
            stop_target
        done
    done
    ROUND=1
}

scenario_passthrough() {
    passthrough_rounds passthrough wrk_run "passthrough (64 connections)" "$NGINX_PORT"
}

H2_BODY=$RUN/h2-body.json
h2_run() {
    # $1 port, $2 seconds, $3 extra header: 16 h2load processes with one
    # HTTP/2 cleartext connection of 4 streams each (64 requests in flight,
    # as wrk's 64 connections), each cycling through 200 paths of its own, so
    # that no two requests in flight share a key. h2load sends one body for
    # all; the distinct paths make every request lead its own flight, and the
    # whole ~1 KiB body is still keyed. Prints one JSON line like wrk_run's.
    local dir k i pids=() header=()
    dir=$(mktemp -d "$RUN/h2.XXXXXX")
    [[ -n ${3:-} ]] && header=(-H "$3")
    [[ -f $H2_BODY ]] || printf '{"model":"mock","stream":false,"messages":[{"role":"system","content":"%s"},{"role":"user","content":"request %s"}],"mock":{"tokens":16}}' \
        "$(printf 'lorem ipsum dolor sit amet %.0s' $(seq 1 32))" "$TAG" >"$H2_BODY"
    for k in $(seq 1 16); do
        "${ON_LOAD_CPU[@]}" h2load -D "$2" -c 1 -m 4 -d "$H2_BODY" -H 'content-type: application/json' \
            "${header[@]}" --log-file "$dir/$k.log" \
            $(for i in $(seq 1 200); do echo "http://127.0.0.1:$1/v1/chat/completions?r=$TAG-$RANDOM-$k-$i"; done) \
            >"$dir/$k.out" 2>&1 &
        pids+=($!)
    done
    wait "${pids[@]}" || true
    python3 bench/h2load.py "$dir"
    rm -rf "$dir"
}

scenario_h2() {
    passthrough_rounds h2 h2_run "passthrough over HTTP/2 (64 streams)" "$NGINX_H2_PORT"
}

scenario_ttft() {
    local target
    for target in "${TARGETS[@]}"; do
        log "time to first token: $target (1000 sequential requests)"
        start_target "$target"
        measure "${ON_LOAD_CPU[@]}" "$LOADGEN" ttft --addr "127.0.0.1:$ADDR_PORT" \
            --requests 1000 --warmup 100 --tag "$TAG-ttft-$target"
        emit ttft "$target" "$OUT"
        stop_target
    done
}

stream_run() {
    # $1 scenario, $2 target (chorus-bypass: chorus with x-chorus-coalesce: off),
    # $3 clients, $4 identical|distinct, $5 first byte delay ms, $6 nginx workers
    local options=() base=$2
    [[ $4 == identical ]] && options+=(--identical)
    if [[ $2 == chorus-bypass ]]; then
        base=chorus
        options+=(--header "x-chorus-coalesce: off")
    fi
    start_target "$base" "${6:-1}"
    measure "${ON_LOAD_CPU[@]}" "$LOADGEN" stream --addr "127.0.0.1:$ADDR_PORT" --clients "$3" \
        "${options[@]}" --tokens 40 --first-byte-delay-ms "$5" --tag "$TAG-$1-$3-$2-${ROUND:-1}"
    emit "$1" "$2" "$OUT" "\"clients\":$3,\"nginx_workers\":${6:-1}"
    stop_target
}

scenario_distinct() {
    local target
    for ROUND in $(seq 1 "$ROUNDS"); do
        for target in "${TARGETS[@]}" chorus-bypass; do
            log "distinct streams: $target (1000 concurrent, distinct bodies, round $ROUND/$ROUNDS)"
            stream_run distinct "$target" 1000 distinct 1500
        done
    done
    ROUND=1
}

scenario_fanout() {
    local target size workers delay
    for size in $FANOUT_SIZES; do
        delay=$((size >= 5000 ? 4000 : 1500))
        FLOOR_CLIENTS=$size FLOOR_DELAY=$delay
        for ROUND in $(seq 1 "$ROUNDS"); do
            for target in "${TARGETS[@]}" floor; do
                workers=1
                # nginx holds two descriptors per client (client + upstream):
                # past half the fd limit one worker cannot, so it gets a
                # second one (on the same CPU) and the table says so.
                if [[ $target == nginx && $((2 * size + 100)) -gt $NOFILE ]]; then
                    workers=2
                fi
                log "fan-out: $target ($size identical streams$([[ $workers == 1 ]] || echo ", $workers nginx workers"), round $ROUND/$ROUNDS)"
                stream_run "fanout$size" "$target" "$size" identical "$delay" "$workers"
            done
        done
    done
    ROUND=1
}

scenario_cancel() {
    local target
    for target in "${TARGETS[@]}"; do
        log "cancel: $target (20 rounds of 10 identical clients leaving mid-stream)"
        start_target "$target"
        measure "${ON_LOAD_CPU[@]}" "$LOADGEN" cancel --addr "127.0.0.1:$ADDR_PORT" \
            --mock "127.0.0.1:$MOCK_PORT" --clients 10 --rounds 20 --tag "$TAG-cancel-$target"
        emit cancel "$target" "$OUT"
        stop_target
    done
}

scenario_startup() {
    local target
    PROXY_PIDS=()
    for target in "${TARGETS[@]}"; do
        case $target in
        direct) continue ;;
        nginx)
            log "start-up: nginx (10 runs)"
            measure "${ON_LOAD_CPU[@]}" "$LOADGEN" startup --addr "127.0.0.1:$NGINX_PORT" --runs 10 -- \
                "${ON_PROXY_CPU[@]}" "$NGINX" -c "$(nginx_conf 1)" -p "$RUN"
            ;;
        chorus | chorus-alt)
            local bin=$CHORUS port=$CHORUS_PORT admin=$CHORUS_ADMIN_PORT
            [[ $target == chorus-alt ]] && bin=$CHORUS_ALT_BIN port=$ALT_PORT admin=$ALT_ADMIN_PORT
            log "start-up: $target (10 runs)"
            measure "${ON_LOAD_CPU[@]}" "$LOADGEN" startup --addr "127.0.0.1:$port" --runs 10 -- \
                env $(chorus_env "$port" "$admin") "${ON_PROXY_CPU[@]}" "$bin" --config bench/chorus.toml
            ;;
        esac
        emit startup "$target" "$OUT"
    done
}

# ---------------------------------------------------------------------------

STARTED=$(date +%s)
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
if awk -v l="${LOADAVG_START%% *}" 'BEGIN { exit !(l > 0.5) }'; then
    log "warning: load average $LOADAVG_START before starting: something else is running, figures will be noisy"
fi
log "run directory $RUN; ports $PORT_BASE..$((PORT_BASE + 7)); fd limit $NOFILE; pinning $([[ $PIN == 1 ]] && echo "proxy CPU 0, load CPU 1" || echo off)"
start_mock
for scenario in $SCENARIOS; do
    "scenario_$scenario"
done
stop "$MOCK_PID"

mkdir -p bench/results
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
python3 bench/report.py "$RESULTS" \
    --json "bench/results/$STAMP.json" --markdown "bench/results/$STAMP.md" \
    --meta "cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)" \
    --meta "cores=$(nproc)" \
    --meta "kernel=$(uname -r)" \
    --meta "rustc=$(rustc --version)" \
    --meta "nginx=$("$NGINX" -v 2>&1 | sed 's/.*: //')" \
    --meta "wrk=$(wrk -v 2>&1 | head -1 | cut -d' ' -f2)" \
    --meta "h2load=$(h2load --version 2>&1 | sed 's/.*nghttp2\///')" \
    --meta "commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    --meta "pinning=$([[ $PIN == 1 ]] && echo "proxy on CPU 0; mock and load on CPU 1" || echo none)" \
    --meta "alt=$([[ -n $CHORUS_ALT_BIN ]] && echo "$CHORUS_ALT_LABEL" || echo '')" \
    --meta "loadavg at start=$LOADAVG_START" \
    --meta "loadavg at end=$(cut -d' ' -f1-3 /proc/loadavg)" \
    --meta "rounds=$ROUNDS" \
    --meta "seconds=$(($(date +%s) - STARTED))"
log "done in $(($(date +%s) - STARTED)) s: bench/results/$STAMP.json"
