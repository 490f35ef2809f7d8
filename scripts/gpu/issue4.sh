#!/usr/bin/env bash
# One GPU session's checks (issues 3 and 4): build, gpu tier, check-reference on CUDA, the LM with
# each TTT integration (forward tok/s, streaming ms/step), and the TTT layers at L=8192 against the
# reference ttt-lm-pytorch (in .refcode/, carried) on the same GPU.
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/gpu/env.sh  # the bundled PLplot, when there is one
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi -L
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
scripts/gpu/build.sh moshi-ttt test_gpu bench_lm bench_ttt
echo "== gpu tests"; timeout 120 build-gpu/tests/test_gpu 2>&1 | grep -E "OK|FAILED|PASSED|Failure|Expected|actual" | head -30
echo "== check-reference --device cuda"; timeout 60 build-gpu/moshi-ttt check-reference .ref --device cuda 2>&1 | tail -8
echo "== bench_lm (cuda)"; MOSHI_TTT_BENCH_DEVICE=cuda timeout 150 build-gpu/bench/bench_lm --benchmark_filter=LM --benchmark_min_time=0.5 2>&1 | grep BM_
for L in 2048 8192; do
  echo "== bench_ttt L=$L (cuda)"; MT_BENCH_L=$L MOSHI_TTT_BENCH_DEVICE=cuda timeout 150 build-gpu/bench/bench_ttt 2>&1 | grep -E "_min|_max" | grep -v "GFLOP/s=0" | head -12
  echo "== reference ttt-lm-pytorch L=$L (cuda)"; timeout 120 python3 scripts/reference/bench_ttt_reference.py .refcode/ttt-lm-pytorch --device cuda --L $L --reps 5 2>&1 | tail -6
done
