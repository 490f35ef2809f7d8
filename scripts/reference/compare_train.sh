#!/usr/bin/env bash
# Training throughput side by side, in one run: moshi-ttt's train_step (bench/bench_train) against
# moshi-finetune's step on Kyutai's LMModel (bench_train_reference.py: the same loss, AdamW, clipping
# and schedule), torch.compile off and on, on the same models and batches, next to the sgemm rate
# measured in the same run. Also the LM forward (bench/bench_lm) against Kyutai's.
#
# Usage: scripts/reference/compare_train.sh MOSHI_FINETUNE [ROUNDS]
#   MOSHI_FINETUNE  a kyutai-labs/moshi-finetune checkout: work tree or bare git directory (the
#                   `fetch` tool's mirror works as it is); none of its code is copied here.
#   ROUNDS          paired rounds (default 1); even rounds run the reference first.
# Environment: COMPARE_TRAIN_MODELS (default "small:full small:lora tiny:full"), COMPARE_TRAIN_SIZES
# (TxB, default "256x1 256x4 1024x1 1024x4"), MOSHI_TTT_BENCH_DEVICE=cuda with REF_DEVICE=cuda (the
# reference then runs bf16 parameters as moshi-finetune does; ours runs MOSHI_TTT_BENCH_DTYPE).
# Figures land in build/reference/train/; the summary is printed and written to summary_ROUND.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
mf=${1:?usage: $0 MOSHI_FINETUNE_CHECKOUT [ROUNDS]}
rounds=${2:-1}
models=${COMPARE_TRAIN_MODELS:-"small:full small:lora tiny:full"}
sizes=${COMPARE_TRAIN_SIZES:-"256x1 256x4 1024x1 1024x4"}
ref_device=${REF_DEVICE:-cpu}
PY=$(scripts/reference/setup_reference_env.sh 2>/dev/null | tail -1)
out=build/reference/train
mkdir -p "$out"
[ -x build/bench/bench_train ] || { echo "build/bench/bench_train missing: run scripts/setup.sh" >&2; exit 1; }

model_index() {  # bench_train's model argument for MODEL:MODE
  case "$1" in small:full) echo 0 ;; small:lora) echo 1 ;; tiny:full) echo 2 ;; *) echo "unknown $1" >&2; exit 1 ;; esac
}

ours() {
  local r=$1 idx="" tb="" ts="" bs=""
  for m in $models; do idx="$idx|$(model_index "$m")"; done
  for s in $sizes; do ts="$ts|${s%x*}"; bs="$bs|${s#*x}"; done
  # The tiny hybrid TTT model (3) always runs: its reference row is Kyutai's tiny model without TTT.
  local filter="Sgemm|BM_TrainStep/(3${idx})/(${ts#|})/(${bs#|})/0/"
  echo "== round $r: moshi-ttt train_step (load $(cut -d' ' -f1 /proc/loadavg))"
  build/bench/bench_train --benchmark_filter="$filter" --benchmark_format=json \
    --benchmark_out="$out/ours_$r.json" >/dev/null
  build/bench/bench_lm --benchmark_filter='Sgemm|LMForward/256/0' --benchmark_format=json \
    --benchmark_out="$out/ours_fwd_$r.json" >/dev/null
}

reference() {
  local r=$1
  for m in $models; do
    for s in $sizes; do
      local T=${s%x*} B=${s#*x} steps=3 warm=1
      # Small steps are quick and noisy: more of them; torch.compile needs two warm-up steps.
      [ $((T * B)) -le 256 ] && steps=5
      for c in off on; do
        local w=$warm
        [ "$c" = on ] && w=2
        echo "== round $r: moshi-finetune step, $m T=$T B=$B, torch.compile $c (load $(cut -d' ' -f1 /proc/loadavg))"
        "$PY" scripts/reference/bench_train_reference.py --moshi-finetune "$mf" --model "${m%:*}" --mode "${m#*:}" \
          --T "$T" --B "$B" --compile "$c" --steps "$steps" --warmup "$w" --device "$ref_device" \
          --out "$out/ref_${r}_${m/:/_}_${T}x${B}_$c.json" >/dev/null 2>"$out/ref_${r}_${m/:/_}_${T}x${B}_$c.log"
      done
    done
  done
}

for r in $(seq "$rounds"); do
  if [ $((r % 2)) -eq 1 ]; then ours "$r"; reference "$r"; else reference "$r"; ours "$r"; fi
  python3 scripts/reference/summarize_train.py "$out" "$r" "$models" "$sizes" | tee "$out/summary_$r.txt"
done
