#!/usr/bin/env bash
# Training-step time of the `small` preset (~10^8 parameters, full fine-tuning, float32 on the CPU) at
# 1, 2 and 4 ranks on this machine, with the same per-rank batch (weak scaling, as data parallelism is
# used): each run's mean step time and throughput over the steps after the first (warm-up), from its
# metrics.jsonl, and the speed-up in frames/s against one rank. Optional: SHARDING=optimizer|gradients.
#
#   scripts/reference/bench_data_parallel.sh [--steps N] [--ranks "1 2 4"] [--out DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cli=${MOSHI_TTT_CLI:-$here/build/moshi-ttt}
steps=6
ranks="1 2 4"
out=$(mktemp -d /tmp/bench-dp.XXXXXX)
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps=$2; shift 2 ;;
    --ranks) ranks=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
[ -x "$cli" ] || { echo "build first: $cli is missing" >&2; exit 1; }
"$cli" synth-data "$out/data" --files 16 --frames 200 --streams 17 --text-vocab 32000 --audio-vocab 2048 \
  --force >/dev/null
cat >"$out/small.yaml" <<YAML
preset: small
run_dir: $out/run
overwrite_run_dir: true
data:
  train_data: $out/data/index.jsonl
duration_sec: 8
batch_size: 1
max_steps: $steps
do_ckpt: false
full_finetuning: true
param_dtype: float32
sharding: ${SHARDING:-none}
log_freq: 1
YAML
printf '%-6s %12s %14s %12s\n' ranks "step (s)" "frames/s" "speed-up"
base=""
for n in $ranks; do
  rm -rf "$out/run"
  if [ "$n" = 1 ]; then "$cli" train --quiet --config "$out/small.yaml"; else
    "$cli" train --quiet --nproc "$n" --config "$out/small.yaml"; fi >"$out/train_$n.log" 2>&1
  # Mean over the steps after the first (warm-up). A step moves n ranks x 1 x 100 frames.
  read -r step_s fps < <(python3 - "$out/run/metrics.jsonl" "$n" <<'PY'
import json, sys
rows = [j for j in map(json.loads, open(sys.argv[1])) if j.get("kind") == "train"]
rows = rows[1:] or rows
frames = int(sys.argv[2]) * 100
step = sum(frames / r["frames_per_s"] for r in rows) / len(rows)
print(f"{step:.3f} {frames / step:.1f}")
PY
)
  [ -n "$base" ] || base=$fps
  printf '%-6s %12s %14s %11.2fx\n' "$n" "$step_s" "$fps" "$(python3 -c "print($fps / $base)")"
  echo "{\"ranks\": $n, \"step_s\": $step_s, \"frames_per_s\": $fps, \"sharding\": \"${SHARDING:-none}\"}" >>"$out/summary.jsonl"
done
echo "logs and summary: $out"
