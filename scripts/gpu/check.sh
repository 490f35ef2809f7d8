#!/usr/bin/env bash
# Runs on a lent GPU machine (PyTorch + CMake + nvcc there, no network): builds against its CUDA
# PyTorch with the bundled dependencies (.gpu-deps, from bundle_deps.sh) and reference cases
# (.ref, a copy of ../shared/reference), then runs the gpu tier, check-reference on CUDA and the
# benchmarks. Output goes to stdout and $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/gpu/env.sh  # the bundled PLplot, when there is one
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi -L
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
scripts/gpu/build.sh
build-gpu/moshi-ttt --version | head -4
echo "== gpu tests"; build-gpu/tests/test_gpu 2>&1 | tail -25
echo "== check-reference --device cuda"; build-gpu/moshi-ttt check-reference .ref --device cuda 2>&1 | tail -12
echo "== unit tests on this machine (CPU paths)"; build-gpu/tests/test_unit --gtest_brief=1 2>&1 | tail -6
for b in build-gpu/bench/bench_*; do
  [ -x "$b" ] || continue
  echo "== $b"; MOSHI_TTT_BENCH_DEVICE=cuda timeout 150 "$b" --benchmark_min_time=0.5 2>&1 | tail -15
done
