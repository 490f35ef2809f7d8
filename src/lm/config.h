#pragma once
// The Moshi LM configuration: the keyword arguments of Kyutai's LMModel (moshi/models/lm.py) with its
// defaults, loadable from Kyutai's config.json or a reference case's config.json.
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace mt::lm {

// YaRN RoPE scaling (Peng et al. 2023, "YaRN: Efficient Context Window Extension of Large Language
// Models", NTK-by-parts interpolation with attention temperature), for the temporal transformer: a model
// trained with `original_context` tokens runs at `factor` times that. A RoPE pair of frequency θ
// (radians per token) turns r = L θ / 2π times over the original context L; with
//   γ(r) = 0 for r < β_slow, 1 for r > β_fast, (r − β_slow) / (β_fast − β_slow) between,
// its frequency becomes θ' = (1 − γ) θ / s + γ θ (slow pairs interpolated, fast ones kept). Queries and
// keys are both scaled by √(1/t) = attention_factor (default 0.1 ln s + 1), so logits by 1/t.
struct RopeScaling {
  std::string type = "none";               // none | yarn
  double factor = 1.0;                     // s
  int64_t original_context = 0;            // L (HF: original_max_position_embeddings)
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
  std::vector<int64_t> dim_feedforward;  // one entry, or one per weight set (weights_per_step)
  std::string norm = "layer_norm";       // layer_norm | layer_norm_f32 | rms_norm | rms_norm_f32
  std::string positional_embedding = "sin";  // sin | rope | sin_rope | none
  double max_period = 10000;
  RopeScaling rope_scaling;
  std::string gating = "none";           // none | silu | gelu | ...
  std::optional<double> layer_scale;
  std::optional<int64_t> context;        // sliding attention window (steps); none = unbounded
  bool causal = true;
  int64_t weights_per_step = 0;          // >0: separate attention/FFN weights per step (depformer)
  std::vector<int64_t> weights_per_step_schedule;
  int64_t num_weight_sets() const;       // how many in_projs / gating modules exist
  int64_t head_dim() const { return d_model / num_heads; }
};

struct LMConfig {
  // Streams.
  std::vector<int64_t> delays{0};
  int64_t n_q = 8;
  int64_t dep_q = 8;
  int64_t card = 1024;
  int64_t text_card = 32000;
  std::optional<int64_t> text_card_out;
  // Temporal transformer.
  int64_t dim = 128;
  int64_t num_heads = 8;
  int64_t num_layers = 0;  // required
  double hidden_scale = 4;
  std::string norm = "layer_norm";
  bool norm_emb = false;
  bool bias_proj = false;
  std::string positional_embedding = "sin";
  double max_period = 10000;
  RopeScaling rope_scaling;  // temporal transformer only (ours; Kyutai's config has none)
  std::string gating = "none";
  std::optional<double> layer_scale;
  std::optional<int64_t> context;
  bool causal = true;
  // Depformer.
  int64_t depformer_dim = 256;
  std::vector<int64_t> depformer_dim_feedforward;  // empty: int(hidden_scale * depformer_dim)
  bool depformer_multi_linear = false;
  bool depformer_weights_per_step = false;
  std::vector<int64_t> depformer_weights_per_step_schedule;
  std::optional<int64_t> depformer_low_rank_embeddings;
  std::string depformer_pos_emb = "sin";
  std::optional<std::string> depformer_norm;  // final norm per codebook (none: identity)
  std::optional<int64_t> depformer_num_heads;
  std::optional<int64_t> depformer_num_layers;
  std::optional<std::string> depformer_gating;
  std::optional<double> depformer_max_period;
  std::optional<double> depformer_layer_scale;
  // Special text ids.
  std::optional<int64_t> existing_text_padding_id = 3;
  int64_t existing_text_end_padding_id = 0;

  int64_t num_codebooks() const { return n_q + 1; }
  int64_t audio_offset() const { return 1; }
  int64_t max_delay() const;
  int64_t text_out_card() const { return text_card_out.value_or(text_card); }
  int64_t initial_text_token() const { return text_card; }
  int64_t initial_audio_token() const { return card; }
  static constexpr int64_t kZeroToken = -1;
  static constexpr int64_t kUngenerated = -2;

  TransformerConfig transformer() const;  // the temporal transformer
  TransformerConfig depformer() const;    // the depth transformer (context forced to none)
  int64_t num_depformer_in() const;       // number of depformer_in linears

  // Throws mt::Error naming the bad field.
  void validate() const;

  static LMConfig from_json(const nlohmann::json& j, const std::string& source = "config");
  static LMConfig from_file(const std::string& path);
  nlohmann::json to_json() const;

  // Presets.
  static LMConfig moshiko_7b();
  static LMConfig tiny();   // tiny random model for demos and tests
  static LMConfig small();  // the benchmark model: dim 512, 8 layers, 17 streams
};

// Hidden size of the gated FFN for a given dim_feedforward (the reference's rule).
int64_t gating_hidden(int64_t dim, int64_t dim_feedforward);

}  // namespace mt::lm
