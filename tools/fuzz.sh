#!/usr/bin/env bash
# Coverage-guided fuzzing of the traum-fuzz targets with AFL++ (cargo-afl), on stable Rust.
#
# Usage:
#   tools/fuzz.sh build [TARGET...]           install cargo-afl if missing, build the targets
#   tools/fuzz.sh run TARGET [LIMIT]          build, fuzz TARGET, minimise, report
#                                             LIMIT: 600s / 10m / 1h (wall time, default 10m)
#                                                    or 200000x (executions)
#   tools/fuzz.sh cmin TARGET                 minimise the last run's queue (with the current
#                                             corpus) into fuzz/corpus/TARGET; crash-*/hang-*
#                                             regressions there are kept
#   tools/fuzz.sh triage TARGET               group the last run's crashes by message and
#                                             site, naming the smallest input of each
#   tools/fuzz.sh stats TARGET                print the last run's executions, time, coverage,
#                                             crashes and hangs
#   tools/fuzz.sh replay TARGET FILE...       run inputs through the AFL binary outside AFL
#                                             (RUST_BACKTRACE=1), e.g. a file from crashes/
#   TARGET: decode | windows | mel | multipart | graphql
#
# After a run with crashes or hangs: `triage`, then copy one input per bug into
# fuzz/corpus/TARGET/ as crash-<what> or hang-<what>; `cargo test --test replay` then fails
# on it until the bug is fixed.
#
# Environment:
#   FUZZ_TIMEOUT_MS   per-input time cap for afl-fuzz -t (default: per target, see below)
#   FUZZ_MEM_MB       memory cap for afl-fuzz -m (default 1024)
#   FUZZ_RESUME=1     continue the previous run in target/afl-out/TARGET instead of restarting
#
# afl-fuzz, afl-cmin and afl-showmap are cargo-afl's own AFL++ 4.40c build (`cargo afl fuzz`,
# `cargo afl cmin`): the binaries link its runtime, whose fork-server protocol Debian's
# /usr/bin/afl-fuzz (4.04c) does not speak ("Unable to request new process from fork server").
#
# Outputs: binaries in target/afl/release/fuzz_TARGET (CARGO_TARGET_DIR=target/afl), the
# campaign in target/afl-out/TARGET/default/{queue,crashes,hangs,fuzzer_stats}, the minimised
# corpus in fuzz/corpus/TARGET (replayed by `cargo test --test replay`). Heavy steps run under
# `nice -n 19`. See fuzz/README.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGETS=(decode windows mel multipart graphql)
# Targets that need the server crate (feature `server`); the others build without it.
SERVER_TARGETS=(multipart graphql)
export CARGO_TARGET_DIR="$ROOT/target/afl"
OUT_ROOT="$ROOT/target/afl-out"
MEM_MB="${FUZZ_MEM_MB:-1024}"
# Non-interactive, and tolerate a machine not tuned for fuzzing (no root sysctl changes), shared
# with other work (no CPU pinning), and a corpus that holds saved crash/hang regressions.
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1
export AFL_IGNORE_SEED_PROBLEMS=1
# Line tables only: panics in `replay` get file:line backtraces; coverage is unaffected.
export CARGO_PROFILE_RELEASE_DEBUG="${CARGO_PROFILE_RELEASE_DEBUG:-line-tables-only}"

die() { echo "fuzz.sh: $*" >&2; exit 1; }

check_target() {
    local t
    for t in "${TARGETS[@]}"; do [[ "$1" == "$t" ]] && return 0; done
    die "unknown target '$1' (one of: ${TARGETS[*]})"
}

# Per-input time cap. decode runs symphonia, the resampler and the windower on up to 10 minutes
# of audio; windows builds a resampler per input (odd rates take ~0.1 s); mel is ~10 ms.
timeout_ms() {
    if [[ -n "${FUZZ_TIMEOUT_MS:-}" ]]; then echo "$FUZZ_TIMEOUT_MS"; return; fi
    case "$1" in
        decode) echo 5000 ;;
        windows) echo 5000 ;;
        mel) echo 1000 ;;
        multipart) echo 1000 ;;
        graphql) echo 1000 ;;
    esac
}

ensure_cargo_afl() {
    if ! cargo afl --version >/dev/null 2>&1; then
        echo "== installing cargo-afl (builds AFL++ as part of the install)"
        nice -n 19 cargo install cargo-afl --locked
    fi
    # The install builds AFL++ and its runtime; if that failed, build them now.
    if ! ls "${XDG_DATA_HOME:-$HOME/.local/share}"/afl.rs/rustc-*/afl.rs-*/afl-llvm/afl-compiler-rt.o \
        >/dev/null 2>&1; then
        echo "== building AFL++ for cargo-afl"
        nice -n 19 cargo afl config --build
    fi
}

is_server_target() {
    local t
    for t in "${SERVER_TARGETS[@]}"; do [[ "$1" == "$t" ]] && return 0; done
    return 1
}

# build [TARGET]: one target's binary, or all of them. The audio and model targets build
# without the server crate (its dependency tree, instrumented, is most of the build time).
build() {
    ensure_cargo_afl
    local want=("$@") t
    [[ ${#want[@]} -gt 0 ]] || want=("${TARGETS[@]}")
    for t in "${want[@]}"; do
        echo "== building fuzz_$t (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
        if is_server_target "$t"; then
            (cd "$ROOT" && nice -n 19 cargo afl build --release --features afl -p traum-fuzz --bin "fuzz_$t")
        else
            (cd "$ROOT" && nice -n 19 cargo afl build --release --no-default-features --features afl \
                -p traum-fuzz --bin "fuzz_$t")
        fi
    done
}

# afl-cmin finds afl-showmap on PATH first: put the matching AFL++ build in front (Debian's
# /usr/bin/afl-showmap 4.04c does not understand 4.40c's afl-cmin).
afl_bin_dir() {
    local commit
    commit="$(rustc -vV | awk '/^commit-hash/ { print substr($2, 1, 7) }')"
    ls -d "${XDG_DATA_HOME:-$HOME/.local/share}"/afl.rs/rustc-*-"$commit"/afl.rs-*/afl/bin 2>/dev/null |
        tail -1
}
AFL_FUZZ_CMD=(cargo afl fuzz)  # cargo-afl adds -c0 (CmpLog from the same binary: a no-op here)
AFL_CMIN_CMD=(cargo afl cmin)
with_afl_path() {
    local dir
    dir="$(afl_bin_dir)"
    [[ -n "$dir" ]] || die "cannot find cargo-afl's AFL++ build; run '$0 build'"
    PATH="$dir:$PATH" AFL_PATH="$dir" "$@"
}

# Seeds: the committed corpus (decode also gets the small audio fixtures).
seed_dir() {
    local t="$1" dir="$OUT_ROOT/$1.seeds"
    rm -rf "$dir"
    mkdir -p "$dir"
    if compgen -G "$ROOT/fuzz/corpus/$t/*" >/dev/null; then cp "$ROOT/fuzz/corpus/$t/"* "$dir/"; fi
    if [[ "$t" == decode ]]; then
        local f
        for f in "$ROOT"/tests/fixtures/audio/*; do
            # Only the small ones: big seeds slow afl-fuzz down and bloat the corpus (the corpus
            # has tiny versions of the rest, from fuzz/make_seeds.py).
            if [[ -f "$f" && $(stat -c %s "$f") -le 4096 ]]; then cp "$f" "$dir/fixture-$(basename "$f")"; fi
        done
    fi
    compgen -G "$dir/*" >/dev/null || die "no seeds for $t: fuzz/corpus/$t is empty"
    echo "$dir"
}

run() {
    local t="$1" limit="${2:-10m}" bin="$CARGO_TARGET_DIR/release/fuzz_$1" out="$OUT_ROOT/$1"
    local limit_args=() input
    case "$limit" in
        *x) limit_args=(-E "${limit%x}") ;;
        *h) limit_args=(-V "$(( ${limit%h} * 3600 ))") ;;
        *m) limit_args=(-V "$(( ${limit%m} * 60 ))") ;;
        *s) limit_args=(-V "${limit%s}") ;;
        *) die "LIMIT '$limit': use e.g. 600s, 10m, 1h or 100000x" ;;
    esac
    build "$t"
    mkdir -p "$OUT_ROOT"
    if [[ "${FUZZ_RESUME:-0}" == 1 && -d "$out/default/queue" ]]; then
        input=-
    else
        rm -rf "$out"
        input="$(seed_dir "$t")"
    fi
    echo "== fuzzing $t for $limit (-m $MEM_MB -t $(timeout_ms "$t")); output in $out"
    # -V/-E stop the campaign; afl-fuzz exits 0 then. AFL_NO_UI prints a status line a minute.
    with_afl_path nice -n 19 "${AFL_FUZZ_CMD[@]}" -i "$input" -o "$out" -m "$MEM_MB" \
        -t "$(timeout_ms "$t")" "${limit_args[@]}" -- "$bin" || die "afl-fuzz failed (status $?)"
    cmin "$t"
    stats "$t"
}

cmin() {
    local t="$1" bin="$CARGO_TARGET_DIR/release/fuzz_$1" out="$OUT_ROOT/$1"
    local queue="$out/default/queue" corpus="$ROOT/fuzz/corpus/$t" all="$OUT_ROOT/$1.cmin-in"
    [[ -d "$queue" ]] || die "no queue in $queue: run '$0 run $t' first"
    rm -rf "$all" "$all.out"
    mkdir -p "$all"
    cp "$queue"/id:* "$all/" 2>/dev/null || true
    # The current corpus competes too (its files keep their names); the regressions (crash-*,
    # hang-*) stay as they are and do not go through cmin, which would drop them.
    local f
    for f in "$corpus"/*; do
        [[ -f "$f" ]] || continue
        case "$(basename "$f")" in crash-* | hang-*) ;; *) cp "$f" "$all/corpus-$(basename "$f")" ;; esac
    done
    echo "== minimising $(ls "$all" | wc -l) inputs of $t"
    # afl-cmin passes the binary's exact map size to afl-showmap, whose batch mode (-I) then
    # records nothing for these binaries (AFL++ 4.40c); a power of two >= 64 Ki works.
    local map_size=65536 need
    need="$(AFL_DUMP_MAP_SIZE=1 "$bin" || true)"  # prints the size, exits 255
    [[ "$need" =~ ^[0-9]+$ ]] || need=65536
    while (( map_size < need )); do map_size=$(( map_size * 2 )); done
    # -e: edge coverage only (hit counts ignored), which keeps the corpus small. Crashing and
    # hanging inputs are not kept by cmin (see `triage` for keeping them as regressions).
    AFL_MAP_SIZE="$map_size" with_afl_path nice -n 19 "${AFL_CMIN_CMD[@]}" -e -i "$all" -o "$all.out" -m "$MEM_MB" \
        -t "$(( $(timeout_ms "$t") * 2 ))" -- "$bin" >"$OUT_ROOT/$t.cmin.log" 2>&1 ||
        { tail -20 "$OUT_ROOT/$t.cmin.log"; die "afl-cmin failed"; }
    compgen -G "$all.out/*" >/dev/null ||
        { tail -20 "$OUT_ROOT/$t.cmin.log"; die "afl-cmin kept nothing; fuzz/corpus/$t left as it was"; }
    # Replace the corpus by the minimised set. Named files stay whatever cmin says: the
    # regressions (crash-*, hang-*) and the hand-made seeds of make_seeds.py, which tests
    # read by name; only queue entries (q-*) come and go.
    local tmp
    tmp="$(mktemp -d)"
    for f in "$corpus"/*; do
        [[ -f "$f" ]] || continue
        case "$(basename "$f")" in q-*) ;; *) cp "$f" "$tmp/" ;; esac
    done
    rm -rf "$corpus"
    mkdir -p "$corpus"
    for f in "$all.out"/*; do
        [[ -f "$f" ]] || continue
        local name
        name="$(basename "$f")"
        case "$name" in
            corpus-*) name="${name#corpus-}" ;;
            *) name="q-$(sha1sum "$f" | cut -c1-16)" ;;  # new queue entry: named by content
        esac
        [[ -e "$tmp/$name" ]] || cp "$f" "$corpus/$name"
    done
    cp "$tmp"/* "$corpus/" 2>/dev/null || true
    rm -rf "$tmp"
    echo "== fuzz/corpus/$t: $(ls "$corpus" | wc -l) files, $(du -sb "$corpus" | cut -f1) bytes"
}

stats() {
    local t="$1" f="$OUT_ROOT/$1/default/fuzzer_stats"
    [[ -f "$f" ]] || die "no $f: run '$0 run $t' first"
    local get
    get() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$f"; }
    local execs secs
    execs="$(get execs_done)"
    secs="$(( $(get last_update) - $(get start_time) ))"
    echo "== $t"
    echo "executions:  $execs"
    echo "wall time:   ${secs} s (run_time $(get run_time) s)"
    echo "exec/s:      $(get execs_per_sec) (average $(awk -v e="$execs" -v s="$secs" 'BEGIN { printf "%.1f", s ? e / s : 0 }'))"
    echo "coverage:    $(get edges_found) of $(get total_edges) edges, bitmap $(get bitmap_cvg)"
    echo "corpus:      $(get corpus_count) inputs (queue)"
    echo "crashes:     $(get saved_crashes) saved ($(ls "$OUT_ROOT/$t/default/crashes" 2>/dev/null | grep -c '^id:' || true) files)"
    echo "hangs:       $(get saved_hangs) saved ($(ls "$OUT_ROOT/$t/default/hangs" 2>/dev/null | grep -c '^id:' || true) files)"
    echo "stability:   $(get stability)"
}

# Groups the last run's crashes by what they print (panic message / refused allocation) and the
# two innermost frames outside std, so that one input per bug can be kept as a regression.
triage() {
    local t="$1" bin="$CARGO_TARGET_DIR/release/fuzz_$1" out="$OUT_ROOT/$1/default" f
    [[ -x "$bin" ]] || build "$t"
    for f in "$out"/crashes/id:*; do
        [[ -f "$f" ]] || continue
        local log what where
        log="$(RUST_BACKTRACE=1 timeout 60 "$bin" <"$f" 2>&1 || true)"
        if grep -q "panicked at" <<<"$log"; then
            # "thread 'main' (PID) panicked at FILE:LINE:COL:" then the message.
            where="$(grep -m1 "panicked at" <<<"$log" | sed -E 's/.*panicked at //; s/:$//' || true)"
            what="$(grep -A1 -m1 "panicked at" <<<"$log" | tail -1 | cut -c1-160 || true)"
        else
            what="$(grep -m1 -E "^traum-fuzz: refusing|memory allocation of|^[A-Za-z].*" <<<"$log" |
                sed -E 's/[0-9]{6,}/N/g' | cut -c1-160 || true)"
            where="$(grep -E "^ +at " <<<"$log" | grep -v -E "/rustc/|/library/|afl-[0-9.]+/src" |
                head -2 | sed -E 's|.*/registry/src/[^/]+/||; s|^ +at ||' | paste -sd' ' || true)"
        fi
        printf '%s\t%s\t%s\t%s\n' "${what:-exit without message}" "${where:-?}" "$(stat -c %s "$f")" "$f"
    done | sort -t$'\t' -k1,2 -k3n | awk -F'\t' '
        { key = $1 "\t" $2; n[key]++; if (!(key in first)) { first[key] = $4; size[key] = $3; order[++k] = key } }
        END { for (i = 1; i <= k; i++) { key = order[i]; split(key, p, "\t");
              printf "%d x %s\n    at %s\n    smallest (%d bytes): %s\n", n[key], p[1], p[2], size[key], first[key] } }'
    local hangs
    hangs="$(ls "$out/hangs" 2>/dev/null | grep -c '^id:' || true)"
    echo "hangs: $hangs in $out/hangs (replay one to see where it spends its time)"
}

replay() {
    local t="$1" bin="$CARGO_TARGET_DIR/release/fuzz_$1" f
    shift
    [[ -x "$bin" ]] || build "$t"
    for f in "$@"; do
        echo "== $f"
        RUST_BACKTRACE=1 "$bin" <"$f" && echo "ok" || echo "FAILED (status $?)"
    done
}

cmd="${1:-}"
case "$cmd" in
    build) shift; for t in "$@"; do check_target "$t"; done; build "$@" ;;
    run) [[ $# -ge 2 ]] || die "usage: $0 run TARGET [LIMIT]"; check_target "$2"; run "$2" "${3:-10m}" ;;
    cmin) [[ $# -eq 2 ]] || die "usage: $0 cmin TARGET"; check_target "$2"; cmin "$2" ;;
    stats) [[ $# -eq 2 ]] || die "usage: $0 stats TARGET"; check_target "$2"; stats "$2" ;;
    triage) [[ $# -eq 2 ]] || die "usage: $0 triage TARGET"; check_target "$2"; triage "$2" ;;
    replay) [[ $# -ge 3 ]] || die "usage: $0 replay TARGET FILE..."; check_target "$2"; shift; replay "$@" ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; [[ -z "$cmd" ]] || exit 2 ;;
esac
