# What the browser and SDK checks install, sourced by their run.sh after
# `say` and `fail` are defined:
#
#   debian_packages PACKAGE...   apt-get installs those missing (each looked
#                                for as a command of its name, or `node`)
#   python_tools                 sets $python, a virtualenv's, with the pinned
#                                requirements below installed once
#   chorus_binary [BINARY]       sets $binary: the one given, or a debug build
#
# The virtualenv lives under target/ (CHORUS_TOOLS_DIR to move it), one for
# both checks.

tools="${CHORUS_TOOLS_DIR:-$PWD/target/check-tools}"
requirements=(
  playwright==1.65.2 fastapi==0.165.0 uvicorn==0.54.0 websockets==17.4
  openai==3.57.0 "httpx2[http2]==2.16.2"
)

debian_packages() {
  local missing=() package
  for package in "$@"; do
    case "$package" in
      chromium) [ -x "${CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium) ;;
      nodejs) command -v node >/dev/null || missing+=(nodejs) ;;
      *) command -v "$package" >/dev/null || missing+=("$package") ;;
    esac
  done
  [ ${#missing[@]} -eq 0 ] && return
  say "installing ${missing[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }; } ||
    fail "apt-get could not install ${missing[*]}"
}

python_tools() {
  local venv="$tools/venv"
  local stamp="$venv/.requirements-$(printf '%s\n' "${requirements[@]}" | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    say "installing ${requirements[*]} into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" || fail "python3 -m venv failed"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${requirements[@]}" ||
      fail "pip could not install ${requirements[*]}"
    touch "$stamp"
  fi
  python="$venv/bin/python"
}

chorus_binary() {
  binary="${1:-}"
  if [ -z "$binary" ]; then
    cargo build --locked --quiet --bin chorus
    binary=target/debug/chorus
  fi
}
