// YaRN RoPE scaling (issue 11, part 2): the frequencies against the published formula, the rotation
// itself, config errors, and a tiny LM run past its original context (streaming == whole).
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "lm/config.h"
#include "lm/lm_model.h"
#include "nn/transformer.h"
#include "test_util.h"

using namespace mt;

namespace {

nn::RopeScaling yarn(double s, int64_t L) {
  nn::RopeScaling r;
  r.type = "yarn";
  r.factor = s;
  r.original_context = L;
  return r;
}

// θ of a pair that turns r times over the original context L.
double theta_for(double r, int64_t L) { return 2.0 * M_PI * r / static_cast<double>(L); }

}  // namespace

TEST(Yarn, FrequenciesFollowThePublishedFormula) {
  const auto y = yarn(4.0, 3000);  // the explorations' 3000 -> 12000, beta_fast 32, beta_slow 1
  // r > beta_fast: extrapolated (unchanged); r < beta_slow: interpolated (theta / s); between: the
  // linear ramp gamma = (r - 1) / 31.
  EXPECT_DOUBLE_EQ(y.scaled_frequency(theta_for(64, 3000)), theta_for(64, 3000));
  EXPECT_DOUBLE_EQ(y.scaled_frequency(theta_for(0.5, 3000)), theta_for(0.5, 3000) / 4.0);
  EXPECT_NEAR(y.scaled_frequency(theta_for(1.0, 3000)), theta_for(1.0, 3000) / 4.0, 1e-15);
  EXPECT_NEAR(y.scaled_frequency(theta_for(32.0, 3000)), theta_for(32.0, 3000), 1e-15);
  const double th = theta_for(16.5, 3000);  // gamma = 0.5
  EXPECT_NEAR(y.scaled_frequency(th), 0.5 * th / 4.0 + 0.5 * th, 1e-15);
  const double th2 = theta_for(8.75, 3000);  // gamma = 0.25
  EXPECT_NEAR(y.scaled_frequency(th2), 0.75 * th2 / 4.0 + 0.25 * th2, 1e-15);
  // sqrt(1/t) = 0.1 ln s + 1, or the given attention_factor.
  EXPECT_NEAR(y.mscale(), 0.1 * std::log(4.0) + 1.0, 1e-15);
  auto y2 = y;
  y2.attention_factor = 1.0;
  EXPECT_EQ(y2.mscale(), 1.0);
  // Off: identity.
  EXPECT_EQ(nn::RopeScaling{}.scaled_frequency(0.3), 0.3);
}

TEST(Yarn, RotationUsesTheScaledFrequenciesAndTemperature) {
  const int64_t D = 16, T = 7;
  const double max_period = 10000;
  const auto y = yarn(4.0, 40);
  at::Generator g = at::detail::createCPUGenerator(3);
  at::Tensor q = at::randn({1, 2, T, D}, g, at::kFloat), k = at::randn({1, 2, T, D}, g, at::kFloat);
  at::Tensor pos = (at::arange(T, at::kLong) * 9 + 5).unsqueeze(0);  // positions up to 59 > 40
  at::Tensor q2 = q.clone(), k2 = k.clone();
  nn::apply_rope(q2, k2, pos, max_period, &y);
  double worst = 0;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < D / 2; ++i) {
      const double th = y.scaled_frequency(std::pow(max_period, -2.0 * static_cast<double>(i) / D));
      const double a = static_cast<double>(pos[0][t].item<int64_t>()) * th, m = y.mscale();
      for (int64_t h = 0; h < 2; ++h) {
        const double x0 = q[0][h][t][2 * i].item<double>(), x1 = q[0][h][t][2 * i + 1].item<double>();
        worst =
            std::max(worst, std::abs(q2[0][h][t][2 * i].item<double>() - m * (x0 * std::cos(a) - x1 * std::sin(a))));
        worst = std::max(worst,
                         std::abs(q2[0][h][t][2 * i + 1].item<double>() - m * (x0 * std::sin(a) + x1 * std::cos(a))));
      }
    }
  EXPECT_LT(worst, 2e-5);  // float32 angles of positions < 60
  // Without scaling the rotation differs (the check is not vacuous), and "none" is the plain RoPE.
  at::Tensor q3 = q.clone(), k3 = k.clone(), q4 = q.clone(), k4 = k.clone();
  nn::apply_rope(q3, k3, pos, max_period);
  nn::RopeScaling none;
  nn::apply_rope(q4, k4, pos, max_period, &none);
  EXPECT_GT(test::max_abs_diff(q3, q2), 1e-2);
  EXPECT_TRUE(q3.equal(q4));
}

TEST(Yarn, ConfigErrorsNameTheField) {
  nlohmann::json j = {{"type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 3000}};
  auto r = nn::RopeScaling::from_json(j, "cfg: rope_scaling");
  EXPECT_TRUE(r.on());
  EXPECT_EQ(r.original_context, 3000);
  auto bad = [&](nlohmann::json b, const std::string& what) {
    test::expect_error([&] { nn::RopeScaling::from_json(b, "cfg: rope_scaling"); }, {"cfg: rope_scaling", what});
  };
  bad({{"type", "yarn"}, {"factor", 0.5}, {"original_max_position_embeddings", 3000}}, "factor");
  bad({{"type", "yarn"}, {"factor", 4}}, "original_max_position_embeddings");
  bad({{"type", "yarn"}, {"factor", 4}, {"original_max_position_embeddings", 10}, {"beta_fast", 1}}, "beta_fast");
  bad({{"type", "linear"}}, "type");
  bad({{"type", "yarn"}, {"scale", 4}}, "unknown field 'scale'");
  // No silent setting: YaRN on a model without RoPE is an error.
  lm::LMConfig c = lm::LMConfig::tiny();
  c.rope_scaling = yarn(4, 16);
  c.positional_embedding = "sin";
  test::expect_error([&] { c.validate(); }, {"rope_scaling", "positional_embedding"});
  // JSON round trip keeps it.
  c.positional_embedding = "rope";
  auto back = lm::LMConfig::from_json(c.to_json(), "roundtrip");
  EXPECT_TRUE(back.rope_scaling.on());
  EXPECT_EQ(back.rope_scaling.factor, 4.0);
  EXPECT_FALSE(back.depformer().rope_scaling.on()) << "the depformer keeps plain RoPE";
}

TEST(Yarn, TinyLmPastItsOriginalContextStreamingEqualsWhole) {
  lm::LMConfig c = lm::LMConfig::tiny();
  c.context = 64;
  c.rope_scaling = yarn(4.0, 16);
  lm::LMModel m(c, lm::TTTIntegrationConfig{}, lm::LoRAConfig{});
  m->init_weights(1);
  lm::LMConfig plain_cfg = c;
  plain_cfg.rope_scaling = {};
  lm::LMModel plain(plain_cfg, lm::TTTIntegrationConfig{}, lm::LoRAConfig{});
  plain->init_weights(1);
  at::Generator g = at::detail::createCPUGenerator(4);
  const at::Tensor codes = at::randint(64, {1, c.num_codebooks(), 60}, g, at::kLong);  // 60 > 16 frames
  at::NoGradGuard ng;
  auto valid = [](const lm::LMOutput& o) { return o.logits.masked_select(o.mask.unsqueeze(-1)); };
  const auto whole = m->forward(codes);
  lm::TransformerState st = m->make_state(1, 7);
  const auto streamed = m->forward_streaming(codes, st);
  EXPECT_TRUE(valid(whole).isfinite().all().item<bool>());
  EXPECT_LT(test::max_abs_diff(valid(whole), valid(streamed)), 1e-4);
  EXPECT_GT(test::max_abs_diff(valid(whole), valid(plain->forward(codes))), 1e-4) << "YaRN must change the run";
}
