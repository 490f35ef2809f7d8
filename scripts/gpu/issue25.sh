#!/usr/bin/env bash
# One GPU session's checks for data parallel (issue 25): build with CUDA (NCCL linked), the NCCL
# collectives on one rank (a group of one, launched by torchrun), a 1-rank torchrun training step on
# cuda:LOCAL_RANK, and a bf16 LoRA + TTT step of the moshiko-7b preset (random weights) with its peak
# CUDA tensor memory beside the memory plan.
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/gpu/env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi -L
scripts/gpu/build.sh moshi-ttt test_gpu
CLI=build-gpu/moshi-ttt
PY=$(dirname "$(command -v python3)")/python3
TR="$PY -m torch.distributed.run --standalone --nproc-per-node 1 --no-python"
echo "== gpu tests"; timeout 120 build-gpu/tests/test_gpu 2>&1 | grep -E "^\[  (FAILED|PASSED|  OK) |FAILED|Failure" | tail -20
echo "== NCCL collectives, 1 rank"
timeout 120 $TR $CLI collectives --device cuda --sizes 4B,1MiB,256MiB --iters 5 2>&1 | tail -14
"$CLI" synth-data "$OUT/data" --files 8 --frames 400 --streams 17 --text-vocab 32000 --audio-vocab 2048 --force >/dev/null
cat >"$OUT/lora_ttt_7b.yaml" <<YAML
preset: moshiko-7b
ttt:
  enable: true
  variant: hybrid
  layers: "16,24,31"
  type: linear
  mini_batch_size: 16
lora:
  enable: true
  rank: 128
  scaling: 2.0
run_dir: $OUT/run7b
overwrite_run_dir: true
data:
  train_data: $OUT/data/index.jsonl
duration_sec: 30
batch_size: 2
max_steps: 2
do_ckpt: false
param_dtype: bfloat16
device: cuda
log_freq: 1
YAML
echo "== plan (dry run)"; $CLI train --config "$OUT/lora_ttt_7b.yaml" --dry-run
echo "== 7B LoRA + TTT, bf16, 2 steps under torchrun (1 rank)"
timeout 400 $TR $CLI train --config "$OUT/lora_ttt_7b.yaml" 2>&1 | tail -15
grep -E '"kind":"(memory_plan|train)"' "$OUT/run7b/metrics.jsonl" | cut -c1-400
