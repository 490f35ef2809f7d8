#include "train/data_parallel.h"

#include <ATen/core/grad_mode.h>

#include <cmath>
#include <csignal>

#include "util/error.h"

namespace mt::train {

namespace {

std::string shard_name(size_t b) { return "bucket" + std::to_string(b) + ".shard"; }

}  // namespace

DataParallel::DataParallel(dist::Group& g, const TrainConfig& cfg, const std::vector<ParamGroup>& groups,
                           const int* stop_flag)
    : group_(g), sharding_(cfg.sharding), groups_(groups), stop_flag_(stop_flag) {
  std::vector<at::Tensor> params;
  std::vector<int64_t> tags;
  for (size_t gi = 0; gi < groups.size(); ++gi)
    for (const auto& [name, p] : groups[gi].params) {
      params.push_back(p);
      tags.push_back(static_cast<int64_t>(gi));
    }
  const auto bo = dist::BucketOptions::from_cap_mb(cfg.bucket_cap_mb);
  const auto mode = sharding_ == Sharding::kGradients ? dist::GradReduce::kReduceScatter : dist::GradReduce::kAllReduce;
  buckets_ = std::make_unique<dist::GradBuckets>(g, std::move(params), std::move(tags), mode, bo);
}

std::unique_ptr<AdamW> DataParallel::make_optimizer(const AdamWConfig& c) {
  if (!sharded()) return std::make_unique<AdamW>(groups_, c);
  std::vector<ParamGroup> shard_groups;
  for (const auto& g : groups_) shard_groups.push_back(ParamGroup{g.name, {}, g.max_lr, g.weight_decay});
  auto& bs = buckets_->buckets();
  for (size_t b = 0; b < bs.size(); ++b) {
    shards_.push_back(buckets_->param_shard(bs[b]).set_requires_grad(true));
    shard_groups[static_cast<size_t>(bs[b].tag)].params.emplace_back(shard_name(b), shards_.back());
  }
  return std::make_unique<AdamW>(std::move(shard_groups), c);
}

void DataParallel::after_backward(StepResult& s) {
  buckets_->finish();
  if (sharded()) {  // the shard AdamW reads this rank's slice of the mean gradient
    auto& bs = buckets_->buckets();
    for (size_t b = 0; b < bs.size(); ++b) {
      at::Tensor slice = sharding_ == Sharding::kGradients
                             ? bs[b].shard
                             : bs[b].flat.narrow(0, buckets_->shard_offset(bs[b]), buckets_->shard_numel(bs[b]));
      shards_[b].mutable_grad() = slice;
    }
  }
  // Losses (means over ranks), the token count (a sum) and a stop requested on any rank (which stops all
  // at the same step), in one collective.
  std::vector<double> v{static_cast<double>(s.real_tokens), s.text, s.audio, s.state_change};
  v.insert(v.end(), s.per_codebook.begin(), s.per_codebook.end());
  v.push_back(static_cast<double>(*stop_flag_));
  group_.sum(v);
  agreed_stop_ = v.back() > 0 ? (*stop_flag_ ? *stop_flag_ : SIGTERM) : 0;
  v.pop_back();
  const double w = static_cast<double>(group_.size());
  s.real_tokens = static_cast<int64_t>(v[0]);
  s.text = v[1] / w, s.audio = v[2] / w, s.state_change = v[3] / w;
  for (size_t k = 0; k < s.per_codebook.size(); ++k) s.per_codebook[k] = v[4 + k] / w;
}

// clip_grad_norm_ over the whole model, from shards: every rank sums its shards' squares per group,
// one collective adds them up, and each rank scales its own shards. Padding elements are zeros.
double DataParallel::clip(AdamW& opt, double max_norm, std::vector<double>& group_norms) {
  const auto& gs = opt.groups();
  std::vector<double> sq;  // one host sync per group (not per shard: a 7B has ~1000 buckets)
  for (const auto& g : gs) {
    std::vector<at::Tensor> ps;
    for (const auto& p : g.params) ps.push_back(p.second);
    const double n = grad_norm(ps);
    sq.push_back(n * n);
  }
  group_.sum(sq);
  double total = 0;
  group_norms.clear();
  for (double x : sq) {
    group_norms.push_back(std::sqrt(x));
    total += x;
  }
  total = std::sqrt(total);
  if (max_norm > 0 && std::isfinite(total) && total > max_norm) {
    at::NoGradGuard ng;
    const double coef = max_norm / (total + 1e-6);
    for (const auto& g : gs)
      for (const auto& [name, p] : g.params)
        if (p.grad().defined()) p.grad().mul_(coef);
  }
  return total;
}

void DataParallel::after_step(bool applied) {
  if (!sharded()) return;
  auto& bs = buckets_->buckets();
  if (applied)
    for (size_t b = 0; b < bs.size(); ++b) buckets_->gather_params(bs[b], shards_[b].detach());
  if (sharding_ == Sharding::kOptimizer)  // the all-reduced full gradients are not needed any more
    for (at::Tensor p : buckets_->params()) p.mutable_grad().reset();
}

std::map<std::string, at::Tensor> DataParallel::masters() const {
  std::map<std::string, at::Tensor> m;
  for (size_t b = 0; b < shards_.size(); ++b) m[shard_name(b)] = shards_[b].detach();
  return m;
}

void DataParallel::load_masters(const std::map<std::string, at::Tensor>& m) {
  at::NoGradGuard ng;
  for (size_t b = 0; b < shards_.size(); ++b) {
    auto it = m.find(shard_name(b));
    MT_CHECK(it != m.end(), "checkpoint: no '", shard_name(b), "' (written with another sharding or bucket_cap_mb?)");
    MT_CHECK(it->second.numel() == shards_[b].numel(), "checkpoint: '", shard_name(b), "' has ", it->second.numel(),
             " elements, this run's shard ", shards_[b].numel(), " (another bucket_cap_mb or world size?)");
    shards_[b].detach().copy_(it->second.reshape(shards_[b].sizes()));
  }
}

}  // namespace mt::train
