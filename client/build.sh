#!/usr/bin/env bash
# Builds the web client into client/dist, which `traum serve` serves at `/`.
#
#   cargo build --target wasm32-unknown-unknown --release  (the app)
#   wasm-bindgen --target web                              (its JS glue)
#   wasm-opt -Oz, when installed                           (smaller wasm)
#
# Needs: rustup target add wasm32-unknown-unknown, and wasm-bindgen-cli at
# exactly the wasm-bindgen version in Cargo.lock (this script says which).
# Builds under target/web so it never waits on another cargo's lock.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
target_dir=${TRAUM_WEB_TARGET_DIR:-$root/target/web}
out=${TRAUM_CLIENT_OUT:-$root/client/dist}

want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  echo "client/build.sh: the wasm32 target is missing: rustup target add wasm32-unknown-unknown" >&2
  exit 1
fi
have=$(wasm-bindgen --version 2>/dev/null | awk '{ print $2 }' || true)
if [ "$have" != "$want" ]; then
  echo "client/build.sh: need wasm-bindgen $want (have: ${have:-none}): cargo install wasm-bindgen-cli --version $want" >&2
  exit 1
fi

started=$(date +%s)
CARGO_TARGET_DIR="$target_dir" cargo build -p traum-client --bin traum-client \
  --target wasm32-unknown-unknown --release
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
wasm-bindgen --target web --no-typescript --out-name traum_client --out-dir "$stage" \
  "$target_dir/wasm32-unknown-unknown/release/traum-client.wasm"
if command -v wasm-opt >/dev/null 2>&1; then
  wasm-opt -Oz --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
    "$stage/traum_client_bg.wasm" -o "$stage/traum_client_bg.opt.wasm"
  mv "$stage/traum_client_bg.opt.wasm" "$stage/traum_client_bg.wasm"
fi
cp client/index.html client/style.css client/theme.js client/boot.js "$stage/"
# Precompressed twins; `traum serve` sends them to browsers that take gzip.
for f in "$stage"/*.wasm "$stage"/*.js "$stage"/*.css "$stage"/*.html; do
  gzip -9 -k -n "$f"
done
# Swap in whole, so a running server never serves half a build.
rm -rf "$out.new"
cp -r "$stage" "$out.new"
rm -rf "$out"
mv "$out.new" "$out"
chmod 755 "$out"
size=$(wc -c < "$out/traum_client_bg.wasm")
gz=$(wc -c < "$out/traum_client_bg.wasm.gz")
echo "client built in $(( $(date +%s) - started )) s: $out (wasm $(( size / 1024 )) KiB, $(( gz / 1024 )) KiB gzipped)"
