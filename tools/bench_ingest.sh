#!/usr/bin/env bash
# End to end against the model alone: `traum ingest` of N ~10 s MP3 clips (44.1 kHz stereo, so every
# clip is decoded, downmixed, resampled to 48 kHz and turned into features) beside the model-only rate
# of the same model at the same batch size (the side_by_side bench, run right after each ingest).
#
#   tools/bench_ingest.sh MODEL_DIR [N=96] [TRAUM=target/release/traum] [SIDE_BY_SIDE=bench binary]
#
# MODEL_DIR: e.g. the random full-size model tools/bench_side_by_side.py makes
# (/tmp/traum-side-by-side/model). SIDE_BY_SIDE: a built `cargo bench -p clap-model --bench
# side_by_side` binary (its path is printed by `--no-run`; it reads $INPUTS, by default the
# inputs.safetensors beside MODEL_DIR); without it only ingest is timed. Needs
# ffmpeg (Debian: apt-get install ffmpeg). For each "WORKERS:BATCH" in $RUNS (default: the defaults,
# 4 windows a batch and 8 workers on the CPU; then 16:8) it prints ingest clips/s, the model-only
# clips/s at that batch, and their ratio. The machine's other load moves both: compare within a run.
set -euo pipefail
# The clips are 9.9 s: an MP3 of exactly 10 s decodes to ~10.03 s (encoder delay and frame padding),
# which the 10 s windowing covers with a second, end-aligned window.
SECONDS_PER_CLIP=9.9
MODEL=${1:?usage: tools/bench_ingest.sh MODEL_DIR [N] [TRAUM]}
N=${2:-96}
TRAUM=${3:-target/release/traum}
SIDE_BY_SIDE=${4:-}
# The features the side_by_side bench takes (tools/bench_side_by_side.py writes them beside the model).
INPUTS=${INPUTS:-$(dirname "$MODEL")/inputs.safetensors}
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
for run in ${RUNS:-default 16:8}; do
    rm -rf "$WORK/data"
    if [ "$run" = default ]; then
        flags=()
        batch=4
    else
        flags=(--workers "${run%%:*}" --batch-size "${run##*:}")
        batch=${run##*:}
    fi
    echo "traum ingest ${flags[*]:-(defaults)}, $THREADS threads:"
    RAYON_NUM_THREADS=$THREADS "$TRAUM" ingest --model "$MODEL" --device cpu --data-dir "$WORK/data" \
        "${flags[@]}" --no-progress "$WORK/clips" 2>&1 | tee "$WORK/ingest.log" | tail -1
    secs=$(grep -oE '\(([0-9.]+) s\)' "$WORK/ingest.log" | tail -1 | tr -d '(s) ')
    rate=$(python3 -c "print(f'{$N / $secs:.2f}')")
    echo "  => $rate clips/s"
    [ -n "$SIDE_BY_SIDE" ] || continue
    RAYON_NUM_THREADS=$THREADS "$SIDE_BY_SIDE" --model "$MODEL" --inputs "$INPUTS" --out "$WORK/sbs.safetensors" \
        --json "$WORK/sbs.json" --min-time 8 --batches "$batch" --only audio > "$WORK/sbs.log"
    model=$(python3 -c "import json; r = json.load(open('$WORK/sbs.json'))['rows'][0]; print(f\"{r['batch'] / r['s_per_batch']:.2f}\")")
    echo "  model alone at batch $batch: $model clips/s; end to end / model alone: $(python3 -c "print(f'{$rate / $model:.1%}')")"
done
