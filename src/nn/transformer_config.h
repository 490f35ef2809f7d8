#pragma once
// The configuration of a streaming transformer (Kyutai's moshi/modules/transformer.py keyword
// arguments) and its RoPE scaling. Shared by the LM's temporal transformer and depformer and by Mimi.
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace mt::nn {

// YaRN RoPE scaling (Peng et al. 2023, "YaRN: Efficient Context Window Extension of Large Language
// Models", NTK-by-parts interpolation with attention temperature), for the temporal transformer: a model
// trained with `original_context` tokens runs at `factor` times that. A RoPE pair of frequency θ
// (radians per token) turns r = L θ / 2π times over the original context L; with
//   γ(r) = 0 for r < β_slow, 1 for r > β_fast, (r − β_slow) / (β_fast − β_slow) between,
// its frequency becomes θ' = (1 − γ) θ / s + γ θ (slow pairs interpolated, fast ones kept). Queries and
// keys are both scaled by √(1/t) = attention_factor (default 0.1 ln s + 1), so logits by 1/t.
struct RopeScaling {
  std::string type = "none";     // none | yarn
  double factor = 1.0;           // s
  int64_t original_context = 0;  // L (HF: original_max_position_embeddings)
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  std::optional<double> attention_factor;  // √(1/t); default 0.1 ln(s) + 1

  bool on() const { return type == "yarn"; }
  double mscale() const;
  double scaled_frequency(double theta) const;  // θ' of a pair of frequency θ
  // Throws mt::Error naming `where`.<field> for bad values.
  void validate(const std::string& where) const;
  // From {"type", "factor", "original_max_position_embeddings", "beta_fast", "beta_slow",
  // "attention_factor"}; unknown or mistyped fields throw naming them.
  static RopeScaling from_json(const nlohmann::json& j, const std::string& where);
  nlohmann::json to_json() const;
};

struct TransformerConfig {
  int64_t d_model = 0;
  int64_t num_heads = 8;
  int64_t num_layers = 0;
  std::vector<int64_t> dim_feedforward;      // one entry, or one per weight set (weights_per_step)
  std::string norm = "layer_norm";           // layer_norm | layer_norm_f32 | rms_norm | rms_norm_f32
  std::string positional_embedding = "sin";  // sin | rope | sin_rope | none
  double max_period = 10000;
  RopeScaling rope_scaling;
  std::string gating = "none";  // none | silu | gelu | ...
  std::optional<double> layer_scale;
  std::optional<int64_t> context;  // sliding attention window (steps); none = unbounded
  bool causal = true;
  int64_t weights_per_step = 0;  // >0: separate attention/FFN weights per step (depformer)
  std::vector<int64_t> weights_per_step_schedule;
  int64_t num_weight_sets() const;  // how many in_projs / gating modules exist
  int64_t head_dim() const { return d_model / num_heads; }
};

// Hidden size of the gated FFN for a given dim_feedforward (the reference's rule).
int64_t gating_hidden(int64_t dim, int64_t dim_feedforward);

}  // namespace mt::nn
