#!/usr/bin/env bash
# One GPU session's checks for the audio issue (6): build, mimi reference case on CUDA, Mimi speed.
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/gpu/env.sh  # the bundled PLplot, when there is one
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi -L
scripts/gpu/build.sh moshi-ttt bench_mimi
echo "== check-reference --device cuda"; timeout 60 build-gpu/moshi-ttt check-reference .ref --device cuda 2>&1 | tail -9
echo "== bench_mimi (cuda)"; MOSHI_TTT_BENCH_DEVICE=cuda timeout 120 build-gpu/bench/bench_mimi --benchmark_min_time=1 2>&1 | grep -E "BM_|rror"
