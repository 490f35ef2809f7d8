#include "dist/grad_buckets.h"

#include <ATen/core/grad_mode.h>

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <algorithm>

#include "util/error.h"

namespace mt::dist {

namespace {

// The hook AccumulateGrad runs once a parameter's gradient of this backward is in .grad.
struct ReadyHook : torch::autograd::PostAccumulateGradHook {
  ReadyHook(GradBuckets* o, size_t i) : owner(o), index(i) {}
  void operator()(const torch::autograd::Variable&) override { owner->on_ready(index); }
  GradBuckets* owner;
  size_t index;
};

}  // namespace

BucketOptions BucketOptions::from_cap_mb(double cap_mb) {
  BucketOptions o;
  o.cap_bytes = static_cast<int64_t>(cap_mb * 1024 * 1024);
  o.first_cap_bytes = std::min<int64_t>(o.cap_bytes, 1 << 20);
  return o;
}

std::vector<BucketLayout> assign_buckets(const std::vector<int64_t>& numels, const std::vector<int64_t>& tags,
                                         int64_t world, const BucketOptions& o) {
  MT_CHECK(tags.size() == numels.size(), "GradBuckets: ", tags.size(), " tags for ", numels.size(), " parameters");
  MT_CHECK(o.cap_bytes >= 4 && o.first_cap_bytes >= 4, "data parallel: bucket caps must be >= 4 bytes, got ",
           o.cap_bytes, " and ", o.first_cap_bytes);
  std::vector<BucketLayout> out;
  // Reverse registration order: the last layers' gradients arrive first in backward.
  for (size_t k = numels.size(); k-- > 0;) {
    const int64_t cap = out.size() <= 1 ? o.first_cap_bytes : o.cap_bytes;
    const bool fresh =
        out.empty() || out.back().tag != tags[k] || (out.back().numel > 0 && (out.back().numel + numels[k]) * 4 > cap);
    if (fresh) {
      out.emplace_back();
      out.back().tag = tags[k];
    }
    BucketLayout& b = out.back();
    b.params.push_back(k);
    b.offsets.push_back(b.numel);
    b.numel += numels[k];
  }
  for (BucketLayout& b : out) b.padded = (b.numel + world - 1) / world * world;
  return out;
}

GradBuckets::GradBuckets(Group& g, std::vector<at::Tensor> params, std::vector<int64_t> tags, GradReduce mode,
                         BucketOptions o)
    : group_(g), params_(std::move(params)), bucket_of_(params_.size()), mode_(mode) {
  std::vector<int64_t> numels;
  for (size_t k = 0; k < params_.size(); ++k) {
    MT_CHECK(params_[k].requires_grad(), "GradBuckets: parameter ", k, " does not require grad");
    numels.push_back(params_[k].numel());
  }
  const int64_t w = g.size();
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(g.device());
  for (BucketLayout& l : assign_buckets(numels, tags, w, o)) {
    Bucket b;
    static_cast<BucketLayout&>(b) = std::move(l);
    for (size_t k : b.params) bucket_of_[k] = buckets_.size();
    // ZeRO-2 keeps only the shards: a bucket's full float32 copy lives from its launch to its wait.
    if (mode_ == GradReduce::kReduceScatter)
      b.shard = at::zeros({b.padded / w}, f32);
    else
      b.flat = at::zeros({b.padded}, f32);
    buckets_.push_back(std::move(b));
  }
  for (size_t k = 0; k < params_.size(); ++k)
    torch::autograd::impl::set_post_acc_grad_hooks(params_[k], std::make_unique<ReadyHook>(this, k));
}

GradBuckets::~GradBuckets() {
  for (auto& p : params_) torch::autograd::impl::post_acc_grad_hooks(p).reset();
}

void GradBuckets::arm() {
  armed_ = true;
  next_ = 0;
  for (Bucket& b : buckets_) {
    b.pending = static_cast<int64_t>(b.params.size());
    b.launched = false;
  }
}

void GradBuckets::on_ready(size_t k) {
  if (!armed_) return;  // an earlier micro-batch: gradients only accumulate
  Bucket& b = buckets_[bucket_of_[k]];
  --b.pending;
  while (next_ < buckets_.size() && buckets_[next_].pending == 0) launch(next_++);
}

void GradBuckets::launch(size_t bi) {
  Bucket& b = buckets_[bi];
  at::NoGradGuard ng;
  if (mode_ == GradReduce::kReduceScatter && bi >= kInFlight) {
    // ZeRO-2 holds at most kInFlight full buckets: the oldest one's exchange must be done first (the
    // collectives run in launch order anyway, so this rarely waits).
    Bucket& old = buckets_[bi - kInFlight];
    old.work.wait();
    old.flat.reset();
  }
  if (!b.flat.defined()) {  // every parameter's range is written below; only the padding needs zeros
    b.flat = at::empty({b.padded}, b.shard.options());
    b.flat.narrow(0, b.numel, b.padded - b.numel).zero_();
  }
  for (size_t j = 0; j < b.params.size(); ++j) {
    at::Tensor& p = params_[b.params[j]];
    at::Tensor dst = b.flat.narrow(0, b.offsets[j], p.numel());
    if (p.grad().defined())
      dst.copy_(p.grad().reshape({-1}));
    else
      dst.zero_();
    if (mode_ == GradReduce::kReduceScatter) p.mutable_grad().reset();  // ZeRO-2: the bucket holds it now
  }
  b.launched = true;
  b.work = mode_ == GradReduce::kAllReduce ? group_.all_reduce(b.flat) : group_.reduce_scatter(b.shard, b.flat);
}

void GradBuckets::finish() {
  if (!armed_) arm();
  while (next_ < buckets_.size()) launch(next_++);  // parameters that got no gradient this step
  armed_ = false;
  at::NoGradGuard ng;
  const double inv = 1.0 / static_cast<double>(group_.size());
  for (Bucket& b : buckets_) {
    b.work.wait();
    if (mode_ == GradReduce::kReduceScatter) {
      b.shard.mul_(inv);
      b.flat.reset();
      continue;
    }
    b.flat.mul_(inv);
    for (size_t j = 0; j < b.params.size(); ++j) {
      at::Tensor& p = params_[b.params[j]];
      const at::Tensor mean = b.flat.narrow(0, b.offsets[j], p.numel()).view(p.sizes());
      if (p.grad().defined())
        p.mutable_grad().copy_(mean);
      else
        p.mutable_grad() = mean.to(p.scalar_type()).clone();
    }
  }
}

at::Tensor GradBuckets::param_shard(const Bucket& b) const {
  at::NoGradGuard ng;
  at::Tensor flat = at::zeros({b.padded}, at::TensorOptions().dtype(at::kFloat).device(group_.device()));
  for (size_t j = 0; j < b.params.size(); ++j)
    flat.narrow(0, b.offsets[j], params_[b.params[j]].numel()).copy_(params_[b.params[j]].detach().reshape({-1}));
  return flat.narrow(0, shard_offset(b), shard_numel(b)).clone();
}

void GradBuckets::gather_params(Bucket& b, const at::Tensor& mine) {
  at::NoGradGuard ng;
  MT_CHECK(mine.numel() == shard_numel(b), "data parallel: a shard of ", mine.numel(),
           " elements for a bucket slice of ", shard_numel(b));
  const at::ScalarType dt = params_[b.params[0]].scalar_type();
  at::Tensor local = mine.to(dt).contiguous();
  at::Tensor full = at::empty({b.padded}, local.options());
  group_.all_gather(full, local).wait();
  for (size_t j = 0; j < b.params.size(); ++j) {
    at::Tensor& p = params_[b.params[j]];
    p.detach().copy_(full.narrow(0, b.offsets[j], p.numel()).view(p.sizes()));
  }
}

}  // namespace mt::dist
