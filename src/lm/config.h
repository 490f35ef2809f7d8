#pragma once
// The Moshi LM configuration: the keyword arguments of Kyutai's LMModel (moshi/models/lm.py) with its
// defaults, loadable from Kyutai's config.json or a reference case's config.json.
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "nn/transformer_config.h"

namespace mt::lm {

using nn::RopeScaling;
using nn::TransformerConfig;

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
  // Kyutai's `quantize`: every Linear of the LM holds the q8 format (int8 `weight` + float32
  // `weight_scb`, util/gemv_q8.h); embeddings and norms stay float.
  bool quantize = false;

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

}  // namespace mt::lm
