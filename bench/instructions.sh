#!/usr/bin/env bash
# Instructions chorus executes per request, counted by valgrind's callgrind:
# a figure that, unlike CPU time on a shared machine, hardly moves between
# runs, so a change of a few per cent shows (README.md, "Performance").
#
#   bash bench/instructions.sh                      # target/release/chorus
#   bash bench/instructions.sh /tmp/old-chorus target/release/chorus
#
# For each binary, and for nginx configured as in bench/run.sh (one worker,
# no master process): user-space instructions per passthrough request (wrk
# -c16, ~1 KiB distinct JSON bodies; for chorus coalesced and with
# x-chorus-coalesce: off) and per distinct stream (300 concurrent, 40 events
# each). Only the measured part is counted (callgrind is zeroed after a
# warm-up). Counts are of instructions, not time: `rep movs`/`rep stos` count
# once per iteration, and the kernel's work is not counted at all.
#
# Knobs: PASS_SECONDS (8), BENCH_PORT_BASE (19700), NGINX=0 (leave nginx
# out), SKIP_INSTALL=1, SKIP_BUILD=1.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

PASS_SECONDS=${PASS_SECONDS:-8}
BASE=${BENCH_PORT_BASE:-19700}
MOCK_PORT=$BASE
CHORUS_PORT=$((BASE + 1))
ADMIN_PORT=$((BASE + 2))
LOADGEN=$ROOT/target/release/examples/loadgen
BINS=("$@")
[[ ${#BINS[@]} -gt 0 ]] || BINS=("$ROOT/target/release/chorus")

log() { printf '[instructions %s] %s\n' "$(date +%T)" "$*" >&2; }

RUN=$(mktemp -d /tmp/chorus-instructions.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -z ${SKIP_INSTALL:-} ]]; then
    missing=()
    command -v valgrind >/dev/null || missing+=(valgrind)
    command -v wrk >/dev/null || missing+=(wrk)
    [[ ${NGINX:-1} == 0 ]] || command -v nginx >/dev/null || missing+=(nginx-light)
    if [[ ${#missing[@]} -gt 0 ]]; then
        log "installing ${missing[*]} from Debian"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
            { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
    fi
fi
if [[ -z ${SKIP_BUILD:-} ]]; then
    log "building chorus and the load generator (release)"
    # Apart: built with an example, chorus would get its dev-dependencies'
    # features too (tokio's test-util), unlike the binary cargo build makes.
    cargo build --release --locked --bin chorus 2>&1 | tail -1 >&2
    cargo build --release --locked --example loadgen 2>&1 | tail -1 >&2
fi
ulimit -n "$(ulimit -Hn)"

export BENCH_CHORUS_PORT=$CHORUS_PORT BENCH_CHORUS_ADMIN_PORT=$ADMIN_PORT BENCH_MOCK_PORT=$MOCK_PORT
RUST_LOG=warn "$ROOT/target/release/chorus" mock-upstream \
    --listen "127.0.0.1:$MOCK_PORT" --interval 50ms 2>/dev/null &
PIDS+=($!)
"$LOADGEN" wait --addr "127.0.0.1:$MOCK_PORT" >/dev/null

# wrk's request count for one passthrough run.
passthrough() { # TAG HEADER SECONDS
    BENCH_TAG=$1 BENCH_HEADER=$2 wrk -t1 -c16 -d"$3"s -s bench/passthrough.lua \
        "http://127.0.0.1:$CHORUS_PORT/" |
        sed -n 's/^JSON //p' | python3 -c 'import json, sys; print(json.load(sys.stdin)["requests"])'
}

streams() { # TAG CLIENTS TOKENS
    "$LOADGEN" stream --addr "127.0.0.1:$CHORUS_PORT" --clients "$2" --tokens "$3" \
        --first-byte-delay-ms 1500 --tag "$1" >/dev/null
}

# The servers measured, started under callgrind on the gateway port.
under_callgrind=(valgrind --tool=callgrind --callgrind-out-file="$RUN/callgrind.out")
serve_chorus() { # BIN
    RUST_LOG=warn TOKIO_WORKER_THREADS=1 "${under_callgrind[@]}" \
        "$1" --config bench/chorus.toml 2>"$RUN/valgrind.log" &
}
serve_nginx() {
    # Its HTTP/2 listener (unused here) on the port after the admin's.
    sed -e "s|@RUN@|$RUN|g" -e "s|@PORT@|$CHORUS_PORT|g" -e "s|@MOCK_PORT@|$MOCK_PORT|g" \
        -e "s|@H2_PORT@|$((ADMIN_PORT + 1))|g" \
        -e "s|@WORKERS@|1|g" -e "s|@NOFILE@|4096|g" -e "s|@REUSEPORT@||g" \
        -e 's|^daemon off;|daemon off;\nmaster_process off;|' bench/nginx.conf.in >"$RUN/nginx.conf"
    "${under_callgrind[@]}" nginx -c "$RUN/nginx.conf" -p "$RUN" 2>"$RUN/valgrind.log" &
}

# Starts a server with SERVE, zeroes the count after WARM, counts MEASURE,
# prints "<instructions> <units>" where MEASURE printed its units.
count() { # SERVE WARM MEASURE
    local pid units
    eval "$1"
    pid=$!
    PIDS+=("$pid")
    "$LOADGEN" wait --addr "127.0.0.1:$CHORUS_PORT" --timeout-ms 60000 >/dev/null
    eval "$2" >/dev/null
    callgrind_control --zero "$pid" >/dev/null 2>&1
    units=$(eval "$3")
    callgrind_control --dump "$pid" >/dev/null 2>&1
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    echo "$(grep -h '^summary:' "$RUN/callgrind.out.1" | awk '{print $2}') $units"
    rm -f "$RUN/callgrind.out"*
}

# One row: SERVE LABEL BYPASS_TOO
row() {
    local ir units coalesced bypass="—" per_stream
    log "$2: passthrough"
    read -r ir units < <(count "$1" "passthrough w$RANDOM '' 2" "passthrough m$RANDOM '' $PASS_SECONDS")
    coalesced=$((ir / units))
    if [[ $3 == 1 ]]; then
        log "$2: passthrough, x-chorus-coalesce: off"
        read -r ir units < <(count "$1" "passthrough w$RANDOM 'x-chorus-coalesce: off' 2" \
            "passthrough m$RANDOM 'x-chorus-coalesce: off' $PASS_SECONDS")
        bypass=$((ir / units))
    fi
    log "$2: 300 distinct streams"
    read -r ir units < <(count "$1" "streams w$RANDOM 300 5" "streams d$RANDOM 300 40; echo 300")
    per_stream=$((ir / units))
    printf '| %s | %s | %s | %s |\n' "$2" "$coalesced" "$bypass" "$per_stream" >>"$RUN/table"
}

for bin in "${BINS[@]}"; do
    row "serve_chorus '$bin'" "$bin" 1
done
[[ ${NGINX:-1} == 0 ]] || row serve_nginx nginx 0

printf '\n| server | passthrough: instructions/request | passthrough, x-chorus-coalesce: off | distinct streams: instructions/stream (40 events) |\n'
printf '|---|---|---|---|\n'
cat "$RUN/table"
