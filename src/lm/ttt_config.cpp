#include "lm/ttt_config.h"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <map>
#include <set>
#include <sstream>

#include "util/choices.h"
#include "util/error.h"
#include "util/yaml_read.h"

namespace mt::lm {

namespace {
// The strict readers of util/yaml_read.h, with messages "<where>.<key>".
template <class T>
void read(const YAML::Node& n, const char* key, T& out, const std::string& where, std::set<std::string>& seen) {
  yaml::read(n, where + ".", key, out, seen);
}
template <class T>
void read_opt(const YAML::Node& n, const char* key, std::optional<T>& out, const std::string& where,
              std::set<std::string>& seen) {
  seen.insert(key);
  if (!n[key] || n[key].IsNull()) return;
  T v{};
  read(n, key, v, where, seen);
  out = v;
}
void reject_unknown(const YAML::Node& n, const std::set<std::string>& seen, const std::string& where) {
  yaml::reject_unknown(n, seen, where + ".");
}

// The enum fields of the section: their names as the YAML writes them.
const util::Choices<TTTVariant> kVariants{
    {{"hybrid", TTTVariant::kHybrid}, {"adapter", TTTVariant::kAdapter}, {"inplace", TTTVariant::kInPlace}}};
const util::Choices<TTTPlacement> kPlacements{{{"after_attention", TTTPlacement::kAfterAttention},
                                               {"parallel", TTTPlacement::kParallel},
                                               {"before_attention", TTTPlacement::kBeforeAttention}}};
const util::Choices<TTTInner> kInner{{{"linear", TTTInner::kLinear}, {"mlp", TTTInner::kMlp}}};
const util::Choices<InPlaceTarget> kTargets{
    {{"embeddings", InPlaceTarget::kEmbeddings}, {"ffn_input", InPlaceTarget::kFfnInput}}};

// Reads a string field and parses it into its enum once, here.
template <class E>
void read_enum(const YAML::Node& n, const char* key, const util::Choices<E>& c, E& out, const std::string& where,
               std::set<std::string>& seen) {
  std::string text = c.name(out);
  read(n, key, text, where, seen);
  out = c.parse(text, where + "." + key);
}
}  // namespace

const char* name(TTTVariant v) { return kVariants.name(v); }
const char* name(TTTPlacement p) { return kPlacements.name(p); }
const char* name(TTTInner t) { return kInner.name(t); }
const char* name(InPlaceTarget t) { return kTargets.name(t); }

TTTIntegrationConfig TTTIntegrationConfig::from_yaml(const YAML::Node& n, const std::string& w) {
  TTTIntegrationConfig c;
  if (!n || n.IsNull()) return c;
  MT_CHECK(n.IsMap(), w, ": expected a mapping");
  std::set<std::string> s;
  read(n, "enable", c.enable, w, s);
  read_enum(n, "variant", kVariants, c.variant, w, s);
  if (n["layers"] && n["layers"].IsSequence()) {
    std::ostringstream os;
    for (size_t i = 0; i < n["layers"].size(); ++i) os << (i ? "," : "") << n["layers"][i].as<std::string>();
    c.layers = os.str();
    s.insert("layers");
  } else {
    read(n, "layers", c.layers, w, s);
  }
  read_opt(n, "start_layer", c.start_layer, w, s);
  read(n, "layer_frequency", c.layer_frequency, w, s);
  read_enum(n, "type", kInner, c.type, w, s);
  read(n, "mlp_layers", c.mlp_layers, w, s);
  read(n, "num_heads", c.num_heads, w, s);
  read(n, "mini_batch_size", c.mini_batch_size, w, s);
  read(n, "base_lr", c.base_lr, w, s);
  read(n, "initial_gating_alpha", c.initial_gating_alpha, w, s);
  read_opt(n, "attention_context", c.attention_context, w, s);
  read_opt(n, "non_ttt_attention_context", c.non_ttt_attention_context, w, s);
  read(n, "persistent_states", c.persistent_states, w, s);
  read_enum(n, "placement", kPlacements, c.placement, w, s);
  read(n, "scan_checkpoint_group_size", c.scan_checkpoint_group_size, w, s);
  read(n, "use_gate", c.use_gate, w, s);
  read(n, "share_qk", c.share_qk, w, s);
  read(n, "conv_kernel", c.conv_kernel, w, s);
  read(n, "adapter_rank", c.adapter_rank, w, s);
  read(n, "adapter_scale", c.adapter_scale, w, s);
  read(n, "adapter_targets", c.adapter_targets, w, s);
  read(n, "inplace_chunk_size", c.inplace_chunk_size, w, s);
  read(n, "inplace_lr", c.inplace_lr, w, s);
  read(n, "inplace_conv_kernel", c.inplace_conv_kernel, w, s);
  read(n, "inplace_lookahead", c.inplace_lookahead, w, s);
  read_enum(n, "inplace_target", kTargets, c.inplace_target, w, s);
  read(n, "inplace_use_proj", c.inplace_use_proj, w, s);
  read(n, "inplace_delta_clip_fro_norm", c.inplace_delta_clip_fro_norm, w, s);
  read(n, "weight_lr_multiplier", c.weight_lr_multiplier, w, s);
  read(n, "alpha_lr_multiplier", c.alpha_lr_multiplier, w, s);
  reject_unknown(n, s, w);
  for (const auto& kv : n) c.given.insert(kv.first.as<std::string>());
  return c;
}

namespace {
// Parses "K" of a "first:K" / "last:K" preset.
int64_t preset_count(const std::string& layers, size_t colon, int64_t num_layers) {
  const std::string k = layers.substr(colon + 1);
  int64_t v = 0;
  size_t used = 0;
  try {
    v = std::stoll(k, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  MT_CHECK(used == k.size() && !k.empty(), "ttt.layers: '", layers, "': expected a layer count after ':'");
  MT_CHECK(v >= 1 && v <= num_layers, "ttt.layers: '", layers, "': the count must be in [1, ", num_layers, "]");
  return v;
}
}  // namespace

std::vector<int64_t> TTTIntegrationConfig::layer_indices(int64_t num_layers) const {
  std::vector<int64_t> out;
  MT_CHECK(layers.empty() || !start_layer, "ttt.layers and ttt.start_layer are both set: pick one");
  if (layers == "all") {
    for (int64_t l = 0; l < num_layers; ++l) out.push_back(l);
  } else if (layers == "middle") {
    for (int64_t l = num_layers / 3; l < (2 * num_layers) / 3; ++l) out.push_back(l);
    if (out.empty()) out.push_back(num_layers / 2);  // fewer than 3 layers: the centre one
  } else if (layers.rfind("first:", 0) == 0) {
    for (int64_t l = 0; l < preset_count(layers, 5, num_layers); ++l) out.push_back(l);
  } else if (layers.rfind("last:", 0) == 0) {
    const int64_t k = preset_count(layers, 4, num_layers);
    for (int64_t l = num_layers - k; l < num_layers; ++l) out.push_back(l);
  } else if (!layers.empty()) {
    std::stringstream ss(layers);
    std::string tok;
    while (std::getline(ss, tok, ',')) {
      size_t a = tok.find_first_not_of(" \t"), b = tok.find_last_not_of(" \t");
      MT_CHECK(a != std::string::npos, "ttt.layers: empty entry in '", layers, "'");
      tok = tok.substr(a, b - a + 1);
      int64_t v = 0;
      try {
        size_t used = 0;
        v = std::stoll(tok, &used);
        MT_CHECK(used == tok.size(), "ttt.layers: '", tok, "' is not a layer index");
      } catch (const Error&) {
        throw;
      } catch (const std::exception&) {
        fail("ttt.layers: '", tok, "' is not a layer index");
      }
      if (v < 0) v += num_layers;  // -1 is the last layer
      MT_CHECK(v >= 0 && v < num_layers, "ttt.layers: layer ", tok, " is out of range (the model has ", num_layers,
               " layers)");
      out.push_back(v);
    }
  } else if (start_layer) {
    MT_CHECK(*start_layer >= 0 && *start_layer < num_layers, "ttt.start_layer: ", *start_layer,
             " is out of range (the model has ", num_layers, " layers)");
    MT_CHECK(layer_frequency >= 1, "ttt.layer_frequency must be >= 1, got ", layer_frequency);
    for (int64_t l = *start_layer; l < num_layers; l += layer_frequency) out.push_back(l);
  }
  std::set<int64_t> uniq(out.begin(), out.end());
  MT_CHECK(uniq.size() == out.size(), "ttt.layers: '", layers, "' names a layer twice");
  return std::vector<int64_t>(uniq.begin(), uniq.end());
}

bool TTTIntegrationConfig::is_ttt_layer(int64_t layer, int64_t num_layers) const {
  if (!enable) return false;
  for (auto l : layer_indices(num_layers))
    if (l == layer) return true;
  return false;
}

void TTTIntegrationConfig::validate(int64_t num_layers) const {
  if (!enable) return;
  MT_CHECK(mlp_layers >= 2 && mlp_layers <= 64, "ttt.mlp_layers must be in [2, 64], got ", mlp_layers);
  MT_CHECK(mlp_layers == 2 || type == TTTInner::kMlp, "ttt.mlp_layers: ", mlp_layers, " is set but ttt.type is '",
           name(type), "' (the linear inner model has one layer)");
  MT_CHECK(!layer_indices(num_layers).empty(), "ttt.layers / ttt.start_layer: no layer chosen for TTT");
  MT_CHECK(mini_batch_size >= 1, "ttt.mini_batch_size must be >= 1, got ", mini_batch_size);
  MT_CHECK(num_heads >= 0, "ttt.num_heads must be >= 0");
  MT_CHECK(base_lr >= 0, "ttt.base_lr must be >= 0");
  if (attention_context) MT_CHECK(*attention_context >= 1, "ttt.attention_context must be >= 1");
  if (non_ttt_attention_context)
    MT_CHECK(*non_ttt_attention_context >= 1, "ttt.non_ttt_attention_context must be >= 1");
  MT_CHECK(scan_checkpoint_group_size >= 0, "ttt.scan_checkpoint_group_size must be >= 0");
  MT_CHECK(adapter_rank >= 1, "ttt.adapter_rank must be >= 1");
  MT_CHECK(inplace_chunk_size >= 1, "ttt.inplace_chunk_size must be >= 1");
  MT_CHECK(inplace_conv_kernel >= 1, "ttt.inplace_conv_kernel must be >= 1");
  MT_CHECK(inplace_lookahead >= 0 && inplace_lookahead < inplace_conv_kernel,
           "ttt.inplace_lookahead must be in [0, inplace_conv_kernel)");
  MT_CHECK(weight_lr_multiplier > 0 && alpha_lr_multiplier > 0, "ttt.*_lr_multiplier must be > 0");
  MT_CHECK(std::isfinite(inplace_delta_clip_fro_norm) && inplace_delta_clip_fro_norm >= 0,
           "ttt.inplace_delta_clip_fro_norm must be >= 0 (0: off), got ", inplace_delta_clip_fro_norm);
  check_all_given_are_read();
}

void TTTIntegrationConfig::check_all_given_are_read() const {
  // Who reads each field, by variant (h: hybrid, a: adapter, i: inplace). Fields every variant reads
  // (enable, variant, layers, persistent_states, attention contexts, weight_lr_multiplier) are absent.
  static const std::map<std::string, std::string> readers = {{"type", "ha"},
                                                             {"mlp_layers", "ha"},
                                                             {"num_heads", "h"},
                                                             {"mini_batch_size", "ha"},
                                                             {"base_lr", "ha"},
                                                             {"initial_gating_alpha", "h"},
                                                             {"alpha_lr_multiplier", "h"},
                                                             {"placement", "h"},
                                                             {"scan_checkpoint_group_size", "ha"},
                                                             {"use_gate", "ha"},
                                                             {"share_qk", "ha"},
                                                             {"conv_kernel", "ha"},
                                                             {"adapter_rank", "a"},
                                                             {"adapter_scale", "a"},
                                                             {"adapter_targets", "a"},
                                                             {"inplace_chunk_size", "i"},
                                                             {"inplace_lr", "i"},
                                                             {"inplace_conv_kernel", "i"},
                                                             {"inplace_lookahead", "i"},
                                                             {"inplace_target", "i"},
                                                             {"inplace_use_proj", "i"},
                                                             {"inplace_delta_clip_fro_norm", "i"}};
  const char v = name(variant)[0];
  for (const auto& key : given) {
    auto it = readers.find(key);
    if (it != readers.end())
      MT_CHECK(it->second.find(v) != std::string::npos, "ttt.", key, " is set, but the ", name(variant),
               " variant never reads it: remove it, or choose a variant that uses it");
  }
  if (given.count("conv_kernel")) MT_CHECK(share_qk, "ttt.conv_kernel is set, but only share_qk: true reads it");
  if (given.count("layer_frequency"))
    MT_CHECK(start_layer.has_value(), "ttt.layer_frequency is set, but only start_layer reads it");
}

LoRAConfig LoRAConfig::from_yaml(const YAML::Node& n, const std::string& w) {
  LoRAConfig c;
  if (!n || n.IsNull()) return c;
  MT_CHECK(n.IsMap(), w, ": expected a mapping");
  std::set<std::string> s;
  read(n, "enable", c.enable, w, s);
  read(n, "rank", c.rank, w, s);
  read(n, "scaling", c.scaling, w, s);
  read(n, "ft_embed", c.ft_embed, w, s);
  read(n, "targets", c.targets, w, s);
  reject_unknown(n, s, w);
  MT_CHECK(c.rank >= 1, w, ".rank must be >= 1, got ", c.rank);
  return c;
}

}  // namespace mt::lm
