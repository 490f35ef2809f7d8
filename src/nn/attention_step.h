#pragma once
// The attention of one streaming step with a single query (T == 1) fused into one CPU pass: RoPE on q
// and k, the write into the ring KV cache, the positions and sliding-window mask of every slot, scores,
// softmax and the weighted sum of values.
//
// The general path (AttentionImpl::forward) spends about 50 small tensor ops per layer on this: the
// rotation table, index and mask tensors, scatters, two matmuls. At a step's sizes (a few hundred cached
// keys, 8-32 heads) each op costs more in dispatch than in arithmetic, and a Moshi step runs ~40
// attention calls (temporal layers plus the depformer's per-codebook steps). This pass computes the
// same quantities in the same float32 arithmetic; `FusedStep.*` tests hold it to the general path.
#include <ATen/ATen.h>

#include <optional>

#include "nn/transformer.h"
#include "nn/transformer_config.h"

namespace mt::nn {

struct FusedStepGeometry {
  int64_t heads = 0, head_dim = 0;
  bool rope = false;  // rotate q and k (positional rope / sin_rope)
  double max_period = 10000;
  const RopeScaling* yarn = nullptr;  // may be off
  std::optional<int64_t> context;     // sliding window (steps); none = every cached slot
};

// True when fused_attention_step can take this call: one query step, CPU with AVX2 + FMA, float32 qkv
// and cache, contiguous, no autograd graph wanted, and the fused kernels not switched off (util/fused.h).
bool fused_attention_step_applies(const at::Tensor& qkv, const KVCache* cache);

// qkv: [B, 1, 3 * H * Dh] (the in-projection's output, q | k | v, heads inside each); offsets [B] (each
// slot's absolute position of this step); offset_cpu: the largest offset. Writes the rotated k and v
// into the cache and returns the attention output [B, 1, H * Dh] (heads concatenated, before out_proj).
at::Tensor fused_attention_step(const at::Tensor& qkv, const at::Tensor& offsets, int64_t offset_cpu, KVCache& cache,
                                const FusedStepGeometry& g);

}  // namespace mt::nn
