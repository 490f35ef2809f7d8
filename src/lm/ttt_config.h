#pragma once
// How TTT is put into a Moshi LM (the `ttt:` section of a YAML config) and LoRA adapters (`lora:`,
// moshi-finetune's fields). Every field is read; unknown or mistyped fields are errors naming them.
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace YAML {
class Node;
}

namespace mt::lm {

// How TTT enters a layer (README, "TTT comes three ways").
enum class TTTVariant { kHybrid, kAdapter, kInPlace };
// Where the hybrid block reads and adds (measured in shared/spec/demo.md's recall task, see README):
//   after_attention  h = x + attn(x); h += g * TTT(norm(h))        (the reference design)
//   parallel         h = x + attn(x) + g * TTT(norm(x))
//   before_attention h = x + g * TTT(norm(x)); h += attn(h)
enum class TTTPlacement { kAfterAttention, kParallel, kBeforeAttention };
// The inner model: TTT-Linear, or TTT-MLP of mlp_layers layers.
enum class TTTInner { kLinear, kMlp };
// In-Place TTT's target source: the summed input embeddings, or the FFN's own input.
enum class InPlaceTarget { kEmbeddings, kFfnInput };

const char* name(TTTVariant v);
const char* name(TTTPlacement p);
const char* name(TTTInner t);
const char* name(InPlaceTarget t);

struct TTTIntegrationConfig {
  bool enable = false;
  TTTVariant variant = TTTVariant::kHybrid;
  // Which temporal-transformer layers: an explicit list ("25,26,27"), or every layer_frequency-th
  // layer from start_layer.
  std::string layers;
  std::optional<int64_t> start_layer;
  int64_t layer_frequency = 1;
  TTTInner type = TTTInner::kLinear;
  int64_t mlp_layers = 2;  // layers of the TTT-MLP inner model (2: the reference TTT-MLP)
  int64_t num_heads = 0;   // TTT heads (0: the model's heads)
  int64_t mini_batch_size = 16;
  double base_lr = 1.0;
  double initial_gating_alpha = 0.1;
  std::optional<int64_t> attention_context;          // window of the TTT layers' attention
  std::optional<int64_t> non_ttt_attention_context;  // window of the other layers
  bool persistent_states = true;
  TTTPlacement placement = TTTPlacement::kAfterAttention;  // hybrid only
  int64_t scan_checkpoint_group_size = 0;
  bool use_gate = false;
  bool share_qk = false;
  int64_t conv_kernel = 4;
  // Adapter variant: y = W x + scale * A(x), A a TTT-Linear inner model of width `adapter_rank`.
  int64_t adapter_rank = 8;
  double adapter_scale = 1.0;
  std::vector<std::string> adapter_targets{"self_attn.in_proj", "self_attn.out_proj"};
  // In-Place variant.
  int64_t inplace_chunk_size = 256;
  double inplace_lr = 1e-3;
  int64_t inplace_conv_kernel = 5;
  int64_t inplace_lookahead = 2;
  InPlaceTarget inplace_target = InPlaceTarget::kEmbeddings;
  bool inplace_use_proj = true;
  // Per-chunk clip of the In-Place update lr·vᵀh to this Frobenius norm (0: off). The exploration's
  // `delta_clip_fro_norm`, which there was parsed and never forwarded (pitfalls.md row 9: a setting
  // parsed but never used).
  double inplace_delta_clip_fro_norm = 0;
  // Optimiser multipliers (used by training).
  double weight_lr_multiplier = 1.0;
  double alpha_lr_multiplier = 1.0;

  // Keys written in the YAML section (from_yaml). validate() refuses any that the chosen variant and
  // inner model never read (pitfalls.md row 9: a setting parsed but never used would silently do nothing).
  std::set<std::string> given;

  // Presets for `layers`: "all", "middle" (the middle third [n/3, 2n/3), at least the centre layer),
  // "first:K", "last:K", or an
  // explicit list ("25,26,27"; negative indices count from the end).
  // The chosen layer indices for a transformer of num_layers layers; throws naming the field.
  std::vector<int64_t> layer_indices(int64_t num_layers) const;
  bool is_ttt_layer(int64_t layer, int64_t num_layers) const;
  void validate(int64_t num_layers) const;
  void check_all_given_are_read() const;
  static TTTIntegrationConfig from_yaml(const YAML::Node& node, const std::string& where = "ttt");
};

struct LoRAConfig {
  bool enable = false;
  int64_t rank = 64;
  double scaling = 2.0;
  bool ft_embed = false;
  std::vector<std::string> targets;  // empty: every Linear of the transformers (as moshi-finetune)
  static LoRAConfig from_yaml(const YAML::Node& node, const std::string& where = "lora");
};

}  // namespace mt::lm
