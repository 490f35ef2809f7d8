#pragma once
// Gradients averaged over the ranks as PyTorch's DDP does it (torch/nn/parallel/distributed.py,
// c10d/reducer.hpp): the trainable parameters go into flat float32 buckets in reverse registration
// order (roughly the order backward produces their gradients), the first bucket small (1 MiB) so
// communication starts early, the rest up to a cap (25 MiB); a hook after each gradient's accumulation
// marks it ready and a full bucket is launched at once, asynchronously, so the exchange overlaps the
// rest of backward. Buckets are launched in index order on every rank (collectives must match). Frozen
// parameters take no part. Sums are in float32 whatever the parameters' dtype.
//
// With micro-batches, only the last backward of a step communicates (DDP's no_sync for the others):
// call arm() before it. Two ways to finish:
//  - kAllReduce: every parameter's .grad becomes the mean over ranks (DDP; ZeRO-1 keeps them so);
//  - kReduceScatter: each bucket is padded to a multiple of the world size and this rank receives only
//    its slice of the mean (ZeRO-2); the parameters' .grad are released once copied into the bucket.
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "dist/group.h"

namespace mt::dist {

enum class GradReduce { kAllReduce, kReduceScatter };

struct BucketOptions {
  int64_t cap_bytes = 25 << 20;       // DDP's bucket_cap_mb default
  int64_t first_cap_bytes = 1 << 20;  // DDP's first bucket
  // A cap of `cap_mb` MiB; the first bucket holds at most 1 MiB of it.
  static BucketOptions from_cap_mb(double cap_mb);
};

// Which parameters share a bucket, from their sizes alone (the memory plan replays it without tensors).
struct BucketLayout {
  std::vector<size_t> params;    // indices into the parameter list
  std::vector<int64_t> offsets;  // each parameter's first element in the flat bucket
  int64_t numel = 0;             // elements of its parameters
  int64_t padded = 0;            // numel rounded up to a multiple of the world size
  int64_t tag = 0;               // the caller's grouping key (buckets never mix keys)
};

// Parameters (numels[i], tags[i], in registration order) into buckets, as described above: reverse
// order, a new bucket when the tag changes or the cap would be passed.
std::vector<BucketLayout> assign_buckets(const std::vector<int64_t>& numels, const std::vector<int64_t>& tags,
                                         int64_t world, const BucketOptions& o);

class GradBuckets {
 public:
  static constexpr size_t kInFlight = 3;  // ZeRO-2: full float32 buckets alive at once, at most

  struct Bucket : BucketLayout {
    at::Tensor flat;      // float32 [padded]: gradients in, means out (kAllReduce: kept; kReduceScatter:
                          // from launch to finish only)
    at::Tensor shard;     // float32 [padded / world]: this rank's slice of the mean (kReduceScatter)
    int64_t pending = 0;  // gradients still awaited in the armed backward
    bool launched = false;
    Pending work;
  };

  // params: the trainable parameters in registration order; tags[i]: a key (e.g. the optimizer group)
  // that a bucket never mixes. Installs a post-accumulation hook on every parameter.
  GradBuckets(Group& g, std::vector<at::Tensor> params, std::vector<int64_t> tags, GradReduce mode,
              BucketOptions o = {});
  ~GradBuckets();
  GradBuckets(const GradBuckets&) = delete;
  GradBuckets& operator=(const GradBuckets&) = delete;

  void arm();     // the next backward is the step's last: launch buckets as they fill
  void finish();  // launch what is left (a parameter without gradient counts as zeros), wait, average

  const std::vector<Bucket>& buckets() const { return buckets_; }
  std::vector<Bucket>& buckets() { return buckets_; }
  const std::vector<at::Tensor>& params() const { return params_; }
  int64_t shard_offset(const Bucket& b) const { return b.padded / group_.size() * group_.rank(); }
  int64_t shard_numel(const Bucket& b) const { return b.padded / group_.size(); }
  // This rank's slice of bucket b's parameters, as float32 [shard_numel] (the ZeRO master copy).
  at::Tensor param_shard(const Bucket& b) const;
  // Writes every rank's slice (`mine`: this rank's, any dtype) back into bucket b's parameters.
  void gather_params(Bucket& b, const at::Tensor& mine);

  void on_ready(size_t param);  // called by the hooks

 private:
  void launch(size_t b);
  Group& group_;
  std::vector<at::Tensor> params_;
  std::vector<size_t> bucket_of_;
  std::vector<Bucket> buckets_;
  GradReduce mode_;
  bool armed_ = false;
  size_t next_ = 0;  // the next bucket to launch (launches go in index order)
};

}  // namespace mt::dist
