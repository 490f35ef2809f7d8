#pragma once
// moshi-finetune's loss (compute_loss_with_mask): text cross-entropy with the padding ids weighted by
// text_padding_weight, audio cross-entropy over Moshi's own dep_q codebooks with the first (semantic)
// one weighted by first_codebook_weight_multiplier; targets where the LM's mask is false weigh 0; each
// part normalised by its own weight sum; total = text + audio. Cross-entropy in float32.
#include <ATen/ATen.h>

#include <vector>

#include "lm/lm_model.h"

namespace mt::train {

struct LossConfig {
  double first_codebook_weight_multiplier = 1.0;
  double text_padding_weight = 0.5;
};

struct LossParts {
  at::Tensor total;        // scalar, differentiable
  at::Tensor text, audio;  // scalars (differentiable)
  // Per stream (text, then audio codebooks): Σ w·CE / Σ w, detached, for logging (NaN if no weight).
  std::vector<double> per_codebook;
  int64_t real_tokens = 0;  // positions with a true mask (text + audio)
};

// codes [B, K, T] as given to LMModel::forward; out its result.
LossParts compute_loss(const lm::LMConfig& cfg, const lm::LMOutput& out, const at::Tensor& codes, const LossConfig& lc,
                       bool per_codebook = true);

}  // namespace mt::train
