#pragma once
// Helpers for tests on a tiny LM with TTT: the model config, a `ttt:` section from YAML text (TTT on
// layer 1) and random codes.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <string>

#include "lm/config.h"
#include "lm/ttt_config.h"

namespace mt::test {

inline lm::LMConfig tiny_lm(int64_t layers = 2) {
  lm::LMConfig c = lm::LMConfig::tiny();
  c.dim = 32;
  c.num_heads = 2;
  c.num_layers = layers;
  c.context = 40;
  return c;
}

inline lm::TTTIntegrationConfig ttt_yaml(const std::string& y) {
  return lm::TTTIntegrationConfig::from_yaml(YAML::Load("enable: true\nlayers: \"1\"\n" + y));
}

inline at::Tensor random_codes(const lm::LMConfig& c, int64_t B, int64_t T, uint64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  return at::randint(std::min(c.card, c.text_card), {B, c.num_codebooks(), T}, g, at::kLong);
}

}  // namespace mt::test
