#!/usr/bin/env bash
# One GPU session's checks for training (issue 5): build, train-step benchmark on CUDA, the train
# reference case on CUDA, and the demo with many more steps than the CPU default.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
scripts/gpu/build.sh moshi-ttt bench_train
echo "== check-reference train --device cuda"; timeout 60 build-gpu/moshi-ttt check-reference .ref/train --device cuda 2>&1 | tail -3
echo "== bench_train (cuda)"; MOSHI_TTT_BENCH_DEVICE=cuda timeout 120 build-gpu/bench/bench_train --benchmark_min_time=2 2>&1 | grep BM_
STEPS=${STEPS:-3000}
echo "== demo --device cuda --steps $STEPS"
timeout 330 build-gpu/moshi-ttt demo --device cuda --steps "$STEPS" --run-dir "$OUT/demo" --quiet 2>&1 | tail -5
sed -n 1,14p "$OUT/demo/report/summary.md" 2>/dev/null
rm -rf "$OUT/demo/data" "$OUT/demo/baseline/checkpoints" "$OUT/demo/ttt/checkpoints"
