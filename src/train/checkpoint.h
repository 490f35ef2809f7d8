#pragma once
// Checkpoints of a training run (checkpoints/checkpoint_NNNNNN/): consolidated/ loads with --model
// (the full weights, or lora.safetensors over the base), training_state.safetensors holds what resumes
// the run bit-identically (optimizer, data position, every stream state, counters), one
// rank_state_NNNNN.safetensors per other data-parallel rank.
#include <string>

#include "lm/lm_model.h"
#include "train/run.h"

namespace mt::train {

// Called by every rank (data parallel: the ranks' own states are gathered on rank 0, which writes).
void save_checkpoint(Run& r, int64_t steps_done);
// Restores the optimizer, this rank's data position and stream states, and the counters.
void restore_checkpoint(Run& r, const std::string& dir);
// The model a run starts from: the checkpoint's exact values when resuming, else the config's base
// weights (TTT / LoRA tensors they lack initialised) or seeded random weights. *initialised: how many
// tensors the base lacked.
lm::LMModel starting_model(const TrainConfig& cfg, const std::string& resume_dir, int64_t* initialised,
                           at::Device device = at::kCPU);

}  // namespace mt::train
