#!/usr/bin/env bash
# One GPU session's checks for training throughput (issue 26): build with CUDA, then on the same card
# ours (bench_train, bf16 parameters with float32 masters, as moshi-finetune) against moshi-finetune's
# step (bench_train_reference.py --device cuda) for the small model, full and LoRA, T 256/1024 x B 1/4,
# and the moshiko-7b LoRA step (random weights, T 1024 x B 4, checkpointing) with its peak memory.
# The reference needs, carried over (ignored paths): .gpu-deps/wheels/ (pip download --no-deps
# moshi==0.2.13 einops safetensors sentencepiece huggingface_hub) and .gpu-deps/moshi-finetune/ (a
# checkout of kyutai-labs/moshi-finetune); without them only our rows run.
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/gpu/env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi -L
scripts/gpu/build.sh bench_train
export MOSHI_TTT_BENCH_DEVICE=cuda MOSHI_TTT_BENCH_DTYPE=bfloat16
echo "== ours: small full / LoRA, bf16, and the 7B LoRA step"
timeout 300 build-gpu/bench/bench_train --benchmark_filter='BM_TrainStep/[01]/(256|1024)/(1|4)/0/|BM_TrainStep7b' \
  --benchmark_format=json --benchmark_out="$OUT/ours.json" 2>&1 | grep -E "^BM_" | cut -c1-200
PY=$(command -v python3)
if [ -d .gpu-deps/wheels ] && [ -d .gpu-deps/moshi-finetune ]; then
  "$PY" -m pip install --no-index --no-deps --target "$OUT/site" .gpu-deps/wheels/*.whl >/dev/null 2>&1
  for m in full lora; do
    for s in 256x1 256x4 1024x1 1024x4; do
      PYTHONPATH="$OUT/site" timeout 120 "$PY" scripts/reference/bench_train_reference.py \
        --moshi-finetune .gpu-deps/moshi-finetune --model small --mode $m --T "${s%x*}" --B "${s#*x}" \
        --device cuda --compile off --steps 5 --warmup 2 --out "$OUT/ref_${m}_$s.json" 2>&1 | tail -1 | cut -c1-160
    done
  done
  PYTHONPATH="$OUT/site" timeout 300 "$PY" scripts/reference/bench_train_reference.py --moshi-finetune \
    .gpu-deps/moshi-finetune --model moshiko-7b --mode lora --T 1024 --B 4 --gradient-checkpointing \
    --device cuda --compile off --steps 3 --warmup 1 --out "$OUT/ref_7b_lora.json" 2>&1 | tail -1 | cut -c1-300
else
  echo "(no .gpu-deps/wheels or .gpu-deps/moshi-finetune: reference rows skipped)"
fi
