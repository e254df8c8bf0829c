#!/usr/bin/env bash
# Installs what building the server and the web client needs, once:
#   - libopus (Debian's libopus-dev: the Opus decoder links it)
#   - the wasm32-unknown-unknown target (rustup)
#   - wasm-bindgen-cli at exactly the wasm-bindgen version in Cargo.lock
#   - GraphiQL's pinned npm packages (server/graphiql, from its package-lock.json), which
#     `traum serve` serves itself at /graphiql/ for the page at GET /graphql
# With --browser-tests, also what its browser test needs:
#   - Chromium (Debian's package)
#   - the test's node packages (tests/browser, from package-lock.json)
# Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_cmd=""
[ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
apt_install() {
  $sudo_cmd apt-get install -y --no-install-recommends "$@" \
    || { $sudo_cmd apt-get update && $sudo_cmd apt-get install -y --no-install-recommends "$@"; }
}

if ! pkg-config --exists opus 2>/dev/null && [ ! -e /usr/lib/x86_64-linux-gnu/libopus.so ] \
  && [ ! -e /usr/lib/aarch64-linux-gnu/libopus.so ]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "installing libopus-dev (the Opus decoder links libopus)"
    apt_install libopus-dev pkg-config
  else
    echo "install libopus with its development files (libopus-dev, opus-devel, brew install opus)" >&2
    exit 1
  fi
fi

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi

want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
have=$(wasm-bindgen --version 2>/dev/null | awk '{ print $2 }' || true)
if [ "$have" != "$want" ]; then
  echo "installing wasm-bindgen-cli $want (have: ${have:-none}); a few minutes"
  cargo install wasm-bindgen-cli --version "$want"
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "npm (Node.js 18+) is needed for GraphiQL's assets (apt-get install npm)" >&2
  exit 1
fi
if [ ! -f server/graphiql/node_modules/graphiql/graphiql.min.js ] \
  || [ server/graphiql/package-lock.json -nt server/graphiql/node_modules/.package-lock.json ]; then
  (cd server/graphiql && npm ci --no-audit --no-fund)
fi

[ "${1:-}" = "--browser-tests" ] || exit 0

if ! command -v chromium >/dev/null 2>&1 && [ -z "${CHROMIUM:-}" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    apt_install chromium
  else
    echo "install Chromium (or set CHROMIUM=/path/to/chrome) for the browser test" >&2
  fi
fi

(cd tests/browser && npm ci --no-audit --no-fund)
