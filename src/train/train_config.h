#pragma once
// `moshi-ttt train --config train.yaml`: moshi-finetune's field names and defaults where they exist,
// the model sections of a model config (preset | lm | moshi_paths, ttt, lora), and our additions.
// Every field is read; unknown or mistyped fields are errors naming them. `--set a.b=v` overrides any
// field before parsing (v is read as YAML: numbers, booleans, lists).
#include <cstdint>
#include <string>
#include <vector>

#include "lm/model_config.h"

namespace mt::train {

struct OptimConfig {
  double lr = 1e-4;
  double weight_decay = 0.1;
  double pct_start = 0.05;
  // PyTorch's fused AdamW kernel (one pass per tensor); false: the single-tensor path, bit for bit
  // torch.optim.AdamW(foreach=False) as moshi-finetune runs it on a CPU.
  bool fused = true;
};

// Data parallel: which per-rank training state is split over the ranks (ZeRO's stages 1 and 2).
enum class Sharding {
  kNone,       // every rank keeps everything (DDP): gradients all-reduced
  kOptimizer,  // AdamW moments and float32 masters sharded (ZeRO-1); gradients all-reduced
  kGradients,  // also gradients: reduce-scattered into each rank's shard, full ones released (ZeRO-2)
};
const char* name(Sharding s);

struct TrainConfig {
  lm::ModelConfigFile model;  // preset | lm | moshi_paths, ttt, lora
  std::string source;         // the YAML file (for messages)
  std::string yaml_text;      // the document after --set overrides (saved as run_dir/config.yaml)
  std::string run_dir;
  bool overwrite_run_dir = false;
  // data
  std::string train_data;  // JSONL index of token shards (see train/data.h)
  std::string eval_data;
  bool shuffle = true;
  // ours: where Mimi tokens of audio datasets are cached ("" = $MOSHI_TTT_CACHE or ~/.cache/moshi-ttt, /tokens)
  std::string token_cache;
  // ours: mono audio-only entries (no alignments): "copy" the audio to the user stream, or "silence"
  std::string user_stream = "copy";
  double duration_sec = 10;
  double frame_rate = 12.5;
  int64_t batch_size = 1;
  int64_t num_microbatches = 1;
  int64_t max_steps = 100;
  uint64_t seed = 0;
  int64_t log_freq = 1;
  int64_t eval_freq = 0;
  bool do_eval = false;
  int64_t eval_batches = 40;  // per evaluation (moshi-finetune: 40 // world_size)
  int64_t ckpt_freq = 0;
  bool do_ckpt = true;
  int64_t num_ckpt_keep = 3;
  bool save_adapters = true;
  OptimConfig optim;
  double max_norm = 1.0;
  double first_codebook_weight_multiplier = 1.0;
  double text_padding_weight = 0.5;
  bool full_finetuning = false;
  bool gradient_checkpointing = true;
  std::string param_dtype = "bfloat16";
  // ours
  double alpha_weight_decay = 0.0;  // weight decay of the gating α group (pitfalls.md row 8: α must not be pulled to 0)
  int64_t max_bad_steps = 10;       // NaN/Inf loss or gradient: skip the step; stop after this many
  std::string device = "cpu";
  // moshi-finetune's wandb section: accepted (its files train unchanged) but not used, with a note.
  struct Wandb {
    std::string project, run_name, key;
    bool offline = false;
  } wandb;
  // One line each, said when the run starts: settings this run accepts but does not use (moshi-finetune's
  // example sets eval_freq with do_eval false), and where a hub repo's files came from.
  std::vector<std::string> notes;
  int threads = 0;
  uint64_t init_seed = 0;  // random base weights when the model has no weights file
  // ours, data parallel (ignored by one process)
  Sharding sharding = Sharding::kNone;
  double bucket_cap_mb = 25;  // gradient bucket size (DDP's bucket_cap_mb)

  int64_t chunk_frames() const;  // duration_sec * frame_rate, rounded up (as moshi-finetune)
  void validate() const;
  // overrides: "a.b=value" strings.
  static TrainConfig load(const std::string& path, const std::vector<std::string>& overrides = {});
};

}  // namespace mt::train
