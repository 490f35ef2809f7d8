#pragma once
// Cross-entropy of a codes file per position and predicted stream, exactly as the LM scores it: the
// delays and masks come from the model, targets are the codes themselves (pitfall 10: no hand-made
// shifts). Used by `score`, the demo's loss-by-position and the evaluation suite.
#include <ATen/ATen.h>

#include "lm/lm_model.h"

namespace mt::eval {

// -log p(target) per position: logits [B, N, T, V], targets [B, N, T], mask [B, N, T] -> [B, N, T] float32,
// NaN where the mask is false.
at::Tensor masked_cross_entropy(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& mask);

// ce [B, 1 + dep_q, T] (text, then Moshi's audio codebooks; NaN where not scored) of an LM output for codes.
at::Tensor stream_cross_entropy(const lm::LMConfig& cfg, const lm::LMOutput& out, const at::Tensor& codes);

}  // namespace mt::eval
