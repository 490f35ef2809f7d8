#!/usr/bin/env bash
# One GPU session's checks for issue 3 (the hand-written TTT backward and the OpenMP fix): build, the
# gpu tier, the fused CPU kernels' tests on that machine's 16 cores, the TTT layers on CUDA at L=8192
# against ttt-lm-pytorch (.refcode/ttt-lm-pytorch, carried), check-reference on CUDA, and the TTT layers
# on its CPU at 16 threads against the reference. Output on stdout and in $OUT/log.
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/gpu/env.sh  # the bundled PLplot, when there is one
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
exec > >(tee "$OUT/log") 2>&1
nvidia-smi -L
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
scripts/gpu/build.sh moshi-ttt test_gpu test_unit bench_ttt
build-gpu/moshi-ttt --version | head -3
echo "== gpu tests"; timeout 120 build-gpu/tests/test_gpu 2>&1 | grep -E "OK \]|FAILED|PASSED|Failure" | head -30
echo "== fused CPU kernels on this machine's cores"
timeout 90 build-gpu/tests/test_unit --gtest_filter='TttFused*:Runtime*:FusedStep*' --gtest_brief=1 2>&1 | tail -8
for L in 8192; do
  echo "== bench_ttt L=$L (cuda)"
  MT_BENCH_L=$L MOSHI_TTT_BENCH_DEVICE=cuda timeout 120 build-gpu/bench/bench_ttt --benchmark_filter='/linear_|/mlp_' 2>&1 | grep -E "_min"
  echo "== reference ttt-lm-pytorch L=$L (cuda)"
  timeout 100 python3 scripts/reference/bench_ttt_reference.py .refcode/ttt-lm-pytorch --device cuda --L $L --reps 5 2>&1 | tail -5
done
echo "== check-reference --device cuda"; timeout 90 build-gpu/moshi-ttt check-reference .ref --device cuda 2>&1 | tail -6
echo "== bench_ttt on the CPU, 16 threads"
MT_BENCH_THREADS=16 timeout 90 build-gpu/bench/bench_ttt --benchmark_filter='Sgemm|/linear_|/mlp_' 2>&1 | grep -E "_min|Sgemm.*_max"
echo "== reference on the CPU, 16 threads"
timeout 100 python3 scripts/reference/bench_ttt_reference.py .refcode/ttt-lm-pytorch --threads 16 --reps 3 2>&1 | tail -5
