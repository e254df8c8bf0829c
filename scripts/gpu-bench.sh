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
# 1, 8, 32 and 128, ms per batch, text p50 at batch 1, and traum's mel front end on the device (clips/s)
# (traum's JSON: WORK_DIR/traum-*.json).
#
# End to end, with a CUDA build of `traum` too (cargo build --release -p traum-server --features cuda;
# carry it xz-compressed: most of it is PTX), it then ingests 10 s MP3 clips (CLIPS: a folder of them;
# else N_CLIPS=512 are made with ffmpeg, which must then be on the machine) with the defaults for a GPU
# (batches of 128, 64 workers) and prints clips/s:
#
#   TRAUM_BIN=./traum-cuda CLIPS=/path/to/mp3s scripts/gpu-bench.sh ./side_by_side-cuda
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
"$PY" "$HERE/tools/bench_side_by_side.py" \
    --work "$WORK" \
    --device cuda \
    --threads "$(nproc)" \
    --batches 1,8,32,128 \
    --torch-dtypes float32,bfloat16 \
    --traum-dtypes f32,bf16 \
    --traum-bin "$BIN" \
    --min-time "${MIN_TIME:-3}" \
    --json "$WORK/results.json"

[ -n "${TRAUM_BIN:-}" ] || exit 0
TRAUM_BIN=$(cd "$(dirname "$TRAUM_BIN")" && pwd)/$(basename "$TRAUM_BIN")
CLIPS=${CLIPS:-}
if [ -z "$CLIPS" ]; then
    command -v ffmpeg >/dev/null || { echo "end to end: no CLIPS folder and no ffmpeg to make one" >&2; exit 1; }
    CLIPS="$WORK/clips"
    mkdir -p "$CLIPS"
    N=${N_CLIPS:-512}
    echo "making $N clips of 9.9 s (MP3, 44.1 kHz stereo) in $CLIPS"
    for i in $(seq 1 "$N"); do
        [ -f "$CLIPS/clip-$i.mp3" ] && continue
        f=$((110 + 37 * (i % 500)))
        ffmpeg -hide_banner -loglevel error -y \
            -f lavfi -i "sine=frequency=${f}:sample_rate=44100:duration=9.9" \
            -f lavfi -i "anoisesrc=color=pink:amplitude=0.05:seed=${i}:sample_rate=44100:duration=9.9" \
            -filter_complex "[0][1]amix=inputs=2:normalize=0,pan=stereo|c0=c0|c1=c0" \
            -c:a libmp3lame -b:a 192k "$CLIPS/clip-$i.mp3" &
        (( i % 16 == 0 )) && wait
    done
    wait
fi
n=$(find "$CLIPS" -name '*.mp3' | wc -l)
rm -rf "$WORK/ingest-data"
echo "traum ingest of $n MP3s on the GPU (bf16, defaults), $(nproc) CPU cores:"
"$TRAUM_BIN" ingest --model "$WORK/model" --device cuda --dtype bf16 --data-dir "$WORK/ingest-data" \
    --no-progress "$CLIPS" 2>&1 | tee "$WORK/ingest.log" | tail -1
secs=$(grep -oE '\(([0-9.]+) s\)' "$WORK/ingest.log" | tail -1 | tr -d '(s) ')
echo "  => $("$PY" -c "print(f'{$n / $secs:.0f}')") clips/s end to end"
