#!/usr/bin/env bash
# One GPU session's checks for live conversations (issue 27): build with CUDA, the serve tests of the
# gpu tier (a conversation on a busy CUDA batch equals the batch-1 loop), then how many conversations
# one GPU serves in real time: bench_serve for tiny, small and moshiko-7b (bf16, random weights) at
# B 1..8, with p50/p99 frame times. Carry .gpu-deps (scripts/gpu/bundle_deps.sh) and .ref.
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/gpu/env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi -L
scripts/gpu/build.sh moshi-ttt test_gpu test_unit bench_serve
echo "== gpu tier (serve)"; build-gpu/tests/test_gpu --gtest_filter='ServeGpu*:LMGpu*' 2>&1 | tail -8
echo "== unit serve tests (CPU paths on this machine)"
build-gpu/tests/test_unit --gtest_filter='Serve*:Opus*' --gtest_brief=1 2>&1 | tail -4
echo "== bench_serve on CUDA, bf16"
MOSHI_TTT_BENCH_DEVICE=cuda MOSHI_TTT_BENCH_DTYPE=bfloat16 timeout 400 build-gpu/bench/bench_serve \
  --benchmark_format=json --benchmark_out="$OUT/serve_gpu.json" 2>&1 | grep -vE "^\s*$" | cut -c1-220 | tail -30
