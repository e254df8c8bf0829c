#!/usr/bin/env bash
# Runs the whole system: builds the web client (installing its two tools the
# first time), then starts `traum serve` with it at http://127.0.0.1:8000.
# Arguments go to `traum serve` (e.g. --model models/larger_clap_music_and_speech).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-web.sh
bash client/build.sh
exec cargo run --release -p traum-server -- serve --client-dir client/dist "$@"
