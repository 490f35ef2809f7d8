#include "lm/config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "util/error.h"

namespace mt::lm {

using nlohmann::json;

int64_t LMConfig::max_delay() const { return delays.empty() ? 0 : *std::max_element(delays.begin(), delays.end()); }

TransformerConfig LMConfig::transformer() const {
  TransformerConfig t;
  t.d_model = dim;
  t.num_heads = num_heads;
  t.num_layers = num_layers;
  t.dim_feedforward = {static_cast<int64_t>(hidden_scale * static_cast<double>(dim))};
  t.norm = norm;
  t.positional_embedding = positional_embedding;
  t.max_period = max_period;
  t.rope_scaling = rope_scaling;
  t.gating = gating;
  t.layer_scale = layer_scale;
  t.context = context;
  t.causal = causal;
  return t;
}

TransformerConfig LMConfig::depformer() const {
  TransformerConfig t;
  t.d_model = depformer_dim;
  t.num_heads = depformer_num_heads.value_or(num_heads);
  t.num_layers = depformer_num_layers.value_or(num_layers);
  t.dim_feedforward = depformer_dim_feedforward;
  if (t.dim_feedforward.empty())
    t.dim_feedforward = {static_cast<int64_t>(hidden_scale * static_cast<double>(depformer_dim))};
  t.norm = norm;
  t.positional_embedding = depformer_pos_emb;
  t.max_period = depformer_max_period.value_or(max_period);
  t.gating = depformer_gating.value_or(gating);
  t.layer_scale = depformer_layer_scale ? depformer_layer_scale : layer_scale;
  t.context = std::nullopt;  // the reference ignores depformer_context
  t.causal = causal;
  if (depformer_weights_per_step) {
    t.weights_per_step = dep_q;
    t.weights_per_step_schedule = depformer_weights_per_step_schedule;
  }
  if (t.dim_feedforward.size() == 1 && t.num_weight_sets() > 1)
    t.dim_feedforward.assign(static_cast<size_t>(t.num_weight_sets()), t.dim_feedforward[0]);
  return t;
}

int64_t LMConfig::num_depformer_in() const {
  if (!depformer_multi_linear) return 1;
  if (!depformer_weights_per_step_schedule.empty())
    return *std::max_element(depformer_weights_per_step_schedule.begin(), depformer_weights_per_step_schedule.end()) +
           1;
  return dep_q;
}

namespace {
const std::set<std::string> kNorms = {"layer_norm", "layer_norm_f32", "rms_norm", "rms_norm_f32"};
const std::set<std::string> kPosEmb = {"sin", "rope", "sin_rope", "none"};
const std::set<std::string> kGating = {"none",       "silu", "gelu", "relu",     "sigmoid", "tanh",
                                       "leaky_relu", "elu",  "mish", "softsign", "identity"};

void check_transformer(const TransformerConfig& t, const std::string& who) {
  MT_CHECK(t.d_model > 0, who, ": dim must be > 0, got ", t.d_model);
  MT_CHECK(t.num_heads > 0 && t.d_model % t.num_heads == 0, who, ": num_heads (", t.num_heads,
           ") must divide the dim (", t.d_model, ")");
  MT_CHECK(t.num_layers >= 0, who, ": num_layers must be >= 0");
  MT_CHECK(kNorms.count(t.norm), who, ": unknown norm '", t.norm,
           "' (layer_norm, layer_norm_f32, rms_norm, rms_norm_f32)");
  MT_CHECK(kPosEmb.count(t.positional_embedding), who, ": unknown positional embedding '", t.positional_embedding,
           "' (sin, rope, sin_rope, none)");
  MT_CHECK(kGating.count(t.gating), who, ": unknown gating '", t.gating, "'");
  if (t.positional_embedding != "none" && t.positional_embedding != "sin")
    MT_CHECK(t.head_dim() % 2 == 0, who, ": RoPE needs an even head dim, got ", t.head_dim());
  if (t.positional_embedding == "sin" || t.positional_embedding == "sin_rope")
    MT_CHECK(t.d_model % 2 == 0, who, ": sin embedding needs an even dim");
  if (t.context) MT_CHECK(*t.context > 0, who, ": context must be > 0, got ", *t.context);
  MT_CHECK(!(t.gating == "none" && t.weights_per_step > 0), who,
           ": weights_per_step needs a gated FFN (reference limit)");
  MT_CHECK(t.dim_feedforward.size() == 1 || static_cast<int64_t>(t.dim_feedforward.size()) == t.num_weight_sets(), who,
           ": dim_feedforward list has ", t.dim_feedforward.size(), " entries, expected ", t.num_weight_sets());
  for (auto d : t.dim_feedforward) MT_CHECK(d > 0, who, ": dim_feedforward must be > 0");
}
}  // namespace

void LMConfig::validate() const {
  MT_CHECK(n_q >= 0, "n_q must be >= 0");
  MT_CHECK(dep_q >= 0 && dep_q <= n_q, "dep_q (", dep_q, ") must be between 0 and n_q (", n_q, ")");
  MT_CHECK(static_cast<int64_t>(delays.size()) == num_codebooks(), "delays has ", delays.size(),
           " entries, expected 1 + n_q = ", num_codebooks());
  for (auto d : delays) MT_CHECK(d >= 0, "delays must be >= 0");
  MT_CHECK(card > 0 && text_card > 0, "card and text_card must be > 0");
  MT_CHECK(num_layers > 0, "num_layers must be given and > 0");
  if (!depformer_weights_per_step_schedule.empty()) {
    MT_CHECK(static_cast<int64_t>(depformer_weights_per_step_schedule.size()) == dep_q,
             "depformer_weights_per_step_schedule has ", depformer_weights_per_step_schedule.size(),
             " entries, expected dep_q = ", dep_q);
    for (auto s : depformer_weights_per_step_schedule)
      MT_CHECK(s >= 0 && s < dep_q, "depformer_weights_per_step_schedule entries must be in [0, dep_q)");
  }
  if (depformer_low_rank_embeddings)
    MT_CHECK(*depformer_low_rank_embeddings > 0, "depformer_low_rank_embeddings must be > 0");
  if (depformer_norm) MT_CHECK(kNorms.count(*depformer_norm), "unknown depformer_norm '", *depformer_norm, "'");
  MT_CHECK(!norm_emb, "norm_emb=true is not supported");
  MT_CHECK(!bias_proj, "bias_proj=true is not supported");
  check_transformer(transformer(), "transformer");
  if (dep_q > 0) check_transformer(depformer(), "depformer");
  rope_scaling.validate("rope_scaling");
  // No silent setting: YaRN only acts on RoPE.
  MT_CHECK(!rope_scaling.on() || positional_embedding == "rope" || positional_embedding == "sin_rope",
           "rope_scaling: set, but positional_embedding is '", positional_embedding, "' (no RoPE to scale)");
}

namespace {
template <class T>
void get(const json& j, const char* key, T& out, const std::string& src) {
  if (!j.contains(key) || j[key].is_null()) return;
  try {
    out = j[key].get<T>();
  } catch (const std::exception& e) {
    fail(src, ": field '", key, "' has the wrong type (", j[key].dump(), ")");
  }
}
template <class T>
void get_opt(const json& j, const char* key, std::optional<T>& out, const std::string& src) {
  if (!j.contains(key)) return;
  if (j[key].is_null()) {
    out.reset();
    return;
  }
  T v{};
  get(j, key, v, src);
  out = v;
}
void get_ff(const json& j, const char* key, std::vector<int64_t>& out, const std::string& src) {
  if (!j.contains(key) || j[key].is_null()) return;
  if (j[key].is_array())
    get(j, key, out, src);
  else {
    int64_t v = 0;
    get(j, key, v, src);
    out = {v};
  }
}
// Keys of Kyutai's config.json that are not LM hyper-parameters, or that the reference ignores.
const std::set<std::string> kIgnored = {
    "model_type", "mimi_name", "moshi_name", "tokenizer_name", "lm_gen_config", "model_id", "lora_name",
    "depformer_causal", "depformer_context", "cross_attention", "conditioners", "fuser", "stt_config", "dtype",
    "gradient_checkpointing", "demux_second_stream", "extra_heads_num_heads", "extra_heads_dim", "tts_config",
    // moshi-finetune adds these; LoRA itself is declared by a lora: section.
    "lora", "lora_rank", "lora_scaling"};
}  // namespace

LMConfig LMConfig::from_json(const json& j, const std::string& src) {
  MT_CHECK(j.is_object(), src, ": expected a JSON object");
  static const std::set<std::string> known = {"delays",
                                              "n_q",
                                              "dep_q",
                                              "card",
                                              "text_card",
                                              "text_card_out",
                                              "dim",
                                              "num_heads",
                                              "num_layers",
                                              "hidden_scale",
                                              "norm",
                                              "norm_emb",
                                              "bias_proj",
                                              "positional_embedding",
                                              "max_period",
                                              "gating",
                                              "layer_scale",
                                              "context",
                                              "causal",
                                              "depformer_dim",
                                              "depformer_dim_feedforward",
                                              "depformer_multi_linear",
                                              "depformer_weights_per_step",
                                              "depformer_weights_per_step_schedule",
                                              "depformer_low_rank_embeddings",
                                              "depformer_pos_emb",
                                              "depformer_norm",
                                              "depformer_num_heads",
                                              "depformer_num_layers",
                                              "depformer_gating",
                                              "depformer_max_period",
                                              "depformer_layer_scale",
                                              "existing_text_padding_id",
                                              "existing_text_end_padding_id",
                                              "quantize",
                                              "kv_repeat",
                                              "demux_second_text_stream",
                                              "rope_scaling"};
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (known.count(it.key()) || kIgnored.count(it.key())) continue;
    fail(src, ": unknown LM config field '", it.key(), "'");
  }
  LMConfig c;
  get(j, "delays", c.delays, src);
  get(j, "n_q", c.n_q, src);
  get(j, "dep_q", c.dep_q, src);
  get(j, "card", c.card, src);
  get(j, "text_card", c.text_card, src);
  get_opt(j, "text_card_out", c.text_card_out, src);
  get(j, "dim", c.dim, src);
  get(j, "num_heads", c.num_heads, src);
  get(j, "num_layers", c.num_layers, src);
  get(j, "hidden_scale", c.hidden_scale, src);
  get(j, "norm", c.norm, src);
  get(j, "norm_emb", c.norm_emb, src);
  get(j, "bias_proj", c.bias_proj, src);
  get(j, "positional_embedding", c.positional_embedding, src);
  get(j, "max_period", c.max_period, src);
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null())
    c.rope_scaling = RopeScaling::from_json(j["rope_scaling"], src + ": rope_scaling");
  get(j, "gating", c.gating, src);
  get_opt(j, "layer_scale", c.layer_scale, src);
  get_opt(j, "context", c.context, src);
  get(j, "causal", c.causal, src);
  get(j, "depformer_dim", c.depformer_dim, src);
  get_ff(j, "depformer_dim_feedforward", c.depformer_dim_feedforward, src);
  get(j, "depformer_multi_linear", c.depformer_multi_linear, src);
  get(j, "depformer_weights_per_step", c.depformer_weights_per_step, src);
  get(j, "depformer_weights_per_step_schedule", c.depformer_weights_per_step_schedule, src);
  get_opt(j, "depformer_low_rank_embeddings", c.depformer_low_rank_embeddings, src);
  get(j, "depformer_pos_emb", c.depformer_pos_emb, src);
  get_opt(j, "depformer_norm", c.depformer_norm, src);
  get_opt(j, "depformer_num_heads", c.depformer_num_heads, src);
  get_opt(j, "depformer_num_layers", c.depformer_num_layers, src);
  get_opt(j, "depformer_gating", c.depformer_gating, src);
  get_opt(j, "depformer_max_period", c.depformer_max_period, src);
  get_opt(j, "depformer_layer_scale", c.depformer_layer_scale, src);
  get_opt(j, "existing_text_padding_id", c.existing_text_padding_id, src);
  get(j, "existing_text_end_padding_id", c.existing_text_end_padding_id, src);
  get(j, "quantize", c.quantize, src);
  if (j.contains("kv_repeat"))
    MT_CHECK(j["kv_repeat"].is_number_integer() && j["kv_repeat"].get<int64_t>() == 1, src,
             ": kv_repeat != 1 (grouped-query attention) is not supported");
  if (j.contains("demux_second_text_stream"))
    MT_CHECK(!j["demux_second_text_stream"].get<bool>(), src, ": demux_second_text_stream is not supported");
  try {
    c.validate();
  } catch (const Error& e) {
    fail(src, ": ", e.what());
  }
  return c;
}

LMConfig LMConfig::from_file(const std::string& path) {
  std::ifstream f(path);
  MT_CHECK(f.good(), path, ": cannot open");
  json j;
  try {
    j = json::parse(f);
  } catch (const std::exception& e) {
    fail(path, ": not valid JSON: ", e.what());
  }
  return from_json(j, path);
}

json LMConfig::to_json() const {
  json j;
  j["delays"] = delays;
  j["n_q"] = n_q;
  j["dep_q"] = dep_q;
  j["card"] = card;
  j["text_card"] = text_card;
  if (text_card_out) j["text_card_out"] = *text_card_out;
  j["dim"] = dim;
  j["num_heads"] = num_heads;
  j["num_layers"] = num_layers;
  j["hidden_scale"] = hidden_scale;
  j["norm"] = norm;
  j["positional_embedding"] = positional_embedding;
  j["max_period"] = max_period;
  if (rope_scaling.on()) j["rope_scaling"] = rope_scaling.to_json();
  j["gating"] = gating;
  j["layer_scale"] = layer_scale ? json(*layer_scale) : json(nullptr);
  j["context"] = context ? json(*context) : json(nullptr);
  j["causal"] = causal;
  j["depformer_dim"] = depformer_dim;
  if (depformer_dim_feedforward.size() == 1)
    j["depformer_dim_feedforward"] = depformer_dim_feedforward[0];
  else if (!depformer_dim_feedforward.empty())
    j["depformer_dim_feedforward"] = depformer_dim_feedforward;
  j["depformer_multi_linear"] = depformer_multi_linear;
  j["depformer_weights_per_step"] = depformer_weights_per_step;
  if (!depformer_weights_per_step_schedule.empty())
    j["depformer_weights_per_step_schedule"] = depformer_weights_per_step_schedule;
  if (depformer_low_rank_embeddings) j["depformer_low_rank_embeddings"] = *depformer_low_rank_embeddings;
  j["depformer_pos_emb"] = depformer_pos_emb;
  if (depformer_norm) j["depformer_norm"] = *depformer_norm;
  if (depformer_num_heads) j["depformer_num_heads"] = *depformer_num_heads;
  if (depformer_num_layers) j["depformer_num_layers"] = *depformer_num_layers;
  if (depformer_gating) j["depformer_gating"] = *depformer_gating;
  if (depformer_max_period) j["depformer_max_period"] = *depformer_max_period;
  if (depformer_layer_scale) j["depformer_layer_scale"] = *depformer_layer_scale;
  j["existing_text_padding_id"] = existing_text_padding_id ? json(*existing_text_padding_id) : json(nullptr);
  j["existing_text_end_padding_id"] = existing_text_end_padding_id;
  if (quantize) j["quantize"] = true;
  return j;
}

LMConfig LMConfig::moshiko_7b() {
  LMConfig c;
  c.dim = 4096;
  c.text_card = 32000;
  c.existing_text_padding_id = 3;
  c.n_q = 16;
  c.dep_q = 8;
  c.card = 2048;
  c.num_heads = 32;
  c.num_layers = 32;
  c.hidden_scale = 4.125;
  c.causal = true;
  c.context = 3000;
  c.max_period = 10000;
  c.gating = "silu";
  c.norm = "rms_norm_f32";
  c.positional_embedding = "rope";
  c.depformer_dim = 1024;
  c.depformer_dim_feedforward = {4224};
  c.depformer_num_heads = 16;
  c.depformer_num_layers = 6;
  c.depformer_multi_linear = true;
  c.depformer_max_period = 10000;
  c.depformer_gating = "silu";
  c.depformer_pos_emb = "none";
  c.depformer_weights_per_step = true;
  c.delays = {0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1};
  return c;
}

LMConfig LMConfig::small() {
  LMConfig c = moshiko_7b();
  c.dim = 512;
  c.num_heads = 8;
  c.num_layers = 8;
  c.depformer_dim = 256;
  c.depformer_dim_feedforward = {static_cast<int64_t>(4.125 * 256)};
  c.depformer_num_heads = 4;
  c.depformer_num_layers = 2;
  return c;
}

LMConfig LMConfig::tiny() {
  LMConfig c = moshiko_7b();
  c.dim = 64;
  c.num_heads = 4;
  c.num_layers = 2;
  c.text_card = 64;
  c.card = 64;
  c.n_q = 4;
  c.dep_q = 2;
  c.delays = {0, 0, 1, 0, 1};
  c.context = 32;
  c.depformer_dim = 32;
  c.depformer_dim_feedforward = {static_cast<int64_t>(4.125 * 32)};
  c.depformer_num_heads = 2;
  c.depformer_num_layers = 1;
  return c;
}

}  // namespace mt::lm
