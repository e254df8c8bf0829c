#!/usr/bin/env bash
# End to end against the model alone: `traum ingest` of N ~10 s MP3 clips (44.1 kHz stereo, so every
# clip is decoded, downmixed, resampled to 48 kHz and turned into features) beside the model-only rate
# of the same model at the same batch size (`cargo bench --bench side_by_side`).
#
#   tools/bench_ingest.sh MODEL_DIR [N=64] [TRAUM=target/debug/traum]
#
# MODEL_DIR: e.g. the random full-size model tools/bench_side_by_side.py makes
# (/tmp/traum-side-by-side/model). Needs ffmpeg (Debian: apt-get install ffmpeg). Prints clips/s of
# ingest for --workers 2 (the default) and 8, and the ratio to the model-only rate at batch 8.
set -euo pipefail
# The clips are 9.9 s: an MP3 of exactly 10 s decodes to ~10.03 s (encoder delay and frame padding),
# which the 10 s windowing covers with a second, end-aligned window.
SECONDS_PER_CLIP=9.9
MODEL=${1:?usage: tools/bench_ingest.sh MODEL_DIR [N] [TRAUM]}
N=${2:-64}
TRAUM=${3:-target/debug/traum}
THREADS=${RAYON_NUM_THREADS:-$(nproc)}
cd "$(dirname "$0")/.."
command -v ffmpeg >/dev/null || { echo "ffmpeg not found (apt-get install ffmpeg)" >&2; exit 1; }
WORK=$(mktemp -d /tmp/traum-ingest-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/clips"
echo "making $N clips of $SECONDS_PER_CLIP s (MP3, 44.1 kHz stereo, 192 kb/s) in $WORK/clips"
for i in $(seq 1 "$N"); do
    f=$((110 + 37 * i))
    ffmpeg -hide_banner -loglevel error -y \
        -f lavfi -i "sine=frequency=${f}:sample_rate=44100:duration=${SECONDS_PER_CLIP}" \
        -f lavfi -i "anoisesrc=color=pink:amplitude=0.05:seed=${i}:sample_rate=44100:duration=${SECONDS_PER_CLIP}" \
        -filter_complex "[0][1]amix=inputs=2:normalize=0,pan=stereo|c0=c0|c1=c0" \
        -c:a libmp3lame -b:a 192k "$WORK/clips/clip-$i.mp3"
done
for workers in 2 8; do
    rm -rf "$WORK/data"
    echo "traum ingest, --workers $workers --batch-size 8, $THREADS threads:"
    RAYON_NUM_THREADS=$THREADS "$TRAUM" ingest --model "$MODEL" --device cpu --data-dir "$WORK/data" \
        --workers "$workers" --batch-size 8 --no-progress "$WORK/clips" 2>&1 | tee "$WORK/ingest.log" | tail -1
    secs=$(grep -oE '\(([0-9.]+) s\)' "$WORK/ingest.log" | tail -1 | tr -d '(s) ')
    echo "  => $(python3 -c "print(f'{$N / $secs:.2f}')") clips/s"
done
