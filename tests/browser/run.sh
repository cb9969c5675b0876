#!/usr/bin/env bash
# The browser check (check.py): Chromium, driven by Playwright, against
# chorus in front of a FastAPI backend, over HTTP/1.1 and over HTTP/2 with
# TLS, all on 127.0.0.1; about 15 seconds.
#
#   bash tests/browser/run.sh            # builds chorus (debug) first
#   bash tests/browser/run.sh BINARY     # another chorus binary
#
# Installs what is missing on first run (tests/common/tools.sh): Debian's
# `chromium` and `openssl`, and pinned Playwright, FastAPI, uvicorn and
# websockets (for uvicorn's WebSocket support) from PyPI into a virtualenv
# under target/. Playwright drives the system Chromium (CHROMIUM to name
# another), so it downloads no browser.
set -euo pipefail
cd "$(dirname "$0")/../.."

say() { printf 'browser check: %s\n' "$*"; }
fail() { printf 'browser check: FAILED: %s\n' "$*" >&2; exit 1; }
source tests/common/tools.sh

debian_packages chromium openssl
python_tools
chorus_binary "${1:-}"
chromium="${CHROMIUM:-/usr/bin/chromium}"
say "$("$chromium" --version 2>/dev/null | head -1), chorus $binary"
CHROMIUM="$chromium" "$python" tests/browser/check.py "$binary"
