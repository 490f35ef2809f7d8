#!/usr/bin/env bash
# Does YaRN let a model trained at a short context run at 4x that context?
#
# Trains the tiny preset from scratch on synthetic motif data (src/train/synthetic.h) with 128-frame
# sequences and a 128-frame attention context, then scores held-out 512-frame files three ways with the
# same weights:
#   window-128  the trained regime: sliding 128-frame attention (relative distances stay < 128)
#   rope-512    full 512-frame attention, plain RoPE (distances up to 511, never seen in training)
#   yarn-512    full 512-frame attention, YaRN factor 4, original context 128 (rope_scaling)
# and after a short fine-tune (300 steps, 512-frame sequences, lr 3e-4) of the same weights:
#   rope-512+ft / yarn-512+ft  as rope-512 / yarn-512, fine-tuned with that config
# on two sets: "near" (motifs recur 8+ frames apart, as in training) and "far" (motifs recur 160+ frames
# apart: only attention beyond the training length can recall them).
#
#   scripts/experiments/yarn_context_extension.sh [WORK_DIR] [STEPS]
# Needs build/moshi-ttt and the setup script's Python (numpy). About 12 min on 2 CPU cores.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
work="$(mkdir -p "${1:-runs/yarn-context}" && cd "${1:-runs/yarn-context}" && pwd)"
steps="${2:-6000}"
B="$root/build/moshi-ttt"
PY="${PYTHON:-$(ls -d "${XDG_CACHE_HOME:-$HOME/.cache}"/moshi-ttt/torch-*/venv/bin/python 2>/dev/null | tail -1)}"
T="$root/scripts/experiments/yarn_tables.py"
cd "$work"

"$B" synth-data data/train --force --pattern motifs --files 4000 --frames 128 --min-gap 8 --seed 1
"$B" synth-data data/near --force --pattern motifs --files 32 --frames 512 --min-gap 8 --seed 2 --masks
"$B" synth-data data/far --force --pattern motifs --files 32 --frames 512 --min-gap 160 --repeat-prob 0.05 --seed 3 --masks
"$PY" "$T" batch data/near near.safetensors
"$PY" "$T" batch data/far far.safetensors

"$B" init m0 --preset tiny --force >/dev/null
"$PY" - <<'EOF'
import json
c = json.load(open("m0/config.json"))
for ctx in (128, 512):
    c["context"] = ctx
    json.dump(c, open(f"lm{ctx}.json", "w"), indent=1)
EOF
cat > train.yaml <<EOF
moshi_paths:
  config_path: $work/lm128.json
run_dir: $work/run
overwrite_run_dir: true
data:
  train_data: $work/data/train/index.jsonl
  shuffle: true
duration_sec: 10.24
batch_size: 8
max_steps: $steps
seed: 0
optim:
  lr: 0.003
  weight_decay: 0.01
  pct_start: 0.1
full_finetuning: true
param_dtype: float32
gradient_checkpointing: false
log_freq: 50
ckpt_freq: 0
init_seed: 7
EOF
"$B" train --config train.yaml
weights="$(ls -d run/checkpoints/checkpoint_* | tail -1)/consolidated/consolidated.safetensors"

printf 'moshi_paths:\n  config_path: %s/lm128.json\n' "$work" > window-128.yaml
printf 'moshi_paths:\n  config_path: %s/lm512.json\n' "$work" > rope-512.yaml
yarn='rope_scaling:\n  type: yarn\n  factor: 4\n  original_max_position_embeddings: 128\n'
printf "moshi_paths:\n  config_path: %s/lm512.json\n$yarn" "$work" > yarn-512.yaml

# The short fine-tune at the new length, from the trained weights, with and without YaRN.
"$B" synth-data data/ft512 --force --pattern motifs --files 2400 --frames 512 --min-gap 8 --seed 4
for c in rope yarn; do
  { printf 'moshi_paths:\n  config_path: %s/lm512.json\n  moshi_path: %s/%s\n' "$work" "$work" "$weights"
    [ "$c" = yarn ] && printf "$yarn"
    sed -e "s|^run_dir: .*|run_dir: $work/ft-$c|" -e "s|data/train/|data/ft512/|" -e 's|^duration_sec: .*|duration_sec: 40.96|' \
        -e 's|^max_steps: .*|max_steps: 300|' -e 's|^  lr: .*|  lr: 0.0003|' -e '/^init_seed/d' -e '/^moshi_paths/,/config_path/d' train.yaml
  } > "ft-$c.yaml"
  "$B" train --config "ft-$c.yaml" --quiet
done

for set in near far; do
  for c in window-128 rope-512 yarn-512; do
    "$B" score --config "$c.yaml" --weights "$weights" --codes "$set.safetensors" --out "ce-$set-$c.safetensors" >/dev/null
  done
  for c in rope yarn; do
    w="$(ls -d ft-$c/checkpoints/checkpoint_* | tail -1)/consolidated/consolidated.safetensors"
    "$B" score --config "$c-512.yaml" --weights "$w" --codes "$set.safetensors" --out "ce-$set-$c-512+ft.safetensors" >/dev/null
  done
  echo
  echo "## $set set: CE (nats, mean over the scored streams) by frame, and on recall frames"
  "$PY" "$T" table 128 window-128="ce-$set-window-128.safetensors" rope-512="ce-$set-rope-512.safetensors" \
    yarn-512="ce-$set-yarn-512.safetensors" rope-512+ft="ce-$set-rope-512+ft.safetensors" \
    yarn-512+ft="ce-$set-yarn-512+ft.safetensors" --recall "data/$set"
done
