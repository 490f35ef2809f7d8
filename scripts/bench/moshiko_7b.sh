#!/usr/bin/env bash
# Moshi 7B streaming on this CPU (not run in CI: minutes, 15.4 GB of disk, ~17 GB of RAM).
#   scripts/bench/moshiko_7b.sh            # bf16, and q8 when the build has `moshi-ttt quantize`
# Writes a random moshiko-7b in Kyutai's release layout and dtype (bf16) under $MOSHI_TTT_CACHE/7b
# unless it is there (and model.q8.safetensors from it with `quantize`), streams each format with
# `generate` for STEPS steps, and prints per format: mean / median ms per step after WARMUP steps, the
# weight-streaming floor (bytes of weights a step reads / sequential read bandwidth measured in this
# run by bench_lm --measure-bandwidth), their ratio, peak RSS of generate, and the file size.
# Environment: BUILD_DIR (default build), MOSHI_TTT_CACHE, STEPS (10), WARMUP (3), THREADS (2),
#   FORMATS ("bf16 q8"), KEEP_Q8=1 keeps the q8 file (default: removed after its run, 8 GB).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${BUILD_DIR:-build}
[[ $BUILD = /* ]] || BUILD=$here/$BUILD
CLI=$BUILD/moshi-ttt
BENCH=$BUILD/bench/bench_lm
CACHE=${MOSHI_TTT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/moshi-ttt}
DIR=$CACHE/7b
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-3}
THREADS=${THREADS:-2}
FORMATS=${FORMATS:-bf16 q8}
log() { printf '[moshiko_7b] %s\n' "$*" >&2; }
for f in "$CLI" "$BENCH"; do
  [ -x "$f" ] || { log "missing $f: cmake --build $BUILD --target moshi-ttt bench_lm"; exit 1; }
done
mkdir -p "$DIR"
BF16=$DIR/moshiko-7b-bf16  # config.json + model.safetensors
Q8DIR=$DIR/moshiko-7b-q8  # config.json (quantize: true) + model.q8.safetensors
Q8=$Q8DIR/model.q8.safetensors
RUNS=$DIR/runs
mkdir -p "$RUNS"

# Weight bytes one streaming step reads: every tensor of the file but the embedding tables (read by row).
step_bytes() {
  python3 - "$1" <<'PY'
import json, struct, sys
with open(sys.argv[1], "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    h = json.loads(f.read(n))
h.pop("__metadata__", None)
print(sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in h.items() if "emb" not in k.split(".")[0]))
PY
}

# mean / median / fastest ms per step after the warm-up, from generate's metrics.jsonl (on a shared
# machine the fastest step is the one least disturbed by other processes).
step_stats() {
  python3 - "$1" "$WARMUP" <<'PY'
import json, statistics, sys
ms = [json.loads(l)["ms"] for l in open(sys.argv[1]) if l.strip()]
ms = ms[int(sys.argv[2]):] or ms
print(f"{statistics.mean(ms):.1f} {statistics.median(ms):.1f} {min(ms):.1f} {len(ms)}")
PY
}

if [ ! -f "$BF16/model.safetensors" ]; then
  avail=$(awk '/MemAvailable/ {print int($2/1048576)}' /proc/meminfo)
  log "writing the random bf16 moshiko-7b to $BF16 (15.4 GB, one tensor at a time; ${avail} GB RAM available)"
  "$CLI" init "$BF16" --preset moshiko-7b --dtype bfloat16 --seed 0 | tee "$RUNS/init_bf16.log"
else
  log "using $BF16/model.safetensors (cached)"
fi

has_quantize=0
# (CLI11 answers --help for an unknown subcommand with the main help: look for the subcommand's own usage line.)
"$CLI" quantize --help 2>&1 | grep -Eq "Usage: .*quantize" && has_quantize=1

log "measuring read bandwidth (1 GiB, $THREADS threads)"
bw=$(MOSHI_TTT_BENCH_THREADS=$THREADS "$BENCH" --measure-bandwidth)
read_gbps=$(sed -n 's/^read_gbps=//p' <<<"$bw")
gemv_gbps=$(sed -n 's/^gemv_bf16_gbps=//p' <<<"$bw")
log "read ${read_gbps} GB/s, bf16 gemv ${gemv_gbps} GB/s"

results=()
for fmt in $FORMATS; do
  case $fmt in
    bf16) weights=$BF16/model.safetensors cfg=$BF16/config.json ;;
    q8)
      if [ $has_quantize = 0 ]; then
        log "q8: this build has no 'moshi-ttt quantize': skipped"
        continue
      fi
      weights=$Q8 cfg=$Q8DIR/config.json
      if [ ! -f "$Q8" ] || [ ! -f "$cfg" ]; then
        log "q8: quantizing to $Q8"
        mkdir -p "$Q8DIR"
        /usr/bin/time -v "$CLI" quantize "$BF16/model.safetensors" "$Q8" --config "$BF16/config.json" \
          --out-config "$cfg" --force 2> "$RUNS/quantize.time" | tee "$RUNS/quantize.log"
        log "q8: quantize peak RSS $(awk -F': ' '/Maximum resident/ {printf "%.0f MB", $2 * 1024 / 1e6}' "$RUNS/quantize.time")"
      fi
      ;;
    *) log "unknown format $fmt (bf16, q8)"; exit 1 ;;
  esac
  run=$RUNS/$fmt
  rm -rf "$run"
  log "$fmt: generate, $STEPS steps"
  /usr/bin/time -v "$CLI" generate --config "$cfg" --weights "$weights" --dtype bfloat16 \
    --steps "$STEPS" --greedy --threads "$THREADS" --run-dir "$run" 2> "$RUNS/$fmt.time" | tee "$RUNS/$fmt.log"
  read -r mean median best n < <(step_stats "$run/metrics.jsonl")
  bytes=$(step_bytes "$weights")
  peak_mb=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2 * 1024 / 1e6}' "$RUNS/$fmt.time")
  size=$(stat -c %s "$weights")
  peak_mb=${peak_mb:-0}
  results+=("$(python3 -c "
b, bw, mean, med, best = $bytes, $read_gbps, $mean, $median, $best
floor = b / (bw * 1e9) * 1e3
print(f'$fmt: {mean:.0f} ms mean, {med:.0f} ms median, {best:.0f} ms fastest per step ({$n} steps after $WARMUP warm-up); '
      f'floor {floor:.0f} ms ({b / 1e9:.2f} GB of weights per step at {bw} GB/s read); '
      f'ratio {med / floor:.2f} (fastest {best / floor:.2f}); peak RSS {$peak_mb} MB; file {$size / 1e9:.2f} GB')")")
  if [ "$fmt" = q8 ] && [ "${KEEP_Q8:-0}" != 1 ]; then rm -rf "$Q8DIR"; fi
done

echo "== moshiko-7b (random weights) on $(nproc) cores, $THREADS threads; read ${read_gbps} GB/s, bf16 gemv ${gemv_gbps} GB/s"
[ -f "$RUNS/init_bf16.log" ] && grep -h "peak RSS" "$RUNS/init_bf16.log" | sed 's/^/init bf16: /'
for r in "${results[@]}"; do echo "$r"; done
