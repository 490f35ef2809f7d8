// Each TTT integration (hybrid TTT-MLP, adapter + LoRA, In-Place) on CUDA equals the CPU, whole and
// streamed (TF32 off, fp32: only summation order differs).
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include "lm/lm_model.h"
#include "test_util.h"

using namespace mt;
using namespace mt::lm;

class IntegrationGpu : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(IntegrationGpu, CudaMatchesCpuWholeAndStreamed) {
  REQUIRE_CUDA();
  auto [ttt_yaml, lora_yaml] = GetParam();
  LMConfig c = LMConfig::tiny();
  TTTIntegrationConfig t = TTTIntegrationConfig::from_yaml(YAML::Load("enable: true\nlayers: \"1\"\n" + ttt_yaml));
  LoRAConfig l = lora_yaml.empty() ? LoRAConfig{} : LoRAConfig::from_yaml(YAML::Load(lora_yaml));
  LMModel cpu(c, t, l), gpu(c, t, l);
  cpu->init_weights(5);
  {
    at::NoGradGuard ng;
    at::Generator g = at::detail::createCPUGenerator(6);
    for (auto& kv : cpu->named_parameters())
      if (kv.key().find("up.") != std::string::npos || kv.key().find("lora_B") != std::string::npos ||
          kv.key().find("ttt_conv") != std::string::npos)
        kv.value().copy_(at::randn(kv.value().sizes(), g) * 0.3);
    auto src = cpu->named_parameters();
    for (auto& kv : gpu->named_parameters()) kv.value().copy_(src[kv.key()]);
  }
  gpu->to(at::kCUDA);
  at::InferenceMode im;
  at::Tensor codes = at::randint(c.card, {2, c.num_codebooks(), 40}, at::kLong);
  LMOutput a = cpu->forward(codes), b = gpu->forward(codes.cuda());
  at::Tensor m = a.text_mask.unsqueeze(-1);
  EXPECT_LT((a.text_logits - b.text_logits.cpu()).abs().masked_select(m).max().item<double>(), 2e-4);
  TransformerState st = gpu->make_state(2, 7);
  LMOutput s = gpu->forward_streaming(codes.cuda(), st);
  EXPECT_LT((a.text_logits - s.text_logits.cpu()).abs().masked_select(m).max().item<double>(), 2e-4);
}

INSTANTIATE_TEST_SUITE_P(Variants, IntegrationGpu,
                         ::testing::Values(std::make_tuple("variant: hybrid\ntype: mlp\nmini_batch_size: 8", ""),
                                           std::make_tuple("variant: adapter\nadapter_rank: 8",
                                                           "enable: true\nrank: 4\ntargets: [layers.0.]"),
                                           std::make_tuple("variant: inplace\ninplace_chunk_size: 8\ninplace_lr: 0.1",
                                                           "")));
