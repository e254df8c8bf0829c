#!/usr/bin/env bash
# GPU benchmark: transformers (eager, f32 and bf16) against traum (f32 and bf16) on one random full-size
# larger_clap_music_and_speech model, on an NVIDIA GPU. For a machine with the CUDA driver, Python with
# torch + transformers + safetensors, and no Rust: traum comes as a CUDA build of the side_by_side bench,
# made on a build machine (../shared/gpu/README.md has the toolkit):
#
#   eval "$(../shared/gpu/cuda-toolkit.sh)"
#   cargo bench --features clap-model/cuda --bench side_by_side --no-run     # prints the binary's path
#   cp target/release/deps/side_by_side-<hash> side_by_side-cuda
#
# then, on the GPU machine, from a copy of this repository holding that binary:
#
#   scripts/gpu-bench.sh ./side_by_side-cuda [WORK_DIR]
#
# It prints, per implementation and dtype: cosine against transformers f32, clips/s and texts/s at batch
# 1, 8, 32 and 128, ms per batch, and text p50 at batch 1 (traum's JSON, WORK_DIR/traum-*.json).
# Not measured by this script (not built yet): the mel front end on the device, and end-to-end ingest of
# 10 s MP3s (it needs `traum` built with CUDA and MP3 files; see the README's benchmark section).
set -euo pipefail

BIN=${1:?usage: scripts/gpu-bench.sh SIDE_BY_SIDE_CUDA_BINARY [WORK_DIR]}
WORK=${2:-/tmp/traum-gpu-bench}
HERE=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
PY=${PYTHON:-python3}

# The CUDA libraries the binary links (libcublas, libcurand, libcudart) come with the driver's toolkit.
for lib in /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13.0/targets/x86_64-linux/lib; do
    [ -d "$lib" ] && export LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}"
done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())'

# Each implementation runs alone on the GPU; the CPU threads only feed it.
exec "$PY" "$HERE/tools/bench_side_by_side.py" \
    --work "$WORK" \
    --device cuda \
    --threads "$(nproc)" \
    --batches 1,8,32,128 \
    --torch-dtypes float32,bfloat16 \
    --traum-dtypes f32,bf16 \
    --traum-bin "$BIN" \
    --min-time "${MIN_TIME:-3}" \
    --json "$WORK/results.json"
