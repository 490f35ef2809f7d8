#pragma once
// Cross-entropy of a codes file per position and predicted stream, exactly as the LM scores it: the
// delays and masks come from the model, targets are the codes themselves (pitfall 10: no hand-made
// shifts). Used by `score`, the demo's loss-by-position and the evaluation suite.
#include <ATen/ATen.h>

#include <functional>
#include <vector>

#include "lm/lm_model.h"

namespace mt::eval {

// -log p(target) per position: logits [B, N, T, V], targets [B, N, T], mask [B, N, T] -> [B, N, T] float32,
// NaN where the mask is false.
at::Tensor masked_cross_entropy(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& mask);

// ce [B, 1 + dep_q, T] (text, then Moshi's audio codebooks; NaN where not scored) of an LM output for codes.
at::Tensor stream_cross_entropy(const lm::LMConfig& cfg, const lm::LMOutput& out, const at::Tensor& codes);

// The same ce [B, 1 + dep_q, T] for sequences of any length: the temporal transformer runs in streaming
// mode from `state` (chunks of state.max_chunk steps, KV caches and TTT states carried), the depformer
// and the cross-entropy per chunk, so no [T, card] logits are ever held (a 24k-frame file would need
// gigabytes). Equal to stream_cross_entropy(cfg, m.forward(codes), codes) from a fresh state.
// after_chunk(end, probes): called after each chunk with the frames consumed so far and, when
// want_probes, that chunk's TTT probes (per-token losses of the chunk, norms after it). It may change
// the state (e.g. reset TTT states for a control run).
at::Tensor streaming_cross_entropy(
    const lm::LMModelImpl& m, const at::Tensor& codes, lm::TransformerState& state, bool want_probes = false,
    const std::function<void(int64_t, const std::vector<lm::LayerProbes>&)>& after_chunk = {});

}  // namespace mt::eval
