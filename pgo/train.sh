#!/usr/bin/env bash
# Makes pgo/chorus.profdata anew: builds chorus instrumented, runs it under
# the benchmark's workloads and the protocols they leave out, and merges what
# it counted. Run it after changing the code the request path runs, and
# commit the profile (pgo/README.md).
#
#   bash pgo/train.sh            # about 5 minutes on 2 cores
#
# Needs llvm-profdata of the compiler's LLVM major version (rustc -vV), wrk,
# curl with HTTP/2 and openssl; installs what is missing from Debian.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

log() { printf '[pgo %s] %s\n' "$(date +%T)" "$*" >&2; }

LLVM=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
PROFDATA=/usr/lib/llvm-$LLVM/bin/llvm-profdata
missing=()
[[ -x $PROFDATA ]] || missing+=("llvm-$LLVM")
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing ${missing[*]}"
    # The package lists may be missing or stale on a fresh machine.
    apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 ||
        { apt-get update >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
fi

RUN=$(mktemp -d /tmp/chorus-pgo.XXXXXX)
# Where the instrumented processes write their counts: a fixed path, since
# it is built into the binary (another would rebuild it every time).
RAW=$ROOT/target/pgo-generate/raw
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$RUN"
}
trap cleanup EXIT

log "building chorus instrumented (target/pgo-generate) and the load generator"
RUSTFLAGS="-Cprofile-generate=$RAW" CARGO_TARGET_DIR=target/pgo-generate \
    cargo build --release --locked --bin chorus
cargo build --release --locked --example loadgen
# The flags instrument the proc macros too, which count into $RAW while
# rustc runs them: only what the trainee counts from here on is kept.
rm -rf "$RAW"
TRAINEE=$ROOT/target/pgo-generate/release/chorus
LOADGEN=$ROOT/target/release/examples/loadgen

BASE=${PGO_PORT_BASE:-19800}
MOCK=$BASE PLAIN=$((BASE + 1)) TLS=$((BASE + 3)) CLIENT=$((BASE + 5))
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=localhost -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    -addext "basicConstraints=critical,CA:FALSE" \
    -keyout "$RUN/key.pem" -out "$RUN/cert.pem" 2>/dev/null
sed -e "/^\[admin\]/i [server.tls]\ncert = \"$RUN/cert.pem\"\nkey = \"$RUN/key.pem\"\n" \
    bench/chorus.toml >"$RUN/tls.toml"
# chorus in front of the TLS-serving one: an https upstream (ALPN h2).
sed -e "s|^upstream = .*|upstream = \"https://127.0.0.1:\${BENCH_MOCK_PORT}\"\nupstream_ca_file = \"$RUN/cert.pem\"|" \
    bench/chorus.toml >"$RUN/client.toml"

# Every process is the instrumented binary, each writing its counts when it
# exits; the mock upstream's go elsewhere, since they are not the gateway's.
LLVM_PROFILE_FILE=$RUN/mock.profraw RUST_LOG=warn "$TRAINEE" mock-upstream \
    --listen "127.0.0.1:$MOCK" --interval 50ms >"$RUN/mock.log" 2>&1 &
PIDS+=($!)
start() { # port config upstream-port
    BENCH_CHORUS_PORT=$1 BENCH_CHORUS_ADMIN_PORT=$(($1 + 1)) BENCH_MOCK_PORT=$3 RUST_LOG=warn \
        "$TRAINEE" --config "$2" >>"$RUN/chorus.log" 2>&1 &
    PIDS+=($!)
    "$LOADGEN" wait --addr "127.0.0.1:$1" >/dev/null
}
"$LOADGEN" wait --addr "127.0.0.1:$MOCK" >/dev/null
start "$PLAIN" bench/chorus.toml "$MOCK"
start "$TLS" "$RUN/tls.toml" "$MOCK"
start "$CLIENT" "$RUN/client.toml" "$TLS"

body='{"model":"mock","stream":false,"messages":[{"role":"user","content":"pgo"}],"mock":{"tokens":16}}'
stream='{"model":"mock","stream":true,"messages":[{"role":"user","content":"pgo"}],"mock":{"tokens":16}}'
summary='import json, sys
run = json.load(sys.stdin)
errors = run["errors"]
print(run["requests"], "requests,", errors["status"], "not 2xx/3xx,", sum(errors.values()), "errors")
sys.exit(1 if sum(errors.values()) else 0)'
passthrough() { # url seconds [header]
    BENCH_TAG=pgo$RANDOM BENCH_HEADER=${3:-} wrk -t1 -c64 -d"$2"s -s bench/passthrough.lua "$1" |
        sed -n 's/^JSON //p' | python3 -c "$summary"
}
many() { # curl options... URL: the requests URL names, 50 at a time, on one connection
    curl --no-progress-meter -o /dev/null -Z --parallel-max 50 -H 'content-type: application/json' "$@"
}
each() { # count URL curl-options...: count requests, a connection each, 16 at a time
    # (curl 7.88 breaks the second request on a reused h2c prior-knowledge
    # connection, whatever the server)
    local count=$1 url=$2
    shift 2
    seq 1 "$count" | xargs -P 16 -I{} curl --no-progress-meter -o /dev/null \
        -H 'content-type: application/json' "$@" "$url?n={}"
}

log "HTTP/1.1: passthrough, coalesced and bypassed"
passthrough "http://127.0.0.1:$PLAIN" 8
passthrough "http://127.0.0.1:$PLAIN" 4 "x-chorus-coalesce: off"
log "HTTP/1.1: 1,000 distinct streams, 1,000 identical, 300 bypassed"
for options in "" --identical; do
    # shellcheck disable=SC2086
    "$LOADGEN" stream --addr "127.0.0.1:$PLAIN" --clients 1000 $options --tokens 40 \
        --first-byte-delay-ms 1500 --tag "pgo$RANDOM" | tail -1 | cut -c1-40
done
"$LOADGEN" stream --addr "127.0.0.1:$PLAIN" --clients 300 --header "x-chorus-coalesce: off" \
    --tokens 40 --first-byte-delay-ms 500 --tag "pgo$RANDOM" | tail -1 | cut -c1-40
log "HTTP/2 (h2c): requests and streams"
each 1000 "http://127.0.0.1:$PLAIN/v1/chat/completions" --http2-prior-knowledge -d "$body"
each 200 "http://127.0.0.1:$PLAIN/v1/chat/completions" --http2-prior-knowledge -d "$stream"
log "TLS: HTTP/1.1 passthrough, HTTP/2 requests"
passthrough "https://127.0.0.1:$TLS" 4
many --http2 --cacert "$RUN/cert.pem" -d "$body" "https://127.0.0.1:$TLS/v1/chat/completions?n=[1-2000]"
log "an https upstream (HTTP/2 over TLS)"
passthrough "http://127.0.0.1:$CLIENT" 4

for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
wait 2>/dev/null || true
PIDS=()
"$PROFDATA" merge -o pgo/chorus.profdata "$RAW"/*.profraw
# Cargo does not see a new profile: release builds start over to use it.
cargo clean --release --quiet
log "wrote pgo/chorus.profdata ($(du -h pgo/chorus.profdata | cut -f1)); release builds start over with it"
