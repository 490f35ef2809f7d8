#!/usr/bin/env bash
# One GPU session's checks for training (issue 5): build, the gpu tests, the train-step benchmark on
# CUDA (frames/s and peak CUDA tensor memory), and the demo on CUDA with more steps than the CPU default.
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/gpu/env.sh  # the bundled PLplot, when there is one
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi -L
scripts/gpu/build.sh moshi-ttt bench_train test_gpu
echo "== gpu tests"; timeout 120 build-gpu/tests/test_gpu 2>&1 | grep -E "^\[  (FAILED|PASSED|  OK) |FAILED|Failure|error" | tail -40
echo "== bench_train (cuda)"; MOSHI_TTT_BENCH_DEVICE=cuda timeout 100 build-gpu/bench/bench_train --benchmark_min_time=1 2>&1 | grep BM_
STEPS=${STEPS:-2000}
echo "== demo --device cuda --steps $STEPS"
timeout 200 build-gpu/moshi-ttt demo --device cuda --steps "$STEPS" --run-dir "$OUT/demo" --quiet 2>&1 | tail -3
sed -n 7,12p "$OUT/demo/report/summary.md" 2>/dev/null
grep "\"kind\":\"train\"" "$OUT/demo/ttt/metrics.jsonl" 2>/dev/null | tail -1 | head -c 600; echo
rm -rf "$OUT/demo/data" "$OUT/demo/baseline/checkpoints" "$OUT/demo/ttt/checkpoints"
