// Hybrid TTT in the Moshi temporal transformer: config errors name the field, streaming equals the
// whole-sequence forward (TTT state carried), a base checkpoint loads with TTT tensors initialised.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include "io/safetensors.h"
#include "lm/lm_model.h"
#include "test_util.h"
#include "util/error.h"

using namespace mt;
using namespace mt::lm;

namespace {
LMConfig base_cfg() {
  LMConfig c = LMConfig::tiny();
  c.dim = 32;
  c.num_heads = 2;
  c.num_layers = 3;
  c.context = 6;
  return c;
}
TTTIntegrationConfig hybrid(const std::string& type) {
  return TTTIntegrationConfig::from_yaml(YAML::Load("enable: true\nvariant: hybrid\nlayers: \"1,2\"\ntype: " + type +
                                                    "\nmini_batch_size: 4\nattention_context: 3\nbase_lr: 0.5"));
}
}  // namespace

TEST(HybridConfig, FieldsAreCheckedByName) {
  auto err = [](const std::string& y) {
    try {
      TTTIntegrationConfig c = TTTIntegrationConfig::from_yaml(YAML::Load(y));
      c.validate(4);
      c.layer_indices(4);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(err("enable: true\nlayerz: \"1\"").find("ttt.layerz: unknown field"), std::string::npos);
  EXPECT_NE(err("enable: true\nlayers: \"1,9\"").find("out of range"), std::string::npos);
  EXPECT_NE(err("enable: true\nlayers: \"1\"\nvariant: lora").find("ttt.variant"), std::string::npos);
  EXPECT_NE(err("enable: true\nlayers: \"1\"\nmini_batch_size: many").find("ttt.mini_batch_size"), std::string::npos);
  EXPECT_NE(err("enable: true").find("no layer chosen"), std::string::npos);
  TTTIntegrationConfig c =
      TTTIntegrationConfig::from_yaml(YAML::Load("enable: true\nstart_layer: 1\nlayer_frequency: 2"));
  EXPECT_EQ(c.layer_indices(6), (std::vector<int64_t>{1, 3, 5}));
}

class HybridStreaming : public ::testing::TestWithParam<std::tuple<std::string, int64_t>> {};

TEST_P(HybridStreaming, StepsEqualForwardAcrossAReset) {
  auto [type, chunk] = GetParam();
  LMModel m(base_cfg(), hybrid(type));
  m->init_weights(2);
  {
    // Non-trivial gates so the TTT branch matters.
    at::NoGradGuard ng;
    for (auto& kv : m->named_parameters())
      if (kv.key().find("gating_alpha") != std::string::npos) kv.value().fill_(0.7);
  }
  EXPECT_EQ(m->transformer->layer_ptrs[1]->self_attn->cfg.context.value(), 3);
  EXPECT_EQ(m->transformer->layer_ptrs[0]->self_attn->cfg.context.value(), 6);
  at::InferenceMode im;
  const int64_t B = 2, T = 11;
  at::Generator g = at::detail::createCPUGenerator(5);
  at::Tensor seq = at::randint(60, {B, m->cfg.num_codebooks(), T}, g, at::kLong);
  auto [whole, tl] = m->forward_text(seq);
  TransformerState st = m->make_state(B, chunk);
  // A first conversation, then a reset: the second one must start from the learned initial state.
  for (int64_t t = 0; t < 5; ++t) m->forward_text(seq.narrow(2, t, 1).flip(0), &st);
  st.reset();
  std::vector<at::Tensor> outs;
  for (int64_t t = 0; t < T; t += chunk)
    outs.push_back(m->forward_text(seq.narrow(2, t, std::min(chunk, T - t)), &st).first);
  EXPECT_LT(test::max_abs_diff(at::cat(outs, 1), whole), 5e-5);
  // The TTT state really moved away from its initial weights.
  EXPECT_GT(hybrid_state(st.addons[1])->position[0], 0);
}

INSTANTIATE_TEST_SUITE_P(Types, HybridStreaming,
                         ::testing::Values(std::make_tuple("linear", int64_t{1}), std::make_tuple("mlp", int64_t{3})));

TEST(HybridLoad, BaseCheckpointLoadsAndInitialisesTTT) {
  test::TempDir d;
  LMModel base(base_cfg());
  base->init_weights(1);
  io::save(d.file("base.safetensors"), base->state_dict());
  int64_t initialised = 0;
  LMModel m = load_lm(base_cfg(), d.file("base.safetensors"), at::kFloat, hybrid("linear"), &initialised);
  EXPECT_GT(initialised, 0);
  for (auto& kv : m->named_parameters()) {
    if (is_ttt_param(kv.key())) continue;
    EXPECT_TRUE(at::equal(kv.value(), base->named_parameters()[kv.key()])) << kv.key();
  }
  // A file with some TTT tensors but not all is an error naming one that is missing.
  auto sd = m->state_dict();
  sd.erase(std::remove_if(sd.begin(), sd.end(),
                          [](auto& kv) { return kv.first.find("ttt.gating_alpha") != std::string::npos; }),
           sd.end());
  io::save(d.file("partial.safetensors"), sd);
  try {
    load_lm(base_cfg(), d.file("partial.safetensors"), at::kFloat, hybrid("linear"));
    ADD_FAILURE() << "partial TTT tensors loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("gating_alpha"), std::string::npos) << e.what();
  }
}
