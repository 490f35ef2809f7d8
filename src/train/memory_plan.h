#pragma once
// The memory one rank of `moshi-ttt train` needs, before anything is allocated: weights, gradients
// (with the float32 buckets of data parallel), AdamW state (ZeRO-1/2 shards), the TTT states carried
// across chunks, and an estimate of one micro-batch's activations. The trainer prints it before step
// 1; `train --dry-run` prints only the plan, from the config alone, so that a user sees whether
// moshiko-7B full fine-tuning fits 8 × 80 GB, or LoRA + TTT one GPU (shared/spec/distributed.md §5, §7).
//
// Exact: parameter counts and the bytes of weights, gradients, optimizer state and TTT state, as the
// trainer, AdamW (train/optim.h) and dist::GradBuckets allocate them. Estimated: activations, from a
// formula over the model's dimensions calibrated against measured peaks (memory_plan.cpp); the total
// is the expected peak (tests/unit/memory_plan_test.cpp: within 10 % of a measured step of the
// `small` preset). Not counted: the allocator's caching and fragmentation (CUDA reserves more than its
// tensors hold), libraries' workspaces, the data loader.
#include <cstdint>
#include <string>
#include <vector>

#include "lm/lm_model.h"
#include "train/train_config.h"

namespace mt::train {

struct MemoryPlan {
  // What the plan assumes.
  int64_t world_size = 1;
  Sharding sharding = Sharding::kNone;  // kNone whenever world_size is 1 (a single process shards nothing)
  std::string param_dtype = "bfloat16";
  bool gradient_checkpointing = true;
  int64_t batch_size = 1, num_microbatches = 1, chunk_frames = 0;  // per rank
  // Parameters of the whole model (every rank holds all weights).
  int64_t parameters = 0, trainable = 0;
  int64_t ttt_streams = 0;  // TTT states carried per rank: batch_size × num_microbatches (0 without TTT)
  // Bytes per rank.
  int64_t weights = 0;       // every parameter in param_dtype
  int64_t gradients = 0;     // trainable gradients in param_dtype, plus grad_buckets
  int64_t grad_buckets = 0;  // of which: data parallel's float32 buckets (and ZeRO-2's shards)
  int64_t optimizer = 0;     // AdamW exp_avg, exp_avg_sq, float32 masters (of bfloat16 parameters, or shards)
  int64_t ttt_state = 0;     // the TTT fast weights of ttt_streams streams
  // Estimates. microbatch_activations: what one micro-batch's forward + loss + backward holds at its
  // peak. activations: what the step adds at its peak beyond the lines above: with one micro-batch that
  // peak comes before any parameter gradient exists, so only its excess over `gradients` (less the
  // buckets) counts; at least what stays alive beside the gradients late in the backward, and AdamW's
  // temporaries.
  int64_t microbatch_activations = 0;
  int64_t activations = 0;
  // The expected peak of tensor bytes on the rank.
  int64_t total() const { return weights + gradients + optimizer + ttt_state + activations; }
};

// The plan for a model that exists (the trainer's, after it is built): its parameters, which of them
// `trains(cfg, name)` selects, its TTT units; per rank of world_size ranks.
MemoryPlan plan_memory(const lm::LMModelImpl& m, const TrainConfig& cfg, int64_t world_size);

// The same plan without materialising the model (`train --dry-run`): the model's module tree is built
// with storage-less (meta) tensors, so moshiko-7B with LoRA and TTT on every layer plans in well under a
// second and a few hundred MB. Not to be called while other threads create CPU tensors (see the .cpp).
MemoryPlan plan_memory(const TrainConfig& cfg, int64_t world_size);

// One parameter as the plan sees it, in registration order (train::DataParallel hands the trainable ones
// to GradBuckets group by group).
struct PlannedParam {
  std::string name;
  int64_t numel = 0;
  bool trainable = false;
  int64_t group = 0;  // optimizer group: 0 base, 1 TTT weights, 2 gating α (buckets never mix groups)
};
std::vector<PlannedParam> planned_params(const lm::LMModelImpl& m, const TrainConfig& cfg);

// TTT state bytes of one stream (batch slot) of every TTT unit of the temporal transformer, in the
// steady state (after the first forward: hybrid and adapter states materialise lazily).
int64_t ttt_state_bytes_per_stream(const lm::LMModelImpl& m, const std::string& param_dtype);

// The activation estimate of one micro-batch of cfg.batch_size × cfg.chunk_frames() (microbatch_activations).
int64_t activation_bytes(const lm::LMModelImpl& m, const TrainConfig& cfg);

// A table in GB (1e9) and GiB, one line per item and the total, headed by what the plan assumes.
std::string format_plan(const MemoryPlan& p);

}  // namespace mt::train
