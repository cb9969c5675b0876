#!/usr/bin/env bash
# The SDK check (check.py, check.mjs): OpenAI's official Python and Node SDKs
# against chorus in front of a FastAPI backend, over HTTP/1.1 and over HTTP/2
# with TLS, all on 127.0.0.1; about 30 seconds.
#
#   bash tests/sdk/run.sh            # builds chorus (debug) first
#   bash tests/sdk/run.sh BINARY     # another chorus binary
#
# Installs what is missing on first run (tests/common/tools.sh): Debian's
# `openssl` and `nodejs`/`npm`, pinned `openai` and `httpx2[http2]` (with
# FastAPI and uvicorn for the backend) from PyPI into a virtualenv under
# target/, and the Node SDK from package-lock.json into tests/sdk/node_modules.
set -euo pipefail
cd "$(dirname "$0")/../.."

say() { printf 'SDK check: %s\n' "$*"; }
fail() { printf 'SDK check: FAILED: %s\n' "$*" >&2; exit 1; }
source tests/common/tools.sh

debian_packages openssl nodejs npm
python_tools
lock=tests/sdk/package-lock.json
stamp=tests/sdk/node_modules/.lock-$(sha256sum "$lock" | cut -c1-16)
if [ ! -f "$stamp" ]; then
  say "installing the Node SDK ($lock)"
  (cd tests/sdk && npm ci --no-audit --no-fund --loglevel=error >/dev/null) || fail "npm ci failed"
  touch "$stamp"
fi
chorus_binary "${1:-}"
say "Python $("$python" -c 'import openai; print(openai.__version__)'), Node $(node --version), chorus $binary"
"$python" tests/sdk/check.py "$binary"
