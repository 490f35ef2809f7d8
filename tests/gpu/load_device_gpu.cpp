// Weights loaded straight onto the GPU (from the mapped file, no host copy) equal the CPU load, TTT and
// LoRA tensors the file lacks included.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <gtest/gtest.h>

#include "io/safetensors.h"
#include "lm/lm_model.h"
#include "test_util.h"

namespace {

TEST(LoadDeviceGpu, StraightToCudaEqualsTheCpuLoad) {
  if (!(at::globalContext().hasCUDA() && at::detail::getCUDAHooks().getNumGPUs() > 0)) GTEST_SKIP() << "no CUDA device";
  mt::test::TempDir d;
  mt::lm::LMConfig cfg = mt::lm::LMConfig::tiny();
  std::vector<std::pair<std::string, at::Tensor>> base;
  {
    mt::lm::LMModel b(cfg);
    b->init_weights(5);
    for (const auto& kv : b->named_parameters()) base.emplace_back(kv.key(), kv.value().detach().to(at::kBFloat16));
  }
  const std::string path = d.file("base.safetensors");
  mt::io::save(path, base);
  mt::lm::TTTIntegrationConfig ttt;
  ttt.enable = true;
  ttt.layers = "1";
  mt::lm::LoRAConfig lora;
  lora.enable = true;
  lora.rank = 4;
  auto cpu = mt::lm::load_lm(cfg, path, at::kBFloat16, ttt, nullptr, lora);
  auto gpu = mt::lm::load_lm(cfg, path, at::kBFloat16, ttt, nullptr, lora, "", at::Device(at::kCUDA, 0));
  auto a = cpu->named_parameters(), b = gpu->named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (const auto& kv : a) {
    EXPECT_TRUE(b[kv.key()].is_cuda()) << kv.key();
    EXPECT_TRUE(at::equal(b[kv.key()].cpu(), kv.value())) << kv.key();
  }
}

}  // namespace
