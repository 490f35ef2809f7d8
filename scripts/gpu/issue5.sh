#!/usr/bin/env bash
# One GPU session's checks for training (issue 5): build, train-step benchmark on CUDA, the train
# reference case on CUDA, and the demo with many more steps than the CPU default.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
PREFIX=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
export TORCH_CUDA_ARCH_LIST=9.0
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
cmake -S . -B build-gpu "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PREFIX" \
  -DMOSHI_TTT_CUDA=ON -DMOSHI_TTT_DEPS_DIR="$PWD/.gpu-deps" -DMOSHI_TTT_REFERENCE_DIR="$PWD/.ref" >"$OUT/configure.log" 2>&1 \
  || { tail -40 "$OUT/configure.log"; exit 1; }
t0=$(date +%s)
cmake --build build-gpu -j"$(nproc)" --target moshi-ttt bench_train -- -k 0 >"$OUT/build.log" 2>&1 || grep -E "error" -A3 "$OUT/build.log" | head -40
echo "build: $(( $(date +%s) - t0 )) s"
echo "== check-reference train --device cuda"; timeout 60 build-gpu/moshi-ttt check-reference .ref/train --device cuda 2>&1 | tail -3
echo "== bench_train (cuda)"; MOSHI_TTT_BENCH_DEVICE=cuda timeout 120 build-gpu/bench/bench_train --benchmark_min_time=2 2>&1 | grep BM_
STEPS=${STEPS:-3000}
echo "== demo --device cuda --steps $STEPS"
timeout 330 build-gpu/moshi-ttt demo --device cuda --steps "$STEPS" --run-dir "$OUT/demo" --quiet 2>&1 | tail -5
sed -n 1,14p "$OUT/demo/report/summary.md" 2>/dev/null
rm -rf "$OUT/demo/data" "$OUT/demo/baseline/checkpoints" "$OUT/demo/ttt/checkpoints"
