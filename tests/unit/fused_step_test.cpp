// The fused single-query attention step and the one-pass RMSNorm (src/lm/attention_step.*) against
// the general tensor path on the same inputs: every RoPE variant, sliding windows, a ring that wraps,
// batch slots at different positions (a slot reset mid-stream), and the conditions that keep training
// and other dtypes on the general path.
#include <gtest/gtest.h>

#include "lm/lm_model.h"
#include "nn/attention_step.h"
#include "nn/transformer.h"
#include "test_util.h"
#include "util/fused.h"

using namespace mt;

namespace {

using FusedOff = util::FusedKernelsOff;  // runs a scope on the general path

nn::TransformerConfig attn_config(const std::string& pos, std::optional<int64_t> context) {
  nn::TransformerConfig c;
  c.d_model = 48;
  c.num_heads = 3;  // head_dim 16
  c.num_layers = 1;
  c.dim_feedforward = {96};
  c.positional_embedding = pos;
  c.context = context;
  c.causal = true;
  return c;
}

nn::Attention random_attention(const nn::TransformerConfig& c, uint64_t seed) {
  nn::Attention a(c);
  at::Generator g = at::detail::createCPUGenerator(seed);
  at::NoGradGuard ng;
  for (auto& p : a->parameters()) p.copy_(at::randn(p.sizes(), g) * 0.3);
  return a;
}

nn::KVCache make_cache(int64_t B, const nn::TransformerConfig& c, int64_t cap) {
  nn::KVCache k;
  k.capacity = cap;
  k.k = at::zeros({B, c.num_heads, cap, c.head_dim()});
  k.v = at::zeros({B, c.num_heads, cap, c.head_dim()});
  return k;
}

// Streams `steps` single-query steps through the fused and the general path, each with its own cache;
// slot 1 of the batch restarts at `restart` (its offset back to 0, its cache rows cleared), so the two
// slots sit at different positions. Returns the worst output and cache difference.
double fused_vs_general(const nn::TransformerConfig& c, int64_t cap, int64_t steps, int64_t restart, uint64_t seed) {
  const int64_t B = 2;
  nn::Attention a = random_attention(c, seed);
  nn::KVCache kf = make_cache(B, c, cap), kg = make_cache(B, c, cap);
  at::Tensor off = at::zeros({B}, at::kLong);
  int64_t off_cpu = 0;
  at::Generator g = at::detail::createCPUGenerator(seed + 1);
  at::InferenceMode im;
  double worst = 0;
  for (int64_t t = 0; t < steps; ++t) {
    if (t == restart) {
      off[1] = 0;
      for (auto* k : {&kf, &kg}) {
        k->k[1].zero_();
        k->v[1].zero_();
      }
    }
    const at::Tensor x = at::randn({B, 1, c.d_model}, g);
    EXPECT_TRUE(nn::fused_attention_step_applies(at::zeros({B, 1, 3 * c.d_model}), &kf));
    nn::StepContext cf, cg;
    cf.offsets = cg.offsets = off;
    cf.offset_cpu = cg.offset_cpu = off_cpu;
    cf.cache = &kf;
    cg.cache = &kg;
    const at::Tensor yf = a->forward(x, cf);
    at::Tensor yg;
    {
      FusedOff general;
      EXPECT_FALSE(nn::fused_attention_step_applies(at::zeros({B, 1, 3 * c.d_model}), &kg));
      yg = a->forward(x, cg);
    }
    EXPECT_TRUE(yf.isfinite().all().item<bool>());
    worst =
        std::max({worst, test::max_abs_diff(yf, yg), test::max_abs_diff(kf.k, kg.k), test::max_abs_diff(kf.v, kg.v)});
    off.add_(1);
    off_cpu += 1;
  }
  return worst;
}

}  // namespace

TEST(FusedStep, AttentionEqualsTheGeneralPathForEveryPositionalKind) {
  if (!util::cpu_has_avx2_fma()) GTEST_SKIP() << "the fused attention step needs AVX2 + FMA";
  // Float32 arithmetic in a different order (a dot product per slot vs a matmul): a few ulps of O(1).
  const double tol = 2e-5;
  for (const char* pos : {"rope", "sin_rope", "none", "sin"}) {
    // Window 5 in a ring of 5 that wraps twice; slot 1 restarts at step 7.
    EXPECT_LT(fused_vs_general(attn_config(pos, 5), 5, 17, 7, 11), tol) << pos;
    // Unbounded context in a ring larger than the stream (the not-yet-wrapped narrowing).
    EXPECT_LT(fused_vs_general(attn_config(pos, std::nullopt), 32, 20, 9, 12), tol) << pos;
  }
  // A window smaller than the ring (a step's cache sized for longer chunks).
  EXPECT_LT(fused_vs_general(attn_config("rope", 4), 9, 30, 13, 13), tol);
}

TEST(FusedStep, AttentionWithYarnAndLargePositionsEqualsTheGeneralPath) {
  if (!util::cpu_has_avx2_fma()) GTEST_SKIP() << "the fused attention step needs AVX2 + FMA";
  nn::TransformerConfig c = attn_config("rope", 6);
  c.rope_scaling.type = "yarn";
  c.rope_scaling.factor = 4.0;
  c.rope_scaling.original_context = 16;
  EXPECT_LT(fused_vs_general(c, 6, 40, 25, 21), 2e-5);
  // Positions in the thousands (a long conversation): angles in float32 on both paths.
  nn::TransformerConfig p = attn_config("rope", 3);
  EXPECT_LT(fused_vs_general(p, 3, 3005, 2990, 22), 5e-5);
}

TEST(FusedStep, RmsNormEqualsTheGeneralPath) {
  at::Generator g = at::detail::createCPUGenerator(5);
  for (const char* kind : {"rms_norm", "rms_norm_f32"}) {
    nn::Norm n(kind, 40);
    {
      at::NoGradGuard ng;
      n->alpha.copy_(at::rand({1, 1, 40}, g) + 0.5);
    }
    for (int64_t rows : {1, 2, 4, 5}) {
      const at::Tensor x = at::randn({rows, 1, 40}, g) * 3;
      at::InferenceMode im;
      const at::Tensor yf = n->forward(x);
      FusedOff general;
      EXPECT_LT(test::max_abs_diff(yf, n->forward(x)), 1e-5) << kind << " rows " << rows;
    }
  }
}

TEST(FusedStep, TrainingAndOtherDtypesKeepTheGeneralPath) {
  if (!util::cpu_has_avx2_fma()) GTEST_SKIP() << "the fused attention step needs AVX2 + FMA";
  nn::TransformerConfig c = attn_config("rope", 4);
  nn::KVCache k = make_cache(1, c, 4);
  const at::Tensor qkv = at::randn({1, 1, 3 * c.d_model});
  EXPECT_TRUE(nn::fused_attention_step_applies(qkv, &k));
  EXPECT_FALSE(nn::fused_attention_step_applies(qkv.clone().requires_grad_(true), &k)) << "autograd needs the graph";
  EXPECT_FALSE(nn::fused_attention_step_applies(at::randn({1, 2, 3 * c.d_model}), &k)) << "two queries";
  EXPECT_FALSE(nn::fused_attention_step_applies(qkv.to(at::kDouble), &k));
  EXPECT_FALSE(nn::fused_attention_step_applies(qkv, nullptr)) << "no cache: whole-sequence forward";
  nn::KVCache kb = k;
  kb.k = kb.k.to(at::kBFloat16);
  EXPECT_FALSE(nn::fused_attention_step_applies(qkv, &kb));

  // RMSNorm with a gradient wanted: the general path, and the gradient flows.
  nn::Norm n("rms_norm", 8);
  const at::Tensor x = at::randn({1, 1, 8}).requires_grad_(true);
  n->forward(x).sum().backward();
  ASSERT_TRUE(x.grad().defined());
  EXPECT_GT(x.grad().abs().sum().item<double>(), 0.0);
}

TEST(FusedStep, SmallLmStepByStepEqualsTheWholeSequence) {
  // The whole model one frame at a time (fused attention in the temporal transformer and in every
  // depformer step, one-pass RMSNorm) against the whole-sequence forward.
  lm::LMConfig c = lm::LMConfig::tiny();
  c.context = 6;
  lm::LMModel m(c, lm::TTTIntegrationConfig{}, lm::LoRAConfig{});
  m->init_weights(3);
  at::Generator g = at::detail::createCPUGenerator(8);
  const at::Tensor codes = at::randint(64, {1, c.num_codebooks(), 20}, g, at::kLong);
  at::InferenceMode im;
  const auto whole = m->forward(codes);
  lm::TransformerState st = m->make_state(1, 1);
  const auto streamed = m->forward_streaming(codes, st);
  auto valid = [](const lm::LMOutput& o) { return o.logits.masked_select(o.mask.unsqueeze(-1)); };
  EXPECT_LT(test::max_abs_diff(valid(whole), valid(streamed)), 1e-4);
  FusedOff general;
  lm::TransformerState st2 = m->make_state(1, 1);
  EXPECT_LT(test::max_abs_diff(valid(streamed), valid(m->forward_streaming(codes, st2))), 2e-5);
}
