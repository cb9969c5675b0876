#!/usr/bin/env bash
# The soak: builds the release gateway and the soak driver (examples/soak.rs),
# then runs a bounded mixed load against the gateway and its mock upstream,
# sampling RSS, open file descriptors, flights and subscribers, and checks
# that all return to idle and that RSS does not grow.
#
#   bash soak/run.sh                    # 10 minutes, 48 clients
#   bash soak/run.sh --duration 90s     # shorter
#   bash soak/run.sh --help             # every option
#
# Results: target/soak/summary.txt and target/soak/samples.csv. Exit 0 when
# the soak passes.
set -euo pipefail
cd "$(dirname "$0")/.."

# Apart: built with an example, chorus would get its dev-dependencies'
# features too (tokio's test-util), unlike the binary cargo build makes.
cargo build --release --locked --bin chorus
cargo build --release --locked --example soak
exec target/release/examples/soak --chorus target/release/chorus "$@"
