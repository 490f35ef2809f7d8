#pragma once
// What one `train` run holds while it goes (model, optimizer, data position, stream states, the
// metrics file), shared by the loop (trainer.cpp) and its checkpoints (checkpoint.cpp).
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "dist/group.h"
#include "lm/lm_model.h"
#include "train/data.h"
#include "train/data_parallel.h"
#include "train/optim.h"
#include "train/train_config.h"
#include "train/trainer.h"

namespace mt::train {

struct Run {
  Run(const TrainConfig& c, const TrainOptions& o) : cfg(c), opt(o) {}
  const TrainConfig& cfg;
  const TrainOptions& opt;
  lm::LMModel model{nullptr};
  at::Device dev{at::kCPU};
  std::vector<ParamGroup> groups;
  std::vector<OneCycle> sched;
  std::unique_ptr<AdamW> optim;
  std::unique_ptr<TokenLoader> loader;
  std::vector<std::vector<nn::LayerState>> states;  // per micro-batch: every layer's stream states
  std::vector<at::Tensor> trainable;
  int64_t start_step = 0, bad_steps = 0;
  int stop_signal = 0;  // data parallel: this rank's pending SIGINT / SIGTERM, shared with the others each step
  std::ofstream metrics;
  std::ofstream ft_train, ft_eval;     // moshi-finetune's metrics.train.jsonl / metrics.eval.jsonl
  int64_t resident_bytes = 0;          // weights, gradients, optimizer and TTT state (the memory plan's)
  std::unique_ptr<dist::Group> group;  // data parallel (world_size > 1)
  std::unique_ptr<DataParallel> dp;
  std::map<std::string, std::string> token_indexes;  // "train" / "eval": made once (see shared_token_index)
  bool leader() const { return opt.dist.rank == 0; }
  void say(const std::string& s) const {
    if (leader() && !opt.quiet) std::fprintf(stderr, "%s\n", s.c_str());
  }
};

}  // namespace mt::train
