#include "nn/transformer_config.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <set>

#include "util/error.h"

namespace mt::nn {

using nlohmann::json;

int64_t gating_hidden(int64_t dim, int64_t dim_feedforward) {
  return dim_feedforward == 4 * dim ? (21 * dim) / 8 : (2 * dim_feedforward) / 3;
}

int64_t TransformerConfig::num_weight_sets() const {
  if (weights_per_step <= 0) return 1;
  if (!weights_per_step_schedule.empty())
    return *std::max_element(weights_per_step_schedule.begin(), weights_per_step_schedule.end()) + 1;
  return weights_per_step;
}

double RopeScaling::mscale() const { return attention_factor.value_or(0.1 * std::log(factor) + 1.0); }

double RopeScaling::scaled_frequency(double theta) const {
  if (!on()) return theta;
  const double r = static_cast<double>(original_context) * theta / (2.0 * M_PI);
  const double g = std::clamp((r - beta_slow) / (beta_fast - beta_slow), 0.0, 1.0);
  return (1.0 - g) * theta / factor + g * theta;
}

void RopeScaling::validate(const std::string& w) const {
  MT_CHECK(type == "none" || type == "yarn", w, ".type: '", type, "' (expected yarn or none)");
  if (!on()) return;
  MT_CHECK(std::isfinite(factor) && factor >= 1.0, w, ".factor must be >= 1, got ", factor);
  MT_CHECK(original_context >= 1, w, ".original_max_position_embeddings must be >= 1, got ", original_context);
  MT_CHECK(std::isfinite(beta_fast) && std::isfinite(beta_slow) && beta_slow > 0 && beta_fast > beta_slow, w,
           ".beta_fast must be > beta_slow > 0, got ", beta_fast, " and ", beta_slow);
  if (attention_factor)
    MT_CHECK(std::isfinite(*attention_factor) && *attention_factor > 0, w, ".attention_factor must be > 0");
}

RopeScaling RopeScaling::from_json(const json& j, const std::string& w) {
  MT_CHECK(j.is_object(), w, ": expected an object");
  static const std::set<std::string> known = {
      "type", "rope_type", "factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor"};
  for (auto it = j.begin(); it != j.end(); ++it) MT_CHECK(known.count(it.key()), w, ": unknown field '", it.key(), "'");
  RopeScaling r;
  try {
    if (j.contains("type")) r.type = j["type"].get<std::string>();
    if (j.contains("rope_type")) r.type = j["rope_type"].get<std::string>();
    if (j.contains("factor")) r.factor = j["factor"].get<double>();
    if (j.contains("original_max_position_embeddings"))
      r.original_context = j["original_max_position_embeddings"].get<int64_t>();
    if (j.contains("beta_fast")) r.beta_fast = j["beta_fast"].get<double>();
    if (j.contains("beta_slow")) r.beta_slow = j["beta_slow"].get<double>();
    if (j.contains("attention_factor") && !j["attention_factor"].is_null())
      r.attention_factor = j["attention_factor"].get<double>();
  } catch (const std::exception& e) {
    fail(w, ": bad field type: ", e.what());
  }
  r.validate(w);
  return r;
}

json RopeScaling::to_json() const {
  json j{{"type", type},
         {"factor", factor},
         {"original_max_position_embeddings", original_context},
         {"beta_fast", beta_fast},
         {"beta_slow", beta_slow}};
  if (attention_factor) j["attention_factor"] = *attention_factor;
  return j;
}

}  // namespace mt::nn
