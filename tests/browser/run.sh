#!/usr/bin/env bash
# The browser check (check.py): Chromium, driven by Playwright, against
# chorus in front of a FastAPI backend, over HTTP/1.1 and over HTTP/2 with
# TLS, all on 127.0.0.1; about 15 seconds.
#
#   bash tests/browser/run.sh            # builds chorus (debug) first
#   bash tests/browser/run.sh BINARY     # another chorus binary
#
# Installs what is missing on first run: Debian's `chromium` and `openssl`
# (apt-get), and pinned Playwright, FastAPI, uvicorn and websockets (for
# uvicorn's WebSocket support) from PyPI into a
# virtualenv under target/ (CHORUS_TOOLS_DIR to move it). Playwright drives
# the system Chromium (CHROMIUM to name another), so it downloads no browser.
set -euo pipefail
cd "$(dirname "$0")/../.."

tools="${CHORUS_TOOLS_DIR:-$PWD/target/browser-tools}"
venv="$tools/venv"
requirements=(playwright==1.65.2 fastapi==0.165.0 uvicorn==0.54.0 websockets==17.4)

say() { printf 'browser check: %s\n' "$*"; }
fail() { printf 'browser check: FAILED: %s\n' "$*" >&2; exit 1; }

chromium="${CHROMIUM:-/usr/bin/chromium}"
missing=()
[ -x "$chromium" ] || missing+=(chromium)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }; } ||
    fail "apt-get could not install ${missing[*]}"
fi

stamp="$venv/.requirements-$(printf '%s\n' "${requirements[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  say "installing ${requirements[*]} into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv" || fail "python3 -m venv failed"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${requirements[@]}" ||
    fail "pip could not install ${requirements[*]}"
  touch "$stamp"
fi

binary="${1:-}"
if [ -z "$binary" ]; then
  cargo build --locked --quiet --bin chorus
  binary=target/debug/chorus
fi
say "$("$chromium" --version 2>/dev/null | head -1), chorus $binary"
CHROMIUM="$chromium" "$venv/bin/python" tests/browser/check.py "$binary"
