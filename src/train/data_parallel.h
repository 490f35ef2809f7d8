#pragma once
// What data parallelism adds to a training step (train_step's StepHooks): gradients averaged in DDP's
// buckets during the last backward, the logged values averaged, a stop requested on any rank agreed
// by all, and with `sharding: optimizer | gradients` (ZeRO-1 / ZeRO-2) an optimizer that keeps AdamW's
// state for this rank's shard of every bucket only: the global gradient norm from the shards' squares,
// clipping and AdamW on the shards, then the updated shards all-gathered into every rank's parameters.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "dist/grad_buckets.h"
#include "dist/group.h"
#include "train/optim.h"
#include "train/train_config.h"
#include "train/trainer.h"

namespace mt::train {

class DataParallel : public StepHooks {
 public:
  // groups: the optimizer's parameter groups (bucket tags: a bucket never mixes groups, so each shard has
  // one lr and weight decay). stop_flag: this rank's pending stop signal (0 = none).
  DataParallel(dist::Group& g, const TrainConfig& cfg, const std::vector<ParamGroup>& groups, const int* stop_flag);

  bool sharded() const override { return sharding_ != Sharding::kNone; }
  // The optimizer this rank steps: with sharding, AdamW over its shards (same groups and names order);
  // without, over the parameters themselves.
  std::unique_ptr<AdamW> make_optimizer(const AdamWConfig& c);

  void before_last_backward() override { buckets_->arm(); }
  void after_backward(StepResult& s) override;
  double clip(AdamW& opt, double max_norm, std::vector<double>& group_norms) override;
  void after_step(bool applied) override;

  int agreed_stop() const { return agreed_stop_; }  // the signal every rank agreed on this step
  // Sharded optimizers: the shards' float32 masters by name, for the checkpoint (AdamW's own state
  // keeps no master for float32 tensors, and the shards are float32).
  std::map<std::string, at::Tensor> masters() const;
  void load_masters(const std::map<std::string, at::Tensor>& m);
  int64_t bucket_count() const { return static_cast<int64_t>(buckets_->buckets().size()); }

 private:
  dist::Group& group_;
  Sharding sharding_;
  std::vector<ParamGroup> groups_;
  std::unique_ptr<dist::GradBuckets> buckets_;
  std::vector<at::Tensor> shards_;  // per bucket: this rank's float32 slice (the AdamW parameter)
  const int* stop_flag_;
  int agreed_stop_ = 0;
};

}  // namespace mt::train
