#!/usr/bin/env bash
# Runs every fuzz target for a bounded time from its committed seed corpus
# (fuzz/corpus/<target>/, never written to: new inputs go to a scratch
# directory). A crash, panic, timeout or out-of-memory fails the run and
# leaves the input in fuzz/artifacts/<target>/.
#
#   FUZZ_SECONDS    seconds per target (default 25)
#   FUZZ_SANITIZER  none (default) or address; address needs -Zsanitizer,
#                   which this stable toolchain takes through RUSTC_BOOTSTRAP
#
# Installs cargo-fuzz on first use.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${FUZZ_SECONDS:-25}"
sanitizer="${FUZZ_SANITIZER:-none}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --version 0.13.2 --locked
fi
if [ "$sanitizer" != none ]; then
    export RUSTC_BOOTSTRAP=1 RUSTC_WRAPPER="$PWD/rustc-bootstrap.sh"
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo fuzz list); do
    echo "fuzz: $target for ${seconds}s (sanitizer: $sanitizer)"
    mkdir -p "$scratch/$target"
    log="$scratch/$target.log"
    status=0
    cargo fuzz run --sanitizer "$sanitizer" "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    grep -E '^(Done|INFO: seed corpus|stat::number_of_executed_units)' "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 60 "$log" >&2
        echo "fuzz: $target failed; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
done
