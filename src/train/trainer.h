#pragma once
// The training loop of `moshi-ttt train`: moshi-finetune's step (loss, micro-batches, clipping, AdamW,
// OneCycle) over parameter groups (base / TTT weights / gating α), TTT states carried across the
// consecutive chunks of each file, checkpoints that resume bit-identically, metrics and progress.
#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <vector>

#include "dist/launch.h"
#include "lm/lm_model.h"
#include "train/loss.h"
#include "train/optim.h"
#include "train/run_folder.h"
#include "train/train_config.h"

namespace mt::train {

struct TrainOptions {
  bool resume = false;        // continue from the newest checkpoint in run_dir (or resume_from)
  std::string resume_from;    // a checkpoint folder
  int64_t stop_at_step = -1;  // checkpoint and stop after this many steps (time-boxed jobs, tests)
  bool quiet = false;         // no progress output
  dist::Launch dist;          // data parallel: this process's rank (run_training joins the others)
};

struct TrainSummary {
  int64_t steps_done = 0;
  double last_loss = 0;
  double last_eval_loss = -1;
  double tokens_per_s = 0;
  int64_t skipped_steps = 0;
  int stopped_by_signal = 0;  // SIGINT / SIGTERM: stopped early after writing a checkpoint
  std::string run_dir;
  // Per TTT layer of the temporal transformer: (layer index, TTT updates over the run, all slots).
  std::vector<std::pair<int64_t, int64_t>> ttt_updates;
};

TrainSummary run_training(const TrainConfig& cfg, const TrainOptions& opt);

struct StepResult {
  std::vector<double> text_loss, audio_loss;  // per micro-batch
  std::vector<double> per_codebook;           // text then audio codebooks, mean over micro-batches
  double loss = 0, text = 0, audio = 0;       // means over micro-batches
  double grad_norm = 0;                       // total 2-norm before clipping
  std::vector<double> group_grad_norm;        // per optimizer group, before clipping
  std::vector<double> lr;                     // per group, the lr this step used
  double beta1 = 0;
  int64_t real_tokens = 0;
  double state_change = NAN;         // mean ‖W − W0‖ of the TTT units (micro-batch 0, with probes)
  std::vector<int64_t> ttt_updates;  // per transformer layer: TTT updates this step (all slots,
                                     // all micro-batches); empty without TTT
  bool applied = true;               // false: non-finite loss or gradient, the step was skipped
};

// Whether a run trains parameter `name`: everything (full fine-tuning), or the LoRA and TTT tensors
// and, with LoRA's ft_embed, every tensor whose name holds "emb" (as moshi-finetune selects them).
bool trains(bool full_finetuning, const lm::LoRAConfig& lora, const std::string& name);
bool trains(const TrainConfig& cfg, const std::string& name);

// Resets, in every layer's TTT state, each batch slot whose flag is set (reset [B] bool: the slot
// starts a new file with this chunk); the other slots carry on.
void apply_resets(std::vector<nn::LayerState>& states, const at::Tensor& reset);

// What a caller adds to train_step (data parallelism, tests); every member has a do-nothing default.
struct StepHooks {
  virtual ~StepHooks() = default;
  virtual void before_last_backward() {}          // the step's last micro-batch is about to backpropagate
  virtual void after_backward(StepResult&) {}     // every gradient of the step is in
  virtual bool sharded() const { return false; }  // the optimizer holds shards: norms and clipping by clip()
  virtual double clip(AdamW&, double max_norm, std::vector<double>& group_norms) { return 0; }
  virtual void after_step(bool applied) {}  // after AdamW (or after a skipped step), before zero_grad
};

// One optimizer step as moshi-finetune takes it, shared by `train` and check-reference: the
// schedule's lr / beta1 for `step` → per micro-batch forward, loss, backward of loss / M (TTT states
// detached, slots reset where micro_resets says) → clip_grad_norm over the optimizer's parameters → AdamW step (skipped
// when the loss or the norm is not finite) → zero_grad, with `hooks` called where StepHooks says.
StepResult train_step(const lm::LMModelImpl& m, AdamW& opt, const std::vector<OneCycle>& sched, int64_t step,
                      const std::vector<at::Tensor>& micro_codes, std::vector<std::vector<nn::LayerState>>* states,
                      const std::vector<at::Tensor>& micro_resets, const LossConfig& lc, double max_norm,
                      bool want_probes, StepHooks* hooks = nullptr);

}  // namespace mt::train
